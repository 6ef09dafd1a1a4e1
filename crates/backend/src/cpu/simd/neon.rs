//! NEON kernels (AArch64) for the 32-wide quantized formats (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0), and the pieces the other NEON kernels share: the int8 dot product in its two
//! forms and the entry point that picks a kernel by weight type.
//!
//! Two integer dot products, chosen at run time (`Isa::NeonDot` / `Isa::Neon`):
//! * `sdot` (ARMv8.2 `dotprod`, e.g. Cortex-A55/A76, Neoverse N1, Apple M1, Graviton 2+):
//!   16 int8 x int8 products summed 4 at a time into 4 i32 lanes, one instruction.
//!   `std::arch` keeps `vdotq_s32` unstable, so it is one line of inline assembly in a
//!   `#[target_feature(enable = "dotprod")]` function (the assembler accepts `sdot`
//!   only there, and it is inlined only into kernels compiled with that feature).
//! * plain NEON (every ARMv8-A core, e.g. Cortex-A53/A72): `smull`/`smull2` (8 x 8 -> 16
//!   bit, |product| <= 128 * 128, fits i16) and `sadalp` (pairwise add and accumulate
//!   into i32), ggml's pre-dotprod sequence.
//!
//! Both leave the same *total* over the 4 lanes (which lane holds which products
//! differs); the kernels only ever use lane totals or scale all lanes alike.
//!
//! Weights are unpacked to *signed* int8 (Q4_0: nibble - 8, Q5_0: 5-bit - 16), because
//! `sdot`/`smull` are signed x signed: no offset term is needed, unlike the x86
//! kernels' unsigned x signed `vpmaddubsw`/`vpdpbusd`. Q4_1/Q5_1 keep their unsigned
//! 0..31 values (they fit i8) and add `m * sum(x)` from the activation record.
//!
//! Activations: the two-term `Q32` records of [`super::acts`] (`x ~ u (256 q1 + q2)`);
//! per block `e = 256 dot(w, q1) + dot(w, q2)` is joined in i32 lanes (at most
//! 8 * 128 * 127 * 257 < 2^31 per lane), converted once and FMA'd with `d_w * u`.
//! Per (row, token) the sequence of float operations depends only on `k`, never on the
//! tile it runs in, so a row's result is the same alone or in any batch.

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use super::acts::{off, Q32_GROUP_BYTES, RESID};
use super::float::panel_rows;
use super::{arr, unroll, QJob};
use crate::dtype::DType;

/// An int8 dot-product step: adds the 16 products `a[i] * b[i]` into the 4 lanes of
/// `acc` (the split over lanes is the implementation's; only totals are meaningful).
pub(super) trait Dot {
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// `sdot` (needs the `dotprod` feature: only called from kernels compiled with it).
pub(super) struct Sdot;
/// `smull` + `sadalp` (baseline NEON).
pub(super) struct Mull;

/// One `sdot`: lane i += a[4i..4i+4] . b[4i..4i+4].
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    asm!(
        "sdot {r:v}.4s, {a:v}.16b, {b:v}.16b",
        r = inout(vreg) r,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        sdot(acc, a, b)
    }
}

