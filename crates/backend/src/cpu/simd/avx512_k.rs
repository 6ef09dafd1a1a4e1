//! AVX-512 VNNI kernels for the K-quants with 16-element sub-blocks (Q2_K, Q3_K,
//! Q6_K), on Q8_K-style activations. (Q4_K/Q5_K, whose sub-blocks are 32 elements,
//! run in `avx512_q32` with half the float work per element.)
//!
//! A super-block (256 elements) unpacks, once per weight row, into four registers of
//! unsigned quants (64 elements each, in the activation record's order) and four of
//! 16-bit sub-block scales, one scale per word. Per token: `vpmaddubsw` multiplies
//! quants with activations into 16-bit pair sums (at most 2 * 63 * 127, no
//! saturation), `vpdpwssd` multiplies those by the scales and accumulates 32-bit sums
//! (ggml's AVX2 scheme, with VNNI fusing its `madd` + `add`). Mins and offsets go
//! through the activations' per-16 sums: `sum_g mvec[g] * bsum[g]` with
//! * Q2_K: `mvec` = sub-block mins, factor `-dmin`;
//! * Q6_K: quants stored as `q + 32`, `mvec` = scales, factor `-32 d`;
//! * Q3_K: quants stored as `q + 4`, `mvec` = scales, factor `-4 d`.
//!
//! GEMV runs 2 rows at a time; GEMM 1 row x 8 tokens (the unpacked super-block needs
//! 11 registers).

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{off, K_BYTES};
use super::float::panel_rows;
use super::{arr, unroll, word_table, QJob};
use crate::dtype::DType;

/// One unpacked super-block.
#[derive(Clone, Copy)]
pub struct WK {
    q: [__m512i; 4],
    sc: [__m512i; 4],
    /// 16 x i16, one per 16 elements, multiplied with the activation sums.
    mvec: __m256i,
    d: __m512,
    dmin: __m512,
}

pub trait KW {
    const BYTES: usize;
    unsafe fn unpack(p: *const u8) -> WK;
}

#[inline(always)]
unsafe fn idx16(t: &'static [i16; 32]) -> __m512i {
    _mm512_loadu_si512(t.as_ptr() as *const __m512i)
}

/// Per-16 scale registers: register i, word w -> sub-block 4i + w/8.
const SC16: [[i16; 32]; 4] = [
    word_table!(|w| w / 8),
    word_table!(|w| 4 + w / 8),
    word_table!(|w| 8 + w / 8),
    word_table!(|w| 12 + w / 8),
];

#[inline(always)]
unsafe fn lanes64(lo: i64, hi: i64) -> __m512i {
    _mm512_setr_epi64(lo, lo, lo, lo, hi, hi, hi, hi)
}

/// Two f16 at `p` (d, then dmin) as broadcast f32 vectors.
#[inline(always)]
unsafe fn two_halves(p: *const u8) -> (__m512, __m512) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
    (
        _mm512_broadcastss_ps(v),
        _mm512_broadcastss_ps(_mm_movehdup_ps(v)),
    )
}

#[inline(always)]
unsafe fn half(p: *const u8) -> __m512 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32));
    _mm512_broadcastss_ps(v)
}

/// The 32 bytes at `p` in both 256-bit halves.
#[inline(always)]
unsafe fn bcast32(p: *const u8) -> __m512i {
    _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i))
}

/// Scale registers for formats with one scale per 16 elements: register i covers
/// elements 64i..64i+64, word w holds elements 64i+2w, +1, i.e. sub-block 4i + w/8.
#[inline(always)]
unsafe fn scales16(sc: __m256i) -> [__m512i; 4] {
    let s = _mm512_castsi256_si512(sc);
    arr(|i| _mm512_permutexvar_epi16(idx16(&SC16[i]), s))
}

pub struct Q2K;
pub struct Q3K;
pub struct Q6K;

impl KW for Q2K {
    // scales[16] | qs[64] | d | dmin
    const BYTES: usize = 84;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK {
        let f = _mm_set1_epi8(0x0F);
        let s = _mm_loadu_si128(p as *const __m128i);
        let sc = _mm256_cvtepu8_epi16(_mm_and_si128(s, f));
        let mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), f));
        let three = _mm512_set1_epi8(3);
        let mut q = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let qb = bcast32(p.add(16 + 32 * n));
            for h in 0..2 {
                let sh = lanes64(4 * h as i64, 4 * h as i64 + 2);
                q[2 * n + h] = _mm512_and_si512(_mm512_srlv_epi64(qb, sh), three);
            }
        }
        let (d, dmin) = two_halves(p.add(80));
        WK {
            q,
            sc: scales16(sc),
            mvec: mn,
            d,
            dmin: _mm512_sub_ps(_mm512_setzero_ps(), dmin),
        }
    }
}

