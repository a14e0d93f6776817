//! The registry creates backends on first request and pipelines on first use: an unused mode
//! costs nothing, and a second identical call builds nothing.

use crate::common::*;
use quantkv::*;

#[test]
fn every_mode_is_listed_built_and_owns_its_files() {
    // ALL is generated from an exhaustive match; it must list every numeric value once.
    for (i, mode) in KvQuantMode::ALL.iter().enumerate() {
        assert_eq!(*mode as usize, i, "ALL is in enum order");
        assert_eq!(KvQuantMode::from_index(i as u32), Some(*mode));
    }
    assert_eq!(KvQuantMode::from_index(KvQuantMode::ALL.len() as u32), None);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ids = std::collections::HashSet::new();
    for mode in KvQuantMode::ALL {
        // Every mode of the spec is built in this version.
        let b = quantkv::modes::backend(mode).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(mode.is_supported());
        assert_eq!(b.mode(), mode);
        assert!(ids.insert(mode.id()), "ids are unique");
        // The contributor recipe: a mode is its Rust file plus its WGSL folder.
        let files = b.owned_files();
        assert_eq!(
            files,
            vec![
                format!("src/modes/{}.rs", mode.id()),
                format!("shaders/modes/{}/", mode.id())
            ]
        );
        for f in &files {
            assert!(root.join(f).exists(), "{mode:?} owns {f}, which is missing");
        }
        let wgsl: Vec<_> = std::fs::read_dir(root.join(&files[1]))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            wgsl.iter().any(|f| f.starts_with("decode")),
            "{mode:?}: a read contract in {wgsl:?}"
        );
    }
    // The core's sources never name a mode: every mode id is absent from the kernels and the
    // shared WGSL (the contract is the only way in).
    for dir in [
        "src/kernels",
        "shaders/kernels",
        "shaders/common",
        "src/gpu",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with("_tests.rs") {
                continue; // unit tests exercise every mode on purpose
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for mode in KvQuantMode::ALL
                .into_iter()
                .filter(|m| *m != KvQuantMode::None)
            {
                assert!(
                    !code.contains(mode.id()),
                    "{} names mode {}",
                    path.display(),
                    mode.id()
                );
            }
            assert!(
                !code.contains("Int8Rounding"),
                "{} names a mode option",
                path.display()
            );
        }
    }
}

#[test]
fn pipelines_are_built_lazily_and_once() {
    // A private context: the shared one is used by other tests in parallel.
    let Some(_) = context() else { return };
    let ctx = Context::new().unwrap();
    assert!(
        ctx.built_pipelines().is_empty(),
        "Context::new builds no pipeline"
    );
    // Two prompts (a mixed batch would also run its decode row on the decode kernel).
    let s = shape(&[(3, 20), (2, 9)], 4, 2, 64, Dtype::F16);
    let out = run_case(&ctx, 0x51, &s, &Extras::default()).unwrap();
    assert_close(&out, s.dtype);
    let built = ctx.built_pipelines();
    assert_eq!(
        built.len(),
        2,
        "one write and one attention pipeline: {built:?}"
    );
    for label in &built {
        assert!(
            label.contains("/none-none/"),
            "only mode none was used: {label}"
        );
    }
    // Same shapes again: nothing new.
    let again = run_case(&ctx, 0x52, &s, &Extras::default()).unwrap();
    assert_close(&again, s.dtype);
    assert_eq!(ctx.built_pipelines(), built, "a second call builds nothing");
}

