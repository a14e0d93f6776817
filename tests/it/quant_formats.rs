//! 8-bit formats: FP8 e4m3 encode/decode (exhaustive, edge values, GPU == CPU), the non-finite
//! rules of spec §10.7 on the GPU write path, and quantization quality on LLM-shaped data
//! (spec §11, §7 level 3, reported).

use crate::common::*;
use quantkv::modes::{Int8Rounding, RowCodec};
use quantkv::reference::quant::*;
use quantkv::*;

fn quantized_modes() -> Vec<KvQuantMode> {
    KvQuantMode::ALL
        .into_iter()
        .filter(|&m| m.is_supported() && !quantkv::modes::create(m).unwrap().stores_rows_as_given())
        .collect()
}

#[test]
fn fp8_roundtrips_all_256_codes() {
    for c in 0..=255u8 {
        if c & 0x7F == 0x7F {
            continue; // NaN codes, never stored
        }
        let v = fp8_e4m3_decode(c);
        assert!(v.is_finite());
        assert_eq!(fp8_e4m3_encode(v), c, "code {c:#04x} value {v}");
    }
    assert_eq!(fp8_e4m3_decode(0x7E), 448.0);
    assert_eq!(fp8_e4m3_decode(0x01), 2f32.powi(-9));
    assert_eq!(fp8_e4m3_decode(0x08), 2f32.powi(-6));
    assert_eq!(fp8_e4m3_decode(0x80), 0.0);
}

#[test]
fn fp8_edge_values() {
    let e = fp8_e4m3_encode;
    assert_eq!(e(0.0), 0x00);
    assert_eq!(e(-0.0), 0x80);
    assert_eq!(
        e(2f32.powi(-10)),
        0x00,
        "half the smallest subnormal ties to even (0)"
    );
    assert_eq!(
        e(1.5 * 2f32.powi(-9)),
        0x02,
        "tie between 1 and 2 goes to even"
    );
    assert_eq!(e(2.5 * 2f32.powi(-9)), 0x02);
    assert_eq!(
        e(7.5 * 2f32.powi(-9)),
        0x08,
        "subnormal rounds up into the first normal"
    );
    assert_eq!(e(448.0), 0x7E);
    assert_eq!(e(460.0), 0x7E, "saturates, never 0x7F");
    assert_eq!(e(1e30), 0x7E);
    assert_eq!(e(-1e30), 0xFE);
    assert_eq!(e(f32::INFINITY), 0x7E);
    assert_eq!(e(f32::NEG_INFINITY), 0xFE);
    assert_eq!(e(f32::NAN), 0x00);
    // Every midpoint between adjacent finite codes rounds to the even code.
    for c in 0..0x7Eu8 {
        let mid = (fp8_e4m3_decode(c) + fp8_e4m3_decode(c + 1)) / 2.0;
        let even = if c & 1 == 0 { c } else { c + 1 };
        assert_eq!(e(mid), even, "midpoint above {c:#04x}");
        assert_eq!(e(-mid), even | 0x80);
    }
}

#[test]
fn cpu_quantizers_follow_the_non_finite_rules() {
    let p = RowCodec {
        dtype: Dtype::F32,
        tensor_scale: 0.5,
        options: ModeOptions::default(),
    };
    let (codes, scale) = quantize_int8_pth(&[0.0; 32], Int8Rounding::Truncate);
    assert_eq!(scale, 1e-6);
    assert!(codes.iter().all(|&c| c == 0));
    let mut row = vec![1.0f32; 32];
    row[0] = f32::NAN;
    row[1] = f32::INFINITY;
    row[2] = f32::NEG_INFINITY;
    row[3] = 127.0;
    let (c, s) = quantize_int8_pth(&row, Int8Rounding::Truncate);
    assert_eq!(
        (c[0], c[1] as i8, c[2] as i8, c[3] as i8),
        (0, 127, -127, 127)
    );
    assert_eq!(s, 1.0, "Inf/NaN stay out of the statistics");
    assert_eq!(c[4] as i8, 1);
    let (c, _) = quantize_fp8_pth(&row);
    assert_eq!((c[0], c[1], c[2]), (0, 0x7E, 0xFE));
    assert_eq!(
        quantize_int8_tensor(&row, p.tensor_scale)[..4],
        [0, 127, (-127i8) as u8, 127]
    );
    assert_eq!(
        quantize_fp8_tensor(&row, p.tensor_scale)[..3],
        [0, 0x7E, 0xFE]
    );
    // Truncation vs nearest-even
    let (t, _) = quantize_int8_pth(&[127.0, 0.9, -0.9, 1.5], Int8Rounding::Truncate);
    let (n, _) = quantize_int8_pth(&[127.0, 0.9, -0.9, 1.5], Int8Rounding::NearestEven);
    assert_eq!(
        t.iter().map(|&c| c as i8).collect::<Vec<_>>(),
        [127, 0, 0, 1]
    );
    assert_eq!(
        n.iter().map(|&c| c as i8).collect::<Vec<_>>(),
        [127, 1, -1, 2]
    );
    // Half away from zero (the default, spec §3.3): ties go outward, both signs.
    let row = [127.0, 0.9, -0.9, 1.5, -1.5, 2.5, -2.5, 0.4];
    let (h, _) = quantize_int8_pth(&row, Int8Rounding::default());
    assert_eq!(Int8Rounding::default(), Int8Rounding::HalfAwayFromZero);
    assert_eq!(
        h.iter().map(|&c| c as i8).collect::<Vec<_>>(),
        [127, 1, -1, 2, -2, 3, -3, 0]
    );
}

