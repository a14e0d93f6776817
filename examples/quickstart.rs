//! quickstart: a small Llama-like layer (32 query heads, 8 KV heads, head size 128, block 16)
//! on the best available adapter. Writes a prompt's K/V into the paged cache, runs one prefill
//! chunk and a few decode steps, checks every output against the f64 CPU reference, and prints
//! the adapter, the max error and the GPU time.
//!
//!   cargo xtask demo            (installs lavapipe first when no Vulkan driver exists)
//!   cargo run --release --example quickstart [-- --prompt 300 --decode 4 --f32]

use anyhow::{ensure, Result};
use quantkv::reference::attention::RefGeometry;
use quantkv::reference::rng::SplitMix64;
use quantkv::*;

const HQ: u32 = 32;
const HKV: u32 = 8;
const D: u32 = 128;
const BS: u32 = 16;

struct Seq {
    keys: Vec<f64>,
    values: Vec<f64>,
    len: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let prompt = arg("--prompt", 200);
    let decode_steps = arg("--decode", 4);
    let ctx = Context::new()?;
    let dtype = if args.iter().any(|a| a == "--f32") {
        Dtype::F32
    } else {
        Dtype::F16
    };
    println!("adapter : {}", ctx.adapter());
    println!(
        "caps    : shader_f16={} subgroups={} ({}..{}) timestamps={} max_binding={} MiB",
        ctx.caps().shader_f16,
        ctx.caps().subgroups,
        ctx.caps().subgroup_min_size,
        ctx.caps().subgroup_max_size,
        ctx.caps().timestamps,
        ctx.limits().max_storage_buffer_binding_size >> 20
    );
    let total = prompt + decode_steps;
    let num_blocks = total.div_ceil(BS as usize) as u32 + 4;
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks,
        block_size: BS,
        num_kv_heads: HKV,
        head_size: D,
        mode: KvQuantMode::None,
        dtype,
        ..Default::default()
    };
    let cache = KvCache::new(&ctx, &cfg)?;
    let fp = cache.footprint();
    println!(
        "cache   : {} blocks x {} tokens, {:?} {}, {} B/token, {:.1} MiB",
        num_blocks,
        BS,
        cfg.mode,
        dtype.name(),
        fp.bytes_per_token,
        fp.total_bytes as f64 / (1 << 20) as f64
    );
    // Blocks in shuffled physical order, as a real allocator would hand them out.
    let mut rng = SplitMix64::new(0x5EED);
    let perm = rng.permutation(num_blocks as usize);
    let stride = total.div_ceil(BS as usize);
    let block_table: Vec<i32> = perm[..stride].iter().map(|&b| b as i32).collect();
    let slot = |pos: usize| block_table[pos / BS as usize] * BS as i32 + (pos % BS as usize) as i32;
    let row = (HKV * D) as usize;
    let mut seq = Seq {
        keys: vec![],
        values: vec![],
        len: 0,
    };
    let mut timer = GpuTimer::new(&ctx, 2 * (decode_steps as u32 + 1)).ok();
    let mut max_err = 0.0f64;
    let mut wall = Vec::new();

    // Step 0: the prompt as one prefill chunk; steps 1..: one decode token each.
    let mut chunks = vec![prompt];
    chunks.extend(std::iter::repeat_n(1, decode_steps));
    for (step_i, &n) in chunks.iter().enumerate() {
        let gen = |rng: &mut SplitMix64, len: usize| -> Vec<f64> {
            (0..len).map(|_| dtype.round(rng.normal())).collect()
        };
        let k_new = gen(&mut rng, n * row);
        let v_new = gen(&mut rng, n * row);
        let q = gen(&mut rng, n * (HQ * D) as usize);
        seq.keys.extend_from_slice(&k_new);
        seq.values.extend_from_slice(&v_new);
        let start = seq.len;
        seq.len += n;
        let slots: Vec<i32> = (start..seq.len).map(slot).collect();
        let cu = [0, n as i32];
        let used = [seq.len as i32];
        let step = StepInput {
            slot_mapping: &slots,
            cu_seqlens_q: &cu,
            seqused_k: &used,
            block_table: &block_table,
            block_table_stride: stride,
            ..Default::default()
        };
        let plan = BatchPlan::new(&ctx, &cfg, &step)?;
        let kb = ctx.upload("k", &dtype.encode(&k_new));
        let vb = ctx.upload("v", &dtype.encode(&v_new));
        let qb = ctx.upload("q", &dtype.encode(&q));
        let ob = ctx.zeroed("out", n as u64 * (HQ * D * dtype.size()) as u64);
        let params = AttentionParams {
            num_q_heads: HQ,
            softmax_scale: 1.0 / (D as f32).sqrt(),
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        if let Some(t) = timer.as_mut() {
            t.start(&mut enc)?;
        }
        let kv_shape = [n as u32, HKV, D];
        cache.reshape_and_cache(
            &ctx,
            &mut enc,
            &plan,
            0,
            Tensor::new(&kb, dtype, kv_shape),
            Tensor::new(&vb, dtype, kv_shape),
        )?;
        if let Some(t) = timer.as_mut() {
            t.end(&mut enc);
            t.start(&mut enc)?;
        }
        let qs = [n as u32, HQ, D];
        cache.unified_attention(
            &ctx,
            &mut enc,
            &Attention {
                plan: &plan,
                layer: cache.layer(0)?,
                q: Tensor::new(&qb, dtype, qs),
                out: Tensor::new(&ob, dtype, qs),
                params: &params,
            },
        )?;
        if let Some(t) = timer.as_mut() {
            t.end(&mut enc);
        }
        ctx.queue.submit([enc.finish()]);
        let gpu = dtype.decode(&ctx.read_buffer(&ob)?);
        wall.push(t0.elapsed().as_secs_f64() * 1e3);

        // The reference sees the same cache contents, laid out the same way.
        let rows_total = (num_blocks * BS) as usize * row;
        let mut kc = vec![0.0; rows_total];
        let mut vc = vec![0.0; rows_total];
        let all_slots: Vec<i32> = (0..seq.len).map(slot).collect();
        reference::cache::write_rows(&mut kc, &seq.keys, &all_slots, HKV as usize, D as usize);
        reference::cache::write_rows(&mut vc, &seq.values, &all_slots, HKV as usize, D as usize);
        let g = RefGeometry {
            block_size: BS as usize,
            num_kv_heads: HKV as usize,
            head_size: D as usize,
        };
        let cpu = reference::unified_attention(&q, &kc, &vc, g, &step, &params);
        let err = gpu
            .iter()
            .zip(&cpu)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0, f64::max);
        max_err = max_err.max(err);
        let kind = if step_i == 0 { "prefill" } else { "decode " };
        println!("step {step_i}: {kind} {n:>4} tokens, context {:>4}, max |gpu-ref|/(1+|ref|) = {err:.2e}", seq.len);
    }
    if let Some(t) = timer.as_mut() {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        t.resolve(&mut enc);
        ctx.queue.submit([enc.finish()]);
        let us = t.read_us(&ctx)?;
        println!("GPU time (timestamp queries):");
        for (i, pair) in us.chunks(2).enumerate() {
            println!(
                "  step {i}: reshape_and_cache {:8.1} us   unified_attention {:8.1} us",
                pair[0], pair[1]
            );
        }
    } else {
        println!("GPU time: timestamp queries unavailable; wall time per step incl. readback (ms): {wall:.2?}");
    }
    let tol = if dtype == Dtype::F16 { 2e-3 } else { 1e-3 };
    println!(
        "max error {max_err:.2e} (bound {tol:.0e}): {}",
        if max_err <= tol { "OK" } else { "FAIL" }
    );
    ensure!(max_err <= tol, "GPU output differs from the reference");
    Ok(())
}
