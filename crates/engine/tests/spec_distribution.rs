//! With temperature > 0 speculation must not change the distribution of the output.
//!
//! A tiny seeded model; many requests with different seeds generate 3 tokens after a
//! fixed prompt: `t1` comes from the prompt's step, `t2` from verifying the draft (accepted draft or a token drawn from the residual `max(0, p - q)`). The
//! empirical joint distribution of `(t1, t2)` is compared with the target's exact one,
//! `p(t1 | prompt) * p(t2 | prompt, t1)` computed by direct forwards, with Pearson's
//! chi-square test at the 0.1% significance level (cells with expected count < 5
//! pooled; critical value from the Wilson–Hilferty approximation of the chi-square
//! quantile). Seeds are fixed, so the test is deterministic: it cannot flake, and a
//! sampler that kept rejected drafts, skipped the residual or used the wrong `q` fails
//! it by a wide margin (the checks below also make sure both branches ran).

mod spec_common;

use sluice_backend::DType;
use sluice_engine::{EngineConfig, SamplingParams, SpecConfig};
use sluice_model::BatchInput;
use spec_common::*;

const HEAD_SCALE: f32 = 4.0;

/// Logits after the last token of each of `seqs` (one prefill batch on a fresh cache).
fn last_logits(seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let mut model = target_model(DType::Q8_0, HEAD_SCALE);
    let bs = 4;
    let per = seqs.iter().map(|s| s.len().div_ceil(bs)).max().unwrap_or(1);
    let mut kv = model.new_kv_cache(per * seqs.len(), bs).expect("kv");
    let mut batch = BatchInput::default();
    for (j, s) in seqs.iter().enumerate() {
        let table: Vec<u32> = ((j * per) as u32..((j + 1) * per) as u32).collect();
        batch.push_seq(s, s.len(), &table, bs, true);
    }
    let dev = model.device().clone();
    let logits = model.forward(&batch, &mut kv).expect("forward");
    let mut host = Vec::new();
    dev.copy_f32_to_host(logits, &mut host).expect("copy");
    host.chunks(VOCAB).map(|c| c.to_vec()).collect()
}

