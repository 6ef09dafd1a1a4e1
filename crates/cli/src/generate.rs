//! `sluice generate`: one prompt through the engine, text to stdout, timings to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::Device;
use sluice_engine::{EngineConfig, EngineRequest, LlmEngine, SamplingParams};
use sluice_model::arch::Model;
use sluice_model::chat_template::{ChatMessage, ChatTemplate};
use sluice_model::loader::{load_model, LoadOptions, LoadedModel};

use crate::pull;

/// Options shared by every command that loads a model.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF file, a Hugging Face directory, a llama2.c checkpoint (file or
    /// directory), or a known name (see `sluice pull --list`).
    #[arg(long, short = 'm', default_value = pull::DEFAULT_MODEL)]
    pub model: String,
    /// Tokenizer file when it is not inside the model (tokenizer.json or llama2.c tokenizer.bin).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// KV cache memory, e.g. `2GiB`, `512MiB` or bytes (default: a quarter of free memory, at most 4 GiB).
    #[arg(long)]
    pub kv_cache_memory: Option<String>,
    /// KV cache element type: f32 (the CPU default), f16, bf16, q8_0 (blocks of 32
    /// int8 with an f16 scale; needs head_dim % 32 == 0), or fp8 (E4M3, 1 byte per
    /// element, no scale: values beyond ±448 saturate). On CUDA: f32, bf16 (its default)
    /// or fp8. Smaller types fit more tokens in --kv-cache-memory; see docs/kv-cache.md
    /// for the cost in perplexity and speed.
    #[arg(long, value_name = "DTYPE")]
    pub kv_cache_dtype: Option<String>,
    /// Tokens per KV cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Longest prompt + output (default: the model's context, at most 8192).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Where to run: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight type on a GPU: auto (bf16; f16 files, and Q8_0, Q4_0, Q4_1, Q4_K and Q6_K
    /// matrices, stay as they are), bf16, f16, q8_0 (quantized at load: 1.06 bytes per
    /// weight, about half of bf16's decode time), q4_k or q6_k (GGUF K-quants quantized at
    /// load: 0.56 or 0.82 bytes per weight), q4_0 or q4_1 (quantized at load: 0.56 or
    /// 0.63 bytes per weight), fp8 (E4M3 with a per-tensor scale, quantized at load: 1 byte per weight,
    /// FP8 tensor-core GEMMs on sm_89+), or f32 (exact weights and f32 matmuls, the
    /// reference for golden tests).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Fraction of GPU memory sluice may use (weights, activations and KV cache); the KV
    /// cache gets what the weights leave.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Run every decode step op by op on a GPU instead of replaying recorded CUDA graphs
    /// (for debugging and for measuring what the graphs save).
    #[arg(long)]
    pub enforce_eager: bool,
    /// Overlapped steps: on a GPU the next step is scheduled and queued before the host
    /// reads this step's sampled ids, hiding the host's share of each step (on by
    /// default there; `off` waits for every step's ids first). `on` also runs them on
    /// the CPU, where nothing overlaps (for testing).
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    pub async_scheduling: String,
    /// Sample every token on the host from the whole batch's logits, as a GPU engine
    /// did before device sampling (for comparisons and debugging; turns overlapped
    /// steps off, which need the device sampler).
    #[arg(long)]
    pub host_sampling: bool,
    /// Benchmark real shapes without a checkpoint: random weights for a config preset
    /// (see `sluice roofline --list-presets`), with a stand-in vocabulary `t0 t1 ...`.
    /// `--model` is then ignored.
    #[arg(long, value_name = "PRESET")]
    pub random_weights: Option<String>,
    /// Type of the random weights (bf16, f16, f32, q8_0, q4_0, ...).
    #[arg(long, default_value = "bf16")]
    pub random_weights_type: String,
    #[command(flatten)]
    pub spec: crate::spec_args::SpecArgs,
}

/// Parses `2GiB`, `512MiB`, `1.5GB`, `1000000` into bytes.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("`{s}` is not a size like 2GiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => bail!("unknown size unit `{u}` in `{s}` (use B, KiB, MiB, GiB, KB, MB, GB)"),
    };
    if !(v.is_finite() && v > 0.0) {
        bail!("size `{s}` must be positive");
    }
    Ok((v * mult) as u64)
}

impl ModelArgs {
    /// Resolves and loads the model files (or makes random weights for a preset).
    pub fn load(&self) -> Result<LoadedModel> {
        if let Some(preset) = &self.random_weights {
            return crate::random_model::load_random(preset, &self.random_weights_type);
        }
        let path = pull::resolve_model(&self.model)?;
        let opts = LoadOptions {
            tokenizer_path: self.tokenizer.clone(),
        };
        let loaded = load_model(&path, &opts)?;
        Ok(loaded)
    }

