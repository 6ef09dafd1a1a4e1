//! From request outcomes to benchmark metrics, with vLLM's definitions
//! (`benchmark_serving.py::calculate_metrics`):
//!
//! - `completed`: successful requests; `failed`: the others (never dropped silently).
//! - `total_input_tokens`: dataset prompt lengths of successful requests (the server's
//!   `usage.prompt_tokens` when the dataset has none).
//! - output tokens per request: `usage.completion_tokens`, else the text re-tokenized.
//! - TPOT per request: `(latency - ttft) / (output_tokens - 1)` for outputs longer than one
//!   token; for goodput, a one-token output has TPOT 0.
//! - throughputs: totals / `duration` (first send to last completion).
//! - goodput: successful requests meeting every `--goodput` bound, per second.

use crate::client::RequestOutcome;
use crate::error::{BenchError, Result};
use crate::stats::Summary;
use crate::tokenizer::BenchTokenizer;
use std::collections::BTreeMap;

/// `--goodput ttft:MS tpot:MS e2el:MS` bounds, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SloBounds {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl SloBounds {
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }

    /// Parses `KEY:MS` items (`ttft`, `tpot`, `e2el`), given as separate words or joined
    /// with commas.
    pub fn parse<S: AsRef<str>>(items: &[S], flag: &str) -> Result<SloBounds> {
        let mut b = SloBounds::default();
        for item in items.iter().flat_map(|s| s.as_ref().split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (k, v) = item.split_once(':').ok_or_else(|| {
                BenchError::arg(format!("{flag}: expected KEY:MILLISECONDS, got {item:?}"))
            })?;
            let ms: f64 = v.trim().parse().map_err(|_| {
                BenchError::arg(format!("{flag}: {v:?} is not a number of milliseconds"))
            })?;
            if !ms.is_finite() || ms < 0.0 {
                return Err(BenchError::arg(format!(
                    "{flag}: {k} must be a non-negative number of milliseconds, got {v}"
                )));
            }
            match k.trim() {
                "ttft" => b.ttft_ms = Some(ms),
                "tpot" => b.tpot_ms = Some(ms),
                "e2el" => b.e2el_ms = Some(ms),
                other => {
                    return Err(BenchError::arg(format!(
                        "{flag}: unknown metric {other:?}; use ttft, tpot or e2el"
                    )))
                }
            }
        }
        Ok(b)
    }

    /// As a `{"ttft": ms, ...}` map for the result JSON.
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("ttft", self.ttft_ms),
            ("tpot", self.tpot_ms),
            ("e2el", self.e2el_ms),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
        m
    }

    /// Whether one request's times (seconds) satisfy every bound.
    pub fn met_by(&self, ttft: f64, tpot: f64, e2el: f64) -> bool {
        let ok = |bound: Option<f64>, v: f64| bound.is_none_or(|ms| v * 1000.0 <= ms);
        ok(self.ttft_ms, ttft) && ok(self.tpot_ms, tpot) && ok(self.e2el_ms, e2el)
    }
}

/// Everything the report prints and saves.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkMetrics {
    pub completed: usize,
    pub failed: usize,
    pub duration: f64,
    pub total_input: u64,
    pub total_output: u64,
    pub request_throughput: f64,
    /// `None` when no `--goodput` bounds were given.
    pub request_goodput: Option<f64>,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    /// Milliseconds.
    pub ttft: Summary,
    pub tpot: Summary,
    pub itl: Summary,
    pub e2el: Summary,
    /// Per request (failed: 0), in request order.
    pub input_lens: Vec<usize>,
    pub output_lens: Vec<usize>,
    /// Per request TPOT in seconds (0 for failed or one-token outputs).
    pub tpots: Vec<f64>,
    /// Highest number of generated tokens in any one-second window, and the most requests
    /// in flight at once (vLLM reports both).
    pub max_output_tokens_per_s: f64,
    pub max_concurrent_requests: usize,
}

/// Output tokens of a successful request: the server's count, else ours.
pub fn output_tokens(o: &RequestOutcome, tok: Option<&BenchTokenizer>) -> Result<usize, String> {
    if let Some(n) = o.usage_completion_tokens {
        return Ok(n as usize);
    }
    match tok {
        Some(t) => t.count(&o.generated_text).map_err(|e| e.to_string()),
        None => Err(
            "the server returned no usage and there is no --tokenizer to count the \
                     output tokens"
                .to_string(),
        ),
    }
}

