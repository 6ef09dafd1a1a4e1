//! `/v1/completions`: request, response and streaming chunk.

use crate::common::{
    obj_text_completion, FinishReason, SamplingView, SpeculativeOptions, StopSequences,
    StreamOptions, TopLogprobMap, Usage,
};
use crate::ApiError;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// `prompt`: a string, a batch of strings, a token-id list or a batch of token-id lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    TextBatch(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatch(Vec<Vec<u32>>),
}

impl Prompt {
    /// Number of prompts this request carries (a batch counts each element).
    pub fn len(&self) -> usize {
        match self {
            Prompt::Text(_) | Prompt::Tokens(_) => 1,
            Prompt::TextBatch(v) => v.len(),
            Prompt::TokenBatch(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A hand-written deserializer so a malformed prompt gets a message naming the problem
/// rather than serde's "data did not match any variant of untagged enum".
impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        const SHAPE: &str = "prompt must be a string, an array of strings, an array of token ids \
                             or an array of arrays of token ids";
        fn token(v: &Value) -> Result<u32, String> {
            match v.as_u64() {
                Some(t) if t <= u32::MAX as u64 => Ok(t as u32),
                _ => Err(format!(
                    "prompt token ids must be non-negative integers, got {v}"
                )),
            }
        }
        let value = Value::deserialize(deserializer)?;
        match value {
            Value::String(s) => Ok(Prompt::Text(s)),
            Value::Array(items) => {
                // An empty array is an empty batch; `check_ranges` rejects it.
                let Some(first) = items.first() else {
                    return Ok(Prompt::TextBatch(Vec::new()));
                };
                match first {
                    Value::String(_) => items
                        .into_iter()
                        .map(|v| match v {
                            Value::String(s) => Ok(s),
                            other => Err(D::Error::custom(format!(
                                "{SHAPE}; found a mixed array containing {other}"
                            ))),
                        })
                        .collect::<Result<_, _>>()
                        .map(Prompt::TextBatch),
                    Value::Number(_) => items
                        .iter()
                        .map(token)
                        .collect::<Result<_, _>>()
                        .map(Prompt::Tokens)
                        .map_err(D::Error::custom),
                    Value::Array(_) => items
                        .iter()
                        .map(|row| match row {
                            Value::Array(r) => r.iter().map(token).collect::<Result<Vec<_>, _>>(),
                            other => {
                                Err(format!("{SHAPE}; found a mixed array containing {other}"))
                            }
                        })
                        .collect::<Result<_, _>>()
                        .map(Prompt::TokenBatch)
                        .map_err(D::Error::custom),
                    other => Err(D::Error::custom(format!(
                        "{SHAPE}; found an array of {other}"
                    ))),
                }
            }
            other => Err(D::Error::custom(format!("{SHAPE}; found {other}"))),
        }
    }
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}

/// `POST /v1/completions` body. Fields after `user` are vLLM extensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// Optional as in vLLM: the server may default to its only model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// OpenAI's default for this endpoint is 16; `None` is left to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Number of top alternatives to return per token (0..=5 in OpenAI, up to 20 in vLLM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Return the prompt in front of the completion.
    #[serde(default)]
    pub echo: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSequences>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Token id (as a decimal string) -> bias added to its logit, in [-100, 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_special_tokens: Option<bool>,
    /// sluice extension: speculative decoding for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeOptions>,

    /// Every field this type does not know, kept so the server can report what it ignored.
    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl CompletionRequest {
    /// A minimal request: `model`, `prompt`, everything else unset.
    pub fn new(model: impl Into<String>, prompt: impl Into<Prompt>) -> Self {
        CompletionRequest {
            model: Some(model.into()),
            prompt: prompt.into(),
            suffix: None,
            max_tokens: None,
            temperature: None,
            top_p: None,
            n: None,
            best_of: None,
            stream: false,
            stream_options: None,
            logprobs: None,
            echo: false,
            stop: None,
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: None,
            seed: None,
            user: None,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            stop_token_ids: None,
            ignore_eos: None,
            min_tokens: None,
            skip_special_tokens: None,
            include_stop_str_in_output: None,
            add_special_tokens: None,
            speculative: None,
            extra: Map::new(),
        }
    }

    /// Whether the final stream chunk should carry `usage`.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Stop strings as a list (empty when none were given).
    pub fn stop_strings(&self) -> Vec<String> {
        self.stop
            .as_ref()
            .map(StopSequences::to_vec)
            .unwrap_or_default()
    }

    /// Model-independent range checks on the sampling fields. Vocabulary and context-length
    /// checks are the server's.
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
        if self.prompt.is_empty() {
            return Err(ApiError::invalid_request(
                "prompt must not be empty",
                Some("prompt"),
            ));
        }
        let empty_tokens = match &self.prompt {
            Prompt::Tokens(t) => t.is_empty(),
            Prompt::TokenBatch(b) => b.iter().any(Vec::is_empty),
            Prompt::Text(_) | Prompt::TextBatch(_) => false,
        };
        if empty_tokens {
            return Err(ApiError::invalid_request(
                "prompt token lists must not be empty",
                Some("prompt"),
            ));
        }
        if self.max_tokens == Some(0) && !self.echo {
            return Err(ApiError::invalid_request(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ));
        }
        if let (Some(best), Some(n)) = (self.best_of, self.n) {
            if best < n {
                return Err(ApiError::invalid_request(
                    format!("best_of ({best}) must be at least n ({n})"),
                    Some("best_of"),
                ));
            }
        }
        if let Some(lp) = self.logprobs {
            if lp > 20 {
                return Err(ApiError::invalid_request(
                    format!("logprobs must be at most 20, got {lp}"),
                    Some("logprobs"),
                ));
            }
        }
        Ok(())
    }
}

/// Completions-style logprobs (parallel arrays, one entry per generated token).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    #[serde(default)]
    pub tokens: Vec<String>,
    /// `None` for the first prompt token under `echo` (it has no conditional probability).
    #[serde(default)]
    pub token_logprobs: Vec<Option<f32>>,
    #[serde(default)]
    pub top_logprobs: Vec<Option<TopLogprobMap>>,
    /// Character offset of each token in the returned text.
    #[serde(default)]
    pub text_offset: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<CompletionLogprobs>,
    /// `null` in every streamed chunk but the last of its choice.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    /// vLLM extension: the stop string or token id that ended generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Value>,
}

/// Non-streamed `/v1/completions` response (`object: "text_completion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    #[serde(default = "obj_text_completion")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl CompletionResponse {
    pub fn new(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        choices: Vec<CompletionChoice>,
        usage: Usage,
    ) -> Self {
        CompletionResponse {
            id: id.into(),
            object: obj_text_completion(),
            created,
            model: model.into(),
            choices,
            usage: Some(usage),
            system_fingerprint: None,
        }
    }
}

/// One streamed `/v1/completions` chunk. OpenAI uses `object: "text_completion"` for the
/// chunks too; the usage-only final chunk has empty `choices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChunk {
    pub id: String,
    #[serde(default = "obj_text_completion")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl CompletionChunk {
    /// A chunk carrying `text` for choice `index` (and `finish_reason` on the last one).
    pub fn delta(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        index: u32,
        text: impl Into<String>,
        finish_reason: Option<FinishReason>,
    ) -> Self {
        CompletionChunk {
            id: id.into(),
            object: obj_text_completion(),
            created,
            model: model.into(),
            choices: vec![CompletionChoice {
                index,
                text: text.into(),
                logprobs: None,
                finish_reason,
                stop_reason: None,
            }],
            usage: None,
            system_fingerprint: None,
        }
    }

    /// The final usage-only chunk sent when `stream_options.include_usage` is true.
    pub fn usage_only(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        usage: Usage,
    ) -> Self {
        CompletionChunk {
            id: id.into(),
            object: obj_text_completion(),
            created,
            model: model.into(),
            choices: Vec::new(),
            usage: Some(usage),
            system_fingerprint: None,
        }
    }
}
