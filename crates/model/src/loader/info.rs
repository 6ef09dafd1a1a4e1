//! `sluice info`: a summary of a loaded model computed from its actual tensors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use sluice_backend::DType;

use crate::config::{ModelConfig, RopeScaling};
use crate::loader::{LoadedModel, ModelFormat};

#[derive(Clone, Debug)]
pub struct ModelSummary {
    pub name: String,
    /// GGUF `general.architecture`, else the architecture family.
    pub architecture: String,
    pub format: ModelFormat,
    pub path: PathBuf,
    pub config: ModelConfig,
    /// Elements over all tensors (a tied embedding counted once).
    pub parameters: u64,
    pub quant_mix: BTreeMap<String, usize>,
    pub weight_bytes: u64,
    pub kv_dtype: DType,
    /// K and V over all layers for one token.
    pub kv_bytes_per_token: u64,
    pub context_length: usize,
    pub tokenizer_source: &'static str,
    pub tokenizer_vocab: usize,
    pub bos: Option<(u32, String)>,
    /// Ids that end generation, with their text.
    pub eos: Vec<(u32, String)>,
    pub chat_template: bool,
}

impl ModelSummary {
    /// Summarises `m`, sizing the KV cache for elements of `kv_dtype`.
    pub fn new(m: &LoadedModel, kv_dtype: DType) -> ModelSummary {
        let cfg = &m.config;
        let parameters = m.weights.iter().map(|(_, t)| t.numel() as u64).sum();
        let weight_bytes = m.weights.total_bytes() as u64;
        let per_elem = kv_dtype.block_bytes() as f64 / kv_dtype.block_size() as f64;
        let kv_bytes_per_token =
            (2.0 * cfg.n_layers as f64 * cfg.kv_dim() as f64 * per_elem).ceil() as u64;
        let text = |id: u32| m.tokenizer.id_to_token(id).unwrap_or_default();
        let architecture = m
            .metadata
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or(cfg.arch.name())
            .to_string();
        ModelSummary {
            name: cfg.name.clone(),
            architecture,
            format: m.format,
            path: m.path.clone(),
            config: cfg.clone(),
            parameters,
            quant_mix: m.quant_mix.clone(),
            weight_bytes,
            kv_dtype,
            kv_bytes_per_token,
            context_length: cfg.max_position,
            tokenizer_source: m.tokenizer.source(),
            tokenizer_vocab: m.tokenizer.vocab_size(),
            bos: m.tokenizer.bos_id().map(|id| (id, text(id))),
            eos: m
                .generation
                .eos_token_ids
                .iter()
                .map(|&id| (id, text(id)))
                .collect(),
            chat_template: m.chat_template.is_some(),
        }
    }
}

/// `1234567` -> `1,234,567`.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(f, "model:          {}", self.name)?;
        writeln!(
            f,
            "path:           {} ({})",
            self.path.display(),
            self.format
        )?;
        writeln!(
            f,
            "architecture:   {} ({} layers, hidden {}, FFN {} {}, {} heads / {} KV heads x {})",
            self.architecture,
            c.n_layers,
            c.hidden_size,
            c.intermediate_size,
            match c.activation {
                crate::config::FfnActivation::Silu => "SwiGLU",
                crate::config::FfnActivation::GeluTanh => "GeGLU",
            },
            c.n_heads,
            c.n_kv_heads,
            c.head_dim
        )?;
        writeln!(
            f,
            "parameters:     {} ({:.1} M){}",
            grouped(self.parameters),
            self.parameters as f64 / 1e6,
            if c.tie_embeddings {
                ", tied embeddings"
            } else {
                ""
            }
        )?;
        let mix: Vec<String> = self
            .quant_mix
            .iter()
            .map(|(d, n)| format!("{d} x{n}"))
            .collect();
        writeln!(
            f,
            "weights:        {} ({:.2} bits/param): {}",
            bytes(self.weight_bytes),
            self.weight_bytes as f64 * 8.0 / self.parameters.max(1) as f64,
            mix.join(", ")
        )?;
        writeln!(
            f,
            "KV cache:       {} per token ({}), {} at the full context",
            bytes(self.kv_bytes_per_token),
            self.kv_dtype,
            bytes(self.kv_bytes_per_token * self.context_length as u64)
        )?;
        writeln!(f, "context:        {} tokens", self.context_length)?;
        let scaling = match c.rope_scaling {
            RopeScaling::None => String::new(),
            RopeScaling::Linear(x) => format!(", linear scaling x{x}"),
            RopeScaling::Llama3(s) => format!(
                ", llama3 scaling x{} (original {})",
                s.factor, s.original_max_position
            ),
        };
        let local = match c.rope_local_theta {
            Some(t) => format!(", local layers {t}"),
            None => String::new(),
        };
        writeln!(
            f,
            "rope:           {:?}, base {}{local}{scaling}",
            c.rope_style, c.rope_theta
        )?;
        if let Some(w) = c.sliding_window {
            match c.sliding_window_pattern {
                Some(n) => writeln!(f, "sliding window: {w} on all but every {n}th layer")?,
                None => writeln!(f, "sliding window: {w} on every layer")?,
            }
        }
        writeln!(
            f,
            "tokenizer:      {} tokens ({})",
            self.tokenizer_vocab, self.tokenizer_source
        )?;
        let show = |(id, s): &(u32, String)| format!("{id} {s:?}");
        writeln!(
            f,
            "special tokens: bos {}; end of generation {}",
            self.bos.as_ref().map(show).unwrap_or_else(|| "none".into()),
            if self.eos.is_empty() {
                "none".to_string()
            } else {
                self.eos.iter().map(show).collect::<Vec<_>>().join(", ")
            }
        )?;
        write!(
            f,
            "chat template:  {}",
            if self.chat_template { "yes" } else { "no" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(134_515_008), "134,515,008");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(98_362_432), "93.81 MiB");
    }
}
