// common/types_f16.wgsl — model dtype f16, stored as two halves per u32 word (element 2i in the
// low half). Arithmetic stays f32; unpack2x16float/pack2x16float are core WGSL, so this path
// needs no SHADER_F16.
const MODEL_WORDS4: u32 = 2u; // u32 words holding 4 model elements

fn model_unpack4(w: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn model_pack4(v: vec4<f32>) -> vec4<u32> {
    return vec4<u32>(pack2x16float(v.xy), pack2x16float(v.zw), 0u, 0u);
}
