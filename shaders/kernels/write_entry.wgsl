// kernels/write_entry.wgsl — the portable entry of the quantizing write kernel
// (kernels/write_rows.wgsl): row j = tid / lanes; the mode's transform through x_sh (all rows
// of the workgroup at once), the row statistic through red_sh, folded in lane order.
// #include "kernels/write_rows.wgsl"

var<workgroup> x_sh: array<f32, X_LEN>;
var<workgroup> red_sh: array<vec2<f32>, WG_SIZE>;

fn transform_row(j: u32, lane: u32) {
    if (ENC_TRANSFORM) {
        let xb = j * HEAD_DIM + lane * E;
        for (var k = 0u; k < E; k++) {
            x_sh[xb + k] = x[k];
        }
        workgroupBarrier();
        enc_transform(j * (HEAD_DIM / E) + lane);
        workgroupBarrier();
        for (var k = 0u; k < E; k++) {
            x[k] = x_sh[xb + k];
        }
    }
}

fn row_stat(acc: vec2<f32>, j: u32, lane: u32) -> vec2<f32> {
    let lanes = HEAD_DIM / E;
    red_sh[j * lanes + lane] = acc;
    workgroupBarrier();
    var stat = red_sh[j * lanes];
    for (var k = 1u; k < lanes; k++) {
        stat = enc_fold(stat, red_sh[j * lanes + k]);
    }
    return stat;
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let lanes = HEAD_DIM / E;
    write_row(tid / lanes, tid % lanes, wid, nwg);
}
