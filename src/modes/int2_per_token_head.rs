//! Mode `int2_per_token_head`: plain Hadamard rotation, then a 4-level Lloyd-Max codebook for a
//! unit Gaussian, with `norm / (sqrt(d)·b)` as the row scale (spec §3.5, §10.2).

use super::hadamard::pow2_block;
use super::quant::{int2_codes, INT2_CENTROIDS};
use super::rotation;
use super::{Codec, Dtype, KvQuantMode, ModeOptions, QuantKvBackend, RowCodec};

/// Backend of [`KvQuantMode::Int2PerTokenHead`].
pub struct Int2PerTokenHead;

impl QuantKvBackend for Int2PerTokenHead {
    fn mode(&self) -> KvQuantMode {
        KvQuantMode::Int2PerTokenHead
    }
    fn packing_factor(&self) -> u32 {
        4
    }
    fn needs_scale_caches(&self) -> bool {
        true
    }
    fn codec(&self, _dtype: Dtype, _options: &ModeOptions) -> Codec {
        Codec {
            decode: include_str!("../../shaders/modes/int2_per_token_head/decode.wgsl"),
            encode: Some(include_str!(
                "../../shaders/modes/int2_per_token_head/encode.wgsl"
            )),
            transform: Some(include_str!(
                "../../shaders/modes/int2_per_token_head/transform.wgsl"
            )),
            transform_apart: Some(include_str!(
                "../../shaders/modes/int2_per_token_head/transform_apart.wgsl"
            )),
            includes: rotation::INCLUDES,
            encode_constants: Vec::new(),
        }
    }
    fn quantize_row(&self, x: &[f32], p: &RowCodec) -> (Vec<u8>, f32) {
        let rot = rotation::rotate_row(x, p.dtype, false);
        let (idx, norm) = int2_codes(&rot);
        let d = x.len();
        let scale = norm / ((d as f32).sqrt() * pow2_block(d) as f32);
        let bytes = idx
            .chunks(4)
            .map(|c| c[0] | (c[1] << 2) | (c[2] << 4) | (c[3] << 6))
            .collect();
        (bytes, scale)
    }
    /// Values in the kernel's basis: `c[idx]·scale` (the rotated element divided by b).
    fn dequantize_row(&self, bytes: &[u8], scale: f32, p: &RowCodec) -> Vec<f64> {
        self.code_ordinals(bytes, p)
            .into_iter()
            .map(|i| INT2_CENTROIDS[i as usize] as f64 * scale as f64)
            .collect()
    }
    fn code_ordinals(&self, bytes: &[u8], _p: &RowCodec) -> Vec<i32> {
        bytes
            .iter()
            .flat_map(|&b| (0..4).map(move |k| ((b >> (2 * k)) & 3) as i32))
            .collect()
    }
    fn scale_tolerance(&self) -> f32 {
        2e-5
    }
    fn cpu_q_transform(&self, q: &mut [f64]) {
        rotation::rotate_q(q, false);
    }
    fn cpu_out_transform(&self, o: &mut [f64]) {
        rotation::unrotate_out(o, false);
    }
}
