//! Bad input on purpose, over real HTTP: every failure is an OpenAI error body with the
//! right status and the parameter named; overload answers 429 at once; a client that
//! disconnects mid-stream gets its sequence aborted and its blocks freed.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sluice_engine::EngineConfig;
use sluice_server::ServerConfig;

/// Status and parsed error body; asserts the OpenAI error shape.
async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = r.text().await.expect("body");
    assert!(
        ct.starts_with("application/json"),
        "{status} content-type {ct}: {text}"
    );
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    let err = &v["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(err["type"].is_string(), "{v}");
    assert!(
        err.get("param").is_some() && err.get("code").is_some(),
        "param and code always present: {v}"
    );
    (status, err.clone())
}

async fn post_raw(s: &TestServer, path: &str, body: &str) -> reqwest::Response {
    s.client
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("sent")
}

async fn stories(server_cfg: ServerConfig) -> Option<TestServer> {
    let p = test_model(STORIES)?;
    Some(start(&p, EngineConfig::default(), server_cfg).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_openai_errors_naming_the_parameter() {
    let Some(s) = stories(ServerConfig::default()).await else {
        return;
    };
    let m = s.model.clone();

    // Invalid JSON.
    let (st, e) = error_of(post_raw(&s, "/v1/completions", r#"{"prompt": "Once"#).await).await;
    assert_eq!(st, 400);
    assert_eq!(e["type"], "invalid_request_error");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("Invalid JSON")),
        "{e}"
    );
    assert!(e["param"].is_null());

    // Wrong type, out of range, negative max_tokens: each names its parameter.
    let cases = [
        (
            json!({"model": m, "prompt": "Once", "temperature": "hot"}),
            "temperature",
        ),
        (json!({"model": m, "prompt": "Once", "top_p": 2.0}), "top_p"),
        (
            json!({"model": m, "prompt": "Once", "max_tokens": -5}),
            "max_tokens",
        ),
        (
            json!({"model": m, "prompt": "Once", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"model": m, "prompt": "Once", "logit_bias": {"100000": 1}}),
            "logit_bias",
        ),
        (
            json!({"model": m, "prompt": "Once", "stop_token_ids": [99999]}),
            "stop_token_ids",
        ),
        (json!({"model": m, "prompt": "Once", "n": 0}), "n"),
        (
            json!({"model": m, "prompt": "Once", "presence_penalty": 3}),
            "presence_penalty",
        ),
        (
            json!({"model": m, "prompt": "Once", "logprobs": 50}),
            "logprobs",
        ),
        (json!({"model": m, "prompt": [1, 2, 100000]}), "prompt"),
        (json!({"model": m, "prompt": []}), "prompt"),
        (json!({"model": m}), "prompt"),
        (
            json!({"model": m, "prompt": "Once", "stream": "yes"}),
            "stream",
        ),
    ];
    for (body, param) in cases {
        let (st, e) = error_of(s.post("/v1/completions", &body).await).await;
        assert_eq!(st, 400, "{body}: {e}");
        assert_eq!(e["param"], param, "{body}: {e}");
        assert_eq!(e["type"], "invalid_request_error");
    }
    let (_, e) = error_of(
        s.post(
            "/v1/completions",
            &json!({"model": m, "prompt": "x", "max_tokens": -5}),
        )
        .await,
    )
    .await;
    assert!(
        e["message"].as_str().is_some_and(|t| t.contains("-5")),
        "{e}"
    );

    // Prompt + max_tokens beyond the context (stories260K: 512) names both numbers.
    let long: Vec<u32> = (0..500).map(|i| 3 + (i % 400)).collect();
    let body = json!({"model": m, "prompt": long, "max_tokens": 100});
    let (st, e) = error_of(s.post("/v1/completions", &body).await).await;
    assert_eq!(st, 400);
    assert_eq!(e["code"], "context_length_exceeded");
    let msg = e["message"].as_str().unwrap_or_default();
    for n in ["512", "500", "100", "600"] {
        assert!(msg.contains(n), "{n} missing from {msg:?}");
    }
    // A prompt longer than the context with no max_tokens.
    let longer: Vec<u32> = (0..600).map(|i| 3 + (i % 400)).collect();
    let (st, e) = error_of(
        s.post("/v1/completions", &json!({"model": m, "prompt": longer}))
            .await,
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|t| t.contains("600") && t.contains("512")),
        "{e}"
    );

    // Unknown model: 404.
    let (st, e) = error_of(
        s.post("/v1/completions", &completion("gpt-5", "Once", 4))
            .await,
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(e["type"], "not_found_error");
    assert_eq!(e["param"], "model");
    let chat = json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]});
    let (st, _) = error_of(s.post("/v1/chat/completions", &chat).await).await;
    assert_eq!(st, 404);

    // This model has no chat template.
    let chat = json!({"model": m, "messages": [{"role": "user", "content": "hi"}]});
    let (st, e) = error_of(s.post("/v1/chat/completions", &chat).await).await;
    assert_eq!(st, 400);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|t| t.contains("chat template")),
        "{e}"
    );
    let chat = json!({"model": m, "messages": []});
    let (st, e) = error_of(s.post("/v1/chat/completions", &chat).await).await;
    assert_eq!((st, e["param"].as_str()), (400, Some("messages")));

    // Unsupported options are refused, not ignored.
    let (st, e) = error_of(
        s.post(
            "/v1/completions",
            &json!({"model": m, "prompt": "x", "suffix": "y"}),
        )
        .await,
    )
    .await;
    assert_eq!((st, e["param"].as_str()), (400, Some("suffix")));

    // The server still works after all that.
    let ok = s
        .post_ok("/v1/completions", &completion(&m, "Once upon a time", 5))
        .await;
    assert_eq!(
        ok["usage"]["completion_tokens"].as_u64().map(|c| c <= 5),
        Some(true)
    );
    s.wait_idle(Duration::from_secs(10)).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_body_limit() {
    let cfg = ServerConfig {
        api_key: Some("sekrit-key".into()),
        max_body_bytes: 2048,
        ..ServerConfig::default()
    };
    let Some(s) = stories(cfg).await else { return };
    let body = completion(&s.model, "Once upon a time", 4);
    // No key, wrong key, wrong scheme: 401.
    let (st, e) = error_of(s.post("/v1/completions", &body).await).await;
    assert_eq!(st, 401);
    assert_eq!(e["type"], "authentication_error");
    for auth in [
        "Bearer wrong",
        "Bearer sekrit-ke",
        "Bearer sekrit-key-and-more",
        "Basic sekrit-key",
    ] {
        let r = s
            .client
            .post(s.url("/v1/completions"))
            .header("authorization", auth)
            .json(&body)
            .send()
            .await
            .expect("sent");
        let (st, _) = error_of(r).await;
        assert_eq!(st, 401, "{auth}");
    }
    let r = s
        .client
        .get(s.url("/v1/models"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
    // The right key works; health and metrics are open.
    let r = s
        .client
        .post(s.url("/v1/completions"))
        .bearer_auth("sekrit-key")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.client
            .get(s.url("/health"))
            .send()
            .await
            .expect("health")
            .status(),
        200
    );
    assert_eq!(
        s.client
            .get(s.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .status(),
        200
    );

    // A body over the limit: 413 with an OpenAI error.
    let big = json!({"model": s.model, "prompt": "x".repeat(4096)});
    let r = s
        .client
        .post(s.url("/v1/completions"))
        .bearer_auth("sekrit-key")
        .json(&big)
        .send()
        .await
        .expect("sent");
    let (st, e) = error_of(r).await;
    assert_eq!(st, 413);
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("2048")),
        "{e}"
    );
    s.shutdown().await;
}

