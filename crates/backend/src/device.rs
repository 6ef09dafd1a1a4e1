//! `Device`: one enum, dispatching statically to each backend (candle's pattern).
//!
//! Every op takes device tensors and writes into a caller-provided output, so a forward
//! pass runs on preallocated buffers and allocates nothing after warm-up. Activations are
//! F32 on the CPU; the CUDA backend will use its own activation dtype behind the same ops.

use std::sync::Arc;

use crate::cpu::CpuBackend;
use crate::cuda::{CudaBackend, CudaWeightType};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::{Storage, Tensor};

/// How RoPE pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate adjacent pairs (2i, 2i+1): llama2.c, and GGUF `llama` files whose Q/K rows
    /// were permuted by the converter.
    Interleaved,
    /// Rotate (i, i + d/2), "rotate_half": Hugging Face Llama/Qwen/Gemma, GGUF gemma/qwen2.
    Neox,
}

/// Metadata of a batch for paged attention. All tensors are I32 on the same device as
/// the caches.
pub struct PagedAttentionMeta<'a> {
    /// `[num_seqs + 1]`: sequence `s` owns query rows `query_start[s]..query_start[s+1]`.
    pub query_start: &'a Tensor,
    /// `[num_seqs]`: tokens in the cache for sequence `s` once this step's K/V are
    /// written. Query row `i` of a sequence with `q` new rows sits at position
    /// `context_len - q + i` and attends causally to positions `..=` that.
    pub context_lens: &'a Tensor,
    /// `[num_seqs, max_blocks_per_seq]`: physical block ids, row-major.
    pub block_tables: &'a Tensor,
    pub num_seqs: usize,
    pub block_size: usize,
    /// Optional attention mask among each sequence's new tokens (tree/lookahead
    /// speculation). An I32 tensor (0 = hidden, anything else = visible; I32 rather than
    /// a byte type so it travels like the other metadata) holding, for every sequence `s`
    /// with `q_s` new rows in this step, a dense row-major `q_s x q_s` matrix; the
    /// matrices of all sequences are concatenated in sequence order (`sum q_s^2`
    /// elements), and a sequence that needs no mask still gets its lower-triangular
    /// causal matrix. Keys at positions before `context_len - q_s` (the cached prefix)
    /// are visible to every new row as usual (the sliding window applies by position);
    /// among the `q_s` new keys, which sit in the cache in row order, row `i` sees key
    /// `j` iff `mask[i][j] != 0`: the mask replaces the causal rule among new tokens
    /// (a row may even see a later row's key). A row that sees no key at all gets zeros.
    /// `None` = causal.
    pub custom_mask: Option<&'a Tensor>,
}

/// Shape and variant of an attention layer.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k (usually 1/sqrt(head_dim)).
    pub scale: f32,
    /// Attend only to the last `w` positions (Mistral, Gemma local layers).
    pub sliding_window: Option<usize>,
    /// `cap * tanh(s / cap)` on scores (Gemma 2).
    pub softcap: Option<f32>,
}

/// Head layout of fused Q/K/V projection rows: `n_heads` query heads, then `n_kv_heads`
/// key heads, then `n_kv_heads` value heads, each `head_dim` wide.
#[derive(Clone, Copy, Debug)]
pub struct QkvDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub style: RopeStyle,
}

impl QkvDims {
    /// Checks the shapes of a `split_qkv_rope` call (every backend's).
    pub(crate) fn check(
        &self,
        qkv: &Tensor,
        positions: &Tensor,
        cos: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<()> {
        self.check_shape(qkv.shape(), positions, cos, q, k, v)
    }

    /// `check` for projections of shape `qkv` (`[T, cols]`), which need not exist as a
    /// tensor (a fused GEMV's output).
    pub(crate) fn check_shape(
        &self,
        qkv: &[usize],
        positions: &Tensor,
        cos: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<()> {
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let (t, cols) = match qkv {
            [t, c] => (*t, *c),
            _ => (0, 0),
        };
        let ok = qkv.len() == 2
            && cols == (nh + 2 * nkv) * hd
            && [q.rows(), k.rows(), v.rows()].iter().all(|&r| r == t)
            && q.cols() == nh * hd
            && k.cols() == nkv * hd
            && v.cols() == nkv * hd
            && positions.numel() >= t
            && cos.cols() * 2 == hd
            && hd.is_multiple_of(2);
        if ok {
            return Ok(());
        }
        Err(BackendError::Shape(format!(
            "split_qkv_rope: qkv {qkv:?} ({nh} + 2x{nkv} heads of {hd}) into q {:?} k {:?} v {:?}, \
             {} positions, table {:?}",
            q.shape(),
            k.shape(),
            v.shape(),
            positions.numel(),
            cos.shape()
        )))
    }
}

/// Checks the shapes of a `glu_packed` call: `[T, 2F]` into `[T, F]`.
pub(crate) fn check_glu_packed(gate_up: &Tensor, out: &Tensor) -> Result<()> {
    if gate_up.cols() != 2 * out.cols() || gate_up.rows() != out.rows() {
        return Err(BackendError::Shape(format!(
            "glu_packed: {:?} into {:?}",
            gate_up.shape(),
            out.shape()
        )));
    }
    Ok(())
}

/// Paged KV caches and the step's slots, for ops that write K/V as they go.
pub struct KvWrite<'a> {
    /// `[num_blocks, n_kv_heads, block_size, head_dim]`
    pub k_cache: &'a mut Tensor,
    pub v_cache: &'a mut Tensor,
    /// `[T]` slot of each row (negative = skip)
    pub slots: &'a Tensor,
}

/// Sampled ids on their way to the host (`Device::start_ids_readback`).
#[derive(Debug)]
pub struct IdsReadback(ReadbackState);

#[derive(Debug)]
enum ReadbackState {
    /// Copied already (the CPU): ids and log-probability records.
    Ready(Vec<i32>, Vec<f32>),
    /// The CUDA backend's ticket.
    Cuda(u64),
}

/// A recorded sequence of device work (a CUDA graph), replayed by `Device::launch_graph`.
pub enum DeviceGraph {
    Cuda(crate::cuda::CudaGraph),
}

/// The element type of activations on a device.
pub const ACTIVATION_DTYPE: DType = DType::F32;

/// The KV cache dtypes the CUDA backend's `kv_write` and attention kernels handle: f32,
/// bf16 (its default) and F8E4M3 (FP8 codes with no scale, as on the CPU). The CPU reads
/// more (`cpu::attention::KV_CACHE_DTYPES`); F16 and Q8_0 caches are CPU-only for now.
pub const CUDA_KV_CACHE_DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F8E4M3];

