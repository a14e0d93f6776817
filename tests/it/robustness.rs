//! Where quantkv meets wgpu and the driver: every cause gets a typed error (or behaves like the
//! reference), never a panic, a wgpu error or a silent wrong answer. Each test runs on a private
//! context with an uncaptured-error handler that records any wgpu error; the test fails if one
//! was raised.

use std::sync::{Arc, Mutex};

use crate::common::*;
use quantkv::*;

/// A private context whose uncaptured wgpu errors are recorded.
struct Watched {
    ctx: Context,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Watched {
    fn new() -> Option<Self> {
        context()?;
        let ctx = Context::new().unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        ctx.device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                sink.lock().unwrap().push(e.to_string());
            }));
        Some(Self { ctx, errors })
    }

    fn assert_clean(&self) {
        let _ = self.ctx.device.poll(wgpu::PollType::wait_indefinitely());
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "uncaptured wgpu errors: {errors:?}");
    }
}

fn small_cfg(mode: KvQuantMode) -> CacheConfig {
    CacheConfig {
        num_layers: 1,
        num_blocks: 8,
        block_size: 16,
        num_kv_heads: 2,
        head_size: 64,
        mode,
        dtype: Dtype::F16,
        ..Default::default()
    }
}

/// One sequence whose prompt writes `slots` (blocks 0..4 in its table), as a plan of `cfg`.
fn prompt_plan(ctx: &Context, cfg: &CacheConfig, slots: &[i32]) -> BatchPlan {
    let n = slots.len() as i32;
    BatchPlan::new(
        ctx,
        cfg,
        &StepInput {
            slot_mapping: slots,
            cu_seqlens_q: &[0, n],
            seqused_k: &[n],
            block_table: &[0, 1, 2, 3],
            block_table_stride: 4,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn aliased_buffers_are_rejected_and_nothing_is_recorded() {
    let Some(w) = Watched::new() else { return };
    let ctx = &w.ctx;
    let cfg = small_cfg(KvQuantMode::Int8PerTokenHead);
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let layer = cache.layer(0).unwrap();
    let plan = prompt_plan(ctx, &cfg, &[0, 1, 2]);
    let kv = ctx.zeroed("kv", 3 * 2 * 64 * 2);
    let q = ctx.zeroed("q", 3 * 4 * 64 * 2);
    let out = ctx.zeroed("out", 3 * 4 * 64 * 2);
    let seg = ctx.zeroed("seg", segment_buffer_bytes(3, 4, 4, 64));
    let kvt = |b| Tensor::new(b, Dtype::F16, [3, 2, 64]);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    // Write: key or value being a pool the call writes.
    for (k, v) in [(layer.k(), &kv), (&kv, layer.v()), (layer.k_scale(), &kv)] {
        let e = cache
            .reshape_and_cache(ctx, &mut enc, &plan, 0, kvt(k), kvt(v))
            .unwrap_err();
        assert!(matches!(e, Error::Aliased { .. }), "{e}");
    }
    let params = AttentionParams {
        num_q_heads: 4,
        softmax_scale: 0.125,
        ..Default::default()
    };
    let attend = |enc: &mut wgpu::CommandEncoder,
                  q: &wgpu::Buffer,
                  out: &wgpu::Buffer,
                  p: &AttentionParams| {
        cache.unified_attention(
            ctx,
            enc,
            &Attention {
                plan: &plan,
                layer,
                q: Tensor::new(q, Dtype::F16, [3, 4, 64]),
                out: Tensor::new(out, Dtype::F16, [3, 4, 64]),
                params: p,
            },
        )
    };
    for (qb, ob) in [
        (&q, &q),
        (&q, layer.k()),
        (layer.v(), &out),
        (&q, layer.v_scale()),
    ] {
        let e = attend(&mut enc, qb, ob, &params).unwrap_err();
        assert!(matches!(e, Error::Aliased { .. }), "{e}");
    }
    for s in [&out, &q, layer.k()] {
        let p = AttentionParams {
            split: SplitK::Segments(4),
            segment_buffer: Some(s),
            ..params
        };
        let e = attend(&mut enc, &q, &out, &p).unwrap_err();
        assert!(matches!(e, Error::Aliased { .. }), "{e}");
    }
    // Nothing was recorded by the rejected calls: the pools and out are untouched.
    ctx.queue.submit([enc.finish()]);
    for b in [layer.k(), layer.v(), layer.k_scale(), layer.v_scale(), &out] {
        assert!(ctx.read_buffer(b).unwrap().iter().all(|&x| x == 0));
    }
    // key == value is fine (both read-only), and a distinct segment buffer works.
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    cache
        .reshape_and_cache(ctx, &mut enc, &plan, 0, kvt(&kv), kvt(&kv))
        .unwrap();
    let p = AttentionParams {
        split: SplitK::Segments(4),
        segment_buffer: Some(&seg),
        ..params
    };
    attend(&mut enc, &q, &out, &p).unwrap();
    ctx.queue.submit([enc.finish()]);
    w.assert_clean();
}

#[test]
fn buffers_of_another_device_are_rejected() {
    let Some(w) = Watched::new() else { return };
    let ctx = &w.ctx;
    // A second Context::new (one process-wide instance), and a second device on the adapter of
    // an instance the app made itself.
    let other = Context::new().unwrap();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
        &instance, None,
    ))
    .unwrap();
    let twin_a = pollster::block_on(Context::from_adapter(&adapter)).unwrap();
    let twin_b = pollster::block_on(Context::from_adapter(&adapter)).unwrap();
    for (ctx, foreign) in [(ctx, &other), (&twin_a, &twin_b)] {
        let cfg = small_cfg(KvQuantMode::None);
        let cache = KvCache::new(ctx, &cfg).unwrap();
        let plan = prompt_plan(ctx, &cfg, &[0, 1]);
        let kv = foreign.zeroed("kv", 2 * 2 * 64 * 2);
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let t = Tensor::new(&kv, Dtype::F16, [2, 2, 64]);
        let e = cache
            .reshape_and_cache(ctx, &mut enc, &plan, 0, t, t)
            .unwrap_err();
        assert!(matches!(e, Error::ForeignBuffer { .. }), "{e}");
        let q = foreign.zeroed("q", 2 * 4 * 64 * 2);
        let out = ctx.zeroed("out", 2 * 4 * 64 * 2);
        let e = attend_4_heads(
            (&cache, cache.layer(0).unwrap()),
            ctx,
            &mut enc,
            &plan,
            (&q, &out),
            [2, 4, 64][0],
        )
        .unwrap_err();
        assert!(matches!(e, Error::ForeignBuffer { .. }), "{e}");
        ctx.queue.submit([enc.finish()]);
    }
    w.assert_clean();
}

#[test]
fn a_layer_of_another_cache_is_rejected() {
    let Some(w) = Watched::new() else { return };
    let ctx = &w.ctx;
    let cfg = small_cfg(KvQuantMode::None);
    let a = KvCache::new(ctx, &cfg).unwrap();
    let b = KvCache::new(ctx, &cfg).unwrap();
    let plan = one_sequence_plan(ctx, &cfg, 1, false);
    let q = ctx.zeroed("q", 4 * 64 * 2);
    let out = ctx.zeroed("out", 4 * 64 * 2);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let e = attend_4_heads(
        (&a, b.layer(0).unwrap()),
        ctx,
        &mut enc,
        &plan,
        (&q, &out),
        [1, 4, 64][0],
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { what: "layer", .. }),
        "{e}"
    );
    assert!(matches!(
        a.layer(1),
        Err(Error::InvalidArgument { what: "layer", .. })
    ));
    w.assert_clean();
}

