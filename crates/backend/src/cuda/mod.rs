//! The CUDA backend: device memory, one stream, NVRTC-compiled kernels and cuBLASLt.
//!
//! Everything is loaded at run time (cudarc's `dynamic-loading`): the same binary runs
//! on machines without CUDA and says so when asked for a GPU. Kernels are CUDA C++ in
//! `kernels/*.cu`, compiled by NVRTC for the device's architecture on first use and
//! cached on disk (see `module.rs`).
//!
//! Activations stay f32 (the CPU's layout, so the model code is shared unchanged);
//! 2-D weights are stored in the backend's weight type (bf16 by default, f16 or f32 on
//! request) and the KV cache in bf16 or f32. Matmuls with few rows (decode) run our own
//! bandwidth-bound GEMV; larger ones go to cuBLASLt.

pub mod fp8;
mod fused;
mod gemm;
mod graph;
pub mod kquant;
pub mod legacy_quant;
pub mod module;
mod ops;
mod pinned;
mod qmma;
mod readback;
mod sample;
pub mod trace;
mod upload;

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result as drv, sys, CudaContext};

use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::{Storage, Tensor};
use module::KvKind;

pub use graph::CudaGraph;
pub use module::{compile_kernels, kernel_source};

/// Default of `CudaBackend::decode_cluster_max`: the non-portable cluster size limit of
/// Hopper, so that a batch-1 decode of up to 16 key tiles (1,024 keys) merges its splits
/// in the cluster too.
const DECODE_CLUSTER_MAX: usize = 16;

/// Default of `CudaBackend::decode_split_tiles`: each key split of the decode attention
/// runs at least two 64-key tiles. Measured on an H200 (session 18, `bench model` tg128
/// at a context of 512-640, against one tile per split, 10 splits): 8B +0.35%, 1B +0.8%;
/// three or five tiles were level for 8B and +0.3% / +1.1% for 1B; at batch 8, three
/// tiles (4 splits instead of 8) +1.9%; at a 4k context no difference
/// (docs/BENCHMARKS.md, session 18).
const DECODE_SPLIT_TILES: usize = 2;

/// Default of `CudaBackend::decode_ahead`: `flash_decode_ahead` at head_dim 64 and 128,
/// with the early PDL trigger. Measured on H200s (tg128 of `bench model -p 512 -n 128`,
/// and the `layers` probe at 576 keys, against the general kernel in the same call):
/// session 22, 1B shape (head_dim 64) 1,332.2 / 1,330.9 against 1,314.3 / 1,318.0
/// tokens/s (+1.2%); session 23, 8B shape (head_dim 128, the spill-free build) 256.37 /
/// 256.33 against 252.35 / 252.52 / 252.49 (+1.6%), the attention inside the step 9.1
/// against 11.6 µs per layer (docs/BENCHMARKS.md).
const DECODE_AHEAD: usize = 2;

/// Default of `CudaBackend::decode_warp`: `flash_decode_warp` with a ring of 3 tiles.
const DECODE_WARP_STAGES: usize = 3;

/// Default of `CudaBackend::decode_warp_fp8`: the ring depth of `flash_decode_warp` over an
/// FP8 cache chosen per step: 6 tiles while one wave of those warps holds every (sequence,
/// KV head) item, else 4, which fit more warps per SM (12 against 8 at head_dim 128).
/// Measured on an H200 (docs/BENCHMARKS.md, session 29), 8B shape, FP8 weights and cache:
/// 128 × 768 keys (1,024 items) 6.43 / 6.46 ms a decode step at 6 against 6.70 / 6.98 at
/// 4; the offline run's 512 sequences (4,096 items) 14,360.6 output tokens/s at 4
/// against 13,900.2 at 6 and 13,142.3 at 8.
const DECODE_WARP_FP8_AUTO: usize = 1;

/// Default of `CudaBackend::gemv_prefetch`. Measured on an H100 (8B / 1B shapes, batch
/// 1, tokens/s): none 172.1 / 879, 8 MiB 172.1 / 904, 24 MiB 165.6 / 859: beyond what the
/// blocks resident before the previous kernel ends can use, the prefetch only competes
/// with the loads that follow it. The bf16 GEMVs with four loads in flight per row
/// (session 16) prefetch nothing: on an H200 the prefetch cost them 1.7% (8B) and 1.8%
/// (1B) of tg128 (`gemv_bf16_prefetch`).
const GEMV_PREFETCH_BYTES: i64 = 8 << 20;
/// `gemv_stage`'s default (kernels `gemv1_staged_bf16_s1`, `_s2`, `_s4`; docs/cuda.md).
const GEMV_STAGE_CHUNKS: usize = 2;

pub(crate) fn derr(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("CUDA: {e:?}"))
}

/// Whether a CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Device memory owned by one tensor.
pub struct CudaBuffer {
    ptr: sys::CUdeviceptr,
    len: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: a device pointer is an address in the context's memory, usable from any thread
// that binds the context; the buffer owns it exclusively.
unsafe impl Send for CudaBuffer {}
unsafe impl Sync for CudaBuffer {}

impl CudaBuffer {
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        if self.ptr != 0 && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by cuMemAlloc in this context and freed once.
            let _ = unsafe { drv::free_sync(self.ptr) };
        }
    }
}

/// `src` (f32, `n` elements) also exists as bf16 at `dst` in the activation scratch.
#[derive(Clone, Copy)]
pub(crate) struct StagedActivations {
    pub src: sys::CUdeviceptr,
    pub n: usize,
    pub dst: sys::CUdeviceptr,
}

/// Weight element type on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum CudaWeightType {
    /// bf16 for f32 and most quantized files; f16/bf16 files, and GGUF Q8_0, Q4_0, Q4_1,
    /// Q4_K and Q6_K matrices, as they are.
    Auto,
    Bf16,
    F16,
    /// Exact weights and f32 GEMMs (no TF32): the reference path for golden tests.
    F32,
    /// GGUF Q8_0 (blocks of 32 int8 with an f16 scale, 1.06 bytes per weight): files
    /// already in Q8_0 stay so under `Auto`; this quantizes any other file at load.
    Q8_0,
    /// OCP FP8 E4M3 with one f32 scale per matrix (1 byte per weight), quantized at load;
    /// cuBLASLt's FP8 GEMM for prefill on sm_89+ (see `fp8.rs`). Rows that are not a
    /// multiple of 16 stay bf16.
    Fp8,
    /// GGUF Q4_K (super-blocks of 256 4-bit weights, 4.5 bits per weight) or Q6_K (6.56
    /// bits), quantized at load; Q4_K/Q6_K matrices of a file stay so under `Auto` (see
    /// `kquant.rs`). Rows that are not whole super-blocks of 256 stay bf16.
    Q4_K,
    Q6_K,
    /// GGUF Q4_0 (blocks of 32 4-bit weights and an f16 scale, 4.5 bits per weight) or
    /// Q4_1 (and an f16 minimum, 5 bits), quantized at load; Q4_0/Q4_1 matrices of a file
    /// stay so under `Auto` (see `legacy_quant.rs`). Rows that are not whole blocks of 32
    /// stay bf16.
    Q4_0,
    Q4_1,
}

