//! Architectures. `Model` owns the device weights and the run state and runs one
//! batched forward per step; each architecture file holds its transformer block.

pub mod common;
pub mod gemma3;
mod graphs;
pub mod llama;

use sluice_backend::{AttentionParams, DType, Device, KvWrite, QkvDims, Tensor};

use crate::batch::BatchInput;
use crate::config::{Arch, FfnActivation, ModelConfig};
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::weights::WeightStore;
use common::{FusedLayout, RopeTable, RunState};
use graphs::StepGraphs;

/// Q/K/V projection weights (2-D weights are `[out, in]`).
#[allow(clippy::large_enum_variant)] // one per layer, never moved on a hot path
pub enum QkvWeights {
    /// `[n_heads * head_dim, hidden]`, `[n_kv_heads * head_dim, hidden]` twice, and
    /// Qwen2's biases `[q_dim]`, `[kv_dim]`, `[kv_dim]`.
    Separate {
        wq: Tensor,
        wk: Tensor,
        wv: Tensor,
        bq: Option<Tensor>,
        bk: Option<Tensor>,
        bv: Option<Tensor>,
    },
    /// The three stacked by rows, `[q_dim + 2 kv_dim, hidden]` (bias likewise): one
    /// matmul, then `split_qkv_rope` (devices that prefer it, see
    /// `Device::stacks_projections`).
    Fused { wqkv: Tensor, bias: Option<Tensor> },
}

/// The FFN's input projections.
pub enum FfnInWeights {
    /// `[ffn, hidden]` each.
    Separate { w_gate: Tensor, w_up: Tensor },
    /// gate rows then up rows, `[2 ffn, hidden]`: one matmul, then `glu_packed`.
    Fused { w_gate_up: Tensor },
}

/// One transformer block's weights (device tensors). 2-D weights are `[out, in]`.
pub struct LayerWeights {
    /// `[hidden]`
    pub attn_norm: Tensor,
    pub qkv: QkvWeights,
    /// `[hidden, n_heads * head_dim]`
    pub wo: Tensor,
    /// Gemma: `[head_dim]` per-head RMSNorm weights
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// Gemma sandwich norm after attention, `[hidden]`
    pub post_attn_norm: Option<Tensor>,
    /// `[hidden]`
    pub ffn_norm: Tensor,
    pub ffn_in: FfnInWeights,
    /// `[hidden, ffn]`
    pub w_down: Tensor,
    /// Gemma sandwich norm after the FFN, `[hidden]`
    pub post_ffn_norm: Option<Tensor>,
    /// Index into `ModelWeights::ropes` for this layer's base frequency.
    pub rope: usize,
    pub attn: AttentionParams,
}

impl LayerWeights {
    /// The layer's matrices (for byte counts).
    pub fn matrices(&self) -> Vec<&Tensor> {
        let mut v = match &self.qkv {
            QkvWeights::Separate { wq, wk, wv, .. } => vec![wq, wk, wv],
            QkvWeights::Fused { wqkv, .. } => vec![wqkv],
        };
        v.push(&self.wo);
        match &self.ffn_in {
            FfnInWeights::Separate { w_gate, w_up } => v.extend([w_gate, w_up]),
            FfnInWeights::Fused { w_gate_up } => v.push(w_gate_up),
        }
        v.push(&self.w_down);
        v
    }
}

/// Everything read-only a forward pass needs: the weights and RoPE tables.
pub struct ModelWeights {
    /// `[vocab, hidden]` (kept in its file layout for row lookups)
    pub tok_embd: Tensor,
    /// `[vocab, hidden]` output head in the device's matmul layout
    pub output: Tensor,
    /// `[hidden]`
    pub output_norm: Tensor,
    pub layers: Vec<LayerWeights>,
    pub ropes: Vec<RopeTable>,
    /// Which projections are stacked (the run state's buffers follow it).
    pub fused: FusedLayout,
}

