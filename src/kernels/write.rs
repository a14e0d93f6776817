//! `reshape_and_cache`: K/V rows into their paged slots (spec §3). Modes that store rows as
//! given take a 16-byte row copy; the others take `write_rows.wgsl` with the mode's encode
//! contract (and its option constants, which only the mode's WGSL names).

use super::plan::env_knob;
use super::{check_step, layer_uniform, LayerRef, Rec, StepGpu};
use crate::error::{shape, Result};
use crate::gpu::bind::{bind, entry, grid_2d, storage_entry, uniform_entry};
use crate::gpu::tensor::distinct;
use std::sync::Arc;

use crate::gpu::{
    Caps, Compiled, Context, Features, Kernel, PipelineKey, PipelineSource, Tensor, Tiling,
};
use crate::modes::Codec;

/// Records `reshape_and_cache` for one layer: validates, then records the core write kernel
/// (a row copy, or the quantizing kernel with the mode's encode contract).
pub(crate) fn encode(
    ctx: &Context,
    rec: Rec<'_, '_>,
    layer: &LayerRef<'_>,
    step: &StepGpu,
    key: &Tensor<'_>,
    value: &Tensor<'_>,
) -> Result<()> {
    check(ctx, layer, step, key, value)?;
    if let Some(w) = prepare(ctx, layer, step, key, value)? {
        rec.record("quantkv/reshape_and_cache", |pass| w.record(pass));
    }
    Ok(())
}

/// A validated write, built and ready to record (nothing recorded yet).
pub(crate) struct Prepared {
    compiled: Arc<Compiled>,
    bg: wgpu::BindGroup,
    grid: (u32, u32),
}

impl Prepared {
    /// Records the write's dispatch into `pass`.
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.compiled.pipeline);
        pass.set_bind_group(0, &self.bg, &[]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
    }
}

/// Validates a write of `key` / `value` for `step` into `layer` (shapes, dtypes, views, buffers
/// that must differ): the checks every path that writes the cache makes, the fused decode
/// write included. Returns the number of rows written.
pub(crate) fn check(
    ctx: &Context,
    layer: &LayerRef<'_>,
    step: &StepGpu,
    key: &Tensor<'_>,
    value: &Tensor<'_>,
) -> Result<u32> {
    let cfg = &layer.geometry;
    check_step(cfg, step)?;
    let n = step.summary.num_write;
    let inner = [cfg.num_kv_heads, cfg.head_size];
    ctx.alive()?;
    // key == value is fine (both read-only); neither may be one of the pools it writes.
    for (what, b) in [("key", key.buffer), ("value", value.buffer)] {
        distinct(&[
            (what, b),
            ("k cache", layer.k),
            ("v cache", layer.v),
            ("k scale cache", layer.k_scale),
            ("v scale cache", layer.v_scale),
        ])?;
    }
    key.check("key", cfg.dtype, n, inner, ctx.limits())?;
    value.check("value", cfg.dtype, n, inner, ctx.limits())?;

    if key.shape[0] != n || value.shape[0] != n {
        return Err(shape(
            "key/value",
            format!("{n} rows (slot_mapping length)"),
            format!("{} and {}", key.shape[0], value.shape[0]),
        ));
    }
    Ok(n)
}

/// Builds a write that [`check`] accepted (its pipeline and bind group); `None` when there is
/// nothing to write.
pub(crate) fn prepare(
    ctx: &Context,
    layer: &LayerRef<'_>,
    step: &StepGpu,
    key: &Tensor<'_>,
    value: &Tensor<'_>,
) -> Result<Option<Prepared>> {
    let n = step.summary.num_write;
    if n == 0 {
        return Ok(None);
    }
    let cfg = &layer.geometry;
    let copy = layer.mode.backend().stores_rows_as_given();
    let (compiled, tiling) = pipeline(ctx, layer)?;
    let mut lu = layer_uniform(layer);
    let (k_bind, ki) = key.binding(n, ctx.limits());
    let (v_bind, vi) = value.binding(n, ctx.limits());
    (lu.ki_off, lu.ki_tok, lu.ki_head) = (ki.off, ki.tok, ki.head);
    (lu.vi_off, lu.vi_tok, lu.vi_head) = (vi.off, vi.tok, vi.head);
    let lbuf = ctx.intern(wgpu::BufferUsages::UNIFORM, bytemuck::bytes_of(&lu))?;
    let bg = ctx.bind_group(
        "write bind group",
        compiled.id,
        &compiled.layout,
        &[
            bind(0, &step.uniform),
            bind(1, &lbuf),
            bind(2, &step.meta),
            entry(3, k_bind),
            entry(4, v_bind),
            bind(5, layer.k),
            bind(6, layer.v),
            bind(7, layer.k_scale),
            bind(8, layer.v_scale),
        ],
    )?;
    let groups = if copy {
        let words = n as u64 * cfg.num_kv_heads as u64 * lu.k_row_words as u64;
        debug_assert!(lu.k_row_words.is_multiple_of(4));
        (words / (4 * tiling.tile as u64)).div_ceil(tiling.wg_size as u64)
    } else {
        (n as u64 * cfg.num_kv_heads as u64 * 2).div_ceil(tiling.tile as u64)
    };
    let grid = grid_2d(groups, ctx.limits().max_compute_workgroups_per_dimension);
    Ok(Some(Prepared { compiled, bg, grid }))
}