impl CudaWeightType {
    pub fn parse(s: &str) -> Option<CudaWeightType> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(CudaWeightType::Auto),
            "bf16" | "bfloat16" => Some(CudaWeightType::Bf16),
            "f16" | "fp16" | "float16" | "half" => Some(CudaWeightType::F16),
            "f32" | "fp32" | "float32" => Some(CudaWeightType::F32),
            "q8_0" | "q8" => Some(CudaWeightType::Q8_0),
            "fp8" | "f8" | "fp8_e4m3" | "e4m3" => Some(CudaWeightType::Fp8),
            "q4_k" | "q4k" => Some(CudaWeightType::Q4_K),
            "q6_k" | "q6k" => Some(CudaWeightType::Q6_K),
            "q4_0" => Some(CudaWeightType::Q4_0),
            "q4_1" => Some(CudaWeightType::Q4_1),
            _ => None,
        }
    }

    /// The GPU type of a matrix stored as `file` with rows of `cols`: Q8_0, Q4_0, Q4_1,
    /// Q4_K and Q6_K need whole blocks per row (otherwise bf16, as llama.cpp falls back
    /// for odd rows).
    pub(crate) fn resolve(self, file: DType, cols: usize) -> DType {
        let q8 = cols.is_multiple_of(32);
        let kq = cols.is_multiple_of(256);
        match self {
            CudaWeightType::Auto => match file {
                DType::F16 => DType::F16,
                DType::Q8_0 if q8 => DType::Q8_0,
                DType::Q4_0 | DType::Q4_1 if q8 => file,
                DType::Q4_K | DType::Q6_K if kq => file,
                _ => DType::BF16,
            },
            CudaWeightType::Bf16 => DType::BF16,
            CudaWeightType::F16 => DType::F16,
            CudaWeightType::F32 => DType::F32,
            CudaWeightType::Q8_0 if q8 => DType::Q8_0,
            CudaWeightType::Q8_0 => DType::BF16,
            CudaWeightType::Fp8 if cols.is_multiple_of(16) => DType::F8E4M3,
            CudaWeightType::Fp8 => DType::BF16,
            CudaWeightType::Q4_K if kq => DType::Q4_K,
            CudaWeightType::Q6_K if kq => DType::Q6_K,
            CudaWeightType::Q4_K | CudaWeightType::Q6_K => DType::BF16,
            CudaWeightType::Q4_0 if q8 => DType::Q4_0,
            CudaWeightType::Q4_1 if q8 => DType::Q4_1,
            CudaWeightType::Q4_0 | CudaWeightType::Q4_1 => DType::BF16,
        }
    }
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: sys::CUstream,
    kernels: module::Kernels,
    gemm: gemm::Gemm,
    /// Staging for 16-bit copies of activations fed to cuBLASLt, grown on demand.
    scratch: Mutex<Option<CudaBuffer>>,
    /// Split-K attention partials (m, l, acc per row, head and split).
    attention_scratch: Mutex<Option<CudaBuffer>>,
    /// Sampling parameters of a step, uploaded before the sampling kernel.
    sample_staging: Mutex<Option<CudaBuffer>>,
    /// `argmax`'s per-row slots and tickets (zeroed; each call leaves them zeroed).
    argmax_scratch: Mutex<Option<CudaBuffer>>,
    /// `argmax` over several blocks per row unless `SLUICE_ARGMAX_SPLIT=0`.
    argmax_split: AtomicBool,
    /// Staging for `logprobs`' asked rows (apart from `sample_staging`, which the
    /// sampler queued just before rewrites in place).
    logprob_staging: Mutex<Option<CudaBuffer>>,
    /// A Q8_0 weight dequantized to bf16 for a cuBLASLt matmul (the largest so far).
    weight_scratch: Mutex<Option<CudaBuffer>>,
    /// FP8 GEMM plans and whether FP8 tensor cores are used (see fp8.rs).
    fp8: fp8::Fp8Gemm,
    weight_type: CudaWeightType,
    name: String,
    sm_count: u32,
    /// Launch kernels with programmatic dependent launch (sm_90+, unless `SLUICE_PDL=0`):
    /// see kernels/common.cuh `pdl_entry` and docs/cuda.md.
    pdl: bool,
    /// Weight bytes (from the start of each weight) that the batch-1 GEMVs prefetch into
    /// L2 before waiting for the previous kernel: `GEMV_PREFETCH_BYTES` under PDL, none
    /// without (`SLUICE_GEMV_PREFETCH=<bytes>` overrides, for tuning).
    gemv_prefetch: i64,
    /// Fused batch-1 norm + GEMV and GEMV + residual (unless `SLUICE_FUSED_DECODE=0`).
    fused_decode: bool,
    /// The batch-1 GEMVs with the GLU or RoPE in their epilogue (fused.rs
    /// `fuses_decode_pairs`; unless `SLUICE_FUSED_PAIRS=0`).
    fused_pairs: bool,
    /// Blocks per SM the batch-1 GEMV grids aim for (`gemv_warps_per_row`; 2, or
    /// `SLUICE_GEMV_BLOCKS_PER_SM`, for tuning).
    gemv_blocks_per_sm: usize,
    /// The bf16 batch-1 GEMVs (plain, fused norm, GLU and RoPE pairs) of before session
    /// 16: two loads per row in flight instead of four (`SLUICE_GEMV_UNROLL=2`, for
    /// comparisons; kernels/gemv.cu).
    gemv_bf16_u2: bool,
    /// `gemv_prefetch` for the bf16 GEMVs: none for the four-load kernels (they keep
    /// enough loads in flight that a prefetch only competes with them; H200,
    /// docs/BENCHMARKS.md session 16), `gemv_prefetch` for the two-load ones or when
    /// `SLUICE_GEMV_PREFETCH` is set.
    gemv_bf16_prefetch: i64,
    /// The batch-1 bf16, f16 and f32 GEMVs of kernels/gemv.cu's skeleton (plain, fused
    /// norm, GLU and RoPE pairs; not FP8 or Q8_0) issue their first weight loads before
    /// the PDL wait (`gemv1_dot`'s `prewait`; `SLUICE_GEMV_PREWAIT=0` waits first, for
    /// comparisons).
    gemv_prewait: bool,
    /// Chunks per row and lane that the bf16 GEMV after a `memory_idle` kernel (the
    /// output projection after the decode attention) copies into shared memory before
    /// its PDL wait: 2 (32 KB per block), 1, 4, or 0 for none (`SLUICE_GEMV_STAGE`;
    /// kernels/gemv.cu `gemv1_staged_body`).
    gemv_stage: usize,
    /// Every plain bf16 batch-1 GEMV stages (the down projection after the GLU, the output
    /// head), not only the one after a `memory_idle` kernel: `SLUICE_GEMV_STAGE_ALL=1`,
    /// an experiment. It lost on an H200 (session 23: 8B 251.6 against 252.4 tokens/s,
    /// 1B 1,329 against 1,340); the staged blocks start only where the previous kernel
    /// leaves registers free, i.e. in its tail.
    gemv_stage_all: bool,
    /// Launches of the staged GEMV so far (for tests).
    staged_gemvs: AtomicU64,
    /// Blocks per SM the decode attention's key splits aim for (`decode_splits`; 4, or
    /// `SLUICE_DECODE_BLOCKS_PER_SM`, for tuning).
    decode_blocks_per_sm: usize,
    /// Largest thread-block cluster the decode attention merges its key splits in
    /// (sm_90+; 0: always the merge kernel). `SLUICE_DECODE_CLUSTER=0` turns it off,
    /// `SLUICE_DECODE_CLUSTER_MAX` sets it (above 8 needs the non-portable sizes the
    /// loader allows on the decode kernels).
    decode_cluster_max: AtomicUsize,
    /// What the kernels allow (`Kernels::decode_cluster_limit`).
    decode_cluster_limit: usize,
    /// Decode-attention launches whose splits merged in a cluster so far (for tests).
    cluster_merges: AtomicU64,
    /// Launches of `flash_decode_ahead` so far (for tests).
    ahead_decodes: AtomicU64,
    /// Ring depth (2, 3 or 4 tiles; 0: off) of `flash_decode_warp`, the decode attention of
    /// steps with one key split per (sequence, KV head) (`DECODE_WARP_STAGES`, or
    /// `SLUICE_DECODE_WARP`).
    decode_warp: AtomicUsize,
    /// The same over an FP8 cache (4, 6 or 8 tiles; 0: off; `DECODE_WARP_FP8_AUTO`: 6 or
    /// 4 by the step's items; `SLUICE_DECODE_WARP_FP8`).
    decode_warp_fp8: AtomicUsize,
    /// `flash_decode_warp` for every eligible step, also those whose blocks fit in one
    /// wave of the block kernel (for tests, and `SLUICE_DECODE_WARP_ALWAYS=1`).
    decode_warp_always: AtomicBool,
    /// Launches of `flash_decode_warp` so far (for tests).
    warp_decodes: AtomicU64,
    /// Set after a kernel that leaves the memory system nearly idle while it runs (the
    /// decode attention, the embedding lookup), cleared by every other launch: the
    /// batch-1 GEMV launched next prefetches its whole weight into L2 before its PDL
    /// wait (up to `idle_prefetch_cap` bytes), streaming it while that kernel runs; a bf16
    /// one stages its first chunks in shared memory instead (`gemv_stage`).
    memory_idle: AtomicBool,
    /// Bytes a GEMV launched after a `memory_idle` kernel prefetches at most: three
    /// quarters of L2 (0 without PDL, or with `SLUICE_IDLE_PREFETCH=0`).
    idle_prefetch_cap: i64,
    /// `cuOccupancyMaxActiveClusters` by (kernel, cluster size, dynamic shared memory),
    /// asked once each; and `resident_blocks` by (kernel, 0, block size).
    active_clusters: Mutex<std::collections::HashMap<(usize, u32, u32), usize>>,
    /// At most this many key splits in the decode attention (`SLUICE_DECODE_MAX_SPLITS`,
    /// for tuning; unbounded by default).
    decode_max_splits: usize,
    /// Which plain decode steps whose attention blocks fit on the GPU in one block per
    /// SM take `flash_decode_ahead` (kernels/attention_decode.cu: each split's first two
    /// tiles requested before the PDL wait): 2 (`DECODE_AHEAD`) head_dim 64 and 128, 1
    /// head_dim 64 only, 0 none (`SLUICE_DECODE_AHEAD`).
    decode_ahead: AtomicUsize,
    /// `flash_decode_ahead`'s `late_trigger`: the next kernel launches only after the
    /// attention's reads of this step landed (`SLUICE_DECODE_LATE_TRIGGER=1`; off by
    /// default, see `DECODE_AHEAD`).
    decode_late_trigger: AtomicBool,
    /// Extra dynamic shared memory (bytes) for the batch-1 decode attention's blocks
    /// (`SLUICE_DECODE_SMEM_PAD`, an experiment; 0 by default): a block that holds most
    /// of an SM's shared memory keeps the output projection's blocks, and their staged
    /// weight loads, off the SMs that run the attention. Session 23 (H200, 8B tg128):
    /// the general kernel padded to 175 KB (one projection block beside it) 255.1
    /// against 252.4 tokens/s, but `flash_decode_ahead` (256.4 unpadded) padded to 215 KB
    /// 243.4; the footprint moves the step both ways (docs/BENCHMARKS.md).
    decode_smem_pad: u32,
    /// Fewest 64-key tiles per key split of the decode attention (`decode_splits`;
    /// `DECODE_SPLIT_TILES`, or `SLUICE_DECODE_SPLIT_TILES`, for tuning).
    decode_split_tiles: AtomicUsize,
    /// Time cuBLASLt's candidates for decode-sized GEMMs (gemm.rs; `SLUICE_GEMM_AUTOTUNE=0`
    /// takes the heuristic's first choice).
    gemm_autotune: bool,
    /// The GEMM epilogues of steps above the GEMVs (`gemm_epilogues`: the residual add in
    /// the GEMM, bf16 between the FFN's GEMMs); `SLUICE_GEMM_EPILOGUES=0` turns them off.
    epilogues: bool,
    /// Open while the caller runs a step whose GEMM shapes recur (the first, eager step
    /// of a decode-graph bucket): only GEMMs planned then are autotuned.
    gemm_tuning_window: AtomicBool,
    /// A bf16 copy of an f32 activation tensor that the kernel just launched wrote next to
    /// it, for the GEMM that consumes it (see `ops.rs`, "staged activations"). Cleared
    /// by every other launch, so it only ever describes the latest kernel's output.
    staged: Mutex<Option<StagedActivations>>,
    /// Producers write the bf16 copies (unless `SLUICE_STAGED_ACTIVATIONS=0`).
    stage_activations: bool,
    /// GEMM inputs taken from a staged copy so far (for tests).
    staged_uses: AtomicU64,
    /// Set while the stream is being captured into a graph (see graph.rs).
    capturing: AtomicBool,
    /// Pinned staging for the step uploads (pinned.rs), allocated on first use; unless
    /// `SLUICE_PINNED_UPLOADS=0`.
    pinned: Mutex<Option<pinned::PinnedStaging>>,
    pinned_uploads: bool,
    /// A step's input arrays uploaded by one kernel (upload.rs) unless
    /// `SLUICE_PACKED_UPLOADS=0`.
    packed_uploads: AtomicBool,
    /// Uploads done that way so far (for tests).
    packed_upload_count: AtomicU64,
    /// Sampled ids (and records) written into the mapped readback slot by a kernel
    /// (readback.rs) unless `SLUICE_KERNEL_READBACK=0`, which copies them.
    kernel_readback: AtomicBool,
    /// Sampled ids read back behind an event rather than a stream synchronization
    /// (readback.rs), created on first use.
    readback: Mutex<Option<readback::Readback>>,
    /// Bumped whenever a scratch buffer is reallocated (captured graphs hold its address).
    epoch: AtomicU64,
    /// Quantized matmuls of 5 up to this many token rows run on the tensor cores with the
    /// weight dequantized in registers (qmma.rs); more rows dequantize the whole weight for
    /// cuBLASLt. `qmma::AUTO` (each format's default) unless `SLUICE_QMMA_MAX_ROWS` (0:
    /// never) or `set_quantized_mma_rows` sets one limit for all.
    qmma_max_rows: AtomicUsize,
    /// Blocks per SM the quantized mma's K splits aim for (`SLUICE_QMMA_BLOCKS_PER_SM`;
    /// 0: qmma.rs's default).
    qmma_blocks_per_sm: usize,
    /// The kernels (by function handle) already allowed their dynamic shared memory above
    /// 48 KB (the quantized mma, whose size depends on the token tiles).
    smem_prepared: Mutex<std::collections::HashSet<usize>>,
}

