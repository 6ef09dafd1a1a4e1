//! Verification of draft tokens against the target's logits, shared by every proposer.
//!
//! Rows: for a sequence whose last known token is `t` and drafts `d_0..d_{k-1}`, the
//! step fed `t, d_0, .., d_{k-1}`; logits row `j` is the target's distribution for the
//! position of `d_j` (row `k`: the token after the last draft).
//!
//! - Greedy: the target's token of row `j` (argmax after the penalties, exactly what
//!   plain decoding computes) is emitted; continue while it equals `d_j`. The output is
//!   the target's greedy output token for token.
//! - Temperature > 0: modified rejection sampling (Leviathan et al. 2023, Algorithm 1;
//!   Chen et al. 2023, Algorithm 2). With `p` the target's sampling distribution of row
//!   `j` (every processor applied: penalties, temperature, top-k/top-p/min-p) and `q`
//!   the distribution `d_j` was drawn from, accept `d_j` with probability
//!   `min(1, p(d_j) / q(d_j))`; on rejection emit a token drawn from
//!   `norm(max(0, p - q))` and stop. When every draft is accepted, row `k` gives one
//!   more token drawn from `p`. Each emitted token is then distributed exactly as `p`
//!   (the theorem of both papers), so the sequence is distributed as without
//!   speculation. Deterministic drafts (n-gram lookup) have `q` a point mass on `d_j`:
//!   accept with probability `p(d_j)`, else draw from `p` with `d_j` removed.
//!
//! Penalties depend on the output so far, so rows are processed in order and each
//! accepted token is observed by the sampler before the next row is processed: row `j`
//! sees the same history as plain decoding would at that position.

use crate::sampling::{raw_logprobs, SampledToken, Sampler, SamplingParams};

/// Scratch buffers reused across sequences and steps.
#[derive(Default)]
pub struct VerifyScratch {
    /// `[vocab]` the target's sampling distribution of the current row
    p: Vec<f32>,
    /// `[vocab]` `max(0, p - q)`
    residual: Vec<f32>,
    /// `[vocab]` unprocessed logits of the current row (for logprobs)
    raw: Vec<f32>,
}

