//! `unified_attention`: parameters, their validation, the 2D / split-K planner, and encoding.
//!
//! Semantics follow spec §6: for query row `i` of sequence `s` (absolute position
//! `qpos = context_len + i`, `context_len = seqused_k - query_len`) and head `h` reading kv head
//! `h / (num_q_heads / num_kv_heads)`, each key `k < seqused_k` gets the score
//! `S = softmax_scale · q·k`, then `softcap·tanh(S/softcap)` when `softcap > 0`, then the mask
//! (`k <= qpos` and, with a window, `qpos - k < W`, or both inside one prefix range), then ALiBi
//! and qq_bias; the output is `Σ softmax(S)·v`, with sinks joining the denominator only.

use std::sync::Arc;

use crate::cache::{bind, check_layer, LayerKv, LayerUniform, Tensor};
use crate::context::Context;
use crate::error::{invalid, shape, Error, Result};
use crate::modes::{Codec, Dtype, QuantKvBackend};
use crate::pipeline::{
    storage_entry, uniform_entry, Features, Kernel, PipelineKey, PipelineSource, Tiling,
};
use crate::step::BatchPlan;

/// How decode rows are split over the key axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SplitK {
    /// The planner decides from the batch shape (spec §10.5).
    #[default]
    Auto,
    /// Never split.
    Off,
    /// Always split decode batches into exactly this many segments (2..=256). With a fixed count
    /// the result is bitwise identical from run to run on one device.
    Segments(u32),
}

/// Which attention kernel runs a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttentionPath {
    /// The decode kernel for batches whose every query length is <= 1 (and that carry no
    /// prefix ranges); the unified kernel otherwise. The decode kernel takes its subgroup rung
    /// where the adapter's subgroups hold at least 8 invocations and the launch fills the GPU
    /// (at least [`SUBGROUP_RUNG_MIN_WORKGROUPS`] workgroups), its portable rung otherwise.
    #[default]
    Auto,
    /// Always the unified kernel (for comparison and for testing it on decode batches).
    Unified,
    /// The decode kernel's portable rung (no subgroup operations) for decode batches, even
    /// where `Auto` would take the subgroup rung.
    DecodePortable,
    /// The decode kernel's subgroup rung for decode batches whatever their size, where the
    /// adapter has subgroups of at least 8 invocations (the portable rung elsewhere).
    DecodeSubgroups,
}

/// Workgroups from which `AttentionPath::Auto` takes the decode kernel's subgroup rung.
/// Measured on an H200 (BENCHMARKS.md): the subgroup rung is 1.2–1.3x faster from 512
/// workgroups up (B=8 L=8k 209 vs 256 µs, B=64 L=2k 376 vs 471 µs), and about 12% slower
/// below 256 (B=1 L=1k 45.2 vs 39.6 µs, B=1 L=4k 51.3 vs 45.9 µs).
pub const SUBGROUP_RUNG_MIN_WORKGROUPS: u32 = 512;

