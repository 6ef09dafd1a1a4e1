//! AVX-512 VNNI kernels for the 32-wide formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), and
//! for Q4_K/Q5_K, whose 32-element sub-blocks have the same shape (see `Q4K`).
//!
//! Step = one group of 8 weight blocks (256 elements) of R rows against C tokens, with
//! activations in the `Q32x8*` layout (see `acts`):
//! * unpack, once per row and group: each half-group (4 blocks, 72..136 bytes) comes
//!   in with two 64-byte loads and `vpermt2w` gathers its quants and f16 scales (ggml
//!   blocks are an even number of bytes, so every field is word aligned); the halves
//!   merge with one 128-bit-lane shuffle. Nibbles split into the four vectors of the
//!   layout; Q5 fifth bits come in through byte masks.
//! * weights become unsigned bytes (`q`, `q + 8`, `q + 16`, `q ^ 0x80 = q + 128`) for
//!   `vpdpbusd` (unsigned x signed). For Q4_0/Q5_0/Q8_0 the accumulator starts at the
//!   activations' `-offset * sum(a)`, so the offset cancels in integers; Q4_1/Q5_1 add
//!   `m * d_a * sum(a)` with one FMA.
//! * per (row, token) and 256 elements: 8 `vpdpbusd` (4 for each activation term, see
//!   `acts`), a shift and an add joining them, 1 convert, 1 multiply, 1 FMA (+1 FMA for
//!   the `_1` formats). The float work per element is what bounds this
//!   kernel (measured: dropping one FMA per 128 elements gained 24%), hence 8-block
//!   groups where each block owns 2 lanes.
//! * a partial last group (K not a multiple of 256) loads with byte masks, so nothing
//!   past a row is read; up to 4 blocks run at 256-bit width.
//!
//! GEMV (one token) runs 4 rows at a time with software prefetch; GEMM runs 1 row x 8
//! tokens over panels of rows that stay in L1 while every token chunk passes.

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{off, X8_GROUP_BYTES};
use super::float::panel_rows;
use super::{arr, unroll, word_table, QJob};
use crate::dtype::DType;

/// One unpacked 8-block group: unsigned quants in the four layout vectors, per-lane
/// weight scale and min (block j in lanes 2j, 2j+1).
#[derive(Clone, Copy)]
pub struct W8 {
    v: [__m512i; 4],
    d: __m512,
    m: __m512,
}

/// A 32-wide weight format as the AVX-512 kernel sees it.
pub trait Q32W {
    const BYTES: usize;
    /// The activation record holds `-offset * sum(a)` (Q4_0/Q5_0/Q8_0) rather than
    /// `d_a * sum(a)` for a min (Q4_1/Q5_1).
    const OFFSET: bool;
    /// Unpacks blocks `0..nbg` (1..=8) of the group at `p`, zeros for the rest; reads
    /// nothing past them (masked loads).
    unsafe fn unpack(p: *const u8, nbg: usize) -> W8;
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

#[inline(always)]
unsafe fn idx(t: &[i16; 32]) -> __m512i {
    _mm512_loadu_si512(t.as_ptr() as *const __m512i)
}

/// The `len` (0..=128) bytes at `p` in two registers, zeros after.
#[inline(always)]
unsafe fn load2(p: *const u8, len: isize) -> (__m512i, __m512i) {
    let a = _mm512_maskz_loadu_epi8(bytes_mask(len), p as *const i8);
    let b = _mm512_maskz_loadu_epi8(bytes_mask(len - 64), p.add(64) as *const i8);
    (a, b)
}

/// Valid bytes of half-groups A (blocks 0..4) and B (blocks 4..8) for `nbg` blocks.
#[inline(always)]
fn half_lens(nbg: usize, bytes: usize) -> (isize, isize) {
    (
        (nbg.min(4) * bytes) as isize,
        (nbg.saturating_sub(4) * bytes) as isize,
    )
}

/// Word table of a half-group's quants for the nibble formats (`w` words per block,
/// quants from word `q`): words 0..16 = `qs[0..8]` of blocks 0..4, 16..32 = `qs[8..16]`.
const fn qs_table(w: usize, q: usize) -> [i16; 32] {
    word_table!(|x| if x < 16 {
        w * (x / 4) + q + x % 4
    } else {
        w * ((x - 16) / 4) + q + 4 + x % 4
    })
}

/// Words 0..8 of a table: each block's word `at` twice; then `rest`.
const fn pairs_table(w: usize, at: usize, second: usize) -> [i16; 32] {
    word_table!(|x| if x < 8 {
        w * (x / 2) + at
    } else if x < 16 {
        w * ((x - 8) / 2) + second
    } else {
        0
    })
}

/// Merges two half-groups `[lo 256 | hi 256]` into `(lo A | lo B, hi A | hi B)`.
#[inline(always)]
unsafe fn merge(a: __m512i, b: __m512i) -> (__m512i, __m512i) {
    (
        _mm512_shuffle_i64x2(a, b, 0x44),
        _mm512_shuffle_i64x2(a, b, 0xEE),
    )
}

/// Merges two halves' metadata `[x 128 | y 128 | ..]` into `[xA | xB | yA | yB]`.
#[inline(always)]
unsafe fn merge_meta(a: __m512i, b: __m512i) -> __m512i {
    _mm512_permutex2var_epi64(a, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), b)
}

