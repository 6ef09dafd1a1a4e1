//! Lookahead decoding on the real SmolLM2-135M-Instruct (Q4_1 GGUF) from
//! `$SLUICE_TEST_MODELS`: greedy output with lookahead equals plain greedy output, token
//! for token, for story and repetitive prompts, each alone and all in one concurrent
//! batch; no KV block leaks. Prints rough tokens/s at batch 1 with and without
//! lookahead (run with `--nocapture`; timings of a debug-profile test on a busy machine
//! are indicative only). Skipped with a note when the variable is unset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sluice_backend::Device;
use sluice_engine::spec::lookahead::LookaheadConfig;
use sluice_engine::{EngineConfig, EngineRequest, LlmEngine, SamplingParams, SeqId, SpecConfig};
use sluice_model::arch::Model;
use sluice_model::loader::{load_model, LoadOptions};

fn model_path() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SLUICE_TEST_MODELS") else {
        eprintln!("SLUICE_TEST_MODELS is not set: skipping the SmolLM2 lookahead test");
        return None;
    };
    let p = PathBuf::from(dir).join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing", p.display());
    Some(p)
}

fn engine(path: &Path, lookahead: Option<LookaheadConfig>) -> LlmEngine {
    let loaded = load_model(path, &LoadOptions::default()).expect("load SmolLM2");
    let cfg = EngineConfig {
        max_model_len: Some(1024),
        num_blocks: Some(512),
        max_num_batched_tokens: 512,
        ..EngineConfig::default()
    };
    let model =
        Model::new(&Device::cpu(Some(2)), loaded.config, loaded.weights, 1024).expect("model");
    let mut e = LlmEngine::new(model, Arc::new(loaded.tokenizer), &cfg).expect("engine");
    if let Some(c) = lookahead {
        let spec = SpecConfig {
            adaptive: false,
            max_batch_tokens: 1 << 20,
            ..SpecConfig::default()
        };
        e.enable_lookahead(c, &spec).expect("lookahead");
    }
    e
}

const STORY: &str =
    "Once upon a time, in a small village at the edge of a dark forest, there lived";
const REPEAT: &str = "Copy the list exactly.\nList: apple, banana, cherry, date, elderberry, fig, \
    grape, apple, banana, cherry, date, elderberry, fig, grape, apple, banana, cherry,";

fn prompts(e: &LlmEngine) -> Vec<Vec<u32>> {
    let texts = [
        STORY,
        REPEAT,
        "The quick brown fox jumps over the lazy dog. The quick brown fox",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    ];
    texts
        .iter()
        .map(|t| e.tokenizer().encode(t, true).expect("encode"))
        .collect()
}

/// Runs `prompts` concurrently (or one by one); returns tokens per request and the
/// generated tokens per second.
fn run(
    e: &mut LlmEngine,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    alone: bool,
) -> (Vec<Vec<u32>>, f64) {
    let t0 = Instant::now();
    let mut all = Vec::new();
    let groups: Vec<&[Vec<u32>]> = if alone {
        prompts.chunks(1).collect()
    } else {
        vec![prompts]
    };
    for g in groups {
        let ids: Vec<SeqId> = g
            .iter()
            .map(|p| {
                e.add_request(EngineRequest {
                    prompt_token_ids: p.clone(),
                    params: SamplingParams {
                        ignore_eos: true,
                        ..SamplingParams::greedy(max_tokens)
                    },
                    cache_salt: None,
                })
                .expect("add")
            })
            .collect();
        let mut out: HashMap<SeqId, Vec<u32>> = HashMap::new();
        e.run_to_completion(|o| {
            out.entry(o.id)
                .or_default()
                .extend_from_slice(&o.new_token_ids)
        })
        .expect("run");
        all.extend(ids.iter().map(|id| out.remove(id).unwrap_or_default()));
    }
    let n: usize = all.iter().map(Vec::len).sum();
    (all, n as f64 / t0.elapsed().as_secs_f64())
}

#[test]
fn smollm2_greedy_output_is_unchanged_by_lookahead() {
    let Some(path) = model_path() else {
        return;
    };
    let max_tokens = 32;
    let mut base = engine(&path, None);
    let ps = prompts(&base);
    let (want, plain_tps) = run(&mut base, &ps, max_tokens, true);
    let (batch, _) = run(&mut base, &ps, max_tokens, false);
    assert_eq!(batch, want, "the target itself is not batch invariant");
    for c in [LookaheadConfig::default()] {
        let mut e = engine(&path, Some(c));
        let (alone, tps) = run(&mut e, &ps, max_tokens, true);
        for (i, (a, w)) in alone.iter().zip(&want).enumerate() {
            assert_eq!(a, w, "{c:?}: prompt {i} alone differs");
        }
        let (batch, _) = run(&mut e, &ps, max_tokens, false);
        for (i, (a, w)) in batch.iter().zip(&want).enumerate() {
            assert_eq!(a, w, "{c:?}: prompt {i} in the batch differs");
        }
        let kv = e.scheduler().kv();
        assert_eq!(
            kv.num_free_blocks(),
            kv.pool().num_blocks(),
            "KV blocks leaked"
        );
        let la = e.lookahead().expect("on");
        assert_eq!(la.num_tracked(), 0);
        let s = la.stats();
        assert!(
            s.num_accepted_tokens > 0,
            "{c:?}: nothing accepted on SmolLM2: {s:?}"
        );
        eprintln!(
            "{c:?}: acceptance {:.2}, mean accepted length {:.2}; batch-1 tokens/s {tps:.1} \
             (plain {plain_tps:.1})",
            s.acceptance_rate(),
            s.mean_accepted_length()
        );
    }
}
