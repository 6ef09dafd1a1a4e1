//! Per-sequence KV accounting on top of the [`BlockPool`]: block tables, prefix-cache
//! lookup, slot allocation (`None` when the pool is exhausted: the scheduler preempts),
//! caching of newly full blocks once computed, free and speculative rollback.
//!
//! After vLLM v1 `core/kv_cache_manager.py`, with one difference: a block is registered
//! in the prefix cache only after its tokens have been *computed* (`cache_blocks`, called
//! when the step's output is applied), not when its slots are allocated, so a cache hit
//! never depends on KV that a concurrent step has yet to write.

use std::collections::HashMap;

use super::hash::{extend_block_hashes, root_hash};
use super::{cdiv, BlockHash, BlockId, BlockPool, KvError};
use crate::sequence::{SeqId, Sequence};

/// Longest cached prefix found for a sequence about to be admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComputedBlocks {
    /// Cached blocks covering the prefix, in order (not yet owned: `allocate_slots`
    /// takes them).
    pub blocks: Vec<BlockId>,
    /// Tokens they cover (`blocks.len() * block_size`).
    pub num_cached_tokens: usize,
    /// Tokens the lookup was for (the sequence's length); 0 when no lookup was made.
    pub num_query_tokens: usize,
}

/// KV usage and prefix-cache counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KvStats {
    /// Pool size in blocks.
    pub num_blocks: usize,
    /// Blocks with no owner (cached ones included).
    pub num_free_blocks: usize,
    /// Blocks registered in the prefix cache.
    pub num_cached_blocks: usize,
    /// Fraction of blocks in use.
    pub usage: f64,
    /// Tokens looked up in the prefix cache at admissions that succeeded.
    pub prefix_cache_queries: u64,
    /// Of those, tokens served from the cache.
    pub prefix_cache_hits: u64,
}

impl KvStats {
    /// `hits / queries`, 0 before any query.
    pub fn prefix_cache_hit_rate(&self) -> f64 {
        if self.prefix_cache_queries == 0 {
            0.0
        } else {
            self.prefix_cache_hits as f64 / self.prefix_cache_queries as f64
        }
    }
}

/// One sequence's KV state.
#[derive(Clone, Debug, Default)]
struct SeqKv {
    /// The block table: block `i` holds positions `i*block_size .. (i+1)*block_size`.
    blocks: Vec<BlockId>,
    /// Chained hashes of the sequence's full blocks of known tokens (may run ahead of
    /// `blocks` while the sequence waits).
    block_hashes: Vec<BlockHash>,
    /// Chain root (model key + salt), computed once.
    root: Option<BlockHash>,
    /// Leading blocks registered in (or taken from) the prefix cache.
    num_cached_blocks: usize,
}

/// Block tables of all live sequences over one block pool.
#[derive(Clone, Debug)]
pub struct KvCacheManager {
    block_size: usize,
    pool: BlockPool,
    enable_prefix_caching: bool,
    /// Extra key mixed into every hash chain (model identity).
    model_key: String,
    seqs: HashMap<SeqId, SeqKv>,
    prefix_cache_queries: u64,
    prefix_cache_hits: u64,
}

