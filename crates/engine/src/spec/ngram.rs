//! Prompt lookup / n-gram drafting (Saxena 2023, "Prompt Lookup Decoding"; vLLM's
//! `NgramProposer`): the last `n` tokens of a sequence are looked up earlier in its own
//! prompt and output, and the tokens that followed the match are proposed. Longer
//! n-grams are tried first (`ngram_max` down to `ngram_min`); among matches of one size
//! the latest wins (recent text predicts the next text best). No model, no state:
//! output that quotes its input (summaries, code edits, "repeat after me") is where it
//! pays.

use super::{Draft, ProposeRequest, Proposer, MAX_NGRAM};
use crate::engine::EngineError;

/// The prompt-lookup proposer.
#[derive(Clone, Debug)]
pub struct NgramProposer {
    min: usize,
    max: usize,
}

impl NgramProposer {
    /// Matches n-grams of `min..=max` tokens (1 <= min <= max <= MAX_NGRAM).
    pub fn new(min: usize, max: usize) -> Result<NgramProposer, String> {
        if min == 0 || min > max || max > MAX_NGRAM {
            return Err(format!(
                "n-gram sizes must satisfy 1 <= ngram_min <= ngram_max <= {MAX_NGRAM}, got \
                 min {min} and max {max}"
            ));
        }
        Ok(NgramProposer { min, max })
    }
}

/// Up to `k` tokens following the latest earlier occurrence of the longest suffix of
/// `tokens` of `min..=max` tokens; empty when nothing matches.
pub fn ngram_lookup(tokens: &[u32], min: usize, max: usize, k: usize) -> &[u32] {
    let len = tokens.len();
    if k == 0 || len < 2 {
        return &[];
    }
    for n in (min..=max.min(len - 1)).rev() {
        let pattern = &tokens[len - n..];
        // Start positions i with i + n < len: the match is followed by at least one
        // token and is not the suffix itself. Latest first.
        for i in (0..len - n).rev() {
            if &tokens[i..i + n] == pattern {
                let start = i + n;
                return &tokens[start..(start + k).min(len)];
            }
        }
    }
    &[]
}

impl Proposer for NgramProposer {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn propose(
        &mut self,
        reqs: &[ProposeRequest<'_>],
        out: &mut [Draft],
    ) -> Result<(), EngineError> {
        for (r, d) in reqs.iter().zip(out.iter_mut()) {
            let m = ngram_lookup(r.token_ids, self.min, self.max, r.max_drafts);
            d.tokens.extend_from_slice(m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: for each n from max down, the latest i with a match.
    fn naive(tokens: &[u32], min: usize, max: usize, k: usize) -> Vec<u32> {
        let len = tokens.len();
        for n in (min..=max).rev() {
            if n >= len {
                continue;
            }
            let mut best = None;
            for i in 0..len - n {
                if (0..n).all(|j| tokens[i + j] == tokens[len - n + j]) {
                    best = Some(i);
                }
            }
            if let Some(i) = best {
                return tokens[i + n..(i + n + k).min(len)].to_vec();
            }
        }
        Vec::new()
    }

    #[test]
    fn finds_the_latest_longest_match() {
        // "a b c d a b x a b" : suffix "a b" occurs at 0 and 4; latest is 4 -> "x a"
        let t = [1, 2, 3, 4, 1, 2, 9, 1, 2];
        assert_eq!(ngram_lookup(&t, 1, 3, 2), &[9, 1]);
        // Longer match preferred: suffix "3 1 2" occurs once at 2.
        let t = [7, 3, 1, 2, 5, 6, 1, 2, 8, 3, 1, 2];
        assert_eq!(ngram_lookup(&t, 1, 3, 3), &[5, 6, 1]);
        // The proposal stops at the end of the sequence.
        let t = [1, 2, 1];
        assert_eq!(ngram_lookup(&t, 1, 2, 5), &[2, 1]);
        assert!(ngram_lookup(&[1, 2, 3], 1, 2, 4).is_empty());
        assert!(ngram_lookup(&[5], 1, 2, 4).is_empty());
        assert!(ngram_lookup(&[5, 5], 2, 2, 4).is_empty());
    }

    #[test]
    fn agrees_with_brute_force_on_random_sequences() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..2000 {
            let len = rng.random_range(1..40);
            let vocab = rng.random_range(2..6);
            let t: Vec<u32> = (0..len).map(|_| rng.random_range(0..vocab)).collect();
            let min = rng.random_range(1..4);
            let max = rng.random_range(min..6);
            let k = rng.random_range(1..6);
            assert_eq!(
                ngram_lookup(&t, min, max, k),
                naive(&t, min, max, k),
                "{t:?}"
            );
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(NgramProposer::new(0, 3).is_err());
        assert!(NgramProposer::new(4, 3).is_err());
        assert!(NgramProposer::new(1, MAX_NGRAM + 1).is_err());
        assert!(NgramProposer::new(2, 2).is_ok());
    }
}
