//! Every attention parameter of the core, alone and in the combinations real models use, on
//! prefill, decode and mixed batches, with and without split-K, vs the f64 reference.
//!
//! The core is mode-free (modes enter only through the read contract), so the quick suite runs
//! each test on one plain mode (`none`) and one rotated mode with a zero point
//! (`int4_per_token_head`, which exercises every term of the contract), each check on one of
//! the two in turn (`modes_for`). The `#[ignore]`d `extended_every_parameter_on_every_mode`
//! reruns every test here on every mode.

use std::cell::RefCell;

use crate::common::*;
use quantkv::*;

thread_local! {
    /// The modes `check` runs: the quick pair, or every mode inside the extended test.
    static MODES: RefCell<Vec<KvQuantMode>> =
        RefCell::new(vec![KvQuantMode::None, KvQuantMode::Int4PerTokenHead]);
}

fn modes() -> Vec<KvQuantMode> {
    MODES.with(|m| m.borrow().clone())
}

#[test]
#[ignore = "extended matrix: every attention parameter x every mode; run on the GPU machine"]
fn extended_every_parameter_on_every_mode() {
    MODES.with(|m| *m.borrow_mut() = KvQuantMode::ALL.to_vec());
    decode_kernel_long_contexts_head_groups_and_odd_head_sizes();
    sliding_window();
    softcap();
    sinks();
    alibi_linear();
    alibi_sqrt();
    qq_bias();
    prefix_ranges_bidirectional();
    gpt_oss_sinks_and_window();
    gemma_softcap_and_window();
    everything_at_once();
    prefill_kernel_rescales_tiles_and_pads_rows();
    prefill_kernel_small_blocks_long_tables();
    decode_rows_on_the_prefill_kernel_split_over_keys();
    window_visits_only_blocks_near_the_window();
    fp8_output_scale();
    decode_stream_rung();
    decode_stream_rung_sixteen_elements_per_lane();
}

/// Mixed batch: a chunked prefill over context, a fresh prompt, and two decode rows.
const MIXED: &[(u32, u32)] = &[(12, 90), (20, 20), (1, 75), (1, 33)];
/// Decode batch.
const DECODE: &[(u32, u32)] = &[(1, 150), (1, 40), (1, 97)];

/// Whether the extended matrix (every mode) is running.
fn extended() -> bool {
    modes().len() > 2
}

fn check(seed: u64, seqs: &[(u32, u32)], hq: u32, hkv: u32, d: u32, ex: Extras) {
    check_in(
        seed,
        shape(seqs, hq, hkv, d, Dtype::F16),
        &modes_for(seed),
        ex,
    );
}

/// The modes one `check` runs. The extended matrix: every mode. The quick suite: one of its
/// two modes per check, picked by the seed so that the checks of a test (consecutive seeds)
/// alternate between them and consecutive tests (seeds 16 apart) swap the assignment. Every
/// parameter then runs on both modes and every path on both modes, with half the pipelines to
/// compile (on lavapipe, compiles are nearly all of the suite's time); the core is mode-free,
/// and `extended_every_parameter_on_every_mode` runs the full product on the GPU machine.
fn modes_for(seed: u64) -> Vec<KvQuantMode> {
    let all = modes();
    if extended() {
        return all;
    }
    vec![all[((seed + (seed >> 4)) % all.len() as u64) as usize]]
}

/// `base` (its mode replaced) on each of `modes` against the reference.
fn check_in(seed: u64, base: Shape, modes: &[KvQuantMode], ex: Extras) {
    let Some(ctx) = context() else { return };
    for &mode in modes {
        let b = quantkv::modes::backend(mode).unwrap();
        if ex.poison_outside_window && !(b.stores_rows_as_given() || b.needs_scale_caches()) {
            continue; // per-tensor codes have no NaN to poison with; the core is the same
        }
        let s = Shape {
            mode,
            ..base.clone()
        };
        let out = run_case(ctx, seed, &s, &ex)
            .unwrap_or_else(|e| panic!("{mode:?} block size {} seed {seed:#x}: {e}", s.block_size));
        assert_close(&out, s.dtype);
    }
}

/// Whether Auto runs a prompt batch (mode none, f16, head size 64) on the prefill kernel on
/// `ctx`: on cooperative matrices, or on the scalar twin's wide tilings (subgroups); else on
/// the unified kernel.
fn auto_prompts_on_the_prefill_kernel(ctx: &Context) -> bool {
    let lp = plan_for(
        ctx,
        KvQuantMode::None,
        Dtype::F16,
        (8, 2, 64),
        16,
        AttentionPath::Auto,
    );
    lp.kernel == quantkv::internal::Kernel::Prefill
}

