//! `sluice bench serve`: the online serving benchmark (one run or a sweep).

use crate::client::{join_url, Endpoint, RequestSpec};
use crate::dataset::{sample_requests, DatasetConfig, DatasetName};
use crate::error::{BenchError, Result};
use crate::metrics::{calculate_metrics, resolve_output_lens, SloBounds};
use crate::report::{
    error_summary, requests_csv, result_block, summary_csv, write_json, write_text,
};
use crate::result::{trim_float, BenchResult, RunMeta};
use crate::runner::{probe, progress_bar, run_point, warm_up, LoadPoint};
use crate::tokenizer::{load_tokenizer, BenchTokenizer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `sluice bench serve`. Names follow vLLM's `benchmark_serving.py`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchServeArgs {
    /// Server base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine).
    #[arg(long)]
    pub base_url: String,
    /// /v1/completions or /v1/chat/completions.
    #[arg(long, default_value = "/v1/completions")]
    pub endpoint: String,
    /// Model name sent in each request.
    #[arg(long)]
    pub model: String,
    /// Tokenizer for exact token counts: a tokenizer.json, a .gguf, a llama2.c tokenizer.bin,
    /// a model directory, or a model name in the local Hugging Face cache. Defaults to
    /// --model when that is a path.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Name shown for this server in reports and `compare` (default: host:port).
    #[arg(long)]
    pub label: Option<String>,

    #[arg(long, value_enum, default_value = "random")]
    pub dataset_name: DatasetName,
    /// File for the sharegpt and jsonl datasets.
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    /// Lengths are drawn uniformly from [len*(1-r), len*(1+r)].
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Tokens of one random prefix shared by every random prompt.
    #[arg(long, default_value_t = 0)]
    pub random_prefix_len: usize,
    /// Fixed output length for ShareGPT (default: each reply's own length).
    #[arg(long)]
    pub sharegpt_output_len: Option<usize>,
    /// Shared prefix length (tokens) for the prefix dataset.
    #[arg(long, default_value_t = 256)]
    pub prefix_len: usize,
    #[arg(long, default_value_t = 256)]
    pub prefix_suffix_len: usize,
    #[arg(long, default_value_t = 10)]
    pub prefix_num_prefixes: usize,
    #[arg(long, default_value_t = 128)]
    pub prefix_output_len: usize,
    /// Output length for JSONL lines that give none.
    #[arg(long, default_value_t = 128)]
    pub jsonl_output_len: usize,

    /// Requests per second, Poisson/gamma arrivals; `inf` sends all at once. A comma list
    /// (1,2,4,inf) runs a sweep.
    #[arg(long, default_value = "inf")]
    pub request_rate: String,
    /// Gamma shape of the inter-arrival times (1 = Poisson, <1 burstier, >1 more regular).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Most requests in flight at once. A comma list (1,4,16,64) runs a sweep.
    #[arg(long)]
    pub max_concurrency: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests sent (one at a time, untimed) before measuring.
    #[arg(long, default_value_t = 1)]
    pub num_warmups: usize,
    /// Ask the server to ignore EOS so every request generates exactly max_tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Extra JSON object merged into every request body, e.g. '{"top_k": 1}'.
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Bearer token for the server.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds before one request counts as failed.
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,

    /// SLO bounds for goodput, e.g. `--goodput ttft:500 tpot:50 e2el:5000` (ms).
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// Percentiles to report.
    #[arg(long, default_value = "50,90,99")]
    pub percentiles: String,

    /// Where result files go.
    #[arg(long, default_value = ".")]
    pub result_dir: PathBuf,
    /// File name stem for a single run (default: LABEL_DATASET[_chat]_rRATE_cCONC).
    #[arg(long)]
    pub result_filename: Option<String>,
    /// Print results only; write no files.
    #[arg(long)]
    pub no_save: bool,
    /// Keep every generated text in the JSON.
    #[arg(long)]
    pub save_detailed: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// What a serve run produced.
#[derive(Debug, Clone)]
pub struct ServeOutput {
    pub results: Vec<BenchResult>,
    /// Files written (JSON and CSV per point, then the summary CSV).
    pub files: Vec<PathBuf>,
}

/// `inf` or `1,2,4,inf` -> rates; each positive.
pub fn parse_rates(s: &str) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        let v = match item {
            "inf" | "Inf" | "infinity" => f64::INFINITY,
            _ => item.parse::<f64>().map_err(|_| {
                BenchError::arg(format!("--request-rate: {item:?} is not a number or inf"))
            })?,
        };
        if v.is_nan() || v <= 0.0 {
            return Err(BenchError::arg(format!(
                "--request-rate must be positive, got {item}; use inf to send all requests at once"
            )));
        }
        out.push(v);
    }
    Ok(out)
}

