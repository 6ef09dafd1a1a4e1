//! Token sampling: logit processors, then greedy or seeded random sampling.
//!
//! Order (as vLLM and llama.cpp apply them): logit bias -> repetition penalty (CTRL,
//! Keskar et al. 2019: divide positive logits, multiply negative ones, for every token
//! seen in prompt or output) -> presence/frequency penalties (OpenAI: subtract
//! `presence * [count > 0] + frequency * count` over output tokens) -> temperature ->
//! top-k -> top-p (nucleus, Holtzman et al. 2020) -> min-p (relative to the top
//! probability) -> sample. Temperature 0 means greedy (argmax after the penalties).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Per-request sampling settings, already validated.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// Same seed and parameters give the same tokens.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Number of top alternatives to return log-probabilities for (None = no logprobs).
    pub logprobs: Option<usize>,
    pub skip_special_tokens: bool,
    /// This request's speculative decoding choice (None: the engine's default).
    pub speculative: Option<crate::spec::SpecOverride>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            skip_special_tokens: true,
            speculative: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    /// Greedy with no logit processor: the token is the argmax of the raw logits, so a
    /// GPU engine can pick it on the device and copy only the id (and, for
    /// log-probabilities, the row's logits).
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy()
            && self.logit_bias.is_empty()
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }

    /// Whether sampling reads the sequence's own tokens (repetition, presence or
    /// frequency penalties): with overlapped steps the device sampler must count the
    /// token still in flight (`SampleParams::pending_token_row`).
    pub fn depends_on_history(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// Checks ranges; the error names the parameter.
    pub fn validate(&self, vocab_size: usize) -> Result<(), (String, &'static str)> {
        let bad = |msg: String, p: &'static str| Err((msg, p));
        if !(self.temperature.is_finite() && (0.0..=100.0).contains(&self.temperature)) {
            return bad(
                format!("temperature must be in [0, 100], got {}", self.temperature),
                "temperature",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(
                format!("top_p must be in (0, 1], got {}", self.top_p),
                "top_p",
            );
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(
                format!("min_p must be in [0, 1], got {}", self.min_p),
                "min_p",
            );
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                format!(
                    "repetition_penalty must be > 0, got {}",
                    self.repetition_penalty
                ),
                "repetition_penalty",
            );
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad(
                format!(
                    "presence_penalty must be in [-2, 2], got {}",
                    self.presence_penalty
                ),
                "presence_penalty",
            );
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad(
                format!(
                    "frequency_penalty must be in [-2, 2], got {}",
                    self.frequency_penalty
                ),
                "frequency_penalty",
            );
        }
        for &(id, b) in &self.logit_bias {
            if id as usize >= vocab_size {
                return bad(
                    format!("logit_bias token {id} is outside the vocabulary"),
                    "logit_bias",
                );
            }
            if !(-100.0..=100.0).contains(&b) {
                return bad(
                    format!("logit_bias values must be in [-100, 100], got {b}"),
                    "logit_bias",
                );
            }
        }
        if let Some(id) = self
            .stop_token_ids
            .iter()
            .find(|&&id| id as usize >= vocab_size)
        {
            return bad(
                format!("stop_token_ids: {id} is outside the vocabulary"),
                "stop_token_ids",
            );
        }
        if self.logprobs.is_some_and(|n| n > 20) {
            return bad("top_logprobs must be at most 20".into(), "top_logprobs");
        }
        if let Some(o) = &self.speculative {
            o.validate()?;
        }
        Ok(())
    }
}

/// A sampled token with its log-probability and the top alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    pub id: u32,
    /// log p(id) under the model's (unprocessed) distribution, when logprobs were asked.
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Per-sequence sampler state: the RNG and token counts for the penalties.
pub struct Sampler {
    rng: ChaCha8Rng,
    /// token -> count in the output so far (presence/frequency penalties)
    output_counts: std::collections::HashMap<u32, u32>,
    /// tokens of the prompt (repetition penalty)
    prompt_tokens: std::collections::HashSet<u32>,
    /// scratch: (id, logit) candidates
    cand: Vec<(u32, f32)>,
    /// scratch: unprocessed logits, kept only when logprobs are asked for
    raw: Vec<f32>,
}

