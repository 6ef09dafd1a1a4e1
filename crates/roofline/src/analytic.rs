//! The analytic model of one forward step: per layer and per op, the FLOPs done and the
//! bytes that must move between memory and the chip (weights at their stored type, the
//! KV cache at its type, activations at the device's activation type).
//!
//! A step is `batch` sequences that each bring `query_len` new tokens on top of `past`
//! tokens already in the KV cache (decode: `query_len = 1`; prefill of P tokens:
//! `query_len = P`, `past = 0`). The counts are the *floor*: every weight and every KV
//! entry read once per step, every activation read once and written once, no
//! recomputation and no spills. Real kernels move more; that gap is what the roofline
//! shows.
//!
//! Conventions (also in docs/roofline.md):
//! - A matmul `[T, K] x [K, M]` costs `2·T·K·M` FLOPs (one multiply and one add).
//! - RMSNorm costs 4 FLOPs per element (square, accumulate, scale, weight); RoPE 3
//!   (4 multiplies and 2 adds per rotated pair); SiLU·up 5 and GELU-tanh·up 9 per
//!   element; a residual add 1. These ops are memory-bound by orders of magnitude, so
//!   the constants barely matter.
//! - Attention: query `i` of a sequence sits at position `past + i` and attends to
//!   `min(past + i + 1, window)` keys; each (head, key) pair costs `4·head_dim` FLOPs
//!   (q·k and p·v) plus 5 for the softmax. The KV cache is read once per sequence and KV
//!   head (grouped-query heads share it), the distinct keys of the step.
//! - The token embedding is a row gather: only the step's rows move, not the table. This
//!   is why "2 × parameters" FLOPs per token and "all weights" per decode step overcount
//!   by the embedding table (Kaplan et al. 2020, "Scaling Laws for Neural Language
//!   Models", count non-embedding parameters for the same reason).
//! - Logits are computed for one row per sequence (the last token), as the engine does.

use serde::Serialize;
use sluice_backend::DType;
use sluice_model::config::{FfnActivation, ModelConfig};

use crate::error::{Result, RooflineError};

/// Which execution unit's peak rate bounds an op's arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeClass {
    /// FP32 FMA units (CPU vectors, GPU CUDA cores): elementwise ops, F32 matmuls.
    F32,
    /// 16-bit floating point matrix units (tensor cores, AVX512-BF16).
    Half,
    /// 8-bit integer dot products (VNNI, IMMA): quantized weights with quantized activations.
    Int8,
}

impl ComputeClass {
    pub fn name(self) -> &'static str {
        match self {
            ComputeClass::F32 => "f32",
            ComputeClass::Half => "half",
            ComputeClass::Int8 => "int8",
        }
    }
}

/// The ops of one step, in execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Embedding,
    AttnNorm,
    QkvProj,
    QkNorm,
    Rope,
    KvWrite,
    Attention,
    OProj,
    PostAttnNorm,
    Residual,
    FfnNorm,
    GateUp,
    Glu,
    DownProj,
    PostFfnNorm,
    FinalNorm,
    LmHead,
}

impl OpKind {
    pub const ALL: [OpKind; 17] = [
        OpKind::Embedding,
        OpKind::AttnNorm,
        OpKind::QkvProj,
        OpKind::QkNorm,
        OpKind::Rope,
        OpKind::KvWrite,
        OpKind::Attention,
        OpKind::OProj,
        OpKind::PostAttnNorm,
        OpKind::Residual,
        OpKind::FfnNorm,
        OpKind::GateUp,
        OpKind::Glu,
        OpKind::DownProj,
        OpKind::PostFfnNorm,
        OpKind::FinalNorm,
        OpKind::LmHead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Embedding => "embedding",
            OpKind::AttnNorm => "attn_norm",
            OpKind::QkvProj => "qkv_proj",
            OpKind::QkNorm => "qk_norm",
            OpKind::Rope => "rope",
            OpKind::KvWrite => "kv_write",
            OpKind::Attention => "attention",
            OpKind::OProj => "o_proj",
            OpKind::PostAttnNorm => "post_attn_norm",
            OpKind::Residual => "residual",
            OpKind::FfnNorm => "ffn_norm",
            OpKind::GateUp => "gate_up",
            OpKind::Glu => "glu",
            OpKind::DownProj => "down_proj",
            OpKind::PostFfnNorm => "post_ffn_norm",
            OpKind::FinalNorm => "final_norm",
            OpKind::LmHead => "lm_head",
        }
    }

    /// Matmuls against weights (the ops whose bytes fall with weight quantization).
    pub fn is_weight_matmul(self) -> bool {
        matches!(
            self,
            OpKind::QkvProj | OpKind::OProj | OpKind::GateUp | OpKind::DownProj | OpKind::LmHead
        )
    }
}

