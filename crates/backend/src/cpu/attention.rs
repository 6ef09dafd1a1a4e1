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
//! With a custom mask (`PagedAttentionMeta::custom_mask`, tree/lookahead speculation) a
//! row scans every new key of its sequence and skips those its mask row hides.
//!
//! The cache may hold F32, F16, BF16, Q8_0 or F8E4M3 (`--kv-cache-dtype`; FP8 codes with
//! no scale). Each K or V row is read once per group and, unless it is F32, converted
//! into an `hd`-float buffer in L1 that the group's `group` dots (or axpys) then read:
//! the bytes from memory shrink 2x (F16, BF16), 3.8x (Q8_0) or 4x (F8E4M3, decoded
//! exactly: each code's bits moved into an f16, widened by F16C and scaled by 2^8, or
//! through a 256-entry table on the scalar path) while the arithmetic stays f32. Measured
//! alternatives (examples/attention_kv_dtype, docs/kv-cache.md): converting each
//! 16-lane chunk in registers right before the FMAs was slower for F16 (1.2x) and no
//! faster for Q8_0, because each K chunk is then converted once per query head. Quantizing q to int8
//! for integer dots with Q8_0 keys (ggml's way) was not adopted: it adds q's rounding
//! error, and the kernel is bound by per-key work, not by conversion.
//!
//! The arithmetic is plain Rust written so that it vectorises (16 independent lanes in
//! the dot products); it is compiled three times, for AVX-512, AVX2+FMA(+F16C) and the
//! baseline, and chosen at run time.

use std::cell::RefCell;

use half::{bf16, f16};

use super::ops::SendPtr;
use super::simd::Isa;
use super::CpuBackend;
use crate::device::{AttentionParams, PagedAttentionMeta};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::quant::blocks::{as_blocks, f16_le, BlockQ8_0, QK};
use crate::quant::fp8::e4m3_row_to_f32;
#[cfg(target_arch = "x86_64")]
use crate::quant::fp8::{E4M3_F16_SCALE, F16_NAN_FIX};
use crate::tensor::Tensor;

/// Keys scored per tile.
const TILE: usize = 32;
/// Largest head dimension supported.
pub const MAX_HEAD_DIM: usize = 512;
/// Dot-product lanes: enough independent accumulators for one AVX-512 register.
const LANES: usize = 16;

thread_local! {
    /// Per-thread scratch: `acc [group * head_dim]`, `scores [group * TILE]`, then the
    /// converted K row `[head_dim]` and V row `[head_dim]`.
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

/// The KV cache dtypes attention reads (and `kv_write` writes). F8E4M3 here is the
/// unscaled FP8 cache (a code is its value, `quant::fp8`), not the scaled FP8 weights.
pub const KV_CACHE_DTYPES: [DType; 5] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::F8E4M3,
];

