// modes/int4_per_token_head/decode.wgsl — read contract. INT4 asymmetric, two codes per byte
// (even element in the low nibble, so element e sits at bits 4*(e%8) of word e/8); the row's
// f32 scale hides the 4-bit zero point in its low mantissa bits (spec §3.4). Values are in the
// rotated basis; the mode's transform rotates Q and un-rotates the output.
fn int4_decode4(w: u32, j: u32, s: f32) -> vec4<f32> {
    let h = w >> ((j % 2u) * 16u);
    let q = vec4<f32>(f32(h & 0xFu), f32((h >> 4u) & 0xFu), f32((h >> 8u) & 0xFu), f32((h >> 12u) & 0xFu));
    let bits = bitcast<u32>(s);
    return (q - vec4<f32>(f32(bits & 0xFu))) * bitcast<f32>(bits & 0xFFFFFFF0u);
}

fn decode_k4(row: u32, j: u32) -> vec4<f32> {
    return int4_decode4(k_cache[row * ly.k_row_words + j / 2u], j, k_scale[row]);
}

fn decode_v4(row: u32, j: u32) -> vec4<f32> {
    return int4_decode4(v_cache[row * ly.v_row_words + j / 2u], j, v_scale[row]);
}
