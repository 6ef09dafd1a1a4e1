//! Matmuls through cuBLASLt: `out[T, M] = x[T, K] · w[M, K]ᵀ`.
//!
//! cuBLASLt is column-major, so we compute `outᵀ (M×T) = op(W) · xᵀ` with W seen as a
//! K×M column-major matrix transposed (TRANSA = T) and xᵀ as K×T column-major. Inputs
//! are bf16/f16 (x converted by a kernel first) or f32 (compute type 32F without TF32:
//! exact f32 products for the reference path). The output is f32, or bf16 where the
//! consumer takes bf16 (the gate/up projection's, read by the bf16 GLU: half the bytes
//! of an f32 output each way); an f32 output can also be accumulated into (`out +=`, beta
//! 1, C = D: the residual add in the GEMM's epilogue). A plan (the descriptors and an
//! algorithm) is made once per shape and output type and reused, with or without the
//! accumulation (the heuristic does not see beta).
//!
//! Autotuning: the heuristic's first choice is often not the fastest for the skinny
//! GEMMs of batched decode (8-64 token rows against a 4096-14336 wide weight: bound by
//! the weight's bytes, which some tile shapes stream better than others). GEMMs planned
//! while the backend's tuning window is open (the first, eager step of each decode-graph
//! bucket: shapes that every replay repeats) and outside graph capture time the
//! heuristic's candidates on the call's inputs (into an output buffer of their own), once,
//! and keep the fastest (TensorRT-LLM's tactic selection, in miniature). Other shapes (prefill chunks of any
//! length) take the heuristic's first choice, so no request waits on timing. A shape
//! planned outside the window first (a prefill chunk with as many rows as a decode
//! bucket) is timed when a bucket's first step brings it back, and may change its
//! algorithm then, once: the 8B shape's batch-128 decode step ran 5% slower on the
//! heuristic's choices that a 128-token prefill had planned before it (H200, session 27:
//! 6.24 against 5.90 ms in `bench latency --batch-size 1,8,32,128`).
//! `SLUICE_GEMM_AUTOTUNE=0` turns it off. The choice can differ between runs (timing
//! noise between near-equal candidates), and candidates may sum in different orders
//! (split-K): outputs can then differ in the last bits from one process to the next, as
//! with any autotuning library; within a process a shape keeps its algorithm once timed.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{sys, CudaContext};

use super::{derr, CudaBuffer};
use crate::dtype::DType;
use crate::error::{BackendError, Result};

const WORKSPACE_BYTES: usize = 32 << 20;
/// The autotuner's L2 flush before each timed run (more than an H100's or H200's L2).
const FLUSH_BYTES: usize = 128 << 20;
/// How many algorithms to ask the heuristic for (the autotuner's candidates;
/// `SLUICE_GEMM_CANDIDATES` overrides, for tuning).
const ALGO_CANDIDATES: usize = 16;
/// Timed runs per candidate (after one untimed run).
const TUNE_RUNS: usize = 5;
/// `CUBLAS_OP_T` of cublasOperation_t.
const OP_T: i32 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    /// F32 or BF16.
    out: DType,
}

/// What a matmul writes (`Gemm::matmul`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GemmOut {
    /// `out = x · wᵀ` in f32.
    F32,
    /// `out += x · wᵀ` in f32 (beta 1 on the output itself).
    F32Accumulate,
    /// `out = x · wᵀ` rounded to bf16.
    Bf16,
}

impl GemmOut {
    fn dtype(self) -> DType {
        match self {
            GemmOut::F32 | GemmOut::F32Accumulate => DType::F32,
            GemmOut::Bf16 => DType::BF16,
        }
    }

    fn beta(self) -> f32 {
        if self == GemmOut::F32Accumulate {
            1.0
        } else {
            0.0
        }
    }
}

struct Plan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    a: lt_sys::cublasLtMatrixLayout_t,
    b: lt_sys::cublasLtMatrixLayout_t,
    d: lt_sys::cublasLtMatrixLayout_t,
    /// The heuristic's candidates, best first.
    algos: Vec<lt_sys::cublasLtMatmulAlgo_t>,
    /// The one in use.
    chosen: usize,
    /// Whether `tune` has timed the candidates (at most once per plan).
    timed: bool,
}

pub struct Gemm {
    handle: lt_sys::cublasLtHandle_t,
    workspace: CudaBuffer,
    plans: Mutex<HashMap<Key, Plan>>,
    /// Plans whose algorithm was picked by timing (for tests).
    tuned: std::sync::atomic::AtomicU64,
    /// Algorithms asked of the heuristic per plan.
    candidates: usize,
}