    /// The name clients use for this model: a known name as given, else the file stem
    /// (or directory name) of the path.
    pub fn served_name(&self) -> String {
        if let Some(p) = &self.random_weights {
            return format!("random-{p}");
        }
        if pull::find_known(&self.model).is_some() {
            return self.model.clone();
        }
        let p = std::path::Path::new(&self.model);
        let stem = if p.is_dir() {
            p.file_name()
        } else {
            p.file_stem()
        };
        stem.map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.model.clone())
    }

    pub fn engine_config(&self) -> Result<EngineConfig> {
        Ok(EngineConfig {
            block_size: self.block_size,
            kv_cache_memory: self
                .kv_cache_memory
                .as_deref()
                .map(parse_bytes)
                .transpose()?,
            max_model_len: self.max_model_len,
            gpu_memory_utilization: self.gpu_memory_utilization,
            kv_cache_dtype: self.kv_cache_dtype()?,
            step_graphs: !self.enforce_eager,
            async_scheduling: match self.async_scheduling.as_str() {
                "auto" if self.host_sampling => Some(false),
                "auto" => None,
                "on" => Some(true),
                "off" => Some(false),
                other => anyhow::bail!("--async-scheduling {other}: expected auto, on or off"),
            },
            sample_on_device: self.host_sampling.then_some(false),
            ..EngineConfig::default()
        })
    }

    /// The `--kv-cache-dtype` asked for (None: the device's default).
    pub fn kv_cache_dtype(&self) -> Result<Option<sluice_backend::DType>> {
        Ok(self
            .kv_cache_dtype
            .as_deref()
            .map(sluice_model::kv_cache::parse_kv_cache_dtype)
            .transpose()?)
    }

    /// The device named by `--device` (and `--dtype` for GPUs).
    pub fn device(&self) -> Result<Device> {
        let wt = CudaWeightType::parse(&self.dtype).with_context(|| {
            format!(
                "unknown --dtype `{}` (auto, bf16, f16, q8_0, q4_0, q4_1, q4_k, q6_k, fp8, f32)",
                self.dtype
            )
        })?;
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            bail!("--gpu-memory-utilization must be in (0, 1]");
        }
        Ok(Device::parse(&self.device, self.threads, wt)?)
    }

    /// Loads the model onto the device and builds an engine around it.
    pub fn build_engine(&self, cfg: EngineConfig) -> Result<(LlmEngine, Option<String>, String)> {
        if self.block_size == 0 || self.block_size > 1024 {
            bail!("--block-size must be between 1 and 1024");
        }
        self.spec.check()?;
        let loaded = self.load()?;
        let name = self.served_name();
        let device = self.device()?;
        let max_len = cfg
            .max_model_len
            .unwrap_or(loaded.config.max_position.min(8192));
        let template = loaded.chat_template.clone();
        let mut tokenizer = loaded.tokenizer;
        tokenizer.add_eos_ids(&loaded.generation.eos_token_ids);
        let model = Model::new(&device, loaded.config, loaded.weights, max_len)?;
        let mut engine = LlmEngine::new(model, Arc::new(tokenizer), &cfg)?;
        if let Some(line) = self.spec.apply(&mut engine, self)? {
            eprintln!("{line}");
        }
        Ok((engine, template, name))
    }
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    /// Keep generating past end-of-sequence tokens, up to --max-tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop strings (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print the generated token ids to stderr at the end.
    #[arg(long)]
    pub print_token_ids: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let t_load = Instant::now();
    let cfg = EngineConfig {
        max_num_seqs: 1,
        ..a.model.engine_config()?
    };
    let (mut engine, template, _name) = a.model.build_engine(cfg)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let tok = Arc::clone(engine.tokenizer());
    let prompt_ids = if a.chat {
        let src = template.context("this model has no chat template; drop --chat")?;
        let t = ChatTemplate::new(&src, tok.bos_token(), tok.eos_token())?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage {
                role: "system".into(),
                content: s.clone(),
            });
        }
        msgs.push(ChatMessage {
            role: "user".into(),
            content: a.prompt.clone(),
        });
        let text = t.render(&msgs, true)?;
        tok.encode(&text, false)?
    } else {
        tok.encode(&a.prompt, true)?
    };
    let params = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        ..SamplingParams::default()
    };
    let n_prompt = prompt_ids.len();
    let t0 = Instant::now();
    engine.add_request(EngineRequest {
        prompt_token_ids: prompt_ids,
        params,
        cache_salt: None,
    })?;
    let mut first: Option<Instant> = None;
    let mut n_gen = 0usize;
    let mut ids = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    engine.run_to_completion(|o| {
        if first.is_none() {
            first = Some(Instant::now());
        }
        n_gen += o.new_token_ids.len();
        ids.extend_from_slice(&o.new_token_ids);
        let _ = out.write_all(o.new_text.as_bytes());
        let _ = out.flush();
    })?;
    let end = Instant::now();
    let _ = writeln!(out);
    let _ = out.flush();
    let first = first.unwrap_or(end);
    let pp = (first - t0).as_secs_f64();
    let tg = (end - first).as_secs_f64();
    let tg_rate = if n_gen > 1 {
        (n_gen - 1) as f64 / tg
    } else {
        0.0
    };
    eprintln!(
        "load {:.2} s | prompt {} tokens in {:.1} ms ({:.1} tok/s) | generation {} tokens, {:.1} tok/s",
        load_s,
        n_prompt,
        pp * 1e3,
        n_prompt as f64 / pp.max(1e-9),
        n_gen,
        tg_rate
    );
    let spec = crate::spec_args::summary(engine.metrics());
    if !spec.is_empty() {
        eprintln!("{spec}");
    }
    if a.print_token_ids {
        eprintln!("token ids: {ids:?}");
    }
    Ok(())
}
