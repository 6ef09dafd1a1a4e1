//! Fixtures shared by the loader tests: tiny models written with a fixed seed, and a
//! raw GGUF byte builder for hostile files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::DType;
use sluice_model::loader::{GgufValue, GgufWriter};

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn rand_f32(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Random bytes for a tensor of this dtype and shape (quant blocks are not decoded by
/// the loader, so any bytes do).
pub fn random_tensor_bytes(rng: &mut ChaCha8Rng, dtype: DType, shape: &[usize]) -> Vec<u8> {
    let n: usize = shape.iter().product();
    if dtype == DType::F32 {
        return f32_bytes(&rand_f32(rng, n));
    }
    let len = dtype.bytes_for(n).expect("whole blocks");
    (0..len).map(|_| rng.random::<u8>()).collect()
}

/// Shapes of a tiny model. Row lengths are multiples of 32 so Q8_0 works.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

impl Dims {
    pub fn tiny() -> Dims {
        Dims {
            hidden: 64,
            ffn: 96,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            vocab: 40,
        }
    }

    /// Gemma-like: head_dim independent of hidden/heads.
    pub fn tiny_gemma() -> Dims {
        Dims {
            hidden: 64,
            ffn: 128,
            layers: 6,
            heads: 4,
            kv_heads: 1,
            head_dim: 32,
            vocab: 48,
        }
    }
}

/// GGUF tensor names and our `[rows, cols]` shapes for a model of `arch`.
pub fn gguf_tensors(arch: &str, d: &Dims, tied: bool) -> Vec<(String, Vec<usize>)> {
    let (h, f, v) = (d.hidden, d.ffn, d.vocab);
    let (q, kv) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let mut out = vec![
        ("token_embd.weight".to_string(), vec![v, h]),
        ("output_norm.weight".to_string(), vec![h]),
    ];
    if !tied {
        out.push(("output.weight".to_string(), vec![v, h]));
    }
    for i in 0..d.layers {
        let mut t = |n: &str, s: Vec<usize>| out.push((format!("blk.{i}.{n}"), s));
        t("attn_norm.weight", vec![h]);
        t("attn_q.weight", vec![q, h]);
        t("attn_k.weight", vec![kv, h]);
        t("attn_v.weight", vec![kv, h]);
        t("attn_output.weight", vec![h, q]);
        if arch == "qwen2" {
            t("attn_q.bias", vec![q]);
            t("attn_k.bias", vec![kv]);
            t("attn_v.bias", vec![kv]);
        }
        if arch == "gemma3" {
            t("attn_q_norm.weight", vec![d.head_dim]);
            t("attn_k_norm.weight", vec![d.head_dim]);
            t("post_attention_norm.weight", vec![h]);
            t("post_ffw_norm.weight", vec![h]);
        }
        t("ffn_norm.weight", vec![h]);
        t("ffn_gate.weight", vec![f, h]);
        t("ffn_up.weight", vec![f, h]);
        t("ffn_down.weight", vec![h, f]);
    }
    out
}

/// Metadata of a tiny `arch` model, llama.cpp key names.
pub fn gguf_metadata(arch: &str, d: &Dims) -> Vec<(String, GgufValue)> {
    let k = |s: &str| format!("{arch}.{s}");
    let mut md = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String(arch.into()),
        ),
        (
            "general.name".to_string(),
            GgufValue::String(format!("tiny-{arch}")),
        ),
        (k("context_length"), GgufValue::U32(256)),
        (k("embedding_length"), GgufValue::U32(d.hidden as u32)),
        (k("block_count"), GgufValue::U32(d.layers as u32)),
        (k("feed_forward_length"), GgufValue::U32(d.ffn as u32)),
        (k("attention.head_count"), GgufValue::U32(d.heads as u32)),
        (
            k("attention.head_count_kv"),
            GgufValue::U32(d.kv_heads as u32),
        ),
        (k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5)),
        (k("rope.freq_base"), GgufValue::F32(10_000.0)),
    ];
    if d.hidden != d.heads * d.head_dim {
        md.push((k("attention.key_length"), GgufValue::U32(d.head_dim as u32)));
        md.push((
            k("attention.value_length"),
            GgufValue::U32(d.head_dim as u32),
        ));
    }
    if arch == "gemma3" {
        md.push((k("attention.sliding_window"), GgufValue::U32(16)));
        md.push((k("rope.freq_base"), GgufValue::F32(1_000_000.0)));
    }
    md
}

/// A writer holding a whole tiny model; 2-D weights in `matrix_dtype`, vectors F32.
pub fn tiny_gguf(arch: &str, d: &Dims, tied: bool, matrix_dtype: DType, seed: u64) -> GgufWriter {
    let mut r = rng(seed);
    let mut w = GgufWriter::new();
    for (k, v) in gguf_metadata(arch, d) {
        w.add_metadata(k, v).expect("metadata");
    }
    for (name, shape) in gguf_tensors(arch, d, tied) {
        let dtype = if shape.len() == 1 {
            DType::F32
        } else {
            matrix_dtype
        };
        let bytes = random_tensor_bytes(&mut r, dtype, &shape);
        w.add_tensor_bytes(name, dtype, &shape, &bytes)
            .expect("tensor");
    }
    w
}

/// Directory of real test models, if `SLUICE_TEST_MODELS` is set.
pub fn models_dir() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_TEST_MODELS") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!("note: SLUICE_TEST_MODELS is not set; skipping a real-model test");
            None
        }
    }
}

/// A model file under `SLUICE_TEST_MODELS`, or None (with a note) when absent.
pub fn model_file(rel: &str) -> Option<PathBuf> {
    let p = models_dir()?.join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("note: {} not present; skipping", p.display());
        None
    }
}

/// Raw GGUF bytes, for files no well-behaved writer would produce.
pub struct RawGguf {
    pub buf: Vec<u8>,
}

impl RawGguf {
    pub fn new(version: u32, n_tensors: u64, n_kv: u64) -> RawGguf {
        let mut buf = b"GGUF".to_vec();
        buf.extend_from_slice(&version.to_le_bytes());
        buf.extend_from_slice(&n_tensors.to_le_bytes());
        buf.extend_from_slice(&n_kv.to_le_bytes());
        RawGguf { buf }
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    /// A u32 metadata entry.
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }

    pub fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &n in ne {
            self.u64(n);
        }
        self.u32(ty).u64(offset)
    }

    /// Pads to 32 and appends `n` data bytes.
    pub fn data(&mut self, n: usize) -> &mut Self {
        let pad = self.buf.len().div_ceil(32) * 32 - self.buf.len();
        self.buf.extend(std::iter::repeat_n(0u8, pad + n));
        self
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.buf).expect("write");
    }
}

/// The error text of a result that must be an error.
pub fn err_text<T>(r: sluice_model::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Asserts `msg` is one line naming `path` and containing every `needle`.
pub fn assert_error(msg: &str, path: &Path, needles: &[&str]) {
    assert!(!msg.contains('\n'), "error should be one line: {msg}");
    assert!(
        msg.contains(&path.display().to_string()),
        "error should name {}: {msg}",
        path.display()
    );
    for n in needles {
        assert!(msg.contains(n), "error should mention {n:?}: {msg}");
    }
}
