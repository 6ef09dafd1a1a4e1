//! The scheduler stepped with a fake model.
//!
//! The fake model is small but honest about the one thing that matters here: it writes
//! each batch token (and its position) into a simulated paged KV memory through the
//! batch's slot mapping, and computes each next token from the context it *reads back
//! through the block table* (positions `0..=p`). A wrong block table, a bad prefix-cache
//! hit, a stale slot after preemption, or a lost chunk changes the tokens, so comparing
//! against a reference that just iterates `next_token` over the sequence checks the
//! whole bookkeeping end to end.

use std::collections::HashMap;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_engine::kv::KvCacheManager;
use sluice_engine::scheduler::{Scheduler, SchedulerConfig, SchedulerError, SchedulerOutput};
use sluice_engine::sequence::{FinishReason, SeqId, Sequence, SequenceStatus, PENDING_TOKEN};
use sluice_model::BatchInput;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const VOCAB: u32 = 50;

/// The "model": FNV-1a of the whole context, modulo the vocabulary.
fn next_token(ctx: &[u32]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in ctx {
        h ^= t as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % VOCAB as u64) as u32
}

/// Greedy continuation of `prompt` computed directly.
fn reference(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    reference_until(prompt, max_tokens, None)
}

/// `reference`, ending after `stop` where it comes first.
fn reference_until(prompt: &[u32], max_tokens: usize, stop: Option<u32>) -> Vec<u32> {
    let mut ctx = prompt.to_vec();
    for _ in 0..max_tokens {
        let t = next_token(&ctx);
        ctx.push(t);
        if Some(t) == stop {
            break;
        }
    }
    ctx[prompt.len()..].to_vec()
}

/// The token that ends a sequence in the overlapped workloads (an EOS): a sequence that
/// stops has one more token in flight, which must be dropped.
const STOP: u32 = 7;

struct FakeModel {
    block_size: usize,
    num_blocks: usize,
    /// `[num_blocks * block_size]`: (token, position) written to each slot.
    kv: Vec<Option<(u32, u32)>>,
}

impl FakeModel {
    fn new(num_blocks: usize, block_size: usize) -> FakeModel {
        FakeModel {
            block_size,
            num_blocks,
            kv: vec![None; num_blocks * block_size],
        }
    }

    /// One token per logits row, like greedy sampling over real logits.
    fn forward(&mut self, batch: &BatchInput) -> Result<Vec<u32>, String> {
        batch.validate(self.num_blocks, self.block_size)?;
        // Like a real model: every token's KV is written before attention reads.
        for i in 0..batch.tokens.len() {
            self.kv[batch.slot_mapping[i] as usize] = Some((batch.tokens[i], batch.positions[i]));
        }
        let mut rows = batch.logits_indices.iter().peekable();
        let mut out = Vec::new();
        let mut start = 0usize;
        for s in &batch.seqs {
            let end = start + s.num_tokens;
            while let Some(&&r) = rows.peek() {
                let r = r as usize;
                if r >= end {
                    break;
                }
                rows.next();
                let pos = batch.positions[r] as usize;
                let mut ctx = Vec::with_capacity(pos + 1);
                for p in 0..=pos {
                    let slot = s.block_table[p / self.block_size] as usize * self.block_size
                        + p % self.block_size;
                    match self.kv[slot] {
                        Some((t, q)) if q as usize == p => ctx.push(t),
                        other => {
                            return Err(format!("position {p} reads {other:?} from slot {slot}"))
                        }
                    }
                }
                out.push(next_token(&ctx));
            }
            start = end;
        }
        Ok(out)
    }
}

/// The engine's part of a step: schedule, forward, sample (greedy, verifying drafts),
/// update, finish sequences that reached max_tokens. Returns the step's schedule and
/// the finished sequences.
struct Driver {
    sched: Scheduler,
    model: FakeModel,
    batch: BatchInput,
    done: HashMap<SeqId, Sequence>,
    /// Overlapped steps: the step "on the device" whose tokens the driver has not
    /// applied yet, with its sampled ids and each sequence's row in them.
    in_flight: Option<(SchedulerOutput, Vec<u32>, HashMap<SeqId, usize>)>,
}

