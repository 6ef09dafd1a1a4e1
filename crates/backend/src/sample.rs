//! Token sampling as a device op (`Device::sample`): the row parameters, the logit
//! adjustments, and the CPU reference of the GPU kernel (kernels/sampling.cu).
//!
//! The semantics are the engine's (`sluice_engine::sampling`): processors (bias,
//! repetition, presence/frequency), then greedy, or temperature, top-k, top-p, min-p and
//! one draw. The draw inverts the CDF of the kept tokens in id order with a uniform the
//! caller takes from the sequence's seeded generator, so a seed reproduces a run on the
//! same device; the engine's CPU sampler walks its candidates in another order, so the
//! same seed picks from the same distribution there, not always the same token.
//!
//! Penalties are given as what they are computed from (each token's bias, whether it was
//! seen, how often it was generated) with the row's penalty factors, not as net
//! adjustments, so that the sampler can count one more token the host has not seen:
//! with overlapped steps, step N+1 is sampled before the host reads step N's token, and
//! `SampleParams::pending_token_row` names where that token is on the device (the step's
//! input tokens). The result is the one the host would have computed after seeing it.
//!
//! Log-probabilities (`Device::logprobs`, kernels/sampling.cu `logprobs_kernel`) are of
//! the raw distribution (vLLM's and OpenAI's: before penalties, bias and temperature), so
//! the sampler leaves the logits as it found them: its adjustments are undone after the
//! draw, and the log-probabilities are taken after it, from the sampled ids, on the device.

use crate::error::{BackendError, Result};

/// One row's sampling parameters. Temperature 0 (or top-k 1) is greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// The draw, in `[0, 1)`.
    pub uniform: f32,
    /// The repetition penalty of seen tokens (1 = off; OpenAI/vLLM semantics: positive
    /// logits divided by it, negative ones multiplied).
    pub repetition: f32,
    /// Subtracted from the logit of every generated token: `presence + frequency ×
    /// count` (0 and 0 = off).
    pub presence: f32,
    pub frequency: f32,
    /// The row of the step's input tokens (`Device::sample`'s `tokens`) holding this
    /// sequence's previous token when the host has not counted it yet (overlapped
    /// steps): it counts as seen and generated once more. -1: none.
    pub pending_token_row: i32,
    /// This row's entries in the adjustment list: `adjust[start..start + len]`, at most
    /// one per token.
    pub adjust_start: u32,
    pub adjust_len: u32,
}

impl SampleParams {
    pub fn greedy() -> SampleParams {
        SampleParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            uniform: 0.0,
            repetition: 1.0,
            presence: 0.0,
            frequency: 0.0,
            pending_token_row: -1,
            adjust_start: 0,
            adjust_len: 0,
        }
    }

    /// One token's logit after the processors, in the host sampler's order and f32
    /// arithmetic (`sluice_engine::sampling::Sampler::process_logits`): bias, then the
    /// repetition penalty if seen, then the presence/frequency penalty if generated.
    pub fn adjusted(&self, a: &LogitAdjust, logit: f32) -> f32 {
        let mut v = logit + a.bias;
        if self.repetition != 1.0 && a.seen {
            v = if v > 0.0 {
                v / self.repetition
            } else {
                v * self.repetition
            };
        }
        if a.count > 0 && (self.presence != 0.0 || self.frequency != 0.0) {
            v -= self.presence + self.frequency * a.count as f32;
        }
        v
    }

    fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// What the processors need to know of one token of a row (`SampleParams::adjusted`):
/// its logit bias, whether it was seen (prompt or output; for the repetition penalty)
/// and how many times it was generated (for the presence and frequency penalties).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitAdjust {
    pub token: u32,
    pub bias: f32,
    pub seen: bool,
    pub count: u32,
}

/// Checks the rows against the logits, the adjustment list and the step's tokens (how
/// many there are; none given: 0).
pub(crate) fn check(
    rows: &[SampleParams],
    adjust: &[LogitAdjust],
    n_rows: usize,
    n_tokens: usize,
) -> Result<()> {
    if let Some(r) = rows
        .iter()
        .find(|r| r.pending_token_row >= 0 && r.pending_token_row as usize >= n_tokens)
    {
        return Err(BackendError::Shape(format!(
            "sample: pending token row {} of {n_tokens} step tokens",
            r.pending_token_row
        )));
    }
    if rows.len() != n_rows {
        return Err(BackendError::Shape(format!(
            "sample: {} parameter rows for {n_rows} logits rows",
            rows.len()
        )));
    }
    for r in rows {
        let end = r.adjust_start as usize + r.adjust_len as usize;
        if end > adjust.len() {
            return Err(BackendError::Shape(format!(
                "sample: adjustments {}..{end} of {}",
                r.adjust_start,
                adjust.len()
            )));
        }
    }
    Ok(())
}

