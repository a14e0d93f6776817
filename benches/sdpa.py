"""Same decode/prefill shapes as benches/gpu.rs, timed with PyTorch SDPA (fp16, contiguous K/V,
enable_gqa=True) on the same GPU, in the same device command. Prints one JSON object per line.

Timed the way serving engines run it: one CUDA graph holds one SDPA call per layer over
L >= 8 layers (each layer its own q/k/v, together at least 384 MiB of K/V so nothing runs from
L2); the graph is replayed, and the time per call is the median replay time / L. Single calls
timed with events would add ~10-60 us of launch cost to small shapes.

usage: python3 benches/sdpa.py SHAPES_JSON OUT_JSON
SHAPES_JSON: [{"name":..., "b":B, "lq":Lq, "lkv":Lkv, "hq":32, "hkv":8, "d":128, "causal":bool,
               "mixed_rows":R, "mixed_lkv":Lm}]
A mixed batch (mixed_rows > 0: B sequences of (Lq, Lkv) plus R decode rows over Lm keys each)
is two SDPA calls per layer, the prompt part and the decode part (SDPA has no varlen batch),
both in the graph; its time is their sum per layer.
"""
import json, sys, statistics
import torch
import torch.nn.functional as F


def backend_name(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for be, name in [(SDPBackend.FLASH_ATTENTION, "flash"), (SDPBackend.EFFICIENT_ATTENTION, "efficient"),
                     (SDPBackend.CUDNN_ATTENTION, "cudnn"), (SDPBackend.MATH, "math")]:
        try:
            with sdpa_kernel([be]):
                F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
            return name
        except Exception:
            continue
    return "unknown"


ROTATE_BYTES = 384 << 20


def part_fn(b, lq, lkv, hq, hkv, d, causal, layers):
    """One SDPA call per layer on its own q/k/v: fn(i) runs layer i."""
    qs = [torch.randn(b, hq, lq, d, device="cuda", dtype=torch.float16) for _ in range(layers)]
    ks = [torch.randn(b, hkv, lkv, d, device="cuda", dtype=torch.float16) for _ in range(layers)]
    vs = [torch.randn(b, hkv, lkv, d, device="cuda", dtype=torch.float16) for _ in range(layers)]
    if causal and lq != lkv:
        # chunked prefill: causal aligned to the end; use an explicit bottom-right mask
        from torch.nn.attention.bias import causal_lower_right
        mask = causal_lower_right(lq, lkv)
        fn = lambda i: F.scaled_dot_product_attention(qs[i], ks[i], vs[i], attn_mask=mask, enable_gqa=True)
    else:
        fn = lambda i: F.scaled_dot_product_attention(qs[i], ks[i], vs[i], is_causal=causal, enable_gqa=True)
    return fn, (qs[0], ks[0], vs[0])


def time_shape(s, replays=30, warmup=3):
    b, lq, lkv, hq, hkv, d = s["b"], s["lq"], s["lkv"], s["hq"], s["hkv"], s["d"]
    mr, ml = s.get("mixed_rows", 0), s.get("mixed_lkv", 0)
    causal = s.get("causal", False) and lq > 1
    layer_kv = (b * lkv + mr * ml) * hkv * d * 2 * 2
    layers = max(8, -(-ROTATE_BYTES // max(1, layer_kv)))
    main_fn, first = part_fn(b, lq, lkv, hq, hkv, d, causal, layers)
    if mr > 0:
        dec_fn, _ = part_fn(mr, 1, ml, hq, hkv, d, False, layers)
        fn = lambda i: (main_fn(i), dec_fn(i))
    else:
        fn = main_fn
    # Warm up on a side stream (cuBLAS/cuDNN handles, autotuning), then capture all layers.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            for i in range(layers):
                fn(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [fn(i) for i in range(layers)]
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record(); graph.replay(); en.record()
        torch.cuda.synchronize()
        times.append(st.elapsed_time(en) * 1000.0 / layers)
    del outs, graph
    us = statistics.median(times)
    spread = (max(times) - min(times)) / us
    bytes_ = 2 * ((b * lkv + mr * ml) * hkv * d * 2) + 2 * ((b * lq + mr) * hq * d * 2)
    flops = 4 * b * hq * lq * lkv * d * (0.5 if causal else 1.0) + 4 * mr * hq * ml * d
    return {"name": s["name"], "sdpa_us": us, "sdpa_gbs": bytes_ / us / 1e3, "sdpa_tflops": flops / us / 1e6,
            "sdpa_layers": layers, "sdpa_spread": spread,
            "sdpa_backend": backend_name(*first, causal) + ("+decode" if mr > 0 else "")}


def main():
    shapes = json.load(open(sys.argv[1]))
    out = []
    for s in shapes:
        try:
            r = time_shape(s)
        except Exception as e:  # out of memory on a small GPU, say
            r = {"name": s["name"], "error": str(e)[:200]}
        print(json.dumps(r), flush=True)
        out.append(r)
        torch.cuda.empty_cache()
    json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "rows": out}, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
