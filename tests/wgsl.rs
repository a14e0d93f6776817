//! CPU-only: every WGSL variant quantkv can build is parsed and validated by naga, its
//! overrides resolved with the values wgpu would pass, and translated to SPIR-V, MSL and HLSL,
//! so Vulkan, Metal and DX12 shader compilation is checked even where those drivers are absent.

use quantkv::attention::{attention_source, decode_source, reduce_source};
use quantkv::cache::{write_copy_source, write_rows_source};
use quantkv::modes::{create, Dtype, KvQuantMode};
use quantkv::pipeline::{full_source, Features, PipelineSource, Tiling};

/// Validates without subgroup capabilities: every variant but the decode kernel's subgroup
/// rung must build on adapters without them.
fn check_variant(label: &str, dtype: Dtype, src: &PipelineSource<'_>) {
    use naga::valid::Capabilities as C;
    let caps = C::all() - C::SUBGROUP - C::SUBGROUP_BARRIER - C::SUBGROUP_VERTEX_STAGE;
    check_variant_with(label, dtype, src, caps)
}

fn check_variant_with(
    label: &str,
    dtype: Dtype,
    src: &PipelineSource<'_>,
    caps: naga::valid::Capabilities,
) {
    let text = full_source(src.kernel, dtype, &src.parts(), src.includes).unwrap();
    let module = naga::front::wgsl::parse_str(&text)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&text)));
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&text)));
    let mut consts = naga::back::PipelineConstants::default();
    for (k, v) in &src.constants {
        consts.insert(k.to_string(), *v);
    }
    let stage = naga::ShaderStage::Compute;
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((stage, "main")),
        &consts,
    )
    .unwrap_or_else(|e| panic!("{label}: overrides: {e}"));
    naga::back::spv::write_vec(
        &module,
        &info,
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
        &module,
        &info,
        &msl_opts,
        &naga::back::msl::PipelineOptions {
            entry_point: Some((stage, "main".into())),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{label}: MSL: {e}"));
    let mut hlsl = String::new();
    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let hlsl_pipe = naga::back::hlsl::PipelineOptions {
        entry_point: Some((stage, "main".into())),
    };
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &hlsl_pipe)
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{label}: HLSL: {e}"));
}

fn sg_f(f: Features) -> Features {
    Features(f.0 | Features::SUBGROUPS)
}

const ALL_FEATURES: u32 = 127 | Features::OUT_FP8;

#[test]
fn every_variant_validates_and_translates() {
    let limits = wgpu::Limits {
        max_compute_workgroup_storage_size: 32768,
        ..wgpu::Limits::default()
    };
    let mut n = 0;
    for mode in KvQuantMode::ALL {
        let Some(backend) = create(mode) else {
            continue;
        };
        for dtype in [Dtype::F16, Dtype::F32] {
            let codec = backend.codec(dtype);
            for d in (32..=256).step_by(16) {
                let rows = if d % 32 == 0 { 4 } else { 16 };
                let tiling = Tiling::for_attention(d, &limits, rows).expect("tiling fits 32 KiB");
                // Every single feature, none and all; every combination at one head size.
                let combos: Vec<u32> = if d == 64 {
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
                for f in combos {
                    let f = Features(f);
                    let label = format!("{}/{}/d{d}/{f}", mode.id(), dtype.name());
                    check_variant(&label, dtype, &attention_source(codec, d, f, tiling));
                    n += 1;
                }
                // The decode kernel (never sees prefix ranges): each feature alone, none, all.
                let no_mm = ALL_FEATURES & !Features::MM_PREFIX;
                let singles = (0..9)
                    .map(|b| 1u32 << b)
                    .filter(|&b| b != Features::MM_PREFIX);
                for f in singles.chain([0, no_mm, no_mm & !Features::ALIBI]) {
                    let f = Features(f);
                    let label = format!("decode/{}/{}/d{d}/{f}", mode.id(), dtype.name());
                    for m in [1, 4, 16] {
                        // (16 heads at d 256 do not fit 32 KiB: the unified kernel runs.)
                        let Some(dt) = Tiling::for_decode(d, &limits, m) else {
                            assert!(m == 16 && d > 192, "decode tiling m{m} d{d} must fit");
                            continue;
                        };
                        let label = format!("{label}/m{m}");
                        check_variant(&label, dtype, &decode_source(codec, d, f, dt));
                        let sg = sg_f(f);
                        check_variant_with(
                            &format!("{label}/sg"),
                            dtype,
                            &decode_source(codec, d, sg, dt),
                            naga::valid::Capabilities::all(),
                        );
                        n += 2;
                    }
                }
                check_variant("reduce", dtype, &reduce_source(codec, d, Features(0)));
                check_variant(
                    "reduce+fp8",
                    dtype,
                    &reduce_source(codec, d, Features(Features::SINKS | Features::OUT_FP8)),
                );
                n += 1;
                check_variant(
                    "reduce+sinks",
                    dtype,
                    &reduce_source(codec, d, Features(Features::SINKS)),
                );
                n += 2;
            }
            let wt = Tiling {
                wg_size: 64,
                tile: 0,
                max_m: 0,
            };
            check_variant("write_copy", dtype, &write_copy_source(wt));
            n += 1;
            if codec.encode.is_some() {
                for d in (32..=256).step_by(16) {
                    for rne in [false, true] {
                        check_variant(
                            &format!("write_rows/{}/d{d}", mode.id()),
                            dtype,
                            &write_rows_source(codec, d, rne, wt),
                        );
                        n += 1;
                    }
                }
            }
        }
    }
    eprintln!("{n} WGSL variants validated and translated to SPIR-V, MSL and HLSL");
}