/// FLOPs and bytes of one op (one layer's instance, or a sum over layers).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OpCost {
    pub kind: OpKind,
    /// `None` for ops outside the layers (embedding, final norm, LM head) and for sums.
    pub layer: Option<usize>,
    pub flops: f64,
    pub weight_bytes: f64,
    pub kv_bytes: f64,
    pub act_bytes: f64,
    pub class: ComputeClass,
}

impl OpCost {
    pub fn bytes(&self) -> f64 {
        self.weight_bytes + self.kv_bytes + self.act_bytes
    }

    /// FLOPs per byte moved (0 for pure data movement).
    pub fn intensity(&self) -> f64 {
        let b = self.bytes();
        if b > 0.0 {
            self.flops / b
        } else {
            0.0
        }
    }
}

/// The stored type of each weight matrix of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerTypes {
    pub q: DType,
    pub k: DType,
    pub v: DType,
    pub o: DType,
    pub gate: DType,
    pub up: DType,
    pub down: DType,
}

impl LayerTypes {
    pub fn uniform(d: DType) -> LayerTypes {
        LayerTypes {
            q: d,
            k: d,
            v: d,
            o: d,
            gate: d,
            up: d,
            down: d,
        }
    }
}

/// Stored types of all weights: files mix them (Q4_K_M keeps some matrices in Q6_K).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightTypes {
    pub token_embd: DType,
    /// The LM head (the embedding's type when tied).
    pub output: DType,
    /// Norm weights and biases (the CPU backend holds them as F32 whatever the file says).
    pub norms: DType,
    pub layers: Vec<LayerTypes>,
}

impl WeightTypes {
    /// Every matrix of `cfg` in `d`; norms in F32.
    pub fn uniform(cfg: &ModelConfig, d: DType) -> WeightTypes {
        WeightTypes {
            token_embd: d,
            output: d,
            norms: DType::F32,
            layers: vec![LayerTypes::uniform(d); cfg.n_layers],
        }
    }

    /// The type most weight bytes are stored in, for labels ("Q4_K", "mixed Q4_K/Q6_K").
    pub fn label(&self) -> String {
        let mut kinds: Vec<DType> = Vec::new();
        for l in &self.layers {
            for d in [l.q, l.k, l.v, l.o, l.gate, l.up, l.down] {
                if !kinds.contains(&d) {
                    kinds.push(d);
                }
            }
        }
        if !kinds.contains(&self.output) {
            kinds.push(self.output);
        }
        match kinds.as_slice() {
            [one] => one.name().to_string(),
            many => {
                let names: Vec<&str> = many.iter().map(|d| d.name()).collect();
                format!("mixed {}", names.join("/"))
            }
        }
    }
}

/// Element types of everything a step moves.
#[derive(Clone, Debug, PartialEq)]
pub struct Precision {
    pub weights: WeightTypes,
    /// KV cache element type.
    pub kv: DType,
    /// Activation element type (F32 on the CPU backend, BF16 on GPUs).
    pub act: DType,
    /// Which units run matmuls of quantized weights (see `HardwareProfile::quant_matmul`).
    pub quant_matmul: ComputeClass,
}

/// One step's shape: `batch` sequences, each `query_len` new tokens after `past` cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub batch: usize,
    pub query_len: usize,
    pub past: usize,
}

impl Step {
    /// One new token per sequence with `context` tokens already cached.
    pub fn decode(batch: usize, context: usize) -> Step {
        Step {
            batch,
            query_len: 1,
            past: context,
        }
    }

    /// A whole `prompt`-token prefill of each of `batch` sequences.
    pub fn prefill(batch: usize, prompt: usize) -> Step {
        Step {
            batch,
            query_len: prompt,
            past: 0,
        }
    }

    /// Tokens processed by the step.
    pub fn tokens(&self) -> usize {
        self.batch * self.query_len
    }

    pub fn is_decode(&self) -> bool {
        self.query_len == 1
    }
}

/// All ops of a step (per layer) with their costs.
#[derive(Clone, Debug)]
pub struct StepCost {
    pub step: Step,
    pub ops: Vec<OpCost>,
}

