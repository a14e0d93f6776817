// common/attn_bindings.wgsl — the bind group of the tiled attention kernels (unified, prefill),
// as src/kernels/attention.rs lays it out: 0 StepU, 1 LayerU, 2 meta (cu_seqlens_q, seqused_k,
// block_table, qq_bias, prefix ranges), 3 laux (sinks, ALiBi slopes), 4 q, 5/6 K/V cache,
// 7/8 K/V scale cache, 9 out (with split-K: the f32 partials).
// #include "common/uniforms.wgsl"

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
