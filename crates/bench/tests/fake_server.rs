//! The bench tool against a small HTTP server on 127.0.0.1 that behaves or misbehaves on
//! purpose: failures are counted and summarised, never crash the tool or vanish.

mod common;

use common::{serve_args, Behavior, FakeServer};
use sluice_bench::{run_compare, run_serve, BenchCompareArgs, BenchError};
use std::io::Write;
use std::path::Path;

fn jsonl(dir: &Path, n: usize) -> String {
    let p = dir.join("prompts.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    for i in 0..n {
        // Varied lengths; some lines set their own output length.
        if i % 3 == 0 {
            writeln!(
                f,
                "{{\"prompt\": \"tell me about item {i} in detail please\", \"output_len\": {}}}",
                3 + i % 5
            )
            .unwrap();
        } else {
            writeln!(f, "\"short prompt {i}\"").unwrap();
        }
    }
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_server_failures_are_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = jsonl(dir.path(), 14);
    let behaviors = vec![
        Behavior::Good,
        Behavior::Http500,
        Behavior::DropMidStream,
        Behavior::BadJson,
        Behavior::ErrorInStream,
        Behavior::NoDone,
        Behavior::Http429Text,
    ];
    // 14 POSTs + 1 probe GET.
    let server = FakeServer::start(behaviors, 15).await;
    let out_dir = dir.path().join("out");
    let args = serve_args(
        &server.base_url,
        &[
            "--dataset-name",
            "jsonl",
            "--dataset-path",
            &data,
            "--num-prompts",
            "14",
            "--num-warmups",
            "0",
            "--max-concurrency",
            "3",
            "--jsonl-output-len",
            "5",
            "--result-dir",
            out_dir.to_str().unwrap(),
            "--label",
            "flaky",
        ],
    );
    let out = run_serve(&args)
        .await
        .expect("the run completes despite failures");
    assert_eq!(server.posts.load(std::sync::atomic::Ordering::SeqCst), 14);
    let r = &out.results[0];
    assert_eq!(r.completed, 2, "only the two Good responses succeed");
    assert_eq!(r.failed, 12);
    assert_eq!(r.errors.len(), 14);
    let errs: Vec<&String> = r.errors.iter().filter(|e| !e.is_empty()).collect();
    assert_eq!(errs.len(), 12);
    for needle in [
        "HTTP 500: the model fell over",
        "HTTP 429: slow down",
        "connection lost mid-stream",
        "invalid JSON in stream",
        "error in stream: out of KV cache",
        "without a finish_reason or [DONE]",
    ] {
        let n = errs.iter().filter(|e| e.contains(needle)).count();
        assert_eq!(n, 2, "{needle:?} expected twice in {errs:#?}");
    }
    // Successful requests: tokens as the server's usage says; TTFT <= E2E.
    for i in 0..14 {
        if r.errors[i].is_empty() {
            assert_eq!(Some(r.output_lens[i] as u64), r.server_output_lens[i]);
            assert_eq!(Some(r.input_lens[i] as u64), r.server_prompt_lens[i]);
            assert!(r.ttfts[i] > 0.0 && r.ttfts[i] <= r.e2els[i]);
        } else {
            assert_eq!(r.output_lens[i], 0);
        }
    }
    // Files: JSON with vLLM names, per-request CSV, summary CSV.
    assert_eq!(out.files.len(), 3);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out.files[0]).unwrap()).unwrap();
    for key in [
        "completed",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "mean_ttft_ms",
        "median_ttft_ms",
        "std_ttft_ms",
        "p99_ttft_ms",
        "p50_tpot_ms",
        "p90_itl_ms",
        "mean_e2el_ms",
        "duration",
        "input_lens",
        "output_lens",
        "ttfts",
        "itls",
        "errors",
        "request_goodput",
    ] {
        assert!(v.get(key).is_some(), "{key} missing");
    }
    assert_eq!(v["request_rate"], "inf");
    assert_eq!(v["max_concurrency"], 3);
    let csv = std::fs::read_to_string(&out.files[1]).unwrap();
    assert_eq!(csv.lines().count(), 15);
    assert!(
        csv.contains("\"HTTP 500: the model fell over\"")
            || csv.contains("HTTP 500: the model fell over")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_gives_one_result_per_point_and_compare_plots_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = jsonl(dir.path(), 6);
    let out_dir = dir.path().join("results");
    for (label, endpoint) in [
        ("alpha", "/v1/completions"),
        ("beta", "/v1/chat/completions"),
    ] {
        // 3 points x 6 prompts + 1 warm-up + 1 probe.
        let server = FakeServer::start(vec![Behavior::Good], 20).await;
        let args = serve_args(
            &server.base_url,
            &[
                "--endpoint",
                endpoint,
                "--dataset-name",
                "jsonl",
                "--dataset-path",
                &data,
                "--num-prompts",
                "6",
                "--request-rate",
                "200,400,inf",
                "--max-concurrency",
                "2",
                "--jsonl-output-len",
                "4",
                "--label",
                label,
                "--result-dir",
                out_dir.to_str().unwrap(),
                "--goodput",
                "ttft:1000",
                "tpot:1000",
            ],
        );
        let out = run_serve(&args).await.expect("sweep runs");
        assert_eq!(out.results.len(), 3, "one result per sweep point");
        assert_eq!(out.files.len(), 3 * 2 + 1);
        for f in &out.files {
            assert!(
                f.is_file() && std::fs::metadata(f).unwrap().len() > 0,
                "{}",
                f.display()
            );
        }
        let rates: Vec<f64> = out.results.iter().map(|r| r.request_rate).collect();
        assert_eq!(rates, vec![200.0, 400.0, f64::INFINITY]);
        for r in &out.results {
            assert_eq!((r.completed, r.failed), (6, 0));
            assert_eq!(r.max_concurrency, Some(2));
            assert!(r.max_concurrent_requests <= 2);
            assert_eq!(r.request_goodput.map(|g| g > 0.0), Some(true));
            for i in 0..6 {
                assert!(r.ttfts[i] <= r.e2els[i]);
                assert_eq!(Some(r.output_lens[i] as u64), r.server_output_lens[i]);
                // The fake server counts words + 1; JSONL prompts without a tokenizer take
                // the server's count.
                assert_eq!(r.server_prompt_lens[i], Some(r.input_lens[i] as u64));
            }
            // Output lengths as asked: 4 by default, the line's own for every third line.
            assert!(r.output_lens.iter().all(|&n| (3..=7).contains(&n)));
        }
        let summary = std::fs::read_to_string(out.files.last().unwrap()).unwrap();
        assert_eq!(summary.lines().count(), 4, "header + one row per point");
    }

    let plot_dir = dir.path().join("plots");
    let args = BenchCompareArgs {
        results: vec![out_dir.clone()],
        slo: Some("ttft:2000,tpot:1000".into()),
        slo_percentile: 90.0,
        plot_dir: plot_dir.clone(),
        no_plots: false,
    };
    let cmp = run_compare(&args).expect("compare");
    assert!(cmp.table.contains("alpha") && cmp.table.contains("beta"));
    assert_eq!(
        cmp.table.lines().filter(|l| l.starts_with("alpha")).count(),
        3
    );
    let slo = cmp.slo_report.expect("slo report");
    assert!(slo.contains("Recommendation: "), "{slo}");
    let names: Vec<String> = cmp
        .plots
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for stem in ["throughput_latency", "ttft_cdf", "tpot_cdf", "slo_capacity"] {
        for ext in ["png", "svg"] {
            assert!(
                names.contains(&format!("{stem}.{ext}")),
                "{stem}.{ext} missing: {names:?}"
            );
        }
    }
    for p in &cmp.plots {
        let bytes = std::fs::read(p).unwrap();
        assert!(bytes.len() > 1000, "{} is too small", p.display());
        if p.extension().unwrap() == "png" {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display());
        } else {
            assert!(
                String::from_utf8_lossy(&bytes).starts_with("<svg"),
                "{}",
                p.display()
            );
        }
    }
}

