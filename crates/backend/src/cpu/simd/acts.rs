//! Activations quantized for the integer matmul kernels.
//!
//! A matmul with a quantized weight first quantizes each activation row once, into the
//! format whose block matches the weight's: 32-wide blocks for Q4_0/Q4_1/Q5_0/Q5_1/
//! Q8_0 (and Q4_K/Q5_K on AVX-512), 256-wide super-blocks for the K-quants.
//!
//! **Two int8 terms per element.** ggml quantizes activations once (`d = amax / 127`,
//! `q = round(x / d)`), an error of up to `d / 2` per element, about 0.4% relative per
//! matmul output: enough to flip greedy near-ties against an f32 reference (SmolLM2 at
//! generated token 5, margin 0.05). Here every element is `x ~ d * (q1 + q2 / 256)`:
//! `q1 = round(x / d)` as in ggml, `q2 = round(256 (x / d - q1))`, the residual on a
//! 256-times finer grid (|x/d - q1| <= 1/2, so |q2| <= 128, clamped to 127 so that the
//! AVX2 sign trick never meets -128). The error drops from `d / 2` to `d / 512`, and
//! `d / 256` at worst where the clamp bites (residuals within 1/256 of a half step).
//! Because the second scale is exactly `d / 256`, the
//! kernels combine the two integer dots *in integers*: `e = 256 * dot(w, q1) +
//! dot(w, q2)` is one 32-bit dot with the 16-bit value `256 q1 + q2`, so the float work
//! per block (convert, scale, FMA) is unchanged and only the `vpdpbusd` count doubles,
//! sharing the weight unpack. The scale stored is the unit of `e`, `u = d / 256`.
//! (All `v = x * (1/d)` and both roundings are done the same way on every path, so the
//! bytes are identical on scalar, AVX2 and AVX-512.)
//!
//! The *layout* is ours, chosen so the SIMD kernels load everything they need for one
//! step with aligned 64-byte loads and no shuffles:
//!
//! `Q32` (the AVX2 and scalar kernels'): per group of 4 blocks (128 elements), a
//! 384-byte record
//! ```text
//!   [  0.. 64) i8   q1 low halves  (elements 0..16) of blocks 0,1,2,3, 16 bytes each
//!   [ 64..128) i8   q1 high halves (elements 16..32) of blocks 0,1,2,3
//!   [128..256) i8   q2, the same two halves
//!   [256..320) f32  u of block j repeated 4 times, j = 0..4      -> lanes 4j..4j+4
//!   [320..384) f32  u * sum(e) / 4 of block j repeated 4 times (e = 256 q1 + q2)
//! ```
//! This is the order in which 4-bit weights come out of their nibbles (low nibbles
//! are elements 0..16 of a block, high nibbles 16..32). The `/ 4` undoes the fourfold
//! repetition when the kernel sums all lanes. A row's last group is zero-padded.
//!
//! `Q32x8Sum` / `Q32x8Off(o)` (the AVX-512 kernels'): per group of 8 blocks (256
//! elements), a 640-byte record
//! ```text
//!   [  0..256) i8   q1: four 64-byte vectors; vector v holds 8 elements of each block j
//!                   at bytes 8j..8j+8: v0 = elements 0..8, v1 = 16..24, v2 = 8..16,
//!                   v3 = 24..32 (low nibbles of qs[0..8], high nibbles of qs[0..8],
//!                   low and high nibbles of qs[8..16])
//!   [256..512) i8   q2, the same four vectors
//!   [512..576) f32  u of block j in lanes 2j and 2j+1
//!   [576..640)      Sum: f32 u * sum(e) of block j in lane 2j, 0 in lane 2j+1;
//!                   Off(o): i32 -o * sum(e) in lane 2j, 0 in 2j+1
//! ```
//! After eight `vpdpbusd` block j's dot sits in lanes 2j, 2j+1, so one convert, multiply
//! and FMA serve 256 elements. With `Off(o)` the dot starts from `-o * sum(e)`, which
//! removes the unsigned weights' offset (Q4_0: 8, Q5_0: 16, Q8_0: 128) exactly, in the
//! integer domain.
//!
//! `K`: per 256-element super-block, a 640-byte record
//! ```text
//!   [  0..256) i8   q1
//!   [256..512) i8   q2
//!   [512..544) i16  sums of q1 over each 16 consecutive elements (natural order)
//!   [544..576) i16  sums of q2 likewise
//!   [576..580) f32  u
//!   [580..640)      zero
//! ```
//! (A K-quant super-block's integer dot `sum sc * dot(q, e)` can exceed 32 bits, so the
//! K kernels keep the q1 and q2 sums apart and join them in float: `256 f(s1) + f(s2)`.)
//! Every path (scalar, AVX2, AVX-512) produces identical bytes.

