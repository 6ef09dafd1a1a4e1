//! Errors: startup failures (`ServerError`) and request failures (`HttpError`, an OpenAI
//! error body with its status).
//!
//! Every request failure leaves the server as `{"error": {"message", "type", "param",
//! "code"}}`: serde rejections are rewritten into that shape with the offending field as
//! `param`, never axum's plain-text rejections.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_engine::engine::EngineError;
use sluice_engine::scheduler::SchedulerError;
use sluice_protocol::ApiError;

/// Failures while starting or running the server (not per request).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the model's chat template does not compile: {0}")]
    ChatTemplate(#[source] sluice_model::ModelError),
    #[error("invalid server configuration: {0}")]
    Config(String),
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A request failure ready to send.
#[derive(Debug, Clone)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.0.to_json()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// 503: the engine thread is gone (shutting down or crashed).
pub fn engine_unavailable() -> ApiError {
    ApiError::new(
        503,
        "server_error",
        "the engine has stopped",
        None,
        Some("engine_unavailable"),
    )
}

/// Maps an engine rejection onto the OpenAI error it means for the client.
pub fn from_engine(e: &EngineError) -> ApiError {
    match e {
        EngineError::InvalidRequest { message, param } => {
            ApiError::invalid_request(message.clone(), *param)
        }
        EngineError::Scheduler(SchedulerError::ContextTooLong {
            prompt_tokens,
            max_tokens,
            max_model_len,
        }) => context_too_long(*prompt_tokens, *max_tokens, *max_model_len),
        EngineError::Scheduler(SchedulerError::ExceedsKvCache { .. }) => {
            ApiError::context_length_exceeded(e.to_string(), Some("max_tokens"))
        }
        EngineError::Stopped => engine_unavailable(),
        e if e.is_client_error() => ApiError::invalid_request(e.to_string(), None),
        e => ApiError::server_error(format!("engine error: {e}")),
    }
}

/// 400 naming the prompt length, the requested completion length and the limit.
pub fn context_too_long(prompt_tokens: usize, max_tokens: usize, max_model_len: usize) -> ApiError {
    ApiError::context_length_exceeded(
        format!(
            "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens \
             ({prompt_tokens} in the prompt, {max_tokens} for the completion). Please reduce the length of \
             the prompt or of max_tokens.",
            prompt_tokens + max_tokens
        ),
        Some("max_tokens"),
    )
}

/// Deserializes a request body, turning every failure into a 400 that names the field.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => return Err(json_error(e)),
    };
    // Trailing garbage after the object is invalid JSON too.
    de.end()
        .map_err(|e| ApiError::invalid_request(format!("Invalid JSON body: {e}"), None))?;
    Ok(value)
}

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::invalid_request(format!("Invalid JSON body: {inner}"), None)
        }
        Category::Data => {
            let raw = strip_position(&inner.to_string());
            // Missing fields are reported at the parent (the root: "."); name the field.
            let param = if path.is_empty() || path == "." {
                backticked_field(&raw, "missing field `")
            } else {
                Some(path)
            };
            let detail = humanize(&raw);
            match param {
                Some(p) => ApiError::invalid_request(
                    format!("Invalid value for `{p}`: {detail}"),
                    Some(&p),
                ),
                None => ApiError::invalid_request(format!("Invalid request body: {detail}"), None),
            }
        }
    }
}

/// serde_json appends " at line L column C"; the param name says more to an API user.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

fn backticked_field(msg: &str, prefix: &str) -> Option<String> {
    let start = msg.find(prefix)? + prefix.len();
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

/// Replaces Rust type names in serde messages with what a JSON user understands.
fn humanize(msg: &str) -> String {
    msg.replace("expected u32", "expected a non-negative integer")
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected i32", "expected an integer")
        .replace("expected i64", "expected an integer")
        .replace("expected f32", "expected a number")
        .replace("expected a boolean", "expected true or false")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::{ChatCompletionRequest, CompletionRequest};

    fn err_of<T: serde::de::DeserializeOwned + std::fmt::Debug>(body: &str) -> ApiError {
        match parse_json::<T>(body.as_bytes()) {
            Ok(v) => panic!("expected an error for {body}, got {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn negative_max_tokens_names_the_field() {
        let e = err_of::<CompletionRequest>(r#"{"prompt": "hi", "max_tokens": -5}"#);
        assert_eq!(e.status, 400);
        assert_eq!(e.body.error.param.as_deref(), Some("max_tokens"));
        assert!(e.message().contains("-5"), "{}", e.message());
        assert!(
            e.message().contains("non-negative integer"),
            "{}",
            e.message()
        );
        assert_eq!(e.body.error.kind, "invalid_request_error");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = err_of::<CompletionRequest>(r#"{"prompt": "hi", "temperature": "hot"}"#);
        assert_eq!(e.body.error.param.as_deref(), Some("temperature"));
        let e = err_of::<ChatCompletionRequest>(
            r#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
        );
        assert_eq!(
            e.body.error.param.as_deref(),
            Some("messages[0].role"),
            "{}",
            e.message()
        );
        let e = err_of::<CompletionRequest>(r#"{"prompt": {"a": 1}}"#);
        assert_eq!(e.body.error.param.as_deref(), Some("prompt"));
    }

    #[test]
    fn missing_field_is_named() {
        let e = err_of::<CompletionRequest>(r#"{"model": "m"}"#);
        assert_eq!(
            e.body.error.param.as_deref(),
            Some("prompt"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        for body in [
            r#"{"prompt": "hi""#,
            "not json",
            r#"{"prompt": "hi"} trailing"#,
            "",
        ] {
            let e = err_of::<CompletionRequest>(body);
            assert_eq!(e.status, 400);
            assert!(
                e.message().starts_with("Invalid JSON body"),
                "{body}: {}",
                e.message()
            );
            assert_eq!(e.body.error.param, None);
        }
    }

    #[test]
    fn context_message_names_both_numbers() {
        let e = context_too_long(100, 50, 128);
        let m = e.message();
        assert!(
            m.contains("128") && m.contains("150") && m.contains("100") && m.contains("50"),
            "{m}"
        );
        assert_eq!(
            e.body.error.code,
            Some(sluice_protocol::ErrorCode::Str(
                "context_length_exceeded".into()
            ))
        );
    }
}
