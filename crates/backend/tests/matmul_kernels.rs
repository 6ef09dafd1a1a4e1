//! Matmul kernels against an f64 reference, for every weight type on every SIMD path
//! this CPU has (scalar, AVX2, AVX-512 VNNI), odd shapes, poisoned outputs; plus exact
//! agreement of all paths on inputs where the integer math is the whole story.

mod common;

use common::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_backend::cpu::simd::Isa;
use sluice_backend::cpu::{matmul, CpuBackend, CpuFeatures};
use sluice_backend::quant::blocks::f16_bytes;
use sluice_backend::{DType, Tensor};

fn backend(isa: Isa, threads: usize) -> CpuBackend {
    CpuBackend::with_features(threads, isa.cap(CpuFeatures::detect_capped(None)))
}

/// Runs the matmul with the output poisoned (NaN) first.
fn run(
    cpu: &CpuBackend,
    dtype: DType,
    w: &[u8],
    m: usize,
    k: usize,
    x: &[f32],
    t: usize,
) -> Vec<f32> {
    let xt = Tensor::from_f32_cpu(&[t, k], x).unwrap();
    let wt = Tensor::from_bytes_cpu(dtype, &[m, k], w).unwrap();
    let mut out = Tensor::from_f32_cpu(&[t, m], &vec![f32::NAN; t * m]).unwrap();
    cpu.matmul(&xt, &wt, &mut out).unwrap();
    out.as_f32().unwrap().to_vec()
}

/// Block of the activation quantization a weight type is paired with (0: none).
fn act_block(dtype: DType) -> usize {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => 0,
        d => d.block_size(),
    }
}

/// Checks `got` against the f64 reference. For quantized weights the activation
/// quantization error is bounded exactly: with two int8 terms per element (see
/// `simd::acts`) each activation moves by at most `d / 512` for its block's
/// `d = amax / 127` (`d / 256` when the residual rounds to exactly 128 and is clamped),
/// so `|sum w (x - x_q)| <= sum_blocks d / 256 * sum |w|`; on top, `3e-5` of
/// `sum |w x|` for f32 accumulation.
#[allow(clippy::too_many_arguments)]
fn check(dtype: DType, isa: Isa, wd: &[f64], x: &[f32], t: usize, m: usize, k: usize, got: &[f32]) {
    let ab = act_block(dtype);
    for ti in 0..t {
        let xr = &x[ti * k..(ti + 1) * k];
        for r in 0..m {
            let wr = &wd[r * k..(r + 1) * k];
            let want: f64 = wr.iter().zip(xr).map(|(w, x)| w * *x as f64).sum();
            let abs: f64 = wr.iter().zip(xr).map(|(w, x)| (w * *x as f64).abs()).sum();
            let mut tol = 3e-5 * abs + 1e-6;
            if ab > 0 {
                for (wb, xb) in wr.chunks(ab).zip(xr.chunks(ab)) {
                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                    let wsum: f64 = wb.iter().map(|w| w.abs()).sum();
                    tol += amax / 127.0 / 256.0 * (1.0 + 1e-3) * wsum;
                }
            }
            let g = got[ti * m + r] as f64;
            assert!(
                (g - want).abs() <= tol,
                "{dtype} on {} t={ti}/{t} r={r}/{m} k={k}: got {g}, want {want} (tol {tol})",
                isa.name()
            );
        }
    }
}

fn ks_for(dtype: DType) -> &'static [usize] {
    match act_block(dtype) {
        0 => &[1, 17, 64, 100],
        32 => &[32, 96, 128, 160, 256, 448, 576, 640],
        _ => &[256, 768, 1024],
    }
}

