// kernels/prefill.wgsl — flash attention for batches with prompts and chunked prefill, written
// against a small fragment interface so one kernel runs on tensor cores and everywhere else:
// `kernels/frag_coop.wgsl` implements it with cooperative matrices (16x16x16 f16 -> f32
// multiply-adds, one 16-row block per subgroup), `kernels/frag_twin.wgsl` with plain
// arithmetic and the same semantics (each of 16 lanes holds a 4x4 register block of a 16x16
// tile): the portable tiled kernel, and the path that runs the cooperative kernel's tiling,
// masking and softmax on adapters without cooperative matrices (lavapipe in CI).
//
// Every `unified_attention` parameter is supported as in kernels/unified.wgsl (varlen batch,
// causal, window (only the window's tiles are visited), softcap, sinks, ALiBi, qq_bias,
// prefix ranges, FP8 output). The kernel never holds a mode's query/output transform: a
// mode with one has its query rows rotated by kernels/rotate_q.wgsl first, and this kernel
// (IS_SPLIT) writes its rows unnormalised, as the one segment of the split-K partials, for
// the reduce pass to normalise and un-rotate (spec §5.4, bit for bit as a fused transform).
// (With the transform in this module, INT4 and INT2 came out wrong on cooperative matrices on
// an H200: BENCHMARKS.md.) Key-axis split-K applies to decode batches forced onto this kernel
// (segment wid.z of ly.num_segments, partials as kernels/unified.wgsl writes them); batches
// with prompts are never split. Rows are MAX_M = 16 * ROW_BLOCKS (query
// token, query head) pairs of ONE kv head (GQA packing as in unified.wgsl), so each K/V tile
// is read from the cache and dequantized (by the mode's read contract) once per workgroup.
//
// Per key tile of TK keys:
//   1. K tile -> kv_sh, V tile -> v_sh, their loads in flight together (model values less
//      zero points, rounded to the fragment element type ET); where the include has no
//      separate V tile (V_APART false: the twin, and on cooperative matrices every tiling
//      but the eight-subgroup one, plan::prefill_v_apart), V
//      goes over K after step 2, its loads in flight during the score pass
//   2. S = Q K^T by fragments (row block `sg` of each fragment owner), stored to s_sh (f32)
//   3. scores finished (spec §6.1 pipeline and mask) into registers (back to s_sh only where
//      a thread holds more than 16 keys: the twin's tilings) and the online softmax in
//      registers, the threads of a row combining by shuffles: a row's running maximum only
//      moves when the tile's maximum exceeds it by more than TAU (so P <= e^TAU fits f16);
//      O, held in fragments, is rescaled (through s_sh) only on tiles where some row's
//      maximum moved; on interior tiles (every row sees every key: interior_tile) of
//      pipelines without softcap, ALiBi or qq_bias, scores and P go four keys at a time as
//      vectors, with no mask or per-key terms
//   4. P (ET) -> p_sh, O += P V by fragments
// Precision: the tiles hold the cache's raw values less their zero points (codes as the read
// contract gives them, before the scale: exact in f16 for every mode but INT2, whose
// centroids K holds as hi + lo pairs and V rounds but for FP8 outputs, see RAW_SPLIT below)
// and Q as ET (f16 where SHADER_F16 allows; f32 for f32 models); a key's scale is applied to
// its score column after
// the multiply-add (S = s_k q·c), a value's is folded into P (p' = p s_v), and P enters the
// multiply-add on cooperative matrices as one f16 value (relative error <= 2^-11, inside spec
// §7 level 2 for f16, bf16 and f32 outputs), or, for FP8 outputs (the prelude's P_LO), as a
// hi + lo pair of f16 values, so products and sums carry f32 precision; the twin holds P in
// f32.
//
// The fragment include provides: aliases FragC and FragQ (a query fragment an owner may hold
// through the key loop); var<workgroup> qh_sh, kv_sh, v_sh (where V_APART) and its P tile(s)
// (the twin writes P over the scores in s_sh); WRITTEN_OUT (per-block steps with constant
// fragment indices, or loops); rescale_block / store_block (below);
// q_stage_rows / put_q4 / load_q (query rows staged per round, and the fragment of staged rows),
// get_q4, put_kv4 / get_kv4 (K), put_v4 / get_v4 (V), put_p / get_p (of p' * P_SCALE, a power of two the include picks; O is
// divided by it at the end), frag_qk, frag_pv, frag_store / frag_load (s_sh, f32, row-major), and
// the entry point, which calls prefill_main with the grid's x size and the fragment owner's
// index (OWNERS). The prelude brings row_max / row_sum over the WG_SIZE / MAX_M threads of a softmax row
// (kernels/rows_shuffle.wgsl, or kernels/rows_one.wgsl for one thread) and defines ET, ET_MAX, D_BLOCKS = HEAD_DIM / 16, T_BLOCKS = TK / 16, Q_HELD (query fragments held
// in registers, cooperative matrices up to head size 128), RAW_SPLIT / KL_LEN (K as hi + lo
// f16 pairs on cooperative matrices, for raw values f16 does not hold exactly; V rounded to
// f16) and V_SPLIT / VL_LEN (V as pairs too, where P_LO: FP8 outputs).
// #include "common/uniforms.wgsl"
// #include "common/out.wgsl"
// #include "common/kv_read.wgsl"
// #include "common/softmax.wgsl"
// #include "common/attn_common.wgsl"

