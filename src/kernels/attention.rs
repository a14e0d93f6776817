//! `unified_attention`: parameters, their validation, the 2D / split-K planner, and encoding.
//!
//! Semantics follow spec §6: for query row `i` of sequence `s` (absolute position
//! `qpos = context_len + i`, `context_len = seqused_k - query_len`) and head `h` reading kv head
//! `h / (num_q_heads / num_kv_heads)`, each key `k < seqused_k` gets the score
//! `S = softmax_scale · q·k`, then `softcap·tanh(S/softcap)` when `softcap > 0`, then the mask
//! (`k <= qpos` and, with a window, `qpos - k < W`, or both inside one prefix range), then ALiBi
//! and qq_bias; the output is `Σ softmax(S)·v`, with sinks joining the denominator only.

use std::fmt::Write as _;
use std::sync::Arc;

use super::plan::{launch_plan, AttentionPath, LaunchPlan, SplitK, COMBINE_SLOTS, MAX_SEGMENTS};
use super::{check_step, debug_skip, layer_uniform, LayerRef, Rec, StepGpu};
use crate::error::{invalid, shape, Error, Result};
use crate::gpu::bind::{bind, entry, exact, storage_entry, uniform_entry};
use crate::gpu::tensor::distinct;
use crate::gpu::uniforms::{ROWS_DECODE, ROWS_PREFILL};
use crate::gpu::{
    Compiled, Context, Features, Kernel, PipelineKey, PipelineSource, Tensor, Tiling,
};
use crate::modes::Codec;
use crate::types::Dtype;

/// Per-call attention parameters (the per-step metadata lives in the [`crate::BatchPlan`]).
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
/// unnormalised accumulator (`head_size` f32) plus its running max and sum (2 f32), rounded up
/// to whole 16-byte words (the kernels read and write the partials as `vec4<f32>`, the last
/// (max, sum) pair in the first half of a word).
pub fn segment_buffer_bytes(
    num_tokens: u32,
    num_q_heads: u32,
    segments: u32,
    head_size: u32,
) -> u64 {
    let floats = num_tokens as u64 * num_q_heads as u64 * segments as u64 * (head_size as u64 + 2);
    floats.next_multiple_of(4) * 4
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

    /// The feature bits of a call with these parameters (qq_bias and prefix ranges come from
    /// the step).
    pub(crate) fn features(&self, has_qq: bool, has_mm: bool) -> Features {
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
        if has_qq {
            f |= Features::QQ_BIAS;
        }
        if has_mm {
            f |= Features::MM_PREFIX;
        }
        if self.output_scale.is_some() {
            f |= Features::OUT_FP8;
        }
        Features(f)
    }
}

/// The step's K/V rows an attention call writes first (`reshape_and_cache` of the same step
/// and layer): `(key, value)`.
pub(crate) type NewRows<'x, 'a> = Option<(&'x Tensor<'a>, &'x Tensor<'a>)>;

