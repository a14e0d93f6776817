//! # quantkv
//!
//! A quantized, paged KV cache and flash-style attention for any GPU reachable through wgpu
//! (Vulkan, Metal, DX12; lavapipe in CI), following vLLM's Triton "quant KV" backends.
//!
//! ```no_run
//! use quantkv::*;
//! # fn main() -> Result<()> {
//! let ctx = Context::new()?;
//! let cfg = CacheConfig { num_layers: 1, num_blocks: 64, block_size: 16, num_kv_heads: 2,
//!                         head_size: 64, mode: KvQuantMode::None, dtype: Dtype::F16, ..Default::default() };
//! let cache = KvCache::new(&ctx, &cfg)?;
//! // One step: a 3-token prompt written to slots 0..3, then attention over it.
//! let step = StepInput { slot_mapping: &[0, 1, 2], cu_seqlens_q: &[0, 3], seqused_k: &[3],
//!                        block_table: &[0], block_table_stride: 1, ..Default::default() };
//! let plan = BatchPlan::new(&ctx, &cfg, &step)?;
//! let kv = ctx.zeroed("k", 3 * 2 * 64 * 2);
//! let q = ctx.zeroed("q", 3 * 8 * 64 * 2);
//! let out = ctx.zeroed("out", 3 * 8 * 64 * 2);
//! let mut enc = ctx.device.create_command_encoder(&Default::default());
//! let rows = Tensor::new(&kv, Dtype::F16, [3, 2, 64]);
//! cache.reshape_and_cache(&ctx, &mut enc, &plan, 0, rows, rows)?;
//! let params = AttentionParams { num_q_heads: 8, softmax_scale: 0.125, ..Default::default() };
//! cache.unified_attention(&ctx, &mut enc, &Attention { plan: &plan, layer: cache.layer(0)?,
//!     q: Tensor::new(&q, Dtype::F16, [3, 8, 64]), out: Tensor::new(&out, Dtype::F16, [3, 8, 64]),
//!     params: &params })?;
//! ctx.queue.submit([enc.finish()]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// Layers, top to bottom; each module uses only the ones below it:
//   snapshot               KV snapshots: sequences' blocks to a file and back
//   cache, step, blocks    public API (KvCache resolves its mode once; BatchPlan per step;
//                          BlockManager: sequences over the pool)
//   config                 CacheConfig and its footprint
//   kernels                write, launch planning, attention kernels, reduce (mode-free)
//   modes                  one file per mode: options, WGSL codec description, CPU codec
//   gpu                    context, pipeline key/cache, WGSL composition, bindings, uniforms
//   types, error           enums and number formats; the error type
// `reference` (the f64 CPU reference) sits beside the stack and may use any of it.
mod blocks;
mod cache;
mod config;
mod error;
mod gpu;
mod kernels;
pub mod modes;
pub mod reference;
mod snapshot;
mod step;
mod types;

pub use wgpu;

pub use blocks::{BlockCopy, BlockManager, BlockStats, ScheduledStep, SeqId};
pub use cache::{Attention, KvCache, LayerKv};
pub use config::{
    footprint, CacheConfig, CacheFootprint, HEAD_SIZE_MULTIPLE, MAX_HEAD_SIZE, MIN_HEAD_SIZE,
};
pub use error::{Error, Result};
pub use gpu::{multiprocessors_for, AdapterSummary, Caps, Context, GpuTimer, Tensor};
pub use kernels::{
    plan_split, segment_buffer_bytes, AttentionParams, AttentionPath, LaunchPlan, SplitK,
    StepSummary, COMBINE_MAX_SEGMENTS, MAX_SEGMENTS, SUBGROUP_RUNG_MIN_WORKGROUPS,
};
pub use modes::{Int8Rounding, ModeOptions, QuantKvBackend};
pub use snapshot::{SnapshotInfo, SNAPSHOT_VERSION};
pub use step::{BatchPlan, PrefixRanges, QqBias, StepInput};
pub use types::{Dtype, KvQuantMode};

/// Internals exposed for the crate's own benchmarks and tools (kernel names of a launch plan,
/// WGSL of every variant). Not part of the stable API.
#[doc(hidden)]
pub mod internal {
    pub use crate::gpu::{Kernel, Tiling};
}
