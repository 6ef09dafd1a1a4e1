//! Backend errors.
use crate::dtype::DType;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("shape error: {0}")]
    Shape(String),
    #[error("expected a {expected} tensor, got {got}")]
    DType { expected: DType, got: DType },
    #[error("{op} does not support {dtype} tensors")]
    Unsupported { op: &'static str, dtype: DType },
    #[error("tensor is read-only (memory-mapped weights)")]
    ReadOnly,
    #[error("device error: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;
