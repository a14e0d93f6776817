// kernels/frag_coop.wgsl — the prefill kernel's fragment interface on cooperative matrices
// (wgpu's EXPERIMENTAL_COOPERATIVE_MATRIX: 16x16x16, f16 A/B, f32 accumulator), a subgroup
// per fragment owner: a 16-row block, or (column groups, OWNERS = ROW_BLOCKS x ncg) half or a
// quarter of one: the O blocks cg, cg + ncg, ... and the Q K^T sum over the head-dimension
// part cg (KSPLIT = ncg, one key block per tile), so each subgroup holds fewer fragments and
// more subgroups share a multiprocessor. The host takes this file only where the adapter
// reports that configuration, SHADER_F16 and SUBGROUP, and subgroups of one fixed size (the
// workgroup is OWNERS subgroups). Tiles live in workgroup memory as f16 scalars (row strides QS, KS, PS
// keep every 16x16 load 16-byte aligned and its rows on distinct banks).
enable f16;
enable wgpu_cooperative_matrix;
// #include "kernels/prefill.wgsl"

alias FragC = coop_mat16x16<f32, C>;
alias FragQ = coop_mat16x16<f16, A>;

// Q_HELD (the prelude's, head sizes up to 128): each subgroup holds its 16 query rows as A
// fragments for the whole key loop, staged once through kv_sh (TK rows at a time), so no Q
// tile stays in workgroup memory (qh_sh is a 16-byte stub then). Workgroup memory is what
// limits residency on an H200 through Vulkan (a 47 KiB workgroup runs alone on its
// multiprocessor; BENCHMARKS.md). Larger heads keep the Q tile in qh_sh (the fragments would
// not fit in registers next to O's).
var<workgroup> qh_sh: array<f16, QH_LEN>;
var<workgroup> kv_sh: array<f16, KV_LEN>; // K tile (and the query staging rounds)
// V tile (V_APART, the prelude's: staged with K, their loads overlap), else a 16-byte stub
// and V goes over K once Q K^T is done (the wider tilings: one tile keeps two workgroups
// per multiprocessor).
var<workgroup> v_sh: array<f16, V_LEN>;
// Every per-block step of the kernel written out with constant fragment indices: indexed by
// a loop counter, the H200's driver kept the query and O fragments in local memory.
const WRITTEN_OUT: bool = true;
// RAW_SPLIT (the prelude's: a mode whose raw values f16 does not hold exactly, INT2's
// codebook centroids): K is held as hi + lo f16 pairs, hi in kv_sh and the remainder in
// kl_sh, and every Q K^T multiply-add takes both halves, so the scores see the raw values to
// f32 precision (a score's error would pass through the softmax's exponential). V is rounded
// to f16 (an output moves by at most 2^-11 of the |V| it averages, linearly: inside spec §7
// level 2 for f16, bf16 and f32 outputs) unless V_SPLIT (the prelude's: with P_LO, for FP8
// outputs, whose e4m3 steps near zero need f32 precision), which holds V as a pair too
// (vl_sh; P's lo times V's lo, below 2^-22 of the product, is left out). Stubs of 8
// elements otherwise.
var<workgroup> kl_sh: array<f16, KL_LEN>;
var<workgroup> vl_sh: array<f16, VL_LEN>;
// P as hi + lo f16 pairs (P_LO, the prelude's), or as one f16 value and a stub for the lo.
var<workgroup> p_sh: array<f16, P_LEN>;
var<workgroup> pl_sh: array<f16, PL_LEN>;

const F16_MAX: f32 = ET_MAX;

fn to_h4(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(clamp(v, vec4<f32>(-F16_MAX), vec4<f32>(F16_MAX)));
}

// RAW_SPLIT: v as hi + lo f16 halves. hi is v truncated to f16's 11 significant bits by
// masking the f32 (exact in f16 for raw values of order one, and no compiler can fold the split
// away, as it may fold f32(f16(v)) back to v); lo is the exact remainder rounded to f16.
struct Halves {
    hi: vec4<f16>,
    lo: vec4<f16>,
}

fn split_h4(v: vec4<f32>) -> Halves {
    let hi = bitcast<vec4<f32>>(bitcast<vec4<u32>>(v) & vec4<u32>(0xFFFFE000u));
    return Halves(to_h4(hi), vec4<f16>(v - hi));
}

// Query rows staged per round (rows of the staging tile).
fn q_stage_rows() -> u32 {
    return select(MAX_M, TK, Q_HELD);
}

// Query row `row` of the current staging round (elements 4j..4j+3).
fn put_q4(row: u32, j: u32, v: vec4<f32>) {
    let h = to_h4(v);
    if (Q_HELD) {
        let b = row * KS + 4u * j;
        kv_sh[b] = h.x;
        kv_sh[b + 1u] = h.y;
        kv_sh[b + 2u] = h.z;
        kv_sh[b + 3u] = h.w;
    } else {
        let b = row * QS + 4u * j;
        qh_sh[b] = h.x;
        qh_sh[b + 1u] = h.y;
        qh_sh[b + 2u] = h.z;
        qh_sh[b + 3u] = h.w;
    }
}

