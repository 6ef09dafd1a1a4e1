//! The dataflow hand-off from the batch-1 GLU GEMV to the down projection
//! (`CudaBackend::set_dataflow`, `SLUICE_DATAFLOW=1`; kernels/gemv.cu "Dataflow
//! hand-off"): the down projection that waits for the GLU's per-block flags instead of
//! its grid gives the result of the one that waits for the grid (same products in the
//! same order: within 1e-6 of max(1, max |reference|); a chunk of x read before its
//! producer stored it would be off by far more), over the 8B and 1B shapes and odd ones (a last GLU block with fewer outputs,
//! rows past the last full block of the down projection, rows of one chunk), again on
//! repeats (the kernels clear the flags for the next use), and after a GLU whose flags
//! no down projection consumed (the backend clears them in stream order).
//!
//! Runs only where a CUDA driver and GPU exist; elsewhere each test prints a note and
//! passes, unless SLUICE_REQUIRE_CUDA=1.

mod cuda_common;

use cuda_common::{check, down, gpu, host, poisoned, rnd, up};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::{Device, Tensor};

/// One FFN half at batch 1: act = GLU(rms_norm(x) · w_gate_upᵀ), then
/// resid += act · w_downᵀ; returns the new residual.
fn ffn(
    g: &Device,
    x: &Tensor,
    gamma: &Tensor,
    w_gu: &Tensor,
    w_down: &Tensor,
    resid: &[f32],
    f: usize,
) -> Vec<f32> {
    let mut act = poisoned(g, &[1, f]);
    g.rms_norm_matmul_glu(x, gamma, 1e-5, w_gu, &mut act, true)
        .unwrap();
    let mut acc = up(g, &[1, resid.len()], resid);
    g.matmul_accumulate(&act, w_down, &mut acc).unwrap();
    down(g, &acc)
}

#[test]
fn dataflow_down_projection_equals_waiting_for_the_grid() {
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let Device::Cuda(cuda) = &g else {
        unreachable!("gpu() gives a CUDA device")
    };
    let mut rng = ChaCha8Rng::seed_from_u64(241);
    // (hidden k, FFN f, down rows m): the 8B and 1B shapes, then odd ones.
    for (k, f, m) in [
        (4096, 14336, 4096),
        (2048, 8192, 2048),
        (512, 1000, 77),
        (64, 24, 300),
        (136, 2200, 4104),
    ] {
        let w_gu = g
            .load_weight(host(&[2 * f, k], &rnd(&mut rng, 2 * f * k, 0.5)))
            .unwrap();
        let w_down = g
            .load_weight(host(&[m, f], &rnd(&mut rng, m * f, 0.5)))
            .unwrap();
        let x = up(&g, &[1, k], &rnd(&mut rng, k, 5.0));
        let gamma = up(&g, &[k], &rnd(&mut rng, k, 1.5));
        let resid = rnd(&mut rng, m, 2.0);
        let name = format!("k={k} f={f} m={m}");

        assert!(!cuda.set_dataflow(false).unwrap());
        let want = ffn(&g, &x, &gamma, &w_gu, &w_down, &resid, f);
        let on = cuda.set_dataflow(true).unwrap();
        assert_eq!(on, cuda.pdl_enabled(), "the hand-off needs PDL");
        for round in 0..3 {
            let before = cuda.dataflow_gemvs();
            let got = ffn(&g, &x, &gamma, &w_gu, &w_down, &resid, f);
            check(&format!("dataflow {name} round {round}"), &got, &want, 1e-6);
            assert_eq!(cuda.dataflow_gemvs() - before, u64::from(on), "{name}");
        }
        // A GLU with flags, then another kernel: its flags are cleared before that
        // kernel, and the next GLU and down projection still agree.
        let mut act = poisoned(&g, &[1, f]);
        g.rms_norm_matmul_glu(&x, &gamma, 1e-5, &w_gu, &mut act, true)
            .unwrap();
        let mut normed = poisoned(&g, &[1, k]);
        g.rms_norm(&x, &gamma, 1e-5, &mut normed).unwrap();
        let got = ffn(&g, &x, &gamma, &w_gu, &w_down, &resid, f);
        check(
            &format!("dataflow {name} after an unconsumed GLU"),
            &got,
            &want,
            1e-6,
        );
        cuda.set_dataflow(false).unwrap();
    }
}
