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

use sluice_backend::{AttentionParams, DType, Device, Tensor};
use sluice_model::arch::common::{RopeTable, RunState};
use sluice_model::arch::LayerWeights;
use sluice_model::config::FfnActivation;
use sluice_model::{BatchInput, KvCache, ModelConfig, ModelError, WeightStore};

use crate::analytic::OpKind;
use crate::error::{Result, RooflineError};

/// Norm weights are used as F32 whatever the file stored (as `Model::new` does).
fn to_f32(t: Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        return Ok(t);
    }
    let mut data = vec![0f32; t.numel()];
    sluice_backend::quant::dequantize_row(t.dtype(), t.cpu_bytes()?, &mut data)?;
    Ok(Tensor::from_f32_cpu(t.shape(), &data)?)
}

/// Per op kind: seconds summed over the layers of one step.
pub type OpTimes = Vec<(OpKind, f64)>;

pub struct OpHarness {
    device: Device,
    config: ModelConfig,
    /// `[vocab, hidden]`
    tok_embd: Tensor,
    /// `[vocab, hidden]`
    output: Tensor,
    /// `[hidden]`
    output_norm: Tensor,
    layers: Vec<LayerWeights>,
    ropes: Vec<RopeTable>,
    state: RunState,
}

impl OpHarness {
    /// Builds the replica from host weights, as `Model::new` does.
    pub fn new(
        device: &Device,
        config: ModelConfig,
        mut w: WeightStore,
        max_model_len: usize,
    ) -> Result<OpHarness> {
        config
            .validate()
            .map_err(|m| RooflineError::invalid("model config", m))?;
        let c = &config;
        let hd = c.head_dim;
        let tok_embd = w.take("token_embd.weight")?;
        let output_host = if c.tie_embeddings {
            tok_embd.duplicate()?
        } else {
            w.take("output.weight")?
        };
        let output = device.load_weight(output_host)?;
        let tok_embd = device.load_weight_rows(tok_embd)?;
        let output_norm = device.load_weight(to_f32(w.take("output_norm.weight")?)?)?;
        let max_len = max_model_len.min(c.max_position).max(1);
        let mut ropes: Vec<RopeTable> = Vec::new();
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let theta = c.layer_rope_theta(i);
            let rope = match ropes.iter().position(|r| r.theta == theta) {
                Some(r) => r,
                None => {
                    ropes.push(RopeTable::new(device, hd, theta, &c.rope_scaling, max_len)?);
                    ropes.len() - 1
                }
            };
            let p = |s: &str| format!("blk.{i}.{s}");
            let mut mat = |s: &str| -> Result<Tensor> { Ok(device.load_weight(w.take(&p(s))?)?) };
            let (wq, wk, wv, wo) = (
                mat("attn_q.weight")?,
                mat("attn_k.weight")?,
                mat("attn_v.weight")?,
                mat("attn_output.weight")?,
            );
            let (w_gate, w_up, w_down) = (
                mat("ffn_gate.weight")?,
                mat("ffn_up.weight")?,
                mat("ffn_down.weight")?,
            );
            let mut vec =
                |s: &str| -> Result<Tensor> { Ok(device.load_weight(to_f32(w.take(&p(s))?)?)?) };
            let mut opt = |on: bool, s: &str| -> Result<Option<Tensor>> {
                if on {
                    vec(s).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (attn_norm, ffn_norm) = (
                opt(true, "attn_norm.weight")?,
                opt(true, "ffn_norm.weight")?,
            );
            let (bq, bk, bv) = (
                opt(c.qkv_bias, "attn_q.bias")?,
                opt(c.qkv_bias, "attn_k.bias")?,
                opt(c.qkv_bias, "attn_v.bias")?,
            );
            let (q_norm, k_norm) = (
                opt(c.qk_norm, "attn_q_norm.weight")?,
                opt(c.qk_norm, "attn_k_norm.weight")?,
            );
            let post_attn_norm = opt(c.sandwich_norms, "post_attention_norm.weight")?;
            let post_ffn_norm = opt(c.sandwich_norms, "post_ffw_norm.weight")?;
            let missing = |what: &str| RooflineError::Model(ModelError::MissingTensor(p(what)));
            layers.push(LayerWeights {
                attn_norm: attn_norm.ok_or_else(|| missing("attn_norm.weight"))?,
                wq,
                wk,
                wv,
                wo,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm: ffn_norm.ok_or_else(|| missing("ffn_norm.weight"))?,
                w_gate,
                w_up,
                w_down,
                post_ffn_norm,
                rope,
                attn: AttentionParams {
                    n_heads: c.n_heads,
                    n_kv_heads: c.n_kv_heads,
                    head_dim: hd,
                    scale: c.attention_scale(),
                    sliding_window: c.layer_window(i),
                    softcap: c.attn_logit_softcap,
                },
            });
        }
        let state = RunState::new(device, c, 16, 4)?;
        Ok(OpHarness {
            device: device.clone(),
            config,
            tok_embd,
            output,
            output_norm,
            layers,
            ropes,
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
        st.prepare(dev, cfg, batch)?;
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
            &self.tok_embd,
            cfg.embedding_scale.unwrap_or(1.0),
            &mut st.x,
        )?;
        mark(OpKind::Embedding);
        for (l, lkv) in self.layers.iter().zip(kv.layers.iter_mut()) {
            let rope = &self.ropes[l.rope];
            dev.rms_norm(&st.x, &l.attn_norm, eps, &mut st.xb)?;
            mark(OpKind::AttnNorm);
            dev.matmul(&st.xb, &l.wq, &mut st.q)?;
            dev.matmul(&st.xb, &l.wk, &mut st.k)?;
            dev.matmul(&st.xb, &l.wv, &mut st.v)?;
            for (b, out) in [(&l.bq, &mut st.q), (&l.bk, &mut st.k), (&l.bv, &mut st.v)] {
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
            let (hd, pos) = (cfg.head_dim, &st.meta.positions);
            dev.rope_inplace(
                &mut st.q,
                pos,
                &rope.cos,
                &rope.sin,
                cfg.n_heads,
                hd,
                cfg.rope_style,
            )?;
            dev.rope_inplace(
                &mut st.k,
                pos,
                &rope.cos,
                &rope.sin,
                cfg.n_kv_heads,
                hd,
                cfg.rope_style,
            )?;
            mark(OpKind::Rope);
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
            dev.matmul(&st.xb, &l.w_gate, &mut st.gate)?;
            dev.matmul(&st.xb, &l.w_up, &mut st.up)?;
            mark(OpKind::GateUp);
            match cfg.activation {
                FfnActivation::Silu => dev.silu_mul(&st.gate, &st.up, &mut st.act)?,
                FfnActivation::GeluTanh => dev.gelu_mul(&st.gate, &st.up, &mut st.act)?,
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
        dev.rms_norm_inplace(&mut st.last, &self.output_norm, eps)?;
        mark(OpKind::FinalNorm);
        dev.matmul(&st.last, &self.output, &mut st.logits)?;
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
