// common/enc_no_transform.wgsl — the identity transform of the write contract
// (kernels/write_rows.wgsl), for modes that quantize rows in the model's own basis. A rotating
// mode provides the same names:
//   ENC_TRANSFORM        whether the core transforms rows before their statistic
//   enc_transform(tid)   in place on x_sh (all rows of the workgroup), all threads, may hold
//                        barriers (the portable entry)
//   enc_block()          the transform, per element (the subgroup entry): enc_pre(x, i) of
//   enc_pre(x, i)        element i of a row, the unnormalised Walsh-Hadamard transform over
//   enc_post(x)          blocks of enc_block() elements (spec §4.1 order), then enc_post(x)
const ENC_TRANSFORM: bool = false;

fn enc_transform(tid: u32) {}

fn enc_block() -> u32 {
    return 1u;
}

fn enc_pre(x: f32, i: u32) -> f32 {
    return x;
}

fn enc_post(x: f32) -> f32 {
    return x;
}
