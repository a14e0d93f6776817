// common/attn_basics.wgsl — helpers every attention kernel shares: the query load (4 model
// elements), a tanh that does not overflow, block-table addressing of a key's cached row, and
// the score terms of spec §6.1. The including kernel declares the bindings of
// common/uniforms.wgsl, `step_meta`, `laux` and `q`, and the overrides HAS_SOFTCAP, ALIBI_MODE
// and HAS_QQ.

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

fn physical_row(seq: u32, key: u32, kv_head: u32) -> u32 {
    let block = u32(step_meta[st.off_bt + seq * st.bt_stride + key / ly.block_size]);
    return (block * ly.block_size + key % ly.block_size) * ly.num_kv_heads + kv_head;
}

// score_terms of four visible keys' raw q·k in pipelines without softcap, ALiBi or qq_bias
// (the scale alone, clamped to real scores).
fn plain_scores4(raw: vec4<f32>) -> vec4<f32> {
    return clamp(raw * (ly.softmax_scale * transform_score_scale()), vec4<f32>(-REAL_MAX),
                 vec4<f32>(REAL_MAX));
}

// A visible key's score from its raw q·k (spec §6.1, after the mask): scale, softcap, ALiBi,
// qq_bias, clamped to a real score. `qrow`: the query's index among its sequence's new tokens
// (its position is ctx + qrow).
fn score_terms(raw: f32, head: u32, key: u32, ctx: u32, qrow: u32) -> f32 {
    var s = raw * (ly.softmax_scale * transform_score_scale());
    if (HAS_SOFTCAP) {
        s = ly.softcap * stable_tanh(s / ly.softcap);
    }
    if (ALIBI_MODE == 1u) {
        s += laux[ly.off_alibi + head] * (f32(key) - f32(ctx));
    } else if (ALIBI_MODE == 2u) {
        let rel = i32(key) - i32(ctx + qrow);
        if (rel <= 0) {
            s -= laux[ly.off_alibi + head] * sqrt(f32(-rel));
        }
    }
    if (HAS_QQ) {
        let kr = i32(key) - i32(ctx);
        if (kr >= 0 && u32(kr) < st.qq_cols) {
            s += bitcast<f32>(step_meta[st.off_qq + qrow * st.qq_cols + u32(kr)]);
        }
    }
    return real_score(s);
}
