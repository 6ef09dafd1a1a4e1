//! Lookahead decoding in the engine on tiny seeded random models: greedy output equals
//! plain greedy output token for token (each request alone, all in one mixed and
//! chunked batch, under preemption, next to requests that turned it off), seeded
//! sampling gives the very same tokens, the branches are really used (acceptance
//! counters), nothing leaks, and bad shapes or requests are refused up front.

mod spec_common;

use sluice_backend::DType;
use sluice_engine::spec::lookahead::LookaheadConfig;
use sluice_engine::{
    EngineConfig, EngineError, LlmEngine, SamplingParams, SpecConfig, SpecOverride,
};
use spec_common::*;

const DTYPE: DType = DType::Q8_0;
const HEAD_SCALE: f32 = 3.0;

fn la(window: usize, ngram: usize, verify: usize) -> LookaheadConfig {
    LookaheadConfig {
        window,
        ngram,
        verify,
    }
}

/// Fixed branches every step (no adaptive turn-down, no batch cut).
fn always() -> SpecConfig {
    SpecConfig {
        adaptive: false,
        max_batch_tokens: 1 << 20,
        ..SpecConfig::default()
    }
}

fn lookahead_engine(c: LookaheadConfig, spec: &SpecConfig, cfg: EngineConfig) -> LlmEngine {
    let mut e = engine(Method::Off, SpecConfig::default(), cfg, DTYPE, HEAD_SCALE);
    e.enable_lookahead(c, spec).expect("enable lookahead");
    e
}

fn check_no_leaks(e: &LlmEngine) {
    let kv = e.scheduler().kv();
    assert_eq!(
        kv.num_free_blocks(),
        kv.pool().num_blocks(),
        "KV blocks still owned after every request finished"
    );
    assert!(!e.has_unfinished());
    let la = e.lookahead().expect("lookahead on");
    assert_eq!(
        la.num_tracked(),
        0,
        "lookahead state of finished sequences kept"
    );
}

fn reqs(
    n: usize,
    seed: u64,
    params: impl Fn(usize) -> SamplingParams,
) -> Vec<(Vec<u32>, SamplingParams)> {
    prompts(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, params(i)))
        .collect()
}

#[test]
fn greedy_output_is_unchanged_alone_and_in_a_mixed_batch() {
    let reqs = reqs(12, 5, |i| greedy(10 + 7 * (i % 5)));
    let mut base = engine(
        Method::Off,
        SpecConfig::default(),
        engine_config(),
        DTYPE,
        HEAD_SCALE,
    );
    let want = run_each(&mut base, &reqs);
    assert_eq!(
        run_all(&mut base, &reqs),
        want,
        "the target itself is not batch invariant"
    );
    let mut accepted = 0;
    for c in [la(5, 4, 5), la(3, 2, 2), la(6, 3, 8), la(1, 5, 3)] {
        let mut e = lookahead_engine(c, &always(), engine_config());
        let alone = run_each(&mut e, &reqs);
        for (i, (a, w)) in alone.iter().zip(&want).enumerate() {
            assert_eq!(a, w, "{c:?}: request {i} alone differs");
        }
        check_no_leaks(&e);
        // 12 requests with up to 30 scratch rows each in a 64-token step: prompt chunks,
        // decodes and cut branches share steps.
        let batch = run_all(&mut e, &reqs);
        for (i, (a, w)) in batch.iter().zip(&want).enumerate() {
            assert_eq!(a, w, "{c:?}: request {i} in the batch differs");
        }
        check_no_leaks(&e);
        let s = e.lookahead().expect("on").stats().clone();
        assert_eq!(
            e.metrics().spec,
            vec![s.clone()],
            "metrics carry the lookahead counters"
        );
        assert!(
            s.num_draft_tokens > 0,
            "{c:?}: no candidate verified: {s:?}"
        );
        accepted += s.num_accepted_tokens;
        eprintln!(
            "{c:?}: acceptance {:.2}, mean accepted length {:.2}, steps {}",
            s.acceptance_rate(),
            s.mean_accepted_length(),
            e.metrics().steps
        );
    }
    assert!(accepted > 0, "no candidate token was ever accepted");
}

