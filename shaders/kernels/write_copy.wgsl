// kernels/write_copy.wgsl — reshape_and_cache for caches that store rows as given (mode `none`):
// copies each (token, kv_head) row of the `key_in` / `value_in` views into the paged slot named
// by slot_mapping. Negative slots are padding: nothing is written.
//
// Bindings: 0 StepU, 1 LayerU, 2 meta (slot_mapping at st.off_slot), 3 key_in, 4 value_in,
//           5 k_cache (rw), 6 v_cache (rw), 7 k_scale (rw, unused), 8 v_scale (rw, unused)
// Dispatch: one thread per 16 bytes (a vec4 of words: rows are a multiple of 16 bytes for every
// head size and dtype this mode takes) of the K rows; grid (x, y) with x*y*WG_SIZE >= words/4.
// 16-byte loads and stores: a thread per u32 word moved 0.27x of the copy kernel's bandwidth.
// #include "common/uniforms.wgsl"

override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(2) var<storage, read> step_meta: array<i32>;
@group(0) @binding(3) var<storage, read> key_in: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> value_in: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> k_scale: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_scale: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG_SIZE;
    let per_token = ly.num_kv_heads * ly.k_row_words / 4u;
    if (idx >= st.num_write * per_token) {
        return;
    }
    let t = idx / per_token;
    let slot = step_meta[st.off_slot + t];
    if (slot < 0) {
        return;
    }
    let r = idx % per_token;
    let row_v4 = ly.k_row_words / 4u;
    let h = r / row_v4;
    let c = r % row_v4;
    // The input views (offsets and strides in elements, multiples of 16 bytes), in vec4 units.
    let ev4 = 16u / MODEL_WORDS4; // elements per 16 bytes (MODEL_WORDS4 = bytes per element)
    let ks = (ly.ki_off + t * ly.ki_tok + h * ly.ki_head) / ev4 + c;
    let vs = (ly.vi_off + t * ly.vi_tok + h * ly.vi_head) / ev4 + c;
    let dst = u32(slot) * per_token + r;
    k_cache[dst] = key_in[ks];
    v_cache[dst] = value_in[vs];
}
