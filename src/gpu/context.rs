//! `Context`: the wgpu device and queue quantkv works on, its capabilities, and the lazily
//! filled caches (pipelines, interned constant buffers) that live as long as it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::pipeline::PipelineCache;
use crate::error::{Error, Result};

/// A caller's device-lost hook ([`Context::on_device_lost`]).
type LostHook = Box<dyn Fn(wgpu::DeviceLostReason, &str) + Send>;

/// Device-loss state shared with the device-lost callback.
#[derive(Default)]
struct LostState {
    lost: AtomicBool,
    message: Mutex<String>,
    hooks: Mutex<Vec<LostHook>>,
}

/// Interned constant buffers: one map per usage, keyed by contents, so a hit (the common case,
/// once per layer call) looks up a borrowed slice without allocating.
// Fx hashing: these keys are the library's own (no untrusted input), and SipHash of a layer
// uniform was a fifth of recording a call.
type InternMap = rustc_hash::FxHashMap<u32, rustc_hash::FxHashMap<Vec<u8>, Arc<wgpu::Buffer>>>;

/// What the adapter can do, as quantkv sees it.
#[derive(Clone, Debug)]
pub struct Caps {
    /// `SHADER_F16` is available (and enabled on devices quantkv creates).
    pub shader_f16: bool,
    /// Subgroup operations are available (and enabled on devices quantkv creates).
    pub subgroups: bool,
    /// Smallest subgroup size the adapter may use.
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter may use.
    pub subgroup_max_size: u32,
    /// Timestamp queries are available (and enabled on devices quantkv creates).
    pub timestamps: bool,
    /// Cooperative matrices with a 16×16×16 f16 × f16 → f32 subgroup configuration are enabled
    /// (wgpu's `EXPERIMENTAL_COOPERATIVE_MATRIX`; the prefill kernel's tensor-core path). Known
    /// only for devices quantkv creates or gets with their adapter
    /// ([`Context::from_adapter_device`]).
    pub coop_f16: bool,
    /// The device's limits (as requested: the adapter's real limits, not wgpu's defaults).
    pub limits: wgpu::Limits,
    /// Multiprocessors (NVIDIA SMs) where known: from [`multiprocessors_for`] by adapter name,
    /// or set with [`Context::with_multiprocessors`]; wgpu does not report the count. The
    /// decode kernel's split-K sizes its one wave of workgroups from it (two per
    /// multiprocessor; 264, an H200's, where unknown).
    pub multiprocessors: Option<u32>,
    /// The decode kernel combines its split-K segments itself (its last workgroup per sequence
    /// and head chunk, instead of a reduce pass): a Vulkan device with
    /// `Features::MEMORY_DECORATION_COHERENT` enabled (every Vulkan adapter of wgpu 30 has it),
    /// unless [`Context::with_split_combine`] turned it off. Other backends keep the reduce
    /// pass (their translation of the storage barrier is not checked to order memory across
    /// workgroups).
    pub split_combine: bool,
}

/// Multiprocessors of adapters quantkv knows by name (NVIDIA data-center and desktop parts, as
/// their Vulkan drivers name them); `None` for any other adapter (the planner's default then
/// holds: an H200's 132).
pub fn multiprocessors_for(name: &str) -> Option<u32> {
    // Longest names first where one contains another (H100 PCIe before H100, L40S before L40;
    // "H200" also names the GH200's GPU, of the same 132).
    const TABLE: &[(&str, u32)] = &[
        ("H200", 132),
        ("H100 PCIe", 114),
        ("H100", 132),
        ("A100", 108),
        ("L40S", 142),
        ("L40", 142),
        ("RTX 4090", 128),
        ("RTX 3090", 82),
    ];
    if !name.contains("NVIDIA") {
        return None;
    }
    TABLE
        .iter()
        .find(|(key, _)| name.contains(key))
        .map(|&(_, n)| n)
}

/// Adapter identity: name, backend and driver.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Adapter name, e.g. `NVIDIA H100 80GB HBM3` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Backend (Vulkan, Metal, Dx12, Gl).
    pub backend: wgpu::Backend,
    /// Driver name.
    pub driver: String,
    /// Driver version / info string.
    pub driver_info: String,
    /// Device type (discrete, integrated, CPU, ...).
    pub device_type: wgpu::DeviceType,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}, driver {} {})",
            self.name, self.backend, self.device_type, self.driver, self.driver_info
        )
    }
}

