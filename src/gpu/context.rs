//! `Context`: the wgpu device and queue quantkv works on, its capabilities, and the lazily
//! filled caches (pipelines, interned constant buffers) that live as long as it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::pipeline::PipelineCache;
use crate::error::{Error, Result};

/// Interned constant buffers: one map per usage, keyed by contents, so a hit (the common case,
/// once per layer call) looks up a borrowed slice without allocating.
type InternMap = HashMap<u32, HashMap<Vec<u8>, Arc<wgpu::Buffer>>>;

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
    /// The device's limits (as requested: the adapter's real limits, not wgpu's defaults).
    pub limits: wgpu::Limits,
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
}

/// Features quantkv enables when the adapter has them.
fn wanted_features(available: wgpu::Features) -> wgpu::Features {
    let wanted = wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
    available & wanted
}

impl Context {
    /// Creates a context on the default high-performance adapter (honouring `WGPU_BACKEND`,
    /// `WGPU_ADAPTER_NAME` and friends), requesting the adapter's real limits.
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// Async form of [`Context::new`].
    pub async fn new_async() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = match wgpu::util::initialize_adapter_from_env(&instance, None).await {
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

    /// Creates a device on `adapter` with its real limits and the optional features quantkv uses.
    pub async fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let features = wanted_features(adapter.features());
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("quantkv"),
                required_features: features,
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::DeviceRequest(e.to_string()))?;
        Ok(Self::from_device(device, queue))
    }

    /// Wraps a device and queue the caller already owns (a desktop app's renderer, say).
    /// Capabilities are read from what that device enabled.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        let features = device.features();
        let caps = Caps {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            limits: device.limits(),
        };
        let adapter = AdapterSummary {
            name: info.name.clone(),
            backend: info.backend,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            device_type: info.device_type,
        };
        Self {
            device,
            queue,
            adapter,
            caps,
            pipelines: PipelineCache::default(),
            interned: Mutex::new(HashMap::new()),
            checked_shaders: false,
        }
    }

    /// Builds every pipeline of this context with wgpu's shader runtime checks on (bounds
    /// clamps, loop bounding, guarded integer division) instead of off, for debugging or for
    /// users who want the belt and the braces. Off by default: every index the kernels use is
    /// validated on the host before encoding (README, "Why the shaders run unchecked"), and the
    /// checks cost 1.15–1.4× in decode time on NVIDIA. Call before the first kernel runs (it
    /// drops pipelines built so far).
    pub fn with_checked_shaders(mut self, checked: bool) -> Self {
        self.checked_shaders = checked;
        self.pipelines = PipelineCache::default();
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

    /// Number of compute pipelines built so far, per pipeline label (for tests and diagnostics).
    pub fn built_pipelines(&self) -> Vec<String> {
        self.pipelines.labels()
    }

    /// A read-only GPU buffer holding `bytes`, shared by every caller asking for the same bytes
    /// and usage. Per-layer constants (uniform parameters, sinks, slopes) come from here, so
    /// recording a call never rewrites a buffer that an earlier call in the same submit reads.
    pub(crate) fn intern(&self, usage: wgpu::BufferUsages, bytes: &[u8]) -> Arc<wgpu::Buffer> {
        let mut maps = self.interned.lock().unwrap_or_else(|p| p.into_inner());
        let map = maps.entry(usage.bits()).or_default();
        if let Some(b) = map.get(bytes) {
            return b.clone();
        }
        // Bounded: a caller that keeps changing constants should not grow this forever. Buffers
        // still referenced by recorded commands stay alive through wgpu's own refcounting.
        if map.len() >= 4096 {
            map.clear();
        }
        let mut contents = bytes.to_vec();
        contents.resize(contents.len().max(16).next_multiple_of(16), 0);
        let buf = Arc::new(
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("quantkv/interned"),
                    contents: &contents,
                    usage,
                }),
        );
        map.insert(bytes.to_vec(), buf.clone());
        buf
    }

    /// Reads a buffer back to the host (it must have `COPY_SRC` usage). Blocks until done.
    pub fn read_buffer(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        let size = buffer.size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("quantkv/readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
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

    /// Creates a storage buffer initialised with `bytes` (usable as K/V input, Q or output).
    pub fn upload(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let mut contents = bytes.to_vec();
        contents.resize(contents.len().max(4).next_multiple_of(4), 0);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Creates a zeroed storage buffer of `size` bytes (usable as attention output).
    pub fn zeroed(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }
}
