// common/out.wgsl — stores 4 output elements starting at element e (a multiple of 4) of the
// `out` binding: in the model dtype, or (OUT_FP8, spec §6.4) as e4m3fn codes of
// clamp(v / output_scale, ±448), four per word with element 4j in bits 0..7.
// #include "common/pack.wgsl"

override OUT_FP8: bool = false;

fn out_store4(e: u32, v: vec4<f32>) {
    if (OUT_FP8) {
        let y = clamp(v * ly.out_inv_scale, vec4<f32>(-448.0), vec4<f32>(448.0));
        out[e / 4u] = e4m3_encode(y.x) | (e4m3_encode(y.y) << 8u) | (e4m3_encode(y.z) << 16u)
            | (e4m3_encode(y.w) << 24u);
        return;
    }
    let w = e / 4u * MODEL_WORDS4;
    let words = model_pack4(v);
    out[w] = words.x;
    out[w + 1u] = words.y;
    if (MODEL_WORDS4 == 4u) {
        out[w + 2u] = words.z;
        out[w + 3u] = words.w;
    }
}
