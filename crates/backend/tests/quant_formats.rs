//! Block formats: known bytes, quantize/dequantize round trips with error bounds, and
//! K-quant blocks packed by ggml's packing code read back by our dequantizers.
// Index loops read best here: element i of several arrays (input, output, expectation).
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use half::f16;
use sluice_backend::quant::{self, blocks};
use sluice_backend::DType;

fn f16r(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

#[test]
fn q4_0_known_bytes() {
    // x = i - 16: max |x| is x[0] = -16, so d = -16 / -8 = 2 and q = floor((i + 1) / 2)
    // (x[31] = 15 clamps to 15).
    let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
    let mut b = [0u8; 18];
    quant::quantize_row(DType::Q4_0, &x, &mut b).unwrap();
    assert_eq!(&b[..2], &f16::from_f32(2.0).to_le_bytes());
    for j in 0..16usize {
        let (q0, q1) = (j.div_ceil(2), (j + 16).div_ceil(2).min(15));
        assert_eq!(b[2 + j], (q0 | (q1 << 4)) as u8, "byte {j}");
    }
    let mut y = [0f32; 32];
    quant::dequantize_row(DType::Q4_0, &b, &mut y).unwrap();
    for i in 0..32usize {
        let q = i.div_ceil(2).min(15) as f32;
        assert_eq!(y[i], (q - 8.0) * 2.0);
    }
}

#[test]
fn q5_0_known_bytes() {
    // x = i - 16: d = -16 / -16 = 1, q = i; fifth bits set for i >= 16.
    let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
    let mut b = [0u8; 22];
    quant::quantize_row(DType::Q5_0, &x, &mut b).unwrap();
    assert_eq!(&b[..2], &f16::from_f32(1.0).to_le_bytes());
    assert_eq!(&b[2..6], &0xFFFF_0000u32.to_le_bytes());
    for j in 0..16 {
        assert_eq!(b[6 + j], (j | (j << 4)) as u8);
    }
    let mut y = [0f32; 32];
    quant::dequantize_row(DType::Q5_0, &b, &mut y).unwrap();
    assert_eq!(y.to_vec(), x);
}

#[test]
fn q4_1_and_q5_1_known_bytes() {
    // x = i / 2 in [0, 15.5]: Q4_1 d = 15.5 / 15, m = 0; Q5_1 d = 0.5, q = i exactly.
    let x: Vec<f32> = (0..32).map(|i| i as f32 * 0.5).collect();
    let mut b = [0u8; 24];
    quant::quantize_row(DType::Q5_1, &x, &mut b).unwrap();
    assert_eq!(&b[..2], &f16::from_f32(0.5).to_le_bytes());
    assert_eq!(&b[2..4], &f16::from_f32(0.0).to_le_bytes());
    assert_eq!(&b[4..8], &0xFFFF_0000u32.to_le_bytes());
    for j in 0..16 {
        assert_eq!(b[8 + j], (j | (j << 4)) as u8);
    }
    let mut y = [0f32; 32];
    quant::dequantize_row(DType::Q5_1, &b, &mut y).unwrap();
    assert_eq!(y.to_vec(), x);

    let mut b = [0u8; 20];
    quant::quantize_row(DType::Q4_1, &x, &mut b).unwrap();
    let d = 15.5f32 / 15.0;
    assert_eq!(&b[..2], &f16::from_f32(d).to_le_bytes());
    quant::dequantize_row(DType::Q4_1, &b, &mut y).unwrap();
    for i in 0..32 {
        let q = ((x[i] * (1.0 / d) + 0.5) as u32).min(15);
        assert_eq!(
            b[4 + i % 16] >> (4 * (i / 16)) & 0xF,
            q as u8,
            "element {i}"
        );
        assert_eq!(y[i], q as f32 * f16r(d));
    }
}

#[test]
fn q8_0_q8_1_known_bytes() {
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.0) * 0.25).collect();
    // amax = 16 * 0.25 = 4 at i = 31: d = 4 / 127, q = round(x / d).
    let d = 4.0f32 / 127.0;
    let mut b = [0u8; 34];
    quant::quantize_row(DType::Q8_0, &x, &mut b).unwrap();
    assert_eq!(&b[..2], &f16::from_f32(d).to_le_bytes());
    let mut sum = 0i32;
    for i in 0..32 {
        let q = (x[i] * (1.0 / d)).round() as i8;
        assert_eq!(b[2 + i] as i8, q);
        sum += q as i32;
    }
    let mut b1 = [0u8; 36];
    quant::quantize_row(DType::Q8_1, &x, &mut b1).unwrap();
    assert_eq!(&b1[..2], &b[..2]);
    assert_eq!(&b1[2..4], &f16::from_f32(sum as f32 * d).to_le_bytes());
    assert_eq!(&b1[4..], &b[2..]);
}

