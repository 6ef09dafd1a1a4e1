//! The conversion: plan every tensor's type (see `recipe.rs`), write the header, then
//! convert tensor by tensor (rows spread over threads) and stream each to the file.
//!
//! Per tensor: a tensor that keeps its type is copied byte for byte; any other is
//! dequantized row by row to f32 (`quant::dequantize_row`; F16/BF16/F32 sources too)
//! and quantized with ggml's reference quantizers (`quant::quantize_row`), which give
//! the same bytes as `llama-quantize` without an importance matrix.

use std::path::{Path, PathBuf};

use sluice_backend::quant::{dequantize_row, quantize_row};
use sluice_backend::{DType, Tensor};

use crate::config::Arch;
use crate::error::{ModelError, Result};
use crate::loader::gguf::{GgufFile, GGUF_DEFAULT_ALIGNMENT};
use crate::loader::gguf_value::GgufValue;
use crate::loader::gguf_writer::check_value;
use crate::loader::{load_model_parts, safetensors, LoadOptions};
use crate::quantize::hf_meta;
use crate::quantize::recipe::{choose_type, layer_of, Fallback, ModelShape, QuantTarget};
use crate::quantize::writer::{StreamWriter, TensorEntry};

/// `general.quantization_version` that ggml writes (GGML_QNT_VERSION).
pub const QUANTIZATION_VERSION: u32 = 2;

/// Keys not carried over from the input (rewritten, or meaningless in one output file).
const DROPPED_KEYS: &[&str] = &[
    "general.file_type",
    "general.quantization_version",
    "general.alignment",
    "split.no",
    "split.count",
    "split.tensors.count",
];

/// One output tensor and where its data comes from.
pub struct PlannedTensor {
    pub name: String,
    /// Row-major shape (`[rows, ne0]` for a matrix).
    pub shape: Vec<usize>,
    pub src_dtype: DType,
    pub dtype: DType,
    /// Set when the row length forced a fallback type.
    pub fallback: Option<Fallback>,
    source: Tensor,
    /// Hugging Face llama q/k rows are permuted into GGUF's rope layout: heads count.
    permute_heads: Option<usize>,
}

impl PlannedTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn out_bytes(&self) -> usize {
        self.entry().size()
    }

    fn entry(&self) -> TensorEntry {
        TensorEntry {
            name: self.name.clone(),
            shape: self.shape.clone(),
            dtype: self.dtype,
        }
    }
}

pub struct QuantizePlan {
    pub input: PathBuf,
    pub target: QuantTarget,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<PlannedTensor>,
    pub alignment: usize,
    /// Keeps the input's memory map alive (GGUF input).
    _gguf: Option<GgufFile>,
}

impl QuantizePlan {
    pub fn input_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.source.size_in_bytes()).sum()
    }

    pub fn output_bytes(&self) -> usize {
        self.tensors.iter().map(PlannedTensor::out_bytes).sum()
    }

    pub fn total_elements(&self) -> usize {
        self.tensors.iter().map(PlannedTensor::numel).sum()
    }

    /// Output tensor count per type name, for the summary line.
    pub fn type_counts(&self) -> Vec<(DType, usize)> {
        let mut counts: Vec<(DType, usize)> = Vec::new();
        for t in &self.tensors {
            match counts.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some(c) => c.1 += 1,
                None => counts.push((t.dtype, 1)),
            }
        }
        counts
    }
}

/// llama.cpp's tensor order: tensors outside the blocks first, then block by block;
/// by name within each group.
fn order_key(name: &str) -> (i64, String) {
    (layer_of(name).map_or(-1, |l| l as i64), name.to_string())
}

/// Reads the input (a GGUF file, or a Hugging Face directory / safetensors file) and
/// decides every tensor's output type.
pub fn plan(input: &Path, target: QuantTarget) -> Result<QuantizePlan> {
    let meta = std::fs::metadata(input).map_err(|e| ModelError::io(input, e))?;
    let is_hf = safetensors::hf_dir(input).is_some();
    if meta.is_file() && !is_hf {
        let head = read_head(input)?;
        if !crate::loader::gguf::is_gguf(&head) {
            return Err(ModelError::format(
                input,
                "not a GGUF file or a Hugging Face model (config.json + safetensors); `quantize` reads those",
            ));
        }
        return plan_gguf(input, target);
    }
    if !is_hf {
        return Err(ModelError::format(
            input,
            "no config.json here: `quantize` reads a GGUF file or a Hugging Face model directory",
        ));
    }
    plan_hf(input, target)
}

