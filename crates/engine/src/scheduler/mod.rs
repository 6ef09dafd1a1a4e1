//! The step scheduler (vLLM v1 style, FCFS).
//!
//! No prefill or decode phase: each sequence has `num_computed_tokens` and a target
//! (`num_tokens()` plus draft tokens); a step hands out up to `max_num_batched_tokens`
//! tokens. Running sequences go first in arrival order (a decode gets 1 token plus its
//! drafts, an unfinished prompt a chunk); when the KV pool runs dry the *latest* arrived
//! running sequence is preempted by recompute. Then, if nobody was preempted, waiting
//! sequences are admitted in arrival order while the budget, `max_num_seqs` and the pool
//! allow, skipping their prefix-cache hits.
//!
//! Protocol per step: `schedule()` -> build the batch (`fill_batch`) -> forward + sample
//! -> `update_from_output()` -> the engine checks stop conditions (EOS, stop strings,
//! `max_tokens`) and calls `finish()`. The engine must finish a sequence once it reaches
//! `max_tokens`: the scheduler gives it no further tokens past that point.
//!
//! Overlapped steps (the engine's `async_scheduling`): `apply_provisional()` right after a
//! step is queued advances its sequences as if it had finished, with a `PENDING_TOKEN`
//! in place of each token it samples, so the next step can be scheduled at once (its
//! input token then comes from the device); `resolve_provisional()` puts the sampled
//! ids in their places once the host has them. Only one step is ever provisional: the
//! engine resolves step N before it schedules step N + 2.

mod output;

use std::collections::{HashMap, VecDeque};

use sluice_model::BatchInput;

pub use output::{ScheduledSeq, SchedulerConfig, SchedulerError, SchedulerOutput, SchedulerStats};

use crate::kv::{BlockId, ComputedBlocks, KvCacheManager};
use crate::sequence::{FinishReason, SeqId, Sequence, SequenceStatus};

/// Decides, step by step, which sequences run and how many tokens each computes.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    /// Every live (waiting, running or preempted) sequence.
    seqs: HashMap<SeqId, Sequence>,
    /// Waiting and preempted sequences, sorted by arrival (earliest first).
    waiting: VecDeque<SeqId>,
    /// Running sequences, sorted by arrival: iteration order is FCFS and the last one is
    /// the preemption victim.
    running: Vec<SeqId>,
    next_arrival: u64,
    num_preemptions: u64,
}

