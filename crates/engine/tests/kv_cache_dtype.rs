//! Greedy generation with a quantized KV cache vs the F32 cache, through the whole
//! engine (mixed batches of several prompts), on the real models under
//! SLUICE_TEST_MODELS (stories260K always; SmolLM2 when present).
//!
//! A rounded cache can flip a greedy near-tie, after which two outputs legitimately
//! part; so the test demands equal tokens up to the first difference, that difference
//! a near-tie under F32 (log-probability margin below a named bound per dtype), and
//! the chosen tokens' log-probabilities close before it (see `tolerances`).
//! The engine also sizes its pool by the dtype's bytes, and refuses Q8_0 for a model
//! whose head_dim is not a multiple of 32 (FP8, one byte per element, fits any).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_backend::{DType, Device};
use sluice_engine::sampling::SampledToken;
use sluice_engine::{EngineConfig, EngineRequest, LlmEngine, SamplingParams};
use sluice_model::arch::Model;
use sluice_model::loader::{load_model, LoadOptions, LoadedModel};
use sluice_model::KvCache;

const MAX_TOKENS: usize = 40;

fn test_model(rel: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SLUICE_TEST_MODELS") else {
        eprintln!("note: SLUICE_TEST_MODELS is not set; skipping a real-model test");
        return None;
    };
    let p = PathBuf::from(dir).join(rel);
    assert!(
        p.exists(),
        "{} missing under SLUICE_TEST_MODELS",
        p.display()
    );
    Some(p)
}

fn load(path: &Path) -> LoadedModel {
    load_model(path, &LoadOptions::default()).unwrap()
}

/// A fresh engine over the model at `path` (weights are mapped, so reloading is cheap).
fn engine(path: &Path, dtype: DType, cfg: EngineConfig) -> Result<LlmEngine, String> {
    engine_on(&Device::cpu(Some(2)), path, dtype, cfg)
}

fn engine_on(
    device: &Device,
    path: &Path,
    dtype: DType,
    cfg: EngineConfig,
) -> Result<LlmEngine, String> {
    let loaded = load(path);
    let model =
        Model::new(device, loaded.config, loaded.weights, 512).map_err(|e| e.to_string())?;
    let cfg = EngineConfig {
        kv_cache_dtype: Some(dtype),
        ..cfg
    };
    LlmEngine::new(model, Arc::new(loaded.tokenizer), &cfg).map_err(|e| e.to_string())
}

/// Greedy outputs of all prompts, submitted together (one mixed batch), with the
/// top-5 log-probabilities of every step.
fn generate(path: &Path, dtype: DType, prompts: &[&str]) -> Vec<Vec<SampledToken>> {
    let cfg = EngineConfig {
        num_blocks: Some(256),
        max_num_batched_tokens: 64,
        ..EngineConfig::default()
    };
    let mut e = engine(path, dtype, cfg).unwrap();
    assert_eq!(e.kv_cache_dtype(), dtype);
    let tokenizer = Arc::clone(e.tokenizer());
    let mut ids = Vec::new();
    for p in prompts {
        let toks = tokenizer.encode(p, true).unwrap();
        let mut params = SamplingParams::greedy(MAX_TOKENS);
        params.ignore_eos = true;
        params.logprobs = Some(5);
        ids.push(
            e.add_request(EngineRequest {
                prompt_token_ids: toks,
                params,
                cache_salt: None,
            })
            .unwrap(),
        );
    }
    let mut out = vec![Vec::new(); prompts.len()];
    e.run_to_completion(|o| {
        let i = ids.iter().position(|&id| id == o.id).unwrap();
        out[i].extend(o.logprobs.iter().cloned());
    })
    .unwrap();
    out
}

/// Largest allowed |log p| change of the chosen token while the outputs agree, and the
/// F32 margin under which a first difference counts as a near-tie (nats).
fn tolerances(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F16 => (0.02, 0.05),
        DType::BF16 => (0.1, 0.2),
        // FP8 (E4M3, no scale) keeps 4 significant bits where Q8_0 keeps about 8 near a
        // block's largest element: it parts from F32 much earlier. Measured (CPU, AVX2):
        // |d log p| up to 0.23 (SmolLM2) and 0.14 (stories260K) before the first
        // difference; first differences at F32 margins of 0.055 to 0.44 nats.
        DType::F8E4M3 => (0.4, 0.6),
        // Measured on SmolLM2: up to 0.085 over 40 tokens.
        _ => (0.2, 0.3),
    }
}

