//! The Llama family block (Llama 2/3, Mistral, Qwen2, SmolLM, llama2.c):
//! pre-norm attention with RoPE and GQA, then a pre-norm SwiGLU FFN.
//!
//! ```text
//! h = x + Wo · attn(rope(Wq·n), rope(Wk·n), Wv·n),  n = rmsnorm(x)
//! y = h + Wdown · (silu(Wgate·m) ⊙ Wup·m),          m = rmsnorm(h)
//! ```

use sluice_backend::Device;

use super::common::{pre_norm, RopeTable, RunState};
use super::{ffn, qkv, FfnInWeights, LayerWeights, ProjInput, QkvWeights};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::LayerKv;

/// One block. On a batch-1 decode step of a device that fuses (`fuses_decode`), two
/// kernels fewer per layer: each input norm runs inside the GEMV that consumes it
/// (`ProjInput::FusedNorm`, on the residual stream `x`) and the output and down
/// projections add into `x` in their epilogue (`matmul_accumulate`), so neither the
/// normalized copy nor the block outputs go through memory. Same math either way. On
/// larger steps with bf16 weights on CUDA the output and down projections' GEMMs add into
/// `x` in their epilogue (`accumulates_matmul`) and the FFN keeps bf16 between its GEMMs
/// (`gated_ffn`).
pub fn block(
    dev: &Device,
    cfg: &ModelConfig,
    l: &LayerWeights,
    rope: &RopeTable,
    kv: &mut LayerKv,
    block_size: usize,
    st: &mut RunState,
) -> Result<()> {
    let eps = cfg.rms_eps;
    let fused = fuses_decode(dev, l, st.x.rows());
    let bf16 = !fused && bf16_activations(dev, l, st);
    let (attn_in, ffn_in) = if fused {
        if st.residual_pending {
            dev.add_inplace(&mut st.x, &st.xo)?;
            st.residual_pending = false;
        }
        let attn = ProjInput::FusedNorm {
            gamma: &l.attn_norm,
            eps,
        };
        let ffn = ProjInput::FusedNorm {
            gamma: &l.ffn_norm,
            eps,
        };
        (attn, ffn)
    } else {
        pre_norm(dev, &l.attn_norm, eps, bf16, st)?;
        let input = if bf16 {
            ProjInput::Bf16
        } else {
            ProjInput::Normed
        };
        (input, input)
    };
    if !qkv(dev, cfg, l, Some(rope), Some(&mut *kv), attn_in, st)? {
        dev.kv_write(&st.k, &st.v, &mut kv.k, &mut kv.v, &st.meta.slots)?;
    }
    let meta = st.meta.attention_meta(block_size);
    dev.paged_attention(&st.q, &kv.k, &kv.v, &meta, &l.attn, &mut st.att)?;
    if fused {
        dev.matmul_accumulate(&st.att, &l.wo, &mut st.x)?;
    } else if dev.accumulates_matmul(&l.wo, st.att.rows()) {
        // The residual add in the output projection's GEMM epilogue (beta 1 on `x`), so
        // the norm reads `x` alone.
        dev.matmul_accumulate(&st.att, &l.wo, &mut st.x)?;
        let xb = if bf16 { &mut st.xb16 } else { &mut st.xb };
        dev.rms_norm(&st.x, &l.ffn_norm, eps, xb)?;
    } else {
        dev.matmul(&st.att, &l.wo, &mut st.xo)?;
        dev.add_rms_norm(&mut st.x, &st.xo, &l.ffn_norm, eps, &mut st.xb)?;
    }
    // A down projection that added into `x` itself leaves nothing pending; one that wrote
    // `xo` leaves the add to the next norm.
    st.residual_pending = !ffn(dev, cfg, l, ffn_in, true, st)?;
    Ok(())
}

/// Whether this step's block runs on bf16 activations (CUDA, bf16 weights, more rows than
/// the GEMVs take): the norms write only bf16 (`st.xb16`, no f32 copy), the stacked Q/K/V
/// GEMM writes bf16 (`st.qkv16`) for the RoPE split, the output projection adds into `x`
/// and the FFN is `gated_ffn`. Against f32 with staged bf16 copies, a 16 × 1,024-token
/// prefill of the Llama-3.1-8B shape moves about 0.9 GB less per layer.
fn bf16_activations(dev: &Device, l: &LayerWeights, st: &RunState) -> bool {
    let rows = st.x.rows();
    let (QkvWeights::Fused { wqkv, bias: None }, FfnInWeights::Fused { w_gate_up }) =
        (&l.qkv, &l.ffn_in)
    else {
        return false;
    };
    st.xb16.cols() > 0
        && st.qkv16.cols() > 0
        && dev.gemm_epilogues(wqkv, rows)
        && dev.accumulates_matmul(&l.wo, rows)
        && dev.fuses_gated_ffn(w_gate_up, &l.w_down, rows)
}

/// Whether this block runs as a fused batch-1 decode step: one token, stacked Q/K/V and
/// gate/up, and weights whose GEMVs fold the norm and residual in (CUDA).
fn fuses_decode(dev: &Device, l: &LayerWeights, rows: usize) -> bool {
    let (QkvWeights::Fused { wqkv, .. }, FfnInWeights::Fused { w_gate_up }) = (&l.qkv, &l.ffn_in)
    else {
        return false;
    };
    [wqkv, &l.wo, w_gate_up, &l.w_down]
        .iter()
        .all(|w| dev.fuses_decode_matmul(w, rows))
}
