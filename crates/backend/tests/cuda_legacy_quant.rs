//! GGUF Q4_0 and Q4_1 weights on the GPU (crates/backend/src/cuda/legacy_quant.rs,
//! kernels/legacy_quant.cu).
//!
//! CPU part (runs everywhere, CI included): the GPU layout round-trips to the GGUF bytes;
//! an independent reading of the documented layout dequantizes to the host's values bit
//! for bit; the GEMVs' arithmetic (the byte permutes, masks and the biased-float sums of
//! kernels/legacy_quant.cu) replayed on the host matches an f64 product within the GEMV
//! tolerance; the bf16 dequantization's magic-number arithmetic replayed on the host gives
//! the host's values bit for bit.
//!
//! GPU part (skipped without a GPU unless SLUICE_REQUIRE_CUDA=1): the GEMVs (1-4 rows) and
//! the dequantize + cuBLASLt path (5, 33, 130 rows) on shapes with odd M that is not a
//! multiple of the rows per block and K of 1, 2, 3, 43, 128 and 448 blocks, M large enough
//! for every warps-per-row split; the bf16 dequantization against the host bit for bit;
//! stacked weights (one type; Q4_0 + Q4_1 parts stored as Q4_1; Q4_0 + Q6_K as Q6_K); a
//! Q4_0 file's mix under `--dtype auto` (Q6_K output, bf16 embeddings); `--dtype q4_0` and
//! `q4_1` quantizing at load with the bf16 fallback. Outputs are poisoned with NaN first.
//! Tolerances (max |gpu - ref| / max(1, max |ref|), ref the f64 product of x and the
//! host-dequantized weights):
//! - GEMV (1-4 rows): `GEMV_TOL`, 1e-5;
//! - 5+ rows (weights and x rounded to bf16): `GEMM_TOL`, 1e-2.

mod cuda_common;

use cuda_common::{byte_perm, check, down, gpu, matmul_f64, poisoned, rel_err, rnd, up};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::legacy_quant::{from_gpu_layout, to_gpu_layout};
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::quant::{dequantize_row, quantize_row};
use sluice_backend::{DType, Device, Tensor};

const LQ: [DType; 2] = [DType::Q4_0, DType::Q4_1];

/// The GEMVs (f32 sums of biased floats) against the f64 product.
const GEMV_TOL: f64 = 1e-5;
/// Dequantize to bf16 + cuBLASLt (x and the weights rounded to bf16).
const GEMM_TOL: f64 = 1e-2;

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

/// Bytes of a block head in the GPU layout's second plane.
fn head(dtype: DType) -> usize {
    if dtype == DType::Q4_1 {
        4
    } else {
        2
    }
}

// ---------------------------------------------------------------------------------------
// CPU: the layout and the kernels' arithmetic.

#[test]
fn gpu_layout_round_trips_to_the_gguf_bytes() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for dtype in LQ {
        for &(m, k) in &[(1usize, 32usize), (3, 96), (7, 1376), (5, 4096)] {
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
            // The quant plane and the head plane start 16-byte aligned (the GEMV's loads).
            assert_eq!((m * k / 2) % 16, 0);
        }
    }
    assert!(to_gpu_layout(DType::Q4_0, 1, 31, &[0; 18]).is_err());
    assert!(to_gpu_layout(DType::Q4_1, 2, 32, &[0; 20]).is_err());
    assert!(to_gpu_layout(DType::Q8_0, 1, 32, &[0; 34]).is_err());
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes a matrix in the GPU layout, read as kernels/legacy_quant.cu documents it
/// (not through `from_gpu_layout`), with ggml's arithmetic.
fn dequantize_gpu_layout(dtype: DType, m: usize, k: usize, g: &[u8]) -> Vec<f32> {
    let nb = k / 32;
    let mut out = vec![0f32; m * k];
    for row in 0..m {
        for e in 0..k {
            // qs [M, nb] x 16 at 0: block (row, b) at 16 (row nb + b), element i in the
            // low nibble of byte i, 16 + i in the high nibble
            let (b, i) = (e / 32, e % 32);
            let byte = g[16 * (row * nb + b) + i % 16];
            let q = if i < 16 { byte & 0xF } else { byte >> 4 };
            // heads [M, nb] at M K / 2: f16 d (Q4_0), f16 d then f16 m (Q4_1)
            let h = m * k / 2 + head(dtype) * (row * nb + b);
            let d = f16_at(g, h);
            out[row * k + e] = if dtype == DType::Q4_0 {
                (q as i32 - 8) as f32 * d
            } else {
                q as f32 * d + f16_at(g, h + 2)
            };
        }
    }
    out
}

