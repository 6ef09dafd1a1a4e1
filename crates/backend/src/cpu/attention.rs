//! Paged attention on the CPU, FlashAttention-style.
//!
//! Each task is one (query row, KV head) pair: the `group = n_heads / n_kv_heads` query
//! heads that share a KV head are processed together, so every K and V row is read once
//! per group (GQA/MQA make this the dominant saving). The task walks its sequence's block
//! table in tiles of keys and keeps, per query head, a running max `m`, normaliser `l`
//! and un-normalised output `acc` (online softmax: Milakov & Gimelshein 2018; Dao et al.
//! 2022), so memory stays O(group x head_dim) whatever the context. A prefill chunk's rows
//! attend to the cached prefix and causally to each other; a decode row is a chunk of one.
//!
//! The arithmetic is plain Rust written so that it vectorises (16 independent lanes in
//! the dot products); it is compiled three times, for AVX-512, AVX2+FMA and the baseline,
//! and chosen at run time.

use std::cell::RefCell;

use super::ops::SendPtr;
use super::simd::Isa;
use super::CpuBackend;
use crate::device::{AttentionParams, PagedAttentionMeta};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::Tensor;

/// Keys scored per tile.
const TILE: usize = 32;
/// Largest head dimension supported.
pub const MAX_HEAD_DIM: usize = 512;
/// Dot-product lanes: enough independent accumulators for one AVX-512 register.
const LANES: usize = 16;

thread_local! {
    /// Per-thread scratch: `acc [group * head_dim]` then `scores [group * TILE]`.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let whole = n / LANES * LANES;
    let mut acc = [0f32; LANES];
    for (ca, cb) in a[..whole]
        .chunks_exact(LANES)
        .zip(b[..whole].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in whole..n {
        s += a[i] * b[i];
    }
    s
}

/// The geometry shared by every task of one call.
#[derive(Clone, Copy)]
struct Geometry {
    hd: usize,
    group: usize,
    n_kv: usize,
    block_size: usize,
    scale: f32,
    softcap: Option<f32>,
}

/// Attends `group` query heads (`q`, `[group * hd]`) of one row to positions `lo..=hi`
/// of KV head `kv_head`, writing `out` (`[group * hd]`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_group(
    g: Geometry,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    block_table: &[i32],
    kv_head: usize,
    lo: usize,
    hi: usize,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let (hd, group) = (g.hd, g.group);
    let (acc, rest) = scratch.split_at_mut(group * hd);
    let scores = &mut rest[..group * TILE];
    acc.fill(0.0);
    let mut m = [f32::NEG_INFINITY; 64];
    let mut l = [0f32; 64];
    let row_of = |kp: usize| {
        let block = block_table[kp / g.block_size] as usize;
        ((block * g.n_kv + kv_head) * g.block_size + kp % g.block_size) * hd
    };
    let mut pos = lo;
    while pos <= hi {
        let n = TILE.min(hi + 1 - pos);
        for j in 0..n {
            let base = row_of(pos + j);
            let k = &kc[base..base + hd];
            for h in 0..group {
                let mut s = dot(&q[h * hd..(h + 1) * hd], k) * g.scale;
                if let Some(cap) = g.softcap {
                    s = cap * (s / cap).tanh();
                }
                scores[h * TILE + j] = s;
            }
        }
        for h in 0..group {
            let sc = &mut scores[h * TILE..h * TILE + n];
            let tile_max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m_new = m[h].max(tile_max);
            let corr = (m[h] - m_new).exp();
            l[h] *= corr;
            if corr != 1.0 {
                for a in &mut acc[h * hd..(h + 1) * hd] {
                    *a *= corr;
                }
            }
            for s in sc.iter_mut() {
                *s = (*s - m_new).exp();
                l[h] += *s;
            }
            m[h] = m_new;
        }
        for j in 0..n {
            let base = row_of(pos + j);
            let v = &vc[base..base + hd];
            for h in 0..group {
                let e = scores[h * TILE + j];
                for (a, b) in acc[h * hd..(h + 1) * hd].iter_mut().zip(v) {
                    *a += e * b;
                }
            }
        }
        pos += n;
    }
    for h in 0..group {
        let inv = if l[h] > 0.0 { 1.0 / l[h] } else { 0.0 };
        for (o, a) in out[h * hd..(h + 1) * hd]
            .iter_mut()
            .zip(&acc[h * hd..(h + 1) * hd])
        {
            *o = a * inv;
        }
    }
}

