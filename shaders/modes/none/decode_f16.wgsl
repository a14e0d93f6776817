// modes/none/decode_f16.wgsl — read contract of mode `none` with an f16 cache.
// decode_k4(row, j) / decode_v4(row, j): elements 4j..4j+3 of cached row `row`
// (row = (block * block_size + slot) * num_kv_heads + kv_head), as f32 values.
fn decode_k4(row: u32, j: u32) -> vec4<f32> {
    let w = row * ly.k_row_words + 2u * j;
    return vec4<f32>(unpack2x16float(k_cache[w]), unpack2x16float(k_cache[w + 1u]));
}

fn decode_v4(row: u32, j: u32) -> vec4<f32> {
    let w = row * ly.v_row_words + 2u * j;
    return vec4<f32>(unpack2x16float(v_cache[w]), unpack2x16float(v_cache[w + 1u]));
}
