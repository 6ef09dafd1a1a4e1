//! Paged attention vs a naive f64 reference on random inputs: several sequences with
//! mixed query lengths (prefill chunks and decodes), scrambled block tables with large
//! block ids, GQA/MQA/MHA, sliding windows, softcapping, odd head dims, every SIMD path.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cpu::{CpuBackend, CpuFeatures};
use sluice_backend::{AttentionParams, DType, Device, PagedAttentionMeta, Tensor};
use std::sync::Arc;

struct Case {
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    block_size: usize,
    window: Option<usize>,
    softcap: Option<f32>,
    /// (new rows, context length) per sequence
    seqs: Vec<(usize, usize)>,
}

fn run_case(case: &Case, device: &Device, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let num_blocks = 300;
    let (h, kv, hd, bs) = (case.n_heads, case.n_kv, case.hd, case.block_size);
    let cache_len = num_blocks * kv * bs * hd;
    let kc: Vec<f32> = (0..cache_len)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let vc: Vec<f32> = (0..cache_len)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let max_blocks = case.seqs.iter().map(|s| s.1.div_ceil(bs)).max().unwrap();
    // Distinct random blocks per sequence, biased to large ids.
    let mut free: Vec<i32> = (0..num_blocks as i32).rev().collect();
    for i in (1..free.len()).rev() {
        let j = rng.random_range(0..=i);
        free.swap(i, j);
    }
    let mut tables = vec![0i32; case.seqs.len() * max_blocks];
    for (s, &(_, c)) in case.seqs.iter().enumerate() {
        for b in 0..c.div_ceil(bs) {
            tables[s * max_blocks + b] = free.pop().unwrap();
        }
    }
    let t_total: usize = case.seqs.iter().map(|s| s.0).sum();
    let q: Vec<f32> = (0..t_total * h * hd)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let mut starts = vec![0i32];
    for s in &case.seqs {
        starts.push(starts.last().unwrap() + s.0 as i32);
    }
    let ctx: Vec<i32> = case.seqs.iter().map(|s| s.1 as i32).collect();
    let shape = [num_blocks, kv, bs, hd];
    let kt = Tensor::from_f32_cpu(&shape, &kc).unwrap();
    let vt = Tensor::from_f32_cpu(&shape, &vc).unwrap();
    let qt = Tensor::from_f32_cpu(&[t_total, h * hd], &q).unwrap();
    let i32t = |v: &[i32], shape: &[usize]| {
        let mut t = Tensor::zeros_cpu(DType::I32, shape).unwrap();
        t.as_i32_mut().unwrap().copy_from_slice(v);
        t
    };
    let st = i32t(&starts, &[starts.len()]);
    let ct = i32t(&ctx, &[ctx.len()]);
    let tt = i32t(&tables, &[case.seqs.len(), max_blocks]);
    let mut out =
        Tensor::from_f32_cpu(&[t_total, h * hd], &vec![f32::NAN; t_total * h * hd]).unwrap();
    let scale = 1.0 / (hd as f32).sqrt();
    let params = AttentionParams {
        n_heads: h,
        n_kv_heads: kv,
        head_dim: hd,
        scale,
        sliding_window: case.window,
        softcap: case.softcap,
    };
    let meta = PagedAttentionMeta {
        query_start: &st,
        context_lens: &ct,
        block_tables: &tt,
        num_seqs: case.seqs.len(),
        block_size: bs,
    };
    device
        .paged_attention(&qt, &kt, &vt, &meta, &params, &mut out)
        .unwrap();
    let got = out.as_f32().unwrap();

    let mut worst = 0f64;
    let group = h / kv;
    let mut t = 0usize;
    for (s, &(q_len, c)) in case.seqs.iter().enumerate() {
        for i in 0..q_len {
            let pos = c - q_len + i;
            let lo = match case.window {
                Some(w) if pos + 1 > w => pos + 1 - w,
                _ => 0,
            };
            for head in 0..h {
                let kvh = head / group;
                let qv = &q[(t * h + head) * hd..(t * h + head + 1) * hd];
                let at = |kp: usize, cache: &[f32]| {
                    let b = tables[s * max_blocks + kp / bs] as usize;
                    let base = ((b * kv + kvh) * bs + kp % bs) * hd;
                    cache[base..base + hd]
                        .iter()
                        .map(|&x| x as f64)
                        .collect::<Vec<f64>>()
                };
                let scores: Vec<f64> = (lo..=pos)
                    .map(|kp| {
                        let mut sc = at(kp, &kc)
                            .iter()
                            .zip(qv)
                            .map(|(a, b)| a * *b as f64)
                            .sum::<f64>()
                            * scale as f64;
                        if let Some(cap) = case.softcap {
                            sc = cap as f64 * (sc / cap as f64).tanh();
                        }
                        sc
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - mx).exp()).sum();
                let mut o = vec![0f64; hd];
                for (idx, kp) in (lo..=pos).enumerate() {
                    let w = (scores[idx] - mx).exp() / z;
                    for (d, v) in at(kp, &vc).iter().enumerate() {
                        o[d] += w * v;
                    }
                }
                for d in 0..hd {
                    let g = got[(t * h + head) * hd + d] as f64;
                    assert!(g.is_finite(), "unwritten output at row {t} head {head}");
                    worst = worst.max((g - o[d]).abs());
                }
            }
            t += 1;
        }
    }
    worst
}

fn devices() -> Vec<(String, Device)> {
    let mut out = vec![(
        "scalar".to_string(),
        Device::Cpu(Arc::new(CpuBackend::with_features(2, CpuFeatures::none()))),
    )];
    let det = CpuFeatures::detect_capped(None);
    if det.has_avx2() {
        out.push((
            "avx2".into(),
            Device::Cpu(Arc::new(CpuBackend::with_features(
                2,
                CpuFeatures::detect_capped(Some("avx2")),
            ))),
        ));
    }
    if det.avx512f {
        out.push((
            "avx512".into(),
            Device::Cpu(Arc::new(CpuBackend::with_features(2, det))),
        ));
    }
    out
}

#[test]
fn paged_attention_matches_naive_reference() {
    let cases = [
        Case {
            n_heads: 9,
            n_kv: 3,
            hd: 64,
            block_size: 16,
            window: None,
            softcap: None,
            seqs: vec![(1, 37), (17, 17), (5, 100), (1, 1)],
        },
        Case {
            n_heads: 4,
            n_kv: 1,
            hd: 256,
            block_size: 16,
            window: Some(7),
            softcap: None,
            seqs: vec![(12, 30), (1, 64)],
        },
        Case {
            n_heads: 6,
            n_kv: 6,
            hd: 24,
            block_size: 5,
            window: None,
            softcap: Some(20.0),
            seqs: vec![(33, 70), (1, 3), (2, 2)],
        },
        Case {
            n_heads: 8,
            n_kv: 2,
            hd: 19,
            block_size: 1,
            window: Some(1),
            softcap: None,
            seqs: vec![(3, 9), (1, 40)],
        },
    ];
    for (name, dev) in devices() {
        for (i, c) in cases.iter().enumerate() {
            let err = run_case(c, &dev, 100 + i as u64);
            println!("{name} case {i}: max abs error {err:.2e}");
            assert!(err < 1e-4, "{name} case {i}: max abs error {err}");
        }
    }
}
