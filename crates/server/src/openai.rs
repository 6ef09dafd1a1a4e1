//! `/v1/completions` and `/v1/chat/completions`: from a checked request to a JSON
//! response or a Server-Sent-Events stream (`data: {json}\n\n` ... `data: [DONE]\n\n`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_protocol::{
    ApiError, ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
    ChatDelta, ChatLogprobs, ChatResponseMessage, ChatTokenLogprob, CompletionChoice,
    CompletionChunk, CompletionLogprobs, CompletionRequest, CompletionResponse, FinishReason, Role,
    TopLogprob, TopLogprobMap, Usage,
};

use crate::error::{parse_json, HttpError};
use crate::generation::{Delta, Generation, TokenLogprob};
use crate::validate::ValidatedRequest;
use crate::AppState;

/// Which endpoint is answering (they differ only in their JSON shapes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

/// Identity of one response, repeated in every chunk.
struct Meta {
    api: Api,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `cmpl-…` / `chatcmpl-…`: a per-process nonce and a counter (unique, no RNG needed).
fn response_id(prefix: &str) -> String {
    static NONCE: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nonce = *NONCE.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{nonce:016x}{n:08x}")
}

pub async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(state, body, Api::Completions).await {
        Ok(r) => r,
        Err(e) => HttpError(e).into_response(),
    }
}

pub async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(state, body, Api::Chat).await {
        Ok(r) => r,
        Err(e) => HttpError(e).into_response(),
    }
}

async fn handle(
    state: AppState,
    body: Result<Bytes, BytesRejection>,
    api: Api,
) -> Result<Response, ApiError> {
    // Admission first: when full, answer 429 before doing any work.
    let permit = state.admit()?;
    let body = body.map_err(|r| state.body_error(&r))?;
    let validator = state.validator();
    // Parsing, tokenizing and rendering the chat template are CPU work: off the I/O threads.
    let validated: ValidatedRequest = tokio::task::spawn_blocking(move || match api {
        Api::Completions => validator.completion(&parse_json::<CompletionRequest>(&body)?),
        Api::Chat => validator.chat(&parse_json::<ChatCompletionRequest>(&body)?),
    })
    .await
    .map_err(|e| ApiError::server_error(format!("request validation failed: {e}")))??;
    let gen = Generation::start(state.engine(), state.tokenizer(), &validated, permit).await?;
    let meta = Meta {
        api,
        id: response_id(if api == Api::Chat { "chatcmpl" } else { "cmpl" }),
        created: now_secs(),
        model: state.served_model_name().to_string(),
        include_usage: validated.include_usage,
    };
    if validated.stream {
        Ok(sse_response(SseStream::new(meta, gen)))
    } else {
        let json = collect(&meta, gen).await?;
        let mut resp = (StatusCode::OK, json).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

// ---------------------------------------------------------------- logprob shapes

fn completion_logprobs(lps: &[TokenLogprob]) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in lps {
        out.tokens.push(t.token.clone());
        out.token_logprobs.push(Some(t.logprob));
        let top = if t.top.is_empty() {
            vec![(t.token.clone(), t.logprob)]
        } else {
            t.top.iter().map(|(s, _, lp)| (s.clone(), *lp)).collect()
        };
        out.top_logprobs.push(Some(TopLogprobMap(top)));
        out.text_offset
            .push(t.text_offset.min(u32::MAX as usize) as u32);
    }
    out
}

fn chat_logprobs(lps: &[TokenLogprob]) -> ChatLogprobs {
    ChatLogprobs {
        content: Some(
            lps.iter()
                .map(|t| ChatTokenLogprob {
                    token: t.token.clone(),
                    logprob: t.logprob,
                    bytes: Some(t.bytes.clone()),
                    top_logprobs: t
                        .top
                        .iter()
                        .map(|(s, b, lp)| TopLogprob {
                            token: s.clone(),
                            logprob: *lp,
                            bytes: Some(b.clone()),
                        })
                        .collect(),
                })
                .collect(),
        ),
    }
}

// ---------------------------------------------------------------- non-streamed

struct Collected {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
}

async fn collect(meta: &Meta, mut gen: Generation) -> Result<String, ApiError> {
    let mut choices: Vec<Collected> = (0..gen.num_choices())
        .map(|i| Collected {
            text: gen.echo_of(i).unwrap_or_default().to_string(),
            logprobs: Vec::new(),
            finish: gen.finish_of(i),
        })
        .collect();
    while let Some(d) = gen.next_delta().await {
        let d = d?;
        if let Some(c) = choices.get_mut(d.index as usize) {
            c.text.push_str(&d.text);
            c.logprobs.extend(d.logprobs);
            if d.finish.is_some() {
                c.finish = d.finish;
            }
        }
    }
    let usage = gen.usage();
    let logprobs_on = gen.logprobs_requested();
    let json = match meta.api {
        Api::Completions => {
            let choices = choices
                .into_iter()
                .enumerate()
                .map(|(i, c)| CompletionChoice {
                    index: i as u32,
                    logprobs: logprobs_on.then(|| completion_logprobs(&c.logprobs)),
                    text: c.text,
                    finish_reason: c.finish,
                    stop_reason: None,
                })
                .collect();
            serde_json::to_string(&CompletionResponse::new(
                &meta.id,
                meta.created,
                &meta.model,
                choices,
                usage,
            ))
        }
        Api::Chat => {
            let choices = choices
                .into_iter()
                .enumerate()
                .map(|(i, c)| ChatChoice {
                    index: i as u32,
                    logprobs: logprobs_on.then(|| chat_logprobs(&c.logprobs)),
                    message: ChatResponseMessage {
                        role: Role::Assistant,
                        content: Some(c.text),
                        reasoning_content: None,
                        tool_calls: None,
                    },
                    finish_reason: c.finish,
                    stop_reason: None,
                })
                .collect();
            serde_json::to_string(&ChatCompletionResponse::new(
                &meta.id,
                meta.created,
                &meta.model,
                choices,
                usage,
            ))
        }
    };
    json.map_err(|e| ApiError::server_error(format!("response serialization failed: {e}")))
}

// ---------------------------------------------------------------- streamed

/// One SSE frame: `data: <json>\n\n`, serialized straight into its buffer.
fn frame<T: Serialize>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut buf, value).is_err() {
        buf.truncate(6);
        buf.extend_from_slice(
            ApiError::server_error("chunk serialization failed")
                .to_json()
                .as_bytes(),
        );
    }
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";

