//! NEON (AArch64) matmul with F32/F16/BF16 weights: f32 activations, weights widened
//! to f32 on load, `fmla`.
//!
//! F16 widens with `fcvtl`/`fcvtl2` (base ARMv8-A; written as inline assembly because
//! `std::arch`'s `float16x4_t` intrinsics are unstable); BF16 is the top half of an f32,
//! so `ushll #16`. Tiles of R rows x C tokens, 8 elements per step in two accumulators
//! per (row, token) (8 independent FMA chains even for one token: `fmla` has ~4 cycles
//! latency and two pipes). Elements past the last multiple of 8 are added in scalar
//! after the lane sum, as the x86 AVX2 kernel does; per (row, token) the operations
//! depend only on `k`, so results do not depend on the batch.

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use super::float::panel_rows;
use super::{arr, unroll, FJob};
use crate::dtype::DType;

/// A float weight type, loaded and widened to f32 lanes.
trait FloatW {
    const SIZE: usize;
    /// Elements `0..4` and `4..8` at `p`.
    unsafe fn load8(p: *const u8) -> (float32x4_t, float32x4_t);
    unsafe fn scalar(p: *const u8) -> f32;
}

struct F32;
struct F16;
struct Bf16;

impl FloatW for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> (float32x4_t, float32x4_t) {
        let p = p as *const f32;
        (vld1q_f32(p), vld1q_f32(p.add(4)))
    }
    #[inline(always)]
    unsafe fn scalar(p: *const u8) -> f32 {
        (p as *const f32).read_unaligned()
    }
}

impl FloatW for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> (float32x4_t, float32x4_t) {
        let h = vld1q_u16(p as *const u16);
        let (lo, hi): (float32x4_t, float32x4_t);
        // Exact f16 -> f32 (subnormals, inf, NaN included).
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack, preserves_flags)
        );
        (lo, hi)
    }
    #[inline(always)]
    unsafe fn scalar(p: *const u8) -> f32 {
        super::neon::f16_to_f32((p as *const u16).read_unaligned())
    }
}

impl FloatW for Bf16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> (float32x4_t, float32x4_t) {
        let h = vld1q_u16(p as *const u16);
        (
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
            vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
        )
    }
    #[inline(always)]
    unsafe fn scalar(p: *const u8) -> f32 {
        half::bf16::from_bits((p as *const u16).read_unaligned()).to_f32()
    }
}

/// R rows x C tokens: returns the R*C dot products.
#[inline(always)]
unsafe fn tile<W: FloatW, const R: usize, const C: usize>(
    w: [*const u8; R],
    x: [*const f32; C],
    k: usize,
) -> [[f32; C]; R] {
    let z = vdupq_n_f32(0.0);
    let mut acc = [[(z, z); C]; R];
    let mut wv = [(z, z); R];
    let full = k / 8 * 8;
    let mut k0 = 0;
    while k0 < full {
        unroll!(r in R => {
            wv[r] = W::load8(w[r].add(k0 * W::SIZE));
        });
        unroll!(c in C => {
            let x0 = vld1q_f32(x[c].add(k0));
            let x1 = vld1q_f32(x[c].add(k0 + 4));
            unroll!(r in R => {
                acc[r][c].0 = vfmaq_f32(acc[r][c].0, wv[r].0, x0);
                acc[r][c].1 = vfmaq_f32(acc[r][c].1, wv[r].1, x1);
            });
        });
        k0 += 8;
    }
    let mut out = [[0f32; C]; R];
    unroll!(r in R => {
        unroll!(c in C => {
            let mut s = vaddvq_f32(vaddq_f32(acc[r][c].0, acc[r][c].1));
            for i in full..k {
                s += W::scalar(w[r].add(i * W::SIZE)) * *x[c].add(i);
            }
            out[r][c] = s;
        });
    });
    out
}

#[inline(always)]
unsafe fn rows<W: FloatW, const R: usize, const C: usize>(
    job: &FJob,
    rows: Range<usize>,
    t0: usize,
) {
    let rb = job.k * W::SIZE;
    let base = job.w.as_ptr();
    let x: [*const f32; C] = arr(|c| job.x.as_ptr().add((t0 + c) * job.k));
    let mut r = rows.start;
    while r + R <= rows.end {
        let w: [*const u8; R] = arr(|i| base.add((r + i) * rb));
        let v = tile::<W, R, C>(w, x, job.k);
        for (i, vr) in v.iter().enumerate() {
            for (c, val) in vr.iter().enumerate() {
                *job.out.0.add((t0 + c) * job.m + r + i) = *val;
            }
        }
        r += R;
    }
    while r < rows.end {
        let v = tile::<W, 1, C>([base.add(r * rb)], x, job.k);
        for (c, val) in v[0].iter().enumerate() {
            *job.out.0.add((t0 + c) * job.m + r) = *val;
        }
        r += 1;
    }
}

#[target_feature(enable = "neon")]
unsafe fn run_fmt<W: FloatW>(job: &FJob, rws: Range<usize>) {
    if job.t == 1 {
        rows::<W, 4, 1>(job, rws, 0);
        return;
    }
    let panel = panel_rows(job.k * W::SIZE);
    let mut p0 = rws.start;
    while p0 < rws.end {
        let p = p0..(p0 + panel).min(rws.end);
        let mut t0 = 0;
        while job.t - t0 >= 2 {
            rows::<W, 4, 2>(job, p.clone(), t0);
            t0 += 2;
        }
        if job.t - t0 >= 1 {
            rows::<W, 4, 1>(job, p.clone(), t0);
        }
        p0 = p.end;
    }
}

/// Computes `rows` of a float-weight matmul for every token with NEON.
///
/// # Safety
/// As [`super::QJob::run`] (NEON is part of every AArch64 CPU).
pub(crate) unsafe fn run(job: &FJob, rows: Range<usize>) {
    match job.dtype {
        DType::F32 => run_fmt::<F32>(job, rows),
        DType::F16 => run_fmt::<F16>(job, rows),
        DType::BF16 => run_fmt::<Bf16>(job, rows),
        other => unreachable!("neon_float with {other}"),
    }
}