/// Records `unified_attention` for one layer: validates the call, plans it, then records the
/// attention kernel (and the split-K reduce). With `write`, the call first writes those rows
/// into the layer: inside the decode kernel where [`fuse_admits`] says it may (returns true),
/// else as the write kernel's dispatch ahead of the attention's. Everything is validated
/// before anything is recorded.
pub(crate) fn encode(
    ctx: &Context,
    rec: Rec<'_, '_>,
    layer: &LayerRef<'_>,
    step: &StepGpu,
    (q, out): (&Tensor<'_>, &Tensor<'_>),
    p: &AttentionParams<'_>,
    write: NewRows<'_, '_>,
) -> Result<bool> {
    let g = &layer.geometry;
    check_step(g, step)?;
    p.validate(g.num_kv_heads)?;
    if let Some((k, v)) = write {
        super::write::check(ctx, layer, step, k, v)?;
    }
    let sum = step.summary;
    let hq = p.num_q_heads;
    let inner = [hq, g.head_size];
    ctx.alive()?;
    let bufs = [
        ("q", q.buffer),
        ("out", out.buffer),
        ("k cache", layer.k),
        ("v cache", layer.v),
        ("k scale cache", layer.k_scale),
        ("v scale cache", layer.v_scale),
        ("segment_buffer", p.segment_buffer.unwrap_or(q.buffer)),
    ];
    // Without a segment buffer the last entry repeats q, which `distinct` must not flag.
    distinct(&bufs[..6 + p.segment_buffer.is_some() as usize])?;
    let limits = ctx.limits();
    q.check("q", g.dtype, sum.num_tokens_q, inner, limits)?;
    let out_dtype = if p.output_scale.is_some() {
        Dtype::Fp8E4m3
    } else {
        g.dtype
    };
    out.check("out", out_dtype, sum.num_tokens_q, inner, limits)?;

    if sum.num_tokens_q == 0 {
        if let Some(w) =
            write.and_then(|(k, v)| super::write::prepare(ctx, layer, step, k, v).transpose())
        {
            let w = w?;
            rec.record("quantkv/reshape_and_cache", |pass| w.record(pass));
        }
        return Ok(false);
    }
    let lp = launch_plan(ctx.caps(), g, &sum, p, step.has_mm)?;
    let apart = decode_apart(ctx, g, step, p, &lp)?;
    let fuse = write.is_some_and(|(k, v)| fuse_admits(ctx, layer, step, &lp, [k, v], out, p));
    let pre_write = match write {
        Some((k, v)) if !fuse => super::write::prepare(ctx, layer, step, k, v)?,
        _ => None,
    };
    let (segments, [gx, gy, _]) = (lp.segments, lp.grid);
    let qpk = hq / g.num_kv_heads;
    let (hg, bq, chunks) = (lp.heads_per_wg, lp.q_per_wg, lp.head_chunks);

    let mut lu = layer_uniform(layer);
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
    if apart.is_some() {
        lu.row_filter = ROWS_PREFILL;
    }
    let rows = sum.num_tokens_q;
    let (q_bind, qi) = q.binding(rows, limits);
    let (o_bind, oi) = out.binding(rows, limits);
    (lu.q_off, lu.q_tok, lu.q_head) = (qi.off, qi.tok, qi.head);
    (lu.o_off, lu.o_tok, lu.o_head) = (oi.off, oi.tok, oi.head);
    // The fused write's views (bindings 10, 11), as the write kernel takes them.
    let new_rows = match write.filter(|_| fuse) {
        Some((k, v)) => {
            let (k_bind, ki) = k.binding(sum.num_write, limits);
            let (v_bind, vi) = v.binding(sum.num_write, limits);
            (lu.ki_off, lu.ki_tok, lu.ki_head) = (ki.off, ki.tok, ki.head);
            (lu.vi_off, lu.vi_tok, lu.vi_head) = (vi.off, vi.tok, vi.head);
            Some([entry(10, k_bind), entry(11, v_bind)])
        }
        None => None,
    };
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
    let lbuf = ctx.intern(wgpu::BufferUsages::UNIFORM, bytemuck::bytes_of(&lu))?;
    let abuf = ctx.intern(wgpu::BufferUsages::STORAGE, bytemuck::cast_slice(&aux))?;

    let mut features = p.features(step.has_qq, step.has_mm);
    if fuse {
        features.0 |= Features::FUSED_WRITE;
    }
    let Pipelines {
        main: compiled,
        reduce: reduce_pipe,
        rotate: rotate_pipe,
    } = pipelines(ctx, layer, &lp, features)?;
    let d = g.head_size;

    let pooled;
    let need = segment_buffer_bytes(sum.num_tokens_q, hq, segments, d);
    let partials = if segments > 1 || rotate_pipe.is_some() {
        Some(match p.segment_buffer.filter(|_| segments > 1) {
            Some(b) => {
                if b.size() < need
                    || !b.usage().contains(wgpu::BufferUsages::STORAGE)
                    || need > limits.max_storage_buffer_binding_size
                {
                    return Err(Error::InvalidBuffer {
                        what: "segment_buffer",
                        detail: format!(
                            "{} bytes ({:?}); {segments} segments need {need} bytes with STORAGE usage, within the binding limit {}",
                            b.size(),
                            b.usage(),
                            limits.max_storage_buffer_binding_size
                        ),
                    });
                }
                b
            }
            None => {
                pooled = partials_buffer(ctx, step, need)?;
                &*pooled
            }
        })
    } else {
        None
    };
    // With the combine, the decode kernel stores the output itself and its partials go to
    // binding 12, next to its arrival counters (13): one u32 per (sequence, head chunk).
    let counter_bytes = gx as u64 * gy as u64 * 4;
    let counters = match lp.combine {
        true => Some(scratch_buffer(
            ctx,
            &step.arrivals,
            "split-K arrivals",
            counter_bytes,
        )?),
        false => None,
    };
    let combine = match (partials, &counters) {
        (Some(part), Some(c)) => Some([
            entry(12, exact(part, need)),
            entry(13, exact(c, counter_bytes)),
        ]),
        _ => None,
    };
    let target = match partials.filter(|_| !lp.combine) {
        Some(part) => exact(part, need),
        None => o_bind.clone(),
    };
    // A transform apart: Q rotated into a scratch [rows, hq, d] of the model dtype, which the
    // prefill kernel reads as its q (a layer uniform of its own, with contiguous strides).
    let rotated = match rotate_pipe {
        Some(rot) => {
            let bytes = rows as u64 * hq as u64 * d as u64 * g.dtype.size() as u64;
            let scratch = scratch_buffer(ctx, &step.rotated_q, "rotated q", bytes)?;
            let contiguous = (0, hq * d, d);
            let mut lu_rot = lu;
            (lu_rot.o_off, lu_rot.o_tok, lu_rot.o_head) = contiguous;
            let mut lu_pre = lu;
            (lu_pre.q_off, lu_pre.q_tok, lu_pre.q_head) = contiguous;
            let rbuf = ctx.intern(wgpu::BufferUsages::UNIFORM, bytemuck::bytes_of(&lu_rot))?;
            let pbuf = ctx.intern(wgpu::BufferUsages::UNIFORM, bytemuck::bytes_of(&lu_pre))?;
            let qbg = ctx.bind_group(
                "rotate_q bind group",
                rot.id,
                &rot.layout,
                &[
                    bind(0, &step.uniform),
                    bind(1, &rbuf),
                    entry(4, q_bind.clone()),
                    entry(9, exact(&scratch, bytes)),
                ],
            )?;
            Some((rot, qbg, scratch, bytes, pbuf))
        }
        None => None,
    };
    let (main_lbuf, main_q) = match &rotated {
        Some((_, _, scratch, bytes, pbuf)) => (pbuf, exact(scratch, *bytes)),
        None => (&lbuf, q_bind),
    };
    // Everything is built (and checked by wgpu under error scopes) before anything is
    // recorded, so a failed call leaves the encoder as it was.
    let kernel_entries = |lbuf, q, target| {
        [
            bind(0, &step.uniform),
            bind(1, lbuf),
            bind(2, &step.meta),
            bind(3, &abuf),
            entry(4, q),
            bind(5, layer.k),
            bind(6, layer.v),
            bind(7, layer.k_scale),
            bind(8, layer.v_scale),
            entry(9, target),
        ]
    };
    // (Arrays, not vectors: a layer call allocates nothing for its entries.)
    let base = kernel_entries(main_lbuf, main_q, target);
    let (label, id, layout) = ("attention bind group", compiled.id, &compiled.layout);
    // The optional entries after the ten: the fused write's (10, 11), then the combine's (12,
    // 13); `n` of the fourteen slots are bound (the padding repeats an entry and is not bound).
    let (extra, n) = match (new_rows, combine) {
        (Some([k, v]), Some([p, c])) => ([k, v, p, c], 14),
        (Some([a, b]), None) | (None, Some([a, b])) => ([a.clone(), b.clone(), a, b], 12),
        (None, None) => (std::array::from_fn(|_| base[0].clone()), 10),
    };
    let [e0, e1, e2, e3, e4, e5, e6, e7, e8, e9] = base;
    let [x0, x1, x2, x3] = extra;
    let all = [e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, x0, x1, x2, x3];
    let bg = ctx.bind_group(label, id, layout, &all[..n])?;
    // A mixed batch's decode rows: the decode kernel over them, unsplit, ahead of the prefill
    // kernel (which skips them).
    let decode_part = match apart {
        Some(dl) => {
            let mut du = lu;
            du.heads_per_wg = dl.heads_per_wg;
            du.q_per_wg = dl.q_per_wg;
            du.head_chunks = dl.head_chunks;
            du.num_segments = 1;
            du.row_filter = ROWS_DECODE;
            let dbuf = ctx.intern(wgpu::BufferUsages::UNIFORM, bytemuck::bytes_of(&du))?;
            let dpipe = pipelines(ctx, layer, &dl, p.features(step.has_qq, false))?.main;
            let dbg = ctx.bind_group(
                "attention bind group",
                dpipe.id,
                &dpipe.layout,
                &kernel_entries(&dbuf, q.binding(rows, limits).0, o_bind.clone()),
            )?;
            Some((dpipe, dbg, dl.grid))
        }
        None => None,
    };
    let reduce = match (partials, reduce_pipe) {
        (Some(part), Some(reduce)) => {
            let rbg = ctx.bind_group(
                "reduce bind group",
                reduce.id,
                &reduce.layout,
                &[
                    bind(0, &step.uniform),
                    bind(1, &lbuf),
                    bind(3, &abuf),
                    entry(4, exact(part, need)),
                    entry(9, o_bind),
                ],
            )?;
            Some((reduce, rbg))
        }
        _ => None,
    };
    // Workgroups of the rotate pass: 16 rows each.
    let rot_grid = crate::gpu::bind::grid_2d(
        (rows as u64 * hq as u64).div_ceil(16),
        limits.max_compute_workgroups_per_dimension,
    );
    rec.record("quantkv/unified_attention", |pass| {
        if let Some(w) = &pre_write {
            w.record(pass);
        }
        if let Some((dpipe, dbg, [x, y, z])) = &decode_part {
            pass.set_pipeline(&dpipe.pipeline);
            pass.set_bind_group(0, dbg, &[]);
            pass.dispatch_workgroups(*x, *y, *z);
        }
        if let Some((rot, qbg, ..)) = &rotated {
            pass.set_pipeline(&rot.pipeline);
            pass.set_bind_group(0, qbg, &[]);
            pass.dispatch_workgroups(rot_grid.0, rot_grid.1, 1);
        }
        // Diagnostics (`QUANTKV_DEBUG_SKIP`, host bits no kernel uses): 2^28 leaves out the
        // split-K reduce, 2^29 the attention kernel.
        if debug_skip() & (1 << 29) == 0 {
            pass.set_pipeline(&compiled.pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(gx, gy, segments);
        }
        if let Some((reduce, rbg)) = reduce.filter(|_| debug_skip() & (1 << 28) == 0) {
            pass.set_pipeline(&reduce.pipeline);
            pass.set_bind_group(0, &rbg, &[]);
            pass.dispatch_workgroups(rows, hq, 1);
        }
    });
    Ok(fuse)
}

/// Whether the decode kernel of `lp` writes the step's new rows itself (one dispatch instead
/// of the write kernel's and the attention kernel's): a mode that stores rows as given (a
/// 16-byte row copy, no statistic or transform), a step of at most [`FUSE_MAX_KV_BYTES`] of
/// K/V whose writes are its decode rows' newest keys (`StepGpu::writes_newest`: the workgroups of a row's last segment then write
/// exactly the row they read last, and make the write visible to themselves with a storage
/// barrier; no other workgroup reads it), the decode kernel, room for the two extra storage
/// bindings, and input views that do not share a buffer with `out` or the segment buffer
/// (which the kernel writes). Anything else takes the two dispatches, with the same result.
fn fuse_admits(
    ctx: &Context,
    layer: &LayerRef<'_>,
    step: &StepGpu,
    lp: &LaunchPlan,
    rows: [&Tensor<'_>; 2],
    out: &Tensor<'_>,
    p: &AttentionParams<'_>,
) -> bool {
    let written = [Some(out.buffer), p.segment_buffer];
    let combine_bindings = if lp.combine { 2 } else { 0 };
    fused_write_exists(ctx, layer)
        && ctx.limits().max_storage_buffers_per_shader_stage
            >= FUSED_STORAGE_BINDINGS + combine_bindings
        && step.writes_newest
        && fuse_fits(&step.summary, &layer.geometry)
        && lp.kernel == Kernel::Decode
        && !transform_apart(lp, &layer.geometry)
        && rows
            .iter()
            .all(|t| !written.iter().flatten().any(|b| *b == t.buffer))
        && fused_write_knob()
}

/// K/V bytes a call may read (at most: sequences x longest context) and still fuse its write.
/// The fused kernel binds the pools read_write, which costs the streaming rung's loads their
/// read-only path: on an H200 (BENCHMARKS.md) fused calls were as fast as or faster than the
/// two dispatches up to B=1 L=32k (128 MiB at Hkv 8, D 128, f16; 52.6 vs 52.9 µs, head size
/// 64 34.9 vs 37.5), and 0.6–7 % slower from 256 MiB up (B=8 L=8k 93.0 vs 92.4 µs, B=64 L=2k
/// 161 vs 154, B=16 L=32k 616 vs 574). The host saves the same ~1.5 µs per layer either way,
/// which matters only where the GPU's share is small.
pub(crate) const FUSE_MAX_KV_BYTES: u64 = 128 << 20;

/// Whether a decode step of `sum`'s shape reads at most [`FUSE_MAX_KV_BYTES`] of K/V.
pub(crate) fn fuse_fits(sum: &super::StepSummary, g: &super::Geometry) -> bool {
    let row = g.head_size as u64 * 4 / g.elems_per_word.max(1) as u64;
    let keys = sum.num_seqs as u64 * sum.max_seqlen_k as u64;
    keys * g.num_kv_heads as u64 * 2 * row <= FUSE_MAX_KV_BYTES
}

/// The decode part of a mixed batch, where it runs apart: a batch on the prefill or unified
/// kernel (`Auto`, no prefix ranges, no split-K and no transform apart, so no partials pass)
/// with sequences of one query token gives those to the decode kernel, unsplit, in a dispatch
/// of its own ahead of the tiled kernel's, which skips them (`LayerU::row_filter`). On the
/// tiled kernels each such row took a block of rows of its own over the row's whole context.
/// The decode launch covers every sequence index (the others exit at once). `None` where the
/// batch runs as one launch.
pub(crate) fn decode_apart(
    ctx: &Context,
    g: &super::Geometry,
    step: &StepGpu,
    p: &AttentionParams<'_>,
    lp: &LaunchPlan,
) -> Result<Option<LaunchPlan>> {
    let sum = step.summary;
    if p.path != AttentionPath::Auto
        || lp.kernel == Kernel::Decode
        || step.decode_seqs == 0
        || sum.max_seqlen_q <= 1
        || step.has_mm
        || lp.segments > 1
        || transform_apart(lp, g)
        || !decode_apart_knob()
    {
        return Ok(None);
    }
    let dsum = super::StepSummary {
        max_seqlen_q: 1,
        max_seqlen_k: step.decode_max_k,
        ..sum
    };
    let dp = AttentionParams {
        split: SplitK::Off,
        ..*p
    };
    let dl = launch_plan(ctx.caps(), g, &dsum, &dp, false)?;
    Ok((dl.kernel == Kernel::Decode).then_some(dl))
}

/// `QUANTKV_DEBUG_NO_DECODE_APART` (with the `debug-knobs` feature): mixed batches as one
/// launch, for A/B runs.
fn decode_apart_knob() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !super::debug_flag(&OFF, "QUANTKV_DEBUG_NO_DECODE_APART")
}

/// Storage bindings of a decode kernel that writes the step's rows (2..=9, 10, 11).
const FUSED_STORAGE_BINDINGS: u32 = 10;

/// Whether `layer`'s decode kernels have a variant that writes the step's rows on `ctx`: the
/// mode stores rows as given and the adapter takes the two extra storage bindings.
pub(crate) fn fused_write_exists(ctx: &Context, layer: &LayerRef<'_>) -> bool {
    layer.mode.backend().stores_rows_as_given()
        && ctx.limits().max_storage_buffers_per_shader_stage >= FUSED_STORAGE_BINDINGS
}

/// `QUANTKV_DEBUG_NO_FUSED_WRITE` (with the `debug-knobs` feature): never fuse, for A/B runs.
fn fused_write_knob() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !super::debug_flag(&OFF, "QUANTKV_DEBUG_NO_FUSED_WRITE")
}