/// Writes `rows` (f32, `[n, 1, d]`) through the GPU write path of `mode` and checks the layout
/// against the CPU quantizer; returns the cache for further checks.
fn gpu_write(ctx: &Context, mode: KvQuantMode, rows: &[f32], d: u32, tensor_scale: f32) -> KvCache {
    let n = rows.len() / d as usize;
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks: (n as u32).div_ceil(16) + 1,
        block_size: 16,
        num_kv_heads: 1,
        head_size: d,
        mode,
        dtype: Dtype::F32,
        ..Default::default()
    };
    let mut cache = KvCache::new(ctx, &cfg).unwrap();
    cache
        .set_tensor_scales(0, tensor_scale, tensor_scale)
        .unwrap();
    let slots: Vec<i32> = (0..n as i32).rev().collect();
    let vals: Vec<f64> = rows.iter().map(|&x| x as f64).collect();
    write_and_check(ctx, &cache, &slots, &vals, &vals).unwrap();
    cache
}

/// Writes `keys` / `values` (`[slots.len(), kv heads, head size]`, encoded as the cache's
/// dtype) through the GPU write path into `slots` and checks the layout against the CPU
/// quantizer (`check_layout`).
fn write_and_check(
    ctx: &Context,
    cache: &KvCache,
    slots: &[i32],
    keys: &[f64],
    values: &[f64],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let cfg = *cache.config();
    let plan = BatchPlan::new(
        ctx,
        &cfg,
        &StepInput {
            slot_mapping: slots,
            ..Default::default()
        },
    )?;
    let (kb, vb) = (
        ctx.upload("k", &cfg.dtype.encode(keys)),
        ctx.upload("v", &cfg.dtype.encode(values)),
    );
    let shape = [slots.len() as u32, cfg.num_kv_heads, cfg.head_size];
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    cache.reshape_and_cache(
        ctx,
        &mut enc,
        &plan,
        0,
        Tensor::new(&kb, cfg.dtype, shape),
        Tensor::new(&vb, cfg.dtype, shape),
    )?;
    ctx.queue.submit([enc.finish()]);
    check_layout(ctx, cache, keys, values, slots)
}

#[test]
fn gpu_fp8_encoder_equals_cpu_on_every_code_and_midpoint() {
    let Some(ctx) = context() else { return };
    // Scale 1: x / 1 is exact, so the GPU's e4m3 rounding alone decides the codes.
    let mut vals = Vec::new();
    for c in 0..0x7Eu8 {
        let (a, b) = (fp8_e4m3_decode(c), fp8_e4m3_decode(c + 1));
        vals.extend([
            a,
            -a,
            (a + b) / 2.0,
            -(a + b) / 2.0,
            a + (b - a) * 0.26,
            a + (b - a) * 0.74,
        ]);
    }
    vals.extend([
        448.0,
        449.0,
        463.9,
        464.0,
        500.0,
        1e30,
        -1e30,
        2f32.powi(-10),
        1e-30,
    ]);
    vals.resize(vals.len().next_multiple_of(64), 0.0);
    let cache = gpu_write(ctx, KvQuantMode::Fp8PerTensor, &vals, 64, 1.0);
    let got = ctx.read_buffer(cache.layer(0).unwrap().k()).unwrap();
    let n = vals.len() / 64;
    for r in 0..n {
        let slot = n - 1 - r; // slots were written in reverse
        let want = quantize_fp8_tensor(&vals[r * 64..(r + 1) * 64], 1.0);
        assert_eq!(
            &got[slot * 64..(slot + 1) * 64],
            &want[..],
            "row {r}: GPU e4m3 encoder differs"
        );
    }
}

