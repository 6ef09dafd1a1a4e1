//! The paged KV cache memory: per layer, K and V pools of fixed-size blocks on the
//! device. Which block belongs to whom is the engine's business (`engine::kv`).
//!
//! The element type is chosen at start (`--kv-cache-dtype`, see docs/kv-cache.md): F32
//! (the CPU default), F16, BF16, Q8_0 (ggml's block of 32 int8 with an f16 scale, laid
//! along `head_dim`, so each cache row is `head_dim / 32` whole blocks), or FP8
//! (`DType::F8E4M3`: one E4M3 code per element, no scale, values saturating at ±448).
//! The kernels convert on write (`kv_write`) and on read (`paged_attention`).

use sluice_backend::cpu::attention::KV_CACHE_DTYPES;
use sluice_backend::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// The `--kv-cache-dtype` choices, as listed in messages.
const CHOICES: &str = "f32, f16, bf16, q8_0, fp8";

/// Parses a `--kv-cache-dtype` value: `f32`, `f16`, `bf16`, `q8_0`, or `fp8` (also
/// `fp8_e4m3`, `f8e4m3`, `f8_e4m3`) for [`DType::F8E4M3`]; any case.
pub fn parse_kv_cache_dtype(name: &str) -> Result<DType> {
    let s = name.trim();
    let fp8 = ["fp8", "fp8_e4m3", "f8e4m3", "f8_e4m3"];
    let dtype = if fp8.iter().any(|f| s.eq_ignore_ascii_case(f)) {
        Some(DType::F8E4M3)
    } else {
        DType::from_name(s)
    };
    dtype
        .filter(|d| KV_CACHE_DTYPES.contains(d))
        .ok_or_else(|| {
            ModelError::Unsupported(format!("KV cache dtype `{name}`: use one of {CHOICES}"))
        })
}

/// The `--kv-cache-dtype` spelling of a cache type (`fp8` for F8E4M3), for messages.
pub fn kv_cache_dtype_name(dtype: DType) -> String {
    match dtype {
        DType::F8E4M3 => "fp8".into(),
        d => d.name().to_ascii_lowercase(),
    }
}

/// Checks that a cache of `dtype` can hold this model's heads.
pub fn check_kv_cache_dtype(cfg: &ModelConfig, dtype: DType) -> Result<()> {
    if !KV_CACHE_DTYPES.contains(&dtype) {
        return Err(ModelError::Unsupported(format!(
            "KV cache dtype {dtype}: use one of {CHOICES}"
        )));
    }
    if dtype.bytes_for(cfg.head_dim).is_none() {
        return Err(ModelError::Unsupported(format!(
            "a {dtype} KV cache quantizes blocks of {} along the head dimension, but this \
             model's head_dim is {}; use f16 or bf16",
            dtype.block_size(),
            cfg.head_dim
        )));
    }
    Ok(())
}

pub struct LayerKv {
    /// `[num_blocks, n_kv_heads, block_size, head_dim]`
    pub k: Tensor,
    /// `[num_blocks, n_kv_heads, block_size, head_dim]`
    pub v: Tensor,
}

pub struct KvCache {
    pub layers: Vec<LayerKv>,
    pub num_blocks: usize,
    pub block_size: usize,
    pub dtype: DType,
}

impl KvCache {
    /// Bytes one block takes over all layers (K and V): `2 * layers * block_size *
    /// n_kv_heads * row_bytes(head_dim)` (Q8_0: 34 bytes per 32 elements; F8E4M3: 1 byte
    /// per element).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize, dtype: DType) -> usize {
        2 * cfg.n_layers * block_size * cfg.kv_dim() * dtype.block_bytes() / dtype.block_size()
    }

    /// Bytes per cached token over all layers (K and V).
    pub fn bytes_per_token(cfg: &ModelConfig, dtype: DType) -> f64 {
        Self::bytes_per_block(cfg, 1, dtype) as f64
    }

    pub fn new(
        device: &Device,
        cfg: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        check_kv_cache_dtype(cfg, dtype)?;
        let shape = [num_blocks, cfg.n_kv_heads, block_size, cfg.head_dim];
        let layers = (0..cfg.n_layers)
            .map(|_| {
                Ok(LayerKv {
                    k: device.zeros(dtype, &shape)?,
                    v: device.zeros(dtype, &shape)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            num_blocks,
            block_size,
            dtype,
        })
    }

    /// Tokens the cache can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_choice_and_the_fp8_spellings() {
        for (s, d) in [
            ("f32", DType::F32),
            ("F16", DType::F16),
            ("bf16", DType::BF16),
            ("Q8_0", DType::Q8_0),
            ("fp8", DType::F8E4M3),
            ("FP8", DType::F8E4M3),
            ("fp8_e4m3", DType::F8E4M3),
            ("FP8_E4M3", DType::F8E4M3),
            ("f8e4m3", DType::F8E4M3),
            ("F8E4M3", DType::F8E4M3),
            (" f8_e4m3 ", DType::F8E4M3),
        ] {
            assert_eq!(parse_kv_cache_dtype(s).unwrap(), d, "{s}");
        }
        for bad in ["q4_0", "fp8_e5m2", "e5m2", "f8", "i32", ""] {
            let err = parse_kv_cache_dtype(bad).unwrap_err().to_string();
            assert!(err.contains("f32, f16, bf16, q8_0, fp8"), "{bad}: {err}");
        }
        assert_eq!(kv_cache_dtype_name(DType::F8E4M3), "fp8");
        assert_eq!(kv_cache_dtype_name(DType::Q8_0), "q8_0");
    }
}
