// modes/int4_per_token_head/transform.wgsl — randomized Hadamard (spec §4.2, §5.4): Q is
// rotated with RHT_fwd = WHT(x * s); scores are scaled by 1/b; the output is un-rotated with
// RHT_inv(o) / b = WHT(o) * s / b.
// #include "modes/shared/hadamard_rows.wgsl"
const HAS_TRANSFORM: bool = true;

fn q_transform(tid: u32, rows: u32) {
    sign_rows(tid, rows, 1.0);
    wht_rows(tid, rows);
}

fn out_transform(tid: u32, rows: u32) {
    wht_rows(tid, rows);
    sign_rows(tid, rows, 1.0 / f32(rot_b()));
}

fn transform_score_scale() -> f32 {
    return 1.0 / f32(rot_b());
}