/// 16 halves -> 16 floats (low 256 bits), and the high 256 bits likewise.
#[inline(always)]
unsafe fn halves_to_f32(v: __m512i) -> (__m512, __m512) {
    (
        _mm512_cvtph_ps(_mm512_castsi512_si256(v)),
        _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1)),
    )
}

/// The four layout vectors from `qs[0..8]` and `qs[8..16]` pieces of 8 blocks.
#[inline(always)]
unsafe fn nibble_vectors(q0: __m512i, q8: __m512i) -> [__m512i; 4] {
    let f = _mm512_set1_epi8(0x0F);
    [
        _mm512_and_si512(q0, f),
        _mm512_and_si512(_mm512_srli_epi16(q0, 4), f),
        _mm512_and_si512(q8, f),
        _mm512_and_si512(_mm512_srli_epi16(q8, 4), f),
    ]
}

/// Sets the fifth bit (0x10) of the quants from `qh`, 32 bytes: each block's four `qh`
/// bytes, blocks 0..8 in order. Byte k of block j's `qh` holds elements 8k..8k+8, which
/// live in vector [0, 2, 1, 3][k] at bytes 8j..8j+8.
#[inline(always)]
unsafe fn fifth_bits(v: &mut [__m512i; 4], qh: __m256i) {
    // Per 128-bit lane (4 blocks): reorder block-major bytes to k-major.
    let ctrl = _mm256_setr_epi8(
        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10,
        14, 3, 7, 11, 15,
    );
    let t = _mm256_shuffle_epi8(qh, ctrl);
    // Dwords [A.k0, B.k0, A.k1, B.k1, ..]: quadword k = byte k of blocks 0..8.
    let t = _mm256_permutevar8x32_epi32(t, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let b = _mm512_set1_epi8(0x10);
    const VEC: [usize; 4] = [0, 2, 1, 3];
    let masks = [
        _mm256_extract_epi64(t, 0) as u64,
        _mm256_extract_epi64(t, 1) as u64,
        _mm256_extract_epi64(t, 2) as u64,
        _mm256_extract_epi64(t, 3) as u64,
    ];
    for (k, &m) in masks.iter().enumerate() {
        v[VEC[k]] = _mm512_or_si512(v[VEC[k]], _mm512_maskz_mov_epi8(m, b));
    }
}

pub struct Q4_0;
pub struct Q4_1;
pub struct Q5_0;
pub struct Q5_1;
pub struct Q8_0;

impl Q32W for Q4_0 {
    // d | qs[16]: 9 words per block, 72 bytes per half-group.
    const BYTES: usize = 18;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W8 {
        const QS: [i16; 32] = qs_table(9, 1);
        const META: [i16; 32] = pairs_table(9, 0, 0);
        let (la, lb) = half_lens(nbg, Self::BYTES);
        let (a0, a1) = load2(p, la);
        let (b0, b1) = load2(p.add(72), lb);
        let (q0, q8) = merge(
            _mm512_permutex2var_epi16(a0, idx(&QS), a1),
            _mm512_permutex2var_epi16(b0, idx(&QS), b1),
        );
        let meta = merge_meta(
            _mm512_permutex2var_epi16(a0, idx(&META), a1),
            _mm512_permutex2var_epi16(b0, idx(&META), b1),
        );
        let (d, _) = halves_to_f32(meta);
        W8 {
            v: nibble_vectors(q0, q8),
            d,
            m: _mm512_setzero_ps(),
        }
    }
}

impl Q32W for Q4_1 {
    // d | m | qs[16]: 10 words per block, 80 bytes per half-group.
    const BYTES: usize = 20;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W8 {
        const QS: [i16; 32] = qs_table(10, 2);
        const META: [i16; 32] = pairs_table(10, 0, 1);
        let (la, lb) = half_lens(nbg, Self::BYTES);
        let (a0, a1) = load2(p, la);
        let (b0, b1) = load2(p.add(80), lb);
        let (q0, q8) = merge(
            _mm512_permutex2var_epi16(a0, idx(&QS), a1),
            _mm512_permutex2var_epi16(b0, idx(&QS), b1),
        );
        let meta = merge_meta(
            _mm512_permutex2var_epi16(a0, idx(&META), a1),
            _mm512_permutex2var_epi16(b0, idx(&META), b1),
        );
        let (d, m) = halves_to_f32(meta);
        W8 {
            v: nibble_vectors(q0, q8),
            d,
            m,
        }
    }
}

impl Q32W for Q5_0 {
    // d | qh[4] | qs[16]: 11 words per block, 88 bytes per half-group.
    const BYTES: usize = 22;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W8 {
        const QS: [i16; 32] = qs_table(11, 3);
        // Words 0..8: d pairs; 8..16: each block's qh (2 words).
        const META: [i16; 32] = word_table!(|x| if x < 8 {
            11 * (x / 2)
        } else if x < 16 {
            11 * ((x - 8) / 2) + 1 + (x - 8) % 2
        } else {
            0
        });
        let (la, lb) = half_lens(nbg, Self::BYTES);
        let (a0, a1) = load2(p, la);
        let (b0, b1) = load2(p.add(88), lb);
        let (q0, q8) = merge(
            _mm512_permutex2var_epi16(a0, idx(&QS), a1),
            _mm512_permutex2var_epi16(b0, idx(&QS), b1),
        );
        let meta = merge_meta(
            _mm512_permutex2var_epi16(a0, idx(&META), a1),
            _mm512_permutex2var_epi16(b0, idx(&META), b1),
        );
        let mut v = nibble_vectors(q0, q8);
        fifth_bits(&mut v, _mm512_extracti64x4_epi64(meta, 1));
        let (d, _) = halves_to_f32(meta);
        W8 {
            v,
            d,
            m: _mm512_setzero_ps(),
        }
    }
}

impl Q32W for Q5_1 {
    // d | m | qh[4] | qs[16]: 12 words per block, 96 bytes per half-group.
    const BYTES: usize = 24;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W8 {
        const QS: [i16; 32] = qs_table(12, 4);
        // Words 0..8: d pairs; 8..16: m pairs; 16..24: each block's qh.
        const META: [i16; 32] = word_table!(|x| if x < 8 {
            12 * (x / 2)
        } else if x < 16 {
            12 * ((x - 8) / 2) + 1
        } else if x < 24 {
            12 * ((x - 16) / 2) + 2 + (x - 16) % 2
        } else {
            0
        });
        let (la, lb) = half_lens(nbg, Self::BYTES);
        let (a0, a1) = load2(p, la);
        let (b0, b1) = load2(p.add(96), lb);
        let (q0, q8) = merge(
            _mm512_permutex2var_epi16(a0, idx(&QS), a1),
            _mm512_permutex2var_epi16(b0, idx(&QS), b1),
        );
        let (ma, mb) = (
            _mm512_permutex2var_epi16(a0, idx(&META), a1),
            _mm512_permutex2var_epi16(b0, idx(&META), b1),
        );
        let meta = merge_meta(ma, mb);
        let qh = _mm512_permutex2var_epi64(ma, _mm512_setr_epi64(4, 5, 12, 13, 4, 5, 12, 13), mb);
        let mut v = nibble_vectors(q0, q8);
        fifth_bits(&mut v, _mm512_castsi512_si256(qh));
        let (d, m) = halves_to_f32(meta);
        W8 { v, d, m }
    }
}

impl Q32W for Q8_0 {
    // d | qs[32]: 17 words per block, 136 bytes per half-group: the pieces of qs[0..16]
    // come from bytes 0..128, those of qs[16..32] from bytes 8..136.
    const BYTES: usize = 34;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, nbg: usize) -> W8 {
        const LO: [i16; 32] = qs_table(17, 1);
        const HI: [i16; 32] = qs_table(17, 9 - 4);
        const META: [i16; 32] = pairs_table(17, 0, 0);
        let mut x02 = [_mm512_setzero_si512(); 2];
        let mut x13 = [_mm512_setzero_si512(); 2];
        let mut meta = [_mm512_setzero_si512(); 2];
        let (la, lb) = half_lens(nbg, Self::BYTES);
        for (h, len) in [la, lb].into_iter().enumerate() {
            let q = p.add(136 * h);
            let (z0, z1) = load2(q, len.min(128));
            let (y0, y1) = load2(q.add(8), len - 8);
            x02[h] = _mm512_permutex2var_epi16(z0, idx(&LO), z1);
            x13[h] = _mm512_permutex2var_epi16(y0, idx(&HI), y1);
            meta[h] = _mm512_permutex2var_epi16(z0, idx(&META), z1);
        }
        let (v0, v2) = merge(x02[0], x02[1]);
        let (v1, v3) = merge(x13[0], x13[1]);
        let flip = _mm512_set1_epi8(-128);
        let (d, _) = halves_to_f32(merge_meta(meta[0], meta[1]));
        W8 {
            v: [
                _mm512_xor_si512(v0, flip),
                _mm512_xor_si512(v1, flip),
                _mm512_xor_si512(v2, flip),
                _mm512_xor_si512(v3, flip),
            ],
            d,
            m: _mm512_setzero_ps(),
        }
    }
}

