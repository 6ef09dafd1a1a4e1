//! Scalar reference kernels for every quantized weight type.
//!
//! Each weight block is decoded once into integers and a few scales, then dotted with
//! up to `CHUNK` tokens' quantized activations in exact integer arithmetic; only the
//! per-block products `d_w * d_a * idot` are floating point. The SIMD kernels compute the
//! same integer sums (in a different order), so on inputs where every float operation is
//! exact (power-of-two scales, small values) all paths agree bit for bit.

use std::ops::Range;

use super::acts::{self, off, K_BYTES, Q32_GROUP_BYTES};
use super::QJob;
use crate::dtype::DType;
use crate::quant::blocks::*;

/// Tokens handled per pass over a weight row (amortises decoding).
const CHUNK: usize = 8;

/// A decoded 32-element block: element `i` is `d * q[i] + m`.
pub struct Dec32 {
    pub q: [i32; 32],
    pub d: f32,
    pub m: f32,
}

/// Decodes block `b` (its bytes) of a 32-wide format.
pub fn decode32(dtype: DType, b: &[u8]) -> Dec32 {
    let mut q = [0i32; 32];
    let h = |x: usize| f16_le([b[x], b[x + 1]]);
    let nib = |qs: &[u8], q: &mut [i32; 32]| {
        for j in 0..16 {
            q[j] = (qs[j] & 0x0F) as i32;
            q[j + 16] = (qs[j] >> 4) as i32;
        }
    };
    let fifth = |qh: u32, q: &mut [i32; 32]| {
        for (i, v) in q.iter_mut().enumerate() {
            *v |= (((qh >> i) & 1) << 4) as i32;
        }
    };
    match dtype {
        DType::Q4_0 => {
            nib(&b[2..18], &mut q);
            q.iter_mut().for_each(|v| *v -= 8);
            Dec32 { q, d: h(0), m: 0.0 }
        }
        DType::Q4_1 => {
            nib(&b[4..20], &mut q);
            Dec32 {
                q,
                d: h(0),
                m: h(2),
            }
        }
        DType::Q5_0 => {
            nib(&b[6..22], &mut q);
            fifth(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &mut q);
            q.iter_mut().for_each(|v| *v -= 16);
            Dec32 { q, d: h(0), m: 0.0 }
        }
        DType::Q5_1 => {
            nib(&b[8..24], &mut q);
            fifth(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &mut q);
            Dec32 {
                q,
                d: h(0),
                m: h(2),
            }
        }
        DType::Q8_0 => {
            for (v, &x) in q.iter_mut().zip(&b[2..34]) {
                *v = x as i8 as i32;
            }
            Dec32 { q, d: h(0), m: 0.0 }
        }
        other => unreachable!("decode32 of {other}"),
    }
}

/// A decoded K-quant super-block: element `i` is `d * sc[i / 16] * q[i] - dmin * mn[i / 16]`.
pub struct DecK {
    pub q: [i32; 256],
    pub sc: [i32; 16],
    pub mn: [i32; 16],
    pub d: f32,
    pub dmin: f32,
}

/// Decodes one super-block (its bytes) of a K-quant format.
pub fn decode_k(dtype: DType, b: &[u8]) -> DecK {
    let mut k = DecK {
        q: [0; 256],
        sc: [0; 16],
        mn: [0; 16],
        d: 0.0,
        dmin: 0.0,
    };
    let h = |x: usize| f16_le([b[x], b[x + 1]]);
    match dtype {
        DType::Q2_K => {
            // scales[16] | qs[64] | d | dmin
            for (g, &s) in b[..16].iter().enumerate() {
                k.sc[g] = (s & 0xF) as i32;
                k.mn[g] = (s >> 4) as i32;
            }
            for n in 0..2 {
                for j in 0..4 {
                    for l in 0..32 {
                        k.q[128 * n + 32 * j + l] = ((b[16 + 32 * n + l] >> (2 * j)) & 3) as i32;
                    }
                }
            }
            k.d = h(80);
            k.dmin = h(82);
        }
        DType::Q3_K => {
            // hmask[32] | qs[64] | scales[12] | d
            let mut s = [0u8; 12];
            s.copy_from_slice(&b[96..108]);
            for (g, v) in scales_q3k(&s).iter().enumerate() {
                k.sc[g] = *v as i32;
            }
            for n in 0..2 {
                for j in 0..4 {
                    for l in 0..32 {
                        let lo = ((b[32 + 32 * n + l] >> (2 * j)) & 3) as i32;
                        let hbit = (b[l] >> (4 * n + j)) & 1;
                        k.q[128 * n + 32 * j + l] = lo - if hbit != 0 { 0 } else { 4 };
                    }
                }
            }
            k.d = h(108);
        }
        DType::Q4_K | DType::Q5_K => {
            // d | dmin | scales[12] | (qh[32] for Q5_K) | qs[128]
            let mut s = [0u8; 12];
            s.copy_from_slice(&b[4..16]);
            let q5 = dtype == DType::Q5_K;
            let qs = if q5 { &b[48..176] } else { &b[16..144] };
            for j in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * j, &s);
                let (sc2, m2) = scale_min_k4(2 * j + 1, &s);
                for g in 0..2 {
                    k.sc[4 * j + g] = sc1 as i32;
                    k.mn[4 * j + g] = m1 as i32;
                    k.sc[4 * j + 2 + g] = sc2 as i32;
                    k.mn[4 * j + 2 + g] = m2 as i32;
                }
                for l in 0..32 {
                    let (mut lo, mut hi) =
                        ((qs[32 * j + l] & 0xF) as i32, (qs[32 * j + l] >> 4) as i32);
                    if q5 {
                        let qh = b[16 + l];
                        lo |= (((qh >> (2 * j)) & 1) << 4) as i32;
                        hi |= (((qh >> (2 * j + 1)) & 1) << 4) as i32;
                    }
                    k.q[64 * j + l] = lo;
                    k.q[64 * j + 32 + l] = hi;
                }
            }
            k.d = h(0);
            k.dmin = h(2);
        }
        DType::Q6_K => {
            // ql[128] | qh[64] | scales[16] (i8) | d
            for g in 0..16 {
                k.sc[g] = b[192 + g] as i8 as i32;
            }
            for n in 0..2 {
                for l in 0..32 {
                    let (ql0, ql1, qh) = (b[64 * n + l], b[64 * n + 32 + l], b[128 + 32 * n + l]);
                    let e = 128 * n + l;
                    k.q[e] = ((ql0 & 0xF) | ((qh & 3) << 4)) as i32 - 32;
                    k.q[e + 32] = ((ql1 & 0xF) | (((qh >> 2) & 3) << 4)) as i32 - 32;
                    k.q[e + 64] = ((ql0 >> 4) | (((qh >> 4) & 3) << 4)) as i32 - 32;
                    k.q[e + 96] = ((ql1 >> 4) | (((qh >> 6) & 3) << 4)) as i32 - 32;
                }
            }
            k.d = h(208);
        }
        other => unreachable!("decode_k of {other}"),
    }
    k
}

