//! Load generation: when each request is sent and how many may be in flight.
//!
//! Arrivals follow vLLM: with `--request-rate R` and `--burstiness k`, the gaps between
//! sends are Gamma(shape = k, scale = 1 / (R k)) distributed, which has mean 1/R for every
//! k; k = 1 is a Poisson process (exponential gaps), k < 1 is burstier, k > 1 more regular.
//! `R = inf` sends everything at once. Send times are computed up front from the seed and
//! each request is sent at its absolute time (no drift from sleeping in a loop).
//! `--max-concurrency` caps the requests in flight: a request that arrives while the cap
//! is reached waits for a free slot (FIFO), and its TTFT is measured from its actual send.

use crate::client::{error_chain, send_request, RequestOutcome, RequestSpec};
use crate::dataset::SampleRequest;
use crate::error::{BenchError, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Send offsets (seconds after the start) of `n` requests.
pub fn arrival_offsets(n: usize, rate: f64, burstiness: f64, seed: u64) -> Result<Vec<f64>> {
    if rate.is_infinite() {
        return Ok(vec![0.0; n]);
    }
    let gamma = Gamma::new(burstiness, 1.0 / (rate * burstiness))
        .map_err(|e| BenchError::arg(format!("burstiness {burstiness} / rate {rate}: {e}")))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = 0.0;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(t);
        t += gamma.sample(&mut rng);
    }
    Ok(out)
}

/// One load point's settings.
#[derive(Debug, Clone)]
pub struct LoadPoint {
    pub request_rate: f64,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub seed: u64,
}

/// The raw outcome of one load point.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub outcomes: Vec<RequestOutcome>,
    /// Seconds from the first send to the last completion.
    pub duration: f64,
}

/// A progress bar on stderr (drawn only when stderr is a terminal), or a hidden one.
pub fn progress_bar(n: usize, show: bool, message: String) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(n as u64),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        pb.set_style(style);
    }
    pb.set_message(message);
    pb
}

/// Sends every request of `requests` according to `point` and waits for all of them.
pub async fn run_point(
    client: &reqwest::Client,
    spec: &Arc<RequestSpec>,
    requests: &Arc<Vec<SampleRequest>>,
    point: &LoadPoint,
    pb: &ProgressBar,
) -> Result<RunOutput> {
    let offsets = arrival_offsets(
        requests.len(),
        point.request_rate,
        point.burstiness,
        point.seed,
    )?;
    let limit = point.max_concurrency.unwrap_or(Semaphore::MAX_PERMITS);
    let sem = Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS)));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(requests.len());
    for (i, off) in offsets.into_iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(off)).await;
        // Taken here, in arrival order, so waiting requests go out first-come first-served.
        let permit = sem.clone().acquire_owned().await;
        let (client, spec, requests, pb) =
            (client.clone(), spec.clone(), requests.clone(), pb.clone());
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            let out = send_request(&client, &spec, &requests[i], start).await;
            pb.inc(1);
            out
        }));
    }
    let mut outcomes = Vec::with_capacity(handles.len());
    for h in handles {
        outcomes.push(h.await.unwrap_or_else(|e| RequestOutcome {
            error: format!("request task failed: {e}"),
            ..Default::default()
        }));
    }
    let duration = start.elapsed().as_secs_f64();
    Ok(RunOutput { outcomes, duration })
}

/// Checks that something answers HTTP at `base_url` (any status will do: not every server
/// has `/v1/models`), so an unreachable server is one clear error, not N failed requests.
pub async fn probe(client: &reqwest::Client, base_url: &str) -> Result<()> {
    let url = crate::client::join_url(base_url, "/v1/models");
    match tokio::time::timeout(Duration::from_secs(30), client.get(&url).send()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(BenchError::Unreachable {
            url: base_url.to_string(),
            reason: error_chain(&e),
        }),
        Err(_) => Err(BenchError::Unreachable {
            url: base_url.to_string(),
            reason: "no answer within 30 s".into(),
        }),
    }
}

/// Sends the first `n` requests one after another and discards their timings (compiles
/// kernels, fills allocator pools, warms caches). The first failure aborts the benchmark.
pub async fn warm_up(
    client: &reqwest::Client,
    spec: &RequestSpec,
    requests: &[SampleRequest],
    n: usize,
) -> Result<()> {
    for req in requests.iter().cycle().take(n) {
        let out = send_request(client, spec, req, Instant::now()).await;
        if !out.success {
            return Err(BenchError::WarmupFailed {
                url: spec.api_url.clone(),
                reason: out.error,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{mean, std_population};

    #[test]
    fn arrivals_have_the_requested_mean_rate() {
        for (rate, burst) in [(4.0, 1.0), (10.0, 0.5), (2.0, 4.0)] {
            let t = arrival_offsets(20_001, rate, burst, 7).unwrap();
            assert_eq!(t[0], 0.0);
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let m = mean(&gaps);
            assert!(
                (m * rate - 1.0).abs() < 0.03,
                "rate {rate} k {burst}: mean gap {m}"
            );
            // Gamma(k, theta): coefficient of variation 1/sqrt(k).
            let cv = std_population(&gaps) / m;
            assert!(
                (cv - 1.0 / burst.sqrt()).abs() < 0.05,
                "cv {cv} for k {burst}"
            );
        }
        assert_eq!(
            arrival_offsets(3, f64::INFINITY, 1.0, 0).unwrap(),
            vec![0.0; 3]
        );
        // Same seed, same schedule.
        assert_eq!(
            arrival_offsets(5, 3.0, 1.0, 1).unwrap(),
            arrival_offsets(5, 3.0, 1.0, 1).unwrap()
        );
    }
}
