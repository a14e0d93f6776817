// modes/none/decode_f16.wgsl — read contract v2 of mode `none` with an f16 cache: two halves
// per word (element 2i in the low half), no scale, no zero point.
// #include "common/no_zero_point.wgsl"
// #include "common/tile_raw.wgsl"
const K_EPW: u32 = 2u;
const V_EPW: u32 = 2u;

fn k_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn v_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn k_row_scale(row: u32) -> f32 {
    return 1.0;
}

fn v_row_scale(row: u32) -> f32 {
    return 1.0;
}