/// Marks successful outcomes whose output tokens cannot be counted as failed (so nothing
/// is silently dropped), and returns the output token count of each request (0 if failed).
pub fn resolve_output_lens(
    outcomes: &mut [RequestOutcome],
    tok: Option<&BenchTokenizer>,
) -> Vec<usize> {
    outcomes
        .iter_mut()
        .map(|o| {
            if !o.success {
                return 0;
            }
            match output_tokens(o, tok) {
                Ok(n) => n,
                Err(e) => {
                    o.success = false;
                    o.error = e;
                    0
                }
            }
        })
        .collect()
}

pub fn calculate_metrics(
    outcomes: &[RequestOutcome],
    output_lens: &[usize],
    duration: f64,
    goodput: &SloBounds,
    percentiles: &[f64],
) -> BenchmarkMetrics {
    let mut completed = 0;
    let mut total_input = 0u64;
    let (mut ttfts, mut tpots, mut itls, mut e2els) = (vec![], vec![], vec![], vec![]);
    let mut all_tpots = vec![0.0; outcomes.len()];
    let mut input_lens = vec![0; outcomes.len()];
    let mut good = 0usize;
    for (i, o) in outcomes.iter().enumerate() {
        if !o.success {
            continue;
        }
        let out_len = output_lens[i];
        let in_len = o
            .prompt_len
            .or(o.usage_prompt_tokens.map(|n| n as usize))
            .unwrap_or(0);
        input_lens[i] = in_len;
        total_input += in_len as u64;
        let mut tpot = 0.0;
        if out_len > 1 {
            tpot = (o.latency - o.ttft) / (out_len - 1) as f64;
            tpots.push(tpot);
        }
        all_tpots[i] = tpot;
        itls.extend_from_slice(&o.itl);
        ttfts.push(o.ttft);
        e2els.push(o.latency);
        completed += 1;
        if goodput.met_by(o.ttft, tpot, o.latency) {
            good += 1;
        }
    }
    let total_output: u64 = output_lens.iter().map(|&n| n as u64).sum();
    let dur = if duration > 0.0 {
        duration
    } else {
        f64::MIN_POSITIVE
    };
    let ms = |v: &[f64]| Summary::of(v, percentiles).scaled(1000.0);
    BenchmarkMetrics {
        completed,
        failed: outcomes.len() - completed,
        duration,
        total_input,
        total_output,
        request_throughput: completed as f64 / dur,
        request_goodput: (!goodput.is_empty()).then(|| good as f64 / dur),
        output_throughput: total_output as f64 / dur,
        total_token_throughput: (total_input + total_output) as f64 / dur,
        ttft: ms(&ttfts),
        tpot: ms(&tpots),
        itl: ms(&itls),
        e2el: ms(&e2els),
        input_lens,
        output_lens: output_lens.to_vec(),
        tpots: all_tpots,
        max_output_tokens_per_s: peak_tokens_per_second(outcomes),
        max_concurrent_requests: peak_concurrency(outcomes),
    }
}

/// Token arrival times (seconds from run start) of successful requests, bucketed by whole
/// second; the fullest bucket. Each content chunk counts as one token (ITL granularity).
fn peak_tokens_per_second(outcomes: &[RequestOutcome]) -> f64 {
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.success && o.ttft > 0.0) {
        let mut t = o.start_time + o.ttft;
        *buckets.entry(t as u64).or_default() += 1;
        for gap in &o.itl {
            t += gap;
            *buckets.entry(t as u64).or_default() += 1;
        }
    }
    buckets.values().copied().max().unwrap_or(0) as f64
}

