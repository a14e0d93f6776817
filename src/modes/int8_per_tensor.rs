//! Mode `int8_per_tensor`: INT8 codes with one caller-given scale for K and one for V,
//! rounded half to even (spec §10.1).

use super::quant;
use super::{Codec, Dtype, KvQuantMode, ModeOptions, QuantKvBackend, RowCodec};

/// Backend of [`KvQuantMode::Int8PerTensor`].
pub struct Int8PerTensor;

impl QuantKvBackend for Int8PerTensor {
    fn mode(&self) -> KvQuantMode {
        KvQuantMode::Int8PerTensor
    }
    fn uses_tensor_scales(&self) -> bool {
        true
    }
    fn calibrate_tensor_scale(&self, values: &[f32]) -> f32 {
        quant::calibrate_scale(values, 127.0)
    }
    fn codec(&self, _dtype: Dtype, _options: &ModeOptions) -> Codec {
        Codec {
            decode: include_str!("../../shaders/modes/int8_per_tensor/decode.wgsl"),
            encode: Some(include_str!(
                "../../shaders/modes/int8_per_tensor/encode.wgsl"
            )),
            transform: None,
            transform_apart: None,
            includes: &[],
            encode_constants: Vec::new(),
        }
    }
    fn quantize_row(&self, x: &[f32], p: &RowCodec) -> (Vec<u8>, f32) {
        (
            quant::quantize_int8_tensor(x, p.tensor_scale),
            p.tensor_scale,
        )
    }
    fn dequantize_row(&self, bytes: &[u8], scale: f32, _p: &RowCodec) -> Vec<f64> {
        bytes
            .iter()
            .map(|&c| c as i8 as f32 as f64 * scale as f64)
            .collect()
    }
    fn code_ordinals(&self, bytes: &[u8], _p: &RowCodec) -> Vec<i32> {
        bytes.iter().map(|&c| c as i8 as i32).collect()
    }
}
