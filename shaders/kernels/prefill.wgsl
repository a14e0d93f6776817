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
// prefix ranges, FP8 output, the mode's query/output transform); split-K does not apply
// (the planner never splits batches with prompts). Rows are MAX_M = 16 * ROW_BLOCKS (query
// token, query head) pairs of ONE kv head (GQA packing as in unified.wgsl), so each K/V tile
// is read from the cache and dequantized (by the mode's read contract) once per workgroup.
//
// Per key tile of TK keys:
//   1. K tile -> kv_sh (model values rounded to the fragment element type ET)
//   2. S = Q K^T by fragments (row block `sg` of each fragment owner), stored to s_sh (f32)
//   3. V tile -> kv_sh; scores finished (spec §6.1 pipeline and mask) in place, row maxima
//   4. online softmax with lazy rescaling: a row's running maximum only moves when the tile's
//      maximum exceeds it by more than TAU (so P <= e^TAU fits f16); O, held in fragments, is
//      rescaled (through s_sh) only on tiles where some row's maximum moved
//   5. P (ET) -> p_sh, O += P V by fragments
// Precision: the tiles hold the cache's raw values (codes as the read contract gives them,
// before scale and zero point: exact in f16 for every mode whose codec says so) and Q as ET
// (f16 where SHADER_F16 allows; f32 for f32 models); a key's scale and zero point are applied
// to its score column after the multiply-add (S = s_k (q·c - z_k Σq)), a value's are folded
// into P (p' = p s_v, with Σ p' z_v subtracted at the end), and P enters the multiply-add as a
// hi + lo pair of ET values where ET is f16, so products and sums carry f32 precision.
//
// The fragment include provides: alias FragC; var<workgroup> qh_sh, kv_sh and its P tile(s);
// put_q4 (returns the stored values), put_kv4, put_p (of p' * P_SCALE, a power of two the
// include picks; O is divided by it at the end), frag_qk, frag_pv, frag_store /
// frag_load (s_sh, f32, row-major), and the entry point, which calls prefill_main with the
// fragment owner's row block. The prelude defines ET, ET_MAX, D_BLOCKS = HEAD_DIM / 16 and
// T_BLOCKS = TK / 16.
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
override QS: u32 = 136u;         // row strides in ET elements: qh_sh and kv_sh rows
override KS: u32 = 136u;
override PS: u32 = 40u;          // p_sh rows
override SS: u32 = 36u;          // s_sh rows (f32)
override QH_LEN: u32 = 8704u;    // array lengths in the fragment include's element type
override KV_LEN: u32 = 4352u;
override P_LEN: u32 = 2560u;
override S_LEN: u32 = 2304u;     // f32, >= 256 * ROW_BLOCKS
override Q_SH_LEN: u32 = 1u;     // f32 staging (vec4) of 16 rows for the mode's transform
override HAS_SOFTCAP: bool = false;
override HAS_SINKS: bool = false;
override ALIBI_MODE: u32 = 0u; // 0 off, 1 linear, 2 sqrt
override HAS_QQ: bool = false;
override HAS_MM: bool = false;
override IS_SPLIT: bool = false;
// Diagnostics only (QUANTKV_DEBUG_SKIP): 1 skips K/V loads, 2 the Q K^T multiply-adds, 4 the
// P V multiply-adds, 8 the score pipeline and mask (raw scores kept).
override DEBUG_SKIP: u32 = 0u;

// A row's running maximum moves only when a tile's maximum exceeds it by more than TAU.
const TAU: f32 = 8.0;

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(2) var<storage, read> step_meta: array<i32>;
@group(0) @binding(3) var<storage, read> laux: array<f32>;
@group(0) @binding(4) var<storage, read> q: array<u32>;
@group(0) @binding(5) var<storage, read> k_cache: array<u32>;
@group(0) @binding(6) var<storage, read> v_cache: array<u32>;
@group(0) @binding(7) var<storage, read> k_scale: array<f32>;
@group(0) @binding(8) var<storage, read> v_scale: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<u32>;

