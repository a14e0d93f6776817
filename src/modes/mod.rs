//! KV quant modes: the [`QuantKvBackend`] trait, the mode options, and the registry — the only
//! place that names every mode. A mode is one file here (its options, its WGSL codec
//! description and its CPU codec side by side) plus its WGSL folder `shaders/modes/<id>/`, plus
//! one line in [`create`]. Nothing in this module calls up into the kernels or the cache: the
//! kernels take a [`Codec`] description, and the cache resolves its mode once
//! ([`Resolved`]).
//!
//! Dependencies: `types`, `error` and the shared CPU math of this folder (`quant`,
//! `hadamard`); never `gpu`, `kernels`, `cache` or `step`.

mod fp8_per_tensor;
mod fp8_per_token_head;
pub mod hadamard;
mod int2_per_token_head;
mod int4_per_token_head;
mod int8_per_tensor;
mod int8_per_token_head;
mod none;
pub mod quant;
mod rotation;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
pub use crate::types::{Dtype, KvQuantMode};

/// A mode's WGSL contracts, picked for the model dtype and the mode's options.
///
/// **Read contract v2** (`decode`; see `shaders/common/kv_read.wgsl`, which builds the core's
/// loads on it): a mode gives the kernels raw code words and per-row terms, never dequantized
/// floats per element, so the row scale costs one multiply per key, not per element:
/// - `const K_EPW: u32` / `V_EPW`: elements per u32 word (1 f32, 2 f16, 4 for 8-bit codes,
///   8 INT4, 16 INT2);
/// - `const K_HAS_ZERO: bool` / `V_HAS_ZERO`: whether rows carry a zero point;
/// - `fn k_raw4(w: vec4<u32>, sub: u32) -> vec4<f32>` / `v_raw4`: four elements from the
///   words that hold them (for `EPW <= 4`, the `4/EPW` words of the group in `w.x..`; for
///   `EPW > 4`, the one word `w.x` and the group's index `sub` inside it), converted by bit
///   operations only;
/// - `fn k_row_scale(row: u32) -> f32`, `fn k_row_zero(row: u32) -> f32` (and `v_`): the
///   row's terms, so that `value = (raw - zero) * scale` (symmetric modes include
///   `common/no_zero_point.wgsl` for `K_HAS_ZERO`/`k_row_zero` and their V twins);
/// - `const TILE_UNIT: f32`, `fn k_tile4(w, sub)` / `v_tile4`: the tile form the prefill
///   kernel stages, raw = tile × `TILE_UNIT` (modes whose raw values f16 holds include
///   `common/tile_raw.wgsl`: the raw values, unit 1; INT2 gives its centroids as integers).
///
/// The kernels then compute `q·k = scale·(q·raw − zero·Σq)` and fold the V scale into `p`.
#[derive(Clone, Debug)]
pub struct Codec {
    /// Read contract v2 (above).
    pub decode: &'static str,
    /// Write contract for `write_rows.wgsl` (`CODE_BITS`, `HAS_SCALE_CACHE`, `enc_transform`,
    /// `enc_init`, `enc_stat`, `enc_fold`, `enc_params`, `enc_code`); `None` for modes that
    /// store rows as given.
    pub encode: Option<&'static str>,
    /// Query/output transform contract (`HAS_TRANSFORM`, `q_transform`, `out_transform`,
    /// `transform_score_scale`, see `common/no_transform.wgsl`); `None` = identity.
    pub transform: Option<&'static str>,
    /// The same contract for a kernel whose query rows were transformed by a pass of their own
    /// and whose output rows a later pass transforms back (the prefill kernel): no transform
    /// (`HAS_TRANSFORM = false`, identity `q_transform`/`out_transform`) but the mode's
    /// `transform_score_scale`. Required where `transform` is set.
    pub transform_apart: Option<&'static str>,
    /// Extra WGSL files the contracts include, as (path, source).
    pub includes: &'static [(&'static str, &'static str)],
    /// Override constants the mode's encode contract declares (its options, e.g. INT8
    /// rounding), set on the write pipeline only.
    pub encode_constants: Vec<(&'static str, f64)>,
}

impl Codec {
    /// The transform contract, the core's identity one when the mode has none.
    pub fn transform_source(&self) -> &'static str {
        self.transform
            .unwrap_or(include_str!("../../shaders/common/no_transform.wgsl"))
    }

    /// The transform contract for kernels that run with the transform apart (see
    /// `transform_apart`), the core's identity one when the mode has no transform.
    pub fn transform_apart_source(&self) -> &'static str {
        self.transform_apart
            .unwrap_or(include_str!("../../shaders/common/no_transform.wgsl"))
    }
}

pub use int8_per_token_head::Int8Rounding;

/// The options of every mode, each field owned (read and validated) by the mode it names; the
/// core passes this through untouched. Modes without options ignore it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ModeOptions {
    /// `int8_per_token_head`: how codes are rounded (spec §3.3).
    pub int8_rounding: Int8Rounding,
}

impl ModeOptions {
    /// Options with the INT8 per-(token, head) rounding set.
    pub fn with_int8_rounding(mut self, r: Int8Rounding) -> Self {
        self.int8_rounding = r;
        self
    }
}

