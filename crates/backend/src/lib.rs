//! sluice-backend: devices, device-resident tensors, and the ops a transformer needs.
//!
//! Knows nothing of requests or models: the model crate drives these ops.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod quant;
pub mod sample;
pub mod tensor;

pub use cuda::CudaWeightType;
pub use device::{
    AttentionParams, Device, DeviceGraph, IdsReadback, KvWrite, PagedAttentionMeta, QkvDims,
    RopeStyle, ACTIVATION_DTYPE, CUDA_KV_CACHE_DTYPES,
};
pub use dtype::DType;
pub use error::{BackendError, Result};
pub use sample::{LogitAdjust, LogprobAsk, SampleParams, LOGPROB_RECORD, MAX_TOP_LOGPROBS};
pub use tensor::Tensor;
