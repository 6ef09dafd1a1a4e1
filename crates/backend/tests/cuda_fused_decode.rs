//! The batch-1 decode fusions (kernels/gemv.cu `gemv1_rows_body`): `rms_norm_matmul`
//! (the RMSNorm folded into the GEMV) and `matmul_accumulate` (the residual add in its
//! epilogue), for every weight type that has them, against the unfused GPU ops (each
//! checked against the CPU in cuda_ops.rs) and, for f32 weights, against the CPU itself.
//! And the GEMM epilogues of larger steps: `matmul_accumulate` on cuBLASLt (beta 1) and
//! `gated_ffn` (bf16 between the FFN's GEMMs), against the unfused ops with the same
//! roundings replayed on the host.
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

use cuda_common::{autotuning_on, check, down, gpu, host, poisoned, rnd, tuned_plans, up};
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
            let want = plain_gemv_plus(&g, &x, &w, &resid);
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

/// x · wᵀ by the plain GEMV (one row of x), plus `resid`, on the host.
fn plain_gemv_plus(
    g: &Device,
    x: &sluice_backend::Tensor,
    w: &sluice_backend::Tensor,
    resid: &[f32],
) -> Vec<f32> {
    let mut plain = poisoned(g, &[1, resid.len()]);
    g.matmul(x, w, &mut plain).unwrap();
    down(g, &plain)
        .iter()
        .zip(resid)
        .map(|(p, r)| p + r)
        .collect()
}

