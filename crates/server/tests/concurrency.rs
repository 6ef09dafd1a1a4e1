//! Serving at scale over real HTTP: many concurrent streams (mixed lengths, shared
//! prefixes, chunked prefill) and a KV cache small enough to force preemption. Every
//! greedy output must equal the same request's output when sent alone to an engine that
//! runs one sequence at a time without prefix caching (batch invariance), and nothing
//! may leak (all blocks free, nothing running, nothing aborted).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sluice_engine::EngineConfig;
use sluice_server::metrics::sample_value;
use sluice_server::ServerConfig;

/// What a client saw of one streamed request.
#[derive(Debug, PartialEq)]
struct Outcome {
    text: String,
    finish: String,
    completion_tokens: u64,
}

async fn run_stream(s: &TestServer, chat: bool, body: &Value) -> Outcome {
    let path = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let (events, done) = s.stream(path, body).await;
    assert!(done, "no [DONE] for {body}");
    let text = if chat {
        chat_stream_text(&events, 0)
    } else {
        completion_stream_text(&events, 0)
    };
    let usage = events
        .last()
        .map(|e| e["usage"].clone())
        .unwrap_or(Value::Null);
    Outcome {
        text,
        finish: stream_finish(&events, 0),
        completion_tokens: usage["completion_tokens"].as_u64().expect("usage chunk"),
    }
}

fn solo_config(max_model_len: usize) -> EngineConfig {
    EngineConfig {
        max_num_seqs: 1,
        enable_prefix_caching: false,
        max_model_len: Some(max_model_len),
        num_blocks: Some(max_model_len.div_ceil(16) + 1),
        ..EngineConfig::default()
    }
}

const PREFIXES: [&str; 3] = [
    "You are a careful assistant. Answer in one short sentence, using plain words.",
    "The following is a transcript of a long meeting about the city's new library. The \
     architect described the reading rooms, the children's corner, the roof garden and \
     the archive in the basement. The mayor asked about the budget and the schedule.",
    "Once upon a time, in a small village at the edge of a dark forest, there lived an \
     old clockmaker and his granddaughter. Every morning they opened the shop, wound the \
     clocks, swept the floor and waited for customers. One winter day a stranger walked \
     in carrying a broken pocket watch that had stopped at midnight.",
];

/// 32 distinct requests: most share one of three long prefixes; lengths and budgets
/// vary; half use the chat endpoint (the prefix as the system message).
fn requests(model: &str) -> Vec<(bool, Value)> {
    (0..32)
        .map(|i| {
            let filler = " and then some more".repeat(i % 5);
            let question = format!("Question {i}: what happens next{filler}?");
            let max_tokens = 4 + (i % 4) * 4;
            let chat = i % 2 == 1;
            let prefix = (i % 8 != 7).then(|| PREFIXES[i % 3]);
            let body = if chat {
                let mut messages = Vec::new();
                if let Some(p) = prefix {
                    messages.push(json!({"role": "system", "content": p}));
                }
                messages.push(json!({"role": "user", "content": question}));
                json!({"model": model, "messages": messages, "max_tokens": max_tokens})
            } else {
                let prompt = match prefix {
                    Some(p) => format!("{p}\n{question}"),
                    None => question,
                };
                json!({"model": model, "prompt": prompt, "max_tokens": max_tokens})
            };
            let mut body = body;
            body["temperature"] = json!(0);
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
            (chat, body)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_streams_match_solo_runs() {
    let Some(p) = test_model(SMOLLM) else { return };
    let name = ServerConfig {
        served_model_name: Some("smollm2".into()),
        ..ServerConfig::default()
    };
    // A small step budget forces chunked prefill and mixed prefill/decode batches.
    let busy_cfg = EngineConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: 128,
        max_model_len: Some(512),
        num_blocks: Some(64 * 12),
        ..EngineConfig::default()
    };
    let busy = start(&p, busy_cfg, name.clone()).await;
    let distinct = requests(&busy.model);
    // Each distinct request twice: 64 streams at once (the twins also share whole prompts).
    let reqs: Vec<&(bool, Value)> = distinct.iter().chain(distinct.iter()).collect();

    let t0 = Instant::now();
    let outcomes = futures_util::future::join_all(
        reqs.iter()
            .map(|(chat, body)| run_stream(&busy, *chat, body)),
    )
    .await;
    let busy_time = t0.elapsed();

    let m = busy.wait_idle(Duration::from_secs(30)).await;
    let v = |n: &str| sample_value(&m, n).unwrap_or(f64::NAN);
    assert_eq!(v("sluice:requests_finished_total"), 64.0);
    assert_eq!(v("sluice:requests_aborted_total"), 0.0);
    assert!(
        v("sluice:prefix_cache_hits_total") > 0.0,
        "no prefix-cache hits"
    );
    assert!(v("sluice:prefix_cache_hit_rate") > 0.0);
    assert_eq!(v("sluice:kv_cache_blocks_used"), 0.0);
    assert_eq!(v("sluice:http_requests_in_flight"), 0.0);
    assert_eq!(v("sluice:time_to_first_token_seconds_count"), 64.0);
    let generated: u64 = outcomes.iter().map(|o| o.completion_tokens).sum();
    assert_eq!(v("sluice:generation_tokens_total"), generated as f64);
    let hit_rate = v("sluice:prefix_cache_hit_rate");
    busy.shutdown().await;

    let solo = start(&p, solo_config(512), name).await;
    let t0 = Instant::now();
    for (i, (chat, body)) in distinct.iter().enumerate() {
        let alone = run_stream(&solo, *chat, body).await;
        assert!(
            !alone.text.is_empty() || alone.finish == "stop",
            "request {i}: empty text"
        );
        for (k, got) in [&outcomes[i], &outcomes[i + distinct.len()]]
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                got, &alone,
                "request {i} (copy {k}) differs between the concurrent run and alone: {body}"
            );
        }
    }
    let solo_time = t0.elapsed();
    solo.wait_idle(Duration::from_secs(10)).await;
    solo.shutdown().await;
    eprintln!(
        "64 streams: concurrent {:.2} s; the 32 distinct ones one at a time {:.2} s; {generated} tokens; \
         prefix-cache hit rate {:.2}",
        busy_time.as_secs_f64(),
        solo_time.as_secs_f64(),
        hit_rate
    );
}