/// A K or V cache `[num_blocks, n_kv_heads, block_size, head_dim]` viewed in place.
#[derive(Clone, Copy)]
enum KvView<'a> {
    F32(&'a [f32]),
    /// IEEE half bits.
    F16(&'a [u16]),
    /// bfloat16 bits.
    BF16(&'a [u16]),
    /// `head_dim / 32` blocks per row.
    Q8_0(&'a [BlockQ8_0]),
    /// E4M3 codes, one byte per element, no scale.
    F8E4M3(&'a [u8]),
}

/// `dst = f16 src`, 8 at a time with F16C `vcvtph2ps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_row_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n for both slices.
        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    for j in i..n {
        dst[j] = f16::from_bits(src[j]).to_f32();
    }
}

/// `dst = f16 src`, 16 at a time (`src.len()` a multiple of 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,f16c")]
unsafe fn f16_row_avx512(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n for both slices.
        let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
        _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        i += 16;
    }
}

/// `dst = e4m3 src`, 32 (then 16) at a time: each code's sign and magnitude bits are
/// moved into an f16 whose value is exactly the code's times 2^-8
/// (`quant::fp8::e4m3_to_f16_bits`, NaN codes to f16 NaN), F16C widens it to f32 and a
/// multiplication by 2^8 (exact) restores the scale, so the result equals
/// `E4M3_TO_F32` bit for bit (NaN codes included). The bit moves are done on the bytes
/// (32 codes per instruction) before they are interleaved into f16s. The last
/// `len % 16` go through the table.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn fp8_row_f16c(src: &[u8], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let (x3f, x80) = (_mm256_set1_epi8(0x3f), _mm256_set1_epi8(0x80u8 as i8));
    let nan_fix = _mm256_set1_epi8((F16_NAN_FIX >> 8) as i8);
    let ones = _mm256_set1_epi8(-1);
    let scale = _mm256_set1_ps(E4M3_F16_SCALE);
    let mut i = 0;
    while i + 16 <= n {
        let whole = i + 32 <= n;
        // SAFETY: i + 32 <= n (or i + 16 <= n for the half load) for both slices.
        let c = if whole {
            _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i)
        } else {
            _mm256_zextsi128_si256(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i))
        };
        // The f16's high byte: the sign, then the magnitude's top 6 bits (the bit the
        // 16-bit shift brings in from the next byte is masked off).
        let mag = _mm256_and_si256(_mm256_srli_epi16::<1>(c), x3f);
        // A NaN code (0x7f/0xff) has high byte 0x3f and low byte 0x80 (1.875): make them
        // f16 NaN's 0x7e and 0x00.
        let nan = _mm256_cmpeq_epi8(_mm256_or_si256(c, x80), ones);
        let hi = _mm256_or_si256(
            _mm256_xor_si256(mag, _mm256_and_si256(nan, nan_fix)),
            _mm256_and_si256(c, x80),
        );
        // The low byte: the mantissa's last bit on top.
        let lo = _mm256_andnot_si256(nan, _mm256_and_si256(_mm256_slli_epi16::<7>(c), x80));
        // f16s of codes 0..8 and 16..24, then 8..16 and 24..32.
        let h0 = _mm256_unpacklo_epi8(lo, hi);
        let h1 = _mm256_unpackhi_epi8(lo, hi);
        let d = dst.as_mut_ptr().add(i);
        let f = |h: __m128i| _mm256_mul_ps(_mm256_cvtph_ps(h), scale);
        _mm256_storeu_ps(d, f(_mm256_castsi256_si128(h0)));
        _mm256_storeu_ps(d.add(8), f(_mm256_castsi256_si128(h1)));
        if whole {
            _mm256_storeu_ps(d.add(16), f(_mm256_extracti128_si256::<1>(h0)));
            _mm256_storeu_ps(d.add(24), f(_mm256_extracti128_si256::<1>(h1)));
            i += 32;
        } else {
            i += 16;
        }
    }
    e4m3_row_to_f32(&src[i..n], &mut dst[i..n]);
}

/// `dst = d * q` for each Q8_0 block of `src` (`dst` holds 32 per block).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,f16c")]
unsafe fn q8_0_row_avx512(src: &[BlockQ8_0], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    for (b, out) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = u16::from_le_bytes(b.d);
        let d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(d as i32))));
        for half in 0..2 {
            // SAFETY: 16 of the block's 32 quants, into 16 of its 32 outputs.
            let q = _mm_loadu_si128(b.qs.as_ptr().add(16 * half) as *const __m128i);
            let x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d);
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * half), x);
        }
    }
}

