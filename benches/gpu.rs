//! GPU benchmark: unified_attention and reshape_and_cache timed with timestamp queries (median
//! of >= 50 runs after warm-up), rotating over separate layer pools so small shapes do not sit
//! in L2, next to a copy kernel measured in the same run. Prints a table and writes JSON + CSV.
//!
//!   cargo bench --bench gpu -- [--quick] [--out DIR] [--shapes-json FILE] [--filter A,B,..]
//!                               [--modes none,int4_per_token_head,..|all] [--paths auto,stream,..]
//!                               [--no-subgroups] [--no-combine] [--batch N] [--one-pass] [--floor]
//!                               [--step two|fused] [--unit-tensor-scales] [--mma-decode]
//!                               [--mma-steps 16,48] [--fa2-prefill] [--fa2-len 8192]
//!                               [--fa2-qamp 2] [--fa2-margin 0] [--fa2-nsg 4,8]
//!                               [--fa2-skips 0,16]
//!
//! `--mma-decode` times a tensor-core decode rung's skeleton first (`benches/probe_mma_decode.wgsl`,
//! cooperative-matrix adapters with 32-lane subgroups only), `--fa2-prefill` a causal f16
//! prefill in the FlashAttention-2 shape (`benches/probe_fa2_prefill.wgsl`, the same adapters); `--micro`, `--residency` and
//! `--floor` are the other probes.
//! `--shapes-json` writes the shapes for `benches/sdpa.py`, which times PyTorch SDPA on them in
//! the same device command; `--sdpa FILE` reads its results back and adds the ratio columns.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;
use quantkv::reference::rng::SplitMix64;
use quantkv::*;

#[derive(Clone, Debug)]
struct Shape {
    name: String,
    b: u32,
    lq: u32,
    lkv: u32,
    hq: u32,
    hkv: u32,
    d: u32,
    mode: KvQuantMode,
    split: SplitK,
    path: AttentionPath,
    /// Decode rows (one query token each over `mixed_lkv` keys) in the batch after the `b`
    /// sequences of (lq, lkv): a mixed batch, as a serving step that admits a prompt while
    /// others decode; 0 for the plain shapes.
    mixed_rows: u32,
    mixed_lkv: u32,
}

#[derive(Debug, Default, Clone)]
struct Row {
    name: String,
    mode: String,
    kernel: String,
    split: String,
    us: f64,
    bytes: f64,
    gbs: f64,
    frac_copy: f64,
    f16_equiv_gbs: f64,
    tflops: f64,
    speedup_vs_f16: f64,
    sdpa_us: f64,
    vs_sdpa: f64,
    sdpa_backend: String,
    spread: f64,
    passes: String,
}

fn decode(name: &str, b: u32, lkv: u32, d: u32, split: SplitK) -> Shape {
    Shape {
        name: name.into(),
        b,
        lq: 1,
        lkv,
        hq: 32,
        hkv: 8,
        d,
        mode: KvQuantMode::None,
        split,
        path: AttentionPath::Auto,
        mixed_rows: 0,
        mixed_lkv: 0,
    }
}

/// One causal prompt of `lq` tokens and `rows` decode rows over `lkv` keys each, in one batch.
fn mixed(name: &str, lq: u32, rows: u32, lkv: u32) -> Shape {
    Shape {
        name: name.into(),
        lq,
        lkv: lq,
        mixed_rows: rows,
        mixed_lkv: lkv,
        ..decode("", 1, lq, 128, SplitK::Auto)
    }
}

impl Shape {
    /// (query tokens, keys) of every sequence of the batch.
    fn seqs(&self) -> Vec<(u32, u32)> {
        let mut v = vec![(self.lq, self.lkv); self.b as usize];
        v.extend(std::iter::repeat_n(
            (1, self.mixed_lkv),
            self.mixed_rows as usize,
        ));
        v
    }
}

/// The split-K of a `--segments` / `--sweep` count (1 or less: no split).
fn sweep_split(n: u32) -> SplitK {
    if n <= 1 {
        SplitK::Off
    } else {
        SplitK::Segments(n)
    }
}

/// Every built quantized mode (every supported mode but the f16/f32 cache).
fn quantized_modes() -> impl Iterator<Item = KvQuantMode> {
    KvQuantMode::ALL
        .into_iter()
        .filter(|m| m.is_supported() && *m != KvQuantMode::None)
}

fn shapes(quick: bool, sweep: &[u32]) -> Vec<Shape> {
    if quick {
        return vec![
            decode("decode_b1_l1k", 1, 1024, 128, SplitK::Auto),
            decode("decode_b1_l1k", 1, 1024, 128, SplitK::Off),
            Shape {
                name: "prefill_256".into(),
                lq: 256,
                lkv: 256,
                ..decode("", 1, 256, 64, SplitK::Auto)
            },
            mixed("mixed_prompt_128_decode_8x512", 128, 8, 512),
        ];
    }
    let mut v = Vec::new();
    for &(b, l) in &[
        (1u32, 1024u32),
        (1, 4096),
        (1, 32768),
        (1, 131072),
        (8, 8192),
        (8, 32768),
        (32, 4096),
        (64, 2048),
        (16, 32768),
    ] {
        let name = format!("decode_b{b}_l{}k", l / 1024);
        v.push(decode(&name, b, l, 128, SplitK::Auto));
        if b == 1 && l >= 32768 {
            v.push(decode(&name, b, l, 128, SplitK::Off));
        }
        // The unified kernel and both rungs of the decode kernel on the same decode shape
        // (one of the rungs repeats what Auto chose).
        for path in [
            AttentionPath::Unified,
            AttentionPath::DecodePortable,
            AttentionPath::DecodeSubgroups,
            AttentionPath::DecodeStream,
            AttentionPath::PrefillCoop,
        ] {
            v.push(Shape {
                path,
                ..decode(&name, b, l, 128, SplitK::Auto)
            });
        }
        for &n in sweep {
            let split = sweep_split(n);
            v.push(decode(&name, b, l, 128, split));
            for path in [AttentionPath::DecodeStream, AttentionPath::PrefillCoop] {
                v.push(Shape {
                    path,
                    ..decode(&name, b, l, 128, split)
                });
            }
        }
        if (b == 1 && l >= 32768) || (l == 32768 && b >= 8) {
            for mode in quantized_modes() {
                v.push(Shape {
                    mode,
                    ..decode(&name, b, l, 128, SplitK::Auto)
                });
                v.push(Shape {
                    mode,
                    path: AttentionPath::DecodeStream,
                    ..decode(&name, b, l, 128, SplitK::Auto)
                });
                v.push(Shape {
                    mode,
                    path: AttentionPath::PrefillCoop,
                    ..decode(&name, b, l, 128, SplitK::Auto)
                });
            }
        }
    }
    for (name, d) in [("decode_b1_l32k_d64", 64), ("decode_b1_l32k_d256", 256)] {
        v.push(decode(name, 1, 32768, d, SplitK::Auto));
        v.push(Shape {
            path: AttentionPath::DecodeStream,
            ..decode(name, 1, 32768, d, SplitK::Auto)
        });
        for &n in sweep {
            v.push(Shape {
                path: AttentionPath::DecodeStream,
                ..decode(name, 1, 32768, d, sweep_split(n))
            });
        }
        // Every mode at head size 64 too: 16-bit rows and INT2 take 8 elements per lane there
        // (three workgroups per multiprocessor), 8- and 4-bit codes 16.
        if d == 64 {
            for mode in quantized_modes() {
                v.push(Shape {
                    mode,
                    ..decode(name, 1, 32768, d, SplitK::Auto)
                });
            }
        }
    }
    // Prefill: Auto (cooperative matrices where the adapter has them), the portable tiled
    // kernel forced, and the unified kernel where it takes less than a second per shape.
    for l in [2048u32, 8192] {
        let name = format!("prefill_causal_{}k", l / 1024);
        let base = Shape {
            name: name.clone(),
            lq: l,
            lkv: l,
            ..decode("", 1, l, 128, SplitK::Auto)
        };
        v.push(base.clone());
        v.push(Shape {
            path: AttentionPath::PrefillTiled,
            ..base.clone()
        });
        if l == 2048 {
            v.push(Shape {
                path: AttentionPath::Unified,
                ..base.clone()
            });
        }
        if l == 8192 {
            for mode in quantized_modes() {
                v.push(Shape {
                    mode,
                    ..base.clone()
                });
            }
        }
    }
    let chunk = Shape {
        name: "chunked_prefill_512_over_32k".into(),
        lq: 512,
        lkv: 32768,
        ..decode("", 1, 32768, 128, SplitK::Auto)
    };
    v.push(chunk.clone());
    v.push(Shape {
        path: AttentionPath::PrefillTiled,
        ..chunk
    });
    // A mixed batch (issue 13): a 2k prompt admitted while 32 sequences decode over 4k keys.
    let mix = mixed("mixed_prompt_2k_decode_32x4k", 2048, 32, 4096);
    v.push(mix.clone());
    v.push(Shape {
        path: AttentionPath::Unified,
        ..mix
    });
    v
}

