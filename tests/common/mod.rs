//! Shared test harness: one Context per test binary, random paged batches, and comparison
//! against the f64 CPU reference.
#![allow(dead_code)]

use std::sync::OnceLock;

use quantkv::reference::attention::RefGeometry;
use quantkv::reference::rng::SplitMix64;
use quantkv::*;

/// The shared context. Under `CI=true` a missing adapter fails the test; elsewhere it skips
/// loudly (returns None) so a laptop without a Vulkan driver can still run the CPU tests.
pub fn context() -> Option<&'static Context> {
    static CTX: OnceLock<Option<Context>> = OnceLock::new();
    CTX.get_or_init(|| match Context::new() {
        Ok(c) => {
            eprintln!("quantkv tests on {}", c.adapter());
            Some(c)
        }
        Err(e) => {
            if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
                panic!("CI=true and no GPU adapter: {e}");
            }
            eprintln!("SKIPPING GPU TESTS: {e}");
            None
        }
    })
    .as_ref()
}

/// Shape of one randomized case.
#[derive(Clone, Debug)]
pub struct Shape {
    /// (query_len, kv_len) per sequence.
    pub seqs: Vec<(u32, u32)>,
    pub q_heads: u32,
    pub kv_heads: u32,
    pub head_size: u32,
    pub block_size: u32,
    pub dtype: Dtype,
    pub mode: KvQuantMode,
}

/// Optional attention features of a case.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub window_left: Option<i32>,
    pub softcap: f32,
    pub sinks: bool,
    pub alibi: bool,
    pub alibi_sqrt: bool,
    pub qq_bias: Option<usize>,
    /// Prefix ranges per sequence as (start, end) pairs, inclusive.
    pub prefix_ranges: Option<Vec<Vec<(i32, i32)>>>,
    pub split: SplitK,
    pub seq_threshold_3d: Option<u32>,
    /// Size of a caller-provided split-K buffer (None: the step's pool).
    pub segment_buffer_bytes: Option<u64>,
    /// Overwrite, with NaN, every cached block that lies wholly before the sliding window of a
    /// sequence's first query (rounded down to 64 keys, the largest tile): the kernel must never read them.
    pub poison_outside_window: bool,
}

/// Everything a case produced.
pub struct CaseOut {
    pub gpu: Vec<f64>,
    pub cpu: Vec<f64>,
    pub label: String,
}

