// modes/int4_per_token_head/decode.wgsl — read contract v2. INT4 asymmetric, two codes per
// byte (even element in the low nibble, so element e sits at bits 4*(e%8) of word e/8); the
// row's f32 scale hides the 4-bit zero point in its low mantissa bits (spec §3.4): value =
// (code - zero) * scale. Values are in the rotated basis; the mode's transform rotates Q and
// un-rotates the output.
// #include "common/tile_raw.wgsl"
const K_EPW: u32 = 8u;
const V_EPW: u32 = 8u;
const K_HAS_ZERO: bool = true;
const V_HAS_ZERO: bool = true;

// Codes of group `sub` (0 or 1) of a word, by shifts and masks.
fn int4_raw4(w: u32, sub: u32) -> vec4<f32> {
    let h = w >> (sub * 16u);
    return vec4<f32>(vec4<u32>(h, h >> 4u, h >> 8u, h >> 12u) & vec4<u32>(0xFu));
}

fn k_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return int4_raw4(w.x, sub);
}

fn v_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return int4_raw4(w.x, sub);
}

fn k_row_scale(row: u32) -> f32 {
    return bitcast<f32>(bitcast<u32>(k_scale[row]) & 0xFFFFFFF0u);
}

fn v_row_scale(row: u32) -> f32 {
    return bitcast<f32>(bitcast<u32>(v_scale[row]) & 0xFFFFFFF0u);
}

fn k_row_zero(row: u32) -> f32 {
    return f32(bitcast<u32>(k_scale[row]) & 0xFu);
}

fn v_row_zero(row: u32) -> f32 {
    return f32(bitcast<u32>(v_scale[row]) & 0xFu);
}