impl<'a> KvView<'a> {
    fn new(t: &'a Tensor) -> Result<KvView<'a>> {
        let u16s = |b: &'a [u8]| -> Result<&'a [u16]> {
            // SAFETY: u16 has no invalid bit patterns; alignment is checked below.
            let (pre, mid, post) = unsafe { b.align_to::<u16>() };
            if !pre.is_empty() || !post.is_empty() {
                return Err(BackendError::Shape("misaligned KV cache".into()));
            }
            Ok(mid)
        };
        Ok(match t.dtype() {
            DType::F32 => KvView::F32(t.as_f32()?),
            DType::F16 => KvView::F16(u16s(t.cpu_bytes()?)?),
            DType::BF16 => KvView::BF16(u16s(t.cpu_bytes()?)?),
            DType::Q8_0 => KvView::Q8_0(as_blocks(t.cpu_bytes()?)?),
            DType::F8E4M3 => KvView::F8E4M3(t.cpu_bytes()?),
            other => {
                return Err(BackendError::Unsupported {
                    op: "paged_attention (KV cache dtype)",
                    dtype: other,
                })
            }
        })
    }

    /// Row `r` (`[hd]`) as f32: the cache itself for F32, else converted into `buf`.
    #[inline(always)]
    fn row<'b>(self, r: usize, hd: usize, isa: Isa, buf: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        let buf = &mut buf[..hd];
        match self {
            KvView::F32(c) => return &c[r * hd..(r + 1) * hd],
            KvView::F16(c) => {
                let src = &c[r * hd..(r + 1) * hd];
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx512 && hd.is_multiple_of(16) {
                    // SAFETY: the AVX-512 path has AVX-512F; hd is whole chunks.
                    unsafe { f16_row_avx512(src, buf) };
                    return buf;
                }
                #[cfg(target_arch = "x86_64")]
                if isa != Isa::Scalar {
                    // SAFETY: every non-scalar path has F16C (see `Isa`).
                    unsafe { f16_row_f16c(src, buf) };
                    return buf;
                }
                let _ = isa;
                for (d, &s) in buf.iter_mut().zip(src) {
                    *d = f16::from_bits(s).to_f32();
                }
            }
            KvView::BF16(c) => {
                // bf16 is the top half of an f32: a shift, which vectorises.
                for (d, &s) in buf.iter_mut().zip(&c[r * hd..(r + 1) * hd]) {
                    *d = bf16::from_bits(s).to_f32();
                }
            }
            KvView::Q8_0(c) => {
                let nb = hd / QK;
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx512 {
                    // SAFETY: the AVX-512 path has AVX-512F and F16C.
                    unsafe { q8_0_row_avx512(&c[r * nb..(r + 1) * nb], buf) };
                    return buf;
                }
                for (b, dst) in c[r * nb..(r + 1) * nb].iter().zip(buf.chunks_exact_mut(QK)) {
                    let d = f16_le(b.d);
                    for (x, &q) in dst.iter_mut().zip(&b.qs) {
                        *x = d * q as f32;
                    }
                }
            }
            KvView::F8E4M3(c) => {
                let src = &c[r * hd..(r + 1) * hd];
                #[cfg(target_arch = "x86_64")]
                if isa != Isa::Scalar {
                    // SAFETY: every non-scalar path has AVX2 and F16C (see `Isa`).
                    unsafe { fp8_row_f16c(src, buf) };
                    return buf;
                }
                // A table lookup per element (1 KiB, stays in L1).
                e4m3_row_to_f32(src, buf);
            }
        }
        buf
    }
}

/// The geometry shared by every task of one call.
#[derive(Clone, Copy)]
struct Geometry {
    isa: Isa,
    hd: usize,
    group: usize,
    n_kv: usize,
    block_size: usize,
    scale: f32,
    softcap: Option<f32>,
    /// `SLUICE_E4M3_PRODUCTS` (an experiment, docs/kv-cache.md): Q (`q`), P (`p`) or both
    /// (`1`) rounded to E4M3 before their products, as a tensor-core attention on E4M3
    /// operands (`mma` m16n8k32, sm_89+) would take them, to price its quality before
    /// writing it.
    e4m3_q: bool,
    e4m3_p: bool,
}

/// (Q, P) rounded to E4M3 by `SLUICE_E4M3_PRODUCTS` (read once).
fn e4m3_products() -> (bool, bool) {
    static ON: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();
    *ON.get_or_init(
        || match std::env::var("SLUICE_E4M3_PRODUCTS").ok().as_deref() {
            Some("1") => (true, true),
            Some("q") => (true, false),
            Some("p") => (false, true),
            _ => (false, false),
        },
    )
}

/// `x` rounded to the E4M3 grid scaled by `s` (`s` times the nearest code to `x / s`).
fn e4m3_round(x: f32, s: f32) -> f32 {
    crate::quant::fp8::e4m3_to_f32(crate::quant::fp8::e4m3_from_f32(x / s)) * s
}

/// Each head's row of `q` (`hd` wide) on the E4M3 grid, scaled so that its largest
/// magnitude is 448 (E4M3's largest finite value): per-row scales, as an E4M3 `mma`
/// with the scale applied to its f32 scores would use.
fn e4m3_rows(q: &[f32], hd: usize) -> Vec<f32> {
    let mut r = q.to_vec();
    for row in r.chunks_mut(hd) {
        let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        if amax > 0.0 && amax.is_finite() {
            let s = amax / 448.0;
            for x in row.iter_mut() {
                *x = e4m3_round(*x, s);
            }
        }
    }
    r
}

/// What one task attends to: positions `lo..=hi` of KV head `kv_head`, minus the new
/// keys its mask row hides.
#[derive(Clone, Copy)]
struct Span<'a> {
    block_table: &'a [i32],
    kv_head: usize,
    lo: usize,
    hi: usize,
    /// With a custom mask: (position of the first new key, this row's mask `[q_len]`).
    mask: Option<(usize, &'a [i32])>,
}

