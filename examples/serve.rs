//! serve: a continuous-batching loop over a multi-layer cache, the way an app embeds quantkv.
//!
//! Requests with varied prompt lengths arrive over time and share a system prompt (automatic
//! prefix caching serves it from cached blocks); each step batches every decoding sequence with
//! chunked prefill of the waiting prompts; some requests fork into two samples (their blocks are
//! shared, copy-on-write on the first write into a shared partial block), some decode
//! speculatively (three draft tokens per step, two rolled back with `truncate`); finished
//! requests are freed, and when the pool is full the youngest request is preempted and
//! recomputed later. Per step an app makes five calls:
//!
//! ```text
//! let step = blocks.schedule(&batch)?;                       // slots, block table
//! let plan = BatchPlan::new(&ctx, cache.config(), &step.input())?;
//! cache.copy_blocks(&ctx, &mut enc, &step.copies)?;          // copy-on-write, all layers
//! for l in 0..layers {                                       // inside the model's layer loop
//!     cache.write_and_attend(&ctx, &mut enc, k, v, &Attention { plan: &plan, layer, q, out, params })?;
//! }
//! ```
//!
//! There is no model here: Q, K and V come from random pools (the cache does not care what
//! produced them), and sampled tokens are pseudo-random. `--check` compares layer 0's output of
//! sampled steps with the f64 reference on the rows the cache holds at the manager's slots.
//!
//!   cargo run --release --example serve                      (small: runs on lavapipe in CI)
//!   cargo run --release --example serve -- --big --mode all  (a 32-layer model on a real GPU)
//!
//! Options: --mode <id|all> --requests N --layers N --cache-mib N --seed N --big, --check (the
//! default: every 7th step small, every 100th big) or --no-check.

use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use quantkv::reference::attention::RefGeometry;
use quantkv::reference::rng::SplitMix64;
use quantkv::*;

#[derive(Clone, Debug)]
struct Opts {
    modes: Vec<KvQuantMode>,
    layers: u32,
    kv_heads: u32,
    q_heads: u32,
    head_size: u32,
    block_size: u32,
    cache_mib: f64,
    requests: usize,
    system_len: usize,
    prompt: (usize, usize),
    gen: (usize, usize),
    /// Prefill tokens per step.
    chunk: usize,
    max_batch: usize,
    /// Mean steps between arrivals.
    arrival: u64,
    check_every: usize,
    seed: u64,
}

impl Opts {
    fn parse() -> Result<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let big = args.iter().any(|a| a == "--big");
        let mut o = if big {
            Opts {
                modes: vec![KvQuantMode::None],
                layers: 32,
                kv_heads: 8,
                q_heads: 32,
                head_size: 128,
                block_size: 16,
                cache_mib: 8192.0,
                requests: 96,
                system_len: 256,
                prompt: (64, 1024),
                gen: (32, 160),
                chunk: 1024,
                max_batch: 32,
                arrival: 2,
                check_every: 100,
                seed: 1,
            }
        } else {
            Opts {
                modes: vec![KvQuantMode::None],
                layers: 2,
                kv_heads: 2,
                q_heads: 8,
                head_size: 64,
                block_size: 16,
                cache_mib: 0.3,
                requests: 16,
                system_len: 40,
                prompt: (8, 120),
                gen: (4, 24),
                chunk: 96,
                max_batch: 8,
                arrival: 2,
                check_every: 7,
                seed: 1,
            }
        };
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .map(|i| {
                    args.get(i + 1)
                        .cloned()
                        .with_context(|| format!("{name} needs a value"))
                })
                .transpose()
        };
        if let Some(m) = value("--mode")? {
            o.modes = if m == "all" {
                KvQuantMode::ALL.to_vec()
            } else {
                match KvQuantMode::ALL.iter().find(|x| x.id() == m) {
                    Some(&x) => vec![x],
                    None => bail!("unknown mode {m}"),
                }
            };
        }
        for (name, field) in [
            ("--requests", &mut o.requests),
            ("--system", &mut o.system_len),
            ("--max-batch", &mut o.max_batch),
        ] {
            if let Some(v) = value(name)? {
                *field = v.parse()?;
            }
        }
        if let Some(v) = value("--layers")? {
            o.layers = v.parse()?;
        }
        if let Some(v) = value("--cache-mib")? {
            o.cache_mib = v.parse()?;
        }
        if let Some(v) = value("--seed")? {
            o.seed = v.parse()?;
        }
        if args.iter().any(|a| a == "--no-check") {
            o.check_every = 0;
        }
        Ok(o)
    }
}