#[test]
fn preemption_and_requests_without_lookahead_keep_the_output() {
    // 24 requests over 60 blocks of 4 tokens: sequences are preempted and recomputed,
    // some with forced tokens pending.
    let reqs = reqs(24, 17, |i| {
        let mut p = greedy(20 + 3 * (i % 6));
        if i % 5 == 2 {
            p.speculative = Some(SpecOverride {
                method: Some("off".into()),
                num_speculative_tokens: None,
            });
        } else if i % 5 == 3 {
            p.speculative = Some(SpecOverride {
                method: Some("lookahead".into()),
                num_speculative_tokens: None,
            });
        }
        p
    });
    let mut base = engine(
        Method::Off,
        SpecConfig::default(),
        engine_config(),
        DTYPE,
        HEAD_SCALE,
    );
    // The baseline engine has no speculation, so its requests carry no override.
    let plain: Vec<_> = reqs
        .iter()
        .map(|(p, params)| {
            let mut params = params.clone();
            params.speculative = None;
            (p.clone(), params)
        })
        .collect();
    let want = run_each(&mut base, &plain);
    let small = EngineConfig {
        num_blocks: Some(60),
        ..engine_config()
    };
    let mut e = lookahead_engine(la(4, 3, 4), &always(), small);
    let got = run_all(&mut e, &reqs);
    for (i, (a, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(a, w, "request {i} differs");
    }
    assert!(
        e.metrics().scheduler.num_preemptions > 0,
        "the test meant to preempt but did not"
    );
    check_no_leaks(&e);
}

#[test]
fn seeded_sampling_gives_the_same_tokens() {
    // Every emitted token is one sampler call on the logits of its exact context, in
    // order, so a seeded request draws the same tokens with or without lookahead.
    let reqs = reqs(8, 33, |i| SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(1000 + i as u64),
        ignore_eos: true,
        max_tokens: 30,
        ..SamplingParams::default()
    });
    let mut base = engine(
        Method::Off,
        SpecConfig::default(),
        engine_config(),
        DTYPE,
        HEAD_SCALE,
    );
    let want = run_each(&mut base, &reqs);
    let mut e = lookahead_engine(la(5, 4, 5), &always(), engine_config());
    assert_eq!(run_each(&mut e, &reqs), want, "alone");
    assert_eq!(run_all(&mut e, &reqs), want, "batched");
    check_no_leaks(&e);
}

#[test]
fn adaptive_rule_keeps_the_output_and_runs_fewer_branches() {
    let reqs = reqs(6, 9, |_| greedy(60));
    let mut base = engine(
        Method::Off,
        SpecConfig::default(),
        engine_config(),
        DTYPE,
        HEAD_SCALE,
    );
    let want = run_all(&mut base, &reqs);
    let mut fixed = lookahead_engine(la(5, 4, 5), &always(), engine_config());
    assert_eq!(run_all(&mut fixed, &reqs), want);
    let adaptive = SpecConfig {
        adaptive: true,
        max_batch_tokens: 1 << 20,
        ..SpecConfig::default()
    };
    let mut e = lookahead_engine(la(5, 4, 5), &adaptive, engine_config());
    assert_eq!(run_all(&mut e, &reqs), want);
    check_no_leaks(&e);
    let (f, a) = (fixed.metrics().batched_tokens, e.metrics().batched_tokens);
    eprintln!("rows computed: fixed {f}, adaptive {a}");
    assert!(
        a < f,
        "the adaptive rule computed {a} rows, fixed branches {f}"
    );
    // The batch rule: 6 decoding sequences sharing 30 rows leave no room for branches.
    let cut = SpecConfig {
        adaptive: true,
        max_batch_tokens: 30,
        ..SpecConfig::default()
    };
    let mut e = lookahead_engine(la(5, 4, 5), &cut, engine_config());
    assert_eq!(run_all(&mut e, &reqs), want);
    assert_eq!(e.lookahead().expect("on").stats().num_draft_tokens, 0);
    check_no_leaks(&e);
}

#[test]
fn bad_shapes_and_requests_are_refused_up_front() {
    let cfg = engine_config();
    for (c, what) in [
        (la(0, 4, 5), "--lookahead-window"),
        (la(5, 1, 5), "--lookahead-ngram"),
        (la(5, 4, 0), "--lookahead-verify"),
        (la(5, 99, 5), "--lookahead-ngram"),
        (la(1_000_000, 4, 5), "--lookahead-window"),
        // 1 + 8*99 rows: larger than the 512-token context.
        (la(100, 9, 2), "max_model_len"),
        // Fits the context, not the 64-token step.
        (la(10, 4, 12), "max_num_batched_tokens"),
    ] {
        let mut e = engine(
            Method::Off,
            SpecConfig::default(),
            cfg.clone(),
            DTYPE,
            HEAD_SCALE,
        );
        match e.enable_lookahead(c, &always()) {
            Err(EngineError::Speculative(m)) => assert!(m.contains(what), "{c:?}: {m}"),
            other => panic!("{c:?} accepted: {other:?}"),
        }
    }
    // Sliding-window layers: the kernel bounds the window by KV slot, not position.
    let mut mc = tiny_config(2, VOCAB);
    mc.sliding_window = Some(16);
    let w = random_weights(&mc, DTYPE, 4, HEAD_SCALE);
    let model = sluice_model::arch::Model::new(&device(), mc, w, 512).expect("model");
    let tok =
        std::sync::Arc::new(sluice_model::tokenizer::Tokenizer::synthetic(VOCAB).expect("tok"));
    let mut e = LlmEngine::new(model, tok, &engine_config()).expect("engine");
    match e.enable_lookahead(la(5, 4, 5), &always()) {
        Err(EngineError::Speculative(m)) => assert!(m.contains("sliding-window"), "{m}"),
        other => panic!("sliding window accepted: {other:?}"),
    }
    let mut e = lookahead_engine(la(5, 4, 5), &always(), engine_config());
    let mut p = greedy(5);
    p.speculative = Some(SpecOverride {
        method: Some("ngram".into()),
        num_speculative_tokens: None,
    });
    let err = e
        .add_request(sluice_engine::EngineRequest {
            prompt_token_ids: vec![1, 2, 3],
            params: p,
            cache_salt: None,
        })
        .expect_err("a method this engine does not run");
    assert!(
        err.is_client_error() && err.to_string().contains("lookahead"),
        "{err}"
    );
}