impl KW for Q3K {
    // hmask[32] | qs[64] | scales[12] | d
    const BYTES: usize = 110;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK {
        // Sixteen 6-bit scales minus 32 (ggml's kmask unpacking).
        const KMASK1: u32 = 0x0303_0303;
        const KMASK2: u32 = 0x0f0f_0f0f;
        let u = p.add(96) as *const u32;
        let (a0, a1, tmp) = (
            u.read_unaligned(),
            u.add(1).read_unaligned(),
            u.add(2).read_unaligned(),
        );
        let s2 = ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
        let s3 = ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
        let s0 = (a0 & KMASK2) | ((tmp & KMASK1) << 4);
        let s1 = (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
        let s = _mm_sub_epi8(
            _mm_setr_epi32(s0 as i32, s1 as i32, s2 as i32, s3 as i32),
            _mm_set1_epi8(32),
        );
        let sc = _mm256_cvtepi8_epi16(s);
        let hb = bcast32(p);
        let (three, four) = (_mm512_set1_epi8(3), _mm512_set1_epi8(4));
        let mut q = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let qb = bcast32(p.add(32 + 32 * n));
            for h in 0..2 {
                let lo = _mm512_and_si512(
                    _mm512_srlv_epi64(qb, lanes64(4 * h as i64, 4 * h as i64 + 2)),
                    three,
                );
                // High bit of element 128n + 32j + l is bit 4n + j of hmask[l]; rotate it
                // to bit 2 (rotation keeps it inside its byte).
                let b0 = (4 * n + 2 * h) as i64;
                let rot = lanes64((2 - b0).rem_euclid(64), (1 - b0).rem_euclid(64));
                let hbit = _mm512_and_si512(_mm512_rolv_epi64(hb, rot), four);
                q[2 * n + h] = _mm512_or_si512(lo, hbit);
            }
        }
        let d = half(p.add(108));
        WK {
            q,
            sc: scales16(sc),
            mvec: sc,
            d,
            dmin: _mm512_mul_ps(d, _mm512_set1_ps(-4.0)),
        }
    }
}

impl KW for Q6K {
    // ql[128] | qh[64] | scales[16] (i8) | d
    const BYTES: usize = 210;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK {
        let f = _mm512_set1_epi8(0x0F);
        let top = _mm512_set1_epi8(0x30);
        let mut q = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let zl = _mm512_loadu_si512(p.add(64 * n) as *const __m512i);
            let hb = bcast32(p.add(128 + 32 * n));
            let h_lo = _mm512_and_si512(_mm512_sllv_epi64(hb, lanes64(4, 2)), top);
            let h_hi = _mm512_and_si512(_mm512_srlv_epi64(hb, lanes64(0, 2)), top);
            q[2 * n] = _mm512_or_si512(_mm512_and_si512(zl, f), h_lo);
            q[2 * n + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(zl, 4), f), h_hi);
        }
        let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
        let d = half(p.add(208));
        WK {
            q,
            sc: scales16(sc),
            mvec: sc,
            d,
            dmin: _mm512_mul_ps(d, _mm512_set1_ps(-32.0)),
        }
    }
}