fn both(seed: u64, ex: Extras) {
    // The mixed batch on Auto's kernel (the prefill kernel on cooperative matrices or on its
    // twin's wide tilings where the adapter allows them, the unified kernel elsewhere), on the
    // unified kernel where Auto did not take it, and, in the extended matrix, on the prefill
    // kernel's scalar twin (each parameter
    // is a new twin pipeline to compile; the quick suite runs the twin on every parameter at
    // once in `everything_at_once`, and in `fp8_output_scale` and
    // `prefill_kernel_rescales_tiles_and_pads_rows`).
    check(seed, MIXED, 8, 2, 64, ex.clone());
    if context().is_some_and(auto_prompts_on_the_prefill_kernel) {
        let ex = Extras {
            path: AttentionPath::Unified,
            ..ex.clone()
        };
        check(seed + 5, MIXED, 8, 2, 64, ex);
    }
    if extended() {
        let twin = Extras {
            path: AttentionPath::PrefillTiled,
            ..ex.clone()
        };
        check(seed + 4, MIXED, 8, 2, 64, twin);
    }
    check(
        seed + 1,
        DECODE,
        8,
        2,
        64,
        Extras {
            split: SplitK::Segments(4),
            path: AttentionPath::DecodeSubgroups,
            ..ex.clone()
        },
    );
    check(
        seed + 2,
        DECODE,
        8,
        2,
        64,
        Extras {
            split: SplitK::Off,
            path: AttentionPath::DecodePortable,
            ..ex.clone()
        },
    );
    // The same decode batch on the unified kernel (Auto takes the decode kernel). Each rung
    // is forced: these batches are far below SUBGROUP_RUNG_MIN_WORKGROUPS.
    check(
        seed + 3,
        DECODE,
        8,
        2,
        64,
        Extras {
            split: SplitK::Segments(4),
            path: AttentionPath::Unified,
            ..ex
        },
    );
}

#[test]
fn decode_kernel_long_contexts_head_groups_and_odd_head_sizes() {
    // Contexts of several key chunks (512 keys for 4 heads per kv head, 128 for 16), so the
    // running maximum is rescaled across chunks; 2D and split-K on both rungs of the decode
    // kernel (subgroups where the adapter has them, portable), and the unified kernel on the
    // same batch; 3 heads per kv head (a padded row), 32 per kv head (two workgroups per kv
    // head), head size 80 (a partial eight-vec4 group, 6 P.V slices). The quick suite runs the
    // two odd head groups on the split rungs only, leaves out `Auto` (the streaming rung,
    // `decode_stream_rung`'s), and runs each check on one mode (`modes_for`):
    // this was the slowest test of the suite on lavapipe (165 s alone, nearly all pipeline
    // compiles); the extended matrix runs every path on every shape and mode.
    let quick = !extended();
    let long: &[(u32, u32)] = &[(1, 1300), (1, 513), (1, 2), (0, 40), (1, 700)];
    let ex = Extras {
        sinks: true,
        alibi: true,
        ..Default::default()
    };
    for (i, (hq, hkv, d)) in [(8u32, 2u32, 64u32), (6, 2, 80), (32, 1, 32)]
        .into_iter()
        .enumerate()
    {
        let seed = 0x3C0 + 8 * i as u64;
        for (j, (split, path)) in [
            (SplitK::Off, AttentionPath::DecodeSubgroups),
            (SplitK::Segments(3), AttentionPath::DecodeSubgroups),
            (SplitK::Off, AttentionPath::Auto),
            (SplitK::Segments(3), AttentionPath::DecodePortable),
            (SplitK::Off, AttentionPath::Unified),
        ]
        .into_iter()
        .enumerate()
        {
            // Quick: `Auto` (the streaming rung, which `decode_stream_rung` covers) left out.
            if quick && ((i > 0 && split == SplitK::Off) || path == AttentionPath::Auto) {
                continue;
            }
            let ex = Extras {
                split,
                path,
                softcap: if j % 2 == 1 { 30.0 } else { 0.0 },
                ..ex.clone()
            };
            check(seed + j as u64, long, hq, hkv, d, ex);
        }
    }
}

#[test]
fn sliding_window() {
    both(
        0x300,
        Extras {
            window_left: Some(19),
            ..Default::default()
        },
    );
}

#[test]
fn softcap() {
    both(
        0x310,
        Extras {
            softcap: 0.7,
            ..Default::default()
        },
    );
}

#[test]
fn sinks() {
    both(
        0x320,
        Extras {
            sinks: true,
            ..Default::default()
        },
    );
}

#[test]
fn alibi_linear() {
    both(
        0x330,
        Extras {
            alibi: true,
            ..Default::default()
        },
    );
}

#[test]
fn alibi_sqrt() {
    both(
        0x340,
        Extras {
            alibi_sqrt: true,
            ..Default::default()
        },
    );
}

