// common/types_bf16.wgsl — model dtype bf16, two bit patterns per u32 word (element 2i in the
// low half). A value is read exactly as bitcast<f32>(bits << 16) and written rounded to nearest
// even from f32 (NaN stays NaN, spec §10.8). Arithmetic stays f32; no SHADER_F16 needed.
const MODEL_WORDS4: u32 = 2u; // u32 words holding 4 model elements

// f32 -> nearest bf16 value (ties to even), as f32; NaN and infinities pass through.
fn bf16_round(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7F800000u) == 0x7F800000u) {
        return x;
    }
    return bitcast<f32>((b + 0x7FFFu + ((b >> 16u) & 1u)) & 0xFFFF0000u);
}

fn model_round4(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(bf16_round(v.x), bf16_round(v.y), bf16_round(v.z), bf16_round(v.w));
}

// Element i (0 or 1) of a word.
fn model_elem(w: u32, i: u32) -> f32 {
    return bitcast<f32>(select(w << 16u, w & 0xFFFF0000u, i == 1u));
}

fn model_unpack4(w: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(model_elem(w.x, 0u), model_elem(w.x, 1u), model_elem(w.y, 0u), model_elem(w.y, 1u));
}

fn model_pack4(v: vec4<f32>) -> vec4<u32> {
    let r = bitcast<vec4<u32>>(model_round4(v));
    return vec4<u32>((r.x >> 16u) | (r.y & 0xFFFF0000u), (r.z >> 16u) | (r.w & 0xFFFF0000u), 0u, 0u);
}