// SAFETY: the stream and function handles are driver objects valid in the context, which
// every entry point binds to the calling thread first; mutable host state sits behind
// mutexes.
unsafe impl Send for CudaBackend {}
unsafe impl Sync for CudaBackend {}

/// A positive integer from the environment variable `name`, or `default`.
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// `env_usize` for a setting where 0 means "none" (`SLUICE_GEMV_STAGE=0`,
/// `SLUICE_DECODE_AHEAD=0`). (Through `env_usize`, whose 0 falls back to the default,
/// `SLUICE_GEMV_STAGE=0` ran the default two chunks in session 21's comparisons.)
fn env_usize_or_zero(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default)
}

impl CudaBackend {
    /// Opens GPU `ordinal`, compiles (or loads from the cache) the kernels and creates
    /// the cuBLASLt handle.
    pub fn new(ordinal: usize, weight_type: CudaWeightType) -> Result<CudaBackend> {
        if !driver_present() {
            return Err(BackendError::Device(
                "no CUDA driver found (libcuda.so could not be loaded); \
                 run on a machine with an NVIDIA GPU and driver, or use --device cpu"
                    .into(),
            ));
        }
        let count = CudaContext::device_count().map_err(derr)?;
        if ordinal as i32 >= count {
            return Err(BackendError::Device(format!(
                "CUDA device {ordinal} requested, but {count} device(s) found"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(derr)?;
        let (major, minor) = ctx.compute_capability().map_err(derr)?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(derr)? as u32;
        let name = ctx.name().map_err(derr)?;
        let pdl = major >= 9 && std::env::var("SLUICE_PDL").map_or(true, |v| v != "0");
        let gemv_prefetch = std::env::var("SLUICE_GEMV_PREFETCH")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(if pdl { GEMV_PREFETCH_BYTES } else { 0 });
        let gemv_bf16_u2 = env_usize("SLUICE_GEMV_UNROLL", 4) == 2;
        // (A failed query only turns the idle-memory prefetch off.)
        let l2_bytes = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .map_or(0, i64::from);
        let idle_prefetch = pdl && std::env::var("SLUICE_IDLE_PREFETCH").map_or(true, |v| v != "0");
        let stream = drv::stream::create(drv::stream::StreamKind::NonBlocking).map_err(derr)?;
        let kernels = module::Kernels::load(major, minor)?;
        // The four-chunk staged GEMV needs 64 KB, above the 48 KB default: allowed once
        // here, not checked per launch.
        module::set_max_dynamic_smem(kernels.gemv1_staged_bf16_s4, ops::staged_gemv_smem(4))?;
        let decode_smem_pad = env_usize_or_zero("SLUICE_DECODE_SMEM_PAD", 0) as u32;
        if decode_smem_pad > 0 {
            module::allow_decode_smem_pad(&kernels, decode_smem_pad)?;
        }
        let cluster_limit = kernels.decode_cluster_limit;
        let gemm = gemm::Gemm::new(&ctx)?;
        Ok(CudaBackend {
            ctx,
            stream,
            kernels,
            gemm,
            scratch: Mutex::new(None),
            attention_scratch: Mutex::new(None),
            sample_staging: Mutex::new(None),
            argmax_scratch: Mutex::new(None),
            argmax_split: AtomicBool::new(
                std::env::var("SLUICE_ARGMAX_SPLIT").map_or(true, |v| v != "0"),
            ),
            logprob_staging: Mutex::new(None),
            weight_scratch: Mutex::new(None),
            fp8: fp8::Fp8Gemm::new(major, minor),
            weight_type,
            name: format!("{name} (sm_{major}{minor}, {sm_count} SMs)"),
            sm_count,
            pdl,
            gemv_prefetch,
            fused_decode: std::env::var("SLUICE_FUSED_DECODE").map_or(true, |v| v != "0"),
            fused_pairs: std::env::var("SLUICE_FUSED_PAIRS").map_or(true, |v| v != "0"),
            gemv_blocks_per_sm: env_usize("SLUICE_GEMV_BLOCKS_PER_SM", 2),
            gemv_bf16_u2,
            gemv_bf16_prefetch: if gemv_bf16_u2 || std::env::var("SLUICE_GEMV_PREFETCH").is_ok() {
                gemv_prefetch
            } else {
                0
            },
            gemv_prewait: std::env::var("SLUICE_GEMV_PREWAIT").map_or(true, |v| v != "0"),
            gemv_stage: env_usize_or_zero("SLUICE_GEMV_STAGE", GEMV_STAGE_CHUNKS),
            gemv_stage_all: std::env::var("SLUICE_GEMV_STAGE_ALL").is_ok_and(|v| v == "1"),
            staged_gemvs: AtomicU64::new(0),
            decode_blocks_per_sm: env_usize("SLUICE_DECODE_BLOCKS_PER_SM", 4),
            decode_max_splits: env_usize("SLUICE_DECODE_MAX_SPLITS", usize::MAX),
            decode_ahead: AtomicUsize::new(env_usize_or_zero("SLUICE_DECODE_AHEAD", DECODE_AHEAD)),
            decode_late_trigger: AtomicBool::new(
                std::env::var("SLUICE_DECODE_LATE_TRIGGER").is_ok_and(|v| v == "1"),
            ),
            decode_smem_pad,
            decode_split_tiles: AtomicUsize::new(
                env_usize("SLUICE_DECODE_SPLIT_TILES", DECODE_SPLIT_TILES).max(1),
            ),
            decode_cluster_max: AtomicUsize::new(
                if std::env::var("SLUICE_DECODE_CLUSTER").map_or(true, |v| v != "0") {
                    env_usize("SLUICE_DECODE_CLUSTER_MAX", DECODE_CLUSTER_MAX).min(cluster_limit)
                } else {
                    0
                },
            ),
            decode_cluster_limit: cluster_limit,
            active_clusters: Mutex::new(std::collections::HashMap::new()),
            cluster_merges: AtomicU64::new(0),
            ahead_decodes: AtomicU64::new(0),
            decode_warp: AtomicUsize::new(env_usize_or_zero(
                "SLUICE_DECODE_WARP",
                DECODE_WARP_STAGES,
            )),
            decode_warp_fp8: AtomicUsize::new(env_usize_or_zero(
                "SLUICE_DECODE_WARP_FP8",
                DECODE_WARP_FP8_AUTO,
            )),
            decode_warp_always: AtomicBool::new(
                std::env::var("SLUICE_DECODE_WARP_ALWAYS").is_ok_and(|v| v == "1"),
            ),
            warp_decodes: AtomicU64::new(0),
            memory_idle: AtomicBool::new(false),
            idle_prefetch_cap: if idle_prefetch { l2_bytes / 4 * 3 } else { 0 },
            gemm_autotune: std::env::var("SLUICE_GEMM_AUTOTUNE").map_or(true, |v| v != "0"),
            gemm_tuning_window: AtomicBool::new(false),
            epilogues: std::env::var("SLUICE_GEMM_EPILOGUES").map_or(true, |v| v != "0"),
            staged: Mutex::new(None),
            staged_uses: AtomicU64::new(0),
            // Only where the GEMMs take bf16 input (not f16, f32 or FP8 weights).
            stage_activations: matches!(
                weight_type,
                CudaWeightType::Auto
                    | CudaWeightType::Bf16
                    | CudaWeightType::Q8_0
                    | CudaWeightType::Q4_K
                    | CudaWeightType::Q6_K
                    | CudaWeightType::Q4_0
                    | CudaWeightType::Q4_1
            ) && std::env::var("SLUICE_STAGED_ACTIVATIONS")
                .map_or(true, |v| v != "0"),
            capturing: AtomicBool::new(false),
            pinned: Mutex::new(None),
            pinned_uploads: std::env::var("SLUICE_PINNED_UPLOADS").map_or(true, |v| v != "0"),
            packed_uploads: AtomicBool::new(
                std::env::var("SLUICE_PACKED_UPLOADS").map_or(true, |v| v != "0"),
            ),
            packed_upload_count: AtomicU64::new(0),
            kernel_readback: AtomicBool::new(
                std::env::var("SLUICE_KERNEL_READBACK").map_or(true, |v| v != "0"),
            ),
            readback: Mutex::new(None),
            epoch: AtomicU64::new(0),
            qmma_max_rows: AtomicUsize::new(
                std::env::var("SLUICE_QMMA_MAX_ROWS")
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(qmma::AUTO),
            ),
            qmma_blocks_per_sm: env_usize("SLUICE_QMMA_BLOCKS_PER_SM", 0),
            smem_prepared: Mutex::new(std::collections::HashSet::new()),
        })
    }

    pub fn describe(&self) -> String {
        format!("cuda: {}", self.name)
    }

    /// Whether a GEMM planned now may time its candidates: inside a tuning window and not
    /// inside a graph capture.
    pub(super) fn gemm_may_tune(&self) -> bool {
        self.gemm_autotune
            && self.gemm_tuning_window.load(Ordering::SeqCst)
            && !self.capturing.load(Ordering::SeqCst)
    }

    /// How many GEMM plans picked their algorithm by timing (gemm.rs).
    pub fn gemm_tuned_plans(&self) -> u64 {
        self.gemm.tuned_plans()
    }

    /// Opens or closes the GEMM tuning window (see gemm.rs, "Autotuning"): the model opens
    /// it around the first step of each decode-graph bucket, whose shapes then recur on
    /// every replay. Prefill chunks of any length are never timed, so no request waits.
    pub fn set_gemm_tuning(&self, open: bool) {
        self.gemm_tuning_window.store(open, Ordering::SeqCst);
    }

    pub(crate) fn clear_staged(&self) {
        if let Ok(mut g) = self.staged.lock() {
            *g = None;
        }
    }

    /// Sets the largest cluster the decode attention merges its key splits in (0 or 1:
    /// always the merge kernel; capped at what the kernels allow). For tests and tuning;
    /// `SLUICE_DECODE_CLUSTER_MAX` sets it at start. Returns the value in force.
    pub fn set_decode_cluster_max(&self, n: usize) -> usize {
        let n = n.min(self.decode_cluster_limit);
        self.decode_cluster_max.store(n, Ordering::SeqCst);
        n
    }

    /// How many decode-attention launches merged their key splits in a thread-block
    /// cluster so far (see `set_decode_cluster_max`).
    pub fn cluster_merges(&self) -> u64 {
        self.cluster_merges.load(Ordering::SeqCst)
    }

    /// Which small plain decode steps take `flash_decode_ahead` (0 none, 1 head_dim 64,
    /// 2 also 128), with its late PDL trigger or not (see `decode_ahead`); returns the
    /// previous setting. For tests.
    pub fn set_decode_ahead(&self, ahead: usize, late_trigger: bool) -> (usize, bool) {
        (
            self.decode_ahead.swap(ahead, Ordering::SeqCst),
            self.decode_late_trigger
                .swap(late_trigger, Ordering::SeqCst),
        )
    }

    /// Sets the fewest 64-key tiles per key split of the decode attention (at least 1);
    /// returns the previous value. For tests.
    pub fn set_decode_split_tiles(&self, tiles: usize) -> usize {
        self.decode_split_tiles.swap(tiles.max(1), Ordering::SeqCst)
    }

    /// Sets the ring depth of `flash_decode_warp` (2, 3 or 4 tiles; 0 turns it off) and
    /// whether it takes every eligible step (`always`) or only those with more items than
    /// the block kernel fits in one wave; returns the previous setting. For tests and
    /// tuning.
    pub fn set_decode_warp(&self, stages: usize, always: bool) -> (usize, bool) {
        (
            self.decode_warp.swap(stages, Ordering::SeqCst),
            self.decode_warp_always.swap(always, Ordering::SeqCst),
        )
    }

    /// Sets the ring depth of `flash_decode_warp` over an FP8 cache (4, 6 or 8 tiles; 1
    /// chooses 6 or 4 per step, the default; 0 turns it off); returns the previous one. For
    /// tests and tuning.
    pub fn set_decode_warp_fp8(&self, stages: usize) -> usize {
        self.decode_warp_fp8.swap(stages, Ordering::SeqCst)
    }

    /// How many decode-attention launches took `flash_decode_warp` so far.
    pub fn warp_decodes(&self) -> u64 {
        self.warp_decodes.load(Ordering::SeqCst)
    }

    /// `flash_decode_warp` for head dim `hd` and cache `kind` at the configured ring depth,
    /// for a step of `items` (sequence, KV head) pairs (None: off, or a cache, head dim or
    /// depth the module has no instance of).
    fn decode_warp_kernel(&self, hd: usize, kind: KvKind, items: usize) -> Option<sys::CUfunction> {
        let k = &self.kernels;
        let instance = |depth| {
            Some(match (kind, hd, depth) {
                (KvKind::Bf16, 64, 2) => k.flash_decode_warp2_bf16_d64,
                (KvKind::Bf16, 128, 2) => k.flash_decode_warp2_bf16_d128,
                (KvKind::Bf16, 64, 3) => k.flash_decode_warp3_bf16_d64,
                (KvKind::Bf16, 128, 3) => k.flash_decode_warp3_bf16_d128,
                (KvKind::Bf16, 64, 4) => k.flash_decode_warp4_bf16_d64,
                (KvKind::Bf16, 128, 4) => k.flash_decode_warp4_bf16_d128,
                (KvKind::Fp8, 64, 4) => k.flash_decode_warp4_fp8_d64,
                (KvKind::Fp8, 128, 4) => k.flash_decode_warp4_fp8_d128,
                (KvKind::Fp8, 64, 6) => k.flash_decode_warp6_fp8_d64,
                (KvKind::Fp8, 128, 6) => k.flash_decode_warp6_fp8_d128,
                (KvKind::Fp8, 64, 8) => k.flash_decode_warp8_fp8_d64,
                (KvKind::Fp8, 128, 8) => k.flash_decode_warp8_fp8_d128,
                _ => return None,
            })
        };
        match kind {
            KvKind::Bf16 => instance(self.decode_warp.load(Ordering::SeqCst)),
            KvKind::Fp8 => match self.decode_warp_fp8.load(Ordering::SeqCst) {
                DECODE_WARP_FP8_AUTO => {
                    let six = instance(6)?;
                    // (A driver that does not answer gives 0: depth 4, also correct.)
                    if items <= self.resident_blocks(six, 32) {
                        Some(six)
                    } else {
                        instance(4)
                    }
                }
                depth => instance(depth),
            },
            KvKind::F32 => None,
        }
    }

    /// How many blocks of `block` threads of `f` (no dynamic shared memory) fit on the
    /// device at once (0 if the driver does not answer); asked once per kernel.
    fn resident_blocks(&self, f: sys::CUfunction, block: u32) -> usize {
        // (Cached beside the cluster counts, under cluster size 0.)
        self.occupancy_once((f as usize, 0, block), || {
            let mut per_sm: std::ffi::c_int = 0;
            // SAFETY: `f` is a kernel of our module; plain out-parameter.
            let ok = unsafe {
                sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut per_sm, f, block as i32, 0)
            }
            .result()
            .is_ok();
            let n = if ok {
                per_sm.max(0) as usize * self.sm_count as usize
            } else {
                0
            };
            tracing::debug!("at most {n} blocks of {block} threads resident (kernel {f:?})");
            n
        })
    }

    /// The occupancy answer cached under `key` in `active_clusters`, or `ask()`'s, cached.
    fn occupancy_once(&self, key: (usize, u32, u32), ask: impl FnOnce() -> usize) -> usize {
        let known = self
            .active_clusters
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied());
        if let Some(n) = known {
            return n;
        }
        let n = ask();
        if let Ok(mut m) = self.active_clusters.lock() {
            m.insert(key, n);
        }
        n
    }

    /// How many decode-attention launches took `flash_decode_ahead` so far (see
    /// `decode_ahead`).
    pub fn ahead_decodes(&self) -> u64 {
        self.ahead_decodes.load(Ordering::SeqCst)
    }

    /// How many batch-1 GEMVs staged their first weight chunks in shared memory so far
    /// (after a `memory_idle` kernel; see `gemv_stage`).
    pub fn staged_gemvs(&self) -> u64 {
        self.staged_gemvs.load(Ordering::SeqCst)
    }

    /// Whether kernels are launched with programmatic dependent launch (sm_90+, unless
    /// `SLUICE_PDL=0`).
    pub fn pdl_enabled(&self) -> bool {
        self.pdl
    }

    /// How many GEMM inputs came from a staged bf16 copy instead of a conversion (see
    /// ops.rs, "staged activations").
    pub fn staged_gemm_inputs(&self) -> u64 {
        self.staged_uses.load(Ordering::SeqCst)
    }

    pub fn weight_type(&self) -> CudaWeightType {
        self.weight_type
    }

    /// KV cache element type: f32 next to exact f32 weights, else bf16.
    pub fn kv_dtype(&self) -> DType {
        if self.weight_type == CudaWeightType::F32 {
            DType::F32
        } else {
            DType::BF16
        }
    }

    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(derr)
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        drv::mem_get_info().map_err(derr)
    }

    pub(crate) fn alloc(&self, len: usize) -> Result<CudaBuffer> {
        self.bind()?;
        // Rounded up to 256 bytes, so that a kernel may read a whole aligned word that
        // ends past the last byte (the quantized mma copies a Q8_0 weight's f16 scales as
        // aligned 4-byte words; with an odd number of scales the last word ends 2 bytes
        // past the data).
        // SAFETY: plain device allocation in the bound context.
        let ptr = unsafe { drv::malloc_sync(len.max(1).next_multiple_of(256)) }.map_err(|e| {
            let free = drv::mem_get_info().map(|m| m.0).unwrap_or(0);
            BackendError::Device(format!(
                "CUDA out of memory allocating {len} bytes ({free} bytes free): {e:?}"
            ))
        })?;
        Ok(CudaBuffer {
            ptr,
            len,
            ctx: Arc::clone(&self.ctx),
        })
    }

    /// A zeroed device tensor.
    pub fn zeros(&self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let n = crate::tensor::byte_len(dtype, shape)?;
        let buf = self.alloc(n)?;
        // SAFETY: the range lies inside the fresh allocation.
        unsafe { drv::memset_d8_async(buf.ptr, 0, n.max(1), self.stream) }.map_err(derr)?;
        Tensor::from_storage(dtype, shape, Storage::Cuda(buf))
    }

    /// Copies host bytes into a new device tensor of the same dtype and shape.
    pub fn upload(&self, host: &Tensor) -> Result<Tensor> {
        if host.dtype() == DType::F8E4M3 {
            // Its scale is not in the host bytes (see fp8.rs): prepare_weight makes them.
            return Err(BackendError::Unsupported {
                op: "CUDA upload (FP8 weights come from prepare_weight)",
                dtype: DType::F8E4M3,
            });
        }
        let bytes = host.cpu_bytes()?;
        let buf = self.alloc(bytes.len())?;
        if !bytes.is_empty() {
            // On our stream, not the legacy default stream: a synchronous cuMemcpyHtoD
            // from pageable memory returns once the bytes are staged, before the DMA
            // lands, and our non-blocking stream does not wait for the legacy stream, so
            // a kernel queued next could read the buffer early (seen on an H200: the
            // last row of an uploaded matrix still held the old bytes).
            // SAFETY: sizes match; the synchronize below outlives the use of `bytes`.
            unsafe { drv::memcpy_htod_async(buf.ptr, bytes, self.stream) }.map_err(derr)?;
            self.synchronize()?;
        }
        Tensor::from_storage(host.dtype(), host.shape(), Storage::Cuda(buf))
    }

    /// Moves a weight to the GPU: 1-D tensors (norms, biases) as they are; matrices in
    /// the backend's weight type, dequantizing (or quantizing, for Q8_0) on the host.
    pub fn prepare_weight(&self, host: Tensor) -> Result<Tensor> {
        if host.shape().len() <= 1 || host.dtype() == DType::I32 {
            return self.upload(&host);
        }
        let target = self.weight_type.resolve(host.dtype(), host.cols());
        if target == DType::F8E4M3 {
            return self.prepare_fp8(&[host]);
        }
        self.upload_weight(self.to_weight_type(host, target)?)
    }

    /// A table read by rows (token embeddings): never Q8_0, FP8, K-quants, Q4_0 or Q4_1,
    /// which only the matmuls read.
    pub fn prepare_weight_rows(&self, host: Tensor) -> Result<Tensor> {
        if host.shape().len() <= 1 {
            return self.upload(&host);
        }
        let target = match self.weight_type.resolve(host.dtype(), host.cols()) {
            DType::Q8_0 | DType::F8E4M3 | DType::Q4_K | DType::Q6_K => DType::BF16,
            DType::Q4_0 | DType::Q4_1 => DType::BF16,
            t => t,
        };
        self.upload_weight(self.to_weight_type(host, target)?)
    }

    /// The host matrix in `target`'s file layout (converted only when it differs).
    pub(crate) fn to_weight_type(&self, host: Tensor, target: DType) -> Result<Tensor> {
        if host.dtype() == target {
            Ok(host)
        } else {
            convert_host(&host, target)
        }
    }

    /// Uploads a host matrix already in its GPU type. Q8_0 is repacked on the way: all
    /// rows' int8 quants first (`[M, K]`, 16-byte aligned rows for the GEMV's loads), then
    /// all f16 scales (`[M, K / 32]`): the same bytes as GGUF's 34-byte blocks, which
    /// are not 16-byte aligned.
    pub(crate) fn upload_weight(&self, host: Tensor) -> Result<Tensor> {
        if kquant::is_kquant(host.dtype()) {
            return self.upload_kquant(&host); // repacked too: see kquant.rs
        }
        if legacy_quant::is_legacy_quant(host.dtype()) {
            return self.upload_legacy_quant(&host); // and so: see legacy_quant.rs
        }
        if host.dtype() != DType::Q8_0 {
            return self.upload(&host);
        }
        let (m, k) = (host.rows(), host.cols());
        let src = host.cpu_bytes()?;
        let mut split = vec![0u8; src.len()];
        let (qs, sc) = split.split_at_mut(m * k);
        for (b, block) in src.chunks_exact(34).enumerate() {
            sc[2 * b..2 * b + 2].copy_from_slice(&block[..2]);
            qs[32 * b..32 * b + 32].copy_from_slice(&block[2..]);
        }
        let packed = Tensor::from_bytes_cpu(DType::Q8_0, &[m, k], &split)?;
        self.upload(&packed)
    }

    /// Runs `f` on the pinned staging (pinned.rs), allocated on first use.
    fn with_pinned<R>(&self, f: impl FnOnce(&mut pinned::PinnedStaging) -> R) -> Result<R> {
        let mut guard = self
            .pinned
            .lock()
            .map_err(|_| BackendError::Device("pinned staging lock poisoned".into()))?;
        if guard.is_none() {
            *guard =
                Some(pinned::PinnedStaging::new(&self.ctx, pinned::PINNED_BYTES).map_err(derr)?);
        }
        match guard.as_mut() {
            Some(p) => Ok(f(p)),
            None => Err(BackendError::Device("pinned staging not created".into())),
        }
    }

    /// Copies the first `src.len()` elements of an I32 tensor from the host.
    pub fn copy_i32_from_host(&self, dst: &Tensor, src: &[i32]) -> Result<()> {
        let buf = cuda_buf(dst)?;
        if std::mem::size_of_val(src) > buf.len {
            return Err(BackendError::Shape(format!(
                "{} values do not fit in {} bytes",
                src.len(),
                buf.len
            )));
        }
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // Through pinned staging where it has room (not while capturing a graph: a
        // replay would copy from the staging bytes as they are then).
        if self.pinned_uploads && !self.capturing.load(Ordering::SeqCst) {
            let stream = self.stream;
            // SAFETY: the destination range was checked above; the staging region is
            // only reset after a synchronization of this stream (`synchronize`).
            let staged = self.with_pinned(|p| unsafe { p.upload(buf.ptr, src, stream) })?;
            if staged.map_err(derr)? {
                return Ok(());
            }
        }
        // SAFETY: `src` is pageable host memory: the driver stages it before returning,
        // so it may be reused at once; the destination range was checked above.
        unsafe { drv::memcpy_htod_async(buf.ptr, src, self.stream) }.map_err(derr)
    }

    /// Waits for the stream and copies an F32 tensor's logical elements to the host.
    pub fn copy_f32_to_host(&self, src: &Tensor, dst: &mut Vec<f32>) -> Result<()> {
        src.expect_dtype(DType::F32)?;
        self.copy_to_host(src, src.numel(), dst)
    }

    /// Waits for the stream and copies an I32 tensor's logical elements to the host.
    pub fn copy_i32_to_host(&self, src: &Tensor, dst: &mut Vec<i32>) -> Result<()> {
        src.expect_dtype(DType::I32)?;
        self.copy_to_host(src, src.numel(), dst)
    }

    fn copy_to_host<T: Copy + Default>(
        &self,
        src: &Tensor,
        n: usize,
        dst: &mut Vec<T>,
    ) -> Result<()> {
        let buf = cuda_buf(src)?;
        dst.clear();
        dst.resize(n, T::default());
        self.bind()?;
        self.synchronize()?;
        if n > 0 {
            // SAFETY: `dst` holds n elements; the device range holds at least as many.
            unsafe { drv::memcpy_dtoh_sync(dst.as_mut_slice(), buf.ptr) }.map_err(derr)?;
        }
        Ok(())
    }

    /// Copies any device tensor's bytes to a host tensor of the same dtype and shape.
    pub fn download(&self, src: &Tensor) -> Result<Tensor> {
        let mut host = Tensor::zeros_cpu(src.dtype(), src.shape())?;
        let buf = cuda_buf(src)?;
        let bytes = host.cpu_bytes_mut()?;
        self.bind()?;
        self.synchronize()?;
        if !bytes.is_empty() {
            // SAFETY: sizes match the tensor's logical bytes.
            unsafe { drv::memcpy_dtoh_sync(bytes, buf.ptr) }.map_err(derr)?;
        }
        Ok(host)
    }

    /// Queues a copy of `src`'s bytes into `dst` (same dtype, same size).
    pub fn copy_device(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        if src.dtype() == DType::F8E4M3 {
            // The scale behind the codes would not come along (see fp8.rs).
            return Err(BackendError::Unsupported {
                op: "CUDA copy",
                dtype: DType::F8E4M3,
            });
        }
        if src.dtype() != dst.dtype() || src.size_in_bytes() != dst.size_in_bytes() {
            return Err(BackendError::Shape(format!(
                "copy: {:?} {:?} into {:?} {:?}",
                src.dtype(),
                src.shape(),
                dst.dtype(),
                dst.shape()
            )));
        }
        let (s, d) = (cuda_buf(src)?.ptr, cuda_buf(dst)?.ptr);
        self.bind()?;
        // SAFETY: both ranges are live allocations of at least this many bytes.
        unsafe { drv::memcpy_dtod_async(d, s, src.size_in_bytes(), self.stream) }.map_err(derr)
    }

    /// Queues a copy of an I32 tensor's logical elements (and of an F32 tensor's, the
    /// step's log-probability records) to the host behind the work queued so far,
    /// without waiting; `finish_i32_readback` collects it. Two readbacks may be
    /// outstanding (a third waits for the oldest's copy before reusing its memory).
    pub fn start_i32_readback(&self, src: &Tensor, records: Option<&Tensor>) -> Result<u64> {
        src.expect_dtype(DType::I32)?;
        let buf = cuda_buf(src)?;
        let extra = match records {
            Some(r) => {
                r.expect_dtype(DType::F32)?;
                (cuda_buf(r)?.ptr, r.numel())
            }
            None => (0, 0),
        };
        if self.capturing.load(Ordering::SeqCst) {
            return Err(BackendError::Device(
                "a readback cannot be queued while a graph is being captured".into(),
            ));
        }
        self.bind()?;
        let mark = self
            .pinned
            .lock()
            .map_err(|_| BackendError::Device("pinned staging lock poisoned".into()))?
            .as_ref()
            .map_or(0, |p| p.mark());
        let mut guard = self
            .readback
            .lock()
            .map_err(|_| BackendError::Device("readback lock poisoned".into()))?;
        if guard.is_none() {
            *guard = Some(readback::Readback::new(&self.ctx).map_err(derr)?);
        }
        let rb = guard
            .as_mut()
            .ok_or_else(|| BackendError::Device("readback not created".into()))?;
        let (ids, n) = (buf.ptr, src.numel());
        let (records, m) = extra;
        let write = |host: sys::CUdeviceptr| -> Result<()> {
            let (ni, mi) = (n as i32, m as i32);
            let mut args = [
                &ids as *const _ as *mut c_void,
                &ni as *const _ as *mut c_void,
                &records as *const _ as *mut c_void,
                &mi as *const _ as *mut c_void,
                &host as *const _ as *mut c_void,
            ];
            self.launch(self.kernels.readback_kernel, (1, 1, 1), 256, &mut args)
        };
        let by_kernel = (self.kernel_readback.load(Ordering::Relaxed)
            && n + m <= i32::MAX as usize)
            .then_some(&write as &dyn Fn(sys::CUdeviceptr) -> Result<()>);
        // SAFETY: the tensors' allocations hold their logical elements; bound above; the
        // kernel writes n + m values.
        unsafe { rb.start(ids, n, extra, self.stream, mark, by_kernel) }
    }

    /// Readbacks written by a kernel (true) or copied; returns the previous setting.
    pub fn set_kernel_readback(&self, on: bool) -> bool {
        self.kernel_readback.swap(on, Ordering::Relaxed)
    }

    /// Waits for readback `ticket` (only for it and the work queued before it, not for
    /// later work) and copies its values into `dst` (and `records`); reports any
    /// asynchronous kernel error.
    pub fn finish_i32_readback(
        &self,
        ticket: u64,
        dst: &mut Vec<i32>,
        records: &mut Vec<f32>,
    ) -> Result<()> {
        self.bind()?;
        let mark = {
            let mut guard = self
                .readback
                .lock()
                .map_err(|_| BackendError::Device("readback lock poisoned".into()))?;
            let rb = guard.as_mut().ok_or_else(|| {
                BackendError::Device(format!("readback {ticket} was never started"))
            })?;
            rb.finish(ticket, dst, records).map_err(|e| match e {
                Some(e) => derr(e),
                None => BackendError::Device(format!(
                    "readback {ticket} is not pending (collected already or overtaken)"
                )),
            })?
        };
        // The uploads queued before the readback have completed: their staging is free.
        if let Some(staging) = self
            .pinned
            .lock()
            .map_err(|_| BackendError::Device("pinned staging lock poisoned".into()))?
            .as_mut()
        {
            staging.release(mark);
        }
        Ok(())
    }

    /// Waits until all queued work is done, and reports any asynchronous kernel error.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: our own stream.
        unsafe { drv::stream::synchronize(self.stream) }.map_err(derr)?;
        // Every copy enqueued so far has completed: the pinned staging is free again.
        if let Some(staging) = self
            .pinned
            .lock()
            .map_err(|_| BackendError::Device("pinned staging lock poisoned".into()))?
            .as_mut()
        {
            staging.reset();
        }
        Ok(())
    }

    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// A 16-bit staging buffer of at least `len` bytes (grown, never shrunk).
    fn scratch_ptr(&self, len: usize) -> Result<sys::CUdeviceptr> {
        self.grow(&self.scratch, len)
    }