/// Q4_K/Q5_K as 8-block groups: a super-block's sub-block s (32 elements) is block s
/// of a group, with scale `d * sc_s` and min `-dmin * m_s` (the `_1` formats' shape).
/// Sub-block s is nibble s % 2 of qs bytes 32(s/2)..32(s/2)+32; the layout vector v
/// takes its 8 elements E(v) = [0, 16, 8, 24][v]..+8.
#[inline(always)]
unsafe fn k4_vectors(z0: __m512i, z1: __m512i) -> [__m512i; 4] {
    let f = _mm512_set1_epi8(0x0F);
    // Even qword lanes keep the low nibble (sub-block 2j), odd ones the high (2j + 1).
    let sh = _mm512_setr_epi64(0, 4, 0, 4, 0, 4, 0, 4);
    let mut v = [_mm512_setzero_si512(); 4];
    const E: [i64; 4] = [0, 2, 1, 3];
    for (i, v) in v.iter_mut().enumerate() {
        let e = E[i];
        // qword of chunk j at offset E(v): 4j + e (chunks 2, 3 from the second register).
        let g = _mm512_permutex2var_epi64(
            z0,
            _mm512_setr_epi64(e, e, 4 + e, 4 + e, 8 + e, 8 + e, 12 + e, 12 + e),
            z1,
        );
        *v = _mm512_and_si512(_mm512_srlv_epi64(g, sh), f);
    }
    v
}

