// benches/probe_mma_decode.wgsl — the gpu bench's `--mma-decode` probe: the skeleton of a
// tensor-core decode rung (issue 11's item 3), timed before such a rung is built. Not a kernel
// of the library: no softmax state, no masking, no output worth reading.
//
// Each subgroup streams its own STEPS 16-key tiles of one K head and one V head (head size
// 128; f16 rows, or int8 codes where CODES, dequantized to f16 while staged), the next step's
// words loaded into registers before the current step is worked on. Per step, four workgroup
// barriers, as a rung with one tile region per subgroup would need them:
//   (A) the previous step's P V is done with the region; the K tile goes in, the next step's
//       loads are issued;
//   (B) S = Q K^T by 8 multiply-adds (the query held in 8 fragments), S to workgroup memory;
//   (C) P = exp(S - 8) to workgroup memory as f16, the V tile over K;
//   (D) O += P V by 8 multiply-adds (O held in 8 fragments).
// SKIP (diagnostics): bit 1 leaves the multiply-adds out (loads, staging and barriers only),
// bit 2 the staging (the multiply-adds read whatever the region holds).
//
// The host sets the overrides below and runs the probe only on adapters whose subgroups are
// exactly 32 lanes with 16x16x16 f16 cooperative matrices.
enable f16;
enable wgpu_cooperative_matrix;

override NSG: u32 = 4u;        // subgroups per workgroup
override STEPS: u32 = 64u;     // tiles each subgroup streams
override NT: u32 = 32768u;     // tiles in each of the K and V buffers (a power of two, at least
                               // all subgroups' STEPS: the host checks, so no tile is read twice
                               // and none comes from the L2 a second time)
override CODES: bool = false;  // int8 codes instead of f16 rows
override SKIP: u32 = 0u;

const KS: u32 = 136u;                        // tile row stride in f16 (16-byte aligned rows)
const TILE: u32 = 16u * KS;                  // one subgroup's region
override WPR: u32 = select(16u, 8u, CODES);  // 16-byte words per row: 256 B of f16, 128 B of codes
override TILE_WORDS: u32 = 16u * WPR;

@group(0) @binding(0) var<storage, read> k_in: array<vec4<u32>>; // NT K tiles
@group(0) @binding(1) var<storage, read> v_in: array<vec4<u32>>; // NT V tiles
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

var<workgroup> tile: array<f16, NSG * TILE>;
var<workgroup> s_sh: array<f32, NSG * 256u>;
var<workgroup> p_sh: array<f16, NSG * 256u>;

// A lane's words of one tile (w4..w7 unused with CODES).
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

fn word(v: bool, i: u32) -> vec4<u32> {
    if (v) {
        return v_in[i];
    }
    return k_in[i];
}

fn load_words(v: bool, t: u32, lane: u32) -> Words {
    let b = t * TILE_WORDS + lane;
    var w: Words;
    w.w0 = word(v, b);
    w.w1 = word(v, b + 32u);
    w.w2 = word(v, b + 64u);
    w.w3 = word(v, b + 96u);
    if (!CODES) {
        w.w4 = word(v, b + 128u);
        w.w5 = word(v, b + 160u);
        w.w6 = word(v, b + 192u);
        w.w7 = word(v, b + 224u);
    }
    return w;
}

// Word i of the lane (lane + 32 i of the tile) into the region at `base`, as f16 elements.
fn put_word(base: u32, i: u32, lane: u32, w: vec4<u32>) {
    let k = lane + 32u * i;
    let row = k / WPR;
    let col = k % WPR;
    if (CODES) {
        let e = base + row * KS + col * 16u;
        for (var j = 0u; j < 4u; j++) {
            let h = vec4<f16>(unpack4xI8(w[j]));
            tile[e + 4u * j] = h.x;
            tile[e + 4u * j + 1u] = h.y;
            tile[e + 4u * j + 2u] = h.z;
            tile[e + 4u * j + 3u] = h.w;
        }
    } else {
        let e = base + row * KS + col * 8u;
        for (var j = 0u; j < 4u; j++) {
            let h = vec2<f16>(unpack2x16float(w[j]));
            tile[e + 2u * j] = h.x;
            tile[e + 2u * j + 1u] = h.y;
        }
    }
}

fn put_tile(base: u32, lane: u32, w: Words) {
    if ((SKIP & 2u) != 0u) {
        return;
    }
    put_word(base, 0u, lane, w.w0);
    put_word(base, 1u, lane, w.w1);
    put_word(base, 2u, lane, w.w2);
    put_word(base, 3u, lane, w.w3);
    if (!CODES) {
        put_word(base, 4u, lane, w.w4);
        put_word(base, 5u, lane, w.w5);
        put_word(base, 6u, lane, w.w6);
        put_word(base, 7u, lane, w.w7);
    }
}

