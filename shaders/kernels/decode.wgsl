// kernels/decode.wgsl — the decode-specialised attention kernel: every sequence of the batch
// has at most one query token (the host picks this kernel only then), so a workgroup holds the
// MAX_M query heads of ONE kv head for one token and streams that kv head's keys in chunks of
// CHUNK keys. Same read contract (v2, through common/kv_read.wgsl) as unified.wgsl, same
// bindings, same split-K partial layout (the reduce pass is shared; with COMBINE the last
// workgroup of a sequence's segments combines them itself, decode_common.wgsl).
//
// Why a second kernel: a decode row has no query tile to amortise a K tile in workgroup memory
// over, so unified.wgsl's per-tile structure (stage K, scores, fold the softmax, stage V, P.V:
// six barriers per 64 keys) is latency-bound. Here
//   * scores are one thread per key, K read straight from the cache with eight loads in flight
//     per thread, q broadcast from workgroup memory;
//   * the softmax max is folded once per CHUNK keys (256 for 4 heads per kv head), and the
//     running maximum is kept per thread (every thread computes the same value), so it needs
//     no workgroup state; the denominator is kept as per-thread partial sums, added once at
//     the end;
//   * P.V gives each thread one vec4 column of V and a slice of the chunk's keys: consecutive
//     threads read consecutive words of one V row (coalesced), each thread accumulates every
//     head's row, and the slices are added once at the end in a fixed order (deterministic).
//
// Two entry files include this one: decode_entry.wgsl (portable) and decode_entry_sg.wgsl
// (subgroup operations, for adapters whose subgroups hold at least 8 invocations). With
// subgroups, each key's scores are computed by 8 lanes that each read an interleaved quarter
// of the row (so a warp's load covers whole 32-byte sectors of 4 rows, not 4 bytes of 32
// rows) and add their partial dots with three shuffles; the chunk maximum is one subgroupMax
// and a fold over the subgroups instead of a workgroup-memory tree.
//
// Bindings: as unified.wgsl (0 StepU, 1 LayerU, 2 meta, 3 laux, 4 q, 5 k_cache, 6 v_cache,
//           7 k_scale, 8 v_scale, 9 out or split-K partials; with COMBINE 9 out, 12 partials,
//           13 arrival counters).
// Overrides (besides decode_common.wgsl's): CHUNK (keys per chunk, a multiple of WG_SIZE),
//            S_SH_LEN = MAX_M*CHUNK, RED_LEN = MAX_M*WG_SIZE.
// Dispatch: x = num_seqs, y = num_kv_heads * head_chunks, z = num_segments.
// The entry file provides HAS_SG, sg_sum8 (sum over the 8 lanes of a key group), sg_max
// (maximum over the subgroup) and fills SgIds.
// Read contract v2: K and V arrive as raw values (k_group / v_group); a key's scale multiplies
// its finished dot product once (with a zero point: scale * (q.raw - zero * sum(q))), and V's
// scale is folded into p once per key (its zero point into a per-row correction subtracted
// once at the end), so no per-element dequantization runs in the hot loops.
// #include "kernels/decode_common.wgsl"
// #include "common/kv_read.wgsl"

// Bindings 5 and 6 (k_cache, v_cache: u32 words) come from the host's prelude (read, or
// read_write when the kernel writes the step's rows; decode_common.wgsl's write_newest).

override CHUNK: u32 = 512u;
override S_SH_LEN: u32 = 2048u;
override RED_LEN: u32 = 512u;
// Diagnostics only (QUANTKV_DEBUG_SKIP): 1 skips the score loads and dots, 2 the P.V loop,
// 4 the whole chunk loop. Results are wrong while set.
override DEBUG_SKIP: u32 = 0u;

// Where an invocation sits in its subgroup (decode_entry_sg.wgsl; zeros in the portable entry).
struct SgIds {
    lane: u32,   // lane within its 8-lane key group
    group: u32,  // key group in the workgroup, 0 .. WG_SIZE / 8
    sid: u32,    // subgroup index
    first: bool, // first invocation of its subgroup
    nsg: u32,    // subgroups in the workgroup
}

var<workgroup> s_sh: array<f32, S_SH_LEN>;
var<workgroup> row_sh: array<u32, CHUNK>;
var<workgroup> red_sh: array<f32, RED_LEN>;
var<workgroup> qsum_sh: array<f32, M_MAX>; // sum of each query row's elements (zero points)

