//! GGUF K-quant weights (Q4_K, Q6_K) on the GPU (crates/backend/src/cuda/kquant.rs,
//! kernels/kquant.cu).
//!
//! CPU part (runs everywhere, CI included): the GPU layout round-trips to the GGUF bytes;
//! an independent reading of the documented layout dequantizes to the host's values bit
//! for bit; and the GEMVs' arithmetic (the byte permutes, masks and the biased-float sums
//! of kernels/kquant.cu) replayed on the host matches an f64 product within the GEMV
//! tolerance.
//!
//! GPU part (skipped without a GPU unless SLUICE_REQUIRE_CUDA=1): the GEMVs (1-4 rows),
//! the quantized tensor-core matmul (5-128 rows) and the dequantize + cuBLASLt path (more) for T = 1, 2, 3, 4, 5, 33, 130 on shapes
//! with odd M that is not a multiple of the rows per block and K of 1, 2, 16 and 43
//! super-blocks, M large enough for every warps-per-row split; the bf16 dequantization
//! against the host bit for bit; stacked weights (one type, and Q4_K + Q6_K parts stored
//! as Q6_K); a Q4_K_M-style mix of tensor types under `--dtype auto`; `--dtype q4_k` and
//! `q6_k` quantizing at load with the bf16 fallback. Outputs are poisoned with NaN first.
//! Tolerances (max |gpu - ref| / max(1, max |ref|), ref the f64 product of x and the
//! host-dequantized weights):
//! - GEMV (1-4 rows): 1e-5;
//! - 5+ rows (weights and x rounded to bf16): 1e-2; the quantized mma against the f64
//!   product of those bf16 values: 1e-5 (Q4_K: 5e-4), see `quantized_mma_matches_bf16_products`.

mod cuda_common;

use cuda_common::{byte_perm, check, down, gpu, matmul_f64, poisoned, rel_err, rnd, up};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::kquant::{from_gpu_layout, to_gpu_layout};
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::quant::{dequantize_row, quantize_row};
use sluice_backend::{DType, Device, Tensor};

const KQ: [DType; 2] = [DType::Q4_K, DType::Q6_K];

/// Weights with a different amplitude per row and a few outliers, as real matrices have.
fn weights(rng: &mut ChaCha8Rng, m: usize, k: usize) -> Vec<f32> {
    let mut w = Vec::with_capacity(m * k);
    for _ in 0..m {
        let amp = rng.random_range(0.02f32..1.0);
        w.extend((0..k).map(|_| {
            let v = rng.random_range(-amp..amp);
            if rng.random_range(0..64) == 0 {
                v * 8.0
            } else {
                v
            }
        }));
    }
    w
}

/// `w` quantized to `dtype` on the host (GGUF bytes) and those bytes dequantized.
fn quantize(dtype: DType, w: &[f32], m: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = vec![0u8; m * dtype.row_bytes(k)];
    quantize_row(dtype, w, &mut bytes).unwrap();
    let mut deq = vec![0f32; m * k];
    dequantize_row(dtype, &bytes, &mut deq).unwrap();
    (bytes, deq)
}

// ---------------------------------------------------------------------------------------
// CPU: the layout and the kernels' arithmetic.