/// The bf16 GEMV launched right after a kernel that leaves the memory idle (here the
/// embedding lookup; in a step the decode attention) stages its first weight chunks in
/// shared memory before its PDL wait (kernels/gemv.cu `gemv1_staged_body`): same result
/// as the plain GEMV, over shapes where the staged chunks are all of a row, part of it,
/// or more than it holds, and every warps-per-row split.
#[test]
fn staged_gemv_after_an_idle_kernel_matches_the_plain_gemv() {
    let mut rng = ChaCha8Rng::seed_from_u64(72);
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let Device::Cuda(cuda) = &g else {
        unreachable!("gpu() gives a CUDA device")
    };
    let table = up(&g, &[4, 64], &rnd(&mut rng, 256, 1.0));
    let ids = {
        let mut t = sluice_backend::Tensor::zeros_cpu(DType::I32, &[1]).unwrap();
        t.as_i32_mut().unwrap()[0] = 3;
        g.upload(&t).unwrap()
    };
    let mut emb = poisoned(&g, &[1, 64]);
    let shapes = [
        (77, 64),
        (2200, 128),
        (33, 4096),
        (4096, 4096),
        (2048, 2048),
        (1000, 4104),
        (9000, 24),
    ];
    for (m, k) in shapes {
        let w = g
            .load_weight(host(&[m, k], &rnd(&mut rng, m * k, 0.5)))
            .unwrap();
        assert_eq!(w.dtype(), DType::BF16);
        let x = up(&g, &[1, k], &rnd(&mut rng, k, 2.0));
        let resid = rnd(&mut rng, m, 2.0);
        // Reference: the plain GEMV (no idle kernel before it), plus the residual. (Under
        // SLUICE_GEMV_STAGE_ALL=1 it stages too; the default run is the comparison.)
        let want = plain_gemv_plus(&g, &x, &w, &resid);
        let before = cuda.staged_gemvs();
        let mut acc = up(&g, &[1, m], &resid);
        g.embedding(&ids, &table, 1.0, &mut emb).unwrap();
        g.matmul_accumulate(&x, &w, &mut acc).unwrap();
        check(
            &format!("staged matmul_accumulate m={m} k={k}"),
            &down(&g, &acc),
            &want,
            1e-5,
        );
        // Staged only under PDL (sm_90+, unless SLUICE_PDL=0), by the four-load kernels
        // (not SLUICE_GEMV_UNROLL=2's), unless SLUICE_GEMV_STAGE=0 or SLUICE_GEMV_PREWAIT=0.
        let set_to = |var: &str, value: &str| std::env::var(var).is_ok_and(|v| v == value);
        let staging = cuda.pdl_enabled()
            && !set_to("SLUICE_GEMV_STAGE", "0")
            && !set_to("SLUICE_GEMV_UNROLL", "2")
            && !set_to("SLUICE_GEMV_PREWAIT", "0");
        assert_eq!(
            cuda.staged_gemvs() - before,
            u64::from(staging),
            "m={m} k={k}"
        );
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

/// Row counts that take cuBLASLt (above the GEMVs' 4) and (H, F) FFN shapes with F a
/// multiple of 8; H = 4,096 with F = 14,336 is the Llama-3.1-8B layer.
const GEMM_ROWS: [usize; 4] = [5, 17, 64, 300];
const FFN_SHAPES: [(usize, usize); 4] = [(64, 96), (128, 344), (256, 1024), (4096, 14336)];

#[test]
fn gemm_residual_epilogue_matches_matmul_then_add() {
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(73);
    for (m, k) in [(77usize, 64usize), (520, 256), (1000, 1032), (4096, 4096)] {
        let w = g
            .load_weight(host(&[m, k], &rnd(&mut rng, m * k, 0.5)))
            .unwrap();
        assert!(!g.accumulates_matmul(&w, 1), "one row is the GEMV's");
        assert!(!g.accumulates_matmul(&w, 4), "four rows are the GEMV's");
        for t in GEMM_ROWS {
            assert!(g.accumulates_matmul(&w, t), "{t} rows");
            let x = up(&g, &[t, k], &rnd(&mut rng, t * k, 1.0));
            let resid = rnd(&mut rng, t * m, 3.0);
            // At 17 rows the accumulating call is the shape's first, inside the tuning
            // window: it times the candidates (into an output of the tuner's own: this
            // one must be added into once) and then runs the pick with beta 1. The plain
            // matmul after it shares the plan.
            let tuned_before = tuned_plans(&g);
            g.set_gemm_tuning(t == 17);
            let mut acc = up(&g, &[t, m], &resid);
            let ran = g.matmul_accumulate(&x, &w, &mut acc);
            g.set_gemm_tuning(false);
            ran.unwrap();
            // (The smallest shape may get a single candidate, which is not timed.)
            if t == 17 && m >= 520 && autotuning_on() {
                assert_eq!(tuned_plans(&g), tuned_before + 1, "m={m} k={k}: tuned once");
            }
            let mut plain = poisoned(&g, &[t, m]);
            g.matmul(&x, &w, &mut plain).unwrap();
            let want: Vec<f32> = down(&g, &plain)
                .iter()
                .zip(&resid)
                .map(|(p, r)| p + r)
                .collect();
            check(
                &format!("GEMM matmul_accumulate m={m} k={k} t={t}"),
                &down(&g, &acc),
                &want,
                1e-5,
            );
        }
    }
}

/// `x + (act(g) ⊙ u) · w_downᵀ` with the roundings of `gated_ffn` replayed: g and u from
/// the GPU's f32 GEMM rounded to bf16, the GLU in f32 on the host, its output rounded to
/// bf16 (exact in the down GEMM's bf16 input), the down GEMM on the GPU, the add on the
/// host. What remains is the GEMMs' summation order (and `__expf`).
fn gated_ffn_reference(
    g: &Device,
    xb: &sluice_backend::Tensor,
    (w_gate_up, w_down): (&sluice_backend::Tensor, &sluice_backend::Tensor),
    resid: &[f32],
    (t, h, f): (usize, usize, usize),
    silu: bool,
) -> Vec<f32> {
    let bf = |v: f32| half::bf16::from_f32(v).to_f32();
    let mut gu = poisoned(g, &[t, 2 * f]);
    g.matmul(xb, w_gate_up, &mut gu).unwrap();
    let gu = down(g, &gu);
    let mut act = vec![0f32; t * f];
    for r in 0..t {
        for j in 0..f {
            let (v, u) = (bf(gu[r * 2 * f + j]), bf(gu[r * 2 * f + f + j]));
            let a = if silu {
                v / (1.0 + (-v).exp()) * u
            } else {
                let inner = 0.797_884_6 * (v + 0.044715 * v * v * v);
                0.5 * v * (1.0 + inner.tanh()) * u
            };
            act[r * f + j] = bf(a);
        }
    }
    let mut out = poisoned(g, &[t, h]);
    g.matmul(&up(g, &[t, f], &act), w_down, &mut out).unwrap();
    down(g, &out)
        .iter()
        .zip(resid)
        .map(|(o, r)| o + r)
        .collect()
}

#[test]
fn gated_ffn_matches_the_unfused_ops_with_its_roundings() {
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(74);
    for (h, f) in FFN_SHAPES {
        let w_gate_up = g
            .load_weight(host(&[2 * f, h], &rnd(&mut rng, 2 * f * h, 0.5)))
            .unwrap();
        let w_down = g
            .load_weight(host(&[h, f], &rnd(&mut rng, h * f, 0.5)))
            .unwrap();
        assert!(!g.fuses_gated_ffn(&w_gate_up, &w_down, 4), "four rows");
        let rows: &[usize] = if h == 4096 { &[64, 300] } else { &GEMM_ROWS };
        for (i, &t) in rows.iter().enumerate() {
            assert!(
                g.fuses_gated_ffn(&w_gate_up, &w_down, t),
                "{h}x{f}, {t} rows"
            );
            let silu = i % 2 == 0;
            // Inputs scaled so that g and u land where SiLU and GELU bend.
            let xb = up(&g, &[t, h], &rnd(&mut rng, t * h, 2.0 / (h as f32).sqrt()));
            let resid = rnd(&mut rng, t * h, 3.0);
            // The op first, so that at 17 rows both its GEMMs are planned (and tuned)
            // inside the window; the reference's f32 down GEMM then shares that plan.
            let mut work = poisoned(&g, &[t, 2 * f]);
            let mut x = up(&g, &[t, h], &resid);
            g.set_gemm_tuning(t == 17);
            let ran = g.gated_ffn(&xb, &w_gate_up, &w_down, &mut work, &mut x, silu);
            g.set_gemm_tuning(false);
            ran.unwrap();
            let want = gated_ffn_reference(&g, &xb, (&w_gate_up, &w_down), &resid, (t, h, f), silu);
            // A one-ulp bf16 difference in a few of g, u or the GLU output (the GEMMs'
            // order of summation) moves an output by far less than this.
            check(
                &format!("gated_ffn h={h} f={f} t={t} silu={silu}"),
                &down(&g, &x),
                &want,
                2e-3,
            );
        }
    }
}

#[test]
fn gemm_epilogues_refuse_what_they_cannot_do() {
    let mut rng = ChaCha8Rng::seed_from_u64(75);
    let (h, f, t) = (64usize, 96usize, 8usize);
    let (gu_v, dn_v) = (rnd(&mut rng, 2 * f * h, 0.5), rnd(&mut rng, h * f, 0.5));
    let cpu = Device::cpu(Some(1));
    let (gu, dn) = (host(&[2 * f, h], &gu_v), host(&[h, f], &dn_v));
    assert!(!cpu.accumulates_matmul(&dn, t) && !cpu.fuses_gated_ffn(&gu, &dn, t));
    let (mut work, mut x) = (
        host(&[t, 2 * f], &vec![0.0; t * 2 * f]),
        host(&[t, h], &vec![0.0; t * h]),
    );
    let xb = host(&[t, h], &vec![0.0; t * h]);
    assert!(cpu
        .gated_ffn(&xb, &gu, &dn, &mut work, &mut x, true)
        .is_err());
    for (wt, fuses) in [(CudaWeightType::F32, false), (CudaWeightType::Bf16, true)] {
        let Some(g) = gpu(wt) else {
            return;
        };
        let (gu, dn) = (
            g.load_weight(host(&[2 * f, h], &gu_v)).unwrap(),
            g.load_weight(host(&[h, f], &dn_v)).unwrap(),
        );
        assert_eq!(g.fuses_gated_ffn(&gu, &dn, t), fuses, "{wt:?}");
        assert_eq!(g.accumulates_matmul(&dn, t), fuses, "{wt:?}");
        let xb = up(&g, &[t, h], &vec![0.0; t * h]);
        let mut x = up(&g, &[t, h], &vec![0.0; t * h]);
        let mut work = up(&g, &[t, 2 * f], &vec![0.0; t * 2 * f]);
        let ran = g.gated_ffn(&xb, &gu, &dn, &mut work, &mut x, true);
        assert_eq!(ran.is_ok(), fuses, "{wt:?}: {ran:?}");
        if fuses {
            // Working space too small for g, u and the GLU output.
            let mut small = up(&g, &[t, f], &vec![0.0; t * f]);
            assert!(g
                .gated_ffn(&xb, &gu, &dn, &mut small, &mut x, true)
                .is_err());
            // Swapped weights (the down projection's shape where gate/up belongs).
            assert!(g.gated_ffn(&xb, &dn, &gu, &mut work, &mut x, true).is_err());
            // One row is the GEMV's.
            let (xb1, mut x1) = (
                up(&g, &[1, h], &vec![0.0; h]),
                up(&g, &[1, h], &vec![0.0; h]),
            );
            assert!(g
                .gated_ffn(&xb1, &gu, &dn, &mut work, &mut x1, true)
                .is_err());
        }
    }
}

/// A bf16 device tensor of `v` rounded to bf16.
fn up16(g: &Device, shape: &[usize], v: &[f32]) -> sluice_backend::Tensor {
    let bytes: Vec<u8> = v
        .iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
        .collect();
    let host = sluice_backend::Tensor::from_bytes_cpu(DType::BF16, shape, &bytes).unwrap();
    g.upload(&host).unwrap()
}

/// The bit patterns of a bf16 device tensor.
fn down16(g: &Device, t: &sluice_backend::Tensor) -> Vec<u16> {
    let host = g.download(t).unwrap();
    host.cpu_bytes()
        .unwrap()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn bits16(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|x| half::bf16::from_f32(*x).to_bits())
        .collect()
}

/// bf16 activation tensors (`llama::bf16_activations`): the norms writing bf16 only, a
/// GEMM taking and writing bf16, the RoPE split reading bf16, against the f32 ops with
/// the same roundings applied on the host.
#[test]
fn bf16_activations_equal_the_f32_ops_rounded() {
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(76);
    let (t, h, m) = (9usize, 256usize, 200usize);
    for cols in [h, 102] {
        // 256 columns: the vectorised norm kernels; 102 (not whole float4s): the scalar
        // ones.
        let xv = rnd(&mut rng, t * cols, 3.0);
        let gamma = up(&g, &[cols], &rnd(&mut rng, cols, 1.5));
        let mut f32_out = poisoned(&g, &[t, cols]);
        g.rms_norm(&up(&g, &[t, cols], &xv), &gamma, 1e-5, &mut f32_out)
            .unwrap();
        let mut b16 = g.zeros(DType::BF16, &[t, cols]).unwrap();
        g.rms_norm(&up(&g, &[t, cols], &xv), &gamma, 1e-5, &mut b16)
            .unwrap();
        assert_eq!(
            down16(&g, &b16),
            bits16(&down(&g, &f32_out)),
            "rms_norm {cols}"
        );
        // add + norm: x updated the same way, the output rounded.
        let dv = rnd(&mut rng, t * cols, 1.0);
        let (mut xa, mut xb) = (up(&g, &[t, cols], &xv), up(&g, &[t, cols], &xv));
        let delta = up(&g, &[t, cols], &dv);
        g.add_rms_norm(&mut xa, &delta, &gamma, 1e-5, &mut f32_out)
            .unwrap();
        g.add_rms_norm(&mut xb, &delta, &gamma, 1e-5, &mut b16)
            .unwrap();
        assert_eq!(down(&g, &xa), down(&g, &xb), "add_rms_norm x {cols}");
        assert_eq!(
            down16(&g, &b16),
            bits16(&down(&g, &f32_out)),
            "add_rms_norm {cols}"
        );
    }

    // A GEMM with bf16 input: the same bits as the f32 input of the same values; with
    // bf16 output: the f32 output rounded (another algorithm may be planned for it, so
    // within a bf16 step of the largest output).
    let w = g
        .load_weight(host(&[m, h], &rnd(&mut rng, m * h, 0.5)))
        .unwrap();
    let xv: Vec<f32> = rnd(&mut rng, t * h, 1.0)
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    let mut want = poisoned(&g, &[t, m]);
    g.matmul(&up(&g, &[t, h], &xv), &w, &mut want).unwrap();
    let want = down(&g, &want);
    let mut got = poisoned(&g, &[t, m]);
    g.matmul(&up16(&g, &[t, h], &xv), &w, &mut got).unwrap();
    assert_eq!(down(&g, &got), want, "bf16 x -> f32 out");
    let mut got16 = g.zeros(DType::BF16, &[t, m]).unwrap();
    g.matmul(&up16(&g, &[t, h], &xv), &w, &mut got16).unwrap();
    let got16: Vec<f32> = down16(&g, &got16)
        .iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect();
    check("bf16 x -> bf16 out", &got16, &want, 4e-3);
    // Too few rows for the GEMM, and the CPU: refused.
    let mut few = g.zeros(DType::F32, &[3, m]).unwrap();
    assert!(g
        .matmul(&up16(&g, &[3, h], &xv[..3 * h]), &w, &mut few)
        .is_err());
    let cpu = Device::cpu(Some(1));
    let cw = host(&[m, h], &vec![0.0; m * h]);
    let mut cout = host(&[t, m], &vec![0.0; t * m]);
    assert!(cpu
        .matmul(&up16(&cpu, &[t, h], &xv), &cw, &mut cout)
        .is_err());

    // The RoPE split from bf16 projections: the same q, k, v and caches as from f32 ones
    // holding the same values.
    let (nh, nkv, hd, max_pos) = (4usize, 2usize, 16usize, 64usize);
    let width = (nh + 2 * nkv) * hd;
    let qkv: Vec<f32> = rnd(&mut rng, t * width, 2.0)
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    let half = hd / 2;
    let cos = up(&g, &[max_pos, half], &rnd(&mut rng, max_pos * half, 1.0));
    let sin = up(&g, &[max_pos, half], &rnd(&mut rng, max_pos * half, 1.0));
    let mut pos_host = sluice_backend::Tensor::zeros_cpu(DType::I32, &[t]).unwrap();
    let mut slot_host = sluice_backend::Tensor::zeros_cpu(DType::I32, &[t]).unwrap();
    for i in 0..t {
        pos_host.as_i32_mut().unwrap()[i] = (i * 7 % max_pos) as i32;
        slot_host.as_i32_mut().unwrap()[i] = if i == 2 { -1 } else { 40 - 3 * i as i32 };
    }
    let (pos, slots) = (g.upload(&pos_host).unwrap(), g.upload(&slot_host).unwrap());
    let dims = sluice_backend::QkvDims {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        style: sluice_backend::RopeStyle::Neox,
    };
    let mut results = Vec::new();
    for input in [up(&g, &[t, width], &qkv), up16(&g, &[t, width], &qkv)] {
        let shape = [8, nkv, 8, hd];
        let (mut kc, mut vc) = (
            g.zeros(DType::BF16, &shape).unwrap(),
            g.zeros(DType::BF16, &shape).unwrap(),
        );
        let mut q = poisoned(&g, &[t, nh * hd]);
        let mut k = poisoned(&g, &[t, nkv * hd]);
        let mut v = poisoned(&g, &[t, nkv * hd]);
        g.split_qkv_rope(
            &input,
            &pos,
            &cos,
            &sin,
            dims,
            &mut q,
            &mut k,
            &mut v,
            Some(sluice_backend::KvWrite {
                k_cache: &mut kc,
                v_cache: &mut vc,
                slots: &slots,
            }),
        )
        .unwrap();
        results.push((
            down(&g, &q),
            down(&g, &k),
            down(&g, &v),
            down16(&g, &kc),
            down16(&g, &vc),
        ));
    }
    assert!(
        results[0] == results[1],
        "split_qkv_rope from bf16 projections"
    );
}

/// bf16 bits as f32 (for comparing bf16 caches within a tolerance).
fn bf16_bits_to_f32(bits: &[u16]) -> Vec<f32> {
    bits.iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect()
}

/// The batch-1 GEMVs with a paired epilogue (kernels/gemv_pairs.cu): the GLU of stacked
/// gate/up rows, against `rms_norm_matmul` then `glu_packed`. Odd widths leave a block
/// with pairs past the end; the row counts cover every warps-per-row split.
#[test]
fn glu_gemv_matches_norm_gemv_then_glu() {
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(91);
    for (f, k, silu) in [
        (37, 64, true),
        (200, 136, false),
        (1100, 64, true),
        (2200, 128, true),
        (8192, 512, false),
        (14336, 4096, true),
    ] {
        let w = g
            .load_weight(host(&[2 * f, k], &rnd(&mut rng, 2 * f * k, 0.5)))
            .unwrap();
        assert!(g.fuses_decode_pairs(&w, 1), "f={f} k={k}");
        assert!(!g.fuses_decode_pairs(&w, 2), "two rows do not fuse");
        let x = up(&g, &[1, k], &rnd(&mut rng, k, 5.0));
        let gamma = up(&g, &[k], &rnd(&mut rng, k, 1.5));
        let eps = 1e-5;
        let mut gate_up = poisoned(&g, &[1, 2 * f]);
        g.rms_norm_matmul(&x, &gamma, eps, &w, &mut gate_up)
            .unwrap();
        let mut want = poisoned(&g, &[1, f]);
        g.glu_packed(&gate_up, &mut want, silu).unwrap();
        let mut got = poisoned(&g, &[1, f]);
        g.rms_norm_matmul_glu(&x, &gamma, eps, &w, &mut got, silu)
            .unwrap();
        check(
            &format!("rms_norm_matmul_glu f={f} k={k} silu={silu}"),
            &down(&g, &got),
            &down(&g, &want),
            1e-5,
        );
        // Shape mismatches are errors, not launches.
        let mut wrong = poisoned(&g, &[1, f + 1]);
        assert!(g
            .rms_norm_matmul_glu(&x, &gamma, eps, &w, &mut wrong, silu)
            .is_err());
    }
    // Other weight types keep the unfused path (the model asks first).
    let Some(f32g) = gpu(CudaWeightType::F32) else {
        return;
    };
    let w = f32g
        .load_weight(host(&[64, 64], &vec![0.5; 64 * 64]))
        .unwrap();
    assert!(!f32g.fuses_decode_pairs(&w, 1));
    let cpu = Device::cpu(Some(1));
    assert!(!cpu.fuses_decode_pairs(&host(&[64, 64], &vec![0.5; 64 * 64]), 1));
}

/// RoPE and the cache write in the stacked Q/K/V GEMV's epilogue, against
/// `rms_norm_matmul` then `split_qkv_rope`: both RoPE styles, GQA and MHA, head dims 64
/// and 128, bf16, f32 and FP8 caches, a slot in a high block and a skipped (negative) slot.
#[test]
fn qkv_rope_gemv_matches_norm_gemv_then_split() {
    use sluice_backend::{KvWrite, QkvDims, RopeStyle, Tensor};
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(92);
    let cases = [
        (32, 8, 128, 4096, RopeStyle::Neox, DType::BF16, 4321),
        (4, 4, 64, 64, RopeStyle::Interleaved, DType::F32, 3),
        (14, 2, 64, 896, RopeStyle::Neox, DType::BF16, 17),
        (6, 1, 128, 200, RopeStyle::Interleaved, DType::BF16, -1),
        (9, 3, 64, 576, RopeStyle::Neox, DType::F32, 1000),
        (32, 8, 128, 4096, RopeStyle::Neox, DType::F8E4M3, 2222),
        (9, 3, 64, 576, RopeStyle::Interleaved, DType::F8E4M3, 5),
    ];
    for (nh, nkv, hd, k, style, kv_dtype, slot) in cases {
        let m = (nh + 2 * nkv) * hd;
        let (max_pos, half, bs, blocks) = (300usize, hd / 2, 16usize, 300usize);
        let w = g
            .load_weight(host(&[m, k], &rnd(&mut rng, m * k, 0.5)))
            .unwrap();
        assert!(g.fuses_decode_pairs(&w, 1));
        let x = up(&g, &[1, k], &rnd(&mut rng, k, 5.0));
        let gamma = up(&g, &[k], &rnd(&mut rng, k, 1.5));
        let eps = 1e-6;
        let cos = up(&g, &[max_pos, half], &rnd(&mut rng, max_pos * half, 1.0));
        let sin = up(&g, &[max_pos, half], &rnd(&mut rng, max_pos * half, 1.0));
        let scalar = |v: i32| {
            let mut t = Tensor::zeros_cpu(DType::I32, &[1]).unwrap();
            t.as_i32_mut().unwrap()[0] = v;
            g.upload(&t).unwrap()
        };
        let (pos, slots) = (scalar(max_pos as i32 - 7), scalar(slot));
        let dims = QkvDims {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            style,
        };
        // (q, k, v, k cache, v cache) of each path, caches as f32.
        let mut results = Vec::new();
        for fused in [false, true] {
            let shape = [blocks, nkv, bs, hd];
            let (mut kc, mut vc) = (
                g.zeros(kv_dtype, &shape).unwrap(),
                g.zeros(kv_dtype, &shape).unwrap(),
            );
            let mut q = poisoned(&g, &[1, nh * hd]);
            let mut kk = poisoned(&g, &[1, nkv * hd]);
            let mut v = poisoned(&g, &[1, nkv * hd]);
            let write = KvWrite {
                k_cache: &mut kc,
                v_cache: &mut vc,
                slots: &slots,
            };
            if fused {
                g.rms_norm_matmul_qkv_rope(
                    &x, &gamma, eps, &w, &pos, &cos, &sin, dims, &mut q, &mut kk, &mut v, write,
                )
                .unwrap();
            } else {
                let mut qkv = poisoned(&g, &[1, m]);
                g.rms_norm_matmul(&x, &gamma, eps, &w, &mut qkv).unwrap();
                g.split_qkv_rope(
                    &qkv,
                    &pos,
                    &cos,
                    &sin,
                    dims,
                    &mut q,
                    &mut kk,
                    &mut v,
                    Some(write),
                )
                .unwrap();
            }
            let cache = |t: &Tensor| match kv_dtype {
                DType::BF16 => bf16_bits_to_f32(&down16(&g, t)),
                DType::F8E4M3 => g
                    .download(t)
                    .unwrap()
                    .cpu_bytes()
                    .unwrap()
                    .iter()
                    .map(|&b| sluice_backend::quant::fp8::e4m3_to_f32(b))
                    .collect(),
                _ => down(&g, t),
            };
            results.push([
                down(&g, &q),
                down(&g, &kk),
                down(&g, &v),
                cache(&kc),
                cache(&vc),
            ]);
        }
        let what =
            format!("qkv rope nh={nh} nkv={nkv} hd={hd} k={k} {style:?} {kv_dtype} slot {slot}");
        for (i, name) in ["q", "k", "v", "k cache", "v cache"].iter().enumerate() {
            // 16- and 8-bit caches: one rounding of values that agree to 1e-5 may differ by
            // an ulp (bf16: 2^-8 of the value, FP8 E4M3: 2^-3).
            let tol = match kv_dtype {
                DType::BF16 if i >= 3 => 8e-3,
                DType::F8E4M3 if i >= 3 => 0.13,
                _ => 1e-5,
            };
            check(
                &format!("{what}: {name}"),
                &results[1][i],
                &results[0][i],
                tol,
            );
        }
        if slot < 0 {
            assert!(
                results[1][3].iter().all(|&c| c == 0.0),
                "{what}: skipped slot written"
            );
        } else {
            let written = results[1][3].iter().filter(|&&c| c != 0.0).count();
            assert!(
                written > nkv * hd / 2,
                "{what}: the slot's keys are missing"
            );
        }
    }
}
