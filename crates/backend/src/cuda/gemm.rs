//! Matmuls through cuBLASLt: `out[T, M] = x[T, K] · w[M, K]ᵀ`.
//!
//! cuBLASLt is column-major, so we compute `outᵀ (M×T) = op(W) · xᵀ` with W seen as a
//! K×M column-major matrix transposed (TRANSA = T) and xᵀ as K×T column-major. Inputs
//! are bf16/f16 (x converted by a kernel first) or f32 (compute type 32F without TF32:
//! exact f32 products for the reference path); the output is always f32. A plan (the
//! descriptors and the heuristic's algorithm) is made once per shape and reused.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{sys, CudaContext};

use super::{derr, CudaBuffer};
use crate::dtype::DType;
use crate::error::{BackendError, Result};

const WORKSPACE_BYTES: usize = 32 << 20;
/// `CUBLAS_OP_T` of cublasOperation_t.
const OP_T: i32 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
}

struct Plan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    a: lt_sys::cublasLtMatrixLayout_t,
    b: lt_sys::cublasLtMatrixLayout_t,
    d: lt_sys::cublasLtMatrixLayout_t,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

pub struct Gemm {
    handle: lt_sys::cublasLtHandle_t,
    workspace: CudaBuffer,
    plans: Mutex<HashMap<Key, Plan>>,
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
        let d = lt::create_matrix_layout(f32t, m, n, m as i64).map_err(derr)?;
        let pref = lt::create_matmul_pref().map_err(derr)?;
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: as above; the heuristic reads the live descriptors.
        let heur = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .map_err(derr)?;
            let h = lt::get_matmul_algo_heuristic(self.handle, desc, a, b, d, d, pref);
            let _ = lt::destroy_matmul_pref(pref);
            h
        }
        .map_err(|e| {
            BackendError::Device(format!(
                "cuBLASLt has no algorithm for a {}x{}x{} {} matmul: {e:?}",
                key.m, key.n, key.k, key.dtype
            ))
        })?;
        Ok(Plan {
            desc,
            a,
            b,
            d,
            algo: heur.algo,
        })
    }

    /// The cuBLASLt handle, shared with the FP8 GEMM (cuda/fp8.rs).
    pub(super) fn handle(&self) -> lt_sys::cublasLtHandle_t {
        self.handle
    }

    /// The workspace (pointer, bytes), shared with the FP8 GEMM on the same stream.
    pub(super) fn workspace(&self) -> (sys::CUdeviceptr, usize) {
        (self.workspace.ptr, WORKSPACE_BYTES)
    }

    /// `out[n, m] = x[n, k] · w[m, k]ᵀ` with x and w of `dtype` and out f32.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        stream: sys::CUstream,
        dtype: DType,
        x: sys::CUdeviceptr,
        w: sys::CUdeviceptr,
        out: sys::CUdeviceptr,
        n: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        let key = Key { m, n, k, dtype };
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| BackendError::Device("cuBLASLt plan cache poisoned".into()))?;
        let p = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key)?),
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: pointers are live device buffers of the planned shapes (checked by the
        // caller); C = D with beta = 0; the workspace is ours.
        unsafe {
            lt::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                p.a,
                x as *const c_void,
                p.b,
                out as *const c_void,
                p.d,
                out as *mut c_void,
                p.d,
                &p.algo,
                self.workspace.ptr as *mut c_void,
                WORKSPACE_BYTES,
                stream as lt_sys::cudaStream_t,
            )
        }
        .map_err(derr)
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
