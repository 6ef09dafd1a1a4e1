//! Activations quantized for the integer matmul kernels.
//!
//! A matmul with a quantized weight first quantizes each activation row once, into the
//! format whose block matches the weight's: 32-wide blocks (ggml's Q8_0/Q8_1 values)
//! for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights, 256-wide super-blocks (Q8_K values) for the
//! K-quants. The values are ggml's: `d = amax / 127`, `q = round(x / d)` (half to even,
//! clamped to ±127). The *layout* is ours, chosen so the SIMD kernels load everything
//! they need for one step with aligned 64-byte loads and no shuffles:
//!
//! `Q32`: per group of 4 blocks (128 elements), a 256-byte record
//! ```text
//!   [  0.. 64) i8   low halves  (elements 0..16) of blocks 0,1,2,3, 16 bytes each
//!   [ 64..128) i8   high halves (elements 16..32) of blocks 0,1,2,3
//!   [128..192) f32  d of block j repeated 4 times, j = 0..4      -> lanes 4j..4j+4
//!   [192..256) f32  d * sum(q) / 4 of block j repeated 4 times
//! ```
//! This is the order in which 4-bit weights come out of their nibbles (low nibbles
//! are elements 0..16 of a block, high nibbles 16..32), so a 512-bit `dpbusd` of the
//! low nibbles of 4 blocks against bytes 0..64 leaves block j's partial sum in lanes
//! 4j..4j+4, which line up with the repeated scales. The `/ 4` undoes the fourfold
//! repetition when the kernel sums all lanes. A row's last group is zero-padded.
//!
//! `Q32x8Sum` / `Q32x8Off(o)` (the AVX-512 kernels'): per group of 8 blocks (256
//! elements), a 384-byte record
//! ```text
//!   [  0..256) i8   four 64-byte vectors; vector v holds 8 elements of each block j
//!                   at bytes 8j..8j+8: v0 = elements 0..8, v1 = 16..24, v2 = 8..16,
//!                   v3 = 24..32 (low nibbles of qs[0..8], high nibbles of qs[0..8],
//!                   low and high nibbles of qs[8..16])
//!   [256..320) f32  d of block j in lanes 2j and 2j+1
//!   [320..384)      Sum: f32 d * sum(q) of block j in lane 2j, 0 in lane 2j+1;
//!                   Off(o): i32 -o * sum(q) in lane 2j, 0 in 2j+1
//! ```
//! After four `vpdpbusd` into one register, block j's dot sits in lanes 2j, 2j+1, so one
//! convert, multiply and FMA serve 256 elements (twice `Q32`'s 128: the float work per
//! block is what limits the GEMM). With `Off(o)` the dot starts from `-o * sum(a)`, which
//! removes the unsigned weights' offset (Q4_0: 8, Q5_0: 16, Q8_0: 128) exactly, in the
//! integer domain.
//!
//! `K`: per 256-element super-block, a 320-byte record
//! ```text
//!   [  0..256) i8   quants
//!   [256..288) i16  sums of each 16 consecutive elements (natural order)
//!   [288..292) f32  d
//!   [292..320)      zero
//! ```
//! Every path (scalar, AVX2, AVX-512) produces identical bytes, so kernels on different
//! paths see the same quantized activations.

use crate::dtype::DType;

use super::Isa;

/// Blocks of 32 per `Q32` group record.
pub const GROUP_BLOCKS: usize = 4;
/// Bytes of one `Q32` group record (128 elements).
pub const Q32_GROUP_BYTES: usize = 256;
/// Bytes of one `Q32x8*` group record (8 blocks, 256 elements).
pub const X8_GROUP_BYTES: usize = 384;
/// Bytes of one `K` super-block record (256 elements).
pub const K_BYTES: usize = 320;

