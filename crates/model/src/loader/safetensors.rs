//! Hugging Face layout: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), F32/F16/BF16, memory-mapped.
//!
//! Tensor names are mapped onto GGUF names (see `weights.rs`) so the forward pass
//! reads one vocabulary. Safetensors data offsets need not be aligned (the header
//! length is arbitrary), so a tensor whose data is not 32-byte aligned in the file is
//! copied into owned aligned memory; aligned ones stay mapped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use sluice_backend::{DType, Tensor};

use crate::config::Arch;
use crate::error::{ModelError, Result};
use crate::loader::hf_config::{self, HfConfig};
use crate::loader::validate;
use crate::weights::WeightStore;

pub const CONFIG_FILE: &str = "config.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Alignment at which a tensor is used in place from the map (as GGUF guarantees).
const MAP_ALIGNMENT: usize = 32;

/// The model directory for a path that is a directory holding `config.json`, or a
/// `config.json` / `*.safetensors` file next to one.
pub fn hf_dir(path: &Path) -> Option<PathBuf> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        let name = path.file_name()?.to_string_lossy();
        if name != CONFIG_FILE
            && !name.ends_with(".safetensors")
            && !name.ends_with(".safetensors.index.json")
        {
            return None;
        }
        match path.parent() {
            Some(p) if p.as_os_str().is_empty() => PathBuf::from("."),
            Some(p) => p.to_path_buf(),
            None => return None,
        }
    };
    dir.join(CONFIG_FILE).is_file().then_some(dir)
}

/// Loads config and weights from a Hugging Face model directory.
pub fn load_hf(dir: &Path) -> Result<(HfConfig, WeightStore)> {
    let config_path = dir.join(CONFIG_FILE);
    let json = hf_config::read_json(&config_path)?;
    let mut hf = hf_config::parse_config(&config_path, &json)?;
    let shards = shard_files(dir)?;

    let mut weights = WeightStore::new();
    for (file, expected) in &shards {
        load_shard(file, expected.as_ref(), &hf, &mut weights)?;
    }
    let cfg = &mut hf.config;
    // Weight tying: transformers overwrites lm_head with the embedding when tied.
    if cfg.tie_embeddings {
        weights.take_opt("output.weight");
    }
    let first_shard = shards
        .first()
        .map(|(p, _)| p.clone())
        .unwrap_or_else(|| dir.to_path_buf());
    let embd = weights.get("token_embd.weight").map_err(|_| {
        ModelError::format(&first_shard, "missing tensor `model.embed_tokens.weight`")
    })?;
    cfg.vocab_size = embd.shape().first().copied().unwrap_or(0);
    if let Some(v) = hf.declared_vocab {
        if v != cfg.vocab_size {
            return Err(ModelError::format(
                &config_path,
                format!(
                    "vocab_size {v} differs from the embedding's {} rows",
                    cfg.vocab_size
                ),
            ));
        }
    }
    cfg.validate()
        .map_err(|e| ModelError::format(&config_path, format!("invalid config: {e}")))?;
    if cfg.arch == Arch::Gemma3 {
        // Gemma's RMSNorm computes x * (1 + w); every Gemma norm is named `*norm.weight`.
        let plus_one = |name: &str, x: f32| {
            if name.ends_with("norm.weight") {
                x + 1.0
            } else {
                x
            }
        };
        validate::vectors_to_f32(&first_shard, &mut weights, Some(&plus_one))?;
    } else {
        validate::vectors_to_f32(&first_shard, &mut weights, None)?;
    }
    validate::check_weights(&first_shard, cfg, &weights)?;
    Ok((hf, weights))
}

/// The safetensors files, each with the tensor names the index assigns to it.
type Shards = Vec<(PathBuf, Option<BTreeSet<String>>)>;

fn shard_files(dir: &Path) -> Result<Shards> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let json = hf_config::read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::format(&index, "missing object field `weight_map`"))?;
        let mut by_file: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                ModelError::format(&index, format!("weight_map[`{tensor}`] is not a file name"))
            })?;
            // Shards live beside the index; anything else is refused.
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
                return Err(ModelError::format(
                    &index,
                    format!(
                        "weight_map entry `{file}` is not a plain file name in the model directory"
                    ),
                ));
            }
            by_file
                .entry(file.to_string())
                .or_default()
                .insert(tensor.clone());
        }
        if by_file.is_empty() {
            return Err(ModelError::format(&index, "weight_map is empty"));
        }
        return Ok(by_file
            .into_iter()
            .map(|(f, names)| (dir.join(f), Some(names)))
            .collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![(single, None)]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    match found.len() {
        1 => Ok(vec![(found.remove(0), None)]),
        0 => Err(ModelError::format(
            dir,
            format!("no {SINGLE_FILE} or {INDEX_FILE} in the model directory"),
        )),
        n => Err(ModelError::format(
            dir,
            format!("{n} .safetensors files but no {INDEX_FILE} saying how they fit together"),
        )),
    }
}

