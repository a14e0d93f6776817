// modes/int8_per_tensor/decode.wgsl — read contract. INT8 per-tensor: four i8 codes per word, one caller-given scale for K and one for V.
// decode_k4(row, j) / decode_v4(row, j): elements 4j..4j+3 of cached row `row`, dequantized.
// #include "common/pack.wgsl"
fn decode_k4(row: u32, j: u32) -> vec4<f32> {
    return unpack_i8x4(k_cache[row * ly.k_row_words + j]) * ly.k_tensor_scale;
}

fn decode_v4(row: u32, j: u32) -> vec4<f32> {
    return unpack_i8x4(v_cache[row * ly.v_row_words + j]) * ly.v_tensor_scale;
}
