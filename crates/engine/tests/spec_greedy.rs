//! Greedy output with speculation equals greedy output without it, token for token, for
//! every proposer: each request alone and all of them in one mixed, chunked batch (prompt
//! chunks, decodes and drafts in the same step). The drafts must actually be used (the
//! metrics count proposals and acceptances), and no KV block is left behind in either
//! cache.

mod spec_common;

use sluice_backend::DType;
use sluice_engine::{LlmEngine, SpecConfig};
use spec_common::*;

fn check_no_leaks(e: &LlmEngine) {
    let kv = e.scheduler().kv();
    assert_eq!(
        kv.num_free_blocks(),
        kv.pool().num_blocks(),
        "target KV blocks still owned after every request finished"
    );
    if let Some(s) = e.speculator() {
        assert_eq!(
            s.num_tracked(),
            0,
            "speculation state of finished sequences kept"
        );
        assert_eq!(s.proposer_kv_blocks_in_use(), 0, "draft KV blocks leaked");
    }
}

fn spec_config(k: usize) -> SpecConfig {
    SpecConfig {
        num_speculative_tokens: k,
        // Fixed K and no batch cut, so every decode step drafts (adaptivity has its
        // own test below).
        adaptive: false,
        max_batch_tokens: 1 << 20,
        ..SpecConfig::default()
    }
}

#[test]
fn greedy_output_is_unchanged_by_every_method() {
    let dtype = DType::Q8_0;
    let reqs: Vec<_> = prompts(12, 5)
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, greedy(12 + 5 * (i % 4))))
        .collect();
    let mut base = engine(Method::Off, spec_config(1), engine_config(), dtype, 3.0);
    let want_alone = run_each(&mut base, &reqs);
    let want_batch = run_all(&mut base, &reqs);
    assert_eq!(
        want_alone, want_batch,
        "the target itself is not batch invariant"
    );
    for m in ALL_METHODS {
        for k in [1, 4] {
            let mut e = engine(m, spec_config(k), engine_config(), dtype, 3.0);
            let alone = run_each(&mut e, &reqs);
            for (i, (a, w)) in alone.iter().zip(&want_alone).enumerate() {
                assert_eq!(a, w, "{m:?} k={k}: request {i} alone differs");
            }
            check_no_leaks(&e);
            let batch = run_all(&mut e, &reqs);
            for (i, (a, w)) in batch.iter().zip(&want_alone).enumerate() {
                assert_eq!(a, w, "{m:?} k={k}: request {i} in the batch differs");
            }
            check_no_leaks(&e);
            let st = &e.metrics().spec;
            let name = match m {
                Method::Ngram => "ngram",
                _ => "draft",
            };
            let s = st.iter().find(|s| s.method == name).expect("method stats");
            assert!(s.num_draft_tokens > 0, "{m:?} k={k}: no drafts verified");
            assert!(
                s.num_accepted_tokens > 0,
                "{m:?} k={k}: nothing accepted: {s:?}"
            );
            // Fewer steps than tokens when drafts are accepted.
            eprintln!(
                "{m:?} k={k}: acceptance {:.2}, mean accepted length {:.2}, steps {}",
                s.acceptance_rate(),
                s.mean_accepted_length(),
                e.metrics().steps
            );
        }
    }
}

#[test]
fn adaptive_speculation_keeps_the_output_and_turns_itself_down() {
    let dtype = DType::Q8_0;
    let reqs: Vec<_> = prompts(6, 9).into_iter().map(|p| (p, greedy(40))).collect();
    let mut base = engine(
        Method::Off,
        SpecConfig::default(),
        engine_config(),
        dtype,
        3.0,
    );
    let want = run_all(&mut base, &reqs);
    for m in ALL_METHODS {
        let cfg = SpecConfig {
            num_speculative_tokens: 8,
            ..SpecConfig::default()
        };
        let mut e = engine(m, cfg, engine_config(), dtype, 3.0);
        assert_eq!(run_all(&mut e, &reqs), want, "{m:?}");
        check_no_leaks(&e);
    }
}

#[test]
fn the_batch_rule_turns_speculation_off_for_large_batches() {
    let dtype = DType::Q8_0;
    let reqs: Vec<_> = prompts(16, 3)
        .into_iter()
        .map(|p| (p, greedy(10)))
        .collect();
    // 16 decoding sequences with a cap of 16 rows: 16/16 - 1 = 0 drafts each.
    let cfg = SpecConfig {
        max_batch_tokens: 16,
        ..SpecConfig::default()
    };
    let ecfg = sluice_engine::EngineConfig {
        max_num_batched_tokens: 1024,
        ..engine_config()
    };
    let mut e = engine(Method::Ngram, cfg, ecfg, dtype, 3.0);
    run_all(&mut e, &reqs);
    let s = &e.metrics().spec[0];
    assert_eq!(s.num_draft_tokens, 0, "{s:?}");
    check_no_leaks(&e);
}

#[test]
fn a_request_can_turn_speculation_off_or_pick_another_method() {
    use sluice_engine::SpecOverride;
    let dtype = DType::Q8_0;
    let p = prompts(1, 21).remove(0);
    let mut base = engine(
        Method::Off,
        SpecConfig::default(),
        engine_config(),
        dtype,
        3.0,
    );
    let want = run_all(&mut base, &[(p.clone(), greedy(20))]);
    let mut e = engine(
        Method::DraftLayers,
        spec_config(3),
        engine_config(),
        dtype,
        3.0,
    );
    let mut off = greedy(20);
    off.speculative = Some(SpecOverride {
        method: Some("off".into()),
        num_speculative_tokens: None,
    });
    assert_eq!(run_all(&mut e, &[(p.clone(), off)]), want);
    assert!(e.metrics().spec.iter().all(|s| s.num_draft_tokens == 0));
    let mut ngram = greedy(20);
    ngram.speculative = Some(SpecOverride {
        method: Some("ngram".into()),
        num_speculative_tokens: Some(2),
    });
    assert_eq!(run_all(&mut e, &[(p.clone(), ngram)]), want);
    let st = &e.metrics().spec;
    let draft = st
        .iter()
        .find(|s| s.method == "draft")
        .expect("draft stats");
    assert_eq!(draft.num_draft_tokens, 0);
    check_no_leaks(&e);
}

#[test]
fn preemption_and_a_full_draft_cache_change_nothing() {
    // 48 blocks of 4 tokens for 8 requests of up to ~30 prompt + 30 output tokens: the
    // scheduler must preempt (recompute) and the draft cache (same size) runs full.
    let dtype = DType::Q8_0;
    let reqs: Vec<_> = prompts(8, 13)
        .into_iter()
        .map(|p| (p, greedy(30)))
        .collect();
    let tight = sluice_engine::EngineConfig {
        num_blocks: Some(48),
        max_num_seqs: 8,
        ..engine_config()
    };
    let mut base = engine(Method::Off, spec_config(1), engine_config(), dtype, 3.0);
    let want = run_each(&mut base, &reqs);
    for m in ALL_METHODS {
        let mut e = engine(m, spec_config(4), tight.clone(), dtype, 3.0);
        assert_eq!(run_all(&mut e, &reqs), want, "{m:?}");
        assert!(
            e.metrics().scheduler.num_preemptions > 0,
            "{m:?}: the test must preempt"
        );
        check_no_leaks(&e);
    }
}
