// common/types_f16.wgsl — model dtype f16, stored as two halves per u32 word (element 2i in the
// low half). Arithmetic stays f32; unpack2x16float/pack2x16float are core WGSL, so this path
// needs no SHADER_F16. pack2x16float's rounding is implementation-defined (some drivers
// truncate), so values are rounded to f16 with explicit round-to-nearest-even first: the CPU
// reference rounds that way too.
const MODEL_WORDS4: u32 = 2u; // u32 words holding 4 model elements

// f32 -> nearest f16 value (ties to even), as f32.
fn f16_round(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    let a = b & 0x7FFFFFFFu;
    // Without branches (the compiler keeps all three in registers): normal range by one
    // integer add on the bits, f16's subnormal range as a multiple of 2^-24, and beyond f16's
    // finite range (or not finite) x itself (pack2x16float decides).
    let r = (a + 0xFFFu + ((a >> 13u) & 1u)) & 0xFFFFE000u;
    let normal = bitcast<f32>((b & 0x80000000u) | r);
    let sub = round(x * 16777216.0) * (1.0 / 16777216.0);
    return select(select(normal, sub, a < 0x38800000u), x, a >= 0x477FF000u);
}

fn model_round4(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(f16_round(v.x), f16_round(v.y), f16_round(v.z), f16_round(v.w));
}

// Element i (0 or 1) of a word.
fn model_elem(w: u32, i: u32) -> f32 {
    return unpack2x16float(w)[i];
}

fn model_unpack4(w: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn model_pack4(v: vec4<f32>) -> vec4<u32> {
    let r = model_round4(v);
    return vec4<u32>(pack2x16float(r.xy), pack2x16float(r.zw), 0u, 0u);
}
