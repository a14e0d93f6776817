//! The core kernels: the write path (`reshape_and_cache`), launch planning (decode / unified
//! rungs, split-K), the attention kernels and the split-K reduce. They take a resolved mode's
//! [`Codec`](crate::modes::Codec) description and the buffers of one layer and one step; they
//! never call back up into the cache or the step, and never name a mode.
//!
//! Dependencies: `modes` (the codec description), `gpu`, `types`, `error`.

pub mod attention;
pub mod plan;
pub mod write;

#[cfg(test)]
mod layout_tests;

use std::sync::{Arc, Mutex};

use crate::modes::Resolved;
use crate::types::{Dtype, KvQuantMode};

pub use attention::{segment_buffer_bytes, AttentionParams};
pub use plan::{
    launch_plan, plan_split, AttentionPath, LaunchPlan, SplitK, COMBINE_MAX_SEGMENTS, MAX_SEGMENTS,
    SUBGROUP_RUNG_MIN_WORKGROUPS,
};

/// The cache geometry the kernels and the planner need (a [`crate::CacheConfig`] seen from
/// below).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Storage format (for error messages; the kernels read the codec, not the mode).
    pub mode: KvQuantMode,
    /// Cached elements per u32 word (the codec's `K_EPW`: 1 for f32 rows, 2 for 16-bit, 4 for
    /// 8-bit codes, 8 and 16 for 4- and 2-bit codes).
    pub elems_per_word: u32,
    /// Physical blocks per pool.
    pub num_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// KV heads.
    pub num_kv_heads: u32,
    /// Head size.
    pub head_size: u32,
    /// Model dtype.
    pub dtype: Dtype,
    /// The mode rotates queries and outputs (its codec has a transform contract).
    pub transform: bool,
    /// Every value of the mode's tile form (before scale and zero point) is exact in f16
    /// ([`crate::QuantKvBackend::tile_values_exact_in_f16`]; every built-in mode: INT2's
    /// tile form holds its centroids as integers).
    pub tile_f16_exact: bool,
}

/// What validation learned about a step (also an input of [`plan_split`], so constructible).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepSummary {
    /// Sequences.
    pub num_seqs: u32,
    /// Query tokens (`cu_seqlens_q[num_seqs]`).
    pub num_tokens_q: u32,
    /// Written tokens (`slot_mapping.len()`).
    pub num_write: u32,
    /// Longest query.
    pub max_seqlen_q: u32,
    /// Longest KV length.
    pub max_seqlen_k: u32,
}

/// The GPU side of one step's metadata (held by a [`crate::BatchPlan`]).
pub(crate) struct StepGpu {
    pub summary: StepSummary,
    pub num_blocks: u32,
    pub block_size: u32,
    pub uniform: wgpu::Buffer,
    pub meta: wgpu::Buffer,
    pub has_qq: bool,
    pub has_mm: bool,
    /// Every written token is the newest key of its own decode row (see `step::writes_newest`):
    /// the attention kernel may write the rows itself.
    pub writes_newest: bool,
    /// Sequences with exactly one query token, and their longest KV length (the decode part
    /// of a mixed batch; see `attention::decode_apart`).
    pub decode_seqs: u32,
    pub decode_max_k: u32,
    /// Split-K partials, created on the first split call of this step and reused by later
    /// layers.
    pub partials: Mutex<Option<Arc<wgpu::Buffer>>>,
    /// Rotated query rows of calls that run the mode's transform apart (see `partials`).
    pub rotated_q: Mutex<Option<Arc<wgpu::Buffer>>>,
    /// The decode kernel's split-K arrival counters (`Features::COMBINE`; see `partials`).
    /// Zero when created, and every dispatch leaves them zero: the last workgroup of each
    /// (sequence, head chunk) resets its counter.
    pub arrivals: Mutex<Option<Arc<wgpu::Buffer>>>,
}

/// One layer of a cache as the kernels see it.
pub(crate) struct LayerRef<'a> {
    pub mode: &'a Resolved,
    pub geometry: Geometry,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub k_scale: &'a wgpu::Buffer,
    pub v_scale: &'a wgpu::Buffer,
    pub tensor_scales: (f32, f32),
}

/// Where a call records: its own compute pass in an encoder, or a pass the caller holds (one
/// pass for a whole step saves wgpu's per-pass cost at finish and submit).
pub(crate) enum Rec<'a, 'p> {
    /// Begin (and end) a pass of our own in this encoder.
    Enc(&'a mut wgpu::CommandEncoder),
    /// Record into the caller's pass.
    Pass(&'a mut wgpu::ComputePass<'p>),
}

impl Rec<'_, '_> {
    /// Runs `f` on the pass to record into.
    pub(crate) fn record(self, label: &'static str, f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
        match self {
            Rec::Enc(enc) => {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes: None,
                });
                f(&mut pass);
            }
            Rec::Pass(pass) => f(pass),
        }
    }
}

/// Checks that `step` was made for the layer's cache geometry.
pub(crate) fn check_step(g: &Geometry, step: &StepGpu) -> crate::Result<()> {
    if step.num_blocks != g.num_blocks || step.block_size != g.block_size {
        return Err(crate::error::invalid(
            "plan",
            format!(
                "made for {} blocks of {}, cache has {} blocks of {}",
                step.num_blocks, step.block_size, g.num_blocks, g.block_size
            ),
        ));
    }
    Ok(())
}

/// The layer uniform of `layer` with the per-call fields at their neutral values.
pub(crate) fn layer_uniform(layer: &LayerRef<'_>) -> crate::gpu::uniforms::LayerUniform {
    let g = &layer.geometry;
    let row_words = (layer.mode.backend().row_bytes(g.head_size, g.dtype) / 4) as u32;
    crate::gpu::uniforms::LayerUniform {
        num_kv_heads: g.num_kv_heads,
        block_size: g.block_size,
        num_blocks: g.num_blocks,
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

/// Whether the diagnostics flag `var` is set in the environment (read once into `cell`);
/// always false without the `debug-knobs` feature.
pub(crate) fn debug_flag(cell: &'static std::sync::OnceLock<bool>, var: &str) -> bool {
    cfg!(feature = "debug-knobs") && *cell.get_or_init(|| std::env::var_os(var).is_some())
}

/// Profiling knobs (cargo feature `debug-knobs`, off by default): `QUANTKV_DEBUG_SKIP` bits
/// remove parts of the attention kernels (low bits; 28 and 29 leave out the split-K reduce and
/// the attention dispatch) and of the quantizing write kernel (bits 20-24, see
/// kernels/write_rows.wgsl; 12-14 the decode kernel's split-K combine, see decode_common.wgsl and
/// `attention::combine_prelude`) so their cost shows in GPU time. Results are wrong while set, so
/// the value is part of the pipeline key, and without the feature it is always 0.
pub(crate) fn debug_skip() -> u32 {
    #[cfg(feature = "debug-knobs")]
    {
        static SKIP: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        *SKIP.get_or_init(|| {
            std::env::var("QUANTKV_DEBUG_SKIP")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }
    #[cfg(not(feature = "debug-knobs"))]
    {
        0
    }
}