/// A KV cache of 12 blocks (192 tokens) for 10 sequences that each grow to ~70 tokens:
/// the scheduler must preempt, and every request still completes with its solo output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_kv_cache_forces_preemption_without_changing_outputs() {
    let Some(p) = test_model(STORIES) else { return };
    let tight = EngineConfig {
        block_size: 16,
        num_blocks: Some(12),
        max_num_seqs: 10,
        max_num_batched_tokens: 64,
        max_model_len: Some(512),
        ..EngineConfig::default()
    };
    let busy = start(&p, tight, ServerConfig::default()).await;
    let starts = [
        "Once upon a time",
        "Lily went to the park",
        "The dog was happy",
        "Tom had a big red ball",
        "One day, a little bird",
        "The sun was hot",
        "Sue and her mom",
        "There was a cat",
        "Ben liked to play",
        "A small boat",
    ];
    let bodies: Vec<Value> = starts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "model": busy.model, "prompt": s, "max_tokens": 50 + i * 2, "temperature": 0,
                "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}
            })
        })
        .collect();
    let outcomes =
        futures_util::future::join_all(bodies.iter().map(|b| run_stream(&busy, false, b))).await;
    let m = busy.wait_idle(Duration::from_secs(30)).await;
    let v = |n: &str| sample_value(&m, n).unwrap_or(f64::NAN);
    assert!(
        v("sluice:num_preemptions_total") > 0.0,
        "no preemption happened"
    );
    assert_eq!(v("sluice:requests_finished_total"), 10.0);
    assert_eq!(v("sluice:requests_aborted_total"), 0.0);
    assert_eq!(v("sluice:kv_cache_blocks_used"), 0.0);
    assert_eq!(v("sluice:kv_cache_blocks_total"), 12.0);
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(o.finish, "length");
        assert_eq!(o.completion_tokens, 50 + i as u64 * 2);
    }
    let preemptions = v("sluice:num_preemptions_total");
    busy.shutdown().await;

    let solo = start(&p, solo_config(512), ServerConfig::default()).await;
    for (i, (b, got)) in bodies.iter().zip(&outcomes).enumerate() {
        let alone = run_stream(&solo, false, b).await;
        assert_eq!(got, &alone, "request {i} differs after preemption: {b}");
    }
    solo.shutdown().await;
    eprintln!("10 streams on 12 KV blocks: {preemptions} preemptions, outputs equal to solo runs");
}
