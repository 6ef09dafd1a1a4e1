//! Paged attention vs a naive f64 reference on random inputs: several sequences with
//! mixed query lengths (prefill chunks and decodes), scrambled block tables with large
//! block ids, GQA/MQA/MHA, sliding windows, softcapping, odd head dims, custom masks
//! among the new tokens, every KV cache dtype, every SIMD path.
//!
//! The reference reads the cache's *stored* values (dequantized), so the tolerance
//! measures the kernel's arithmetic; `quantized_cache_error_vs_f32` separately bounds
//! what the storage format itself costs against an f32 cache. The FP8 (E4M3, unscaled)
//! cache must also give bit for bit the output of an F32 cache holding the same
//! E4M3-rounded values (`fp8_cache_equals_f32_cache_of_rounded_values`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cpu::{CpuBackend, CpuFeatures};
use sluice_backend::quant::fp8::{e4m3_from_f32, e4m3_to_f32};
use sluice_backend::quant::{dequantize_row, quantize_row};
use sluice_backend::{AttentionParams, DType, Device, PagedAttentionMeta, Tensor};
use std::sync::Arc;

/// Max abs error of the kernel vs the f64 reference over the stored (dequantized) cache:
/// every dtype is converted exactly to f32 rows, so only f32 accumulation over a few
/// hundred keys remains (outputs are O(1)).
fn kernel_tolerance(_dtype: DType) -> f64 {
    1e-4
}

/// The KV cache dtypes attention reads.
const KV_DTYPES: [DType; 5] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::F8E4M3,
];

/// The dtypes with one element per block (any head_dim).
const PLAIN_KV_DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F8E4M3];

/// One cache row of `dtype` from f32 values. The FP8 cache has no scale, so its codes
/// are `e4m3(x)` (`quantize_row` refuses F8E4M3: its weights carry a scale).
fn encode_row(dtype: DType, src: &[f32], dst: &mut [u8]) {
    if dtype == DType::F8E4M3 {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = e4m3_from_f32(x);
        }
    } else {
        quantize_row(dtype, src, dst).unwrap();
    }
}

/// The values one cache row of `dtype` holds.
fn decode_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    if dtype == DType::F8E4M3 {
        for (d, &c) in dst.iter_mut().zip(src) {
            *d = e4m3_to_f32(c);
        }
    } else {
        dequantize_row(dtype, src, dst).unwrap();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MaskKind {
    /// No custom mask (causal).
    None,
    /// The lower-triangular causal matrix passed explicitly.
    Causal,
    /// Random bits (some rows may see no new key at all).
    Random,
}

#[derive(Clone)]
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

/// A cache of `dtype` holding `vals` rounded to it; returns the tensor and the values
/// it stores, as f32.
fn store(dtype: DType, shape: &[usize], vals: &[f32]) -> (Tensor, Vec<f32>) {
    let hd = shape[3];
    let row_bytes = dtype.row_bytes(hd);
    let mut bytes = vec![0u8; vals.len() / hd * row_bytes];
    let mut back = vec![0f32; vals.len()];
    for ((src, dst), b) in vals
        .chunks_exact(hd)
        .zip(bytes.chunks_exact_mut(row_bytes))
        .zip(back.chunks_exact_mut(hd))
    {
        encode_row(dtype, src, dst);
        decode_row(dtype, dst, b);
    }
    (Tensor::from_bytes_cpu(dtype, shape, &bytes).unwrap(), back)
}

struct Inputs {
    case: Case,
    num_blocks: usize,
    max_blocks: usize,
    kc: Vec<f32>,
    vc: Vec<f32>,
    q: Vec<f32>,
    tables: Vec<i32>,
    starts: Vec<i32>,
    ctx: Vec<i32>,
    /// Concatenated per-sequence `q_len x q_len` matrices (None = causal).
    mask: Option<Vec<i32>>,
}

fn inputs(case: &Case, mask: MaskKind, seed: u64) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let num_blocks = 300;
    let (h, kv, hd, bs) = (case.n_heads, case.n_kv, case.hd, case.block_size);
    let cache_len = num_blocks * kv * bs * hd;
    let mut uni =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect() };
    let kc = uni(cache_len);
    let vc = uni(cache_len);
    let t_total: usize = case.seqs.iter().map(|s| s.0).sum();
    let q = uni(t_total * h * hd);
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
    let mut starts = vec![0i32];
    for s in &case.seqs {
        starts.push(starts.last().unwrap() + s.0 as i32);
    }
    let ctx: Vec<i32> = case.seqs.iter().map(|s| s.1 as i32).collect();
    let mask = match mask {
        MaskKind::None => None,
        MaskKind::Causal | MaskKind::Random => {
            let mut m = Vec::new();
            for &(ql, _) in &case.seqs {
                for i in 0..ql {
                    for j in 0..ql {
                        m.push(match mask {
                            MaskKind::Causal => (j <= i) as i32,
                            // Any nonzero value means visible.
                            _ => rng.random_range(0..3) * (rng.random_range(0..2)),
                        });
                    }
                }
            }
            Some(m)
        }
    };
    Inputs {
        case: case.clone(),
        num_blocks,
        max_blocks,
        kc,
        vc,
        q,
        tables,
        starts,
        ctx,
        mask,
    }
}

