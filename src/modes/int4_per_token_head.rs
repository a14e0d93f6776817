//! Mode `int4_per_token_head`: randomized Hadamard rotation, then asymmetric INT4 with the
//! 4-bit zero point hidden in the low mantissa bits of the f32 row scale (spec §3.4, §5.4).

use super::hadamard::pow2_block;
use super::quant::int4_asym;
use super::rotation;
use super::{Codec, Dtype, KvQuantMode, ModeOptions, QuantKvBackend, RowCodec};

/// Backend of [`KvQuantMode::Int4PerTokenHead`].
pub struct Int4PerTokenHead;

impl QuantKvBackend for Int4PerTokenHead {
    fn mode(&self) -> KvQuantMode {
        KvQuantMode::Int4PerTokenHead
    }
    fn packing_factor(&self) -> u32 {
        2
    }
    fn needs_scale_caches(&self) -> bool {
        true
    }
    fn codec(&self, _dtype: Dtype, _options: &ModeOptions) -> Codec {
        Codec {
            decode: include_str!("../../shaders/modes/int4_per_token_head/decode.wgsl"),
            encode: Some(include_str!(
                "../../shaders/modes/int4_per_token_head/encode.wgsl"
            )),
            transform: Some(include_str!(
                "../../shaders/modes/int4_per_token_head/transform.wgsl"
            )),
            transform_apart: Some(include_str!(
                "../../shaders/modes/int4_per_token_head/transform_apart.wgsl"
            )),
            includes: rotation::INCLUDES,
            encode_constants: Vec::new(),
        }
    }
    fn quantize_row(&self, x: &[f32], p: &RowCodec) -> (Vec<u8>, f32) {
        let rot = rotation::rotate_row(x, p.dtype, true);
        let (q, scale, zp) = int4_asym(&rot);
        let bytes = q.chunks(2).map(|c| c[0] | (c[1] << 4)).collect();
        (bytes, f32::from_bits((scale.to_bits() & !0xF) | zp as u32))
    }
    fn dequantize_row(&self, bytes: &[u8], scale: f32, _p: &RowCodec) -> Vec<f64> {
        let bits = scale.to_bits();
        let (zp, s) = ((bits & 0xF) as f64, f32::from_bits(bits & !0xF) as f64);
        self.code_ordinals(bytes, _p)
            .into_iter()
            .map(|q| (q as f64 - zp) * s)
            .collect()
    }
    fn code_ordinals(&self, bytes: &[u8], _p: &RowCodec) -> Vec<i32> {
        bytes
            .iter()
            .flat_map(|&b| [(b & 0xF) as i32, (b >> 4) as i32])
            .collect()
    }
    fn cpu_q_transform(&self, q: &mut [f64]) {
        rotation::rotate_q(q, true);
    }
    fn cpu_out_transform(&self, o: &mut [f64]) {
        rotation::unrotate_out(o, true);
    }
    fn score_scale(&self, head_size: u32) -> f64 {
        1.0 / pow2_block(head_size as usize) as f64
    }
}
