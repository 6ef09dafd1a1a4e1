//! AVX2 kernels for the K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).
//!
//! A super-block unpacks once per row into eight 32-byte chunks of unsigned quants (in
//! the activation record's order), eight registers of 16-bit scales (one per word) and
//! the min/offset vector, kept on the stack (L1) and reused by every token:
//! `vpmaddubsw` then `vpmaddwd` by the scales, as ggml's AVX2 dots. Offsets and mins
//! follow the AVX-512 kernel (see `avx512_k`).

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{off, K_BYTES};
use super::float::panel_rows;
use super::{arr, unroll, QJob};
use crate::dtype::DType;
use crate::quant::blocks::{scales_mins_k4, scales_q3k, K_SCALE_SIZE};

/// One unpacked super-block.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct WK2 {
    q: [__m256i; 8],
    sc: [__m256i; 8],
    mvec: __m256i,
    d: f32,
    dmin: f32,
}

pub trait KW2 {
    const BYTES: usize;
    unsafe fn unpack(p: *const u8) -> WK2;
}

/// Scale registers from one scale per 16 elements in chunk order (`s[2i]`, `s[2i+1]`
/// for chunk i).
#[inline(always)]
unsafe fn scale_regs(s: &[i16; 16]) -> [__m256i; 8] {
    let mut r = [_mm256_setzero_si256(); 8];
    for (i, r) in r.iter_mut().enumerate() {
        *r = _mm256_set_m128i(_mm_set1_epi16(s[2 * i + 1]), _mm_set1_epi16(s[2 * i]));
    }
    r
}

#[inline(always)]
unsafe fn ld32(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline(always)]
fn f16_at(p: *const u8) -> f32 {
    // SAFETY: callers pass a pointer inside the block.
    half::f16::from_bits(unsafe { (p as *const u16).read_unaligned() }).to_f32()
}

#[inline(always)]
unsafe fn k_scales12(p: *const u8) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    std::ptr::copy_nonoverlapping(p, s.as_mut_ptr(), K_SCALE_SIZE);
    s
}

/// `(x >> s) & mask` per byte for a run-time shift `s`.
#[inline(always)]
unsafe fn shr_mask(x: __m256i, s: u32, mask: i8) -> __m256i {
    _mm256_and_si256(
        _mm256_srl_epi16(x, _mm_cvtsi32_si128(s as i32)),
        _mm256_set1_epi8(mask),
    )
}

/// Bit `b` of each byte moved to bit `to`.
#[inline(always)]
unsafe fn bit_to(x: __m256i, b: u32, to: u32) -> __m256i {
    let m = _mm256_set1_epi8((1u8 << to) as i8);
    if b >= to {
        _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128((b - to) as i32)), m)
    } else {
        _mm256_and_si256(_mm256_sll_epi16(x, _mm_cvtsi32_si128((to - b) as i32)), m)
    }
}

pub struct Q2K;
pub struct Q3K;
pub struct Q4K;
pub struct Q5K;
pub struct Q6K;

impl KW2 for Q2K {
    const BYTES: usize = 84;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK2 {
        let mut sc = [0i16; 16];
        let mut mn = [0i16; 16];
        for g in 0..16 {
            sc[g] = (*p.add(g) & 0xF) as i16;
            mn[g] = (*p.add(g) >> 4) as i16;
        }
        // chunk i = elements 32i..32i+32: bits 2j of qs[32n + l], n = i/4, j = i%4.
        let mut q = [_mm256_setzero_si256(); 8];
        for (i, q) in q.iter_mut().enumerate() {
            *q = shr_mask(ld32(p.add(16 + 32 * (i / 4))), 2 * (i as u32 % 4), 3);
        }
        WK2 {
            q,
            sc: scale_regs(&sc),
            mvec: _mm256_loadu_si256(mn.as_ptr() as *const __m256i),
            d: f16_at(p.add(80)),
            dmin: -f16_at(p.add(82)),
        }
    }
}

