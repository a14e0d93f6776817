//! The registry creates backends on first request and pipelines on first use: an unused mode
//! costs nothing, and a second identical call builds nothing.

mod common;

use common::*;
use quantkv::*;

#[test]
fn unbuilt_modes_answer_unsupported() {
    let Some(ctx) = context() else { return };
    for mode in KvQuantMode::ALL {
        match ctx.backend(mode) {
            Ok(b) => {
                assert!(mode.is_supported());
                assert_eq!(b.mode(), mode);
            }
            Err(Error::Unsupported { mode: m }) => {
                assert_eq!(m, mode);
                assert!(!mode.is_supported());
            }
            Err(e) => panic!("{mode:?}: unexpected {e}"),
        }
    }
    assert!(KvQuantMode::None.is_supported());
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
    assert!(
        ctx.created_backends().is_empty(),
        "Context::new creates no backend"
    );
    let s = shape(&[(3, 20), (1, 9)], 4, 2, 64, Dtype::F16);
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
    assert_eq!(ctx.created_backends(), vec![KvQuantMode::None]);
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
    // Labels: quantkv/<kernel>/<modes>/d<head>/<dtype>/<features>/<tiling>. The batch is far
    // below SUBGROUP_RUNG_MIN_WORKGROUPS, so Auto takes the portable rung.
    let portable = "quantkv/decode/none-none/d64/f16/base/";
    for (path, want) in [
        (AttentionPath::Auto, portable),
        (
            AttentionPath::DecodeSubgroups,
            if sg {
                "quantkv/decode/none-none/d64/f16/sg/"
            } else {
                portable
            },
        ),
        (AttentionPath::DecodePortable, portable),
        (
            AttentionPath::Unified,
            "quantkv/unified/none-none/d64/f16/base/",
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
