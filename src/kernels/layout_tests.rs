//! CPU-only shader checks, run as unit tests so they can reach the kernels' sources:
//! - every distinct WGSL variant quantkv can build is parsed and validated by naga (once per
//!   distinct composed text), its overrides resolved with the values wgpu would pass, and
//!   translated to SPIR-V, MSL and HLSL (once per distinct text + constants), in parallel, so
//!   Vulkan, Metal and DX12 shader compilation is checked even where those drivers are absent;
//! - the host copies of the WGSL layout: uniform struct offsets and sizes, bind group binding
//!   numbers, and each kernel's workgroup memory for every tiling the planner can pick, against
//!   naga's module and the adapter limit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use super::attention::{
    attention_source, decode_source, decode_stream_source, prefill_source, reduce_source,
    rotate_q_source,
};
use super::plan::{
    attention_smem, attention_tiling, combine_smem, coop_admits, decode_smem, decode_tiling,
    prefill_f16, prefill_ksplit, prefill_p_lo, prefill_raw_split, prefill_rows_shuffle,
    prefill_smem, prefill_tiling, prefill_tiling_for, prefill_v_apart, prefill_v_split,
    stream_lanes, stream_lanes_at, stream_segments, stream_smem, stream_tiling, PREFILL_MARGIN,
};
use super::write::{
    lane_elems, write_copy_source, write_e_min, write_rows_plan, write_rows_source,
    write_rows_tiling,
};
use super::Geometry;
use crate::gpu::pipeline::full_source;
use crate::gpu::uniforms::{LayerUniform, StepUniform};
use crate::gpu::{Features, PipelineSource, Tiling};
use crate::modes::{create, ModeOptions};
use crate::types::{Dtype, KvQuantMode};

use naga::valid::Capabilities as C;

fn no_subgroups() -> C {
    C::all() - C::SUBGROUP - C::SUBGROUP_BARRIER - C::SUBGROUP_VERTEX_STAGE
}

/// One variant to check: its composed text, override constants and validation capabilities.
struct Variant {
    label: String,
    text: String,
    constants: Vec<(&'static str, f64)>,
    caps: C,
    /// Translated to HLSL too (naga has no cooperative matrices for HLSL).
    hlsl: bool,
}

fn variant(label: String, dtype: Dtype, src: &PipelineSource<'_>, caps: C) -> Variant {
    Variant {
        label,
        text: full_source(src.kernel, dtype, &src.parts(), src.includes).unwrap(),
        constants: src.constants.clone(),
        caps,
        hlsl: !src.kernel.contains("wgpu_cooperative_matrix"),
    }
}

/// Adapter capabilities for planning in tests: subgroups of `sg` lanes (0 = none),
/// cooperative matrices, SHADER_F16, and `smem` bytes of workgroup memory.
fn test_caps(sg: u32, coop: bool, f16: bool, smem: u32) -> crate::gpu::Caps {
    crate::gpu::Caps {
        subgroups: sg > 0,
        subgroup_min_size: sg,
        subgroup_max_size: sg,
        shader_f16: f16,
        timestamps: false,
        coop_f16: coop,
        limits: limits(smem),
        multiprocessors: None,
        split_combine: false,
    }
}

/// `test_geometry` of INT2 as a backend whose tile values f16 does not hold exactly would
/// have it (the prefill kernel's hi + lo pairs; no built-in mode takes them since INT2's
/// integer tile form).
fn inexact_tiles(dtype: Dtype, d: u32) -> Geometry {
    Geometry {
        tile_f16_exact: false,
        ..test_geometry(KvQuantMode::Int2PerTokenHead, dtype, d)
    }
}

fn test_geometry(mode: KvQuantMode, dtype: Dtype, d: u32) -> Geometry {
    let backend = create(mode).unwrap();
    Geometry {
        mode,
        elems_per_word: backend.elems_per_word(dtype),
        num_blocks: 1,
        block_size: 16,
        num_kv_heads: 1,
        head_size: d,
        dtype,
        transform: backend
            .codec(dtype, &ModeOptions::default())
            .transform
            .is_some(),
        tile_f16_exact: backend.tile_values_exact_in_f16(),
    }
}

fn parse(label: &str, text: &str, caps: C) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(text)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(text)));
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(text)));
    (module, info)
}

fn resolve(
    label: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    constants: &[(&'static str, f64)],
) -> (naga::Module, naga::valid::ModuleInfo) {
    let mut consts = naga::back::PipelineConstants::default();
    for (k, v) in constants {
        consts.insert(k.to_string(), *v);
    }
    let (m, i) = naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((naga::ShaderStage::Compute, "main")),
        &consts,
    )
    .unwrap_or_else(|e| panic!("{label}: overrides: {e}"));
    (m.into_owned(), i.into_owned())
}

/// `f` over `items` on every core (naga's parse, validation and translation of a few hundred
/// kernels are most of the unit tests' time), results in order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let next = Mutex::new(0usize);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(item) = items.get(i) else {
                    break;
                };
                let r = f(item);
                out.lock().unwrap()[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect()
}

fn translate(label: &str, module: &naga::Module, info: &naga::valid::ModuleInfo, hlsl_too: bool) {
    let stage = naga::ShaderStage::Compute;
    naga::back::spv::write_vec(
        module,
        info,
        &naga::back::spv::Options::default(),
        Some(&naga::back::spv::PipelineOptions {
            shader_stage: stage,
            entry_point: "main".into(),
        }),
    )
    .unwrap_or_else(|e| panic!("{label}: SPIR-V: {e}"));
    let msl_opts = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    naga::back::msl::write_string(
        module,
        info,
        &msl_opts,
        &naga::back::msl::PipelineOptions {
            entry_point: Some((stage, "main".into())),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{label}: MSL: {e}"));
    if !hlsl_too {
        return;
    }
    let mut hlsl = String::new();
    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let hlsl_pipe = naga::back::hlsl::PipelineOptions {
        entry_point: Some((stage, "main".into())),
    };
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &hlsl_pipe)
        .write(module, info, None)
        .unwrap_or_else(|e| panic!("{label}: HLSL: {e}"));
}

/// Bytes of every `var<workgroup>` of a resolved module, each rounded to 16 as drivers lay
/// them out.
fn workgroup_bytes(module: &naga::Module) -> u32 {
    module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| {
            module.types[g.ty]
                .inner
                .size(module.to_ctx())
                .next_multiple_of(16)
        })
        .sum()
}

const ALL_FEATURES: u32 = 127 | Features::OUT_FP8;

fn limits(smem: u32) -> wgpu::Limits {
    wgpu::Limits {
        max_compute_workgroup_storage_size: smem,
        ..wgpu::Limits::default()
    }
}

