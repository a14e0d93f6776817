// benches/probe_fa2_prefill.wgsl — the gpu bench's `--fa2-prefill` probe: a causal f16 prefill
// in the FlashAttention-2 shape, timed and checked (sampled rows against an f64 reference on
// the host) before the library's prefill kernel is rebuilt on it (issue 13). Not a kernel of
// the library: no varlen batch, no window, softcap, sinks, ALiBi or quantized modes; one
// sequence of L tokens whose prompt is its whole context, Hq = 4 Hkv, head size 128.
//
// What differs from kernels/prefill.wgsl (64 rows x 16 keys per tile, five workgroup barriers
// per 16 keys, a softmax row shared by the subgroups):
//   * each subgroup owns 16 query rows (4 tokens x the 4 query heads of one KV head) and their
//     whole softmax: S of its rows goes to its own region of workgroup memory, two lanes per
//     row read it back as vec4s into registers (a quad order without bank conflicts), P goes
//     to its own P region; no subgroup reads another's;
//   * TK = 32 or 64 keys per tile; K and V share one tile region: the next tile's K words and
//     this tile's V words are loaded into registers (16-byte loads) a phase before they are
//     stored, so their latency overlaps the multiply-adds and the softmax; five barriers per
//     tile (K staged; S stored and K read; V and P stored, with the lazy-rescale flag read
//     uniformly (two); V read).
// SKIP (timing only, output wrong): 1 no Q K^T multiply-adds, 2 no P V multiply-adds, 4 no
// softmax loops, 8 no K/V loads or staging (the multiply-adds read whatever the region holds),
// 16 no lazy rescale of O (the flag never set).
// An earlier version read K and V fragments by coopLoad straight from the cache in the
// storage buffer: 3.4x slower than from workgroup memory on an H200 (BENCHMARKS.md).
//
// The host runs it only on adapters with 16x16x16 f16 cooperative matrices and subgroups of
// exactly 32 lanes, and sets every override below (strides and lengths follow TK and NSG).
enable f16;
enable wgpu_cooperative_matrix;

override NSG: u32 = 4u;      // subgroups per workgroup, 16 query rows each
override TK: u32 = 64u;      // keys per tile: 32 or 64
override L: u32 = 8192u;     // tokens: a multiple of 4 NSG and of TK
override HKV: u32 = 8u;      // KV heads (query heads: 4 HKV)
override SKIP: u32 = 0u;
override SS: u32 = 68u;      // S row stride (f32): TK + 4
override PS: u32 = 72u;      // P row stride (f16): TK + 8
override S_LEN: u32 = 4352u; // NSG * 16 * SS
override P_LEN: u32 = 4608u; // NSG * 16 * PS
override KV_LEN: u32 = 8704u; // TK * KS (the query staging too, TK rows per round)
override NW: u32 = 8u;       // 16-byte words of a K (or V) tile per thread: TK * 16 / (32 NSG)
const KS: u32 = 136u;        // K/V tile row stride (f16)
const D: u32 = 128u;
const NEG: f32 = -1e30;
// Softmax scale 1 / sqrt(128) in log2 units (p = 2^(s - m)).
const SCALE2: f32 = 0.12751743;
// The running maximum moves only when a tile's exceeds it by more than TAU (log2 units:
// p <= 2^TAU = 2896 fits f16).
const TAU: f32 = 11.5;
// Where it moves it is set MARGIN (log2 units) above the tile's maximum, so rising rows
// rescale less often.
override MARGIN: f32 = 0.0;

@group(0) @binding(0) var<storage, read> q_in: array<f16>;  // [L][4 HKV][D]
@group(0) @binding(1) var<storage, read> kc: array<vec4<u32>>; // [L / 16 blocks][16][HKV][D] f16
@group(0) @binding(2) var<storage, read> vc: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bt: array<u32>;    // logical -> physical block
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [L][4 HKV][D]

var<workgroup> kv_sh: array<f16, KV_LEN>;
var<workgroup> s_sh: array<f32, S_LEN>;
var<workgroup> p_sh: array<f16, P_LEN>;
var<workgroup> alpha_sh: array<f32, 128>;
var<workgroup> l_sh: array<f32, 128>;
// Every workgroup variable is a whole number of 16-byte words, so wherever the driver puts
// each, the 16x16 loads and stores see 16-byte-aligned rows (a 4-byte flag here broke the
// first version's loads on an H200).
var<workgroup> resc_sh: array<u32, 4>;

