// modes/shared/rht.wgsl — block size and sign vector of the rotation modes (spec §4). Never
// core: only rotation modes include it.
// b = largest power-of-two divisor of HEAD_DIM: rows are rotated in HEAD_DIM/b blocks of b.
// Signs: bit i of the table set <=> s[i] = -1 (spec Appendix A); block-diagonal transforms use
// the first b entries for every block.

var<private> RHT_SIGN_WORDS: array<u32, 16> = array<u32, 16>(
    0x9A8CA6F2u, 0x7F7FCA4Eu, 0x59BBC293u, 0x9480ABC7u,
    0xB55B747Eu, 0x54503BBEu, 0xCDF467B7u, 0x05DFBC5Fu,
    0xB291E3CCu, 0x57563834u, 0xE46AE225u, 0x67FC4CA6u,
    0xCFC78691u, 0x32D9DFF1u, 0x365FDB89u, 0x75625346u,
);

fn rot_b() -> u32 {
    return HEAD_DIM & (0u - HEAD_DIM);
}

fn rht_sign(i: u32) -> f32 {
    let k = i % rot_b();
    return select(1.0, -1.0, ((RHT_SIGN_WORDS[k / 32u] >> (k % 32u)) & 1u) == 1u);
}

// Signs of elements 4j..4j+3 of a row.
fn rht_sign4(j: u32) -> vec4<f32> {
    return vec4<f32>(rht_sign(4u * j), rht_sign(4u * j + 1u), rht_sign(4u * j + 2u), rht_sign(4u * j + 3u));
}