fn i32t(v: &[i32], shape: &[usize]) -> Tensor {
    let mut t = Tensor::zeros_cpu(DType::I32, shape).unwrap();
    t.as_i32_mut().unwrap().copy_from_slice(v);
    t
}

fn params(c: &Case) -> AttentionParams {
    AttentionParams {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv,
        head_dim: c.hd,
        scale: 1.0 / (c.hd as f32).sqrt(),
        sliding_window: c.window,
        softcap: c.softcap,
    }
}

/// Runs the kernel with caches of `dtype`; returns its output and the stored K/V values.
fn run_kernel(inp: &Inputs, dtype: DType, device: &Device) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = &inp.case;
    let shape = [inp.num_blocks, c.n_kv, c.block_size, c.hd];
    let (kt, kvals) = store(dtype, &shape, &inp.kc);
    let (vt, vvals) = store(dtype, &shape, &inp.vc);
    let t_total = *inp.starts.last().unwrap() as usize;
    let row = c.n_heads * c.hd;
    let qt = Tensor::from_f32_cpu(&[t_total, row], &inp.q).unwrap();
    let st = i32t(&inp.starts, &[inp.starts.len()]);
    let ct = i32t(&inp.ctx, &[inp.ctx.len()]);
    let tt = i32t(&inp.tables, &[c.seqs.len(), inp.max_blocks]);
    let mt = inp.mask.as_ref().map(|m| i32t(m, &[m.len()]));
    // Poisoned, so an unwritten element fails.
    let mut out = Tensor::from_f32_cpu(&[t_total, row], &vec![f32::NAN; t_total * row]).unwrap();
    let meta = PagedAttentionMeta {
        query_start: &st,
        context_lens: &ct,
        block_tables: &tt,
        num_seqs: c.seqs.len(),
        block_size: c.block_size,
        custom_mask: mt.as_ref(),
    };
    device
        .paged_attention(&qt, &kt, &vt, &meta, &params(c), &mut out)
        .unwrap();
    (out.as_f32().unwrap().to_vec(), kvals, vvals)
}

/// The naive f64 reference over caches `kc`/`vc` (f32 values in the cache layout).
fn reference(inp: &Inputs, kc: &[f32], vc: &[f32]) -> Vec<f64> {
    let c = &inp.case;
    let (h, kv, hd, bs) = (c.n_heads, c.n_kv, c.hd, c.block_size);
    let scale = params(c).scale as f64;
    let group = h / kv;
    let t_total = *inp.starts.last().unwrap() as usize;
    let mut out = vec![0f64; t_total * h * hd];
    let mut t = 0usize;
    let mut mask_off = 0usize;
    for (s, &(q_len, ctx)) in c.seqs.iter().enumerate() {
        let new_start = ctx - q_len;
        for i in 0..q_len {
            let pos = new_start + i;
            let lo = match c.window {
                Some(w) if pos + 1 > w => pos + 1 - w,
                _ => 0,
            };
            let visible: Vec<usize> = (lo..ctx)
                .filter(|&kp| match &inp.mask {
                    None => kp <= pos,
                    Some(m) => kp < new_start || m[mask_off + i * q_len + kp - new_start] != 0,
                })
                .collect();
            for head in 0..h {
                let kvh = head / group;
                let qv = &inp.q[(t * h + head) * hd..(t * h + head + 1) * hd];
                let at = |kp: usize, cache: &[f32]| -> Vec<f64> {
                    let b = inp.tables[s * inp.max_blocks + kp / bs] as usize;
                    let base = ((b * kv + kvh) * bs + kp % bs) * hd;
                    cache[base..base + hd].iter().map(|&x| x as f64).collect()
                };
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&kp| {
                        let mut sc = at(kp, kc)
                            .iter()
                            .zip(qv)
                            .map(|(a, b)| a * *b as f64)
                            .sum::<f64>()
                            * scale;
                        if let Some(cap) = c.softcap {
                            sc = cap as f64 * (sc / cap as f64).tanh();
                        }
                        sc
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - mx).exp()).sum();
                let o = &mut out[(t * h + head) * hd..(t * h + head + 1) * hd];
                for (idx, &kp) in visible.iter().enumerate() {
                    let w = (scores[idx] - mx).exp() / z;
                    for (d, v) in at(kp, vc).iter().enumerate() {
                        o[d] += w * v;
                    }
                }
            }
            t += 1;
        }
        mask_off += q_len * q_len;
    }
    out
}

fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .enumerate()
        .map(|(i, (&g, &w))| {
            assert!(g.is_finite(), "unwritten or non-finite output at {i}");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max)
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

fn cases() -> Vec<Case> {
    vec![
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
            hd: 96,
            block_size: 5,
            window: None,
            softcap: Some(20.0),
            seqs: vec![(33, 70), (1, 3), (2, 2)],
        },
        Case {
            n_heads: 8,
            n_kv: 2,
            hd: 32,
            block_size: 1,
            window: Some(1),
            softcap: None,
            seqs: vec![(3, 9), (1, 40)],
        },
    ]
}

/// Head dims that are not multiples of 32 (not Q8_0, which needs whole blocks).
fn odd_dim_cases() -> Vec<Case> {
    vec![
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
    ]
}

fn check(case: &Case, mask: MaskKind, dtype: DType, seed: u64, what: &str) {
    let inp = inputs(case, mask, seed);
    for (name, dev) in devices() {
        let (got, kvals, vvals) = run_kernel(&inp, dtype, &dev);
        let err = max_err(&got, &reference(&inp, &kvals, &vvals));
        let tol = kernel_tolerance(dtype);
        println!("{name} {dtype} {what} mask {mask:?}: max abs error {err:.2e}");
        assert!(
            err < tol,
            "{name} {dtype} {what} mask {mask:?}: {err} >= {tol}"
        );
    }
}

#[test]
fn paged_attention_matches_naive_reference() {
    for dtype in KV_DTYPES {
        for (i, c) in cases().iter().enumerate() {
            check(
                c,
                MaskKind::None,
                dtype,
                100 + i as u64,
                &format!("case {i}"),
            );
        }
    }
    for dtype in PLAIN_KV_DTYPES {
        for (i, c) in odd_dim_cases().iter().enumerate() {
            check(
                c,
                MaskKind::None,
                dtype,
                200 + i as u64,
                &format!("odd {i}"),
            );
        }
    }
}

#[test]
fn custom_mask_matches_naive_reference() {
    for dtype in KV_DTYPES {
        for (i, c) in cases().iter().enumerate() {
            check(
                c,
                MaskKind::Random,
                dtype,
                300 + i as u64,
                &format!("case {i}"),
            );
        }
    }
    for dtype in [DType::F32, DType::F8E4M3] {
        for (i, c) in odd_dim_cases().iter().enumerate() {
            check(
                c,
                MaskKind::Random,
                dtype,
                400 + i as u64,
                &format!("odd {i}"),
            );
        }
    }
}

/// A causal matrix passed as the custom mask gives exactly the unmasked result.
#[test]
fn causal_custom_mask_equals_no_mask() {
    for dtype in KV_DTYPES {
        for (i, c) in cases().iter().enumerate() {
            let plain = inputs(c, MaskKind::None, 500 + i as u64);
            let causal = inputs(c, MaskKind::Causal, 500 + i as u64);
            assert_eq!(plain.q, causal.q);
            for (name, dev) in devices() {
                let a = run_kernel(&plain, dtype, &dev).0;
                let b = run_kernel(&causal, dtype, &dev).0;
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{name} {dtype} case {i}: causal mask differs from no mask"
                );
            }
        }
    }
}

