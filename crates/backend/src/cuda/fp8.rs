//! FP8 (OCP E4M3) weights on the GPU: `--dtype fp8`.
//!
//! **Format.** E4M3 is 1 sign bit, 4 exponent bits of bias 7 and 3 mantissa bits, with no
//! infinities: codes `0x7F`/`0xFF` are NaN and the largest finite magnitude is 448.
//! Quantization rounds to nearest even and saturates to ±448 (infinities too), like
//! `cvt.rn.satfinite.e4m3x2.f32` and `__nv_cvt_float_to_fp8(.., __NV_SATFINITE, __NV_E4M3)`.
//!
//! **Layout.** A matrix `[M, K]` (K a multiple of 16, else it stays bf16: see
//! `CudaWeightType::resolve`) is quantized on the host with one f32 scale per tensor,
//! `s = amax / 448`, codes `e4m3(w * (1 / s))`, and stored on the GPU as the `M * K` code
//! bytes, row-major, followed by [`SCALE_BYTES`] bytes holding `s` (at byte `M * K`, which
//! is 16-byte aligned). The tensor's logical size is the codes only (its shape says
//! `[M, K]` of one byte each); the scale rides behind them in the same allocation, so
//! only `prepare_fp8` makes these tensors (`upload` and `copy_device` refuse the type,
//! `download` returns the codes; read the scale with [`CudaBackend::fp8_scale`]).
//! Stacked weights (Q/K/V, gate/up) are quantized as one matrix with one scale: their
//! parts are stacked first (any dtypes, dequantized row by row), then quantized.
//!
//! **Why per tensor.** It is the scale cuBLASLt's FP8 GEMM takes on Hopper
//! (`CUBLASLT_MATMUL_DESC_A_SCALE_POINTER`: one f32 per operand), so prefill needs no
//! epilogue of our own; E4M3's range (2^-9 to 448, 3 mantissa bits throughout the
//! normal part) holds a weight matrix's spread, as in the per-tensor FP8 checkpoints that
//! vLLM and TensorRT-LLM serve. Activations get a fresh scale on every call.
//!
//! **Matmul** (`matmul_fp8`). Up to 4 activation rows: our GEMVs (kernels/fp8.cu), 16
//! weights per 16-byte load, decoded by a byte permute and two logic ops per pair into
//! f16 bits and converted to f32, f32 accumulation, the scale applied once per output:
//! one byte per weight per decode step (bf16: two). Above 4 rows on sm_89+ with M a
//! multiple of 16: the activations are quantized to E4M3 on the device with a dynamic
//! per-tensor scale (an amax kernel, then a quantize kernel that writes the scale to
//! device memory: no host synchronisation, so the path runs inside CUDA graphs), then
//! cuBLASLt multiplies E4M3 · E4M3 with f32 accumulation into f32 (the "TN" layout FP8
//! requires: A = the weight, transposed, as in gemm.rs), both scales passed by device
//! pointer. Elsewhere (no FP8 tensor cores, M not a multiple of 16, or FP8 GEMMs turned
//! off) the weight is dequantized to bf16 into a scratch buffer for the bf16 GEMM, as
//! Q8_0 does.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{result as drv, sys};

use super::{cuda_buf, derr, CudaBackend};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::{Storage, Tensor};

/// Largest finite E4M3 magnitude.
pub const E4M3_MAX: f32 = 448.0;

/// Bytes behind an FP8 weight's codes: its f32 scale, padded to 16.
pub const SCALE_BYTES: usize = 16;

/// The scalar E4M3 codec lives in `quant::fp8` (the CPU's FP8 KV cache uses it too).
pub use crate::quant::fp8::{e4m3_from_f32, e4m3_to_f32};

/// The per-tensor scale for a largest magnitude `amax`: `amax / 448`, or 1 when that is
/// not a normal finite number (an all-zero tensor, or a non-finite value in it). The
/// device's `fp8_tensor_scale` is the same.
pub fn tensor_scale(amax: f32) -> f32 {
    let s = amax / E4M3_MAX;
    if s >= f32::MIN_POSITIVE && s.is_finite() {
        s
    } else {
        1.0
    }
}

