//! Compute pipelines: keyed by everything that changes the generated code, built lazily on
//! first use, cached in the [`crate::Context`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::compose::compose;
use super::context::Context;
use crate::error::{Error, Result};
use crate::types::{Dtype, KvQuantMode};

/// The core kernels.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kernel {
    /// reshape_and_cache for modes that store rows as given.
    WriteCopy,
    /// unified_attention (2D, or one split-K segment per z-workgroup with `Features::SPLIT`).
    Attention,
    /// split-K reduce pass.
    Reduce,
    /// unified_attention specialised for decode batches (every query length <= 1).
    Decode,
    /// reshape_and_cache for quantized modes.
    WriteRows,
    /// unified_attention's tiled prefill kernel (fragment twin, or cooperative matrices with
    /// `Features::COOP`).
    Prefill,
    /// The mode's query transform as a pass of its own (ahead of the prefill kernel).
    RotateQ,
}

impl Kernel {
    /// Name used in labels.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::WriteCopy => "write_copy",
            Kernel::Attention => "unified",
            Kernel::Reduce => "reduce",
            Kernel::Decode => "decode",
            Kernel::WriteRows => "write_rows",
            Kernel::Prefill => "prefill",
            Kernel::RotateQ => "rotate_q",
        }
    }
}

/// Feature bits that select shader specialisations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Features(pub u32);

impl Features {
    /// tanh softcap.
    pub const SOFTCAP: u32 = 1;
    /// attention sinks.
    pub const SINKS: u32 = 2;
    /// linear ALiBi.
    pub const ALIBI: u32 = 4;
    /// sqrt ALiBi.
    pub const ALIBI_SQRT: u32 = 8;
    /// qq_bias.
    pub const QQ_BIAS: u32 = 16;
    /// multimodal prefix ranges.
    pub const MM_PREFIX: u32 = 32;
    /// split-K segment pass.
    pub const SPLIT: u32 = 64;
    /// FP8 e4m3 output (`output_scale`).
    pub const OUT_FP8: u32 = 256;
    /// Subgroup operations (decode kernel; adapters with subgroups of >= 8 invocations).
    pub const SUBGROUPS: u32 = 512;
    /// The decode kernel's streaming rung (with `SUBGROUPS`).
    pub const STREAM: u32 = 1024;
    /// The prefill kernel on cooperative matrices (else its scalar fragment twin).
    pub const COOP: u32 = 2048;
    /// The decode kernel writes the step's new K/V rows first (mode `none`; bindings 10, 11).
    pub const FUSED_WRITE: u32 = 4096;
    /// The decode kernel combines its split-K segments itself, in the last workgroup of each
    /// (sequence, head chunk) to finish (with `SPLIT`; coherent storage; bindings 12, 13).
    pub const COMBINE: u32 = 8192;

    /// Whether `bit` is set.
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(u32, &str); 13] = [
            (Features::SOFTCAP, "softcap"),
            (Features::SINKS, "sinks"),
            (Features::ALIBI, "alibi"),
            (Features::ALIBI_SQRT, "alibi_sqrt"),
            (Features::QQ_BIAS, "qq"),
            (Features::MM_PREFIX, "mm"),
            (Features::SPLIT, "split"),
            (Features::OUT_FP8, "out_fp8"),
            (Features::SUBGROUPS, "sg"),
            (Features::STREAM, "stream"),
            (Features::COOP, "coop"),
            (Features::FUSED_WRITE, "write"),
            (Features::COMBINE, "combine"),
        ];
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(b, _)| self.has(*b))
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            write!(f, "base")
        } else {
            write!(f, "{}", names.join("+"))
        }
    }
}

/// Everything that changes the generated code of one pipeline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PipelineKey {
    /// Which kernel.
    pub kernel: Kernel,
    /// K cache mode.
    pub k: KvQuantMode,
    /// V cache mode.
    pub v: KvQuantMode,
    /// The modes' options as bits (from the mode's `option_bits`; opaque here).
    pub mode_options: u32,
    /// Head size.
    pub head_dim: u32,
    /// Model dtype (Q, K/V inputs, output).
    pub dtype: Dtype,
    /// Specialisations.
    pub features: Features,
    /// Workgroup geometry.
    pub tiling: Tiling,
    /// Profiling knobs that change the generated code (`debug-knobs` feature; always 0
    /// without it), so a knob-built pipeline never serves a normal call.
    pub debug: u32,
}

impl fmt::Display for PipelineKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quantkv/{}/{}-{}/o{}/d{}/{}/{}/t{}w{}m{}{}",
            self.kernel.name(),
            self.k.id(),
            self.v.id(),
            self.mode_options,
            self.head_dim,
            self.dtype.name(),
            self.features,
            self.tiling.tile,
            self.tiling.wg_size,
            self.tiling.max_m,
            if self.debug != 0 {
                format!("/debug{}", self.debug)
            } else {
                String::new()
            }
        )
    }
}

