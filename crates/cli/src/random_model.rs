//! `--random-weights PRESET`: a model of a preset's exact shapes with random weights and
//! a stand-in vocabulary, so real sizes (Llama-3.1-8B, Llama-3.2-1B, ...) can be served
//! and benchmarked where no checkpoint can be downloaded (the GPU machine).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sluice_backend::DType;
use sluice_model::loader::{GenerationDefaults, LoadedModel, ModelFormat};
use sluice_model::tokenizer::Tokenizer;

pub fn load_random(preset: &str, dtype: &str) -> Result<LoadedModel> {
    let config = sluice_roofline::presets::by_name(preset).with_context(|| {
        format!(
            "unknown preset `{preset}` for --random-weights; known: {}",
            sluice_roofline::presets::names().join(", ")
        )
    })?;
    let dtype = DType::from_name(dtype)
        .with_context(|| format!("unknown --random-weights-type `{dtype}`"))?;
    let weights = sluice_roofline::random_weights::random_weights(&config, dtype, 0x5EED)?;
    let tokenizer = Tokenizer::synthetic(config.vocab_size)?;
    let mut quant_mix = BTreeMap::new();
    quant_mix.insert(dtype.name().to_string(), 7 * config.n_layers);
    Ok(LoadedModel {
        config,
        weights,
        tokenizer,
        chat_template: None,
        generation: GenerationDefaults::default(),
        format: ModelFormat::Gguf { version: 3 },
        path: PathBuf::from(format!("random:{preset}")),
        quant_mix,
        metadata: Default::default(),
    })
}
