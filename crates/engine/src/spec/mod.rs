//! Lossless speculative decoding inside the continuous-batching engine.
//!
//! Decoding is memory-bound: one forward over `1 + K` tokens of a sequence costs little
//! more than over one, so if something cheap can *guess* the next K tokens, the target
//! model verifies all of them in one step and keeps the longest correct prefix plus one
//! token of its own. The output distribution is exactly the target's (greedy: token for
//! token; temperature > 0: modified rejection sampling, Leviathan et al. 2023, "Fast
//! Inference from Transformers via Speculative Decoding", and Chen et al. 2023,
//! "Accelerating Large Language Model Decoding with Speculative Sampling").
//!
//! # How a step runs with speculation
//! ```text
//! LlmEngine::step():
//!   Speculator::propose()      for every running sequence in decode state: choose its K
//!                              (adaptive rule below), ask its proposer for <= K drafts,
//!                              Scheduler::set_spec_token_ids(drafts)
//!   Scheduler::schedule()      a decode gets 1 + len(drafts) tokens (counted in the token
//!                              budget, clipped by it and by max_tokens / max_model_len)
//!   Model::forward()           logits for every draft row and the last known token
//!   verify::verify_seq()       greedy equality or rejection sampling, row by row; shared
//!                              by all proposers (they never see logits)
//!   Scheduler::update_from_output()   appends accepted drafts + 1 token, rolls the KV of
//!                              rejected drafts back (whole blocks returned to the pool)
//!   Speculator::on_verified()  acceptance statistics, adaptive K, proposer feedback
//! ```
//!
//! # Writing a proposer (the interface other methods plug into)
//! Implement [`Proposer`]:
//! - [`Proposer::name`]: a short stable name (`"ngram"`, `"draft"`, `"lookahead"`). It
//!   labels the metrics and is what a request names in `"speculative": {"method": ...}`.
//! - [`Proposer::propose`]: called once per step with every sequence that wants drafts
//!   ([`ProposeRequest`]: its id, all its known tokens — prompt then output, the last of
//!   which has no KV in the target yet —, the prompt length, its sampling parameters and
//!   `max_drafts`, the most tokens it may propose). Write up to `max_drafts` tokens into
//!   `out[i].tokens`; fewer (or none) is fine. A proposer that *samples* its drafts from
//!   a distribution `q` (a draft model at temperature > 0) must also write `out[i].probs`
//!   (`[tokens.len(), vocab]`, the exact `q` each token was drawn from); leaving it empty
//!   declares the drafts deterministic (`q` a point mass), which is always correct for
//!   proposers that do not sample (n-gram lookup, greedy drafts, Jacobi iterates).
//! - [`Proposer::on_verified`] (optional): after verification, how many of the drafts
//!   were accepted and which tokens the step emitted. Proposers that keep per-sequence
//!   state (a draft model's KV cache, an n-gram pool) may update it here; the draft
//!   model instead re-synchronises lazily at the next `propose` by comparing the tokens
//!   it fed with the sequence's tokens, which also covers preemption.
//! - [`Proposer::release`]: the sequence is gone (finished, aborted); free its state.
//!   Called once per finished sequence on *every* registered proposer, including ones
//!   that never saw it (so it must be a cheap no-op for unknown ids).
//! - [`Proposer::draft_cost`]: the cost of one draft token relative to one target decode
//!   step (0 for lookups; about `draft bytes / target bytes` for a draft model). The
//!   adaptive rule uses it to decide whether speculating pays.
//!
//! Register it with [`LlmEngine::enable_speculation`](crate::LlmEngine::enable_speculation)
//! (the default method) or [`Speculator::add_proposer`] (one more a request may name).
//! Proposers never touch the scheduler, the target KV cache or the samplers.
//!
//! # Adaptive K (see [`adaptive`])
//! Per sequence, an exponential moving average `a` of the per-token acceptance rate
//! picks `K = argmax_k E[tokens](k, a) / (1 + (c_n + draft_cost) * k)`, with
//! `E[tokens](k, a) = (1 - a^(k+1)) / (1 - a)` (Leviathan et al., eq. 1) and `c_n` the
//! cost of a verified row relative to the plain step of the `n` sequences decoding now
//! (`adaptive::batch_verify_cost`: `verify_cost` at batch 1, towards 1 as the batch
//! grows and the forward becomes compute-bound); `K = 0` turns speculation off for that
//! sequence, re-probed with one draft every `PROBE_INTERVAL` steps. As a hard cap, drafts
//! are cut so that the step's decode rows stay within `max_batch_tokens`: with `n`
//! decoding sequences each gets at most `max_batch_tokens / n - 1` drafts, none once
//! that is below 1.

