//! The paged KV cache: configuration, allocation within the adapter's limits, and the write
//! path (`reshape_and_cache`).
//!
//! Layout (spec §2.2): each layer's K and V pools are `[num_blocks, block_size, num_kv_heads,
//! packed_head_size]`, row-major; cached row `r = (block * block_size + slot) * num_kv_heads +
//! kv_head` starts at byte `r * row_bytes`. Scale caches, when the mode has them, hold one f32
//! per row at index `r`.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::error::{invalid, shape, Error, Result};
use crate::modes::{Dtype, Int8Rounding, KvQuantMode, QuantKvBackend, RowCodec};
use crate::pipeline::{
    storage_entry, uniform_entry, Features, Kernel, PipelineKey, PipelineSource, Tiling,
};
use crate::step::BatchPlan;

/// Smallest supported head size.
pub const MIN_HEAD_SIZE: u32 = 32;
/// Largest supported head size (spec §10.8).
pub const MAX_HEAD_SIZE: u32 = 256;
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
    /// INT8 per-(token, head) rounding (`Truncate`, upstream's behaviour, by default).
    pub int8_rounding: Int8Rounding,
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
            int8_rounding: Int8Rounding::Truncate,
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
                "fp8 is an attention output format, not a model dtype (use F16 or F32)",
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
        Ok(())
    }

    /// Cached rows per pool (`num_blocks * block_size * num_kv_heads`).
    pub fn rows(&self) -> u64 {
        self.num_blocks as u64 * self.block_size as u64 * self.num_kv_heads as u64
    }
}

/// Byte sizes of a cache configuration.
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
    let per_token_layer = 2 * config.num_kv_heads as u64 * (row_bytes + scale_row);
    let pool_bytes = config.rows() * row_bytes;
    let scale_bytes = backend.scale_cache_bytes(slots, config.num_kv_heads);
    CacheFootprint {
        row_bytes,
        bytes_per_token: per_token_layer * config.num_layers as u64,
        pool_bytes,
        scale_bytes,
        total_bytes: 2 * (pool_bytes + scale_bytes) * config.num_layers as u64,
    }
}

/// One layer's buffers.
pub struct LayerKv {
    /// The cache configuration.
    pub config: CacheConfig,
    /// K page pool (`array<u32>` words).
    pub k: wgpu::Buffer,
    /// V page pool.
    pub v: wgpu::Buffer,
    /// K scale cache (a 16-byte dummy when the mode has none).
    pub k_scale: wgpu::Buffer,
    /// V scale cache (a 16-byte dummy when the mode has none).
    pub v_scale: wgpu::Buffer,
    /// Per-tensor scales (K, V) of per-tensor modes; (1, 1) until set.
    pub tensor_scales: (f32, f32),
}

impl LayerKv {
    /// The CPU codec parameters of this layer's K (`is_v = false`) or V rows.
    pub fn row_codec(&self, is_v: bool) -> RowCodec {
        RowCodec {
            dtype: self.config.dtype,
            tensor_scale: if is_v {
                self.tensor_scales.1
            } else {
                self.tensor_scales.0
            },
            rounding: self.config.int8_rounding,
        }
    }
}

/// A model's KV cache: K and V pools (and scale caches) for every layer.
pub struct KvCache {
    config: CacheConfig,
    footprint: CacheFootprint,
    layers: Vec<LayerKv>,
}