/// Builds a random batch, writes every sequence's K/V with one reshape_and_cache (with padding
/// rows and a shuffled block table), runs attention, and returns GPU and reference outputs.
pub fn run_case(ctx: &Context, seed: u64, shape: &Shape, ex: &Extras) -> Result<CaseOut> {
    let mut rng = SplitMix64::new(seed);
    let (hq, hkv, d, bs) = (
        shape.q_heads as usize,
        shape.kv_heads as usize,
        shape.head_size as usize,
        shape.block_size as usize,
    );
    let blocks_per_seq: Vec<usize> = shape
        .seqs
        .iter()
        .map(|s| (s.1 as usize).div_ceil(bs))
        .collect();
    let stride = blocks_per_seq.iter().copied().max().unwrap_or(1).max(1) + 1;
    let num_blocks = blocks_per_seq.iter().sum::<usize>() + 3;
    let perm = rng.permutation(num_blocks);
    let mut block_table = vec![-1i32; shape.seqs.len() * stride];
    let mut next = 0;
    for (s, &nb) in blocks_per_seq.iter().enumerate() {
        for c in 0..nb {
            block_table[s * stride + c] = perm[next] as i32;
            next += 1;
        }
    }
    // Slot mapping: every key of every sequence, with a padding row after every 7th token.
    let mut slot_mapping = Vec::new();
    for (s, &(_, kv)) in shape.seqs.iter().enumerate() {
        for p in 0..kv as usize {
            let b = block_table[s * stride + p / bs] as usize;
            slot_mapping.push((b * bs + p % bs) as i32);
            if slot_mapping.len() % 7 == 0 {
                slot_mapping.push(-1);
            }
        }
    }
    let n_write = slot_mapping.len();
    let mut cu = vec![0i32];
    for &(q, _) in &shape.seqs {
        cu.push(cu.last().unwrap() + q as i32);
    }
    let seqused: Vec<i32> = shape.seqs.iter().map(|s| s.1 as i32).collect();
    let num_tokens = *cu.last().unwrap() as usize;

    let dt = shape.dtype;
    let gen = |rng: &mut SplitMix64, n: usize| -> Vec<f64> {
        (0..n).map(|_| dt.round(rng.normal())).collect()
    };
    let keys = gen(&mut rng, n_write * hkv * d);
    let values = gen(&mut rng, n_write * hkv * d);
    let q = gen(&mut rng, num_tokens * hq * d);
    let sinks: Vec<f32> = (0..hq).map(|_| (rng.normal() * 2.0) as f32).collect();
    let slopes: Vec<f32> = (0..hq)
        .map(|h| 2f32.powf(-8.0 * (h + 1) as f32 / hq as f32))
        .collect();
    let max_q = shape.seqs.iter().map(|s| s.0).max().unwrap_or(0) as usize;
    let qq_vals: Vec<f32> = match ex.qq_bias {
        Some(cols) => (0..max_q * cols).map(|_| rng.normal() as f32).collect(),
        None => vec![],
    };
    let mm_flat: Vec<i32> = ex
        .prefix_ranges
        .as_ref()
        .map(|v| {
            v.iter()
                .flat_map(|r| r.iter().flat_map(|&(a, b)| [a, b]))
                .collect()
        })
        .unwrap_or_default();
    let step = StepInput {
        slot_mapping: &slot_mapping,
        cu_seqlens_q: &cu,
        seqused_k: &seqused,
        block_table: &block_table,
        block_table_stride: stride,
        qq_bias: ex.qq_bias.map(|cols| QqBias {
            values: &qq_vals,
            rows: max_q,
            cols,
        }),
        prefix_ranges: ex.prefix_ranges.as_ref().map(|v| PrefixRanges {
            ranges: &mm_flat,
            ranges_per_seq: v.first().map(|r| r.len()).unwrap_or(0),
        }),
    };
    let seg_buf = ex.segment_buffer_bytes.map(|n| ctx.zeroed("segments", n));
    let params = AttentionParams {
        num_q_heads: shape.q_heads,
        softmax_scale: 1.0 / (d as f32).sqrt(),
        window_size: (ex.window_left.unwrap_or(-1), 0),
        softcap: ex.softcap,
        sinks: ex.sinks.then_some(&sinks[..]),
        alibi_slopes: (ex.alibi || ex.alibi_sqrt).then_some(&slopes[..]),
        use_alibi_sqrt: ex.alibi_sqrt,
        split: ex.split,
        seq_threshold_3d: ex.seq_threshold_3d,
        segment_buffer: seg_buf.as_ref(),
    };
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks: num_blocks as u32,
        block_size: shape.block_size,
        num_kv_heads: shape.kv_heads,
        head_size: shape.head_size,
        mode: shape.mode,
        dtype: dt,
    };
    let cache = KvCache::new(ctx, &cfg)?;
    let plan = BatchPlan::new(ctx, &cfg, &step)?;
    let kbuf = ctx.upload("k_in", &dt.encode(&keys));
    let vbuf = ctx.upload("v_in", &dt.encode(&values));
    let qbuf = ctx.upload("q", &dt.encode(&q));
    // One padding row past num_tokens: attention must leave it untouched.
    let out_rows = num_tokens as u32 + 1;
    let canary = vec![7.0; out_rows as usize * hq * d];
    let obuf = ctx.upload("out", &dt.encode(&canary));
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let mut poisoned_rows = 0usize;
    let kv_shape = [n_write as u32, shape.kv_heads, shape.head_size];
    cache.reshape_and_cache(
        ctx,
        &mut enc,
        &plan,
        0,
        Tensor::new(&kbuf, dt, kv_shape),
        Tensor::new(&vbuf, dt, kv_shape),
    )?;
    if ex.poison_outside_window {
        let w = ex.window_left.expect("poison needs a window") as usize + 1;
        ctx.queue.submit([std::mem::replace(
            &mut enc,
            ctx.device.create_command_encoder(&Default::default()),
        )
        .finish()]);
        let row_bytes = d * dt.size() as usize;
        let nan: Vec<u8> = match dt {
            Dtype::F16 => 0x7E00u16.to_le_bytes().repeat(d),
            Dtype::F32 => 0x7FC0_0000u32.to_le_bytes().repeat(d),
        };
        let block_rows = nan.repeat(bs * hkv);
        for (s, &(ql, kv)) in shape.seqs.iter().enumerate() {
            let first_qpos = (kv - ql) as usize;
            let key_lo = (first_qpos + 1).saturating_sub(w) / 64 * 64; // 64 = the largest key tile
            for c in 0..key_lo / bs {
                let b = block_table[s * stride + c] as u64;
                let off = b * (bs * hkv * row_bytes) as u64;
                ctx.queue.write_buffer(&cache.layer(0).k, off, &block_rows);
                ctx.queue.write_buffer(&cache.layer(0).v, off, &block_rows);
                poisoned_rows += bs;
            }
        }
        eprintln!(
            "poisoned {poisoned_rows} of {} cached tokens",
            shape.seqs.iter().map(|s| s.1 as usize).sum::<usize>()
        );
    }
    let q_shape = [num_tokens as u32, shape.q_heads, shape.head_size];
    cache.unified_attention(
        ctx,
        &mut enc,
        &Attention {
            plan: &plan,
            layer: cache.layer(0),
            q: Tensor::new(&qbuf, dt, q_shape),
            out: Tensor::new(&obuf, dt, [out_rows, shape.q_heads, shape.head_size]),
            params: &params,
        },
    )?;
    ctx.queue.submit([enc.finish()]);
    let out_all = dt.decode(&ctx.read_buffer(&obuf)?);
    let tail = &out_all[num_tokens * hq * d..];
    assert!(
        tail.iter().all(|&x| x == 7.0),
        "attention wrote past num_tokens"
    );
    let gpu = out_all[..num_tokens * hq * d].to_vec();

    // Layout check (spec §7 level 1): the GPU-written pools equal the CPU model byte for byte.
    let rows_total = num_blocks * bs * hkv * d;
    let mut kc = vec![0.0; rows_total];
    let mut vc = vec![0.0; rows_total];
    reference::cache::write_rows(&mut kc, &keys, &slot_mapping, hkv, d);
    reference::cache::write_rows(&mut vc, &values, &slot_mapping, hkv, d);
    if shape.mode == KvQuantMode::None && poisoned_rows == 0 {
        let gk = dt.decode(&ctx.read_buffer(&cache.layer(0).k)?);
        let gv = dt.decode(&ctx.read_buffer(&cache.layer(0).v)?);
        assert_eq!(gk, kc, "K pool layout differs from the CPU model");
        assert_eq!(gv, vc, "V pool layout differs from the CPU model");
    }
    let g = RefGeometry {
        block_size: bs,
        num_kv_heads: hkv,
        head_size: d,
    };
    let cpu = reference::unified_attention(&q, &kc, &vc, g, &step, &params);
    Ok(CaseOut {
        gpu,
        cpu,
        label: format!("seed {seed:#x} {shape:?} {ex:?}"),
    })
}

