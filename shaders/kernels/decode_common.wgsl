// kernels/decode_common.wgsl — the decode kernel's (decode.wgsl) plumbing: bindings, the
// workgroup's plan, the query prologue, score post-processing and the output / split-K partial
// stores.
//
// Bindings: as unified.wgsl (0 StepU, 1 LayerU, 2 meta, 3 laux, 4 q, 5 k_cache, 6 v_cache,
//           7 k_scale, 8 v_scale, 9 out or split-K partials); with COMBINE 12 partials and
//           13 arrival counters (from the prelude).
// Overrides: HEAD_DIM, WG_SIZE, MAX_M (rows = q heads per workgroup, <= 16),
//            Q_SH_LEN = MAX_M*HEAD_DIM/4, feature flags.
// #include "common/uniforms.wgsl"
// #include "common/out.wgsl"
// #include "common/softmax.wgsl"
// #include "common/attn_basics.wgsl"

override HEAD_DIM: u32 = 128u;
override WG_SIZE: u32 = 128u;
override MAX_M: u32 = 4u;
override Q_SH_LEN: u32 = 128u;
override HAS_SOFTCAP: bool = false;
override HAS_SINKS: bool = false;
override ALIBI_MODE: u32 = 0u; // 0 off, 1 linear, 2 sqrt
override HAS_QQ: bool = false;
override IS_SPLIT: bool = false;
// M_MAX (= MAX_M, the size of the per-thread row arrays) is a const the host prepends, so
// the arrays are exactly as long as the rows and live in registers.

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(2) var<storage, read> step_meta: array<i32>;
@group(0) @binding(3) var<storage, read> laux: array<f32>;
@group(0) @binding(4) var<storage, read> q: array<u32>;
// Bindings 5 and 6 (k_cache, v_cache) are declared by the host's prelude: u32 words in
// decode.wgsl, 16-byte words in decode_stream.wgsl; read_write with FUSED_WRITE.
// The prelude also gives FUSED_WRITE (const) and, with it, bindings 10 key_in and 11 value_in
// (the step's K/V rows, 16-byte words, views as the write kernel takes them), new_row4(is_v,
// i) (16-byte word i of the key / value views) and kv_store4(is_v, i, w) (16-byte word i of
// the K / V pool); without it, stubs that are never called.
@group(0) @binding(7) var<storage, read> k_scale: array<f32>;
@group(0) @binding(8) var<storage, read> v_scale: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<u32>;

struct DecInfo {
    valid: u32,
    seq: u32,
    tok: u32,       // the query's token row
    ctx: u32,       // context_len = kv_len - 1
    kv_len: u32,
    head0: u32,     // first q head of this workgroup
    nheads: u32,    // valid q heads in this workgroup
    kv_head: u32,
    key_lo: u32,    // this segment's keys: [key_lo, key_hi)
    key_hi: u32,
}

var<workgroup> info: DecInfo;
var<workgroup> q_sh: array<vec4<f32>, Q_SH_LEN>;
fn plan_decode(wid: vec3<u32>, nseg: u32) -> DecInfo {
    var r: DecInfo;
    r.valid = 0u;
    let s = wid.x;
    if (s >= st.num_seqs) {
        return r;
    }
    let cs = u32(step_meta[st.off_cu + s]);
    let q_len = u32(step_meta[st.off_cu + s + 1u]) - cs;
    // No query token for this sequence in this step, or (the decode part of a mixed batch)
    // more than one, which the prefill kernel takes.
    if (q_len == 0u || (ly.row_filter == 1u && q_len != 1u)) {
        return r;
    }
    let kv_len = u32(step_meta[st.off_su + s]);
    let kvh = wid.y / ly.head_chunks;
    let chunk = wid.y % ly.head_chunks;
    r.seq = s;
    r.tok = cs;
    r.ctx = kv_len - 1u;
    r.kv_len = kv_len;
    r.kv_head = kvh;
    r.head0 = kvh * ly.qpk + chunk * ly.heads_per_wg;
    r.nheads = min(ly.heads_per_wg, ly.qpk - chunk * ly.heads_per_wg);
    // The query (position kv_len - 1) sees every key before it, within the window.
    var lo = 0u;
    if (ly.window > 0u && kv_len > ly.window) {
        lo = kv_len - ly.window;
    }
    var hi = kv_len;
    if (IS_SPLIT) {
        // Segments of whole 16-key groups, so neighbouring segments never share a sector.
        let per = ((hi - lo + nseg - 1u) / nseg + 15u) & ~15u;
        let a = min(hi, lo + wid.z * per);
        hi = min(hi, a + per);
        lo = a;
    }
    r.key_lo = lo;
    r.key_hi = hi;
    r.valid = 1u;
    return r;
}