impl Driver {
    fn new(
        cfg: SchedulerConfig,
        num_blocks: usize,
        prefix_caching: bool,
    ) -> Result<Driver, SchedulerError> {
        let kv = KvCacheManager::new(num_blocks, cfg.block_size, prefix_caching, "fake");
        let model = FakeModel::new(num_blocks, cfg.block_size);
        Ok(Driver {
            sched: Scheduler::new(cfg, kv)?,
            model,
            batch: BatchInput::default(),
            done: HashMap::new(),
            in_flight: None,
        })
    }

    fn add(&mut self, id: u64, prompt: Vec<u32>, max_tokens: usize) -> Result<(), SchedulerError> {
        self.sched.add(Sequence::new(SeqId(id), prompt, max_tokens))
    }

    fn step(&mut self) -> Result<SchedulerOutput, Box<dyn std::error::Error>> {
        let out = self.sched.schedule()?;
        let cfg = self.sched.config().clone();
        assert!(out.num_batched_tokens <= cfg.max_num_batched_tokens);
        assert_eq!(
            out.num_batched_tokens,
            out.scheduled
                .iter()
                .map(|s| s.num_new_tokens)
                .sum::<usize>()
        );
        assert!(self.sched.num_running() <= cfg.max_num_seqs);
        self.sched.fill_batch(&out, &mut self.batch)?;
        let row_tokens = self.model.forward(&self.batch)?;
        let mut rows = row_tokens.into_iter();
        let mut sampled = Vec::with_capacity(out.scheduled.len());
        for s in &out.scheduled {
            let seq = self
                .sched
                .seq(s.seq_id)
                .ok_or("scheduled sequence vanished")?;
            let preds: Vec<u32> = rows.by_ref().take(s.num_logits()).collect();
            // Accept drafts while the model agrees, then take its next token.
            let drafts = &seq.spec_token_ids;
            let mut toks = Vec::new();
            for (j, &p) in preds.iter().enumerate() {
                toks.push(p);
                if j >= s.num_spec_tokens || drafts.get(j) != Some(&p) {
                    break;
                }
            }
            sampled.push(toks);
        }
        self.sched.update_from_output(&out, &sampled)?;
        for s in &out.scheduled {
            let Some(seq) = self.sched.seq(s.seq_id) else {
                continue;
            };
            assert!(
                seq.num_output_tokens() <= seq.max_tokens,
                "{} overran max_tokens",
                seq.id
            );
            if seq.reached_max_tokens() {
                let seq = self.sched.finish(s.seq_id, FinishReason::Length)?;
                self.done.insert(seq.id, seq);
            }
        }
        Ok(out)
    }

    /// One overlapped step, as the engine runs them: schedule step N + 1 while step N's
    /// ids are "on the device" (its pending tokens are taken from those ids, as
    /// `Device::resolve_token_ids` does), apply it provisionally, then resolve step N:
    /// put its tokens in place and finish sequences that stopped (`STOP`) or reached
    /// `max_tokens`. No drafts.
    fn step_overlapped(&mut self) -> TestResult {
        let prev = self.in_flight.take();
        let out = self.sched.schedule()?;
        if !out.is_empty() {
            let cfg = self.sched.config().clone();
            assert!(out.num_batched_tokens <= cfg.max_num_batched_tokens);
            assert!(self.sched.num_running() <= cfg.max_num_seqs);
            self.sched.fill_batch(&out, &mut self.batch)?;
            let mut row = 0;
            for s in &out.scheduled {
                for r in row..row + s.num_new_tokens {
                    if self.batch.tokens[r] == PENDING_TOKEN {
                        let (_, ids, rows) = prev
                            .as_ref()
                            .ok_or("a pending token with no step in flight")?;
                        let src = rows
                            .get(&s.seq_id)
                            .ok_or("a pending token the step in flight does not sample")?;
                        self.batch.tokens[r] = ids[*src];
                    }
                }
                row += s.num_new_tokens;
            }
            let ids = self.model.forward(&self.batch)?;
            self.sched.apply_provisional(&out)?;
            let mut rows = HashMap::new();
            for s in out.scheduled.iter().filter(|s| s.produces_token) {
                rows.insert(s.seq_id, rows.len());
            }
            self.in_flight = Some((out, ids, rows));
        }
        let Some((out, ids, rows)) = prev else {
            return Ok(());
        };
        let sampled: Vec<Vec<u32>> = out
            .scheduled
            .iter()
            .map(|s| {
                rows.get(&s.seq_id)
                    .map(|&r| vec![ids[r]])
                    .unwrap_or_default()
            })
            .collect();
        self.sched.resolve_provisional(&out, &sampled)?;
        for (s, toks) in out.scheduled.iter().zip(&sampled) {
            let Some(seq) = self.sched.seq(s.seq_id) else {
                continue;
            };
            let n_out = seq.num_output_tokens() - seq.num_pending();
            assert!(n_out <= seq.max_tokens, "{} overran max_tokens", seq.id);
            if toks.as_slice() == [STOP] || n_out == seq.max_tokens {
                let seq = self.sched.finish(s.seq_id, FinishReason::Length)?;
                self.done.insert(seq.id, seq);
            }
        }
        Ok(())
    }