/// A loaded model ready to run on a device.
pub struct Model {
    pub config: ModelConfig,
    device: Device,
    weights: ModelWeights,
    state: RunState,
    graphs: StepGraphs,
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

impl ModelWeights {
    /// Moves the weights of `w` onto `device` (shapes checked against `c`), stacking
    /// Q/K/V and gate/up where the device prefers it. RoPE tables cover `max_model_len`
    /// positions.
    pub fn load(
        device: &Device,
        c: &ModelConfig,
        w: &mut WeightStore,
        max_model_len: usize,
    ) -> Result<ModelWeights> {
        let (h, f, qd, kvd, hd) = (
            c.hidden_size,
            c.intermediate_size,
            c.q_dim(),
            c.kv_dim(),
            c.head_dim,
        );
        let stack = device.stacks_projections();
        // Gemma normalises q and k per head before RoPE, so its projections stay apart.
        let fused = FusedLayout {
            qkv: stack && !c.qk_norm,
            gate_up: stack,
        };
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
            let mut host = |s: &str, shape: &[usize]| take(&p(s), shape);
            let (wq, wk, wv) = (
                host("attn_q.weight", &[qd, h])?,
                host("attn_k.weight", &[kvd, h])?,
                host("attn_v.weight", &[kvd, h])?,
            );
            let biases = if c.qkv_bias {
                Some((
                    to_f32(host("attn_q.bias", &[qd])?)?,
                    to_f32(host("attn_k.bias", &[kvd])?)?,
                    to_f32(host("attn_v.bias", &[kvd])?)?,
                ))
            } else {
                None
            };
            let qkv = if fused.qkv {
                let bias = match biases {
                    Some((bq, bk, bv)) => {
                        let mut all = bq.as_f32()?.to_vec();
                        all.extend_from_slice(bk.as_f32()?);
                        all.extend_from_slice(bv.as_f32()?);
                        let t = Tensor::from_f32_cpu(&[all.len()], &all)?;
                        Some(device.load_weight(t)?)
                    }
                    None => None,
                };
                QkvWeights::Fused {
                    wqkv: device.load_weights_stacked(vec![wq, wk, wv])?,
                    bias,
                }
            } else {
                let (bq, bk, bv) = match biases {
                    Some((bq, bk, bv)) => (
                        Some(device.load_weight(bq)?),
                        Some(device.load_weight(bk)?),
                        Some(device.load_weight(bv)?),
                    ),
                    None => (None, None, None),
                };
                QkvWeights::Separate {
                    wq: device.load_weight(wq)?,
                    wk: device.load_weight(wk)?,
                    wv: device.load_weight(wv)?,
                    bq,
                    bk,
                    bv,
                }
            };
            let wo = device.load_weight(host("attn_output.weight", &[h, qd])?)?;
            let (w_gate, w_up) = (
                host("ffn_gate.weight", &[f, h])?,
                host("ffn_up.weight", &[f, h])?,
            );
            let ffn_in = if fused.gate_up {
                FfnInWeights::Fused {
                    w_gate_up: device.load_weights_stacked(vec![w_gate, w_up])?,
                }
            } else {
                FfnInWeights::Separate {
                    w_gate: device.load_weight(w_gate)?,
                    w_up: device.load_weight(w_up)?,
                }
            };
            let w_down = device.load_weight(host("ffn_down.weight", &[h, f])?)?;
            let mut vec = |s: &str, n: usize| -> Result<Tensor> {
                Ok(device.load_weight(to_f32(host(s, &[n])?)?)?)
            };
            let attn_norm = vec("attn_norm.weight", h)?;
            let ffn_norm = vec("ffn_norm.weight", h)?;
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
                qkv,
                wo,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm,
                ffn_in,
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
        Ok(ModelWeights {
            tok_embd,
            output,
            output_norm,
            layers,
            ropes,
            fused,
        })
    }

