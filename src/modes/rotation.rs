//! What the rotation modes (INT4, INT2) share: their WGSL include files and the CPU rotation
//! of a row. Never core: only rotation modes use it.

use super::hadamard::{pow2_block, rht_fwd, rht_sign, wht_blocks};
use super::quant::clean;
use super::Dtype;

/// WGSL files the rotation modes' contracts include.
pub const INCLUDES: &[(&str, &str)] = &[
    (
        "modes/shared/rht.wgsl",
        include_str!("../../shaders/modes/shared/rht.wgsl"),
    ),
    (
        "modes/shared/hadamard_rows.wgsl",
        include_str!("../../shaders/modes/shared/hadamard_rows.wgsl"),
    ),
    (
        "modes/shared/hadamard_x.wgsl",
        include_str!("../../shaders/modes/shared/hadamard_x.wgsl"),
    ),
];

/// The write path's step 1 (spec §3.4, §3.5): clean non-finite values to 0 (§10.7), rotate
/// block-diagonally (with the sign vector when `signs`), round to the model dtype.
pub fn rotate_row(x: &[f32], dtype: Dtype, signs: bool) -> Vec<f32> {
    let b = pow2_block(x.len());
    let mut y: Vec<f32> = x.iter().map(|&v| clean(v).x).collect();
    if signs {
        rht_fwd(&mut y, b);
    } else {
        wht_blocks(&mut y, b);
    }
    y.iter().map(|&v| dtype.round(v as f64) as f32).collect()
}

/// Rotates a query row in place (f32 arithmetic, as the kernels).
pub fn rotate_q(q: &mut [f64], signs: bool) {
    let b = pow2_block(q.len());
    let mut y: Vec<f32> = q.iter().map(|&v| v as f32).collect();
    if signs {
        rht_fwd(&mut y, b);
    } else {
        wht_blocks(&mut y, b);
    }
    for (o, v) in q.iter_mut().zip(y) {
        *o = v as f64;
    }
}

/// Un-rotates an output row in place: WHT, then (INT4) signs and 1/b.
pub fn unrotate_out(o: &mut [f64], signs: bool) {
    let b = pow2_block(o.len());
    let mut y: Vec<f32> = o.iter().map(|&v| v as f32).collect();
    wht_blocks(&mut y, b);
    for (i, (dst, v)) in o.iter_mut().zip(y).enumerate() {
        *dst = if signs {
            (v * rht_sign(i, b) * (1.0 / b as f32)) as f64
        } else {
            v as f64
        };
    }
}