// Raw q.k -> scaled, softcap, ALiBi, qq_bias; NEG for keys past the chunk and padding rows.
fn finish_score(raw: f32, m: u32, key: u32, valid: bool, inf: DecInfo) -> f32 {
    // (Padding rows read the last real head's ALiBi slope: every index stays in range.)
    var x = score_terms(raw, inf.head0 + min(m, inf.nheads - 1u), key, inf.ctx, 0u);
    if (!valid || m >= inf.nheads) {
        x = NEG;
    }
    return x;
}


// FUSED_WRITE (mode `none`, a decode step whose writes are its rows' newest keys; the host
// checks both): the workgroups of a row's last non-empty segment copy the row's new K and V
// rows of their KV head (16-byte words, as kernels/write_copy.wgsl) into the slot of the key
// they read last, then a storage barrier makes the copy visible to the workgroup's own loads.
// Every head chunk of the KV head writes the same words (each reads the row itself); no other
// workgroup reads that slot. A padding slot (< 0) is not written, as in the write kernel.
fn write_newest(tid: u32, inf: DecInfo) {
    if (FUSED_WRITE) {
        let slot = step_meta[st.off_slot + inf.tok];
        if (inf.key_lo < inf.key_hi && inf.key_hi == inf.kv_len && slot >= 0) {
            let row_v4 = ly.k_row_words / 4u;
            let ev4 = 16u / MODEL_WORDS4; // elements per 16 bytes
            let h = inf.kv_head;
            let ks = (ly.ki_off + inf.tok * ly.ki_tok + h * ly.ki_head) / ev4;
            let vs = (ly.vi_off + inf.tok * ly.vi_tok + h * ly.vi_head) / ev4;
            let dst = (u32(slot) * ly.num_kv_heads + h) * row_v4;
            for (var c = tid; c < row_v4; c += WG_SIZE) {
                let kw = new_row4(false, ks + c);
                let vw = new_row4(true, vs + c);
                kv_store4(false, dst + c, kw);
                kv_store4(true, dst + c, vw);
            }
        }
        storageBarrier();
    }
}

// Prologue: the query rows into q_sh (then the mode's transform, rounded to the model dtype),
// all threads; ends with a barrier.
fn load_q(tid: u32, inf: DecInfo) {
    let d4 = HEAD_DIM / 4u;
    for (var e = tid; e < MAX_M * d4; e += WG_SIZE) {
        let m = e / d4;
        var v = vec4<f32>(0.0);
        if (m < inf.nheads) {
            v = q_load4(q_elem(inf.tok, inf.head0 + m, e % d4));
        }
        q_sh[e] = v;
    }
    workgroupBarrier();
    if (HAS_TRANSFORM) {
        q_transform(tid, MAX_M);
        workgroupBarrier();
        for (var e = tid; e < MAX_M * d4; e += WG_SIZE) {
            q_sh[e] = model_round4(q_sh[e]);
        }
        workgroupBarrier();
    }
}

// COMBINE (split-K on adapters with coherent storage, the host checks): every workgroup writes
// its partials to `part` (binding 12, @coherent) instead of `out`, then the last workgroup of
// its (sequence, head chunk) to arrive (an atomic counter per pair, binding 13, which that
// workgroup resets to 0) combines all segments' partials into the output itself: no reduce
// pass. The prelude gives COMBINE (const) and, with it, the bindings and part_store4(i, v)
// (16-byte word i), part_load4(i), arrive_add(c) (the counter's old value) and
// arrive_reset(c); without it, stubs that are never called. CMB_LEN: the (maximum,
// denominator) pairs staged while combining (>= MAX_M * num_segments, the host checks).
override CMB_LEN: u32 = 1u;
var<workgroup> cmb_sh: array<vec2<f32>, CMB_LEN>;
var<workgroup> cmb_last: u32;
var<workgroup> cmb_max: array<atomic<u32>, MAX_M>; // each row's largest segment maximum

