//! Every CUDA op against the CPU backend (the oracle) on fresh random inputs over odd
//! shapes. Outputs are poisoned with NaN before each run, so an element the kernel never
//! writes fails the comparison.
//!
//! Runs only where a CUDA driver and GPU exist (the device script runs it on the lent
//! H100); elsewhere each test prints a note and passes, unless SLUICE_REQUIRE_CUDA=1.
//!
//! Tolerances (max |cuda - cpu| / max(1, max |cpu|)):
//! - f32 arithmetic, same order of operations up to reductions: 1e-5;
//! - f32 weights through cuBLASLt (32F compute, no TF32): 1e-5;
//! - 16-bit weights through our GEMV (f32 activations): 1e-5 relative to the f64 sum of
//!   the same 16-bit weights;
//! - 16-bit weights through cuBLASLt (activations rounded to bf16/f16): 1e-2.
//!
//! The attention kernels' tests are in cuda_attention.rs.

mod cuda_common;

use cuda_common::{
    autotuning_on, check, cpu, down, gpu, host, host_i32, matmul_f64, poisoned, rnd, tuned_plans,
    up, up_i32,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::{DType, Device, RopeStyle, Tensor};

/// 16-bit weight bits for values, plus the values they round to.
fn weights16(dtype: DType, v: &[f32], shape: &[usize]) -> (Tensor, Vec<f32>) {
    let mut bytes = Vec::with_capacity(v.len() * 2);
    let mut back = Vec::with_capacity(v.len());
    for &x in v {
        let (b, r) = match dtype {
            DType::BF16 => {
                let h = half::bf16::from_f32(x);
                (h.to_le_bytes(), h.to_f32())
            }
            _ => {
                let h = half::f16::from_f32(x);
                (h.to_le_bytes(), h.to_f32())
            }
        };
        bytes.extend_from_slice(&b);
        back.push(r);
    }
    (Tensor::from_bytes_cpu(dtype, shape, &bytes).unwrap(), back)
}

#[test]
fn matmul_matches_reference_for_every_weight_type_and_row_count() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &(m, k) in &[
        (77usize, 64usize),
        (200, 576),
        (33, 264),
        (1000, 1536),
        (19, 37),
    ] {
        for &t in &[1usize, 2, 3, 4, 5, 17, 64] {
            let x = rnd(&mut rng, t * k, 1.0);
            let wv = rnd(&mut rng, m * k, 0.5);
            for dtype in [DType::BF16, DType::F16, DType::F32] {
                let (w_host, w_vals) = if dtype == DType::F32 {
                    (host(&[m, k], &wv), wv.clone())
                } else {
                    weights16(dtype, &wv, &[m, k])
                };
                let w = g.upload(&w_host).unwrap();
                let xd = up(&g, &[t, k], &x);
                let mut out = poisoned(&g, &[t, m]);
                g.matmul(&xd, &w, &mut out).unwrap();
                let want = matmul_f64(&x, &w_vals, t, m, k);
                let gemv = t <= 4 && k % if dtype == DType::F32 { 4 } else { 8 } == 0;
                let tol = if dtype == DType::F32 || gemv {
                    1e-5
                } else {
                    1e-2
                };
                check(
                    &format!("matmul {dtype} t={t} m={m} k={k}"),
                    &down(&g, &out),
                    &want,
                    tol,
                );
            }
        }
    }
}

