//! The per-step metadata object ([`BatchPlan`]): validated once per model step, uploaded once,
//! then shared by every layer's `reshape_and_cache` and `unified_attention` call of that step
//! (spec §10.6). Its buffers are never rewritten while it lives, so many calls recorded into one
//! encoder all read the values they were recorded with.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::config::CacheConfig;
use crate::error::{invalid, shape, Result};
use crate::gpu::context::{StepBuffers, StepPool};
use crate::gpu::uniforms::StepUniform;
use crate::gpu::Context;
use crate::kernels::StepGpu;
pub use crate::kernels::StepSummary;

/// qq_bias (spec §6.1 step 5): f32 `[rows, cols]` row-major; for query row i of a sequence and
/// key `kr = key_pos - context_len` with `0 <= kr < cols`, `S += bias[i][kr]`. Shared by all
/// heads and sequences; `rows` must cover the longest query.
#[derive(Clone, Copy, Debug)]
pub struct QqBias<'a> {
    /// Row-major values, `rows * cols` long.
    pub values: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
}

/// Bidirectional prefix ranges (spec §6.2): `[num_seqs, ranges_per_seq, 2]` i32, each an
/// inclusive `[start, end]` in absolute positions, valid iff `start < end`; start >= end is
/// padding. Inside a range attention ignores causality and the window.
#[derive(Clone, Copy, Debug)]
pub struct PrefixRanges<'a> {
    /// Flattened `[num_seqs, ranges_per_seq, 2]`.
    pub ranges: &'a [i32],
    /// Ranges per sequence.
    pub ranges_per_seq: usize,
}

/// Host-side metadata of one model step.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepInput<'a> {
    /// `[num_write_tokens]`: paged slot (`block * block_size + offset`) of each written token;
    /// negative = padding, skipped.
    pub slot_mapping: &'a [i32],
    /// `[num_seqs + 1]`: prefix sums of query lengths, starting at 0.
    pub cu_seqlens_q: &'a [i32],
    /// `[num_seqs]`: KV length of each sequence including its new tokens.
    pub seqused_k: &'a [i32],
    /// `[num_seqs, block_table_stride]`: physical block of each logical block.
    pub block_table: &'a [i32],
    /// Row stride (columns) of `block_table`.
    pub block_table_stride: usize,
    /// Optional qq_bias.
    pub qq_bias: Option<QqBias<'a>>,
    /// Optional bidirectional prefix ranges.
    pub prefix_ranges: Option<PrefixRanges<'a>>,
}

