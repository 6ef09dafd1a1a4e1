//! One generation request as the scheduler sees it: its tokens, how many of them have
//! KV entries, and where it is in its life.
//!
//! vLLM v1 style: a sequence has no "prefill" or "decode" phase, only
//! `num_computed_tokens` (tokens whose KV is in the cache) and a target
//! (`num_tokens()`, plus any speculative tokens). The scheduler gives it some of the
//! difference each step.

use std::fmt;

/// Identifier of a sequence, unique for the engine's lifetime (the engine assigns it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq-{}", self.0)
    }
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string/token was produced.
    Stop,
    /// `max_tokens` (or the model's context length) was reached.
    Length,
    /// The client went away or cancelled.
    Abort,
    /// The engine failed on this sequence.
    Error,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string (`abort`/`error` are not OpenAI values but
    /// are never shown as a successful finish).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

/// Where a sequence is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SequenceStatus {
    /// Queued, holds no KV blocks.
    Waiting,
    /// Admitted: holds KV blocks and gets tokens every step.
    Running,
    /// Was running, lost its blocks to make room (recompute preemption) and waits to be
    /// admitted again; its output so far is kept and recomputed as prompt.
    Preempted,
    /// Done; holds no blocks.
    Finished(FinishReason),
}

impl SequenceStatus {
    /// True for `Finished(_)`.
    pub fn is_finished(self) -> bool {
        matches!(self, SequenceStatus::Finished(_))
    }
}

/// The value of a token that an overlapped step is still sampling on the device (never a
/// vocabulary id; batches carry such tokens as `BatchInput::deferred_tokens`).
pub const PENDING_TOKEN: u32 = u32::MAX;

/// A sequence's tokens and progress.
///
/// Prompt and output tokens live in one vector (`all_token_ids()` is a slice, which the
/// prefix hasher and the batch builder read without copying).
#[derive(Clone, Debug)]
pub struct Sequence {
    /// Engine-assigned id.
    pub id: SeqId,
    /// `[num_prompt_tokens + num_output_tokens]`: prompt followed by generated tokens.
    token_ids: Vec<u32>,
    num_prompt_tokens: usize,
    /// Tokens whose KV entries are in this sequence's blocks (from the prefix cache or
    /// computed by a forward pass). Positions `num_computed_tokens..` still need computing.
    pub num_computed_tokens: usize,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Admission order, set by the scheduler on `add`: lower means earlier (FCFS
    /// priority; the latest arrival is preempted first).
    pub arrival: u64,
    /// Prompt tokens served from the prefix cache at first admission (for usage
    /// reporting, e.g. OpenAI `prompt_tokens_details.cached_tokens`).
    pub num_cached_tokens: usize,
    /// Draft tokens proposed for the next step (speculative decoding); scheduled after
    /// the known tokens and verified by the model. Empty without speculation.
    pub spec_token_ids: Vec<u32>,
    /// Life stage.
    pub status: SequenceStatus,
    /// Optional per-request salt mixed into prefix-cache hashes: requests with different
    /// salts never share cached blocks (tenant isolation).
    pub cache_salt: Option<String>,
    /// Times this sequence was preempted.
    pub num_preemptions: u32,
    /// Output tokens appended as `PENDING_TOKEN` by an overlapped step whose ids the host
    /// has not read yet (`Scheduler::apply_provisional`).
    num_pending: usize,
}

impl Sequence {
    /// A waiting sequence with `prompt_token_ids` that may generate `max_tokens` tokens.
    pub fn new(id: SeqId, prompt_token_ids: Vec<u32>, max_tokens: usize) -> Sequence {
        let num_prompt_tokens = prompt_token_ids.len();
        Sequence {
            id,
            token_ids: prompt_token_ids,
            num_prompt_tokens,
            num_computed_tokens: 0,
            max_tokens,
            arrival: 0,
            num_cached_tokens: 0,
            spec_token_ids: Vec::new(),
            status: SequenceStatus::Waiting,
            cache_salt: None,
            num_preemptions: 0,
            num_pending: 0,
        }
    }