/// Workgroup geometry a pipeline is built with; host dispatch math uses the same values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Tiling {
    /// Threads per workgroup.
    pub wg_size: u32,
    /// Keys per KV tile.
    pub tile: u32,
    /// Rows (query token x query head) per workgroup.
    pub max_m: u32,
    /// Fragment owners per workgroup of the prefill kernel (a subgroup each on cooperative
    /// matrices, 16 lanes each on the twin): row blocks × column groups; 0 for other kernels.
    pub owners: u32,
}

/// A built pipeline and the geometry it was built with.
pub struct Compiled {
    /// Unique per built pipeline (bind groups are cached under it).
    pub id: u64,
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Its bind group layout (group 0).
    pub layout: wgpu::BindGroupLayout,
}

/// Lazily filled pipeline cache.
pub struct PipelineCache {
    map: RwLock<rustc_hash::FxHashMap<PipelineKey, Arc<Entry>>>,
    /// Most pipelines kept; the least recently used is dropped past it (pipelines still
    /// referenced by recorded work stay alive through their `Arc`).
    cap: usize,
    clock: AtomicU64,
}

/// One key's slot: a per-key once-cell, so compiling one variant never blocks callers that
/// need another, two callers needing the same variant compile it once (under `building`), and
/// once built a lookup takes no lock but the map's read lock.
struct Entry {
    compiled: std::sync::OnceLock<Arc<Compiled>>,
    building: std::sync::Mutex<()>,
    last_used: AtomicU64,
}

/// Default cap on the pipelines one context keeps ([`crate::Context::with_pipeline_cap`]).
/// Variants per cache configuration are bounded (kernel × feature bits × rung × split ×
/// head-group tiling: a few dozen in practice), so this is reached only by apps that cycle
/// through many configurations.
pub const DEFAULT_PIPELINE_CAP: usize = 256;

impl Default for PipelineCache {
    fn default() -> Self {
        Self::with_cap(DEFAULT_PIPELINE_CAP)
    }
}

/// What a caller hands the cache to build a missing pipeline.
pub struct PipelineSource<'a> {
    /// Root WGSL source of the kernel (may `// #include` common files).
    pub kernel: &'static str,
    /// WGSL parts placed between the model types file and the kernel (the mode's contracts).
    pub codec: Vec<&'a str>,
    /// Generated WGSL placed before the codec parts: `const` declarations a kernel needs as
    /// array sizes (WGSL has no override-sized function-scope arrays). Empty for most kernels.
    pub prelude: String,
    /// Files the parts may `// #include` besides the core ones (e.g. a mode family's shared
    /// WGSL), as (path, source).
    pub includes: &'static [(&'static str, &'static str)],
    /// Override constants.
    pub constants: Vec<(&'static str, f64)>,
    /// Bind group layout entries.
    pub entries: Vec<wgpu::BindGroupLayoutEntry>,
}

impl PipelineSource<'_> {
    /// The prelude then the codec parts, in the order [`full_source`] takes them.
    pub fn parts(&self) -> Vec<&str> {
        let mut v = Vec::with_capacity(self.codec.len() + 1);
        if !self.prelude.is_empty() {
            v.push(self.prelude.as_str());
        }
        v.extend(self.codec.iter().copied());
        v
    }
}

impl PipelineCache {
    /// An empty cache keeping at most `cap` pipelines (at least 1).
    pub fn with_cap(cap: usize) -> Self {
        Self {
            map: RwLock::new(Default::default()),
            cap: cap.max(1),
            clock: AtomicU64::new(0),
        }
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Labels of every pipeline the cache holds (built ones only).
    pub fn labels(&self) -> Vec<String> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = map
            .iter()
            .filter(|(_, e)| e.compiled.get().is_some())
            .map(|(k, _)| k.to_string())
            .collect();
        v.sort();
        v
    }

    /// The pipeline for `key` if it is built (no build, no wait; marks it used).
    pub fn try_get(&self, key: &PipelineKey) -> Option<Arc<Compiled>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let slot = map.get(key)?;
        let c = slot.compiled.get()?;
        slot.last_used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        Some(c.clone())
    }

    /// Returns the pipeline for `key`, building it with `source()` the first time. The map's
    /// lock is held only to find or insert the key's slot; the compile runs under the slot's
    /// own lock.
    pub fn get<'a>(
        &self,
        ctx: &Context,
        key: PipelineKey,
        source: impl FnOnce() -> PipelineSource<'a>,
    ) -> Result<Arc<Compiled>> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let slot = {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            map.get(&key).cloned()
        };
        let slot = match slot {
            Some(s) => s,
            None => {
                let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
                if !map.contains_key(&key) {
                    while map.len() >= self.cap {
                        let oldest = map
                            .iter()
                            .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                            .map(|(k, _)| *k);
                        match oldest {
                            Some(k) => {
                                log::info!(
                                    "quantkv: pipeline cache full ({}), dropping {k}",
                                    self.cap
                                );
                                map.remove(&k);
                            }
                            None => break,
                        }
                    }
                }
                map.entry(key)
                    .or_insert_with(|| {
                        Arc::new(Entry {
                            compiled: std::sync::OnceLock::new(),
                            building: std::sync::Mutex::new(()),
                            last_used: AtomicU64::new(now),
                        })
                    })
                    .clone()
            }
        };
        slot.last_used.store(now, Ordering::Relaxed);
        if let Some(c) = slot.compiled.get() {
            return Ok(c.clone());
        }
        // Not built yet: one caller builds it, others needing it wait here (a failed build
        // leaves the cell empty, so the next caller tries again).
        let _building = slot.building.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.compiled.get() {
            return Ok(c.clone());
        }
        let built = Arc::new(build(ctx, &key, source())?);
        let _ = slot.compiled.set(built.clone());
        Ok(built)
    }
}

