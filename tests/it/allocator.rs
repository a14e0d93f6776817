//! The allocator: pool layout sizes, bytes per token, and configs beyond the adapter's limits.

use crate::common::*;
use quantkv::*;

fn cfg(num_blocks: u32) -> CacheConfig {
    CacheConfig {
        num_layers: 2,
        num_blocks,
        block_size: 16,
        num_kv_heads: 8,
        head_size: 128,
        mode: KvQuantMode::None,
        dtype: Dtype::F16,
        ..Default::default()
    }
}

#[test]
fn footprint_of_an_f16_cache() {
    let backend = quantkv::modes::create(KvQuantMode::None).unwrap();
    let fp = quantkv::footprint(backend.as_ref(), &cfg(100));
    assert_eq!(fp.row_bytes, 256);
    // 2 layers x (K + V) x 8 heads x 256 bytes
    assert_eq!(fp.bytes_per_token, 2 * 2 * 8 * 256);
    assert_eq!(fp.pool_bytes, 100 * 16 * 8 * 256);
    assert_eq!(fp.scale_bytes, 0);
    assert_eq!(fp.total_bytes, 2 * 2 * fp.pool_bytes);
    let f32cfg = CacheConfig {
        dtype: Dtype::F32,
        ..cfg(100)
    };
    assert_eq!(quantkv::footprint(backend.as_ref(), &f32cfg).row_bytes, 512);
}

#[test]
fn allocates_pools_of_the_spec_layout() {
    let Some(ctx) = context() else { return };
    let cache = KvCache::new(ctx, &cfg(10)).unwrap();
    assert_eq!(cache.layers().len(), 2);
    for l in cache.layers() {
        assert_eq!(l.k().size(), 10 * 16 * 8 * 128 * 2);
        assert_eq!(l.v().size(), l.k().size());
        assert_eq!(
            l.k_scale().size(),
            16,
            "dummy scale buffer for a mode without scales"
        );
    }
}

#[test]
fn rejects_a_config_beyond_the_binding_limit_and_names_the_largest_that_fits() {
    let Some(ctx) = context() else { return };
    let limits = ctx.limits();
    let limit = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    let per_block = 16u64 * 8 * 128 * 2;
    let too_many = (limit / per_block + 1).min(u32::MAX as u64) as u32;
    match KvCache::new(ctx, &cfg(too_many)) {
        Err(Error::BindingTooLarge {
            max_num_blocks,
            limit: l,
            ..
        }) => {
            assert_eq!(l, limit);
            assert_eq!(max_num_blocks as u64, limit / per_block);
            assert!(max_num_blocks < too_many);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("allocation beyond the limit accepted"),
    }
}