/// Byte offsets inside the records.
pub mod off {
    pub const HI: usize = 64;
    pub const D: usize = 128;
    pub const S: usize = 192;
    pub const BSUMS: usize = 256;
    pub const KD: usize = 288;
    pub const X8_D: usize = 256;
    pub const X8_EXT: usize = 320;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    Q32,
    /// 8-block groups with per-block `d * sum(q)` (Q4_1/Q5_1 on AVX-512).
    Q32x8Sum,
    /// 8-block groups with per-block `-offset * sum(q)` (Q4_0/Q5_0/Q8_0 on AVX-512).
    Q32x8Off(i32),
    K,
}

impl ActFormat {
    /// The activation format a quantized weight type is multiplied with on `isa`.
    pub fn for_weight(w: DType, isa: Isa) -> Option<ActFormat> {
        let x8 = isa == Isa::Avx512;
        match w {
            DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K if x8 => {
                Some(ActFormat::Q32x8Sum)
            }
            DType::Q4_0 if x8 => Some(ActFormat::Q32x8Off(8)),
            DType::Q5_0 if x8 => Some(ActFormat::Q32x8Off(16)),
            DType::Q8_0 if x8 => Some(ActFormat::Q32x8Off(128)),
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => {
                Some(ActFormat::Q32)
            }
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
                Some(ActFormat::K)
            }
            _ => None,
        }
    }

    /// Elements per block of the format.
    pub fn block(self) -> usize {
        match self {
            ActFormat::Q32 | ActFormat::Q32x8Sum | ActFormat::Q32x8Off(_) => 32,
            ActFormat::K => 256,
        }
    }

    /// Bytes of one quantized row of `k` elements (`k` a multiple of `block()`); a
    /// multiple of 64 so that every row starts 64-byte aligned.
    pub fn row_bytes(self, k: usize) -> usize {
        match self {
            ActFormat::Q32 => (k / 32).div_ceil(GROUP_BLOCKS) * Q32_GROUP_BYTES,
            ActFormat::Q32x8Sum | ActFormat::Q32x8Off(_) => (k / 32).div_ceil(8) * X8_GROUP_BYTES,
            ActFormat::K => k / 256 * K_BYTES,
        }
    }
}

/// Byte position of element `i` (< 32) of block `j` (< 4) inside a `Q32` record.
#[inline]
pub fn q32_pos(j: usize, i: usize) -> usize {
    if i < 16 {
        16 * j + i
    } else {
        off::HI + 16 * j + i - 16
    }
}

/// Byte position of element `i` (< 32) of block `j` (< 8) inside a `Q32x8*` record.
#[inline]
pub fn x8_pos(j: usize, i: usize) -> usize {
    const VEC: [usize; 4] = [0, 2, 1, 3];
    64 * VEC[i / 8] + 8 * j + i % 8
}

