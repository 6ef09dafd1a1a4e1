//! AVX2 kernels for the 32-wide formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
//!
//! Same scheme as the AVX-512 kernel on the `Q32` activation layout (two int8 terms
//! per element, joined in integers, see `acts`), two blocks per 256-bit register: `vpmaddubsw` (unsigned weight x signed activation -> 16-bit pair sums;
//! for 4/5-bit weights the low and high halves can be added in 16 bits without
//! overflow, 2 * (2 * 31 * 127) < 2^15), then `vpmaddwd` by ones to 32 bits. Q8_0 keeps
//! its sign (ggml's trick: |w| x sign(a, w)), so it needs no offset term.

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{off, Q32_GROUP_BYTES};
use super::float::panel_rows;
use super::{arr, unroll, QJob};
use crate::dtype::DType;

/// Two unpacked blocks: quants `[A 0..16 | B 0..16]`, `[A 16..32 | B 16..32]`, scales
/// `[dA x4, dB x4]` and offset terms likewise.
#[derive(Clone, Copy)]
pub struct W2 {
    lo: __m256i,
    hi: __m256i,
    d: __m256,
    m: __m256,
}

pub trait Q32W2 {
    const BYTES: usize;
    /// Signed quants (sign trick, no offset term).
    const SIGNED: bool;
    /// Unpacks 1 or 2 blocks at `p`; reads nothing of the second when `nb == 1`.
    unsafe fn unpack(p: *const u8, nb: usize) -> W2;
}

#[inline(always)]
unsafe fn load16(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

/// 16 bytes of each block (block B zero when absent).
#[inline(always)]
unsafe fn pair(p: *const u8, at: usize, stride: usize, nb: usize) -> __m256i {
    let a = load16(p.add(at));
    let b = if nb == 2 {
        load16(p.add(stride + at))
    } else {
        _mm_setzero_si128()
    };
    _mm256_set_m128i(b, a)
}

#[inline(always)]
unsafe fn u32_at(p: *const u8) -> u32 {
    (p as *const u32).read_unaligned()
}

/// `[x0, x1, x2, x3]` (4 halves packed in two u32) as `([x0 x4, x2 x4], [x1 x4, x3 x4])`.
#[inline(always)]
unsafe fn halves(a: u32, b: u32) -> (__m256, __m256) {
    let v = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_setr_epi32(a as i32, b as i32, 0, 0)));
    (
        _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)),
        _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3)),
    )
}

#[inline(always)]
unsafe fn nibbles(v: __m256i) -> (__m256i, __m256i) {
    let f = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(v, f),
        _mm256_and_si256(_mm256_srli_epi16(v, 4), f),
    )
}

/// 0xFF in byte i where bit i of `x` is set (ggml's `bytes_from_bits_32`).
#[inline(always)]
unsafe fn bytes_from_bits(x: u32) -> __m256i {
    let v = _mm256_shuffle_epi8(
        _mm256_set1_epi32(x as i32),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1))
}

/// Adds the fifth bits (`qh` of blocks A and B) to unpacked nibbles.
#[inline(always)]
unsafe fn fifth(lo: __m256i, hi: __m256i, qa: u32, qb: u32) -> (__m256i, __m256i) {
    let b = _mm256_set1_epi8(0x10);
    let klo = (qa & 0xFFFF) | (qb << 16);
    let khi = (qa >> 16) | (qb & 0xFFFF_0000);
    (
        _mm256_or_si256(lo, _mm256_and_si256(bytes_from_bits(klo), b)),
        _mm256_or_si256(hi, _mm256_and_si256(bytes_from_bits(khi), b)),
    )
}

pub struct Q4_0;
pub struct Q4_1;
pub struct Q5_0;
pub struct Q5_1;
pub struct Q8_0;

