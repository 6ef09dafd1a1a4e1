//! The saved result of one benchmark run. Field names follow vLLM's
//! `benchmark_serving.py --save-result` JSON wherever the metric is the same, so results
//! of both tools can be compared side by side (`sluice bench compare` reads vLLM's files
//! too). Fields vLLM does not have are marked "sluice extra".

use crate::client::RequestOutcome;
use crate::error::{BenchError, Result};
use crate::metrics::BenchmarkMetrics;
use crate::stats::{percentile_word, Summary};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The metrics with a mean/median/std/percentile block, as named in keys.
pub const METRICS: [&str; 4] = ["ttft", "tpot", "itl", "e2el"];

/// What was run (everything but the measurements).
#[derive(Debug, Clone, Default)]
pub struct RunMeta {
    pub label: String,
    /// vLLM's `backend`: `openai` or `openai-chat`.
    pub backend: String,
    pub model_id: String,
    pub tokenizer_id: Option<String>,
    pub num_prompts: usize,
    pub request_rate: f64,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub base_url: String,
    pub endpoint: String,
    pub dataset_name: String,
    pub percentiles: Vec<f64>,
    pub goodput: BTreeMap<String, f64>,
    pub ignore_eos: bool,
    pub seed: u64,
    pub num_warmups: usize,
}

/// `request_rate` is a number, or the string "inf" for unpaced runs (as vLLM writes it).
mod rate_serde {
    use super::*;
    pub fn serialize<S: Serializer>(r: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
        if r.is_finite() {
            s.serialize_f64(*r)
        } else {
            s.serialize_str("inf")
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::INFINITY)),
            Value::String(s) if s == "inf" => Ok(f64::INFINITY),
            Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            Value::Null => Ok(f64::INFINITY),
            other => Err(serde::de::Error::custom(format!(
                "bad request_rate {other}"
            ))),
        }
    }
}

fn inf() -> f64 {
    f64::INFINITY
}
fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub backend: String,
    /// sluice extra: the name this server is shown under in `compare`.
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub model_id: String,
    #[serde(default)]
    pub tokenizer_id: Option<String>,
    #[serde(default)]
    pub num_prompts: usize,
    #[serde(default = "inf", with = "rate_serde")]
    pub request_rate: f64,
    #[serde(default = "one")]
    pub burstiness: f64,
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    pub duration: f64,
    pub completed: usize,
    /// sluice extra.
    #[serde(default)]
    pub failed: usize,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub request_throughput: f64,
    #[serde(default)]
    pub request_goodput: Option<f64>,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    #[serde(default)]
    pub max_output_tokens_per_s: f64,
    #[serde(default)]
    pub max_concurrent_requests: usize,
    /// `mean_ttft_ms`, `median_ttft_ms`, `std_ttft_ms`, `p99_ttft_ms`, ... for ttft, tpot,
    /// itl and e2el; and any other key a result file has that this type does not name.
    #[serde(flatten)]
    pub stats: BTreeMap<String, Value>,
    #[serde(default)]
    pub input_lens: Vec<usize>,
    #[serde(default)]
    pub output_lens: Vec<usize>,
    /// Seconds, per request (0 for failed ones).
    #[serde(default)]
    pub ttfts: Vec<f64>,
    #[serde(default)]
    pub itls: Vec<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated_texts: Vec<String>,
    /// "" for successful requests.
    #[serde(default)]
    pub errors: Vec<String>,
    /// sluice extra: per-request end-to-end latency, seconds.
    #[serde(default)]
    pub e2els: Vec<f64>,
    /// sluice extra: per-request TPOT, seconds (0 for failed and one-token outputs).
    #[serde(default)]
    pub tpots: Vec<f64>,
    /// sluice extra: the server's `usage.prompt_tokens` per request.
    #[serde(default)]
    pub server_prompt_lens: Vec<Option<u64>>,
    /// sluice extra: the server's `usage.completion_tokens` per request.
    #[serde(default)]
    pub server_output_lens: Vec<Option<u64>>,
    /// sluice extra: send time of each request, seconds from the run start.
    #[serde(default)]
    pub start_times: Vec<f64>,
    /// sluice extras describing the run.
    #[serde(default)]
    pub base_url: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub dataset_name: String,
    #[serde(default)]
    pub percentiles: Vec<f64>,
    #[serde(default)]
    pub goodput_config: BTreeMap<String, f64>,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub num_warmups: usize,
    #[serde(default)]
    pub tool: String,
}