/// max_pending 1: while one stream is in flight a second request gets 429 at once;
/// dropping the stream mid-way aborts its sequence and frees its blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_429_and_disconnect_mid_stream() {
    let Some(p) = test_model(SMOLLM) else { return };
    let cfg = EngineConfig {
        max_model_len: Some(1024),
        num_blocks: Some(128),
        ..EngineConfig::default()
    };
    let s = start(
        &p,
        cfg,
        ServerConfig {
            max_pending: 1,
            ..ServerConfig::default()
        },
    )
    .await;
    let long = json!({
        "model": s.model, "prompt": "Once upon a time", "max_tokens": 600, "ignore_eos": true,
        "temperature": 0, "stream": true
    });
    let r = s.post("/v1/completions", &long).await;
    assert_eq!(r.status(), 200);
    let mut sse = SseReader::new(r);
    let first = sse.next_data().await.expect("a first chunk");
    assert!(first.contains("text_completion"), "{first}");

    // The permit is held by the stream: the next request is turned away at once.
    let t0 = std::time::Instant::now();
    let (st, e) = error_of(
        s.post("/v1/completions", &completion(&s.model, "Hello", 2))
            .await,
    )
    .await;
    assert_eq!(st, 429);
    assert_eq!(e["type"], "rate_limit_error");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "429 took {:?}",
        t0.elapsed()
    );
    // /metrics is a snapshot the engine publishes after each step: poll until it shows
    // the stream's sequence.
    let m = s
        .wait_for_metrics(Duration::from_secs(10), |v| {
            v("sluice:num_requests_running") == 1.0
        })
        .await;
    let v = |n: &str| sluice_server::metrics::sample_value(&m, n).unwrap_or(f64::NAN);
    assert_eq!(v("sluice:http_requests_rejected_total"), 1.0);
    assert_eq!(v("sluice:http_requests_in_flight"), 1.0);
    assert!(v("sluice:kv_cache_blocks_used") > 0.0);

    // Disconnect mid-stream.
    drop(sse);
    let m = s.wait_idle(Duration::from_secs(30)).await;
    let v = |n: &str| sluice_server::metrics::sample_value(&m, n).unwrap_or(f64::NAN);
    assert_eq!(v("sluice:requests_aborted_total"), 1.0);
    assert_eq!(v("sluice:requests_finished_total"), 0.0);
    assert_eq!(v("sluice:kv_cache_blocks_used"), 0.0);
    assert!(
        v("sluice:generation_tokens_total") < 600.0,
        "the sequence ran to the end"
    );
    assert_eq!(v("sluice:http_requests_in_flight"), 0.0);

    // The permit came back with the dropped stream.
    let ok = s
        .post_ok("/v1/completions", &completion(&s.model, "Hello", 2))
        .await;
    assert_eq!(ok["usage"]["completion_tokens"], 2);
    s.shutdown().await;
}

