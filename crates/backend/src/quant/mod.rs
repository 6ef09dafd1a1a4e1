//! Block-quantized formats (ggml-compatible): dequantization, quantization and dot
//! products. Each format has a scalar reference; SIMD kernels live with the matmul.

use crate::dtype::DType;
use crate::error::{BackendError, Result};
use half::{bf16, f16};

/// Dequantizes one row (whole blocks) of `dtype` into f32.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let need = dtype.bytes_for(dst.len()).ok_or_else(|| {
        BackendError::Shape(format!("{} elements are not whole {dtype} blocks", dst.len()))
    })?;
    if src.len() < need {
        return Err(BackendError::Shape(format!(
            "dequantize: {} bytes for {} {dtype} elements",
            src.len(),
            dst.len()
        )));
    }
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
        other => {
            return Err(BackendError::Unsupported {
                op: "dequantize",
                dtype: other,
            })
        }
    }
    Ok(())
}
