//! Property tests of `KvCacheManager`: random admissions (many sharing prefixes with
//! live or freed sequences), chunked steps, speculative steps with rollback, and frees,
//! against a simulated KV memory that records which token was written to each slot.
//!
//! After every operation: refcounts equal the number of block tables holding a block,
//! the free queue holds exactly the unowned blocks, every computed position of every
//! sequence reads back its own token through its block table, only exclusively owned
//! uncached blocks are ever written, every cached hash maps to a block whose content is
//! the content that hash was made from, and prefix hits are exact and maximal.
//! At the end everything is freed and the pool is whole again.

use std::collections::HashMap;

use proptest::prelude::*;
use sluice_engine::kv::hash::{extend_block_hashes, root_hash};
use sluice_engine::kv::{BlockHash, BlockId, ComputedBlocks, KvCacheManager};
use sluice_engine::sequence::{SeqId, Sequence};

const KEY: &str = "test-model";

#[derive(Clone, Debug)]
enum Op {
    /// New sequence: a prefix (`share` tokens) of a live sequence `base`, then `suffix`;
    /// computes a first chunk of `1 + chunk % remaining` tokens.
    Admit {
        base: Option<usize>,
        share: usize,
        suffix: Vec<u32>,
        chunk: usize,
        salted: bool,
    },
    /// Computes `1 + n % remaining` more tokens of live sequence `idx`, reserving
    /// `lookahead` extra slots.
    Step {
        idx: usize,
        n: usize,
        lookahead: usize,
    },
    /// A decoding sequence verifies `k` drafts and accepts `accept % (k + 1)`.
    Spec { idx: usize, k: usize, accept: usize },
    /// Frees sequence `idx`.
    Free { idx: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            prop::option::of(any::<usize>()),
            any::<usize>(),
            prop::collection::vec(0u32..3, 0..9),
            any::<usize>(),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(base, share, suffix, chunk, salted)| Op::Admit { base, share, suffix, chunk, salted }),
        5 => (any::<usize>(), any::<usize>(), 0usize..3).prop_map(|(idx, n, lookahead)| Op::Step { idx, n, lookahead }),
        2 => (any::<usize>(), 1usize..5, any::<usize>()).prop_map(|(idx, k, accept)| Op::Spec { idx, k, accept }),
        2 => any::<usize>().prop_map(|idx| Op::Free { idx }),
    ]
}

struct Sim {
    mgr: KvCacheManager,
    bs: usize,
    nb: usize,
    /// `[num_blocks * block_size]`: the token whose KV was last written to each slot.
    shadow: Vec<Option<u32>>,
    seqs: Vec<Sequence>,
    next_id: u64,
    /// Content of every block hash ever registered: hash -> the block's tokens.
    known: HashMap<BlockHash, Vec<u32>>,
}

fn salt(seq: &Sequence) -> Option<&str> {
    seq.cache_salt.as_deref()
}

impl Sim {
    fn slot(&self, table: &[BlockId], pos: usize) -> usize {
        table[pos / self.bs] as usize * self.bs + pos % self.bs
    }

    /// The model's part: writes the KV of `n` tokens from `num_computed_tokens` on,
    /// then samples a token if the sequence's known tokens are all computed.
    fn compute(&mut self, i: usize, n: usize) -> Result<(), TestCaseError> {
        let id = self.seqs[i].id;
        let table = self.mgr.block_table(id).to_vec();
        let start = self.seqs[i].num_computed_tokens;
        prop_assert!(table.len() * self.bs >= start + n);
        for pos in start..start + n {
            let b = table[pos / self.bs];
            prop_assert_eq!(
                self.mgr.pool().ref_count(b),
                1,
                "write into shared block {}",
                b
            );
            prop_assert_eq!(
                self.mgr.pool().block_hash(b),
                None,
                "write into cached block {}",
                b
            );
            let slot = self.slot(&table, pos);
            self.shadow[slot] = self.seqs[i].token_with_spec(pos);
        }
        let seq = &mut self.seqs[i];
        seq.num_computed_tokens += n;
        if seq.num_computed_tokens == seq.num_tokens() {
            // Few distinct tokens, so sequences keep meeting the same blocks.
            let t = seq.all_token_ids().iter().sum::<u32>() % 3;
            seq.append_token(t);
        }
        self.cache(i)
    }