// Row m, vec4 column col of the finished segment: unnormalised accumulator a, denominator l,
// running maximum mx. With IS_SPLIT the split-K partials; else the output (staged in q_sh for
// store_transformed when the mode has a transform).
fn store_row4(m: u32, col: u32, a: vec4<f32>, l: f32, mx: f32, inf: DecInfo, seg: u32) {
    let seen = inf.key_lo < inf.key_hi;
    if (IS_SPLIT) {
        if (m < inf.nheads) {
            let slot = (inf.tok * ly.num_q_heads + inf.head0 + m) * ly.num_segments + seg;
            let v = select(vec4<f32>(0.0), a, seen);
            let b = slot * HEAD_DIM + 4u * col;
            let sb = ly.seg_rows * ly.num_q_heads * ly.num_segments * HEAD_DIM + slot * 2u;
            let ml = vec2<f32>(select(NEG, mx, seen), select(0.0, l, seen));
            if (COMBINE) {
                part_store4(b / 4u, v);
                if (col == 0u) {
                    part_store_ml(sb, ml);
                }
            } else {
                partial_store4(b, v);
                if (col == 0u) {
                    partial_store_ml(sb, ml.x, ml.y);
                }
            }
        }
        return;
    }
    var v = vec4<f32>(0.0);
    if (seen) {
        v = a / l;
    }
    if (HAS_TRANSFORM) {
        q_sh[m * (HEAD_DIM / 4u) + col] = model_round4(v);
    } else if (m < inf.nheads) {
        out_store4(out_elem(inf.tok, inf.head0 + m, col), v);
    }
}

// With a transform (and no split: then the reduce pass or the combine applies it): the staged
// rows in q_sh transformed back and stored, all threads.
fn store_transformed(tid: u32, inf: DecInfo) {
    if (HAS_TRANSFORM && !IS_SPLIT) {
        transform_store(tid, inf);
    }
}

fn transform_store(tid: u32, inf: DecInfo) {
    workgroupBarrier();
    out_transform(tid, MAX_M);
    workgroupBarrier();
    let d4 = HEAD_DIM / 4u;
    for (var e = tid; e < MAX_M * d4; e += WG_SIZE) {
        let m = e / d4;
        if (m < inf.nheads) {
            out_store4(out_elem(inf.tok, inf.head0 + m, e % d4), q_sh[e]);
        }
    }
}

// COMBINE, all threads, after the workgroup's partials are stored. The storage barrier (device
// scope, release) orders those stores before thread 0's arrival; the last to arrive passes a
// second one (acquire) before it reads every segment's partials, which the coherent binding
// reads from the device's coherent level. The math is the reduce pass's (kernels/reduce.wgsl,
// spec 6.3): weights exp(M_g - max) over the segments that saw a key, sinks once in the
// denominator, segments added in order (deterministic); rows that saw no key store 0.
fn combine_split(tid: u32, inf: DecInfo, wid: vec3<u32>, nwg: vec3<u32>) {
    // Diagnostics (QUANTKV_DEBUG_SKIP, the kernel's override): 8192 leaves out the arrival
    // (nothing is combined), 4096 the combine's reads (zeros stored); results are wrong.
    if (!COMBINE || (DEBUG_SKIP & 8192u) != 0u) {
        return;
    }
    storageBarrier();
    let c = wid.x * nwg.y + wid.y;
    if (tid < MAX_M) {
        atomicStore(&cmb_max[tid], 0u);
    }
    if (tid == 0u) {
        var last = 0u;
        if (arrive_add(c) + 1u == nwg.z) {
            arrive_reset(c);
            last = 1u;
        }
        cmb_last = last;
    }
    if (workgroupUniformLoad(&cmb_last) == 0u) {
        return;
    }
    storageBarrier();
    let ns = nwg.z;
    let stats = ly.seg_rows * ly.num_q_heads * ns * HEAD_DIM;
    // Row m's slot of segment g: (tok * hq + head0 + m) * ns + g.
    let slot0 = (inf.tok * ly.num_q_heads + inf.head0) * ns;
    // Every segment's (M, E) staged, each row's largest M by an atomic maximum on order-keyed
    // bits (0: no segment saw a key), all pairs at once; then every weight computed once, in
    // parallel, so the output loop below only loads and multiplies. (Issuing each thread's
    // first round of accumulator loads before the statistics' was slower on an H200: B=1
    // L=4k 17.0 -> 18.0 us, the round held across two barriers; BENCHMARKS.md.)
    let n = inf.nheads * ns;
    for (var t = tid; t < n; t += WG_SIZE) {
        let ml = part_load_ml(stats + (slot0 + t) * 2u);
        cmb_sh[t] = ml;
        if (ml.x > NEG_HALF) {
            atomicMax(&cmb_max[t / ns], order_key(ml.x));
        }
    }
    workgroupBarrier();
    for (var t = tid; t < n; t += WG_SIZE) {
        cmb_sh[t] = cmb_weight(cmb_sh[t], cmb_gmax(inf, t / ns));
    }
    workgroupBarrier();
    // Output group e (row e / d4, elements 4 (e % d4) ..): the segments' accumulators by their
    // weights. Where the workgroup has twice the threads of the output groups (head size 64 on
    // the streaming rung), two threads share a group, one the even segments and one the odd,
    // and the odd sum joins the even one through q_sh (free here): twice the loads in flight.
    let d4 = HEAD_DIM / 4u;
    let outs = MAX_M * d4;
    let skip = (DEBUG_SKIP & 4096u) != 0u;
    if (2u * outs <= WG_SIZE) {
        let e = tid % outs;
        let m = e / d4;
        var a = vec4<f32>(0.0);
        if (tid < 2u * outs && m < inf.nheads && !skip) {
            a = cmb_part(cmb_word(slot0, m * ns, e % d4), m * ns, tid / outs, 2u, ns);
        }
        if (tid >= outs && tid < 2u * outs) {
            q_sh[e] = a;
        }
        workgroupBarrier();
        if (tid < outs) {
            cmb_finish(inf, e, a + q_sh[e], ns);
        }
    } else {
        for (var e = tid; e < outs; e += WG_SIZE) {
            let m = e / d4;
            var a = vec4<f32>(0.0);
            if (m < inf.nheads && !skip) {
                a = cmb_part(cmb_word(slot0, m * ns, e % d4), m * ns, 0u, 1u, ns);
            }
            cmb_finish(inf, e, a, ns);
        }
    }
    if (HAS_TRANSFORM) {
        transform_store(tid, inf);
    }
}