#[test]
fn matmul_matches_reference_every_type_and_path() {
    let isas = Isa::available();
    let cpus: Vec<(Isa, CpuBackend)> = isas.iter().map(|&i| (i, backend(i, 2))).collect();
    println!(
        "paths: {:?}",
        isas.iter().map(|i| i.name()).collect::<Vec<_>>()
    );
    let mut r = rng(100);
    for dtype in WEIGHT_TYPES {
        for &k in ks_for(dtype) {
            for m in [1usize, 7, 33, 129] {
                let w = random_weight(&mut r, dtype, m, k);
                let wd = dequant_f64(dtype, &w, m, k);
                for t in [1usize, 2, 3, 5, 8, 17] {
                    let mut x = randn_vec(&mut r, t * k, 2.0);
                    // Rows of very different magnitudes and an all-zero block.
                    if t > 1 {
                        x[k..2 * k].iter_mut().for_each(|v| *v *= 1e-3);
                    }
                    if k >= 64 {
                        x[..32].fill(0.0);
                    }
                    for (isa, cpu) in &cpus {
                        let got = run(cpu, dtype, &w, m, k, &x, t);
                        check(dtype, *isa, &wd, &x, t, m, k, &got);
                    }
                }
            }
        }
    }
}

/// Activations whose Q8 quantization is exact: per 32 elements one `±127 * 2^-3`, the
/// others small multiples of `2^-3` (so `d = 2^-3`, `q = x * 8` for blocks of 32 or
/// 256).
fn dyadic_acts(r: &mut ChaCha8Rng, t: usize, k: usize) -> Vec<f32> {
    let block = 32;
    let mut x = vec![0f32; t * k];
    for row in x.chunks_exact_mut(block) {
        for v in row.iter_mut() {
            *v = r.random_range(-3..=3) as f32 * 0.125;
        }
        let at = r.random_range(0..block);
        row[at] = if r.random::<bool>() { 127.0 } else { -127.0 } * 0.125;
    }
    x
}

/// Weights with power-of-two scales and small integer mins.
fn dyadic_weight(r: &mut ChaCha8Rng, dtype: DType, m: usize, k: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(m * dtype.row_bytes(k));
    for _ in 0..m * k / dtype.block_size() {
        match dtype {
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
                let kl = KLogical::random(r, dtype, 7, 1.0 / 64.0, 1.0 / 32.0);
                out.extend(kl.pack(dtype));
            }
            _ => {
                let d = f16_bytes(1.0 / 16.0);
                let mn = f16_bytes(r.random_range(-15..=15) as f32 / 16.0);
                let nib: Vec<u8> = (0..16).map(|_| r.random::<u8>()).collect();
                let qh: [u8; 4] = r.random();
                match dtype {
                    DType::Q4_0 => out.extend(d.iter().chain(&nib)),
                    DType::Q4_1 => out.extend(d.iter().chain(&mn).chain(&nib)),
                    DType::Q5_0 => out.extend(d.iter().chain(&qh).chain(&nib)),
                    DType::Q5_1 => out.extend(d.iter().chain(&mn).chain(&qh).chain(&nib)),
                    DType::Q8_0 => {
                        out.extend(d);
                        out.extend((0..32).map(|_| r.random_range(-127i8..=127) as u8));
                    }
                    other => panic!("{other}"),
                }
            }
        }
    }
    out
}

