//! Sequences over a paged cache: which physical blocks belong to which sequence, the slot mapping
//! and block table of each step, prefix sharing with reference-counted blocks, copy-on-write,
//! truncation (rollback), and optional automatic prefix caching by token ids.
//!
//! Pure host code: the only GPU work it implies is the block copies of copy-on-write, which the
//! caller records with [`crate::KvCache::copy_blocks`] before the step's writes.
//!
//! Invariants (checked by [`BlockManager::check`], and by the randomized tests after every step):
//! - every live sequence of `len` tokens owns exactly `ceil(len / block_size)` blocks;
//! - a block's reference count is the number of live sequences whose table holds it;
//! - a block is free (or an evictable cached block) exactly when its count is 0;
//! - every slot a step writes lies in a block whose count is 1 (no sequence ever writes into a
//!   block another live sequence reads);
//! - a cached (prefix-registered) block is full, and its contents never change while it stays
//!   registered.

use std::collections::{BTreeMap, HashMap};

use crate::config::CacheConfig;
use crate::error::{invalid, Error, Result};
use crate::step::StepInput;

/// A sequence's handle. Ids are never reused by one manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// One block copy of copy-on-write: every layer's K and V codes and scales of block `src` are
/// copied to block `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCopy {
    /// Source block.
    pub src: u32,
    /// Destination block.
    pub dst: u32,
}

/// The metadata of one scheduled step: what [`StepInput`] borrows, owned.
#[derive(Clone, Debug, Default)]
pub struct ScheduledStep {
    /// The sequences of the step, in batch order (row `i` of the block table, query tokens
    /// `cu_seqlens_q[i]..cu_seqlens_q[i + 1]`).
    pub seqs: Vec<SeqId>,
    /// Slot of each new token, in batch order.
    pub slot_mapping: Vec<i32>,
    /// Prefix sums of the new tokens per sequence.
    pub cu_seqlens_q: Vec<i32>,
    /// Each sequence's length after the step.
    pub seqused_k: Vec<i32>,
    /// `[seqs, block_table_stride]` physical blocks; unused entries are 0.
    pub block_table: Vec<i32>,
    /// Columns of `block_table`.
    pub block_table_stride: usize,
    /// Copies to record (with [`crate::KvCache::copy_blocks`]) before the step's writes.
    pub copies: Vec<BlockCopy>,
}

impl ScheduledStep {
    /// The step as [`StepInput`] (for [`crate::BatchPlan::new`]).
    pub fn input(&self) -> StepInput<'_> {
        StepInput {
            slot_mapping: &self.slot_mapping,
            cu_seqlens_q: &self.cu_seqlens_q,
            seqused_k: &self.seqused_k,
            block_table: &self.block_table,
            block_table_stride: self.block_table_stride,
            ..Default::default()
        }
    }

    /// New tokens in the step.
    pub fn num_tokens(&self) -> usize {
        self.slot_mapping.len()
    }

    /// The query rows (rows of q and out, and of the key/value inputs) of `seq`'s new tokens
    /// in this step; the last one is the row whose output predicts its next token. `None` when
    /// `seq` is not in the step.
    pub fn rows_of(&self, seq: SeqId) -> Option<std::ops::Range<usize>> {
        let i = self.seqs.iter().position(|&s| s == seq)?;
        Some(self.cu_seqlens_q[i] as usize..self.cu_seqlens_q[i + 1] as usize)
    }
}

#[derive(Clone, Debug, Default)]
struct Seq {
    /// Token ids of every cached position.
    tokens: Vec<u32>,
    /// Physical block of each logical block.
    blocks: Vec<u32>,
}

/// Key of a cached full block: the block holding the previous logical block (with that block's
/// registration generation) and this block's token ids. Keys compare exactly, so a hit is never
/// a hash collision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PrefixKey {
    parent: Option<(u32, u64)>,
    tokens: Box<[u32]>,
}

/// Counters of a [`BlockManager`].
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Blocks in the pool.
    pub num_blocks: u32,
    /// Blocks a step can allocate now (free plus evictable cached blocks).
    pub free_blocks: u32,
    /// Of those, blocks that hold a cached prefix (reused by a matching prompt until evicted).
    pub cached_free_blocks: u32,
    /// Blocks held by more than one live sequence.
    pub shared_blocks: u32,
    /// Sum over live sequences of their block counts (what they would hold without sharing).
    pub logical_blocks: u64,
    /// Live sequences.
    pub sequences: u32,
    /// Tokens served from the prefix cache since the manager was made.
    pub prefix_hit_tokens: u64,
}