/// `4` or `1,4,16` -> concurrency caps; each at least 1.
pub fn parse_concurrency(s: Option<&str>) -> Result<Vec<Option<usize>>> {
    let Some(s) = s else { return Ok(vec![None]) };
    s.split(',')
        .map(str::trim)
        .map(|item| match item.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(BenchError::arg(format!(
                "--max-concurrency must be a positive integer, got {item:?}"
            ))),
        })
        .collect()
}

pub fn parse_percentiles(s: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(str::trim)
        .map(|item| match item.parse::<f64>() {
            Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
            _ => Err(BenchError::arg(format!(
                "--percentiles: {item:?} is not a number in [0, 100]"
            ))),
        })
        .collect()
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Checked settings of a serve run.
struct Plan {
    spec: RequestSpec,
    points: Vec<LoadPoint>,
    percentiles: Vec<f64>,
    goodput: SloBounds,
    label: String,
    dataset: DatasetConfig,
}

fn plan(a: &BenchServeArgs) -> Result<Plan> {
    let url = reqwest::Url::parse(&a.base_url)
        .map_err(|e| BenchError::arg(format!("--base-url {:?}: {e}", a.base_url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BenchError::arg(format!(
            "--base-url must be http:// or https://, got {:?}",
            a.base_url
        )));
    }
    let endpoint = Endpoint::parse(&a.endpoint).map_err(BenchError::arg)?;
    if a.num_prompts == 0 {
        return Err(BenchError::arg("--num-prompts must be at least 1"));
    }
    if !(a.burstiness > 0.0 && a.burstiness.is_finite()) {
        return Err(BenchError::arg(format!(
            "--burstiness must be a positive number, got {}",
            a.burstiness
        )));
    }
    if !(a.request_timeout > 0.0 && a.request_timeout.is_finite()) {
        return Err(BenchError::arg(
            "--request-timeout must be a positive number of seconds",
        ));
    }
    let extra_body = match &a.extra_body {
        None => serde_json::Map::new(),
        Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Err(BenchError::arg("--extra-body must be a JSON object")),
        },
    };
    let rates = parse_rates(&a.request_rate)?;
    let concs = parse_concurrency(a.max_concurrency.as_deref())?;
    let mut points = Vec::new();
    for &c in &concs {
        for &r in &rates {
            points.push(LoadPoint {
                request_rate: r,
                burstiness: a.burstiness,
                max_concurrency: c,
                seed: a.seed,
            });
        }
    }
    let label = a.label.clone().unwrap_or_else(|| {
        let host = url.host_str().unwrap_or("server");
        match url.port_or_known_default() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    });
    let mut dataset = DatasetConfig::new(a.dataset_name, a.num_prompts);
    dataset.path = a.dataset_path.clone();
    dataset.seed = a.seed;
    dataset.random_input_len = a.random_input_len;
    dataset.random_output_len = a.random_output_len;
    dataset.random_range_ratio = a.random_range_ratio;
    dataset.random_prefix_len = a.random_prefix_len;
    dataset.sharegpt_output_len = a.sharegpt_output_len;
    dataset.prefix_len = a.prefix_len;
    dataset.prefix_suffix_len = a.prefix_suffix_len;
    dataset.prefix_num_prefixes = a.prefix_num_prefixes;
    dataset.prefix_output_len = a.prefix_output_len;
    dataset.jsonl_output_len = a.jsonl_output_len;
    if matches!(a.dataset_name, DatasetName::Sharegpt | DatasetName::Jsonl) {
        match &a.dataset_path {
            None => {
                return Err(BenchError::arg(format!(
                    "the {} dataset needs --dataset-path",
                    a.dataset_name.as_str()
                )))
            }
            Some(p) if !p.is_file() => {
                return Err(BenchError::arg(format!(
                    "dataset file not found: {}",
                    p.display()
                )))
            }
            Some(_) => {}
        }
    }
    Ok(Plan {
        spec: RequestSpec {
            api_url: join_url(&a.base_url, endpoint.path()),
            endpoint,
            model: a.model.clone(),
            api_key: a.api_key.clone().filter(|k| !k.is_empty()),
            ignore_eos: a.ignore_eos,
            temperature: a.temperature,
            extra_body,
            timeout: Duration::from_secs_f64(a.request_timeout),
        },
        points,
        percentiles: parse_percentiles(&a.percentiles)?,
        goodput: SloBounds::parse(&a.goodput, "--goodput")?,
        label,
        dataset,
    })
}

fn tokenizer_for(a: &BenchServeArgs) -> Result<Option<BenchTokenizer>> {
    if let Some(t) = &a.tokenizer {
        return load_tokenizer(t).map(Some);
    }
    if Path::new(&a.model).exists() {
        return load_tokenizer(&a.model).map(Some);
    }
    Ok(None)
}

/// Runs the benchmark: every load point of the sweep, printing a result block for each and
/// saving JSON and CSV files unless `--no-save`.
pub async fn run_serve(a: &BenchServeArgs) -> Result<ServeOutput> {
    let plan = plan(a)?;
    if !a.no_save {
        std::fs::create_dir_all(&a.result_dir).map_err(|e| BenchError::io(&a.result_dir, e))?;
    }
    let tok = tokenizer_for(a)?;
    eprintln!(
        "Building {} prompts ({} dataset)...",
        a.num_prompts,
        a.dataset_name.as_str()
    );
    let requests = Arc::new(sample_requests(&plan.dataset, tok.as_ref())?);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| BenchError::Other(format!("HTTP client: {e}")))?;
    probe(&client, &a.base_url).await?;
    if a.num_warmups > 0 {
        eprintln!("Warming up with {} request(s)...", a.num_warmups);
        warm_up(&client, &plan.spec, &requests, a.num_warmups).await?;
    }
    let spec = Arc::new(plan.spec.clone());
    let mut out = ServeOutput {
        results: Vec::new(),
        files: Vec::new(),
    };
    let n_points = plan.points.len();
    for (pi, point) in plan.points.iter().enumerate() {
        let rate_word = if point.request_rate.is_finite() {
            trim_float(point.request_rate)
        } else {
            "inf".to_string()
        };
        let conc_word = point
            .max_concurrency
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into());
        let desc = format!("rate {rate_word}, concurrency {conc_word}");
        if n_points > 1 {
            println!("Sweep point {}/{n_points}: {desc}", pi + 1);
        }
        let pb = progress_bar(requests.len(), !a.no_progress, desc);
        let run = run_point(&client, &spec, &requests, point, &pb).await?;
        pb.finish_and_clear();
        let mut outcomes = run.outcomes;
        let lens = resolve_output_lens(&mut outcomes, tok.as_ref());
        let m = calculate_metrics(
            &outcomes,
            &lens,
            run.duration,
            &plan.goodput,
            &plan.percentiles,
        );
        let meta = RunMeta {
            label: plan.label.clone(),
            backend: plan.spec.endpoint.backend_name().to_string(),
            model_id: a.model.clone(),
            tokenizer_id: tok.as_ref().map(|t| t.id.clone()),
            num_prompts: requests.len(),
            request_rate: point.request_rate,
            burstiness: point.burstiness,
            max_concurrency: point.max_concurrency,
            base_url: a.base_url.clone(),
            endpoint: plan.spec.endpoint.path().to_string(),
            dataset_name: a.dataset_name.as_str().to_string(),
            percentiles: plan.percentiles.clone(),
            goodput: plan.goodput.to_map(),
            ignore_eos: a.ignore_eos,
            seed: a.seed,
            num_warmups: a.num_warmups,
        };
        let result = BenchResult::build(&meta, &m, &outcomes, a.save_detailed);
        print!(
            "{}",
            result_block(&result, &m, &error_summary(&result.errors))
        );
        if !a.no_save {
            let stem = match (&a.result_filename, n_points) {
                (Some(f), 1) => f.trim_end_matches(".json").to_string(),
                (Some(f), _) => {
                    format!("{}_r{rate_word}_c{conc_word}", f.trim_end_matches(".json"))
                }
                (None, _) => sanitize(&format!(
                    "{}_{}{}_r{rate_word}_c{conc_word}",
                    plan.label,
                    a.dataset_name.as_str(),
                    match plan.spec.endpoint {
                        Endpoint::Chat => "_chat",
                        Endpoint::Completions => "",
                    }
                )),
            };
            let json = a.result_dir.join(format!("{stem}.json"));
            let csv = a.result_dir.join(format!("{stem}.csv"));
            write_json(&json, &result)?;
            write_text(&csv, &requests_csv(&result))?;
            println!("Saved {} and {}", json.display(), csv.display());
            out.files.push(json);
            out.files.push(csv);
        }
        out.results.push(result);
    }
    if !a.no_save {
        let stem = a
            .result_filename
            .as_deref()
            .map(|f| f.trim_end_matches(".json").to_string())
            .unwrap_or_else(|| sanitize(&plan.label));
        let path = a.result_dir.join(format!("{stem}_summary.csv"));
        write_text(&path, &summary_csv(&out.results))?;
        println!("Saved {}", path.display());
        out.files.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parsing() {
        assert_eq!(
            parse_rates("1, 2.5,inf").unwrap(),
            vec![1.0, 2.5, f64::INFINITY]
        );
        for bad in ["0", "-1", "abc", "", "nan"] {
            let e = parse_rates(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid argument: --request-rate"),
                "{bad}: {e}"
            );
        }
        assert_eq!(parse_concurrency(None).unwrap(), vec![None]);
        assert_eq!(
            parse_concurrency(Some("1,4")).unwrap(),
            vec![Some(1), Some(4)]
        );
        assert!(parse_concurrency(Some("0")).is_err());
        assert_eq!(parse_percentiles("50,99.9").unwrap(), vec![50.0, 99.9]);
        assert!(parse_percentiles("101").is_err());
        assert_eq!(sanitize("127.0.0.1:8000_random"), "127.0.0.1-8000_random");
    }
}
