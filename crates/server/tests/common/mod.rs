//! Shared helpers of the server tests: a real engine on a real model behind a real
//! server on 127.0.0.1 (port 0), a real HTTP client, and SSE parsed as a client would.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_backend::Device;
use sluice_engine::{EngineConfig, EngineHandle, LlmEngine};
use sluice_model::arch::Model;
use sluice_model::loader::{load_model, LoadOptions};
use sluice_model::tokenizer::Tokenizer;
use sluice_server::metrics::{parse_exposition, sample_value};
use sluice_server::{AppState, ServerConfig};
use tokio::sync::oneshot;

pub const SMOLLM: &str = "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const STORIES: &str = "stories260K/stories260K.bin";

/// A model under SLUICE_TEST_MODELS, or None with a note (the test then returns early).
pub fn test_model(rel: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SLUICE_TEST_MODELS") else {
        eprintln!("note: SLUICE_TEST_MODELS is not set; skipping a real-model server test");
        return None;
    };
    let p = PathBuf::from(dir).join(rel);
    assert!(
        p.is_file(),
        "{} missing under SLUICE_TEST_MODELS",
        p.display()
    );
    Some(p)
}

/// A running server; dropping it stops the server and the engine.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub model: String,
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// POST and parse the JSON answer; panics with the body on a non-2xx status.
    pub async fn post_ok(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, body).await;
        let status = r.status();
        let text = r.text().await.expect("body read");
        assert!(status.is_success(), "{path} -> {status}: {text}");
        serde_json::from_str(&text).expect("JSON response")
    }

    /// A streamed request: every `data:` payload parsed as JSON, and whether `[DONE]`
    /// came last.
    pub async fn stream(&self, path: &str, body: &Value) -> (Vec<Value>, bool) {
        let r = self.post(path, body).await;
        let status = r.status();
        assert!(
            status.is_success(),
            "{path} -> {status}: {}",
            r.text().await.unwrap_or_default()
        );
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        let mut sse = SseReader::new(r);
        let mut events = Vec::new();
        let mut done = false;
        while let Some(data) = sse.next_data().await {
            assert!(!done, "data after [DONE]: {data}");
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(
                    serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("bad chunk {data:?}: {e}")),
                );
            }
        }
        (events, done)
    }

    pub async fn metrics(&self) -> Vec<(String, f64)> {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body");
        parse_exposition(&text).unwrap_or_else(|e| panic!("malformed /metrics: {e}\n{text}"))
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let m = self.metrics().await;
        sample_value(&m, name).unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Polls /metrics until `cond` holds (the engine publishes a snapshot after each step).
    pub async fn wait_for_metrics<F>(&self, timeout: Duration, cond: F) -> Vec<(String, f64)>
    where
        F: Fn(&dyn Fn(&str) -> f64) -> bool,
    {
        let t0 = Instant::now();
        loop {
            let m = self.metrics().await;
            let v = |n: &str| sample_value(&m, n).unwrap_or(f64::NAN);
            if cond(&v) {
                return m;
            }
            if t0.elapsed() > timeout {
                let summary: Vec<String> = m
                    .iter()
                    .filter(|(k, _)| !k.contains("_bucket"))
                    .map(|(k, x)| format!("{} = {x}", k.split('{').next().unwrap_or_default()))
                    .collect();
                panic!(
                    "metrics condition not met after {timeout:?}:\n{}",
                    summary.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to `timeout`) until the engine holds no sequences and no KV blocks.
    pub async fn wait_idle(&self, timeout: Duration) -> Vec<(String, f64)> {
        self.wait_for_metrics(timeout, |v| {
            v("sluice:num_requests_running") == 0.0
                && v("sluice:num_requests_waiting") == 0.0
                && v("sluice:kv_cache_blocks_used") == 0.0
        })
        .await
    }

    /// Starts a graceful shutdown (what SIGINT/SIGTERM do in `serve`): no new
    /// connections; requests in flight run to their end.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits up to `timeout` for the server task to end; true if it did.
    pub async fn wait_stopped(&mut self, timeout: Duration) -> bool {
        match self.task.as_mut() {
            Some(t) => {
                let done = tokio::time::timeout(timeout, t).await.is_ok();
                if done {
                    self.task = None;
                }
                done
            }
            None => true,
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let e = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads `data:` payloads off a streamed body, as an SSE client does: events end at a
/// blank line and may arrive split across or merged within network chunks.
pub struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: Vec<u8>,
}

impl SseReader {
    pub fn new(r: reqwest::Response) -> SseReader {
        SseReader {
            body: r.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    /// The next event's data, or None at the end of the body.
    pub async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(event).expect("SSE is UTF-8");
                let mut data = Vec::new();
                for line in text.lines() {
                    if let Some(d) = line.strip_prefix("data:") {
                        data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
                    }
                }
                if data.is_empty() {
                    continue; // comment or keep-alive
                }
                return Some(data.join("\n"));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => panic!("stream broke: {e}"),
                None => {
                    assert!(
                        self.buf.iter().all(|b| b.is_ascii_whitespace()),
                        "stream ended inside an event: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
            }
        }
    }
}

/// Builds the engine like `sluice generate` does and serves it on 127.0.0.1:0.
pub async fn start(
    model: &std::path::Path,
    engine_cfg: EngineConfig,
    server_cfg: ServerConfig,
) -> TestServer {
    let path = model.to_path_buf();
    let (engine, tokenizer, template, name) = tokio::task::spawn_blocking(move || {
        let loaded = load_model(&path, &LoadOptions::default()).expect("model loads");
        let name = loaded.config.name.clone();
        let template = loaded.chat_template.clone();
        let mut tokenizer = loaded.tokenizer;
        tokenizer.add_eos_ids(&loaded.generation.eos_token_ids);
        let tokenizer = Arc::new(tokenizer);
        let device = Device::cpu(None);
        let max_len = engine_cfg
            .max_model_len
            .unwrap_or(loaded.config.max_position.min(8192));
        let model =
            Model::new(&device, loaded.config, loaded.weights, max_len).expect("model builds");
        let engine =
            LlmEngine::new(model, Arc::clone(&tokenizer), &engine_cfg).expect("engine builds");
        (engine, tokenizer, template, name)
    })
    .await
    .expect("load task");
    let handle = EngineHandle::spawn(engine, name);
    let state = AppState::new(
        &server_cfg,
        handle.clone(),
        Arc::clone(&tokenizer),
        template.as_deref(),
    )
    .expect("server state");
    let model_name = state.served_model_name().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stop = async {
            let _ = rx.await;
        };
        if let Err(e) = sluice_server::serve_on(listener, state, stop, Duration::from_secs(5)).await
        {
            eprintln!("server failed: {e}");
        }
    });
    TestServer {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()
            .expect("client"),
        model: model_name,
        engine: handle,
        tokenizer,
        stop: Some(tx),
        task: Some(task),
    }
}

/// A greedy completion body.
pub fn completion(model: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

/// Concatenated text of choice `index` over completion chunks.
pub fn completion_stream_text(events: &[Value], index: u64) -> String {
    events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"].as_u64() == Some(index))
        .map(|c| c["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Concatenated `delta.content` of choice `index` over chat chunks.
pub fn chat_stream_text(events: &[Value], index: u64) -> String {
    events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"].as_u64() == Some(index))
        .filter_map(|c| c["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

/// The finish_reason of choice `index` in a stream (exactly one chunk must carry it).
pub fn stream_finish(events: &[Value], index: u64) -> String {
    let reasons: Vec<String> = events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"].as_u64() == Some(index))
        .filter_map(|c| c["finish_reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        reasons.len(),
        1,
        "choice {index} finish reasons: {reasons:?}"
    );
    reasons[0].clone()
}
