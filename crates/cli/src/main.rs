//! `sluice`: wiring and argument parsing only.

mod bench_offline;
mod chat;
mod generate;
mod perplexity;
mod pull;
mod quantize;
mod random_model;
mod spec_args;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "LLM inference engine and OpenAI-compatible server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API and the web chat (default model: smollm2-135m-instruct).
    Serve(ServeCmd),
    /// Generate text from a prompt (streams the text to stdout, timings to stderr).
    Generate(generate::GenerateArgs),
    /// Chat in the terminal, in-process on a model or with an OpenAI-compatible server (--url).
    Chat(chat::ChatArgs),
    /// Show a model's architecture, size, quantization mix and special tokens.
    Info(InfoArgs),
    /// Where the time of a forward step goes, against the memory and compute floor.
    Roofline(sluice_roofline::RooflineArgs),
    /// Download a known model into the cache (checksum verified, never twice).
    Pull(PullArgs),
    /// Quantize a GGUF or Hugging Face model into a GGUF file (llama.cpp's types and recipes).
    Quantize(quantize::QuantizeArgs),
    /// Perplexity of a text, and KL divergence against a reference model's saved logits.
    Perplexity(perplexity::PerplexityArgs),
    /// Benchmarks: offline through the engine (model, throughput) or online against any
    /// OpenAI-compatible server.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// llama-bench-style prompt processing / generation rates (pp512, tg128, batched).
    Model(bench_offline::ModelBenchArgs),
    /// Offline throughput: all requests submitted at once.
    Throughput(bench_offline::ThroughputArgs),
    /// Per-step prefill and decode latency of one batch (like TGI's benchmark).
    Latency(bench_offline::LatencyArgs),
    /// Online serving benchmark against any OpenAI-compatible server.
    Serve(Box<sluice_bench::BenchServeArgs>),
    /// Speculative decoding: tokens/s without and with each method (story and
    /// repeat-the-prompt workloads, batch 1 and concurrent), with acceptance rates.
    Spec(spec_args::SpecBenchArgs),
    /// Compare saved results: table, plots, SLO recommendation.
    Compare(sluice_bench::BenchCompareArgs),
}

#[derive(clap::Args)]
struct ServeCmd {
    #[command(flatten)]
    model: generate::ModelArgs,
    #[command(flatten)]
    serve: sluice_server::ServeArgs,
}

#[derive(clap::Args)]
struct InfoArgs {
    /// Model path (GGUF file, Hugging Face directory, llama2.c checkpoint) or known name.
    model: String,
    /// Tokenizer file, when it is not next to the model.
    #[arg(long)]
    tokenizer: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct PullArgs {
    /// Known model name; `--list` shows them.
    name: Option<String>,
    /// List the known models.
    #[arg(long)]
    list: bool,
    /// Download again even if cached.
    #[arg(long)]
    force: bool,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        // One clear line: the chain of causes, outermost first (a cause that its parent's
        // message already ends with, as in "I/O error on f: No such file", is not repeated).
        let mut msg: Vec<String> = Vec::new();
        for c in e.chain() {
            let s = c.to_string();
            if !msg.last().is_some_and(|p| p.ends_with(&s)) {
                msg.push(s);
            }
        }
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(a) => serve_cmd(a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Info(a) => info(a),
        Command::Pull(a) => pull_cmd(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Roofline(a) => sluice_roofline::run(a),
        Command::Bench(BenchCommand::Model(a)) => bench_offline::run_model_bench(a),
        Command::Bench(BenchCommand::Throughput(a)) => bench_offline::run_throughput(a),
        Command::Bench(BenchCommand::Latency(a)) => bench_offline::run_latency(a),
        Command::Bench(BenchCommand::Spec(a)) => spec_args::run_bench(a),
        Command::Bench(BenchCommand::Serve(a)) => {
            tokio::runtime::Runtime::new()?.block_on(sluice_bench::run_serve(&a))?;
            Ok(())
        }
        Command::Bench(BenchCommand::Compare(a)) => {
            sluice_bench::run_compare(&a)?;
            Ok(())
        }
    }
}

fn serve_cmd(a: ServeCmd) -> Result<()> {
    let cfg = a.serve.engine_config(a.model.engine_config()?);
    let (engine, template, name) = a.model.build_engine(cfg)?;
    let tokenizer = std::sync::Arc::clone(engine.tokenizer());
    eprintln!(
        "sluice: {name} on {}; KV cache {} blocks x {} tokens = {} tokens ({}, {:.0} KiB/token); max model length {}",
        engine.model().device().name(),
        engine.num_blocks(),
        engine.block_size(),
        engine.num_blocks() * engine.block_size(),
        engine.kv_cache_dtype(),
        sluice_model::KvCache::bytes_per_token(&engine.model().config, engine.kv_cache_dtype())
            / 1024.0,
        engine.max_model_len()
    );
    let handle = sluice_engine::EngineHandle::spawn(engine, name);
    tokio::runtime::Runtime::new()?.block_on(sluice_server::serve(
        a.serve.server_config(),
        handle,
        tokenizer,
        template,
    ))?;
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let path = pull::resolve_model(&a.model)?;
    let opts = sluice_model::loader::LoadOptions {
        tokenizer_path: a.tokenizer,
    };
    let loaded = sluice_model::loader::load_model(&path, &opts)?;
    let summary =
        sluice_model::loader::info::ModelSummary::new(&loaded, sluice_backend::DType::F32);
    println!("{summary}");
    Ok(())
}

fn pull_cmd(a: PullArgs) -> Result<()> {
    if a.list || a.name.is_none() {
        for m in pull::KNOWN_MODELS {
            let cached = pull::cached_path(m).map(|p| p.exists()).unwrap_or(false);
            println!(
                "{:<24} {:>6.1} MB  {}{}",
                m.name,
                m.size as f64 / 1e6,
                m.description,
                if cached { "  [cached]" } else { "" }
            );
        }
        return Ok(());
    }
    let name = a.name.unwrap_or_default();
    let m = pull::find_known(&name).ok_or_else(|| {
        let names: Vec<&str> = pull::KNOWN_MODELS.iter().map(|m| m.name).collect();
        anyhow::anyhow!("unknown model `{name}` (known: {})", names.join(", "))
    })?;
    let p = pull::pull(m, a.force)?;
    println!("{}", p.display());
    Ok(())
}
