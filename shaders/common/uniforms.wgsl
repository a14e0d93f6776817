// common/uniforms.wgsl — the two uniform blocks every core kernel binds.
//
// StepU is written once per model step (BatchPlan) and never rewritten while the plan lives.
// LayerU is interned by content in the Context (one buffer per distinct layer configuration),
// so recording a call never rewrites a buffer an earlier call of the same submit still reads.
// Offsets (off_*) index the step's `meta` array<i32> or the layer's `laux` array<f32>.

struct StepU {
    num_seqs: u32,
    num_tokens_q: u32,   // cu_seqlens_q[num_seqs]
    num_write: u32,      // slot_mapping length
    bt_stride: u32,      // block_table row stride (columns)
    off_cu: u32,
    off_su: u32,
    off_bt: u32,
    off_slot: u32,
    off_qq: u32,         // qq_bias as f32 bits, row-major [qq_rows, qq_cols]
    qq_rows: u32,
    qq_cols: u32,
    off_mm: u32,         // mm_prefix_range [num_seqs, mm_per_seq, 2]
    mm_per_seq: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct LayerU {
    num_q_heads: u32,
    num_kv_heads: u32,
    qpk: u32,            // q heads per kv head
    heads_per_wg: u32,   // HG: q heads of one kv head handled by one workgroup
    q_per_wg: u32,       // BQ: query tokens handled by one workgroup
    head_chunks: u32,    // ceil(qpk / HG)
    block_size: u32,
    num_blocks: u32,
    k_row_words: u32,    // u32 words per cached K row (one token, one kv head)
    v_row_words: u32,
    window: u32,         // W = left + 1, 0 = unbounded
    num_segments: u32,   // split-K segments (1 = no split)
    softmax_scale: f32,
    softcap: f32,
    k_tensor_scale: f32, // per-tensor modes
    v_tensor_scale: f32,
    out_inv_scale: f32,  // 1 / output_scale (FP8 output)
    off_sinks: u32,
    off_alibi: u32,
    seg_rows: u32,       // T: token rows the split-K buffers hold
    // Tensor views, in elements from the start of their binding: offset, row (token) stride,
    // head stride. Attention: q and out; write path: key and value inputs.
    q_off: u32,
    q_tok: u32,
    q_head: u32,
    o_off: u32,
    o_tok: u32,
    o_head: u32,
    ki_off: u32,
    ki_tok: u32,
    ki_head: u32,
    vi_off: u32,
    vi_tok: u32,
    vi_head: u32,
    // Sequences the attention kernel takes: 0 all, 1 those with one query token, 2 those with
    // more (a mixed batch runs as the decode kernel over 1, then the prefill kernel over 2).
    row_filter: u32,
    pad_a: u32,
    pad_b: u32,
    pad_c: u32,
}
