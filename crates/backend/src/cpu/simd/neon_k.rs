//! NEON kernels (AArch64) for the K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).
//!
//! A super-block unpacks once per row into sixteen 16-byte registers of *signed* quants
//! (one per 16-element group, in the activation record's natural order: Q3_K and Q6_K
//! with their offsets -4 / -32 applied, so they need no min term), sixteen scales and
//! the mins; every token of the tile then reuses it. Per group `dot(q, q1)` and
//! `dot(q, q2)` (see [`super::neon::Dot`]) are multiplied by the group's scale in i32
//! lanes (`mla`); Q4_K/Q5_K share a scale per 32 elements, so their two groups go
//! through one accumulator before the `mla`.
//!
//! The float step per super-block is the scalar reference's, operation for operation:
//! `acc += (d * u) * (256 f(s1) + f(s2)) - (dmin * u) * f(imin)`, with `s1`, `s2` the
//! scaled q1/q2 dots (kept apart: `256 s1 + s2` can pass 32 bits, e.g. Q6_K
//! 128 * 32 * 127 * 256 * 257) and `imin = sum mn[g] * (256 bsum1[g] + bsum2[g])`
//! (at most 63 * 16 * 522_000 < 2^31). The integer sums are exact whatever the lane
//! order, so these kernels agree with the scalar path bit for bit.

use std::arch::aarch64::*;
use std::ops::Range;

use super::acts::{off, K_BYTES, RESID};
use super::float::panel_rows;
use super::neon::{f16_at, f32_at, Dot, Mull, Sdot, RESID_I};
use super::{arr, unroll, QJob};
use crate::dtype::DType;
use crate::quant::blocks::{scales_mins_k4, scales_q3k, K_SCALE_SIZE};

/// One unpacked super-block.
#[derive(Clone, Copy)]
struct WK {
    /// Group g = elements 16g..16g+16, signed.
    q: [int8x16_t; 16],
    /// Scale of group g.
    sc: [i32; 16],
    /// Min of groups 4i..4i+4 (zero for Q3_K/Q6_K).
    mn: [int32x4_t; 4],
    d: f32,
    dmin: f32,
}

trait KN {
    const BYTES: usize;
    /// The format has mins (`dmin * mn * sum(x)` term).
    const HAS_MIN: bool;
    /// Groups 2i and 2i+1 share a scale (one per 32 elements: Q4_K, Q5_K).
    const PAIRED: bool;
    unsafe fn unpack(p: *const u8) -> WK;
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> uint8x16_t {
    vld1q_u8(p)
}

/// `(x >> s) & mask` per byte, run-time `s`.
#[inline(always)]
unsafe fn shr_mask(x: uint8x16_t, s: u32, mask: u8) -> uint8x16_t {
    vandq_u8(vshlq_u8(x, vdupq_n_s8(-(s as i8))), vdupq_n_u8(mask))
}

/// 0xFF in the bytes of `x` that have bit `b` set.
#[inline(always)]
unsafe fn bit_set(x: uint8x16_t, b: u32) -> uint8x16_t {
    vtstq_u8(x, vdupq_n_u8(1u8 << b))
}

#[inline(always)]
unsafe fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

#[inline(always)]
unsafe fn k_scales12(p: *const u8) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    std::ptr::copy_nonoverlapping(p, s.as_mut_ptr(), K_SCALE_SIZE);
    s
}

#[inline(always)]
unsafe fn mins(mn: &[i32; 16]) -> [int32x4_t; 4] {
    arr(|i| vld1q_s32(mn.as_ptr().add(4 * i)))
}

const NO_MINS: [i32; 16] = [0; 16];

struct Q2K;
struct Q3K;
struct Q4K;
struct Q5K;
struct Q6K;

