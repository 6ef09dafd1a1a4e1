//! Architectures. `Model` owns the device weights and the run state and runs one
//! batched forward per step; each architecture file holds its transformer block.

pub mod common;
pub mod gemma3;
pub mod llama;

use sluice_backend::{AttentionParams, DType, Device, Tensor};

use crate::batch::BatchInput;
use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::weights::WeightStore;
use common::{RopeTable, RunState};

/// One transformer block's weights (device tensors). 2-D weights are `[out, in]`.
pub struct LayerWeights {
    /// `[hidden]`
    pub attn_norm: Tensor,
    /// `[n_heads * head_dim, hidden]`
    pub wq: Tensor,
    /// `[n_kv_heads * head_dim, hidden]`
    pub wk: Tensor,
    /// `[n_kv_heads * head_dim, hidden]`
    pub wv: Tensor,
    /// `[hidden, n_heads * head_dim]`
    pub wo: Tensor,
    /// Qwen2: `[q_dim]`, `[kv_dim]`, `[kv_dim]`
    pub bq: Option<Tensor>,
    pub bk: Option<Tensor>,
    pub bv: Option<Tensor>,
    /// Gemma: `[head_dim]` per-head RMSNorm weights
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// Gemma sandwich norm after attention, `[hidden]`
    pub post_attn_norm: Option<Tensor>,
    /// `[hidden]`
    pub ffn_norm: Tensor,
    /// `[ffn, hidden]`
    pub w_gate: Tensor,
    /// `[ffn, hidden]`
    pub w_up: Tensor,
    /// `[hidden, ffn]`
    pub w_down: Tensor,
    /// Gemma sandwich norm after the FFN, `[hidden]`
    pub post_ffn_norm: Option<Tensor>,
    /// Index into `Model::ropes` for this layer's base frequency.
    pub rope: usize,
    pub attn: AttentionParams,
}

/// A loaded model ready to run on a device.
pub struct Model {
    pub config: ModelConfig,
    device: Device,
    /// `[vocab, hidden]` (kept in its file layout for row lookups)
    tok_embd: Tensor,
    /// `[vocab, hidden]` output head in the device's matmul layout
    output: Tensor,
    /// `[hidden]`
    output_norm: Tensor,
    layers: Vec<LayerWeights>,
    ropes: Vec<RopeTable>,
    state: RunState,
    max_model_len: usize,
}

/// Norm weights are used as F32 whatever the file stored.
fn to_f32(t: Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        return Ok(t);
    }
    let n = t.numel();
    let mut data = vec![0f32; n];
    sluice_backend::quant::dequantize_row(t.dtype(), t.cpu_bytes()?, &mut data)?;
    Ok(Tensor::from_f32_cpu(t.shape(), &data)?)
}

fn expect_shape(name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(ModelError::TensorShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            found: t.shape().to_vec(),
        });
    }
    Ok(())
}

impl Model {
    /// Builds the model on `device` from host weights. `max_model_len` bounds positions
    /// (RoPE tables are built that long).
    pub fn new(
        device: &Device,
        config: ModelConfig,
        mut w: WeightStore,
        max_model_len: usize,
    ) -> Result<Model> {
        config.validate().map_err(ModelError::Config)?;
        let c = &config;
        let (h, f, qd, kvd, hd) = (
            c.hidden_size,
            c.intermediate_size,
            c.q_dim(),
            c.kv_dim(),
            c.head_dim,
        );
        let max_model_len = max_model_len.min(c.max_position).max(1);

        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = w.take(name)?;
            expect_shape(name, &t, shape)?;
            Ok(t)
        };
        let tok_embd = take("token_embd.weight", &[c.vocab_size, h])?;
        let output_norm = to_f32(take("output_norm.weight", &[h])?)?;
        let output_host = if c.tie_embeddings {
            tok_embd.duplicate()?
        } else {
            take("output.weight", &[c.vocab_size, h])?
        };
        let output = device.load_weight(output_host)?;
        let tok_embd = device.load_weight_rows(tok_embd)?;
        let output_norm = device.load_weight(output_norm)?;

