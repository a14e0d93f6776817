// kernels/write_rows.wgsl — reshape_and_cache for quantized modes, in registers (the body; the
// entry, kernels/write_entry.wgsl or kernels/write_entry_sg.wgsl, says how lanes find their row
// and provides transform_row and row_stat). Each lane holds
// E consecutive elements of one row (E = max(E_MIN, 32 / CODE_BITS); E_MIN, from the host's
// prelude, is the lane width the host tiled with: 8, 16 or 32, a divisor of HEAD_DIM, whole
// code words per lane),
// loaded with 16-byte loads; HEAD_DIM / E lanes per row, ROWS rows per workgroup (all K rows of
// the step, then all V rows). Per row: clean non-finite values (spec §10.7: NaN -> 0, ±Inf -> 0
// with the sign kept for the mode's extreme code; only a lane that holds one cleans, and the
// others pack without the infinity test), let the mode transform the rows (only modes
// with ENC_TRANSFORM: through x_sh, all rows at once), reduce the row statistic (lane partials,
// then every lane folds its row's partials in lane order: one barrier), ask the mode for the
// scale, pack the lane's codes into whole u32 words, store words (store_words: 16-byte stores
// where a lane's words are whole 16-byte pieces) and scale. Portable entry: the
// transform through x_sh and the statistic through red_sh (one barrier). Subgroup entry (rows
// of a power-of-two lane count that a subgroup holds): the transform in registers (ENC_TRANSFORM
// modes: the mode's per-element pre-step, the Walsh-Hadamard butterflies inside the lane, then
// across lanes by subgroupShuffleXor, the mode's post-step) and the statistic by shuffles; no
// barrier, no workgroup memory.
// The mode supplies (its encode.wgsl): CODE_BITS, HAS_SCALE_CACHE, ENC_TRANSFORM and
// enc_transform (in place on x_sh, all X_LEN elements = ROWS rows of HEAD_DIM, all threads, may
// hold barriers), enc_init/enc_stat/enc_fold (the row statistic), enc_params (scale, 1/scale,
// zero point, stored scale) and enc_code(x, inf, params) of one cleaned element; for the
// subgroup entry also the transform per element: enc_pre(x, i), then the unnormalised
// Walsh-Hadamard transform over blocks of enc_block() elements in the canonical butterfly order
// of spec §4.1, then enc_post(x) (common/enc_no_transform.wgsl lists the names).
// A mode may answer ENC_EXACT from enc_code for an element whose code needs more work than the
// common case (the per-tensor modes: a quotient near a rounding tie); with ENC_HAS_EXACT set
// the core then asks enc_code_exact(x, params) in one copy of that path after the packing
// loop (common/enc_direct.wgsl for modes without one). Such a mode also says per row whether
// any element can be near a tie (enc_may_tie(params)); where not, the core packs the row's
// codes with enc_code_no_tie(x, params) instead, without the per-element tie test.
// Negative slots are padding: nothing is written for them.
//
// Overrides and bindings as listed here are the entries' too.
// Bindings: 0 StepU, 1 LayerU, 2 meta (slot_mapping), 3 key_in, 4 value_in (16-byte words; view
//           offsets and strides are multiples of 16 bytes, E elements are 16 or 32 bytes),
//           5 k_cache (rw), 6 v_cache (rw), 7 k_scale (rw), 8 v_scale (rw)
// Overrides: HEAD_DIM, ROWS, WG_SIZE = ROWS * HEAD_DIM / E, X_LEN = ROWS * HEAD_DIM, plus any the
//            mode's encode contract declares (its options; the core never names them).
// Dispatch: ceil(num_write * num_kv_heads * 2 / ROWS) workgroups, as an (x, y) grid.
// #include "common/uniforms.wgsl"
// #include "common/pack.wgsl"

override HEAD_DIM: u32 = 128u;
override WG_SIZE: u32 = 128u;
override ROWS: u32 = 8u;
override X_LEN: u32 = 1024u;
// Diagnostics only (QUANTKV_DEBUG_SKIP bits 20-24, `debug-knobs`; codes are wrong while set):
// 1 the row's scale math (enc_params) replaced by unit parameters, 2 no reduction of the row
// statistic across lanes, 4 the code stores kept out behind a runtime-false condition, 8 no
// cleaning of non-finite values, 16 the element's raw bits in place of enc_code's code.
override DEBUG_SKIP: u32 = 0u;