// The Q fragment of staged rows lr.. (16), columns k0.. (16).
fn load_q(lr: u32, k0: u32) -> FragQ {
    if (Q_HELD) {
        return coopLoadT<FragQ>(&kv_sh[lr * KS + k0], KS);
    }
    return coopLoadT<FragQ>(&qh_sh[lr * QS + k0], QS);
}

// Diagnostics (debug_dump): the staged Q tile; zeros where Q is held in fragments.
fn get_q4(row: u32, j: u32) -> vec4<f32> {
    if (Q_HELD) {
        return vec4<f32>(0.0);
    }
    let b = row * QS + 4u * j;
    return vec4<f32>(f32(qh_sh[b]), f32(qh_sh[b + 1u]), f32(qh_sh[b + 2u]), f32(qh_sh[b + 3u]));
}

fn put_kv4(t: u32, j: u32, v: vec4<f32>) {
    let b = t * KS + 4u * j;
    var h = to_h4(v);
    if (RAW_SPLIT) {
        let p = split_h4(v);
        h = p.hi;
        kl_sh[b] = p.lo.x;
        kl_sh[b + 1u] = p.lo.y;
        kl_sh[b + 2u] = p.lo.z;
        kl_sh[b + 3u] = p.lo.w;
    }
    kv_sh[b] = h.x;
    kv_sh[b + 1u] = h.y;
    kv_sh[b + 2u] = h.z;
    kv_sh[b + 3u] = h.w;
}

fn get_kv4(t: u32, j: u32) -> vec4<f32> {
    let b = t * KS + 4u * j;
    return vec4<f32>(f32(kv_sh[b]), f32(kv_sh[b + 1u]), f32(kv_sh[b + 2u]), f32(kv_sh[b + 3u]));
}

fn put_v4(t: u32, j: u32, v: vec4<f32>) {
    let b = t * KS + 4u * j;
    var h = to_h4(v);
    if (V_SPLIT) {
        let p = split_h4(v);
        h = p.hi;
        vl_sh[b] = p.lo.x;
        vl_sh[b + 1u] = p.lo.y;
        vl_sh[b + 2u] = p.lo.z;
        vl_sh[b + 3u] = p.lo.w;
    }
    if (V_APART) {
        v_sh[b] = h.x;
        v_sh[b + 1u] = h.y;
        v_sh[b + 2u] = h.z;
        v_sh[b + 3u] = h.w;
    } else {
        kv_sh[b] = h.x;
        kv_sh[b + 1u] = h.y;
        kv_sh[b + 2u] = h.z;
        kv_sh[b + 3u] = h.w;
    }
}

fn get_v4(t: u32, j: u32) -> vec4<f32> {
    if (!V_APART) {
        return get_kv4(t, j);
    }
    let b = t * KS + 4u * j;
    return vec4<f32>(f32(v_sh[b]), f32(v_sh[b + 1u]), f32(v_sh[b + 2u]), f32(v_sh[b + 3u]));
}

// The V fragment of tile keys t0.., columns d0.. (from K's tile where V goes over it).
fn v_frag(t0: u32, d0: u32) -> coop_mat16x16<f16, B> {
    if (V_APART) {
        return coopLoadT<coop_mat16x16<f16, B>>(&v_sh[t0 * KS + d0], KS);
    }
    return coopLoadT<coop_mat16x16<f16, B>>(&kv_sh[t0 * KS + d0], KS);
}

// row_max / row_sum: kernels/rows_shuffle.wgsl (the prelude's).

// P arrives scaled by 16 (p <= 16 e^TAU < 65504), so the lo half of any p that matters is
// an f16 normal number (tensor cores may flush subnormal inputs).
const P_SCALE: f32 = 16.0;

// hi = p truncated to f16's 11 significant bits (by masking the f32, so no compiler can fold
// the split away), lo = the exact remainder rounded to f16.
// Without P_LO (every output but FP8), p rounded to f16 (relative error <= 2^-11, inside spec
// §7 level 2; 2-4 % faster on an H200 than the pair, BENCHMARKS.md).
fn put_p(row: u32, t: u32, p: f32) {
    if (!P_LO) {
        p_sh[row * PS + t] = f16(min(p, F16_MAX));
        return;
    }
    let hi = bitcast<f32>(bitcast<u32>(p) & 0xFFFFE000u);
    p_sh[row * PS + t] = f16(min(hi, F16_MAX));
    pl_sh[row * PS + t] = f16(select(p - hi, 0.0, (DEBUG_SKIP & 64u) != 0u));
}

fn get_p(row: u32, t: u32) -> f32 {
    if (!P_LO) {
        return f32(p_sh[row * PS + t]);
    }
    return f32(p_sh[row * PS + t]) + f32(pl_sh[row * PS + t]);
}

