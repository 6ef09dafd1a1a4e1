//! Speculative decoding flags (shared by generate, serve and the offline benches) and
//! `sluice bench spec`: tokens/s with and without each method on prompts where
//! speculation has little to find (a story) and much (text that repeats the prompt).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sluice_backend::DType;
use sluice_engine::metrics::EngineMetrics;
use sluice_engine::spec::draft::{check_same_vocab, requantize_weights};
use sluice_engine::spec::{
    DraftModelProposer, DraftSource, NgramProposer, Proposer, SpecMethodStats,
};
use sluice_engine::{EngineConfig, EngineRequest, LlmEngine, SamplingParams, SpecConfig};
use sluice_model::arch::Model;
use sluice_model::chat_template::{ChatMessage, ChatTemplate};
use sluice_model::loader::{load_model, LoadOptions};

use crate::generate::ModelArgs;
use crate::pull;

/// Speculative decoding (see docs/speculative.md).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SpecArgs {
    /// Speculative decoding: `off`, `ngram` (prompt lookup), `draft` (a draft model:
    /// --draft-model, --draft-quant or --draft-layers) or `lookahead` (Jacobi window and
    /// n-gram pool, --lookahead-*). Default: `draft` when a draft flag is given, else off.
    #[arg(long, value_name = "METHOD")]
    pub speculative: Option<String>,
    /// Most draft tokens per sequence per step (1..=32; default 5).
    #[arg(long, value_name = "K")]
    pub num_speculative_tokens: Option<usize>,
    /// Shortest n-gram prompt lookup matches (default 1).
    #[arg(long, value_name = "N")]
    pub ngram_min: Option<usize>,
    /// Longest n-gram prompt lookup matches, tried first (default 4).
    #[arg(long, value_name = "N")]
    pub ngram_max: Option<usize>,
    /// Draft model file (or known name) with the target's vocabulary.
    #[arg(long, value_name = "MODEL")]
    pub draft_model: Option<String>,
    /// Draft = the target (or --draft-model) requantized at load to this type
    /// (q4_0, q4_1, q5_0, q8_0, q4_k, ...).
    #[arg(long, value_name = "TYPE")]
    pub draft_quant: Option<String>,
    /// Draft = the target's first N layers with its final norm and head (self-draft).
    #[arg(long, value_name = "N")]
    pub draft_layers: Option<usize>,
    /// Decode rows per step (1 + drafts, summed over the batch) above which drafts are
    /// cut: beyond it verification is no longer nearly free (default 32).
    #[arg(long, value_name = "TOKENS")]
    pub spec_max_batch_tokens: Option<usize>,
    /// Share of a one-sequence decode step that grows with its rows (the cost of one
    /// extra verified token at batch 1), for the adaptive rule: 0..=1 (default 0.45,
    /// measured on this CPU; GPUs: ~0.02).
    #[arg(long, value_name = "STEPS")]
    pub spec_verify_cost: Option<f64>,
    /// Always draft the full K (no per-sequence adaptation to acceptance).
    #[arg(long)]
    pub no_spec_adaptive: bool,
    /// Lookahead decoding: Jacobi window width W (default 5).
    #[arg(long, value_name = "W")]
    pub lookahead_window: Option<usize>,
    /// Lookahead decoding: n-gram size N (default 4; N - 1 window levels).
    #[arg(long, value_name = "N")]
    pub lookahead_ngram: Option<usize>,
    /// Lookahead decoding: most candidate n-grams verified per step G (default 5).
    #[arg(long, value_name = "G")]
    pub lookahead_verify: Option<usize>,
}

impl SpecArgs {
    fn has_lookahead_flag(&self) -> bool {
        self.lookahead_window.is_some()
            || self.lookahead_ngram.is_some()
            || self.lookahead_verify.is_some()
    }

    /// The lookahead shape from the flags (ranges checked; the context is checked when
    /// the engine is built).
    pub fn lookahead_config(&self) -> Result<sluice_engine::spec::lookahead::LookaheadConfig> {
        let d = sluice_engine::spec::lookahead::LookaheadConfig::default();
        let c = sluice_engine::spec::lookahead::LookaheadConfig {
            window: self.lookahead_window.unwrap_or(d.window),
            ngram: self.lookahead_ngram.unwrap_or(d.ngram),
            verify: self.lookahead_verify.unwrap_or(d.verify),
        };
        c.validate(usize::MAX, usize::MAX)
            .map_err(anyhow::Error::msg)?;
        Ok(c)
    }

