//! `ModelConfig` from GGUF metadata (llama.cpp's key names), for the architectures
//! with a forward pass here: `llama` (also Mistral/SmolLM/TinyLlama conversions),
//! `mistral`, `qwen2` (q/k/v biases) and `gemma3`.

use sluice_backend::RopeStyle;

use crate::config::{Arch, FfnActivation, Llama3RopeScaling, ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::loader::gguf::GgufFile;
use crate::loader::gguf_value::GgufValue;
use crate::loader::validate;
use crate::weights::WeightStore;

pub const SUPPORTED_GGUF_ARCHS: &[&str] = &["llama", "mistral", "qwen2", "gemma3"];

/// Gemma 3 defaults that llama.cpp hard-codes rather than reads from the file.
const GEMMA3_SLIDING_WINDOW_PATTERN: usize = 6;
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Builds the config from metadata and the tensor table (vocabulary size from the
/// embedding rows, tied embeddings = no `output.weight`, q/k/v biases = present).
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch_name = g.architecture()?.to_string();
    let arch = match arch_name.as_str() {
        "llama" | "mistral" | "qwen2" => Arch::Llama,
        "gemma3" => Arch::Gemma3,
        other => {
            return Err(ModelError::format(
                &g.path,
                format!(
                    "architecture `{other}` is not supported (supported: {})",
                    SUPPORTED_GGUF_ARCHS.join(", ")
                ),
            ))
        }
    };
    let key = |s: &str| format!("{arch_name}.{s}");
    let req = |s: &str| uniform_usize(g, &key(s))?.ok_or_else(|| g.missing_key(&key(s)));
    let opt = |s: &str| uniform_usize(g, &key(s));
    let opt_f32 = |s: &str| -> Result<Option<f32>> {
        match g.get(&key(s)) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| g.wrong_type(&key(s), "a number", v)),
        }
    };

    let hidden_size = req("embedding_length")?;
    let n_layers = req("block_count")?;
    let intermediate_size = req("feed_forward_length")?;
    let n_heads = req("attention.head_count")?;
    let n_kv_heads = opt("attention.head_count_kv")?.unwrap_or(n_heads);
    let max_position = req("context_length")?;
    if n_heads == 0 {
        return Err(ModelError::format(
            &g.path,
            format!("{} is 0", key("attention.head_count")),
        ));
    }
    let head_dim = match opt("attention.key_length")? {
        Some(d) => d,
        None => {
            if !hidden_size.is_multiple_of(n_heads) {
                return Err(ModelError::format(
                    &g.path,
                    format!(
                        "embedding_length {hidden_size} is not a multiple of head_count {n_heads}"
                    ),
                ));
            }
            hidden_size / n_heads
        }
    };
    if let Some(v) = opt("attention.value_length")? {
        if v != head_dim {
            return Err(ModelError::format(
                &g.path,
                format!("value_length {v} differs from key_length {head_dim}; not supported"),
            ));
        }
    }
    if let Some(r) = opt("rope.dimension_count")? {
        if r != head_dim {
            return Err(ModelError::format(
                &g.path,
                format!("partial rotary embeddings (rope.dimension_count {r} < head_dim {head_dim}) are not supported"),
            ));
        }
    }
    let rms_eps = opt_f32("attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| g.missing_key(&key("attention.layer_norm_rms_epsilon")))?;
    let rope_theta = opt_f32("rope.freq_base")?.unwrap_or(10_000.0);
    let rope_scaling = rope_scaling(g, &arch_name, rope_theta, head_dim)?;

    let embd = g
        .tensor_info("token_embd.weight")
        .ok_or_else(|| ModelError::format(&g.path, "missing tensor `token_embd.weight`"))?;
    let vocab_size = embd.shape.first().copied().unwrap_or(0);
    let tie_embeddings = g.tensor_info("output.weight").is_none();
    let qkv_bias = g.tensor_info("blk.0.attn_q.bias").is_some();
    let name = g
        .get_str("general.name")
        .map(str::to_string)
        .unwrap_or_else(|| file_stem(&g.path));

    let mut cfg = ModelConfig {
        arch,
        name,
        hidden_size,
        intermediate_size,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        max_position,
        rms_eps,
        rope_theta,
        rope_local_theta: None,
        rope_scaling,
        // The llama converter permutes Q/K rows so that ggml's adjacent-pair rope is
        // right; qwen2 and gemma3 are converted unpermuted and use NEOX rope.
        rope_style: if arch_name == "llama" || arch_name == "mistral" {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Neox
        },
        sliding_window: opt("attention.sliding_window")?,
        sliding_window_pattern: None,
        activation: FfnActivation::Silu,
        tie_embeddings,
        qkv_bias,
        qk_norm: false,
        sandwich_norms: false,
        embedding_scale: None,
        attn_scale: None,
        attn_logit_softcap: opt_f32("attn_logit_softcapping")?,
        final_logit_softcap: opt_f32("final_logit_softcapping")?,
    };

    if arch == Arch::Gemma3 {
        cfg.sliding_window = Some(req("attention.sliding_window")?);
        cfg.sliding_window_pattern = Some(gemma3_pattern(
            g,
            &key("attention.sliding_window_pattern"),
            n_layers,
        )?);
        cfg.rope_local_theta =
            Some(opt_f32("rope.freq_base_swa")?.unwrap_or(GEMMA3_LOCAL_ROPE_BASE));
        cfg.activation = FfnActivation::GeluTanh;
        cfg.qk_norm = true;
        cfg.sandwich_norms = true;
        cfg.embedding_scale = Some((hidden_size as f32).sqrt());
        // query_pre_attn_scalar is not stored in GGUF. As in llama.cpp: Gemma 3 27B
        // (62 layers) uses hidden/heads, every other size uses head_dim.
        let scalar = if n_layers == 62 {
            hidden_size as f32 / n_heads as f32
        } else {
            head_dim as f32
        };
        cfg.attn_scale = Some(1.0 / scalar.sqrt());
    }
    cfg.validate()
        .map_err(|e| ModelError::format(&g.path, format!("invalid config: {e}")))?;
    Ok(cfg)
}

