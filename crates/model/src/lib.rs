//! sluice-model: configs, loaders, tokenizers, chat templates and architectures.
//!
//! `forward(&BatchInput, &mut KvCache) -> logits`. Owns no scheduling, knows no requests.

pub mod arch;
pub mod batch;
pub mod chat_template;
pub mod config;
pub mod error;
pub mod kv_cache;
pub mod loader;
pub mod quantize;
pub mod tokenizer;
pub mod weights;

pub use batch::{BatchInput, SeqInput};
pub use config::{Arch, FfnActivation, ModelConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use kv_cache::KvCache;
pub use weights::WeightStore;