/// Per-sub-block scales `d * sc` and mins `-dmin * m`, each in lanes 2s, 2s+1, from
/// the 12 packed bytes at `p + 4` and d, dmin at `p`.
#[inline(always)]
unsafe fn k4_scales(p: *const u8) -> (__m512, __m512) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let u = p.add(4) as *const u32;
    let (u0, u1, u2) = (
        u.read_unaligned(),
        u.add(1).read_unaligned(),
        u.add(2).read_unaligned(),
    );
    let m4 = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let m0 = u1 & KMASK1;
    let s4 = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let s0 = u0 & KMASK1;
    let sm = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_setr_epi32(
        s0 as i32, s4 as i32, m0 as i32, m4 as i32,
    )));
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
    let d = _mm512_broadcastss_ps(dm);
    let dmin = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
    let sc = _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
        sm,
    );
    let mn = _mm512_permutexvar_ps(
        _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15),
        sm,
    );
    (
        _mm512_mul_ps(sc, d),
        _mm512_mul_ps(mn, _mm512_sub_ps(_mm512_setzero_ps(), dmin)),
    )
}

pub struct Q4K;
pub struct Q5K;

impl Q32W for Q4K {
    // d | dmin | scales[12] | qs[128]: 144 bytes per super-block = 18 per sub-block.
    const BYTES: usize = 18;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, _nbg: usize) -> W8 {
        let z0 = _mm512_loadu_si512(p.add(16) as *const __m512i);
        let z1 = _mm512_loadu_si512(p.add(80) as *const __m512i);
        let (d, m) = k4_scales(p);
        W8 {
            v: k4_vectors(z0, z1),
            d,
            m,
        }
    }
}

