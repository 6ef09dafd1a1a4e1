//! The batch-1 decode fusions (kernels/gemv.cu `gemv1_rows_body`): `rms_norm_matmul`
//! (the RMSNorm folded into the GEMV) and `matmul_accumulate` (the residual add in its
//! epilogue), for every weight type that has them, against the unfused GPU ops (each
//! checked against the CPU in cuda_ops.rs) and, for f32 weights, against the CPU itself.
//! Row counts cover every warps-per-row split of the GEMV (8, 4, 2 and 1 warps per row
//! group on an H100's 132 SMs).
//!
//! Tolerance: 1e-5 of max(1, max |reference|): the fused kernel sums the same products
//! in the same order and only applies the norm's scale after the dot product instead of
//! before it.
//!
//! Runs only where a CUDA driver and GPU exist; elsewhere each test prints a note and
//! passes, unless SLUICE_REQUIRE_CUDA=1.

mod cuda_common;

use cuda_common::{check, down, gpu, host, poisoned, rnd, up};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::{DType, Device};

const SHAPES: [(usize, usize); 5] = [(77, 64), (2200, 128), (4500, 64), (8500, 64), (33, 4096)];

const TYPES: [(CudaWeightType, DType); 5] = [
    (CudaWeightType::Bf16, DType::BF16),
    (CudaWeightType::F16, DType::F16),
    (CudaWeightType::F32, DType::F32),
    (CudaWeightType::Q8_0, DType::Q8_0),
    (CudaWeightType::Fp8, DType::F8E4M3),
];

