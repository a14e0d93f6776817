//! Mode `none`: randomized paged attention vs the f64 reference (spec §7 level 2) and the
//! write path's layout (level 1), for prefill, decode and mixed batches.

use crate::common::*;
use quantkv::*;

fn check(seed: u64, s: Shape, ex: Extras) {
    let Some(ctx) = context() else { return };
    let out = run_case(ctx, seed, &s, &ex).unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    assert_close(&out, s.dtype);
}

#[test]
fn prefill_only_gqa4_d64() {
    check(
        0x11,
        shape(&[(37, 37), (20, 20)], 8, 2, 64, Dtype::F16),
        Extras::default(),
    );
}

#[test]
fn decode_only_gqa8_d128() {
    check(
        0x12,
        shape(&[(1, 45), (1, 130), (1, 1), (1, 17)], 8, 1, 128, Dtype::F16),
        Extras::default(),
    );
}

#[test]
fn mixed_batch_mha_d80() {
    // chunked prefill (context + new tokens), a fresh prompt and decode rows in one dispatch
    check(
        0x13,
        shape(
            &[(13, 70), (1, 33), (24, 24), (1, 100)],
            4,
            4,
            80,
            Dtype::F16,
        ),
        Extras::default(),
    );
}

#[test]
fn mixed_batch_f32_cache_block32() {
    let mut s = shape(&[(5, 50), (1, 77), (9, 9)], 8, 2, 64, Dtype::F32);
    s.block_size = 32;
    check(0x14, s, Extras::default());
}

#[test]
fn mqa_prefill_lengths_off_block_boundaries_d128_f32() {
    check(
        0x15,
        shape(&[(17, 31), (3, 3)], 4, 1, 128, Dtype::F32),
        Extras::default(),
    );
}

/// Whether a forced split-K decode call of this shape combines its segments in the decode
/// kernel (no reduce pass) on `ctx`.
fn combines(ctx: &Context, hq: u32, hkv: u32, d: u32, segments: u32) -> bool {
    let cfg = CacheConfig {
        num_blocks: 4,
        block_size: 16,
        num_kv_heads: hkv,
        head_size: d,
        ..Default::default()
    };
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let plan = one_sequence_plan(ctx, &cfg, 1, true);
    let params = AttentionParams {
        num_q_heads: hq,
        softmax_scale: 0.1,
        split: SplitK::Segments(segments),
        ..Default::default()
    };
    let lp = cache.launch_plan(ctx, &plan, &params).unwrap();
    assert_eq!(lp.segments, segments);
    lp.combine
}