    /// `cache_blocks`, remembering the content behind every hash it may register.
    fn cache(&mut self, i: usize) -> Result<(), TestCaseError> {
        let seq = &self.seqs[i];
        prop_assert_eq!(self.mgr.cache_blocks(seq), Ok(()));
        let full = seq.num_computed_tokens.min(seq.num_tokens()) / self.bs;
        let tokens = &seq.all_token_ids()[..full * self.bs];
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, root_hash(KEY, salt(seq)), tokens, self.bs);
        for (j, h) in hashes.into_iter().enumerate() {
            self.known
                .insert(h, tokens[j * self.bs..(j + 1) * self.bs].to_vec());
        }
        Ok(())
    }

    fn admit(&mut self, prompt: Vec<u32>, chunk: usize, salted: bool) -> Result<(), TestCaseError> {
        let mut seq = Sequence::new(SeqId(self.next_id), prompt, 1000);
        self.next_id += 1;
        if salted {
            seq = seq.with_cache_salt("tenant-b");
        }
        let computed = self.mgr.get_computed_blocks(&seq);
        let cached = computed.num_cached_tokens;
        prop_assert_eq!(cached, computed.blocks.len() * self.bs);
        prop_assert!(
            cached < seq.num_tokens(),
            "the whole prompt was served from cache"
        );
        // Hits are exact (the content behind them is the prompt's) and maximal.
        let mut hashes = Vec::new();
        extend_block_hashes(
            &mut hashes,
            root_hash(KEY, salt(&seq)),
            seq.all_token_ids(),
            self.bs,
        );
        for (j, &b) in computed.blocks.iter().enumerate() {
            prop_assert_eq!(self.mgr.pool().get_cached_block(hashes[j]), Some(b));
            for o in 0..self.bs {
                let pos = j * self.bs + o;
                prop_assert_eq!(
                    self.shadow[b as usize * self.bs + o],
                    Some(seq.all_token_ids()[pos])
                );
            }
        }
        let max_hits = (seq.num_tokens() - 1) / self.bs;
        if self.mgr.prefix_caching_enabled() && computed.blocks.len() < max_hits {
            prop_assert_eq!(
                self.mgr
                    .pool()
                    .get_cached_block(hashes[computed.blocks.len()]),
                None
            );
        }
        if !self.mgr.prefix_caching_enabled() {
            prop_assert_eq!(&computed, &ComputedBlocks::default());
        }
        let n = 1 + chunk % (seq.num_tokens() - cached);
        let need = (cached + n).div_ceil(self.bs) - computed.blocks.len();
        let free_hits = computed
            .blocks
            .iter()
            .filter(|&&b| self.mgr.pool().ref_count(b) == 0)
            .count();
        let feasible = need + free_hits <= self.mgr.num_free_blocks();
        let got = self.mgr.allocate_slots(&seq, n, &computed, 0);
        prop_assert_eq!(got, Ok(feasible.then_some(need)));
        if feasible {
            seq.num_computed_tokens = cached;
            self.seqs.push(seq);
            let i = self.seqs.len() - 1;
            self.compute(i, n)?;
        } else {
            prop_assert_eq!(self.mgr.free(seq.id), Ok(()));
        }
        Ok(())
    }

    fn step(&mut self, i: usize, n: usize, lookahead: usize) -> Result<(), TestCaseError> {
        let seq = &self.seqs[i];
        let remaining = seq.num_tokens() - seq.num_computed_tokens;
        let n = 1 + n % remaining;
        let have = self.mgr.block_table(seq.id).len();
        let need = (seq.num_computed_tokens + n + lookahead)
            .div_ceil(self.bs)
            .saturating_sub(have);
        let feasible = need <= self.mgr.num_free_blocks();
        let got = self
            .mgr
            .allocate_slots(seq, n, &ComputedBlocks::default(), lookahead);
        prop_assert_eq!(got, Ok(feasible.then_some(need)));
        if feasible {
            self.compute(i, n)?;
        }
        Ok(())
    }

    fn spec(&mut self, i: usize, k: usize, accept: usize) -> Result<(), TestCaseError> {
        let seq = &mut self.seqs[i];
        if seq.num_tokens() - seq.num_computed_tokens != 1 {
            return Ok(()); // still in its prompt
        }
        seq.spec_token_ids = (0..k as u32)
            .map(|d| (d * 7 + seq.num_tokens() as u32) % 3)
            .collect();
        let before = seq.num_computed_tokens;
        let got = self
            .mgr
            .allocate_slots(seq, 1 + k, &ComputedBlocks::default(), 0);
        prop_assert!(got.is_ok());
        if got.ok().flatten().is_none() {
            self.seqs[i].spec_token_ids.clear();
            return Ok(());
        }
        // Write KV for the last known token and all drafts, as the model would.
        let id = self.seqs[i].id;
        let table = self.mgr.block_table(id).to_vec();
        for pos in before..before + 1 + k {
            let b = table[pos / self.bs];
            prop_assert_eq!(self.mgr.pool().ref_count(b), 1);
            prop_assert_eq!(self.mgr.pool().block_hash(b), None);
            let slot = self.slot(&table, pos);
            self.shadow[slot] = self.seqs[i].token_with_spec(pos);
        }
        let a = accept % (k + 1);
        let seq = &mut self.seqs[i];
        let drafts = std::mem::take(&mut seq.spec_token_ids);
        for &d in &drafts[..a] {
            seq.append_token(d);
        }
        seq.append_token(9); // the bonus/corrected token, not yet computed
        seq.num_computed_tokens = before + 1 + a;
        let num_computed = seq.num_computed_tokens;
        prop_assert!(self.mgr.truncate(id, num_computed).is_ok());
        prop_assert_eq!(
            self.mgr.block_table(id).len(),
            num_computed.div_ceil(self.bs)
        );
        self.cache(i)
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let pool = self.mgr.pool();
        let mut owners = vec![0u32; self.nb];
        for s in &self.seqs {
            let table = self.mgr.block_table(s.id);
            prop_assert!(table.len() * self.bs >= s.num_computed_tokens);
            for &b in table {
                owners[b as usize] += 1;
            }
            // Every computed position reads back its own token.
            for pos in 0..s.num_computed_tokens {
                let slot = self.slot(table, pos);
                prop_assert_eq!(
                    self.shadow[slot],
                    Some(s.all_token_ids()[pos]),
                    "{} pos {}",
                    s.id,
                    pos
                );
            }
        }
        let mut free_blocks = Vec::new();
        for (b, &o) in owners.iter().enumerate() {
            prop_assert_eq!(pool.ref_count(b as BlockId), o, "refcount of block {}", b);
            if o == 0 {
                free_blocks.push(b as BlockId);
            }
        }
        let mut queue = pool.free_queue();
        queue.sort();
        prop_assert_eq!(queue, free_blocks);
        prop_assert_eq!(
            pool.num_free_blocks(),
            owners.iter().filter(|&&o| o == 0).count()
        );
        for (h, b) in pool.cached_entries() {
            prop_assert_eq!(pool.block_hash(b), Some(h));
            let content: Vec<Option<u32>> =
                self.shadow[b as usize * self.bs..(b as usize + 1) * self.bs].to_vec();
            let want: Option<Vec<Option<u32>>> = self
                .known
                .get(&h)
                .map(|t| t.iter().map(|&x| Some(x)).collect());
            prop_assert_eq!(Some(content), want, "cached block {} content", b);
        }
        for id in self.mgr.tracked_seqs() {
            prop_assert!(
                self.seqs.iter().any(|s| s.id == id),
                "{} tracked after free",
                id
            );
        }
        let st = self.mgr.stats();
        prop_assert!(st.prefix_cache_hits <= st.prefix_cache_queries);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn manager_invariants(
        nb in 1usize..20,
        bs in 1usize..5,
        enable in prop::bool::weighted(0.85),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut sim = Sim {
            mgr: KvCacheManager::new(nb, bs, enable, KEY),
            bs,
            nb,
            shadow: vec![None; nb * bs],
            seqs: Vec::new(),
            next_id: 0,
            known: HashMap::new(),
        };
        for op in ops {
            match op {
                Op::Admit { base, share, suffix, chunk, salted } => {
                    let mut prompt = match base {
                        Some(b) if !sim.seqs.is_empty() => {
                            let t = sim.seqs[b % sim.seqs.len()].all_token_ids();
                            t[..share % (t.len() + 1)].to_vec()
                        }
                        _ => Vec::new(),
                    };
                    prompt.extend(suffix);
                    if prompt.is_empty() {
                        prompt.push(0);
                    }
                    sim.admit(prompt, chunk, salted)?;
                }
                Op::Step { idx, n, lookahead } if !sim.seqs.is_empty() => {
                    let i = idx % sim.seqs.len();
                    sim.step(i, n, lookahead)?;
                }
                Op::Spec { idx, k, accept } if !sim.seqs.is_empty() => {
                    let i = idx % sim.seqs.len();
                    sim.spec(i, k, accept)?;
                }
                Op::Free { idx } if !sim.seqs.is_empty() => {
                    let s = sim.seqs.swap_remove(idx % sim.seqs.len());
                    prop_assert_eq!(sim.mgr.free(s.id), Ok(()));
                    prop_assert_eq!(sim.mgr.free(s.id), Ok(()), "second free is a no-op");
                    prop_assert!(sim.mgr.block_table(s.id).is_empty());
                }
                _ => {}
            }
            sim.check()?;
        }
        // No leak.
        for s in std::mem::take(&mut sim.seqs) {
            prop_assert_eq!(sim.mgr.free(s.id), Ok(()));
        }
        sim.check()?;
        prop_assert_eq!(sim.mgr.num_free_blocks(), nb);
        prop_assert_eq!(sim.mgr.tracked_seqs().count(), 0);
        if !enable {
            prop_assert_eq!(sim.mgr.pool().num_cached_blocks(), 0);
        }
    }
}