#[test]
fn qq_bias() {
    // Columns both shorter and longer than the query chunks.
    check(
        0x350,
        MIXED,
        8,
        2,
        64,
        Extras {
            qq_bias: Some(7),
            ..Default::default()
        },
    );
    check(
        0x351,
        MIXED,
        4,
        4,
        80,
        Extras {
            qq_bias: Some(24),
            ..Default::default()
        },
    );
}

#[test]
fn prefix_ranges_bidirectional() {
    // Per sequence: a real range inside the new tokens, one in the context, one padding range.
    let ranges = vec![
        vec![(80, 85), (3, 9), (5, 5)],
        vec![(2, 12), (15, 14), (0, -1)],
        vec![(10, 20), (0, 0), (0, 0)],
        vec![(1, 2), (7, 7), (0, 0)],
    ];
    check(
        0x360,
        MIXED,
        8,
        2,
        64,
        Extras {
            prefix_ranges: Some(ranges.clone()),
            ..Default::default()
        },
    );
    check(
        0x361,
        MIXED,
        8,
        2,
        64,
        Extras {
            prefix_ranges: Some(ranges),
            window_left: Some(5),
            ..Default::default()
        },
    );
}

#[test]
fn gpt_oss_sinks_and_window() {
    both(
        0x370,
        Extras {
            sinks: true,
            window_left: Some(31),
            ..Default::default()
        },
    );
}

#[test]
fn gemma_softcap_and_window() {
    both(
        0x380,
        Extras {
            softcap: 1.5,
            window_left: Some(40),
            ..Default::default()
        },
    );
}

#[test]
fn everything_at_once() {
    let all = Extras {
        softcap: 2.0,
        sinks: true,
        alibi_sqrt: true,
        window_left: Some(25),
        qq_bias: Some(16),
        ..Default::default()
    };
    check(0x390, MIXED, 8, 1, 128, all.clone());
    // The prefill kernel's scalar twin with every parameter on.
    let twin = Extras {
        path: AttentionPath::PrefillTiled,
        ..all
    };
    check(0x392, MIXED, 8, 1, 128, twin);
    check(
        0x391,
        DECODE,
        8,
        1,
        128,
        Extras {
            softcap: 2.0,
            sinks: true,
            alibi: true,
            window_left: Some(25),
            split: SplitK::Segments(8),
            ..Default::default()
        },
    );
}

/// The prefill kernel over many key tiles with scores large enough that row maxima jump by
/// more than its lazy-rescaling threshold (softmax_scale 1.5: scores of tens), so O is
/// rescaled mid-sequence; GQA 3 (a workgroup's rows are not a multiple of the heads), MHA at
/// head size 32, and (extended) GQA 4 at 128; prompt, chunk over context, and decode rows
/// forced onto it.
#[test]
fn prefill_kernel_rescales_tiles_and_pads_rows() {
    let seqs: &[(u32, u32)] = &[(70, 70), (33, 260), (1, 150), (5, 5)];
    let shapes: &[(u32, u32, u32)] = if extended() {
        &[(6, 2, 64), (2, 2, 32), (8, 2, 128)]
    } else {
        &[(6, 2, 64), (2, 2, 32)]
    };
    for (i, &(hq, hkv, d)) in shapes.iter().enumerate() {
        for (j, path) in [AttentionPath::PrefillCoop, AttentionPath::PrefillTiled]
            .into_iter()
            .enumerate()
        {
            if j == 1 && !context().is_some_and(|c| c.caps().coop_f16) {
                continue; // PrefillCoop is the twin here
            }
            let ex = Extras {
                path,
                softmax_scale: Some(1.5),
                sinks: i == 0,
                ..Default::default()
            };
            check(0x5E0 + 4 * i as u64 + j as u64, seqs, hq, hkv, d, ex);
        }
    }
}

/// The prefill kernel (its twin on lavapipe) at block sizes 1 and 3, where a key tile spans
/// many blocks (or a block boundary inside the tile), with sequences of several hundred
/// blocks, a window that starts the key loop mid-sequence, a decode row and a short prompt in
/// the batch, and a shuffled block table (`run_case`). (A version of the kernel that staged
/// the block table 128 blocks at a time was checked by this test: it fails when a stale
/// chunk is read.)
#[test]
fn prefill_kernel_small_blocks_long_tables() {
    let seqs: &[(u32, u32)] = &[(40, 300), (1, 260), (20, 20), (70, 460)];
    // The quick suite runs one mode (the block-table walk is mode-free); the extended matrix
    // every mode and a windowless block size 1 too.
    let (configs, modes): (&[(u32, Option<i32>)], Vec<KvQuantMode>) = if extended() {
        (&[(1, Some(150)), (3, None), (1, None)], modes())
    } else {
        (&[(1, Some(150)), (3, None)], vec![KvQuantMode::None])
    };
    for (i, &(bs, window)) in configs.iter().enumerate() {
        let s = Shape {
            block_size: bs,
            ..shape(seqs, 4, 2, 32, Dtype::F16)
        };
        let ex = Extras {
            path: AttentionPath::PrefillCoop,
            window_left: window,
            ..Default::default()
        };
        check_in(0x8C0 + i as u64, s, &modes, ex);
    }
}