#[test]
fn all_paths_agree_exactly_on_dyadic_inputs() {
    let isas = Isa::available();
    let cpus: Vec<(Isa, CpuBackend)> = isas.iter().map(|&i| (i, backend(i, 2))).collect();
    let mut r = rng(200);
    for dtype in WEIGHT_TYPES.into_iter().filter(|d| d.is_quantized()) {
        let ks: &[usize] = if dtype.block_size() == 32 {
            &[32, 96, 160]
        } else {
            &[256, 768]
        };
        for &k in ks {
            let m = 19;
            let w = dyadic_weight(&mut r, dtype, m, k);
            let wd = dequant_f64(dtype, &w, m, k);
            for t in [1usize, 3, 8, 9] {
                let x = dyadic_acts(&mut r, t, k);
                for (isa, cpu) in &cpus {
                    let got = run(cpu, dtype, &w, m, k, &x, t);
                    for ti in 0..t {
                        for ri in 0..m {
                            let want: f64 =
                                (0..k).map(|i| wd[ri * k + i] * x[ti * k + i] as f64).sum();
                            assert_eq!(want as f32 as f64, want, "test data must be exact in f32");
                            assert_eq!(
                                got[ti * m + ri],
                                want as f32,
                                "{dtype} on {} k={k} t={ti} r={ri}",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let mut r = rng(300);
    for isa in Isa::available() {
        let (one, three) = (backend(isa, 1), backend(isa, 3));
        for dtype in [
            DType::F16,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q6_K,
        ] {
            let k = if dtype.block_size() == 256 { 512 } else { 96 };
            let (m, t) = (37, 6);
            let w = random_weight(&mut r, dtype, m, k);
            let x = randn_vec(&mut r, t * k, 1.0);
            let a = run(&one, dtype, &w, m, k, &x, t);
            let b = run(&three, dtype, &w, m, k, &x, t);
            assert_eq!(a, b, "{dtype} on {}", isa.name());
        }
    }
}

#[test]
fn activation_scratch_is_reused() {
    let cpu = CpuBackend::new(Some(2));
    let mut r = rng(400);
    let (m, k) = (16, 512);
    let w = random_weight(&mut r, DType::Q4_K, m, k);
    let wt = Tensor::from_bytes_cpu(DType::Q4_K, &[m, k], &w).unwrap();
    let x = Tensor::from_f32_cpu(&[8, k], &randn_vec(&mut r, 8 * k, 1.0)).unwrap();
    let mut out = Tensor::zeros_cpu(DType::F32, &[8, m]).unwrap();
    cpu.matmul(&x, &wt, &mut out).unwrap();
    let cap = matmul::scratch_capacity(&cpu);
    assert!(cap > 0);
    for t in [8usize, 1, 5, 8] {
        let x = Tensor::from_f32_cpu(&[t, k], &randn_vec(&mut r, t * k, 1.0)).unwrap();
        let mut out = Tensor::zeros_cpu(DType::F32, &[t, m]).unwrap();
        cpu.matmul(&x, &wt, &mut out).unwrap();
        assert_eq!(matmul::scratch_capacity(&cpu), cap, "t={t} reallocated");
    }
}

#[test]
fn bad_shapes_and_types_are_errors() {
    let cpu = CpuBackend::new(Some(2));
    let x = Tensor::zeros_cpu(DType::F32, &[2, 64]).unwrap();
    let w = Tensor::zeros_cpu(DType::Q8_0, &[8, 64]).unwrap();
    let mut out = Tensor::zeros_cpu(DType::F32, &[2, 8]).unwrap();
    assert!(cpu.matmul(&x, &w, &mut out).is_ok());
    let mut bad_out = Tensor::zeros_cpu(DType::F32, &[2, 9]).unwrap();
    assert!(cpu.matmul(&x, &w, &mut bad_out).is_err());
    let mut bad_rows = Tensor::zeros_cpu(DType::F32, &[3, 8]).unwrap();
    assert!(cpu.matmul(&x, &w, &mut bad_rows).is_err());
    let w96 = Tensor::zeros_cpu(DType::Q8_0, &[8, 96]).unwrap();
    assert!(cpu.matmul(&x, &w96, &mut out).is_err());
    for dtype in [DType::I32, DType::Q8_1, DType::Q8_K] {
        let w = Tensor::zeros_cpu(dtype, &[8, 256]).unwrap();
        let x = Tensor::zeros_cpu(DType::F32, &[2, 256]).unwrap();
        assert!(cpu.matmul(&x, &w, &mut out).is_err(), "{dtype}");
    }
    let xi = Tensor::zeros_cpu(DType::I32, &[2, 64]).unwrap();
    assert!(cpu.matmul(&xi, &w, &mut out).is_err());
}

#[test]
fn mapped_weights_at_odd_offsets() {
    let mut r = rng(500);
    let dir = std::env::temp_dir();
    for dtype in [
        DType::Q4_0,
        DType::Q8_0,
        DType::Q5_1,
        DType::Q3_K,
        DType::F16,
    ] {
        let k = if dtype.block_size() == 256 { 512 } else { 160 };
        let (m, t) = (13, 3);
        let w = random_weight(&mut r, dtype, m, k);
        let x = randn_vec(&mut r, t * k, 1.0);
        let path = dir.join(format!(
            "sluice-matmul-test-{}-{dtype}.bin",
            std::process::id()
        ));
        let offset = 13;
        let mut file = vec![0xAAu8; offset];
        file.extend_from_slice(&w);
        std::fs::write(&path, &file).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: the file is ours and nobody modifies it while mapped.
        let map = std::sync::Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
        let wt = Tensor::mapped_cpu(dtype, &[m, k], map, offset).unwrap();
        for isa in Isa::available() {
            let cpu = backend(isa, 2);
            let xt = Tensor::from_f32_cpu(&[t, k], &x).unwrap();
            let mut out = Tensor::from_f32_cpu(&[t, m], &vec![f32::NAN; t * m]).unwrap();
            cpu.matmul(&xt, &wt, &mut out).unwrap();
            assert_eq!(
                out.as_f32().unwrap(),
                run(&cpu, dtype, &w, m, k, &x, t).as_slice(),
                "{dtype}"
            );
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// Batch invariance: a token's output row is bit-identical whether it is multiplied
/// alone (GEMV) or inside batches of any size and position (GEMM tiles of 8, 4, 2 and
/// tails). Activation quantization is per row and every tile does the same operations
/// in the same order per (row, token), so scheduling cannot change greedy results.
#[test]
fn rows_do_not_depend_on_batch_composition() {
    let mut r = rng(600);
    for isa in Isa::available() {
        let cpu = backend(isa, 2);
        for dtype in WEIGHT_TYPES {
            let k = match act_block(dtype) {
                0 => 100,
                32 => 576,
                _ => 512,
            };
            let m = 37;
            let w = random_weight(&mut r, dtype, m, k);
            let t = 19;
            let x = randn_vec(&mut r, t * k, 1.0);
            let batch = run(&cpu, dtype, &w, m, k, &x, t);
            for ti in [0usize, 7, 8, 17, 18] {
                let alone = run(&cpu, dtype, &w, m, k, &x[ti * k..(ti + 1) * k], 1);
                assert_eq!(
                    alone.as_slice(),
                    &batch[ti * m..(ti + 1) * m],
                    "{dtype} on {} token {ti}",
                    isa.name()
                );
            }
            // A window of 3 tokens starting mid-batch (tiles of 2 + tail of 1).
            let part = run(&cpu, dtype, &w, m, k, &x[5 * k..8 * k], 3);
            assert_eq!(
                part.as_slice(),
                &batch[5 * m..8 * m],
                "{dtype} on {} window",
                isa.name()
            );
        }
    }
}

/// `Device::load_weights_stacked` on the CPU: the stacked matrix multiplies like its
/// parts side by side (same dtype), and parts of different dtypes are refused.
#[test]
fn stacked_weights_multiply_like_their_parts() {
    let dev = sluice_backend::Device::cpu(Some(2));
    let mut r = rng(17);
    let (t, k) = (3usize, 64usize);
    let make = |r: &mut ChaCha8Rng, dtype: DType, m: usize| {
        let vals: Vec<f32> = (0..m * k).map(|_| r.random_range(-1.0..1.0)).collect();
        let mut bytes = vec![0u8; dtype.row_bytes(k) * m];
        sluice_backend::quant::quantize_row(dtype, &vals, &mut bytes).unwrap();
        Tensor::from_bytes_cpu(dtype, &[m, k], &bytes).unwrap()
    };
    let parts: Vec<Tensor> = [24usize, 8, 8]
        .iter()
        .map(|&m| make(&mut r, DType::Q8_0, m))
        .collect();
    let x: Vec<f32> = (0..t * k).map(|_| r.random_range(-1.0..1.0)).collect();
    let xt = Tensor::from_f32_cpu(&[t, k], &x).unwrap();
    let mut want = Vec::new();
    let mut outs = Vec::new();
    for p in &parts {
        let mut o = dev.zeros(DType::F32, &[t, p.rows()]).unwrap();
        dev.matmul(&xt, p, &mut o).unwrap();
        outs.push(o.as_f32().unwrap().to_vec());
    }
    for row in 0..t {
        for (o, p) in outs.iter().zip(&parts) {
            want.extend_from_slice(&o[row * p.rows()..(row + 1) * p.rows()]);
        }
    }
    let stacked = dev.load_weights_stacked(parts).unwrap();
    assert_eq!(stacked.shape(), &[40, k]);
    let mut got = dev.zeros(DType::F32, &[t, 40]).unwrap();
    dev.matmul(&xt, &stacked, &mut got).unwrap();
    assert_eq!(got.as_f32().unwrap(), &want[..]);
    let mixed = vec![make(&mut r, DType::Q8_0, 4), make(&mut r, DType::Q4_0, 4)];
    assert!(dev.load_weights_stacked(mixed).is_err());
}