/// Per-call attention parameters (the per-step metadata lives in the [`BatchPlan`]).
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams<'a> {
    /// Query heads; a multiple of the cache's kv heads.
    pub num_q_heads: u32,
    /// Multiplies `q·k` (usually `1/sqrt(head_size)`).
    pub softmax_scale: f32,
    /// `(left, right)`: a query sees itself and `left` earlier keys (`W = left + 1`); -1 =
    /// unbounded. `right` is ignored (attention is causal).
    pub window_size: (i32, i32),
    /// `S = softcap · tanh(S / softcap)` when > 0 (applied before masking).
    pub softcap: f32,
    /// `[num_q_heads]` sink logits: each adds `exp(sink - M)` to its head's softmax denominator.
    pub sinks: Option<&'a [f32]>,
    /// `[num_q_heads]` ALiBi slopes: `S += slope·(key_pos - context_len)`, or with
    /// `use_alibi_sqrt`, `S += slope·(rel <= 0 ? -sqrt(-rel) : 0)` with `rel = key_pos - qpos`.
    pub alibi_slopes: Option<&'a [f32]>,
    /// Selects the sqrt form of ALiBi.
    pub use_alibi_sqrt: bool,
    /// Split-K choice for decode batches.
    pub split: SplitK,
    /// Upstream's `seq_threshold_3D`: when set, split-K is used only for batches of at most this
    /// many sequences (on top of the decode-only rule).
    pub seq_threshold_3d: Option<u32>,
    /// FP8 output (spec §6.4): when set, `out` is e4m3fn (`Dtype::Fp8E4m3`, four codes per
    /// word) holding `clamp(o / output_scale, ±448)` rounded to nearest even.
    pub output_scale: Option<f32>,
    /// Caller-provided split-K partial buffer (upstream's `softmax_segm_*`), `STORAGE` usage, at
    /// least [`segment_buffer_bytes`] long; when `None`, the step's own pool is used.
    pub segment_buffer: Option<&'a wgpu::Buffer>,
    /// Kernel choice; [`AttentionPath::Auto`] unless comparing kernels.
    pub path: AttentionPath,
}

/// Bytes of split-K partials for `num_tokens` rows: per (token, q head, segment) the
/// unnormalised accumulator (`head_size` f32) plus its running max and sum (2 f32).
pub fn segment_buffer_bytes(
    num_tokens: u32,
    num_q_heads: u32,
    segments: u32,
    head_size: u32,
) -> u64 {
    num_tokens as u64 * num_q_heads as u64 * segments as u64 * (head_size as u64 + 2) * 4
}

impl Default for AttentionParams<'_> {
    fn default() -> Self {
        Self {
            num_q_heads: 0,
            softmax_scale: 1.0,
            window_size: (-1, -1),
            softcap: 0.0,
            sinks: None,
            alibi_slopes: None,
            use_alibi_sqrt: false,
            split: SplitK::Auto,
            seq_threshold_3d: None,
            output_scale: None,
            segment_buffer: None,
            path: AttentionPath::Auto,
        }
    }
}

impl AttentionParams<'_> {
    /// Checks the parameters against `num_kv_heads`. Pure: no GPU needed.
    pub fn validate(&self, num_kv_heads: u32) -> Result<()> {
        let hq = self.num_q_heads;
        if hq == 0 || num_kv_heads == 0 || !hq.is_multiple_of(num_kv_heads) {
            return Err(invalid(
                "num_q_heads",
                format!("{hq} is not a positive multiple of num_kv_heads {num_kv_heads}"),
            ));
        }
        if !self.softmax_scale.is_finite() {
            return Err(invalid("softmax_scale", "must be finite"));
        }
        if !self.softcap.is_finite() || self.softcap < 0.0 {
            return Err(invalid("softcap", "must be finite and >= 0 (0 = off)"));
        }
        if self.window_size.0 < -1 {
            return Err(invalid(
                "window_size",
                format!("left {} must be >= -1", self.window_size.0),
            ));
        }
        for (what, v) in [("sinks", self.sinks), ("alibi_slopes", self.alibi_slopes)] {
            if let Some(v) = v {
                if v.len() != hq as usize {
                    return Err(shape(
                        what,
                        format!("{hq} values (num_q_heads)"),
                        format!("{} values", v.len()),
                    ));
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(invalid(what, "values must be finite"));
                }
            }
        }
        if self.use_alibi_sqrt && self.alibi_slopes.is_none() {
            return Err(invalid("use_alibi_sqrt", "set without alibi_slopes"));
        }
        if let Some(s) = self.output_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(invalid(
                    "output_scale",
                    format!("{s} must be finite and > 0"),
                ));
            }
        }
        if let SplitK::Segments(n) = self.split {
            if !(2..=MAX_SEGMENTS).contains(&n) {
                return Err(invalid(
                    "split",
                    format!("segments {n} not in 2..={MAX_SEGMENTS}"),
                ));
            }
        }
        Ok(())
    }

    fn features(&self, plan: &BatchPlan) -> Features {
        let mut f = 0;
        if self.softcap > 0.0 {
            f |= Features::SOFTCAP;
        }
        if self.sinks.is_some() {
            f |= Features::SINKS;
        }
        if self.alibi_slopes.is_some() {
            f |= if self.use_alibi_sqrt {
                Features::ALIBI_SQRT
            } else {
                Features::ALIBI
            };
        }
        if plan.has_qq {
            f |= Features::QQ_BIAS;
        }
        if plan.has_mm {
            f |= Features::MM_PREFIX;
        }
        if self.output_scale.is_some() {
            f |= Features::OUT_FP8;
        }
        Features(f)
    }
}