/// Every variant the suite covers. Full feature products only where they can differ: the core
/// is mode-free, so every feature combination runs on one plain mode (`none`) and one rotated
/// mode (`int4_per_token_head`); every mode and dtype gets each feature alone, none and all,
/// at the head sizes that change the codec's word layout.
fn variants() -> Vec<Variant> {
    let limits = limits(32768);
    let mut out = Vec::new();
    let opts = ModeOptions::default();
    for mode in KvQuantMode::ALL {
        let backend = create(mode).expect("every mode is built");
        for dtype in [Dtype::F16, Dtype::F32, Dtype::Bf16] {
            let codec = backend.codec(dtype, &opts);
            let full = dtype == Dtype::F16
                && matches!(mode, KvQuantMode::None | KvQuantMode::Int4PerTokenHead);
            let dims: Vec<u32> = if full {
                (32..=256).step_by(16).collect()
            } else if dtype == Dtype::Bf16 {
                vec![48, 128]
            } else {
                vec![32, 48, 80, 128, 256]
            };
            for &d in &dims {
                let rows = if d % 32 == 0 { 4 } else { 16 };
                let tiling = attention_tiling(d, &limits, rows).expect("tiling fits 32 KiB");
                let combos: Vec<u32> = if full && d == 64 {
                    (0..=127)
                        .chain((0..=127).map(|f| f | Features::OUT_FP8))
                        .collect()
                } else {
                    let mut v: Vec<u32> = (0..7).map(|b| 1 << b).collect();
                    v.extend([
                        0,
                        Features::OUT_FP8,
                        ALL_FEATURES,
                        ALL_FEATURES & !Features::ALIBI,
                    ]);
                    v
                };
                let base = format!("{}/{}/d{d}", mode.id(), dtype.name());
                for f in combos {
                    let f = Features(f);
                    out.push(variant(
                        format!("unified/{base}/{f}"),
                        dtype,
                        &attention_source(&codec, d, f, tiling),
                        no_subgroups(),
                    ));
                }
                // The decode kernel (never sees prefix ranges): each feature alone, none, all.
                let no_mm = ALL_FEATURES & !Features::MM_PREFIX;
                let singles = (0..9)
                    .map(|b| 1u32 << b)
                    .filter(|&b| b != Features::MM_PREFIX);
                for f in singles.chain([0, no_mm, no_mm & !Features::ALIBI]) {
                    for m in [1, 4, 16] {
                        // (16 heads at d 256 do not fit 32 KiB: the unified kernel runs.)
                        let Some(dt) = decode_tiling(d, &limits, m) else {
                            assert!(m == 16 && d > 192, "decode tiling m{m} d{d} must fit");
                            continue;
                        };
                        // Mode `none` also has the variants that write the step's rows
                        // (`write_and_attend`): with no feature and with all of them.
                        // Split-K variants also combine their segments themselves: SPLIT
                        // alone and with every feature (and the fused write where it exists).
                        let fused = mode == KvQuantMode::None && (f == 0 || f == no_mm);
                        let combine = f == Features::SPLIT || f == no_mm;
                        let (fw, cb) = (Features::FUSED_WRITE, Features::COMBINE);
                        let writes: &[u32] = match (fused, combine) {
                            (true, true) => &[0, fw, cb, fw | cb],
                            (true, false) => &[0, fw],
                            (false, true) => &[0, cb],
                            (false, false) => &[0],
                        };
                        for &fw in writes {
                            let f = Features(f | fw);
                            out.push(variant(
                                format!("decode/{base}/{f}/m{m}"),
                                dtype,
                                &decode_source(&codec, d, f, dt),
                                no_subgroups(),
                            ));
                            let sg = Features(f.0 | Features::SUBGROUPS);
                            out.push(variant(
                                format!("decode/{base}/{sg}/m{m}"),
                                dtype,
                                &decode_source(&codec, d, sg, dt),
                                C::all(),
                            ));
                        }
                        let f = Features(f);
                        let sg = Features(f.0 | Features::SUBGROUPS);
                        if m != 4 {
                            continue;
                        }
                        // The streaming rung (4 heads per workgroup), at 8 and 16 elements
                        // per lane, subgroups of 32.
                        let caps = test_caps(32, false, false, 32768);
                        let g = test_geometry(mode, dtype, d);
                        for el in [8, 16] {
                            if let (Some(lpr), Some(t)) =
                                (stream_lanes_at(&caps, &g, el), stream_tiling(&caps, &g, 0))
                            {
                                let t = Tiling {
                                    tile: 4 * t.wg_size / lpr,
                                    ..t
                                };
                                for &fw in writes {
                                    let st = Features(sg.0 | Features::STREAM | fw);
                                    out.push(variant(
                                        format!("decode/{base}/{st}/el{el}/lpr{lpr}"),
                                        dtype,
                                        &decode_stream_source(
                                            &codec,
                                            d,
                                            st,
                                            t,
                                            g.elems_per_word,
                                            el,
                                            lpr,
                                        ),
                                        C::all(),
                                    ));
                                }
                            }
                        }
                    }
                }
                // The prefill kernel: twin (f16 and f32 tiles) and cooperative matrices, each
                // feature alone, none and all, where the head size admits it (INT2 also with
                // the hi + lo pairs of an inexact tile form).
                let inexact = [false, mode == KvQuantMode::Int2PerTokenHead];
                for (sg, coop, f16, g) in [(0, false, false), (32, false, true), (32, true, true)]
                    .into_iter()
                    .flat_map(|(sg, coop, f16)| {
                        inexact.into_iter().flat_map(move |x| {
                            let g = if x {
                                inexact_tiles(dtype, d)
                            } else {
                                test_geometry(mode, dtype, d)
                            };
                            (!x || coop).then_some((sg, coop, f16, g))
                        })
                    })
                {
                    let caps = test_caps(sg, coop, f16, 49152);
                    let coop = coop && coop_admits(&caps, &g);
                    let Some(pt) = prefill_tiling(&caps, &g, coop) else {
                        // f32 tiles of the rotation modes at d >= 240 need more than 48 KiB:
                        // the unified kernel runs those.
                        assert!(
                            d % 16 != 0
                                || (!prefill_f16(&caps, &g, coop) && g.transform && d >= 240),
                            "prefill tiling {base} sg{sg} coop {coop} must fit"
                        );
                        continue;
                    };
                    let et16 = prefill_f16(&caps, &g, coop);
                    // SPLIT: the one-segment partials a mode with a transform writes.
                    let singles = (0..9).map(|b| 1u32 << b).filter(|&b| b != 128);
                    for f in singles.chain([0, ALL_FEATURES & !Features::SPLIT, ALL_FEATURES]) {
                        let f = Features(f | if coop { Features::COOP } else { 0 });
                        out.push(variant(
                            format!("prefill/{base}/{f}/f16{et16}"),
                            dtype,
                            &prefill_source(
                                &codec,
                                d,
                                f,
                                pt,
                                et16,
                                prefill_raw_split(coop, &g),
                                f.0 & 1 != 0, // both values across the variants
                            ),
                            if prefill_rows_shuffle(&pt, coop) {
                                C::all()
                            } else {
                                no_subgroups()
                            },
                        ));
                    }
                }
                if test_geometry(mode, dtype, d).transform {
                    out.push(variant(
                        format!("rotate_q/{base}"),
                        dtype,
                        &rotate_q_source(&codec, d),
                        no_subgroups(),
                    ));
                }
                for f in [0, Features::SINKS, Features::SINKS | Features::OUT_FP8] {
                    out.push(variant(
                        format!("reduce/{base}/{}", Features(f)),
                        dtype,
                        &reduce_source(&codec, d, Features(f)),
                        no_subgroups(),
                    ));
                }
            }
            for ch in [1, 2, 4] {
                let wt = Tiling {
                    wg_size: 64,
                    tile: ch,
                    max_m: 0,
                    owners: 0,
                };
                out.push(variant(
                    format!("write_copy/{}/ch{ch}", dtype.name()),
                    dtype,
                    &write_copy_source(wt),
                    no_subgroups(),
                ));
            }
            if codec.encode.is_some() {
                for d in (32..=256).step_by(16) {
                    let rotates = codec.transform.is_some();
                    let pf = backend.packing_factor();
                    let t = write_rows_tiling(d, pf, write_e_min(rotates, false));
                    out.push(variant(
                        format!("write_rows/{}/{}/d{d}", mode.id(), dtype.name()),
                        dtype,
                        &write_rows_source(&codec, d, t, false, pf),
                        no_subgroups(),
                    ));
                    // The subgroup entry where subgroups of 32 hold a row.
                    let (t, sg) =
                        write_rows_plan(&test_caps(32, false, false, 32768), d, pf, rotates);
                    if sg {
                        out.push(variant(
                            format!("write_rows/{}/{}/d{d}/sg", mode.id(), dtype.name()),
                            dtype,
                            &write_rows_source(&codec, d, t, true, pf),
                            C::all(),
                        ));
                    }
                }
            }
        }
    }
    // The mode's own options reach its encode contract (INT8 rounding: every value).
    let int8 = create(KvQuantMode::Int8PerTokenHead).unwrap();
    for r in [
        crate::Int8Rounding::HalfAwayFromZero,
        crate::Int8Rounding::Truncate,
        crate::Int8Rounding::NearestEven,
    ] {
        let codec = int8.codec(Dtype::F16, &opts.with_int8_rounding(r));
        out.push(variant(
            format!("write_rows/int8/{r:?}"),
            Dtype::F16,
            &write_rows_source(&codec, 128, write_rows_tiling(128, 1, 16), false, 1),
            no_subgroups(),
        ));
    }
    out
}