/// Accumulates super-block `sb` of R rows against C tokens.
#[inline(always)]
unsafe fn step<F: KW, const R: usize, const C: usize>(
    acc: &mut [[__m512; C]; R],
    w: &[*const u8; R],
    a: &[*const u8; C],
    sb: usize,
) {
    let mut wv = [WK {
        q: [_mm512_setzero_si512(); 4],
        sc: [_mm512_setzero_si512(); 4],
        mvec: _mm256_setzero_si256(),
        d: _mm512_setzero_ps(),
        dmin: _mm512_setzero_ps(),
    }; R];
    unroll!(r in R => {
        wv[r] = F::unpack(w[r].add(sb * F::BYTES));
    });
    unroll!(c in C => {
        let rec = a[c].add(sb * K_BYTES);
        let bs1 = _mm256_load_si256(rec.add(off::BSUMS) as *const __m256i);
        let bs2 = _mm256_load_si256(rec.add(off::BSUMS2) as *const __m256i);
        let da = _mm512_set1_ps((rec.add(off::KD) as *const f32).read());
        let av = |i: usize| _mm512_load_si512(rec.add(64 * i) as *const __m512i);
        unroll!(r in R => {
            let wk = &wv[r];
            let z = _mm512_setzero_si512();
            // One chain per activation term (q1: vectors 0..4, q2: 4..8, see `acts`).
            let mut s = [z; 2];
            for (t, s) in s.iter_mut().enumerate() {
                for i in 0..4 {
                    *s = _mm512_dpwssd_epi32(
                        *s,
                        _mm512_maddubs_epi16(wk.q[i], av(4 * t + i)),
                        wk.sc[i],
                    );
                }
            }
            // The dots may pass 32 bits joined (Q6_K: 16 * 63 * 127 * 127 * 256), so they
            // join in float; the mins' sums fit (2 * 127 * 2032 * 256 < 2^31).
            let isum = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(s[0]),
                _mm512_set1_ps(super::acts::RESID),
                _mm512_cvtepi32_ps(s[1]),
            );
            let imin = _mm256_add_epi32(
                _mm256_slli_epi32(_mm256_madd_epi16(wk.mvec, bs1), 8),
                _mm256_madd_epi16(wk.mvec, bs2),
            );
            acc[r][c] = _mm512_fmadd_ps(isum, _mm512_mul_ps(wk.d, da), acc[r][c]);
            let minf = _mm512_zextps256_ps512(_mm256_cvtepi32_ps(imin));
            acc[r][c] = _mm512_fmadd_ps(minf, _mm512_mul_ps(wk.dmin, da), acc[r][c]);
        });
    });
}

#[inline(always)]
unsafe fn tile<F: KW, const R: usize, const C: usize>(
    w: [*const u8; R],
    a: [*const u8; C],
    nsb: usize,
) -> [[f32; C]; R] {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for sb in 0..nsb {
        step::<F, R, C>(&mut acc, &w, &a, sb);
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
unsafe fn rows<F: KW, const R: usize, const C: usize>(job: &QJob, rows: Range<usize>, t0: usize) {
    let nsb = job.k / 256;
    let a: [*const u8; C] = arr(|c| job.a_row(t0 + c));
    let mut r = rows.start;
    let pf = super::prefetch_distance();
    let end = job.w.as_ptr().wrapping_add(job.w.len());
    while r + R <= rows.end {
        let w: [*const u8; R] = arr(|i| job.w_row(r + i));
        if t0 == 0 && pf > 0 {
            super::prefetch(w[0].wrapping_add(pf), R * job.row_bytes, end);
        }
        let v = tile::<F, R, C>(w, a, nsb);
        for (i, vr) in v.iter().enumerate() {
            for (c, val) in vr.iter().enumerate() {
                job.store(t0 + c, r + i, *val);
            }
        }
        r += R;
    }
    while r < rows.end {
        let v = tile::<F, 1, C>([job.w_row(r)], a, nsb);
        for (c, val) in v[0].iter().enumerate() {
            job.store(t0 + c, r, *val);
        }
        r += 1;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn run_fmt<F: KW>(job: &QJob, rws: Range<usize>) {
    if job.t == 1 {
        rows::<F, 2, 1>(job, rws, 0);
        return;
    }
    let panel = panel_rows(job.row_bytes);
    let mut p0 = rws.start;
    while p0 < rws.end {
        let p = p0..(p0 + panel).min(rws.end);
        let mut t0 = 0;
        while job.t - t0 >= 8 {
            rows::<F, 1, 8>(job, p.clone(), t0);
            t0 += 8;
        }
        if job.t - t0 >= 4 {
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
/// AVX-512 F/BW/VNNI present; as [`QJob::run`].
pub unsafe fn run(job: &QJob, rows: Range<usize>) {
    match job.dtype {
        DType::Q2_K => run_fmt::<Q2K>(job, rows),
        DType::Q3_K => run_fmt::<Q3K>(job, rows),
        DType::Q6_K => run_fmt::<Q6K>(job, rows),
        other => unreachable!("avx512_k with {other}"),
    }
}