fn f32_at(rec: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]])
}

/// Computes `rows` for every token.
///
/// # Safety
/// As [`QJob::run`].
pub(crate) unsafe fn run(job: &QJob, rows: Range<usize>) {
    let kq = job.dtype.is_quantized() && job.dtype.block_size() == 256;
    for r in rows {
        let wrow = std::slice::from_raw_parts(job.w_row(r), job.row_bytes);
        let mut t0 = 0;
        while t0 < job.t {
            let n = CHUNK.min(job.t - t0);
            let mut acc = [0f32; CHUNK];
            if kq {
                row_k(job, wrow, t0, n, &mut acc);
            } else {
                row_32(job, wrow, t0, n, &mut acc);
            }
            for (c, v) in acc.iter().take(n).enumerate() {
                job.store(t0 + c, r, *v);
            }
            t0 += n;
        }
    }
}

unsafe fn act_row<'a>(job: &'a QJob, t: usize) -> &'a [u8] {
    std::slice::from_raw_parts(job.a_row(t), job.act_row_bytes)
}

unsafe fn row_32(job: &QJob, wrow: &[u8], t0: usize, n: usize, acc: &mut [f32; CHUNK]) {
    let bb = job.dtype.block_bytes();
    for (b, blk) in wrow.chunks_exact(bb).enumerate() {
        let w = decode32(job.dtype, blk);
        let j = b % 4;
        for (c, acc) in acc.iter_mut().enumerate().take(n) {
            let rec = &act_row(job, t0 + c)[b / 4 * Q32_GROUP_BYTES..][..Q32_GROUP_BYTES];
            // Dot with e = 256 q1 + q2: |e| <= 32767, 32 products of |q| <= 127 fit i32.
            let mut idot = 0i32;
            for (i, q) in w.q.iter().enumerate() {
                let p = acts::q32_pos(j, i);
                idot += q * acts::joined(rec[p] as i8 as i32, rec[off::LO2 + p] as i8 as i32);
            }
            let da = f32_at(rec, off::D + 16 * j);
            let s = 4.0 * f32_at(rec, off::S + 16 * j);
            *acc += (w.d * da) * idot as f32 + w.m * s;
        }
    }
}

unsafe fn row_k(job: &QJob, wrow: &[u8], t0: usize, n: usize, acc: &mut [f32; CHUNK]) {
    let bb = job.dtype.block_bytes();
    let i16_at = |rec: &[u8], at: usize| i16::from_le_bytes([rec[at], rec[at + 1]]) as i32;
    for (sb, blk) in wrow.chunks_exact(bb).enumerate() {
        let w = decode_k(job.dtype, blk);
        for (c, acc) in acc.iter_mut().enumerate().take(n) {
            let rec = &act_row(job, t0 + c)[sb * K_BYTES..][..K_BYTES];
            // The q1 and q2 dots apart (their joined sum can pass 32 bits), as the SIMD
            // kernels do; the mins' sums joined in integers (they fit).
            let (mut isum1, mut isum2, mut imin) = (0i32, 0i32, 0i32);
            for g in 0..16 {
                let (mut d1, mut d2) = (0i32, 0i32);
                for e in 16 * g..16 * g + 16 {
                    d1 += w.q[e] * rec[e] as i8 as i32;
                    d2 += w.q[e] * rec[off::K_Q2 + e] as i8 as i32;
                }
                isum1 += w.sc[g] * d1;
                isum2 += w.sc[g] * d2;
                let bsum = acts::joined(
                    i16_at(rec, off::BSUMS + 2 * g),
                    i16_at(rec, off::BSUMS2 + 2 * g),
                );
                imin += w.mn[g] * bsum;
            }
            let da = f32_at(rec, off::KD);
            let isum = isum1 as f32 * acts::RESID + isum2 as f32;
            *acc += (w.d * da) * isum - (w.dmin * da) * imin as f32;
        }
    }
}