/// One request's life.
struct Request {
    arrive: u64,
    prompt: Vec<u32>,
    gen: usize,
    /// Fork into two samples after the prompt.
    fork: bool,
    /// Decode three draft tokens per step, keep one.
    speculative: bool,
    /// Live sequences (one, or two after a fork), with tokens generated so far.
    seqs: Vec<(SeqId, usize)>,
    /// Prompt tokens still to prefill (of the first sequence).
    pending: usize,
    done: bool,
}

#[derive(Default, Debug)]
struct Stats {
    steps: u64,
    prefill_tokens: u64,
    decode_tokens: u64,
    wall_s: f64,
    peak_used_blocks: u32,
    peak_seqs: u32,
    peak_saved_blocks: u64,
    copies: u64,
    /// Layer calls whose write ran inside the decode kernel (`write_and_attend`).
    fused_calls: u64,
    truncations: u64,
    forks: u64,
    preemptions: u64,
    prefix_hit_tokens: u64,
    checked: u64,
    worst: f64,
}

fn main() -> Result<()> {
    let o = Opts::parse()?;
    let ctx = Context::new()?;
    println!("adapter : {}", ctx.adapter());
    println!(
        "model   : {} layers, {} q heads, {} kv heads, head size {}, block {}; cache budget {} MiB per mode",
        o.layers, o.q_heads, o.kv_heads, o.head_size, o.block_size, o.cache_mib
    );
    let mut rows = Vec::new();
    for &mode in &o.modes {
        let s = run(&ctx, &o, mode)?;
        rows.push((mode, s));
    }
    println!(
        "\n{:<20} {:>6} {:>9} {:>9} {:>8} {:>9} {:>10} {:>10} {:>7} {:>6} {:>6}",
        "mode",
        "blocks",
        "tok/s",
        "decode/s",
        "peak %",
        "peak seqs",
        "saved MiB",
        "hit tok",
        "copies",
        "preempt",
        "check"
    );
    for (mode, s) in &rows {
        println!(
            "{:<20} {:>6} {:>9.0} {:>9.0} {:>8.1} {:>9} {:>10.1} {:>10} {:>7} {:>6} {:>6}",
            mode.id(),
            s.1,
            (s.0.prefill_tokens + s.0.decode_tokens) as f64 / s.0.wall_s,
            s.0.decode_tokens as f64 / s.0.wall_s,
            100.0 * s.0.peak_used_blocks as f64 / s.1 as f64,
            s.0.peak_seqs,
            s.0.peak_saved_blocks as f64 * s.2 as f64 / (1 << 20) as f64,
            s.0.prefix_hit_tokens,
            s.0.copies,
            s.0.preemptions,
            if s.0.checked > 0 {
                format!("{:.0e}", s.0.worst)
            } else {
                "-".into()
            },
        );
    }
    println!("(tok/s: wall clock, host and GPU, prefill + decode tokens; saved: peak bytes that prefix sharing and forks did not allocate)");
    Ok(())
}