#[test]
fn gpu_write_path_zero_huge_nan_inf_rows() {
    let Some(ctx) = context() else { return };
    let d = 64usize;
    let mut rows = Vec::new();
    rows.extend(vec![0.0f32; d]); // zero row
    let mut huge = vec![0.25f32; d];
    huge[5] = 3.0e4; // far above the rest, still inside f16 (rotation modes round to it)
    rows.extend(huge); // one huge value
    let mut special = vec![-0.5f32; d];
    special[1] = f32::NAN;
    special[2] = f32::INFINITY;
    special[3] = f32::NEG_INFINITY;
    rows.extend(special);
    rows.extend(vec![f32::NAN; d]); // no finite element: behaves as all-zero
    let mut ramp: Vec<f32> = (0..d).map(|i| (i as f32 - 31.5) * 0.37).collect();
    ramp[0] = f32::INFINITY;
    rows.extend(ramp);
    for mode in quantized_modes() {
        gpu_write(ctx, mode, &rows, d as u32, 0.02);
    }
}

#[test]
fn attention_over_non_finite_writes_is_finite_and_matches() {
    let Some(ctx) = context() else { return };
    for mode in quantized_modes() {
        let d = 64u32;
        let n = 40usize;
        let mut rows: Vec<f32> = (0..n * d as usize)
            .map(|i| ((i * 7919) % 113) as f32 / 50.0 - 1.1)
            .collect();
        rows[3] = f32::NAN;
        rows[70] = f32::INFINITY;
        rows[200] = f32::NEG_INFINITY;
        let cache = gpu_write(ctx, mode, &rows, d, 0.02);
        let vals: Vec<f64> = rows.iter().map(|&x| x as f64).collect();
        let slots: Vec<i32> = (0..n as i32).rev().collect();
        let (kc, vc) = check_layout(ctx, &cache, &vals, &vals, &slots).unwrap();
        // One decode query over all n keys; position p reads slot p (which holds token n-1-p:
        // order does not matter to attention, and the reference reads the same cache).
        let blocks = cache.config().num_blocks as usize;
        let table: Vec<i32> = (0..blocks as i32).collect();
        let step = StepInput {
            cu_seqlens_q: &[0, 1],
            seqused_k: &[n as i32],
            block_table: &table,
            block_table_stride: blocks,
            ..Default::default()
        };
        let plan = BatchPlan::new(ctx, cache.config(), &step).unwrap();
        let q: Vec<f64> = (0..4 * d as usize)
            .map(|i| ((i * 31) % 17) as f64 / 10.0 - 0.8)
            .collect();
        let qb = ctx.upload(
            "q",
            bytemuck::cast_slice(&q.iter().map(|&x| x as f32).collect::<Vec<_>>()),
        );
        let ob = ctx.zeroed("o", 4 * d as u64 * 4);
        let params = AttentionParams {
            num_q_heads: 4,
            softmax_scale: 0.125,
            ..Default::default()
        };
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        cache
            .unified_attention(
                ctx,
                &mut enc,
                &Attention {
                    plan: &plan,
                    layer: cache.layer(0).unwrap(),
                    q: Tensor::new(&qb, Dtype::F32, [1, 4, d]),
                    out: Tensor::new(&ob, Dtype::F32, [1, 4, d]),
                    params: &params,
                },
            )
            .unwrap();
        ctx.queue.submit([enc.finish()]);
        let gpu: Vec<f64> = bytemuck::cast_slice::<u8, f32>(&ctx.read_buffer(&ob).unwrap())
            .iter()
            .map(|&x| x as f64)
            .collect();
        let g = quantkv::reference::attention::RefGeometry {
            block_size: 16,
            num_kv_heads: 1,
            head_size: d as usize,
        };
        let cpu = quantkv::reference::attention::attention_on_codes(
            quantkv::modes::backend(mode).unwrap().as_ref(),
            Dtype::F32,
            &q,
            &kc,
            &vc,
            g,
            &step,
            &params,
        );
        let out = CaseOut {
            gpu,
            cpu: cpu.clone(),
            label: format!("{mode:?} non-finite"),
            fp8_scale: None,
            cpu_orig: cpu,
        };
        assert_close(&out, Dtype::F32);
    }
}