alias FA = coop_mat16x16<f16, A>;
alias FB = coop_mat16x16<f16, B>;
alias FC = coop_mat16x16<f32, C>;

// A tile's 16-byte words of one thread (w4..w7 unused where NW < 8).
struct Words {
    w0: vec4<u32>,
    w1: vec4<u32>,
    w2: vec4<u32>,
    w3: vec4<u32>,
    w4: vec4<u32>,
    w5: vec4<u32>,
    w6: vec4<u32>,
    w7: vec4<u32>,
}

// Word i of the thread in tile `t` (key row (tid + WG i) / 16, column word (tid + WG i) % 16).
fn word(v: bool, t: u32, tid: u32, i: u32, kvh: u32) -> vec4<u32> {
    let w = tid + i * NSG * 32u;
    let key = t * TK + w / 16u;
    let e = ((bt[key / 16u] * 16u + key % 16u) * HKV + kvh) * (D / 8u) + w % 16u;
    if (v) {
        return vc[e];
    }
    return kc[e];
}

fn load_words(v: bool, t: u32, tid: u32, kvh: u32) -> Words {
    var o: Words;
    if ((SKIP & 8u) != 0u || t * TK >= L) {
        return o;
    }
    o.w0 = word(v, t, tid, 0u, kvh);
    if (NW > 1u) { o.w1 = word(v, t, tid, 1u, kvh); }
    if (NW > 2u) { o.w2 = word(v, t, tid, 2u, kvh); o.w3 = word(v, t, tid, 3u, kvh); }
    if (NW > 4u) {
        o.w4 = word(v, t, tid, 4u, kvh);
        o.w5 = word(v, t, tid, 5u, kvh);
        o.w6 = word(v, t, tid, 6u, kvh);
        o.w7 = word(v, t, tid, 7u, kvh);
    }
    return o;
}

fn put_word(tid: u32, i: u32, x: vec4<u32>) {
    let w = tid + i * NSG * 32u;
    let b = (w / 16u) * KS + (w % 16u) * 8u;
    let a = vec2<f16>(unpack2x16float(x.x));
    let c = vec2<f16>(unpack2x16float(x.y));
    let d = vec2<f16>(unpack2x16float(x.z));
    let e = vec2<f16>(unpack2x16float(x.w));
    kv_sh[b] = a.x;
    kv_sh[b + 1u] = a.y;
    kv_sh[b + 2u] = c.x;
    kv_sh[b + 3u] = c.y;
    kv_sh[b + 4u] = d.x;
    kv_sh[b + 5u] = d.y;
    kv_sh[b + 6u] = e.x;
    kv_sh[b + 7u] = e.y;
}

fn put_words(tid: u32, o: Words) {
    if ((SKIP & 8u) != 0u) {
        return;
    }
    put_word(tid, 0u, o.w0);
    if (NW > 1u) { put_word(tid, 1u, o.w1); }
    if (NW > 2u) { put_word(tid, 2u, o.w2); put_word(tid, 3u, o.w3); }
    if (NW > 4u) {
        put_word(tid, 4u, o.w4);
        put_word(tid, 5u, o.w5);
        put_word(tid, 6u, o.w6);
        put_word(tid, 7u, o.w7);
    }
}

// S block of the subgroup's rows and tile keys t0.., into its S region at `at`.
fn s_block(q0: FA, q1: FA, q2: FA, q3: FA, q4: FA, q5: FA, q6: FA, q7: FA, zero: FC,
           t0: u32, at: u32) {
    var c = zero;
    if ((SKIP & 1u) == 0u) {
        let b = t0 * KS;
        c = coopMultiplyAdd(q0, coopLoad<FB>(&kv_sh[b], KS), c);
        c = coopMultiplyAdd(q1, coopLoad<FB>(&kv_sh[b + 16u], KS), c);
        c = coopMultiplyAdd(q2, coopLoad<FB>(&kv_sh[b + 32u], KS), c);
        c = coopMultiplyAdd(q3, coopLoad<FB>(&kv_sh[b + 48u], KS), c);
        c = coopMultiplyAdd(q4, coopLoad<FB>(&kv_sh[b + 64u], KS), c);
        c = coopMultiplyAdd(q5, coopLoad<FB>(&kv_sh[b + 80u], KS), c);
        c = coopMultiplyAdd(q6, coopLoad<FB>(&kv_sh[b + 96u], KS), c);
        c = coopMultiplyAdd(q7, coopLoad<FB>(&kv_sh[b + 112u], KS), c);
    }
    coopStoreT(c, &s_sh[at], SS);
}

