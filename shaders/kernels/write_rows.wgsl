// kernels/write_rows.wgsl — reshape_and_cache for quantized modes. ROWS (token, kv head, K|V)
// rows per workgroup, WG_SIZE / ROWS lanes per row: load the model-dtype rows into x_sh (row j
// at j * HEAD_DIM), clean non-finite values (spec §10.7: NaN -> 0, ±Inf -> 0 with the sign kept
// for the mode's extreme code), let the mode transform all rows at once, reduce each row's
// statistic (lane partials, then every lane folds its row's partials in lane order: one
// barrier), ask the mode for the scale, pack codes into u32 words, store words and scale.
// The mode supplies (its encode.wgsl): CODE_BITS, HAS_SCALE_CACHE, enc_transform (in place on
// x_sh, all X_LEN elements, all threads, may hold barriers: rotation modes rotate here),
// enc_init/enc_stat/enc_fold (the row statistic), enc_params (scale, 1/scale, zero point,
// stored scale) and enc_code(i, params) of x_sh element i (i = row * HEAD_DIM + element).
// Negative slots are padding: the row is loaded as zeros and nothing is written.
//
// Bindings: 0 StepU, 1 LayerU, 2 meta (slot_mapping), 3 key_in, 4 value_in, 5 k_cache (rw),
//           6 v_cache (rw), 7 k_scale (rw), 8 v_scale (rw)
// Overrides: HEAD_DIM, WG_SIZE, ROWS (divides WG_SIZE), X_LEN = ROWS * HEAD_DIM, plus any the
//            mode's encode contract declares (its options; the core never names them).
// Dispatch: ceil(num_write * num_kv_heads * 2 / ROWS) workgroups, as an (x, y) grid.
// #include "common/uniforms.wgsl"
// #include "common/pack.wgsl"

override HEAD_DIM: u32 = 128u;
override WG_SIZE: u32 = 128u;
override ROWS: u32 = 8u;
override X_LEN: u32 = 1024u;

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(2) var<storage, read> step_meta: array<i32>;
@group(0) @binding(3) var<storage, read> key_in: array<u32>;
@group(0) @binding(4) var<storage, read> value_in: array<u32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(7) var<storage, read_write> k_scale: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_scale: array<f32>;

var<workgroup> x_sh: array<f32, X_LEN>;
var<workgroup> inf_sh: array<i32, X_LEN>;
var<workgroup> red_sh: array<vec2<f32>, WG_SIZE>;

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
    let lanes = WG_SIZE / ROWS;
    let j = tid / lanes;
    let lane = tid % lanes;
    let r = (wid.x + wid.y * nwg.x) * ROWS + j;
    let kvh = ly.num_kv_heads;
    let is_v = (r & 1u) == 1u;
    let t = (r >> 1u) / kvh;
    let h = (r >> 1u) % kvh;
    var slot = -1;
    if (r < st.num_write * kvh * 2u) {
        slot = step_meta[st.off_slot + t];
    }
    let live = slot >= 0;
    let xb = j * HEAD_DIM;
    // No early return before the last barrier: padding rows take part as zeros.
    for (var i = lane; i < HEAD_DIM; i += lanes) {
        var x = 0.0;
        var inf = 0;
        if (live) {
            let raw = in_load(is_v, t, h, i);
            let b = bitcast<u32>(raw);
            x = raw;
            if ((b & 0x7F800000u) == 0x7F800000u) {
                x = 0.0;
                if ((b & 0x7FFFFFu) == 0u) {
                    inf = select(1, -1, (b >> 31u) == 1u);
                }
            }
        }
        x_sh[xb + i] = x;
        inf_sh[xb + i] = inf;
    }
    workgroupBarrier();
    enc_transform(tid);
    workgroupBarrier();
    var acc = enc_init();
    for (var i = lane; i < HEAD_DIM; i += lanes) {
        acc = enc_fold(acc, enc_stat(x_sh[xb + i]));
    }
    red_sh[tid] = acc;
    workgroupBarrier();
    var stat = red_sh[j * lanes];
    for (var k = 1u; k < lanes; k++) {
        stat = enc_fold(stat, red_sh[j * lanes + k]);
    }
    if (!live) {
        return;
    }
    let params = enc_params(stat, is_v);
    let row = u32(slot) * kvh + h;
    let rw = ly.k_row_words;
    let per_word = 32u / CODE_BITS;
    let mask = (1u << CODE_BITS) - 1u;
    for (var w = lane; w < rw; w += lanes) {
        var word = 0u;
        for (var k = 0u; k < per_word; k++) {
            word |= (enc_code(xb + w * per_word + k, params) & mask) << (k * CODE_BITS);
        }
        if (is_v) {
            v_cache[row * rw + w] = word;
        } else {
            k_cache[row * rw + w] = word;
        }
    }
    if (HAS_SCALE_CACHE && lane == 0u) {
        if (is_v) {
            v_scale[row] = params.w;
        } else {
            k_scale[row] = params.w;
        }
    }
}
