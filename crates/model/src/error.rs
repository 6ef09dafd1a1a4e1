//! Model-crate errors: each names the file, tensor or field at fault.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error(transparent)]
    Backend(#[from] sluice_backend::BackendError),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub fn format(path: impl AsRef<std::path::Path>, message: impl Into<String>) -> ModelError {
        ModelError::Format {
            path: path.as_ref().display().to_string(),
            message: message.into(),
        }
    }

    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
