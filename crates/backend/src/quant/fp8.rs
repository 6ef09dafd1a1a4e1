//! The scalar OCP FP8 E4M3 codec, shared by the GPU's FP8 weights (`cuda/fp8.rs`, which
//! adds a per-tensor scale) and the FP8 KV cache (`--kv-cache-dtype fp8`, no scale: the
//! codes are the values, as vLLM's `fp8` cache without calibrated scales).
//!
//! E4M3 is 1 sign bit, 4 exponent bits of bias 7 and 3 mantissa bits, with no
//! infinities: codes `0x7F`/`0xFF` are NaN and the largest finite magnitude is 448; the
//! smallest subnormal is 2^-9, the smallest normal 2^-6. Encoding rounds to nearest even
//! and saturates to ±448 (infinities too), like `cvt.rn.satfinite.e4m3x2.f32`;
//! decoding is exact, through [`E4M3_TO_F32`], a 256-entry table built at compile time
//! from the bit fields (the tests check every entry against the format's definition).

/// f32 to E4M3: round to nearest even, saturate to ±448 (infinities included), NaN to
/// `0x7F` with the input's sign. The device's `fp8_from_f32` (cuda/kernels/common.cuh) is
/// the same arithmetic, so host and device quantize bit for bit alike.
pub fn e4m3_from_f32(f: f32) -> u8 {
    let u = f.to_bits();
    let sign = ((u >> 24) & 0x80) as u8;
    let a = u & 0x7fff_ffff;
    let code = if a > 0x7f80_0000 {
        0x7f
    } else if a >= 0x43e0_0000 {
        // |f| >= 448: the next code up (480) is NaN, so everything above saturates.
        0x7e
    } else if a >= 0x3c80_0000 {
        // Normal (|f| >= 2^-6): round the mantissa to 3 bits (a carry bumps the exponent),
        // then rebias the exponent from 127 to 7.
        ((a + 0x7ffff + ((a >> 20) & 1)) >> 20) - (120 << 3)
    } else {
        // Subnormal: a multiple of 2^-9 (0..=8; 8 is the smallest normal, code 0x08).
        // Adding 2^14 (ulp 2^-9) lets the float addition round to nearest even.
        (f32::from_bits(a) + 16384.0).to_bits() - 0x4680_0000
    };
    code as u8 | sign
}

/// E4M3 to f32 (exact, through [`E4M3_TO_F32`]). NaN codes (`0x7F`, `0xFF`) give NaN.
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    E4M3_TO_F32[code as usize]
}

/// The f32 bits of E4M3 `code`, from its fields (a const fn for [`E4M3_TO_F32`]).
const fn e4m3_bits(code: u8) -> u32 {
    let sign = ((code as u32) & 0x80) << 24;
    let e = ((code >> 3) & 0xf) as u32;
    let m = (code & 7) as u32;
    if e == 15 && m == 7 {
        return sign | 0x7fc0_0000;
    }
    if e != 0 {
        // Normal: rebias the exponent from 7 to 127, the 3 mantissa bits on top.
        return sign | ((e + 120) << 23) | (m << 20);
    }
    if m == 0 {
        return sign;
    }
    // Subnormal m * 2^-9 (m = 1..7): normalise so that the leading 1 is implicit.
    let lead = 31 - m.leading_zeros(); // 0, 1 or 2
    let frac = (m << (23 - lead)) & 0x7f_ffff;
    sign | ((127 - 9 + lead) << 23) | frac
}

const fn decode_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = f32::from_bits(e4m3_bits(c as u8));
        c += 1;
    }
    t
}

/// The exact value of every code (NaN for `0x7F` and `0xFF`).
pub static E4M3_TO_F32: [f32; 256] = decode_table();

/// The f16 bits of E4M3 `code`'s value times 2^-8, exactly (subnormals included): f16
/// has E4M3's sign, an exponent one bit wider with bias 15 = 7 + 8 and a mantissa seven
/// bits longer, so the sign moves to bit 15 and the 7 magnitude bits up by 7. The NaN
/// codes would land on 1.875 (480 once scaled); they give f16's quiet NaN `0x7e00`
/// (with the sign) instead, which widens to the same f32 NaN as [`E4M3_TO_F32`]'s. The
/// CPU's vectorised row decode (`cpu/attention.rs`, F16C) makes the same bits (working
/// on the bytes), widens them and multiplies by [`E4M3_F16_SCALE`].
pub const fn e4m3_to_f16_bits(code: u8) -> u16 {
    let c = code as u16;
    let mag = (c & 0x7f) << 7;
    let mag = if mag == 0x3f80 {
        mag ^ F16_NAN_FIX
    } else {
        mag
    };
    ((c & 0x80) << 8) | mag
}

/// What turns the NaN codes' f16 bits (`0x3f80`, magnitude) into f16's quiet NaN `0x7e00`.
pub const F16_NAN_FIX: u16 = 0x3f80 ^ 0x7e00;

/// [`e4m3_to_f16_bits`]'s f16 times this (exact) is the code's value.
pub const E4M3_F16_SCALE: f32 = 256.0;

/// Decodes `src.len().min(dst.len())` codes into `dst` through the table.
#[inline]
pub fn e4m3_row_to_f32(src: &[u8], dst: &mut [f32]) {
    for (d, &c) in dst.iter_mut().zip(src) {
        *d = E4M3_TO_F32[c as usize];
    }
}