impl Scheduler {
    /// A scheduler over `kv` with the limits in `config`.
    pub fn new(config: SchedulerConfig, kv: KvCacheManager) -> Result<Scheduler, SchedulerError> {
        let bad = |m: String| -> Result<Scheduler, SchedulerError> {
            Err(SchedulerError::InvalidConfig(m))
        };
        if config.max_num_batched_tokens == 0 {
            return bad("max_num_batched_tokens must be at least 1".into());
        }
        if config.max_num_seqs == 0 {
            return bad("max_num_seqs must be at least 1".into());
        }
        if config.max_model_len == 0 {
            return bad("max_model_len must be at least 1".into());
        }
        if config.block_size != kv.block_size() {
            return bad(format!(
                "block_size {} differs from the KV cache's {}",
                config.block_size,
                kv.block_size()
            ));
        }
        if !config.enable_chunked_prefill && config.max_num_batched_tokens < config.max_model_len {
            return bad(format!(
                "without chunked prefill max_num_batched_tokens ({}) must be at least \
                 max_model_len ({}), or long prompts could never be scheduled",
                config.max_num_batched_tokens, config.max_model_len
            ));
        }
        Ok(Scheduler {
            config,
            kv,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_arrival: 0,
            num_preemptions: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The KV manager (read-only).
    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Queues a new sequence, or refuses one that could never run: empty prompt,
    /// `max_tokens == 0`, prompt + `max_tokens` beyond `max_model_len`, or more KV
    /// blocks than the whole pool.
    pub fn add(&mut self, mut seq: Sequence) -> Result<(), SchedulerError> {
        if self.seqs.contains_key(&seq.id) {
            return Err(SchedulerError::DuplicateSeq(seq.id));
        }
        if seq.num_prompt_tokens() == 0 {
            return Err(SchedulerError::EmptyPrompt);
        }
        if seq.max_tokens == 0 {
            return Err(SchedulerError::ZeroMaxTokens);
        }
        let prompt_tokens = seq.num_prompt_tokens();
        if prompt_tokens.saturating_add(seq.max_tokens) > self.config.max_model_len {
            return Err(SchedulerError::ContextTooLong {
                prompt_tokens,
                max_tokens: seq.max_tokens,
                max_model_len: self.config.max_model_len,
            });
        }
        let needed_blocks = self.kv.blocks_for(seq.max_kv_tokens());
        let num_blocks = self.kv.pool().num_blocks();
        if needed_blocks > num_blocks {
            return Err(SchedulerError::ExceedsKvCache {
                needed_blocks,
                num_blocks,
            });
        }
        seq.arrival = self.next_arrival;
        self.next_arrival += 1;
        seq.status = SequenceStatus::Waiting;
        seq.num_computed_tokens = 0;
        self.waiting.push_back(seq.id);
        self.seqs.insert(seq.id, seq);
        Ok(())
    }

    /// Plans one step. See the module docs for the policy.
    pub fn schedule(&mut self) -> Result<SchedulerOutput, SchedulerError> {
        let mut budget = self.config.max_num_batched_tokens;
        let mut out = SchedulerOutput::default();

        // 1. Running sequences, FCFS.
        let mut i = 0;
        'running: while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = self.seqs.get(&id).ok_or(SchedulerError::UnknownSeq(id))?;
            let num_new = self.num_new_tokens(seq, 0, budget);
            if num_new == 0 {
                i += 1;
                continue;
            }
            loop {
                let seq = self.seqs.get(&id).ok_or(SchedulerError::UnknownSeq(id))?;
                if self
                    .kv
                    .allocate_slots(seq, num_new, &ComputedBlocks::default(), 0)?
                    .is_some()
                {
                    out.scheduled.push(Self::scheduled(seq, num_new));
                    budget -= num_new;
                    i += 1;
                    break;
                }
                // Out of blocks: preempt the latest arrival (the list's last).
                let Some(victim) = self.running.pop() else {
                    break 'running;
                };
                self.preempt(victim)?;
                out.preempted.push(victim);
                if victim == id {
                    break 'running;
                }
            }
        }

        // 2. Waiting sequences, FCFS, unless this step had to preempt.
        if out.preempted.is_empty() {
            while budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(&id) = self.waiting.front() else {
                    break;
                };
                let seq = self.seqs.get(&id).ok_or(SchedulerError::UnknownSeq(id))?;
                if seq.num_pending() > 0 {
                    // Preempted while a token of it was in flight: its prompt is not
                    // whole until that token is resolved (the next step).
                    break;
                }
                let computed = self.kv.get_computed_blocks(seq);
                let num_new = self.num_new_tokens(seq, computed.num_cached_tokens, budget);
                if num_new == 0 {
                    // Only when the whole prompt does not fit the budget without chunked
                    // prefill: wait for a step with more room (FCFS, no overtaking).
                    break;
                }
                if self
                    .kv
                    .allocate_slots(seq, num_new, &computed, 0)?
                    .is_none()
                {
                    break;
                }
                self.waiting.pop_front();
                let seq = self
                    .seqs
                    .get_mut(&id)
                    .ok_or(SchedulerError::UnknownSeq(id))?;
                if seq.status == SequenceStatus::Waiting {
                    seq.num_cached_tokens = computed.num_cached_tokens;
                }
                seq.status = SequenceStatus::Running;
                seq.num_computed_tokens = computed.num_cached_tokens;
                out.scheduled.push(Self::scheduled(seq, num_new));
                budget -= num_new;
                let arrival = seq.arrival;
                let pos = self
                    .running
                    .partition_point(|r| self.seqs.get(r).is_some_and(|s| s.arrival < arrival));
                self.running.insert(pos, id);
            }
        }

        out.num_batched_tokens = self.config.max_num_batched_tokens - budget;
        Ok(out)
    }

    /// Applies a step's results. `sampled[i]` are the tokens sampled for
    /// `out.scheduled[i]`: empty for a prompt chunk that produces nothing, otherwise the
    /// accepted draft tokens followed by one new token (just the new token without
    /// speculation). Advances `num_computed_tokens` (minus rejected drafts, whose blocks
    /// are rolled back), appends the tokens and caches newly full blocks. Sequences
    /// finished or aborted since `schedule()` are skipped.
    pub fn update_from_output(
        &mut self,
        out: &SchedulerOutput,
        sampled: &[Vec<u32>],
    ) -> Result<(), SchedulerError> {
        Self::check_token_lists(out, sampled)?;
        for (s, toks) in out.scheduled.iter().zip(sampled) {
            let Some(seq) = self.seqs.get_mut(&s.seq_id) else {
                continue;
            };
            let mismatch = |m: String| SchedulerError::OutputMismatch(format!("{}: {m}", s.seq_id));
            if seq.status != SequenceStatus::Running
                || seq.num_computed_tokens != s.num_computed_before
            {
                return Err(mismatch(format!(
                    "status {:?} with {} computed tokens, schedule said {} (applied twice?)",
                    seq.status, seq.num_computed_tokens, s.num_computed_before
                )));
            }
            if toks.len() > s.num_logits() || (s.produces_token && toks.is_empty()) {
                return Err(mismatch(format!(
                    "{} sampled tokens, expected {}",
                    toks.len(),
                    if s.produces_token {
                        format!("1..={}", s.num_logits())
                    } else {
                        "none".to_string()
                    }
                )));
            }
            let mut num_computed = s.context_len();
            if s.produces_token {
                let accepted = toks.len() - 1;
                if seq.spec_token_ids.get(..accepted) != Some(&toks[..accepted]) {
                    return Err(mismatch("accepted tokens differ from the drafts".into()));
                }
                num_computed -= s.num_spec_tokens - accepted;
                seq.spec_token_ids.clear();
                for &t in toks {
                    seq.append_token(t);
                }
            }
            seq.num_computed_tokens = num_computed;
            if s.produces_token && toks.len() < s.num_logits() {
                self.kv.truncate(s.seq_id, num_computed)?;
            }
            self.kv.cache_blocks(seq)?;
        }
        Ok(())
    }

    /// Applies a step that was just queued (overlapped steps): every scheduled sequence
    /// counts its tokens as computed, and one that samples a token gets a pending one in
    /// its place (no speculative tokens on this path). Blocks are cached only in
    /// `resolve_provisional`, once their tokens are known.
    pub fn apply_provisional(&mut self, out: &SchedulerOutput) -> Result<(), SchedulerError> {
        for s in &out.scheduled {
            let seq = self
                .seqs
                .get_mut(&s.seq_id)
                .ok_or(SchedulerError::UnknownSeq(s.seq_id))?;
            if seq.status != SequenceStatus::Running
                || seq.num_computed_tokens != s.num_computed_before
                || s.num_spec_tokens > 0
            {
                return Err(SchedulerError::OutputMismatch(format!(
                    "{}: status {:?}, {} computed tokens (schedule said {}), {} drafts: \
                     not a step that can be applied before its tokens are known",
                    s.seq_id,
                    seq.status,
                    seq.num_computed_tokens,
                    s.num_computed_before,
                    s.num_spec_tokens
                )));
            }
            seq.num_computed_tokens = s.context_len();
            if s.produces_token {
                seq.append_pending();
            }
        }
        Ok(())
    }

    /// Puts the tokens sampled by a step applied with `apply_provisional` in their places
    /// (`sampled[i]`: one token for each sequence that produces one, else none) and caches
    /// the blocks they complete. Sequences finished or aborted since are skipped; a
    /// preempted one still gets its token (it is part of what it recomputes).
    pub fn resolve_provisional(
        &mut self,
        out: &SchedulerOutput,
        sampled: &[Vec<u32>],
    ) -> Result<(), SchedulerError> {
        Self::check_token_lists(out, sampled)?;
        for (s, toks) in out.scheduled.iter().zip(sampled) {
            let Some(seq) = self.seqs.get_mut(&s.seq_id) else {
                continue;
            };
            match (s.produces_token, toks.as_slice()) {
                (true, &[t]) => {
                    if !seq.resolve_pending(s.context_len(), t) {
                        return Err(SchedulerError::OutputMismatch(format!(
                            "{}: no pending token at position {} (resolved twice?)",
                            s.seq_id,
                            s.context_len()
                        )));
                    }
                }
                (false, []) => {}
                _ => {
                    return Err(SchedulerError::OutputMismatch(format!(
                        "{}: {} tokens for a provisional step that {}",
                        s.seq_id,
                        toks.len(),
                        if s.produces_token {
                            "samples one"
                        } else {
                            "samples none"
                        }
                    )))
                }
            }
            if seq.status == SequenceStatus::Running {
                self.kv.cache_blocks(seq)?;
            }
        }
        Ok(())
    }

    /// One token list per scheduled sequence (`update_from_output`, `resolve_provisional`).
    fn check_token_lists(
        out: &SchedulerOutput,
        sampled: &[Vec<u32>],
    ) -> Result<(), SchedulerError> {
        if sampled.len() != out.scheduled.len() {
            return Err(SchedulerError::OutputMismatch(format!(
                "{} token lists for {} scheduled sequences",
                sampled.len(),
                out.scheduled.len()
            )));
        }
        Ok(())
    }

    /// Ends a sequence (any state), freeing its blocks at once; returns it with
    /// `status = Finished(reason)`.
    pub fn finish(&mut self, id: SeqId, reason: FinishReason) -> Result<Sequence, SchedulerError> {
        let mut seq = self
            .seqs
            .remove(&id)
            .ok_or(SchedulerError::UnknownSeq(id))?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        self.kv.free(id)?;
        seq.status = SequenceStatus::Finished(reason);
        Ok(seq)
    }

    /// `finish(id, FinishReason::Abort)`: a cancelled request.
    pub fn abort(&mut self, id: SeqId) -> Result<Sequence, SchedulerError> {
        self.finish(id, FinishReason::Abort)
    }

    /// Sets the draft tokens a running sequence verifies in its next step.
    pub fn set_spec_token_ids(
        &mut self,
        id: SeqId,
        drafts: Vec<u32>,
    ) -> Result<(), SchedulerError> {
        let seq = self
            .seqs
            .get_mut(&id)
            .ok_or(SchedulerError::UnknownSeq(id))?;
        seq.spec_token_ids = drafts;
        Ok(())
    }

    /// A live sequence.
    pub fn seq(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// A sequence's block table (empty while it holds no blocks).
    pub fn block_table(&self, id: SeqId) -> &[BlockId] {
        self.kv.block_table(id)
    }

    /// Appends the step's tokens, positions, slots, block tables and logits rows to
    /// `batch` (cleared first), in `out.scheduled` order. Logits rows: the last
    /// `num_logits()` tokens of each sequence.
    pub fn fill_batch(
        &self,
        out: &SchedulerOutput,
        batch: &mut BatchInput,
    ) -> Result<(), SchedulerError> {
        batch.clear();
        let mut tokens = Vec::new();
        for s in &out.scheduled {
            let seq = self
                .seqs
                .get(&s.seq_id)
                .ok_or(SchedulerError::UnknownSeq(s.seq_id))?;
            tokens.clear();
            for pos in s.num_computed_before..s.context_len() {
                let t = seq.token_with_spec(pos).ok_or_else(|| {
                    SchedulerError::OutputMismatch(format!(
                        "{}: no token at position {pos}",
                        s.seq_id
                    ))
                })?;
                tokens.push(t);
            }
            let table = self.kv.block_table(s.seq_id);
            if table.len() * self.config.block_size < s.context_len() {
                return Err(SchedulerError::OutputMismatch(format!(
                    "{}: block table covers {} tokens, step needs {}",
                    s.seq_id,
                    table.len() * self.config.block_size,
                    s.context_len()
                )));
            }
            batch.push_seq(
                &tokens,
                s.context_len(),
                table,
                self.config.block_size,
                false,
            );
            let end = batch.tokens.len() as u32;
            let rows = s.num_logits().min(s.num_new_tokens) as u32;
            batch.logits_indices.extend((end - rows)..end);
        }
        Ok(())
    }

    /// Sequences running now.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Sequences waiting (new or preempted).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// True while any sequence is live.
    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// Running sequence ids in FCFS order.
    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    /// Waiting sequence ids in admission order.
    pub fn waiting(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.waiting.iter().copied()
    }

    /// Figures for `/metrics`.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            num_preemptions: self.num_preemptions,
            kv: self.kv.stats(),
        }
    }

