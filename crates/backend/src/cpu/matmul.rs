//! Matrix multiplication `out[T, M] = x[T, K] · w[M, K]^T` for every weight dtype.
//! (Placeholder: dequantize a row at a time. Replaced by the SIMD kernels.)

use super::ops::SendPtr;
use super::CpuBackend;
use crate::error::{BackendError, Result};
use crate::quant;
use crate::tensor::Tensor;

pub fn prepare_weight(_cpu: &CpuBackend, host: Tensor) -> Result<Tensor> {
    Ok(host)
}

pub fn matmul(cpu: &CpuBackend, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
    let (m, k) = (w.rows(), w.cols());
    let xs = x.as_f32()?;
    if x.cols() != k || out.cols() != m || out.rows() != x.rows() {
        return Err(BackendError::Shape(format!(
            "matmul: x {:?} w {:?} out {:?}",
            x.shape(),
            w.shape(),
            out.shape()
        )));
    }
    let t = x.rows();
    let wb = w.cpu_bytes()?;
    let rb = w.dtype().row_bytes(k);
    let o = SendPtr(out.as_f32_mut()?.as_mut_ptr());
    let dtype = w.dtype();
    cpu.pool.for_range(m, 8, |rows| {
        let mut buf = vec![0f32; k];
        for r in rows {
            if quant::dequantize_row(dtype, &wb[r * rb..(r + 1) * rb], &mut buf).is_err() {
                return;
            }
            for ti in 0..t {
                let xr = &xs[ti * k..(ti + 1) * k];
                let mut acc = 0f32;
                for (a, b) in xr.iter().zip(&buf) {
                    acc += a * b;
                }
                // SAFETY: each (ti, r) is written by exactly one thread.
                unsafe { o.slice_mut(ti * m + r, 1)[0] = acc };
            }
        }
    });
    Ok(())
}
