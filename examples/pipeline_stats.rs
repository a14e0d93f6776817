//! What the Vulkan driver made of quantkv's pipelines: registers, spills, shared memory and
//! whatever else the driver reports through `VK_KHR_pipeline_executable_properties`.
//!
//! wgpu does not expose that extension, so this tool compiles the same pipelines itself: run
//! a program built with the `debug-knobs` feature and `QUANTKV_DEBUG_DUMP_PIPELINES=<dir>`
//! (every pipeline quantkv builds is written there as WGSL plus its override constants and
//! bindings), then
//!
//! ```text
//! cargo run --release --example pipeline_stats -- <dir> [label-substring] [--ir] [--set=NAME=VALUE]...
//! ```
//!
//! Each pipeline is translated as wgpu's Vulkan backend translates an unchecked module (naga,
//! override constants applied, no bounds or loop checks, no integer-division guards, no
//! workgroup zeroing), created on the first discrete Vulkan device (else the first) with the
//! statistics capture flags, and its statistics printed; `--ir` prints the driver's internal
//! representations too, where it offers them. A driver without the extension is reported and
//! the tool exits cleanly.

use anyhow::{anyhow, bail, Context as _, Result};
use ash::vk;
use std::ffi::CStr;
use std::path::{Path, PathBuf};

/// One dumped pipeline: its label, composed WGSL, override constants and bindings.
struct Dumped {
    label: String,
    wgsl: String,
    constants: Vec<(String, f64)>,
    bindings: Vec<(u32, vk::DescriptorType)>,
}

fn read_dump(txt: &Path) -> Result<Dumped> {
    let desc = std::fs::read_to_string(txt)?;
    let wgsl = std::fs::read_to_string(txt.with_extension("wgsl"))?;
    let mut d = Dumped {
        label: String::new(),
        wgsl,
        constants: Vec::new(),
        bindings: Vec::new(),
    };
    for line in desc.lines() {
        if let Some(l) = line.strip_prefix("label ") {
            d.label = l.to_string();
        } else if let Some(c) = line.strip_prefix("const ") {
            let (k, v) = c
                .split_once('=')
                .ok_or_else(|| anyhow!("bad line {line}"))?;
            d.constants.push((k.to_string(), v.parse()?));
        } else if let Some(b) = line.strip_prefix("binding ") {
            let (n, kind) = b
                .split_once(' ')
                .ok_or_else(|| anyhow!("bad line {line}"))?;
            let ty = if kind == "uniform" {
                vk::DescriptorType::UNIFORM_BUFFER
            } else {
                vk::DescriptorType::STORAGE_BUFFER
            };
            d.bindings.push((n.parse()?, ty));
        }
    }
    Ok(d)
}

/// SPIR-V as wgpu-hal's Vulkan backend writes it for a trusted module without runtime checks.
fn spirv(d: &Dumped, lang: (u8, u8)) -> Result<Vec<u32>> {
    let module = naga::front::wgsl::parse_str(&d.wgsl)
        .map_err(|e| anyhow!("{}: {}", d.label, e.emit_to_string(&d.wgsl)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| anyhow!("{}: {}", d.label, e.emit_to_string(&d.wgsl)))?;
    let mut consts = naga::back::PipelineConstants::default();
    for (k, v) in &d.constants {
        consts.insert(k.clone(), *v);
    }
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, "main")),
        &consts,
    )
    .map_err(|e| anyhow!("{}: overrides: {e}", d.label))?;
    let unchecked = naga::proc::BoundsCheckPolicy::Unchecked;
    let options = naga::back::spv::Options {
        lang_version: lang,
        flags: naga::back::spv::WriterFlags::empty(),
        fake_missing_bindings: true,
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: unchecked,
            buffer: unchecked,
            image_load: unchecked,
            binding_array: unchecked,
        },
        zero_initialize_workgroup_memory: naga::back::spv::ZeroInitializeWorkgroupMemoryMode::None,
        force_loop_bounding: false,
        emit_int_div_checks: false,
        ..Default::default()
    };
    naga::back::spv::write_vec(
        &module,
        &info,
        &options,
        Some(&naga::back::spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: "main".into(),
        }),
    )
    .map_err(|e| anyhow!("{}: SPIR-V: {e}", d.label))
}

/// Every feature the device has in the structures a compute kernel may need (enabling what is
/// supported is always valid), with `pipelineExecutableInfo` among them.
struct Features {
    v11: vk::PhysicalDeviceVulkan11Features<'static>,
    v12: vk::PhysicalDeviceVulkan12Features<'static>,
    v13: vk::PhysicalDeviceVulkan13Features<'static>,
    coop: vk::PhysicalDeviceCooperativeMatrixFeaturesKHR<'static>,
    exec: vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR<'static>,
    base: vk::PhysicalDeviceFeatures,
}