/// `CompletionChunk` with one choice, borrowing its strings (same JSON; a test checks).
#[derive(Serialize)]
struct CompletionChunkRef<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoiceRef<'a>; 1],
}

#[derive(Serialize)]
struct CompletionChoiceRef<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<CompletionLogprobs>,
    finish_reason: Option<FinishReason>,
}

/// `ChatCompletionChunk` with one choice, borrowing its strings (same JSON; a test checks).
#[derive(Serialize)]
struct ChatChunkRef<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChatChoiceRef<'a>; 1],
}

#[derive(Serialize)]
struct ChatChoiceRef<'a> {
    index: u32,
    delta: ChatDeltaRef<'a>,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<FinishReason>,
}

#[derive(Serialize)]
struct ChatDeltaRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// The state of one streamed response. Owns the `Generation` (and so the delta
/// receivers and the admission permit): when the client goes away, hyper drops the body,
/// this is dropped, and the engine aborts the sequences.
struct SseStream {
    meta: Meta,
    gen: Generation,
    queue: VecDeque<Bytes>,
    done: bool,
}

impl SseStream {
    fn new(meta: Meta, gen: Generation) -> SseStream {
        let mut s = SseStream {
            meta,
            gen,
            queue: VecDeque::new(),
            done: false,
        };
        s.opening();
        s
    }

    /// Chat: a first chunk per choice with the role. Completions: the echoed prompt.
    fn opening(&mut self) {
        for i in 0..self.gen.num_choices() {
            let echo = self.gen.echo_of(i).map(str::to_string);
            let finish = self.gen.finish_of(i);
            match self.meta.api {
                Api::Chat => {
                    let delta = ChatDelta {
                        role: Some(Role::Assistant),
                        content: Some(echo.unwrap_or_default()),
                        ..ChatDelta::default()
                    };
                    let chunk = ChatCompletionChunk::delta(
                        &self.meta.id,
                        self.meta.created,
                        &self.meta.model,
                        i as u32,
                        delta,
                        finish,
                    );
                    self.queue.push_back(frame(&chunk));
                }
                Api::Completions => {
                    if echo.is_some() || finish.is_some() {
                        let chunk = CompletionChunk::delta(
                            &self.meta.id,
                            self.meta.created,
                            &self.meta.model,
                            i as u32,
                            echo.unwrap_or_default(),
                            finish,
                        );
                        self.queue.push_back(frame(&chunk));
                    }
                }
            }
        }
    }