/// Runs every request through one mode's cache; returns the stats, the block count and the
/// bytes of one block (all layers, K and V, scales).
fn run(ctx: &Context, o: &Opts, mode: KvQuantMode) -> Result<(Stats, u32, u64)> {
    let mut rng = SplitMix64::new(o.seed);
    let probe = CacheConfig {
        num_layers: o.layers,
        num_blocks: 1,
        block_size: o.block_size,
        num_kv_heads: o.kv_heads,
        head_size: o.head_size,
        mode,
        dtype: Dtype::F16,
        ..Default::default()
    };
    let block_bytes = probe.footprint()?.bytes_per_token * o.block_size as u64;
    let want =
        (o.cache_mib * (1 << 20) as f64 / block_bytes as f64).clamp(8.0, u32::MAX as f64) as u32;
    let mut cache = KvCache::new_largest(
        ctx,
        &CacheConfig {
            num_blocks: want,
            ..probe
        },
        8,
    )?;
    let cfg = *cache.config();
    if modes::backend(mode)?.uses_tensor_scales() {
        for l in 0..o.layers as usize {
            cache.set_tensor_scales(l, 4.0 / 448.0, 4.0 / 448.0)?;
        }
    }
    let mut blocks = BlockManager::new(&cfg).with_prefix_caching(true);
    let (hq, hkv, d) = (
        o.q_heads as usize,
        o.kv_heads as usize,
        o.head_size as usize,
    );
    // Random inputs, reused: each step takes a window of them.
    let max_tokens = o.chunk + 3 * 2 * o.max_batch;
    let pool_rows = 2 * max_tokens;
    let normal = |rng: &mut SplitMix64, n: usize| -> Vec<f64> {
        (0..n).map(|_| Dtype::F16.round(rng.normal())).collect()
    };
    let q_host = normal(&mut rng, pool_rows * hq * d);
    let k_host = normal(&mut rng, pool_rows * hkv * d);
    let v_host = normal(&mut rng, pool_rows * hkv * d);
    let q_pool = ctx.try_upload("q pool", &Dtype::F16.encode(&q_host))?;
    let k_pool = ctx.try_upload("k pool", &Dtype::F16.encode(&k_host))?;
    let v_pool = ctx.try_upload("v pool", &Dtype::F16.encode(&v_host))?;
    let out = ctx.try_zeroed("out", (max_tokens * hq * d * 2) as u64)?;
    let io = Io {
        q: q_pool,
        k: k_pool,
        v: v_pool,
        out,
    };
    let params = AttentionParams {
        num_q_heads: o.q_heads,
        softmax_scale: 1.0 / (d as f32).sqrt(),
        ..Default::default()
    };

    let system: Vec<u32> = (0..o.system_len).map(|_| rng.below(32000) as u32).collect();
    let mut t = 0u64;
    let mut reqs: Vec<Request> = (0..o.requests)
        .map(|i| {
            t += rng.below(2 * o.arrival + 1);
            let n = o.prompt.0 + rng.below((o.prompt.1 - o.prompt.0) as u64 + 1) as usize;
            let mut prompt = if i % 4 == 3 {
                Vec::new()
            } else {
                system.clone()
            };
            prompt.extend((0..n).map(|_| rng.below(32000) as u32));
            Request {
                arrive: t,
                prompt,
                gen: o.gen.0 + rng.below((o.gen.1 - o.gen.0) as u64 + 1) as usize,
                fork: i % 5 == 1,
                speculative: i % 6 == 2,
                seqs: Vec::new(),
                pending: 0,
                done: false,
            }
        })
        .collect();

    let bar = ProgressBar::new(o.requests as u64).with_style(
        ProgressStyle::with_template("{prefix:>20} [{bar:30}] {pos}/{len} requests {msg}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(mode.id());
    // Compile what the steps will use before the clock starts (what an app does at load).
    let t0 = Instant::now();
    cache.warm_up(ctx, &[params], |_, _| {})?;
    let warm_s = t0.elapsed().as_secs_f64();
    let mut s = Stats::default();
    let mut saved = None;
    let start = Instant::now();
    let mut step_no = 0u64;
    while reqs.iter().any(|r| !r.done) {
        step_no += 1;
        // Admit arrivals in order while the pool can hold their prompts next to what runs (a
        // preempted request comes back the same way and is recomputed).
        let running = reqs
            .iter()
            .filter(|r| !r.done && !r.seqs.is_empty())
            .count();
        let waiting = reqs
            .iter_mut()
            .filter(|r| !r.done && r.seqs.is_empty() && r.arrive <= step_no);
        for (running, r) in (running..).zip(waiting) {
            let need = r.prompt.len().div_ceil(o.block_size as usize) + 2 * running;
            if running >= o.max_batch || blocks.stats().free_blocks < need as u32 {
                break;
            }
            let (id, held) = blocks.create_with_prompt(&r.prompt);
            s.prefix_hit_tokens += held as u64;
            r.seqs.push((id, 0));
            r.pending = r.prompt.len() - held;
        }
        // The batch: decoding sequences first, then prefill chunks within the token budget.
        let mut batch: Vec<(SeqId, Vec<u32>)> = Vec::new();
        let mut budget = o.chunk;
        for r in reqs
            .iter()
            .filter(|r| !r.done && !r.seqs.is_empty() && r.pending == 0)
        {
            for &(id, _) in &r.seqs {
                if batch.len() < o.max_batch {
                    let n = if r.speculative { 3 } else { 1 };
                    batch.push((id, (0..n).map(|_| rng.below(32000) as u32).collect()));
                }
            }
        }
        let n_decode = batch.len();
        for r in reqs
            .iter()
            .filter(|r| !r.done && !r.seqs.is_empty() && r.pending > 0)
        {
            if budget == 0 || batch.len() >= o.max_batch {
                break;
            }
            let id = r.seqs[0].0;
            let at = r.prompt.len() - r.pending;
            let n = r.pending.min(budget);
            budget -= n;
            batch.push((id, r.prompt[at..at + n].to_vec()));
        }
        if batch.is_empty() {
            continue; // waiting for arrivals
        }
        let refs: Vec<(SeqId, &[u32])> = batch.iter().map(|(i, t)| (*i, &t[..])).collect();
        // When the pool is full: decode alone (prompts wait), else preempt the youngest
        // running request (free it; it is recomputed later, its prompt mostly from the
        // prefix cache).
        let full = |e: &Error| matches!(e, Error::OutOfBlocks { .. });
        let step = match blocks.schedule(&refs) {
            Ok(step) => Some(step),
            Err(e) if full(&e) && n_decode > 0 => match blocks.schedule(&refs[..n_decode]) {
                Ok(step) => Some(step),
                Err(e) if full(&e) => None,
                Err(e) => return Err(e.into()),
            },
            Err(e) if full(&e) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(step) = step else {
            let running = reqs
                .iter()
                .filter(|r| !r.done && !r.seqs.is_empty())
                .count();
            if running <= 1 {
                bail!("one request does not fit the cache: enlarge --cache-mib");
            }
            let r = reqs
                .iter_mut()
                .rev()
                .find(|r| !r.done && !r.seqs.is_empty())
                .expect("counted");
            for (id, _) in r.seqs.drain(..) {
                blocks.free(id)?;
            }
            r.arrive = step_no + 1;
            s.preemptions += 1;
            continue;
        };
        let first = (step_no as usize * 7919) % (pool_rows - step.num_tokens() + 1);
        s.fused_calls += run_step(ctx, &cache, &step, &io, first, &params)? as u64;
        s.steps += 1;
        s.copies += step.copies.len() as u64;
        // The stats before finished sequences are freed.
        let st = blocks.stats();
        s.peak_used_blocks = s.peak_used_blocks.max(st.num_blocks - st.free_blocks);
        s.peak_seqs = s.peak_seqs.max(st.sequences);
        let used = (st.num_blocks - st.free_blocks) as u64;
        s.peak_saved_blocks = s
            .peak_saved_blocks
            .max(st.logical_blocks.saturating_sub(used));
        if o.check_every > 0 && (step_no as usize).is_multiple_of(o.check_every) {
            let worst = check(ctx, &cache, &step, &q_host, first, &io.out, &params)?;
            s.worst = s.worst.max(worst);
            s.checked += 1;
        }
        // Advance every request in the batch.
        for r in reqs.iter_mut().filter(|r| !r.done && !r.seqs.is_empty()) {
            let in_batch = |id: SeqId| step.seqs.contains(&id);
            if r.pending > 0 {
                if let Some(rows) = step.rows_of(r.seqs[0].0) {
                    let got = rows.len();
                    r.pending -= got;
                    s.prefill_tokens += got as u64;
                    if r.pending == 0 && r.fork {
                        let c = blocks.fork(r.seqs[0].0)?;
                        r.seqs.push((c, 0));
                        s.forks += 1;
                    }
                }
                continue;
            }
            for (id, made) in r.seqs.iter_mut() {
                if !in_batch(*id) {
                    continue;
                }
                if r.speculative {
                    // Keep one of the three drafts.
                    let len = blocks.len(*id)?;
                    blocks.truncate(*id, len - 2)?;
                    s.truncations += 1;
                }
                *made += 1;
                s.decode_tokens += 1;
            }
            if r.seqs.iter().all(|&(_, made)| made >= r.gen) {
                if saved.is_none() {
                    // "Resume this chat tomorrow": the first finished conversation goes to disk.
                    let path =
                        std::env::temp_dir().join(format!("quantkv-serve-{}.qkv", mode.id()));
                    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
                    let info = cache.save_snapshot(ctx, &blocks, &[r.seqs[0].0], &mut f)?;
                    saved = Some((path, blocks.tokens(r.seqs[0].0)?.to_vec(), info));
                }
                for (id, _) in r.seqs.drain(..) {
                    blocks.free(id)?;
                }
                r.done = true;
                bar.inc(1);
            }
        }
        bar.set_message(format!(
            "step {step_no}, {} blocks free of {}",
            blocks.stats().free_blocks,
            cfg.num_blocks
        ));
    }
    ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
    s.wall_s = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    blocks.check()?;
    let st = blocks.stats();
    if st.sequences != 0 || st.free_blocks != cfg.num_blocks {
        bail!("blocks leaked: {st:?}");
    }
    // Load the saved conversation back (new block ids) and continue it by one token.
    if let Some((path, tokens, info)) = saved {
        let mut f = std::io::BufReader::new(std::fs::File::open(&path)?);
        let loaded = cache.load_snapshot(ctx, &mut blocks, &mut f)?;
        let id = loaded.seqs[0];
        if blocks.tokens(id)? != &tokens[..] {
            bail!("the loaded conversation has other tokens");
        }
        let step = blocks.schedule(&[(id, &[7][..])])?;
        run_step(ctx, &cache, &step, &io, 0, &params)?;
        let worst = check(ctx, &cache, &step, &q_host, 0, &io.out, &params)?;
        println!(
            "{:<20} snapshot: {} tokens, {} blocks, {:.1} KiB on disk; resumed, next token checked (worst {worst:.1e})",
            mode.id(),
            info.tokens,
            info.blocks,
            info.bytes as f64 / 1024.0
        );
        blocks.free(id)?;
        std::fs::remove_file(&path)?;
    }
    println!(
        "{:<20} warm-up {warm_s:.2} s; {} steps ({} layer calls with the write fused), {} prefill + {} decode tokens in {:.2} s; {} forks, {} rollbacks, {} copy-on-write, {} preempted; {} checks, worst {:.1e}",
        mode.id(),
        s.steps,
        s.fused_calls,
        s.prefill_tokens,
        s.decode_tokens,
        s.wall_s,
        s.forks,
        s.truncations,
        s.copies,
        s.preemptions,
        s.checked,
        s.worst
    );
    Ok((s, cfg.num_blocks, block_bytes))
}

/// The step's inputs (random pools the steps take windows of) and output.
struct Io {
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    out: wgpu::Buffer,
}

/// Records and submits one step: copy-on-write copies, then every layer's write and attention
/// (what a model's forward pass does around its own projections). Inputs are rows
/// `first..first + n` of the pools. Returns the layer calls whose write ran inside the decode
/// kernel.
fn run_step(
    ctx: &Context,
    cache: &KvCache,
    step: &ScheduledStep,
    io: &Io,
    first: usize,
    params: &AttentionParams<'_>,
) -> Result<usize> {
    let cfg = cache.config();
    let n = step.num_tokens() as u32;
    let plan = BatchPlan::new(ctx, cfg, &step.input())?;
    let d = cfg.head_size;
    let view = |buf, heads: u32| {
        let row = heads * d;
        Tensor::view(
            buf,
            Dtype::F16,
            [n, heads, d],
            first as u64 * row as u64 * 2,
            [row, d],
        )
    };
    let (q, k, v) = (
        view(&io.q, params.num_q_heads),
        view(&io.k, cfg.num_kv_heads),
        view(&io.v, cfg.num_kv_heads),
    );
    let out = Tensor::new(&io.out, Dtype::F16, [n, params.num_q_heads, d]);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    cache.copy_blocks(ctx, &mut enc, &step.copies)?;
    // One call per layer: the write and the attention (one dispatch where the decode kernel
    // writes the step's rows itself).
    let mut fused = 0;
    for l in 0..cfg.num_layers as usize {
        let layer = cache.layer(l)?;
        let a = Attention {
            plan: &plan,
            layer,
            q,
            out,
            params,
        };
        fused += cache.write_and_attend(ctx, &mut enc, k, v, &a)? as usize;
    }
    ctx.queue.submit([enc.finish()]);
    Ok(fused)
}

/// Layer 0's output for up to two sequences of `step` vs the f64 reference on the rows the cache
/// holds at the manager's slots. Returns the worst `|gpu − ref| / (1 + |ref|)`; fails past the
/// spec's level-2 bound for f16.
fn check(
    ctx: &Context,
    cache: &KvCache,
    step: &ScheduledStep,
    q_host: &[f64],
    first: usize,
    out: &wgpu::Buffer,
    params: &AttentionParams<'_>,
) -> Result<f64> {
    let cfg = cache.config();
    let (hkv, d, bs) = (
        cfg.num_kv_heads as usize,
        cfg.head_size as usize,
        cfg.block_size as usize,
    );
    let hq = params.num_q_heads as usize;
    let backend = modes::backend(cfg.mode)?;
    let layer = cache.layer(0)?;
    let read = |b: &wgpu::Buffer| ctx.read_buffer(b);
    let (kp, vp, ks, vs) = (
        read(layer.k())?,
        read(layer.v())?,
        read(layer.k_scale())?,
        read(layer.v_scale())?,
    );
    let got = Dtype::F16.decode(&read(out)?);
    let rb = cache.footprint().row_bytes as usize;
    let mut worst = 0.0f64;
    for i in 0..step.seqs.len().min(2) {
        let id = step.seqs[i];
        let len = step.seqused_k[i] as usize;
        let (q0, q1) = (
            step.cu_seqlens_q[i] as usize,
            step.cu_seqlens_q[i + 1] as usize,
        );
        // This sequence's rows, compact: logical block c at block c.
        let table = &step.block_table[i * step.block_table_stride..][..len.div_ceil(bs)];
        let mut kc = vec![0.0; table.len() * bs * hkv * d];
        let mut vc = kc.clone();
        for pos in 0..len {
            let slot = table[pos / bs] as usize * bs + pos % bs;
            for h in 0..hkv {
                let r = slot * hkv + h;
                for (is_v, pool, sc, dst) in [(false, &kp, &ks, &mut kc), (true, &vp, &vs, &mut vc)]
                {
                    let codec = layer.row_codec(is_v);
                    let scale = if backend.needs_scale_caches() {
                        f32::from_le_bytes(sc[r * 4..r * 4 + 4].try_into()?)
                    } else {
                        codec.tensor_scale
                    };
                    let row = backend.dequantize_row(&pool[r * rb..(r + 1) * rb], scale, &codec);
                    dst[(pos * hkv + h) * d..][..d].copy_from_slice(&row);
                }
            }
        }
        let bt: Vec<i32> = (0..table.len() as i32).collect();
        let cu = [0, (q1 - q0) as i32];
        let su = [len as i32];
        let sub = StepInput {
            cu_seqlens_q: &cu,
            seqused_k: &su,
            block_table: &bt,
            block_table_stride: bt.len(),
            ..Default::default()
        };
        let q = &q_host[(first + q0) * hq * d..(first + q1) * hq * d];
        let g = RefGeometry {
            block_size: bs,
            num_kv_heads: hkv,
            head_size: d,
        };
        let want = reference::attention::attention_on_codes(
            backend.as_ref(),
            cfg.dtype,
            q,
            &kc,
            &vc,
            g,
            &sub,
            params,
        );
        for (a, b) in got[q0 * hq * d..q1 * hq * d].iter().zip(&want) {
            worst = worst.max((a - b).abs() / (1.0 + b.abs()));
        }
        if worst > 2e-3 {
            bail!("{id:?}: layer 0 output differs from the reference by {worst:.2e}");
        }
    }
    Ok(worst)
}
