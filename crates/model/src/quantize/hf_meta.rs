//! GGUF metadata for a Hugging Face model, as llama.cpp's `convert_hf_to_gguf.py`
//! writes it: the `{arch}.*` hyperparameters from the config, and the tokenizer as
//! `tokenizer.ggml.*` arrays.
//!
//! Supported: `llama` / `mistral` (written as GGUF `llama`, q/k rows permuted by the
//! caller), `qwen2`, with a byte-level BPE `tokenizer.json` (SmolLM, Llama 3, Qwen2).
//! SentencePiece-style vocabularies (byte-fallback BPE: Llama 2, Mistral v0.1, Gemma)
//! carry scores that only `tokenizer.model` holds, and Gemma 3 needs more keys than
//! the config gives; both are refused with a pointer to llama.cpp's converter.

use std::path::Path;

use serde_json::Value;

use crate::config::{Arch, RopeScaling};
use crate::error::{ModelError, Result};
use crate::loader::gguf_value::GgufValue;
use crate::loader::{hf_config, ModelParts, TokenizerSource};

/// llama.cpp's token types (`gguf.TokenType`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn refuse(path: &Path, why: &str) -> ModelError {
    ModelError::format(
        path,
        format!("{why}; convert this model with llama.cpp's convert_hf_to_gguf.py, then quantize the GGUF"),
    )
}

/// The GGUF architecture name for this Hugging Face model.
pub fn gguf_arch(parts: &ModelParts) -> Result<String> {
    let config = parts.path.join("config.json");
    let json = hf_config::read_json(&config)?;
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (model_type, parts.config.arch) {
        ("llama" | "mistral", Arch::Llama) => Ok("llama".into()),
        ("qwen2", Arch::Llama) => Ok("qwen2".into()),
        (other, _) => Err(refuse(
            &config,
            &format!("`sluice quantize` converts llama, mistral and qwen2 Hugging Face models, not `{other}`"),
        )),
    }
}

fn u32v(x: usize) -> GgufValue {
    GgufValue::U32(x as u32)
}

/// Every metadata key of the output file except `general.file_type` and
/// `general.quantization_version`.
pub fn metadata(parts: &ModelParts, arch: &str) -> Result<Vec<(String, GgufValue)>> {
    let c = &parts.config;
    let k = |s: &str| format!("{arch}.{s}");
    let mut md: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String(arch.into()),
        ),
        ("general.type".into(), GgufValue::String("model".into())),
        ("general.name".into(), GgufValue::String(c.name.clone())),
        (k("block_count"), u32v(c.n_layers)),
        (k("context_length"), u32v(c.max_position)),
        (k("embedding_length"), u32v(c.hidden_size)),
        (k("feed_forward_length"), u32v(c.intermediate_size)),
        (k("attention.head_count"), u32v(c.n_heads)),
        (k("attention.head_count_kv"), u32v(c.n_kv_heads)),
        (k("rope.freq_base"), GgufValue::F32(c.rope_theta)),
        (
            k("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(c.rms_eps),
        ),
        (k("vocab_size"), u32v(c.vocab_size)),
        (k("rope.dimension_count"), u32v(c.head_dim)),
    ];
    if c.head_dim * c.n_heads != c.hidden_size {
        md.push((k("attention.key_length"), u32v(c.head_dim)));
        md.push((k("attention.value_length"), u32v(c.head_dim)));
    }
    if let Some(w) = c.sliding_window {
        md.push((k("attention.sliding_window"), u32v(w)));
    }
    match c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear(f) => {
            md.push((k("rope.scaling.type"), GgufValue::String("linear".into())));
            md.push((k("rope.scaling.factor"), GgufValue::F32(f)));
        }
        RopeScaling::Llama3(_) => {
            return Err(refuse(
                &parts.path,
                "llama3 rope scaling (written as a rope_freqs tensor) is not converted here",
            ))
        }
    }
    md.extend(tokenizer_metadata(parts)?);
    if let Some(t) = &parts.chat_template {
        md.push((
            "tokenizer.chat_template".into(),
            GgufValue::String(t.clone()),
        ));
    }
    Ok(md)
}

