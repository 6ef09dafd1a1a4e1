//! GGUF Q4_0 and Q4_1 weights on the GPU.
//!
//! **Which matrices.** Under `--dtype auto` a GGUF file's Q4_0 and Q4_1 matrices stay as
//! they are (the most common llama.cpp files; SmolLM2's shipped file is Q4_1; a Q4_0 file
//! keeps `output` in Q6_K, which stays Q6_K, see kquant.rs); `--dtype q4_0` / `q4_1`
//! quantize every matrix at load with the host quantizers (`quant::quantize_row`, ggml's
//! reference rounding, on all cores). Rows that are not whole 32-element blocks stay bf16
//! (see `CudaWeightType::resolve`), and token embeddings are bf16 (`prepare_weight_rows`).
//! Stacked weights (`prepare_weights_stacked`) take the widest of their parts' types
//! (`kquant::stacked_type`): Q4_0 next to Q4_1 parts is stored as Q4_1, next to Q6_K as
//! Q6_K.
//!
//! **Layout.** GGUF's blocks (Q4_0: f16 d and 16 bytes of quants per 32 weights, 18 bytes;
//! Q4_1: f16 d, f16 m and the quants, 20 bytes) are not 16-byte aligned, so both formats
//! are repacked at upload ([`to_gpu_layout`]) into planes: the same bits, moved, the same
//! size (kernels/legacy_quant.cu has the byte-level description).
//! - all rows' quants `[M, K / 32]` x 16 bytes, each 16 bytes one block's `qs` as in GGUF
//!   (element `i` in the low nibble of byte `i`, `16 + i` in the high nibble), so a warp
//!   reads 512 contiguous bytes per load;
//! - then the block heads `[M, K / 32]`: Q4_0 the f16 `d` (2 bytes), Q4_1 `d` and `m`
//!   (4 bytes, one aligned word). The planes start at byte `M K / 2`, a multiple of 16.
//!
//! **Matmul** ([`CudaBackend::matmul_legacy_quant`]). Up to 4 activation rows:
//! dequantizing GEMVs, f32 activations and accumulation, eight output rows per warp at
//! batch 1 (four at 2-4 rows) so each chunk of x is loaded once for all of them, quants
//! turned into floats by a byte permute (no integer-to-float conversions), as
//! kquant.rs's Q4_K GEMV. More rows: the
//! weight is dequantized to bf16 (ggml's arithmetic, bit for bit before the bf16
//! rounding) into the backend's weight scratch buffer and cuBLASLt's bf16 GEMM runs, as
//! for Q8_0 above the quantized mma's rows (the tensor-core kernel of qmma.rs does not
//! take these formats yet).

use cudarc::driver::sys;

use super::CudaBackend;
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::Tensor;

/// Elements per Q4_0 / Q4_1 block.
const QK: usize = 32;

/// Output rows per warp of the batch-1 GEMVs (`LQ_RPW1` in kernels/legacy_quant.cu) and
/// of those for 2-4 rows (`KQ_RPW` in kernels/kquant.cu, which legacy_quant.cu shares).
const ROWS_PER_WARP_1: usize = 8;
const ROWS_PER_WARP: usize = 4;

/// Whether `dtype` is a 32-element legacy quant type the GPU keeps as it is.
pub fn is_legacy_quant(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q4_1)
}

/// Bytes of a block head: f16 d (Q4_0), or f16 d and f16 m (Q4_1).
fn head_bytes(dtype: DType) -> usize {
    if dtype == DType::Q4_1 {
        4
    } else {
        2
    }
}

fn check_shape(dtype: DType, m: usize, k: usize, bytes: usize) -> Result<()> {
    if !is_legacy_quant(dtype) || !k.is_multiple_of(QK) || bytes != m * dtype.row_bytes(k) {
        return Err(BackendError::Shape(format!(
            "Q4_0/Q4_1 repack: {bytes} bytes of {dtype} for [{m}, {k}] (rows must be whole \
             blocks of {QK})"
        )));
    }
    Ok(())
}

/// Repacks a `[m, k]` matrix of GGUF Q4_0 or Q4_1 blocks (row-major) into the GPU layout
/// (module docs; kernels/legacy_quant.cu). The result has the same size.
pub fn to_gpu_layout(dtype: DType, m: usize, k: usize, gguf: &[u8]) -> Result<Vec<u8>> {
    check_shape(dtype, m, k, gguf.len())?;
    let h = head_bytes(dtype);
    let mut out = vec![0u8; gguf.len()];
    let (qs, hd) = out.split_at_mut(m * k / 2);
    // block b (of all rows, row-major): its head, then its 16 bytes of quants
    for (b, block) in gguf.chunks_exact(h + 16).enumerate() {
        hd[h * b..h * b + h].copy_from_slice(&block[..h]);
        qs[16 * b..16 * b + 16].copy_from_slice(&block[h..]);
    }
    Ok(out)
}