#[test]
fn binding_rules_are_checked_on_the_host() {
    let Some(w) = Watched::new() else { return };
    let ctx = &w.ctx;
    // A buffer without COPY_SRC cannot be read back: a typed error, not zeros.
    let plain = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    assert!(matches!(
        ctx.read_buffer(&plain),
        Err(Error::InvalidBuffer { .. })
    ));
    // Only the bytes a call uses are bound: a q buffer larger than the storage-binding limit
    // (a buffer holding many layers, say) works, and a tensor whose used rows do not fit the
    // buffer is rejected.
    let limit = ctx.limits().max_storage_buffer_binding_size;
    let cfg = small_cfg(KvQuantMode::None);
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let plan = BatchPlan::new(
        ctx,
        &cfg,
        &StepInput {
            cu_seqlens_q: &[0, 1],
            seqused_k: &[1],
            block_table: &[0],
            block_table_stride: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let big_rows = (limit / (4 * 64 * 2)) as u32 + 8;
    let big = ctx.zeroed("big q", big_rows as u64 * 4 * 64 * 2);
    assert!(big.size() > limit);
    let out = ctx.zeroed("out", 4 * 64 * 2);
    let odd = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 * 64 * 2 - 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let params = AttentionParams {
        num_q_heads: 4,
        ..Default::default()
    };
    let run = |enc: &mut wgpu::CommandEncoder, q: Tensor<'_>, o: Tensor<'_>| {
        cache.unified_attention(
            ctx,
            enc,
            &Attention {
                plan: &plan,
                layer: cache.layer(0).unwrap(),
                q,
                out: o,
                params: &params,
            },
        )
    };
    run(
        &mut enc,
        Tensor::new(&big, Dtype::F16, [big_rows, 4, 64]),
        Tensor::new(&out, Dtype::F16, [1, 4, 64]),
    )
    .unwrap();
    let e = run(
        &mut enc,
        Tensor::new(&big, Dtype::F16, [1, 4, 64]),
        Tensor::new(&odd, Dtype::F16, [1, 4, 64]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidBuffer { what: "out", .. }), "{e}");
    ctx.queue.submit([enc.finish()]);
    w.assert_clean();
}

#[test]
fn validation_arithmetic_never_overflows() {
    // Runs in the test profile, where integer overflow panics: each case must come back as a
    // typed error.
    let huge = [0i32, i32::MAX];
    let cases: Vec<StepInput> = vec![
        StepInput {
            cu_seqlens_q: &[0, 1, 2],
            seqused_k: &[1, 1],
            block_table: &[0, 0],
            block_table_stride: usize::MAX,
            ..Default::default()
        },
        StepInput {
            cu_seqlens_q: &[0, i32::MAX],
            seqused_k: &[i32::MAX],
            block_table: &[0],
            block_table_stride: 1,
            ..Default::default()
        },
        StepInput {
            cu_seqlens_q: &[0, i32::MIN],
            seqused_k: &[1],
            block_table: &[0],
            block_table_stride: 1,
            ..Default::default()
        },
        StepInput {
            cu_seqlens_q: &[0, 1],
            seqused_k: &[1],
            block_table: &[0],
            block_table_stride: 1,
            qq_bias: Some(QqBias {
                values: &[0.0],
                rows: usize::MAX,
                cols: 2,
            }),
            ..Default::default()
        },
        StepInput {
            cu_seqlens_q: &[0, 1],
            seqused_k: &[1],
            block_table: &[0],
            block_table_stride: 1,
            prefix_ranges: Some(PrefixRanges {
                ranges: &huge,
                ranges_per_seq: usize::MAX,
            }),
            ..Default::default()
        },
        StepInput {
            cu_seqlens_q: &[0, 1],
            seqused_k: &[1],
            block_table: &[0],
            block_table_stride: 1,
            qq_bias: Some(QqBias {
                values: &[f32::NAN],
                rows: 1,
                cols: 1,
            }),
            ..Default::default()
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let e = c.validate(8, 16).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidArgument { .. } | Error::ShapeMismatch { .. }
            ),
            "case {i}: {e}"
        );
    }
    // Configs whose byte sizes would wrap, or whose slots do not fit i32.
    for cfg in [
        CacheConfig {
            num_layers: u32::MAX,
            ..small_cfg(KvQuantMode::None)
        },
        CacheConfig {
            num_blocks: u32::MAX,
            ..small_cfg(KvQuantMode::None)
        },
        CacheConfig {
            num_kv_heads: u32::MAX,
            ..small_cfg(KvQuantMode::None)
        },
    ] {
        assert!(
            matches!(cfg.validate(), Err(Error::InvalidArgument { .. })),
            "{cfg:?}"
        );
    }
    // Footprints saturate instead of wrapping to a small size.
    let fp = CacheConfig {
        num_layers: 4096,
        num_blocks: i32::MAX as u32 / 1024,
        block_size: 1024,
        num_kv_heads: 1,
        head_size: 256,
        mode: KvQuantMode::None,
        dtype: Dtype::F32,
        ..Default::default()
    }
    .footprint()
    .unwrap();
    assert!(fp.total_bytes > 1 << 40, "{fp:?}");
    // BatchPlan::new validates the config (block_size 0 would divide by zero).
    let Some(w) = Watched::new() else { return };
    let e = BatchPlan::new(
        &w.ctx,
        &CacheConfig {
            block_size: 0,
            ..small_cfg(KvQuantMode::None)
        },
        &StepInput::default(),
    );
    assert!(matches!(
        e,
        Err(Error::InvalidArgument {
            what: "block_size",
            ..
        })
    ));
    w.assert_clean();
}

#[test]
fn huge_scores_behave_like_the_reference() {
    let Some(ctx) = context() else { return };
    // softmax_scale 1e30: real scores of ~1e30 must not be taken for masked ones.
    for (seqs, path) in [
        (vec![(6u32, 40u32), (1, 17)], AttentionPath::Auto),
        (vec![(1, 40), (1, 70)], AttentionPath::DecodePortable),
        (vec![(1, 40), (1, 70)], AttentionPath::DecodeSubgroups),
    ] {
        let s = shape(&seqs, 4, 2, 64, Dtype::F16);
        let ex = Extras {
            softmax_scale: Some(1e30),
            path,
            split: SplitK::Segments(2),
            ..Default::default()
        };
        let out = run_case(ctx, 0xB16, &s, &ex).unwrap();
        assert_close(&out, s.dtype);
    }
}

/// `n` standard normal values.
fn normals(rng: &mut quantkv::reference::rng::SplitMix64, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// `x` rounded to f16, as the f16 cache and query hold it.
fn f16_rounded(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&y| Dtype::F16.round(y)).collect()
}

/// The CPU reference over caches `kc` / `vc` (rows in slot order, block size 16) with the
/// query `q` rounded to f16.
fn f16_reference(
    q: &[f64],
    (kc, vc): (&[f64], &[f64]),
    (hkv, d): (usize, usize),
    step: &StepInput,
    params: &AttentionParams,
) -> Vec<f64> {
    let geometry = quantkv::reference::attention::RefGeometry {
        block_size: 16,
        num_kv_heads: hkv,
        head_size: d,
    };
    quantkv::reference::unified_attention(&f16_rounded(q), kc, vc, geometry, step, params)
}

/// Spec §7 level 2 for f16 outputs, element by element (`what` names the case).
fn assert_f16_close(got: &[f64], want: &[f64], what: &str) {
    for (i, (g, c)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite() && (g - c).abs() <= 2e-3 * (1.0 + c.abs()),
            "{what} element {i}: {g} vs {c}"
        );
    }
}

