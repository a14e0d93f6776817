//! CPU quantization primitives shared by the modes' reference codecs: FP8 e4m3fn, INT8
//! rounding, and the non-finite input rules of spec §10.7.

pub use super::int8_per_token_head::{quantize_int8_pth, Int8Rounding};
pub use crate::types::{fp8_e4m3_decode, fp8_e4m3_encode, FP8_MAX};

/// A cleaned input element (spec §10.7): NaN → 0, ±Inf → 0 with its sign remembered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clean {
    /// The finite value (0 for non-finite inputs).
    pub x: f32,
    /// -1 / +1 for -Inf / +Inf inputs, 0 otherwise.
    pub inf: i8,
}

/// Applies the non-finite rule of spec §10.7 to one element.
pub fn clean(x: f32) -> Clean {
    if x.is_nan() {
        Clean { x: 0.0, inf: 0 }
    } else if x.is_infinite() {
        Clean {
            x: 0.0,
            inf: if x > 0.0 { 1 } else { -1 },
        }
    } else {
        Clean { x, inf: 0 }
    }
}

/// Largest |x| over the finite elements of a cleaned row.
pub fn absmax(row: &[Clean]) -> f32 {
    row.iter().fold(0.0f32, |m, c| m.max(c.x.abs()))
}

/// FP8 per-(token, head) (spec §3.3): e4m3fn codes and the row scale `max(absmax/448, 1e-6)`.
pub fn quantize_fp8_pth(x: &[f32]) -> (Vec<u8>, f32) {
    let row: Vec<Clean> = x.iter().map(|&v| clean(v)).collect();
    let scale = (absmax(&row) / FP8_MAX).max(1e-6);
    let inv = 1.0 / scale;
    let codes = row
        .iter()
        .map(|c| match c.inf {
            0 => fp8_e4m3_encode((c.x * inv).clamp(-FP8_MAX, FP8_MAX)),
            s if s > 0 => 0x7E,
            _ => 0xFE,
        })
        .collect();
    (codes, scale)
}

/// INT8 per-tensor (spec §10.1): `clamp(round_half_even(x / scale), -127, 127)`.
pub fn quantize_int8_tensor(x: &[f32], scale: f32) -> Vec<u8> {
    x.iter()
        .map(|&v| {
            let c = clean(v);
            if c.inf != 0 {
                return (127 * c.inf as i32) as i8 as u8;
            }
            (c.x / scale).round_ties_even().clamp(-127.0, 127.0) as i8 as u8
        })
        .collect()
}

/// FP8 per-tensor (spec §3.2): `e4m3fn_rne_sat(x / scale)`.
pub fn quantize_fp8_tensor(x: &[f32], scale: f32) -> Vec<u8> {
    x.iter()
        .map(|&v| {
            let c = clean(v);
            match c.inf {
                0 => fp8_e4m3_encode(c.x / scale),
                s if s > 0 => 0x7E,
                _ => 0xFE,
            }
        })
        .collect()
}

/// Position of an e4m3fn code on the number line (sign-magnitude → ordinal), so adjacent
/// representable values differ by one.
pub fn fp8_ordinal(c: u8) -> i32 {
    let mag = (c & 0x7F) as i32;
    if c & 0x80 != 0 {
        -mag
    } else {
        mag
    }
}

/// A per-tensor scale from a calibration batch: `absmax / qmax` over the finite values
/// (127 for INT8, 448 for FP8), at least 1e-6.
pub fn calibrate_scale(values: &[f32], qmax: f32) -> f32 {
    let row: Vec<Clean> = values.iter().map(|&v| clean(v)).collect();
    (absmax(&row) / qmax).max(1e-6)
}

/// Round half away from zero, as `t >= 0 ? trunc(t + 0.5) : trunc(t - 0.5)` in f32.
pub fn rha(t: f32) -> f32 {
    if t >= 0.0 {
        (t + 0.5).trunc()
    } else {
        (t - 0.5).trunc()
    }
}

/// INT4 asymmetric quantization of an already rotated row (spec §3.4 step 2): 4-bit codes, the
/// scale and the zero point.
pub fn int4_asym(x: &[f32]) -> (Vec<u8>, f32, u8) {
    let mn = x.iter().copied().fold(f32::INFINITY, f32::min);
    let mx = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scale = ((mx - mn) / 15.0).max(1e-6);
    let zp = rha(-mn / scale).clamp(0.0, 15.0);
    let inv = 1.0 / scale;
    let q = x
        .iter()
        .map(|&v| rha(v * inv + zp).clamp(0.0, 15.0) as u8)
        .collect();
    (q, scale, zp as u8)
}

/// The Lloyd-Max centroids of a unit Gaussian, 4 levels.
pub const INT2_CENTROIDS: [f32; 4] = [-1.5104, -0.4528, 0.4528, 1.5104];

/// INT2 codebook indices of a rotated row (spec §3.5) and `norm = sqrt(Σx² + 1e-12)`.
pub fn int2_codes(x: &[f32]) -> (Vec<u8>, f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let norm = (ss + 1e-12).sqrt();
    let inv_sigma = (x.len() as f32).sqrt() / norm;
    let idx = x
        .iter()
        .map(|&v| {
            let z = v * inv_sigma;
            if z < 0.0 {
                if z < -0.9816 {
                    0
                } else {
                    1
                }
            } else if z < 0.9816 {
                2
            } else {
                3
            }
        })
        .collect();
    (idx, norm)
}