/// Scale and inverse scale of a block with largest magnitude `amax` (ggml's Q8_0 rule).
#[inline]
fn scale_of(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

#[inline]
fn quant1(x: f32, id: f32) -> i32 {
    // `as i32` saturates (NaN -> 0); the clamp keeps -128 out, which the AVX2 kernels'
    // sign trick could not negate.
    ((x * id).round_ties_even() as i32).clamp(-127, 127)
}

#[inline]
fn put_f32(rec: &mut [u8], at: usize, v: f32) {
    rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Quantizes one row `x` (`k` elements) into `dst` (`fmt.row_bytes(k)` bytes).
/// Panics if the sizes disagree (the caller sizes the scratch).
pub fn quantize_row(isa: Isa, fmt: ActFormat, x: &[f32], dst: &mut [u8]) {
    assert_eq!(x.len() % fmt.block(), 0);
    assert_eq!(dst.len(), fmt.row_bytes(x.len()));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only selected when the CPU has these features.
        Isa::Avx512 => unsafe { x86::quantize_row_avx512(fmt, x, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only selected when the CPU has AVX2/FMA/F16C.
        Isa::Avx2 => unsafe { x86::quantize_row_avx2(fmt, x, dst) },
        _ => quantize_row_scalar(fmt, x, dst),
    }
}

/// Scalar reference of [`quantize_row`].
pub fn quantize_row_scalar(fmt: ActFormat, x: &[f32], dst: &mut [u8]) {
    dst.fill(0);
    match fmt {
        ActFormat::Q32 => {
            let nb = x.len() / 32;
            for (b, xb) in x.chunks_exact(32).enumerate() {
                let rec = &mut dst[b / 4 * Q32_GROUP_BYTES..][..Q32_GROUP_BYTES];
                let j = b % 4;
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let (d, id) = scale_of(amax);
                let mut isum = 0i32;
                for (i, &v) in xb.iter().enumerate() {
                    let q = quant1(v, id);
                    isum += q;
                    rec[q32_pos(j, i)] = q as i8 as u8;
                }
                let s4 = d * isum as f32 * 0.25;
                for l in 0..4 {
                    put_f32(rec, off::D + 16 * j + 4 * l, d);
                    put_f32(rec, off::S + 16 * j + 4 * l, s4);
                }
            }
            debug_assert!(nb.div_ceil(4) * Q32_GROUP_BYTES == dst.len());
        }
        ActFormat::Q32x8Sum | ActFormat::Q32x8Off(_) => {
            for (b, xb) in x.chunks_exact(32).enumerate() {
                let rec = &mut dst[b / 8 * X8_GROUP_BYTES..][..X8_GROUP_BYTES];
                let j = b % 8;
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let (d, id) = scale_of(amax);
                let mut isum = 0i32;
                for (i, &v) in xb.iter().enumerate() {
                    let q = quant1(v, id);
                    isum += q;
                    rec[x8_pos(j, i)] = q as i8 as u8;
                }
                put_f32(rec, off::X8_D + 8 * j, d);
                put_f32(rec, off::X8_D + 8 * j + 4, d);
                let ext = match fmt {
                    ActFormat::Q32x8Off(o) => (-o * isum).to_le_bytes(),
                    _ => (d * isum as f32).to_le_bytes(),
                };
                rec[off::X8_EXT + 8 * j..][..4].copy_from_slice(&ext);
            }
        }
        ActFormat::K => {
            for (sb, xs) in x.chunks_exact(256).enumerate() {
                let rec = &mut dst[sb * K_BYTES..][..K_BYTES];
                let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                let (d, id) = scale_of(amax);
                for g in 0..16 {
                    let mut sum = 0i32;
                    for i in 0..16 {
                        let e = 16 * g + i;
                        let q = quant1(xs[e], id);
                        sum += q;
                        rec[e] = q as i8 as u8;
                    }
                    rec[off::BSUMS + 2 * g..][..2].copy_from_slice(&(sum as i16).to_le_bytes());
                }
                put_f32(rec, off::KD, d);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// Needs AVX-512 F/BW; `dst` sized by the caller.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub unsafe fn quantize_row_avx512(fmt: ActFormat, x: &[f32], dst: &mut [u8]) {
        dst.fill(0);
        let lo_clamp = _mm512_set1_epi32(-127);
        let hi_clamp = _mm512_set1_epi32(127);
        match fmt {
            ActFormat::Q32 => {
                for (b, xb) in x.chunks_exact(32).enumerate() {
                    let rec = dst.as_mut_ptr().add(b / 4 * Q32_GROUP_BYTES);
                    let j = b % 4;
                    let v0 = _mm512_loadu_ps(xb.as_ptr());
                    let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
                    let amax =
                        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
                    let (d, id) = scale_of(amax);
                    let idv = _mm512_set1_ps(id);
                    let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv));
                    let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
                    let q0 = _mm512_min_epi32(_mm512_max_epi32(q0, lo_clamp), hi_clamp);
                    let q1 = _mm512_min_epi32(_mm512_max_epi32(q1, lo_clamp), hi_clamp);
                    _mm_storeu_si128(rec.add(16 * j) as *mut __m128i, _mm512_cvtsepi32_epi8(q0));
                    _mm_storeu_si128(
                        rec.add(off::HI + 16 * j) as *mut __m128i,
                        _mm512_cvtsepi32_epi8(q1),
                    );
                    let isum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                    let s4 = d * isum as f32 * 0.25;
                    _mm_storeu_ps(rec.add(off::D + 16 * j) as *mut f32, _mm_set1_ps(d));
                    _mm_storeu_ps(rec.add(off::S + 16 * j) as *mut f32, _mm_set1_ps(s4));
                }
            }
            ActFormat::Q32x8Sum | ActFormat::Q32x8Off(_) => {
                for (b, xb) in x.chunks_exact(32).enumerate() {
                    let rec = dst.as_mut_ptr().add(b / 8 * X8_GROUP_BYTES);
                    let j = b % 8;
                    let v0 = _mm512_loadu_ps(xb.as_ptr());
                    let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
                    let amax =
                        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
                    let (d, id) = scale_of(amax);
                    let idv = _mm512_set1_ps(id);
                    let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, idv));
                    let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, idv));
                    let q0 = _mm512_min_epi32(_mm512_max_epi32(q0, lo_clamp), hi_clamp);
                    let q1 = _mm512_min_epi32(_mm512_max_epi32(q1, lo_clamp), hi_clamp);
                    // Elements 0..8, 8..16, 16..24, 24..32 go to vectors 0, 2, 1, 3.
                    let b0 = _mm512_cvtsepi32_epi8(q0);
                    let b1 = _mm512_cvtsepi32_epi8(q1);
                    _mm_storel_epi64(rec.add(8 * j) as *mut __m128i, b0);
                    _mm_storel_epi64(
                        rec.add(128 + 8 * j) as *mut __m128i,
                        _mm_unpackhi_epi64(b0, b0),
                    );
                    _mm_storel_epi64(rec.add(64 + 8 * j) as *mut __m128i, b1);
                    _mm_storel_epi64(
                        rec.add(192 + 8 * j) as *mut __m128i,
                        _mm_unpackhi_epi64(b1, b1),
                    );
                    let isum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                    let dd = d.to_le_bytes();
                    std::ptr::copy_nonoverlapping(dd.as_ptr(), rec.add(off::X8_D + 8 * j), 4);
                    std::ptr::copy_nonoverlapping(dd.as_ptr(), rec.add(off::X8_D + 8 * j + 4), 4);
                    let ext = match fmt {
                        ActFormat::Q32x8Off(o) => (-o * isum).to_le_bytes(),
                        _ => (d * isum as f32).to_le_bytes(),
                    };
                    std::ptr::copy_nonoverlapping(ext.as_ptr(), rec.add(off::X8_EXT + 8 * j), 4);
                }
            }
            ActFormat::K => {
                for (sb, xs) in x.chunks_exact(256).enumerate() {
                    let rec = dst.as_mut_ptr().add(sb * K_BYTES);
                    let mut m = _mm512_setzero_ps();
                    for c in 0..16 {
                        m = _mm512_max_ps(
                            m,
                            _mm512_abs_ps(_mm512_loadu_ps(xs.as_ptr().add(16 * c))),
                        );
                    }
                    let (d, id) = scale_of(_mm512_reduce_max_ps(m));
                    let idv = _mm512_set1_ps(id);
                    for g in 0..16 {
                        let v = _mm512_loadu_ps(xs.as_ptr().add(16 * g));
                        let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, idv));
                        let q = _mm512_min_epi32(_mm512_max_epi32(q, lo_clamp), hi_clamp);
                        let pos = 16 * g;
                        _mm_storeu_si128(rec.add(pos) as *mut __m128i, _mm512_cvtsepi32_epi8(q));
                        let sum = _mm512_reduce_add_epi32(q) as i16;
                        std::ptr::copy_nonoverlapping(
                            sum.to_le_bytes().as_ptr(),
                            rec.add(off::BSUMS + 2 * g),
                            2,
                        );
                    }
                    std::ptr::copy_nonoverlapping(d.to_le_bytes().as_ptr(), rec.add(off::KD), 4);
                }
            }
        }
    }

    /// Horizontal maximum of 8 floats.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hmax8(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }

    /// Horizontal sum of 8 i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum8_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// Quantizes 32 floats at `x` with inverse scale `id`: returns the 32 bytes (in
    /// order) and their sum.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quant32_avx2(x: *const f32, id: f32) -> (__m256i, i32) {
        let idv = _mm256_set1_ps(id);
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        let mut q = [_mm256_setzero_si256(); 4];
        for (i, q) in q.iter_mut().enumerate() {
            let v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x.add(8 * i)), idv));
            *q = _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
        }
        let sum = hsum8_epi32(_mm256_add_epi32(
            _mm256_add_epi32(q[0], q[1]),
            _mm256_add_epi32(q[2], q[3]),
        ));
        // packs work within 128-bit lanes; the permute restores element order.
        let p01 = _mm256_packs_epi32(q[0], q[1]);
        let p23 = _mm256_packs_epi32(q[2], q[3]);
        let p = _mm256_packs_epi16(p01, p23);
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        (p, sum)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn absmax_avx2(x: *const f32, n: usize) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for i in (0..n).step_by(8) {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x.add(i))));
        }
        hmax8(m)
    }

    /// # Safety
    /// Needs AVX2/FMA; `dst` sized by the caller.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_row_avx2(fmt: ActFormat, x: &[f32], dst: &mut [u8]) {
        dst.fill(0);
        match fmt {
            // Only the AVX-512 kernels read these layouts.
            ActFormat::Q32x8Sum | ActFormat::Q32x8Off(_) => quantize_row_scalar(fmt, x, dst),
            ActFormat::Q32 => {
                for (b, xb) in x.chunks_exact(32).enumerate() {
                    let rec = dst.as_mut_ptr().add(b / 4 * Q32_GROUP_BYTES);
                    let j = b % 4;
                    let (d, id) = scale_of(absmax_avx2(xb.as_ptr(), 32));
                    let (q, isum) = quant32_avx2(xb.as_ptr(), id);
                    _mm_storeu_si128(rec.add(16 * j) as *mut __m128i, _mm256_castsi256_si128(q));
                    _mm_storeu_si128(
                        rec.add(off::HI + 16 * j) as *mut __m128i,
                        _mm256_extracti128_si256(q, 1),
                    );
                    let s4 = d * isum as f32 * 0.25;
                    _mm_storeu_ps(rec.add(off::D + 16 * j) as *mut f32, _mm_set1_ps(d));
                    _mm_storeu_ps(rec.add(off::S + 16 * j) as *mut f32, _mm_set1_ps(s4));
                }
            }
            ActFormat::K => {
                let ones = _mm256_set1_epi16(1);
                for (sb, xs) in x.chunks_exact(256).enumerate() {
                    let rec = dst.as_mut_ptr().add(sb * K_BYTES);
                    let (d, id) = scale_of(absmax_avx2(xs.as_ptr(), 256));
                    for c in 0..8 {
                        let (q, _) = quant32_avx2(xs.as_ptr().add(32 * c), id);
                        _mm256_storeu_si256(rec.add(32 * c) as *mut __m256i, q);
                        // Sums of each 16 bytes: widen to i16 and add pairs.
                        for h in 0..2 {
                            let half = if h == 0 {
                                _mm256_castsi256_si128(q)
                            } else {
                                _mm256_extracti128_si256(q, 1)
                            };
                            let w = _mm256_madd_epi16(_mm256_cvtepi8_epi16(half), ones);
                            let s = hsum8_epi32(w) as i16;
                            std::ptr::copy_nonoverlapping(
                                s.to_le_bytes().as_ptr(),
                                rec.add(off::BSUMS + 2 * (2 * c + h)),
                                2,
                            );
                        }
                    }
                    std::ptr::copy_nonoverlapping(d.to_le_bytes().as_ptr(), rec.add(off::KD), 4);
                }
            }
        }
    }
}
