//! Hugging Face `config.json`, `generation_config.json` and `tokenizer_config.json`.
//!
//! Field names and defaults follow `transformers` (LlamaConfig, MistralConfig,
//! Qwen2Config, Gemma3TextConfig). A field the model cannot be built without is an
//! error naming it; optional ones take the library's default.

use std::path::Path;

use serde_json::Value;
use sluice_backend::RopeStyle;

use crate::config::{Arch, FfnActivation, Llama3RopeScaling, ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::loader::gguf_config::pattern_from_flags;
use crate::loader::GenerationDefaults;

/// What `config.json` says, before the tensors are seen.
#[derive(Clone, Debug)]
pub struct HfConfig {
    pub model_type: String,
    /// `vocab_size` is a placeholder until the embedding is seen; `tie_embeddings` is
    /// what the config declares.
    pub config: ModelConfig,
    pub declared_vocab: Option<usize>,
    /// A multimodal Gemma 3 checkpoint (`model_type: gemma3` with `text_config`): the
    /// text model's tensors are nested and vision tensors are skipped.
    pub multimodal: bool,
    /// `eos_token_id` from config.json (used when there is no generation_config.json).
    pub eos_token_ids: Vec<u32>,
}

pub const SUPPORTED_HF_TYPES: &[&str] = &["llama", "mistral", "qwen2", "gemma3_text", "gemma3"];

/// Reads and parses a JSON file (errors name the file).
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
}