var<workgroup> info: WgInfo;
var<workgroup> s_sh: array<f32, S_LEN>;
var<workgroup> q_sh: array<vec4<f32>, Q_SH_LEN>;
var<workgroup> m_sh: array<f32, MAX_M>;
var<workgroup> l_sh: array<f32, MAX_M>;
var<workgroup> alpha_sh: array<f32, MAX_M>;
var<workgroup> seen_sh: array<u32, MAX_M>;
var<workgroup> red_sh: array<f32, WG_SIZE>;
var<workgroup> row_sh: array<u32, TK>;
var<workgroup> ks_sh: array<f32, TK>;  // per tile key: K scale, K zero, V scale, V zero
var<workgroup> kz_sh: array<f32, TK>;
var<workgroup> vs_sh: array<f32, TK>;
var<workgroup> vz_sh: array<f32, TK>;
var<workgroup> qsum_sh: array<f32, MAX_M>; // Σ of each row's stored Q (K zero points)
var<workgroup> zc_sh: array<f32, MAX_M>;   // Σ p' z_v per row (V zero points)
var<workgroup> redz_sh: array<f32, WG_SIZE>;
// Tile keys whose V row holds a non-finite value (staged as 0: a multiply-add would turn the
// 0 of a masked key's p into NaN); a row that gives such a key weight gets a NaN sum, so its
// output is NaN as the reference's is, and no other row sees it.
var<workgroup> vbad_at: array<atomic<u32>, TK>;
// Largest V scale of the tile (f32 bits; scales are >= 0, so their bits order like them):
// P is multiplied by s_v / g, with g the power of two above it, so P stays below 16 e^TAU
// whatever the scales, and O is taken to units of g around the tile's multiply-adds (exact:
// powers of two).
var<workgroup> vmax_at: atomic<u32>;
var<workgroup> resc_at: atomic<u32>;
var<workgroup> resc_sh: u32;

// Raw values of elements 4j..4j+3 of tile key t (rows past the sequence read row 0, always
// in bounds).
fn tile_fetch(e: u32, is_v: bool) -> vec4<f32> {
    let d4 = HEAD_DIM / 4u;
    let row = row_sh[min(e / d4, TK - 1u)];
    if ((DEBUG_SKIP & 1u) != 0u) {
        return vec4<f32>(f32(row & 1u));
    }
    if (is_v) {
        return v_group(row, e % d4);
    }
    return k_group(row, e % d4);
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
        }
        put_kv4(e / d4, e % d4, x);
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

