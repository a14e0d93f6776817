//! Shared test harness: a few Contexts per test binary, random paged batches, and comparison
//! against the f64 CPU reference.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use quantkv::reference::attention::RefGeometry;
use quantkv::reference::rng::SplitMix64;
use quantkv::*;

/// How many devices the tests spread over. lavapipe runs a device's submissions on one queue
/// thread and compiles each pipeline there at its first dispatch, so with one shared device
/// every compile of the suite ran on one core; tests on different devices compile in parallel.
const DEVICES: usize = 2;

/// Tests running on each device.
static BUSY: [AtomicUsize; DEVICES] = [const { AtomicUsize::new(0) }; DEVICES];

/// A test thread's hold on its device, given back when the thread ends (libtest runs each
/// test on a thread of its own).
struct Lease(usize);

impl Drop for Lease {
    fn drop(&mut self) {
        BUSY[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The test thread's context: the device running the fewest tests when the test first asks,
/// kept for the whole test. Under `CI=true` a missing adapter fails the test; elsewhere it
/// skips loudly (returns None) so a laptop without a Vulkan driver can still run the CPU tests.
pub fn context() -> Option<&'static Context> {
    static CTX: [OnceLock<Option<Context>>; DEVICES] = [const { OnceLock::new() }; DEVICES];
    thread_local! {
        static LEASE: OnceCell<Lease> = const { OnceCell::new() };
    }
    let i = LEASE.with(|l| {
        l.get_or_init(|| {
            let i = (0..DEVICES)
                .min_by_key(|&i| BUSY[i].load(Ordering::Relaxed))
                .unwrap_or(0);
            BUSY[i].fetch_add(1, Ordering::Relaxed);
            Lease(i)
        })
        .0
    });
    CTX[i]
        .get_or_init(|| match Context::new() {
            Ok(c) => {
                eprintln!("quantkv tests on {} (device {i})", c.adapter());
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
    /// FP8 output with this output_scale.
    pub output_scale: Option<f32>,
    /// Test data shaped like real keys (spec §11) instead of plain N(0, 1).
    pub llm_like: bool,
    /// INT8 per-(token, head) rounding.
    pub rounding: quantkv::modes::Int8Rounding,
    /// Kernel choice (Auto takes the decode kernel for decode-only batches).
    pub path: AttentionPath,
    /// softmax_scale (default 1/sqrt(head_size)).
    pub softmax_scale: Option<f32>,
}

/// Everything a case produced.
pub struct CaseOut {
    pub gpu: Vec<f64>,
    pub cpu: Vec<f64>,
    pub label: String,
    /// Set when the output is FP8 with this output_scale: `gpu` then holds the decoded codes.
    pub fp8_scale: Option<f32>,
    /// f64 attention on the ORIGINAL (unquantized) K/V: the format's error is `cpu` vs this.
    pub cpu_orig: Vec<f64>,
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
    let mut keys = gen(&mut rng, n_write * hkv * d);
    let mut values = gen(&mut rng, n_write * hkv * d);
    let mut q = gen(&mut rng, num_tokens * hq * d);
    if ex.llm_like {
        // Spec §11: 4 key channels x10 and one x30 per kv head, one value channel x10, the
        // first token of every sequence a x20 "sink" key, Q with the same channels x3.
        let mut first_rows = Vec::new();
        let mut t = 0;
        for &(_, kv) in &shape.seqs {
            while slot_mapping[t] < 0 {
                t += 1;
            }
            first_rows.push(t);
            let mut left = kv;
            while left > 0 {
                if slot_mapping[t] >= 0 {
                    left -= 1;
                }
                t += 1;
            }
        }
        reference::data::shape_like_llm(&mut keys, &mut values, &mut q, d, hkv, &first_rows);
        for x in keys.iter_mut().chain(values.iter_mut()).chain(q.iter_mut()) {
            *x = dt.round(*x);
        }
    }
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
        softmax_scale: ex.softmax_scale.unwrap_or(1.0 / (d as f32).sqrt()),
        window_size: (ex.window_left.unwrap_or(-1), 0),
        softcap: ex.softcap,
        sinks: ex.sinks.then_some(&sinks[..]),
        alibi_slopes: (ex.alibi || ex.alibi_sqrt).then_some(&slopes[..]),
        use_alibi_sqrt: ex.alibi_sqrt,
        split: ex.split,
        seq_threshold_3d: ex.seq_threshold_3d,
        segment_buffer: seg_buf.as_ref(),
        output_scale: ex.output_scale,
        path: ex.path,
    };
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks: num_blocks as u32,
        block_size: shape.block_size,
        num_kv_heads: shape.kv_heads,
        head_size: shape.head_size,
        mode: shape.mode,
        dtype: dt,
        options: ModeOptions::default().with_int8_rounding(ex.rounding),
    };
    let mut cache = KvCache::new(ctx, &cfg)?;
    let plan = BatchPlan::new(ctx, &cfg, &step)?;
    if quantkv::modes::backend(shape.mode)?.uses_tensor_scales() {
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        let ks = reference::quant::calibrate_scale(&f(&keys), 100.0);
        let vs = reference::quant::calibrate_scale(&f(&values), 100.0);
        cache.set_tensor_scales(0, ks, vs)?;
    }
    let kbuf = ctx.upload("k_in", &dt.encode(&keys));
    let vbuf = ctx.upload("v_in", &dt.encode(&values));
    let qbuf = ctx.upload("q", &dt.encode(&q));
    // One padding row past num_tokens: attention must leave it untouched.
    let out_rows = num_tokens as u32 + 1;
    let canary = vec![7.0; out_rows as usize * hq * d];
    let odt = if ex.output_scale.is_some() {
        Dtype::Fp8E4m3
    } else {
        dt
    };
    let obuf = ctx.upload("out", &odt.encode(&canary));
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let mut poisoned_rows = 0usize;
    let mut pre_poison = None;
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
        pre_poison = Some(check_layout(ctx, &cache, &keys, &values, &slot_mapping)?);
        // Mode `none`: NaN values; modes with scale caches: NaN scales (codes have no NaN).
        let backend = quantkv::modes::backend(shape.mode)?;
        let plain = backend.stores_rows_as_given();
        assert!(
            plain || backend.needs_scale_caches(),
            "{:?} cannot be poisoned",
            shape.mode
        );
        let row_bytes = if plain { d * dt.size() as usize } else { 4 };
        let nan: Vec<u8> = match (plain, dt) {
            (true, Dtype::F16) => 0x7E00u16.to_le_bytes().repeat(d),
            _ => 0x7FC0_0000u32.to_le_bytes().repeat(row_bytes / 4),
        };
        let block_rows = nan.repeat(bs * hkv);
        let (kt, vt) = if plain {
            (cache.layer(0).unwrap().k(), cache.layer(0).unwrap().v())
        } else {
            (
                cache.layer(0).unwrap().k_scale(),
                cache.layer(0).unwrap().v_scale(),
            )
        };
        for (s, &(ql, kv)) in shape.seqs.iter().enumerate() {
            let first_qpos = (kv - ql) as usize;
            let key_lo = (first_qpos + 1).saturating_sub(w) / 64 * 64; // 64 = the largest key tile
            for c in 0..key_lo / bs {
                let b = block_table[s * stride + c] as u64;
                let off = b * (bs * hkv * row_bytes) as u64;
                ctx.queue.write_buffer(kt, off, &block_rows);
                ctx.queue.write_buffer(vt, off, &block_rows);
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
            layer: cache.layer(0).unwrap(),
            q: Tensor::new(&qbuf, dt, q_shape),
            out: Tensor::new(&obuf, odt, [out_rows, shape.q_heads, shape.head_size]),
            params: &params,
        },
    )?;
    ctx.queue.submit([enc.finish()]);
    let out_all = odt.decode(&ctx.read_buffer(&obuf)?);
    let tail = &out_all[num_tokens * hq * d..];
    assert!(
        tail.iter().all(|&x| x == 7.0),
        "attention wrote past num_tokens"
    );
    let gpu = out_all[..num_tokens * hq * d].to_vec();

    // Spec §7 level 1: GPU-written codes and scales vs the CPU quantizer; then the reference
    // runs on the codes the GPU actually stored (level 2 is "attention on the same codes").
    // With poisoning, the cache was read back before the poison went in.
    let (kc, vc) = match pre_poison {
        Some(c) => c,
        None => check_layout(ctx, &cache, &keys, &values, &slot_mapping)?,
    };
    let g = RefGeometry {
        block_size: bs,
        num_kv_heads: hkv,
        head_size: d,
    };
    // Rotation modes: the reference works in the rotated basis (spec §5.4, §6.5): Q rotated and
    // rounded to the model dtype, the softmax scale adjusted, the output rounded and un-rotated.
    let cpu = quantkv::reference::attention::attention_on_codes(
        quantkv::modes::backend(shape.mode)?.as_ref(),
        dt,
        &q,
        &kc,
        &vc,
        g,
        &step,
        &params,
    );
    let mut ko = vec![0.0; num_blocks * bs * hkv * d];
    let mut vo = ko.clone();
    reference::cache::write_rows(&mut ko, &keys, &slot_mapping, hkv, d);
    reference::cache::write_rows(&mut vo, &values, &slot_mapping, hkv, d);
    let cpu_orig = reference::unified_attention(&q, &ko, &vo, g, &step, &params);
    Ok(CaseOut {
        gpu,
        cpu,
        label: format!("seed {seed:#x} {shape:?} {ex:?}"),
        fp8_scale: ex.output_scale,
        cpu_orig,
    })
}

/// Spec §7 level 2: |gpu − ref| ≤ tol·(1+|ref|) per element (tol 2e-3 for f16, 1e-3 for f32,
/// 8e-3 for bf16, whose output rounding alone reaches 2^-9)
/// and cosine ≥ 0.99999. Reports the worst index.
pub fn assert_close(out: &CaseOut, dtype: Dtype) {
    if let Some(scale) = out.fp8_scale {
        // FP8 output: within one e4m3 step of the reference's own quantization.
        use quantkv::reference::quant::{fp8_e4m3_encode, fp8_ordinal};
        for (i, (g, c)) in out.gpu.iter().zip(&out.cpu).enumerate() {
            let got = fp8_ordinal(fp8_e4m3_encode(*g as f32));
            let want = fp8_ordinal(fp8_e4m3_encode(
                (c / scale as f64).clamp(-448.0, 448.0) as f32
            ));
            assert!(
                (got - want).abs() <= 1,
                "{}: fp8 output {i}: code {got} vs reference {want} ({g} vs {})",
                out.label,
                c / scale as f64
            );
        }
        return;
    }
    // bf16 keeps 8 significand bits: its output rounding alone is up to 2^-9 relative.
    let tol = match dtype {
        Dtype::F16 => 2e-3,
        Dtype::Bf16 => 8e-3,
        _ => 1e-3,
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

/// A one-layer f16 cache of mode `none` with blocks of 16 tokens.
pub fn none_cfg(num_blocks: u32, num_kv_heads: u32, head_size: u32) -> CacheConfig {
    CacheConfig {
        num_layers: 1,
        num_blocks,
        block_size: 16,
        num_kv_heads,
        head_size,
        dtype: Dtype::F16,
        ..Default::default()
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

/// Spec §7 level 1 for layer 0 of `cache` after writing `keys`/`values`
/// (`[tokens, kv_heads, head]`) at `slots`: every written row's scale within 2e-6 (relative)
/// of the CPU quantizer's, at least 99.9 % of codes identical and the rest one step away,
/// untouched rows still zero. Returns the dequantized K and V caches the GPU actually holds.
pub fn check_layout(
    ctx: &Context,
    cache: &KvCache,
    keys: &[f64],
    values: &[f64],
    slots: &[i32],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let cfg = *cache.config();
    let layer = cache.layer(0).unwrap();
    let backend = quantkv::modes::backend(cfg.mode)?;
    let (hkv, d) = (cfg.num_kv_heads as usize, cfg.head_size as usize);
    let rows = cfg.rows() as usize;
    let row_bytes = backend.row_bytes(cfg.head_size, cfg.dtype) as usize;
    let mut written = vec![false; rows];
    for &s in slots.iter().filter(|&&s| s >= 0) {
        for h in 0..hkv {
            written[s as usize * hkv + h] = true;
        }
    }
    let mut result = Vec::new();
    for (src, pool, scales, is_v) in [
        (keys, layer.k(), layer.k_scale(), false),
        (values, layer.v(), layer.v_scale(), true),
    ] {
        let p = layer.row_codec(is_v);
        let bytes = ctx.read_buffer(pool)?;
        let sc: Vec<f32> = bytemuck::cast_slice::<u8, f32>(&ctx.read_buffer(scales)?).to_vec();
        let mut deq = vec![0.0; rows * d];
        let (mut codes, mut differ) = (0usize, 0usize);
        for (t, &slot) in slots.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            for h in 0..hkv {
                let r = slot as usize * hkv + h;
                let x: Vec<f32> = src[(t * hkv + h) * d..(t * hkv + h + 1) * d]
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let (want, want_scale) = backend.quantize_row(&x, &p);
                let got = &bytes[r * row_bytes..(r + 1) * row_bytes];
                let got_scale = if backend.needs_scale_caches() {
                    sc[r]
                } else {
                    p.tensor_scale
                };
                let rel = ((got_scale - want_scale) / want_scale).abs();
                assert!(
                    rel <= backend.scale_tolerance(),
                    "{:?} row {r}: scale {got_scale} vs CPU {want_scale}",
                    cfg.mode
                );
                let (a, b) = (
                    backend.code_ordinals(got, &p),
                    backend.code_ordinals(&want, &p),
                );
                for (i, (ga, wb)) in a.iter().zip(&b).enumerate() {
                    codes += 1;
                    if ga != wb {
                        differ += 1;
                        assert_eq!(
                            (ga - wb).abs(),
                            1,
                            "{:?} row {r} element {i}: code {ga} vs CPU {wb}",
                            cfg.mode
                        );
                    }
                }
                deq[r * d..(r + 1) * d]
                    .copy_from_slice(&backend.dequantize_row(got, got_scale, &p));
            }
        }
        assert!(
            differ * 1000 <= codes,
            "{:?}: {differ} of {codes} codes differ from the CPU quantizer",
            cfg.mode
        );
        for (r, w) in written.iter().enumerate() {
            if !w {
                assert!(
                    bytes[r * row_bytes..(r + 1) * row_bytes]
                        .iter()
                        .all(|&b| b == 0),
                    "{:?}: unwritten row {r} touched",
                    cfg.mode
                );
            }
        }
        result.push(deq);
    }
    let v = result.pop().unwrap();
    Ok((result.pop().unwrap(), v))
}

/// A plan of one sequence whose `n` newest tokens (of `n` in all) are the step's queries, in
/// block 0; with `write`, they are also written to slots `0..n`.
pub fn one_sequence_plan(ctx: &Context, cfg: &CacheConfig, n: i32, write: bool) -> BatchPlan {
    let slots: Vec<i32> = if write { (0..n).collect() } else { Vec::new() };
    BatchPlan::new(
        ctx,
        cfg,
        &StepInput {
            slot_mapping: &slots,
            cu_seqlens_q: &[0, n],
            seqused_k: &[n],
            block_table: &[0],
            block_table_stride: 1,
            ..Default::default()
        },
    )
    .unwrap()
}