impl Sampler {
    pub fn new(params: &SamplingParams, prompt: &[u32]) -> Sampler {
        let rng = match params.seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        let prompt_tokens = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            Default::default()
        };
        Sampler {
            rng,
            output_counts: Default::default(),
            prompt_tokens,
            cand: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// Records a token the sequence produced (for penalties).
    pub fn observe(&mut self, id: u32) {
        *self.output_counts.entry(id).or_insert(0) += 1;
    }

    /// Applies the processors to `logits` in place and picks a token.
    pub fn sample(&mut self, p: &SamplingParams, logits: &mut [f32]) -> SampledToken {
        // Log-probabilities are reported under the model's own distribution (before any
        // processor), as vLLM does by default.
        let raw = p.logprobs.map(|n| {
            self.raw.clear();
            self.raw.extend_from_slice(logits);
            let lse = log_sum_exp(logits);
            (lse, top_logprobs(logits, lse, n))
        });
        self.process_logits(p, logits);
        let id = if p.is_greedy() {
            argmax(logits)
        } else {
            self.sample_random(p, logits)
        };
        match raw {
            Some((lse, top)) => SampledToken {
                id,
                logprob: self.raw.get(id as usize).map(|l| l - lse),
                top_logprobs: top,
            },
            None => SampledToken {
                id,
                logprob: None,
                top_logprobs: Vec::new(),
            },
        }
    }

    /// The logit processors before temperature: bias, repetition, presence and
    /// frequency penalties (in place).
    pub fn process_logits(&mut self, p: &SamplingParams, logits: &mut [f32]) {
        for &(id, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            let rp = p.repetition_penalty;
            // Once per token, whether it appeared in the prompt, the output or both.
            let seen = self.prompt_tokens.iter().chain(
                self.output_counts
                    .keys()
                    .filter(|id| !self.prompt_tokens.contains(id)),
            );
            for &id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / rp } else { *l * rp };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &c) in &self.output_counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * c as f32;
                }
            }
        }
    }

    /// What the processors of `process_logits` read, as one entry per affected token
    /// (for `Device::sample`, which applies them with the row's penalty factors),
    /// appended to `out`: each token's summed bias, whether it was seen (prompt or
    /// output, when there is a repetition penalty) and how often it was generated (when
    /// there is a presence or frequency penalty). Counts rather than net values let the
    /// device count a token the host has not seen yet (overlapped steps).
    pub fn logit_adjustments(
        &self,
        p: &SamplingParams,
        out: &mut Vec<sluice_backend::LogitAdjust>,
    ) {
        use sluice_backend::LogitAdjust;
        fn entry(
            m: &mut std::collections::BTreeMap<u32, LogitAdjust>,
            id: u32,
        ) -> &mut LogitAdjust {
            m.entry(id).or_insert(LogitAdjust {
                token: id,
                bias: 0.0,
                seen: false,
                count: 0,
            })
        }
        let mut by_token = std::collections::BTreeMap::new();
        for &(id, b) in &p.logit_bias {
            entry(&mut by_token, id).bias += b;
        }
        if p.repetition_penalty != 1.0 {
            for &id in self.prompt_tokens.iter().chain(self.output_counts.keys()) {
                entry(&mut by_token, id).seen = true;
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &c) in &self.output_counts {
                entry(&mut by_token, id).count = c;
            }
        }
        out.extend(by_token.into_values());
    }

    /// The exact distribution `sample` draws from (speculative verification needs it):
    /// processors, then temperature / top-k / top-p / min-p, written densely into
    /// `out` (`[vocab]`; a one-hot argmax when greedy). `logits` is processed in place.
    pub fn target_probs(&mut self, p: &SamplingParams, logits: &mut [f32], out: &mut Vec<f32>) {
        self.process_logits(p, logits);
        dense_probs(p, logits, &mut self.cand, out);
    }

    /// A uniform draw in `[0, 1)` from this sequence's generator.
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }

    /// Draws from an unnormalised distribution `weights` (`[vocab]`, >= 0); the argmax
    /// when they sum to zero.
    pub fn sample_weights(&mut self, weights: &[f32]) -> u32 {
        let total: f32 = weights.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            return argmax(weights);
        }
        let mut r = self.rng.random::<f32>() * total;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                last = i;
                r -= w;
                if r <= 0.0 {
                    return i as u32;
                }
            }
        }
        last as u32
    }

    fn sample_random(&mut self, p: &SamplingParams, logits: &[f32]) -> u32 {
        truncated_candidates(p, logits, &mut self.cand);
        let cand = &self.cand;
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for c in cand.iter() {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        cand.last().map(|c| c.0).unwrap_or(0)
    }
}

/// The sampling distribution after temperature, top-k, top-p and min-p, densely in
/// `out` (`[vocab]`, zeros outside the kept candidates); a one-hot argmax when greedy.
/// No penalties (see `Sampler::target_probs`). `cand` is scratch.
pub fn dense_probs(
    p: &SamplingParams,
    logits: &[f32],
    cand: &mut Vec<(u32, f32)>,
    out: &mut Vec<f32>,
) {
    out.clear();
    out.resize(logits.len(), 0.0);
    if p.is_greedy() {
        if !logits.is_empty() {
            out[argmax(logits) as usize] = 1.0;
        }
        return;
    }
    truncated_candidates(p, logits, cand);
    let total: f32 = cand.iter().map(|c| c.1).sum();
    for &(id, w) in cand.iter() {
        out[id as usize] = w / total;
    }
}