#[test]
fn decode_batches_pick_the_decode_kernel_and_its_rungs() {
    let Some(shared) = context() else { return };
    let s = shape(&[(1, 40), (1, 9)], 8, 2, 64, Dtype::F16);
    let sg = shared.caps().subgroups && shared.caps().subgroup_min_size >= 8;
    // Labels: quantkv/<kernel>/<modes>/o<mode options>/d<head>/<dtype>/<features>/<tiling>.
    // Auto takes the streaming rung where the smallest subgroup holds a row's 8 lanes (head
    // size 64); the batch is far below SUBGROUP_RUNG_MIN_WORKGROUPS, so Auto takes the
    // portable rung elsewhere.
    let portable = "quantkv/decode/none-none/o0/d64/f16/base/";
    let stream = "quantkv/decode/none-none/o0/d64/f16/sg+stream/";
    for (path, want) in [
        (AttentionPath::Auto, if sg { stream } else { portable }),
        (
            AttentionPath::DecodeStream,
            if sg { stream } else { portable },
        ),
        (
            AttentionPath::DecodeSubgroups,
            if sg {
                "quantkv/decode/none-none/o0/d64/f16/sg/"
            } else {
                portable
            },
        ),
        (AttentionPath::DecodePortable, portable),
        (
            AttentionPath::Unified,
            "quantkv/unified/none-none/o0/d64/f16/base/",
        ),
        (
            AttentionPath::PrefillTiled,
            "quantkv/prefill/none-none/o0/d64/f16/base/",
        ),
        (
            AttentionPath::PrefillCoop,
            if shared.caps().coop_f16 {
                "quantkv/prefill/none-none/o0/d64/f16/sg+coop/"
            } else {
                "quantkv/prefill/none-none/o0/d64/f16/base/"
            },
        ),
    ] {
        // A fresh context per path, so the one attention pipeline it builds is the one used.
        let ctx = Context::new().unwrap();
        let ex = Extras {
            path,
            ..Default::default()
        };
        let out = run_case(&ctx, 0x53, &s, &ex).unwrap();
        assert_close(&out, s.dtype);
        let new: Vec<String> = ctx
            .built_pipelines()
            .into_iter()
            .filter(|l| !l.contains("write"))
            .collect();
        assert!(
            new.len() == 1 && new[0].starts_with(want),
            "{path:?}: expected one new {want}*, built {new:?}"
        );
    }
}

/// The suite runs with wgpu's shader runtime checks off (the default); this runs every kernel
/// once on a context built with them on, so the checked build stays valid too: write_copy and
/// the prefill kernel (mixed batch, mode none; on cooperative matrices where the adapter has
/// them), the unified kernel on the same batch, write_rows with a transform, the decode
/// kernel's portable rung, its subgroup and streaming rungs (where the adapter has them; split,
/// so with their own combine where the device has it) and the unified kernel's split-K reduce
/// (int4).
#[test]
fn checked_shaders_smoke_every_kernel() {
    let Some(_) = context() else { return };
    let ctx = Context::new().unwrap().with_checked_shaders(true);
    assert!(ctx.checked_shaders());
    let mixed = shape(&[(5, 40), (1, 23)], 8, 2, 64, Dtype::F16);
    for path in [AttentionPath::PrefillCoop, AttentionPath::Unified] {
        let ex = Extras {
            path,
            ..Default::default()
        };
        let out = run_case(&ctx, 0xC0, &mixed, &ex).unwrap();
        assert_close(&out, mixed.dtype);
    }
    let mut dec = shape(&[(1, 70), (1, 33)], 8, 2, 64, Dtype::F16);
    dec.mode = KvQuantMode::Int4PerTokenHead;
    // (Split decode rungs combine their segments themselves where the device allows it; the
    // unified kernel's split always takes the reduce pass.)
    for path in [
        AttentionPath::DecodePortable,
        AttentionPath::DecodeSubgroups,
        AttentionPath::DecodeStream,
        AttentionPath::Unified,
    ] {
        let ex = Extras {
            split: SplitK::Segments(3),
            path,
            ..Default::default()
        };
        let out = run_case(&ctx, 0xC1, &dec, &ex).unwrap();
        assert_close(&out, dec.dtype);
    }
    let built = ctx.built_pipelines();
    for k in [
        "write_copy",
        "write_rows",
        "prefill",
        "unified",
        "decode",
        "reduce",
    ] {
        assert!(
            built
                .iter()
                .any(|l| l.starts_with(&format!("quantkv/{k}/"))),
            "{k} ran checked: {built:?}"
        );
    }
}