// c + Q[r0.., k0..] K[t0.., k0..]^T (16x16x16); q is the held fragment of those rows and
// columns (Q_HELD), else the Q tile is read again.
fn frag_qk(c: FragC, q: FragQ, r0: u32, t0: u32, k0: u32) -> FragC {
    if (Q_HELD) {
        return qk_mma(c, q, t0, k0);
    }
    return qk_mma(c, coopLoadT<FragQ>(&qh_sh[r0 * QS + k0], QS), t0, k0);
}

// c + a K[t0.., k0..]^T (with K's lo half where RAW_SPLIT).
fn qk_mma(c: FragC, a: FragQ, t0: u32, k0: u32) -> FragC {
    let b = coopLoad<coop_mat16x16<f16, B>>(&kv_sh[t0 * KS + k0], KS);
    let r = coopMultiplyAdd(a, b, c);
    if (RAW_SPLIT) {
        let bl = coopLoad<coop_mat16x16<f16, B>>(&kl_sh[t0 * KS + k0], KS);
        return coopMultiplyAdd(a, bl, r);
    }
    return r;
}

// c + P[r0.., t0..] V[t0.., d0..] (16x16x16, P as hi + lo; V too where V_SPLIT).
fn frag_pv(c: FragC, r0: u32, t0: u32, d0: u32) -> FragC {
    let hi = coopLoadT<coop_mat16x16<f16, A>>(&p_sh[r0 * PS + t0], PS);
    let b = v_frag(t0, d0);
    // (`|`, not `||`: naga takes a short-circuit, or a local variable, for non-uniform.)
    if (!P_LO | ((DEBUG_SKIP & 2097152u) != 0u)) {
        if (V_SPLIT) {
            let bl = coopLoadT<coop_mat16x16<f16, B>>(&vl_sh[t0 * KS + d0], KS);
            return coopMultiplyAdd(hi, bl, coopMultiplyAdd(hi, b, c));
        }
        return coopMultiplyAdd(hi, b, c);
    }
    let lo = coopLoadT<coop_mat16x16<f16, A>>(&pl_sh[r0 * PS + t0], PS);
    let r = coopMultiplyAdd(lo, b, coopMultiplyAdd(hi, b, c));
    if (V_SPLIT) {
        let bl = coopLoadT<coop_mat16x16<f16, B>>(&vl_sh[t0 * KS + d0], KS);
        return coopMultiplyAdd(hi, bl, r);
    }
    return r;
}

fn frag_store(c: FragC, off: u32, stride: u32) {
    coopStoreT(c, &s_sh[off], stride);
}

fn frag_load(off: u32, stride: u32) -> FragC {
    return coopLoadT<FragC>(&s_sh[off], stride);
}

// O block `f` with each row scaled by its alpha_sh (and by gfac), through s_sh (fragments
// cannot be indexed per element): owner sg's block in region sg, every owner's at once.
fn rescale_block(f: FragC, sg: u32, tid: u32, gfac: f32) -> FragC {
    frag_store(f, sg * 256u, 16u);
    workgroupBarrier();
    for (var e = tid; e < OWNERS * 256u; e += WG_SIZE) {
        s_sh[e] *= alpha_sh[((e / 256u) % ROW_BLOCKS) * 16u + (e % 256u) / 16u] * gfac;
    }
    workgroupBarrier();
    let r = frag_load(sg * 256u, 16u);
    workgroupBarrier();
    return r;
}

// Epilogue: O block `f` (columns 16 db..) through s_sh (each owner its block in its region),
// then store_row4 by every thread. Owner o holds the blocks o / ROW_BLOCKS + ncg k of its
// rows (the column groups, ncg = OWNERS / ROW_BLOCKS; 1 where a subgroup holds a row block's
// whole O), k the same for every owner at each call.
fn store_block(f: FragC, db: u32, sg: u32, tid: u32, inf: WgInfo, o_unit: f32, seg: u32) {
    let ncg = OWNERS / ROW_BLOCKS;
    let k = (db - sg / ROW_BLOCKS) / ncg;
    frag_store(f, sg * 256u, 16u);
    workgroupBarrier();
    for (var e = tid; e < OWNERS * 64u; e += WG_SIZE) {
        let o = e / 64u;
        let r = (e % 64u) / 4u;
        let m = (o % ROW_BLOCKS) * 16u + r;
        let b = o * 256u + r * 16u + (e % 4u) * 4u;
        let dbo = o / ROW_BLOCKS + ncg * k;
        store_row4(inf, m, dbo * 4u + e % 4u,
                   vec4<f32>(s_sh[b], s_sh[b + 1u], s_sh[b + 2u], s_sh[b + 3u]), o_unit, seg);
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32,
        @builtin(subgroup_id) sid: u32) {
    prefill_main(wid, nwg.x, tid, sid);
}
