//! `--bench`: measured step times over a grid of batch sizes and contexts.
//!
//! Each grid cell is one batched forward step, built exactly as the engine builds it
//! (`BatchInput` over a paged KV cache) and run through `Model::forward`, the call the
//! engine makes every step. Decode cells need no prefill first: the KV cache is filled
//! with data once (so attention reads real, paged-in memory, not the shared zero page)
//! and each sequence simply claims `context` cached tokens; attention's cost does not
//! depend on the values. Optionally each cell is also replayed op by op (`ops.rs`), and
//! the engine itself (scheduler, sampling, detokenizer included) is timed with
//! `sluice_engine::bench` at the smallest context.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sluice_backend::{DType, Device};
use sluice_engine::{EngineConfig, LlmEngine};
use sluice_model::arch::Model;
use sluice_model::loader::{load_model, load_model_parts, LoadOptions};
use sluice_model::{BatchInput, KvCache, ModelConfig, WeightStore};

use crate::analytic::{OpKind, Step};
use crate::error::{Result, RooflineError};
use crate::ops::OpHarness;
use crate::random_weights::random_weights;

/// Where the benchmark's weights come from.
#[derive(Clone, Debug)]
pub enum WeightsFrom {
    /// A model file or directory (its tokenizer, if any, lets the engine run too).
    File(PathBuf),
    /// Random weights of one type for the config (a preset).
    Random { dtype: DType, seed: u64 },
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    pub steps: Vec<Step>,
    /// Timed repetitions per cell.
    pub reps: usize,
    /// How repetitions are summarized.
    pub stat: Summary,
    /// Also time each op (a second, instrumented replay of each cell).
    pub ops: bool,
    /// Also time the engine (decode at the smallest context, and prefill).
    pub engine: bool,
    pub threads: Option<usize>,
    pub block_size: usize,
}

/// The statistic reported over repetitions: the median (the default), or the minimum,
/// which on a shared, oversubscribed machine is the closest to the uncontended time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Summary {
    Median,
    Min,
}