    /// The split-K attention partials buffer, at least `len` bytes.
    fn attention_scratch(&self, len: usize) -> Result<sys::CUdeviceptr> {
        self.grow(&self.attention_scratch, len)
    }

    /// Room for a dequantized weight, at least `len` bytes.
    fn weight_scratch(&self, len: usize) -> Result<sys::CUdeviceptr> {
        self.grow(&self.weight_scratch, len)
    }

    /// Staging for `sample`'s parameters, at least `len` bytes.
    fn sample_staging(&self, len: usize) -> Result<sys::CUdeviceptr> {
        self.grow(&self.sample_staging, len)
    }

    /// Staging for `logprobs`' asked rows, at least `len` bytes.
    fn logprob_staging(&self, len: usize) -> Result<sys::CUdeviceptr> {
        self.grow(&self.logprob_staging, len)
    }

    fn grow(&self, slot: &Mutex<Option<CudaBuffer>>, len: usize) -> Result<sys::CUdeviceptr> {
        let mut guard = slot
            .lock()
            .map_err(|_| BackendError::Device("scratch lock poisoned".into()))?;
        if guard.as_ref().is_none_or(|b| b.len < len) {
            if self.capturing.load(Ordering::SeqCst) {
                return Err(BackendError::Device(format!(
                    "a scratch buffer must grow to {len} bytes during a CUDA graph capture \
                     (run the step once without capture first)"
                )));
            }
            // Make sure no queued kernel still reads the old buffer before it is freed.
            self.synchronize()?;
            self.clear_staged();
            *guard = Some(self.alloc(len.next_power_of_two())?);
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        Ok(guard.as_ref().map(|b| b.ptr).unwrap_or(0))
    }

    /// How many clusters of `cluster_z` blocks of `block` threads of `f` with `smem` bytes
    /// of dynamic shared memory each can be resident on the device at once (0 if the
    /// driver cannot place one, or does not answer).
    fn max_active_clusters(
        &self,
        f: sys::CUfunction,
        cluster_z: u32,
        block: u32,
        smem: u32,
    ) -> usize {
        self.occupancy_once((f as usize, cluster_z, smem), || {
            let mut attr = cluster_attribute(cluster_z);
            let config = sys::CUlaunchConfig {
                gridDimX: 1,
                gridDimY: 1,
                gridDimZ: cluster_z,
                blockDimX: block,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: smem,
                hStream: self.stream,
                attrs: &mut attr,
                numAttrs: 1,
            };
            let mut n: std::ffi::c_int = 0;
            // SAFETY: `f` is a kernel of our module, `config` and `attr` outlive the call.
            let ok = unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f, &config) }
                .result()
                .is_ok();
            let n = if ok { n.max(0) as usize } else { 0 };
            tracing::debug!("at most {n} clusters of {cluster_z} blocks resident (kernel {f:?})");
            n
        })
    }

    /// Launches `f` with the given arguments (each a pointer to the argument's value).
    fn launch(
        &self,
        f: sys::CUfunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.launch_clustered(f, grid, block, args, 1)
    }

    /// `launch`, with the blocks grouped into thread-block clusters of `cluster_z`
    /// consecutive blocks along z (sm_90; 1: no clusters). The grid's z must be a
    /// multiple of it.
    fn launch_clustered(
        &self,
        f: sys::CUfunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &mut [*mut c_void],
        cluster_z: u32,
    ) -> Result<()> {
        self.launch_with(f, grid, block, args, cluster_z, 0)
    }

    /// `launch_clustered` with `smem` bytes of dynamic shared memory.
    fn launch_with(
        &self,
        f: sys::CUfunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &mut [*mut c_void],
        cluster_z: u32,
        smem: u32,
    ) -> Result<()> {
        // Whatever this kernel writes, a staged bf16 copy no longer describes the latest
        // output; a producer sets it again after its launch. Likewise `memory_idle`.
        self.clear_staged();
        self.memory_idle.store(false, Ordering::SeqCst);
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        if !self.pdl && cluster_z <= 1 {
            // SAFETY: `f` comes from our loaded module, the argument list matches the
            // kernel signature (each launcher passes pointers to locals that outlive the
            // call), and cuLaunchKernel copies the values before returning.
            return unsafe { drv::launch_kernel(f, grid, (block, 1, 1), smem, self.stream, args) }
                .map_err(derr);
        }
        // Programmatic dependent launch: the kernel may start while the previous one in
        // the stream finishes; every kernel waits for it in `pdl_entry()` before touching
        // shared buffers (kernels/common.cuh). Stream capture records the programmatic
        // edge, so graph replays keep the overlap.
        // SAFETY: a plain C struct (id, padding, a union of plain values): all-zero is a
        // valid value; PDL sets its field below, and a cluster size replaces an entry.
        let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let mut n = 0;
        if self.pdl {
            attrs[n].id =
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attrs[n].value.programmaticStreamSerializationAllowed = 1;
            n += 1;
        }
        if cluster_z > 1 {
            attrs[n] = cluster_attribute(cluster_z);
            n += 1;
        }
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream,
            attrs: attrs.as_mut_ptr(),
            numAttrs: n as u32,
        };
        // SAFETY: as for cuLaunchKernel above; `config` and `attr` outlive the call,
        // which copies them.
        unsafe { sys::cuLaunchKernelEx(&config, f, args.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(derr)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: created in `new`, destroyed once.
            unsafe {
                let _ = drv::stream::synchronize(self.stream);
                let _ = drv::stream::destroy(self.stream);
            }
        }
    }
}

