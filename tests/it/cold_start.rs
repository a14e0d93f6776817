//! Cold start: `KvCache::warm_up` compiles what later calls need (recording then compiles
//! nothing), and a pipeline cache persisted by one context is loaded by the next.

use crate::common::*;
use quantkv::*;

fn cfg() -> CacheConfig {
    CacheConfig {
        num_layers: 2,
        num_blocks: 16,
        block_size: 16,
        num_kv_heads: 2,
        head_size: 64,
        mode: KvQuantMode::Int8PerTokenHead,
        dtype: Dtype::F16,
        ..Default::default()
    }
}

fn params() -> AttentionParams<'static> {
    AttentionParams {
        num_q_heads: 8,
        softmax_scale: 0.125,
        softcap: 30.0,
        ..Default::default()
    }
}

#[test]
fn after_warm_up_recording_compiles_nothing() {
    let Some(_) = context() else { return };
    let ctx = Context::new().unwrap();
    let cache = KvCache::new(&ctx, &cfg()).unwrap();
    let calls = std::sync::Mutex::new(Vec::new());
    let n = cache
        .warm_up(&ctx, &[params()], |done, total| {
            calls.lock().unwrap().push((done, total))
        })
        .unwrap();
    let calls = calls.into_inner().unwrap();
    assert_eq!(calls.len(), n, "one progress call per variant");
    assert!(calls.iter().any(|&(d, t)| d == t && t == n), "{calls:?}");
    let built = ctx.built_pipelines();
    assert!(
        built.len() >= 3,
        "write, unified and decode at least: {built:?}"
    );
    // Prefill, short decode, long decode (split-K) and a large decode batch: all warmed.
    let p = params();
    for (seqs, seed) in [
        (vec![(20u32, 20u32)], 1u64),
        (vec![(1, 40)], 2),
        (vec![(1, 250)], 3),
    ] {
        let mut s = shape(&seqs, 8, 2, 64, Dtype::F16);
        s.mode = KvQuantMode::Int8PerTokenHead;
        let ex = Extras {
            softcap: p.softcap,
            ..Default::default()
        };
        let out = run_case(&ctx, seed, &s, &ex).unwrap();
        assert_close(&out, s.dtype);
    }
    let after = ctx.built_pipelines();
    let new: Vec<_> = after.iter().filter(|l| !built.contains(l)).collect();
    assert!(
        new.is_empty(),
        "compiled while recording after warm-up: {new:?}"
    );
}

#[test]
fn a_saved_pipeline_cache_is_loaded_by_the_next_context() {
    let Some(_) = context() else { return };
    let dir = std::env::temp_dir().join(format!("quantkv-pc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = Context::new().unwrap().with_pipeline_cache_dir(&dir);
    if !a.device.features().contains(wgpu::Features::PIPELINE_CACHE) {
        assert!(a.pipeline_cache_file().is_none());
        eprintln!(
            "adapter {} has no PIPELINE_CACHE: nothing is persisted",
            a.adapter()
        );
        return;
    }
    let (path, loaded) = a.pipeline_cache_file().unwrap();
    assert_eq!(loaded, 0, "a fresh directory has no cache");
    let path = path.to_path_buf();
    let cache = KvCache::new(&a, &cfg()).unwrap();
    cache.warm_up(&a, &[params()], |_, _| {}).unwrap();
    assert!(a.save_pipeline_cache().unwrap());
    let saved = a.pipeline_cache_bytes().unwrap();
    assert!(
        path.exists() && saved > 0,
        "{} bytes at {}",
        saved,
        path.display()
    );
    drop(cache);
    drop(a);
    // The next context loads what the first saved: the data it was built from.
    let b = Context::new().unwrap().with_pipeline_cache_dir(&dir);
    let (path_b, loaded) = b.pipeline_cache_file().unwrap();
    assert_eq!(path_b, path.as_path());
    assert_eq!(loaded, saved, "the whole saved cache was loaded");
    let cache = KvCache::new(&b, &cfg()).unwrap();
    cache.warm_up(&b, &[params()], |_, _| {}).unwrap();
    // Everything the second warm-up needed was in the loaded data: the cache did not grow.
    assert_eq!(b.pipeline_cache_bytes(), Some(saved));
    // A corrupt file is ignored (with a log line), never trusted.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let c = Context::new().unwrap().with_pipeline_cache_dir(&dir);
    assert_eq!(
        c.pipeline_cache_file().unwrap().1,
        0,
        "corrupt data was not loaded"
    );
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let c = Context::new().unwrap().with_pipeline_cache_dir(&dir);
    assert_eq!(
        c.pipeline_cache_file().unwrap().1,
        0,
        "truncated data was not loaded"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
