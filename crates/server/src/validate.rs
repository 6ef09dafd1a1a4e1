//! Request validation (TGI style): an OpenAI request in, a typed, already-checked
//! `ValidatedRequest` out (token ids, sampling parameters, per-prompt limits). Nothing
//! reaches the engine before this succeeds, and every failure names its parameter.
//!
//! Runs on a blocking thread: tokenizing and rendering a chat template are CPU work.

use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_engine::SamplingParams;
use sluice_model::chat_template::ChatTemplate;
use sluice_model::tokenizer::Tokenizer;
use sluice_model::ModelError;
use sluice_protocol::{ApiError, ChatCompletionRequest, CompletionRequest, Prompt, Role};

use crate::error::context_too_long;

/// Most sequences one request may start (prompts x n).
pub const MAX_SEQUENCES_PER_REQUEST: usize = 256;

/// Facts about the served model that validation needs.
#[derive(Clone, Debug)]
pub struct ModelLimits {
    /// The name clients must send as `model`.
    pub served_name: String,
    /// Longest prompt + completion.
    pub max_model_len: usize,
    pub vocab_size: usize,
    /// Tokens the whole KV cache holds (`num_blocks * block_size`); one sequence can
    /// never keep more than this many tokens' KV.
    pub kv_capacity_tokens: usize,
}

/// One prompt ready for the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedPrompt {
    /// `[prompt_len]`, every id inside the vocabulary; never empty.
    pub token_ids: Vec<u32>,
    /// The prompt text to put in front of the completion (`echo`).
    pub echo_text: Option<String>,
    /// Completion budget of this prompt; 0 only for `echo` with `max_tokens: 0` (the
    /// prompt is returned and nothing is generated).
    pub max_tokens: usize,
}

/// A checked request: what to generate and how to report it.
#[derive(Clone, Debug)]
pub struct ValidatedRequest {
    pub prompts: Vec<ValidatedPrompt>,
    /// Shared sampling parameters; `max_tokens` (per prompt) and `seed` (per choice) are
    /// set when submitting.
    pub params: SamplingParams,
    /// Choices per prompt.
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Top alternatives per token when log-probabilities were asked for.
    pub logprobs: Option<usize>,
}

impl ValidatedRequest {
    pub fn num_sequences(&self) -> usize {
        self.prompts.len() * self.n
    }
}

/// Validates requests against one model.
pub struct Validator {
    limits: ModelLimits,
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
}

/// Sampling fields shared by both endpoints.
struct Sampling<'a> {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    logit_bias: Option<&'a std::collections::BTreeMap<String, f32>>,
    seed: Option<i64>,
    stop: Vec<String>,
    stop_token_ids: Option<&'a Vec<u32>>,
    ignore_eos: Option<bool>,
    skip_special_tokens: Option<bool>,
    logprobs: Option<usize>,
    speculative: Option<&'a sluice_protocol::SpeculativeOptions>,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

impl Validator {
    pub fn new(
        limits: ModelLimits,
        tokenizer: Arc<Tokenizer>,
        template: Option<ChatTemplate>,
    ) -> Validator {
        Validator {
            limits,
            tokenizer,
            template,
        }
    }

