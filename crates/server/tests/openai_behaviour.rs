//! The OpenAI endpoints on the real SmolLM2-135M-Instruct: golden greedy answers (from
//! the model's README under SLUICE_TEST_MODELS), streaming equal to non-streaming,
//! usage, logprobs in both endpoints' formats, echo, stop strings, n, prompt batches.

mod common;

use common::*;
use serde_json::{json, Value};
use sluice_engine::EngineConfig;
use sluice_server::ServerConfig;

/// README golden: greedy continuation of "Once upon a time".
// The README story's opening, up to the first near-tie (" Nova" vs " New", 0.05 apart in
// log-prob), where int8 activations may pick either; the golden tests check the full
// text at reference precision.
const STORY_PREFIX: &str = ", the city of";
/// README golden: ids of "Once upon a time".
const STORY_IDS: [u32; 4] = [6403, 1980, 253, 655];

async fn smollm() -> Option<TestServer> {
    let p = test_model(SMOLLM)?;
    let cfg = EngineConfig {
        max_model_len: Some(2048),
        num_blocks: Some(256),
        ..EngineConfig::default()
    };
    let server_cfg = ServerConfig {
        served_model_name: Some("smollm2".into()),
        ..ServerConfig::default()
    };
    Some(start(&p, cfg, server_cfg).await)
}

fn capital_question(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 20
    })
}

