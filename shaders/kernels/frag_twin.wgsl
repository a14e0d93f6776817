// kernels/frag_twin.wgsl — the prefill kernel's fragment interface in plain arithmetic, the
// scalar twin of kernels/frag_coop.wgsl: a 16x16 f32 accumulator is spread over 16 lanes,
// each holding a 4x4 register block (rows 4*(lane/4).., columns 4*(lane%4)..), and a
// multiply-add reads its 16x16 operands straight from the workgroup tiles, so each lane does
// 64 fused multiply-adds per 8 vec4 loads. Same semantics as the cooperative version (operands
// rounded to ET, P exact, f32 accumulation); works on every adapter (ET = f16 needs
// SHADER_F16). P is held as f32 (the cooperative version's hi + lo pair, exactly), over the
// scores in s_sh. Tiles are stored as vec4<ET>; the row strides (in ET elements) are
// multiples of 4. An owner is 16 lanes; the wide tilings (WG_SIZE > MAX_M, subgroups) give
// each row block several owners (column groups of O, parts of the score blocks' head
// dimension; prefill.wgsl), and O's rescale and epilogue work on the registers directly.
// (64 rows x 32 keys on 256 threads ran an 8k prompt 2.6x faster on an H200 than on 64
// threads, one per row: eight warps per multiprocessor instead of two; BENCHMARKS.md.)
// #include "kernels/prefill.wgsl"

alias FragC = mat4x4<f32>; // column i = row 4*(lane/4)+i of the block, 4 columns
alias FragQ = u32;         // the twin reads Q from qh_sh in every multiply-add

var<private> lane: u32;

var<workgroup> qh_sh: array<vec4<ET>, QH_LEN>;
// One tile for K, then V (V_APART false: the kernel stages V once Q K^T is done), so the
// twin's larger tilings fit where cooperative matrices' separate tiles would not.
var<workgroup> kv_sh: array<vec4<ET>, KV_LEN>;
const V_APART: bool = false;
// The per-block steps run as loops: written out (as on cooperative matrices) they made the
// twin 6x slower to compile on lavapipe (22 s at head size 128 with every parameter on), and
// on an H200 the looped twin was 1.18x faster (82 against 97 ms at 8k; BENCHMARKS.md).
const WRITTEN_OUT: bool = false;

fn to_et4(v: vec4<f32>) -> vec4<ET> {
    return vec4<ET>(clamp(v, vec4<f32>(-ET_MAX), vec4<f32>(ET_MAX)));
}

fn put_q4(row: u32, j: u32, v: vec4<f32>) {
    qh_sh[row * (QS / 4u) + j] = to_et4(v);
}

fn q_stage_rows() -> u32 {
    return MAX_M;
}

fn load_q(lr: u32, k0: u32) -> FragQ {
    return 0u;
}

fn get_q4(row: u32, j: u32) -> vec4<f32> {
    return vec4<f32>(qh_sh[row * (QS / 4u) + j]);
}

fn put_kv4(t: u32, j: u32, v: vec4<f32>) {
    kv_sh[t * (KS / 4u) + j] = to_et4(v);
}

fn get_kv4(t: u32, j: u32) -> vec4<f32> {
    return vec4<f32>(kv_sh[t * (KS / 4u) + j]);
}

fn put_v4(t: u32, j: u32, v: vec4<f32>) {
    put_kv4(t, j, v);
}

fn get_v4(t: u32, j: u32) -> vec4<f32> {
    return get_kv4(t, j);
}

// row_max / row_sum come with the prelude: kernels/rows_one.wgsl where a softmax row has one
// thread (WG_SIZE == MAX_M), else kernels/rows_shuffle.wgsl (subgroups).

const P_SCALE: f32 = 1.0;

// P (f32) goes over the raw scores in s_sh: the thread that writes a P value has read that
// key's scores already (its own keys of its row), and the score blocks of the next tile are
// stored only after the tile's barriers (1) and (2).
fn put_p(row: u32, t: u32, p: f32) {
    s_sh[row * SS + t] = p;
}

fn get_p(row: u32, t: u32) -> f32 {
    return s_sh[row * SS + t];
}

fn p4_at(b: u32) -> vec4<f32> {
    return vec4<f32>(s_sh[b], s_sh[b + 1u], s_sh[b + 2u], s_sh[b + 3u]);
}

