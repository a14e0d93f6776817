// kernels/decode_stream.wgsl — the streaming rung of the decode kernel (subgroups required).
// Same plan, bindings, prologue, score rules and epilogue as decode.wgsl (decode_common.wgsl);
// the key loop is different: no workgroup barrier and no per-thread array inside it.
//
//   * Every lane holds EL = 8 HALVES consecutive elements of a cached row (HALVES = 1 or 2);
//     a row is read by LPR = HEAD_DIM / EL lanes (a key group), with one load per lane and
//     row whose width follows the code width (at 8 elements: 16 bytes for 16-bit rows, 2 x 16
//     for f32, 8 for 8-bit codes, 4 for 4-bit, half a word for 2-bit; twice that at 16). A
//     subgroup of S lanes reads S / LPR rows per load. Two halves share each key's per-key
//     work (the dot's finish over the key group, the softmax) over twice the bytes.
//   * The query heads of the workgroup (at most 4) are the components of a vec4: the lane's
//     query is 8 vec4s per half (element i of every head), a score is one vec4 (every head),
//     the running maximum, denominator and V zero-point correction are vec4s, and the
//     accumulator is 8 vec4s per half (the lane's output elements of every head). Nothing is
//     indexed at run time, so all of it stays in registers whatever the driver does with
//     loops.
//   * Each key group streams U consecutive keys per step, its subgroup's steps being
//     sid, sid + nsg, ...; the K and V words (and scales) of the next step are loaded before
//     the current step is computed, and the block-table entries two steps ahead.
//   * Scores: 8 vec4 multiply-adds per key, then the dot is finished over the key group with
//     the heads scattered over its lanes and gathered back (row_sum4: every lane ends with the
//     same bits).
//   * Online softmax per key group with a lazy rescale: the accumulators are rescaled only
//     when a step's maximum rises more than TAU above the running one (p <= e^TAU otherwise).
//   * After the loop: key groups merged by shuffles; the subgroups' maxima combined, then
//     their runs added one after another through workgroup memory (q_sh, free once q is in
//     registers), then stored by
//     decode_common.wgsl's store_row4 / store_transformed (split-K partials included; with
//     COMBINE the segments' last workgroup then combines them, combine_split).
//
// The host picks this rung only where the adapter's smallest subgroup holds at least LPR
// lanes (LPR a power of two <= 32), with 4 query heads per workgroup (padding heads past the
// KV head's group are masked); nothing assumes the subgroup size itself.
// Prelude (the host prepends it, per code width): M_MAX (= 4), LPR, HALVES, the K/V bindings
// (5, 6) at the lane's load width, the word type KW, k_word(row, lane) / v_word(row, lane) ->
// KW (the lane's load of a row) and k_unpack(w, lane, half) / v_unpack(w, lane, half) -> E8
// (8 raw values of the given half through the mode's read contract, k_raw4 / v_raw4; `half`
// is a constant at every call), and kw_keep(w, keep) -> KW (w, or all-zero words).
//
// Bindings: as decode.wgsl, K and V pools at the lane's load width.
// Dispatch: as decode.wgsl: x = num_seqs, y = num_kv_heads * head_chunks, z = num_segments.
// #include "kernels/decode_common.wgsl"

const U: u32 = 4u; // consecutive keys per key group and step
// Diagnostics only (QUANTKV_DEBUG_SKIP): 1 no keys (the loop and its loads), 2 no merge of the
// subgroups, 8 no query load; results are wrong while set.
override DEBUG_SKIP: u32 = 0u;
const TAU: f32 = 8.0; // lazy rescale threshold (natural log units)

// Eight consecutive raw values of a row.
struct E8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

// Eight elements of every head: e_i = element i of the four heads.
struct H8 {
    e0: vec4<f32>,
    e1: vec4<f32>,
    e2: vec4<f32>,
    e3: vec4<f32>,
    e4: vec4<f32>,
    e5: vec4<f32>,
    e6: vec4<f32>,
    e7: vec4<f32>,
}

// The lane's query (8 elements).
alias Q8 = H8;

// The lane's query, both halves (`hi` is zero and unused with HALVES = 1).
struct QL {
    lo: Q8,
    hi: Q8,
}

// Accumulators of 8 elements.
alias Acc8 = H8;

