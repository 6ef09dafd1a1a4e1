//! Element-wise and row-wise CPU ops (norms, RoPE, activations, embedding, KV writes).
//!
//! These are memory-light next to the matmuls; plain loops that the compiler vectorises,
//! split over the pool by rows when the tensor is big enough to pay for the wake-up.

use super::CpuBackend;
use crate::device::RopeStyle;
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::quant::{self, fp8};
use crate::tensor::Tensor;

/// Gated activations for the FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

/// Below this many elements an op runs on the calling thread alone.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;

/// A raw pointer that may cross to pool threads; each thread writes disjoint rows.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// # Safety
    /// The caller must ensure `[start, start+len)` lies in the allocation and that no
    /// other thread touches it concurrently.
    pub(crate) unsafe fn slice_mut<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

fn same_len(a: usize, b: usize, what: &str) -> Result<()> {
    if a != b {
        return Err(BackendError::Shape(format!("{what}: {a} vs {b} elements")));
    }
    Ok(())
}

pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut ss = 0f32;
    for v in x {
        ss += v * v;
    }
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

fn rms_norm_row_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let mut ss = 0f32;
    for v in x.iter() {
        ss += v * v;
    }
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for (v, g) in x.iter_mut().zip(w) {
        *v *= inv * g;
    }
}