    /// Steps until every sequence finished (or `max_steps`).
    fn run(&mut self, max_steps: usize) -> TestResult {
        for _ in 0..max_steps {
            if !self.sched.has_unfinished() {
                break;
            }
            self.step()?;
        }
        assert!(
            !self.sched.has_unfinished(),
            "work left after {max_steps} steps"
        );
        self.assert_all_free();
        Ok(())
    }

    /// A finished sequence's output (without a token still pending when it stopped).
    fn output(&self, id: u64) -> Vec<u32> {
        self.done
            .get(&SeqId(id))
            .map(|s| {
                s.output_token_ids()
                    .iter()
                    .copied()
                    .take_while(|&t| t != PENDING_TOKEN)
                    .take(s.max_tokens)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn assert_all_free(&self) {
        let kv = self.sched.kv();
        assert_eq!(
            kv.num_free_blocks(),
            kv.pool().num_blocks(),
            "blocks leaked"
        );
        assert_eq!(kv.tracked_seqs().count(), 0);
    }
}

fn cfg(
    budget: usize,
    max_num_seqs: usize,
    block_size: usize,
    max_model_len: usize,
) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs,
        block_size,
        max_model_len,
        enable_chunked_prefill: true,
        long_prefill_token_threshold: 0,
    }
}

fn prompt(seed: u64, len: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(0..VOCAB)).collect()
}

#[test]
fn chunked_prefill_splits_long_prompt_by_budget() -> TestResult {
    let mut d = Driver::new(cfg(8, 4, 4, 64), 32, true)?;
    let p = prompt(1, 20);
    d.add(1, p.clone(), 3)?;
    let mut chunks = Vec::new();
    while d.sched.has_unfinished() {
        let out = d.step()?;
        let s = out.scheduled[0];
        chunks.push((s.num_computed_before, s.num_new_tokens, s.produces_token));
    }
    assert_eq!(
        chunks,
        vec![
            (0, 8, false),
            (8, 8, false),
            (16, 4, true),
            (20, 1, true),
            (21, 1, true)
        ]
    );
    assert_eq!(d.output(1), reference(&p, 3));
    d.assert_all_free();
    Ok(())
}

#[test]
fn decodes_share_a_step_with_a_prefill_chunk() -> TestResult {
    let mut d = Driver::new(cfg(10, 4, 4, 64), 32, true)?;
    let (pa, pb) = (prompt(2, 5), prompt(3, 30));
    d.add(1, pa.clone(), 6)?;
    let first = d.step()?;
    assert_eq!(first.scheduled.len(), 1);
    assert_eq!(first.num_batched_tokens, 5);
    d.add(2, pb.clone(), 2)?;
    let mixed = d.step()?;
    // The running decode goes first with 1 token, the new prompt gets the rest.
    assert_eq!(mixed.scheduled.len(), 2);
    assert_eq!(
        (mixed.scheduled[0].seq_id, mixed.scheduled[0].num_new_tokens),
        (SeqId(1), 1)
    );
    assert!(mixed.scheduled[0].produces_token);
    assert_eq!(
        (mixed.scheduled[1].seq_id, mixed.scheduled[1].num_new_tokens),
        (SeqId(2), 9)
    );
    assert!(!mixed.scheduled[1].produces_token);
    assert_eq!(mixed.num_batched_tokens, 10);
    d.run(100)?;
    assert_eq!(d.output(1), reference(&pa, 6));
    assert_eq!(d.output(2), reference(&pb, 2));
    Ok(())
}

