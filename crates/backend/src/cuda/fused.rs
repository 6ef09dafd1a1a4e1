//! Fused projections on the GPU: Q/K/V and gate/up weights stacked into one matrix each
//! at load time (one GEMV/GEMM instead of three or two: fewer launches, and the small
//! K/V projections no longer run as separate, under-filled kernels), plus the two
//! kernels that take the stacked outputs apart; and the gated FFN with bf16 between its
//! GEMMs (`gated_ffn`).

use std::ffi::c_void;

use super::gemm::GemmOut;
use super::module::KvKind;
use super::{cuda_buf, CudaBackend};
use crate::device::{KvWrite, QkvDims, RopeStyle};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::Tensor;

/// A pointer-to-value for the kernel argument list.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        [$(&$v as *const _ as *mut c_void),*]
    };
}

fn check_f32(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    match ts.iter().find(|t| t.dtype() != DType::F32) {
        Some(t) => Err(BackendError::Unsupported {
            op,
            dtype: t.dtype(),
        }),
        None => Ok(()),
    }
}

/// The device pointers of a KV write (caches `[blocks, n_kv, block_size, hd]` of f32,
/// bf16 or FP8, an i32 slot per token row), checked against the model's dims.
struct KvPtrs {
    k: u64,
    v: u64,
    slots: u64,
    block_size: i32,
    kind: KvKind,
}

impl KvPtrs {
    fn of(op: &'static str, w: &KvWrite<'_>, nkv: usize, hd: usize, t: usize) -> Result<KvPtrs> {
        let s = w.k_cache.shape();
        if s.len() != 4
            || w.v_cache.shape() != s
            || w.k_cache.dtype() != w.v_cache.dtype()
            || s[1] != nkv
            || s[3] != hd
            || w.slots.numel() < t
        {
            return Err(BackendError::Shape(format!(
                "{op}: caches {s:?} for {nkv} KV heads of {hd}, {} slots",
                w.slots.numel()
            )));
        }
        w.slots.expect_dtype(DType::I32)?;
        let kind = KvKind::of("CUDA KV cache", w.k_cache.dtype())?;
        Ok(KvPtrs {
            k: cuda_buf(w.k_cache)?.ptr(),
            v: cuda_buf(w.v_cache)?.ptr(),
            slots: cuda_buf(w.slots)?.ptr(),
            block_size: s[2] as i32,
            kind,
        })
    }
}

impl CudaBackend {
    /// Stacks the rows of host matrices with equal column counts (converted to the
    /// backend's weight type first) and uploads them as one weight.
    pub fn prepare_weights_stacked(&self, parts: Vec<Tensor>) -> Result<Tensor> {
        let cols = parts.first().map(|t| t.cols()).unwrap_or(0);
        if parts.is_empty()
            || parts
                .iter()
                .any(|t| t.shape().len() != 2 || t.cols() != cols)
        {
            return Err(BackendError::Shape(format!(
                "stacked weights need matrices of equal width, got {:?}",
                parts.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>()
            )));
        }
        // One type for all parts: the widest of their own (Q4_K_M mixes Q4_K and Q6_K).
        let types: Vec<DType> = parts
            .iter()
            .map(|p| self.weight_type().resolve(p.dtype(), cols))
            .collect();
        let target = super::kquant::stacked_type(&types).unwrap_or(DType::BF16);
        if target == DType::F8E4M3 {
            // One scale for the stacked matrix: its parts are quantized together.
            return self.prepare_fp8(&parts);
        }
        let rows: usize = parts.iter().map(|t| t.rows()).sum();
        let mut bytes = Vec::with_capacity(rows * target.row_bytes(cols));
        for p in parts {
            bytes.extend_from_slice(self.to_weight_type(p, target)?.cpu_bytes()?);
        }
        let host = Tensor::from_bytes_cpu(target, &[rows, cols], &bytes)?;
        self.upload_weight(host)
    }

