//! One streamed request to an OpenAI-compatible server, timed the way vLLM's
//! `benchmark_serving.py` times it.
//!
//! - TTFT: from just before the request is sent to the arrival of the first chunk that
//!   carries generated text. (vLLM counts the first chunk with `choices`, which for chat is
//!   often a role-only chunk with no token; we wait for actual content.)
//! - ITL: each gap between two consecutive content-carrying chunks. A server that puts
//!   several tokens in one chunk (speculative decoding, coalesced writes) shows one gap for
//!   them, as in vLLM.
//! - Latency (E2E): until the stream ends (`data: [DONE]` or the body closes cleanly).
//! - Output tokens: `usage.completion_tokens` from the final chunk (we always ask with
//!   `stream_options.include_usage`); otherwise the text is re-tokenized later.
//!
//! Every failure (HTTP status, an `error` object in the stream, invalid JSON, a connection
//! dropped mid-stream, a timeout) becomes `success = false` with a one-line `error`.

use crate::dataset::SampleRequest;
use crate::sse::SseParser;
use serde_json::{Map, Value};
use sluice_protocol::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, ErrorResponse, Role, StreamOptions,
};
use std::time::Duration;
use tokio::time::Instant;

/// Which OpenAI endpoint to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        match s.trim_end_matches('/') {
            "/v1/completions" | "v1/completions" | "completions" => Ok(Endpoint::Completions),
            "/v1/chat/completions" | "v1/chat/completions" | "chat" => Ok(Endpoint::Chat),
            other => Err(format!(
                "unknown endpoint {other:?}: use /v1/completions or /v1/chat/completions"
            )),
        }
    }

    pub fn path(&self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }

    /// vLLM's `backend` name for this endpoint (`openai` / `openai-chat`).
    pub fn backend_name(&self) -> &'static str {
        match self {
            Endpoint::Completions => "openai",
            Endpoint::Chat => "openai-chat",
        }
    }
}

/// Joins a base URL and an endpoint path, tolerating a base that already ends in `/v1`.
pub fn join_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    match (base.strip_suffix("/v1"), path.strip_prefix("/v1")) {
        (Some(b), Some(_)) => format!("{b}{path}"),
        _ => format!("{base}{path}"),
    }
}

/// What every request of a run shares.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub api_url: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub api_key: Option<String>,
    pub ignore_eos: bool,
    pub temperature: f32,
    /// Merged into every request body last (server-specific options).
    pub extra_body: Map<String, Value>,
    /// Limit for one whole request, stream included.
    pub timeout: Duration,
}

/// The measurement of one request. Times are in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOutcome {
    pub success: bool,
    /// Empty on success.
    pub error: String,
    pub generated_text: String,
    /// From the dataset (bench tokenizer count), if known.
    pub prompt_len: Option<usize>,
    pub usage_prompt_tokens: Option<u64>,
    pub usage_completion_tokens: Option<u64>,
    /// 0 when no token arrived.
    pub ttft: f64,
    pub itl: Vec<f64>,
    pub latency: f64,
    /// When the request was sent, seconds after the run started.
    pub start_time: f64,
}

