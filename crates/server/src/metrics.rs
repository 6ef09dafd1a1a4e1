//! `GET /metrics`: the engine's counters in the Prometheus text exposition format
//! (version 0.0.4): a `# HELP` and a `# TYPE` line per family, then its samples;
//! histograms as cumulative `_bucket{le=...}` samples ending at `le="+Inf"` (= `_count`),
//! then `_sum` and `_count`. Names are prefixed `sluice:` like vLLM's `vllm:`, and every
//! sample carries a `model_name` label.

use std::fmt::Write;

use sluice_engine::metrics::{EngineMetrics, Histogram};

/// Server-side numbers shown next to the engine's.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerStats {
    /// Requests holding an admission permit now.
    pub requests_in_flight: usize,
    /// Admission limit (`--max-pending`).
    pub max_pending: usize,
    /// Requests turned away with 429 since start.
    pub requests_rejected: u64,
}

/// Prometheus float syntax: `+Inf`, `-Inf`, `NaN`, otherwise Rust's shortest round-trip.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

struct Writer {
    out: String,
    labels: String,
}

impl Writer {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text escapes backslash and newline.
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name}{{{}}} {}", self.labels, num(v));
    }

    /// `name` ends in `_total` (the sample name equals the family name, as in vLLM).
    fn counter(&mut self, name: &str, help: &str, v: f64) {
        self.header(name, "counter", help);
        let _ = writeln!(self.out, "{name}{{{}}} {}", self.labels, num(v));
    }

    /// One family with a sample per speculative method (`method="..."` label).
    fn per_method(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        m: &EngineMetrics,
        f: fn(&sluice_engine::spec::SpecMethodStats) -> f64,
    ) {
        self.header(name, kind, help);
        for st in &m.spec {
            let _ = writeln!(
                self.out,
                "{name}{{{},method=\"{}\"}} {}",
                self.labels,
                escape_label(st.method),
                num(f(st))
            );
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, "histogram", help);
        for (bound, c) in h.bounds.iter().zip(h.cumulative()) {
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{},le=\"{}\"}} {c}",
                self.labels,
                num(*bound)
            );
        }
        let _ = writeln!(
            self.out,
            "{name}_bucket{{{},le=\"+Inf\"}} {}",
            self.labels, h.count
        );
        let _ = writeln!(self.out, "{name}_sum{{{}}} {}", self.labels, num(h.sum));
        let _ = writeln!(self.out, "{name}_count{{{}}} {}", self.labels, h.count);
    }
}