impl KvCache {
    /// Allocates the cache, zero-initialised. Rejects a config whose pools exceed the adapter's
    /// storage-binding or buffer-size limit, naming the largest `num_blocks` that fits.
    pub fn new(ctx: &Context, config: &CacheConfig) -> Result<Self> {
        config.validate()?;
        let backend = ctx.backend(config.mode)?;
        let fp = footprint(backend.as_ref(), config);
        let limits = ctx.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let per_block_pool = fp.pool_bytes / config.num_blocks as u64;
        let per_block_scale = fp.scale_bytes / config.num_blocks as u64;
        for (what, bytes, per_block) in [
            ("KV page pool", fp.pool_bytes, per_block_pool),
            ("scale cache", fp.scale_bytes, per_block_scale),
        ] {
            if bytes > limit {
                return Err(Error::BindingTooLarge {
                    what,
                    bytes,
                    limit,
                    max_num_blocks: (limit / per_block.max(1)).min(u32::MAX as u64) as u32,
                });
            }
        }
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let make = |label: &str, size: u64| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(16),
                usage,
                mapped_at_creation: false,
            })
        };
        let layers = (0..config.num_layers)
            .map(|_| LayerKv {
                config: *config,
                k: make("quantkv/k_pool", fp.pool_bytes),
                v: make("quantkv/v_pool", fp.pool_bytes),
                k_scale: make("quantkv/k_scale", fp.scale_bytes),
                v_scale: make("quantkv/v_scale", fp.scale_bytes),
                tensor_scales: (1.0, 1.0),
            })
            .collect();
        Ok(Self {
            config: *config,
            footprint: fp,
            layers,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Byte sizes.
    pub fn footprint(&self) -> CacheFootprint {
        self.footprint
    }

    /// Layer `i`'s buffers.
    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }

    /// All layers.
    pub fn layers(&self) -> &[LayerKv] {
        &self.layers
    }

    /// Sets layer `layer`'s per-tensor scales (per-tensor modes; calibrated offline, e.g. with
    /// [`crate::reference::quant::calibrate_scale`]). Both must be finite and > 0.
    pub fn set_tensor_scales(&mut self, layer: usize, k_scale: f32, v_scale: f32) -> Result<()> {
        for s in [k_scale, v_scale] {
            if !(s.is_finite() && s > 0.0) {
                return Err(invalid(
                    "tensor scale",
                    format!("{s} must be finite and > 0"),
                ));
            }
        }
        let n = self.layers.len();
        let l = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| invalid("layer", format!("{layer} >= num_layers {n}")))?;
        l.tensor_scales = (k_scale, v_scale);
        Ok(())
    }
}

/// A GPU tensor: a buffer with a dtype and a 3-D shape (row-major, innermost last).
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// The buffer (needs `STORAGE` usage).
    pub buffer: &'a wgpu::Buffer,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, e.g. `[num_tokens, num_heads, head_size]`.
    pub shape: [u32; 3],
}

impl<'a> Tensor<'a> {
    /// A tensor view of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, dtype: Dtype, shape: [u32; 3]) -> Self {
        Self {
            buffer,
            dtype,
            shape,
        }
    }

    /// Bytes the shape covers.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().map(|&s| s as u64).product::<u64>() * self.dtype.size() as u64
    }

    /// Checks dtype, the inner two dims, at least `min_rows` rows, buffer size and usage.
    pub(crate) fn check(
        &self,
        what: &'static str,
        dtype: Dtype,
        min_rows: u32,
        inner: [u32; 2],
    ) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::InvalidArgument {
                what,
                detail: format!(
                    "dtype {:?} does not match the model dtype {dtype:?}",
                    self.dtype
                ),
            });
        }
        if self.shape[1..] != inner || self.shape[0] < min_rows {
            return Err(shape(
                what,
                format!("[>= {min_rows}, {}, {}]", inner[0], inner[1]),
                format!("{:?}", self.shape),
            ));
        }
        if self.buffer.size() < self.bytes() {
            return Err(Error::InvalidBuffer {
                what,
                detail: format!(
                    "{} bytes, shape {:?} needs {}",
                    self.buffer.size(),
                    self.shape,
                    self.bytes()
                ),
            });
        }
        if !self.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidBuffer {
                what,
                detail: "needs STORAGE usage".into(),
            });
        }
        Ok(())
    }
}

/// Arguments of `reshape_and_cache`.
pub struct CacheWrite<'a> {
    /// The step (its `slot_mapping` says where each token goes).
    pub plan: &'a BatchPlan,
    /// The layer to write.
    pub layer: &'a LayerKv,
    /// `[num_write_tokens, num_kv_heads, head_size]`, model dtype.
    pub key: Tensor<'a>,
    /// `[num_write_tokens, num_kv_heads, head_size]`, model dtype.
    pub value: Tensor<'a>,
}

