//! llama.c checkpoints, legacy "version 0" export (Karpathy's `run.c` layout):
//!
//! ```text
//! 7 x i32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//!          (vocab_size < 0: the classifier is not shared with the embedding)
//! f32 tensors, row-major [out, in]:
//!   token_embedding [vocab, dim]
//!   rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim], wv [L, kv_dim, dim],
//!   wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim], w2 [L, dim, hidden],
//!   w3 [L, hidden, dim], rms_final [dim],
//!   freq_cis_real [seq_len, head/2], freq_cis_imag [seq_len, head/2]   (skipped)
//!   wcls [vocab, dim]                                  (only when not shared)
//! ```
//! The header carries no file length, so the exact size implied by it is how we tell a
//! checkpoint from other files and how truncation is caught.
//!
//! Tokenizer files (`tokenizer.bin`, `tok512.bin`): i32 max_token_length, then per
//! token f32 score, i32 byte length, bytes.

use std::path::{Path, PathBuf};

use sluice_backend::{RopeStyle, Tensor};

use crate::config::{Arch, FfnActivation, ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::loader::validate;
use crate::weights::WeightStore;

pub const HEADER_BYTES: usize = 28;
/// `ak42`: the magic of llama2.c's newer (version 1/2) exports.
const NEW_EXPORT_MAGIC: u32 = 0x616b_3432;
/// Sizes beyond these are not a llama2.c model (and would overflow arithmetic).
const MAX_DIM: i64 = 1 << 16;
const MAX_LAYERS: i64 = 1 << 10;
const MAX_VOCAB: i64 = 1 << 22;
const MAX_SEQ: i64 = 1 << 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Llama2cHeader {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    /// The classifier is the embedding (vocab_size field was positive).
    pub shared_classifier: bool,
    pub seq_len: usize,
}

impl Llama2cHeader {
    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.head_size() * self.n_kv_heads
    }

    /// File length implied by the header, in bytes (None on overflow).
    pub fn expected_len(&self) -> Option<u64> {
        let (d, h, l, v, s) = (
            self.dim as u64,
            self.hidden_dim as u64,
            self.n_layers as u64,
            self.vocab_size as u64,
            self.seq_len as u64,
        );
        let kv = self.kv_dim() as u64;
        let per_layer = d + d * d + 2 * kv * d + d * d + d + 3 * h * d;
        let floats = v * d
            + l.checked_mul(per_layer)?
            + d
            + s.checked_mul(self.head_size() as u64)?
            + if self.shared_classifier { 0 } else { v * d };
        floats.checked_mul(4)?.checked_add(HEADER_BYTES as u64)
    }
}

/// Parses the 7-int header. `Err` explains why these bytes are not a plausible header.
pub fn parse_header(bytes: &[u8]) -> std::result::Result<Llama2cHeader, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "{} bytes is too short for a llama2.c header ({HEADER_BYTES} bytes)",
            bytes.len()
        ));
    }
    let f: Vec<i64> = bytes[..HEADER_BYTES]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
        .collect();
    if f[0] as u32 == NEW_EXPORT_MAGIC {
        return Err(
            "llama2.c version 1/2 exports (magic \"ak42\") are not supported; export with the legacy version 0"
                .into(),
        );
    }
    let (dim, hidden, layers, heads, kv_heads, vocab, seq) =
        (f[0], f[1], f[2], f[3], f[4], f[5], f[6]);
    let checks = [
        ("dim", dim, MAX_DIM),
        ("hidden_dim", hidden, MAX_DIM * 8),
        ("n_layers", layers, MAX_LAYERS),
        ("n_heads", heads, MAX_DIM),
        ("n_kv_heads", kv_heads, MAX_DIM),
        ("vocab_size", vocab.abs(), MAX_VOCAB),
        ("seq_len", seq, MAX_SEQ),
    ];
    for (name, v, max) in checks {
        if v <= 0 || v > max {
            return Err(format!(
                "header field {name} = {v} is out of range (1..={max})"
            ));
        }
    }
    if dim % heads != 0 || heads % kv_heads != 0 {
        return Err(format!(
            "dim {dim} must be a multiple of n_heads {heads}, and n_heads of n_kv_heads {kv_heads}"
        ));
    }
    Ok(Llama2cHeader {
        dim: dim as usize,
        hidden_dim: hidden as usize,
        n_layers: layers as usize,
        n_heads: heads as usize,
        n_kv_heads: kv_heads as usize,
        vocab_size: vocab.unsigned_abs() as usize,
        shared_classifier: vocab > 0,
        seq_len: seq as usize,
    })
}

