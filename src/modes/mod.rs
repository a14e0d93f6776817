//! KV quant modes, the [`QuantKvBackend`] trait, and the registry: the only place that names
//! every mode. A mode is one module here plus its WGSL files under `shaders/modes/<id>/`.

mod fp8_per_tensor;
mod fp8_per_token_head;
mod int2_per_token_head;
mod int4_per_token_head;
mod int8_per_tensor;
mod int8_per_token_head;
mod none;
mod rotation;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::attention::{self, Attention};
use crate::cache::{self, CacheWrite};
use crate::context::Context;
use crate::error::{Error, Result};

/// Storage format of the KV cache (spec §1.1; stable numeric values).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[repr(u32)]
pub enum KvQuantMode {
    /// Unquantized: the cache holds the model dtype (f16 or f32).
    None = 0,
    /// FP8 e4m3fn with one caller-given scale for K and one for V.
    Fp8PerTensor = 1,
    /// INT8 with one f32 scale per (token, kv head), truncating like upstream.
    Int8PerTokenHead = 2,
    /// FP8 e4m3fn with one f32 scale per (token, kv head).
    Fp8PerTokenHead = 3,
    /// INT4 asymmetric after a randomized Hadamard rotation, zero point in the scale's low bits.
    Int4PerTokenHead = 4,
    /// INT2 Lloyd-Max codebook after a Hadamard rotation.
    Int2PerTokenHead = 5,
    /// INT8 with one caller-given scale for K and one for V.
    Int8PerTensor = 6,
}

impl KvQuantMode {
    /// Every mode of the spec, in enum order.
    pub const ALL: [KvQuantMode; 7] = [
        KvQuantMode::None,
        KvQuantMode::Fp8PerTensor,
        KvQuantMode::Int8PerTokenHead,
        KvQuantMode::Fp8PerTokenHead,
        KvQuantMode::Int4PerTokenHead,
        KvQuantMode::Int2PerTokenHead,
        KvQuantMode::Int8PerTensor,
    ];

    /// Stable lowercase id, equal to the mode's file and folder names.
    pub fn id(self) -> &'static str {
        match self {
            KvQuantMode::None => "none",
            KvQuantMode::Fp8PerTensor => "fp8_per_tensor",
            KvQuantMode::Int8PerTokenHead => "int8_per_token_head",
            KvQuantMode::Fp8PerTokenHead => "fp8_per_token_head",
            KvQuantMode::Int4PerTokenHead => "int4_per_token_head",
            KvQuantMode::Int2PerTokenHead => "int2_per_token_head",
            KvQuantMode::Int8PerTensor => "int8_per_tensor",
        }
    }

    /// Whether this version implements the mode (the others answer [`Error::Unsupported`]).
    pub fn is_supported(self) -> bool {
        create(self).is_some()
    }
}

/// Model dtype: Q, K/V inputs, output, and the cache of mode `none`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Dtype {
    /// IEEE half, two per u32 word (element 2i in the low half). Arithmetic stays f32, so this
    /// needs no `SHADER_F16`.
    F16,
    /// IEEE single.
    F32,
    /// OCP e4m3fn codes, four per u32 word: an attention *output* format (`output_scale`),
    /// never a model dtype.
    Fp8E4m3,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u32 {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
            Dtype::Fp8E4m3 => 1,
        }
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
            Dtype::Fp8E4m3 => "fp8e4m3",
        }
    }

    /// Rounds an f64 to this dtype and back (what storing it in a buffer does).
    pub fn round(self, x: f64) -> f64 {
        match self {
            Dtype::F16 => half::f16::from_f64(x).to_f64(),
            Dtype::F32 => x as f32 as f64,
            Dtype::Fp8E4m3 => fp8_e4m3_decode(fp8_e4m3_encode(x as f32)) as f64,
        }
    }

    /// Encodes values as bytes of this dtype.
    pub fn encode(self, xs: &[f64]) -> Vec<u8> {
        match self {
            Dtype::F16 => xs
                .iter()
                .flat_map(|&x| half::f16::from_f64(x).to_le_bytes())
                .collect(),
            Dtype::F32 => xs.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
            Dtype::Fp8E4m3 => xs.iter().map(|&x| fp8_e4m3_encode(x as f32)).collect(),
        }
    }

    /// Decodes bytes of this dtype.
    pub fn decode(self, bytes: &[u8]) -> Vec<f64> {
        match self {
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::Fp8E4m3 => bytes.iter().map(|&c| fp8_e4m3_decode(c) as f64).collect(),
        }
    }
}