fn metrics(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let max_abs = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    (cosine(a, b), max_abs, num / den)
}

/// Spec §7 level 3 on spec §11 data (reported; the kernel's own error is gated at level 2).
#[test]
fn quality_on_llm_shaped_data() {
    let Some(ctx) = context() else { return };
    let seqs: &[(u32, u32)] = &[(1, 200), (8, 120), (1, 64)];
    println!("| mode | data | rounding | cos(ref on codes, f64 on originals) | max abs err | rel L2 | GPU vs ref-on-codes cos |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for mode in KvQuantMode::ALL.into_iter().filter(|m| m.is_supported()) {
        for llm in [true, false] {
            let roundings: &[Int8Rounding] = if mode == KvQuantMode::Int8PerTokenHead {
                &[
                    Int8Rounding::HalfAwayFromZero,
                    Int8Rounding::Truncate,
                    Int8Rounding::NearestEven,
                ]
            } else {
                &[Int8Rounding::HalfAwayFromZero]
            };
            for &rounding in roundings {
                let mut s = shape(seqs, 8, 2, 128, Dtype::F16);
                s.mode = mode;
                let out = run_case(
                    ctx,
                    0x11A,
                    &s,
                    &Extras {
                        llm_like: llm,
                        rounding,
                        ..Default::default()
                    },
                )
                .unwrap();
                assert_close(&out, Dtype::F16);
                let (cos, max_abs, rel) = metrics(&out.cpu, &out.cpu_orig);
                let gcos = cosine(&out.gpu, &out.cpu);
                println!(
                    "| {} | {} | {rounding:?} | {cos:.6} | {max_abs:.4} | {rel:.4} | {gcos:.7} |",
                    mode.id(),
                    if llm { "§11 LLM-like" } else { "N(0,1)" }
                );
                // Reported, not gated (spec §7 level 3); a sanity floor catches a broken codec.
                // Per-tensor scales are ruled by the sink token, 2-bit is lossy: lower floors.
                let b = quantkv::modes::create(mode).unwrap();
                let floor = if b.uses_tensor_scales() {
                    0.9
                } else if b.packing_factor() == 4 {
                    0.5 // 2-bit keys with outlier channels are inherently lossy
                } else {
                    0.95
                };
                assert!(cos > floor, "{mode:?}: quality collapsed (cos {cos})");
            }
        }
    }
}

/// CPU-only level-3 figures for one mode and head size: attention on the stored format vs f64
/// attention on the original K/V, with the mode's rotation (`rotate`) or, for rotation modes,
/// the same quantizer applied to the un-rotated rows (to show what the rotation buys).
fn cpu_quality(mode: KvQuantMode, d: usize, llm: bool, rotate: bool) -> (f64, f64) {
    use quantkv::reference::attention::RefGeometry;
    use quantkv::reference::rng::SplitMix64;
    let backend = quantkv::modes::create(mode).unwrap();
    let (hq, hkv, kv, ql) = (8usize, 2usize, 256usize, 8usize);
    let dt = Dtype::F16;
    let mut rng = SplitMix64::new(0x5A + d as u64);
    let mut keys: Vec<f64> = (0..kv * hkv * d).map(|_| rng.normal()).collect();
    let mut values: Vec<f64> = (0..kv * hkv * d).map(|_| rng.normal()).collect();
    let mut q: Vec<f64> = (0..ql * hq * d).map(|_| rng.normal()).collect();
    if llm {
        quantkv::reference::data::shape_like_llm(&mut keys, &mut values, &mut q, d, hkv, &[0]);
    }
    for x in keys.iter_mut().chain(values.iter_mut()).chain(q.iter_mut()) {
        *x = dt.round(*x);
    }
    let p = RowCodec {
        dtype: dt,
        tensor_scale: 1.0,
        options: ModeOptions::default(),
    };
    let quant = |rows: &[f64]| -> Vec<f64> {
        rows.chunks(d)
            .flat_map(|r| {
                let x: Vec<f32> = r.iter().map(|&v| v as f32).collect();
                if rotate {
                    let (c, s) = backend.quantize_row(&x, &p);
                    backend.dequantize_row(&c, s, &p)
                } else if mode == KvQuantMode::Int4PerTokenHead {
                    let (q, s, zp) = int4_asym(&x);
                    q.iter()
                        .map(|&c| (c as f64 - zp as f64) * s as f64)
                        .collect()
                } else {
                    let (idx, norm) = int2_codes(&x);
                    idx.iter()
                        .map(|&i| {
                            INT2_CENTROIDS[i as usize] as f64 * norm as f64 / (d as f64).sqrt()
                        })
                        .collect()
                }
            })
            .collect()
    };
    let (kc, vc) = (quant(&keys), quant(&values));
    let table: Vec<i32> = (0..(kv / 16) as i32).collect();
    let step = StepInput {
        cu_seqlens_q: &[0, ql as i32],
        seqused_k: &[kv as i32],
        block_table: &table,
        block_table_stride: kv / 16,
        ..Default::default()
    };
    let params = AttentionParams {
        num_q_heads: hq as u32,
        softmax_scale: 1.0 / (d as f32).sqrt(),
        ..Default::default()
    };
    let g = RefGeometry {
        block_size: 16,
        num_kv_heads: hkv,
        head_size: d,
    };
    let orig = quantkv::reference::unified_attention(&q, &keys, &values, g, &step, &params);
    let got = if rotate {
        quantkv::reference::attention::attention_on_codes(
            backend.as_ref(),
            dt,
            &q,
            &kc,
            &vc,
            g,
            &step,
            &params,
        )
    } else {
        quantkv::reference::unified_attention(&q, &kc, &vc, g, &step, &params)
    };
    let (cos, max_abs, _) = metrics(&got, &orig);
    (cos, max_abs)
}

