// modes/none/decode_bf16.wgsl — read contract v2 of mode `none` with a bf16 cache: two bit
// patterns per word (element 2i in the low half), read exactly; no scale, no zero point.
// #include "common/no_zero_point.wgsl"
// #include "common/tile_raw.wgsl"
const K_EPW: u32 = 2u;
const V_EPW: u32 = 2u;

fn bf16_pair(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xFFFF0000u));
}

fn k_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return vec4<f32>(bf16_pair(w.x), bf16_pair(w.y));
}

fn v_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return vec4<f32>(bf16_pair(w.x), bf16_pair(w.y));
}

fn k_row_scale(row: u32) -> f32 {
    return 1.0;
}

fn v_row_scale(row: u32) -> f32 {
    return 1.0;
}
