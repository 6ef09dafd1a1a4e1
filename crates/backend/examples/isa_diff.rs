//! Compares matmul paths on a real GGUF tensor: `cargo run --release -p sluice-backend --example isa_diff -- FILE.gguf TENSOR_OFFSET ROWS COLS DTYPE`
use sluice_backend::cpu::matmul::matmul_on;
use sluice_backend::cpu::simd::Isa;
use sluice_backend::cpu::{CpuBackend, CpuFeatures};
use sluice_backend::{DType, Tensor};
use std::sync::Arc;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let map =
        Arc::new(unsafe { memmap2::Mmap::map(&std::fs::File::open(&a[1]).unwrap()).unwrap() });
    let (off, m, k): (usize, usize, usize) = (
        a[2].parse().unwrap(),
        a[3].parse().unwrap(),
        a[4].parse().unwrap(),
    );
    let dt = DType::from_name(&a[5]).unwrap();
    let w = Tensor::mapped_cpu(dt, &[m, k], map, off).unwrap();
    let cpu = CpuBackend::with_features(1, CpuFeatures::detect_capped(None));
    let mut s = 12345u64;
    for t in [1usize, 4] {
        let x: Vec<f32> = (0..t * k)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / 2f32.powi(31) - 0.5) * 4.0
            })
            .collect();
        let xt = Tensor::from_f32_cpu(&[t, k], &x).unwrap();
        let mut outs = Vec::new();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            let mut o = Tensor::zeros_cpu(DType::F32, &[t, m]).unwrap();
            matmul_on(&cpu, isa, &xt, &w, &mut o).unwrap();
            outs.push(o.as_f32().unwrap().to_vec());
        }
        let mut row = vec![0f32; k];
        let rb = dt.row_bytes(k);
        let bytes = w.cpu_bytes().unwrap();
        let mut exact = vec![0f64; t * m];
        for r in 0..m {
            sluice_backend::quant::dequantize_row(dt, &bytes[r * rb..(r + 1) * rb], &mut row)
                .unwrap();
            for ti in 0..t {
                exact[ti * m + r] = (0..k).map(|c| row[c] as f64 * x[ti * k + c] as f64).sum();
            }
        }
        let rms = |v: &[f32]| {
            let e: f64 = v
                .iter()
                .zip(&exact)
                .map(|(a, b)| (*a as f64 - b).powi(2))
                .sum::<f64>();
            let n: f64 = exact.iter().map(|b| b * b).sum();
            (e / n).sqrt()
        };
        let diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        println!("T={t}: rel RMS vs f64: scalar {:.2e} avx2 {:.2e} avx512 {:.2e}; max |scalar-avx2| {:.2e} |scalar-avx512| {:.2e}", rms(&outs[0]), rms(&outs[1]), rms(&outs[2]), diff(&outs[0], &outs[1]), diff(&outs[0], &outs[2]));
    }
}