impl KvCacheManager {
    /// A manager of `num_blocks` blocks of `block_size` tokens (`block_size >= 1`;
    /// 0 is treated as 1). `model_key` separates caches of different models.
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        enable_prefix_caching: bool,
        model_key: &str,
    ) -> KvCacheManager {
        KvCacheManager {
            block_size: block_size.max(1),
            pool: BlockPool::new(num_blocks),
            enable_prefix_caching,
            model_key: model_key.to_string(),
            seqs: HashMap::new(),
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Whether full blocks are cached and looked up.
    pub fn prefix_caching_enabled(&self) -> bool {
        self.enable_prefix_caching
    }

    /// The underlying pool (read-only; for metrics and tests).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Blocks not owned by any sequence.
    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        cdiv(num_tokens, self.block_size)
    }

    /// The sequence's block table (empty when it holds no blocks).
    pub fn block_table(&self, seq: SeqId) -> &[BlockId] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    /// The longest prefix of `seq`'s tokens held in cached full blocks, never the whole
    /// sequence: at least its last token is left to compute so the step yields logits.
    /// Nothing is taken yet (pass the result to `allocate_slots`). Empty when prefix
    /// caching is off.
    pub fn get_computed_blocks(&mut self, seq: &Sequence) -> ComputedBlocks {
        if !self.enable_prefix_caching {
            return ComputedBlocks::default();
        }
        let tokens = seq.all_token_ids();
        let state = self.seqs.entry(seq.id).or_default();
        let root = *state
            .root
            .get_or_insert_with(|| root_hash(&self.model_key, seq.cache_salt.as_deref()));
        extend_block_hashes(&mut state.block_hashes, root, tokens, self.block_size);
        // Blocks lying wholly within the first `len - 1` tokens.
        let max_hit_blocks = tokens.len().saturating_sub(1) / self.block_size;
        let blocks: Vec<BlockId> = state.block_hashes[..max_hit_blocks]
            .iter()
            .map_while(|&h| self.pool.get_cached_block(h))
            .collect();
        ComputedBlocks {
            num_cached_tokens: blocks.len() * self.block_size,
            blocks,
            num_query_tokens: tokens.len(),
        }
    }

    /// Makes the block table of `seq` cover `seq.num_computed_tokens +
    /// computed.num_cached_tokens + num_new_tokens + num_lookahead_tokens` tokens,
    /// taking the cached prefix blocks in `computed` (only for a sequence holding no
    /// blocks yet) and new blocks from the pool. Lookahead slots reserve room for
    /// speculative tokens.
    ///
    /// Returns the number of new blocks taken, or `Ok(None)` with nothing changed when
    /// the pool cannot supply them (the caller preempts or waits).
    pub fn allocate_slots(
        &mut self,
        seq: &Sequence,
        num_new_tokens: usize,
        computed: &ComputedBlocks,
        num_lookahead_tokens: usize,
    ) -> Result<Option<usize>, KvError> {
        let have = self.seqs.get(&seq.id).map_or(0, |s| s.blocks.len());
        if have > 0 && !computed.blocks.is_empty() {
            return Err(KvError::ComputedBlocksForAllocatedSeq(seq.id));
        }
        let total = seq.num_computed_tokens
            + computed.num_cached_tokens
            + num_new_tokens
            + num_lookahead_tokens;
        let num_new_blocks =
            cdiv(total, self.block_size).saturating_sub(have + computed.blocks.len());
        // Hits on free cached blocks take them off the free queue too.
        let free_hits = computed
            .blocks
            .iter()
            .filter(|&&b| self.pool.ref_count(b) == 0)
            .count();
        if num_new_blocks + free_hits > self.pool.num_free_blocks() {
            return Ok(None);
        }
        // Touch the hits first so that taking new blocks cannot evict them.
        self.pool.touch(&computed.blocks)?;
        let Some(new_blocks) = self.pool.get_new_blocks(num_new_blocks) else {
            // Not reached (counted above); undo the touch rather than fail.
            self.pool
                .free_blocks(computed.blocks.iter().rev().copied())?;
            return Ok(None);
        };
        let state = self.seqs.entry(seq.id).or_default();
        if !computed.blocks.is_empty() {
            state.blocks.extend_from_slice(&computed.blocks);
            state.num_cached_blocks = computed.blocks.len();
        }
        state.blocks.extend_from_slice(&new_blocks);
        if computed.num_query_tokens > 0 {
            self.prefix_cache_queries += computed.num_query_tokens as u64;
            self.prefix_cache_hits += computed.num_cached_tokens as u64;
        }
        Ok(Some(num_new_blocks))
    }

    /// Registers `seq`'s blocks that became full of *computed* tokens (the first
    /// `min(num_computed_tokens, num_tokens)` tokens) in the prefix cache. Call after
    /// a step's output has been applied (and any rejected speculative tokens rolled
    /// back). No-op when prefix caching is off.
    pub fn cache_blocks(&mut self, seq: &Sequence) -> Result<(), KvError> {
        if !self.enable_prefix_caching {
            return Ok(());
        }
        let Some(state) = self.seqs.get_mut(&seq.id) else {
            return Ok(());
        };
        let tokens = seq.all_token_ids();
        let num_full =
            (seq.num_computed_tokens.min(tokens.len()) / self.block_size).min(state.blocks.len());
        if num_full <= state.num_cached_blocks {
            return Ok(());
        }
        let root = *state
            .root
            .get_or_insert_with(|| root_hash(&self.model_key, seq.cache_salt.as_deref()));
        extend_block_hashes(
            &mut state.block_hashes,
            root,
            &tokens[..num_full * self.block_size],
            self.block_size,
        );
        for i in state.num_cached_blocks..num_full {
            // `false` means another block already caches this prefix: keep that one.
            self.pool
                .cache_full_block(state.blocks[i], state.block_hashes[i])?;
        }
        state.num_cached_blocks = num_full;
        Ok(())
    }

    /// Rolls `seq`'s KV back to its first `num_tokens` tokens (rejected speculative
    /// tokens), freeing whole blocks past them. Refuses to cut into blocks already in
    /// the prefix cache (they may be shared). Returns the number of blocks freed.
    pub fn truncate(&mut self, seq: SeqId, num_tokens: usize) -> Result<usize, KvError> {
        let Some(state) = self.seqs.get_mut(&seq) else {
            return Ok(0);
        };
        let num_cached_tokens = state.num_cached_blocks * self.block_size;
        if num_tokens < num_cached_tokens {
            return Err(KvError::TruncateCachedBlock {
                seq,
                num_tokens,
                num_cached_tokens,
            });
        }
        let keep = cdiv(num_tokens, self.block_size);
        if keep >= state.blocks.len() {
            return Ok(0);
        }
        let freed = state.blocks.split_off(keep);
        state.block_hashes.truncate(num_tokens / self.block_size);
        self.pool.free_blocks(freed.iter().rev().copied())?;
        Ok(freed.len())
    }

    /// Releases all of `seq`'s blocks (tail first, so its last blocks are evicted
    /// first) and forgets it. Unknown sequences are a no-op.
    pub fn free(&mut self, seq: SeqId) -> Result<(), KvError> {
        match self.seqs.remove(&seq) {
            Some(state) => self.pool.free_blocks(state.blocks.iter().rev().copied()),
            None => Ok(()),
        }
    }

    /// Drops cached hashes of all free blocks (e.g. after weights change).
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.pool.reset_prefix_cache()
    }

    /// Usage and prefix-cache counters.
    pub fn stats(&self) -> KvStats {
        KvStats {
            num_blocks: self.pool.num_blocks(),
            num_free_blocks: self.pool.num_free_blocks(),
            num_cached_blocks: self.pool.num_cached_blocks(),
            usage: self.pool.usage(),
            prefix_cache_queries: self.prefix_cache_queries,
            prefix_cache_hits: self.prefix_cache_hits,
        }
    }

    /// Ids of sequences the manager tracks (holding blocks or a pending lookup).
    pub fn tracked_seqs(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }
}
