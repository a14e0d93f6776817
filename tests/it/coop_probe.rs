//! The prefill kernel on cooperative matrices, mode by mode, beside its scalar twin (extended
//! matrix; on an adapter with cooperative matrices): modes with 16-bit, 8-bit, 4-bit and 2-bit
//! rows and a query transform (none, FP8 per-(token, head), INT4, INT2, whose centroids f16
//! does not hold exactly: K and V go in as hi + lo pairs), head sizes 32, 64 and 128, a
//! prompt and a chunk over context with a decode row. Prints where the output leaves spec §7
//! level 2 (which query tokens, heads and columns) and where the two kernels part, and fails
//! if any case leaves level 2 or did not run on cooperative matrices.
//!
//! With the prefill kernel's dump knobs (feature `debug-knobs`, `QUANTKV_DEBUG_SKIP` 256 and
//! up, see kernels/prefill.wgsl) the outputs are staged tiles instead, so only "vs twin" means
//! anything; `QUANTKV_PROBE_OUT=<dir>` writes both outputs of every case there as text.

use crate::common::*;
use quantkv::*;

#[test]
#[ignore = "extended matrix: cooperative matrices (GPU machine)"]
fn coop_prefill_every_mode_family_beside_the_twin() {
    let Some(shared) = context() else { return };
    if !shared.caps().coop_f16 {
        eprintln!("no cooperative matrices: nothing to probe");
        return;
    }
    let mut failed = Vec::new();
    for mode in [
        KvQuantMode::None,
        KvQuantMode::Fp8PerTokenHead,
        KvQuantMode::Int4PerTokenHead,
        KvQuantMode::Int2PerTokenHead,
    ] {
        for d in [32u32, 64, 128] {
            for seqs in [&[(40u32, 40u32)][..], &[(12, 90), (1, 33)][..]] {
                let ctx = Context::new().unwrap();
                let mut s = shape(seqs, 8, 2, d, Dtype::F16);
                s.mode = mode;
                let ex = Extras {
                    path: AttentionPath::PrefillCoop,
                    ..Default::default()
                };
                let out = run_case(&ctx, 0xC00 + d as u64, &s, &ex).unwrap();
                let coop = ctx.built_pipelines().iter().any(|l| l.contains("coop"));
                // The scalar twin on the same inputs (under QUANTKV_DEBUG_SKIP=128 neither
                // rotates, so only the two agree, not either with the reference).
                let twin = Extras {
                    path: AttentionPath::PrefillTiled,
                    ..Default::default()
                };
                let tw = run_case(&ctx, 0xC00 + d as u64, &s, &twin).unwrap();
                let vs_twin = out
                    .gpu
                    .iter()
                    .zip(&tw.gpu)
                    .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                    .fold(
                        0.0f64,
                        |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
                    );
                // Under the dump knobs (256 and up) the outputs are staged tiles: show where
                // the two kernels' tiles part.
                let mismatches: Vec<String> = out
                    .gpu
                    .iter()
                    .zip(&tw.gpu)
                    .enumerate()
                    .filter(|(_, (a, b))| {
                        let e = (*a - *b).abs() / (1.0 + b.abs());
                        e.is_nan() || e > 1e-2
                    })
                    .take(12)
                    .map(|(i, (a, b))| {
                        let (t, h, col) =
                            (i / (8 * d as usize), (i / d as usize) % 8, i % d as usize);
                        format!("[t{t} h{h} c{col}] {a} vs {b}")
                    })
                    .collect();
                // QUANTKV_PROBE_OUT: both outputs of every case as text, for offline analysis.
                if let Ok(dir) = std::env::var("QUANTKV_PROBE_OUT") {
                    let name = format!("{dir}/{mode:?}-d{d}-q{}", seqs.len());
                    for (suffix, v) in [("coop", &out.gpu), ("twin", &tw.gpu)] {
                        let text: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
                        std::fs::write(format!("{name}-{suffix}.txt"), text.join("\n")).unwrap();
                    }
                }
                if !mismatches.is_empty() {
                    eprintln!("  coop vs twin: {}", mismatches.join(", "));
                }
                let (hq, tokens) = (8usize, seqs.iter().map(|q| q.0 as usize).sum::<usize>());
                let mut bad_tokens = std::collections::BTreeSet::new();
                let mut bad_heads = std::collections::BTreeSet::new();
                let mut bad_cols = std::collections::BTreeSet::new();
                let (mut nbad, mut worst, mut big) = (0usize, 0.0f64, 0.0f64);
                for (i, (g, c)) in out.gpu.iter().zip(&out.cpu).enumerate() {
                    let e = (g - c).abs() / (1.0 + c.abs());
                    if e.is_nan() || e > 2e-3 {
                        nbad += 1;
                        let (t, h, col) =
                            (i / (hq * d as usize), (i / d as usize) % hq, i % d as usize);
                        bad_tokens.insert(t);
                        bad_heads.insert(h);
                        bad_cols.insert(col);
                        big = f64::max(big, g.abs());
                    }
                    worst = if e.is_nan() {
                        f64::INFINITY
                    } else {
                        worst.max(e)
                    };
                }
                eprintln!(
                    "{mode:?} d{d} {seqs:?} coop={coop}: vs twin {vs_twin:.3e}; vs reference \
                     worst {worst:.3e}, bad {nbad}/{} (tokens {:?} of {tokens}, heads {:?}, \
                     {} columns, max |gpu| {big:.3e})",
                    out.gpu.len(),
                    bad_tokens,
                    bad_heads,
                    bad_cols.len()
                );
                if nbad > 0 || !coop {
                    failed.push(format!("{mode:?} d{d} {seqs:?} coop={coop}"));
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}
