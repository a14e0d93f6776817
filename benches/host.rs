//! Host-side cost (criterion): validating + uploading one model step's metadata
//! (`BatchPlan::new`), recording one layer's `unified_attention` call into an encoder (no
//! submit), and one whole decode step of a 32-layer model (plan, then per layer a
//! `reshape_and_cache` and a `unified_attention`, then finish and submit; also in one compute
//! pass, and as one `write_and_attend` per layer), at B=1 L=1k and
//! B=16 L=32k (Hq 32, Hkv 8, D 128, f16 cache, block 16). The whole step is also timed on wgpu's
//! no-op backend (`*_noop`: quantkv's and wgpu-core's share, no driver), which tells the two
//! apart from the driver's share on a real adapter.
//!
//!   cargo bench --bench host

use criterion::{criterion_group, criterion_main, Criterion};
use quantkv::*;

struct Setup<'a> {
    ctx: &'a Context,
    cfg: CacheConfig,
    cache: KvCache,
    cu: Vec<i32>,
    used: Vec<i32>,
    table: Vec<i32>,
    stride: usize,
    q: wgpu::Buffer,
    out: wgpu::Buffer,
    b: u32,
}

fn setup(ctx: &Context, b: u32, l: u32, layers: u32) -> Option<Setup<'_>> {
    let stride = l.div_ceil(16) as usize;
    // The pool's size does not change host cost; keep it within small adapters' binding limit
    // (block-table entries may repeat).
    let num_blocks = (b * stride as u32 + 1).min(1024);
    let cfg = CacheConfig {
        num_layers: layers,
        num_blocks,
        num_kv_heads: 8,
        head_size: 128,
        ..Default::default()
    };
    let cache = KvCache::new(ctx, &cfg).ok()?;
    let table: Vec<i32> = (0..b as usize * stride)
        .map(|i| (i % num_blocks as usize) as i32)
        .collect();
    let q = ctx.zeroed("q", b as u64 * 32 * 128 * 2);
    let out = ctx.zeroed("out", b as u64 * 32 * 128 * 2);
    Some(Setup {
        ctx,
        cfg,
        cache,
        cu: (0..=b as i32).collect(),
        used: vec![l as i32; b as usize],
        table,
        stride,
        q,
        out,
        b,
    })
}