impl Q32W2 for Q4_0 {
    const BYTES: usize = 18;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nb: usize) -> W2 {
        let (lo, hi) = nibbles(pair(p, 2, Self::BYTES, nb));
        let db = if nb == 2 {
            (p.add(18) as *const u16).read_unaligned() as u32
        } else {
            0
        };
        let da = (p as *const u16).read_unaligned() as u32;
        let (d, _) = halves(da, db);
        W2 {
            lo,
            hi,
            d,
            m: _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
        }
    }
}

impl Q32W2 for Q4_1 {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nb: usize) -> W2 {
        let (lo, hi) = nibbles(pair(p, 4, Self::BYTES, nb));
        let b = if nb == 2 { u32_at(p.add(20)) } else { 0 };
        let (d, m) = halves(u32_at(p), b);
        W2 { lo, hi, d, m }
    }
}

impl Q32W2 for Q5_0 {
    const BYTES: usize = 22;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nb: usize) -> W2 {
        let (lo, hi) = nibbles(pair(p, 6, Self::BYTES, nb));
        let (qa, qb) = (
            u32_at(p.add(2)),
            if nb == 2 { u32_at(p.add(24)) } else { 0 },
        );
        let (lo, hi) = fifth(lo, hi, qa, qb);
        let db = if nb == 2 {
            (p.add(22) as *const u16).read_unaligned() as u32
        } else {
            0
        };
        let (d, _) = halves((p as *const u16).read_unaligned() as u32, db);
        W2 {
            lo,
            hi,
            d,
            m: _mm256_mul_ps(d, _mm256_set1_ps(-16.0)),
        }
    }
}

impl Q32W2 for Q5_1 {
    const BYTES: usize = 24;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nb: usize) -> W2 {
        let (lo, hi) = nibbles(pair(p, 8, Self::BYTES, nb));
        let (qa, qb) = (
            u32_at(p.add(4)),
            if nb == 2 { u32_at(p.add(28)) } else { 0 },
        );
        let (lo, hi) = fifth(lo, hi, qa, qb);
        let b = if nb == 2 { u32_at(p.add(24)) } else { 0 };
        let (d, m) = halves(u32_at(p), b);
        W2 { lo, hi, d, m }
    }
}

impl Q32W2 for Q8_0 {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nb: usize) -> W2 {
        let lo = pair(p, 2, Self::BYTES, nb);
        let hi = pair(p, 18, Self::BYTES, nb);
        let db = if nb == 2 {
            (p.add(34) as *const u16).read_unaligned() as u32
        } else {
            0
        };
        let (d, _) = halves((p as *const u16).read_unaligned() as u32, db);
        W2 {
            lo,
            hi,
            d,
            m: _mm256_setzero_ps(),
        }
    }
}

/// Integer dot of two blocks' weights with activations, 8 lanes (4 per block).
#[inline(always)]
unsafe fn dot<F: Q32W2>(w: &W2, alo: __m256i, ahi: __m256i) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    if F::SIGNED {
        let plo = _mm256_maddubs_epi16(_mm256_sign_epi8(w.lo, w.lo), _mm256_sign_epi8(alo, w.lo));
        let phi = _mm256_maddubs_epi16(_mm256_sign_epi8(w.hi, w.hi), _mm256_sign_epi8(ahi, w.hi));
        _mm256_add_epi32(_mm256_madd_epi16(plo, ones), _mm256_madd_epi16(phi, ones))
    } else {
        let p = _mm256_add_epi16(
            _mm256_maddubs_epi16(w.lo, alo),
            _mm256_maddubs_epi16(w.hi, ahi),
        );
        _mm256_madd_epi16(p, ones)
    }
}

