//! ggml's block layouts, byte for byte (ggml-common.h), little-endian.
//!
//! Every field is a byte array, so each block has alignment 1 and can be viewed in
//! place anywhere inside a GGUF mapping (ggml's own structs hold `ggml_half`, which
//! would demand 2-byte alignment that odd-sized blocks such as Q4_0's 18 bytes do not
//! keep). Scales are read through accessors that decode the f16/f32 bytes.

use half::f16;

use crate::dtype::DType;
use crate::error::{BackendError, Result};

/// Elements per block of the 32-wide formats (Q4_0 .. Q8_1).
pub const QK: usize = 32;
/// Elements per K-quant super-block.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in Q4_K/Q5_K (and Q3_K's 16 6-bit scales).
pub const K_SCALE_SIZE: usize = 12;

/// Decodes a little-endian IEEE half.
#[inline]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// Encodes an f32 as a little-endian IEEE half (round to nearest even, as ggml).
#[inline]
pub fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// `d * q`, 4-bit quants with a signed offset of 8: `x = d * (q - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    /// Element `j` in the low nibble of `qs[j]`, element `j + 16` in the high nibble.
    pub qs: [u8; QK / 2],
}

/// `x = d * q + m`, 4-bit quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}

/// `x = d * (q - 16)`, 5-bit quants: 4 low bits as in Q4_0, the fifth bit of element
/// `j` in bit `j` of the little-endian u32 `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// `x = d * q + m`, 5-bit quants laid out as Q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// `x = d * q`, signed 8-bit quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}

/// Q8_0 plus `s = d * sum(qs)` (f16), the activation format for Q4_1/Q5_1 dots.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; QK],
}

/// 2-bit K-quant: 16 sub-blocks of 16, `x = d * (sc & 15) * q - dmin * (sc >> 4)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    /// Element `128 n + 32 j + l` is bits `2j..2j+2` of `qs[32 n + l]`.
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

/// 3-bit K-quant: 16 sub-blocks of 16 with 6-bit signed scales (offset 32),
/// `x = d * (sc - 32) * (q - 4 * !hbit)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ3K {
    /// High bit of element `128 n + 32 j + l`: bit `4 n + j` of `hmask[l]`.
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; K_SCALE_SIZE],
    pub d: [u8; 2],
}

/// 4-bit K-quant: 8 sub-blocks of 32 with 6-bit scales and mins,
/// `x = d * sc * q - dmin * m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; K_SCALE_SIZE],
    /// Element `64 j + l` in the low nibble of `qs[32 j + l]`, `64 j + 32 + l` in the high.
    pub qs: [u8; QK_K / 2],
}

/// 5-bit K-quant: Q4_K plus a fifth bit, element `64 j + l` in bit `2j` of `qh[l]`,
/// element `64 j + 32 + l` in bit `2j + 1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 6-bit K-quant: 16 sub-blocks of 16 with signed 8-bit scales, `x = d * sc * (q - 32)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6K {
    /// Low 4 bits: elements `128 n + l` and `128 n + 64 + l` (l < 64) in the low and
    /// high nibbles of `ql[64 n + l]`.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of `128 n + 32 i + l` (l < 32): bits `2i..2i+2` of `qh[32 n + l]`.
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}

/// Activation format of K-quant dots: f32 scale, 8-bit quants, sums of each 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [[u8; 2]; QK_K / 16],
}

impl BlockQ8K {
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    pub fn bsum(&self, i: usize) -> i16 {
        i16::from_le_bytes(self.bsums[i])
    }
}

/// A ggml block type that may be viewed in place over bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]` structs made only of `u8`/`i8` arrays (alignment
/// 1, no padding, every bit pattern valid) whose size is `DTYPE.block_bytes()`.
pub unsafe trait Block: Copy + 'static {
    const DTYPE: DType;
}

macro_rules! impl_block {
    ($($t:ty => $d:expr, $bytes:expr;)*) => {$(
        // SAFETY: byte-array-only repr(C) struct; size checked below.
        unsafe impl Block for $t {
            const DTYPE: DType = $d;
        }
        const _: () = assert!(std::mem::size_of::<$t>() == $bytes);
        const _: () = assert!(std::mem::align_of::<$t>() == 1);
        const _: () = assert!($d.block_bytes() == $bytes);
    )*};
}