/// One instruction-set variant of the task loop.
macro_rules! attend_variant {
    ($name:ident, $($feat:literal),*) => {
        #[allow(clippy::too_many_arguments)]
        #[cfg(target_arch = "x86_64")]
        #[target_feature($(enable = $feat),*)]
        unsafe fn $name(
            g: Geometry,
            q: &[f32],
            kc: &[f32],
            vc: &[f32],
            block_table: &[i32],
            kv_head: usize,
            lo: usize,
            hi: usize,
            scratch: &mut [f32],
            out: &mut [f32],
        ) {
            attend_group(g, q, kc, vc, block_table, kv_head, lo, hi, scratch, out)
        }
    };
}

attend_variant!(attend_group_avx512, "avx512f", "avx512bw", "avx2", "fma");
attend_variant!(attend_group_avx2, "avx2", "fma");

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
        if shape.len() != 4 || v_cache.shape() != shape {
            return Err(BackendError::Shape(
                "paged_attention: caches must be 4-D and alike".into(),
            ));
        }
        let (n_kv, block_size, hd) = (shape[1], shape[2], shape[3]);
        if hd != p.head_dim || n_kv != p.n_kv_heads || block_size != meta.block_size {
            return Err(BackendError::Shape(format!(
                "paged_attention: cache {shape:?} does not match the layer (kv heads {}, head dim {}, block {})",
                p.n_kv_heads, p.head_dim, meta.block_size
            )));
        }
        if hd > MAX_HEAD_DIM
            || p.n_kv_heads == 0
            || !p.n_heads.is_multiple_of(p.n_kv_heads)
            || p.n_heads / p.n_kv_heads > 64
        {
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
            return Err(BackendError::Shape(
                "paged_attention: metadata too short".into(),
            ));
        }
        let max_blocks = if s_count == 0 {
            0
        } else {
            meta.block_tables.cols()
        };
        let row = p.n_heads * hd;
        let t_count = starts[s_count] as usize;
        if qs.len() < t_count * row || out.numel() < t_count * row {
            return Err(BackendError::Shape(
                "paged_attention: q/out too small".into(),
            ));
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
        let g = Geometry {
            hd,
            group: p.n_heads / p.n_kv_heads,
            n_kv,
            block_size,
            scale: p.scale,
            softcap: p.softcap,
        };
        let isa = Isa::select(&self.features);
        let o = SendPtr(out.as_f32_mut()?.as_mut_ptr());
        let window = p.sliding_window;
        self.pool.for_range(t_count * n_kv, 1, |tasks| {
            SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                let need = g.group * (hd + TILE);
                if scratch.len() < need {
                    scratch.resize(need, 0.0);
                }
                let mut seq = 0usize;
                for task in tasks {
                    let (t, kvh) = (task / n_kv, task % n_kv);
                    while starts[seq + 1] as usize <= t {
                        seq += 1;
                    }
                    let q_len = (starts[seq + 1] - starts[seq]) as usize;
                    let c = ctx[seq] as usize;
                    let pos = c - q_len + (t - starts[seq] as usize);
                    let lo = match window {
                        Some(w) if pos + 1 > w => pos + 1 - w,
                        _ => 0,
                    };
                    let table = &tables[seq * max_blocks..(seq + 1) * max_blocks];
                    let off = t * row + kvh * g.group * hd;
                    let qg = &qs[off..off + g.group * hd];
                    // SAFETY: each (t, kv head) output slice is written by one task only.
                    let dst = unsafe { o.slice_mut(off, g.group * hd) };
                    let s = &mut scratch[..need];
                    match isa {
                        // SAFETY: the features were detected at run time.
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx512 => unsafe {
                            attend_group_avx512(g, qg, kc, vc, table, kvh, lo, pos, s, dst)
                        },
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2 => unsafe {
                            attend_group_avx2(g, qg, kc, vc, table, kvh, lo, pos, s, dst)
                        },
                        _ => attend_group(g, qg, kc, vc, table, kvh, lo, pos, s, dst),
                    }
                }
            })
        });
        Ok(())
    }
}