/// Whether these are the first bytes of a checkpoint whose size is `file_len`.
pub fn is_checkpoint(head: &[u8], file_len: u64) -> bool {
    parse_header(head).is_ok_and(|h| h.expected_len() == Some(file_len))
}

/// Whether `bytes` are a whole llama2.c tokenizer file (of `vocab` tokens if given):
/// every record well-formed and the last one ending exactly at the end.
pub fn is_tokenizer(bytes: &[u8], vocab: Option<usize>) -> bool {
    let rd = |p: usize| -> Option<i32> {
        let b = bytes.get(p..p + 4)?;
        Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let Some(max_len) = rd(0) else { return false };
    if !(1..=1 << 16).contains(&max_len) {
        return false;
    }
    let (mut pos, mut n) = (4usize, 0usize);
    while pos < bytes.len() {
        let Some(score) = rd(pos).map(|b| f32::from_bits(b as u32)) else {
            return false;
        };
        let Some(len) = rd(pos + 4) else { return false };
        if !score.is_finite() || len < 0 || len > max_len {
            return false;
        }
        pos += 8 + len as usize;
        n += 1;
    }
    pos == bytes.len() && n > 0 && vocab.is_none_or(|v| v == n)
}

/// Reads a checkpoint into a config and F32 weights (copied into aligned memory: the
/// 28-byte header leaves the floats only 4-byte aligned in the file).
pub fn load_llama2c(path: &Path) -> Result<(ModelConfig, WeightStore)> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let h = parse_header(&bytes).map_err(|e| ModelError::format(path, e))?;
    let expected = h
        .expected_len()
        .ok_or_else(|| ModelError::format(path, "header dimensions overflow"))?;
    if expected != bytes.len() as u64 {
        return Err(ModelError::format(
            path,
            format!(
                "{} llama2.c checkpoint: the header ({}x{} dim/hidden, {} layers, vocab {}, seq_len {}) implies {expected} bytes, the file has {}",
                if (bytes.len() as u64) < expected { "truncated" } else { "oversized" },
                h.dim,
                h.hidden_dim,
                h.n_layers,
                h.vocab_size,
                h.seq_len,
                bytes.len()
            ),
        ));
    }
    let cfg = config_from_header(&h, path);
    cfg.validate()
        .map_err(|e| ModelError::format(path, format!("invalid config: {e}")))?;

    let mut r = FloatReader {
        bytes: &bytes,
        pos: HEADER_BYTES,
        path,
    };
    let (d, hd, kv, l) = (h.dim, h.hidden_dim, h.kv_dim(), h.n_layers);
    let mut w = WeightStore::new();
    w.insert("token_embd.weight", r.tensor(&[h.vocab_size, d])?);
    let per_layer =
        |r: &mut FloatReader<'_>, w: &mut WeightStore, name: &str, shape: &[usize]| -> Result<()> {
            for i in 0..l {
                w.insert(format!("blk.{i}.{name}"), r.tensor(shape)?);
            }
            Ok(())
        };
    per_layer(&mut r, &mut w, "attn_norm.weight", &[d])?;
    per_layer(&mut r, &mut w, "attn_q.weight", &[d, d])?;
    per_layer(&mut r, &mut w, "attn_k.weight", &[kv, d])?;
    per_layer(&mut r, &mut w, "attn_v.weight", &[kv, d])?;
    per_layer(&mut r, &mut w, "attn_output.weight", &[d, d])?;
    per_layer(&mut r, &mut w, "ffn_norm.weight", &[d])?;
    per_layer(&mut r, &mut w, "ffn_gate.weight", &[hd, d])?; // w1
    per_layer(&mut r, &mut w, "ffn_down.weight", &[d, hd])?; // w2
    per_layer(&mut r, &mut w, "ffn_up.weight", &[hd, d])?; // w3
    w.insert("output_norm.weight", r.tensor(&[d])?);
    r.skip(h.seq_len * h.head_size() * 4)?; // freq_cis_real, freq_cis_imag
    if !h.shared_classifier {
        w.insert("output.weight", r.tensor(&[h.vocab_size, d])?);
    }
    validate::check_weights(path, &cfg, &w)?;
    Ok((cfg, w))
}

