//! KV snapshots: a set of sequences' cached blocks (codes and scales of every layer), their
//! token ids, and everything that defines the cache format, written to a file and loaded back
//! into any cache of the same format (block ids remapped). Layout: `docs/snapshots.md`.
//!
//! A load verifies the whole file (lengths, checksums, format) before it takes a block or writes
//! a byte to the GPU, so a mismatched, truncated or corrupt file leaves the cache and the block
//! manager untouched.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};

use crate::blocks::{BlockManager, SeqId};
use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::gpu::Context;

/// Format version written by this library (the only one it reads).
pub const SNAPSHOT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"QKVSNAP\0";
const END: &[u8; 8] = b"QKVEND\0\0";
/// Largest header accepted (a snapshot of millions of tokens stays far below it).
const MAX_HEADER: u32 = 1 << 30;

/// What a snapshot holds.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Sequences, in the order they were given (on load: the new ids, same order).
    pub seqs: Vec<SeqId>,
    /// Distinct blocks stored (blocks shared between the saved sequences are stored once and
    /// stay shared after a load).
    pub blocks: u32,
    /// Tokens over all sequences.
    pub tokens: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// The format fields a cache and a file must agree on, in file order.
#[derive(Clone, Debug, PartialEq)]
struct Format {
    mode: String,
    option_bits: u32,
    dtype: String,
    head_size: u32,
    block_size: u32,
    num_kv_heads: u32,
    num_layers: u32,
    row_bytes: u32,
    scale_block_bytes: u32,
    /// Per layer (K, V) per-tensor scales as f32 bits.
    tensor_scales: Vec<(u32, u32)>,
}

impl Format {
    fn of(cache: &KvCache) -> Self {
        let c = cache.config();
        let (_, sb) = cache.block_bytes();
        Self {
            mode: c.mode.id().to_string(),
            option_bits: cache.mode().option_bits(),
            dtype: c.dtype.name().to_string(),
            head_size: c.head_size,
            block_size: c.block_size,
            num_kv_heads: c.num_kv_heads,
            num_layers: c.num_layers,
            row_bytes: cache.footprint().row_bytes as u32,
            scale_block_bytes: sb as u32,
            tensor_scales: cache
                .layers()
                .iter()
                .map(|l| {
                    let (k, v) = l.tensor_scales();
                    (k.to_bits(), v.to_bits())
                })
                .collect(),
        }
    }

    /// The first field that differs, as a typed error.
    fn check(&self, cache: &Self) -> Result<()> {
        let mismatch = |field, file: String, cache: String| {
            Err(Error::SnapshotMismatch { field, file, cache })
        };
        macro_rules! same {
            ($f:ident) => {
                if self.$f != cache.$f {
                    return mismatch(
                        stringify!($f),
                        format!("{:?}", self.$f),
                        format!("{:?}", cache.$f),
                    );
                }
            };
        }
        same!(mode);
        same!(option_bits);
        same!(dtype);
        same!(head_size);
        same!(block_size);
        same!(num_kv_heads);
        same!(num_layers);
        same!(row_bytes);
        same!(scale_block_bytes);
        for (l, (a, b)) in self
            .tensor_scales
            .iter()
            .zip(&cache.tensor_scales)
            .enumerate()
        {
            if a != b {
                return mismatch(
                    "tensor_scales",
                    format!(
                        "layer {l}: ({}, {})",
                        f32::from_bits(a.0),
                        f32::from_bits(a.1)
                    ),
                    format!("({}, {})", f32::from_bits(b.0), f32::from_bits(b.1)),
                );
            }
        }
        Ok(())
    }
}

/// One sequence of the file: its token ids and indices into the file's block list.
struct FileSeq {
    tokens: Vec<u32>,
    blocks: Vec<u32>,
}

struct Header {
    format: Format,
    num_blocks: u32,
    seqs: Vec<FileSeq>,
}