override HEAD_DIM: u32 = 128u;
override TK: u32 = 32u;          // keys per tile, a multiple of 16
override WG_SIZE: u32 = 128u;    // a multiple of MAX_M
override MAX_M: u32 = 64u;       // rows per workgroup, 16 * ROW_BLOCKS
override ROW_BLOCKS: u32 = 4u;
// Fragment owners per workgroup (16 lanes each on the twin, a subgroup each on cooperative
// matrices): ROW_BLOCKS x column groups. Owner sg holds the O blocks of row block
// sg % ROW_BLOCKS whose column block is sg / ROW_BLOCKS modulo the column groups, and takes
// every OWNERS-th of the tile's score blocks (row block, key block, head-dimension part).
// Cooperative matrices: one owner per row block.
override OWNERS: u32 = 4u;
// Score blocks split over KSPLIT parts of the head dimension (each part's sum in its own
// MAX_M x SS region of s_sh, added by the score pass), so that every owner has one where
// ROW_BLOCKS x T_BLOCKS alone would leave some idle (the twin's wide workgroups).
override KSPLIT: u32 = 1u;
// Head-dimension blocks per part.
override QPB: u32 = D_BLOCKS / KSPLIT;
override QS: u32 = 136u;         // row strides in ET elements: qh_sh and kv_sh rows
override KS: u32 = 136u;
override PS: u32 = 40u;          // p_sh rows
override SS: u32 = 36u;          // s_sh rows (f32)
override QH_LEN: u32 = 8704u;    // array lengths in the fragment include's element type
override KV_LEN: u32 = 4352u;
override P_LEN: u32 = 2560u;
override PL_LEN: u32 = 2560u;    // P's lo half (cooperative matrices with P_LO), else a stub
override S_LEN: u32 = 2304u;     // f32, >= 256 * ROW_BLOCKS
override HAS_SOFTCAP: bool = false;
override HAS_SINKS: bool = false;
override ALIBI_MODE: u32 = 0u; // 0 off, 1 linear, 2 sqrt
override HAS_QQ: bool = false;
override HAS_MM: bool = false;
override IS_SPLIT: bool = false;
// The next tile's rows and scales looked up a tile ahead (the host sets it:
// plan::prefill_lookup_ahead; used where a thread holds at most one key of the tile,
// TK <= WG_SIZE).
override LOOKUP_AHEAD: bool = false;
// Diagnostics only (QUANTKV_DEBUG_SKIP): 1 skips K/V loads, 2 the Q K^T multiply-adds, 4 the
// P V multiply-adds, 8 the score pipeline and mask (raw scores kept), 64 the lo half of P
// (cooperative matrices); 256/512/1024/2048/4096 write the first key tile's staged Q / K /
// raw S / V / P rows to the output and stop (debug_dump), 8192/16384/32768 the Q / K tile /
// scalar Q K^T once the scores are stored, 262144 the mode's row scales (1 instead). Timing
// only (results wrong): 524288 the per-tile row lookup (row = key), 1048576 the softmax loops,
// 2097152 the lo half's multiply-add (cooperative matrices), 4194304 the tile loop's barriers,
// 8388608 the lazy rescale (never), 16777216 the P loop, 33554432 the score loop. A/B only
// (results right): 67108864 the general per-key path on interior tiles too.
override DEBUG_SKIP: u32 = 0u;


// A row's running maximum moves only when a tile's maximum exceeds it by more than TAU.
const TAU: f32 = 8.0;
// Where it moves, it is set MARGIN above the tile's maximum (the host's: 4 nats, 0 with P_LO),
// so a row whose maximum keeps rising rescales O less often; the row's largest p is then
// e^-MARGIN or more, not 1 (P_SCALE keeps it far above f16's smallest normal number).
override MARGIN: f32 = 0.0;

// #include "common/attn_bindings.wgsl"

var<workgroup> info: WgInfo;
var<workgroup> s_sh: array<f32, S_LEN>;
// A placeholder, never read: the cooperative-matrix kernel's 16x16 loads came out right on an
// H200 (driver 580.159.04) only with this 16-byte variable here. Without it every mode's
// loads read the wrong rows; with it 8 KiB long (the query-transform staging of INT4 and
// INT2, before the transform went apart) those modes' loads did (BENCHMARKS.md). The
// driver's workgroup layout rule is not known; tests/it/coop_probe.rs and the extended
// matrix on a cooperative-matrix adapter check it.
var<workgroup> layout_pad: array<vec4<f32>, 1>;
var<workgroup> m_sh: array<f32, MAX_M>;
var<workgroup> l_sh: array<f32, MAX_M>;
var<workgroup> alpha_sh: array<f32, MAX_M>;
var<workgroup> seen_sh: array<u32, MAX_M>;
var<workgroup> row_sh: array<u32, TK>;
var<workgroup> ks_sh: array<f32, TK>;  // per tile key: K scale, V scale
var<workgroup> vs_sh: array<f32, TK>;
// Tile keys whose V row holds a non-finite value (staged as 0: a multiply-add would turn the
// 0 of a masked key's p into NaN); a row that gives such a key weight gets a NaN sum, so its
// output is NaN as the reference's is, and no other row sees it.
var<workgroup> vbad_at: array<atomic<u32>, TK>;
// Flags, each the first of four words: every workgroup variable is a whole number of 16-byte
// words, so wherever the driver places it the 16x16 loads see 16-byte-aligned rows (a lone
// 4-byte variable misaligned them on an H200: BENCHMARKS.md, the nineteenth session's probe).
var<workgroup> vbad_any: array<atomic<u32>, 4>; // [0]: some key of the tile has a non-finite V row
// Largest V scale of the tile (f32 bits; scales are >= 0, so their bits order like them).
// P is multiplied by s_v / g, g a power of two at least every V scale seen so far (the first
// tile's binade to start with), so P stays below 16 e^TAU whatever the scales; O is held in
// units of g, and when a tile raises g, O is rescaled by g_old / g_new (exact: powers of two)
// through the same path as a moved row maximum. (Multiplying fragments by a per-tile factor
// instead gave wrong outputs with cooperative matrices on an H200.)
var<workgroup> vmax_at: array<atomic<u32>, 4>;
var<workgroup> resc_at: array<atomic<u32>, 4>;
var<workgroup> resc_sh: array<u32, 4>;

// The tile loop's workgroup barrier (diagnostics can leave it out).
fn tile_barrier() {
    if ((DEBUG_SKIP & 4194304u) == 0u) {
        workgroupBarrier();
    }
}

// Raw values less the row's zero point (integers for zero-point codes: exact in f16) of
// elements 4j..4j+3 of tile key t (rows past the sequence read row 0, always in bounds).
fn tile_fetch(e: u32, is_v: bool) -> vec4<f32> {
    let d4 = HEAD_DIM / 4u;
    let row = row_sh[min(e / d4, TK - 1u)];
    if ((DEBUG_SKIP & 1u) != 0u) {
        return vec4<f32>(f32(row & 1u));
    }
    if (is_v) {
        var r = v_tile_group(row, e % d4);
        if (V_HAS_ZERO) {
            r -= vec4<f32>(v_row_zero(row) / TILE_UNIT);
        }
        return r;
    }
    var r = k_tile_group(row, e % d4);
    if (K_HAS_ZERO) {
        r -= vec4<f32>(k_row_zero(row) / TILE_UNIT);
    }
    return r;
}

fn tile_put(e: u32, v: vec4<f32>, key0: u32, kv_len: u32, is_v: bool) {
    let d4 = HEAD_DIM / 4u;
    if (e < TK * d4) {
        var x = select(vec4<f32>(0.0), v, key0 + e / d4 < kv_len);
        // Exponent all ones: Inf or NaN (tested on the bits: WGSL may assume finite math).
        let bad = (bitcast<vec4<u32>>(x) & vec4<u32>(0x7F800000u)) == vec4<u32>(0x7F800000u);
        if (is_v && any(bad)) {
            x = select(x, vec4<f32>(0.0), bad);
            atomicOr(&vbad_at[e / d4], 1u);
            atomicOr(&vbad_any[0], 1u);
        }
        if (is_v) {
            put_v4(e / d4, e % d4, x);
        } else {
            put_kv4(e / d4, e % d4, x);
        }
    }
}