#[tokio::test]
async fn unreachable_server_is_one_clear_error() {
    // A port that was free a moment ago and has no listener now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let data = jsonl(dir.path(), 2);
    let url = format!("http://127.0.0.1:{port}");
    let args = serve_args(
        &url,
        &[
            "--dataset-name",
            "jsonl",
            "--dataset-path",
            &data,
            "--no-save",
        ],
    );
    let e = run_serve(&args).await.unwrap_err();
    assert!(matches!(e, BenchError::Unreachable { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("cannot reach {url}")), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_warm_up_aborts_with_the_server_message() {
    let server = FakeServer::start(vec![Behavior::Http500], 2).await;
    let dir = tempfile::tempdir().unwrap();
    let data = jsonl(dir.path(), 2);
    let args = serve_args(
        &server.base_url,
        &[
            "--dataset-name",
            "jsonl",
            "--dataset-path",
            &data,
            "--no-save",
        ],
    );
    let e = run_serve(&args).await.unwrap_err().to_string();
    assert!(
        e.starts_with("warm-up request to") && e.contains("HTTP 500: the model fell over"),
        "{e}"
    );
}

#[tokio::test]
async fn bad_arguments_give_one_clear_line() {
    use clap::Parser;
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: sluice_bench::BenchServeArgs,
    }
    // Unknown dataset: clap's own first line names the value and the flag.
    let e = Cli::try_parse_from([
        "b",
        "--base-url",
        "http://127.0.0.1:1",
        "--model",
        "m",
        "--dataset-name",
        "nope",
    ])
    .unwrap_err()
    .to_string();
    let first = e.lines().next().unwrap();
    assert!(
        first.contains("invalid value 'nope'") && first.contains("--dataset-name"),
        "{first}"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--request-rate", "0"],
            "invalid argument: --request-rate must be positive, got 0",
        ),
        (
            vec!["--request-rate", "1,fast"],
            "invalid argument: --request-rate: \"fast\"",
        ),
        (
            vec!["--max-concurrency", "0"],
            "invalid argument: --max-concurrency",
        ),
        (
            vec![
                "--dataset-name",
                "jsonl",
                "--dataset-path",
                missing.to_str().unwrap(),
            ],
            "invalid argument: dataset file not found",
        ),
        (
            vec!["--dataset-name", "sharegpt"],
            "invalid argument: the sharegpt dataset needs --dataset-path",
        ),
        (
            vec!["--endpoint", "/v1/embeddings"],
            "invalid argument: unknown endpoint",
        ),
        (vec!["--goodput", "ttft:abc"], "invalid argument: --goodput"),
        (vec!["--burstiness", "0"], "invalid argument: --burstiness"),
        // The random dataset without a tokenizer (the model name is not a path).
        (
            vec![],
            "invalid argument: the random dataset needs a tokenizer",
        ),
        (
            vec!["--tokenizer", missing.to_str().unwrap()],
            "tokenizer: `",
        ),
    ];
    for (extra, want) in cases {
        let args = serve_args("http://127.0.0.1:1", &[&["--no-save"][..], &extra].concat());
        let e = run_serve(&args).await.unwrap_err().to_string();
        assert!(
            e.starts_with(want),
            "{extra:?}: got {e:?}, want prefix {want:?}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
    let bad_url = serve_args("localhost:8000", &["--no-save"]);
    let e = run_serve(&bad_url).await.unwrap_err().to_string();
    assert!(e.starts_with("invalid argument: --base-url"), "{e}");
}