        // One RoPE table per distinct base frequency (Gemma 3 has two).
        let mut ropes: Vec<RopeTable> = Vec::new();
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let theta = c.layer_rope_theta(i);
            let rope = match ropes.iter().position(|r| r.theta == theta) {
                Some(r) => r,
                None => {
                    ropes.push(RopeTable::new(
                        device,
                        hd,
                        theta,
                        &c.rope_scaling,
                        max_model_len,
                    )?);
                    ropes.len() - 1
                }
            };
            let p = |s: &str| format!("blk.{i}.{s}");
            let mut mat = |s: &str, shape: &[usize]| -> Result<Tensor> {
                Ok(device.load_weight(take(&p(s), shape)?)?)
            };
            let wq = mat("attn_q.weight", &[qd, h])?;
            let wk = mat("attn_k.weight", &[kvd, h])?;
            let wv = mat("attn_v.weight", &[kvd, h])?;
            let wo = mat("attn_output.weight", &[h, qd])?;
            let w_gate = mat("ffn_gate.weight", &[f, h])?;
            let w_up = mat("ffn_up.weight", &[f, h])?;
            let w_down = mat("ffn_down.weight", &[h, f])?;
            let mut vec = |s: &str, n: usize| -> Result<Tensor> {
                let t = to_f32(take(&p(s), &[n])?)?;
                Ok(device.load_weight(t)?)
            };
            let attn_norm = vec("attn_norm.weight", h)?;
            let ffn_norm = vec("ffn_norm.weight", h)?;
            let (bq, bk, bv) = if c.qkv_bias {
                (
                    Some(vec("attn_q.bias", qd)?),
                    Some(vec("attn_k.bias", kvd)?),
                    Some(vec("attn_v.bias", kvd)?),
                )
            } else {
                (None, None, None)
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(vec("attn_q_norm.weight", hd)?),
                    Some(vec("attn_k_norm.weight", hd)?),
                )
            } else {
                (None, None)
            };
            let (post_attn_norm, post_ffn_norm) = if c.sandwich_norms {
                (
                    Some(vec("post_attention_norm.weight", h)?),
                    Some(vec("post_ffw_norm.weight", h)?),
                )
            } else {
                (None, None)
            };
            layers.push(LayerWeights {
                attn_norm,
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
                ffn_norm,
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
        Ok(Model {
            config,
            device: device.clone(),
            tok_embd,
            output,
            output_norm,
            layers,
            ropes,
            state,
            max_model_len,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Longest sequence (prompt + output) this instance supports.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// Bytes of weights read by one decode step (all matrices, the head once).
    pub fn weight_bytes(&self) -> usize {
        let layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|t| t.size_in_bytes())
                    .sum::<usize>()
            })
            .sum();
        layer + self.output.size_in_bytes()
    }

    /// Allocates a KV cache for this model on its device.
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        self.new_kv_cache_with(num_blocks, block_size, self.device.default_kv_dtype())
    }

    /// Allocates a KV cache of `dtype` (CPU: F32, F16, BF16 or Q8_0; Q8_0 needs
    /// `head_dim % 32 == 0`), with a clear error otherwise.
    pub fn new_kv_cache_with(
        &self,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        KvCache::new(&self.device, &self.config, num_blocks, block_size, dtype)
    }

    /// Runs one batched step: writes this step's K/V into `kv` and returns the logits
    /// `[batch.logits_indices.len(), vocab]` (F32 on the device).
    pub fn forward(&mut self, batch: &BatchInput, kv: &mut KvCache) -> Result<&Tensor> {
        batch
            .validate(kv.num_blocks, kv.block_size)
            .map_err(ModelError::Batch)?;
        if let Some(p) = batch
            .positions
            .iter()
            .find(|&&p| p as usize >= self.max_model_len)
        {
            return Err(ModelError::Batch(format!(
                "position {p} is beyond the maximum model length {}",
                self.max_model_len
            )));
        }
        if kv.layers.len() != self.layers.len() {
            return Err(ModelError::Batch("KV cache built for another model".into()));
        }
        let dev = &self.device;
        let cfg = &self.config;
        let st = &mut self.state;
        st.prepare(dev, cfg, batch)?;
        if batch.num_tokens() == 0 {
            return Ok(&st.logits);
        }
        let embed_scale = cfg.embedding_scale.unwrap_or(1.0);
        dev.embedding(&st.meta.tokens, &self.tok_embd, embed_scale, &mut st.x)?;
        for (layer, lkv) in self.layers.iter().zip(kv.layers.iter_mut()) {
            let rope = &self.ropes[layer.rope];
            match cfg.arch {
                Arch::Llama => llama::block(dev, cfg, layer, rope, lkv, kv.block_size, st)?,
                Arch::Gemma3 => gemma3::block(dev, cfg, layer, rope, lkv, kv.block_size, st)?,
            }
        }
        dev.gather_rows(&st.x, &st.meta.logits_rows, &mut st.last)?;
        dev.rms_norm_inplace(&mut st.last, &self.output_norm, cfg.rms_eps)?;
        dev.matmul(&st.last, &self.output, &mut st.logits)?;
        if let Some(cap) = cfg.final_logit_softcap {
            dev.softcap_inplace(&mut st.logits, cap)?;
        }
        Ok(&st.logits)
    }
}

/// q/k/v projections (+ biases) shared by the blocks.
pub(crate) fn qkv(dev: &Device, l: &LayerWeights, st: &mut RunState) -> Result<()> {
    dev.matmul(&st.xb, &l.wq, &mut st.q)?;
    dev.matmul(&st.xb, &l.wk, &mut st.k)?;
    dev.matmul(&st.xb, &l.wv, &mut st.v)?;
    if let Some(b) = &l.bq {
        dev.add_bias_inplace(&mut st.q, b)?;
    }
    if let Some(b) = &l.bk {
        dev.add_bias_inplace(&mut st.k, b)?;
    }
    if let Some(b) = &l.bv {
        dev.add_bias_inplace(&mut st.v, b)?;
    }
    Ok(())
}
