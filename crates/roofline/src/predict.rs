//! Predictions from the analytic model and a hardware profile: each op's floor time
//! (the larger of its compute time at peak and its memory time at full bandwidth), the
//! step's floor (their sum: ops run one after another), tokens/s ceilings, the decode
//! batch at which a step turns compute-bound (the ridge point) and how context length
//! and quantization move it.

use serde::Serialize;
use sluice_backend::DType;
use sluice_model::ModelConfig;

use crate::analytic::{
    step_cost, ComputeClass, OpCost, OpKind, Precision, Step, StepCost, WeightTypes,
};
use crate::error::Result;
use crate::hardware::HardwareProfile;

/// What bounds an op at its floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Memory,
    Compute,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Memory => "memory",
            Bound::Compute => "compute",
        }
    }
}

/// One op's (or a sum of ops') times on a profile.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct OpTime {
    #[serde(flatten)]
    pub cost: OpCost,
    /// FLOPs at the peak rate of the op's class.
    pub compute_s: f64,
    /// Bytes at full bandwidth.
    pub memory_s: f64,
    /// max(compute, memory), summed over the instances when this is a sum over layers.
    pub floor_s: f64,
    pub bound: Bound,
}

fn time_op(c: &OpCost, hw: &HardwareProfile) -> OpTime {
    let compute_s = c.flops / hw.peak(c.class);
    let memory_s = c.bytes() / hw.bandwidth();
    OpTime {
        cost: *c,
        compute_s,
        memory_s,
        floor_s: compute_s.max(memory_s),
        bound: if compute_s > memory_s {
            Bound::Compute
        } else {
            Bound::Memory
        },
    }
}

/// A step's prediction: per op kind (summed over layers) and in total.
#[derive(Clone, Debug, Serialize)]
pub struct StepPrediction {
    pub step: Step,
    pub ops: Vec<OpTime>,
    pub flops: f64,
    pub bytes: f64,
    pub weight_bytes: f64,
    pub kv_bytes: f64,
    pub act_bytes: f64,
    /// Sum of every op's compute time and memory time (the two sides of the step).
    pub compute_s: f64,
    pub memory_s: f64,
    /// Sum over ops of max(compute, memory).
    pub floor_s: f64,
    /// Compute-bound when the step's compute time exceeds its memory time.
    pub bound: Bound,
    /// Tokens processed per second at the floor.
    pub tokens_per_s: f64,
}

impl StepPrediction {
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes
    }

    /// FLOP/s achieved if the step ran at its floor.
    pub fn flops_per_s(&self) -> f64 {
        self.flops / self.floor_s
    }
}

/// Times every op instance of `cost` on `hw` and sums per op kind.
pub fn predict_cost(cost: &StepCost, hw: &HardwareProfile) -> StepPrediction {
    let instances: Vec<OpTime> = cost.ops.iter().map(|c| time_op(c, hw)).collect();
    let mut ops: Vec<OpTime> = Vec::new();
    for kind in OpKind::ALL {
        let mut sum: Option<OpTime> = None;
        for t in instances.iter().filter(|t| t.cost.kind == kind) {
            match &mut sum {
                None => {
                    let mut first = *t;
                    first.cost.layer = None;
                    sum = Some(first);
                }
                Some(s) => {
                    s.cost.flops += t.cost.flops;
                    s.cost.weight_bytes += t.cost.weight_bytes;
                    s.cost.kv_bytes += t.cost.kv_bytes;
                    s.cost.act_bytes += t.cost.act_bytes;
                    s.compute_s += t.compute_s;
                    s.memory_s += t.memory_s;
                    s.floor_s += t.floor_s;
                }
            }
        }
        if let Some(mut s) = sum {
            s.bound = if s.compute_s > s.memory_s {
                Bound::Compute
            } else {
                Bound::Memory
            };
            ops.push(s);
        }
    }
    let compute_s: f64 = instances.iter().map(|t| t.compute_s).sum();
    let memory_s: f64 = instances.iter().map(|t| t.memory_s).sum();
    let floor_s: f64 = instances.iter().map(|t| t.floor_s).sum();
    StepPrediction {
        step: cost.step,
        ops,
        flops: cost.flops(),
        bytes: cost.bytes(),
        weight_bytes: cost.weight_bytes(),
        kv_bytes: cost.kv_bytes(),
        act_bytes: cost.act_bytes(),
        compute_s,
        memory_s,
        floor_s,
        bound: if compute_s > memory_s {
            Bound::Compute
        } else {
            Bound::Memory
        },
        tokens_per_s: cost.step.tokens() as f64 / floor_s,
    }
}

/// Counts and times one step.
pub fn predict(
    cfg: &ModelConfig,
    prec: &Precision,
    step: Step,
    hw: &HardwareProfile,
) -> Result<StepPrediction> {
    Ok(predict_cost(&step_cost(cfg, prec, &step)?, hw))
}

/// Largest batch the ridge search considers.
pub const MAX_RIDGE_BATCH: usize = 1 << 20;