#[test]
fn split_k_forced_matches_reference() {
    let Some(ctx) = context() else { return };
    // Both ways of combining the segments: in the decode kernel's last workgroup (the default
    // on Vulkan) and in the reduce pass.
    let reduce = Context::new().unwrap().with_split_combine(false);
    if ctx.adapter().backend == wgpu::Backend::Vulkan {
        assert!(
            ctx.caps().split_combine,
            "a Vulkan device combines in the kernel"
        );
    }
    for (c, combine) in [(ctx, ctx.caps().split_combine), (&reduce, false)] {
        assert_eq!(combines(c, 8, 2, 64, 4), combine);
        assert_eq!(combines(c, 8, 2, 128, 15), combine);
        assert_eq!(combines(c, 8, 2, 128, 37), combine);
        // Past COMBINE_MAX_SEGMENTS, the reduce pass.
        assert!(!combines(c, 8, 2, 128, 65));
        let run = |seed, s: Shape, ex: Extras| {
            let out = run_case(c, seed, &s, &ex).unwrap_or_else(|e| panic!("{seed:#x}: {e}"));
            assert_close(&out, s.dtype);
        };
        run(
            0x16,
            shape(&[(1, 150), (1, 9), (1, 64)], 8, 2, 64, Dtype::F16),
            Extras {
                split: SplitK::Segments(4),
                ..Default::default()
            },
        );
        // 15 segments at head size 128 (960 = 15 x 64 keys: none of the long sequence's is
        // empty whatever the rung's tile): the combine's rounds of four segments and its
        // remainder all add something; the short sequence leaves most segments empty, and the
        // sink joins the denominator.
        run(
            0x19,
            shape(&[(1, 960), (1, 20)], 8, 2, 128, Dtype::F16),
            Extras {
                split: SplitK::Segments(15),
                sinks: true,
                ..Default::default()
            },
        );
    }
    // 37 segments (the combine where the device has it, and the reduce pass): the combine's
    // rounds of eight segments and its remainder, the reduce pass's four prefetched rows per
    // thread, a round of its loop and its remainder all add something (4 slices of 32
    // output groups; 2368 = 37 x 64 keys). At head size 64 the combine splits each output
    // group's segments over two threads (even and odd).
    for (c, d) in [(ctx, 128), (ctx, 64), (&reduce, 128)] {
        let out = run_case(
            c,
            0x18,
            &shape(&[(1, 2368), (1, 20)], 8, 2, d, Dtype::F16),
            &Extras {
                split: SplitK::Segments(37),
                sinks: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_close(&out, Dtype::F16);
    }
    // 65 segments: past the combine's maximum, the reduce pass on any device.
    let out = run_case(
        ctx,
        0x1A,
        &shape(&[(1, 4160), (1, 20)], 8, 2, 64, Dtype::F16),
        &Extras {
            split: SplitK::Segments(65),
            ..Default::default()
        },
    )
    .unwrap();
    assert_close(&out, Dtype::F16);
}

/// Also the combine's counter reset: the second call reuses the first's pooled arrival
/// counters, and a combine that left them non-zero would never see its last workgroup.
#[test]
fn split_k_is_bitwise_deterministic() {
    let Some(ctx) = context() else { return };
    let s = shape(&[(1, 200), (1, 40)], 8, 2, 64, Dtype::F16);
    let ex = Extras {
        split: SplitK::Segments(8),
        ..Default::default()
    };
    let a = run_case(ctx, 0x17, &s, &ex).unwrap();
    let b = run_case(ctx, 0x17, &s, &ex).unwrap();
    assert_eq!(a.gpu, b.gpu);
    assert_close(&a, s.dtype);
}

#[test]
#[ignore = "extended matrix: every head size, both dtypes, every mode; run on demand"]
fn extended_head_sizes() {
    // Every head size of spec §10.8, both dtypes, every mode (rotation modes: every block size b).
    for mode in KvQuantMode::ALL {
        for d in (32..=256).step_by(16) {
            for (i, dt) in [Dtype::F16, Dtype::F32].into_iter().enumerate() {
                let mut s = shape(&[(9, 40), (1, 70)], 8, 2, d, dt);
                s.mode = mode;
                check(0x100 + d as u64 * 2 + i as u64, s, Extras::default());
                let split = Extras {
                    split: SplitK::Segments(3),
                    ..Default::default()
                };
                let mut s = shape(&[(1, 90)], 8, 2, d, dt);
                s.mode = mode;
                check(0x900 + d as u64, s, split);
            }
        }
    }
}

#[test]
#[ignore = "extended matrix: long contexts and all GQA ratios"]
fn extended_long_contexts() {
    for (i, &(hq, hkv)) in [(8u32, 8u32), (8, 2), (8, 1), (32, 8), (64, 2)]
        .iter()
        .enumerate()
    {
        check(
            0x200 + i as u64,
            shape(&[(1, 3000), (64, 1500), (1, 777)], hq, hkv, 128, Dtype::F16),
            Extras::default(),
        );
    }
}

/// bf16 model dtype (spec §10.8): q/k/v/out as bf16 bit patterns. Mode `none` stores bf16;
/// every quantized mode quantizes bf16 inputs, and the rotation modes round the rotated rows to
/// bf16; decode (both rungs, split-K) and mixed batches on the unified kernel. The quick suite
/// runs every mode's write path and prompt rows on the unified kernel, and on `none` and INT4
/// a mixed batch (its decode row apart on the rung `Auto` picks) and one forced rung each;
/// `extended_bf16_every_mode_and_kernel` runs the full product.
#[test]
fn bf16_model_dtype_every_mode_and_kernel() {
    bf16_cases(false);
}

#[test]
#[ignore = "extended matrix: bf16 on every mode x every kernel; run on the GPU machine"]
fn extended_bf16_every_mode_and_kernel() {
    bf16_cases(true);
}

fn bf16_cases(every: bool) {
    let Some(ctx) = context() else { return };
    for mode in KvQuantMode::ALL {
        for (p, (seed, seqs, path, split)) in [
            (
                0x1B0u64,
                vec![(6u32, 40u32), (1, 23)],
                AttentionPath::Auto,
                SplitK::Off,
            ),
            (
                0x1B1,
                vec![(1, 70), (1, 33)],
                AttentionPath::DecodeSubgroups,
                SplitK::Segments(3),
            ),
            (
                0x1B2,
                vec![(1, 70), (1, 33)],
                AttentionPath::DecodePortable,
                SplitK::Off,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            // Quick: the forced rungs on `none` (subgroups, split) and INT4 (portable) only.
            let quick_rung = match mode {
                KvQuantMode::None => 1,
                KvQuantMode::Int4PerTokenHead => 2,
                _ => 0,
            };
            if !every && p > 0 && p != quick_rung {
                continue;
            }
            // Quick, on the other modes: the prompt rows alone (a mode's codes read the same
            // for f16 and bf16 models; bf16 queries and outputs on the decode rungs run on
            // `none` and INT4).
            let seqs = if !every && p == 0 && quick_rung == 0 {
                vec![(6, 40), (3, 23)]
            } else {
                seqs
            };
            let mut s = shape(&seqs, 8, 2, 64, Dtype::Bf16);
            s.mode = mode;
            let ex = Extras {
                path,
                split,
                ..Default::default()
            };
            let out = run_case(ctx, seed, &s, &ex)
                .unwrap_or_else(|e| panic!("{mode:?} seed {seed:#x}: {e}"));
            assert_close(&out, s.dtype);
        }
    }
}
