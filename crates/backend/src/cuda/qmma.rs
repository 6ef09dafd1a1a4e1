//! Quantized weights times a few token rows on the tensor cores (kernels/qmma.cu).
//!
//! Batched decode with Q8_0, Q4_K or Q6_K weights: from 5 token rows up to
//! [`default_max_rows`] (fewer go to the GEMVs, more to dequantize + cuBLASLt, where the
//! extra pass over the weight is paid back by the many rows). The weight is read once, in its quantized layout, and turned
//! into bf16 mma fragments in registers; the activations are the staged bf16 copy the
//! cuBLASLt path would take, so both paths multiply the same bf16 values and differ only
//! in the order of the f32 sums.
//!
//! Work split: 128 weight rows per block, up to 64 tokens per block (more tokens: a grid
//! row per 64), and K in `splits` equal runs of chunks whose blocks form one thread-block
//! cluster and add their partial tiles through distributed shared memory (sm_90; one
//! split before). `splits` is the largest power of two up to 8 that keeps the grid within
//! [`DEFAULT_BLOCKS_PER_SM`] blocks per SM (`SLUICE_QMMA_BLOCKS_PER_SM`), with at least
//! four chunks per split. Dynamic shared memory: 39-110 KB a block.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use cudarc::driver::sys;

use super::CudaBackend;
use crate::dtype::DType;
use crate::error::{BackendError, Result};

/// A pointer-to-value for the kernel argument list.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        [$(&$v as *const _ as *mut c_void),*]
    };
}

/// `qmma_max_rows` when neither `SLUICE_QMMA_MAX_ROWS` nor `set_quantized_mma_rows` set
/// it: each format's own limit, [`default_max_rows`].
pub const AUTO: usize = usize::MAX;

/// Token rows up to which a `dtype` weight takes the tensor-core kernel by default. Measured
/// on an H100 (8B shape, decode step ms, this kernel against dequantize + cuBLASLt; see
/// docs/BENCHMARKS.md, session 13): Q8_0 at 64 rows 12.4 against 16.0, at 128 rows 21.0
/// against 18.2 (two token groups read the weight twice); Q4_K at 128 rows 16.9 against
/// 22.0 (a third of Q8_0's bytes less to re-read). Q6_K follows Q4_K (untimed).
pub fn default_max_rows(dtype: DType) -> usize {
    match dtype {
        DType::Q8_0 => 64,
        _ => 128,
    }
}

/// Weight rows per block (`QM_ROWS`) and threads per block (`QM_WARPS * 32`).
const ROWS_PER_BLOCK: usize = 128;
const THREADS: u32 = 128;
/// Tokens per block at most (eight n8 tiles).
const TOKENS_PER_BLOCK: usize = 64;
/// Blocks per SM the K split aims for: about three to four waves of resident blocks
/// (3-4 per SM). More blocks than one wave hide the kernel's latency better: on an H100,
/// 12 against one wave took 8B Q8_0 decode steps from 6.10 to 5.81 ms at 8 sequences and
/// from 6.69 to 6.42 at 16 (docs/BENCHMARKS.md, session 13).
const DEFAULT_BLOCKS_PER_SM: usize = 12;
/// Largest K split (a portable cluster size).
const MAX_SPLITS: usize = 8;
/// Fewest chunks of K a split should have.
const MIN_CHUNKS_PER_SPLIT: usize = 4;

/// What the launcher needs of a format's kernels (the `QmQ*` structs of kernels/qmma.cu):
/// K per chunk, and quant and scale bytes per row and chunk in shared memory.
#[derive(Debug, Clone, Copy)]
struct Format {
    chunk: usize,
    quant_bytes: usize,
    scale_bytes: usize,
}

const Q8_0: Format = Format {
    chunk: 64,
    quant_bytes: 64,
    scale_bytes: 8,
};
const Q4_K: Format = Format {
    chunk: 128,
    quant_bytes: 64,
    scale_bytes: 16,
};
const Q6_K: Format = Format {
    chunk: 64,
    quant_bytes: 48,
    scale_bytes: 8,
};

/// Chunks in flight (`QM_STAGES`).
const STAGES: usize = 4;

impl Format {
    /// Dynamic shared memory of the kernel with `token_tiles` n8 tiles (`QmSmem::BYTES`):
    /// the stages (x rows padded by 8 bf16, quants, scales) or the partial tile, whichever
    /// is larger. The kernel traps if it gets less.
    fn smem_bytes(self, token_tiles: usize) -> usize {
        let x = token_tiles * 8 * (self.chunk + 8) * 2;
        let stage = x + ROWS_PER_BLOCK * (self.quant_bytes + self.scale_bytes);
        let tile = (ROWS_PER_BLOCK + 4) * token_tiles * 8 * 4;
        (STAGES * stage).max(tile)
    }
}