/// Decode batches forced onto the prefill kernel (on cooperative matrices where the adapter
/// has them, its scalar twin elsewhere; `Auto` never takes it for decode), split over the
/// key axis: the planner's
/// segments, forced segments with sinks, softcap, ALiBi and a window (sinks join in the reduce
/// pass), GQA 4 at head size 128 (extended matrix), and a segment count that leaves some
/// segments without keys.
#[test]
fn decode_rows_on_the_prefill_kernel_split_over_keys() {
    let all = Extras {
        path: AttentionPath::PrefillCoop,
        softcap: 2.0,
        sinks: true,
        alibi: true,
        window_left: Some(70),
        split: SplitK::Segments(4),
        ..Default::default()
    };
    check(0x3C0, DECODE, 8, 2, 64, all);
    let auto = Extras {
        path: AttentionPath::PrefillCoop,
        ..Default::default()
    };
    if extended() {
        check(0x3C1, &[(1, 700), (1, 45)], 8, 2, 128, auto.clone());
    }
    // 16-key tiles: 40 keys are 3 tiles, so 8 segments leave most of them empty.
    check(
        0x3C2,
        &[(1, 40), (1, 3)],
        4,
        1,
        64,
        Extras {
            split: SplitK::Segments(8),
            ..auto
        },
    );
}

#[test]
fn window_visits_only_blocks_near_the_window() {
    // ~96% of the cache is NaN-poisoned; any read of a poisoned block would turn outputs NaN.
    let long: &[(u32, u32)] = &[(1, 2000), (1, 1500), (16, 1200)];
    let ex = Extras {
        window_left: Some(63),
        poison_outside_window: true,
        ..Default::default()
    };
    check(
        0x3A0,
        long,
        8,
        2,
        64,
        Extras {
            split: SplitK::Off,
            ..ex.clone()
        },
    );
    check(
        0x3A1,
        &long[..2],
        8,
        2,
        64,
        Extras {
            split: SplitK::Segments(4),
            ..ex.clone()
        },
    );
    check(0x3A2, long, 8, 2, 64, Extras { sinks: true, ..ex });
}

#[test]
fn split_k_upstream_overrides() {
    // seq_threshold_3d below the batch size: the 2D path runs; caller-given segment buffers work.
    check(
        0x3B0,
        DECODE,
        8,
        2,
        64,
        Extras {
            split: SplitK::Segments(4),
            seq_threshold_3d: Some(2),
            ..Default::default()
        },
    );
    let bytes = quantkv::segment_buffer_bytes(3, 8, 4, 64);
    check(
        0x3B1,
        DECODE,
        8,
        2,
        64,
        Extras {
            split: SplitK::Segments(4),
            seq_threshold_3d: Some(8),
            segment_buffer_bytes: Some(bytes),
            ..Default::default()
        },
    );
    // An odd number of partial slots (1 token x 3 heads x 3 segments): the last (max, sum)
    // pair sits in the first half of a 16-byte word, which the buffer's size includes.
    check(
        0x3B3,
        &[(1, 200)],
        3,
        1,
        64,
        Extras {
            split: SplitK::Segments(3),
            segment_buffer_bytes: Some(quantkv::segment_buffer_bytes(1, 3, 3, 64)),
            ..Default::default()
        },
    );
    assert_eq!(quantkv::segment_buffer_bytes(1, 3, 3, 64), 596 * 4);
    // Auto planner on a long, small decode batch picks split-K and still matches.
    check(
        0x3B2,
        &[(1, 1800)],
        8,
        2,
        64,
        Extras {
            split: SplitK::Auto,
            ..Default::default()
        },
    );
}

#[test]
fn split_k_auto_planner_choices() {
    use quantkv::plan_split;
    let decode = |seqs: u32, k: u32| StepSummary {
        num_seqs: seqs,
        num_tokens_q: seqs,
        num_write: 0,
        max_seqlen_q: 1,
        max_seqlen_k: k,
    };
    let prefill = StepSummary {
        max_seqlen_q: 7,
        ..decode(1, 4096)
    };
    assert_eq!(
        plan_split(SplitK::Auto, None, &prefill, 8, 32),
        1,
        "never for prefill rows"
    );
    assert!(
        plan_split(SplitK::Auto, None, &decode(1, 131072), 8, 32) >= 16,
        "B=1 long context splits"
    );
    assert_eq!(
        plan_split(SplitK::Auto, None, &decode(64, 2048), 1024, 32),
        1,
        "a full grid does not split"
    );
    assert_eq!(
        plan_split(SplitK::Auto, None, &decode(1, 64), 8, 32),
        1,
        "short contexts do not split"
    );
    assert_eq!(
        plan_split(SplitK::Segments(16), Some(4), &decode(8, 4096), 64, 32),
        1,
        "threshold"
    );
    assert_eq!(
        plan_split(SplitK::Segments(16), Some(8), &decode(8, 4096), 64, 32),
        16
    );
}

