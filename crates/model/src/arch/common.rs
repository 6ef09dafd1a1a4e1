//! Pieces every architecture shares: the run state (activation buffers allocated once),
//! RoPE tables, and the upload of a step's batch metadata to the device.

use sluice_backend::{DType, Device, PagedAttentionMeta, Tensor};

use crate::batch::BatchInput;
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};

/// RoPE cos/sin for one base frequency, `[max_positions, head_dim / 2]` each.
pub struct RopeTable {
    pub theta: f32,
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Inverse frequencies `theta^(-2i/d)`, with Llama 3 / linear scaling applied.
pub fn rope_inv_freq(head_dim: usize, theta: f32, scaling: &RopeScaling) -> Vec<f64> {
    let half = head_dim / 2;
    let mut inv: Vec<f64> = (0..half)
        .map(|i| 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    match scaling {
        RopeScaling::None => {}
        RopeScaling::Linear(f) => inv.iter_mut().for_each(|v| *v /= *f as f64),
        // Meta's llama3 rule: keep high frequencies, divide low ones by `factor`,
        // interpolate smoothly in between (transformers `_compute_llama3_parameters`).
        RopeScaling::Llama3(s) => {
            let old = s.original_max_position as f64;
            let low_wavelen = old / s.low_freq_factor as f64;
            let high_wavelen = old / s.high_freq_factor as f64;
            for v in inv.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *v;
                if wavelen < high_wavelen {
                    continue;
                }
                if wavelen > low_wavelen {
                    *v /= s.factor as f64;
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor as f64)
                        / (s.high_freq_factor as f64 - s.low_freq_factor as f64);
                    *v = (1.0 - smooth) * *v / s.factor as f64 + smooth * *v;
                }
            }
        }
    }
    inv
}

impl RopeTable {
    pub fn new(
        device: &Device,
        head_dim: usize,
        theta: f32,
        scaling: &RopeScaling,
        max_positions: usize,
    ) -> Result<RopeTable> {
        let inv = rope_inv_freq(head_dim, theta, scaling);
        let half = head_dim / 2;
        let mut cos = vec![0f32; max_positions * half];
        let mut sin = vec![0f32; max_positions * half];
        for p in 0..max_positions {
            for (i, f) in inv.iter().enumerate() {
                // Angles in f64: at 100k positions f32 products lose several digits.
                let a = p as f64 * f;
                cos[p * half + i] = a.cos() as f32;
                sin[p * half + i] = a.sin() as f32;
            }
        }
        let shape = [max_positions, half];
        Ok(RopeTable {
            theta,
            cos: upload_f32(device, &shape, &cos)?,
            sin: upload_f32(device, &shape, &sin)?,
        })
    }
}

fn upload_f32(device: &Device, shape: &[usize], data: &[f32]) -> Result<Tensor> {
    // As it is: `load_weight` would store a 2-D table in a GPU's weight type (bf16).
    let host = Tensor::from_f32_cpu(shape, data)?;
    Ok(device.upload(&host)?)
}

/// Which projections of the layers are stacked into one weight (see `LayerWeights`),
/// so which of the run state's buffers exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FusedLayout {
    /// Q/K/V rows stacked: `qkv` is used, then split into `q`, `k`, `v`.
    pub qkv: bool,
    /// gate/up rows stacked: `gate_up` is used instead of `gate` and `up`.
    pub gate_up: bool,
}