#[test]
fn elementwise_ops_match_the_cpu() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // Widths for the scalar norm kernels (7, 2049, 16388: not whole float4s or wider
    // than the vectorised kernel takes) and the vectorised ones (576, 64, 4096, 16384:
    // partly and wholly filled chunks).
    for &(rows, cols) in &[
        (1usize, 7usize),
        (5, 576),
        (3, 2049),
        (33, 64),
        (64, 4096),
        (2, 16384),
        (2, 16388),
    ] {
        let n = rows * cols;
        let (xv, yv, wv) = (
            rnd(&mut rng, n, 3.0),
            rnd(&mut rng, n, 3.0),
            rnd(&mut rng, cols, 2.0),
        );
        // rms_norm (out of place and in place)
        let mut want = host(&[rows, cols], &xv);
        c.rms_norm(
            &host(&[rows, cols], &xv),
            &host(&[cols], &wv),
            1e-5,
            &mut want,
        )
        .unwrap();
        let mut out = poisoned(&g, &[rows, cols]);
        g.rms_norm(
            &up(&g, &[rows, cols], &xv),
            &up(&g, &[cols], &wv),
            1e-5,
            &mut out,
        )
        .unwrap();
        check("rms_norm", &down(&g, &out), want.as_f32().unwrap(), 1e-5);
        let mut x = up(&g, &[rows, cols], &xv);
        g.rms_norm_inplace(&mut x, &up(&g, &[cols], &wv), 1e-5)
            .unwrap();
        check(
            "rms_norm_inplace",
            &down(&g, &x),
            want.as_f32().unwrap(),
            1e-5,
        );

        // add + rms_norm fused: x += y, out = rms_norm(x) * w
        let mut want_x = host(&[rows, cols], &xv);
        let mut want_out = host(&[rows, cols], &xv);
        c.add_rms_norm(
            &mut want_x,
            &host(&[rows, cols], &yv),
            &host(&[cols], &wv),
            1e-5,
            &mut want_out,
        )
        .unwrap();
        let mut x = up(&g, &[rows, cols], &xv);
        let mut out = poisoned(&g, &[rows, cols]);
        g.add_rms_norm(
            &mut x,
            &up(&g, &[rows, cols], &yv),
            &up(&g, &[cols], &wv),
            1e-5,
            &mut out,
        )
        .unwrap();
        check(
            "add_rms_norm x",
            &down(&g, &x),
            want_x.as_f32().unwrap(),
            1e-6,
        );
        check(
            "add_rms_norm out",
            &down(&g, &out),
            want_out.as_f32().unwrap(),
            1e-5,
        );

        // add, bias, scale, softcap
        let mut want = host(&[rows, cols], &xv);
        c.add_inplace(&mut want, &host(&[rows, cols], &yv)).unwrap();
        c.add_bias_inplace(&mut want, &host(&[cols], &wv)).unwrap();
        c.scale_inplace(&mut want, 0.37).unwrap();
        c.softcap_inplace(&mut want, 5.0).unwrap();
        let mut x = up(&g, &[rows, cols], &xv);
        g.add_inplace(&mut x, &up(&g, &[rows, cols], &yv)).unwrap();
        g.add_bias_inplace(&mut x, &up(&g, &[cols], &wv)).unwrap();
        g.scale_inplace(&mut x, 0.37).unwrap();
        g.softcap_inplace(&mut x, 5.0).unwrap();
        check(
            "add/bias/scale/softcap",
            &down(&g, &x),
            want.as_f32().unwrap(),
            1e-5,
        );

        // silu_mul, gelu_mul
        for silu in [true, false] {
            let mut want = host(&[rows, cols], &xv);
            let (a, b) = (host(&[rows, cols], &xv), host(&[rows, cols], &yv));
            if silu {
                c.silu_mul(&a, &b, &mut want).unwrap();
            } else {
                c.gelu_mul(&a, &b, &mut want).unwrap();
            }
            let mut out = poisoned(&g, &[rows, cols]);
            let (a, b) = (up(&g, &[rows, cols], &xv), up(&g, &[rows, cols], &yv));
            if silu {
                g.silu_mul(&a, &b, &mut out).unwrap();
            } else {
                g.gelu_mul(&a, &b, &mut out).unwrap();
            }
            check(
                if silu { "silu_mul" } else { "gelu_mul" },
                &down(&g, &out),
                want.as_f32().unwrap(),
                1e-5,
            );
        }
    }
}

