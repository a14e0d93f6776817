//! Walsh-Hadamard transforms of spec §4, in f32 and in the canonical butterfly order, so the
//! CPU and the WGSL kernels produce identical bits.

/// Sign table of spec Appendix A: bit i set <=> `s[i] = -1` (512 entries).
pub const RHT_SIGN_WORDS: [u32; 16] = [
    0x9A8C_A6F2,
    0x7F7F_CA4E,
    0x59BB_C293,
    0x9480_ABC7,
    0xB55B_747E,
    0x5450_3BBE,
    0xCDF4_67B7,
    0x05DF_BC5F,
    0xB291_E3CC,
    0x5756_3834,
    0xE46A_E225,
    0x67FC_4CA6,
    0xCFC7_8691,
    0x32D9_DFF1,
    0x365F_DB89,
    0x7562_5346,
];

/// Largest power-of-two divisor of `d` (the block size of the block-diagonal transform).
pub fn pow2_block(d: usize) -> usize {
    d & d.wrapping_neg()
}

/// s[i % b] of the randomized Hadamard transform.
pub fn rht_sign(i: usize, b: usize) -> f32 {
    let k = i % b;
    if (RHT_SIGN_WORDS[k / 32] >> (k % 32)) & 1 == 1 {
        -1.0
    } else {
        1.0
    }
}

/// In-place unnormalised WHT of each block of `b` elements (`x.len()` a multiple of `b`, `b` a
/// power of two), butterflies h = 1, 2, 4, ... with (a + b, a - b) in f32.
pub fn wht_blocks(x: &mut [f32], b: usize) {
    let mut h = 1;
    while h < b {
        for start in (0..x.len()).step_by(2 * h) {
            for j in start..start + h {
                let (a, c) = (x[j], x[j + h]);
                x[j] = a + c;
                x[j + h] = a - c;
            }
        }
        h *= 2;
    }
}

/// RHT_fwd per block: signs, then WHT.
pub fn rht_fwd(x: &mut [f32], b: usize) {
    for (i, v) in x.iter_mut().enumerate() {
        *v *= rht_sign(i, b);
    }
    wht_blocks(x, b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wht_matches_a_dense_hadamard_product() {
        for d in [16usize, 32, 64, 80, 96, 128, 192, 256] {
            let b = pow2_block(d);
            let x: Vec<f32> = (0..d)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.25)
                .collect();
            let mut y = x.clone();
            wht_blocks(&mut y, b);
            for (i, yi) in y.iter().enumerate() {
                let blk = i / b * b;
                let dense: f64 = (0..b)
                    .map(|j| {
                        let h = if ((i - blk) & j).count_ones().is_multiple_of(2) {
                            1.0
                        } else {
                            -1.0
                        };
                        h * x[blk + j] as f64
                    })
                    .sum();
                assert!(
                    (*yi as f64 - dense).abs() < 1e-4,
                    "d {d} i {i}: {yi} vs {dense}"
                );
            }
            // WHT(WHT(x)) = b x
            let mut z = y.clone();
            wht_blocks(&mut z, b);
            for (zi, xi) in z.iter().zip(&x) {
                assert!((zi - b as f32 * xi).abs() < 1e-3);
            }
        }
        let s: Vec<f32> = (0..16).map(|i| rht_sign(i, 16)).collect();
        let want = [
            1., -1., 1., 1., -1., -1., -1., -1., 1., -1., -1., 1., 1., -1., 1., -1.,
        ];
        assert_eq!(s, want, "spec Appendix A sanity check");
    }
}
