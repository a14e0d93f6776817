// modes/int8_per_tensor/encode.wgsl — write contract used by kernels/write_rows.wgsl.
// INT8 per-tensor: four i8 codes per word, one caller-given scale for K and one for V.
// The core reduces enc_stat over the cleaned row with enc_fold, asks enc_params for the row's
// scale, and packs 32/CODE_BITS codes per word from enc_code (element order: low bits first).
// #include "common/pack.wgsl"
// #include "common/enc_no_transform.wgsl"
const CODE_BITS: u32 = 8u;
const HAS_SCALE_CACHE: bool = false;
const ENC_HAS_EXACT: bool = true;

fn enc_init() -> vec2<f32> {
    return vec2<f32>(0.0);
}

fn enc_stat(x: f32) -> vec2<f32> {
    return vec2<f32>(0.0);
}

fn enc_fold(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return max(a, b);
}

// (scale, 1/scale, zero point, stored scale): the caller's per-tensor scale.
fn enc_params(stat: vec2<f32>, is_v: bool) -> vec4<f32> {
    let scale = select(ly.k_tensor_scale, ly.v_tensor_scale, is_v);
    return vec4<f32>(scale, div_rn(1.0, scale), 0.0, scale);
}

// Code of element i of the row in x_sh / inf_sh (spec 10.7: +-Inf -> the extreme code).
fn enc_code(x: f32, inf: i32, p: vec4<f32>) -> u32 {
    if (inf != 0) {
        return u32(127 * inf) & 0xFFu;
    }
    // Round half to even of the true quotient rounded to f32 (spec 10.1), clamped. As in
    // fp8_per_tensor: round(x * (1/scale)) is the quotient's code unless a tie n + 0.5 lies
    // within twice QUOT_BAND of the product; then, or for a quotient near zero, the exact
    // division decides. With a power-of-two scale (1.0 by default) the product is the quotient.
    let q = x * p.y;
    let a = abs(q);
    let pow2 = !enc_may_tie(p);
    // Otherwise the core's one copy of the exact path. The tests are combined without
    // short-circuits (`&`, `|`): one select, no branch.
    let near = abs(a - floor(a) - 0.5) <= a * (2.0 * QUOT_BAND);
    let ok = (a > 1e-30) & (pow2 | !near);
    return select(ENC_EXACT, int_bits(clamp(round(q), -127.0, 127.0)) & 0xFFu, ok);
}

// Whether an element's product can lie near a tie of its quotient's code: not with a
// power-of-two scale (1.0 by default), whose product is the quotient itself (decided once
// per row; the core then packs with enc_code_no_tie).
fn enc_may_tie(p: vec4<f32>) -> bool {
    return (bitcast<u32>(p.x) & 0x7FFFFFu) != 0u;
}

// enc_code of a finite element where enc_may_tie is false: the product's code, or the exact
// path for a quotient near zero.
fn enc_code_no_tie(x: f32, p: vec4<f32>) -> u32 {
    let q = x * p.y;
    return select(ENC_EXACT, int_bits(clamp(round(q), -127.0, 127.0)) & 0xFFu, abs(q) > 1e-30);
}

// The code of the exact quotient (an element enc_code answered ENC_EXACT for).
fn enc_code_exact(x: f32, p: vec4<f32>) -> u32 {
    return int_bits(clamp(round(div_rn(x, p.x)), -127.0, 127.0)) & 0xFFu;
}