/// Quantizes values with one scale, as the device quantizes activations: `(codes,
/// scale)` with `scale = tensor_scale(max |x|)` (NaN ignored) and `codes[i] =
/// e4m3(x[i] * (1 / scale))`. The reference for tests; weights go through the threaded
/// `prepare_fp8`, which computes the same.
pub fn quantize_e4m3(x: &[f32]) -> (Vec<u8>, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = tensor_scale(amax);
    let inv = 1.0 / scale;
    (x.iter().map(|&v| e4m3_from_f32(v * inv)).collect(), scale)
}

/// Codes times their scale, as f32.
pub fn dequantize_e4m3(codes: &[u8], scale: f32) -> Vec<f32> {
    codes.iter().map(|&c| e4m3_to_f32(c) * scale).collect()
}

/// Rows per thread for a pass over `rows` rows on all cores.
fn rows_per_thread(rows: usize) -> usize {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(rows.max(1));
    rows.div_ceil(threads).max(1)
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join().unwrap_or_else(|_| {
        Err(BackendError::Device(
            "FP8 quantization thread panicked".into(),
        ))
    })
}

/// Largest finite-or-not magnitude (NaN ignored) of a host matrix of any dtype, its rows
/// dequantized on all cores.
fn host_amax(t: &Tensor) -> Result<f32> {
    let (rows, cols, dtype) = (t.rows(), t.cols(), t.dtype());
    if rows == 0 || cols == 0 {
        return Ok(0.0);
    }
    let src = t.cpu_bytes()?;
    let row_bytes = dtype.row_bytes(cols);
    let per = rows_per_thread(rows);
    let maxes: Vec<Result<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = src
            .chunks(per * row_bytes)
            .map(|chunk| {
                s.spawn(move || -> Result<f32> {
                    let mut row = vec![0f32; cols];
                    let mut m = 0f32;
                    for r in chunk.chunks_exact(row_bytes) {
                        crate::quant::dequantize_row(dtype, r, &mut row)?;
                        m = row.iter().fold(m, |m, v| m.max(v.abs()));
                    }
                    Ok(m)
                })
            })
            .collect();
        handles.into_iter().map(join).collect()
    });
    maxes.into_iter().try_fold(0f32, |m, r| r.map(|v| m.max(v)))
}

