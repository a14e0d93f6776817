// common/enc_direct.wgsl — for modes whose enc_code always gives the code itself (never
// ENC_EXACT): the write contract's exact path (kernels/write_rows.wgsl), unused. A mode with
// an exact path instead sets ENC_HAS_EXACT and gives enc_code_exact(x, params), the code of a
// cleaned finite element that enc_code answered ENC_EXACT for.
const ENC_HAS_EXACT: bool = false;

fn enc_code_exact(x: f32, p: vec4<f32>) -> u32 {
    return 0u;
}