/// Host-side block manager over one cache's pool (see the module docs for its invariants).
///
/// ```
/// use quantkv::*;
/// let cfg = CacheConfig { num_blocks: 8, block_size: 4, ..Default::default() };
/// let mut m = BlockManager::new(&cfg);
/// let a = m.create();
/// let step = m.schedule(&[(a, &[1, 2, 3, 4, 5][..])]).unwrap(); // a 5-token prefill
/// assert_eq!(step.seqused_k, [5]);
/// assert_eq!(step.rows_of(a), Some(0..5)); // its q/out rows; row 4 predicts the next token
/// let b = m.fork(a).unwrap(); // b shares a's two blocks
/// let step = m.schedule(&[(b, &[9][..])]).unwrap(); // b writes into the shared partial block:
/// assert_eq!(step.copies.len(), 1); // it is copied first
/// m.truncate(a, 2).unwrap(); // roll a back to 2 tokens
/// m.free(a).unwrap();
/// m.free(b).unwrap();
/// assert_eq!(m.stats().free_blocks, 8);
/// ```
#[derive(Clone, Debug)]
pub struct BlockManager {
    num_blocks: u32,
    block_size: u32,
    refcount: Vec<u32>,
    /// Free blocks holding nothing worth keeping (a stack).
    clean: Vec<u32>,
    /// Free blocks that hold a registered prefix, oldest first (tick of release -> block).
    evictable: BTreeMap<u64, u32>,
    /// Release tick of each evictable block.
    evict_tick: Vec<u64>,
    tick: u64,
    seqs: HashMap<SeqId, Seq>,
    next_seq: u64,
    prefix_caching: bool,
    prefix: HashMap<PrefixKey, u32>,
    /// The key a block is registered under.
    registered: Vec<Option<PrefixKey>>,
    /// Bumped each time a block's registration ends: keys naming an older generation of a
    /// parent no longer match anything.
    generation: Vec<u64>,
    prefix_hit_tokens: u64,
}

impl BlockManager {
    /// A manager of `config.num_blocks` blocks of `config.block_size` tokens, every block free,
    /// prefix caching off.
    pub fn new(config: &CacheConfig) -> Self {
        let n = config.num_blocks;
        Self {
            num_blocks: n,
            block_size: config.block_size.max(1),
            refcount: vec![0; n as usize],
            // Popped from the end: block 0 is handed out first.
            clean: (0..n).rev().collect(),
            evictable: BTreeMap::new(),
            evict_tick: vec![0; n as usize],
            tick: 0,
            seqs: HashMap::new(),
            next_seq: 0,
            prefix_caching: false,
            prefix: HashMap::new(),
            registered: vec![None; n as usize],
            generation: vec![0; n as usize],
            prefix_hit_tokens: 0,
        }
    }