#[test]
fn a_non_finite_value_of_a_masked_key_does_not_leak() {
    let Some(w) = Watched::new() else { return };
    let ctx = &w.ctx;
    // A prompt of 8 tokens on an f16 cache (stored as given): token 7's V is NaN. Rows 0..6
    // cannot see it (causal) and must equal the reference; row 7 sees it.
    let cfg = small_cfg(KvQuantMode::None);
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let (n, hkv, hq, d) = (8usize, 2usize, 4usize, 64usize);
    let mut rng = quantkv::reference::rng::SplitMix64::new(7);
    let k = normals(&mut rng, n * hkv * d);
    let mut v = normals(&mut rng, n * hkv * d);
    for x in &mut v[7 * hkv * d..] {
        *x = f64::NAN;
    }
    let q = normals(&mut rng, n * hq * d);
    let slots: Vec<i32> = (0..n as i32).collect();
    let step = StepInput {
        slot_mapping: &slots,
        cu_seqlens_q: &[0, n as i32],
        seqused_k: &[n as i32],
        block_table: &[0],
        block_table_stride: 1,
        ..Default::default()
    };
    let plan = BatchPlan::new(ctx, &cfg, &step).unwrap();
    let (kb, vb, qb) = (
        ctx.upload("k", &Dtype::F16.encode(&k)),
        ctx.upload("v", &Dtype::F16.encode(&v)),
        ctx.upload("q", &Dtype::F16.encode(&q)),
    );
    let ob = ctx.zeroed("out", (n * hq * d * 2) as u64);
    let params = AttentionParams {
        num_q_heads: hq as u32,
        softmax_scale: 0.125,
        ..Default::default()
    };
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let kv = |b| Tensor::new(b, Dtype::F16, [n as u32, hkv as u32, d as u32]);
    cache
        .reshape_and_cache(ctx, &mut enc, &plan, 0, kv(&kb), kv(&vb))
        .unwrap();
    cache
        .unified_attention(
            ctx,
            &mut enc,
            &Attention {
                plan: &plan,
                layer: cache.layer(0).unwrap(),
                q: Tensor::new(&qb, Dtype::F16, [n as u32, hq as u32, d as u32]),
                out: Tensor::new(&ob, Dtype::F16, [n as u32, hq as u32, d as u32]),
                params: &params,
            },
        )
        .unwrap();
    ctx.queue.submit([enc.finish()]);
    let got = Dtype::F16.decode(&ctx.read_buffer(&ob).unwrap());
    // Reference on the f16-rounded inputs, in the cache's slot order (identity here).
    let mut kc = vec![0.0; 8 * 16 * hkv * d];
    let mut vc = kc.clone();
    kc[..k.len()].copy_from_slice(&f16_rounded(&k));
    vc[..v.len()].copy_from_slice(&f16_rounded(&v));
    let want = f16_reference(&q, (&kc, &vc), (hkv, d), &step, &params);
    let row = hq * d;
    assert_f16_close(&got[..7 * row], &want[..7 * row], "rows 0..6:");
    assert!(
        got[7 * row..].iter().all(|x| x.is_nan()),
        "row 7 sees the NaN"
    );
    w.assert_clean();
}

