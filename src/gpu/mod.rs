//! Device plumbing, below everything that knows about caches or modes: the [`Context`]
//! (device, queue, capabilities, limits), the pipeline key and cache, WGSL composition, binding
//! helpers, tensor views, the uniform layouts shared with WGSL, and GPU timing.
//!
//! Dependencies: `types` and `error` only.

pub mod bind;
pub mod bind_cache;
pub mod compose;
pub mod context;
pub mod pipeline;
pub mod tensor;
pub mod timing;
pub mod uniforms;

pub use context::{multiprocessors_for, AdapterSummary, Caps, Context};
pub use pipeline::{Compiled, Features, Kernel, PipelineKey, PipelineSource, Tiling};
pub use tensor::Tensor;
pub use timing::GpuTimer;
