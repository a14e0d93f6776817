// kernels/decode_entry_sg.wgsl — subgroup entry of the decode kernel. Needs the SUBGROUP
// feature and subgroups of at least 8 invocations (the host checks the adapter's minimum
// subgroup size); nothing assumes a particular size: key groups are numbered from the
// subgroup's own index and invocation id, never from the local invocation index.
// #include "kernels/decode.wgsl"

const HAS_SG: bool = true;

// Sum over the 8 lanes of this invocation's key group (lanes 8k .. 8k+7 of its subgroup).
fn sg_sum8(x: f32) -> f32 {
    var y = x + subgroupShuffleXor(x, 1u);
    y += subgroupShuffleXor(y, 2u);
    y += subgroupShuffleXor(y, 4u);
    return y;
}

fn sg_max(x: f32) -> f32 {
    return subgroupMax(x);
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) si: u32,
        @builtin(subgroup_size) ss: u32,
        @builtin(subgroup_id) sid: u32,
        @builtin(num_subgroups) nsg: u32) {
    decode_main(wid, tid, nwg, SgIds(si % 8u, sid * (ss / 8u) + si / 8u, sid, si == 0u, nsg));
}
