//! The CPU backend: SIMD kernels chosen at run time, run on a low-latency thread pool.

pub mod attention;
pub mod features;
pub mod matmul;
pub mod ops;
pub mod pool;

use crate::error::Result;
use crate::tensor::Tensor;
pub use features::CpuFeatures;
use pool::ThreadPool;

/// CPU backend state: the thread pool and the detected instruction sets.
pub struct CpuBackend {
    pub(crate) pool: ThreadPool,
    pub(crate) features: CpuFeatures,
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
