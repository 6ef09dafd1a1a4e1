//! Printing and saving results: vLLM's result block, the JSON file, CSV files.

use crate::error::{BenchError, Result};
use crate::metrics::BenchmarkMetrics;
use crate::result::{stat_entries, trim_float, BenchResult, METRICS};
use crate::stats::{percentile_word, Summary};
use std::fmt::Write as _;
use std::path::Path;

/// vLLM's `"{s:{c}^{n}}".format(...)`: `s` centred in `n` columns of `c`.
fn centred(s: &str, c: char, n: usize) -> String {
    let len = s.chars().count();
    if len >= n {
        return s.to_string();
    }
    let left = (n - len) / 2;
    let right = n - len - left;
    format!(
        "{}{s}{}",
        c.to_string().repeat(left),
        c.to_string().repeat(right)
    )
}

/// `"{:<40} {:<10}"` lines.
fn line(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name:<40} {value:<10}");
}

fn fline(out: &mut String, name: &str, value: f64) {
    line(out, name, format!("{value:.2}"));
}

/// The result block, as vLLM prints it (plus `Failed requests`, std lines and the error
/// summary, which vLLM lacks).
pub fn result_block(r: &BenchResult, m: &BenchmarkMetrics, errors: &[(String, usize)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", centred(" Serving Benchmark Result ", '=', 50));
    line(&mut out, "Successful requests:", m.completed);
    line(&mut out, "Failed requests:", m.failed);
    if let Some(c) = r.max_concurrency {
        line(&mut out, "Maximum request concurrency:", c);
    }
    if r.request_rate.is_finite() {
        fline(&mut out, "Request rate configured (RPS):", r.request_rate);
    }
    fline(&mut out, "Benchmark duration (s):", m.duration);
    line(&mut out, "Total input tokens:", m.total_input);
    line(&mut out, "Total generated tokens:", m.total_output);
    fline(
        &mut out,
        "Request throughput (req/s):",
        m.request_throughput,
    );
    if let Some(g) = m.request_goodput {
        fline(&mut out, "Request goodput (req/s):", g);
    }
    fline(
        &mut out,
        "Output token throughput (tok/s):",
        m.output_throughput,
    );
    fline(
        &mut out,
        "Peak output token throughput (tok/s):",
        m.max_output_tokens_per_s,
    );
    line(
        &mut out,
        "Peak concurrent requests:",
        m.max_concurrent_requests,
    );
    fline(
        &mut out,
        "Total Token throughput (tok/s):",
        m.total_token_throughput,
    );
    let blocks = [
        ("TTFT", "Time to First Token", &m.ttft),
        ("TPOT", "Time per Output Token (excl. 1st token)", &m.tpot),
        ("ITL", "Inter-token Latency", &m.itl),
        ("E2EL", "End-to-end Latency", &m.e2el),
    ];
    for (name, header, s) in blocks {
        metric_lines(&mut out, name, header, s);
    }
    let _ = writeln!(out, "{}", "=".repeat(50));
    if !errors.is_empty() {
        let _ = writeln!(out, "Errors ({} failed requests):", m.failed);
        for (msg, n) in errors {
            let _ = writeln!(out, "  {n:>5} x {msg}");
        }
    }
    out
}

fn metric_lines(out: &mut String, name: &str, header: &str, s: &Summary) {
    let _ = writeln!(out, "{}", centred(header, '-', 50));
    fline(out, &format!("Mean {name} (ms):"), s.mean);
    fline(out, &format!("Median {name} (ms):"), s.median);
    fline(out, &format!("Std {name} (ms):"), s.std);
    for (p, v) in &s.percentiles {
        fline(out, &format!("P{} {name} (ms):", percentile_word(*p)), *v);
    }
}

/// Groups failed requests' errors; numbers that vary between occurrences of the same
/// failure ("after 12 chunks") are replaced by `N`, HTTP statuses are kept.
pub fn error_summary(errors: &[String]) -> Vec<(String, usize)> {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for e in errors.iter().filter(|e| !e.is_empty()) {
        let mut words = Vec::new();
        let mut prev = "";
        for w in e.split(' ') {
            let is_num = !w.is_empty() && w.chars().all(|c| c.is_ascii_digit());
            words.push(if is_num && prev != "HTTP" { "N" } else { w });
            prev = w;
        }
        let key = words.join(" ");
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some(g) => g.1 += 1,
            None => groups.push((key, 1)),
        }
    }
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    groups
}