#[test]
fn bad_parameters_get_typed_errors() {
    let hq = 8;
    let p = |f: &dyn Fn(&mut AttentionParams<'static>)| {
        let mut a = AttentionParams {
            num_q_heads: hq,
            softmax_scale: 0.1,
            ..Default::default()
        };
        f(&mut a);
        a.validate(2)
    };
    static SHORT: [f32; 3] = [0.0; 3];
    static NAN: [f32; 8] = [f32::NAN; 8];
    assert!(matches!(
        p(&|a| a.sinks = Some(&SHORT)),
        Err(Error::ShapeMismatch { what: "sinks", .. })
    ));
    assert!(matches!(
        p(&|a| a.alibi_slopes = Some(&SHORT)),
        Err(Error::ShapeMismatch {
            what: "alibi_slopes",
            ..
        })
    ));
    assert!(matches!(
        p(&|a| a.sinks = Some(&NAN)),
        Err(Error::InvalidArgument { what: "sinks", .. })
    ));
    assert!(matches!(
        p(&|a| a.softcap = -1.0),
        Err(Error::InvalidArgument {
            what: "softcap",
            ..
        })
    ));
    assert!(matches!(
        p(&|a| a.window_size = (-2, 0)),
        Err(Error::InvalidArgument {
            what: "window_size",
            ..
        })
    ));
    assert!(matches!(
        p(&|a| a.use_alibi_sqrt = true),
        Err(Error::InvalidArgument {
            what: "use_alibi_sqrt",
            ..
        })
    ));
    assert!(matches!(
        p(&|a| a.split = SplitK::Segments(1)),
        Err(Error::InvalidArgument { what: "split", .. })
    ));
    assert!(matches!(
        p(&|a| a.split = SplitK::Segments(257)),
        Err(Error::InvalidArgument { what: "split", .. })
    ));
    p(&|_| ()).unwrap();

    // Step-level parameters.
    let bt = [0, 1, 2, 3];
    let base = StepInput {
        cu_seqlens_q: &[0, 5, 6],
        seqused_k: &[20, 30],
        block_table: &bt,
        block_table_stride: 2,
        ..Default::default()
    };
    let qq = [0.0f32; 4 * 3];
    let e = StepInput {
        qq_bias: Some(QqBias {
            values: &qq,
            rows: 4,
            cols: 3,
        }),
        ..base
    }
    .validate(4, 16);
    assert!(
        matches!(
            e,
            Err(Error::InvalidArgument {
                what: "qq_bias",
                ..
            })
        ),
        "qq_bias rows < longest query: {e:?}"
    );
    let e = StepInput {
        qq_bias: Some(QqBias {
            values: &qq,
            rows: 5,
            cols: 3,
        }),
        ..base
    }
    .validate(4, 16);
    assert!(matches!(
        e,
        Err(Error::ShapeMismatch {
            what: "qq_bias",
            ..
        })
    ));
    let mm_bad = [0, 25, 3, 4];
    let e = StepInput {
        prefix_ranges: Some(PrefixRanges {
            ranges: &mm_bad,
            ranges_per_seq: 1,
        }),
        ..base
    }
    .validate(4, 16);
    assert!(
        matches!(
            e,
            Err(Error::InvalidArgument {
                what: "prefix_ranges",
                ..
            })
        ),
        "range past seqused_k: {e:?}"
    );
    let mm_neg = [-1, 3, 3, 4];
    let e = StepInput {
        prefix_ranges: Some(PrefixRanges {
            ranges: &mm_neg,
            ranges_per_seq: 1,
        }),
        ..base
    }
    .validate(4, 16);
    assert!(matches!(
        e,
        Err(Error::InvalidArgument {
            what: "prefix_ranges",
            ..
        })
    ));
    let mm_pad = [40, 2, 99, 99, 3, 4, -5, -9];
    StepInput {
        prefix_ranges: Some(PrefixRanges {
            ranges: &mm_pad,
            ranges_per_seq: 2,
        }),
        ..base
    }
    .validate(4, 16)
    .expect("padding ranges (start >= end) are valid");
    let e = StepInput {
        prefix_ranges: Some(PrefixRanges {
            ranges: &mm_pad[..6],
            ranges_per_seq: 2,
        }),
        ..base
    }
    .validate(4, 16);
    assert!(matches!(
        e,
        Err(Error::ShapeMismatch {
            what: "prefix_ranges",
            ..
        })
    ));

    // A caller-given segment buffer that is too small.
    let Some(ctx) = context() else { return };
    let s = shape(DECODE, 8, 2, 64, Dtype::F16);
    let small = quantkv::segment_buffer_bytes(3, 8, 4, 64) - 4;
    let e = run_case(
        ctx,
        0x3C0,
        &s,
        &Extras {
            split: SplitK::Segments(4),
            segment_buffer_bytes: Some(small),
            ..Default::default()
        },
    );
    assert!(matches!(
        e,
        Err(Error::InvalidBuffer {
            what: "segment_buffer",
            ..
        })
    ));
}