#[test]
fn gpu_layout_round_trips_to_the_gguf_bytes() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for dtype in KQ {
        for &(m, k) in &[(1usize, 256usize), (3, 768), (5, 11008)] {
            // Any bytes are valid blocks: random ones exercise every bit of the repack.
            let gguf: Vec<u8> = (0..m * dtype.row_bytes(k)).map(|_| rng.random()).collect();
            let gpu = to_gpu_layout(dtype, m, k, &gguf).unwrap();
            assert_eq!(gpu.len(), gguf.len());
            assert_ne!(gpu, gguf, "{dtype} [{m}, {k}]: the repack moved nothing");
            assert_eq!(
                from_gpu_layout(dtype, m, k, &gpu).unwrap(),
                gguf,
                "{dtype} [{m}, {k}]"
            );
        }
    }
    assert!(to_gpu_layout(DType::Q4_K, 1, 255, &[0; 144]).is_err());
    assert!(to_gpu_layout(DType::Q6_K, 2, 256, &[0; 210]).is_err());
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes a matrix in the GPU layout, read as kernels/kquant.cu documents it (not
/// through `from_gpu_layout`), with ggml's arithmetic.
fn dequantize_gpu_layout(dtype: DType, m: usize, k: usize, g: &[u8]) -> Vec<f32> {
    let nb = k / 256;
    let mut out = vec![0f32; m * k];
    for row in 0..m {
        for e in 0..k {
            let (b, r) = (e / 256, e % 256);
            out[row * k + e] = if dtype == DType::Q4_K {
                // qs [M, K/32] x 16: chunk c = sub-block c; heads [M, nb] x 16 at M*K/2
                let c = e / 32;
                let byte = g[row * k / 2 + 16 * c + e % 16];
                let q = if e % 32 < 16 { byte & 0xF } else { byte >> 4 };
                let h = &g[m * k / 2 + 16 * (row * nb + b)..][..16];
                let s = &h[4..16];
                let j = r / 32;
                let (sc, mn) = if j < 4 {
                    (s[j] & 63, s[j + 4] & 63)
                } else {
                    (
                        (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                        (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                    )
                };
                let d1 = f16_at(h, 0) * sc as f32;
                let m1 = f16_at(h, 2) * mn as f32;
                d1 * q as f32 - m1
            } else {
                // q [M][3][K/64] x 16 (pieces A, B, H), sc [M, K/16] i8, d [M, nb] f16
                let (u, g16, i) = (e / 64, (e % 64) / 16, e % 16);
                let base = row * 3 * k / 4 + 16 * u + i;
                let (a, bb, hh) = (g[base], g[base + k / 4], g[base + k / 2]);
                let lo = match g16 {
                    0 => a & 0xF,
                    1 => a >> 4,
                    2 => bb & 0xF,
                    _ => bb >> 4,
                };
                let q = (lo | (((hh >> (2 * g16)) & 3) << 4)) as i32 - 32;
                let sc = g[m * nb * 192 + row * k / 16 + e / 16] as i8;
                let d = f16_at(g, m * nb * 208 + 2 * (row * nb + b));
                d * sc as f32 * q as f32
            };
        }
    }
    out
}

#[test]
fn the_documented_layout_dequantizes_to_the_host_values() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for dtype in KQ {
        let (m, k) = (3, 768);
        let (gguf, deq) = quantize(dtype, &weights(&mut rng, m, k), m, k);
        let gpu = to_gpu_layout(dtype, m, k, &gguf).unwrap();
        let got = dequantize_gpu_layout(dtype, m, k, &gpu);
        for (i, (a, b)) in got.iter().zip(&deq).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{dtype} element {i}: {a} vs {b}");
        }
    }
}

/// kq_float: byte `b` of v in bits 16..23 of a float with top byte 0x3F.
fn kq_float(v: u32, b: u32) -> f32 {
    f32::from_bits(byte_perm(v, 0x3F00_0000, 0x7044 | (b << 8)))
}

fn word(g: &[u8], at: usize, k: usize) -> u32 {
    u32::from_le_bytes([
        g[at + 4 * k],
        g[at + 4 * k + 1],
        g[at + 4 * k + 2],
        g[at + 4 * k + 3],
    ])
}

/// One output of the Q4_K GEMV replayed on the host: kq4_chunk's sums per chunk, the
/// lanes' partial sums (chunk c on lane c % 32), then the warp's shuffle tree.
fn replay_q4_k(x: &[f32], g: &[u8], m: usize, k: usize, row: usize) -> f32 {
    let mut lanes = [0f32; 32];
    for c in 0..k / 32 {
        let (mut s, mut xs) = (0f32, 0f32);
        for kk in 0..4 {
            let xl = &x[32 * c + 4 * kk..][..4];
            let xh = &x[32 * c + 16 + 4 * kk..][..4];
            xs += ((xl[0] + xl[1]) + (xl[2] + xl[3])) + ((xh[0] + xh[1]) + (xh[2] + xh[3]));
            let v = word(g, row * k / 2 + 16 * c, kk);
            let (lo, hi) = ((v << 3) & 0x7878_7878, (v >> 1) & 0x7878_7878);
            for b in 0..4 {
                s = kq_float(lo, b as u32).mul_add(xl[b], s);
                s = kq_float(hi, b as u32).mul_add(xh[b], s);
            }
        }
        // kq4_scale_min, branch-free as on the device
        let h = &g[m * k / 2 + 16 * (row * (k / 256) + c / 8)..][..16];
        let (hx, hy, hz, hw) = (word(h, 0, 0), word(h, 0, 1), word(h, 0, 2), word(h, 0, 3));
        let j = c % 8;
        let hi = j >= 4;
        let s8 = 8 * (j & 3) as u32;
        let low: u32 = if hi { 0x0F } else { 0x3F };
        let a = (if hi { hw } else { hy }) >> s8;
        let b = (if hi { hw >> 4 } else { hz }) >> s8;
        let sc = (a & low) | ((hy >> (s8 + 2)) & !low);
        let mn = (b & low) | ((hz >> (s8 + 2)) & !low);
        let sc = f32::from_bits(0x4B00_0000 | (sc & 63)) - 8_388_608.0;
        let mn = f32::from_bits(0x4B00_0000 | (mn & 63)) - 8_388_608.0;
        let d = half::f16::from_bits(hx as u16).to_f32();
        let dmin = half::f16::from_bits((hx >> 16) as u16).to_f32();
        let d1 = d * sc;
        let (aa, bias) = (32.0 * d1, 16.0 * d1 + dmin * mn);
        lanes[c % 32] += aa * s - bias * xs;
    }
    warp_sum(lanes)
}

/// One output of the Q6_K GEMV replayed on the host (kq6_unit, unit u on lane u % 32).
fn replay_q6_k(x: &[f32], g: &[u8], m: usize, k: usize, row: usize) -> f32 {
    let nb = k / 256;
    let mut lanes = [0f32; 32];
    for u in 0..k / 64 {
        let base = row * 3 * k / 4 + 16 * u;
        let s_word = word(g, m * nb * 192 + row * k / 16 + 4 * u, 0);
        let d = 128.0
            * half::f16::from_le_bytes([
                g[m * nb * 208 + 2 * (row * nb + u / 4)],
                g[m * nb * 208 + 2 * (row * nb + u / 4) + 1],
            ])
            .to_f32();
        for grp in 0..4u32 {
            let (mut s, mut xs) = (0f32, 0f32);
            for kk in 0..4 {
                let xv = &x[64 * u + 16 * grp as usize + 4 * kk..][..4];
                xs += (xv[0] + xv[1]) + (xv[2] + xv[3]);
                let (a, b, h) = (
                    word(g, base, kk),
                    word(g, base + k / 4, kk),
                    word(g, base + k / 2, kk),
                );
                // kq6_bytes<1>
                let n = if grp < 2 { a } else { b };
                let lo = if grp & 1 == 1 { n >> 3 } else { n << 1 };
                let hs = 2 * grp as i32 - 5;
                let hb = if hs >= 0 { h >> hs } else { h << -hs };
                let v = (lo & 0x1E1E_1E1E) | (hb & 0x6060_6060);
                for (e, &xe) in xv.iter().enumerate() {
                    s = kq_float(v, e as u32).mul_add(xe, s);
                }
            }
            let sc = f32::from_bits(byte_perm(s_word ^ 0x8080_8080, 0x4B00_0000, grp | 0x7540))
                - 8_388_736.0;
            let d1 = d * sc;
            lanes[u % 32] += d1 * (s - 0.75 * xs);
        }
    }
    warp_sum(lanes)
}

/// warp_sum's butterfly (every lane ends with the same total; lane 0's is returned).
fn warp_sum(mut v: [f32; 32]) -> f32 {
    let mut o = 16;
    while o > 0 {
        let prev = v;
        for (i, x) in v.iter_mut().enumerate() {
            *x += prev[i ^ o];
        }
        o >>= 1;
    }
    v[0]
}

#[test]
fn the_gemv_arithmetic_replayed_on_the_host_matches_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for dtype in KQ {
        for &(m, k) in &[(4usize, 256usize), (3, 4096), (3, 11008)] {
            let (gguf, deq) = quantize(dtype, &weights(&mut rng, m, k), m, k);
            let gpu = to_gpu_layout(dtype, m, k, &gguf).unwrap();
            // activations with a mean, where the offset in the biased floats costs most
            let x: Vec<f32> = (0..k).map(|_| rng.random_range(-0.5f32..1.5)).collect();
            let got: Vec<f32> = (0..m)
                .map(|r| match dtype {
                    DType::Q4_K => replay_q4_k(&x, &gpu, m, k, r),
                    _ => replay_q6_k(&x, &gpu, m, k, r),
                })
                .collect();
            check(
                &format!("host replay {dtype} m={m} k={k}"),
                &got,
                &matmul_f64(&x, &deq, 1, m, k),
                1e-5,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// GPU.

/// The GGUF bytes of a device K-quant weight.
fn download_gguf(g: &Device, w: &Tensor) -> Vec<u8> {
    let host = g.download(w).unwrap();
    from_gpu_layout(w.dtype(), w.rows(), w.cols(), host.cpu_bytes().unwrap()).unwrap()
}

/// `x · wᵀ` on the device for every row count in `ts`, against the f64 reference.
fn check_matmul(
    g: &Device,
    name: &str,
    w: &Tensor,
    deq: &[f32],
    ts: &[usize],
    rng: &mut ChaCha8Rng,
) {
    let (m, k) = (w.rows(), w.cols());
    for &t in ts {
        let x = rnd(rng, t * k, 1.0);
        let mut out = poisoned(g, &[t, m]);
        g.matmul(&up(g, &[t, k], &x), w, &mut out).unwrap();
        let tol = if t <= 4 { 1e-5 } else { 1e-2 };
        check(
            &format!("{name} t={t} m={m} k={k}"),
            &down(g, &out),
            &matmul_f64(&x, deq, t, m, k),
            tol,
        );
    }
}

/// Q4_K and Q6_K GEMVs (1-4 rows) and dequantize + cuBLASLt (5+ rows). M = 8451, 2115
/// and 1001 give 1, 4 and 8 warps per row group on a 132-SM H100/H200 (77, 3 and 1: 8);
/// none is a multiple of the rows per block (4 per row group).
#[test]
fn kquant_matmul_matches_the_dequantized_reference() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let all_t = [1usize, 2, 3, 4, 5, 33, 130];
    for dtype in KQ {
        let shapes: [(usize, usize, &[usize]); 6] = [
            (1001, 256, &all_t),
            (77, 4096, &all_t),
            (3, 11008, &all_t),
            (8451, 256, &[1, 2, 3, 4, 5]),
            (2115, 512, &[1, 2, 3, 4, 33]),
            (1, 512, &[1, 4, 5]),
        ];
        for (m, k, ts) in shapes {
            let (bytes, deq) = quantize(dtype, &weights(&mut rng, m, k), m, k);
            let w = g
                .load_weight(Tensor::from_bytes_cpu(dtype, &[m, k], &bytes).unwrap())
                .unwrap();
            assert_eq!(w.dtype(), dtype, "--dtype auto keeps {dtype}");
            assert_eq!(
                download_gguf(&g, &w),
                bytes,
                "{dtype} [{m}, {k}] on the device"
            );
            check_matmul(&g, &format!("matmul {dtype}"), &w, &deq, ts, &mut rng);
        }
    }
}

/// The prefill path's dequantization to bf16 equals the host's values rounded to bf16,
/// bit for bit (Q8_0's kernel too).
#[test]
fn dequantized_bf16_matches_the_host_bit_for_bit() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let Device::Cuda(backend) = &g else {
        unreachable!("a CUDA device")
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (dtype, m, k) in [
        (DType::Q4_K, 37usize, 11008usize),
        (DType::Q6_K, 37, 11008),
        (DType::Q4_K, 5, 256),
        (DType::Q6_K, 5, 256),
        (DType::Q8_0, 7, 96),
    ] {
        let (bytes, deq) = quantize(dtype, &weights(&mut rng, m, k), m, k);
        let w = g
            .load_weight(Tensor::from_bytes_cpu(dtype, &[m, k], &bytes).unwrap())
            .unwrap();
        let b = g
            .download(&backend.dequantize_weight_bf16(&w).unwrap())
            .unwrap();
        let got = b.cpu_bytes().unwrap();
        let mut bad = 0;
        for (i, v) in deq.iter().enumerate() {
            let want = bf16::from_f32(*v).to_bits();
            let have = u16::from_le_bytes([got[2 * i], got[2 * i + 1]]);
            if want != have && bad < 5 {
                eprintln!("{dtype} element {i}: device {have:#06x}, host {want:#06x} ({v})");
            }
            bad += usize::from(want != have);
        }
        eprintln!(
            "dequantize {dtype} [{m}, {k}] to bf16: {bad} of {} differ",
            m * k
        );
        assert_eq!(bad, 0, "{dtype}");
    }
}

/// Stacked K-quant weights: parts of one type stay in it; Q4_K parts next to a Q6_K part
/// (Q4_K_M's Q/K/V in some layers) are stored as Q6_K, the Q4_K values requantized.
#[test]
fn stacked_kquant_weights_multiply_like_their_parts() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let k = 512;
    for types in [
        [DType::Q4_K; 3],
        [DType::Q6_K; 3],
        [DType::Q4_K, DType::Q4_K, DType::Q6_K],
    ] {
        let mut gguf_all = Vec::new();
        let mut deq_all = Vec::new();
        let parts: Vec<Tensor> = types
            .iter()
            .zip([40usize, 8, 9])
            .map(|(&dtype, rows)| {
                let (b, d) = quantize(dtype, &weights(&mut rng, rows, k), rows, k);
                gguf_all.extend_from_slice(&b);
                deq_all.extend(d);
                Tensor::from_bytes_cpu(dtype, &[rows, k], &b).unwrap()
            })
            .collect();
        let w = g.load_weights_stacked(parts).unwrap();
        let want_type = if types.contains(&DType::Q6_K) {
            DType::Q6_K
        } else {
            DType::Q4_K
        };
        assert_eq!(
            (w.dtype(), w.shape()),
            (want_type, &[57, k][..]),
            "{types:?}"
        );
        let stored = download_gguf(&g, &w);
        if types.iter().all(|&t| t == want_type) {
            assert_eq!(
                stored, gguf_all,
                "{types:?}: stacked bytes are the parts' bytes"
            );
        }
        // The reference is what is stored; for the mixed stack that is close to the parts.
        let mut deq = vec![0f32; 57 * k];
        dequantize_row(want_type, &stored, &mut deq).unwrap();
        let requant = rel_err(&deq, &deq_all);
        eprintln!("stacked {types:?}: stored vs parts' values {requant:.2e}");
        assert!(requant < 0.05, "{types:?}: requantization error {requant}");
        check_matmul(
            &g,
            &format!("stacked {types:?}"),
            &w,
            &deq,
            &[1, 2, 5],
            &mut rng,
        );
    }
}

/// A Q4_K_M-style file under `--dtype auto`: Q4_K and Q6_K matrices stay, llama.cpp's
/// fallback types for odd rows (Q5_0, Q8_0) go to bf16 or stay Q8_0, an f32 matrix goes
/// to bf16, and the Q4_K token embedding is a bf16 table.
#[test]
fn a_q4_k_m_style_mix_loads_under_auto() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let cases = [
        (DType::Q4_K, 96usize, 768usize, DType::Q4_K), // attn_q, ffn_gate/up
        (DType::Q6_K, 33, 768, DType::Q6_K),           // attn_v, ffn_down, output
        (DType::Q5_0, 20, 96, DType::BF16),            // rows of 96: not whole super-blocks
        (DType::Q8_0, 20, 96, DType::Q8_0),
        (DType::F32, 7, 768, DType::BF16),
    ];
    for (file, m, k, want) in cases {
        let w_f32 = weights(&mut rng, m, k);
        let (bytes, deq) = quantize(file, &w_f32, m, k);
        let w = g
            .load_weight(Tensor::from_bytes_cpu(file, &[m, k], &bytes).unwrap())
            .unwrap();
        assert_eq!(w.dtype(), want, "{file} under auto");
        // bf16 storage rounds the weights: compare against those values.
        let ref_w: Vec<f32> = if want == DType::BF16 {
            deq.iter().map(|v| bf16::from_f32(*v).to_f32()).collect()
        } else {
            deq
        };
        check_matmul(
            &g,
            &format!("auto {file} -> {want}"),
            &w,
            &ref_w,
            &[1, 3, 9],
            &mut rng,
        );
    }
    let (bytes, deq) = quantize(DType::Q4_K, &weights(&mut rng, 50, 256), 50, 256);
    let table = g
        .load_weight_rows(Tensor::from_bytes_cpu(DType::Q4_K, &[50, 256], &bytes).unwrap())
        .unwrap();
    assert_eq!(table.dtype(), DType::BF16);
    let got = g.download(&table).unwrap();
    let got = got.cpu_bytes().unwrap();
    for (i, v) in deq.iter().enumerate() {
        assert_eq!(
            u16::from_le_bytes([got[2 * i], got[2 * i + 1]]),
            bf16::from_f32(*v).to_bits()
        );
    }
}

/// `--dtype q4_k` / `q6_k`: f32 and Q8_0 matrices are quantized at load with the host
/// quantizer (the bytes are `quantize_row`'s), rows of 200 stay bf16, embeddings bf16.
#[test]
fn dtype_q4_k_and_q6_k_quantize_at_load() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for (wt, dtype) in [
        (CudaWeightType::Q4_K, DType::Q4_K),
        (CudaWeightType::Q6_K, DType::Q6_K),
    ] {
        assert_eq!(
            CudaWeightType::parse(&dtype.name().to_ascii_lowercase()),
            Some(wt)
        );
        let Some(g) = gpu(wt) else {
            return;
        };
        let (m, k) = (45, 1024);
        let w_f32 = weights(&mut rng, m, k);
        let w = g
            .load_weight(Tensor::from_f32_cpu(&[m, k], &w_f32).unwrap())
            .unwrap();
        assert_eq!(w.dtype(), dtype);
        let (bytes, deq) = quantize(dtype, &w_f32, m, k);
        assert_eq!(
            download_gguf(&g, &w),
            bytes,
            "{dtype}: the host quantizer's bytes"
        );
        check_matmul(
            &g,
            &format!("--dtype {dtype}"),
            &w,
            &deq,
            &[1, 4, 6],
            &mut rng,
        );
        // From another quantized type: dequantized, then quantized.
        let (q8, q8_deq) = quantize(DType::Q8_0, &w_f32, m, k);
        let w = g
            .load_weight(Tensor::from_bytes_cpu(DType::Q8_0, &[m, k], &q8).unwrap())
            .unwrap();
        assert_eq!(w.dtype(), dtype);
        assert_eq!(download_gguf(&g, &w), quantize(dtype, &q8_deq, m, k).0);
        // Rows that are not whole super-blocks, and token embeddings: bf16.
        let odd = g
            .load_weight(Tensor::from_f32_cpu(&[3, 200], &rnd(&mut rng, 600, 1.0)).unwrap())
            .unwrap();
        assert_eq!(odd.dtype(), DType::BF16);
        let table = g
            .load_weight_rows(Tensor::from_f32_cpu(&[m, k], &w_f32).unwrap())
            .unwrap();
        assert_eq!(table.dtype(), DType::BF16);
    }
}