/// GPU copy of the layer uniform (`LayerU` in `shaders/common/uniforms.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub(crate) struct LayerUniform {
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub qpk: u32,
    pub heads_per_wg: u32,
    pub q_per_wg: u32,
    pub head_chunks: u32,
    pub block_size: u32,
    pub num_blocks: u32,
    pub k_row_words: u32,
    pub v_row_words: u32,
    pub window: u32,
    pub num_segments: u32,
    pub softmax_scale: f32,
    pub softcap: f32,
    pub k_tensor_scale: f32,
    pub v_tensor_scale: f32,
    pub out_inv_scale: f32,
    pub off_sinks: u32,
    pub off_alibi: u32,
    pub seg_rows: u32,
}

impl LayerUniform {
    pub(crate) fn for_layer(backend: &(impl QuantKvBackend + ?Sized), layer: &LayerKv) -> Self {
        let cfg = &layer.config;
        let row_words = (backend.row_bytes(cfg.head_size, cfg.dtype) / 4) as u32;
        Self {
            num_kv_heads: cfg.num_kv_heads,
            block_size: cfg.block_size,
            num_blocks: cfg.num_blocks,
            k_row_words: row_words,
            v_row_words: row_words,
            num_segments: 1,
            softmax_scale: 1.0,
            k_tensor_scale: layer.tensor_scales.0,
            v_tensor_scale: layer.tensor_scales.1,
            out_inv_scale: 1.0,
            ..Default::default()
        }
    }
}

/// Checks that a layer of `cfg` belongs to the backend of `mode` and that `plan` was made for
/// its cache geometry.
pub(crate) fn check_layer(mode: KvQuantMode, cfg: &CacheConfig, plan: &BatchPlan) -> Result<()> {
    if cfg.mode != mode {
        return Err(invalid(
            "layer",
            format!("cache mode {:?} used with backend {mode:?}", cfg.mode),
        ));
    }
    if plan.num_blocks != cfg.num_blocks || plan.block_size != cfg.block_size {
        return Err(invalid(
            "plan",
            format!(
                "made for {} blocks of {}, cache has {} blocks of {}",
                plan.num_blocks, plan.block_size, cfg.num_blocks, cfg.block_size
            ),
        ));
    }
    Ok(())
}

/// Default `reshape_and_cache`: validates, then records the core write kernel.
pub fn encode_write<B: QuantKvBackend + ?Sized>(
    backend: &B,
    ctx: &Context,
    enc: &mut wgpu::CommandEncoder,
    w: &CacheWrite<'_>,
) -> Result<()> {
    let cfg = &w.layer.config;
    check_layer(backend.mode(), cfg, w.plan)?;
    let n = w.plan.summary.num_write;
    let inner = [cfg.num_kv_heads, cfg.head_size];
    w.key.check("key", cfg.dtype, n, inner)?;
    w.value.check("value", cfg.dtype, n, inner)?;
    if w.key.shape[0] != n || w.value.shape[0] != n {
        return Err(shape(
            "key/value",
            format!("{n} rows (slot_mapping length)"),
            format!("{} and {}", w.key.shape[0], w.value.shape[0]),
        ));
    }
    if n == 0 {
        return Ok(());
    }
    let copy = backend.stores_rows_as_given();
    let tiling = Tiling {
        wg_size: if copy { 256 } else { 64 },
        tile: 0,
        max_m: 0,
    };
    let rne = cfg.int8_rounding == Int8Rounding::NearestEven;
    let key = PipelineKey {
        kernel: if copy {
            Kernel::WriteCopy
        } else {
            Kernel::WriteRows
        },
        k: cfg.mode,
        v: cfg.mode,
        head_dim: cfg.head_size,
        dtype: cfg.dtype,
        features: Features(if rne && !copy { Features::INT8_RNE } else { 0 }),
        tiling,
    };
    let compiled = if copy {
        ctx.pipelines.get(ctx, key, || write_copy_source(tiling))?
    } else {
        let codec = backend.codec(cfg.dtype);
        ctx.pipelines.get(ctx, key, || {
            write_rows_source(codec, cfg.head_size, rne, tiling)
        })?
    };
    let lu = LayerUniform::for_layer(backend, w.layer);
    let lbuf = ctx.intern(wgpu::BufferUsages::UNIFORM, bytemuck::bytes_of(&lu));
    let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("quantkv/write"),
        layout: &compiled.layout,
        entries: &[
            bind(0, &w.plan.uniform),
            bind(1, &lbuf),
            bind(2, &w.plan.meta),
            bind(3, w.key.buffer),
            bind(4, w.value.buffer),
            bind(5, &w.layer.k),
            bind(6, &w.layer.v),
            bind(7, &w.layer.k_scale),
            bind(8, &w.layer.v_scale),
        ],
    });
    let groups = if copy {
        let words = n as u64 * cfg.num_kv_heads as u64 * lu.k_row_words as u64;
        debug_assert!(lu.k_row_words.is_multiple_of(4));
        (words / 4).div_ceil(tiling.wg_size as u64)
    } else {
        n as u64 * cfg.num_kv_heads as u64 * 2
    };
    let (x, y) = grid_2d(groups, ctx.limits().max_compute_workgroups_per_dimension);
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("quantkv/reshape_and_cache"),
        timestamp_writes: None,
    });
    pass.set_pipeline(&compiled.pipeline);
    pass.set_bind_group(0, &bg, &[]);
    pass.dispatch_workgroups(x, y, 1);
    Ok(())
}