#[test]
fn custom_mask_of_wrong_length_is_an_error() {
    let c = &cases()[0];
    let mut inp = inputs(c, MaskKind::Causal, 7);
    if let Some(m) = inp.mask.as_mut() {
        m.pop();
    }
    let dev = &devices()[0].1;
    let shape = [inp.num_blocks, c.n_kv, c.block_size, c.hd];
    let (kt, _) = store(DType::F32, &shape, &inp.kc);
    let t_total = *inp.starts.last().unwrap() as usize;
    let row = c.n_heads * c.hd;
    let qt = Tensor::from_f32_cpu(&[t_total, row], &inp.q).unwrap();
    let st = i32t(&inp.starts, &[inp.starts.len()]);
    let ct = i32t(&inp.ctx, &[inp.ctx.len()]);
    let tt = i32t(&inp.tables, &[c.seqs.len(), inp.max_blocks]);
    let m = inp.mask.as_ref().unwrap();
    let mt = i32t(m, &[m.len()]);
    let mut out = Tensor::zeros_cpu(DType::F32, &[t_total, row]).unwrap();
    let meta = PagedAttentionMeta {
        query_start: &st,
        context_lens: &ct,
        block_tables: &tt,
        num_seqs: c.seqs.len(),
        block_size: c.block_size,
        custom_mask: Some(&mt),
    };
    let err = dev
        .paged_attention(&qt, &kt, &kt, &meta, &params(c), &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("custom mask"), "{err}");
}

/// What the storage format costs: attention over a quantized cache vs the f64
/// reference over the original f32 values (inputs uniform in [-1, 1]).
#[test]
fn quantized_cache_error_vs_f32() {
    // F16 keeps 11 significant bits, BF16 8, Q8_0 about 7 relative to the block max,
    // F8E4M3 4 (relative error up to 2^-4 per element; below 2^-6 an absolute 2^-10).
    let bound = |d: DType| match d {
        DType::F32 => 1e-4,
        DType::F16 => 2e-3,
        DType::BF16 => 1.5e-2,
        DType::F8E4M3 => F8_BOUND,
        _ => 3e-2,
    };
    for dtype in KV_DTYPES {
        for (i, c) in cases().iter().enumerate() {
            let inp = inputs(c, MaskKind::None, 600 + i as u64);
            let want = reference(&inp, &inp.kc, &inp.vc);
            let dev = &devices().pop().unwrap().1;
            let (got, _, _) = run_kernel(&inp, dtype, dev);
            let err = max_err(&got, &want);
            println!("{dtype} case {i}: max abs error vs f32 cache {err:.2e}");
            assert!(err < bound(dtype), "{dtype} case {i}: {err}");
        }
    }
}