/// The pipelines a launch plan runs: the attention kernel and, with split-K, the reduce pass
/// (built on first use; shared with [`crate::KvCache::warm_up`]).
pub(crate) fn pipelines(
    ctx: &Context,
    layer: &LayerRef<'_>,
    lp: &LaunchPlan,
    mut features: Features,
) -> Result<Pipelines> {
    let g = &layer.geometry;
    let apart = transform_apart(lp, g);
    if lp.segments > 1 || apart {
        features.0 |= Features::SPLIT;
    }
    if lp.subgroups {
        features.0 |= Features::SUBGROUPS;
    }
    if lp.stream {
        features.0 |= Features::STREAM;
    }
    if lp.coop {
        features.0 |= Features::COOP;
    }
    if lp.combine {
        features.0 |= Features::COMBINE;
    }
    let codec = layer.mode.codec();
    let (d, tiling) = (g.head_size, lp.tiling);
    let key = PipelineKey {
        kernel: lp.kernel,
        k: g.mode,
        v: g.mode,
        mode_options: layer.mode.option_bits(),
        head_dim: d,
        dtype: g.dtype,
        features,
        tiling,
        debug: debug_skip(),
    };
    let main_source = || match lp.kernel {
        Kernel::Decode if lp.stream => {
            let (el, lpr) = super::plan::stream_geometry(&tiling, d);
            decode_stream_source(codec, d, features, tiling, g.elems_per_word, el, lpr)
        }
        Kernel::Decode => decode_source(codec, d, features, tiling),
        Kernel::Prefill => prefill_source(
            codec,
            d,
            features,
            tiling,
            super::plan::prefill_f16(ctx.caps(), g, lp.coop),
            super::plan::prefill_raw_split(lp.coop, g),
            super::plan::prefill_lookup_ahead(),
        ),
        _ => attention_source(codec, d, features, tiling),
    };
    let qkey = PipelineKey {
        kernel: Kernel::RotateQ,
        features: Features(0),
        tiling: Tiling {
            wg_size: ROTATE_WG,
            tile: 0,
            max_m: 0,
            owners: 0,
        },
        debug: 0,
        ..key
    };
    let rkey = PipelineKey {
        kernel: Kernel::Reduce,
        features: Features(features.0 & (Features::SINKS | Features::OUT_FP8)),
        tiling: Tiling {
            wg_size: reduce_wg(d),
            tile: 0,
            max_m: 0,
            owners: 0,
        },
        debug: 0,
        ..key
    };
    let need_reduce = (lp.segments > 1 && !lp.combine) || apart;
    let rotate_of = || -> Result<Option<Arc<Compiled>>> {
        if apart {
            Ok(Some(
                ctx.pipelines.get(ctx, qkey, || rotate_q_source(codec, d))?,
            ))
        } else {
            Ok(None)
        }
    };
    let reduce_of = || -> Result<Option<Arc<Compiled>>> {
        if need_reduce {
            Ok(Some(
                ctx.pipelines
                    .get(ctx, rkey, || reduce_source(codec, d, features))?,
            ))
        } else {
            Ok(None)
        }
    };
    if let Some(main) = ctx.pipelines.try_get(&key) {
        return Ok(Pipelines {
            main,
            reduce: reduce_of()?,
            rotate: rotate_of()?,
        });
    }
    // First use of this kernel variant: its companions (reduce, rotation) are built on other
    // threads while it builds here, so the call that first needs them waits for the longest
    // build rather than their sum (each build parses, validates and translates its WGSL on the
    // CPU before the driver compiles it).
    if !need_reduce && !apart {
        return Ok(Pipelines {
            main: ctx.pipelines.get(ctx, key, main_source)?,
            reduce: None,
            rotate: None,
        });
    }
    std::thread::scope(|s| {
        let reduce = need_reduce.then(|| s.spawn(reduce_of));
        let rotate = apart.then(|| s.spawn(rotate_of));
        let main = ctx.pipelines.get(ctx, key, main_source);
        let join = |h: Option<std::thread::ScopedJoinHandle<'_, _>>| match h {
            Some(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            None => Ok(None),
        };
        let (reduce, rotate) = (join(reduce), join(rotate));
        Ok(Pipelines {
            main: main?,
            reduce: reduce?,
            rotate: rotate?,
        })
    })
}

