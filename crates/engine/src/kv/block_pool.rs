//! The pool of physical KV blocks: reference counts, the free queue in LRU eviction
//! order, and the map of cached full blocks.
//!
//! After vLLM v1 `core/block_pool.py`: a free block may still hold a cached prefix (its
//! hash stays in the map) until it is handed out again; handing out takes the queue head,
//! i.e. the least recently freed block, and drops its hash then. A cache hit on a free
//! block removes it from the middle of the queue, which is why the queue is an intrusive
//! doubly linked list over block indices (O(1) everywhere).

use std::collections::HashMap;

use super::{BlockHash, BlockId, KvError};

/// "No block" in the intrusive list links.
const NIL: BlockId = BlockId::MAX;

#[derive(Clone, Debug)]
struct BlockMeta {
    /// Number of sequences holding this block.
    ref_cnt: u32,
    /// Set while the block is registered in `BlockPool::cached`.
    hash: Option<BlockHash>,
    /// Free-queue links; meaningful only while `ref_cnt == 0`.
    prev: BlockId,
    next: BlockId,
}

/// Reference-counted KV blocks with an LRU free queue and a prefix cache map.
#[derive(Clone, Debug)]
pub struct BlockPool {
    /// `[num_blocks]`
    blocks: Vec<BlockMeta>,
    /// Free-queue head (next block handed out / evicted) and tail (most recently freed).
    head: BlockId,
    tail: BlockId,
    num_free: usize,
    /// Full blocks whose content is known by hash: `hash -> block`.
    cached: HashMap<BlockHash, BlockId>,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks, queued in id order.
    ///
    /// `num_blocks` must fit in a `BlockId` below the list sentinel; larger values are
    /// clamped (no device holds 4 billion blocks).
    pub fn new(num_blocks: usize) -> BlockPool {
        let n = num_blocks.min(NIL as usize) as BlockId;
        let blocks = (0..n)
            .map(|i| BlockMeta {
                ref_cnt: 0,
                hash: None,
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == n { NIL } else { i + 1 },
            })
            .collect();
        BlockPool {
            blocks,
            head: if n == 0 { NIL } else { 0 },
            tail: if n == 0 { NIL } else { n - 1 },
            num_free: n as usize,
            cached: HashMap::new(),
        }
    }

    /// Total blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with no owner (including cached ones that may be evicted).
    pub fn num_free_blocks(&self) -> usize {
        self.num_free
    }

