//! Launch planning: which attention kernel and rung runs a call, its workgroup geometry
//! (sized from the adapter's limits, with workgroup-memory estimates checked against naga in
//! tests), and the split-K segment count.

use super::{AttentionParams, Geometry, StepSummary};
use crate::error::{invalid, Error, Result};
use crate::gpu::{Caps, Kernel, Tiling};

/// How decode rows are split over the key axis.
#[non_exhaustive]
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
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttentionPath {
    /// The decode kernel for batches whose every query length is <= 1 (and that carry no
    /// prefix ranges); otherwise the prefill kernel on cooperative matrices where the adapter
    /// has them ([`crate::Caps::coop_f16`], f16 or bf16 models), the unified kernel elsewhere.
    /// The decode kernel takes its streaming rung where the adapter's smallest subgroup holds
    /// a row's lanes (head size / 8; see [`AttentionPath::DecodeStream`]); else its subgroup
    /// rung where subgroups hold at least 8 invocations and the launch fills the GPU (at least
    /// [`SUBGROUP_RUNG_MIN_WORKGROUPS`] workgroups); its portable rung otherwise.
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
    /// The decode kernel's streaming rung for decode batches, where the adapter's smallest
    /// subgroup holds head size / 8 lanes (the subgroup rung elsewhere): 8 elements per lane
    /// at the code's width (16-byte loads for f16 rows), the query heads of a workgroup as the
    /// components of a vec4, per-key-group online softmax with a lazy rescale, no barrier in
    /// the key loop, the next step's loads in flight while the current one is computed.
    DecodeStream,
    /// The tiled prefill kernel through its scalar fragment twin (the portable tiled kernel),
    /// for any batch, where its tiling fits the adapter (the unified kernel elsewhere).
    PrefillTiled,
    /// The tiled prefill kernel on cooperative matrices (tensor cores), for any batch, where
    /// the adapter has them ([`crate::Caps::coop_f16`]) and the model dtype is f16 or bf16;
    /// [`AttentionPath::PrefillTiled`] elsewhere. Decode batches run on it with one 16-row
    /// block per workgroup, split over the key axis; `Auto` does not take it for them (3–8×
    /// slower than the streaming rung on an H200: it stages every key tile through workgroup
    /// memory between barriers, so a workgroup waits on each tile's loads; BENCHMARKS.md).
    PrefillCoop,
}

/// Workgroups from which `AttentionPath::Auto` takes the decode kernel's subgroup rung.
/// Measured on an H200 (BENCHMARKS.md): the subgroup rung is 1.2–1.3x faster from 512
/// workgroups up (B=8 L=8k 209 vs 256 µs, B=64 L=2k 376 vs 471 µs), and about 12% slower
/// below 256 (B=1 L=1k 45.2 vs 39.6 µs, B=1 L=4k 51.3 vs 45.9 µs).
pub const SUBGROUP_RUNG_MIN_WORKGROUPS: u32 = 512;

/// The planner's choice for one call.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    /// [`Kernel::Attention`] (unified) or [`Kernel::Decode`].
    pub kernel: Kernel,
    /// The decode kernel's subgroup rung.
    pub subgroups: bool,
    /// The decode kernel's streaming rung (implies `subgroups`).
    pub stream: bool,
    /// The prefill kernel on cooperative matrices ([`Kernel::Prefill`] only).
    pub coop: bool,
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
    /// A mixed batch on the prefill or unified kernel (`Auto`): its sequences of one query
    /// token run on the decode kernel in a dispatch of their own (unsplit), the tiled kernel
    /// takes the others (set by [`crate::KvCache::launch_plan`]; this function's plans say
    /// `false`).
    pub decode_apart: bool,
    /// The decode kernel combines its split-K segments itself (no reduce pass): a device with
    /// [`crate::Caps::split_combine`], 2 ..= [`crate::COMBINE_MAX_SEGMENTS`] segments.
    pub combine: bool,
}

/// (maximum, denominator) pairs the decode kernel stages while it combines its split-K
/// segments (workgroup memory: 8 bytes each): at most this many query heads x segments
/// (4 x [`COMBINE_MAX_SEGMENTS`] on the streaming rung, 16 x 16 on a 16-head tiling).
pub const COMBINE_SLOTS: u32 = 256;

/// Workgroup memory of the combine's variables (decode_common.wgsl: the staged pairs and the
/// arrival flag), with the combine or at their size without it (one pair).
fn combine_vars(on: bool) -> u32 {
    r16(if on { COMBINE_SLOTS } else { 1 } * 8) + r16(4)
}

/// Workgroup memory of the combine's per-row maxima (decode_common.wgsl's `cmb_max`, one u32
/// per query head of the workgroup), in the module with the combine or without it.
fn combine_rows(max_m: u32) -> u32 {
    r16(max_m * 4)
}

/// Workgroup memory the combine adds to a decode kernel's ([`decode_smem`], [`stream_smem`]).
pub fn combine_smem() -> u32 {
    combine_vars(true) - combine_vars(false)
}

/// Storage bindings of a decode kernel that combines its segments (2..=9, 12, 13), without the
/// fused write's two.
pub const COMBINE_STORAGE_BINDINGS: u32 = 10;

/// Most segments the decode kernel combines itself (within `COMBINE_SLOTS` (256) pairs: a
/// tiling of 16 query heads combines at most 16); more take the reduce pass. The combine
/// saves the reduce pass's dispatch but reads every segment's partials from one workgroup
/// per (sequence, head chunk), after the last segment ends. Measured on an H200 (BENCHMARKS.md,
/// f16, the streaming rung's 4 heads per workgroup), with every segment weight computed once
/// and eight (now sixteen) segments' loads in flight per thread: faster than the reduce pass
/// at 16–33 segments at head size 128 (B=1 L=1k 16 segments 11.4 against 12.7 µs, L=4k 32:
/// 16.7 against 17.7, L=32k 33: 48.6 against 49.8, L=128k 33: 141.8 against 143.8), as fast
/// at head sizes 64 (49 segments) and 256 (33); at 2–4 segments 1–3 % faster (B=16 L=32k,
/// B=8, the tenth session's measurement).
pub const COMBINE_MAX_SEGMENTS: u32 = 64;

/// Whether the decode kernel with `tiling` (workgroup memory `smem` without the combine) may
/// combine `segments` split-K segments itself on a device with `caps`.
pub fn combine_admits(caps: &Caps, tiling: &Tiling, segments: u32, smem: u32) -> bool {
    let limits = &caps.limits;
    caps.split_combine
        && (2..=combine_max()).contains(&segments)
        && tiling.max_m * segments <= COMBINE_SLOTS
        && smem + combine_smem() <= limits.max_compute_workgroup_storage_size
        && limits.max_storage_buffers_per_shader_stage >= COMBINE_STORAGE_BINDINGS
}