/// Config plus every tensor (mapped), validated against each other.
pub fn load_gguf_weights(g: &GgufFile, cfg: &mut ModelConfig) -> Result<WeightStore> {
    let mut weights = g.weights()?;
    // Llama 3.x GGUFs carry the rope scaling as a per-frequency divisor table; it has
    // been folded into `cfg.rope_scaling` by `rope_scaling`.
    weights.take_opt("rope_freqs.weight");
    validate::vectors_to_f32(&g.path, &mut weights, None)?;
    validate::check_weights(&g.path, cfg, &weights)?;
    Ok(weights)
}

/// A count that may be stored per layer as an array (all entries must agree then).
fn uniform_usize(g: &GgufFile, key: &str) -> Result<Option<usize>> {
    let v = match g.get(key) {
        None => return Ok(None),
        Some(v) => v,
    };
    let one = |x: &GgufValue| -> Result<usize> {
        x.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| g.wrong_type(key, "a non-negative integer", v))
    };
    match v {
        GgufValue::Array(items) => {
            let first = items
                .first()
                .ok_or_else(|| g.wrong_type(key, "a non-empty array", v))
                .and_then(one)?;
            for item in items {
                if one(item)? != first {
                    return Err(ModelError::format(
                        &g.path,
                        format!("`{key}` differs between layers; not supported"),
                    ));
                }
            }
            Ok(Some(first))
        }
        _ => one(v).map(Some),
    }
}

/// Gemma 3 local/global layout: llama.cpp hard-codes every 6th layer global. A file
/// may instead carry a pattern count or a per-layer bool array (true = sliding).
fn gemma3_pattern(g: &GgufFile, key: &str, n_layers: usize) -> Result<usize> {
    match g.get(key) {
        None => Ok(GEMMA3_SLIDING_WINDOW_PATTERN),
        Some(GgufValue::Array(flags)) => {
            let sliding: Vec<bool> = flags.iter().filter_map(GgufValue::as_bool).collect();
            if sliding.len() != n_layers || flags.len() != n_layers {
                return Err(ModelError::format(
                    &g.path,
                    format!("`{key}` should hold one bool per layer ({n_layers})"),
                ));
            }
            pattern_from_flags(&sliding).ok_or_else(|| {
                ModelError::format(
                    &g.path,
                    format!("`{key}`: local/global layout is not periodic; not supported"),
                )
            })
        }
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .filter(|&n| n > 0)
            .ok_or_else(|| g.wrong_type(key, "a positive integer or bool array", v)),
    }
}

