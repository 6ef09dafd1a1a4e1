//! Greedy generation on a real model through the CPU backend's best path (or the one
//! `SLUICE_CPU_FEATURES` forces), checked against the reference continuation recorded
//! in the model's README.txt. Built for AArch64 by `scripts/test_arm.sh` with
//! `SLUICE_ARM_GOLDEN=1` and run under qemu, so the NEON kernels are checked end to end
//! (the `sluice` binary itself cannot be cross-built here: its TLS stack needs a C
//! cross compiler).
//!
//! `arm_golden MODEL.gguf "PROMPT" "REFERENCE CONTINUATION"`: exit 0 when the 40
//! greedy tokens decode to a prefix of the reference (or extend it).

use std::process::ExitCode;
use std::sync::Arc;

use sluice_backend::cpu::CpuBackend;
use sluice_backend::Device;
use sluice_engine::{EngineConfig, EngineRequest, LlmEngine, SamplingParams};
use sluice_model::arch::Model;
use sluice_model::loader::{load_model, LoadOptions};

const TOKENS: usize = 40;

fn generate(path: &str, prompt: &str) -> Result<(String, String), String> {
    let loaded = load_model(std::path::Path::new(path), &LoadOptions::default())
        .map_err(|e| format!("loading {path}: {e}"))?;
    let cpu = Arc::new(CpuBackend::new(Some(2)));
    let desc = cpu.describe();
    let device = Device::Cpu(cpu);
    let mut tok = loaded.tokenizer;
    tok.add_eos_ids(&loaded.generation.eos_token_ids);
    let tok = Arc::new(tok);
    let model =
        Model::new(&device, loaded.config, loaded.weights, 256).map_err(|e| e.to_string())?;
    let cfg = EngineConfig {
        max_model_len: Some(256),
        ..EngineConfig::default()
    };
    let mut e = LlmEngine::new(model, tok.clone(), &cfg).map_err(|e| e.to_string())?;
    let ids = tok.encode(prompt, true).map_err(|e| e.to_string())?;
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(TOKENS)
    };
    e.add_request(EngineRequest {
        prompt_token_ids: ids,
        params,
        cache_salt: None,
    })
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    e.run_to_completion(|o| out.extend_from_slice(&o.new_token_ids))
        .map_err(|e| e.to_string())?;
    if out.len() != TOKENS {
        return Err(format!("generated {} tokens, wanted {TOKENS}", out.len()));
    }
    let text = tok.decode(&out, true).map_err(|e| e.to_string())?;
    Ok((desc, text))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, prompt, reference] = args.as_slice() else {
        eprintln!("usage: arm_golden MODEL PROMPT REFERENCE");
        return ExitCode::from(2);
    };
    match generate(path, prompt) {
        Ok((desc, got)) => {
            let got = got.trim_end();
            // 40 tokens cover most of the recorded continuation; a shorter match would
            // mean the text stopped early.
            let ok = (reference.starts_with(got) && got.len() * 2 > reference.len())
                || got.starts_with(reference.as_str());
            println!("{desc}: {got:?}");
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("MISMATCH: wanted a prefix of {reference:?}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
