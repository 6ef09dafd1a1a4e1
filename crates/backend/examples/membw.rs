//! Memory read bandwidth with N threads, the floor that decode speed is judged against
//! (decode reads every weight once per step, so tokens/s <= GB/s / weight bytes).
//!
//! `cargo run --release -p sluice-backend --example membw -- [THREADS] [MIB]`
//!
//! Each thread sums its own contiguous share of a buffer much larger than the last-level
//! cache (default 512 MiB), a few passes, best pass reported: what a GEMV streaming
//! weights can at most get. Prints one line: `read GB/s with N threads: X`.

use std::time::Instant;

/// Sums `words` with 8 independent accumulators (vectorised loads, no dependency chain).
fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in words.chunks_exact(8) {
        for (a, w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*w);
        }
    }
    acc.iter().fold(0, |s, a| s.wrapping_add(*a))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2).max(1);
    let mib: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
        .max(64);
    let n = mib * 1024 * 1024 / 8;
    // [n] u64, touched once so every page is mapped before timing.
    let buf: Vec<u64> = (0..n as u64).collect();
    let share = n / threads / 8 * 8;
    let mut best = 0f64;
    let mut sink = 0u64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let s: u64 = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..threads)
                .map(|i| {
                    let part = &buf[i * share..(i + 1) * share];
                    sc.spawn(move || sum_words(part))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        let secs = t0.elapsed().as_secs_f64();
        sink = sink.wrapping_add(s);
        best = best.max((threads * share * 8) as f64 / secs / 1e9);
    }
    // Printing the sum keeps the reads from being optimised away.
    eprintln!("checksum {sink}");
    println!("read GB/s with {threads} threads: {best:.1}");
}