#[test]
fn rope_embedding_gather_argmax_match_the_cpu() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // RoPE, both pairings, scrambled positions.
    for &(t, heads, hd) in &[(1usize, 9usize, 64usize), (7, 4, 256), (5, 3, 8)] {
        let max_pos = 3000;
        let half = hd / 2;
        let cos = rnd(&mut rng, max_pos * half, 1.0);
        let sin = rnd(&mut rng, max_pos * half, 1.0);
        let pos: Vec<i32> = (0..t)
            .map(|_| rng.random_range(0..max_pos as i32))
            .collect();
        let xv = rnd(&mut rng, t * heads * hd, 2.0);
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let mut want = host(&[t, heads * hd], &xv);
            c.rope_inplace(
                &mut want,
                &host_i32(&pos),
                &host(&[max_pos, half], &cos),
                &host(&[max_pos, half], &sin),
                heads,
                hd,
                style,
            )
            .unwrap();
            let mut x = up(&g, &[t, heads * hd], &xv);
            g.rope_inplace(
                &mut x,
                &up_i32(&g, &pos),
                &up(&g, &[max_pos, half], &cos),
                &up(&g, &[max_pos, half], &sin),
                heads,
                hd,
                style,
            )
            .unwrap();
            check(
                &format!("rope {style:?}"),
                &down(&g, &x),
                want.as_f32().unwrap(),
                1e-5,
            );
        }
    }
    // Embedding from a bf16 table (large ids), gather_rows, argmax.
    let (vocab, cols, t) = (50_000usize, 72usize, 13usize);
    let table = rnd(&mut rng, vocab * cols, 1.0);
    let (tb, tv) = weights16(DType::BF16, &table, &[vocab, cols]);
    let ids: Vec<i32> = (0..t).map(|_| rng.random_range(0..vocab as i32)).collect();
    let mut out = poisoned(&g, &[t, cols]);
    g.embedding(&up_i32(&g, &ids), &g.upload(&tb).unwrap(), 1.5, &mut out)
        .unwrap();
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| {
            tv[i as usize * cols..(i as usize + 1) * cols]
                .iter()
                .map(|v| v * 1.5)
        })
        .collect();
    check("embedding bf16", &down(&g, &out), &want, 1e-6);

    let xv = rnd(&mut rng, t * cols, 1.0);
    let rows = [12i32, 0, 5, 5];
    let mut out = poisoned(&g, &[rows.len(), cols]);
    g.gather_rows(&up(&g, &[t, cols], &xv), &up_i32(&g, &rows), &mut out)
        .unwrap();
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| xv[r as usize * cols..(r as usize + 1) * cols].to_vec())
        .collect();
    check("gather_rows", &down(&g, &out), &want, 0.0);

    let (r, v) = (5usize, 49_153usize);
    let mut lv = rnd(&mut rng, r * v, 10.0);
    lv[2 * v + 777] = 50.0; // a clear winner
    lv[3 * v + 10] = 50.0; // a tie: the first index wins
    lv[3 * v + 20] = 50.0;
    // Ties that one thread of the GPU's unrolled scan sees within a batch (1,024 apart)
    // and against the tail past the last whole batch; a NaN never wins.
    lv[4 * v] = f32::NAN;
    lv[4 * v + 5 + 1024] = 60.0;
    lv[4 * v + 5 + 2048] = 60.0;
    lv[v + 3] = 60.0;
    lv[v + 49_152] = 60.0;
    let Device::Cuda(backend) = &g else {
        unreachable!()
    };
    let argmax = |rows: usize, vocab: usize, lv: &[f32]| -> Vec<i32> {
        let mut ids = g.upload(&host_i32(&vec![-1; rows])).unwrap();
        g.argmax(&up(&g, &[rows, vocab], lv), &mut ids).unwrap();
        let mut got = Vec::new();
        g.copy_i32_to_host(&ids, &mut got).unwrap();
        let mut want = c.zeros(DType::I32, &[rows]).unwrap();
        c.argmax(&host(&[rows, vocab], lv), &mut want).unwrap();
        assert_eq!(got, want.as_i32().unwrap(), "argmax {rows} x {vocab}");
        got
    };
    // One block per row and several (`argmax_split_kernel`, 4,096 logits a block, whose
    // scratch each call must leave zeroed for the next: every shape runs twice).
    for split in [false, true] {
        let was = backend.set_argmax_split(split);
        let got = argmax(r, v, &lv);
        assert_eq!(got[2], 777);
        assert_eq!(got[3], 10);
        assert_eq!((got[1], got[4]), (3, 5 + 1024));
        for (rows, vocab) in [
            (1, 1),
            (3, 4096),
            (2, 4097),
            (1, 49_152),
            (300, 8_193),
            (7, 151_936),
        ] {
            for _ in 0..2 {
                let mut lv = rnd(&mut rng, rows * vocab, 10.0);
                let row = |i: usize| i.min(rows - 1) * vocab;
                if vocab > 4096 {
                    // A tie across two blocks: the first index wins.
                    lv[row(0) + 4095] = 99.0;
                    lv[row(0) + 4096] = 99.0;
                    // The winner in the last, partial block.
                    lv[row(1) + vocab - 1] = 99.0;
                }
                // Rows without a value above -inf give 0 (NaN and -inf never win), and a
                // row whose only finite value sits in its last block gives that one.
                if rows >= 3 {
                    for (j, x) in lv[row(2)..row(2) + vocab].iter_mut().enumerate() {
                        *x = if j % 2 == 0 {
                            f32::NAN
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                }
                if rows >= 4 {
                    for (j, x) in lv[row(3)..row(3) + vocab].iter_mut().enumerate() {
                        *x = if j % 3 == 0 {
                            f32::NAN
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                    lv[row(3) + vocab - 2] = -1e30;
                }
                let got = argmax(rows, vocab, &lv);
                if rows >= 3 {
                    assert_eq!(got[2], 0);
                }
                if vocab > 4096 {
                    assert_eq!(got[0], 4095);
                }
            }
        }
        backend.set_argmax_split(was);
    }
}

/// GEMM autotuning (cuda/gemm.rs) times the candidates of a shape only while the tuning
/// window is open (also one first planned outside it), once per shape, and a tuned
/// plan's product is as right as any (1e-2 of an f64 product: bf16 inputs).
#[test]
fn gemm_autotuning_only_inside_the_window() {
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (m, k) = (96usize, 256usize);
    let wv = rnd(&mut rng, m * k, 0.5);
    let w = g.load_weight(host(&[m, k], &wv)).unwrap();
    // (token rows, window open, plans expected to be tuned): a shape planned outside the
    // window is timed when it comes back inside it, and every plan at most once.
    for (t, open, want) in [
        (12usize, false, 0u64),
        (20, true, 1),
        (12, true, 1),
        (12, true, 0),
        (20, true, 0),
        (20, false, 0),
    ] {
        let xv = rnd(&mut rng, t * k, 1.0);
        let before = tuned_plans(&g);
        g.set_gemm_tuning(open);
        let mut out = poisoned(&g, &[t, m]);
        let ran = g.matmul(&up(&g, &[t, k], &xv), &w, &mut out);
        g.set_gemm_tuning(false);
        ran.unwrap();
        let tuned = tuned_plans(&g) - before;
        if autotuning_on() {
            assert_eq!(tuned, want, "{t} rows, window open: {open}");
        }
        check(
            &format!("matmul {t} rows (window open: {open})"),
            &down(&g, &out),
            &matmul_f64(&xv, &wv, t, m, k),
            1e-2,
        );
    }
}

#[test]
fn missing_device_or_bad_spec_is_a_clear_error() {
    let e = Device::parse("tpu", None, CudaWeightType::Auto)
        .err()
        .unwrap();
    assert!(e.to_string().contains("unknown device"), "{e}");
    let e = Device::parse("cuda:x", None, CudaWeightType::Auto)
        .err()
        .unwrap();
    assert!(e.to_string().contains("bad device"), "{e}");
    if !sluice_backend::cuda::driver_present() {
        let e = Device::parse("cuda", None, CudaWeightType::Auto)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no CUDA driver"), "{e}");
    }
}

/// The stacked-projection ops: `glu_packed` (both activations), `split_qkv_rope` (both
/// pairings, GQA and MHA, scrambled positions) and a stacked weight's matmul, each
/// against the CPU reference.
#[test]
fn fused_projection_ops_match_the_cpu() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for &(t, f) in &[(1usize, 7usize), (6, 1536), (33, 100)] {
        let gu = rnd(&mut rng, t * 2 * f, 3.0);
        for silu in [true, false] {
            let mut want = c.zeros(DType::F32, &[t, f]).unwrap();
            c.glu_packed(&host(&[t, 2 * f], &gu), &mut want, silu)
                .unwrap();
            let mut out = poisoned(&g, &[t, f]);
            g.glu_packed(&up(&g, &[t, 2 * f], &gu), &mut out, silu)
                .unwrap();
            check(
                &format!("glu_packed silu={silu}"),
                &down(&g, &out),
                want.as_f32().unwrap(),
                1e-5,
            );
        }
    }
    for &(t, nh, nkv, hd) in &[
        (1usize, 32usize, 8usize, 128usize),
        (5, 9, 3, 64),
        (7, 4, 4, 8),
    ] {
        let max_pos = 2000;
        let half = hd / 2;
        let (cos, sin) = (
            rnd(&mut rng, max_pos * half, 1.0),
            rnd(&mut rng, max_pos * half, 1.0),
        );
        let pos: Vec<i32> = (0..t)
            .map(|_| rng.random_range(0..max_pos as i32))
            .collect();
        let width = (nh + 2 * nkv) * hd;
        let qkv = rnd(&mut rng, t * width, 2.0);
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let dims = sluice_backend::QkvDims {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                style,
            };
            let mut w: Vec<Tensor> = [nh, nkv, nkv]
                .iter()
                .map(|&h| c.zeros(DType::F32, &[t, h * hd]).unwrap())
                .collect();
            let (wq, rest) = w.split_at_mut(1);
            let (wk, wv) = rest.split_at_mut(1);
            c.split_qkv_rope(
                &host(&[t, width], &qkv),
                &host_i32(&pos),
                &host(&[max_pos, half], &cos),
                &host(&[max_pos, half], &sin),
                dims,
                &mut wq[0],
                &mut wk[0],
                &mut wv[0],
                None,
            )
            .unwrap();
            let mut gq = poisoned(&g, &[t, nh * hd]);
            let mut gk = poisoned(&g, &[t, nkv * hd]);
            let mut gv = poisoned(&g, &[t, nkv * hd]);
            g.split_qkv_rope(
                &up(&g, &[t, width], &qkv),
                &up_i32(&g, &pos),
                &up(&g, &[max_pos, half], &cos),
                &up(&g, &[max_pos, half], &sin),
                dims,
                &mut gq,
                &mut gk,
                &mut gv,
                None,
            )
            .unwrap();
            for (name, got, want) in [("q", &gq, &wq[0]), ("k", &gk, &wk[0]), ("v", &gv, &wv[0])] {
                check(
                    &format!("split_qkv_rope {style:?} {name}"),
                    &down(&g, got),
                    want.as_f32().unwrap(),
                    1e-5,
                );
            }
            // The same with the K/V cache write fused in (f32 and bf16 caches, a skipped
            // slot), against the CPU's kv_write of its results.
            let (bs, blocks) = (16usize, 64usize);
            let slots: Vec<i32> = (0..t as i32)
                .map(|i| if i == 1 { -1 } else { 1000 - 7 * i })
                .collect();
            let shape = [blocks, nkv, bs, hd];
            let mut ck = c.zeros(DType::F32, &shape).unwrap();
            let mut cv = c.zeros(DType::F32, &shape).unwrap();
            c.kv_write(&wk[0], &wv[0], &mut ck, &mut cv, &host_i32(&slots))
                .unwrap();
            // FP8: 3 mantissa bits, so half an ulp is up to 2^-4 of the value.
            for (kv_dtype, tol) in [
                (DType::F32, 1e-5),
                (DType::BF16, 1e-2),
                (DType::F8E4M3, 6.5e-2),
            ] {
                let mut gkc = g.zeros(kv_dtype, &shape).unwrap();
                let mut gvc = g.zeros(kv_dtype, &shape).unwrap();
                let gslots = up_i32(&g, &slots);
                g.split_qkv_rope(
                    &up(&g, &[t, width], &qkv),
                    &up_i32(&g, &pos),
                    &up(&g, &[max_pos, half], &cos),
                    &up(&g, &[max_pos, half], &sin),
                    dims,
                    &mut gq,
                    &mut gk,
                    &mut gv,
                    Some(sluice_backend::KvWrite {
                        k_cache: &mut gkc,
                        v_cache: &mut gvc,
                        slots: &gslots,
                    }),
                )
                .unwrap();
                for (name, got, want) in [("k cache", &gkc, &ck), ("v cache", &gvc, &cv)] {
                    let got = g.download(got).unwrap();
                    let mut gf = vec![0f32; got.numel()];
                    if kv_dtype == DType::F8E4M3 {
                        for (o, &b) in gf.iter_mut().zip(got.cpu_bytes().unwrap()) {
                            *o = sluice_backend::quant::fp8::e4m3_to_f32(b);
                        }
                    } else {
                        sluice_backend::quant::dequantize_row(
                            kv_dtype,
                            got.cpu_bytes().unwrap(),
                            &mut gf,
                        )
                        .unwrap();
                    }
                    check(
                        &format!("split_qkv_rope {style:?} {name} {kv_dtype}"),
                        &gf,
                        want.as_f32().unwrap(),
                        tol,
                    );
                }
            }
        }
    }
    // A stacked weight multiplies like its parts side by side.
    let (t, k) = (3usize, 256usize);
    let parts: Vec<Vec<f32>> = [64usize, 16, 16]
        .iter()
        .map(|&m| rnd(&mut rng, m * k, 1.0))
        .collect();
    let x = rnd(&mut rng, t * k, 1.0);
    let stacked = g
        .load_weights_stacked(parts.iter().map(|p| host(&[p.len() / k, k], p)).collect())
        .unwrap();
    assert_eq!(stacked.shape(), &[96, k]);
    let mut out = poisoned(&g, &[t, 96]);
    g.matmul(&up(&g, &[t, k], &x), &stacked, &mut out).unwrap();
    let got = down(&g, &out);
    let all: Vec<f32> = parts.concat();
    let want = matmul_f64(&x, &all, t, 96, k);
    check("stacked weight matmul", &got, &want, 1e-2);
}

/// `Device::sample` on the GPU picks what the CPU reference picks (same adjustments,
/// same uniforms) for greedy rows and every truncation, on a 49k vocabulary, with biases,
/// repetition / presence / frequency penalties on tokens among each row's largest
/// logits (so that they change the choice), and pending tokens (overlapped steps) read
/// from a token tensor, with and without an entry of their own; both leave the logits as
/// they were.
#[test]
fn sampling_matches_the_cpu_reference() {
    use sluice_backend::{LogitAdjust, SampleParams};
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let vocab = 49_157;
    let n = 96;
    let logits = rnd(&mut rng, n * vocab, 4.0);
    // The step's input tokens: row i's pending token at row 2 i + 1.
    let mut tokens = vec![0i32; 2 * n];
    let mut rows = Vec::new();
    let mut adjust = Vec::new();
    for i in 0..n {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let mut order: Vec<u32> = (0..vocab as u32).collect();
        order.select_nth_unstable_by(8, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        let start = adjust.len() as u32;
        for k in 0..(i % 5) * 7 {
            let token = if k % 2 == 0 {
                order[k / 2 % 8]
            } else {
                rng.random_range(0..vocab as u32)
            };
            adjust.push(LogitAdjust {
                token,
                bias: if k % 3 == 0 {
                    rng.random_range(-2.0..2.0)
                } else {
                    0.0
                },
                seen: k % 4 != 1,
                count: [0, 1, 3][k % 3],
            });
        }
        // one entry per token within a row
        let mut seen = std::collections::HashSet::new();
        let mut kept: Vec<LogitAdjust> = adjust.split_off(start as usize);
        kept.retain(|a| seen.insert(a.token));
        adjust.extend(kept);
        // Pending: the row's largest logit (an entry of its own when the row has none
        // for it), or a token with an entry, or none.
        let pending_token_row = match i % 3 {
            0 => -1,
            _ => (2 * i + 1) as i32,
        };
        tokens[2 * i + 1] = match (i % 3, adjust.get(start as usize)) {
            (2, Some(a)) => a.token as i32,
            _ => order[0] as i32,
        };
        rows.push(SampleParams {
            temperature: [0.0, 0.7, 1.0, 1.3][i % 4],
            top_k: [0, 1, 5, 50, 1000][i % 5],
            top_p: [1.0, 0.9, 0.5, 0.99][(i / 4) % 4],
            min_p: [0.0, 0.05, 0.0][i % 3],
            uniform: rng.random_range(0.0..1.0),
            repetition: [1.0, 1.3, 1.1][i % 3],
            presence: [0.0, 0.6][i % 2],
            frequency: [0.0, 0.4, 1.1][(i / 2) % 3],
            pending_token_row,
            adjust_start: start,
            adjust_len: adjust.len() as u32 - start,
        });
    }
    let mut want_l = host(&[n, vocab], &logits);
    let mut want = c.zeros(DType::I32, &[n]).unwrap();
    let toks = host_i32(&tokens);
    c.sample(&mut want_l, &rows, &adjust, Some(&toks), &mut want)
        .unwrap();
    let mut got_l = up(&g, &[n, vocab], &logits);
    let mut ids = g.upload(&host_i32(&vec![-1; n])).unwrap();
    let toks_dev = g.upload(&toks).unwrap();
    g.sample(&mut got_l, &rows, &adjust, Some(&toks_dev), &mut ids)
        .unwrap();
    // A pending row past the tokens is an error, not a read past the buffer.
    let mut bad = rows.clone();
    bad[3].pending_token_row = 2 * n as i32;
    assert!(g
        .sample(&mut got_l, &bad, &adjust, Some(&toks_dev), &mut ids)
        .is_err());
    assert!(g
        .sample(&mut got_l, &rows, &adjust, None, &mut ids)
        .is_err());
    let mut got = Vec::new();
    g.copy_i32_to_host(&ids, &mut got).unwrap();
    // Both samplers put the raw logits back (log-probabilities read them after the draw).
    assert!(
        want_l.as_f32().unwrap() == logits.as_slice(),
        "CPU sampler left adjusted logits"
    );
    assert!(
        down(&g, &got_l) == logits,
        "GPU sampler left adjusted logits"
    );
    let want = want.as_i32().unwrap();
    // The penalties and pending tokens matter: greedy rows that leave their raw argmax.
    let moved = (0..n)
        .filter(|&i| rows[i].temperature == 0.0 || rows[i].top_k == 1)
        .filter(|&i| {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let top = (0..vocab).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            want[i] != top as i32
        })
        .count();
    assert!(
        moved >= 5,
        "only {moved} greedy rows changed by the adjustments"
    );
    let differ: Vec<usize> = (0..n).filter(|&i| got[i] != want[i]).collect();
    eprintln!("sampling: {} of {n} rows differ: {differ:?}", differ.len());
    // A draw landing within f32 rounding of a cumulative boundary may pick the neighbour.
    assert!(
        differ.len() <= 1,
        "rows {differ:?}: {:?} vs {:?}",
        &got,
        want
    );
}

/// Q8_0 weights on the GPU (repacked at load): the GEMV (1-4 rows) and the quantized
/// tensor-core matmul (more rows; kernels/qmma.cu) against an f64 product with the
/// dequantized weights; a stacked Q8_0 weight; an odd row length falls back to bf16.
#[test]
fn q8_0_matmul_matches_the_dequantized_reference() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for &(m, k) in &[(77usize, 64usize), (1000, 576), (33, 4096)] {
        let wv = rnd(&mut rng, m * k, 0.5);
        let mut bytes = vec![0u8; DType::Q8_0.row_bytes(k) * m];
        sluice_backend::quant::quantize_row(DType::Q8_0, &wv, &mut bytes).unwrap();
        let mut deq = vec![0f32; m * k];
        sluice_backend::quant::dequantize_row(DType::Q8_0, &bytes, &mut deq).unwrap();
        let w_host = Tensor::from_bytes_cpu(DType::Q8_0, &[m, k], &bytes).unwrap();
        let w = g.load_weight(w_host).unwrap();
        assert_eq!(w.dtype(), DType::Q8_0);
        for &t in &[1usize, 2, 3, 4, 5, 17] {
            let x = rnd(&mut rng, t * k, 1.0);
            let mut out = poisoned(&g, &[t, m]);
            g.matmul(&up(&g, &[t, k], &x), &w, &mut out).unwrap();
            let want = matmul_f64(&x, &deq, t, m, k);
            let tol = if t <= 4 { 1e-5 } else { 1e-2 };
            check(
                &format!("matmul Q8_0 t={t} m={m} k={k}"),
                &down(&g, &out),
                &want,
                tol,
            );
        }
    }
    // Stacked Q8_0 parts multiply like the parts side by side.
    let (t, k) = (2usize, 128usize);
    let parts: Vec<Vec<f32>> = [40usize, 8, 8]
        .iter()
        .map(|&m| rnd(&mut rng, m * k, 1.0))
        .collect();
    let mut deq_all = Vec::new();
    let hosts: Vec<Tensor> = parts
        .iter()
        .map(|p| {
            let rows = p.len() / k;
            let mut b = vec![0u8; DType::Q8_0.row_bytes(k) * rows];
            sluice_backend::quant::quantize_row(DType::Q8_0, p, &mut b).unwrap();
            let mut d = vec![0f32; p.len()];
            sluice_backend::quant::dequantize_row(DType::Q8_0, &b, &mut d).unwrap();
            deq_all.extend(d);
            Tensor::from_bytes_cpu(DType::Q8_0, &[rows, k], &b).unwrap()
        })
        .collect();
    let stacked = g.load_weights_stacked(hosts).unwrap();
    assert_eq!(
        (stacked.dtype(), stacked.shape()),
        (DType::Q8_0, &[56, k][..])
    );
    let x = rnd(&mut rng, t * k, 1.0);
    let mut out = poisoned(&g, &[t, 56]);
    g.matmul(&up(&g, &[t, k], &x), &stacked, &mut out).unwrap();
    check(
        "stacked Q8_0",
        &down(&g, &out),
        &matmul_f64(&x, &deq_all, t, 56, k),
        1e-5,
    );
    // --dtype q8_0 quantizes an f32 matrix at load; rows of 40 are not whole blocks.
    if let Some(q) = gpu(CudaWeightType::Q8_0) {
        let w = q
            .load_weight(host(&[3, 64], &rnd(&mut rng, 192, 1.0)))
            .unwrap();
        assert_eq!(w.dtype(), DType::Q8_0);
        let w = q
            .load_weight(host(&[3, 40], &rnd(&mut rng, 120, 1.0)))
            .unwrap();
        assert_eq!(w.dtype(), DType::BF16);
    }
}

/// Step uploads go through a pinned staging region (cuda/pinned.rs) that is reused only
/// after a stream synchronization: many uploads between two synchronizations, more than
/// the region holds (so the later ones take the pageable path), each from a host buffer
/// rewritten right after the call, all arrive as they were at the call.
#[test]
fn uploads_arrive_as_they_were_when_called_past_the_pinned_region() {
    let Some(g) = gpu(CudaWeightType::Bf16) else {
        return;
    };
    let n = 60_001; // 240 KB per upload, 48 uploads: over 11 MB between synchronizations
    for round in 0..2 {
        let mut src = vec![0i32; n];
        let mut dsts = Vec::new();
        for u in 0..48 {
            for (i, v) in src.iter_mut().enumerate() {
                *v = (round * 1_000_000 + u * 10_000 + i) as i32;
            }
            let mut d = g.zeros(DType::I32, &[n]).unwrap();
            g.copy_i32_from_host(&mut d, &src).unwrap();
            // Rewritten at once: the copy must not read these bytes later.
            src.iter_mut().for_each(|v| *v = -1);
            dsts.push(d);
        }
        for (u, d) in dsts.iter().enumerate() {
            let got = g.download(d).unwrap();
            let got = got.as_i32().unwrap();
            let want: Vec<i32> = (0..n)
                .map(|i| (round * 1_000_000 + u * 10_000 + i) as i32)
                .collect();
            assert!(
                got == want.as_slice(),
                "round {round} upload {u} arrived changed"
            );
        }
    }
}

/// Rows of logits for `logprobs`: random (odd vocabularies, one shorter than 20), with
/// many ties at the cut, with NaN, infinities and signed zeros, all -inf, all NaN.
fn logprob_rows(rng: &mut ChaCha8Rng, vocab: usize, n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n * vocab);
    for r in 0..n {
        let row: Vec<f32> = (0..vocab)
            .map(|i| {
                let x: f32 = rng.random_range(-6.0..6.0);
                match r % 8 {
                    // Few distinct values: ties cross the top-20 cut.
                    1 => (x * 0.5).round(),
                    2 if i % 97 == 0 => f32::NAN,
                    2 if i % 89 == 0 => f32::NEG_INFINITY,
                    3 => {
                        if x > 0.0 {
                            -0.0
                        } else {
                            0.0
                        }
                    }
                    4 => f32::NEG_INFINITY,
                    5 if r % 16 == 5 => f32::NAN,
                    6 if i == 7 => f32::INFINITY,
                    _ => x * 3.0,
                }
            })
            .collect();
        v.extend(row);
    }
    v
}

