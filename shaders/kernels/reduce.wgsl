// kernels/reduce.wgsl — combines split-K partials into the output. One workgroup per
// (token row, q head). Every segment's (M, E) is loaded once, in parallel, into workgroup
// memory, and the weights exp(M_g - Mx) computed from there; then each thread sums a slice of
// the segments for one group of 4 output elements, four segments' loads in flight at a time
// (the sum's order is the slice's segment order whatever the unrolling), and the slices are
// added in a fixed order (deterministic). Segments that saw no allowed key (M = NEG) weigh 0;
// sinks join the denominator once, here.
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

const NS_MAX: u32 = 256u;

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(3) var<storage, read> laux: array<f32>;
@group(0) @binding(4) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> out: array<u32>;

var<workgroup> w_sh: array<f32, NS_MAX>;
var<workgroup> m_sh: array<f32, NS_MAX>;
var<workgroup> red_sh: array<f32, WG_SIZE>;
var<workgroup> acc_sh: array<vec4<f32>, WG_SIZE>;
override Q_SH_LEN: u32 = 32u; // HEAD_DIM / 4: one output row, staged for the mode's transform
var<workgroup> q_sh: array<vec4<f32>, Q_SH_LEN>;

// Output group j (elements 4j .. 4j + 3) of partial row `slot`: one 16-byte load.
fn part4(slot: u32, j: u32) -> vec4<f32> {
    return part[slot * (HEAD_DIM / 4u) + j];
}

// The (M, E) pair at float index w (even: the first or second half of a 16-byte word; the
// host rounds the buffer up to whole words).
fn part_ml(w: u32) -> vec2<f32> {
    let x = part[w / 4u];
    return select(x.xy, x.zw, (w & 2u) != 0u);
}

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
    // Max over segments (and the sink).
    var mx = NEG;
    for (var g = tid; g < ns; g += WG_SIZE) {
        let ml = part_ml(stats + (first + g) * 2u);
        let mg = ml.x;
        m_sh[g] = mg;
        w_sh[g] = ml.y; // E_g until the weights replace it
        mx = max(mx, mg);
    }
    red_sh[tid] = mx;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red_sh[tid] = max(red_sh[tid], red_sh[tid + s]);
        }
        workgroupBarrier();
    }
    let seg_max = red_sh[0];
    let any = seg_max > NEG_HALF;
    var gmax = seg_max;
    var sink = NEG;
    if (HAS_SINKS) {
        sink = real_score(laux[ly.off_sinks + head]);
        gmax = max(gmax, sink);
    }
    workgroupBarrier();
    // Unnormalised weights and their sum.
    var sum = 0.0;
    for (var g = tid; g < ns; g += WG_SIZE) {
        let mg = m_sh[g];
        var w = 0.0;
        if (mg > NEG_HALF) {
            w = exp_diff(mg, gmax);
            sum += w_sh[g] * w;
        }
        w_sh[g] = w;
    }
    red_sh[tid] = sum;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red_sh[tid] = red_sh[tid] + red_sh[tid + s];
        }
        workgroupBarrier();
    }
    var denom = red_sh[0];
    if (HAS_SINKS) {
        denom += exp_diff(sink, gmax);
    }
    // Thread (slice, j): output group j, segments slice, slice + slices, ...
    let d4 = HEAD_DIM / 4u;
    let slices = WG_SIZE / d4;
    let j = tid % d4;
    let slice = tid / d4;
    var a = vec4<f32>(0.0);
    var g = select(ns, slice, slice < slices);
    // Four segments per round: their loads are independent, so all four are in flight
    // before the first is added.
    for (; g + 3u * slices < ns; g += 4u * slices) {
        let x0 = part4(first + g, j);
        let x1 = part4(first + g + slices, j);
        let x2 = part4(first + g + 2u * slices, j);
        let x3 = part4(first + g + 3u * slices, j);
        a += x0 * w_sh[g];
        a += x1 * w_sh[g + slices];
        a += x2 * w_sh[g + 2u * slices];
        a += x3 * w_sh[g + 3u * slices];
    }
    for (; g < ns; g += slices) {
        a += part4(first + g, j) * w_sh[g];
    }
    acc_sh[tid] = a;
    workgroupBarrier();
    var v = vec4<f32>(0.0);
    if (slice == 0u) {
        var total = vec4<f32>(0.0);
        for (var s = 0u; s < slices; s++) {
            total += acc_sh[s * d4 + j];
        }
        if (any) {
            v = total / denom;
        }
    }
    if (HAS_TRANSFORM) {
        // The mode's output transform (spec §5.4: round to the model dtype, then un-rotate).
        if (slice == 0u) {
            q_sh[j] = model_round4(v);
        }
        workgroupBarrier();
        out_transform(tid, 1u);
        workgroupBarrier();
        v = q_sh[j];
    }
    if (slice == 0u) {
        out_store4(out_elem(tok, head, j), v);
    }
}
