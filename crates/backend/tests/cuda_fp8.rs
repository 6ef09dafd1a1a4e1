//! FP8 (E4M3) weights on the GPU (`--dtype fp8`, crates/backend/src/cuda/fp8.rs).
//!
//! CPU part (runs everywhere, CI included): the host E4M3 quantizer over every one of the
//! 256 codes (decoding, round trips, ties to even, saturation, NaN), against a
//! brute-force nearest-value search on random floats, the GPU's bit-trick decoding
//! replayed on the host, and the CPU backend's refusal of the type.
//!
//! GPU part (skipped without a GPU unless SLUICE_REQUIRE_CUDA=1): quantization at load
//! (codes and scale equal the host's), the device's activation quantizer against the
//! host's bit for bit, the GEMV (1-4 rows) and the GEMM (5+ rows) on odd shapes, stacked
//! weights, the bf16 fallback, and the FP8 GEMM replayed from a CUDA graph. Outputs are
//! poisoned with NaN first. Tolerances (max |gpu - ref| / max(1, max |ref|)):
//! - GEMV: 1e-5 against the f64 product of x and the dequantized FP8 weight;
//! - FP8 GEMM (sm_89+, M a multiple of 16): 1e-3 against the f64 product of x quantized
//!   by the host quantizer (the device's codes and scale) and the dequantized weight; the
//!   error against unquantized x is printed (E4M3 rounds x by up to 1/16 relative);
//! - bf16 fallback GEMM: 1e-4 against the f64 product of the same bf16-rounded operands.

mod cuda_common;

use cuda_common::{byte_perm, check, down, gpu, host, poisoned, rel_err, rnd, up};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::fp8::{
    dequantize_e4m3, e4m3_from_f32, e4m3_to_f32, quantize_e4m3, tensor_scale, E4M3_MAX,
};
use sluice_backend::cuda::{CudaBackend, CudaWeightType};
use sluice_backend::{BackendError, DType, Device, Tensor};

// ---------------------------------------------------------------------------------------
// CPU: the host quantizer.

/// Every finite positive E4M3 value with its code, ascending.
fn positive_codes() -> Vec<(u8, f32)> {
    (0u8..=0x7e).map(|c| (c, e4m3_to_f32(c))).collect()
}

#[test]
fn every_code_decodes_to_its_value() {
    // Independent of `e4m3_to_f32`'s arithmetic: exponent and mantissa fields by hand.
    for c in 0..=255u8 {
        let (s, e, m) = (c >> 7, (c >> 3) & 15, c & 7);
        let v = e4m3_to_f32(c);
        if e == 15 && m == 7 {
            assert!(v.is_nan(), "{c:#04x} is NaN");
            continue;
        }
        let mag = if e == 0 {
            m as f64 / 8.0 * 2f64.powi(-6)
        } else {
            (1.0 + m as f64 / 8.0) * 2f64.powi(e as i32 - 7)
        };
        let want = if s == 1 { -mag } else { mag };
        assert_eq!(v as f64, want, "{c:#04x}");
        assert_eq!(v.is_sign_negative(), s == 1, "{c:#04x} sign");
    }
    // Landmarks of the OCP E4M3 table.
    for (c, v) in [
        (0x00u8, 0.0f32),
        (0x01, 0.001953125),
        (0x07, 0.013671875),
        (0x08, 0.015625),
        (0x38, 1.0),
        (0x3f, 1.875),
        (0x77, 240.0),
        (0x7e, 448.0),
        (0xb8, -1.0),
        (0xfe, -448.0),
    ] {
        assert_eq!(e4m3_to_f32(c), v, "{c:#04x}");
    }
    assert!(e4m3_to_f32(0x80) == 0.0 && e4m3_to_f32(0x80).is_sign_negative());
    // Positive codes are strictly increasing in value (what nearest-value search needs).
    let pos = positive_codes();
    assert!(pos.windows(2).all(|w| w[0].1 < w[1].1));
    assert_eq!(E4M3_MAX, 448.0);
}

#[test]
fn every_finite_code_round_trips() {
    for c in 0..=255u8 {
        let v = e4m3_to_f32(c);
        if v.is_nan() {
            continue;
        }
        assert_eq!(e4m3_from_f32(v), c, "{c:#04x} = {v}");
    }
    // NaN keeps its sign, in the NaN code.
    assert_eq!(e4m3_from_f32(f32::NAN), 0x7f);
    assert_eq!(e4m3_from_f32(-f32::NAN), 0xff);
}

