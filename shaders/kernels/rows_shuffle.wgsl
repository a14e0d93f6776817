// kernels/rows_shuffle.wgsl — the prefill kernel's row_max / row_sum where a softmax row has
// RT = WG_SIZE / MAX_M > 1 threads: maximum and sum over those adjacent lanes by shuffles
// (the host admits it only with subgroups of at least RT lanes, RT a power of two, so a row's
// lanes share a subgroup). Appended by the host to cooperative-matrix variants and to the
// twin's wide tilings.

fn row_max(x: f32) -> f32 {
    var r = x;
    for (var k = 1u; k < WG_SIZE / MAX_M; k <<= 1u) {
        r = max(r, subgroupShuffleXor(r, k));
    }
    return r;
}

fn row_sum(x: f32) -> f32 {
    var r = x;
    for (var k = 1u; k < WG_SIZE / MAX_M; k <<= 1u) {
        r += subgroupShuffleXor(r, k);
    }
    return r;
}
