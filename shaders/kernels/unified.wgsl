// kernels/unified.wgsl — paged flash attention over a quantized (or plain) KV cache: varlen
// batch, chunked causal prefill and decode in one dispatch, GQA/MQA/MHA, sliding window,
// softcap, sinks, ALiBi, qq_bias, bidirectional prefix ranges, and (IS_SPLIT) one split-K
// segment per z-workgroup. The core knows no mode: it reads the cache through the mode's read
// contract v2 (src/modes/mod.rs `Codec`) via common/kv_read.wgsl's k_value4 / v_value4
// (elements 4j..4j+3 of cached row `row` = (block*block_size + slot)*kv_heads + kv_head,
// dequantized once per element as a tile is staged, then shared by every query row of the
// workgroup), and on the model types file's model_unpack4/model_pack4/MODEL_WORDS4 for Q and
// the output.
//
// Bindings: 0 StepU, 1 LayerU, 2 meta (cu_seqlens_q, seqused_k, block_table, qq_bias, mm ranges),
//           3 laux (sinks, alibi slopes), 4 q, 5 k_cache, 6 v_cache, 7 k_scale, 8 v_scale,
//           9 out (model dtype; with IS_SPLIT: f32 partials acc [T,Hq,NS,D] then (M, L) [T,Hq,NS,2])
// Overrides: HEAD_DIM, TILE (keys per tile), WG_SIZE, MAX_M (rows per workgroup),
//            Q_SH_LEN = MAX_M*HEAD_DIM/4, KV_SH_LEN = TILE*(HEAD_DIM/4+1) (rows padded by one
//            vec4 so threads reading different keys hit different banks), S_SH_LEN = MAX_M*TILE,
//            ACC_N = ceil(MAX_M*HEAD_DIM/4 / WG_SIZE), feature flags. WG_SIZE is a multiple of
//            MAX_M: the softmax gives each row WG_SIZE/MAX_M threads.
// Dispatch: x = num_tokens_q / q_per_wg + num_seqs (q-blocks, found by binary search),
//           y = num_kv_heads * head_chunks, z = num_segments.
// A workgroup holds MAX_M rows = q_per_wg tokens x heads_per_wg q heads of ONE kv head, so each
// K/V tile is read once for all query heads that share it (GQA packing).
// Scores use the finite sentinel NEG of common/softmax.wgsl (WGSL may assume finite math);
// real scores are clamped above it, and exponentials of differences are guarded.
// #include "common/uniforms.wgsl"
// #include "common/out.wgsl"
// #include "common/kv_read.wgsl"
// #include "common/softmax.wgsl"
// #include "common/attn_common.wgsl"

override HEAD_DIM: u32 = 128u;
override TILE: u32 = 32u;
override WG_SIZE: u32 = 128u;
override MAX_M: u32 = 16u;
override Q_SH_LEN: u32 = 512u;
override KV_SH_LEN: u32 = 1024u;
override S_SH_LEN: u32 = 512u;
override ACC_N: u32 = 4u;
override HAS_SOFTCAP: bool = false;
override HAS_SINKS: bool = false;
override ALIBI_MODE: u32 = 0u; // 0 off, 1 linear, 2 sqrt
override HAS_QQ: bool = false;
override HAS_MM: bool = false;
override IS_SPLIT: bool = false;
// Diagnostics only (QUANTKV_DEBUG_SKIP): 1 skips K/V loads, 2 the q.k dots, 4 the P.V loop.
override DEBUG_SKIP: u32 = 0u;

const ACC_MAX: u32 = 16u;

// #include "common/attn_bindings.wgsl"


var<workgroup> info: WgInfo;
var<workgroup> q_sh: array<vec4<f32>, Q_SH_LEN>;
var<workgroup> kv_sh: array<vec4<f32>, KV_SH_LEN>;
var<workgroup> s_sh: array<f32, S_SH_LEN>;
var<workgroup> m_sh: array<f32, MAX_M>;
var<workgroup> l_sh: array<f32, MAX_M>;
var<workgroup> alpha_sh: array<f32, MAX_M>;
var<workgroup> seen_sh: array<u32, MAX_M>;
var<workgroup> mnew_sh: array<f32, MAX_M>;
var<workgroup> red_sh: array<f32, WG_SIZE>;
var<workgroup> row_sh: array<u32, TILE>;

// One tile element (vec4 index e of TILE x HEAD_DIM/4) from the cache: the row is clamped into
// the tile (row_sh holds row 0, always in bounds, for keys past kv_len), so the load itself
// never needs a branch; tile_put discards what lies outside the tile or past kv_len.
fn tile_fetch(e: u32, is_v: bool) -> vec4<f32> {
    let d4 = HEAD_DIM / 4u;
    let row = row_sh[min(e / d4, TILE - 1u)];
    if (is_v) {
        return v_value4(row, e % d4);
    }
    return k_value4(row, e % d4);
}