fn stat_value(s: &vk::PipelineExecutableStatisticKHR) -> String {
    // SAFETY: the union member read is the one `format` names.
    unsafe {
        match s.format {
            vk::PipelineExecutableStatisticFormatKHR::BOOL32 => (s.value.b32 != 0).to_string(),
            vk::PipelineExecutableStatisticFormatKHR::INT64 => s.value.i64.to_string(),
            vk::PipelineExecutableStatisticFormatKHR::UINT64 => s.value.u64.to_string(),
            vk::PipelineExecutableStatisticFormatKHR::FLOAT64 => format!("{:.3}", s.value.f64),
            _ => "?".into(),
        }
    }
}

fn cstr(bytes: &[std::ffi::c_char]) -> String {
    // SAFETY: Vulkan fills these fixed arrays with NUL-terminated strings.
    unsafe { CStr::from_ptr(bytes.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ir = args.iter().any(|a| a == "--ir");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let dir = PathBuf::from(
        pos.first()
            .ok_or_else(|| anyhow!("usage: pipeline_stats <dump-dir> [label-substring] [--ir]"))?,
    );
    let filter = pos.get(1).map(|s| s.as_str()).unwrap_or("");
    // `--set NAME=VALUE`: override constants changed before compiling (e.g. a diagnostic knob).
    let mut sets: Vec<(String, f64)> = Vec::new();
    for a in args.iter().filter_map(|a| a.strip_prefix("--set=")) {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("--set=NAME=VALUE, got {a}"))?;
        sets.push((k.to_string(), v.parse()?));
    }
    let mut txts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    txts.sort();

    // SAFETY: plain Vulkan calls on objects this function creates and destroys in order.
    unsafe {
        let entry = ash::Entry::load().context("loading the Vulkan loader")?;
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_3);
        let instance = entry.create_instance(
            &vk::InstanceCreateInfo::default().application_info(&app),
            None,
        )?;
        let phys = instance.enumerate_physical_devices()?;
        let pd = *phys
            .iter()
            .find(|&&p| {
                instance.get_physical_device_properties(p).device_type
                    == vk::PhysicalDeviceType::DISCRETE_GPU
            })
            .or(phys.first())
            .ok_or_else(|| anyhow!("no Vulkan device"))?;
        let props = instance.get_physical_device_properties(pd);
        let mut drv = vk::PhysicalDeviceDriverProperties::default();
        let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut drv);
        instance.get_physical_device_properties2(pd, &mut p2);
        println!(
            "device: {} ({}, {}), api {}.{}",
            cstr(&props.device_name),
            cstr(&drv.driver_name),
            cstr(&drv.driver_info),
            vk::api_version_major(props.api_version),
            vk::api_version_minor(props.api_version),
        );
        let exts: Vec<String> = instance
            .enumerate_device_extension_properties(pd)?
            .iter()
            .map(|e| cstr(&e.extension_name))
            .collect();
        eprintln!("pipeline_stats: {} device extensions", exts.len());
        let has = |n: &CStr| exts.iter().any(|e| e.as_bytes() == n.to_bytes());
        let stats = has(ash::khr::pipeline_executable_properties::NAME);
        if !stats {
            println!("the driver does not offer VK_KHR_pipeline_executable_properties: the pipelines are only compiled");
        }
        let mut enabled = Vec::new();
        if stats {
            enabled.push(ash::khr::pipeline_executable_properties::NAME.as_ptr());
        }
        let coop = has(ash::khr::cooperative_matrix::NAME);
        if coop {
            enabled.push(ash::khr::cooperative_matrix::NAME.as_ptr());
        }
        let mut f = Features {
            v11: Default::default(),
            v12: Default::default(),
            v13: Default::default(),
            coop: Default::default(),
            exec: Default::default(),
            base: Default::default(),
        };
        {
            let mut f2 = vk::PhysicalDeviceFeatures2::default()
                .push_next(&mut f.v11)
                .push_next(&mut f.v12)
                .push_next(&mut f.v13)
                .push_next(&mut f.exec);
            if coop {
                f2 = f2.push_next(&mut f.coop);
            }
            instance.get_physical_device_features2(pd, &mut f2);
            f.base = f2.features;
        }
        eprintln!("pipeline_stats: features read (cooperative matrices: {coop})");
        if stats && f.exec.pipeline_executable_info == 0 {
            bail!("pipelineExecutableInfo is not supported");
        }
        // The query chained these structures together; each is pushed anew below (ash links a
        // pushed structure's own chain, so stale links would make a cycle).
        f.v11.p_next = std::ptr::null_mut();
        f.v12.p_next = std::ptr::null_mut();
        f.v13.p_next = std::ptr::null_mut();
        f.exec.p_next = std::ptr::null_mut();
        f.coop.p_next = std::ptr::null_mut();
        // Protected memory would want a protected queue; a compute kernel never needs it.
        f.v11.protected_memory = 0;
        let prio = [1.0f32];
        let queue = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(0)
            .queue_priorities(&prio)];
        let mut dci = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue)
            .enabled_extension_names(&enabled)
            .enabled_features(&f.base)
            .push_next(&mut f.v11)
            .push_next(&mut f.v12)
            .push_next(&mut f.v13);
        if stats {
            dci = dci.push_next(&mut f.exec);
        }
        if coop {
            dci = dci.push_next(&mut f.coop);
        }
        let device = instance.create_device(pd, &dci, None)?;
        eprintln!("pipeline_stats: device created");
        let pep = ash::khr::pipeline_executable_properties::Device::new(&instance, &device);
        let lang = if props.api_version >= vk::API_VERSION_1_3 {
            (1, 6)
        } else {
            (1, 5)
        };

        for txt in &txts {
            let mut d = read_dump(txt)?;
            for (k, v) in &sets {
                match d.constants.iter_mut().find(|(n, _)| n == k) {
                    Some(c) => c.1 = *v,
                    None => d.constants.push((k.clone(), *v)),
                }
            }
            if !d.label.contains(filter) {
                continue;
            }
            println!("\n== {} ({})", d.label, txt.display());
            let code = match spirv(&d, lang) {
                Ok(c) => c,
                Err(e) => {
                    println!("  translation failed: {e}");
                    continue;
                }
            };
            let module = device
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None)?;
            let binds: Vec<vk::DescriptorSetLayoutBinding> = d
                .bindings
                .iter()
                .map(|&(b, ty)| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(b)
                        .descriptor_type(ty)
                        .descriptor_count(1)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            let dsl = device.create_descriptor_set_layout(
                &vk::DescriptorSetLayoutCreateInfo::default().bindings(&binds),
                None,
            )?;
            let sets = [dsl];
            let layout = device.create_pipeline_layout(
                &vk::PipelineLayoutCreateInfo::default().set_layouts(&sets),
                None,
            )?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .flags(vk::PipelineShaderStageCreateFlags::ALLOW_VARYING_SUBGROUP_SIZE)
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let mut flags = vk::PipelineCreateFlags::empty();
            if stats {
                flags |= vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR;
            }
            if stats && ir {
                flags |= vk::PipelineCreateFlags::CAPTURE_INTERNAL_REPRESENTATIONS_KHR;
            }
            let ci = [vk::ComputePipelineCreateInfo::default()
                .flags(flags)
                .stage(stage)
                .layout(layout)];
            let pipeline =
                match device.create_compute_pipelines(vk::PipelineCache::null(), &ci, None) {
                    Ok(p) => p[0],
                    Err((_, e)) => {
                        println!("  pipeline creation failed: {e}");
                        device.destroy_pipeline_layout(layout, None);
                        device.destroy_descriptor_set_layout(dsl, None);
                        device.destroy_shader_module(module, None);
                        continue;
                    }
                };
            if !stats {
                println!("  compiled");
                device.destroy_pipeline(pipeline, None);
                device.destroy_pipeline_layout(layout, None);
                device.destroy_descriptor_set_layout(dsl, None);
                device.destroy_shader_module(module, None);
                continue;
            }
            let execs = pep.get_pipeline_executable_properties(
                &vk::PipelineInfoKHR::default().pipeline(pipeline),
            )?;
            for (i, e) in execs.iter().enumerate() {
                println!(
                    "  executable {i}: {} — {} (subgroup size {})",
                    cstr(&e.name),
                    cstr(&e.description),
                    e.subgroup_size
                );
                let info = vk::PipelineExecutableInfoKHR::default()
                    .pipeline(pipeline)
                    .executable_index(i as u32);
                for s in pep.get_pipeline_executable_statistics(&info)? {
                    println!(
                        "    {} = {}  ({})",
                        cstr(&s.name),
                        stat_value(&s),
                        cstr(&s.description)
                    );
                }
                if ir {
                    print_ir(&pep, &info)?;
                }
            }
            device.destroy_pipeline(pipeline, None);
            device.destroy_pipeline_layout(layout, None);
            device.destroy_descriptor_set_layout(dsl, None);
            device.destroy_shader_module(module, None);
        }
        device.destroy_device(None);
        instance.destroy_instance(None);
    }
    Ok(())
}