/// Quantizes a host matrix of any dtype into `dst` (`rows * cols` codes), multiplying by
/// `inv` (1 / the scale) first, on all cores.
fn host_quantize(t: &Tensor, inv: f32, dst: &mut [u8]) -> Result<()> {
    let (rows, cols, dtype) = (t.rows(), t.cols(), t.dtype());
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let src = t.cpu_bytes()?;
    let row_bytes = dtype.row_bytes(cols);
    let per = rows_per_thread(rows);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = dst
            .chunks_mut(per * cols)
            .zip(src.chunks(per * row_bytes))
            .map(|(d, sr)| {
                s.spawn(move || -> Result<()> {
                    let mut row = vec![0f32; cols];
                    for (drow, srow) in d.chunks_exact_mut(cols).zip(sr.chunks_exact(row_bytes)) {
                        crate::quant::dequantize_row(dtype, srow, &mut row)?;
                        for (o, &v) in drow.iter_mut().zip(&row) {
                            *o = e4m3_from_f32(v * inv);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(join).collect()
    });
    results.into_iter().collect()
}

/// Threads per block of the FP8 kernels.
const THREADS: u32 = 256;
/// Offset of the quantized activations in the staging buffer; the amax (as u32 bits) and
/// the activation scale sit at bytes 0 and 16 before them (cuBLASLt's scale pointers
/// are kept 16-byte aligned, like every other operand it is given).
const STAGED_CODES: usize = 256;
/// `CUBLAS_OP_T` of cublasOperation_t.
const OP_T: i32 = 1;

/// A pointer-to-value for the kernel argument list.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        [$(&$v as *const _ as *mut c_void),*]
    };
}

/// One cuBLASLt FP8 plan: descriptors for `out[n, m] = x[n, k] · w[m, k]ᵀ` with x and w
/// E4M3 and out f32, and the heuristic's algorithm.
struct Plan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    a: lt_sys::cublasLtMatrixLayout_t,
    b: lt_sys::cublasLtMatrixLayout_t,
    d: lt_sys::cublasLtMatrixLayout_t,
    /// The heuristic's candidates, best first; `matmul` moves past any the library then
    /// refuses to run (`first`).
    algos: Vec<lt_sys::cublasLtMatmulAlgo_t>,
    first: usize,
}

/// How many algorithms to ask the heuristic for.
const ALGO_CANDIDATES: usize = 8;

impl Plan {
    /// The descriptors of a plan (TRANSA = T: the "TN" layout FP8 needs; compute and
    /// scale type 32F; A and B E4M3, C and D f32; FAST_ACCUM off, so cuBLASLt promotes
    /// the tensor cores' partial sums to full f32 as it goes) and the heuristic's best
    /// algorithm for them.
    fn new(gemm: &super::gemm::Gemm, m: usize, n: usize, k: usize) -> Result<Plan> {
        let f32t = lt_sys::cudaDataType::CUDA_R_32F;
        let e4m3 = lt_sys::cudaDataType::CUDA_R_8F_E4M3;
        let desc = lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32t)
            .map_err(derr)?;
        let (mu, nu, ku) = (m as u64, n as u64, k as u64);
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algos: Vec::new(),
            first: 0,
        };
        // From here on `plan`'s Drop frees whatever was created if a step fails.
        plan.a = lt::create_matrix_layout(e4m3, ku, mu, k as i64).map_err(derr)?;
        plan.b = lt::create_matrix_layout(e4m3, ku, nu, k as i64).map_err(derr)?;
        plan.d = lt::create_matrix_layout(f32t, mu, nu, m as i64).map_err(derr)?;
        let fast_accum = 0i8;
        // SAFETY: live descriptors; attribute buffers are sized to their types.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &OP_T as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
            .map_err(derr)?;
            lt::set_matmul_desc_attribute(
                desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_FAST_ACCUM,
                &fast_accum as *const i8 as *const c_void,
                std::mem::size_of::<i8>(),
            )
            .map_err(derr)?;
        }
        let what = format!("an FP8 (E4M3) {m}x{n}x{k} matmul");
        // SAFETY: the plan's descriptors were just created and are live.
        plan.algos =
            unsafe { gemm.heuristic_algos(desc, plan.a, plan.b, plan.d, ALGO_CANDIDATES, &what) }?;
        Ok(plan)
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created once in `Plan::new` (null ones never were).
        unsafe {
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// The FP8 GEMM state of a backend: whether FP8 tensor cores are used above 4 rows, and
/// the cuBLASLt plans (one per shape; they share gemm.rs's handle and workspace, on the
/// same stream).
pub(crate) struct Fp8Gemm {
    /// sm_89+ and not turned off (`SLUICE_FP8_GEMM=0`, `set_fp8_tensor_cores`, or a shape
    /// cuBLASLt had no FP8 algorithm for).
    enabled: AtomicBool,
    supported: bool,
    /// Why the FP8 GEMM was turned off on its own, if it was.
    failure: Mutex<Option<String>>,
    plans: Mutex<Plans>,
}

/// Plans by `(m, n, k)`.
type Plans = HashMap<(usize, usize, usize), Plan>;

// SAFETY: the descriptors are only used with the plans' mutex held.
unsafe impl Send for Fp8Gemm {}
unsafe impl Sync for Fp8Gemm {}

impl Fp8Gemm {
    /// For a device of compute capability `major.minor`: FP8 tensor cores from sm_89
    /// (Ada) on.
    pub(crate) fn new(major: i32, minor: i32) -> Fp8Gemm {
        let supported = (major, minor) >= (8, 9);
        let off = std::env::var("SLUICE_FP8_GEMM").is_ok_and(|v| v == "0" || v == "off");
        Fp8Gemm {
            enabled: AtomicBool::new(supported && !off),
            supported,
            failure: Mutex::new(None),
            plans: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Plans>> {
        self.plans
            .lock()
            .map_err(|_| BackendError::Device("FP8 plan cache poisoned".into()))
    }

    /// Turns the FP8 GEMM off for good, keeping why (`fp8_gemm_failure`).
    fn turn_off(&self, why: &BackendError) {
        self.enabled.store(false, Ordering::SeqCst);
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(why.to_string());
        }
    }

    /// Makes the plan for `m x n x k` if needed; false (and the FP8 GEMM turned off, the
    /// reason kept) when cuBLASLt has none, so the caller takes the bf16 path.
    fn ready(&self, gemm: &super::gemm::Gemm, m: usize, n: usize, k: usize) -> Result<bool> {
        let mut plans = self.lock()?;
        if plans.contains_key(&(m, n, k)) {
            return Ok(true);
        }
        match Plan::new(gemm, m, n, k) {
            Ok(p) => {
                plans.insert((m, n, k), p);
                Ok(true)
            }
            Err(e) => {
                self.turn_off(&e);
                Ok(false)
            }
        }
    }

    /// `out[n, m] = (x_scale · x[n, k]) · (w_scale · w[m, k])ᵀ` with x and w E4M3, the
    /// scales read from device memory when the GEMM runs. The plan must be `ready`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        gemm: &super::gemm::Gemm,
        stream: sys::CUstream,
        x: sys::CUdeviceptr,
        w: sys::CUdeviceptr,
        out: sys::CUdeviceptr,
        (n, m, k): (usize, usize, usize),
        x_scale: sys::CUdeviceptr,
        w_scale: sys::CUdeviceptr,
    ) -> Result<()> {
        let mut plans = self.lock()?;
        let p = plans
            .get_mut(&(m, n, k))
            .ok_or_else(|| BackendError::Device(format!("no FP8 plan for {m}x{n}x{k}")))?;
        // SAFETY: the scale attributes hold device pointers (`void*`), passed by address
        // and copied by cuBLASLt.
        unsafe {
            lt::set_matmul_desc_attribute(
                p.desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                &w_scale as *const sys::CUdeviceptr as *const c_void,
                std::mem::size_of::<sys::CUdeviceptr>(),
            )
            .map_err(derr)?;
            lt::set_matmul_desc_attribute(
                p.desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                &x_scale as *const sys::CUdeviceptr as *const c_void,
                std::mem::size_of::<sys::CUdeviceptr>(),
            )
            .map_err(derr)?;
        }
        // cuBLASLt can rank an algorithm first and then refuse to run it (NOT_SUPPORTED
        // on an H100 with cuBLASLt 13, session 5): the next candidates are tried, and the
        // first that runs is kept for this shape. A refused call launches nothing.
        let mut last = None;
        while p.first < p.algos.len() {
            // SAFETY: the operands are live device buffers of the planned shapes
            // (checked by `matmul_fp8`), the scales live f32s; C = D with beta = 0.
            let r = unsafe {
                gemm.launch(
                    stream,
                    p.desc,
                    (p.a, p.b, p.d),
                    &p.algos[p.first],
                    (w, x, out),
                    0.0,
                )
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.0 == lt_sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => {
                    last = Some(e);
                    p.first += 1;
                }
                Err(e) => return Err(derr(e)),
            }
        }
        Err(BackendError::Device(format!(
            "cuBLASLt refused all {} FP8 algorithms for a {m}x{n}x{k} matmul: {last:?}",
            p.algos.len()
        )))
    }
}

impl CudaBackend {
    /// Host matrices of equal width (any dtypes) stacked by rows into one FP8 weight with
    /// one scale (see the module doc for the layout). Rows must be whole 16-byte loads.
    pub(super) fn prepare_fp8(&self, parts: &[Tensor]) -> Result<Tensor> {
        let cols = parts.first().map(|p| p.cols()).unwrap_or(0);
        if parts.is_empty()
            || cols == 0
            || !cols.is_multiple_of(16)
            || parts
                .iter()
                .any(|p| p.shape().len() != 2 || p.cols() != cols)
        {
            return Err(BackendError::Shape(format!(
                "FP8 weights need matrices of one width, a multiple of 16, got {:?}",
                parts.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>()
            )));
        }
        let rows: usize = parts.iter().map(|p| p.rows()).sum();
        let mut amax = 0f32;
        for p in parts {
            amax = amax.max(host_amax(p)?);
        }
        let scale = tensor_scale(amax);
        let inv = 1.0 / scale;
        let n = rows * cols;
        let mut bytes = vec![0u8; n + SCALE_BYTES];
        let mut at = 0;
        for p in parts {
            let len = p.rows() * cols;
            host_quantize(p, inv, &mut bytes[at..at + len])?;
            at += len;
        }
        bytes[n..n + 4].copy_from_slice(&scale.to_le_bytes());
        let mut buf = self.alloc(bytes.len())?;
        // SAFETY: the allocation holds `bytes.len()` bytes; the synchronize below (see
        // `upload`) outlives the use of `bytes`.
        unsafe { drv::memcpy_htod_async(buf.ptr, &bytes, self.stream) }.map_err(derr)?;
        self.synchronize()?;
        // The tensor's size is its codes; the scale stays behind them in the allocation.
        buf.len = n;
        Tensor::from_storage(DType::F8E4M3, &[rows, cols], Storage::Cuda(buf))
    }

    /// `out[t, m] = x[t, k] · w[m, k]ᵀ` for an FP8 weight above 4 rows (fewer went to the
    /// GEMVs in `matmul`; pointers checked there).
    pub(super) fn matmul_fp8(
        &self,
        px: sys::CUdeviceptr,
        pw: sys::CUdeviceptr,
        po: sys::CUdeviceptr,
        t: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        if !k.is_multiple_of(16) {
            return Err(BackendError::Shape(format!(
                "FP8 matmul: rows of {k} are not whole 16-byte loads"
            )));
        }
        let w_scale = pw + (m * k) as u64;
        if m.is_multiple_of(16)
            && self.fp8.enabled.load(Ordering::SeqCst)
            && self.fp8.ready(&self.gemm, m, t, k)?
        {
            let (x_scale, xq) = self.quantize_activations(px, t * k)?;
            match self.fp8.matmul(
                &self.gemm,
                self.stream,
                xq,
                pw,
                po,
                (t, m, k),
                x_scale,
                w_scale,
            ) {
                Ok(()) => return Ok(()),
                // cuBLASLt can offer a plan and still refuse the call (an H100 with
                // cuBLASLt 13 answered CUBLAS_STATUS_NOT_SUPPORTED): the FP8 GEMM turns
                // itself off, the reason is kept, and this and later calls take the bf16
                // path below.
                Err(e) => {
                    self.fp8.turn_off(&e);
                    tracing::warn!(
                        "FP8 GEMM unavailable ({e}); FP8 weights use the bf16 GEMM above 4 rows"
                    );
                }
            }
        }
        // The bf16 path: the weight dequantized into a scratch buffer, x converted.
        let wb = self.weight_scratch(m * k * 2)?;
        self.dequantize_bf16_ptrs(DType::F8E4M3, pw, wb, m, k)?;
        self.gemm_bf16_weight(px, wb, po, t, m, k)
    }

    /// Quantizes `n` f32 activations at `px` (n a multiple of 16) to E4M3 in the staging
    /// buffer with a per-tensor scale computed on the device: `(scale pointer, codes
    /// pointer)`. Queued on the stream, nothing waits.
    fn quantize_activations(
        &self,
        px: sys::CUdeviceptr,
        n: usize,
    ) -> Result<(sys::CUdeviceptr, sys::CUdeviceptr)> {
        let base = self.scratch_ptr(STAGED_CODES + n)?;
        let (amax, scale, codes) = (base, base + 16, base + STAGED_CODES as u64);
        // SAFETY: the first 4 bytes of the staging buffer, on our stream.
        unsafe { drv::memset_d8_async(amax, 0, 4, self.stream) }.map_err(derr)?;
        let nl = n as i64;
        // A few blocks per SM, each merging its maximum with one atomic.
        let grid = (n / 4)
            .div_ceil(THREADS as usize)
            .clamp(1, 4 * self.sm_count.max(1) as usize) as u32;
        self.launch(
            self.kernels.fp8_amax_kernel,
            (grid, 1, 1),
            THREADS,
            &mut args![px, nl, amax],
        )?;
        self.launch_1d(
            self.kernels.fp8_quantize_kernel,
            n / 16,
            &mut args![px, nl, amax, scale, codes],
        )?;
        Ok((scale, codes))
    }

    /// Whether matmuls of FP8 weights with more than 4 rows (and M a multiple of 16) run
    /// cuBLASLt's FP8 GEMM (sm_89+), rather than the bf16 fallback.
    pub fn fp8_tensor_cores(&self) -> bool {
        self.fp8.enabled.load(Ordering::SeqCst)
    }

    /// Turns the FP8 GEMM off (the bf16 fallback everywhere) or back on where the device
    /// has FP8 tensor cores; returns whether it is on now. For tests and comparisons
    /// (`SLUICE_FP8_GEMM=0` turns it off at start).
    pub fn set_fp8_tensor_cores(&self, on: bool) -> bool {
        self.fp8
            .enabled
            .store(on && self.fp8.supported, Ordering::SeqCst);
        self.fp8_tensor_cores()
    }

    /// Why the FP8 GEMM turned itself off (cuBLASLt offered no FP8 algorithm), if it did.
    pub fn fp8_gemm_failure(&self) -> Option<String> {
        self.fp8.failure.lock().ok().and_then(|f| f.clone())
    }

    /// The per-tensor scale of an FP8 weight (waits for the stream).
    pub fn fp8_scale(&self, w: &Tensor) -> Result<f32> {
        w.expect_dtype(DType::F8E4M3)?;
        let buf = cuda_buf(w)?;
        let mut s = [0f32; 1];
        self.synchronize()?;
        // SAFETY: `prepare_fp8` allocated SCALE_BYTES behind the codes (`buf.len`).
        unsafe { drv::memcpy_dtoh_sync(&mut s[..], buf.ptr + buf.len as u64) }.map_err(derr)?;
        Ok(s[0])
    }

    /// Runs the device's activation quantizer (the first step of an FP8 GEMM) on an F32
    /// tensor and returns its codes and scale: the test hook that checks it against
    /// [`quantize_e4m3`] bit for bit.
    pub fn fp8_quantize_to_host(&self, x: &Tensor) -> Result<(Vec<u8>, f32)> {
        x.expect_dtype(DType::F32)?;
        let n = x.numel();
        if !n.is_multiple_of(16) {
            return Err(BackendError::Shape(format!(
                "FP8 quantization of {n} values: not whole groups of 16"
            )));
        }
        if n == 0 {
            return Ok((Vec::new(), 1.0));
        }
        self.bind()?;
        let (scale, codes) = self.quantize_activations(cuda_buf(x)?.ptr(), n)?;
        let mut q = vec![0u8; n];
        let mut s = [0f32; 1];
        self.synchronize()?;
        // SAFETY: the staging buffer holds the scale and n codes; nothing else is queued.
        unsafe {
            drv::memcpy_dtoh_sync(&mut s[..], scale).map_err(derr)?;
            drv::memcpy_dtoh_sync(&mut q[..], codes).map_err(derr)?;
        }
        Ok((q, s[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The codec's own tests (every code, saturation, ties) are in quant/fp8.rs.
    #[test]
    fn tensor_scale_boundaries() {
        assert_eq!(tensor_scale(0.0), 1.0);
        assert_eq!(tensor_scale(448.0), 1.0);
        assert_eq!(tensor_scale(f32::INFINITY), 1.0);
    }

    #[test]
    fn fp8_needs_rows_of_whole_16_byte_loads() {
        use super::super::CudaWeightType;
        for file in [
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::Q8_0,
            DType::Q4_K,
        ] {
            assert_eq!(CudaWeightType::Fp8.resolve(file, 4096), DType::F8E4M3);
            assert_eq!(CudaWeightType::Fp8.resolve(file, 40), DType::BF16);
            assert_ne!(CudaWeightType::Auto.resolve(file, 4096), DType::F8E4M3);
        }
    }
}
