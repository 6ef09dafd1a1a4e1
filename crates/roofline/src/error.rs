//! One error enum for the crate; each variant reads as a sentence to the user.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RooflineError {
    #[error("unknown hardware profile `{name}`; known profiles: {known}")]
    UnknownHardware { name: String, known: String },

    #[error(
        "unknown model `{name}`: not a file or directory, and not a preset (presets: {known})"
    )]
    UnknownModel { name: String, known: String },

    #[error("{}: {message}", path.display())]
    Profile { path: PathBuf, message: String },

    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },

    #[error("{0}")]
    Unsupported(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("plot: {0}")]
    Plot(String),

    #[error(transparent)]
    Model(#[from] sluice_model::ModelError),

    #[error(transparent)]
    Backend(#[from] sluice_backend::BackendError),

    #[error(transparent)]
    Engine(#[from] sluice_engine::EngineError),
}

impl RooflineError {
    pub fn invalid(what: &'static str, message: impl Into<String>) -> RooflineError {
        RooflineError::Invalid {
            what,
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> RooflineError {
        RooflineError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = RooflineError> = std::result::Result<T, E>;