pub fn gelu_tanh(x: f32) -> f32 {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as in Gemma's `gelu_pytorch_tanh`.
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl CpuBackend {
    /// Runs `f(row_range)` over `rows` rows of `row_len` elements, in parallel if big.
    fn for_rows<F: Fn(std::ops::Range<usize>) + Sync>(&self, rows: usize, row_len: usize, f: F) {
        if rows * row_len < PARALLEL_MIN_ELEMS || rows < 2 {
            if rows > 0 {
                f(0..rows);
            }
        } else {
            self.pool.for_range(rows, 1, f);
        }
    }

    pub fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
        let w = weight.as_f32()?;
        let xs = x.as_f32()?;
        let n = w.len();
        same_len(xs.len(), out.numel(), "rms_norm output")?;
        if n == 0 || xs.len() % n != 0 {
            return Err(BackendError::Shape(format!(
                "rms_norm: {} elements are not rows of {n}",
                xs.len()
            )));
        }
        let o = SendPtr(out.as_f32_mut()?.as_mut_ptr());
        self.for_rows(xs.len() / n, n, |r| {
            for row in r {
                // SAFETY: rows are disjoint and in bounds (checked above).
                let dst = unsafe { o.slice_mut(row * n, n) };
                rms_norm_row(&xs[row * n..(row + 1) * n], w, eps, dst);
            }
        });
        Ok(())
    }

    pub fn rms_norm_inplace(&self, x: &mut Tensor, weight: &Tensor, eps: f32) -> Result<()> {
        let w = weight.as_f32()?;
        let n = w.len();
        let xs = x.as_f32_mut()?;
        if n == 0 || xs.len() % n != 0 {
            return Err(BackendError::Shape(format!(
                "rms_norm: {} elements are not rows of {n}",
                xs.len()
            )));
        }
        let rows = xs.len() / n;
        let p = SendPtr(xs.as_mut_ptr());
        self.for_rows(rows, n, |r| {
            for row in r {
                // SAFETY: disjoint rows within the tensor.
                rms_norm_row_inplace(unsafe { p.slice_mut(row * n, n) }, w, eps);
            }
        });
        Ok(())
    }

    pub fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        let ys = y.as_f32()?;
        let xs = x.as_f32_mut()?;
        same_len(xs.len(), ys.len(), "add")?;
        for (a, b) in xs.iter_mut().zip(ys) {
            *a += b;
        }
        Ok(())
    }

    pub fn add_bias_inplace(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        let b = bias.as_f32()?;
        let xs = x.as_f32_mut()?;
        if b.is_empty() || xs.len() % b.len() != 0 {
            return Err(BackendError::Shape("bias does not divide the rows".into()));
        }
        for row in xs.chunks_exact_mut(b.len()) {
            for (a, c) in row.iter_mut().zip(b) {
                *a += c;
            }
        }
        Ok(())
    }

    pub fn scale_inplace(&self, x: &mut Tensor, s: f32) -> Result<()> {
        for v in x.as_f32_mut()? {
            *v *= s;
        }
        Ok(())
    }

    pub fn softcap_inplace(&self, x: &mut Tensor, cap: f32) -> Result<()> {
        for v in x.as_f32_mut()? {
            *v = cap * (*v / cap).tanh();
        }
        Ok(())
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
        let pos = positions.as_i32()?;
        let (cos, sin) = (cos.as_f32()?, sin.as_f32()?);
        let half = head_dim / 2;
        let row = n_heads * head_dim;
        let xs = x.as_f32_mut()?;
        if xs.len() % row != 0 || xs.len() / row > pos.len() {
            return Err(BackendError::Shape(
                "rope: positions do not match rows".into(),
            ));
        }
        let max_pos = cos.len() / half.max(1);
        for (t, xrow) in xs.chunks_exact_mut(row).enumerate() {
            let p = pos[t];
            if p < 0 || p as usize >= max_pos {
                return Err(BackendError::Shape(format!(
                    "rope: position {p} outside the table of {max_pos}"
                )));
            }
            let c = &cos[p as usize * half..(p as usize + 1) * half];
            let s = &sin[p as usize * half..(p as usize + 1) * half];
            for h in xrow.chunks_exact_mut(head_dim) {
                match style {
                    RopeStyle::Interleaved => {
                        for i in 0..half {
                            let (a, b) = (h[2 * i], h[2 * i + 1]);
                            h[2 * i] = a * c[i] - b * s[i];
                            h[2 * i + 1] = a * s[i] + b * c[i];
                        }
                    }
                    RopeStyle::Neox => {
                        for i in 0..half {
                            let (a, b) = (h[i], h[i + half]);
                            h[i] = a * c[i] - b * s[i];
                            h[i + half] = a * s[i] + b * c[i];
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub fn glu(&self, gate: &Tensor, up: &Tensor, out: &mut Tensor, act: Activation) -> Result<()> {
        let (g, u) = (gate.as_f32()?, up.as_f32()?);
        same_len(g.len(), u.len(), "glu")?;
        same_len(g.len(), out.numel(), "glu output")?;
        let o = SendPtr(out.as_f32_mut()?.as_mut_ptr());
        let n = g.len();
        let chunk = 4096;
        self.for_rows(n.div_ceil(chunk), chunk, |r| {
            let start = r.start * chunk;
            let end = (r.end * chunk).min(n);
            // SAFETY: disjoint chunks within the tensor.
            let dst = unsafe { o.slice_mut(start, end - start) };
            match act {
                Activation::Silu => {
                    for ((d, a), b) in dst.iter_mut().zip(&g[start..end]).zip(&u[start..end]) {
                        *d = silu(*a) * b;
                    }
                }
                Activation::GeluTanh => {
                    for ((d, a), b) in dst.iter_mut().zip(&g[start..end]).zip(&u[start..end]) {
                        *d = gelu_tanh(*a) * b;
                    }
                }
            }
        });
        Ok(())
    }

    /// Fused gate/up rows `[T, 2F]` -> `out[t, j] = act(gu[t, j]) * gu[t, F + j]`.
    pub fn glu_packed(&self, gate_up: &Tensor, out: &mut Tensor, act: Activation) -> Result<()> {
        crate::device::check_glu_packed(gate_up, out)?;
        let f = out.cols();
        let gu = gate_up.as_f32()?;
        let o = out.as_f32_mut()?;
        for (orow, row) in o
            .chunks_exact_mut(f.max(1))
            .zip(gu.chunks_exact(2 * f.max(1)))
        {
            let (g, u) = row.split_at(f);
            for ((d, a), b) in orow.iter_mut().zip(g).zip(u) {
                *d = match act {
                    Activation::Silu => silu(*a) * b,
                    Activation::GeluTanh => gelu_tanh(*a) * b,
                };
            }
        }
        Ok(())
    }

    /// Fused projections `[T, (n_heads + 2 n_kv) * hd]` split into q, k, v, with RoPE on
    /// q and k (the reference for the GPU's one-kernel version).
    #[allow(clippy::too_many_arguments)]
    pub fn split_qkv_rope(
        &self,
        qkv: &Tensor,
        positions: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        dims: crate::device::QkvDims,
        q: &mut Tensor,
        k: &mut Tensor,
        v: &mut Tensor,
    ) -> Result<()> {
        dims.check(qkv, positions, cos, q, k, v)?;
        let (qd, kvd) = (
            dims.n_heads * dims.head_dim,
            dims.n_kv_heads * dims.head_dim,
        );
        let src = qkv.as_f32()?;
        {
            let (qs, ks, vs) = (q.as_f32_mut()?, k.as_f32_mut()?, v.as_f32_mut()?);
            for (r, row) in src.chunks_exact(qd + 2 * kvd).enumerate() {
                qs[r * qd..(r + 1) * qd].copy_from_slice(&row[..qd]);
                ks[r * kvd..(r + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                vs[r * kvd..(r + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
            }
        }
        self.rope_inplace(
            q,
            positions,
            cos,
            sin,
            dims.n_heads,
            dims.head_dim,
            dims.style,
        )?;
        self.rope_inplace(
            k,
            positions,
            cos,
            sin,
            dims.n_kv_heads,
            dims.head_dim,
            dims.style,
        )
    }

    pub fn embedding(
        &self,
        ids: &Tensor,
        table: &Tensor,
        scale: f32,
        out: &mut Tensor,
    ) -> Result<()> {
        let dim = table.cols();
        let vocab = table.rows();
        let row_bytes = table.dtype().row_bytes(dim);
        let bytes = table.cpu_bytes()?;
        let out_rows = out.rows();
        let ids = ids.as_i32()?;
        let o = out.as_f32_mut()?;
        if out_rows > ids.len() || o.len() != out_rows * dim {
            return Err(BackendError::Shape(
                "embedding: output does not match ids".into(),
            ));
        }
        for (t, dst) in o.chunks_exact_mut(dim).enumerate() {
            let id = ids[t];
            if id < 0 || id as usize >= vocab {
                return Err(BackendError::Shape(format!(
                    "token id {id} outside the vocabulary of {vocab}"
                )));
            }
            let src = &bytes[id as usize * row_bytes..(id as usize + 1) * row_bytes];
            quant::dequantize_row(table.dtype(), src, dst)?;
            if scale != 1.0 {
                for v in dst.iter_mut() {
                    *v *= scale;
                }
            }
        }
        Ok(())
    }

    pub fn gather_rows(&self, x: &Tensor, rows: &Tensor, out: &mut Tensor) -> Result<()> {
        let dim = x.cols();
        let xs = x.as_f32()?;
        let idx = rows.as_i32()?;
        let n = out.rows();
        let o = out.as_f32_mut()?;
        if n > idx.len() || o.len() != n * dim {
            return Err(BackendError::Shape(
                "gather_rows: output does not match".into(),
            ));
        }
        for (i, dst) in o.chunks_exact_mut(dim).enumerate() {
            let r = idx[i];
            if r < 0 || (r as usize + 1) * dim > xs.len() {
                return Err(BackendError::Shape(format!(
                    "gather_rows: row {r} out of range"
                )));
            }
            dst.copy_from_slice(&xs[r as usize * dim..(r as usize + 1) * dim]);
        }
        Ok(())
    }

    /// Writes this step's K/V rows into the paged caches, converting to the cache dtype
    /// (F32 copy; F16/BF16 round to nearest even; Q8_0 per-32-element blocks with an
    /// f16 scale, ggml's `quantize_row_q8_0_ref`; F8E4M3 round to nearest even,
    /// saturating to ±448, no scale).
    pub fn kv_write(
        &self,
        k: &Tensor,
        v: &Tensor,
        k_cache: &mut Tensor,
        v_cache: &mut Tensor,
        slot_mapping: &Tensor,
    ) -> Result<()> {
        // Cache layout [num_blocks, n_kv_heads, block_size, head_dim].
        let shape = k_cache.shape().to_vec();
        let dtype = k_cache.dtype();
        if shape.len() != 4 || v_cache.shape() != shape.as_slice() || v_cache.dtype() != dtype {
            return Err(BackendError::Shape(
                "kv_write: caches must be 4-D and alike".into(),
            ));
        }
        if !super::attention::KV_CACHE_DTYPES.contains(&dtype) {
            return Err(BackendError::Unsupported {
                op: "kv_write",
                dtype,
            });
        }
        let (num_blocks, n_kv, block_size, hd) = (shape[0], shape[1], shape[2], shape[3]);
        let slots = slot_mapping.as_i32()?;
        let row = n_kv * hd;
        let (ks, vs) = (k.as_f32()?, v.as_f32()?);
        let t_count = ks.len() / row.max(1);
        if ks.len() != vs.len() || ks.len() != t_count * row || t_count > slots.len() {
            return Err(BackendError::Shape("kv_write: k/v/slots disagree".into()));
        }
        // Bytes of one cache row of `hd` elements (whole Q8_0 blocks: the shape check
        // of the cache tensor guarantees hd % 32 == 0 there).
        let rb = dtype.row_bytes(hd);
        let kc = k_cache.cpu_bytes_mut()?;
        let vc = v_cache.cpu_bytes_mut()?;
        for (t, &slot) in slots.iter().enumerate().take(t_count) {
            if slot < 0 {
                continue;
            }
            let (b, off) = (slot as usize / block_size, slot as usize % block_size);
            if b >= num_blocks {
                return Err(BackendError::Shape(format!(
                    "kv_write: slot {slot} beyond {num_blocks} blocks"
                )));
            }
            for h in 0..n_kv {
                let dst = ((b * n_kv + h) * block_size + off) * rb;
                let src = t * row + h * hd;
                if dtype == DType::F8E4M3 {
                    // Unscaled codes; `quantize_row` refuses F8E4M3, whose weights carry a
                    // per-tensor scale (cuda/fp8.rs).
                    fp8::e4m3_row_from_f32(&ks[src..src + hd], &mut kc[dst..dst + rb]);
                    fp8::e4m3_row_from_f32(&vs[src..src + hd], &mut vc[dst..dst + rb]);
                    continue;
                }
                quant::quantize_row(dtype, &ks[src..src + hd], &mut kc[dst..dst + rb])?;
                quant::quantize_row(dtype, &vs[src..src + hd], &mut vc[dst..dst + rb])?;
            }
        }
        Ok(())
    }
}
