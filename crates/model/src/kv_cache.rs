//! The paged KV cache memory: per layer, K and V pools of fixed-size blocks on the
//! device. Which block belongs to whom is the engine's business (`engine::kv`).

use sluice_backend::{DType, Device, Result, Tensor};

use crate::config::ModelConfig;

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
    /// Bytes one block takes over all layers (K and V).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize, dtype: DType) -> usize {
        2 * cfg.n_layers * block_size * cfg.kv_dim() * dtype.block_bytes() / dtype.block_size()
    }

    pub fn new(
        device: &Device,
        cfg: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
    ) -> Result<KvCache> {
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