/// Round trip of a 32-wide format on random rows: every element within its bound.
fn round_trip(dtype: DType, seed: u64) {
    let mut r = rng(seed);
    let n = 32 * 40;
    for scale in [1e-3f32, 1.0, 300.0] {
        let mut x = randn_vec(&mut r, n, scale);
        // A constant block and an all-zero block exercise the d == 0 paths.
        x[64..96].fill(0.0);
        x[96..128].fill(0.5 * scale);
        let mut b = vec![0u8; dtype.bytes_for(n).unwrap()];
        quant::quantize_row(dtype, &x, &mut b).unwrap();
        let mut y = vec![0f32; n];
        quant::dequantize_row(dtype, &b, &mut y).unwrap();
        for (blk, (xb, yb)) in x.chunks_exact(32).zip(y.chunks_exact(32)).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (min, max) = xb
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            for (i, (&xv, &yv)) in xb.iter().zip(yb).enumerate() {
                // d as computed and as stored (f16); q * d16 vs x.
                let tol = match dtype {
                    DType::Q8_0 | DType::Q8_1 => {
                        let d = amax / 127.0;
                        0.5 * d + 127.0 * (d - f16r(d)).abs() + 1e-6 * amax
                    }
                    DType::Q4_0 | DType::Q5_0 => {
                        let lv = if dtype == DType::Q4_0 { 8.0 } else { 16.0 };
                        let d = amax / lv;
                        // The element opposite the max maps to +lv and clamps: one step.
                        let steps = if (xv / d).abs() > lv - 0.5 { 1.0 } else { 0.5 };
                        steps * d + 2.0 * lv * (d - f16r(d)).abs() + 1e-6 * amax
                    }
                    _ => {
                        let lv = if dtype == DType::Q4_1 { 15.0 } else { 31.0 };
                        let d = (max - min) / lv;
                        0.5 * d + lv * (d - f16r(d)).abs() + (min - f16r(min)).abs() + 1e-6 * amax
                    }
                };
                assert!(
                    (xv - yv).abs() <= tol,
                    "{dtype} scale {scale} block {blk} elem {i}: {xv} -> {yv} (tol {tol})"
                );
            }
        }
    }
}

#[test]
fn q4_0_round_trip() {
    round_trip(DType::Q4_0, 1);
}

#[test]
fn q4_1_round_trip() {
    round_trip(DType::Q4_1, 2);
}

#[test]
fn q5_0_round_trip() {
    round_trip(DType::Q5_0, 3);
}

#[test]
fn q5_1_round_trip() {
    round_trip(DType::Q5_1, 4);
}

#[test]
fn q8_0_round_trip() {
    round_trip(DType::Q8_0, 5);
}

#[test]
fn q8_1_round_trip_and_sums() {
    round_trip(DType::Q8_1, 6);
    let mut r = rng(7);
    let x = randn_vec(&mut r, 32 * 8, 2.0);
    let mut b = vec![0u8; DType::Q8_1.bytes_for(x.len()).unwrap()];
    quant::quantize_row(DType::Q8_1, &x, &mut b).unwrap();
    for (xb, blk) in x
        .chunks_exact(32)
        .zip(blocks::as_blocks::<blocks::BlockQ8_1>(&b).unwrap())
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
        assert_eq!(
            blk.s,
            f16::from_f32(sum as f32 * (amax / 127.0)).to_le_bytes()
        );
    }
}

