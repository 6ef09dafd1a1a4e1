//! Lookahead decoding (Fu, Bailis, Stoica, Zhang, ICML 2024, "Break the Sequential
//! Dependency of LLM Inference Using Lookahead Decoding"; reference implementation
//! hao-ai-lab/LookaheadDecoding, `lade/decoding.py` + `lade/models/llama.py`).
//!
//! No draft model: every step, next to the sequence's real token, the target model
//! runs two extra branches in the *same* forward, separated by an attention mask:
//!
//! - the **lookahead branch**, a 2-D window of `N - 1` levels x `W` columns. Level `l`,
//!   column `i` is a guess for position `P + l + i` (`P` = the anchor, the last token
//!   whose value is known). One forward is one Jacobi iteration: the argmax of the top
//!   level's rows becomes the new top level; every column then holds an n-gram
//!   `(level 0, level 1, ..., level N-2, new result)` of consecutive positions, which
//!   goes into an **n-gram pool** keyed by its first token. The window slides by one
//!   column per step (the reference's `ALWAYS_FWD_ONE`).
//! - the **verification branch**: up to `G` n-grams from the pool whose key is the
//!   anchor token, `N - 1` tokens each, verified like linear drafts.
//!
//! Mask (reference `j_make_causal_mask_multilevel`): besides the cached prefix and the
//! anchor, which everyone sees, a level-0 token at column `i` sees level-0 columns
//! `1..=i`; a level-`l` token at column `i` sees level-0 columns `1..=i` and the tokens
//! of levels `1..=l` in its own column; a candidate token sees the earlier tokens of
//! its own candidate. So every row sees exactly one token at each position from `P` to
//! its own position: a well-formed causal context (tested below).
//!
//! ## Layout in the engine
//! A sequence's rows in a step are
//! `[known tokens without KV .., forced F_1..F_f, G candidates x (N-1), level 0 (S-1),
//! levels 1..L-1 (S each)]`, where the last known token (or `F_f`) is the anchor. All
//! of it is handed to the scheduler as the sequence's "spec tokens", so the existing
//! budget accounting, slot allocation and rollback apply unchanged; positions of the
//! scratch rows are rewritten after `fill_batch` ([`LookaheadSeq::positions_and_mask`])
//! and their KV slots are always rolled back.
//!
//! Verification samples the anchor row with the request's own sampler, then walks down
//! the candidates whose next token equals what was just sampled, sampling each row in
//! turn ("sample, then match"): every emitted token is drawn by the target from the
//! exact context it would have in plain decoding, so greedy output is token for token
//! plain greedy output, and sampled output has exactly the target's distribution (a
//! seeded request even gives the same tokens: one sampler call per emitted token, in
//! order). Accepted candidate tokens sit at scratch slots, not at their sequence slots,
//! and the KV cache has no copy operation, so the step hands the scheduler the forced
//! tokens plus the first new token; the other accepted tokens become the next step's
//! **forced** tokens `F`, fed as (known-correct) drafts whose KV is computed then.
//! Their emission is one step late, their cost one row each.
//!
//! The window is filled level by level during the first `N - 2` steps (reference fill
//! phase): it starts as `W + N - 3` tokens copied from the prompt at random, and each
//! step adds a level while the levels get one column narrower, until `N - 1` levels of
//! `W` columns remain.

use std::collections::{HashMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use sluice_model::BatchInput;

use super::{SpecConfig, SpecMethodStats, SpecOverride};
use crate::sampling::{argmax, SampledToken};
use crate::scheduler::{ScheduledSeq, Scheduler, SchedulerError, SchedulerOutput};
use crate::sequence::SeqId;

/// Largest accepted window `W`.
pub const MAX_WINDOW: usize = 256;
/// Largest accepted n-gram size `N`.
pub const MAX_NGRAM_SIZE: usize = 32;
/// Largest accepted verification branch `G`.
pub const MAX_VERIFY: usize = 256;
/// Lookahead steps between probes of a sequence whose rule turned lookahead off.
pub const LOOKAHEAD_PROBE_INTERVAL: u32 = 16;
/// Weight of the newest step in the moving average of tokens per step.
const EMA_WEIGHT: f64 = 0.2;

/// Lookahead shape: window `W`, n-gram size `N`, verification branch `G`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookaheadConfig {
    pub window: usize,
    pub ngram: usize,
    pub verify: usize,
}

impl Default for LookaheadConfig {
    /// Small enough for a CPU step (29 extra rows): `W = 5, N = 4, G = 5`.
    fn default() -> Self {
        LookaheadConfig {
            window: 5,
            ngram: 4,
            verify: 5,
        }
    }
}

impl LookaheadConfig {
    /// Lookahead-branch rows with `levels` levels filled (see the module docs):
    /// level 0 has `S - 1` tokens, the others `S`, with `S = W + N - 1 - levels`.
    fn window_rows(&self, levels: usize) -> usize {
        let s = self.window + self.ngram - 1 - levels;
        levels * s - 1
    }

    /// Most extra rows (lookahead branch + verification branch) one step adds.
    pub fn max_scratch_rows(&self) -> usize {
        let la = (1..self.ngram)
            .map(|l| self.window_rows(l))
            .max()
            .unwrap_or(0);
        la + self.verify * (self.ngram - 1)
    }

