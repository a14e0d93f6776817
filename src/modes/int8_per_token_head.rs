//! Mode `int8_per_token_head`: INT8 codes with one f32 scale per (token, kv head), `absmax/127`,
//! truncated like upstream or, opt-in, rounded half to even (spec §3.3, §5.3).

use super::{Codec, Dtype, KvQuantMode, QuantKvBackend, RowCodec};
use crate::reference::quant;

/// Backend of [`KvQuantMode::Int8PerTokenHead`].
pub struct Int8PerTokenHead;

impl QuantKvBackend for Int8PerTokenHead {
    fn mode(&self) -> KvQuantMode {
        KvQuantMode::Int8PerTokenHead
    }
    fn needs_scale_caches(&self) -> bool {
        true
    }
    fn codec(&self, _dtype: Dtype) -> Codec {
        Codec {
            decode: include_str!("../../shaders/modes/int8_per_token_head/decode.wgsl"),
            encode: Some(include_str!(
                "../../shaders/modes/int8_per_token_head/encode.wgsl"
            )),
            transform: None,
            includes: &[],
        }
    }
    fn quantize_row(&self, x: &[f32], p: &RowCodec) -> (Vec<u8>, f32) {
        quant::quantize_int8_pth(x, p.rounding)
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
