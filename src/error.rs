//! The library's one error type.

use crate::types::KvQuantMode;

/// Every error quantkv returns. Input problems are caught on the host, before anything is encoded.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No wgpu adapter could be found (no GPU driver and no software Vulkan driver such as lavapipe).
    #[error("no wgpu adapter found: {0}. Install a Vulkan driver (Debian: apt-get install mesa-vulkan-drivers for lavapipe); OpenGL adapters are used only when WGPU_BACKEND names gl")]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("device request failed: {0}")]
    DeviceRequest(String),
    /// The mode exists in the spec but is not built yet in this version.
    #[error("KV quant mode {mode:?} is not supported yet")]
    Unsupported {
        /// The requested mode.
        mode: KvQuantMode,
    },
    /// The head size is not one this mode supports.
    #[error("head size {got} is not supported by mode {mode:?}: it must be a multiple of {multiple_of} in {min}..={max}")]
    UnsupportedHeadDim {
        /// Mode asked for.
        mode: KvQuantMode,
        /// Given head size.
        got: u32,
        /// Required divisor.
        multiple_of: u32,
        /// Smallest supported head size.
        min: u32,
        /// Largest supported head size on this adapter.
        max: u32,
    },
    /// An adapter feature the request needs is missing.
    #[error("adapter lacks feature {0}")]
    MissingFeature(&'static str),
    /// A tensor or slice does not have the shape the configuration implies.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A value is outside its valid range.
    #[error("invalid {what}: {detail}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Why it is invalid.
        detail: String,
    },
    /// A GPU buffer is too small or lacks a usage the call needs.
    #[error("buffer {what}: {detail}")]
    InvalidBuffer {
        /// Which buffer.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A requested buffer or binding exceeds the adapter's limits.
    #[error("{what} needs {bytes} bytes, over the adapter limit of {limit} bytes; the largest num_blocks that fits is {max_num_blocks}")]
    BindingTooLarge {
        /// Which allocation.
        what: &'static str,
        /// Bytes needed.
        bytes: u64,
        /// Adapter limit.
        limit: u64,
        /// Largest num_blocks that fits this config.
        max_num_blocks: u32,
    },
    /// wgpu rejected a shader or pipeline.
    #[error("shader/pipeline {label} failed to compile: {message}")]
    ShaderCompile {
        /// Pipeline label.
        label: String,
        /// wgpu's message.
        message: String,
    },
    /// Reading a buffer back from the GPU failed.
    #[error("GPU readback failed: {0}")]
    Readback(String),
    /// The device could not allocate a resource. Nothing half-built is kept.
    #[error("out of device memory creating {what} ({bytes} bytes)")]
    OutOfMemory {
        /// What was being created.
        what: &'static str,
        /// Bytes asked for.
        bytes: u64,
    },
    /// The device is lost (GPU reset, driver crash, `Device::destroy`). Recover by creating a
    /// new `Context` and cache (and reloading what the app keeps on the host).
    #[error("the GPU device is lost: {0}")]
    DeviceLost(String),
    /// A buffer handed to quantkv belongs to another device than the context's.
    #[error("buffer {what} belongs to another device than this context's")]
    ForeignBuffer {
        /// Which argument.
        what: &'static str,
    },
    /// Two arguments that must be distinct buffers are the same buffer.
    #[error("buffers {a} and {b} must not be the same buffer")]
    Aliased {
        /// One argument.
        a: &'static str,
        /// The other.
        b: &'static str,
    },
    /// The block pool cannot hold what a step or a snapshot needs. Nothing was changed.
    #[error("out of cache blocks: {needed} needed, {free} free")]
    OutOfBlocks {
        /// Blocks the operation needs.
        needed: usize,
        /// Blocks free (including evictable cached prefix blocks).
        free: usize,
    },
    /// A KV snapshot was written for another cache format. Nothing was changed.
    #[error(
        "snapshot does not fit this cache: {field} is {file} in the file, {cache} in the cache"
    )]
    SnapshotMismatch {
        /// The format field that differs.
        field: &'static str,
        /// Its value in the file.
        file: String,
        /// Its value in the cache.
        cache: String,
    },
    /// A KV snapshot file is truncated, corrupt or not a snapshot. Nothing was changed.
    #[error("corrupt snapshot ({section}): {detail}")]
    SnapshotCorrupt {
        /// The section where the problem was found.
        section: String,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// wgpu rejected an operation quantkv issued (a bug, or a misuse not caught on the host).
    #[error("wgpu rejected {what}: {message}")]
    Gpu {
        /// What was being done.
        what: &'static str,
        /// wgpu's message.
        message: String,
    },
}

/// Result alias with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn shape(what: &'static str, expected: impl ToString, got: impl ToString) -> Error {
    Error::ShapeMismatch {
        what,
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

pub(crate) fn invalid(what: &'static str, detail: impl ToString) -> Error {
    Error::InvalidArgument {
        what,
        detail: detail.to_string(),
    }
}
