//! `write_and_attend`: a decode step's K/V rows written by the decode kernel itself (one
//! dispatch per layer instead of two) must give the same bits as `reshape_and_cache` followed
//! by `unified_attention` (output and both pools), match the f64 reference, and fall back to
//! the two dispatches, with the same result, wherever it cannot fuse.

use crate::common::*;
use quantkv::reference::attention::RefGeometry;
use quantkv::reference::rng::SplitMix64;
use quantkv::*;

/// One decode step over a filled cache.
#[derive(Clone, Debug)]
struct Case {
    hq: u32,
    hkv: u32,
    d: u32,
    bs: u32,
    dtype: Dtype,
    mode: KvQuantMode,
    /// KV length of each sequence, the new token included.
    lens: Vec<u32>,
    split: SplitK,
    path: AttentionPath,
    window: i32,
    /// Sequence whose new token has a padding slot (-1).
    pad: Option<usize>,
    /// q, k and v as views into one fused QKV buffer, out as a strided slice.
    views: Views,
    /// Every query token (one per sequence) writes its newest key; else sequence 0's token
    /// writes a free slot instead.
    newest: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Views {
    /// Separate contiguous buffers.
    Plain,
    /// q, k, v in one fused QKV buffer.
    FusedQkv,
    /// k and v read from the buffer `out` is written to (different rows).
    KeyInOut,
}

impl Case {
    fn new(hq: u32, hkv: u32, d: u32, dtype: Dtype, lens: &[u32]) -> Self {
        Case {
            hq,
            hkv,
            d,
            bs: 16,
            dtype,
            mode: KvQuantMode::None,
            lens: lens.to_vec(),
            split: SplitK::Auto,
            path: AttentionPath::Auto,
            window: -1,
            pad: None,
            views: Views::Plain,
            newest: true,
        }
    }
}

/// What one run left behind.
struct Out {
    out: Vec<u8>,
    k: Vec<u8>,
    v: Vec<u8>,
    fused: bool,
    gpu: Vec<f64>,
    cpu: Vec<f64>,
    plan: String,
}

/// Fills every sequence's history with one `reshape_and_cache`, then records the decode step
/// (`fused`: `write_and_attend`, else the two calls) and reads everything back.
fn run(ctx: &Context, c: &Case, fused: bool) -> Out {
    let (hq, hkv, d, bs) = (c.hq as usize, c.hkv as usize, c.d as usize, c.bs as usize);
    let b = c.lens.len();
    let mut rng = SplitMix64::new(0xf05e + c.lens.iter().sum::<u32>() as u64 + c.d as u64);
    let need: Vec<usize> = c.lens.iter().map(|&l| (l as usize).div_ceil(bs)).collect();
    let stride = need.iter().copied().max().unwrap() + 1;
    let num_blocks = need.iter().sum::<usize>() + 2;
    let perm = rng.permutation(num_blocks);
    let mut table = vec![0i32; b * stride];
    let mut next = 0;
    for (s, &n) in need.iter().enumerate() {
        for col in 0..n {
            table[s * stride + col] = perm[next] as i32;
            next += 1;
        }
    }
    let spare = perm[num_blocks - 1] as i32 * c.bs as i32; // a block no sequence reads
    let slot_of = |s: usize, p: usize| table[s * stride + p / bs] * c.bs as i32 + (p % bs) as i32;
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks: num_blocks as u32,
        block_size: c.bs,
        num_kv_heads: c.hkv,
        head_size: c.d,
        mode: c.mode,
        dtype: c.dtype,
        ..Default::default()
    };
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let dt = c.dtype;
    let gen = |rng: &mut SplitMix64, n: usize| -> Vec<f64> {
        (0..n).map(|_| dt.round(rng.normal())).collect()
    };