#[test]
fn max_num_seqs_is_respected() -> TestResult {
    let mut d = Driver::new(cfg(64, 2, 4, 64), 64, false)?;
    let prompts: Vec<Vec<u32>> = (0..5).map(|i| prompt(10 + i, 3 + i as usize)).collect();
    for (i, p) in prompts.iter().enumerate() {
        d.add(i as u64, p.clone(), 4)?;
    }
    let mut max_seen = 0;
    while d.sched.has_unfinished() {
        let out = d.step()?;
        max_seen = max_seen.max(out.scheduled.len());
        assert!(out.scheduled.len() <= 2);
    }
    assert_eq!(max_seen, 2);
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(d.output(i as u64), reference(p, 4));
    }
    d.assert_all_free();
    Ok(())
}

#[test]
fn preemption_under_tiny_pool_recomputes_same_tokens() -> TestResult {
    // 6 blocks of 4 = 24 slots; three requests of up to 7 + 10 - 1 = 16 tokens each.
    let mut d = Driver::new(cfg(32, 8, 4, 64), 6, true)?;
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| prompt(20 + i, 7)).collect();
    for (i, p) in prompts.iter().enumerate() {
        d.add(i as u64, p.clone(), 10)?;
    }
    let mut preempted = Vec::new();
    for _ in 0..200 {
        if !d.sched.has_unfinished() {
            break;
        }
        let out = d.step()?;
        for &id in &out.preempted {
            let seq = d.sched.seq(id).ok_or("preempted sequence missing")?;
            assert_eq!(seq.status, SequenceStatus::Preempted);
            assert_eq!(seq.num_computed_tokens, 0);
            assert!(d.sched.block_table(id).is_empty());
            assert!(!out.scheduled.iter().any(|s| s.seq_id == id));
        }
        preempted.extend(out.preempted);
    }
    assert!(!preempted.is_empty(), "the pool was expected to run out");
    // The latest arrival is the victim; the earliest request is never preempted.
    assert!(!preempted.contains(&SeqId(0)));
    assert_eq!(d.sched.stats().num_preemptions, preempted.len() as u64);
    d.run(1)?;
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(d.output(i as u64), reference(p, 10), "request {i}");
    }
    Ok(())
}

#[test]
fn prefix_cache_hit_skips_shared_prompt() -> TestResult {
    let mut d = Driver::new(cfg(64, 4, 4, 128), 32, true)?;
    let shared = prompt(30, 18);
    d.add(1, shared.clone(), 2)?;
    d.run(50)?;
    let mut p2 = shared[..16].to_vec();
    p2.extend(prompt(31, 5));
    d.add(2, p2.clone(), 3)?;
    let out = d.step()?;
    let s = out.scheduled[0];
    // 4 full blocks (16 tokens) came from the cache.
    assert_eq!((s.num_computed_before, s.num_new_tokens), (16, 5));
    assert_eq!(d.sched.seq(SeqId(2)).map(|s| s.num_cached_tokens), Some(16));
    let st = d.sched.stats().kv;
    assert_eq!(st.prefix_cache_hits, 16);
    assert_eq!(st.prefix_cache_queries, 18 + 21);
    assert!(st.prefix_cache_hit_rate() > 0.0);
    d.run(50)?;
    assert_eq!(d.output(2), reference(&p2, 3));
    Ok(())
}

#[test]
fn identical_prompts_in_one_step_do_not_hit_unwritten_blocks() -> TestResult {
    let mut d = Driver::new(cfg(64, 4, 4, 128), 32, true)?;
    let p = prompt(40, 13);
    d.add(1, p.clone(), 4)?;
    d.add(2, p.clone(), 4)?;
    let out = d.step()?;
    assert_eq!(
        out.scheduled
            .iter()
            .map(|s| s.num_computed_before)
            .collect::<Vec<_>>(),
        vec![0, 0]
    );
    d.add(3, p.clone(), 4)?;
    let out = d.step()?;
    assert_eq!(
        out.scheduled.last().map(|s| s.num_computed_before),
        Some(12)
    );
    d.run(50)?;
    for id in 1..=3 {
        assert_eq!(d.output(id), reference(&p, 4));
    }
    Ok(())
}

