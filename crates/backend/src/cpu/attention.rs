//! Paged attention on the CPU, FlashAttention-style.
//!
//! Each (query row, head) walks its sequence's block table in tiles of keys and keeps a
//! running max `m`, normaliser `l` and un-normalised output `acc` (online softmax, Milakov
//! & Gimelshein 2018; Dao et al. 2022), so memory stays O(head_dim) whatever the context.
//! A prefill chunk's rows attend to the cached prefix and causally to each other; a decode
//! row is just a chunk of one. Work is split over (row, head) pairs.

use super::ops::SendPtr;
use super::CpuBackend;
use crate::device::{AttentionParams, PagedAttentionMeta};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::Tensor;

/// Keys scored per tile.
const TILE: usize = 32;
/// Largest head dimension the stack accumulators hold.
pub const MAX_HEAD_DIM: usize = 512;

/// Scores one query row of one head against positions `lo..=hi` of a paged cache.
#[allow(clippy::too_many_arguments)]
fn attend_row(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    block_table: &[i32],
    kv_head: usize,
    n_kv: usize,
    block_size: usize,
    lo: usize,
    hi: usize,
    p: &AttentionParams,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let mut acc = [0f32; MAX_HEAD_DIM];
    let acc = &mut acc[..hd];
    let mut m = f32::NEG_INFINITY;
    let mut l = 0f32;
    let mut scores = [0f32; TILE];
    let mut pos = lo;
    while pos <= hi {
        let n = TILE.min(hi + 1 - pos);
        let mut tile_max = f32::NEG_INFINITY;
        for (j, s) in scores[..n].iter_mut().enumerate() {
            let kp = pos + j;
            let block = block_table[kp / block_size] as usize;
            let base = ((block * n_kv + kv_head) * block_size + kp % block_size) * hd;
            let k = &kc[base..base + hd];
            let mut dot = 0f32;
            for (a, b) in q.iter().zip(k) {
                dot += a * b;
            }
            let mut sc = dot * p.scale;
            if let Some(cap) = p.softcap {
                sc = cap * (sc / cap).tanh();
            }
            *s = sc;
            tile_max = tile_max.max(sc);
        }
        let m_new = m.max(tile_max);
        let corr = (m - m_new).exp();
        l *= corr;
        for a in acc.iter_mut() {
            *a *= corr;
        }
        for (j, s) in scores[..n].iter().enumerate() {
            let e = (s - m_new).exp();
            l += e;
            let kp = pos + j;
            let block = block_table[kp / block_size] as usize;
            let base = ((block * n_kv + kv_head) * block_size + kp % block_size) * hd;
            let v = &vc[base..base + hd];
            for (a, b) in acc.iter_mut().zip(v) {
                *a += e * b;
            }
        }
        m = m_new;
        pos += n;
    }
    let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

impl CpuBackend {
    pub fn paged_attention(
        &self,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        meta: &PagedAttentionMeta<'_>,
        p: &AttentionParams,
        out: &mut Tensor,
    ) -> Result<()> {
        if k_cache.dtype() != DType::F32 {
            return Err(BackendError::Unsupported {
                op: "paged_attention",
                dtype: k_cache.dtype(),
            });
        }
        let shape = k_cache.shape();
        let (n_kv, block_size, hd) = (shape[1], shape[2], shape[3]);
        if hd != p.head_dim || n_kv != p.n_kv_heads || block_size != meta.block_size {
            return Err(BackendError::Shape(format!(
                "paged_attention: cache {shape:?} does not match the layer (kv heads {}, head dim {}, block {})",
                p.n_kv_heads, p.head_dim, meta.block_size
            )));
        }
        if hd > MAX_HEAD_DIM || !p.n_heads.is_multiple_of(p.n_kv_heads) {
            return Err(BackendError::Shape(format!(
                "paged_attention: head_dim {hd} / heads {} / kv heads {} unsupported",
                p.n_heads, p.n_kv_heads
            )));
        }
        let qs = q.as_f32()?;
        let (kc, vc) = (k_cache.as_f32()?, v_cache.as_f32()?);
        let starts = meta.query_start.as_i32()?;
        let ctx = meta.context_lens.as_i32()?;
        let tables = meta.block_tables.as_i32()?;
        let s_count = meta.num_seqs;
        if starts.len() < s_count + 1 || ctx.len() < s_count {
            return Err(BackendError::Shape("paged_attention: metadata too short".into()));
        }
        let max_blocks = if s_count == 0 { 0 } else { meta.block_tables.cols() };
        let row = p.n_heads * hd;
        let t_count = starts[s_count] as usize;
        if qs.len() < t_count * row || out.numel() < t_count * row {
            return Err(BackendError::Shape("paged_attention: q/out too small".into()));
        }
        // Validate every sequence once, so the workers can index freely.
        let num_blocks = shape[0];
        for s in 0..s_count {
            let (q0, q1, c) = (starts[s], starts[s + 1], ctx[s]);
            if q0 < 0 || q1 < q0 || c < q1 - q0 || c as usize > max_blocks * block_size {
                return Err(BackendError::Shape(format!(
                    "paged_attention: sequence {s} has rows {q0}..{q1} and context {c}"
                )));
            }
            let used = (c as usize).div_ceil(block_size);
            for &b in &tables[s * max_blocks..s * max_blocks + used] {
                if b < 0 || b as usize >= num_blocks {
                    return Err(BackendError::Shape(format!(
                        "paged_attention: block id {b} outside the pool of {num_blocks}"
                    )));
                }
            }
        }
        let group = p.n_heads / p.n_kv_heads;
        let o = SendPtr(out.as_f32_mut()?.as_mut_ptr());
        self.pool.for_range(t_count * p.n_heads, 1, |tasks| {
            let mut seq = 0usize;
            for task in tasks {
                let (t, h) = (task / p.n_heads, task % p.n_heads);
                while starts[seq + 1] as usize <= t {
                    seq += 1;
                }
                let q_len = (starts[seq + 1] - starts[seq]) as usize;
                let c = ctx[seq] as usize;
                let pos = c - q_len + (t - starts[seq] as usize);
                let lo = match p.sliding_window {
                    Some(w) if pos + 1 > w => pos + 1 - w,
                    _ => 0,
                };
                let table = &tables[seq * max_blocks..(seq + 1) * max_blocks];
                // SAFETY: each (t, h) output slice is written by one task only.
                let dst = unsafe { o.slice_mut(t * row + h * hd, hd) };
                attend_row(
                    &qs[t * row + h * hd..t * row + (h + 1) * hd],
                    kc,
                    vc,
                    table,
                    h / group,
                    n_kv,
                    block_size,
                    lo,
                    pos,
                    p,
                    dst,
                );
            }
        });
        Ok(())
    }
}
