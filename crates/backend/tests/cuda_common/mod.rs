//! Helpers shared by the CUDA test files: a GPU or a skip note, random inputs, uploads
//! and downloads, the error measure the tolerances are stated in, and CUDA's
//! `__byte_perm` for the host replays of kernel arithmetic.
#![allow(dead_code)]

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::{Device, Tensor};

/// The GPU, or `None` with a note where there is none (a failure instead when
/// `SLUICE_REQUIRE_CUDA=1`, as on the device machine).
pub fn gpu(weights: CudaWeightType) -> Option<Device> {
    let required = std::env::var("SLUICE_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    match Device::cuda(0, weights) {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(!required, "SLUICE_REQUIRE_CUDA=1 but: {e}");
            eprintln!("note: no CUDA device ({e}); skipping");
            None
        }
    }
}

pub fn rnd(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn host(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32_cpu(shape, v).unwrap()
}

pub fn up(g: &Device, shape: &[usize], v: &[f32]) -> Tensor {
    g.upload(&host(shape, v)).unwrap()
}

/// A device tensor full of NaN: an element a kernel never writes fails the comparison.
pub fn poisoned(g: &Device, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    up(g, shape, &vec![f32::NAN; n])
}

pub fn down(g: &Device, t: &Tensor) -> Vec<f32> {
    g.download(t).unwrap().as_f32().unwrap().to_vec()
}

/// max |got - want| / max(1, max |want|); infinite if `got` has a non-finite value.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs() as f64));
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        worst = worst.max((*g as f64 - *w as f64).abs());
    }
    worst / scale
}

pub fn check(name: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_err(got, want);
    eprintln!("{name}: rel err {e:.2e} (tol {tol:.0e})");
    assert!(e <= tol, "{name}: error {e:.3e} over {tol:.0e}");
}

/// `x [t, k] · w [m, k]ᵀ` summed in f64.
pub fn matmul_f64(x: &[f32], w: &[f32], t: usize, m: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; t * m];
    for i in 0..t {
        for j in 0..m {
            let s: f64 = (0..k)
                .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                .sum();
            out[i * m + j] = s as f32;
        }
    }
    out
}

/// CUDA's `__byte_perm(x, y, s)`: byte n of the result is byte `s >> 4n & 7` of y:x.
pub fn byte_perm(x: u32, y: u32, s: u32) -> u32 {
    let v = ((y as u64) << 32) | x as u64;
    (0..4).fold(0, |r, n| {
        let sel = (s >> (4 * n)) & 7;
        r | ((((v >> (8 * sel)) & 0xff) as u32) << (8 * n))
    })
}

/// Whether the GEMM autotuner runs (`SLUICE_GEMM_AUTOTUNE`, on unless 0).
pub fn autotuning_on() -> bool {
    std::env::var("SLUICE_GEMM_AUTOTUNE").map_or(true, |v| v != "0")
}

/// Plans whose algorithm the GEMM autotuner picked so far (0 off the GPU).
pub fn tuned_plans(g: &Device) -> u64 {
    match g {
        Device::Cuda(b) => b.gemm_tuned_plans(),
        Device::Cpu(_) => 0,
    }
}

/// An I32 tensor of `v` on `g` (one element allocated at least).
pub fn up_i32(g: &Device, v: &[i32]) -> Tensor {
    g.upload(&host_i32(v)).unwrap()
}

/// An I32 tensor of `v` in host memory (one element allocated at least).
pub fn host_i32(v: &[i32]) -> Tensor {
    let mut t = Tensor::zeros_cpu(sluice_backend::DType::I32, &[v.len().max(1)]).unwrap();
    t.as_i32_mut().unwrap()[..v.len()].copy_from_slice(v);
    t.set_len(v.len()).unwrap();
    t
}

/// The CPU backend the GPU is compared with (two threads).
pub fn cpu() -> Device {
    Device::cpu(Some(2))
}
