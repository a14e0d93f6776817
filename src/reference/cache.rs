//! CPU model of the paged cache: rows addressed exactly as on the GPU (spec §2.2, §2.3).

/// Index of cached row (block, slot, kv_head): `(block * block_size + slot) * kv_heads + head`.
pub fn row_index(
    block: usize,
    slot: usize,
    kv_head: usize,
    block_size: usize,
    kv_heads: usize,
) -> usize {
    (block * block_size + slot) * kv_heads + kv_head
}

/// Writes `rows` (`[num_tokens, kv_heads, head_size]`) into `cache`
/// (`[num_blocks, block_size, kv_heads, head_size]`) at `slot_mapping`; negative slots are
/// skipped (mode `none`: values stored as given).
pub fn write_rows(
    cache: &mut [f64],
    rows: &[f64],
    slot_mapping: &[i32],
    kv_heads: usize,
    head_size: usize,
) {
    let per_token = kv_heads * head_size;
    for (t, &slot) in slot_mapping.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let dst = slot as usize * per_token;
        cache[dst..dst + per_token].copy_from_slice(&rows[t * per_token..(t + 1) * per_token]);
    }
}
