//! Matmul with F32/F16/BF16 weights: f32 activations, weights widened to f32 on load
//! (F16C `vcvtph2ps`; BF16 is the top half of an f32, so a 16-bit shift), FMA.
//!
//! Tiles of R weight rows x C tokens keep R*C accumulators in registers so each weight
//! vector loaded is used C times and each activation vector R times.

use std::ops::Range;

use half::{bf16, f16};

use super::{arr, unroll, FJob, Isa};
use crate::dtype::DType;

/// Weight bytes per panel: rows are processed in panels about this big, and every
/// token chunk runs over a panel while it is hot in L1/L2.
const PANEL_BYTES: usize = 32 * 1024;

/// Rows per panel for rows of `row_bytes` (a multiple of 4, at least 4).
pub fn panel_rows(row_bytes: usize) -> usize {
    (PANEL_BYTES / row_bytes.max(1)).max(4) / 4 * 4
}

/// # Safety
/// As [`super::QJob::run`].
pub unsafe fn run(job: &FJob, isa: Isa, rows: Range<usize>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match job.dtype {
            DType::F32 => x86::run_avx512::<x86::F32>(job, rows),
            DType::F16 => x86::run_avx512::<x86::F16>(job, rows),
            _ => x86::run_avx512::<x86::Bf16>(job, rows),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match job.dtype {
            DType::F32 => x86::run_avx2::<x86::F32>(job, rows),
            DType::F16 => x86::run_avx2::<x86::F16>(job, rows),
            _ => x86::run_avx2::<x86::Bf16>(job, rows),
        },
        _ => run_scalar(job, rows),
    }
}

/// Weight element `i` of a row.
#[inline]
fn weight(dtype: DType, row: &[u8], i: usize) -> f32 {
    match dtype {
        DType::F32 => {
            f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]])
        }
        DType::F16 => f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32(),
        _ => bf16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32(),
    }
}