#[test]
fn every_variant_validates_and_translates() {
    let all = variants();
    let streams = all.iter().filter(|v| v.label.contains("stream")).count();
    assert!(streams > 50, "only {streams} streaming-rung variants");
    // Distinct texts are parsed and validated once; distinct (text, constants) translated once.
    let mut texts: Vec<(String, C)> = Vec::new();
    let mut text_ids: HashMap<(String, u64), usize> = HashMap::new();
    type Job = (usize, String, Vec<(&'static str, f64)>, bool);
    let mut jobs: Vec<Job> = Vec::new();
    let mut seen: HashSet<(usize, String)> = HashSet::new();
    for v in all.iter() {
        let id = *text_ids
            .entry((v.text.clone(), v.caps.bits()))
            .or_insert_with(|| {
                texts.push((v.text.clone(), v.caps));
                texts.len() - 1
            });
        let key = format!("{:?}", v.constants);
        if seen.insert((id, key)) {
            jobs.push((id, v.label.clone(), v.constants.clone(), v.hlsl));
        }
    }
    let parsed = par_map(&texts, |(t, caps)| parse("variant", t, *caps));
    par_map(&jobs, |(id, label, consts, hlsl)| {
        let (m, info) = &parsed[*id];
        let (m, info) = resolve(label, m, info, consts);
        translate(label, &m, &info, *hlsl);
    });
    eprintln!(
        "{} variants: {} distinct texts validated, {} distinct (text, constants) translated to SPIR-V, MSL and HLSL",
        all.len(),
        texts.len(),
        jobs.len()
    );
}

/// naga's offset and size of every member of struct `name` in `text`.
fn wgsl_struct(text: &str, name: &str) -> (BTreeMap<String, u32>, u32) {
    let module = naga::front::wgsl::parse_str(text).unwrap();
    for (_, ty) in module.types.iter() {
        if ty.name.as_deref() == Some(name) {
            if let naga::TypeInner::Struct { members, span } = &ty.inner {
                let offs = members
                    .iter()
                    .map(|m| (m.name.clone().unwrap(), m.offset))
                    .collect();
                return (offs, *span);
            }
        }
    }
    panic!("struct {name} not found");
}

macro_rules! check_fields {
    ($ty:ty, $wgsl:expr, [$($f:ident),* $(,)?]) => {{
        let (offs, span) = $wgsl;
        assert_eq!(span as usize, std::mem::size_of::<$ty>(), "{} size", stringify!($ty));
        let mut n = 0;
        $(
            assert_eq!(
                offs[stringify!($f)] as usize,
                std::mem::offset_of!($ty, $f),
                "{}::{} offset", stringify!($ty), stringify!($f)
            );
            n += 1;
        )*
        n
    }};
}

#[test]
fn uniform_structs_match_the_wgsl_layout() {
    let text = include_str!("../../shaders/common/uniforms.wgsl");
    let step = wgsl_struct(text, "StepU");
    let step_members = step.0.len();
    let n = check_fields!(
        StepUniform,
        step,
        [
            num_seqs,
            num_tokens_q,
            num_write,
            bt_stride,
            off_cu,
            off_su,
            off_bt,
            off_slot,
            off_qq,
            qq_rows,
            qq_cols,
            off_mm,
            mm_per_seq
        ]
    );
    // The WGSL pads with three named u32s; the host with one [u32; 3].
    assert_eq!(n + 3, step_members, "StepU members");
    let layer = wgsl_struct(text, "LayerU");
    let layer_members = layer.0.len();
    let n = check_fields!(
        LayerUniform,
        layer,
        [
            num_q_heads,
            num_kv_heads,
            qpk,
            heads_per_wg,
            q_per_wg,
            head_chunks,
            block_size,
            num_blocks,
            k_row_words,
            v_row_words,
            window,
            num_segments,
            softmax_scale,
            softcap,
            k_tensor_scale,
            v_tensor_scale,
            out_inv_scale,
            off_sinks,
            off_alibi,
            seg_rows,
            q_off,
            q_tok,
            q_head,
            o_off,
            o_tok,
            o_head,
            ki_off,
            ki_tok,
            ki_head,
            vi_off,
            vi_tok,
            vi_head,
            row_filter
        ]
    );
    // Padded to 16 bytes the same way: three named u32s, one [u32; 3].
    assert_eq!(n + 3, layer_members, "LayerU members");
}

#[test]
fn bind_group_layouts_match_the_wgsl_bindings() {
    let codec = create(KvQuantMode::Int4PerTokenHead)
        .unwrap()
        .codec(Dtype::F16, &ModeOptions::default());
    let lim = limits(32768);
    let t = attention_tiling(128, &lim, 16).unwrap();
    let dt = decode_tiling(128, &lim, 4).unwrap();
    let wt = Tiling {
        wg_size: 64,
        tile: 0,
        max_m: 0,
        owners: 0,
    };
    let f = Features(0);
    for (label, src) in [
        ("unified", attention_source(&codec, 128, f, t)),
        ("decode", decode_source(&codec, 128, f, dt)),
        (
            "reduce",
            reduce_source(&codec, 128, Features(Features::SINKS)),
        ),
        ("write_copy", write_copy_source(wt)),
        (
            "write_rows",
            write_rows_source(&codec, 128, write_rows_tiling(128, 1, 16), false, 1),
        ),
    ] {
        let text = full_source(src.kernel, Dtype::F16, &src.parts(), src.includes).unwrap();
        let module = naga::front::wgsl::parse_str(&text).unwrap();
        let mut wgsl: Vec<(u32, bool)> = module
            .global_variables
            .iter()
            .filter_map(|(_, g)| {
                let b = g.binding.as_ref()?;
                assert_eq!(b.group, 0, "{label}: group");
                let writable = matches!(
                    g.space,
                    naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE)
                );
                Some((b.binding, writable))
            })
            .collect();
        wgsl.sort();
        let mut host: Vec<(u32, bool)> = src
            .entries
            .iter()
            .map(|e| {
                let w = matches!(
                    e.ty,
                    wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: false },
                        ..
                    }
                );
                (e.binding, w)
            })
            .collect();
        host.sort();
        // The layout may declare bindings the kernel does not use (shared layouts); every
        // binding the kernel uses must be declared with the same writability.
        for b in &wgsl {
            assert!(
                host.contains(b),
                "{label}: WGSL binding {b:?} not in the host layout {host:?}"
            );
        }
    }
}

