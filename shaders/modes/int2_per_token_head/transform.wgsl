// modes/int2_per_token_head/transform.wgsl — plain Walsh-Hadamard (spec §5.4): Q rotated with
// WHT, scores unscaled (1/d^1.5 is in the stored scale), output un-rotated with WHT.
// #include "modes/shared/hadamard_rows.wgsl"
const HAS_TRANSFORM: bool = true;

fn q_transform(tid: u32, rows: u32) {
    wht_rows(tid, rows);
}

fn out_transform(tid: u32, rows: u32) {
    wht_rows(tid, rows);
}

fn transform_score_scale() -> f32 {
    return 1.0;
}
