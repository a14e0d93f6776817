// modes/int2_per_token_head/decode.wgsl — read contract. INT2 Lloyd-Max codebook, four codes
// per byte (element e at bits 2*(e%16) of word e/16); the row's scale is norm/(sqrt(d)*b), so
// the value c[idx]*scale is the rotated element divided by b (spec §3.5, §10.2), which makes
// dot(WHT q, value) = dot(q, k) with the softmax scale unchanged.
fn int2_centroid(q: u32) -> f32 {
    return select(select(-1.5104, -0.4528, q == 1u), select(0.4528, 1.5104, q == 3u), q >= 2u);
}

fn int2_decode4(w: u32, j: u32, s: f32) -> vec4<f32> {
    let q = w >> ((j % 4u) * 8u);
    return vec4<f32>(int2_centroid(q & 3u), int2_centroid((q >> 2u) & 3u),
                     int2_centroid((q >> 4u) & 3u), int2_centroid((q >> 6u) & 3u)) * s;
}

fn decode_k4(row: u32, j: u32) -> vec4<f32> {
    return int2_decode4(k_cache[row * ly.k_row_words + j / 4u], j, k_scale[row]);
}

fn decode_v4(row: u32, j: u32) -> vec4<f32> {
    return int2_decode4(v_cache[row * ly.v_row_words + j / 4u], j, v_scale[row]);
}
