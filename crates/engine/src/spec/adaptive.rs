//! Per-sequence choice of K from the acceptance seen so far.
//!
//! With a per-token acceptance rate `a` (drafts accepted independently, the model of
//! Leviathan et al. 2023, eq. 1) a step verifying `k` drafts emits on average
//! `E(k) = (1 - a^(k+1)) / (1 - a)` tokens and costs `1 + c * k` plain decode steps,
//! where `c = verify_cost + draft_cost` (one more verified row in the target forward,
//! plus producing the draft; `verify_cost` defaults to `VERIFY_COST`). We pick the `k` in `0..=k_max` maximising
//! `E(k) / (1 + c k)`; `k = 0` (plain decoding) scores exactly 1, so speculation is
//! only used where the model of its cost says it pays.
//!
//! `a` is an exponential moving average over verification steps (weight `EMA_WEIGHT`
//! for the newest), starting at `INITIAL_ACCEPTANCE`. A sequence whose rule says 0 gets
//! a one-draft probe every `PROBE_INTERVAL` steps so that it can recover when the text
//! becomes predictable (e.g. the model starts quoting its prompt).

/// Default share of a one-sequence decode step that grows with the number of rows
/// (compute), the rest being the weight reads every step pays once. Measured with
/// `sluice bench spec` on this machine's 2-core CPU and SmolLM2 Q8_0: a 6-row
/// verification step cost ~3.3 one-row steps (0.46 per extra row), and 8 sequences'
/// plain step ~4.7 one-row steps (0.53 per extra row). GPUs are far lower (~0.02; set
/// it with `--spec-verify-cost`).
pub const VERIFY_COST: f64 = 0.45;

/// Cost of one extra verified row relative to the plain step of `n` decoding
/// sequences, per sequence: with a plain step costing `(1 - v) + v n` one-row steps
/// and each draft row adding `v`, a sequence's `k` drafts scale its share by
/// `1 + k * v n / ((1 - v) + v n)`. At batch 1 that is `v`; it tends to 1 as the batch
/// grows (compute-bound: a draft row costs as much as a decode row, so only near-
/// perfect acceptance pays).
pub fn batch_verify_cost(v: f64, n: usize) -> f64 {
    let v = v.clamp(0.0, 1.0);
    let n = n.max(1) as f64;
    let denom = (1.0 - v) + v * n;
    if denom <= 0.0 {
        1.0
    } else {
        v * n / denom
    }
}
/// Weight of the newest step's acceptance in the moving average.
pub const EMA_WEIGHT: f64 = 0.3;
/// Acceptance assumed before any verification: optimistic enough to start with a few
/// drafts for cheap proposers at batch 1 (k = 1 at c = 0.45), so the rule gets data.
pub const INITIAL_ACCEPTANCE: f64 = 0.6;
/// Steps between probes of a sequence whose rule chose 0 drafts; doubled after each
/// probe that leaves the rule at 0 (up to `MAX_PROBE_INTERVAL`), so a draft model that
/// never pays stops costing catch-up forwards; reset once the rule drafts again.
pub const PROBE_INTERVAL: u32 = 8;
pub const MAX_PROBE_INTERVAL: u32 = 256;
/// No probes where even perfect acceptance would gain less than this factor
/// (`(k + 1) / (1 + c k) < MIN_CEILING_GAIN` for every allowed k): a draft model about
/// as expensive as the target cannot pay, and each probe costs a catch-up forward of
/// every token generated since the last one.
pub const MIN_CEILING_GAIN: f64 = 1.1;

/// Expected tokens per step with `k` drafts at per-token acceptance `a`.
pub fn expected_tokens(k: usize, a: f64) -> f64 {
    if a >= 1.0 {
        return (k + 1) as f64;
    }
    (1.0 - a.powi(k as i32 + 1)) / (1.0 - a)
}

/// The `k` in `0..=k_max` with the best expected tokens per unit of cost.
/// `cost` is `c` above: verification plus draft cost per draft token.
pub fn best_k(k_max: usize, a: f64, cost: f64) -> usize {
    let c = cost.max(0.0);
    let mut best = (0usize, 1.0f64);
    for k in 1..=k_max {
        let score = expected_tokens(k, a) / (1.0 + c * k as f64);
        // Strictly better only: ties keep the cheaper k.
        if score > best.1 + 1e-12 {
            best = (k, score);
        }
    }
    best.0
}

/// Acceptance tracker of one sequence.
#[derive(Clone, Debug)]
pub struct AdaptiveK {
    /// Moving average of the per-token acceptance rate.
    pub acceptance: f64,
    /// Consecutive steps on which this sequence drafted nothing by the rule.
    steps_off: u32,
    /// Current probe interval (see `PROBE_INTERVAL`).
    probe_every: u32,
}