fn read_head(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut head = vec![0u8; 4];
    let n = f.read(&mut head).map_err(|e| ModelError::io(path, e))?;
    head.truncate(n);
    Ok(head)
}

fn plan_gguf(input: &Path, target: QuantTarget) -> Result<QuantizePlan> {
    let g = GgufFile::open(input)?;
    let arch = g.architecture()?.to_string();
    let n_layers = g
        .get_u64(&format!("{arch}.block_count"))
        .map(|n| n as usize)
        .unwrap_or_else(|| {
            g.tensors
                .iter()
                .filter_map(|t| layer_of(&t.name))
                .max()
                .map_or(0, |l| l + 1)
        });
    let shape = ModelShape {
        n_layers,
        n_attn_v: g
            .tensors
            .iter()
            .filter(|t| t.name.contains("attn_v.weight"))
            .count(),
        has_output: g.tensor_info("output.weight").is_some(),
    };
    let mut tensors = Vec::with_capacity(g.tensors.len());
    for info in &g.tensors {
        let source = g.tensor(&info.name)?;
        tensors.push(planned(target, &info.name, source, None, &shape));
    }
    tensors.sort_by_key(|t| order_key(&t.name));

    let mut metadata: Vec<(String, GgufValue)> = Vec::new();
    if let Some(v) = g.get("general.architecture") {
        metadata.push(("general.architecture".into(), v.clone()));
    }
    for (k, v) in &g.metadata {
        if k == "general.architecture" || DROPPED_KEYS.contains(&k.as_str()) {
            continue;
        }
        check_value(k, v)?;
        metadata.push((k.clone(), v.clone()));
    }
    finish_metadata(&mut metadata, target);
    // Keep the input's alignment when it set one (llama.cpp writes the default).
    let alignment = match g.get_u64("general.alignment") {
        Some(a) if a as usize != GGUF_DEFAULT_ALIGNMENT => {
            metadata.push(("general.alignment".into(), GgufValue::U32(a as u32)));
            a as usize
        }
        _ => GGUF_DEFAULT_ALIGNMENT,
    };
    Ok(QuantizePlan {
        input: input.to_path_buf(),
        target,
        metadata,
        tensors,
        alignment,
        _gguf: Some(g),
    })
}

fn plan_hf(input: &Path, target: QuantTarget) -> Result<QuantizePlan> {
    let parts = load_model_parts(input, &LoadOptions::default())?;
    let cfg = parts.config.clone();
    let gguf_arch = hf_meta::gguf_arch(&parts)?;
    let mut metadata = hf_meta::metadata(&parts, &gguf_arch)?;
    for (k, v) in &metadata {
        check_value(k, v)?;
    }
    finish_metadata(&mut metadata, target);
    let shape = ModelShape {
        n_layers: cfg.n_layers,
        n_attn_v: cfg.n_layers,
        has_output: parts.weights.contains("output.weight"),
    };
    // llama.cpp's converter permutes the q/k rows of `llama` models so that ggml's
    // adjacent-pair rope applies (HF's rotate_half pairs i with i + d/2).
    let permute = gguf_arch == "llama" && cfg.arch == Arch::Llama;
    let mut tensors = Vec::new();
    for (name, t) in parts.weights.iter() {
        let heads = if !permute {
            None
        } else if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") {
            Some(cfg.n_heads)
        } else if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") {
            Some(cfg.n_kv_heads)
        } else {
            None
        };
        tensors.push(planned(target, name, t.duplicate()?, heads, &shape));
    }
    tensors.sort_by_key(|t| order_key(&t.name));
    Ok(QuantizePlan {
        input: input.to_path_buf(),
        target,
        metadata,
        tensors,
        alignment: GGUF_DEFAULT_ALIGNMENT,
        _gguf: None,
    })
}

fn finish_metadata(metadata: &mut Vec<(String, GgufValue)>, target: QuantTarget) {
    metadata.push((
        "general.quantization_version".into(),
        GgufValue::U32(QUANTIZATION_VERSION),
    ));
    metadata.push((
        "general.file_type".into(),
        GgufValue::U32(target.file_type()),
    ));
}

fn planned(
    target: QuantTarget,
    name: &str,
    source: Tensor,
    permute_heads: Option<usize>,
    shape: &ModelShape,
) -> PlannedTensor {
    let src_dtype = source.dtype();
    let choice = choose_type(target, name, source.shape(), src_dtype, shape);
    PlannedTensor {
        name: name.to_string(),
        shape: source.shape().to_vec(),
        src_dtype,
        dtype: choice.dtype,
        fallback: choice.fallback,
        source,
        permute_heads,
    }
}