/// Activation buffers, allocated for `cap_tokens` rows and reused every step
/// (llama2.c's RunState). `set_rows` shrinks their logical shape per step.
pub struct RunState {
    pub cap_tokens: usize,
    pub cap_logits: usize,
    pub fused: FusedLayout,
    /// Changes whenever a buffer here is reallocated (captured graphs hold addresses).
    pub generation: u64,
    /// A block's output `xo` still has to be added to the residual stream `x`: the add
    /// is fused into the next block's input norm (`pre_norm`), or done before the head.
    pub residual_pending: bool,
    /// `[T, hidden]` residual stream
    pub x: Tensor,
    /// `[T, hidden]` normed input of a block
    pub xb: Tensor,
    /// `[T, hidden]` the normed input in bf16, on a GPU (empty elsewhere): what the
    /// GEMMs of bf16 weights read on larger steps (`llama::block`)
    pub xb16: Tensor,
    /// `[T, (n_heads + 2 n_kv_heads) * head_dim]` the stacked projections in bf16, on a
    /// GPU with `fused.qkv` (empty otherwise)
    pub qkv16: Tensor,
    /// `[T, hidden]` block output before the residual add
    pub xo: Tensor,
    /// `[T, n_heads * head_dim]`
    pub q: Tensor,
    /// `[T, n_kv_heads * head_dim]`
    pub k: Tensor,
    /// `[T, n_kv_heads * head_dim]`
    pub v: Tensor,
    /// `[T, (n_heads + 2 n_kv_heads) * head_dim]` fused projections (empty unless
    /// `fused.qkv`)
    pub qkv: Tensor,
    /// `[T, n_heads * head_dim]` attention output
    pub att: Tensor,
    /// `[T, ffn]`
    pub gate: Tensor,
    /// `[T, ffn]`
    pub up: Tensor,
    /// `[T, 2 ffn]` fused gate/up (gate and up are empty when `fused.gate_up`)
    pub gate_up: Tensor,
    /// `[T, ffn]` activation(gate) * up
    pub act: Tensor,
    /// `[L, hidden]` rows whose logits are wanted
    pub last: Tensor,
    /// `[L, vocab]`
    pub logits: Tensor,
    pub meta: BatchTensors,
}

/// The step's batch metadata as device I32 tensors.
pub struct BatchTensors {
    /// `[T]`
    pub tokens: Tensor,
    /// `[T]`
    pub positions: Tensor,
    /// `[T]`
    pub slots: Tensor,
    /// `[S + 1]`
    pub query_start: Tensor,
    /// `[S]`
    pub context_lens: Tensor,
    /// `[S, max_blocks]`
    pub block_tables: Tensor,
    /// `[L]`
    pub logits_rows: Tensor,
    /// `[sum q_s^2]` the batch's custom attention mask as I32 0/1 (see
    /// `BatchInput::custom_mask`); meaningful only when `has_mask`.
    pub custom_mask: Tensor,
    pub has_mask: bool,
    pub num_seqs: usize,
    /// Host staging, reused.
    staging: Vec<i32>,
}

impl RunState {
    pub fn new(
        device: &Device,
        cfg: &ModelConfig,
        cap_tokens: usize,
        cap_logits: usize,
        fused: FusedLayout,
    ) -> Result<RunState> {
        let z = |cols: usize, rows: usize| device.zeros(DType::F32, &[rows, cols]);
        // bf16 activations only where the GEMMs can take them (CUDA).
        let gpu = matches!(device, Device::Cuda(_));
        let z16 = |cols: usize, rows: usize| {
            if gpu {
                device.zeros(DType::BF16, &[rows, cols])
            } else {
                device.zeros(DType::F32, &[rows, 0])
            }
        };
        let i = |n: usize| device.zeros(DType::I32, &[n]);
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (sep_f, qkv_w) = (
            if fused.gate_up { 0 } else { f },
            if fused.qkv {
                cfg.q_dim() + 2 * cfg.kv_dim()
            } else {
                0
            },
        );
        let gu = if fused.gate_up { 2 * f } else { 0 };
        Ok(RunState {
            cap_tokens,
            cap_logits,
            fused,
            generation: 0,
            residual_pending: false,
            x: z(h, cap_tokens)?,
            xb: z(h, cap_tokens)?,
            xb16: z16(h, cap_tokens)?,
            qkv16: z16(qkv_w, cap_tokens)?,
            xo: z(h, cap_tokens)?,
            q: z(cfg.q_dim(), cap_tokens)?,
            k: z(cfg.kv_dim(), cap_tokens)?,
            v: z(cfg.kv_dim(), cap_tokens)?,
            qkv: z(qkv_w, cap_tokens)?,
            att: z(cfg.q_dim(), cap_tokens)?,
            gate: z(sep_f, cap_tokens)?,
            up: z(sep_f, cap_tokens)?,
            gate_up: z(gu, cap_tokens)?,
            act: z(f, cap_tokens)?,
            last: z(h, cap_logits)?,
            logits: z(cfg.vocab_size, cap_logits)?,
            meta: BatchTensors {
                tokens: i(cap_tokens)?,
                positions: i(cap_tokens)?,
                slots: i(cap_tokens)?,
                query_start: i(cap_tokens + 1)?,
                context_lens: i(cap_tokens)?,
                block_tables: device.zeros(DType::I32, &[cap_tokens, 1])?,
                logits_rows: i(cap_logits)?,
                custom_mask: i(1)?,
                has_mask: false,
                num_seqs: 0,
                staging: Vec::new(),
            },
        })
    }