/// Arguments of `unified_attention`.
pub struct Attention<'a> {
    /// The step.
    pub plan: &'a BatchPlan,
    /// The layer's cache.
    pub layer: &'a LayerKv,
    /// `[>= num_tokens_q, num_q_heads, head_size]`, model dtype.
    pub q: Tensor<'a>,
    /// `[>= num_tokens_q, num_q_heads, head_size]`, model dtype; rows past `num_tokens_q` are
    /// left untouched.
    pub out: Tensor<'a>,
    /// Parameters.
    pub params: &'a AttentionParams<'a>,
}

/// The planner's choice for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    /// [`Kernel::Attention`] (unified) or [`Kernel::Decode`].
    pub kernel: Kernel,
    /// The decode kernel's subgroup rung.
    pub subgroups: bool,
    /// Segments over the key axis (1 = the 2D path).
    pub segments: u32,
    /// Workgroups of the main pass.
    pub grid: [u32; 3],
    /// Workgroup geometry of the main pass (for the decode kernel, `tile` is the key chunk).
    pub tiling: Tiling,
    /// Query heads per workgroup.
    pub heads_per_wg: u32,
    /// Query tokens per workgroup.
    pub q_per_wg: u32,
    /// Workgroups per kv head along y (ceil(qpk / heads_per_wg)).
    pub head_chunks: u32,
}

/// How a call with these parameters will be launched on a device with `caps` (the same
/// computation `unified_attention` does; public so benchmarks and callers can see it).
/// `prefix_ranges`: whether the step carries `mm_prefix_range` (those batches always take the
/// unified kernel).
pub fn launch_plan(
    caps: &crate::context::Caps,
    cfg: &crate::cache::CacheConfig,
    sum: &crate::step::StepSummary,
    p: &AttentionParams<'_>,
    prefix_ranges: bool,
) -> Result<LaunchPlan> {
    p.validate(cfg.num_kv_heads)?;
    let limits = &caps.limits;
    let qpk = p.num_q_heads / cfg.num_kv_heads;
    let rows = Tiling::rows_for(qpk, sum.max_seqlen_q);
    let max_dim = limits.max_compute_workgroups_per_dimension;
    let decode = sum.max_seqlen_q <= 1 && !prefix_ranges && p.path != AttentionPath::Unified;
    let chunked = if decode {
        Tiling::for_decode(cfg.head_size, limits, rows)
    } else {
        None
    };
    if let Some(tiling) = chunked {
        let hg = qpk.min(tiling.max_m);
        let chunks = qpk.div_ceil(hg);
        let gy = cfg.num_kv_heads * chunks;
        if sum.num_seqs > max_dim || gy > max_dim {
            return Err(grid_error(sum.num_seqs, gy, max_dim));
        }
        // Segments of at least one chunk each.
        let segments = plan_split(
            p.split,
            p.seq_threshold_3d,
            sum,
            sum.num_seqs * gy,
            tiling.tile / MIN_TILES_PER_SEGMENT,
        );
        return Ok(LaunchPlan {
            kernel: Kernel::Decode,
            subgroups: caps.subgroups
                && caps.subgroup_min_size >= 8
                && match p.path {
                    AttentionPath::DecodeSubgroups => true,
                    AttentionPath::Auto => {
                        sum.num_seqs * gy * segments >= SUBGROUP_RUNG_MIN_WORKGROUPS
                    }
                    _ => false,
                },
            segments,
            grid: [sum.num_seqs, gy, segments],
            tiling,
            heads_per_wg: hg,
            q_per_wg: 1,
            head_chunks: chunks,
        });
    }
    let tiling =
        Tiling::for_attention(cfg.head_size, limits, rows).ok_or(Error::UnsupportedHeadDim {
            mode: cfg.mode,
            got: cfg.head_size,
            multiple_of: 16,
            min: 32,
            max: 256,
        })?;
    let hg = qpk.min(tiling.max_m);
    let bq = (tiling.max_m / hg).max(1);
    let chunks = qpk.div_ceil(hg);
    let gx = sum.num_tokens_q / bq + sum.num_seqs;
    let gy = cfg.num_kv_heads * chunks;
    if gx > max_dim || gy > max_dim {
        return Err(grid_error(gx, gy, max_dim));
    }
    // Decode rows: one query token per sequence, so the real grid is num_seqs x gy.
    let busy = if sum.max_seqlen_q <= 1 {
        sum.num_seqs * gy
    } else {
        gx * gy
    };
    let segments = plan_split(p.split, p.seq_threshold_3d, sum, busy, tiling.tile);
    Ok(LaunchPlan {
        kernel: Kernel::Attention,
        subgroups: false,
        segments,
        grid: [gx, gy, segments],
        tiling,
        heads_per_wg: hg,
        q_per_wg: bq,
        head_chunks: chunks,
    })
}