/// The GPU quantkv runs on, plus its caches. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Context {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// The wgpu queue.
    pub queue: wgpu::Queue,
    adapter: AdapterSummary,
    caps: Caps,
    pub(crate) pipelines: PipelineCache,
    interned: Mutex<InternMap>,
    checked_shaders: bool,
    lost: Arc<LostState>,
    disk_cache: Option<DiskCache>,
    pub(crate) bind_groups: Arc<super::bind_cache::BindCache>,
    step_pool: StepPool,
}

/// A step's uniform and metadata buffers (the metadata buffer's size is its capacity).
pub struct StepBuffers {
    /// The step uniform (`StepU`).
    pub uniform: wgpu::Buffer,
    /// The step metadata (`array<i32>`).
    pub meta: wgpu::Buffer,
    /// The split-K partials buffer the last plan on these buffers used (kept with them, so the
    /// next step's layer calls bind the same buffer and find their bind groups cached).
    pub partials: Option<std::sync::Arc<wgpu::Buffer>>,
    /// The rotated-query scratch the last plan on these buffers used (likewise).
    pub rotated_q: Option<std::sync::Arc<wgpu::Buffer>>,
    /// The split-K arrival counters the last plan on these buffers used (likewise; all zero
    /// between dispatches).
    pub arrivals: Option<std::sync::Arc<wgpu::Buffer>>,
    /// The metadata words the last plan on these buffers wrote (what `meta` holds once the
    /// queue's writes are done; empty for a new buffer), so the next plan writes only what
    /// differs ([`crate::step`]'s `upload_changed`).
    pub written: Vec<i32>,
    /// A plan's metadata is built here, then swapped with `written`: no allocation per step.
    pub scratch: Vec<i32>,
}

/// Step buffers of dropped plans, ready for the next ones (a few; larger ones first).
#[derive(Clone, Default)]
pub struct StepPool(Arc<Mutex<Vec<StepBuffers>>>);

impl StepPool {
    /// Most buffer pairs kept.
    const CAP: usize = 16;

    /// Returns a pair to the pool (dropped when the pool is full).
    pub fn put(&self, b: StepBuffers) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < Self::CAP {
            v.push(b);
        }
    }

    /// The smallest pooled pair whose metadata buffer holds `bytes`.
    fn take(&self, bytes: u64) -> Option<StepBuffers> {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let best = v
            .iter()
            .enumerate()
            .filter(|(_, b)| b.meta.size() >= bytes)
            .min_by_key(|(_, b)| b.meta.size())
            .map(|(i, _)| i)?;
        Some(v.swap_remove(best))
    }
}

/// A wgpu pipeline cache persisted in a file ([`Context::with_pipeline_cache_dir`]).
struct DiskCache {
    cache: wgpu::PipelineCache,
    path: std::path::PathBuf,
    loaded: usize,
}

/// File header of a persisted pipeline cache: magic, then the data's length and FNV-1a hash
/// (little endian u64s), then the data as wgpu's `PipelineCache::get_data` gave it.
const CACHE_MAGIC: &[u8; 8] = b"QKVPC\x001\x00";

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The data of a cache file, or why it is not usable.
fn read_cache_file(path: &std::path::Path) -> std::result::Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() < 24 || &bytes[..8] != CACHE_MAGIC {
        return Err("not a quantkv pipeline cache".into());
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let hash = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let data = &bytes[24..];
    if data.len() != len || fnv1a(data) != hash {
        return Err("truncated or corrupt".into());
    }
    Ok(data.to_vec())
}

/// Features quantkv enables when the adapter has them.
fn wanted_features(available: wgpu::Features) -> wgpu::Features {
    let wanted = wgpu::Features::SHADER_F16
        | wgpu::Features::PIPELINE_CACHE
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::MEMORY_DECORATION_COHERENT;
    available & wanted
}

/// Whether a device with `features` on `backend` runs the decode kernel's own split-K combine
/// ([`Caps::split_combine`]).
fn combine_usable(features: wgpu::Features, backend: wgpu::Backend) -> bool {
    backend == wgpu::Backend::Vulkan
        && features.contains(wgpu::Features::MEMORY_DECORATION_COHERENT)
}

