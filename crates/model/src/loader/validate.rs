//! Checks that a weight store holds exactly the tensors a config needs, with the
//! expected shapes, and normalises vectors (norms, biases) to F32.

use std::collections::BTreeSet;
use std::path::Path;

use half::{bf16, f16};
use sluice_backend::{DType, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::weights::WeightStore;

/// Every tensor (GGUF name, expected shape) the forward pass reads for `cfg`.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let mut out = vec![
        ("token_embd.weight".to_string(), vec![v, h]),
        ("output_norm.weight".to_string(), vec![h]),
    ];
    if !cfg.tie_embeddings {
        out.push(("output.weight".to_string(), vec![v, h]));
    }
    for i in 0..cfg.n_layers {
        let mut t = |name: &str, shape: Vec<usize>| out.push((format!("blk.{i}.{name}"), shape));
        t("attn_norm.weight", vec![h]);
        t("attn_q.weight", vec![q, h]);
        t("attn_k.weight", vec![kv, h]);
        t("attn_v.weight", vec![kv, h]);
        t("attn_output.weight", vec![h, q]);
        if cfg.qkv_bias {
            t("attn_q.bias", vec![q]);
            t("attn_k.bias", vec![kv]);
            t("attn_v.bias", vec![kv]);
        }
        if cfg.qk_norm {
            t("attn_q_norm.weight", vec![hd]);
            t("attn_k_norm.weight", vec![hd]);
        }
        if cfg.sandwich_norms {
            t("post_attention_norm.weight", vec![h]);
            t("post_ffw_norm.weight", vec![h]);
        }
        t("ffn_norm.weight", vec![h]);
        t("ffn_gate.weight", vec![f, h]);
        t("ffn_up.weight", vec![f, h]);
        t("ffn_down.weight", vec![h, f]);
    }
    out
}

/// Every needed tensor is present with its shape and a usable dtype, and nothing else
/// is: a tensor we would silently ignore (an output bias, say) means we would compute
/// the wrong function, so it is an error too.
pub fn check_weights(path: &Path, cfg: &ModelConfig, weights: &WeightStore) -> Result<()> {
    let expected = expected_tensors(cfg);
    for (name, shape) in &expected {
        let t = weights.get(name).map_err(|_| {
            ModelError::format(
                path,
                format!(
                    "missing tensor `{name}` (needed by this {} model)",
                    cfg.arch.name()
                ),
            )
        })?;
        if t.shape() != shape.as_slice() {
            return Err(ModelError::format(
                path,
                format!(
                    "tensor `{name}`: expected shape {shape:?}, found {:?}",
                    t.shape()
                ),
            ));
        }
        let ok = if shape.len() == 1 {
            t.dtype() == DType::F32
        } else {
            t.dtype().is_float() || t.dtype().is_quantized()
        };
        if !ok {
            return Err(ModelError::format(
                path,
                format!("tensor `{name}` has unusable type {}", t.dtype()),
            ));
        }
    }
    let names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    if let Some((extra, _)) = weights.iter().find(|(n, _)| !names.contains(n.as_str())) {
        return Err(ModelError::format(
            path,
            format!(
                "tensor `{extra}` is not used by a {} model with this config; refusing to run a model we would compute wrongly",
                cfg.arch.name()
            ),
        ));
    }
    Ok(())
}

/// Decodes a float tensor (F32/F16/BF16) to f32 values.
pub fn to_f32_vec(t: &Tensor) -> std::result::Result<Vec<f32>, String> {
    let bytes = t.cpu_bytes().map_err(|e| e.to_string())?;
    Ok(match t.dtype() {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("expected a float tensor, found {other}")),
    })
}

/// A per-value adjustment of a named vector.
pub type Adjust = dyn Fn(&str, f32) -> f32;

/// Converts every 1-D tensor (norm weights, biases) to an owned F32 tensor, applying
/// `adjust` to each value (Hugging Face Gemma stores norm weights as `w` and applies
/// `1 + w`; we add the 1 here, as llama.cpp's converter does). F32 vectors without an
/// adjustment are left as they are (mapped).
pub fn vectors_to_f32(
    path: &Path,
    weights: &mut WeightStore,
    adjust: Option<&Adjust>,
) -> Result<()> {
    let names: Vec<String> = weights
        .iter()
        .filter(|(_, t)| t.shape().len() == 1 && (adjust.is_some() || t.dtype() != DType::F32))
        .map(|(n, _)| n.clone())
        .collect();
    for name in names {
        let t = weights.take(&name)?;
        let mut values = to_f32_vec(&t)
            .map_err(|e| ModelError::format(path, format!("tensor `{name}`: {e}")))?;
        if let Some(adjust) = adjust {
            for x in &mut values {
                *x = adjust(&name, *x);
            }
        }
        let t = Tensor::from_f32_cpu(t.shape(), &values)?;
        weights.insert(name, t);
    }
    Ok(())
}