/// Timed runs per measurement (50, or `--runs`; 3 in the smoke run).
static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(50);

fn runs() -> u32 {
    RUNS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Median GPU µs of a one-entry WGSL kernel over `bufs` (bindings 0..n, storage), dispatched
/// as `groups` workgroups folded into x/y within the adapter's per-dimension limit.
fn simple_kernel_us(ctx: &Context, src: &str, bufs: &[&wgpu::Buffer], groups: u64) -> Result<f64> {
    let (pipeline, bg) = probe_kernel(ctx, src, bufs);
    let maxd = ctx.limits().max_compute_workgroups_per_dimension as u64;
    let y = groups.div_ceil(maxd);
    let x = groups.div_ceil(y);
    time_runs(ctx, 5.min(runs()), runs(), |enc| {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(x as u32, y as u32, 1);
        Ok(())
    })
}

/// The pipeline of a one-entry WGSL kernel (`main`) and its bind group over `bufs`
/// (bindings 0..n, storage).
fn probe_kernel(
    ctx: &Context,
    src: &str,
    bufs: &[&wgpu::Buffer],
) -> (wgpu::ComputePipeline, wgpu::BindGroup) {
    probe_kernel_with(ctx, src, bufs, &[], false)
}

/// [`probe_kernel`] with override `constants`, built without naga's runtime checks where
/// `unchecked` (as the library builds its kernels: the probe's own indices must then stay in
/// bounds by construction).
fn probe_kernel_with(
    ctx: &Context,
    src: &str,
    bufs: &[&wgpu::Buffer],
    constants: &[(&str, f64)],
    unchecked: bool,
) -> (wgpu::ComputePipeline, wgpu::BindGroup) {
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some("probe"),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    };
    let module = if unchecked {
        // SAFETY: the caller's kernel keeps every index in bounds by construction.
        unsafe {
            ctx.device
                .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        }
    } else {
        ctx.device.create_shader_module(desc)
    };
    let pipeline = ctx
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("probe"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                ..Default::default()
            },
            cache: None,
        });
    let entries: Vec<wgpu::BindGroupEntry> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    (pipeline, bg)
}

/// GB/s (read + written) of a vec4 copy of `bytes`.
fn copy_kernel_gbs(ctx: &Context, bytes: u64) -> Result<f64> {
    const SRC: &str = "@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;\n@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;\n@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) { let i = g.x + g.y * n.x * 256u; if (i < arrayLength(&src)) { dst[i] = src[i]; } }";
    let a = ctx.zeroed("copy_a", bytes);
    let b = ctx.zeroed("copy_b", bytes);
    let us = simple_kernel_us(ctx, SRC, &[&a, &b], (bytes / 16).div_ceil(256))?;
    Ok(2.0 * bytes as f64 / us / 1e3)
}

/// `--micro` (cooperative-matrix adapters): the prefill kernel's softmax loop shape (two
/// threads per row of a 64 x 36 f32 workgroup tile, 16 reads and writes each, then a barrier)
/// timed in three modules: plain; with a cooperative-matrix store into the same array; with
/// one into another array. Whether scalar workgroup accesses cost more once a module (or an
/// array) holds cooperative-matrix operations.
fn micro_workgroup_loops(ctx: &Context) -> Result<()> {
    let body = |coop: &str, arr: &str| {
        format!(
            "{}@group(0) @binding(0) var<storage, read_write> dst: array<f32>;\n\
             var<workgroup> s: array<f32, 2304>;\nvar<workgroup> s2: array<f32, 2304>;\n\
             @compute @workgroup_size(128) fn main(@builtin(local_invocation_index) tid: u32, \
             @builtin(workgroup_id) w: vec3<u32>) {{\n\
             for (var e = tid; e < 2304u; e += 128u) {{ s[e] = f32(e) * 1e-3; s2[e] = f32(e) * 2e-3; }}\n\
             workgroupBarrier();\n{coop}\n workgroupBarrier();\n\
             let rm = tid / 2u; let rsub = tid % 2u; var acc = 0.0;\n\
             for (var it = 0u; it < 256u; it++) {{ var part = -1e30;\n\
             for (var t = rsub; t < 32u; t += 2u) {{ let v = {arr}[rm * 36u + t] * 1.0001 + acc * 1e-9; \
             {arr}[rm * 36u + t] = v; part = max(part, v); }}\n\
             acc += part; workgroupBarrier(); }}\n\
             if (acc == 12345.0) {{ dst[w.x % 256u] = acc + s[tid] + s2[tid]; }} }}\n",
            if coop.is_empty() { "" } else { "enable f16;\nenable wgpu_cooperative_matrix;\n" }
        )
    };
    let store = |a: &str| {
        format!(
            "let c = coopLoadT<coop_mat16x16<f32, C>>(&{a}[0], 16u); \
             coopStoreT(c, &{a}[256u * (tid / 32u)], 16u);"
        )
    };
    let d = ctx.zeroed("micro_out", 1024);
    for (name, src) in [
        ("plain module", body("", "s")),
        ("coop store into the looped array", body(&store("s"), "s")),
        ("coop store into another array", body(&store("s2"), "s")),
        ("plain module (again)", body("", "s")),
    ] {
        let us = simple_kernel_us(ctx, &src, &[&d], 132 * 8)?;
        println!("micro workgroup loop, {name}: {us:.1} us");
    }
    Ok(())
}

