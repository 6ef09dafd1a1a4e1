//! AVX-512 VNNI kernels for the 32-wide formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
//!
//! Step = one group of 4 weight blocks (128 elements) of R rows against C tokens:
//! * unpack (once per row): two masked 64-byte loads cover the group's 4 blocks in
//!   their ggml layout (72..136 bytes); `vpermt2w` gathers the 4 blocks' quants into
//!   one register and their f16 scales, each repeated 4 times, into another (ggml
//!   blocks are an even number of bytes, so every field is word aligned). Nibbles
//!   split into low halves (elements 0..16 of each block) and high halves (16..32):
//!   exactly the `Q32` activation layout, so no activation shuffles are needed.
//! * weights become unsigned bytes: `q` for Q4_1/Q5_1, `q + 8` / `q + 16` for
//!   Q4_0/Q5_0 (their natural nibbles), `q ^ 0x80 = q + 128` for Q8_0. `vpdpbusd`
//!   multiplies unsigned weights with signed activations; the offset comes back as
//!   `m_eff * d_a * sum(a)` with `m_eff = -8 d`, `-16 d`, `-128 d` (and `m` itself for
//!   the `_1` formats), from the activations' precomputed `d * sum / 4`.
//! * per (row, token): 2 `vpdpbusd`, 1 convert, 1 multiply, 2 FMA for 128 elements.
//!
//! GEMV (one token) runs 4 rows at a time; GEMM runs 2 rows x 8 tokens so each
//! unpacked weight group serves 8 tokens, over panels of rows small enough to stay in
//! L1 while every token chunk passes over them.

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{off, Q32_GROUP_BYTES};
use super::float::panel_rows;
use super::{arr, unroll, word_table, QJob};
use crate::dtype::DType;

/// One unpacked group: unsigned quants (low halves, high halves), per-lane weight
/// scale and offset term (block j in lanes 4j..4j+4).
#[derive(Clone, Copy)]
pub struct W4 {
    lo: __m512i,
    hi: __m512i,
    d: __m512,
    m: __m512,
}

/// A 32-wide weight format as the AVX-512 kernel sees it.
pub trait Q32W {
    const BYTES: usize;
    /// Unpacks blocks `0..nbg` (1..=4) of the group at `p`; reads no byte past them.
    unsafe fn unpack(p: *const u8, nbg: usize) -> W4;
}

/// Mask of the first `n` (clamped to 0..=64) bytes.
#[inline(always)]
fn bytes_mask(n: isize) -> u64 {
    if n <= 0 {
        0
    } else if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// Word-index vector for `vpermt2w` (indices 32.. pick from the second register).
#[inline(always)]
unsafe fn idx(t: &[i16; 32]) -> __m512i {
    _mm512_loadu_si512(t.as_ptr() as *const __m512i)
}

/// Loads the `len` bytes at `p` (len <= 128) into two registers, zeros after.
#[inline(always)]
unsafe fn load2(p: *const u8, len: usize) -> (__m512i, __m512i) {
    let a = _mm512_maskz_loadu_epi8(bytes_mask(len as isize), p as *const i8);
    let b = _mm512_maskz_loadu_epi8(bytes_mask(len as isize - 64), p.add(64) as *const i8);
    (a, b)
}

/// Splits 64 bytes of packed nibbles into low and high nibbles.
#[inline(always)]
unsafe fn nibbles(qs: __m512i) -> (__m512i, __m512i) {
    let f = _mm512_set1_epi8(0x0F);
    (
        _mm512_and_si512(qs, f),
        _mm512_and_si512(_mm512_srli_epi16(qs, 4), f),
    )
}

/// Low 256 bits as 16 floats from 16 halves; high 256 bits likewise.
#[inline(always)]
unsafe fn halves_to_f32(v: __m512i) -> (__m512, __m512) {
    (
        _mm512_cvtph_ps(_mm512_castsi512_si256(v)),
        _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1)),
    )
}

/// Sets bit 4 of the bytes selected by the fifth-bit masks (Q5 formats). `qh` holds,
/// in its low 128 bits, the low 16 bits of each block's `qh` (words 0..4) and then the
/// high 16 bits (words 4..8): bit i of word j is element i (resp. 16 + i) of block j.
#[inline(always)]
unsafe fn fifth_bits(lo: __m512i, hi: __m512i, qh: __m128i) -> (__m512i, __m512i) {
    let klo = _mm_cvtsi128_si64(qh) as u64;
    let khi = _mm_extract_epi64(qh, 1) as u64;
    let b = _mm512_set1_epi8(0x10);
    (
        _mm512_or_si512(lo, _mm512_maskz_mov_epi8(klo, b)),
        _mm512_or_si512(hi, _mm512_maskz_mov_epi8(khi, b)),
    )
}

