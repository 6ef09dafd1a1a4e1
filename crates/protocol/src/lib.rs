//! sluice-protocol: OpenAI-compatible request, response, streaming and error types.
//!
//! Shared by the server (which deserializes requests and serializes responses) and the
//! bench tool (which does the opposite). Every request type accepts unknown fields:
//! OpenAI clients send extras we do not know about, and rejecting them would break those
//! clients. Unknown fields are kept in each request's `extra` map so the server can log
//! what it ignored.
//!
//! Reference: <https://platform.openai.com/docs/api-reference> (completions, chat,
//! models, errors) and vLLM's `entrypoints/openai/protocol.py` for the sampling extras
//! (`top_k`, `min_p`, `repetition_penalty`, `ignore_eos`, `min_tokens`, ...).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod chat;
pub mod common;
pub mod completions;
pub mod error;
pub mod models;

pub use chat::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatLogprobs, ChatMessage, ChatResponseMessage,
    ChatTokenLogprob, ContentPart, MessageContent, Role, TopLogprob,
};
pub use common::{
    FinishReason, PromptTokensDetails, SpeculativeOptions, StopSequences, StreamOptions,
    TopLogprobMap, Usage,
};
pub use completions::{
    CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionRequest, CompletionResponse,
    Prompt,
};
pub use error::{ApiError, ErrorBody, ErrorCode, ErrorResponse, ProtocolError};
pub use models::{ModelCard, ModelList};

/// The terminating Server-Sent-Events payload of an OpenAI stream (`data: [DONE]`).
pub const SSE_DONE: &str = "[DONE]";

/// Formats one Server-Sent-Events frame carrying `payload` (`data: <payload>\n\n`).
pub fn sse_frame(payload: &str) -> String {
    format!("data: {payload}\n\n")
}

/// Serializes `value` as JSON and wraps it in an SSE frame.
pub fn sse_json<T: serde::Serialize>(value: &T) -> Result<String, serde_json::Error> {
    Ok(sse_frame(&serde_json::to_string(value)?))
}
