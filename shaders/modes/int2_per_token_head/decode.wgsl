// modes/int2_per_token_head/decode.wgsl — read contract v2. INT2 Lloyd-Max codebook, four
// codes per byte (element e at bits 2*(e%16) of word e/16); the codebook is four constants,
// the row's scale is norm/(sqrt(d)*b), so centroid*scale is the rotated element divided by b
// (spec §3.5, §10.2), which makes dot(WHT q, value) = dot(q, k) with the softmax scale
// unchanged.
// #include "common/no_zero_point.wgsl"
const K_EPW: u32 = 16u;
const V_EPW: u32 = 16u;

// Centroid of each 2-bit index of `c` (the four levels are symmetric: the high bit is the
// sign, the low bit picks the magnitude).
fn int2_centroid4(c: vec4<u32>) -> vec4<f32> {
    let lo = c & vec4<u32>(1u);
    let hi = (c >> vec4<u32>(1u)) & vec4<u32>(1u);
    let mag = select(vec4<f32>(1.5104), vec4<f32>(0.4528), lo != hi);
    return select(-mag, mag, (c & vec4<u32>(2u)) != vec4<u32>(0u));
}

// Codes of group `sub` (0..3) of a word, by shifts and masks.
fn int2_raw4(w: u32, sub: u32) -> vec4<f32> {
    let q = w >> (sub * 8u);
    return int2_centroid4(vec4<u32>(q, q >> 2u, q >> 4u, q >> 6u) & vec4<u32>(3u));
}

fn k_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return int2_raw4(w.x, sub);
}

fn v_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return int2_raw4(w.x, sub);
}

fn k_row_scale(row: u32) -> f32 {
    return k_scale[row];
}

fn v_row_scale(row: u32) -> f32 {
    return v_scale[row];
}