/// Verifies `drafts` (`[k]`) against `rows` (`[k + 1, vocab]` target logits, processed
/// in place) and appends the emitted tokens to `out` (the accepted drafts, then the
/// target's own token), their logprobs to `logprobs` when `params.logprobs` is set.
/// Stops early after a token for which `is_stop` holds. `draft_probs` is `[k', vocab]`
/// with `k' >= k` (the `q` of each draft), or empty for deterministic drafts. Returns
/// the number of accepted drafts.
#[allow(clippy::too_many_arguments)]
pub fn verify_seq(
    sampler: &mut Sampler,
    params: &SamplingParams,
    rows: &mut [f32],
    vocab: usize,
    drafts: &[u32],
    draft_probs: &[f32],
    is_stop: impl Fn(u32) -> bool,
    scratch: &mut VerifyScratch,
    out: &mut Vec<u32>,
    logprobs: &mut Vec<SampledToken>,
) -> Result<usize, String> {
    let k = drafts.len();
    if rows.len() != (k + 1) * vocab {
        return Err(format!(
            "{} logits for {k} drafts of a vocabulary of {vocab}",
            rows.len()
        ));
    }
    if !draft_probs.is_empty() && draft_probs.len() < k * vocab {
        return Err(format!(
            "{} draft probabilities for {k} drafts of a vocabulary of {vocab}",
            draft_probs.len()
        ));
    }
    if let Some(&d) = drafts.iter().find(|&&d| d as usize >= vocab) {
        return Err(format!(
            "draft token {d} is outside the vocabulary of {vocab}"
        ));
    }
    let want_lp = params.logprobs.is_some();
    let mut emit = |t: SampledToken, sampler: &mut Sampler, out: &mut Vec<u32>| {
        sampler.observe(t.id);
        out.push(t.id);
        if want_lp {
            logprobs.push(t);
        }
    };
    for j in 0..=k {
        let row = &mut rows[j * vocab..(j + 1) * vocab];
        if j == k || params.is_greedy() {
            // The plain decoding path: exactly what the step would sample without drafts.
            let t = sampler.sample(params, row);
            let id = t.id;
            emit(t, sampler, out);
            if j == k || id != drafts[j] || is_stop(id) {
                return Ok(if j < k && id == drafts[j] { j + 1 } else { j });
            }
            continue;
        }
        if want_lp {
            scratch.raw.clear();
            scratch.raw.extend_from_slice(row);
        }
        sampler.target_probs(params, row, &mut scratch.p);
        let d = drafts[j];
        let q_row = (!draft_probs.is_empty()).then(|| &draft_probs[j * vocab..(j + 1) * vocab]);
        let px = scratch.p[d as usize];
        let qx = q_row.map_or(1.0, |q| q[d as usize]);
        let u = sampler.uniform();
        // Accept with probability min(1, p/q): u < p/q  <=>  u*q < p (q > 0).
        if qx > 0.0 && u * qx < px {
            emit(raw_logprobs(&scratch.raw, d, params.logprobs), sampler, out);
            if is_stop(d) {
                return Ok(j + 1);
            }
            continue;
        }
        // Rejected: draw from norm(max(0, p - q)).
        scratch.residual.clear();
        match q_row {
            Some(q) => scratch
                .residual
                .extend(scratch.p.iter().zip(q).map(|(p, q)| (p - q).max(0.0))),
            None => {
                scratch.residual.extend_from_slice(&scratch.p);
                scratch.residual[d as usize] = 0.0;
            }
        }
        let mass: f32 = scratch.residual.iter().sum();
        // p == q up to rounding leaves no residual mass (and rejection had probability
        // ~0): draw from p itself.
        let id = if mass > 1e-6 {
            sampler.sample_weights(&scratch.residual)
        } else {
            sampler.sample_weights(&scratch.p)
        };
        emit(
            raw_logprobs(&scratch.raw, id, params.logprobs),
            sampler,
            out,
        );
        return Ok(j);
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            seed: Some(seed),
            ..Default::default()
        }
    }

    fn softmax(l: &[f32]) -> Vec<f64> {
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = l.iter().map(|x| ((x - m) as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect()
    }

    #[test]
    fn greedy_accepts_the_matching_prefix_and_emits_the_targets_token() {
        let vocab = 4;
        // Row argmaxes: 2, 1, 3.
        let base = vec![
            0.0, 0.1, 5.0, 0.2, //
            0.0, 4.0, 0.1, 0.2, //
            0.0, 0.0, 0.1, 3.0,
        ];
        let p = params(0.0, 1);
        let mut s = Sampler::new(&p, &[]);
        let mut sc = VerifyScratch::default();
        let (mut out, mut lp) = (Vec::new(), Vec::new());
        let acc = verify_seq(
            &mut s,
            &p,
            &mut base.clone(),
            vocab,
            &[2, 1],
            &[],
            |_| false,
            &mut sc,
            &mut out,
            &mut lp,
        )
        .unwrap();
        assert_eq!((acc, out.as_slice()), (2, &[2, 1, 3][..]));
        out.clear();
        let acc = verify_seq(
            &mut s,
            &p,
            &mut base.clone(),
            vocab,
            &[2, 0],
            &[],
            |_| false,
            &mut sc,
            &mut out,
            &mut lp,
        )
        .unwrap();
        assert_eq!((acc, out.as_slice()), (1, &[2, 1][..]));
        out.clear();
        let acc = verify_seq(
            &mut s,
            &p,
            &mut base.clone(),
            vocab,
            &[3, 1],
            &[],
            |_| false,
            &mut sc,
            &mut out,
            &mut lp,
        )
        .unwrap();
        assert_eq!((acc, out.as_slice()), (0, &[2][..]));
        // A stop token among accepted drafts ends the step there.
        out.clear();
        let acc = verify_seq(
            &mut s,
            &p,
            &mut base.clone(),
            vocab,
            &[2, 1],
            &[],
            |t| t == 2,
            &mut sc,
            &mut out,
            &mut lp,
        )
        .unwrap();
        assert_eq!((acc, out.as_slice()), (1, &[2][..]));
        // Wrong shapes are errors, not panics.
        assert!(verify_seq(
            &mut s,
            &p,
            &mut base.clone(),
            vocab,
            &[2],
            &[],
            |_| false,
            &mut sc,
            &mut out,
            &mut lp
        )
        .is_err());
        assert!(verify_seq(
            &mut s,
            &p,
            &mut base.clone(),
            vocab,
            &[2, 9],
            &[],
            |_| false,
            &mut sc,
            &mut out,
            &mut lp
        )
        .is_err());
    }

    /// Chi-square over the first emitted token: for a one-draft verification with a
    /// draft distribution `q` far from `p`, the emitted token must follow `p`. 0.1%
    /// level with df = 4 (critical value 18.47); fixed seeds, so it cannot flake.
    #[test]
    fn rejection_sampling_preserves_the_target_distribution() {
        let vocab = 5;
        let target = [1.0f32, 0.2, -0.5, 0.8, -1.0];
        let q: Vec<f32> = vec![0.05, 0.6, 0.05, 0.1, 0.2];
        let p_exact = softmax(&target);
        let n = 40_000;
        for deterministic in [false, true] {
            let mut counts = [0f64; 5];
            let p = params(1.0, 7);
            let mut s = Sampler::new(&p, &[]);
            let mut draw = rand_chacha::ChaCha8Rng::seed_from_u64(99);
            let mut sc = VerifyScratch::default();
            let (mut out, mut lp) = (Vec::new(), Vec::new());
            for _ in 0..n {
                // The draft is drawn from q (or always token 1 when deterministic).
                let d = if deterministic {
                    1
                } else {
                    let u: f32 = draw.random();
                    let mut acc = 0.0;
                    let mut pick = vocab as u32 - 1;
                    for (i, &w) in q.iter().enumerate() {
                        acc += w;
                        if u < acc {
                            pick = i as u32;
                            break;
                        }
                    }
                    pick
                };
                let mut rows: Vec<f32> = target.iter().chain(target.iter()).copied().collect();
                out.clear();
                let probs: &[f32] = if deterministic { &[] } else { &q };
                verify_seq(
                    &mut s,
                    &p,
                    &mut rows,
                    vocab,
                    &[d],
                    probs,
                    |_| false,
                    &mut sc,
                    &mut out,
                    &mut lp,
                )
                .unwrap();
                counts[out[0] as usize] += 1.0;
            }
            let chi2: f64 = (0..vocab)
                .map(|i| {
                    let e = n as f64 * p_exact[i];
                    (counts[i] - e).powi(2) / e
                })
                .sum();
            assert!(
                chi2 < 18.47,
                "deterministic={deterministic}: chi2 = {chi2}, counts {counts:?}"
            );
        }
    }

    use rand::{Rng, SeedableRng};
}