    // History: positions 0 .. len - 2 of every sequence.
    let hist: Vec<i32> = (0..b)
        .flat_map(|s| (0..c.lens[s] as usize - 1).map(move |p| (s, p)))
        .map(|(s, p)| slot_of(s, p))
        .collect();
    let hk = gen(&mut rng, hist.len() * hkv * d);
    let hv = gen(&mut rng, hist.len() * hkv * d);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let fill = BatchPlan::new(
        ctx,
        &cfg,
        &StepInput {
            slot_mapping: &hist,
            ..Default::default()
        },
    )
    .unwrap();
    if !hist.is_empty() {
        let (kb, vb) = (
            ctx.upload("hk", &dt.encode(&hk)),
            ctx.upload("hv", &dt.encode(&hv)),
        );
        let shape = [hist.len() as u32, c.hkv, c.d];
        cache
            .reshape_and_cache(
                ctx,
                &mut enc,
                &fill,
                0,
                Tensor::new(&kb, dt, shape),
                Tensor::new(&vb, dt, shape),
            )
            .unwrap();
    }
    ctx.queue.submit([enc.finish()]);

    // The decode step.
    let mut slots: Vec<i32> = (0..b).map(|s| slot_of(s, c.lens[s] as usize - 1)).collect();
    if !c.newest {
        slots[0] = spare;
    }
    if let Some(s) = c.pad {
        slots[s] = -1;
    }
    let cu: Vec<i32> = (0..=b as i32).collect();
    let used: Vec<i32> = c.lens.iter().map(|&l| l as i32).collect();
    let step = StepInput {
        slot_mapping: &slots,
        cu_seqlens_q: &cu,
        seqused_k: &used,
        block_table: &table,
        block_table_stride: stride,
        ..Default::default()
    };
    let plan = BatchPlan::new(ctx, &cfg, &step).unwrap();
    let w = hq + 2 * hkv; // heads per fused row
    let qkv = gen(&mut rng, b * w * d);
    let part = |h0: usize, n: usize| -> Vec<f64> {
        (0..b)
            .flat_map(|r| qkv[(r * w + h0) * d..(r * w + h0 + n) * d].to_vec())
            .collect()
    };
    let (q, k, v) = (part(0, hq), part(hq, hkv), part(hq + hkv, hkv));
    let es = dt.size() as u64;
    let fused_buf = ctx.upload("qkv", &dt.encode(&qkv));
    let (qc, kc, vc) = (
        ctx.upload("q", &dt.encode(&q)),
        ctx.upload("k", &dt.encode(&k)),
        ctx.upload("v", &dt.encode(&v)),
    );
    // out: b rows, then (KeyInOut) the new K and V rows after them in the same buffer.
    let out_bytes = (b * hq * d) as u64 * es;
    let mut out_init = vec![0u8; out_bytes as usize];
    out_init.extend(dt.encode(&k));
    out_init.extend(dt.encode(&v));
    let obuf = ctx.upload("out", &out_init);
    let (bu, hq32, hkv32) = (b as u32, c.hq, c.hkv);
    let (qt, kt, vt) = match c.views {
        Views::Plain => (
            Tensor::new(&qc, dt, [bu, hq32, c.d]),
            Tensor::new(&kc, dt, [bu, hkv32, c.d]),
            Tensor::new(&vc, dt, [bu, hkv32, c.d]),
        ),
        Views::FusedQkv => {
            let row = [w as u32 * c.d, c.d];
            (
                Tensor::view(&fused_buf, dt, [bu, hq32, c.d], 0, row),
                Tensor::view(&fused_buf, dt, [bu, hkv32, c.d], (hq * d) as u64 * es, row),
                Tensor::view(
                    &fused_buf,
                    dt,
                    [bu, hkv32, c.d],
                    ((hq + hkv) * d) as u64 * es,
                    row,
                ),
            )
        }
        Views::KeyInOut => {
            let kv_bytes = (b * hkv * d) as u64 * es;
            (
                Tensor::new(&qc, dt, [bu, hq32, c.d]),
                Tensor::view(&obuf, dt, [bu, hkv32, c.d], out_bytes, [hkv32 * c.d, c.d]),
                Tensor::view(
                    &obuf,
                    dt,
                    [bu, hkv32, c.d],
                    out_bytes + kv_bytes,
                    [hkv32 * c.d, c.d],
                ),
            )
        }
    };
    let params = AttentionParams {
        num_q_heads: c.hq,
        softmax_scale: 1.0 / (d as f32).sqrt(),
        window_size: (c.window, 0),
        split: c.split,
        path: c.path,
        ..Default::default()
    };
    let a = Attention {
        plan: &plan,
        layer: cache.layer(0).unwrap(),
        q: qt,
        out: Tensor::new(&obuf, dt, [bu, hq32, c.d]),
        params: &params,
    };
    let lp = cache.launch_plan(ctx, &plan, &params).unwrap();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let did_fuse = if fused {
        // One pass held by the caller, as an engine records a step.
        let mut pass = enc.begin_compute_pass(&Default::default());
        cache
            .write_and_attend_in(ctx, &mut pass, kt, vt, &a)
            .unwrap()
    } else {
        cache
            .reshape_and_cache(ctx, &mut enc, &plan, 0, kt, vt)
            .unwrap();
        cache.unified_attention(ctx, &mut enc, &a).unwrap();
        false
    };
    ctx.queue.submit([enc.finish()]);
    let out = ctx.read_buffer(&obuf).unwrap()[..out_bytes as usize].to_vec();
    let layer = cache.layer(0).unwrap();
    let (kp, vp) = (
        ctx.read_buffer(layer.k()).unwrap(),
        ctx.read_buffer(layer.v()).unwrap(),
    );

