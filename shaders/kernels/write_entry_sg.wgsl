// kernels/write_entry_sg.wgsl — the subgroup entry of the quantizing write kernel
// (kernels/write_rows.wgsl), for rows of a power-of-two lane count that the smallest subgroup
// holds (the host checks; WG_SIZE is a multiple of the largest subgroup): row j is the
// subgroup's si / lanes-th, so a row's lanes are consecutive invocations of one subgroup
// whatever the driver's mapping of invocations to subgroups. No barrier, no workgroup memory:
//   * transform (ENC_WHT modes): enc_pre per element (with the lane's enc_pre_word), the
//     Walsh-Hadamard butterflies of distance h < E inside the lane, those of distance h >= E
//     with the lane h / E away (subgroupShuffleXor: the lower lane keeps a + b, the upper
//     a - b, the same operations in the same order as spec §4.1, so bit for bit the
//     reference), then enc_post;
//   * statistic: folded by shuffles over the row's lanes, then every lane takes the row's
//     first lane's result (one set of bits for the whole row).
// #include "kernels/write_rows.wgsl"

// log2(E).
const E_LOG2: u32 = select(select(3u, 4u, E == 16u), 5u, E == 32u);

// The mode's enc_transform names x_sh; this entry never calls it (the host sets X_LEN = 1).
var<workgroup> x_sh: array<f32, X_LEN>;

fn transform_row(j: u32, lane: u32) {
    if (ENC_TRANSFORM) {
        let b = enc_block();
        let pw = enc_pre_word(lane * E);
        for (var k = 0u; k < E; k++) {
            x[k] = enc_pre(x[k], k, pw);
        }
        // In-lane stages: h = 1, 2, 4 (, 8, 16) (the block is the lowest set bit of the head
        // size, which E divides: at least E). Counted loops of constant trip count, so every
        // index is a constant once the driver unrolls them and the lane's elements stay in
        // registers.
        for (var s = 0u; s < E_LOG2; s++) {
            let h = 1u << s;
            for (var k = 0u; k < E; k++) {
                if ((k & h) == 0u) {
                    let lo = x[k];
                    let hi = x[k + h];
                    x[k] = lo + hi;
                    x[k + h] = lo - hi;
                }
            }
        }
        // Across lanes: the lower lane keeps x + o, the upper o - x, both as fma(x, ±1, o):
        // x * ±1 is exact, so fused or not it is the one rounding of the sum or difference
        // (the same bits as the add or subtract; one operation per element, not three).
        for (var h = E; h < b; h <<= 1u) {
            let d = h / E;
            let sgn = select(1.0, -1.0, (lane & d) != 0u);
            for (var k = 0u; k < E; k++) {
                let o = subgroupShuffleXor(x[k], d);
                x[k] = fma(x[k], sgn, o);
            }
        }
        for (var k = 0u; k < E; k++) {
            x[k] = enc_post(x[k]);
        }
    }
}

var<private> row_first: u32; // this lane's row's first subgroup invocation

fn row_stat(acc: vec2<f32>, j: u32, lane: u32) -> vec2<f32> {
    var s = acc;
    for (var d = 1u; d < HEAD_DIM / E; d <<= 1u) {
        s = enc_fold(s, subgroupShuffleXor(s, d));
    }
    return subgroupShuffle(s, row_first);
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) si: u32,
        @builtin(subgroup_size) ss: u32,
        @builtin(subgroup_id) sid: u32) {
    let lanes = HEAD_DIM / E;
    let lane = si % lanes;
    row_first = si - lane;
    write_row(sid * (ss / lanes) + si / lanes, lane, wid, nwg);
}