    /// Sets the prefix-cache salt (builder style).
    pub fn with_cache_salt(mut self, salt: impl Into<String>) -> Sequence {
        self.cache_salt = Some(salt.into());
        self
    }

    /// Prompt followed by output tokens.
    pub fn all_token_ids(&self) -> &[u32] {
        &self.token_ids
    }

    /// The prompt.
    pub fn prompt_token_ids(&self) -> &[u32] {
        &self.token_ids[..self.num_prompt_tokens]
    }

    /// Generated tokens so far.
    pub fn output_token_ids(&self) -> &[u32] {
        &self.token_ids[self.num_prompt_tokens..]
    }

    /// Prompt plus output length.
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Prompt length.
    pub fn num_prompt_tokens(&self) -> usize {
        self.num_prompt_tokens
    }

    /// Generated token count.
    pub fn num_output_tokens(&self) -> usize {
        self.token_ids.len() - self.num_prompt_tokens
    }

    /// Known tokens plus draft tokens: what the scheduler tries to compute.
    pub fn num_tokens_with_spec(&self) -> usize {
        self.token_ids.len() + self.spec_token_ids.len()
    }

    /// Token at absolute position `pos` counting draft tokens after the known ones.
    pub fn token_with_spec(&self, pos: usize) -> Option<u32> {
        match self.token_ids.get(pos) {
            Some(&t) => Some(t),
            None => self.spec_token_ids.get(pos - self.token_ids.len()).copied(),
        }
    }

    /// Appends a token that a step in flight is sampling (its place is known, its value
    /// not yet): `PENDING_TOKEN` until `resolve_pending`.
    pub fn append_pending(&mut self) {
        self.token_ids.push(PENDING_TOKEN);
        self.num_pending += 1;
    }

    /// Puts the sampled `token` in the pending place `pos`; false if `pos` holds no
    /// pending token.
    pub fn resolve_pending(&mut self, pos: usize, token: u32) -> bool {
        match self.token_ids.get_mut(pos) {
            Some(t) if *t == PENDING_TOKEN && pos >= self.num_prompt_tokens => {
                *t = token;
                self.num_pending -= 1;
                true
            }
            _ => false,
        }
    }

    /// Output tokens whose values are still on the device (see `append_pending`).
    pub fn num_pending(&self) -> usize {
        self.num_pending
    }

    /// Appends a generated token.
    pub fn append_token(&mut self, token: u32) {
        self.token_ids.push(token);
    }

    /// True once `max_tokens` tokens have been generated (the engine then finishes the
    /// sequence with `FinishReason::Length`).
    pub fn reached_max_tokens(&self) -> bool {
        self.num_output_tokens() >= self.max_tokens
    }

    /// Most KV slots this sequence can ever need: every token but the last generated
    /// one is fed back through the model.
    pub fn max_kv_tokens(&self) -> usize {
        (self.num_prompt_tokens + self.max_tokens).saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_views() {
        let mut s = Sequence::new(SeqId(7), vec![1, 2, 3], 4);
        s.append_token(9);
        assert_eq!(s.prompt_token_ids(), &[1, 2, 3]);
        assert_eq!(s.output_token_ids(), &[9]);
        assert_eq!(s.all_token_ids(), &[1, 2, 3, 9]);
        assert_eq!(s.num_tokens(), 4);
        s.spec_token_ids = vec![5, 6];
        assert_eq!(s.num_tokens_with_spec(), 6);
        assert_eq!(s.token_with_spec(3), Some(9));
        assert_eq!(s.token_with_spec(5), Some(6));
        assert_eq!(s.token_with_spec(6), None);
        assert!(!s.reached_max_tokens());
        assert_eq!(s.max_kv_tokens(), 6);
        assert_eq!(SeqId(7).to_string(), "seq-7");
    }
}