/// Most requests in flight at once (by send and finish times).
fn peak_concurrency(outcomes: &[RequestOutcome]) -> usize {
    let mut events: Vec<(f64, i32)> = outcomes
        .iter()
        .flat_map(|o| [(o.start_time, 1), (o.start_time + o.latency, -1)])
        .collect();
    // Ends sort before starts at the same instant.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut cur, mut peak) = (0i32, 0i32);
    for (_, d) in events {
        cur += d;
        peak = peak.max(cur);
    }
    peak.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(
        prompt: usize,
        out: u64,
        ttft: f64,
        itl: Vec<f64>,
        latency: f64,
        start: f64,
    ) -> RequestOutcome {
        RequestOutcome {
            success: true,
            prompt_len: Some(prompt),
            usage_completion_tokens: Some(out),
            ttft,
            itl,
            latency,
            start_time: start,
            ..Default::default()
        }
    }

    #[test]
    fn hand_computed_metrics() {
        let mut outs = vec![
            // 4 tokens: TPOT = (0.5 - 0.2) / 3 = 0.1
            ok(10, 4, 0.2, vec![0.1, 0.1, 0.1], 0.5, 0.0),
            // 1 token: no TPOT sample, TPOT 0 for goodput
            ok(20, 1, 0.3, vec![], 0.3, 0.5),
            // 3 tokens: TPOT = (1.0 - 0.4) / 2 = 0.3
            ok(30, 3, 0.4, vec![0.2, 0.4], 1.0, 1.0),
            RequestOutcome {
                error: "HTTP 500: boom".into(),
                prompt_len: Some(40),
                ..Default::default()
            },
        ];
        let lens = resolve_output_lens(&mut outs, None);
        assert_eq!(lens, vec![4, 1, 3, 0]);
        let slo = SloBounds::parse(&["ttft:350", "tpot:150"], "--goodput").unwrap();
        let m = calculate_metrics(&outs, &lens, 2.0, &slo, &[50.0, 99.0]);
        assert_eq!((m.completed, m.failed), (3, 1));
        assert_eq!(m.total_input, 60);
        assert_eq!(m.total_output, 8);
        assert!((m.request_throughput - 1.5).abs() < 1e-12);
        assert!((m.output_throughput - 4.0).abs() < 1e-12);
        assert!((m.total_token_throughput - 34.0).abs() < 1e-12);
        // Goodput: request 0 (ttft 200 <= 350, tpot 100 <= 150) and 1 (300, 0) pass;
        // request 2 fails ttft 400 > 350. 2 / 2 s.
        assert_eq!(m.request_goodput, Some(1.0));
        // TTFT ms [200, 300, 400]: mean 300, std sqrt(20000/3).
        assert!((m.ttft.mean - 300.0).abs() < 1e-9);
        assert!((m.ttft.std - (20000.0f64 / 3.0).sqrt()).abs() < 1e-9);
        // TPOT samples [100, 300] ms: p99 = 100 + 200*0.99 = 298.
        assert!((m.tpot.percentiles[1].1 - 298.0).abs() < 1e-9);
        // ITL [100,100,100,200,400] ms: median 100, mean 180.
        assert!((m.itl.median - 100.0).abs() < 1e-9);
        assert!((m.itl.mean - 180.0).abs() < 1e-9);
        assert!((m.e2el.median - 500.0).abs() < 1e-9);
        assert_eq!(m.input_lens, vec![10, 20, 30, 0]);
        assert!((m.tpots[0] - 0.1).abs() < 1e-12 && m.tpots[1] == 0.0);
        // In flight: [0,0.5] [0.5,0.8] [1.0,2.0] and the failed one at [0,0] -> peak 1.
        assert_eq!(m.max_concurrent_requests, 1);
        // Tokens at t = 0.2,0.3,0.4,0.5 | 0.8 | 1.4,1.6,2.0 -> bucket 0 has 5.
        assert_eq!(m.max_output_tokens_per_s, 5.0);
    }

    #[test]
    fn uncountable_outputs_become_failures() {
        let mut outs = vec![RequestOutcome {
            success: true,
            generated_text: "abc".into(),
            ..Default::default()
        }];
        let lens = resolve_output_lens(&mut outs, None);
        assert_eq!(lens, vec![0]);
        assert!(!outs[0].success);
        assert!(outs[0].error.contains("no usage"));
    }

    #[test]
    fn slo_parsing() {
        let b = SloBounds::parse(&["ttft:500,tpot:50", "e2el:2000"], "--slo").unwrap();
        assert_eq!(
            b,
            SloBounds {
                ttft_ms: Some(500.0),
                tpot_ms: Some(50.0),
                e2el_ms: Some(2000.0)
            }
        );
        for bad in ["ttft", "ttft:abc", "itl:5", "ttft:-1", "tpot:inf"] {
            let e = SloBounds::parse(&[bad], "--goodput")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("invalid argument: --goodput"), "{e}");
        }
        assert!(SloBounds::parse::<&str>(&[], "--goodput")
            .unwrap()
            .is_empty());
    }
}
