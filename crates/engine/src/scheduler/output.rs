//! Scheduler configuration, errors, and what one `schedule()` call decides.

use crate::kv::{KvError, KvStats};
use crate::sequence::SeqId;

/// Limits of one engine step and of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Token budget of one step (prefill chunks + decodes + speculative tokens).
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens per KV block (must equal the KV manager's).
    pub block_size: usize,
    /// The model's context length: prompt + max_tokens may not exceed it.
    pub max_model_len: usize,
    /// Split long prompts over several steps (vLLM v1 always does). When off, a prompt
    /// is scheduled whole, so `max_num_batched_tokens` must be at least `max_model_len`.
    pub enable_chunked_prefill: bool,
    /// With chunked prefill, most tokens one sequence gets per step (0: no cap), so a
    /// long prompt cannot crowd out the others' decodes.
    pub long_prefill_token_threshold: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_batched_tokens: 2048,
            max_num_seqs: 64,
            block_size: 16,
            max_model_len: 2048,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
        }
    }
}

/// Why the scheduler refused a call.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchedulerError {
    /// An unusable configuration.
    #[error("invalid scheduler configuration: {0}")]
    InvalidConfig(String),
    /// A request without prompt tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A request asking for no tokens.
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    /// Prompt plus `max_tokens` beyond the model's context.
    #[error(
        "this model's maximum context length is {max_model_len} tokens, but the request \
         asks for {prompt_tokens} prompt tokens plus {max_tokens} completion tokens"
    )]
    ContextTooLong {
        /// Prompt length.
        prompt_tokens: usize,
        /// Requested completion tokens.
        max_tokens: usize,
        /// The model's limit.
        max_model_len: usize,
    },
    /// The request's KV alone would need more blocks than the whole cache holds.
    #[error(
        "the request needs {needed_blocks} KV cache blocks but the cache has only \
         {num_blocks}; shorten the prompt or max_tokens"
    )]
    ExceedsKvCache {
        /// Blocks the request would need at its longest.
        needed_blocks: usize,
        /// Blocks in the pool.
        num_blocks: usize,
    },
    /// `add` with an id already in use.
    #[error("{0} is already scheduled")]
    DuplicateSeq(SeqId),
    /// An id the scheduler does not know (finished, aborted or never added).
    #[error("{0} is not known to the scheduler")]
    UnknownSeq(SeqId),
    /// Sampled tokens that do not fit the step they are said to come from (engine bug).
    #[error("step output does not match the schedule: {0}")]
    OutputMismatch(String),
    /// KV bookkeeping failure (engine bug).
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// One sequence's share of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// The sequence.
    pub seq_id: SeqId,
    /// Tokens fed to the model for it this step, at positions
    /// `num_computed_before .. num_computed_before + num_new_tokens`.
    pub num_new_tokens: usize,
    /// Tokens with KV already in its blocks before this step (prefix-cache hits
    /// included).
    pub num_computed_before: usize,
    /// Of the new tokens, how many are speculative draft tokens (the last ones).
    pub num_spec_tokens: usize,
    /// True when the chunk reaches the end of the known tokens, so the step samples
    /// (1 + accepted drafts) tokens for it; false for a prompt chunk that is not the
    /// last.
    pub produces_token: bool,
}

impl ScheduledSeq {
    /// KV length after this step: `num_computed_before + num_new_tokens`.
    pub fn context_len(&self) -> usize {
        self.num_computed_before + self.num_new_tokens
    }

    /// Rows of this sequence whose logits are wanted: the last `num_spec_tokens + 1`
    /// when it produces tokens, none otherwise.
    pub fn num_logits(&self) -> usize {
        if self.produces_token {
            self.num_spec_tokens + 1
        } else {
            0
        }
    }
}

/// What one step computes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// Sequences in the step, in batch order (running ones first, FCFS).
    pub scheduled: Vec<ScheduledSeq>,
    /// Sequences preempted (blocks freed, to be recomputed) while scheduling this step.
    pub preempted: Vec<SeqId>,
    /// Sum of `num_new_tokens`.
    pub num_batched_tokens: usize,
}

impl SchedulerOutput {
    /// True when nothing was scheduled.
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }
}

/// Queue and cache figures for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SchedulerStats {
    /// Sequences holding KV and being stepped.
    pub num_running: usize,
    /// Sequences queued (new or preempted).
    pub num_waiting: usize,
    /// Preemptions since start.
    pub num_preemptions: u64,
    /// KV usage and prefix-cache counters.
    pub kv: KvStats,
}
