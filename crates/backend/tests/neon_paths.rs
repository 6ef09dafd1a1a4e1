//! The AArch64 NEON paths: `SLUICE_CPU_FEATURES`-style caps select them (and nothing
//! else selects them on x86-64), and the NEON K-quant kernels equal the scalar kernels
//! bit for bit (they do the same float operations on the same exact integer sums).
//! Accuracy against the f64 reference, batch invariance and thread invariance of the
//! NEON paths are checked by `matmul_kernels.rs`, which runs every `Isa::available()`
//! path. Run on x86-64 through qemu with `scripts/test_arm.sh`.

mod common;

use sluice_backend::cpu::simd::Isa;
use sluice_backend::cpu::{CpuBackend, CpuFeatures};

#[test]
fn caps_select_the_matching_path() {
    let real = CpuFeatures::detect_capped(None);
    let sel = |cap: &str| Isa::select(&CpuFeatures::detect_capped(Some(cap)));
    assert_eq!(sel("scalar"), Isa::Scalar);
    let available = Isa::available();
    if cfg!(target_arch = "aarch64") {
        assert!(real.neon, "every AArch64 Linux CPU has NEON");
        assert_eq!(sel("neon"), Isa::Neon);
        let best = if real.dotprod {
            Isa::NeonDot
        } else {
            Isa::Neon
        };
        assert_eq!(sel("neon-dotprod"), best);
        assert_eq!(Isa::select(&real), best);
        let mut want = vec![Isa::Scalar, Isa::Neon];
        if real.dotprod {
            want.push(Isa::NeonDot);
        }
        assert_eq!(available, want);
        // A backend built for each path reports it and keeps the others off.
        for isa in available {
            let f = *CpuBackend::with_features(1, isa.cap(real)).features();
            assert_eq!(Isa::select(&f), isa, "{}", isa.name());
        }
        assert_eq!(
            CpuFeatures::detect_capped(Some("neon")).describe(),
            "neon",
            "describe"
        );
    } else {
        assert!(!real.neon && !real.dotprod);
        assert!(!available.contains(&Isa::Neon) && !available.contains(&Isa::NeonDot));
        // Asking for a NEON cap on x86-64 never selects a NEON kernel.
        for cap in ["neon", "neon-dotprod"] {
            assert!(!matches!(sel(cap), Isa::Neon | Isa::NeonDot), "{cap}");
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[test]
fn neon_k_quants_equal_scalar_bit_for_bit() {
    use common::*;
    use sluice_backend::{DType, Tensor};

    let paths: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|i| *i != Isa::Scalar)
        .collect();
    assert!(!paths.is_empty());
    let real = CpuFeatures::detect_capped(None);
    let scalar = CpuBackend::with_features(2, CpuFeatures::none());
    let mut r = rng(700);
    for dtype in [
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ] {
        for (k, m, t) in [(256usize, 5usize, 1usize), (768, 19, 7), (1280, 3, 4)] {
            let w = random_weight(&mut r, dtype, m, k);
            let mut x = randn_vec(&mut r, t * k, 3.0);
            x[..17].iter_mut().for_each(|v| *v *= 1e-4);
            let wt = Tensor::from_bytes_cpu(dtype, &[m, k], &w).unwrap();
            let xt = Tensor::from_f32_cpu(&[t, k], &x).unwrap();
            let run = |cpu: &CpuBackend| {
                let mut out = Tensor::from_f32_cpu(&[t, m], &vec![f32::NAN; t * m]).unwrap();
                cpu.matmul(&xt, &wt, &mut out).unwrap();
                out.as_f32().unwrap().to_vec()
            };
            let want = run(&scalar);
            for &isa in &paths {
                let got = run(&CpuBackend::with_features(2, isa.cap(real)));
                for (i, (g, s)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        s.to_bits(),
                        "{dtype} on {} k={k} m={m} t={t} element {i}: {g} vs scalar {s}",
                        isa.name()
                    );
                }
            }
        }
    }
}