    /// Turns automatic prefix caching on or off: full blocks are registered under their token
    /// ids (and those of every block before them), and [`BlockManager::create_with_prompt`]
    /// reuses the registered blocks of a matching prompt prefix. Freed registered blocks stay
    /// reusable until a step needs their space (least recently freed evicted first). Turning it
    /// off forgets every registration.
    pub fn with_prefix_caching(mut self, on: bool) -> Self {
        self.prefix_caching = on;
        if !on {
            for b in 0..self.num_blocks {
                self.unregister(b);
            }
        }
        self
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Counters.
    pub fn stats(&self) -> BlockStats {
        BlockStats {
            num_blocks: self.num_blocks,
            free_blocks: self.available() as u32,
            cached_free_blocks: self.evictable.len() as u32,
            shared_blocks: self.refcount.iter().filter(|&&c| c > 1).count() as u32,
            logical_blocks: self.seqs.values().map(|s| s.blocks.len() as u64).sum(),
            sequences: self.seqs.len() as u32,
            prefix_hit_tokens: self.prefix_hit_tokens,
        }
    }

    /// Live sequences, in no particular order.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// Tokens cached for `seq`.
    pub fn len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.get(seq)?.tokens.len())
    }

    /// Token ids of `seq`'s cached positions.
    pub fn tokens(&self, seq: SeqId) -> Result<&[u32]> {
        Ok(&self.get(seq)?.tokens)
    }

    /// Physical blocks of `seq`, in logical order.
    pub fn blocks(&self, seq: SeqId) -> Result<&[u32]> {
        Ok(&self.get(seq)?.blocks)
    }

    /// How many live sequences hold `block` (0 when free).
    pub fn refcount(&self, block: u32) -> u32 {
        self.refcount.get(block as usize).copied().unwrap_or(0)
    }

    /// A new empty sequence.
    pub fn create(&mut self) -> SeqId {
        let id = SeqId(self.next_seq);
        self.next_seq += 1;
        self.seqs.insert(id, Seq::default());
        id
    }

    /// A new sequence for `prompt`: with prefix caching on, the longest run of registered full
    /// blocks matching the prompt's start is shared (never the whole prompt: at least its last
    /// token is left to compute, so the step that computes it yields logits). Returns the
    /// sequence and how many prompt tokens it already holds; schedule `prompt[held..]` next.
    pub fn create_with_prompt(&mut self, prompt: &[u32]) -> (SeqId, usize) {
        let id = self.create();
        if !self.prefix_caching || prompt.is_empty() {
            return (id, 0);
        }
        let bs = self.block_size as usize;
        let usable = (prompt.len() - 1) / bs;
        let mut parent = None;
        let mut found = Vec::new();
        for chunk in prompt.chunks_exact(bs).take(usable) {
            let key = PrefixKey {
                parent,
                tokens: chunk.into(),
            };
            let Some(&b) = self.prefix.get(&key) else {
                break;
            };
            found.push(b);
            parent = Some((b, self.generation[b as usize]));
        }
        for &b in &found {
            self.retain(b);
        }
        let held = found.len() * bs;
        self.prefix_hit_tokens += held as u64;
        let s = self.seqs.get_mut(&id).expect("just created");
        s.blocks = found;
        s.tokens = prompt[..held].to_vec();
        (id, held)
    }

    /// A child of `parent` sharing all its blocks (reference counts go up; nothing is copied
    /// until one of them writes into a shared partially filled block).
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let p = self.get(parent)?.clone();
        for &b in &p.blocks {
            self.retain(b);
        }
        let id = self.create();
        self.seqs.insert(id, p);
        Ok(id)
    }

    /// Cuts `seq` back to its first `len` tokens (rollback of rejected draft tokens, regenerate
    /// from a point); blocks past the new end are released. `len` may not exceed the current
    /// length.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<()> {
        let bs = self.block_size as usize;
        let s = self.get(seq)?;
        if len > s.tokens.len() {
            return Err(invalid(
                "truncate",
                format!("{len} tokens > sequence length {}", s.tokens.len()),
            ));
        }
        let keep = len.div_ceil(bs);
        let s = self.seqs.get_mut(&seq).expect("checked");
        s.tokens.truncate(len);
        let dropped: Vec<u32> = s.blocks.drain(keep..).collect();
        let last = (!len.is_multiple_of(bs)).then(|| s.blocks[keep - 1]);
        for b in dropped {
            self.release(b);
        }
        // The last block is now partially filled and will be written: if only this sequence
        // holds it, its registered contents are about to change. (If others hold it, the next
        // write copies it first and the registration stays true.)
        if let Some(b) = last {
            if self.refcount[b as usize] == 1 {
                self.unregister(b);
            }
        }
        Ok(())
    }

    /// Ends `seq`, releasing its blocks.
    pub fn free(&mut self, seq: SeqId) -> Result<()> {
        let s = self.seqs.remove(&seq).ok_or_else(|| unknown(seq))?;
        for b in s.blocks {
            self.release(b);
        }
        Ok(())
    }

    /// Reserves slots for the next tokens of each `(sequence, new token ids)` and returns the
    /// step's metadata. A prefill chunk and a decode token are the same thing here: `n` new
    /// tokens after the sequence's current length. All or nothing: when the pool cannot hold
    /// the step, [`Error::OutOfBlocks`] is returned and no sequence changes.
    ///
    /// The step is committed when this returns: run it (copies, then writes, then attention), or
    /// [`BlockManager::truncate`] its sequences back.
    pub fn schedule(&mut self, batch: &[(SeqId, &[u32])]) -> Result<ScheduledStep> {
        let bs = self.block_size as usize;
        let mut needed = 0usize;
        for (i, &(id, toks)) in batch.iter().enumerate() {
            let s = self.get(id)?;
            if toks.is_empty() {
                return Err(invalid(
                    "schedule",
                    format!("sequence {id:?} has no new tokens"),
                ));
            }
            if batch[..i].iter().any(|&(o, _)| o == id) {
                return Err(invalid(
                    "schedule",
                    format!("sequence {id:?} appears twice in one step"),
                ));
            }
            let len = s.tokens.len();
            let total = len
                .checked_add(toks.len())
                .filter(|&t| t <= i32::MAX as usize)
                .ok_or_else(|| invalid("schedule", "sequence length exceeds i32"))?;
            needed += total.div_ceil(bs) - s.blocks.len();
            if !len.is_multiple_of(bs)
                && self.refcount[*s.blocks.last().expect("len > 0") as usize] > 1
            {
                needed += 1; // copy-on-write of the shared partial block
            }
        }
        let free = self.available();
        if needed > free {
            return Err(Error::OutOfBlocks { needed, free });
        }
        let mut out = ScheduledStep {
            cu_seqlens_q: vec![0],
            ..Default::default()
        };
        for &(id, toks) in batch {
            let mut s = self.seqs.remove(&id).expect("checked");
            let len = s.tokens.len();
            if !len.is_multiple_of(bs) {
                let last = s.blocks.len() - 1;
                let src = s.blocks[last];
                if self.refcount[src as usize] > 1 {
                    let dst = self.allocate();
                    self.refcount[src as usize] -= 1;
                    s.blocks[last] = dst;
                    out.copies.push(BlockCopy { src, dst });
                }
            }
            let total = len + toks.len();
            while s.blocks.len() < total.div_ceil(bs) {
                let b = self.allocate();
                s.blocks.push(b);
            }
            for p in len..total {
                let b = s.blocks[p / bs] as usize;
                out.slot_mapping.push((b * bs + p % bs) as i32);
            }
            s.tokens.extend_from_slice(toks);
            if self.prefix_caching {
                for j in len / bs..total / bs {
                    self.register(&s, j);
                }
            }
            out.cu_seqlens_q
                .push(out.cu_seqlens_q.last().unwrap() + toks.len() as i32);
            out.seqused_k.push(total as i32);
            out.seqs.push(id);
            self.seqs.insert(id, s);
        }
        out.block_table_stride = batch
            .iter()
            .map(|(id, _)| self.seqs[id].blocks.len())
            .max()
            .unwrap_or(0)
            .max(1);
        out.block_table = vec![0; batch.len() * out.block_table_stride];
        for (row, (id, _)) in batch.iter().enumerate() {
            for (c, &b) in self.seqs[id].blocks.iter().enumerate() {
                out.block_table[row * out.block_table_stride + c] = b as i32;
            }
        }
        Ok(out)
    }

    /// Adopts a sequence whose blocks were filled outside a step (a loaded snapshot): `blocks`
    /// were taken with [`BlockManager::allocate_blocks`] or are already held (shared);
    /// `tokens` are its token ids.
    pub(crate) fn adopt(&mut self, tokens: Vec<u32>, blocks: Vec<u32>) -> SeqId {
        let id = self.create();
        let s = Seq { tokens, blocks };
        if self.prefix_caching {
            for j in 0..s.tokens.len() / self.block_size as usize {
                self.register(&s, j);
            }
        }
        self.seqs.insert(id, s);
        id
    }

    /// Takes `n` free blocks, each with a reference count of 0 until adopted with
    /// [`BlockManager::retain`] (all or nothing). Clean blocks are taken before cached ones.
    pub(crate) fn allocate_blocks(&mut self, n: usize) -> Result<Vec<u32>> {
        let free = self.available();
        if n > free {
            return Err(Error::OutOfBlocks { needed: n, free });
        }
        Ok((0..n)
            .map(|_| {
                let b = self.allocate();
                self.refcount[b as usize] = 0;
                b
            })
            .collect())
    }

    /// Returns blocks taken with [`BlockManager::allocate_blocks`] and never adopted.
    pub(crate) fn return_blocks(&mut self, blocks: &[u32]) {
        for &b in blocks {
            debug_assert_eq!(self.refcount[b as usize], 0);
            self.clean.push(b);
        }
    }

    /// Adds one holder to `block`.
    pub(crate) fn retain(&mut self, block: u32) {
        let c = &mut self.refcount[block as usize];
        if *c == 0 {
            // A cached free block comes back into use.
            let t = self.evict_tick[block as usize];
            if self.evictable.get(&t) == Some(&block) {
                self.evictable.remove(&t);
            }
        }
        *c += 1;
    }

    /// Checks every invariant of the module docs; returns the first one broken.
    pub fn check(&self) -> Result<()> {
        let bs = self.block_size as usize;
        let mut count = vec![0u32; self.num_blocks as usize];
        for (id, s) in &self.seqs {
            if s.blocks.len() != s.tokens.len().div_ceil(bs) {
                return Err(broken(format!(
                    "{id:?}: {} blocks for {} tokens",
                    s.blocks.len(),
                    s.tokens.len()
                )));
            }
            for &b in &s.blocks {
                count[b as usize] += 1;
            }
        }
        if count != self.refcount {
            return Err(broken("reference counts differ from the sequences' tables"));
        }
        let mut free = vec![false; self.num_blocks as usize];
        let mut cached = vec![false; self.num_blocks as usize];
        for &b in self.evictable.values() {
            cached[b as usize] = true;
        }
        for &b in self.clean.iter().chain(self.evictable.values()) {
            if std::mem::replace(&mut free[b as usize], true) {
                return Err(broken(format!("block {b} is free twice")));
            }
        }
        for b in 0..self.num_blocks as usize {
            if free[b] != (count[b] == 0) {
                return Err(broken(format!(
                    "block {b}: free {} with {} holders",
                    free[b], count[b]
                )));
            }
            if cached[b] && self.registered[b].is_none() {
                return Err(broken(format!("block {b} evictable but not registered")));
            }
        }
        for (key, &b) in &self.prefix {
            if self.registered[b as usize].as_ref() != Some(key) {
                return Err(broken(format!("prefix entry of block {b} is stale")));
            }
        }
        Ok(())
    }

    fn get(&self, seq: SeqId) -> Result<&Seq> {
        self.seqs.get(&seq).ok_or_else(|| unknown(seq))
    }

    fn available(&self) -> usize {
        self.clean.len() + self.evictable.len()
    }

    /// One free block with a count of 1 (clean first, else the least recently freed cached one,
    /// whose registration ends). Callers check [`BlockManager::available`] first.
    fn allocate(&mut self) -> u32 {
        let b = match self.clean.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self
                    .evictable
                    .pop_first()
                    .expect("caller checked free blocks");
                self.unregister(b);
                b
            }
        };
        self.refcount[b as usize] = 1;
        b
    }

    fn release(&mut self, block: u32) {
        let c = &mut self.refcount[block as usize];
        *c -= 1;
        if *c == 0 {
            if self.registered[block as usize].is_some() {
                self.tick += 1;
                self.evict_tick[block as usize] = self.tick;
                self.evictable.insert(self.tick, block);
            } else {
                self.clean.push(block);
            }
        }
    }

    /// Registers logical block `j` of `s` (full) unless an equal prefix is registered already.
    fn register(&mut self, s: &Seq, j: usize) {
        let bs = self.block_size as usize;
        let b = s.blocks[j];
        if self.registered[b as usize].is_some() {
            return; // shared from the cache already
        }
        let parent = match j {
            0 => None,
            _ => {
                let p = s.blocks[j - 1];
                if self.registered[p as usize].is_none() {
                    return; // the chain is broken: nothing could find this block
                }
                Some((p, self.generation[p as usize]))
            }
        };
        let key = PrefixKey {
            parent,
            tokens: s.tokens[j * bs..(j + 1) * bs].into(),
        };
        if self.prefix.contains_key(&key) {
            return;
        }
        self.prefix.insert(key.clone(), b);
        self.registered[b as usize] = Some(key);
    }

    fn unregister(&mut self, block: u32) {
        if let Some(key) = self.registered[block as usize].take() {
            self.prefix.remove(&key);
            self.generation[block as usize] += 1;
            let t = self.evict_tick[block as usize];
            if self.evictable.get(&t) == Some(&block) {
                // A free block that is no longer worth keeping.
                self.evictable.remove(&t);
                self.clean.push(block);
            }
        }
    }
}

fn unknown(seq: SeqId) -> Error {
    invalid("sequence", format!("{seq:?} is not a live sequence"))
}

fn broken(detail: impl ToString) -> Error {
    invalid("block manager invariant", detail)
}
