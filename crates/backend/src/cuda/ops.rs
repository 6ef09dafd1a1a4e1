//! The transformer ops on the CUDA backend: shape checks on the host, then one kernel
//! launch each (matmul: our GEMV for up to 4 rows, else cuBLASLt).

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use cudarc::driver::sys;

use super::gemm::GemmOut;
use super::module::KvKind;
use super::{cuda_buf, CudaBackend};
use crate::device::{AttentionParams, PagedAttentionMeta, RopeStyle};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::Tensor;

pub(super) const THREADS: u32 = 256;

/// A pointer-to-value for the kernel argument list.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        [$(&$v as *const _ as *mut c_void),*]
    };
}

fn ptr(t: &Tensor) -> Result<sys::CUdeviceptr> {
    Ok(cuda_buf(t)?.ptr())
}

fn check_f32(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        if t.dtype() != DType::F32 {
            return Err(BackendError::Unsupported {
                op,
                dtype: t.dtype(),
            });
        }
    }
    Ok(())
}

fn same_numel(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.numel() != b.numel() {
        return Err(BackendError::Shape(format!(
            "{op}: {:?} and {:?} differ in size",
            a.shape(),
            b.shape()
        )));
    }
    Ok(())
}

/// What a batch-1 GEMV fuses (kernels/gemv.cu `gemv1_rows_body`): an RMSNorm of x with
/// weight `gamma` (0: none) in front, and `out +=` instead of `out =` behind.
#[derive(Clone, Copy)]
pub(super) struct Gemv1Fusion {
    pub gamma: sys::CUdeviceptr,
    pub eps: f32,
    pub accumulate: bool,
}

impl Gemv1Fusion {
    pub const NONE: Gemv1Fusion = Gemv1Fusion {
        gamma: 0,
        eps: 0.0,
        accumulate: false,
    };
}

/// Warps per output row for the GEMV (1, 2, 4 or 8 of a block's 8): the fewest that give
/// at least two blocks per SM, so small projections still keep enough loads in flight.
pub(crate) fn gemv_warps_per_row(m: usize, sms: usize, blocks_per_sm: usize) -> u32 {
    let want = blocks_per_sm * sms.max(1);
    for wpr in [1u32, 2, 4] {
        if m.div_ceil(8 / wpr as usize) >= want {
            return wpr;
        }
    }
    8
}

/// Key splits for attention over `blocks` (row, KV head) pairs and contexts of at most
/// `max_ctx` keys: `(splits, keys per split)`. One split when the pairs alone fill the
/// GPU (4 blocks per SM); otherwise as many as make up the difference, but no more than
/// one per 64 keys of context (shorter splits cost more in the merge than they save).
pub(crate) fn attention_splits(blocks: usize, max_ctx: usize, sms: usize) -> (usize, usize) {
    let target = 4 * sms.max(1);
    let max_ctx = max_ctx.max(1);
    if blocks >= target {
        return (1, max_ctx);
    }
    let want = target.div_ceil(blocks.max(1));
    // (at most 1,024: the merge kernel keeps one weight per split in shared memory)
    let splits = want.min(max_ctx.div_ceil(64)).clamp(1, 1024);
    let split_len = max_ctx.div_ceil(splits);
    (max_ctx.div_ceil(split_len), split_len)
}

/// Partial states of split-K decode attention are capped at this many bytes (T rows x
/// heads x splits x (head_dim + 2) f32): a step with a long prefill chunk next to a few
/// decodes then runs the decodes unsplit instead of staging (and merging) partials for
/// every prefill row too.
const DECODE_PARTIAL_BUDGET: usize = 32 << 20;

/// Key splits for the tensor-core decode kernel (kernels/attention_decode.cu) over
/// `blocks` (sequence, KV head, row group) triples, contexts of at most `max_ctx` keys and
/// `split_bytes` of partial state per split, on `slots` = SMs x blocks per SM (the
/// kernel's occupancy). Each sequence's keys are cut into that many
/// equal runs of whole 64-key tiles on the device (from its own context length, so the
/// grid stays a function of the bound: graph replays). As many splits as fit the blocks
/// in one wave (rounding up gave batch 64 two splits and a second wave), but none
/// shorter than `min_tiles` tiles (splits <= tiles / min_tiles, rounded up).
pub(crate) fn decode_splits(
    blocks: usize,
    max_ctx: usize,
    slots: usize,
    split_bytes: usize,
    min_tiles: usize,
) -> usize {
    let tiles = max_ctx.max(1).div_ceil(64);
    let budget = (DECODE_PARTIAL_BUDGET / split_bytes.max(1)).max(1);
    (slots.max(1) / blocks.max(1))
        .min(tiles.div_ceil(min_tiles.max(1)))
        .min(budget)
        .clamp(1, 1024)
}

/// A bound on the query rows of the sequences the decode kernel takes, known without
/// reading the device: under PREFILL_MIN_ROWS, and t - num_seqs + 1 when every sequence
/// has a row (as in the engine's batches; a plain decode step gives 1). Only speed depends
/// on it: the decode kernel handles any row count, in more passes.
pub(crate) fn decode_rows_bound(t: usize, num_seqs: usize) -> usize {
    let rows = if t >= num_seqs { t - num_seqs + 1 } else { t };
    rows.clamp(1, PREFILL_MIN_ROWS - 1)
}

/// `(t, k, m)` of `out[t, m] = x[t, k] · w[m, k]ᵀ`, or a shape error naming `op`.
fn matmul_shapes(op: &str, x: &Tensor, w: &Tensor, out: &Tensor) -> Result<(usize, usize, usize)> {
    let (t, k, m) = (x.rows(), x.cols(), w.rows());
    if w.cols() != k || out.rows() != t || out.cols() != m {
        return Err(BackendError::Shape(format!(
            "{op}: x {:?} · w {:?}ᵀ -> out {:?}",
            x.shape(),
            w.shape(),
            out.shape()
        )));
    }
    Ok((t, k, m))
}

/// Where a norm writes: an f32 tensor (plus a staged bf16 copy) or a bf16 tensor.
#[derive(Clone, Copy)]
enum NormOut {
    F32(sys::CUdeviceptr),
    Bf16(sys::CUdeviceptr),
}

impl NormOut {
    fn of(out: &Tensor) -> Result<NormOut> {
        match out.dtype() {
            DType::F32 => Ok(NormOut::F32(ptr(out)?)),
            DType::BF16 => Ok(NormOut::Bf16(ptr(out)?)),
            other => Err(BackendError::Unsupported {
                op: "norm output",
                dtype: other,
            }),
        }
    }
}

/// Block size of the scalar norm kernels (one block per row).
fn norm_threads(cols: usize) -> u32 {
    (cols.next_power_of_two() as u32).clamp(32, 1024)
}

/// Float4 chunks each thread of the vectorised norm kernels keeps in registers
/// (`NORM_CHUNKS` in kernels/elementwise.cu).
const NORM_CHUNKS: usize = 4;

/// Logits per block of `argmax_split_kernel` (`ARGMAX_SPAN` in kernels/elementwise.cu).
const ARGMAX_SPAN: usize = 4096;

/// Block size of the vectorised norm kernels (`rms_norm4_kernel`, `add_rms_norm4_kernel`)
/// for rows of `cols`, or None where the scalar ones run: `cols` not a multiple of 4, a
/// row wider than 4 chunks of 1,024 threads, or a pointer that is not 16-byte aligned
/// (rows then are too, as cols % 4 == 0).
pub(crate) fn norm4_threads(cols: usize, ptrs: &[sys::CUdeviceptr]) -> Option<u32> {
    if cols == 0 || !cols.is_multiple_of(4) || ptrs.iter().any(|p| p % 16 != 0) {
        return None;
    }
    let n4 = cols / 4;
    let threads = n4.div_ceil(NORM_CHUNKS).next_power_of_two().clamp(32, 1024);
    (n4 <= NORM_CHUNKS * threads).then_some(threads as u32)
}