    pub fn glu_packed(&self, gate_up: &Tensor, out: &mut Tensor, silu: bool) -> Result<()> {
        check_f32("glu_packed", &[gate_up, out])?;
        crate::device::check_glu_packed(gate_up, out)?;
        let f = out.cols();
        self.bind()?;
        let (pg, po) = (cuda_buf(gate_up)?.ptr(), cuda_buf(out)?.ptr());
        let n = out.numel();
        let (fi, si) = (f as i32, i32::from(silu));
        let t = out.rows();
        if f.is_multiple_of(4) && t > 0 && t <= i32::MAX as usize {
            // Four columns per thread, one grid row per token row (grid-stride past
            // 65,535 rows).
            let ti = t as i32;
            let grid = ((f / 4).div_ceil(256) as u32, t.min(65_535) as u32, 1);
            let staged = self.staging_for(n, t)?;
            self.launch(
                self.kernels.glu_packed4_kernel,
                grid,
                256,
                &mut args![pg, po, ti, fi, si, staged],
            )?;
            self.set_staged(po, n, staged);
            return Ok(());
        }
        let nl = n as i64;
        self.launch_1d(
            self.kernels.glu_packed_kernel,
            n,
            &mut args![pg, po, nl, fi, si],
        )
    }

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
        check_f32("split_qkv_rope", &[cos, sin, q, k, v])?;
        // The projections in f32, or bf16 (a bf16 GEMM output, see `matmul`).
        let bf16_in = match qkv.dtype() {
            DType::F32 => false,
            DType::BF16 => true,
            other => {
                return Err(BackendError::Unsupported {
                    op: "split_qkv_rope input",
                    dtype: other,
                })
            }
        };
        let kern = &self.kernels;
        // Kernels by cache type: f32, bf16, FP8.
        let kernels = if bf16_in {
            [
                kern.split_qkv_rope_bf16in_f32_kernel,
                kern.split_qkv_rope_bf16in_bf16_kernel,
                kern.split_qkv_rope_bf16in_fp8_kernel,
            ]
        } else {
            [
                kern.split_qkv_rope_f32_kernel,
                kern.split_qkv_rope_bf16_kernel,
                kern.split_qkv_rope_fp8_kernel,
            ]
        };
        positions.expect_dtype(DType::I32)?;
        dims.check(qkv, positions, cos, q, k, v)?;
        let (nh, nkv, hd) = (dims.n_heads, dims.n_kv_heads, dims.head_dim);
        let t = qkv.rows();
        // Without caches: the f32 kernel with null cache pointers.
        let (f, kc, vc, slots, bs) = match &kv {
            None => (kernels[0], 0, 0, 0, 0i32),
            Some(w) => {
                let c = KvPtrs::of("split_qkv_rope", w, nkv, hd, t)?;
                (kernels[c.kind as usize], c.k, c.v, c.slots, c.block_size)
            }
        };
        self.bind()?;
        let ptrs = (
            cuda_buf(qkv)?.ptr(),
            cuda_buf(positions)?.ptr(),
            cuda_buf(cos)?.ptr(),
            cuda_buf(sin)?.ptr(),
            cuda_buf(q)?.ptr(),
            cuda_buf(k)?.ptr(),
            cuda_buf(v)?.ptr(),
        );
        let (px, pp, pc, ps, pq, pk, pv) = ptrs;
        let (ti, hi, kvi, di) = (t as i32, nh as i32, nkv as i32, hd as i32);
        let neox = i32::from(dims.style == RopeStyle::Neox);
        self.launch_1d(
            f,
            t * (nh + 2 * nkv) * hd / 2,
            &mut args![px, pp, pc, ps, pq, pk, pv, kc, vc, slots, bs, ti, hi, kvi, di, neox],
        )
    }

    /// Whether `gated_ffn` takes these weights at `rows` token rows: both GEMMs on
    /// cuBLASLt with bf16 inputs (`gemm_epilogues`) and an FFN width that is whole 16-byte
    /// chunks of bf16.
    pub fn fuses_gated_ffn(&self, w_gate_up: &Tensor, w_down: &Tensor, rows: usize) -> bool {
        let f = w_down.cols();
        self.gemm_epilogues(w_gate_up, rows)
            && self.gemm_epilogues(w_down, rows)
            && f.is_multiple_of(8)
            && w_gate_up.rows() == 2 * f
    }

    /// The gated FFN from the normed input into the residual stream:
    /// `x += (act(g) ⊙ u) · w_downᵀ` with `[g | u] = xb · w_gate_upᵀ` (`fuses_gated_ffn`
    /// must hold). The gate/up GEMM writes bf16 into `work` (`[T, 2F]` f32, used as raw
    /// space: its contents afterwards are unspecified), the GLU reads that and writes its
    /// bf16 output after it, which the down GEMM takes, adding into `x` in its epilogue.
    /// Against f32 between the ops (an f32 GEMM output, an f32 GLU output with a bf16
    /// copy), 10 bytes per FFN column of a token go through memory between the GEMMs
    /// instead of 22, and the residual add needs no pass of its own. Numerically: g and u
    /// are rounded to bf16 before the GLU (the GLU output already was, for the GEMM).
    pub fn gated_ffn(
        &self,
        xb: &Tensor,
        w_gate_up: &Tensor,
        w_down: &Tensor,
        work: &mut Tensor,
        x: &mut Tensor,
        silu: bool,
    ) -> Result<()> {
        check_f32("gated_ffn", &[work, x])?;
        if !matches!(xb.dtype(), DType::F32 | DType::BF16) {
            return Err(BackendError::Unsupported {
                op: "gated_ffn input",
                dtype: xb.dtype(),
            });
        }
        let (t, h) = (xb.rows(), xb.cols());
        let f = w_down.cols();
        // The GLU output starts on a 256-byte boundary after g and u (cuBLASLt's
        // heuristic assumes aligned operands).
        let act_at = (t * 2 * f * 2).next_multiple_of(256);
        if !self.fuses_gated_ffn(w_gate_up, w_down, t)
            || w_gate_up.cols() != h
            || w_down.rows() != h
            || x.rows() != t
            || x.cols() != h
            || work.numel() * 4 < act_at + t * f * 2
        {
            return Err(BackendError::Shape(format!(
                "gated_ffn: xb {:?}, w_gate_up {:?} ({}), w_down {:?} ({}), work of {} f32, x {:?}",
                xb.shape(),
                w_gate_up.shape(),
                w_gate_up.dtype(),
                w_down.shape(),
                w_down.dtype(),
                work.numel(),
                x.shape()
            )));
        }
        self.bind()?;
        let pwork = cuda_buf(work)?.ptr();
        let pact = pwork + act_at as u64;
        let xin = match xb.dtype() {
            DType::BF16 => cuda_buf(xb)?.ptr(),
            _ => self.bf16_input(cuda_buf(xb)?.ptr(), t * h)?,
        };
        let (w_gu, w_dn) = (cuda_buf(w_gate_up)?.ptr(), cuda_buf(w_down)?.ptr());
        self.gemm_call(
            DType::BF16,
            xin,
            w_gu,
            (pwork, GemmOut::Bf16),
            (t, 2 * f, h),
        )?;
        let (ti, fi, si) = (t as i32, f as i32, i32::from(silu));
        let grid = ((f / 8).div_ceil(256) as u32, t.min(65_535) as u32, 1);
        self.launch(
            self.kernels.glu_packed_bf16_kernel,
            grid,
            256,
            &mut args![pwork, pact, ti, fi, si],
        )?;
        let down_out = (cuda_buf(x)?.ptr(), GemmOut::F32Accumulate);
        self.gemm_call(DType::BF16, pact, w_dn, down_out, (t, h, f))
    }

    /// Whether the batch-1 GEMVs with a paired epilogue (kernels/gemv_pairs.cu) take `w`
    /// at `rows` token rows: `rms_norm_matmul_glu` for stacked gate/up weights and
    /// `rms_norm_matmul_qkv_rope` for stacked Q/K/V. One row, bf16 weights with rows of
    /// whole 16-byte chunks, where the fused decode GEMVs run (`SLUICE_FUSED_PAIRS=0`
    /// turns only these off, for comparisons).
    pub fn fuses_decode_pairs(&self, w: &Tensor, rows: usize) -> bool {
        self.fused_pairs
            && self.fuses_decode_matmul(w, rows)
            && w.dtype() == DType::BF16
            && w.rows() >= 2
            && w.rows().is_multiple_of(2)
    }

    /// Checks a paired GEMV's input: x `[1, K]` f32, gamma of K f32, `w` `[M, K]`
    /// (`fuses_decode_pairs`).
    fn paired_gemv_operands(
        &self,
        op: &'static str,
        x: &Tensor,
        gamma: &Tensor,
        w: &Tensor,
    ) -> Result<(usize, usize)> {
        check_f32(op, &[x, gamma])?;
        let (m, k) = (w.rows(), w.cols());
        if !self.fuses_decode_pairs(w, 1) {
            return Err(BackendError::Unsupported {
                op,
                dtype: w.dtype(),
            });
        }
        if x.rows() != 1 || x.cols() != k || gamma.numel() != k {
            return Err(BackendError::Shape(format!(
                "{op}: x {:?}, gamma {:?} against w {:?}",
                x.shape(),
                gamma.shape(),
                w.shape()
            )));
        }
        Ok((m, k))
    }

    /// `out = act(g) ⊙ u` with `[g | u] = rms_norm(x) * gamma · w_gate_upᵀ` for one token
    /// row, in one GEMV whose epilogue applies the GLU (SiLU or GELU-tanh), instead of
    /// `rms_norm_matmul` and `glu_packed`. Same arithmetic as those two.
    pub fn rms_norm_matmul_glu(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        eps: f32,
        w_gate_up: &Tensor,
        out: &mut Tensor,
        silu: bool,
    ) -> Result<()> {
        let op = "rms_norm_matmul_glu";
        let (m, k) = self.paired_gemv_operands(op, x, gamma, w_gate_up)?;
        check_f32(op, &[out])?;
        let f = m / 2;
        if out.rows() != 1 || out.cols() != f {
            return Err(BackendError::Shape(format!(
                "{op}: w {:?} into out {:?}",
                w_gate_up.shape(),
                out.shape()
            )));
        }
        self.bind()?;
        let (blocks, wpr) = self.gemv_grid(m, super::ops::GEMV_ROWS_PER_WARP);
        let (px, pw, po, pg) = (
            cuda_buf(x)?.ptr(),
            cuda_buf(w_gate_up)?.ptr(),
            cuda_buf(out)?.ptr(),
            cuda_buf(gamma)?.ptr(),
        );
        let (fi, ki, si) = (f as i32, k as i32, i32::from(silu));
        let prefetch = self.gemv1_prefetch(DType::BF16, m, k);
        let prewait = i32::from(self.gemv_prewait);
        let kern = if self.gemv_bf16_u2 {
            self.kernels.gemv1_glu_bf16_u2
        } else {
            self.kernels.gemv1_glu_bf16
        };
        self.launch(
            kern,
            (blocks, 1, 1),
            super::ops::THREADS,
            &mut args![px, pw, po, fi, ki, wpr, pg, eps, si, prefetch, prewait],
        )
    }

    /// `split_qkv_rope` of one token's stacked projections `rms_norm(x) * gamma · wqkvᵀ`
    /// in one GEMV whose epilogue applies RoPE and writes q, k, v and the caches, instead
    /// of `rms_norm_matmul` and `split_qkv_rope` (same arithmetic).
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
        let op = "rms_norm_matmul_qkv_rope";
        let (m, kdim) = self.paired_gemv_operands(op, x, gamma, wqkv)?;
        check_f32(op, &[cos, sin, q, k, v])?;
        positions.expect_dtype(DType::I32)?;
        dims.check_shape(&[1, m], positions, cos, q, k, v)?;
        let (nh, nkv, hd) = (dims.n_heads, dims.n_kv_heads, dims.head_dim);
        let c = KvPtrs::of(op, &kv, nkv, hd, 1)?;
        self.bind()?;
        let kern = &self.kernels;
        let f = match (c.kind, self.gemv_bf16_u2) {
            (KvKind::F32, false) => kern.gemv1_qkv_rope_bf16_kvf32,
            (KvKind::Bf16, false) => kern.gemv1_qkv_rope_bf16_kvbf16,
            (KvKind::Fp8, false) => kern.gemv1_qkv_rope_bf16_kvfp8,
            (KvKind::F32, true) => kern.gemv1_qkv_rope_bf16_kvf32_u2,
            (KvKind::Bf16, true) => kern.gemv1_qkv_rope_bf16_kvbf16_u2,
            (KvKind::Fp8, true) => kern.gemv1_qkv_rope_bf16_kvfp8_u2,
        };
        let (blocks, wpr) = self.gemv_grid(m, super::ops::GEMV_ROWS_PER_WARP);
        let (px, pw, pg) = (
            cuda_buf(x)?.ptr(),
            cuda_buf(wqkv)?.ptr(),
            cuda_buf(gamma)?.ptr(),
        );
        let (pp, pc, ps) = (
            cuda_buf(positions)?.ptr(),
            cuda_buf(cos)?.ptr(),
            cuda_buf(sin)?.ptr(),
        );
        let (pq, pk, pv) = (cuda_buf(q)?.ptr(), cuda_buf(k)?.ptr(), cuda_buf(v)?.ptr());
        // kernels/gemv_pairs.cu PAIR_ROPE_NEOX / PAIR_ROPE_INTERLEAVED
        let mode: i32 = if dims.style == RopeStyle::Neox { 1 } else { 2 };
        let ki = kdim as i32;
        let prefetch = self.gemv1_prefetch(DType::BF16, m, kdim);
        let prewait = i32::from(self.gemv_prewait);
        let (kc, vc, slots, bs) = (c.k, c.v, c.slots, c.block_size);
        let (nhi, nkvi, hdi) = (nh as i32, nkv as i32, hd as i32);
        self.launch(
            f,
            (blocks, 1, 1),
            super::ops::THREADS,
            &mut args![
                px, pw, ki, wpr, pg, eps, prefetch, mode, pp, pc, ps, pq, pk, pv, kc, vc, slots,
                bs, nhi, nkvi, hdi, prewait
            ],
        )
    }
}