fn bench(c: &mut Criterion) {
    let Ok(ctx) = Context::new() else {
        eprintln!("no adapter: host benchmarks skipped");
        return;
    };
    for (b, l) in [(1u32, 1024u32), (16, 32768)] {
        let Some(s) = setup(&ctx, b, l, 32) else {
            eprintln!("setup failed: host benchmarks skipped");
            return;
        };
        let step = StepInput {
            cu_seqlens_q: &s.cu,
            seqused_k: &s.used,
            block_table: &s.table,
            block_table_stride: s.stride,
            ..Default::default()
        };
        c.bench_function(&format!("batch_plan_b{b}_l{l}"), |bench| {
            bench.iter(|| BatchPlan::new(s.ctx, &s.cfg, &step).unwrap())
        });
        // A decode step's plan as a serving loop makes it: every length grows by one, every
        // sequence's new token has a new slot, one sequence takes a new block, and the step
        // is submitted (wgpu's queued writes flushed); the device is polled outside the
        // timed part every 64 steps.
        c.bench_function(&format!("batch_plan_decode_step_b{b}_l{l}"), |bench| {
            let mut used = s.used.clone();
            let mut table = s.table.clone();
            let total_slots = s.cfg.num_blocks as usize * 16;
            let mut i = 0usize;
            bench.iter_custom(|iters| {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iters {
                    i += 1;
                    for u in used.iter_mut() {
                        *u = l as i32 - 64 + (i % 64) as i32;
                    }
                    let slots: Vec<i32> = (0..b as usize)
                        .map(|k| ((i * b as usize + k) % total_slots) as i32)
                        .collect();
                    let seq = i % b as usize;
                    table[seq * s.stride + i % s.stride] =
                        ((i * 31) % s.cfg.num_blocks as usize) as i32;
                    let step = StepInput {
                        slot_mapping: &slots,
                        seqused_k: &used,
                        block_table: &table,
                        ..step
                    };
                    let t = std::time::Instant::now();
                    let plan = BatchPlan::new(s.ctx, &s.cfg, &step).unwrap();
                    s.ctx.queue.submit([]);
                    spent += t.elapsed();
                    drop(plan);
                    if i.is_multiple_of(64) {
                        let _ = s.ctx.device.poll(wgpu::PollType::wait_indefinitely());
                    }
                }
                spent
            })
        });
        let plan = BatchPlan::new(s.ctx, &s.cfg, &step).unwrap();
        let params = AttentionParams {
            num_q_heads: 32,
            softmax_scale: 0.088,
            ..Default::default()
        };
        let shape = [s.b, 32, 128];
        // Recording only, 64 calls per encoder (one step's worth of layers): an encoder that
        // keeps growing over millions of calls would time its own reallocation.
        c.bench_function(&format!("encode_attention_b{b}_l{l}"), |bench| {
            bench.iter_custom(|iters| {
                let mut spent = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(64);
                    left -= n;
                    let mut enc = s.ctx.device.create_command_encoder(&Default::default());
                    let t = std::time::Instant::now();
                    for _ in 0..n {
                        s.cache
                            .unified_attention(
                                s.ctx,
                                &mut enc,
                                &Attention {
                                    plan: &plan,
                                    layer: s.cache.layer(0).unwrap(),
                                    q: Tensor::new(&s.q, Dtype::F16, shape),
                                    out: Tensor::new(&s.out, Dtype::F16, shape),
                                    params: &params,
                                },
                            )
                            .unwrap();
                    }
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
}

/// A context on wgpu's no-op backend: an adapter with a 32-wide subgroup, f16 and timestamps,
/// whose commands go nowhere, so a step's host cost is quantkv's and wgpu-core's alone.
fn noop_context() -> Option<Context> {
    let features =
        wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
    let options = wgpu::BackendOptions {
        noop: wgpu::NoopBackendOptions {
            enable: true,
            limits: None,
            features: Some(features),
            device_type: Some(wgpu::DeviceType::DiscreteGpu),
            subgroup_min_size: Some(32),
            subgroup_max_size: Some(32),
        },
        ..Default::default()
    };
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::NOOP,
        backend_options: options,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).ok()?;
    let mut limits = adapter.limits();
    // The no-op adapter reports unbounded limits; a binding is at most 2 GiB - 4 in wgpu.
    limits.max_storage_buffer_binding_size = (1 << 31) - 4;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: features,
        required_limits: limits,
        ..Default::default()
    }))
    .ok()?;
    Some(Context::from_device(device, queue))
}

/// One whole decode step of a 32-layer model at context 1k (B = 1 and 16): the host work of a
/// step (plan, 64 calls, finish, submit), timed without the GPU's share (drained outside the
/// timed part every 4 steps; on lavapipe the "GPU" is the same CPU, so measure this on a real
/// GPU's host, or on the no-op backend).
fn full_step(c: &mut Criterion) {
    match Context::new() {
        Ok(ctx) => full_step_on(c, &ctx, ""),
        Err(_) => eprintln!("no adapter: host benchmarks on a device skipped"),
    }
    match noop_context() {
        Some(ctx) => full_step_on(c, &ctx, "_noop"),
        None => eprintln!("no no-op adapter: its host benchmark skipped"),
    }
}

fn full_step_on(c: &mut Criterion, ctx: &Context, suffix: &str) {
    for b in [1u32, 16] {
        let l = 1024u32;
        let Some(s) = setup(ctx, b, l, 32) else {
            eprintln!("setup failed: host benchmarks skipped");
            return;
        };
        let step = StepInput {
            cu_seqlens_q: &s.cu,
            seqused_k: &s.used,
            block_table: &s.table,
            block_table_stride: s.stride,
            ..Default::default()
        };
        let params = AttentionParams {
            num_q_heads: 32,
            softmax_scale: 0.088,
            ..Default::default()
        };
        let shape = [s.b, 32, 128];
        // One whole step: new plan (the step's slot mapping: each sequence's newest key), 32 x
        // (write + attention), finish, submit. The GPU work is drained outside the timed part
        // every few steps.
        let slots: Vec<i32> = (0..b as usize)
            .map(|i| s.table[i * s.stride + (l as usize - 1) / 16] * 16 + (l as i32 - 1) % 16)
            .collect();
        let kv = s.ctx.zeroed("kv", b as u64 * 8 * 128 * 2);
        let step = StepInput {
            slot_mapping: &slots,
            ..step
        };
        // (one pass for the step, write_and_attend instead of the two calls, split-K off: one
        // dispatch per layer)
        let params_off = AttentionParams {
            split: SplitK::Off,
            ..params
        };
        for (one_pass, fused, off) in [
            (false, false, false),
            (true, false, false),
            (true, true, false),
            (true, true, true),
        ] {
            let name = match (one_pass, fused, off) {
                (_, _, true) => format!("full_step_32_layers_fused_nosplit_b{b}_l{l}{suffix}"),
                (_, true, _) => format!("full_step_32_layers_fused_b{b}_l{l}{suffix}"),
                (true, ..) => format!("full_step_32_layers_one_pass_b{b}_l{l}{suffix}"),
                _ => format!("full_step_32_layers_b{b}_l{l}{suffix}"),
            };
            let params = if off { &params_off } else { &params };
            c.bench_function(&name, |bench| {
                bench.iter_custom(|iters| {
                    let mut host = std::time::Duration::ZERO;
                    for i in 0..iters {
                        let t = std::time::Instant::now();
                        let plan = BatchPlan::new(s.ctx, &s.cfg, &step).unwrap();
                        let mut enc = s.ctx.device.create_command_encoder(&Default::default());
                        let kvt = Tensor::new(&kv, Dtype::F16, [s.b, 8, 128]);
                        let attn = |layer: usize| Attention {
                            plan: &plan,
                            layer: s.cache.layer(layer).unwrap(),
                            q: Tensor::new(&s.q, Dtype::F16, shape),
                            out: Tensor::new(&s.out, Dtype::F16, shape),
                            params,
                        };
                        if fused {
                            let mut pass = enc.begin_compute_pass(&Default::default());
                            for layer in 0..32 {
                                let fused = s
                                    .cache
                                    .write_and_attend_in(s.ctx, &mut pass, kvt, kvt, &attn(layer))
                                    .unwrap();
                                assert!(fused, "{name}: the write did not fuse");
                            }
                        } else if one_pass {
                            let mut pass = enc.begin_compute_pass(&Default::default());
                            for layer in 0..32 {
                                let c = &s.cache;
                                c.reshape_and_cache_in(s.ctx, &mut pass, &plan, layer, kvt, kvt)
                                    .unwrap();
                                c.unified_attention_in(s.ctx, &mut pass, &attn(layer))
                                    .unwrap();
                            }
                        } else {
                            for layer in 0..32 {
                                let c = &s.cache;
                                c.reshape_and_cache(s.ctx, &mut enc, &plan, layer, kvt, kvt)
                                    .unwrap();
                                c.unified_attention(s.ctx, &mut enc, &attn(layer)).unwrap();
                            }
                        }
                        s.ctx.queue.submit([enc.finish()]);
                        drop(plan);
                        host += t.elapsed();
                        // The GPU's share is drained outside the timed part.
                        if i % 4 == 3 {
                            let _ = s.ctx.device.poll(wgpu::PollType::wait_indefinitely());
                        }
                    }
                    host
                })
            });
            let _ = s.ctx.device.poll(wgpu::PollType::wait_indefinitely());
        }
    }
}

/// wgpu's own floor for a step's recording: 96 dispatches of a trivial pipeline (32 "layers" x 3,
/// each layer with its own bind groups, as a 32-layer step's write, attention and split-K
/// reduce) in one compute pass, finished and submitted, with bind groups of 3, 6 and 10 storage
/// buffers (quantkv's attention binds 10, its write 9, its reduce 5). No quantkv code runs:
/// this is what the per-step host cost cannot go below with that many dispatches and bindings.
fn wgpu_floor(c: &mut Criterion) {
    if let Ok(ctx) = Context::new() {
        wgpu_floor_on(c, &ctx, "");
    }
    if let Some(ctx) = noop_context() {
        wgpu_floor_on(c, &ctx, "_noop");
    }
}

fn wgpu_floor_on(c: &mut Criterion, ctx: &Context, suffix: &str) {
    let dev = &ctx.device;
    for n in [3u32, 6, 10] {
        let mut src = String::new();
        for i in 0..n {
            let access = if i == 0 { "read_write" } else { "read" };
            src += &format!("@group(0) @binding({i}) var<storage, {access}> b{i}: array<u32>;\n");
        }
        let sum: Vec<String> = (1..n).map(|i| format!("b{i}[0]")).collect();
        src += &format!(
            "@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {{ if (id.x == 0u) {{ b0[0] = {}; }} }}\n",
            sum.join(" + ")
        );
        let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("floor"),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = (0..n)
            .map(|i| wgpu::BindGroupLayoutEntry {
                binding: i,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: i != 0 },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let bgl = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: None,
            entries: &entries,
        });
        let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let pipes: Vec<wgpu::ComputePipeline> = (0..3)
            .map(|_| {
                dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: None,
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();
        // Per layer and dispatch its own output buffer, the inputs shared (as step buffers are).
        let buf = || ctx.zeroed("floor", 256);
        let shared: Vec<wgpu::Buffer> = (1..n).map(|_| buf()).collect();
        let groups: Vec<wgpu::BindGroup> = (0..96u32)
            .map(|_| {
                let out = buf();
                let mut e = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: out.as_entire_binding(),
                }];
                for (k, b) in shared.iter().enumerate() {
                    e.push(wgpu::BindGroupEntry {
                        binding: k as u32 + 1,
                        resource: b.as_entire_binding(),
                    });
                }
                dev.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &bgl,
                    entries: &e,
                })
            })
            .collect();
        c.bench_function(
            &format!("wgpu_floor_96_dispatches_{n}_bindings{suffix}"),
            |bench| {
                bench.iter_custom(|iters| {
                    let mut host = std::time::Duration::ZERO;
                    for i in 0..iters {
                        let t = std::time::Instant::now();
                        let mut enc = dev.create_command_encoder(&Default::default());
                        {
                            let mut pass = enc.begin_compute_pass(&Default::default());
                            for (k, g) in groups.iter().enumerate() {
                                pass.set_pipeline(&pipes[k % 3]);
                                pass.set_bind_group(0, g, &[]);
                                pass.dispatch_workgroups(1, 1, 1);
                            }
                        }
                        ctx.queue.submit([enc.finish()]);
                        host += t.elapsed();
                        if i % 4 == 3 {
                            let _ = dev.poll(wgpu::PollType::wait_indefinitely());
                        }
                    }
                    host
                })
            },
        );
        let _ = dev.poll(wgpu::PollType::wait_indefinitely());
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench, full_step, wgpu_floor
}
criterion_main!(benches);
