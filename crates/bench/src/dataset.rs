//! Benchmark datasets: the prompts to send and how many tokens to ask for.
//!
//! - `random`: random tokens, each prompt exactly `input_len` tokens (± range ratio) under
//!   the tokenizer, like vLLM's `RandomDataset`.
//! - `sharegpt`: the first human turn of ShareGPT conversations as prompts, the first reply's
//!   token count as the output length (vLLM's `ShareGPTDataset` filters).
//! - `prefix`: `num_prefixes` long shared prefixes, each followed by a random suffix; shows
//!   what prefix caching buys (vLLM's `prefix_repetition` dataset).
//! - `jsonl`: one prompt a line, `"text"` or `{"prompt": ..., "output_len": N}`.

use crate::error::{BenchError, Result};
use crate::tokenizer::BenchTokenizer;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    pub prompt: String,
    /// Prompt tokens under the bench tokenizer (no special tokens). `None` without a
    /// tokenizer; the report then uses the server's `usage.prompt_tokens`.
    pub prompt_len: Option<usize>,
    /// `max_tokens` sent with the request.
    pub expected_output_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    Random,
    Sharegpt,
    Prefix,
    Jsonl,
}

impl DatasetName {
    pub fn as_str(&self) -> &'static str {
        match self {
            DatasetName::Random => "random",
            DatasetName::Sharegpt => "sharegpt",
            DatasetName::Prefix => "prefix",
            DatasetName::Jsonl => "jsonl",
        }
    }
}

/// Everything that decides which prompts a run sends.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    pub name: DatasetName,
    pub path: Option<PathBuf>,
    pub num_prompts: usize,
    pub seed: u64,
    pub random_input_len: usize,
    pub random_output_len: usize,
    pub random_range_ratio: f64,
    /// Tokens of one fixed random prefix put in front of every random prompt.
    pub random_prefix_len: usize,
    /// Fixed output length for ShareGPT (otherwise the reply's length).
    pub sharegpt_output_len: Option<usize>,
    pub prefix_len: usize,
    pub prefix_suffix_len: usize,
    pub prefix_num_prefixes: usize,
    pub prefix_output_len: usize,
    /// Output length for JSONL lines that give none.
    pub jsonl_output_len: usize,
}

impl DatasetConfig {
    /// Defaults matching vLLM's `benchmark_serving.py` where it has the same knob.
    pub fn new(name: DatasetName, num_prompts: usize) -> Self {
        DatasetConfig {
            name,
            path: None,
            num_prompts,
            seed: 0,
            random_input_len: 1024,
            random_output_len: 128,
            random_range_ratio: 0.0,
            random_prefix_len: 0,
            sharegpt_output_len: None,
            prefix_len: 256,
            prefix_suffix_len: 256,
            prefix_num_prefixes: 10,
            prefix_output_len: 128,
            jsonl_output_len: 128,
        }
    }
}

fn need_tokenizer<'a>(tok: Option<&'a BenchTokenizer>, what: &str) -> Result<&'a BenchTokenizer> {
    tok.ok_or_else(|| {
        BenchError::arg(format!(
            "the {what} dataset needs a tokenizer: pass --tokenizer (a tokenizer.json, a .gguf, \
             a model directory or a model name in the local Hugging Face cache)"
        ))
    })
}

fn need_path(cfg: &DatasetConfig) -> Result<&Path> {
    let p = cfg.path.as_deref().ok_or_else(|| {
        BenchError::arg(format!(
            "the {} dataset needs --dataset-path",
            cfg.name.as_str()
        ))
    })?;
    if !p.is_file() {
        return Err(BenchError::arg(format!(
            "dataset file not found: {}",
            p.display()
        )));
    }
    Ok(p)
}

