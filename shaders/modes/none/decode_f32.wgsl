// modes/none/decode_f32.wgsl — read contract of mode `none` with an f32 cache.
// decode_k4(row, j) / decode_v4(row, j): elements 4j..4j+3 of cached row `row`.
fn decode_k4(row: u32, j: u32) -> vec4<f32> {
    let w = row * ly.k_row_words + 4u * j;
    return bitcast<vec4<f32>>(vec4<u32>(k_cache[w], k_cache[w + 1u], k_cache[w + 2u], k_cache[w + 3u]));
}

fn decode_v4(row: u32, j: u32) -> vec4<f32> {
    let w = row * ly.v_row_words + 4u * j;
    return bitcast<vec4<f32>>(vec4<u32>(v_cache[w], v_cache[w + 1u], v_cache[w + 2u], v_cache[w + 3u]));
}