impl Q32W for Q5K {
    // d | dmin | scales[12] | qh[32] | qs[128]: 176 bytes = 22 per sub-block.
    const BYTES: usize = 22;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, _nbg: usize) -> W8 {
        let z0 = _mm512_loadu_si512(p.add(48) as *const __m512i);
        let z1 = _mm512_loadu_si512(p.add(112) as *const __m512i);
        let (d, m) = k4_scales(p);
        let mut v = k4_vectors(z0, z1);
        // Fifth bit of sub-block s, element l: bit s of qh[l]. Vector v needs bytes
        // qh[E(v)..E(v)+8] in every qword lane s, shifted right by s.
        let qh = _mm512_castsi256_si512(_mm256_loadu_si256(p.add(16) as *const __m256i));
        let sh = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
        let one = _mm512_set1_epi8(1);
        const E: [i64; 4] = [0, 2, 1, 3];
        for (i, v) in v.iter_mut().enumerate() {
            let h = _mm512_permutexvar_epi64(_mm512_set1_epi64(E[i]), qh);
            let h = _mm512_and_si512(_mm512_srlv_epi64(h, sh), one);
            *v = _mm512_or_si512(*v, _mm512_slli_epi16(h, 4));
        }
        W8 { v, d, m }
    }
}

/// Accumulates group `g` of R rows (blocks at `w[r]`) against C tokens.
#[inline(always)]
unsafe fn step<F: Q32W, const R: usize, const C: usize>(
    acc: &mut [[__m512; C]; R],
    w: &[*const u8; R],
    a: &[*const u8; C],
    g: usize,
    nbg: usize,
) {
    let z = W8 {
        v: [_mm512_setzero_si512(); 4],
        d: _mm512_setzero_ps(),
        m: _mm512_setzero_ps(),
    };
    let mut wv = [z; R];
    unroll!(r in R => {
        wv[r] = F::unpack(w[r], nbg);
    });
    unroll!(c in C => {
        let rec = a[c].add(g * X8_GROUP_BYTES);
        let da = _mm512_load_ps(rec.add(off::X8_D) as *const f32);
        let ext = _mm512_load_si512(rec.add(off::X8_EXT) as *const __m512i);
        unroll!(r in R => {
            // e-dot = 256 * dot(w, q1) + dot(w, q2) (see `acts`); two chains, joined
            // with a shift and an add. Activations as memory operands: loading them into
            // registers would leave too few for the accumulators.
            let av = |i: usize| _mm512_load_si512(rec.add(64 * i) as *const __m512i);
            let d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r].v[0], av(0));
            let init = if F::OFFSET { ext } else { _mm512_setzero_si512() };
            let d2 = _mm512_dpbusd_epi32(init, wv[r].v[0], av(4));
            let d1 = _mm512_dpbusd_epi32(d1, wv[r].v[1], av(1));
            let d2 = _mm512_dpbusd_epi32(d2, wv[r].v[1], av(5));
            let d1 = _mm512_dpbusd_epi32(d1, wv[r].v[2], av(2));
            let d2 = _mm512_dpbusd_epi32(d2, wv[r].v[2], av(6));
            let d1 = _mm512_dpbusd_epi32(d1, wv[r].v[3], av(3));
            let d2 = _mm512_dpbusd_epi32(d2, wv[r].v[3], av(7));
            let dot = _mm512_add_epi32(_mm512_slli_epi32(d1, 8), d2);
            let sc = _mm512_mul_ps(wv[r].d, da);
            acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r][c]);
            if !F::OFFSET {
                acc[r][c] = _mm512_fmadd_ps(wv[r].m, _mm512_castsi512_ps(ext), acc[r][c]);
            }
        });
    });
}