    fn has_draft_flag(&self) -> bool {
        self.draft_model.is_some() || self.draft_quant.is_some() || self.draft_layers.is_some()
    }

    /// The method asked for: "off", "ngram" or "draft"; errors on contradictions.
    pub fn method(&self) -> Result<&str> {
        let m = match self.speculative.as_deref() {
            Some(m) => m,
            None if self.has_draft_flag() => "draft",
            None => "off",
        };
        let ngram_flags = self.ngram_min.is_some() || self.ngram_max.is_some();
        if self.has_lookahead_flag() && m != "lookahead" {
            bail!("--lookahead-window/--lookahead-ngram/--lookahead-verify need --speculative lookahead");
        }
        match m {
            "lookahead" => {
                if self.has_draft_flag() || ngram_flags || self.num_speculative_tokens.is_some() {
                    bail!(
                        "--speculative lookahead takes --lookahead-window/--lookahead-ngram/\
                         --lookahead-verify, not draft, n-gram or K flags"
                    );
                }
            }
            "off" => {
                if self.has_draft_flag()
                    || ngram_flags
                    || self.num_speculative_tokens.is_some()
                    || self.spec_max_batch_tokens.is_some()
                    || self.spec_verify_cost.is_some()
                {
                    bail!(
                        "speculative decoding flags given with --speculative off; drop them or \
                         pick a method (ngram, draft)"
                    );
                }
            }
            "ngram" => {
                if self.has_draft_flag() {
                    bail!("--draft-model/--draft-quant/--draft-layers need --speculative draft");
                }
            }
            "draft" => {
                if !self.has_draft_flag() {
                    bail!(
                        "--speculative draft needs a draft: --draft-model M, --draft-quant TYPE \
                         or --draft-layers N"
                    );
                }
                if self.draft_model.is_some() && self.draft_layers.is_some() {
                    bail!("--draft-layers takes layers of the target; it cannot be combined with --draft-model");
                }
                if ngram_flags {
                    bail!("--ngram-min/--ngram-max belong to --speculative ngram");
                }
            }
            other => bail!("unknown --speculative method `{other}` (off, ngram, draft, lookahead)"),
        }
        Ok(m)
    }

    /// The engine-wide settings (validated).
    pub fn config(&self) -> Result<SpecConfig> {
        let d = SpecConfig::default();
        let cfg = SpecConfig {
            num_speculative_tokens: self
                .num_speculative_tokens
                .unwrap_or(d.num_speculative_tokens),
            adaptive: !self.no_spec_adaptive,
            max_batch_tokens: self.spec_max_batch_tokens.unwrap_or(d.max_batch_tokens),
            verify_cost: self.spec_verify_cost.unwrap_or(d.verify_cost),
            ngram_min: self.ngram_min.unwrap_or(d.ngram_min),
            ngram_max: self
                .ngram_max
                .unwrap_or(d.ngram_max)
                .max(self.ngram_min.unwrap_or(0)),
        };
        if let (Some(a), Some(b)) = (self.ngram_min, self.ngram_max) {
            if a > b {
                bail!("--ngram-min ({a}) must not exceed --ngram-max ({b})");
            }
        }
        cfg.validate().map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }

    /// Checks every flag without loading anything (so mistakes fail at start).
    pub fn check(&self) -> Result<()> {
        if self.method()? != "off" {
            self.config()?;
        }
        if self.method()? == "lookahead" {
            self.lookahead_config()?;
        }
        if let Some(t) = &self.draft_quant {
            parse_quant(t)?;
        }
        if self.draft_layers == Some(0) {
            bail!("--draft-layers must be at least 1");
        }
        Ok(())
    }