#[test]
fn ties_round_to_even_and_large_values_saturate() {
    let pos = positive_codes();
    for w in pos.windows(2) {
        let ((c0, v0), (c1, v1)) = (w[0], w[1]);
        // The midpoint is exact in f32 (E4M3 values have 4 significant bits).
        let mid = (v0 + v1) / 2.0;
        assert_eq!(mid as f64, (v0 as f64 + v1 as f64) / 2.0);
        let even = if c0 % 2 == 0 { c0 } else { c1 };
        assert_eq!(e4m3_from_f32(mid), even, "tie {v0}..{v1}");
        assert_eq!(e4m3_from_f32(-mid), even | 0x80, "tie -{v0}..-{v1}");
        // Just off the midpoint: the nearer one.
        assert_eq!(e4m3_from_f32(f32::from_bits(mid.to_bits() - 1)), c0);
        assert_eq!(e4m3_from_f32(f32::from_bits(mid.to_bits() + 1)), c1);
    }
    // Below half the smallest subnormal: zero (2^-10 is a tie with 0, which is even).
    let half_min = 2f32.powi(-10);
    assert_eq!(e4m3_from_f32(half_min), 0x00);
    assert_eq!(e4m3_from_f32(f32::from_bits(half_min.to_bits() + 1)), 0x01);
    assert_eq!(e4m3_from_f32(-half_min), 0x80);
    assert_eq!(e4m3_from_f32(f32::from_bits(1)), 0x00);
    // Saturation: 448 and everything above (the 464 tie included) stay at 448.
    for v in [
        448.0f32,
        450.0,
        464.0,
        465.0,
        480.0,
        1e6,
        3.4e38,
        f32::INFINITY,
    ] {
        assert_eq!(e4m3_from_f32(v), 0x7e, "{v}");
        assert_eq!(e4m3_from_f32(-v), 0xfe, "-{v}");
    }
}

/// Brute force: the code of the nearest value, ties to the even code, saturating.
fn nearest_code(v: f32) -> u8 {
    if v.is_nan() {
        return if v.is_sign_negative() { 0xff } else { 0x7f };
    }
    let a = v.abs() as f64;
    let mut best = (f64::INFINITY, 0u8);
    for (c, cv) in positive_codes() {
        let d = (a - cv as f64).abs();
        if d < best.0 || (d == best.0 && c % 2 == 0) {
            best = (d, c);
        }
    }
    best.1 | if v.is_sign_negative() { 0x80 } else { 0 }
}

#[test]
fn quantizer_matches_a_brute_force_nearest_search() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for i in 0..200_000 {
        let v = if i % 2 == 0 {
            // Log-uniform magnitudes over the whole E4M3 range and beyond.
            let e = rng.random_range(-14.0f32..10.0);
            let s = if rng.random::<bool>() { -1.0 } else { 1.0 };
            s * e.exp2()
        } else {
            // Any f32 bit pattern (subnormals, infinities and NaNs included).
            f32::from_bits(rng.random::<u32>())
        };
        assert_eq!(
            e4m3_from_f32(v),
            nearest_code(v),
            "{v:e} ({:#010x})",
            v.to_bits()
        );
    }
}

/// The GPU's decoding (kernels/fp8.cu `fp8_unpack16`), replayed on the host: `__byte_perm`
/// as the CUDA documentation defines it (`cuda_common::byte_perm`), the two logic ops,
/// and the f16 read.
fn gpu_pair(v: u32) -> (f32, f32) {
    let h = (v & 0x8000_8000) | ((v >> 1) & 0x3f80_3f80);
    (
        f16::from_bits(h as u16).to_f32(),
        f16::from_bits((h >> 16) as u16).to_f32(),
    )
}

fn gpu_unpack16(r: [u32; 4]) -> [f32; 16] {
    let mut f = [0f32; 16];
    for (i, &u) in r.iter().enumerate() {
        let (a, b) = gpu_pair(byte_perm(u, 0, 0x1404));
        let (c, d) = gpu_pair(byte_perm(u, 0, 0x3424));
        f[4 * i..4 * i + 4].copy_from_slice(&[a, b, c, d]);
    }
    f
}

