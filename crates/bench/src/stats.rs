//! Summary statistics with numpy's definitions, so our numbers match vLLM's
//! `benchmark_serving.py` (which uses `np.mean`, `np.median`, `np.std`, `np.percentile`).
//!
//! - Percentiles use linear interpolation between closest ranks (numpy's default
//!   `method="linear"`): for sorted `x[0..n]` and `p` in [0, 100], the rank is
//!   `r = p/100 * (n-1)`, and the value is `x[floor r] + (x[ceil r] - x[floor r]) * frac(r)`.
//! - The standard deviation is the *population* one (numpy's default `ddof=0`):
//!   `sqrt(sum((x - mean)^2) / n)`, not the sample one (`/ (n-1)`).
//! - An empty sample gives 0 for every statistic, as vLLM's `np.mean(ttfts or 0)` does.

/// Mean, median, population std and requested percentiles of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    /// `(p, value)` for each requested percentile, in the order asked.
    pub percentiles: Vec<(f64, f64)>,
}

impl Summary {
    /// Summarises `values` (any order). NaNs must not be present (callers only pass times).
    pub fn of(values: &[f64], percentiles: &[f64]) -> Summary {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            mean: mean(&sorted),
            median: percentile_sorted(&sorted, 50.0),
            std: std_population(&sorted),
            percentiles: percentiles
                .iter()
                .map(|&p| (p, percentile_sorted(&sorted, p)))
                .collect(),
        }
    }

    /// Every statistic multiplied by `k` (seconds -> milliseconds).
    pub fn scaled(&self, k: f64) -> Summary {
        Summary {
            mean: self.mean * k,
            median: self.median * k,
            std: self.std * k,
            percentiles: self.percentiles.iter().map(|&(p, v)| (p, v * k)).collect(),
        }
    }
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Population standard deviation (divides by `n`, numpy `ddof=0`).
pub fn std_population(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let m = mean(values);
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / values.len() as f64;
    var.sqrt()
}

/// Sample standard deviation (divides by `n - 1`); 0 for fewer than two values. Not used
/// in reports (they follow numpy/vLLM), provided so the difference is explicit and tested.
pub fn std_sample(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (values.len() - 1) as f64;
    var.sqrt()
}

/// Percentile `p` (0..=100, clamped) of an already ascending-sorted slice, numpy "linear".
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            let frac = rank - lo as f64;
            // Exact ranks return the element itself, so +inf entries (failed requests in
            // SLO checks) never produce inf - inf = NaN.
            let (a, b) = (sorted[lo], sorted[hi]);
            if frac == 0.0 || a == b {
                a
            } else if b.is_infinite() {
                b
            } else {
                a + (b - a) * frac
            }
        }
    }
}

/// Percentile of an unsorted slice.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_sorted(&sorted, p)
}

/// How a percentile is named in reports and JSON keys: `99` -> "99", `99.9` -> "99.9"
/// (vLLM: `str(int(p)) if int(p) == p else str(p)`).
pub fn percentile_word(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as i64)
    } else {
        format!("{p}")
    }
}

/// Empirical CDF points `(value, fraction <= value)` of a sample, for plots.
pub fn ecdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, (i + 1) as f64 / n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 * (1.0 + b.abs())
    }

    #[test]
    fn percentiles_match_hand_computed_numpy_linear() {
        // x = [1, 2, 3, 4, 10] (given unsorted). n-1 = 4.
        let x = [10.0, 1.0, 3.0, 2.0, 4.0];
        // p50: rank 2 -> 3.
        assert!(close(percentile(&x, 50.0), 3.0));
        // p90: rank 3.6 -> 4 + (10-4)*0.6 = 7.6.
        assert!(close(percentile(&x, 90.0), 7.6));
        // p99: rank 3.96 -> 4 + 6*0.96 = 9.76.
        assert!(close(percentile(&x, 99.0), 9.76));
        // p25: rank 1 -> 2; p0 and p100 are min and max.
        assert!(close(percentile(&x, 25.0), 2.0));
        assert!(close(percentile(&x, 0.0), 1.0));
        assert!(close(percentile(&x, 100.0), 10.0));
        // p12.5: rank 0.5 -> 1.5.
        assert!(close(percentile(&x, 12.5), 1.5));
        // Even count: median of [1, 2, 3, 4] is 2.5 (rank 1.5).
        assert!(close(percentile(&[4.0, 3.0, 2.0, 1.0], 50.0), 2.5));
        // One element and none.
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
        // Infinities (failed requests in SLO checks) propagate without NaN.
        let inf = f64::INFINITY;
        assert_eq!(percentile(&[1.0, 2.0, inf, inf], 100.0), inf);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, inf], 50.0), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, inf], 90.0), inf);
        // Between two infinities (inf - inf would be NaN).
        assert_eq!(percentile(&[1.0, inf, inf, inf, inf], 90.0), inf);
    }

    #[test]
    fn std_population_vs_sample() {
        // [2, 4, 4, 4, 5, 5, 7, 9]: mean 5, squared deviations sum to 32.
        let x = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert!(close(mean(&x), 5.0));
        assert!(close(std_population(&x), 2.0)); // sqrt(32 / 8)
        assert!(close(std_sample(&x), (32.0f64 / 7.0).sqrt()));
        assert_eq!(std_population(&[3.0]), 0.0);
        assert_eq!(std_sample(&[3.0]), 0.0);
        assert_eq!(std_population(&[]), 0.0);
    }

    #[test]
    fn summary_and_scaling() {
        let s = Summary::of(&[0.004, 0.001, 0.002, 0.003], &[50.0, 90.0, 99.0]);
        assert!(close(s.mean, 0.0025));
        assert!(close(s.median, 0.0025));
        // sqrt(((1.5^2)*2 + (0.5^2)*2) / 4) ms = sqrt(1.25) ms
        assert!(close(s.std, 1.25f64.sqrt() * 1e-3));
        // p90: rank 2.7 -> 3 + 0.7 = 3.7 ms
        let ms = s.scaled(1000.0);
        assert!(close(ms.percentiles[1].1, 3.7));
        assert_eq!(ms.percentiles[2].0, 99.0);
        assert!(close(ms.percentiles[2].1, 3.97));
        let empty = Summary::of(&[], &[99.0]);
        assert_eq!(
            empty,
            Summary {
                mean: 0.0,
                median: 0.0,
                std: 0.0,
                percentiles: vec![(99.0, 0.0)]
            }
        );
    }

    #[test]
    fn percentile_words_and_ecdf() {
        assert_eq!(percentile_word(99.0), "99");
        assert_eq!(percentile_word(99.9), "99.9");
        assert_eq!(percentile_word(50.0), "50");
        let c = ecdf(&[3.0, 1.0, 2.0, 2.0]);
        assert_eq!(c, vec![(1.0, 0.25), (2.0, 0.5), (2.0, 0.75), (3.0, 1.0)]);
    }
}