impl StepCost {
    pub fn flops(&self) -> f64 {
        self.ops.iter().map(|o| o.flops).sum()
    }

    pub fn bytes(&self) -> f64 {
        self.ops.iter().map(OpCost::bytes).sum()
    }

    pub fn weight_bytes(&self) -> f64 {
        self.ops.iter().map(|o| o.weight_bytes).sum()
    }

    pub fn kv_bytes(&self) -> f64 {
        self.ops.iter().map(|o| o.kv_bytes).sum()
    }

    pub fn act_bytes(&self) -> f64 {
        self.ops.iter().map(|o| o.act_bytes).sum()
    }

    pub fn intensity(&self) -> f64 {
        self.flops() / self.bytes()
    }

    /// Costs summed over layers, one entry per op kind present, in execution order.
    pub fn by_kind(&self) -> Vec<OpCost> {
        let mut out: Vec<OpCost> = Vec::new();
        for kind in OpKind::ALL {
            let mut sum: Option<OpCost> = None;
            for o in self.ops.iter().filter(|o| o.kind == kind) {
                match &mut sum {
                    None => {
                        sum = Some(OpCost { layer: None, ..*o });
                    }
                    Some(s) => {
                        s.flops += o.flops;
                        s.weight_bytes += o.weight_bytes;
                        s.kv_bytes += o.kv_bytes;
                        s.act_bytes += o.act_bytes;
                    }
                }
            }
            out.extend(sum);
        }
        out
    }
}

/// Bytes per element of `d` (fractional for block formats).
pub fn bytes_per_elem(d: DType) -> f64 {
    d.block_bytes() as f64 / d.block_size() as f64
}

/// The compute class of a matmul against a weight of type `w`.
pub fn matmul_class(w: DType, prec: &Precision) -> ComputeClass {
    match w {
        DType::F32 => ComputeClass::F32,
        DType::F16 | DType::BF16 => ComputeClass::Half,
        _ => prec.quant_matmul,
    }
}

/// The compute class of attention and elementwise math on activations of type `act`.
fn act_class(act: DType) -> ComputeClass {
    if act == DType::F32 {
        ComputeClass::F32
    } else {
        ComputeClass::Half
    }
}

/// Sum over `n` in `a..=b` of `min(n, w)` (keys attended by consecutive queries).
fn sum_min(a: u64, b: u64, w: u64) -> u64 {
    if a > b {
        return 0;
    }
    let tri = |lo: u64, hi: u64| (lo + hi) * (hi - lo + 1) / 2;
    if w >= b {
        tri(a, b)
    } else if w < a {
        w * (b - a + 1)
    } else {
        tri(a, w) + w * (b - w)
    }
}

/// Keys attended in total, and distinct keys read, by one sequence of a step in a layer
/// with sliding window `window` (None = full attention).
pub fn attention_keys(step: &Step, window: Option<usize>) -> (u64, u64) {
    let (p, q) = (step.past as u64, step.query_len as u64);
    let w = window.map(|w| w as u64).unwrap_or(u64::MAX);
    let attended = sum_min(p + 1, p + q, w);
    let distinct = (p + q).min(w.saturating_add(q - 1));
    (attended, distinct)
}

/// Checks the inputs of [`step_cost`]; errors name the offending field.
pub fn check(cfg: &ModelConfig, prec: &Precision, step: &Step) -> Result<()> {
    cfg.validate()
        .map_err(|m| RooflineError::invalid("model config", m))?;
    if prec.weights.layers.len() != cfg.n_layers {
        return Err(RooflineError::invalid(
            "weight types",
            format!(
                "{} layers of weight types for a model of {} layers",
                prec.weights.layers.len(),
                cfg.n_layers
            ),
        ));
    }
    if step.batch == 0 {
        return Err(RooflineError::invalid("batch", "must be at least 1"));
    }
    if step.query_len == 0 {
        return Err(RooflineError::invalid(
            "tokens",
            "a step needs at least one new token per sequence",
        ));
    }
    let len = step.past + step.query_len;
    if len > cfg.max_position {
        return Err(RooflineError::invalid(
            "context",
            format!(
                "{} cached + {} new tokens exceed the model's context of {} tokens",
                step.past, step.query_len, cfg.max_position
            ),
        ));
    }
    Ok(())
}