impl StepInput<'_> {
    /// Checks every rule of spec §10.6 against a cache of `num_blocks` x `block_size`.
    /// Pure: no GPU needed.
    pub fn validate(&self, num_blocks: u32, block_size: u32) -> Result<StepSummary> {
        let total_slots = num_blocks as i64 * block_size as i64;
        let mut seen = HashSet::with_capacity(self.slot_mapping.len());
        for (t, &slot) in self.slot_mapping.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            if slot as i64 >= total_slots {
                return Err(invalid(
                    "slot_mapping",
                    format!("token {t}: slot {slot} >= num_blocks*block_size = {total_slots}"),
                ));
            }
            if !seen.insert(slot) {
                return Err(invalid(
                    "slot_mapping",
                    format!("token {t}: slot {slot} is written twice in one call"),
                ));
            }
        }
        let cu = self.cu_seqlens_q;
        let num_seqs = self.seqused_k.len();
        if num_seqs == 0 && cu.len() <= 1 {
            return Ok(StepSummary {
                num_write: self.slot_mapping.len() as u32,
                ..Default::default()
            });
        }
        if cu.len() != num_seqs + 1 {
            return Err(shape(
                "cu_seqlens_q",
                format!("{} entries (num_seqs + 1)", num_seqs + 1),
                format!("{} entries", cu.len()),
            ));
        }
        if cu[0] != 0 {
            return Err(invalid(
                "cu_seqlens_q",
                format!("must start at 0, starts at {}", cu[0]),
            ));
        }
        let stride = self.block_table_stride;
        if num_seqs.checked_mul(stride) != Some(self.block_table.len()) {
            return Err(shape(
                "block_table",
                format!("{num_seqs} x {stride} entries"),
                format!("{} entries", self.block_table.len()),
            ));
        }
        if stride > u32::MAX as usize || self.block_table.len() > i32::MAX as usize {
            return Err(invalid(
                "block_table",
                format!(
                    "stride {stride} or {} entries too large",
                    self.block_table.len()
                ),
            ));
        }
        let mut max_q = 0;
        let mut max_k = 0;
        for s in 0..num_seqs {
            // i64: differences of caller i32 values cannot overflow.
            let q_len = cu[s + 1] as i64 - cu[s] as i64;
            if q_len < 0 {
                return Err(invalid(
                    "cu_seqlens_q",
                    format!(
                        "not monotonic at sequence {s}: {} then {}",
                        cu[s],
                        cu[s + 1]
                    ),
                ));
            }
            let kv = self.seqused_k[s] as i64;
            if kv < q_len {
                return Err(invalid(
                    "seqused_k",
                    format!("sequence {s}: seqused_k {kv} < query length {q_len}"),
                ));
            }
            let need = (kv as usize).div_ceil(block_size as usize);
            if need > stride {
                return Err(invalid(
                    "block_table",
                    format!("sequence {s} needs {need} blocks for {kv} keys, table has {stride} columns"),
                ));
            }
            // One pass without an early exit (it vectorizes), then the first bad column for
            // the message.
            let outside = |b: i32| (b < 0) | (b as u32 >= num_blocks);
            let row = &self.block_table[s * stride..s * stride + need];
            if row.iter().fold(false, |bad, &b| bad | outside(b)) {
                let c = row.iter().position(|&b| outside(b)).unwrap_or(0);
                let b = row[c];
                return Err(invalid(
                    "block_table",
                    format!("sequence {s}, column {c}: block {b} outside [0, {num_blocks})"),
                ));
            }
            max_q = max_q.max(q_len as u32);
            max_k = max_k.max(kv as u32);
            if cu[s + 1] < 0 {
                return Err(invalid(
                    "cu_seqlens_q",
                    format!("negative entry {}", cu[s + 1]),
                ));
            }
        }
        if let Some(qq) = self.qq_bias {
            if qq.rows.checked_mul(qq.cols) != Some(qq.values.len())
                || qq.values.len() > i32::MAX as usize
            {
                return Err(shape(
                    "qq_bias",
                    format!("{} x {} values", qq.rows, qq.cols),
                    format!("{} values", qq.values.len()),
                ));
            }
            if qq.values.iter().any(|v| !v.is_finite()) {
                return Err(invalid("qq_bias", "values must be finite"));
            }
            if qq.rows < max_q as usize {
                return Err(invalid(
                    "qq_bias",
                    format!("{} rows, smaller than the longest query ({max_q})", qq.rows),
                ));
            }
        }
        if let Some(mm) = self.prefix_ranges {
            let want = num_seqs
                .checked_mul(mm.ranges_per_seq)
                .and_then(|n| n.checked_mul(2));
            if want != Some(mm.ranges.len()) || mm.ranges.len() > i32::MAX as usize {
                return Err(shape(
                    "prefix_ranges",
                    format!("{num_seqs} x {} x 2 values", mm.ranges_per_seq),
                    format!("{} values", mm.ranges.len()),
                ));
            }
            for s in 0..num_seqs {
                for r in 0..mm.ranges_per_seq {
                    let i = (s * mm.ranges_per_seq + r) * 2;
                    let (a, b) = (mm.ranges[i], mm.ranges[i + 1]);
                    if a < b && (a < 0 || b >= self.seqused_k[s]) {
                        return Err(invalid(
                            "prefix_ranges",
                            format!(
                                "sequence {s} range {r}: [{a}, {b}] outside [0, {})",
                                self.seqused_k[s]
                            ),
                        ));
                    }
                }
            }
        }
        Ok(StepSummary {
            num_seqs: num_seqs as u32,
            num_tokens_q: cu[num_seqs] as u32,
            num_write: self.slot_mapping.len() as u32,
            max_seqlen_q: max_q,
            max_seqlen_k: max_k,
        })
    }
}