/// Spec §7 level 3 for the rotation modes, per head size, with and without rotation; the only
/// gate is the spec's: rotation must improve INT4 and INT2 on LLM-shaped data.
#[test]
fn rotation_quality_per_head_size() {
    rotation_quality(&[64, 80, 128], true);
}

/// Every head size, reported (at d = 32 this data has 5 outlier channels in 32, and rotation
/// does not help INT4 there, so the gate stays on the quick sizes).
#[test]
#[ignore = "extended matrix: every head size; run on the GPU machine"]
fn extended_rotation_quality_every_head_size() {
    rotation_quality(
        &[
            32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256,
        ],
        false,
    );
}

fn rotation_quality(sizes: &[usize], gate: bool) {
    println!("| mode | head size | b | data | cos rotated | max abs rotated | cos un-rotated | max abs un-rotated |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    for mode in [KvQuantMode::Int4PerTokenHead, KvQuantMode::Int2PerTokenHead] {
        for &d in sizes {
            for llm in [true, false] {
                let (cr, mr) = cpu_quality(mode, d, llm, true);
                let (cu, mu) = cpu_quality(mode, d, llm, false);
                println!(
                    "| {} | {d} | {} | {} | {cr:.5} | {mr:.3} | {cu:.5} | {mu:.3} |",
                    mode.id(),
                    d & d.wrapping_neg(),
                    if llm { "§11" } else { "N(0,1)" }
                );
                if llm && gate {
                    assert!(
                        cr > cu,
                        "{mode:?} d={d}: rotation must improve quality ({cr} vs {cu})"
                    );
                }
            }
        }
    }
}

