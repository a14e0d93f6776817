// modes/none/decode_f32.wgsl — read contract v2 of mode `none` with an f32 cache: one element
// per word, no scale, no zero point.
// #include "common/no_zero_point.wgsl"
// #include "common/tile_raw.wgsl"
const K_EPW: u32 = 1u;
const V_EPW: u32 = 1u;

fn k_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(w);
}

fn v_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(w);
}

fn k_row_scale(row: u32) -> f32 {
    return 1.0;
}

fn v_row_scale(row: u32) -> f32 {
    return 1.0;
}