fn config_from_header(h: &Llama2cHeader, path: &Path) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        name: crate::loader::gguf_config::file_stem(path),
        hidden_size: h.dim,
        intermediate_size: h.hidden_dim,
        n_layers: h.n_layers,
        n_heads: h.n_heads,
        n_kv_heads: h.n_kv_heads,
        head_dim: h.head_size(),
        vocab_size: h.vocab_size,
        max_position: h.seq_len,
        // run.c: 1e-5 in rmsnorm, theta 10000 on adjacent pairs.
        rms_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_local_theta: None,
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Interleaved,
        sliding_window: None,
        sliding_window_pattern: None,
        activation: FfnActivation::Silu,
        tie_embeddings: h.shared_classifier,
        qkv_bias: false,
        qk_norm: false,
        sandwich_norms: false,
        embedding_scale: None,
        attn_scale: None,
        attn_logit_softcap: None,
        final_logit_softcap: None,
    }
}

struct FloatReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl FloatReader<'_> {
    fn skip(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                ModelError::format(self.path, format!("truncated at byte {}", self.pos))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn tensor(&mut self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let bytes = self.skip(n * 4)?;
        Ok(Tensor::from_bytes_cpu(
            sluice_backend::DType::F32,
            shape,
            bytes,
        )?)
    }
}

/// Files in `dir` that look like a llama2.c checkpoint and tokenizer.
pub struct Llama2cDir {
    pub checkpoint: PathBuf,
    pub tokenizer: Option<PathBuf>,
}

/// Finds the single checkpoint in `dir` (by content) and a tokenizer beside it.
pub fn find_in_dir(dir: &Path) -> Result<Option<Llama2cDir>> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "bin"))
        .collect();
    bins.sort();
    let mut checkpoints = Vec::new();
    for p in &bins {
        if let Some((head, len)) = read_head(p) {
            if is_checkpoint(&head, len) {
                checkpoints.push(p.clone());
            }
        }
    }
    let checkpoint = match checkpoints.len() {
        0 => return Ok(None),
        1 => checkpoints.remove(0),
        _ => {
            return Err(ModelError::format(
                dir,
                format!(
                    "several llama2.c checkpoints ({}); name one",
                    checkpoints
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    };
    let tokenizer = find_tokenizer_beside(&checkpoint)?;
    Ok(Some(Llama2cDir {
        checkpoint,
        tokenizer,
    }))
}

/// `tokenizer.bin`, then `tok*.bin`, beside the checkpoint, whose content is a
/// tokenizer with the checkpoint's vocabulary size.
pub fn find_tokenizer_beside(checkpoint: &Path) -> Result<Option<PathBuf>> {
    let dir = match checkpoint.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let vocab = read_head(checkpoint)
        .and_then(|(head, _)| parse_header(&head).ok())
        .map(|h| h.vocab_size);
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| ModelError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            p.is_file() && p != checkpoint && name.starts_with("tok") && name.ends_with(".bin")
        })
        .collect();
    // `tokenizer.bin` first, then the others by name.
    candidates.sort_by_key(|p| {
        (
            p.file_name().is_none_or(|n| n != "tokenizer.bin"),
            p.clone(),
        )
    });
    for p in candidates {
        // Tokenizer files are small; a large file is not one.
        if std::fs::metadata(&p).is_ok_and(|m| m.len() < 64 << 20) {
            if let Ok(bytes) = std::fs::read(&p) {
                if is_tokenizer(&bytes, vocab) {
                    return Ok(Some(p));
                }
            }
        }
    }
    Ok(None)
}

/// First header bytes and the file length.
pub(crate) fn read_head(path: &Path) -> Option<(Vec<u8>, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut head = vec![0u8; HEADER_BYTES.min(len as usize)];
    f.read_exact(&mut head).ok()?;
    Some((head, len))
}