#[test]
fn fp8_output_scale() {
    let fp8 = Extras {
        output_scale: Some(0.01),
        ..Default::default()
    };
    check(0x3D0, MIXED, 8, 2, 64, fp8.clone());
    // FP8 output near zero is the strictest bound on the prefill kernel's P precision.
    let twin = Extras {
        path: AttentionPath::PrefillTiled,
        ..fp8
    };
    check(0x3D2, MIXED, 8, 2, 64, twin);
    check(
        0x3D1,
        DECODE,
        8,
        2,
        64,
        Extras {
            output_scale: Some(0.003),
            split: SplitK::Segments(4),
            sinks: true,
            ..Default::default()
        },
    );
}

/// The prefill kernel's scalar twin (the portable tiled kernel) in both of its forms: the wide
/// tilings, where several threads share each softmax row by shuffles and the score blocks are
/// summed in head-dimension parts (taken where subgroups allow; asserted from the launch
/// plan), and one thread per row on a context without subgroups. Both against the reference
/// with softcap, sinks and a window, a prompt, a chunk over context and decode rows; Auto
/// takes the twin for prompts only where its wide tilings exist.
#[test]
fn prefill_twin_wide_and_one_thread_per_row() {
    let Some(ctx) = context() else { return };
    let portable = Context::new().unwrap().with_subgroups(false);
    assert!(!portable.caps().subgroups);
    let ex = Extras {
        path: AttentionPath::PrefillTiled,
        softcap: 3.0,
        sinks: true,
        window_left: Some(40),
        ..Default::default()
    };
    for (i, (c, wide)) in [(ctx, ctx.caps().subgroups), (&portable, false)]
        .into_iter()
        .enumerate()
    {
        let mut took_wide = false;
        // Auto runs prompts on the twin where its wide tilings exist, else on the unified kernel.
        assert_eq!(
            auto_prompts_on_the_prefill_kernel(c),
            (c.caps().coop_f16 && c.caps().subgroups) || wide,
            "context {i}"
        );
        for (j, &(hq, hkv, d)) in [(8u32, 2u32, 64u32), (4, 4, 128)].iter().enumerate() {
            let seed = 0x7A0 + 4 * i as u64 + j as u64;
            let mode = modes_for(seed)[0];
            let s = Shape {
                mode,
                ..shape(MIXED, hq, hkv, d, Dtype::F16)
            };
            let t = plan_for(
                c,
                mode,
                Dtype::F16,
                (hq, hkv, d),
                16,
                AttentionPath::PrefillTiled,
            )
            .tiling;
            // (f32 tiles of the rotation modes may not fit a wide tiling: lavapipe's 32 KiB.)
            assert!(t.wg_size == t.max_m || wide, "{mode:?} d{d}: {t:?}");
            took_wide |= t.wg_size > t.max_m;
            let out = run_case(c, seed, &s, &ex)
                .unwrap_or_else(|e| panic!("{mode:?} d{d} seed {seed:#x}: {e}"));
            assert_close(&out, s.dtype);
        }
        assert_eq!(
            took_wide, wide,
            "context {i}: a wide tiling where subgroups exist"
        );
    }
}

/// The launch plan `path` gives one sequence of `n` tokens (decode for 1, a prompt above) of
/// this shape on `ctx` (softmax scale 0.1).
fn plan_for(
    ctx: &Context,
    mode: KvQuantMode,
    dtype: Dtype,
    (hq, hkv, d): (u32, u32, u32),
    n: i32,
    path: AttentionPath,
) -> LaunchPlan {
    let cfg = CacheConfig {
        num_blocks: 4,
        block_size: 16,
        num_kv_heads: hkv,
        head_size: d,
        mode,
        dtype,
        ..Default::default()
    };
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let plan = one_sequence_plan(ctx, &cfg, n, true);
    let params = AttentionParams {
        num_q_heads: hq,
        softmax_scale: 0.1,
        path,
        ..Default::default()
    };
    cache.launch_plan(ctx, &plan, &params).unwrap()
}

/// Whether `AttentionPath::DecodeStream` takes the streaming rung for this shape on `ctx`.
fn takes_stream(ctx: &Context, mode: KvQuantMode, dtype: Dtype, hq: u32, hkv: u32, d: u32) -> bool {
    plan_for(
        ctx,
        mode,
        dtype,
        (hq, hkv, d),
        1,
        AttentionPath::DecodeStream,
    )
    .stream
}