/// Encodes `src.len().min(dst.len())` values into `dst` ([`e4m3_from_f32`], no scale).
#[inline]
pub fn e4m3_row_from_f32(src: &[f32], dst: &mut [u8]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = e4m3_from_f32(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of a non-NaN code from its fields, in f64, by the format's definition.
    fn by_definition(code: u8) -> f64 {
        let s = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((code >> 3) & 0xf);
        let m = f64::from(code & 7);
        s * if e == 0 {
            m / 8.0 * 2f64.powi(-6)
        } else {
            (1.0 + m / 8.0) * 2f64.powi(e - 7)
        }
    }

    #[test]
    fn every_code_decodes_and_round_trips() {
        let mut finite = 0;
        for c in 0..=255u8 {
            let v = e4m3_to_f32(c);
            let t = E4M3_TO_F32[c as usize];
            if c & 0x7f == 0x7f {
                assert!(v.is_nan() && t.is_nan(), "{c:#04x} is NaN");
                continue;
            }
            finite += 1;
            assert_eq!(v as f64, by_definition(c), "{c:#04x}");
            // Bit equality: -0 (0x80) decodes to -0.0, not +0.0.
            assert_eq!(t.to_bits(), v.to_bits(), "table at {c:#04x}");
            // Decode then encode gives the code back, the sign of zero included.
            assert_eq!(e4m3_from_f32(v), c, "{c:#04x} = {v}");
        }
        assert_eq!(finite, 254);
        assert_eq!(E4M3_TO_F32[0x7e], 448.0);
        assert_eq!(E4M3_TO_F32[0xfe], -448.0);
        assert_eq!(E4M3_TO_F32[0x01], (-9f32).exp2());
        assert_eq!(E4M3_TO_F32[0x08], (-6f32).exp2());
        assert_eq!(E4M3_TO_F32[0x38], 1.0);
        assert!(E4M3_TO_F32[0x80] == 0.0 && E4M3_TO_F32[0x80].is_sign_negative());
        assert_eq!(e4m3_from_f32(0.0), 0x00);
        assert_eq!(e4m3_from_f32(-0.0), 0x80);
    }

    #[test]
    fn above_448_saturates() {
        for v in [
            448.0,
            448.5,
            463.99,
            464.0, // the midpoint to 480 (a NaN code) still saturates
            479.0,
            480.0,
            1e4,
            1e9,
            f32::MAX,
            f32::INFINITY,
        ] {
            assert_eq!(e4m3_from_f32(v), 0x7e, "{v}");
            assert_eq!(e4m3_from_f32(-v), 0xfe, "-{v}");
        }
        // 416 is the code below 448; 432 is their midpoint and 448 has the even mantissa.
        assert_eq!(E4M3_TO_F32[0x7d], 416.0);
        assert_eq!(e4m3_from_f32(432.0), 0x7e);
        assert_eq!(e4m3_from_f32(431.9), 0x7d);
        assert_eq!(e4m3_from_f32(f32::NAN) & 0x7f, 0x7f);
    }

    #[test]
    fn midpoints_round_to_nearest_even() {
        // Named cases: 1 + 1/16 lies between 1 (0x38, even) and 1.125 (0x39).
        assert_eq!(e4m3_from_f32(1.0625), 0x38);
        // 1.1875 lies between 1.125 (0x39) and 1.25 (0x3a, even).
        assert_eq!(e4m3_from_f32(1.1875), 0x3a);
        // Subnormal: 2^-10 between 0 and 2^-9 goes to 0; 3 * 2^-10 to 2 * 2^-9.
        assert_eq!(e4m3_from_f32((-10f32).exp2()), 0x00);
        assert_eq!(e4m3_from_f32(3.0 * (-10f32).exp2()), 0x02);
        // Every pair of neighbouring positive codes: the midpoint goes to the even
        // code, one f32 ulp either side to the nearer one; same for the negatives.
        for c0 in 0u8..0x7e {
            let c1 = c0 + 1;
            let (v0, v1) = (E4M3_TO_F32[c0 as usize], E4M3_TO_F32[c1 as usize]);
            let mid = (v0 + v1) / 2.0; // exact: both have few significant bits
            assert_eq!(mid as f64, (v0 as f64 + v1 as f64) / 2.0);
            let even = if c0 % 2 == 0 { c0 } else { c1 };
            assert_eq!(e4m3_from_f32(mid), even, "tie {v0}..{v1}");
            assert_eq!(e4m3_from_f32(-mid), even | 0x80, "tie -{v0}..-{v1}");
            assert_eq!(e4m3_from_f32(f32::from_bits(mid.to_bits() - 1)), c0);
            assert_eq!(e4m3_from_f32(f32::from_bits(mid.to_bits() + 1)), c1);
        }
    }

    #[test]
    fn f16_bits_times_256_are_the_table() {
        for c in 0..=255u8 {
            let h = half::f16::from_bits(e4m3_to_f16_bits(c));
            let v = h.to_f32() * E4M3_F16_SCALE;
            assert_eq!(v.to_bits(), E4M3_TO_F32[c as usize].to_bits(), "{c:#04x}");
            assert_eq!(h.is_nan(), c & 0x7f == 0x7f, "{c:#04x}");
        }
    }

    #[test]
    fn rows_use_the_codec() {
        let src = [0.3f32, -1.0625, 500.0, -0.0, 1e-4, 7.0];
        let mut codes = [0u8; 6];
        e4m3_row_from_f32(&src, &mut codes);
        let mut back = [f32::NAN; 6];
        e4m3_row_to_f32(&codes, &mut back);
        for ((&s, &c), &b) in src.iter().zip(&codes).zip(&back) {
            assert_eq!(c, e4m3_from_f32(s));
            assert_eq!(b.to_bits(), e4m3_to_f32(c).to_bits());
        }
        assert_eq!(back[2], 448.0);
    }
}