// A key group's running state (identical in its LPR lanes but for the accumulators' elements).
struct Run {
    m: vec4<f32>, // running maximum per head (may trail the true one by up to TAU)
    l: vec4<f32>, // denominator
    z: vec4<f32>, // V zero-point correction (modes with a zero point)
    a: Acc8, // the lane's first 8 elements
    b: Acc8, // the next 8 (HALVES = 2)
}

// One step's loads: U keys' K and V words (as loaded: they are unpacked where they are used,
// so nothing waits on them before the current step is computed), row scales and zero points.
struct Loads {
    k0: KW,
    k1: KW,
    k2: KW,
    k3: KW,
    v0: KW,
    v1: KW,
    v2: KW,
    v3: KW,
    ks: vec4<f32>,
    kz: vec4<f32>, // zero points (0 without)
    vs: vec4<f32>,
    vz: vec4<f32>,
}

var<workgroup> mlz_sh: array<vec4<f32>, 3>; // merged maximum, denominator, correction
// Each subgroup's maximum: at most WG_SIZE / LPR subgroups (the host sets NSG_MAX so; every
// subgroup holds at least a row's LPR lanes).
override NSG_MAX: u32 = 8u;
var<workgroup> ms_sh: array<vec4<f32>, NSG_MAX>;

// Sum over the LPR lanes of a key group, every head (the same bits in each lane). With at
// least 4 lanes per row the heads are scattered while they are summed (two heads per lane
// after the first exchange, one after the second: 3 + log2(LPR / 4) shuffles), then gathered
// back from the lanes that hold each head (4 shuffles): 9 shuffles at 16 lanes, not 16.
fn row_sum4(x: vec4<f32>, lane: u32, base: u32) -> vec4<f32> {
    if (LPR < 4u) {
        var y = x;
        if (LPR >= 2u) {
            y += subgroupShuffleXor(y, 1u);
        }
        return y;
    }
    let o1 = LPR / 2u;
    let o2 = LPR / 4u;
    let hi1 = (lane & o1) != 0u;
    let y2 = select(x.xy, x.zw, hi1) + subgroupShuffleXor(select(x.zw, x.xy, hi1), o1);
    let hi2 = (lane & o2) != 0u;
    var y = select(y2.x, y2.y, hi2) + subgroupShuffleXor(select(y2.y, y2.x, hi2), o2);
    if (LPR >= 32u) {
        y += subgroupShuffleXor(y, 4u);
    }
    if (LPR >= 16u) {
        y += subgroupShuffleXor(y, 2u);
    }
    if (LPR >= 8u) {
        y += subgroupShuffleXor(y, 1u);
    }
    // Head 2 b1 + b2 sits in the lanes whose bits o1, o2 are b1, b2.
    return vec4<f32>(subgroupShuffle(y, base), subgroupShuffle(y, base + o2),
                     subgroupShuffle(y, base + o1), subgroupShuffle(y, base + o1 + o2));
}

// Elements 4c .. 4c + 7 of every head's query row (q_sh: row h at h d4).
fn q_half(c: u32, d4: u32) -> Q8 {
    let h0a = q_sh[c];
    let h0b = q_sh[c + 1u];
    let h1a = q_sh[d4 + c];
    let h1b = q_sh[d4 + c + 1u];
    let h2a = q_sh[2u * d4 + c];
    let h2b = q_sh[2u * d4 + c + 1u];
    let h3a = q_sh[3u * d4 + c];
    let h3b = q_sh[3u * d4 + c + 1u];
    return Q8(vec4<f32>(h0a.x, h1a.x, h2a.x, h3a.x), vec4<f32>(h0a.y, h1a.y, h2a.y, h3a.y),
              vec4<f32>(h0a.z, h1a.z, h2a.z, h3a.z), vec4<f32>(h0a.w, h1a.w, h2a.w, h3a.w),
              vec4<f32>(h0b.x, h1b.x, h2b.x, h3b.x), vec4<f32>(h0b.y, h1b.y, h2b.y, h3b.y),
              vec4<f32>(h0b.z, h1b.z, h2b.z, h3b.z), vec4<f32>(h0b.w, h1b.w, h2b.w, h3b.w));
}

fn q8_sum(q: Q8) -> vec4<f32> {
    return ((q.e0 + q.e1) + (q.e2 + q.e3)) + ((q.e4 + q.e5) + (q.e6 + q.e7));
}