// SAFETY: the handle and descriptors are only used with the plans' mutex held or through
// cublasLtMatmul, which is thread-safe for a handle used on one stream at a time (the
// backend has one stream).
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

fn cuda_type(d: DType) -> Result<lt_sys::cudaDataType> {
    Ok(match d {
        DType::BF16 => lt_sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => lt_sys::cudaDataType::CUDA_R_16F,
        DType::F32 => lt_sys::cudaDataType::CUDA_R_32F,
        other => {
            return Err(BackendError::Unsupported {
                op: "cuBLASLt matmul",
                dtype: other,
            })
        }
    })
}

impl Gemm {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Gemm> {
        // SAFETY: checks for the library before any call into it.
        if !unsafe { lt_sys::is_culib_present() } {
            return Err(BackendError::Device(
                "cuBLASLt (libcublasLt.so) not found: install the CUDA toolkit's cuBLAS".into(),
            ));
        }
        let handle = lt::create_handle().map_err(derr)?;
        ctx.bind_to_thread().map_err(derr)?;
        // SAFETY: plain device allocation in the bound context.
        let ptr = unsafe { cudarc::driver::result::malloc_sync(WORKSPACE_BYTES) }.map_err(derr)?;
        Ok(Gemm {
            handle,
            workspace: CudaBuffer {
                ptr,
                len: WORKSPACE_BYTES,
                ctx: Arc::clone(ctx),
            },
            plans: Mutex::new(HashMap::new()),
            tuned: std::sync::atomic::AtomicU64::new(0),
            candidates: super::env_usize("SLUICE_GEMM_CANDIDATES", ALGO_CANDIDATES).min(256),
        })
    }

