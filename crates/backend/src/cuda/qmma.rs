//! Quantized weights times a few token rows on the tensor cores (kernels/qmma.cu).
//!
//! Batched decode with Q8_0, Q4_K or Q6_K weights: 5 up to [`DEFAULT_MAX_ROWS`] token rows (fewer go to
//! the GEMVs, more to dequantize + cuBLASLt, where the extra pass over the weight is paid
//! back by the many rows). The weight is read once, in its quantized layout, and turned
//! into bf16 mma fragments in registers; the activations are the staged bf16 copy the
//! cuBLASLt path would take, so both paths multiply the same bf16 values and differ only
//! in the order of the f32 sums.
//!
//! Work split: 128 weight rows per block, up to 64 tokens per block (more tokens: a grid
//! row per 64), and K in `splits` equal runs of chunks whose blocks form one thread-block
//! cluster and add their partial tiles through distributed shared memory (sm_90; one
//! split before). `splits` is the largest power of two up to 8 that keeps the grid within
//! one wave of resident blocks, with at least four chunks per split.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use cudarc::driver::sys;

use super::CudaBackend;
use crate::dtype::DType;
use crate::error::Result;

/// A pointer-to-value for the kernel argument list.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        [$(&$v as *const _ as *mut c_void),*]
    };
}

/// Token rows up to which quantized matmuls take the tensor-core kernel by default.
pub const DEFAULT_MAX_ROWS: usize = 64;

/// Weight rows per block (`QM_ROWS`) and threads per block (`QM_WARPS * 32`).
const ROWS_PER_BLOCK: usize = 128;
const THREADS: u32 = 128;
/// Tokens per block at most (eight n8 tiles).
const TOKENS_PER_BLOCK: usize = 64;
/// Largest K split (a portable cluster size).
const MAX_SPLITS: usize = 8;
/// Fewest chunks of K a split should have.
const MIN_CHUNKS_PER_SPLIT: usize = 4;

/// How one quantized mma launch divides its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QmmaPlan {
    /// n8 tiles of tokens per block (1, 2, 4 or 8).
    pub token_tiles: usize,
    /// Blocks along rows, tokens and K.
    pub grid: (usize, usize, usize),
    pub chunks_per_split: usize,
}

/// The plan for `t` token rows of a `[m, k]` weight read in chunks of `chunk` elements,
/// with `slots` blocks resident at once and clusters of up to `max_cluster` blocks.
pub fn plan(
    t: usize,
    m: usize,
    k: usize,
    chunk: usize,
    slots: usize,
    max_cluster: usize,
) -> QmmaPlan {
    let token_tiles = t.div_ceil(8).next_power_of_two().min(TOKENS_PER_BLOCK / 8);
    let rows = m.div_ceil(ROWS_PER_BLOCK);
    let groups = t.div_ceil(token_tiles * 8);
    let chunks = k.div_ceil(chunk);
    let mut splits = 1;
    while splits * 2 <= MAX_SPLITS.min(max_cluster)
        && rows * groups * splits * 2 <= slots
        && chunks / (splits * 2) >= MIN_CHUNKS_PER_SPLIT
    {
        splits *= 2;
    }
    QmmaPlan {
        token_tiles,
        grid: (rows, groups, splits),
        chunks_per_split: chunks.div_ceil(splits),
    }
}

impl CudaBackend {
    /// Whether the quantized mma takes `t` rows of x against a `dtype` weight with rows of
    /// `k` (Q8_0, Q4_K, Q6_K in whole blocks; 5 up to `qmma_max_rows` rows).
    pub(super) fn qmma_applies(&self, dtype: DType, k: usize, t: usize) -> bool {
        let whole_blocks = match dtype {
            DType::Q8_0 => k.is_multiple_of(32),
            DType::Q4_K | DType::Q6_K => k.is_multiple_of(256),
            _ => false,
        };
        whole_blocks && t > 4 && t <= self.qmma_max_rows.load(Ordering::Relaxed)
    }

