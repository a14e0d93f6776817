//! Mode `none`: the cache holds the model dtype (f16 or f32) as given (spec §3.1, §5.1).

use super::{Codec, Dtype, KvQuantMode, QuantKvBackend};

/// Backend of [`KvQuantMode::None`].
pub struct NoneBackend;

impl QuantKvBackend for NoneBackend {
    fn mode(&self) -> KvQuantMode {
        KvQuantMode::None
    }
    fn packing_factor(&self) -> u32 {
        1
    }
    fn cache_elem_bytes(&self, dtype: Dtype) -> u32 {
        dtype.size()
    }
    fn needs_scale_caches(&self) -> bool {
        false
    }
    fn stores_rows_as_given(&self) -> bool {
        true
    }
    fn codec(&self, dtype: Dtype) -> Codec {
        Codec {
            decode: match dtype {
                Dtype::F16 => include_str!("../../shaders/modes/none/decode_f16.wgsl"),
                Dtype::F32 => include_str!("../../shaders/modes/none/decode_f32.wgsl"),
            },
        }
    }
}