/// The backends [`Context::instance`] enables: `from_env` (what `WGPU_BACKEND` gave, or all),
/// less OpenGL unless the variable names it.
fn instance_backends(from_env: wgpu::Backends, var: Option<String>) -> wgpu::Backends {
    let asks_gl = var.is_some_and(|v| {
        v.split(',').any(|b| {
            matches!(
                b.trim().to_ascii_lowercase().as_str(),
                "gl" | "gles" | "opengl"
            )
        })
    });
    if asks_gl {
        from_env
    } else {
        from_env & !wgpu::Backends::GL
    }
}

/// The instance flags [`Context::instance`] uses: `from_env` less the validation of indirect
/// calls, unless the environment asked for it (`asked`).
fn instance_flags(from_env: wgpu::InstanceFlags, asked: bool) -> wgpu::InstanceFlags {
    if asked {
        from_env
    } else {
        from_env - wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL
    }
}

/// `limits` within what wgpu allows where it validates indirect calls (buffer and binding
/// sizes below 4 GiB), so that a context's limits do not depend on that flag of its instance.
fn below_4_gib(mut limits: wgpu::Limits) -> wgpu::Limits {
    let max = u32::MAX as u64;
    limits.max_buffer_size = limits.max_buffer_size.min(max);
    limits.max_uniform_buffer_binding_size = limits.max_uniform_buffer_binding_size.min(max);
    limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(max & !3); // storage binding sizes are multiples of 4 bytes
    limits
}

