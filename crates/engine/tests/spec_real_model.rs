//! On the real SmolLM2 file (SLUICE_TEST_MODELS): greedy output with prompt lookup and
//! with a layer-skipping self-draft equals plain greedy output, alone and batched.

mod spec_common;

use std::path::PathBuf;
use std::sync::Arc;

use sluice_engine::spec::{DraftModelProposer, DraftSource, NgramProposer, Proposer};
use sluice_engine::{EngineConfig, LlmEngine, SpecConfig};
use sluice_model::arch::Model;
use sluice_model::loader::{load_model, LoadOptions};
use spec_common::{device, greedy, run_all, run_each};

const SMOLLM: &str = "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SLUICE_TEST_MODELS") else {
        eprintln!("note: SLUICE_TEST_MODELS is not set; skipping the SmolLM2 speculation test");
        return None;
    };
    let p = PathBuf::from(dir).join(SMOLLM);
    assert!(p.is_file(), "{} missing", p.display());
    Some(p)
}

fn engine(path: &std::path::Path, draft_layers: Option<usize>, ngram: bool) -> LlmEngine {
    let cfg = EngineConfig {
        num_blocks: Some(256),
        max_num_seqs: 8,
        max_num_batched_tokens: 128,
        max_model_len: Some(1024),
        ..EngineConfig::default()
    };
    let l = load_model(path, &LoadOptions::default()).unwrap();
    let mut tok = l.tokenizer;
    tok.add_eos_ids(&l.generation.eos_token_ids);
    let target = Model::new(&device(), l.config, l.weights, 1024).unwrap();
    let target_bytes = target.weight_bytes();
    let mut e = LlmEngine::new(target, Arc::new(tok), &cfg).unwrap();
    let spec = SpecConfig {
        num_speculative_tokens: 4,
        adaptive: false,
        max_batch_tokens: 1 << 20,
        ..SpecConfig::default()
    };
    let p: Option<Box<dyn Proposer>> = if ngram {
        Some(Box::new(NgramProposer::new(1, 4).unwrap()))
    } else if let Some(n) = draft_layers {
        let mut d = load_model(path, &LoadOptions::default()).unwrap();
        d.config.n_layers = n;
        let m = Model::new(&device(), d.config, d.weights, 1024).unwrap();
        Some(Box::new(
            DraftModelProposer::new(m, 256, 16, target_bytes, DraftSource::Layers(n)).unwrap(),
        ))
    } else {
        None
    };
    if let Some(p) = p {
        e.enable_speculation(spec, p).unwrap();
    }
    e
}

#[test]
fn smollm2_greedy_output_is_unchanged_by_speculation() {
    let Some(path) = model_path() else {
        return;
    };
    let mut base = engine(&path, None, false);
    let tok = Arc::clone(base.tokenizer());
    let texts = [
        "Repeat this sentence: the quick brown fox jumps over the lazy dog, and the lazy dog sleeps.",
        "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):",
        "Once upon a time",
        "The capital of France is",
    ];
    let reqs: Vec<_> = texts
        .iter()
        .map(|t| (tok.encode(t, true).unwrap(), greedy(24)))
        .collect();
    let want = run_each(&mut base, &reqs);
    for (layers, ngram) in [(None, true), (Some(24), false)] {
        let mut e = engine(&path, layers, ngram);
        assert_eq!(run_each(&mut e, &reqs), want, "{layers:?} {ngram}: alone");
        assert_eq!(run_all(&mut e, &reqs), want, "{layers:?} {ngram}: batched");
        let s = e
            .metrics()
            .spec
            .iter()
            .find(|s| s.num_draft_tokens > 0)
            .cloned();
        let s = s.expect("drafts were verified");
        eprintln!(
            "{}: acceptance {:.2}, mean accepted length {:.2}",
            s.method,
            s.acceptance_rate(),
            s.mean_accepted_length()
        );
        assert!(s.num_accepted_tokens > 0);
        let kv = e.scheduler().kv();
        assert_eq!(kv.num_free_blocks(), kv.pool().num_blocks());
        assert_eq!(
            e.speculator().map(|s| s.proposer_kv_blocks_in_use()),
            Some(0)
        );
    }
}