    /// Checks ranges and that a step fits the context and the step budget; the message
    /// names the flag.
    pub fn validate(
        &self,
        max_model_len: usize,
        max_num_batched_tokens: usize,
    ) -> Result<(), String> {
        let (w, n, g) = (self.window, self.ngram, self.verify);
        if w == 0 || w > MAX_WINDOW {
            return Err(format!(
                "--lookahead-window must be between 1 and {MAX_WINDOW}, got {w}"
            ));
        }
        if !(2..=MAX_NGRAM_SIZE).contains(&n) {
            return Err(format!(
                "--lookahead-ngram must be between 2 and {MAX_NGRAM_SIZE}, got {n}"
            ));
        }
        if g == 0 || g > MAX_VERIFY {
            return Err(format!(
                "--lookahead-verify must be between 1 and {MAX_VERIFY}, got {g}"
            ));
        }
        let rows = 1 + self.max_scratch_rows();
        if rows >= max_model_len {
            return Err(format!(
                "a lookahead step (window {w}, n-gram {n}, verify {g}) needs {rows} tokens of \
                 context, but the model's context (max_model_len) is {max_model_len} tokens; \
                 use a smaller window"
            ));
        }
        if rows > max_num_batched_tokens {
            return Err(format!(
                "a lookahead step (window {w}, n-gram {n}, verify {g}) needs {rows} tokens per \
                 step, more than max_num_batched_tokens ({max_num_batched_tokens})"
            ));
        }
        Ok(())
    }
}

/// The n-gram pool: for each first token, up to `cap` continuations of `len` tokens,
/// least recently inserted first out (the reference's LRU guess set).
#[derive(Clone, Debug)]
pub struct NgramPool {
    len: usize,
    cap: usize,
    map: HashMap<u32, VecDeque<Box<[u32]>>>,
}

impl NgramPool {
    /// A pool of continuations of `len` tokens, at most `cap` per key.
    pub fn new(len: usize, cap: usize) -> NgramPool {
        NgramPool {
            len,
            cap: cap.max(1),
            map: HashMap::new(),
        }
    }

    /// Adds `key -> cont` (`cont.len()` must be the pool's length; others are
    /// ignored). An entry already present becomes the most recent.
    pub fn insert(&mut self, key: u32, cont: &[u32]) {
        if cont.len() != self.len || self.len == 0 {
            return;
        }
        let list = self.map.entry(key).or_default();
        if let Some(i) = list.iter().position(|c| &c[..] == cont) {
            if let Some(c) = list.remove(i) {
                list.push_back(c);
            }
            return;
        }
        if list.len() >= self.cap {
            list.pop_front();
        }
        list.push_back(cont.into());
    }

    /// Every n-gram (`len + 1` consecutive tokens) of `tokens`.
    pub fn insert_all(&mut self, tokens: &[u32]) {
        for w in tokens.windows(self.len + 1) {
            self.insert(w[0], &w[1..]);
        }
    }

    /// Continuations of `key`, most recent first.
    pub fn candidates(&self, key: u32) -> impl Iterator<Item = &[u32]> + '_ {
        self.map
            .get(&key)
            .into_iter()
            .flat_map(|l| l.iter().rev().map(|c| &c[..]))
    }

    /// Keys held.
    pub fn num_keys(&self) -> usize {
        self.map.len()
    }
}

/// What the pending step was built from (between `propose` and `verify`).
#[derive(Clone, Debug, Default)]
struct Plan {
    /// The anchor: the last forced token, else the last known token.
    anchor: u32,
    /// Forced tokens at the head of the spec tokens.
    num_forced: usize,
    /// Candidates in the verification branch (`N - 1` tokens each).
    num_guesses: usize,
    /// `[num_guesses * (N-1)]` their tokens.
    guesses: Vec<u32>,
    /// Lookahead rows after the candidates (0: no window this step).
    window_rows: usize,
}

/// One step's verification result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LookaheadOutcome {
    /// Tokens for `Scheduler::update_from_output`: the forced tokens that were
    /// scheduled, then one token (sampled, or the next forced one).
    pub tokens: Vec<u32>,
    /// Depth of the verification branch that was scheduled (0: no candidate ran).
    pub drafted: usize,
    /// Candidate tokens accepted (emitted in later steps as forced tokens).
    pub accepted: usize,
    /// Tokens the target sampled this step (1 + accepted, 0 when only forced tokens
    /// were delivered).
    pub sampled: usize,
}

/// Lookahead state of one sequence.
#[derive(Clone, Debug)]
pub struct LookaheadSeq {
    cfg: LookaheadConfig,
    /// Window levels (see the module docs): `levels[0]` holds columns `1..S` of level 0
    /// (`[S-1]`, column 0 is the anchor), `levels[l]` for `l >= 1` holds `[S]`.
    levels: Vec<Vec<u32>>,
    pool: NgramPool,
    /// Verified tokens not yet handed to the scheduler (oldest first).
    forced: Vec<u32>,
    /// Last `N - 1` tokens of the known text, forced tokens included (pool updates).
    tail: Vec<u32>,
    /// Prompt tokens, the source of random window tokens.
    prompt: Vec<u32>,
    eos: Vec<u32>,
    rng: ChaCha8Rng,
    plan: Plan,
    /// Moving average of tokens sampled per lookahead step.
    ema_tokens: f64,
    /// Steps since the adaptive rule last ran a lookahead step.
    steps_off: u32,
}

