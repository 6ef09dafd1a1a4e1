//! sluice-bench: a load generator and benchmark reports for any OpenAI-compatible server.
//!
//! `sluice bench serve` measures one server (TTFT, TPOT, ITL, E2E latency, throughputs,
//! goodput) over streaming HTTP, with metric definitions and result JSON field names taken
//! from vLLM's `benchmark_serving.py` so numbers compare across tools; `sluice bench compare`
//! puts several runs or servers side by side, draws plots and answers "which server meets
//! this SLO at the highest load". Talks HTTP only; the tokenizer is used to build prompts of
//! exact token counts and to count output tokens when a server reports no usage.
//!
//! Wiring in a CLI: `#[command(subcommand)] bench: sluice_bench::BenchCommand`, then
//! `sluice_bench::run(cmd).await?`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod compare;
pub mod dataset;
pub mod error;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod result;
pub mod runner;
pub mod serve;
pub mod sse;
pub mod stats;
pub mod tokenizer;

pub use compare::{run_compare, BenchCompareArgs, CompareOutput};
pub use error::{BenchError, Result};
pub use result::BenchResult;
pub use serve::{run_serve, BenchServeArgs, ServeOutput};

/// `sluice bench <subcommand>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Benchmark an OpenAI-compatible server (one run, or a sweep of rates/concurrencies).
    Serve(Box<BenchServeArgs>),
    /// Compare saved results: table, plots, SLO recommendation.
    Compare(BenchCompareArgs),
}

/// Runs a bench subcommand.
pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Serve(a) => run_serve(&a).await.map(|_| ()),
        BenchCommand::Compare(a) => run_compare(&a).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        bench: BenchCommand,
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::try_parse_from([
            "bench",
            "serve",
            "--base-url",
            "http://127.0.0.1:8000",
            "--model",
            "m",
            "--request-rate",
            "1,2,inf",
            "--goodput",
            "ttft:500",
            "tpot:50",
        ])
        .unwrap();
        match cli.bench {
            BenchCommand::Serve(a) => {
                assert_eq!(a.request_rate, "1,2,inf");
                assert_eq!(a.goodput, vec!["ttft:500", "tpot:50"]);
                assert_eq!(a.endpoint, "/v1/completions");
                assert_eq!(a.num_warmups, 1);
            }
            BenchCommand::Compare(_) => panic!("wrong subcommand"),
        }
        let cli = Cli::try_parse_from([
            "bench",
            "compare",
            "a.json",
            "dir",
            "--slo",
            "ttft:500,tpot:50",
        ])
        .unwrap();
        match cli.bench {
            BenchCommand::Compare(a) => {
                assert_eq!(a.results.len(), 2);
                assert_eq!(a.slo_percentile, 90.0);
            }
            BenchCommand::Serve(_) => panic!("wrong subcommand"),
        }
        assert!(
            Cli::try_parse_from(["bench", "compare"]).is_err(),
            "results are required"
        );
    }
}
