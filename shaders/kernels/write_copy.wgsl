// kernels/write_copy.wgsl — reshape_and_cache for caches that store rows as given (mode `none`):
// copies each (token, kv_head) row of `key_in` / `value_in` into the paged slot named by
// slot_mapping. Negative slots are padding: nothing is written.
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
    let dst = u32(slot) * per_token + idx % per_token;
    k_cache[dst] = key_in[idx];
    v_cache[dst] = value_in[idx];
}
