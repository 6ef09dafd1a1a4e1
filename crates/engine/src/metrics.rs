//! Engine counters and latency histograms, exported by the server as Prometheus text.

use std::time::Duration;

use crate::scheduler::{SchedulerOutput, SchedulerStats};
use crate::spec::SpecMethodStats;

/// A cumulative histogram with fixed upper bounds (seconds), Prometheus style.
#[derive(Clone, Debug)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// `counts[i]`: observations <= `bounds[i]` (not cumulative; summed when exported).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

/// Latency buckets from 1 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 60.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Cumulative counts per bound (the `le` buckets), then +Inf = `count`.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut acc = 0;
        self.counts
            .iter()
            .map(|c| {
                acc += c;
                acc
            })
            .collect()
    }
}

/// A step's time split at the points where the host hands work to the device and waits
/// for it (seconds, summed over steps). On a GPU the device idles through `host_before`
/// and `host_after` unless something else is queued, so their sum per step is the
/// overlap that scheduling step N+1 during step N could win.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepPhases {
    /// Scheduling, drafting and filling the batch: before the forward is called.
    pub host_before: f64,
    /// The forward call: metadata uploads and kernel (or graph) launches; on the CPU
    /// the whole forward.
    pub forward: f64,
    /// Sampling, and the wait for the device's results (ids or logits).
    pub wait: f64,
    /// Updating sequences and outputs after the results arrived.
    pub host_after: f64,
}

impl StepPhases {
    pub fn add(&mut self, other: &StepPhases) {
        self.host_before += other.host_before;
        self.forward += other.forward;
        self.wait += other.wait;
        self.host_after += other.host_after;
    }

    /// `self - earlier`, for the steps between two snapshots.
    pub fn since(&self, earlier: &StepPhases) -> StepPhases {
        StepPhases {
            host_before: self.host_before - earlier.host_before,
            forward: self.forward - earlier.forward,
            wait: self.wait - earlier.wait,
            host_after: self.host_after - earlier.host_after,
        }
    }
}

/// Everything /metrics shows about the engine.
#[derive(Clone, Debug)]
pub struct EngineMetrics {
    pub requests_received: u64,
    pub requests_finished: u64,
    pub requests_aborted: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub steps: u64,
    /// Steps queued before the host had the previous step's tokens (overlapped steps).
    pub overlapped_steps: u64,
    pub batched_tokens: u64,
    pub step_seconds: f64,
    /// Of `steps` and `step_seconds`: the steps that fed some sequence prompt tokens
    /// (prefill chunks, alone or beside decodes); the others only decoded (with drafts,
    /// if speculating).
    pub prompt_steps: u64,
    pub prompt_step_seconds: f64,
    /// Where the steps' time went, from the host's side (sums over all steps).
    pub step_phases: StepPhases,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    /// From the scheduler after the latest step.
    pub scheduler: SchedulerStats,
    /// Speculative decoding counters per method (empty when speculation is off).
    pub spec: Vec<SpecMethodStats>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            requests_received: 0,
            requests_finished: 0,
            requests_aborted: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            steps: 0,
            overlapped_steps: 0,
            batched_tokens: 0,
            step_seconds: 0.0,
            prompt_steps: 0,
            prompt_step_seconds: 0.0,
            step_phases: StepPhases::default(),
            ttft: Histogram::new(LATENCY_BUCKETS),
            itl: Histogram::new(LATENCY_BUCKETS),
            e2e: Histogram::new(LATENCY_BUCKETS),
            scheduler: SchedulerStats::default(),
            spec: Vec::new(),
        }
    }
}

impl EngineMetrics {
    pub fn record_step(
        &mut self,
        out: &SchedulerOutput,
        took: Duration,
        phases: StepPhases,
        stats: SchedulerStats,
    ) {
        self.steps += 1;
        self.step_phases.add(&phases);
        self.batched_tokens += out.num_batched_tokens as u64;
        self.step_seconds += took.as_secs_f64();
        // A decoding sequence takes one token plus its drafts; more is a prompt chunk.
        if out
            .scheduled
            .iter()
            .any(|s| s.num_new_tokens > s.num_spec_tokens + 1)
        {
            self.prompt_steps += 1;
            self.prompt_step_seconds += took.as_secs_f64();
        }
        self.scheduler = stats;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(new: usize, spec: usize) -> crate::scheduler::ScheduledSeq {
        crate::scheduler::ScheduledSeq {
            seq_id: crate::sequence::SeqId(0),
            num_new_tokens: new,
            num_computed_before: 10,
            num_spec_tokens: spec,
            produces_token: true,
        }
    }

    #[test]
    fn steps_with_prompt_tokens_are_counted_apart() {
        let mut m = EngineMetrics::default();
        let step = |seqs: Vec<crate::scheduler::ScheduledSeq>| SchedulerOutput {
            num_batched_tokens: seqs.iter().map(|s| s.num_new_tokens).sum(),
            scheduled: seqs,
            preempted: Vec::new(),
        };
        let ms = Duration::from_millis;
        let stats = SchedulerStats::default();
        // Decodes, a decode with 4 drafts, a mixed step, a prefill alone. (A prompt
        // chunk of one token counts as a decode: it costs as much.)
        m.record_step(
            &step(vec![seq(1, 0), seq(1, 0)]),
            ms(10),
            StepPhases::default(),
            stats,
        );
        m.record_step(&step(vec![seq(5, 4)]), ms(20), StepPhases::default(), stats);
        m.record_step(
            &step(vec![seq(1, 0), seq(300, 0)]),
            ms(40),
            StepPhases::default(),
            stats,
        );
        m.record_step(
            &step(vec![seq(512, 0)]),
            ms(80),
            StepPhases::default(),
            stats,
        );
        assert_eq!((m.steps, m.prompt_steps), (4, 2));
        assert!((m.step_seconds - 0.150).abs() < 1e-9);
        assert!((m.prompt_step_seconds - 0.120).abs() < 1e-9);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(3.0);
        assert_eq!(h.cumulative(), vec![1, 2]);
        assert_eq!(h.count, 3);
        assert!((h.sum - 3.55).abs() < 1e-12);
    }
}
