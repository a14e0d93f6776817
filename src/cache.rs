//! The paged KV cache: allocation within the adapter's limits, and the two per-layer operations
//! (`reshape_and_cache`, `unified_attention`) that hand a layer and a step to the kernels.
//!
//! Layout (spec §2.2): each layer's K and V pools are `[num_blocks, block_size, num_kv_heads,
//! packed_head_size]`, row-major; cached row `r = (block * block_size + slot) * num_kv_heads +
//! kv_head` starts at byte `r * row_bytes`. Scale caches, when the mode has them, hold one f32
//! per row at index `r`. The mode is resolved once, when the cache is made.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{footprint, CacheConfig, CacheFootprint};
use crate::error::{invalid, Error, Result};
use crate::gpu::{Context, Tensor};
use crate::kernels::{self, AttentionParams, LaunchPlan, LayerRef, Rec};
use crate::modes::{Resolved, RowCodec};
use crate::step::BatchPlan;

static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

/// One layer's buffers. Read-only from outside: the pools are written only by the cache's own
/// operations.
pub struct LayerKv {
    config: CacheConfig,
    mode: Resolved,
    cache_id: u64,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    k_scale: wgpu::Buffer,
    v_scale: wgpu::Buffer,
    tensor_scales: (f32, f32),
}

impl LayerKv {
    /// The cache configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// K page pool (`array<u32>` words).
    pub fn k(&self) -> &wgpu::Buffer {
        &self.k
    }

    /// V page pool.
    pub fn v(&self) -> &wgpu::Buffer {
        &self.v
    }

    /// K scale cache (a 16-byte dummy when the mode has none).
    pub fn k_scale(&self) -> &wgpu::Buffer {
        &self.k_scale
    }

    /// V scale cache (a 16-byte dummy when the mode has none).
    pub fn v_scale(&self) -> &wgpu::Buffer {
        &self.v_scale
    }

    /// Per-tensor scales (K, V) of per-tensor modes; (1, 1) until set.
    pub fn tensor_scales(&self) -> (f32, f32) {
        self.tensor_scales
    }

    /// The CPU codec parameters of this layer's K (`is_v = false`) or V rows.
    pub fn row_codec(&self, is_v: bool) -> RowCodec {
        self.mode.row_codec(if is_v {
            self.tensor_scales.1
        } else {
            self.tensor_scales.0
        })
    }

    fn kernel_ref(&self) -> LayerRef<'_> {
        LayerRef {
            mode: &self.mode,
            geometry: self.config.geometry(self.mode.backend()),
            k: &self.k,
            v: &self.v,
            k_scale: &self.k_scale,
            v_scale: &self.v_scale,
            tensor_scales: self.tensor_scales,
        }
    }
}

/// Arguments of [`KvCache::unified_attention`].
pub struct Attention<'a> {
    /// The step.
    pub plan: &'a BatchPlan,
    /// The layer's cache (one of this cache's layers).
    pub layer: &'a LayerKv,
    /// `[>= num_tokens_q, num_q_heads, head_size]`, model dtype.
    pub q: Tensor<'a>,
    /// `[>= num_tokens_q, num_q_heads, head_size]`, model dtype; rows past `num_tokens_q` are
    /// left untouched.
    pub out: Tensor<'a>,
    /// Parameters.
    pub params: &'a AttentionParams<'a>,
}

/// A model's KV cache: K and V pools (and scale caches) for every layer.
pub struct KvCache {
    config: CacheConfig,
    mode: Resolved,
    id: u64,
    footprint: CacheFootprint,
    layers: Vec<LayerKv>,
    bind_groups: std::sync::Arc<crate::gpu::bind_cache::BindCache>,
}

impl Drop for KvCache {
    /// Evicts the context's cached bind groups that bind this cache's pools, so their memory
    /// is freed with the cache (once recorded work that uses them has finished).
    fn drop(&mut self) {
        let bufs: Vec<&wgpu::Buffer> = self
            .layers
            .iter()
            .flat_map(|l| [&l.k, &l.v, &l.k_scale, &l.v_scale])
            .collect();
        self.bind_groups.forget(&bufs);
    }
}

