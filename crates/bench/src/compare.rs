//! `sluice bench compare`: a side-by-side table of several runs or servers, plots, and which
//! server meets an SLO at the highest load.
//!
//! A load point "meets" an SLO when, for each bounded metric, its p`--slo-percentile`
//! over *all* requests is within the bound; failed requests count as infinitely slow, so a
//! server cannot meet an SLO by failing the slow requests. A server's capacity under the
//! SLO is the highest achieved request throughput among its points that meet it.

use crate::error::{BenchError, Result};
use crate::metrics::SloBounds;
use crate::plot::{cdf_chart, save_bars, save_charts, LineChart, Series};
use crate::result::BenchResult;
use crate::stats::{percentile, percentile_word};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchCompareArgs {
    /// Result JSON files (from `sluice bench serve`, or vLLM's --save-result), or
    /// directories holding them.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// SLO for the recommendation, e.g. ttft:500,tpot:50 (milliseconds; e2el also allowed).
    #[arg(long)]
    pub slo: Option<String>,
    /// Which percentile of each metric must be within the SLO.
    #[arg(long, default_value_t = 90.0)]
    pub slo_percentile: f64,
    /// Where the plots go.
    #[arg(long, default_value = "bench-plots")]
    pub plot_dir: PathBuf,
    /// Print the table only.
    #[arg(long)]
    pub no_plots: bool,
}

#[derive(Debug, Clone)]
pub struct CompareOutput {
    pub table: String,
    /// Per-server SLO lines and the final `Recommendation:` line.
    pub slo_report: Option<String>,
    pub plots: Vec<PathBuf>,
}

/// Loads every result named (directories: all `*.json` inside that parse as results).
pub fn load_results(paths: &[PathBuf]) -> Result<Vec<BenchResult>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| BenchError::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().and_then(|e| e.to_str()) == Some("json"))
                .collect();
            files.sort();
            let before = out.len();
            for f in files {
                match BenchResult::load(&f) {
                    Ok(r) => out.push(r),
                    Err(e) => eprintln!("note: skipping {e}"),
                }
            }
            if out.len() == before {
                return Err(BenchError::arg(format!(
                    "no benchmark result JSON files in {}",
                    p.display()
                )));
            }
        } else if p.is_file() {
            out.push(BenchResult::load(p)?);
        } else {
            return Err(BenchError::arg(format!(
                "result file not found: {}",
                p.display()
            )));
        }
    }
    Ok(out)
}

/// Server labels in order of first appearance.
fn labels(results: &[BenchResult]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in results {
        if !v.contains(&r.label) {
            v.push(r.label.clone());
        }
    }
    v
}

/// Per-request values of one metric (seconds) of successful requests.
fn ok_values(r: &BenchResult, metric: &str) -> Vec<f64> {
    let times = r.request_times();
    match metric {
        "ttft" => times.iter().filter(|t| t.ok).map(|t| t.ttft).collect(),
        "e2el" => times.iter().filter(|t| t.ok).map(|t| t.e2el).collect(),
        "tpot" => times
            .iter()
            .enumerate()
            .filter(|(i, t)| t.ok && r.output_lens.get(*i).is_some_and(|&n| n > 1))
            .map(|(_, t)| t.tpot)
            .collect(),
        "itl" => r
            .itls
            .iter()
            .zip(times.iter())
            .filter(|(_, t)| t.ok)
            .flat_map(|(v, _)| v.iter().copied())
            .collect(),
        _ => Vec::new(),
    }
}

/// Percentile `p` of a metric in ms: from the per-request data when the file has it, else
/// from its saved statistics.
fn metric_ms(r: &BenchResult, metric: &str, p: f64) -> Option<f64> {
    let v = ok_values(r, metric);
    if !v.is_empty() {
        return Some(percentile(&v, p) * 1000.0);
    }
    let key = if p == 50.0 {
        format!("median_{metric}_ms")
    } else {
        format!("p{}_{metric}_ms", percentile_word(p))
    };
    r.stat(&key)
}

