// modes/int8_per_token_head/encode.wgsl — write contract used by kernels/write_rows.wgsl.
// INT8 per-(token, head): four i8 codes per word, one f32 scale per row (absmax/127).
// The core reduces enc_stat over the cleaned row with enc_fold, asks enc_params for the row's
// scale, and packs 32/CODE_BITS codes per word from enc_code (element order: low bits first).
// #include "common/pack.wgsl"
// #include "common/enc_direct.wgsl"
// #include "common/enc_no_transform.wgsl"
// The mode's option (Int8Rounding, spec §3.3): 0 half away from zero (the default, the
// released vLLM kernel), 1 truncate (triton_quant_kv), 2 half to even.
override INT8_ROUNDING: u32 = 0u;
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
    let scale = max(div_rn(stat.x, 127.0), 1e-6);
    return vec4<f32>(scale, div_rn(1.0, scale), 0.0, scale);
}

// Code of element i of the row in x_sh / inf_sh (spec 10.7: +-Inf -> the extreme code).
fn enc_code(x: f32, inf: i32, p: vec4<f32>) -> u32 {
    if (inf != 0) {
        return u32(127 * inf) & 0xFFu;
    }
    let y = clamp(x * p.y, -128.0, 127.0);
    var n: f32;
    if (INT8_ROUNDING == 2u) {
        n = clamp(round(y), -127.0, 127.0); // WGSL round() ties to even
    } else if (INT8_ROUNDING == 1u) {
        n = trunc(y); // truncation toward zero, as triton_quant_kv's store
    } else {
        // half away from zero, like the CPU rha (y is within [-128, 127], so the result is)
        n = round_half_away(y);
    }
    return int_bits(n) & 0xFFu;
}
