//! `sluice bench model|throughput`: offline benchmarks through the engine.

use anyhow::Result;
use sluice_engine::bench;
use sluice_engine::EngineConfig;

use crate::generate::ModelArgs;

/// llama-bench-style table: pp (prompt tokens/s) and tg (generated tokens/s), plus
/// batched decode rates and the achieved weight bandwidth.
#[derive(clap::Args, Debug)]
pub struct ModelBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths to time (comma-separated), like llama-bench -p.
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to time, like llama-bench -n.
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Batch sizes for batched decode (aggregate tokens/s).
    #[arg(
        short = 'b',
        long = "batch",
        value_delimiter = ',',
        default_value = "1"
    )]
    pub batch: Vec<usize>,
    /// Repetitions per test.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub reps: usize,
    /// Write the table as JSON lines here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

pub fn run_model_bench(a: ModelBenchArgs) -> Result<()> {
    let max_p = a.n_prompt.iter().copied().max().unwrap_or(512).max(1);
    let max_b = a.batch.iter().copied().max().unwrap_or(1).max(1);
    let cfg = EngineConfig {
        max_num_batched_tokens: max_p.max(512),
        max_num_seqs: max_b.max(1),
        enable_prefix_caching: false,
        ..a.model.engine_config()?
    };
    let (mut engine, _, name) = a.model.build_engine(cfg)?;
    let threads = engine.model().device().name();
    let weight_bytes = engine.model().weight_bytes() as f64;
    println!(
        "model: {name} ({:.1} MB of weights read per decode step), device: {threads}",
        weight_bytes / 1e6
    );
    println!("| test | batch | tokens/s | weight GB/s |");
    println!("| ---- | ----: | -------: | ----------: |");
    let mut rows = Vec::new();
    // Warm-up: first touches of mapped weights and buffers.
    bench::decode(&mut engine, 1, 8, 4, 1, 1)?;
    for &p in &a.n_prompt {
        let s = bench::prompt_processing(&mut engine, p, a.reps, 42)?;
        println!("| pp{p} | 1 | {s} | - |");
        rows.push(serde_json::json!({"test": format!("pp{p}"), "batch": 1, "tokens_per_s": s.mean, "std": s.std}));
    }
    for &n in &a.n_gen {
        for &b in &a.batch {
            let s = bench::decode(&mut engine, b, 1, n, a.reps, 43)?;
            // Each decode step reads every weight once for the whole batch.
            let gbs = s.mean / b as f64 * weight_bytes / 1e9;
            println!("| tg{n} | {b} | {s} | {gbs:.1} |");
            rows.push(serde_json::json!({"test": format!("tg{n}"), "batch": b, "tokens_per_s": s.mean, "std": s.std, "weight_gb_per_s": gbs}));
        }
    }
    if let Some(p) = a.json {
        let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        std::fs::write(&p, text.join("\n") + "\n")?;
    }
    Ok(())
}

/// All requests at once (like `vllm bench throughput`).
#[derive(clap::Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    #[arg(long, default_value_t = 64)]
    pub num_prompts: usize,
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Ask for the log-probabilities of each generated token and its top N alternatives
    /// (OpenAI's `top_logprobs`, at most 20), in every `--logprobs-every`-th request.
    #[arg(long, value_name = "N")]
    pub logprobs: Option<usize>,
    /// With `--logprobs`: which requests ask (1: all; K: the first and every K-th).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub logprobs_every: usize,
    /// A repetition penalty (OpenAI/vLLM semantics) for every `--penalties-every`-th
    /// request.
    #[arg(long, value_name = "F")]
    pub repetition_penalty: Option<f32>,
    /// A frequency penalty for every `--penalties-every`-th request.
    #[arg(long, value_name = "F")]
    pub frequency_penalty: Option<f32>,
    /// A presence penalty for every `--penalties-every`-th request.
    #[arg(long, value_name = "F")]
    pub presence_penalty: Option<f32>,
    /// With penalties: which requests use them (1: all; K: the first and every K-th).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub penalties_every: usize,
}

pub fn run_throughput(a: ThroughputArgs) -> Result<()> {
    if a.logprobs.is_some_and(|n| n > 20) {
        anyhow::bail!("--logprobs: at most 20 alternatives");
    }
    let penalties = [
        a.repetition_penalty,
        a.frequency_penalty,
        a.presence_penalty,
    ];
    if penalties.iter().flatten().any(|f| !f.is_finite())
        || a.repetition_penalty.is_some_and(|r| r <= 0.0)
    {
        anyhow::bail!("penalties must be finite, and --repetition-penalty positive");
    }
    let cfg = EngineConfig {
        max_num_batched_tokens: a.max_num_batched_tokens,
        max_num_seqs: a.max_num_seqs,
        enable_prefix_caching: false,
        ..a.model.engine_config()?
    };
    let (mut engine, _, name) = a.model.build_engine(cfg)?;
    let tune = |i: usize, p: &mut sluice_engine::SamplingParams| {
        if i.is_multiple_of(a.logprobs_every.max(1)) {
            p.logprobs = a.logprobs;
        }
        if i.is_multiple_of(a.penalties_every.max(1)) {
            p.repetition_penalty = a.repetition_penalty.unwrap_or(1.0);
            p.frequency_penalty = a.frequency_penalty.unwrap_or(0.0);
            p.presence_penalty = a.presence_penalty.unwrap_or(0.0);
        }
    };
    let r = bench::throughput_with(
        &mut engine,
        a.num_prompts,
        a.input_len,
        a.output_len,
        7,
        tune,
    )?;
    println!("model: {name}, device: {}", engine.model().device().name());
    println!(
        "{} requests of {} in / {} out in {:.2} s: {:.2} requests/s, {:.1} output tokens/s, {:.1} total tokens/s",
        a.num_prompts, a.input_len, a.output_len, r.seconds, r.requests_per_s, r.output_tokens_per_s, r.total_tokens_per_s
    );
    let m = engine.metrics();
    let spec = crate::spec_args::summary(m);
    if !spec.is_empty() {
        println!("{spec}");
    }
    if m.steps > 0 {
        // Every step reads every weight once, whatever the batch.
        let step_s = m.step_seconds / m.steps as f64;
        println!(
            "{} engine steps, {:.2} ms per step on average: {:.1} GB/s of weights",
            m.steps,
            step_s * 1e3,
            engine.model().weight_bytes() as f64 / step_s / 1e9
        );
        let decode_steps = m.steps - m.prompt_steps;
        let per_ms = |s: f64, n: u64| if n > 0 { s / n as f64 * 1e3 } else { 0.0 };
        println!(
            "  {} steps with prompt tokens: {:.1} s, {:.2} ms each; {} decode-only steps: {:.1} s, {:.2} ms each",
            m.prompt_steps,
            m.prompt_step_seconds,
            per_ms(m.prompt_step_seconds, m.prompt_steps),
            decode_steps,
            m.step_seconds - m.prompt_step_seconds,
            per_ms(m.step_seconds - m.prompt_step_seconds, decode_steps),
        );
    }
    Ok(())
}