/// The pipelines one attention call runs.
pub(crate) struct Pipelines {
    /// The attention kernel.
    pub main: Arc<Compiled>,
    /// The split-K reduce pass (split-K, or a transform apart).
    pub reduce: Option<Arc<Compiled>>,
    /// The query-transform pass (a transform apart).
    pub rotate: Option<Arc<Compiled>>,
}

/// Whether the call runs the mode's query/output transform apart from the attention kernel:
/// the prefill kernel never holds it (kernels/prefill.wgsl); kernels/rotate_q.wgsl rotates
/// Q first and the reduce pass un-rotates the output.
pub(crate) fn transform_apart(lp: &LaunchPlan, g: &crate::kernels::Geometry) -> bool {
    lp.kernel == Kernel::Prefill && g.transform
}

/// Workgroup size of kernels/rotate_q.wgsl.
const ROTATE_WG: u32 = 64;

/// kernels/rotate_q.wgsl's source and constants.
pub fn rotate_q_source(codec: &Codec, d: u32) -> PipelineSource<'static> {
    PipelineSource {
        kernel: include_str!("../../shaders/kernels/rotate_q.wgsl"),
        codec: vec![codec.transform_source()],
        prelude: String::new(),
        includes: codec.includes,
        constants: vec![
            ("HEAD_DIM", d as f64),
            ("WG_SIZE", ROTATE_WG as f64),
            ("Q_SH_LEN", (4 * d) as f64),
        ],
        entries: vec![
            uniform_entry(0),
            uniform_entry(1),
            storage_entry(4, true),
            storage_entry(9, false),
        ],
    }
}

