//! Matrix multiplication `out[T, M] = x[T, K] · w[M, K]^T` for every weight dtype.
//!
//! * Float weights (F32/F16/BF16): f32 activations, weights widened on load, FMA.
//! * Quantized weights: the activation rows are quantized once per call into the
//!   format matching the weight's blocks (`simd::acts`), into a grow-only scratch
//!   buffer owned by the backend; then integer dot products run block by block on the
//!   weights in place (never dequantized as a whole).
//!
//! Work is split over the pool by weight rows: contiguous chunks (a few per thread,
//! claimed from a shared counter), so each thread streams its own parts of the matrix. Inside, kernels tile rows x tokens so that a
//! weight block loaded once serves several tokens (batched decode, prefill).
//!
//! `prepare_weight` keeps the ggml layout (no repacking): the kernels read it directly,
//! so loading costs nothing and mapped weights stay mapped.
//!
//! Numerics: activations are quantized per 32 (or 256) elements into two int8 terms,
//! `x ~ d (q1 + q2 / 256)` (see `simd::acts`): about 1.5e-5 relative error per output
//! against exact f32 math (`tests/matmul_real_weights.rs`; one int8 term as in
//! llama.cpp: ~4e-3, enough to flip greedy near-ties against an f32 reference). A row's
//! result does not depend on the batch it is in (`tests/matmul_kernels.rs`).
//!
//! Which kernel runs (x86-64; `Isa::select` from `CpuFeatures`):
//! ```text
//!              AVX-512 VNNI                      AVX2                  scalar
//! Q4_0..Q8_0   avx512_q32 (8-block groups)       avx2_q32              scalar
//! Q4_K, Q5_K   avx512_q32 (sub-block = block)    avx2_k                scalar
//! Q2/3/6_K     avx512_k (Q8_K-style acts)        avx2_k                scalar
//! F32/F16/BF16 float (FMA, 4x4 tiles)            float (4x2)           float
//! ```

use std::sync::Mutex;

use super::ops::SendPtr;
use super::simd::acts::{self, ActFormat};
use super::simd::{FJob, Isa, QJob};
use super::CpuBackend;
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::{AlignedBytes, Tensor};

/// Activation rows below which quantization stays on the calling thread.
const PAR_QUANT_MIN_ELEMS: usize = 1 << 14;

/// Grow-only scratch for quantized activations (64-byte aligned).
pub struct Scratch {
    buf: AlignedBytes,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            buf: AlignedBytes::zeroed(0),
        }
    }
}

impl Scratch {
    /// At least `len` bytes; reallocates only to grow.
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.buf.len() < len {
            self.buf = AlignedBytes::zeroed(len.next_power_of_two());
        }
        &mut self.buf.as_mut_slice()[..len]
    }

    /// Current capacity in bytes (for tests of the no-allocation property).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

/// The scratch owned by a backend.
pub type ScratchCell = Mutex<Scratch>;

/// Weight types `matmul` accepts.
pub fn supports(dtype: DType) -> bool {
    dtype.is_float() || ActFormat::for_weight(dtype, Isa::Scalar).is_some()
}

/// Load-time preparation of a weight: identity. The kernels read ggml blocks in place,
/// so there is no load-time cost and no extra memory; rejects nothing (a weight that
/// is only used as a row table, such as a token embedding, need not be a matmul type).
pub fn prepare_weight(_cpu: &CpuBackend, host: Tensor) -> Result<Tensor> {
    Ok(host)
}

/// `out[t, m] = sum_k x[t, k] * w[m, k]` on the backend's best path.
pub fn matmul(cpu: &CpuBackend, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
    if cpu.features.reference && w.dtype().is_quantized() {
        return matmul_reference(cpu, x, w, out);
    }
    matmul_on(cpu, Isa::select(&cpu.features), x, w, out)
}

/// Reference-precision matmul: each weight row is dequantized (one row at a time, never
/// the whole tensor) and dotted with the f32 activations in f32. Used to reproduce f32
/// reference implementations (golden tests); `SLUICE_CPU_FEATURES=reference`.
pub fn matmul_reference(cpu: &CpuBackend, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
    let (m, k) = (w.rows(), w.cols());
    if w.shape().len() != 2 || x.cols() != k || out.cols() != m || out.rows() != x.rows() {
        return Err(BackendError::Shape(format!(
            "matmul: x {:?} w {:?} out {:?}",
            x.shape(),
            w.shape(),
            out.shape()
        )));
    }
    let xs = x.as_f32()?;
    let t = x.rows();
    let dtype = w.dtype();
    let rb = dtype.row_bytes(k);
    let wb = w.cpu_bytes()?;
    let o = crate::cpu::ops::SendPtr(out.as_f32_mut()?.as_mut_ptr());
    let failed = std::sync::atomic::AtomicBool::new(false);
    cpu.pool.for_range(m, 4, |rows| {
        let mut row = vec![0f32; k];
        for r in rows {
            if crate::quant::dequantize_row(dtype, &wb[r * rb..(r + 1) * rb], &mut row).is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            for ti in 0..t {
                let xr = &xs[ti * k..(ti + 1) * k];
                let mut acc = 0f32;
                for (a, b) in xr.iter().zip(&row) {
                    acc += a * b;
                }
                // SAFETY: each (ti, r) element is written by exactly one thread.
                unsafe { o.slice_mut(ti * m + r, 1)[0] = acc };
            }
        }
    });
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(BackendError::Shape(
            "matmul: weight row failed to dequantize".into(),
        ));
    }
    Ok(())
}