/// The quantized tensor-core matmul (kernels/qmma.cu) for 5-130 token rows: Q8_0, Q4_K
/// and Q6_K weights dequantized in registers, x the bf16 copy, against the f64 product of
/// bf16 values (x rounded to bf16, each weight the host's dequantized value rounded to
/// bf16, as the dequantize + cuBLASLt path rounds them). Q8_0 and Q6_K make exactly those
/// weights, so only the f32 sums differ: 1e-5 of the largest output. Q4_K's one-FMA
/// dequantization rounds its offset first, so now and then a weight lands one bf16 step
/// away: 5e-4. Shapes cover rows that are not whole m16 tiles or blocks (77, 1000, 300),
/// K with half a 64-weight chunk at the end (Q8_0: 96, 4128), K split over clusters of 2
/// to 8 blocks, one to eight token tiles and two token groups (65, 100, 130). The result
/// is deterministic (bit-identical on a second run), and the cuBLASLt path (qmma off)
/// meets the same reference within 2e-5 (Q4_K: 5e-4).
#[test]
fn quantized_mma_matches_bf16_products() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let Device::Cuda(backend) = &g else {
        return;
    };
    let bf = |v: f32| bf16::from_f32(v).to_f32();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    type Shapes = &'static [(usize, usize, &'static [usize])];
    let q8: Shapes = &[
        (77, 96, &[5, 8, 9, 17]),
        (1000, 576, &[5, 16, 31, 64]),
        (130, 4096, &[5, 12, 33, 65]),
        (4096, 4128, &[8, 40]),
        (96, 2048, &[100, 130]),
    ];
    let kq: Shapes = &[
        (77, 256, &[5, 9, 17]),
        (1000, 512, &[5, 16, 64]),
        (130, 4096, &[6, 33, 65]),
        (300, 2304, &[8, 40, 130]),
    ];
    let cases: [(DType, Shapes, f64); 3] = [
        (DType::Q8_0, q8, 1e-5),
        (DType::Q4_K, kq, 5e-4),
        (DType::Q6_K, kq, 1e-5),
    ];
    let before = backend.set_quantized_mma_rows(130);
    for (dtype, shapes, tol) in cases {
        for &(m, k, ts) in shapes {
            let (bytes, deq) = quantize(dtype, &weights(&mut rng, m, k), m, k);
            let w = g
                .load_weight(Tensor::from_bytes_cpu(dtype, &[m, k], &bytes).unwrap())
                .unwrap();
            assert_eq!(w.dtype(), dtype);
            let deq_bf: Vec<f32> = deq.iter().map(|&v| bf(v)).collect();
            for &t in ts {
                let x = rnd(&mut rng, t * k, 1.0);
                let x_bf: Vec<f32> = x.iter().map(|&v| bf(v)).collect();
                let want = matmul_f64(&x_bf, &deq_bf, t, m, k);
                let xd = up(&g, &[t, k], &x);
                let name = format!("qmma {dtype} t={t} m={m} k={k}");
                let mut out = poisoned(&g, &[t, m]);
                g.matmul(&xd, &w, &mut out).unwrap();
                let got = down(&g, &out);
                check(&name, &got, &want, tol);
                let mut again = poisoned(&g, &[t, m]);
                g.matmul(&xd, &w, &mut again).unwrap();
                assert!(
                    got.iter()
                        .zip(down(&g, &again))
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{name}: a second run differs"
                );
                backend.set_quantized_mma_rows(0);
                let mut gemm = poisoned(&g, &[t, m]);
                g.matmul(&xd, &w, &mut gemm).unwrap();
                backend.set_quantized_mma_rows(130);
                let gemm_tol = tol.max(2e-5);
                check(
                    &format!("{name} (cuBLASLt path)"),
                    &down(&g, &gemm),
                    &want,
                    gemm_tol,
                );
            }
        }
    }
    backend.set_quantized_mma_rows(before);
}
