//! The Llama family block (Llama 2/3, Mistral, Qwen2, SmolLM, llama2.c):
//! pre-norm attention with RoPE and GQA, then a pre-norm SwiGLU FFN.
//!
//! ```text
//! h = x + Wo · attn(rope(Wq·n), rope(Wk·n), Wv·n),  n = rmsnorm(x)
//! y = h + Wdown · (silu(Wgate·m) ⊙ Wup·m),          m = rmsnorm(h)
//! ```

use sluice_backend::Device;

use super::common::{pre_norm, RopeTable, RunState};
use super::{ffn, qkv, LayerWeights};
use crate::config::ModelConfig;
use crate::error::Result;
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
    pre_norm(dev, &l.attn_norm, cfg.rms_eps, st)?;
    if !qkv(dev, cfg, l, Some(rope), Some(&mut *kv), st)? {
        dev.kv_write(&st.k, &st.v, &mut kv.k, &mut kv.v, &st.meta.slots)?;
    }
    let meta = st.meta.attention_meta(block_size);
    dev.paged_attention(&st.q, &kv.k, &kv.v, &meta, &l.attn, &mut st.att)?;
    dev.matmul(&st.att, &l.wo, &mut st.xo)?;
    dev.add_rms_norm(&mut st.x, &st.xo, &l.ffn_norm, cfg.rms_eps, &mut st.xb)?;
    ffn(dev, cfg, l, st)?;
    st.residual_pending = true;
    Ok(())
}
