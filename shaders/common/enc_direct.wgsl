// common/enc_direct.wgsl — for modes whose enc_code always gives the code itself (never
// ENC_EXACT): the write contract's exact path (kernels/write_rows.wgsl), unused. A mode with
// an exact path instead sets ENC_HAS_EXACT and gives enc_code_exact(x, params), the code of a
// cleaned finite element that enc_code answered ENC_EXACT for, enc_may_tie(params) (false
// where no element of the row can be near a rounding tie, e.g. a power-of-two scale, decided
// once per row) and enc_code_no_tie(x, params), the code of a finite element of such a row
// (ENC_EXACT only where the exact path is still needed, e.g. a quotient near zero).
const ENC_HAS_EXACT: bool = false;

fn enc_code_exact(x: f32, p: vec4<f32>) -> u32 {
    return 0u;
}

fn enc_may_tie(p: vec4<f32>) -> bool {
    return false;
}

fn enc_code_no_tie(x: f32, p: vec4<f32>) -> u32 {
    return enc_code(x, 0, p);
}