#[derive(Clone)]
pub enum Device {
    Cpu(Arc<CpuBackend>),
    Cuda(Arc<CudaBackend>),
}

impl Device {
    /// A CPU device with `threads` worker threads (default: physical cores).
    pub fn cpu(threads: Option<usize>) -> Device {
        Device::Cpu(Arc::new(CpuBackend::new(threads)))
    }

    /// GPU `ordinal` through CUDA; a clear error when there is no driver or device.
    pub fn cuda(ordinal: usize, weight_type: CudaWeightType) -> Result<Device> {
        Ok(Device::Cuda(Arc::new(CudaBackend::new(
            ordinal,
            weight_type,
        )?)))
    }

    /// Parses `cpu`, `cuda` or `cuda:N`.
    pub fn parse(
        spec: &str,
        threads: Option<usize>,
        weight_type: CudaWeightType,
    ) -> Result<Device> {
        let s = spec.trim().to_ascii_lowercase();
        if s == "cpu" {
            return Ok(Device::cpu(threads));
        }
        let ordinal = match s.strip_prefix("cuda") {
            Some("") => 0,
            Some(rest) => rest
                .strip_prefix(':')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    BackendError::Device(format!("bad device `{spec}`: use cpu, cuda or cuda:N"))
                })?,
            None => {
                return Err(BackendError::Device(format!(
                    "unknown device `{spec}`: use cpu, cuda or cuda:N"
                )))
            }
        };
        Device::cuda(ordinal, weight_type)
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu(c) => c.describe(),
            Device::Cuda(g) => g.describe(),
        }
    }

    /// The KV cache element type this device uses by default.
    pub fn default_kv_dtype(&self) -> DType {
        match self {
            Device::Cpu(_) => DType::F32,
            Device::Cuda(g) => g.kv_dtype(),
        }
    }

    /// Whether this device's attention reads a KV cache of `dtype` (the CPU reads every
    /// type `--kv-cache-dtype` offers, `cpu::attention::KV_CACHE_DTYPES`; the CUDA
    /// kernels read f32, bf16 and fp8 (E4M3, unscaled): [`CUDA_KV_CACHE_DTYPES`]).
    pub fn supports_kv_dtype(&self, dtype: DType) -> bool {
        match self {
            Device::Cpu(_) => true,
            Device::Cuda(_) => CUDA_KV_CACHE_DTYPES.contains(&dtype),
        }
    }

    /// Waits for queued device work (a no-op on the CPU, whose ops are synchronous).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu(_) => Ok(()),
            Device::Cuda(g) => g.synchronize(),
        }
    }

    /// Copies `src` into `dst` on this device (same dtype and byte size); queued on the
    /// GPU, immediate on the CPU.
    pub fn copy(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(_) => {
                let what = format!(
                    "copy: {:?} {:?} into {:?} {:?}",
                    src.dtype(),
                    src.shape(),
                    dst.dtype(),
                    dst.shape()
                );
                let same_dtype = src.dtype() == dst.dtype();
                let from = src.cpu_bytes()?;
                let to = dst.cpu_bytes_mut()?;
                if !same_dtype || from.len() != to.len() {
                    return Err(BackendError::Shape(what));
                }
                to.copy_from_slice(from);
                Ok(())
            }
            Device::Cuda(g) => g.copy_device(src, dst),
        }
    }

    /// Copies a host tensor to the device as it is (same dtype and layout).
    pub fn upload(&self, host: &Tensor) -> Result<Tensor> {
        match self {
            Device::Cpu(_) => host.duplicate(),
            Device::Cuda(g) => g.upload(host),
        }
    }

    /// Copies a device tensor to a host (CPU) tensor.
    pub fn download(&self, t: &Tensor) -> Result<Tensor> {
        match self {
            Device::Cpu(_) => t.duplicate(),
            Device::Cuda(g) => g.download(t),
        }
    }

    /// Greedy token ids: `out[r] = argmax(logits[r, :])` (first maximum), I32.
    pub fn argmax(&self, logits: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(_) => {
                let v = logits.cols().max(1);
                let rows = logits.rows();
                let l = logits.as_f32()?;
                let o = out.as_i32_mut()?;
                if o.len() < rows {
                    return Err(BackendError::Shape(format!(
                        "argmax: {rows} rows into {}",
                        o.len()
                    )));
                }
                for (r, row) in l.chunks(v).take(rows).enumerate() {
                    let mut best = 0usize;
                    let mut bv = f32::NEG_INFINITY;
                    for (i, &x) in row.iter().enumerate() {
                        if x > bv {
                            bv = x;
                            best = i;
                        }
                    }
                    o[r] = best as i32;
                }
                Ok(())
            }
            Device::Cuda(g) => g.argmax(logits, out),
        }
    }

    /// Copies an I32 device tensor to the host.
    pub fn copy_i32_to_host(&self, src: &Tensor, dst: &mut Vec<i32>) -> Result<()> {
        match self {
            Device::Cpu(_) => {
                dst.clear();
                dst.extend_from_slice(src.as_i32()?);
                Ok(())
            }
            Device::Cuda(g) => g.copy_i32_to_host(src, dst),
        }
    }

    /// Replaces every negative id `-(r + 1)` in `tokens` by `prev[r]`: the input tokens
    /// of an overlapped step that the step before it sampled on the device (their values
    /// never visit the host first). Error on the CPU, and nothing read, if a row is
    /// outside `prev`.
    pub fn resolve_token_ids(&self, tokens: &mut Tensor, prev: &Tensor) -> Result<()> {
        match self {
            Device::Cpu(_) => {
                let p = prev.as_i32()?;
                let t = tokens.as_i32_mut()?;
                check_token_rows("resolve_token_ids", t, p)?;
                resolve_rows(t, p);
                Ok(())
            }
            Device::Cuda(g) => g.resolve_token_ids(tokens, prev),
        }
    }

    /// Queues a copy of the I32 tensor `ids` (sampled ids), and of the step's
    /// log-probability records if any (`logprobs`), to the host without waiting for the
    /// device; `finish_ids_readback` collects it. On a GPU the wait covers only the work
    /// queued before this call, so a step queued after it keeps running.
    pub fn start_ids_readback(
        &self,
        ids: &Tensor,
        records: Option<&Tensor>,
    ) -> Result<IdsReadback> {
        match self {
            Device::Cpu(_) => {
                let rec = match records {
                    Some(r) => r.as_f32()?.to_vec(),
                    None => Vec::new(),
                };
                Ok(IdsReadback(ReadbackState::Ready(
                    ids.as_i32()?.to_vec(),
                    rec,
                )))
            }
            Device::Cuda(g) => Ok(IdsReadback(ReadbackState::Cuda(
                g.start_i32_readback(ids, records)?,
            ))),
        }
    }

    /// Waits for a readback from `start_ids_readback` and puts its ids into `dst` and
    /// its records into `records` (empty when none were asked for).
    pub fn finish_ids_readback(
        &self,
        r: IdsReadback,
        dst: &mut Vec<i32>,
        records: &mut Vec<f32>,
    ) -> Result<()> {
        match (self, r.0) {
            (_, ReadbackState::Ready(v, rec)) => {
                *dst = v;
                *records = rec;
                Ok(())
            }
            (Device::Cuda(g), ReadbackState::Cuda(ticket)) => {
                g.finish_i32_readback(ticket, dst, records)
            }
            (Device::Cpu(_), ReadbackState::Cuda(_)) => Err(BackendError::Device(
                "a GPU readback was handed to the CPU device".into(),
            )),
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu(_))
    }

    /// A zeroed tensor on this device.
    pub fn zeros(&self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        match self {
            Device::Cpu(_) => Tensor::zeros_cpu(dtype, shape),
            Device::Cuda(g) => g.zeros(dtype, shape),
        }
    }

    /// Moves a host (CPU) weight tensor onto the device, repacking it into the layout
    /// the device's kernels prefer. Mapped CPU tensors stay mapped when no repacking pays.
    pub fn load_weight(&self, host: Tensor) -> Result<Tensor> {
        match self {
            Device::Cpu(c) => c.prepare_weight(host),
            Device::Cuda(g) => g.prepare_weight(host),
        }
    }

    /// Moves a host tensor onto the device in its file layout (no repacking): for
    /// tables read by row, such as token embeddings.
    pub fn load_weight_rows(&self, host: Tensor) -> Result<Tensor> {
        match self {
            Device::Cpu(_) => Ok(host),
            Device::Cuda(g) => g.prepare_weight_rows(host),
        }
    }

    /// Copies i32 values from the host into a device I32 tensor (first `src.len()` elements).
    pub fn copy_i32_from_host(&self, dst: &mut Tensor, src: &[i32]) -> Result<()> {
        match dst.storage() {
            Storage::Cpu(_) => {
                let d = dst.as_i32_mut()?;
                if src.len() > d.len() {
                    return Err(BackendError::Shape(format!(
                        "{} values do not fit in {} slots",
                        src.len(),
                        d.len()
                    )));
                }
                d[..src.len()].copy_from_slice(src);
                Ok(())
            }
            Storage::Cuda(_) => match self {
                Device::Cuda(g) => g.copy_i32_from_host(dst, src),
                Device::Cpu(_) => Err(BackendError::Device("CUDA tensor on a CPU device".into())),
            },
        }
    }

    /// Uploads a step's I32 arrays (`dsts[i][..srcs[i].len()] = srcs[i]`) and then, with
    /// `resolve`, replaces the negative values uploaded into `dsts[0]` as
    /// `resolve_token_ids` does (the CPU checks the rows first and then writes nothing
    /// when one is outside `resolve`; the GPU reads token 0 for it).
    /// On a GPU one kernel does it all (see cuda/upload.rs), not a copy per array.
    pub fn upload_i32_segments(
        &self,
        dsts: &mut [&mut Tensor],
        srcs: &[&[i32]],
        resolve: Option<&Tensor>,
    ) -> Result<()> {
        match self {
            Device::Cuda(g) => g.upload_i32_segments(dsts, srcs, resolve),
            Device::Cpu(_) => {
                check_segment_count(dsts.len(), srcs.len())?;
                if let Some(p) = resolve {
                    let first = srcs.first().copied().unwrap_or(&[]);
                    check_token_rows("upload", first, p.as_i32()?)?;
                }
                for (d, s) in dsts.iter_mut().zip(srcs) {
                    self.copy_i32_from_host(d, s)?;
                }
                if let (Some(p), Some(t), Some(first)) = (resolve, dsts.first_mut(), srcs.first()) {
                    resolve_rows(&mut t.as_i32_mut()?[..first.len()], p.as_i32()?);
                }
                Ok(())
            }
        }
    }

    /// Copies an F32 device tensor to the host.
    pub fn copy_f32_to_host(&self, src: &Tensor, dst: &mut Vec<f32>) -> Result<()> {
        match src.storage() {
            Storage::Cpu(_) => {
                dst.clear();
                dst.extend_from_slice(src.as_f32()?);
                Ok(())
            }
            Storage::Cuda(_) => match self {
                Device::Cuda(g) => g.copy_f32_to_host(src, dst),
                Device::Cpu(_) => Err(BackendError::Device("CUDA tensor on a CPU device".into())),
            },
        }
    }

    /// `out[t, m] = sum_k x[t, k] * w[m, k]`: x F32 `[T, K]`, w any dtype `[M, K]`,
    /// out F32 `[T, M]`.
    pub fn matmul(&self, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.matmul(x, w, out),
            Device::Cuda(g) => g.matmul(x, w, out),
        }
    }

    /// Whether `rms_norm_matmul` and `matmul_accumulate` run for `rows` rows of x
    /// against `w`: on CUDA, one row (a batch-1 decode step) and a weight whose GEMV
    /// folds the norm and the residual add in at a gain (bf16, f16, f32, FP8). The fusions
    /// save the norm kernels between the projections; the CPU has no use for them.
    pub fn fuses_decode_matmul(&self, w: &Tensor, rows: usize) -> bool {
        match self {
            Device::Cpu(_) => false,
            Device::Cuda(g) => g.fuses_decode_matmul(w, rows),
        }
    }

    /// `out = rms_norm(x) * gamma · wᵀ` in one pass (see `fuses_decode_matmul`).
    pub fn rms_norm_matmul(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        eps: f32,
        w: &Tensor,
        out: &mut Tensor,
    ) -> Result<()> {
        match self {
            Device::Cpu(_) => Err(BackendError::Unsupported {
                op: "rms_norm_matmul (a CUDA decode fusion; check fuses_decode_matmul)",
                dtype: w.dtype(),
            }),
            Device::Cuda(g) => g.rms_norm_matmul(x, gamma, eps, w, out),
        }
    }

    /// Whether `rms_norm_matmul_glu` (stacked gate/up weights) and
    /// `rms_norm_matmul_qkv_rope` (stacked Q/K/V) take `w` at `rows` token rows: the
    /// batch-1 GEMVs that apply the GLU or RoPE in their epilogue (CUDA, bf16 weights).
    pub fn fuses_decode_pairs(&self, w: &Tensor, rows: usize) -> bool {
        match self {
            Device::Cpu(_) => false,
            Device::Cuda(g) => g.fuses_decode_pairs(w, rows),
        }
    }

    /// `out = act(g) ⊙ u`, `[g | u] = rms_norm(x) * gamma · w_gate_upᵀ` (SiLU or GELU-tanh)
    /// in one pass, where `fuses_decode_pairs` holds.
    pub fn rms_norm_matmul_glu(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        eps: f32,
        w_gate_up: &Tensor,
        out: &mut Tensor,
        silu: bool,
    ) -> Result<()> {
        match self {
            Device::Cpu(_) => Err(BackendError::Unsupported {
                op: "rms_norm_matmul_glu (a CUDA decode fusion; check fuses_decode_pairs)",
                dtype: w_gate_up.dtype(),
            }),
            Device::Cuda(g) => g.rms_norm_matmul_glu(x, gamma, eps, w_gate_up, out, silu),
        }
    }

    /// `split_qkv_rope` (with the cache write) of `rms_norm(x) * gamma · wqkvᵀ` for one
    /// token row in one pass, where `fuses_decode_pairs` holds.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_matmul_qkv_rope(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        eps: f32,
        wqkv: &Tensor,
        positions: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        dims: QkvDims,
        q: &mut Tensor,
        k: &mut Tensor,
        v: &mut Tensor,
        kv: KvWrite<'_>,
    ) -> Result<()> {
        match self {
            Device::Cpu(_) => Err(BackendError::Unsupported {
                op: "rms_norm_matmul_qkv_rope (a CUDA decode fusion; check fuses_decode_pairs)",
                dtype: wqkv.dtype(),
            }),
            Device::Cuda(g) => g.rms_norm_matmul_qkv_rope(
                x, gamma, eps, wqkv, positions, cos, sin, dims, q, k, v, kv,
            ),
        }
    }

    /// `out += x · wᵀ` in one pass: the residual add in the matmul's epilogue, for one
    /// row where `fuses_decode_matmul` holds and for more where `accumulates_matmul` does.
    pub fn matmul_accumulate(&self, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(_) => Err(BackendError::Unsupported {
                op: "matmul_accumulate (a CUDA fusion; check fuses_decode_matmul or accumulates_matmul)",
                dtype: w.dtype(),
            }),
            Device::Cuda(g) => g.matmul_accumulate(x, w, out),
        }
    }

    /// Whether a matmul of `rows` token rows with `w` runs on a GEMM that takes and writes
    /// bf16 activation tensors (`matmul` with a bf16 `x` or `out`): CUDA, bf16 weights,
    /// more rows than the GEMVs take.
    pub fn gemm_epilogues(&self, w: &Tensor, rows: usize) -> bool {
        match self {
            Device::Cpu(_) => false,
            Device::Cuda(g) => g.gemm_epilogues(w, rows),
        }
    }

    /// Whether `matmul_accumulate` takes `rows` (more than one) token rows against `w`:
    /// on CUDA, a cuBLASLt GEMM with bf16 inputs, whose epilogue adds into the output.
    pub fn accumulates_matmul(&self, w: &Tensor, rows: usize) -> bool {
        match self {
            Device::Cpu(_) => false,
            Device::Cuda(g) => rows > 1 && g.gemm_epilogues(w, rows),
        }
    }

    /// Whether `gated_ffn` takes these stacked gate/up and down weights at `rows` token
    /// rows.
    pub fn fuses_gated_ffn(&self, w_gate_up: &Tensor, w_down: &Tensor, rows: usize) -> bool {
        match self {
            Device::Cpu(_) => false,
            Device::Cuda(g) => rows > 1 && g.fuses_gated_ffn(w_gate_up, w_down, rows),
        }
    }

    /// The gated FFN from the normed input `xb` into the residual stream `x`:
    /// `x += (act(g) ⊙ u) · w_downᵀ`, `[g | u] = xb · w_gate_upᵀ` (SiLU or GELU-tanh), with
    /// bf16 between the GEMMs; `work` (`[T, 2F]` f32) is working space whose contents are
    /// unspecified afterwards. Where `fuses_gated_ffn` holds (CUDA, bf16 weights).
    pub fn gated_ffn(
        &self,
        xb: &Tensor,
        w_gate_up: &Tensor,
        w_down: &Tensor,
        work: &mut Tensor,
        x: &mut Tensor,
        silu: bool,
    ) -> Result<()> {
        match self {
            Device::Cpu(_) => Err(BackendError::Unsupported {
                op: "gated_ffn (a CUDA fusion; check fuses_gated_ffn)",
                dtype: w_gate_up.dtype(),
            }),
            Device::Cuda(g) => g.gated_ffn(xb, w_gate_up, w_down, work, x, silu),
        }
    }

    /// Row-wise RMSNorm over the last `weight.numel()` elements:
    /// `out = x / sqrt(mean(x^2) + eps) * weight`. `x` may hold several heads per row
    /// (`x.numel()` a multiple of `weight.numel()`), as Gemma's QK norm needs.
    pub fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.rms_norm(x, weight, eps, out),
            Device::Cuda(g) => g.rms_norm(x, weight, eps, out),
        }
    }

    /// The residual add and the next norm in one pass: `x += delta`, then
    /// `out = rms_norm(x) * weight`. One kernel on the GPU (x is read once, not twice,
    /// and one launch instead of two per use); the two ops in turn on the CPU.
    pub fn add_rms_norm(
        &self,
        x: &mut Tensor,
        delta: &Tensor,
        weight: &Tensor,
        eps: f32,
        out: &mut Tensor,
    ) -> Result<()> {
        match self {
            Device::Cpu(c) => {
                c.add_inplace(x, delta)?;
                c.rms_norm(x, weight, eps, out)
            }
            Device::Cuda(g) => g.add_rms_norm(x, delta, weight, eps, out),
        }
    }

    pub fn rms_norm_inplace(&self, x: &mut Tensor, weight: &Tensor, eps: f32) -> Result<()> {
        match self {
            Device::Cpu(c) => c.rms_norm_inplace(x, weight, eps),
            Device::Cuda(g) => g.rms_norm_inplace(x, weight, eps),
        }
    }

    /// `x += y` (same shape).
    pub fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.add_inplace(x, y),
            Device::Cuda(g) => g.add_inplace(x, y),
        }
    }

    /// `x[t, :] += bias` for every row.
    pub fn add_bias_inplace(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.add_bias_inplace(x, bias),
            Device::Cuda(g) => g.add_bias_inplace(x, bias),
        }
    }

    /// `x *= s`.
    pub fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()> {
        match self {
            Device::Cpu(c) => c.scale_inplace(x, s),
            Device::Cuda(g) => g.scale_inplace(x, s),
        }
    }

    /// `x = cap * tanh(x / cap)` (Gemma final-logit softcapping).
    pub fn softcap_inplace(&self, x: &mut Tensor, cap: f32) -> Result<()> {
        match self {
            Device::Cpu(c) => c.softcap_inplace(x, cap),
            Device::Cuda(g) => g.softcap_inplace(x, cap),
        }
    }

    /// Rotary embedding in place on `x` `[T, n_heads * head_dim]`, token `t` at
    /// `positions[t]`; `cos`/`sin` are F32 `[max_positions, head_dim / 2]`.
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
        match self {
            Device::Cpu(c) => c.rope_inplace(x, positions, cos, sin, n_heads, head_dim, style),
            Device::Cuda(g) => g.rope_inplace(x, positions, cos, sin, n_heads, head_dim, style),
        }
    }

    /// `out = silu(gate) * up` (SwiGLU).
    pub fn silu_mul(&self, gate: &Tensor, up: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.glu(gate, up, out, crate::cpu::ops::Activation::Silu),
            Device::Cuda(g) => g.glu(gate, up, out, true),
        }
    }

    /// `out = gelu_tanh(gate) * up` (GeGLU).
    pub fn gelu_mul(&self, gate: &Tensor, up: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.glu(gate, up, out, crate::cpu::ops::Activation::GeluTanh),
            Device::Cuda(g) => g.glu(gate, up, out, false),
        }
    }

    /// Fused gate/up rows `[T, 2F]` (gate columns first) -> `out [T, F]` =
    /// `silu(gate) * up` (`silu`) or `gelu_tanh(gate) * up`.
    pub fn glu_packed(&self, gate_up: &Tensor, out: &mut Tensor, silu: bool) -> Result<()> {
        match self {
            Device::Cpu(c) => {
                let act = if silu {
                    crate::cpu::ops::Activation::Silu
                } else {
                    crate::cpu::ops::Activation::GeluTanh
                };
                c.glu_packed(gate_up, out, act)
            }
            Device::Cuda(g) => g.glu_packed(gate_up, out, silu),
        }
    }

    /// Splits fused projections `qkv [T, (n_heads + 2 n_kv_heads) * head_dim]` into
    /// `q`, `k`, `v` and applies RoPE (token `t` at `positions[t]`) to q and k; with
    /// `kv`, also writes k and v into the paged caches (what `kv_write` would do next).
    #[allow(clippy::too_many_arguments)]
    pub fn split_qkv_rope(
        &self,
        qkv: &Tensor,
        positions: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        dims: QkvDims,
        q: &mut Tensor,
        k: &mut Tensor,
        v: &mut Tensor,
        kv: Option<KvWrite<'_>>,
    ) -> Result<()> {
        match self {
            Device::Cpu(c) => {
                c.split_qkv_rope(qkv, positions, cos, sin, dims, q, k, v)?;
                match kv {
                    Some(w) => c.kv_write(k, v, w.k_cache, w.v_cache, w.slots),
                    None => Ok(()),
                }
            }
            Device::Cuda(g) => g.split_qkv_rope(qkv, positions, cos, sin, dims, q, k, v, kv),
        }
    }

    /// Whether the model should stack its Q/K/V and gate/up weights into one matrix
    /// each (`load_weights_stacked`): on a GPU it saves launches and under-filled small
    /// GEMVs; the CPU runs on the file's mapped tensors in place (stacking would copy
    /// them), whose rows may even be of different quant types (Q4_K_M).
    pub fn stacks_projections(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Loads host matrices that share a column count as one weight with their rows
    /// stacked in order (fused Q/K/V or gate/up projections: one matmul instead of
    /// several). On the CPU the parts must share a dtype.
    pub fn load_weights_stacked(&self, parts: Vec<Tensor>) -> Result<Tensor> {
        match self {
            Device::Cpu(c) => {
                let first = parts
                    .first()
                    .ok_or_else(|| BackendError::Shape("no weights to stack".into()))?;
                let (dtype, cols) = (first.dtype(), first.cols());
                if parts
                    .iter()
                    .any(|t| t.dtype() != dtype || t.cols() != cols || t.shape().len() != 2)
                {
                    return Err(BackendError::Shape(
                        "stacked weights need matrices of one dtype and width".into(),
                    ));
                }
                let rows: usize = parts.iter().map(|t| t.rows()).sum();
                let mut bytes = Vec::with_capacity(rows * dtype.row_bytes(cols));
                for p in &parts {
                    bytes.extend_from_slice(p.cpu_bytes()?);
                }
                c.prepare_weight(Tensor::from_bytes_cpu(dtype, &[rows, cols], &bytes)?)
            }
            Device::Cuda(g) => g.prepare_weights_stacked(parts),
        }
    }

    /// Samples one token per row of `logits` `[rows, vocab]` into `out` (I32 `[rows]`):
    /// each row's adjustments are applied to its logits (with the token at its
    /// `pending_token_row` of `tokens`, the step's input tokens, counted once more), then
    /// greedy or temperature / top-k / top-p / min-p and one draw with the row's uniform
    /// (see `sample::sample_row`, the reference); the logits are left raw (the adjusted
    /// values restored) for `logprobs`. On a GPU only the ids need to cross.
    pub fn sample(
        &self,
        logits: &mut Tensor,
        rows: &[crate::SampleParams],
        adjust: &[crate::LogitAdjust],
        tokens: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        let n_tokens = match tokens {
            Some(t) => {
                t.expect_dtype(DType::I32)?;
                t.numel()
            }
            None => 0,
        };
        crate::sample::check(rows, adjust, logits.rows(), n_tokens)?;
        out.expect_dtype(DType::I32)?;
        if out.numel() < rows.len() {
            return Err(BackendError::Shape(format!(
                "sample: {} rows into {} ids",
                rows.len(),
                out.numel()
            )));
        }
        match self {
            Device::Cpu(_) => {
                let vocab = logits.cols();
                let toks = match tokens {
                    Some(t) => t.as_i32()?,
                    None => &[],
                };
                let l = logits.as_f32_mut()?;
                let ids: Vec<i32> = rows
                    .iter()
                    .zip(l.chunks_exact_mut(vocab.max(1)))
                    .map(|(p, row)| {
                        let a = &adjust[p.adjust_start as usize..][..p.adjust_len as usize];
                        let pending = usize::try_from(p.pending_token_row)
                            .ok()
                            .and_then(|r| u32::try_from(toks[r]).ok());
                        crate::sample::sample_row(p, a, pending, row) as i32
                    })
                    .collect();
                out.as_i32_mut()?[..ids.len()].copy_from_slice(&ids);
                Ok(())
            }
            Device::Cuda(g) => g.sample(logits, rows, adjust, tokens, out),
        }
    }

    /// Log-probabilities of the raw logits of the asked rows (`sample::logprob_record`,
    /// the reference): for each ask, `LOGPROB_RECORD` f32 values in `out` (F32, at
    /// least asks × `LOGPROB_RECORD`): the log-probability of the row's sampled id in
    /// `ids`, the log-sum-exp and the `n` most likely tokens. Run after `sample` (which
    /// leaves the logits raw) or `argmax`; on a GPU only these records cross to the
    /// host, not the rows.
    pub fn logprobs(
        &self,
        logits: &Tensor,
        ids: &Tensor,
        asks: &[crate::LogprobAsk],
        out: &mut Tensor,
    ) -> Result<()> {
        logits.expect_dtype(DType::F32)?;
        ids.expect_dtype(DType::I32)?;
        out.expect_dtype(DType::F32)?;
        let (rows, vocab) = (logits.rows(), logits.cols());
        if let Some(a) = asks
            .iter()
            .find(|a| a.row as usize >= rows.min(ids.numel()))
        {
            return Err(BackendError::Shape(format!(
                "logprobs: row {} of {rows} logits rows and {} ids",
                a.row,
                ids.numel()
            )));
        }
        let need = asks.len() * crate::LOGPROB_RECORD;
        if out.numel() < need {
            return Err(BackendError::Shape(format!(
                "logprobs: {} asks into {} values",
                asks.len(),
                out.numel()
            )));
        }
        match self {
            Device::Cpu(_) => {
                let (l, id) = (logits.as_f32()?, ids.as_i32()?);
                let o = out.as_f32_mut()?;
                for (a, rec) in asks.iter().zip(o.chunks_exact_mut(crate::LOGPROB_RECORD)) {
                    let r = a.row as usize;
                    crate::sample::logprob_record(
                        &l[r * vocab..(r + 1) * vocab],
                        id[r],
                        a.n as usize,
                        rec,
                    );
                }
                Ok(())
            }
            Device::Cuda(g) => g.logprobs(logits, ids, asks, out),
        }
    }

    /// Whether this device records and replays step graphs (`begin_capture`).
    pub fn supports_graphs(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Opens or closes the window in which GEMMs planned for new shapes may time their
    /// algorithms (CUDA; nothing on the CPU). The step-graph warm-up opens it.
    pub fn set_gemm_tuning(&self, open: bool) {
        if let Device::Cuda(g) = self {
            g.set_gemm_tuning(open);
        }
    }

    /// Starts recording the device's queue into a graph instead of running it.
    pub fn begin_capture(&self) -> Result<()> {
        match self {
            Device::Cpu(_) => Err(BackendError::Device("graph capture needs a GPU".into())),
            Device::Cuda(g) => g.begin_capture(),
        }
    }

    /// Ends the recording started by `begin_capture` (always, even on error).
    pub fn end_capture(&self) -> Result<DeviceGraph> {
        match self {
            Device::Cpu(_) => Err(BackendError::Device("graph capture needs a GPU".into())),
            Device::Cuda(g) => g.end_capture().map(DeviceGraph::Cuda),
        }
    }

    /// Queues a replay of a recorded graph.
    pub fn launch_graph(&self, graph: &DeviceGraph) -> Result<()> {
        match (self, graph) {
            (Device::Cuda(g), DeviceGraph::Cuda(c)) => g.launch_graph(c),
            _ => Err(BackendError::Device(
                "a graph replayed on another device".into(),
            )),
        }
    }

    /// Changes whenever a device-owned buffer that a graph may hold moves; graphs from
    /// an older epoch must be recorded again.
    pub fn graph_epoch(&self) -> u64 {
        match self {
            Device::Cpu(_) => 0,
            Device::Cuda(g) => g.graph_epoch(),
        }
    }

    /// `out[t, :] = table[ids[t], :] * scale`, dequantizing rows of any dtype.
    pub fn embedding(
        &self,
        ids: &Tensor,
        table: &Tensor,
        scale: f32,
        out: &mut Tensor,
    ) -> Result<()> {
        match self {
            Device::Cpu(c) => c.embedding(ids, table, scale, out),
            Device::Cuda(g) => g.embedding(ids, table, scale, out),
        }
    }

    /// `out[i, :] = x[rows[i], :]`.
    pub fn gather_rows(&self, x: &Tensor, rows: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.gather_rows(x, rows, out),
            Device::Cuda(g) => g.gather_rows(x, rows, out),
        }
    }

    /// Writes this step's keys and values `[T, n_kv_heads * head_dim]` into the paged
    /// caches `[num_blocks, n_kv_heads, block_size, head_dim]` at `slot_mapping[t]`
    /// (slot = block * block_size + offset; negative = skip).
    pub fn kv_write(
        &self,
        k: &Tensor,
        v: &Tensor,
        k_cache: &mut Tensor,
        v_cache: &mut Tensor,
        slot_mapping: &Tensor,
    ) -> Result<()> {
        match self {
            Device::Cpu(c) => c.kv_write(k, v, k_cache, v_cache, slot_mapping),
            Device::Cuda(g) => g.kv_write(k, v, k_cache, v_cache, slot_mapping),
        }
    }

    /// Paged attention for a mixed batch of prefill chunks and decodes:
    /// q `[T, n_heads * head_dim]` -> out `[T, n_heads * head_dim]`.
    pub fn paged_attention(
        &self,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        meta: &PagedAttentionMeta<'_>,
        params: &AttentionParams,
        out: &mut Tensor,
    ) -> Result<()> {
        match self {
            Device::Cpu(c) => c.paged_attention(q, k_cache, v_cache, meta, params, out),
            Device::Cuda(g) => g.paged_attention(q, k_cache, v_cache, meta, params, out),
        }
    }
}

/// Error unless every negative token `-(r + 1)` names a row `r` of the `prev` ids.
fn check_token_rows(op: &str, tokens: &[i32], prev: &[i32]) -> Result<()> {
    match tokens
        .iter()
        .find(|&&v| v < 0 && (-(v as i64) - 1) as usize >= prev.len())
    {
        Some(&bad) => Err(BackendError::Shape(format!(
            "{op}: row {} of {} previous ids",
            -(bad as i64) - 1,
            prev.len()
        ))),
        None => Ok(()),
    }
}

/// Replaces every negative token `-(r + 1)` by `prev[r]` (rows checked by
/// `check_token_rows`).
fn resolve_rows(tokens: &mut [i32], prev: &[i32]) {
    for v in tokens.iter_mut().filter(|v| **v < 0) {
        *v = prev[(-(*v as i64) - 1) as usize];
    }
}

/// `upload_i32_segments` needs one source array per tensor.
pub(crate) fn check_segment_count(tensors: usize, arrays: usize) -> Result<()> {
    if tensors == arrays {
        return Ok(());
    }
    Err(BackendError::Shape(format!(
        "upload: {tensors} tensors for {arrays} arrays"
    )))
}