fn put_u32(out: &mut Vec<u8>, x: u32) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let f = &self.format;
        let mut out = Vec::new();
        put_str(&mut out, &f.mode);
        put_u32(&mut out, f.option_bits);
        put_str(&mut out, &f.dtype);
        for x in [
            f.head_size,
            f.block_size,
            f.num_kv_heads,
            f.num_layers,
            f.row_bytes,
            f.scale_block_bytes,
        ] {
            put_u32(&mut out, x);
        }
        for &(k, v) in &f.tensor_scales {
            put_u32(&mut out, k);
            put_u32(&mut out, v);
        }
        put_u32(&mut out, self.num_blocks);
        put_u32(&mut out, self.seqs.len() as u32);
        for s in &self.seqs {
            put_u32(&mut out, s.tokens.len() as u32);
            s.tokens.iter().for_each(|&t| put_u32(&mut out, t));
            put_u32(&mut out, s.blocks.len() as u32);
            s.blocks.iter().for_each(|&b| put_u32(&mut out, b));
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Cursor { bytes, at: 0 };
        let mode = r.string()?;
        let option_bits = r.u32()?;
        let dtype = r.string()?;
        let [head_size, block_size, num_kv_heads, num_layers, row_bytes, scale_block_bytes] =
            [r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?];
        if block_size == 0 {
            return Err(corrupt("header", "block size 0"));
        }
        let tensor_scales = (0..r.count(num_layers, 8)?)
            .map(|_| Ok((r.u32()?, r.u32()?)))
            .collect::<Result<_>>()?;
        let num_blocks = r.u32()?;
        let n = r.u32()?;
        let mut seqs = Vec::new();
        for s in 0..r.count(n, 8)? {
            let nt = r.u32()?;
            let tokens = (0..r.count(nt, 4)?)
                .map(|_| r.u32())
                .collect::<Result<Vec<_>>>()?;
            let nb = r.u32()?;
            let blocks = (0..r.count(nb, 4)?)
                .map(|_| r.u32())
                .collect::<Result<Vec<_>>>()?;
            if blocks.len() != tokens.len().div_ceil(block_size as usize) {
                return Err(corrupt(
                    "header",
                    format!(
                        "sequence {s}: {} blocks for {} tokens",
                        blocks.len(),
                        tokens.len()
                    ),
                ));
            }
            if let Some(b) = blocks.iter().find(|&&b| b >= num_blocks) {
                return Err(corrupt(
                    "header",
                    format!("sequence {s}: block {b} >= {num_blocks} stored"),
                ));
            }
            seqs.push(FileSeq { tokens, blocks });
        }
        if r.at != bytes.len() {
            return Err(corrupt("header", "trailing bytes"));
        }
        Ok(Self {
            format: Format {
                mode,
                option_bits,
                dtype,
                head_size,
                block_size,
                num_kv_heads,
                num_layers,
                row_bytes,
                scale_block_bytes,
                tensor_scales,
            },
            num_blocks,
            seqs,
        })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn u32(&mut self) -> Result<u32> {
        let b = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or_else(|| corrupt("header", "ends early"))?;
        self.at += 4;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// `n` items of at least `each` bytes must fit in what is left (bounds allocations by the
    /// file's real size, not by a corrupt count).
    fn count(&self, n: u32, each: usize) -> Result<usize> {
        let n = n as usize;
        if n.saturating_mul(each) > self.bytes.len() - self.at {
            return Err(corrupt("header", format!("count {n} exceeds the header")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u32()?;
        let n = self.count(n, 1)?;
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        String::from_utf8(s.to_vec()).map_err(|_| corrupt("header", "a name is not UTF-8"))
    }
}

fn corrupt(section: impl ToString, detail: impl ToString) -> Error {
    Error::SnapshotCorrupt {
        section: section.to_string(),
        detail: detail.to_string(),
    }
}

/// Reads exactly `buf.len()` bytes; a short file is corrupt, other I/O errors stay I/O errors.
fn read_exact(r: &mut impl Read, buf: &mut [u8], section: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(section, "file ends early"),
        _ => Error::Io(e),
    })
}

impl KvCache {
    /// Writes `seqs` of `blocks` (their tokens, and every layer's K and V codes and scales of
    /// their blocks) to `w` (format in `docs/snapshots.md`). Blocks the sequences share are
    /// stored once. Reads the cache back from the GPU: submit the steps that wrote these
    /// sequences before calling. Memory: one layer's blocks at a time.
    pub fn save_snapshot(
        &self,
        ctx: &Context,
        blocks: &BlockManager,
        seqs: &[SeqId],
        w: &mut impl Write,
    ) -> Result<SnapshotInfo> {
        ctx.alive()?;
        self.check_manager(blocks)?;
        // Distinct physical blocks in first-use order, and each sequence's indices into them.
        let mut index: HashMap<u32, u32> = HashMap::new();
        let mut order: Vec<u32> = Vec::new();
        let mut file_seqs = Vec::with_capacity(seqs.len());
        let mut tokens = 0u64;
        for &s in seqs {
            let t = blocks.tokens(s)?.to_vec();
            tokens += t.len() as u64;
            let idx = blocks
                .blocks(s)?
                .iter()
                .map(|&b| {
                    *index.entry(b).or_insert_with(|| {
                        order.push(b);
                        order.len() as u32 - 1
                    })
                })
                .collect();
            file_seqs.push(FileSeq {
                tokens: t,
                blocks: idx,
            });
        }
        let header = Header {
            format: Format::of(self),
            num_blocks: order.len() as u32,
            seqs: file_seqs,
        }
        .encode();
        let mut written = 0u64;
        let mut emit = |w: &mut dyn Write, bytes: &[u8]| -> Result<()> {
            w.write_all(bytes)?;
            written += bytes.len() as u64;
            Ok(())
        };
        emit(w, MAGIC)?;
        emit(w, &SNAPSHOT_VERSION.to_le_bytes())?;
        emit(w, &(header.len() as u32).to_le_bytes())?;
        emit(w, &header)?;
        emit(w, &crc32fast::hash(&header).to_le_bytes())?;
        for l in 0..self.layers().len() {
            let data = self.read_blocks(ctx, l, &order)?;
            emit(w, &(data.len() as u64).to_le_bytes())?;
            emit(w, &data)?;
            emit(w, &crc32fast::hash(&data).to_le_bytes())?;
        }
        emit(w, END)?;
        w.flush()?;
        Ok(SnapshotInfo {
            seqs: seqs.to_vec(),
            blocks: order.len() as u32,
            tokens,
            bytes: written,
        })
    }

    /// Loads a snapshot written by [`KvCache::save_snapshot`] into this cache: takes free blocks
    /// from `blocks` (the manager of this cache), writes the codes and scales into them and
    /// creates one sequence per saved sequence (ids in [`SnapshotInfo::seqs`], in file order;
    /// sharing between them is kept). The file must match this cache's format (mode, mode
    /// options, dtype, head size, block size, KV heads, layers, per-tensor scales):
    /// [`Error::SnapshotMismatch`] otherwise; [`Error::SnapshotCorrupt`] for a truncated or
    /// damaged file; [`Error::OutOfBlocks`] when the pool cannot hold it. On any error the cache
    /// and the manager are unchanged. The data reaches the GPU with the next submission.
    pub fn load_snapshot(
        &self,
        ctx: &Context,
        blocks: &mut BlockManager,
        r: &mut (impl Read + Seek),
    ) -> Result<SnapshotInfo> {
        ctx.alive()?;
        self.check_manager(blocks)?;
        let start = r.stream_position()?;
        let mut magic = [0u8; 8];
        read_exact(r, &mut magic, "magic")?;
        if &magic != MAGIC {
            return Err(corrupt("magic", "not a quantkv snapshot"));
        }
        let mut word = [0u8; 4];
        read_exact(r, &mut word, "version")?;
        let version = u32::from_le_bytes(word);
        if version != SNAPSHOT_VERSION {
            return Err(Error::SnapshotMismatch {
                field: "version",
                file: version.to_string(),
                cache: SNAPSHOT_VERSION.to_string(),
            });
        }
        read_exact(r, &mut word, "header")?;
        let len = u32::from_le_bytes(word);
        if len > MAX_HEADER {
            return Err(corrupt("header", format!("length {len} too large")));
        }
        // Read in bounded pieces: a corrupt length must not allocate more than the file holds.
        let mut header = Vec::new();
        r.by_ref().take(len as u64).read_to_end(&mut header)?;
        if header.len() != len as usize {
            return Err(corrupt("header", "file ends early"));
        }
        read_exact(r, &mut word, "header")?;
        if u32::from_le_bytes(word) != crc32fast::hash(&header) {
            return Err(corrupt("header", "checksum mismatch"));
        }
        let h = Header::decode(&header)?;
        h.format.check(&Format::of(self))?;
        let (pb, sb) = self.block_bytes();
        let section = h.num_blocks as u64 * 2 * (pb + sb);
        let data_start = r.stream_position()?;
        // Pass 1: every layer section's length and checksum, and the end marker.
        for l in 0..self.layers().len() {
            self.read_section(r, l, section, |_| Ok(()))?;
        }
        let mut end = [0u8; 8];
        read_exact(r, &mut end, "end")?;
        if &end != END {
            return Err(corrupt("end", "end marker missing"));
        }
        let bytes = r.stream_position()? - start;
        // Pass 2: take blocks, upload each layer, adopt the sequences.
        let targets = blocks.allocate_blocks(h.num_blocks as usize)?;
        let uploaded = (|| -> Result<()> {
            r.seek(SeekFrom::Start(data_start))?;
            for l in 0..self.layers().len() {
                let layer = &self.layers()[l];
                self.read_section(r, l, section, |data| {
                    let mut at = 0usize;
                    for (buf, bytes) in self.block_parts(layer) {
                        for &t in &targets {
                            if bytes > 0 {
                                let piece = &data[at..at + bytes as usize];
                                ctx.queue.write_buffer(buf, t as u64 * bytes, piece);
                            }
                            at += bytes as usize;
                        }
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })();
        if let Err(e) = uploaded {
            blocks.return_blocks(&targets);
            return Err(e);
        }
        ctx.queue.submit([]);
        let mut ids = Vec::with_capacity(h.seqs.len());
        let mut tokens = 0u64;
        for s in h.seqs {
            let phys: Vec<u32> = s.blocks.iter().map(|&i| targets[i as usize]).collect();
            for &b in &phys {
                blocks.retain(b);
            }
            tokens += s.tokens.len() as u64;
            ids.push(blocks.adopt(s.tokens, phys));
        }
        // Blocks no sequence named (a hand-made file): give them back.
        let unused: Vec<u32> = targets
            .iter()
            .copied()
            .filter(|&b| blocks.refcount(b) == 0)
            .collect();
        blocks.return_blocks(&unused);
        Ok(SnapshotInfo {
            seqs: ids,
            blocks: h.num_blocks,
            tokens,
            bytes,
        })
    }

    /// `blocks` must manage this cache's pool (same block count and size).
    fn check_manager(&self, blocks: &BlockManager) -> Result<()> {
        let c = self.config();
        if blocks.stats().num_blocks != c.num_blocks || blocks.block_size() != c.block_size {
            return Err(crate::error::invalid(
                "block manager",
                format!(
                    "manages {} blocks of {}, the cache has {} of {}",
                    blocks.stats().num_blocks,
                    blocks.block_size(),
                    c.num_blocks,
                    c.block_size
                ),
            ));
        }
        Ok(())
    }

    /// Reads one layer section (length, data, checksum) and hands the verified data to `f`.
    fn read_section(
        &self,
        r: &mut impl Read,
        layer: usize,
        expected: u64,
        f: impl FnOnce(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let name = format!("layer {layer}");
        let mut len = [0u8; 8];
        read_exact(r, &mut len, &name)?;
        let len = u64::from_le_bytes(len);
        if len != expected {
            return Err(corrupt(&name, format!("{len} bytes, expected {expected}")));
        }
        let mut data = Vec::new();
        r.by_ref().take(len).read_to_end(&mut data)?;
        if data.len() as u64 != len {
            return Err(corrupt(&name, "file ends early"));
        }
        let mut crc = [0u8; 4];
        read_exact(r, &mut crc, &name)?;
        if u32::from_le_bytes(crc) != crc32fast::hash(&data) {
            return Err(corrupt(&name, "checksum mismatch"));
        }
        f(&data)
    }

    /// Layer `layer`'s `blocks` read back: all K blocks, all V blocks, all K scale blocks, all
    /// V scale blocks, each in the order given.
    fn read_blocks(&self, ctx: &Context, layer: usize, blocks: &[u32]) -> Result<Vec<u8>> {
        let l = &self.layers()[layer];
        let (pb, sb) = self.block_bytes();
        let size = blocks.len() as u64 * 2 * (pb + sb);
        if size == 0 {
            return Ok(Vec::new());
        }
        let staging = ctx.guarded_buffer(
            "snapshot readback",
            "quantkv/snapshot",
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let mut at = 0u64;
        for (buf, bytes) in self.block_parts(l) {
            for &b in blocks {
                if bytes > 0 {
                    enc.copy_buffer_to_buffer(buf, b as u64 * bytes, &staging, at, bytes);
                }
                at += bytes;
            }
        }
        ctx.guarded("snapshot readback", size, || {
            ctx.queue.submit([enc.finish()])
        })?;
        ctx.map_read(&staging)
    }
}