impl RequestSpec {
    /// The JSON body for `req` (streaming, usage requested, greedy unless told otherwise).
    pub fn body(&self, req: &SampleRequest) -> Value {
        let max = u32::try_from(req.expected_output_len).unwrap_or(u32::MAX);
        let stream_options = Some(StreamOptions {
            include_usage: Some(true),
            continuous_usage_stats: None,
        });
        let ignore_eos = self.ignore_eos.then_some(true);
        let body = match self.endpoint {
            Endpoint::Completions => {
                let mut r = CompletionRequest::new(self.model.clone(), req.prompt.as_str());
                r.max_tokens = Some(max);
                r.temperature = Some(self.temperature);
                r.stream = true;
                r.stream_options = stream_options;
                r.ignore_eos = ignore_eos;
                serde_json::to_value(r)
            }
            Endpoint::Chat => {
                let msg = ChatMessage::new(Role::User, req.prompt.as_str());
                let mut r = ChatCompletionRequest::new(self.model.clone(), vec![msg]);
                // Both names: older servers (TGI, llama.cpp) read only `max_tokens`.
                r.max_tokens = Some(max);
                r.max_completion_tokens = Some(max);
                r.temperature = Some(self.temperature);
                r.stream = true;
                r.stream_options = stream_options;
                r.ignore_eos = ignore_eos;
                serde_json::to_value(r)
            }
        };
        // Serializing these plain structs cannot fail; an empty object would be rejected by
        // the server and reported, never silently accepted.
        let mut body = body.unwrap_or_else(|_| Value::Object(Map::new()));
        if let Value::Object(o) = &mut body {
            for (k, v) in &self.extra_body {
                o.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

/// `e` and its causes on one line (reqwest's top-level message alone says little).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Shortens server-provided text for an error line.
fn clip(s: &str, n: usize) -> String {
    let s = s.trim().replace('\n', " ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// The message of an OpenAI error body, or the body itself, clipped.
fn error_message(body: &str) -> String {
    match serde_json::from_str::<ErrorResponse>(body) {
        Ok(e) => clip(&e.error.message, 200),
        Err(_) => match serde_json::from_str::<Value>(body) {
            // Some servers send `{"error": "text"}` or `{"detail": ...}`.
            Ok(v) => clip(
                &v.get("error")
                    .or_else(|| v.get("detail"))
                    .or_else(|| v.get("message"))
                    .map(|e| {
                        e.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| e.to_string())
                    })
                    .unwrap_or_else(|| v.to_string()),
                200,
            ),
            Err(_) => clip(body, 200),
        },
    }
}

/// State of one streamed response while chunks arrive.
struct StreamState {
    start: Instant,
    out: RequestOutcome,
    last_token_at: Option<Instant>,
    finished: bool,
    saw_done: bool,
}

impl StreamState {
    /// Handles one SSE payload; `Err` ends the request as failed.
    fn on_event(&mut self, payload: &str, now: Instant) -> Result<(), String> {
        let payload = payload.trim();
        if payload == sluice_protocol::SSE_DONE {
            self.saw_done = true;
            return Ok(());
        }
        if payload.is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(payload)
            .map_err(|e| format!("invalid JSON in stream ({e}): {}", clip(payload, 120)))?;
        self.on_json(&v, now)
    }

    /// Handles one parsed chunk (also used for a whole non-streamed JSON response).
    fn on_json(&mut self, v: &Value, now: Instant) -> Result<(), String> {
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(format!(
                "error in stream: {}",
                error_message(&json_obj(err))
            ));
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.out.usage_prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
            self.out.usage_completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return Ok(());
        };
        let mut text = String::new();
        if let Some(t) = choice.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        // Chat: streamed `delta`, or a whole `message` when the server did not stream.
        for key in ["delta", "message"] {
            if let Some(d) = choice.get(key) {
                for field in ["reasoning_content", "reasoning", "content"] {
                    if let Some(t) = d.get(field).and_then(Value::as_str) {
                        text.push_str(t);
                    }
                }
            }
        }
        if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
            self.finished = true;
        }
        if !text.is_empty() {
            match self.last_token_at {
                None => self.out.ttft = (now - self.start).as_secs_f64(),
                Some(prev) => self.out.itl.push((now - prev).as_secs_f64()),
            }
            self.last_token_at = Some(now);
            self.out.generated_text.push_str(&text);
        }
        Ok(())
    }
}

/// `{"error": X}` as text for [`error_message`].
fn json_obj(err: &Value) -> String {
    let mut m = Map::new();
    m.insert("error".into(), err.clone());
    Value::Object(m).to_string()
}

/// Sends `req`, streams the answer and measures it. Never panics, never returns an error:
/// failures are recorded in the outcome.
pub async fn send_request(
    client: &reqwest::Client,
    spec: &RequestSpec,
    req: &SampleRequest,
    run_start: Instant,
) -> RequestOutcome {
    let start = Instant::now();
    let mut state = StreamState {
        start,
        out: RequestOutcome {
            prompt_len: req.prompt_len,
            start_time: (start - run_start).as_secs_f64(),
            ..Default::default()
        },
        last_token_at: None,
        finished: false,
        saw_done: false,
    };
    let result = tokio::time::timeout(spec.timeout, stream(client, spec, req, &mut state)).await;
    let end = Instant::now();
    let mut out = state.out;
    out.latency = (end - start).as_secs_f64();
    match result {
        Ok(Ok(())) => out.success = true,
        Ok(Err(e)) => out.error = e,
        Err(_) => {
            out.error = format!(
                "timed out after {:.0} s (--request-timeout) with {} chunks received",
                spec.timeout.as_secs_f64(),
                out.itl.len() + usize::from(out.ttft > 0.0)
            )
        }
    }
    if out.success && out.ttft == 0.0 {
        // Nothing generated (e.g. an immediate EOS): the first "token" is the end.
        out.ttft = out.latency;
    }
    out
}

async fn stream(
    client: &reqwest::Client,
    spec: &RequestSpec,
    req: &SampleRequest,
    state: &mut StreamState,
) -> Result<(), String> {
    let mut rb = client.post(&spec.api_url).json(&spec.body(req));
    if let Some(key) = &spec.api_key {
        rb = rb.bearer_auth(key);
    }
    let mut resp = rb
        .send()
        .await
        .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!(
            "HTTP {}: {}",
            status.as_u16(),
            error_message(&body)
        ));
    }
    let is_sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if !is_sse {
        // A server that ignored `stream: true`: one JSON body, TTFT = E2E.
        let body = resp
            .text()
            .await
            .map_err(|e| format!("reading the response failed: {}", error_chain(&e)))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| {
            format!(
                "response is neither SSE nor JSON ({e}): {}",
                clip(&body, 120)
            )
        })?;
        state.on_json(&v, Instant::now())?;
        return Ok(());
    }
    let mut parser = SseParser::new();
    let mut chunks = 0usize;
    loop {
        let next = resp.chunk().await.map_err(|e| {
            format!(
                "connection lost mid-stream after {chunks} chunks: {}",
                error_chain(&e)
            )
        })?;
        let Some(bytes) = next else { break };
        let now = Instant::now();
        for payload in parser.feed(&bytes) {
            chunks += 1;
            state.on_event(&payload, now)?;
        }
        if state.saw_done {
            return Ok(());
        }
    }
    if let Some(payload) = parser.finish() {
        state.on_event(&payload, Instant::now())?;
    }
    if state.saw_done || state.finished {
        Ok(())
    } else {
        Err(format!(
            "stream ended after {chunks} chunks without a finish_reason or [DONE]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_endpoints() {
        assert_eq!(
            join_url("http://h:1", "/v1/completions"),
            "http://h:1/v1/completions"
        );
        assert_eq!(
            join_url("http://h:1/", "/v1/completions"),
            "http://h:1/v1/completions"
        );
        assert_eq!(
            join_url("http://h:1/v1", "/v1/chat/completions"),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(Endpoint::parse("/v1/chat/completions"), Ok(Endpoint::Chat));
        assert!(Endpoint::parse("/v1/embeddings")
            .unwrap_err()
            .contains("/v1/embeddings"));
    }

    #[test]
    fn bodies() {
        let spec = RequestSpec {
            api_url: String::new(),
            endpoint: Endpoint::Chat,
            model: "m".into(),
            api_key: None,
            ignore_eos: true,
            temperature: 0.0,
            extra_body: [("top_k".to_string(), Value::from(1))]
                .into_iter()
                .collect(),
            timeout: Duration::from_secs(1),
        };
        let req = SampleRequest {
            prompt: "hi".into(),
            prompt_len: Some(1),
            expected_output_len: 7,
        };
        let b = spec.body(&req);
        assert_eq!(b["messages"][0]["content"], "hi");
        assert_eq!(b["max_completion_tokens"], 7);
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["top_k"], 1);
        let spec = RequestSpec {
            endpoint: Endpoint::Completions,
            ignore_eos: false,
            ..spec
        };
        let b = spec.body(&req);
        assert_eq!(b["prompt"], "hi");
        assert!(b.get("ignore_eos").is_none());
    }

    #[test]
    fn chunk_handling() {
        let t0 = Instant::now();
        let mut s = StreamState {
            start: t0,
            out: RequestOutcome::default(),
            last_token_at: None,
            finished: false,
            saw_done: false,
        };
        // A role-only chat chunk is not a token.
        s.on_event(
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            t0 + Duration::from_millis(5),
        )
        .unwrap();
        assert_eq!(s.out.ttft, 0.0);
        s.on_event(
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            t0 + Duration::from_millis(10),
        )
        .unwrap();
        s.on_event(
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]}"#,
            t0 + Duration::from_millis(25),
        )
        .unwrap();
        s.on_event(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            t0 + Duration::from_millis(26),
        )
        .unwrap();
        s.on_event("[DONE]", t0 + Duration::from_millis(27))
            .unwrap();
        assert!((s.out.ttft - 0.010).abs() < 1e-9);
        assert_eq!(s.out.itl.len(), 1);
        assert!((s.out.itl[0] - 0.015).abs() < 1e-9);
        assert_eq!(s.out.generated_text, "Hello");
        assert_eq!(s.out.usage_completion_tokens, Some(2));
        assert!(s.finished && s.saw_done);
        let e = s
            .on_event(r#"{"error":{"message":"boom","type":"server_error"}}"#, t0)
            .unwrap_err();
        assert!(e.contains("boom"), "{e}");
        let e = s.on_event("{not json", t0).unwrap_err();
        assert!(e.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(r#"{"error":{"message":"bad","type":"x","param":null,"code":null}}"#),
            "bad"
        );
        assert_eq!(error_message(r#"{"error":"plain"}"#), "plain");
        assert_eq!(error_message("<html>oops</html>"), "<html>oops</html>");
    }
}
