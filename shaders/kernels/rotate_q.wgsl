// kernels/rotate_q.wgsl — the mode's query transform as a pass of its own, ahead of the
// prefill kernel, which is built without the transform (its transform_apart contract; see
// `coop_admits` in src/kernels/plan.rs for why): 16 (token, head) query rows per workgroup are
// staged in q_sh, transformed (q_transform, spec §5.4), rounded to the model dtype and written
// to `out`, a scratch view of the same shape, which the prefill kernel then reads as its q.
// The output rows go through the split-K reduce pass, which un-rotates them.
//
// Bindings: 0 StepU, 1 LayerU (q_*: the caller's q view; o_*: the scratch view), 4 q, 9 out
// Overrides: HEAD_DIM, WG_SIZE. Dispatch: ceil(num_tokens_q * num_q_heads / 16) workgroups,
// as (x, y) with x <= 65535.
// #include "common/uniforms.wgsl"
// #include "common/out.wgsl"

override HEAD_DIM: u32 = 128u;
override WG_SIZE: u32 = 64u;
override Q_SH_LEN: u32 = 512u; // 16 * HEAD_DIM / 4

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(4) var<storage, read> q: array<u32>;
@group(0) @binding(9) var<storage, read_write> out: array<u32>;

var<workgroup> q_sh: array<vec4<f32>, Q_SH_LEN>;

fn q_read4(e: u32) -> vec4<f32> {
    let w = e / 4u * MODEL_WORDS4;
    var words = vec4<u32>(q[w], q[w + 1u], 0u, 0u);
    if (MODEL_WORDS4 == 4u) {
        words.z = q[w + 2u];
        words.w = q[w + 3u];
    }
    return model_unpack4(words);
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let d4 = HEAD_DIM / 4u;
    let hq = ly.num_q_heads;
    let rows = st.num_tokens_q * hq;
    let r0 = (wid.y * nwg.x + wid.x) * 16u;
    for (var e = tid; e < 16u * d4; e += WG_SIZE) {
        let r = r0 + e / d4;
        var v = vec4<f32>(0.0);
        if (r < rows) {
            v = q_read4(q_elem(r / hq, r % hq, e % d4));
        }
        q_sh[e] = v;
    }
    workgroupBarrier();
    q_transform(tid, 16u);
    workgroupBarrier();
    for (var e = tid; e < 16u * d4; e += WG_SIZE) {
        let r = r0 + e / d4;
        if (r < rows) {
            out_store4(out_elem(r / hq, r % hq, e % d4), model_round4(q_sh[e]));
        }
    }
}