pub mod adaptive;
pub mod draft;
pub mod lookahead;
pub mod ngram;
pub mod verify;

use std::collections::HashMap;

use crate::engine::EngineError;
use crate::sampling::SamplingParams;
use crate::sequence::SeqId;

pub use adaptive::AdaptiveK;
pub use draft::{DraftModelProposer, DraftSource};
pub use ngram::NgramProposer;

/// Most draft tokens per sequence per step: more never pays (acceptance decays
/// geometrically) and it bounds the verification rows.
pub const MAX_SPECULATIVE_TOKENS: usize = 32;

/// Longest n-gram the prompt-lookup proposer may match.
pub const MAX_NGRAM: usize = 64;

/// One sequence asking for drafts.
#[derive(Clone, Copy, Debug)]
pub struct ProposeRequest<'a> {
    pub seq_id: SeqId,
    /// `[num_tokens]` prompt followed by the output so far. The last token is the one
    /// the next step feeds; drafts continue after it.
    pub token_ids: &'a [u32],
    pub num_prompt_tokens: usize,
    pub params: &'a SamplingParams,
    /// Most drafts to propose (>= 1).
    pub max_drafts: usize,
}

/// A proposer's guess for one sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Draft {
    /// `[k]` draft tokens, `k <= max_drafts`.
    pub tokens: Vec<u32>,
    /// `[k, vocab]` the distribution `q` each draft token was sampled from, or empty for
    /// deterministic drafts (point masses).
    pub probs: Vec<f32>,
}

impl Draft {
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.probs.clear();
    }
}

/// What verification made of one sequence's drafts.
#[derive(Clone, Copy, Debug)]
pub struct VerifyFeedback<'a> {
    pub seq_id: SeqId,
    /// The drafts that were verified (possibly fewer than proposed: the token budget
    /// or `max_tokens` cut them).
    pub drafted: &'a [u32],
    /// Leading drafts accepted.
    pub num_accepted: usize,
    /// Tokens the step emitted: the accepted drafts, then the target's own token
    /// (unless a stop token ended the sequence among the drafts).
    pub emitted: &'a [u32],
}

/// A source of draft tokens. See the module docs.
pub trait Proposer: Send {
    /// Stable short name: metrics label and the request's `speculative.method`.
    fn name(&self) -> &'static str;

    /// Writes up to `reqs[i].max_drafts` drafts for `reqs[i]` into `out[i]` (cleared by
    /// the caller; `out.len() == reqs.len()`).
    fn propose(
        &mut self,
        reqs: &[ProposeRequest<'_>],
        out: &mut [Draft],
    ) -> Result<(), EngineError>;

    /// Feedback after the drafts of one sequence were verified.
    fn on_verified(&mut self, _feedback: &VerifyFeedback<'_>) {}

    /// The sequence finished or was aborted.
    fn release(&mut self, _seq: SeqId) {}

    /// Cost of one draft token relative to one target decode step.
    fn draft_cost(&self) -> f64 {
        0.0
    }

    /// KV blocks the proposer's own cache holds (0 for proposers without one); tests
    /// check it returns to 0 once every sequence is released.
    fn kv_blocks_in_use(&self) -> usize {
        0
    }
}

/// Engine-wide speculation settings (validated by [`SpecConfig::validate`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SpecConfig {
    /// Most drafts per sequence per step (1..=MAX_SPECULATIVE_TOKENS).
    pub num_speculative_tokens: usize,
    /// Adapt K per sequence to its acceptance (off: always the full K).
    pub adaptive: bool,
    /// Decode rows (1 + drafts, summed over the batch) above which drafts are cut.
    pub max_batch_tokens: usize,
    /// Share of a one-sequence decode step that scales with its rows (compute), in
    /// [0, 1]: the cost of one extra verified row at batch 1 (see `adaptive`).
    pub verify_cost: f64,
    /// n-gram sizes for the prompt-lookup proposer (always available to requests).
    pub ngram_min: usize,
    pub ngram_max: usize,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            num_speculative_tokens: 5,
            adaptive: true,
            max_batch_tokens: 32,
            verify_cost: adaptive::VERIFY_COST,
            ngram_min: 1,
            ngram_max: 4,
        }
    }
}