/// The attention kernel's source, override constants and layout for one variant.
pub fn attention_source(
    codec: &Codec,
    d: u32,
    f: Features,
    tiling: Tiling,
) -> PipelineSource<'static> {
    PipelineSource {
        kernel: include_str!("../../shaders/kernels/unified.wgsl"),
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

/// The prefill kernel's source, override constants and layout for one variant
/// (`Features::COOP`: on cooperative matrices, else the scalar twin; `f16`: tiles hold f16;
/// `split`: K and V as hi + lo f16 pairs, cooperative matrices only; `lookup_ahead`: each
/// tile's rows and scales looked up a tile ahead, `plan::prefill_lookup_ahead`).
pub fn prefill_source(
    codec: &Codec,
    d: u32,
    f: Features,
    tiling: Tiling,
    f16: bool,
    split: bool,
    lookup_ahead: bool,
) -> PipelineSource<'static> {
    let coop = f.has(Features::COOP);
    debug_assert!(coop || !split, "the twin holds raw values as they are");
    let (qs, ks, ps, ss) = super::plan::prefill_strides(d, tiling.tile, f16);
    let q_held = super::plan::prefill_q_held(coop, d);
    let p_lo = super::plan::prefill_p_lo(coop, f.has(Features::OUT_FP8));
    let v_split = super::plan::prefill_v_split(split, p_lo);
    // The twin holds its tiles as vec4s, the cooperative version as scalars.
    let unit = if coop { 1 } else { 4 };
    let (et, et_max) = if f16 {
        ("enable f16;\nalias ET = f16;", "65504.0")
    } else {
        ("alias ET = f32;", "3.4028235e38")
    };
    PipelineSource {
        kernel: if coop {
            include_str!("../../shaders/kernels/frag_coop.wgsl")
        } else {
            include_str!("../../shaders/kernels/frag_twin.wgsl")
        },
        // The mode's transform runs apart (kernels/rotate_q.wgsl, the reduce pass).
        codec: vec![codec.decode, codec.transform_apart_source()],
        prelude: format!(
            "{et}\nconst ET_MAX: f32 = {et_max};\nconst D_BLOCKS: u32 = {}u;\nconst T_BLOCKS: u32 = {}u;\nconst Q_HELD: bool = {q_held};\nconst RAW_SPLIT: bool = {split};\nconst V_SPLIT: bool = {v_split};\nconst P_LO: bool = {p_lo};\nconst KL_LEN: u32 = {}u;\nconst VL_LEN: u32 = {}u;\n{}{}",
            d / 16,
            tiling.tile / 16,
            // The lo halves of K (cooperative matrices, `split`) and of V (`v_split`), else
            // 16-byte stubs.
            if split { tiling.tile * ks } else { 8 },
            if v_split { tiling.tile * ks } else { 8 },
            // Cooperative matrices: V in its own tile, or over K's (a 16-byte stub then;
            // the twin always stages V over K).
            if coop {
                let v_apart = super::plan::prefill_v_apart(&tiling, coop);
                format!(
                    "const V_APART: bool = {v_apart};\nconst V_LEN: u32 = {}u;\n",
                    if v_apart { tiling.tile * ks } else { 8 }
                )
            } else {
                String::new()
            },
            // row_max / row_sum: by shuffles where a softmax row has several threads.
            if super::plan::prefill_rows_shuffle(&tiling, coop) {
                include_str!("../../shaders/kernels/rows_shuffle.wgsl")
            } else {
                include_str!("../../shaders/kernels/rows_one.wgsl")
            },
        ),
        includes: codec.includes,
        constants: vec![
            ("HEAD_DIM", d as f64),
            ("TK", tiling.tile as f64),
            ("WG_SIZE", tiling.wg_size as f64),
            ("MAX_M", tiling.max_m as f64),
            ("ROW_BLOCKS", (tiling.max_m / 16) as f64),
            ("OWNERS", tiling.owners as f64),
            ("KSPLIT", super::plan::prefill_ksplit(&tiling) as f64),
            ("QS", qs as f64),
            ("KS", ks as f64),
            ("PS", ps as f64),
            ("SS", ss as f64),
            // Held query fragments leave a 16-byte stub.
            (
                "QH_LEN",
                if q_held {
                    8.0
                } else {
                    (tiling.max_m * qs / unit) as f64
                },
            ),
            ("KV_LEN", (tiling.tile * ks / unit) as f64),
            // The P tile (cooperative matrices; the twin writes P over the scores): a stub.
            (
                "P_LEN",
                if coop {
                    (tiling.max_m * ps) as f64
                } else {
                    8.0
                },
            ),
            // P's lo half (cooperative matrices), else a 16-byte stub.
            (
                "PL_LEN",
                if p_lo {
                    (tiling.max_m * ps) as f64
                } else {
                    8.0
                },
            ),
            (
                "S_LEN",
                super::plan::prefill_s_len(&tiling, d, f16, coop) as f64,
            ),
            ("HAS_MM", flag(f, Features::MM_PREFIX)),
            ("IS_SPLIT", flag(f, Features::SPLIT)),
            ("LOOKUP_AHEAD", lookup_ahead as u32 as f64),
            ("MARGIN", super::plan::prefill_margin(p_lo) as f64),
            ("DEBUG_SKIP", debug_skip() as f64),
        ]
        .into_iter()
        .chain(feature_constants(f))
        .collect(),
        entries: attention_entries(),
    }
}

