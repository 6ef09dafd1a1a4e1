//! Loaders: GGUF, Hugging Face safetensors + config.json, llama2.c checkpoints.

pub mod gguf_value;

pub use gguf_value::{GgufMetadata, GgufValue};