impl SpecConfig {
    /// Checks ranges; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        let k = self.num_speculative_tokens;
        if k == 0 || k > MAX_SPECULATIVE_TOKENS {
            return Err(format!(
                "num_speculative_tokens must be between 1 and {MAX_SPECULATIVE_TOKENS}, got {k} \
                 (use --speculative off to disable speculation)"
            ));
        }
        if self.max_batch_tokens < 2 {
            return Err(format!(
                "spec max batch tokens must be at least 2 (one token plus one draft), got {}",
                self.max_batch_tokens
            ));
        }
        if !(self.verify_cost.is_finite() && (0.0..=1.0).contains(&self.verify_cost)) {
            return Err(format!(
                "the verification cost must be in [0, 1] decode steps per token, got {}",
                self.verify_cost
            ));
        }
        if self.ngram_min == 0 || self.ngram_min > self.ngram_max || self.ngram_max > MAX_NGRAM {
            return Err(format!(
                "n-gram sizes must satisfy 1 <= ngram_min <= ngram_max <= {MAX_NGRAM}, got \
                 min {} and max {}",
                self.ngram_min, self.ngram_max
            ));
        }
        Ok(())
    }
}

/// A request's own speculation choice (the `"speculative"` request field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecOverride {
    /// A registered proposer's name, or `"off"`; None keeps the engine's default.
    pub method: Option<String>,
    /// At most this many drafts per step (0: off); None keeps the engine's K.
    pub num_speculative_tokens: Option<usize>,
}

impl SpecOverride {
    /// Range check (the method name is checked by the engine, which knows its proposers).
    pub fn validate(&self) -> Result<(), (String, &'static str)> {
        if let Some(k) = self.num_speculative_tokens {
            if k > MAX_SPECULATIVE_TOKENS {
                return Err((
                    format!(
                        "speculative.num_speculative_tokens must be at most \
                         {MAX_SPECULATIVE_TOKENS}, got {k}"
                    ),
                    "speculative",
                ));
            }
        }
        if let Some(m) = &self.method {
            if m.is_empty() {
                return Err(("speculative.method must not be empty".into(), "speculative"));
            }
        }
        Ok(())
    }

    fn is_off(&self) -> bool {
        self.method.as_deref() == Some("off") || self.num_speculative_tokens == Some(0)
    }
}

/// Acceptance counters of one method (exported as metrics).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecMethodStats {
    pub method: &'static str,
    /// Verification steps of a sequence with at least one draft.
    pub num_drafts: u64,
    /// Draft tokens verified.
    pub num_draft_tokens: u64,
    /// Of those, accepted.
    pub num_accepted_tokens: u64,
    /// Tokens emitted by those steps (accepted drafts + the target's token).
    pub num_emitted_tokens: u64,
}

impl SpecMethodStats {
    /// Accepted / verified draft tokens (0 before any).
    pub fn acceptance_rate(&self) -> f64 {
        if self.num_draft_tokens == 0 {
            0.0
        } else {
            self.num_accepted_tokens as f64 / self.num_draft_tokens as f64
        }
    }

    /// Tokens emitted per verification step (1 + mean accepted drafts): the speed-up of
    /// a step in tokens, before its cost.
    pub fn mean_accepted_length(&self) -> f64 {
        if self.num_drafts == 0 {
            0.0
        } else {
            self.num_emitted_tokens as f64 / self.num_drafts as f64
        }
    }
}

/// A pending draft between `propose` and verification.
struct Pending {
    proposer: usize,
    /// `[k, vocab]` or empty (see [`Draft::probs`]).
    probs: Vec<f32>,
}

/// Per-sequence speculation state.
struct SeqSpec {
    /// Index into `proposers`; None: speculation off for this request.
    proposer: Option<usize>,
    /// The request's K cap.
    max_k: usize,
    adaptive: AdaptiveK,
    pending: Option<Pending>,
}

/// The engine's speculation state: proposers, per-sequence adaptivity and counters.
pub struct Speculator {
    config: SpecConfig,
    proposers: Vec<Box<dyn Proposer>>,
    /// Index of the default proposer.
    default: usize,
    seqs: HashMap<SeqId, SeqSpec>,
    stats: Vec<SpecMethodStats>,
    // Scratch reused every step.
    req_ids: Vec<(SeqId, usize)>,
    drafts: Vec<Draft>,
}