// o + P (key blocks of the P region) V (tile columns d0..).
fn pv(o: FC, p0: FA, p1: FA, p2: FA, p3: FA, d0: u32) -> FC {
    if ((SKIP & 2u) != 0u) {
        return o;
    }
    var r = coopMultiplyAdd(p0, coopLoadT<FB>(&kv_sh[d0], KS), o);
    r = coopMultiplyAdd(p1, coopLoadT<FB>(&kv_sh[16u * KS + d0], KS), r);
    if (TK > 32u) {
        r = coopMultiplyAdd(p2, coopLoadT<FB>(&kv_sh[32u * KS + d0], KS), r);
        r = coopMultiplyAdd(p3, coopLoadT<FB>(&kv_sh[48u * KS + d0], KS), r);
    }
    return r;
}

// Quad i of a lane's half of its row (lane half hf): quads (i & 3) + 8 (i >> 2) + 4 hf, so the
// eight lanes of a 16-byte access phase (rows 4p.., both halves) hit distinct bank quads.
fn quad(i: u32, hf: u32) -> u32 {
    return (i & 3u) + ((i >> 2u) << 3u) + 4u * hf;
}

// Scores of quad c of row r (scaled to log2 units), NEG past the row's token.
fn s4(sb: u32, r: u32, c: u32, key0: u32, tok: u32) -> vec4<f32> {
    let b = sb + r * SS + 4u * c;
    let s = vec4<f32>(s_sh[b], s_sh[b + 1u], s_sh[b + 2u], s_sh[b + 3u]) * SCALE2;
    let keys = vec4<u32>(key0 + 4u * c) + vec4<u32>(0u, 1u, 2u, 3u);
    return select(vec4<f32>(NEG), s, keys <= vec4<u32>(tok));
}

// p = 2^(s - m) of a quad into the P region; their sum.
fn p4(pb: u32, r: u32, c: u32, s: vec4<f32>, m: f32) -> f32 {
    let p = select(vec4<f32>(0.0), exp2(s - vec4<f32>(m)), s > vec4<f32>(-1e29));
    let b = pb + r * PS + 4u * c;
    let h = vec4<f16>(p);
    p_sh[b] = h.x;
    p_sh[b + 1u] = h.y;
    p_sh[b + 2u] = h.z;
    p_sh[b + 3u] = h.w;
    return (p.x + p.y) + (p.z + p.w);
}

fn hmax(v: vec4<f32>) -> f32 {
    return max(max(v.x, v.y), max(v.z, v.w));
}

// Two O blocks scaled per row by alpha_sh through the S region (32 columns).
struct Pair {
    a: FC,
    b: FC,
}

fn scale_pair(a: FC, b: FC, sb: u32, rs: u32, r: u32, hf: u32) -> Pair {
    coopStoreT(a, &s_sh[sb], SS);
    coopStoreT(b, &s_sh[sb + 16u], SS);
    workgroupBarrier();
    for (var c = 0u; c < 16u; c++) {
        s_sh[sb + r * SS + hf * 16u + c] *= alpha_sh[rs + r];
    }
    workgroupBarrier();
    let o = Pair(coopLoadT<FC>(&s_sh[sb], SS), coopLoadT<FC>(&s_sh[sb + 16u], SS));
    workgroupBarrier();
    return o;
}

// Two O blocks (columns d0..d0 + 31) divided by l and stored, through the S region.
fn store_pair(a: FC, b: FC, sb: u32, r: u32, hf: u32, qrow: u32, d0: u32, inv_l: f32) {
    coopStoreT(a, &s_sh[sb], SS);
    coopStoreT(b, &s_sh[sb + 16u], SS);
    workgroupBarrier();
    for (var c = 0u; c < 16u; c++) {
        out[qrow + d0 + hf * 16u + c] = s_sh[sb + r * SS + hf * 16u + c] * inv_l;
    }
    workgroupBarrier();
}