/// Accumulates blocks `2h, 2h+1` (`nb` of them) of group `g`.
#[inline(always)]
unsafe fn step<F: Q32W2, const R: usize, const C: usize>(
    acc: &mut [[__m256; C]; R],
    w: &[*const u8; R],
    a: &[*const u8; C],
    g: usize,
    h: usize,
    nb: usize,
) {
    let mut wv = [W2 {
        lo: _mm256_setzero_si256(),
        hi: _mm256_setzero_si256(),
        d: _mm256_setzero_ps(),
        m: _mm256_setzero_ps(),
    }; R];
    unroll!(r in R => {
        wv[r] = F::unpack(w[r].add((4 * g + 2 * h) * F::BYTES), nb);
    });
    unroll!(c in C => {
        let rec = a[c].add(g * Q32_GROUP_BYTES + 32 * h);
        let alo = _mm256_load_si256(rec as *const __m256i);
        let ahi = _mm256_load_si256(rec.add(off::HI) as *const __m256i);
        let blo = _mm256_load_si256(rec.add(off::LO2) as *const __m256i);
        let bhi = _mm256_load_si256(rec.add(off::HI2) as *const __m256i);
        let da = _mm256_load_ps(rec.add(off::D) as *const f32);
        let s4 = _mm256_load_ps(rec.add(off::S) as *const f32);
        unroll!(r in R => {
            // e-dot = 256 * dot(w, q1) + dot(w, q2) (see `acts`).
            let i = _mm256_add_epi32(
                _mm256_slli_epi32(dot::<F>(&wv[r], alo, ahi), 8),
                dot::<F>(&wv[r], blo, bhi),
            );
            acc[r][c] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(wv[r].d, da), acc[r][c]);
            if !F::SIGNED {
                acc[r][c] = _mm256_fmadd_ps(wv[r].m, s4, acc[r][c]);
            }
        });
    });
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn tile<F: Q32W2, const R: usize, const C: usize>(
    w: [*const u8; R],
    a: [*const u8; C],
    nb: usize,
) -> [[f32; C]; R] {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let pairs = nb / 2;
    for pi in 0..pairs {
        step::<F, R, C>(&mut acc, &w, &a, pi / 2, pi % 2, 2);
    }
    if nb % 2 == 1 {
        step::<F, R, C>(&mut acc, &w, &a, pairs / 2, pairs % 2, 1);
    }
    let mut out = [[0f32; C]; R];
    unroll!(r in R => {
        unroll!(c in C => {
            out[r][c] = hsum(acc[r][c]);
        });
    });
    out
}

#[inline(always)]
unsafe fn rows<F: Q32W2, const R: usize, const C: usize>(
    job: &QJob,
    rows: Range<usize>,
    t0: usize,
) {
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

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_fmt<F: Q32W2>(job: &QJob, rws: Range<usize>) {
    if job.t == 1 {
        rows::<F, 2, 1>(job, rws, 0);
        return;
    }
    let panel = panel_rows(job.row_bytes);
    let mut p0 = rws.start;
    while p0 < rws.end {
        let p = p0..(p0 + panel).min(rws.end);
        let mut t0 = 0;
        while job.t - t0 >= 4 {
            rows::<F, 1, 4>(job, p.clone(), t0);
            t0 += 4;
        }
        if job.t - t0 >= 2 {
            rows::<F, 1, 2>(job, p.clone(), t0);
            t0 += 2;
        }
        if job.t - t0 >= 1 {
            rows::<F, 2, 1>(job, p.clone(), t0);
        }
        p0 = p.end;
    }
}

/// # Safety
/// AVX2/FMA/F16C present; as [`QJob::run`].
pub unsafe fn run(job: &QJob, rows: Range<usize>) {
    match job.dtype {
        DType::Q4_0 => run_fmt::<Q4_0>(job, rows),
        DType::Q4_1 => run_fmt::<Q4_1>(job, rows),
        DType::Q5_0 => run_fmt::<Q5_0>(job, rows),
        DType::Q5_1 => run_fmt::<Q5_1>(job, rows),
        DType::Q8_0 => run_fmt::<Q8_0>(job, rows),
        other => unreachable!("avx2_q32 with {other}"),
    }
}
