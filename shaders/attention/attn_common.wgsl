// attention/attn_common.wgsl — what both attention kernels (unified.wgsl, decode.wgsl) share:
// their bindings, the overrides every variant sets, and small helpers.
//
// Bindings: 0 StepU, 1 LayerU, 2 meta (cu_seqlens_q, seqused_k, block_table, qq_bias, mm
//           ranges), 3 laux (sinks, alibi slopes), 4 q, 5 k_cache, 6 v_cache, 7 k_scale,
//           8 v_scale, 9 out (model dtype; with IS_SPLIT: f32 partials acc [T,Hq,NS,D] then
//           (M, L) [T,Hq,NS,2])
// Scores use a finite sentinel NEG instead of -inf: WGSL may assume finite math.
// #include "common/uniforms.wgsl"
// #include "common/out.wgsl"

override HEAD_DIM: u32 = 128u;
override WG_SIZE: u32 = 128u;
override MAX_M: u32 = 16u;
override Q_SH_LEN: u32 = 512u;
override HAS_SOFTCAP: bool = false;
override HAS_SINKS: bool = false;
override ALIBI_MODE: u32 = 0u; // 0 off, 1 linear, 2 sqrt
override HAS_QQ: bool = false;
override IS_SPLIT: bool = false;

const NEG: f32 = -1.0e30;
const NEG_HALF: f32 = -0.5e30;

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

// Four model-dtype elements of q starting at element e (a multiple of 4), as f32.
fn q_load4(e: u32) -> vec4<f32> {
    let w = e / 4u * MODEL_WORDS4;
    var words = vec4<u32>(q[w], q[w + 1u], 0u, 0u);
    if (MODEL_WORDS4 == 4u) {
        words.z = q[w + 2u];
        words.w = q[w + 3u];
    }
    return model_unpack4(words);
}

// tanh without overflow for large |x|.
fn stable_tanh(x: f32) -> f32 {
    let t = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - t) / (1.0 + t);
}

// Cache row (block * block_size + slot) * num_kv_heads + kv_head of key `key` of sequence seq.
fn physical_row(seq: u32, key: u32, kv_head: u32) -> u32 {
    let block = u32(step_meta[st.off_bt + seq * st.bt_stride + key / ly.block_size]);
    return (block * ly.block_size + key % ly.block_size) * ly.num_kv_heads + kv_head;
}