    /// Sets the most token rows the quantized mma takes (0: never; for tests and
    /// comparisons, like `SLUICE_QMMA_MAX_ROWS`). Returns the previous value.
    pub fn set_quantized_mma_rows(&self, n: usize) -> usize {
        self.qmma_max_rows.swap(n, Ordering::SeqCst)
    }

    /// `out[t, m] = x[t, k] · w[m, k]ᵀ` with x f32 at `px` (its staged bf16 copy, or one
    /// made now) and a quantized weight at `pw` in its GPU layout (see `qmma_applies`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_qmma(
        &self,
        dtype: DType,
        px: sys::CUdeviceptr,
        pw: sys::CUdeviceptr,
        po: sys::CUdeviceptr,
        t: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        debug_assert!(self.qmma_applies(dtype, k, t));
        let xin = self.bf16_input(px, t * k)?;
        // Resident blocks per SM: registers allow 3 (2 with eight token tiles, 208
        // registers a thread; kernels/qmma.cu's launch bounds).
        let per_sm = match self.qmma_blocks_per_sm {
            0 if t > 32 => 2,
            0 => 3,
            n => n,
        };
        let slots = self.sm_count as usize * per_sm;
        let cluster = self.decode_cluster_limit.clamp(1, MAX_SPLITS);
        let kern = &self.kernels;
        // Each format's kernels by token tiles (1, 2, 4, 8), and its chunk of K.
        let (fs, chunk) = match dtype {
            DType::Q4_K => (
                [
                    kern.qmma_q4_k_n1,
                    kern.qmma_q4_k_n2,
                    kern.qmma_q4_k_n4,
                    kern.qmma_q4_k_n8,
                ],
                128,
            ),
            DType::Q6_K => (
                [
                    kern.qmma_q6_k_n1,
                    kern.qmma_q6_k_n2,
                    kern.qmma_q6_k_n4,
                    kern.qmma_q6_k_n8,
                ],
                64,
            ),
            _ => (
                [
                    kern.qmma_q8_0_n1,
                    kern.qmma_q8_0_n2,
                    kern.qmma_q8_0_n4,
                    kern.qmma_q8_0_n8,
                ],
                64,
            ),
        };
        let p = plan(t, m, k, chunk, slots, cluster);
        let f = fs[p.token_tiles.trailing_zeros() as usize];
        let (mi, ki, ti, cps) = (m as i32, k as i32, t as i32, p.chunks_per_split as i32);
        let mut a = args![xin, pw, po, mi, ki, ti, cps];
        let grid = (p.grid.0 as u32, p.grid.1 as u32, p.grid.2 as u32);
        self.launch_clustered(f, grid, THREADS, &mut a, grid.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_fill_the_gpu_without_tiny_splits() {
        // 132 SMs x 3 blocks. The 8B shape's O projection at 32 tokens: 32 row blocks,
        // split 8 ways (256 blocks), 8 chunks of 64 each.
        let p = plan(32, 4096, 4096, 64, 396, 8);
        assert_eq!(p.token_tiles, 4);
        assert_eq!(p.grid, (32, 1, 8));
        assert_eq!(p.chunks_per_split, 8);
        // gate/up: 224 row blocks already fill most of the slots.
        assert_eq!(plan(64, 28672, 4096, 64, 396, 8).grid, (224, 1, 1));
        // Few chunks: no split below four chunks each.
        assert_eq!(plan(8, 256, 576, 64, 396, 8).grid, (2, 1, 2));
        // No clusters (before sm_90): never split.
        assert_eq!(plan(8, 256, 4096, 64, 396, 1).grid, (2, 1, 1));
        // More than 64 tokens: groups of 64; 5 tokens take one n8 tile.
        let p = plan(100, 4096, 4096, 64, 396, 8);
        assert_eq!((p.token_tiles, p.grid.1), (8, 2));
        assert_eq!(plan(5, 4096, 4096, 64, 396, 8).token_tiles, 1);
        assert_eq!(plan(9, 4096, 4096, 64, 396, 8).token_tiles, 2);
        assert_eq!(plan(33, 4096, 4096, 64, 396, 8).token_tiles, 8);
    }
}
