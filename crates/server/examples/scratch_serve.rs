// TEMPORARY scratch (deleted before the report): `sluice serve` stand-in for run.sh.
use std::sync::Arc;

use clap::Parser;
use sluice_backend::Device;
use sluice_engine::{EngineConfig, EngineHandle, LlmEngine};
use sluice_model::arch::Model;
use sluice_model::loader::{load_model, LoadOptions};

#[derive(Parser)]
enum Cli {
    Serve(Args),
}

#[derive(clap::Args)]
struct Args {
    #[arg(long)]
    model: String,
    #[arg(long)]
    max_model_len: Option<usize>,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    #[arg(long)]
    kv_cache_memory: Option<String>,
    #[command(flatten)]
    serve: sluice_server::ServeArgs,
}

fn main() {
    let Cli::Serve(a) = Cli::parse();
    let loaded = load_model(std::path::Path::new(&a.model), &LoadOptions::default()).expect("load");
    let name = loaded.config.name.clone();
    let template = loaded.chat_template.clone();
    let mut tok = loaded.tokenizer;
    tok.add_eos_ids(&loaded.generation.eos_token_ids);
    let tok = Arc::new(tok);
    let cfg = a.serve.engine_config(EngineConfig {
        max_model_len: a.max_model_len,
        block_size: a.block_size,
        num_blocks: std::env::var("NUM_BLOCKS").ok().and_then(|v| v.parse().ok()),
        ..EngineConfig::default()
    });
    let max_len = cfg.max_model_len.unwrap_or(loaded.config.max_position.min(8192));
    let model = Model::new(&Device::cpu(None), loaded.config, loaded.weights, max_len).expect("model");
    let engine = LlmEngine::new(model, Arc::clone(&tok), &cfg).expect("engine");
    let handle = EngineHandle::spawn(engine, name);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(sluice_server::serve(a.serve.server_config(), handle, tok, template)).expect("serve");
}