/// The driver's internal representations of one executable (text ones printed in full).
unsafe fn print_ir(
    pep: &ash::khr::pipeline_executable_properties::Device,
    info: &vk::PipelineExecutableInfoKHR,
) -> Result<()> {
    let fp = pep.fp();
    let query = |n: &mut u32, reps: *mut vk::PipelineExecutableInternalRepresentationKHR| {
        (fp.get_pipeline_executable_internal_representations_khr)(pep.device(), info, n, reps)
            .result()
    };
    let mut n = 0u32;
    query(&mut n, std::ptr::null_mut())?;
    let mut reps = vec![vk::PipelineExecutableInternalRepresentationKHR::default(); n as usize];
    query(&mut n, reps.as_mut_ptr())?;
    let mut bufs: Vec<Vec<u8>> = reps.iter().map(|r| vec![0u8; r.data_size]).collect();
    for (r, b) in reps.iter_mut().zip(bufs.iter_mut()) {
        r.p_data = b.as_mut_ptr().cast();
    }
    query(&mut n, reps.as_mut_ptr())?;
    for (r, b) in reps.iter().zip(&bufs) {
        println!(
            "    -- {} ({}; {} bytes)",
            cstr(&r.name),
            cstr(&r.description),
            b.len()
        );
        if r.is_text != 0 {
            println!("{}", String::from_utf8_lossy(b).trim_end_matches('\0'));
        }
    }
    Ok(())
}