fn tokenizer_metadata(parts: &ModelParts) -> Result<Vec<(String, GgufValue)>> {
    let TokenizerSource::HfJson {
        tokenizer_json,
        tokenizer_config,
    } = &parts.tokenizer_source
    else {
        return Err(refuse(&parts.path, "no tokenizer.json beside the model"));
    };
    let json = hf_config::read_json(tokenizer_json)?;
    let model = json
        .get("model")
        .ok_or_else(|| ModelError::format(tokenizer_json, "missing field `model`"))?;
    let byte_fallback = model
        .get("byte_fallback")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if model.get("type").and_then(Value::as_str) != Some("BPE") || byte_fallback {
        return Err(refuse(
            tokenizer_json,
            "only byte-level BPE tokenizers (GPT-2 style) are converted here",
        ));
    }
    let n_vocab = parts.config.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![NORMAL; n_vocab];
    let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            ModelError::format(
                tokenizer_json,
                format!("token id {id} is beyond the embedding's {n_vocab} rows"),
            )
        })?;
        *slot = Some(text.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| ModelError::format(tokenizer_json, "missing object `model.vocab`"))?;
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            ModelError::format(
                tokenizer_json,
                format!("vocab entry `{text}` has no integer id"),
            )
        })?;
        place(id, text, NORMAL)?;
    }
    let mut special: Vec<(String, u64)> = Vec::new();
    for added in json
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(text)) = (
            added.get("id").and_then(Value::as_u64),
            added.get("content").and_then(Value::as_str),
        ) else {
            continue;
        };
        let is_special = added
            .get("special")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        place(id, text, if is_special { CONTROL } else { USER_DEFINED })?;
        special.push((text.to_string(), id));
    }
    let mut token_values = Vec::with_capacity(n_vocab);
    for (i, t) in tokens.into_iter().enumerate() {
        match t {
            Some(t) => token_values.push(GgufValue::String(t)),
            None => {
                // As the converter does for ids the tokenizer does not use.
                token_values.push(GgufValue::String(format!("[PAD{i}]")));
                types[i] = UNUSED;
            }
        }
    }
    let merges: Vec<GgufValue> = model
        .get("merges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Value::String(s) => Some(GgufValue::String(s.clone())),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => Some(GgufValue::String(format!("{a} {b}"))),
                _ => None,
            },
            _ => None,
        })
        .collect();

    let mut md: Vec<(String, GgufValue)> = vec![
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            GgufValue::String(pre_name(&json).into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(token_values),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(merges)),
    ];
    // Special ids: tokenizer_config.json names them by text.
    let cfg_json = match tokenizer_config {
        Some(p) => Some(hf_config::read_json(p)?),
        None => None,
    };
    let token_text = |field: &str| -> Option<String> {
        let v = cfg_json.as_ref()?.get(field)?;
        match v {
            Value::String(s) => Some(s.clone()),
            // {"content": "...", ...} (AddedToken form)
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    };
    let id_of = |text: &str| -> Option<u64> {
        special
            .iter()
            .find(|(t, _)| t == text)
            .map(|&(_, id)| id)
            .or_else(|| vocab.get(text).and_then(Value::as_u64))
    };
    for (field, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = token_text(field).as_deref().and_then(id_of) {
            md.push((key.into(), GgufValue::U32(id as u32)));
        }
    }
    if !md.iter().any(|(k, _)| k == "tokenizer.ggml.eos_token_id") {
        if let Some(&id) = parts.generation.eos_token_ids.first() {
            md.push(("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(id)));
        }
    }
    let add_bos = cfg_json
        .as_ref()
        .and_then(|c| c.get("add_bos_token"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    md.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(add_bos),
    ));
    Ok(md)
}

/// llama.cpp picks `tokenizer.ggml.pre` by hashing how the tokenizer splits a test
/// text; we recognise the same families from the pre-tokenizer itself.
fn pre_name(tokenizer: &Value) -> &'static str {
    let pre = tokenizer
        .get("pre_tokenizer")
        .map(Value::to_string)
        .unwrap_or_default();
    if pre.contains(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}",
    ) {
        "llama-bpe"
    } else if pre.contains("\\\\p{N}|") && pre.contains("[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+") {
        "qwen2"
    } else if pre.contains("\"Digits\"") && pre.contains("\"ByteLevel\"") {
        "smollm"
    } else {
        "gpt-2"
    }
}
