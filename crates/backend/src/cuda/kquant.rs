//! GGUF K-quant weights (Q4_K, Q6_K) on the GPU.
//!
//! **Which matrices.** Under `--dtype auto` a GGUF file's Q4_K and Q6_K matrices stay as
//! they are (a Q4_K_M file mixes both, with other types where llama.cpp fell back; those
//! become bf16 as before); `--dtype q4_k` / `q6_k` quantize every matrix at load with
//! the host quantizers (`quant::quantize_row`, ggml's reference rounding, on all cores).
//! Rows that are not whole 256-element super-blocks stay bf16 (see
//! `CudaWeightType::resolve`), and token embeddings are bf16 (`prepare_weight_rows`).
//! Stacked weights (`prepare_weights_stacked`) take one type for all their parts: a
//! Q/K/V with Q4_K Q and K next to a Q6_K V (Q4_K_M does this in some layers) is stored
//! as Q6_K, the widest of the parts' types (see [`stacked_type`]).
//!
//! **Layout.** Both formats are repacked at upload ([`to_gpu_layout`]) into planes the
//! GEMVs read with 16-byte loads that are contiguous across a warp: the same bits as
//! GGUF's blocks, moved (kernels/kquant.cu has the byte-level description).
//! - Q4_K (144 bytes per 256 weights): all rows' quants `[M, K / 32]` x 16 bytes, each
//!   16 bytes one sub-block of 32 weights (GGUF interleaves two sub-blocks per 32 bytes;
//!   one sub-block per load halves the scale decoding), then all block heads `[M, K /
//!   256]` x 16 bytes (f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, as in GGUF).
//! - Q6_K (210 bytes per 256 weights, a block that is not 16-byte aligned): all rows'
//!   quants `[M][3][K / 64]` x 16 bytes (per 64 weights: two 16-byte pieces of low
//!   nibbles and one of high bit pairs, each piece a plane of the row), then the int8
//!   scales `[M, K / 16]`, then the f16 super-block scales `[M, K / 256]`.
//!
//! **Matmul** ([`CudaBackend::matmul_kquant`]). Up to 4 activation rows: dequantizing
//! GEMVs, f32 activations and accumulation, four output rows per warp so each chunk of x
//! is loaded once for all four, quants turned into floats by a byte permute (no
//! integer-to-float conversions). 5 to 64 rows (batched decode): the tensor-core kernel
//! of qmma.rs, which dequantizes in registers. More rows: the weight is dequantized to
//! bf16 (ggml's arithmetic, bit for bit before the bf16 rounding) into the backend's
//! weight scratch buffer and cuBLASLt's bf16 GEMM runs, as for Q8_0.

use std::ffi::c_void;

use cudarc::driver::sys;

use super::{cuda_buf, CudaBackend};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::Tensor;

/// A pointer-to-value for the kernel argument list.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        [$(&$v as *const _ as *mut c_void),*]
    };
}

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// Output rows per warp of the K-quant GEMVs (`KQ_RPW` in kernels/kquant.cu).
const ROWS_PER_WARP: usize = 4;

/// Whether `dtype` is a K-quant type the GPU keeps as it is.
pub fn is_kquant(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_K | DType::Q6_K)
}

/// The GPU type of a stack of matrices whose own GPU types are `types` (each part's
/// `CudaWeightType::resolve`): the first when all agree, else the widest by bits per
/// weight, so that no part loses precision (Q4_K + Q6_K parts are stored as Q6_K, the
/// Q4_K parts requantized from their exact values; Q4_K + bf16 as bf16); ties keep the
/// earlier part's type.
pub fn stacked_type(types: &[DType]) -> Option<DType> {
    let first = *types.first()?;
    Some(types.iter().fold(first, |best, &t| {
        if t.bits_per_element() > best.bits_per_element() {
            t
        } else {
            best
        }
    }))
}

fn check_shape(dtype: DType, m: usize, k: usize, bytes: usize) -> Result<()> {
    if !is_kquant(dtype) || !k.is_multiple_of(QK_K) || bytes != m * dtype.row_bytes(k) {
        return Err(BackendError::Shape(format!(
            "K-quant repack: {bytes} bytes of {dtype} for [{m}, {k}] (rows must be whole \
             super-blocks of {QK_K})"
        )));
    }
    Ok(())
}