/// As [`step`] for a last group of at most 4 blocks: 256-bit arithmetic on the first
/// half of each vector.
#[inline(always)]
unsafe fn half_step<F: Q32W, const R: usize, const C: usize>(
    acc: &mut [[__m512; C]; R],
    w: &[*const u8; R],
    a: &[*const u8; C],
    g: usize,
    nbg: usize,
) {
    let z = W8 {
        v: [_mm512_setzero_si512(); 4],
        d: _mm512_setzero_ps(),
        m: _mm512_setzero_ps(),
    };
    let mut wv = [z; R];
    unroll!(r in R => {
        wv[r] = F::unpack(w[r], nbg);
    });
    unroll!(c in C => {
        let rec = a[c].add(g * X8_GROUP_BYTES);
        let av: [__m256i; 8] = arr(|i| _mm256_load_si256(rec.add(64 * i) as *const __m256i));
        let da = _mm256_load_ps(rec.add(off::X8_D) as *const f32);
        let ext = _mm256_load_si256(rec.add(off::X8_EXT) as *const __m256i);
        unroll!(r in R => {
            let wr = &wv[r];
            let init = if F::OFFSET { ext } else { _mm256_setzero_si256() };
            let w: [__m256i; 4] = arr(|i| _mm512_castsi512_si256(wr.v[i]));
            let d1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w[0], av[0]);
            let d2 = _mm256_dpbusd_epi32(init, w[0], av[4]);
            let d1 = _mm256_dpbusd_epi32(d1, w[1], av[1]);
            let d2 = _mm256_dpbusd_epi32(d2, w[1], av[5]);
            let d1 = _mm256_dpbusd_epi32(d1, w[2], av[2]);
            let d2 = _mm256_dpbusd_epi32(d2, w[2], av[6]);
            let d1 = _mm256_dpbusd_epi32(d1, w[3], av[3]);
            let d2 = _mm256_dpbusd_epi32(d2, w[3], av[7]);
            let dot = _mm256_add_epi32(_mm256_slli_epi32(d1, 8), d2);
            let sc = _mm256_mul_ps(_mm512_castps512_ps256(wr.d), da);
            let mut t = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), sc);
            if !F::OFFSET {
                t = _mm256_fmadd_ps(_mm512_castps512_ps256(wr.m), _mm256_castsi256_ps(ext), t);
            }
            acc[r][c] = _mm512_add_ps(acc[r][c], _mm512_zextps256_ps512(t));
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
    let full = nb / 8;
    for g in 0..full {
        let wg: [*const u8; R] = arr(|r| w[r].add(g * 8 * F::BYTES));
        step::<F, R, C>(&mut acc, &wg, &a, g, 8);
    }
    let rest = nb % 8;
    if rest != 0 {
        let wg: [*const u8; R] = arr(|r| w[r].add(full * 8 * F::BYTES));
        if rest <= 4 {
            half_step::<F, R, C>(&mut acc, &wg, &a, full, rest);
        } else {
            step::<F, R, C>(&mut acc, &wg, &a, full, rest);
        }
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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
        // 1 row x 8 tokens: 8 accumulators leave registers for the unpacked group and
        // the dot chains (2 x 8 spilled to the stack; measured ~10% slower at T = 512).
        while job.t - t0 >= 8 {
            rows::<F, 1, 8>(job, p.clone(), t0);
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
/// AVX-512 F/BW/VL/VNNI present; as [`QJob::run`].
pub unsafe fn run(job: &QJob, rows: Range<usize>) {
    match job.dtype {
        DType::Q4_0 => run_fmt::<Q4_0>(job, rows),
        DType::Q4_1 => run_fmt::<Q4_1>(job, rows),
        DType::Q5_0 => run_fmt::<Q5_0>(job, rows),
        DType::Q5_1 => run_fmt::<Q5_1>(job, rows),
        DType::Q8_0 => run_fmt::<Q8_0>(job, rows),
        DType::Q4_K => run_fmt::<Q4K>(job, rows),
        DType::Q5_K => run_fmt::<Q5K>(job, rows),
        other => unreachable!("avx512_q32 with {other}"),
    }
}
