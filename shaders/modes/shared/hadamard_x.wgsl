// modes/shared/hadamard_x.wgsl — the same block-diagonal Walsh-Hadamard transform on the write
// kernel's rows in x_sh (X_LEN f32: rows of HEAD_DIM, a multiple of the block rot_b(), so no
// butterfly group straddles two rows), by all threads, canonical butterfly order (spec §4.1).
// #include "modes/shared/rht.wgsl"

fn wht_x(tid: u32) {
    for (var h = 1u; h < rot_b(); h <<= 1u) {
        for (var p = tid; p < X_LEN / 2u; p += WG_SIZE) {
            let k = (p / h) * 2u * h + p % h;
            let a = x_sh[k];
            let b = x_sh[k + h];
            x_sh[k] = a + b;
            x_sh[k + h] = a - b;
        }
        workgroupBarrier();
    }
}

// Rounds the rotated row to the model dtype (spec §3.4 step 1), after a barrier-free pass.
fn round_x(tid: u32) {
    for (var i = tid; i < X_LEN; i += WG_SIZE) {
        x_sh[i] = model_round1(x_sh[i]);
    }
}

// One element rounded to the model dtype.
fn model_round1(x: f32) -> f32 {
    return model_round4(vec4<f32>(x, 0.0, 0.0, 0.0)).x;
}

// The transform per element, for the subgroup write entry: the block of the butterflies, and
// the rounding after them (the mode's enc_pre says what comes before).
fn enc_block() -> u32 {
    return rot_b();
}

fn enc_post(x: f32) -> f32 {
    return model_round1(x);
}
