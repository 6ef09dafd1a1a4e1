//! Helpers shared by the quant and matmul tests: block packers that build ggml blocks
//! from logical values (transcribed from ggml's quantizers' packing code, independent
//! of our dequantizers), random weights of every type, and the f64 reference matmul.
#![allow(dead_code)]

use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::quant::{self, blocks::f16_bytes};
use sluice_backend::DType;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in [-a, a).
pub fn unif(r: &mut ChaCha8Rng, a: f32) -> f32 {
    (r.random::<f32>() * 2.0 - 1.0) * a
}

pub fn randn_vec(r: &mut ChaCha8Rng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| unif(r, a)).collect()
}

/// Logical content of a K-quant super-block: element `i` is
/// `d * sc[i / g] * q[i] - dmin * mn[i / g]`, g = 16 (Q2_K/Q3_K/Q6_K) or 32 (Q4_K/Q5_K).
pub struct KLogical {
    /// Q2_K 0..3, Q3_K -4..3, Q4_K 0..15, Q5_K 0..31, Q6_K -32..31.
    pub q: [i32; 256],
    /// Q2_K 0..15, Q3_K -32..31, Q4_K/Q5_K 0..63 (8 used), Q6_K -128..127.
    pub sc: [i32; 16],
    /// Q2_K 0..15, Q4_K/Q5_K 0..63 (8 used); unused otherwise.
    pub mn: [i32; 16],
    pub d: f32,
    pub dmin: f32,
}

impl KLogical {
    /// The value of element `i` in f64 (after the f16 rounding of d and dmin).
    pub fn value(&self, dtype: DType, i: usize) -> f64 {
        let g = if matches!(dtype, DType::Q4_K | DType::Q5_K) {
            i / 32
        } else {
            i / 16
        };
        let d = f16::from_f32(self.d).to_f64();
        let dmin = f16::from_f32(self.dmin).to_f64();
        d * self.sc[g] as f64 * self.q[i] as f64 - dmin * self.mn[g] as f64
    }

    /// Random content in range for `dtype`; scales at most `max_sc` in magnitude.
    pub fn random(r: &mut ChaCha8Rng, dtype: DType, max_sc: i32, d: f32, dmin: f32) -> KLogical {
        let (qlo, qhi, slo, shi, has_min) = match dtype {
            DType::Q2_K => (0, 3, 0, 15.min(max_sc), true),
            DType::Q3_K => (-4, 3, (-32).max(-max_sc), 31.min(max_sc), false),
            DType::Q4_K => (0, 15, 0, 63.min(max_sc), true),
            DType::Q5_K => (0, 31, 0, 63.min(max_sc), true),
            DType::Q6_K => (-32, 31, (-128).max(-max_sc), 127.min(max_sc), false),
            other => panic!("not a K-quant: {other}"),
        };
        let mut k = KLogical {
            q: [0; 256],
            sc: [0; 16],
            mn: [0; 16],
            d,
            dmin: if has_min { dmin } else { 0.0 },
        };
        for q in k.q.iter_mut() {
            *q = r.random_range(qlo..=qhi);
        }
        let ng = if matches!(dtype, DType::Q4_K | DType::Q5_K) {
            8
        } else {
            16
        };
        for g in 0..ng {
            k.sc[g] = r.random_range(slo..=shi);
            if has_min {
                k.mn[g] = r.random_range(0..=shi.min(if dtype == DType::Q2_K { 15 } else { 63 }));
            }
        }
        k
    }

    /// Packs into ggml bytes.
    pub fn pack(&self, dtype: DType) -> Vec<u8> {
        match dtype {
            DType::Q2_K => pack_q2k(self),
            DType::Q3_K => pack_q3k(self),
            DType::Q4_K => pack_q45k(self, false),
            DType::Q5_K => pack_q45k(self, true),
            DType::Q6_K => pack_q6k(self),
            other => panic!("not a K-quant: {other}"),
        }
    }
}

/// 2-bit fields of L (0..3) packed as ggml: `qs[32n + l]` holds elements
/// `128n + l + 32j` in bits `2j`.
fn pack2(l: &[u8; 256]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for j in (0..256).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
    qs
}

fn pack_q2k(k: &KLogical) -> Vec<u8> {
    let mut out = Vec::with_capacity(84);
    for g in 0..16 {
        out.push((k.sc[g] as u8) | ((k.mn[g] as u8) << 4));
    }
    let l: [u8; 256] = std::array::from_fn(|i| k.q[i] as u8);
    out.extend_from_slice(&pack2(&l));
    out.extend_from_slice(&f16_bytes(k.d));
    out.extend_from_slice(&f16_bytes(k.dmin));
    out
}

