//! Tensor views: q, k and v as three views into one fused QKV projection buffer, out as a
//! strided slice of a larger buffer at an offset that is not a multiple of the adapter's
//! storage offset alignment. Every kernel that touches a view (write_copy, write_rows, the
//! unified and decode kernels, the split-K reduce) must give bit-identical results to the same
//! call on contiguous buffers, which the rest of the suite checks against the reference.

use crate::common::*;
use quantkv::reference::rng::SplitMix64;
use quantkv::*;

const HQ: u32 = 8;
const HKV: u32 = 2;
const D: u32 = 64;
const W: u32 = HQ + 2 * HKV; // heads per fused row

struct Run {
    out: Vec<u8>,
}

/// Writes `t` tokens and runs attention, either from contiguous buffers or from views.
fn run(ctx: &Context, mode: KvQuantMode, fused: bool, decode: bool, split: SplitK) -> Run {
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks: 12,
        block_size: 16,
        num_kv_heads: HKV,
        head_size: D,
        mode,
        dtype: Dtype::F16,
        ..Default::default()
    };
    let cache = KvCache::new(ctx, &cfg).unwrap();
    // Sequence 0: 30 keys, sequence 1: 41 keys; prefill both, then (decode) one more token each.
    let (cu, used, slots): (Vec<i32>, Vec<i32>, Vec<i32>) = if decode {
        (vec![0, 1, 2], vec![30, 41], vec![29, 6 * 16 + 40])
    } else {
        let mut s: Vec<i32> = (0..30).collect();
        s.extend((0..41).map(|p| 6 * 16 + p));
        (vec![0, 30, 71], vec![30, 41], s)
    };
    let t = slots.len() as u32;
    let table: Vec<i32> = (0..12).collect();
    let plan = BatchPlan::new(
        ctx,
        &cfg,
        &StepInput {
            slot_mapping: &slots,
            cu_seqlens_q: &cu,
            seqused_k: &used,
            block_table: &table,
            block_table_stride: 6,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = SplitMix64::new(0x71e5 + decode as u64);
    let vals: Vec<f64> = (0..(t * W * D) as usize).map(|_| rng.normal()).collect();
    let fused_buf = ctx.upload("qkv", &Dtype::F16.encode(&vals));
    // Contiguous copies of the same q, k and v.
    let part = |h0: u32, n: u32| -> Vec<f64> {
        (0..t)
            .flat_map(|r| {
                let base = ((r * W + h0) * D) as usize;
                vals[base..base + (n * D) as usize].to_vec()
            })
            .collect()
    };
    let (qc, kc, vc) = (
        ctx.upload("q", &Dtype::F16.encode(&part(0, HQ))),
        ctx.upload("k", &Dtype::F16.encode(&part(HQ, HKV))),
        ctx.upload("v", &Dtype::F16.encode(&part(HQ + HKV, HKV))),
    );
    // out: rows padded by 16 elements, starting 272 bytes into a larger buffer.
    let (o_off, o_row) = (272u64, HQ * D + 16);
    let big = ctx.zeroed("out big", o_off + (t * o_row * 2) as u64 + 64);
    let plain = ctx.zeroed("out", (t * HQ * D * 2) as u64);
    let es = 2u64;
    let (q, k, v, out) = if fused {
        (
            Tensor::view(&fused_buf, Dtype::F16, [t, HQ, D], 0, [W * D, D]),
            Tensor::view(
                &fused_buf,
                Dtype::F16,
                [t, HKV, D],
                (HQ * D) as u64 * es,
                [W * D, D],
            ),
            Tensor::view(
                &fused_buf,
                Dtype::F16,
                [t, HKV, D],
                ((HQ + HKV) * D) as u64 * es,
                [W * D, D],
            ),
            Tensor::view(&big, Dtype::F16, [t, HQ, D], o_off, [o_row, D]),
        )
    } else {
        (
            Tensor::new(&qc, Dtype::F16, [t, HQ, D]),
            Tensor::new(&kc, Dtype::F16, [t, HKV, D]),
            Tensor::new(&vc, Dtype::F16, [t, HKV, D]),
            Tensor::new(&plain, Dtype::F16, [t, HQ, D]),
        )
    };
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    // Plans must live until their commands are submitted (their pooled buffers go back to the
    // context when they drop, and another thread's next plan may rewrite them).
    let mut fill_plan = None;
    if decode {
        // Fill the context first (contiguous random keys), then write the decode tokens.
        let n = 71u32;
        let ctx_slots: Vec<i32> = (0..29).chain(6 * 16..6 * 16 + 40).collect();
        let fp = fill_plan.insert(
            BatchPlan::new(
                ctx,
                &cfg,
                &StepInput {
                    slot_mapping: &ctx_slots,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let kv: Vec<f64> = (0..(n * HKV * D) as usize).map(|_| rng.normal()).collect();
        let kvb = ctx.upload("ctx kv", &Dtype::F16.encode(&kv));
        let tt = Tensor::new(&kvb, Dtype::F16, [69, HKV, D]);
        cache
            .reshape_and_cache(ctx, &mut enc, fp, 0, tt, tt)
            .unwrap();
    }
    cache
        .reshape_and_cache(ctx, &mut enc, &plan, 0, k, v)
        .unwrap();
    let params = AttentionParams {
        num_q_heads: HQ,
        softmax_scale: 0.125,
        split,
        ..Default::default()
    };
    cache
        .unified_attention(
            ctx,
            &mut enc,
            &Attention {
                plan: &plan,
                layer: cache.layer(0).unwrap(),
                q,
                out,
                params: &params,
            },
        )
        .unwrap();
    ctx.queue.submit([enc.finish()]);
    drop(fill_plan);
    let bytes = if fused {
        let all = ctx.read_buffer(&big).unwrap();
        // Gather the view's rows back into contiguous order; the padding stays zero.
        let mut g = Vec::new();
        for r in 0..t as usize {
            let b = o_off as usize + r * (o_row as usize) * 2;
            g.extend_from_slice(&all[b..b + (HQ * D * 2) as usize]);
            assert!(
                all[b + (HQ * D * 2) as usize..b + (o_row * 2) as usize]
                    .iter()
                    .all(|&x| x == 0),
                "row {r}: the padding between out rows was written"
            );
        }
        assert!(
            all[..o_off as usize].iter().all(|&x| x == 0),
            "bytes before the view"
        );
        g
    } else {
        ctx.read_buffer(&plain).unwrap()
    };
    Run { out: bytes }
}

#[test]
fn fused_qkv_views_match_contiguous_buffers_bit_for_bit() {
    let Some(ctx) = context() else { return };
    for mode in [KvQuantMode::None, KvQuantMode::Int4PerTokenHead] {
        for (decode, split) in [
            (false, SplitK::Auto),
            (true, SplitK::Off),
            (true, SplitK::Segments(3)),
        ] {
            let a = run(ctx, mode, false, decode, split);
            let b = run(ctx, mode, true, decode, split);
            assert!(
                a.out.iter().any(|&x| x != 0),
                "{mode:?} decode={decode}: output written"
            );
            assert_eq!(
                a.out, b.out,
                "{mode:?} decode={decode} {split:?}: views differ"
            );
        }
    }
}

#[test]
fn bad_views_get_typed_errors() {
    let Some(ctx) = context() else { return };
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks: 4,
        block_size: 16,
        num_kv_heads: HKV,
        head_size: D,
        mode: KvQuantMode::None,
        dtype: Dtype::F16,
        ..Default::default()
    };
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let plan = one_sequence_plan(ctx, &cfg, 2, true);
    let fused = ctx.zeroed("qkv", (2 * W * D * 2) as u64);
    let out = ctx.zeroed("out", (2 * HQ * D * 2) as u64);
    let canary = ctx.read_buffer(cache.layer(0).unwrap().k()).unwrap();
    let params = AttentionParams {
        num_q_heads: HQ,
        ..Default::default()
    };
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let kview = |off: u64, strides: [u32; 2], rows: u32| {
        Tensor::view(&fused, Dtype::F16, [rows, HKV, D], off, strides)
    };
    let good = [W * D, D];
    for (label, k) in [
        ("offset not a multiple of 16 bytes", kview(8, good, 2)),
        (
            "row stride not a multiple of 16 bytes",
            kview(1024, [W * D + 1, D], 2),
        ),
        ("heads overlap", kview(1024, [W * D, D / 2], 2)),
        ("rows overlap", kview(1024, [D, D], 2)),
        (
            "past the buffer",
            kview((2 * W * D * 2) as u64 - 256, good, 2),
        ),
    ] {
        let e = cache
            .reshape_and_cache(ctx, &mut enc, &plan, 0, k, k)
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidBuffer { what: "key", .. }),
            "{label}: {e}"
        );
    }
    // out may not live in the buffer q is read from (wgpu binds buffers, not ranges).
    let q = Tensor::view(&fused, Dtype::F16, [2, HQ, D], 0, good);
    let o = Tensor::view(&fused, Dtype::F16, [2, HQ, D], 0, good);
    let e = cache
        .unified_attention(
            ctx,
            &mut enc,
            &Attention {
                plan: &plan,
                layer: cache.layer(0).unwrap(),
                q,
                out: o,
                params: &params,
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Aliased { .. }), "{e}");
    let _ = out;
    ctx.queue.submit([enc.finish()]);
    assert_eq!(
        ctx.read_buffer(cache.layer(0).unwrap().k()).unwrap(),
        canary
    );
}

/// A whole step recorded into one compute pass the caller holds (write then attention for
/// every layer) gives bit-identical results to a pass per call: wgpu orders the dispatches.
#[test]
fn one_pass_per_step_matches_a_pass_per_call() {
    let Some(ctx) = context() else { return };
    let cfg = CacheConfig {
        num_layers: 3,
        num_blocks: 8,
        block_size: 16,
        num_kv_heads: HKV,
        head_size: D,
        mode: KvQuantMode::Int8PerTokenHead,
        dtype: Dtype::F16,
        ..Default::default()
    };
    let slots: Vec<i32> = (0..40).collect();
    let step = StepInput {
        slot_mapping: &slots,
        cu_seqlens_q: &[0, 30, 40],
        seqused_k: &[30, 10],
        block_table: &[0, 1, 2, 1, 2, 3],
        block_table_stride: 3,
        ..Default::default()
    };
    let mut rng = SplitMix64::new(0x0ba55);
    let kv: Vec<f64> = (0..40 * HKV * D).map(|_| rng.normal()).collect();
    let q: Vec<f64> = (0..40 * HQ * D).map(|_| rng.normal()).collect();
    let kvb = ctx.upload("kv", &Dtype::F16.encode(&kv));
    let qb = ctx.upload("q", &Dtype::F16.encode(&q));
    let params = AttentionParams {
        num_q_heads: HQ,
        softmax_scale: 0.125,
        ..Default::default()
    };
    let run = |one_pass: bool| -> Vec<Vec<u8>> {
        let cache = KvCache::new(ctx, &cfg).unwrap();
        let plan = BatchPlan::new(ctx, &cfg, &step).unwrap();
        let outs: Vec<wgpu::Buffer> = (0..3)
            .map(|_| ctx.zeroed("out", (40 * HQ * D * 2) as u64))
            .collect();
        let kt = Tensor::new(&kvb, Dtype::F16, [40, HKV, D]);
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let attn = |l: usize| Attention {
            plan: &plan,
            layer: cache.layer(l).unwrap(),
            q: Tensor::new(&qb, Dtype::F16, [40, HQ, D]),
            out: Tensor::new(&outs[l], Dtype::F16, [40, HQ, D]),
            params: &params,
        };
        if one_pass {
            let mut p = enc.begin_compute_pass(&Default::default());
            for l in 0..outs.len() {
                let a = attn(l);
                cache
                    .reshape_and_cache_in(ctx, &mut p, &plan, l, kt, kt)
                    .unwrap();
                cache.unified_attention_in(ctx, &mut p, &a).unwrap();
            }
        } else {
            for l in 0..outs.len() {
                let a = attn(l);
                cache
                    .reshape_and_cache(ctx, &mut enc, &plan, l, kt, kt)
                    .unwrap();
                cache.unified_attention(ctx, &mut enc, &a).unwrap();
            }
        }
        ctx.queue.submit([enc.finish()]);
        outs.iter().map(|o| ctx.read_buffer(o).unwrap()).collect()
    };
    let a = run(false);
    let b = run(true);
    assert!(a[0].iter().any(|&x| x != 0));
    assert_eq!(a, b, "one pass per step differs from a pass per call");
}