/// A validated, uploaded step. Create one per model step with [`BatchPlan::new`]; every layer's
/// calls of that step take it by reference.
pub struct BatchPlan {
    pub(crate) gpu: StepGpu,
    /// The pooled buffers this plan writes, returned to `pool` when it drops.
    bufs: Option<StepBuffers>,
    pool: StepPool,
}

impl Drop for BatchPlan {
    fn drop(&mut self) {
        if let Some(mut b) = self.bufs.take() {
            // The step's scratch buffers go back with the plan's buffers.
            let take = |m: &mut Mutex<Option<std::sync::Arc<wgpu::Buffer>>>| {
                m.get_mut().unwrap_or_else(|p| p.into_inner()).take()
            };
            b.partials = take(&mut self.gpu.partials);
            b.rotated_q = take(&mut self.gpu.rotated_q);
            b.arrivals = take(&mut self.gpu.arrivals);
            self.pool.put(b);
        }
    }
}

impl BatchPlan {
    /// Validates `input` against the cache geometry of `config` and uploads it.
    ///
    /// The plan's two buffers come from a small pool of the context and return to it when the
    /// plan drops, so a steady stream of steps allocates nothing and layer calls find their
    /// bind groups cached. Keep a plan alive until the command buffers that recorded its calls
    /// have been submitted: the next plan rewrites the pooled buffers, and that write takes
    /// effect at the next submission.
    pub fn new(ctx: &Context, config: &CacheConfig, input: &StepInput<'_>) -> Result<Self> {
        config.validate()?;
        ctx.alive()?;
        let summary = input.validate(config.num_blocks, config.block_size)?;
        let (decode_seqs, decode_max_k) = decode_rows(input, &summary);
        let meta_words = input.slot_mapping.len()
            + input.cu_seqlens_q.len()
            + input.seqused_k.len()
            + input.block_table.len()
            + input.qq_bias.map_or(0, |q| q.values.len())
            + input.prefix_ranges.map_or(0, |m| m.ranges.len());
        let mut bufs = ctx.take_step_buffers(4 * meta_words.max(1) as u64)?;
        let mut meta = std::mem::take(&mut bufs.scratch);
        meta.clear();
        let mut u = StepUniform {
            num_seqs: summary.num_seqs,
            num_tokens_q: summary.num_tokens_q,
            num_write: summary.num_write,
            bt_stride: input.block_table_stride as u32,
            ..Default::default()
        };
        let push = |meta: &mut Vec<i32>, xs: &[i32]| -> u32 {
            let off = meta.len() as u32;
            meta.extend_from_slice(xs);
            off
        };
        u.off_slot = push(&mut meta, input.slot_mapping);
        u.off_cu = push(&mut meta, input.cu_seqlens_q);
        u.off_su = push(&mut meta, input.seqused_k);
        u.off_bt = push(&mut meta, input.block_table);
        if let Some(qq) = input.qq_bias {
            u.off_qq = meta.len() as u32;
            meta.extend(qq.values.iter().map(|v| v.to_bits() as i32));
            u.qq_rows = qq.rows as u32;
            u.qq_cols = qq.cols as u32;
        }
        if let Some(mm) = input.prefix_ranges {
            u.off_mm = push(&mut meta, mm.ranges);
            u.mm_per_seq = mm.ranges_per_seq as u32;
        }
        if meta.is_empty() {
            meta.push(0);
        }
        debug_assert_eq!(meta.len(), meta_words.max(1));
        ctx.queue
            .write_buffer(&bufs.uniform, 0, bytemuck::bytes_of(&u));
        upload_changed(&ctx.queue, &bufs.meta, &bufs.written, &meta);
        // `meta` is what the buffer holds now; the old words become the next plan's scratch.
        bufs.scratch = std::mem::replace(&mut bufs.written, meta);
        let partials = bufs.partials.take();
        let rotated_q = bufs.rotated_q.take();
        let arrivals = bufs.arrivals.take();
        Ok(Self {
            pool: ctx.step_pool(),
            gpu: StepGpu {
                summary,
                num_blocks: config.num_blocks,
                block_size: config.block_size,
                uniform: bufs.uniform.clone(),
                meta: bufs.meta.clone(),
                has_qq: input.qq_bias.is_some(),
                has_mm: input.prefix_ranges.is_some(),
                writes_newest: writes_newest(input, &summary, config.block_size),
                decode_seqs,
                decode_max_k,
                partials: Mutex::new(partials),
                rotated_q: Mutex::new(rotated_q),
                arrivals: Mutex::new(arrivals),
            },
            bufs: Some(bufs),
        })
    }