#[test]
fn decode_keys_outside_a_segment_read_no_poison() {
    // The streaming decode rung reads row 0 of the pools for the keys of a step that fall
    // outside its segment (before a window's first key, past a split-K segment's end) and
    // must add exactly 0 for them. Row 0 (block 0, slot 0; no sequence's block) holds NaN K
    // and V here, so a lane that let one of its values through gives a NaN output.
    let Some(w) = Watched::new() else { return };
    let ctx = &w.ctx;
    let cfg = small_cfg(KvQuantMode::None);
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let (n, hkv, hq, d) = (45usize, 2usize, 4usize, 64usize);
    let table = [3i32, 5, 6];
    let mut rng = quantkv::reference::rng::SplitMix64::new(0x0B5);
    let k = normals(&mut rng, n * hkv * d);
    let v = normals(&mut rng, n * hkv * d);
    let q = normals(&mut rng, hq * d);
    let slot = |p: usize| table[p / 16] * 16 + (p % 16) as i32;
    // The prompt's rows, then a NaN row into slot 0 (a plan of its own).
    let mut slots: Vec<i32> = (0..n).map(slot).collect();
    slots.push(0);
    let write_plan = BatchPlan::new(
        ctx,
        &cfg,
        &StepInput {
            slot_mapping: &slots,
            cu_seqlens_q: &[0, n as i32 + 1],
            seqused_k: &[n as i32 + 1],
            block_table: &[3, 5, 6, 0],
            block_table_stride: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let mut kw = k.clone();
    let mut vw = v.clone();
    kw.extend(vec![f64::NAN; hkv * d]);
    vw.extend(vec![f64::NAN; hkv * d]);
    let decode_slot = [slot(n - 1)];
    let step = StepInput {
        slot_mapping: &decode_slot,
        cu_seqlens_q: &[0, 1],
        seqused_k: &[n as i32],
        block_table: &table,
        block_table_stride: 3,
        ..Default::default()
    };
    let plan = BatchPlan::new(ctx, &cfg, &step).unwrap();
    let kv = |b| Tensor::new(b, Dtype::F16, [n as u32 + 1, hkv as u32, d as u32]);
    let (kb, vb, qb) = (
        ctx.upload("k", &Dtype::F16.encode(&kw)),
        ctx.upload("v", &Dtype::F16.encode(&vw)),
        ctx.upload("q", &Dtype::F16.encode(&q)),
    );
    let mut kc = vec![0.0; 8 * 16 * hkv * d];
    let mut vc = kc.clone();
    for p in 0..n {
        let o = slot(p) as usize * hkv * d;
        kc[o..o + hkv * d].copy_from_slice(&f16_rounded(&k[p * hkv * d..(p + 1) * hkv * d]));
        vc[o..o + hkv * d].copy_from_slice(&f16_rounded(&v[p * hkv * d..(p + 1) * hkv * d]));
    }
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    cache
        .reshape_and_cache(ctx, &mut enc, &write_plan, 0, kv(&kb), kv(&vb))
        .unwrap();
    ctx.queue.submit([enc.finish()]);
    let mut ran = 0;
    // A window whose first key (45 - 30 = 15) is not a step's first; split-K segments that
    // end inside a step; both.
    for (window, split) in [
        ((29, 0), SplitK::Off),
        ((-1, -1), SplitK::Segments(3)),
        ((29, 0), SplitK::Segments(2)),
    ] {
        let params = AttentionParams {
            num_q_heads: hq as u32,
            softmax_scale: 0.125,
            window_size: window,
            split,
            path: AttentionPath::DecodeStream,
            ..Default::default()
        };
        if !cache.launch_plan(ctx, &plan, &params).unwrap().stream {
            assert!(!ctx.caps().subgroups, "the streaming rung is not admitted");
            eprintln!("SKIPPING keys outside a segment: this adapter has no subgroups");
            continue;
        }
        let ob = ctx.zeroed("out", (hq * d * 2) as u64);
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        attend_4_heads_with(
            (&cache, cache.layer(0).unwrap()),
            ctx,
            &mut enc,
            &plan,
            (&qb, &ob),
            1,
            &params,
        )
        .unwrap();
        ctx.queue.submit([enc.finish()]);
        let got = Dtype::F16.decode(&ctx.read_buffer(&ob).unwrap());
        let want = f16_reference(&q, (&kc, &vc), (hkv, d), &step, &params);
        assert_f16_close(&got, &want, &format!("{window:?} {split:?}"));
        ran += 1;
    }
    assert!(ran == 3 || !ctx.caps().subgroups, "only {ran} cases ran");
    w.assert_clean();
}

#[test]
fn a_lost_device_gives_typed_errors_not_panics() {
    let Some(w) = Watched::new() else { return };
    let ctx = &w.ctx;
    let cfg = small_cfg(KvQuantMode::Int4PerTokenHead);
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let step = StepInput {
        slot_mapping: &[0],
        cu_seqlens_q: &[0, 1],
        seqused_k: &[1],
        block_table: &[0],
        block_table_stride: 1,
        ..Default::default()
    };
    let plan = BatchPlan::new(ctx, &cfg, &step).unwrap();
    let kv = ctx.zeroed("kv", 2 * 64 * 2);
    let q = ctx.zeroed("q", 4 * 64 * 2);
    let out = ctx.zeroed("out", 4 * 64 * 2);
    let hooked = Arc::new(Mutex::new(false));
    let flag = hooked.clone();
    ctx.on_device_lost(move |_, _| *flag.lock().unwrap() = true);
    assert!(!ctx.is_lost());
    ctx.device.destroy();
    assert!(ctx.is_lost(), "Device::destroy is seen");
    assert!(*hooked.lock().unwrap(), "the caller's hook ran");
    let lost = |e: Error| assert!(matches!(e, Error::DeviceLost(_)), "{e}");
    lost(KvCache::new(ctx, &cfg).err().unwrap());
    lost(BatchPlan::new(ctx, &cfg, &step).err().unwrap());
    lost(ctx.try_zeroed("x", 16).unwrap_err());
    lost(ctx.read_buffer(&out).unwrap_err());
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let t = Tensor::new(&kv, Dtype::F16, [1, 2, 64]);
    lost(
        cache
            .reshape_and_cache(ctx, &mut enc, &plan, 0, t, t)
            .unwrap_err(),
    );
    lost(
        attend_4_heads(
            (&cache, cache.layer(0).unwrap()),
            ctx,
            &mut enc,
            &plan,
            (&q, &out),
            [1, 4, 64][0],
        )
        .unwrap_err(),
    );
}

#[test]
fn a_dropped_cache_releases_its_cached_bind_groups() {
    // A cached bind group holds its buffers: without eviction, a dropped cache's pools stayed
    // allocated (a benchmark that made one cache per shape filled an H200's memory, and later
    // pools landed in slower memory, 2-5x slower decode).
    let Some(w) = Watched::new() else { return };
    let ctx = &w.ctx;
    let cfg = small_cfg(KvQuantMode::Int8PerTokenHead);
    let kv = ctx.zeroed("kv", 3 * 2 * 64 * 2);
    let kvt = |b| Tensor::new(b, Dtype::F16, [3, 2, 64]);
    let plan = prompt_plan(ctx, &cfg, &[0, 1, 2]);
    let keep = KvCache::new(ctx, &cfg).unwrap();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    keep.reshape_and_cache(ctx, &mut enc, &plan, 0, kvt(&kv), kvt(&kv))
        .unwrap();
    let before = ctx.cached_bind_groups();
    assert!(before >= 1, "the write's bind group is cached");
    for _ in 0..3 {
        let cache = KvCache::new(ctx, &cfg).unwrap();
        cache
            .reshape_and_cache(ctx, &mut enc, &plan, 0, kvt(&kv), kvt(&kv))
            .unwrap();
        assert_eq!(ctx.cached_bind_groups(), before + 1);
        drop(cache);
        assert_eq!(
            ctx.cached_bind_groups(),
            before,
            "the dropped cache's group is evicted"
        );
    }
    ctx.queue.submit([enc.finish()]);
    w.assert_clean();
    drop(keep);
    assert_eq!(ctx.cached_bind_groups(), 0);
}

#[test]
fn the_pipeline_cache_is_bounded() {
    let Some(_) = context() else { return };
    let ctx = Context::new().unwrap().with_pipeline_cap(2);
    // Three variants (write, unified, decode) through a cap of two: results stay right.
    for (seqs, seed) in [
        (vec![(4u32, 20u32)], 1u64),
        (vec![(1, 20)], 2),
        (vec![(4, 20)], 3),
    ] {
        let s = shape(&seqs, 4, 2, 64, Dtype::F16);
        let out = run_case(&ctx, seed, &s, &Extras::default()).unwrap();
        assert_close(&out, s.dtype);
        assert!(
            ctx.built_pipelines().len() <= 2,
            "{:?}",
            ctx.built_pipelines()
        );
    }
}

/// Out of device memory, simulated: the test runs itself again in a child process whose
/// address space is limited (lavapipe allocates device memory from it); there it must get
/// `Error::OutOfMemory` from `KvCache::new` without losing the device, then a smaller cache from
/// `KvCache::new_largest`. Only on lavapipe, where device memory is process memory (it says so
/// when it skips).
#[test]
fn out_of_memory_is_a_typed_error() {
    if std::env::var("QUANTKV_OOM_CHILD").is_ok() {
        return oom_child();
    }
    let Some(ctx) = context() else { return };
    if !ctx.adapter().name.contains("llvmpipe") {
        eprintln!(
            "out-of-memory simulation needs lavapipe (device memory = process memory); not run on {}",
            ctx.adapter().name
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -v 6000000; exec '{}' --exact robustness::out_of_memory_is_a_typed_error --nocapture",
            exe.display()
        ))
        .env("QUANTKV_OOM_CHILD", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("OOM-TYPED"), "child output:\n{text}");
    assert!(text.contains("LARGEST-FIT"), "child output:\n{text}");
}

fn oom_child() {
    let ctx = Context::new().unwrap();
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = errors.clone();
    ctx.device
        .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
    // 64 layers of 2 x 64 MiB pools: 8 GiB, over the child's 6 GB address space.
    let cfg = CacheConfig {
        num_layers: 64,
        num_blocks: 2048,
        block_size: 16,
        num_kv_heads: 8,
        head_size: 128,
        mode: KvQuantMode::None,
        dtype: Dtype::F16,
        ..Default::default()
    };
    match KvCache::new(&ctx, &cfg) {
        Err(Error::OutOfMemory { what, bytes }) => println!("OOM-TYPED {what} {bytes}"),
        Err(e) => panic!("expected OutOfMemory, got {e}"),
        Ok(_) => panic!("an 8 GiB cache fit in a 6 GB address space"),
    }
    assert!(!ctx.is_lost(), "out of memory must not lose the device");
    // 4 layers with room for a million blocks: the largest that fits is found.
    let small = CacheConfig {
        num_layers: 4,
        num_blocks: 1 << 20,
        ..cfg
    };
    match KvCache::new_largest(&ctx, &small, 16) {
        Ok(c) => {
            assert!(c.config().num_blocks >= 16 && c.config().num_blocks < 1 << 20);
            println!("LARGEST-FIT {} blocks", c.config().num_blocks)
        }
        Err(e) => panic!("new_largest: {e}"),
    }
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
}

/// `cache.unified_attention` over `layer` with 4 query heads of 64 (default parameters), q and
/// out f16 `[rows, 4, 64]` at the start of their buffers.
fn attend_4_heads(
    (cache, layer): (&KvCache, &LayerKv),
    ctx: &Context,
    enc: &mut wgpu::CommandEncoder,
    plan: &BatchPlan,
    (q, out): (&wgpu::Buffer, &wgpu::Buffer),
    rows: u32,
) -> Result<()> {
    let params = AttentionParams {
        num_q_heads: 4,
        ..Default::default()
    };
    attend_4_heads_with((cache, layer), ctx, enc, plan, (q, out), rows, &params)
}

/// [`attend_4_heads`] with the caller's parameters (`num_q_heads` 4).
fn attend_4_heads_with(
    (cache, layer): (&KvCache, &LayerKv),
    ctx: &Context,
    enc: &mut wgpu::CommandEncoder,
    plan: &BatchPlan,
    (q, out): (&wgpu::Buffer, &wgpu::Buffer),
    rows: u32,
    params: &AttentionParams<'_>,
) -> Result<()> {
    cache.unified_attention(
        ctx,
        enc,
        &Attention {
            plan,
            layer,
            q: Tensor::new(q, Dtype::F16, [rows, 4, 64]),
            out: Tensor::new(out, Dtype::F16, [rows, 4, 64]),
            params,
        },
    )
}

#[test]
fn steps_reuse_pooled_buffers_and_bind_groups() {
    // A step's split-K partials return to the context's step pool with its metadata buffers,
    // so the next step of the same shape binds the same buffers and creates no bind group
    // (creating ~64 per step was most of a step's host cost). Reuse must not change results:
    // every step of one shape is bit-identical (split-K with a fixed segment count is
    // deterministic), also after a larger step replaced the pooled partials.
    let Some(w) = Watched::new() else { return };
    let ctx = &w.ctx;
    let cfg = small_cfg(KvQuantMode::Int8PerTokenHead);
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let mut rng = quantkv::reference::rng::SplitMix64::new(7);
    let rows: Vec<u16> = (0..64 * 2 * 64)
        .map(|_| half::f16::from_f64(rng.normal()).to_bits())
        .collect();
    let kv = ctx.upload("kv", bytemuck::cast_slice(&rows));
    let q = ctx.upload("q", bytemuck::cast_slice(&rows[..2 * 4 * 64]));
    let out = ctx.zeroed("out", 2 * 4 * 64 * 2);
    let slots: Vec<i32> = (0..64).collect();
    let plan = prompt_plan(ctx, &cfg, &slots);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let kvt = Tensor::new(&kv, Dtype::F16, [64, 2, 64]);
    cache
        .reshape_and_cache(ctx, &mut enc, &plan, 0, kvt, kvt)
        .unwrap();
    ctx.queue.submit([enc.finish()]);
    drop(plan);
    // One decode step of `b` sequences (each the whole 64-token prompt), a fresh plan.
    let step_split = |b: usize, split: SplitK| -> Vec<u8> {
        let params = AttentionParams {
            num_q_heads: 4,
            split,
            ..Default::default()
        };
        let cu: Vec<i32> = (0..=b as i32).collect();
        let plan = BatchPlan::new(
            ctx,
            &cfg,
            &StepInput {
                cu_seqlens_q: &cu,
                seqused_k: &vec![64; b],
                block_table: &[0, 1, 2, 3].repeat(b),
                block_table_stride: 4,
                ..Default::default()
            },
        )
        .unwrap();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let layer = cache.layer(0).unwrap();
        attend_4_heads_with(
            (&cache, layer),
            ctx,
            &mut enc,
            &plan,
            (&q, &out),
            b as u32,
            &params,
        )
        .unwrap();
        ctx.queue.submit([enc.finish()]);
        drop(plan);
        let mut bytes = ctx.read_buffer(&out).unwrap();
        bytes.truncate(b * 4 * 64 * 2);
        bytes
    };
    let step = |b| step_split(b, SplitK::Segments(4));
    let first = step(1);
    let groups = ctx.cached_bind_groups();
    for _ in 0..3 {
        assert!(step(1) == first, "a step on pooled buffers differs");
        assert_eq!(
            ctx.cached_bind_groups(),
            groups,
            "a repeated step created a bind group"
        );
    }
    let two = step(2);
    assert!(two[..first.len()] == first[..], "row 0 of a two-row step");
    assert!(two[first.len()..] != first[..], "row 1 has its own query");
    assert!(step(1) == first, "after the pooled partials grew");
    // The split result is the unsplit one up to rounding (both are checked against the f64
    // reference elsewhere).
    let halves = |b: &[u8]| -> Vec<f64> {
        b.chunks(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect()
    };
    let (split, whole) = (halves(&first), halves(&step_split(1, SplitK::Off)));
    for (a, b) in split.iter().zip(&whole) {
        assert!((a - b).abs() <= 2e-3 * (1.0 + b.abs()), "{a} vs {b}");
    }
    assert!(whole.iter().any(|x| x.abs() > 1e-3));
    w.assert_clean();
}
