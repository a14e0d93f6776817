// attention/reduce.wgsl — combines split-K partials into the output. One workgroup per
// (token row, q head); threads over the head's elements, 4 at a time. Segments that saw no
// allowed key (M = NEG) are skipped; sinks join the denominator once, here.
//
// Bindings: 0 StepU, 1 LayerU, 3 laux (sinks), 4 partials (as written by unified.wgsl with
//           IS_SPLIT), 9 out (model dtype)
// Dispatch: x = num_tokens_q, y = num_q_heads.
// #include "common/uniforms.wgsl"
// #include "common/out.wgsl"

override HEAD_DIM: u32 = 128u;
override WG_SIZE: u32 = 64u;
override HAS_SINKS: bool = false;

const NEG: f32 = -1.0e30;
const NEG_HALF: f32 = -0.5e30;

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(3) var<storage, read> laux: array<f32>;
@group(0) @binding(4) var<storage, read> part: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<u32>;


@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let tok = wid.x;
    let head = wid.y;
    if (tok >= st.num_tokens_q) {
        return;
    }
    let ns = ly.num_segments;
    let first = (tok * ly.num_q_heads + head) * ns;
    let stats = ly.seg_rows * ly.num_q_heads * ns * HEAD_DIM;
    var mx = NEG;
    var any = false;
    for (var g = 0u; g < ns; g++) {
        let mg = part[stats + (first + g) * 2u];
        if (mg > NEG_HALF) {
            mx = max(mx, mg);
            any = true;
        }
    }
    var sink = NEG;
    if (HAS_SINKS) {
        sink = laux[ly.off_sinks + head];
        mx = max(mx, sink);
    }
    var denom = 0.0;
    for (var g = 0u; g < ns; g++) {
        let mg = part[stats + (first + g) * 2u];
        if (mg > NEG_HALF) {
            denom += part[stats + (first + g) * 2u + 1u] * exp(mg - mx);
        }
    }
    if (HAS_SINKS) {
        denom += exp(sink - mx);
    }
    for (var j = tid; j < HEAD_DIM / 4u; j += WG_SIZE) {
        var a = vec4<f32>(0.0);
        for (var g = 0u; g < ns; g++) {
            let mg = part[stats + (first + g) * 2u];
            if (mg > NEG_HALF) {
                let b = (first + g) * HEAD_DIM + 4u * j;
                a += vec4<f32>(part[b], part[b + 1u], part[b + 2u], part[b + 3u]) * exp(mg - mx);
            }
        }
        var v = vec4<f32>(0.0);
        if (any) {
            v = a / denom;
        }
        out_store4((tok * ly.num_q_heads + head) * HEAD_DIM + 4u * j, v);
    }
}