fn grid_error(gx: u32, gy: u32, max_dim: u32) -> Error {
    invalid(
        "batch",
        format!("grid {gx} x {gy} exceeds the adapter's {max_dim} workgroups per dimension"),
    )
}

/// The split planner's minimum tiles per segment (so the reduce pass stays small).
const MIN_TILES_PER_SEGMENT: u32 = 4;

/// Most split-K segments a call may use.
pub const MAX_SEGMENTS: u32 = 256;

/// Picks 2D vs split-K and the segment count (spec §10.5). Split-K applies to decode batches
/// (every query length <= 1) whose 2D grid is too small to fill the GPU and whose contexts are
/// long enough that each segment still streams several tiles.
pub fn plan_split(
    split: SplitK,
    seq_threshold_3d: Option<u32>,
    summary: &crate::step::StepSummary,
    grid_2d: u32,
    tile: u32,
) -> u32 {
    if summary.max_seqlen_q > 1 || seq_threshold_3d.is_some_and(|t| summary.num_seqs > t) {
        return 1;
    }
    let max_seqlen_k = summary.max_seqlen_k;
    match split {
        SplitK::Off => 1,
        SplitK::Segments(n) => n,
        SplitK::Auto => {
            // Decode streams the cache; what limits it is loads in flight, so aim for enough
            // workgroups to keep every SM of a large GPU busy, while each segment still
            // streams a few tiles so the reduce pass stays small.
            const TARGET_WORKGROUPS: u32 = 512;
            if grid_2d >= TARGET_WORKGROUPS / 2 {
                return 1;
            }
            let tiles = max_seqlen_k.div_ceil(tile);
            let by_work = (tiles / MIN_TILES_PER_SEGMENT).max(1);
            let by_grid = TARGET_WORKGROUPS.div_ceil(grid_2d.max(1));
            let n = by_work.min(by_grid).min(MAX_SEGMENTS);
            if n < 2 {
                1
            } else {
                n
            }
        }
    }
}