#[test]
fn decode_stream_rung() {
    // The streaming rung (8 elements per lane, query heads as vec4 components, per-key-group
    // online softmax, no barrier in the key loop) on every code width it admits (16-bit and
    // f32 rows, 8-bit codes with and without a scale cache, 4- and 2-bit rotation modes), long
    // contexts that cross many steps, split-K, GQA 4, 1 and 8 (two head chunks), with sinks,
    // ALiBi, softcap and a window; then FP8 output. Head size 64 needs 8 lanes per row, which
    // every adapter with subgroups holds (lavapipe's are 8); 128 runs where subgroups hold 16.
    let Some(ctx) = context() else { return };
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    let long: &[(u32, u32)] = &[(1, 1300), (1, 513), (1, 2), (0, 40), (1, 700)];
    let mut cases = vec![
        (KvQuantMode::None, Dtype::F16, 8u32, 2u32, 64u32),
        (KvQuantMode::None, Dtype::Bf16, 4, 4, 32),
        (KvQuantMode::None, Dtype::F32, 16, 2, 64),
        (KvQuantMode::Int8PerTokenHead, Dtype::F16, 8, 2, 64),
        (KvQuantMode::Fp8PerTensor, Dtype::F16, 8, 2, 64),
        (KvQuantMode::Int4PerTokenHead, Dtype::F16, 8, 2, 64),
        (KvQuantMode::Int2PerTokenHead, Dtype::F16, 8, 2, 64),
    ];
    if ctx.caps().subgroups && ctx.caps().subgroup_min_size >= 16 {
        cases.push((KvQuantMode::None, Dtype::F16, 8, 2, 128));
        cases.push((KvQuantMode::Fp8PerTokenHead, Dtype::F16, 8, 2, 128));
    }
    let mut ran = 0;
    for (i, (mode, dtype, hq, hkv, d)) in cases.into_iter().enumerate() {
        if !takes_stream(ctx, mode, dtype, hq, hkv, d) {
            assert!(
                !ci || !ctx.caps().subgroups,
                "{mode:?} {dtype:?} d{d}: the streaming rung is not admitted on an adapter with subgroups"
            );
            eprintln!("SKIPPING streaming rung for {mode:?} d{d}: this adapter has no subgroups");
            continue;
        }
        // Unsplit; split through the step's pooled partials; split through a caller's
        // segment buffer. The quick suite runs the first and last on the first case and one per
        // case after it, in turn (each is a pipeline to compile); the extended matrix all.
        for (j, split) in [SplitK::Off, SplitK::Segments(3), SplitK::Segments(3)]
            .into_iter()
            .enumerate()
        {
            if !extended() && ((i > 0 && j != i % 3) || (i == 0 && j == 1)) {
                continue;
            }
            let ex = Extras {
                split,
                path: AttentionPath::DecodeStream,
                sinks: j != 1,
                alibi: true,
                softcap: if j == 1 { 30.0 } else { 0.0 },
                window_left: (j == 1).then_some(600),
                llm_like: true,
                segment_buffer_bytes: (j == 2).then_some(1 << 20),
                ..Default::default()
            };
            let mut s = shape(long, hq, hkv, d, dtype);
            s.mode = mode;
            let seed = 0x5700 + 8 * i as u64 + j as u64;
            let out = run_case(ctx, seed, &s, &ex).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            assert_close(&out, dtype);
            ran += 1;
        }
    }
    if ctx.caps().subgroups {
        let want = if extended() { 21 } else { 8 };
        assert!(ran >= want, "only {ran} of {want} streaming cases ran");
        let built = ctx.built_pipelines();
        assert!(
            built.iter().any(|l| l.contains("stream")),
            "no streaming pipeline was built: {built:?}"
        );
        let mut s = shape(DECODE, 8, 2, 64, Dtype::F16);
        s.mode = KvQuantMode::None;
        let ex = Extras {
            path: AttentionPath::DecodeStream,
            output_scale: Some(0.05),
            ..Default::default()
        };
        let out = run_case(ctx, 0x57F0, &s, &ex).unwrap();
        assert_close(&out, Dtype::F16);
    }
}