/// Spec §7 level 2: |gpu − ref| ≤ tol·(1+|ref|) per element (tol 2e-3 for f16, 1e-3 for f32)
/// and cosine ≥ 0.99999. Reports the worst index.
pub fn assert_close(out: &CaseOut, dtype: Dtype) {
    let tol = match dtype {
        Dtype::F16 => 2e-3,
        Dtype::F32 => 1e-3,
    };
    assert_eq!(out.gpu.len(), out.cpu.len());
    let mut worst = (0usize, 0.0f64);
    for (i, (g, c)) in out.gpu.iter().zip(&out.cpu).enumerate() {
        let excess = (g - c).abs() / (1.0 + c.abs());
        assert!(
            excess.is_finite(),
            "{}: non-finite at {i}: gpu {g} ref {c}",
            out.label
        );
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    assert!(
        worst.1 <= tol,
        "{}: worst |gpu-ref|/(1+|ref|) = {:.3e} at {} (gpu {}, ref {})",
        out.label,
        worst.1,
        worst.0,
        out.gpu[worst.0],
        out.cpu[worst.0]
    );
    let cos = cosine(&out.gpu, &out.cpu);
    assert!(cos >= 0.99999, "{}: cosine {cos}", out.label);
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        dot / (na * nb)
    }
}

pub fn shape(
    seqs: &[(u32, u32)],
    q_heads: u32,
    kv_heads: u32,
    head_size: u32,
    dtype: Dtype,
) -> Shape {
    Shape {
        seqs: seqs.to_vec(),
        q_heads,
        kv_heads,
        head_size,
        block_size: 16,
        dtype,
        mode: KvQuantMode::None,
    }
}