impl KW2 for Q3K {
    const BYTES: usize = 110;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK2 {
        let s8 = scales_q3k(&k_scales12(p.add(96)));
        let sc: [i16; 16] = arr(|g| s8[g] as i16);
        let hm = ld32(p);
        let mut q = [_mm256_setzero_si256(); 8];
        for (i, q) in q.iter_mut().enumerate() {
            let (n, j) = (i / 4, i as u32 % 4);
            let lo = shr_mask(ld32(p.add(32 + 32 * n)), 2 * j, 3);
            *q = _mm256_or_si256(lo, bit_to(hm, 4 * n as u32 + j, 2));
        }
        let d = f16_at(p.add(108));
        WK2 {
            q,
            sc: scale_regs(&sc),
            mvec: _mm256_loadu_si256(sc.as_ptr() as *const __m256i),
            d,
            dmin: -4.0 * d,
        }
    }
}

/// Scales per 16 elements (a sub-block's scale twice) and the min vector of a
/// Q4_K/Q5_K block.
#[inline(always)]
unsafe fn k4_scales(p: *const u8) -> ([i16; 16], __m256i) {
    let sm = scales_mins_k4(&k_scales12(p));
    let sc: [i16; 16] = arr(|x| sm[x / 2] as i16);
    let mn: [i16; 16] = arr(|x| sm[8 + x / 2] as i16);
    (sc, _mm256_loadu_si256(mn.as_ptr() as *const __m256i))
}

impl KW2 for Q4K {
    const BYTES: usize = 144;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK2 {
        let (sc, mvec) = k4_scales(p.add(4));
        // Sub-block s: nibble s % 2 of qs chunk s / 2.
        let mut q = [_mm256_setzero_si256(); 8];
        for (s, q) in q.iter_mut().enumerate() {
            *q = shr_mask(ld32(p.add(16 + 32 * (s / 2))), 4 * (s as u32 % 2), 0x0F);
        }
        WK2 {
            q,
            sc: scale_regs(&sc),
            mvec,
            d: f16_at(p),
            dmin: -f16_at(p.add(2)),
        }
    }
}

impl KW2 for Q5K {
    const BYTES: usize = 176;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK2 {
        let (sc, mvec) = k4_scales(p.add(4));
        let qh = ld32(p.add(16));
        let mut q = [_mm256_setzero_si256(); 8];
        for (s, q) in q.iter_mut().enumerate() {
            let lo = shr_mask(ld32(p.add(48 + 32 * (s / 2))), 4 * (s as u32 % 2), 0x0F);
            *q = _mm256_or_si256(lo, bit_to(qh, s as u32, 4));
        }
        WK2 {
            q,
            sc: scale_regs(&sc),
            mvec,
            d: f16_at(p),
            dmin: -f16_at(p.add(2)),
        }
    }
}