/// The decode kernel's source, override constants and layout for one variant (`tiling.tile` is
/// the key chunk; `Features::SUBGROUPS` selects the subgroup entry).
pub fn decode_source(
    codec: &Codec,
    d: u32,
    f: Features,
    tiling: Tiling,
) -> PipelineSource<'static> {
    PipelineSource {
        kernel: if f.has(Features::SUBGROUPS) {
            include_str!("../../shaders/kernels/decode_entry_sg.wgsl")
        } else {
            include_str!("../../shaders/kernels/decode_entry.wgsl")
        },
        codec: vec![codec.decode, codec.transform_source()],
        prelude: format!(
            "const M_MAX: u32 = {}u;\n{}{}{}",
            tiling.max_m,
            pool_bindings(f, "u32"),
            fused_prelude(f, "u32"),
            combine_prelude(f)
        ),
        includes: codec.includes,
        constants: vec![
            ("CHUNK", tiling.tile as f64),
            ("S_SH_LEN", (tiling.max_m * tiling.tile) as f64),
            ("RED_LEN", (tiling.max_m * tiling.wg_size) as f64),
            ("DEBUG_SKIP", debug_skip() as f64),
            ("CMB_LEN", combine_len(f)),
        ]
        .into_iter()
        .chain(shared_constants(d, f, tiling))
        .collect(),
        entries: decode_entries(f),
    }
}

/// The streaming decode rung's source (`epw` elements per cached u32 word, `el` elements per
/// lane, `lpr` lanes per row; see `shaders/kernels/decode_stream.wgsl`), override constants
/// and layout. The prelude gives the lane's load of a row at the code width: the K/V
/// bindings' element type, the word type `KW`, `k_word` / `v_word` and `k_unpack` /
/// `v_unpack`.
pub fn decode_stream_source(
    codec: &Codec,
    d: u32,
    f: Features,
    tiling: Tiling,
    epw: u32,
    el: u32,
    lpr: u32,
) -> PipelineSource<'static> {
    PipelineSource {
        kernel: include_str!("../../shaders/kernels/decode_stream.wgsl"),
        codec: vec![codec.decode, codec.transform_source()],
        prelude: stream_prelude(epw, el, lpr, f),
        includes: codec.includes,
        constants: shared_constants(d, f, tiling)
            .into_iter()
            .chain([
                ("DEBUG_SKIP", debug_skip() as f64),
                ("NSG_MAX", (tiling.wg_size / lpr) as f64),
                ("CMB_LEN", combine_len(f)),
            ])
            .collect(),
        entries: decode_entries(f),
    }
}

/// The K/V pool bindings (5, 6) of a decode kernel at element type `elem`: read-only, or
/// read_write when the kernel writes the step's rows.
fn pool_bindings(f: Features, elem: &str) -> String {
    let access = if f.has(Features::FUSED_WRITE) {
        "read_write"
    } else {
        "read"
    };
    format!(
        "@group(0) @binding(5) var<storage, {access}> k_cache: array<{elem}>;\n\
         @group(0) @binding(6) var<storage, {access}> v_cache: array<{elem}>;\n"
    )
}

/// What decode_common.wgsl's write_newest needs from the prelude: `FUSED_WRITE`, the input
/// views (bindings 10, 11), `new_row4` and `kv_store4` over pools of `elem` (`u32` or
/// `vec4<u32>`); stubs without the feature.
fn fused_prelude(f: Features, elem: &str) -> String {
    if !f.has(Features::FUSED_WRITE) {
        return "const FUSED_WRITE: bool = false;\n\
                fn new_row4(is_v: bool, i: u32) -> vec4<u32> { return vec4<u32>(0u); }\n\
                fn kv_store4(is_v: bool, i: u32, w: vec4<u32>) {}\n"
            .to_string();
    }
    let store = match elem {
        "u32" => "for (var j = 0u; j < 4u; j++) {\n        if (is_v) { v_cache[4u * i + j] = w[j]; } else { k_cache[4u * i + j] = w[j]; }\n    }",
        "vec4<u32>" => "if (is_v) { v_cache[i] = w; } else { k_cache[i] = w; }",
        _ => unreachable!("fused writes store 16-byte words into u32 or vec4<u32> pools"),
    };
    format!(
        "const FUSED_WRITE: bool = true;\n\
         @group(0) @binding(10) var<storage, read> key_in: array<vec4<u32>>;\n\
         @group(0) @binding(11) var<storage, read> value_in: array<vec4<u32>>;\n\
         fn new_row4(is_v: bool, i: u32) -> vec4<u32> {{\n    if (is_v) {{ return value_in[i]; }}\n    return key_in[i];\n}}\n\
         fn kv_store4(is_v: bool, i: u32, w: vec4<u32>) {{\n    {store}\n}}\n"
    )
}