/// The whole exposition.
pub fn render(model_name: &str, m: &EngineMetrics, server: ServerStats) -> String {
    let mut w = Writer {
        out: String::with_capacity(8192),
        labels: format!("model_name=\"{}\"", escape_label(model_name)),
    };
    let s = &m.scheduler;
    let kv = &s.kv;
    w.gauge(
        "sluice:num_requests_running",
        "Sequences holding KV blocks and being stepped.",
        s.num_running as f64,
    );
    w.gauge(
        "sluice:num_requests_waiting",
        "Sequences queued for admission (new or preempted).",
        s.num_waiting as f64,
    );
    w.gauge(
        "sluice:kv_cache_blocks_total",
        "KV cache blocks in the pool.",
        kv.num_blocks as f64,
    );
    w.gauge(
        "sluice:kv_cache_blocks_used",
        "KV cache blocks owned by sequences (cached blocks with no owner count as free).",
        kv.num_blocks.saturating_sub(kv.num_free_blocks) as f64,
    );
    w.gauge(
        "sluice:kv_cache_blocks_cached",
        "KV cache blocks registered in the prefix cache.",
        kv.num_cached_blocks as f64,
    );
    w.gauge(
        "sluice:kv_cache_usage_perc",
        "Fraction of KV cache blocks in use (1 = full).",
        kv.usage,
    );
    w.gauge(
        "sluice:prefix_cache_hit_rate",
        "Prefix cache hits / queries, in tokens, since start.",
        kv.prefix_cache_hit_rate(),
    );
    w.counter(
        "sluice:prefix_cache_queries_total",
        "Prompt tokens looked up in the prefix cache.",
        kv.prefix_cache_queries as f64,
    );
    w.counter(
        "sluice:prefix_cache_hits_total",
        "Prompt tokens served from the prefix cache.",
        kv.prefix_cache_hits as f64,
    );
    w.counter(
        "sluice:num_preemptions_total",
        "Sequences preempted (KV blocks taken back, recomputed later).",
        s.num_preemptions as f64,
    );
    w.counter(
        "sluice:prompt_tokens_total",
        "Prompt tokens of finished requests.",
        m.prompt_tokens as f64,
    );
    w.counter(
        "sluice:generation_tokens_total",
        "Tokens generated.",
        m.generation_tokens as f64,
    );
    w.counter(
        "sluice:requests_received_total",
        "Sequences the engine accepted.",
        m.requests_received as f64,
    );
    w.counter(
        "sluice:requests_finished_total",
        "Sequences finished normally (stop or length).",
        m.requests_finished as f64,
    );
    w.counter(
        "sluice:requests_aborted_total",
        "Sequences aborted (client gone or cancelled).",
        m.requests_aborted as f64,
    );
    w.counter(
        "sluice:engine_steps_total",
        "Engine steps run.",
        m.steps as f64,
    );
    w.counter(
        "sluice:engine_step_seconds_total",
        "Time spent in engine steps (schedule + forward + sample).",
        m.step_seconds,
    );
    w.counter(
        "sluice:batched_tokens_total",
        "Tokens processed by forward passes (prompt chunks and decodes).",
        m.batched_tokens as f64,
    );
    if !m.spec.is_empty() {
        w.per_method(
            "sluice:spec_decode_num_drafts_total",
            "counter",
            "Verification steps of a sequence with at least one draft token.",
            m,
            |s| s.num_drafts as f64,
        );
        w.per_method(
            "sluice:spec_decode_num_draft_tokens_total",
            "counter",
            "Draft tokens verified by the target model.",
            m,
            |s| s.num_draft_tokens as f64,
        );
        w.per_method(
            "sluice:spec_decode_num_accepted_tokens_total",
            "counter",
            "Draft tokens accepted.",
            m,
            |s| s.num_accepted_tokens as f64,
        );
        w.per_method(
            "sluice:spec_decode_acceptance_rate",
            "gauge",
            "Accepted / verified draft tokens since start.",
            m,
            |s| s.acceptance_rate(),
        );
        w.per_method(
            "sluice:spec_decode_mean_accepted_length",
            "gauge",
            "Tokens emitted per verification step (1 + mean accepted drafts).",
            m,
            |s| s.mean_accepted_length(),
        );
    }
    w.histogram(
        "sluice:time_to_first_token_seconds",
        "Time from arrival at the engine to the first generated token.",
        &m.ttft,
    );
    w.histogram(
        "sluice:inter_token_latency_seconds",
        "Time between consecutive generated tokens of a sequence.",
        &m.itl,
    );
    w.histogram(
        "sluice:e2e_request_latency_seconds",
        "Time from arrival at the engine to the last token.",
        &m.e2e,
    );
    w.gauge(
        "sluice:http_requests_in_flight",
        "HTTP generation requests holding an admission permit.",
        server.requests_in_flight as f64,
    );
    w.gauge(
        "sluice:http_max_pending",
        "Admission limit on HTTP generation requests in flight.",
        server.max_pending as f64,
    );
    w.counter(
        "sluice:http_requests_rejected_total",
        "HTTP requests rejected with 429 because the server was at its admission limit.",
        server.requests_rejected as f64,
    );
    w.out
}

/// A small parser of the text format, strict enough to catch malformed output: every
/// sample belongs to a family announced by HELP and TYPE lines; values parse; histogram
/// buckets are cumulative and end at `+Inf` equal to `_count`. Returns
/// `(sample name with labels, value)` pairs.
pub fn parse_exposition(text: &str) -> Result<Vec<(String, f64)>, String> {
    use std::collections::HashMap;
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: std::collections::HashSet<String> = Default::default();
    let mut samples = Vec::new();
    // Per histogram: (last le, last cumulative count, +Inf count)
    let mut buckets: HashMap<String, (f64, f64, Option<f64>)> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !helped.insert(name.to_string()) {
                return Err(format!("line {ln}: second HELP for {name}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap_or_default();
            let kind = it.next().unwrap_or_default();
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("line {ln}: bad type {kind:?}"));
            }
            if !helped.contains(name) {
                return Err(format!("line {ln}: TYPE before HELP for {name}"));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(format!("line {ln}: second TYPE for {name}"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {ln}: no value: {line:?}"))?;
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            x => x
                .parse()
                .map_err(|_| format!("line {ln}: bad value {x:?}"))?,
        };
        let name = series.split('{').next().unwrap_or_default();
        let valid_name = name.chars().enumerate().all(|(k, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (k > 0 && c.is_ascii_digit())
        });
        if name.is_empty() || !valid_name {
            return Err(format!("line {ln}: bad metric name {name:?}"));
        }
        if series.contains('{') && !series.ends_with('}') {
            return Err(format!("line {ln}: unterminated labels"));
        }
        let family = if types.contains_key(name) {
            name.to_string()
        } else {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| name.strip_suffix(suf))
                .filter(|b| types.get(*b).map(String::as_str) == Some("histogram"))
                .ok_or_else(|| format!("line {ln}: sample {name} has no TYPE"))?;
            base.to_string()
        };
        if name.ends_with("_bucket") && types.get(&family).map(String::as_str) == Some("histogram")
        {
            let le = series
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .ok_or_else(|| format!("line {ln}: bucket without le"))?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()
                    .map_err(|_| format!("line {ln}: bad le {le:?}"))?
            };
            let e = buckets
                .entry(family.clone())
                .or_insert((f64::NEG_INFINITY, 0.0, None));
            if le <= e.0 {
                return Err(format!("line {ln}: le values of {family} not increasing"));
            }
            if v < e.1 {
                return Err(format!("line {ln}: buckets of {family} not cumulative"));
            }
            *e = (le, v, if le.is_infinite() { Some(v) } else { None });
        }
        if name.ends_with("_count") && types.get(&family).map(String::as_str) == Some("histogram") {
            match buckets.get(&family) {
                Some((_, _, Some(inf))) if *inf == v => {}
                _ => {
                    return Err(format!(
                        "line {ln}: {family}_count does not equal its +Inf bucket"
                    ))
                }
            }
        }
        samples.push((series.to_string(), v));
    }
    Ok(samples)
}