/// How a call with these parameters will be launched on a device with `caps` (the same
/// computation `unified_attention` does; public so benchmarks and callers can see it).
/// `prefix_ranges`: whether the step carries `mm_prefix_range` (those batches always take the
/// unified kernel).
pub fn launch_plan(
    caps: &Caps,
    g: &Geometry,
    sum: &StepSummary,
    p: &AttentionParams<'_>,
    prefix_ranges: bool,
) -> Result<LaunchPlan> {
    p.validate(g.num_kv_heads)?;
    let limits = &caps.limits;
    let qpk = p.num_q_heads / g.num_kv_heads;
    let rows = rows_for(qpk, sum.max_seqlen_q);
    let max_dim = limits.max_compute_workgroups_per_dimension;
    let prefill_path = matches!(
        p.path,
        AttentionPath::PrefillTiled | AttentionPath::PrefillCoop
    );
    let decode = sum.max_seqlen_q <= 1
        && !prefix_ranges
        && p.path != AttentionPath::Unified
        && !prefill_path;
    // The streaming rung where it is admitted (Auto or forced), else the chunked decode
    // kernel's subgroup / portable rungs.
    let stream_ok = decode && matches!(p.path, AttentionPath::Auto | AttentionPath::DecodeStream);
    let decode_plan = if !decode {
        None
    } else if let Some(t) = stream_ok
        .then(|| stream_tiling(caps, g, sum.num_seqs as u64 * sum.max_seqlen_k as u64))
        .flatten()
    {
        Some((t, true))
    } else {
        decode_tiling(g.head_size, limits, rows).map(|t| (t, false))
    };
    if let Some((tiling, stream)) = decode_plan {
        let hg = qpk.min(tiling.max_m);
        let chunks = qpk.div_ceil(hg);
        let gy = g.num_kv_heads * chunks;
        if sum.num_seqs > max_dim || gy > max_dim {
            return Err(grid_error(sum.num_seqs, gy, max_dim));
        }
        let grid_2d = sum.num_seqs * gy;
        let segments = if stream {
            stream_segments(
                p.split,
                p.seq_threshold_3d,
                sum,
                grid_2d,
                tiling.tile,
                stream_fill(
                    caps,
                    stream_geometry(&tiling, g.head_size).0,
                    g.elems_per_word,
                ),
            )
        } else {
            // Segments of at least one chunk each.
            plan_split(
                p.split,
                p.seq_threshold_3d,
                sum,
                grid_2d,
                tiling.tile / MIN_TILES_PER_SEGMENT,
            )
        };
        let subgroups = stream
            || caps.subgroups
                && caps.subgroup_min_size >= 8
                && match p.path {
                    AttentionPath::DecodeSubgroups | AttentionPath::DecodeStream => true,
                    AttentionPath::Auto => grid_2d * segments >= SUBGROUP_RUNG_MIN_WORKGROUPS,
                    _ => false,
                };
        let smem = if stream {
            stream_smem(
                g.head_size,
                tiling.wg_size,
                stream_geometry(&tiling, g.head_size).1,
            )
        } else {
            decode_smem(&tiling, g.head_size)
        };
        return Ok(LaunchPlan {
            combine: combine_admits(caps, &tiling, segments, smem),
            kernel: Kernel::Decode,
            subgroups,
            stream,
            coop: false,
            segments,
            grid: [sum.num_seqs, gy, segments],
            tiling,
            heads_per_wg: hg,
            q_per_wg: 1,
            head_chunks: chunks,
            decode_apart: false,
        });
    }
    // A mode with a transform runs it apart from the prefill kernel, whose rows then pass
    // through the split-K partials (kernels/prefill.wgsl): where those would not fit one
    // binding, the unified kernel (transform fused) runs instead.
    let apart_fits = !g.transform
        || super::attention::segment_buffer_bytes(sum.num_tokens_q, p.num_q_heads, 1, g.head_size)
            <= limits.max_storage_buffer_binding_size;
    if p.path != AttentionPath::Unified && apart_fits {
        let coop = p.path != AttentionPath::PrefillTiled && coop_admits(caps, g);
        // Auto takes the prefill kernel for prompts on cooperative matrices, and elsewhere on
        // its scalar twin's wide tilings (subgroups): 2.6x faster than the unified kernel at
        // a 2k prompt on an H200 (BENCHMARKS.md). The twin's one-thread-per-row tilings were
        // about as fast as the unified kernel there, so without subgroups Auto keeps it.
        let auto_twin = p.path == AttentionPath::Auto && !coop;
        let tiled =
            prefill_path || ((coop || auto_twin) && (sum.max_seqlen_q > 1 || prefix_ranges));
        // A decode batch on the prefill kernel (forced): one row block per workgroup, split
        // over the key axis to fill the GPU.
        let decode_rows = sum.max_seqlen_q <= 1 && !prefix_ranges;
        if let Some(tiling) = tiled
            .then(|| {
                // 64-row workgroups the batch would take (per sequence rounded down: a
                // lower bound within one per sequence and KV head).
                let wgs = sum.num_tokens_q as u64 * qpk as u64 / 64 * g.num_kv_heads as u64;
                let long = wgs >= PREFILL_LONG_MIN_WORKGROUPS;
                prefill_tiling_for(caps, g, coop, decode_rows, long)
            })
            .flatten()
            .filter(|t| !auto_twin || t.wg_size > t.max_m)
        {
            let rg = row_grid(qpk, tiling.max_m, sum, g.num_kv_heads, max_dim)?;
            let segments = if decode_rows {
                let fit = (limits.max_storage_buffer_binding_size
                    / super::attention::segment_buffer_bytes(
                        sum.num_tokens_q.max(1),
                        p.num_q_heads,
                        1,
                        g.head_size,
                    )
                    .max(1)) as u32;
                let n = fill_segments(
                    p.split,
                    p.seq_threshold_3d,
                    sum,
                    sum.num_seqs * rg.gy,
                    tiling.tile,
                    coop_decode_fill(caps),
                    COOP_DECODE_SEGMENT_KEYS,
                    coop_decode_fill(caps),
                    4,
                    false,
                );
                n.min(fit.max(1))
            } else {
                1
            };
            return Ok(LaunchPlan {
                kernel: Kernel::Prefill,
                subgroups: prefill_rows_shuffle(&tiling, coop),
                stream: false,
                coop,
                segments,
                grid: [rg.gx, rg.gy, segments],
                tiling,
                heads_per_wg: rg.hg,
                q_per_wg: rg.bq,
                head_chunks: rg.chunks,
                decode_apart: false,
                combine: false,
            });
        }
    }
    let tiling = attention_tiling(g.head_size, limits, rows).ok_or(Error::UnsupportedHeadDim {
        mode: g.mode,
        got: g.head_size,
        multiple_of: 16,
        min: 32,
        max: 256,
    })?;
    let RowGrid {
        hg,
        bq,
        chunks,
        gx,
        gy,
    } = row_grid(qpk, tiling.max_m, sum, g.num_kv_heads, max_dim)?;
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
        stream: false,
        coop: false,
        segments,
        grid: [gx, gy, segments],
        tiling,
        heads_per_wg: hg,
        q_per_wg: bq,
        head_chunks: chunks,
        decode_apart: false,
        combine: false,
    })
}

/// The row packing and 2D grid of the tiled kernels (unified, prefill).
struct RowGrid {
    /// Query heads per workgroup.
    hg: u32,
    /// Query tokens per workgroup.
    bq: u32,
    /// Workgroups per kv head along y.
    chunks: u32,
    gx: u32,
    gy: u32,
}