impl KN for Q2K {
    // scales[16] | qs[64] | d | dmin
    const BYTES: usize = 84;
    const HAS_MIN: bool = true;
    const PAIRED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK {
        let sc: [i32; 16] = arr(|g| (*p.add(g) & 0xF) as i32);
        let mn: [i32; 16] = arr(|g| (*p.add(g) >> 4) as i32);
        // Group g = 8n + 2j + h: bits 2j of qs[32n + 16h ..].
        let q: [int8x16_t; 16] = arr(|g| {
            let (n, j, h) = (g / 8, (g / 2) % 4, g % 2);
            s8(shr_mask(ld(p.add(16 + 32 * n + 16 * h)), 2 * j as u32, 3))
        });
        WK {
            q,
            sc,
            mn: mins(&mn),
            d: f16_at(p.add(80)),
            dmin: f16_at(p.add(82)),
        }
    }
}

impl KN for Q3K {
    // hmask[32] | qs[64] | scales[12] | d
    const BYTES: usize = 110;
    const HAS_MIN: bool = false;
    const PAIRED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK {
        let s8s = scales_q3k(&k_scales12(p.add(96)));
        let sc: [i32; 16] = arr(|g| s8s[g] as i32);
        // Group g = 8n + 2j + h: 2 low bits from bits 2j of qs[32n + 16h ..], minus 4
        // where bit 4n + j of hmask[16h ..] is clear.
        let q: [int8x16_t; 16] = arr(|g| {
            let (n, j, h) = (g / 8, (g / 2) % 4, g % 2);
            let lo = shr_mask(ld(p.add(32 + 32 * n + 16 * h)), 2 * j as u32, 3);
            let set = bit_set(ld(p.add(16 * h)), (4 * n + j) as u32);
            s8(vsubq_u8(lo, vbicq_u8(vdupq_n_u8(4), set)))
        });
        WK {
            q,
            sc,
            mn: mins(&NO_MINS),
            d: f16_at(p.add(108)),
            dmin: 0.0,
        }
    }
}

/// Scales and mins per group (each sub-block's twice) of a Q4_K/Q5_K block.
#[inline(always)]
unsafe fn k4_scales(p: *const u8) -> ([i32; 16], [i32; 16]) {
    let sm = scales_mins_k4(&k_scales12(p));
    (arr(|g| sm[g / 2] as i32), arr(|g| sm[8 + g / 2] as i32))
}

impl KN for Q4K {
    // d | dmin | scales[12] | qs[128]
    const BYTES: usize = 144;
    const HAS_MIN: bool = true;
    const PAIRED: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK {
        let (sc, mn) = k4_scales(p.add(4));
        // Group g = 4j + 2s + h: nibble s of qs[32j + 16h ..].
        let q: [int8x16_t; 16] = arr(|g| {
            let (j, s, h) = (g / 4, (g / 2) % 2, g % 2);
            s8(shr_mask(
                ld(p.add(16 + 32 * j + 16 * h)),
                4 * s as u32,
                0x0F,
            ))
        });
        WK {
            q,
            sc,
            mn: mins(&mn),
            d: f16_at(p),
            dmin: f16_at(p.add(2)),
        }
    }
}

impl KN for Q5K {
    // d | dmin | scales[12] | qh[32] | qs[128]
    const BYTES: usize = 176;
    const HAS_MIN: bool = true;
    const PAIRED: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK {
        let (sc, mn) = k4_scales(p.add(4));
        // Group g = 4j + 2s + h: nibble s of qs[32j + 16h ..], fifth bit from bit
        // 2j + s of qh[16h ..].
        let q: [int8x16_t; 16] = arr(|g| {
            let (j, s, h) = (g / 4, (g / 2) % 2, g % 2);
            let lo = shr_mask(ld(p.add(48 + 32 * j + 16 * h)), 4 * s as u32, 0x0F);
            let top = vandq_u8(
                bit_set(ld(p.add(16 + 16 * h)), (2 * j + s) as u32),
                vdupq_n_u8(0x10),
            );
            s8(vorrq_u8(lo, top))
        });
        WK {
            q,
            sc,
            mn: mins(&mn),
            d: f16_at(p),
            dmin: f16_at(p.add(2)),
        }
    }
}