#[test]
fn abort_frees_blocks_at_once() -> TestResult {
    let mut d = Driver::new(cfg(16, 1, 4, 64), 16, true)?;
    d.add(1, prompt(50, 10), 20)?;
    d.add(2, prompt(51, 10), 20)?;
    d.step()?;
    d.step()?;
    assert_eq!(d.sched.num_running(), 1);
    assert_eq!(d.sched.num_waiting(), 1);
    assert!(d.sched.kv().num_free_blocks() < 16);
    let running = d.sched.abort(SeqId(1))?;
    assert_eq!(
        running.status,
        SequenceStatus::Finished(FinishReason::Abort)
    );
    assert_eq!(d.sched.kv().num_free_blocks(), 16);
    let waiting = d.sched.abort(SeqId(2))?;
    assert_eq!(waiting.num_computed_tokens, 0);
    assert_eq!(
        d.sched.abort(SeqId(2)).err(),
        Some(SchedulerError::UnknownSeq(SeqId(2)))
    );
    assert!(!d.sched.has_unfinished());
    assert!(d.sched.schedule()?.is_empty());
    d.assert_all_free();
    Ok(())
}

#[test]
fn abort_between_schedule_and_update_is_skipped() -> TestResult {
    let mut d = Driver::new(cfg(16, 4, 4, 64), 16, true)?;
    d.add(1, prompt(52, 6), 4)?;
    d.add(2, prompt(53, 6), 4)?;
    let out = d.sched.schedule()?;
    d.sched.abort(SeqId(1))?;
    d.sched.update_from_output(&out, &[vec![7], vec![8]])?;
    assert_eq!(
        d.sched.seq(SeqId(2)).map(|s| s.output_token_ids().to_vec()),
        Some(vec![8])
    );
    // Applying the same output twice is refused.
    assert!(matches!(
        d.sched.update_from_output(&out, &[vec![7], vec![8]]),
        Err(SchedulerError::OutputMismatch(_))
    ));
    d.sched.abort(SeqId(2))?;
    d.assert_all_free();
    Ok(())
}

#[test]
fn impossible_requests_are_rejected_at_add() -> TestResult {
    let mut d = Driver::new(cfg(16, 4, 4, 32), 5, true)?;
    assert_eq!(d.add(1, vec![], 4), Err(SchedulerError::EmptyPrompt));
    assert_eq!(d.add(1, vec![1], 0), Err(SchedulerError::ZeroMaxTokens));
    assert!(matches!(
        d.add(1, prompt(1, 30), 3),
        Err(SchedulerError::ContextTooLong { .. })
    ));
    // 5 blocks = 20 slots; 15 + 7 - 1 = 21 slots needed.
    assert_eq!(
        d.add(1, prompt(1, 15), 7),
        Err(SchedulerError::ExceedsKvCache {
            needed_blocks: 6,
            num_blocks: 5
        })
    );
    // Exactly fitting: 15 + 6 - 1 = 20 slots.
    d.add(1, prompt(1, 15), 6)?;
    assert_eq!(
        d.add(1, vec![1], 1),
        Err(SchedulerError::DuplicateSeq(SeqId(1)))
    );
    d.run(50)?;
    assert_eq!(d.output(1), reference(&prompt(1, 15), 6));
    // Bad configurations.
    let kv = || KvCacheManager::new(4, 4, true, "fake");
    assert!(Scheduler::new(cfg(0, 1, 4, 8), kv()).is_err());
    assert!(Scheduler::new(cfg(8, 0, 4, 8), kv()).is_err());
    assert!(Scheduler::new(cfg(8, 1, 8, 8), kv()).is_err());
    let mut no_chunk = cfg(8, 1, 4, 16);
    no_chunk.enable_chunked_prefill = false;
    assert!(Scheduler::new(no_chunk, kv()).is_err());
    Ok(())
}

#[test]
fn without_chunked_prefill_prompts_run_whole() -> TestResult {
    let mut c = cfg(16, 4, 4, 16);
    c.enable_chunked_prefill = false;
    let mut d = Driver::new(c, 32, false)?;
    let (pa, pb) = (prompt(60, 10), prompt(61, 10));
    d.add(1, pa.clone(), 5)?;
    d.add(2, pb.clone(), 5)?;
    let out = d.step()?;
    // B does not fit the 6 tokens left and is not chunked.
    assert_eq!(out.scheduled.len(), 1);
    let out = d.step()?;
    assert_eq!(
        out.scheduled
            .iter()
            .map(|s| s.num_new_tokens)
            .collect::<Vec<_>>(),
        vec![1, 10]
    );
    d.run(50)?;
    assert_eq!(d.output(1), reference(&pa, 5));
    assert_eq!(d.output(2), reference(&pb, 5));
    Ok(())
}