/// As [`matmul`], on path `isa` (capped to what the CPU has).
pub fn matmul_on(
    cpu: &CpuBackend,
    isa: Isa,
    x: &Tensor,
    w: &Tensor,
    out: &mut Tensor,
) -> Result<()> {
    let isa = isa.min(Isa::select(&cpu.features));
    let dtype = w.dtype();
    if !supports(dtype) {
        return Err(BackendError::Unsupported {
            op: "matmul",
            dtype,
        });
    }
    if w.shape().len() != 2 {
        return Err(BackendError::Shape(format!(
            "matmul: weight must be 2-D, got {:?}",
            w.shape()
        )));
    }
    let (m, k) = (w.rows(), w.cols());
    if x.cols() != k || out.cols() != m || out.rows() != x.rows() {
        return Err(BackendError::Shape(format!(
            "matmul: x {:?} w {:?} out {:?}",
            x.shape(),
            w.shape(),
            out.shape()
        )));
    }
    let t = x.rows();
    let xs = x.as_f32()?;
    let wb = w.cpu_bytes()?;
    let out_ptr = SendPtr(out.as_f32_mut()?.as_mut_ptr());
    if t == 0 || m == 0 {
        return Ok(());
    }
    if k == 0 {
        // SAFETY: out holds t * m f32 (checked above) and we hold it mutably.
        unsafe { out_ptr.slice_mut(0, t * m).fill(0.0) };
        return Ok(());
    }

    if dtype.is_float() {
        let job = FJob {
            dtype,
            w: wb,
            k,
            x: xs,
            t,
            m,
            out: out_ptr,
        };
        // SAFETY: shapes checked; each thread gets disjoint rows; isa is runnable.
        cpu.pool
            .for_range(m, 4, |rows| unsafe { job.run(isa, rows) });
        return Ok(());
    }

    let fmt = ActFormat::for_weight(dtype, isa).ok_or(BackendError::Unsupported {
        op: "matmul",
        dtype,
    })?;
    let arb = fmt.row_bytes(k);
    let mut scratch = cpu.matmul_scratch.lock().unwrap_or_else(|e| e.into_inner());
    let acts_buf = scratch.get(t * arb);
    quantize_acts(cpu, isa, fmt, xs, k, acts_buf);
    let job = QJob {
        dtype,
        w: wb,
        row_bytes: dtype.row_bytes(k),
        k,
        acts: acts_buf,
        act_row_bytes: arb,
        t,
        m,
        out: out_ptr,
    };
    // SAFETY: as above; the activation rows were all written by `quantize_acts`.
    cpu.pool
        .for_range(m, 4, |rows| unsafe { job.run(isa, rows) });
    Ok(())
}

/// Quantizes the `t` rows of `xs` (`k` each) into `dst` (`t` rows of `fmt.row_bytes(k)`).
fn quantize_acts(cpu: &CpuBackend, isa: Isa, fmt: ActFormat, xs: &[f32], k: usize, dst: &mut [u8]) {
    let t = xs.len() / k;
    let arb = fmt.row_bytes(k);
    if t < 2 || xs.len() < PAR_QUANT_MIN_ELEMS {
        for (x, d) in xs.chunks_exact(k).zip(dst.chunks_exact_mut(arb)) {
            acts::quantize_row(isa, fmt, x, d);
        }
        return;
    }
    let p = SendPtr(dst.as_mut_ptr());
    cpu.pool.for_range(t, 1, |rows| {
        for r in rows {
            // SAFETY: row r of `dst` is written by this thread only; in bounds (t rows).
            let d = unsafe { p.slice_mut(r * arb, arb) };
            acts::quantize_row(isa, fmt, &xs[r * k..(r + 1) * k], d);
        }
    });
}

/// Bytes held by a backend's activation scratch (grows, never shrinks).
pub fn scratch_capacity(cpu: &CpuBackend) -> usize {
    cpu.matmul_scratch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .capacity()
}