/// Builds the request list for `cfg`.
pub fn sample_requests(
    cfg: &DatasetConfig,
    tok: Option<&BenchTokenizer>,
) -> Result<Vec<SampleRequest>> {
    if cfg.num_prompts == 0 {
        return Err(BenchError::arg("--num-prompts must be at least 1"));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    match cfg.name {
        DatasetName::Random => random(cfg, need_tokenizer(tok, "random")?, &mut rng),
        DatasetName::Prefix => prefix(cfg, need_tokenizer(tok, "prefix")?, &mut rng),
        DatasetName::Sharegpt => sharegpt(cfg, need_path(cfg)?, tok, &mut rng),
        DatasetName::Jsonl => jsonl(cfg, need_path(cfg)?, tok),
    }
}

/// Lengths uniform in `[len*(1-r), len*(1+r)]` (vLLM's integer bounds), at least `min`.
fn range_len(rng: &mut impl Rng, len: usize, ratio: f64, min: usize) -> usize {
    let lo = ((len as f64) * (1.0 - ratio)).floor() as usize;
    let hi = ((len as f64) * (1.0 + ratio)).floor() as usize;
    rng.random_range(lo..=hi.max(lo)).max(min)
}

fn random(
    cfg: &DatasetConfig,
    tok: &BenchTokenizer,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<SampleRequest>> {
    if !(0.0..1.0).contains(&cfg.random_range_ratio) {
        return Err(BenchError::arg(format!(
            "--random-range-ratio must be in [0, 1), got {}",
            cfg.random_range_ratio
        )));
    }
    if cfg.random_input_len == 0 && cfg.random_prefix_len == 0 {
        return Err(BenchError::arg("--random-input-len must be at least 1"));
    }
    if cfg.random_output_len == 0 {
        return Err(BenchError::arg("--random-output-len must be at least 1"));
    }
    let prefix = tok.exact_prompt(rng, "", cfg.random_prefix_len)?;
    let mut out = Vec::with_capacity(cfg.num_prompts);
    for _ in 0..cfg.num_prompts {
        let min_in = usize::from(cfg.random_prefix_len == 0);
        let input = range_len(rng, cfg.random_input_len, cfg.random_range_ratio, min_in);
        let output = range_len(rng, cfg.random_output_len, cfg.random_range_ratio, 1);
        let total = cfg.random_prefix_len + input;
        let prompt = tok.exact_prompt(rng, &prefix, total)?;
        out.push(SampleRequest {
            prompt,
            prompt_len: Some(total),
            expected_output_len: output,
        });
    }
    Ok(out)
}

fn prefix(
    cfg: &DatasetConfig,
    tok: &BenchTokenizer,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<SampleRequest>> {
    if cfg.prefix_num_prefixes == 0 {
        return Err(BenchError::arg("--prefix-num-prefixes must be at least 1"));
    }
    if cfg.prefix_len + cfg.prefix_suffix_len == 0 {
        return Err(BenchError::arg(
            "--prefix-len plus --prefix-suffix-len must be at least 1",
        ));
    }
    if cfg.prefix_output_len == 0 {
        return Err(BenchError::arg("--prefix-output-len must be at least 1"));
    }
    let prefixes = (0..cfg.prefix_num_prefixes)
        .map(|_| tok.exact_prompt(rng, "", cfg.prefix_len))
        .collect::<Result<Vec<_>>>()?;
    let total = cfg.prefix_len + cfg.prefix_suffix_len;
    let mut out = Vec::with_capacity(cfg.num_prompts);
    for i in 0..cfg.num_prompts {
        let prompt = tok.exact_prompt(rng, &prefixes[i % prefixes.len()], total)?;
        out.push(SampleRequest {
            prompt,
            prompt_len: Some(total),
            expected_output_len: cfg.prefix_output_len,
        });
    }
    // Interleave the groups so requests sharing a prefix do not all arrive together.
    out.shuffle(rng);
    Ok(out)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))
}

/// Repeats `items` in order until there are `n` of them (noting it on stderr).
fn cycle_to(mut items: Vec<SampleRequest>, n: usize, what: &str) -> Vec<SampleRequest> {
    if items.len() > n {
        items.truncate(n);
    } else if items.len() < n {
        eprintln!(
            "note: {what} has {} usable prompts; reusing them to make {n} requests",
            items.len()
        );
        let base = items.clone();
        let mut i = 0;
        while items.len() < n {
            items.push(base[i % base.len()].clone());
            i += 1;
        }
    }
    items
}

/// vLLM's `is_valid_sequence` bounds for ShareGPT.
const SHAREGPT_MIN_LEN: usize = 4;
const SHAREGPT_MAX_PROMPT_LEN: usize = 1024;
const SHAREGPT_MAX_TOTAL_LEN: usize = 2048;

fn sharegpt(
    cfg: &DatasetConfig,
    path: &Path,
    tok: Option<&BenchTokenizer>,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<SampleRequest>> {
    let bad = |m: String| BenchError::Dataset(format!("{}: {m}", path.display()));
    let data: Value =
        serde_json::from_str(&read_text(path)?).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let entries = data
        .as_array()
        .ok_or_else(|| bad("expected a JSON array of conversations".into()))?;
    // (first human turn, first reply) of every conversation with at least two turns.
    let mut pairs: Vec<(String, String)> = Vec::new();
    for e in entries {
        let conv = e
            .get("conversations")
            .or_else(|| e.get("conversation"))
            .and_then(Value::as_array);
        let Some(conv) = conv else { continue };
        if conv.len() < 2 {
            continue;
        }
        let text = |v: &Value| v.get("value").and_then(Value::as_str).map(str::to_string);
        if let (Some(p), Some(c)) = (text(&conv[0]), text(&conv[1])) {
            pairs.push((p, c));
        }
    }
    if pairs.is_empty() {
        return Err(bad(
            "no conversation with two turns ({\"conversations\": [{\"from\", \"value\"}, ...]})"
                .into(),
        ));
    }
    let no_len = || {
        BenchError::arg(
            "the sharegpt dataset needs --tokenizer to measure reply lengths, or a fixed \
             --sharegpt-output-len",
        )
    };
    if tok.is_none() && cfg.sharegpt_output_len.is_none() {
        return Err(no_len());
    }
    pairs.shuffle(rng);
    let mut out = Vec::new();
    for (prompt, completion) in pairs {
        if out.len() == cfg.num_prompts {
            break;
        }
        let prompt_len = tok.map(|t| t.count(&prompt)).transpose()?;
        let output_len = match (cfg.sharegpt_output_len, tok) {
            (Some(n), _) => n,
            (None, Some(t)) => t.count(&completion)?,
            (None, None) => return Err(no_len()),
        };
        if let Some(pl) = prompt_len {
            // vLLM's filter: drop very short and very long pairs (the fixed output length,
            // when given, is not filtered).
            let short = pl < SHAREGPT_MIN_LEN
                || (cfg.sharegpt_output_len.is_none() && output_len < SHAREGPT_MIN_LEN);
            if short || pl > SHAREGPT_MAX_PROMPT_LEN || pl + output_len > SHAREGPT_MAX_TOTAL_LEN {
                continue;
            }
        }
        if output_len == 0 {
            continue;
        }
        out.push(SampleRequest {
            prompt,
            prompt_len,
            expected_output_len: output_len,
        });
    }
    if out.is_empty() {
        return Err(bad("no conversation passed the length filters".into()));
    }
    Ok(cycle_to(out, cfg.num_prompts, "the ShareGPT file"))
}

fn jsonl(
    cfg: &DatasetConfig,
    path: &Path,
    tok: Option<&BenchTokenizer>,
) -> Result<Vec<SampleRequest>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |m: &str| BenchError::Dataset(format!("{}:{}: {m}", path.display(), i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| at(&format!("invalid JSON: {e}")))?;
        let (prompt, out_len) = match &v {
            Value::String(s) => (s.clone(), None),
            Value::Object(o) => {
                let p = o
                    .get("prompt")
                    .or_else(|| o.get("text"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| at("expected a \"prompt\" string field"))?;
                let n = o
                    .get("output_len")
                    .or_else(|| o.get("max_tokens"))
                    .map(|n| {
                        n.as_u64()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| at("output_len must be a positive integer"))
                    })
                    .transpose()?;
                (p.to_string(), n.map(|n| n as usize))
            }
            _ => return Err(at("expected a string or an object with \"prompt\"")),
        };
        let prompt_len = tok.map(|t| t.count(&prompt)).transpose()?;
        out.push(SampleRequest {
            prompt,
            prompt_len,
            expected_output_len: out_len.unwrap_or(cfg.jsonl_output_len),
        });
    }
    if out.is_empty() {
        return Err(BenchError::Dataset(format!(
            "{}: no prompts in the file",
            path.display()
        )));
    }
    if cfg.jsonl_output_len == 0 {
        return Err(BenchError::arg("--jsonl-output-len must be at least 1"));
    }
    Ok(cycle_to(out, cfg.num_prompts, "the JSONL file"))
}
