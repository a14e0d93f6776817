// common/types_f32.wgsl — model dtype f32, one element per u32 word.
const MODEL_WORDS4: u32 = 4u; // u32 words holding 4 model elements

fn model_round4(v: vec4<f32>) -> vec4<f32> {
    return v;
}

// The word's element (one per word; i is always 0).
fn model_elem(w: u32, i: u32) -> f32 {
    return bitcast<f32>(w);
}

fn model_unpack4(w: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(w);
}

fn model_pack4(v: vec4<f32>) -> vec4<u32> {
    return bitcast<vec4<u32>>(v);
}
