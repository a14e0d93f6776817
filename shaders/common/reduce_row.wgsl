// common/reduce_row.wgsl — combines the split-K partials of one (token row, q head) into the
// output: segment weights exp(M_g - Mx) / E are computed in parallel into workgroup memory;
// then each thread sums a slice of the segments for one group of 4 output elements, and the
// slices are added in a fixed order (deterministic). Segments that saw no allowed key
// (M = NEG) weigh 0; sinks join the denominator once, here. All threads of the workgroup call
// it (it has barriers); calls may follow each other directly.
//
// The includer provides: WG_SIZE (a power of two, 2*HEAD_DIM/4 <= WG_SIZE <= RED_WG), HEAD_DIM, HAS_SINKS, `st`,
// `ly`, `laux`, `q_sh` (>= HEAD_DIM/4 vec4s, for the mode's output transform), the output
// stores (common/out.wgsl) and `part_get(i) -> f32`, the partials as unit-stride f32s (as
// kernels/decode_common.wgsl's store_row4 and unified.wgsl with IS_SPLIT write them).

const NS_MAX: u32 = 256u;
// Most threads per workgroup (fixed sizes: naga's override processing rejects these arrays
// sized by WG_SIZE once other kernels' declarations come before them).
const RED_WG: u32 = 128u;

var<workgroup> w_sh: array<f32, NS_MAX>;
var<workgroup> red_sh: array<f32, RED_WG>;
var<workgroup> acc_sh: array<vec4<f32>, RED_WG>;

fn reduce_row(tid: u32, tok: u32, head: u32) {
    let ns = ly.num_segments;
    let first = (tok * ly.num_q_heads + head) * ns;
    let stats = ly.seg_rows * ly.num_q_heads * ns * HEAD_DIM;
    // Max over segments (and the sink).
    var mx = NEG;
    for (var g = tid; g < ns; g += WG_SIZE) {
        mx = max(mx, part_get(stats + (first + g) * 2u));
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
        let mg = part_get(stats + (first + g) * 2u);
        var w = 0.0;
        if (mg > NEG_HALF) {
            w = exp_diff(mg, gmax);
            sum += part_get(stats + (first + g) * 2u + 1u) * w;
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
    for (var g = select(ns, slice, slice < slices); g < ns; g += slices) {
        let b = (first + g) * HEAD_DIM + 4u * j;
        a += vec4<f32>(part_get(b), part_get(b + 1u), part_get(b + 2u), part_get(b + 3u)) * w_sh[g];
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
