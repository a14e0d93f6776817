// common/kv_groups.wgsl — how groups of four cached elements sit in u32 words, from the mode's
// K_EPW / V_EPW (read contract v2): words per group (1 for codes of <= 8 bits) and groups per
// word. Used by common/kv_read.wgsl (u32 loads); the streaming decode rung's loads come from a
// host-generated prelude instead (src/kernels/attention.rs, stream_prelude).

const K_WPG: u32 = max(1u, 4u / K_EPW);
const K_GPW: u32 = max(1u, K_EPW / 4u);
const V_WPG: u32 = max(1u, 4u / V_EPW);
const V_GPW: u32 = max(1u, V_EPW / 4u);