/// Monotone map of a float to an unsigned key (the kernel's `order_key`).
fn order_key(f: f32) -> u32 {
    let u = f.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// The largest key `K` with `f(K) >= want`, for `f` non-increasing in `K` (a bitwise
/// search from the top bit, as the kernel does).
fn largest_key(want: f64, f: impl Fn(u32) -> f64) -> u32 {
    let mut prefix = 0u32;
    for b in (0..32).rev() {
        let cand = prefix | (1 << b);
        if f(cand) >= want {
            prefix = cand;
        }
    }
    prefix
}

/// The reference: applies the row's adjustments to `logits` (with `pending`, the token
/// at the row's `pending_token_row`, counted once more), returns the sampled id and
/// leaves `logits` as they were (the adjusted values are restored, bit for bit). Sums in
/// f64, as the kernel does (their orders differ, so the last bits may too).
pub fn sample_row(
    p: &SampleParams,
    adjust: &[LogitAdjust],
    pending: Option<u32>,
    logits: &mut [f32],
) -> u32 {
    let entries = with_pending(adjust, pending);
    let raw: Vec<(usize, f32)> = entries
        .iter()
        .filter_map(|a| {
            let i = a.token as usize;
            logits.get(i).map(|&l| (i, l))
        })
        .collect();
    let id = sample_adjusted_row(p, &entries, logits);
    for (i, l) in raw {
        logits[i] = l;
    }
    id
}

/// The row's entries with the pending token counted: its entry seen and generated once
/// more, or a new entry when it had none.
fn with_pending(adjust: &[LogitAdjust], pending: Option<u32>) -> Vec<LogitAdjust> {
    let mut entries = adjust.to_vec();
    if let Some(t) = pending {
        match entries.iter_mut().find(|a| a.token == t) {
            Some(a) => {
                a.seen = true;
                a.count += 1;
            }
            None => entries.push(LogitAdjust {
                token: t,
                bias: 0.0,
                seen: true,
                count: 1,
            }),
        }
    }
    entries
}

fn sample_adjusted_row(p: &SampleParams, adjust: &[LogitAdjust], logits: &mut [f32]) -> u32 {
    for a in adjust {
        if let Some(l) = logits.get_mut(a.token as usize) {
            *l = p.adjusted(a, *l);
        }
    }
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    if p.is_greedy() || logits.is_empty() {
        return best as u32;
    }
    let inv_t = 1.0 / p.temperature;
    let scaled: Vec<f32> = logits.iter().map(|&l| l * inv_t).collect();
    let mx = scaled[best];
    let keys: Vec<u32> = scaled.iter().map(|&l| order_key(l)).collect();
    let weight = |i: usize| ((scaled[i] - mx) as f64).exp();
    let k = p.top_k as usize;
    let kth = if k > 0 && k < logits.len() {
        largest_key(k as f64, |c| {
            keys.iter().filter(|&&x| x >= c).count() as f64
        })
    } else {
        0
    };
    let mass = |lo: u32| -> f64 {
        (0..logits.len())
            .filter(|&i| keys[i] >= lo)
            .map(weight)
            .sum()
    };
    let z = mass(kth);
    let keep = if p.top_p < 1.0 {
        largest_key(p.top_p as f64 * z, |c| mass(c.max(kth))).max(kth)
    } else {
        kth
    };
    let w = |i: usize| -> f64 {
        if keys[i] < keep {
            return 0.0;
        }
        let e = weight(i);
        if p.min_p > 0.0 && e < p.min_p as f64 {
            0.0
        } else {
            e
        }
    };
    let total: f64 = (0..logits.len()).map(w).sum();
    let target = (p.uniform as f64 * total).max(1e-30);
    let mut acc = 0.0;
    let mut last = best;
    for i in 0..logits.len() {
        let wi = w(i);
        if wi > 0.0 {
            last = i;
            acc += wi;
            if acc >= target {
                return i as u32;
            }
        }
    }
    last as u32
}

/// The most alternatives a log-probability record holds (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// f32 values per record of `Device::logprobs`: the sampled token's log-probability, the
/// row's log-sum-exp, then `MAX_TOP_LOGPROBS` pairs (id as i32 bits, log-probability),
/// most likely first; unused pairs have id -1.
pub const LOGPROB_RECORD: usize = 2 + 2 * MAX_TOP_LOGPROBS;

/// One row that wants log-probabilities: its row in the logits (and ids), and how many
/// alternatives (at most `MAX_TOP_LOGPROBS`; more are cut there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogprobAsk {
    pub row: u32,
    pub n: u32,
}