unsafe fn run_scalar(job: &FJob, rows: Range<usize>) {
    let rb = job.dtype.block_bytes() * job.k;
    let mut wf = [0f32; 256];
    for r in rows {
        let row = &job.w[r * rb..(r + 1) * rb];
        for t in 0..job.t {
            let x = &job.x[t * job.k..(t + 1) * job.k];
            let mut acc = [0f32; 4];
            for k0 in (0..job.k).step_by(256) {
                let n = 256.min(job.k - k0);
                for (i, w) in wf.iter_mut().enumerate().take(n) {
                    *w = weight(job.dtype, row, k0 + i);
                }
                for i in 0..n {
                    acc[i % 4] += wf[i] * x[k0 + i];
                }
            }
            *job.out.0.add(t * job.m + r) = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// A float weight type, loaded and widened to f32 lanes.
    pub trait FloatW {
        const SIZE: usize;
        /// 16 elements at `p`.
        unsafe fn load16(p: *const u8) -> __m512;
        /// The first `n` (< 16) elements at `p`, zeros after; reads only those.
        unsafe fn load16_part(p: *const u8, n: usize) -> __m512;
        /// 8 elements at `p`.
        unsafe fn load8(p: *const u8) -> __m256;
        fn scalar(p: *const u8) -> f32;
    }

    pub struct F32;
    pub struct F16;
    pub struct Bf16;

    impl FloatW for F32 {
        const SIZE: usize = 4;
        #[inline(always)]
        unsafe fn load16(p: *const u8) -> __m512 {
            _mm512_loadu_ps(p as *const f32)
        }
        #[inline(always)]
        unsafe fn load16_part(p: *const u8, n: usize) -> __m512 {
            _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p as *const f32)
        }
        #[inline(always)]
        unsafe fn load8(p: *const u8) -> __m256 {
            _mm256_loadu_ps(p as *const f32)
        }
        #[inline(always)]
        fn scalar(p: *const u8) -> f32 {
            // SAFETY: the caller passes a pointer to one element inside the row.
            unsafe { (p as *const f32).read_unaligned() }
        }
    }

    impl FloatW for F16 {
        const SIZE: usize = 2;
        #[inline(always)]
        unsafe fn load16(p: *const u8) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
        #[inline(always)]
        unsafe fn load16_part(p: *const u8, n: usize) -> __m512 {
            let v = _mm512_maskz_loadu_epi16(((1u64 << n) - 1) as u32, p as *const i16);
            _mm512_cvtph_ps(_mm512_castsi512_si256(v))
        }
        #[inline(always)]
        unsafe fn load8(p: *const u8) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        #[inline(always)]
        fn scalar(p: *const u8) -> f32 {
            // SAFETY: as for F32.
            half::f16::from_bits(unsafe { (p as *const u16).read_unaligned() }).to_f32()
        }
    }

    impl FloatW for Bf16 {
        const SIZE: usize = 2;
        #[inline(always)]
        unsafe fn load16(p: *const u8) -> __m512 {
            let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
            _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))
        }
        #[inline(always)]
        unsafe fn load16_part(p: *const u8, n: usize) -> __m512 {
            let v = _mm512_maskz_loadu_epi16(((1u64 << n) - 1) as u32, p as *const i16);
            let v = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(v));
            _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))
        }
        #[inline(always)]
        unsafe fn load8(p: *const u8) -> __m256 {
            let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
        }
        #[inline(always)]
        fn scalar(p: *const u8) -> f32 {
            // SAFETY: as for F32.
            half::bf16::from_bits(unsafe { (p as *const u16).read_unaligned() }).to_f32()
        }
    }

    /// R rows x C tokens with AVX-512: returns the R*C dot products.
    #[inline(always)]
    unsafe fn tile512<W: FloatW, const R: usize, const C: usize>(
        w: [*const u8; R],
        x: [*const f32; C],
        k: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut wv = [_mm512_setzero_ps(); R];
        let full = k / 16 * 16;
        let mut k0 = 0;
        while k0 < full {
            unroll!(r in R => {
                wv[r] = W::load16(w[r].add(k0 * W::SIZE));
            });
            unroll!(c in C => {
                let xv = _mm512_loadu_ps(x[c].add(k0));
                unroll!(r in R => {
                    acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
                });
            });
            k0 += 16;
        }
        if k0 < k {
            let n = k - k0;
            unroll!(r in R => {
                wv[r] = W::load16_part(w[r].add(k0 * W::SIZE), n);
            });
            unroll!(c in C => {
                let xv = _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, x[c].add(k0));
                unroll!(r in R => {
                    acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
                });
            });
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
    unsafe fn rows512<W: FloatW, const R: usize, const C: usize>(
        job: &FJob,
        rows: Range<usize>,
        t0: usize,
    ) {
        let rb = job.k * W::SIZE;
        let base = job.w.as_ptr();
        let x: [*const f32; C] = arr(|c| job.x.as_ptr().add((t0 + c) * job.k));
        let mut r = rows.start;
        let pf = super::super::prefetch_distance();
        let end = base.wrapping_add(job.w.len());
        while r + R <= rows.end {
            let w: [*const u8; R] = arr(|i| base.add((r + i) * rb));
            if t0 == 0 && pf > 0 {
                super::super::prefetch(w[0].wrapping_add(pf), R * rb, end);
            }
            let v = tile512::<W, R, C>(w, x, job.k);
            for (i, vr) in v.iter().enumerate() {
                for (c, val) in vr.iter().enumerate() {
                    *job.out.0.add((t0 + c) * job.m + r + i) = *val;
                }
            }
            r += R;
        }
        while r < rows.end {
            let v = tile512::<W, 1, C>([base.add(r * rb)], x, job.k);
            for (c, val) in v[0].iter().enumerate() {
                *job.out.0.add((t0 + c) * job.m + r) = *val;
            }
            r += 1;
        }
    }

    /// # Safety
    /// AVX-512F and F16C present; job consistent (checked by the caller).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub unsafe fn run_avx512<W: FloatW>(job: &FJob, rows: Range<usize>) {
        if job.t == 1 {
            rows512::<W, 4, 1>(job, rows, 0);
            return;
        }
        let panel = panel_rows(job.k * W::SIZE);
        let mut p0 = rows.start;
        while p0 < rows.end {
            let p = p0..(p0 + panel).min(rows.end);
            let mut t0 = 0;
            while job.t - t0 >= 4 {
                rows512::<W, 4, 4>(job, p.clone(), t0);
                t0 += 4;
            }
            if job.t - t0 >= 2 {
                rows512::<W, 4, 2>(job, p.clone(), t0);
                t0 += 2;
            }
            if job.t - t0 >= 1 {
                rows512::<W, 4, 1>(job, p.clone(), t0);
            }
            p0 = p.end;
        }
    }

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// R rows x C tokens with AVX2.
    #[inline(always)]
    unsafe fn tile256<W: FloatW, const R: usize, const C: usize>(
        w: [*const u8; R],
        x: [*const f32; C],
        k: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut wv = [_mm256_setzero_ps(); R];
        let full = k / 8 * 8;
        let mut k0 = 0;
        while k0 < full {
            unroll!(r in R => {
                wv[r] = W::load8(w[r].add(k0 * W::SIZE));
            });
            unroll!(c in C => {
                let xv = _mm256_loadu_ps(x[c].add(k0));
                unroll!(r in R => {
                    acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
                });
            });
            k0 += 8;
        }
        let mut out = [[0f32; C]; R];
        unroll!(r in R => {
            unroll!(c in C => {
                let mut s = hsum256(acc[r][c]);
                for i in full..k {
                    s += W::scalar(w[r].add(i * W::SIZE)) * *x[c].add(i);
                }
                out[r][c] = s;
            });
        });
        out
    }

    #[inline(always)]
    unsafe fn rows256<W: FloatW, const R: usize, const C: usize>(
        job: &FJob,
        rows: Range<usize>,
        t0: usize,
    ) {
        let rb = job.k * W::SIZE;
        let base = job.w.as_ptr();
        let x: [*const f32; C] = arr(|c| job.x.as_ptr().add((t0 + c) * job.k));
        let mut r = rows.start;
        let pf = super::super::prefetch_distance();
        let end = base.wrapping_add(job.w.len());
        while r + R <= rows.end {
            let w: [*const u8; R] = arr(|i| base.add((r + i) * rb));
            if t0 == 0 && pf > 0 {
                super::super::prefetch(w[0].wrapping_add(pf), R * rb, end);
            }
            let v = tile256::<W, R, C>(w, x, job.k);
            for (i, vr) in v.iter().enumerate() {
                for (c, val) in vr.iter().enumerate() {
                    *job.out.0.add((t0 + c) * job.m + r + i) = *val;
                }
            }
            r += R;
        }
        while r < rows.end {
            let v = tile256::<W, 1, C>([base.add(r * rb)], x, job.k);
            for (c, val) in v[0].iter().enumerate() {
                *job.out.0.add((t0 + c) * job.m + r) = *val;
            }
            r += 1;
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C present; job consistent.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn run_avx2<W: FloatW>(job: &FJob, rows: Range<usize>) {
        if job.t == 1 {
            rows256::<W, 4, 1>(job, rows, 0);
            return;
        }
        let panel = panel_rows(job.k * W::SIZE);
        let mut p0 = rows.start;
        while p0 < rows.end {
            let p = p0..(p0 + panel).min(rows.end);
            let mut t0 = 0;
            while job.t - t0 >= 2 {
                rows256::<W, 4, 2>(job, p.clone(), t0);
                t0 += 2;
            }
            if job.t - t0 >= 1 {
                rows256::<W, 4, 1>(job, p.clone(), t0);
            }
            p0 = p.end;
        }
    }
}
