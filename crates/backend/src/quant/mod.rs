//! Block-quantized formats (ggml-compatible): layouts, scalar reference dequantization
//! and quantization. The matmul kernels (`cpu::matmul`, `cpu::simd`) consume these
//! layouts in place; they never dequantize a whole tensor. `fp8` holds the scalar E4M3
//! codec (GPU FP8 weights, FP8 KV cache).

pub mod blocks;
mod dequant;
pub mod fp8;
mod quantize;
mod quantize_k;

pub use quantize::nearest_int;

use crate::dtype::DType;
use crate::error::{BackendError, Result};
use blocks::as_blocks;
use half::{bf16, f16};

fn check_len(op: &str, dtype: DType, n: usize, bytes: usize) -> Result<usize> {
    let need = dtype.bytes_for(n).ok_or_else(|| {
        BackendError::Shape(format!(
            "{op}: {n} elements are not whole {dtype} blocks of {}",
            dtype.block_size()
        ))
    })?;
    if bytes < need {
        return Err(BackendError::Shape(format!(
            "{op}: {bytes} bytes for {n} {dtype} elements (need {need})"
        )));
    }
    Ok(need)
}

/// Dequantizes one row (whole blocks) of `dtype` into f32: `dst.len()` elements are
/// read from the start of `src`.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let need = check_len("dequantize", dtype, dst.len(), src.len())?;
    let src = &src[..need];
    match dtype {
        DType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        DType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        // F8E4M3 weight rows mean nothing without their tensor's scale (cuda/fp8.rs); the
        // unscaled FP8 KV cache converts its rows with `fp8` directly.
        DType::I32 | DType::F8E4M3 => {
            return Err(BackendError::Unsupported {
                op: "dequantize",
                dtype,
            })
        }
        DType::Q4_0 => dequant::q4_0(as_blocks(src)?, dst),
        DType::Q4_1 => dequant::q4_1(as_blocks(src)?, dst),
        DType::Q5_0 => dequant::q5_0(as_blocks(src)?, dst),
        DType::Q5_1 => dequant::q5_1(as_blocks(src)?, dst),
        DType::Q8_0 => dequant::q8_0(as_blocks(src)?, dst),
        DType::Q8_1 => dequant::q8_1(as_blocks(src)?, dst),
        DType::Q2_K => dequant::q2_k(as_blocks(src)?, dst),
        DType::Q3_K => dequant::q3_k(as_blocks(src)?, dst),
        DType::Q4_K => dequant::q4_k(as_blocks(src)?, dst),
        DType::Q5_K => dequant::q5_k(as_blocks(src)?, dst),
        DType::Q6_K => dequant::q6_k(as_blocks(src)?, dst),
        DType::Q8_K => dequant::q8_k(as_blocks(src)?, dst),
    }
    Ok(())
}

/// Whether [`quantize_row`] can produce `dtype`.
pub fn can_quantize(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32
            | DType::F16
            | DType::BF16
            | DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q8_0
            | DType::Q8_1
            | DType::Q8_K
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K
    )
}

/// Quantizes `src` (whole blocks) into `dtype` with ggml's reference rounding, writing
/// the first `dtype.bytes_for(src.len())` bytes of `dst`. Q2_K and Q3_K have no
/// quantizer yet.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let need = check_len("quantize", dtype, src.len(), dst.len())?;
    let dst = &mut dst[..need];
    use blocks::as_blocks_mut as bm;
    match dtype {
        DType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        DType::F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(*s).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(*s).to_le_bytes());
            }
        }
        DType::Q4_0 => quantize::q4_0(src, bm(dst)?),
        DType::Q4_1 => quantize::q4_1(src, bm(dst)?),
        DType::Q5_0 => quantize::q5_0(src, bm(dst)?),
        DType::Q5_1 => quantize::q5_1(src, bm(dst)?),
        DType::Q8_0 => quantize::q8_0(src, bm(dst)?),
        DType::Q8_1 => quantize::q8_1(src, bm(dst)?),
        DType::Q8_K => quantize::q8_k(src, bm(dst)?),
        DType::Q4_K => quantize_k::q4_k(src, bm(dst)?),
        DType::Q5_K => quantize_k::q5_k(src, bm(dst)?),
        DType::Q6_K => quantize_k::q6_k(src, bm(dst)?),
        other => {
            return Err(BackendError::Unsupported {
                op: "quantize",
                dtype: other,
            })
        }
    }
    Ok(())
}
