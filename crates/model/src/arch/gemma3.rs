//! The Gemma 3 block: per-head QK RMSNorm, sandwich norms (a norm after attention and
//! after the FFN, before each residual add), GeGLU, and local sliding-window layers with
//! their own RoPE base interleaved with global layers (5 local : 1 global).
//! Embeddings are scaled by sqrt(hidden) in `Model::forward`; norm weights already hold
//! Gemma's `1 + w` (the loaders add it for Hugging Face files).
//!
//! ```text
//! h = x + rmsnorm_post(Wo · attn(rope(qnorm(Wq·n)), rope(knorm(Wk·n)), Wv·n)),  n = rmsnorm(x)
//! y = h + rmsnorm_postffw(Wdown · (gelu(Wgate·m) ⊙ Wup·m)),                    m = rmsnorm(h)
//! ```

use sluice_backend::Device;

use super::common::{pre_norm, RopeTable, RunState};
use super::{apply_rope, ffn, qkv, LayerWeights, ProjInput};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv_cache::LayerKv;

pub fn block(
    dev: &Device,
    cfg: &ModelConfig,
    l: &LayerWeights,
    rope: &RopeTable,
    kv: &mut LayerKv,
    block_size: usize,
    st: &mut RunState,
) -> Result<()> {
    let missing = |what: &str| ModelError::MissingTensor(format!("gemma3 layer {what}"));
    pre_norm(dev, &l.attn_norm, cfg.rms_eps, false, st)?;
    qkv(dev, cfg, l, None, None, ProjInput::Normed, st)?;
    let q_norm = l.q_norm.as_ref().ok_or_else(|| missing("attn_q_norm"))?;
    let k_norm = l.k_norm.as_ref().ok_or_else(|| missing("attn_k_norm"))?;
    // Per-head norms: the op treats [T, heads*hd] as rows of hd.
    dev.rms_norm_inplace(&mut st.q, q_norm, cfg.rms_eps)?;
    dev.rms_norm_inplace(&mut st.k, k_norm, cfg.rms_eps)?;
    apply_rope(dev, cfg, rope, st)?;
    dev.kv_write(&st.k, &st.v, &mut kv.k, &mut kv.v, &st.meta.slots)?;
    let meta = st.meta.attention_meta(block_size);
    dev.paged_attention(&st.q, &kv.k, &kv.v, &meta, &l.attn, &mut st.att)?;
    dev.matmul(&st.att, &l.wo, &mut st.xo)?;
    let post_attn = l
        .post_attn_norm
        .as_ref()
        .ok_or_else(|| missing("post_attention_norm"))?;
    dev.rms_norm_inplace(&mut st.xo, post_attn, cfg.rms_eps)?;
    dev.add_rms_norm(&mut st.x, &st.xo, &l.ffn_norm, cfg.rms_eps, &mut st.xb)?;
    // Gemma's FFN output is normed (post_ffn) before the residual add: into `xo`.
    ffn(dev, cfg, l, ProjInput::Normed, false, st)?;
    let post_ffn = l
        .post_ffn_norm
        .as_ref()
        .ok_or_else(|| missing("post_ffw_norm"))?;
    dev.rms_norm_inplace(&mut st.xo, post_ffn, cfg.rms_eps)?;
    st.residual_pending = true;
    Ok(())
}