impl Summary {
    pub fn name(self) -> &'static str {
        match self {
            Summary::Median => "median",
            Summary::Min => "min",
        }
    }

    pub fn of(self, xs: &mut [f64]) -> f64 {
        match self {
            Summary::Median => median(xs),
            Summary::Min => xs.iter().copied().fold(f64::INFINITY, f64::min),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct OpMeasure {
    pub kind: OpKind,
    pub seconds: f64,
}

/// One grid cell's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub step: Step,
    /// The timed `Model::forward` calls summarized by `stat`, and their median and best.
    pub forward_s: f64,
    pub forward_median_s: f64,
    pub forward_min_s: f64,
    pub stat: Summary,
    /// Per op kind, summed over layers (`stat` over reps), and their total.
    pub ops: Vec<OpMeasure>,
    pub ops_total_s: Option<f64>,
    /// Seconds per step through the engine, where measured.
    pub engine_step_s: Option<f64>,
}

fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// KV blocks a step needs: each sequence owns `ceil((past + query_len) / block_size)`.
fn blocks_for(step: &Step, block_size: usize) -> usize {
    step.batch * (step.past + step.query_len).div_ceil(block_size)
}

/// The step as the engine would batch it: sequence `s` owns a disjoint run of blocks.
pub fn build_batch(
    step: &Step,
    vocab: usize,
    block_size: usize,
    rng: &mut ChaCha8Rng,
) -> BatchInput {
    let ctx = step.past + step.query_len;
    let nb = ctx.div_ceil(block_size);
    let mut batch = BatchInput::default();
    for s in 0..step.batch {
        let table: Vec<u32> = ((s * nb) as u32..((s + 1) * nb) as u32).collect();
        let lo = 300.min(vocab as u32 / 2);
        let tokens: Vec<u32> = (0..step.query_len)
            .map(|_| rng.random_range(lo..vocab as u32))
            .collect();
        batch.push_seq(&tokens, ctx, &table, block_size, true);
    }
    batch
}

/// Writes a small non-zero value into every KV element, so every page is backed.
fn fill_kv(kv: &mut KvCache) -> Result<()> {
    for layer in kv.layers.iter_mut() {
        for t in [&mut layer.k, &mut layer.v] {
            let d = t.dtype();
            let bytes = t.cpu_bytes_mut()?;
            match d {
                DType::F32 => bytes
                    .chunks_exact_mut(4)
                    .for_each(|c| c.copy_from_slice(&0.01f32.to_le_bytes())),
                // 0.01 in BF16 (the top half of the f32) and F16.
                DType::BF16 => bytes
                    .chunks_exact_mut(2)
                    .for_each(|c| c.copy_from_slice(&0x3C24u16.to_le_bytes())),
                DType::F16 => bytes
                    .chunks_exact_mut(2)
                    .for_each(|c| c.copy_from_slice(&0x211Fu16.to_le_bytes())),
                _ => bytes.fill(0x11),
            }
        }
    }
    Ok(())
}

fn host_weights(cfg: &ModelConfig, from: &WeightsFrom) -> Result<WeightStore> {
    match from {
        WeightsFrom::File(p) => Ok(load_model_parts(p, &LoadOptions::default())?.weights),
        WeightsFrom::Random { dtype, seed } => random_weights(cfg, *dtype, *seed),
    }
}

/// Engine-level seconds per step for the decode cells at the smallest context and for
/// the single-sequence prefill cells. Needs the model's tokenizer.
fn engine_times(
    path: &std::path::Path,
    device: &Device,
    plan: &BenchPlan,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<(Step, f64)>> {
    let loaded = load_model(path, &LoadOptions::default())?;
    let decode: Vec<&Step> = plan.steps.iter().filter(|s| s.is_decode()).collect();
    let min_ctx = decode.iter().map(|s| s.past).min().unwrap_or(0).max(1);
    let n_gen = 16;
    let max_batch = plan.steps.iter().map(|s| s.batch).max().unwrap_or(1);
    let max_prompt = plan
        .steps
        .iter()
        .filter(|s| !s.is_decode())
        .map(|s| s.query_len)
        .max()
        .unwrap_or(1);
    let max_len = (min_ctx + n_gen + 2).max(max_prompt + 2);
    let cfg = EngineConfig {
        block_size: plan.block_size,
        max_num_batched_tokens: max_prompt.max(512),
        max_num_seqs: max_batch,
        max_model_len: Some(max_len),
        enable_prefix_caching: false,
        ..EngineConfig::default()
    };
    let mut tokenizer = loaded.tokenizer;
    tokenizer.add_eos_ids(&loaded.generation.eos_token_ids);
    let model = Model::new(device, loaded.config, loaded.weights, max_len)?;
    let mut engine = LlmEngine::new(model, Arc::new(tokenizer), &cfg)?;
    sluice_engine::bench::decode(&mut engine, 1, 8, 2, 1, 1)?; // warm-up
    let mut out = Vec::new();
    let mut batches: Vec<usize> = decode
        .iter()
        .filter(|s| s.past == min_ctx)
        .map(|s| s.batch)
        .collect();
    batches.dedup();
    for b in batches {
        progress(&format!(
            "engine decode: batch {b}, context {min_ctx}, {n_gen} tokens each"
        ));
        let r = sluice_engine::bench::decode(&mut engine, b, min_ctx, n_gen, 1, 43)?;
        out.push((Step::decode(b, min_ctx), b as f64 / r.mean));
    }
    for s in plan
        .steps
        .iter()
        .filter(|s| !s.is_decode() && s.batch == 1 && s.past == 0)
    {
        progress(&format!("engine prefill: {} tokens", s.query_len));
        let r = sluice_engine::bench::prompt_processing(&mut engine, s.query_len, 1, 42)?;
        out.push((*s, s.query_len as f64 / r.mean));
    }
    Ok(out)
}

/// Runs the plan. `progress` receives one line per cell (the CLI prints it to stderr).
pub fn run_bench(
    device: &Device,
    cfg: &ModelConfig,
    from: &WeightsFrom,
    plan: &BenchPlan,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Measurement>> {
    if plan.steps.is_empty() {
        return Err(RooflineError::invalid(
            "benchmark grid",
            "no steps to measure",
        ));
    }
    if plan.block_size == 0 || plan.block_size > 1024 {
        return Err(RooflineError::invalid(
            "block size",
            "must be between 1 and 1024",
        ));
    }
    let engine = match (&from, plan.engine) {
        // A file without a tokenizer (or any engine failure) costs the engine columns,
        // not the whole benchmark.
        (WeightsFrom::File(p), true) => {
            engine_times(p, device, plan, progress).unwrap_or_else(|e| {
                progress(&format!("engine timing skipped: {e}"));
                Vec::new()
            })
        }
        (WeightsFrom::Random { .. }, true) => {
            progress("engine timing skipped: random weights have no tokenizer");
            Vec::new()
        }
        _ => Vec::new(),
    };

    let max_len = plan
        .steps
        .iter()
        .map(|s| s.past + s.query_len)
        .max()
        .unwrap_or(1)
        + 1;
    let mut model = Model::new(device, cfg.clone(), host_weights(cfg, from)?, max_len)?;
    let mut harness = if plan.ops {
        Some(OpHarness::new(
            device,
            cfg.clone(),
            host_weights(cfg, from)?,
            max_len,
        )?)
    } else {
        None
    };
    let num_blocks = plan
        .steps
        .iter()
        .map(|s| blocks_for(s, plan.block_size))
        .max()
        .unwrap_or(1);
    let mut kv = model.new_kv_cache(num_blocks, plan.block_size)?;
    if device.is_cpu() {
        // GPU memory is backed when allocated (and zeroed): nothing to fault in.
        fill_kv(&mut kv)?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut out = Vec::new();
    for step in &plan.steps {
        progress(&format!(
            "forward: batch {}, {} new + {} cached tokens per sequence",
            step.batch, step.query_len, step.past
        ));
        let batch = build_batch(step, cfg.vocab_size, plan.block_size, &mut rng);
        model.forward(&batch, &mut kv)?; // warm-up: buffers grow, pages fault in
        device.synchronize()?;
        let mut times = Vec::with_capacity(plan.reps);
        for _ in 0..plan.reps.max(1) {
            let t0 = Instant::now();
            model.forward(&batch, &mut kv)?;
            // A GPU queues the work: the step ends when the device is done.
            device.synchronize()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let forward_min_s = Summary::Min.of(&mut times);
        let forward_median_s = median(&mut times);
        let forward_s = plan.stat.of(&mut times);
        let (ops, ops_total_s) = match harness.as_mut() {
            Some(h) => {
                h.timed_forward(&batch, &mut kv)?;
                let mut per: Vec<(OpKind, Vec<f64>)> = Vec::new();
                for _ in 0..plan.reps.max(1) {
                    for (k, s) in h.timed_forward(&batch, &mut kv)? {
                        match per.iter_mut().find(|(kk, _)| *kk == k) {
                            Some((_, v)) => v.push(s),
                            None => per.push((k, vec![s])),
                        }
                    }
                }
                let ops: Vec<OpMeasure> = per
                    .into_iter()
                    .map(|(kind, mut v)| OpMeasure {
                        kind,
                        seconds: plan.stat.of(&mut v),
                    })
                    .collect();
                let total = ops.iter().map(|o| o.seconds).sum();
                (ops, Some(total))
            }
            None => (Vec::new(), None),
        };
        let engine_step_s = engine.iter().find(|(s, _)| s == step).map(|(_, t)| *t);
        out.push(Measurement {
            step: *step,
            forward_s,
            forward_median_s,
            forward_min_s,
            stat: plan.stat,
            ops,
            ops_total_s,
            engine_step_s,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_own_disjoint_blocks_and_claim_the_context() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let step = Step::decode(3, 40);
        let b = build_batch(&step, 1000, 16, &mut rng);
        assert_eq!(b.num_tokens(), 3);
        assert_eq!(b.seqs.len(), 3);
        // 41 tokens need 3 blocks of 16 each.
        assert_eq!(b.seqs[2].block_table, vec![6, 7, 8]);
        assert!(b.seqs.iter().all(|s| s.context_len == 41));
        assert_eq!(b.positions, vec![40, 40, 40]);
        assert_eq!(blocks_for(&step, 16), 9);
        assert!(b.validate(9, 16).is_ok());
        let p = build_batch(&Step::prefill(1, 33), 1000, 16, &mut rng);
        assert_eq!(p.num_tokens(), 33);
        assert_eq!(p.logits_indices, vec![32]);
    }
}
