// common/enc_no_transform.wgsl — the identity transform of the write contract
// (kernels/write_rows.wgsl), for modes that quantize rows in the model's own basis. A rotating
// mode provides the same names:
//   ENC_TRANSFORM        whether the core transforms rows before their statistic
//   enc_transform(tid)   in place on x_sh (all rows of the workgroup), all threads, may hold
//                        barriers (the portable entry)
//   enc_block()          the transform, per element (the subgroup entry): enc_pre(x, k, w)
//   enc_pre_word(i0)     of element i0 + k of a row, where w = enc_pre_word(i0) is the mode's
//   enc_pre(x, k, w)     word for a lane's E elements i0 .. i0 + E - 1 (i0 a multiple of E;
//   enc_post(x)          E divides 32 and the block), then the unnormalised Walsh-Hadamard
//                        transform over blocks of enc_block() elements (spec §4.1 order), then
//                        enc_post(x)
const ENC_TRANSFORM: bool = false;

fn enc_transform(tid: u32) {}

fn enc_block() -> u32 {
    return 1u;
}

fn enc_pre_word(i0: u32) -> u32 {
    return 0u;
}

fn enc_pre(x: f32, k: u32, w: u32) -> f32 {
    return x;
}

fn enc_post(x: f32) -> f32 {
    return x;
}
