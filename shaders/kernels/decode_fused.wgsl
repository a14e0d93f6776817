// kernels/decode_fused.wgsl — split-K finished inside the streaming decode kernel (one dispatch
// instead of a segment pass and a reduce pass). Appended by the host to decode_stream.wgsl for
// its split variants on adapters that allow it (Caps::fused_reduce). (Appended, not
// prepended: naga 30's override processing rejects the module when decode_common.wgsl's
// override-sized q_sh is declared before the rest.)
//
// Every workgroup of a (token row, head chunk) stores its segment's partials (atomically, so
// they are coherent at device scope), makes them visible (storageBarrier: a device-scope
// release), and counts itself done on the group's counter. The workgroup that counts last
// resets the counter to 0 for the next call, acquires (storageBarrier), and combines the
// group's segments with reduce_row, head by head, in a fixed order (deterministic, the same
// arithmetic as kernels/reduce.wgsl). Counters start at 0 (wgpu zero-fills new buffers) and
// every call leaves them at 0.
//
// Bindings: 10 the partials (layout of decode_common.wgsl's store_row4), 11 the counters
//           (one per token row and workgroup row y: host-sized to num_tokens_q x grid y).
// #include "common/reduce_row.wgsl"

@group(0) @binding(10) var<storage, read_write> part: array<atomic<u32>>;
@group(0) @binding(11) var<storage, read_write> seg_done: array<atomic<u32>>;

var<workgroup> last_sh: u32;

fn part_put(i: u32, x: f32) {
    atomicStore(&part[i], bitcast<u32>(x));
}

fn part_get(i: u32) -> f32 {
    return bitcast<f32>(atomicLoad(&part[i]));
}

// All threads, after every store_row4 of the segment. y / ny: the workgroup's row and rows.
fn split_finish(tid: u32, inf: DecInfo, y: u32, ny: u32, nseg: u32) {
    storageBarrier();
    if (tid == 0u) {
        let c = inf.tok * ny + y;
        var last = 0u;
        if (atomicAdd(&seg_done[c], 1u) + 1u == nseg) {
            atomicStore(&seg_done[c], 0u);
            last = 1u;
        }
        last_sh = last;
    }
    if (workgroupUniformLoad(&last_sh) == 0u) {
        return;
    }
    storageBarrier();
    for (var m = 0u; m < inf.nheads; m++) {
        reduce_row(tid, inf.tok, inf.head0 + m);
    }
}