fn dot8(q: Q8, k: E8) -> vec4<f32> {
    var s = q.e0 * k.a.x;
    s = fma(q.e1, vec4<f32>(k.a.y), s);
    s = fma(q.e2, vec4<f32>(k.a.z), s);
    s = fma(q.e3, vec4<f32>(k.a.w), s);
    s = fma(q.e4, vec4<f32>(k.b.x), s);
    s = fma(q.e5, vec4<f32>(k.b.y), s);
    s = fma(q.e6, vec4<f32>(k.b.z), s);
    s = fma(q.e7, vec4<f32>(k.b.w), s);
    return s;
}

// The lane's part of a key's dot (every head), both halves.
fn dot_lane(q: QL, w: KW, lane: u32) -> vec4<f32> {
    var s = dot8(q.lo, k_unpack(w, lane, 0u));
    if (HALVES == 2u) {
        s += dot8(q.hi, k_unpack(w, lane, 1u));
    }
    return s;
}

// A key's finished scores (every head): the lane's part of the dot (`part`) finished over
// the key group, the row scale and zero point, then spec 6.1's terms; NEG for keys outside
// the segment. Padding heads (past the KV head's group) have a zero query and are never
// stored, so they are not masked.
fn score4(part: vec4<f32>, ks: f32, kz: f32, qsum: vec4<f32>, key: u32, valid: bool,
          lane: u32, base: u32, inf: DecInfo) -> vec4<f32> {
    let raw = fma(row_sum4(part, lane, base), vec4<f32>(ks), -kz * qsum);
    var s: vec4<f32>;
    if (HAS_SOFTCAP || ALIBI_MODE != 0u || HAS_QQ) {
        let last = inf.nheads - 1u; // padding heads read a real head's ALiBi slope
        s = vec4<f32>(score_terms(raw.x, inf.head0, key, inf.ctx, 0u),
                      score_terms(raw.y, inf.head0 + min(1u, last), key, inf.ctx, 0u),
                      score_terms(raw.z, inf.head0 + min(2u, last), key, inf.ctx, 0u),
                      score_terms(raw.w, inf.head0 + min(3u, last), key, inf.ctx, 0u));
    } else {
        s = plain_scores4(raw);
    }
    return select(vec4<f32>(NEG), s, valid);
}

// p = exp(s - m) (0 for masked keys). In the key loop s <= m + TAU, and a difference below
// -128 (e^-128 is below f32's smallest subnormal) gives exactly 0, as exp_diff4 does; the
// difference of a masked score may overflow to -inf, which the max and the select drop.
fn p_of(s: vec4<f32>, m: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(0.0), exp(max(s - m, vec4<f32>(-128.0))), s > vec4<f32>(NEG_HALF));
}

// acc += p (every head) * the key's 8 values.
fn fma8(acc: Acc8, p: vec4<f32>, v: E8) -> Acc8 {
    let a = v.a;
    let b = v.b;
    return Acc8(fma(p, vec4<f32>(a.x), acc.e0), fma(p, vec4<f32>(a.y), acc.e1),
                fma(p, vec4<f32>(a.z), acc.e2), fma(p, vec4<f32>(a.w), acc.e3),
                fma(p, vec4<f32>(b.x), acc.e4), fma(p, vec4<f32>(b.y), acc.e5),
                fma(p, vec4<f32>(b.z), acc.e6), fma(p, vec4<f32>(b.w), acc.e7));
}

// The key's V word into the accumulators, both halves. A key outside the segment (`valid`
// false) adds exactly 0, even where its (clamped) row holds a non-finite value: its word is
// zeroed before it is unpacked (code 0 decodes to a finite value in every mode, and its p is
// 0), one select per word instead of one per element.
fn pv_lane(r: Run, p: vec4<f32>, w0: KW, lane: u32, valid: bool) -> Run {
    var o = r;
    let w = kw_keep(w0, valid);
    o.a = fma8(o.a, p, v_unpack(w, lane, 0u));
    if (HALVES == 2u) {
        o.b = fma8(o.b, p, v_unpack(w, lane, 1u));
    }
    return o;
}

fn scale8(a: Acc8, f: vec4<f32>) -> Acc8 {
    return Acc8(a.e0 * f, a.e1 * f, a.e2 * f, a.e3 * f, a.e4 * f, a.e5 * f, a.e6 * f, a.e7 * f);
}