/// The launch attribute that groups `z` consecutive blocks along z into one cluster.
fn cluster_attribute(z: u32) -> sys::CUlaunchAttribute {
    // SAFETY: a plain C struct (id, padding, a union of plain values): all-zero is a valid
    // value, and the fields a cluster dimension needs are set below.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim.x = 1;
    attr.value.clusterDim.y = 1;
    attr.value.clusterDim.z = z;
    attr
}

pub(crate) fn cuda_buf(t: &Tensor) -> Result<&CudaBuffer> {
    match t.storage() {
        Storage::Cuda(b) => Ok(b),
        _ => Err(BackendError::Device(
            "a CPU tensor was passed to a CUDA op (load it with the CUDA device)".into(),
        )),
    }
}

/// Converts a host tensor of any dtype to F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K or Q6_K
/// on the host, row by row on all cores (an 8B model's weights are 7 G elements).
fn convert_host(host: &Tensor, target: DType) -> Result<Tensor> {
    let (rows, cols) = (host.rows(), host.cols());
    let mut out = Tensor::zeros_cpu(target, host.shape())?;
    let src = host.cpu_bytes()?;
    let src_row = host.dtype().row_bytes(cols);
    let dst_row = target.row_bytes(cols);
    let dst = out.cpu_bytes_mut()?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(rows.max(1));
    let per = rows.div_ceil(threads.max(1)).max(1);
    let dtype = host.dtype();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = dst
            .chunks_mut(per * dst_row)
            .zip(src.chunks(per * src_row))
            .map(|(d, sr)| {
                s.spawn(move || -> Result<()> {
                    let mut tmp = vec![0f32; cols];
                    for (drow, srow) in d.chunks_mut(dst_row).zip(sr.chunks(src_row)) {
                        crate::quant::dequantize_row(dtype, srow, &mut tmp)?;
                        crate::quant::quantize_row(target, &tmp, drow)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BackendError::Device("conversion thread panicked".into()))
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(out)
}
