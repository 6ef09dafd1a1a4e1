//! Model shapes by name, for analysis without a file and for random-weight benchmarks.
//!
//! The values are copied from each model's Hugging Face `config.json`. The `-bench`
//! variants are the shapes the project's GPU benchmarks use: the same transformer with
//! a 49,152-token vocabulary and an untied output head (so "8B" has 7.38 B parameters,
//! 14.77 GB in F16), which keeps the LM head from dominating small-batch comparisons.

use sluice_backend::RopeStyle;
use sluice_model::config::{Arch, FfnActivation, Llama3RopeScaling, ModelConfig, RopeScaling};

/// One named preset and what it is.
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
}

/// Every preset name, in the order `--list` shows them.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m",
        description: "SmolLM2-135M (30 layers, hidden 576, GQA 9/3, vocab 49152, tied)",
    },
    Preset {
        name: "llama-3.2-1b",
        description: "Llama-3.2-1B (16 layers, hidden 2048, GQA 32/8, vocab 128256, tied)",
    },
    Preset {
        name: "llama-3.2-1b-bench",
        description: "Llama-3.2-1B shapes with vocab 49152 and an untied head (benchmark shapes)",
    },
    Preset {
        name: "llama-3.1-8b",
        description: "Llama-3.1-8B (32 layers, hidden 4096, GQA 32/8, vocab 128256, untied)",
    },
    Preset {
        name: "llama-3.1-8b-bench",
        description: "Llama-3.1-8B shapes with vocab 49152 (7.38 B parameters; benchmark shapes)",
    },
    Preset {
        name: "qwen2.5-7b",
        description: "Qwen2.5-7B (28 layers, hidden 3584, GQA 28/4, q/k/v biases, vocab 152064)",
    },
];

/// The names of all presets.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// A Llama-family config with the fields every preset shares.
#[allow(clippy::too_many_arguments)]
fn llama(
    name: &str,
    hidden: usize,
    ffn: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    max_position: usize,
    tie: bool,
) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        name: name.to_string(),
        hidden_size: hidden,
        intermediate_size: ffn,
        n_layers: layers,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: hidden / heads,
        vocab_size: vocab,
        max_position,
        rms_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_local_theta: None,
        rope_scaling: RopeScaling::None,
        // Hugging Face checkpoints rotate halves; random weights do not care.
        rope_style: RopeStyle::Neox,
        sliding_window: None,
        sliding_window_pattern: None,
        activation: FfnActivation::Silu,
        tie_embeddings: tie,
        qkv_bias: false,
        qk_norm: false,
        sandwich_norms: false,
        embedding_scale: None,
        attn_scale: None,
        attn_logit_softcap: None,
        final_logit_softcap: None,
    }
}

fn llama3_scaling(factor: f32) -> RopeScaling {
    RopeScaling::Llama3(Llama3RopeScaling {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192,
    })
}

/// The config of preset `name` (case-insensitive), or `None` if there is no such preset.
pub fn by_name(name: &str) -> Option<ModelConfig> {
    let lower = name.trim().to_ascii_lowercase();
    let cfg = match lower.as_str() {
        "smollm2-135m" => ModelConfig {
            rope_theta: 100_000.0,
            ..llama("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, 8192, true)
        },
        "llama-3.2-1b" | "llama-3.2-1b-bench" => {
            let bench = lower.ends_with("-bench");
            let (vocab, tie, name) = if bench {
                (49152, false, "Llama-3.2-1B (bench shapes)")
            } else {
                (128_256, true, "Llama-3.2-1B")
            };
            ModelConfig {
                rope_theta: 500_000.0,
                rope_scaling: llama3_scaling(32.0),
                ..llama(name, 2048, 8192, 16, 32, 8, vocab, 131_072, tie)
            }
        }
        "llama-3.1-8b" | "llama-3.1-8b-bench" => {
            let bench = lower.ends_with("-bench");
            let (vocab, name) = if bench {
                (49152, "Llama-3.1-8B (bench shapes)")
            } else {
                (128_256, "Llama-3.1-8B")
            };
            ModelConfig {
                rope_theta: 500_000.0,
                rope_scaling: llama3_scaling(8.0),
                ..llama(name, 4096, 14336, 32, 32, 8, vocab, 131_072, false)
            }
        }
        "qwen2.5-7b" => ModelConfig {
            rms_eps: 1e-6,
            rope_theta: 1_000_000.0,
            qkv_bias: true,
            ..llama("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152_064, 32768, false)
        },
        _ => return None,
    };
    Some(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_preset_resolves_and_validates() {
        for p in PRESETS {
            let cfg = by_name(p.name).unwrap_or_else(|| panic!("{} does not resolve", p.name));
            cfg.validate().unwrap_or_else(|e| panic!("{}: {e}", p.name));
        }
        assert!(by_name("LLAMA-3.1-8B").is_some());
        assert!(by_name("llama-9").is_none());
    }

    #[test]
    fn parameter_counts_match_the_published_sizes() {
        let count = |n: &str| by_name(n).map(|c| c.parameter_count()).unwrap_or(0);
        // Published sizes: 8.03 B, 1.24 B, 7.62 B, 135 M.
        assert_eq!(count("llama-3.1-8b"), 8_030_261_248);
        assert_eq!(count("llama-3.2-1b"), 1_235_814_400);
        assert_eq!(count("qwen2.5-7b"), 7_615_616_512);
        assert_eq!(count("smollm2-135m"), 134_515_008);
        // The benchmark shapes: 7.38 B parameters, 14.77 GB in F16.
        let bench = count("llama-3.1-8b-bench");
        assert_eq!(bench, 7_382_241_280);
        assert!((bench as f64 * 2.0 / 1e9 - 14.76).abs() < 0.01);
    }
}