impl KvCache {
    /// Allocates the cache, zero-initialised. Rejects a config whose pools exceed the adapter's
    /// storage-binding or buffer-size limit, naming the largest `num_blocks` that fits
    /// ([`Error::BindingTooLarge`]); returns [`Error::OutOfMemory`] when the device cannot hold
    /// it (nothing half-built is kept: every buffer created so far is dropped) and
    /// [`Error::DeviceLost`] on a lost device.
    ///
    /// Sizing from free memory: wgpu does not report free device memory portably, so either
    /// take a budget the app knows (e.g. a fraction of the adapter's memory from the platform)
    /// and divide by [`CacheFootprint::bytes_per_token`], or let [`KvCache::new_largest`] try.
    pub fn new(ctx: &Context, config: &CacheConfig) -> Result<Self> {
        config.validate()?;
        ctx.alive()?;
        let mode = Resolved::new(config.mode, config.options, config.dtype)?;
        let fp = footprint(mode.backend(), config);
        let limits = ctx.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let per_block_pool = fp.pool_bytes / config.num_blocks as u64;
        let per_block_scale = fp.scale_bytes / config.num_blocks as u64;
        for (what, bytes, per_block) in [
            ("KV page pool", fp.pool_bytes, per_block_pool),
            ("scale cache", fp.scale_bytes, per_block_scale),
        ] {
            if bytes > limit {
                return Err(Error::BindingTooLarge {
                    what,
                    bytes,
                    limit,
                    max_num_blocks: (limit / per_block.max(1)).min(u32::MAX as u64) as u32,
                });
            }
        }
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let make =
            |label: &'static str, size: u64| ctx.guarded_buffer(label, label, size.max(16), usage);
        let id = NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed);
        let mut layers = Vec::with_capacity(config.num_layers as usize);
        for _ in 0..config.num_layers {
            // On an error, the layers built so far drop here (their buffers are freed).
            layers.push(LayerKv {
                config: *config,
                mode: mode.clone(),
                cache_id: id,
                k: make("KV page pool (K)", fp.pool_bytes)?,
                v: make("KV page pool (V)", fp.pool_bytes)?,
                k_scale: make("scale cache (K)", fp.scale_bytes)?,
                v_scale: make("scale cache (V)", fp.scale_bytes)?,
                tensor_scales: (1.0, 1.0),
            });
        }
        Ok(Self {
            config: *config,
            mode,
            id,
            footprint: fp,
            layers,
            bind_groups: ctx.bind_groups.clone(),
        })
    }

    /// Allocates the largest cache of `config`'s shape with at most `config.num_blocks` blocks
    /// that the adapter's limits and the device's memory admit (halving on
    /// [`Error::OutOfMemory`] or [`Error::BindingTooLarge`], then searching between the last
    /// failure and success), at least `min_blocks`. The returned cache's `config().num_blocks`
    /// says what fit; other errors are returned as they are.
    pub fn new_largest(ctx: &Context, config: &CacheConfig, min_blocks: u32) -> Result<Self> {
        let min_blocks = min_blocks.max(1);
        let with = |n: u32| CacheConfig {
            num_blocks: n,
            ..*config
        };
        // Whether `n` blocks fit (each trial cache is dropped before the next is tried).
        let fits = |n: u32| -> Result<bool> {
            match KvCache::new(ctx, &with(n)) {
                Ok(_) => Ok(true),
                Err(Error::OutOfMemory { .. }) | Err(Error::BindingTooLarge { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        let mut hi = config.num_blocks.max(min_blocks); // largest size not known to fail
        let mut n = hi;
        let mut lo = loop {
            if fits(n)? {
                break n;
            }
            hi = n - 1;
            if n == min_blocks {
                // Even the minimum does not fit: return its error.
                return KvCache::new(ctx, &with(min_blocks));
            }
            n = (n / 2).max(min_blocks);
        };
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        KvCache::new(ctx, &with(lo))
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The resolved mode (backend, options, codec).
    pub fn mode(&self) -> &Resolved {
        &self.mode
    }

    /// Byte sizes.
    pub fn footprint(&self) -> CacheFootprint {
        self.footprint
    }

    /// Layer `i`'s buffers, or an error naming the layer count.
    pub fn layer(&self, i: usize) -> Result<&LayerKv> {
        self.layers
            .get(i)
            .ok_or_else(|| invalid("layer", format!("{i} >= num_layers {}", self.layers.len())))
    }

    /// All layers.
    pub fn layers(&self) -> &[LayerKv] {
        &self.layers
    }

    /// Sets layer `layer`'s per-tensor scales (per-tensor modes; calibrated offline, e.g. with
    /// [`crate::reference::quant::calibrate_scale`]). Both must be finite and > 0.
    pub fn set_tensor_scales(&mut self, layer: usize, k_scale: f32, v_scale: f32) -> Result<()> {
        for s in [k_scale, v_scale] {
            if !(s.is_finite() && s > 0.0) {
                return Err(invalid(
                    "tensor scale",
                    format!("{s} must be finite and > 0"),
                ));
            }
        }
        let n = self.layers.len();
        let l = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| invalid("layer", format!("{layer} >= num_layers {n}")))?;
        l.tensor_scales = (k_scale, v_scale);
        Ok(())
    }

    /// Writes `key`/`value` rows of `plan`'s tokens into layer `layer` (spec §3), recording into
    /// `enc`: `[num_write_tokens, num_kv_heads, head_size]` each, model dtype.
    pub fn reshape_and_cache(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        plan: &BatchPlan,
        layer: usize,
        key: Tensor<'_>,
        value: Tensor<'_>,
    ) -> Result<()> {
        self.write(ctx, Rec::Enc(enc), plan, layer, &key, &value)
    }

    /// [`KvCache::reshape_and_cache`] recorded into a compute pass the caller holds (one pass
    /// for a whole step's calls costs wgpu less at finish and submit than a pass per call;
    /// wgpu orders the dispatches inside it). A rejected call records nothing.
    pub fn reshape_and_cache_in(
        &self,
        ctx: &Context,
        pass: &mut wgpu::ComputePass<'_>,
        plan: &BatchPlan,
        layer: usize,
        key: Tensor<'_>,
        value: Tensor<'_>,
    ) -> Result<()> {
        self.write(ctx, Rec::Pass(pass), plan, layer, &key, &value)
    }

    fn write(
        &self,
        ctx: &Context,
        rec: Rec<'_, '_>,
        plan: &BatchPlan,
        layer: usize,
        key: &Tensor<'_>,
        value: &Tensor<'_>,
    ) -> Result<()> {
        let layer = self.layer(layer)?;
        kernels::write::encode(ctx, rec, &layer.kernel_ref(), &plan.gpu, key, value)
    }

    /// [`KvCache::unified_attention`] recorded into a compute pass the caller holds (see
    /// [`KvCache::reshape_and_cache_in`]).
    pub fn unified_attention_in(
        &self,
        ctx: &Context,
        pass: &mut wgpu::ComputePass<'_>,
        a: &Attention<'_>,
    ) -> Result<()> {
        self.attend(ctx, Rec::Pass(pass), a, None).map(|_| ())
    }

    fn attend(
        &self,
        ctx: &Context,
        rec: Rec<'_, '_>,
        a: &Attention<'_>,
        write: Option<(&Tensor<'_>, &Tensor<'_>)>,
    ) -> Result<bool> {
        self.check_own(a.layer)?;
        kernels::attention::encode(
            ctx,
            rec,
            &a.layer.kernel_ref(),
            &a.plan.gpu,
            (&a.q, &a.out),
            a.params,
            write,
        )
    }

    /// [`KvCache::reshape_and_cache`] of `key` / `value` into `a.layer`, then
    /// [`KvCache::unified_attention`] of `a`, recorded into `enc` as one call: the same
    /// result, in one dispatch fewer where the decode kernel can write the rows itself.
    ///
    /// It does so (and returns `true`) for a cache that stores rows as given (mode `none`), a
    /// decode step whose `slot_mapping` holds, for each sequence's one query token, the slot
    /// of that sequence's newest key (position `seqused_k - 1` through its block table; padding
    /// slots allowed), a batch the planner sends to the decode kernel that reads at most
    /// 128 MiB of K/V (sequences × longest context: B=1 L=32k at 8 KV heads of 128 f16; above
    /// that the fused kernel's read_write pools read slower than the two dispatches cost, see
    /// BENCHMARKS.md), and `key` / `value` views that share no buffer with `out` or the
    /// segment buffer. Anything else records the write kernel and then the attention
    /// (`false`). Either way every input is validated as
    /// the two calls validate it, before anything is recorded.
    ///
    /// As with the two calls, no other sequence of the step may read a slot the step writes
    /// (a block manager that copies shared blocks before writing them, such as
    /// [`crate::BlockManager`], keeps this); in one dispatch such a read would race the write.
    pub fn write_and_attend(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        key: Tensor<'_>,
        value: Tensor<'_>,
        a: &Attention<'_>,
    ) -> Result<bool> {
        self.attend(ctx, Rec::Enc(enc), a, Some((&key, &value)))
    }

    /// [`KvCache::write_and_attend`] recorded into a compute pass the caller holds (see
    /// [`KvCache::reshape_and_cache_in`]).
    pub fn write_and_attend_in(
        &self,
        ctx: &Context,
        pass: &mut wgpu::ComputePass<'_>,
        key: Tensor<'_>,
        value: Tensor<'_>,
        a: &Attention<'_>,
    ) -> Result<bool> {
        self.attend(ctx, Rec::Pass(pass), a, Some((&key, &value)))
    }

    /// Paged attention over `a.layer` (one of this cache's layers) for `a.plan`'s batch (spec
    /// §5, §6), recording into `enc`.
    pub fn unified_attention(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        a: &Attention<'_>,
    ) -> Result<()> {
        self.attend(ctx, Rec::Enc(enc), a, None).map(|_| ())
    }

    /// How a call with `params` over `plan` will be launched on `ctx`'s device (the planning
    /// `unified_attention` does; for benchmarks and callers who want to see it).
    pub fn launch_plan(
        &self,
        ctx: &Context,
        plan: &BatchPlan,
        params: &AttentionParams<'_>,
    ) -> Result<LaunchPlan> {
        let g = self.config.geometry(self.mode.backend());
        let mut lp =
            kernels::launch_plan(ctx.caps(), &g, &plan.gpu.summary, params, plan.gpu.has_mm)?;
        lp.decode_apart =
            kernels::attention::decode_apart(ctx, &g, &plan.gpu, params, &lp)?.is_some();
        Ok(lp)
    }

    /// Compiles, ahead of the first step, the pipelines this cache will need for attention
    /// calls with each of `params` (their features, split choice and path): the write kernel,
    /// and for decode batches (short and long contexts, small and large batches: each decode
    /// rung the planner may pick, with and without split-K; for mode `none` also the variants
    /// that write the step's rows, [`KvCache::write_and_attend`]) and prefill batches the
    /// attention kernels and the split-K reduce. Work runs on background threads (one per core); calls
    /// `progress(done, total)` after each variant. Variants that depend on the step (qq_bias,
    /// prefix ranges) are compiled on first use. Returns the number of variants visited.
    pub fn warm_up(
        &self,
        ctx: &Context,
        params: &[AttentionParams<'_>],
        progress: impl Fn(usize, usize) + Sync,
    ) -> Result<usize> {
        let layer = self.layer(0)?.kernel_ref();
        let g = self.config.geometry(self.mode.backend());
        let shapes = [
            // (num_seqs, query tokens, longest query, longest context)
            (1u32, 1u32, 1u32, 64u32),
            (1, 1, 1, 32768),
            (64, 64, 1, 4096),
            (1, 512, 512, 512),
        ];
        let mut jobs: Vec<(LaunchPlan, crate::gpu::Features)> = Vec::new();
        // Each decode shape also unsplit: the decode part of a mixed batch runs so.
        let unsplit: Vec<AttentionParams<'_>> = params
            .iter()
            .map(|p| AttentionParams {
                split: kernels::SplitK::Off,
                ..*p
            })
            .collect();
        let runs = params
            .iter()
            .flat_map(|p| shapes.iter().map(move |s| (p, *s)));
        let unsplit_runs = unsplit
            .iter()
            .flat_map(|p| shapes.iter().filter(|s| s.2 == 1).map(move |s| (p, *s)));
        for (p, (num_seqs, num_tokens_q, max_q, max_k)) in runs.chain(unsplit_runs) {
            {
                let sum = kernels::StepSummary {
                    num_seqs,
                    num_tokens_q,
                    num_write: num_tokens_q,
                    max_seqlen_q: max_q,
                    max_seqlen_k: max_k,
                };
                let lp = kernels::launch_plan(ctx.caps(), &g, &sum, p, false)?;
                let f = p.features(false, false);
                let same = |(a, fa): &(LaunchPlan, crate::gpu::Features)| {
                    a.kernel == lp.kernel
                        && a.subgroups == lp.subgroups
                        && a.stream == lp.stream
                        && (a.segments > 1) == (lp.segments > 1)
                        && a.tiling == lp.tiling
                        && *fa == f
                };
                if !jobs.iter().any(same) {
                    jobs.push((lp, f));
                }
            }
        }
        // Mode `none`: the decode kernels that also write the step's rows
        // (`write_and_attend`).
        if kernels::attention::fused_write_exists(ctx, &layer) {
            let fused: Vec<_> = jobs
                .iter()
                .filter(|(lp, _)| lp.kernel == crate::gpu::Kernel::Decode)
                .map(|&(lp, f)| {
                    (
                        lp,
                        crate::gpu::Features(f.0 | crate::gpu::Features::FUSED_WRITE),
                    )
                })
                .collect();
            jobs.extend(fused);
        }
        let total = jobs.len() + 1;
        let done = std::sync::atomic::AtomicUsize::new(0);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first_error = std::sync::Mutex::new(None);
        let tick = || progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .min(total);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let r = if i == 0 {
                        kernels::write::pipeline(ctx, &layer).map(|_| ())
                    } else if let Some((lp, f)) = jobs.get(i - 1) {
                        kernels::attention::pipelines(ctx, &layer, lp, *f).map(|_| ())
                    } else {
                        break;
                    };
                    if let Err(e) = r {
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    }
                    tick();
                });
            }
        });
        match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Bytes one block occupies in one K (or V) page pool and in one K (or V) scale cache.
    pub(crate) fn block_bytes(&self) -> (u64, u64) {
        let n = self.config.num_blocks as u64;
        (
            self.footprint.pool_bytes / n,
            self.footprint.scale_bytes / n,
        )
    }

    /// Layer `l`'s four per-block arrays in a fixed order (K pool, V pool, K scales, V scales),
    /// each with the bytes one block takes in it (0 for absent scale caches). Block copies and
    /// snapshots move blocks through this one list.
    pub(crate) fn block_parts<'a>(&self, l: &'a LayerKv) -> [(&'a wgpu::Buffer, u64); 4] {
        let (pb, sb) = self.block_bytes();
        [(&l.k, pb), (&l.v, pb), (&l.k_scale, sb), (&l.v_scale, sb)]
    }

    /// Records, into `enc`, copies of whole blocks (codes and scales of every layer's K and V;
    /// the copy-on-write of [`crate::BlockManager::schedule`]). Record them before the step's
    /// writes. Copies behave as if made at once: every source is read before any destination
    /// is written. Each destination must be distinct and no block may be its own source.
    pub fn copy_blocks(
        &self,
        ctx: &Context,
        enc: &mut wgpu::CommandEncoder,
        copies: &[crate::BlockCopy],
    ) -> Result<()> {
        ctx.alive()?;
        if copies.is_empty() {
            return Ok(());
        }
        let n = self.config.num_blocks;
        for (i, c) in copies.iter().enumerate() {
            if c.src >= n || c.dst >= n {
                return Err(invalid(
                    "block copy",
                    format!("copy {i}: {} -> {} outside [0, {n})", c.src, c.dst),
                ));
            }
            if c.src == c.dst || copies[..i].iter().any(|o| o.dst == c.dst) {
                return Err(invalid(
                    "block copy",
                    format!("copy {i}: block {} written twice or onto itself", c.dst),
                ));
            }
        }
        let (pb, sb) = self.block_bytes();
        // wgpu forbids a copy within one buffer: blocks go through a scratch buffer
        // ([K, V, K scales, V scales] per copy), reused layer after layer (wgpu orders the
        // transfers of one encoder).
        let per = 2 * (pb + sb);
        let size = per * copies.len() as u64;
        let max = ctx.limits().max_buffer_size;
        if size > max {
            return Err(invalid(
                "block copy",
                format!(
                    "{} copies need {size} bytes of scratch, over the adapter's {max}",
                    copies.len()
                ),
            ));
        }
        let scratch = ctx.guarded_buffer(
            "block copy scratch",
            "quantkv/block-copy",
            size,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        )?;
        for l in &self.layers {
            // Each part at its offset in a copy's scratch slot.
            let mut at = 0;
            let parts = self.block_parts(l).map(|(buf, bytes)| {
                at += bytes;
                (buf, bytes, at - bytes)
            });
            for (i, c) in copies.iter().enumerate() {
                for &(buf, bytes, at) in &parts {
                    if bytes > 0 {
                        enc.copy_buffer_to_buffer(
                            buf,
                            c.src as u64 * bytes,
                            &scratch,
                            i as u64 * per + at,
                            bytes,
                        );
                    }
                }
            }
            for (i, c) in copies.iter().enumerate() {
                for &(buf, bytes, at) in &parts {
                    if bytes > 0 {
                        enc.copy_buffer_to_buffer(
                            &scratch,
                            i as u64 * per + at,
                            buf,
                            c.dst as u64 * bytes,
                            bytes,
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn check_own(&self, layer: &LayerKv) -> Result<()> {
        if layer.cache_id != self.id {
            return Err(invalid("layer", "belongs to another KvCache"));
        }
        Ok(())
    }
}
