//! Which type each tensor gets: llama.cpp's `llama_tensor_get_type` rules
//! (`src/llama-quant.cpp`) for the file types we write, so that a file made here has
//! the same tensor types as the one `llama-quantize` makes from the same input.
//!
//! The rules, for the types we offer:
//! - only tensors whose name ends in `weight`, with at least 2 dimensions, and that are
//!   not norms (`*_norm.weight`) are converted; everything else is copied as it is;
//! - for the F16/BF16/F32 targets every such tensor gets that type, no other rule;
//! - for quantized targets: `output.weight` (or `token_embd.weight` when the
//!   embeddings are tied, as the two share one tensor) gets Q6_K, or Q8_0 when its row
//!   length is not a multiple of the target's block; a Q8_0 target keeps Q8_0;
//! - Q4_K_M / Q5_K_M: `attn_v.weight` and `ffn_down.weight` of the layers where
//!   [`use_more_bits`] holds get Q6_K;
//! - Q4_K_S: `attn_v` of layers 0..4 and `ffn_down` of the first eighth of the layers
//!   get Q5_K;
//! - last, a type whose block does not divide the row length falls back: Q4_K -> Q5_0,
//!   Q5_K -> Q5_1, Q6_K -> Q8_0, and if that still does not fit (or the type has 32-wide
//!   blocks already) F16. llama.cpp refuses the last case for 32-wide types; we fall back
//!   to F16 instead and say so.
//!
//! A tensor already stored in the chosen type is copied, not requantized (as
//! llama.cpp does).

use sluice_backend::DType;

/// What `sluice quantize --type` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum QuantTarget {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    /// llama.cpp's Q4_K_S recipe (mostly Q4_K).
    Q4_K_S,
    Q4_K_M,
    /// llama.cpp's Q5_K_S recipe (mostly Q5_K).
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

/// Names accepted on the command line (case-insensitive), with their target.
/// `Q4_K` and `Q5_K` name the single-type recipes Q4_K_S / Q5_K_S (llama-quantize
/// makes them aliases of the _M mixes instead; we follow the meaning: one type).
pub const TARGET_NAMES: &[(&str, QuantTarget)] = &[
    ("F32", QuantTarget::F32),
    ("F16", QuantTarget::F16),
    ("BF16", QuantTarget::BF16),
    ("Q8_0", QuantTarget::Q8_0),
    ("Q4_0", QuantTarget::Q4_0),
    ("Q4_1", QuantTarget::Q4_1),
    ("Q5_0", QuantTarget::Q5_0),
    ("Q5_1", QuantTarget::Q5_1),
    ("Q4_K", QuantTarget::Q4_K_S),
    ("Q4_K_S", QuantTarget::Q4_K_S),
    ("Q4_K_M", QuantTarget::Q4_K_M),
    ("Q5_K", QuantTarget::Q5_K_S),
    ("Q5_K_S", QuantTarget::Q5_K_S),
    ("Q5_K_M", QuantTarget::Q5_K_M),
    ("Q6_K", QuantTarget::Q6_K),
];

impl QuantTarget {
    pub fn parse(s: &str) -> Option<QuantTarget> {
        let up = s.trim().to_ascii_uppercase();
        TARGET_NAMES.iter().find(|(n, _)| *n == up).map(|&(_, t)| t)
    }

