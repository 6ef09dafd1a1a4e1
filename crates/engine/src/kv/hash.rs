//! Content hashes of full KV blocks, the keys of the prefix cache.
//!
//! A block's KV depends on every token before it, so the key is chained:
//! `h_i = H(h_{i-1}, tokens of block i)`, with `h_{-1}` a root hash of the extra key
//! (model id and an optional per-request salt). Equal hashes therefore mean equal whole
//! prefixes, and only *full* blocks get a hash (a partial block still changes).
//!
//! Why SHA-256 (truncated to 128 bits) rather than a fast non-cryptographic hash: a
//! collision makes one request attend to another request's KV, which is both a wrong
//! answer and a leak across users; with a fast hash such collisions can be *crafted* from
//! prompts (vLLM moved its prefix cache from Python `hash()` to SHA-256 for this reason,
//! CVE-2025-25183). The cost is small: two SHA-256 compressions per 16-token block
//! (~110 bytes hashed), tens of microseconds per thousand prompt tokens. 128 bits
//! keep accidental collisions out of reach (birthday bound ~2^64 blocks).
//! Every field is length-prefixed or fixed-size and each hash kind has its own domain tag,
//! so distinct inputs never encode to the same bytes.

use sha2::{Digest, Sha256};

/// A 128-bit chained content hash of a full block (and everything before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

fn truncate(digest: &[u8]) -> BlockHash {
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    BlockHash(u128::from_le_bytes(b))
}

/// The chain's start for a model (`model_key`, e.g. its file hash or name) and an
/// optional per-request cache salt. Different keys give disjoint caches.
pub fn root_hash(model_key: &str, salt: Option<&str>) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"sluice-kv-root-v1\0");
    h.update((model_key.len() as u64).to_le_bytes());
    h.update(model_key.as_bytes());
    match salt {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
    }
    truncate(&h.finalize())
}

/// The hash of a block holding `tokens` whose prefix hashes to `parent`.
pub fn hash_block(parent: BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"sluice-kv-block-v1\0");
    h.update(parent.0.to_le_bytes());
    h.update((tokens.len() as u64).to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    truncate(&h.finalize())
}

/// Extends `hashes` (the chain of `tokens`' first `hashes.len()` full blocks) with the
/// hashes of any further full blocks of `tokens`.
pub fn extend_block_hashes(
    hashes: &mut Vec<BlockHash>,
    root: BlockHash,
    tokens: &[u32],
    block_size: usize,
) {
    let full = tokens.len() / block_size;
    while hashes.len() < full {
        let i = hashes.len();
        let parent = hashes.last().copied().unwrap_or(root);
        hashes.push(hash_block(
            parent,
            &tokens[i * block_size..(i + 1) * block_size],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_prefix_key_and_content() {
        let root = root_hash("m", None);
        let mut a = Vec::new();
        extend_block_hashes(&mut a, root, &[1, 2, 3, 4, 5, 6, 7], 2);
        assert_eq!(a.len(), 3);
        // Incremental extension equals one-shot hashing.
        let mut b = Vec::new();
        extend_block_hashes(&mut b, root, &[1, 2, 3], 2);
        extend_block_hashes(&mut b, root, &[1, 2, 3, 4, 5, 6], 2);
        assert_eq!(a, b);
        // Same block content after a different prefix hashes differently.
        let mut c = Vec::new();
        extend_block_hashes(&mut c, root, &[9, 2, 3, 4], 2);
        assert_ne!(a[0], c[0]);
        assert_ne!(a[1], c[1]);
        // Salts and model keys separate caches.
        assert_ne!(root, root_hash("m", Some("")));
        assert_ne!(root_hash("m", Some("x")), root_hash("m", Some("y")));
        assert_ne!(root, root_hash("n", None));
        assert_ne!(hash_block(root, &[1]), hash_block(root, &[1, 0]));
    }
}
