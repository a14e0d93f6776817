//! modes: what each KV quant mode costs and what it keeps. For a Llama-3-8B-like cache (32
//! layers, 8 KV heads, head size 128) it prints bytes per token, tokens that fit a memory budget
//! and the gain over f16; then, on the GPU, the attention error of each mode on data shaped like
//! real keys (spec §11: outlier channels, a sink token) against f64 attention on the original
//! K/V, and the kernel's own error against the reference on the stored codes.
//!
//!   cargo run --release --example modes [-- --budget-gib 8]

use anyhow::Result;
use quantkv::reference::attention::RefGeometry;
use quantkv::reference::rng::SplitMix64;
use quantkv::*;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let budget_gib: f64 = args
        .iter()
        .position(|a| a == "--budget-gib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(8.0);
    let ctx = Context::new()?;
    println!("adapter: {}\n", ctx.adapter());
    let model = CacheConfig {
        num_layers: 32,
        num_blocks: 1,
        block_size: 16,
        num_kv_heads: 8,
        head_size: 128,
        ..Default::default()
    };
    let f16_bpt = quantkv::footprint(
        quantkv::modes::create(KvQuantMode::None).unwrap().as_ref(),
        &model,
    )
    .bytes_per_token;
    println!("| mode | bytes/token (32 layers, K+V, scales incl.) | tokens in {budget_gib} GiB | gain vs f16 | cos vs f64 on originals | max abs err | kernel cos vs ref on codes |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for mode in KvQuantMode::ALL {
        let Ok(backend) = quantkv::modes::backend(mode) else {
            println!("| {} | - | - | - | not built yet | | |", mode.id());
            continue;
        };
        let bpt =
            quantkv::footprint(backend.as_ref(), &CacheConfig { mode, ..model }).bytes_per_token;
        let tokens = budget_gib * (1u64 << 30) as f64 / bpt as f64;
        let (cos, max_abs, kcos) = quality(&ctx, mode)?;
        println!(
            "| {} | {bpt} | {:.0} | {:.2}x | {cos:.5} | {max_abs:.3} | {kcos:.7} |",
            mode.id(),
            tokens,
            f16_bpt as f64 / bpt as f64
        );
    }
    Ok(())
}