/// `log(sum(exp(x)))`, stable; NaN when a value is NaN, the maximum when it is infinite.
/// The sum is in f64, as on the GPU: an f32 running sum over a 49k-256k vocabulary
/// drifts by 1e-5 relative (many equal terms round the same way), more than the two
/// devices' different summation orders (measured on an H200: 1.2e-4 on a log-probability
/// of -14 with the f32 sum).
pub fn log_sum_exp(x: &[f32]) -> f32 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return m;
    }
    let s: f64 = x.iter().map(|v| (v - m).exp() as f64).sum();
    m + s.ln() as f32
}

/// The `n` most likely tokens with their log-probabilities, most likely first (equal
/// logits: the smaller id first; NaN never listed). One pass with a buffer of the `n`
/// best so far: nearly every logit is turned away by one comparison.
pub fn top_logprobs(logits: &[f32], lse: f32, n: usize) -> Vec<(u32, f32)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || (top.len() == n && l <= top[n - 1].1) {
            continue;
        }
        let at = top.partition_point(|&(_, v)| v >= l);
        top.insert(at, (i as u32, l));
        top.truncate(n);
    }
    top.into_iter().map(|(i, l)| (i, l - lse)).collect()
}

/// The reference of one record (`LOGPROB_RECORD` values) for a row of raw logits whose
/// sampled token is `id`.
pub fn logprob_record(logits: &[f32], id: i32, n: usize, rec: &mut [f32]) {
    let lse = log_sum_exp(logits);
    rec[0] = usize::try_from(id)
        .ok()
        .and_then(|i| logits.get(i))
        .map_or(f32::NAN, |l| l - lse);
    rec[1] = lse;
    let top = top_logprobs(logits, lse, n.min(MAX_TOP_LOGPROBS));
    for (j, pair) in rec[2..LOGPROB_RECORD].chunks_exact_mut(2).enumerate() {
        let (id, lp) = top.get(j).map_or((-1, 0.0), |&(i, l)| (i as i32, l));
        pair[0] = f32::from_bits(id as u32);
        pair[1] = lp;
    }
}