/// The value of the sample whose name (labels stripped) is `name`.
pub fn sample_value(samples: &[(String, f64)], name: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(s, _)| s.split('{').next() == Some(name))
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_well_formed_and_cumulative() {
        let mut m = EngineMetrics::default();
        for v in [0.0005, 0.003, 0.003, 0.2, 1.5, 90.0] {
            m.ttft.observe(v);
        }
        m.itl.observe(0.01);
        m.generation_tokens = 42;
        m.scheduler.kv.num_blocks = 100;
        m.scheduler.kv.num_free_blocks = 75;
        m.scheduler.kv.prefix_cache_queries = 10;
        m.scheduler.kv.prefix_cache_hits = 4;
        let text = render("my \"model\"\n", &m, ServerStats::default());
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            sample_value(&samples, "sluice:generation_tokens_total"),
            Some(42.0)
        );
        assert_eq!(
            sample_value(&samples, "sluice:kv_cache_blocks_used"),
            Some(25.0)
        );
        assert_eq!(
            sample_value(&samples, "sluice:prefix_cache_hit_rate"),
            Some(0.4)
        );
        assert_eq!(
            sample_value(&samples, "sluice:time_to_first_token_seconds_count"),
            Some(6.0)
        );
        // Label escaping.
        assert!(text.contains(r#"model_name="my \"model\"\n""#), "{text}");
        // Buckets: 0.001 holds 1, 0.005 holds 3 (cumulative), +Inf holds all 6 including 90 s.
        let bucket = |le: &str| {
            samples
                .iter()
                .find(|(s, _)| {
                    s.starts_with("sluice:time_to_first_token_seconds_bucket")
                        && s.contains(&format!("le=\"{le}\""))
                })
                .map(|(_, v)| *v)
        };
        assert_eq!(bucket("0.001"), Some(1.0));
        assert_eq!(bucket("0.005"), Some(3.0));
        assert_eq!(bucket("60"), Some(5.0));
        assert_eq!(bucket("+Inf"), Some(6.0));
        // Every family has exactly one HELP and TYPE.
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(types, helps);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn speculative_counters_are_exported_per_method() {
        let mut m = EngineMetrics::default();
        let text = render("m", &m, ServerStats::default());
        assert!(
            !text.contains("spec_decode"),
            "no families while speculation is off"
        );
        m.spec = vec![
            sluice_engine::spec::SpecMethodStats {
                method: "ngram",
                num_drafts: 10,
                num_draft_tokens: 40,
                num_accepted_tokens: 30,
                num_emitted_tokens: 40,
            },
            sluice_engine::spec::SpecMethodStats {
                method: "draft",
                ..Default::default()
            },
        ];
        let text = render("m", &m, ServerStats::default());
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let get = |name: &str, method: &str| {
            samples
                .iter()
                .find(|(s, _)| s.starts_with(name) && s.contains(&format!("method=\"{method}\"")))
                .map(|(_, v)| *v)
        };
        assert_eq!(
            get("sluice:spec_decode_num_draft_tokens_total", "ngram"),
            Some(40.0)
        );
        assert_eq!(
            get("sluice:spec_decode_acceptance_rate", "ngram"),
            Some(0.75)
        );
        assert_eq!(
            get("sluice:spec_decode_mean_accepted_length", "ngram"),
            Some(4.0)
        );
        assert_eq!(
            get("sluice:spec_decode_num_drafts_total", "draft"),
            Some(0.0)
        );
    }

    #[test]
    fn parser_rejects_malformed_text() {
        let ok = "# HELP a x\n# TYPE a gauge\na 1\n";
        assert!(parse_exposition(ok).is_ok());
        for bad in [
            "a 1\n",                                                     // no TYPE
            "# HELP a x\n# TYPE a gauge\na one\n",                       // bad value
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"2\"} 2\n", // not cumulative
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        ] {
            assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn floats_use_prometheus_spelling() {
        assert_eq!(num(f64::INFINITY), "+Inf");
        assert_eq!(num(f64::NEG_INFINITY), "-Inf");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(num(0.25), "0.25");
    }
}