    /// Tokens `seq` gets this step, given `num_cached` prefix-cache hits (waiting
    /// sequences) and `budget` tokens left; 0 when it gets none.
    fn num_new_tokens(&self, seq: &Sequence, num_cached: usize, budget: usize) -> usize {
        // Known tokens are always computed; drafts only up to the last KV slot the
        // sequence can ever need (max_kv_tokens), and never past max_model_len.
        let known = seq.num_tokens();
        let mut target = seq
            .num_tokens_with_spec()
            .min(known.max(seq.max_kv_tokens()))
            .min(self.config.max_model_len);
        if seq.reached_max_tokens() {
            // Its last token is output only (the engine finishes it; an overlapped step
            // may schedule before it has).
            target = target.min(seq.max_kv_tokens());
        }
        let computed = seq.num_computed_tokens + num_cached;
        let mut n = target.saturating_sub(computed);
        if !self.config.enable_chunked_prefill {
            // A prompt (more than one known token to compute) is scheduled whole or not
            // at all; a decode may still get fewer drafts.
            let is_prefill = known.saturating_sub(computed) > 1;
            return if is_prefill && n > budget {
                0
            } else {
                n.min(budget)
            };
        }
        let threshold = self.config.long_prefill_token_threshold;
        if threshold > 0 && n > threshold {
            n = threshold;
        }
        n.min(budget)
    }