/// Read contract v2, FP8: codes become f16 by bit placement (subnormal codes on f16
/// subnormals). Every finite e4m3 code, both signs, read back through attention over a single
/// key (softmax weight exactly 1, f32 output): the output must be each code's value exactly.
#[test]
fn gpu_fp8_read_is_exact_for_every_code() {
    let Some(ctx) = context() else { return };
    for mode in [KvQuantMode::Fp8PerTensor, KvQuantMode::Fp8PerTokenHead] {
        let d = 128u32;
        let cfg = CacheConfig {
            num_layers: 1,
            num_blocks: 1,
            block_size: 16,
            num_kv_heads: 2,
            head_size: d,
            mode,
            dtype: Dtype::F32,
            ..Default::default()
        };
        let cache = KvCache::new(ctx, &cfg).unwrap();
        // kv head 0: codes 0x00..0x7E and 0x7E again (0x7F is NaN, never stored); head 1: the
        // negative codes. Per-(token, head) scales are absmax/448 = 1 for these rows.
        let code = |i: u32, neg: bool| -> u8 { (i.min(0x7E) as u8) | if neg { 0x80 } else { 0 } };
        let mut v = Vec::new();
        for h in 0..2 {
            for i in 0..d {
                v.push(quantkv::reference::quant::fp8_e4m3_decode(code(i, h == 1)));
            }
        }
        let k = vec![0.0f32; v.len()];
        let plan = one_sequence_plan(ctx, &cfg, 1, true);
        let kb = ctx.upload("k", bytemuck::cast_slice(&k));
        let vb = ctx.upload("v", bytemuck::cast_slice(&v));
        let q = ctx.upload("q", bytemuck::cast_slice(&vec![0.5f32; 2 * d as usize]));
        let out = ctx.zeroed("out", 2 * d as u64 * 4);
        let params = AttentionParams {
            num_q_heads: 2,
            softmax_scale: 0.1,
            ..Default::default()
        };
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let kv = |b| Tensor::new(b, Dtype::F32, [1, 2, d]);
        cache
            .reshape_and_cache(ctx, &mut enc, &plan, 0, kv(&kb), kv(&vb))
            .unwrap();
        for path in [AttentionPath::DecodePortable, AttentionPath::Unified] {
            let p = AttentionParams { path, ..params };
            cache
                .unified_attention(
                    ctx,
                    &mut enc,
                    &Attention {
                        plan: &plan,
                        layer: cache.layer(0).unwrap(),
                        q: Tensor::new(&q, Dtype::F32, [1, 2, d]),
                        out: Tensor::new(&out, Dtype::F32, [1, 2, d]),
                        params: &p,
                    },
                )
                .unwrap();
            let done = std::mem::replace(
                &mut enc,
                ctx.device.create_command_encoder(&Default::default()),
            );
            ctx.queue.submit([done.finish()]);
            let got: Vec<f32> = bytemuck::cast_slice(&ctx.read_buffer(&out).unwrap()).to_vec();
            for (i, (g, w)) in got.iter().zip(&v).enumerate() {
                // (-0 reads back as +0: the accumulator starts at +0.)
                assert!(
                    g == w,
                    "{mode:?} {path:?}: element {i} (code {:#04x}): {g} vs {w}",
                    code(i as u32 % d, i as u32 >= d)
                );
            }
        }
    }
}

/// Every mode's tile form (read contract: `k_tile4` / `v_tile4` and `TILE_UNIT`, what the prefill
/// kernel's tiles hold) read back exactly: a prompt's first query row attends to its first key
/// alone (softmax weight exactly 1), so with an f32 model its output is that key's V row as the
/// GPU stored it, dequantized. Checked per element against the reference on the stored codes to
/// 2e-5·(1 + |ref|): a tile value one unit off (INT2: 1 in 944) moves an element by ~1e-4.
/// Auto (cooperative matrices where the adapter has them) and the portable tiled kernel.
#[test]
fn prefill_first_rows_read_each_modes_tile_form_exactly() {
    let Some(ctx) = context() else { return };
    let seqs = [(8u32, 8u32), (5, 5)];
    for mode in KvQuantMode::ALL {
        for path in [AttentionPath::Auto, AttentionPath::PrefillTiled] {
            let mut s = shape(&seqs, 4, 2, 64, Dtype::F32);
            s.mode = mode;
            let ex = Extras {
                path,
                ..Default::default()
            };
            let out =
                run_case(ctx, 0x7F1, &s, &ex).unwrap_or_else(|e| panic!("{mode:?} {path:?}: {e}"));
            let row = (s.q_heads * s.head_size) as usize;
            let mut first = 0usize;
            for &(ql, _) in &seqs {
                let at = first * row;
                for i in at..at + row {
                    let (g, c) = (out.gpu[i], out.cpu[i]);
                    assert!(
                        (g - c).abs() <= 2e-5 * (1.0 + c.abs()),
                        "{mode:?} {path:?}: token {first} element {}: gpu {g} vs ref {c}",
                        i - at
                    );
                }
                first += ql as usize;
            }
            assert_close(&out, s.dtype);
        }
    }
}