/// Per-step prefill and decode latency of one batch (like TGI's benchmark).
#[derive(clap::Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequences per batch; a comma-separated list measures each in turn with one
    /// engine (one model load), e.g. `1,8,32,128,256`.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch_size: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Repetitions.
    #[arg(short = 'r', long, default_value_t = 3)]
    pub reps: usize,
}

pub fn run_latency(a: LatencyArgs) -> Result<()> {
    if a.batch_size.is_empty() || a.batch_size.contains(&0) || a.input_len == 0 || a.output_len == 0
    {
        anyhow::bail!("--batch-size, --input-len and --output-len must be at least 1");
    }
    let max_b = a.batch_size.iter().copied().max().unwrap_or(1);
    let cfg = EngineConfig {
        max_num_batched_tokens: (max_b * a.input_len).max(512),
        max_num_seqs: max_b,
        enable_prefix_caching: false,
        ..a.model.engine_config()?
    };
    let (mut engine, _, name) = a.model.build_engine(cfg).map_err(|e| {
        // Out of memory for the KV cache: here it is the one-step prefill that asks for it.
        let memory = matches!(
            e.downcast_ref::<sluice_engine::EngineError>(),
            Some(sluice_engine::EngineError::InvalidRequest {
                param: Some("gpu_memory_utilization"),
                ..
            })
        );
        if memory {
            e.context(format!(
                "bench latency prefills each batch in one step ({max_b} x {} = {} tokens at \
                 the largest --batch-size); a smaller --batch-size or --input-len needs less",
                a.input_len,
                max_b * a.input_len
            ))
        } else {
            e
        }
    })?;
    println!("model: {name}, device: {}", engine.model().device().name());
    for &batch in &a.batch_size {
        latency_of_batch(&mut engine, &a, batch)?;
    }
    Ok(())
}

/// One `bench latency` table: `batch` sequences of `a.input_len` prompt tokens prefilled
/// in one step, then decoded together for `a.output_len` tokens.
fn latency_of_batch(
    engine: &mut sluice_engine::LlmEngine,
    a: &LatencyArgs,
    batch: usize,
) -> Result<()> {
    let weight_bytes = engine.model().weight_bytes() as f64;
    // Warm-up. With step graphs, at the measured shape (like vLLM's
    // `--num-iters-warmup`): the one-time work of a new batch size (its first eager step,
    // its step graph's capture, the GEMM autotuning of its shapes) stays out of the
    // figures. Without (the CPU) a short run suffices, and a full-size one would double
    // the benchmark's time.
    if engine.model().device().supports_graphs() {
        bench::step_latency(engine, batch, a.input_len, 4, 1, 7)?;
    } else {
        bench::decode(engine, 1, 8, 4, 1, 1)?;
    }
    let r = bench::step_latency(engine, batch, a.input_len, a.output_len, a.reps, 11)?;
    println!(
        "batch {} x ({} in, {} out), {} repetitions",
        batch, a.input_len, a.output_len, a.reps
    );
    println!("| phase | mean ms | p50 ms | p90 ms | p99 ms | tokens/s | weight GB/s |");
    println!("| ----- | ------: | -----: | -----: | -----: | -------: | ----------: |");
    for (phase, xs, tokens_per_step) in [
        ("prefill", &r.prefill_ms, (batch * a.input_len) as f64),
        ("decode", &r.decode_ms, batch as f64),
    ] {
        let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        println!(
            "| {phase} | {mean:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            bench::percentile(xs, 50.0),
            bench::percentile(xs, 90.0),
            bench::percentile(xs, 99.0),
            tokens_per_step / (mean / 1e3),
            weight_bytes / (mean / 1e3) / 1e9,
        );
    }
    // Where a decode step's time goes on the host's clock: the device idles during the
    // host's own work before and after (the share that overlapped scheduling could win).
    let n = r.decode_ms.len().max(1) as f64;
    let p = r.decode_phases;
    let us = |s: f64| s / n * 1e6;
    println!(
        "decode step, host view (µs per step): schedule {:.0}, forward call {:.0}, sample + wait {:.0}, update {:.0}",
        us(p.host_before),
        us(p.forward),
        us(p.wait),
        us(p.host_after)
    );
    Ok(())
}
