// kernels/decode_entry.wgsl — portable entry of the decode kernel: no subgroup operations
// (one thread per key for the scores, workgroup-memory trees for the reductions).
// #include "kernels/decode.wgsl"

const HAS_SG: bool = false;

fn sg_sum8(x: f32) -> f32 {
    return x;
}

fn sg_max(x: f32) -> f32 {
    return x;
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    decode_main(wid, tid, nwg, SgIds(0u, 0u, 0u, false, 1u));
}
