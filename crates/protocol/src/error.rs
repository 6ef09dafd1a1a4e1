//! OpenAI error bodies (`{"error": {"message", "type", "param", "code"}}`) and their
//! HTTP statuses.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Errors in interpreting protocol values (not HTTP errors themselves).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid message content: {0}")]
    InvalidContent(String),
}

/// `code`: OpenAI sends a string (`"model_not_found"`) or null; vLLM sends the HTTP status
/// as an integer. Both deserialize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorCode {
    Str(String),
    Int(i64),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Str(s) => f.write_str(s),
            ErrorCode::Int(i) => write!(f, "{i}"),
        }
    }
}

/// The inner object of an error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The request field at fault, when there is one. Always serialized (as `null` if none),
    /// as OpenAI does.
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<ErrorCode>,
}

/// The whole error response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// An error ready to send: HTTP status plus body. The server maps it onto its framework's
/// response type; the bench tool parses bodies of failed requests into [`ErrorResponse`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorResponse,
}

impl ApiError {
    pub fn new(
        status: u16,
        kind: &str,
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ApiError {
            status,
            body: ErrorResponse {
                error: ErrorBody {
                    message: message.into(),
                    kind: kind.to_string(),
                    param: param.map(str::to_string),
                    code: code.map(|c| ErrorCode::Str(c.to_string())),
                },
            },
        }
    }

    /// 400: malformed JSON, a field out of range, an unsupported option.
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(400, "invalid_request_error", message, param, None)
    }

    /// 400: the prompt plus `max_tokens` does not fit the model's context.
    pub fn context_length_exceeded(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            message,
            param,
            Some("context_length_exceeded"),
        )
    }

    /// 401: missing or wrong API key.
    pub fn authentication(message: impl Into<String>) -> Self {
        Self::new(
            401,
            "authentication_error",
            message,
            None,
            Some("invalid_api_key"),
        )
    }

    /// 404: unknown route or resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found_error", message, None, None)
    }

    /// 404: the request names a model this server does not serve.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "not_found_error",
            format!("The model `{model}` does not exist."),
            Some("model"),
            Some("model_not_found"),
        )
    }

    /// 429: a client exceeded its rate limit.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(
            429,
            "rate_limit_error",
            message,
            None,
            Some("rate_limit_exceeded"),
        )
    }

    /// 429: the server is at capacity (admission queue full); retry later.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(
            429,
            "rate_limit_error",
            message,
            None,
            Some("server_overloaded"),
        )
    }

    /// 500: a bug on our side.
    pub fn server_error(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", message, None, None)
    }

    pub fn message(&self) -> &str {
        &self.body.error.message
    }

    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and options cannot fail; fall back to a fixed body
        // rather than panic if it somehow does.
        serde_json::to_string(&self.body).unwrap_or_else(|_| {
            r#"{"error":{"message":"error serialization failed","type":"server_error","param":null,"code":null}}"#
                .to_string()
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status, self.body.error.kind, self.body.error.message
        )
    }
}

impl std::error::Error for ApiError {}