impl Dot for Mull {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

/// The activation record's `e = RESID q1 + q2` unit, as an integer multiplier.
pub(super) const RESID_I: i32 = RESID as i32;

/// f16 bits widened to f32 with one `fcvt` (base ARMv8-A FP, exact for every value).
/// `half`'s conversion checks for FEAT_FP16 at run time and is a call, once per
/// block scale, which the kernels cannot afford.
#[inline(always)]
pub(super) fn f16_to_f32(bits: u16) -> f32 {
    let r: f32;
    // SAFETY: `fcvt` touches only the two registers named.
    unsafe {
        asm!(
            "fcvt {r:s}, {h:h}",
            r = lateout(vreg) r,
            h = in(vreg) bits,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    r
}

/// Little-endian f16 at `p`, widened.
#[inline(always)]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    f16_to_f32((p as *const u16).read_unaligned())
}

#[inline(always)]
pub(super) unsafe fn f32_at(p: *const u8) -> f32 {
    (p as *const f32).read_unaligned()
}

#[inline(always)]
unsafe fn u32_at(p: *const u8) -> u32 {
    (p as *const u32).read_unaligned()
}

/// 0xFF in byte i (< 16) where bit i of `x` is set.
#[inline(always)]
pub(super) unsafe fn bytes_from_bits16(x: u32) -> uint8x16_t {
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let b = vcombine_u8(vdup_n_u8(x as u8), vdup_n_u8((x >> 8) as u8));
    vtstq_u8(b, vld1q_u8(BIT.as_ptr()))
}

/// One unpacked block: signed quants of elements 0..16 and 16..32, scale, min.
#[derive(Clone, Copy)]
struct W32 {
    lo: int8x16_t,
    hi: int8x16_t,
    d: f32,
    m: f32,
}

trait Q32N {
    const BYTES: usize;
    /// `m != 0` possible (the `m * sum(x)` term is needed).
    const HAS_MIN: bool;
    unsafe fn unpack(p: *const u8) -> W32;
}

/// Low and high nibbles of the 16 bytes at `p` (elements 0..16 and 16..32).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(p);
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// Adds the fifth bits `qh` (bit i for element i) to unpacked nibbles.
#[inline(always)]
unsafe fn fifth(lo: uint8x16_t, hi: uint8x16_t, qh: u32) -> (uint8x16_t, uint8x16_t) {
    let b = vdupq_n_u8(0x10);
    (
        vorrq_u8(lo, vandq_u8(bytes_from_bits16(qh), b)),
        vorrq_u8(hi, vandq_u8(bytes_from_bits16(qh >> 16), b)),
    )
}

#[inline(always)]
unsafe fn signed_minus(v: uint8x16_t, o: u8) -> int8x16_t {
    vreinterpretq_s8_u8(vsubq_u8(v, vdupq_n_u8(o)))
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;

impl Q32N for Q4_0 {
    const BYTES: usize = 18;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> W32 {
        let (lo, hi) = nibbles(p.add(2));
        W32 {
            lo: signed_minus(lo, 8),
            hi: signed_minus(hi, 8),
            d: f16_at(p),
            m: 0.0,
        }
    }
}

impl Q32N for Q4_1 {
    const BYTES: usize = 20;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> W32 {
        let (lo, hi) = nibbles(p.add(4));
        W32 {
            lo: vreinterpretq_s8_u8(lo),
            hi: vreinterpretq_s8_u8(hi),
            d: f16_at(p),
            m: f16_at(p.add(2)),
        }
    }
}

impl Q32N for Q5_0 {
    const BYTES: usize = 22;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> W32 {
        let (lo, hi) = nibbles(p.add(6));
        let (lo, hi) = fifth(lo, hi, u32_at(p.add(2)));
        W32 {
            lo: signed_minus(lo, 16),
            hi: signed_minus(hi, 16),
            d: f16_at(p),
            m: 0.0,
        }
    }
}

impl Q32N for Q5_1 {
    const BYTES: usize = 24;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> W32 {
        let (lo, hi) = nibbles(p.add(8));
        let (lo, hi) = fifth(lo, hi, u32_at(p.add(4)));
        W32 {
            lo: vreinterpretq_s8_u8(lo),
            hi: vreinterpretq_s8_u8(hi),
            d: f16_at(p),
            m: f16_at(p.add(2)),
        }
    }
}

impl Q32N for Q8_0 {
    const BYTES: usize = 34;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> W32 {
        W32 {
            lo: vld1q_s8(p.add(2) as *const i8),
            hi: vld1q_s8(p.add(18) as *const i8),
            d: f16_at(p),
            m: 0.0,
        }
    }
}

/// R rows x C tokens over `nb` blocks: returns the R*C dot products.
#[inline(always)]
unsafe fn tile<F: Q32N, D: Dot, const R: usize, const C: usize>(
    w: [*const u8; R],
    a: [*const u8; C],
    nb: usize,
) -> [[f32; C]; R] {
    let zero = vdupq_n_s32(0);
    let mut acc = [[vdupq_n_f32(0.0); C]; R];
    for b in 0..nb {
        let wv: [W32; R] = arr(|r| F::unpack(w[r].add(b * F::BYTES)));
        let at = b / 4 * Q32_GROUP_BYTES + 16 * (b % 4);
        unroll!(c in C => {
            let rec = a[c].add(at);
            let a1l = vld1q_s8(rec as *const i8);
            let a1h = vld1q_s8(rec.add(off::HI) as *const i8);
            let a2l = vld1q_s8(rec.add(off::LO2) as *const i8);
            let a2h = vld1q_s8(rec.add(off::HI2) as *const i8);
            let u = f32_at(rec.add(off::D));
            // u * sum(e) / 4 in each lane: the lane total is u * sum(e).
            let s4 = vld1q_f32(rec.add(off::S) as *const f32);
            unroll!(r in R => {
                let d1 = D::dot(D::dot(zero, wv[r].lo, a1l), wv[r].hi, a1h);
                let d2 = D::dot(D::dot(zero, wv[r].lo, a2l), wv[r].hi, a2h);
                let e = vmlaq_n_s32(d2, d1, RESID_I);
                acc[r][c] = vfmaq_n_f32(acc[r][c], vcvtq_f32_s32(e), wv[r].d * u);
                if F::HAS_MIN {
                    acc[r][c] = vfmaq_n_f32(acc[r][c], s4, wv[r].m);
                }
            });
        });
    }
    let mut out = [[0f32; C]; R];
    unroll!(r in R => {
        unroll!(c in C => {
            out[r][c] = vaddvq_f32(acc[r][c]);
        });
    });
    out
}

/// Rows `rows` (R at a time, then single rows) for tokens `t0..t0 + C`.
#[inline(always)]
unsafe fn rows<F: Q32N, D: Dot, const R: usize, const C: usize>(
    job: &QJob,
    rows: Range<usize>,
    t0: usize,
) {
    let nb = job.k / 32;
    let a: [*const u8; C] = arr(|c| job.a_row(t0 + c));
    let mut r = rows.start;
    while r + R <= rows.end {
        let w: [*const u8; R] = arr(|i| job.w_row(r + i));
        let v = tile::<F, D, R, C>(w, a, nb);
        for (i, vr) in v.iter().enumerate() {
            for (c, val) in vr.iter().enumerate() {
                job.store(t0 + c, r + i, *val);
            }
        }
        r += R;
    }
    while r < rows.end {
        let v = tile::<F, D, 1, C>([job.w_row(r)], a, nb);
        for (c, val) in v[0].iter().enumerate() {
            job.store(t0 + c, r, *val);
        }
        r += 1;
    }
}

/// GEMV (one token): two rows per tile. GEMM: panels of rows that stay in cache while
/// every token chunk (4, then 2, then 1) runs over them.
#[inline(always)]
unsafe fn drive<F: Q32N, D: Dot>(job: &QJob, rws: Range<usize>) {
    if job.t == 1 {
        rows::<F, D, 2, 1>(job, rws, 0);
        return;
    }
    let panel = panel_rows(job.row_bytes);
    let mut p0 = rws.start;
    while p0 < rws.end {
        let p = p0..(p0 + panel).min(rws.end);
        let mut t0 = 0;
        while job.t - t0 >= 4 {
            rows::<F, D, 2, 4>(job, p.clone(), t0);
            t0 += 4;
        }
        if job.t - t0 >= 2 {
            rows::<F, D, 2, 2>(job, p.clone(), t0);
            t0 += 2;
        }
        if job.t - t0 >= 1 {
            rows::<F, D, 2, 1>(job, p.clone(), t0);
        }
        p0 = p.end;
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn run_sdot<F: Q32N>(job: &QJob, rows: Range<usize>) {
    drive::<F, Sdot>(job, rows)
}

#[target_feature(enable = "neon")]
unsafe fn run_mull<F: Q32N>(job: &QJob, rows: Range<usize>) {
    drive::<F, Mull>(job, rows)
}

unsafe fn run_fmt<F: Q32N>(job: &QJob, rows: Range<usize>, dotprod: bool) {
    if dotprod {
        run_sdot::<F>(job, rows)
    } else {
        run_mull::<F>(job, rows)
    }
}

/// Computes `rows` of a quantized matmul for every token with NEON; `dotprod` selects
/// the `sdot` kernels.
///
/// # Safety
/// As [`QJob::run`]; `dotprod` only where the CPU has the feature.
pub(crate) unsafe fn run(job: &QJob, rows: Range<usize>, dotprod: bool) {
    match job.dtype {
        DType::Q4_0 => run_fmt::<Q4_0>(job, rows, dotprod),
        DType::Q4_1 => run_fmt::<Q4_1>(job, rows, dotprod),
        DType::Q5_0 => run_fmt::<Q5_0>(job, rows, dotprod),
        DType::Q5_1 => run_fmt::<Q5_1>(job, rows, dotprod),
        DType::Q8_0 => run_fmt::<Q8_0>(job, rows, dotprod),
        _ => super::neon_k::run(job, rows, dotprod),
    }
}