// Sixteen segments' accumulator groups, loaded together.
struct Round {
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
    x3: vec4<f32>,
    x4: vec4<f32>,
    x5: vec4<f32>,
    x6: vec4<f32>,
    x7: vec4<f32>,
    x8: vec4<f32>,
    x9: vec4<f32>,
    x10: vec4<f32>,
    x11: vec4<f32>,
    x12: vec4<f32>,
    x13: vec4<f32>,
    x14: vec4<f32>,
    x15: vec4<f32>,
}

// The 16-byte word of segment 0's accumulator group j of row `first / ns` (segment g's is
// d4 g words on).
fn cmb_word(slot0: u32, first: u32, j: u32) -> u32 {
    return (slot0 + first) * (HEAD_DIM / 4u) + j;
}

// Segments g, g + gs, ..., g + 15 gs of the group at word w0; the last segment again past ns.
fn cmb_round(w0: u32, g: u32, gs: u32, ns: u32) -> Round {
    return Round(cmb_load(w0, g, ns), cmb_load(w0, g + gs, ns), cmb_load(w0, g + 2u * gs, ns),
                 cmb_load(w0, g + 3u * gs, ns), cmb_load(w0, g + 4u * gs, ns),
                 cmb_load(w0, g + 5u * gs, ns), cmb_load(w0, g + 6u * gs, ns),
                 cmb_load(w0, g + 7u * gs, ns), cmb_load(w0, g + 8u * gs, ns),
                 cmb_load(w0, g + 9u * gs, ns), cmb_load(w0, g + 10u * gs, ns),
                 cmb_load(w0, g + 11u * gs, ns), cmb_load(w0, g + 12u * gs, ns),
                 cmb_load(w0, g + 13u * gs, ns), cmb_load(w0, g + 14u * gs, ns),
                 cmb_load(w0, g + 15u * gs, ns));
}