/// The smallest decode batch at `context` whose step is compute-bound (compute time at
/// peak ≥ memory time at full bandwidth), or `None` if no batch up to
/// [`MAX_RIDGE_BATCH`] gets there: past some context the KV cache, read once per
/// sequence at about `n_heads / n_kv_heads` FLOPs per byte, grows as fast as the
/// arithmetic and decode stays memory-bound at any batch.
pub fn ridge_batch(
    cfg: &ModelConfig,
    prec: &Precision,
    context: usize,
    hw: &HardwareProfile,
) -> Result<Option<usize>> {
    let bound_at = |b: usize| -> Result<bool> {
        Ok(predict(cfg, prec, Step::decode(b, context), hw)?.bound == Bound::Compute)
    };
    if bound_at(1)? {
        return Ok(Some(1));
    }
    // Compute grows linearly with the batch and memory affinely (weights once, KV per
    // sequence), so compute/memory rises monotonically: double, then bisect.
    let mut hi = 2usize;
    while !bound_at(hi)? {
        if hi >= MAX_RIDGE_BATCH {
            return Ok(None);
        }
        hi *= 2;
    }
    let mut lo = hi / 2;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if bound_at(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

/// The batch at which one weight matmul alone turns compute-bound: intensity
/// `2·B / bytes_per_weight` reaches the profile's ridge `peak / bandwidth`.
pub fn matmul_ridge_batch(w: DType, class: ComputeClass, hw: &HardwareProfile) -> f64 {
    hw.ridge_intensity(class) * crate::analytic::bytes_per_elem(w) / 2.0
}

/// A what-if precision: every matrix in `weights` (or the model's own types), KV in `kv`.
pub fn variant(
    cfg: &ModelConfig,
    base: &Precision,
    weights: Option<DType>,
    kv: DType,
) -> Precision {
    Precision {
        weights: match weights {
            Some(d) => WeightTypes {
                norms: base.weights.norms,
                ..WeightTypes::uniform(cfg, d)
            },
            None => base.weights.clone(),
        },
        kv,
        ..base.clone()
    }
}

/// One row of the context sweep.
#[derive(Clone, Debug, Serialize)]
pub struct ContextRow {
    pub context: usize,
    /// Decode floor and tokens/s at batch 1 and at `batch`.
    pub floor_s_b1: f64,
    pub tokens_per_s_b1: f64,
    pub batch: usize,
    pub floor_s: f64,
    pub tokens_per_s: f64,
    /// Share of the batch-`batch` step's bytes that are KV cache reads.
    pub kv_share: f64,
    pub ridge_batch: Option<usize>,
}

/// Contexts for the sweep: powers of 4 from 128 up to the model's context.
pub fn sweep_contexts(max_position: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut c = 128usize;
    while c < max_position {
        out.push(c);
        c *= 4;
    }
    out.push(max_position - 1);
    out
}

pub fn context_sweep(
    cfg: &ModelConfig,
    prec: &Precision,
    hw: &HardwareProfile,
    batch: usize,
    contexts: &[usize],
) -> Result<Vec<ContextRow>> {
    contexts
        .iter()
        .map(|&c| {
            let one = predict(cfg, prec, Step::decode(1, c), hw)?;
            let many = predict(cfg, prec, Step::decode(batch, c), hw)?;
            Ok(ContextRow {
                context: c,
                floor_s_b1: one.floor_s,
                tokens_per_s_b1: one.tokens_per_s,
                batch,
                floor_s: many.floor_s,
                tokens_per_s: many.tokens_per_s,
                kv_share: many.kv_bytes / many.bytes,
                ridge_batch: ridge_batch(cfg, prec, c, hw)?,
            })
        })
        .collect()
}

/// One row of the quantization table.
#[derive(Clone, Debug, Serialize)]
pub struct QuantRow {
    pub weights: String,
    pub kv: String,
    pub weight_gb: f64,
    pub kv_bytes_per_token: f64,
    pub decode_tokens_per_s_b1: f64,
    pub decode_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub ridge_batch: Option<usize>,
}

/// Weight and KV types to compare, as (weights, kv); `None` weights = the model's own.
pub fn quant_variants(hw_kv: DType) -> Vec<(Option<DType>, DType)> {
    let mut v = vec![(None, hw_kv)];
    for w in [DType::BF16, DType::Q8_0, DType::Q6_K, DType::Q4_K] {
        v.push((Some(w), hw_kv));
    }
    // A quantized KV cache (8 bits) with 4-bit weights.
    if hw_kv != DType::Q8_0 {
        v.push((Some(DType::Q4_K), DType::Q8_0));
        v.push((None, DType::Q8_0));
    }
    v
}

#[allow(clippy::too_many_arguments)]
pub fn quant_table(
    cfg: &ModelConfig,
    base: &Precision,
    hw: &HardwareProfile,
    batch: usize,
    context: usize,
    prompt: usize,
) -> Result<Vec<QuantRow>> {
    let mut rows = Vec::new();
    let mut seen: Vec<Precision> = Vec::new();
    for (w, kv) in quant_variants(base.kv) {
        let p = variant(cfg, base, w, kv);
        // A what-if equal to the model's own types adds nothing.
        if seen
            .iter()
            .any(|q| q.weights.label() == p.weights.label() && q.kv == p.kv)
        {
            continue;
        }
        seen.push(p.clone());
        let b1 = predict(cfg, &p, Step::decode(1, context), hw)?;
        let bn = predict(cfg, &p, Step::decode(batch, context), hw)?;
        let pf = predict(cfg, &p, Step::prefill(1, prompt), hw)?;
        rows.push(QuantRow {
            weights: match w {
                Some(d) => d.name().to_string(),
                None => format!("{} (model)", p.weights.label()),
            },
            kv: kv.name().to_string(),
            weight_gb: crate::analytic::stored_weight_bytes(cfg, &p.weights) / 1e9,
            kv_bytes_per_token: crate::analytic::kv_bytes_per_token(cfg, kv),
            decode_tokens_per_s_b1: b1.tokens_per_s,
            decode_tokens_per_s: bn.tokens_per_s,
            prefill_tokens_per_s: pf.tokens_per_s,
            ridge_batch: ridge_batch(cfg, &p, context, hw)?,
        });
    }
    Ok(rows)
}
