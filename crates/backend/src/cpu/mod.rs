//! The CPU backend: SIMD kernels chosen at run time, run on a low-latency thread pool.

pub mod attention;
pub mod features;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod simd;

use crate::error::Result;
use crate::tensor::Tensor;
pub use features::CpuFeatures;
use pool::ThreadPool;

/// CPU backend state: the thread pool and the detected instruction sets.
pub struct CpuBackend {
    pub(crate) pool: ThreadPool,
    pub(crate) features: CpuFeatures,
    /// Quantized-activation scratch of the matmul (grow-only).
    pub(crate) matmul_scratch: matmul::ScratchCell,
}

impl CpuBackend {
    /// `threads`: worker threads including the caller; default: available cores.
    pub fn new(threads: Option<usize>) -> CpuBackend {
        let n = threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        CpuBackend {
            pool: ThreadPool::new(n),
            features: CpuFeatures::detect(),
            matmul_scratch: Default::default(),
        }
    }

    /// A backend with `threads` threads (at least 1) whose kernels use at most
    /// `features` (intersected with what the CPU really has), to run and test each
    /// SIMD path.
    pub fn with_features(threads: usize, features: CpuFeatures) -> CpuBackend {
        let real = CpuFeatures::detect_capped(None);
        let f = CpuFeatures {
            avx2: features.avx2 && real.avx2,
            fma: features.fma && real.fma,
            f16c: features.f16c && real.f16c,
            avx512f: features.avx512f && real.avx512f,
            avx512bw: features.avx512bw && real.avx512bw,
            avx512vnni: features.avx512vnni && real.avx512vnni,
            avx512bf16: features.avx512bf16 && real.avx512bf16,
            avxvnni: features.avxvnni && real.avxvnni,
            neon: features.neon && real.neon,
            dotprod: features.dotprod && real.dotprod,
            reference: features.reference,
        };
        CpuBackend {
            pool: ThreadPool::new(threads.max(1)),
            features: f,
            matmul_scratch: Default::default(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "cpu ({} threads, {})",
            self.pool.n_threads(),
            self.features.describe()
        )
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    pub fn features(&self) -> &CpuFeatures {
        &self.features
    }

    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    /// Repacks a weight for the matmul kernels if that pays; identity otherwise.
    pub fn prepare_weight(&self, host: Tensor) -> Result<Tensor> {
        matmul::prepare_weight(self, host)
    }

    pub fn matmul(&self, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
        matmul::matmul(self, x, w, out)
    }
}
