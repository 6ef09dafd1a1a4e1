//! `/v1/chat/completions`: request, response and streaming chunk.

use crate::common::{
    obj_chat_chunk, obj_chat_completion, FinishReason, SamplingView, SpeculativeOptions,
    StopSequences, StreamOptions, Usage,
};
use crate::{ApiError, ProtocolError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Author of a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    /// OpenAI's newer name for system instructions; chat templates see it as "system".
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl Role {
    /// The role string handed to chat templates (`developer` is presented as `system`,
    /// which is what templates written before that role existed understand).
    pub fn template_name(&self) -> &'static str {
        match self {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }
}

/// One element of an array-form message content: `{"type": "text", "text": "..."}`,
/// `{"type": "image_url", "image_url": {...}}`, ... Kept generic so every part type
/// deserializes; [`MessageContent::to_text`] rejects the ones we cannot serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl ContentPart {
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart {
            kind: "text".to_string(),
            text: Some(text.into()),
            extra: Map::new(),
        }
    }
}

/// Message `content`: a string or an array of content parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// The message as plain text: a string as is; text parts concatenated with "\n"
    /// (as vLLM joins them). Non-text parts are an error: this server is text-only.
    pub fn to_text(&self) -> Result<String, ProtocolError> {
        match self {
            MessageContent::Text(s) => Ok(s.clone()),
            MessageContent::Parts(parts) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => texts.push(t.as_str()),
                        ("text", None) => {
                            return Err(ProtocolError::InvalidContent(
                                "a content part of type \"text\" has no \"text\" field".into(),
                            ))
                        }
                        (other, _) => {
                            return Err(ProtocolError::InvalidContent(format!(
                                "content parts of type {other:?} are not supported; only \"text\""
                            )))
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
        }
    }
}

impl From<&str> for MessageContent {
    fn from(s: &str) -> Self {
        MessageContent::Text(s.to_string())
    }
}

/// One message of a chat request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// May be `null` for an assistant message that only carries tool calls.
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<MessageContent>) -> Self {
        ChatMessage {
            role,
            content: Some(content.into()),
            name: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }

    /// The content as plain text (`""` when absent).
    pub fn text(&self) -> Result<String, ProtocolError> {
        match &self.content {
            Some(c) => c.to_text(),
            None => Ok(String::new()),
        }
    }
}

/// `POST /v1/chat/completions` body. Fields after `tool_choice` are vLLM extensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; both accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSequences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Return the log-probability of each generated token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Alternatives per token (0..=20); requires `logprobs: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,

    // --- vLLM-style extensions ---
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_special_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_stop_str_in_output: Option<bool>,
    /// Echo the last message's content in front of the reply (vLLM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Append the assistant-turn header after the messages (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    /// Continue the final (assistant) message instead of starting a new turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_final_message: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// sluice extension: speculative decoding for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeOptions>,

    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        ChatCompletionRequest {
            model: Some(model.into()),
            messages,
            max_tokens: None,
            max_completion_tokens: None,
            temperature: None,
            top_p: None,
            n: None,
            stream: false,
            stream_options: None,
            stop: None,
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: None,
            logprobs: None,
            top_logprobs: None,
            seed: None,
            user: None,
            response_format: None,
            tools: None,
            tool_choice: None,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            stop_token_ids: None,
            ignore_eos: None,
            min_tokens: None,
            skip_special_tokens: None,
            include_stop_str_in_output: None,
            echo: None,
            add_generation_prompt: None,
            continue_final_message: None,
            chat_template_kwargs: None,
            speculative: None,
            extra: Map::new(),
        }
    }

    /// The output-length limit: `max_completion_tokens` wins over the older `max_tokens`.
    pub fn effective_max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    pub fn stop_strings(&self) -> Vec<String> {
        self.stop
            .as_ref()
            .map(StopSequences::to_vec)
            .unwrap_or_default()
    }

    /// Model-independent range checks (see [`crate::CompletionRequest::check_ranges`]).
    pub fn check_ranges(&self) -> Result<(), ApiError> {
        SamplingView {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repetition_penalty: self.repetition_penalty,
            n: self.n,
            logit_bias: self.logit_bias.as_ref(),
        }
        .check()?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid_request(
                "messages must contain at least one message",
                Some("messages"),
            ));
        }
        if self.effective_max_tokens() == Some(0) {
            return Err(ApiError::invalid_request(
                "max_completion_tokens must be at least 1",
                Some("max_completion_tokens"),
            ));
        }
        if let Some(k) = self.top_logprobs {
            if k > 20 {
                return Err(ApiError::invalid_request(
                    format!("top_logprobs must be at most 20, got {k}"),
                    Some("top_logprobs"),
                ));
            }
            if k > 0 && self.logprobs != Some(true) {
                return Err(ApiError::invalid_request(
                    "top_logprobs requires logprobs to be true",
                    Some("top_logprobs"),
                ));
            }
        }
        for (i, m) in self.messages.iter().enumerate() {
            m.text().map_err(|e| {
                ApiError::invalid_request(format!("messages[{i}]: {e}"), Some("messages"))
            })?;
        }
        Ok(())
    }
}

/// One alternative in chat logprobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    /// UTF-8 bytes of the token (`null` when not representable).
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
}

/// Log-probability of one generated token in chat format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    #[serde(default)]
    pub content: Option<Vec<ChatTokenLogprob>>,
}

/// The assistant message of a non-streamed chat response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponseMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatResponseMessage,
    #[serde(default)]
    pub logprobs: Option<ChatLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Value>,
}

/// Non-streamed chat response (`object: "chat.completion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    #[serde(default = "obj_chat_completion")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl ChatCompletionResponse {
    pub fn new(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        choices: Vec<ChatChoice>,
        usage: Usage,
    ) -> Self {
        ChatCompletionResponse {
            id: id.into(),
            object: obj_chat_completion(),
            created,
            model: model.into(),
            choices,
            usage: Some(usage),
            system_fingerprint: None,
        }
    }
}

/// The incremental part of a streamed chat choice. The first chunk carries the role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    #[serde(default)]
    pub delta: ChatDelta,
    #[serde(default)]
    pub logprobs: Option<ChatLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Value>,
}

/// One streamed chat chunk (`object: "chat.completion.chunk"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    #[serde(default = "obj_chat_chunk")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChatChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl ChatCompletionChunk {
    /// A chunk with one choice's delta.
    pub fn delta(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        index: u32,
        delta: ChatDelta,
        finish_reason: Option<FinishReason>,
    ) -> Self {
        ChatCompletionChunk {
            id: id.into(),
            object: obj_chat_chunk(),
            created,
            model: model.into(),
            choices: vec![ChatChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason,
                stop_reason: None,
            }],
            usage: None,
            system_fingerprint: None,
        }
    }

    /// The final usage-only chunk (`choices: []`).
    pub fn usage_only(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        usage: Usage,
    ) -> Self {
        ChatCompletionChunk {
            id: id.into(),
            object: obj_chat_chunk(),
            created,
            model: model.into(),
            choices: Vec::new(),
            usage: Some(usage),
            system_fingerprint: None,
        }
    }
}
