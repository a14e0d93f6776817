//! [`CacheConfig`]: the shape and format of a model's KV cache, its validation and its byte
//! footprint. Pure host code: no GPU needed.

use crate::error::{invalid, Error, Result};
use crate::kernels::Geometry;
use crate::modes::{self, ModeOptions, QuantKvBackend};
use crate::types::{Dtype, KvQuantMode};

/// Smallest supported head size.
pub const MIN_HEAD_SIZE: u32 = 32;
/// Largest supported head size (spec §10.8).
pub const MAX_HEAD_SIZE: u32 = 256;
/// Most layers a cache may have.
pub const MAX_LAYERS: u32 = 4096;
/// Most KV heads a cache may have.
pub const MAX_KV_HEADS: u32 = 1024;
/// Head sizes must be multiples of this (so every packed row is whole u32 words).
pub const HEAD_SIZE_MULTIPLE: u32 = 16;

/// Shape and format of a model's KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Layers (one K and one V pool each).
    pub num_layers: u32,
    /// Physical blocks per pool.
    pub num_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// KV heads.
    pub num_kv_heads: u32,
    /// Head size (K and V).
    pub head_size: u32,
    /// Storage format.
    pub mode: KvQuantMode,
    /// Model dtype (Q, K/V inputs, output; the cache dtype of mode `none`).
    pub dtype: Dtype,
    /// The mode's options (each field read only by the mode it names).
    pub options: ModeOptions,
}

impl Default for CacheConfig {
    /// One layer of 64 blocks of 16 tokens, 8 KV heads of 128, mode `none`, f16.
    fn default() -> Self {
        Self {
            num_layers: 1,
            num_blocks: 64,
            block_size: 16,
            num_kv_heads: 8,
            head_size: 128,
            mode: KvQuantMode::None,
            dtype: Dtype::F16,
            options: ModeOptions::default(),
        }
    }
}

impl CacheConfig {
    /// Checks the head size (spec §10.8), block size and counts. Pure: no GPU needed.
    pub fn validate(&self) -> Result<()> {
        let d = self.head_size;
        if !d.is_multiple_of(HEAD_SIZE_MULTIPLE) || !(MIN_HEAD_SIZE..=MAX_HEAD_SIZE).contains(&d) {
            return Err(Error::UnsupportedHeadDim {
                mode: self.mode,
                got: d,
                multiple_of: HEAD_SIZE_MULTIPLE,
                min: MIN_HEAD_SIZE,
                max: MAX_HEAD_SIZE,
            });
        }
        if self.dtype == Dtype::Fp8E4m3 {
            return Err(invalid(
                "dtype",
                "fp8 is an attention output format, not a model dtype (use F16, BF16 or F32)",
            ));
        }
        if self.block_size == 0 || self.block_size > 1024 {
            return Err(invalid(
                "block_size",
                format!("{} not in 1..=1024", self.block_size),
            ));
        }
        if self.num_blocks == 0 || self.num_kv_heads == 0 || self.num_layers == 0 {
            return Err(invalid(
                "cache config",
                "num_layers, num_blocks and num_kv_heads must be positive",
            ));
        }
        if self.num_layers > MAX_LAYERS || self.num_kv_heads > MAX_KV_HEADS {
            return Err(invalid(
                "cache config",
                format!(
                    "num_layers {} (max {MAX_LAYERS}) or num_kv_heads {} (max {MAX_KV_HEADS}) too large",
                    self.num_layers, self.num_kv_heads
                ),
            ));
        }
        // Slots are i32 in slot_mapping and block tables; cached rows are u32 indices in the
        // kernels.
        let slots = self.num_blocks as u64 * self.block_size as u64;
        if slots > i32::MAX as u64 || self.rows() > u32::MAX as u64 {
            return Err(invalid(
                "num_blocks",
                format!(
                    "{} blocks of {} tokens x {} kv heads: slots must fit i32 and rows u32",
                    self.num_blocks, self.block_size, self.num_kv_heads
                ),
            ));
        }
        Ok(())
    }

    /// Cached rows per pool (`num_blocks * block_size * num_kv_heads`).
    pub fn rows(&self) -> u64 {
        self.num_blocks as u64 * self.block_size as u64 * self.num_kv_heads as u64
    }

    /// Byte sizes of this configuration ([`Error::Unsupported`] for modes not built yet).
    pub fn footprint(&self) -> Result<CacheFootprint> {
        Ok(footprint(modes::backend(self.mode)?.as_ref(), self))
    }

    /// The geometry the kernels see (`backend`: this config's mode).
    pub(crate) fn geometry(&self, backend: &dyn QuantKvBackend) -> Geometry {
        Geometry {
            mode: self.mode,
            elems_per_word: backend.elems_per_word(self.dtype),
            num_blocks: self.num_blocks,
            block_size: self.block_size,
            num_kv_heads: self.num_kv_heads,
            head_size: self.head_size,
            dtype: self.dtype,
            transform: backend.codec(self.dtype, &self.options).transform.is_some(),
            tile_f16_exact: backend.tile_values_exact_in_f16(),
        }
    }
}

/// Byte sizes of a cache configuration.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheFootprint {
    /// Bytes of one cached row (one token, one kv head) of K, payload only.
    pub row_bytes: u64,
    /// Bytes one token costs across all layers, K and V, scales included.
    pub bytes_per_token: u64,
    /// Bytes of one K (or V) page pool of one layer.
    pub pool_bytes: u64,
    /// Bytes of one K (or V) scale cache of one layer (0 when the mode has none).
    pub scale_bytes: u64,
    /// Bytes of the whole cache.
    pub total_bytes: u64,
}

/// Computes the footprint of `config` for `backend`.
pub fn footprint(backend: &dyn QuantKvBackend, config: &CacheConfig) -> CacheFootprint {
    let row_bytes = backend.row_bytes(config.head_size, config.dtype);
    let slots = config.num_blocks as u64 * config.block_size as u64;
    let scale_row = backend.scale_cache_bytes(1, 1);
    // Saturating: a config too large to express in u64 bytes reports u64::MAX, which no
    // adapter limit admits (KvCache::new rejects it), never a wrapped small size.
    let per_token_layer = (2 * config.num_kv_heads as u64).saturating_mul(row_bytes + scale_row);
    let pool_bytes = config.rows().saturating_mul(row_bytes);
    let scale_bytes = backend.scale_cache_bytes(slots, config.num_kv_heads);
    CacheFootprint {
        row_bytes,
        bytes_per_token: per_token_layer.saturating_mul(config.num_layers as u64),
        pool_bytes,
        scale_bytes,
        total_bytes: pool_bytes
            .saturating_add(scale_bytes)
            .saturating_mul(2 * config.num_layers as u64),
    }
}