    fn plan(&self, key: Key) -> Result<Plan> {
        let ty = cuda_type(key.dtype)?;
        let f32t = lt_sys::cudaDataType::CUDA_R_32F;
        let desc = lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32t)
            .map_err(derr)?;
        // SAFETY: descriptors are freshly created; attribute buffers are sized to their type.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &OP_T as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
            .map_err(derr)?;
        }
        let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
        let a = lt::create_matrix_layout(ty, k, m, k as i64).map_err(derr)?;
        let b = lt::create_matrix_layout(ty, k, n, k as i64).map_err(derr)?;
        let d = lt::create_matrix_layout(cuda_type(key.out)?, m, n, m as i64).map_err(derr)?;
        let what = format!(
            "a {}x{}x{} {} matmul into {}",
            key.m, key.n, key.k, key.dtype, key.out
        );
        // SAFETY: the descriptors were just created and are live.
        let algos = unsafe { self.heuristic_algos(desc, a, b, d, self.candidates, &what) }?;
        Ok(Plan {
            desc,
            a,
            b,
            d,
            algos,
            chosen: 0,
            timed: false,
        })
    }

    /// Up to `max` algorithms cuBLASLt's heuristic offers for the matmul `desc` with
    /// layouts `a`, `b` and `d` (C = D), best first, within the shared workspace; at least
    /// one, or an error naming `what` (the matmul). Shared with the FP8 GEMM (cuda/fp8.rs).
    ///
    /// # Safety
    /// The descriptors must be live.
    pub(super) unsafe fn heuristic_algos(
        &self,
        desc: lt_sys::cublasLtMatmulDesc_t,
        a: lt_sys::cublasLtMatrixLayout_t,
        b: lt_sys::cublasLtMatrixLayout_t,
        d: lt_sys::cublasLtMatrixLayout_t,
        max: usize,
        what: &str,
    ) -> Result<Vec<lt_sys::cublasLtMatmulAlgo_t>> {
        let no_algo = |why: String| {
            BackendError::Device(format!("cuBLASLt has no algorithm for {what}{why}"))
        };
        let pref = lt::create_matmul_pref().map_err(|e| no_algo(format!(": {e:?}")))?;
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: a fresh preference, attribute buffers sized to their types; the
        // heuristic reads the live descriptors and writes at most `max` results into the
        // zeroed plain-data vector.
        unsafe {
            let mut results: Vec<lt_sys::cublasLtMatmulHeuristicResult_t> =
                vec![std::mem::zeroed(); max];
            let mut count = 0i32;
            let h = lt::set_matmul_pref_attribute(
                pref,
                lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .and_then(|_| {
                lt_sys::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    desc,
                    a,
                    b,
                    d,
                    d,
                    pref,
                    max as i32,
                    results.as_mut_ptr(),
                    &mut count,
                )
                .result()
            });
            let _ = lt::destroy_matmul_pref(pref);
            h.map_err(|e| no_algo(format!(": {e:?}")))?;
            let algos: Vec<_> = results[..count.clamp(0, max as i32) as usize]
                .iter()
                .filter(|r| r.state == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                .map(|r| r.algo)
                .collect();
            if algos.is_empty() {
                return Err(no_algo(String::new()));
            }
            Ok(algos)
        }
    }

    /// The one cuBLASLt call of the bf16 and FP8 GEMMs: `out = op(w) · x + beta · out`
    /// with the matmul `desc`, layouts `(a, b, d)` (C = D, in place, alpha 1) and `algo`,
    /// on the shared workspace.
    ///
    /// # Safety
    /// The descriptors must be live and `w`, `x`, `out` device buffers of the shapes they
    /// describe.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn launch(
        &self,
        stream: sys::CUstream,
        desc: lt_sys::cublasLtMatmulDesc_t,
        (a, b, d): (
            lt_sys::cublasLtMatrixLayout_t,
            lt_sys::cublasLtMatrixLayout_t,
            lt_sys::cublasLtMatrixLayout_t,
        ),
        algo: &lt_sys::cublasLtMatmulAlgo_t,
        (w, x, out): (sys::CUdeviceptr, sys::CUdeviceptr, sys::CUdeviceptr),
        beta: f32,
    ) -> std::result::Result<(), lt::CublasError> {
        let alpha = 1.0f32;
        // SAFETY: the caller's promise; C = D (cuBLASLt computes in place when the two
        // layouts are the same); the workspace is ours.
        unsafe {
            lt::matmul(
                self.handle,
                desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                a,
                x as *const c_void,
                b,
                out as *const c_void,
                d,
                out as *mut c_void,
                d,
                algo,
                self.workspace.ptr as *mut c_void,
                WORKSPACE_BYTES,
                stream as lt_sys::cudaStream_t,
            )
        }
    }

    /// Runs `p`'s candidate `i` once on the given buffers.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        stream: sys::CUstream,
        p: &Plan,
        i: usize,
        x: sys::CUdeviceptr,
        w: sys::CUdeviceptr,
        out: sys::CUdeviceptr,
        beta: f32,
    ) -> Result<()> {
        // SAFETY: the plan's descriptors are live; the buffers are of the planned shapes
        // (checked by the caller).
        let algo = &p.algos[i];
        unsafe { self.launch(stream, p.desc, (p.a, p.b, p.d), algo, (w, x, out), beta) }
            .map_err(derr)
    }

    /// Times every candidate of `p` on the call's inputs, writing an output buffer of its
    /// own (the caller's output stays as it was: an accumulating call adds into it once,
    /// afterwards), and picks the fastest; a candidate the library refuses is skipped.
    /// Synchronizes the stream. The runs write (beta 0): the same kernels as with beta 1.
    ///
    /// Each timed run starts with a cold L2: a decode step streams each weight from
    /// memory once, while back-to-back runs of one GEMM would find a weight of up to the
    /// L2's size (50 MB on an H100: the 8B shape's QKV and output projections) in it, and
    /// would time the wrong thing.
    fn tune(
        &self,
        stream: sys::CUstream,
        key: Key,
        p: &mut Plan,
        (x, w): (sys::CUdeviceptr, sys::CUdeviceptr),
    ) -> Result<()> {
        use cudarc::driver::result::{event, free_sync, malloc_sync, stream as drv_stream};
        let out_bytes = key.n * key.m * if key.out == DType::BF16 { 2 } else { 4 };
        // SAFETY: plain allocations and fresh events, all released below after the stream
        // is synchronized; no flush buffer if memory is short (warm runs then).
        let out = unsafe { malloc_sync(out_bytes) }.map_err(derr)?;
        let flush = unsafe { malloc_sync(FLUSH_BYTES) }.ok();
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let events = event::create(flags).and_then(|a| event::create(flags).map(|b| (a, b)));
        let timed = match events {
            Ok(ev) => self.time_candidates(stream, p, (x, w, out), flush, ev),
            Err(e) => Err(derr(e)),
        };
        // SAFETY: the stream is synchronized (also when timing stopped early with runs
        // queued), so nothing uses these any more.
        unsafe {
            let _ = drv_stream::synchronize(stream);
            if let Ok((a, b)) = events {
                let _ = event::destroy(a);
                let _ = event::destroy(b);
            }
            if let Some(f) = flush {
                let _ = free_sync(f);
            }
            let _ = free_sync(out);
        }
        let Some(((i, ms), first)) = timed? else {
            return Ok(());
        };
        p.chosen = i;
        self.tuned.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let us = |ms: f32| ms * 1e3 / TUNE_RUNS as f32;
        tracing::debug!(
            "cuBLASLt autotune {}x{}x{} {} into {}: candidate {i} of {}, {:.1} us (heuristic's first: {:.1} us)",
            key.m,
            key.n,
            key.k,
            key.dtype,
            key.out,
            p.algos.len(),
            us(ms),
            us(first)
        );
        Ok(())
    }

    /// `tune`'s timing loop: ((the fastest candidate, its ms over `TUNE_RUNS`), the first
    /// candidate's ms), or None when the library refused them all.
    fn time_candidates(
        &self,
        stream: sys::CUstream,
        p: &Plan,
        (x, w, out): (sys::CUdeviceptr, sys::CUdeviceptr, sys::CUdeviceptr),
        flush: Option<sys::CUdeviceptr>,
        (start, end): (sys::CUevent, sys::CUevent),
    ) -> Result<Option<((usize, f32), f32)>> {
        use cudarc::driver::result::{event, memset_d8_async, stream as drv_stream};
        let mut best: Option<(usize, f32)> = None;
        let mut first = f32::NAN;
        'candidates: for i in 0..p.algos.len() {
            if self.run(stream, p, i, x, w, out, 0.0).is_err() {
                continue;
            }
            let mut ms = 0.0f32;
            for _ in 0..TUNE_RUNS {
                // SAFETY: the flush buffer is ours; the events belong to this context and
                // are recorded on our stream.
                unsafe {
                    if let Some(f) = flush {
                        memset_d8_async(f, 0, FLUSH_BYTES, stream).map_err(derr)?;
                    }
                    event::record(start, stream).map_err(derr)?;
                    let ok = self.run(stream, p, i, x, w, out, 0.0).is_ok();
                    event::record(end, stream).map_err(derr)?;
                    drv_stream::synchronize(stream).map_err(derr)?;
                    if !ok {
                        continue 'candidates;
                    }
                    ms += event::elapsed(start, end).map_err(derr)?;
                }
            }
            if i == 0 {
                first = ms;
            }
            if best.is_none_or(|(_, b)| ms < b) {
                best = Some((i, ms));
            }
        }
        Ok(best.map(|b| (b, first)))
    }

    /// How many plans picked their algorithm by timing.
    pub fn tuned_plans(&self) -> u64 {
        self.tuned.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `out[n, m] = x[n, k] · w[m, k]ᵀ` (or `+=`, see `GemmOut`) with x and w of `dtype`.
    /// `tune`: a new plan may time its candidates (the backend's tuning window is open, no
    /// capture).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        stream: sys::CUstream,
        dtype: DType,
        x: sys::CUdeviceptr,
        w: sys::CUdeviceptr,
        (out, kind): (sys::CUdeviceptr, GemmOut),
        n: usize,
        m: usize,
        k: usize,
        tune: bool,
    ) -> Result<()> {
        if dtype == DType::F32 && kind == GemmOut::Bf16 {
            return Err(BackendError::Unsupported {
                op: "cuBLASLt matmul with f32 inputs into bf16",
                dtype,
            });
        }
        let key = Key {
            m,
            n,
            k,
            dtype,
            out: kind.dtype(),
        };
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| BackendError::Device("cuBLASLt plan cache poisoned".into()))?;
        let p = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key)?),
        };
        // Not the exact f32 reference path: it is there for its numbers. A plan made
        // outside the window is timed when a window brings its shape back.
        if tune && !p.timed && dtype != DType::F32 && p.algos.len() > 1 {
            p.timed = true;
            self.tune(stream, key, p, (x, w))?;
        }
        self.run(stream, p, p.chosen, x, w, out, kind.beta())
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        if let Ok(plans) = self.plans.get_mut() {
            for (_, p) in plans.drain() {
                // SAFETY: each descriptor was created once in `plan`.
                unsafe {
                    let _ = lt::destroy_matrix_layout(p.a);
                    let _ = lt::destroy_matrix_layout(p.b);
                    let _ = lt::destroy_matrix_layout(p.d);
                    let _ = lt::destroy_matmul_desc(p.desc);
                }
            }
        }
        // SAFETY: created in `new`.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}
