//! Paged KV cache bookkeeping (pure CPU; never touches a device).
//!
//! Three small objects, after vLLM v1's `core/` split:
//! - [`BlockPool`]: reference-counted blocks, the LRU free queue and the
//!   `hash -> block` map of cached full blocks;
//! - [`hash`]: the chained content hash of full blocks used as the cache key;
//! - [`KvCacheManager`]: per-sequence block tables on top of the pool (prefix lookup,
//!   `allocate_slots`, caching newly full blocks, free, speculative rollback).
//!
//! The model sees only the block tables (`[u32]` of block ids) and slot numbers
//! `block_id * block_size + offset` (`sluice_model::BatchInput`).

pub mod block_pool;
pub mod hash;
pub mod manager;

pub use block_pool::BlockPool;
pub use hash::BlockHash;
pub use manager::{ComputedBlocks, KvCacheManager, KvStats};

/// Index of a physical KV block (the model's block tables are `u32`).
pub type BlockId = u32;

/// A misuse of the KV bookkeeping: always an engine bug, never bad user input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// A block id at or beyond the pool size.
    #[error("KV block {0} does not exist")]
    UnknownBlock(BlockId),
    /// A block freed more times than it was taken.
    #[error("KV block {0} freed while not in use (double free)")]
    DoubleFree(BlockId),
    /// A block used as if owned while it is free.
    #[error("KV block {0} is not in use")]
    NotInUse(BlockId),
    /// Prefix-cache hits offered for a sequence that already holds blocks.
    #[error("{0}: cached prefix blocks given to a sequence that already has blocks")]
    ComputedBlocksForAllocatedSeq(crate::sequence::SeqId),
    /// A rollback that would cut into a block already shared through the prefix cache.
    #[error("{seq}: cannot truncate to {num_tokens} tokens: {num_cached_tokens} tokens are in cached blocks")]
    TruncateCachedBlock {
        /// The sequence.
        seq: crate::sequence::SeqId,
        /// Requested length.
        num_tokens: usize,
        /// Tokens in blocks already registered in the prefix cache.
        num_cached_tokens: usize,
    },
}

/// `ceil(a / b)` for `b > 0`.
pub(crate) fn cdiv(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}
