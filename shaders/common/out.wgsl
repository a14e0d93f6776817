// common/out.wgsl — stores 4 output elements starting at element e (a multiple of 4) of the
// `out` binding: in the model dtype, or (OUT_FP8, spec §6.4) as e4m3fn codes of
// clamp(v / output_scale, ±448), four per word with element 4j in bits 0..7.
// #include "common/pack.wgsl"

override OUT_FP8: bool = false;

// Element index of vec4 column `col` of (token, head) in the q view / the out view (offsets and
// strides from the layer uniform; host-validated to stay inside their bindings).
fn q_elem(tok: u32, head: u32, col: u32) -> u32 {
    return ly.q_off + tok * ly.q_tok + head * ly.q_head + 4u * col;
}

fn out_elem(tok: u32, head: u32, col: u32) -> u32 {
    return ly.o_off + tok * ly.o_tok + head * ly.o_head + 4u * col;
}

// Split-K partials (f32 bits in `out`): 4 accumulator elements at word b, and a row's
// running maximum and denominator at word sb.
fn partial_store4(b: u32, v: vec4<f32>) {
    out[b] = bitcast<u32>(v.x);
    out[b + 1u] = bitcast<u32>(v.y);
    out[b + 2u] = bitcast<u32>(v.z);
    out[b + 3u] = bitcast<u32>(v.w);
}

fn partial_store_ml(sb: u32, m: f32, l: f32) {
    out[sb] = bitcast<u32>(m);
    out[sb + 1u] = bitcast<u32>(l);
}

fn out_store4(e: u32, v: vec4<f32>) {
    if (OUT_FP8) {
        let y = clamp(v * ly.out_inv_scale, vec4<f32>(-448.0), vec4<f32>(448.0));
        out[e / 4u] = e4m3_encode(y.x) | (e4m3_encode(y.y) << 8u) | (e4m3_encode(y.z) << 16u)
            | (e4m3_encode(y.w) << 24u);
        return;
    }
    let w = e / 4u * MODEL_WORDS4;
    let words = model_pack4(v);
    out[w] = words.x;
    out[w + 1u] = words.y;
    if (MODEL_WORDS4 == 4u) {
        out[w + 2u] = words.z;
        out[w + 3u] = words.w;
    }
}