    /// What validation learned about the step.
    pub fn summary(&self) -> StepSummary {
        self.gpu.summary
    }
}

/// Whether the step is a decode step whose writes are exactly its rows' newest keys: every
/// sequence has at most one query token, `slot_mapping` has one slot per query token, and each
/// non-negative slot is, through the block table, the slot of its sequence's position
/// `seqused_k - 1` (the key its own query reads last). Only then may the attention kernel
/// write the rows itself ([`crate::KvCache::write_and_attend`]). O(num_seqs) on a validated
/// input.
fn writes_newest(input: &StepInput<'_>, sum: &StepSummary, block_size: u32) -> bool {
    if sum.num_tokens_q == 0 || sum.max_seqlen_q > 1 || sum.num_write != sum.num_tokens_q {
        return false;
    }
    let (cu, bs) = (input.cu_seqlens_q, block_size as i64);
    (0..sum.num_seqs as usize).all(|s| {
        if cu[s + 1] == cu[s] {
            return true;
        }
        let slot = input.slot_mapping[cu[s] as usize];
        // Validation keeps seqused_k >= 1 here and the block-table column in range.
        let pos = input.seqused_k[s] as i64 - 1;
        let block = input.block_table[s * input.block_table_stride + (pos / bs) as usize];
        slot < 0 || slot as i64 == block as i64 * bs + pos % bs
    })
}

/// Sequences with exactly one query token and their longest KV length (validated input).
fn decode_rows(input: &StepInput<'_>, sum: &StepSummary) -> (u32, u32) {
    let cu = input.cu_seqlens_q;
    (0..sum.num_seqs as usize)
        .filter(|&s| cu[s + 1] - cu[s] == 1)
        .fold((0, 0), |(n, k), s| {
            (n + 1, k.max(input.seqused_k[s] as u32))
        })
}

/// Words compared (and written) at a time by [`upload_changed`]: 256 bytes.
const UPLOAD_CHUNK: usize = 64;

/// Most separate writes [`upload_changed`] issues; past that, one write from the first
/// changed chunk to the last.
const UPLOAD_MAX_RUNS: usize = 16;

/// The word ranges `[a, b)` of `new` that differ from `old` (the buffer's current words):
/// runs of changed [`UPLOAD_CHUNK`]-word chunks, adjacent ones merged, plus what lies past
/// `old`; at most [`UPLOAD_MAX_RUNS`] (else one covering range). Words past `new.len()` are
/// never read by the step that writes `new`, so they need no write. Held inline: a step
/// allocates nothing for it.
struct Runs {
    list: [(usize, usize); UPLOAD_MAX_RUNS],
    len: usize,
}

impl Runs {
    fn as_slice(&self) -> &[(usize, usize)] {
        &self.list[..self.len]
    }

    /// Adds `[a, b)`, merged into the last run where they touch; past the limit the runs
    /// become one range from the first run's start.
    fn add(&mut self, a: usize, b: usize) {
        if self.len > 0 && self.list[self.len - 1].1 == a {
            self.list[self.len - 1].1 = b;
        } else if self.len < UPLOAD_MAX_RUNS {
            self.list[self.len] = (a, b);
            self.len += 1;
        } else {
            self.list[0].1 = b;
            self.len = 1;
        }
    }
}

