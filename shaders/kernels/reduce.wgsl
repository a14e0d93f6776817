// kernels/reduce.wgsl — combines split-K partials into the output (common/reduce_row.wgsl),
// one workgroup per (token row, q head).
//
// Bindings: 0 StepU, 1 LayerU, 3 laux (sinks), 4 partials (as written by unified.wgsl with
//           IS_SPLIT), 9 out
// Overrides: HEAD_DIM, WG_SIZE (a power of two >= 2*HEAD_DIM/4), HAS_SINKS, OUT_FP8.
// Dispatch: x = num_tokens_q, y = num_q_heads.
// #include "common/uniforms.wgsl"
// #include "common/out.wgsl"
// #include "common/softmax.wgsl"

override HEAD_DIM: u32 = 128u;
override WG_SIZE: u32 = 128u;
override HAS_SINKS: bool = false;
// #include "common/reduce_row.wgsl"

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(3) var<storage, read> laux: array<f32>;
@group(0) @binding(4) var<storage, read> part: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<u32>;

override Q_SH_LEN: u32 = 32u; // HEAD_DIM / 4: one output row, staged for the mode's transform
var<workgroup> q_sh: array<vec4<f32>, Q_SH_LEN>;

fn part_get(i: u32) -> f32 {
    return part[i];
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    if (wid.x >= st.num_tokens_q) {
        return;
    }
    reduce_row(tid, wid.x, wid.y);
}