alias FA = coop_mat16x16<f16, A>;
alias FB = coop_mat16x16<f16, B>;
alias FC = coop_mat16x16<f32, C>;

fn k_block(base: u32, d0: u32) -> FB {
    return coopLoad<FB>(&tile[base + d0], KS);
}

fn v_block(base: u32, d0: u32) -> FB {
    return coopLoadT<FB>(&tile[base + d0], KS);
}

@compute @workgroup_size(NSG * 32u)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let sid = tid / 32u;
    let lane = tid % 32u;
    let base = sid * TILE;
    let sb = sid * 256u;
    let w = wid.x + wid.y * nwg.x;
    let first = (w * NSG + sid) * STEPS;
    var cur_k = load_words(false, first % NT, lane);
    var cur_v = load_words(true, first % NT, lane);
    // The query fragments, from whatever the first K tile holds.
    put_tile(base, lane, cur_k);
    workgroupBarrier();
    let q0 = coopLoadT<FA>(&tile[base], KS);
    let q1 = coopLoadT<FA>(&tile[base + 16u], KS);
    let q2 = coopLoadT<FA>(&tile[base + 32u], KS);
    let q3 = coopLoadT<FA>(&tile[base + 48u], KS);
    let q4 = coopLoadT<FA>(&tile[base + 64u], KS);
    let q5 = coopLoadT<FA>(&tile[base + 80u], KS);
    let q6 = coopLoadT<FA>(&tile[base + 96u], KS);
    let q7 = coopLoadT<FA>(&tile[base + 112u], KS);
    let zero = coopLoadT<FC>(&s_sh[sb], 16u);
    var o0 = zero;
    var o1 = zero;
    var o2 = zero;
    var o3 = zero;
    var o4 = zero;
    var o5 = zero;
    var o6 = zero;
    var o7 = zero;
    let mma = (SKIP & 1u) == 0u;
    for (var j = 0u; j < STEPS; j++) {
        workgroupBarrier(); // (A)
        put_tile(base, lane, cur_k);
        let t = (first + min(j + 1u, STEPS - 1u)) % NT;
        let nk = load_words(false, t, lane);
        let nv = load_words(true, t, lane);
        workgroupBarrier(); // (B)
        var c = zero;
        if (mma) {
            c = coopMultiplyAdd(q0, k_block(base, 0u), c);
            c = coopMultiplyAdd(q1, k_block(base, 16u), c);
            c = coopMultiplyAdd(q2, k_block(base, 32u), c);
            c = coopMultiplyAdd(q3, k_block(base, 48u), c);
            c = coopMultiplyAdd(q4, k_block(base, 64u), c);
            c = coopMultiplyAdd(q5, k_block(base, 80u), c);
            c = coopMultiplyAdd(q6, k_block(base, 96u), c);
            c = coopMultiplyAdd(q7, k_block(base, 112u), c);
        }
        coopStoreT(c, &s_sh[sb], 16u);
        workgroupBarrier(); // (C)
        for (var i = 0u; i < 8u; i++) {
            let e = sb + lane * 8u + i;
            p_sh[e] = f16(exp(min(s_sh[e] - 8.0, 0.0)));
        }
        put_tile(base, lane, cur_v);
        workgroupBarrier(); // (D)
        if (mma) {
            let p = coopLoadT<FA>(&p_sh[sb], 16u);
            o0 = coopMultiplyAdd(p, v_block(base, 0u), o0);
            o1 = coopMultiplyAdd(p, v_block(base, 16u), o1);
            o2 = coopMultiplyAdd(p, v_block(base, 32u), o2);
            o3 = coopMultiplyAdd(p, v_block(base, 48u), o3);
            o4 = coopMultiplyAdd(p, v_block(base, 64u), o4);
            o5 = coopMultiplyAdd(p, v_block(base, 80u), o5);
            o6 = coopMultiplyAdd(p, v_block(base, 96u), o6);
            o7 = coopMultiplyAdd(p, v_block(base, 112u), o7);
        }
        cur_k = nk;
        cur_v = nv;
    }
    workgroupBarrier();
    coopStoreT(((o0 + o1) + (o2 + o3)) + ((o4 + o5) + (o6 + o7)), &s_sh[sb], 16u);
    workgroupBarrier();
    if (lane == 0u && s_sh[sb] == 12345.0) {
        dst[w % 256u] = s_sh[sb + 1u];
    }
}