/// Percentile `p` over all requests (failed = infinitely slow), in ms, for SLO checks.
fn slo_metric_ms(r: &BenchResult, metric: &str, p: f64) -> f64 {
    let times = r.request_times();
    if times.is_empty() {
        // A file without per-request data: fall back to its statistic if nothing failed.
        return if r.failed == 0 {
            metric_ms(r, metric, p).unwrap_or(f64::INFINITY)
        } else {
            f64::INFINITY
        };
    }
    let v: Vec<f64> = times
        .iter()
        .map(|t| {
            if !t.ok {
                return f64::INFINITY;
            }
            match metric {
                "ttft" => t.ttft,
                "tpot" => t.tpot,
                _ => t.e2el,
            }
        })
        .collect();
    percentile(&v, p) * 1000.0
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// Results ordered by server, then by offered load (concurrency, then rate).
fn ordered(results: &[BenchResult]) -> Vec<&BenchResult> {
    let labels = labels(results);
    let mut v: Vec<&BenchResult> = results.iter().collect();
    v.sort_by(|a, b| {
        let la = labels.iter().position(|l| *l == a.label);
        let lb = labels.iter().position(|l| *l == b.label);
        la.cmp(&lb)
            .then(
                a.max_concurrency
                    .unwrap_or(usize::MAX)
                    .cmp(&b.max_concurrency.unwrap_or(usize::MAX)),
            )
            .then(a.request_rate.total_cmp(&b.request_rate))
    });
    v
}

/// The side-by-side table.
pub fn table(results: &[BenchResult]) -> String {
    let header = [
        "server",
        "load",
        "ok",
        "fail",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "ITL p99",
        "E2EL p50",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in ordered(results) {
        rows.push(vec![
            r.label.clone(),
            r.load_point(),
            r.completed.to_string(),
            r.failed.to_string(),
            format!("{:.2}", r.request_throughput),
            format!("{:.1}", r.output_throughput),
            fmt_opt(metric_ms(r, "ttft", 50.0), 1),
            fmt_opt(metric_ms(r, "ttft", 99.0), 1),
            fmt_opt(metric_ms(r, "tpot", 50.0), 2),
            fmt_opt(metric_ms(r, "tpot", 99.0), 2),
            fmt_opt(metric_ms(r, "itl", 99.0), 2),
            fmt_opt(metric_ms(r, "e2el", 50.0), 1),
        ]);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let fmt_row = |cells: Vec<String>, out: &mut String| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    };
    fmt_row(header.iter().map(|s| s.to_string()).collect(), &mut out);
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    let _ = writeln!(out, "{}", "-".repeat(total));
    for row in rows {
        fmt_row(row, &mut out);
    }
    let _ = writeln!(
        out,
        "(latencies in ms; TTFT/TPOT/ITL/E2EL percentiles over successful requests)"
    );
    out
}

/// Which bounds a point violates, as "p90 TTFT 812 ms > 500 ms" fragments.
fn violations(r: &BenchResult, slo: &SloBounds, p: f64) -> Vec<String> {
    let mut v = Vec::new();
    for (name, bound) in [
        ("ttft", slo.ttft_ms),
        ("tpot", slo.tpot_ms),
        ("e2el", slo.e2el_ms),
    ] {
        if let Some(b) = bound {
            let x = slo_metric_ms(r, name, p);
            // Written so that a NaN can never pass.
            if x.is_nan() || x > b {
                let what = format!("p{} {}", percentile_word(p), name.to_uppercase());
                v.push(if x.is_finite() {
                    format!("{what} {x:.1} ms > {} ms", crate::result::trim_float(b))
                } else {
                    format!("{what} lands on failed requests")
                });
            }
        }
    }
    v
}

/// The worst ratio value/bound over the bounded metrics (<= 1 means the point meets the SLO).
fn worst_ratio(r: &BenchResult, slo: &SloBounds, p: f64) -> f64 {
    [
        ("ttft", slo.ttft_ms),
        ("tpot", slo.tpot_ms),
        ("e2el", slo.e2el_ms),
    ]
    .iter()
    .filter_map(|(n, b)| b.map(|b| slo_metric_ms(r, n, p) / b.max(1e-9)))
    .fold(0.0, f64::max)
}

fn slo_text(slo: &SloBounds) -> String {
    let mut parts = Vec::new();
    for (n, b) in [
        ("TTFT", slo.ttft_ms),
        ("TPOT", slo.tpot_ms),
        ("E2EL", slo.e2el_ms),
    ] {
        if let Some(b) = b {
            parts.push(format!("{n} <= {} ms", crate::result::trim_float(b)));
        }
    }
    parts.join(", ")
}

/// Per-server capacity under the SLO, and the recommendation line. Returns the text and
/// each server's capacity (req/s; 0 when it never meets the SLO) in label order.
pub fn slo_report(
    results: &[BenchResult],
    slo: &SloBounds,
    p: f64,
) -> (String, Vec<(String, f64)>) {
    let mut out = String::new();
    let pw = percentile_word(p);
    let _ = writeln!(
        out,
        "SLO {} at p{pw} (failed requests count as misses):",
        slo_text(slo)
    );
    struct Cap<'a> {
        label: String,
        best: Option<&'a BenchResult>,
        /// The next heavier point, which fails the SLO, and why.
        broke_at: Option<(&'a BenchResult, Vec<String>)>,
        closest: Option<&'a BenchResult>,
    }
    let mut caps: Vec<Cap> = Vec::new();
    for label in labels(results) {
        let mut pts: Vec<&BenchResult> = results.iter().filter(|r| r.label == label).collect();
        pts.sort_by(|a, b| a.request_throughput.total_cmp(&b.request_throughput));
        let best = pts
            .iter()
            .copied()
            .filter(|r| violations(r, slo, p).is_empty())
            .max_by(|a, b| a.request_throughput.total_cmp(&b.request_throughput));
        let broke_at = best.and_then(|b| {
            pts.iter()
                .copied()
                .filter(|r| r.request_throughput > b.request_throughput)
                .map(|r| (r, violations(r, slo, p)))
                .find(|(_, v)| !v.is_empty())
        });
        let closest = pts
            .iter()
            .copied()
            .min_by(|a, b| worst_ratio(a, slo, p).total_cmp(&worst_ratio(b, slo, p)));
        caps.push(Cap {
            label,
            best,
            broke_at,
            closest,
        });
    }
    for c in &caps {
        match (c.best, c.closest) {
            (Some(b), _) => {
                let _ = write!(
                    out,
                    "  {}: meets it up to {:.2} req/s ({:.1} output tok/s) at {}",
                    c.label,
                    b.request_throughput,
                    b.output_throughput,
                    b.load_point()
                );
                match &c.broke_at {
                    Some((r, v)) => {
                        let _ = writeln!(out, "; at {} {}", r.load_point(), v.join(", "));
                    }
                    None => {
                        let _ = writeln!(out, " (its heaviest load measured)");
                    }
                }
            }
            (None, Some(r)) => {
                let _ = writeln!(
                    out,
                    "  {}: never meets it; at its best point ({}) {}",
                    c.label,
                    r.load_point(),
                    violations(r, slo, p).join(", ")
                );
            }
            (None, None) => {}
        }
    }
    let mut ranked: Vec<&Cap> = caps.iter().filter(|c| c.best.is_some()).collect();
    ranked.sort_by(|a, b| {
        let ta = a.best.map(|r| r.request_throughput).unwrap_or(0.0);
        let tb = b.best.map(|r| r.request_throughput).unwrap_or(0.0);
        tb.total_cmp(&ta)
    });
    let line = match ranked.as_slice() {
        [] => {
            let closest = caps
                .iter()
                .filter_map(|c| c.closest.map(|r| (c, r)))
                .min_by(|a, b| worst_ratio(a.1, slo, p).total_cmp(&worst_ratio(b.1, slo, p)));
            match closest {
                Some((c, r)) => format!(
                    "Recommendation: no server meets {} at p{pw}; {} comes closest ({} at {}).",
                    slo_text(slo),
                    c.label,
                    violations(r, slo, p).join(", "),
                    r.load_point()
                ),
                None => "Recommendation: no results to judge.".to_string(),
            }
        }
        [only] if caps.len() == 1 => format!(
            "Recommendation: {} meets {} at p{pw} up to {:.2} req/s.",
            only.label,
            slo_text(slo),
            only.best.map(|r| r.request_throughput).unwrap_or(0.0)
        ),
        [only] => format!(
            "Recommendation: {} - the only server that meets {} at p{pw} (up to {:.2} req/s).",
            only.label,
            slo_text(slo),
            only.best.map(|r| r.request_throughput).unwrap_or(0.0)
        ),
        [first, second, ..] => {
            let t1 = first.best.map(|r| r.request_throughput).unwrap_or(0.0);
            let t2 = second.best.map(|r| r.request_throughput).unwrap_or(0.0);
            let ratio = if t2 > 0.0 {
                format!("{:.2}x", t1 / t2)
            } else {
                "more than".into()
            };
            format!(
                "Recommendation: {} - it sustains {t1:.2} req/s within {} at p{pw}, {ratio} {} ({t2:.2} req/s).",
                first.label,
                slo_text(slo),
                second.label
            )
        }
    };
    let _ = writeln!(out, "{line}");
    let capacities = caps
        .iter()
        .map(|c| {
            (
                c.label.clone(),
                c.best.map(|r| r.request_throughput).unwrap_or(0.0),
            )
        })
        .collect();
    (out, capacities)
}

/// Draws every comparison plot into `dir`; returns the files written.
pub fn plots(
    results: &[BenchResult],
    dir: &Path,
    slo: Option<&SloBounds>,
    p: f64,
    capacities: &[(String, f64)],
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    let labels = labels(results);
    let color_of = |l: &str| labels.iter().position(|x| x == l).unwrap_or(0);
    let pw = percentile_word(p);
    let mut files = Vec::new();

    // Throughput vs latency: one curve per server through its load points.
    let curve = |metric: &str, x: &dyn Fn(&BenchResult) -> f64| -> Vec<Series> {
        labels
            .iter()
            .map(|l| {
                let mut pts: Vec<(f64, f64)> = results
                    .iter()
                    .filter(|r| &r.label == l)
                    .filter_map(|r| metric_ms(r, metric, p).map(|y| (x(r), y)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                // Latency curves cover successful requests; say so when some failed.
                let failed: usize = results
                    .iter()
                    .filter(|r| &r.label == l)
                    .map(|r| r.failed)
                    .sum();
                let total: usize = results
                    .iter()
                    .filter(|r| &r.label == l)
                    .map(|r| r.num_requests())
                    .sum();
                Series {
                    name: if failed > 0 {
                        format!("{l} ({failed}/{total} requests failed)")
                    } else {
                        l.clone()
                    },
                    color: color_of(l),
                    points: pts,
                }
            })
            .collect()
    };
    let ttft_chart = LineChart {
        title: format!("p{pw} TTFT vs request throughput"),
        x_label: "request throughput (req/s)".into(),
        y_label: format!("p{pw} TTFT (ms)"),
        series: curve("ttft", &|r| r.request_throughput),
        h_line: slo
            .and_then(|s| s.ttft_ms)
            .map(|b| (b, format!("SLO {b} ms"))),
        markers: true,
        legend_lower_right: false,
    };
    let tpot_chart = LineChart {
        title: format!("p{pw} TPOT vs output throughput"),
        x_label: "output throughput (tok/s)".into(),
        y_label: format!("p{pw} TPOT (ms)"),
        series: curve("tpot", &|r| r.output_throughput),
        h_line: slo
            .and_then(|s| s.tpot_ms)
            .map(|b| (b, format!("SLO {b} ms"))),
        markers: true,
        legend_lower_right: false,
    };
    files.extend(save_charts(
        dir,
        "throughput_latency",
        &[ttft_chart, tpot_chart],
    )?);

    // Distributions: one CDF per run.
    let runs = ordered(results);
    let samples = |metric: &str| -> Vec<(String, usize, Vec<f64>)> {
        runs.iter()
            .map(|r| {
                let v = ok_values(r, metric).iter().map(|x| x * 1000.0).collect();
                (
                    format!("{} ({})", r.label, r.load_point()),
                    color_of(&r.label),
                    v,
                )
            })
            .collect()
    };
    files.extend(save_charts(
        dir,
        "ttft_cdf",
        &[cdf_chart(
            "TTFT distribution",
            "TTFT (ms)",
            &samples("ttft"),
        )],
    )?);
    files.extend(save_charts(
        dir,
        "tpot_cdf",
        &[cdf_chart(
            "TPOT distribution",
            "TPOT (ms)",
            &samples("tpot"),
        )],
    )?);

    if let Some(s) = slo {
        let bars: Vec<(String, usize, f64)> = capacities
            .iter()
            .map(|(l, c)| (l.clone(), color_of(l), *c))
            .collect();
        files.extend(save_bars(
            dir,
            "slo_capacity",
            &format!("Highest load within {} (p{pw})", slo_text(s)),
            "request throughput (req/s)",
            &bars,
        )?);
    }
    Ok(files)
}

/// Runs `compare`: prints the table, the SLO report and the plot paths.
pub fn run_compare(a: &BenchCompareArgs) -> Result<CompareOutput> {
    if !(a.slo_percentile > 0.0 && a.slo_percentile <= 100.0) {
        return Err(BenchError::arg(format!(
            "--slo-percentile must be in (0, 100], got {}",
            a.slo_percentile
        )));
    }
    let slo = match &a.slo {
        Some(s) => {
            let b = SloBounds::parse(&[s], "--slo")?;
            if b.is_empty() {
                return Err(BenchError::arg(
                    "--slo needs at least one of ttft:MS, tpot:MS, e2el:MS",
                ));
            }
            Some(b)
        }
        None => None,
    };
    let results = load_results(&a.results)?;
    let table = table(&results);
    print!("{table}");
    let (slo_report, capacities) = match &slo {
        Some(s) => {
            let (text, caps) = slo_report(&results, s, a.slo_percentile);
            print!("\n{text}");
            (Some(text), caps)
        }
        None => (None, Vec::new()),
    };
    let plots = if a.no_plots {
        Vec::new()
    } else {
        let files = plots(
            &results,
            &a.plot_dir,
            slo.as_ref(),
            a.slo_percentile,
            &capacities,
        )?;
        println!("\nPlots:");
        for f in &files {
            println!("  {}", f.display());
        }
        files
    };
    Ok(CompareOutput {
        table,
        slo_report,
        plots,
    })
}
