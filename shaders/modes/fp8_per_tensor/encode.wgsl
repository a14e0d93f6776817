// modes/fp8_per_tensor/encode.wgsl — write contract used by attention/write_rows.wgsl.
// FP8 e4m3fn per-tensor: four codes per word, one caller-given scale for K and one for V.
// The core reduces enc_stat over the cleaned row with enc_fold, asks enc_scale for the row's
// scale, and packs 32/CODE_BITS codes per word from enc_code (element order: low bits first).
// #include "common/pack.wgsl"
const CODE_BITS: u32 = 8u;
const HAS_SCALE_CACHE: bool = false;

fn enc_stat(x: f32) -> vec2<f32> {
    return vec2<f32>(0.0);
}

fn enc_fold(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return max(a, b);
}

fn enc_scale(stat: vec2<f32>, is_v: bool) -> f32 {
    return select(ly.k_tensor_scale, ly.v_tensor_scale, is_v);
}

// Code of element i of the row in x_sh / inf_sh (spec 10.7: +-Inf -> the extreme code).
fn enc_code(i: u32, scale: f32, inv: f32) -> u32 {
    if (inf_sh[i] != 0) {
        return select(0x7Eu, 0xFEu, inf_sh[i] < 0);
    }
    return e4m3_encode(div_rn(x_sh[i], scale)); // true division, then RNE with saturation
}