/// Default `unified_attention`: validates, plans, then records the core kernels.
pub fn encode<B: QuantKvBackend + ?Sized>(
    backend: &B,
    ctx: &Context,
    enc: &mut wgpu::CommandEncoder,
    a: &Attention<'_>,
) -> Result<()> {
    let cfg = &a.layer.config;
    check_layer(backend.mode(), cfg, a.plan)?;
    let p = a.params;
    p.validate(cfg.num_kv_heads)?;
    let sum = a.plan.summary;
    let hq = p.num_q_heads;
    let inner = [hq, cfg.head_size];
    a.q.check("q", cfg.dtype, sum.num_tokens_q, inner)?;
    let out_dtype = if p.output_scale.is_some() {
        Dtype::Fp8E4m3
    } else {
        cfg.dtype
    };
    a.out.check("out", out_dtype, sum.num_tokens_q, inner)?;
    if a.q.buffer == a.out.buffer {
        return Err(Error::InvalidBuffer {
            what: "out",
            detail: "must not be the q buffer".into(),
        });
    }
    if sum.num_tokens_q == 0 {
        return Ok(());
    }
    let lp = launch_plan(ctx.caps(), cfg, &sum, p, a.plan.has_mm)?;
    let (tiling, segments, [gx, gy, _]) = (lp.tiling, lp.segments, lp.grid);
    let qpk = hq / cfg.num_kv_heads;
    let (hg, bq, chunks) = (lp.heads_per_wg, lp.q_per_wg, lp.head_chunks);

    let mut lu = LayerUniform::for_layer(backend, a.layer);
    lu.num_q_heads = hq;
    lu.qpk = qpk;
    lu.heads_per_wg = hg;
    lu.q_per_wg = bq;
    lu.head_chunks = chunks;
    lu.window = if p.window_size.0 >= 0 {
        p.window_size.0 as u32 + 1
    } else {
        0
    };
    lu.num_segments = segments;
    lu.softmax_scale = p.softmax_scale;
    lu.softcap = p.softcap;
    lu.out_inv_scale = p.output_scale.map(|s| 1.0 / s).unwrap_or(1.0);
    lu.seg_rows = sum.num_tokens_q;
    let mut aux: Vec<f32> = Vec::new();
    if let Some(s) = p.sinks {
        lu.off_sinks = aux.len() as u32;
        aux.extend_from_slice(s);
    }
    if let Some(s) = p.alibi_slopes {
        lu.off_alibi = aux.len() as u32;
        aux.extend_from_slice(s);
    }
    if aux.is_empty() {
        aux.push(0.0);
    }
    let lbuf = ctx.intern(wgpu::BufferUsages::UNIFORM, bytemuck::bytes_of(&lu));
    let abuf = ctx.intern(wgpu::BufferUsages::STORAGE, bytemuck::cast_slice(&aux));

    let mut features = p.features(a.plan);
    if segments > 1 {
        features.0 |= Features::SPLIT;
    }
    if lp.subgroups {
        features.0 |= Features::SUBGROUPS;
    }
    let codec = backend.codec(cfg.dtype);
    let d = cfg.head_size;
    let key = PipelineKey {
        kernel: lp.kernel,
        k: cfg.mode,
        v: cfg.mode,
        head_dim: d,
        dtype: cfg.dtype,
        features,
        tiling,
    };
    let compiled = ctx.pipelines.get(ctx, key, || match lp.kernel {
        Kernel::Decode => decode_source(codec, d, features, tiling),
        _ => attention_source(codec, d, features, tiling),
    })?;

    let pooled;
    let partials = if segments > 1 {
        let need = segment_buffer_bytes(sum.num_tokens_q, hq, segments, d);
        Some(match p.segment_buffer {
            Some(b) => {
                if b.size() < need || !b.usage().contains(wgpu::BufferUsages::STORAGE) {
                    return Err(Error::InvalidBuffer {
                        what: "segment_buffer",
                        detail: format!(
                            "{} bytes ({:?}); {segments} segments need {need} bytes with STORAGE usage",
                            b.size(),
                            b.usage()
                        ),
                    });
                }
                b
            }
            None => {
                pooled = partials_buffer(ctx, a.plan, need)?;
                &*pooled
            }
        })
    } else {
        None
    };
    let target = partials.unwrap_or(a.out.buffer);
    let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("quantkv/attention"),
        layout: &compiled.layout,
        entries: &[
            bind(0, &a.plan.uniform),
            bind(1, &lbuf),
            bind(2, &a.plan.meta),
            bind(3, &abuf),
            bind(4, a.q.buffer),
            bind(5, &a.layer.k),
            bind(6, &a.layer.v),
            bind(7, &a.layer.k_scale),
            bind(8, &a.layer.v_scale),
            bind(9, target),
        ],
    });
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("quantkv/unified_attention"),
        timestamp_writes: None,
    });
    pass.set_pipeline(&compiled.pipeline);
    pass.set_bind_group(0, &bg, &[]);
    pass.dispatch_workgroups(gx, gy, segments);

    if let Some(part) = partials {
        let rkey = PipelineKey {
            kernel: Kernel::Reduce,
            features: Features(features.0 & (Features::SINKS | Features::OUT_FP8)),
            tiling: Tiling {
                wg_size: reduce_wg(d),
                tile: 0,
                max_m: 0,
            },
            ..key
        };
        let reduce = ctx
            .pipelines
            .get(ctx, rkey, || reduce_source(codec, d, features))?;
        let rbg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("quantkv/reduce"),
            layout: &reduce.layout,
            entries: &[
                bind(0, &a.plan.uniform),
                bind(1, &lbuf),
                bind(3, &abuf),
                bind(4, part),
                bind(9, a.out.buffer),
            ],
        });
        pass.set_pipeline(&reduce.pipeline);
        pass.set_bind_group(0, &rbg, &[]);
        pass.dispatch_workgroups(sum.num_tokens_q, hq, 1);
    }
    Ok(())
}