/// kv_write stores each dtype within its rounding bound, at the right slots, and leaves
/// skipped (negative) slots and other rows untouched.
#[test]
fn kv_write_round_trips_every_dtype() {
    let (n_kv, hd, bs, num_blocks) = (3, 64, 5, 7);
    let row = n_kv * hd;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let slots: Vec<i32> = vec![33, -1, 0, 17, 34, 6, -1, 21];
    let t = slots.len();
    let k: Vec<f32> = (0..t * row)
        .map(|_| rng.random::<f32>() * 8.0 - 4.0)
        .collect();
    let v: Vec<f32> = (0..t * row)
        .map(|_| rng.random::<f32>() * 0.02 - 0.01)
        .collect();
    let kt = Tensor::from_f32_cpu(&[t, row], &k).unwrap();
    let vt = Tensor::from_f32_cpu(&[t, row], &v).unwrap();
    let st = i32t(&slots, &[t]);
    for dtype in KV_DTYPES {
        for (name, dev) in devices() {
            let shape = [num_blocks, n_kv, bs, hd];
            let mut kc = Tensor::zeros_cpu(dtype, &shape).unwrap();
            let mut vc = Tensor::zeros_cpu(dtype, &shape).unwrap();
            dev.kv_write(&kt, &vt, &mut kc, &mut vc, &st).unwrap();
            let rb = dtype.row_bytes(hd);
            for (cache, src) in [(&kc, &k), (&vc, &v)] {
                let bytes = cache.cpu_bytes().unwrap();
                let mut got = vec![0f32; hd];
                let mut written = 0usize;
                for r in 0..num_blocks * n_kv * bs {
                    let (b, h, off) = (r / (n_kv * bs), r / bs % n_kv, r % bs);
                    decode_row(dtype, &bytes[r * rb..(r + 1) * rb], &mut got);
                    let slot = (b * bs + off) as i32;
                    let Some(tok) = slots.iter().position(|&s| s == slot) else {
                        assert!(got.iter().all(|&x| x == 0.0), "{dtype}: stray write at {r}");
                        continue;
                    };
                    written += 1;
                    let want = &src[tok * row + h * hd..tok * row + (h + 1) * hd];
                    if dtype == DType::F8E4M3 {
                        // The codes themselves: e4m3(x), no scale.
                        let codes = &bytes[r * rb..(r + 1) * rb];
                        for (&c, &w) in codes.iter().zip(want) {
                            assert_eq!(c, e4m3_from_f32(w), "{name}: row {r}: {w}");
                        }
                    }
                    for (blk, (g, w)) in got.chunks(32).zip(want.chunks(32)).enumerate() {
                        let amax = w.iter().fold(0f32, |a, x| a.max(x.abs()));
                        for (&g, &w) in g.iter().zip(w) {
                            let bound = match dtype {
                                DType::F32 => 0.0,
                                DType::F16 => w.abs() * 2f32.powi(-11) + 6e-8,
                                DType::BF16 => w.abs() * 2f32.powi(-8),
                                // Half a step: 2^-4 relative when normal (|w| >= 2^-6),
                                // 2^-10 absolute among the subnormals.
                                DType::F8E4M3 => (w.abs() * 2f32.powi(-4)).max(2f32.powi(-10)),
                                // Half a quantization step, plus the f16 rounding of
                                // the scale (relative 2^-11) at the block max.
                                _ => amax / 127.0 * 0.5 + amax * 2f32.powi(-10),
                            };
                            assert!(
                                (g - w).abs() <= bound,
                                "{name} {dtype}: row {r} block {blk}: {g} vs {w}"
                            );
                        }
                    }
                }
                assert_eq!(written, 6 * n_kv, "{dtype}: rows written");
            }
        }
    }
    // A cache of a dtype attention cannot read is refused.
    let mut bad = Tensor::zeros_cpu(DType::Q4_0, &[2, n_kv, bs, hd]).unwrap();
    let mut bad_v = Tensor::zeros_cpu(DType::Q4_0, &[2, n_kv, bs, hd]).unwrap();
    let dev = &devices()[0].1;
    assert!(dev.kv_write(&kt, &vt, &mut bad, &mut bad_v, &st).is_err());
}

/// Largest attention error of the FP8 cache vs an exact f32 cache, inputs in [-1, 1].
/// One element in [0.5, 1) is off by up to half its step, 2^-5 = 0.031, which a row that
/// sees a single key (case 3, window 1) passes straight through (measured 3.1e-2; 2.3 to
/// 3.2e-2 in the other cases); the bound leaves room for the scores' rounding on top.
/// Truncating instead of rounding would err by up to 2^-4.
const F8_BOUND: f64 = 0.05;

/// Values over E4M3's whole range: magnitudes 2^-12 (below the smallest subnormal)
/// to 2^`max_exp`, so with `max_exp` > 8 some saturate at ±448, and a few exact ties.
fn wide_values(rng: &mut ChaCha8Rng, n: usize, max_exp: i32) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 97 {
            0 => 1.0625,                // tie between 1 and 1.125: rounds to 1
            1 => -3.0 * 2f32.powi(-10), // subnormal tie: rounds to -2^-8
            2 => 1e6,                   // saturates
            _ => {
                let e = rng.random_range(-12..=max_exp);
                (rng.random::<f32>() * 2.0 - 1.0) * 2f32.powi(e)
            }
        })
        .collect()
}

