//! The custom attention mask through a whole model: a token tree verified in one step
//! (as lookahead / tree speculation does) gives each branch the logits it gets when
//! run alone as a plain causal sequence; a causal mask equals no mask; a mask of the
//! wrong length is a clear error. Runs on a random llama2.c-format model written by the
//! test (fixed seed), so it needs no model files.

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::Device;
use sluice_model::arch::Model;
use sluice_model::batch::causal_mask;
use sluice_model::loader::llama2c::load_llama2c;
use sluice_model::{BatchInput, KvCache};

const BLOCK: usize = 4;

/// Writes a random llama2.c checkpoint (dim 64, 4 heads of 16, 2 KV heads, 2 layers,
/// vocab 48, seq_len 64, shared classifier) and returns its path.
fn write_model(name: &str) -> PathBuf {
    let (dim, hidden, layers, heads, kv_heads, vocab, seq) = (64, 96, 2, 4, 2, 48, 64);
    let kv_dim = dim / heads * kv_heads;
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut bytes = Vec::new();
    for v in [dim, hidden, layers, heads, kv_heads, vocab, seq] {
        bytes.extend((v as i32).to_le_bytes());
    }
    let mut put = |n: usize, scale: f32, offset: f32| {
        for _ in 0..n {
            let x = offset + scale * (rng.random::<f32>() * 2.0 - 1.0);
            bytes.extend(x.to_le_bytes());
        }
    };
    put(vocab * dim, 1.0, 0.0);
    put(layers * dim, 0.1, 1.0);
    put(layers * dim * dim, 0.2, 0.0);
    put(layers * kv_dim * dim, 0.2, 0.0);
    put(layers * kv_dim * dim, 0.2, 0.0);
    put(layers * dim * dim, 0.2, 0.0);
    put(layers * dim, 0.1, 1.0);
    put(layers * hidden * dim, 0.2, 0.0);
    put(layers * dim * hidden, 0.2, 0.0);
    put(layers * hidden * dim, 0.2, 0.0);
    put(dim, 0.1, 1.0);
    put(seq * (dim / heads / 2) * 2, 0.0, 0.0);
    let path = std::env::temp_dir().join(format!("sluice-{name}-{}.bin", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn model(name: &str) -> Model {
    let path = write_model(name);
    let (cfg, weights) = load_llama2c(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    Model::new(&Device::cpu(Some(2)), cfg, weights, 64).unwrap()
}

fn logits(model: &mut Model, b: &BatchInput, kv: &mut KvCache) -> Vec<f32> {
    model.forward(b, kv).unwrap().as_f32().unwrap().to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `tokens` as one causal prefill and returns the logits of every row.
fn plain(model: &mut Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let vocab = model.config.vocab_size;
    let mut kv = model.new_kv_cache(32, BLOCK).unwrap();
    let table: Vec<u32> = (0..tokens.len().div_ceil(BLOCK) as u32).rev().collect();
    let mut b = BatchInput::default();
    b.push_seq(tokens, tokens.len(), &table, BLOCK, false);
    b.logits_indices = (0..tokens.len() as u32).collect();
    let l = logits(model, &b, &mut kv);
    l.chunks_exact(vocab).map(<[f32]>::to_vec).collect()
}

#[test]
fn token_tree_matches_each_branch_run_alone() {
    let mut m = model("tree");
    let vocab = m.config.vocab_size;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut tok = || rng.random_range(0..vocab as u32);
    let prefix: Vec<u32> = (0..10).map(|_| tok()).collect();
    let other: Vec<u32> = (0..6).map(|_| tok()).collect();
    // Tree after the prefix: a (root) -> b; a -> c -> d. Cache rows a, b, c, d.
    let (a, bt, c, d) = (tok(), tok(), tok(), tok());
    let p = prefix.len();
    #[rustfmt::skip]
    let tree_mask: Vec<u8> = vec![
        1, 0, 0, 0, // a
        1, 1, 0, 0, // b sees a
        1, 0, 1, 0, // c sees a (not its sibling b)
        1, 0, 1, 1, // d sees a, c
    ];

    let mut kv = m.new_kv_cache(32, BLOCK).unwrap();
    let table: Vec<u32> = vec![9, 3, 14, 0, 7];
    let table_other: Vec<u32> = vec![20, 21];
    // Step 1: prefill the prefix and most of the other sequence.
    let mut b = BatchInput::default();
    b.push_seq(&other[..5], 5, &table_other, BLOCK, true);
    b.push_seq(&prefix, p, &table, BLOCK, true);
    logits(&mut m, &b, &mut kv);
    // Step 2: the other sequence decodes one token; the tree is verified in one go.
    let mut b = BatchInput::default();
    b.push_seq(&other[5..], 6, &table_other, BLOCK, true);
    b.push_seq(&[a, bt, c, d], p + 4, &table, BLOCK, false);
    b.set_seq_mask(1, &tree_mask).unwrap();
    // Tree positions: b and c are both children of a.
    let n = b.positions.len();
    b.positions[n - 4..].copy_from_slice(&[p as u32, p as u32 + 1, p as u32 + 1, p as u32 + 2]);
    b.logits_indices = vec![0, 1, 2, 3, 4];
    assert_eq!(b.custom_mask.as_ref().map(Vec::len), Some(1 + 16));
    let got = logits(&mut m, &b, &mut kv);
    let row = |i: usize| &got[i * vocab..(i + 1) * vocab];

    let mut seq_acd = prefix.clone();
    seq_acd.extend([a, c, d]);
    let ref_acd = plain(&mut m, &seq_acd);
    let mut seq_ab = prefix.clone();
    seq_ab.extend([a, bt]);
    let ref_ab = plain(&mut m, &seq_ab);
    let ref_other = plain(&mut m, &other);
    let tol = 1e-4;
    let checks = [
        ("other", row(0), &ref_other[5]),
        ("a", row(1), &ref_acd[p]),
        ("b", row(2), &ref_ab[p + 1]),
        ("c", row(3), &ref_acd[p + 1]),
        ("d", row(4), &ref_acd[p + 2]),
    ];
    for (name, got, want) in checks {
        let diff = max_diff(got, want);
        println!("{name}: max abs logit diff {diff:.2e}");
        assert!(diff < tol, "{name}: {diff}");
    }
    // Without the mask, c would see b: the logits must differ (the test can fail).
    assert!(max_diff(row(3), &ref_ab[p + 1]) > 1e-3);
}

#[test]
fn causal_mask_equals_no_mask_and_bad_masks_are_errors() {
    let mut m = model("causal");
    let vocab = m.config.vocab_size as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let t1: Vec<u32> = (0..9).map(|_| rng.random_range(0..vocab)).collect();
    let t2: Vec<u32> = (0..5).map(|_| rng.random_range(0..vocab)).collect();
    let run = |m: &mut Model, mask: bool| {
        let mut kv = m.new_kv_cache(16, BLOCK).unwrap();
        let mut b = BatchInput::default();
        b.push_seq(&t1, 9, &[1, 2, 3], BLOCK, false);
        if mask {
            b.set_seq_mask(0, &causal_mask(9)).unwrap();
        }
        // Pushed after the mask exists: gets its causal matrix appended.
        b.push_seq(&t2, 5, &[4, 5], BLOCK, false);
        b.logits_indices = (0..14).collect();
        logits(m, &b, &mut kv)
    };
    let plain = run(&mut m, false);
    let masked = run(&mut m, true);
    assert!(plain
        .iter()
        .zip(&masked)
        .all(|(x, y)| x.to_bits() == y.to_bits()));

    let mut kv = m.new_kv_cache(16, BLOCK).unwrap();
    let mut b = BatchInput::default();
    b.push_seq(&t1, 9, &[1, 2, 3], BLOCK, true);
    assert!(b.set_seq_mask(0, &[1; 80]).unwrap_err().contains("81"));
    assert!(b.set_seq_mask(1, &[1]).is_err());
    b.custom_mask = Some(vec![1; 80]);
    let err = m.forward(&b, &mut kv).unwrap_err().to_string();
    assert!(err.contains("custom mask"), "{err}");
}
