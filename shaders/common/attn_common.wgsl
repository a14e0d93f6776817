// common/attn_common.wgsl — what the tiled attention kernels (unified, prefill) share: which
// rows and key tiles a workgroup owns (varlen batch found by binary search over cu_seqlens_q,
// GQA packing of the query heads of one kv head as rows, causal / window / prefix-range key
// bounds, split-K segments), the query load, block-table addressing, and the score pipeline of
// spec §6.1 (scale -> softcap -> mask -> ALiBi -> qq_bias). The including kernel declares the
// bindings of common/uniforms.wgsl, `step_meta`, `laux`, `q`, the overrides HAS_SOFTCAP,
// ALIBI_MODE, HAS_QQ, HAS_MM, IS_SPLIT and WG_SIZE, and, for stage_tile, its tile element
// accessors tile_fetch(e, is_v) -> vec4<f32> (a load from the cache) and
// tile_put(e, v, key0, kv_len, is_v) (the store into workgroup memory, which drops e past the
// tile).
// #include "common/attn_basics.wgsl"

struct WgInfo {
    valid: u32,
    seq: u32,
    q_first: u32,   // global token row of the block's first query
    rows_q: u32,    // valid query tokens in this block
    i0: u32,        // index of the first query within its sequence
    ctx: u32,       // context_len = seqused_k - query_len
    kv_len: u32,
    head0: u32,     // first q head of this workgroup
    nheads: u32,    // valid q heads in this workgroup
    kv_head: u32,
    tile_lo: u32,
    tile_hi: u32,
}

// The rows and key tiles (of `tile` keys) of workgroup `wid`; `nseg` split-K segments.
// Dispatch: x = num_tokens_q / q_per_wg + num_seqs, y = num_kv_heads * head_chunks, z = nseg.
fn plan_workgroup(wid: vec3<u32>, nseg: u32, tile: u32) -> WgInfo {
    var r: WgInfo;
    r.valid = 0u;
    let bq = ly.q_per_wg;
    var lo = 0u;
    var hi = st.num_seqs;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        let v = u32(step_meta[st.off_cu + mid]) / bq + mid;
        if (v <= wid.x) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    if (lo == 0u) {
        return r;
    }
    let s = lo - 1u;
    let cs = u32(step_meta[st.off_cu + s]);
    let q_len = u32(step_meta[st.off_cu + s + 1u]) - cs;
    let i0 = (wid.x - (cs / bq + s)) * bq;
    if (i0 >= q_len || (ly.row_filter == 2u && q_len == 1u)) {
        return r;
    }
    let rows_q = min(bq, q_len - i0);
    let kv_len = u32(step_meta[st.off_su + s]);
    let ctx = kv_len - q_len;
    let kvh = wid.y / ly.head_chunks;
    let chunk = wid.y % ly.head_chunks;
    r.seq = s;
    r.q_first = cs + i0;
    r.rows_q = rows_q;
    r.i0 = i0;
    r.ctx = ctx;
    r.kv_len = kv_len;
    r.kv_head = kvh;
    r.head0 = kvh * ly.qpk + chunk * ly.heads_per_wg;
    r.nheads = min(ly.heads_per_wg, ly.qpk - chunk * ly.heads_per_wg);
    // Keys this block may see: causal up to its last query, window from its first query.
    var key_hi = ctx + i0 + rows_q;
    var key_lo = 0u;
    if (HAS_MM) {
        key_hi = kv_len;
    } else if (ly.window > 0u) {
        let first_qpos = ctx + i0;
        if (first_qpos + 1u > ly.window) {
            key_lo = first_qpos + 1u - ly.window;
        }
    }
    var t_lo = key_lo / tile;
    var t_hi = (key_hi + tile - 1u) / tile;
    if (IS_SPLIT) {
        let n = t_hi - t_lo;
        let tps = (n + nseg - 1u) / nseg;
        let seg_lo = min(t_hi, t_lo + wid.z * tps);
        t_hi = min(t_hi, seg_lo + tps);
        t_lo = seg_lo;
    }
    r.tile_lo = t_lo;
    r.tile_hi = t_hi;
    r.valid = 1u;
    return r;
}

fn in_prefix_ranges(seq: u32, qpos: u32, key: u32) -> bool {
    for (var r = 0u; r < st.mm_per_seq; r++) {
        let base = st.off_mm + (seq * st.mm_per_seq + r) * 2u;
        let a = step_meta[base];
        let b = step_meta[base + 1u];
        if (a < b && a <= i32(qpos) && i32(qpos) <= b && a <= i32(key) && i32(key) <= b) {
            return true;
        }
    }
    return false;
}

// Whether query token qi (of the block) of q head slot hh sees `key` (spec §6.2).
fn key_visible(inf: WgInfo, qi: u32, hh: u32, key: u32) -> bool {
    if (qi >= inf.rows_q || hh >= inf.nheads || key >= inf.kv_len) {
        return false;
    }
    let qpos = inf.ctx + inf.i0 + qi;
    var allowed = key <= qpos && (ly.window == 0u || qpos - key < ly.window);
    if (HAS_MM && !allowed) {
        allowed = in_prefix_ranges(inf.seq, qpos, key);
    }
    return allowed;
}

// The score of a visible key from its raw q·k (query token qi, q head slot hh).
fn finish_score(inf: WgInfo, qi: u32, hh: u32, key: u32, raw: f32) -> f32 {
    return score_terms(raw, inf.head0 + hh, key, inf.ctx, inf.i0 + qi);
}

// The K (or V) tile of `n` vec4 elements into workgroup memory. Eight independent loads are
// issued before any of them is stored, so each thread keeps eight in flight: drivers do not
// reliably unroll the loop, and a load-store-load chain pays the full memory latency per
// element.
fn stage_tile(tid: u32, n: u32, key0: u32, kv_len: u32, is_v: bool) {
    for (var k = 0u; k < n; k += 8u * WG_SIZE) {
        let e0 = tid + k;
        let e1 = e0 + WG_SIZE;
        let e2 = e1 + WG_SIZE;
        let e3 = e2 + WG_SIZE;
        let e4 = e3 + WG_SIZE;
        let e5 = e4 + WG_SIZE;
        let e6 = e5 + WG_SIZE;
        let e7 = e6 + WG_SIZE;
        let a0 = tile_fetch(e0, is_v);
        let a1 = tile_fetch(e1, is_v);
        let a2 = tile_fetch(e2, is_v);
        let a3 = tile_fetch(e3, is_v);
        let a4 = tile_fetch(e4, is_v);
        let a5 = tile_fetch(e5, is_v);
        let a6 = tile_fetch(e6, is_v);
        let a7 = tile_fetch(e7, is_v);
        tile_put(e0, a0, key0, kv_len, is_v);
        tile_put(e1, a1, key0, kv_len, is_v);
        tile_put(e2, a2, key0, kv_len, is_v);
        tile_put(e3, a3, key0, kv_len, is_v);
        tile_put(e4, a4, key0, kv_len, is_v);
        tile_put(e5, a5, key0, kv_len, is_v);
        tile_put(e6, a6, key0, kv_len, is_v);
        tile_put(e7, a7, key0, kv_len, is_v);
    }
}
