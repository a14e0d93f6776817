//! A cache of bind groups keyed by the pipeline layout and every bound buffer range, so a
//! layer call whose bindings match an earlier one (the same step buffers from the step ring,
//! the same layer pools, the same q/out buffers) skips `create_bind_group` and its error
//! scopes. Bounded: cleared when it reaches its cap (bind groups still referenced by recorded
//! work stay alive through wgpu's own refcounting). A cached bind group holds its buffers, so
//! every [`crate::KvCache`] evicts the groups that bind its pools when it is dropped
//! ([`BindCache::forget`]): otherwise a dropped cache's memory would stay allocated until the
//! cap is reached.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Mutex;

/// One bound range: binding number, buffer, offset, size (0 = whole buffer).
pub type BoundRange = (u32, wgpu::Buffer, u64, u64);

/// Most entries a cached bind group may have (the attention kernels bind 10).
pub const MAX_ENTRIES: usize = 10;

/// The cache key: the compiled pipeline's id and its bound ranges, stored inline (building a
/// key allocates nothing: recording a call stays allocation-free when its bind group is known).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BindKey {
    /// [`super::Compiled::id`].
    pub pipeline: u64,
    /// Every entry, in binding order; unused slots `None`.
    pub ranges: [Option<BoundRange>; MAX_ENTRIES],
}

/// Most bind groups kept.
const CAP: usize = 2048;

/// The cache.
#[derive(Default)]
pub struct BindCache {
    map: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
}

impl BindCache {
    /// The bind group of `key`, or `make()`'s (then cached).
    pub fn get_or(
        &self,
        key: BindKey,
        make: impl FnOnce() -> crate::Result<wgpu::BindGroup>,
    ) -> crate::Result<wgpu::BindGroup> {
        if let Some(bg) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(bg.clone());
        }
        let bg = make()?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAP {
            map.clear();
        }
        map.insert(key, bg.clone());
        Ok(bg)
    }

    /// Evicts every bind group that binds one of `buffers`.
    pub fn forget(&self, buffers: &[&wgpu::Buffer]) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| {
            !k.ranges
                .iter()
                .flatten()
                .any(|r| buffers.iter().any(|b| **b == r.1))
        });
    }

    /// Bind groups held.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The ranges of bind group entries (whole-buffer and buffer-range bindings); `None` when an
/// entry is not a buffer or there are more than [`MAX_ENTRIES`] (such groups are not cached).
pub fn ranges(entries: &[wgpu::BindGroupEntry<'_>]) -> Option<[Option<BoundRange>; MAX_ENTRIES]> {
    if entries.len() > MAX_ENTRIES {
        return None;
    }
    let mut out: [Option<BoundRange>; MAX_ENTRIES] = Default::default();
    for (slot, e) in out.iter_mut().zip(entries) {
        let wgpu::BindingResource::Buffer(b) = &e.resource else {
            return None;
        };
        *slot = Some((
            e.binding,
            b.buffer.clone(),
            b.offset,
            b.size.map_or(0, |s| s.get()),
        ));
    }
    Some(out)
}