impl LookaheadSeq {
    /// State for a sequence with `prompt` (its n-grams seed the pool; the window starts
    /// with tokens drawn from it using `seed`). Tokens in `eos` never stay in the window.
    pub fn new(cfg: LookaheadConfig, prompt: &[u32], eos: &[u32], seed: u64) -> LookaheadSeq {
        let mut pool = NgramPool::new(cfg.ngram - 1, cfg.verify);
        pool.insert_all(prompt);
        let mut s = LookaheadSeq {
            cfg,
            levels: Vec::new(),
            pool,
            forced: Vec::new(),
            tail: prompt[prompt.len().saturating_sub(cfg.ngram - 1)..].to_vec(),
            prompt: prompt.to_vec(),
            eos: eos.to_vec(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            plan: Plan::default(),
            // Optimistic start (the most a step can yield) so the rule gathers data.
            ema_tokens: cfg.ngram as f64,
            steps_off: 0,
        };
        let first: Vec<u32> = (0..cfg.window + cfg.ngram - 3)
            .map(|_| s.random_token())
            .collect();
        s.levels.push(first);
        s
    }

    fn random_token(&mut self) -> u32 {
        if self.prompt.is_empty() {
            return 0;
        }
        let i = self.rng.random_range(0..self.prompt.len());
        self.prompt[i]
    }

    /// Verified tokens waiting to be handed to the scheduler.
    pub fn forced(&self) -> &[u32] {
        &self.forced
    }

    /// The n-gram pool.
    pub fn pool(&self) -> &NgramPool {
        &self.pool
    }

    /// Filled window levels (`N - 1` once the fill phase is over).
    pub fn num_levels(&self) -> usize {
        self.levels.len()
    }

    /// Whether the branches run this step. `max_rows` is the most rows the batch rule
    /// allows this sequence (1 + forced + scratch must fit). With `adaptive`, the moving
    /// average of tokens per lookahead step must also beat the step's cost in plain
    /// decode steps, `1 + verify_cost * scratch rows` (the cost model of
    /// [`super::adaptive`]); a sequence turned off is probed again every
    /// `LOOKAHEAD_PROBE_INTERVAL` steps.
    pub fn wants_branches(&self, adaptive: bool, max_rows: usize, verify_cost: f64) -> bool {
        let scratch = self.cfg.max_scratch_rows();
        if 1 + self.forced.len() + scratch > max_rows {
            return false;
        }
        if !adaptive {
            return true;
        }
        let cost = 1.0 + verify_cost * scratch as f64;
        self.ema_tokens >= cost || self.steps_off >= LOOKAHEAD_PROBE_INTERVAL
    }

    /// Builds the step's spec tokens for a sequence whose last known token is `last`:
    /// the forced tokens, then (with `branches`) the candidates for the anchor and the
    /// lookahead window. The scheduler may cut the tail (budget, `max_tokens`);
    /// `positions_and_mask` and `verify` read how much was scheduled.
    pub fn propose(&mut self, last: u32, branches: bool) -> Vec<u32> {
        let n1 = self.cfg.ngram - 1;
        let anchor = self.forced.last().copied().unwrap_or(last);
        let mut spec = self.forced.clone();
        let mut plan = Plan {
            anchor,
            num_forced: self.forced.len(),
            ..Plan::default()
        };
        if branches {
            self.steps_off = 0;
            for c in self.pool.candidates(anchor).take(self.cfg.verify) {
                plan.guesses.extend_from_slice(c);
                plan.num_guesses += 1;
            }
            debug_assert_eq!(plan.guesses.len(), plan.num_guesses * n1);
            spec.extend_from_slice(&plan.guesses);
            for l in &self.levels {
                spec.extend_from_slice(l);
            }
            plan.window_rows = self.levels.iter().map(Vec::len).sum();
            debug_assert_eq!(plan.window_rows, self.cfg.window_rows(self.levels.len()));
        } else {
            self.steps_off = self.steps_off.saturating_add(1);
        }
        debug_assert_eq!(
            spec.len(),
            plan.num_forced + plan.guesses.len() + plan.window_rows
        );
        self.plan = plan;
        spec
    }

    /// Relative position (from the anchor) of scratch row `r` (0 = first row after the
    /// anchor) of the current plan.
    fn rel_position(&self, r: usize) -> usize {
        let n1 = self.cfg.ngram - 1;
        let ng = self.plan.guesses.len();
        if r < ng {
            return 1 + r % n1;
        }
        let w = r - ng;
        let s = self.levels.first().map_or(0, |l| l.len()) + 1;
        if w < s - 1 {
            return 1 + w;
        }
        let w = w - (s - 1);
        let (l, i) = (1 + w / s, w % s);
        l + i
    }

    /// Positions and the `q x q` attention mask of this sequence's rows in the step.
    /// `q` rows were scheduled, the last `num_spec` of them spec tokens, the first at
    /// position `first_pos`. None when no scratch row was scheduled (plain causal).
    pub fn positions_and_mask(
        &self,
        q: usize,
        num_spec: usize,
        first_pos: usize,
    ) -> Option<(Vec<u32>, Vec<u8>)> {
        let nf = self.plan.num_forced;
        if num_spec <= nf || num_spec > q {
            return None;
        }
        let n1 = self.cfg.ngram - 1;
        let ng = self.plan.guesses.len();
        let s = self.levels.first().map_or(0, |l| l.len()) + 1;
        // Row of the anchor; scratch rows follow it.
        let a = q - num_spec + nf - 1;
        let anchor_pos = first_pos + a;
        let scratch = num_spec - nf;
        let mut pos: Vec<u32> = (0..=a).map(|i| (first_pos + i) as u32).collect();
        pos.extend((0..scratch).map(|r| (anchor_pos + self.rel_position(r)) as u32));
        // [q, q] row-major: rows 0..=a causal, scratch rows per the module docs.
        let mut m = vec![0u8; q * q];
        for i in 0..q {
            let row = &mut m[i * q..(i + 1) * q];
            let prefix = i.min(a);
            row[..=prefix].fill(1);
            if i <= a {
                continue;
            }
            let r = i - a - 1;
            let mut see = |scratch_row: usize| {
                if scratch_row < scratch {
                    row[a + 1 + scratch_row] = 1;
                }
            };
            if r < ng {
                let (g, d) = (r / n1, r % n1);
                for d2 in 0..=d {
                    see(g * n1 + d2);
                }
                continue;
            }
            let w = r - ng;
            // (level, column) of this row; level 0 column 0 is the anchor.
            let (l, col) = if w < s - 1 {
                (0, w + 1)
            } else {
                let w = w - (s - 1);
                (1 + w / s, w % s)
            };
            for c in 1..=col {
                see(ng + c - 1);
            }
            for l2 in 1..=l {
                see(ng + (s - 1) + (l2 - 1) * s + col);
            }
        }
        Some((pos, m))
    }

    /// Verifies the step. `num_spec` spec tokens of the plan were scheduled; `rows` are
    /// the sequence's logits rows (`[num_spec + 1, vocab]`: last known token, forced
    /// tokens, scratch rows); `sample(row)` samples one row with the request's sampler
    /// (and records the token in it). Updates the forced tokens, the window and the
    /// pool.
    pub fn verify<F>(
        &mut self,
        num_spec: usize,
        rows: &mut [f32],
        vocab: usize,
        mut sample: F,
    ) -> LookaheadOutcome
    where
        F: FnMut(&mut [f32]) -> u32,
    {
        let mut plan = std::mem::take(&mut self.plan);
        let nf = self.forced.len();
        let mut out = LookaheadOutcome::default();
        if num_spec < nf {
            // Not all forced tokens were scheduled (budget, preemption, no `propose`
            // this step): hand over the next one as the new token, never re-sample it.
            out.tokens = self.forced.drain(..=num_spec).collect();
            return out;
        }
        if plan.num_forced != nf || num_spec == nf {
            // A plan from before a preemption, or no scratch row ran: no branches.
            plan = Plan::default();
        }
        let n1 = self.cfg.ngram - 1;
        let scratch = num_spec - nf;
        let row = |i: usize| (nf + 1 + i) * vocab..(nf + 2 + i) * vocab;
        let ng = plan.guesses.len();
        // Jacobi step first: argmax of the raw logits (sampling edits rows in place).
        let new_results = (plan.window_rows > 0 && scratch == ng + plan.window_rows)
            .then(|| self.top_level_argmax(rows, vocab, nf, ng));
        let first = sample(&mut rows[nf * vocab..(nf + 1) * vocab]);
        let mut emitted = vec![first];
        // Candidates whose rows ran, walked while their next token matches.
        let present = |g: usize, d: usize| g * n1 + d < scratch.min(ng);
        let mut live: Vec<usize> = (0..plan.num_guesses).collect();
        for d in 0..n1 {
            let want = emitted[emitted.len() - 1];
            live.retain(|&g| present(g, d) && plan.guesses[g * n1 + d] == want);
            let Some(&g) = live.first() else {
                break;
            };
            let tok = sample(&mut rows[row(g * n1 + d)]);
            emitted.push(tok);
        }
        if plan.num_guesses > 0 {
            // Depth of the branch (candidate 0's rows that ran; the others' are no deeper).
            out.drafted = n1.min(scratch);
        }
        out.accepted = emitted.len() - 1;
        out.sampled = emitted.len();
        out.tokens = self.forced.drain(..nf).collect();
        out.tokens.push(emitted[0]);
        for &t in &emitted {
            self.push_history(t);
        }
        self.forced.extend_from_slice(&emitted[1..]);
        if let Some(new) = new_results {
            self.jacobi_update(new, plan.anchor);
        }
        if plan.window_rows > 0 || plan.num_guesses > 0 {
            self.ema_tokens =
                (1.0 - EMA_WEIGHT) * self.ema_tokens + EMA_WEIGHT * emitted.len() as f64;
        }
        out
    }

    /// Argmax of the top level's rows (`[S]`; for one level, the anchor row then the
    /// level-0 rows).
    fn top_level_argmax(&self, rows: &[f32], vocab: usize, nf: usize, ng: usize) -> Vec<u32> {
        let l = self.levels.len();
        let s = self.levels[0].len() + 1;
        // Indices into `rows` (0 = last known token): with one level, the anchor row and
        // the level-0 rows (after the candidates); else the top level's `S` rows.
        let first_la = nf + 1 + ng;
        let idx: Vec<usize> = if l == 1 {
            std::iter::once(nf)
                .chain(first_la..first_la + s - 1)
                .collect()
        } else {
            let start = first_la + (s - 1) + (l - 2) * s;
            (start..start + s).collect()
        };
        idx.into_iter()
            .map(|i| argmax(&rows[i * vocab..(i + 1) * vocab]))
            .collect()
    }

    fn push_history(&mut self, t: u32) {
        let n1 = self.cfg.ngram - 1;
        self.tail.push(t);
        if self.tail.len() > n1 {
            let k = self.tail.len() - n1 - 1;
            let (key, cont) = (self.tail[k], self.tail[k + 1..].to_vec());
            self.pool.insert(key, &cont);
            self.tail.drain(..=k);
        }
    }

    /// One Jacobi iteration of the window: `new` (`[S]`) are the top level's outputs,
    /// predicting one position further than the top level. With a full window, each
    /// column's n-gram goes into the pool. The window then slides by one position.
    fn jacobi_update(&mut self, mut new: Vec<u32>, anchor: u32) {
        let full = self.levels.len() == self.cfg.ngram - 1;
        if full {
            let mut gram = Vec::with_capacity(self.cfg.ngram);
            for (i, &last) in new.iter().enumerate() {
                let key = if i == 0 {
                    anchor
                } else {
                    self.levels[0][i - 1]
                };
                gram.clear();
                gram.extend(self.levels[1..].iter().map(|l| l[i]));
                gram.push(last);
                self.pool.insert(key, &gram);
            }
        }
        for t in &mut new {
            if self.eos.contains(t) {
                // The reference's `filter_window` (after the pool update): an EOS left
                // in the window derails the iteration.
                let i = self.rng.random_range(0..self.prompt.len().max(1));
                *t = self.prompt.get(i).copied().unwrap_or(0);
            }
        }
        if full {
            // New level l = old level l + 1 (same columns, one position later); the
            // new top level = `new`; level 0 drops its column 0 (the next anchor).
            let top = self.levels.len() - 1;
            if top == 0 {
                self.levels[0] = new[1..].to_vec();
            } else {
                self.levels[0] = self.levels[1][1..].to_vec();
                for l in 1..top {
                    self.levels[l] = std::mem::take(&mut self.levels[l + 1]);
                }
                self.levels[top] = new;
            }
        } else {
            // Fill phase: every level drops its first column; the outputs of the top
            // level's columns 1.. become a new level.
            for l in &mut self.levels {
                l.remove(0);
            }
            self.levels.push(new[1..].to_vec());
        }
    }
}

/// A sequence's lookahead state plus what the engine needs around it.
#[derive(Clone, Debug)]
struct SeqEntry {
    la: LookaheadSeq,
    /// Log-probabilities of the forced tokens (kept only when the request asked).
    forced_lp: VecDeque<SampledToken>,
}

/// The engine's lookahead decoding: per-sequence windows and pools, the adaptive rule,
/// the batch hooks and the acceptance counters. The engine calls, per step:
/// [`Lookahead::propose`] before `schedule()`, [`Lookahead::prepare_batch`] after
/// `fill_batch()`, and [`Lookahead::verify`] for every scheduled sequence it
/// [`handles`](Lookahead::handles) that produces a token (always, also without spec
/// tokens: forced tokens must be delivered, never re-sampled).
#[derive(Clone, Debug)]
pub struct Lookahead {
    cfg: LookaheadConfig,
    adaptive: bool,
    /// Cost of one extra row in plain decode steps (`SpecConfig::verify_cost`).
    verify_cost: f64,
    /// Decode rows (summed over the decoding sequences) above which branches are cut,
    /// as for the other methods (`SpecConfig::max_batch_tokens`).
    max_batch_tokens: usize,
    seqs: HashMap<SeqId, SeqEntry>,
    stats: SpecMethodStats,
}

impl Lookahead {
    /// Validates `cfg` against the engine's context and step budget; `spec` gives the
    /// adaptive rule's settings.
    pub fn new(
        cfg: LookaheadConfig,
        spec: &SpecConfig,
        max_model_len: usize,
        max_num_batched_tokens: usize,
    ) -> Result<Lookahead, String> {
        spec.validate()?;
        cfg.validate(max_model_len, max_num_batched_tokens)?;
        Ok(Lookahead {
            cfg,
            adaptive: spec.adaptive,
            verify_cost: spec.verify_cost,
            max_batch_tokens: spec.max_batch_tokens,
            seqs: HashMap::new(),
            stats: SpecMethodStats {
                method: "lookahead",
                ..SpecMethodStats::default()
            },
        })
    }