fn add8(x: Acc8, y: Acc8) -> Acc8 {
    return Acc8(x.e0 + y.e0, x.e1 + y.e1, x.e2 + y.e2, x.e3 + y.e3, x.e4 + y.e4, x.e5 + y.e5,
                x.e6 + y.e6, x.e7 + y.e7);
}

fn shuffle8(a: Acc8, o: u32) -> Acc8 {
    return Acc8(subgroupShuffleXor(a.e0, o), subgroupShuffleXor(a.e1, o),
                subgroupShuffleXor(a.e2, o), subgroupShuffleXor(a.e3, o),
                subgroupShuffleXor(a.e4, o), subgroupShuffleXor(a.e5, o),
                subgroupShuffleXor(a.e6, o), subgroupShuffleXor(a.e7, o));
}

fn scale_run(r: Run, f: vec4<f32>) -> Run {
    var o = r;
    o.l *= f;
    o.z *= f;
    o.a = scale8(o.a, f);
    if (HALVES == 2u) {
        o.b = scale8(o.b, f);
    }
    return o;
}

// Two states merged (the same bits whichever is `a`).
fn merge_run(a: Run, b: Run) -> Run {
    let mn = max(a.m, b.m);
    let x = scale_run(a, exp_diff4(a.m, mn));
    let y = scale_run(b, exp_diff4(b.m, mn));
    var o = x;
    o.m = mn;
    o.l = x.l + y.l;
    o.z = x.z + y.z;
    o.a = add8(x.a, y.a);
    if (HALVES == 2u) {
        o.b = add8(x.b, y.b);
    }
    return o;
}

fn shuffle_run(r: Run, o: u32) -> Run {
    var s = r;
    s.m = subgroupShuffleXor(r.m, o);
    s.l = subgroupShuffleXor(r.l, o);
    s.z = subgroupShuffleXor(r.z, o);
    s.a = shuffle8(r.a, o);
    if (HALVES == 2u) {
        s.b = shuffle8(r.b, o);
    }
    return s;
}

// Cached rows of keys k0 .. k0 + 3 (row 0, which always exists, for keys outside
// [lo, hi)). One block-table load when the U keys share a page.
fn rows4(k0: u32, lo: u32, hi: u32, inf: DecInfo) -> vec4<u32> {
    var r = vec4<u32>(0u);
    let hk = ly.num_kv_heads;
    if (k0 + U <= hi && k0 >= lo && ly.block_size % U == 0u) {
        // k0 is a multiple of U (the steps start at an aligned key), so all U share a page.
        let r0 = physical_row(inf.seq, k0, inf.kv_head);
        r = vec4<u32>(r0, r0 + hk, r0 + 2u * hk, r0 + 3u * hk);
    } else if (k0 < hi) {
        for (var u = 0u; u < U; u++) {
            let key = k0 + u;
            if (key >= lo && key < hi) {
                r[u] = physical_row(inf.seq, key, inf.kv_head);
            }
        }
    }
    return r;
}

fn k_zero(row: u32) -> f32 {
    if (K_HAS_ZERO) {
        return k_row_zero(row);
    }
    return 0.0;
}

fn v_zero(row: u32) -> f32 {
    if (V_HAS_ZERO) {
        return v_row_zero(row);
    }
    return 0.0;
}

fn load_step(r: vec4<u32>, lane: u32) -> Loads {
    var o: Loads;
    o.k0 = k_word(r.x, lane);
    o.k1 = k_word(r.y, lane);
    o.k2 = k_word(r.z, lane);
    o.k3 = k_word(r.w, lane);
    o.v0 = v_word(r.x, lane);
    o.v1 = v_word(r.y, lane);
    o.v2 = v_word(r.z, lane);
    o.v3 = v_word(r.w, lane);
    o.ks = vec4<f32>(k_row_scale(r.x), k_row_scale(r.y), k_row_scale(r.z), k_row_scale(r.w));
    o.kz = vec4<f32>(k_zero(r.x), k_zero(r.y), k_zero(r.z), k_zero(r.w));
    o.vs = vec4<f32>(v_row_scale(r.x), v_row_scale(r.y), v_row_scale(r.z), v_row_scale(r.w));
    o.vz = vec4<f32>(v_zero(r.x), v_zero(r.y), v_zero(r.z), v_zero(r.w));
    return o;
}