/// `n` such that exactly layers n-1, 2n-1, ... are global (not sliding).
pub(crate) fn pattern_from_flags(sliding: &[bool]) -> Option<usize> {
    let n = sliding.iter().position(|&s| !s).map(|i| i + 1)?;
    let ok = sliding
        .iter()
        .enumerate()
        .all(|(i, &sliding)| sliding != (i + 1).is_multiple_of(n));
    ok.then_some(n)
}

fn rope_scaling(g: &GgufFile, arch: &str, theta: f32, head_dim: usize) -> Result<RopeScaling> {
    let key = |s: &str| format!("{arch}.{s}");
    let factor = g.get_f64(&key("rope.scaling.factor"));
    let scaling = match g.get_str(&key("rope.scaling.type")) {
        None | Some("none") => match g.get_f64(&key("rope.scale_linear")) {
            // Older conversions stored only a linear factor.
            Some(f) if f != 1.0 => RopeScaling::Linear(f as f32),
            _ => RopeScaling::None,
        },
        Some("linear") => match factor {
            Some(f) if f > 0.0 => RopeScaling::Linear(f as f32),
            _ => return Err(g.missing_key(&key("rope.scaling.factor"))),
        },
        Some(other) => {
            return Err(ModelError::format(
                &g.path,
                format!("rope scaling type `{other}` is not supported (supported: linear, llama3)"),
            ))
        }
    };
    let Some(info) = g.tensor_info("rope_freqs.weight") else {
        return Ok(scaling);
    };
    if scaling != RopeScaling::None {
        return Err(ModelError::format(
            &g.path,
            "both rope.scaling.type and a rope_freqs.weight table; not supported",
        ));
    }
    let t = g.tensor("rope_freqs.weight")?;
    let table = validate::to_f32_vec(&t)
        .map_err(|e| ModelError::format(&g.path, format!("tensor `rope_freqs.weight`: {e}")))?;
    if info.shape != [head_dim / 2] {
        return Err(ModelError::format(
            &g.path,
            format!(
                "tensor `rope_freqs.weight`: expected shape [{}], found {:?}",
                head_dim / 2,
                info.shape
            ),
        ));
    }
    fit_llama3(&table, theta, head_dim).ok_or_else(|| {
        ModelError::format(
            &g.path,
            "rope_freqs.weight does not match the llama3 rope scaling recipe; not supported",
        )
    })
}

/// Llama 3 rope factors for frequency `i` (Meta's `apply_scaling`, as llama.cpp's
/// converter writes them into `rope_freqs.weight`: the divisor of each frequency).
pub fn llama3_rope_factors(s: &Llama3RopeScaling, theta: f32, head_dim: usize) -> Vec<f32> {
    let old = s.original_max_position as f64;
    let low_wavelen = old / s.low_freq_factor as f64;
    let high_wavelen = old / s.high_freq_factor as f64;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                s.factor as f64
            } else {
                let smooth = (old / wavelen - s.low_freq_factor as f64)
                    / (s.high_freq_factor as f64 - s.low_freq_factor as f64);
                1.0 / ((1.0 - smooth) / s.factor as f64 + smooth)
            };
            f as f32
        })
        .collect()
}

/// Recovers Llama 3 scaling parameters from a factor table by checking it against the
/// recipe with the parameters every Llama 3.x release uses (low 1, high 4, 8192).
fn fit_llama3(table: &[f32], theta: f32, head_dim: usize) -> Option<RopeScaling> {
    if table.iter().all(|&f| (f - 1.0).abs() < 1e-6) {
        return Some(RopeScaling::None);
    }
    let factor = table.iter().copied().fold(f32::MIN, f32::max);
    for (low, high, orig) in [(1.0, 4.0, 8192), (1.0, 4.0, 4096), (1.0, 4.0, 16384)] {
        let s = Llama3RopeScaling {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position: orig,
        };
        let expect = llama3_rope_factors(&s, theta, head_dim);
        if expect
            .iter()
            .zip(table)
            .all(|(e, t)| (e - t).abs() <= 1e-4 * e.abs().max(1.0))
        {
            return Some(RopeScaling::Llama3(s));
        }
    }
    None
}

pub(crate) fn file_stem(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string())
}
