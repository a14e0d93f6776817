// modes/fp8_per_token_head/decode.wgsl — read contract v2. FP8 e4m3fn per-(token, head): four
// codes per word, one f32 scale per row (absmax/448). Codes become f16 by bit placement
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
    return k_scale[row] * E4M3_RAW_SCALE;
}

fn v_row_scale(row: u32) -> f32 {
    return v_scale[row] * E4M3_RAW_SCALE;
}