/// Row groups of the general decode kernel: blocks per (sequence, KV head, split) that
/// share the passes (two 16-row m-tiles each) over up to `g * rows` packed rows.
pub(crate) fn decode_row_groups(g: usize, rows: usize) -> usize {
    (g * rows).div_ceil(16).div_ceil(2).max(1)
}

/// Output rows per warp of the batch-1 GEMV (`GEMV_RPW` in kernels/gemv.cu).
pub(super) const GEMV_ROWS_PER_WARP: usize = 4;

/// Dynamic shared memory of the staged bf16 GEMV with `chunks` chunks per row and lane
/// (kernels/gemv.cu `gemv1_staged_body`: 16 bytes per chunk, row and thread).
pub(super) fn staged_gemv_smem(chunks: usize) -> usize {
    chunks * GEMV_ROWS_PER_WARP * THREADS as usize * 16
}

/// Sequences with at least this many query rows in a step take the tensor-core prefill
/// kernel (kernels/attention_prefill.cu) when it applies (bf16 KV cache, head_dim 64 or
/// 128, causal); the others take the tensor-core decode kernel (kernels/attention_decode.cu)
/// under the same conditions, else the row-per-block kernel (kernels/attention.cu).
pub(crate) const PREFILL_MIN_ROWS: usize = 16;

/// Blocks for a grid-stride loop over `n` elements (enough to fill the GPU; the loop
/// covers the rest).
fn blocks(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, 65_535 * 8) as u32
}

impl CudaBackend {
    pub(crate) fn launch_1d(
        &self,
        f: sys::CUfunction,
        n: usize,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.launch(f, (blocks(n), 1, 1), THREADS, args)
    }

    /// `out[t, m] = x[t, k] · w[m, k]ᵀ`. Activations are f32; on the GEMM path of bf16
    /// weights (`gemm_epilogues`) `x` and `out` may also be bf16 tensors (bf16
    /// activations: the norm's output, the Q/K/V projections' output), which skip the
    /// conversion and halve the bytes.
    pub fn matmul(&self, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
        if x.dtype() == DType::BF16 || out.dtype() == DType::BF16 {
            return self.matmul_bf16_activations(x, w, out);
        }
        check_f32("matmul activations", &[x, out])?;
        let (t, k, m) = matmul_shapes("matmul", x, w, out)?;
        if t == 0 {
            return Ok(());
        }
        self.bind()?;
        let (px, pw, po) = (ptr(x)?, ptr(w)?, ptr(out)?);
        // Few rows (decode): a pass over the weights with our GEMVs. K-quants have their
        // own; rows that are not whole 16-byte loads go on to the GEMM paths below.
        if t == 1 {
            if let Some(f) = self.gemv1_kernel(w.dtype(), k, false) {
                return self.launch_gemv1(f, w.dtype(), px, pw, po, m, k, Gemv1Fusion::NONE);
            }
        }
        if let Some(f) = self.gemv_rows_kernel(w.dtype(), k, t) {
            return self.launch_gemv(f, px, pw, po, m, k, 1);
        }
        if self.qmma_applies(w.dtype(), k, t) {
            return self.matmul_qmma(w.dtype(), px, pw, po, t, m, k);
        }
        match w.dtype() {
            DType::Q8_0 => return self.matmul_q8_0(px, pw, po, t, m, k),
            DType::Q4_K | DType::Q6_K => return self.matmul_kquant(w.dtype(), px, pw, po, t, m, k),
            DType::Q4_0 | DType::Q4_1 => {
                return self.matmul_legacy_quant(w.dtype(), px, pw, po, t, m, k)
            }
            DType::F8E4M3 => return self.matmul_fp8(px, pw, po, t, m, k),
            DType::F32 | DType::BF16 | DType::F16 => {}
            other => {
                return Err(BackendError::Unsupported {
                    op: "CUDA matmul weights",
                    dtype: other,
                })
            }
        }
        let xin = match w.dtype() {
            DType::F32 => px,
            DType::BF16 => self.bf16_input(px, t * k)?,
            _ => {
                let staged = self.scratch_ptr(t * k * 2)?;
                self.stage_half(self.kernels.f32_to_f16_kernel, px, staged, t * k)?;
                staged
            }
        };
        self.gemm_call(w.dtype(), xin, pw, (po, GemmOut::F32), (t, m, k))
    }

    /// One cuBLASLt GEMM `out[t, m] = x[t, k] · w[m, k]ᵀ` (see `GemmOut`) with inputs of
    /// `dtype` already on the device, autotuned if the tuning window is open.
    pub(super) fn gemm_call(
        &self,
        dtype: DType,
        x: sys::CUdeviceptr,
        w: sys::CUdeviceptr,
        out: (sys::CUdeviceptr, GemmOut),
        (t, m, k): (usize, usize, usize),
    ) -> Result<()> {
        let tune = self.gemm_may_tune();
        self.gemm
            .matmul(self.stream, dtype, x, w, out, t, m, k, tune)
    }

    /// `matmul` with a bf16 `x` or `out` (each may also be f32).
    fn matmul_bf16_activations(&self, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
        for a in [x, &*out] {
            if !matches!(a.dtype(), DType::F32 | DType::BF16) {
                return Err(BackendError::Unsupported {
                    op: "matmul activations",
                    dtype: a.dtype(),
                });
            }
        }
        let (t, k, m) = matmul_shapes("matmul", x, w, out)?;
        if t == 0 {
            return Ok(());
        }
        if !self.gemm_epilogues(w, t) {
            return Err(BackendError::Unsupported {
                op: "bf16 activations (only on the GEMM path of bf16 weights, more than 4 rows)",
                dtype: w.dtype(),
            });
        }
        self.bind()?;
        let xin = match x.dtype() {
            DType::BF16 => ptr(x)?,
            _ => self.bf16_input(ptr(x)?, t * k)?,
        };
        let kind = match out.dtype() {
            DType::BF16 => GemmOut::Bf16,
            _ => GemmOut::F32,
        };
        self.gemm_call(DType::BF16, xin, ptr(w)?, (ptr(out)?, kind), (t, m, k))
    }

    /// Whether a matmul of `rows` token rows with `w` runs on cuBLASLt with bf16 inputs
    /// (bf16 weights, more rows than the GEMVs take), where the GEMM's epilogue can add
    /// into the residual (`matmul_accumulate`) or the gate/up GEMM write bf16
    /// (`gated_ffn`). `SLUICE_GEMM_EPILOGUES=0`: never.
    pub fn gemm_epilogues(&self, w: &Tensor, rows: usize) -> bool {
        let k = w.cols();
        self.epilogues
            && w.dtype() == DType::BF16
            && w.shape().len() == 2
            && rows > 0
            && !(rows == 1 && self.gemv1_kernel(w.dtype(), k, false).is_some())
            && self.gemv_rows_kernel(w.dtype(), k, rows).is_none()
    }

