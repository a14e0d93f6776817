//! WGSL composition: `// #include "path"` lines resolved from a static table of core files.
//! Text composition only chooses files; specialisation is done with override constants.

use std::collections::HashSet;

/// Every core WGSL file that may be included, by path under `shaders/`.
pub const CORE_FILES: &[(&str, &str)] = &[
    (
        "common/uniforms.wgsl",
        include_str!("../../shaders/common/uniforms.wgsl"),
    ),
    (
        "common/types_f16.wgsl",
        include_str!("../../shaders/common/types_f16.wgsl"),
    ),
    (
        "common/out.wgsl",
        include_str!("../../shaders/common/out.wgsl"),
    ),
    (
        "common/pack.wgsl",
        include_str!("../../shaders/common/pack.wgsl"),
    ),
    (
        "common/no_zero_point.wgsl",
        include_str!("../../shaders/common/no_zero_point.wgsl"),
    ),
    (
        "common/tile_raw.wgsl",
        include_str!("../../shaders/common/tile_raw.wgsl"),
    ),
    (
        "common/softmax.wgsl",
        include_str!("../../shaders/common/softmax.wgsl"),
    ),
    (
        "common/kv_groups.wgsl",
        include_str!("../../shaders/common/kv_groups.wgsl"),
    ),
    (
        "common/kv_read.wgsl",
        include_str!("../../shaders/common/kv_read.wgsl"),
    ),
    (
        "common/types_bf16.wgsl",
        include_str!("../../shaders/common/types_bf16.wgsl"),
    ),
    (
        "common/types_f32.wgsl",
        include_str!("../../shaders/common/types_f32.wgsl"),
    ),
    (
        "common/attn_bindings.wgsl",
        include_str!("../../shaders/common/attn_bindings.wgsl"),
    ),
    (
        "common/attn_basics.wgsl",
        include_str!("../../shaders/common/attn_basics.wgsl"),
    ),
    (
        "common/attn_common.wgsl",
        include_str!("../../shaders/common/attn_common.wgsl"),
    ),
    (
        "common/enc_no_transform.wgsl",
        include_str!("../../shaders/common/enc_no_transform.wgsl"),
    ),
    (
        "common/enc_direct.wgsl",
        include_str!("../../shaders/common/enc_direct.wgsl"),
    ),
    (
        "kernels/write_rows.wgsl",
        include_str!("../../shaders/kernels/write_rows.wgsl"),
    ),
    (
        "kernels/prefill.wgsl",
        include_str!("../../shaders/kernels/prefill.wgsl"),
    ),
    (
        "kernels/decode_common.wgsl",
        include_str!("../../shaders/kernels/decode_common.wgsl"),
    ),
    (
        "kernels/decode.wgsl",
        include_str!("../../shaders/kernels/decode.wgsl"),
    ),
];

/// Why composition failed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// An include names a file that is not in [`CORE_FILES`].
    #[error("unknown include {0:?}")]
    Unknown(String),
    /// Includes form a cycle.
    #[error("include cycle through {0:?}")]
    Cycle(String),
}

/// Resolves includes in `root` (each file included once, in first-use order) from
/// [`CORE_FILES`] and `extra`.
pub fn compose(root: &str, extra: &[(&str, &str)]) -> Result<String, ComposeError> {
    let mut out = String::new();
    let mut done = HashSet::new();
    let mut stack = Vec::new();
    expand(root, extra, &mut out, &mut done, &mut stack)?;
    Ok(out)
}

fn expand<'a>(
    src: &'a str,
    extra: &[(&'a str, &'a str)],
    out: &mut String,
    done: &mut HashSet<&'a str>,
    stack: &mut Vec<&'a str>,
) -> Result<(), ComposeError> {
    for line in src.lines() {
        let Some(path) = line
            .trim()
            .strip_prefix("// #include \"")
            .and_then(|r| r.strip_suffix('"'))
        else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (name, text) = CORE_FILES
            .iter()
            .chain(extra.iter())
            .find(|(n, _)| *n == path)
            .ok_or_else(|| ComposeError::Unknown(path.to_string()))?;
        if stack.contains(name) {
            return Err(ComposeError::Cycle(path.to_string()));
        }
        if !done.insert(*name) {
            continue;
        }
        stack.push(*name);
        expand(text, extra, out, done, stack)?;
        stack.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_once_and_rejects_unknown() {
        let s = compose(
            "// #include \"common/uniforms.wgsl\"\n// #include \"common/uniforms.wgsl\"\nfn f() {}",
            &[],
        )
        .unwrap();
        assert_eq!(s.matches("struct StepU").count(), 1);
        assert!(s.contains("fn f() {}"));
        assert!(matches!(
            compose("// #include \"nope.wgsl\"", &[]),
            Err(ComposeError::Unknown(_))
        ));
    }
}