    pub fn limits(&self) -> &ModelLimits {
        &self.limits
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// `model` must name the served model (it may be left out).
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.limits.served_name => Err(ApiError::model_not_found(m)),
            _ => Ok(()),
        }
    }

    fn check_n(&self, n: Option<u32>, num_prompts: usize) -> Result<usize, ApiError> {
        let n = n.unwrap_or(1) as usize;
        if n.saturating_mul(num_prompts) > MAX_SEQUENCES_PER_REQUEST {
            return Err(bad(
                format!(
                    "n ({n}) times the number of prompts ({num_prompts}) must be at most {MAX_SEQUENCES_PER_REQUEST}"
                ),
                "n",
            ));
        }
        Ok(n)
    }

    fn sampling(&self, s: Sampling<'_>) -> Result<SamplingParams, ApiError> {
        let mut logit_bias = Vec::new();
        if let Some(map) = s.logit_bias {
            for (k, &v) in map {
                let id: u32 = k.parse().map_err(|_| {
                    bad(
                        format!("logit_bias keys must be token ids, got {k:?}"),
                        "logit_bias",
                    )
                })?;
                logit_bias.push((id, v));
            }
        }
        let top_k = match s.top_k {
            None => 0,
            Some(k) if k <= 0 => 0,
            Some(k) => k as usize,
        };
        let defaults = SamplingParams::default();
        let params = SamplingParams {
            temperature: s.temperature.unwrap_or(defaults.temperature),
            top_k,
            top_p: s.top_p.unwrap_or(defaults.top_p),
            min_p: s.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: s.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            presence_penalty: s.presence_penalty.unwrap_or(0.0),
            frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
            logit_bias,
            // Negative seeds are fine: any 64 bits seed the generator.
            seed: s.seed.map(|x| x as u64),
            max_tokens: 1,
            stop: s.stop,
            stop_token_ids: s.stop_token_ids.cloned().unwrap_or_default(),
            ignore_eos: s.ignore_eos.unwrap_or(false),
            logprobs: s.logprobs,
            skip_special_tokens: s.skip_special_tokens.unwrap_or(true),
            speculative: s.speculative.map(|o| sluice_engine::SpecOverride {
                method: o.method.clone(),
                num_speculative_tokens: o.num_speculative_tokens.map(|k| k as usize),
            }),
        };
        params
            .validate(self.limits.vocab_size)
            .map_err(|(message, param)| bad(message, param))?;
        Ok(params)
    }

    /// The completion budget of a `prompt_len`-token prompt: the requested one if it fits,
    /// else up to the context (and what the KV cache can hold for one sequence).
    fn max_tokens_for(
        &self,
        prompt_len: usize,
        requested: Option<u32>,
        prompt_param: &str,
    ) -> Result<usize, ApiError> {
        let l = &self.limits;
        // A sequence of T tokens keeps T - 1 tokens' KV (the last one is never fed back).
        let longest = l.max_model_len.min(l.kv_capacity_tokens + 1);
        match requested {
            Some(m) => {
                let m = m as usize;
                if prompt_len + m > l.max_model_len {
                    return Err(context_too_long(prompt_len, m, l.max_model_len));
                }
                if prompt_len + m > longest {
                    return Err(ApiError::context_length_exceeded(
                        format!(
                            "The KV cache holds {} tokens, but the request needs {} ({prompt_len} in the prompt, \
                             {m} for the completion). Reduce the prompt or max_tokens, or give the server more \
                             KV cache memory.",
                            l.kv_capacity_tokens,
                            prompt_len + m - 1
                        ),
                        Some("max_tokens"),
                    ));
                }
                Ok(m)
            }
            None => {
                if prompt_len >= longest {
                    return Err(ApiError::context_length_exceeded(
                        format!(
                            "The prompt has {prompt_len} tokens, but this model's maximum context length is {} \
                             tokens, leaving no room for a completion.",
                            longest
                        ),
                        Some(prompt_param),
                    ));
                }
                Ok(longest - prompt_len)
            }
        }
    }

    fn check_prompt_ids(&self, ids: &[u32], param: &str) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Err(bad("the prompt is empty after tokenization", param));
        }
        let vocab = self.limits.vocab_size;
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(bad(
                format!("prompt token id {t} is outside the vocabulary of {vocab} tokens"),
                param,
            ));
        }
        Ok(())
    }

    fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
        param: &str,
    ) -> Result<Vec<u32>, ApiError> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| bad(format!("the prompt cannot be tokenized: {e}"), param))
    }

    pub fn completion(&self, req: &CompletionRequest) -> Result<ValidatedRequest, ApiError> {
        self.check_model(req.model.as_deref())?;
        req.check_ranges()?;
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(bad("suffix is not supported", "suffix"));
        }
        if req.include_stop_str_in_output == Some(true) {
            return Err(bad(
                "include_stop_str_in_output is not supported",
                "include_stop_str_in_output",
            ));
        }
        if req.min_tokens.is_some_and(|m| m > 0) {
            return Err(bad("min_tokens is not supported", "min_tokens"));
        }
        if req.echo && req.logprobs.is_some() {
            return Err(bad(
                "echo together with logprobs would need prompt log-probabilities, which this server does not compute",
                "echo",
            ));
        }
        let n = self.check_n(req.n, req.prompt.len())?;
        if let Some(b) = req.best_of {
            if b as usize != n {
                return Err(bad(
                    format!("best_of other than n ({n}) is not supported, got {b}"),
                    "best_of",
                ));
            }
        }
        if !req.extra.is_empty() {
            let keys: Vec<&String> = req.extra.keys().collect();
            tracing::debug!("ignoring unknown completion fields {keys:?}");
        }
        let add_special = req.add_special_tokens.unwrap_or(true);
        let raw: Vec<(Vec<u32>, Option<String>)> = match &req.prompt {
            Prompt::Text(s) => vec![(self.encode(s, add_special, "prompt")?, Some(s.clone()))],
            Prompt::TextBatch(v) => v
                .iter()
                .map(|s| Ok((self.encode(s, add_special, "prompt")?, Some(s.clone()))))
                .collect::<Result<_, ApiError>>()?,
            Prompt::Tokens(t) => vec![(t.clone(), None)],
            Prompt::TokenBatch(b) => b.iter().map(|t| (t.clone(), None)).collect(),
        };
        let mut prompts = Vec::with_capacity(raw.len());
        for (ids, text) in raw {
            self.check_prompt_ids(&ids, "prompt")?;
            let max_tokens = if req.echo && req.max_tokens == Some(0) {
                0
            } else {
                self.max_tokens_for(ids.len(), req.max_tokens, "prompt")?
            };
            let echo_text = if req.echo {
                match text {
                    Some(t) => Some(t),
                    None => Some(self.tokenizer.decode(&ids, false).map_err(|e| {
                        bad(format!("the prompt cannot be decoded: {e}"), "prompt")
                    })?),
                }
            } else {
                None
            };
            prompts.push(ValidatedPrompt {
                token_ids: ids,
                echo_text,
                max_tokens,
            });
        }
        let params = self.sampling(Sampling {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            min_p: req.min_p,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            repetition_penalty: req.repetition_penalty,
            logit_bias: req.logit_bias.as_ref(),
            seed: req.seed,
            stop: req.stop_strings(),
            stop_token_ids: req.stop_token_ids.as_ref(),
            ignore_eos: req.ignore_eos,
            skip_special_tokens: req.skip_special_tokens,
            logprobs: req.logprobs.map(|k| k as usize),
            speculative: req.speculative.as_ref(),
        })?;
        Ok(ValidatedRequest {
            prompts,
            params,
            n,
            stream: req.stream,
            include_usage: req.stream && req.include_usage(),
            logprobs: req.logprobs.map(|k| k as usize),
        })
    }

    pub fn chat(&self, req: &ChatCompletionRequest) -> Result<ValidatedRequest, ApiError> {
        self.check_model(req.model.as_deref())?;
        req.check_ranges()?;
        let template = self.template.as_ref().ok_or_else(|| {
            bad(
                "this model has no chat template; use /v1/completions with a plain prompt",
                "messages",
            )
        })?;
        if req
            .tools
            .as_ref()
            .is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(bad("tools are not supported", "tools"));
        }
        if let Some(rf) = &req.response_format {
            let kind = rf.get("type").and_then(Value::as_str);
            if kind != Some("text") {
                return Err(bad(
                    format!("response_format {rf} is not supported; only {{\"type\": \"text\"}}"),
                    "response_format",
                ));
            }
        }
        if req.include_stop_str_in_output == Some(true) {
            return Err(bad(
                "include_stop_str_in_output is not supported",
                "include_stop_str_in_output",
            ));
        }
        if req.min_tokens.is_some_and(|m| m > 0) {
            return Err(bad("min_tokens is not supported", "min_tokens"));
        }
        let n = self.check_n(req.n, 1)?;
        if !req.extra.is_empty() {
            let keys: Vec<&String> = req.extra.keys().collect();
            tracing::debug!("ignoring unknown chat fields {keys:?}");
        }
        let continue_final = req.continue_final_message == Some(true);
        if continue_final && req.add_generation_prompt == Some(true) {
            return Err(bad(
                "continue_final_message and add_generation_prompt cannot both be true",
                "continue_final_message",
            ));
        }
        let mut messages = Vec::with_capacity(req.messages.len());
        let mut last_text = String::new();
        for (i, m) in req.messages.iter().enumerate() {
            let text = m
                .text()
                .map_err(|e| bad(format!("messages[{i}]: {e}"), "messages"))?;
            let mut obj = Map::new();
            obj.insert("role".into(), Value::from(m.role.template_name()));
            obj.insert("content".into(), Value::from(text.clone()));
            if let Some(name) = &m.name {
                obj.insert("name".into(), Value::from(name.clone()));
            }
            messages.push(Value::Object(obj));
            last_text = text;
        }
        let last_role = req.messages.last().map(|m| m.role);
        if continue_final && last_role != Some(Role::Assistant) {
            return Err(bad(
                "continue_final_message needs the last message to be from the assistant",
                "continue_final_message",
            ));
        }
        let add_generation_prompt = !continue_final && req.add_generation_prompt.unwrap_or(true);
        let extra = match &req.chat_template_kwargs {
            Some(kw) => Value::Object(kw.clone()),
            None => Value::Null,
        };
        let mut text = template
            .render_json(&Value::Array(messages), &extra, add_generation_prompt)
            .map_err(|e| match e {
                ModelError::Template(msg) => {
                    bad(format!("the chat template failed: {msg}"), "messages")
                }
                other => bad(format!("the chat template failed: {other}"), "messages"),
            })?;
        if continue_final && !last_text.is_empty() {
            // The template closes the final turn (e.g. "<|im_end|>\n"); cut right after the
            // final message's content so the model continues it.
            if let Some(pos) = text.rfind(&last_text) {
                text.truncate(pos + last_text.len());
            }
        }
        let ids = self.encode(&text, false, "messages")?;
        self.check_prompt_ids(&ids, "messages")?;
        let max_tokens = self.max_tokens_for(ids.len(), req.effective_max_tokens(), "messages")?;
        // vLLM's chat echo: the last message's content, when it is the assistant's own.
        let echo_text =
            (req.echo == Some(true) && last_role == Some(Role::Assistant)).then_some(last_text);
        let logprobs = if req.logprobs == Some(true) {
            Some(req.top_logprobs.unwrap_or(0) as usize)
        } else {
            None
        };
        let params = self.sampling(Sampling {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            min_p: req.min_p,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            repetition_penalty: req.repetition_penalty,
            logit_bias: req.logit_bias.as_ref(),
            seed: req.seed,
            stop: req.stop_strings(),
            stop_token_ids: req.stop_token_ids.as_ref(),
            ignore_eos: req.ignore_eos,
            skip_special_tokens: req.skip_special_tokens,
            logprobs,
            speculative: req.speculative.as_ref(),
        })?;
        Ok(ValidatedRequest {
            prompts: vec![ValidatedPrompt {
                token_ids: ids,
                echo_text,
                max_tokens,
            }],
            params,
            n,
            stream: req.stream,
            include_usage: req.stream && req.include_usage(),
            logprobs,
        })
    }
}
