// modes/fp8_per_token_head/decode.wgsl — read contract. FP8 e4m3fn per-(token, head): four codes per word, one f32 scale per row (absmax/448).
// decode_k4(row, j) / decode_v4(row, j): elements 4j..4j+3 of cached row `row`, dequantized.
// #include "common/pack.wgsl"
fn decode_k4(row: u32, j: u32) -> vec4<f32> {
    return e4m3_decode4(k_cache[row * ly.k_row_words + j]) * k_scale[row];
}

fn decode_v4(row: u32, j: u32) -> vec4<f32> {
    return e4m3_decode4(v_cache[row * ly.v_row_words + j]) * v_scale[row];
}
