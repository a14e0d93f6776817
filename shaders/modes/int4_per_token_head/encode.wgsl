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

// Before the butterflies, per element (the subgroup write entry): the signs. The lane's
// elements i0 .. i0 + E - 1 lie in one block and one word of the sign table (E divides 32
// and the block, i0 is a multiple of E): their sign bits come from one table read per lane,
// shifted so that bit k is element i0 + k's.
fn enc_pre_word(i0: u32) -> u32 {
    let k = i0 % rot_b();
    return RHT_SIGN_WORDS[k / 32u] >> (k % 32u);
}

// x * s exactly (s = -1 where bit k of w is set): the sign bit flipped by an exclusive or
// (k is a constant once the core's loop unrolls: two shifts and an exclusive or per element).
fn enc_pre(x: f32, k: u32, w: u32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ ((w >> k) << 31u));
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

// Round half away from zero, clamped to 0..15: for t >= 0 that is floor(t + 0.5), the same
// sum round_half_away truncates; for t < 0 both give at most 0, which the clamp makes 0. So
// no sign test and select per element.
fn enc_code(x: f32, inf: i32, p: vec4<f32>) -> u32 {
    return int_bits(clamp(floor(x * p.y + p.z + 0.5), 0.0, 15.0)) & 0xFu;
}