/// Typed access to one JSON object, errors naming the file and field.
#[derive(Clone, Copy)]
struct Fields<'a> {
    path: &'a Path,
    obj: &'a serde_json::Map<String, Value>,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn err(&self, msg: String) -> ModelError {
        ModelError::format(self.path, msg)
    }

    fn usize(&self, name: &str) -> Result<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(format!(
                        "field `{name}` should be a non-negative integer, found {v}"
                    ))
                }),
        }
    }

    fn req_usize(&self, name: &str) -> Result<usize> {
        self.usize(name)?
            .ok_or_else(|| self.err(format!("missing required field `{name}`")))
    }

    fn f32(&self, name: &str) -> Result<Option<f32>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.err(format!("field `{name}` should be a number, found {v}"))),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                self.err(format!("field `{name}` should be true or false, found {v}"))
            }),
        }
    }

    fn str(&self, name: &str) -> Result<Option<&str>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{name}` should be a string, found {v}"))),
        }
    }

    /// An id or a list of ids (`eos_token_id`).
    fn ids(&self, name: &str) -> Result<Vec<u32>> {
        let bad = || {
            self.err(format!(
                "field `{name}` should be a token id or a list of ids"
            ))
        };
        let one = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)
        };
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

fn object<'a>(path: &'a Path, v: &'a Value) -> Result<Fields<'a>> {
    v.as_object()
        .map(|obj| Fields { path, obj })
        .ok_or_else(|| ModelError::format(path, "expected a JSON object"))
}

/// Parses `config.json`.
pub fn parse_config(path: &Path, json: &Value) -> Result<HfConfig> {
    let top = object(path, json)?;
    let model_type = top
        .str("model_type")?
        .ok_or_else(|| top.err("missing required field `model_type`".into()))?
        .to_string();
    // Multimodal Gemma 3 ("gemma3") keeps the language model's fields in text_config.
    let (f, multimodal) = match (model_type.as_str(), top.get("text_config")) {
        ("gemma3", Some(text)) => (object(path, text)?, true),
        _ => (top, false),
    };
    let arch = match model_type.as_str() {
        "llama" | "mistral" | "qwen2" => Arch::Llama,
        "gemma3_text" | "gemma3" => Arch::Gemma3,
        other => {
            return Err(f.err(format!(
                "model_type `{other}` is not supported (supported: {})",
                SUPPORTED_HF_TYPES.join(", ")
            )))
        }
    };
    let gemma = arch == Arch::Gemma3;

    let hidden_size = f.req_usize("hidden_size")?;
    let intermediate_size = f.req_usize("intermediate_size")?;
    let n_layers = f.req_usize("num_hidden_layers")?;
    let n_heads = f.req_usize("num_attention_heads")?;
    let max_position = f.req_usize("max_position_embeddings")?;
    if n_heads == 0 {
        return Err(f.err("num_attention_heads is 0".into()));
    }
    let n_kv_heads = f.usize("num_key_value_heads")?.unwrap_or(n_heads);
    let head_dim = match f.usize("head_dim")? {
        Some(d) => d,
        None if hidden_size.is_multiple_of(n_heads) => hidden_size / n_heads,
        None => {
            return Err(f.err(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {n_heads} and no head_dim is given"
            )))
        }
    };
    // 1e-6 is the default of every supported config class.
    let rms_eps = f.f32("rms_norm_eps")?.unwrap_or(1e-6);
    let rope_theta = f
        .f32("rope_theta")?
        .unwrap_or(if gemma { 1_000_000.0 } else { 10_000.0 });
    let rope_scaling = parse_rope_scaling(&f, max_position)?;
    if let Some(p) = f.f32("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(f.err(format!("partial_rotary_factor {p} is not supported")));
        }
    }
    // transformers' per-class defaults: tied for Gemma 3, untied for the others. A
    // multimodal Gemma 3 may declare it at the top level instead.
    let tie_embeddings = f
        .bool("tie_word_embeddings")?
        .or(top.bool("tie_word_embeddings")?)
        .unwrap_or(gemma);

    let qkv_bias = match model_type.as_str() {
        // Qwen2 hard-codes bias=True on q/k/v (and none on o).
        "qwen2" => true,
        _ => f.bool("attention_bias")?.unwrap_or(false),
    };
    if f.bool("mlp_bias")?.unwrap_or(false) {
        return Err(f.err("mlp_bias = true is not supported".into()));
    }

    let mut cfg = ModelConfig {
        arch,
        name: top
            .str("_name_or_path")?
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| model_type.clone()),
        hidden_size,
        intermediate_size,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size: 0,
        max_position,
        rms_eps,
        rope_theta,
        rope_local_theta: None,
        rope_scaling,
        // Hugging Face checkpoints are not permuted: rotate_half (NEOX) style.
        rope_style: RopeStyle::Neox,
        sliding_window: None,
        sliding_window_pattern: None,
        activation: FfnActivation::Silu,
        tie_embeddings,
        qkv_bias,
        qk_norm: false,
        sandwich_norms: false,
        embedding_scale: None,
        attn_scale: None,
        attn_logit_softcap: None,
        final_logit_softcap: f.f32("final_logit_softcapping")?,
    };

    match model_type.as_str() {
        "mistral" => cfg.sliding_window = f.usize("sliding_window")?,
        "qwen2" => {
            if f.bool("use_sliding_window")?.unwrap_or(false) {
                return Err(f.err("qwen2 use_sliding_window = true is not supported".into()));
            }
        }
        "llama" => {}
        _ => {
            // Gemma 3
            let act = f
                .str("hidden_activation")?
                .or(f.str("hidden_act")?)
                .unwrap_or("gelu_pytorch_tanh");
            if act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
                return Err(f.err(format!("gemma3 hidden_activation `{act}` is not supported")));
            }
            cfg.activation = FfnActivation::GeluTanh;
            cfg.qk_norm = true;
            cfg.sandwich_norms = true;
            cfg.embedding_scale = Some((hidden_size as f32).sqrt());
            cfg.sliding_window = Some(f.usize("sliding_window")?.unwrap_or(4096));
            cfg.sliding_window_pattern = Some(gemma3_layout(&f, n_layers)?);
            cfg.rope_local_theta = Some(f.f32("rope_local_base_freq")?.unwrap_or(10_000.0));
            let scalar = f.f32("query_pre_attn_scalar")?.unwrap_or(256.0);
            if scalar <= 0.0 {
                return Err(f.err(format!("query_pre_attn_scalar {scalar} must be positive")));
            }
            cfg.attn_scale = Some(1.0 / scalar.sqrt());
            cfg.attn_logit_softcap = f.f32("attn_logit_softcapping")?;
        }
    }

    let declared_vocab = f.usize("vocab_size")?;
    let mut eos_token_ids = f.ids("eos_token_id")?;
    if eos_token_ids.is_empty() {
        eos_token_ids = top.ids("eos_token_id")?;
    }
    Ok(HfConfig {
        model_type,
        config: cfg,
        declared_vocab,
        multimodal,
        eos_token_ids,
    })
}

/// Gemma 3's local/global layout: `layer_types` (newer transformers), else
/// `sliding_window_pattern` / `_sliding_window_pattern`, else 6.
fn gemma3_layout(f: &Fields<'_>, n_layers: usize) -> Result<usize> {
    if let Some(types) = f.get("layer_types") {
        let list = types
            .as_array()
            .filter(|l| l.len() == n_layers)
            .ok_or_else(|| {
                f.err(format!(
                    "field `layer_types` should list {n_layers} layer types"
                ))
            })?;
        let mut sliding = Vec::with_capacity(n_layers);
        for t in list {
            match t.as_str() {
                Some("sliding_attention") => sliding.push(true),
                Some("full_attention") => sliding.push(false),
                _ => return Err(f.err(format!("field `layer_types`: unknown layer type {t}"))),
            }
        }
        return pattern_from_flags(&sliding).ok_or_else(|| {
            f.err("field `layer_types`: local/global layout is not periodic; not supported".into())
        });
    }
    let n = match f.usize("sliding_window_pattern")? {
        Some(n) => n,
        None => f.usize("_sliding_window_pattern")?.unwrap_or(6),
    };
    if n == 0 {
        return Err(f.err("sliding_window_pattern must be positive".into()));
    }
    Ok(n)
}

fn parse_rope_scaling(f: &Fields<'_>, max_position: usize) -> Result<RopeScaling> {
    let Some(v) = f.get("rope_scaling") else {
        return Ok(RopeScaling::None);
    };
    let s = object(f.path, v)?;
    let kind = s
        .str("rope_type")?
        .or(s.str("type")?)
        .unwrap_or("default")
        .to_string();
    let factor = |s: &Fields<'_>| -> Result<f32> {
        s.f32("factor")?
            .filter(|&x| x > 0.0)
            .ok_or_else(|| s.err("rope_scaling: missing or non-positive field `factor`".into()))
    };
    Ok(match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear(factor(&s)?),
        "llama3" => {
            let low = s.f32("low_freq_factor")?.unwrap_or(1.0);
            let high = s.f32("high_freq_factor")?.unwrap_or(4.0);
            if high <= low {
                return Err(s.err(format!(
                    "rope_scaling: high_freq_factor {high} must exceed low_freq_factor {low}"
                )));
            }
            RopeScaling::Llama3(Llama3RopeScaling {
                factor: factor(&s)?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position: s
                    .usize("original_max_position_embeddings")?
                    .unwrap_or(max_position.min(8192)),
            })
        }
        other => {
            return Err(s.err(format!(
                "rope_scaling type `{other}` is not supported (supported: linear, llama3)"
            )))
        }
    })
}

/// `generation_config.json`. When `do_sample` is explicitly false, transformers ignores
/// the sampling fields, so we do too (the request's own parameters then apply).
pub fn parse_generation_config(path: &Path, json: &Value) -> Result<GenerationDefaults> {
    let f = object(path, json)?;
    let sample = f.bool("do_sample")?.unwrap_or(true);
    let mut g = GenerationDefaults {
        eos_token_ids: f.ids("eos_token_id")?,
        ..GenerationDefaults::default()
    };
    if sample {
        g.temperature = f.f32("temperature")?;
        g.top_p = f.f32("top_p")?;
        g.top_k = f.usize("top_k")?;
    }
    Ok(g)
}

/// The chat template from `tokenizer_config.json`: a string, or a list of
/// `{name, template}` (the one named "default", else the first).
pub fn chat_template_from_tokenizer_config(path: &Path, json: &Value) -> Result<Option<String>> {
    let f = object(path, json)?;
    match f.get("chat_template") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |want: Option<&str>| {
                list.iter().find_map(|item| {
                    let name = item.get("name").and_then(Value::as_str);
                    let template = item.get("template").and_then(Value::as_str)?;
                    (want.is_none() || name == want).then(|| template.to_string())
                })
            };
            named(Some("default"))
                .or_else(|| named(None))
                .map(Some)
                .ok_or_else(|| {
                    f.err("field `chat_template`: list holds no {name, template} entry".into())
                })
        }
        Some(v) => Err(f.err(format!(
            "field `chat_template` should be a string or a list, found {v}"
        ))),
    }
}
