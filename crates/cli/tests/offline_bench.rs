//! `sluice bench model|latency|throughput` run end to end on a tiny real model.

mod common;
use common::*;

#[test]
fn offline_benchmarks_report_their_tables() {
    let Some(dir) = models_dir() else { return };
    let m = dir.join("stories260K");
    let m = m.to_str().unwrap();
    let r = sluice(&[
        "bench", "model", "-m", m, "-p", "32", "-n", "8", "-b", "1,2", "-r", "2",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for row in ["| pp32 | 1 |", "| tg8 | 1 |", "| tg8 | 2 |"] {
        assert!(r.stdout.contains(row), "missing {row} in\n{}", r.stdout);
    }
    let r = sluice(&[
        "bench",
        "latency",
        "-m",
        m,
        "--batch-size",
        "3",
        "--input-len",
        "16",
        "--output-len",
        "5",
        "-r",
        "2",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("| prefill |") && r.stdout.contains("| decode |"),
        "{}",
        r.stdout
    );
    let r = sluice(&[
        "bench",
        "throughput",
        "-m",
        m,
        "--input-len",
        "8",
        "--output-len",
        "4",
        "--num-prompts",
        "5",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("5 requests of 8 in / 4 out"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("GB/s of weights"), "{}", r.stdout);
    // Bad arguments: one clear error line.
    let r = sluice(&["bench", "latency", "-m", m, "--batch-size", "0"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.trim().starts_with("error:") && r.stderr.contains("--batch-size"),
        "{}",
        r.stderr
    );
}