// The zero-point term of a K row: scale * zero (0 for modes without zero points), so that
// q.k = scale * q.raw - zero_term * sum(q).
fn k_zero_term(row: u32) -> f32 {
    if (K_HAS_ZERO) {
        return k_row_scale(row) * k_row_zero(row);
    }
    return 0.0;
}

// Fills qsum_sh after the query prologue (zero points only; zeros otherwise); ends with a
// barrier.
fn load_qsum(tid: u32) {
    let d4 = HEAD_DIM / 4u;
    if (tid < MAX_M) {
        var t = 0.0;
        if (K_HAS_ZERO) {
            for (var j = 0u; j < d4; j++) {
                let v = q_sh[tid * d4 + j];
                t += (v.x + v.y) + (v.z + v.w);
            }
        }
        qsum_sh[tid] = t;
    }
    workgroupBarrier();
}

// Adds q_sh row m (all MAX_M rows) dotted with elements 4j..4j+3 of a key, for eight
// consecutive j, into s; the eight K loads are issued before any is used.
fn dot8(s: ptr<function, array<f32, M_MAX>>, row: u32, j: u32) {
    let d4 = HEAD_DIM / 4u;
    let k0 = k_group(row, j);
    let k1 = k_group(row, j + 1u);
    let k2 = k_group(row, j + 2u);
    let k3 = k_group(row, j + 3u);
    let k4 = k_group(row, min(j + 4u, d4 - 1u));
    let k5 = k_group(row, min(j + 5u, d4 - 1u));
    let k6 = k_group(row, min(j + 6u, d4 - 1u));
    let k7 = k_group(row, min(j + 7u, d4 - 1u));
    let full = j + 8u <= d4;
    for (var m = 0u; m < MAX_M; m++) {
        let b = m * d4 + j;
        var a = dot(q_sh[b], k0) + dot(q_sh[b + 1u], k1) + dot(q_sh[b + 2u], k2)
            + dot(q_sh[b + 3u], k3);
        if (full) {
            a += dot(q_sh[b + 4u], k4) + dot(q_sh[b + 5u], k5) + dot(q_sh[b + 6u], k6)
                + dot(q_sh[b + 7u], k7);
        }
        (*s)[m] += a;
    }
}

// acc[m] += p[m][c'] * V[c'] (column col) for the eight keys c' = c, c + nsl, ... c + 7 nsl of
// the chunk; the eight V loads are issued before any is used. Keys past n are clamped to a key
// of the chunk (so the load stays in bounds) and weigh exactly 0.
fn pv8(acc: ptr<function, array<vec4<f32>, M_MAX>>, c: u32, n: u32, nsl: u32, col: u32) {
    if (c + 7u * nsl < n) {
        // All eight keys inside the chunk: no clamping, no masking.
        let v0 = v_group(row_sh[c], col);
        let v1 = v_group(row_sh[c + nsl], col);
        let v2 = v_group(row_sh[c + 2u * nsl], col);
        let v3 = v_group(row_sh[c + 3u * nsl], col);
        let v4 = v_group(row_sh[c + 4u * nsl], col);
        let v5 = v_group(row_sh[c + 5u * nsl], col);
        let v6 = v_group(row_sh[c + 6u * nsl], col);
        let v7 = v_group(row_sh[c + 7u * nsl], col);
        for (var m = 0u; m < MAX_M; m++) {
            let b = m * CHUNK + c;
            var a = (*acc)[m];
            a = fma(vec4<f32>(s_sh[b]), v0, a);
            a = fma(vec4<f32>(s_sh[b + nsl]), v1, a);
            a = fma(vec4<f32>(s_sh[b + 2u * nsl]), v2, a);
            a = fma(vec4<f32>(s_sh[b + 3u * nsl]), v3, a);
            a = fma(vec4<f32>(s_sh[b + 4u * nsl]), v4, a);
            a = fma(vec4<f32>(s_sh[b + 5u * nsl]), v5, a);
            a = fma(vec4<f32>(s_sh[b + 6u * nsl]), v6, a);
            a = fma(vec4<f32>(s_sh[b + 7u * nsl]), v7, a);
            (*acc)[m] = a;
        }
        return;
    }
    // The chunk's tail: keys past n are clamped to key n - 1 (so the load stays in bounds)
    // and weigh exactly 0 (a select, so even a non-finite value there cannot leak in).
    let last = n - 1u;
    let c1 = min(c + nsl, last);
    let c2 = min(c + 2u * nsl, last);
    let c3 = min(c + 3u * nsl, last);
    let c4 = min(c + 4u * nsl, last);
    let c5 = min(c + 5u * nsl, last);
    let c6 = min(c + 6u * nsl, last);
    let c7 = min(c + 7u * nsl, last);
    let v0 = v_group(row_sh[c], col);
    let v1 = v_group(row_sh[c1], col);
    let v2 = v_group(row_sh[c2], col);
    let v3 = v_group(row_sh[c3], col);
    let v4 = v_group(row_sh[c4], col);
    let v5 = v_group(row_sh[c5], col);
    let v6 = v_group(row_sh[c6], col);
    let v7 = v_group(row_sh[c7], col);
    let z = vec4<f32>(0.0);
    for (var m = 0u; m < MAX_M; m++) {
        let b = m * CHUNK;
        var a = s_sh[b + c] * v0;
        a += select(z, s_sh[b + c1] * v1, c + nsl <= last);
        a += select(z, s_sh[b + c2] * v2, c + 2u * nsl <= last);
        a += select(z, s_sh[b + c3] * v3, c + 3u * nsl <= last);
        a += select(z, s_sh[b + c4] * v4, c + 4u * nsl <= last);
        a += select(z, s_sh[b + c5] * v5, c + 5u * nsl <= last);
        a += select(z, s_sh[b + c6] * v6, c + 6u * nsl <= last);
        a += select(z, s_sh[b + c7] * v7, c + 7u * nsl <= last);
        (*acc)[m] += a;
    }
}

