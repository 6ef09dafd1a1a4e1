//! The bench tool against a real `sluice serve`, started by the test from `$SLUICE_BIN`
//! with the SmolLM2 model from `$SLUICE_TEST_MODELS`. Skipped with a note when either
//! variable is unset.

mod common;

use common::{serve_args_for, start_sluice};
use sluice_bench::{run_compare, run_serve, BenchCompareArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_counts_match_usage_and_ttft_precedes_e2e() {
    let Some(server) = start_sluice("token_counts_match_usage_and_ttft_precedes_e2e").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = server.model_path.to_str().unwrap().to_string();
    for endpoint in ["/v1/completions", "/v1/chat/completions"] {
        let args = serve_args_for(
            &server.base_url,
            &server.model_name,
            &[
                "--endpoint",
                endpoint,
                "--tokenizer",
                &model,
                "--dataset-name",
                "random",
                "--num-prompts",
                "8",
                "--random-input-len",
                "48",
                "--random-output-len",
                "12",
                "--random-range-ratio",
                "0.5",
                "--ignore-eos",
                "--max-concurrency",
                "4",
                "--seed",
                "1",
                "--result-dir",
                dir.path().to_str().unwrap(),
            ],
        );
        let out = run_serve(&args).await.expect("bench run");
        let r = &out.results[0];
        assert_eq!(
            (r.completed, r.failed),
            (8, 0),
            "{endpoint}: {:?}",
            r.errors
        );
        let mut overhead = None;
        for i in 0..8 {
            // Output tokens are the server's own count, and with ignore_eos the count asked.
            assert_eq!(
                Some(r.output_lens[i] as u64),
                r.server_output_lens[i],
                "{endpoint} #{i}"
            );
            assert!(
                r.output_lens[i] >= 6 && r.output_lens[i] <= 18,
                "{endpoint}: {}",
                r.output_lens[i]
            );
            // The prompt is exactly input_lens tokens: the server sees the same plus a
            // constant (BOS or the chat template's tokens).
            let server_prompt = r.server_prompt_lens[i].expect("usage.prompt_tokens") as i64;
            let d = server_prompt - r.input_lens[i] as i64;
            assert!(
                d >= 0,
                "{endpoint}: server saw fewer prompt tokens than sent"
            );
            assert_eq!(
                *overhead.get_or_insert(d),
                d,
                "{endpoint}: prompt token overhead must be constant"
            );
            assert!(
                r.ttfts[i] > 0.0 && r.ttfts[i] <= r.e2els[i],
                "{endpoint}: TTFT > E2E for #{i}"
            );
        }
        let total: u64 = r.server_output_lens.iter().map(|n| n.unwrap_or(0)).sum();
        assert_eq!(r.total_output_tokens, total);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_and_compare_against_sluice() {
    let Some(server) = start_sluice("sweep_and_compare_against_sluice").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("results");
    let model = server.model_path.to_str().unwrap().to_string();
    let args = serve_args_for(
        &server.base_url,
        &server.model_name,
        &[
            "--tokenizer",
            &model,
            "--dataset-name",
            "random",
            "--num-prompts",
            "6",
            "--random-input-len",
            "32",
            "--random-output-len",
            "8",
            "--ignore-eos",
            "--max-concurrency",
            "1,4",
            "--label",
            "sluice",
            "--result-dir",
            res.to_str().unwrap(),
        ],
    );
    let out = run_serve(&args).await.expect("sweep");
    assert_eq!(out.results.len(), 2, "one result per sweep point");
    for r in &out.results {
        assert_eq!(r.completed, 6);
        assert!(r.max_concurrent_requests <= r.max_concurrency.unwrap());
    }
    let cmp = run_compare(&BenchCompareArgs {
        results: vec![res],
        slo: Some("ttft:60000,tpot:10000".into()),
        slo_percentile: 90.0,
        plot_dir: dir.path().join("plots"),
        no_plots: false,
    })
    .expect("compare");
    assert_eq!(
        cmp.table
            .lines()
            .filter(|l| l.starts_with("sluice"))
            .count(),
        2
    );
    assert!(cmp
        .slo_report
        .unwrap()
        .contains("Recommendation: sluice meets"));
    for p in cmp.plots.iter().filter(|p| p.extension().unwrap() == "png") {
        let b = std::fs::read(p).unwrap();
        assert!(
            b.len() > 1000 && b[..8] == *b"\x89PNG\r\n\x1a\n",
            "{}",
            p.display()
        );
    }
}