impl KN for Q6K {
    // ql[128] | qh[64] | scales[16] (i8) | d
    const BYTES: usize = 210;
    const HAS_MIN: bool = false;
    const PAIRED: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> WK {
        let sc: [i32; 16] = arr(|g| *p.add(192 + g) as i8 as i32);
        // Group g = 8n + 2c + h: nibble c / 2 of ql[64n + 32 (c % 2) + 16h ..], top two
        // bits from bits 2c of qh[32n + 16h ..], minus 32.
        let q: [int8x16_t; 16] = arr(|g| {
            let (n, c, h) = (g / 8, (g / 2) % 4, g % 2);
            let lo = shr_mask(
                ld(p.add(64 * n + 32 * (c % 2) + 16 * h)),
                4 * (c / 2) as u32,
                0x0F,
            );
            let top = vshlq_n_u8::<4>(shr_mask(ld(p.add(128 + 32 * n + 16 * h)), 2 * c as u32, 3));
            s8(vsubq_u8(vorrq_u8(lo, top), vdupq_n_u8(32)))
        });
        WK {
            q,
            sc,
            mn: mins(&NO_MINS),
            d: f16_at(p.add(208)),
            dmin: 0.0,
        }
    }
}

/// `sum mn[g] * (256 bsum1[g] + bsum2[g])` of one activation record.
#[inline(always)]
unsafe fn min_dot(w: &WK, rec: *const u8) -> i32 {
    let mut m = vdupq_n_s32(0);
    unroll!(h in 2 => {
        let b1 = vld1q_s16(rec.add(off::BSUMS + 16 * h) as *const i16);
        let b2 = vld1q_s16(rec.add(off::BSUMS2 + 16 * h) as *const i16);
        let lo = vmlaq_n_s32(
            vmovl_s16(vget_low_s16(b2)),
            vmovl_s16(vget_low_s16(b1)),
            RESID_I,
        );
        let hi = vmlaq_n_s32(vmovl_high_s16(b2), vmovl_high_s16(b1), RESID_I);
        m = vmlaq_s32(m, lo, w.mn[2 * h]);
        m = vmlaq_s32(m, hi, w.mn[2 * h + 1]);
    });
    vaddvq_s32(m)
}

/// R rows x C tokens over `nsb` super-blocks.
#[inline(always)]
unsafe fn tile<F: KN, D: Dot, const R: usize, const C: usize>(
    w: [*const u8; R],
    a: [*const u8; C],
    nsb: usize,
) -> [[f32; C]; R] {
    let zero = vdupq_n_s32(0);
    let mut acc = [[0f32; C]; R];
    for sb in 0..nsb {
        unroll!(r in R => {
            let wk = F::unpack(w[r].add(sb * F::BYTES));
            unroll!(c in C => {
                let rec = a[c].add(sb * K_BYTES);
                let a1 = |g: usize| vld1q_s8(rec.add(16 * g) as *const i8);
                let a2 = |g: usize| vld1q_s8(rec.add(off::K_Q2 + 16 * g) as *const i8);
                let (mut s1, mut s2) = (zero, zero);
                if F::PAIRED {
                    unroll!(i in 8 => {
                        let (g0, g1) = (2 * i, 2 * i + 1);
                        let d1 = D::dot(D::dot(zero, wk.q[g0], a1(g0)), wk.q[g1], a1(g1));
                        let d2 = D::dot(D::dot(zero, wk.q[g0], a2(g0)), wk.q[g1], a2(g1));
                        s1 = vmlaq_n_s32(s1, d1, wk.sc[g0]);
                        s2 = vmlaq_n_s32(s2, d2, wk.sc[g0]);
                    });
                } else {
                    unroll!(g in 16 => {
                        s1 = vmlaq_n_s32(s1, D::dot(zero, wk.q[g], a1(g)), wk.sc[g]);
                        s2 = vmlaq_n_s32(s2, D::dot(zero, wk.q[g], a2(g)), wk.sc[g]);
                    });
                }
                let imin = if F::HAS_MIN { min_dot(&wk, rec) } else { 0 };
                let u = f32_at(rec.add(off::KD));
                let isum = vaddvq_s32(s1) as f32 * RESID + vaddvq_s32(s2) as f32;
                acc[r][c] += (wk.d * u) * isum - (wk.dmin * u) * imin as f32;
            });
        });
    }
    acc
}

