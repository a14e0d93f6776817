//! CPU quantization primitives shared by the modes' reference codecs: FP8 e4m3fn, INT8
//! rounding, and the non-finite input rules of spec §10.7.

/// Largest finite e4m3fn value.
pub const FP8_MAX: f32 = 448.0;

/// f32 → e4m3fn code, round to nearest even, saturating to ±448; never returns the NaN codes
/// 0x7F/0xFF. NaN input gives 0 (the write path cleans NaN to 0 before encoding, spec §10.7).
pub fn fp8_e4m3_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= FP8_MAX {
        return sign | 0x7E;
    }
    if a < 2f32.powi(-6) {
        // subnormal: m * 2^-9; a * 512 is exact, round half to even
        let m = (a * 512.0).round_ties_even() as u8;
        return sign | m;
    }
    let bits = a.to_bits();
    let e = (bits >> 23) as i32 - 127;
    let mant = bits & 0x7F_FFFF;
    let mut m3 = mant >> 20;
    let rem = mant & 0xF_FFFF;
    if rem > 0x8_0000 || (rem == 0x8_0000 && m3 & 1 == 1) {
        m3 += 1;
    }
    let code = (((e + 7) as u32) << 3) + m3;
    sign | code.min(0x7E) as u8
}

/// e4m3fn code → f32 (0x7F/0xFF, never stored, decode as ±480).
pub fn fp8_e4m3_decode(c: u8) -> f32 {
    let s = if c & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((c >> 3) & 0xF) as i32;
    let m = (c & 7) as f32;
    if e == 0 {
        s * m / 512.0
    } else {
        s * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

/// How INT8 per-(token, head) codes are rounded (spec §3.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Int8Rounding {
    /// Toward zero, as upstream's Triton store does (the default; vLLM-compatible).
    #[default]
    Truncate,
    /// Round half to even, then clamp to [-127, 127] (opt-in; not vLLM-compatible).
    NearestEven,
}

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

/// INT8 per-(token, head) (spec §3.3): codes and the row scale `max(absmax/127, 1e-6)`.
pub fn quantize_int8_pth(x: &[f32], rounding: Int8Rounding) -> (Vec<u8>, f32) {
    let row: Vec<Clean> = x.iter().map(|&v| clean(v)).collect();
    let scale = (absmax(&row) / 127.0).max(1e-6);
    let inv = 1.0 / scale;
    let codes = row
        .iter()
        .map(|c| {
            if c.inf != 0 {
                return (127 * c.inf as i32) as i8 as u8;
            }
            let y = (c.x * inv).clamp(-128.0, 127.0);
            let q = match rounding {
                Int8Rounding::Truncate => y.trunc(),
                Int8Rounding::NearestEven => y.round_ties_even().clamp(-127.0, 127.0),
            };
            q as i8 as u8
        })
        .collect();
    (codes, scale)
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
