//! Op-by-op timing: the forward pass of `sluice_model::arch` (llama and gemma3 blocks)
//! replayed op for op on the same device, buffers and batch metadata, with a clock read
//! between ops. `Model` keeps its weights private and has no timing hook, so this
//! replica owns a second handle to the same weights (mapped files are shared, not
//! copied). Its total is printed next to the real `Model::forward` time, so a replica
//! that drifted from the model would show as a mismatch.
//!
//! The ops run synchronously on the CPU backend, so a wall clock around each call is the
//! op's time. On a GPU every mark first waits for the device (a synchronize per op
//! group), so each op's time includes its launch latency: the ops' total is then above
//! the real forward, by roughly the launch cost times the number of groups.

use std::time::Instant;

use sluice_backend::{Device, QkvDims, Tensor};
use sluice_model::arch::common::RunState;
use sluice_model::arch::{FfnInWeights, ModelWeights, QkvWeights};
use sluice_model::config::FfnActivation;
use sluice_model::{BatchInput, KvCache, ModelConfig, ModelError, WeightStore};

use crate::analytic::OpKind;
use crate::error::{Result, RooflineError};

/// Per op kind: seconds summed over the layers of one step.
pub type OpTimes = Vec<(OpKind, f64)>;

pub struct OpHarness {
    device: Device,
    config: ModelConfig,
    weights: ModelWeights,
    state: RunState,
}

impl OpHarness {
    /// Builds the replica from host weights, as `Model::new` does (the same loader, so
    /// the same stacked projections on a GPU).
    pub fn new(
        device: &Device,
        config: ModelConfig,
        mut w: WeightStore,
        max_model_len: usize,
    ) -> Result<OpHarness> {
        config
            .validate()
            .map_err(|m| RooflineError::invalid("model config", m))?;
        let max_len = max_model_len.min(config.max_position).max(1);
        let weights = ModelWeights::load(device, &config, &mut w, max_len)?;
        let state = RunState::new(device, &config, 16, 4, weights.fused)?;
        Ok(OpHarness {
            device: device.clone(),
            config,
            weights,
            state,
        })
    }

    /// The logits of the last step, `[rows, vocab]`.
    pub fn logits(&self) -> &Tensor {
        &self.state.logits
    }