/// The row-copy write kernel's source, constants and layout.
pub fn write_copy_source(tiling: Tiling) -> PipelineSource<'static> {
    PipelineSource {
        kernel: include_str!("../../shaders/attention/write_copy.wgsl"),
        codec: vec![],
        prelude: String::new(),
        includes: &[],
        constants: vec![("WG_SIZE", tiling.wg_size as f64)],
        entries: vec![
            uniform_entry(0),
            uniform_entry(1),
            storage_entry(2, true),
            storage_entry(3, true),
            storage_entry(4, true),
            storage_entry(5, false),
            storage_entry(6, false),
            storage_entry(7, false),
            storage_entry(8, false),
        ],
    }
}

/// The quantizing write kernel's source (with the mode's encode contract), constants, layout.
pub fn write_rows_source(
    codec: crate::modes::Codec,
    head_dim: u32,
    int8_rne: bool,
    tiling: Tiling,
) -> PipelineSource<'static> {
    let mut src = write_copy_source(tiling);
    src.kernel = include_str!("../../shaders/attention/write_rows.wgsl");
    src.codec = codec.encode.into_iter().collect();
    src.includes = codec.includes;
    src.constants.push(("HEAD_DIM", head_dim as f64));
    src.constants
        .push(("INT8_RNE", if int8_rne { 1.0 } else { 0.0 }));
    src
}

/// A whole-buffer bind group entry.
pub(crate) fn bind(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

/// Splits `groups` workgroups into an (x, y) grid within the per-dimension limit.
pub(crate) fn grid_2d(groups: u64, max_dim: u32) -> (u32, u32) {
    let max_dim = max_dim.max(1) as u64;
    if groups <= max_dim {
        return (groups.max(1) as u32, 1);
    }
    let y = groups.div_ceil(max_dim);
    let x = groups.div_ceil(y);
    (x as u32, y as u32)
}

impl KvCache {
    /// Writes `key`/`value` rows of `plan`'s tokens into layer `layer` (spec §3), recording into
    /// `enc`. Shorthand for the backend's [`QuantKvBackend::reshape_and_cache`].
    pub fn reshape_and_cache(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        plan: &BatchPlan,
        layer: usize,
        key: Tensor<'_>,
        value: Tensor<'_>,
    ) -> Result<()> {
        let layer = self.layers.get(layer).ok_or_else(|| {
            invalid(
                "layer",
                format!("{layer} >= num_layers {}", self.layers.len()),
            )
        })?;
        ctx.backend(self.config.mode)?.reshape_and_cache(
            ctx,
            enc,
            &CacheWrite {
                plan,
                layer,
                key,
                value,
            },
        )
    }
}