    /// One step's work on the device, after `RunState::prepare`: embedding, every
    /// block, the final norm and the logits of the wanted rows. Queues kernels only (no
    /// synchronisation or allocation once the buffers are sized), so it can be recorded
    /// into a graph.
    pub fn run(
        &self,
        dev: &Device,
        cfg: &ModelConfig,
        kv: &mut KvCache,
        st: &mut RunState,
    ) -> Result<()> {
        let embed_scale = cfg.embedding_scale.unwrap_or(1.0);
        dev.embedding(&st.meta.tokens, &self.tok_embd, embed_scale, &mut st.x)?;
        st.residual_pending = false;
        for (layer, lkv) in self.layers.iter().zip(kv.layers.iter_mut()) {
            let rope = &self.ropes[layer.rope];
            match cfg.arch {
                Arch::Llama => llama::block(dev, cfg, layer, rope, lkv, kv.block_size, st)?,
                Arch::Gemma3 => gemma3::block(dev, cfg, layer, rope, lkv, kv.block_size, st)?,
            }
        }
        if st.residual_pending {
            dev.add_inplace(&mut st.x, &st.xo)?;
            st.residual_pending = false;
        }
        dev.gather_rows(&st.x, &st.meta.logits_rows, &mut st.last)?;
        if dev.fuses_decode_matmul(&self.output, st.last.rows()) {
            // One logits row: the final norm inside the head's GEMV.
            let (norm, eps) = (&self.output_norm, cfg.rms_eps);
            dev.rms_norm_matmul(&st.last, norm, eps, &self.output, &mut st.logits)?;
        } else {
            dev.rms_norm_inplace(&mut st.last, &self.output_norm, cfg.rms_eps)?;
            dev.matmul(&st.last, &self.output, &mut st.logits)?;
        }
        if let Some(cap) = cfg.final_logit_softcap {
            dev.softcap_inplace(&mut st.logits, cap)?;
        }
        Ok(())
    }
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
        let max_model_len = max_model_len.min(config.max_position).max(1);
        let weights = ModelWeights::load(device, &config, &mut w, max_model_len)?;
        let state = RunState::new(device, &config, 16, 4, weights.fused)?;
        Ok(Model {
            config,
            device: device.clone(),
            weights,
            state,
            graphs: StepGraphs::new(device.supports_graphs()),
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

    /// Replays decode steps from recorded graphs where the device supports them (on by
    /// default there); off runs every step op by op (`--enforce-eager`).
    pub fn set_step_graphs(&mut self, enabled: bool) {
        self.graphs = StepGraphs::new(enabled && self.device.supports_graphs());
    }

    /// Bytes of weights read by one decode step (all matrices, the head once).
    pub fn weight_bytes(&self) -> usize {
        let layer: usize = self
            .weights
            .layers
            .iter()
            .flat_map(|l| l.matrices())
            .map(|t| t.size_in_bytes())
            .sum();
        layer + self.weights.output.size_in_bytes()
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
        self.forward_overlapped(batch, kv, None)
    }

    /// `forward` for a step queued before the previous one finished: the tokens named in
    /// `batch.deferred_tokens` are taken on the device from `prev_ids`, the ids that the
    /// previous step sampled (I32, one per logits row), which the host has not seen.
    pub fn forward_overlapped(
        &mut self,
        batch: &BatchInput,
        kv: &mut KvCache,
        prev_ids: Option<&Tensor>,
    ) -> Result<&Tensor> {
        match (
            prev_ids,
            batch.deferred_tokens.iter().map(|&(_, s)| s).max(),
        ) {
            (None, Some(_)) => {
                return Err(ModelError::Batch(
                    "deferred tokens without the previous step's ids".into(),
                ))
            }
            (Some(p), Some(src)) if src as usize >= p.numel() => {
                return Err(ModelError::Batch(format!(
                    "deferred token from row {src} of {} previous ids",
                    p.numel()
                )))
            }
            _ => {}
        }
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
        if kv.layers.len() != self.weights.layers.len() {
            return Err(ModelError::Batch("KV cache built for another model".into()));
        }
        let dev = &self.device;
        let cfg = &self.config;
        let st = &mut self.state;
        let bucket = self.graphs.bucket(batch);
        // The deferred tokens are resolved by the upload, outside any graph: queued
        // before the replay, read by its embedding.
        st.prepare(dev, cfg, batch, bucket, prev_ids)?;
        if batch.num_tokens() == 0 {
            return Ok(&st.logits);
        }
        match bucket {
            Some(b) => {
                self.graphs
                    .run(b, dev, kv, st, |kv, st| self.weights.run(dev, cfg, kv, st))?;
                // The padded rows' logits follow the real ones; hide them.
                st.logits.set_rows(batch.logits_indices.len())?;
            }
            None => self.weights.run(dev, cfg, kv, st)?,
        }
        Ok(&st.logits)
    }

    /// The logits of the last `forward` (for ops that work on them in place, such as
    /// `Device::sample`).
    pub fn logits_mut(&mut self) -> &mut Tensor {
        &mut self.state.logits
    }

    /// The logits of the last `forward` with its input tokens on the device (I32, one
    /// per batch row, deferred tokens resolved): `Device::sample` reads a sequence's
    /// previous token there when the host has not seen it yet (overlapped steps).
    pub fn logits_and_tokens(&mut self) -> (&mut Tensor, &Tensor) {
        (&mut self.state.logits, &self.state.meta.tokens)
    }
}

/// q/k/v projections (+ biases) into `st.q`, `st.k`, `st.v`, with RoPE applied to q and
/// k unless `rope` is None (Gemma normalises per head first, then applies it itself).
/// With `kv`, k and v also go into the layer's cache where the op can do it on the way
/// (stacked projections); returns whether it did, so the caller writes it otherwise.
pub(crate) fn qkv(
    dev: &Device,
    cfg: &ModelConfig,
    l: &LayerWeights,
    rope: Option<&RopeTable>,
    kv: Option<&mut crate::kv_cache::LayerKv>,
    input: ProjInput,
    st: &mut RunState,
) -> Result<bool> {
    let dims = QkvDims {
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        style: cfg.rope_style,
    };
    // Batch 1: RoPE and the cache write in the stacked projection's GEMV epilogue.
    let kv = match (&l.qkv, input, rope, kv) {
        (
            QkvWeights::Fused { wqkv, bias: None },
            ProjInput::FusedNorm { gamma, eps },
            Some(rope),
            Some(kv),
        ) if dev.fuses_decode_pairs(wqkv, st.x.rows()) => {
            let write = KvWrite {
                k_cache: &mut kv.k,
                v_cache: &mut kv.v,
                slots: &st.meta.slots,
            };
            dev.rms_norm_matmul_qkv_rope(
                &st.x,
                gamma,
                eps,
                wqkv,
                &st.meta.positions,
                &rope.cos,
                &rope.sin,
                dims,
                &mut st.q,
                &mut st.k,
                &mut st.v,
                write,
            )?;
            return Ok(true);
        }
        (_, _, _, kv) => kv,
    };
    let pos = &st.meta.positions;
    match &l.qkv {
        QkvWeights::Fused { wqkv, bias } => {
            let bf16 = matches!(input, ProjInput::Bf16);
            if bf16 {
                // bf16 in, bf16 out (`ProjInput::Bf16` is only chosen without a bias).
                dev.matmul(&st.xb16, wqkv, &mut st.qkv16)?;
            } else {
                input.project(dev, &st.xb, &st.x, wqkv, &mut st.qkv)?;
            }
            if let Some(b) = bias {
                dev.add_bias_inplace(&mut st.qkv, b)?;
            }
            let rope = rope.ok_or_else(|| {
                ModelError::Batch("stacked q/k/v projections need RoPE applied at once".into())
            })?;
            let write = kv.map(|kv| KvWrite {
                k_cache: &mut kv.k,
                v_cache: &mut kv.v,
                slots: &st.meta.slots,
            });
            let wrote = write.is_some();
            let qkv = if bf16 { &st.qkv16 } else { &st.qkv };
            dev.split_qkv_rope(
                qkv, pos, &rope.cos, &rope.sin, dims, &mut st.q, &mut st.k, &mut st.v, write,
            )?;
            return Ok(wrote);
        }
        QkvWeights::Separate { .. } if matches!(input, ProjInput::Bf16) => {
            return Err(bf16_unsupported("stacked q/k/v projections"));
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
            if let Some(rope) = rope {
                apply_rope(dev, cfg, rope, st)?;
            }
        }
    }
    Ok(false)
}

/// RoPE on `st.q` and `st.k` in place.
pub(crate) fn apply_rope(
    dev: &Device,
    cfg: &ModelConfig,
    rope: &RopeTable,
    st: &mut RunState,
) -> Result<()> {
    let (hd, pos) = (cfg.head_dim, &st.meta.positions);
    let style = cfg.rope_style;
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
    Ok(())
}

/// The FFN from the normed input `st.xb`: act(gate) * up, then down. With `to_residual`
/// (a block whose FFN output goes straight into the residual stream, no post-norm) and a
/// device that can, the down projection adds into `st.x` in its epilogue and this returns
/// true; otherwise it writes `st.xo` (the residual add pending) and returns false.
/// `ProjInput::FusedNorm` always adds into `st.x`.
pub(crate) fn ffn(
    dev: &Device,
    cfg: &ModelConfig,
    l: &LayerWeights,
    input: ProjInput,
    to_residual: bool,
    st: &mut RunState,
) -> Result<bool> {
    let silu = match cfg.activation {
        FfnActivation::Silu => true,
        FfnActivation::GeluTanh => false,
    };
    let rows = st.xb.rows();
    match &l.ffn_in {
        FfnInWeights::Fused { w_gate_up }
            if to_residual
                && matches!(input, ProjInput::Normed | ProjInput::Bf16)
                && dev.fuses_gated_ffn(w_gate_up, &l.w_down, rows) =>
        {
            // bf16 between the two GEMMs and the residual add in the down GEMM's epilogue.
            let xb = if matches!(input, ProjInput::Bf16) {
                &st.xb16
            } else {
                &st.xb
            };
            dev.gated_ffn(xb, w_gate_up, &l.w_down, &mut st.gate_up, &mut st.x, silu)?;
            return Ok(true);
        }
        _ if matches!(input, ProjInput::Bf16) => {
            return Err(bf16_unsupported("the fused gated FFN"))
        }
        FfnInWeights::Fused { w_gate_up } => match input {
            // Batch 1: the GLU in the gate/up GEMV's epilogue.
            ProjInput::FusedNorm { gamma, eps } if dev.fuses_decode_pairs(w_gate_up, rows) => {
                dev.rms_norm_matmul_glu(&st.x, gamma, eps, w_gate_up, &mut st.act, silu)?
            }
            _ => {
                input.project(dev, &st.xb, &st.x, w_gate_up, &mut st.gate_up)?;
                dev.glu_packed(&st.gate_up, &mut st.act, silu)?;
            }
        },
        FfnInWeights::Separate { w_gate, w_up } => {
            dev.matmul(&st.xb, w_gate, &mut st.gate)?;
            dev.matmul(&st.xb, w_up, &mut st.up)?;
            if silu {
                dev.silu_mul(&st.gate, &st.up, &mut st.act)?;
            } else {
                dev.gelu_mul(&st.gate, &st.up, &mut st.act)?;
            }
        }
    }
    match input {
        ProjInput::Normed if to_residual && dev.accumulates_matmul(&l.w_down, rows) => {
            dev.matmul_accumulate(&st.act, &l.w_down, &mut st.x)?;
            Ok(true)
        }
        ProjInput::Normed => {
            dev.matmul(&st.act, &l.w_down, &mut st.xo)?;
            Ok(false)
        }
        ProjInput::FusedNorm { .. } => {
            dev.matmul_accumulate(&st.act, &l.w_down, &mut st.x)?;
            Ok(true)
        }
        ProjInput::Bf16 => Err(bf16_unsupported("the fused gated FFN")),
    }
}

/// The error of a layer that `ProjInput::Bf16` cannot run (`llama::bf16_activations`
/// chooses it only where it can).
fn bf16_unsupported(what: &str) -> ModelError {
    ModelError::Batch(format!("bf16 activations need {what}"))
}

/// Where a block's input projections (stacked Q/K/V, stacked gate/up) read from.
#[derive(Clone, Copy)]
pub(crate) enum ProjInput<'a> {
    /// `st.xb`, the normalized residual stream written by a norm kernel; the FFN's down
    /// projection writes `st.xo` (the residual add is pending).
    Normed,
    /// A batch-1 decode step on a device that fuses (`Device::fuses_decode_matmul`):
    /// `st.x` normalized inside the GEMV with `gamma`; the FFN's down projection adds
    /// into `st.x` in its epilogue.
    FusedNorm { gamma: &'a Tensor, eps: f32 },
    /// `st.xb16`, the normalized residual stream in bf16, on a step whose GEMMs all take
    /// bf16 activations (`llama::bf16_activations`): the stacked Q/K/V projection writes
    /// `st.qkv16`, the FFN runs `gated_ffn`, both adding into `st.x`.
    Bf16,
}

impl ProjInput<'_> {
    /// `out = xb · wᵀ`, or `out = rms_norm(x) · wᵀ` in one fused GEMV.
    fn project(
        self,
        dev: &Device,
        xb: &Tensor,
        x: &Tensor,
        w: &Tensor,
        out: &mut Tensor,
    ) -> Result<()> {
        match self {
            ProjInput::Normed => dev.matmul(xb, w, out)?,
            ProjInput::FusedNorm { gamma, eps } => dev.rms_norm_matmul(x, gamma, eps, w, out)?,
            ProjInput::Bf16 => return Err(bf16_unsupported("a stacked projection's own path")),
        }
        Ok(())
    }
}