/// The write pipeline of `layer`'s mode (built on first use; shared with
/// [`crate::KvCache::warm_up`]) and the geometry it runs with.
pub(crate) fn pipeline(ctx: &Context, layer: &LayerRef<'_>) -> Result<(Arc<Compiled>, Tiling)> {
    let cfg = &layer.geometry;
    let copy = layer.mode.backend().stores_rows_as_given();
    let codec = layer.mode.codec();
    let (tiling, sg) = if copy {
        (write_copy_tiling(), false)
    } else {
        write_rows_plan(
            ctx.caps(),
            cfg.head_size,
            layer.mode.backend().packing_factor(),
            codec.transform.is_some(),
        )
    };
    let pkey = PipelineKey {
        kernel: if copy {
            Kernel::WriteCopy
        } else {
            Kernel::WriteRows
        },
        k: cfg.mode,
        v: cfg.mode,
        mode_options: if copy { 0 } else { layer.mode.option_bits() },
        head_dim: cfg.head_size,
        dtype: cfg.dtype,
        features: if sg {
            Features(Features::SUBGROUPS)
        } else {
            Features::default()
        },
        tiling,
        debug: if copy { 0 } else { super::debug_skip() },
    };
    let compiled = if copy {
        ctx.pipelines.get(ctx, pkey, || write_copy_source(tiling))?
    } else {
        ctx.pipelines.get(ctx, pkey, || {
            write_rows_source(
                codec,
                cfg.head_size,
                tiling,
                sg,
                layer.mode.backend().packing_factor(),
            )
        })?
    };
    Ok((compiled, tiling))
}

/// Geometry of the row-copy write kernel: 256 threads, each `tile` = CH = 2 16-byte pieces
/// (the `QUANTKV_DEBUG_WRITE_CH` knob: 1, 2 or 4), consecutive threads on consecutive pieces.
/// Measured on an H200, 4096 tokens (BENCHMARKS.md): CH 1 17.2 µs, 2 16.1, 4 16.8; with each
/// thread's pieces adjacent instead (loads strided across the subgroup) 2 and 4 were slower
/// than 1 (22.5, 27.7 µs).
pub fn write_copy_tiling() -> Tiling {
    Tiling {
        wg_size: 256,
        tile: write_ch_knob().unwrap_or(2),
        max_m: 0,
        owners: 0,
    }
}

fn write_ch_knob() -> Option<u32> {
    static CH: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&CH, "QUANTKV_DEBUG_WRITE_CH").filter(|v| matches!(v, 1 | 2 | 4))
}

/// Elements per lane of the quantizing write kernel (`E` in write_rows.wgsl) at head size
/// `head_dim`: whole code words, `e_min` ([`write_e_min`]) halved down to 16 until it divides
/// the head size (head sizes are multiples of 16, so 16 always does).
pub fn lane_elems(packing_factor: u32, head_dim: u32, e_min: u32) -> u32 {
    let mut e = e_min;
    while e > 16 && !head_dim.is_multiple_of(e) {
        e /= 2;
    }
    e.max(4 * packing_factor)
}

/// The fewest elements a lane of the quantizing write kernel holds (`E_MIN`): 32 for modes
/// that rotate their rows (`rotates`) on the subgroup entry, else 16; the
/// `QUANTKV_DEBUG_WRITE_E` knob (8, 16 or 32, `debug-knobs`) sets it for every mode. Measured
/// on an H200, 4096 tokens (BENCHMARKS.md, three alternating passes per comparison): 16 was
/// faster than 8 for every mode (INT8 per-(token, head) 20.1 -> 16.2 µs, FP8 per-(token, head)
/// 25.2 -> 22.2, INT4 33.5 -> 25.8, INT8 per-tensor 18.4 -> 16.6): twice the independent loads
/// in flight per lane and half the lanes in each row reduction. 32 is faster again where the
/// row is rotated (INT4 25.8 -> 23.4, INT2 17.9 -> 16.1: two of the five Walsh-Hadamard stages
/// across lanes instead of three) but slower for the others (INT8 per-(token, head) 17.9, FP8
/// per-tensor 44.9 against 28.9) and on the portable entry (INT4 117.9 against 75.0).
pub fn write_e_min(rotates: bool, subgroups: bool) -> u32 {
    static KNOB: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    env_knob(&KNOB, "QUANTKV_DEBUG_WRITE_E")
        .filter(|v| matches!(v, 8 | 16 | 32))
        .unwrap_or(if rotates && subgroups { 32 } else { 16 })
}

