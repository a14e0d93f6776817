//! Mode `int8_per_token_head`: INT8 codes with one f32 scale per (token, kv head), `absmax/127`
//! (spec §3.3, §5.3). Its one option, [`Int8Rounding`], lives here: the core never names it.

use super::quant::{absmax, clean, rha, Clean};
use super::{Codec, Dtype, KvQuantMode, ModeOptions, QuantKvBackend, RowCodec};

/// How INT8 per-(token, head) codes are rounded (spec §3.3). The read path is the same for all.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Int8Rounding {
    /// Round half away from zero, then clamp to [-128, 127]: the rounding of the released vLLM
    /// kernel (`triton_reshape_and_cache_flash`, vLLM 0.33.0). The default.
    #[default]
    HalfAwayFromZero,
    /// Toward zero: bit-compatible with caches written by upstream's `triton_quant_kv` path,
    /// which truncates. Opt-in; less accurate.
    Truncate,
    /// Round half to even, then clamp to [-127, 127]. Opt-in; matches no upstream kernel.
    NearestEven,
}

impl Int8Rounding {
    /// The value of the `INT8_ROUNDING` override in the mode's encode contract.
    fn code(self) -> u32 {
        match self {
            Int8Rounding::HalfAwayFromZero => 0,
            Int8Rounding::Truncate => 1,
            Int8Rounding::NearestEven => 2,
        }
    }
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
                Int8Rounding::HalfAwayFromZero => rha(y).clamp(-128.0, 127.0),
                Int8Rounding::Truncate => y.trunc(),
                Int8Rounding::NearestEven => y.round_ties_even().clamp(-127.0, 127.0),
            };
            q as i8 as u8
        })
        .collect();
    (codes, scale)
}

/// Backend of [`KvQuantMode::Int8PerTokenHead`].
pub struct Int8PerTokenHead;

impl QuantKvBackend for Int8PerTokenHead {
    fn mode(&self) -> KvQuantMode {
        KvQuantMode::Int8PerTokenHead
    }
    fn needs_scale_caches(&self) -> bool {
        true
    }
    fn codec(&self, _dtype: Dtype, options: &ModeOptions) -> Codec {
        Codec {
            decode: include_str!("../../shaders/modes/int8_per_token_head/decode.wgsl"),
            encode: Some(include_str!(
                "../../shaders/modes/int8_per_token_head/encode.wgsl"
            )),
            transform: None,
            transform_apart: None,
            includes: &[],
            encode_constants: vec![("INT8_ROUNDING", options.int8_rounding.code() as f64)],
        }
    }
    fn option_bits(&self, options: &ModeOptions) -> u32 {
        options.int8_rounding.code()
    }
    fn quantize_row(&self, x: &[f32], p: &RowCodec) -> (Vec<u8>, f32) {
        quantize_int8_pth(x, p.options.int8_rounding)
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