pub struct Q4_0;
pub struct Q4_1;
pub struct Q5_0;
pub struct Q5_1;
pub struct Q8_0;

impl Q32W for Q4_0 {
    // d | qs[16]: 9 words per block.
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W4 {
        let (a, b) = load2(p, nbg * Self::BYTES);
        let qs = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 9 * (w / 8) + 1 + w % 8);
                T
            }),
            b,
        );
        let meta = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 9 * (w % 16 / 4));
                T
            }),
            b,
        );
        let (lo, hi) = nibbles(qs);
        let (d, _) = halves_to_f32(meta);
        W4 {
            lo,
            hi,
            d,
            m: _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
        }
    }
}

impl Q32W for Q4_1 {
    // d | m | qs[16]: 10 words per block.
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W4 {
        let (a, b) = load2(p, nbg * Self::BYTES);
        let qs = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 10 * (w / 8) + 2 + w % 8);
                T
            }),
            b,
        );
        let meta = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 10 * (w % 16 / 4) + w / 16);
                T
            }),
            b,
        );
        let (lo, hi) = nibbles(qs);
        let (d, m) = halves_to_f32(meta);
        W4 { lo, hi, d, m }
    }
}

impl Q32W for Q5_0 {
    // d | qh[4] | qs[16]: 11 words per block.
    const BYTES: usize = 22;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W4 {
        let (a, b) = load2(p, nbg * Self::BYTES);
        let qs = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 11 * (w / 8) + 3 + w % 8);
                T
            }),
            b,
        );
        // words 0..16: d of block w/4; words 16..20: qh low halves; 20..24: high halves.
        let meta = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| if w < 16 {
                    11 * (w / 4)
                } else if w < 24 {
                    11 * ((w - 16) % 4) + 1 + (w - 16) / 4
                } else {
                    0
                });
                T
            }),
            b,
        );
        let (lo, hi) = nibbles(qs);
        let (lo, hi) = fifth_bits(lo, hi, _mm512_extracti32x4_epi32(meta, 2));
        let (d, _) = halves_to_f32(meta);
        W4 {
            lo,
            hi,
            d,
            m: _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
        }
    }
}

impl Q32W for Q5_1 {
    // d | m | qh[4] | qs[16]: 12 words per block.
    const BYTES: usize = 24;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W4 {
        let (a, b) = load2(p, nbg * Self::BYTES);
        let qs = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 12 * (w / 8) + 4 + w % 8);
                T
            }),
            b,
        );
        let meta = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 12 * (w % 16 / 4) + w / 16);
                T
            }),
            b,
        );
        let qh = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 12 * (w % 4) + 2 + (w / 4) % 2);
                T
            }),
            b,
        );
        let (lo, hi) = nibbles(qs);
        let (lo, hi) = fifth_bits(lo, hi, _mm512_castsi512_si128(qh));
        let (d, m) = halves_to_f32(meta);
        W4 { lo, hi, d, m }
    }
}

impl Q32W for Q8_0 {
    // d | qs[32]: 17 words per block; a group spans 136 bytes, so the high halves
    // come from a second pair of loads 8 bytes further on.
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W4 {
        let len = nbg * Self::BYTES;
        let (a, b) = load2(p, len.min(128));
        let (c, e) = load2(p.add(8), len - 8);
        let lo = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 17 * (w / 8) + 1 + w % 8);
                T
            }),
            b,
        );
        let hi = _mm512_permutex2var_epi16(
            c,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 17 * (w / 8) + 9 + w % 8 - 4);
                T
            }),
            e,
        );
        let meta = _mm512_permutex2var_epi16(
            a,
            idx(&{
                const T: [i16; 32] = word_table!(|w| 17 * (w % 16 / 4));
                T
            }),
            b,
        );
        let flip = _mm512_set1_epi8(-128);
        let (d, _) = halves_to_f32(meta);
        W4 {
            lo: _mm512_xor_si512(lo, flip),
            hi: _mm512_xor_si512(hi, flip),
            d,
            m: _mm512_mul_ps(d, _mm512_set1_ps(-128.0)),
        }
    }
}