/// The inverse of [`to_gpu_layout`]: GGUF blocks from the GPU layout (what a download
/// of a Q4_0 / Q4_1 weight returns).
pub fn from_gpu_layout(dtype: DType, m: usize, k: usize, gpu: &[u8]) -> Result<Vec<u8>> {
    check_shape(dtype, m, k, gpu.len())?;
    let h = head_bytes(dtype);
    let mut out = vec![0u8; gpu.len()];
    let (qs, hd) = gpu.split_at(m * k / 2);
    for (b, block) in out.chunks_exact_mut(h + 16).enumerate() {
        block[..h].copy_from_slice(&hd[h * b..h * b + h]);
        block[h..].copy_from_slice(&qs[16 * b..16 * b + 16]);
    }
    Ok(out)
}

impl CudaBackend {
    /// Uploads a host Q4_0 or Q4_1 matrix in the GPU layout.
    pub(super) fn upload_legacy_quant(&self, host: &Tensor) -> Result<Tensor> {
        let (m, k) = (host.rows(), host.cols());
        let packed = to_gpu_layout(host.dtype(), m, k, host.cpu_bytes()?)?;
        self.upload(&Tensor::from_bytes_cpu(host.dtype(), &[m, k], &packed)?)
    }

    /// `out[t, m] = x[t, :] · w[m, :]` for a Q4_0 or Q4_1 weight `w` (GPU layout): our
    /// GEMV for up to 4 rows of x, else dequantization to bf16 and cuBLASLt.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_legacy_quant(
        &self,
        dtype: DType,
        px: sys::CUdeviceptr,
        pw: sys::CUdeviceptr,
        po: sys::CUdeviceptr,
        t: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        if !is_legacy_quant(dtype) || !k.is_multiple_of(QK) {
            return Err(BackendError::Shape(format!(
                "{dtype} matmul: rows of {k} are not whole blocks of {QK}"
            )));
        }
        if t <= 4 {
            let kern = &self.kernels;
            let f = match dtype {
                DType::Q4_0 => [
                    kern.gemv1_rows_q4_0,
                    kern.gemv_q4_0_2,
                    kern.gemv_q4_0_3,
                    kern.gemv_q4_0_4,
                ][t - 1],
                _ => [
                    kern.gemv1_rows_q4_1,
                    kern.gemv_q4_1_2,
                    kern.gemv_q4_1_3,
                    kern.gemv_q4_1_4,
                ][t - 1],
            };
            let rpw = if t == 1 {
                ROWS_PER_WARP_1
            } else {
                ROWS_PER_WARP
            };
            return self.launch_gemv(f, px, pw, po, m, k, rpw);
        }
        let wb = self.weight_scratch(m * k * 2)?;
        self.dequantize_bf16_ptrs(dtype, pw, wb, m, k)?;
        self.gemm_bf16_weight(px, wb, po, t, m, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_shapes_are_refused() {
        assert!(to_gpu_layout(DType::Q4_0, 2, 32, &[0; 18]).is_err());
        assert!(to_gpu_layout(DType::Q4_1, 1, 48, &[0; 30]).is_err());
        assert!(to_gpu_layout(DType::Q4_K, 1, 256, &[0; 144]).is_err());
        assert!(from_gpu_layout(DType::Q4_1, 1, 32, &[0; 20]).is_ok());
        assert!(from_gpu_layout(DType::Q4_0, 3, 64, &[0; 108]).is_ok());
    }

    #[test]
    fn stacked_types_take_the_widest() {
        use super::super::kquant::stacked_type;
        assert_eq!(stacked_type(&[DType::Q4_0; 3]), Some(DType::Q4_0));
        assert_eq!(
            stacked_type(&[DType::Q4_0, DType::Q4_1, DType::Q4_0]),
            Some(DType::Q4_1)
        );
        assert_eq!(stacked_type(&[DType::Q4_0, DType::Q6_K]), Some(DType::Q6_K));
        assert_eq!(stacked_type(&[DType::Q4_1, DType::BF16]), Some(DType::BF16));
    }
}
