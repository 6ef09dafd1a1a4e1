//! The input of one forward step: a flat list of tokens from many sequences.

/// One sequence's part of a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqInput {
    /// Number of this step's tokens that belong to the sequence (a prefill chunk, one
    /// decode token, or a decode token plus speculative tokens). They are contiguous in
    /// `BatchInput::tokens`, in sequence order.
    pub num_tokens: usize,
    /// Tokens in the KV cache for this sequence after this step's writes
    /// (= previously computed tokens + `num_tokens`).
    pub context_len: usize,
    /// Physical KV block ids, in order, covering at least `context_len` tokens.
    pub block_table: Vec<u32>,
}

/// A step's tokens (vLLM v1's flattened layout): no prefill or decode phases, just
/// sequences that each contribute some tokens.
#[derive(Clone, Debug, Default)]
pub struct BatchInput {
    /// `[T]` token ids, grouped by sequence.
    pub tokens: Vec<u32>,
    /// `[T]` absolute positions of the tokens.
    pub positions: Vec<u32>,
    /// `[T]` KV slot of each token: `block_id * block_size + offset`.
    pub slot_mapping: Vec<u32>,
    pub seqs: Vec<SeqInput>,
    /// Row indices into `tokens` whose logits are wanted (usually each sequence's last
    /// token; all verified positions with speculative decoding).
    pub logits_indices: Vec<u32>,
    /// Optional attention mask among each sequence's new tokens (tree / lookahead
    /// speculation); `None` = causal. When set, it holds for every sequence `s` (in
    /// `seqs` order) with `q_s = num_tokens` new tokens a dense row-major `q_s x q_s`
    /// matrix, all concatenated (`sum q_s^2` bytes); a sequence that needs no mask
    /// still gets its lower-triangular causal matrix (`push_seq` appends one once the
    /// mask exists, `set_seq_mask` creates it). The cached prefix (positions before
    /// `context_len - q_s`) stays visible to every new row (sliding windows apply by
    /// position); among the new tokens, which are written to the cache in row order,
    /// row `i` sees token `j` iff `mask[i][j] != 0`, even `j > i`. Positions are
    /// still the caller's (`positions`), so tree branches may share a position.
    pub custom_mask: Option<Vec<u8>>,
    /// `(row, src)`: the token at `row` of `tokens` is not known on the host; it is the id
    /// at row `src` of the previous step's sampled ids, still on the device (overlapped
    /// steps, see `Model::forward_overlapped`). `tokens[row]` is a placeholder.
    pub deferred_tokens: Vec<(u32, u32)>,
}

/// The `n x n` lower-triangular causal mask, row-major.
pub fn causal_mask(n: usize) -> Vec<u8> {
    (0..n * n).map(|k| (k % n <= k / n) as u8).collect()
}

impl BatchInput {
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.positions.clear();
        self.slot_mapping.clear();
        self.seqs.clear();
        self.logits_indices.clear();
        self.custom_mask = None;
        self.deferred_tokens.clear();
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Appends a sequence's tokens, computing positions and slots from its block table:
    /// `tokens` go at positions `context_len - tokens.len() ..`.
    /// With `want_logits`, the last token's row is added to `logits_indices`.
    pub fn push_seq(
        &mut self,
        tokens: &[u32],
        context_len: usize,
        block_table: &[u32],
        block_size: usize,
        want_logits: bool,
    ) {
        let start = context_len - tokens.len();
        for (i, &tok) in tokens.iter().enumerate() {
            let pos = start + i;
            self.tokens.push(tok);
            self.positions.push(pos as u32);
            let block = block_table[pos / block_size];
            self.slot_mapping
                .push(block * block_size as u32 + (pos % block_size) as u32);
        }
        if want_logits && !tokens.is_empty() {
            self.logits_indices.push(self.tokens.len() as u32 - 1);
        }
        self.seqs.push(SeqInput {
            num_tokens: tokens.len(),
            context_len,
            block_table: block_table.to_vec(),
        });
        if let Some(m) = &mut self.custom_mask {
            m.extend(causal_mask(tokens.len()));
        }
    }

    /// Sets sequence `seq`'s `q x q` mask among its new tokens (row-major, nonzero =
    /// visible; see `custom_mask`), creating causal matrices for the other sequences
    /// if the batch had no mask yet.
    pub fn set_seq_mask(&mut self, seq: usize, mask: &[u8]) -> Result<(), String> {
        let Some(s) = self.seqs.get(seq) else {
            return Err(format!(
                "mask for sequence {seq}, batch has {}",
                self.seqs.len()
            ));
        };
        let q = s.num_tokens;
        if mask.len() != q * q {
            return Err(format!(
                "sequence {seq} has {q} new tokens: its mask needs {} entries, got {}",
                q * q,
                mask.len()
            ));
        }
        let seqs = &self.seqs;
        let m = self.custom_mask.get_or_insert_with(|| {
            seqs.iter()
                .flat_map(|s| causal_mask(s.num_tokens))
                .collect()
        });
        let off: usize = self.seqs[..seq].iter().map(|s| s.num_tokens.pow(2)).sum();
        m[off..off + q * q].copy_from_slice(mask);
        Ok(())
    }

    /// Checks the batch against a cache of `num_blocks` blocks of `block_size`.
    pub fn validate(&self, num_blocks: usize, block_size: usize) -> Result<(), String> {
        let t = self.tokens.len();
        if self.positions.len() != t || self.slot_mapping.len() != t {
            return Err("tokens, positions and slots differ in length".into());
        }
        let total: usize = self.seqs.iter().map(|s| s.num_tokens).sum();
        if total != t {
            return Err(format!("sequences claim {total} tokens, batch has {t}"));
        }
        for (i, s) in self.seqs.iter().enumerate() {
            if s.num_tokens > s.context_len {
                return Err(format!("sequence {i}: more new tokens than context"));
            }
            if s.block_table.len() * block_size < s.context_len {
                return Err(format!(
                    "sequence {i}: block table too short for its context"
                ));
            }
            if let Some(b) = s.block_table.iter().find(|&&b| b as usize >= num_blocks) {
                return Err(format!("sequence {i}: block {b} outside the pool"));
            }
        }
        if let Some(&s) = self
            .slot_mapping
            .iter()
            .find(|&&s| s as usize >= num_blocks * block_size)
        {
            return Err(format!("slot {s} outside the cache"));
        }
        if let Some(&(r, src)) = self
            .deferred_tokens
            .iter()
            .find(|&&(r, src)| r as usize >= t || src > i32::MAX as u32 - 1)
        {
            return Err(format!(
                "deferred token row {r} (source {src}) outside the batch"
            ));
        }
        if let Some(&r) = self.logits_indices.iter().find(|&&r| r as usize >= t) {
            return Err(format!("logits row {r} outside the batch"));
        }
        if let Some(m) = &self.custom_mask {
            let need: usize = self.seqs.iter().map(|s| s.num_tokens.pow(2)).sum();
            if m.len() != need {
                return Err(format!(
                    "custom mask has {} entries; the sequences' new tokens need {need} \
                     (sum of num_tokens^2)",
                    m.len()
                ));
            }
        }
        Ok(())
    }
}
