// common/no_transform.wgsl — the identity query/output transform contract, for modes that store
// K/V in the model's own basis. A rotating mode provides the same names:
//   HAS_TRANSFORM              whether the core calls the two functions below
//   q_transform(tid, rows)     in place on q_sh rows 0..rows (HEAD_DIM/4 vec4 each), all
//                              threads, may hold barriers
//   out_transform(tid, rows)   in place on the output rows staged in q_sh, all threads
//   transform_score_scale()    multiplies softmax_scale (e.g. 1/b for an unnormalised rotation)
const HAS_TRANSFORM: bool = false;

fn q_transform(tid: u32, rows: u32) {}

fn out_transform(tid: u32, rows: u32) {}

fn transform_score_scale() -> f32 {
    return 1.0;
}
