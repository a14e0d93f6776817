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
//! cache.unified_attention(&ctx, &mut enc, &Attention { plan: &plan, layer: cache.layer(0),
//!     q: Tensor::new(&q, Dtype::F16, [3, 8, 64]), out: Tensor::new(&out, Dtype::F16, [3, 8, 64]),
//!     params: &params })?;
//! ctx.queue.submit([enc.finish()]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod attention;
pub mod cache;
pub mod context;
pub mod error;
pub mod modes;
pub mod pipeline;
pub mod reference;
pub mod step;
pub mod timing;

pub use attention::{Attention, AttentionParams, AttentionPath, SplitK};
pub use cache::{CacheConfig, CacheFootprint, CacheWrite, KvCache, LayerKv, Tensor};
pub use context::{AdapterSummary, Caps, Context};
pub use error::{Error, Result};
pub use modes::{Dtype, KvQuantMode, QuantKvBackend};
pub use step::{BatchPlan, PrefixRanges, QqBias, StepInput, StepSummary};
pub use timing::GpuTimer;