#[test]
fn q8_k_round_trip_and_sums() {
    let mut r = rng(8);
    let mut x = randn_vec(&mut r, 256 * 6, 3.0);
    x[256..512].fill(0.0);
    let mut b = vec![0u8; DType::Q8_K.bytes_for(x.len()).unwrap()];
    quant::quantize_row(DType::Q8_K, &x, &mut b).unwrap();
    let mut y = vec![0f32; x.len()];
    quant::dequantize_row(DType::Q8_K, &b, &mut y).unwrap();
    for (sb, (xs, blk)) in x
        .chunks_exact(256)
        .zip(blocks::as_blocks::<blocks::BlockQ8K>(&b).unwrap())
        .enumerate()
    {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = blk.d().abs();
        assert!((d - amax / 127.0).abs() <= 1e-6 * amax, "sb {sb}");
        for g in 0..16 {
            let s: i32 = blk.qs[16 * g..16 * g + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(blk.bsum(g) as i32, s);
        }
        for i in 0..256 {
            let e = (xs[i] - y[256 * sb + i]).abs();
            assert!(
                e <= 0.5 * d * (1.0 + 1e-5) + 1e-30,
                "sb {sb} i {i}: {e} > {}",
                d / 2.0
            );
            assert!(blk.qs[i] != -128);
        }
    }
}

#[test]
fn k_quants_dequantize_hand_built_blocks() {
    let mut r = rng(9);
    for dtype in [
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ] {
        for trial in 0..50 {
            let d = 0.001 + trial as f32 * 0.013;
            let kl = KLogical::random(&mut r, dtype, 127, d, 0.5 * d);
            // Two blocks in a row to catch stride mistakes.
            let kl2 = KLogical::random(&mut r, dtype, 7, 2.0 * d, d);
            let mut bytes = kl.pack(dtype);
            bytes.extend(kl2.pack(dtype));
            assert_eq!(bytes.len(), 2 * dtype.block_bytes());
            let mut y = vec![0f32; 512];
            quant::dequantize_row(dtype, &bytes, &mut y).unwrap();
            for i in 0..256 {
                for (k, off) in [(&kl, 0), (&kl2, 256)] {
                    let want = k.value(dtype, i);
                    let got = y[off + i] as f64;
                    assert!(
                        (want - got).abs() <= 1e-6 * want.abs().max(1e-3),
                        "{dtype} trial {trial} elem {}: want {want} got {got}",
                        off + i
                    );
                }
            }
        }
    }
}

#[test]
fn k_quant_hand_values() {
    // Q4_K: sub-block j has scale j + 1 and min j; all quants 3; d = 0.5, dmin = 0.25.
    let kl = KLogical {
        q: [3; 256],
        sc: std::array::from_fn(|j| j as i32 + 1),
        mn: std::array::from_fn(|j| j as i32),
        d: 0.5,
        dmin: 0.25,
    };
    let b = kl.pack(DType::Q4_K);
    let mut y = [0f32; 256];
    quant::dequantize_row(DType::Q4_K, &b, &mut y).unwrap();
    for i in 0..256 {
        let j = (i / 32) as f32;
        assert_eq!(y[i], 0.5 * (j + 1.0) * 3.0 - 0.25 * j, "elem {i}");
    }
    // Q6_K: scales alternate 2 and -3, q = i % 64 - 32, d = 0.125.
    let kl = KLogical {
        q: std::array::from_fn(|i| (i % 64) as i32 - 32),
        sc: std::array::from_fn(|g| if g % 2 == 0 { 2 } else { -3 }),
        mn: [0; 16],
        d: 0.125,
        dmin: 0.0,
    };
    let b = kl.pack(DType::Q6_K);
    quant::dequantize_row(DType::Q6_K, &b, &mut y).unwrap();
    for i in 0..256 {
        let sc = if (i / 16) % 2 == 0 { 2.0 } else { -3.0 };
        assert_eq!(y[i], 0.125 * sc * ((i % 64) as f32 - 32.0), "elem {i}");
    }
}

#[test]
fn bad_lengths_are_errors() {
    let mut y = [0f32; 31];
    assert!(quant::dequantize_row(DType::Q4_0, &[0u8; 18], &mut y).is_err());
    let mut y = [0f32; 64];
    assert!(quant::dequantize_row(DType::Q4_0, &[0u8; 20], &mut y).is_err());
    assert!(quant::quantize_row(DType::Q2_K, &[0f32; 256], &mut [0u8; 84]).is_err());
    assert!(quant::dequantize_row(DType::I32, &[0u8; 4], &mut [0f32; 1]).is_err());
}

#[test]
fn float_formats_round_trip() {
    let mut r = rng(10);
    let x = randn_vec(&mut r, 100, 5.0);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let mut b = vec![0u8; dtype.bytes_for(100).unwrap()];
        quant::quantize_row(dtype, &x, &mut b).unwrap();
        let mut y = vec![0f32; 100];
        quant::dequantize_row(dtype, &b, &mut y).unwrap();
        let rel = match dtype {
            DType::F32 => 0.0,
            DType::F16 => 1.0 / 2048.0,
            _ => 1.0 / 256.0,
        };
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= rel * a.abs(), "{dtype}: {a} -> {b}");
        }
    }
}