// One step of a key group: keys k0 .. k0 + 3.
fn run_step(run: Run, q: QL, qsum: vec4<f32>, ld: Loads, k0: u32, lo: u32, hi: u32,
            lane: u32, base: u32, inf: DecInfo) -> Run {
    let ok0 = k0 >= lo && k0 < hi;
    let ok1 = k0 + 1u >= lo && k0 + 1u < hi;
    let ok2 = k0 + 2u >= lo && k0 + 2u < hi;
    let ok3 = k0 + 3u >= lo && k0 + 3u < hi;
    let kz = ld.ks * ld.kz; // scale * zero
    let s0 = score4(dot_lane(q, ld.k0, lane), ld.ks.x, kz.x, qsum, k0, ok0, lane, base,
                      inf);
    let s1 = score4(dot_lane(q, ld.k1, lane), ld.ks.y, kz.y, qsum, k0 + 1u, ok1, lane, base,
                      inf);
    let s2 = score4(dot_lane(q, ld.k2, lane), ld.ks.z, kz.z, qsum, k0 + 2u, ok2, lane, base,
                      inf);
    let s3 = score4(dot_lane(q, ld.k3, lane), ld.ks.w, kz.w, qsum, k0 + 3u, ok3, lane, base,
                      inf);
    var r = run;
    let mx = max(max(s0, s1), max(s2, s3));
    if (any(mx > r.m + vec4<f32>(TAU))) {
        let mn = max(r.m, mx);
        r = scale_run(r, exp_diff4(r.m, mn));
        r.m = mn;
    }
    let p0 = p_of(s0, r.m);
    let p1 = p_of(s1, r.m);
    let p2 = p_of(s2, r.m);
    let p3 = p_of(s3, r.m);
    r.l += (p0 + p1) + (p2 + p3);
    // V's row scale folds into p, its zero point into the correction z.
    let q0 = p0 * ld.vs.x;
    let q1 = p1 * ld.vs.y;
    let q2 = p2 * ld.vs.z;
    let q3 = p3 * ld.vs.w;
    if (V_HAS_ZERO) {
        r.z += (q0 * ld.vz.x + q1 * ld.vz.y) + (q2 * ld.vz.z + q3 * ld.vz.w);
    }
    r = pv_lane(r, q0, ld.v0, lane, ok0);
    r = pv_lane(r, q1, ld.v1, lane, ok1);
    r = pv_lane(r, q2, ld.v2, lane, ok2);
    r = pv_lane(r, q3, ld.v3, lane, ok3);
    return r;
}