fn pack_q3k(k: &KLogical) -> Vec<u8> {
    // ggml quantize_row_q3_K_ref packing.
    let mut scales = [0u8; 12];
    for j in 0..16 {
        let l = (k.sc[j] + 32) as u8;
        if j < 8 {
            scales[j] = l & 0xF;
        } else {
            scales[j - 8] |= (l & 0xF) << 4;
        }
        scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
    let mut l: [u8; 256] = std::array::from_fn(|i| (k.q[i] + 4) as u8);
    let mut hmask = [0u8; 32];
    let (mut m, mut hm) = (0usize, 1u8);
    for v in l.iter_mut() {
        if *v > 3 {
            hmask[m] |= hm;
            *v -= 4;
        }
        m += 1;
        if m == 32 {
            m = 0;
            hm <<= 1;
        }
    }
    let mut out = Vec::with_capacity(110);
    out.extend_from_slice(&hmask);
    out.extend_from_slice(&pack2(&l));
    out.extend_from_slice(&scales);
    out.extend_from_slice(&f16_bytes(k.d));
    out
}

fn pack_q45k(k: &KLogical, five: bool) -> Vec<u8> {
    // ggml quantize_row_q4_K_ref scale packing.
    let mut scales = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (k.sc[j] as u8, k.mn[j] as u8);
        if j < 4 {
            scales[j] = ls;
            scales[j + 4] = lm;
        } else {
            scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            scales[j - 4] |= (ls >> 4) << 6;
            scales[j] |= (lm >> 4) << 6;
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&f16_bytes(k.d));
    out.extend_from_slice(&f16_bytes(k.dmin));
    out.extend_from_slice(&scales);
    let mut qs = [0u8; 128];
    let mut qh = [0u8; 32];
    let (mut m1, mut m2) = (1u8, 2u8);
    for n in (0..256).step_by(64) {
        for j in 0..32 {
            let mut l1 = k.q[n + j] as u8;
            let mut l2 = k.q[n + j + 32] as u8;
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            qs[n / 2 + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
    if five {
        out.extend_from_slice(&qh);
    }
    out.extend_from_slice(&qs);
    out
}

fn pack_q6k(k: &KLogical) -> Vec<u8> {
    // ggml quantize_row_q6_K_ref packing.
    let l: [u8; 256] = std::array::from_fn(|i| (k.q[i] + 32) as u8);
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for (h, j) in (0..256).step_by(128).enumerate() {
        for i in 0..32 {
            let (q1, q2, q3, q4) = (
                l[j + i] & 0xF,
                l[j + i + 32] & 0xF,
                l[j + i + 64] & 0xF,
                l[j + i + 96] & 0xF,
            );
            ql[64 * h + i] = q1 | (q3 << 4);
            ql[64 * h + i + 32] = q2 | (q4 << 4);
            qh[32 * h + i] = (l[j + i] >> 4)
                | ((l[j + i + 32] >> 4) << 2)
                | ((l[j + i + 64] >> 4) << 4)
                | ((l[j + i + 96] >> 4) << 6);
        }
    }
    let mut out = Vec::with_capacity(210);
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(k.sc.iter().map(|&s| s as i8 as u8));
    out.extend_from_slice(&f16_bytes(k.d));
    out
}

/// Every weight type the matmul supports.
pub const WEIGHT_TYPES: [DType; 13] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// Random `[m, k]` weight bytes of `dtype`: float types and 32-wide formats through
/// `quant::quantize_row` of values in [-1, 1); K-quants as random logical blocks with
/// realistic scales.
pub fn random_weight(r: &mut ChaCha8Rng, dtype: DType, m: usize, k: usize) -> Vec<u8> {
    let rb = dtype.row_bytes(k);
    let mut out = vec![0u8; m * rb];
    for row in out.chunks_exact_mut(rb) {
        if dtype.block_size() == 256 {
            for blk in row.chunks_exact_mut(dtype.block_bytes()) {
                let d = 0.002 + r.random::<f32>() * 0.01;
                let dmin = 0.001 + r.random::<f32>() * 0.01;
                let kl = KLogical::random(r, dtype, 127, d, dmin);
                blk.copy_from_slice(&kl.pack(dtype));
            }
        } else {
            let vals = randn_vec(r, k, 1.0);
            quant::quantize_row(dtype, &vals, row).expect("quantize");
        }
    }
    out
}

/// Dequantized weight rows (f64).
pub fn dequant_f64(dtype: DType, w: &[u8], m: usize, k: usize) -> Vec<f64> {
    let rb = dtype.row_bytes(k);
    let mut row = vec![0f32; k];
    let mut out = Vec::with_capacity(m * k);
    for r in 0..m {
        quant::dequantize_row(dtype, &w[r * rb..(r + 1) * rb], &mut row).expect("dequantize");
        out.extend(row.iter().map(|&v| v as f64));
    }
    out
}
