//! A cache of bind groups keyed by the pipeline layout and every bound buffer range, so a
//! layer call whose bindings match an earlier one (the same step buffers from the step ring,
//! the same layer pools, the same q/out buffers) skips `create_bind_group` and its error
//! scopes. Bounded: cleared when it reaches its cap (bind groups still referenced by recorded
//! work stay alive through wgpu's own refcounting). A cached bind group holds its buffers, so
//! every [`crate::KvCache`] evicts the groups that bind its pools when it is dropped
//! ([`BindCache::forget`]): otherwise a dropped cache's memory would stay allocated until the
//! cap is reached.

use rustc_hash::{FxHashMap as HashMap, FxHasher};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// One bound range: binding number, buffer, offset, size (0 = whole buffer).
pub type BoundRange = (u32, wgpu::Buffer, u64, u64);

/// A bound range as a lookup sees it: the buffer borrowed, so a lookup clones nothing.
pub type BoundRef<'a> = (u32, &'a wgpu::Buffer, u64, u64);

/// Most entries a cached bind group may have (the attention kernels bind 10, the decode kernels
/// that also write the step's rows 12).
pub const MAX_ENTRIES: usize = 12;

/// A lookup key: the compiled pipeline's id and its bound ranges, borrowed and stored inline
/// (building one allocates nothing and clones no buffer handle).
pub struct BindKey<'a> {
    /// [`super::Compiled::id`].
    pub pipeline: u64,
    /// Every entry, in binding order; unused slots `None`.
    pub ranges: [Option<BoundRef<'a>>; MAX_ENTRIES],
}

impl BindKey<'_> {
    /// The key's hash (buffers hash by identity).
    fn hash(&self) -> u64 {
        let mut h = FxHasher::default();
        self.pipeline.hash(&mut h);
        for r in self.ranges.iter().flatten() {
            r.hash(&mut h);
        }
        h.finish()
    }

    /// An owned copy of the key, kept next to its bind group.
    fn owned(&self) -> Stored {
        Stored {
            pipeline: self.pipeline,
            ranges: self
                .ranges
                .iter()
                .map(|r| r.map(|(b, buf, o, s)| (b, buf.clone(), o, s)))
                .collect(),
        }
    }
}

/// A cached entry's key, owning its buffer handles (they keep the buffers alive as long as the
/// bind group does anyway).
struct Stored {
    pipeline: u64,
    ranges: Vec<Option<BoundRange>>,
}

impl Stored {
    fn matches(&self, key: &BindKey<'_>) -> bool {
        self.pipeline == key.pipeline
            && self.ranges.len() == key.ranges.len()
            && self
                .ranges
                .iter()
                .zip(&key.ranges)
                .all(|(a, b)| match (a, b) {
                    (None, None) => true,
                    (Some((ab, abuf, ao, asz)), Some((bb, bbuf, bo, bsz))) => {
                        ab == bb && abuf == *bbuf && ao == bo && asz == bsz
                    }
                    _ => false,
                })
    }

    fn binds_any(&self, buffers: &[&wgpu::Buffer]) -> bool {
        self.ranges
            .iter()
            .flatten()
            .any(|r| buffers.iter().any(|b| **b == r.1))
    }
}

/// Most bind groups kept.
const CAP: usize = 2048;

/// Entries by key hash (a bucket holds more than one only on a hash collision).
#[derive(Default)]
struct Map {
    buckets: HashMap<u64, Vec<(Stored, wgpu::BindGroup)>>,
    len: usize,
}

/// The cache.
#[derive(Default)]
pub struct BindCache {
    map: Mutex<Map>,
}

impl BindCache {
    /// The bind group of `key`, or `make()`'s (then cached).
    pub fn get_or(
        &self,
        key: BindKey<'_>,
        make: impl FnOnce() -> crate::Result<wgpu::BindGroup>,
    ) -> crate::Result<wgpu::BindGroup> {
        let hash = key.hash();
        {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bucket) = map.buckets.get(&hash) {
                if let Some((_, bg)) = bucket.iter().find(|(k, _)| k.matches(&key)) {
                    return Ok(bg.clone());
                }
            }
        }
        let bg = make()?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len >= CAP {
            map.buckets.clear();
            map.len = 0;
        }
        let bucket = map.buckets.entry(hash).or_default();
        if !bucket.iter().any(|(k, _)| k.matches(&key)) {
            bucket.push((key.owned(), bg.clone()));
            map.len += 1;
        }
        Ok(bg)
    }

    /// Evicts every bind group that binds one of `buffers`.
    pub fn forget(&self, buffers: &[&wgpu::Buffer]) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut len = 0;
        map.buckets.retain(|_, bucket| {
            bucket.retain(|(k, _)| !k.binds_any(buffers));
            len += bucket.len();
            !bucket.is_empty()
        });
        map.len = len;
    }

    /// Bind groups held.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len
    }
}

/// The ranges of bind group entries (whole-buffer and buffer-range bindings), borrowed; `None`
/// when an entry is not a buffer or there are more than [`MAX_ENTRIES`] (such groups are not
/// cached).
pub fn ranges<'a>(
    entries: &[wgpu::BindGroupEntry<'a>],
) -> Option<[Option<BoundRef<'a>>; MAX_ENTRIES]> {
    if entries.len() > MAX_ENTRIES {
        return None;
    }
    let mut out: [Option<BoundRef<'a>>; MAX_ENTRIES] = [None; MAX_ENTRIES];
    for (slot, e) in out.iter_mut().zip(entries) {
        let wgpu::BindingResource::Buffer(b) = &e.resource else {
            return None;
        };
        *slot = Some((e.binding, b.buffer, b.offset, b.size.map_or(0, |s| s.get())));
    }
    Some(out)
}