/// A second request sharing a prefix hits the cache; a salted one does not; stats add up.
#[test]
fn prefix_hit_and_salt() -> Result<(), Box<dyn std::error::Error>> {
    let bs = 4;
    let mut mgr = KvCacheManager::new(16, bs, true, KEY);
    let prompt: Vec<u32> = (0..10).collect();
    let mut a = Sequence::new(SeqId(1), prompt.clone(), 8);
    let c = mgr.get_computed_blocks(&a);
    assert_eq!(c.num_cached_tokens, 0);
    assert_eq!(mgr.allocate_slots(&a, 10, &c, 0)?, Some(3));
    a.num_computed_tokens = 10;
    mgr.cache_blocks(&a)?;
    assert_eq!(mgr.pool().num_cached_blocks(), 2);

    // Same 8-token prefix: two blocks hit.
    let mut p2 = prompt[..8].to_vec();
    p2.extend([50, 51, 52]);
    let b = Sequence::new(SeqId(2), p2, 8);
    let c = mgr.get_computed_blocks(&b);
    assert_eq!(c.num_cached_tokens, 8);
    assert_eq!(&c.blocks[..], &mgr.block_table(a.id)[..2]);
    assert_eq!(mgr.allocate_slots(&b, 3, &c, 0)?, Some(1));
    assert_eq!(mgr.pool().ref_count(mgr.block_table(a.id)[0]), 2);

    // An exact 8-token prompt may hit only one block: its last token must be computed.
    let exact = Sequence::new(SeqId(3), prompt[..8].to_vec(), 8);
    assert_eq!(mgr.get_computed_blocks(&exact).num_cached_tokens, 4);
    mgr.free(exact.id)?;

    let salted = Sequence::new(SeqId(4), prompt.clone(), 8).with_cache_salt("other");
    assert_eq!(mgr.get_computed_blocks(&salted).num_cached_tokens, 0);
    mgr.free(salted.id)?;

    let st = mgr.stats();
    assert_eq!(st.prefix_cache_queries, 10 + 11);
    assert_eq!(st.prefix_cache_hits, 8);
    assert!((st.prefix_cache_hit_rate() - 8.0 / 21.0).abs() < 1e-12);

    mgr.free(a.id)?;
    mgr.free(b.id)?;
    assert_eq!(mgr.num_free_blocks(), 16);
    // Freed cached blocks stay findable until evicted.
    let again = Sequence::new(SeqId(5), prompt, 8);
    assert_eq!(mgr.get_computed_blocks(&again).num_cached_tokens, 8);
    Ok(())
}

