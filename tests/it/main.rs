//! The GPU integration suite: one test binary (one link, one shared `Context` and pipeline
//! cache for every test), one module per concern.
//!
//! Quick matrix (CI, lavapipe): core attention features on one cheap mode and one rotated mode
//! (`attention_params`), each mode's codec on its own (`quant_formats`: write layout, read on
//! codes, quality), validation and the registry. The mode × feature × rung product is the
//! `#[ignore]`d extended matrix (`cargo test -- --ignored`), run on the GPU machine.

#[allow(dead_code)]
mod common;

mod allocator;
mod attention_none;
mod attention_params;
mod blocks;
mod cold_start;
mod coop_probe;
mod fused_write;
mod quant_formats;
mod registry;
mod robustness;
mod validation;
mod views;
