//! Architecture-independent model configuration, filled by each loader.

use sluice_backend::RopeStyle;

/// Architecture families with a forward pass in `arch/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, Qwen2 (q/k/v biases), SmolLM, TinyLlama, llama2.c checkpoints.
    Llama,
    /// Gemma 3: QK norm, sandwich norms, GeGLU, scaled embeddings, local/global layers.
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// Llama 3 "rope_type: llama3" frequency scaling (Meta's long-context recipe).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by the factor.
    Linear(f32),
    Llama3(Llama3RopeScaling),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnActivation {
    /// SwiGLU: silu(gate) * up.
    Silu,
    /// GeGLU with the tanh approximation of GELU.
    GeluTanh,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Human-readable name (from metadata or the file name).
    pub name: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_position: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// Gemma 3 local (sliding-window) layers use their own base.
    pub rope_local_theta: Option<f32>,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    /// Sliding-window size for windowed layers (Mistral: every layer; Gemma 3: local layers).
    pub sliding_window: Option<usize>,
    /// Gemma 3: every `n`-th layer (1-based: layers n-1, 2n-1, ...) is global, the rest local.
    /// `None` with a window means every layer is windowed.
    pub sliding_window_pattern: Option<usize>,
    pub activation: FfnActivation,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    /// Gemma: per-head RMSNorm on q and k.
    pub qk_norm: bool,
    /// Gemma: post-attention and post-FFN norms before each residual add.
    pub sandwich_norms: bool,
    /// Multiplies embeddings (Gemma: sqrt(hidden)).
    pub embedding_scale: Option<f32>,
    /// Attention score scale; default 1/sqrt(head_dim). Gemma: query_pre_attn_scalar^-0.5.
    pub attn_scale: Option<f32>,
    pub attn_logit_softcap: Option<f32>,
    pub final_logit_softcap: Option<f32>,
}

impl ModelConfig {
    /// Whether layer `i` attends over a sliding window, and its RoPE base.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let w = self.sliding_window?;
        match self.sliding_window_pattern {
            Some(n) if n > 0 && (layer + 1).is_multiple_of(n) => None,
            _ => Some(w),
        }
    }

    pub fn layer_rope_theta(&self, layer: usize) -> f32 {
        match (self.layer_window(layer), self.rope_local_theta) {
            (Some(_), Some(local)) => local,
            _ => self.rope_theta,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn attention_scale(&self) -> f32 {
        self.attn_scale
            .unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }

    /// Checks internal consistency; the error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position", self.max_position),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        // Absurd sizes would make us allocate terabytes; refuse them up front.
        let limits = [
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 19),
            ("n_layers", self.n_layers, 1 << 10),
            ("n_heads", self.n_heads, 1 << 10),
            ("head_dim", self.head_dim, 1 << 10),
            ("vocab_size", self.vocab_size, 1 << 22),
        ];
        for (name, v, max) in limits {
            if v > max {
                return Err(format!("{name} = {v} is absurd (limit {max})"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// Parameter count implied by the shapes (embeddings counted once if tied).
    pub fn parameter_count(&self) -> u64 {
        let (h, f, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let (q, kv) = (self.q_dim() as u64, self.kv_dim() as u64);
        let mut layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h;
        if self.qkv_bias {
            layer += q + 2 * kv;
        }
        if self.qk_norm {
            layer += 2 * self.head_dim as u64;
        }
        if self.sandwich_norms {
            layer += 2 * h;
        }
        let head = if self.tie_embeddings { 0 } else { v * h };
        v * h + head + h + self.n_layers as u64 * layer
    }
}