impl Default for AdaptiveK {
    fn default() -> Self {
        AdaptiveK::new()
    }
}

impl AdaptiveK {
    pub fn new() -> AdaptiveK {
        AdaptiveK {
            acceptance: INITIAL_ACCEPTANCE,
            steps_off: 0,
            probe_every: PROBE_INTERVAL,
        }
    }

    /// K for the next step, at most `k_max`, at `cost` per draft token (1 for a probe).
    pub fn choose(&mut self, k_max: usize, cost: f64) -> usize {
        let k = best_k(k_max, self.acceptance, cost);
        if k > 0 {
            self.probe_every = PROBE_INTERVAL;
            return k;
        }
        let c = cost.max(0.0);
        let ceiling = (1..=k_max)
            .map(|k| (k + 1) as f64 / (1.0 + c * k as f64))
            .fold(0.0, f64::max);
        if ceiling >= MIN_CEILING_GAIN && self.steps_off >= self.probe_every {
            self.probe_every = (self.probe_every * 2).min(MAX_PROBE_INTERVAL);
            return 1;
        }
        0
    }

    /// Notes the K used this step (0 counts towards the next probe).
    pub fn tick(&mut self, k: usize) {
        if k == 0 {
            self.steps_off = self.steps_off.saturating_add(1);
        } else {
            self.steps_off = 0;
        }
    }

    /// Folds in one verification: `accepted` of `drafted` drafts.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        // Per-token rate from a truncated geometric sample: with all `drafted`
        // accepted we only know a is high; accepted / drafted is then 1.
        let rate = accepted.min(drafted) as f64 / drafted as f64;
        self.acceptance = (1.0 - EMA_WEIGHT) * self.acceptance + EMA_WEIGHT * rate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: f64 = VERIFY_COST;

    #[test]
    fn expected_tokens_matches_the_geometric_sum() {
        for &a in &[0.0, 0.3, 0.8, 0.99] {
            for k in 0..6 {
                let direct: f64 = (0..=k).map(|i| f64::powi(a, i as i32)).sum();
                assert!((expected_tokens(k, a) - direct).abs() < 1e-9);
            }
        }
        assert_eq!(expected_tokens(4, 1.0), 5.0);
    }

    #[test]
    fn k_grows_with_acceptance_and_shrinks_with_cost() {
        assert_eq!(best_k(8, 0.0, C), 0);
        assert_eq!(best_k(8, 0.05, C), 0);
        let low = best_k(8, 0.6, C);
        let high = best_k(8, 0.9, C);
        assert!(low >= 1 && high > low, "{low} {high}");
        assert_eq!(best_k(8, 1.0, C), 8);
        // An expensive draft needs much higher acceptance.
        assert!(best_k(8, 0.6, C + 0.5) < best_k(8, 0.6, C));
        assert_eq!(best_k(8, 0.3, C + 1.0), 0);
        assert_eq!(best_k(0, 0.9, C), 0);
    }

    #[test]
    fn the_verification_cost_grows_with_the_batch() {
        assert!((batch_verify_cost(0.45, 1) - 0.45).abs() < 1e-12);
        let mut last = 0.0;
        for n in 1..64 {
            let c = batch_verify_cost(0.45, n);
            assert!(c >= last && c < 1.0);
            last = c;
        }
        assert!(last > 0.95);
        assert_eq!(batch_verify_cost(0.0, 8), 0.0);
        assert_eq!(batch_verify_cost(1.0, 8), 1.0);
    }

    #[test]
    fn low_acceptance_turns_off_then_probes() {
        let mut a = AdaptiveK::new();
        assert!(a.choose(5, C) >= 1);
        for _ in 0..20 {
            a.observe(3, 0);
        }
        assert_eq!(a.choose(5, C), 0);
        for _ in 0..PROBE_INTERVAL {
            a.tick(0);
        }
        assert_eq!(a.choose(5, C), 1);
        a.tick(1);
        assert_eq!(a.choose(5, C), 0);
        // A failed probe doubles the wait.
        a.observe(1, 0);
        for _ in 0..PROBE_INTERVAL {
            a.tick(0);
        }
        assert_eq!(a.choose(5, C), 0);
        for _ in 0..PROBE_INTERVAL {
            a.tick(0);
        }
        assert_eq!(a.choose(5, C), 1);
        // A cost so high that even full acceptance cannot pay: never probed.
        let mut b = AdaptiveK::new();
        for _ in 0..4 * MAX_PROBE_INTERVAL {
            b.tick(0);
            assert_eq!(b.choose(5, 1.2), 0);
        }
        // Full acceptance brings it back up.
        for _ in 0..10 {
            a.observe(1, 1);
        }
        assert!(a.choose(5, C) >= 4);
    }
}