/// Q6_K's 6-bit quants (0..64) of one GGUF block, in element order (ggml
/// `dequantize_row_q6_K`: low 4 bits from `ql`, high 2 from `qh`).
fn q6_gguf_quants(block: &[u8]) -> [u8; QK_K] {
    let (ql, qh) = (&block[..128], &block[128..192]);
    let mut q = [0u8; QK_K];
    for n in 0..2 {
        for l in 0..32 {
            let (a, b, h) = (ql[64 * n + l], ql[64 * n + 32 + l], qh[32 * n + l]);
            q[128 * n + l] = (a & 0xF) | ((h & 3) << 4);
            q[128 * n + 32 + l] = (b & 0xF) | (((h >> 2) & 3) << 4);
            q[128 * n + 64 + l] = (a >> 4) | (((h >> 4) & 3) << 4);
            q[128 * n + 96 + l] = (b >> 4) | (((h >> 6) & 3) << 4);
        }
    }
    q
}

/// The inverse of [`q6_gguf_quants`]: `ql` and `qh` of a GGUF block.
fn q6_gguf_pack(q: &[u8; QK_K], block: &mut [u8]) {
    let (ql, rest) = block.split_at_mut(128);
    let qh = &mut rest[..64];
    for n in 0..2 {
        for l in 0..32 {
            let v = |i: usize| q[128 * n + 32 * i + l];
            ql[64 * n + l] = (v(0) & 0xF) | ((v(2) & 0xF) << 4);
            ql[64 * n + 32 + l] = (v(1) & 0xF) | ((v(3) & 0xF) << 4);
            qh[32 * n + l] =
                (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
        }
    }
}

/// Q4_K's nibble of element `e` (0..256) of a GGUF block's `qs` (ggml: element `64 j + l`
/// in the low nibble of `qs[32 j + l]`, `64 j + 32 + l` in the high nibble).
fn q4_gguf_nibble(qs: &[u8], e: usize) -> u8 {
    let (j, r) = (e / 64, e % 64);
    let b = qs[32 * j + r % 32];
    if r < 32 {
        b & 0xF
    } else {
        b >> 4
    }
}

/// Repacks a `[m, k]` matrix of GGUF Q4_K or Q6_K blocks (row-major) into the GPU layout
/// (module docs; kernels/kquant.cu). The result has the same size.
pub fn to_gpu_layout(dtype: DType, m: usize, k: usize, gguf: &[u8]) -> Result<Vec<u8>> {
    check_shape(dtype, m, k, gguf.len())?;
    let nb = k / QK_K;
    let mut out = vec![0u8; gguf.len()];
    match dtype {
        DType::Q4_K => {
            let (qs, hd) = out.split_at_mut(m * k / 2);
            for (b, block) in gguf.chunks_exact(144).enumerate() {
                hd[16 * b..16 * b + 16].copy_from_slice(&block[..16]);
                let src = &block[16..];
                let dst = &mut qs[128 * b..128 * b + 128];
                // sub-block s: element 32 s + i in the low nibble of byte 16 s + i,
                // 32 s + 16 + i in the high nibble
                for s in 0..8 {
                    for i in 0..16 {
                        let lo = q4_gguf_nibble(src, 32 * s + i);
                        let hi = q4_gguf_nibble(src, 32 * s + 16 + i);
                        dst[16 * s + i] = lo | (hi << 4);
                    }
                }
            }
        }
        _ => {
            let (qs, rest) = out.split_at_mut(m * nb * 192);
            let (sc, ds) = rest.split_at_mut(m * nb * 16);
            let plane = k / 4;
            for (gb, block) in gguf.chunks_exact(210).enumerate() {
                let (row, b) = (gb / nb, gb % nb);
                sc[16 * gb..16 * gb + 16].copy_from_slice(&block[192..208]);
                ds[2 * gb..2 * gb + 2].copy_from_slice(&block[208..210]);
                let q = q6_gguf_quants(block);
                let base = row * 3 * plane;
                for u in 0..4 {
                    let unit = 4 * b + u;
                    let e = |g: usize, i: usize| q[64 * u + 16 * g + i];
                    for i in 0..16 {
                        let o = base + 16 * unit + i;
                        qs[o] = (e(0, i) & 0xF) | ((e(1, i) & 0xF) << 4);
                        qs[o + plane] = (e(2, i) & 0xF) | ((e(3, i) & 0xF) << 4);
                        qs[o + 2 * plane] =
                            (0..4).fold(0u8, |h, g| h | ((e(g, i) >> 4) << (2 * g)));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The inverse of [`to_gpu_layout`]: GGUF blocks from the GPU layout (what a download
/// of a K-quant weight returns).
pub fn from_gpu_layout(dtype: DType, m: usize, k: usize, gpu: &[u8]) -> Result<Vec<u8>> {
    check_shape(dtype, m, k, gpu.len())?;
    let nb = k / QK_K;
    let mut out = vec![0u8; gpu.len()];
    match dtype {
        DType::Q4_K => {
            let (qs, hd) = gpu.split_at(m * k / 2);
            for (b, block) in out.chunks_exact_mut(144).enumerate() {
                block[..16].copy_from_slice(&hd[16 * b..16 * b + 16]);
                let src = &qs[128 * b..128 * b + 128];
                // the GPU nibble of element e: sub-block e / 32, byte e % 16
                let nib = |e: usize| {
                    let v = src[16 * (e / 32) + e % 16];
                    if e % 32 < 16 {
                        v & 0xF
                    } else {
                        v >> 4
                    }
                };
                for j in 0..4 {
                    for l in 0..32 {
                        block[16 + 32 * j + l] = nib(64 * j + l) | (nib(64 * j + 32 + l) << 4);
                    }
                }
            }
        }
        _ => {
            let (qs, rest) = gpu.split_at(m * nb * 192);
            let (sc, ds) = rest.split_at(m * nb * 16);
            let plane = k / 4;
            for (gb, block) in out.chunks_exact_mut(210).enumerate() {
                let (row, b) = (gb / nb, gb % nb);
                block[192..208].copy_from_slice(&sc[16 * gb..16 * gb + 16]);
                block[208..210].copy_from_slice(&ds[2 * gb..2 * gb + 2]);
                let base = row * 3 * plane;
                let mut q = [0u8; QK_K];
                for u in 0..4 {
                    for i in 0..16 {
                        let o = base + 16 * (4 * b + u) + i;
                        let (a, bb, h) = (qs[o], qs[o + plane], qs[o + 2 * plane]);
                        let lo = [a & 0xF, a >> 4, bb & 0xF, bb >> 4];
                        for (g, l) in lo.iter().enumerate() {
                            q[64 * u + 16 * g + i] = l | (((h >> (2 * g)) & 3) << 4);
                        }
                    }
                }
                q6_gguf_pack(&q, block);
            }
        }
    }
    Ok(out)
}

impl CudaBackend {
    /// Uploads a host Q4_K or Q6_K matrix in the GPU layout.
    pub(super) fn upload_kquant(&self, host: &Tensor) -> Result<Tensor> {
        let (m, k) = (host.rows(), host.cols());
        let packed = to_gpu_layout(host.dtype(), m, k, host.cpu_bytes()?)?;
        self.upload(&Tensor::from_bytes_cpu(host.dtype(), &[m, k], &packed)?)
    }

    /// `out[t, m] = x[t, :] · w[m, :]` for a Q4_K or Q6_K weight `w` (GPU layout): our
    /// GEMV for up to 4 rows of x, else dequantization to bf16 and cuBLASLt.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_kquant(
        &self,
        dtype: DType,
        px: sys::CUdeviceptr,
        pw: sys::CUdeviceptr,
        po: sys::CUdeviceptr,
        t: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        if !is_kquant(dtype) || !k.is_multiple_of(QK_K) {
            return Err(BackendError::Shape(format!(
                "{dtype} matmul: rows of {k} are not whole super-blocks of {QK_K}"
            )));
        }
        if t <= 4 {
            let kern = &self.kernels;
            let f = match dtype {
                DType::Q4_K => [
                    kern.gemv1_rows_q4_k,
                    kern.gemv_q4_k_2,
                    kern.gemv_q4_k_3,
                    kern.gemv_q4_k_4,
                ][t - 1],
                _ => [
                    kern.gemv1_rows_q6_k,
                    kern.gemv_q6_k_2,
                    kern.gemv_q6_k_3,
                    kern.gemv_q6_k_4,
                ][t - 1],
            };
            return self.launch_gemv(f, px, pw, po, m, k, ROWS_PER_WARP);
        }
        if self.qmma_applies(dtype, k, t) {
            return self.matmul_qmma(dtype, px, pw, po, t, m, k);
        }
        let wb = self.weight_scratch(m * k * 2)?;
        self.dequantize_bf16_ptrs(dtype, pw, wb, m, k)?;
        self.gemm_bf16_weight(px, wb, po, t, m, k)
    }

    /// Queues the dequantization of a Q8_0, Q4_0, Q4_1, Q4_K, Q6_K or FP8 weight at `pw`
    /// (GPU layout) into bf16 `[m, k]` at `out`.
    pub(super) fn dequantize_bf16_ptrs(
        &self,
        dtype: DType,
        pw: sys::CUdeviceptr,
        out: sys::CUdeviceptr,
        m: usize,
        k: usize,
    ) -> Result<()> {
        let (f, per_thread) = match dtype {
            DType::Q8_0 => (self.kernels.dequant_q8_0_bf16_kernel, 16),
            DType::F8E4M3 => (self.kernels.fp8_dequant_bf16_kernel, 16),
            DType::Q4_K => (self.kernels.dequant_q4_k_bf16_kernel, 32),
            DType::Q6_K => (self.kernels.dequant_q6_k_bf16_kernel, 64),
            DType::Q4_0 => (self.kernels.dequant_q4_0_bf16_kernel, 32), // legacy_quant.rs
            DType::Q4_1 => (self.kernels.dequant_q4_1_bf16_kernel, 32),
            other => {
                return Err(BackendError::Unsupported {
                    op: "CUDA dequantize to bf16",
                    dtype: other,
                })
            }
        };
        let (mi, ki) = (m as i32, k as i32);
        // The dequantized weight goes to `out` (the weight scratch), never to the
        // activation scratch: a staged bf16 copy of the GEMM's input stays valid.
        let staged = self.staged.lock().ok().and_then(|g| *g);
        self.launch_1d(f, m * k / per_thread, &mut args![pw, out, mi, ki])?;
        if let Some(s) = staged {
            self.set_staged(s.src, s.n, s.dst);
        }
        Ok(())
    }

    /// A new bf16 device copy of a quantized device weight (Q8_0, Q4_0, Q4_1, Q4_K or
    /// Q6_K), through
    /// the kernels the prefill matmul uses: for tests, which compare it bit for bit with
    /// the host's dequantization rounded to bf16.
    pub fn dequantize_weight_bf16(&self, w: &Tensor) -> Result<Tensor> {
        let (m, k) = (w.rows(), w.cols());
        let out = self.zeros(DType::BF16, &[m, k])?;
        self.bind()?;
        let (pw, po) = (cuda_buf(w)?.ptr(), cuda_buf(&out)?.ptr());
        self.dequantize_bf16_ptrs(w.dtype(), pw, po, m, k)?;
        self.synchronize()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacked_type_takes_the_widest() {
        assert_eq!(stacked_type(&[]), None);
        assert_eq!(
            stacked_type(&[DType::Q4_K, DType::Q4_K, DType::Q6_K]),
            Some(DType::Q6_K)
        );
        assert_eq!(stacked_type(&[DType::Q6_K, DType::BF16]), Some(DType::BF16));
        assert_eq!(stacked_type(&[DType::F16, DType::BF16]), Some(DType::F16));
        assert_eq!(stacked_type(&[DType::Q8_0; 3]), Some(DType::Q8_0));
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(to_gpu_layout(DType::Q4_K, 2, 128, &[0; 144]).is_err());
        assert!(to_gpu_layout(DType::Q6_K, 2, 256, &[0; 210]).is_err());
        assert!(to_gpu_layout(DType::Q8_0, 1, 256, &[0; 272]).is_err());
        assert!(from_gpu_layout(DType::Q4_K, 1, 256, &[0; 144]).is_ok());
    }
}
