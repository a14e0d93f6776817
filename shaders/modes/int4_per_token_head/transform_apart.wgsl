// modes/int4_per_token_head/transform_apart.wgsl — the transform contract for a kernel whose
// query rows arrive rotated (kernels/rotate_q.wgsl ran modes/int4_per_token_head/transform.wgsl's
// q_transform on them) and whose output rows leave rotated (the split-K reduce pass un-rotates
// them): no transform in the kernel itself, the scores still scaled by 1/b (spec §5.4).
const HAS_TRANSFORM: bool = false;

fn q_transform(tid: u32, rows: u32) {}

fn out_transform(tid: u32, rows: u32) {}

fn transform_score_scale() -> f32 {
    return 1.0 / f32(HEAD_DIM & (0u - HEAD_DIM));
}