/// K-quant quantizers: RMS error well within what the bit width allows (uniform data:
/// a step of about range / levels gives RMS step / sqrt(12)), every element within a
/// few steps of its sub-block, all-zero and constant super-blocks exact.
#[test]
fn k_quant_quantizers_round_trip() {
    let mut r = rng(11);
    for (dtype, max_rel_rms) in [
        (DType::Q4_K, 0.06),
        (DType::Q5_K, 0.032),
        (DType::Q6_K, 0.025),
    ] {
        for scale in [1e-3f32, 1.0, 50.0] {
            let n = 256 * 12;
            let mut x = randn_vec(&mut r, n, scale);
            // Skewed super-block, all-zero super-block, constant super-block.
            x[256..512]
                .iter_mut()
                .for_each(|v| *v = v.abs() + 0.5 * scale);
            x[512..768].fill(0.0);
            x[768..1024].fill(-0.25 * scale);
            let mut b = vec![0u8; dtype.bytes_for(n).unwrap()];
            quant::quantize_row(dtype, &x, &mut b).unwrap();
            let mut y = vec![0f32; n];
            quant::dequantize_row(dtype, &b, &mut y).unwrap();
            assert!(y[512..768].iter().all(|&v| v == 0.0), "{dtype}: zero block");
            let (mut se, mut sx) = (0f64, 0f64);
            for (sb, (xs, ys)) in x.chunks_exact(256).zip(y.chunks_exact(256)).enumerate() {
                let g = if dtype == DType::Q6_K { 16 } else { 32 };
                for (xg, yg) in xs.chunks_exact(g).zip(ys.chunks_exact(g)) {
                    let (lo, hi) = xg
                        .iter()
                        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                    let levels = match dtype {
                        DType::Q4_K => 15.0,
                        DType::Q5_K => 31.0,
                        _ => 63.0,
                    };
                    let span = if dtype == DType::Q6_K {
                        2.0 * lo.abs().max(hi.abs())
                    } else {
                        hi - lo.min(0.0)
                    };
                    let step = span / levels;
                    // Scales and mins are themselves 6/8-bit and f16: allow a small
                    // relative error on top of the steps.
                    let amax = lo.abs().max(hi.abs());
                    for (a, b) in xg.iter().zip(yg) {
                        let tol = 3.0 * step + 0.02 * amax + 1e-6 * scale;
                        assert!(
                            (a - b).abs() <= tol,
                            "{dtype} sb {sb}: {a} -> {b}, step {step}"
                        );
                    }
                }
                for (a, b) in xs.iter().zip(ys) {
                    se += ((a - b) as f64).powi(2);
                    sx += (*a as f64).powi(2);
                }
            }
            let rel = (se / sx).sqrt();
            assert!(
                rel < max_rel_rms,
                "{dtype} scale {scale}: relative RMS error {rel}"
            );
            println!("{dtype} scale {scale}: relative RMS error {rel:.4}");
        }
    }
}