fn load_shard(
    file: &Path,
    expected: Option<&BTreeSet<String>>,
    hf: &HfConfig,
    weights: &mut WeightStore,
) -> Result<()> {
    let f = File::open(file).map_err(|e| ModelError::io(file, e))?;
    // SAFETY: read-only map; the file must not be modified while the model is loaded.
    let map = Arc::new(unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(file, e))?);
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| ModelError::format(file, format!("invalid safetensors file: {e}")))?;
    if let Some(names) = expected {
        if let Some(missing) = names.iter().find(|n| st.tensor(n).is_err()) {
            return Err(ModelError::format(
                file,
                format!("the index places tensor `{missing}` in this file, but it is not there"),
            ));
        }
    }
    let base = map.as_ptr() as usize;
    for (hf_name, view) in st.iter() {
        let Some(name) = hf_to_gguf_name(hf_name, hf).map_err(|e| ModelError::format(file, e))?
        else {
            continue;
        };
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(ModelError::format(
                    file,
                    format!(
                    "tensor `{hf_name}` has dtype {other}; only F32, F16 and BF16 are supported"
                ),
                ))
            }
        };
        let data = view.data();
        let offset = data.as_ptr() as usize - base;
        let shape = view.shape();
        let t = if offset.is_multiple_of(MAP_ALIGNMENT) {
            Tensor::mapped_cpu(dtype, shape, map.clone(), offset)
        } else {
            Tensor::from_bytes_cpu(dtype, shape, data)
        }
        .map_err(|e| ModelError::format(file, format!("tensor `{hf_name}`: {e}")))?;
        if weights.contains(&name) {
            return Err(ModelError::format(
                file,
                format!("tensor `{hf_name}` (-> `{name}`) appears twice"),
            ));
        }
        weights.insert(name, t);
    }
    Ok(())
}

/// Maps a Hugging Face tensor name to its GGUF name. `Ok(None)`: a tensor we do not
/// need (rotary caches, a multimodal checkpoint's vision tower). `Err`: a tensor we do
/// not know, which we refuse rather than silently ignore.
pub fn hf_to_gguf_name(name: &str, hf: &HfConfig) -> std::result::Result<Option<String>, String> {
    let cfg = &hf.config;
    let mut name = name.to_string();
    if hf.multimodal || hf.model_type == "gemma3" {
        // transformers < 4.52: `language_model.model.*`; newer: `model.language_model.*`.
        if let Some(rest) = name.strip_prefix("language_model.") {
            name = rest.to_string();
        } else if let Some(rest) = name.strip_prefix("model.language_model.") {
            name = format!("model.{rest}");
        } else if [
            "vision_tower.",
            "multi_modal_projector.",
            "model.vision_tower.",
            "model.multi_modal_projector.",
        ]
        .iter()
        .any(|p| name.starts_with(p))
        {
            return Ok(None);
        }
    }
    if name.ends_with("rotary_emb.inv_freq") {
        return Ok(None);
    }
    let unknown = || {
        Err(format!(
            "unexpected tensor `{name}` for a {} model",
            hf.model_type
        ))
    };
    match name.as_str() {
        "model.embed_tokens.weight" => return Ok(Some("token_embd.weight".into())),
        "model.norm.weight" => return Ok(Some("output_norm.weight".into())),
        "lm_head.weight" => return Ok(Some("output.weight".into())),
        _ => {}
    }
    let Some(rest) = name.strip_prefix("model.layers.") else {
        return unknown();
    };
    let Some((idx, part)) = rest.split_once('.') else {
        return unknown();
    };
    let layer: usize = match idx.parse() {
        Ok(i) => i,
        Err(_) => return unknown(),
    };
    if layer >= cfg.n_layers {
        return Err(format!(
            "tensor `{name}` is for layer {layer}, but the config has {} layers",
            cfg.n_layers
        ));
    }
    let gemma = cfg.arch == Arch::Gemma3;
    let mapped = match part {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.bias" => "attn_output.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        // Llama: the pre-FFN norm. Gemma: the post-attention sandwich norm (its pre-FFN
        // norm is `pre_feedforward_layernorm`).
        "post_attention_layernorm.weight" if gemma => "post_attention_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "pre_feedforward_layernorm.weight" if gemma => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" if gemma => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return unknown(),
    };
    Ok(Some(format!("blk.{layer}.{mapped}")))
}
