//! Where a model's shape comes from: a preset name, a Hugging Face `config.json`, or a
//! model file or directory (GGUF, safetensors, llama2.c), whose tensors give the stored
//! type of every weight.

use std::path::{Path, PathBuf};

use sluice_backend::DType;
use sluice_model::loader::hf_config::{parse_config, read_json};
use sluice_model::loader::{load_model_parts, LoadOptions};
use sluice_model::{ModelConfig, WeightStore};

use crate::analytic::{LayerTypes, WeightTypes};
use crate::error::{Result, RooflineError};
use crate::presets;

/// How the model was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Preset(String),
    /// A `config.json` alone: shapes without tensors.
    HfConfig(PathBuf),
    /// A loadable model (file or directory).
    File(PathBuf),
}

/// A model's shape and the stored types of its weights.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub config: ModelConfig,
    pub weights: WeightTypes,
    pub source: ModelSource,
}

/// Resolves `--model`: an existing path first, then a preset name. `weights` replaces
/// every matrix's type (a what-if for a file; the type of a preset or bare config,
/// whose default is the config's `torch_dtype` or BF16).
pub fn resolve_model(spec: &str, weights: Option<DType>) -> Result<ModelSpec> {
    let path = Path::new(spec);
    if path.exists() {
        let is_json = path.is_file() && path.extension().is_some_and(|e| e == "json");
        return if is_json && !has_safetensors_beside(path) {
            from_hf_config(path, weights)
        } else {
            let parts = load_model_parts(path, &LoadOptions::default())?;
            let config = parts.config;
            let types = match weights {
                Some(d) => WeightTypes::uniform(&config, d),
                None => types_of(&config, &parts.weights)?,
            };
            Ok(ModelSpec {
                weights: types,
                config,
                source: ModelSource::File(path.to_path_buf()),
            })
        };
    }
    match presets::by_name(spec) {
        Some(config) => Ok(ModelSpec {
            weights: WeightTypes::uniform(&config, weights.unwrap_or(DType::BF16)),
            config,
            source: ModelSource::Preset(spec.trim().to_ascii_lowercase()),
        }),
        None => Err(RooflineError::UnknownModel {
            name: spec.to_string(),
            known: presets::names().join(", "),
        }),
    }
}

fn has_safetensors_beside(config_json: &Path) -> bool {
    let Some(dir) = config_json.parent() else {
        return false;
    };
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        })
        .unwrap_or(false)
}

/// A Hugging Face `config.json` without tensors; a missing field is named.
pub fn from_hf_config(path: &Path, weights: Option<DType>) -> Result<ModelSpec> {
    let json = read_json(path)?;
    let hf = parse_config(path, &json)?;
    let vocab = hf.declared_vocab.ok_or_else(|| {
        RooflineError::invalid(
            "model config",
            format!("{}: missing required field `vocab_size`", path.display()),
        )
    })?;
    let mut config = hf.config;
    config.vocab_size = vocab;
    config
        .validate()
        .map_err(|m| RooflineError::invalid("model config", format!("{}: {m}", path.display())))?;
    let declared = json
        .get("torch_dtype")
        .or_else(|| json.get("dtype"))
        .and_then(|v| v.as_str())
        .and_then(|s| match s {
            "bfloat16" => Some(DType::BF16),
            "float16" => Some(DType::F16),
            "float32" => Some(DType::F32),
            _ => None,
        });
    let d = weights.or(declared).unwrap_or(DType::BF16);
    Ok(ModelSpec {
        weights: WeightTypes::uniform(&config, d),
        config,
        source: ModelSource::HfConfig(path.to_path_buf()),
    })
}

/// The stored type of every weight of a loaded model (GGUF names, see
/// `sluice_model::weights`). Norms are F32: the CPU backend converts them at load.
pub fn types_of(cfg: &ModelConfig, w: &WeightStore) -> Result<WeightTypes> {
    let ty = |name: &str| -> Result<DType> { Ok(w.get(name)?.dtype()) };
    let token_embd = ty("token_embd.weight")?;
    let output = if cfg.tie_embeddings {
        token_embd
    } else {
        ty("output.weight")?
    };
    let layers = (0..cfg.n_layers)
        .map(|i| {
            let m = |s: &str| ty(&format!("blk.{i}.{s}.weight"));
            Ok(LayerTypes {
                q: m("attn_q")?,
                k: m("attn_k")?,
                v: m("attn_v")?,
                o: m("attn_output")?,
                gate: m("ffn_gate")?,
                up: m("ffn_up")?,
                down: m("ffn_down")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(WeightTypes {
        token_embd,
        output,
        norms: DType::F32,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) -> PathBuf {
        let p = dir.join("config.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    #[test]
    fn a_config_missing_a_field_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let full = r#"{"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "max_position_embeddings": 8192, "vocab_size": 49152, "torch_dtype": "bfloat16",
            "tie_word_embeddings": true, "rope_theta": 100000}"#;
        let p = write(dir.path(), full);
        let spec = resolve_model(p.to_str().unwrap(), None).unwrap();
        let preset = presets::by_name("smollm2-135m").unwrap();
        assert_eq!(spec.config.parameter_count(), preset.parameter_count());
        assert_eq!(spec.weights.layers[0].q, DType::BF16);

        for field in [
            "hidden_size",
            "num_hidden_layers",
            "vocab_size",
            "max_position_embeddings",
        ] {
            let v: serde_json::Value = serde_json::from_str(full).unwrap();
            let mut obj = v.as_object().unwrap().clone();
            obj.remove(field);
            let p = write(dir.path(), &serde_json::Value::Object(obj).to_string());
            let err = resolve_model(p.to_str().unwrap(), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
    }

    #[test]
    fn unknown_names_list_the_presets() {
        let err = resolve_model("no-such-model-7b", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-model-7b"), "{err}");
        for p in presets::names() {
            assert!(err.contains(p), "{p} missing from {err}");
        }
    }

    #[test]
    fn presets_take_the_requested_weight_type() {
        let s = resolve_model("llama-3.1-8b", Some(DType::Q4_0)).unwrap();
        assert_eq!(s.weights.output, DType::Q4_0);
        assert_eq!(s.weights.label(), "Q4_0");
        assert_eq!(s.source, ModelSource::Preset("llama-3.1-8b".into()));
    }
}