impl Span<'_> {
    #[inline(always)]
    fn visible(&self, kp: usize) -> bool {
        match self.mask {
            Some((start, row)) if kp >= start => row[kp - start] != 0,
            _ => true,
        }
    }
}

/// Attends `group` query heads (`q`, `[group * hd]`) of one row to the keys of `sp`,
/// writing `out` (`[group * hd]`).
#[inline(always)]
fn attend_group(
    g: Geometry,
    q: &[f32],
    kc: KvView<'_>,
    vc: KvView<'_>,
    sp: Span<'_>,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let (hd, group) = (g.hd, g.group);
    let rounded_q = g.e4m3_q.then(|| e4m3_rows(q, hd));
    let q = rounded_q.as_deref().unwrap_or(q);
    let (block_table, kv_head, lo, hi) = (sp.block_table, sp.kv_head, sp.lo, sp.hi);
    let (acc, rest) = scratch.split_at_mut(group * hd);
    let (scores, rest) = rest.split_at_mut(group * TILE);
    let (kbuf, vbuf) = rest.split_at_mut(hd);
    acc.fill(0.0);
    let mut m = [f32::NEG_INFINITY; 64];
    let mut l = [0f32; 64];
    // Cache row (of `hd` elements) holding position `kp`.
    let row_of = |kp: usize| {
        let block = block_table[kp / g.block_size] as usize;
        (block * g.n_kv + kv_head) * g.block_size + kp % g.block_size
    };
    let mut pos = lo;
    while pos <= hi {
        let n = TILE.min(hi + 1 - pos);
        for j in 0..n {
            if !sp.visible(pos + j) {
                for h in 0..group {
                    scores[h * TILE + j] = f32::NEG_INFINITY;
                }
                continue;
            }
            let k = kc.row(row_of(pos + j), hd, g.isa, kbuf);
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
            if m_new == f32::NEG_INFINITY {
                // Every key so far is masked: nothing to add (and -inf - -inf is NaN).
                sc.fill(0.0);
                continue;
            }
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
            if !sp.visible(pos + j) {
                continue;
            }
            let v = vc.row(row_of(pos + j), hd, g.isa, vbuf);
            for h in 0..group {
                let mut e = scores[h * TILE + j];
                if g.e4m3_p {
                    // P <= 1, scaled by 448 onto the grid (l keeps the unrounded sum).
                    e = e4m3_round(e, 1.0 / 448.0);
                }
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
        #[cfg(target_arch = "x86_64")]
        #[target_feature($(enable = $feat),*)]
        unsafe fn $name(
            g: Geometry,
            q: &[f32],
            kc: KvView<'_>,
            vc: KvView<'_>,
            sp: Span<'_>,
            scratch: &mut [f32],
            out: &mut [f32],
        ) {
            attend_group(g, q, kc, vc, sp, scratch, out)
        }
    };
}

attend_variant!(
    attend_group_avx512,
    "avx512f",
    "avx512bw",
    "avx2",
    "fma",
    "f16c"
);
attend_variant!(attend_group_avx2, "avx2", "fma", "f16c");

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
        let shape = k_cache.shape();
        if shape.len() != 4 || v_cache.shape() != shape || v_cache.dtype() != k_cache.dtype() {
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
        let (kc, vc) = (KvView::new(k_cache)?, KvView::new(v_cache)?);
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
        let mask = match meta.custom_mask {
            None => None,
            Some(m) => {
                let m = m.as_i32()?;
                let need: usize = (0..s_count)
                    .map(|s| ((starts[s + 1] - starts[s]) as usize).pow(2))
                    .sum();
                if m.len() != need {
                    return Err(BackendError::Shape(format!(
                        "paged_attention: custom mask has {} elements, the batch needs {need} \
                         (sum of q_len^2 over sequences)",
                        m.len()
                    )));
                }
                Some(m)
            }
        };
        let (e4m3_q, e4m3_p) = e4m3_products();
        let g = Geometry {
            isa: Isa::select(&self.features),
            hd,
            group: p.n_heads / p.n_kv_heads,
            n_kv,
            block_size,
            scale: p.scale,
            softcap: p.softcap,
            e4m3_q,
            e4m3_p,
        };
        let isa = g.isa;
        let o = SendPtr(out.as_f32_mut()?.as_mut_ptr());
        let window = p.sliding_window;
        self.pool.for_range(t_count * n_kv, 1, |tasks| {
            SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                let need = g.group * (hd + TILE) + 2 * hd;
                if scratch.len() < need {
                    scratch.resize(need, 0.0);
                }
                let mut seq = 0usize;
                // Offset of sequence `seq`'s matrix in the custom mask.
                let mut mask_off = 0usize;
                for task in tasks {
                    let (t, kvh) = (task / n_kv, task % n_kv);
                    while starts[seq + 1] as usize <= t {
                        mask_off += ((starts[seq + 1] - starts[seq]) as usize).pow(2);
                        seq += 1;
                    }
                    let q_len = (starts[seq + 1] - starts[seq]) as usize;
                    let c = ctx[seq] as usize;
                    let i = t - starts[seq] as usize;
                    let pos = c - q_len + i;
                    let lo = match window {
                        Some(w) if pos + 1 > w => pos + 1 - w,
                        _ => 0,
                    };
                    let sp = Span {
                        block_table: &tables[seq * max_blocks..(seq + 1) * max_blocks],
                        kv_head: kvh,
                        lo,
                        // A masked row may see later new keys: scan them all.
                        hi: if mask.is_some() { c - 1 } else { pos },
                        mask: mask.map(|m| {
                            let row = mask_off + i * q_len;
                            (c - q_len, &m[row..row + q_len])
                        }),
                    };
                    let off = t * row + kvh * g.group * hd;
                    let qg = &qs[off..off + g.group * hd];
                    // SAFETY: each (t, kv head) output slice is written by one task only.
                    let dst = unsafe { o.slice_mut(off, g.group * hd) };
                    let s = &mut scratch[..need];
                    match isa {
                        // SAFETY: the features were detected at run time.
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx512 => unsafe { attend_group_avx512(g, qg, kc, vc, sp, s, dst) },
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2 => unsafe { attend_group_avx2(g, qg, kc, vc, sp, s, dst) },
                        _ => attend_group(g, qg, kc, vc, sp, s, dst),
                    }
                }
            })
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FP8 row decode of every path equals the table bit for bit, NaN codes included
    /// (they decode to the table's NaN, `0x7fc00000` with the code's sign), for every
    /// code at every position of rows of many lengths (whole 16-code chunks or not).
    use crate::quant::fp8::E4M3_TO_F32;

    #[test]
    fn e4m3_rows_put_each_row_on_its_scaled_grid() {
        // Row 0's largest magnitude maps to 448 exactly; 1.0 (= 448 / 448 * 1) and 0 stay;
        // a value between two grid points goes to the nearer. Row 1 is all zeros.
        let hd = 4;
        let q = [448.0, -1.0, 0.0, 100.0, 0.0, 0.0, 0.0, 0.0];
        let r = super::e4m3_rows(&q, hd);
        assert_eq!(&r[..4], &[448.0, -1.0, 0.0, 96.0]);
        assert_eq!(&r[4..], &[0.0; 4]);
        let r = super::e4m3_rows(&[2.0, 0.3], 2);
        // Scale 2 / 448: 0.3 / s = 67.2 -> 64 (the grid step is 8 from 64 to 128).
        assert_eq!(r[0], 2.0);
        assert!((r[1] - 64.0 * 2.0 / 448.0).abs() < 1e-7, "{}", r[1]);
        // P's grid: 1 / 448 per unit, so p = 0.5 stays and 0.3 goes to 0.3 * 448 = 134.4 -> 128.
        assert_eq!(super::e4m3_round(0.5, 1.0 / 448.0), 0.5);
        assert!((super::e4m3_round(0.3, 1.0 / 448.0) - 128.0 / 448.0).abs() < 1e-7);
    }

    #[test]
    fn fp8_row_decode_equals_the_table() {
        for hd in [
            1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 128, 255, 257, 512,
        ] {
            // Row r holds codes r, r + 1, ... (mod 256): every code at every position.
            let codes: Vec<u8> = (0..256 * hd).map(|k| (k / hd + k % hd) as u8).collect();
            let mut buf = vec![0f32; MAX_HEAD_DIM];
            for isa in Isa::available() {
                for r in 0..256 {
                    let row = KvView::F8E4M3(&codes).row(r, hd, isa, &mut buf);
                    for (i, (&v, &c)) in row.iter().zip(&codes[r * hd..]).enumerate() {
                        let want = E4M3_TO_F32[c as usize];
                        assert_eq!(
                            v.to_bits(),
                            want.to_bits(),
                            "{isa:?} hd {hd} row {r} [{i}] code {c:#04x}"
                        );
                    }
                }
            }
        }
        assert!(E4M3_TO_F32[0x7f].is_nan() && E4M3_TO_F32[0xff].is_nan());
    }
}
