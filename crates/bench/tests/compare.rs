//! `compare` on synthetic results with known answers: which server meets an SLO at the
//! highest load, and that failures count against a server.

use serde_json::json;
use sluice_bench::{run_compare, BenchCompareArgs};
use std::path::Path;

/// A result at load `x` req/s where every request has TTFT = f*x*10 ms and TPOT = f*x*2 ms;
/// `fail_every` > 0 makes every n-th request a failure.
fn write_result(dir: &Path, label: &str, f: f64, x: f64, fail_every: usize) {
    let n = 20;
    let out_len = 11usize;
    let (mut ttfts, mut itls, mut e2els, mut tpots, mut errors, mut outs) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut failed = 0;
    for i in 0..n {
        if fail_every > 0 && i % fail_every == 0 {
            failed += 1;
            ttfts.push(0.0);
            itls.push(vec![]);
            e2els.push(0.0);
            tpots.push(0.0);
            errors.push("HTTP 500: boom".to_string());
            outs.push(0);
            continue;
        }
        let ttft = f * x * 0.010;
        let tpot = f * x * 0.002;
        ttfts.push(ttft);
        itls.push(vec![tpot; out_len - 1]);
        e2els.push(ttft + tpot * (out_len - 1) as f64);
        tpots.push(tpot);
        errors.push(String::new());
        outs.push(out_len);
    }
    let v = json!({
        "label": label, "backend": "openai", "model_id": "m", "num_prompts": n,
        "request_rate": x, "burstiness": 1.0, "max_concurrency": null, "duration": n as f64 / x,
        "completed": n - failed, "failed": failed, "total_input_tokens": 100,
        "total_output_tokens": (n - failed) * out_len, "request_throughput": x,
        "request_goodput": null, "output_throughput": x * out_len as f64,
        "total_token_throughput": x * 20.0, "input_lens": vec![5; n], "output_lens": outs,
        "ttfts": ttfts, "itls": itls, "errors": errors, "e2els": e2els, "tpots": tpots,
    });
    let p = dir.join(format!("{label}_r{x}.json"));
    std::fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn recommends_the_server_with_the_highest_load_within_the_slo() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("res");
    std::fs::create_dir(&res).unwrap();
    for x in [2.0, 4.0, 8.0, 16.0] {
        write_result(&res, "fast", 1.0, x, 0);
        write_result(&res, "slow", 3.0, x, 0);
        // Fastest of all when it answers, but 1 in 5 requests fails: p90 over all requests
        // is a failure, so it never meets the SLO.
        write_result(&res, "flaky", 0.5, x, 5);
    }
    // A file that is not a result is skipped inside a directory.
    std::fs::write(res.join("notes.json"), "{\"hello\": 1}").unwrap();
    let args = BenchCompareArgs {
        results: vec![res.clone()],
        slo: Some("ttft:100,tpot:20".into()),
        slo_percentile: 90.0,
        plot_dir: dir.path().join("plots"),
        no_plots: false,
    };
    let out = run_compare(&args).unwrap();
    // One row per result, grouped by server.
    for label in ["fast", "slow", "flaky"] {
        assert_eq!(
            out.table.lines().filter(|l| l.starts_with(label)).count(),
            4,
            "{}",
            out.table
        );
    }
    let fast_8 = out
        .table
        .lines()
        .find(|l| l.starts_with("fast") && l.contains("rate 8"))
        .unwrap();
    // TTFT p50 80 ms, TPOT p50 16 ms.
    assert!(
        fast_8.contains("80.0") && fast_8.contains("16.00"),
        "{fast_8}"
    );
    let slo = out.slo_report.unwrap();
    println!("{slo}");
    assert!(slo.contains("fast: meets it up to 8.00 req/s"), "{slo}");
    assert!(
        slo.contains("at rate 16 p90 TTFT 160.0 ms > 100 ms"),
        "{slo}"
    );
    assert!(slo.contains("slow: meets it up to 2.00 req/s"), "{slo}");
    assert!(slo.contains("flaky: never meets it"), "{slo}");
    assert!(slo.contains("p90 TTFT lands on failed requests"), "{slo}");
    let rec = slo.lines().last().unwrap();
    assert_eq!(
        rec,
        "Recommendation: fast - it sustains 8.00 req/s within TTFT <= 100 ms, TPOT <= 20 ms at p90, 4.00x slow (2.00 req/s)."
    );
    assert_eq!(out.plots.len(), 8);
    for p in &out.plots {
        let b = std::fs::read(p).unwrap();
        assert!(b.len() > 1000);
        if p.extension().unwrap() == "png" {
            assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        }
    }
    if let Some(keep) = std::env::var_os("SLUICE_BENCH_KEEP_PLOTS") {
        for p in &out.plots {
            std::fs::copy(p, Path::new(&keep).join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn no_server_meets_an_impossible_slo() {
    let dir = tempfile::tempdir().unwrap();
    write_result(dir.path(), "a", 1.0, 1.0, 0);
    write_result(dir.path(), "b", 2.0, 1.0, 0);
    let args = BenchCompareArgs {
        results: vec![dir.path().join("a_r1.json"), dir.path().join("b_r1.json")],
        slo: Some("ttft:1".into()),
        slo_percentile: 99.0,
        plot_dir: dir.path().join("plots"),
        no_plots: true,
    };
    let out = run_compare(&args).unwrap();
    let rec = out.slo_report.unwrap();
    let last = rec.lines().last().unwrap();
    assert!(
        last.starts_with("Recommendation: no server meets TTFT <= 1 ms at p99; a comes closest (p99 TTFT 10.0 ms > 1 ms"),
        "{last}"
    );
    assert!(out.plots.is_empty());
}

#[test]
fn compare_argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = BenchCompareArgs {
        results: vec![dir.path().join("nope.json")],
        slo: None,
        slo_percentile: 90.0,
        plot_dir: dir.path().join("plots"),
        no_plots: true,
    };
    let e = run_compare(&base).unwrap_err().to_string();
    assert!(
        e.starts_with("invalid argument: result file not found"),
        "{e}"
    );
    let e = run_compare(&BenchCompareArgs {
        results: vec![dir.path().to_path_buf()],
        ..base.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("no benchmark result JSON files"), "{e}");
    write_result(dir.path(), "a", 1.0, 1.0, 0);
    let ok = BenchCompareArgs {
        results: vec![dir.path().join("a_r1.json")],
        ..base
    };
    for (slo, want) in [
        ("ttft", "--slo"),
        ("speed:5", "unknown metric"),
        ("", "--slo needs"),
    ] {
        let e = run_compare(&BenchCompareArgs {
            slo: Some(slo.into()),
            ..ok.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{slo}: {e}");
    }
    let e = run_compare(&BenchCompareArgs {
        slo_percentile: 0.0,
        ..ok
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--slo-percentile"), "{e}");
}
