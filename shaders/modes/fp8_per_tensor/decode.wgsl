// modes/fp8_per_tensor/decode.wgsl — read contract v2. FP8 e4m3fn per-tensor: four codes per
// word, one caller-given scale for K and one for V. Codes become f16 by bit placement
// (e4m3_raw4, common/pack.wgsl: the code's value times 2^-8), so the row scale carries 2^8.
// #include "common/no_zero_point.wgsl"
// #include "common/pack.wgsl"
// #include "common/tile_raw.wgsl"
const K_EPW: u32 = 4u;
const V_EPW: u32 = 4u;

fn k_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return e4m3_raw4(w.x);
}

fn v_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return e4m3_raw4(w.x);
}

fn k_row_scale(row: u32) -> f32 {
    return ly.k_tensor_scale * E4M3_RAW_SCALE;
}

fn v_row_scale(row: u32) -> f32 {
    return ly.v_tensor_scale * E4M3_RAW_SCALE;
}