/// Workgroups of `max_m` rows, each `bq` query tokens × `hg` query heads of one kv head (all
/// `qpk` heads when they fit): x over the batch's query blocks (plus one per sequence for the
/// partial blocks), y over kv heads × head chunks.
fn row_grid(
    qpk: u32,
    max_m: u32,
    sum: &StepSummary,
    num_kv_heads: u32,
    max_dim: u32,
) -> Result<RowGrid> {
    let hg = qpk.min(max_m);
    let bq = (max_m / hg).max(1);
    let chunks = qpk.div_ceil(hg);
    let gx = sum.num_tokens_q / bq + sum.num_seqs;
    let gy = num_kv_heads * chunks;
    if gx > max_dim || gy > max_dim {
        return Err(grid_error(gx, gy, max_dim));
    }
    Ok(RowGrid {
        hg,
        bq,
        chunks,
        gx,
        gy,
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
    summary: &StepSummary,
    grid_2d: u32,
    tile: u32,
) -> u32 {
    decode_split(split, seq_threshold_3d, summary, || {
        // Decode streams the cache; what limits it is loads in flight, so aim for enough
        // workgroups to keep every SM of a large GPU busy, while each segment still
        // streams a few tiles so the reduce pass stays small.
        const TARGET_WORKGROUPS: u32 = 512;
        if grid_2d >= TARGET_WORKGROUPS / 2 {
            return 1;
        }
        let tiles = summary.max_seqlen_k.div_ceil(tile);
        let by_work = (tiles / MIN_TILES_PER_SEGMENT).max(1);
        let by_grid = TARGET_WORKGROUPS.div_ceil(grid_2d.max(1));
        by_work.min(by_grid).min(MAX_SEGMENTS)
    })
}

/// Workgroup memory the attention kernel needs with this tiling, in bytes.
pub fn attention_smem(t: &Tiling, head_dim: u32) -> u32 {
    // One term per `var<workgroup>` of unified.wgsl, each rounded to 16 bytes as drivers
    // lay them out; a test checks this against naga's module for every tiling.
    let info = r16(12 * 4);
    let q = r16(t.max_m * head_dim * 4);
    let kv = r16(t.tile * (head_dim / 4 + 1) * 16);
    let s = r16(t.max_m * t.tile * 4);
    let rows = 5 * r16(t.max_m * 4); // m_sh, l_sh, alpha_sh, seen_sh, mnew_sh
    let red = r16(t.wg_size * 4);
    let row_sh = r16(t.tile * 4);
    info + q + kv + s + rows + red + row_sh
}

/// The attention tiling for `head_dim` on a device with `limits`, for workgroups of
/// `max_m` rows (a power of two <= 16): the largest key tile in {64, 32, 16, 8} whose
/// workgroup memory fits.
pub fn attention_tiling(head_dim: u32, limits: &wgpu::Limits, max_m: u32) -> Option<Tiling> {
    let wg_size = 128.min(limits.max_compute_invocations_per_workgroup);
    if max_m == 0 || wg_size % max_m != 0 {
        return None;
    }
    [64, 32, 16, 8]
        .into_iter()
        .map(|tile| Tiling {
            wg_size,
            tile,
            max_m,
            owners: 0,
        })
        .find(|t| attention_smem(t, head_dim) <= limits.max_compute_workgroup_storage_size)
}

/// Whether the prefill kernel's cooperative-matrix path applies to `g` on `caps`: the
/// adapter's 16×16×16 f16 → f32 configuration with subgroups of one fixed size, an f16 or
/// bf16 model (Q and P enter the multiply-adds as f16; an f32 model keeps f32 operands on
/// the scalar twin); raw values f16 does not hold exactly go in as hi + lo pairs
/// ([`prefill_raw_split`]). Modes with a query
/// transform run it apart (kernels/rotate_q.wgsl and the reduce pass), as everywhere on the
/// prefill kernel.
pub fn coop_admits(caps: &Caps, g: &Geometry) -> bool {
    caps.coop_f16
        && caps.shader_f16
        && caps.subgroups
        && caps.subgroup_min_size == caps.subgroup_max_size
        && caps.subgroup_min_size >= 16
        && g.dtype != crate::types::Dtype::F32
}

/// Whether the cooperative prefill kernel holds K and V as hi + lo f16 pairs
/// (`RAW_SPLIT`): for a backend whose tile values f16 does not hold exactly, so the
/// multiply-adds see them to f32 precision. (INT2's codebook centroids held as f16 alone left
/// INT2 about 1e-3 from the reference on an H200, and FP8 output near zero up to five codes
/// off; INT2 ran on these pairs until its tile form held the centroids as the integers
/// ±283, ±944, exact in f16: every built-in mode's tiles are exact now, and the pairs remain
/// for backends registered from outside.)
pub fn prefill_raw_split(coop: bool, g: &Geometry) -> bool {
    coop && !g.tile_f16_exact
}

/// Whether the cooperative prefill kernel also holds V as hi + lo pairs where it splits K
/// ([`prefill_raw_split`]): only where P is a pair too ([`prefill_p_lo`]: FP8 outputs),
/// the same rule as P's. A V value rounded to f16 moves an output by at most 2^-11 of the
/// largest |V| it averages (INT2's centroids round to 2.3e-4 and 1.8e-4 of themselves),
/// linearly, where a K value's error passes through the softmax's exponential: well inside
/// spec §7 level 2 for f16, bf16 and f32 outputs, but not one e4m3 step near zero with a
/// small output scale (an H200 run put an INT2 output five codes off at output scale 0.01,
/// BENCHMARKS.md). Without V's lo tile the kernel's workgroup memory lets two workgroups share
/// an H200 multiprocessor instead of one: INT2's 8k prompt 27.6 → 15.7 ms.
/// `QUANTKV_DEBUG_PREFILL_VSPLIT` (with `debug-knobs`): 1 the V pair always, 0 never (timing
/// only: FP8 outputs then miss the bound).
pub fn prefill_v_split(split: bool, p_lo: bool) -> bool {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    split
        && match env_knob(&KNOB, "QUANTKV_DEBUG_PREFILL_VSPLIT") {
            Some(v) => v != 0,
            None => p_lo,
        }
}

/// Whether the prefill kernel's tiles hold f16 (else f32): always on cooperative matrices,
/// on the twin where `SHADER_F16` exists, the model is not f32 and the mode has no query
/// transform (its rotated queries are kept in f32 there: INT2's raw values, its codebook's
/// centroids before the integer tile form, showed f16's 2^-12 relative error in FP8 output
/// near zero on an H200, one test seed of the extended matrix, and INT4 stayed with it).
pub fn prefill_f16(caps: &Caps, g: &Geometry, coop: bool) -> bool {
    coop || (caps.shader_f16 && g.dtype != crate::types::Dtype::F32 && !g.transform)
}

/// Row strides of the prefill kernel's tiles `(QS, KS, PS, SS)` in elements: Q and K/V rows
/// of `head_dim`, P and S rows of `tk`, each padded by 16 bytes (so 16×16 loads stay 16-byte
/// aligned and consecutive rows start on different banks).
pub fn prefill_strides(head_dim: u32, tk: u32, f16: bool) -> (u32, u32, u32, u32) {
    let pad = if f16 { 8 } else { 4 };
    (head_dim + pad, head_dim + pad, tk + pad, tk + 4)
}

/// Whether the prefill kernel's fragment owners hold their query rows as fragments through
/// the key loop (no Q tile in workgroup memory): on cooperative matrices up to head size 128.
/// Workgroup memory decides residency: on an H200 through Vulkan a workgroup of 32 KiB or more
/// runs alone on its multiprocessor, 24 KiB two at a time (BENCHMARKS.md).
pub fn prefill_q_held(coop: bool, head_dim: u32) -> bool {
    coop && head_dim <= 128 && prefill_qheld_knob() != Some(0)
}

/// Whether the cooperative prefill kernel feeds P to its P·V multiply-adds as a hi + lo pair of
/// f16 values (f32 precision) rather than as one f16 value. One f16 P (relative error
/// ≤ 2^-11) keeps f16, bf16 and f32 outputs well inside spec §7 level 2, and measured 2–4 %
/// faster on an H200 (BENCHMARKS.md); an FP8 output (`fp8_out`) with a small output scale
/// resolves e4m3 steps near zero that the single f16 P does not (tests fail there), so it
/// keeps the pair. `QUANTKV_DEBUG_PREFILL_PLO` (with `debug-knobs`): 1 the pair always, 0
/// never (timing only: FP8 outputs may then miss the bound).
pub fn prefill_p_lo(coop: bool, fp8_out: bool) -> bool {
    coop && match prefill_plo_knob() {
        Some(v) => v != 0,
        None => fp8_out,
    }
}

/// `QUANTKV_DEBUG_PREFILL_PLO` (feature `debug-knobs`): see [`prefill_p_lo`].
fn prefill_plo_knob() -> Option<u32> {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_PREFILL_PLO")
}

/// Workgroup memory the prefill kernel needs with this tiling, in bytes (`coop`: on
/// cooperative matrices; `split`: K as hi + lo pairs, [`prefill_raw_split`]; `p_lo`: P
/// as a hi + lo pair, [`prefill_p_lo`]).
pub fn prefill_smem(
    t: &Tiling,
    head_dim: u32,
    f16: bool,
    coop: bool,
    split: bool,
    p_lo: bool,
) -> u32 {
    // One term per `var<workgroup>` of prefill.wgsl and the fragment includes, each rounded
    // to 16 bytes; a test checks this against naga's module for every tiling.
    let es = if f16 { 2 } else { 4 };
    let (qs, ks, ps, _) = prefill_strides(head_dim, t.tile, f16);
    let info = r16(12 * 4);
    let qh = if prefill_q_held(coop, head_dim) {
        16
    } else {
        r16(t.max_m * qs * es)
    };
    // K and V tiles (one shared tile on the twin and where [`prefill_v_apart`] is false, V's
    // a 16-byte stub then); on cooperative matrices K's lo half (`split`) and V's
    // ([`prefill_v_split`]: with `p_lo`), each else a 16-byte stub.
    let kv = r16(t.tile * ks * es)
        + match (coop, prefill_v_apart(t, coop)) {
            (false, _) => 0,
            (true, true) => r16(t.tile * ks * es),
            (true, false) => 16,
        };
    let lo_tile = |on: bool| if on { r16(t.tile * ks * es) } else { 16 };
    let lo = if coop {
        lo_tile(split) + lo_tile(prefill_v_split(split, p_lo))
    } else {
        0
    };
    // P: over the scores on the twin; on cooperative matrices an f16 hi + lo pair, or f16
    // and a 16-byte stub for the lo half (`prefill_p_lo` false).
    let p = if !coop {
        0
    } else if !p_lo {
        r16(t.max_m * ps * 2) + 16
    } else {
        2 * r16(t.max_m * ps * 2)
    };
    let s = r16(prefill_s_len(t, head_dim, f16, coop) * 4);
    let pad = 16; // layout_pad
    let rows = 4 * r16(t.max_m * 4); // m_sh, l_sh, alpha_sh, seen_sh
    let keys = 4 * r16(t.tile * 4); // row_sh, ks_sh, vs_sh, vbad_at
    let flags = 4 * 16; // resc_at, resc_sh, vmax_at, vbad_any
    info + qh + kv + lo + p + s + pad + rows + keys + flags
}

/// Whether the cooperative prefill kernel stages V in its own tile (`V_APART`: V's loads in
/// flight together with K's) or over K's once Q Kᵀ is done (one tile: the 32-key tilings then
/// fit two workgroups per multiprocessor on an H200). Separate tiles for the eight-subgroup
/// 16-key tiling (two column groups per row block), one for the others: one subgroup per row
/// block with 16-key tiles ran an 8k prompt 1.13× faster with V over K (8.5 against 9.7 ms,
/// twentieth session); the twin always stages V over K. `QUANTKV_DEBUG_PREFILL_VAPART` = 0
/// or 1 (feature `debug-knobs`) forces either on cooperative matrices.
pub fn prefill_v_apart(t: &Tiling, coop: bool) -> bool {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    coop && env_knob(&KNOB, "QUANTKV_DEBUG_PREFILL_VAPART")
        .map_or(t.tile == 16 && t.owners > t.max_m / 16, |v| v != 0)
}

/// Whether the prefill kernel looks each tile's rows and scales up a tile ahead
/// (`LOOKUP_AHEAD`): every mode. (At the eighteenth session's kernel it helped modes with
/// per-row scales only, INT8 per-(token, head) 4 % faster on an H200 and f16 0.4–1 % slower;
/// with the plain interior softmax and the long prompts' tiling, f16 8k took 8144 µs with it
/// against 8538, 2k 789 against 802, chunked 4641 against 4726, mixed 990 against 1008,
/// twentieth session.) `QUANTKV_DEBUG_PREFILL_AHEAD` = 0 or 1 (feature `debug-knobs`) forces
/// either.
pub fn prefill_lookup_ahead() -> bool {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_PREFILL_AHEAD").is_none_or(|v| v != 0)
}

/// Workgroups of 64 rows (query tokens × query heads, per KV head) from which a prompt on
/// cooperative matrices takes the four-subgroup 16-key tiling (V over K) instead of the
/// eight-subgroup one, head sizes up to 128 ([`prefill_tiling_for`]'s `long`). Measured on an
/// H200 (twentieth session, µs, eight against four subgroups): 8k causal (4096 workgroups)
/// 9310 against 8532 (1.09×; 1.09–1.16× for every mode), 2k (1024) 806 against 811, a 2k
/// prompt beside 32 decode rows 1009 against 998, 512 tokens over 32k (256) 4704 against
/// 6165: with few workgroups the wider one keeps more warps busy.
pub const PREFILL_LONG_MIN_WORKGROUPS: u64 = 2048;

/// f32 elements of the prefill kernel's score tile, one region per head-dimension part
/// ([`prefill_ksplit`]; on the twin P goes over the first), and at least a 16×16 block per
/// fragment owner on cooperative matrices (their scratch for rescaling and storing O), one
/// on the twin.
pub fn prefill_s_len(t: &Tiling, head_dim: u32, f16: bool, coop: bool) -> u32 {
    let (_, _, _, ss) = prefill_strides(head_dim, t.tile, f16);
    let scratch = if coop { t.owners } else { 1 };
    (prefill_ksplit(t) * t.max_m * ss).max(256 * scratch)
}

/// Head-dimension parts of the prefill kernel's score blocks (`KSPLIT`): where a wide tiling
/// (the twin's, or cooperative matrices' column groups) has more fragment owners
/// ([`Tiling::owners`]) than a tile has score blocks, each block is summed in parts by
/// different owners (added by the score pass), so none is idle; 1 otherwise.
pub fn prefill_ksplit(t: &Tiling) -> u32 {
    let blocks = (t.max_m / 16) * (t.tile / 16);
    (t.owners / blocks.max(1)).max(1)
}

/// Whether a prefill variant combines each softmax row over several lanes by shuffles
/// (kernels/rows_shuffle.wgsl, which needs subgroups): always on cooperative matrices, and
/// on the twin's wide tilings (`wg_size > max_m`).
pub fn prefill_rows_shuffle(t: &Tiling, coop: bool) -> bool {
    coop || t.wg_size > t.max_m
}

/// The prefill kernel's tiling for `g` on `caps` (`coop`: on cooperative matrices, a subgroup
/// per fragment owner; else the twin, 16 lanes per owner): the first whose workgroup memory
/// fits, in an order per path. The twin takes its wide tilings first where subgroups allow
/// (64 rows × 32 keys on 256 threads, 32 rows on 128, 64 rows on 128: four or two threads
/// per softmax row; on an H200 the first ran an 8k prompt 2.6× faster than 64 threads, the
/// second 1.6× slower than the first), then one thread per row: 64 rows × 64, 32 or 16 keys,
/// then 32 and 16 rows. Cooperative matrices take 16-key tiles first: 64 rows on eight
/// subgroups (two column groups per row block, each with half the row block's O blocks and
/// the Q Kᵀ sum over half the head dimension; head sizes whose blocks split in two parts of
/// at most four), then 64 and 32 rows on a subgroup per row block. The kernel is bound by
/// latency, and on an H200 through Vulkan registers and workgroup memory decide how many
/// workgroups share a multiprocessor (measured: 32 KiB or more, one; 24 KiB, two; 16 KiB,
/// three; 179 registers per thread at 128 threads, two): the eight-subgroup tiling (99
/// registers, 23.4 KiB: two workgroups, 16 warps) ran an 8k causal prompt 1.13× faster than
/// four subgroups (eight warps); 32 rows on four subgroups with column groups (126 registers,
/// 16.3 KiB) and 64 rows on sixteen (33.7 KiB, one workgroup) were slower than either. With
/// one subgroup per row block, the small tiling (17.5 KiB with held query fragments, 21.3 KiB
/// since K and V have separate tiles) ran an 8k causal prompt in 24.9 ms against 33.1 ms for
/// 32-key tiles (30 KiB); with the kernel of `07a82d7`, 14.4 ms against 26.5 ms
/// (BENCHMARKS.md). 64 rows × 32-key tiles with V over K's tile (24.8 KiB, 200 registers: two
/// workgroups per multiprocessor) ran an 8k prompt in 20.0 ms against 11.0 for the
/// eight-subgroup tiling (nineteenth session: its softmax loops alone took 10 ms); with the
/// plain softmax of interior tiles, 13.9 ms against 9.3. Four subgroups with 16-key tiles and
/// V over K ran 8k in 8.5 ms against 9.3 for eight subgroups, but 512 tokens over 32k in 6.2
/// against 4.7 (twentieth session): long prompts take it ([`PREFILL_LONG_MIN_WORKGROUPS`]).
/// `None` where none fits, or the head size is not a multiple of 16 up to 256: the unified
/// kernel runs then.
#[cfg(test)]
pub fn prefill_tiling(caps: &Caps, g: &Geometry, coop: bool) -> Option<Tiling> {
    prefill_tiling_for(caps, g, coop, false, false)
}

/// [`prefill_tiling`], or with `decode` (a batch whose every query length is <= 1, split over
/// the key axis) the one-row-block tilings first: a decode row holds one token's query heads
/// of a KV head, so 16 rows hold a GQA group of up to 16 heads, and a workgroup of one
/// subgroup (16-key tiles, then 32) leaves room for many per multiprocessor. `long` (a batch
/// of at least [`PREFILL_LONG_MIN_WORKGROUPS`] 64-row workgroups) puts the four-subgroup
/// 16-key tiling first on cooperative matrices, head sizes up to 128.
pub fn prefill_tiling_for(
    caps: &Caps,
    g: &Geometry,
    coop: bool,
    decode: bool,
    long: bool,
) -> Option<Tiling> {
    let d = g.head_size;
    if !d.is_multiple_of(16) || d == 0 || d > 256 {
        return None;
    }
    let lanes = if coop { caps.subgroup_min_size } else { 16 };
    let f16 = prefill_f16(caps, g, coop);
    let limits = &caps.limits;
    // (row blocks, keys per tile, column groups: the twin's owners per row block, whose
    // threads then share each softmax row by shuffles).
    let order: &[(u32, u32, u32)] = match (coop, decode) {
        (_, true) => &[(1, 16, 1), (1, 32, 1), (2, 16, 1)],
        (true, false) => &[
            (4, 16, 2),
            (4, 16, 1),
            (2, 16, 1),
            (4, 32, 1),
            (2, 32, 1),
            (1, 16, 1),
            (4, 64, 1),
        ],
        (false, false) => &[
            (4, 32, 4),
            (2, 32, 4),
            (4, 32, 2),
            (4, 64, 1),
            (4, 32, 1),
            (4, 16, 1),
            (2, 32, 1),
            (2, 16, 1),
            (1, 16, 1),
        ],
    };
    let d_blocks = d / 16;
    // Long prompts: four subgroups first (then the order as it is).
    let first: &[(u32, u32, u32)] = if coop && !decode && long && d <= 128 {
        &[(4, 16, 1)]
    } else {
        &[]
    };
    first
        .iter()
        .chain(order)
        .copied()
        .map(|(rb, tk, cg)| Tiling {
            wg_size: rb * lanes * cg,
            tile: tk,
            max_m: rb * 16,
            owners: rb * cg,
        })
        .filter(|t| prefill_tk_knob().is_none_or(|tk| t.tile == tk))
        .filter(|t| prefill_rows_knob().is_none_or(|m| t.max_m == m))
        .filter(|t| prefill_wg_knob().is_none_or(|w| t.wg_size == w))
        .find(|t| {
            let cg = t.owners / (t.max_m / 16);
            let ks = prefill_ksplit(t);
            let score_blocks = (t.max_m / 16) * (t.tile / 16) * ks;
            let wide_ok = cg == 1
                || if coop {
                    // Column groups on cooperative matrices: one key block per tile, so each
                    // owner's score block is its rows' head-dimension part cg; its O blocks
                    // (at most four) by constant indices.
                    t.tile == 16 && d_blocks.is_multiple_of(cg) && d_blocks / cg <= 4
                } else {
                    // The twin's wide tilings: the threads of a softmax row share a
                    // subgroup, the column groups divide the O blocks, the head-dimension
                    // parts the Q Kᵀ blocks.
                    caps.subgroups
                        && caps.subgroup_min_size >= cg
                        && d_blocks.is_multiple_of(cg)
                        && d_blocks.is_multiple_of(ks)
                        && score_blocks.is_multiple_of(t.owners)
                };
            wide_ok
                && t.wg_size <= limits.max_compute_invocations_per_workgroup
                && t.wg_size <= limits.max_compute_workgroup_size_x
                && t.wg_size % t.max_m == 0
                // P as a pair (FP8 outputs): the larger of the two variants.
                && prefill_smem(t, d, f16, coop, prefill_raw_split(coop, g), coop)
                    <= limits.max_compute_workgroup_storage_size
        })
}

/// Workgroup memory the decode kernel needs with this tiling (`tile` = keys per chunk).
pub fn decode_smem(t: &Tiling, head_dim: u32) -> u32 {
    // One term per `var<workgroup>` of decode_common.wgsl and decode.wgsl, each rounded
    // to 16 bytes; a test checks this against naga's module for every tiling.
    let info = r16(10 * 4);
    let q = r16(t.max_m * head_dim * 4);
    let s = r16(t.max_m * t.tile * 4);
    let rows = r16(t.tile * 4);
    let red = r16(t.max_m * t.wg_size * 4);
    let qsum = r16(t.max_m * 4);
    info + q + s + rows + red + qsum + combine_vars(false) + combine_rows(t.max_m)
}

/// The decode kernel's tiling for `head_dim` on a device with `limits`, for `max_m` query
/// heads per workgroup (a power of two <= 16): 128 threads, and chunks of
/// `max(128, 1024 / max_m)` keys (measured on an H200: 256-key chunks for 4 heads ran
/// B=8 L=32k 1.5x faster than 512, 2.5x faster than 1024) (fewer while the workgroup memory does not fit). `None`
/// when even one 128-key chunk does not fit: the caller uses the unified kernel then.
pub fn decode_tiling(head_dim: u32, limits: &wgpu::Limits, max_m: u32) -> Option<Tiling> {
    let (wg_knob, chunk_knob) = decode_knobs();
    let wg_size = wg_knob.unwrap_or(128).clamp(32, 1024);
    if limits.max_compute_invocations_per_workgroup < wg_size
        || limits.max_compute_workgroup_size_x < wg_size
        || max_m == 0
        || max_m > 16
        || head_dim / 4 > wg_size
    {
        return None;
    }
    let mut tile = chunk_knob.unwrap_or(1024 / max_m).max(wg_size);
    loop {
        let t = Tiling {
            wg_size,
            tile,
            max_m,
            owners: 0,
        };
        if decode_smem(&t, head_dim) <= limits.max_compute_workgroup_storage_size {
            return Some(t);
        }
        if tile == wg_size {
            return None;
        }
        tile /= 2;
    }
}

/// The streaming decode rung's lane geometry `(EL, LPR)` for `g` on a device with `caps`, or
/// `None` where it does not apply: each lane holds `EL` consecutive elements of a row, 8 (one
/// load of 16 bytes for 16-bit rows, two for f32, 8 bytes for 8-bit codes, 4 for 4-bit, half a
/// word for 2-bit) or 16 ([`stream_el`]: twice the bytes per load, the per-key work shared by
/// twice the elements), `LPR = head_size / EL` lanes per row, a power of two of at most 32
/// that the adapter's smallest subgroup holds. The workgroup's query heads (at most 4) are the
/// components of a vec4, so query and accumulators take 64 registers per 8 elements.
pub fn stream_lanes(caps: &Caps, g: &Geometry, keys: u64) -> Option<(u32, u32)> {
    let first = stream_el(g, keys);
    // The preferred width, else the other one.
    [first, 24 - first]
        .into_iter()
        .find_map(|el| stream_lanes_at(caps, g, el).map(|lpr| (el, lpr)))
}

/// `LPR` of the streaming rung at `el` (8 or 16) elements per lane, where that fits.
pub fn stream_lanes_at(caps: &Caps, g: &Geometry, el: u32) -> Option<u32> {
    let d = g.head_size;
    let epw = g.elems_per_word;
    let lpr = d / el;
    let fits = caps.subgroups
        && (el == 8 || el == 16)
        && d.is_multiple_of(el)
        && lpr.is_power_of_two()
        && lpr <= 32
        && lpr <= caps.subgroup_min_size
        && matches!(epw, 1 | 2 | 4 | 8 | 16)
        && (el == 8 || epw >= 2)
        && (epw <= el || d.is_multiple_of(epw));
    fits.then_some(lpr)
}

/// Elements per lane of the streaming decode rung for `g` on a batch of up to `keys` keys
/// (sequences × longest context) it prefers: 16 for 16-bit rows and codes of at most 8 bits
/// at head sizes of at least 128 (8-bit and 4-bit codes: 64) on batches of at least
/// [`STREAM_WIDE_KEYS`] keys, else 8
/// (`QUANTKV_DEBUG_STREAM_EL` = 8 or 16 with `debug-knobs`; f32 rows always 8). Measured on an
/// H200 (BENCHMARKS.md): 16 is 1.03–1.22× faster from B=1 L=32k and B=8 L=8k up (the per-key
/// work shared by twice the elements), but slower on the latency-bound B=1 L ≤ 4k (22.5 vs
/// 24.8 µs at 1k) and at head size 64 (4 lanes per row: 51.4 vs 52.8 µs).
pub fn stream_el(g: &Geometry, keys: u64) -> u32 {
    let wide = g.elems_per_word >= 2 && g.head_size.is_multiple_of(16);
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    if let Some(el) = env_knob(&KNOB, "QUANTKV_DEBUG_STREAM_EL").filter(|v| *v == 8 || *v == 16) {
        return if wide { el } else { 8 };
    }
    // Head size 64 (4 lanes per row at 16): 8-bit and 4-bit codes gain more from the shared
    // per-key work than from the third workgroup per multiprocessor that 8 elements allow
    // (B=1 L=32k on an H200: INT4 34.9 µs at 16 against 42.3 at 8, INT8 per-(token, head)
    // 33.2 / 35.2, FP8 per-tensor 32.8 / 35.2); 16-bit rows and INT2 do not (f16 33.6 /
    // 32.4, INT2 41.7 / 39.7).
    let wide_at = if matches!(g.elems_per_word, 4 | 8) {
        64
    } else {
        128
    };
    if wide && g.head_size >= wide_at && keys >= STREAM_WIDE_KEYS {
        16
    } else {
        8
    }
}

/// Keys (sequences × longest context) from which the streaming rung takes 16 elements per
/// lane ([`stream_el`]).
pub const STREAM_WIDE_KEYS: u64 = 16384;

/// `(EL, LPR)` of a streaming-rung tiling for head size `d` (its `tile` is `U` keys per key
/// group of `LPR` lanes).
pub fn stream_geometry(t: &Tiling, d: u32) -> (u32, u32) {
    let lpr = STREAM_U * t.wg_size / t.tile;
    (d / lpr, lpr)
}

/// Query heads per workgroup of the streaming decode rung (the components of a vec4).
pub const STREAM_HEADS: u32 = 4;

/// Keys per key group and step of the streaming decode rung (`U` in decode_stream.wgsl).
const STREAM_U: u32 = 4;

/// The streaming rung's tiling: `wg_size` threads (128, or the `QUANTKV_DEBUG_DECODE_WG`
/// knob), 4 query heads, `tile` = keys one round of the workgroup's subgroups streams at the
/// adapter's smallest subgroup (`U` per key group).
pub fn stream_tiling(caps: &Caps, g: &Geometry, keys: u64) -> Option<Tiling> {
    let (_, lpr) = stream_lanes(caps, g, keys)?;
    let wg_size = decode_knobs().0.unwrap_or(128).clamp(32, 1024);
    let limits = &caps.limits;
    let fits = wg_size <= limits.max_compute_invocations_per_workgroup
        && wg_size <= limits.max_compute_workgroup_size_x
        && wg_size >= caps.subgroup_max_size.max(lpr)
        && stream_smem(g.head_size, wg_size, lpr) <= limits.max_compute_workgroup_storage_size;
    fits.then_some(Tiling {
        wg_size,
        tile: STREAM_U * wg_size / lpr,
        max_m: STREAM_HEADS,
        owners: 0,
    })
}

/// Workgroup memory of the streaming decode rung at `wg_size` threads and `lpr` lanes per
/// row (at most `wg_size / lpr` subgroups: every subgroup holds a row's lanes).
pub fn stream_smem(head_dim: u32, wg_size: u32, lpr: u32) -> u32 {
    // decode_common.wgsl's info, q_sh and the combine's variables, decode_stream.wgsl's
    // mlz_sh and ms_sh; a test checks this against naga's module.
    r16(10 * 4)
        + r16(STREAM_HEADS * head_dim * 4)
        + r16(3 * 16)
        + 16 * (wg_size / lpr)
        + combine_vars(false)
        + combine_rows(STREAM_HEADS)
}

/// Workgroups of one wave of the streaming rung on `caps` at `el` elements per lane over rows
/// of `elems_per_word` elements per 32-bit word: [`stream_per_multiprocessor`] per
/// multiprocessor where the count is known ([`Caps::multiprocessors`]), else that many per
/// multiprocessor of a 132-multiprocessor GPU ([`STREAM_FILL_WORKGROUPS`] at two).
pub fn stream_fill(caps: &Caps, el: u32, elems_per_word: u32) -> u32 {
    let per = stream_per_multiprocessor(el, elems_per_word);
    per_multiprocessor(caps, per, STREAM_FILL_WORKGROUPS / 2 * per)
}

/// Workgroups of the streaming rung (128 threads) resident per multiprocessor, from the
/// registers NVIDIA's driver gives it on an H200 (`examples/pipeline_stats`, BENCHMARKS.md):
/// 252–255 at 16 elements per lane in every mode (two workgroups of four warps in 64 Ki
/// registers), 128–168 at 8 elements of 16-bit rows or narrower codes (three); f32 rows at 8
/// hold 16-bit rows' loads twice over and keep two (not measured). Measured: B=1 L=32k at
/// head size 64 takes 32.4 µs at 49 segments (three per multiprocessor) against 34.9 at 33
/// (two); a count past one wave costs far more (40 segments: 35.2, 66: 41.2). Three at 16
/// elements (252–255 registers in every mode) make two waves and are slower at every shape
/// (B=8 L=32k f16 274 → 325 µs, FP8 per-tensor 278 → 304). `QUANTKV_DEBUG_STREAM_PER_SM8` /
/// `_SM16` (`debug-knobs`) set the count at 8 / 16 elements.
pub fn stream_per_multiprocessor(el: u32, elems_per_word: u32) -> u32 {
    static KNOB8: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    static KNOB16: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    if el >= 16 {
        positive_knob(&KNOB16, "QUANTKV_DEBUG_STREAM_PER_SM16", 2)
    } else if elems_per_word < 2 {
        2
    } else {
        positive_knob(&KNOB8, "QUANTKV_DEBUG_STREAM_PER_SM8", 3)
    }
}

/// `per` workgroups per multiprocessor where `caps` knows the count, else `default`.
fn per_multiprocessor(caps: &Caps, per: u32, default: u32) -> u32 {
    caps.multiprocessors.map_or(default, |m| per * m.max(1))
}

/// Split-K segments of the streaming rung (measured on an H200, BENCHMARKS.md): as many as
/// one wave of `fill` workgroups ([`stream_fill`]: two or three per multiprocessor) holds, so
/// each workgroup streams the longest segment that still fills the GPU and nothing waits for a
/// second wave, with segments of four rounds of keys at least (two rounds where four would
/// leave the GPU less than half filled: B=1 L=1k 14.7 µs at 8 segments of four rounds, 12.7 at
/// 16 of two); batches whose workgroups fill half a wave or more unsplit. Measured with forced
/// counts (ninth session): B=8 L=32k 280.8 µs at 4 segments (one wave) against 297.3 at 16,
/// B=16 L=32k 547.7 at 2 against 568.2 at 8, B=32 L=4k 143.3 unsplit against 155.2 at 2,
/// B=1 L=128k 146.7 at 33 against 155.0 at 64. Then as few segments as need no more rounds
/// each (B=1 L=32k: 32 segments of 16 rounds, not 33). Knob (`debug-knobs`):
/// `QUANTKV_DEBUG_STREAM_ONE_WAVE=0` takes the eighth session's rule instead (segments of
/// [`STREAM_SEGMENT_KEYS`] keys once a wave is filled, up to [`STREAM_TARGET_WORKGROUPS`]
/// workgroups, a last wave less than half full trimmed; its knobs
/// `QUANTKV_DEBUG_STREAM_SEG_KEYS`, `QUANTKV_DEBUG_STREAM_TARGET`, `QUANTKV_DEBUG_STREAM_WAVE=0`).
pub fn stream_segments(
    split: SplitK,
    seq_threshold_3d: Option<u32>,
    sum: &StepSummary,
    grid_2d: u32,
    tile: u32,
    fill: u32,
) -> u32 {
    if !stream_one_wave() {
        return fill_segments(
            split,
            seq_threshold_3d,
            sum,
            grid_2d,
            tile,
            fill,
            stream_segment_keys(),
            stream_target(),
            2,
            stream_trim_wave(),
        );
    }
    decode_split(split, seq_threshold_3d, sum, || {
        let grid = grid_2d.max(1);
        let fill = fill.max(1);
        let l = sum.max_seqlen_k;
        let at = |tiles: u32| (fill / grid).min(l / (tiles * tile)).min(MAX_SEGMENTS);
        let n = match at(4) {
            n if grid * n < fill / 2 => at(2),
            n => n,
        };
        // As few segments as keep that many rounds per workgroup: each takes as long, and
        // fewer partials are combined (B=1 L=32k at head size 128: 32 segments of 16 rounds
        // 48.4 µs against 33 of 15.75, 49.2; head size 256: 82.7 against 84.5).
        match n {
            0 | 1 => n,
            n => l.div_ceil(l.div_ceil(n * tile) * tile),
        }
    })
}

/// Split-K segments of a decode kernel: 1 for batches with prompts or past the 3D threshold,
/// a forced count as given, `auto()` for [`SplitK::Auto`] (below 2: 1).
fn decode_split(
    split: SplitK,
    seq_threshold_3d: Option<u32>,
    sum: &StepSummary,
    auto: impl FnOnce() -> u32,
) -> u32 {
    if sum.max_seqlen_q > 1 || seq_threshold_3d.is_some_and(|t| sum.num_seqs > t) {
        return 1;
    }
    match split {
        SplitK::Off => 1,
        SplitK::Segments(n) => n,
        SplitK::Auto => auto().max(1),
    }
}

fn stream_one_wave() -> bool {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_STREAM_ONE_WAVE") != Some(0)
}

fn stream_trim_wave() -> bool {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_STREAM_WAVE") != Some(0)
}

/// Workgroups the prefill kernel's split-K fills the GPU with first on a decode batch where
/// the multiprocessor count is not known (its workgroups are one subgroup: eight per
/// multiprocessor of a 132-multiprocessor GPU).
pub const COOP_DECODE_FILL_WORKGROUPS: u32 = 1056;

/// Keys per segment of the prefill kernel's split-K on a decode batch once the GPU is filled.
pub const COOP_DECODE_SEGMENT_KEYS: u32 = 512;

/// The prefill kernel's fill on a decode batch on `caps`: eight workgroups per
/// multiprocessor where the count is known ([`Caps::multiprocessors`]), else
/// [`COOP_DECODE_FILL_WORKGROUPS`] (`QUANTKV_DEBUG_COOP_DECODE_FILL` overrides both).
fn coop_decode_fill(caps: &Caps) -> u32 {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let default = per_multiprocessor(caps, 8, COOP_DECODE_FILL_WORKGROUPS);
    positive_knob(&KNOB, "QUANTKV_DEBUG_COOP_DECODE_FILL", default)
}

/// Split-K segments that give a decode batch's `grid_2d` workgroups at least `fill`
/// workgroups where the context allows segments of four tiles (down to `min_tiles` tiles
/// where four would leave fewer than `fill / 2` workgroups), else segments of `seg_keys`
/// keys, never more than `target` workgroups or [`MAX_SEGMENTS`] segments (`trim_wave`: where
/// the last wave of `fill` workgroups would be less than half full, only the whole waves); 1
/// for batches with prompts or past the 3D threshold.
#[allow(clippy::too_many_arguments)]
fn fill_segments(
    split: SplitK,
    seq_threshold_3d: Option<u32>,
    sum: &StepSummary,
    grid_2d: u32,
    tile: u32,
    fill: u32,
    seg_keys: u32,
    target: u32,
    min_tiles: u32,
    trim_wave: bool,
) -> u32 {
    decode_split(split, seq_threshold_3d, sum, || {
        let grid = grid_2d.max(1);
        if grid >= target / 2 {
            return 1;
        }
        let l = sum.max_seqlen_k;
        let at = |tiles: u32| {
            fill.div_ceil(grid)
                .max(l / seg_keys)
                .min(target.div_ceil(grid))
                .min(l / (tiles * tile))
                .min(MAX_SEGMENTS)
        };
        let mut n = at(4);
        if grid * n < fill / 2 && min_tiles < 4 {
            n = at(min_tiles.max(1));
        }
        let w = grid * n;
        if trim_wave && w > fill && w % fill < fill / 2 {
            n = (w / fill * fill / grid).max(1);
        }
        n
    })
}

/// Workgroups of one wave of the streaming rung at 16 elements per lane where the
/// multiprocessor count is not known: what its split-K fills the GPU with (two per
/// multiprocessor of a 132-multiprocessor GPU at the rung's register count, measured on an
/// H200; wgpu does not report the count). At 8 elements, three per multiprocessor
/// ([`stream_fill`]).
pub const STREAM_FILL_WORKGROUPS: u32 = 264;

/// Keys per segment of the eighth session's split-K rule for the streaming rung once the GPU
/// is filled (`QUANTKV_DEBUG_STREAM_ONE_WAVE=0`; 1024 before the eighth session; measured on an
/// H200, BENCHMARKS.md: B=1 L=128k 167.4 µs at 128 segments of 1024 keys, 153.7 at 64 of 2048;
/// B=32 L=4k 166.6 µs at 4 segments, 154.1 at 2).
pub const STREAM_SEGMENT_KEYS: u32 = 2048;

fn stream_segment_keys() -> u32 {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    positive_knob(&KNOB, "QUANTKV_DEBUG_STREAM_SEG_KEYS", STREAM_SEGMENT_KEYS)
}

/// Workgroups the eighth session's split-K rule for the streaming rung aims at
/// (`QUANTKV_DEBUG_STREAM_ONE_WAVE=0`).
pub const STREAM_TARGET_WORKGROUPS: u32 = 1024;

fn stream_target() -> u32 {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    positive_knob(
        &KNOB,
        "QUANTKV_DEBUG_STREAM_TARGET",
        STREAM_TARGET_WORKGROUPS,
    )
}

/// [`COMBINE_MAX_SEGMENTS`], or `QUANTKV_DEBUG_COMBINE_MAX` (with the `debug-knobs` feature;
/// for A/B runs, within [`COMBINE_SLOTS`]).
fn combine_max() -> u32 {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    positive_knob(&KNOB, "QUANTKV_DEBUG_COMBINE_MAX", COMBINE_MAX_SEGMENTS)
}

/// Rows per attention workgroup: all query heads of a KV head for decode batches (rounded
/// up to a power of two, at most 16), 16 otherwise.
pub fn rows_for(qpk: u32, max_seqlen_q: u32) -> u32 {
    if max_seqlen_q <= 1 {
        qpk.next_power_of_two().min(16)
    } else {
        16
    }
}

/// Tuning knobs (cargo feature `debug-knobs` only): `QUANTKV_DEBUG_DECODE_WG` / `_CHUNK`
/// override the decode geometry (powers of two; results stay correct, and the geometry is in
/// the pipeline key). Read once per process.
fn decode_knobs() -> (Option<u32>, Option<u32>) {
    #[cfg(feature = "debug-knobs")]
    {
        static KNOBS: std::sync::OnceLock<(Option<u32>, Option<u32>)> = std::sync::OnceLock::new();
        *KNOBS.get_or_init(|| {
            let knob = |name: &str| {
                std::env::var(name)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|v| v.is_power_of_two())
            };
            (
                knob("QUANTKV_DEBUG_DECODE_WG"),
                knob("QUANTKV_DEBUG_DECODE_CHUNK"),
            )
        })
    }
    #[cfg(not(feature = "debug-knobs"))]
    {
        (None, None)
    }
}

/// The prefill kernel's rescale margin (`MARGIN`, nats): where a row's running maximum
/// moves it is set this far above the tile's maximum, so a row whose maximum keeps rising
/// (spec §11 data: about 16 nats over an 8k prompt, two rescales of O per row at a threshold
/// of 8) moves it less often. 4 nats, except with P as an f16 hi + lo pair (`p_lo`: FP8
/// outputs, whose lo halves must stay f16 normal numbers; 0 there). Measured on an H200
/// (BENCHMARKS.md): 8k causal f16 2.7 % faster, 2k 3.9 %, INT8 per-(token, head) 2.7 %; the
/// row's largest p is then at least e^-4 instead of 1, 2^-11 relative error either way.
/// `QUANTKV_DEBUG_PREFILL_MARGIN` (tenths of a nat, feature `debug-knobs`) sets it.
pub fn prefill_margin(p_lo: bool) -> f32 {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_PREFILL_MARGIN")
        .map_or(if p_lo { 0.0 } else { PREFILL_MARGIN }, |v| v as f32 / 10.0)
}

/// [`prefill_margin`]'s default (nats).
pub const PREFILL_MARGIN: f32 = 4.0;

/// `QUANTKV_DEBUG_PREFILL_TK` (feature `debug-knobs`): the prefill kernel's keys per tile,
/// where a tiling with it fits (for investigating tile-size-dependent results).
fn prefill_tk_knob() -> Option<u32> {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_PREFILL_TK")
}

/// `QUANTKV_DEBUG_PREFILL_QHELD=0` (feature `debug-knobs`): the cooperative prefill kernel
/// keeps its Q tile in workgroup memory instead of holding query fragments (for timing).
fn prefill_qheld_knob() -> Option<u32> {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_PREFILL_QHELD")
}

/// `QUANTKV_DEBUG_PREFILL_ROWS` (feature `debug-knobs`): the prefill kernel's rows per
/// workgroup (16, 32 or 64), where a tiling with it fits (for timing the tilings).
fn prefill_rows_knob() -> Option<u32> {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_PREFILL_ROWS")
}

/// `QUANTKV_DEBUG_PREFILL_WG` (feature `debug-knobs`): only prefill tilings of this many
/// threads per workgroup (for timing the twin's tilings).
fn prefill_wg_knob() -> Option<u32> {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_PREFILL_WG")
}

/// A numeric diagnostics knob read from the environment once; `None` without the
/// `debug-knobs` feature.
pub(crate) fn env_knob(cell: &'static std::sync::OnceLock<Option<u32>>, name: &str) -> Option<u32> {
    if cfg!(feature = "debug-knobs") {
        *cell.get_or_init(|| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok()))
    } else {
        None
    }
}

/// [`env_knob`] where it is set and positive, else `default`.
fn positive_knob(cell: &'static std::sync::OnceLock<Option<u32>>, name: &str, default: u32) -> u32 {
    env_knob(cell, name).filter(|v| *v > 0).unwrap_or(default)
}

fn r16(x: u32) -> u32 {
    x.next_multiple_of(16)
}