#[test]
fn the_gpu_decoding_trick_is_exact_for_every_code_in_every_position() {
    for c in 0..=255u8 {
        let want = e4m3_to_f32(c);
        for pos in 0..16 {
            // Code c at `pos`, other codes around it (element i of a load is byte i).
            let mut bytes = [0u8; 16];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = if i == pos {
                    c
                } else {
                    (c ^ 0x5a).wrapping_add((i as u8).wrapping_mul(37))
                };
            }
            let words: [u32; 4] = std::array::from_fn(|w| {
                u32::from_le_bytes(bytes[4 * w..4 * w + 4].try_into().unwrap())
            });
            let f = gpu_unpack16(words);
            for (i, &b) in bytes.iter().enumerate() {
                let got = f[i] * 256.0;
                let v = e4m3_to_f32(b);
                if v.is_nan() {
                    // The NaN codes decode to 480: the quantizer never writes them.
                    assert_eq!(got.abs(), 480.0);
                } else {
                    assert_eq!(got.to_bits(), v.to_bits(), "code {b:#04x} at {i}");
                }
            }
            if !want.is_nan() {
                assert_eq!(f[pos] * 256.0, want);
            }
        }
    }
}

#[test]
fn tensor_quantizer_scales_by_amax() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x: Vec<f32> = (0..4096).map(|_| rng.random_range(-3.0f32..3.0)).collect();
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (q, s) = quantize_e4m3(&x);
    assert_eq!(s, amax / 448.0);
    assert_eq!(s, tensor_scale(amax));
    let imax = x.iter().position(|v| v.abs() == amax).unwrap();
    assert_eq!(q[imax] & 0x7f, 0x7e, "amax maps to 448");
    // Each value within half a step: 2^-4 relative for normals, 2^-10 * s below.
    for (v, d) in x.iter().zip(dequantize_e4m3(&q, s)) {
        let err = (v - d).abs();
        assert!(
            err <= (v.abs() / 16.0 + s * 2f32.powi(-10)) * 1.0001,
            "{v} -> {d}"
        );
    }
    // All zeros: scale 1, codes 0; NaN is ignored by the amax.
    assert_eq!(quantize_e4m3(&[0.0; 32]), (vec![0u8; 32], 1.0));
    let (q, s) = quantize_e4m3(&[f32::NAN, 224.0, -1.0, 0.0]);
    assert_eq!(s, 0.5);
    assert_eq!(&q[1..], &[0x7e, 0xc0, 0x00]);
}

