// modes/fp8_per_token_head/encode.wgsl — write contract used by kernels/write_rows.wgsl.
// FP8 e4m3fn per-(token, head): four codes per word, one f32 scale per row (absmax/448).
// The core reduces enc_stat over the cleaned row with enc_fold, asks enc_params for the row's
// scale, and packs 32/CODE_BITS codes per word from enc_code (element order: low bits first).
// #include "common/pack.wgsl"
// #include "common/enc_direct.wgsl"
// #include "common/enc_no_transform.wgsl"
const CODE_BITS: u32 = 8u;
const HAS_SCALE_CACHE: bool = true;

fn enc_init() -> vec2<f32> {
    return vec2<f32>(0.0);
}

fn enc_stat(x: f32) -> vec2<f32> {
    return vec2<f32>(abs(x), 0.0);
}

fn enc_fold(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return max(a, b);
}

// (scale, 1/scale, zero point, stored scale); divisions exact like the CPU reference.
fn enc_params(stat: vec2<f32>, is_v: bool) -> vec4<f32> {
    let scale = max(div_rn(stat.x, 448.0), 1e-6);
    return vec4<f32>(scale, div_rn(1.0, scale), 0.0, scale);
}

// Code of element i of the row in x_sh / inf_sh (spec 10.7: +-Inf -> the extreme code).
fn enc_code(x: f32, inf: i32, p: vec4<f32>) -> u32 {
    if (inf != 0) {
        return select(0x7Eu, 0xFEu, inf < 0);
    }
    // |x| <= the row's absmax, so |x * (1/scale)| exceeds 448 by rounding at most, and
    // e4m3_encode saturates there (and on infinity) by itself: no clamp.
    return e4m3_encode(x * p.y);
}
