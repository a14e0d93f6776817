//! Mode `none`: the cache holds the model dtype (f16 or f32) as given (spec §3.1, §5.1).

use super::{Codec, Dtype, KvQuantMode, ModeOptions, QuantKvBackend, RowCodec};

/// Backend of [`KvQuantMode::None`].
pub struct NoneBackend;

impl QuantKvBackend for NoneBackend {
    fn mode(&self) -> KvQuantMode {
        KvQuantMode::None
    }
    fn cache_elem_bytes(&self, dtype: Dtype) -> u32 {
        dtype.size()
    }
    fn stores_rows_as_given(&self) -> bool {
        true
    }
    fn codec(&self, dtype: Dtype, _options: &ModeOptions) -> Codec {
        Codec {
            decode: match dtype {
                Dtype::F16 => include_str!("../../shaders/modes/none/decode_f16.wgsl"),
                Dtype::Bf16 => include_str!("../../shaders/modes/none/decode_bf16.wgsl"),
                // fp8 is never a model dtype (CacheConfig::validate rejects it)
                Dtype::F32 | Dtype::Fp8E4m3 => {
                    include_str!("../../shaders/modes/none/decode_f32.wgsl")
                }
            },
            encode: None,
            transform: None,
            transform_apart: None,
            includes: &[],
            encode_constants: Vec::new(),
        }
    }
    fn quantize_row(&self, x: &[f32], p: &RowCodec) -> (Vec<u8>, f32) {
        let v: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        (p.dtype.encode(&v), 1.0)
    }
    fn dequantize_row(&self, bytes: &[u8], _scale: f32, p: &RowCodec) -> Vec<f64> {
        p.dtype.decode(bytes)
    }
    fn code_ordinals(&self, bytes: &[u8], p: &RowCodec) -> Vec<i32> {
        // Stored as given: any difference is a layout error, so compare raw bits.
        bytes
            .chunks_exact(p.dtype.size() as usize)
            .map(|c| c.iter().rev().fold(0i32, |a, &b| (a << 8) | b as i32))
            .collect()
    }
}