pub fn write_json(path: &Path, r: &BenchResult) -> Result<()> {
    let text = serde_json::to_string_pretty(r)
        .map_err(|e| BenchError::Other(format!("serializing the result: {e}")))?;
    std::fs::write(path, text).map_err(|e| BenchError::io(path, e))
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// One row per request.
pub fn requests_csv(r: &BenchResult) -> String {
    let mut out = String::from(
        "request,success,start_s,prompt_tokens,server_prompt_tokens,output_tokens,\
         server_output_tokens,ttft_ms,tpot_ms,mean_itl_ms,e2el_ms,error\n",
    );
    let times = r.request_times();
    for (i, t) in times.iter().enumerate() {
        let itl = r
            .itls
            .get(i)
            .map(|v| crate::stats::mean(v) * 1000.0)
            .unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{i},{},{:.6},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{}",
            t.ok,
            r.start_times.get(i).copied().unwrap_or(0.0),
            r.input_lens.get(i).copied().unwrap_or(0),
            opt(r.server_prompt_lens.get(i).copied().flatten()),
            r.output_lens.get(i).copied().unwrap_or(0),
            opt(r.server_output_lens.get(i).copied().flatten()),
            t.ttft * 1000.0,
            t.tpot * 1000.0,
            itl,
            t.e2el * 1000.0,
            csv_field(r.errors.get(i).map(String::as_str).unwrap_or("")),
        );
    }
    out
}

/// One row per run (a sweep's points), the headline numbers and every statistic.
pub fn summary_csv(results: &[BenchResult]) -> String {
    let mut stat_keys: Vec<String> = Vec::new();
    for r in results {
        for m in METRICS {
            let s = Summary {
                mean: 0.0,
                median: 0.0,
                std: 0.0,
                percentiles: r.percentiles.iter().map(|&p| (p, 0.0)).collect(),
            };
            for (k, _) in stat_entries(m, &s) {
                if !stat_keys.contains(&k) {
                    stat_keys.push(k);
                }
            }
        }
    }
    let mut out = String::from(
        "label,endpoint,dataset,request_rate,max_concurrency,num_prompts,completed,failed,\
         duration,total_input_tokens,total_output_tokens,request_throughput,request_goodput,\
         output_throughput,total_token_throughput",
    );
    for k in &stat_keys {
        out.push(',');
        out.push_str(k);
    }
    out.push('\n');
    for r in results {
        let rate = if r.request_rate.is_finite() {
            trim_float(r.request_rate)
        } else {
            "inf".into()
        };
        let _ = write!(
            out,
            "{},{},{},{rate},{},{},{},{},{:.4},{},{},{:.4},{},{:.4},{:.4}",
            csv_field(&r.label),
            csv_field(&r.endpoint),
            csv_field(&r.dataset_name),
            opt(r.max_concurrency),
            r.num_prompts,
            r.completed,
            r.failed,
            r.duration,
            r.total_input_tokens,
            r.total_output_tokens,
            r.request_throughput,
            opt(r.request_goodput.map(|g| format!("{g:.4}"))),
            r.output_throughput,
            r.total_token_throughput,
        );
        for k in &stat_keys {
            let _ = write!(out, ",{}", opt(r.stat(k).map(|v| format!("{v:.4}"))));
        }
        out.push('\n');
    }
    out
}

pub fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| BenchError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centring_like_python_format() {
        // Python: "{s:{c}^{n}}".format(s=' Serving Benchmark Result ', n=50, c='=')
        assert_eq!(
            centred(" Serving Benchmark Result ", '=', 50),
            "============ Serving Benchmark Result ============"
        );
        // Odd padding goes right in Python's centring.
        assert_eq!(centred("ab", '-', 5), "-ab--");
    }

    #[test]
    fn errors_grouped() {
        let errs = vec![
            "".to_string(),
            "HTTP 500: boom".into(),
            "connection lost mid-stream after 3 chunks: x".into(),
            "HTTP 500: boom".into(),
            "connection lost mid-stream after 7 chunks: x".into(),
            "HTTP 503: busy".into(),
        ];
        let g = error_summary(&errs);
        assert_eq!(
            g,
            vec![
                ("HTTP 500: boom".to_string(), 2),
                (
                    "connection lost mid-stream after N chunks: x".to_string(),
                    2
                ),
                ("HTTP 503: busy".to_string(), 1),
            ]
        );
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