/// Rollback may not cut into blocks already registered in the prefix cache.
#[test]
fn truncate_refuses_cached_blocks() -> Result<(), Box<dyn std::error::Error>> {
    let mut mgr = KvCacheManager::new(8, 2, true, KEY);
    let mut a = Sequence::new(SeqId(1), vec![1, 2, 3, 4, 5], 8);
    mgr.allocate_slots(&a, 5, &ComputedBlocks::default(), 2)?;
    assert_eq!(mgr.block_table(a.id).len(), 4);
    a.num_computed_tokens = 5;
    mgr.cache_blocks(&a)?;
    assert_eq!(mgr.truncate(a.id, 5)?, 1);
    assert!(mgr.truncate(a.id, 3).is_err());
    assert_eq!(mgr.block_table(a.id).len(), 3);
    Ok(())
}

/// A freed sequence's blocks join the free queue tail first, so its last blocks (the
/// least likely to be shared) are evicted before its first ones, and blocks still held
/// by another sequence stay out of the queue.
#[test]
fn free_queues_tail_blocks_first() -> Result<(), Box<dyn std::error::Error>> {
    let mut mgr = KvCacheManager::new(8, 2, true, KEY);
    let mut a = Sequence::new(SeqId(1), vec![1, 2, 3, 4, 5, 6, 7], 4);
    mgr.allocate_slots(&a, 7, &ComputedBlocks::default(), 0)?;
    a.num_computed_tokens = 7;
    mgr.cache_blocks(&a)?;
    let table_a = mgr.block_table(a.id).to_vec();
    assert_eq!(table_a, vec![0, 1, 2, 3]);
    let b = Sequence::new(SeqId(2), vec![1, 2, 3, 4, 9], 4);
    let hit = mgr.get_computed_blocks(&b);
    assert_eq!(hit.blocks, vec![0, 1]);
    mgr.allocate_slots(&b, 1, &hit, 0)?;
    assert_eq!(mgr.block_table(b.id), &[0, 1, 4]);
    mgr.free(a.id)?;
    assert_eq!(mgr.pool().free_queue(), vec![5, 6, 7, 3, 2]);
    mgr.free(b.id)?;
    assert_eq!(mgr.pool().free_queue(), vec![5, 6, 7, 3, 2, 4, 1, 0]);
    Ok(())
}