impl Speculator {
    /// A speculator whose default method is `default`; an n-gram proposer is added when
    /// the default is another method, so requests can always ask for `"ngram"`.
    pub fn new(config: SpecConfig, default: Box<dyn Proposer>) -> Result<Speculator, String> {
        config.validate()?;
        let mut s = Speculator {
            proposers: Vec::new(),
            default: 0,
            seqs: HashMap::new(),
            stats: Vec::new(),
            req_ids: Vec::new(),
            drafts: Vec::new(),
            config,
        };
        s.add_proposer(default)?;
        if !s.proposers.iter().any(|p| p.name() == "ngram") {
            let ng = NgramProposer::new(s.config.ngram_min, s.config.ngram_max)?;
            s.add_proposer(Box::new(ng))?;
        }
        Ok(s)
    }

    /// Registers one more method requests may name (names must be unique).
    pub fn add_proposer(&mut self, p: Box<dyn Proposer>) -> Result<(), String> {
        let name = p.name();
        if name == "off" || self.proposers.iter().any(|q| q.name() == name) {
            return Err(format!(
                "a speculative method named `{name}` is already registered"
            ));
        }
        self.stats.push(SpecMethodStats {
            method: name,
            ..Default::default()
        });
        self.proposers.push(p);
        Ok(())
    }

    pub fn config(&self) -> &SpecConfig {
        &self.config
    }