// The subgroup's query fragment of columns k0.. from the staged rows (every subgroup loads in
// every staging round: fragment operations stay in uniform control flow).
fn take_q(cur: FA, lr: u32, k0: u32, mine: bool) -> FA {
    let f = coopLoadT<FA>(&kv_sh[lr * KS + k0], KS);
    if (mine) {
        return f;
    }
    return cur;
}

@compute @workgroup_size(NSG * 32u)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let sg = tid / 32u;
    let lane = tid % 32u;
    let hq = 4u * HKV;
    let ntb = L / (4u * NSG);
    let tb = ntb - 1u - wid.x / HKV; // the longest rows first
    let kvh = wid.x % HKV;
    let tw0 = tb * 4u * NSG;        // the workgroup's first token
    let ts0 = tw0 + 4u * sg;        // the subgroup's
    let rs = sg * 16u;
    let sb = sg * 16u * SS;
    let pb = sg * 16u * PS;
    // Lane roles in the softmax and staging: row r (token ts0 + r / 4, head 4 kvh + r % 4),
    // half hf of its columns.
    let r = lane / 2u;
    let hf = lane % 2u;
    let tok = ts0 + r / 4u;
    let qrow = (tok * hq + 4u * kvh + r % 4u) * D;

    for (var e = lane; e < 16u * SS; e += 32u) {
        s_sh[sb + e] = 0.0;
    }
    if (tid == 0u) {
        resc_sh[0] = 0u;
    }
    // Query rows staged through the K/V region, TK / 16 subgroups' rows per round.
    let spr = TK / 16u;
    var q0 = coopLoadT<FA>(&kv_sh[0], KS);
    var q1 = q0;
    var q2 = q0;
    var q3 = q0;
    var q4 = q0;
    var q5 = q0;
    var q6 = q0;
    var q7 = q0;
    for (var g0 = 0u; g0 < NSG; g0 += spr) {
        let mine = sg >= g0 && sg < g0 + spr;
        let lr = select(0u, (sg - g0) * 16u, mine);
        if (mine) {
            for (var c = 0u; c < 64u; c++) {
                kv_sh[(lr + r) * KS + hf * 64u + c] = q_in[qrow + hf * 64u + c];
            }
        }
        workgroupBarrier();
        q0 = take_q(q0, lr, 0u, mine);
        q1 = take_q(q1, lr, 16u, mine);
        q2 = take_q(q2, lr, 32u, mine);
        q3 = take_q(q3, lr, 48u, mine);
        q4 = take_q(q4, lr, 64u, mine);
        q5 = take_q(q5, lr, 80u, mine);
        q6 = take_q(q6, lr, 96u, mine);
        q7 = take_q(q7, lr, 112u, mine);
        workgroupBarrier();
    }
    let zero = coopLoadT<FC>(&s_sh[sb], SS);

    var o0 = zero;
    var o1 = zero;
    var o2 = zero;
    var o3 = zero;
    var o4 = zero;
    var o5 = zero;
    var o6 = zero;
    var o7 = zero;
    var m_run = NEG;
    var l_run = 0.0;
    let kend = tw0 + 4u * NSG; // keys the workgroup's last token sees
    let ntiles = (kend + TK - 1u) / TK;
    let nq = TK / 8u; // quads per lane
    var kw = load_words(false, 0u, tid, kvh);
    for (var t = 0u; t < ntiles; t++) {
        let key0 = t * TK;
        put_words(tid, kw);
        let vw = load_words(true, t, tid, kvh);
        workgroupBarrier(); // K staged
        kw = load_words(false, t + 1u, tid, kvh);
        s_block(q0, q1, q2, q3, q4, q5, q6, q7, zero, 0u, sb);
        s_block(q0, q1, q2, q3, q4, q5, q6, q7, zero, 16u, sb + 16u);
        if (TK > 32u) {
            s_block(q0, q1, q2, q3, q4, q5, q6, q7, zero, 32u, sb + 32u);
            s_block(q0, q1, q2, q3, q4, q5, q6, q7, zero, 48u, sb + 48u);
        }
        workgroupBarrier(); // S stored, K read
        put_words(tid, vw);
        // The softmax of row r over this lane's half of the tile, scores in registers.
        var alpha = 1.0;
        if ((SKIP & 4u) == 0u) {
            let a0 = s4(sb, r, quad(0u, hf), key0, tok);
            let a1 = s4(sb, r, quad(1u, hf), key0, tok);
            let a2 = s4(sb, r, quad(2u, hf), key0, tok);
            let a3 = s4(sb, r, quad(3u, hf), key0, tok);
            var a4 = vec4<f32>(NEG);
            var a5 = vec4<f32>(NEG);
            var a6 = vec4<f32>(NEG);
            var a7 = vec4<f32>(NEG);
            if (nq > 4u) {
                a4 = s4(sb, r, quad(4u, hf), key0, tok);
                a5 = s4(sb, r, quad(5u, hf), key0, tok);
                a6 = s4(sb, r, quad(6u, hf), key0, tok);
                a7 = s4(sb, r, quad(7u, hf), key0, tok);
            }
            var mx = hmax(max(max(max(a0, a1), max(a2, a3)), max(max(a4, a5), max(a6, a7))));
            mx = max(mx, subgroupShuffleXor(mx, 1u));
            if (mx > m_run + TAU) {
                alpha = exp2(m_run - (mx + MARGIN));
                m_run = mx + MARGIN;
                if (t > 0u && (SKIP & 16u) == 0u) {
                    resc_sh[0] = 1u;
                }
            }
            var ps = (p4(pb, r, quad(0u, hf), a0, m_run) + p4(pb, r, quad(1u, hf), a1, m_run))
                + (p4(pb, r, quad(2u, hf), a2, m_run) + p4(pb, r, quad(3u, hf), a3, m_run));
            if (nq > 4u) {
                ps += (p4(pb, r, quad(4u, hf), a4, m_run) + p4(pb, r, quad(5u, hf), a5, m_run))
                    + (p4(pb, r, quad(6u, hf), a6, m_run) + p4(pb, r, quad(7u, hf), a7, m_run));
            }
            ps += subgroupShuffleXor(ps, 1u);
            l_run = l_run * alpha + ps;
        }
        if (hf == 0u) {
            alpha_sh[rs + r] = alpha;
        }
        // V and P stored; the rescale flag read uniformly (a barrier on each side).
        let resc = workgroupUniformLoad(&resc_sh[0]);
        if (resc != 0u) {
            var pr = scale_pair(o0, o1, sb, rs, r, hf);
            o0 = pr.a;
            o1 = pr.b;
            pr = scale_pair(o2, o3, sb, rs, r, hf);
            o2 = pr.a;
            o3 = pr.b;
            pr = scale_pair(o4, o5, sb, rs, r, hf);
            o4 = pr.a;
            o5 = pr.b;
            pr = scale_pair(o6, o7, sb, rs, r, hf);
            o6 = pr.a;
            o7 = pr.b;
            if (tid == 0u) {
                resc_sh[0] = 0u;
            }
        }
        let p0 = coopLoadT<FA>(&p_sh[pb], PS);
        let p1 = coopLoadT<FA>(&p_sh[pb + 16u], PS);
        var p2 = p0;
        var p3 = p1;
        if (TK > 32u) {
            p2 = coopLoadT<FA>(&p_sh[pb + 32u], PS);
            p3 = coopLoadT<FA>(&p_sh[pb + 48u], PS);
        }
        o0 = pv(o0, p0, p1, p2, p3, 0u);
        o1 = pv(o1, p0, p1, p2, p3, 16u);
        o2 = pv(o2, p0, p1, p2, p3, 32u);
        o3 = pv(o3, p0, p1, p2, p3, 48u);
        o4 = pv(o4, p0, p1, p2, p3, 64u);
        o5 = pv(o5, p0, p1, p2, p3, 80u);
        o6 = pv(o6, p0, p1, p2, p3, 96u);
        o7 = pv(o7, p0, p1, p2, p3, 112u);
        workgroupBarrier(); // V read before the next K goes over it
    }

    // Epilogue: O / l per row through the S region, two blocks at a time.
    if (hf == 0u) {
        l_sh[rs + r] = l_run;
    }
    workgroupBarrier();
    let inv_l = 1.0 / l_sh[rs + r];
    store_pair(o0, o1, sb, r, hf, qrow, 0u, inv_l);
    store_pair(o2, o3, sb, r, hf, qrow, 32u, inv_l);
    store_pair(o4, o5, sb, r, hf, qrow, 64u, inv_l);
    store_pair(o6, o7, sb, r, hf, qrow, 96u, inv_l);
}
