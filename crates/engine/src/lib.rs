#![deny(clippy::unwrap_used)]
//! sluice-engine: requests, sequences, the scheduler, the paged KV cache with prefix
//! caching, sampling, and the step loop. No HTTP.

pub mod bench;
pub mod engine;
pub mod handle;
pub mod kv;
pub mod metrics;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod spec;

pub use engine::{EngineConfig, EngineError, EngineRequest, LlmEngine, RequestOutput};
pub use handle::{EngineHandle, EngineInfo, RequestStream};
pub use sampling::SamplingParams;
pub use sequence::{FinishReason, SeqId};
pub use spec::{SpecConfig, SpecOverride};