#[test]
fn gpu_per_tensor_codes_equal_cpu_at_every_rounding_boundary() {
    // The per-tensor encoders take x * (1/scale) where the codes at both ends of its error band
    // agree, else the exact quotient: quotients on and one or two f32 steps around every code
    // boundary (ties included), at scales that are not powers of two, must give the CPU
    // quantizer's codes exactly (spec 10.1).
    let Some(ctx) = context() else { return };
    let step = |x: f32, k: i32| f32::from_bits((x.to_bits() as i32 + k) as u32);
    // (Powers of two, 1.0 the default, take the product as the quotient: it is exact.)
    for (mode, scale) in [
        (KvQuantMode::Int8PerTensor, 0.037f32),
        (KvQuantMode::Int8PerTensor, 3.1),
        (KvQuantMode::Int8PerTensor, 0.25),
        (KvQuantMode::Fp8PerTensor, 0.37),
        (KvQuantMode::Fp8PerTensor, 1.0 / 3.0),
        (KvQuantMode::Fp8PerTensor, 1.0),
        (KvQuantMode::Fp8PerTensor, 2f32.powi(-9)),
    ] {
        // Code boundaries in quotient units.
        let bounds: Vec<f32> = if mode == KvQuantMode::Int8PerTensor {
            (0..128).map(|n| n as f32 + 0.5).collect()
        } else {
            (0..0x7Eu8)
                .map(|c| (fp8_e4m3_decode(c) + fp8_e4m3_decode(c + 1)) / 2.0)
                .collect()
        };
        let mut vals = Vec::new();
        for b in bounds {
            // x whose quotient is nearest the boundary (b * scale rounded), and its neighbours.
            let x = b * scale;
            for k in -2..=2 {
                let v = step(x, k);
                vals.extend([v, -v]);
            }
        }
        vals.resize(vals.len().next_multiple_of(64), 0.5 * scale);
        let cache = gpu_write(ctx, mode, &vals, 64, scale);
        let layer = cache.layer(0).unwrap();
        let p = layer.row_codec(false);
        let backend = quantkv::modes::backend(mode).unwrap();
        let got = ctx.read_buffer(layer.k()).unwrap();
        let n = vals.len() / 64;
        for r in 0..n {
            let slot = n - 1 - r; // slots were written in reverse
            let (want, _) = backend.quantize_row(&vals[r * 64..(r + 1) * 64], &p);
            assert_eq!(
                &got[slot * 64..(slot + 1) * 64],
                &want[..],
                "{mode:?} scale {scale} row {r}: GPU codes differ from the CPU quantizer"
            );
        }
    }
}

/// The quantizing write kernel's two entries: subgroups (rows whose lanes a subgroup holds;
/// transform and row statistic by shuffles, no barrier) and portable (workgroup memory).
/// Both meet the CPU quantizer (check_layout); codes are byte-identical between them except
/// INT2, whose sum of squares may fold in another order (spec §3.5 allows any). The quick suite
/// runs each mode at two of the four head sizes (32 and 128, or 64 and 256, in turn; each is
/// two pipelines to compile); `extended_write_kernel_entries_every_head_size` all four.
#[test]
fn write_kernel_subgroup_and_portable_entries_agree() {
    write_entries_agree(false);
}

#[test]
#[ignore = "extended matrix: every quantized mode x every head size; run on the GPU machine"]
fn extended_write_kernel_entries_every_head_size() {
    write_entries_agree(true);
}

fn write_entries_agree(every: bool) {
    let Some(ctx) = context() else { return };
    let portable = Context::new().unwrap().with_subgroups(false);
    assert!(!portable.caps().subgroups);
    let mut rng = quantkv::reference::rng::SplitMix64::new(0x5EED);
    for (m, mode) in quantized_modes().into_iter().enumerate() {
        for (k, d) in [32u32, 64, 128, 256].into_iter().enumerate() {
            if !every && k % 2 != m % 2 {
                continue;
            }
            let n = 40usize;
            let mut vals: Vec<f32> = (0..n * d as usize)
                .map(|i| {
                    let x = rng.normal() as f32;
                    // An outlier channel and a few rows of large values.
                    if i % d as usize == 7 || (i / d as usize) % 9 == 4 {
                        x * 40.0
                    } else {
                        x
                    }
                })
                .collect();
            vals[3] = f32::INFINITY;
            vals[d as usize + 5] = f32::NAN;
            let a = gpu_write(ctx, mode, &vals, d, 0.05);
            let b = gpu_write(&portable, mode, &vals, d, 0.05);
            if mode != KvQuantMode::Int2PerTokenHead {
                let (la, lb) = (a.layer(0).unwrap(), b.layer(0).unwrap());
                assert!(
                    ctx.read_buffer(la.k()).unwrap() == portable.read_buffer(lb.k()).unwrap(),
                    "{mode:?} d{d}: the two write entries wrote different codes"
                );
            }
        }
    }
    let built = ctx.built_pipelines();
    let sg = built
        .iter()
        .any(|l| l.starts_with("quantkv/write_rows/") && l.contains("/sg/"));
    assert_eq!(
        sg,
        ctx.caps().subgroups && ctx.caps().subgroup_min_size >= 8,
        "the subgroup entry runs where subgroups hold a row: {built:?}"
    );
    assert!(portable
        .built_pipelines()
        .iter()
        .all(|l| !l.contains("/sg")));
}

