// common/attn_basics.wgsl — helpers every attention kernel shares: the query load (4 model
// elements), a tanh that does not overflow, and block-table addressing of a key's cached row.
// The including kernel declares the bindings of common/uniforms.wgsl, `step_meta` and `q`.

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