    /// Records a scheduled sequence (computed counts are those before the step).
    fn scheduled(seq: &Sequence, num_new: usize) -> ScheduledSeq {
        let before = seq.num_computed_tokens;
        let end = before + num_new;
        let known = seq.num_tokens();
        ScheduledSeq {
            seq_id: seq.id,
            num_new_tokens: num_new,
            num_computed_before: before,
            num_spec_tokens: end.saturating_sub(known),
            produces_token: end >= known,
        }
    }

    /// Recompute preemption: frees `id`'s blocks, forgets its progress and queues it by
    /// arrival (ahead of every later arrival, i.e. at the front of newer requests).
    fn preempt(&mut self, id: SeqId) -> Result<(), SchedulerError> {
        self.kv.free(id)?;
        let seq = self
            .seqs
            .get_mut(&id)
            .ok_or(SchedulerError::UnknownSeq(id))?;
        seq.status = SequenceStatus::Preempted;
        seq.num_computed_tokens = 0;
        seq.spec_token_ids.clear();
        seq.num_preemptions += 1;
        let arrival = seq.arrival;
        let pos = self
            .waiting
            .partition_point(|w| self.seqs.get(w).is_some_and(|s| s.arrival < arrival));
        self.waiting.insert(pos, id);
        self.num_preemptions += 1;
        Ok(())
    }
}