// Subgroup scores: this lane's part of q.k for keys at rows ra and rb, vec4 columns
// j0 + lane + 8i (i < 4), added into sa / sb; the eight K loads are issued first.
fn sg_dot2(sa: ptr<function, array<f32, M_MAX>>, sb: ptr<function, array<f32, M_MAX>>,
           ra: u32, rb: u32, j0: u32, lane: u32) {
    let d4 = HEAD_DIM / 4u;
    let last = d4 - 1u;
    let j0l = j0 + lane;
    let i0 = min(j0l, last);
    let i1 = min(j0l + 8u, last);
    let i2 = min(j0l + 16u, last);
    let i3 = min(j0l + 24u, last);
    let a0 = k_group(ra, i0);
    let a1 = k_group(ra, i1);
    let a2 = k_group(ra, i2);
    let a3 = k_group(ra, i3);
    let b0 = k_group(rb, i0);
    let b1 = k_group(rb, i1);
    let b2 = k_group(rb, i2);
    let b3 = k_group(rb, i3);
    // Columns past the row (head sizes that are not a multiple of 32 elements) weigh 0.
    let w0 = select(0.0, 1.0, j0l <= last);
    let w1 = select(0.0, 1.0, j0l + 8u <= last);
    let w2 = select(0.0, 1.0, j0l + 16u <= last);
    let w3 = select(0.0, 1.0, j0l + 24u <= last);
    for (var m = 0u; m < MAX_M; m++) {
        let q0 = q_sh[m * d4 + i0] * w0;
        let q1 = q_sh[m * d4 + i1] * w1;
        let q2 = q_sh[m * d4 + i2] * w2;
        let q3 = q_sh[m * d4 + i3] * w3;
        (*sa)[m] += dot(q0, a0) + dot(q1, a1) + dot(q2, a2) + dot(q3, a3);
        (*sb)[m] += dot(q0, b0) + dot(q1, b1) + dot(q2, b2) + dot(q3, b3);
    }
}

// Tree reduction (max) of red_sh[m * WG_SIZE + i] over i for every row m; the result lands in
// red_sh[m * WG_SIZE]. Starts with a barrier (the caller has just written its partials).
fn tree_max(tid: u32) {
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        for (var e = tid; e < MAX_M * s; e += WG_SIZE) {
            let i = (e / s) * WG_SIZE + e % s;
            red_sh[i] = max(red_sh[i], red_sh[i + s]);
        }
    }
    workgroupBarrier();
}

// Same, summing.
fn tree_sum(tid: u32) {
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        for (var e = tid; e < MAX_M * s; e += WG_SIZE) {
            let i = (e / s) * WG_SIZE + e % s;
            red_sh[i] = red_sh[i] + red_sh[i + s];
        }
    }
    workgroupBarrier();
}