/// The attention kernel's source, override constants and layout for one variant.
pub fn attention_source(
    codec: Codec,
    d: u32,
    f: Features,
    tiling: Tiling,
) -> PipelineSource<'static> {
    PipelineSource {
        kernel: include_str!("../../shaders/attention/unified.wgsl"),
        codec: vec![codec.decode, codec.transform_source()],
        prelude: String::new(),
        includes: codec.includes,
        constants: vec![
            ("TILE", tiling.tile as f64),
            ("KV_SH_LEN", (tiling.tile * (d / 4 + 1)) as f64),
            ("S_SH_LEN", (tiling.max_m * tiling.tile) as f64),
            (
                "ACC_N",
                (tiling.max_m * d / 4).div_ceil(tiling.wg_size) as f64,
            ),
            ("HAS_MM", flag(f, Features::MM_PREFIX)),
            ("DEBUG_SKIP", debug_skip() as f64),
        ]
        .into_iter()
        .chain(shared_constants(d, f, tiling))
        .collect(),
        entries: attention_entries(),
    }
}

/// The decode kernel's source, override constants and layout for one variant (`tiling.tile` is
/// the key chunk; `Features::SUBGROUPS` selects the subgroup entry).
pub fn decode_source(codec: Codec, d: u32, f: Features, tiling: Tiling) -> PipelineSource<'static> {
    PipelineSource {
        kernel: if f.has(Features::SUBGROUPS) {
            include_str!("../../shaders/attention/decode_entry_sg.wgsl")
        } else {
            include_str!("../../shaders/attention/decode_entry.wgsl")
        },
        codec: vec![codec.decode, codec.transform_source()],
        prelude: format!("const M_MAX: u32 = {}u;\n", tiling.max_m),
        includes: codec.includes,
        constants: vec![
            ("CHUNK", tiling.tile as f64),
            ("S_SH_LEN", (tiling.max_m * tiling.tile) as f64),
            ("RED_LEN", (tiling.max_m * tiling.wg_size) as f64),
            ("DEBUG_SKIP", debug_skip() as f64),
        ]
        .into_iter()
        .chain(shared_constants(d, f, tiling))
        .collect(),
        entries: attention_entries(),
    }
}