#[test]
fn long_prefill_threshold_caps_each_chunk() -> TestResult {
    let mut c = cfg(64, 4, 4, 64);
    c.long_prefill_token_threshold = 6;
    let mut d = Driver::new(c, 32, true)?;
    let (pa, pb) = (prompt(70, 14), prompt(71, 3));
    d.add(1, pa.clone(), 2)?;
    d.add(2, pb.clone(), 2)?;
    let out = d.step()?;
    assert_eq!(
        out.scheduled
            .iter()
            .map(|s| s.num_new_tokens)
            .collect::<Vec<_>>(),
        vec![6, 3]
    );
    d.run(50)?;
    assert_eq!(d.output(1), reference(&pa, 2));
    Ok(())
}

#[test]
fn speculative_tokens_are_verified_and_rolled_back() -> TestResult {
    let mut d = Driver::new(cfg(64, 4, 4, 64), 16, true)?;
    let p = prompt(80, 6);
    let want = reference(&p, 12);
    d.add(1, p.clone(), 12)?;
    d.step()?; // prompt -> first token
    let id = SeqId(1);
    // Two right drafts and a wrong one: 2 accepted + the model's token.
    let wrong = (want[3] + 1) % VOCAB;
    d.sched
        .set_spec_token_ids(id, vec![want[1], want[2], wrong])?;
    let out = d.step()?;
    assert_eq!(
        (
            out.scheduled[0].num_new_tokens,
            out.scheduled[0].num_spec_tokens
        ),
        (4, 3)
    );
    let seq = d.sched.seq(id).ok_or("missing")?;
    assert_eq!(seq.output_token_ids(), &want[..4]);
    assert_eq!(seq.num_computed_tokens, 6 + 3);
    assert_eq!(d.sched.block_table(id).len(), 3); // ceil(9 / 4): the rejected slot's block is kept
                                                  // All drafts wrong: only the model's token.
    d.sched
        .set_spec_token_ids(id, vec![(want[4] + 1) % VOCAB; 5])?;
    d.step()?;
    let seq = d.sched.seq(id).ok_or("missing")?;
    assert_eq!(seq.output_token_ids(), &want[..5]);
    assert_eq!(d.sched.block_table(id).len(), 3);
    // All drafts right, including past a block boundary: 4 accepted + 1.
    d.sched.set_spec_token_ids(id, want[5..9].to_vec())?;
    d.step()?;
    assert_eq!(
        d.sched.seq(id).ok_or("missing")?.output_token_ids(),
        &want[..10]
    );
    // Drafts beyond max_tokens are not scheduled: 2 tokens left, so at most 1 draft.
    d.sched.set_spec_token_ids(id, want[10..12].to_vec())?;
    let out = d.step()?;
    assert_eq!(out.scheduled[0].num_spec_tokens, 1);
    d.run(10)?;
    assert_eq!(d.output(1), want);
    Ok(())
}

