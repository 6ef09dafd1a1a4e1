//! Types shared by the completions and chat endpoints.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// `stop`: one string or a list of strings (OpenAI allows up to 4; vLLM allows more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopSequences {
    One(String),
    Many(Vec<String>),
}

impl StopSequences {
    /// All stop strings as a list (a single string becomes a one-element list).
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StopSequences::One(s) => vec![s.clone()],
            StopSequences::Many(v) => v.clone(),
        }
    }
}

/// `speculative` (sluice extension): this request's speculative decoding choice.
/// `{"method": "ngram" | "draft" | "off" | ..., "num_speculative_tokens": K}`; both
/// optional (absent: the server's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeculativeOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_speculative_tokens: Option<u32>,
}

/// `stream_options` (only meaningful with `stream: true`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send one last chunk with empty `choices` and the request's `usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// vLLM extension: a `usage` on every chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_usage_stats: Option<bool>,
}

/// Why generation stopped. Unknown reasons from other servers deserialize as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop string, a stop token or end-of-sequence.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    ToolCalls,
    ContentFilter,
    /// The request was cancelled or aborted by the server (vLLM uses this).
    Abort,
    #[serde(other)]
    Other,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Abort => "abort",
            FinishReason::Other => "other",
        }
    }
}

/// Token accounting of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// How many prompt tokens were served from the prefix cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: u64,
}

/// An ordered `{token: logprob}` map, as in the completions `top_logprobs` entries.
///
/// OpenAI sends a JSON object whose key order is the rank order; a `HashMap` would lose
/// that order, so this keeps the pairs in a vector and (de)serializes them as an object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobMap(pub Vec<(String, f32)>);

impl Serialize for TopLogprobMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TopLogprobMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLogprobMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping tokens to log-probabilities")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(access.size_hint().unwrap_or(0));
                while let Some((k, v)) = access.next_entry::<String, f32>()? {
                    out.push((k, v));
                }
                Ok(TopLogprobMap(out))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Object tag helpers for `#[serde(default = ...)]` on response types.
pub(crate) fn obj_text_completion() -> String {
    "text_completion".to_string()
}
pub(crate) fn obj_chat_completion() -> String {
    "chat.completion".to_string()
}
pub(crate) fn obj_chat_chunk() -> String {
    "chat.completion.chunk".to_string()
}
pub(crate) fn obj_list() -> String {
    "list".to_string()
}
pub(crate) fn obj_model() -> String {
    "model".to_string()
}

/// Sampling fields common to both endpoints, borrowed from a request for range checks.
pub(crate) struct SamplingView<'a> {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub n: Option<u32>,
    pub logit_bias: Option<&'a std::collections::BTreeMap<String, f32>>,
}

impl SamplingView<'_> {
    /// Range checks that need no model knowledge (vLLM's `SamplingParams._verify_args`
    /// bounds). Checks needing the vocabulary or context length belong to the server.
    pub(crate) fn check(&self) -> Result<(), crate::ApiError> {
        use crate::ApiError;
        fn finite(name: &str, v: f32) -> Result<(), ApiError> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(ApiError::invalid_request(
                    format!("{name} must be a finite number"),
                    Some(name),
                ))
            }
        }
        if let Some(t) = self.temperature {
            finite("temperature", t)?;
            if t < 0.0 {
                return Err(ApiError::invalid_request(
                    format!("temperature must be non-negative, got {t}"),
                    Some("temperature"),
                ));
            }
        }
        if let Some(p) = self.top_p {
            finite("top_p", p)?;
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::invalid_request(
                    format!("top_p must be in (0, 1], got {p}"),
                    Some("top_p"),
                ));
            }
        }
        if let Some(k) = self.top_k {
            // -1 (vLLM) and 0 (llama.cpp, TGI) both mean "disabled".
            if k < -1 {
                return Err(ApiError::invalid_request(
                    format!("top_k must be -1 (disabled) or at least 1, got {k}"),
                    Some("top_k"),
                ));
            }
        }
        if let Some(p) = self.min_p {
            finite("min_p", p)?;
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::invalid_request(
                    format!("min_p must be in [0, 1], got {p}"),
                    Some("min_p"),
                ));
            }
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = v {
                finite(name, v)?;
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::invalid_request(
                        format!("{name} must be in [-2, 2], got {v}"),
                        Some(name),
                    ));
                }
            }
        }
        if let Some(r) = self.repetition_penalty {
            finite("repetition_penalty", r)?;
            if r <= 0.0 {
                return Err(ApiError::invalid_request(
                    format!("repetition_penalty must be positive, got {r}"),
                    Some("repetition_penalty"),
                ));
            }
        }
        if self.n == Some(0) {
            return Err(ApiError::invalid_request("n must be at least 1", Some("n")));
        }
        if let Some(bias) = self.logit_bias {
            for (tok, b) in bias {
                if tok.parse::<u32>().is_err() {
                    return Err(ApiError::invalid_request(
                        format!("logit_bias keys must be token ids, got {tok:?}"),
                        Some("logit_bias"),
                    ));
                }
                finite("logit_bias", *b)?;
                if !(-100.0..=100.0).contains(b) {
                    return Err(ApiError::invalid_request(
                        format!(
                            "logit_bias values must be in [-100, 100], got {b} for token {tok}"
                        ),
                        Some("logit_bias"),
                    ));
                }
            }
        }
        Ok(())
    }
}
