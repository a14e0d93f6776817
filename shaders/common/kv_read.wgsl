// common/kv_read.wgsl — the core's cache loads over read contract v2 (src/modes/mod.rs,
// `Codec`). The mode gives raw code words and per-row terms; this file turns them into loads
// of groups of four elements, with no mode name in sight:
//   k_group(row, j)  raw values of elements 4j..4j+3 of cached row `row` (codes converted by
//                    bit operations, no scale): value = (raw - zero) * scale
//   k_value4(row, j) the same four values fully dequantized (for kernels that stage a tile
//                    once and reuse it for many query rows)
//   k_tile_group(row, j) the mode's tile form of them (raw = tile * TILE_UNIT, exact in f16)
// and the same for V. `row` = (block * block_size + slot) * num_kv_heads + kv_head; rows are
// ly.k_row_words u32 words apart. Every index the kernels pass is in range by host validation
// (block table, slot and row counts are checked before encoding).

// #include "common/kv_groups.wgsl"

// The words holding group j of K row `row` (the first K_WPG components are used).
fn k_words(row: u32, j: u32) -> vec4<u32> {
    let w = row * ly.k_row_words + (j / K_GPW) * K_WPG;
    var r = vec4<u32>(k_cache[w], 0u, 0u, 0u);
    if (K_WPG >= 2u) {
        r.y = k_cache[w + 1u];
    }
    if (K_WPG == 4u) {
        r.z = k_cache[w + 2u];
        r.w = k_cache[w + 3u];
    }
    return r;
}

fn v_words(row: u32, j: u32) -> vec4<u32> {
    let w = row * ly.v_row_words + (j / V_GPW) * V_WPG;
    var r = vec4<u32>(v_cache[w], 0u, 0u, 0u);
    if (V_WPG >= 2u) {
        r.y = v_cache[w + 1u];
    }
    if (V_WPG == 4u) {
        r.z = v_cache[w + 2u];
        r.w = v_cache[w + 3u];
    }
    return r;
}

fn k_group(row: u32, j: u32) -> vec4<f32> {
    return k_raw4(k_words(row, j), j % K_GPW);
}

fn v_group(row: u32, j: u32) -> vec4<f32> {
    return v_raw4(v_words(row, j), j % V_GPW);
}

// The tile form of group j (raw = tile * TILE_UNIT; exact in f16 less the zero point over
// the unit): what the prefill kernel stages.
fn k_tile_group(row: u32, j: u32) -> vec4<f32> {
    return k_tile4(k_words(row, j), j % K_GPW);
}

fn v_tile_group(row: u32, j: u32) -> vec4<f32> {
    return v_tile4(v_words(row, j), j % V_GPW);
}

fn k_value4(row: u32, j: u32) -> vec4<f32> {
    var r = k_group(row, j);
    if (K_HAS_ZERO) {
        r -= vec4<f32>(k_row_zero(row));
    }
    return r * k_row_scale(row);
}

fn v_value4(row: u32, j: u32) -> vec4<f32> {
    var r = v_group(row, j);
    if (V_HAS_ZERO) {
        r -= vec4<f32>(v_row_zero(row));
    }
    return r * v_row_scale(row);
}