    /// Runs one step op by op, returning the seconds per op kind (in execution order).
    pub fn timed_forward(&mut self, batch: &BatchInput, kv: &mut KvCache) -> Result<OpTimes> {
        batch
            .validate(kv.num_blocks, kv.block_size)
            .map_err(|m| RooflineError::Model(ModelError::Batch(m)))?;
        let dev = &self.device;
        let cfg = &self.config;
        let st = &mut self.state;
        let w = &self.weights;
        st.prepare(dev, cfg, batch, None, None)?;
        let mut acc = [0f64; OpKind::ALL.len()];
        dev.synchronize()?;
        let mut clock = Instant::now();
        // Adds the time since the last mark to `kind` (after the device finished it).
        let mut mark = |kind: OpKind| {
            // A synchronize error resurfaces at the next op or at the step's end.
            let _ = dev.synchronize();
            let now = Instant::now();
            acc[kind as usize] += (now - clock).as_secs_f64();
            clock = now;
        };
        if batch.num_tokens() == 0 {
            return Ok(Vec::new());
        }
        let eps = cfg.rms_eps;
        dev.embedding(
            &st.meta.tokens,
            &w.tok_embd,
            cfg.embedding_scale.unwrap_or(1.0),
            &mut st.x,
        )?;
        mark(OpKind::Embedding);
        for (l, lkv) in w.layers.iter().zip(kv.layers.iter_mut()) {
            let rope = &w.ropes[l.rope];
            dev.rms_norm(&st.x, &l.attn_norm, eps, &mut st.xb)?;
            mark(OpKind::AttnNorm);
            let (hd, style) = (cfg.head_dim, cfg.rope_style);
            match &l.qkv {
                QkvWeights::Fused { wqkv, bias } => {
                    dev.matmul(&st.xb, wqkv, &mut st.qkv)?;
                    if let Some(b) = bias {
                        dev.add_bias_inplace(&mut st.qkv, b)?;
                    }
                    mark(OpKind::QkvProj);
                    let dims = QkvDims {
                        n_heads: cfg.n_heads,
                        n_kv_heads: cfg.n_kv_heads,
                        head_dim: hd,
                        style,
                    };
                    let pos = &st.meta.positions;
                    dev.split_qkv_rope(
                        &st.qkv, pos, &rope.cos, &rope.sin, dims, &mut st.q, &mut st.k, &mut st.v,
                        None,
                    )?;
                    mark(OpKind::Rope);
                }
                QkvWeights::Separate {
                    wq,
                    wk,
                    wv,
                    bq,
                    bk,
                    bv,
                } => {
                    dev.matmul(&st.xb, wq, &mut st.q)?;
                    dev.matmul(&st.xb, wk, &mut st.k)?;
                    dev.matmul(&st.xb, wv, &mut st.v)?;
                    for (b, out) in [(bq, &mut st.q), (bk, &mut st.k), (bv, &mut st.v)] {
                        if let Some(b) = b {
                            dev.add_bias_inplace(out, b)?;
                        }
                    }
                    mark(OpKind::QkvProj);
                    if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                        dev.rms_norm_inplace(&mut st.q, qn, eps)?;
                        dev.rms_norm_inplace(&mut st.k, kn, eps)?;
                        mark(OpKind::QkNorm);
                    }
                    let pos = &st.meta.positions;
                    dev.rope_inplace(&mut st.q, pos, &rope.cos, &rope.sin, cfg.n_heads, hd, style)?;
                    dev.rope_inplace(
                        &mut st.k,
                        pos,
                        &rope.cos,
                        &rope.sin,
                        cfg.n_kv_heads,
                        hd,
                        style,
                    )?;
                    mark(OpKind::Rope);
                }
            }
            dev.kv_write(&st.k, &st.v, &mut lkv.k, &mut lkv.v, &st.meta.slots)?;
            mark(OpKind::KvWrite);
            let meta = st.meta.attention_meta(kv.block_size);
            dev.paged_attention(&st.q, &lkv.k, &lkv.v, &meta, &l.attn, &mut st.att)?;
            mark(OpKind::Attention);
            dev.matmul(&st.att, &l.wo, &mut st.xo)?;
            mark(OpKind::OProj);
            if let (true, Some(n)) = (cfg.sandwich_norms, &l.post_attn_norm) {
                dev.rms_norm_inplace(&mut st.xo, n, eps)?;
                mark(OpKind::PostAttnNorm);
            }
            dev.add_inplace(&mut st.x, &st.xo)?;
            mark(OpKind::Residual);
            dev.rms_norm(&st.x, &l.ffn_norm, eps, &mut st.xb)?;
            mark(OpKind::FfnNorm);
            let silu = cfg.activation == FfnActivation::Silu;
            match &l.ffn_in {
                FfnInWeights::Fused { w_gate_up } => {
                    dev.matmul(&st.xb, w_gate_up, &mut st.gate_up)?;
                    mark(OpKind::GateUp);
                    dev.glu_packed(&st.gate_up, &mut st.act, silu)?;
                }
                FfnInWeights::Separate { w_gate, w_up } => {
                    dev.matmul(&st.xb, w_gate, &mut st.gate)?;
                    dev.matmul(&st.xb, w_up, &mut st.up)?;
                    mark(OpKind::GateUp);
                    if silu {
                        dev.silu_mul(&st.gate, &st.up, &mut st.act)?;
                    } else {
                        dev.gelu_mul(&st.gate, &st.up, &mut st.act)?;
                    }
                }
            }
            mark(OpKind::Glu);
            dev.matmul(&st.act, &l.w_down, &mut st.xo)?;
            mark(OpKind::DownProj);
            if let (true, Some(n)) = (cfg.sandwich_norms, &l.post_ffn_norm) {
                dev.rms_norm_inplace(&mut st.xo, n, eps)?;
                mark(OpKind::PostFfnNorm);
            }
            dev.add_inplace(&mut st.x, &st.xo)?;
            mark(OpKind::Residual);
        }
        dev.gather_rows(&st.x, &st.meta.logits_rows, &mut st.last)?;
        dev.rms_norm_inplace(&mut st.last, &w.output_norm, eps)?;
        mark(OpKind::FinalNorm);
        dev.matmul(&st.last, &w.output, &mut st.logits)?;
        if let Some(cap) = cfg.final_logit_softcap {
            dev.softcap_inplace(&mut st.logits, cap)?;
        }
        mark(OpKind::LmHead);
        let present = |k: OpKind| match k {
            OpKind::QkNorm => cfg.qk_norm,
            OpKind::PostAttnNorm | OpKind::PostFfnNorm => cfg.sandwich_norms,
            _ => true,
        };
        Ok(OpKind::ALL
            .iter()
            .filter(|&&k| present(k))
            .map(|&k| (k, acc[k as usize]))
            .collect())
    }
}