// Query row m of the workgroup (4 elements from column group j), 0 for padding rows.
fn q_row4(inf: WgInfo, m: u32, j: u32) -> vec4<f32> {
    let hg = ly.heads_per_wg;
    let qi = m / hg;
    let hh = m % hg;
    if (qi < inf.rows_q && hh < inf.nheads) {
        return q_load4(q_elem(inf.q_first + qi, inf.head0 + hh, j));
    }
    return vec4<f32>(0.0);
}

// Diagnostics: writes row m of a staged tile (what: 0 Q, 1 the K tile's row m % TK, 5 the V
// tile's, 2 P, 3 the raw scores s_sh, 4 the raw scores recomputed by scalar code from the Q
// and K tiles; columns past TK are 0) to output row m.
fn debug_dump(inf: WgInfo, tid: u32, what: u32) {
    let d4 = HEAD_DIM / 4u;
    let hg = ly.heads_per_wg;
    for (var e = tid; e < MAX_M * d4; e += WG_SIZE) {
        let m = e / d4;
        let j = e % d4;
        var v = vec4<f32>(0.0);
        if (what == 0u) {
            v = get_q4(m, j);
        } else if (what == 1u) {
            v = get_kv4(m % TK, j);
        } else if (what == 5u) {
            v = get_v4(m % TK, j);
        } else if (4u * j < TK) {
            for (var c = 0u; c < 4u; c++) {
                if (what == 2u) {
                    v[c] = get_p(m, 4u * j + c);
                } else if (what == 4u) {
                    var acc = 0.0;
                    for (var k = 0u; k < d4; k++) {
                        acc += dot(get_q4(m, k), get_kv4(4u * j + c, k));
                    }
                    v[c] = acc;
                } else {
                    v[c] = s_sh[m * SS + 4u * j + c];
                }
            }
        }
        let qm = m / hg;
        let hm = m % hg;
        if (qm < inf.rows_q && hm < inf.nheads) {
            out_store4(out_elem(inf.q_first + qm, inf.head0 + hm, j), v);
        }
    }
}

// Takes the query fragment of block kb from the staged rows (every owner loads: fragment
// operations stay in uniform control flow; only the owner of the staged rows keeps it).
fn take_q(cur: FragQ, lr: u32, kb: u32, mine: bool) -> FragQ {
    let f = load_q(lr, kb * 16u);
    if (mine) {
        return f;
    }
    return cur;
}

// O block `acc` (columns 16 db..) += P V of this tile (this owner's rows r0..).
fn pv_block(acc0: FragC, r0: u32, db: u32) -> FragC {
    var acc = acc0;
    for (var kb = 0u; kb < T_BLOCKS * u32((DEBUG_SKIP & 4u) == 0u); kb++) {
        acc = frag_pv(acc, r0, kb * 16u, db * 16u);
    }
    return acc;
}

// The include provides rescale_block(f, sg, tid, gfac) -> FragC (O block `f` of owner sg
// with each row scaled by its alpha_sh and by gfac) and store_block(f, db, sg, tid, inf,
// o_unit, seg) (the epilogue of O block `f`, columns 16 db.., through store_row4); every
// owner calls them for its blocks in the same order.

// Epilogue of one output row: elements 4j..4j+3 of workgroup row m, `raw` in O's unit
// (o_unit: g / P_SCALE), divided by the row's denominator. With IS_SPLIT (a mode with a
// transform: the reduce pass un-rotates the rows), the row's unnormalised O, running
// maximum and denominator go to the partials layout of kernels/unified.wgsl instead, as its
// one segment `seg`.
fn store_row4(inf: WgInfo, m: u32, j: u32, raw: vec4<f32>, o_unit: f32, seg: u32) {
    let hg = ly.heads_per_wg;
    let seen = seen_sh[m] != 0u;
    let a = select(vec4<f32>(0.0), raw * o_unit, seen);
    let qm = m / hg;
    let hm = m % hg;
    if (qm < inf.rows_q && hm < inf.nheads) {
        let tok = inf.q_first + qm;
        let head = inf.head0 + hm;
        if (IS_SPLIT) {
            let ns = ly.num_segments;
            let slot = (tok * ly.num_q_heads + head) * ns + seg;
            let b = slot * HEAD_DIM + 4u * j;
            partial_store4(b, a);
            if (j == 0u) {
                let sb = ly.seg_rows * ly.num_q_heads * ns * HEAD_DIM + slot * 2u;
                partial_store_ml(sb, select(NEG, m_sh[m], seen), select(0.0, l_sh[m], seen));
            }
        } else {
            out_store4(out_elem(tok, head, j), select(vec4<f32>(0.0), a / l_sh[m], seen));
        }
    }
}

// A tile key's cached row (row 0 past the sequence: always in bounds) and K / V scales.
struct KeyInfo {
    row: u32,
    ks: f32,
    vs: f32,
}

fn key_info(inf: WgInfo, key: u32) -> KeyInfo {
    var r = 0u;
    if ((DEBUG_SKIP & 524288u) != 0u) {
        r = key;
    } else if (key < inf.kv_len) {
        r = physical_row(inf.seq, key, inf.kv_head);
    }
    let unit = (DEBUG_SKIP & 262144u) != 0u;
    // The tiles hold the mode's tile form: raw = tile * TILE_UNIT.
    return KeyInfo(r, select(k_row_scale(r) * TILE_UNIT, 1.0, unit),
                   select(v_row_scale(r) * TILE_UNIT, 1.0, unit));
}

// The K and V tiles of `n` vec4 elements each into workgroup memory: four K and four V loads
// issued per thread before any is stored, so both tiles' latencies overlap (two of each
// where the workgroup covers a tile in two: the wide cooperative tilings).
fn stage_kv(tid: u32, n: u32, key0: u32, kv_len: u32) {
    let two = n <= 2u * WG_SIZE;
    for (var k = 0u; k < n; k += select(4u, 2u, two) * WG_SIZE) {
        let e0 = tid + k;
        let e1 = e0 + WG_SIZE;
        let e2 = e1 + WG_SIZE;
        let e3 = e2 + WG_SIZE;
        let k0 = tile_fetch(e0, false);
        let k1 = tile_fetch(e1, false);
        var k2 = vec4<f32>(0.0);
        var k3 = vec4<f32>(0.0);
        if (!two) {
            k2 = tile_fetch(e2, false);
            k3 = tile_fetch(e3, false);
        }
        let v0 = tile_fetch(e0, true);
        let v1 = tile_fetch(e1, true);
        var v2 = vec4<f32>(0.0);
        var v3 = vec4<f32>(0.0);
        if (!two) {
            v2 = tile_fetch(e2, true);
            v3 = tile_fetch(e3, true);
        }
        tile_put(e0, k0, key0, kv_len, false);
        tile_put(e1, k1, key0, kv_len, false);
        if (!two) {
            tile_put(e2, k2, key0, kv_len, false);
            tile_put(e3, k3, key0, kv_len, false);
        }
        tile_put(e0, v0, key0, kv_len, true);
        tile_put(e1, v1, key0, kv_len, true);
        if (!two) {
            tile_put(e2, v2, key0, kv_len, true);
            tile_put(e3, v3, key0, kv_len, true);
        }
    }
}

