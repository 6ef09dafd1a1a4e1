//! `Device`: one enum, dispatching statically to each backend (candle's pattern).
//!
//! Every op takes device tensors and writes into a caller-provided output, so a forward
//! pass runs on preallocated buffers and allocates nothing after warm-up. Activations are
//! F32 on the CPU; the CUDA backend will use its own activation dtype behind the same ops.

use std::sync::Arc;

use crate::cpu::CpuBackend;
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

/// The element type of activations on a device.
pub const ACTIVATION_DTYPE: DType = DType::F32;

#[derive(Clone)]
pub enum Device {
    Cpu(Arc<CpuBackend>),
}

impl Device {
    /// A CPU device with `threads` worker threads (default: physical cores).
    pub fn cpu(threads: Option<usize>) -> Device {
        Device::Cpu(Arc::new(CpuBackend::new(threads)))
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu(c) => c.describe(),
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu(_))
    }

    /// A zeroed tensor on this device.
    pub fn zeros(&self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        match self {
            Device::Cpu(_) => Tensor::zeros_cpu(dtype, shape),
        }
    }

    /// Moves a host (CPU) weight tensor onto the device, repacking it into the layout
    /// the device's kernels prefer. Mapped CPU tensors stay mapped when no repacking pays.
    pub fn load_weight(&self, host: Tensor) -> Result<Tensor> {
        match self {
            Device::Cpu(c) => c.prepare_weight(host),
        }
    }

    /// Moves a host tensor onto the device in its file layout (no repacking): for
    /// tables read by row, such as token embeddings.
    pub fn load_weight_rows(&self, host: Tensor) -> Result<Tensor> {
        match self {
            Device::Cpu(_) => Ok(host),
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
        }
    }

    /// `out[t, m] = sum_k x[t, k] * w[m, k]`: x F32 `[T, K]`, w any dtype `[M, K]`,
    /// out F32 `[T, M]`.
    pub fn matmul(&self, x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.matmul(x, w, out),
        }
    }

    /// Row-wise RMSNorm over the last `weight.numel()` elements:
    /// `out = x / sqrt(mean(x^2) + eps) * weight`. `x` may hold several heads per row
    /// (`x.numel()` a multiple of `weight.numel()`), as Gemma's QK norm needs.
    pub fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.rms_norm(x, weight, eps, out),
        }
    }

    pub fn rms_norm_inplace(&self, x: &mut Tensor, weight: &Tensor, eps: f32) -> Result<()> {
        match self {
            Device::Cpu(c) => c.rms_norm_inplace(x, weight, eps),
        }
    }

    /// `x += y` (same shape).
    pub fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.add_inplace(x, y),
        }
    }

    /// `x[t, :] += bias` for every row.
    pub fn add_bias_inplace(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.add_bias_inplace(x, bias),
        }
    }

    /// `x *= s`.
    pub fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()> {
        match self {
            Device::Cpu(c) => c.scale_inplace(x, s),
        }
    }

    /// `x = cap * tanh(x / cap)` (Gemma final-logit softcapping).
    pub fn softcap_inplace(&self, x: &mut Tensor, cap: f32) -> Result<()> {
        match self {
            Device::Cpu(c) => c.softcap_inplace(x, cap),
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
        }
    }

    /// `out = silu(gate) * up` (SwiGLU).
    pub fn silu_mul(&self, gate: &Tensor, up: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.glu(gate, up, out, crate::cpu::ops::Activation::Silu),
        }
    }

    /// `out = gelu_tanh(gate) * up` (GeGLU).
    pub fn gelu_mul(&self, gate: &Tensor, up: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.glu(gate, up, out, crate::cpu::ops::Activation::GeluTanh),
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
        }
    }

    /// `out[i, :] = x[rows[i], :]`.
    pub fn gather_rows(&self, x: &Tensor, rows: &Tensor, out: &mut Tensor) -> Result<()> {
        match self {
            Device::Cpu(c) => c.gather_rows(x, rows, out),
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
        }
    }
}
