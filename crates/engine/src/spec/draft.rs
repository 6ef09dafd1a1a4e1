//! Draft-model speculation: a smaller model with the target's vocabulary proposes K
//! tokens autoregressively, batched over the sequences, from its own paged KV cache.
//!
//! Draft models available to a user of one model (no hub on this machine): a copy of
//! the target quantized more coarsely at load ([`requantize_weights`], e.g. a Q4_0
//! draft of a Q8_0 target), or the target's first N layers with its final norm and
//! head, a layer-skipping self-draft (Zhang et al. 2023, "Draft & Verify: Lossless
//! Large Language Model Acceleration via Self-Speculative Decoding"). Any model file
//! with the same vocabulary works too ([`check_same_vocab`]).
//!
//! KV bookkeeping: the draft has its own `KvCache` and `KvCacheManager` (prefix caching
//! off). For each sequence it remembers the tokens whose KV it holds (`fed`). At each
//! `propose` the longest common prefix of `fed` and the sequence's tokens is kept and
//! everything after it rolled back (rejected drafts free whole blocks; nothing leaks),
//! then the missing tokens are fed (the prompt on first sight, usually the one or two
//! tokens the last step added), and K - 1 more single-token rounds produce the drafts.
//! This needs no feedback and survives the target's preemptions unchanged.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::{quant, DType, Tensor};
use sluice_model::arch::Model;
use sluice_model::tokenizer::Tokenizer;
use sluice_model::{BatchInput, KvCache, WeightStore};

use super::{Draft, ProposeRequest, Proposer};
use crate::engine::EngineError;
use crate::kv::{ComputedBlocks, KvCacheManager};
use crate::sampling::{argmax, dense_probs};
use crate::sequence::{SeqId, Sequence};

/// Most tokens one catch-up forward of the draft takes (long prompts are fed in
/// chunks of this size).
const CATCH_UP_CHUNK: usize = 1024;

/// Where a draft model came from (for logs and metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DraftSource {
    /// Another model file.
    File(String),
    /// The target requantized to this type at load.
    Quantized(DType),
    /// The target's first N layers.
    Layers(usize),
}

impl std::fmt::Display for DraftSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DraftSource::File(p) => write!(f, "draft model {p}"),
            DraftSource::Quantized(d) => write!(f, "the target requantized to {d}"),
            DraftSource::Layers(n) => write!(f, "the target's first {n} layers"),
        }
    }
}