/// A mode's WGSL contracts, picked for the model dtype.
#[derive(Clone, Copy, Debug)]
pub struct Codec {
    /// Read contract: `decode_k4(row, j)` and `decode_v4(row, j)` (see `unified.wgsl`).
    pub decode: &'static str,
    /// Write contract for `write_rows.wgsl` (`CODE_BITS`, `HAS_SCALE_CACHE`, `enc_transform`,
    /// `enc_init`, `enc_stat`, `enc_fold`, `enc_params`, `enc_code`); `None` for modes that
    /// store rows as given.
    pub encode: Option<&'static str>,
    /// Query/output transform contract (`HAS_TRANSFORM`, `q_transform`, `out_transform`,
    /// `transform_score_scale`, see `common/no_transform.wgsl`); `None` = identity.
    pub transform: Option<&'static str>,
    /// Extra WGSL files the contracts include, as (path, source).
    pub includes: &'static [(&'static str, &'static str)],
}

impl Codec {
    /// The transform contract, the core's identity one when the mode has none.
    pub fn transform_source(&self) -> &'static str {
        self.transform
            .unwrap_or(include_str!("../../shaders/common/no_transform.wgsl"))
    }
}

pub use crate::reference::quant::Int8Rounding;
use crate::reference::quant::{fp8_e4m3_decode, fp8_e4m3_encode};

/// What the CPU codec of one row needs besides the values.
#[derive(Clone, Copy, Debug)]
pub struct RowCodec {
    /// Model dtype (the storage of mode `none`).
    pub dtype: Dtype,
    /// Per-tensor scale of this side (K or V) for per-tensor modes.
    pub tensor_scale: f32,
    /// INT8 per-(token, head) rounding.
    pub rounding: Int8Rounding,
}

/// One KV storage format: its metadata, its WGSL codec, and its two operations.
///
/// `reshape_and_cache` and `unified_attention` default to the core kernels composed with the
/// mode's codec; a mode overrides one only when it needs a kernel of its own.
pub trait QuantKvBackend: Send + Sync + 'static {
    /// The mode.
    fn mode(&self) -> KvQuantMode;
    /// Logical elements per storage byte (1 none/int8/fp8, 2 int4, 4 int2).
    fn packing_factor(&self) -> u32 {
        1
    }
    /// Bytes per storage element of the cache (1 for the quantized modes; the model dtype's
    /// size for `none`).
    fn cache_elem_bytes(&self, _dtype: Dtype) -> u32 {
        1
    }
    /// Whether the mode stores one f32 scale per (block, slot, kv head) for K and for V.
    fn needs_scale_caches(&self) -> bool {
        false
    }
    /// The mode's WGSL read contract for `dtype`.
    fn codec(&self, dtype: Dtype) -> Codec;
    /// Whether the mode's write path is a plain row copy (rows stored as given).
    fn stores_rows_as_given(&self) -> bool {
        false
    }
    /// Whether the mode reads one caller-given scale for K and one for V.
    fn uses_tensor_scales(&self) -> bool {
        false
    }
    /// CPU reference of the write path for one row: the stored bytes and the row's scale
    /// (the tensor scale for per-tensor modes, 1 for `none`).
    fn quantize_row(&self, x: &[f32], p: &RowCodec) -> (Vec<u8>, f32);
    /// CPU reference of the read path for one row: the values the stored bytes and scale define.
    fn dequantize_row(&self, bytes: &[u8], scale: f32, p: &RowCodec) -> Vec<f64>;
    /// Each element's code as a position on its code axis (adjacent codes differ by one), for
    /// the conformance rule of spec §7 level 1.
    fn code_ordinals(&self, bytes: &[u8], p: &RowCodec) -> Vec<i32>;
    /// Relative tolerance of GPU-written scales vs the CPU quantizer (spec §7 level 1).
    fn scale_tolerance(&self) -> f32 {
        2e-6
    }
    /// CPU reference of the query transform for one row (rotation modes; before rounding to
    /// the model dtype).
    fn cpu_q_transform(&self, _q: &mut [f64]) {}
    /// CPU reference of the output transform for one row (after rounding to the model dtype).
    fn cpu_out_transform(&self, _o: &mut [f64]) {}
    /// Factor applied to `softmax_scale` in the transformed basis.
    fn score_scale(&self, _head_size: u32) -> f64 {
        1.0
    }
    /// Storage elements per cached row (one token, one kv head).
    fn packed_head_size(&self, head_size: u32) -> u32 {
        head_size / self.packing_factor()
    }
    /// Bytes per cached row of K (or V), scales excluded.
    fn row_bytes(&self, head_size: u32, dtype: Dtype) -> u64 {
        self.packed_head_size(head_size) as u64 * self.cache_elem_bytes(dtype) as u64
    }
    /// Bytes of one scale cache (K or V) for `slots` = num_blocks * block_size and `kv_heads`.
    fn scale_cache_bytes(&self, slots: u64, kv_heads: u32) -> u64 {
        if self.needs_scale_caches() {
            slots * kv_heads as u64 * 4
        } else {
            0
        }
    }
    /// Writes K/V rows into their paged slots (spec §3), recording into `enc`.
    fn reshape_and_cache(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        w: &CacheWrite<'_>,
    ) -> Result<()> {
        cache::encode_write(self, ctx, enc, w)
    }
    /// Paged attention over the cache (spec §5, §6), recording into `enc`.
    fn unified_attention(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        a: &Attention<'_>,
    ) -> Result<()> {
        attention::encode(self, ctx, enc, a)
    }
}