/// n8 tiles of tokens per block for `t` token rows: 1, 2, 4 or 8.
fn token_tiles(t: usize) -> usize {
    t.div_ceil(8).next_power_of_two().min(TOKENS_PER_BLOCK / 8)
}

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
/// with room for `slots` blocks and clusters of up to `max_cluster` blocks.
pub fn plan(
    t: usize,
    m: usize,
    k: usize,
    chunk: usize,
    slots: usize,
    max_cluster: usize,
) -> QmmaPlan {
    let token_tiles = token_tiles(t);
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
    /// `k` (Q8_0, Q4_K, Q6_K in whole blocks; from 5 rows up to the format's limit).
    pub(super) fn qmma_applies(&self, dtype: DType, k: usize, t: usize) -> bool {
        let whole_blocks = match dtype {
            DType::Q8_0 => k.is_multiple_of(32),
            DType::Q4_K | DType::Q6_K => k.is_multiple_of(256),
            _ => false,
        };
        let max_rows = match self.qmma_max_rows.load(Ordering::Relaxed) {
            AUTO => default_max_rows(dtype),
            n => n,
        };
        whole_blocks && t > 4 && t <= max_rows
    }

    /// Sets the most token rows the quantized mma takes for every format (0: never;
    /// [`AUTO`]: each format's default; for tests and comparisons, like
    /// `SLUICE_QMMA_MAX_ROWS`). Returns the previous value.
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
        let kern = &self.kernels;
        // Each format's kernels by token tiles (1, 2, 4, 8), and its layout.
        let (fs, fmt) = match dtype {
            DType::Q4_K => (
                [
                    kern.qmma_q4_k_n1,
                    kern.qmma_q4_k_n2,
                    kern.qmma_q4_k_n4,
                    kern.qmma_q4_k_n8,
                ],
                Q4_K,
            ),
            DType::Q6_K => (
                [
                    kern.qmma_q6_k_n1,
                    kern.qmma_q6_k_n2,
                    kern.qmma_q6_k_n4,
                    kern.qmma_q6_k_n8,
                ],
                Q6_K,
            ),
            _ => (
                [
                    kern.qmma_q8_0_n1,
                    kern.qmma_q8_0_n2,
                    kern.qmma_q8_0_n4,
                    kern.qmma_q8_0_n8,
                ],
                Q8_0,
            ),
        };
        let token_tiles = token_tiles(t);
        let f = fs[token_tiles.trailing_zeros() as usize];
        let smem = fmt.smem_bytes(token_tiles);
        self.allow_dynamic_smem(f, smem)?;
        let per_sm = match self.qmma_blocks_per_sm {
            0 => DEFAULT_BLOCKS_PER_SM,
            n => n,
        };
        let slots = self.sm_count as usize * per_sm;
        let cluster = self.decode_cluster_limit.clamp(1, MAX_SPLITS);
        let p = plan(t, m, k, fmt.chunk, slots, cluster);
        let (mi, ki, ti, cps) = (m as i32, k as i32, t as i32, p.chunks_per_split as i32);
        let mut a = args![xin, pw, po, mi, ki, ti, cps];
        let grid = (p.grid.0 as u32, p.grid.1 as u32, p.grid.2 as u32);
        // The kernel writes `out` alone, so a staged bf16 copy of another tensor (x's,
        // shared by separate Q/K/V projections of one norm) stays valid across it, as
        // across a cuBLASLt GEMM; the launch drops the record, so it is put back.
        let staged = self.staged.lock().ok().and_then(|g| *g);
        self.launch_with(f, grid, THREADS, &mut a, grid.2, smem as u32)?;
        if let Some(s) = staged.filter(|s| s.src != po && s.dst != po) {
            self.set_staged(s.src, s.n, s.dst);
        }
        Ok(())
    }

    /// Allows `f` `smem` bytes of dynamic shared memory (needed above 48 KB), once per
    /// kernel.
    fn allow_dynamic_smem(&self, f: sys::CUfunction, smem: usize) -> Result<()> {
        let mut done = self
            .smem_prepared
            .lock()
            .map_err(|_| BackendError::Device("shared-memory kernel set poisoned".into()))?;
        if done.contains(&(f as usize)) {
            return Ok(());
        }
        // (At most 110,592 bytes.)
        super::module::set_max_dynamic_smem(f, smem)?;
        done.insert(f as usize);
        Ok(())
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

    #[test]
    fn shared_memory_is_the_stages_or_the_partial_tile() {
        // Q8_0, one token tile: 4 x (8 x 72 x 2 + 128 x 72) = 41,472 bytes of stages.
        assert_eq!(Q8_0.smem_bytes(1), 41_472);
        // Eight tiles: 4 x (64 x 144 + 9,216) = 73,728; the tile (132 x 64 x 4) is smaller.
        assert_eq!(Q8_0.smem_bytes(8), 73_728);
        // Q4_K's 128-weight chunks: 4 x (64 x 272 + 128 x 80) = 110,592, under the 227 KB
        // a block may have on sm_90.
        assert_eq!(Q4_K.smem_bytes(8), 110_592);
        assert_eq!(Q6_K.smem_bytes(2), 4 * (16 * 144 + 128 * 56));
    }
}