const E: u32 = max(E_MIN, 32u / CODE_BITS); // elements per lane (E_MIN: the host's prelude)
const EB: u32 = MODEL_WORDS4; // bytes per model element
const VPL: u32 = E * EB / 16u; // 16-byte loads per lane
const EPV: u32 = 16u / EB; // elements per 16-byte load
const NW: u32 = E * CODE_BITS / 32u; // code words per lane (at most 8)
const ENC_EXACT: u32 = 0xFFFFFFFFu; // enc_code: "take enc_code_exact"

@group(0) @binding(0) var<uniform> st: StepU;
@group(0) @binding(1) var<uniform> ly: LayerU;
@group(0) @binding(2) var<storage, read> step_meta: array<i32>;
@group(0) @binding(3) var<storage, read> key_in: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> value_in: array<vec4<u32>>;
// Bindings 5 and 6 (k_cache, v_cache) and store_words: the host's prelude,
// kernels/write_store_w4.wgsl or kernels/write_store_w1.wgsl.
@group(0) @binding(7) var<storage, read_write> k_scale: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_scale: array<f32>;

// The lane's elements and their infinity signs (spec §10.7).
var<private> x: array<f32, E>;
var<private> inf: array<i32, E>;

// Word w of the lane's codes (x.x) and the bits of its elements that the mode sends to its
// exact path (x.y, bit e for element e). `with_inf`: whether the lane holds a non-finite
// input; `no_tie`: the row cannot be near a rounding tie (modes with an exact path:
// enc_may_tie false, e.g. a power-of-two scale; only without non-finite inputs), so
// enc_code_no_tie gives the codes. The core calls this with constants, so enc_code's
// infinity test and the tie test fold away where they are not needed (a uniform branch per
// element instead measured slower on an H200 than testing every element).
fn pack_word(w: u32, params: vec4<f32>, with_inf: bool, no_tie: bool) -> vec2<u32> {
    let per_word = 32u / CODE_BITS;
    let mask = (1u << CODE_BITS) - 1u;
    var word = 0u;
    var exact = 0u;
    for (var k = 0u; k < per_word; k++) {
        let e = w * per_word + k;
        var c = bitcast<u32>(x[e]);
        if ((DEBUG_SKIP & 16u) == 0u) {
            if (no_tie) {
                c = enc_code_no_tie(x[e], params);
            } else {
                c = enc_code(x[e], select(0, inf[e], with_inf), params);
            }
        }
        if (ENC_HAS_EXACT && c == ENC_EXACT) {
            exact |= 1u << e;
        } else {
            word |= (c & mask) << (k * CODE_BITS);
        }
    }
    return vec2<u32>(word, exact);
}

fn load16(is_v: bool, i: u32) -> vec4<u32> {
    if (is_v) {
        return value_in[i];
    }
    return key_in[i];
}