impl KW2 for Q6K {
    const BYTES: usize = 210;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK2 {
        let sc: [i16; 16] = arr(|g| *p.add(192 + g) as i8 as i16);
        // chunk i = 128n + 32c: low nibbles (c < 2) or high nibbles (c >= 2) of
        // ql[64n + 32(c%2) ..], top bits 2c of qh[32n ..].
        let mut q = [_mm256_setzero_si256(); 8];
        for (i, q) in q.iter_mut().enumerate() {
            let (n, c) = (i / 4, i as u32 % 4);
            let lo = shr_mask(
                ld32(p.add(64 * n + 32 * (c as usize % 2))),
                4 * (c / 2),
                0x0F,
            );
            let hb = ld32(p.add(128 + 32 * n));
            let top = if 2 * c >= 4 {
                _mm256_and_si256(
                    _mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32 - 4)),
                    _mm256_set1_epi8(0x30),
                )
            } else {
                _mm256_and_si256(
                    _mm256_sll_epi16(hb, _mm_cvtsi32_si128(4 - 2 * c as i32)),
                    _mm256_set1_epi8(0x30),
                )
            };
            *q = _mm256_or_si256(lo, top);
        }
        let d = f16_at(p.add(208));
        WK2 {
            q,
            sc: scale_regs(&sc),
            mvec: _mm256_loadu_si256(sc.as_ptr() as *const __m256i),
            d,
            dmin: -32.0 * d,
        }
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn tile<F: KW2, const R: usize, const C: usize>(
    w: [*const u8; R],
    a: [*const u8; C],
    nsb: usize,
) -> [[f32; C]; R] {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for sb in 0..nsb {
        unroll!(r in R => {
            let wk = F::unpack(w[r].add(sb * F::BYTES));
            unroll!(c in C => {
                let rec = a[c].add(sb * K_BYTES);
                // Per activation term t (q1, q2): sum over chunks of madd(maddubs(q, a),
                // scales), two chains each.
                let mut s = [[_mm256_setzero_si256(); 2]; 2];
                for (t, base) in [0, off::K_Q2].into_iter().enumerate() {
                    for i in (0..8).step_by(2) {
                        let a0 = _mm256_load_si256(rec.add(base + 32 * i) as *const __m256i);
                        let a1 = _mm256_load_si256(rec.add(base + 32 * i + 32) as *const __m256i);
                        s[t][0] = _mm256_add_epi32(
                            s[t][0],
                            _mm256_madd_epi16(_mm256_maddubs_epi16(wk.q[i], a0), wk.sc[i]),
                        );
                        s[t][1] = _mm256_add_epi32(
                            s[t][1],
                            _mm256_madd_epi16(_mm256_maddubs_epi16(wk.q[i + 1], a1), wk.sc[i + 1]),
                        );
                    }
                }
                let bs1 = _mm256_load_si256(rec.add(off::BSUMS) as *const __m256i);
                let bs2 = _mm256_load_si256(rec.add(off::BSUMS2) as *const __m256i);
                // The mins' sums fit 32 bits joined: 2 * 127 * 2032 * 256 < 2^31.
                let imin = _mm256_add_epi32(
                    _mm256_slli_epi32(_mm256_madd_epi16(wk.mvec, bs1), 8),
                    _mm256_madd_epi16(wk.mvec, bs2),
                );
                let da = (rec.add(off::KD) as *const f32).read();
                // The dots may not (Q6_K: 16 * 63 * 127 * 127 * 256 > 2^31): join in float.
                let isum = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(_mm256_add_epi32(s[0][0], s[0][1])),
                    _mm256_set1_ps(super::acts::RESID),
                    _mm256_cvtepi32_ps(_mm256_add_epi32(s[1][0], s[1][1])),
                );
                acc[r][c] = _mm256_fmadd_ps(isum, _mm256_set1_ps(wk.d * da), acc[r][c]);
                acc[r][c] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(imin),
                    _mm256_set1_ps(wk.dmin * da),
                    acc[r][c],
                );
            });
        });
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
unsafe fn rows<F: KW2, const R: usize, const C: usize>(job: &QJob, rows: Range<usize>, t0: usize) {
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

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_fmt<F: KW2>(job: &QJob, rws: Range<usize>) {
    if job.t == 1 {
        rows::<F, 1, 1>(job, rws, 0);
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
            rows::<F, 1, 1>(job, p.clone(), t0);
        }
        p0 = p.end;
    }
}

/// # Safety
/// AVX2/FMA/F16C present; as [`QJob::run`].
pub unsafe fn run(job: &QJob, rows: Range<usize>) {
    match job.dtype {
        DType::Q2_K => run_fmt::<Q2K>(job, rows),
        DType::Q3_K => run_fmt::<Q3K>(job, rows),
        DType::Q4_K => run_fmt::<Q4K>(job, rows),
        DType::Q5_K => run_fmt::<Q5K>(job, rows),
        DType::Q6_K => run_fmt::<Q6K>(job, rows),
        other => unreachable!("avx2_k with {other}"),
    }
}
