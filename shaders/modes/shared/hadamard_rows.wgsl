// modes/shared/hadamard_rows.wgsl — block-diagonal unnormalised Walsh-Hadamard transform of the
// rows held in the core's q_sh (HEAD_DIM/4 vec4 per row), in workgroup memory, by all threads.
// Butterflies in the canonical order of spec §4.1 (h = 1, 2, 4, ... < b; a+b, a-b), so the
// result is the CPU reference's, bit for bit.
// #include "modes/shared/rht.wgsl"

fn wht_rows(tid: u32, rows: u32) {
    let d4 = HEAD_DIM / 4u;
    // h = 1 and 2 live inside one vec4.
    for (var e = tid; e < rows * d4; e += WG_SIZE) {
        let v = q_sh[e];
        let a = vec4<f32>(v.x + v.y, v.x - v.y, v.z + v.w, v.z - v.w);
        q_sh[e] = vec4<f32>(a.x + a.z, a.y + a.w, a.x - a.z, a.y - a.w);
    }
    workgroupBarrier();
    let half = d4 / 2u;
    for (var h4 = 1u; h4 < rot_b() / 4u; h4 <<= 1u) {
        for (var p = tid; p < rows * half; p += WG_SIZE) {
            let q = p % half;
            let i = (p / half) * d4 + (q / h4) * 2u * h4 + q % h4;
            let a = q_sh[i];
            let b = q_sh[i + h4];
            q_sh[i] = a + b;
            q_sh[i + h4] = a - b;
        }
        workgroupBarrier();
    }
}

// Multiplies rows by the sign vector times `scale`.
fn sign_rows(tid: u32, rows: u32, scale: f32) {
    let d4 = HEAD_DIM / 4u;
    for (var e = tid; e < rows * d4; e += WG_SIZE) {
        q_sh[e] = q_sh[e] * rht_sign4(e % d4) * scale;
    }
    workgroupBarrier();
}