/// The streaming rung at 16 elements per lane (head size 128 on a batch of at least
/// `STREAM_WIDE_KEYS` keys: 13 sequences, the longest 1300), every code width it takes
/// there (16-bit rows, 8-bit codes with and without a scale cache, 4- and 2-bit rotation
/// modes), and at head size 64 (4 lanes per row) for the 8-bit and 4-bit codes that take it
/// there, split with sinks, ALiBi and softcap; the quick suite four of the seven. On lavapipe
/// (subgroups of 8) 16 elements per lane is the only width that fits head size 128.
#[test]
fn decode_stream_rung_sixteen_elements_per_lane() {
    let Some(ctx) = context() else { return };
    let mut seqs = vec![(1u32, 1300u32), (1, 700)];
    seqs.extend((0..11).map(|i| (1, 2 + 7 * i)));
    assert!(seqs.len() as u64 * 1300 >= 16384); // the planner's STREAM_WIDE_KEYS
    let mut ran = 0;
    for (i, (mode, d)) in [
        (KvQuantMode::None, 128),
        (KvQuantMode::Int8PerTokenHead, 128),
        (KvQuantMode::Fp8PerTensor, 128),
        (KvQuantMode::Int4PerTokenHead, 128),
        (KvQuantMode::Int2PerTokenHead, 128),
        (KvQuantMode::Int4PerTokenHead, 64),
        (KvQuantMode::Int8PerTokenHead, 64),
    ]
    .into_iter()
    .enumerate()
    {
        // The quick suite: 16-bit rows, 8-bit codes with a scale cache and 2-bit at head size
        // 128, 4-bit at 64 (the other widths run at 8 elements per lane in
        // `decode_stream_rung`); extended: all seven.
        if !extended() && matches!(i, 2 | 3 | 6) {
            continue;
        }
        if !takes_stream(ctx, mode, Dtype::F16, 8, 2, d) && !ctx.caps().subgroups {
            eprintln!("SKIPPING 16 elements per lane for {mode:?}: this adapter has no subgroups");
            continue;
        }
        let ex = Extras {
            split: SplitK::Segments(3),
            path: AttentionPath::DecodeStream,
            sinks: true,
            alibi: true,
            softcap: 30.0,
            llm_like: true,
            ..Default::default()
        };
        let mut s = shape(&seqs, 8, 2, d, Dtype::F16);
        s.mode = mode;
        let out = run_case(ctx, 0x5800 + i as u64, &s, &ex)
            .unwrap_or_else(|e| panic!("{mode:?} d{d}: {e}"));
        assert_close(&out, Dtype::F16);
        ran += 1;
    }
    if ctx.caps().subgroups {
        assert_eq!(ran, if extended() { 7 } else { 4 });
        // 16 elements per lane: at head size 128 8 lanes per row, 64 keys per round of a
        // 128-thread workgroup; at 64, 4 lanes and 128 keys.
        let built = ctx.built_pipelines();
        for (mode, d, tile) in [
            ("int2_per_token_head", "/d128/", "/t64w128m4"),
            ("int4_per_token_head", "/d64/", "/t128w128m4"),
        ] {
            assert!(
                built.iter().any(|l| l.contains(mode)
                    && l.contains(d)
                    && l.contains("+stream")
                    && l.ends_with(tile)),
                "no 16-element streaming pipeline was built for {mode} at {d}: {built:?}"
            );
        }
    }
}

/// The planner's word on mixed batches: on `Auto` their single-token rows run on the decode
/// kernel apart (every mixed test above checks the result); a forced path, a batch without
/// decode rows, a decode-only batch and prefix ranges keep one launch.
#[test]
fn mixed_batches_take_their_decode_rows_apart() {
    let Some(ctx) = context() else { return };
    let cfg = none_cfg(64, 2, 64);
    let cache = KvCache::new(ctx, &cfg).unwrap();
    let table: Vec<i32> = (0..64).collect();
    let apart = |seqs: &[(i32, i32)], path: AttentionPath, mm: bool| {
        let mut cu = vec![0];
        for &(q, _) in seqs {
            cu.push(cu.last().unwrap() + q);
        }
        let used: Vec<i32> = seqs.iter().map(|s| s.1).collect();
        let ranges = vec![0i32; seqs.len() * 2];
        let plan = BatchPlan::new(
            ctx,
            &cfg,
            &StepInput {
                cu_seqlens_q: &cu,
                seqused_k: &used,
                block_table: &table[..seqs.len() * 16],
                block_table_stride: 16,
                prefix_ranges: mm.then_some(PrefixRanges {
                    ranges: &ranges,
                    ranges_per_seq: 1,
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let params = AttentionParams {
            num_q_heads: 8,
            softmax_scale: 0.125,
            path,
            ..Default::default()
        };
        cache.launch_plan(ctx, &plan, &params).unwrap().decode_apart
    };
    let mixed = [(12, 90), (1, 75), (20, 20), (1, 33)];
    assert!(apart(&mixed, AttentionPath::Auto, false));
    assert!(!apart(&mixed, AttentionPath::Unified, false));
    assert!(!apart(&mixed, AttentionPath::Auto, true));
    assert!(!apart(&[(12, 90), (20, 20)], AttentionPath::Auto, false));
    assert!(!apart(&[(1, 90), (1, 20)], AttentionPath::Auto, false));
}