#[test]
fn the_documented_layout_dequantizes_to_the_host_values() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for dtype in LQ {
        for &(m, k) in &[(3usize, 96usize), (5, 1376)] {
            let (gguf, deq) = quantize(dtype, &weights(&mut rng, m, k), m, k);
            let gpu = to_gpu_layout(dtype, m, k, &gguf).unwrap();
            let got = dequantize_gpu_layout(dtype, m, k, &gpu);
            for (i, (a, b)) in got.iter().zip(&deq).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{dtype} element {i}: {a} vs {b}");
            }
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

/// The block head of block `c` (of all rows) as the GEMV loads it (lq_head).
fn head_word(dtype: DType, g: &[u8], m: usize, k: usize, c: usize) -> u32 {
    let at = m * k / 2 + head(dtype) * c;
    if dtype == DType::Q4_1 {
        word(g, at, 0)
    } else {
        u16::from_le_bytes([g[at], g[at + 1]]) as u32
    }
}

/// One output of the Q4_0 / Q4_1 GEMV replayed on the host: lq_sums per block (chunk),
/// lq_chunk's combination, the lanes' partial sums (block c on lane c % 32), then the
/// warp's shuffle tree.
fn replay_gemv(dtype: DType, x: &[f32], g: &[u8], m: usize, k: usize, row: usize) -> f32 {
    let nb = k / 32;
    let mut lanes = [0f32; 32];
    for c in 0..nb {
        let (mut s, mut xs) = (0f32, 0f32);
        for kk in 0..4 {
            let xl = &x[32 * c + 4 * kk..][..4];
            let xh = &x[32 * c + 16 + 4 * kk..][..4];
            xs += ((xl[0] + xl[1]) + (xl[2] + xl[3])) + ((xh[0] + xh[1]) + (xh[2] + xh[3]));
            let v = word(g, 16 * (row * nb + c), kk);
            let (lo, hi) = ((v << 3) & 0x7878_7878, (v >> 1) & 0x7878_7878);
            for b in 0..4 {
                s = kq_float(lo, b as u32).mul_add(xl[b], s);
                s = kq_float(hi, b as u32).mul_add(xh[b], s);
            }
        }
        let h = head_word(dtype, g, m, k, row * nb + c);
        let d = half::f16::from_bits(h as u16).to_f32();
        lanes[c % 32] += if dtype == DType::Q4_1 {
            let mn = half::f16::from_bits((h >> 16) as u16).to_f32();
            let (a, bias) = (32.0 * d, mn - 16.0 * d);
            a * s + bias * xs
        } else {
            32.0 * d * (s - 0.75 * xs)
        };
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
    for dtype in LQ {
        for &(m, k) in &[(4usize, 32usize), (3, 1376), (3, 4096), (2, 14336)] {
            let (gguf, deq) = quantize(dtype, &weights(&mut rng, m, k), m, k);
            let gpu = to_gpu_layout(dtype, m, k, &gguf).unwrap();
            // activations with a mean, where the offset in the biased floats costs most
            let x: Vec<f32> = (0..k).map(|_| rng.random_range(-0.5f32..1.5)).collect();
            let got: Vec<f32> = (0..m)
                .map(|r| replay_gemv(dtype, &x, &gpu, m, k, r))
                .collect();
            check(
                &format!("host replay {dtype} m={m} k={k}"),
                &got,
                &matmul_f64(&x, &deq, 1, m, k),
                GEMV_TOL,
            );
        }
    }
}

/// dequant_q4_legacy_bf16 replayed on the host: the nibbles by byte permute into the
/// mantissa of 2^23, less 2^23 (+ 8 for Q4_0), times d (plus m), rounded after each
/// operation: the host's `dequantize_row` bit for bit, for every quant and random scales.
#[test]
fn the_dequantization_arithmetic_replayed_on_the_host_is_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for dtype in LQ {
        let (m, k) = (9usize, 1376usize);
        let (gguf, deq) = quantize(dtype, &weights(&mut rng, m, k), m, k);
        let g = to_gpu_layout(dtype, m, k, &gguf).unwrap();
        let off = if dtype == DType::Q4_1 {
            8_388_608.0f32
        } else {
            8_388_616.0
        };
        for c in 0..m * k / 32 {
            let h = head_word(dtype, &g, m, k, c);
            let d = half::f16::from_bits(h as u16).to_f32();
            let mn = half::f16::from_bits((h >> 16) as u16).to_f32();
            for kk in 0..4 {
                let v = word(&g, 16 * c, kk);
                let (lo, hi) = (v & 0x0F0F_0F0F, (v >> 4) & 0x0F0F_0F0F);
                for b in 0..4u32 {
                    for (half_at, n) in [(0usize, lo), (16, hi)] {
                        let q = f32::from_bits(byte_perm(n, 0x4B00_0000, b | 0x7540)) - off;
                        let w = if dtype == DType::Q4_1 {
                            q * d + mn
                        } else {
                            q * d
                        };
                        let e = 32 * c + half_at + 4 * kk + b as usize;
                        assert_eq!(w.to_bits(), deq[e].to_bits(), "{dtype} element {e}");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// GPU.

/// The GGUF bytes of a device Q4_0 / Q4_1 (or K-quant) weight.
fn download_gguf(g: &Device, w: &Tensor) -> Vec<u8> {
    let host = g.download(w).unwrap();
    let bytes = host.cpu_bytes().unwrap();
    let (dtype, m, k) = (w.dtype(), w.rows(), w.cols());
    if matches!(dtype, DType::Q4_K | DType::Q6_K) {
        sluice_backend::cuda::kquant::from_gpu_layout(dtype, m, k, bytes).unwrap()
    } else {
        from_gpu_layout(dtype, m, k, bytes).unwrap()
    }
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
        let tol = if t <= 4 { GEMV_TOL } else { GEMM_TOL };
        check(
            &format!("{name} t={t} m={m} k={k}"),
            &down(g, &out),
            &matmul_f64(&x, deq, t, m, k),
            tol,
        );
    }
}

/// Q4_0 and Q4_1 GEMVs (1-4 rows) and dequantize + cuBLASLt (5+ rows). M = 8451, 2115
/// and 1001 give 1, 4 and 8 warps per row group on a 132-SM H100/H200; none (nor 77, 37
/// or 3) is a multiple of the rows per block. K of 1, 2, 3 and 43 blocks (a lane with no
/// block, an odd count, one more than a warp's 32 lanes + 11), 128 and 448 (the 8B
/// shape's 4096 and 14336).
#[test]
fn legacy_quant_matmul_matches_the_dequantized_reference() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let all_t = [1usize, 2, 3, 4, 5, 33, 130];
    for dtype in LQ {
        let shapes: [(usize, usize, &[usize]); 9] = [
            (1001, 32, &all_t),
            (77, 64, &all_t),
            (37, 96, &all_t),
            (3, 1376, &all_t),
            (77, 4096, &all_t),
            (3, 14336, &[1, 2, 3, 4, 5]),
            (8451, 256, &[1, 2, 3, 4, 5]),
            (2115, 1376, &[1, 2, 3, 4, 33]),
            (1, 32, &[1, 4, 5]),
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
/// bit for bit.
#[test]
fn dequantized_bf16_matches_the_host_bit_for_bit() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let Device::Cuda(backend) = &g else {
        unreachable!("a CUDA device")
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for dtype in LQ {
        for (m, k) in [(37usize, 1376usize), (5, 32), (300, 4096)] {
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
}

/// Stacked weights: parts of one type stay in it; Q4_0 parts next to a Q4_1 part are
/// stored as Q4_1 and next to a Q6_K part as Q6_K (the widest), their values requantized.
#[test]
fn stacked_legacy_quant_weights_multiply_like_their_parts() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let k = 512;
    for (types, want_type) in [
        ([DType::Q4_0; 3], DType::Q4_0),
        ([DType::Q4_1; 3], DType::Q4_1),
        ([DType::Q4_0, DType::Q4_0, DType::Q4_1], DType::Q4_1),
        ([DType::Q4_0, DType::Q4_0, DType::Q6_K], DType::Q6_K),
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
        // The reference is what is stored; for the mixed stacks that is close to the parts.
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

/// A llama.cpp Q4_0 / Q4_1 file under `--dtype auto`: Q4_0 and Q4_1 matrices stay, the
/// Q6_K output stays Q6_K, an f32 matrix goes to bf16, and the Q4_0 / Q4_1 token
/// embedding is a bf16 table (the host's values rounded to bf16).
#[test]
fn a_q4_0_style_file_loads_under_auto() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let cases = [
        (DType::Q4_0, 96usize, 576usize, DType::Q4_0), // attn_q, ffn_gate/up
        (DType::Q4_1, 33, 1536, DType::Q4_1),          // SmolLM2's ffn_down
        (DType::Q6_K, 33, 768, DType::Q6_K),           // output
        (DType::F32, 7, 96, DType::BF16),
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
    for dtype in LQ {
        let (bytes, deq) = quantize(dtype, &weights(&mut rng, 50, 64), 50, 64);
        let table = g
            .load_weight_rows(Tensor::from_bytes_cpu(dtype, &[50, 64], &bytes).unwrap())
            .unwrap();
        assert_eq!(table.dtype(), DType::BF16, "{dtype} embeddings");
        let got = g.download(&table).unwrap();
        let got = got.cpu_bytes().unwrap();
        for (i, v) in deq.iter().enumerate() {
            assert_eq!(
                u16::from_le_bytes([got[2 * i], got[2 * i + 1]]),
                bf16::from_f32(*v).to_bits()
            );
        }
    }
}

/// `--dtype q4_0` / `q4_1`: f32 and Q8_0 matrices are quantized at load with the host
/// quantizer (the bytes are `quantize_row`'s), rows of 200 stay bf16, embeddings bf16.
#[test]
fn dtype_q4_0_and_q4_1_quantize_at_load() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for (wt, dtype) in [
        (CudaWeightType::Q4_0, DType::Q4_0),
        (CudaWeightType::Q4_1, DType::Q4_1),
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
        // Rows that are not whole blocks, and token embeddings: bf16.
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