/// Attention over an F8E4M3 cache equals, bit for bit, attention over an F32 cache
/// holding the same E4M3-rounded values: the kernel's only FP8 work is the exact decode.
/// Odd shapes, GQA/MQA/MHA, prefill chunks with decodes, scrambled large block ids,
/// windows, softcapping, random masks, every SIMD path.
#[test]
fn fp8_cache_equals_f32_cache_of_rounded_values() {
    let all: Vec<Case> = cases().into_iter().chain(odd_dim_cases()).collect();
    let (mut saturated, mut subnormal) = (0usize, 0usize);
    for (i, c) in all.iter().enumerate() {
        for mask in [MaskKind::None, MaskKind::Random] {
            let mut inp = inputs(c, mask, 700 + i as u64);
            let mut rng = ChaCha8Rng::seed_from_u64(800 + i as u64);
            // Keys up to 2 (scores stay O(10)), values up to 2^10 (beyond 448).
            inp.kc = wide_values(&mut rng, inp.kc.len(), 1);
            inp.vc = wide_values(&mut rng, inp.vc.len(), 10);
            for (name, dev) in devices() {
                let (got, kvals, vvals) = run_kernel(&inp, DType::F8E4M3, &dev);
                for v in kvals.iter().chain(&vvals) {
                    saturated += (v.abs() == 448.0) as usize;
                    subnormal += (*v != 0.0 && v.abs() < 2f32.powi(-6)) as usize;
                }
                let rounded = Inputs {
                    kc: kvals,
                    vc: vvals,
                    ..inputs(c, mask, 700 + i as u64)
                };
                assert_eq!(rounded.q, inp.q);
                let (want, _, _) = run_kernel(&rounded, DType::F32, &dev);
                let differ = got
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| !a.is_finite() || a.to_bits() != b.to_bits())
                    .count();
                println!("{name} case {i} mask {mask:?}: {differ} outputs differ");
                assert_eq!(differ, 0, "{name} case {i} mask {mask:?}");
            }
        }
    }
    // The inputs did reach E4M3's edges.
    assert!(
        saturated > 100 && subnormal > 100,
        "{saturated} {subnormal}"
    );
}

/// kv_write to an FP8 cache: round to nearest even, saturate at ±448, keep -0.
#[test]
fn kv_write_fp8_rounds_and_saturates() {
    let vals = [
        1.0625, // tie: 1.0 (even)
        1.1875, // tie: 1.25 (even)
        448.0,
        460.0, // above 448: saturates (464 would be the tie to the NaN code 480)
        -1e9,
        f32::INFINITY,
        3.0 * 2f32.powi(-10), // subnormal tie: 2^-8
        2f32.powi(-10),       // tie with 0: 0
        -0.0,
        0.3,
        -17.0, // tie between 16 and 18: 16 (even)
        2f32.powi(-6),
        -2f32.powi(-9),
        100.0,   // tie between 96 and 104: 96 (even)
        -0.0009, // below half of 2^-9: -0
        1e-30,
    ];
    let want: [u8; 16] = [
        0x38, 0x3a, 0x7e, 0x7e, 0xfe, 0x7e, 0x02, 0x00, 0x80, 0x2a, 0xd8, 0x08, 0x81, 0x6c, 0x80,
        0x00,
    ];
    let (n_kv, hd, bs) = (1, 16, 4);
    let k = Tensor::from_f32_cpu(&[1, 16], &vals).unwrap();
    let v: Vec<f32> = vals.iter().map(|x| -x).collect();
    let v = Tensor::from_f32_cpu(&[1, 16], &v).unwrap();
    let st = i32t(&[6], &[1]);
    for (name, dev) in devices() {
        let shape = [3, n_kv, bs, hd];
        let mut kc = dev.zeros(DType::F8E4M3, &shape).unwrap();
        let mut vc = dev.zeros(DType::F8E4M3, &shape).unwrap();
        dev.kv_write(&k, &v, &mut kc, &mut vc, &st).unwrap();
        let (kb, vb) = (kc.cpu_bytes().unwrap(), vc.cpu_bytes().unwrap());
        // Slot 6 = block 1, offset 2: row 6 of 12.
        assert_eq!(&kb[6 * hd..7 * hd], &want[..], "{name}");
        let neg: Vec<u8> = want.iter().map(|c| c ^ 0x80).collect();
        assert_eq!(&vb[6 * hd..7 * hd], &neg[..], "{name}");
        assert!(kb[..6 * hd].iter().chain(&kb[7 * hd..]).all(|&b| b == 0));
        assert!(vb[..6 * hd].iter().chain(&vb[7 * hd..]).all(|&b| b == 0));
    }
}
