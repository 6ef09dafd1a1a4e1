//! The paged KV cache memory: per layer, K and V pools of fixed-size blocks on the
//! device. Which block belongs to whom is the engine's business (`engine::kv`).
//!
//! The element type is chosen at start (`--kv-cache-dtype`, see docs/kv-cache.md): F32
//! (the CPU default), F16, BF16, or Q8_0 (ggml's block of 32 int8 with an f16 scale, laid
//! along `head_dim`, so each cache row is `head_dim / 32` whole blocks). The kernels
//! convert on write (`kv_write`) and on read (`paged_attention`).

use sluice_backend::cpu::attention::KV_CACHE_DTYPES;
use sluice_backend::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Parses a `--kv-cache-dtype` value: `f32`, `f16`, `bf16` or `q8_0` (any case).
pub fn parse_kv_cache_dtype(name: &str) -> Result<DType> {
    DType::from_name(name.trim())
        .filter(|d| KV_CACHE_DTYPES.contains(d))
        .ok_or_else(|| {
            ModelError::Unsupported(format!(
                "KV cache dtype `{name}`: use one of f32, f16, bf16, q8_0"
            ))
        })
}

/// Checks that a cache of `dtype` can hold this model's heads.
pub fn check_kv_cache_dtype(cfg: &ModelConfig, dtype: DType) -> Result<()> {
    if !KV_CACHE_DTYPES.contains(&dtype) {
        return Err(ModelError::Unsupported(format!(
            "KV cache dtype {dtype}: use one of f32, f16, bf16, q8_0"
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
    /// n_kv_heads * row_bytes(head_dim)` (Q8_0: 34 bytes per 32 elements).
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