    /// Fraction of blocks in use, in `[0, 1]`.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f64 / self.blocks.len() as f64
    }

    /// Blocks registered in the prefix cache (in use or free).
    pub fn num_cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// Takes `n` blocks from the head of the free queue (least recently freed first),
    /// dropping any cached hash they carry. Each comes back with reference count 1.
    /// `None` (and nothing changed) when fewer than `n` blocks are free.
    pub fn get_new_blocks(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.head;
            self.unlink(b);
            self.evict_hash(b);
            self.blocks[b as usize].ref_cnt = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Adds an owner to each block (a prefix-cache hit), taking free ones off the free
    /// queue. Checks every id before changing anything.
    pub fn touch(&mut self, blocks: &[BlockId]) -> Result<(), KvError> {
        self.check_ids(blocks)?;
        for &b in blocks {
            if self.blocks[b as usize].ref_cnt == 0 {
                self.unlink(b);
            }
            self.blocks[b as usize].ref_cnt += 1;
        }
        Ok(())
    }

    /// Drops one owner from each block, in the given order; a block reaching zero goes to
    /// the tail of the free queue (keeping its cached hash). Free a sequence's blocks in
    /// reverse so its tail blocks, the least likely to be shared, are evicted first.
    ///
    /// Stops at the first unknown or already free block and reports it (blocks before it
    /// have been freed): that is an engine bug.
    pub fn free_blocks<I: IntoIterator<Item = BlockId>>(
        &mut self,
        blocks: I,
    ) -> Result<(), KvError> {
        for b in blocks {
            let meta = self
                .blocks
                .get_mut(b as usize)
                .ok_or(KvError::UnknownBlock(b))?;
            if meta.ref_cnt == 0 {
                return Err(KvError::DoubleFree(b));
            }
            meta.ref_cnt -= 1;
            if meta.ref_cnt == 0 {
                self.push_tail(b);
            }
        }
        Ok(())
    }

    /// Registers an in-use full block under `hash`. Returns false (and changes nothing)
    /// when the hash is already cached by another block (two sequences computed the same
    /// prefix at once: the first copy stays the cached one) or the block already carries
    /// a different hash.
    pub fn cache_full_block(&mut self, block: BlockId, hash: BlockHash) -> Result<bool, KvError> {
        let meta = self
            .blocks
            .get(block as usize)
            .ok_or(KvError::UnknownBlock(block))?;
        if meta.ref_cnt == 0 {
            // Content of a free block is not guaranteed to be what the caller thinks.
            return Err(KvError::NotInUse(block));
        }
        if let Some(h) = meta.hash {
            return Ok(h == hash);
        }
        if self.cached.contains_key(&hash) {
            return Ok(false);
        }
        self.cached.insert(hash, block);
        self.blocks[block as usize].hash = Some(hash);
        Ok(true)
    }

    /// The block caching `hash`, if any (in use or free). Does not touch it.
    pub fn get_cached_block(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Owners of `block` (0 when free or unknown).
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.blocks.get(block as usize).map_or(0, |m| m.ref_cnt)
    }

    /// The hash `block` is cached under, if any.
    pub fn block_hash(&self, block: BlockId) -> Option<BlockHash> {
        self.blocks.get(block as usize).and_then(|m| m.hash)
    }

    /// The free queue from head (next to be evicted) to tail. O(free blocks); for tests
    /// and debugging.
    pub fn free_queue(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut b = self.head;
        while b != NIL && out.len() <= self.blocks.len() {
            out.push(b);
            b = self.blocks[b as usize].next;
        }
        out
    }

    /// All `(hash, block)` cache entries, in no particular order; for tests.
    pub fn cached_entries(&self) -> Vec<(BlockHash, BlockId)> {
        self.cached.iter().map(|(&h, &b)| (h, b)).collect()
    }

    /// Drops every cached hash of free blocks (e.g. after weights change). Blocks in use
    /// keep theirs. Returns how many entries were dropped.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let blocks = &mut self.blocks;
        let before = self.cached.len();
        self.cached.retain(|_, b| {
            let meta = &mut blocks[*b as usize];
            if meta.ref_cnt == 0 {
                meta.hash = None;
                false
            } else {
                true
            }
        });
        before - self.cached.len()
    }

    fn check_ids(&self, blocks: &[BlockId]) -> Result<(), KvError> {
        match blocks.iter().find(|&&b| b as usize >= self.blocks.len()) {
            Some(&b) => Err(KvError::UnknownBlock(b)),
            None => Ok(()),
        }
    }

    /// Drops the cache entry of a block about to be reused.
    fn evict_hash(&mut self, b: BlockId) {
        if let Some(h) = self.blocks[b as usize].hash.take() {
            if self.cached.get(&h) == Some(&b) {
                self.cached.remove(&h);
            }
        }
    }

    /// Removes a free block from the queue.
    fn unlink(&mut self, b: BlockId) {
        let (prev, next) = {
            let m = &self.blocks[b as usize];
            (m.prev, m.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let m = &mut self.blocks[b as usize];
        m.prev = NIL;
        m.next = NIL;
        self.num_free -= 1;
    }

    /// Appends a block that just became free.
    fn push_tail(&mut self, b: BlockId) {
        {
            let m = &mut self.blocks[b as usize];
            m.prev = self.tail;
            m.next = NIL;
        }
        if self.tail == NIL {
            self.head = b;
        } else {
            self.blocks[self.tail as usize].next = b;
        }
        self.tail = b;
        self.num_free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_order_and_hit_from_middle() -> Result<(), KvError> {
        let mut p = BlockPool::new(4);
        let a = p.get_new_blocks(3).ok_or(KvError::UnknownBlock(NIL))?;
        assert_eq!(a, vec![0, 1, 2]);
        assert_eq!(p.free_queue(), vec![3]);
        p.cache_full_block(1, BlockHash(11))?;
        p.free_blocks(a.iter().rev().copied())?;
        assert_eq!(p.free_queue(), vec![3, 2, 1, 0]);
        // A hit on cached free block 1 takes it out of the middle.
        assert_eq!(p.get_cached_block(BlockHash(11)), Some(1));
        p.touch(&[1])?;
        assert_eq!(p.free_queue(), vec![3, 2, 0]);
        assert_eq!(p.num_free_blocks(), 3);
        assert_eq!(p.free_blocks([1, 1]), Err(KvError::DoubleFree(1)));
        assert_eq!(p.free_queue(), vec![3, 2, 0, 1]);
        // Evicting the cached block drops its hash.
        let all = p.get_new_blocks(4).ok_or(KvError::UnknownBlock(NIL))?;
        assert_eq!(all, vec![3, 2, 0, 1]);
        assert_eq!(p.get_cached_block(BlockHash(11)), None);
        assert!(p.get_new_blocks(1).is_none());
        assert_eq!(p.usage(), 1.0);
        Ok(())
    }
}
