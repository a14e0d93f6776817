// kernels/decode_stream.wgsl — the streaming rung of the decode kernel (subgroups required).
// Same plan, bindings, prologue, score rules and epilogue as decode.wgsl (decode_common.wgsl);
// the key loop is different: no workgroup barrier inside it.
//
//   * A cached row is read by LPR lanes, each holding EL consecutive elements (EL * element
//     bytes is a multiple of 16: every load is a 16-byte `vec4<u32>`); a subgroup of S lanes
//     reads S / LPR rows per load instruction (its key groups).
//   * Each subgroup streams its own steps of U * (S / LPR) keys: the K and V words of the next
//     step are loaded before the current step is computed (V does not wait for the softmax).
//   * Scores: each lane dots its EL elements with every query head's EL elements (q held in
//     registers), then log2(LPR) shuffles finish the dot in every lane of the key group.
//   * Online softmax per subgroup: one subgroupMax per head per step; the running maximum is
//     the same in every lane of the subgroup; accumulators are rescaled once per step.
//   * P.V: each lane accumulates its EL output elements of every head.
//   * After the loop: key groups are added with shuffles, subgroups merged one after another
//     through workgroup memory (q_sh, free once q is in registers), then stored by
//     decode_common.wgsl's store_row4 / store_transformed (split-K partials included).
//
// The host picks this rung only where the adapter's smallest subgroup holds at least LPR
// lanes; nothing assumes the subgroup size itself (key groups come from subgroup_size).
// Prelude constants (the host prepends them): M_MAX (query heads per workgroup), EL (elements
// per lane, a multiple of 4 * K_EPW and of 8), LPR (lanes per row = HEAD_DIM / EL, a power of
// two).
//
// Bindings: as decode.wgsl, K and V pools as 16-byte words.
// Dispatch: as decode.wgsl: x = num_seqs, y = num_kv_heads * head_chunks, z = num_segments.
// #include "kernels/decode_common.wgsl"
// #include "common/kv_groups.wgsl"

@group(0) @binding(5) var<storage, read> k_cache: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> v_cache: array<vec4<u32>>;

const U: u32 = 4u; // keys per key group per step
const NV: u32 = EL * 4u / K_EPW / 16u; // 16-byte loads per lane and row
const NG: u32 = EL / 4u; // groups of four elements per lane
const GPV: u32 = NG / NV; // groups per 16-byte load

var<workgroup> m_sh: array<f32, M_MAX>;
var<workgroup> l_sh: array<f32, M_MAX>;
var<workgroup> z_sh: array<f32, M_MAX>;

// Raw K values of group g (0 .. GPV) of a 16-byte load.
// The words of group g of a 16-byte load, from word i on (the first K_WPG / V_WPG are used).
fn words_from(w: vec4<u32>, i: u32) -> vec4<u32> {
    return vec4<u32>(w[i], w[min(i + 1u, 3u)], w[min(i + 2u, 3u)], w[min(i + 3u, 3u)]);
}

fn k_raw_at(w: vec4<u32>, g: u32) -> vec4<f32> {
    return k_raw4(words_from(w, (g / K_GPW) * K_WPG), g % K_GPW);
}

fn v_raw_at(w: vec4<u32>, g: u32) -> vec4<f32> {
    return v_raw4(words_from(w, (g / V_GPW) * V_WPG), g % V_GPW);
}

// The loads of one step of a key group: U rows (keys past the segment read row 0, which
// always exists, and weigh 0), NV 16-byte words of K and of V each, for this lane's elements.
struct StepLoads {
    rows: array<u32, U>,
    kw: array<vec4<u32>, U * NV>,
    vw: array<vec4<u32>, U * NV>,
}