// q_sh[e] = its merged value (subgroup g > 0; the first overwrites q) + x.
fn merge_into(e: u32, g: u32, x: vec4<f32>) {
    var old = vec4<f32>(0.0);
    if (g > 0u) {
        old = q_sh[e];
    }
    q_sh[e] = old + x;
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) si: u32,
        @builtin(subgroup_size) ss: u32,
        @builtin(subgroup_id) sid: u32,
        @builtin(num_subgroups) nsg: u32) {
    if (tid == 0u) {
        info = plan_decode(wid, nwg.z);
    }
    let inf = workgroupUniformLoad(&info);
    if (inf.valid == 0u) {
        return;
    }
    let d4 = HEAD_DIM / 4u;
    write_newest(tid, inf);
    let lane = si % LPR; // position in the row
    let kg = si / LPR; // key group in the subgroup
    let nkg = ss / LPR;
    let kbase = si - lane; // the key group's first lane

    // The first two steps' block-table entries are looked up before the query is loaded (the
    // query load ends with a barrier), so those two round trips overlap: the first step's K/V
    // loads wait on one round trip after the plan, not two. (Issuing the first step's K/V
    // words before the query too was 0.5-1 % faster at B=1 on an H200 but held those words
    // across the query's barrier and was 1-8 % slower at B=8 and B=16, quantized modes most.)
    // Steps start at a key aligned to U (keys below key_lo are masked), so a step's keys share
    // a page whenever the block size is a multiple of U.
    let lo = inf.key_lo;
    let hi = select(inf.key_hi, lo, (DEBUG_SKIP & 1u) != 0u);
    let base = lo - lo % U;
    let per_step = U * nkg;
    let nsteps = (hi - base + per_step - 1u) / per_step;
    let off = kg * U;
    var j = sid;
    let rows_first = rows4(base + j * per_step + off, lo, hi, inf);
    var rows_next = rows4(base + (j + nsg) * per_step + off, lo, hi, inf);
    if ((DEBUG_SKIP & 8u) == 0u) {
        load_q(tid, inf);
    }

    // This lane's query elements of every head (q_sh holds M_MAX = 4 rows, padding rows 0):
    // elements EL lane .. EL lane + EL - 1, vec4s c .. c + 2 HALVES - 1 of each row.
    let c = 2u * HALVES * lane;
    var q: QL;
    q.lo = q_half(c, d4);
    var qs8 = q8_sum(q.lo);
    if (HALVES == 2u) {
        q.hi = q_half(c + 2u, d4);
        qs8 += q8_sum(q.hi);
    }
    // Each head's element sum (zero points): the lane's elements, then the key group.
    var qsum = vec4<f32>(0.0);
    if (K_HAS_ZERO) {
        qsum = row_sum4(qs8, lane, kbase);
    }

    var run: Run;
    run.m = vec4<f32>(NEG);
    if (HAS_SINKS && !IS_SPLIT && sid == 0u && kg == 0u) {
        // exp(sink - m) with m = sink, counted once per head.
        for (var m = 0u; m < 4u; m++) {
            if (m < inf.nheads) {
                run.m[m] = real_score(laux[ly.off_sinks + inf.head0 + m]);
                run.l[m] = 1.0;
            }
        }
    }
    workgroupBarrier(); // every lane has its q; q_sh is free for the merge

    var cur = load_step(rows_first, lane);
    for (; j < nsteps; j += nsg) {
        let rows_after = rows4(base + (j + 2u * nsg) * per_step + off, lo, hi, inf);
        let nxt = load_step(rows_next, lane);
        run = run_step(run, q, qsum, cur, base + j * per_step + off, lo, hi, lane, kbase, inf);
        cur = nxt;
        rows_next = rows_after;
    }

    // Key groups of the subgroup.
    for (var o = LPR; o < ss; o <<= 1u) {
        run = merge_run(run, shuffle_run(run, o));
    }
    // Subgroups: their maxima first (one barrier), then each subgroup's run scaled to the
    // common maximum and added into (mlz_sh, q_sh) one subgroup after another, one barrier
    // each; the fixed order keeps the result deterministic.
    let skip_merge = (DEBUG_SKIP & 2u) != 0u;
    if (kg == 0u && lane == 0u && !skip_merge) {
        ms_sh[sid] = run.m;
    }
    workgroupBarrier();
    var mn = run.m;
    if (!skip_merge) {
        mn = ms_sh[0];
        for (var g = 1u; g < nsg; g++) {
            mn = max(mn, ms_sh[g]);
        }
    }
    let r = scale_run(run, exp_diff4(run.m, mn));
    for (var g = 0u; g < nsg * u32(!skip_merge); g++) {
        if (sid == g && kg == 0u) {
            // Head h's elements EL lane .. sit in q_sh[h d4 + c ..].
            for (var h = 0u; h < 4u; h++) {
                let e = h * d4 + c;
                merge_into(e, g, vec4<f32>(r.a.e0[h], r.a.e1[h], r.a.e2[h], r.a.e3[h]));
                merge_into(e + 1u, g, vec4<f32>(r.a.e4[h], r.a.e5[h], r.a.e6[h], r.a.e7[h]));
                if (HALVES == 2u) {
                    merge_into(e + 2u, g, vec4<f32>(r.b.e0[h], r.b.e1[h], r.b.e2[h], r.b.e3[h]));
                    merge_into(e + 3u, g, vec4<f32>(r.b.e4[h], r.b.e5[h], r.b.e6[h], r.b.e7[h]));
                }
            }
            if (lane == 0u) {
                var l0 = vec4<f32>(0.0);
                var z0 = vec4<f32>(0.0);
                if (g > 0u) {
                    l0 = mlz_sh[1];
                    z0 = mlz_sh[2];
                }
                mlz_sh[0] = mn;
                mlz_sh[1] = l0 + r.l;
                mlz_sh[2] = z0 + r.z;
            }
        }
        workgroupBarrier();
    }
    for (var e = tid; e < 4u * d4; e += WG_SIZE) {
        let m = e / d4;
        let a = q_sh[e] - vec4<f32>(mlz_sh[2][m]);
        store_row4(m, e % d4, a, mlz_sh[1][m], mlz_sh[0][m], inf, wid.z);
    }
    store_transformed(tid, inf);
    combine_split(tid, inf, wid, nwg);
}