fn prefill_main(wid: vec3<u32>, tid: u32, sg: u32) {
    if (tid == 0u) {
        info = plan_workgroup(wid, 1u, TK);
        atomicStore(&resc_at, 0u);
        atomicStore(&vmax_at, 0u);
    }
    let inf = workgroupUniformLoad(&info);
    if (inf.valid == 0u) {
        return;
    }
    let d4 = HEAD_DIM / 4u;
    let hg = ly.heads_per_wg;

    // Prologue: Q rows (through the mode's transform, 16 rows at a time, where it has one);
    // with K zero points, one thread per row sums what was stored.
    if (HAS_TRANSFORM) {
        for (var rb = 0u; rb < ROW_BLOCKS; rb++) {
            for (var e = tid; e < 16u * d4; e += WG_SIZE) {
                q_sh[e] = q_row4(inf, rb * 16u + e / d4, e % d4);
            }
            workgroupBarrier();
            q_transform(tid, 16u);
            workgroupBarrier();
            if (K_HAS_ZERO) {
                for (var r = tid; r < 16u; r += WG_SIZE) {
                    var sum = 0.0;
                    for (var j = 0u; j < d4; j++) {
                        sum += dot(put_q4(rb * 16u + r, j, model_round4(q_sh[r * d4 + j])), vec4<f32>(1.0));
                    }
                    qsum_sh[rb * 16u + r] = sum;
                }
            } else {
                for (var e = tid; e < 16u * d4; e += WG_SIZE) {
                    _ = put_q4(rb * 16u + e / d4, e % d4, model_round4(q_sh[e]));
                }
            }
            workgroupBarrier();
        }
    } else if (K_HAS_ZERO) {
        for (var r = tid; r < MAX_M; r += WG_SIZE) {
            var sum = 0.0;
            for (var j = 0u; j < d4; j++) {
                sum += dot(put_q4(r, j, q_row4(inf, r, j)), vec4<f32>(1.0));
            }
            qsum_sh[r] = sum;
        }
    } else {
        for (var e = tid; e < MAX_M * d4; e += WG_SIZE) {
            _ = put_q4(e / d4, e % d4, q_row4(inf, e / d4, e % d4));
        }
    }
    for (var r = tid; r < MAX_M; r += WG_SIZE) {
        var m0 = NEG;
        let hh = r % hg;
        if (HAS_SINKS && hh < inf.nheads) {
            m0 = real_score(laux[ly.off_sinks + inf.head0 + hh]);
        }
        m_sh[r] = m0;
        l_sh[r] = 1.0;
        seen_sh[r] = 0u;
        zc_sh[r] = 0.0;
    }
    for (var e = tid; e < 256u; e += WG_SIZE) {
        s_sh[e] = 0.0;
    }
    workgroupBarrier();
    let zero = frag_load(0u, 16u);
    var o: array<FragC, D_BLOCKS>;
    for (var db = 0u; db < D_BLOCKS; db++) {
        o[db] = zero;
    }
    let r0 = sg * 16u;
    let rt = WG_SIZE / MAX_M; // threads per row in the softmax
    let rm = tid / rt;
    let rsub = tid % rt;
    let qi = rm / hg;
    let hh = rm % hg;

    for (var tile = inf.tile_lo; tile < inf.tile_hi; tile++) {
        let key0 = tile * TK;
        workgroupBarrier();
        for (var t = tid; t < TK; t += WG_SIZE) {
            let key = key0 + t;
            var r = 0u;
            if (key < inf.kv_len) {
                r = physical_row(inf.seq, key, inf.kv_head);
            }
            row_sh[t] = r;
            atomicStore(&vbad_at[t], 0u);
            ks_sh[t] = k_row_scale(r);
            let vsc = v_row_scale(r);
            vs_sh[t] = vsc;
            // (A scale that is not a finite positive number, e.g. of a block no row sees,
            // is left out: it is never multiplied by a nonzero p.)
            let vbits = bitcast<u32>(vsc);
            if (key < inf.kv_len && vbits < 0x7F800000u) {
                atomicMax(&vmax_at, vbits);
            }
            if (K_HAS_ZERO) {
                kz_sh[t] = k_row_zero(r);
            }
            if (V_HAS_ZERO) {
                vz_sh[t] = v_row_zero(r);
            }
        }
        workgroupBarrier();
        stage_tile(tid, TK * d4, key0, inf.kv_len, false);
        workgroupBarrier();
        // g = 2^(floor(log2 max s_v) + 1) (1 for a tile of zero scales), and 1/g.
        let vexp = min((atomicLoad(&vmax_at) >> 23u) & 0xFFu, 253u);
        let g = select(1.0, bitcast<f32>((vexp + 1u) << 23u), vexp != 0u);
        let inv_g = select(1.0, bitcast<f32>((253u - vexp) << 23u), vexp != 0u);
        // S = Q K^T for this owner's 16 rows.
        for (var cb = 0u; cb < T_BLOCKS; cb++) {
            var c = zero;
            for (var kb = 0u; kb < D_BLOCKS * u32((DEBUG_SKIP & 2u) == 0u); kb++) {
                c = frag_qk(c, r0, cb * 16u, kb * 16u);
            }
            frag_store(c, r0 * SS + cb * 16u, SS);
        }
        workgroupBarrier();
        // V tile (K is no longer read); scores finished in place; partial row maxima.
        stage_tile(tid, TK * d4, key0, inf.kv_len, true);
        var part = NEG;
        for (var t = rsub; t < TK; t += rt) {
            let key = key0 + t;
            var s = NEG;
            if ((DEBUG_SKIP & 8u) != 0u) {
                s = select(NEG, s_sh[rm * SS + t], key < inf.kv_len);
            } else if (key_visible(inf, qi, hh, key)) {
                var raw = s_sh[rm * SS + t];
                if (K_HAS_ZERO) {
                    raw -= kz_sh[t] * qsum_sh[rm];
                }
                s = finish_score(inf, qi, hh, key, raw * ks_sh[t]);
            }
            s_sh[rm * SS + t] = s;
            part = max(part, s);
        }
        red_sh[tid] = part;
        workgroupBarrier();
        if (rsub == 0u) {
            var mx = NEG;
            for (var r = 0u; r < rt; r++) {
                mx = max(mx, red_sh[tid + r]);
            }
            let m_old = m_sh[rm];
            var alpha = 1.0;
            if (mx > NEG_HALF) {
                if (seen_sh[rm] == 0u) {
                    // First visible key of the row: O is still zero.
                    if (mx > m_old) {
                        m_sh[rm] = mx;
                        alpha = exp_diff(m_old, mx);
                    }
                    seen_sh[rm] = 1u;
                } else if (mx > m_old + TAU) {
                    m_sh[rm] = mx;
                    alpha = exp_diff(m_old, mx);
                    atomicMax(&resc_at, 1u);
                }
            }
            alpha_sh[rm] = alpha;
        }
        workgroupBarrier();
        // P = exp(S - M); p' = p s_v to the multiply-add, Σ p and Σ p' z_v per row.
        let mu = m_sh[rm];
        var psum = 0.0;
        var zsum = 0.0;
        var poisoned = false;
        for (var t = rsub; t < TK; t += rt) {
            let sv = s_sh[rm * SS + t];
            var p = 0.0;
            if (sv > NEG_HALF) {
                p = exp_diff(sv, mu);
                poisoned = poisoned || (p != 0.0 && atomicLoad(&vbad_at[t]) != 0u);
            }
            // A masked key's scale and zero point are never read (they may be anything).
            var pv = 0.0;
            if (p != 0.0) {
                pv = p * vs_sh[t];
                if (V_HAS_ZERO) {
                    zsum += pv * vz_sh[t];
                }
            }
            put_p(rm, t, pv * inv_g * P_SCALE);
            psum += p;
        }
        red_sh[tid] = select(psum, bitcast<f32>(0x7FC00000u), poisoned);
        redz_sh[tid] = zsum;
        if (tid == 0u) {
            resc_sh = atomicLoad(&resc_at);
            atomicStore(&resc_at, 0u);
            atomicStore(&vmax_at, 0u);
        }
        workgroupBarrier();
        if (rsub == 0u) {
            var sum = 0.0;
            var zs = 0.0;
            for (var r = 0u; r < rt; r++) {
                sum += red_sh[tid + r];
                zs += redz_sh[tid + r];
            }
            l_sh[rm] = l_sh[rm] * alpha_sh[rm] + sum;
            if (V_HAS_ZERO) {
                zc_sh[rm] = zc_sh[rm] * alpha_sh[rm] + zs;
            }
        }
        // Rows whose maximum moved: O rescaled through s_sh (free once P is written).
        if (workgroupUniformLoad(&resc_sh) != 0u) {
            for (var db = 0u; db < D_BLOCKS; db++) {
                frag_store(o[db], sg * 256u, 16u);
                workgroupBarrier();
                for (var e = tid; e < ROW_BLOCKS * 256u; e += WG_SIZE) {
                    s_sh[e] *= alpha_sh[(e / 256u) * 16u + (e % 256u) / 16u];
                }
                workgroupBarrier();
                o[db] = frag_load(sg * 256u, 16u);
                workgroupBarrier();
            }
        }
        // O += P V, in units of g.
        for (var db = 0u; db < D_BLOCKS; db++) {
            var acc = o[db];
            if (vexp != 126u) {
                acc = acc * inv_g;
            }
            for (var kb = 0u; kb < T_BLOCKS * u32((DEBUG_SKIP & 4u) == 0u); kb++) {
                acc = frag_pv(acc, r0, kb * 16u, db * 16u);
            }
            if (vexp != 126u) {
                acc = acc * g;
            }
            o[db] = acc;
        }
    }
    workgroupBarrier();

    // Epilogue: O / l through s_sh, 16 columns at a time.
    if (HAS_TRANSFORM) {
        // Rows staged in q_sh 16 at a time, rounded to the model dtype, transformed back.
        for (var rb = 0u; rb < ROW_BLOCKS; rb++) {
            for (var db = 0u; db < D_BLOCKS; db++) {
                if (sg == rb) {
                    frag_store(o[db], 0u, 16u);
                }
                workgroupBarrier();
                for (var e = tid; e < 64u; e += WG_SIZE) {
                    let r = e / 4u;
                    let cg = e % 4u;
                    let m = rb * 16u + r;
                    var v = vec4<f32>(0.0);
                    if (seen_sh[m] != 0u) {
                        let b = r * 16u + cg * 4u;
                        v = (vec4<f32>(s_sh[b], s_sh[b + 1u], s_sh[b + 2u], s_sh[b + 3u])
                            * (1.0 / P_SCALE) - vec4<f32>(zc_sh[m])) / l_sh[m];
                    }
                    q_sh[r * d4 + db * 4u + cg] = model_round4(v);
                }
                workgroupBarrier();
            }
            out_transform(tid, 16u);
            workgroupBarrier();
            for (var e = tid; e < 16u * d4; e += WG_SIZE) {
                let m = rb * 16u + e / d4;
                let qm = m / hg;
                let hm = m % hg;
                if (qm < inf.rows_q && hm < inf.nheads) {
                    out_store4(out_elem(inf.q_first + qm, inf.head0 + hm, e % d4), q_sh[e]);
                }
            }
            workgroupBarrier();
        }
        return;
    }
    for (var db = 0u; db < D_BLOCKS; db++) {
        frag_store(o[db], sg * 256u, 16u);
        workgroupBarrier();
        for (var e = tid; e < ROW_BLOCKS * 64u; e += WG_SIZE) {
            let rb = e / 64u;
            let r = (e % 64u) / 4u;
            let cg = e % 4u;
            let m = rb * 16u + r;
            let qm = m / hg;
            let hm = m % hg;
            if (qm < inf.rows_q && hm < inf.nheads) {
                var v = vec4<f32>(0.0);
                if (seen_sh[m] != 0u) {
                    let b = rb * 256u + r * 16u + cg * 4u;
                    v = (vec4<f32>(s_sh[b], s_sh[b + 1u], s_sh[b + 2u], s_sh[b + 3u])
                        * (1.0 / P_SCALE) - vec4<f32>(zc_sh[m])) / l_sh[m];
                }
                out_store4(out_elem(inf.q_first + qm, inf.head0 + hm, db * 4u + cg), v);
            }
        }
        workgroupBarrier();
    }
}
