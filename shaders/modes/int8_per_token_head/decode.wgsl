// modes/int8_per_token_head/decode.wgsl — read contract. INT8 per-(token, head): four i8 codes per word, one f32 scale per row (absmax/127).
// decode_k4(row, j) / decode_v4(row, j): elements 4j..4j+3 of cached row `row`, dequantized.
// #include "common/pack.wgsl"
fn decode_k4(row: u32, j: u32) -> vec4<f32> {
    return unpack_i8x4(k_cache[row * ly.k_row_words + j]) * k_scale[row];
}

fn decode_v4(row: u32, j: u32) -> vec4<f32> {
    return unpack_i8x4(v_cache[row * ly.v_row_words + j]) * v_scale[row];
}