fn softmax(l: &[f32]) -> Vec<f64> {
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = l.iter().map(|&x| (x as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Upper `alpha = 0.001` quantile of chi-square with `df` degrees of freedom
/// (Wilson–Hilferty: accurate to about 1% for df >= 3).
fn chi2_critical_001(df: usize) -> f64 {
    let z = 3.090_232; // standard normal 0.999 quantile
    let k = df as f64;
    let h = 2.0 / (9.0 * k);
    k * (1.0 - h + z * h.sqrt()).powi(3)
}

/// Returns (chi2, df, critical value).
fn chi_square(counts: &[f64], expected: &[f64]) -> (f64, usize, f64) {
    let mut chi2 = 0.0;
    let (mut pool_o, mut pool_e) = (0.0, 0.0);
    let mut cells = 0;
    for (&o, &e) in counts.iter().zip(expected) {
        if e < 5.0 {
            pool_o += o;
            pool_e += e;
        } else {
            chi2 += (o - e) * (o - e) / e;
            cells += 1;
        }
    }
    if pool_e > 0.0 {
        chi2 += (pool_o - pool_e) * (pool_o - pool_e) / pool_e.max(1e-9);
        cells += 1;
    }
    let df = cells - 1;
    (chi2, df, chi2_critical_001(df))
}

fn check(method: Method, prompt: Vec<u32>, n: usize) {
    // Exact target distribution of (t1, t2).
    let p1 = softmax(&last_logits(std::slice::from_ref(&prompt))[0]);
    let seqs: Vec<Vec<u32>> = (0..VOCAB as u32)
        .map(|t| {
            let mut s = prompt.clone();
            s.push(t);
            s
        })
        .collect();
    let p2: Vec<Vec<f64>> = last_logits(&seqs).iter().map(|l| softmax(l)).collect();
    let mut expected = vec![0f64; VOCAB * VOCAB];
    for a in 0..VOCAB {
        for b in 0..VOCAB {
            expected[a * VOCAB + b] = n as f64 * p1[a] * p2[a][b];
        }
    }

    let spec = SpecConfig {
        num_speculative_tokens: 3,
        adaptive: false,
        max_batch_tokens: 1 << 20,
        ngram_min: 1,
        ngram_max: 4,
        ..SpecConfig::default()
    };
    let cfg = EngineConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: 4096,
        num_blocks: Some(4096),
        ..engine_config()
    };
    let mut e = engine(method, spec, cfg, DType::Q8_0, HEAD_SCALE);
    let mut counts = vec![0f64; VOCAB * VOCAB];
    let chunk = 512;
    for start in (0..n).step_by(chunk) {
        let reqs: Vec<_> = (start..(start + chunk).min(n))
            .map(|i| {
                let params = SamplingParams {
                    temperature: 1.0,
                    seed: Some(1000 + i as u64),
                    // t3 leaves room for one draft at t2's position.
                    max_tokens: 3,
                    ignore_eos: true,
                    ..SamplingParams::default()
                };
                (prompt.clone(), params)
            })
            .collect();
        for toks in run_all(&mut e, &reqs) {
            assert_eq!(toks.len(), 3);
            counts[toks[0] as usize * VOCAB + toks[1] as usize] += 1.0;
        }
    }
    let s = e
        .metrics()
        .spec
        .iter()
        .find(|s| s.num_draft_tokens > 0)
        .cloned()
        .expect("drafts were verified");
    let rate = s.acceptance_rate();
    assert!(
        s.num_drafts as f64 > 0.5 * n as f64 && rate > 0.05 && rate < 0.95,
        "{method:?}: both branches must run: {s:?}"
    );
    let (chi2, df, crit) = chi_square(&counts, &expected);
    eprintln!("{method:?}: chi2 = {chi2:.1}, df = {df}, critical (0.1%) = {crit:.1}, acceptance {rate:.2}");
    assert!(df >= 10, "too few cells for a meaningful test: {df}");
    assert!(
        chi2 < crit,
        "{method:?}: chi2 = {chi2:.1} >= {crit:.1} (df {df}): the distribution changed"
    );
}

#[test]
fn draft_model_rejection_sampling_keeps_the_target_distribution() {
    // The self-draft (first 2 of 4 layers) samples from its own q.
    check(Method::DraftLayers, prompts(1, 77).remove(0), 12_000);
}

#[test]
fn ngram_rejection_sampling_keeps_the_target_distribution() {
    // Prompt = X, the target's greedy continuation G of X, X again: after the second X
    // the likely next tokens are G's, which 4-gram lookup proposes (deterministic
    // drafts, q a point mass), accepted often but not always.
    let x = prompts(1, 78).remove(0);
    let mut base = engine(
        Method::Off,
        SpecConfig::default(),
        engine_config(),
        DType::Q8_0,
        HEAD_SCALE,
    );
    let g = run_all(&mut base, &[(x.clone(), greedy(16))]).remove(0);
    let prompt: Vec<u32> = x.iter().chain(&g).chain(&x).copied().collect();
    check(Method::Ngram, prompt, 12_000);
}

/// The test must be able to fail: samples drawn from the *draft's* distribution (what
/// a sampler that always accepted the drafts would emit) are rejected.
#[test]
fn the_chi_square_test_detects_a_wrong_distribution() {
    let prompt = prompts(1, 77).remove(0);
    let p = softmax(&last_logits(std::slice::from_ref(&prompt))[0]);
    // A distribution tilted towards the less likely tokens.
    let n = 12_000.0;
    let q: Vec<f64> = {
        let w: Vec<f64> = p.iter().map(|x| x.sqrt()).collect();
        let z: f64 = w.iter().sum();
        w.iter().map(|x| x / z).collect()
    };
    let counts: Vec<f64> = q.iter().map(|x| (x * n).round()).collect();
    let expected: Vec<f64> = p.iter().map(|x| x * n).collect();
    let (chi2, df, crit) = chi_square(&counts, &expected);
    assert!(chi2 > crit, "chi2 {chi2} df {df} crit {crit}");
    // And the critical value is right where tables put it (df = 10: 29.59).
    assert!((chi2_critical_001(10) - 29.59).abs() < 0.5);
}