fn tile_put(e: u32, v: vec4<f32>, key0: u32, kv_len: u32, is_v: bool) {
    let d4 = HEAD_DIM / 4u;
    if (e < TILE * d4) {
        let ok = key0 + e / d4 < kv_len && (DEBUG_SKIP & 1u) == 0u;
        kv_sh[e / d4 * (d4 + 1u) + e % d4] = select(vec4<f32>(0.0), v, ok);
    }
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    if (tid == 0u) {
        info = plan_workgroup(wid, nwg.z, TILE);
    }
    let inf = workgroupUniformLoad(&info);
    if (inf.valid == 0u) {
        return;
    }
    let d4 = HEAD_DIM / 4u;
    let ks = d4 + 1u; // padded K/V row stride in workgroup memory
    let hg = ly.heads_per_wg;

    // Prologue: Q rows into workgroup memory, softmax state.
    for (var e = tid; e < MAX_M * d4; e += WG_SIZE) {
        let m = e / d4;
        let qi = m / hg;
        let hh = m % hg;
        var v = vec4<f32>(0.0);
        if (qi < inf.rows_q && hh < inf.nheads) {
            let tok = inf.q_first + qi;
            v = q_load4(q_elem(tok, inf.head0 + hh, e % d4));
        }
        q_sh[e] = v;
    }
    if (HAS_TRANSFORM) {
        // The mode's query transform (a rotation), then rounding to the model dtype (spec §5.4).
        workgroupBarrier();
        q_transform(tid, MAX_M);
        workgroupBarrier();
        for (var e = tid; e < MAX_M * d4; e += WG_SIZE) {
            q_sh[e] = model_round4(q_sh[e]);
        }
    }
    if (tid < MAX_M) {
        var m0 = NEG;
        let hh = tid % hg;
        if (HAS_SINKS && !IS_SPLIT && hh < inf.nheads) {
            m0 = real_score(laux[ly.off_sinks + inf.head0 + hh]);
        }
        m_sh[tid] = m0;
        l_sh[tid] = 1.0;
        seen_sh[tid] = 0u;
    }
    var acc: array<vec4<f32>, ACC_MAX>;
    for (var k = 0u; k < ACC_N; k++) {
        acc[k] = vec4<f32>(0.0);
    }

    for (var tile = inf.tile_lo; tile < inf.tile_hi; tile++) {
        let key0 = tile * TILE;
        workgroupBarrier();
        // Physical rows of the tile's keys: one block-table read per key, not per element.
        for (var t = tid; t < TILE; t += WG_SIZE) {
            let key = key0 + t;
            var r = 0u;
            if (key < inf.kv_len) {
                r = physical_row(inf.seq, key, inf.kv_head);
            }
            row_sh[t] = r;
        }
        workgroupBarrier();
        // K tile, dequantized by the mode's contract.
        stage_tile(tid, TILE * d4, key0, inf.kv_len, false);
        workgroupBarrier();
        // Scores: raw -> softcap -> mask -> ALiBi -> qq_bias.
        for (var k = 0u; k < (MAX_M * TILE + WG_SIZE - 1u) / WG_SIZE; k++) {
            let e = tid + k * WG_SIZE;
            if (e >= MAX_M * TILE) {
                break;
            }
            let m = e / TILE;
            let t = e % TILE;
            let qi = m / hg;
            let hh = m % hg;
            let key = key0 + t;
            var s = NEG;
            if (key_visible(inf, qi, hh, key)) {
                var dot_acc = 0.0;
                for (var j = 0u; j < d4 * u32((DEBUG_SKIP & 2u) == 0u); j++) {
                    dot_acc += dot(q_sh[m * d4 + j], kv_sh[t * ks + j]);
                }
                s = finish_score(inf, qi, hh, key, dot_acc);
            }
            s_sh[e] = s;
        }
        workgroupBarrier();
        // Online softmax, WG_SIZE/MAX_M threads per row: partial maxima, then the row leader
        // folds them; V tile loads meanwhile (the scores no longer need K).
        let rt = WG_SIZE / MAX_M;
        let rm = tid / rt;
        let rsub = tid % rt;
        var part = NEG;
        for (var t = rsub; t < TILE; t += rt) {
            part = max(part, s_sh[rm * TILE + t]);
        }
        red_sh[tid] = part;
        stage_tile(tid, TILE * d4, key0, inf.kv_len, true);
        workgroupBarrier();
        if (rsub == 0u) {
            var mx = NEG;
            for (var r = 0u; r < rt; r++) {
                mx = max(mx, red_sh[tid + r]);
            }
            if (mx > NEG_HALF) {
                let m_new = max(m_sh[rm], mx);
                alpha_sh[rm] = exp_diff(m_sh[rm], m_new);
                mnew_sh[rm] = m_new;
                seen_sh[rm] = 1u;
            } else {
                alpha_sh[rm] = 1.0;
                mnew_sh[rm] = NEG;
            }
        }
        workgroupBarrier();
        let m_new = mnew_sh[rm];
        var psum = 0.0;
        for (var t = rsub; t < TILE; t += rt) {
            let sv = s_sh[rm * TILE + t];
            var p = 0.0;
            if (m_new > NEG_HALF && sv > NEG_HALF) {
                p = exp_diff(sv, m_new);
            }
            s_sh[rm * TILE + t] = p;
            psum += p;
        }
        red_sh[tid] = psum;
        if (rsub == 0u && m_new > NEG_HALF) {
            m_sh[rm] = m_new;
        }
        workgroupBarrier();
        if (rsub == 0u) {
            var sum = 0.0;
            for (var r = 0u; r < rt; r++) {
                sum += red_sh[tid + r];
            }
            l_sh[rm] = l_sh[rm] * alpha_sh[rm] + sum;
        }
        // P·V into the thread's accumulators.
        for (var k = 0u; k < ACC_N; k++) {
            let e = tid + k * WG_SIZE;
            if (e < MAX_M * d4) {
                let m = e / d4;
                let j = e % d4;
                var a = acc[k] * alpha_sh[m];
                for (var t = 0u; t < TILE * u32((DEBUG_SKIP & 4u) == 0u); t++) {
                    // A masked key (p = 0) adds exactly 0, even where its V is not finite.
                    let pt = s_sh[m * TILE + t];
                    a += select(vec4<f32>(0.0), pt * kv_sh[t * ks + j], pt != 0.0);
                }
                acc[k] = a;
            }
        }
    }
    workgroupBarrier();

    // Epilogue. With a transform (and no split: then the reduce pass applies it), rows are
    // staged in q_sh, rounded to the model dtype, transformed back, then stored.
    if (HAS_TRANSFORM && !IS_SPLIT) {
        for (var k = 0u; k < ACC_N; k++) {
            let e = tid + k * WG_SIZE;
            if (e < MAX_M * d4) {
                let m = e / d4;
                var v = vec4<f32>(0.0);
                if (seen_sh[m] != 0u) {
                    v = acc[k] / l_sh[m];
                }
                q_sh[e] = model_round4(v);
            }
        }
        workgroupBarrier();
        out_transform(tid, MAX_M);
        workgroupBarrier();
        for (var k = 0u; k < ACC_N; k++) {
            let e = tid + k * WG_SIZE;
            if (e < MAX_M * d4) {
                let m = e / d4;
                let qi = m / hg;
                let hh = m % hg;
                if (qi < inf.rows_q && hh < inf.nheads) {
                    let tok = inf.q_first + qi;
                    out_store4(out_elem(tok, inf.head0 + hh, e % d4), q_sh[e]);
                }
            }
        }
        return;
    }
    for (var k = 0u; k < ACC_N; k++) {
        let e = tid + k * WG_SIZE;
        if (e < MAX_M * d4) {
            let m = e / d4;
            let j = e % d4;
            let qi = m / hg;
            let hh = m % hg;
            if (qi < inf.rows_q && hh < inf.nheads) {
                let tok = inf.q_first + qi;
                let head = inf.head0 + hh;
                let seen = seen_sh[m] != 0u;
                if (IS_SPLIT) {
                    let ns = ly.num_segments;
                    let slot = (tok * ly.num_q_heads + head) * ns + wid.z;
                    var a = acc[k];
                    if (!seen) {
                        a = vec4<f32>(0.0);
                    }
                    let b = slot * HEAD_DIM + 4u * j;
                    partial_store4(b, a);
                    if (j == 0u) {
                        let sb = ly.seg_rows * ly.num_q_heads * ns * HEAD_DIM + slot * 2u;
                        let ms = select(NEG, m_sh[m], seen);
                        partial_store_ml(sb, ms, select(0.0, l_sh[m], seen));
                    }
                } else {
                    var v = vec4<f32>(0.0);
                    if (seen) {
                        v = acc[k] / l_sh[m];
                    }
                    out_store4(out_elem(tok, head, j), v);
                }
            }
        }
    }
}