/// The geometry and feature overrides both attention kernels declare.
fn shared_constants(d: u32, f: Features, tiling: Tiling) -> [(&'static str, f64); 10] {
    let alibi = if f.has(Features::ALIBI_SQRT) {
        2.0
    } else {
        flag(f, Features::ALIBI)
    };
    [
        ("HEAD_DIM", d as f64),
        ("WG_SIZE", tiling.wg_size as f64),
        ("MAX_M", tiling.max_m as f64),
        ("Q_SH_LEN", (tiling.max_m * d / 4) as f64),
        ("HAS_SOFTCAP", flag(f, Features::SOFTCAP)),
        ("HAS_SINKS", flag(f, Features::SINKS)),
        ("ALIBI_MODE", alibi),
        ("HAS_QQ", flag(f, Features::QQ_BIAS)),
        ("IS_SPLIT", flag(f, Features::SPLIT)),
        ("OUT_FP8", flag(f, Features::OUT_FP8)),
    ]
}

/// The split-K reduce kernel's source, constants and layout.
pub fn reduce_source(codec: Codec, d: u32, f: Features) -> PipelineSource<'static> {
    PipelineSource {
        kernel: include_str!("../../shaders/attention/reduce.wgsl"),
        codec: vec![codec.transform_source()],
        prelude: String::new(),
        includes: codec.includes,
        constants: vec![
            ("HEAD_DIM", d as f64),
            ("WG_SIZE", reduce_wg(d) as f64),
            ("HAS_SINKS", flag(f, Features::SINKS)),
            ("OUT_FP8", flag(f, Features::OUT_FP8)),
            ("Q_SH_LEN", (d / 4) as f64),
        ],
        entries: vec![
            uniform_entry(0),
            uniform_entry(1),
            storage_entry(3, true),
            storage_entry(4, true),
            storage_entry(9, false),
        ],
    }
}

/// Diagnostics for kernel profiling: `QUANTKV_DEBUG_SKIP` (bits: 1 K/V loads, 2 q.k dots,
/// 4 P.V) removes parts of the attention kernel so their cost shows in GPU time. Results are
/// wrong while it is set; never set it outside profiling.
fn debug_skip() -> u32 {
    std::env::var("QUANTKV_DEBUG_SKIP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reduce workgroup size (a power of two; head_size/4 <= 64 divides it into >= 2 slices).
fn reduce_wg(_d: u32) -> u32 {
    128
}

fn flag(f: Features, bit: u32) -> f64 {
    if f.has(bit) {
        1.0
    } else {
        0.0
    }
}

fn attention_entries() -> Vec<wgpu::BindGroupLayoutEntry> {
    let mut e = vec![uniform_entry(0), uniform_entry(1)];
    for b in 2..=8 {
        e.push(storage_entry(b, true));
    }
    e.push(storage_entry(9, false));
    e
}

/// The plan's split-K partial buffer, created on first use (and grown if a later layer needs
/// more), so layers of one step share it instead of creating one per call.
fn partials_buffer(ctx: &Context, plan: &BatchPlan, bytes: u64) -> Result<Arc<wgpu::Buffer>> {
    let limit = ctx.limits().max_storage_buffer_binding_size;
    if bytes > limit {
        return Err(Error::InvalidBuffer {
            what: "split-K partials",
            detail: format!("{bytes} bytes exceed the binding limit {limit}; use fewer segments"),
        });
    }
    let mut slot = plan.partials.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = slot.as_ref() {
        if b.size() >= bytes {
            return Ok(b.clone());
        }
    }
    let b = Arc::new(ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("quantkv/split_partials"),
        size: bytes.max(16),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    }));
    *slot = Some(b.clone());
    Ok(b)
}

impl crate::cache::KvCache {
    /// Paged attention over `a.layer` (one of this cache's layers) for `a.plan`'s batch,
    /// recording into `enc`. Shorthand for the backend's [`QuantKvBackend::unified_attention`].
    pub fn unified_attention(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        a: &Attention<'_>,
    ) -> Result<()> {
        ctx.backend(self.config().mode)?
            .unified_attention(ctx, enc, a)
    }
}
