//! Model quantization (`sluice quantize`) and the quality measures that judge it
//! (`sluice perplexity`): llama.cpp's per-tensor type recipes, a streaming GGUF writer,
//! the conversion driver, and log-probability / KL-divergence statistics.

pub mod convert;
pub mod hf_meta;
pub mod quality;
pub mod recipe;
pub mod writer;

pub use convert::{execute, plan, PlannedTensor, QuantizePlan};
pub use recipe::{choose_type, Fallback, ModelShape, QuantTarget, TypeChoice};