    /// The comma-separated list of accepted names, for error messages.
    pub fn names() -> String {
        TARGET_NAMES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantTarget::F32 => "F32",
            QuantTarget::F16 => "F16",
            QuantTarget::BF16 => "BF16",
            QuantTarget::Q8_0 => "Q8_0",
            QuantTarget::Q4_0 => "Q4_0",
            QuantTarget::Q4_1 => "Q4_1",
            QuantTarget::Q5_0 => "Q5_0",
            QuantTarget::Q5_1 => "Q5_1",
            QuantTarget::Q4_K_S => "Q4_K_S",
            QuantTarget::Q4_K_M => "Q4_K_M",
            QuantTarget::Q5_K_S => "Q5_K_S",
            QuantTarget::Q5_K_M => "Q5_K_M",
            QuantTarget::Q6_K => "Q6_K",
        }
    }

    /// The default tensor type of the recipe.
    pub fn base_type(self) -> DType {
        match self {
            QuantTarget::F32 => DType::F32,
            QuantTarget::F16 => DType::F16,
            QuantTarget::BF16 => DType::BF16,
            QuantTarget::Q8_0 => DType::Q8_0,
            QuantTarget::Q4_0 => DType::Q4_0,
            QuantTarget::Q4_1 => DType::Q4_1,
            QuantTarget::Q5_0 => DType::Q5_0,
            QuantTarget::Q5_1 => DType::Q5_1,
            QuantTarget::Q4_K_S | QuantTarget::Q4_K_M => DType::Q4_K,
            QuantTarget::Q5_K_S | QuantTarget::Q5_K_M => DType::Q5_K,
            QuantTarget::Q6_K => DType::Q6_K,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            QuantTarget::F32 => 0,
            QuantTarget::F16 => 1,
            QuantTarget::Q4_0 => 2,
            QuantTarget::Q4_1 => 3,
            QuantTarget::Q8_0 => 7,
            QuantTarget::Q5_0 => 8,
            QuantTarget::Q5_1 => 9,
            QuantTarget::Q4_K_S => 14,
            QuantTarget::Q4_K_M => 15,
            QuantTarget::Q5_K_S => 16,
            QuantTarget::Q5_K_M => 17,
            QuantTarget::Q6_K => 18,
            QuantTarget::BF16 => 32,
        }
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every
/// third layer in between, get more bits in the _M mixes.
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8).rem_euclid(3) == 2
}

/// What the recipe needs to know about the model.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    pub n_layers: usize,
    /// Number of `attn_v.weight` tensors (llama.cpp's `n_attention_wv`).
    pub n_attn_v: usize,
    /// Whether the model has its own `output.weight` (else it is tied to the embedding).
    pub has_output: bool,
}

/// One tensor's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeChoice {
    pub dtype: DType,
    /// Set when the row length forced a fallback from the type the recipe wanted.
    pub fallback: Option<Fallback>,
}

/// The recipe wanted `wanted`, whose block does not divide `row_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub wanted: DType,
    pub row_len: usize,
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "row length {} is not a multiple of the {} block size {}",
            self.row_len,
            self.wanted,
            self.wanted.block_size()
        )
    }
}

/// Whether llama.cpp converts this tensor at all (others are copied unchanged).
pub fn is_quantizable(name: &str, n_dims: usize) -> bool {
    name.ends_with("weight")
        && n_dims >= 2
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("attn_rel_b.weight")
        && name != "rope_freqs.weight"
}

