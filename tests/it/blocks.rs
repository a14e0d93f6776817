//! The block manager and KV snapshots: random operation sequences against a host model of
//! which token lives where, checked after every step on the GPU (bytes of every live token at
//! the slot the manager says, attention through the manager's metadata vs the f64 reference on
//! each sequence's own tokens), snapshot round trips and corrupt files.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Cursor;

use quantkv::reference::attention::RefGeometry;
use quantkv::reference::rng::SplitMix64;
use quantkv::*;

use crate::common::{self, CaseOut};

const Q_HEADS: u32 = 4;

fn config(mode: KvQuantMode, layers: u32, blocks: u32) -> CacheConfig {
    CacheConfig {
        num_layers: layers,
        num_blocks: blocks,
        block_size: 4,
        num_kv_heads: 2,
        head_size: 32,
        mode,
        dtype: Dtype::F16,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Host-only: the manager's bookkeeping.

/// No slot of a step lies in a block another live sequence holds, and the slots are distinct.
fn assert_writable(m: &BlockManager, step: &ScheduledStep) {
    let bs = m.block_size() as i32;
    for (i, &s) in step.slot_mapping.iter().enumerate() {
        assert_eq!(
            m.refcount((s / bs) as u32),
            1,
            "slot {s} of token {i} is in a shared block"
        );
        assert!(!step.slot_mapping[..i].contains(&s), "slot {s} twice");
    }
}

#[test]
fn random_operations_keep_the_invariants() {
    for prefix in [false, true] {
        let cfg = config(KvQuantMode::None, 1, 24);
        let mut m = BlockManager::new(&cfg).with_prefix_caching(prefix);
        let mut rng = SplitMix64::new(7 + prefix as u64);
        let mut live: Vec<SeqId> = Vec::new();
        let (mut full, mut steps) = (0, 0);
        for _ in 0..3000 {
            match rng.below(10) {
                0 | 1 if live.len() < 6 => {
                    // Prompts share a "system prompt" now and then.
                    let n = 1 + rng.below(14) as usize;
                    let mut p: Vec<u32> = (0..n).map(|_| rng.below(3) as u32).collect();
                    if rng.below(2) == 0 {
                        p.splice(0..0, [9, 9, 9, 9, 8, 8, 8, 8]);
                    }
                    let (id, held) = m.create_with_prompt(&p);
                    assert!(held < p.len() && held % 4 == 0);
                    assert_eq!(m.tokens(id).unwrap(), &p[..held]);
                    live.push(id);
                }
                2 if !live.is_empty() && live.len() < 6 => {
                    let p = live[rng.below(live.len() as u64) as usize];
                    let c = m.fork(p).unwrap();
                    assert_eq!(m.tokens(c).unwrap(), m.tokens(p).unwrap());
                    live.push(c);
                }
                3 if !live.is_empty() => {
                    let s = live[rng.below(live.len() as u64) as usize];
                    let len = m.len(s).unwrap();
                    let keep = rng.below(len as u64 + 1) as usize;
                    let before = m.tokens(s).unwrap()[..keep].to_vec();
                    m.truncate(s, keep).unwrap();
                    assert_eq!(m.tokens(s).unwrap(), &before[..]);
                }
                4 if !live.is_empty() => {
                    let i = rng.below(live.len() as u64) as usize;
                    m.free(live.swap_remove(i)).unwrap();
                }
                _ if !live.is_empty() => {
                    let k = 1 + rng.below(live.len() as u64) as usize;
                    let toks: Vec<Vec<u32>> = (0..k)
                        .map(|_| (0..1 + rng.below(6)).map(|_| rng.below(3) as u32).collect())
                        .collect();
                    let batch: Vec<(SeqId, &[u32])> = live[..k]
                        .iter()
                        .zip(&toks)
                        .map(|(&s, t)| (s, &t[..]))
                        .collect();
                    let before = m.stats();
                    let lens: Vec<usize> = live.iter().map(|&s| m.len(s).unwrap()).collect();
                    match m.schedule(&batch) {
                        Ok(step) => {
                            steps += 1;
                            assert_writable(&m, &step);
                            assert_eq!(
                                step.input().validate(24, 4).unwrap().num_write as usize,
                                step.num_tokens()
                            );
                        }
                        Err(Error::OutOfBlocks { needed, free }) => {
                            full += 1;
                            assert!(needed > free);
                            assert_eq!(m.stats(), before, "a refused step changed the counts");
                            let after: Vec<usize> =
                                live.iter().map(|&s| m.len(s).unwrap()).collect();
                            assert_eq!(lens, after, "a refused step changed a sequence");
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                _ => {}
            }
            m.check().unwrap();
        }
        assert!(steps > 500 && full > 10, "steps {steps}, refused {full}");
        for s in live {
            m.free(s).unwrap();
        }
        m.check().unwrap();
        let st = m.stats();
        assert_eq!(st.free_blocks, 24, "freed blocks must all come back");
        assert_eq!(st.sequences, 0);
        if prefix {
            assert!(
                st.prefix_hit_tokens > 0,
                "the shared prompt was never reused"
            );
        } else {
            assert_eq!(st.cached_free_blocks, 0);
        }
    }
}

#[test]
fn prefix_cache_reuses_and_evicts() {
    let cfg = config(KvQuantMode::None, 1, 6);
    let mut m = BlockManager::new(&cfg).with_prefix_caching(true);
    let prompt: Vec<u32> = (0..10).collect();
    let (a, held) = m.create_with_prompt(&prompt);
    assert_eq!(held, 0);
    m.schedule(&[(a, &prompt[..])]).unwrap();
    // Two full blocks are registered; a prompt with the same first 9 tokens reuses both.
    let mut other = prompt[..9].to_vec();
    other.push(77);
    let (b, held) = m.create_with_prompt(&other);
    assert_eq!(held, 8);
    assert_eq!(m.blocks(b).unwrap(), &m.blocks(a).unwrap()[..2]);
    // The whole prompt is never served from the cache: the last token is computed.
    let (c, held) = m.create_with_prompt(&prompt[..8]);
    assert_eq!(held, 4);
    // A different first block matches nothing, even with equal later blocks.
    let mut shifted = prompt.clone();
    shifted[0] = 99;
    let (d, held) = m.create_with_prompt(&shifted);
    assert_eq!(held, 0);
    for s in [a, b, c, d] {
        m.free(s).unwrap();
    }
    // Freed registered blocks stay reusable...
    assert_eq!(m.stats().cached_free_blocks, 2);
    let (e, held) = m.create_with_prompt(&prompt);
    assert_eq!(held, 8);
    m.free(e).unwrap();
    // ...until a step needs their space.
    let f = m.create();
    m.schedule(&[(f, &[5; 24][..])]).unwrap();
    assert_eq!(m.stats().cached_free_blocks, 0);
    m.free(f).unwrap();
    let (g, held) = m.create_with_prompt(&prompt);
    assert_eq!(held, 0);
    m.free(g).unwrap();
    m.check().unwrap();
}

#[test]
fn truncate_into_a_cached_block_unregisters_it() {
    let cfg = config(KvQuantMode::None, 1, 8);
    let mut m = BlockManager::new(&cfg).with_prefix_caching(true);
    let prompt: Vec<u32> = (0..9).collect();
    let (a, _) = m.create_with_prompt(&prompt);
    m.schedule(&[(a, &prompt[..])]).unwrap();
    // a alone holds its second block: rolling back into it makes it writable again, so it must
    // no longer match its old tokens.
    m.truncate(a, 6).unwrap();
    m.schedule(&[(a, &[50, 51][..])]).unwrap();
    let (b, held) = m.create_with_prompt(&prompt);
    assert_eq!(held, 4, "the rewritten block must not be served");
    // While shared, a rollback keeps the registration: the writer copies the block first.
    let (c, held) = m.create_with_prompt(&[0, 1, 2, 3, 4, 5, 50, 51, 60]);
    assert_eq!(held, 8);
    m.truncate(c, 5).unwrap();
    let step = m.schedule(&[(c, &[70][..])]).unwrap();
    assert_eq!(step.copies.len(), 1);
    assert_eq!(step.copies[0].src, m.blocks(a).unwrap()[1]);
    for s in [a, b, c] {
        m.free(s).unwrap();
    }
    m.check().unwrap();
}

#[test]
fn rejected_manager_calls() {
    let cfg = config(KvQuantMode::None, 1, 4);
    let mut m = BlockManager::new(&cfg);
    let a = m.create();
    let ghost = SeqId(999);
    let err = |r: Result<ScheduledStep>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(m.schedule(&[(ghost, &[1][..])])).contains("not a live sequence"));
    assert!(err(m.schedule(&[(a, &[][..])])).contains("no new tokens"));
    assert!(err(m.schedule(&[(a, &[1][..]), (a, &[2][..])])).contains("twice"));
    assert!(matches!(
        m.schedule(&[(a, &[0; 17][..])]),
        Err(Error::OutOfBlocks { needed: 5, free: 4 })
    ));
    assert_eq!(m.len(a).unwrap(), 0);
    m.schedule(&[(a, &[1, 2][..])]).unwrap();
    assert!(m.truncate(a, 3).is_err());
    assert!(m.fork(ghost).is_err());
    assert!(m.free(ghost).is_err());
    m.free(a).unwrap();
    assert!(m.free(a).is_err(), "double free");
    m.check().unwrap();
}

// ---------------------------------------------------------------------------------------------
// GPU: the manager's metadata drives real writes and attention.

fn hash_of(x: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// One stored row as read back: codes and the row's scale.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    bytes: Vec<u8>,
    scale: f32,
}

/// A whole layer's K and V pools and scale caches, read back.
struct Pools {
    bufs: [Vec<u8>; 4],
}

/// Host model and GPU harness of one cache driven through a manager.
struct Harness<'a> {
    ctx: &'a Context,
    cfg: CacheConfig,
    cache: KvCache,
    m: BlockManager,
    /// What was stored for (layer, K or V, token prefix ending at a position, kv head): model
    /// K/V depend only on the prefix, so sequences with equal prefixes hold equal rows.
    rows: HashMap<(usize, bool, u64, usize), Row>,
    rng: SplitMix64,
}

impl<'a> Harness<'a> {
    fn new(ctx: &'a Context, cfg: CacheConfig, prefix: bool, seed: u64) -> Self {
        let mut cache = KvCache::new(ctx, &cfg).unwrap();
        if modes::backend(cfg.mode).unwrap().uses_tensor_scales() {
            for l in 0..cfg.num_layers as usize {
                cache.set_tensor_scales(l, 0.02, 0.015).unwrap();
            }
        }
        Self {
            ctx,
            cfg,
            cache,
            m: BlockManager::new(&cfg).with_prefix_caching(prefix),
            rows: HashMap::new(),
            rng: SplitMix64::new(seed),
        }
    }

    fn geometry(&self) -> (usize, usize, usize, usize) {
        let c = &self.cfg;
        (
            c.num_kv_heads as usize,
            c.head_size as usize,
            c.block_size as usize,
            Q_HEADS as usize,
        )
    }

    /// Model K or V of the token ending `prefix` in layer `l`: a function of the prefix only.
    fn model_row(&self, l: usize, is_v: bool, prefix: &[u32]) -> Vec<f64> {
        let (hkv, d, _, _) = self.geometry();
        let mut r = SplitMix64::new(hash_of((l, is_v, prefix)));
        (0..hkv * d)
            .map(|_| self.cfg.dtype.round(r.normal()))
            .collect()
    }

    fn read_pools(&self, l: usize) -> Pools {
        let layer = self.cache.layer(l).unwrap();
        let rd = |b: &wgpu::Buffer| self.ctx.read_buffer(b).unwrap();
        Pools {
            bufs: [
                rd(layer.k()),
                rd(layer.v()),
                rd(layer.k_scale()),
                rd(layer.v_scale()),
            ],
        }
    }

    fn stored(&self, pools: &Pools, l: usize, is_v: bool, slot: usize, h: usize) -> Row {
        let (hkv, _, _, _) = self.geometry();
        let rb = self.cache.footprint().row_bytes as usize;
        let r = slot * hkv + h;
        let codes = &pools.bufs[is_v as usize];
        let scales = &pools.bufs[2 + is_v as usize];
        let backend = modes::backend(self.cfg.mode).unwrap();
        let scale = if backend.needs_scale_caches() {
            f32::from_le_bytes(scales[r * 4..r * 4 + 4].try_into().unwrap())
        } else {
            // Per-tensor modes: the layer's scale (1 for `none`).
            self.cache.layer(l).unwrap().row_codec(is_v).tensor_scale
        };
        Row {
            bytes: codes[r * rb..(r + 1) * rb].to_vec(),
            scale,
        }
    }

    fn slot_of(&self, s: SeqId, pos: usize) -> usize {
        let bs = self.cfg.block_size as usize;
        self.m.blocks(s).unwrap()[pos / bs] as usize * bs + pos % bs
    }

    /// Every live token's rows sit at the slot the manager names, as first written.
    fn check_layout(&self) {
        let (hkv, _, _, _) = self.geometry();
        for l in 0..self.cfg.num_layers as usize {
            let pools = self.read_pools(l);
            for s in self.m.sequences() {
                let toks = self.m.tokens(s).unwrap();
                for pos in 0..toks.len() {
                    let key = hash_of(&toks[..=pos]);
                    for is_v in [false, true] {
                        for h in 0..hkv {
                            let want = &self.rows[&(l, is_v, key, h)];
                            let got = self.stored(&pools, l, is_v, self.slot_of(s, pos), h);
                            assert_eq!(
                                &got, want,
                                "layer {l} {s:?} position {pos} head {h} (V {is_v}): wrong row"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Schedules `batch`, records copies, writes and attention for every layer, submits, then
    /// checks the stored rows and each layer's output against the reference.
    fn step(&mut self, batch: &[(SeqId, Vec<u32>)]) -> Result<()> {
        let (hkv, d, bs, hq) = self.geometry();
        let refs: Vec<(SeqId, &[u32])> = batch.iter().map(|(s, t)| (*s, &t[..])).collect();
        let step = self.m.schedule(&refs)?;
        assert_writable(&self.m, &step);
        self.m.check().unwrap();
        let plan = BatchPlan::new(self.ctx, &self.cfg, &step.input())?;
        let n = step.num_tokens();
        let dt = self.cfg.dtype;
        let layers = self.cfg.num_layers as usize;
        // Inputs of every layer: K/V from the model, Q random.
        let mut kv_in = Vec::new();
        let mut q_in = Vec::new();
        for l in 0..layers {
            let (mut k, mut v) = (Vec::new(), Vec::new());
            for (s, _) in batch {
                let toks = self.m.tokens(*s).unwrap();
                let new = batch.iter().find(|(o, _)| o == s).unwrap().1.len();
                for pos in toks.len() - new..toks.len() {
                    k.extend(self.model_row(l, false, &toks[..=pos]));
                    v.extend(self.model_row(l, true, &toks[..=pos]));
                }
            }
            let q: Vec<f64> = (0..n * hq * d)
                .map(|_| dt.round(self.rng.normal()))
                .collect();
            kv_in.push((
                self.ctx.upload("k", &dt.encode(&k)),
                self.ctx.upload("v", &dt.encode(&v)),
                k,
                v,
            ));
            q_in.push(q);
        }
        let outs: Vec<wgpu::Buffer> = (0..layers)
            .map(|_| self.ctx.zeroed("out", (n * hq * d * 2) as u64))
            .collect();
        let qbufs: Vec<wgpu::Buffer> = q_in
            .iter()
            .map(|q| self.ctx.upload("q", &dt.encode(q)))
            .collect();
        let params = AttentionParams {
            num_q_heads: Q_HEADS,
            softmax_scale: 1.0 / (d as f32).sqrt(),
            ..Default::default()
        };
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.cache.copy_blocks(self.ctx, &mut enc, &step.copies)?;
        let shape = [n as u32, hkv as u32, d as u32];
        let qshape = [n as u32, Q_HEADS, d as u32];
        for l in 0..layers {
            let (kb, vb, _, _) = &kv_in[l];
            self.cache.reshape_and_cache(
                self.ctx,
                &mut enc,
                &plan,
                l,
                Tensor::new(kb, dt, shape),
                Tensor::new(vb, dt, shape),
            )?;
            self.cache.unified_attention(
                self.ctx,
                &mut enc,
                &Attention {
                    plan: &plan,
                    layer: self.cache.layer(l)?,
                    q: Tensor::new(&qbufs[l], dt, qshape),
                    out: Tensor::new(&outs[l], dt, qshape),
                    params: &params,
                },
            )?;
        }
        self.ctx.queue.submit([enc.finish()]);
        // Record the new rows (a prefix stored before must come out identical: same input).
        let backend = modes::backend(self.cfg.mode).unwrap();
        for (l, (_, _, k_in, v_in)) in kv_in.iter().enumerate() {
            let pools = self.read_pools(l);
            let mut t = 0;
            for (s, new) in batch {
                let toks = self.m.tokens(*s).unwrap().to_vec();
                for pos in toks.len() - new.len()..toks.len() {
                    let key = hash_of(&toks[..=pos]);
                    for is_v in [false, true] {
                        for h in 0..hkv {
                            let got =
                                self.stored(&pools, l, is_v, step.slot_mapping[t] as usize, h);
                            if backend.stores_rows_as_given() {
                                let src = if is_v { v_in } else { k_in };
                                let want =
                                    dt.encode(&src[(t * hkv + h) * d..(t * hkv + h + 1) * d]);
                                assert_eq!(got.bytes, want, "mode none stores rows as given");
                            }
                            let prev = self.rows.insert((l, is_v, key, h), got.clone());
                            if let Some(p) = prev {
                                assert_eq!(p, got, "same prefix, different stored row");
                            }
                        }
                    }
                    t += 1;
                }
            }
        }
        self.check_layout();
        // Attention vs the reference on each sequence's own tokens, laid out contiguously.
        let cpu_step_blocks: Vec<usize> = step
            .seqused_k
            .iter()
            .map(|&k| (k as usize).div_ceil(bs))
            .collect();
        let stride = cpu_step_blocks.iter().copied().max().unwrap_or(1);
        let nblk = cpu_step_blocks.iter().sum::<usize>();
        let mut table = vec![0i32; batch.len() * stride];
        let mut next = 0;
        for (i, &nb) in cpu_step_blocks.iter().enumerate() {
            for c in 0..nb {
                table[i * stride + c] = (next + c) as i32;
            }
            next += nb;
        }
        let g = RefGeometry {
            block_size: bs,
            num_kv_heads: hkv,
            head_size: d,
        };
        for l in 0..layers {
            let mut kc = vec![0.0; nblk * bs * hkv * d];
            let mut vc = kc.clone();
            let layer = self.cache.layer(l)?;
            for (i, (s, _)) in batch.iter().enumerate() {
                let toks = self.m.tokens(*s).unwrap();
                for pos in 0..toks.len() {
                    let key = hash_of(&toks[..=pos]);
                    let slot = table[i * stride + pos / bs] as usize * bs + pos % bs;
                    for h in 0..hkv {
                        for (is_v, dst) in [(false, &mut kc), (true, &mut vc)] {
                            let row = &self.rows[&(l, is_v, key, h)];
                            let deq = backend.dequantize_row(
                                &row.bytes,
                                row.scale,
                                &layer.row_codec(is_v),
                            );
                            let at = (slot * hkv + h) * d;
                            dst[at..at + d].copy_from_slice(&deq);
                        }
                    }
                }
            }
            let ref_step = StepInput {
                slot_mapping: &[],
                cu_seqlens_q: &step.cu_seqlens_q,
                seqused_k: &step.seqused_k,
                block_table: &table,
                block_table_stride: stride,
                ..Default::default()
            };
            let cpu = reference::attention::attention_on_codes(
                backend.as_ref(),
                dt,
                &q_in[l],
                &kc,
                &vc,
                g,
                &ref_step,
                &params,
            );
            let gpu = dt.decode(&self.ctx.read_buffer(&outs[l])?);
            common::assert_close(
                &CaseOut {
                    gpu,
                    cpu,
                    label: format!("{:?} layer {l} step {:?}", self.cfg.mode, step.seqused_k),
                    fp8_scale: None,
                    cpu_orig: Vec::new(),
                },
                dt,
            );
        }
        Ok(())
    }

    fn tokens(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.rng.below(4) as u32).collect()
    }
}

/// Random create / prefill chunks / decode / fork / truncate / free / snapshot round trips on
/// a 2-layer cache, every step checked on the GPU.
fn random_run(mode: KvQuantMode, steps: usize, seed: u64) {
    let Some(ctx) = common::context() else { return };
    let cfg = config(mode, 2, 20);
    let mut h = Harness::new(ctx, cfg, true, seed);
    let system: Vec<u32> = vec![3, 1, 3, 1, 2, 2];
    let mut live: Vec<SeqId> = Vec::new();
    let (mut refused, mut copies, mut loads) = (0, 0, 0);
    for i in 0..steps {
        // Housekeeping before the step.
        // Every run forks and round-trips a snapshot at least once.
        let op = match i {
            _ if i == steps / 3 && !live.is_empty() => 2,
            _ if i == steps / 2 && live.len() > 1 => 5,
            _ => h.rng.below(8),
        };
        match op {
            0 | 1 if live.len() < 4 => {
                let mut p = system.clone();
                let n = 1 + h.rng.below(5) as usize;
                let extra = h.tokens(n);
                p.extend(extra);
                let (id, held) = h.m.create_with_prompt(&p);
                let rest = p[held..].to_vec();
                live.push(id);
                // The prompt's remaining tokens as a prefill chunk now.
                match h.step(&[(id, rest)]) {
                    Ok(()) => {}
                    Err(Error::OutOfBlocks { .. }) => {
                        refused += 1;
                        h.m.free(live.pop().unwrap()).unwrap();
                    }
                    Err(e) => panic!("step {i}: {e}"),
                }
            }
            2 if !live.is_empty() && live.len() < 5 => {
                let p = live[h.rng.below(live.len() as u64) as usize];
                let c = h.m.fork(p).unwrap();
                live.insert(0, c); // first in the next batch: its first write copies
            }
            3 if !live.is_empty() => {
                let s = live[h.rng.below(live.len() as u64) as usize];
                let len = h.m.len(s).unwrap();
                let cut = h.rng.below(4).min(len as u64) as usize;
                h.m.truncate(s, len - cut).unwrap();
            }
            4 if live.len() > 1 => {
                let s = live.swap_remove(h.rng.below(live.len() as u64) as usize);
                h.m.free(s).unwrap();
            }
            5 if live.len() > 1 => {
                // Snapshot round trip of a subset: save, free, load (new ids), save again:
                // the two files are byte-identical.
                let k = 1 + h.rng.below(live.len() as u64 - 1) as usize;
                let subset: Vec<SeqId> = live.drain(..k).collect();
                let toks: Vec<Vec<u32>> = subset
                    .iter()
                    .map(|&s| h.m.tokens(s).unwrap().to_vec())
                    .collect();
                let mut file = Vec::new();
                h.cache
                    .save_snapshot(ctx, &h.m, &subset, &mut file)
                    .unwrap();
                for &s in &subset {
                    h.m.free(s).unwrap();
                }
                // Occupy a block first so the load lands on other block ids.
                let filler = h.m.create();
                let _ = h.step(&[(filler, vec![0])]);
                // Freed blocks that forks still hold stay taken: end sequences until it fits.
                let info = loop {
                    match h
                        .cache
                        .load_snapshot(ctx, &mut h.m, &mut Cursor::new(&file))
                    {
                        Ok(info) => break info,
                        Err(Error::OutOfBlocks { .. }) if !live.is_empty() => {
                            h.m.free(live.pop().unwrap()).unwrap();
                        }
                        Err(e) => panic!("step {i}: load: {e}"),
                    }
                };
                h.m.check().unwrap();
                for (s, t) in info.seqs.iter().zip(&toks) {
                    assert_eq!(h.m.tokens(*s).unwrap(), &t[..]);
                }
                let mut again = Vec::new();
                h.cache
                    .save_snapshot(ctx, &h.m, &info.seqs, &mut again)
                    .unwrap();
                assert!(again == file, "snapshot round trip is not byte-identical");
                h.check_layout();
                h.m.free(filler).unwrap();
                live.extend(info.seqs);
                loads += 1;
            }
            _ => {}
        }
        if live.is_empty() {
            continue;
        }
        // The step: a random subset, decode rows and short prefill chunks mixed.
        let k = 1 + h.rng.below(live.len() as u64) as usize;
        let batch: Vec<(SeqId, Vec<u32>)> = live[..k]
            .iter()
            .map(|&s| {
                let n = if h.rng.below(3) == 0 {
                    1 + h.rng.below(6) as usize
                } else {
                    1
                };
                (s, (0..n).map(|_| h.rng.below(4) as u32).collect())
            })
            .collect();
        let shared_partial = batch.iter().any(|(s, _)| {
            let len = h.m.len(*s).unwrap();
            !len.is_multiple_of(4) && h.m.refcount(*h.m.blocks(*s).unwrap().last().unwrap()) > 1
        });
        match h.step(&batch) {
            Ok(()) => copies += shared_partial as usize,
            Err(Error::OutOfBlocks { .. }) => {
                refused += 1;
                // Make room: the longest sequence ends.
                let longest = *live.iter().max_by_key(|&&s| h.m.len(s).unwrap()).unwrap();
                live.retain(|&s| s != longest);
                h.m.free(longest).unwrap();
            }
            Err(e) => panic!("step {i}: {e}"),
        }
    }
    eprintln!(
        "{mode:?}: {steps} steps, {copies} with copy-on-write, {loads} snapshot loads, {refused} refused, {:?}",
        h.m.stats()
    );
    assert!(
        copies > 0 && loads > 0,
        "the run never exercised copy-on-write or a load"
    );
    for s in live {
        h.m.free(s).unwrap();
    }
    h.m.check().unwrap();
    assert_eq!(h.m.stats().free_blocks, 20);
}

#[test]
fn random_operations_on_the_gpu_none() {
    random_run(KvQuantMode::None, 40, 11);
}

#[test]
fn random_operations_on_the_gpu_int4() {
    random_run(KvQuantMode::Int4PerTokenHead, 24, 12);
}

#[test]
#[ignore = "extended matrix: every mode"]
fn extended_random_operations_every_mode() {
    for (i, &mode) in KvQuantMode::ALL.iter().enumerate() {
        random_run(mode, 60, 100 + i as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots: another cache, rejected files.

/// A cache with two sequences (one forked from the other) written through a manager.
fn filled(ctx: &Context, mode: KvQuantMode) -> (Harness<'_>, Vec<SeqId>) {
    let mut h = Harness::new(ctx, config(mode, 2, 12), false, 5);
    let a = h.m.create();
    h.step(&[(a, vec![1, 2, 3, 4, 5, 6])]).unwrap();
    let b = h.m.fork(a).unwrap();
    h.step(&[(b, vec![7, 8])]).unwrap();
    (h, vec![a, b])
}

#[test]
fn snapshot_loads_into_another_cache() {
    let Some(ctx) = common::context() else { return };
    let (a, seqs) = filled(ctx, KvQuantMode::Fp8PerTokenHead);
    let mut file = Vec::new();
    let info = a.cache.save_snapshot(ctx, &a.m, &seqs, &mut file).unwrap();
    assert_eq!(
        (info.blocks, info.tokens, info.bytes),
        (3, 14, file.len() as u64)
    );
    // Another cache of the same format, with blocks already in use: ids are remapped.
    let mut b = Harness::new(ctx, config(KvQuantMode::Fp8PerTokenHead, 2, 12), false, 6);
    b.rows = a.rows.clone();
    let busy = b.m.create();
    b.step(&[(busy, vec![9; 7])]).unwrap();
    let loaded = b
        .cache
        .load_snapshot(ctx, &mut b.m, &mut Cursor::new(&file))
        .unwrap();
    assert_eq!(loaded.blocks, 3);
    assert_ne!(
        b.m.blocks(loaded.seqs[0]).unwrap(),
        a.m.blocks(seqs[0]).unwrap()
    );
    assert_eq!(
        b.m.stats().shared_blocks,
        1,
        "the fork's sharing survives the load"
    );
    b.check_layout();
    // Both loaded sequences keep decoding next to the cache's own sequence.
    b.step(&[
        (loaded.seqs[0], vec![4]),
        (busy, vec![3]),
        (loaded.seqs[1], vec![5]),
    ])
    .unwrap();
}

#[test]
fn rejected_snapshots_change_nothing() {
    let Some(ctx) = common::context() else { return };
    let (a, seqs) = filled(ctx, KvQuantMode::Int8PerTokenHead);
    let mut file = Vec::new();
    a.cache.save_snapshot(ctx, &a.m, &seqs, &mut file).unwrap();
    let mut t = Harness::new(ctx, config(KvQuantMode::Int8PerTokenHead, 2, 12), true, 8);
    let s = t.m.create();
    t.step(&[(s, vec![1, 1, 1, 1, 2])]).unwrap();
    let before_pools: Vec<Pools> = (0..2).map(|l| t.read_pools(l)).collect();
    let before = (t.m.stats(), t.m.blocks(s).unwrap().to_vec());
    let mut expect = |bytes: &[u8], what: &str, ok: &dyn Fn(&Error) -> bool| {
        let r = t
            .cache
            .load_snapshot(ctx, &mut t.m, &mut Cursor::new(bytes));
        let e = r.err().unwrap_or_else(|| panic!("{what}: loaded"));
        assert!(ok(&e), "{what}: {e}");
        assert_eq!(
            (t.m.stats(), t.m.blocks(s).unwrap().to_vec()),
            before,
            "{what}"
        );
        t.m.check().unwrap();
    };
    let corrupt = |e: &Error| matches!(e, Error::SnapshotCorrupt { .. });
    // Truncated anywhere: in the magic, the header, a layer, the end marker.
    for cut in [
        0,
        5,
        14,
        40,
        file.len() / 2,
        file.len() - 20,
        file.len() - 1,
    ] {
        expect(&file[..cut], &format!("cut at {cut}"), &corrupt);
    }
    // One flipped bit in the header, in layer 0's data, in layer 1's checksum.
    let header_len = u32::from_le_bytes(file[12..16].try_into().unwrap()) as usize;
    for at in [20, 16 + header_len + 4 + 8 + 3, file.len() - 9] {
        let mut f = file.clone();
        f[at] ^= 0x10;
        expect(&f, &format!("bit flip at {at}"), &corrupt);
    }
    let mut f = file.clone();
    f[0] = b'X';
    expect(&f, "magic", &corrupt);
    let mut f = file.clone();
    f[8] = 2;
    expect(&f, "version", &|e| {
        matches!(
            e,
            Error::SnapshotMismatch {
                field: "version",
                ..
            }
        )
    });
    // Another format: mode, block size, layers, per-tensor scales.
    let other = |cfg: CacheConfig, scales: Option<(f32, f32)>| {
        let mut h = Harness::new(ctx, cfg, false, 9);
        if let Some((k, v)) = scales {
            for l in 0..cfg.num_layers as usize {
                h.cache.set_tensor_scales(l, k, v).unwrap();
            }
        }
        let id = h.m.create();
        h.step(&[(id, vec![1, 2, 3])]).unwrap();
        let mut f = Vec::new();
        h.cache.save_snapshot(ctx, &h.m, &[id], &mut f).unwrap();
        f
    };
    let base = config(KvQuantMode::Int8PerTokenHead, 2, 12);
    for (cfg, field) in [
        (config(KvQuantMode::Fp8PerTokenHead, 2, 12), "mode"),
        (
            CacheConfig {
                block_size: 8,
                ..base
            },
            "block_size",
        ),
        (config(KvQuantMode::Int8PerTokenHead, 1, 12), "num_layers"),
        (
            CacheConfig {
                options: ModeOptions::default().with_int8_rounding(modes::Int8Rounding::Truncate),
                ..base
            },
            "option_bits",
        ),
    ] {
        let f = other(cfg, None);
        expect(
            &f,
            field,
            &|e| matches!(e, Error::SnapshotMismatch { field: x, .. } if *x == field),
        );
    }
    let f8 = config(KvQuantMode::Fp8PerTensor, 2, 12);
    let mut pt = Harness::new(ctx, f8, false, 10);
    let f = other(f8, Some((0.5, 0.25)));
    let e = pt
        .cache
        .load_snapshot(ctx, &mut pt.m, &mut Cursor::new(&f))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::SnapshotMismatch {
                field: "tensor_scales",
                ..
            }
        ),
        "{e}"
    );
    // A manager of another pool.
    let mut wrong = BlockManager::new(&config(KvQuantMode::Int8PerTokenHead, 2, 40));
    let e = t
        .cache
        .load_snapshot(ctx, &mut wrong, &mut Cursor::new(&file))
        .unwrap_err();
    assert!(e.to_string().contains("manages 40 blocks"), "{e}");
    assert_eq!(wrong.stats().free_blocks, 40);
    let e = t
        .cache
        .save_snapshot(ctx, &wrong, &[], &mut Vec::new())
        .unwrap_err();
    assert!(e.to_string().contains("manages 40 blocks"), "{e}");
    // Too big for the free blocks.
    let mut small = Harness::new(ctx, config(KvQuantMode::Int8PerTokenHead, 2, 2), false, 11);
    let e = small
        .cache
        .load_snapshot(ctx, &mut small.m, &mut Cursor::new(&file))
        .unwrap_err();
    assert!(
        matches!(e, Error::OutOfBlocks { needed: 3, free: 2 }),
        "{e}"
    );
    assert_eq!(small.m.stats().free_blocks, 2);
    // Nothing reached the GPU.
    for (l, p) in before_pools.iter().enumerate() {
        assert!(
            t.read_pools(l).bufs == p.bufs,
            "a rejected load wrote layer {l}"
        );
    }
}