/// One request's times as `compare` needs them, whatever tool wrote the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestTimes {
    pub ok: bool,
    pub ttft: f64,
    pub tpot: f64,
    pub e2el: f64,
}

impl BenchResult {
    pub fn build(
        meta: &RunMeta,
        m: &BenchmarkMetrics,
        outcomes: &[RequestOutcome],
        save_texts: bool,
    ) -> BenchResult {
        let mut stats = BTreeMap::new();
        for (name, s) in METRICS.iter().zip([&m.ttft, &m.tpot, &m.itl, &m.e2el]) {
            for (key, v) in stat_entries(name, s) {
                stats.insert(key, Value::from(v));
            }
        }
        BenchResult {
            date: now_string(),
            backend: meta.backend.clone(),
            label: meta.label.clone(),
            model_id: meta.model_id.clone(),
            tokenizer_id: meta.tokenizer_id.clone(),
            num_prompts: meta.num_prompts,
            request_rate: meta.request_rate,
            burstiness: meta.burstiness,
            max_concurrency: meta.max_concurrency,
            duration: m.duration,
            completed: m.completed,
            failed: m.failed,
            total_input_tokens: m.total_input,
            total_output_tokens: m.total_output,
            request_throughput: m.request_throughput,
            request_goodput: m.request_goodput,
            output_throughput: m.output_throughput,
            total_token_throughput: m.total_token_throughput,
            max_output_tokens_per_s: m.max_output_tokens_per_s,
            max_concurrent_requests: m.max_concurrent_requests,
            stats,
            input_lens: m.input_lens.clone(),
            output_lens: m.output_lens.clone(),
            ttfts: outcomes
                .iter()
                .map(|o| if o.success { o.ttft } else { 0.0 })
                .collect(),
            itls: outcomes.iter().map(|o| o.itl.clone()).collect(),
            generated_texts: if save_texts {
                outcomes.iter().map(|o| o.generated_text.clone()).collect()
            } else {
                Vec::new()
            },
            errors: outcomes.iter().map(|o| o.error.clone()).collect(),
            e2els: outcomes.iter().map(|o| o.latency).collect(),
            tpots: m.tpots.clone(),
            server_prompt_lens: outcomes.iter().map(|o| o.usage_prompt_tokens).collect(),
            server_output_lens: outcomes.iter().map(|o| o.usage_completion_tokens).collect(),
            start_times: outcomes.iter().map(|o| o.start_time).collect(),
            base_url: meta.base_url.clone(),
            endpoint: meta.endpoint.clone(),
            dataset_name: meta.dataset_name.clone(),
            percentiles: meta.percentiles.clone(),
            goodput_config: meta.goodput.clone(),
            ignore_eos: meta.ignore_eos,
            seed: meta.seed,
            num_warmups: meta.num_warmups,
            tool: concat!("sluice-bench ", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    pub fn load(path: &Path) -> Result<BenchResult> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
        let mut r: BenchResult =
            serde_json::from_str(&text).map_err(|e| BenchError::BadResult {
                path: path.to_path_buf(),
                reason: format!("not a benchmark result JSON: {e}"),
            })?;
        if r.label.is_empty() {
            r.label = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| r.backend.clone());
        }
        Ok(r)
    }

    /// A `mean_ttft_ms`-style statistic.
    pub fn stat(&self, key: &str) -> Option<f64> {
        self.stats.get(key).and_then(Value::as_f64)
    }

    /// Number of requests in the run (successful and failed).
    pub fn num_requests(&self) -> usize {
        self.ttfts.len().max(self.completed + self.failed)
    }

    /// Per-request times. vLLM files have no `e2els`/`tpots`: they are rebuilt from the
    /// streamed gaps (`e2el = ttft + sum(itl)`, `tpot = sum(itl) / (output_len - 1)`).
    pub fn request_times(&self) -> Vec<RequestTimes> {
        let n = self.ttfts.len();
        (0..n)
            .map(|i| {
                let ok = self.errors.get(i).is_none_or(|e| e.is_empty());
                let ttft = self.ttfts[i];
                let gaps: f64 = self.itls.get(i).map(|v| v.iter().sum()).unwrap_or(0.0);
                let e2el = self.e2els.get(i).copied().unwrap_or(ttft + gaps);
                let out = self.output_lens.get(i).copied().unwrap_or(0);
                let tpot = self.tpots.get(i).copied().unwrap_or(if out > 1 {
                    (e2el - ttft) / (out - 1) as f64
                } else {
                    0.0
                });
                RequestTimes {
                    ok,
                    ttft,
                    tpot,
                    e2el,
                }
            })
            .collect()
    }

    /// A short description of the load point: "rate 4 req/s, concurrency 16".
    pub fn load_point(&self) -> String {
        let rate = if self.request_rate.is_finite() {
            format!("rate {}", trim_float(self.request_rate))
        } else {
            "rate inf".to_string()
        };
        match self.max_concurrency {
            Some(c) => format!("{rate}, conc {c}"),
            None => rate,
        }
    }
}

/// `1.0` -> "1", `2.5` -> "2.5".
pub fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// `(key, value)` for mean/median/std/pN of one metric, in vLLM's key names.
pub fn stat_entries(metric: &str, s: &Summary) -> Vec<(String, f64)> {
    let mut v = vec![
        (format!("mean_{metric}_ms"), s.mean),
        (format!("median_{metric}_ms"), s.median),
        (format!("std_{metric}_ms"), s.std),
    ];
    for (p, val) in &s.percentiles {
        v.push((format!("p{}_{metric}_ms", percentile_word(*p)), *val));
    }
    v
}

/// Local-agnostic UTC timestamp in vLLM's `%Y%m%d-%H%M%S` format.
pub fn now_string() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Seconds since the Unix epoch -> `YYYYMMDD-HHMMSS` (UTC), by Howard Hinnant's
/// `civil_from_days` algorithm.
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "19700101-000000");
        // 2000-02-29 12:34:56 UTC
        assert_eq!(format_utc(951_827_696), "20000229-123456");
        // 2024-12-31 23:59:59 UTC
        assert_eq!(format_utc(1_735_689_599), "20241231-235959");
    }

    #[test]
    fn reads_a_vllm_result() {
        // Shaped like vLLM's --save-result output (no sluice extras).
        let text = r#"{"date": "20250101-000000", "backend": "vllm", "model_id": "m",
            "tokenizer_id": "m", "num_prompts": 2, "request_rate": "inf", "burstiness": 1.0,
            "max_concurrency": null, "duration": 2.0, "completed": 2,
            "total_input_tokens": 20, "total_output_tokens": 5, "request_throughput": 1.0,
            "request_goodput": null, "output_throughput": 2.5, "total_token_throughput": 12.5,
            "input_lens": [10, 10], "output_lens": [3, 2], "ttfts": [0.1, 0.2],
            "itls": [[0.05, 0.05], [0.3]], "generated_texts": ["a", "b"], "errors": ["", ""],
            "mean_ttft_ms": 150.0, "median_ttft_ms": 150.0, "std_ttft_ms": 50.0,
            "p99_ttft_ms": 199.0}"#;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vllm-run.json");
        std::fs::write(&p, text).unwrap();
        let r = BenchResult::load(&p).unwrap();
        assert!(r.request_rate.is_infinite());
        assert_eq!(r.label, "vllm-run");
        assert_eq!(r.stat("p99_ttft_ms"), Some(199.0));
        let t = r.request_times();
        assert!((t[0].e2el - 0.2).abs() < 1e-12);
        assert!((t[0].tpot - 0.05).abs() < 1e-12);
        assert!((t[1].tpot - 0.3).abs() < 1e-12);
        assert_eq!(r.load_point(), "rate inf");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"x\": 1}").unwrap();
        let e = BenchResult::load(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.json") && e.contains("not a benchmark result"),
            "{e}"
        );
    }
}