#[test]
fn weight_type_names_and_cpu_refusal() {
    for s in ["fp8", "FP8", "f8", "fp8_e4m3", "E4M3"] {
        assert_eq!(CudaWeightType::parse(s), Some(CudaWeightType::Fp8), "{s}");
    }
    // The CPU backend has no FP8 kernels: a clear Unsupported error, not garbage.
    let cpu = Device::cpu(Some(1));
    let w = Tensor::from_bytes_cpu(DType::F8E4M3, &[4, 16], &[0x38; 64]).unwrap();
    let x = Tensor::from_f32_cpu(&[1, 16], &[1.0; 16]).unwrap();
    let mut out = Tensor::from_f32_cpu(&[1, 4], &[0.0; 4]).unwrap();
    let err = cpu.matmul(&x, &w, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Unsupported {
                dtype: DType::F8E4M3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("F8_E4M3"), "{err}");
    let mut row = [0f32; 16];
    assert!(sluice_backend::quant::dequantize_row(DType::F8E4M3, &[0; 16], &mut row).is_err());
    assert_eq!(DType::F8E4M3.row_bytes(4096), 4096);
}

// ---------------------------------------------------------------------------------------
// GPU.

fn backend(g: &Device) -> &CudaBackend {
    match g {
        Device::Cuda(c) => c,
        Device::Cpu(_) => unreachable!("a CUDA device"),
    }
}

/// `x[t, k] · w[m, k]ᵀ` in f64, rows of w spread over the cores.
fn matmul_f64(x: &[f32], w: &[f32], t: usize, m: usize, k: usize) -> Vec<f32> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(m.max(1));
    let per = m.div_ceil(threads).max(1);
    let cols: Vec<Vec<f32>> = std::thread::scope(|s| {
        let hs: Vec<_> = w
            .chunks(per * k)
            .map(|wc| {
                s.spawn(move || {
                    let rows = wc.len() / k;
                    let mut o = vec![0f32; t * rows];
                    for i in 0..t {
                        let xr = &x[i * k..(i + 1) * k];
                        for j in 0..rows {
                            let wr = &wc[j * k..(j + 1) * k];
                            let s: f64 =
                                xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                            o[i * rows + j] = s as f32;
                        }
                    }
                    o
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = vec![0f32; t * m];
    let mut j0 = 0;
    for c in cols {
        let rows = c.len() / t;
        for i in 0..t {
            out[i * m + j0..i * m + j0 + rows].copy_from_slice(&c[i * rows..(i + 1) * rows]);
        }
        j0 += rows;
    }
    out
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// An FP8 weight loaded from f32 values: the device tensor, its host codes and scale
/// (checked equal to the device's), and the dequantized values.
fn fp8_weight(g: &Device, wv: &[f32], m: usize, k: usize) -> (Tensor, Vec<f32>, f32) {
    let w = g.load_weight(host(&[m, k], wv)).unwrap();
    assert_eq!((w.dtype(), w.shape()), (DType::F8E4M3, &[m, k][..]));
    let (codes, scale) = quantize_e4m3(wv);
    let dev_codes = g.download(&w).unwrap();
    assert!(
        dev_codes.cpu_bytes().unwrap() == &codes[..],
        "device codes differ from the host quantizer's"
    );
    assert_eq!(backend(g).fp8_scale(&w).unwrap(), scale);
    (w, dequantize_e4m3(&codes, scale), scale)
}

/// Runs `x · wᵀ` for an FP8 weight and checks it against the reference of the path taken:
/// GEMV (t <= 4), FP8 GEMM (native and M % 16 == 0) or the bf16 fallback.
#[allow(clippy::too_many_arguments)]
fn check_fp8_matmul(
    g: &Device,
    name: &str,
    x: &[f32],
    w: &Tensor,
    w_deq: &[f32],
    t: usize,
    m: usize,
    k: usize,
) {
    let xd = up(g, &[t, k], x);
    let mut out = poisoned(g, &[t, m]);
    g.matmul(&xd, w, &mut out).unwrap();
    let got = down(g, &out);
    let exact = matmul_f64(x, w_deq, t, m, k);
    if t <= 4 {
        check(
            &format!("{name} GEMV t={t} m={m} k={k}"),
            &got,
            &exact,
            1e-5,
        );
    } else if backend(g).fp8_tensor_cores() && m.is_multiple_of(16) {
        let (xq, xs) = quantize_e4m3(x);
        let want = matmul_f64(&dequantize_e4m3(&xq, xs), w_deq, t, m, k);
        check(
            &format!("{name} FP8 GEMM t={t} m={m} k={k}"),
            &got,
            &want,
            1e-3,
        );
        let e = rel_err(&got, &exact);
        eprintln!("  against unquantized x: rel err {e:.2e}");
        assert!(e < 0.1, "{name}: {e} against unquantized x");
    } else {
        let want = matmul_f64(&round_bf16(x), &round_bf16(w_deq), t, m, k);
        check(
            &format!("{name} bf16 GEMM t={t} m={m} k={k}"),
            &got,
            &want,
            1e-4,
        );
    }
}

#[test]
fn fp8_weights_are_quantized_at_load() {
    let Some(g) = gpu(CudaWeightType::Fp8) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    // From f32 and from bf16 files: codes and scale as the host quantizer makes them.
    let (m, k) = (37usize, 96usize);
    let wv = rnd(&mut rng, m * k, 0.7);
    fp8_weight(&g, &wv, m, k);
    let wb: Vec<u8> = wv
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    let w = g
        .load_weight(Tensor::from_bytes_cpu(DType::BF16, &[m, k], &wb).unwrap())
        .unwrap();
    let (codes, scale) = quantize_e4m3(&round_bf16(&wv));
    assert_eq!(g.download(&w).unwrap().cpu_bytes().unwrap(), &codes[..]);
    assert_eq!(backend(&g).fp8_scale(&w).unwrap(), scale);
    // Rows that are not whole 16-byte loads stay bf16; embeddings (row tables) too.
    let w = g
        .load_weight(host(&[3, 40], &rnd(&mut rng, 120, 1.0)))
        .unwrap();
    assert_eq!(w.dtype(), DType::BF16);
    let e = g
        .load_weight_rows(host(&[5, 64], &rnd(&mut rng, 320, 1.0)))
        .unwrap();
    assert_eq!(e.dtype(), DType::BF16);
    // Norms stay f32.
    let n = g.load_weight(host(&[64], &rnd(&mut rng, 64, 1.0))).unwrap();
    assert_eq!(n.dtype(), DType::F32);
    // The scale lives behind the codes: the tensor cannot be uploaded or copied as bytes.
    let (w, _, _) = fp8_weight(&g, &wv, m, k);
    let host_codes = g.download(&w).unwrap();
    assert!(g.upload(&host_codes).is_err());
    let mut other = g.zeros(DType::F8E4M3, &[m, k]).unwrap();
    assert!(g.copy(&w, &mut other).is_err());
}

#[test]
fn device_activation_quantizer_matches_the_host_bit_for_bit() {
    let Some(g) = gpu(CudaWeightType::Fp8) else {
        return;
    };
    let cuda = backend(&g);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // Magnitudes over 40 binades (subnormal codes, ties, saturation at amax), zeros and
    // exact code values times the scale.
    let n = 64 * 4096;
    let mut x: Vec<f32> = (0..n)
        .map(|i| match i % 4 {
            0 => rng.random_range(-1.0f32..1.0),
            1 => {
                rng.random_range(-20.0f32..10.0).exp2()
                    * if rng.random::<bool>() { -1.0 } else { 1.0 }
            }
            2 => 0.0,
            _ => e4m3_to_f32(rng.random_range(0u8..0x7f)) * (3.0 / 448.0),
        })
        .collect();
    x[12345] = -3000.0;
    for (label, x) in [
        ("random", x),
        ("zeros", vec![0.0; 4096]),
        ("one", vec![1.5; 16]),
    ] {
        let xd = up(&g, &[x.len() / 16, 16], &x);
        let (q, s) = cuda.fp8_quantize_to_host(&xd).unwrap();
        let (hq, hs) = quantize_e4m3(&x);
        assert_eq!(s, hs, "{label}: scale");
        let bad = q.iter().zip(&hq).filter(|(a, b)| a != b).count();
        assert_eq!(bad, 0, "{label}: {bad} codes differ from the host's");
    }
}

#[test]
fn fp8_gemv_matches_the_dequantized_reference() {
    let Some(g) = gpu(CudaWeightType::Fp8) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    // M not a multiple of the rows per block (32 at one row, 8 above); 8464 rows and
    // 2200 rows give one warp per row group on a 132-SM GPU, the small ones eight.
    for &(m, k) in &[
        (1000usize, 64usize),
        (77, 4096),
        (1000, 11008),
        (8464, 256),
        (2200, 576),
        (33, 4096),
    ] {
        let wv = rnd(&mut rng, m * k, 0.5);
        let (w, w_deq, _) = fp8_weight(&g, &wv, m, k);
        for t in 1..=4 {
            let x = rnd(&mut rng, t * k, 1.0);
            check_fp8_matmul(&g, "fp8", &x, &w, &w_deq, t, m, k);
        }
    }
}

#[test]
fn fp8_gemm_matches_the_quantized_reference() {
    let Some(g) = gpu(CudaWeightType::Fp8) else {
        return;
    };
    let cuda = backend(&g);
    // On for FP8 tensor cores (sm_89+), off elsewhere.
    let native = cuda.set_fp8_tensor_cores(true);
    eprintln!("{}: FP8 tensor cores {native}", g.name());
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    // M a multiple of 16 (the FP8 GEMM; not of 32 or 64), then M that is not (bf16).
    let shapes = [
        (1008usize, 64usize),
        (80, 4096),
        (208, 11008),
        (1000, 576),
        (77, 64),
    ];
    for &(m, k) in &shapes {
        let wv = rnd(&mut rng, m * k, 0.5);
        let (w, w_deq, _) = fp8_weight(&g, &wv, m, k);
        for &t in &[5usize, 17, 64, 200] {
            let x = rnd(&mut rng, t * k, 1.0);
            check_fp8_matmul(&g, "fp8", &x, &w, &w_deq, t, m, k);
        }
    }
    if native && !cuda.fp8_tensor_cores() {
        // Every product above was still checked, against the path it took.
        eprintln!(
            "the FP8 GEMM turned itself off (bf16 fallback used): {:?}",
            cuda.fp8_gemm_failure()
        );
    }
    // The bf16 fallback (what GPUs before sm_89 run), on the same shapes.
    assert!(!cuda.set_fp8_tensor_cores(false));
    for &(m, k) in &shapes[..3] {
        let wv = rnd(&mut rng, m * k, 0.5);
        let (w, w_deq, _) = fp8_weight(&g, &wv, m, k);
        for &t in &[5usize, 64] {
            let x = rnd(&mut rng, t * k, 1.0);
            check_fp8_matmul(&g, "fp8 fallback", &x, &w, &w_deq, t, m, k);
        }
    }
    cuda.set_fp8_tensor_cores(true);
}

#[test]
fn stacked_fp8_weights_share_one_scale() {
    let Some(g) = gpu(CudaWeightType::Fp8) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(51);
    let k = 256usize;
    // Q (f32), K (bf16, larger values) and V (Q8_0, smaller) of a GQA layer.
    let (q, kk, v) = (
        rnd(&mut rng, 64 * k, 1.0),
        rnd(&mut rng, 16 * k, 3.0),
        rnd(&mut rng, 16 * k, 0.1),
    );
    let kb: Vec<u8> = kk
        .iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect();
    let mut vb = vec![0u8; DType::Q8_0.row_bytes(k) * 16];
    sluice_backend::quant::quantize_row(DType::Q8_0, &v, &mut vb).unwrap();
    let mut v_deq = vec![0f32; 16 * k];
    sluice_backend::quant::dequantize_row(DType::Q8_0, &vb, &mut v_deq).unwrap();
    let parts = vec![
        host(&[64, k], &q),
        Tensor::from_bytes_cpu(DType::BF16, &[16, k], &kb).unwrap(),
        Tensor::from_bytes_cpu(DType::Q8_0, &[16, k], &vb).unwrap(),
    ];
    let w = g.load_weights_stacked(parts).unwrap();
    assert_eq!((w.dtype(), w.shape()), (DType::F8E4M3, &[96, k][..]));
    // One scale over the stacked values, as the host quantizes their concatenation.
    let all: Vec<f32> = q
        .iter()
        .copied()
        .chain(round_bf16(&kk))
        .chain(v_deq)
        .collect();
    let (codes, scale) = quantize_e4m3(&all);
    assert_eq!(backend(&g).fp8_scale(&w).unwrap(), scale);
    assert_eq!(g.download(&w).unwrap().cpu_bytes().unwrap(), &codes[..]);
    let w_deq = dequantize_e4m3(&codes, scale);
    for &t in &[1usize, 3, 7, 40] {
        let x = rnd(&mut rng, t * k, 1.0);
        check_fp8_matmul(&g, "stacked fp8", &x, &w, &w_deq, t, 96, k);
    }
}

#[test]
fn fp8_gemm_replays_from_a_cuda_graph() {
    let Some(g) = gpu(CudaWeightType::Fp8) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(61);
    let (t, m, k) = (24usize, 2048usize, 1024usize);
    let wv = rnd(&mut rng, m * k, 0.5);
    let (w, w_deq, _) = fp8_weight(&g, &wv, m, k);
    let x1 = rnd(&mut rng, t * k, 1.0);
    let mut xd = up(&g, &[t, k], &x1);
    let mut out = poisoned(&g, &[t, m]);
    // Once eagerly (plan made, staging buffer sized), then recorded: the amax, the
    // quantization and the GEMM must not need the host in between.
    g.matmul(&xd, &w, &mut out).unwrap();
    g.synchronize().unwrap();
    g.begin_capture().unwrap();
    let run = g.matmul(&xd, &w, &mut out);
    let graph = g.end_capture().unwrap();
    run.unwrap();
    // New activations (10x larger: a new scale) into the captured buffer, then a replay.
    let x2 = rnd(&mut rng, t * k, 10.0);
    g.copy(&up(&g, &[t, k], &x2), &mut xd).unwrap();
    g.copy(&poisoned(&g, &[t, m]), &mut out).unwrap();
    g.launch_graph(&graph).unwrap();
    let got = down(&g, &out);
    let want = if backend(&g).fp8_tensor_cores() {
        let (xq, xs) = quantize_e4m3(&x2);
        matmul_f64(&dequantize_e4m3(&xq, xs), &w_deq, t, m, k)
    } else {
        matmul_f64(&round_bf16(&x2), &round_bf16(&w_deq), t, m, k)
    };
    let tol = if backend(&g).fp8_tensor_cores() {
        1e-3
    } else {
        1e-4
    };
    check("fp8 GEMM graph replay", &got, &want, tol);
}