/// Refuses a draft whose vocabulary differs from the target's: model vocabulary sizes
/// and every token string must agree (otherwise draft ids would mean other tokens).
pub fn check_same_vocab(
    target_vocab: usize,
    target_tok: &Tokenizer,
    draft_vocab: usize,
    draft_tok: &Tokenizer,
) -> Result<(), String> {
    if target_vocab != draft_vocab {
        return Err(format!(
            "the draft model's vocabulary has {draft_vocab} tokens, the target's {target_vocab}: \
             speculative decoding needs the same vocabulary"
        ));
    }
    if target_tok.vocab_size() != draft_tok.vocab_size() {
        return Err(format!(
            "the draft tokenizer has {} tokens, the target's {}: speculative decoding needs \
             the same vocabulary",
            draft_tok.vocab_size(),
            target_tok.vocab_size()
        ));
    }
    for id in 0..target_tok.vocab_size() as u32 {
        let (a, b) = (target_tok.id_to_token(id), draft_tok.id_to_token(id));
        if a != b {
            return Err(format!(
                "token {id} is {:?} for the target but {:?} for the draft: speculative decoding \
                 needs the same vocabulary",
                a.unwrap_or_default(),
                b.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// What [`requantize_weights`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequantReport {
    /// Matrices converted to the requested type.
    pub converted: usize,
    /// Matrices whose rows are not whole blocks of that type, converted to Q8_0 (or
    /// kept when not whole Q8_0 blocks either), as llama.cpp falls back.
    pub fallback: usize,
    /// Bytes of matrices before and after.
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// Converts every 2-D tensor of `w` to `dtype` (dequantize, then quantize each row with
/// the backend's reference quantizers). Norms and biases stay as they are.
pub fn requantize_weights(w: &mut WeightStore, dtype: DType) -> Result<RequantReport, String> {
    if !quant::can_quantize(dtype) || matches!(dtype, DType::Q8_1 | DType::Q8_K) {
        let ok: Vec<String> = DType::ALL
            .iter()
            .filter(|d| quant::can_quantize(**d) && !matches!(d, DType::Q8_1 | DType::Q8_K))
            .map(|d| d.name().to_string())
            .collect();
        return Err(format!(
            "cannot quantize a draft to {dtype}; supported: {}",
            ok.join(", ")
        ));
    }
    let names: Vec<String> = w
        .iter()
        .filter(|(_, t)| t.shape().len() == 2)
        .map(|(n, _)| n.clone())
        .collect();
    let mut report = RequantReport::default();
    let mut src_row: Vec<f32> = Vec::new();
    for name in names {
        let t = w.take(&name).map_err(|e| e.to_string())?;
        let (rows, cols) = (t.shape()[0], t.shape()[1]);
        let target = if cols % dtype.block_size() == 0 {
            report.converted += 1;
            dtype
        } else if cols % DType::Q8_0.block_size() == 0 {
            report.fallback += 1;
            DType::Q8_0
        } else {
            report.fallback += 1;
            report.bytes_before += t.size_in_bytes();
            report.bytes_after += t.size_in_bytes();
            w.insert(name, t);
            continue;
        };
        let src_dtype = t.dtype();
        let src = t.cpu_bytes().map_err(|e| format!("{name}: {e}"))?;
        let (src_rb, dst_rb) = (src_dtype.row_bytes(cols), target.row_bytes(cols));
        let mut out = Tensor::zeros_cpu(target, &[rows, cols]).map_err(|e| e.to_string())?;
        {
            let dst = out.cpu_bytes_mut().map_err(|e| e.to_string())?;
            src_row.resize(cols, 0.0);
            for r in 0..rows {
                quant::dequantize_row(src_dtype, &src[r * src_rb..(r + 1) * src_rb], &mut src_row)
                    .map_err(|e| format!("{name}: {e}"))?;
                quant::quantize_row(target, &src_row, &mut dst[r * dst_rb..(r + 1) * dst_rb])
                    .map_err(|e| format!("{name}: {e}"))?;
            }
        }
        report.bytes_before += t.size_in_bytes();
        report.bytes_after += out.size_in_bytes();
        w.insert(name, out);
    }
    Ok(report)
}

/// One sequence as the draft sees it.
struct DraftSeq {
    /// For the KV manager: id and `num_computed_tokens` (= `fed.len()`).
    shadow: Sequence,
    /// `[n]` tokens whose KV is in the draft cache, in position order.
    fed: Vec<u32>,
    /// Draws draft tokens at temperature > 0.
    rng: ChaCha8Rng,
}

/// Per-request work of one `propose` call.
struct Job {
    /// Index into the request slice.
    req: usize,
    /// Drafts wanted.
    k: usize,
    /// Next token index to feed during catch-up.
    next: usize,
}

/// The draft-model proposer.
pub struct DraftModelProposer {
    model: Model,
    kv: KvCache,
    manager: KvCacheManager,
    block_size: usize,
    /// Relative cost of one draft token (draft weight bytes / target weight bytes).
    cost: f64,
    source: DraftSource,
    seqs: HashMap<SeqId, DraftSeq>,
    batch: BatchInput,
    /// `[rows, vocab]` host copy of the last draft logits
    logits: Vec<f32>,
    /// `[vocab]` the draft's sampling distribution for one row
    q: Vec<f32>,
    cand: Vec<(u32, f32)>,
}

impl DraftModelProposer {
    /// A proposer around `model`, with a KV cache of `num_blocks` blocks of
    /// `block_size` tokens. `target_weight_bytes` sets the cost estimate.
    pub fn new(
        model: Model,
        num_blocks: usize,
        block_size: usize,
        target_weight_bytes: usize,
        source: DraftSource,
    ) -> Result<DraftModelProposer, EngineError> {
        if num_blocks == 0 || block_size == 0 {
            return Err(EngineError::Speculative(
                "the draft KV cache needs at least one block".into(),
            ));
        }
        let kv = model.new_kv_cache(num_blocks, block_size)?;
        let manager = KvCacheManager::new(num_blocks, block_size, false, &model.config.name);
        let cost = model.weight_bytes() as f64 / target_weight_bytes.max(1) as f64;
        Ok(DraftModelProposer {
            model,
            kv,
            manager,
            block_size,
            cost,
            source,
            seqs: HashMap::new(),
            batch: BatchInput::default(),
            logits: Vec::new(),
            q: Vec::new(),
            cand: Vec::new(),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn source(&self) -> &DraftSource {
        &self.source
    }

    /// Draft KV blocks in use (for leak checks).
    pub fn num_used_blocks(&self) -> usize {
        self.manager.pool().num_blocks() - self.manager.num_free_blocks()
    }

    /// Sequences holding draft state.
    pub fn num_tracked(&self) -> usize {
        self.seqs.len()
    }

    /// Runs the draft on `self.batch` and copies its logits to the host.
    fn run_batch(&mut self) -> Result<(), EngineError> {
        let device = self.model.device().clone();
        let logits = self.model.forward(&self.batch, &mut self.kv)?;
        device
            .copy_f32_to_host(logits, &mut self.logits)
            .map_err(sluice_model::ModelError::from)?;
        Ok(())
    }

    /// Picks the next draft token of request `r` from logits row `row`; its `q` row is
    /// appended to `draft.probs` when sampling.
    fn pick(&mut self, r: &ProposeRequest<'_>, row: usize, draft: &mut Draft) -> u32 {
        let vocab = self.model.config.vocab_size;
        let l = &self.logits[row * vocab..(row + 1) * vocab];
        if r.params.is_greedy() {
            return argmax(l);
        }
        dense_probs(r.params, l, &mut self.cand, &mut self.q);
        let rng = match self.seqs.get_mut(&r.seq_id) {
            Some(s) => &mut s.rng,
            None => return argmax(l),
        };
        let mut u = rng.random::<f32>();
        let mut pick = argmax(&self.q);
        for (i, &p) in self.q.iter().enumerate() {
            if p > 0.0 {
                u -= p;
                if u <= 0.0 {
                    pick = i as u32;
                    break;
                }
            }
        }
        draft.probs.extend_from_slice(&self.q);
        pick
    }
}

impl Proposer for DraftModelProposer {
    fn name(&self) -> &'static str {
        "draft"
    }

    fn draft_cost(&self) -> f64 {
        self.cost
    }

    fn kv_blocks_in_use(&self) -> usize {
        self.num_used_blocks()
    }

    fn release(&mut self, seq: SeqId) {
        if self.seqs.remove(&seq).is_some() {
            // Only fails on a bookkeeping bug; the blocks are then lost to this cache
            // but the target is unaffected.
            if let Err(e) = self.manager.free(seq) {
                tracing::error!("draft KV free of {seq}: {e}");
            }
        }
    }

    fn propose(
        &mut self,
        reqs: &[ProposeRequest<'_>],
        out: &mut [Draft],
    ) -> Result<(), EngineError> {
        let max_len = self.model.max_model_len();
        let vocab = self.model.config.vocab_size;
        let mut jobs: Vec<Job> = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            let len = r.token_ids.len();
            if len == 0 || r.token_ids.iter().any(|&t| t as usize >= vocab) {
                continue;
            }
            // Positions fed: up to len - 1 (catch-up) and len .. len + k - 2 (drafts).
            let k = r.max_drafts.min(max_len.saturating_sub(len));
            if k == 0 {
                continue;
            }
            let st = self.seqs.entry(r.seq_id).or_insert_with(|| DraftSeq {
                shadow: Sequence::new(r.seq_id, Vec::new(), 0),
                fed: Vec::new(),
                rng: match r.params.seed {
                    // Its own stream: never the target sampler's numbers.
                    Some(s) => ChaCha8Rng::seed_from_u64(s ^ 0xD4AF_7E5E_ED00_0001),
                    None => ChaCha8Rng::from_os_rng(),
                },
            });
            // Keep the common prefix, always re-feeding the last token (its logits
            // start the drafts).
            let common = st
                .fed
                .iter()
                .zip(r.token_ids)
                .take_while(|(a, b)| a == b)
                .count()
                .min(len - 1);
            st.fed.truncate(common);
            self.manager
                .truncate(r.seq_id, common)
                .map_err(|e| EngineError::Speculative(format!("draft KV: {e}")))?;
            st.shadow.num_computed_tokens = common;
            let need = len - common + (k - 1);
            if self
                .manager
                .allocate_slots(&st.shadow, need, &ComputedBlocks::default(), 0)
                .map_err(|e| EngineError::Speculative(format!("draft KV: {e}")))?
                .is_none()
            {
                continue; // Draft cache full: no drafts this step.
            }
            jobs.push(Job {
                req: i,
                k,
                next: common,
            });
        }
        if jobs.is_empty() {
            return Ok(());
        }

        // Catch-up: feed each sequence's missing tokens (chunked); the chunk that
        // reaches its last token yields the first draft.
        let mut pending: Vec<usize> = (0..jobs.len()).collect();
        while !pending.is_empty() {
            self.batch.clear();
            let mut budget = CATCH_UP_CHUNK;
            // (job, end of its chunk)
            let mut in_batch: Vec<(usize, usize)> = Vec::new();
            for &j in &pending {
                if budget == 0 {
                    break;
                }
                let job = &jobs[j];
                let r = &reqs[job.req];
                let len = r.token_ids.len();
                let n = (len - job.next).min(budget);
                let end = job.next + n;
                let table = self.manager.block_table(r.seq_id);
                self.batch.push_seq(
                    &r.token_ids[job.next..end],
                    end,
                    table,
                    self.block_size,
                    end == len,
                );
                budget -= n;
                in_batch.push((j, end));
            }
            self.run_batch()?;
            let mut row = 0;
            for &(j, end) in &in_batch {
                let r = &reqs[jobs[j].req];
                let done = end == r.token_ids.len();
                if let Some(st) = self.seqs.get_mut(&r.seq_id) {
                    st.fed.extend_from_slice(&r.token_ids[jobs[j].next..end]);
                    st.shadow.num_computed_tokens = st.fed.len();
                }
                jobs[j].next = end;
                if done {
                    let d = &mut out[jobs[j].req];
                    let t = self.pick(r, row, d);
                    d.tokens.push(t);
                    row += 1;
                }
            }
            pending.retain(|&j| jobs[j].next < reqs[jobs[j].req].token_ids.len());
        }

        // Draft rounds: feed the previous draft, pick the next.
        let k_max = jobs.iter().map(|j| j.k).max().unwrap_or(0);
        for round in 1..k_max {
            self.batch.clear();
            let mut active: Vec<usize> = Vec::new();
            for (j, job) in jobs.iter().enumerate() {
                if job.k <= round {
                    continue;
                }
                let r = &reqs[job.req];
                let Some(&prev) = out[job.req].tokens.last() else {
                    continue;
                };
                let ctx = r.token_ids.len() + round;
                let table = self.manager.block_table(r.seq_id);
                self.batch
                    .push_seq(&[prev], ctx, table, self.block_size, true);
                active.push(j);
            }
            if active.is_empty() {
                break;
            }
            self.run_batch()?;
            for (row, &j) in active.iter().enumerate() {
                let r = &reqs[jobs[j].req];
                let prev = out[jobs[j].req].tokens.last().copied();
                if let (Some(st), Some(prev)) = (self.seqs.get_mut(&r.seq_id), prev) {
                    st.fed.push(prev);
                    st.shadow.num_computed_tokens = st.fed.len();
                }
                let d = &mut out[jobs[j].req];
                let t = self.pick(r, row, d);
                d.tokens.push(t);
            }
        }
        Ok(())
    }
}