/// Random workloads: requests arrive over time with random lengths into random, often
/// tight, configurations. Every request must finish with exactly the reference tokens
/// and the pool must end whole.
fn random_workload(
    seed: u64,
    prefix_caching: bool,
    overlapped: bool,
) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let block_size = rng.random_range(1..=5);
    let max_model_len = 40;
    // Without chunked prefill the budget must hold a whole prompt (Scheduler::new).
    let chunked = rng.random_bool(0.8);
    let spec = rng.random_bool(0.4) && !overlapped;
    let c = SchedulerConfig {
        max_num_batched_tokens: if chunked {
            rng.random_range(1..=24)
        } else {
            rng.random_range(max_model_len..=60)
        },
        max_num_seqs: rng.random_range(1..=5),
        block_size,
        max_model_len,
        enable_chunked_prefill: chunked,
        long_prefill_token_threshold: if rng.random_bool(0.3) {
            rng.random_range(1..8)
        } else {
            0
        },
    };
    let num_blocks =
        rng.random_range(max_model_len.div_ceil(block_size)..=3 * max_model_len / block_size);
    let mut d = Driver::new(c, num_blocks, prefix_caching)?;
    let shared = prompt(seed ^ 0xabc, 20);
    let mut want = HashMap::new();
    let n_req = rng.random_range(1..12u64);
    let mut next = 0u64;
    for _ in 0..20_000 {
        if next < n_req && rng.random_bool(0.4) {
            let mut p = shared[..rng.random_range(0..=20)].to_vec();
            p.extend(prompt(
                seed.wrapping_mul(100).wrapping_add(next),
                rng.random_range(1..10),
            ));
            let max_tokens = rng.random_range(1..=(max_model_len - p.len()).min(12));
            d.add(next, p.clone(), max_tokens)?;
            let stop = overlapped.then_some(STOP);
            want.insert(next, reference_until(&p, max_tokens, stop));
            next += 1;
        }
        if spec {
            propose_drafts(&mut d, &mut rng)?;
        }
        if overlapped && (d.sched.has_unfinished() || d.in_flight.is_some()) {
            d.step_overlapped()?;
        } else if !overlapped && d.sched.has_unfinished() {
            d.step()?;
        } else if next == n_req {
            break;
        }
    }
    assert!(!d.sched.has_unfinished() && d.in_flight.is_none());
    for (id, w) in &want {
        assert_eq!(&d.output(*id), w, "request {id} (seed {seed})");
    }
    d.assert_all_free();
    let st = d.sched.stats();
    Ok((st.num_preemptions, st.kv.prefix_cache_hits))
}

/// Gives about half the decoding sequences 1..=4 draft tokens: the true continuation,
/// sometimes with one token corrupted so the rest is rejected.
fn propose_drafts(d: &mut Driver, rng: &mut ChaCha8Rng) -> TestResult {
    for id in d.sched.running().to_vec() {
        let seq = d.sched.seq(id).ok_or("running sequence missing")?;
        if seq.num_tokens() - seq.num_computed_tokens != 1 || !rng.random_bool(0.5) {
            continue;
        }
        let k = rng.random_range(1..=4);
        let mut ctx = seq.all_token_ids().to_vec();
        let mut drafts = Vec::with_capacity(k);
        for _ in 0..k {
            let t = next_token(&ctx);
            ctx.push(t);
            drafts.push(t);
        }
        if rng.random_bool(0.5) {
            let r = rng.random_range(0..k);
            drafts[r] = (drafts[r] + 1) % VOCAB;
        }
        d.sched.set_spec_token_ids(id, drafts)?;
    }
    Ok(())
}

/// Fixed seeds, so the run is reproducible, and a check that the workloads do reach
/// preemption and prefix hits (the properties above would pass vacuously otherwise).
#[test]
fn seeded_workloads_match_reference_and_cover_preemption_and_hits() -> TestResult {
    let (mut preemptions, mut hits) = (0, 0);
    for seed in 0..200 {
        let (p, h) = random_workload(seed, seed % 4 != 0, false)?;
        preemptions += p;
        hits += h;
    }
    eprintln!("{preemptions} preemptions, {hits} prefix-hit tokens over 200 workloads");
    assert!(preemptions > 20, "only {preemptions} preemptions");
    assert!(hits > 100, "only {hits} prefix-hit tokens");
    Ok(())
}

/// The same with overlapped steps (apply_provisional / resolve_provisional), sequences
/// that stop early on a token while their next one is in flight, and preemption of
/// sequences with a pending token.
#[test]
fn overlapped_workloads_match_reference_and_cover_preemption_and_hits() -> TestResult {
    let (mut preemptions, mut hits) = (0, 0);
    for seed in 0..200 {
        let (p, h) = random_workload(seed, seed % 4 != 0, true)?;
        preemptions += p;
        hits += h;
    }
    eprintln!("overlapped: {preemptions} preemptions, {hits} prefix-hit tokens");
    assert!(preemptions > 20, "only {preemptions} preemptions");
    assert!(hits > 100, "only {hits} prefix-hit tokens");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn random_workloads_match_reference(
        seed in any::<u64>(),
        prefix_caching in any::<bool>(),
        overlapped in any::<bool>(),
    ) {
        if let Err(e) = random_workload(seed, prefix_caching, overlapped).map(|_| ()) {
            return Err(TestCaseError::fail(format!("seed {seed}: {e}")));
        }
    }
}