/// FLOPs and bytes of every op of one step of `cfg` at precision `prec`.
pub fn step_cost(cfg: &ModelConfig, prec: &Precision, step: &Step) -> Result<StepCost> {
    check(cfg, prec, step)?;
    let f = |n: usize| n as f64;
    let (h, ffn, hd) = (
        f(cfg.hidden_size),
        f(cfg.intermediate_size),
        f(cfg.head_dim),
    );
    let (qd, kvd, vocab) = (f(cfg.q_dim()), f(cfg.kv_dim()), f(cfg.vocab_size));
    let t = f(step.tokens());
    let b = f(step.batch);
    let act = bytes_per_elem(prec.act);
    let kv = bytes_per_elem(prec.kv);
    let norm = bytes_per_elem(prec.weights.norms);
    let ew = act_class(prec.act);
    let wt = &prec.weights;
    let mut ops = Vec::with_capacity(cfg.n_layers * 14 + 3);

    let op = |kind: OpKind,
              layer: Option<usize>,
              flops: f64,
              w: f64,
              kvb: f64,
              a: f64,
              class: ComputeClass| OpCost {
        kind,
        layer,
        flops,
        weight_bytes: w,
        kv_bytes: kvb,
        act_bytes: a,
        class,
    };
    // RMSNorm over `rows` rows of `n`: read and write the rows, read the weight once.
    let rms = |kind: OpKind, layer: Option<usize>, rows: f64, n: f64, wn: f64| {
        op(
            kind,
            layer,
            4.0 * rows * n,
            wn * norm,
            0.0,
            2.0 * rows * n * act,
            ew,
        )
    };

    // Embedding: gather T rows of the table (dequantizing), scaled for Gemma.
    let embd_row = h * bytes_per_elem(wt.token_embd);
    ops.push(op(
        OpKind::Embedding,
        None,
        t * h,
        t * embd_row,
        0.0,
        t * h * act,
        ew,
    ));

    for (i, lt) in wt.layers.iter().enumerate() {
        let l = Some(i);
        ops.push(rms(OpKind::AttnNorm, l, t, h, h));

        // Q, K, V: one pass over the normed input, three weight matrices.
        let qkv_w =
            h * (qd * bytes_per_elem(lt.q) + kvd * (bytes_per_elem(lt.k) + bytes_per_elem(lt.v)));
        let mut qkv_flops = 2.0 * t * h * (qd + 2.0 * kvd);
        let mut qkv_wbytes = qkv_w;
        if cfg.qkv_bias {
            qkv_flops += t * (qd + 2.0 * kvd);
            qkv_wbytes += (qd + 2.0 * kvd) * norm;
        }
        let qkv_act = t * h * act + t * (qd + 2.0 * kvd) * act;
        ops.push(op(
            OpKind::QkvProj,
            l,
            qkv_flops,
            qkv_wbytes,
            0.0,
            qkv_act,
            matmul_class(lt.q, prec),
        ));

        if cfg.qk_norm {
            let n = t * (qd + kvd);
            ops.push(op(
                OpKind::QkNorm,
                l,
                4.0 * n,
                2.0 * hd * norm,
                0.0,
                2.0 * n * act,
                ew,
            ));
        }
        // RoPE on q and k in place, reading hd/2 cos and hd/2 sin (F32) per token.
        let rot = t * (qd + kvd);
        ops.push(op(
            OpKind::Rope,
            l,
            3.0 * rot,
            0.0,
            0.0,
            2.0 * rot * act + t * hd * 4.0,
            ew,
        ));
        // This step's K and V into the cache.
        ops.push(op(
            OpKind::KvWrite,
            l,
            0.0,
            0.0,
            2.0 * t * kvd * kv,
            2.0 * t * kvd * act,
            ew,
        ));

        let (attended, distinct) = attention_keys(step, cfg.layer_window(i));
        let nh = f(cfg.n_heads);
        let att_flops = b * nh * attended as f64 * (4.0 * hd + 5.0);
        let att_kv = b * distinct as f64 * 2.0 * kvd * kv;
        ops.push(op(
            OpKind::Attention,
            l,
            att_flops,
            0.0,
            att_kv,
            2.0 * t * qd * act,
            ew,
        ));

        ops.push(op(
            OpKind::OProj,
            l,
            2.0 * t * qd * h,
            qd * h * bytes_per_elem(lt.o),
            0.0,
            t * (qd + h) * act,
            matmul_class(lt.o, prec),
        ));
        if cfg.sandwich_norms {
            ops.push(rms(OpKind::PostAttnNorm, l, t, h, h));
        }
        // Two residual adds per layer: read both operands, write the sum.
        ops.push(op(
            OpKind::Residual,
            l,
            2.0 * t * h,
            0.0,
            0.0,
            2.0 * 3.0 * t * h * act,
            ew,
        ));
        ops.push(rms(OpKind::FfnNorm, l, t, h, h));
        ops.push(op(
            OpKind::GateUp,
            l,
            2.0 * 2.0 * t * h * ffn,
            h * ffn * (bytes_per_elem(lt.gate) + bytes_per_elem(lt.up)),
            0.0,
            t * (h + 2.0 * ffn) * act,
            matmul_class(lt.gate, prec),
        ));
        let glu_flops = match cfg.activation {
            FfnActivation::Silu => 5.0,
            FfnActivation::GeluTanh => 9.0,
        };
        ops.push(op(
            OpKind::Glu,
            l,
            glu_flops * t * ffn,
            0.0,
            0.0,
            3.0 * t * ffn * act,
            ew,
        ));
        ops.push(op(
            OpKind::DownProj,
            l,
            2.0 * t * ffn * h,
            ffn * h * bytes_per_elem(lt.down),
            0.0,
            t * (ffn + h) * act,
            matmul_class(lt.down, prec),
        ));
        if cfg.sandwich_norms {
            ops.push(rms(OpKind::PostFfnNorm, l, t, h, h));
        }
    }

    // Logits for the last token of each sequence: gather the rows, norm, project.
    let rows = b;
    let mut fin = rms(OpKind::FinalNorm, None, rows, h, h);
    fin.act_bytes += 2.0 * rows * h * act;
    ops.push(fin);
    let mut head_flops = 2.0 * rows * h * vocab;
    if cfg.final_logit_softcap.is_some() {
        head_flops += 3.0 * rows * vocab;
    }
    ops.push(op(
        OpKind::LmHead,
        None,
        head_flops,
        vocab * h * bytes_per_elem(wt.output),
        0.0,
        rows * h * act + rows * vocab * 4.0,
        matmul_class(wt.output, prec),
    ));
    Ok(StepCost { step: *step, ops })
}