/// Whether `adapter` offers the cooperative-matrix configuration the prefill kernel uses
/// (16×16×16, f16 A/B, f32 accumulator) with the features that kernel also needs.
fn coop_usable(adapter: &wgpu::Adapter) -> bool {
    let f = adapter.features();
    f.contains(
        wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
            | wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP,
    ) && adapter.cooperative_matrix_properties().iter().any(|p| {
        (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
            && p.ab_type == wgpu::CooperativeScalarType::F16
            && p.cr_type == wgpu::CooperativeScalarType::F32
    })
}

impl Context {
    /// Creates a context on the default high-performance adapter (honouring `WGPU_BACKEND`,
    /// `WGPU_ADAPTER_NAME` and friends), requesting the adapter's real limits.
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// Async form of [`Context::new`].
    pub async fn new_async() -> Result<Self> {
        let instance = Self::instance();
        let adapter = match wgpu::util::initialize_adapter_from_env(instance, None).await {
            Ok(a) => a,
            Err(_) => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    // Real limits: quantkv sizes tiles and pools from them.
                    apply_limit_buckets: false,
                })
                .await
                .map_err(|e| Error::NoAdapter(e.to_string()))?,
        };
        Self::from_adapter(&adapter).await
    }

    /// The one wgpu instance every [`Context::new`] of this process uses. Devices of one instance
    /// can tell each other's buffers apart (a buffer of another context is then rejected with
    /// [`Error::ForeignBuffer`]); resources of separate instances carry ids wgpu cannot tell
    /// apart, so an app that creates its own instance should build its contexts on it
    /// ([`Context::from_adapter`] / [`Context::from_device`]) and never mix instances.
    ///
    /// OpenGL is left out unless `WGPU_BACKEND` names it: wgpu-hal 30's EGL contexts are not
    /// safe when several threads request adapters or build pipelines at once (seen as
    /// `EglContext::make_current: BadAccess` panics inside wgpu when a machine without a
    /// Vulkan driver ran the test suite on llvmpipe's GL), and with GL in the instance every
    /// adapter request initialises EGL even where Vulkan answers.
    ///
    /// wgpu's validation of indirect calls (`InstanceFlags::VALIDATION_INDIRECT_CALL`, on by
    /// default in release builds) is left out unless `WGPU_VALIDATION_INDIRECT_CALL` sets it:
    /// quantkv issues no indirect dispatch or draw, and with the flag every device creation
    /// builds wgpu's validation pipelines (about 40 ms of `Context::new` on an H200, where the
    /// driver's own instance and device take about 130 ms). An app that issues indirect calls
    /// on devices of this instance can set the variable. The limits the flag implies (buffers and
    /// bindings below 4 GiB) are kept: [`Context::from_adapter`] requests them.
    pub fn instance() -> &'static wgpu::Instance {
        static INSTANCE: std::sync::OnceLock<wgpu::Instance> = std::sync::OnceLock::new();
        INSTANCE.get_or_init(|| {
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
            desc.backends = instance_backends(desc.backends, std::env::var("WGPU_BACKEND").ok());
            desc.flags = instance_flags(
                desc.flags,
                std::env::var_os("WGPU_VALIDATION_INDIRECT_CALL").is_some(),
            );
            wgpu::Instance::new(desc)
        })
    }

    /// Creates a device on `adapter` with its real limits and the optional features quantkv uses.
    pub async fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let mut features = wanted_features(adapter.features());
        let coop = coop_usable(adapter);
        let experimental = if coop {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: the experimental feature enabled is cooperative matrices, which quantkv
            // uses only in kernels/frag_coop.wgsl, and only through the configuration the
            // adapter reported (`coop_usable`); its results are checked against the CPU
            // reference by the test suite on such adapters.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let limits = below_4_gib(adapter.limits());
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("quantkv"),
                required_features: features,
                required_limits: limits,
                experimental_features: experimental,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::DeviceRequest(e.to_string()))?;
        Ok(Self::from_adapter_device(adapter, device, queue))
    }

    /// Like [`Context::from_device`], for a device the caller created on `adapter`: the
    /// adapter tells which cooperative-matrix configurations the device may use, so a device
    /// created with `Features::EXPERIMENTAL_COOPERATIVE_MATRIX` (and `SHADER_F16`, `SUBGROUP`)
    /// gets the tensor-core prefill kernel.
    pub fn from_adapter_device(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Self {
        let mut ctx = Self::from_device(device, queue);
        ctx.caps.coop_f16 = coop_usable(adapter)
            && ctx
                .device
                .features()
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        ctx
    }

    /// Wraps a device and queue the caller already owns (a desktop app's renderer, say).
    /// Capabilities are read from what that device enabled.
    ///
    /// quantkv installs the device's lost callback (wgpu keeps one per device), which replaces
    /// one the caller set before; register yours with [`Context::on_device_lost`] instead, and
    /// it is called from quantkv's.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        let features = device.features();
        let caps = Caps {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            coop_f16: false,
            limits: device.limits(),
            multiprocessors: multiprocessors_for(&info.name),
            split_combine: combine_usable(features, info.backend),
        };
        let adapter = AdapterSummary {
            name: info.name.clone(),
            backend: info.backend,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            device_type: info.device_type,
        };
        let lost = Arc::new(LostState::default());
        let state = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            state.lost.store(true, Ordering::Release);
            *state.message.lock().unwrap_or_else(|p| p.into_inner()) =
                format!("{reason:?}: {message}");
            for hook in state.hooks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                hook(reason, &message);
            }
        });
        Self {
            device,
            queue,
            adapter,
            caps,
            pipelines: PipelineCache::default(),
            interned: Mutex::new(Default::default()),
            checked_shaders: false,
            lost,
            disk_cache: None,
            bind_groups: Default::default(),
            step_pool: StepPool::default(),
        }
    }

    /// Persists compiled pipelines across runs in `dir` (created if missing), where the adapter
    /// supports it (`Features::PIPELINE_CACHE`, Vulkan): the file is named after the adapter
    /// (vendor, device) and driver, so another GPU or driver never reads it; a stale, truncated
    /// or corrupt file is ignored with a log line (wgpu also rejects data of another driver
    /// version). [`Context::save_pipeline_cache`] writes it back atomically. Without the
    /// feature this does nothing (see [`Context::pipeline_cache_file`]). Call before the first
    /// kernel runs.
    pub fn with_pipeline_cache_dir(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        if !self
            .device
            .features()
            .contains(wgpu::Features::PIPELINE_CACHE)
        {
            log::info!("quantkv: adapter has no PIPELINE_CACHE; pipelines are not persisted");
            return self;
        }
        let info = self.device.adapter_info();
        let Some(key) = wgpu::util::pipeline_cache_key(&info) else {
            return self;
        };
        let driver: String = format!("{}_{}", info.driver, info.driver_info)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = dir.as_ref().join(format!("quantkv_{key}_{driver}.bin"));
        let data = if path.exists() {
            match read_cache_file(&path) {
                Ok(d) => Some(d),
                Err(why) => {
                    log::warn!("quantkv: ignoring pipeline cache {}: {why}", path.display());
                    None
                }
            }
        } else {
            None
        };
        let loaded = data.as_ref().map_or(0, |d| d.len());
        // SAFETY: the data is what an earlier `get_data` of a cache on this adapter and driver
        // returned (the file name carries both, and the header's hash rejects torn or altered
        // files); wgpu validates its own header too and falls back to an empty cache.
        let cache = unsafe {
            self.device
                .create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("quantkv"),
                    data: data.as_deref(),
                    fallback: true,
                })
        };
        log::info!(
            "quantkv: pipeline cache {} ({loaded} bytes loaded)",
            path.display()
        );
        self.disk_cache = Some(DiskCache {
            cache,
            path,
            loaded,
        });
        self.pipelines = PipelineCache::with_cap(self.pipelines.cap());
        self
    }

    /// The persisted pipeline cache's file and how many bytes were loaded from it, when one
    /// is in use.
    pub fn pipeline_cache_file(&self) -> Option<(&std::path::Path, usize)> {
        self.disk_cache
            .as_ref()
            .map(|d| (d.path.as_path(), d.loaded))
    }

    /// The current size of the persisted pipeline cache's data (what a save would write).
    pub fn pipeline_cache_bytes(&self) -> Option<usize> {
        self.disk_cache
            .as_ref()
            .and_then(|d| d.cache.get_data())
            .map(|d| d.len())
    }

    /// Writes the pipeline cache to its file (a temporary file renamed over it, so readers
    /// never see a torn file). `Ok(false)` when no cache is in use.
    pub fn save_pipeline_cache(&self) -> Result<bool> {
        let Some(d) = &self.disk_cache else {
            return Ok(false);
        };
        let Some(data) = d.cache.get_data() else {
            return Ok(false);
        };
        let io = |e: std::io::Error| Error::InvalidArgument {
            what: "pipeline cache file",
            detail: format!("{}: {e}", d.path.display()),
        };
        if let Some(parent) = d.path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut bytes = Vec::with_capacity(data.len() + 24);
        bytes.extend_from_slice(CACHE_MAGIC);
        bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&fnv1a(&data).to_le_bytes());
        bytes.extend_from_slice(&data);
        let tmp = d.path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &d.path).map_err(io)?;
        Ok(true)
    }

    /// The wgpu pipeline cache pipelines are built with, if any.
    pub(crate) fn wgpu_pipeline_cache(&self) -> Option<&wgpu::PipelineCache> {
        self.disk_cache.as_ref().map(|d| &d.cache)
    }

    /// Adds a hook called when the device is lost (after quantkv marks the context lost). Every
    /// later quantkv call on this context returns [`Error::DeviceLost`]; recovery is a new
    /// `Context`, a new cache, and reloading what the app keeps.
    pub fn on_device_lost(&self, hook: impl Fn(wgpu::DeviceLostReason, &str) + Send + 'static) {
        self.lost
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(hook));
    }

    /// Whether the device is lost. Polls the device once, so a loss wgpu has noticed but not
    /// yet reported (e.g. after `Device::destroy`) is seen.
    pub fn is_lost(&self) -> bool {
        if !self.lost.lost.load(Ordering::Acquire) {
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        self.lost.lost.load(Ordering::Acquire)
    }

    /// `Err(DeviceLost)` once the device is known to be lost (no polling: cheap enough for
    /// every entry point).
    pub(crate) fn alive(&self) -> Result<()> {
        if self.lost.lost.load(Ordering::Acquire) {
            return Err(self.lost_error());
        }
        Ok(())
    }

    fn lost_error(&self) -> Error {
        Error::DeviceLost(
            self.lost
                .message
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Runs `f` (resource creation) under out-of-memory and validation error scopes and turns
    /// what they catch into typed errors: [`Error::OutOfMemory`] (`what`, `bytes`),
    /// [`Error::DeviceLost`], [`Error::ForeignBuffer`] for a resource of another device, and
    /// [`Error::Gpu`] otherwise. The value `f` built is dropped on error.
    pub(crate) fn guarded<T>(
        &self,
        what: &'static str,
        bytes: u64,
        f: impl FnOnce() -> T,
    ) -> Result<T> {
        self.alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        // A resource of another wgpu instance can make wgpu panic instead of reporting a
        // validation error; both mean the same to the caller.
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let verr = pollster::block_on(val.pop());
        let oerr = pollster::block_on(oom.pop());
        let built = match built {
            Ok(b) => b,
            Err(_) => return Err(Error::ForeignBuffer { what }),
        };
        if oerr.is_none() && verr.is_none() {
            return Ok(built);
        }
        drop(built);
        if self.is_lost() {
            return Err(self.lost_error());
        }
        if oerr.is_some() {
            return Err(Error::OutOfMemory { what, bytes });
        }
        let message = verr.map(|e| e.to_string()).unwrap_or_default();
        if message.contains("doesn't match") {
            return Err(Error::ForeignBuffer { what });
        }
        Err(Error::Gpu { what, message })
    }

    /// Step buffers whose metadata part holds `meta_bytes`: from the pool, or new (capacity
    /// rounded up to a power of two, at least 1 KiB, so later steps fit).
    pub(crate) fn take_step_buffers(&self, meta_bytes: u64) -> Result<StepBuffers> {
        let need = meta_bytes.max(16).next_multiple_of(16);
        if let Some(b) = self.step_pool.take(need) {
            return Ok(b);
        }
        let cap = need.next_power_of_two().max(1024);
        let make = |label: &'static str, size: u64, usage: wgpu::BufferUsages| {
            self.guarded(label, size, || {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: usage | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
        };
        Ok(StepBuffers {
            uniform: make("step uniform", 64, wgpu::BufferUsages::UNIFORM)?,
            meta: make("step metadata", cap, wgpu::BufferUsages::STORAGE)?,
            partials: None,
            rotated_q: None,
            arrivals: None,
            written: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The pool plans return their step buffers to.
    pub(crate) fn step_pool(&self) -> StepPool {
        self.step_pool.clone()
    }

    /// A bind group for `layout` (of the pipeline `pipeline_id`) with `entries`, from the
    /// context's bind-group cache when an identical one was made before, else created under
    /// [`Context::guarded`].
    pub(crate) fn bind_group(
        &self,
        what: &'static str,
        pipeline_id: u64,
        layout: &wgpu::BindGroupLayout,
        entries: &[wgpu::BindGroupEntry<'_>],
    ) -> Result<wgpu::BindGroup> {
        let make = || {
            self.guarded(what, 0, || {
                self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(what),
                    layout,
                    entries,
                })
            })
        };
        match super::bind_cache::ranges(entries) {
            Some(ranges) => self.bind_groups.get_or(
                super::bind_cache::BindKey {
                    pipeline: pipeline_id,
                    ranges,
                },
                make,
            ),
            None => make(),
        }
    }

    /// Creates a buffer holding `bytes` (padded to `max(16, len)` rounded up to 16), under
    /// [`Context::guarded`]; never panics (wgpu's `create_buffer_init` does when the device is
    /// lost).
    pub(crate) fn buffer_with(
        &self,
        label: &'static str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let size = (bytes.len() as u64).max(16).next_multiple_of(16);
        let buf = self.guarded(label, size, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: usage | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        self.queue.write_buffer(&buf, 0, bytes);
        // write_buffer copies to a staging area now; a validation error there (a lost device)
        // shows on the next guarded call.
        Ok(buf)
    }

    /// Builds every pipeline of this context with wgpu's shader runtime checks on (bounds
    /// clamps, loop bounding, guarded integer division) instead of off, for debugging or for
    /// users who want the belt and the braces. Off by default: every index the kernels use is
    /// validated on the host before encoding (README, "Why the shaders run unchecked"), and the
    /// checks cost 1.15–1.4× in decode time on NVIDIA. Call before the first kernel runs (it
    /// drops pipelines built so far).
    pub fn with_checked_shaders(mut self, checked: bool) -> Self {
        self.checked_shaders = checked;
        self.pipelines = PipelineCache::with_cap(self.pipelines.cap());
        self
    }

    /// Lets quantkv use subgroup operations where the device has them (the default), or never
    /// (`false`: the portable kernels everywhere, e.g. to work around a driver whose subgroup
    /// operations misbehave, or to test the portable kernels on a device with subgroups). Call
    /// before the first kernel runs (it drops pipelines built so far).
    pub fn with_subgroups(mut self, enabled: bool) -> Self {
        self.caps.subgroups = enabled && self.device.features().contains(wgpu::Features::SUBGROUP);
        self.pipelines = PipelineCache::with_cap(self.pipelines.cap());
        self
    }

    /// Lets the decode kernel combine its split-K segments itself where the device allows it
    /// (the default; [`Caps::split_combine`]), or never (`false`: the separate reduce pass,
    /// as on other backends, e.g. for A/B runs or to work around a driver). Outputs stay
    /// within the same tolerance of the reference either way. Call before the first kernel
    /// runs (it drops pipelines built so far).
    pub fn with_split_combine(mut self, enabled: bool) -> Self {
        self.caps.split_combine =
            enabled && combine_usable(self.device.features(), self.adapter.backend);
        self.pipelines = PipelineCache::with_cap(self.pipelines.cap());
        self
    }

    /// Tells the planner how many multiprocessors (NVIDIA SMs, AMD compute units) the GPU has,
    /// where quantkv's table ([`multiprocessors_for`]) does not know the adapter or knows it
    /// wrong: the decode kernel's split-K fills one wave of two (16 elements per lane) or three
    /// (8) workgroups per multiprocessor with its segments. Outputs stay within the same
    /// tolerance of the reference whatever the count (it changes only how the key axis is
    /// split, so the order of the softmax's sums); at least 1.
    pub fn with_multiprocessors(mut self, count: u32) -> Self {
        self.caps.multiprocessors = Some(count.max(1));
        self
    }

    /// Keeps at most `cap` compiled pipelines, dropping the least recently used past it
    /// (default 256); a dropped
    /// variant is compiled again when next needed. Call before the first kernel runs (it drops
    /// pipelines built so far).
    pub fn with_pipeline_cap(mut self, cap: usize) -> Self {
        self.pipelines = PipelineCache::with_cap(cap);
        self
    }

    /// Whether pipelines are built with wgpu's shader runtime checks
    /// ([`Context::with_checked_shaders`]).
    pub fn checked_shaders(&self) -> bool {
        self.checked_shaders
    }

    /// The adapter's identity.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// The device's capabilities and limits.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.caps.limits
    }

    /// Bind groups the context keeps for reuse (for tests and leak checks). A cached bind group
    /// keeps its buffers alive; a dropped [`crate::KvCache`] evicts the groups that bind its
    /// pools, so its memory is freed with it.
    pub fn cached_bind_groups(&self) -> usize {
        self.bind_groups.len()
    }

    /// Number of compute pipelines built so far, per pipeline label (for tests and diagnostics).
    pub fn built_pipelines(&self) -> Vec<String> {
        self.pipelines.labels()
    }

    /// A read-only GPU buffer holding `bytes`, shared by every caller asking for the same bytes
    /// and usage. Per-layer constants (uniform parameters, sinks, slopes) come from here, so
    /// recording a call never rewrites a buffer that an earlier call in the same submit reads.
    pub(crate) fn intern(
        &self,
        usage: wgpu::BufferUsages,
        bytes: &[u8],
    ) -> Result<Arc<wgpu::Buffer>> {
        let mut maps = self.interned.lock().unwrap_or_else(|p| p.into_inner());
        let map = maps.entry(usage.bits()).or_default();
        if let Some(b) = map.get(bytes) {
            return Ok(b.clone());
        }
        // Bounded: a caller that keeps changing constants should not grow this forever. Buffers
        // still referenced by recorded commands stay alive through wgpu's own refcounting.
        if map.len() >= 4096 {
            map.clear();
        }
        let buf = Arc::new(self.buffer_with("quantkv/interned", bytes, usage)?);
        map.insert(bytes.to_vec(), buf.clone());
        Ok(buf)
    }

    /// Reads a buffer back to the host (it must have `COPY_SRC` usage). Blocks until done.
    pub fn read_buffer(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        self.alive()?;
        if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::InvalidBuffer {
                what: "read_buffer",
                detail: format!("needs COPY_SRC usage, has {:?}", buffer.usage()),
            });
        }
        let size = buffer.size();
        let staging = self.guarded_buffer(
            "readback buffer",
            "quantkv/readback",
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let cmd = self.guarded("readback copy", size, || {
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
            enc.finish()
        })?;
        self.guarded("readback submit", size, || self.queue.submit([cmd]))?;
        self.map_read(&staging)
    }

    /// A buffer of `size` bytes with `usage`, created under [`Context::guarded`] (typed errors:
    /// out of memory, device lost).
    pub(crate) fn guarded_buffer(
        &self,
        what: &'static str,
        label: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        self.guarded(what, size, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        })
    }

    /// Maps a `MAP_READ` buffer (after the submission that fills it) and returns its bytes.
    pub(crate) fn map_read(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        if self.is_lost() {
            return Err(self.lost_error());
        }
        polled.map_err(|e| Error::Readback(e.to_string()))?;
        rx.recv()
            .map_err(|e| Error::Readback(e.to_string()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        let data = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(data)
    }

    /// Creates a storage buffer initialised with `bytes` (usable as K/V input, Q or output),
    /// with `STORAGE | COPY_SRC | COPY_DST` usage, size rounded up to 4 bytes. Typed errors:
    /// [`Error::OutOfMemory`], [`Error::DeviceLost`].
    pub fn try_upload(&self, label: &'static str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let size = (bytes.len() as u64).max(4).next_multiple_of(4);
        let buf = self.try_zeroed(label, size)?;
        let mut padded = bytes.to_vec();
        padded.resize(size as usize, 0);
        self.queue.write_buffer(&buf, 0, &padded);
        Ok(buf)
    }

    /// Creates a zeroed storage buffer of `size` bytes (rounded up to 4; usable as attention
    /// output). Typed errors: [`Error::OutOfMemory`], [`Error::DeviceLost`].
    pub fn try_zeroed(&self, label: &'static str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(4).next_multiple_of(4);
        self.guarded(label, size, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// [`Context::try_upload`] for tests and examples: panics on an error.
    pub fn upload(&self, label: &'static str, bytes: &[u8]) -> wgpu::Buffer {
        self.try_upload(label, bytes)
            .unwrap_or_else(|e| panic!("upload {label}: {e}"))
    }

    /// [`Context::try_zeroed`] for tests and examples: panics on an error.
    pub fn zeroed(&self, label: &'static str, size: u64) -> wgpu::Buffer {
        self.try_zeroed(label, size)
            .unwrap_or_else(|e| panic!("zeroed {label}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::{below_4_gib, combine_usable, instance_backends, instance_flags, wanted_features};
    use wgpu::Backends;

    #[test]
    fn the_split_combine_needs_vulkan_and_coherent_storage() {
        use wgpu::{Backend, Features as F};
        let coherent = F::MEMORY_DECORATION_COHERENT;
        assert!(wanted_features(F::all()).contains(coherent));
        assert!(combine_usable(coherent | F::SUBGROUP, Backend::Vulkan));
        assert!(!combine_usable(F::SUBGROUP, Backend::Vulkan));
        for b in [Backend::Metal, Backend::Dx12, Backend::Gl] {
            assert!(!combine_usable(coherent, b), "{b:?}");
        }
    }

    #[test]
    fn gl_only_when_wgpu_backend_names_it() {
        assert_eq!(
            instance_backends(Backends::all(), None),
            Backends::all() - Backends::GL
        );
        assert_eq!(
            instance_backends(Backends::VULKAN, Some("vulkan".into())),
            Backends::VULKAN
        );
        for v in ["gl", "GL", "vulkan, gl", "gles", "opengl"] {
            assert!(
                instance_backends(Backends::all(), Some(v.into())).contains(Backends::GL),
                "{v}"
            );
        }
    }

    #[test]
    fn indirect_call_validation_is_off_unless_asked_and_limits_stay_below_4_gib() {
        use wgpu::InstanceFlags as F;
        let env = F::VALIDATION_INDIRECT_CALL | F::DEBUG;
        assert_eq!(instance_flags(env, false), F::DEBUG);
        assert_eq!(instance_flags(env, true), env);
        let big = wgpu::Limits {
            max_buffer_size: 1 << 40,
            max_uniform_buffer_binding_size: 1 << 40,
            max_storage_buffer_binding_size: 1 << 40,
            ..wgpu::Limits::default()
        };
        let l = below_4_gib(big);
        assert_eq!(l.max_buffer_size, u32::MAX as u64);
        assert_eq!(l.max_uniform_buffer_binding_size, u32::MAX as u64);
        assert_eq!(l.max_storage_buffer_binding_size, (u32::MAX - 3) as u64);
        let small = wgpu::Limits::downlevel_defaults();
        assert_eq!(below_4_gib(small.clone()), small);
    }
}
