//! Mode `fp8_per_token_head`: FP8 e4m3fn codes with one f32 scale per (token, kv head),
//! `absmax/448` (spec §3.3, §5.3).

use super::quant;
use super::{Codec, Dtype, KvQuantMode, ModeOptions, QuantKvBackend, RowCodec};

/// Backend of [`KvQuantMode::Fp8PerTokenHead`].
pub struct Fp8PerTokenHead;

impl QuantKvBackend for Fp8PerTokenHead {
    fn mode(&self) -> KvQuantMode {
        KvQuantMode::Fp8PerTokenHead
    }
    fn needs_scale_caches(&self) -> bool {
        true
    }
    fn codec(&self, _dtype: Dtype, _options: &ModeOptions) -> Codec {
        Codec {
            decode: include_str!("../../shaders/modes/fp8_per_token_head/decode.wgsl"),
            encode: Some(include_str!(
                "../../shaders/modes/fp8_per_token_head/encode.wgsl"
            )),
            transform: None,
            transform_apart: None,
            includes: &[],
            encode_constants: Vec::new(),
        }
    }
    fn quantize_row(&self, x: &[f32], _p: &RowCodec) -> (Vec<u8>, f32) {
        quant::quantize_fp8_pth(x)
    }
    fn dequantize_row(&self, bytes: &[u8], scale: f32, _p: &RowCodec) -> Vec<f64> {
        bytes
            .iter()
            .map(|&c| quant::fp8_e4m3_decode(c) as f64 * scale as f64)
            .collect()
    }
    fn code_ordinals(&self, bytes: &[u8], _p: &RowCodec) -> Vec<i32> {
        bytes.iter().map(|&c| quant::fp8_ordinal(c)).collect()
    }
}
