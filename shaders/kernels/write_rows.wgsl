// kernels/write_rows.wgsl — reshape_and_cache for quantized modes. One workgroup per
// (token, kv head, K|V) row: load the model-dtype row, clean non-finite values (spec §10.7: NaN
// -> 0, ±Inf -> 0 with the sign kept for the mode's extreme code), reduce the mode's row
// statistic, ask the mode for the scale, pack codes into u32 words, store words and scale.
// The mode supplies (its encode.wgsl): CODE_BITS, HAS_SCALE_CACHE, enc_transform (in place on
// x_sh, all threads, may hold barriers: rotation modes rotate here), enc_init/enc_stat/enc_fold
// (the row statistic), enc_params (scale, 1/scale, zero point, stored scale) and enc_code.
// Negative slots are padding: the workgroup writes nothing.
//
// Bindings: 0 StepU, 1 LayerU, 2 meta (slot_mapping), 3 key_in, 4 value_in, 5 k_cache (rw),
//           6 v_cache (rw), 7 k_scale (rw), 8 v_scale (rw)
// Overrides: HEAD_DIM, WG_SIZE (power of two), plus any the mode's encode contract declares
//            (its options; the core never names them).
// Dispatch: num_write * num_kv_heads * 2 workgroups, as an (x, y) grid.
// #include "common/uniforms.wgsl"
// #include "common/pack.wgsl"

override HEAD_DIM: u32 = 128u;
override WG_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(2) var<storage, read> step_meta: array<i32>;
@group(0) @binding(3) var<storage, read> key_in: array<u32>;
@group(0) @binding(4) var<storage, read> value_in: array<u32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(7) var<storage, read_write> k_scale: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_scale: array<f32>;

var<workgroup> x_sh: array<f32, HEAD_DIM>;
var<workgroup> inf_sh: array<i32, HEAD_DIM>;
var<workgroup> red_sh: array<vec2<f32>, WG_SIZE>;
var<workgroup> slot_sh: i32;

// Element i of row (token t, kv head h) of the key / value input view (model dtype) as f32.
fn in_load(is_v: bool, t: u32, h: u32, i: u32) -> f32 {
    let e = select(ly.ki_off + t * ly.ki_tok + h * ly.ki_head, ly.vi_off + t * ly.vi_tok + h * ly.vi_head, is_v) + i;
    let per = 4u / MODEL_WORDS4; // elements per word
    let w = select(key_in[e / per], value_in[e / per], is_v);
    return model_elem(w, e % per);
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    let kvh = ly.num_kv_heads;
    if (r >= st.num_write * kvh * 2u) {
        return;
    }
    let is_v = (r & 1u) == 1u;
    let t = (r >> 1u) / kvh;
    let h = (r >> 1u) % kvh;
    if (tid == 0u) {
        slot_sh = step_meta[st.off_slot + t];
    }
    let slot = workgroupUniformLoad(&slot_sh);
    if (slot < 0) {
        return;
    }
    for (var i = tid; i < HEAD_DIM; i += WG_SIZE) {
        let raw = in_load(is_v, t, h, i);
        let b = bitcast<u32>(raw);
        var x = raw;
        var inf = 0;
        if ((b & 0x7F800000u) == 0x7F800000u) {
            x = 0.0;
            if ((b & 0x7FFFFFu) == 0u) {
                inf = select(1, -1, (b >> 31u) == 1u);
            }
        }
        x_sh[i] = x;
        inf_sh[i] = inf;
    }
    workgroupBarrier();
    enc_transform(tid);
    workgroupBarrier();
    var acc = enc_init();
    for (var i = tid; i < HEAD_DIM; i += WG_SIZE) {
        acc = enc_fold(acc, enc_stat(x_sh[i]));
    }
    red_sh[tid] = acc;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red_sh[tid] = enc_fold(red_sh[tid], red_sh[tid + s]);
        }
        workgroupBarrier();
    }
    let params = enc_params(red_sh[0], is_v);
    let row = u32(slot) * kvh + h;
    let rw = ly.k_row_words;
    let per_word = 32u / CODE_BITS;
    let mask = (1u << CODE_BITS) - 1u;
    for (var w = tid; w < rw; w += WG_SIZE) {
        var word = 0u;
        for (var k = 0u; k < per_word; k++) {
            word |= (enc_code(w * per_word + k, params) & mask) << (k * CODE_BITS);
        }
        if (is_v) {
            v_cache[row * rw + w] = word;
        } else {
            k_cache[row * rw + w] = word;
        }
    }
    if (HAS_SCALE_CACHE && tid == 0u) {
        if (is_v) {
            v_scale[row] = params.w;
        } else {
            k_scale[row] = params.w;
        }
    }
}