/// A record read back: the sampled token's log-probability and the first `n`
/// alternatives (fewer when the row had fewer finite-or-infinite logits).
pub fn read_logprob_record(rec: &[f32], n: usize) -> (f32, Vec<(u32, f32)>) {
    let top = rec[2..LOGPROB_RECORD.min(rec.len())]
        .chunks_exact(2)
        .take(n)
        .map_while(|p| {
            u32::try_from(p[0].to_bits() as i32)
                .ok()
                .map(|id| (id, p[1]))
        })
        .collect();
    (rec[0], top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: u32, top_p: f32, min_p: f32, u: f32) -> SampleParams {
        SampleParams {
            temperature: t,
            top_k: k,
            top_p,
            min_p,
            uniform: u,
            ..SampleParams::greedy()
        }
    }

    #[test]
    fn keys_preserve_order() {
        let xs = [
            -3.5f32,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for a in xs {
            for b in xs {
                if a < b {
                    assert!(order_key(a) < order_key(b), "{a} {b}");
                }
            }
        }
    }

    #[test]
    fn truncation_keeps_the_right_sets() {
        // Probabilities ∝ e^l: 0.5, 0.25, 0.125, 0.0625, ... over 8 tokens (ids shuffled).
        let order = [3usize, 0, 6, 1, 7, 2, 5, 4];
        let mut logits = vec![0f32; 8];
        for (rank, &id) in order.iter().enumerate() {
            logits[id] = -(rank as f32) * std::f32::consts::LN_2;
        }
        let kept = |p: SampleParams| -> Vec<u32> {
            let mut ids: Vec<u32> = (0..400)
                .map(|i| {
                    let q = SampleParams {
                        uniform: i as f32 / 400.0,
                        ..p
                    };
                    sample_row(&q, &[], None, &mut logits.clone())
                })
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        assert_eq!(kept(params(0.0, 0, 1.0, 0.0, 0.5)), vec![3]);
        assert_eq!(kept(params(1.0, 2, 1.0, 0.0, 0.0)), vec![0, 3]);
        assert_eq!(kept(params(1.0, 3, 1.0, 0.0, 0.0)), vec![0, 3, 6]);
        // top_p 0.7: 0.5 + 0.25 reaches it.
        assert_eq!(kept(params(1.0, 0, 0.7, 0.0, 0.0)), vec![0, 3]);
        // top_p 0.8: needs the third token too.
        assert_eq!(kept(params(1.0, 0, 0.8, 0.0, 0.0)), vec![0, 3, 6]);
        // min_p 0.2: p >= 0.1 keeps 0.5, 0.25, 0.125.
        assert_eq!(kept(params(1.0, 0, 1.0, 0.2, 0.0)), vec![0, 3, 6]);
        // Everything is reachable without truncation.
        assert_eq!(kept(params(1.0, 0, 1.0, 0.0, 0.0)).len(), 8);
    }

    #[test]
    fn draws_follow_the_distribution_in_id_order() {
        // p = [0.1, 0.2, 0.3, 0.4]: u in [0, 0.1) -> 0, [0.1, 0.3) -> 1, ...
        let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        for (u, want) in [
            (0.05, 0),
            (0.15, 1),
            (0.29, 1),
            (0.31, 2),
            (0.61, 3),
            (0.999, 3),
        ] {
            let got = sample_row(&params(1.0, 0, 1.0, 0.0, u), &[], None, &mut logits.clone());
            assert_eq!(got, want, "u = {u}");
        }
    }

    #[test]
    fn adjustments_apply_bias_then_repetition_then_penalty() {
        let mut l = vec![2.0f32, -2.0, 1.0, 0.5];
        let p = SampleParams {
            repetition: 2.0,
            presence: 0.25,
            frequency: 0.5,
            ..SampleParams::greedy()
        };
        let adj = [
            // (2 + 1) / 2 - (0.25 + 0.5 × 1)
            LogitAdjust {
                token: 0,
                bias: 1.0,
                seen: true,
                count: 1,
            },
            // seen in the prompt only: -2 × 2
            LogitAdjust {
                token: 1,
                bias: 0.0,
                seen: true,
                count: 0,
            },
        ];
        let before = l.clone();
        assert_eq!(sample_adjusted_row(&p, &adj, &mut l), 2);
        assert_eq!(l, vec![0.75, -4.0, 1.0, 0.5]);
        // The sampler proper restores the raw logits (log-probabilities read them).
        let mut l = before.clone();
        assert_eq!(sample_row(&p, &adj, None, &mut l), 2);
        assert_eq!(l, before);
        let mut l = before.clone();
        let hot = SampleParams {
            temperature: 0.8,
            top_p: 0.9,
            uniform: 0.3,
            ..p
        };
        sample_row(&hot, &adj, None, &mut l);
        assert_eq!(l, before);
    }

    /// A pending token (overlapped steps) counts as seen and generated once more: the
    /// same choice as entries that already include it, and a token without an entry
    /// gets one.
    #[test]
    fn a_pending_token_counts_once_more() {
        let p = SampleParams {
            repetition: 1.5,
            presence: 0.5,
            frequency: 1.0,
            ..SampleParams::greedy()
        };
        let logits = vec![3.0f32, 2.9, 2.8, -1.0];
        let seen_once = LogitAdjust {
            token: 0,
            bias: 0.0,
            seen: true,
            count: 1,
        };
        // Token 0 generated once and pending once more = generated twice.
        let twice = LogitAdjust {
            count: 2,
            ..seen_once
        };
        let biased = LogitAdjust {
            token: 2,
            bias: -5.0,
            seen: false,
            count: 0,
        };
        assert_eq!(with_pending(&[seen_once], Some(0)), vec![twice]);
        let new_entry = |t| LogitAdjust {
            token: t,
            bias: 0.0,
            seen: true,
            count: 1,
        };
        assert_eq!(
            with_pending(&[seen_once, biased], Some(3)),
            vec![seen_once, biased, new_entry(3)]
        );
        let biased_seen = LogitAdjust {
            seen: true,
            count: 1,
            ..biased
        };
        assert_eq!(
            with_pending(&[seen_once, biased], Some(2)),
            vec![seen_once, biased_seen]
        );
        assert_eq!(with_pending(&[biased], None), vec![biased]);
        // Without it token 0 (3 / 1.5 - 1.5 = 0.5) loses to 2.9; pending, to 2.8 too.
        let mut l = logits.clone();
        assert_eq!(sample_row(&p, &[seen_once], None, &mut l), 1);
        assert_eq!(sample_row(&p, &[seen_once], Some(1), &mut l), 2);
    }

    #[test]
    fn logprob_records_round_trip() {
        let logits = [1.0f32, 3.0, f32::NAN, 3.0, -0.5, f32::NEG_INFINITY];
        let mut rec = [0f32; LOGPROB_RECORD];
        logprob_record(&logits, 3, 4, &mut rec);
        // A NaN logit makes the log-sum-exp NaN, as on the host.
        assert!(rec[1].is_nan());
        let finite = [1.0f32, 3.0, 0.25, 3.0, -0.5, f32::NEG_INFINITY];
        logprob_record(&finite, 3, 30, &mut rec);
        let lse = log_sum_exp(&finite);
        assert_eq!(rec[0], 3.0 - lse);
        let (lp, top) = read_logprob_record(&rec, 30);
        assert_eq!(lp, 3.0 - lse);
        // All six, ties by id, -inf last; a request for 30 is cut at the row's length.
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 0, 2, 4, 5]);
        assert_eq!(top[5].1, f32::NEG_INFINITY);
        let (_, two) = read_logprob_record(&rec, 2);
        assert_eq!(two, top[..2].to_vec());
    }
}