fn load_step(inf: DecInfo, step: u32, nsteps: u32, per_step: u32, nkg: u32, kg: u32,
             lane: u32) -> StepLoads {
    var r: StepLoads;
    if (step >= nsteps) {
        return r;
    }
    for (var u = 0u; u < U; u++) {
        let key = inf.key_lo + step * per_step + u * nkg + kg;
        var row = 0u;
        if (key < inf.key_hi) {
            row = physical_row(inf.seq, key, inf.kv_head);
        }
        r.rows[u] = row;
        for (var v = 0u; v < NV; v++) {
            r.kw[u * NV + v] = k_cache[row * (ly.k_row_words / 4u) + lane * NV + v];
            r.vw[u * NV + v] = v_cache[row * (ly.v_row_words / 4u) + lane * NV + v];
        }
    }
    return r;
}

// Sum over the LPR lanes of this lane's key group.
fn row_sum(x: f32) -> f32 {
    var y = x;
    for (var o = LPR / 2u; o > 0u; o >>= 1u) {
        y += subgroupShuffleXor(y, o);
    }
    return y;
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
    load_q(tid, inf);
    let lane = si % LPR; // position in the row
    let kg = si / LPR; // key group in the subgroup
    let nkg = ss / LPR;

    // This lane's query elements of every head, and each head's element sum (zero points).
    var qr: array<vec4<f32>, M_MAX * NG>;
    var qsum: array<f32, M_MAX>;
    for (var m = 0u; m < M_MAX; m++) {
        for (var g = 0u; g < NG; g++) {
            qr[m * NG + g] = q_sh[m * d4 + lane * NG + g];
        }
        var t = 0.0;
        if (K_HAS_ZERO) {
            for (var j = 0u; j < d4; j++) {
                let v = q_sh[m * d4 + j];
                t += (v.x + v.y) + (v.z + v.w);
            }
        }
        qsum[m] = t;
    }
    if (tid == 0u) {
        for (var m = 0u; m < M_MAX; m++) {
            var m0 = NEG;
            var l0 = 0.0;
            if (HAS_SINKS && !IS_SPLIT && m < inf.nheads) {
                m0 = real_score(laux[ly.off_sinks + inf.head0 + m]);
                l0 = 1.0; // exp(sink - m) with m = sink
            }
            m_sh[m] = m0;
            l_sh[m] = l0;
            z_sh[m] = 0.0;
        }
    }
    workgroupBarrier(); // every lane has its q; q_sh is free for the merge

    var m_run: array<f32, M_MAX>;
    var l_run: array<f32, M_MAX>;
    var z_run: array<f32, M_MAX>;
    var acc: array<vec4<f32>, M_MAX * NG>;
    for (var m = 0u; m < M_MAX; m++) {
        m_run[m] = NEG;
        l_run[m] = 0.0;
        z_run[m] = 0.0;
    }
    for (var i = 0u; i < M_MAX * NG; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    let per_step = U * nkg;
    let nsteps = (inf.key_hi - inf.key_lo + per_step - 1u) / per_step;
    // Each subgroup's steps: sid, sid + nsg, ...; the next step's loads are issued before the
    // current step is computed.
    var step = sid;
    var cur = load_step(inf, step, nsteps, per_step, nkg, kg, lane);
    for (; step < nsteps; step += nsg) {
        let nxt = load_step(inf, step + nsg, nsteps, per_step, nkg, kg, lane);
        let rows = cur.rows;
        let kw = cur.kw;
        let vw = cur.vw;
        // Scores of this step's U keys for every head.
        var s: array<f32, U * M_MAX>;
        var tmax: array<f32, M_MAX>;
        for (var m = 0u; m < M_MAX; m++) {
            tmax[m] = NEG;
        }
        for (var u = 0u; u < U; u++) {
            let key = inf.key_lo + step * per_step + u * nkg + kg;
            var part: array<f32, M_MAX>;
            for (var m = 0u; m < M_MAX; m++) {
                part[m] = 0.0;
            }
            for (var v = 0u; v < NV; v++) {
                for (var g = 0u; g < GPV; g++) {
                    let k4 = k_raw_at(kw[u * NV + v], g);
                    for (var m = 0u; m < M_MAX; m++) {
                        part[m] += dot(qr[m * NG + v * GPV + g], k4);
                    }
                }
            }
            let ks = k_row_scale(rows[u]);
            var kz = 0.0;
            if (K_HAS_ZERO) {
                kz = ks * k_row_zero(rows[u]);
            }
            for (var m = 0u; m < M_MAX; m++) {
                let x = finish_score(fma(row_sum(part[m]), ks, -kz * qsum[m]), m, key,
                                     key < inf.key_hi, inf);
                s[u * M_MAX + m] = x;
                tmax[m] = max(tmax[m], x);
            }
        }
        // The subgroup's new maxima, the rescale, then p and P.V.
        for (var m = 0u; m < M_MAX; m++) {
            let cm = subgroupMax(tmax[m]);
            if (cm > NEG_HALF) {
                let mn = max(m_run[m], cm);
                let alpha = exp_diff(m_run[m], mn);
                m_run[m] = mn;
                l_run[m] *= alpha;
                z_run[m] *= alpha;
                for (var g = 0u; g < NG; g++) {
                    acc[m * NG + g] *= alpha;
                }
            }
        }
        for (var u = 0u; u < U; u++) {
            let vs = v_row_scale(rows[u]);
            var vz = 0.0;
            if (V_HAS_ZERO) {
                vz = v_row_zero(rows[u]);
            }
            for (var m = 0u; m < M_MAX; m++) {
                let x = s[u * M_MAX + m];
                var p = 0.0;
                if (x > NEG_HALF) {
                    p = exp_diff(x, m_run[m]);
                }
                l_run[m] += p;
                let pv = p * vs;
                if (V_HAS_ZERO) {
                    z_run[m] += pv * vz;
                }
                for (var v = 0u; v < NV; v++) {
                    for (var g = 0u; g < GPV; g++) {
                        let i = m * NG + v * GPV + g;
                        // A key that weighs 0 adds exactly 0, even over a non-finite V.
                        acc[i] += select(vec4<f32>(0.0), pv * v_raw_at(vw[u * NV + v], g), p != 0.0);
                    }
                }
            }
        }
        cur = nxt;
    }

    // Key groups of the subgroup: same maximum, so sums add.
    for (var o = LPR; o < ss; o <<= 1u) {
        for (var m = 0u; m < M_MAX; m++) {
            l_run[m] += subgroupShuffleXor(l_run[m], o);
            z_run[m] += subgroupShuffleXor(z_run[m], o);
        }
        for (var i = 0u; i < M_MAX * NG; i++) {
            acc[i] += subgroupShuffleXor(acc[i], o);
        }
    }
    // Subgroups, one after another, into (m_sh, l_sh, z_sh, q_sh); a fixed order keeps the
    // result deterministic.
    for (var g = 0u; g < nsg; g++) {
        if (sid == g && kg == 0u) {
            for (var m = 0u; m < M_MAX; m++) {
                let mo = m_sh[m];
                let mn = max(mo, m_run[m]);
                let a = exp_diff(mo, mn);
                let b = exp_diff(m_run[m], mn);
                for (var j = 0u; j < NG; j++) {
                    let e = m * d4 + lane * NG + j;
                    var old = vec4<f32>(0.0);
                    if (g > 0u) {
                        old = q_sh[e] * a;
                    }
                    q_sh[e] = old + acc[m * NG + j] * b;
                }
                if (lane == 0u) {
                    l_sh[m] = l_sh[m] * a + l_run[m] * b;
                    z_sh[m] = z_sh[m] * a + z_run[m] * b;
                    m_sh[m] = mn;
                }
            }
        }
        workgroupBarrier();
    }
    for (var e = tid; e < M_MAX * d4; e += WG_SIZE) {
        let m = e / d4;
        let a = q_sh[e] - vec4<f32>(z_sh[m]);
        store_row4(m, e % d4, a, l_sh[m], m_sh[m], inf, wid.z);
    }
    store_transformed(tid, inf);
}
