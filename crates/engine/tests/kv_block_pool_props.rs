//! Property tests of `BlockPool` against a plain reference model: the free queue order
//! (exact LRU), reference counts, the hash map, and error reporting on misuse.

use std::collections::{HashMap, VecDeque};

use proptest::prelude::*;
use sluice_engine::kv::{BlockHash, BlockId, BlockPool, KvError};

#[derive(Clone, Debug)]
enum Op {
    /// Take n blocks.
    Get(usize),
    /// Add an owner to block `k % num_blocks` (a cache hit).
    Touch(usize),
    /// Drop the owner at index `k % owners`.
    Free(usize),
    /// Drop several owners at once, in the given order.
    FreeMany(Vec<usize>),
    /// Register held block `k % owners` under hash `h` (small range: collisions happen).
    Cache(usize, u8),
    /// Look up hash `h`.
    Lookup(u8),
    /// Free a block nobody holds: must be refused.
    DoubleFree(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..6).prop_map(Op::Get),
        2 => any::<usize>().prop_map(Op::Touch),
        3 => any::<usize>().prop_map(Op::Free),
        1 => prop::collection::vec(any::<usize>(), 0..5).prop_map(Op::FreeMany),
        3 => (any::<usize>(), 0u8..10).prop_map(|(k, h)| Op::Cache(k, h)),
        1 => (0u8..10).prop_map(Op::Lookup),
        1 => any::<usize>().prop_map(Op::DoubleFree),
    ]
}

/// The obvious, slow implementation.
struct Model {
    refs: Vec<u32>,
    queue: VecDeque<BlockId>,
    hash: Vec<Option<BlockHash>>,
    map: HashMap<BlockHash, BlockId>,
    /// One entry per held reference.
    owners: Vec<BlockId>,
}

impl Model {
    fn new(n: usize) -> Model {
        Model {
            refs: vec![0; n],
            queue: (0..n as BlockId).collect(),
            hash: vec![None; n],
            map: HashMap::new(),
            owners: Vec::new(),
        }
    }

    fn free(&mut self, b: BlockId) {
        self.refs[b as usize] -= 1;
        if self.refs[b as usize] == 0 {
            self.queue.push_back(b);
        }
    }
}

fn check(pool: &BlockPool, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        pool.free_queue(),
        m.queue.iter().copied().collect::<Vec<_>>()
    );
    prop_assert_eq!(pool.num_free_blocks(), m.queue.len());
    for b in 0..m.refs.len() {
        prop_assert_eq!(pool.ref_count(b as BlockId), m.refs[b], "refcount of {}", b);
        prop_assert_eq!(pool.block_hash(b as BlockId), m.hash[b], "hash of {}", b);
    }
    // Refcounts equal the number of owners.
    for b in 0..m.refs.len() {
        let owners = m.owners.iter().filter(|&&o| o as usize == b).count() as u32;
        prop_assert_eq!(m.refs[b], owners);
    }
    let mut got = pool.cached_entries();
    got.sort();
    let mut want: Vec<_> = m.map.iter().map(|(&h, &b)| (h, b)).collect();
    want.sort();
    prop_assert_eq!(got, want);
    let usage = 1.0 - m.queue.len() as f64 / m.refs.len() as f64;
    prop_assert!((pool.usage() - usage).abs() < 1e-12);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn pool_matches_reference(n in 1usize..12, ops in prop::collection::vec(op(), 0..80)) {
        let mut pool = BlockPool::new(n);
        let mut m = Model::new(n);
        check(&pool, &m)?;
        for op in ops {
            match op {
                Op::Get(k) => {
                    let got = pool.get_new_blocks(k);
                    if k > m.queue.len() {
                        prop_assert_eq!(got, None);
                    } else {
                        let want: Vec<BlockId> = m.queue.drain(..k).collect();
                        for &b in &want {
                            if let Some(h) = m.hash[b as usize].take() {
                                m.map.remove(&h);
                            }
                            m.refs[b as usize] = 1;
                            m.owners.push(b);
                        }
                        prop_assert_eq!(got, Some(want));
                    }
                }
                Op::Touch(k) => {
                    let b = (k % n) as BlockId;
                    prop_assert_eq!(pool.touch(&[b]), Ok(()));
                    if m.refs[b as usize] == 0 {
                        m.queue.retain(|&q| q != b);
                    }
                    m.refs[b as usize] += 1;
                    m.owners.push(b);
                }
                Op::Free(k) => {
                    if !m.owners.is_empty() {
                        let b = m.owners.swap_remove(k % m.owners.len());
                        prop_assert_eq!(pool.free_blocks([b]), Ok(()));
                        m.free(b);
                    }
                }
                Op::FreeMany(ks) => {
                    let mut order = Vec::new();
                    for k in ks {
                        if !m.owners.is_empty() {
                            order.push(m.owners.swap_remove(k % m.owners.len()));
                        }
                    }
                    prop_assert_eq!(pool.free_blocks(order.iter().copied()), Ok(()));
                    for b in order {
                        m.free(b);
                    }
                }
                Op::Cache(k, h) => {
                    if !m.owners.is_empty() {
                        let b = m.owners[k % m.owners.len()];
                        let h = BlockHash(h as u128);
                        let want = match m.hash[b as usize] {
                            Some(old) => old == h,
                            None if m.map.contains_key(&h) => false,
                            None => {
                                m.map.insert(h, b);
                                m.hash[b as usize] = Some(h);
                                true
                            }
                        };
                        prop_assert_eq!(pool.cache_full_block(b, h), Ok(want));
                    }
                }
                Op::Lookup(h) => {
                    let h = BlockHash(h as u128);
                    prop_assert_eq!(pool.get_cached_block(h), m.map.get(&h).copied());
                }
                Op::DoubleFree(k) => {
                    if !m.queue.is_empty() {
                        let b = m.queue[k % m.queue.len()];
                        prop_assert_eq!(pool.free_blocks([b]), Err(KvError::DoubleFree(b)));
                        prop_assert_eq!(pool.cache_full_block(b, BlockHash(99)), Err(KvError::NotInUse(b)));
                    }
                    prop_assert_eq!(pool.free_blocks([n as BlockId]), Err(KvError::UnknownBlock(n as BlockId)));
                    prop_assert_eq!(pool.touch(&[n as BlockId]), Err(KvError::UnknownBlock(n as BlockId)));
                }
            }
            check(&pool, &m)?;
        }
        // No leak: dropping every owner frees every block.
        let owners = std::mem::take(&mut m.owners);
        prop_assert_eq!(pool.free_blocks(owners.iter().rev().copied()), Ok(()));
        prop_assert_eq!(pool.num_free_blocks(), n);
        prop_assert_eq!(pool.usage(), 0.0);
    }
}

/// Reset drops only the hashes of free blocks.
#[test]
fn reset_prefix_cache_keeps_blocks_in_use() -> Result<(), KvError> {
    let mut pool = BlockPool::new(3);
    let got = pool.get_new_blocks(2).ok_or(KvError::UnknownBlock(0))?;
    assert_eq!(got, vec![0, 1]);
    assert!(pool.cache_full_block(0, BlockHash(1))?);
    assert!(pool.cache_full_block(1, BlockHash(2))?);
    pool.free_blocks([0])?;
    assert_eq!(pool.reset_prefix_cache(), 1);
    assert_eq!(pool.get_cached_block(BlockHash(1)), None);
    assert_eq!(pool.get_cached_block(BlockHash(2)), Some(1));
    assert_eq!(pool.block_hash(0), None);
    Ok(())
}
