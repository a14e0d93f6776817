// modes/int4_per_token_head/encode.wgsl — write contract (spec §3.4): rotate (signs, WHT),
// round to the model dtype, then asymmetric min/max quantization to 0..15 with the zero point
// hidden in the scale's low 4 mantissa bits. Non-finite inputs were zeroed by the core (§10.7).
// #include "modes/shared/hadamard_x.wgsl"
// #include "common/pack.wgsl"
// #include "common/enc_direct.wgsl"
const CODE_BITS: u32 = 4u;
const HAS_SCALE_CACHE: bool = true;
const ENC_TRANSFORM: bool = true;

fn enc_transform(tid: u32) {
    for (var i = tid; i < X_LEN; i += WG_SIZE) {
        x_sh[i] = x_sh[i] * rht_sign(i); // rht_sign takes i mod the block: any row works
    }
    workgroupBarrier();
    wht_x(tid);
    round_x(tid);
}

// Before the butterflies, per element (the subgroup write entry): the signs.
fn enc_pre(x: f32, i: u32) -> f32 {
    return x * rht_sign(i);
}

fn enc_init() -> vec2<f32> {
    return vec2<f32>(-3.0e38);
}

// (max, -min) folded with max.
fn enc_stat(x: f32) -> vec2<f32> {
    return vec2<f32>(x, -x);
}

fn enc_fold(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return max(a, b);
}

fn enc_params(stat: vec2<f32>, is_v: bool) -> vec4<f32> {
    let mx = stat.x;
    let mn = -stat.y;
    let scale = max(div_rn(mx - mn, 15.0), 1e-6);
    let zp = clamp(round_half_away(div_rn(-mn, scale)), 0.0, 15.0);
    let stored = bitcast<f32>((bitcast<u32>(scale) & 0xFFFFFFF0u) | u32(zp));
    return vec4<f32>(scale, div_rn(1.0, scale), zp, stored);
}

fn enc_code(x: f32, inf: i32, p: vec4<f32>) -> u32 {
    return int_bits(clamp(round_half_away(x * p.y + p.z), 0.0, 15.0)) & 0xFu;
}
