//! f64 reference of `unified_attention` (spec §6) on dequantized caches.

use crate::kernels::AttentionParams;
use crate::modes::{Dtype, ModeOptions, QuantKvBackend};
use crate::step::StepInput;

/// Geometry of the caches handed to [`unified_attention`].
#[derive(Clone, Copy, Debug)]
pub struct RefGeometry {
    /// Tokens per block.
    pub block_size: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// Head size.
    pub head_size: usize,
}

/// Exact attention in f64. `q`: `[num_tokens, num_q_heads, head_size]` (already rounded to the
/// model dtype); `k_cache`/`v_cache`: dequantized rows, `[num_blocks * block_size * kv_heads *
/// head_size]`. Returns `[num_tokens_q, num_q_heads, head_size]` (rows past `cu_seqlens_q`'s end
/// are not produced).
pub fn unified_attention(
    q: &[f64],
    k_cache: &[f64],
    v_cache: &[f64],
    g: RefGeometry,
    step: &StepInput<'_>,
    p: &AttentionParams<'_>,
) -> Vec<f64> {
    let hq = p.num_q_heads as usize;
    let d = g.head_size;
    let qpk = hq / g.num_kv_heads;
    let num_seqs = step.seqused_k.len();
    let num_tokens = if num_seqs == 0 {
        0
    } else {
        step.cu_seqlens_q[num_seqs] as usize
    };
    let mut out = vec![0.0; num_tokens * hq * d];
    let window = if p.window_size.0 >= 0 {
        p.window_size.0 as i64 + 1
    } else {
        0
    };
    for s in 0..num_seqs {
        let cs = step.cu_seqlens_q[s] as usize;
        let q_len = step.cu_seqlens_q[s + 1] as usize - cs;
        let kv_len = step.seqused_k[s] as usize;
        let ctx = (kv_len - q_len) as i64;
        let in_range = |qpos: i64, key: i64| -> bool {
            let Some(mm) = step.prefix_ranges else {
                return false;
            };
            (0..mm.ranges_per_seq).any(|r| {
                let i = (s * mm.ranges_per_seq + r) * 2;
                let (a, b) = (mm.ranges[i] as i64, mm.ranges[i + 1] as i64);
                a < b && a <= qpos && qpos <= b && a <= key && key <= b
            })
        };
        for i in 0..q_len {
            let tok = cs + i;
            let qpos = ctx + i as i64;
            for h in 0..hq {
                let kvh = h / qpk;
                let qrow = &q[(tok * hq + h) * d..(tok * hq + h + 1) * d];
                let mut scores: Vec<(usize, f64)> = Vec::new();
                for key in 0..kv_len {
                    let k = key as i64;
                    let allowed =
                        (k <= qpos && (window == 0 || qpos - k < window)) || in_range(qpos, k);
                    if !allowed {
                        continue;
                    }
                    let row = physical_row(step, s, key, kvh, g);
                    let krow = &k_cache[row * d..(row + 1) * d];
                    let mut sc = qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f64>()
                        * p.softmax_scale as f64;
                    if p.softcap > 0.0 {
                        let c = p.softcap as f64;
                        sc = c * (sc / c).tanh();
                    }
                    if let Some(sl) = p.alibi_slopes {
                        let slope = sl[h] as f64;
                        if p.use_alibi_sqrt {
                            let rel = k - qpos;
                            if rel <= 0 {
                                sc -= slope * ((-rel) as f64).sqrt();
                            }
                        } else {
                            sc += slope * (k - ctx) as f64;
                        }
                    }
                    if let Some(qq) = step.qq_bias {
                        let kr = k - ctx;
                        if kr >= 0 && (kr as usize) < qq.cols {
                            sc += qq.values[i * qq.cols + kr as usize] as f64;
                        }
                    }
                    scores.push((row, sc));
                }
                if scores.is_empty() {
                    continue;
                }
                let sink = p.sinks.map(|s| s[h] as f64);
                let mx = scores
                    .iter()
                    .map(|x| x.1)
                    .fold(sink.unwrap_or(f64::NEG_INFINITY), f64::max);
                let mut denom = sink.map(|s| (s - mx).exp()).unwrap_or(0.0);
                let o = &mut out[(tok * hq + h) * d..(tok * hq + h + 1) * d];
                for &(row, sc) in &scores {
                    let w = (sc - mx).exp();
                    denom += w;
                    for (oj, vj) in o.iter_mut().zip(&v_cache[row * d..(row + 1) * d]) {
                        *oj += w * vj;
                    }
                }
                for oj in o.iter_mut() {
                    *oj /= denom;
                }
            }
        }
    }
    out
}

fn physical_row(
    step: &StepInput<'_>,
    seq: usize,
    key: usize,
    kv_head: usize,
    g: RefGeometry,
) -> usize {
    let block = step.block_table[seq * step.block_table_stride + key / g.block_size] as usize;
    super::cache::row_index(
        block,
        key % g.block_size,
        kv_head,
        g.block_size,
        g.num_kv_heads,
    )
}

/// The reference on the codes a cache holds (spec §6.5): `k_cache`/`v_cache` are the stored rows
/// dequantized by the mode's CPU codec (in the mode's basis). For rotation modes, Q is rotated
/// and rounded to the model dtype, the softmax scale adjusted, and the output rounded to the
/// model dtype and un-rotated, as the kernels do (spec §5.4).
#[allow(clippy::too_many_arguments)]
pub fn attention_on_codes(
    backend: &dyn QuantKvBackend,
    dtype: Dtype,
    q: &[f64],
    k_cache: &[f64],
    v_cache: &[f64],
    g: RefGeometry,
    step: &StepInput<'_>,
    p: &AttentionParams<'_>,
) -> Vec<f64> {
    let d = g.head_size;
    let mut q_ref = q.to_vec();
    for row in q_ref.chunks_mut(d) {
        backend.cpu_q_transform(row);
        row.iter_mut().for_each(|x| *x = dtype.round(*x));
    }
    let p_ref = AttentionParams {
        softmax_scale: (p.softmax_scale as f64 * backend.score_scale(d as u32)) as f32,
        ..*p
    };
    let mut out = unified_attention(&q_ref, k_cache, v_cache, g, step, &p_ref);
    if backend
        .codec(dtype, &ModeOptions::default())
        .transform
        .is_some()
    {
        for row in out.chunks_mut(d) {
            row.iter_mut().for_each(|x| *x = dtype.round(*x));
            backend.cpu_out_transform(row);
        }
    }
    out
}