/// Candidates `(id, probability)` after temperature, top-k, top-p and min-p (the kept
/// ones sum to at most 1; callers normalise by their sum).
fn truncated_candidates(p: &SamplingParams, logits: &[f32], cand: &mut Vec<(u32, f32)>) {
    let inv_t = 1.0 / p.temperature;
    cand.clear();
    cand.extend(
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l * inv_t)),
    );
    // top-k: keep the k largest (unordered partition, O(V)).
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
        cand.truncate(p.top_k);
    }
    // Softmax over the candidates.
    let m = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut z = 0f32;
    for c in cand.iter_mut() {
        c.1 = (c.1 - m).exp();
        z += c.1;
    }
    for c in cand.iter_mut() {
        c.1 /= z;
    }
    if p.top_p < 1.0 || p.min_p > 0.0 {
        // Most of the mass sits in few tokens: partition off the top 1024 before sorting
        // and fall back to a full sort only if they do not reach top_p.
        let head = 1024.min(cand.len());
        if head < cand.len() {
            cand.select_nth_unstable_by(head - 1, |a, b| b.1.total_cmp(&a.1));
        }
        cand[..head].sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let mass: f32 = cand[..head].iter().map(|c| c.1).sum();
        if mass < p.top_p && head < cand.len() {
            cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        } else {
            cand.truncate(head);
        }
        if p.top_p < 1.0 {
            let mut cum = 0f32;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                cum += c.1;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let floor = cand[0].1 * p.min_p;
            let keep = cand.iter().take_while(|c| c.1 >= floor).count();
            cand.truncate(keep.max(1));
        }
    }
}

/// A token's log-probability and top alternatives under the unprocessed `logits`
/// (what `Sampler::sample` reports), for tokens chosen by speculative verification.
pub fn raw_logprobs(logits: &[f32], id: u32, n: Option<usize>) -> SampledToken {
    match n {
        Some(n) => {
            let lse = log_sum_exp(logits);
            SampledToken {
                id,
                logprob: logits.get(id as usize).map(|l| l - lse),
                top_logprobs: top_logprobs(logits, lse, n),
            }
        }
        None => SampledToken {
            id,
            logprob: None,
            top_logprobs: Vec::new(),
        },
    }
}

/// Index of the largest logit (first on ties, like torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > bv {
            bv = v;
            best = i;
        }
    }
    best as u32
}