    /// Launches a GEMV kernel of kernels/gemv.cu (arguments `x, w, out, M, K, wpr`)
    /// whose warps each compute `rows_per_warp` output rows (`GEMV_ROWS_PER_WARP` for
    /// the batch-1 `gemv1_rows_*`, 1 for the others), `wpr` warps sharing a row group.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_gemv(
        &self,
        f: sys::CUfunction,
        px: sys::CUdeviceptr,
        pw: sys::CUdeviceptr,
        po: sys::CUdeviceptr,
        m: usize,
        k: usize,
        rows_per_warp: usize,
    ) -> Result<()> {
        let (blocks, wpr) = self.gemv_grid(m, rows_per_warp);
        let (mi, ki) = (m as i32, k as i32);
        let mut a = args![px, pw, po, mi, ki, wpr];
        self.launch(f, (blocks, 1, 1), THREADS, &mut a)
    }

    /// A GEMV's blocks and warps per row group for `m` rows, `rows_per_warp` per warp.
    pub(super) fn gemv_grid(&self, m: usize, rows_per_warp: usize) -> (u32, i32) {
        let wpr = gemv_warps_per_row(
            m.div_ceil(rows_per_warp),
            self.sm_count as usize,
            self.gemv_blocks_per_sm,
        );
        let rows_per_block = ((THREADS / 32) / wpr) as usize * rows_per_warp;
        (m.div_ceil(rows_per_block) as u32, wpr as i32)
    }

    /// The batch-1 GEMV of kernels/gemv.cu's skeleton for weights of `dtype` with rows of
    /// `k`, if there is one (bf16, f16, f32, Q8_0, FP8, with rows of whole 16-byte loads):
    /// `gemv1_rows_*`, or with the RMSNorm folded in (`norm`) `gemv1_rows_*_norm`.
    pub(super) fn gemv1_kernel(
        &self,
        dtype: DType,
        k: usize,
        norm: bool,
    ) -> Option<sys::CUfunction> {
        let kern = &self.kernels;
        let pick = |plain, normed| Some(if norm { normed } else { plain });
        match dtype {
            DType::BF16 if k.is_multiple_of(8) => {
                if self.gemv_bf16_u2 {
                    pick(kern.gemv1_rows_bf16_u2, kern.gemv1_rows_bf16_u2_norm)
                } else {
                    pick(kern.gemv1_rows_bf16, kern.gemv1_rows_bf16_norm)
                }
            }
            DType::F16 if k.is_multiple_of(8) => {
                pick(kern.gemv1_rows_f16, kern.gemv1_rows_f16_norm)
            }
            DType::F32 if k.is_multiple_of(4) => {
                pick(kern.gemv1_rows_f32, kern.gemv1_rows_f32_norm)
            }
            DType::Q8_0 if k.is_multiple_of(32) => {
                pick(kern.gemv1_rows_q8_0, kern.gemv1_rows_q8_0_norm)
            }
            DType::F8E4M3 if k.is_multiple_of(16) => {
                pick(kern.gemv1_rows_fp8, kern.gemv1_rows_fp8_norm)
            }
            _ => None,
        }
    }

    /// The GEMV for 2-4 rows of x (`gemv_*_{2,3,4}`: one output row per warp, each weight
    /// load used for every row of x) for weights of `dtype` with rows of `k`, if there is
    /// one (bf16, f16, f32, Q8_0, FP8, with rows of whole 16-byte loads).
    fn gemv_rows_kernel(&self, dtype: DType, k: usize, t: usize) -> Option<sys::CUfunction> {
        let kern = &self.kernels;
        let by_rows = |fs: [sys::CUfunction; 3]| (2..=4).contains(&t).then(|| fs[t - 2]);
        match dtype {
            DType::BF16 if k.is_multiple_of(8) => {
                by_rows([kern.gemv_bf16_2, kern.gemv_bf16_3, kern.gemv_bf16_4])
            }
            DType::F16 if k.is_multiple_of(8) => {
                by_rows([kern.gemv_f16_2, kern.gemv_f16_3, kern.gemv_f16_4])
            }
            DType::F32 if k.is_multiple_of(4) => {
                by_rows([kern.gemv_f32_2, kern.gemv_f32_3, kern.gemv_f32_4])
            }
            DType::Q8_0 if k.is_multiple_of(32) => {
                by_rows([kern.gemv_q8_0_2, kern.gemv_q8_0_3, kern.gemv_q8_0_4])
            }
            DType::F8E4M3 if k.is_multiple_of(16) => {
                by_rows([kern.gemv_fp8_2, kern.gemv_fp8_3, kern.gemv_fp8_4])
            }
            _ => None,
        }
    }

    /// Launches a batch-1 GEMV `gemv1_rows_*` (arguments `x, w, out, M, K, wpr, gamma,
    /// eps, accumulate, prefetch`) for a weight of `dtype` with `GEMV_ROWS_PER_WARP` rows
    /// per warp.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_gemv1(
        &self,
        f: sys::CUfunction,
        dtype: DType,
        px: sys::CUdeviceptr,
        pw: sys::CUdeviceptr,
        po: sys::CUdeviceptr,
        m: usize,
        k: usize,
        fusion: Gemv1Fusion,
    ) -> Result<()> {
        let (blocks, wpr) = self.gemv_grid(m, GEMV_ROWS_PER_WARP);
        let (mi, ki) = (m as i32, k as i32);
        let (gamma, eps, acc) = (fusion.gamma, fusion.eps, i32::from(fusion.accumulate));
        if f == self.kernels.gemv1_rows_bf16
            && self.pdl
            && self.gemv_prewait
            && self.gemv_stage > 0
            && (self.memory_idle.load(Ordering::SeqCst) || self.gemv_stage_all)
        {
            // After the decode attention (or any kernel, `gemv_stage_all`): the weight's
            // first chunks into shared memory before the wait (kernels/gemv.cu
            // `gemv1_staged_body`).
            let (staged, chunks) = match self.gemv_stage {
                1 => (self.kernels.gemv1_staged_bf16_s1, 1),
                2 | 3 => (self.kernels.gemv1_staged_bf16_s2, 2),
                _ => (self.kernels.gemv1_staged_bf16_s4, 4),
            };
            let smem = staged_gemv_smem(chunks);
            let mut a = args![px, pw, po, mi, ki, wpr, acc];
            self.launch_with(staged, (blocks, 1, 1), THREADS, &mut a, 0, smem as u32)?;
            self.staged_gemvs.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let prefetch = self.gemv1_prefetch(dtype, m, k);
        let prewait = i32::from(self.gemv_prewait);
        let mut a = args![px, pw, po, mi, ki, wpr, gamma, eps, acc, prefetch, prewait];
        self.launch(f, (blocks, 1, 1), THREADS, &mut a)
    }

    /// The `prefetch` argument of a batch-1 GEMV over an `m` x `k` weight of `dtype` (the
    /// GLU and RoPE pair GEMVs are bf16; kernels/gemv.cu `gemv1_rows_body`): the rows
    /// below that byte offset are prefetched whole into L2 before the PDL wait. Right
    /// after a kernel that leaves the memory idle (`memory_idle`) the whole weight, up to
    /// `idle_prefetch_cap`; else the format's default.
    pub(super) fn gemv1_prefetch(&self, dtype: DType, m: usize, k: usize) -> i64 {
        // (`launch_with` clears the flag at this GEMV's launch.)
        if self.memory_idle.load(Ordering::SeqCst) && self.idle_prefetch_cap > 0 {
            let weight = crate::tensor::byte_len(dtype, &[m, k]).unwrap_or(0) as i64;
            weight.min(self.idle_prefetch_cap)
        } else if dtype == DType::BF16 {
            self.gemv_bf16_prefetch
        } else {
            self.gemv_prefetch
        }
    }

    /// Marks the kernel just launched as one that leaves the memory system nearly idle
    /// (see `memory_idle`).
    pub(super) fn mark_memory_idle(&self) {
        self.memory_idle.store(true, Ordering::SeqCst);
    }

    /// Whether a batch-1 decode step should use `rms_norm_matmul` and `matmul_accumulate`
    /// for `rows` rows of x against `w`: one row, and a weight type whose fused GEMV pays
    /// (`SLUICE_FUSED_DECODE=0` turns them off, for comparisons). Not Q8_0: its GEMV is
    /// bound by L1 loads (x, and the block scales), and the norm's gamma adds as many
    /// again; on an H100 (tokens/s, batch 1, unfused against fused) 8B Q8_0 253.6 against
    /// 224.7 and 1B 1,047 against 988, while FP8 (266.5 / 264.6, 1,068 / 1,089) is even
    /// and bf16 gains (docs/BENCHMARKS.md). The kernels still take Q8_0 when asked.
    pub fn fuses_decode_matmul(&self, w: &Tensor, rows: usize) -> bool {
        rows == 1
            && self.fused_decode
            && w.shape().len() == 2
            && w.dtype() != DType::Q8_0
            && self.gemv1_kernel(w.dtype(), w.cols(), false).is_some()
    }

    /// Checks a fused decode matmul's operands; returns (M, K) and its kernel.
    fn fused_decode_operands(
        &self,
        op: &'static str,
        norm: bool,
        x: &Tensor,
        w: &Tensor,
        out: &Tensor,
    ) -> Result<(usize, usize, sys::CUfunction)> {
        check_f32(op, &[x, out])?;
        let (m, k) = (w.rows(), w.cols());
        if x.rows() != 1 || x.cols() != k || out.rows() != 1 || out.cols() != m {
            return Err(BackendError::Shape(format!(
                "{op}: x {:?} · w {:?}ᵀ -> out {:?} (one row)",
                x.shape(),
                w.shape(),
                out.shape()
            )));
        }
        match self.gemv1_kernel(w.dtype(), k, norm) {
            Some(f) => Ok((m, k, f)),
            _ => Err(BackendError::Unsupported {
                op,
                dtype: w.dtype(),
            }),
        }
    }

    /// `out = rms_norm(x) * gamma · wᵀ` for one row, the norm folded into the GEMV
    /// (kernels/gemv.cu): no normalized copy of x is written.
    pub fn rms_norm_matmul(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        eps: f32,
        w: &Tensor,
        out: &mut Tensor,
    ) -> Result<()> {
        let (m, k, f) = self.fused_decode_operands("rms_norm_matmul", true, x, w, out)?;
        check_f32("rms_norm_matmul gamma", &[gamma])?;
        if gamma.numel() != k {
            return Err(BackendError::Shape(format!(
                "rms_norm_matmul: gamma of {} for rows of {k}",
                gamma.numel()
            )));
        }
        self.bind()?;
        let fusion = Gemv1Fusion {
            gamma: ptr(gamma)?,
            eps,
            accumulate: false,
        };
        self.launch_gemv1(f, w.dtype(), ptr(x)?, ptr(w)?, ptr(out)?, m, k, fusion)
    }

    /// `out += x · wᵀ`: the residual add in the epilogue of the batch-1 GEMV (one row,
    /// `fuses_decode_matmul`) or of the cuBLASLt GEMM (`gemm_epilogues`).
    pub fn matmul_accumulate(&self, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
        if x.rows() > 1 && self.gemm_epilogues(w, x.rows()) {
            check_f32("matmul_accumulate activations", &[x, out])?;
            let (t, k, m) = matmul_shapes("matmul_accumulate", x, w, out)?;
            self.bind()?;
            let xin = self.bf16_input(ptr(x)?, t * k)?;
            let out = (ptr(out)?, GemmOut::F32Accumulate);
            return self.gemm_call(DType::BF16, xin, ptr(w)?, out, (t, m, k));
        }
        let (m, k, f) = self.fused_decode_operands("matmul_accumulate", false, x, w, out)?;
        self.bind()?;
        let fusion = Gemv1Fusion {
            accumulate: true,
            ..Gemv1Fusion::NONE
        };
        self.launch_gemv1(f, w.dtype(), ptr(x)?, ptr(w)?, ptr(out)?, m, k, fusion)
    }

    /// Q8_0 weights (split layout, see `upload_weight`) above the quantized mma's rows
    /// (fewer went to the GEMVs or `matmul_qmma` in `matmul`): the weight is dequantized
    /// to bf16 into a scratch buffer and cuBLASLt runs (prefill is compute-bound, so the extra pass over the weight costs
    /// little there).
    fn matmul_q8_0(
        &self,
        px: sys::CUdeviceptr,
        pw: sys::CUdeviceptr,
        po: sys::CUdeviceptr,
        t: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        if !k.is_multiple_of(32) {
            return Err(BackendError::Shape(format!(
                "Q8_0 matmul: rows of {k} are not whole blocks of 32"
            )));
        }
        let wb = self.weight_scratch(m * k * 2)?;
        self.dequantize_bf16_ptrs(DType::Q8_0, pw, wb, m, k)?;
        self.gemm_bf16_weight(px, wb, po, t, m, k)
    }

    /// The cuBLASLt half of a quantized matmul above 4 rows: x (f32 `[t, k]`) converted
    /// to bf16 in the staging buffer, times the weight already dequantized to bf16 `[m,
    /// k]` at `wb` (Q8_0, Q4_K, Q6_K and FP8's fallback share this).
    pub(super) fn gemm_bf16_weight(
        &self,
        px: sys::CUdeviceptr,
        wb: sys::CUdeviceptr,
        po: sys::CUdeviceptr,
        t: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        let staged = self.bf16_input(px, t * k)?;
        self.gemm_call(DType::BF16, staged, wb, (po, GemmOut::F32), (t, m, k))
    }

    /// The bf16 copy of the `n` f32 activations at `px` for a GEMM: the staged one if the
    /// latest kernel wrote it, else converted into the staging buffer now.
    pub(super) fn bf16_input(&self, px: sys::CUdeviceptr, n: usize) -> Result<sys::CUdeviceptr> {
        if let Some(s) = self.staged_copy(px, n) {
            return Ok(s);
        }
        let staged = self.scratch_ptr(n * 2)?;
        self.stage_half(self.kernels.f32_to_bf16_kernel, px, staged, n)?;
        Ok(staged)
    }

    /// Converts `n` f32 activations at `px` to bf16/f16 at `staged` with
    /// `f32_to_bf16_kernel` / `f32_to_f16_kernel` (eight elements per thread).
    fn stage_half(
        &self,
        f: sys::CUfunction,
        px: sys::CUdeviceptr,
        staged: sys::CUdeviceptr,
        n: usize,
    ) -> Result<()> {
        let nl = n as i64;
        self.launch_1d(f, n.div_ceil(8), &mut args![px, staged, nl])
    }

    // Staged activations. Between ops activations are f32, and a cuBLASLt GEMM needs its
    // input in bf16: a conversion pass per GEMM (11% of a large prefill step on an H200).
    // The producers of GEMM inputs (the norms, the GLU) write a bf16 copy into the
    // activation scratch as they go, and record it; the GEMM that comes right after uses
    // it instead of converting. Any other kernel launch, a graph launch or capture, and a
    // scratch reallocation clear the record, so a GEMM only ever takes the copy of the
    // latest kernel's output, made by that kernel (cuBLASLt calls in between do not
    // write the scratch: the Q/K/V projections of one norm share it).

    /// Where a producer of `n` activations in `rows` rows should write their bf16 copy:
    /// the activation scratch when a GEMM (more than 4 rows) may consume them, else 0.
    pub(super) fn staging_for(&self, n: usize, rows: usize) -> Result<sys::CUdeviceptr> {
        if !self.stage_activations || rows <= 4 || n == 0 {
            return Ok(0);
        }
        self.scratch_ptr(n * 2)
    }

    /// Records that `dst` holds `src`'s `n` activations in bf16 (after the producer's
    /// launch; nothing when `dst` is 0).
    pub(super) fn set_staged(&self, src: sys::CUdeviceptr, n: usize, dst: sys::CUdeviceptr) {
        if dst == 0 {
            return;
        }
        if let Ok(mut g) = self.staged.lock() {
            *g = Some(super::StagedActivations { src, n, dst });
        }
    }

    /// The bf16 copy of `src`'s `n` activations, if the latest kernel wrote one.
    fn staged_copy(&self, src: sys::CUdeviceptr, n: usize) -> Option<sys::CUdeviceptr> {
        let g = self.staged.lock().ok()?;
        let dst = g.filter(|s| s.src == src && s.n == n).map(|s| s.dst);
        if dst.is_some() {
            self.staged_uses.fetch_add(1, Ordering::SeqCst);
        }
        dst
    }

    /// `out` f32 (with a staged bf16 copy for a GEMM that follows), or a bf16 activation
    /// tensor (the bf16 values only; see `matmul`).
    pub fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
        check_f32("rms_norm", &[x, w])?;
        same_numel("rms_norm", x, out)?;
        let out = NormOut::of(out)?;
        self.rms_norm_ptrs(ptr(x)?, x.numel(), w, eps, out)
    }

    pub fn rms_norm_inplace(&self, x: &mut Tensor, w: &Tensor, eps: f32) -> Result<()> {
        check_f32("rms_norm", &[x, w])?;
        let p = ptr(x)?;
        self.rms_norm_ptrs(p, x.numel(), w, eps, NormOut::F32(p))
    }

    pub fn add_rms_norm(
        &self,
        x: &mut Tensor,
        delta: &Tensor,
        w: &Tensor,
        eps: f32,
        out: &mut Tensor,
    ) -> Result<()> {
        check_f32("add_rms_norm", &[x, delta, w])?;
        same_numel("add_rms_norm", x, delta)?;
        same_numel("add_rms_norm", x, out)?;
        let out = NormOut::of(out)?;
        let cols = w.numel();
        if cols == 0 || !x.numel().is_multiple_of(cols) {
            return Err(BackendError::Shape(format!(
                "add_rms_norm: {} elements are not rows of {cols}",
                x.numel()
            )));
        }
        self.bind()?;
        let rows = x.numel() / cols;
        let (px, pd, pw) = (ptr(x)?, ptr(delta)?, ptr(w)?);
        let (po, staged) = self.norm_outputs(out, x.numel(), rows)?;
        let c = cols as i32;
        let (f, threads) = match norm4_threads(cols, &[px, pd, pw, po]) {
            Some(t) => (self.kernels.add_rms_norm4_kernel, t),
            None => (self.kernels.add_rms_norm_kernel, norm_threads(cols)),
        };
        self.launch(
            f,
            (rows as u32, 1, 1),
            threads,
            &mut args![px, pd, pw, po, c, eps, staged],
        )?;
        if po != 0 {
            self.set_staged(po, x.numel(), staged);
        }
        Ok(())
    }

    /// A norm's f32 output pointer (0: none) and where its bf16 values go (0: none): an
    /// f32 output stages a copy for a GEMM (`staging_for`); a bf16 tensor takes them.
    fn norm_outputs(
        &self,
        out: NormOut,
        numel: usize,
        rows: usize,
    ) -> Result<(sys::CUdeviceptr, sys::CUdeviceptr)> {
        Ok(match out {
            NormOut::F32(p) => (p, self.staging_for(numel, rows)?),
            NormOut::Bf16(p) => (0, p),
        })
    }

    fn rms_norm_ptrs(
        &self,
        px: sys::CUdeviceptr,
        numel: usize,
        w: &Tensor,
        eps: f32,
        out: NormOut,
    ) -> Result<()> {
        let cols = w.numel();
        if cols == 0 || !numel.is_multiple_of(cols) {
            return Err(BackendError::Shape(format!(
                "rms_norm: {numel} elements are not rows of {cols}"
            )));
        }
        self.bind()?;
        let rows = numel / cols;
        let pw = ptr(w)?;
        let (po, staged) = self.norm_outputs(out, numel, rows)?;
        let c = cols as i32;
        let (f, threads) = match norm4_threads(cols, &[px, pw, po]) {
            Some(t) => (self.kernels.rms_norm4_kernel, t),
            None => (self.kernels.rms_norm_kernel, norm_threads(cols)),
        };
        self.launch(
            f,
            (rows as u32, 1, 1),
            threads,
            &mut args![px, pw, po, c, eps, staged],
        )?;
        if po != 0 {
            self.set_staged(po, numel, staged);
        }
        Ok(())
    }

    pub fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        check_f32("add", &[x, y])?;
        same_numel("add", x, y)?;
        self.bind()?;
        let (px, py, n) = (ptr(x)?, ptr(y)?, x.numel() as i64);
        self.launch_1d(self.kernels.add_kernel, x.numel(), &mut args![px, py, n])
    }

    pub fn add_bias_inplace(&self, x: &mut Tensor, b: &Tensor) -> Result<()> {
        check_f32("add_bias", &[x, b])?;
        if b.numel() != x.cols() {
            return Err(BackendError::Shape(format!(
                "bias of {} for rows of {}",
                b.numel(),
                x.cols()
            )));
        }
        self.bind()?;
        let (px, pb, n, c) = (ptr(x)?, ptr(b)?, x.numel() as i64, x.cols() as i32);
        self.launch_1d(
            self.kernels.add_bias_kernel,
            x.numel(),
            &mut args![px, pb, n, c],
        )
    }

    pub fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()> {
        check_f32("scale", &[x])?;
        self.bind()?;
        let (px, n) = (ptr(x)?, x.numel() as i64);
        self.launch_1d(self.kernels.scale_kernel, x.numel(), &mut args![px, s, n])
    }

    pub fn softcap_inplace(&self, x: &mut Tensor, cap: f32) -> Result<()> {
        check_f32("softcap", &[x])?;
        self.bind()?;
        let (px, n) = (ptr(x)?, x.numel() as i64);
        self.launch_1d(
            self.kernels.softcap_kernel,
            x.numel(),
            &mut args![px, cap, n],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rope_inplace(
        &self,
        x: &mut Tensor,
        positions: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        n_heads: usize,
        head_dim: usize,
        style: RopeStyle,
    ) -> Result<()> {
        check_f32("rope", &[x, cos, sin])?;
        positions.expect_dtype(DType::I32)?;
        let t = x.rows();
        if x.cols() != n_heads * head_dim || positions.numel() < t || cos.cols() * 2 != head_dim {
            return Err(BackendError::Shape(format!(
                "rope: x {:?}, {n_heads} heads of {head_dim}, {} positions, table {:?}",
                x.shape(),
                positions.numel(),
                cos.shape()
            )));
        }
        self.bind()?;
        let (px, pp, pc, ps) = (ptr(x)?, ptr(positions)?, ptr(cos)?, ptr(sin)?);
        let (ti, hi, di) = (t as i32, n_heads as i32, head_dim as i32);
        let neox = i32::from(style == RopeStyle::Neox);
        self.launch_1d(
            self.kernels.rope_kernel,
            t * n_heads * head_dim / 2,
            &mut args![px, pp, pc, ps, ti, hi, di, neox],
        )
    }

    pub fn glu(&self, gate: &Tensor, up: &Tensor, out: &mut Tensor, silu: bool) -> Result<()> {
        check_f32("glu", &[gate, up, out])?;
        same_numel("glu", gate, up)?;
        same_numel("glu", gate, out)?;
        self.bind()?;
        let (pg, pu, po, n) = (ptr(gate)?, ptr(up)?, ptr(out)?, gate.numel() as i64);
        let f = if silu {
            self.kernels.silu_mul_kernel
        } else {
            self.kernels.gelu_mul_kernel
        };
        self.launch_1d(f, gate.numel(), &mut args![pg, pu, po, n])
    }

    pub fn embedding(
        &self,
        ids: &Tensor,
        table: &Tensor,
        scale: f32,
        out: &mut Tensor,
    ) -> Result<()> {
        ids.expect_dtype(DType::I32)?;
        check_f32("embedding output", &[out])?;
        let (t, cols) = (ids.numel(), table.cols());
        if out.rows() != t || out.cols() != cols {
            return Err(BackendError::Shape(format!(
                "embedding: {t} ids, table {:?}, out {:?}",
                table.shape(),
                out.shape()
            )));
        }
        let f = match table.dtype() {
            DType::F32 => self.kernels.embedding_f32_kernel,
            DType::BF16 => self.kernels.embedding_bf16_kernel,
            DType::F16 => self.kernels.embedding_f16_kernel,
            other => {
                return Err(BackendError::Unsupported {
                    op: "CUDA embedding",
                    dtype: other,
                })
            }
        };
        self.bind()?;
        let (pi, pt, po) = (ptr(ids)?, ptr(table)?, ptr(out)?);
        let (ti, ci) = (t as i32, cols as i32);
        self.launch_1d(f, t * cols, &mut args![pi, pt, scale, po, ti, ci])?;
        self.mark_memory_idle();
        Ok(())
    }

    pub fn gather_rows(&self, x: &Tensor, rows: &Tensor, out: &mut Tensor) -> Result<()> {
        check_f32("gather_rows", &[x, out])?;
        rows.expect_dtype(DType::I32)?;
        let (l, cols) = (rows.numel(), x.cols());
        if out.rows() != l || out.cols() != cols {
            return Err(BackendError::Shape(format!(
                "gather_rows: {l} rows of {:?} into {:?}",
                x.shape(),
                out.shape()
            )));
        }
        self.bind()?;
        let (px, pr, po) = (ptr(x)?, ptr(rows)?, ptr(out)?);
        let (li, ci) = (l as i32, cols as i32);
        self.launch_1d(
            self.kernels.gather_rows_kernel,
            l * cols,
            &mut args![px, pr, po, li, ci],
        )
    }

    /// See `Device::resolve_token_ids` (rows out of range read token 0; the host checks).
    pub fn resolve_token_ids(&self, tokens: &mut Tensor, prev: &Tensor) -> Result<()> {
        let n = tokens.numel();
        self.resolve_prefix(tokens, n, prev)
    }

    /// `resolve_token_ids` on the first `n` values of `tokens`.
    pub(crate) fn resolve_prefix(
        &self,
        tokens: &mut Tensor,
        n: usize,
        prev: &Tensor,
    ) -> Result<()> {
        tokens.expect_dtype(DType::I32)?;
        prev.expect_dtype(DType::I32)?;
        let (t, p) = (n.min(tokens.numel()) as i32, prev.numel() as i32);
        if t == 0 {
            return Ok(());
        }
        self.bind()?;
        let (pt, pp) = (ptr(tokens)?, ptr(prev)?);
        self.launch_1d(
            self.kernels.resolve_tokens_kernel,
            t as usize,
            &mut args![pt, pp, t, p],
        )
    }

    pub fn kv_write(
        &self,
        k: &Tensor,
        v: &Tensor,
        k_cache: &mut Tensor,
        v_cache: &mut Tensor,
        slots: &Tensor,
    ) -> Result<()> {
        check_f32("kv_write", &[k, v])?;
        slots.expect_dtype(DType::I32)?;
        let s = k_cache.shape();
        if s.len() != 4 || v_cache.shape() != s || k_cache.dtype() != v_cache.dtype() {
            return Err(BackendError::Shape(format!(
                "kv caches must be [blocks, kv_heads, block, head_dim], got {s:?}"
            )));
        }
        let (n_kv, bs, hd) = (s[1], s[2], s[3]);
        let t = k.rows();
        if k.cols() != n_kv * hd || v.cols() != n_kv * hd || v.rows() != t || slots.numel() < t {
            return Err(BackendError::Shape(format!(
                "kv_write: k {:?}, v {:?} into {s:?}",
                k.shape(),
                v.shape()
            )));
        }
        let f = match k_cache.dtype() {
            DType::F32 => self.kernels.kv_write_f32_kernel,
            DType::BF16 => self.kernels.kv_write_bf16_kernel,
            DType::F8E4M3 => self.kernels.kv_write_fp8_kernel,
            other => {
                return Err(BackendError::Unsupported {
                    op: "CUDA KV cache",
                    dtype: other,
                })
            }
        };
        self.bind()?;
        let (pk, pv, pkc, pvc, ps) = (ptr(k)?, ptr(v)?, ptr(k_cache)?, ptr(v_cache)?, ptr(slots)?);
        let (ti, ni, bi, hi) = (t as i32, n_kv as i32, bs as i32, hd as i32);
        self.launch_1d(
            f,
            t * n_kv * hd,
            &mut args![pk, pv, pkc, pvc, ps, ti, ni, bi, hi],
        )
    }

    pub fn paged_attention(
        &self,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        meta: &PagedAttentionMeta<'_>,
        p: &AttentionParams,
        out: &mut Tensor,
    ) -> Result<()> {
        check_f32("paged_attention", &[q, out])?;
        let (t, hd) = (q.rows(), p.head_dim);
        let g = p.n_heads / p.n_kv_heads.max(1);
        if p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) || g > 8 || hd > 256 {
            return Err(BackendError::Device(format!(
                "CUDA attention supports up to 8 query heads per KV head and head_dim <= 256 \
                 (got {} heads, {} KV heads, head_dim {hd})",
                p.n_heads, p.n_kv_heads
            )));
        }
        if q.cols() != p.n_heads * hd || out.rows() != t || out.cols() != q.cols() {
            return Err(BackendError::Shape(format!(
                "attention: q {:?}, out {:?}",
                q.shape(),
                out.shape()
            )));
        }
        if meta.custom_mask.is_some() {
            return Err(BackendError::Device(
                "custom attention masks (lookahead decoding) are not supported on CUDA yet".into(),
            ));
        }
        if t == 0 || meta.num_seqs == 0 {
            return Ok(());
        }
        // The tensor-core kernels below have bf16 and FP8 instances; f32 caches take the
        // lane kernel.
        let kind = KvKind::of("CUDA attention KV cache", k_cache.dtype())?;
        self.bind()?;
        let (pq, pk, pv, po) = (ptr(q)?, ptr(k_cache)?, ptr(v_cache)?, ptr(out)?);
        let (pqs, pcl, pbt) = (
            ptr(meta.query_start)?,
            ptr(meta.context_lens)?,
            ptr(meta.block_tables)?,
        );
        let ns = meta.num_seqs as i32;
        let bt_cols = meta.block_tables.cols() as i32;
        let bs = meta.block_size as i32;
        let (nh, nkv, hdi) = (p.n_heads as i32, p.n_kv_heads as i32, hd as i32);
        let window = p.sliding_window.map(|w| w as i32).unwrap_or(0);
        let softcap = p.softcap.unwrap_or(0.0);
        let scale = p.scale;
        // Sequences of PREFILL_MIN_ROWS rows or more go to the tensor-core prefill kernel
        // (custom masks were refused above); the kernels launched first skip their rows.
        let kern = &self.kernels;
        let flash = match (hd, kind) {
            (64, KvKind::Bf16) => Some(kern.flash_prefill_bf16_d64),
            (128, KvKind::Bf16) => Some(kern.flash_prefill_bf16_d128),
            (64, KvKind::Fp8) => Some(kern.flash_prefill_fp8_d64),
            (128, KvKind::Fp8) => Some(kern.flash_prefill_fp8_d128),
            _ => None,
        }
        .filter(|_| t >= PREFILL_MIN_ROWS && t > meta.num_seqs);
        let max_q_rows = if flash.is_some() {
            PREFILL_MIN_ROWS as i32 - 1
        } else {
            i32::MAX
        };
        // The other sequences: the tensor-core decode kernel over a bf16 cache with head
        // dim 64 / 128, else the row-per-block kernel. Every grid below is a function of
        // t, num_seqs, the block table's width and the shapes only (decode steps are
        // replayed from CUDA graphs; the table's width bounds every context).
        let max_ctx = meta.block_tables.cols() * meta.block_size;
        // One m-tile of packed rows per sequence at most (plain decode steps): the
        // kernel with only that path, which fits more blocks per SM.
        let rows_bound = decode_rows_bound(t, meta.num_seqs);
        let one_tile = g * rows_bound <= 16;
        let decode = match (hd, one_tile, kind) {
            (64, true, KvKind::Bf16) => Some(kern.flash_decode_bf16_d64),
            (128, true, KvKind::Bf16) => Some(kern.flash_decode_bf16_d128),
            (64, false, KvKind::Bf16) => Some(kern.flash_decode_multi_bf16_d64),
            (128, false, KvKind::Bf16) => Some(kern.flash_decode_multi_bf16_d128),
            (64, true, KvKind::Fp8) => Some(kern.flash_decode_fp8_d64),
            (128, true, KvKind::Fp8) => Some(kern.flash_decode_fp8_d128),
            (64, false, KvKind::Fp8) => Some(kern.flash_decode_multi_fp8_d64),
            (128, false, KvKind::Fp8) => Some(kern.flash_decode_multi_fp8_d128),
            _ => None,
        };
        // (splits, partials, the bf16 copy of the output to write or 0)
        let (splits, partial, staged) = if let Some(f) = decode {
            'decode: {
                // One block per (sequence, KV head, row group, key split).
                let row_groups = if one_tile {
                    1
                } else {
                    decode_row_groups(g, rows_bound)
                };
                let groups = meta.num_seqs * p.n_kv_heads * row_groups;
                // The blocks that fit at once: SMs x blocks per SM (4 for the one-m-tile
                // kernel; 3 for the general one, which takes few sequences).
                let slots = self.decode_blocks_per_sm * self.sm_count as usize;
                let splits = decode_splits(
                    groups,
                    max_ctx,
                    slots,
                    t * p.n_heads * (hd + 2) * 4,
                    self.decode_split_tiles.load(Ordering::SeqCst),
                )
                .min(self.decode_max_splits);
                // Few blocks (batch-1 decode): the kernel that requests each split's first two
                // tiles before its PDL wait, with dynamic shared memory for both.
                let one_per_sm = groups * splits <= self.sm_count as usize;
                let ahead = match (hd, one_tile, kind) {
                    (64, true, KvKind::Bf16) => {
                        Some((kern.flash_decode_ahead_bf16_d64, kern.decode_ahead_smem[0]))
                    }
                    (128, true, KvKind::Bf16) => {
                        Some((kern.flash_decode_ahead_bf16_d128, kern.decode_ahead_smem[1]))
                    }
                    _ => None,
                }
                .filter(|_| {
                    let mode = self.decode_ahead.load(Ordering::SeqCst);
                    (mode >= 2 || (mode == 1 && hd == 64)) && one_per_sm
                });
                // More (sequence, KV head) items of one split each than the block kernel
                // fits on the GPU at once (batch 128 and up at short contexts): a warp per
                // item (`flash_decode_warp`), no merge. (At one wave or less it lost: the
                // 1B shape at batch 64, 512 items, -4.9%; docs/BENCHMARKS.md, session 27.)
                let many = groups > slots || self.decode_warp_always.load(Ordering::SeqCst);
                let warp = self
                    .decode_warp_kernel(hd, kind, groups)
                    .filter(|_| one_tile && splits == 1 && ahead.is_none() && many);
                if let Some(fw) = warp {
                    let staged = self.staging_for(out.numel(), t)?;
                    self.launch(
                        fw,
                        (meta.num_seqs as u32, p.n_kv_heads as u32, 1),
                        32,
                        &mut args![
                            pq, pk, pv, pqs, pcl, pbt, bt_cols, bs, nh, nkv, scale, window,
                            softcap, max_q_rows, po, staged
                        ],
                    )?;
                    self.warp_decodes.fetch_add(1, Ordering::SeqCst);
                    break 'decode (1, 0, staged);
                }
                let (f, smem) = ahead.unwrap_or((f, 0));
                // (SLUICE_DECODE_SMEM_PAD, an experiment: see `decode_smem_pad`.)
                let smem = if one_tile && kind == KvKind::Bf16 && one_per_sm {
                    smem + self.decode_smem_pad
                } else {
                    smem
                };
                // The splits of one (sequence, KV head) as one thread-block cluster that merges
                // them through distributed shared memory: no partials, no merge kernel.
                // Only where every cluster fits on the GPU at once: at batch 8 (64 clusters of
                // 8 blocks, 512 blocks in all) clusters left a second wave, and the step was
                // 3.5% slower than with the merge kernel (H100, docs/BENCHMARKS.md).
                let cluster = splits > 1
                    && splits <= self.decode_cluster_max.load(Ordering::SeqCst)
                    && groups <= self.max_active_clusters(f, splits as u32, 128, smem);
                let partial = if splits > 1 && !cluster {
                    self.attention_scratch(t * p.n_heads * splits * (hd + 2) * 4)?
                } else {
                    0
                };
                let ci = i32::from(cluster);
                // The bf16 copy of the output for the output projection (the prefill kernel
                // below rewrites its rows in both).
                let staged = self.staging_for(out.numel(), t)?;
                let grid = (
                    meta.num_seqs as u32,
                    (p.n_kv_heads * row_groups) as u32,
                    splits as u32,
                );
                let cluster_z = if cluster { splits as u32 } else { 1 };
                let late = i32::from(self.decode_late_trigger.load(Ordering::SeqCst));
                let mut a = args![
                    pq, pk, pv, pqs, pcl, pbt, bt_cols, bs, nh, nkv, scale, window, softcap,
                    max_q_rows, partial, po, staged, ci, late
                ];
                // `late_trigger` is flash_decode_ahead's alone, after the general kernel's.
                let n = if ahead.is_some() {
                    a.len()
                } else {
                    a.len() - 1
                };
                self.launch_with(f, grid, 128, &mut a[..n], cluster_z, smem)?;
                if ahead.is_some() {
                    self.ahead_decodes.fetch_add(1, Ordering::SeqCst);
                }
                // Merged already: no merge kernel below.
                if cluster {
                    self.cluster_merges.fetch_add(1, Ordering::SeqCst);
                }
                (if cluster { 1 } else { splits }, partial, staged)
            }
        } else {
            // Split-K (flash-decoding): enough blocks to fill the GPU several times over.
            let (splits, split_len) =
                attention_splits(t * p.n_kv_heads, max_ctx, self.sm_count as usize);
            let f = self.kernels.attention[super::module::attention_index(kind, g, hd)];
            let partial = if splits > 1 {
                self.attention_scratch(t * p.n_heads * splits * (hd + 2) * 4)?
            } else {
                0
            };
            let split_len_i = split_len as i32;
            self.launch(
                f,
                (t as u32, p.n_kv_heads as u32, splits as u32),
                128,
                &mut args![
                    pq,
                    pk,
                    pv,
                    pqs,
                    ns,
                    pcl,
                    pbt,
                    bt_cols,
                    bs,
                    nh,
                    nkv,
                    hdi,
                    scale,
                    window,
                    softcap,
                    split_len_i,
                    max_q_rows,
                    partial,
                    po
                ],
            )?;
            // No bf16 copy from this kernel: only where the prefill kernel writes them all.
            (splits, partial, 0)
        };
        if splits > 1 {
            let si = splits as i32;
            self.launch(
                self.kernels.attention_merge_kernel,
                (t as u32, p.n_heads as u32, 1),
                (hd as u32).next_multiple_of(32).min(256),
                &mut args![partial, si, nh, hdi, po, staged],
            )?;
        }
        if let Some(f) = flash {
            // Launched last, on the same stream: the merge above writes every row, also
            // those the first kernel skipped (from partials it never wrote), and this
            // kernel overwrites them. Grid: an upper bound on the 64-row tiles of the
            // qualifying sequences (sum ceil(q_s / 64) <= ceil(T / 64) + num_seqs);
            // surplus blocks exit at once.
            let min_rows = PREFILL_MIN_ROWS as i32;
            self.launch(
                f,
                ((t.div_ceil(64) + meta.num_seqs) as u32, p.n_heads as u32, 1),
                128,
                &mut args![
                    pq, pk, pv, pqs, ns, pcl, pbt, bt_cols, bs, nh, nkv, scale, window, softcap,
                    min_rows, po, staged
                ],
            )?;
        }
        // Set after the last launch (each launch clears the record).
        self.set_staged(po, out.numel(), staged);
        // The decode attention of a few tokens reads little; the output projection that
        // follows streams its weight meanwhile.
        if decode.is_some() && flash.is_none() && t <= 4 {
            self.mark_memory_idle();
        }
        Ok(())
    }

    /// Greedy ids `[rows]` of logits `[rows, vocab]` on the device.
    pub fn argmax(&self, logits: &Tensor, out: &mut Tensor) -> Result<()> {
        check_f32("argmax", &[logits])?;
        out.expect_dtype(DType::I32)?;
        let rows = logits.rows();
        if out.numel() < rows {
            return Err(BackendError::Shape(format!(
                "argmax: {rows} rows into {} ids",
                out.numel()
            )));
        }
        self.bind()?;
        let (pl, po, v) = (ptr(logits)?, ptr(out)?, logits.cols() as i32);
        let splits = logits.cols().div_ceil(ARGMAX_SPAN);
        if splits > 1 && rows > 0 && self.argmax_split.load(Ordering::Relaxed) {
            let slots = self.argmax_scratch(rows)?;
            let tickets = slots + 8 * rows as u64;
            return self.launch(
                self.kernels.argmax_split_kernel,
                (rows as u32, splits as u32, 1),
                256,
                &mut args![pl, po, v, slots, tickets],
            );
        }
        self.launch(
            self.kernels.argmax_kernel,
            (rows as u32, 1, 1),
            1024,
            &mut args![pl, po, v],
        )
    }

    /// `argmax_split_kernel`'s zeroed slots (8 bytes a row) then tickets (4 bytes a row)
    /// for `rows` rows; grown (zeroed) when short. The kernel leaves them zeroed.
    fn argmax_scratch(&self, rows: usize) -> Result<sys::CUdeviceptr> {
        let mut guard = self
            .argmax_scratch
            .lock()
            .map_err(|_| BackendError::Device("argmax scratch lock poisoned".into()))?;
        let need = 12 * rows;
        if let Some(b) = guard.as_ref().filter(|b| b.len >= need) {
            return Ok(b.ptr);
        }
        if self.capturing.load(Ordering::SeqCst) {
            return Err(BackendError::Device(
                "argmax scratch must grow during a CUDA graph capture".into(),
            ));
        }
        // No queued argmax may still use the old slots when they are freed.
        self.synchronize()?;
        let len = 12 * rows.next_power_of_two().max(1024);
        let buf = self.alloc(len)?;
        // SAFETY: the range lies inside the fresh allocation.
        unsafe { cudarc::driver::result::memset_d8_async(buf.ptr, 0, len, self.stream) }
            .map_err(super::derr)?;
        let p = buf.ptr;
        *guard = Some(buf);
        Ok(p)
    }

    /// Greedy argmax over several blocks per row on or off; returns the previous setting.
    pub fn set_argmax_split(&self, on: bool) -> bool {
        self.argmax_split.swap(on, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::{attention_splits, decode_row_groups, decode_rows_bound, decode_splits};

    #[test]
    fn gemv_spreads_small_projections_over_more_warps() {
        use super::gemv_warps_per_row;
        assert_eq!(gemv_warps_per_row(14336, 132, 2), 1);
        assert_eq!(gemv_warps_per_row(4096, 132, 2), 1);
        assert_eq!(gemv_warps_per_row(2048, 132, 2), 2);
        assert_eq!(gemv_warps_per_row(1024, 132, 2), 4);
        assert_eq!(gemv_warps_per_row(512, 132, 2), 8);
        assert_eq!(gemv_warps_per_row(33, 132, 2), 8);
    }

    #[test]
    fn attention_splits_fill_the_gpu_and_cover_the_context() {
        // Enough (row, head) blocks already: one split over the whole context.
        assert_eq!(attention_splits(4096, 512, 132), (1, 512));
        // One decode on 8 KV heads over 4096 keys: 66 splits would fill 528 blocks, but
        // splits stop at one per 64 keys.
        assert_eq!(attention_splits(8, 4096, 132), (64, 64));
        assert_eq!(attention_splits(8, 1 << 16, 132), (66, 993));
        // Short contexts are not split below 64 keys.
        assert_eq!(attention_splits(8, 100, 132), (2, 50));
        assert_eq!(attention_splits(1, 1, 132), (1, 1));
        for (b, ctx) in [(1, 1), (3, 7000), (17, 2048), (100, 65), (527, 1 << 17)] {
            let (n, len) = attention_splits(b, ctx, 132);
            assert!(n >= 1 && n * len >= ctx && (n - 1) * len < ctx, "{b} {ctx}");
        }
    }

    #[test]
    fn decode_splits_fill_one_wave_in_whole_tiles() {
        // Partial bytes per split: 64 decode rows, 32 heads, head_dim 128.
        let per_split = 64 * 32 * 130 * 4;
        // 528 slots: 132 SMs, 4 blocks each. Batch 1, 8 KV heads: 66 splits make 528
        // blocks; a 4k context has only 64 tiles.
        assert_eq!(decode_splits(8, 1 << 16, 528, 32 * 130 * 4, 1), 66);
        assert_eq!(decode_splits(8, 4096, 528, 32 * 130 * 4, 1), 64);
        // ... but no more splits than tiles.
        assert_eq!(decode_splits(8, 576, 528, 32 * 130 * 4, 1), 9);
        // Batch 32: 256 groups, 2 splits fill the wave; batch 64: 512 groups, one split.
        assert_eq!(decode_splits(256, 1024, 528, per_split / 2, 1), 2);
        assert_eq!(decode_splits(512, 4096, 528, per_split, 1), 1);
        // More groups than the wave holds: one split.
        assert_eq!(decode_splits(2048, 1024, 528, 4 * per_split, 1), 1);
        // A long prefill chunk in the step: partials for all its rows would not pay.
        assert_eq!(decode_splits(16, 4096, 528, 4096 * 32 * 130 * 4, 1), 1);
        // At least two tiles per split: 576 keys (9 tiles) in 5, 640 (10) in 5, 4k in 32.
        let s = 32 * 130 * 4;
        assert_eq!(decode_splits(8, 576, 528, s, 2), 5);
        assert_eq!(decode_splits(8, 640, 528, s, 2), 5);
        assert_eq!(decode_splits(8, 4096, 528, s, 2), 32);
        assert_eq!(decode_splits(8, 64, 528, s, 2), 1);
        for (b, ctx) in [(1, 1), (3, 7000), (17, 2048), (100, 65), (527, 1 << 17)] {
            let n = decode_splits(b, ctx, 528, 1 << 10, 1);
            assert!(
                (1..=ctx.div_ceil(64)).contains(&n) && b * n <= 528.max(b),
                "{b} {ctx}"
            );
        }
    }

    #[test]
    fn vectorised_norms_take_aligned_rows_of_whole_float4s() {
        use super::norm4_threads;
        // 4096 columns: 1,024 float4 chunks, 4 per thread.
        assert_eq!(norm4_threads(4096, &[256, 512]), Some(256));
        assert_eq!(norm4_threads(576, &[0]), Some(64));
        assert_eq!(norm4_threads(8, &[0]), Some(32));
        assert_eq!(norm4_threads(16384, &[0]), Some(1024));
        // Too wide for 4 chunks of 1,024 threads, not whole float4s, misaligned, empty.
        assert_eq!(norm4_threads(16388, &[0]), None);
        assert_eq!(norm4_threads(4094, &[0]), None);
        assert_eq!(norm4_threads(4096, &[256, 8]), None);
        assert_eq!(norm4_threads(0, &[0]), None);
        for cols in (4..20_000).step_by(4) {
            if let Some(t) = norm4_threads(cols, &[0]) {
                assert!(cols / 4 <= 4 * t as usize && t.is_power_of_two(), "{cols}");
            }
        }
    }

    #[test]
    fn decode_row_groups_bound_the_packed_rows() {
        // Plain decode steps: one row per sequence.
        assert_eq!(decode_rows_bound(64, 64), 1);
        assert_eq!(decode_rows_bound(1, 1), 1);
        // Up to 15 rows: GQA 4 gives 60 packed rows, 4 m-tiles, 2 passes of 2.
        assert_eq!(decode_rows_bound(320, 64), 15);
        assert_eq!(decode_row_groups(4, 15), 2);
        assert_eq!(decode_row_groups(8, 15), 4);
        // Three sequences, 9 rows in all: at most 7 rows each.
        assert_eq!(decode_rows_bound(9, 3), 7);
        assert_eq!(decode_row_groups(4, 7), 1);
        assert_eq!(decode_row_groups(8, 7), 2);
        // Fewer rows than sequences (not the engine's batches): bounded by T.
        assert_eq!(decode_rows_bound(2, 5), 2);
    }
}