impl_block! {
    BlockQ4_0 => DType::Q4_0, 18;
    BlockQ4_1 => DType::Q4_1, 20;
    BlockQ5_0 => DType::Q5_0, 22;
    BlockQ5_1 => DType::Q5_1, 24;
    BlockQ8_0 => DType::Q8_0, 34;
    BlockQ8_1 => DType::Q8_1, 36;
    BlockQ2K => DType::Q2_K, 84;
    BlockQ3K => DType::Q3_K, 110;
    BlockQ4K => DType::Q4_K, 144;
    BlockQ5K => DType::Q5_K, 176;
    BlockQ6K => DType::Q6_K, 210;
    BlockQ8K => DType::Q8_K, 292;
}

/// Views `bytes` (a whole number of blocks) as blocks of `B`.
pub fn as_blocks<B: Block>(bytes: &[u8]) -> Result<&[B]> {
    let size = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return Err(BackendError::Shape(format!(
            "{} bytes are not whole {} blocks of {size}",
            bytes.len(),
            B::DTYPE
        )));
    }
    // SAFETY: `B` has alignment 1, no padding and accepts any bit pattern (trait contract).
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const B, bytes.len() / size) })
}

/// Mutable counterpart of [`as_blocks`].
pub fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> Result<&mut [B]> {
    let size = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return Err(BackendError::Shape(format!(
            "{} bytes are not whole {} blocks of {size}",
            bytes.len(),
            B::DTYPE
        )));
    }
    // SAFETY: as in `as_blocks`, and we hold the unique borrow.
    Ok(unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut B, bytes.len() / size) })
}

/// Scale and min of sub-block `j` (0..8) of Q4_K/Q5_K (ggml `get_scale_min_k4`): the
/// first four keep 6 bits in bytes 0..4 (scales) and 4..8 (mins); the last four keep
/// their low 4 bits in bytes 8..12 and their top 2 bits in the spare top bits of
/// bytes 0..8.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight (scale, min) pairs of a Q4_K/Q5_K block: `[sc0..sc8, m0..m8]`.
#[inline]
pub fn scales_mins_k4(q: &[u8; K_SCALE_SIZE]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, q);
        out[j] = s;
        out[8 + j] = m;
    }
    out
}

/// The sixteen signed scales of a Q3_K block (`6-bit value - 32`): low 4 bits of
/// scale `j` in nibble `j / 8` of byte `j % 8`, high 2 bits in bits `2 (j / 4)` of
/// byte `8 + j % 4`.
#[inline]
pub fn scales_q3k(s: &[u8; K_SCALE_SIZE]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((lo | (hi << 4)) as i8) - 32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's own unpacking of Q3_K scales (kmask trick on u32 words), as a cross-check
    /// of the per-scale formula above.
    fn scales_q3k_ggml(s: &[u8; 12]) -> [i8; 16] {
        const KMASK1: u32 = 0x0303_0303;
        const KMASK2: u32 = 0x0f0f_0f0f;
        let mut aux = [0u32; 4];
        for i in 0..3 {
            aux[i] = u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
        }
        let tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
        aux[3] = ((aux[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
        aux[0] = (aux[0] & KMASK2) | ((tmp & KMASK1) << 4);
        aux[1] = (aux[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
        let mut out = [0i8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (aux[i / 4].to_le_bytes()[i % 4] as i8) - 32;
        }
        out
    }

    #[test]
    fn q3k_scales_match_ggml_unpacking() {
        let mut s = [0u8; 12];
        let mut state = 0x1234_5678u32;
        for _ in 0..1000 {
            for b in s.iter_mut() {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            assert_eq!(scales_q3k(&s), scales_q3k_ggml(&s));
        }
    }

    #[test]
    fn k4_scales_round_trip_packing() {
        // Pack with ggml's quantize_row_q4_K layout, read back with scale_min_k4.
        for seed in 0..64u32 {
            let ls: Vec<u8> = (0..8).map(|j| ((seed * 7 + j * 13) % 64) as u8).collect();
            let lm: Vec<u8> = (0..8)
                .map(|j| ((seed * 11 + j * 5 + 3) % 64) as u8)
                .collect();
            let mut q = [0u8; 12];
            for j in 0..8 {
                if j < 4 {
                    q[j] = ls[j];
                    q[j + 4] = lm[j];
                } else {
                    q[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
                    q[j - 4] |= (ls[j] >> 4) << 6;
                    q[j] |= (lm[j] >> 4) << 6;
                }
            }
            for j in 0..8 {
                assert_eq!(scale_min_k4(j, &q), (ls[j], lm[j]), "seed {seed} j {j}");
            }
        }
    }

    #[test]
    fn block_views_check_length() {
        let bytes = [0u8; 40];
        assert_eq!(
            as_blocks::<BlockQ4_1>(&bytes).map(|b| b.len()).ok(),
            Some(2)
        );
        assert!(as_blocks::<BlockQ4_0>(&bytes).is_err());
    }
}
