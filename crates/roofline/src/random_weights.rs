//! Random weights of any quantizable type for a config, under GGUF names, so a preset's
//! shapes can be run and timed without a checkpoint. Values are uniform in
//! `±1/sqrt(in_features)` (activations stay O(1), no denormals or infinities to skew
//! timings); norm weights are 1.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::{quant, DType, Tensor};
use sluice_model::{ModelConfig, WeightStore};

use crate::error::{Result, RooflineError};

/// Weight types the backend can quantize to (the Q8_1/Q8_K activation formats are not
/// weight types).
pub fn can_generate(dtype: DType) -> bool {
    quant::can_quantize(dtype) && !matches!(dtype, DType::Q8_1 | DType::Q8_K | DType::I32)
}

/// A `[rows, cols]` tensor of `dtype` with random values; rows are filled in parallel,
/// each chunk from its own stream so the result does not depend on the thread count.
pub fn random_matrix(dtype: DType, rows: usize, cols: usize, seed: u64) -> Result<Tensor> {
    if !can_generate(dtype) {
        let ok: Vec<&str> = DType::ALL
            .iter()
            .filter(|d| can_generate(**d))
            .map(|d| d.name())
            .collect();
        return Err(RooflineError::Unsupported(format!(
            "random weights of type {dtype}: supported are {}",
            ok.join(", ")
        )));
    }
    if !cols.is_multiple_of(dtype.block_size()) {
        return Err(RooflineError::invalid(
            "weights",
            format!(
                "rows of {cols} are not whole {dtype} blocks of {}",
                dtype.block_size()
            ),
        ));
    }
    let mut t = Tensor::zeros_cpu(dtype, &[rows, cols])?;
    let row_bytes = dtype.row_bytes(cols);
    let scale = 1.0 / (cols as f32).sqrt();
    const CHUNK_ROWS: usize = 64;
    let bytes = t.cpu_bytes_mut()?;
    let chunks: Vec<(usize, &mut [u8])> = bytes
        .chunks_mut(CHUNK_ROWS * row_bytes)
        .enumerate()
        .collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per = chunks.len().div_ceil(threads).max(1);
    let mut groups: Vec<Vec<(usize, &mut [u8])>> = Vec::new();
    let mut it = chunks.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| {
                s.spawn(move || -> Result<()> {
                    let mut row = vec![0f32; cols];
                    for (ci, chunk) in group {
                        let mut rng = ChaCha8Rng::seed_from_u64(
                            seed ^ (ci as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        );
                        for dst in chunk.chunks_mut(row_bytes) {
                            for x in row.iter_mut() {
                                *x = rng.random_range(-scale..scale);
                            }
                            quant::quantize_row(dtype, &row, dst)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| {
                RooflineError::Unsupported("a weight generator thread panicked".into())
            })??;
        }
        Ok::<(), RooflineError>(())
    })?;
    Ok(t)
}

fn ones(n: usize) -> Result<Tensor> {
    Ok(Tensor::from_f32_cpu(&[n], &vec![1.0; n])?)
}

fn small(n: usize, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.02..0.02)).collect();
    Ok(Tensor::from_f32_cpu(&[n], &v)?)
}

/// Every tensor `sluice_model::arch::Model::new` takes for `cfg`, matrices in `dtype`.
pub fn random_weights(cfg: &ModelConfig, dtype: DType, seed: u64) -> Result<WeightStore> {
    let (h, f, qd, kvd, hd) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.head_dim,
    );
    let mut w = WeightStore::new();
    let mut n = seed;
    let mut next = || {
        n = n.wrapping_add(1);
        n
    };
    w.insert(
        "token_embd.weight",
        random_matrix(dtype, cfg.vocab_size, h, next())?,
    );
    if !cfg.tie_embeddings {
        w.insert(
            "output.weight",
            random_matrix(dtype, cfg.vocab_size, h, next())?,
        );
    }
    w.insert("output_norm.weight", ones(h)?);
    for i in 0..cfg.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        w.insert(p("attn_q.weight"), random_matrix(dtype, qd, h, next())?);
        w.insert(p("attn_k.weight"), random_matrix(dtype, kvd, h, next())?);
        w.insert(p("attn_v.weight"), random_matrix(dtype, kvd, h, next())?);
        w.insert(
            p("attn_output.weight"),
            random_matrix(dtype, h, qd, next())?,
        );
        w.insert(p("ffn_gate.weight"), random_matrix(dtype, f, h, next())?);
        w.insert(p("ffn_up.weight"), random_matrix(dtype, f, h, next())?);
        w.insert(p("ffn_down.weight"), random_matrix(dtype, h, f, next())?);
        w.insert(p("attn_norm.weight"), ones(h)?);
        w.insert(p("ffn_norm.weight"), ones(h)?);
        if cfg.qkv_bias {
            w.insert(p("attn_q.bias"), small(qd, next())?);
            w.insert(p("attn_k.bias"), small(kvd, next())?);
            w.insert(p("attn_v.bias"), small(kvd, next())?);
        }
        if cfg.qk_norm {
            w.insert(p("attn_q_norm.weight"), ones(hd)?);
            w.insert(p("attn_k_norm.weight"), ones(hd)?);
        }
        if cfg.sandwich_norms {
            w.insert(p("post_attention_norm.weight"), ones(h)?);
            w.insert(p("post_ffw_norm.weight"), ones(h)?);
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_matrices_are_deterministic_and_in_range() {
        let a = random_matrix(DType::Q8_0, 130, 64, 7).unwrap();
        let b = random_matrix(DType::Q8_0, 130, 64, 7).unwrap();
        assert_eq!(a.cpu_bytes().unwrap(), b.cpu_bytes().unwrap());
        let mut vals = vec![0f32; 130 * 64];
        quant::dequantize_row(DType::Q8_0, a.cpu_bytes().unwrap(), &mut vals).unwrap();
        let bound = 1.0 / 8.0 + 1e-3;
        assert!(vals.iter().all(|v| v.abs() <= bound));
        // Not all equal: the rows really are random.
        assert!(vals.iter().any(|&v| (v - vals[0]).abs() > 1e-3));
        let err = random_matrix(DType::Q8_K, 4, 256, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Q8_K") && err.contains("Q4_0"), "{err}");
        assert!(random_matrix(DType::I32, 4, 32, 1).is_err());
        // Rows must be whole blocks.
        assert!(random_matrix(DType::Q4_0, 4, 48, 1).is_err());
    }
}
