//! Cold start of an app: time from `Context::new` to the first decode step submitted (and
//! finished) for a 32-layer f16 cache, with and without a persisted pipeline cache and an
//! explicit warm-up.
//!
//!   cargo run --release --example cold_start -- [--cache DIR] [--warm-up] [--layers N] [--two-calls]
//!
//! Each layer records `KvCache::write_and_attend` (the step's K/V write inside the decode
//! kernel where it can be); `--two-calls` records `reshape_and_cache` then `unified_attention`
//! instead (one more pipeline: the write kernel).
//!
//! Run it twice with the same `--cache DIR`: the first run is cold (and saves the cache), the
//! second loads it. Set `MESA_SHADER_CACHE_DISABLE=true` (lavapipe) or
//! `__GL_SHADER_DISK_CACHE=0` (NVIDIA) to keep the driver's own disk cache out of the figures.

use std::time::Instant;

use anyhow::Result;
use quantkv::*;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |n: &str| {
        args.iter()
            .position(|a| a == n)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let warm_up = args.iter().any(|a| a == "--warm-up");
    let two_calls = args.iter().any(|a| a == "--two-calls");
    let layers: u32 = opt("--layers").and_then(|v| v.parse().ok()).unwrap_or(32);
    let t0 = Instant::now();
    // The process-wide wgpu instance (Vulkan loader and driver loaded), then the adapter and
    // device of `Context::new`.
    let _ = Context::instance();
    let t_instance = t0.elapsed();
    let mut ctx = Context::new()?;
    if let Some(dir) = opt("--cache") {
        ctx = ctx.with_pipeline_cache_dir(dir);
    }
    let t_ctx = t0.elapsed();
    let (hq, hkv, d, ctx_len) = (32u32, 8u32, 128u32, 1000u32);
    let cfg = CacheConfig {
        num_layers: layers,
        num_blocks: 128,
        block_size: 16,
        num_kv_heads: hkv,
        head_size: d,
        mode: KvQuantMode::None,
        dtype: Dtype::F16,
        ..Default::default()
    };
    let cache = KvCache::new(&ctx, &cfg)?;
    let t_cache = t0.elapsed();
    let params = AttentionParams {
        num_q_heads: hq,
        softmax_scale: 1.0 / (d as f32).sqrt(),
        ..Default::default()
    };
    if warm_up {
        cache.warm_up(&ctx, &[params], |done, total| {
            eprint!("\rwarm-up {done}/{total}");
        })?;
        eprintln!();
    }
    let t_warm = t0.elapsed();
    // One decode step: sequence of 1000 keys, its newest token written and attended, every layer.
    let table: Vec<i32> = (0..63).collect();
    let step = StepInput {
        slot_mapping: &[(ctx_len - 1) as i32],
        cu_seqlens_q: &[0, 1],
        seqused_k: &[ctx_len as i32],
        block_table: &table,
        block_table_stride: 63,
        ..Default::default()
    };
    let plan = BatchPlan::new(&ctx, &cfg, &step)?;
    let kv = ctx.try_zeroed("kv", (hkv * d * 2) as u64)?;
    let q = ctx.try_zeroed("q", (hq * d * 2) as u64)?;
    let out = ctx.try_zeroed("out", (hq * d * 2) as u64)?;
    let t_plan = t0.elapsed();
    let mut t_first = t_plan;
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    for l in 0..layers as usize {
        let t = Tensor::new(&kv, Dtype::F16, [1, hkv, d]);
        let a = Attention {
            plan: &plan,
            layer: cache.layer(l)?,
            q: Tensor::new(&q, Dtype::F16, [1, hq, d]),
            out: Tensor::new(&out, Dtype::F16, [1, hq, d]),
            params: &params,
        };
        if two_calls {
            cache.reshape_and_cache(&ctx, &mut enc, &plan, l, t, t)?;
            cache.unified_attention(&ctx, &mut enc, &a)?;
        } else {
            cache.write_and_attend(&ctx, &mut enc, t, t, &a)?;
        }
        if l == 0 {
            // The pipelines are built (or loaded from the cache) in the first layer's calls.
            t_first = t0.elapsed();
        }
    }
    ctx.queue.submit([enc.finish()]);
    let t_submit = t0.elapsed();
    ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
    let t_done = t0.elapsed();
    let saved = ctx.save_pipeline_cache()?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!("adapter: {}", ctx.adapter());
    println!(
        "per layer: {}",
        if two_calls {
            "reshape_and_cache + unified_attention"
        } else {
            "write_and_attend"
        }
    );
    println!(
        "pipeline cache: {}",
        match ctx.pipeline_cache_file() {
            Some((p, loaded)) => format!(
                "{} ({loaded} bytes loaded, {} now{})",
                p.display(),
                ctx.pipeline_cache_bytes().unwrap_or(0),
                if saved { ", saved" } else { "" }
            ),
            None => "none".into(),
        }
    );
    println!(
        "breakdown: instance {:.1} ms, adapter + device {:.1} ms, plan and buffers {:.1} ms, first layer recorded {:.1} ms",
        ms(t_instance),
        ms(t_ctx - t_instance),
        ms(t_plan - t_warm),
        ms(t_first - t_plan)
    );
    println!(
        "{layers} layers: context {:.1} ms, cache {:.1} ms, warm-up {:.1} ms, first step submitted {:.1} ms, finished {:.1} ms ({} pipelines)",
        ms(t_ctx),
        ms(t_cache),
        ms(t_warm),
        ms(t_submit),
        ms(t_done),
        ctx.built_pipelines().len()
    );
    Ok(())
}