fn changed_runs(old: &[i32], new: &[i32]) -> Runs {
    let common = old.len().min(new.len());
    let mut runs = Runs {
        list: [(0, 0); UPLOAD_MAX_RUNS],
        len: 0,
    };
    for (i, (o, n)) in old[..common]
        .chunks(UPLOAD_CHUNK)
        .zip(new[..common].chunks(UPLOAD_CHUNK))
        .enumerate()
    {
        if o != n {
            let a = i * UPLOAD_CHUNK;
            runs.add(a, a + n.len());
        }
    }
    if new.len() > common {
        runs.add(common, new.len());
    }
    runs
}

/// Writes the words of `new` that differ from `old` (what `buf` holds once the queue's
/// earlier writes are done) into `buf`. A decode step changes a few words of its metadata
/// (slots, lengths, a block appended now and then), so this writes a few hundred bytes where
/// the whole block table (128 KiB at B=16 L=32k) went through a fresh staging buffer of
/// wgpu's before.
fn upload_changed(queue: &wgpu::Queue, buf: &wgpu::Buffer, old: &[i32], new: &[i32]) {
    for &(a, b) in changed_runs(old, new).as_slice() {
        queue.write_buffer(buf, 4 * a as u64, bytemuck::cast_slice(&new[a..b]));
    }
}

#[cfg(test)]
mod upload_tests {
    use super::{changed_runs, UPLOAD_CHUNK, UPLOAD_MAX_RUNS};

    /// `old` with `new`'s words of `runs` written over it (grown to `new`'s length).
    fn apply(old: &[i32], new: &[i32], runs: &[(usize, usize)]) -> Vec<i32> {
        let mut v = old.to_vec();
        v.resize(v.len().max(new.len()), i32::MIN);
        for &(a, b) in runs {
            v[a..b].copy_from_slice(&new[a..b]);
        }
        v
    }

    #[test]
    fn changed_runs_reproduce_the_new_words() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for case in 0..400 {
            let old: Vec<i32> = (0..rnd(3000)).map(|i| i as i32 * 7).collect();
            let mut new: Vec<i32> = old.clone();
            new.resize(rnd(3000), 5);
            // A few scattered changes (many in some cases, to pass the run limit).
            let changes = if case % 5 == 0 { 200 } else { rnd(6) };
            for _ in 0..changes {
                if !new.is_empty() {
                    let i = rnd(new.len());
                    new[i] = new[i].wrapping_add(1 + rnd(9) as i32);
                }
            }
            let runs = changed_runs(&old, &new);
            let runs = runs.as_slice();
            assert!(
                runs.len() <= UPLOAD_MAX_RUNS,
                "case {case}: {} runs",
                runs.len()
            );
            assert!(
                runs.iter().all(|&(a, b)| a < b && b <= new.len()),
                "case {case}"
            );
            let got = apply(&old, &new, runs);
            assert_eq!(&got[..new.len()], &new[..], "case {case}");
        }
    }

    #[test]
    fn unchanged_words_are_not_written_and_changes_stay_local() {
        let old: Vec<i32> = (0..10 * UPLOAD_CHUNK as i32).collect();
        assert!(changed_runs(&old, &old).as_slice().is_empty());
        assert!(changed_runs(&old, &old[..100]).as_slice().is_empty());
        let mut new = old.clone();
        new[3 * UPLOAD_CHUNK + 5] = -1;
        new[7 * UPLOAD_CHUNK] = -1;
        assert_eq!(
            changed_runs(&old, &new).as_slice(),
            [
                (3 * UPLOAD_CHUNK, 4 * UPLOAD_CHUNK),
                (7 * UPLOAD_CHUNK, 8 * UPLOAD_CHUNK)
            ]
        );
        // A fresh buffer (nothing written yet) takes everything.
        assert_eq!(changed_runs(&[], &new).as_slice(), [(0, new.len())]);
    }
}