/// `--mma-decode` (16×16×16 f16 cooperative matrices, subgroups of exactly 32 lanes): the
/// skeleton of a tensor-core decode rung, `benches/probe_mma_decode.wgsl` (each subgroup
/// streams its own 16-key tiles of K and V through its region of workgroup memory into
/// multiply-adds, four barriers per tile), timed before such a rung is built: GB/s of K/V
/// bytes streamed (f16 rows, and int8 codes dequantized while staged, with their f16-equivalent
/// rate) at 2, 4 and 8 workgroups per multiprocessor, with the multiply-adds left out (skip 1)
/// and the staging left out (skip 2: the loads then feed nothing and the driver drops them,
/// so it times the multiply-adds and barriers alone) beside the full skeleton (skip 0). A rung built this way
/// can stream no faster than its skeleton; against the streaming rung's 3.9–4.1 TB/s at
/// B=8–16 L=32k (f16) and the 1.6× of f16 issue 12 asks of 8-bit codes.
fn micro_mma_decode(ctx: &Context, step_counts: &[u32]) -> Result<()> {
    let caps = ctx.caps();
    if !(caps.coop_f16 && caps.subgroup_min_size == 32 && caps.subgroup_max_size == 32) {
        println!("mma-decode probe: needs 16x16x16 f16 cooperative matrices and 32-lane subgroups");
        return Ok(());
    }
    const SRC: &str = include_str!("probe_mma_decode.wgsl");
    // Tiles each subgroup streams (`--mma-steps`: 48 by default, long contexts at large
    // batches; B=1 L=32k gives each of 1056 subgroups about 16), and tiles in each of the K and
    // V buffers: at least every subgroup's of the largest launch (4 subgroups × 8 workgroups
    // per multiprocessor), so no tile is read twice. (The first version wrapped around 32 768
    // tiles, so subgroups resident at once read the same tiles and part of its bytes came from
    // the L2: f16 rows with no multiply-adds at 5.4 TB/s, above the copy kernel.) 2^18 tiles ×
    // 4 KiB = 1 GiB of f16 rows per buffer.
    const NT: u32 = 1 << 18;
    let sms = caps.multiprocessors.unwrap_or(132) as u64;
    let most = step_counts.iter().copied().max().unwrap_or(0);
    let need = sms * 8 * 4 * most as u64;
    let buf_bytes = NT as u64 * 4096;
    if need > NT as u64 || buf_bytes > ctx.limits().max_storage_buffer_binding_size {
        println!(
            "mma-decode probe: {need} tiles per buffer of {NT}, {buf_bytes} bytes per binding: \
             does not fit this adapter"
        );
        return Ok(());
    }
    let k = ctx.zeroed("mma_probe_k", buf_bytes);
    let v = ctx.zeroed("mma_probe_v", buf_bytes);
    let d = ctx.zeroed("mma_probe_out", 1024);
    for (&steps, codes) in step_counts.iter().flat_map(|s| [(s, false), (s, true)]) {
        let tile_bytes: u64 = if codes { 2048 } else { 4096 };
        for nsg in [4u32, 2] {
            for skip in [0u32, 1, 2] {
                let constants = [
                    ("NSG", nsg as f64),
                    ("STEPS", steps as f64),
                    ("NT", NT as f64),
                    ("CODES", f64::from(u8::from(codes))),
                    ("SKIP", skip as f64),
                ];
                let (p, bg) = probe_kernel_with(ctx, SRC, &[&k, &v, &d], &constants, true);
                let mut line = format!(
                    "mma-decode probe, {}, {steps} steps, {nsg} subgroups per workgroup, skip {skip}:",
                    if codes { "int8 codes" } else { "f16 rows" }
                );
                for per_sm in [2u64, 4, 8] {
                    let groups = sms * per_sm;
                    let us = time_runs(ctx, 5.min(runs()), runs(), |enc| {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        pass.set_pipeline(&p);
                        pass.set_bind_group(0, &bg, &[]);
                        pass.dispatch_workgroups(groups as u32, 1, 1);
                        Ok(())
                    })?;
                    let bytes = groups * nsg as u64 * steps as u64 * 2 * tile_bytes;
                    let gbs = bytes as f64 / us / 1e3;
                    line.push_str(&format!(" {per_sm}/SM {us:.1} us {gbs:.0} GB/s"));
                    if codes {
                        line.push_str(&format!(" ({:.0} f16-eq)", 2.0 * gbs));
                    }
                    line.push(';');
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// `--fa2-prefill` (16×16×16 f16 cooperative matrices, subgroups of exactly 32 lanes): a causal
/// f16 prefill of `len` tokens (Hq 32, Hkv 8, D 128, a paged cache of 16-key blocks in a
/// random order) in the FlashAttention-2 shape, `benches/probe_fa2_prefill.wgsl` (each subgroup
/// owns 16 rows and their softmax, K and V staged through one tile region from 16-byte loads
/// issued a phase ahead, 32- or 64-key tiles, five barriers per tile), timed as TFLOP/s (4·Hq·L²·D/2 FLOPs) at several
/// subgroups per workgroup and tile widths, with its skip bits (timing only) beside the full
/// kernel; the full kernel's output is checked on sampled rows against an f64 reference of
/// the same f16 inputs (relative to the row's largest |O|). What issue 13's kernel would gain
/// from that shape, before it is rebuilt on it. `amp`: the queries' amplitude (scores of
/// standard deviation ≈ 0.67 × amp nats; 14 gives ≈ 9.4, as spec §11 data's, whose row maxima
/// rise by about 16 nats over 8k keys, so the lazy rescale runs on a good share of tiles; at 2
/// it hardly runs after the first tiles). `margin` (nats): where a row's running maximum
/// moves it is set that far above the tile's. `configs`: (subgroups, keys per tile); `skips`: the
/// skip bits to time (0, the full kernel, is also checked).
fn micro_fa2_prefill(
    ctx: &Context,
    len: u32,
    amp: f64,
    margin: f64,
    configs: &[(u32, u32)],
    skips: &[u32],
) -> Result<()> {
    let margin2 = margin / std::f64::consts::LN_2;
    let caps = ctx.caps();
    if !(caps.coop_f16 && caps.subgroup_min_size == 32 && caps.subgroup_max_size == 32) {
        println!(
            "fa2-prefill probe: needs 16x16x16 f16 cooperative matrices and 32-lane subgroups"
        );
        return Ok(());
    }
    const SRC: &str = include_str!("probe_fa2_prefill.wgsl");
    const HKV: usize = 8;
    const HQ: usize = 32;
    const D: usize = 128;
    let l = len.next_multiple_of(64) as usize;
    let nblk = l / 16;
    let mut rng = SplitMix64::new(0xFA2);
    let mut gen = |n: usize, amp: f64| -> Vec<half::f16> {
        (0..n)
            .map(|_| half::f16::from_f64(amp * (2.0 * rng.uniform() - 1.0)))
            .collect()
    };
    let q = gen(l * HQ * D, amp);
    let k = gen(l * HKV * D, 2.0);
    let v = gen(l * HKV * D, 1.0);
    let order = SplitMix64::new(0xB10C).permutation(nblk);
    let bt: Vec<u32> = order.iter().map(|&b| b as u32).collect();
    let qb = ctx.upload("fa2_q", bytemuck::cast_slice(&q));
    let kb = ctx.upload("fa2_k", bytemuck::cast_slice(&k));
    let vb = ctx.upload("fa2_v", bytemuck::cast_slice(&v));
    let btb = ctx.upload("fa2_bt", bytemuck::cast_slice(&bt));
    let ob = ctx.zeroed("fa2_out", (l * HQ * D * 4) as u64);
    let flops = 4.0 * HQ as f64 * (l as f64) * (l as f64) * D as f64 / 2.0;
    // Cache element of logical key `key`, KV head h, column d (block table applied).
    let kv_at = |x: &[half::f16], key: usize, h: usize, d: usize| -> f64 {
        x[((bt[key / 16] as usize * 16 + key % 16) * HKV + h) * D + d].to_f64()
    };
    // Sampled rows: (token, query head), the first, the last and spread between.
    let samples: Vec<(usize, usize)> = (0..24)
        .map(|i| ((i * (l - 1)) / 23, (i * 7) % HQ))
        .collect();
    let reference: Vec<Vec<f64>> = samples
        .iter()
        .map(|&(t, h)| {
            let kvh = h / (HQ / HKV);
            let qr = &q[(t * HQ + h) * D..][..D];
            let s: Vec<f64> = (0..=t)
                .map(|key| {
                    (0..D)
                        .map(|d| qr[d].to_f64() * kv_at(&k, key, kvh, d))
                        .sum::<f64>()
                        / (D as f64).sqrt()
                })
                .collect();
            let m = s.iter().copied().fold(f64::MIN, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let den: f64 = p.iter().sum();
            (0..D)
                .map(|d| {
                    p.iter()
                        .enumerate()
                        .map(|(key, pk)| pk * kv_at(&v, key, kvh, d))
                        .sum::<f64>()
                        / den
                })
                .collect()
        })
        .collect();
    let max_smem = ctx.limits().max_compute_workgroup_storage_size;
    for &(nsg, tk) in configs {
        let (ss, ps) = (tk + 4, tk + 8);
        let smem = tk * 136 * 2 + nsg * 16 * (ss * 4 + ps * 2) + 2 * 128 * 4 + 16;
        let mut line =
            format!("fa2-prefill probe, L={l}, q amplitude {amp}, margin {margin}, {nsg} subgroups, {tk}-key tiles, {smem} bytes:");
        if smem > max_smem {
            println!("{line} over this adapter's {max_smem} bytes of workgroup memory");
            continue;
        }
        for &skip in skips {
            let constants = [
                ("NSG", nsg as f64),
                ("TK", tk as f64),
                ("L", l as f64),
                ("HKV", HKV as f64),
                ("SKIP", skip as f64),
                ("SS", ss as f64),
                ("PS", ps as f64),
                ("S_LEN", (nsg * 16 * ss) as f64),
                ("P_LEN", (nsg * 16 * ps) as f64),
                ("KV_LEN", (tk * 136) as f64),
                ("NW", (tk * 16 / (32 * nsg)) as f64),
                ("MARGIN", margin2),
            ];
            let (p, bg) =
                probe_kernel_with(ctx, SRC, &[&qb, &kb, &vb, &btb, &ob], &constants, true);
            let groups = (l as u32 / (4 * nsg)) * HKV as u32;
            let us = time_runs(ctx, 3.min(runs()), runs().min(10), |enc| {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&p);
                pass.set_bind_group(0, &bg, &[]);
                pass.dispatch_workgroups(groups, 1, 1);
                Ok(())
            })?;
            let _ = write!(
                line,
                " skip {skip} {us:.1} us {:.1} TFLOP/s",
                flops / us / 1e6
            );
            if skip == 0 {
                let bytes = ctx.read_buffer(&ob)?;
                let got: &[f32] = bytemuck::cast_slice(&bytes);
                let mut worst = 0.0f64;
                for (&(t, h), want) in samples.iter().zip(&reference) {
                    let row = &got[(t * HQ + h) * D..][..D];
                    let amax = want.iter().fold(0.0f64, |a, x| a.max(x.abs())).max(1e-30);
                    for (g, w) in row.iter().zip(want) {
                        let e = (*g as f64 - w).abs() / amax;
                        worst = worst.max(if e.is_nan() { f64::INFINITY } else { e });
                    }
                }
                let (t, h) = samples[samples.len() / 2];
                let mid = &got[(t * HQ + h) * D..][..2];
                let want = &reference[samples.len() / 2][..2];
                let _ = write!(
                    line,
                    " (err {worst:.2e}; row {t}/{h}: {mid:.4?} vs {want:.4?})"
                );
            }
            line.push(';');
        }
        println!("{line}");
    }
    Ok(())
}

/// `--residency`: how many workgroups of 128 threads share a multiprocessor as a function of
/// their workgroup memory. A latency-bound kernel (one dependent FMA chain per thread) is
/// timed at 1, 2, 3, 4 and 8 workgroups per multiprocessor of a 132-multiprocessor GPU: where
/// the time stays flat, that many workgroups run at once. `kib`: the sizes to probe, in KiB
/// (`--residency-kib 16,17,18`; default 8, 16, 24, 32, 40, 47).
fn micro_residency(ctx: &Context, kib: &[u32]) -> Result<()> {
    let d = ctx.zeroed("residency_out", 1024);
    let limit = ctx.limits().max_compute_workgroup_storage_size / 4;
    for &kib in kib {
        let words = (kib * 256).min(limit);
        let src = format!(
            "@group(0) @binding(0) var<storage, read_write> dst: array<f32>;\n\
             var<workgroup> big: array<f32, {words}>;\n\
             @compute @workgroup_size(128) fn main(@builtin(local_invocation_index) tid: u32, \
             @builtin(workgroup_id) w: vec3<u32>) {{\n\
             for (var e = tid; e < {words}u; e += 128u) {{ big[e] = f32(e); }}\n\
             workgroupBarrier();\n\
             var a = big[(tid * 37u) % {words}u];\n\
             for (var i = 0u; i < 4096u; i++) {{ a = fma(a, 0.99999, 1e-5); }}\n\
             if (a == 12345.0) {{ dst[w.x % 256u] = a; }} }}\n"
        );
        let mut line = format!("residency, {kib} KiB workgroup memory:");
        for per_sm in [1u64, 2, 3, 4, 8] {
            let us = simple_kernel_us(ctx, &src, &[&d], 132 * per_sm)?;
            line.push_str(&format!(" {per_sm}/SM {us:.1} us;"));
        }
        println!("{line}");
    }
    Ok(())
}

/// f32 FMA throughput (TFLOP/s) of a kernel with eight independent FMA chains per thread: what
/// the shader cores reach through this driver, next to the attention kernels' figures.
fn fma_kernel_tflops(ctx: &Context, groups: u64) -> Result<f64> {
    const SRC: &str = "@group(0) @binding(0) var<storage, read_write> dst: array<f32>;\n@compute @workgroup_size(256) fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) { var a = array<f32, 8>(); for (var k = 0u; k < 8u; k++) { a[k] = f32(l + k) * 1e-3; } for (var i = 0u; i < 512u; i++) { a[0] = fma(a[0], 0.9999, 1e-4); a[1] = fma(a[1], 0.9999, 1e-4); a[2] = fma(a[2], 0.9999, 1e-4); a[3] = fma(a[3], 0.9999, 1e-4); a[4] = fma(a[4], 0.9999, 1e-4); a[5] = fma(a[5], 0.9999, 1e-4); a[6] = fma(a[6], 0.9999, 1e-4); a[7] = fma(a[7], 0.9999, 1e-4); } var s = 0.0; for (var k = 0u; k < 8u; k++) { s += a[k]; } if (s == 12345.0) { dst[(w.x + w.y) % 256u] = s; } }";
    let d = ctx.zeroed("fma_out", 1024);
    let us = simple_kernel_us(ctx, SRC, &[&d], groups)?;
    Ok(groups as f64 * 256.0 * 512.0 * 8.0 * 2.0 / us / 1e6)
}

/// Milliseconds of sustained load before each row is timed (`--warm-ms`, default 300; 0 in
/// the smoke run).
static WARM_MS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(300);

fn warm_ms() -> f64 {
    WARM_MS.load(std::sync::atomic::Ordering::Relaxed) as f64
}

/// Calls recorded between one pair of timestamps (`--batch N`, default 1): the time per call
/// is the span over N, as SDPA's CUDA-graph replay over N layers is timed, so the timestamps'
/// own cost and the GPU's idle gap before the first dispatch are shared by N calls.
static BATCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

fn batch() -> u32 {
    BATCH.load(std::sync::atomic::Ordering::Relaxed)
}

/// `--one-pass` (with `--batch N`): the N calls of a span are recorded into one compute pass
/// (`unified_attention_in`), as an engine records a step, instead of a pass per call.
static ONE_PASS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--unit-tensor-scales`: per-tensor modes' writes at scale 1.0 (a power of two, whose
/// product is the quotient itself) instead of scales calibrated to the data (absmax over the
/// largest code, as an engine calibrates them), which exercise the encoders' exact-quotient
/// path near rounding ties. Runs before 2026-12-02's fifth session always used 1.0.
static UNIT_TENSOR_SCALES: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `--floor`: what a call costs before it does any work, timed like the attention rows: one
/// workgroup writing a word, two such dispatches where the second reads the first's word
/// (a dependency, so a barrier between them), and copies of 4 and 16 MiB (the K/V bytes of
/// B=1 L=1k and L=4k at Hkv 8, D 128); then a dependent chain of N global loads in 264
/// workgroups (what each round trip to memory costs in a latency-bound kernel).
fn micro_floor(ctx: &Context) -> Result<()> {
    const ONE: &str = "@group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
        @compute @workgroup_size(64) fn main(@builtin(local_invocation_index) l: u32) { if (l == 0u) { d[0] = d[0] + 1u; } }";
    let d = ctx.zeroed("floor_d", 1 << 20);
    let one = simple_kernel_us(ctx, ONE, &[&d], 1)?;
    println!("floor: one workgroup, one dispatch per call: {one:.2} us");
    let (p, bg) = probe_kernel(ctx, ONE, &[&d]);
    // `n` dependent one-workgroup dispatches in one pass, the span divided by `calls`.
    let chain = |n: u32, calls: u32| {
        time_spans(ctx, 5.min(runs()), runs(), 1, calls, |enc| {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&p);
            pass.set_bind_group(0, &bg, &[]);
            for _ in 0..n {
                pass.dispatch_workgroups(1, 1, 1);
            }
            Ok(())
        })
    };
    let two = chain(2, 1)?;
    println!("floor: two dependent one-workgroup dispatches per call: {two:.2} us");
    let eight = chain(8, 8)?;
    println!("floor: eight dependent one-workgroup dispatches in one pass: {eight:.2} us each");
    for mib in [4u64, 16] {
        let a = ctx.zeroed("floor_a", mib << 20);
        let b = ctx.zeroed("floor_b", mib << 20);
        const COPY: &str = "@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;\n@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;\n@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3<u32>) { let i = g.x; if (i < arrayLength(&src)) { dst[i] = src[i]; } }";
        let us = simple_kernel_us(ctx, COPY, &[&a, &b], (mib << 20) / 16 / 256)?;
        println!("floor: copy of {mib} MiB: {us:.2} us");
    }
    for n in [1u32, 2, 4, 8] {
        let src = format!(
            "@group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
             @compute @workgroup_size(128) fn main(@builtin(local_invocation_index) l: u32, \
             @builtin(workgroup_id) w: vec3<u32>) {{ var i = (w.x * 4099u + l * 33u) % 262144u; \
             for (var k = 0u; k < {n}u; k++) {{ i = (d[i] + i * 977u + 12345u) % 262144u; }} \
             if (i == 0xFFFFFFFFu) {{ d[0] = i; }} }}"
        );
        let us = simple_kernel_us(ctx, &src, &[&d], 264)?;
        println!("floor: chain of {n} dependent loads, 264 workgroups: {us:.2} us");
    }
    Ok(())
}

/// Median GPU microseconds of `record` over `runs` timed runs after `warmup` untimed ones.
fn time_runs(
    ctx: &Context,
    warmup: u32,
    runs: u32,
    record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<f64> {
    time_spans(ctx, warmup, runs, batch(), batch(), record)
}

/// Like [`time_runs`], with `record` called `reps` times per timed span and the span's time
/// divided by `calls` (`--one-pass` records the batch's calls itself, in one pass: reps 1).
fn time_spans(
    ctx: &Context,
    warmup: u32,
    runs: u32,
    reps: u32,
    calls: u32,
    mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        record(&mut enc)?;
        ctx.queue.submit([enc.finish()]);
    }
    ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
    // Sustained load before timing: the GPU's clocks follow its load, and a row timed right
    // after host-side work (allocation, fill, pipeline builds) could run at idle clocks for
    // all of its runs. Back-to-back batches of 64 calls for at least WARM_MS of wall time.
    let t0 = Instant::now();
    while warmup > 0 && t0.elapsed().as_secs_f64() * 1e3 < warm_ms() {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        for _ in 0..64 {
            record(&mut enc)?;
        }
        ctx.queue.submit([enc.finish()]);
        ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
    }
    let mut us = Vec::new();
    if GpuTimer::supported(ctx) {
        // All timed runs in one submission, right after the sustained warm-up: a gap for a
        // host read-back between batches let the clocks drop in some rows.
        let per = runs.clamp(1, 64);
        let mut timer = GpuTimer::new(ctx, per)?;
        let mut done = 0;
        while done < runs {
            timer.reset();
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            for _ in 0..per.min(runs - done) {
                timer.start(&mut enc)?;
                for _ in 0..reps {
                    record(&mut enc)?;
                }
                timer.end(&mut enc);
                done += 1;
            }
            timer.resolve(&mut enc);
            ctx.queue.submit([enc.finish()]);
            us.extend(timer.read_us(ctx)?.into_iter().map(|t| t / calls as f64));
        }
    } else {
        for _ in 0..runs {
            let t = Instant::now();
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            record(&mut enc)?;
            ctx.queue.submit([enc.finish()]);
            ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    us.sort_by(f64::total_cmp);
    Ok(us[us.len() / 2])
}

/// `--step two|fused` (decode shapes): each timed call is a decode step's layer, the write of
/// the step's new K/V rows (into the slots of each sequence's newest key) and the attention:
/// `two` = `reshape_and_cache` then `unified_attention`, `fused` = `write_and_attend` (one
/// dispatch where it fuses). 0 = attention only (the default).
static STEP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `--no-fill`: leave caches zeroed (for comparing with runs before the fill existed).
static NO_FILL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// K/V bytes each attention shape rotates over (across layers), so nothing runs from L2.
const ROTATE_BYTES: u64 = 384 << 20;

/// Fills every layer of `cache` with spec §11 data (outlier channels, a sink token per block
/// group) through the mode's own write path, in chunks: timing an all-zero cache would make
/// every score equal and the softmax never rescale.
fn fill_llm_like(ctx: &Context, cache: &KvCache, rng: &mut SplitMix64) -> Result<()> {
    let cfg = *cache.config();
    let (hkv, d) = (cfg.num_kv_heads as usize, cfg.head_size as usize);
    let slots_total = cfg.num_blocks as usize * cfg.block_size as usize;
    let chunk = 16384usize.min(slots_total);
    let n = chunk * hkv * d;
    let mut k: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    quantkv::reference::data::shape_like_llm(&mut k, &mut v, &mut [], d, hkv, &[0, 1024]);
    let kb = ctx.upload("fill_k", &Dtype::F16.encode(&k));
    let vb = ctx.upload("fill_v", &Dtype::F16.encode(&v));
    // One plan per chunk, shared by every layer, all in one submission.
    let plans = (0..slots_total)
        .step_by(chunk)
        .map(|start| {
            let rows = chunk.min(slots_total - start);
            let slots: Vec<i32> = (start as i32..(start + rows) as i32).collect();
            let plan = BatchPlan::new(
                ctx,
                &cfg,
                &StepInput {
                    slot_mapping: &slots,
                    ..Default::default()
                },
            )?;
            Ok((rows, plan))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    for layer in 0..cfg.num_layers as usize {
        for (rows, plan) in &plans {
            let t = |b| Tensor::new(b, Dtype::F16, [*rows as u32, hkv as u32, d as u32]);
            cache.reshape_and_cache(ctx, &mut enc, plan, layer, t(&kb), t(&vb))?;
        }
    }
    ctx.queue.submit([enc.finish()]);
    ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
    // Free the fill's buffers now, not while the timed runs stream: wgpu destroys dropped
    // resources at the next poll, and measured runs that overlapped that release (thousands of
    // small buffers from a per-chunk fill) came out 20-80 % slow at random.
    drop(plans);
    drop((kb, vb));
    ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
    Ok(())
}

fn bench_attention(ctx: &Context, s: &Shape, rng: &mut SplitMix64) -> Result<Row> {
    let bs = 16u32;
    let backend = quantkv::modes::backend(s.mode)?;
    let seqs = s.seqs();
    let blocks_per_seq = seqs.iter().map(|&(_, l)| l.div_ceil(bs)).max().unwrap_or(1);
    let nseq = seqs.len() as u32;
    let num_blocks = nseq * blocks_per_seq + 1;
    let row_bytes = backend.row_bytes(s.d, Dtype::F16);
    let layer_bytes = 2 * num_blocks as u64 * bs as u64 * s.hkv as u64 * row_bytes;
    // Rotate over at least ROTATE_BYTES of K/V in total (and >= 2 layers), so no shape runs
    // from the 60 MB L2 of an H200 (the SDPA side does the same).
    let layers = ROTATE_BYTES.div_ceil(layer_bytes).clamp(2, 64) as u32;
    let cfg = CacheConfig {
        num_layers: layers,
        num_blocks,
        block_size: bs,
        num_kv_heads: s.hkv,
        head_size: s.d,
        mode: s.mode,
        dtype: Dtype::F16,
        ..Default::default()
    };
    let cache = KvCache::new(ctx, &cfg)?;
    if !NO_FILL.load(std::sync::atomic::Ordering::Relaxed) {
        fill_llm_like(ctx, &cache, rng)?;
    }
    let perm = rng.permutation(num_blocks as usize);
    let block_table: Vec<i32> = perm[..(nseq * blocks_per_seq) as usize]
        .iter()
        .map(|&x| x as i32)
        .collect();
    let mut cu = vec![0i32];
    for &(lq, _) in &seqs {
        cu.push(cu[cu.len() - 1] + lq as i32);
    }
    let used: Vec<i32> = seqs.iter().map(|&(_, l)| l as i32).collect();
    // `--step`: decode shapes write each sequence's newest key.
    let step = STEP.load(std::sync::atomic::Ordering::Relaxed);
    let step = if seqs.iter().all(|&(lq, _)| lq == 1) {
        step
    } else {
        0
    };
    let slots: Vec<i32> = if step > 0 {
        seqs.iter()
            .enumerate()
            .map(|(i, &(_, l))| {
                let p = l - 1;
                block_table[(i as u32 * blocks_per_seq + p / bs) as usize] * bs as i32
                    + (p % bs) as i32
            })
            .collect()
    } else {
        Vec::new()
    };
    let plan = BatchPlan::new(
        ctx,
        &cfg,
        &StepInput {
            slot_mapping: &slots,
            cu_seqlens_q: &cu,
            seqused_k: &used,
            block_table: &block_table,
            block_table_stride: blocks_per_seq as usize,
            ..Default::default()
        },
    )?;
    let tokens: u32 = seqs.iter().map(|&(lq, _)| lq).sum();
    let qn = (tokens * s.hq * s.d) as usize;
    let mut q: Vec<f64> = (0..qn).map(|_| rng.normal()).collect();
    quantkv::reference::data::shape_like_llm(
        &mut [],
        &mut [],
        &mut q,
        s.d as usize,
        s.hkv as usize,
        &[],
    );
    let qb = ctx.upload("q", &Dtype::F16.encode(&q));
    let ob = ctx.zeroed("out", qn as u64 * 2);
    let kvn = (slots.len() as u32 * s.hkv * s.d) as usize;
    let kvb = ctx.upload(
        "new kv",
        &Dtype::F16.encode(&(0..kvn.max(1)).map(|_| rng.normal()).collect::<Vec<_>>()),
    );
    let kvt = Tensor::new(&kvb, Dtype::F16, [slots.len() as u32, s.hkv, s.d]);
    let mut fused_calls = 0u32;
    let params = AttentionParams {
        num_q_heads: s.hq,
        softmax_scale: 1.0 / (s.d as f32).sqrt(),
        split: s.split,
        path: s.path,
        ..Default::default()
    };
    let shape = [tokens, s.hq, s.d];
    let mut i = 0;
    let one_pass = ONE_PASS.load(std::sync::atomic::Ordering::Relaxed);
    let (reps, per_record) = if one_pass { (1, batch()) } else { (batch(), 1) };
    let us = time_spans(ctx, 5.min(runs()), runs(), reps, batch(), |enc| {
        // The next layer's call (rotating over the layers).
        let mut next = || {
            let l = i % layers as usize;
            i += 1;
            anyhow::Ok((
                l,
                Attention {
                    plan: &plan,
                    layer: cache.layer(l)?,
                    q: Tensor::new(&qb, Dtype::F16, shape),
                    out: Tensor::new(&ob, Dtype::F16, shape),
                    params: &params,
                },
            ))
        };
        if one_pass {
            // As an engine records a step: every layer's call in one compute pass.
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..per_record {
                let (l, a) = next()?;
                match step {
                    1 => {
                        cache.reshape_and_cache_in(ctx, &mut pass, &plan, l, kvt, kvt)?;
                        cache.unified_attention_in(ctx, &mut pass, &a)?;
                    }
                    2 => {
                        fused_calls +=
                            cache.write_and_attend_in(ctx, &mut pass, kvt, kvt, &a)? as u32
                    }
                    _ => cache.unified_attention_in(ctx, &mut pass, &a)?,
                }
            }
        } else {
            let (l, a) = next()?;
            match step {
                1 => {
                    cache.reshape_and_cache(ctx, enc, &plan, l, kvt, kvt)?;
                    cache.unified_attention(ctx, enc, &a)?;
                }
                2 => fused_calls += cache.write_and_attend(ctx, enc, kvt, kvt, &a)? as u32,
                _ => cache.unified_attention(ctx, enc, &a)?,
            }
        }
        Ok(())
    })?;
    let keys: f64 = seqs.iter().map(|&(_, l)| l as f64).sum();
    let kv_bytes =
        2.0 * keys * s.hkv as f64 * (row_bytes as f64 + backend.scale_cache_bytes(1, 1) as f64);
    let lp = cache.launch_plan(ctx, &plan, &params)?;
    let segs = lp.segments;
    let partial_bytes = if segs > 1 {
        2.0 * tokens as f64 * s.hq as f64 * segs as f64 * (s.d as f64 + 2.0) * 4.0
    } else {
        0.0
    };
    let bytes =
        kv_bytes + (nseq * blocks_per_seq * 4) as f64 + 2.0 * qn as f64 * 2.0 + partial_bytes;
    let f16_bytes = 2.0 * keys * s.hkv as f64 * s.d as f64 * 2.0;
    // Query-key pairs a causal batch visits (a prompt's rows see the context and the
    // earlier prompt tokens: half the square).
    let pairs: f64 = seqs
        .iter()
        .map(|&(lq, lkv)| {
            let (lq, lkv) = (lq as f64, lkv as f64);
            if lq > 1.0 {
                lq * (lkv - lq) + lq * lq / 2.0
            } else {
                lkv
            }
        })
        .sum();
    let flops = 4.0 * s.hq as f64 * pairs * s.d as f64;
    Ok(Row {
        name: s.name.clone(),
        mode: s.mode.id().into(),
        kernel: format!(
            "{}{}{}{}{}",
            lp.kernel.name(),
            if lp.stream {
                "-stream"
            } else if lp.coop {
                "-coop"
            } else if lp.subgroups {
                "-sg"
            } else {
                ""
            },
            if lp.decode_apart { "+decode" } else { "" },
            if s.path == AttentionPath::Auto {
                ""
            } else {
                " (forced)"
            },
            match (step, fused_calls > 0) {
                (0, _) => "",
                (1, _) => " +write",
                (_, true) => " +write fused",
                (_, false) => " +write (not fused)",
            }
        ),
        // "+c": the decode kernel combines the segments itself (no reduce pass).
        split: format!(
            "{}{}",
            match s.split {
                SplitK::Auto => format!("auto({segs})"),
                SplitK::Off => "off".into(),
                SplitK::Segments(n) => format!("{n}"),
                other => format!("{other:?}"),
            },
            if lp.combine { "+c" } else { "" }
        ),
        us,
        bytes,
        gbs: bytes / us / 1e3,
        f16_equiv_gbs: f16_bytes / us / 1e3,
        tflops: flops / us / 1e6,
        ..Default::default()
    })
}

fn bench_write(ctx: &Context, mode: KvQuantMode) -> Result<Row> {
    let (tokens, hkv, d, bs) = (4096u32, 8u32, 128u32, 16u32);
    let backend = quantkv::modes::backend(mode)?;
    let num_blocks = tokens / bs + 1;
    let cfg = CacheConfig {
        num_layers: 8,
        num_blocks,
        block_size: bs,
        num_kv_heads: hkv,
        head_size: d,
        mode,
        dtype: Dtype::F16,
        ..Default::default()
    };
    let mut cache = KvCache::new(ctx, &cfg)?;
    let slots: Vec<i32> = (0..tokens as i32).collect();
    let plan = BatchPlan::new(
        ctx,
        &cfg,
        &StepInput {
            slot_mapping: &slots,
            ..Default::default()
        },
    )?;
    let n = (tokens * hkv * d) as u64;
    let mut rng = SplitMix64::new(0x3417e);
    let mut k: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    quantkv::reference::data::shape_like_llm(
        &mut k,
        &mut v,
        &mut [],
        d as usize,
        hkv as usize,
        &[0],
    );
    let max_code = match mode {
        KvQuantMode::Fp8PerTensor => Some(448.0),
        KvQuantMode::Int8PerTensor => Some(127.0),
        _ => None,
    };
    if let Some(max_code) = max_code {
        if !UNIT_TENSOR_SCALES.load(std::sync::atomic::Ordering::Relaxed) {
            let amax = |x: &[f64]| x.iter().fold(0f64, |m, v| m.max(v.abs())) as f32;
            let (ks, vs) = (amax(&k) / max_code, amax(&v) / max_code);
            for l in 0..cfg.num_layers as usize {
                cache.set_tensor_scales(l, ks, vs)?;
            }
        }
    }
    // One input pair per layer (8 x 16.8 MB), so a call's rows are not in the 60 MB L2 of
    // an H200 from the call before, as an engine's projections are not.
    let (kh, vh) = (Dtype::F16.encode(&k), Dtype::F16.encode(&v));
    let inputs: Vec<_> = (0..8)
        .map(|_| (ctx.upload("k", &kh), ctx.upload("v", &vh)))
        .collect();
    let shape = [tokens, hkv, d];
    let mut i = 0;
    let one_pass = ONE_PASS.load(std::sync::atomic::Ordering::Relaxed);
    let (reps, per_record) = if one_pass { (1, batch()) } else { (batch(), 1) };
    let us = time_spans(ctx, 5.min(runs()), runs(), reps, batch(), |enc| {
        // The next layer's write (rotating over the layers and their inputs); with
        // `--one-pass` a span's calls in one compute pass, as an engine records a step.
        let mut next = || {
            let (kb, vb) = &inputs[i % 8];
            i += 1;
            (
                (i - 1) % 8,
                Tensor::new(kb, Dtype::F16, shape),
                Tensor::new(vb, Dtype::F16, shape),
            )
        };
        if one_pass {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..per_record {
                let (l, k, v) = next();
                cache.reshape_and_cache_in(ctx, &mut pass, &plan, l, k, v)?;
            }
        } else {
            let (l, k, v) = next();
            cache.reshape_and_cache(ctx, enc, &plan, l, k, v)?;
        }
        Ok(())
    })?;
    let bytes = 2.0 * n as f64 * 2.0
        + 2.0
            * tokens as f64
            * hkv as f64
            * (backend.row_bytes(d, Dtype::F16) + backend.scale_cache_bytes(1, 1)) as f64;
    Ok(Row {
        name: "reshape_and_cache_4096".into(),
        mode: mode.id().into(),
        kernel: "write".into(),
        split: "-".into(),
        us,
        bytes,
        gbs: bytes / us / 1e3,
        ..Default::default()
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |n: &str| args.iter().any(|a| a == n);
    let opt = |n: &str| {
        args.iter()
            .position(|a| a == n)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // A comma-separated list of numbers after option `n`, if given.
    let u32_list = |n: &str| -> Result<Option<Vec<u32>>> {
        opt(n)
            .map(|list| {
                list.split(',')
                    .map(|v| v.parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("{n} {list}: {e}"))
            })
            .transpose()
    };
    // `cargo test --all-targets` runs this binary without `--bench`: a smoke run of tiny shapes.
    let smoke = !flag("--bench");
    let quick = flag("--quick") || smoke;
    // `--runs N`: timed runs per measurement (slow forced paths at big shapes).
    RUNS.store(
        if smoke {
            3
        } else {
            opt("--runs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(50)
                .max(1)
        },
        std::sync::atomic::Ordering::Relaxed,
    );
    NO_FILL.store(flag("--no-fill"), std::sync::atomic::Ordering::Relaxed);
    WARM_MS.store(
        if smoke {
            0
        } else {
            opt("--warm-ms").and_then(|v| v.parse().ok()).unwrap_or(300)
        },
        std::sync::atomic::Ordering::Relaxed,
    );
    BATCH.store(
        opt("--batch")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1u32)
            .max(1),
        std::sync::atomic::Ordering::Relaxed,
    );
    ONE_PASS.store(flag("--one-pass"), std::sync::atomic::Ordering::Relaxed);
    UNIT_TENSOR_SCALES.store(
        flag("--unit-tensor-scales"),
        std::sync::atomic::Ordering::Relaxed,
    );
    let step = match opt("--step").as_deref() {
        None => 0,
        Some("two") => 1,
        Some("fused") => 2,
        Some(other) => anyhow::bail!("--step {other}: expected two or fused"),
    };
    STEP.store(step, std::sync::atomic::Ordering::Relaxed);
    let filter = opt("--filter");
    // `--sweep`: every decode shape also at 2, 4, ..., 256 split-K segments on each path;
    // `--segments N,N,...` at those counts instead (1: no split).
    let sweep = match u32_list("--segments")? {
        Some(list) => list,
        None if flag("--sweep") => vec![2, 4, 8, 16, 32, 64, 128, 256],
        None => vec![],
    };
    let mut list = shapes(quick, &sweep);
    if let Some(f) = &filter {
        let parts: Vec<&str> = f.split(',').collect();
        list.retain(|s| parts.iter().any(|p| s.name.contains(p)));
    }
    // `--chunks LQ:LKV,...`: chunked-prefill shapes (B=1, Hq 32, Hkv 8, D 128) added to the
    // list as `chunk_<LQ>_over_<LKV>` (e.g. to find how many prefill workgroups run at once:
    // the time stays flat while the workgroups fit).
    if let Some(c) = opt("--chunks") {
        for part in c.split(',') {
            let (lq, lkv) = part
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("--chunks wants LQ:LKV pairs, got {part}"))?;
            list.push(Shape {
                name: format!("chunk_{lq}_over_{lkv}"),
                lq,
                lkv,
                ..decode("", 1, lkv, 128, SplitK::Auto)
            });
        }
    }
    // `--paths auto,unified,portable,subgroups,stream,tiled,coop`: only shapes run on these paths.
    if let Some(p) = opt("--paths") {
        let ids: Vec<&str> = p.split(',').collect();
        list.retain(|s| {
            ids.contains(&match s.path {
                AttentionPath::Auto => "auto",
                AttentionPath::Unified => "unified",
                AttentionPath::DecodePortable => "portable",
                AttentionPath::DecodeSubgroups => "subgroups",
                AttentionPath::DecodeStream => "stream",
                AttentionPath::PrefillTiled => "tiled",
                AttentionPath::PrefillCoop => "coop",
                _ => "other",
            })
        });
    }
    // `--modes all` (or no flag) keeps every mode; an unknown id is an error, not an empty run.
    let modes_opt = opt("--modes").filter(|m| m != "all");
    if let Some(m) = &modes_opt {
        let ids: Vec<&str> = m.split(',').collect();
        if let Some(bad) = ids
            .iter()
            .find(|id| !KvQuantMode::ALL.iter().any(|k| k.id() == **id))
        {
            anyhow::bail!(
                "--modes: unknown mode {bad:?} (ids: none, int4_per_token_head, ..., or all)"
            );
        }
        list.retain(|s| ids.contains(&s.mode.id()));
    }
    if let Some(path) = opt("--shapes-json") {
        let mut js = String::from("[");
        let mut seen = std::collections::HashSet::new();
        for s in list.iter().filter(|s| seen.insert(s.name.clone())) {
            let _ = write!(js, "{}{{\"name\":\"{}\",\"b\":{},\"lq\":{},\"lkv\":{},\"hq\":{},\"hkv\":{},\"d\":{},\"causal\":{},\"mixed_rows\":{},\"mixed_lkv\":{}}}", if js.len() > 1 { "," } else { "" }, s.name, s.b, s.lq, s.lkv, s.hq, s.hkv, s.d, s.lq > 1, s.mixed_rows, s.mixed_lkv);
        }
        js.push(']');
        std::fs::write(&path, js)?;
        println!("wrote {path}");
        if flag("--shapes-only") {
            return Ok(());
        }
    }
    // --no-subgroups: the portable kernels (Context::with_subgroups(false)); --no-combine: split-K
    // decode through the reduce pass (Context::with_split_combine(false)).
    let ctx = Context::new()?
        .with_subgroups(!flag("--no-subgroups"))
        .with_split_combine(!flag("--no-combine"));
    println!("device: {}", ctx.adapter());
    let limit = ctx
        .limits()
        .max_storage_buffer_binding_size
        .min(ctx.limits().max_buffer_size);
    let copy = copy_kernel_gbs(
        &ctx,
        if quick {
            16 << 20
        } else {
            (1u64 << 30).min(limit)
        },
    )?;
    println!("copy kernel: {copy:.1} GB/s");
    let fma = fma_kernel_tflops(&ctx, if quick { 64 } else { 16384 })?;
    println!("fma kernel: {fma:.2} TFLOP/s (f32)");
    if flag("--micro") && ctx.caps().coop_f16 {
        micro_workgroup_loops(&ctx)?;
    }
    if flag("--residency") {
        let kib = u32_list("--residency-kib")?.unwrap_or_else(|| vec![8, 16, 24, 32, 40, 47]);
        micro_residency(&ctx, &kib)?;
    }
    if flag("--floor") {
        micro_floor(&ctx)?;
    }
    if flag("--fa2-prefill") {
        let len = opt("--fa2-len")
            .and_then(|v| v.parse().ok())
            .unwrap_or(8192);
        let amp = opt("--fa2-qamp")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2.0);
        let configs: Vec<(u32, u32)> = match u32_list("--fa2-nsg")? {
            Some(n) => n.into_iter().map(|n| (n, 32)).collect(),
            None => vec![(4, 32), (8, 32), (2, 32), (4, 64)],
        };
        let margin = opt("--fa2-margin")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let skips = u32_list("--fa2-skips")?.unwrap_or_else(|| vec![0, 16, 3, 4, 8, 7, 15]);
        micro_fa2_prefill(&ctx, len, amp, margin, &configs, &skips)?;
    }
    if flag("--mma-decode") {
        let steps = u32_list("--mma-steps")?.unwrap_or_else(|| vec![48]);
        micro_mma_decode(&ctx, &steps)?;
    }
    let mut rng = SplitMix64::new(0xBE7C4);
    // `--repeat N`: the whole list N times in alternation (fresh caches each pass); each row
    // reports the median pass (the lower one of an even count: a rare slow pass is noise, not
    // the kernel) and the spread (max - min) / median.
    let repeat: usize = opt("--repeat")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut passes: Vec<Vec<Row>> = vec![Vec::new(); list.len()];
    for pass in 0..repeat {
        for (i, s) in list.iter().enumerate() {
            match bench_attention(&ctx, s, &mut rng) {
                Ok(r) => passes[i].push(r),
                Err(e) => eprintln!("{} (pass {pass}): {e}", s.name),
            }
            ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
        }
    }
    let mut rows = Vec::new();
    for mut v in passes.into_iter().filter(|v| !v.is_empty()) {
        v.sort_by(|a, b| a.us.total_cmp(&b.us));
        let mut r = v[(v.len() - 1) / 2].clone();
        r.spread = (v[v.len() - 1].us - v[0].us) / r.us;
        r.passes = v
            .iter()
            .map(|x| format!("{:.1}", x.us))
            .collect::<Vec<_>>()
            .join("/");
        rows.push(r);
    }
    let writes = filter
        .as_ref()
        .is_none_or(|f| f.split(',').any(|p| "reshape_and_cache_4096".contains(p)));
    if writes {
        // `--modes` restricts the write rows too.
        let wanted = |m: KvQuantMode| {
            modes_opt
                .as_ref()
                .is_none_or(|l| l.split(',').any(|id| id == m.id()))
        };
        for mode in KvQuantMode::ALL
            .into_iter()
            .filter(|m| m.is_supported() && wanted(*m))
        {
            rows.push(bench_write(&ctx, mode)?);
        }
    }
    // Ratios: to the copy kernel, to f16 of the same shape, to SDPA when its results are given.
    let sdpa: Vec<(String, f64, String)> = opt("--sdpa")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| parse_sdpa(&t))
        .unwrap_or_default();
    let f16_us: Vec<(String, String, f64)> = rows
        .iter()
        .filter(|r| r.mode == "none")
        .map(|r| (format!("{}/{}", r.name, r.kernel), r.split.clone(), r.us))
        .collect();
    for r in &mut rows {
        r.frac_copy = r.gbs / copy;
        if let Some((_, _, us)) = f16_us.iter().find(|(n, sp, _)| {
            *n == format!("{}/{}", r.name, r.kernel)
                && sp.starts_with(&r.split[..r.split.find('(').unwrap_or(r.split.len())])
        }) {
            r.speedup_vs_f16 = us / r.us;
        }
        if let Some((_, us, be)) = sdpa.iter().find(|(n, _, _)| *n == r.name) {
            r.sdpa_us = *us;
            r.vs_sdpa = us / r.us;
            r.sdpa_backend = be.clone();
        }
    }
    let mut table = String::new();
    let _ = writeln!(table, "| shape | mode | kernel | split | GPU us | spread | MB read | GB/s | x copy | f16-eq GB/s | TFLOP/s | vs f16 | SDPA us | vs SDPA |");
    let _ = writeln!(
        table,
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {:.1} | {} | {:.1} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {} | {} |",
            r.name,
            r.mode,
            r.kernel,
            r.split,
            r.us,
            if r.passes.contains('/') {
                format!("{:.0} % ({})", r.spread * 100.0, r.passes)
            } else {
                "-".into()
            },
            r.bytes / 1e6,
            r.gbs,
            r.frac_copy,
            r.f16_equiv_gbs,
            r.tflops,
            r.speedup_vs_f16,
            if r.sdpa_us > 0.0 {
                format!("{:.1} ({})", r.sdpa_us, r.sdpa_backend)
            } else {
                "-".into()
            },
            if r.vs_sdpa > 0.0 {
                format!("{:.2}", r.vs_sdpa)
            } else {
                "-".into()
            }
        );
    }
    println!("{table}");
    if let Some(dir) = opt("--out") {
        std::fs::create_dir_all(&dir)?;
        let mut csv = String::from("shape,mode,kernel,split,gpu_us,bytes,gbs,frac_copy,f16_equiv_gbs,tflops,speedup_vs_f16,sdpa_us,vs_sdpa,sdpa_backend\n");
        let mut json = format!(
            "{{\"device\":\"{}\",\"copy_gbs\":{copy:.1},\"rows\":[",
            ctx.adapter().to_string().replace('"', "'")
        );
        for (i, r) in rows.iter().enumerate() {
            let _ = writeln!(
                csv,
                "{},{},{},{},{:.2},{:.0},{:.1},{:.3},{:.1},{:.3},{:.3},{:.2},{:.3},{}",
                r.name,
                r.mode,
                r.kernel,
                r.split,
                r.us,
                r.bytes,
                r.gbs,
                r.frac_copy,
                r.f16_equiv_gbs,
                r.tflops,
                r.speedup_vs_f16,
                r.sdpa_us,
                r.vs_sdpa,
                r.sdpa_backend
            );
            let _ = write!(json, "{}{{\"shape\":\"{}\",\"mode\":\"{}\",\"kernel\":\"{}\",\"split\":\"{}\",\"gpu_us\":{:.2},\"bytes\":{:.0},\"gbs\":{:.1},\"frac_copy\":{:.3},\"f16_equiv_gbs\":{:.1},\"tflops\":{:.3},\"speedup_vs_f16\":{:.3},\"sdpa_us\":{:.2},\"vs_sdpa\":{:.3}}}", if i > 0 { "," } else { "" }, r.name, r.mode, r.kernel, r.split, r.us, r.bytes, r.gbs, r.frac_copy, r.f16_equiv_gbs, r.tflops, r.speedup_vs_f16, r.sdpa_us, r.vs_sdpa);
        }
        json.push_str("]}\n");
        std::fs::write(format!("{dir}/bench.csv"), csv)?;
        std::fs::write(format!("{dir}/bench.json"), json)?;
    }
    Ok(())
}

/// Reads the `rows` of benches/sdpa.py's JSON without a JSON dependency: name, sdpa_us, backend.
fn parse_sdpa(text: &str) -> Vec<(String, f64, String)> {
    let field = |obj: &str, key: &str| -> Option<String> {
        let i = obj.find(&format!("\"{key}\""))? + key.len() + 2;
        let rest = obj[i..].trim_start().strip_prefix(':')?.trim_start();
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"').to_string())
    };
    text.split('{')
        .filter_map(|obj| {
            let name = field(obj, "name")?;
            let us: f64 = field(obj, "sdpa_us")?.parse().ok()?;
            Some((name, us, field(obj, "sdpa_backend").unwrap_or_default()))
        })
        .collect()
}
