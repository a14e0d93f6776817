//! Test data shaped like real LLM keys and values (spec §11). Uniform random inputs hide the
//! failure modes that matter; this adds the outlier channels and the attention-sink token.

/// The i-th outlier channel of a head of size `d` (fixed, so runs are reproducible).
pub fn outlier_channel(i: usize, d: usize) -> usize {
    (i * 37 + 5) % d
}

/// Shapes N(0, 1) rows like real keys, values and queries (spec §11), in place:
/// in every K row (`[tokens, kv_heads, d]` flattened) four channels ×10 and one ×30, in every V
/// row one channel ×10, the K rows of every token listed in `sink_tokens` (indices into the
/// token axis) ×20, and in every Q row (`[_, q_heads, d]`) the same five channels ×3.
pub fn shape_like_llm(
    keys: &mut [f64],
    values: &mut [f64],
    q: &mut [f64],
    d: usize,
    kv_heads: usize,
    sink_tokens: &[usize],
) {
    for (r, row) in keys.chunks_mut(d).enumerate() {
        for i in 0..4 {
            row[outlier_channel(i, d)] *= 10.0;
        }
        row[outlier_channel(4, d)] *= 30.0;
        if sink_tokens.contains(&(r / kv_heads)) {
            row.iter_mut().for_each(|x| *x *= 20.0);
        }
    }
    for row in values.chunks_mut(d) {
        row[outlier_channel(5, d)] *= 10.0;
    }
    for row in q.chunks_mut(d) {
        for i in 0..5 {
            row[outlier_channel(i, d)] *= 3.0;
        }
    }
}