#[test]
fn fused_norm_and_residual_gemvs_match_the_unfused_ops() {
    let mut rng = ChaCha8Rng::seed_from_u64(71);
    for (wt, dtype) in TYPES {
        let Some(g) = gpu(wt) else {
            return;
        };
        for (m, k) in SHAPES {
            let w = g
                .load_weight(host(&[m, k], &rnd(&mut rng, m * k, 0.5)))
                .unwrap();
            assert_eq!(w.dtype(), dtype, "{wt:?} weight type");
            // Q8_0's fused GEMV runs but is slower than the norm kernel and the plain
            // GEMV, so the model is told not to use it.
            let fuses = dtype != DType::Q8_0;
            assert_eq!(g.fuses_decode_matmul(&w, 1), fuses, "{dtype} m={m} k={k}");
            assert!(!g.fuses_decode_matmul(&w, 2), "two rows do not fuse");
            // Residual-stream scale (RMS ~ 3) so that the norm really rescales.
            let x = up(&g, &[1, k], &rnd(&mut rng, k, 5.0));
            let gamma = up(&g, &[k], &rnd(&mut rng, k, 1.5));
            let eps = 1e-5;

            // Reference: the norm kernel, then the plain GEMV.
            let mut normed = poisoned(&g, &[1, k]);
            g.rms_norm(&x, &gamma, eps, &mut normed).unwrap();
            let mut want = poisoned(&g, &[1, m]);
            g.matmul(&normed, &w, &mut want).unwrap();
            let want = down(&g, &want);

            let mut got = poisoned(&g, &[1, m]);
            g.rms_norm_matmul(&x, &gamma, eps, &w, &mut got).unwrap();
            check(
                &format!("rms_norm_matmul {dtype} m={m} k={k}"),
                &down(&g, &got),
                &want,
                1e-5,
            );

            // out += x · wᵀ over a random residual.
            let resid = rnd(&mut rng, m, 2.0);
            let mut plain = poisoned(&g, &[1, m]);
            g.matmul(&x, &w, &mut plain).unwrap();
            let want: Vec<f32> = down(&g, &plain)
                .iter()
                .zip(&resid)
                .map(|(p, r)| p + r)
                .collect();
            let mut acc = up(&g, &[1, m], &resid);
            g.matmul_accumulate(&x, &w, &mut acc).unwrap();
            check(
                &format!("matmul_accumulate {dtype} m={m} k={k}"),
                &down(&g, &acc),
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn fused_norm_gemv_matches_the_cpu_for_f32_weights() {
    let Some(g) = gpu(CudaWeightType::F32) else {
        return;
    };
    let cpu = Device::cpu(Some(2));
    let mut rng = ChaCha8Rng::seed_from_u64(72);
    for (m, k) in SHAPES {
        let wv = rnd(&mut rng, m * k, 0.5);
        let (xv, gv) = (rnd(&mut rng, k, 5.0), rnd(&mut rng, k, 1.5));
        let mut normed = host(&[1, k], &vec![0.0; k]);
        cpu.rms_norm(&host(&[1, k], &xv), &host(&[k], &gv), 1e-6, &mut normed)
            .unwrap();
        let mut want = host(&[1, m], &vec![0.0; m]);
        cpu.matmul(&normed, &host(&[m, k], &wv), &mut want).unwrap();

        let w = g.load_weight(host(&[m, k], &wv)).unwrap();
        let mut got = poisoned(&g, &[1, m]);
        g.rms_norm_matmul(
            &up(&g, &[1, k], &xv),
            &up(&g, &[k], &gv),
            1e-6,
            &w,
            &mut got,
        )
        .unwrap();
        check(
            &format!("rms_norm_matmul f32 vs CPU m={m} k={k}"),
            &down(&g, &got),
            want.as_f32().unwrap(),
            1e-5,
        );
    }
}

#[test]
fn fused_decode_ops_refuse_what_they_cannot_do() {
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(73);
    let (m, k) = (16usize, 64usize);
    let w = g
        .load_weight(host(&[m, k], &rnd(&mut rng, m * k, 0.5)))
        .unwrap();
    let gamma = up(&g, &[k], &rnd(&mut rng, k, 1.0));
    // Two rows, a wrong gamma, a wrong output shape: clear errors, nothing launched.
    let x2 = up(&g, &[2, k], &rnd(&mut rng, 2 * k, 1.0));
    let mut out2 = poisoned(&g, &[2, m]);
    assert!(g.rms_norm_matmul(&x2, &gamma, 1e-5, &w, &mut out2).is_err());
    assert!(g.matmul_accumulate(&x2, &w, &mut out2).is_err());
    let x = up(&g, &[1, k], &rnd(&mut rng, k, 1.0));
    let short = up(&g, &[k - 8], &rnd(&mut rng, k - 8, 1.0));
    let mut out = poisoned(&g, &[1, m]);
    assert!(g.rms_norm_matmul(&x, &short, 1e-5, &w, &mut out).is_err());
    let mut wrong = poisoned(&g, &[1, m + 1]);
    assert!(g.matmul_accumulate(&x, &w, &mut wrong).is_err());
    // The CPU has no fused decode ops and says so.
    let cpu = Device::cpu(Some(1));
    let wc = host(&[m, k], &rnd(&mut rng, m * k, 0.5));
    assert!(!cpu.fuses_decode_matmul(&wc, 1));
    let mut oc = host(&[1, m], &vec![0.0; m]);
    assert!(cpu
        .matmul_accumulate(&host(&[1, k], &vec![1.0; k]), &wc, &mut oc)
        .is_err());
}

/// A GEMM fed by a norm or the GLU takes the bf16 copy those kernels wrote next to their
/// f32 output ("staged activations", cuda/ops.rs) instead of converting the input
/// itself: the result must be bit for bit what converting the same f32 values gives
/// (the same rounding), for bf16 and Q8_0 weights (whose dequantization runs between the
/// producer and the GEMM). And a kernel that changes the tensor in between must stop the
/// GEMM from taking the stale copy.
#[test]
fn staged_activations_equal_converting_and_go_stale_on_any_other_kernel() {
    let mut rng = ChaCha8Rng::seed_from_u64(74);
    for wt in [CudaWeightType::Bf16, CudaWeightType::Q8_0] {
        let Some(g) = gpu(wt) else {
            return;
        };
        let (t, k, m, f) = (37usize, 256usize, 96usize, 64usize);
        let w = g
            .load_weight(host(&[m, k], &rnd(&mut rng, m * k, 0.5)))
            .unwrap();
        let wd = g
            .load_weight(host(&[m, f], &rnd(&mut rng, m * f, 0.5)))
            .unwrap();
        let gamma = up(&g, &[k], &rnd(&mut rng, k, 1.5));
        // The reference: the same f32 input uploaded fresh, so the GEMM converts it.
        let converted = |x: &sluice_backend::Tensor, w: &sluice_backend::Tensor, rows, cols| {
            let fresh = up(&g, &[rows, cols], &down(&g, x));
            let mut out = poisoned(&g, &[rows, w.rows()]);
            g.matmul(&fresh, w, &mut out).unwrap();
            down(&g, &out)
        };
        let same = |name: &str, got: Vec<f32>, want: Vec<f32>| {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{name} ({wt:?})");
        };

        let x = up(&g, &[t, k], &rnd(&mut rng, t * k, 3.0));
        // Grows the scratch buffers first (a reallocation rightly drops a staged copy).
        converted(&x, &w, t, k);
        let backend = match &g {
            Device::Cuda(b) => b,
            Device::Cpu(_) => unreachable!("a CUDA device"),
        };
        let uses = backend.staged_gemm_inputs();
        let mut normed = poisoned(&g, &[t, k]);
        g.rms_norm(&x, &gamma, 1e-5, &mut normed).unwrap();
        let mut out = poisoned(&g, &[t, m]);
        g.matmul(&normed, &w, &mut out).unwrap();
        // Twice from one norm (separate Q/K/V projections share the copy).
        let mut again = poisoned(&g, &[t, m]);
        g.matmul(&normed, &w, &mut again).unwrap();
        let want = converted(&normed, &w, t, k);
        same("norm -> GEMM", down(&g, &out), want.clone());
        same("norm -> second GEMM", down(&g, &again), want);

        let mut resid = up(&g, &[t, k], &rnd(&mut rng, t * k, 3.0));
        let delta = up(&g, &[t, k], &rnd(&mut rng, t * k, 1.0));
        g.add_rms_norm(&mut resid, &delta, &gamma, 1e-5, &mut normed)
            .unwrap();
        g.matmul(&normed, &w, &mut out).unwrap();
        same(
            "add+norm -> GEMM",
            down(&g, &out),
            converted(&normed, &w, t, k),
        );

        let gu = up(&g, &[t, 2 * f], &rnd(&mut rng, t * 2 * f, 2.0));
        let mut act = poisoned(&g, &[t, f]);
        g.glu_packed(&gu, &mut act, true).unwrap();
        let mut out_d = poisoned(&g, &[t, m]);
        g.matmul(&act, &wd, &mut out_d).unwrap();
        same("GLU -> GEMM", down(&g, &out_d), converted(&act, &wd, t, f));

        // A kernel in between changes the input: the copy is stale and must not be used.
        g.rms_norm(&x, &gamma, 1e-5, &mut normed).unwrap();
        g.scale_inplace(&mut normed, -2.0).unwrap();
        g.matmul(&normed, &w, &mut out).unwrap();
        same(
            "norm, scale -> GEMM",
            down(&g, &out),
            converted(&normed, &w, t, k),
        );
        // Norm (twice), add+norm and GLU took the copy; the stale case did not.
        assert_eq!(backend.staged_gemm_inputs() - uses, 4, "{wt:?}");
    }
}