/// The decode kernels' layout: the attention layout, the pools read_write and the input views
/// (10, 11) with `FUSED_WRITE`, the partials and arrival counters (12, 13) with `COMBINE`.
fn decode_entries(f: Features) -> Vec<wgpu::BindGroupLayoutEntry> {
    let mut e = attention_entries();
    if f.has(Features::FUSED_WRITE) {
        e[5] = storage_entry(5, false);
        e[6] = storage_entry(6, false);
        e.push(storage_entry(10, true));
        e.push(storage_entry(11, true));
    }
    if f.has(Features::COMBINE) {
        e.push(storage_entry(12, false));
        e.push(storage_entry(13, false));
    }
    e
}

/// The combine's staged pairs (`CMB_LEN`): [`COMBINE_SLOTS`] with `COMBINE`, else 1.
fn combine_len(f: Features) -> f64 {
    if f.has(Features::COMBINE) {
        COMBINE_SLOTS as f64
    } else {
        1.0
    }
}

/// What decode_common.wgsl's combine needs from the prelude: `COMBINE`, the partials (binding
/// 12, coherent 16-byte words in the reduce pass's layout) and arrival counters (13), and their
/// accessors; stubs without the feature.
fn combine_prelude(f: Features) -> &'static str {
    if !f.has(Features::COMBINE) {
        return "const COMBINE: bool = false;\n\
                fn part_store4(i: u32, v: vec4<f32>) {}\n\
                fn part_store_ml(w: u32, ml: vec2<f32>) {}\n\
                fn part_load4(i: u32) -> vec4<f32> { return vec4<f32>(0.0); }\n\
                fn part_load_ml(w: u32) -> vec2<f32> { return vec2<f32>(0.0); }\n\
                fn arrive_add(c: u32) -> u32 { return 0u; }\n\
                fn arrive_reset(c: u32) {}\n";
    }
    // (m, l) pairs sit at even words: the first or second half of a 16-byte word.
    // Diagnostics only (`QUANTKV_DEBUG_SKIP` bit 14): the binding without `@coherent`, to
    // measure what coherence costs the combine's reads (results may be wrong).
    if debug_skip() & (1 << 14) != 0 {
        static PLAIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        return PLAIN.get_or_init(|| COMBINE_ON.replacen("@coherent ", "", 1));
    }
    COMBINE_ON
}

/// [`combine_prelude`] with `COMBINE`.
const COMBINE_ON: &str = "const COMBINE: bool = true;\n\
     @group(0) @binding(12) @coherent var<storage, read_write> part: array<vec4<f32>>;\n\
     @group(0) @binding(13) var<storage, read_write> arrive: array<atomic<u32>>;\n\
     fn part_store4(i: u32, v: vec4<f32>) { part[i] = v; }\n\
     fn part_store_ml(w: u32, ml: vec2<f32>) {\n\
         if ((w & 2u) == 0u) { part[w / 4u].x = ml.x; part[w / 4u].y = ml.y; }\n\
         else { part[w / 4u].z = ml.x; part[w / 4u].w = ml.y; }\n\
     }\n\
     fn part_load4(i: u32) -> vec4<f32> { return part[i]; }\n\
     fn part_load_ml(w: u32) -> vec2<f32> {\n\
         let x = part[w / 4u];\n\
         return select(x.xy, x.zw, (w & 2u) != 0u);\n\
     }\n\
     fn arrive_add(c: u32) -> u32 { return atomicAdd(&arrive[c], 1u); }\n\
     fn arrive_reset(c: u32) { atomicStore(&arrive[c], 0u); }\n";