/// Writes the planned file to `output` (via a temporary sibling, renamed at the end)
/// with `threads` threads; `on_tensor` is called after each tensor is written.
pub fn execute(
    plan: &QuantizePlan,
    output: &Path,
    threads: usize,
    on_tensor: &mut dyn FnMut(&PlannedTensor),
) -> Result<()> {
    let entries: Vec<TensorEntry> = plan.tensors.iter().map(PlannedTensor::entry).collect();
    let mut w = StreamWriter::create(output, &plan.metadata, &entries, plan.alignment)?;
    let mut buf = Vec::new();
    for t in &plan.tensors {
        let src = t.source.cpu_bytes()?;
        if t.dtype == t.src_dtype && t.permute_heads.is_none() {
            w.write_tensor(src)?;
        } else {
            convert_tensor(t, src, threads.max(1), &mut buf)?;
            w.write_tensor(&buf)?;
        }
        on_tensor(t);
    }
    w.finish()
}

/// Source row feeding output row `r` of a `[rows, ne0]` q/k matrix (or bias) under
/// llama.cpp's `permute`: within each head of `d` rows, output row `2i + j` takes
/// input row `j * d/2 + i` (j in 0..2).
fn permuted_row(r: usize, rows: usize, heads: usize) -> usize {
    let d = rows / heads;
    let (h, k) = (r / d, r % d);
    let (i, j) = (k / 2, k % 2);
    h * d + j * (d / 2) + i
}

fn convert_tensor(t: &PlannedTensor, src: &[u8], threads: usize, out: &mut Vec<u8>) -> Result<()> {
    let err = |e: sluice_backend::BackendError| {
        ModelError::Unsupported(format!("tensor `{}`: {e}", t.name))
    };
    // A 1-D tensor is one row; a matrix is [rows, ne0] (more dims fold into rows).
    let ne0 = t.shape.last().copied().unwrap_or(1);
    let numel = t.numel();
    let rows = numel / ne0.max(1);
    let (src_row, dst_row) = (t.src_dtype.row_bytes(ne0), t.dtype.row_bytes(ne0));
    if let Some(h) = t.permute_heads {
        // Biases are vectors: permute their elements (rows of one value).
        let (n, d) = if t.shape.len() == 1 {
            (ne0, 1)
        } else {
            (rows, ne0)
        };
        if h == 0 || !n.is_multiple_of(2 * h) || d == 0 {
            return Err(ModelError::Unsupported(format!(
                "tensor `{}`: {n} rows cannot be split into {h} heads of pairs",
                t.name
            )));
        }
    }
    out.clear();
    out.resize(rows * dst_row, 0);
    let per = rows.div_ceil(threads).max(1);
    let vector_permute = t.permute_heads.is_some() && t.shape.len() == 1;
    let result: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(per * dst_row)
            .enumerate()
            .map(|(c, dst)| {
                s.spawn(move || -> Result<()> {
                    let mut row = vec![0f32; ne0];
                    let mut tmp = vec![0f32; ne0];
                    for (k, d) in dst.chunks_exact_mut(dst_row).enumerate() {
                        let r = c * per + k;
                        let sr = match t.permute_heads {
                            Some(h) if !vector_permute => permuted_row(r, rows, h),
                            _ => r,
                        };
                        dequantize_row(
                            t.src_dtype,
                            &src[sr * src_row..(sr + 1) * src_row],
                            &mut row,
                        )
                        .map_err(err)?;
                        if let (Some(h), true) = (t.permute_heads, vector_permute) {
                            for (e, v) in tmp.iter_mut().enumerate() {
                                *v = row[permuted_row(e, ne0, h)];
                            }
                            std::mem::swap(&mut row, &mut tmp);
                        }
                        quantize_row(t.dtype, &row, d).map_err(err)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ModelError::Unsupported("a quantize thread panicked".into()))
                })
            })
            .collect()
    });
    result.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_llama_cpp_reshape() {
        // numpy: w.reshape(heads, 2, d/2).swapaxes(1, 2).reshape(-1): for one head of 8,
        // output rows are input rows 0,4,1,5,2,6,3,7.
        let got: Vec<usize> = (0..16).map(|r| permuted_row(r, 16, 2)).collect();
        assert_eq!(
            got,
            vec![0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
        );
    }
}