/// One layer, 2 sequences (a decode row over 300 keys, an 8-token chunk over 120), §11 data.
fn quality(ctx: &Context, mode: KvQuantMode) -> Result<(f64, f64, f64)> {
    let (hq, hkv, d, bs) = (8usize, 2usize, 128usize, 16usize);
    let seqs = [(1usize, 300usize), (8, 120)];
    let mut rng = SplitMix64::new(0x11);
    let mut table = Vec::new();
    let stride = 300usize.div_ceil(bs);
    let mut next = 0;
    for &(_, kv) in &seqs {
        for c in 0..stride {
            table.push(if c < kv.div_ceil(bs) {
                next += 1;
                next - 1
            } else {
                0
            });
        }
    }
    let num_blocks = next as u32;
    let mut slots = Vec::new();
    for (s, &(_, kv)) in seqs.iter().enumerate() {
        for p in 0..kv {
            slots.push(table[s * stride + p / bs] * bs as i32 + (p % bs) as i32);
        }
    }
    let n = slots.len();
    let dt = Dtype::F16;
    let mut keys: Vec<f64> = (0..n * hkv * d).map(|_| rng.normal()).collect();
    let mut values: Vec<f64> = (0..n * hkv * d).map(|_| rng.normal()).collect();
    let tokens: usize = seqs.iter().map(|s| s.0).sum();
    let mut q: Vec<f64> = (0..tokens * hq * d).map(|_| rng.normal()).collect();
    // Spec §11: outlier channels, and the first token of each sequence as the sink.
    let sinks = [0, seqs[0].1];
    reference::data::shape_like_llm(&mut keys, &mut values, &mut q, d, hkv, &sinks);
    for x in keys.iter_mut().chain(values.iter_mut()).chain(q.iter_mut()) {
        *x = dt.round(*x);
    }
    let cfg = CacheConfig {
        num_blocks,
        block_size: bs as u32,
        num_kv_heads: hkv as u32,
        head_size: d as u32,
        mode,
        dtype: dt,
        ..Default::default()
    };
    let mut cache = KvCache::new(ctx, &cfg)?;
    let backend = quantkv::modes::backend(mode)?;
    if backend.uses_tensor_scales() {
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        let (ks, vs) = (
            backend.calibrate_tensor_scale(&f(&keys)),
            backend.calibrate_tensor_scale(&f(&values)),
        );
        cache.set_tensor_scales(0, ks, vs)?;
    }
    let cu = [0, 1, 9];
    let used = [300, 120];
    let step = StepInput {
        slot_mapping: &slots,
        cu_seqlens_q: &cu,
        seqused_k: &used,
        block_table: &table,
        block_table_stride: stride,
        ..Default::default()
    };
    let plan = BatchPlan::new(ctx, &cfg, &step)?;
    let (kb, vb, qb) = (
        ctx.upload("k", &dt.encode(&keys)),
        ctx.upload("v", &dt.encode(&values)),
        ctx.upload("q", &dt.encode(&q)),
    );
    let ob = ctx.zeroed("o", (tokens * hq * d * 2) as u64);
    let params = AttentionParams {
        num_q_heads: hq as u32,
        softmax_scale: 1.0 / (d as f32).sqrt(),
        ..Default::default()
    };
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let kvs = [n as u32, hkv as u32, d as u32];
    cache.reshape_and_cache(
        ctx,
        &mut enc,
        &plan,
        0,
        Tensor::new(&kb, dt, kvs),
        Tensor::new(&vb, dt, kvs),
    )?;
    let qs = [tokens as u32, hq as u32, d as u32];
    cache.unified_attention(
        ctx,
        &mut enc,
        &Attention {
            plan: &plan,
            layer: cache.layer(0)?,
            q: Tensor::new(&qb, dt, qs),
            out: Tensor::new(&ob, dt, qs),
            params: &params,
        },
    )?;
    ctx.queue.submit([enc.finish()]);
    let gpu = dt.decode(&ctx.read_buffer(&ob)?);
    // The cache as stored on the GPU, dequantized on the CPU, and the original values.
    let layer = cache.layer(0)?;
    let rows = cfg.rows() as usize;
    let row_bytes = backend.row_bytes(d as u32, dt) as usize;
    let mut stored = Vec::new();
    for (pool, scales, is_v) in [
        (layer.k(), layer.k_scale(), false),
        (layer.v(), layer.v_scale(), true),
    ] {
        let p = layer.row_codec(is_v);
        let bytes = ctx.read_buffer(pool)?;
        let sc = ctx.read_buffer(scales)?;
        let sc: &[f32] = bytemuck::cast_slice(&sc);
        let mut out = vec![0.0; rows * d];
        for r in 0..rows {
            let s = if backend.needs_scale_caches() {
                sc[r]
            } else {
                p.tensor_scale
            };
            out[r * d..(r + 1) * d].copy_from_slice(&backend.dequantize_row(
                &bytes[r * row_bytes..(r + 1) * row_bytes],
                s,
                &p,
            ));
        }
        stored.push(out);
    }
    let mut ko = vec![0.0; rows * d];
    let mut vo = ko.clone();
    reference::cache::write_rows(&mut ko, &keys, &slots, hkv, d);
    reference::cache::write_rows(&mut vo, &values, &slots, hkv, d);
    let g = RefGeometry {
        block_size: bs,
        num_kv_heads: hkv,
        head_size: d,
    };
    let on_codes = reference::attention::attention_on_codes(
        backend.as_ref(),
        dt,
        &q,
        &stored[0],
        &stored[1],
        g,
        &step,
        &params,
    );
    let on_orig = reference::unified_attention(&q, &ko, &vo, g, &step, &params);
    let max_abs = gpu
        .iter()
        .zip(&on_orig)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    Ok((cosine(&gpu, &on_orig), max_abs, cosine(&gpu, &on_codes)))
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}