// a + the round's segments (g, g + gs, ...) by their weights, in that order.
fn cmb_add_round(a0: vec4<f32>, r: Round, first: u32, g: u32, gs: u32, ns: u32) -> vec4<f32> {
    var a = cmb_add(a0, r.x0, first, g, ns);
    a = cmb_add(a, r.x1, first, g + gs, ns);
    a = cmb_add(a, r.x2, first, g + 2u * gs, ns);
    a = cmb_add(a, r.x3, first, g + 3u * gs, ns);
    a = cmb_add(a, r.x4, first, g + 4u * gs, ns);
    a = cmb_add(a, r.x5, first, g + 5u * gs, ns);
    a = cmb_add(a, r.x6, first, g + 6u * gs, ns);
    a = cmb_add(a, r.x7, first, g + 7u * gs, ns);
    a = cmb_add(a, r.x8, first, g + 8u * gs, ns);
    a = cmb_add(a, r.x9, first, g + 9u * gs, ns);
    a = cmb_add(a, r.x10, first, g + 10u * gs, ns);
    a = cmb_add(a, r.x11, first, g + 11u * gs, ns);
    a = cmb_add(a, r.x12, first, g + 12u * gs, ns);
    a = cmb_add(a, r.x13, first, g + 13u * gs, ns);
    a = cmb_add(a, r.x14, first, g + 14u * gs, ns);
    return cmb_add(a, r.x15, first, g + 15u * gs, ns);
}

// Sum over segments g0, g0 + gs, ... < ns of row `first / ns`'s accumulator group at word w0
// by their weights (cmb_sh), in that order, in rounds of sixteen segments whose loads are in
// flight together; a round's segments past ns load the last segment again and add nothing
// (a select, not a zero weight: a non-finite partial times 0 would still be NaN).
fn cmb_part(w0: u32, first: u32, g0: u32, gs: u32, ns: u32) -> vec4<f32> {
    var a = vec4<f32>(0.0);
    for (var g = g0; g < ns; g += 16u * gs) {
        a = cmb_add_round(a, cmb_round(w0, g, gs, ns), first, g, gs, ns);
    }
    return a;
}

// Segment g's accumulator group (word w0 + g d4), the last segment's past ns.
fn cmb_load(w0: u32, g: u32, ns: u32) -> vec4<f32> {
    return part_load4(w0 + min(g, ns - 1u) * (HEAD_DIM / 4u));
}

// a + x times segment g's weight, a itself for g past ns.
fn cmb_add(a: vec4<f32>, x: vec4<f32>, first: u32, g: u32, ns: u32) -> vec4<f32> {
    return select(a, a + x * cmb_sh[first + min(g, ns - 1u)].x, g < ns);
}

// Output group e from its weighted sum `a`: divided by the row's denominator (every segment's
// weighted E in order, the sink's term once), 0 where no segment saw a key; stored, or staged
// in q_sh for the mode's transform.
fn cmb_finish(inf: DecInfo, e: u32, a: vec4<f32>, ns: u32) {
    let d4 = HEAD_DIM / 4u;
    let m = e / d4;
    var v = vec4<f32>(0.0);
    if (m < inf.nheads && (DEBUG_SKIP & 4096u) == 0u && atomicLoad(&cmb_max[m]) != 0u) {
        var den = 0.0;
        for (var g = 0u; g < ns; g++) {
            den += cmb_sh[m * ns + g].y;
        }
        if (HAS_SINKS) {
            den += exp_diff(cmb_sink(inf, m), cmb_gmax(inf, m));
        }
        v = a / den;
    }
    if (HAS_TRANSFORM) {
        q_sh[e] = model_round4(v);
    } else if (m < inf.nheads) {
        out_store4(out_elem(inf.tok, inf.head0 + m, e % d4), v);
    }
}

// f32 bits keyed so that unsigned order is the floats' order (every key of a finite value is
// nonzero).
fn order_key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn order_value(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7FFFFFFFu, (k & 0x80000000u) != 0u));
}

// Row m's sink as a score (NEG without sinks).
fn cmb_sink(inf: DecInfo, m: u32) -> f32 {
    if (HAS_SINKS) {
        return real_score(laux[ly.off_sinks + inf.head0 + m]);
    }
    return NEG;
}

// Row m's largest segment maximum, with its sink (NEG where no segment saw a key).
fn cmb_gmax(inf: DecInfo, m: u32) -> f32 {
    let k = atomicLoad(&cmb_max[m]);
    return max(select(NEG, order_value(k), k != 0u), cmb_sink(inf, m));
}

// A segment's weight exp(M - gmax) and its weighted denominator (0, 0 where it saw no key).
fn cmb_weight(ml: vec2<f32>, gmax: f32) -> vec2<f32> {
    if (ml.x > NEG_HALF) {
        let w = exp_diff(ml.x, gmax);
        return vec2<f32>(w, w * ml.y);
    }
    return vec2<f32>(0.0);
}