#[test]
fn workgroup_memory_estimates_match_naga_for_every_tiling() {
    let codec = create(KvQuantMode::None)
        .unwrap()
        .codec(Dtype::F16, &ModeOptions::default());
    let mut checked = 0;
    for smem in [16384, 32768, 49152] {
        let lim = limits(smem);
        for d in (32..=256).step_by(16) {
            for rows in [1, 2, 4, 8, 16] {
                if let Some(t) = attention_tiling(d, &lim, rows) {
                    let src = attention_source(&codec, d, Features(0), t);
                    let text =
                        full_source(src.kernel, Dtype::F16, &src.parts(), src.includes).unwrap();
                    let (m, i) = parse("unified", &text, no_subgroups());
                    let (m, _) = resolve("unified", &m, &i, &src.constants);
                    let actual = workgroup_bytes(&m);
                    assert_eq!(attention_smem(&t, d), actual, "unified d{d} {t:?}");
                    assert!(actual <= smem, "unified d{d} {t:?}: {actual} > {smem}");
                    checked += 1;
                }
                if let Some(t) = decode_tiling(d, &lim, rows) {
                    let cb = Features::SPLIT | Features::COMBINE;
                    for f in [0, Features::SUBGROUPS, cb, cb | Features::SUBGROUPS] {
                        let src = decode_source(&codec, d, Features(f), t);
                        let text = full_source(src.kernel, Dtype::F16, &src.parts(), src.includes)
                            .unwrap();
                        let (m, i) = parse("decode", &text, C::all());
                        let (m, _) = resolve("decode", &m, &i, &src.constants);
                        let actual = workgroup_bytes(&m);
                        let want = decode_smem(&t, d) + (f & cb != 0) as u32 * combine_smem();
                        assert_eq!(want, actual, "decode d{d} {t:?} {}", Features(f));
                        if f & cb == 0 {
                            assert!(actual <= smem, "decode d{d} {t:?}: {actual} > {smem}");
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    // The streaming rung, every code width.
    for mode in KvQuantMode::ALL.into_iter().filter(|m| m.is_supported()) {
        let codec = create(mode)
            .unwrap()
            .codec(Dtype::F16, &ModeOptions::default());
        for d in [64, 128, 256] {
            let g = test_geometry(mode, Dtype::F16, d);
            let caps = test_caps(32, false, false, 32768);
            let keys = u64::MAX;
            let (Some((el, lpr)), Some(t)) = (
                stream_lanes(&caps, &g, keys),
                stream_tiling(&caps, &g, keys),
            ) else {
                panic!("{mode:?} d{d}: the streaming rung must admit subgroups of 32");
            };
            for cb in [0, Features::SPLIT | Features::COMBINE] {
                let f = Features(Features::SUBGROUPS | Features::STREAM | cb);
                let src = decode_stream_source(&codec, d, f, t, g.elems_per_word, el, lpr);
                let text = full_source(src.kernel, Dtype::F16, &src.parts(), src.includes).unwrap();
                let (m, i) = parse("stream", &text, C::all());
                let (m, _) = resolve("stream", &m, &i, &src.constants);
                assert_eq!(
                    stream_smem(d, t.wg_size, lpr) + (cb != 0) as u32 * combine_smem(),
                    workgroup_bytes(&m),
                    "stream {mode:?} d{d} {f}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked} tilings checked");
}

#[test]
fn prefill_workgroup_memory_matches_naga_for_every_tiling() {
    struct Case {
        label: String,
        text: usize,
        constants: Vec<(&'static str, f64)>,
        want: u32,
        smem: u32,
    }
    let mut cases: Vec<Case> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    let mut text_ids: HashMap<String, usize> = HashMap::new();
    // INT2 as an inexact tile form: K and V as hi + lo pairs on cooperative matrices.
    for mode in [
        KvQuantMode::None,
        KvQuantMode::Int4PerTokenHead,
        KvQuantMode::Int2PerTokenHead,
    ] {
        for dtype in [Dtype::F16, Dtype::F32] {
            let codec = create(mode).unwrap().codec(dtype, &ModeOptions::default());
            for smem in [16384, 32768, 49152, 65536] {
                for (sg, coop, f16) in [(0, false, false), (32, false, true), (32, true, true)] {
                    let caps = test_caps(sg, coop, f16, smem);
                    for d in (16..=256).step_by(16) {
                        let g = if mode == KvQuantMode::Int2PerTokenHead {
                            inexact_tiles(dtype, d)
                        } else {
                            test_geometry(mode, dtype, d)
                        };
                        let coop = coop && coop_admits(&caps, &g);
                        let Some(t) = prefill_tiling(&caps, &g, coop) else {
                            continue;
                        };
                        let et16 = prefill_f16(&caps, &g, coop);
                        let split = prefill_raw_split(coop, &g);
                        // FP8 outputs keep P as a hi + lo pair (the tiling's worst case).
                        for fp8 in [false, true] {
                            let mut f = if coop { Features::COOP } else { 0 };
                            if fp8 {
                                f |= Features::OUT_FP8;
                            }
                            let src = prefill_source(&codec, d, Features(f), t, et16, split, fp8);
                            let text =
                                full_source(src.kernel, dtype, &src.parts(), src.includes).unwrap();
                            let id = *text_ids.entry(text.clone()).or_insert_with(|| {
                                texts.push(text);
                                texts.len() - 1
                            });
                            let p_lo = prefill_p_lo(coop, fp8);
                            cases.push(Case {
                                label: format!(
                                    "prefill {} d{d} {t:?} coop {coop} fp8 {fp8}",
                                    mode.id()
                                ),
                                text: id,
                                constants: src.constants.clone(),
                                want: prefill_smem(&t, d, et16, coop, split, p_lo),
                                smem,
                            });
                        }
                    }
                }
            }
        }
    }
    // Cooperative matrices' 32-key tilings (V over K's tile: `prefill_v_apart` false), which
    // the planner reaches only where nothing earlier fits, so the loop above may not, and
    // the long prompts' four-subgroup 16-key tiling (V over K too).
    for mode in [KvQuantMode::None, KvQuantMode::Int2PerTokenHead] {
        let codec = create(mode)
            .unwrap()
            .codec(Dtype::F16, &ModeOptions::default());
        let caps = test_caps(32, true, true, 49152);
        for d in [64u32, 128] {
            let g = test_geometry(mode, Dtype::F16, d);
            let long = prefill_tiling_for(&caps, &g, true, false, true).unwrap();
            assert_eq!(
                (long.wg_size, long.tile, long.max_m, long.owners),
                (128, 16, 64, 4)
            );
            let wide = [2u32, 4].map(|rb| Tiling {
                wg_size: rb * 32,
                tile: 32,
                max_m: rb * 16,
                owners: rb,
            });
            for t in wide.into_iter().chain([long]) {
                assert!(
                    !prefill_v_apart(&t, true)
                        && prefill_v_apart(&prefill_tiling(&caps, &g, true).unwrap(), true)
                );
                let split = prefill_raw_split(true, &g);
                let src =
                    prefill_source(&codec, d, Features(Features::COOP), t, true, split, false);
                let text = full_source(src.kernel, Dtype::F16, &src.parts(), src.includes).unwrap();
                let id = *text_ids.entry(text.clone()).or_insert_with(|| {
                    texts.push(text);
                    texts.len() - 1
                });
                cases.push(Case {
                    label: format!("prefill {} d{d} {t:?} coop, V over K", mode.id()),
                    text: id,
                    constants: src.constants.clone(),
                    want: prefill_smem(&t, d, true, true, split, false),
                    smem: caps.limits.max_compute_workgroup_storage_size,
                });
            }
        }
    }
    assert!(cases.len() > 400, "{} tilings checked", cases.len());
    // Each distinct text parsed once, every case's constants resolved, on every core.
    let parsed = par_map(&texts, |t| parse("prefill", t, C::all()));
    par_map(&cases, |c| {
        let (m, i) = &parsed[c.text];
        let (m, _) = resolve(&c.label, m, i, &c.constants);
        let actual = workgroup_bytes(&m);
        assert_eq!(c.want, actual, "{}", c.label);
        assert!(actual <= c.smem, "{}: {actual} > {}", c.label, c.smem);
    });
}

#[test]
fn write_rows_tiling_fits_the_default_workgroup_memory_for_every_head_size() {
    // The rotation modes (the largest staging) at every head size.
    for mode in [KvQuantMode::Int4PerTokenHead, KvQuantMode::Int2PerTokenHead] {
        let b = create(mode).unwrap();
        let codec = b.codec(Dtype::F32, &ModeOptions::default());
        for d in (32..=256).step_by(16) {
            for e_min in [8, 16, 32] {
                let t = write_rows_tiling(d, b.packing_factor(), e_min);
                let e = lane_elems(b.packing_factor(), d, e_min);
                assert_eq!(t.wg_size, t.tile * d / e, "d{d}: {t:?}");
                assert!(t.wg_size <= 256, "d{d}: {t:?}");
                let src = write_rows_source(&codec, d, t, false, b.packing_factor());
                let text = full_source(src.kernel, Dtype::F32, &src.parts(), src.includes).unwrap();
                let (m, i) = parse("write_rows", &text, no_subgroups());
                let (m, _) = resolve("write_rows", &m, &i, &src.constants);
                let bytes = workgroup_bytes(&m);
                assert!(
                    bytes <= 8192 + 8 * 256,
                    "write_rows d{d} {t:?}: {bytes} bytes"
                );
            }
        }
    }
}

/// The write kernel's geometry per mode: 32 elements per lane for the rotation modes on the
/// subgroup entry where 32 divides the head size, 16 otherwise (the measured choice); a lane
/// count the subgroup holds; whole rows per workgroup.
#[test]
fn write_rows_plan_widens_lanes_only_for_rotated_rows_on_subgroups() {
    for (sg_size, subgroups) in [(32, true), (8, true), (32, false)] {
        let caps = test_caps(sg_size, false, false, 32768);
        let caps = crate::gpu::Caps { subgroups, ..caps };
        for mode in KvQuantMode::ALL {
            let b = create(mode).unwrap();
            if b.stores_rows_as_given() {
                continue;
            }
            let codec = b.codec(Dtype::F16, &ModeOptions::default());
            let rotates = codec.transform.is_some();
            let pf = b.packing_factor();
            for d in (16..=256).step_by(16) {
                // write_rows_source picks its 16-byte stores from this row size.
                assert_eq!(b.row_bytes(d, Dtype::F16), (d / pf) as u64, "{mode:?} d{d}");
                let (t, sg) = write_rows_plan(&caps, d, pf, rotates);
                let lanes = t.wg_size / t.tile;
                let e = d / lanes;
                assert_eq!(lanes * e, d, "{mode:?} d{d} {t:?}");
                assert_eq!(
                    e,
                    lane_elems(pf, d, write_e_min(rotates, sg)),
                    "{mode:?} d{d}"
                );
                assert!(
                    !sg || (subgroups && lanes <= sg_size),
                    "{mode:?} d{d} {t:?}"
                );
                #[cfg(not(feature = "debug-knobs"))]
                {
                    let wide = rotates && sg && d % 32 == 0;
                    let want = if wide { 32 } else { 16.max(4 * pf) };
                    assert_eq!(e, want, "{mode:?} d{d} sg {sg}: {t:?}");
                }
            }
        }
    }
}

/// A mode with a transform takes the prefill kernel only where its rows fit the split-K
/// partials in one binding (the transform runs apart: kernels/rotate_q.wgsl, the reduce
/// pass); otherwise the unified kernel, transform fused. Modes without one are unaffected.
#[test]
fn prefill_with_a_transform_apart_needs_the_partials_to_fit_one_binding() {
    use super::plan::launch_plan;
    use super::{AttentionParams, StepSummary};
    let sum = StepSummary {
        num_seqs: 1,
        num_tokens_q: 512,
        num_write: 512,
        max_seqlen_q: 512,
        max_seqlen_k: 512,
    };
    let p = AttentionParams {
        num_q_heads: 8,
        ..Default::default()
    };
    let need = super::attention::segment_buffer_bytes(512, 8, 1, 64);
    for (mode, limit, want) in [
        (
            KvQuantMode::Int4PerTokenHead,
            need,
            crate::gpu::pipeline::Kernel::Prefill,
        ),
        (
            KvQuantMode::Int4PerTokenHead,
            need - 4,
            crate::gpu::pipeline::Kernel::Attention,
        ),
        (
            KvQuantMode::None,
            need - 4,
            crate::gpu::pipeline::Kernel::Prefill,
        ),
    ] {
        let mut caps = test_caps(32, true, true, 49152);
        caps.limits.max_storage_buffer_binding_size = limit;
        let mut g = test_geometry(mode, Dtype::F16, 64);
        g.num_kv_heads = 2;
        let lp = launch_plan(&caps, &g, &sum, &p, false).unwrap();
        assert_eq!(lp.kernel, want, "{mode:?} limit {limit}");
    }
}

/// A tile form f16 does not hold exactly (INT2's centroids before its integer tile form)
/// takes cooperative matrices with K as hi + lo pairs, FP8 output included; INT2 and INT4 as
/// they are. V is a pair too only with FP8 output (P a pair as well); otherwise V is rounded
/// to f16 and the 64 x 16 tiling stays under 31 KiB (two workgroups per H200
/// multiprocessor), f16's own plus K's lo tile.
#[test]
fn inexact_tile_values_take_cooperative_matrices_as_hi_lo_pairs() {
    use super::plan::launch_plan;
    use super::{AttentionParams, StepSummary};
    let sum = StepSummary {
        num_seqs: 1,
        num_tokens_q: 64,
        num_write: 64,
        max_seqlen_q: 64,
        max_seqlen_k: 64,
    };
    let caps = test_caps(32, true, true, 48 << 10);
    for (inexact, mode, fp8) in [
        (true, KvQuantMode::Int2PerTokenHead, None),
        (true, KvQuantMode::Int2PerTokenHead, Some(0.5)),
        (false, KvQuantMode::Int2PerTokenHead, Some(0.5)),
        (false, KvQuantMode::Int4PerTokenHead, Some(0.5)),
    ] {
        let g = if inexact {
            inexact_tiles(Dtype::F16, 128)
        } else {
            test_geometry(mode, Dtype::F16, 128)
        };
        let p = AttentionParams {
            num_q_heads: 32,
            output_scale: fp8,
            ..Default::default()
        };
        let lp = launch_plan(&caps, &g, &sum, &p, false).unwrap();
        assert!(lp.coop, "{mode:?} fp8 {fp8:?}: {lp:?}");
        assert_eq!(lp.kernel, crate::gpu::pipeline::Kernel::Prefill);
        let split = prefill_raw_split(true, &g);
        assert_eq!(split, inexact);
        let p_lo = fp8.is_some();
        let smem = prefill_smem(&lp.tiling, 128, true, true, split, p_lo);
        let f16 = prefill_smem(&lp.tiling, 128, true, true, false, p_lo);
        let lo_tiles = if !split {
            0
        } else if p_lo {
            2
        } else {
            1
        };
        assert_eq!(smem - f16, lo_tiles * (16 * 136 * 2 - 16));
        assert_eq!(prefill_v_split(split, p_lo), lo_tiles == 2);
        assert!(p_lo || smem < 31 << 10, "{mode:?}: {smem} bytes");
    }
}

/// On cooperative matrices the prefill kernel takes 16-key tiles of 64 rows with the query
/// held in fragments (21.3 KiB at head size 128 with separate K and V tiles: two workgroups
/// per multiprocessor on an H200, as its 173 registers allow, where 30 KiB ran one); larger heads keep the Q tile and fall back to what fits. The
/// twin takes its wide tilings where subgroups allow.
#[test]
fn coop_prefill_prefers_small_resident_tilings() {
    let caps = test_caps(32, true, true, 48 << 10);
    let g = test_geometry(KvQuantMode::None, Dtype::F16, 128);
    // 64 rows × 16 keys on eight subgroups (two column groups per row block: four O blocks
    // each at head size 128) where the head dimension splits into two parts of at most four
    // blocks; one subgroup per row block otherwise (head sizes of an odd block count, 256).
    let coop = |d: u32| {
        let t = prefill_tiling(
            &caps,
            &test_geometry(KvQuantMode::None, Dtype::F16, d),
            true,
        )
        .unwrap();
        (t.max_m, t.tile, t.wg_size, t.owners, prefill_ksplit(&t))
    };
    assert_eq!(coop(128), (64, 16, 256, 8, 2));
    assert_eq!(coop(64), (64, 16, 256, 8, 2));
    assert_eq!(coop(32), (64, 16, 256, 8, 2));
    assert_eq!(coop(16), (64, 16, 128, 4, 1));
    assert_eq!(coop(80), (64, 16, 128, 4, 1));
    assert_eq!(coop(96), (64, 16, 256, 8, 2));
    let t = prefill_tiling(&caps, &g, true).unwrap();
    // Two workgroups per H200 multiprocessor (its registers allow two at 99 per thread).
    assert!(prefill_smem(&t, 128, true, true, false, true) <= 31 << 10);
    let g256 = test_geometry(KvQuantMode::None, Dtype::F16, 256);
    let t = prefill_tiling(&caps, &g256, true).unwrap();
    assert_eq!((t.max_m, t.tile, t.owners), (32, 16, 2));
    assert!(prefill_smem(&t, 256, true, true, false, true) <= 48 << 10);
    // The twin: 64 rows × 32 keys on 256 threads where subgroups allow (32 rows on 128 at
    // head size 256, whose Q tile needs the room; 64 rows on 128 at head size 32, whose two
    // O blocks take two column groups), one thread per row without subgroups.
    let twin = |caps: &crate::gpu::Caps, d: u32| {
        let t = prefill_tiling(
            caps,
            &test_geometry(KvQuantMode::None, Dtype::F16, d),
            false,
        );
        t.map(|t| (t.max_m, t.tile, t.wg_size)).unwrap()
    };
    assert_eq!(twin(&caps, 128), (64, 32, 256));
    assert_eq!(twin(&caps, 256), (32, 32, 128));
    assert_eq!(twin(&caps, 32), (64, 32, 128));
    assert_eq!(
        twin(&test_caps(0, false, true, 48 << 10), 128),
        (64, 32, 64)
    );
}

/// The streaming rung's split-K rule at the H200-measured shapes (Hkv 8, 32-key rounds): as
/// many segments as one wave of 264 workgroups holds, four rounds per segment at least (two
/// where four would fill less than half of it); one segment for prompts, a forced count as
/// given.
#[test]
fn stream_segments_fill_one_wave_with_the_longest_segments() {
    use crate::SplitK;
    let decode = |b: u32, l: u32| super::StepSummary {
        num_seqs: b,
        num_tokens_q: b,
        num_write: b,
        max_seqlen_q: 1,
        max_seqlen_k: l,
    };
    let seg = |b: u32, l: u32| stream_segments(SplitK::Auto, None, &decode(b, l), 8 * b, 32, 264);
    // 8 segments of four rounds would be 64 workgroups: 16 of two rounds.
    assert_eq!(seg(1, 1024), 16);
    // 32 of four rounds: 256 workgroups.
    assert_eq!(seg(1, 4096), 32);
    // One wave: 33 x 8 = 264 workgroups, 32 rounds of 32 keys each at L=32k, which 32
    // segments take as well (4125 keys, 33 segments at L=128k).
    assert_eq!(seg(1, 32768), 32);
    assert_eq!(seg(1, 131072), 33);
    assert_eq!(seg(1, 33 * 32 * 32), 33);
    assert_eq!(seg(8, 8192), 4);
    assert_eq!(seg(8, 32768), 4);
    assert_eq!(seg(16, 32768), 2);
    // 256 workgroups unsplit already fill the wave; 512 more than fill it.
    assert_eq!(seg(32, 4096), 1);
    assert_eq!(seg(64, 2048), 1);
    // A wave half filled or more by the batch alone: unsplit.
    assert_eq!(seg(17, 32768), 1);
    // Too short for two segments of two rounds.
    assert_eq!(seg(1, 100), 1);
    // A GPU of 46 multiprocessors (a wave of 92): 11 segments at B=1, 1 from B=8.
    let small = |b: u32, l: u32| stream_segments(SplitK::Auto, None, &decode(b, l), 8 * b, 32, 92);
    assert_eq!(small(1, 32768), 11);
    assert_eq!(small(4, 32768), 2);
    assert_eq!(small(8, 32768), 1);
    let mut prompt = decode(1, 1024);
    prompt.max_seqlen_q = 16;
    assert_eq!(stream_segments(SplitK::Auto, None, &prompt, 8, 32, 264), 1);
    assert_eq!(
        stream_segments(SplitK::Segments(5), None, &decode(1, 1024), 8, 32, 264),
        5
    );
}

/// The fused decode write's size rule: up to 128 MiB of K/V per call (B=1 L=32k at Hkv 8,
/// D 128, f16), measured on an H200 as the point from which the read_write pools cost more
/// than the second dispatch saves.
#[test]
fn fused_write_stops_at_128_mib_of_kv() {
    use super::attention::fuse_fits;
    use super::StepSummary;
    let g = |dtype, d| Geometry {
        num_kv_heads: 8,
        ..test_geometry(KvQuantMode::None, dtype, d)
    };
    let sum = |b: u32, l: u32| StepSummary {
        num_seqs: b,
        num_tokens_q: b,
        num_write: b,
        max_seqlen_q: 1,
        max_seqlen_k: l,
    };
    assert!(fuse_fits(&sum(1, 32768), &g(Dtype::F16, 128)));
    assert!(fuse_fits(&sum(32, 1024), &g(Dtype::F16, 128)));
    assert!(!fuse_fits(&sum(1, 32769), &g(Dtype::F16, 128)));
    assert!(!fuse_fits(&sum(8, 8192), &g(Dtype::F16, 128)));
    assert!(!fuse_fits(&sum(1, 32768), &g(Dtype::F32, 128)));
    assert!(fuse_fits(&sum(1, 16384), &g(Dtype::F32, 128)));
    assert!(fuse_fits(&sum(1, 32768), &g(Dtype::Bf16, 128)));
    assert!(fuse_fits(&sum(2, 32768), &g(Dtype::F16, 64)));
}

/// The multiprocessor table by adapter name (as NVIDIA's Vulkan driver names them), and the
/// streaming rung's wave from it: two or three workgroups per multiprocessor by the lane's
/// width, 264 or 396 where the count is unknown.
#[test]
fn multiprocessors_by_adapter_name_size_the_stream_wave() {
    use crate::multiprocessors_for as mp;
    assert_eq!(mp("NVIDIA H200"), Some(132));
    assert_eq!(mp("NVIDIA GH200 480GB"), Some(132));
    assert_eq!(mp("NVIDIA H100 80GB HBM3"), Some(132));
    assert_eq!(mp("NVIDIA H100 PCIe"), Some(114));
    assert_eq!(mp("NVIDIA A100-SXM4-80GB"), Some(108));
    assert_eq!(mp("NVIDIA L40S"), Some(142));
    assert_eq!(mp("NVIDIA GeForce RTX 4090"), Some(128));
    assert_eq!(mp("NVIDIA GeForce RTX 4060"), None);
    assert_eq!(mp("llvmpipe (LLVM 15.0.6, 256 bits)"), None);
    assert_eq!(mp("AMD Radeon RX 7900 XTX (RADV NAVI31)"), None);
    use super::plan::stream_fill;
    let caps = test_caps(32, false, true, 49152);
    // 16 elements per lane: two workgroups per multiprocessor; 8 of 16-bit rows or narrower
    // codes: three; 8 of f32 rows: two.
    assert_eq!(stream_fill(&caps, 16, 2), 264);
    assert_eq!(stream_fill(&caps, 8, 2), 396);
    assert_eq!(stream_fill(&caps, 8, 16), 396);
    assert_eq!(stream_fill(&caps, 8, 1), 264);
    let caps = crate::gpu::Caps {
        multiprocessors: Some(46),
        ..caps
    };
    assert_eq!(stream_fill(&caps, 16, 4), 92);
    assert_eq!(stream_fill(&caps, 8, 4), 138);
}

#[test]
fn the_decode_kernel_combines_up_to_sixty_four_segments_where_the_device_allows() {
    use super::plan::{combine_admits, COMBINE_MAX_SEGMENTS, COMBINE_SLOTS};
    let mut caps = crate::gpu::Caps {
        split_combine: true,
        ..test_caps(32, false, true, 49152)
    };
    caps.limits.max_storage_buffers_per_shader_stage = 10;
    let t = decode_tiling(128, &caps.limits, 16).unwrap();
    let smem = decode_smem(&t, 128);
    // The streaming rung's four heads: every count up to the maximum.
    let four = Tiling { max_m: 4, ..t };
    assert_eq!(4 * COMBINE_MAX_SEGMENTS, COMBINE_SLOTS);
    assert!(!combine_admits(&caps, &four, 1, smem), "unsplit");
    assert!(combine_admits(&caps, &four, 2, smem));
    assert!(combine_admits(&caps, &four, COMBINE_MAX_SEGMENTS, smem));
    assert!(!combine_admits(
        &caps,
        &four,
        COMBINE_MAX_SEGMENTS + 1,
        smem
    ));
    // A tiling of more heads: as many segments as its pairs fit in COMBINE_SLOTS.
    let most = COMBINE_SLOTS / t.max_m;
    assert!(combine_admits(&caps, &t, 2, smem));
    assert!(combine_admits(
        &caps,
        &t,
        most.min(COMBINE_MAX_SEGMENTS),
        smem
    ));
    assert!(!combine_admits(&caps, &t, most + 1, smem));
    // The workgroup memory must hold the staged pairs too.
    let full = caps.limits.max_compute_workgroup_storage_size;
    assert!(!combine_admits(&caps, &t, 4, full - combine_smem() + 16));
    assert!(combine_admits(&caps, &t, 4, full - combine_smem()));
    // Devices without it, and too few storage bindings per stage.
    let off = crate::gpu::Caps {
        split_combine: false,
        ..caps.clone()
    };
    assert!(!combine_admits(&off, &t, 4, smem));
    let mut few = caps.clone();
    few.limits.max_storage_buffers_per_shader_stage = 9;
    assert!(!combine_admits(&few, &t, 4, smem));
}

/// The probe parses, validates and translates to SPIR-V and MSL in every variant the bench
/// runs, and its workgroup memory is what the bench reports (so a device run is never spent
/// on a module that does not build).
#[test]
fn the_mma_decode_probe_validates_and_translates() {
    let src = include_str!("../../benches/probe_mma_decode.wgsl");
    let (module, info) = parse("mma-decode probe", src, C::all());
    for nsg in [2u32, 4] {
        for codes in [false, true] {
            for skip in [0u32, 1, 2] {
                let label = format!("mma-decode probe nsg {nsg} codes {codes} skip {skip}");
                // The overrides the gpu bench sets (`micro_mma_decode`).
                let constants = [
                    ("NSG", nsg as f64),
                    ("STEPS", 8.0),
                    ("NT", 65536.0),
                    ("CODES", f64::from(u8::from(codes))),
                    ("SKIP", skip as f64),
                ];
                let (m, i) = resolve(&label, &module, &info, &constants);
                translate(&label, &m, &i, false);
                assert_eq!(
                    workgroup_bytes(&m),
                    nsg * (16 * 136 * 2 + 256 * 4 + 256 * 2),
                    "{label}"
                );
            }
        }
    }
}

/// The FlashAttention-2-shaped prefill probe parses, validates and translates to SPIR-V and
/// MSL in every variant the bench runs (`micro_fa2_prefill`), with the workgroup memory its
/// overrides size.
#[test]
fn the_fa2_prefill_probe_validates_and_translates() {
    let src = include_str!("../../benches/probe_fa2_prefill.wgsl");
    let (module, info) = parse("fa2-prefill probe", src, C::all());
    for (nsg, tk) in [(4u32, 32u32), (8, 32), (2, 32), (4, 64)] {
        for skip in [0u32, 16, 3, 4, 8, 7, 15] {
            let label = format!("fa2-prefill probe nsg {nsg} tk {tk} skip {skip}");
            let (ss, ps) = (tk + 4, tk + 8);
            let constants = [
                ("NSG", nsg as f64),
                ("TK", tk as f64),
                ("L", 256.0),
                ("HKV", 8.0),
                ("SKIP", skip as f64),
                ("SS", ss as f64),
                ("PS", ps as f64),
                ("S_LEN", (nsg * 16 * ss) as f64),
                ("P_LEN", (nsg * 16 * ps) as f64),
                ("KV_LEN", (tk * 136) as f64),
                ("NW", (tk * 16 / (32 * nsg)) as f64),
                ("MARGIN", 4.0),
            ];
            let (m, i) = resolve(&label, &module, &info, &constants);
            translate(&label, &m, &i, false);
            assert_eq!(
                workgroup_bytes(&m),
                tk * 136 * 2 + nsg * 16 * (ss * 4 + ps * 2) + 2 * 128 * 4 + 16,
                "{label}"
            );
        }
    }
}

/// The prefill kernel's rescale margin reaches its pipelines: 4 nats where P is one f16
/// value, none where P is an f16 hi + lo pair (FP8 outputs, whose lo halves must stay f16
/// normal numbers), on cooperative matrices and the twin alike.
#[test]
fn prefill_pipelines_take_the_rescale_margin_but_for_p_pairs() {
    if std::env::var("QUANTKV_DEBUG_PREFILL_MARGIN").is_ok() {
        return; // a knob run sets its own margin
    }
    let codec = create(KvQuantMode::None)
        .unwrap()
        .codec(Dtype::F16, &ModeOptions::default());
    let t = Tiling {
        wg_size: 128,
        tile: 16,
        max_m: 64,
        owners: 4,
    };
    for (coop, fp8, want) in [
        (true, false, PREFILL_MARGIN),
        (true, true, 0.0),
        (false, false, PREFILL_MARGIN),
        (false, true, PREFILL_MARGIN),
    ] {
        let f = if coop { Features::COOP } else { 0 } | if fp8 { Features::OUT_FP8 } else { 0 };
        let src = prefill_source(&codec, 128, Features(f), t, true, false, false);
        let margin = src
            .constants
            .iter()
            .find(|(k, _)| *k == "MARGIN")
            .map(|c| c.1);
        assert_eq!(margin, Some(want as f64), "coop {coop} fp8 {fp8}");
    }
    assert_eq!(PREFILL_MARGIN, 4.0);
}

/// On cooperative matrices a prompt of at least `PREFILL_LONG_MIN_WORKGROUPS` 64-row
/// workgroups takes the four-subgroup 16-key tiling (V over K), a shorter one the
/// eight-subgroup tiling (V in its own tile); head sizes above 128 keep what a short prompt
/// takes.
#[test]
fn long_prompts_take_the_four_subgroup_tiling_on_cooperative_matrices() {
    use super::plan::{launch_plan, PREFILL_LONG_MIN_WORKGROUPS};
    use super::{AttentionParams, StepSummary};
    let caps = test_caps(32, true, true, 49152);
    let p = AttentionParams {
        num_q_heads: 32,
        ..Default::default()
    };
    // 32 query heads over 8 KV heads: 4 rows per token, 16 tokens per workgroup.
    let tokens_at = |wgs: u64| (wgs * 64 / 4 / 8) as u32;
    let long = tokens_at(PREFILL_LONG_MIN_WORKGROUPS);
    for (d, tokens, want) in [
        (128, long, (128, 16, 64, 4)),
        (128, long - 16, (256, 16, 64, 8)),
        (64, long, (128, 16, 64, 4)),
        (256, long, (0, 0, 0, 0)),
    ] {
        let mut g = test_geometry(KvQuantMode::None, Dtype::F16, d);
        g.num_kv_heads = 8;
        // Head size 256: the tiling a short prompt gets.
        let want = if d > 128 {
            let t = prefill_tiling(&caps, &g, true).unwrap();
            (t.wg_size, t.tile, t.max_m, t.owners)
        } else {
            want
        };
        let sum = StepSummary {
            num_seqs: 1,
            num_tokens_q: tokens,
            num_write: tokens,
            max_seqlen_q: tokens,
            max_seqlen_k: tokens,
        };
        let lp = launch_plan(&caps, &g, &sum, &p, false).unwrap();
        assert_eq!(
            lp.kernel,
            crate::gpu::pipeline::Kernel::Prefill,
            "d {d} tokens {tokens}"
        );
        assert!(lp.coop);
        let t = lp.tiling;
        assert_eq!(
            (t.wg_size, t.tile, t.max_m, t.owners),
            want,
            "d {d} tokens {tokens}"
        );
        assert_eq!(
            prefill_v_apart(&t, true),
            t.owners == 2 * t.max_m / 16,
            "d {d} {t:?}"
        );
    }
}