// The kernel body; the entry files call it.
fn decode_main(wid: vec3<u32>, tid: u32, nwg: vec3<u32>, sg: SgIds) {
    if (tid == 0u) {
        info = plan_decode(wid, nwg.z);
    }
    let inf = workgroupUniformLoad(&info);
    if (inf.valid == 0u) {
        return;
    }
    let d4 = HEAD_DIM / 4u;
    let nsl = WG_SIZE / d4;       // key slices of the P.V phase
    let col = tid % d4;           // this thread's vec4 column of V
    let slice = tid / d4;
    let pv = slice < nsl;         // threads past nsl * d4 idle in P.V

    write_newest(tid, inf);
    load_q(tid, inf);
    load_qsum(tid);

    // Running state, identical in every thread: maximum per row; per-thread partial sums of
    // the denominator and the P.V accumulators of this thread's column and key slice.
    var m_run: array<f32, M_MAX>;
    var l_part: array<f32, M_MAX>;
    var z_part: array<f32, M_MAX>; // V zero-point correction (modes with a zero point only)
    var acc: array<vec4<f32>, M_MAX>;
    for (var m = 0u; m < MAX_M; m++) {
        var m0 = NEG;
        if (HAS_SINKS && !IS_SPLIT && m < inf.nheads) {
            m0 = real_score(laux[ly.off_sinks + inf.head0 + m]);
        }
        m_run[m] = m0;
        l_part[m] = select(0.0, 1.0, tid == 0u); // exp(sink - m) with m = sink, counted once
        z_part[m] = 0.0;
        acc[m] = vec4<f32>(0.0);
    }

    for (var key0 = inf.key_lo; key0 < inf.key_hi && (DEBUG_SKIP & 4u) == 0u; key0 += CHUNK) {
        let n = min(CHUNK, inf.key_hi - key0);
        workgroupBarrier(); // the previous chunk's P.V is done with row_sh and s_sh
        // Scores, one thread per key.
        var tmax: array<f32, M_MAX>;
        for (var m = 0u; m < MAX_M; m++) {
            tmax[m] = NEG;
        }
        // Physical rows of the chunk's keys (row 0, always in bounds, past the end), all of this
        // thread's block-table loads in flight at once; P.V reads them too.
        for (var c = tid; c < CHUNK; c += WG_SIZE) {
            var row = 0u;
            if (c < n) {
                row = physical_row(inf.seq, key0 + c, inf.kv_head);
            }
            row_sh[c] = row;
        }
        if (HAS_SG) {
            // Eight lanes per key, two keys per step; lane m % 8 finishes row m's scores.
            workgroupBarrier(); // row_sh is read across threads
            let ng = WG_SIZE / 8u;
            let nr = min(CHUNK, (n + 2u * ng - 1u) / (2u * ng) * (2u * ng)); // uniform
            for (var c = sg.group; c < nr; c += 2u * ng) {
                let cb = c + ng;
                var sa: array<f32, M_MAX>;
                var sb: array<f32, M_MAX>;
                for (var m = 0u; m < MAX_M; m++) {
                    sa[m] = 0.0;
                    sb[m] = 0.0;
                }
                let ra = row_sh[c];
                let rb = row_sh[cb];
                for (var j0 = 0u; j0 < d4 * u32((DEBUG_SKIP & 1u) == 0u); j0 += 32u) {
                    sg_dot2(&sa, &sb, ra, rb, j0, sg.lane);
                }
                let ksa = k_row_scale(ra);
                let ksb = k_row_scale(rb);
                let kza = k_zero_term(ra);
                let kzb = k_zero_term(rb);
                for (var m = 0u; m < MAX_M; m++) {
                    let xa = fma(sg_sum8(sa[m]), ksa, -kza * qsum_sh[m]);
                    let xb = fma(sg_sum8(sb[m]), ksb, -kzb * qsum_sh[m]);
                    if (m % 8u == sg.lane) {
                        let fa = finish_score(xa, m, key0 + c, c < n, inf);
                        let fb = finish_score(xb, m, key0 + cb, cb < n, inf);
                        s_sh[m * CHUNK + c] = fa;
                        s_sh[m * CHUNK + cb] = fb;
                        tmax[m] = max(tmax[m], max(fa, fb));
                    }
                }
            }
        }
        for (var c = tid; c < n && !HAS_SG; c += WG_SIZE) {
            let key = key0 + c;
            let row = row_sh[c];
            var s: array<f32, M_MAX>;
            for (var m = 0u; m < MAX_M; m++) {
                s[m] = 0.0;
            }
            for (var j = 0u; j < d4 * u32((DEBUG_SKIP & 1u) == 0u); j += 8u) {
                dot8(&s, row, j);
            }
            let ks = k_row_scale(row);
            let kz = k_zero_term(row);
            for (var m = 0u; m < MAX_M; m++) {
                let x = finish_score(fma(s[m], ks, -kz * qsum_sh[m]), m, key, c < n, inf);
                s_sh[m * CHUNK + c] = x;
                tmax[m] = max(tmax[m], x);
            }
        }
        if (HAS_SG) {
            for (var m = 0u; m < MAX_M; m++) {
                let v = sg_max(tmax[m]);
                if (sg.first) {
                    red_sh[m * WG_SIZE + sg.sid] = v;
                }
            }
            workgroupBarrier();
        } else {
            for (var m = 0u; m < MAX_M; m++) {
                red_sh[m * WG_SIZE + tid] = tmax[m];
            }
            tree_max(tid);
        }
        // New maxima (every thread the same), then p = exp(s - m) for this thread's keys.
        var alpha: array<f32, M_MAX>;
        for (var m = 0u; m < MAX_M; m++) {
            var cm = red_sh[m * WG_SIZE];
            if (HAS_SG) {
                for (var i = 1u; i < sg.nsg; i++) {
                    cm = max(cm, red_sh[m * WG_SIZE + i]);
                }
            }
            alpha[m] = 1.0;
            if (cm > NEG_HALF) {
                let mn = max(m_run[m], cm);
                alpha[m] = exp_diff(m_run[m], mn);
                m_run[m] = mn;
            }
            l_part[m] *= alpha[m];
            z_part[m] *= alpha[m];
        }
        for (var c = tid; c < n; c += WG_SIZE) {
            // V's row scale folds into p here, once per key (its zero point into z_part).
            let vrow = row_sh[c];
            let vs = v_row_scale(vrow);
            var vz = 0.0;
            if (V_HAS_ZERO) {
                vz = v_row_zero(vrow);
            }
            for (var m = 0u; m < MAX_M; m++) {
                let x = s_sh[m * CHUNK + c];
                var p = 0.0;
                if (x > NEG_HALF) {
                    p = exp_diff(x, m_run[m]);
                }
                s_sh[m * CHUNK + c] = p * vs;
                l_part[m] += p;
                if (V_HAS_ZERO) {
                    z_part[m] += p * vs * vz;
                }
            }
        }
        workgroupBarrier();
        // P.V: this thread's column, keys slice, slice + nsl, ... of the chunk.
        if (pv) {
            for (var m = 0u; m < MAX_M; m++) {
                acc[m] *= alpha[m];
            }
            for (var c = slice; c < n * u32((DEBUG_SKIP & 2u) == 0u); c += 8u * nsl) {
                pv8(&acc, c, n, nsl, col);
            }
        }
    }

    // Epilogue: the V zero-point corrections and the denominators (one tree each), then the
    // key slices added in order into q_sh.
    var z_tot: array<f32, M_MAX>;
    for (var m = 0u; m < MAX_M; m++) {
        z_tot[m] = 0.0;
    }
    if (V_HAS_ZERO) {
        for (var m = 0u; m < MAX_M; m++) {
            red_sh[m * WG_SIZE + tid] = z_part[m];
        }
        tree_sum(tid);
        for (var m = 0u; m < MAX_M; m++) {
            z_tot[m] = red_sh[m * WG_SIZE];
        }
        workgroupBarrier();
    }
    for (var m = 0u; m < MAX_M; m++) {
        red_sh[m * WG_SIZE + tid] = l_part[m];
    }
    tree_sum(tid);
    for (var sl = nsl - 1u; sl > 0u; sl--) {
        if (slice == sl) {
            for (var m = 0u; m < MAX_M; m++) {
                var a = acc[m];
                if (sl + 1u < nsl) {
                    a += q_sh[m * d4 + col];
                }
                q_sh[m * d4 + col] = a;
            }
        }
        workgroupBarrier();
    }
    if (slice == 0u) {
        for (var m = 0u; m < MAX_M; m++) {
            var a = acc[m];
            if (nsl > 1u) {
                a += q_sh[m * d4 + col];
            }
            a -= vec4<f32>(z_tot[m]);
            let l = red_sh[m * WG_SIZE];
            store_row4(m, col, a, l, m_run[m], inf, wid.z);
        }
    }
    store_transformed(tid, inf);
    combine_split(tid, inf, wid, nwg);
}