    /// Name of the default method.
    pub fn default_method(&self) -> &'static str {
        self.proposers[self.default].name()
    }

    /// Names of the registered methods.
    pub fn methods(&self) -> Vec<&'static str> {
        self.proposers.iter().map(|p| p.name()).collect()
    }

    /// Per-method acceptance counters.
    pub fn stats(&self) -> &[SpecMethodStats] {
        &self.stats
    }

    /// Checks a request's override against the registered methods.
    pub fn check_override(&self, o: &SpecOverride) -> Result<(), String> {
        if let Some(m) = o.method.as_deref() {
            if m != "off" && !self.proposers.iter().any(|p| p.name() == m) {
                return Err(format!(
                    "speculative method `{m}` is not available on this engine (available: \
                     off, {})",
                    self.methods().join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Starts tracking a sequence with its request's override (checked before).
    pub fn add_seq(&mut self, id: SeqId, o: Option<&SpecOverride>) {
        let k = self.config.num_speculative_tokens;
        let (proposer, max_k) = match o {
            Some(o) if o.is_off() => (None, 0),
            Some(o) => {
                let p = match o.method.as_deref() {
                    Some(m) => self.proposers.iter().position(|p| p.name() == m),
                    None => Some(self.default),
                };
                (p, o.num_speculative_tokens.unwrap_or(k))
            }
            None => (Some(self.default), k),
        };
        self.seqs.insert(
            id,
            SeqSpec {
                proposer,
                max_k,
                adaptive: AdaptiveK::new(),
                pending: None,
            },
        );
    }

    /// Forgets a finished or aborted sequence (every proposer releases its state).
    pub fn remove_seq(&mut self, id: SeqId) {
        if self.seqs.remove(&id).is_some() {
            for p in &mut self.proposers {
                p.release(id);
            }
        }
    }

    /// Drafts K (0 means no drafts) for a decoding sequence given the batch rule's cap.
    /// (`verify_cost`: the cost of a verified row at this step's batch size.)
    fn choose_k(
        config: &SpecConfig,
        proposers: &[Box<dyn Proposer>],
        s: &mut SeqSpec,
        batch_cap: usize,
        verify_cost: f64,
    ) -> usize {
        let Some(p) = s.proposer else {
            return 0;
        };
        let cap = s.max_k.min(batch_cap);
        if cap == 0 {
            return 0;
        }
        if !config.adaptive {
            return cap;
        }
        s.adaptive
            .choose(cap, verify_cost + proposers[p].draft_cost())
    }

    /// Proposes drafts for `cands` (sequences in decode state: all known tokens but the
    /// last have KV). `lookup(id)` gives a sequence's tokens, prompt length, sampling
    /// parameters and the most drafts its length limits allow. Returns the drafts to
    /// hand to the scheduler (`Scheduler::set_spec_token_ids`).
    pub fn propose<'a, L>(
        &mut self,
        cands: &[SeqId],
        lookup: L,
    ) -> Result<Vec<(SeqId, Vec<u32>)>, EngineError>
    where
        L: Fn(SeqId) -> Option<(&'a [u32], usize, &'a SamplingParams, usize)>,
    {
        let mut result = Vec::new();
        // Batch rule: each decoding sequence feeds 1 + k rows; keep the sum within
        // max_batch_tokens.
        let n = cands.len().max(1);
        let batch_cap = (self.config.max_batch_tokens / n).saturating_sub(1);
        let verify_cost = adaptive::batch_verify_cost(self.config.verify_cost, n);
        // (sequence, proposer, k) for every candidate that drafts this step.
        let mut chosen: Vec<(SeqId, usize, usize)> = Vec::with_capacity(cands.len());
        for &id in cands {
            let Some(s) = self.seqs.get_mut(&id) else {
                continue;
            };
            let mut k = Self::choose_k(&self.config, &self.proposers, s, batch_cap, verify_cost);
            if let Some((_, _, _, room)) = lookup(id) {
                k = k.min(room);
            }
            let proposer = s.proposer;
            s.pending = None;
            s.adaptive.tick(k);
            if let (Some(p), true) = (proposer, k > 0) {
                chosen.push((id, p, k));
            }
        }
        for pi in 0..self.proposers.len() {
            self.req_ids.clear();
            self.req_ids.extend(
                chosen
                    .iter()
                    .filter(|c| c.1 == pi)
                    .map(|&(id, _, k)| (id, k)),
            );
            if self.req_ids.is_empty() {
                continue;
            }
            let mut reqs = Vec::with_capacity(self.req_ids.len());
            for &(id, k) in &self.req_ids {
                if let Some((tokens, n_prompt, params, _)) = lookup(id) {
                    reqs.push(ProposeRequest {
                        seq_id: id,
                        token_ids: tokens,
                        num_prompt_tokens: n_prompt,
                        params,
                        max_drafts: k,
                    });
                }
            }
            self.drafts.resize_with(reqs.len(), Draft::default);
            for d in &mut self.drafts[..reqs.len()] {
                d.clear();
            }
            self.proposers[pi].propose(&reqs, &mut self.drafts[..reqs.len()])?;
            for (r, d) in reqs.iter().zip(&mut self.drafts) {
                d.tokens.truncate(r.max_drafts);
                if d.tokens.is_empty() {
                    continue;
                }
                let k = d.tokens.len();
                let probs = std::mem::take(&mut d.probs);
                if !probs.is_empty() && probs.len() % k != 0 {
                    return Err(EngineError::Speculative(format!(
                        "proposer {} returned {} probabilities for {k} drafts",
                        self.proposers[pi].name(),
                        probs.len()
                    )));
                }
                if let Some(s) = self.seqs.get_mut(&r.seq_id) {
                    s.pending = Some(Pending {
                        proposer: pi,
                        probs,
                    });
                }
                result.push((r.seq_id, std::mem::take(&mut d.tokens)));
            }
        }
        Ok(result)
    }

    /// The distributions the pending drafts of `id` were sampled from (`[k, vocab]`),
    /// empty for deterministic drafts.
    pub fn draft_probs(&self, id: SeqId) -> &[f32] {
        self.seqs
            .get(&id)
            .and_then(|s| s.pending.as_ref())
            .map_or(&[], |p| &p.probs)
    }

    /// Records the verification of `id`'s drafts (no-op for a sequence without any).
    pub fn on_verified(&mut self, fb: &VerifyFeedback<'_>) {
        let Some(s) = self.seqs.get_mut(&fb.seq_id) else {
            return;
        };
        let Some(pending) = s.pending.take() else {
            return;
        };
        if fb.drafted.is_empty() {
            return;
        }
        s.adaptive.observe(fb.drafted.len(), fb.num_accepted);
        let st = &mut self.stats[pending.proposer];
        st.num_drafts += 1;
        st.num_draft_tokens += fb.drafted.len() as u64;
        st.num_accepted_tokens += fb.num_accepted as u64;
        st.num_emitted_tokens += fb.emitted.len() as u64;
        self.proposers[pending.proposer].on_verified(fb);
    }

    /// Drops pending drafts of a sequence that was preempted (the scheduler cleared
    /// them too).
    pub fn clear_pending(&mut self, id: SeqId) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.pending = None;
        }
    }

    /// Sequences tracked (for leak checks in tests).
    pub fn num_tracked(&self) -> usize {
        self.seqs.len()
    }

    /// KV blocks held by the proposers' own caches (for leak checks).
    pub fn proposer_kv_blocks_in_use(&self) -> usize {
        self.proposers.iter().map(|p| p.kv_blocks_in_use()).sum()
    }
}