/// Layer index of a `blk.N.` tensor.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The type of tensor `name` (`ne0` = row length, ggml's innermost dimension) under
/// `target`. `src` is the type it has now: tensors the recipe leaves alone keep it.
pub fn choose_type(
    target: QuantTarget,
    name: &str,
    shape: &[usize],
    src: DType,
    model: &ModelShape,
) -> TypeChoice {
    let keep = TypeChoice {
        dtype: src,
        fallback: None,
    };
    if !is_quantizable(name, shape.len()) {
        return keep;
    }
    let ne0 = shape.last().copied().unwrap_or(0);
    let base = target.base_type();
    if !base.is_quantized() {
        // F16/BF16/F32: no per-tensor rules in llama.cpp (plain types are not quantized
        // "types" there), every quantizable tensor gets the type. Plain types have no
        // block constraint.
        return TypeChoice {
            dtype: base,
            fallback: None,
        };
    }
    let mut t = base;
    let layer = layer_of(name);
    let is_output = name == "output.weight" || (!model.has_output && name == "token_embd.weight");
    if is_output {
        if !ne0.is_multiple_of(base.block_size()) {
            t = DType::Q8_0;
        } else if base != DType::Q8_0 {
            t = DType::Q6_K;
        }
    } else if name.contains("attn_v.weight") {
        let i = layer.unwrap_or(0);
        match target {
            QuantTarget::Q4_K_M | QuantTarget::Q5_K_M if use_more_bits(i, model.n_attn_v) => {
                t = DType::Q6_K
            }
            QuantTarget::Q4_K_S if i < 4 => t = DType::Q5_K,
            _ => {}
        }
    } else if name.contains("ffn_down") {
        let i = layer.unwrap_or(0);
        let n = model.n_layers;
        match target {
            QuantTarget::Q4_K_M | QuantTarget::Q5_K_M if use_more_bits(i, n) => t = DType::Q6_K,
            QuantTarget::Q4_K_S if i < n / 8 => t = DType::Q5_K,
            _ => {}
        }
    }
    if ne0.is_multiple_of(t.block_size()) {
        return TypeChoice {
            dtype: t,
            fallback: None,
        };
    }
    let mut f = match t {
        DType::Q4_K => DType::Q5_0,
        DType::Q5_K => DType::Q5_1,
        DType::Q6_K => DType::Q8_0,
        _ => DType::F16,
    };
    if !ne0.is_multiple_of(f.block_size()) {
        f = DType::F16;
    }
    TypeChoice {
        dtype: f,
        fallback: Some(Fallback {
            wanted: t,
            row_len: ne0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: ModelShape = ModelShape {
        n_layers: 30,
        n_attn_v: 30,
        has_output: false,
    };

    #[test]
    fn use_more_bits_matches_llama_cpp_for_30_layers() {
        // n/8 = 3, 7n/8 = 26: layers 0..3, 26..30, and 3 + 3k + 2 = 5, 8, ..., 23.
        let got: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        let want = vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29];
        assert_eq!(got, want);
    }

    #[test]
    fn norms_and_vectors_are_kept() {
        let c = choose_type(
            QuantTarget::Q4_K_M,
            "blk.0.attn_norm.weight",
            &[576],
            DType::F32,
            &SMOL,
        );
        assert_eq!(c.dtype, DType::F32);
        let c = choose_type(
            QuantTarget::Q4_0,
            "blk.0.attn_q.bias",
            &[576],
            DType::F32,
            &SMOL,
        );
        assert_eq!(c.dtype, DType::F32);
    }

    #[test]
    fn tied_embedding_gets_the_output_policy() {
        // 576 is a multiple of 32, so Q4_0 asks for Q6_K, which falls back to Q8_0.
        let c = choose_type(
            QuantTarget::Q4_0,
            "token_embd.weight",
            &[49152, 576],
            DType::F16,
            &SMOL,
        );
        assert_eq!(c.dtype, DType::Q8_0);
        assert!(c.fallback.is_some());
        // Q4_K_M: 576 % 256 != 0 -> Q8_0 directly (no fallback message).
        let c = choose_type(
            QuantTarget::Q4_K_M,
            "token_embd.weight",
            &[49152, 576],
            DType::F16,
            &SMOL,
        );
        assert_eq!(
            c,
            TypeChoice {
                dtype: DType::Q8_0,
                fallback: None
            }
        );
        // With an output tensor, the embedding keeps the base type; the output gets Q6_K.
        let with_out = ModelShape {
            has_output: true,
            ..SMOL
        };
        let e = choose_type(
            QuantTarget::Q4_0,
            "token_embd.weight",
            &[32000, 4096],
            DType::F16,
            &with_out,
        );
        assert_eq!(e.dtype, DType::Q4_0);
        let o = choose_type(
            QuantTarget::Q4_0,
            "output.weight",
            &[32000, 4096],
            DType::F16,
            &with_out,
        );
        assert_eq!(o.dtype, DType::Q6_K);
        let o = choose_type(
            QuantTarget::Q8_0,
            "output.weight",
            &[32000, 4096],
            DType::F16,
            &with_out,
        );
        assert_eq!(o.dtype, DType::Q8_0);
    }

    #[test]
    fn plain_targets_convert_every_matrix() {
        for (name, shape) in [
            ("token_embd.weight", vec![49152, 576]),
            ("blk.3.ffn_down.weight", vec![576, 1536]),
            ("blk.3.attn_v.weight", vec![192, 576]),
        ] {
            let c = choose_type(QuantTarget::F16, name, &shape, DType::Q4_1, &SMOL);
            assert_eq!(c.dtype, DType::F16, "{name}");
        }
    }

    #[test]
    fn odd_rows_fall_back_to_f16() {
        let c = choose_type(
            QuantTarget::Q8_0,
            "blk.0.attn_q.weight",
            &[100, 100],
            DType::F32,
            &SMOL,
        );
        assert_eq!(c.dtype, DType::F16);
        assert_eq!(
            c.fallback,
            Some(Fallback {
                wanted: DType::Q8_0,
                row_len: 100
            })
        );
        let c = choose_type(
            QuantTarget::Q4_K_S,
            "blk.9.attn_q.weight",
            &[64, 160],
            DType::F32,
            &SMOL,
        );
        // Q4_K (256) -> Q5_0 (32) fits 160.
        assert_eq!(c.dtype, DType::Q5_0);
    }

    /// SmolLM2-135M's tensors: 30 layers, hidden 576, FFN 1536, 3 KV heads of 64,
    /// tied embeddings.
    fn smollm2_tensors() -> Vec<(String, Vec<usize>)> {
        let mut v = vec![
            ("token_embd.weight".to_string(), vec![49152, 576]),
            ("output_norm.weight".to_string(), vec![576]),
        ];
        for i in 0..30 {
            for (n, s) in [
                ("attn_norm.weight", vec![576]),
                ("ffn_norm.weight", vec![576]),
                ("attn_q.weight", vec![576, 576]),
                ("attn_k.weight", vec![192, 576]),
                ("attn_v.weight", vec![192, 576]),
                ("attn_output.weight", vec![576, 576]),
                ("ffn_gate.weight", vec![1536, 576]),
                ("ffn_up.weight", vec![1536, 576]),
                ("ffn_down.weight", vec![576, 1536]),
            ] {
                v.push((format!("blk.{i}.{n}"), s));
            }
        }
        v
    }

    /// The types llama.cpp's `llama-quantize` (vendored by llama-cpp-python 0.3.36)
    /// wrote for SmolLM2-135M F16 -> Q4_K_M: counted from its output file, which our
    /// output matched tensor for tensor (and byte for byte).
    #[test]
    fn q4_k_m_on_smollm2_matches_llama_quantize() {
        let count = |t: QuantTarget, want: DType| {
            smollm2_tensors()
                .iter()
                .filter(|(n, s)| choose_type(t, n, s, DType::F16, &SMOL).dtype == want)
                .count()
        };
        // Norms stay F32 (they are F32 in the input).
        let f32_in = |n: &str| n.ends_with("norm.weight");
        let norms = smollm2_tensors().iter().filter(|(n, _)| f32_in(n)).count();
        assert_eq!(norms, 61);
        let t = QuantTarget::Q4_K_M;
        assert_eq!(count(t, DType::Q8_0), 15); // token_embd + 14 attn_v (use_more_bits)
        assert_eq!(count(t, DType::Q5_0), 166); // Q4_K fallbacks: rows of 576
        assert_eq!(count(t, DType::Q6_K), 14); // ffn_down, use_more_bits
        assert_eq!(count(t, DType::Q4_K), 16); // the other ffn_down (rows of 1536)
        for (name, shape) in smollm2_tensors() {
            let c = choose_type(t, &name, &shape, DType::F16, &SMOL);
            let i = layer_of(&name).unwrap_or(0);
            let want = if name.ends_with("norm.weight") {
                DType::F16 // the input type: kept
            } else if name == "token_embd.weight" {
                DType::Q8_0
            } else if name.contains("ffn_down") {
                if use_more_bits(i, 30) {
                    DType::Q6_K
                } else {
                    DType::Q4_K
                }
            } else if name.contains("attn_v") && use_more_bits(i, 30) {
                DType::Q8_0
            } else {
                DType::Q5_0
            };
            assert_eq!(c.dtype, want, "{name}");
        }
    }

    #[test]
    fn parse_names() {
        assert_eq!(QuantTarget::parse("q4_k_m"), Some(QuantTarget::Q4_K_M));
        assert_eq!(QuantTarget::parse("Q4_K"), Some(QuantTarget::Q4_K_S));
        assert_eq!(QuantTarget::parse("Q3_K"), None);
        assert!(QuantTarget::names().contains("Q6_K"));
    }
}