/// Bytes of all weights as stored (the embedding table counted once, even if tied).
pub fn stored_weight_bytes(cfg: &ModelConfig, wt: &WeightTypes) -> f64 {
    let f = |n: usize| n as f64;
    let (h, ffn, qd, kvd, vocab) = (
        f(cfg.hidden_size),
        f(cfg.intermediate_size),
        f(cfg.q_dim()),
        f(cfg.kv_dim()),
        f(cfg.vocab_size),
    );
    let norm = bytes_per_elem(wt.norms);
    let mut total = vocab * h * bytes_per_elem(wt.token_embd) + h * norm;
    if !cfg.tie_embeddings {
        total += vocab * h * bytes_per_elem(wt.output);
    }
    for lt in &wt.layers {
        total += h * qd * bytes_per_elem(lt.q)
            + h * kvd * (bytes_per_elem(lt.k) + bytes_per_elem(lt.v))
            + qd * h * bytes_per_elem(lt.o)
            + h * ffn * (bytes_per_elem(lt.gate) + bytes_per_elem(lt.up) + bytes_per_elem(lt.down))
            + 2.0 * h * norm;
        if cfg.qkv_bias {
            total += (qd + 2.0 * kvd) * norm;
        }
        if cfg.qk_norm {
            total += 2.0 * f(cfg.head_dim) * norm;
        }
        if cfg.sandwich_norms {
            total += 2.0 * h * norm;
        }
    }
    total
}

/// Bytes of K and V for one token over all layers.
pub fn kv_bytes_per_token(cfg: &ModelConfig, kv: DType) -> f64 {
    2.0 * cfg.n_layers as f64 * cfg.kv_dim() as f64 * bytes_per_elem(kv)
}

/// Parameters that take part in matmuls: all but the embedding table (which is gathered),
/// unless the head is tied to it. `2 ×` this is the matmul FLOPs of a decode token.
pub fn matmul_parameters(cfg: &ModelConfig) -> f64 {
    let total = cfg.parameter_count() as f64;
    // The embedding table is gathered, not multiplied; a tied head is multiplied once.
    let embd = (cfg.vocab_size * cfg.hidden_size) as f64;
    if cfg.tie_embeddings {
        total
    } else {
        total - embd
    }
}