    pub fn config(&self) -> &LookaheadConfig {
        &self.cfg
    }

    /// Acceptance counters: `num_draft_tokens` counts the depth of the verification
    /// branch that ran (at most `N - 1` per step), `num_accepted_tokens` the candidate
    /// tokens accepted, so the rate reads like the linear methods'.
    pub fn stats(&self) -> &SpecMethodStats {
        &self.stats
    }

    /// Whether a request with this override uses lookahead (the engine default unless
    /// it names another method or turns speculation off).
    pub fn takes(o: Option<&SpecOverride>) -> bool {
        match o {
            None => true,
            Some(o) => {
                o.num_speculative_tokens != Some(0)
                    && o.method.as_deref().is_none_or(|m| m == "lookahead")
            }
        }
    }

    /// Starts tracking a sequence (its prompt seeds the pool).
    pub fn add_seq(&mut self, id: SeqId, prompt: &[u32], eos: &[u32]) {
        let la = LookaheadSeq::new(self.cfg, prompt, eos, id.0 ^ 0x1a4e_ad00);
        self.seqs.insert(
            id,
            SeqEntry {
                la,
                forced_lp: VecDeque::new(),
            },
        );
    }

    /// Forgets a finished or aborted sequence.
    pub fn remove_seq(&mut self, id: SeqId) {
        self.seqs.remove(&id);
    }

