//! Bad speculative configurations and requests get clear errors at start, never a
//! panic mid-request.

mod spec_common;

use std::sync::Arc;

use sluice_backend::DType;
use sluice_engine::spec::draft::{check_same_vocab, requantize_weights};
use sluice_engine::spec::{NgramProposer, SpecConfig, MAX_SPECULATIVE_TOKENS};
use sluice_engine::{EngineError, EngineRequest, LlmEngine, SpecOverride};
use sluice_model::tokenizer::Tokenizer;
use spec_common::*;

#[test]
fn bad_engine_settings_are_refused() {
    for k in [0, MAX_SPECULATIVE_TOKENS + 1, 1000] {
        let cfg = SpecConfig {
            num_speculative_tokens: k,
            ..SpecConfig::default()
        };
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("num_speculative_tokens"), "{err}");
        let tok = Arc::new(Tokenizer::synthetic(VOCAB).unwrap());
        let mut e = LlmEngine::new(target_model(DType::Q8_0, 3.0), tok, &engine_config()).unwrap();
        let r = e.enable_speculation(cfg, Box::new(NgramProposer::new(1, 2).unwrap()));
        assert!(matches!(r, Err(EngineError::Speculative(_))), "k = {k}");
    }
    let bad = [
        SpecConfig {
            ngram_min: 0,
            ..SpecConfig::default()
        },
        SpecConfig {
            ngram_min: 5,
            ngram_max: 3,
            ..SpecConfig::default()
        },
        SpecConfig {
            max_batch_tokens: 1,
            ..SpecConfig::default()
        },
        SpecConfig {
            verify_cost: f64::NAN,
            ..SpecConfig::default()
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
    }
    assert!(SpecConfig::default().validate().is_ok());
    assert!(requantize_weights(&mut sluice_model::WeightStore::new(), DType::Q8_K).is_err());
}

#[test]
fn a_draft_with_another_vocabulary_is_refused() {
    let a = Tokenizer::synthetic(VOCAB).unwrap();
    let b = Tokenizer::synthetic(VOCAB + 1).unwrap();
    let err = check_same_vocab(VOCAB, &a, VOCAB + 1, &b).unwrap_err();
    assert!(err.contains("vocabulary"), "{err}");
    let err = check_same_vocab(VOCAB, &a, VOCAB, &b).unwrap_err();
    assert!(err.contains("tokenizer"), "{err}");
    assert!(check_same_vocab(VOCAB, &a, VOCAB, &Tokenizer::synthetic(VOCAB).unwrap()).is_ok());
    // Same size, other strings: the stories260K llama2.c vocabulary vs a synthetic one.
    if let Some(dir) = std::env::var_os("SLUICE_TEST_MODELS") {
        let p = std::path::PathBuf::from(dir).join("stories260K/tok512.bin");
        let l2c = Tokenizer::from_llama2c(&p).unwrap();
        let syn = Tokenizer::synthetic(l2c.vocab_size()).unwrap();
        let n = l2c.vocab_size();
        let err = check_same_vocab(n, &l2c, n, &syn).unwrap_err();
        assert!(err.contains("token 0"), "{err}");
    }
}

#[test]
fn bad_per_request_choices_are_client_errors() {
    let mut e = engine(
        Method::Ngram,
        SpecConfig::default(),
        engine_config(),
        DType::Q8_0,
        3.0,
    );
    let req = |o: SpecOverride| EngineRequest {
        prompt_token_ids: vec![1, 2, 3],
        params: sluice_engine::SamplingParams {
            speculative: Some(o),
            ..greedy(4)
        },
        cache_salt: None,
    };
    for o in [
        SpecOverride {
            method: Some("draft".into()),
            num_speculative_tokens: None,
        },
        SpecOverride {
            method: Some("".into()),
            num_speculative_tokens: None,
        },
        SpecOverride {
            method: None,
            num_speculative_tokens: Some(MAX_SPECULATIVE_TOKENS + 1),
        },
    ] {
        let err = e.add_request(req(o.clone())).unwrap_err();
        assert!(err.is_client_error(), "{o:?}: {err}");
        assert!(err.to_string().contains("speculative"), "{err}");
    }
    assert!(e
        .add_request(req(SpecOverride {
            method: Some("off".into()),
            num_speculative_tokens: None
        }))
        .is_ok());
    // Without speculation on the engine a method cannot be asked for; "off" is fine.
    let mut plain = engine(
        Method::Off,
        SpecConfig::default(),
        engine_config(),
        DType::Q8_0,
        3.0,
    );
    let err = plain
        .add_request(req(SpecOverride {
            method: Some("ngram".into()),
            num_speculative_tokens: None,
        }))
        .unwrap_err();
    assert!(
        err.is_client_error() && err.to_string().contains("not enabled"),
        "{err}"
    );
    assert!(plain
        .add_request(req(SpecOverride {
            method: Some("off".into()),
            num_speculative_tokens: None
        }))
        .is_ok());
    // Speculation is enabled only on an idle engine.
    let r = plain.enable_speculation(
        SpecConfig::default(),
        Box::new(NgramProposer::new(1, 2).unwrap()),
    );
    assert!(r.is_err());
}