    /// Turns speculation on in `engine` as the flags say; returns a one-line description
    /// (None when off). `model` is the target's flags (the self-draft and quantized
    /// draft reload the target file).
    pub fn apply(&self, engine: &mut LlmEngine, model: &ModelArgs) -> Result<Option<String>> {
        self.check()?;
        let method = self.method()?;
        if method == "off" {
            return Ok(None);
        }
        let cfg = self.config()?;
        if method == "lookahead" {
            let c = self.lookahead_config()?;
            engine.enable_lookahead(c, &cfg)?;
            return Ok(Some(format!(
                "lookahead decoding: window {}, n-gram {}, verify {}{}",
                c.window,
                c.ngram,
                c.verify,
                if cfg.adaptive { " (adaptive)" } else { "" }
            )));
        }
        let k = cfg.num_speculative_tokens;
        let (proposer, what): (Box<dyn Proposer>, String) = match method {
            "ngram" => (
                Box::new(
                    NgramProposer::new(cfg.ngram_min, cfg.ngram_max).map_err(anyhow::Error::msg)?,
                ),
                format!(
                    "prompt lookup (n-grams {}..={})",
                    cfg.ngram_min, cfg.ngram_max
                ),
            ),
            _ => {
                let d = self.build_draft(engine, model)?;
                let what = format!(
                    "{} ({:.1} MB of weights, {:.0}% of the target's)",
                    d.source(),
                    d.model().weight_bytes() as f64 / 1e6,
                    100.0 * d.draft_cost()
                );
                (Box::new(d), what)
            }
        };
        engine.enable_speculation(cfg.clone(), proposer)?;
        Ok(Some(format!(
            "speculative decoding: {what}, K = {k}{}",
            if cfg.adaptive { " (adaptive)" } else { "" }
        )))
    }

    fn build_draft(&self, engine: &LlmEngine, model: &ModelArgs) -> Result<DraftModelProposer> {
        let target = engine.model();
        let (mut loaded, mut source) = match &self.draft_model {
            Some(m) => {
                let path = pull::resolve_model(m)?;
                let l = load_model(&path, &LoadOptions::default())
                    .with_context(|| format!("loading the draft model {}", path.display()))?;
                (l, DraftSource::File(path.display().to_string()))
            }
            None => (
                model.load().context("reloading the target as draft")?,
                DraftSource::Layers(0),
            ),
        };
        check_same_vocab(
            target.config.vocab_size,
            engine.tokenizer(),
            loaded.config.vocab_size,
            &loaded.tokenizer,
        )
        .map_err(anyhow::Error::msg)?;
        if let Some(n) = self.draft_layers {
            let total = loaded.config.n_layers;
            if n == 0 || n >= total {
                bail!(
                    "--draft-layers must be between 1 and {} (the target has {total} layers)",
                    total - 1
                );
            }
            loaded.config.n_layers = n;
            loaded.config.name = format!("{}-first{n}", loaded.config.name);
            source = DraftSource::Layers(n);
        }
        if let Some(t) = &self.draft_quant {
            let dtype = parse_quant(t)?;
            let r = requantize_weights(&mut loaded.weights, dtype).map_err(anyhow::Error::msg)?;
            loaded.config.name = format!("{}-{}", loaded.config.name, dtype.name());
            if r.fallback > 0 {
                eprintln!(
                    "draft: {} matrices are not whole {dtype} blocks and use Q8_0 (or their own type)",
                    r.fallback
                );
            }
            if !matches!(source, DraftSource::Layers(n) if n > 0) {
                source = DraftSource::Quantized(dtype);
            }
        } else if matches!(source, DraftSource::Layers(0)) {
            bail!("the draft would be the target itself: give --draft-quant or --draft-layers");
        }
        let device = target.device().clone();
        let draft = Model::new(
            &device,
            loaded.config,
            loaded.weights,
            engine.max_model_len(),
        )?;
        Ok(DraftModelProposer::new(
            draft,
            engine.num_blocks(),
            engine.block_size(),
            target.weight_bytes(),
            source,
        )?)
    }
}

fn parse_quant(s: &str) -> Result<DType> {
    DType::from_name(s)
        .filter(|d| sluice_backend::quant::can_quantize(*d) && !matches!(d, DType::Q8_1 | DType::Q8_K))
        .with_context(|| {
            format!("--draft-quant `{s}` is not a weight type sluice can quantize to (q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, f16, bf16)")
        })
}

