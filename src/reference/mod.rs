//! CPU reference of every operation, in f64 (public and always compiled: tests, examples and
//! users compare GPU results against it).

pub mod attention;
pub mod cache;
pub mod data;
pub mod rng;

pub use crate::modes::{hadamard, quant};
pub use attention::unified_attention;