/// Creates a fresh backend of `mode`, or `None` when the mode is not built yet. Most callers
/// want [`Context::backend`], which creates each backend once.
pub fn create(mode: KvQuantMode) -> Option<Arc<dyn QuantKvBackend>> {
    match mode {
        KvQuantMode::None => Some(Arc::new(none::NoneBackend)),
        KvQuantMode::Fp8PerTensor => Some(Arc::new(fp8_per_tensor::Fp8PerTensor)),
        KvQuantMode::Int8PerTokenHead => Some(Arc::new(int8_per_token_head::Int8PerTokenHead)),
        KvQuantMode::Fp8PerTokenHead => Some(Arc::new(fp8_per_token_head::Fp8PerTokenHead)),
        KvQuantMode::Int8PerTensor => Some(Arc::new(int8_per_tensor::Int8PerTensor)),
        KvQuantMode::Int4PerTokenHead => Some(Arc::new(int4_per_token_head::Int4PerTokenHead)),
        KvQuantMode::Int2PerTokenHead => Some(Arc::new(int2_per_token_head::Int2PerTokenHead)),
    }
}

/// One backend per mode, created on first request.
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<KvQuantMode, Arc<dyn QuantKvBackend>>>,
}

impl Registry {
    /// The backend of `mode`, created on first request.
    pub fn get(&self, mode: KvQuantMode) -> Result<Arc<dyn QuantKvBackend>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(&mode) {
            return Ok(b.clone());
        }
        let b = create(mode).ok_or(Error::Unsupported { mode })?;
        map.insert(mode, b.clone());
        Ok(b)
    }

    /// Modes whose backend has been created so far.
    pub fn created(&self) -> Vec<KvQuantMode> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<KvQuantMode> = map.keys().copied().collect();
        v.sort();
        v
    }
}

impl Context {
    /// The backend of `mode`, created on first request; [`Error::Unsupported`] for modes not
    /// built yet.
    pub fn backend(&self, mode: KvQuantMode) -> Result<Arc<dyn QuantKvBackend>> {
        self.registry.get(mode)
    }

    /// Modes whose backend this context has created so far.
    pub fn created_backends(&self) -> Vec<KvQuantMode> {
        self.registry.created()
    }
}