/// One line per method: acceptance and mean accepted length (empty when off).
pub fn summary(m: &EngineMetrics) -> String {
    m.spec
        .iter()
        .filter(|s| s.num_drafts > 0)
        .map(|s| {
            format!(
                "spec {}: {} drafts, acceptance {:.1}%, mean accepted length {:.2}",
                s.method,
                s.num_drafts,
                100.0 * s.acceptance_rate(),
                s.mean_accepted_length()
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `sluice bench spec`.
#[derive(clap::Args, Debug)]
pub struct SpecBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Configurations to compare, comma-separated: off, ngram, draft-layers:N,
    /// draft-quant:TYPE.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "off,ngram,draft-layers:24,draft-quant:q4_0"
    )]
    pub configs: Vec<String>,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Concurrent requests for the aggregate-throughput test (0: skip it).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

const STORY: &str =
    "Write a short story about a lighthouse keeper who finds a message in a bottle.";
const REPEAT_TEXT: &str = "The committee met on Tuesday to review the budget for the coming year. \
After a long discussion, the members agreed to increase funding for the public library, to repair \
the bridge on Mill Street, and to hire two more teachers for the primary school. The proposal to \
build a new parking garage was postponed until the spring, when the traffic study will be finished.";

fn repeat_prompt() -> String {
    format!("Repeat the following text exactly, word for word:\n\n{REPEAT_TEXT}")
}

struct Workload {
    name: &'static str,
    prompts: Vec<String>,
}

struct Row {
    config: String,
    workload: &'static str,
    tokens: usize,
    seconds: f64,
    spec: Vec<SpecMethodStats>,
}

fn delta(after: &[SpecMethodStats], before: &[SpecMethodStats]) -> Vec<SpecMethodStats> {
    after
        .iter()
        .map(|a| {
            let b = before
                .iter()
                .find(|b| b.method == a.method)
                .cloned()
                .unwrap_or_default();
            SpecMethodStats {
                method: a.method,
                num_drafts: a.num_drafts - b.num_drafts,
                num_draft_tokens: a.num_draft_tokens - b.num_draft_tokens,
                num_accepted_tokens: a.num_accepted_tokens - b.num_accepted_tokens,
                num_emitted_tokens: a.num_emitted_tokens - b.num_emitted_tokens,
            }
        })
        .collect()
}

/// Runs `prompts` at once (greedy); returns output tokens and the seconds from the
/// first token of the batch to the last (decode time; prefill excluded at batch 1).
fn run_batch(
    engine: &mut LlmEngine,
    prompts: &[Vec<u32>],
    max_tokens: usize,
) -> Result<(usize, f64)> {
    for p in prompts {
        engine.add_request(EngineRequest {
            prompt_token_ids: p.clone(),
            params: SamplingParams {
                temperature: 0.0,
                max_tokens,
                ..SamplingParams::default()
            },
            cache_salt: None,
        })?;
    }
    let mut first: Option<Instant> = None;
    let mut n = 0usize;
    let mut first_tokens = 0usize;
    engine.run_to_completion(|o| {
        if first.is_none() {
            first = Some(Instant::now());
            first_tokens = o.new_token_ids.len();
        }
        n += o.new_token_ids.len();
    })?;
    let s = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok((n.saturating_sub(first_tokens), s))
}

pub fn run_bench(a: SpecBenchArgs) -> Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for config in &a.configs {
        let mut m = a.model.clone();
        m.spec = SpecArgs::default();
        // `--no-spec-adaptive` applies to every speculative config.
        m.spec.no_spec_adaptive = a.model.spec.no_spec_adaptive && config != "off";
        match config.split_once(':') {
            None if config == "off" => {}
            None if config == "ngram" => m.spec.speculative = Some("ngram".into()),
            Some(("draft-layers", n)) => {
                m.spec.draft_layers = Some(
                    n.parse()
                        .with_context(|| format!("bad config `{config}`"))?,
                )
            }
            Some(("draft-quant", t)) => m.spec.draft_quant = Some(t.to_string()),
            None if config == "lookahead" => m.spec.speculative = Some("lookahead".into()),
            Some(("lookahead", shape)) => {
                // lookahead:W:N:G
                let v: Vec<usize> = shape
                    .split(':')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("bad config `{config}` (lookahead:W:N:G)"))?;
                let [w, n, g] = v[..] else {
                    bail!("bad config `{config}` (lookahead:W:N:G)");
                };
                m.spec.speculative = Some("lookahead".into());
                m.spec.lookahead_window = Some(w);
                m.spec.lookahead_ngram = Some(n);
                m.spec.lookahead_verify = Some(g);
            }
            _ => bail!(
                "unknown config `{config}` (off, ngram, draft-layers:N, draft-quant:TYPE, \
                 lookahead, lookahead:W:N:G)"
            ),
        }
        m.spec.num_speculative_tokens = a
            .model
            .spec
            .num_speculative_tokens
            .filter(|_| config != "off" && !config.starts_with("lookahead"));
        let cfg = EngineConfig {
            max_num_seqs: a.concurrency.max(1),
            enable_prefix_caching: false,
            ..m.engine_config()?
        };
        let (mut engine, template, _) = m.build_engine(cfg)?;
        let tok = Arc::clone(engine.tokenizer());
        let encode = |text: &str| -> Result<Vec<u32>> {
            Ok(match &template {
                Some(src) => {
                    let t = ChatTemplate::new(src, tok.bos_token(), tok.eos_token())?;
                    let msgs = [ChatMessage {
                        role: "user".into(),
                        content: text.to_string(),
                    }];
                    tok.encode(&t.render(&msgs, true)?, false)?
                }
                None => tok.encode(text, true)?,
            })
        };
        let story = STORY.to_string();
        let repeat = repeat_prompt();
        let workloads = [
            Workload {
                name: "story, batch 1",
                prompts: vec![story.clone()],
            },
            Workload {
                name: "repeat, batch 1",
                prompts: vec![repeat.clone()],
            },
            Workload {
                name: "mixed, concurrency",
                prompts: (0..a.concurrency)
                    .map(|i| {
                        if i % 2 == 0 {
                            story.clone()
                        } else {
                            repeat.clone()
                        }
                    })
                    .collect(),
            },
        ];
        // Warm-up: first touches of weights and buffers.
        run_batch(&mut engine, &[encode("Hello")?], 4)?;
        for w in &workloads {
            if w.prompts.is_empty() {
                continue;
            }
            let ids = w
                .prompts
                .iter()
                .map(|p| encode(p))
                .collect::<Result<Vec<_>>>()?;
            let before = engine.metrics().spec.clone();
            let (tokens, seconds) = run_batch(&mut engine, &ids, a.max_tokens)?;
            rows.push(Row {
                config: config.clone(),
                workload: w.name,
                tokens,
                seconds,
                spec: delta(&engine.metrics().spec, &before),
            });
            let r = rows
                .last()
                .map(|r| (r.tokens as f64 / r.seconds.max(1e-9), r.seconds));
            if let Some((rate, s)) = r {
                eprintln!(
                    "{config} / {}: {tokens} tokens in {s:.2} s = {rate:.1} tok/s",
                    w.name
                );
            }
        }
    }
    println!("| config | workload | tokens | decode s | tok/s | vs off | acceptance | mean accepted length |");
    println!("| ------ | -------- | -----: | -------: | ----: | -----: | ---------: | -------------------: |");
    for r in &rows {
        let rate = r.tokens as f64 / r.seconds.max(1e-9);
        let base = rows
            .iter()
            .find(|b| b.config == "off" && b.workload == r.workload)
            .map(|b| b.tokens as f64 / b.seconds.max(1e-9));
        let vs = base.map_or("-".to_string(), |b| format!("{:.2}x", rate / b));
        let (acc, len) = match r.spec.iter().find(|s| s.num_drafts > 0) {
            Some(s) => (
                format!("{:.1}%", 100.0 * s.acceptance_rate()),
                format!("{:.2}", s.mean_accepted_length()),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {vs} | {acc} | {len} |",
            r.config, r.workload, r.tokens, r.seconds, rate
        );
    }
    Ok(())
}
