//! The bench tool's one error type. Every variant prints as one line a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A command-line value that makes no sense (`--request-rate 0`, `--goodput foo:1`, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dataset: {0}")]
    Dataset(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The server could not be reached at all (nothing to measure).
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The warm-up request failed: the server answers but cannot serve this benchmark.
    #[error("warm-up request to {url} failed: {reason}")]
    WarmupFailed { url: String, reason: String },
    #[error("result file {}: {reason}", path.display())]
    BadResult { path: PathBuf, reason: String },
    #[error("plot: {0}")]
    Plot(String),
    #[error("{0}")]
    Other(String),
}

impl BenchError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn arg(msg: impl Into<String>) -> Self {
        BenchError::InvalidArgument(msg.into())
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