// Row rm's raw q·c of tile key t (the head-dimension parts' sum).
fn raw_score(rm: u32, t: u32) -> f32 {
    var raw = s_sh[rm * SS + t];
    for (var h = 1u; h < KSPLIT; h++) {
        raw += s_sh[(h * MAX_M + rm) * SS + t];
    }
    return raw;
}

// The finished score of tile key t for row rm (query token qi, head slot hh) from its raw
// q·c in s_sh; NEG where masked.
fn tile_score(inf: WgInfo, qi: u32, hh: u32, rm: u32, key0: u32, t: u32) -> f32 {
    let key = key0 + t;
    let raw = raw_score(rm, t);
    if ((DEBUG_SKIP & 8u) != 0u) {
        return select(NEG, raw, key < inf.kv_len);
    }
    if (key_visible(inf, qi, hh, key)) {
        return finish_score(inf, qi, hh, key, raw * ks_sh[t]);
    }
    return NEG;
}

// p = exp(s - mu) of tile key t for row rm (sv: its finished score); p' = p s_v / g (times
// P_SCALE) goes to the P tile. A masked key's scale and zero point are never read (they may
// be anything).
fn tile_p(rm: u32, t: u32, sv: f32, mu: f32, inv_g: f32) -> f32 {
    var p = 0.0;
    if (sv > NEG_HALF) {
        p = exp_diff(sv, mu);
    }
    var pv = 0.0;
    if (p != 0.0) {
        pv = p * vs_sh[t];
    }
    put_p(rm, t, pv * inv_g * P_SCALE);
    return p;
}

// Finished scores of keys t0, t0 + rt, t0 + 2 rt, t0 + 3 rt of row rm (NEG where masked).
fn score4(inf: WgInfo, qi: u32, hh: u32, rm: u32, key0: u32, t0: u32, rt: u32) -> vec4<f32> {
    return vec4<f32>(tile_score(inf, qi, hh, rm, key0, t0),
                     tile_score(inf, qi, hh, rm, key0, t0 + rt),
                     tile_score(inf, qi, hh, rm, key0, t0 + 2u * rt),
                     tile_score(inf, qi, hh, rm, key0, t0 + 3u * rt));
}

// Whether the tile at key0 is interior: every row of the workgroup sees every key of it (the
// tile lies inside the sequence, left of (or on) the first query's diagonal, and within the
// last query's window), and the pipeline's scores are the scaled q·k alone (no softcap,
// ALiBi or qq_bias). Its softmax then takes the plain path, four keys at a time as vectors,
// with no mask and no per-key score terms. Padding rows (past the block's tokens or heads)
// go the same way; their outputs are never stored.
fn interior_tile(inf: WgInfo, key0: u32) -> bool {
    let plain = !HAS_SOFTCAP && ALIBI_MODE == 0u && !HAS_QQ;
    let q_lo = inf.ctx + inf.i0;
    let q_hi = q_lo + inf.rows_q - 1u;
    return plain && (DEBUG_SKIP & 67108864u) == 0u && key0 + TK <= inf.kv_len
        && key0 + TK - 1u <= q_lo && (ly.window == 0u || q_hi - key0 < ly.window);
}

// Interior tiles: the scores of keys t0, t0 + rt, t0 + 2 rt, t0 + 3 rt of row rm (what
// tile_score gives a visible key with PLAIN's terms, as a vector).
fn score4_plain(rm: u32, t0: u32, rt: u32) -> vec4<f32> {
    let raw = vec4<f32>(raw_score(rm, t0), raw_score(rm, t0 + rt), raw_score(rm, t0 + 2u * rt),
                        raw_score(rm, t0 + 3u * rt));
    let ks = vec4<f32>(ks_sh[t0], ks_sh[t0 + rt], ks_sh[t0 + 2u * rt], ks_sh[t0 + 3u * rt]);
    if ((DEBUG_SKIP & 8u) != 0u) {
        return raw;
    }
    return plain_scores4(raw * ks);
}

// Interior tiles where no V row of the tile is non-finite: tile_p of four keys as a vector
// (sv: real scores); their sum.
fn p4_plain(rm: u32, t0: u32, rt: u32, sv: vec4<f32>, mu: f32, inv_g: f32) -> f32 {
    let p = exp_diff4(sv, vec4<f32>(mu));
    let vs = vec4<f32>(vs_sh[t0], vs_sh[t0 + rt], vs_sh[t0 + 2u * rt], vs_sh[t0 + 3u * rt]);
    let w = select(vec4<f32>(0.0), p * vs, p != vec4<f32>(0.0)) * inv_g * P_SCALE;
    put_p(rm, t0, w.x);
    put_p(rm, t0 + rt, w.y);
    put_p(rm, t0 + 2u * rt, w.z);
    put_p(rm, t0 + 3u * rt, w.w);
    return (p.x + p.y) + (p.z + p.w);
}

// Whether a row gives weight (p != 0) to a tile key whose V row is not finite.
fn poisons(p: f32, t: u32) -> bool {
    return p != 0.0 && atomicLoad(&vbad_at[t]) != 0u;
}

// The P values of four keys (t0, t0 + rt, ...) with scores sv into the P tile; their sum, NaN
// where `check` and a key that gets weight has a non-finite V row.
fn p4(rm: u32, t0: u32, rt: u32, sv: vec4<f32>, mu: f32, inv_g: f32, check: bool) -> f32 {
    let p0 = tile_p(rm, t0, sv.x, mu, inv_g);
    let p1 = tile_p(rm, t0 + rt, sv.y, mu, inv_g);
    let p2 = tile_p(rm, t0 + 2u * rt, sv.z, mu, inv_g);
    let p3 = tile_p(rm, t0 + 3u * rt, sv.w, mu, inv_g);
    if (check && (poisons(p0, t0) || poisons(p1, t0 + rt) || poisons(p2, t0 + 2u * rt)
                  || poisons(p3, t0 + 3u * rt))) {
        return bitcast<f32>(0x7FC00000u);
    }
    return (p0 + p1) + (p2 + p3);
}

