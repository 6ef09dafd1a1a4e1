//! Element types, including the GGUF/ggml block-quantized formats.
//!
//! A quantized type stores `block_size()` elements in `block_bytes()` bytes; a row of
//! `n` elements (n a multiple of the block size) takes `row_bytes(n)` bytes. The block
//! layouts are exactly ggml's (see `quant::blocks`), so GGUF tensors are used in place.

use std::fmt;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    /// Activation format for Q4_1/Q5_1 dot products (scale and scaled sum).
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    /// Activation format for K-quant dot products (f32 scale, per-16 sums).
    Q8_K,
    /// OCP FP8 E4M3 (1 sign, 4 exponent bits of bias 7, 3 mantissa bits; no infinities,
    /// largest finite 448), one byte per element. A GPU weight type only (`--dtype fp8`,
    /// see `cuda/fp8.rs`): its per-tensor scale lives with the device buffer, so no file
    /// holds it and the CPU backend refuses it. Not in [`DType::ALL`] (no ggml id).
    F8E4M3,
}

impl DType {
    /// Every type a file can hold, in ggml id order of the quantized ones (not the
    /// GPU-only [`DType::F8E4M3`]).
    pub const ALL: [DType; 16] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q8_1,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
    ];

    /// Elements per block (1 for plain types).
    pub const fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 | DType::I32 | DType::F8E4M3 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 | DType::Q8_1 => 32,
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q8_K => {
                256
            }
        }
    }

    /// Bytes per block (bytes per element for plain types).
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 => 1,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q8_0 => 34,
            DType::Q8_1 => 36,
            DType::Q2_K => 84,
            DType::Q3_K => 110,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
            DType::Q8_K => 292,
        }
    }

    /// Bytes taken by `n` elements; `None` if `n` is not a whole number of blocks.
    pub const fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        Some(n / self.block_size() * self.block_bytes())
    }

    /// Bytes of a row of `n` elements. Panics if `n` is not a multiple of the block size:
    /// callers validate shapes at load time (see `bytes_for`).
    pub fn row_bytes(self, n: usize) -> usize {
        self.bytes_for(n)
            .unwrap_or_else(|| panic!("{n} elements is not a whole number of {self} blocks"))
    }

    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Average bits per weight, for reports.
    pub fn bits_per_element(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_size() as f64
    }

    /// The ggml type id used in GGUF files (`u32::MAX` for the GPU-only F8E4M3, which
    /// has none and is never written to a file).
    pub const fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q8_1 => 9,
            DType::Q2_K => 10,
            DType::Q3_K => 11,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::Q8_K => 15,
            DType::I32 => 26,
            DType::BF16 => 30,
            DType::F8E4M3 => u32::MAX,
        }
    }

    pub fn from_ggml_id(id: u32) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.ggml_id() == id)
    }

    /// Name of a ggml type id we do not support, for error messages.
    pub fn ggml_name(id: u32) -> &'static str {
        match id {
            4 => "Q4_2 (removed from ggml)",
            5 => "Q4_3 (removed from ggml)",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => match DType::from_ggml_id(id) {
                Some(d) => d.name(),
                None => "unknown",
            },
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q8_0 => "Q8_0",
            DType::Q8_1 => "Q8_1",
            DType::Q2_K => "Q2_K",
            DType::Q3_K => "Q3_K",
            DType::Q4_K => "Q4_K",
            DType::Q5_K => "Q5_K",
            DType::Q6_K => "Q6_K",
            DType::Q8_K => "Q8_K",
            DType::F8E4M3 => "F8_E4M3",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        let up = name.to_ascii_uppercase();
        DType::ALL.iter().copied().find(|d| d.name() == up)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_ids_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_ggml_id(d.ggml_id()), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_ggml_id(16), None);
        // The GPU-only FP8 type has no ggml id: no file can claim it.
        assert_eq!(DType::from_ggml_id(DType::F8E4M3.ggml_id()), None);
        assert!(!DType::ALL.contains(&DType::F8E4M3));
        assert_eq!(DType::ggml_name(16), "IQ2_XXS");
    }

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(DType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(DType::Q6_K.bytes_for(512), Some(420));
        assert_eq!(DType::Q4_0.bytes_for(33), None);
        assert!((DType::Q4_K.bits_per_element() - 4.5).abs() < 1e-9);
    }
}
