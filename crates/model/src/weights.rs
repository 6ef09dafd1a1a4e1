//! Named host tensors produced by a loader, in GGUF naming.
//!
//! Every loader maps its file's names onto llama.cpp's GGUF names, so the forward pass
//! reads one vocabulary:
//! `token_embd.weight`, `output_norm.weight`, `output.weight` (absent when tied),
//! `blk.{i}.attn_norm.weight`, `blk.{i}.attn_q.weight` / `.bias`, `attn_k`, `attn_v`,
//! `attn_output`, `blk.{i}.ffn_norm.weight`, `ffn_gate`, `ffn_up`, `ffn_down`,
//! Gemma: `blk.{i}.attn_q_norm.weight`, `attn_k_norm`, `post_attention_norm`,
//! `post_ffw_norm`.
//! 2-D weights are `[out_features, in_features]`, row-major.

use std::collections::BTreeMap;

use sluice_backend::Tensor;

use crate::error::{ModelError, Result};

#[derive(Default)]
pub struct WeightStore {
    tensors: BTreeMap<String, Tensor>,
}

impl WeightStore {
    pub fn new() -> WeightStore {
        WeightStore::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns a tensor (to move it onto a device).
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    pub fn take_opt(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.size_in_bytes()).sum()
    }
}
