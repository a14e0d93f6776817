//! Host copies of the two uniform blocks every core kernel binds (`shaders/common/uniforms.wgsl`).
//! Their field offsets and sizes are checked against naga's layout of the WGSL structs in
//! tests (`kernels::layout_tests`), so the two can never drift apart.

use bytemuck::{Pod, Zeroable};

/// GPU copy of the step uniform (`StepU` in `shaders/common/uniforms.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub struct StepUniform {
    pub num_seqs: u32,
    pub num_tokens_q: u32,
    pub num_write: u32,
    pub bt_stride: u32,
    pub off_cu: u32,
    pub off_su: u32,
    pub off_bt: u32,
    pub off_slot: u32,
    pub off_qq: u32,
    pub qq_rows: u32,
    pub qq_cols: u32,
    pub off_mm: u32,
    pub mm_per_seq: u32,
    pub pad: [u32; 3],
}

/// GPU copy of the layer uniform (`LayerU` in `shaders/common/uniforms.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub struct LayerUniform {
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub qpk: u32,
    pub heads_per_wg: u32,
    pub q_per_wg: u32,
    pub head_chunks: u32,
    pub block_size: u32,
    pub num_blocks: u32,
    pub k_row_words: u32,
    pub v_row_words: u32,
    pub window: u32,
    pub num_segments: u32,
    pub softmax_scale: f32,
    pub softcap: f32,
    pub k_tensor_scale: f32,
    pub v_tensor_scale: f32,
    pub out_inv_scale: f32,
    pub off_sinks: u32,
    pub off_alibi: u32,
    pub seg_rows: u32,
    pub q_off: u32,
    pub q_tok: u32,
    pub q_head: u32,
    pub o_off: u32,
    pub o_tok: u32,
    pub o_head: u32,
    pub ki_off: u32,
    pub ki_tok: u32,
    pub ki_head: u32,
    pub vi_off: u32,
    pub vi_tok: u32,
    pub vi_head: u32,
    /// Which sequences the attention kernel takes (`shaders/common/uniforms.wgsl`): 0 all,
    /// [`ROWS_DECODE`] or [`ROWS_PREFILL`].
    pub row_filter: u32,
    pub pad: [u32; 3],
}

/// [`LayerUniform::row_filter`]: sequences with exactly one query token (the decode part of a
/// mixed batch).
pub const ROWS_DECODE: u32 = 1;
/// [`LayerUniform::row_filter`]: sequences with more than one query token (its prefill part).
pub const ROWS_PREFILL: u32 = 2;