    pub fn handles(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Sequences tracked (leak checks).
    pub fn num_tracked(&self) -> usize {
        self.seqs.len()
    }

    /// Sets the spec tokens (forced tokens, candidates, window) of every running
    /// sequence in decode state that uses lookahead. `max_model_len` bounds the room.
    pub fn propose(
        &mut self,
        sched: &mut Scheduler,
        max_model_len: usize,
    ) -> Result<(), SchedulerError> {
        let decoding: Vec<SeqId> = sched
            .running()
            .iter()
            .copied()
            .filter(|&id| {
                sched
                    .seq(id)
                    .is_some_and(|s| s.num_computed_tokens + 1 == s.num_tokens())
            })
            .collect();
        // Batch rule (as for the other methods): each decoding sequence's share of the
        // step's decode rows.
        let share = self.max_batch_tokens / decoding.len().max(1);
        for id in decoding {
            let Some(e) = self.seqs.get_mut(&id) else {
                continue;
            };
            let Some(seq) = sched.seq(id) else {
                continue;
            };
            let Some(&last) = seq.all_token_ids().last() else {
                continue;
            };
            // Tokens this sequence may still produce: below 2 no draft can be used.
            let left = seq
                .max_tokens
                .saturating_sub(seq.num_output_tokens())
                .min(max_model_len.saturating_sub(seq.num_tokens()));
            let branches = left > 1 + e.la.forced().len()
                && e.la.wants_branches(self.adaptive, share, self.verify_cost);
            let spec = e.la.propose(last, branches);
            sched.set_spec_token_ids(id, spec)?;
        }
        Ok(())
    }

    /// Rewrites the positions of the scratch rows and sets the attention masks of the
    /// sequences with scratch rows in this step (`batch` as `fill_batch` left it, in
    /// `out.scheduled` order).
    pub fn prepare_batch(
        &self,
        out: &SchedulerOutput,
        batch: &mut BatchInput,
    ) -> Result<(), String> {
        let mut offset = 0usize;
        for (i, s) in out.scheduled.iter().enumerate() {
            let q = s.num_new_tokens;
            let start = offset;
            offset += q;
            if !s.produces_token || s.num_spec_tokens == 0 {
                continue;
            }
            let Some(e) = self.seqs.get(&s.seq_id) else {
                continue;
            };
            let Some((pos, mask)) =
                e.la.positions_and_mask(q, s.num_spec_tokens, s.num_computed_before)
            else {
                continue;
            };
            let dst = batch
                .positions
                .get_mut(start..start + q)
                .ok_or_else(|| format!("{}: batch has no rows {start}..{}", s.seq_id, start + q))?;
            dst.copy_from_slice(&pos);
            batch.set_seq_mask(i, &mask)?;
        }
        Ok(())
    }

    /// Verifies one scheduled sequence that produces a token: `rows` are its logits
    /// rows (`[s.num_logits(), vocab]`), `sample` samples a row with the request's
    /// sampler and records the token. Writes the tokens for `update_from_output` into
    /// `tokens` and, when `want_lp`, their log-probabilities into `lp`.
    #[allow(clippy::too_many_arguments)]
    pub fn verify<F>(
        &mut self,
        s: &ScheduledSeq,
        rows: &mut [f32],
        vocab: usize,
        want_lp: bool,
        mut sample: F,
        tokens: &mut Vec<u32>,
        lp: &mut Vec<SampledToken>,
    ) -> Result<(), String>
    where
        F: FnMut(&mut [f32]) -> SampledToken,
    {
        let e = self
            .seqs
            .get_mut(&s.seq_id)
            .ok_or_else(|| format!("{} has no lookahead state", s.seq_id))?;
        if rows.len() != s.num_logits() * vocab {
            return Err(format!(
                "{}: {} logits for {} rows",
                s.seq_id,
                rows.len(),
                s.num_logits()
            ));
        }
        let mut new_lp = Vec::new();
        let outcome = e.la.verify(s.num_spec_tokens, rows, vocab, |row| {
            let t = sample(row);
            let id = t.id;
            if want_lp {
                new_lp.push(t);
            }
            id
        });
        tokens.clear();
        tokens.extend_from_slice(&outcome.tokens);
        if want_lp {
            e.forced_lp.extend(new_lp);
            lp.extend(
                e.forced_lp
                    .drain(..outcome.tokens.len().min(e.forced_lp.len())),
            );
        }
        if outcome.drafted > 0 {
            let st = &mut self.stats;
            st.num_drafts += 1;
            st.num_draft_tokens += outcome.drafted as u64;
            st.num_accepted_tokens += outcome.accepted as u64;
            st.num_emitted_tokens += outcome.sampled as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window: usize, ngram: usize, verify: usize) -> LookaheadConfig {
        LookaheadConfig {
            window,
            ngram,
            verify,
        }
    }

    #[test]
    fn bad_shapes_are_refused_with_the_flag_named() {
        assert!(LookaheadConfig::default().validate(2048, 512).is_ok());
        let e = cfg(0, 4, 5).validate(2048, 512).unwrap_err();
        assert!(e.contains("--lookahead-window"), "{e}");
        let e = cfg(5, 1, 5).validate(2048, 512).unwrap_err();
        assert!(e.contains("--lookahead-ngram"), "{e}");
        let e = cfg(5, 4, 0).validate(2048, 512).unwrap_err();
        assert!(e.contains("--lookahead-verify"), "{e}");
        let e = cfg(100_000, 4, 5).validate(2048, 512).unwrap_err();
        assert!(e.contains("--lookahead-window"), "{e}");
        // A window larger than the context.
        let e = cfg(60, 4, 5).validate(64, 4096).unwrap_err();
        assert!(e.contains("max_model_len"), "{e}");
        let e = cfg(20, 7, 20).validate(4096, 128).unwrap_err();
        assert!(e.contains("max_num_batched_tokens"), "{e}");
    }

    #[test]
    fn scratch_rows_match_the_fill_phase_shapes() {
        // W=5, N=4, G=5: levels 1..3 give 7-1, 2*6-1, 3*5-1 window rows; candidates 15.
        let c = cfg(5, 4, 5);
        assert_eq!(
            (1..4).map(|l| c.window_rows(l)).collect::<Vec<_>>(),
            vec![6, 11, 14]
        );
        assert_eq!(c.max_scratch_rows(), 14 + 15);
        assert_eq!(cfg(3, 2, 2).max_scratch_rows(), 2 + 2);
    }

    #[test]
    fn pool_keeps_the_most_recent_continuations() {
        let mut p = NgramPool::new(2, 2);
        p.insert(1, &[2, 3]);
        p.insert(1, &[4, 5]);
        p.insert(1, &[2, 3]); // refreshed, now the most recent
        p.insert(1, &[6, 7]); // evicts [4, 5]
        p.insert(1, &[9]); // wrong length: ignored
        let c: Vec<&[u32]> = p.candidates(1).collect();
        assert_eq!(c, vec![&[6, 7][..], &[2, 3][..]]);
        assert_eq!(p.candidates(2).count(), 0);
        p.insert_all(&[5, 6, 7, 8]);
        assert_eq!(p.candidates(5).collect::<Vec<_>>(), vec![&[6, 7][..]]);
        assert_eq!(p.candidates(6).collect::<Vec<_>>(), vec![&[7, 8][..]]);
        assert_eq!(p.num_keys(), 3);
    }

    /// For one row of the step: the tokens it sees, ordered by position, after checking
    /// that it sees exactly one token at each position from the first new row's to its
    /// own (a well-formed causal context) and never a later row.
    fn visible_context(pos: &[u32], mask: &[u8], tokens: &[u32], i: usize) -> Vec<u32> {
        let q = pos.len();
        let mut seen: Vec<(u32, u32)> = (0..q)
            .filter(|&j| mask[i * q + j] != 0)
            .inspect(|&j| assert!(j <= i, "row {i} sees later row {j}"))
            .map(|j| (pos[j], tokens[j]))
            .collect();
        seen.sort_unstable();
        let expect: Vec<u32> = (pos[0]..=pos[i]).collect();
        let got: Vec<u32> = seen.iter().map(|s| s.0).collect();
        assert_eq!(got, expect, "row {i}: positions seen");
        seen.into_iter().map(|s| s.1).collect()
    }

    #[test]
    fn mask_gives_every_row_a_causal_context_of_its_branch() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..300 {
            let c = cfg(
                rng.random_range(1..7),
                rng.random_range(2..6),
                rng.random_range(1..4),
            );
            let prompt: Vec<u32> = (0..rng.random_range(1..30))
                .map(|_| rng.random_range(0..6))
                .collect();
            let mut la = LookaheadSeq::new(c, &prompt, &[], rng.random());
            // Some steps of fill so that several level counts are seen.
            for _ in 0..rng.random_range(0..c.ngram) {
                let spec = la.propose(1, true);
                let n = spec.len();
                let vocab = 6;
                let mut rows = vec![0f32; (n + 1) * vocab];
                for r in 0..=n {
                    rows[r * vocab + rng.random_range(0..vocab)] = 1.0;
                }
                la.verify(n, &mut rows, vocab, |l| argmax(l));
            }
            let known_rows = rng.random_range(1..4);
            let last = prompt[prompt.len() - 1];
            let spec = la.propose(last, true);
            let nf = la.forced.len();
            let ng = la.plan.guesses.len();
            if spec.len() == nf {
                // W = 1, N = 2 and no candidate: nothing but forced tokens.
                assert!(la.positions_and_mask(known_rows + nf, nf, 0).is_none());
                continue;
            }
            let q = known_rows + spec.len();
            let first_pos = rng.random_range(0..50);
            let (pos, mask) = la
                .positions_and_mask(q, spec.len(), first_pos)
                .expect("scratch rows were scheduled");
            let mut tokens: Vec<u32> = (0..known_rows as u32).map(|t| 100 + t).collect();
            tokens.extend_from_slice(&spec);
            let a = known_rows + nf - 1;
            for i in 0..q {
                let ctx = visible_context(&pos, &mask, &tokens, i);
                if i <= a {
                    assert_eq!(ctx, tokens[..=i].to_vec());
                    continue;
                }
                // Every scratch row continues the anchor's context.
                assert_eq!(&ctx[..=a], &tokens[..=a]);
                let r = i - a - 1;
                let n1 = c.ngram - 1;
                if r < ng {
                    let (g, d) = (r / n1, r % n1);
                    let cand = &la.plan.guesses[g * n1..g * n1 + d + 1];
                    assert_eq!(&ctx[a + 1..], cand);
                } else {
                    let w = r - ng;
                    let s = la.levels[0].len() + 1;
                    let (l, col) = if w < s - 1 {
                        (0, w + 1)
                    } else {
                        (1 + (w - (s - 1)) / s, (w - (s - 1)) % s)
                    };
                    let mut want: Vec<u32> = la.levels[0][..col].to_vec();
                    want.extend((1..=l).map(|l2| la.levels[l2][col]));
                    assert_eq!(&ctx[a + 1..], &want[..]);
                }
            }
            // A prefix of the rows (the scheduler cut the tail) is the top-left block.
            let cut = rng.random_range(known_rows + nf + 1..=q);
            let (pos2, mask2) = la
                .positions_and_mask(cut, cut - known_rows, first_pos)
                .expect("some scratch rows");
            assert_eq!(&pos2[..], &pos[..cut]);
            for i in 0..cut {
                assert_eq!(&mask2[i * cut..(i + 1) * cut], &mask[i * q..i * q + cut]);
            }
        }
    }

    /// A deterministic "model": the next token is a function of the last `ORDER` tokens
    /// of the context (with a tiny vocabulary this quickly falls into cycles, the text
    /// lookahead wins on).
    const ORDER: usize = 3;
    fn oracle(ctx: &[u32], vocab: u32, salt: u32) -> u32 {
        let tail = &ctx[ctx.len().saturating_sub(ORDER)..];
        let mut h = salt.wrapping_mul(0x9e37_79b9);
        for &t in tail {
            h = (h ^ t).wrapping_mul(0x85eb_ca6b).rotate_left(13);
        }
        h % vocab
    }

    fn plain_greedy(prompt: &[u32], n: usize, vocab: u32, salt: u32) -> Vec<u32> {
        let mut t = prompt.to_vec();
        for _ in 0..n {
            t.push(oracle(&t, vocab, salt));
        }
        t[prompt.len()..].to_vec()
    }

    /// Runs the engine's protocol against the oracle: propose, (maybe cut) schedule,
    /// positions and mask, logits of each row from its visible context, verify, apply.
    /// Returns the generated tokens and the steps taken.
    fn lookahead_greedy(
        c: LookaheadConfig,
        prompt: &[u32],
        n: usize,
        vocab: u32,
        salt: u32,
        rng: &mut ChaCha8Rng,
        cut_tails: bool,
    ) -> (Vec<u32>, usize) {
        let v = vocab as usize;
        let mut la = LookaheadSeq::new(c, prompt, &[], 11);
        let mut known = prompt.to_vec();
        // Tokens with KV: all known but the last (decode state).
        let mut computed = known.len() - 1;
        let mut steps = 0;
        while known.len() - prompt.len() < n {
            steps += 1;
            let last = known[known.len() - 1];
            let spec = la.propose(last, true);
            // The scheduler may cut drafts: by room left (max_tokens) and by chance.
            let room = (prompt.len() + n - 1).saturating_sub(known.len());
            let mut num_spec = spec.len().min(room);
            if cut_tails && rng.random_range(0..4) == 0 {
                num_spec = rng.random_range(0..=num_spec);
            }
            let q = known.len() - computed + num_spec;
            let mut tokens = known[computed..].to_vec();
            tokens.extend_from_slice(&spec[..num_spec]);
            let (pos, mask) = la
                .positions_and_mask(q, num_spec, computed)
                .unwrap_or_else(|| {
                    let m = (0..q * q).map(|k| (k % q <= k / q) as u8).collect();
                    ((computed as u32..(computed + q) as u32).collect(), m)
                });
            let mut rows = vec![0f32; (num_spec + 1) * v];
            for (r, i) in (q - num_spec - 1..q).enumerate() {
                let mut ctx = known[..computed].to_vec();
                ctx.extend(visible_context(&pos, &mask, &tokens, i));
                rows[r * v + oracle(&ctx, vocab, salt) as usize] = 1.0;
            }
            let out = la.verify(num_spec, &mut rows, v, |l| argmax(l));
            let nf_sched = out.tokens.len() - 1;
            assert!(out.tokens[..nf_sched] == spec[..nf_sched], "forced prefix");
            computed = known.len() + nf_sched;
            known.extend_from_slice(&out.tokens);
        }
        (known[prompt.len()..].to_vec(), steps)
    }

    #[test]
    fn oracle_output_equals_plain_greedy_and_repetition_is_accelerated() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut total_steps = 0;
        let mut total_tokens = 0;
        for case in 0..60 {
            let c = cfg(
                rng.random_range(1..8),
                rng.random_range(2..6),
                rng.random_range(1..6),
            );
            let vocab = rng.random_range(2..12);
            let prompt: Vec<u32> = (0..rng.random_range(1..20))
                .map(|_| rng.random_range(0..vocab))
                .collect();
            let n = rng.random_range(1..80);
            let want = plain_greedy(&prompt, n, vocab, case);
            let cut = case % 2 == 1;
            let (got, steps) = lookahead_greedy(c, &prompt, n, vocab, case, &mut rng, cut);
            assert_eq!(got, want, "case {case} {c:?} vocab {vocab}");
            if !cut {
                total_steps += steps;
                total_tokens += n;
            }
        }
        // The oracle's text cycles, so lookahead must take far fewer steps than tokens.
        assert!(
            total_tokens as f64 / total_steps as f64 > 1.5,
            "{total_tokens} tokens in {total_steps} steps"
        );
    }
}