use crate::dtype::DType;

use super::Isa;

/// Blocks of 32 per `Q32` group record.
pub const GROUP_BLOCKS: usize = 4;
/// Bytes of one `Q32` group record (128 elements).
pub const Q32_GROUP_BYTES: usize = 384;
/// Bytes of one `Q32x8*` group record (8 blocks, 256 elements).
pub const X8_GROUP_BYTES: usize = 640;
/// Bytes of one `K` super-block record (256 elements).
pub const K_BYTES: usize = 640;
/// Weight of the first term: `e = RESID * q1 + q2`.
pub const RESID: f32 = 256.0;

/// Byte offsets inside the records.
pub mod off {
    /// `Q32`: q1 high halves, q2 low and high halves, scales, sums.
    pub const HI: usize = 64;
    pub const LO2: usize = 128;
    pub const HI2: usize = 192;
    pub const D: usize = 256;
    pub const S: usize = 320;
    /// `Q32x8*`: q2 vectors, scales, extra term.
    pub const X8_Q2: usize = 256;
    pub const X8_D: usize = 512;
    pub const X8_EXT: usize = 576;
    /// `K`: q2, per-16 sums of q1 and of q2, scale.
    pub const K_Q2: usize = 256;
    pub const BSUMS: usize = 512;
    pub const BSUMS2: usize = 544;
    pub const KD: usize = 576;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    Q32,
    /// 8-block groups with per-block `u * sum(e)` (Q4_1/Q5_1/Q4_K/Q5_K on AVX-512).
    Q32x8Sum,
    /// 8-block groups with per-block `-offset * sum(e)` (Q4_0/Q5_0/Q8_0 on AVX-512).
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

/// Byte position of q1 of element `i` (< 32) of block `j` (< 4) inside a `Q32` record
/// (q2 sits `off::LO2` further).
#[inline]
pub fn q32_pos(j: usize, i: usize) -> usize {
    if i < 16 {
        16 * j + i
    } else {
        off::HI + 16 * j + i - 16
    }
}

/// Byte position of q1 of element `i` (< 32) of block `j` (< 8) inside a `Q32x8*`
/// record (q2 sits `off::X8_Q2` further).
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

/// The two terms of `x` for inverse scale `id` (module docs): `v = x * id`,
/// `q1 = round(v)`, `q2 = round(256 (v - q1))`, both half to even, clamped to ±127.
/// `v - q1` and the product by 256 are exact in f32, so every path gets the same bytes.
#[inline]
pub fn quant2(x: f32, id: f32) -> (i32, i32) {
    let v = x * id;
    // `as i32` saturates (NaN -> 0); the clamp keeps -128 out, which the AVX2 kernels'
    // sign trick could not negate.
    let q1 = (v.round_ties_even() as i32).clamp(-127, 127);
    let q2 = (((v - q1 as f32) * RESID).round_ties_even() as i32).clamp(-127, 127);
    (q1, q2)
}

/// The 16-bit value `e = 256 q1 + q2` a pair stands for.
#[inline]
pub fn joined(q1: i32, q2: i32) -> i32 {
    q1 * RESID as i32 + q2
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
            for (b, xb) in x.chunks_exact(32).enumerate() {
                let rec = &mut dst[b / 4 * Q32_GROUP_BYTES..][..Q32_GROUP_BYTES];
                let j = b % 4;
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let (d, id) = scale_of(amax);
                let u = d / RESID;
                let (mut s1, mut s2) = (0i32, 0i32);
                for (i, &v) in xb.iter().enumerate() {
                    let (q1, q2) = quant2(v, id);
                    s1 += q1;
                    s2 += q2;
                    rec[q32_pos(j, i)] = q1 as i8 as u8;
                    rec[off::LO2 + q32_pos(j, i)] = q2 as i8 as u8;
                }
                let s4 = u * joined(s1, s2) as f32 * 0.25;
                for l in 0..4 {
                    put_f32(rec, off::D + 16 * j + 4 * l, u);
                    put_f32(rec, off::S + 16 * j + 4 * l, s4);
                }
            }
        }
        ActFormat::Q32x8Sum | ActFormat::Q32x8Off(_) => {
            for (b, xb) in x.chunks_exact(32).enumerate() {
                let rec = &mut dst[b / 8 * X8_GROUP_BYTES..][..X8_GROUP_BYTES];
                let j = b % 8;
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let (d, id) = scale_of(amax);
                let u = d / RESID;
                let (mut s1, mut s2) = (0i32, 0i32);
                for (i, &v) in xb.iter().enumerate() {
                    let (q1, q2) = quant2(v, id);
                    s1 += q1;
                    s2 += q2;
                    rec[x8_pos(j, i)] = q1 as i8 as u8;
                    rec[off::X8_Q2 + x8_pos(j, i)] = q2 as i8 as u8;
                }
                put_f32(rec, off::X8_D + 8 * j, u);
                put_f32(rec, off::X8_D + 8 * j + 4, u);
                let ext = match fmt {
                    ActFormat::Q32x8Off(o) => (-o * joined(s1, s2)).to_le_bytes(),
                    _ => (u * joined(s1, s2) as f32).to_le_bytes(),
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
                    let (mut s1, mut s2) = (0i32, 0i32);
                    for i in 0..16 {
                        let e = 16 * g + i;
                        let (q1, q2) = quant2(xs[e], id);
                        s1 += q1;
                        s2 += q2;
                        rec[e] = q1 as i8 as u8;
                        rec[off::K_Q2 + e] = q2 as i8 as u8;
                    }
                    rec[off::BSUMS + 2 * g..][..2].copy_from_slice(&(s1 as i16).to_le_bytes());
                    rec[off::BSUMS2 + 2 * g..][..2].copy_from_slice(&(s2 as i16).to_le_bytes());
                }
                put_f32(rec, off::KD, d / RESID);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The two terms of 16 lanes `v = x * id`, as i32 (see [`quant2`]).
    #[inline(always)]
    unsafe fn two_terms512(v: __m512) -> (__m512i, __m512i) {
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        let q1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(v), lo), hi);
        let r = _mm512_mul_ps(
            _mm512_sub_ps(v, _mm512_cvtepi32_ps(q1)),
            _mm512_set1_ps(RESID),
        );
        let q2 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(r), lo), hi);
        (q1, q2)
    }

    /// One 32-element block: scale `d`, the q1 and q2 bytes of elements 0..16 and
    /// 16..32, and `sum(e)`.
    struct Block32 {
        d: f32,
        q1: [__m128i; 2],
        q2: [__m128i; 2],
        esum: i32,
    }

    #[inline(always)]
    unsafe fn block32_avx512(x: *const f32) -> Block32 {
        let v0 = _mm512_loadu_ps(x);
        let v1 = _mm512_loadu_ps(x.add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let (d, id) = scale_of(amax);
        let idv = _mm512_set1_ps(id);
        let (a0, b0) = two_terms512(_mm512_mul_ps(v0, idv));
        let (a1, b1) = two_terms512(_mm512_mul_ps(v1, idv));
        let s1 = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
        let s2 = _mm512_reduce_add_epi32(_mm512_add_epi32(b0, b1));
        Block32 {
            d,
            q1: [_mm512_cvtsepi32_epi8(a0), _mm512_cvtsepi32_epi8(a1)],
            q2: [_mm512_cvtsepi32_epi8(b0), _mm512_cvtsepi32_epi8(b1)],
            esum: joined(s1, s2),
        }
    }

    #[inline(always)]
    unsafe fn put(rec: *mut u8, at: usize, v: f32) {
        std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), rec.add(at), 4);
    }

    /// # Safety
    /// Needs AVX-512 F/BW; `dst` sized by the caller.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub unsafe fn quantize_row_avx512(fmt: ActFormat, x: &[f32], dst: &mut [u8]) {
        dst.fill(0);
        match fmt {
            ActFormat::Q32 => {
                for (b, xb) in x.chunks_exact(32).enumerate() {
                    let rec = dst.as_mut_ptr().add(b / 4 * Q32_GROUP_BYTES);
                    let j = b % 4;
                    let blk = block32_avx512(xb.as_ptr());
                    for (h, at) in [(0, 0), (1, off::HI)] {
                        _mm_storeu_si128(rec.add(at + 16 * j) as *mut __m128i, blk.q1[h]);
                        _mm_storeu_si128(
                            rec.add(off::LO2 + at + 16 * j) as *mut __m128i,
                            blk.q2[h],
                        );
                    }
                    let u = blk.d / RESID;
                    let s4 = u * blk.esum as f32 * 0.25;
                    _mm_storeu_ps(rec.add(off::D + 16 * j) as *mut f32, _mm_set1_ps(u));
                    _mm_storeu_ps(rec.add(off::S + 16 * j) as *mut f32, _mm_set1_ps(s4));
                }
            }
            ActFormat::Q32x8Sum | ActFormat::Q32x8Off(_) => {
                for (b, xb) in x.chunks_exact(32).enumerate() {
                    let rec = dst.as_mut_ptr().add(b / 8 * X8_GROUP_BYTES);
                    let j = b % 8;
                    let blk = block32_avx512(xb.as_ptr());
                    // Elements 0..8, 8..16, 16..24, 24..32 go to vectors 0, 2, 1, 3.
                    for (base, q) in [(0, blk.q1), (off::X8_Q2, blk.q2)] {
                        let r = rec.add(base + 8 * j);
                        _mm_storel_epi64(r as *mut __m128i, q[0]);
                        _mm_storel_epi64(
                            r.add(128) as *mut __m128i,
                            _mm_unpackhi_epi64(q[0], q[0]),
                        );
                        _mm_storel_epi64(r.add(64) as *mut __m128i, q[1]);
                        _mm_storel_epi64(
                            r.add(192) as *mut __m128i,
                            _mm_unpackhi_epi64(q[1], q[1]),
                        );
                    }
                    let u = blk.d / RESID;
                    put(rec, off::X8_D + 8 * j, u);
                    put(rec, off::X8_D + 8 * j + 4, u);
                    let ext = match fmt {
                        ActFormat::Q32x8Off(o) => (-o * blk.esum).to_le_bytes(),
                        _ => (u * blk.esum as f32).to_le_bytes(),
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
                        let v = _mm512_mul_ps(_mm512_loadu_ps(xs.as_ptr().add(16 * g)), idv);
                        let (q1, q2) = two_terms512(v);
                        let pos = 16 * g;
                        _mm_storeu_si128(rec.add(pos) as *mut __m128i, _mm512_cvtsepi32_epi8(q1));
                        _mm_storeu_si128(
                            rec.add(off::K_Q2 + pos) as *mut __m128i,
                            _mm512_cvtsepi32_epi8(q2),
                        );
                        for (at, q) in [(off::BSUMS, q1), (off::BSUMS2, q2)] {
                            let s = _mm512_reduce_add_epi32(q) as i16;
                            std::ptr::copy_nonoverlapping(
                                s.to_le_bytes().as_ptr(),
                                rec.add(at + 2 * g),
                                2,
                            );
                        }
                    }
                    put(rec, off::KD, d / RESID);
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

    /// 32 i32 in four registers as 32 bytes in order, and their sum.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pack32(q: [__m256i; 4]) -> (__m256i, i32) {
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

    /// Quantizes 32 floats at `x` with inverse scale `id`: the q1 and q2 bytes (in
    /// order) and the sums of q1 and of q2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quant32_avx2(x: *const f32, id: f32) -> ([__m256i; 2], i32, i32) {
        let idv = _mm256_set1_ps(id);
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        let mut q1 = [_mm256_setzero_si256(); 4];
        let mut q2 = [_mm256_setzero_si256(); 4];
        for i in 0..4 {
            let v = _mm256_mul_ps(_mm256_loadu_ps(x.add(8 * i)), idv);
            let a = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(v), lo), hi);
            let r = _mm256_mul_ps(
                _mm256_sub_ps(v, _mm256_cvtepi32_ps(a)),
                _mm256_set1_ps(RESID),
            );
            q1[i] = a;
            q2[i] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(r), lo), hi);
        }
        let (p1, s1) = pack32(q1);
        let (p2, s2) = pack32(q2);
        ([p1, p2], s1, s2)
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
                    let (q, s1, s2) = quant32_avx2(xb.as_ptr(), id);
                    for (base, q) in [(0, q[0]), (off::LO2, q[1])] {
                        let r = rec.add(base + 16 * j);
                        _mm_storeu_si128(r as *mut __m128i, _mm256_castsi256_si128(q));
                        _mm_storeu_si128(
                            r.add(off::HI) as *mut __m128i,
                            _mm256_extracti128_si256(q, 1),
                        );
                    }
                    let u = d / RESID;
                    let s4 = u * joined(s1, s2) as f32 * 0.25;
                    _mm_storeu_ps(rec.add(off::D + 16 * j) as *mut f32, _mm_set1_ps(u));
                    _mm_storeu_ps(rec.add(off::S + 16 * j) as *mut f32, _mm_set1_ps(s4));
                }
            }
            ActFormat::K => {
                let ones = _mm256_set1_epi16(1);
                for (sb, xs) in x.chunks_exact(256).enumerate() {
                    let rec = dst.as_mut_ptr().add(sb * K_BYTES);
                    let (d, id) = scale_of(absmax_avx2(xs.as_ptr(), 256));
                    for c in 0..8 {
                        let (q, _, _) = quant32_avx2(xs.as_ptr().add(32 * c), id);
                        for (t, (base, sums)) in [(0, off::BSUMS), (off::K_Q2, off::BSUMS2)]
                            .into_iter()
                            .enumerate()
                        {
                            _mm256_storeu_si256(rec.add(base + 32 * c) as *mut __m256i, q[t]);
                            // Sums of each 16 bytes: widen to i16 and add pairs.
                            for h in 0..2 {
                                let half = if h == 0 {
                                    _mm256_castsi256_si128(q[t])
                                } else {
                                    _mm256_extracti128_si256(q[t], 1)
                                };
                                let w = _mm256_madd_epi16(_mm256_cvtepi8_epi16(half), ones);
                                let s = hsum8_epi32(w) as i16;
                                std::ptr::copy_nonoverlapping(
                                    s.to_le_bytes().as_ptr(),
                                    rec.add(sums + 2 * (2 * c + h)),
                                    2,
                                );
                            }
                        }
                    }
                    let u = d / RESID;
                    std::ptr::copy_nonoverlapping(u.to_le_bytes().as_ptr(), rec.add(off::KD), 4);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two terms reconstruct `x` to within `d / 256` (`d / 512` unless the residual
    /// is clamped), plus f32 rounding; and on average 200x closer than one int8 term.
    #[test]
    fn two_terms_are_256_times_finer() {
        let mut s = 0x1234_5678u32;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        let (mut e1, mut e2) = (0f64, 0f64);
        for _ in 0..1000 {
            let xb: Vec<f32> = (0..32).map(|_| rnd() * 3.0).collect();
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (d, id) = scale_of(amax);
            for &x in &xb {
                let (q1, q2) = quant2(x, id);
                let back = d / RESID * joined(q1, q2) as f32;
                let err = (back - x).abs();
                if q2.abs() < 127 {
                    assert!(err <= d / 512.0 * 1.001 + x.abs() * 1e-6, "{x} {back}");
                }
                assert!(err <= d / 256.0 * 1.001 + x.abs() * 1e-6, "{x} {back}");
                e1 += ((d * q1 as f32 - x) as f64).powi(2);
                e2 += (err as f64).powi(2);
            }
        }
        assert!(
            e1 / e2 > 200.0 * 200.0,
            "RMS error ratio {}",
            (e1 / e2).sqrt()
        );
    }

    /// Every path writes the same bytes for every format.
    #[test]
    fn every_path_writes_the_same_bytes() {
        let mut s = 0x9e37_79b9u32;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for k in [256usize, 512, 768] {
            let mut x: Vec<f32> = (0..k).map(|_| rnd() * 4.0).collect();
            x[..32].fill(0.0);
            x[40] = 1e-30;
            for fmt in [
                ActFormat::Q32,
                ActFormat::Q32x8Sum,
                ActFormat::Q32x8Off(8),
                ActFormat::K,
            ] {
                let mut want = vec![0u8; fmt.row_bytes(k)];
                quantize_row_scalar(fmt, &x, &mut want);
                for isa in Isa::available() {
                    let mut got = vec![0xAAu8; fmt.row_bytes(k)];
                    quantize_row(isa, fmt, &x, &mut got);
                    assert_eq!(got, want, "{fmt:?} on {}", isa.name());
                }
            }
        }
    }
}