// Row j of the workgroup, lane `lane` of its HEAD_DIM / E lanes; all threads (the entry's
// transform_row and row_stat may hold barriers or subgroup operations).
fn write_row(j: u32, lane: u32, wid: vec3<u32>, nwg: vec3<u32>) {
    let lanes = HEAD_DIM / E;
    let r = (wid.x + wid.y * nwg.x) * ROWS + j;
    let kvh = ly.num_kv_heads;
    let half = st.num_write * kvh;
    let is_v = r >= half;
    let rr = select(r, r - half, is_v);
    let t = rr / kvh;
    let h = rr % kvh;
    let in_range = r < 2u * half;
    var slot = -1;
    var with_inf = false; // the lane holds a non-finite input
    if (in_range) {
        slot = step_meta[st.off_slot + t];
    }
    // No early return before the last barrier. Rows of padding tokens are loaded too (their
    // input rows exist; the load need not wait for the slot) and write nothing.
    if (in_range) {
        let e0 = select(ly.ki_off + t * ly.ki_tok + h * ly.ki_head,
                        ly.vi_off + t * ly.vi_tok + h * ly.vi_head, is_v) + lane * E;
        let b16 = e0 / EPV;
        for (var q = 0u; q < VPL; q++) {
            let w = load16(is_v, b16 + q);
            if (EPV == 4u) {
                let v = model_unpack4(w);
                for (var k = 0u; k < 4u; k++) {
                    x[q * 4u + k] = v[k];
                }
            } else {
                let lo = model_unpack4(vec4<u32>(w.x, w.y, 0u, 0u));
                let hi = model_unpack4(vec4<u32>(w.z, w.w, 0u, 0u));
                for (var k = 0u; k < 4u; k++) {
                    x[q * 8u + k] = lo[k];
                    x[q * 8u + 4u + k] = hi[k];
                }
            }
        }
        // Non-finite inputs are rare: one integer maximum per element over the exponent bits
        // finds them, and only a lane that holds one cleans (a test and a branch per element
        // cost the modes 0.6-3.2 us of 4096 tokens' write on an H200).
        var ex = 0u;
        for (var k = 0u; k < E; k++) {
            ex = max(ex, bitcast<u32>(x[k]) & 0x7F800000u);
        }
        with_inf = ex == 0x7F800000u && (DEBUG_SKIP & 8u) == 0u;
        for (var k = 0u; k < E && with_inf; k++) {
            let b = bitcast<u32>(x[k]);
            if ((b & 0x7F800000u) == 0x7F800000u) {
                x[k] = 0.0;
                if ((b & 0x7FFFFFu) == 0u) {
                    inf[k] = select(1, -1, (b >> 31u) == 1u);
                }
            }
        }
    }
    transform_row(j, lane);
    var acc = enc_init();
    for (var k = 0u; k < E; k++) {
        acc = enc_fold(acc, enc_stat(x[k]));
    }
    var stat = acc;
    if ((DEBUG_SKIP & 2u) == 0u) {
        stat = row_stat(acc, j, lane);
    }
    if (slot < 0) {
        return;
    }
    var params = vec4<f32>(1.0, 1.0, 0.0, stat.x);
    if ((DEBUG_SKIP & 1u) == 0u) {
        params = enc_params(stat, is_v);
    }
    let row = u32(slot) * kvh + h;
    let per_word = 32u / CODE_BITS;
    let mask = (1u << CODE_BITS) - 1u;
    var words: array<u32, NW>;
    var exact = 0u; // bit e: element e's code comes from the mode's exact path
    if (with_inf) {
        for (var w = 0u; w < NW; w++) {
            let r = pack_word(w, params, true, false);
            words[w] = r.x;
            exact |= r.y;
        }
    } else if (ENC_HAS_EXACT && enc_may_tie(params)) {
        for (var w = 0u; w < NW; w++) {
            let r = pack_word(w, params, false, false);
            words[w] = r.x;
            exact |= r.y;
        }
    } else {
        for (var w = 0u; w < NW; w++) {
            let r = pack_word(w, params, false, true);
            words[w] = r.x;
            exact |= r.y;
        }
    }
    // Elements the mode sends to its exact path (rare: near a rounding tie), one at a time
    // through one copy of that path; the element is picked by selects, so x stays in
    // registers; so is the word it lands in (constant indices once the loops unroll).
    while (ENC_HAS_EXACT && exact != 0u) {
        let e = firstTrailingBit(exact);
        exact &= exact - 1u;
        var xe = 0.0;
        for (var k = 0u; k < E; k++) {
            xe = select(xe, x[k], k == e);
        }
        let c = (enc_code_exact(xe, params) & mask) << ((e % per_word) * CODE_BITS);
        for (var w = 0u; w < NW; w++) {
            words[w] |= select(0u, c, w == e / per_word);
        }
    }
    let w0 = row * ly.k_row_words + lane * NW;
    if ((DEBUG_SKIP & 4u) == 0u || ly.num_kv_heads == 0u) {
        store_words(is_v, w0, words);
    }
    if (HAS_SCALE_CACHE && lane == 0u) {
        if (is_v) {
            v_scale[row] = params.w;
        } else {
            k_scale[row] = params.w;
        }
    }
}