/// Geometry of the quantizing write kernel for a mode storing `packing_factor` codes per byte,
/// at `e_min` elements per lane at least ([`write_e_min`]): each lane holds
/// `E =` [`lane_elems`] elements (whole code words), a row takes `head_dim / E` lanes, and a
/// workgroup takes `tile` rows: about 128 lanes, fewer where the rows' staging for rotation
/// modes (portable entry, f32 per element) would pass 8 KiB.
pub fn write_rows_tiling(head_dim: u32, packing_factor: u32, e_min: u32) -> Tiling {
    let lanes = head_dim / lane_elems(packing_factor, head_dim, e_min);
    let rows = (128 / lanes).min(2048 / head_dim).max(1);
    Tiling {
        wg_size: rows * lanes,
        tile: rows,
        max_m: 0,
        owners: 0,
    }
}

/// The quantizing write kernel's geometry on `caps` for a mode storing `packing_factor` codes
/// per byte (`rotates`: the mode transforms its rows before quantizing), and whether it takes
/// the subgroup entry ([`write_subgroups`]).
pub fn write_rows_plan(
    caps: &Caps,
    head_dim: u32,
    packing_factor: u32,
    rotates: bool,
) -> (Tiling, bool) {
    let wide = write_rows_tiling(head_dim, packing_factor, write_e_min(rotates, true));
    if write_subgroups(caps, head_dim, wide) {
        return (wide, true);
    }
    let t = write_rows_tiling(head_dim, packing_factor, write_e_min(rotates, false));
    (t, write_subgroups(caps, head_dim, t))
}

/// The row-copy write kernel's source, constants and layout.
pub fn write_copy_source(tiling: Tiling) -> PipelineSource<'static> {
    PipelineSource {
        kernel: include_str!("../../shaders/kernels/write_copy.wgsl"),
        codec: vec![],
        prelude: String::new(),
        includes: &[],
        constants: vec![
            ("WG_SIZE", tiling.wg_size as f64),
            ("CH", tiling.tile.max(1) as f64),
        ],
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

/// Whether the quantizing write kernel at `tiling` takes its subgroup entry on `caps`: a row's
/// lanes (a power of two) fit the smallest subgroup, and the workgroup is whole subgroups.
pub fn write_subgroups(caps: &Caps, head_dim: u32, tiling: Tiling) -> bool {
    let lanes = tiling.wg_size / tiling.tile.max(1);
    caps.subgroups
        && lanes.is_power_of_two()
        && head_dim.is_multiple_of(lanes)
        && lanes <= caps.subgroup_min_size
        && caps.subgroup_max_size > 0
        && tiling.wg_size.is_multiple_of(caps.subgroup_max_size)
}

/// The quantizing write kernel's source (with the mode's encode contract), constants, layout;
/// `subgroups`: the subgroup entry (see [`write_subgroups`]); `packing_factor`: the mode's
/// codes per byte (1, 2 or 4).
pub fn write_rows_source(
    codec: &Codec,
    head_dim: u32,
    tiling: Tiling,
    subgroups: bool,
    packing_factor: u32,
) -> PipelineSource<'static> {
    let mut src = write_copy_source(tiling);
    src.constants.retain(|(k, _)| *k != "CH"); // the row copy's alone
    src.kernel = if subgroups {
        include_str!("../../shaders/kernels/write_entry_sg.wgsl")
    } else {
        include_str!("../../shaders/kernels/write_entry.wgsl")
    };
    // Elements per lane, as the tiling was made (`lane_elems`): head_dim / (wg_size / rows).
    let e = head_dim * tiling.tile / tiling.wg_size;
    // The code stores: 16-byte stores where a row's words and a lane's words (NW in
    // write_rows.wgsl) are both whole 16-byte pieces.
    let code_bits = 8 / packing_factor;
    let nw = e.max(32 / code_bits) * code_bits / 32;
    let row_words = head_dim * code_bits / 32;
    let store = if nw.is_multiple_of(4) && row_words.is_multiple_of(4) {
        include_str!("../../shaders/kernels/write_store_w4.wgsl")
    } else {
        include_str!("../../shaders/kernels/write_store_w1.wgsl")
    };
    src.prelude = format!("const E_MIN: u32 = {e}u;\n{store}");
    src.codec = codec.encode.into_iter().collect();
    src.includes = codec.includes;
    src.constants.push(("HEAD_DIM", head_dim as f64));
    src.constants.push(("ROWS", tiling.tile as f64));
    // The subgroup entry stages nothing (x_sh is only named by the mode's enc_transform).
    let x_len = if subgroups { 1 } else { tiling.tile * head_dim };
    src.constants.push(("X_LEN", x_len as f64));
    src.constants.extend(codec.encode_constants.iter().copied());
    let skip = (super::debug_skip() >> 20) & 31;
    if skip != 0 {
        src.constants.push(("DEBUG_SKIP", skip as f64));
    }
    src
}