/// README golden: the raw ChatML prompt (no system turn) and its greedy answer.
const CAPITAL_IDS: [u32; 16] = [
    1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
];
const CAPITAL_ANSWER: &str = "The capital of France is Paris.";
/// What SmolLM2's chat template renders for the question: it adds a default system turn
/// when the messages have none.
const CAPITAL_RENDERED: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_golden_streamed_and_not() {
    let Some(s) = smollm().await else { return };
    // The golden answer through /v1/completions with the README's token ids; the
    // end-of-turn token ends it with "stop" and is not part of the text.
    let body = json!({"model": s.model, "prompt": CAPITAL_IDS, "max_tokens": 20, "temperature": 0});
    let r = s.post_ok("/v1/completions", &body).await;
    assert_eq!(r["choices"][0]["text"], CAPITAL_ANSWER);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert_eq!(r["usage"]["prompt_tokens"], 16);

    // Chat: the template is applied (with its default system turn); the answer equals
    // a completion of the same rendered text.
    let rendered = s
        .post_ok(
            "/v1/completions",
            &completion(&s.model, CAPITAL_RENDERED, 20),
        )
        .await;
    let expected = rendered["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    let r = s
        .post_ok("/v1/chat/completions", &capital_question(&s.model))
        .await;
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], "smollm2");
    assert!(r["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
    let choice = &r["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"].as_str(),
        Some(expected.as_str())
    );
    assert_eq!(
        choice["finish_reason"],
        rendered["choices"][0]["finish_reason"]
    );
    let usage = &r["usage"];
    assert_eq!(usage["prompt_tokens"], rendered["usage"]["prompt_tokens"]);
    let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    let completion_tokens = usage["completion_tokens"]
        .as_u64()
        .expect("completion_tokens");
    assert_eq!(
        completion_tokens,
        rendered["usage"]["completion_tokens"]
            .as_u64()
            .expect("usage")
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(prompt_tokens + completion_tokens)
    );

    // With a system message of its own the template adds none: the README prompt plus
    // a system turn; check the chat path renders exactly that.
    let body = json!({
        "model": s.model, "temperature": 0, "max_tokens": 20,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "What is the capital of France?"}]
    });
    let chat = s.post_ok("/v1/chat/completions", &body).await;
    let raw = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let comp = s
        .post_ok("/v1/completions", &completion(&s.model, raw, 20))
        .await;
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        comp["choices"][0]["text"]
    );
    assert_eq!(
        chat["usage"]["prompt_tokens"],
        comp["usage"]["prompt_tokens"]
    );
    assert_eq!(
        chat["usage"]["completion_tokens"],
        comp["usage"]["completion_tokens"]
    );

    // Content given as text parts renders the same prompt.
    let mut parts = capital_question(&s.model);
    parts["messages"][0]["content"] =
        json!([{"type": "text", "text": "What is the capital of France?"}]);
    let r2 = s.post_ok("/v1/chat/completions", &parts).await;
    assert_eq!(
        r2["choices"][0]["message"]["content"].as_str(),
        Some(expected.as_str())
    );

    // Streamed, with the usage chunk.
    let mut body = capital_question(&s.model);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (events, done) = s.stream("/v1/chat/completions", &body).await;
    assert!(done, "no [DONE]");
    let first = &events[0]["choices"][0];
    assert_eq!(
        first["delta"]["role"], "assistant",
        "first chunk carries the role: {first}"
    );
    assert_eq!(chat_stream_text(&events, 0), expected);
    assert_eq!(
        stream_finish(&events, 0),
        choice["finish_reason"].as_str().expect("finish")
    );
    for e in &events {
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["id"], events[0]["id"]);
    }
    let last = events.last().expect("chunks");
    assert_eq!(
        last["choices"].as_array().map(Vec::len),
        Some(0),
        "usage chunk has no choices"
    );
    assert_eq!(last["usage"]["prompt_tokens"].as_u64(), Some(prompt_tokens));
    assert_eq!(
        last["usage"]["completion_tokens"].as_u64(),
        Some(completion_tokens)
    );
    // Only the last chunk carries usage.
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e.get("usage").is_none_or(Value::is_null)));
    // Without include_usage there is no usage chunk.
    body["stream_options"] = json!({"include_usage": false});
    let (events, done) = s.stream("/v1/chat/completions", &body).await;
    assert!(done);
    assert!(events
        .iter()
        .all(|e| e.get("usage").is_none_or(Value::is_null)));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_golden_echo_tokens_batch_stop() {
    let Some(s) = smollm().await else { return };
    let r = s
        .post_ok(
            "/v1/completions",
            &completion(&s.model, "Once upon a time", 12),
        )
        .await;
    assert_eq!(r["object"], "text_completion");
    let text = r["choices"][0]["text"].as_str().expect("text").to_string();
    assert!(text.starts_with(STORY_PREFIX), "{text:?}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["prompt_tokens"], 4);
    assert_eq!(r["usage"]["completion_tokens"], 12);
    assert!(r["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());

    // Streamed: same text, one finish_reason.
    let mut body = completion(&s.model, "Once upon a time", 12);
    body["stream"] = json!(true);
    let (events, done) = s.stream("/v1/completions", &body).await;
    assert!(done);
    assert_eq!(completion_stream_text(&events, 0), text);
    assert_eq!(stream_finish(&events, 0), "length");

    // Token ids as the prompt.
    let body = json!({"model": s.model, "prompt": STORY_IDS, "max_tokens": 12, "temperature": 0});
    let r = s.post_ok("/v1/completions", &body).await;
    assert_eq!(r["choices"][0]["text"].as_str(), Some(text.as_str()));

    // Echo puts the prompt in front, streamed or not; max_tokens 0 returns only the prompt.
    let mut body = completion(&s.model, "Once upon a time", 12);
    body["echo"] = json!(true);
    let r = s.post_ok("/v1/completions", &body).await;
    assert_eq!(
        r["choices"][0]["text"].as_str(),
        Some(format!("Once upon a time{text}").as_str())
    );
    body["stream"] = json!(true);
    let (events, _) = s.stream("/v1/completions", &body).await;
    assert_eq!(
        completion_stream_text(&events, 0),
        format!("Once upon a time{text}")
    );
    let body =
        json!({"model": s.model, "prompt": "Once upon a time", "max_tokens": 0, "echo": true});
    let r = s.post_ok("/v1/completions", &body).await;
    assert_eq!(r["choices"][0]["text"], "Once upon a time");
    assert_eq!(r["usage"]["completion_tokens"], 0);

    // A batch of prompts gives one choice per prompt, each as if sent alone.
    let other = s
        .post_ok(
            "/v1/completions",
            &completion(&s.model, "The capital of France is", 8),
        )
        .await;
    let body = json!({
        "model": s.model, "prompt": ["Once upon a time", "The capital of France is"],
        "max_tokens": 8, "temperature": 0
    });
    let r = s.post_ok("/v1/completions", &body).await;
    let choices = r["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    let first8 = s
        .post_ok(
            "/v1/completions",
            &completion(&s.model, "Once upon a time", 8),
        )
        .await;
    assert_eq!(choices[0]["text"], first8["choices"][0]["text"]);
    assert_eq!(choices[1]["text"], other["choices"][0]["text"]);
    assert_eq!(
        r["usage"]["prompt_tokens"].as_u64(),
        Some(4 + other["usage"]["prompt_tokens"].as_u64().unwrap_or(0))
    );

    // A stop string cuts the text before it and finishes with "stop".
    let mut body = completion(&s.model, "Once upon a time", 12);
    body["stop"] = json!([" city"]);
    let r = s.post_ok("/v1/completions", &body).await;
    assert_eq!(r["choices"][0]["text"], ", the");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    body["stream"] = json!(true);
    let (events, _) = s.stream("/v1/completions", &body).await;
    assert_eq!(completion_stream_text(&events, 0), ", the");
    assert_eq!(stream_finish(&events, 0), "stop");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_in_both_formats() {
    let Some(s) = smollm().await else { return };
    // Completions: parallel arrays.
    let mut body = completion(&s.model, "Once upon a time", 8);
    body["logprobs"] = json!(3);
    let r = s.post_ok("/v1/completions", &body).await;
    let c = &r["choices"][0];
    let lp = &c["logprobs"];
    let tokens: Vec<String> = lp["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("token string").to_string())
        .collect();
    assert_eq!(tokens.len(), 8);
    assert_eq!(
        tokens.concat(),
        c["text"].as_str().expect("text"),
        "tokens spell the text"
    );
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .expect("offsets")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(offsets.len(), 8);
    assert_eq!(offsets[0], 0);
    for (i, w) in offsets.windows(2).enumerate() {
        assert_eq!(w[1] - w[0], tokens[i].chars().count() as u64);
    }
    for (i, (tlp, top)) in lp["token_logprobs"]
        .as_array()
        .expect("token_logprobs")
        .iter()
        .zip(lp["top_logprobs"].as_array().expect("top_logprobs"))
        .enumerate()
    {
        let tlp = tlp.as_f64().expect("logprob");
        assert!(tlp <= 0.0);
        let top = top.as_object().expect("top map");
        assert_eq!(top.len(), 3, "token {i}: {top:?}");
        // Greedy: the chosen token is the most likely one.
        let best = top
            .values()
            .filter_map(Value::as_f64)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!((best - tlp).abs() < 1e-5, "token {i}: {tlp} vs best {best}");
        assert!(
            top.values()
                .filter_map(Value::as_f64)
                .map(f64::exp)
                .sum::<f64>()
                <= 1.0 + 1e-4
        );
    }

    // Chat: content entries with bytes and alternatives; streamed ones agree.
    let mut body = capital_question(&s.model);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let r = s.post_ok("/v1/chat/completions", &body).await;
    let content = r["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content")
        .clone();
    assert_eq!(
        content.len() as u64,
        r["usage"]["completion_tokens"].as_u64().expect("usage")
    );
    for e in &content {
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .expect("bytes")
            .iter()
            .filter_map(|b| b.as_u64().map(|b| b as u8))
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            e["token"].as_str().expect("token")
        );
        assert_eq!(e["top_logprobs"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            e["top_logprobs"][0]["token"], e["token"],
            "greedy picks the top token"
        );
    }
    body["stream"] = json!(true);
    let (events, _) = s.stream("/v1/chat/completions", &body).await;
    let streamed: Vec<Value> = events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .flat_map(|c| {
            c["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(streamed.len(), content.len());
    for (a, b) in streamed.iter().zip(&content) {
        assert_eq!(a["token"], b["token"]);
        let (x, y) = (
            a["logprob"].as_f64().unwrap_or(1.0),
            b["logprob"].as_f64().unwrap_or(-1.0),
        );
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // Without logprobs there are none.
    let r = s
        .post_ok("/v1/chat/completions", &capital_question(&s.model))
        .await;
    assert!(r["choices"][0]["logprobs"].is_null());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_seeds_and_sampling_params() {
    let Some(s) = smollm().await else { return };
    let comma = s.tokenizer.encode(",", false).expect("encode");
    assert_eq!(comma.len(), 1);
    let comma = comma[0];
    // Greedy picks "," after "Once upon a time"; a -100 bias bans it.
    let mut body = completion(&s.model, "Once upon a time", 1);
    assert_eq!(
        s.post_ok("/v1/completions", &body).await["choices"][0]["text"],
        ","
    );
    body["logit_bias"] = json!({ comma.to_string(): -100 });
    let t = s.post_ok("/v1/completions", &body).await["choices"][0]["text"].clone();
    assert!(t.as_str().is_some_and(|t| !t.is_empty() && t != ","), "{t}");

    let body = json!({
        "model": s.model, "prompt": "Once upon a time", "max_tokens": 12,
        "temperature": 1.0, "top_p": 0.95, "top_k": 50, "min_p": 0.01, "seed": 7, "n": 3,
        "presence_penalty": 0.5, "frequency_penalty": 0.3, "repetition_penalty": 1.1,
        "user": "someone", "ignore_eos": true, "logit_bias": { comma.to_string(): -100 }
    });
    let a = s.post_ok("/v1/completions", &body).await;
    let b = s.post_ok("/v1/completions", &body).await;
    let texts = |r: &Value| -> Vec<String> {
        r["choices"]
            .as_array()
            .expect("choices")
            .iter()
            .map(|c| c["text"].as_str().expect("text").to_string())
            .collect()
    };
    let (ta, tb) = (texts(&a), texts(&b));
    assert_eq!(ta.len(), 3);
    for (i, c) in a["choices"].as_array().expect("choices").iter().enumerate() {
        assert_eq!(c["index"], i as u64);
        assert_eq!(c["finish_reason"], "length");
    }
    assert_eq!(ta, tb, "same seed, same choices");
    assert!(
        ta[0] != ta[1] || ta[1] != ta[2],
        "n choices should differ: {ta:?}"
    );
    assert_eq!(a["usage"]["completion_tokens"], 36);
    assert_eq!(a["usage"]["prompt_tokens"], 4);

    // Streamed n: every choice streams and finishes once.
    let mut body = body.clone();
    body["stream"] = json!(true);
    let (events, done) = s.stream("/v1/completions", &body).await;
    assert!(done);
    for i in 0..3 {
        assert_eq!(completion_stream_text(&events, i), ta[i as usize]);
        assert_eq!(stream_finish(&events, i), "length");
    }
    // Chat with n and max_completion_tokens.
    let body = json!({
        "model": s.model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_completion_tokens": 5, "n": 2, "seed": 1, "temperature": 0.8
    });
    let r = s.post_ok("/v1/chat/completions", &body).await;
    assert_eq!(r["choices"].as_array().map(Vec::len), Some(2));
    assert!(r["usage"]["completion_tokens"]
        .as_u64()
        .is_some_and(|c| c <= 10));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_unknown_routes() {
    let Some(s) = smollm().await else { return };
    let r: Value = s
        .client
        .get(s.url("/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(r["object"], "list");
    assert_eq!(r["data"][0]["id"], "smollm2");
    assert_eq!(r["data"][0]["object"], "model");
    assert_eq!(r["data"][0]["max_model_len"], 2048);
    let card: Value = s
        .client
        .get(s.url("/v1/models/smollm2"))
        .send()
        .await
        .expect("model card")
        .json()
        .await
        .expect("json");
    assert_eq!(card["id"], "smollm2");
    let r = s
        .client
        .get(s.url("/v1/models/gpt-5"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let h = s.client.get(s.url("/health")).send().await.expect("health");
    assert_eq!(h.status(), 200);
    let page = s.client.get(s.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200, "the web chat page");
    for path in ["/v1/nothing", "/nothing"] {
        let r = s.client.get(s.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 404, "{path}");
        let v: Value = r.json().await.expect("JSON error body");
        assert_eq!(v["error"]["type"], "not_found_error");
    }
    let r = s
        .client
        .get(s.url("/v1/completions"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.expect("JSON error body");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("GET")));
    s.shutdown().await;
}
