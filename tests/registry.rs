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
