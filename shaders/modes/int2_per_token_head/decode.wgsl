// modes/int2_per_token_head/decode.wgsl — read contract v2. INT2 Lloyd-Max codebook, four
// codes per byte (element e at bits 2*(e%16) of word e/16); the codebook is read as a cubic (below),
// the row's scale is norm/(sqrt(d)*b), so centroid*scale is the rotated element divided by b
// (spec §3.5, §10.2), which makes dot(WHT q, value) = dot(q, k) with the softmax scale
// unchanged.
// #include "common/no_zero_point.wgsl"
const K_EPW: u32 = 16u;
const V_EPW: u32 = 16u;

// The codebook {-1.5104, -0.4528, 0.4528, 1.5104} of indices c = 0..3 as the odd cubic
// t (INT2_B + INT2_A t^2) of t = c - 1.5 (= ±0.5, ±1.5; the cubic through the four centroids):
// floating-point multiply-adds only, no compare or select. t comes exactly from the bits of
// 1 + c/4 (c placed in bits 21..22 of 1.0f): t = 4 (1 + c/4) - 5.5. The coefficients are
// 0.152 / 3 and 0.9056 - 0.152 / 12 nudged by a few f32 steps so that the cubic gives the f32
// centroids exactly, whether or not the driver fuses the inner multiply-add.
const INT2_A: f32 = 0.050666638;
const INT2_B: f32 = 0.89293337;

// Codes of group `sub` (0..3) of a word, by shifts and masks.
fn int2_raw4(w: u32, sub: u32) -> vec4<f32> {
    let q = w >> (sub * 8u);
    let c = vec4<u32>(q << 21u, q << 19u, q << 17u, q << 15u) & vec4<u32>(0x600000u);
    let t = bitcast<vec4<f32>>(c | vec4<u32>(0x3F800000u)) * 4.0 - vec4<f32>(5.5);
    return t * (vec4<f32>(INT2_B) + vec4<f32>(INT2_A) * (t * t));
}

// The tile form (the prefill kernel's f16 tiles): the centroids as the integers
// {-944, -283, 283, 944} in units of TILE_UNIT = 1.5104 / 944. 283 / 944 is the ratio of the
// two centroid magnitudes to 2.5e-8 (finer than an f32 step), so these tiles hold the codebook
// to f32 precision in one f16 value each (the hi + lo pairs they replace held it to 2^-22).
// The integer of index c is 661 c - 95 (c >> 1) - 944 (-944, -283, 283, 944 for c = 0..3),
// from the codes by integer shifts, masks and multiply-adds (no cubic, no rounding).
const TILE_UNIT: f32 = 1.5104 / 944.0;

fn int2_tile4(w: u32, sub: u32) -> vec4<f32> {
    let q = w >> (sub * 8u);
    let c = vec4<u32>(q, q >> 2u, q >> 4u, q >> 6u) & vec4<u32>(3u);
    return vec4<f32>(c * 661u - (c >> vec4<u32>(1u)) * 95u) - vec4<f32>(944.0);
}

fn k_tile4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return int2_tile4(w.x, sub);
}

fn v_tile4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return int2_tile4(w.x, sub);
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