/// Each dtype's greedy output equals F32's up to its first difference, which must be a
/// near-tie under F32 (the two tokens' log-probabilities within `tolerances().1`);
/// before it, the chosen tokens' log-probabilities agree within `tolerances().0`.
fn compare(name: &str, path: &Path, dtypes: &[DType]) {
    let prompts = [
        "Once upon a time",
        "The little dog ran to the park and",
        "Lily wanted to bake a cake for her mom, so she",
        "What is the capital of France? The capital",
    ];
    let base = generate(path, DType::F32, &prompts);
    for &dtype in dtypes {
        let (lp_tol, tie) = tolerances(dtype);
        let got = generate(path, dtype, &prompts);
        for (i, (g, b)) in got.iter().zip(&base).enumerate() {
            assert_eq!(g.len(), MAX_TOKENS);
            let first_diff = g.iter().zip(b).position(|(x, y)| x.id != y.id);
            let same = first_diff.unwrap_or(MAX_TOKENS);
            let lp = |t: &SampledToken| t.logprob.unwrap();
            let drift = g[..same]
                .iter()
                .zip(&b[..same])
                .map(|(x, y)| (lp(x) - lp(y)).abs())
                .fold(0.0, f32::max);
            println!(
                "{name} {dtype} prompt {i}: equal for {same}/{MAX_TOKENS} tokens, \
                 max |d log p| {drift:.2e}"
            );
            assert!(drift < lp_tol, "{name} {dtype} prompt {i}: {drift}");
            if let Some(d) = first_diff {
                let other = g[d].id;
                let alt = b[d].top_logprobs.iter().find(|(id, _)| *id == other);
                let margin = alt.map(|&(_, l)| lp(&b[d]) - l).unwrap_or(f32::INFINITY);
                println!("  first difference at {d}: F32 margin {margin:.3} nats");
                assert!(margin < tie, "{name} {dtype} prompt {i}: not a near-tie");
            }
        }
    }
}

#[test]
fn stories260k_greedy_with_each_kv_dtype() {
    let Some(dir) = test_model("stories260K") else {
        return;
    };
    compare(
        "stories260K",
        &dir,
        &[DType::F16, DType::BF16, DType::F8E4M3],
    );

    // head_dim 8: Q8_0's blocks of 32 do not fit; a clear error at start.
    let err = engine(&dir, DType::Q8_0, EngineConfig::default())
        .err()
        .unwrap_or_default();
    assert!(err.contains("head_dim is 8"), "{err}");
    // Q4_0 is not a KV cache type.
    let err = engine(&dir, DType::Q4_0, EngineConfig::default())
        .err()
        .unwrap_or_default();
    assert!(err.contains("KV cache dtype"), "{err}");
}

#[test]
fn smollm2_greedy_with_each_kv_dtype() {
    let Some(path) = test_model("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
    else {
        return;
    };
    compare(
        "SmolLM2",
        &path,
        &[DType::F16, DType::BF16, DType::Q8_0, DType::F8E4M3],
    );
}

/// The same --kv-cache-memory holds 2x the tokens at F16/BF16, 64/17 x at Q8_0 and 4x
/// at FP8.
#[test]
fn pool_size_follows_the_dtype() {
    let Some(dir) = test_model("stories260K") else {
        return;
    };
    let config = load(&dir).config;
    let budget = 1 << 20;
    let blocks = |d: DType| {
        let cfg = EngineConfig {
            kv_cache_memory: Some(budget),
            max_num_seqs: 256,
            ..EngineConfig::default()
        };
        let e = engine(&dir, d, cfg).unwrap();
        assert_eq!(
            e.num_blocks() as u64,
            budget / KvCache::bytes_per_block(&config, e.block_size(), d) as u64
        );
        e.num_blocks()
    };
    let f32_blocks = blocks(DType::F32);
    let f16_blocks = blocks(DType::F16);
    assert_eq!(f16_blocks, 2 * f32_blocks);
    assert_eq!(blocks(DType::BF16), f16_blocks);
    // FP8: one byte per element, a quarter of F32's block.
    assert_eq!(
        4 * KvCache::bytes_per_block(&config, 16, DType::F8E4M3),
        KvCache::bytes_per_block(&config, 16, DType::F32)
    );
    assert_eq!(blocks(DType::F8E4M3), 4 * f32_blocks);
}

/// The CPU takes every `--kv-cache-dtype`; CUDA keeps its cache in f32, bf16 or fp8 and
/// refuses f16 and q8_0 at start with a message naming its choices (skipped without a
/// GPU).
#[test]
fn cuda_takes_f32_bf16_fp8_and_refuses_the_rest() {
    let cpu = Device::cpu(Some(1));
    for d in sluice_backend::cpu::attention::KV_CACHE_DTYPES {
        assert!(cpu.supports_kv_dtype(d), "{d}");
    }
    // The CPU is the oracle of every type the GPU stores.
    for d in sluice_backend::CUDA_KV_CACHE_DTYPES {
        assert!(
            sluice_backend::cpu::attention::KV_CACHE_DTYPES.contains(&d),
            "{d}"
        );
    }
    let gpu = match Device::cuda(0, sluice_backend::CudaWeightType::Auto) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("note: no CUDA device ({e}); skipping the GPU half");
            return;
        }
    };
    for d in [DType::F32, DType::BF16, DType::F8E4M3] {
        assert!(gpu.supports_kv_dtype(d), "{d}");
    }
    let Some(path) = test_model("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
    else {
        return;
    };
    for (d, name) in [(DType::F16, "f16"), (DType::Q8_0, "q8_0")] {
        assert!(!gpu.supports_kv_dtype(d), "{d}");
        let err = engine_on(&gpu, &path, d, EngineConfig::default())
            .err()
            .unwrap_or_default();
        assert!(
            err.contains(&format!("--kv-cache-dtype {name} is not supported"))
                && err.contains("f32, bf16, fp8"),
            "{err}"
        );
    }
}