/// Full WGSL text of a kernel variant: the model types file, the codec parts, then the kernel.
pub fn full_source(
    kernel: &str,
    dtype: Dtype,
    codec: &[&str],
    includes: &[(&str, &str)],
) -> Result<String> {
    let types = match dtype {
        Dtype::F16 => "// #include \"common/types_f16.wgsl\"\n",
        Dtype::F32 => "// #include \"common/types_f32.wgsl\"\n",
        Dtype::Bf16 => "// #include \"common/types_bf16.wgsl\"\n",
        Dtype::Fp8E4m3 => {
            return Err(Error::InvalidArgument {
                what: "dtype",
                detail: "fp8 is an output format, not a model dtype".into(),
            })
        }
    };
    let mut root = String::from(types);
    for c in codec {
        root.push_str(c);
        root.push('\n');
    }
    root.push_str(kernel);
    let text = compose(&root, includes).map_err(|e| Error::ShaderCompile {
        label: "compose".into(),
        message: e.to_string(),
    })?;
    Ok(hoist_enables(&text))
}

/// WGSL wants `enable` directives before every declaration; parts may carry their own, so they
/// are moved to the top (each once).
fn hoist_enables(text: &str) -> String {
    let mut enables: Vec<&str> = Vec::new();
    let mut body = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("enable ") && t.ends_with(';') {
            if !enables.contains(&t) {
                enables.push(t);
            }
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    if enables.is_empty() {
        return body;
    }
    let mut out = enables.join("\n");
    out.push('\n');
    out.push_str(&body);
    out
}

/// `QUANTKV_DEBUG_DUMP_PIPELINES=<dir>` (feature `debug-knobs`): every pipeline built writes
/// its composed WGSL (`<pid>-<n>.wgsl`) and a description (`<pid>-<n>.txt`: label, `const NAME=value`
/// lines, `binding N uniform|storage-ro|storage-rw` lines) to `dir`, for tools that compile
/// the same pipeline outside wgpu (`examples/pipeline_stats.rs` reads the driver's register
/// and spill statistics from them).
#[cfg(feature = "debug-knobs")]
fn dump_pipeline(label: &str, text: &str, src: &PipelineSource<'_>) {
    use std::fmt::Write as _;
    let Some(dir) = std::env::var_os("QUANTKV_DEBUG_DUMP_PIPELINES") else {
        return;
    };
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::path::PathBuf::from(dir);
    let mut desc = format!("label {label}\n");
    for (k, v) in &src.constants {
        let _ = writeln!(desc, "const {k}={v}");
    }
    for e in &src.entries {
        let kind = match e.ty {
            wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                ..
            } => "uniform",
            wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: true },
                ..
            } => "storage-ro",
            _ => "storage-rw",
        };
        let _ = writeln!(desc, "binding {} {kind}", e.binding);
    }
    let stem = format!("{}-{n:04}", std::process::id());
    let ok = std::fs::create_dir_all(&dir).is_ok()
        && std::fs::write(dir.join(format!("{stem}.wgsl")), text).is_ok()
        && std::fs::write(dir.join(format!("{stem}.txt")), desc).is_ok();
    if !ok {
        log::warn!(
            "quantkv: could not dump pipeline {label} to {}",
            dir.display()
        );
    }
}

fn build(ctx: &Context, key: &PipelineKey, src: PipelineSource<'_>) -> Result<Compiled> {
    let label = key.to_string();
    let text = full_source(src.kernel, key.dtype, &src.parts(), src.includes)?;
    #[cfg(feature = "debug-knobs")]
    dump_pipeline(&label, &text, &src);
    let device = &ctx.device;
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(text.into()),
    };
    let module = if ctx.checked_shaders() {
        device.create_shader_module(desc)
    } else {
        // SAFETY: the kernels are our own WGSL, and every index, loop bound and divisor they use
        // comes from values the host validated before encoding (README, "Why the shaders run
        // unchecked"): block-table entries in [0, num_blocks) for every column a sequence needs,
        // slots < num_blocks * block_size, tensors at least as long as their shapes, block_size
        // and head_chunks > 0, loops bounded by uniform counts. Keys past a sequence read row
        // 0, which always exists.
        unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
    };
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&label),
        entries: &src.entries,
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pl),
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &src.constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: ctx.wgpu_pipeline_cache(),
    });
    if let Some(err) = pollster::block_on(scope.pop()) {
        return Err(Error::ShaderCompile {
            label,
            message: err.to_string(),
        });
    }
    log::info!("quantkv: compiled pipeline {label}");
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Ok(Compiled {
        id: NEXT.fetch_add(1, Ordering::Relaxed),
        pipeline,
        layout,
    })
}