/// Accumulates one group of R rows against C tokens.
#[inline(always)]
unsafe fn step<F: Q32W, const R: usize, const C: usize>(
    acc: &mut [[__m512; C]; R],
    w: &[*const u8; R],
    a: &[*const u8; C],
    g: usize,
    nbg: usize,
) {
    let mut wv = [W4 {
        lo: _mm512_setzero_si512(),
        hi: _mm512_setzero_si512(),
        d: _mm512_setzero_ps(),
        m: _mm512_setzero_ps(),
    }; R];
    unroll!(r in R => {
        wv[r] = F::unpack(w[r].add(g * 4 * F::BYTES), nbg);
    });
    unroll!(c in C => {
        let rec = a[c].add(g * Q32_GROUP_BYTES);
        let alo = _mm512_load_si512(rec as *const __m512i);
        let ahi = _mm512_load_si512(rec.add(off::HI) as *const __m512i);
        let da = _mm512_load_ps(rec.add(off::D) as *const f32);
        let s4 = _mm512_load_ps(rec.add(off::S) as *const f32);
        unroll!(r in R => {
            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r].lo, alo);
            let dot = _mm512_dpbusd_epi32(dot, wv[r].hi, ahi);
            let sc = _mm512_mul_ps(wv[r].d, da);
            acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r][c]);
            acc[r][c] = _mm512_fmadd_ps(wv[r].m, s4, acc[r][c]);
        });
    });
}

/// Dot products of R weight rows with C activation rows (`nb` blocks each).
#[inline(always)]
unsafe fn tile<F: Q32W, const R: usize, const C: usize>(
    w: [*const u8; R],
    a: [*const u8; C],
    nb: usize,
) -> [[f32; C]; R] {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let full = nb / 4;
    for g in 0..full {
        step::<F, R, C>(&mut acc, &w, &a, g, 4);
    }
    if !nb.is_multiple_of(4) {
        step::<F, R, C>(&mut acc, &w, &a, full, nb % 4);
    }
    let mut out = [[0f32; C]; R];
    unroll!(r in R => {
        unroll!(c in C => {
            out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
        });
    });
    out
}

#[inline(always)]
unsafe fn rows<F: Q32W, const R: usize, const C: usize>(job: &QJob, rows: Range<usize>, t0: usize) {
    let nb = job.k / 32;
    let a: [*const u8; C] = arr(|c| job.a_row(t0 + c));
    let mut r = rows.start;
    let pf = super::prefetch_distance();
    let end = job.w.as_ptr().wrapping_add(job.w.len());
    while r + R <= rows.end {
        let w: [*const u8; R] = arr(|i| job.w_row(r + i));
        if t0 == 0 && pf > 0 {
            super::prefetch(w[0].wrapping_add(pf), R * job.row_bytes, end);
        }
        let v = tile::<F, R, C>(w, a, nb);
        for (i, vr) in v.iter().enumerate() {
            for (c, val) in vr.iter().enumerate() {
                job.store(t0 + c, r + i, *val);
            }
        }
        r += R;
    }
    while r < rows.end {
        let v = tile::<F, 1, C>([job.w_row(r)], a, nb);
        for (c, val) in v[0].iter().enumerate() {
            job.store(t0 + c, r, *val);
        }
        r += 1;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn run_fmt<F: Q32W>(job: &QJob, rws: Range<usize>) {
    if job.t == 1 {
        rows::<F, 4, 1>(job, rws, 0);
        return;
    }
    let panel = panel_rows(job.row_bytes);
    let mut p0 = rws.start;
    while p0 < rws.end {
        let p = p0..(p0 + panel).min(rws.end);
        let mut t0 = 0;
        while job.t - t0 >= 8 {
            rows::<F, 2, 8>(job, p.clone(), t0);
            t0 += 8;
        }
        if job.t - t0 >= 4 {
            rows::<F, 2, 4>(job, p.clone(), t0);
            t0 += 4;
        }
        if job.t - t0 >= 2 {
            rows::<F, 2, 2>(job, p.clone(), t0);
            t0 += 2;
        }
        if job.t - t0 >= 1 {
            rows::<F, 4, 1>(job, p.clone(), t0);
        }
        p0 = p.end;
    }
}

/// # Safety
/// AVX-512 F/BW/VNNI present; as [`QJob::run`].
pub unsafe fn run(job: &QJob, rows: Range<usize>) {
    match job.dtype {
        DType::Q4_0 => run_fmt::<Q4_0>(job, rows),
        DType::Q4_1 => run_fmt::<Q4_1>(job, rows),
        DType::Q5_0 => run_fmt::<Q5_0>(job, rows),
        DType::Q5_1 => run_fmt::<Q5_1>(job, rows),
        DType::Q8_0 => run_fmt::<Q8_0>(job, rows),
        other => unreachable!("avx512_q32 with {other}"),
    }
}