fn frag_qk(c: FragC, q: FragQ, r0: u32, t0: u32, k0: u32) -> FragC {
    let qb = (r0 + 4u * (lane / 4u)) * (QS / 4u) + k0 / 4u;
    let kb = (t0 + 4u * (lane % 4u)) * (KS / 4u) + k0 / 4u;
    let q4 = QS / 4u;
    let k4 = KS / 4u;
    var r = c;
    for (var k = 0u; k < 4u; k++) {
        let a0 = vec4<f32>(qh_sh[qb + k]);
        let a1 = vec4<f32>(qh_sh[qb + q4 + k]);
        let a2 = vec4<f32>(qh_sh[qb + 2u * q4 + k]);
        let a3 = vec4<f32>(qh_sh[qb + 3u * q4 + k]);
        let b0 = vec4<f32>(kv_sh[kb + k]);
        let b1 = vec4<f32>(kv_sh[kb + k4 + k]);
        let b2 = vec4<f32>(kv_sh[kb + 2u * k4 + k]);
        let b3 = vec4<f32>(kv_sh[kb + 3u * k4 + k]);
        r[0] += vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
        r[1] += vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
        r[2] += vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
        r[3] += vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
    }
    return r;
}

fn frag_pv(c: FragC, r0: u32, t0: u32, d0: u32) -> FragC {
    let pb = (r0 + 4u * (lane / 4u)) * SS + t0;
    let vb = t0 * (KS / 4u) + (d0 + 4u * (lane % 4u)) / 4u;
    let k4 = KS / 4u;
    var r = c;
    for (var k = 0u; k < 4u; k++) {
        let p0 = p4_at(pb + 4u * k);
        let p1 = p4_at(pb + SS + 4u * k);
        let p2 = p4_at(pb + 2u * SS + 4u * k);
        let p3 = p4_at(pb + 3u * SS + 4u * k);
        let v = vb + 4u * k * k4;
        let v0 = vec4<f32>(kv_sh[v]);
        let v1 = vec4<f32>(kv_sh[v + k4]);
        let v2 = vec4<f32>(kv_sh[v + 2u * k4]);
        let v3 = vec4<f32>(kv_sh[v + 3u * k4]);
        r[0] += p0.x * v0 + p0.y * v1 + p0.z * v2 + p0.w * v3;
        r[1] += p1.x * v0 + p1.y * v1 + p1.z * v2 + p1.w * v3;
        r[2] += p2.x * v0 + p2.y * v1 + p2.z * v2 + p2.w * v3;
        r[3] += p3.x * v0 + p3.y * v1 + p3.z * v2 + p3.w * v3;
    }
    return r;
}

fn frag_store(c: FragC, off: u32, stride: u32) {
    let b = off + 4u * (lane / 4u) * stride + 4u * (lane % 4u);
    for (var i = 0u; i < 4u; i++) {
        let v = c[i];
        let o = b + i * stride;
        s_sh[o] = v.x;
        s_sh[o + 1u] = v.y;
        s_sh[o + 2u] = v.z;
        s_sh[o + 3u] = v.w;
    }
}

fn frag_load(off: u32, stride: u32) -> FragC {
    let b = off + 4u * (lane / 4u) * stride + 4u * (lane % 4u);
    var c: FragC;
    for (var i = 0u; i < 4u; i++) {
        let o = b + i * stride;
        c[i] = vec4<f32>(s_sh[o], s_sh[o + 1u], s_sh[o + 2u], s_sh[o + 3u]);
    }
    return c;
}

// O block `f` of owner sg with each row scaled by its alpha_sh (and by gfac), in registers.
fn rescale_block(f: FragC, sg: u32, tid: u32, gfac: f32) -> FragC {
    let m = (sg % ROW_BLOCKS) * 16u + 4u * (lane / 4u);
    var r = f;
    r[0] *= alpha_sh[m] * gfac;
    r[1] *= alpha_sh[m + 1u] * gfac;
    r[2] *= alpha_sh[m + 2u] * gfac;
    r[3] *= alpha_sh[m + 3u] * gfac;
    return r;
}

// Epilogue: O block `f` (columns 16 db..) of owner sg, from registers: each lane its four
// rows' four columns.
fn store_block(f: FragC, db: u32, sg: u32, tid: u32, inf: WgInfo, o_unit: f32, seg: u32) {
    let m = (sg % ROW_BLOCKS) * 16u + 4u * (lane / 4u);
    let j = db * 4u + lane % 4u;
    store_row4(inf, m, j, f[0], o_unit, seg);
    store_row4(inf, m + 1u, j, f[1], o_unit, seg);
    store_row4(inf, m + 2u, j, f[2], o_unit, seg);
    store_row4(inf, m + 3u, j, f[3], o_unit, seg);
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    lane = tid % 16u;
    prefill_main(wid, nwg.x, tid, tid / 16u); // OWNERS = WG_SIZE / 16
}