/// The log-sum-exp and the top alternatives are the backend's, which the CPU device's
/// `logprobs` shares: the host sampler and the device sampler agree bit for bit there.
pub use sluice_backend::sample::{log_sum_exp, top_logprobs};

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            seed: Some(42),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_is_argmax_after_penalties() {
        let mut s = Sampler::new(&params(0.0), &[]);
        let mut l = vec![0.0, 3.0, 2.9, -1.0];
        assert_eq!(s.sample(&params(0.0), &mut l.clone()).id, 1);
        // A frequency penalty on token 1 flips the choice.
        s.observe(1);
        let mut p = params(0.0);
        p.frequency_penalty = 0.5;
        assert_eq!(s.sample(&p, &mut l).id, 2);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut p = params(0.0);
        p.repetition_penalty = 2.0;
        let mut s = Sampler::new(&p, &[0, 3]);
        let mut l = vec![4.0, 3.0, 0.0, -1.0];
        s.sample(&p, &mut l);
        assert_eq!(l, vec![2.0, 3.0, 0.0, -2.0]);
    }

    #[test]
    fn logit_bias_can_force_a_token() {
        let mut p = params(0.0);
        p.logit_bias = vec![(3, 100.0)];
        let mut s = Sampler::new(&p, &[]);
        assert_eq!(s.sample(&p, &mut [5.0, 1.0, 0.0, 0.0]).id, 3);
    }

    #[test]
    fn same_seed_same_tokens() {
        let p = params(1.0);
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = || {
            let mut s = Sampler::new(&p, &[]);
            (0..50)
                .map(|_| s.sample(&p, &mut logits.clone()).id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = vec![2.0f32, 1.9, 1.8, -5.0, -6.0, -7.0];
        let mut p = params(1.0);
        p.top_k = 2;
        let mut s = Sampler::new(&p, &[]);
        for _ in 0..200 {
            assert!(s.sample(&p, &mut logits.clone()).id < 2);
        }
        let mut p = params(1.0);
        p.top_p = 0.5;
        let mut s = Sampler::new(&p, &[]);
        let mut seen = [0usize; 6];
        for _ in 0..300 {
            seen[s.sample(&p, &mut logits.clone()).id as usize] += 1;
        }
        // p(0) ~ 0.36 < 0.5, so tokens 0 and 1 stay; 2.. never drawn.
        assert!(
            seen[0] > 0 && seen[1] > 0 && seen[2..].iter().all(|&c| c == 0),
            "{seen:?}"
        );
        let mut p = params(1.0);
        p.min_p = 0.5;
        let mut s = Sampler::new(&p, &[]);
        for _ in 0..200 {
            assert!(s.sample(&p, &mut logits.clone()).id < 3);
        }
    }

    #[test]
    fn sampling_matches_the_softmax_distribution() {
        // Chi-square goodness of fit at the 0.1% level (df = 3, critical value 16.27).
        let logits = vec![1.0f32, 0.0, -0.5, 0.7];
        let p = params(1.0);
        let mut s = Sampler::new(&p, &[]);
        let n = 20_000;
        let mut counts = [0f64; 4];
        for _ in 0..n {
            counts[s.sample(&p, &mut logits.clone()).id as usize] += 1.0;
        }
        let lse = log_sum_exp(&logits);
        let chi2: f64 = logits
            .iter()
            .zip(counts)
            .map(|(l, c)| {
                let e = n as f64 * ((l - lse) as f64).exp();
                (c - e) * (c - e) / e
            })
            .sum();
        assert!(chi2 < 16.27, "chi2 = {chi2}");
    }

    #[test]
    fn logprobs_are_of_the_raw_distribution() {
        let mut p = params(0.0);
        p.logprobs = Some(2);
        p.logit_bias = vec![(2, 50.0)];
        let mut s = Sampler::new(&p, &[]);
        let t = s.sample(&p, &mut [1.0, 2.0, 0.0]);
        assert_eq!(t.id, 2);
        let lse = (1f32.exp() + 2f32.exp() + 1.0).ln();
        assert!((t.logprob.unwrap_or(0.0) - (0.0 - lse)).abs() < 1e-5);
        assert_eq!(t.top_logprobs[0].0, 1);
        assert_eq!(t.top_logprobs.len(), 2);
    }

    #[test]
    fn top_logprobs_equal_a_full_sort() {
        // Many ties (values on a coarse grid), NaN and infinities, n past the length.
        let mut x: Vec<f32> = (0..5_000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 20) % 97) as f32 * 0.25 - 12.0)
            .collect();
        x[17] = f32::NAN;
        x[4_000] = f32::INFINITY;
        x[9] = f32::NEG_INFINITY;
        let lse = 3.5;
        for n in [1usize, 2, 5, 20, 4_999, 6_000] {
            let mut want: Vec<(u32, f32)> = x
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, &v)| (i as u32, v))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(n);
            let want: Vec<(u32, f32)> = want.into_iter().map(|(i, v)| (i, v - lse)).collect();
            assert_eq!(top_logprobs(&x, lse, n), want, "n = {n}");
        }
        assert!(top_logprobs(&x, lse, 0).is_empty());
        assert!(top_logprobs(&[], lse, 3).is_empty());
    }

    #[test]
    fn logit_adjustments_equal_the_processors() {
        let p = SamplingParams {
            logit_bias: vec![(3, 1.5), (7, -2.0), (3, 0.5)],
            repetition_penalty: 1.3,
            presence_penalty: 0.4,
            frequency_penalty: 0.1,
            ..params(0.8)
        };
        let mut s = Sampler::new(&p, &[1, 2, 3, 2]);
        for id in [5, 3, 5, 9] {
            s.observe(id);
        }
        let logits: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.7).collect();
        let mut want = logits.clone();
        s.process_logits(&p, &mut want);
        let mut adj = Vec::new();
        s.logit_adjustments(&p, &mut adj);
        let row = sluice_backend::SampleParams {
            repetition: p.repetition_penalty,
            presence: p.presence_penalty,
            frequency: p.frequency_penalty,
            ..sluice_backend::SampleParams::greedy()
        };
        let mut got = logits.clone();
        for a in &adj {
            let l = &mut got[a.token as usize];
            *l = row.adjusted(a, *l);
        }
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn validation_names_the_parameter() {
        let mut p = params(1.0);
        p.top_p = 0.0;
        assert_eq!(p.validate(10).unwrap_err().1, "top_p");
        let mut p = params(-1.0);
        p.temperature = -1.0;
        assert_eq!(p.validate(10).unwrap_err().1, "temperature");
        let mut p = params(1.0);
        p.logit_bias = vec![(10, 1.0)];
        assert_eq!(p.validate(10).unwrap_err().1, "logit_bias");
    }
}