#[test]
fn gpu_row_scales_are_the_exact_quotients() {
    // Per-(token, head) scales are absmax / 448 (FP8) or absmax / 127 (INT8) rounded once to
    // f32 (spec §3.2, §3.3): the write kernel's division is exact (div_rn), so its scales are
    // the CPU quantizer's bit for bit, over many magnitudes and mantissas; and so is 1/scale,
    // which every code is computed with (x * (1/scale), rounded once on either side), so the
    // codes are the CPU's bit for bit too.
    let Some(ctx) = context() else { return };
    let mut rng = quantkv::reference::rng::SplitMix64::new(0xD1F);
    let d = 32usize;
    let n = 2048usize;
    let vals: Vec<f32> = (0..n * d)
        .map(|i| {
            let row = i / d;
            let mag = 2f32.powi((row % 40) as i32 - 20);
            (rng.normal() as f32) * mag * (1.0 + rng.uniform() as f32)
        })
        .collect();
    for mode in [KvQuantMode::Fp8PerTokenHead, KvQuantMode::Int8PerTokenHead] {
        let cache = gpu_write(ctx, mode, &vals, d as u32, 1.0);
        let layer = cache.layer(0).unwrap();
        let p = layer.row_codec(false);
        let backend = quantkv::modes::backend(mode).unwrap();
        let got: Vec<f32> =
            bytemuck::cast_slice::<u8, f32>(&ctx.read_buffer(layer.k_scale()).unwrap()).to_vec();
        let codes = ctx.read_buffer(layer.k()).unwrap();
        for r in 0..n {
            let slot = n - 1 - r;
            let (want_codes, want) = backend.quantize_row(&vals[r * d..(r + 1) * d], &p);
            assert_eq!(
                got[slot].to_bits(),
                want.to_bits(),
                "{mode:?} row {r}: scale {} vs CPU {want}",
                got[slot]
            );
            assert_eq!(
                &codes[slot * d..(slot + 1) * d],
                &want_codes[..],
                "{mode:?} row {r}: codes"
            );
        }
    }
}

/// The row copy of mode `none` (kernels/write_copy.wgsl) moves several 16-byte pieces per
/// thread (2; a thread's pieces a workgroup apart, so they cross rows and tokens): rows of 6,
/// 8, 12 and 10 pieces (f16 at head size 48 and 64, f32 at 48, bf16 at 80), two kv heads, a
/// last workgroup only partly filled, slots out of order with padding; rows bit for bit in
/// their slots and nothing else written (`QUANTKV_DEBUG_WRITE_CH` runs it at 1 and 4).
#[test]
fn row_copy_moves_several_pieces_per_thread() {
    let Some(ctx) = context() else { return };
    for (i, (dtype, d)) in [
        (Dtype::F16, 48u32),
        (Dtype::F16, 64),
        (Dtype::F32, 48),
        (Dtype::Bf16, 80),
    ]
    .into_iter()
    .enumerate()
    {
        let (n, hkv) = (37usize, 2u32);
        let cfg = CacheConfig {
            num_layers: 1,
            num_blocks: 4,
            block_size: 16,
            num_kv_heads: hkv,
            head_size: d,
            mode: KvQuantMode::None,
            dtype,
            ..Default::default()
        };
        let cache = KvCache::new(ctx, &cfg).unwrap();
        let mut slots: Vec<i32> = (0..n as i32).map(|t| (t * 7 + 3) % 61).collect();
        slots[5] = -1;
        let mut rng = quantkv::reference::rng::SplitMix64::new(0x7C0 + i as u64);
        let len = n * (hkv * d) as usize;
        // Values every dtype holds exactly (multiples of 1/64 in [-4, 4)).
        let keys: Vec<f64> = (0..len)
            .map(|_| (rng.next_u64() % 512) as f64 / 64.0 - 4.0)
            .collect();
        let vals: Vec<f64> = (0..len)
            .map(|_| (rng.next_u64() % 512) as f64 / 64.0 - 4.0)
            .collect();
        write_and_check(ctx, &cache, &slots, &keys, &vals)
            .unwrap_or_else(|e| panic!("{dtype:?} d{d}: {e}"));
    }
}