    /// Makes room for the batch (reallocating only when it outgrows the buffers), sets
    /// every buffer's logical row count, and uploads the metadata.
    ///
    /// `pad_to`: a decode batch (one token per sequence, every row's logits wanted) is
    /// padded with dummy sequences up to this many rows, so that a step graph recorded
    /// for that size can replay it (see `BatchTensors::upload`). `prev_ids`: the previous
    /// step's sampled ids on the device, where the batch's deferred tokens come from.
    pub fn prepare(
        &mut self,
        device: &Device,
        cfg: &ModelConfig,
        batch: &BatchInput,
        pad_to: Option<usize>,
        prev_ids: Option<&Tensor>,
    ) -> Result<()> {
        let pad = pad_to.unwrap_or(0);
        let t = batch.num_tokens().max(pad);
        let l = batch.logits_indices.len().max(pad);
        let s = batch.seqs.len().max(pad);
        if t > self.cap_tokens || l > self.cap_logits || s > self.cap_tokens {
            let ct = t.max(s).next_power_of_two().max(self.cap_tokens);
            let cl = l.next_power_of_two().max(self.cap_logits);
            let block_cols = self.meta.block_tables.cols();
            let generation = self.generation + 1;
            *self = RunState::new(device, cfg, ct, cl, self.fused)?;
            self.meta.block_tables = device.zeros(DType::I32, &[ct, block_cols])?;
            self.generation = generation;
        }
        let f = self.fused;
        let (has_xb16, has_qkv16) = (self.xb16.cols() > 0, self.qkv16.cols() > 0);
        for (b, used) in [
            (&mut self.x, true),
            (&mut self.xb, true),
            (&mut self.xb16, has_xb16),
            (&mut self.qkv16, has_qkv16),
            (&mut self.xo, true),
            (&mut self.q, true),
            (&mut self.k, true),
            (&mut self.v, true),
            (&mut self.qkv, f.qkv),
            (&mut self.att, true),
            (&mut self.gate, !f.gate_up),
            (&mut self.up, !f.gate_up),
            (&mut self.gate_up, f.gate_up),
            (&mut self.act, true),
        ] {
            if used {
                b.set_rows(t)?;
            }
        }
        self.last.set_rows(l)?;
        self.logits.set_rows(l)?;
        if self
            .meta
            .upload(device, batch, self.cap_tokens, pad, prev_ids)?
        {
            self.generation += 1;
        }
        Ok(())
    }
}

/// A block's input norm `xb = norm(x)` (into the bf16 `xb16` instead with `bf16`; `xb`
/// is then not written), adding a pending block output to `x` first in the same kernel
/// (`add_rms_norm`): one pass over the residual stream instead of two.
pub fn pre_norm(
    dev: &Device,
    weight: &Tensor,
    eps: f32,
    bf16: bool,
    st: &mut RunState,
) -> Result<()> {
    let out = if bf16 { &mut st.xb16 } else { &mut st.xb };
    if st.residual_pending {
        dev.add_rms_norm(&mut st.x, &st.xo, weight, eps, out)?;
        st.residual_pending = false;
    } else {
        dev.rms_norm(&st.x, weight, eps, out)?;
    }
    Ok(())
}

/// Appends `values` to `st` as i32 (an error for one beyond i32's range).
fn extend_i32(st: &mut Vec<i32>, values: impl IntoIterator<Item = u32>) -> Result<()> {
    for v in values {
        st.push(i32::try_from(v).map_err(|_| ModelError::Batch(format!("value {v} exceeds i32")))?);
    }
    Ok(())
}