    // The reference: history and new rows written by the CPU, then attention (mode none: the
    // cache holds the rows as given).
    let mut ko = vec![0.0; num_blocks * bs * hkv * d];
    let mut vo = ko.clone();
    quantkv::reference::cache::write_rows(&mut ko, &hk, &hist, hkv, d);
    quantkv::reference::cache::write_rows(&mut vo, &hv, &hist, hkv, d);
    quantkv::reference::cache::write_rows(&mut ko, &k, &slots, hkv, d);
    quantkv::reference::cache::write_rows(&mut vo, &v, &slots, hkv, d);
    let g = RefGeometry {
        block_size: bs,
        num_kv_heads: hkv,
        head_size: d,
    };
    let cpu = quantkv::reference::unified_attention(&q, &ko, &vo, g, &step, &params);
    Out {
        gpu: dt.decode(&out),
        out,
        k: kp,
        v: vp,
        fused: did_fuse,
        cpu,
        plan: format!("{lp:?}"),
    }
}

/// A decode step of one sequence of `len` keys over the blocks of `table`, writing its newest
/// key.
fn one_decode_plan(ctx: &Context, cfg: &CacheConfig, len: i32, table: &[i32]) -> BatchPlan {
    let p = len - 1;
    let slot = table[(p / 16) as usize] * 16 + p % 16;
    BatchPlan::new(
        ctx,
        cfg,
        &StepInput {
            slot_mapping: &[slot],
            cu_seqlens_q: &[0, 1],
            seqused_k: &[len],
            block_table: table,
            block_table_stride: table.len(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Runs `c` both ways: the same bits, `want_fused` as the fused call's answer, and level 2
/// against the reference (mode `none`).
fn check(ctx: &Context, c: &Case, want_fused: bool) {
    let one = run(ctx, c, true);
    let two = run(ctx, c, false);
    let label = format!("{c:?} on {}", one.plan);
    assert_eq!(one.fused, want_fused, "fused? {label}");
    assert!(one.out == two.out, "outputs differ: {label}");
    assert!(one.k == two.k && one.v == two.v, "pools differ: {label}");
    if c.mode == KvQuantMode::None {
        assert_close(
            &CaseOut {
                gpu: one.gpu,
                cpu: one.cpu,
                label,
                fp8_scale: None,
                cpu_orig: vec![],
            },
            c.dtype,
        );
    }
}

#[test]
fn write_and_attend_fuses_decode_steps_and_matches_two_calls() {
    let Some(ctx) = context() else { return };
    let mut cases = Vec::new();
    // Head size 64 (the streaming rung where subgroups hold 8 lanes), GQA 4, a one-key
    // sequence, split-K forced, automatic and off.
    // With 16 query heads per 2 KV heads, two head chunks of 4 read (and write) each row.
    // (Unsplit on this rung: the extended matrix.)
    for (split, hq) in [(SplitK::Segments(3), 8), (SplitK::Auto, 16)] {
        let mut c = Case::new(hq, 2, 64, Dtype::F16, &[37, 1, 100]);
        c.split = split;
        c.path = AttentionPath::DecodeStream;
        cases.push(c);
    }
    // Head size 128 (the subgroup or portable rung), two head chunks per KV head with the
    // streaming rung, fused QKV views, a padding slot, a window.
    let mut c = Case::new(16, 2, 128, Dtype::F16, &[50, 17, 33]);
    c.views = Views::FusedQkv;
    c.pad = Some(1);
    c.window = 20;
    c.split = SplitK::Segments(2);
    cases.push(c);
    let mut c = Case::new(4, 2, 64, Dtype::F32, &[70, 9]);
    c.path = AttentionPath::DecodePortable;
    c.bs = 8;
    cases.push(c);
    // (bf16 rows are copied as f16 rows are: its cases are in the extended matrix.)
    let mut c = Case::new(8, 2, 64, Dtype::F16, &[45, 3]);
    c.path = AttentionPath::DecodeSubgroups;
    c.split = SplitK::Off;
    cases.push(c);
    for c in &cases {
        check(ctx, c, true);
    }
}

/// Extended matrix (the GPU machine): head sizes 64, 128 and 256 on every rung `Auto` takes
/// there (the streaming rung at every size on an H200), long contexts with split-K, 16
/// sequences, every model dtype; fused up to 128 MiB of K/V (sequences x longest context),
/// two dispatches above.
#[test]
#[ignore]
fn extended_write_and_attend_long_contexts() {
    let Some(ctx) = context() else { return };
    let lens: Vec<u32> = (0..16).map(|i| 1 + (i * 977 + 3) % 3000).collect();
    for d in [64, 128, 256] {
        for dtype in [Dtype::F16, Dtype::F32, Dtype::Bf16] {
            for split in [SplitK::Auto, SplitK::Off] {
                let mut c = Case::new(32, 4, d, dtype, &lens);
                c.split = split;
                c.pad = Some(5);
                c.views = Views::FusedQkv;
                let longest = *lens.iter().max().unwrap() as u64;
                let bytes = 16 * longest * 4 * 2 * d as u64 * dtype.size() as u64;
                check(ctx, &c, bytes <= 128 << 20);
            }
        }
    }
    let mut c = Case::new(32, 4, 128, Dtype::F16, &[40000]);
    c.window = 4095;
    check(ctx, &c, true);
}

#[test]
fn write_and_attend_falls_back_to_two_dispatches_with_the_same_result() {
    let Some(ctx) = context() else { return };
    // A quantized mode (its write needs a row statistic), a slot that is not the newest key,
    // the unified kernel forced, k and v read from out's buffer (which the kernel writes).
    let mut q8 = Case::new(8, 2, 64, Dtype::F16, &[40, 21]);
    q8.mode = KvQuantMode::Int8PerTokenHead;
    let mut not_newest = Case::new(8, 2, 64, Dtype::F16, &[40, 21]);
    not_newest.newest = false;
    let mut unified = Case::new(8, 2, 64, Dtype::F16, &[40, 21]);
    unified.path = AttentionPath::Unified;
    let mut in_out = Case::new(8, 2, 64, Dtype::F16, &[40, 21]);
    in_out.views = Views::KeyInOut;
    for c in [q8, not_newest, unified, in_out] {
        check(ctx, &c, false);
    }
}

/// Bad input to `write_and_attend` gets the typed errors of the two calls, and nothing is
/// recorded: the encoder still finishes.
#[test]
fn write_and_attend_rejects_what_the_two_calls_reject() {
    let Some(ctx) = context() else { return };
    let cfg = none_cfg(4, 2, 64);
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let plan = one_decode_plan(ctx, &cfg, 5, &[0, 1]);
    let qb = ctx.zeroed("q", 8 * 64 * 2);
    let ob = ctx.zeroed("out", 8 * 64 * 2);
    let kb = ctx.zeroed("k", 2 * 2 * 64 * 2);
    let params = AttentionParams {
        num_q_heads: 8,
        softmax_scale: 0.125,
        ..Default::default()
    };
    let a = Attention {
        plan: &plan,
        layer: cache.layer(0).unwrap(),
        q: Tensor::new(&qb, Dtype::F16, [1, 8, 64]),
        out: Tensor::new(&ob, Dtype::F16, [1, 8, 64]),
        params: &params,
    };
    let good = Tensor::new(&kb, Dtype::F16, [1, 2, 64]);
    let pool = cache.layer(0).unwrap().k();
    type Expect = fn(&Error) -> bool;
    let cases: Vec<(&str, Tensor<'_>, Expect)> = vec![
        (
            "two rows for one slot",
            Tensor::new(&kb, Dtype::F16, [2, 2, 64]),
            |e| matches!(e, Error::ShapeMismatch { .. }),
        ),
        (
            "wrong dtype",
            Tensor::new(&kb, Dtype::F32, [1, 2, 64]),
            |e| matches!(e, Error::InvalidArgument { .. }),
        ),
        (
            "wrong head count",
            Tensor::new(&kb, Dtype::F16, [1, 1, 64]),
            |e| matches!(e, Error::ShapeMismatch { .. }),
        ),
        (
            "key is the K pool",
            Tensor::new(pool, Dtype::F16, [1, 2, 64]),
            |e| matches!(e, Error::Aliased { .. }),
        ),
    ];
    for (what, key, ok) in cases {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let err = cache
            .write_and_attend(ctx, &mut enc, key, good, &a)
            .expect_err(what);
        assert!(ok(&err), "{what}: {err:?}");
        ctx.queue.submit([enc.finish()]);
    }
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    assert!(cache
        .write_and_attend(ctx, &mut enc, good, good, &a)
        .unwrap());
    ctx.queue.submit([enc.finish()]);
}

/// `warm_up` of a mode `none` cache also compiles the decode kernels that write the step's
/// rows: a fused decode step afterwards compiles nothing.
#[test]
fn warm_up_covers_the_fused_decode_kernels() {
    let Some(_) = context() else { return };
    let ctx = Context::new().unwrap();
    let c = Case::new(8, 2, 64, Dtype::F16, &[37, 100]);
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks: 16,
        block_size: c.bs,
        num_kv_heads: c.hkv,
        head_size: c.d,
        dtype: c.dtype,
        ..Default::default()
    };
    let params = AttentionParams {
        num_q_heads: c.hq,
        softmax_scale: 0.125,
        ..Default::default()
    };
    KvCache::new(&ctx, &cfg)
        .unwrap()
        .warm_up(&ctx, &[params], |_, _| {})
        .unwrap();
    let built = ctx.built_pipelines();
    assert!(run(&ctx, &c, true).fused);
    let after = ctx.built_pipelines();
    let new: Vec<_> = after.iter().filter(|l| !built.contains(l)).collect();
    assert!(new.is_empty(), "compiled after warm-up: {new:?}");
}

/// A repeated fused decode step (a fresh plan on the pooled step buffers each time) finds its
/// bind group cached: the first step adds it (12 bindings), later ones add none.
#[test]
fn a_repeated_fused_step_reuses_its_bind_group() {
    let Some(_) = context() else { return };
    let ctx = Context::new().unwrap();
    let cfg = none_cfg(4, 2, 64);
    let cache = KvCache::new(&ctx, &cfg).unwrap();
    let (qb, ob) = (ctx.zeroed("q", 8 * 64 * 2), ctx.zeroed("out", 8 * 64 * 2));
    let kb = ctx.zeroed("k", 2 * 64 * 2);
    let params = AttentionParams {
        num_q_heads: 8,
        softmax_scale: 0.125,
        split: SplitK::Off,
        ..Default::default()
    };
    let step = || {
        let plan = one_decode_plan(&ctx, &cfg, 21, &[3, 1]);
        let a = Attention {
            plan: &plan,
            layer: cache.layer(0).unwrap(),
            q: Tensor::new(&qb, Dtype::F16, [1, 8, 64]),
            out: Tensor::new(&ob, Dtype::F16, [1, 8, 64]),
            params: &params,
        };
        let kt = Tensor::new(&kb, Dtype::F16, [1, 2, 64]);
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        assert!(cache.write_and_attend(&ctx, &mut enc, kt, kt, &a).unwrap());
        ctx.queue.submit([enc.finish()]);
    };
    let before = ctx.cached_bind_groups();
    step();
    let groups = ctx.cached_bind_groups();
    assert_eq!(groups, before + 1, "the fused call's bind group is cached");
    for _ in 0..3 {
        step();
        assert_eq!(
            ctx.cached_bind_groups(),
            groups,
            "a repeated step created one"
        );
    }
}
