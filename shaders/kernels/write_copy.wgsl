// kernels/write_copy.wgsl — reshape_and_cache for caches that store rows as given (mode `none`):
// copies each (token, kv_head) row of the `key_in` / `value_in` views into the paged slot named
// by slot_mapping. Negative slots are padding: nothing is written.
//
// Bindings: 0 StepU, 1 LayerU, 2 meta (slot_mapping at st.off_slot), 3 key_in, 4 value_in,
//           5 k_cache (rw), 6 v_cache (rw), 7 k_scale (rw, unused), 8 v_scale (rw, unused)
// Dispatch: one thread per CH x 16 bytes (CH = 1, 2 or 4 vec4s of words: rows are a multiple
// of 16 bytes for every head size and dtype this mode takes) of the K rows; a workgroup moves
// WG_SIZE * CH consecutive vec4s, piece j of thread i being WG_SIZE * j + i (consecutive
// threads on consecutive pieces, every load coalesced); grid (x, y) with x*y*WG_SIZE*CH >=
// words/4. A thread issues its CH loads of K and of V before any store. 16-byte loads and
// stores: a thread per u32 word moved 0.27x of the copy kernel's bandwidth.
// #include "common/uniforms.wgsl"

override WG_SIZE: u32 = 64u;
override CH: u32 = 1u;

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(2) var<storage, read> step_meta: array<i32>;
@group(0) @binding(3) var<storage, read> key_in: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> value_in: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> k_scale: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_scale: array<f32>;

// Piece `idx` (a vec4 of the step's K rows): its K and V sources in the input views and its
// destination in the pools; `ok` false past the rows or for a padding slot.
struct Piece {
    ok: bool,
    ks: u32,
    vs: u32,
    dst: u32,
}

fn piece(idx: u32) -> Piece {
    var p = Piece(false, 0u, 0u, 0u);
    let per_token = ly.num_kv_heads * ly.k_row_words / 4u;
    if (idx >= st.num_write * per_token) {
        return p;
    }
    let t = idx / per_token;
    let slot = step_meta[st.off_slot + t];
    if (slot < 0) {
        return p;
    }
    let r = idx % per_token;
    let row_v4 = ly.k_row_words / 4u;
    let h = r / row_v4;
    let c = r % row_v4;
    // The input views (offsets and strides in elements, multiples of 16 bytes), in vec4 units.
    let ev4 = 16u / MODEL_WORDS4; // elements per 16 bytes (MODEL_WORDS4 = bytes per element)
    p.ok = true;
    p.ks = (ly.ki_off + t * ly.ki_tok + h * ly.ki_head) / ev4 + c;
    p.vs = (ly.vi_off + t * ly.vi_tok + h * ly.vi_head) / ev4 + c;
    p.dst = u32(slot) * per_token + r;
    return p;
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = (wid.x + wid.y * nwg.x) * WG_SIZE * CH + lid;
    let p0 = piece(base);
    var p1 = Piece(false, 0u, 0u, 0u);
    var p2 = p1;
    var p3 = p1;
    if (CH >= 2u) {
        p1 = piece(base + WG_SIZE);
    }
    if (CH >= 4u) {
        p2 = piece(base + 2u * WG_SIZE);
        p3 = piece(base + 3u * WG_SIZE);
    }
    var k0 = vec4<u32>(0u);
    var v0 = k0;
    var k1 = k0;
    var v1 = k0;
    var k2 = k0;
    var v2 = k0;
    var k3 = k0;
    var v3 = k0;
    if (p0.ok) {
        k0 = key_in[p0.ks];
        v0 = value_in[p0.vs];
    }
    if (p1.ok) {
        k1 = key_in[p1.ks];
        v1 = value_in[p1.vs];
    }
    if (p2.ok) {
        k2 = key_in[p2.ks];
        v2 = value_in[p2.vs];
    }
    if (p3.ok) {
        k3 = key_in[p3.ks];
        v3 = value_in[p3.vs];
    }
    if (p0.ok) {
        k_cache[p0.dst] = k0;
        v_cache[p0.dst] = v0;
    }
    if (p1.ok) {
        k_cache[p1.dst] = k1;
        v_cache[p1.dst] = v1;
    }
    if (p2.ok) {
        k_cache[p2.dst] = k2;
        v_cache[p2.dst] = v2;
    }
    if (p3.ok) {
        k_cache[p3.dst] = k3;
        v_cache[p3.dst] = v3;
    }
}
