//! Offline benchmarks through the engine (no HTTP): llama-bench-style prompt processing
//! (pp) and token generation (tg) rates, batched decode, and all-at-once throughput.
//!
//! Prompts are random token ids drawn fresh for every repetition so that the prefix cache
//! cannot help; `--ignore-eos` semantics keep every request at its requested length.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::engine::{EngineError, EngineRequest, LlmEngine};
use crate::metrics::StepPhases;
use crate::sampling::SamplingParams;

/// Mean and sample standard deviation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
}

impl Stat {
    pub fn of(xs: &[f64]) -> Stat {
        if xs.is_empty() {
            return Stat::default();
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = if xs.len() > 1 {
            xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Stat {
            mean,
            std: var.sqrt(),
        }
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} ± {:.2}", self.mean, self.std)
    }
}

fn random_prompt(rng: &mut ChaCha8Rng, n: usize, vocab: usize) -> Vec<u32> {
    // Skip the first ids: they are usually special tokens.
    let lo = 300.min(vocab as u32 / 2);
    (0..n).map(|_| rng.random_range(lo..vocab as u32)).collect()
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> EngineRequest {
    EngineRequest {
        prompt_token_ids: prompt,
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(max_tokens)
        },
        cache_salt: None,
    }
}

/// Tokens/s of processing a `n_prompt`-token prompt (one request; time to its first token).
pub fn prompt_processing(
    engine: &mut LlmEngine,
    n_prompt: usize,
    reps: usize,
    seed: u64,
) -> Result<Stat, EngineError> {
    let vocab = engine.model().config.vocab_size;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rates = Vec::new();
    for _ in 0..reps {
        let id = engine.add_request(request(random_prompt(&mut rng, n_prompt, vocab), 1))?;
        let t0 = Instant::now();
        let mut done = false;
        while !done {
            for o in engine.step()? {
                if o.id == id {
                    done = true;
                }
            }
        }
        rates.push(n_prompt as f64 / t0.elapsed().as_secs_f64());
        engine.abort(id);
        engine.run_to_completion(|_| {})?;
    }
    Ok(Stat::of(&rates))
}

/// Aggregate decode tokens/s with `batch` sequences generating `n_gen` tokens each after a
/// `n_prompt`-token prompt. Time counts from the step after every sequence has its first
/// token (so prefill is excluded), as llama-bench's tg and llama-batched-bench's S_TG do.
pub fn decode(
    engine: &mut LlmEngine,
    batch: usize,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
    seed: u64,
) -> Result<Stat, EngineError> {
    let vocab = engine.model().config.vocab_size;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rates = Vec::new();
    for _ in 0..reps {
        let ids: Vec<_> = (0..batch)
            .map(|_| {
                engine.add_request(request(
                    random_prompt(&mut rng, n_prompt.max(1), vocab),
                    n_gen + 1,
                ))
            })
            .collect::<Result<_, _>>()?;
        // Prefill everything and sample each sequence's first token.
        let mut started = std::collections::HashSet::new();
        while started.len() < ids.len() {
            for o in engine.step()? {
                if !o.new_token_ids.is_empty() {
                    started.insert(o.id);
                }
            }
        }
        let t0 = Instant::now();
        let mut generated = 0usize;
        engine.run_to_completion(|o| generated += o.new_token_ids.len())?;
        rates.push(generated as f64 / t0.elapsed().as_secs_f64());
    }
    Ok(Stat::of(&rates))
}

/// Offline throughput: `n_requests` requests of `n_in` random prompt tokens and `n_out`
/// generated tokens, all submitted at once (like `vllm bench throughput`).
pub struct ThroughputResult {
    pub seconds: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
}

pub fn throughput(
    engine: &mut LlmEngine,
    n_requests: usize,
    n_in: usize,
    n_out: usize,
    seed: u64,
) -> Result<ThroughputResult, EngineError> {
    throughput_with(engine, n_requests, n_in, n_out, seed, |_, _| {})
}

/// `throughput` with each request's sampling parameters set by `tune(index, params)`
/// (log-probabilities, penalties, ... for some of the requests).
pub fn throughput_with(
    engine: &mut LlmEngine,
    n_requests: usize,
    n_in: usize,
    n_out: usize,
    seed: u64,
    tune: impl Fn(usize, &mut crate::sampling::SamplingParams),
) -> Result<ThroughputResult, EngineError> {
    let vocab = engine.model().config.vocab_size;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t0 = Instant::now();
    for i in 0..n_requests {
        let mut r = request(random_prompt(&mut rng, n_in.max(1), vocab), n_out);
        tune(i, &mut r.params);
        engine.add_request(r)?;
    }
    let mut out_tokens = 0usize;
    engine.run_to_completion(|o| out_tokens += o.new_token_ids.len())?;
    let s = t0.elapsed().as_secs_f64();
    Ok(ThroughputResult {
        seconds: s,
        requests_per_s: n_requests as f64 / s,
        output_tokens_per_s: out_tokens as f64 / s,
        total_tokens_per_s: (out_tokens + n_requests * n_in.max(1)) as f64 / s,
    })
}

/// Per-step latencies of a batch (like TGI's benchmark): one prefill step for the
/// whole batch, then every decode step.
pub struct LatencyResult {
    /// Milliseconds of each prefill step (one per repetition).
    pub prefill_ms: Vec<f64>,
    /// Milliseconds of every decode step, all repetitions.
    pub decode_ms: Vec<f64>,
    /// The decode steps' time by phase (sums; see `StepPhases`).
    pub decode_phases: StepPhases,
}

/// `batch` sequences of `n_in` random prompt tokens generating `n_out` tokens; the
/// engine must allow `batch * n_in` batched tokens so that the prefill is one step.
pub fn step_latency(
    engine: &mut LlmEngine,
    batch: usize,
    n_in: usize,
    n_out: usize,
    reps: usize,
    seed: u64,
) -> Result<LatencyResult, EngineError> {
    let vocab = engine.model().config.vocab_size;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut res = LatencyResult {
        prefill_ms: Vec::new(),
        decode_ms: Vec::new(),
        decode_phases: StepPhases::default(),
    };
    for _ in 0..reps {
        for _ in 0..batch {
            engine.add_request(request(
                random_prompt(&mut rng, n_in.max(1), vocab),
                n_out.max(1),
            ))?;
        }
        // The prefill lasts until the first tokens come out: one call, or two with
        // overlapped steps (the first only queues it).
        let (mut first, mut prefill_ms) = (true, 0.0);
        while engine.has_unfinished() {
            let before = engine.metrics().step_phases;
            let t0 = Instant::now();
            let outputs = engine.step()?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if first {
                prefill_ms += ms;
                if !outputs.is_empty() {
                    res.prefill_ms.push(prefill_ms);
                    first = false;
                }
            } else {
                res.decode_ms.push(ms);
                let d = engine.metrics().step_phases.since(&before);
                res.decode_phases.add(&d);
            }
        }
    }
    Ok(res)
}

/// The `p`-th percentile (0..=100) with linear interpolation, like numpy's default.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_uses_the_sample_standard_deviation() {
        let s = Stat::of(&[1.0, 2.0, 3.0, 4.0]);
        assert!((s.mean - 2.5).abs() < 1e-12);
        assert!((s.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of(&[]).mean, 0.0);
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let xs = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert_eq!(percentile(&xs, 100.0), 4.0);
        assert!((percentile(&xs, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile(&xs, 90.0) - 3.7).abs() < 1e-12);
    }
}