    fn delta_frame(&self, d: Delta) -> Option<Bytes> {
        if d.text.is_empty() && d.logprobs.is_empty() && d.finish.is_none() {
            // Text held back (a possible stop string or a partial character).
            return None;
        }
        let m = &self.meta;
        let logprobs_on = self.gen.logprobs_requested();
        // Borrowed chunk shapes: the only allocation per token is the frame itself.
        Some(match m.api {
            Api::Completions => frame(&CompletionChunkRef {
                id: &m.id,
                object: "text_completion",
                created: m.created,
                model: &m.model,
                choices: [CompletionChoiceRef {
                    index: d.index,
                    text: &d.text,
                    logprobs: logprobs_on.then(|| completion_logprobs(&d.logprobs)),
                    finish_reason: d.finish,
                }],
            }),
            Api::Chat => frame(&ChatChunkRef {
                id: &m.id,
                object: "chat.completion.chunk",
                created: m.created,
                model: &m.model,
                choices: [ChatChoiceRef {
                    index: d.index,
                    delta: ChatDeltaRef {
                        // The closing chunk of a choice has an empty delta.
                        content: (!d.text.is_empty() || d.finish.is_none())
                            .then_some(d.text.as_str()),
                    },
                    logprobs: logprobs_on.then(|| chat_logprobs(&d.logprobs)),
                    finish_reason: d.finish,
                }],
            }),
        })
    }

    fn usage_frame(&self, usage: Usage) -> Bytes {
        let m = &self.meta;
        match m.api {
            Api::Completions => frame(&CompletionChunk::usage_only(
                &m.id, m.created, &m.model, usage,
            )),
            Api::Chat => frame(&ChatCompletionChunk::usage_only(
                &m.id, m.created, &m.model, usage,
            )),
        }
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(f) = self.queue.pop_front() {
                return Some(f);
            }
            if self.done {
                return None;
            }
            match self.gen.next_delta().await {
                Some(Ok(d)) => {
                    if let Some(f) = self.delta_frame(d) {
                        return Some(f);
                    }
                }
                Some(Err(e)) => {
                    // Headers are gone already: report in-band (as vLLM does), then end.
                    tracing::error!("stream {} failed: {}", self.meta.id, e.message());
                    self.queue.push_back(frame(&e.body));
                    self.queue.push_back(Bytes::from_static(DONE_FRAME));
                    self.done = true;
                }
                None => {
                    if self.meta.include_usage {
                        let u = self.gen.usage();
                        let f = self.usage_frame(u);
                        self.queue.push_back(f);
                    }
                    self.queue.push_back(Bytes::from_static(DONE_FRAME));
                    self.done = true;
                }
            }
        }
    }
}

fn sse_response(stream: SseStream) -> Response {
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.next_frame()
            .await
            .map(|f| (Ok::<Bytes, Infallible>(f), s))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell reverse proxies (nginx) not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(frame: &Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(frame).expect("utf-8");
        let body = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("an SSE frame");
        serde_json::from_str(body).expect("JSON")
    }

    /// The borrowed hot-path chunks serialize exactly like the protocol types.
    #[test]
    fn borrowed_chunks_match_protocol_types() {
        for finish in [None, Some(FinishReason::Stop), Some(FinishReason::Length)] {
            for text in ["", "hello \"world\"\n"] {
                let lp = completion_logprobs(&[]);
                let ours = frame(&CompletionChunkRef {
                    id: "cmpl-1",
                    object: "text_completion",
                    created: 7,
                    model: "m",
                    choices: [CompletionChoiceRef {
                        index: 3,
                        text,
                        logprobs: Some(lp.clone()),
                        finish_reason: finish,
                    }],
                });
                let mut theirs = CompletionChunk::delta("cmpl-1", 7, "m", 3, text, finish);
                theirs.choices[0].logprobs = Some(lp);
                assert_eq!(
                    json_of(&ours),
                    serde_json::to_value(&theirs).expect("value")
                );

                let content = (!text.is_empty()).then_some(text);
                let ours = frame(&ChatChunkRef {
                    id: "chatcmpl-1",
                    object: "chat.completion.chunk",
                    created: 7,
                    model: "m",
                    choices: [ChatChoiceRef {
                        index: 1,
                        delta: ChatDeltaRef { content },
                        logprobs: None,
                        finish_reason: finish,
                    }],
                });
                let delta = ChatDelta {
                    content: content.map(str::to_string),
                    ..ChatDelta::default()
                };
                let theirs = ChatCompletionChunk::delta("chatcmpl-1", 7, "m", 1, delta, finish);
                assert_eq!(
                    json_of(&ours),
                    serde_json::to_value(&theirs).expect("value")
                );
            }
        }
    }
}