impl BatchTensors {
    /// Uploads the batch, padded with `pad - seqs` dummy one-token sequences when `pad`
    /// exceeds the sequence count (a pure decode batch): token 0 at position 0, no KV
    /// write (slot -1), attending to one key of block 0 (finite whatever it holds), its
    /// logits row after the real ones. Their results are never read. The batch's deferred
    /// tokens are taken from `resolve`, the previous step's ids on the device. Returns
    /// whether a buffer was reallocated.
    fn upload(
        &mut self,
        device: &Device,
        batch: &BatchInput,
        cap_tokens: usize,
        pad: usize,
        resolve: Option<&Tensor>,
    ) -> Result<bool> {
        let real = batch.seqs.len();
        let s = real.max(pad);
        let extra = s - real;
        let mut moved = false;
        let max_blocks = batch
            .seqs
            .iter()
            .map(|q| q.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        if max_blocks > self.block_tables.cols() {
            self.block_tables =
                device.zeros(DType::I32, &[cap_tokens, max_blocks.next_power_of_two()])?;
            moved = true;
        }
        let cols = self.block_tables.cols();
        // The seven arrays back to back in one staging vector (one upload on a GPU).
        let st = &mut self.staging;
        st.clear();
        let mut ends = [0usize; 7];
        let zeros = || std::iter::repeat_n(0u32, extra);
        let ones = || std::iter::repeat_n(1u32, extra);
        extend_i32(st, batch.tokens.iter().copied().chain(zeros()))?;
        // Tokens still on the device: -(row of the previous step's ids + 1), which the
        // upload replaces with those ids (`Device::upload_i32_segments`'s `resolve`)
        // before the embedding reads them.
        for &(row, src) in &batch.deferred_tokens {
            st[row as usize] = -(src as i32) - 1;
        }
        ends[0] = st.len();
        extend_i32(st, batch.positions.iter().copied().chain(zeros()))?;
        ends[1] = st.len();
        extend_i32(st, batch.slot_mapping.iter().copied())?;
        st.resize(st.len() + extra, -1);
        ends[2] = st.len();
        let starts = batch.seqs.iter().map(|q| q.num_tokens as u32).chain(ones());
        extend_i32(
            st,
            std::iter::once(0).chain(starts.scan(0u32, |acc, n| {
                *acc += n;
                Some(*acc)
            })),
        )?;
        ends[3] = st.len();
        extend_i32(
            st,
            batch
                .seqs
                .iter()
                .map(|q| q.context_len as u32)
                .chain(ones()),
        )?;
        ends[4] = st.len();
        let rows = batch.logits_indices.len() as u32;
        extend_i32(
            st,
            batch
                .logits_indices
                .iter()
                .copied()
                .chain(rows..rows + extra as u32),
        )?;
        ends[5] = st.len();
        for q in &batch.seqs {
            extend_i32(st, q.block_table.iter().copied())?;
            st.resize(st.len() + cols - q.block_table.len(), 0);
        }
        st.resize(st.len() + extra * cols, 0);
        ends[6] = st.len();
        let seg = |i: usize| &st[if i == 0 { 0 } else { ends[i - 1] }..ends[i]];
        self.tokens.set_len(seg(0).len())?;
        self.positions.set_len(seg(1).len())?;
        self.slots.set_len(seg(2).len())?;
        self.query_start.set_len(seg(3).len())?;
        self.context_lens.set_len(seg(4).len())?;
        self.logits_rows.set_len(seg(5).len())?;
        self.block_tables.set_rows(s.max(1))?;
        let resolve = resolve.filter(|_| !batch.deferred_tokens.is_empty());
        device.upload_i32_segments(
            &mut [
                &mut self.tokens,
                &mut self.positions,
                &mut self.slots,
                &mut self.query_start,
                &mut self.context_lens,
                &mut self.logits_rows,
                &mut self.block_tables,
            ],
            &[seg(0), seg(1), seg(2), seg(3), seg(4), seg(5), seg(6)],
            resolve,
        )?;
        self.num_seqs = s;
        self.has_mask = false;
        if let Some(m) = &batch.custom_mask {
            if m.len() > self.custom_mask.size_in_bytes() / 4 {
                self.custom_mask = device.zeros(DType::I32, &[m.len().next_power_of_two()])?;
                moved = true;
            }
            st.clear();
            st.extend(m.iter().map(|&b| (b != 0) as i32));
            self.custom_mask.set_len(st.len())?;
            device.copy_i32_from_host(&mut self.custom_mask, st)?;
            self.has_mask = true;
        }
        Ok(moved)
    }

    pub fn attention_meta(&self, block_size: usize) -> PagedAttentionMeta<'_> {
        PagedAttentionMeta {
            query_start: &self.query_start,
            context_lens: &self.context_lens,
            block_tables: &self.block_tables,
            num_seqs: self.num_seqs,
            block_size,
            custom_mask: self.has_mask.then_some(&self.custom_mask),
        }
    }
}
