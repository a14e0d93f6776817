//! Mode `fp8_per_tensor`: FP8 e4m3fn codes with one caller-given scale for K and one for V
//! (spec §3.2, §5.2).

use super::quant;
use super::{Codec, Dtype, KvQuantMode, ModeOptions, QuantKvBackend, RowCodec};

/// Backend of [`KvQuantMode::Fp8PerTensor`].
pub struct Fp8PerTensor;

impl QuantKvBackend for Fp8PerTensor {
    fn mode(&self) -> KvQuantMode {
        KvQuantMode::Fp8PerTensor
    }
    fn uses_tensor_scales(&self) -> bool {
        true
    }
    fn calibrate_tensor_scale(&self, values: &[f32]) -> f32 {
        quant::calibrate_scale(values, quant::FP8_MAX)
    }
    fn codec(&self, _dtype: Dtype, _options: &ModeOptions) -> Codec {
        Codec {
            decode: include_str!("../../shaders/modes/fp8_per_tensor/decode.wgsl"),
            encode: Some(include_str!(
                "../../shaders/modes/fp8_per_tensor/encode.wgsl"
            )),
            transform: None,
            transform_apart: None,
            includes: &[],
            encode_constants: Vec::new(),
        }
    }
    fn quantize_row(&self, x: &[f32], p: &RowCodec) -> (Vec<u8>, f32) {
        (
            quant::quantize_fp8_tensor(x, p.tensor_scale),
            p.tensor_scale,
        )
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