/// A graceful shutdown (SIGINT/SIGTERM in `serve`) lets a stream in flight finish,
/// refuses new connections, and then the server task ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_streams_in_flight() {
    let Some(p) = test_model(SMOLLM) else { return };
    let cfg = EngineConfig {
        max_model_len: Some(512),
        num_blocks: Some(64),
        ..EngineConfig::default()
    };
    let mut s = start(&p, cfg, ServerConfig::default()).await;
    let body = json!({
        "model": s.model, "prompt": "Once upon a time", "max_tokens": 40, "ignore_eos": true,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true}
    });
    let r = s.post("/v1/completions", &body).await;
    let mut sse = SseReader::new(r);
    let first = sse.next_data().await.expect("first chunk");
    s.begin_shutdown();
    // The stream runs to its end.
    let mut last = first;
    let mut done = false;
    while let Some(d) = sse.next_data().await {
        if d == "[DONE]" {
            done = true;
        } else {
            last = d;
        }
    }
    assert!(done, "stream cut by the shutdown");
    let usage: Value = serde_json::from_str(&last).expect("usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 40);
    assert!(
        s.wait_stopped(Duration::from_secs(10)).await,
        "server did not stop"
    );
    // Nothing listens any more.
    let fresh = reqwest::Client::new();
    assert!(fresh.get(s.url("/health")).send().await.is_err());
    s.shutdown().await;
}