/// `Device::logprobs` on the GPU against the CPU reference (`sample::logprob_record`):
/// the same alternatives in the same order (ids exact, ties by id, NaN never listed,
/// signed zeros equal), log-probabilities within 2e-6 of the reference's magnitude
/// (the GPU's log-sum-exp sums in another order), NaN where the reference has NaN.
#[test]
fn logprobs_match_the_cpu_reference() {
    use sluice_backend::{LogprobAsk, LOGPROB_RECORD};
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    for &(vocab, rows) in &[(49_157usize, 40usize), (7, 9), (1_001, 17), (151_936, 5)] {
        let logits = logprob_rows(&mut rng, vocab, rows);
        let ids: Vec<i32> = (0..rows)
            .map(|r| {
                if r % 11 == 10 {
                    -1
                } else {
                    rng.random_range(0..vocab as i32)
                }
            })
            .collect();
        // Rows asked in a scrambled order, some twice, with n from 0 to past the limit.
        let mut asks: Vec<LogprobAsk> = (0..rows)
            .map(|r| LogprobAsk {
                row: ((r * 7 + 3) % rows) as u32,
                n: [1u32, 5, 20, 0, 25, 2][r % 6],
            })
            .collect();
        asks.push(LogprobAsk { row: 0, n: 20 });
        let n_out = asks.len() * LOGPROB_RECORD;
        let mut want = c.zeros(DType::F32, &[n_out]).unwrap();
        c.logprobs(
            &host(&[rows, vocab], &logits),
            &host_i32(&ids),
            &asks,
            &mut want,
        )
        .unwrap();
        let mut got_t = up(&g, &[n_out], &vec![f32::NAN; n_out]);
        let ids_dev = g.upload(&host_i32(&ids)).unwrap();
        g.logprobs(
            &up(&g, &[rows, vocab], &logits),
            &ids_dev,
            &asks,
            &mut got_t,
        )
        .unwrap();
        let got = down(&g, &got_t);
        let want = want.as_f32().unwrap();
        for (k, a) in asks.iter().enumerate() {
            let (gr, wr) = (
                &got[k * LOGPROB_RECORD..(k + 1) * LOGPROB_RECORD],
                &want[k * LOGPROB_RECORD..(k + 1) * LOGPROB_RECORD],
            );
            let ctx = format!("vocab {vocab}, ask {k} (row {}, n {})", a.row, a.n);
            let scale = wr[1].abs().max(1.0) as f64;
            let close = |x: f32, y: f32| {
                (x.is_nan() && y.is_nan())
                    || x == y
                    || ((x - y).abs() as f64) <= 2e-6 * scale.max(y.abs() as f64)
            };
            assert!(close(gr[0], wr[0]), "{ctx}: token {} vs {}", gr[0], wr[0]);
            assert!(close(gr[1], wr[1]), "{ctx}: lse {} vs {}", gr[1], wr[1]);
            for j in 0..sluice_backend::MAX_TOP_LOGPROBS {
                let (gi, wi) = (
                    gr[2 + 2 * j].to_bits() as i32,
                    wr[2 + 2 * j].to_bits() as i32,
                );
                assert_eq!(gi, wi, "{ctx}: alternative {j} id");
                if wi >= 0 {
                    let (gl, wl) = (gr[3 + 2 * j], wr[3 + 2 * j]);
                    assert!(close(gl, wl), "{ctx}: alternative {j}: {gl} vs {wl}");
                }
            }
        }
    }
}
