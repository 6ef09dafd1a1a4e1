//! Decode steps replayed from device graphs (CUDA graphs), one per padded batch size.
//!
//! A decode step is a few hundred small kernels; replaying them as one recorded graph
//! removes the host's launch cost and the gaps between kernels (vLLM and TensorRT-LLM
//! do the same for decode). A graph holds the exact buffers and grid sizes of its
//! recording, so:
//! - a decode batch of `s` sequences is padded to the next bucket size with dummy
//!   sequences (`RunState::prepare`), and one graph is recorded per bucket;
//! - graphs are keyed on every buffer they captured: the run state's generation (its
//!   buffers and block-table width), the KV cache's storage, and the device's epoch
//!   (its scratch buffers); when any changes, all graphs are dropped and re-recorded;
//! - a bucket runs once op by op before it is recorded, so that scratch buffers reach
//!   their size outside the recording (nothing may allocate or synchronise inside one).
//!
//! Mixed and prefill steps (and custom masks) always run op by op.

use std::collections::{HashMap, HashSet};

use sluice_backend::{Device, DeviceGraph};

use super::common::RunState;
use crate::batch::BatchInput;
use crate::error::Result;
use crate::kv_cache::KvCache;

/// Batch sizes a decode step is padded to. Dense at the small end, where a GEMV's cost
/// grows with every row, and 1/8 apart or less above 32.
const BUCKETS: [usize; 28] = [
    1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 72, 80, 96, 112, 128, 144, 160, 192,
    224, 256, 384, 512,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    state_generation: u64,
    kv_addr: usize,
    epoch: u64,
}

pub struct StepGraphs {
    enabled: bool,
    key: Option<Key>,
    graphs: HashMap<usize, DeviceGraph>,
    /// Buckets run once op by op under the current key (scratch sized): ready to record.
    warmed: HashSet<usize>,
}

impl StepGraphs {
    pub fn new(enabled: bool) -> StepGraphs {
        StepGraphs {
            enabled,
            key: None,
            graphs: HashMap::new(),
            warmed: HashSet::new(),
        }
    }

    /// The padded size a graph would run `batch` at: a pure decode (one new token and
    /// its logits per sequence, in order, no custom mask), up to the largest bucket.
    pub fn bucket(&self, batch: &BatchInput) -> Option<usize> {
        let s = batch.seqs.len();
        let decode = self.enabled
            && s > 0
            && batch.custom_mask.is_none()
            && batch.num_tokens() == s
            && batch.logits_indices.len() == s
            && batch
                .logits_indices
                .iter()
                .enumerate()
                .all(|(i, &r)| r as usize == i);
        if !decode {
            return None;
        }
        BUCKETS.iter().copied().find(|&b| b >= s)
    }

    /// Runs a prepared (padded) step of size `bucket`: replays its graph, or records it,
    /// or runs `body` op by op the first time. If recording fails, graphs are turned off
    /// with a warning and the step runs op by op.
    pub fn run(
        &mut self,
        bucket: usize,
        dev: &Device,
        kv: &mut KvCache,
        st: &mut RunState,
        body: impl Fn(&mut KvCache, &mut RunState) -> Result<()>,
    ) -> Result<()> {
        let key = Key {
            state_generation: st.generation,
            kv_addr: kv.layers.first().map(|l| l.k.data_addr()).unwrap_or(0),
            epoch: dev.graph_epoch(),
        };
        if self.key != Some(key) {
            self.graphs.clear();
            self.warmed.clear();
            self.key = Some(key);
        }
        if let Some(g) = self.graphs.get(&bucket) {
            return Ok(dev.launch_graph(g)?);
        }
        if self.warmed.insert(bucket) {
            // The first step of a bucket runs eagerly: its GEMM shapes recur on every
            // replay, so they are the ones worth autotuning (the backend's choice).
            dev.set_gemm_tuning(true);
            let ran = body(kv, st);
            dev.set_gemm_tuning(false);
            return ran;
        }
        dev.begin_capture()?;
        let recorded = body(kv, st);
        let graph = dev.end_capture();
        match (recorded, graph) {
            (Ok(()), Ok(g)) => {
                dev.launch_graph(&g)?;
                self.graphs.insert(bucket, g);
                Ok(())
            }
            (recorded, graph) => {
                let why = match (recorded, graph) {
                    (Err(e), _) => e.to_string(),
                    (_, Err(e)) => e.to_string(),
                    _ => String::new(),
                };
                tracing::warn!("decode step graphs turned off: recording failed: {why}");
                *self = StepGraphs::new(false);
                body(kv, st)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::SeqInput;

    fn decode_batch(s: usize) -> BatchInput {
        let mut b = BatchInput::default();
        for i in 0..s {
            b.tokens.push(1);
            b.positions.push(5);
            b.slot_mapping.push(i as u32);
            b.seqs.push(SeqInput {
                num_tokens: 1,
                context_len: 6,
                block_table: vec![i as u32],
            });
            b.logits_indices.push(i as u32);
        }
        b
    }

    #[test]
    fn only_pure_decode_batches_get_a_bucket() {
        let g = StepGraphs::new(true);
        assert_eq!(g.bucket(&decode_batch(1)), Some(1));
        assert_eq!(g.bucket(&decode_batch(5)), Some(6));
        assert_eq!(g.bucket(&decode_batch(33)), Some(40));
        assert_eq!(g.bucket(&decode_batch(512)), Some(512));
        assert_eq!(g.bucket(&decode_batch(513)), None);
        assert_eq!(g.bucket(&decode_batch(0)), None);
        assert_eq!(StepGraphs::new(false).bucket(&decode_batch(4)), None);
        // A prefill chunk (two rows for one sequence) runs op by op.
        let mut b = decode_batch(2);
        b.tokens.push(1);
        b.positions.push(6);
        b.slot_mapping.push(9);
        b.seqs[1].num_tokens = 2;
        b.logits_indices[1] = 2;
        assert_eq!(g.bucket(&b), None);
        // Logits of only some rows, or a custom mask: op by op.
        let mut b = decode_batch(3);
        b.logits_indices.pop();
        assert_eq!(g.bucket(&b), None);
        let mut b = decode_batch(2);
        b.custom_mask = Some(vec![1, 1]);
        assert_eq!(g.bucket(&b), None);
        for w in BUCKETS.windows(2) {
            assert!(w[0] < w[1]);
        }
    }
}