/// The streaming rung's per-width prelude (`el` = 8 or 16 elements per lane); `f`: the pools'
/// access and the fused write (see [`fused_prelude`]).
fn stream_prelude(epw: u32, el: u32, lpr: u32, f: Features) -> String {
    // (binding element, KW, load of K (`@X` = k or v, `@R` = its row words), the half's words
    // `x` from the lane's load `w` (`half` = 0 or 1), unpack arguments of its two groups of
    // four)
    let (elem, kw, load, pre, a, b) = match (epw, el) {
        (1, 8) => (
            "vec4<u32>",
            "W8",
            "let i = row * (ly.@R / 4u) + 2u * lane;\n    return W8(@X_cache[i], @X_cache[i + 1u]);",
            "let x = w;",
            "x.a, 0u",
            "x.b, 0u",
        ),
        (2, 8) => (
            "vec4<u32>",
            "vec4<u32>",
            "return @X_cache[row * (ly.@R / 4u) + lane];",
            "let x = w;",
            "vec4<u32>(x.x, x.y, 0u, 0u), 0u",
            "vec4<u32>(x.z, x.w, 0u, 0u), 0u",
        ),
        (2, 16) => (
            "vec4<u32>",
            "W8",
            "let i = row * (ly.@R / 4u) + 2u * lane;\n    return W8(@X_cache[i], @X_cache[i + 1u]);",
            "let x = select(w.a, w.b, half == 1u);",
            "vec4<u32>(x.x, x.y, 0u, 0u), 0u",
            "vec4<u32>(x.z, x.w, 0u, 0u), 0u",
        ),
        (4, 8) => (
            "vec2<u32>",
            "vec2<u32>",
            "return @X_cache[row * (ly.@R / 2u) + lane];",
            "let x = w;",
            "vec4<u32>(x.x, 0u, 0u, 0u), 0u",
            "vec4<u32>(x.y, 0u, 0u, 0u), 0u",
        ),
        (4, 16) => (
            "vec4<u32>",
            "vec4<u32>",
            "return @X_cache[row * (ly.@R / 4u) + lane];",
            "let x = select(w.xy, w.zw, half == 1u);",
            "vec4<u32>(x.x, 0u, 0u, 0u), 0u",
            "vec4<u32>(x.y, 0u, 0u, 0u), 0u",
        ),
        (8, 8) => (
            "u32",
            "u32",
            "return @X_cache[row * ly.@R + lane];",
            "let x = w;",
            "vec4<u32>(x, 0u, 0u, 0u), 0u",
            "vec4<u32>(x, 0u, 0u, 0u), 1u",
        ),
        (8, 16) => (
            "vec2<u32>",
            "vec2<u32>",
            "return @X_cache[row * (ly.@R / 2u) + lane];",
            "let x = select(w.x, w.y, half == 1u);",
            "vec4<u32>(x, 0u, 0u, 0u), 0u",
            "vec4<u32>(x, 0u, 0u, 0u), 1u",
        ),
        (16, 8) => (
            "u32",
            "u32",
            "return @X_cache[row * ly.@R + lane / 2u];",
            "let x = w;",
            "vec4<u32>(x, 0u, 0u, 0u), 2u * (lane & 1u)",
            "vec4<u32>(x, 0u, 0u, 0u), 2u * (lane & 1u) + 1u",
        ),
        (16, 16) => (
            "u32",
            "u32",
            "return @X_cache[row * ly.@R + lane];",
            "let x = w;",
            "vec4<u32>(x, 0u, 0u, 0u), 2u * half",
            "vec4<u32>(x, 0u, 0u, 0u), 2u * half + 1u",
        ),
        _ => unreachable!("stream_lanes admits these widths and lane sizes"),
    };
    let mut s = format!(
        "const M_MAX: u32 = {}u;\nconst LPR: u32 = {lpr}u;\nconst HALVES: u32 = {}u;\nstruct W8 {{\n    a: vec4<u32>,\n    b: vec4<u32>,\n}}\nalias KW = {kw};\n",
        super::plan::STREAM_HEADS,
        el / 8
    );
    s.push_str(&pool_bindings(f, elem));
    s.push_str(&fused_prelude(f, elem));
    s.push_str(combine_prelude(f));
    // A lane's words, or zero words (a key outside the segment): one select per word.
    let keep = if kw == "W8" {
        "W8(select(vec4<u32>(0u), w.a, keep), select(vec4<u32>(0u), w.b, keep))".to_string()
    } else {
        format!("select({kw}(), w, keep)")
    };
    let _ = writeln!(
        s,
        "fn kw_keep(w: KW, keep: bool) -> KW {{\n    return {keep};\n}}"
    );
    for (x, rw) in [("k", "k_row_words"), ("v", "v_row_words")] {
        let load = load.replace("@X", x).replace("@R", rw);
        let _ = write!(
            s,
            "fn {x}_word(row: u32, lane: u32) -> KW {{\n    {load}\n}}\n\
             fn {x}_unpack(w: KW, lane: u32, half: u32) -> E8 {{\n    {pre}\n    return E8({x}_raw4({a}), {x}_raw4({b}));\n}}\n"
        );
    }
    s
}

/// The geometry and feature overrides both attention kernels declare.
fn shared_constants(d: u32, f: Features, tiling: Tiling) -> Vec<(&'static str, f64)> {
    let mut v = vec![
        ("HEAD_DIM", d as f64),
        ("WG_SIZE", tiling.wg_size as f64),
        ("MAX_M", tiling.max_m as f64),
        ("Q_SH_LEN", (tiling.max_m * d / 4) as f64),
    ];
    v.extend(feature_constants(f));
    v.push(("IS_SPLIT", flag(f, Features::SPLIT)));
    v
}

/// The feature overrides every attention kernel declares (split-K aside).
fn feature_constants(f: Features) -> [(&'static str, f64); 5] {
    let alibi = if f.has(Features::ALIBI_SQRT) {
        2.0
    } else {
        flag(f, Features::ALIBI)
    };
    [
        ("HAS_SOFTCAP", flag(f, Features::SOFTCAP)),
        ("HAS_SINKS", flag(f, Features::SINKS)),
        ("ALIBI_MODE", alibi),
        ("HAS_QQ", flag(f, Features::QQ_BIAS)),
        ("OUT_FP8", flag(f, Features::OUT_FP8)),
    ]
}

/// The split-K reduce kernel's source, constants and layout.
pub fn reduce_source(codec: &Codec, d: u32, f: Features) -> PipelineSource<'static> {
    PipelineSource {
        kernel: include_str!("../../shaders/kernels/reduce.wgsl"),
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
/// more), so layers of one step share it instead of creating one per call; it returns to the
/// context's step pool with the plan's buffers, so later steps bind the same buffer.
fn partials_buffer(ctx: &Context, step: &StepGpu, bytes: u64) -> Result<Arc<wgpu::Buffer>> {
    scratch_buffer(ctx, &step.partials, "split-K partials", bytes)
}

/// A step scratch buffer kept in `slot` (see `partials_buffer`).
fn scratch_buffer(
    ctx: &Context,
    slot: &std::sync::Mutex<Option<Arc<wgpu::Buffer>>>,
    what: &'static str,
    bytes: u64,
) -> Result<Arc<wgpu::Buffer>> {
    let limit = ctx.limits().max_storage_buffer_binding_size;
    if bytes > limit {
        return Err(Error::InvalidBuffer {
            what,
            detail: format!(
                "{bytes} bytes exceed the binding limit {limit}; use fewer segments or tokens per call"
            ),
        });
    }
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = slot.as_ref() {
        if b.size() >= bytes {
            return Ok(b.clone());
        }
    }
    // Rounded up to a power of two (within the limit): the buffer stays with the step
    // buffers for later steps, so a batch that grows by a few rows does not replace it.
    let size = bytes.next_power_of_two().min(limit).max(bytes).max(16);
    let b = Arc::new(ctx.guarded(what, size, || {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    })?);
    *slot = Some(b.clone());
    Ok(b)
}