/// What the CPU codec of one row needs besides the values.
#[derive(Clone, Copy, Debug)]
pub struct RowCodec {
    /// Model dtype (the storage of mode `none`).
    pub dtype: Dtype,
    /// Per-tensor scale of this side (K or V) for per-tensor modes.
    pub tensor_scale: f32,
    /// The cache's mode options.
    pub options: ModeOptions,
}

/// One KV storage format: its metadata, its options, its WGSL codec and its CPU codec. The
/// core kernels run every mode from this description; a mode never runs GPU work itself.
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
    /// Cached elements per u32 word for `dtype` (the codec's `K_EPW`): 1 for f32 rows, 2 for
    /// 16-bit rows, 4 for 8-bit codes, 8 and 16 for 4- and 2-bit codes.
    fn elems_per_word(&self, dtype: Dtype) -> u32 {
        4 * self.packing_factor() / self.cache_elem_bytes(dtype)
    }
    /// Whether the mode stores one f32 scale per (block, slot, kv head) for K and for V.
    fn needs_scale_caches(&self) -> bool {
        false
    }
    /// The mode's WGSL contracts for `dtype` and `options`.
    fn codec(&self, dtype: Dtype, options: &ModeOptions) -> Codec;
    /// The mode's options folded into bits for the pipeline key (0 for modes without options).
    fn option_bits(&self, _options: &ModeOptions) -> u32 {
        0
    }
    /// Whether the mode's write path is a plain row copy (rows stored as given).
    fn stores_rows_as_given(&self) -> bool {
        false
    }
    /// Whether every value of the read contract's tile form (`k_tile4`/`v_tile4`, raw =
    /// tile × `TILE_UNIT`, less the zero point over the unit; `common/tile_raw.wgsl` gives
    /// the raw values in units of 1) is exact in f16, so f16 tiles hold the cache without
    /// rounding. Where it is not, the prefill kernel on cooperative matrices holds K (and V
    /// for FP8 outputs) as hi + lo f16 pairs, at about twice the Q Kᵀ cost.
    fn tile_values_exact_in_f16(&self) -> bool {
        true
    }
    /// Whether the mode reads one caller-given scale for K and one for V.
    fn uses_tensor_scales(&self) -> bool {
        false
    }
    /// A per-tensor scale calibrated from a batch of values (per-tensor modes: `absmax / qmax`
    /// of their code range, at least 1e-6; 1 for the others).
    fn calibrate_tensor_scale(&self, _values: &[f32]) -> f32 {
        1.0
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
    /// The WGSL and Rust files this mode owns, relative to the crate root (the contributor
    /// recipe: adding a mode adds exactly these plus one registry line).
    fn owned_files(&self) -> Vec<String> {
        let id = self.mode().id();
        vec![format!("src/modes/{id}.rs"), format!("shaders/modes/{id}/")]
    }
}

/// Creates a fresh backend of `mode`, or `None` when the mode is not built yet. Most callers
/// want [`backend`], which creates each backend once per process. The one line per mode.
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

static REGISTRY: OnceLock<Mutex<HashMap<KvQuantMode, Arc<dyn QuantKvBackend>>>> = OnceLock::new();

/// The backend of `mode`, created on first request (once per process; backends hold no GPU
/// state, pipelines are built per context on first use); [`Error::Unsupported`] for modes not
/// built yet.
pub fn backend(mode: KvQuantMode) -> Result<Arc<dyn QuantKvBackend>> {
    let mut map = REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(b) = map.get(&mode) {
        return Ok(b.clone());
    }
    let b = create(mode).ok_or(Error::Unsupported { mode })?;
    map.insert(mode, b.clone());
    Ok(b)
}

impl KvQuantMode {
    /// Whether this version implements the mode (the others answer [`Error::Unsupported`]).
    pub fn is_supported(self) -> bool {
        create(self).is_some()
    }
}

/// A mode resolved once for one cache: the backend, the cache's options and model dtype, and
/// the codec they select. The kernels take this; nothing looks the mode up again per call.
#[derive(Clone)]
pub struct Resolved {
    backend: Arc<dyn QuantKvBackend>,
    options: ModeOptions,
    dtype: Dtype,
    codec: Codec,
    option_bits: u32,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("mode", &self.backend.mode())
            .field("options", &self.options)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl Resolved {
    /// Resolves `mode` with `options` for model dtype `dtype`.
    pub fn new(mode: KvQuantMode, options: ModeOptions, dtype: Dtype) -> Result<Self> {
        let backend = backend(mode)?;
        let codec = backend.codec(dtype, &options);
        let option_bits = backend.option_bits(&options);
        Ok(Self {
            backend,
            options,
            dtype,
            codec,
            option_bits,
        })
    }

    /// The mode.
    pub fn mode(&self) -> KvQuantMode {
        self.backend.mode()
    }

    /// The backend.
    pub fn backend(&self) -> &dyn QuantKvBackend {
        self.backend.as_ref()
    }

    /// The options.
    pub fn options(&self) -> &ModeOptions {
        &self.options
    }

    /// The codec for the cache's dtype and options.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The options as pipeline-key bits.
    pub fn option_bits(&self) -> u32 {
        self.option_bits
    }

    /// The CPU codec parameters of one side with per-tensor scale `tensor_scale`.
    pub fn row_codec(&self, tensor_scale: f32) -> RowCodec {
        RowCodec {
            dtype: self.dtype,
            tensor_scale,
            options: self.options,
        }
    }
}