#[inline(always)]
unsafe fn rows<F: KN, D: Dot, const R: usize, const C: usize>(
    job: &QJob,
    rows: Range<usize>,
    t0: usize,
) {
    let nsb = job.k / 256;
    let a: [*const u8; C] = arr(|c| job.a_row(t0 + c));
    let mut r = rows.start;
    while r + R <= rows.end {
        let w: [*const u8; R] = arr(|i| job.w_row(r + i));
        let v = tile::<F, D, R, C>(w, a, nsb);
        for (i, vr) in v.iter().enumerate() {
            for (c, val) in vr.iter().enumerate() {
                job.store(t0 + c, r + i, *val);
            }
        }
        r += R;
    }
    while r < rows.end {
        let v = tile::<F, D, 1, C>([job.w_row(r)], a, nsb);
        for (c, val) in v[0].iter().enumerate() {
            job.store(t0 + c, r, *val);
        }
        r += 1;
    }
}

/// One row per tile (the unpacked super-block is 16 registers); GEMM runs token chunks
/// of 4, 2, 1 over panels of rows kept in cache.
#[inline(always)]
unsafe fn drive<F: KN, D: Dot>(job: &QJob, rws: Range<usize>) {
    if job.t == 1 {
        rows::<F, D, 1, 1>(job, rws, 0);
        return;
    }
    let panel = panel_rows(job.row_bytes);
    let mut p0 = rws.start;
    while p0 < rws.end {
        let p = p0..(p0 + panel).min(rws.end);
        let mut t0 = 0;
        while job.t - t0 >= 4 {
            rows::<F, D, 1, 4>(job, p.clone(), t0);
            t0 += 4;
        }
        if job.t - t0 >= 2 {
            rows::<F, D, 1, 2>(job, p.clone(), t0);
            t0 += 2;
        }
        if job.t - t0 >= 1 {
            rows::<F, D, 1, 1>(job, p.clone(), t0);
        }
        p0 = p.end;
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn run_sdot<F: KN>(job: &QJob, rows: Range<usize>) {
    drive::<F, Sdot>(job, rows)
}

#[target_feature(enable = "neon")]
unsafe fn run_mull<F: KN>(job: &QJob, rows: Range<usize>) {
    drive::<F, Mull>(job, rows)
}

unsafe fn run_fmt<F: KN>(job: &QJob, rows: Range<usize>, dotprod: bool) {
    if dotprod {
        run_sdot::<F>(job, rows)
    } else {
        run_mull::<F>(job, rows)
    }
}

/// # Safety
/// As [`super::neon::run`].
pub(super) unsafe fn run(job: &QJob, rows: Range<usize>, dotprod: bool) {
    match job.dtype {
        DType::Q2_K => run_fmt::<Q2K>(job, rows, dotprod),
        DType::Q3_K => run_fmt::<Q3K>(job, rows, dotprod),
        DType::Q4_K => run_fmt::<Q4K>(job, rows, dotprod),
        DType::Q5_K => run_fmt::<Q5K>(job, rows, dotprod),
        DType::Q6_K => run_fmt::<Q6K>(job, rows, dotprod),
        other => unreachable!("neon_k with {other}"),
    }
}