// `nx`: workgroups along x (row blocks). The grid is walked from its last row block down:
// a causal prompt's longest row blocks (its last) start first and its shortest fill the
// tail, where launched in order they would end it.
fn prefill_main(wid: vec3<u32>, nx: u32, tid: u32, sg: u32) {
    if (tid == 0u) {
        info = plan_workgroup(vec3<u32>(nx - 1u - wid.x, wid.y, wid.z), ly.num_segments, TK);
        atomicStore(&resc_at[0], 0u);
        atomicStore(&vmax_at[0], 0u);
    }
    let inf = workgroupUniformLoad(&info);
    if (inf.valid == 0u) {
        return;
    }
    let d4 = HEAD_DIM / 4u;
    let hg = ly.heads_per_wg;

    // Prologue: Q rows (a mode with a transform had them rotated by kernels/rotate_q.wgsl).
    if (DEBUG_SKIP == 0xFFFFFFFFu) {
        layout_pad[0] = vec4<f32>(0.0); // keeps layout_pad in the module (never runs)
    }
    for (var e = tid; e < 256u; e += WG_SIZE) {
        s_sh[e] = 0.0;
    }
    // Q rows, q_stage_rows() per round; a fragment owner whose rows are staged takes its Q
    // fragments (every owner loads in every round: fragment operations stay in uniform
    // control flow; only the copy is conditional).
    let r0 = (sg % ROW_BLOCKS) * 16u;
    // Column groups: the owner's O blocks are cg, cg + ncg, ... (ob of them; the host makes
    // ncg divide D_BLOCKS). Cooperative matrices: ncg = 1, cg = 0.
    let ncg = OWNERS / ROW_BLOCKS;
    let cg = select(sg / ROW_BLOCKS, 0u, ncg == 1u);
    let ob = D_BLOCKS / ncg;
    // O's blocks by constant indices (written out) on cooperative matrices, and on the twin
    // where an owner holds at most four (its wide tilings): indexed by a loop counter, the
    // H200's driver keeps the array in local memory (1 KiB per thread on the twin).
    // (Cooperative matrices keep their own written-out copy with constant block indices: the
    // shared form measured 2 % slower there on an H200.)
    let o_const = ob <= 4u;
    // Every block of the row block's O, written out (cooperative matrices, one owner per row
    // block).
    let o_all = WRITTEN_OUT && ncg == 1u;
    // The fragments a subgroup holds through the key loop (query: up to 8 blocks, O: up to
    // 16) are indexed by constants only where the include sets WRITTEN_OUT, every per-block
    // step written out below: with a loop index the H200's driver kept both arrays in local
    // memory (384 bytes per thread at head size 128; BENCHMARKS.md), and every multiply-add went
    // through it. The twin runs the query steps as loops (lavapipe compiled the written-out
    // twin 6x slower), and O's written out only where an owner holds at most four blocks.
    var qf: array<FragQ, 8>;
    // Blocks of a head-dimension part; an owner's own part on cooperative matrices is its
    // column group (the host gives those column groups KSPLIT = ncg and one key block per
    // tile, so each owner's one score block per tile is its rows' part cg).
    let qb0 = cg * QPB;
    let qrows = q_stage_rows();
    for (var q0 = 0u; q0 < MAX_M; q0 += qrows) {
        for (var e = tid; e < qrows * d4; e += WG_SIZE) {
            put_q4(e / d4, e % d4, q_row4(inf, q0 + e / d4, e % d4));
        }
        workgroupBarrier();
        let mine = r0 >= q0 && r0 < q0 + qrows;
        let lr = select(0u, r0 - q0, mine);
        if (Q_HELD) {
            // Constant indices only (see `o` below); Q_HELD: at most 8 blocks, those of the
            // owner's head-dimension part (qb0 ..).
            qf[0] = take_q(qf[0], lr, qb0, mine);
            if (QPB > 1u) { qf[1] = take_q(qf[1], lr, qb0 + 1u, mine); }
            if (QPB > 2u) { qf[2] = take_q(qf[2], lr, qb0 + 2u, mine); }
            if (QPB > 3u) { qf[3] = take_q(qf[3], lr, qb0 + 3u, mine); }
            if (QPB > 4u) { qf[4] = take_q(qf[4], lr, qb0 + 4u, mine); }
            if (QPB > 5u) { qf[5] = take_q(qf[5], lr, qb0 + 5u, mine); }
            if (QPB > 6u) { qf[6] = take_q(qf[6], lr, qb0 + 6u, mine); }
            if (QPB > 7u) { qf[7] = take_q(qf[7], lr, qb0 + 7u, mine); }
        }
        if ((DEBUG_SKIP & 256u) != 0u) {
            debug_dump(inf, tid, 0u);
            return;
        }
        workgroupBarrier();
    }
    let zero = frag_load(0u, 16u);
    var o: array<FragC, 16>;
    if (o_all) {
        o[0] = zero;
        if (D_BLOCKS > 1u) { o[1] = zero; }
        if (D_BLOCKS > 2u) { o[2] = zero; }
        if (D_BLOCKS > 3u) { o[3] = zero; }
        if (D_BLOCKS > 4u) { o[4] = zero; }
        if (D_BLOCKS > 5u) { o[5] = zero; }
        if (D_BLOCKS > 6u) { o[6] = zero; }
        if (D_BLOCKS > 7u) { o[7] = zero; }
        if (D_BLOCKS > 8u) { o[8] = zero; }
        if (D_BLOCKS > 9u) { o[9] = zero; }
        if (D_BLOCKS > 10u) { o[10] = zero; }
        if (D_BLOCKS > 11u) { o[11] = zero; }
        if (D_BLOCKS > 12u) { o[12] = zero; }
        if (D_BLOCKS > 13u) { o[13] = zero; }
        if (D_BLOCKS > 14u) { o[14] = zero; }
        if (D_BLOCKS > 15u) { o[15] = zero; }
    } else if (o_const) {
        o[0] = zero;
        if (ob > 1u) { o[1] = zero; }
        if (ob > 2u) { o[2] = zero; }
        if (ob > 3u) { o[3] = zero; }
    } else {
        for (var j = 0u; j < ob; j++) { o[j] = zero; }
    }
    // The softmax runs on registers: RT = WG_SIZE / MAX_M adjacent threads share row rm
    // (the twin's column groups, or subgroup lanes / 16 on cooperative matrices), each with EPT keys of
    // the tile, kq, kq + rt, kq + 2 rt, ... (interleaved, so the threads of a row read s_sh
    // on different banks), and combine by row_max / row_sum (shuffles); every thread of a
    // row holds the row's running maximum, denominator and whether it saw a key. Up to 16
    // keys per thread (every cooperative tiling) the finished scores stay in registers (four
    // vec4s, constant indices only) from the score pass to the P pass; more (the twin's
    // one-thread-per-row tilings) go back to s_sh in between.
    let rt = WG_SIZE / MAX_M;
    let ept = TK / rt;
    let rm = tid / rt;
    let kq = tid % rt;
    let held = ept <= 16u;
    let qi = rm / hg;
    let hh = rm % hg;
    var m_run = NEG;
    if (HAS_SINKS && !IS_SPLIT && hh < inf.nheads) {
        m_run = real_score(laux[ly.off_sinks + inf.head0 + hh]);
    }
    var l_run = 1.0;
    var seen = false;

    // Per tile, five barriers where V has its own tile (six where V is staged over K: the
    // twin, and cooperative matrices' tilings but the eight-subgroup one): (1) the tile's rows, scales and flags are
    // set; (2) its K and V are staged (their loads in flight together); (3) S is stored;
    // (4) P is written and row factors set; (5) the rescale flag read uniformly (and V staged
    // between (3) and (4), where it goes over K). Nothing needs one at the top: the
    // row lookup writes only what the previous tile read before its barrier (4), and
    // staging waits at (1) for every owner's previous O += P V.
    // (Looking each tile's rows and scales up one tile ahead, in registers, was 5 % slower on
    // an H200 at 182 registers; at 99 (eight subgroups) it made INT8 per-(token, head) 4 %
    // faster, whose scale loads wait on the row, and f16 0.4-1 % slower, so the host sets it
    // for modes with row scales only; BENCHMARKS.md.)
    var gexp = 0u; // biased exponent of g (0 = no nonzero V scale yet)
    // LOOKUP_AHEAD: the next tile's rows and scales are looked up into registers (thread t
    // holds key t's) once its scores are stored, so their loads overlap the softmax.
    let ahead = LOOKUP_AHEAD && TK <= WG_SIZE;
    var nki = KeyInfo(0u, 0.0, 0.0);
    if (ahead && tid < TK) {
        nki = key_info(inf, inf.tile_lo * TK + tid);
    }
    for (var tile = inf.tile_lo; tile < inf.tile_hi; tile++) {
        let key0 = tile * TK;
        for (var t = tid; t < TK; t += WG_SIZE) {
            let key = key0 + t;
            var ki = nki;
            if (!ahead) {
                ki = key_info(inf, key);
            }
            row_sh[t] = ki.row;
            atomicStore(&vbad_at[t], 0u);
            if (t == 0u) {
                atomicStore(&vbad_any[0], 0u);
            }
            ks_sh[t] = ki.ks;
            vs_sh[t] = ki.vs;
            // (A scale that is not a finite positive number, e.g. of a block no row sees,
            // is left out: it is never multiplied by a nonzero p.)
            let vbits = bitcast<u32>(ki.vs);
            if (key < inf.kv_len && vbits < 0x7F800000u) {
                atomicMax(&vmax_at[0], vbits);
            }
        }
        tile_barrier();
        if (V_APART) {
            stage_kv(tid, TK * d4, key0, inf.kv_len);
        } else {
            stage_tile(tid, TK * d4, key0, inf.kv_len, false);
        }
        tile_barrier();
        if ((DEBUG_SKIP & 512u) != 0u) {
            debug_dump(inf, tid, 1u);
            return;
        }
        // The tile's binade of V scales (biased exponent; 0 for zero scales), g's update: every
        // thread computes the same gexp from the same values, so it is workgroup-uniform.
        let vexp = min((atomicLoad(&vmax_at[0]) >> 23u) & 0xFFu, 253u);
        var gfac = 1.0;
        if (vexp != 0u) {
            if (gexp == 0u) {
                gexp = vexp;
            } else if (vexp > gexp) {
                gfac = bitcast<f32>((127u + gexp - vexp) << 23u);
                gexp = vexp;
            }
        }
        // 1/g with g = 2^(gexp - 126) (1 before any nonzero scale).
        let inv_g = select(1.0, bitcast<f32>((253u - gexp) << 23u), gexp != 0u);
        // S = Q K^T: the owner's score blocks (on cooperative matrices its own 16 rows and
        // every key block), each over its part of the head dimension (KSPLIT; the host makes
        // the blocks a multiple of OWNERS, so every owner runs alike).
        for (var i = 0u; i < ROW_BLOCKS * T_BLOCKS * KSPLIT / OWNERS; i++) {
            let it = sg + i * OWNERS;
            // One owner per row block and no parts (cooperative matrices): the owner's own
            // rows and key block i, folded to the plain loop.
            let plain = OWNERS == ROW_BLOCKS && KSPLIT == 1u;
            let sr0 = select((it % ROW_BLOCKS) * 16u, r0, plain);
            let cb = select((it / ROW_BLOCKS) % T_BLOCKS, i, plain);
            let part = select(it / (ROW_BLOCKS * T_BLOCKS), 0u, plain);
            var c = zero;
            if ((DEBUG_SKIP & 2u) == 0u) {
                let t0 = cb * 16u;
                var kb_lo = part * QPB;
                if (WRITTEN_OUT) {
                    // (Cooperative matrices: sr0 = r0 and part = cg, the held blocks'.)
                    let k0 = kb_lo * 16u;
                    c = frag_qk(c, qf[0], r0, t0, k0);
                    if (QPB > 1u) { c = frag_qk(c, qf[1], r0, t0, k0 + 16u); }
                    if (QPB > 2u) { c = frag_qk(c, qf[2], r0, t0, k0 + 32u); }
                    if (QPB > 3u) { c = frag_qk(c, qf[3], r0, t0, k0 + 48u); }
                    if (QPB > 4u) { c = frag_qk(c, qf[4], r0, t0, k0 + 64u); }
                    if (QPB > 5u) { c = frag_qk(c, qf[5], r0, t0, k0 + 80u); }
                    if (QPB > 6u) { c = frag_qk(c, qf[6], r0, t0, k0 + 96u); }
                    if (QPB > 7u) { c = frag_qk(c, qf[7], r0, t0, k0 + 112u); }
                    kb_lo += min(QPB, 8u);
                }
                // Past 8 blocks (and on the twin) Q is not held: frag_qk reads the Q tile.
                for (var kb = kb_lo; kb < (part + 1u) * QPB; kb++) {
                    c = frag_qk(c, qf[0], sr0, t0, kb * 16u);
                }
            }
            frag_store(c, (part * MAX_M + sr0) * SS + cb * 16u, SS);
        }
        tile_barrier();
        if (ahead && tid < TK && tile + 1u < inf.tile_hi) {
            nki = key_info(inf, key0 + TK + tid);
        }
        if ((DEBUG_SKIP & 1024u) != 0u) {
            debug_dump(inf, tid, 3u);
            return;
        }
        if ((DEBUG_SKIP & 32768u) != 0u) {
            debug_dump(inf, tid, 4u);
            return;
        }
        if ((DEBUG_SKIP & 8192u) != 0u) {
            debug_dump(inf, tid, 0u);
            return;
        }
        if ((DEBUG_SKIP & 16384u) != 0u) {
            debug_dump(inf, tid, 1u);
            return;
        }
        // Every thread has read vmax_at (before barrier 3).
        if (tid == 0u) {
            atomicStore(&vmax_at[0], 0u);
        }
        // V over K where they share a tile (K is no longer read), its loads in flight during
        // the score pass.
        if (!V_APART) {
            stage_tile(tid, TK * d4, key0, inf.kv_len, true);
        }
        // Scores finished (spec §6.1 pipeline and mask), the tile's row maximum.
        var part = NEG;
        var sc0 = vec4<f32>(NEG);
        var sc1 = vec4<f32>(NEG);
        var sc2 = vec4<f32>(NEG);
        var sc3 = vec4<f32>(NEG);
        // (Workgroup-uniform: the plain path's branches keep the row shuffles uniform.)
        let interior = interior_tile(inf, key0);
        if ((DEBUG_SKIP & 34603008u) == 0u) {
            if (held && interior) {
                sc0 = score4_plain(rm, kq, rt);
                if (ept > 4u) { sc1 = score4_plain(rm, kq + 4u * rt, rt); }
                if (ept > 8u) { sc2 = score4_plain(rm, kq + 8u * rt, rt); }
                if (ept > 12u) { sc3 = score4_plain(rm, kq + 12u * rt, rt); }
                let m4 = max(max(sc0, sc1), max(sc2, sc3));
                part = max(max(m4.x, m4.y), max(m4.z, m4.w));
            } else if (held) {
                sc0 = score4(inf, qi, hh, rm, key0, kq, rt);
                if (ept > 4u) { sc1 = score4(inf, qi, hh, rm, key0, kq + 4u * rt, rt); }
                if (ept > 8u) { sc2 = score4(inf, qi, hh, rm, key0, kq + 8u * rt, rt); }
                if (ept > 12u) { sc3 = score4(inf, qi, hh, rm, key0, kq + 12u * rt, rt); }
                let m4 = max(max(sc0, sc1), max(sc2, sc3));
                part = max(max(m4.x, m4.y), max(m4.z, m4.w));
            } else {
                for (var i = 0u; i < ept; i += 4u) {
                    let t = kq + i * rt;
                    var s4 = vec4<f32>(0.0);
                    if (interior) {
                        s4 = score4_plain(rm, t, rt);
                    } else {
                        s4 = score4(inf, qi, hh, rm, key0, t, rt);
                    }
                    s_sh[rm * SS + t] = s4.x;
                    s_sh[rm * SS + t + rt] = s4.y;
                    s_sh[rm * SS + t + 2u * rt] = s4.z;
                    s_sh[rm * SS + t + 3u * rt] = s4.w;
                    part = max(part, max(max(s4.x, s4.y), max(s4.z, s4.w)));
                }
            }
        }
        let mx = row_max(part);
        // Online softmax with lazy rescaling (every thread of the row decides alike).
        var alpha = 1.0;
        if (mx > NEG_HALF) {
            if (!seen) {
                // First visible key of the row: O is still zero.
                if (mx > m_run) {
                    alpha = exp_diff(m_run, mx + MARGIN);
                    m_run = mx + MARGIN;
                }
                seen = true;
            } else if (mx > m_run + TAU && (DEBUG_SKIP & 8388608u) == 0u) {
                alpha = exp_diff(m_run, mx + MARGIN);
                m_run = mx + MARGIN;
                atomicMax(&resc_at[0], 1u);
            }
        }
        if (kq == 0u) {
            alpha_sh[rm] = alpha;
        }
        if (tid == 0u && gfac != 1.0) {
            atomicMax(&resc_at[0], 1u);
        }
        if (!V_APART) {
            tile_barrier(); // V staged, its non-finite flags final
        }
        // P = exp(S - M); p' = p s_v to the multiply-add, Σ p per row (NaN where the row gives
        // weight to a key whose V row is not finite).
        let any_bad = atomicLoad(&vbad_any[0]) != 0u;
        var psum = 0.0;
        let plain_p = interior && !any_bad;
        if ((DEBUG_SKIP & 17825792u) == 0u) {
            if (held && plain_p) {
                psum = p4_plain(rm, kq, rt, sc0, m_run, inv_g);
                if (ept > 4u) { psum += p4_plain(rm, kq + 4u * rt, rt, sc1, m_run, inv_g); }
                if (ept > 8u) { psum += p4_plain(rm, kq + 8u * rt, rt, sc2, m_run, inv_g); }
                if (ept > 12u) { psum += p4_plain(rm, kq + 12u * rt, rt, sc3, m_run, inv_g); }
            } else if (held) {
                psum = p4(rm, kq, rt, sc0, m_run, inv_g, any_bad);
                if (ept > 4u) { psum += p4(rm, kq + 4u * rt, rt, sc1, m_run, inv_g, any_bad); }
                if (ept > 8u) { psum += p4(rm, kq + 8u * rt, rt, sc2, m_run, inv_g, any_bad); }
                if (ept > 12u) { psum += p4(rm, kq + 12u * rt, rt, sc3, m_run, inv_g, any_bad); }
            } else {
                for (var i = 0u; i < ept; i += 4u) {
                    let t = kq + i * rt;
                    let s4 = vec4<f32>(s_sh[rm * SS + t], s_sh[rm * SS + t + rt],
                                       s_sh[rm * SS + t + 2u * rt], s_sh[rm * SS + t + 3u * rt]);
                    if (plain_p) {
                        psum += p4_plain(rm, t, rt, s4, m_run, inv_g);
                    } else {
                        psum += p4(rm, t, rt, s4, m_run, inv_g, any_bad);
                    }
                }
            }
        }
        let sum = row_sum(psum);
        l_run = l_run * alpha + sum;
        tile_barrier();
        if ((DEBUG_SKIP & 4096u) != 0u) {
            debug_dump(inf, tid, 2u);
            return;
        }
        if ((DEBUG_SKIP & 2048u) != 0u) {
            debug_dump(inf, tid, 5u);
            return;
        }
        if (tid == 0u) {
            resc_sh[0] = atomicLoad(&resc_at[0]);
            atomicStore(&resc_at[0], 0u);
        }
        // Rows whose maximum moved: O rescaled through s_sh (free once P is written).
        if (workgroupUniformLoad(&resc_sh[0]) != 0u) {
            if (o_all) {
                o[0] = rescale_block(o[0], sg, tid, gfac);
                if (D_BLOCKS > 1u) { o[1] = rescale_block(o[1], sg, tid, gfac); }
                if (D_BLOCKS > 2u) { o[2] = rescale_block(o[2], sg, tid, gfac); }
                if (D_BLOCKS > 3u) { o[3] = rescale_block(o[3], sg, tid, gfac); }
                if (D_BLOCKS > 4u) { o[4] = rescale_block(o[4], sg, tid, gfac); }
                if (D_BLOCKS > 5u) { o[5] = rescale_block(o[5], sg, tid, gfac); }
                if (D_BLOCKS > 6u) { o[6] = rescale_block(o[6], sg, tid, gfac); }
                if (D_BLOCKS > 7u) { o[7] = rescale_block(o[7], sg, tid, gfac); }
                if (D_BLOCKS > 8u) { o[8] = rescale_block(o[8], sg, tid, gfac); }
                if (D_BLOCKS > 9u) { o[9] = rescale_block(o[9], sg, tid, gfac); }
                if (D_BLOCKS > 10u) { o[10] = rescale_block(o[10], sg, tid, gfac); }
                if (D_BLOCKS > 11u) { o[11] = rescale_block(o[11], sg, tid, gfac); }
                if (D_BLOCKS > 12u) { o[12] = rescale_block(o[12], sg, tid, gfac); }
                if (D_BLOCKS > 13u) { o[13] = rescale_block(o[13], sg, tid, gfac); }
                if (D_BLOCKS > 14u) { o[14] = rescale_block(o[14], sg, tid, gfac); }
                if (D_BLOCKS > 15u) { o[15] = rescale_block(o[15], sg, tid, gfac); }
            } else if (o_const) {
                o[0] = rescale_block(o[0], sg, tid, gfac);
                if (ob > 1u) { o[1] = rescale_block(o[1], sg, tid, gfac); }
                if (ob > 2u) { o[2] = rescale_block(o[2], sg, tid, gfac); }
                if (ob > 3u) { o[3] = rescale_block(o[3], sg, tid, gfac); }
            } else {
                for (var j = 0u; j < ob; j++) { o[j] = rescale_block(o[j], sg, tid, gfac); }
            }
        }
        // O += P V, in units of g.
        if (o_all) {
            o[0] = pv_block(o[0], r0, 0u);
            if (D_BLOCKS > 1u) { o[1] = pv_block(o[1], r0, 1u); }
            if (D_BLOCKS > 2u) { o[2] = pv_block(o[2], r0, 2u); }
            if (D_BLOCKS > 3u) { o[3] = pv_block(o[3], r0, 3u); }
            if (D_BLOCKS > 4u) { o[4] = pv_block(o[4], r0, 4u); }
            if (D_BLOCKS > 5u) { o[5] = pv_block(o[5], r0, 5u); }
            if (D_BLOCKS > 6u) { o[6] = pv_block(o[6], r0, 6u); }
            if (D_BLOCKS > 7u) { o[7] = pv_block(o[7], r0, 7u); }
            if (D_BLOCKS > 8u) { o[8] = pv_block(o[8], r0, 8u); }
            if (D_BLOCKS > 9u) { o[9] = pv_block(o[9], r0, 9u); }
            if (D_BLOCKS > 10u) { o[10] = pv_block(o[10], r0, 10u); }
            if (D_BLOCKS > 11u) { o[11] = pv_block(o[11], r0, 11u); }
            if (D_BLOCKS > 12u) { o[12] = pv_block(o[12], r0, 12u); }
            if (D_BLOCKS > 13u) { o[13] = pv_block(o[13], r0, 13u); }
            if (D_BLOCKS > 14u) { o[14] = pv_block(o[14], r0, 14u); }
            if (D_BLOCKS > 15u) { o[15] = pv_block(o[15], r0, 15u); }
        } else if (o_const) {
            o[0] = pv_block(o[0], r0, cg + ncg * 0u);
            if (ob > 1u) { o[1] = pv_block(o[1], r0, cg + ncg * 1u); }
            if (ob > 2u) { o[2] = pv_block(o[2], r0, cg + ncg * 2u); }
            if (ob > 3u) { o[3] = pv_block(o[3], r0, cg + ncg * 3u); }
        } else {
            for (var j = 0u; j < ob; j++) { o[j] = pv_block(o[j], r0, cg + ncg * j); }
        }
    }
    if (kq == 0u) {
        m_sh[rm] = m_run;
        l_sh[rm] = l_run;
        seen_sh[rm] = u32(seen);
    }
    workgroupBarrier();

    // Epilogue (store_block), 16 columns at a time; O's unit: g / P_SCALE.
    let o_unit = select(1.0, bitcast<f32>((gexp + 1u) << 23u), gexp != 0u) * (1.0 / P_SCALE);
    if (o_all) {
        store_block(o[0], 0u, sg, tid, inf, o_unit, wid.z);
        if (D_BLOCKS > 1u) { store_block(o[1], 1u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 2u) { store_block(o[2], 2u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 3u) { store_block(o[3], 3u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 4u) { store_block(o[4], 4u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 5u) { store_block(o[5], 5u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 6u) { store_block(o[6], 6u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 7u) { store_block(o[7], 7u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 8u) { store_block(o[8], 8u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 9u) { store_block(o[9], 9u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 10u) { store_block(o[10], 10u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 11u) { store_block(o[11], 11u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 12u) { store_block(o[12], 12u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 13u) { store_block(o[13], 13u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 14u) { store_block(o[14], 14u, sg, tid, inf, o_unit, wid.z); }
        if (D_BLOCKS > 15u) { store_block(o[15], 15u, sg, tid, inf, o_unit, wid.z); }
    } else if (o_const) {
        store_block(o[0], cg + ncg * 0u, sg, tid, inf, o_unit, wid.z);
        if (ob > 1u) { store_block(o[1], cg + ncg * 1u, sg, tid, inf, o_unit, wid.z); }
        if (ob > 2u) { store_block(o[2], cg + ncg * 2u, sg, tid, inf, o_unit, wid.z); }
        if (ob > 3u) { store_block(o[3], cg + ncg * 3u, sg, tid, inf, o_unit, wid.z); }
    } else {
        for (var j = 0u; j < ob; j++) {
            store_block(o[j], cg + ncg * j, sg, tid, inf, o_unit, wid.z);
        }
    }
}
