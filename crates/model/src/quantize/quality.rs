//! Quality of a (quantized) model against text and against a reference model:
//! perplexity as llama.cpp's `llama-perplexity` computes it, and the KL divergence of
//! the model's next-token distributions from a reference's saved ones (its `--kl-divergence`
//! mode), with top-1 agreement.
//!
//! Windows: the token stream is cut into non-overlapping windows of `n_ctx` tokens; each
//! is evaluated from an empty cache, and only the predictions in its second half are
//! scored (positions `n_ctx/2 .. n_ctx-1` predicting the next token), so every scored
//! token sees at least `n_ctx/2` tokens of context. This is llama.cpp's scheme.
//!
//! Reference file (`--save-logits`, read by `--kl-base`), little-endian:
//! ```text
//! magic "SLUICEKL" | u32 version (1) | u32 n_vocab | u32 n_ctx | u32 top_k
//! u32 n_tokens | u32 n_chunks | u32 tokens[n_tokens]
//! per scored position (n_chunks x (n_ctx - 1 - n_ctx/2), in order):
//!   f32 log-prob of the actual next token
//!   top_k x (u32 token id, f32 log-prob), largest first
//! ```
//! With `top_k < n_vocab` the KL divergence is computed over the top-k tokens plus one
//! bucket holding the rest of the probability mass: that is the KL divergence of the
//! coarsened distributions, a lower bound on the full one (data-processing inequality)
//! that is exact up to the tail mass the reference puts outside its top k (printed).
//! With `top_k = n_vocab` it is exact.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

pub const KL_MAGIC: &[u8; 8] = b"SLUICEKL";
pub const KL_VERSION: u32 = 1;

/// Scored positions of a window: logits at `first..n_ctx-1` predict tokens `first+1..n_ctx`.
pub fn scored_range(n_ctx: usize) -> std::ops::Range<usize> {
    n_ctx / 2..n_ctx.saturating_sub(1)
}

/// `ln Σ exp(x)`, accumulated in f64 around the maximum.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max as f64;
    }
    let s: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max as f64 + s.ln()
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// The `k` largest log-probs of a logits row, largest first: `(id, log_prob)`.
pub fn top_k(logits: &[f32], lse: f64, k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    let k = k.min(logits.len());
    if k == 0 {
        return;
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    out.extend(
        idx.iter()
            .map(|&i| (i, (logits[i as usize] as f64 - lse) as f32)),
    );
}

/// Mean of a series with the standard error of the mean.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeanAccum {
    sum: f64,
    sum2: f64,
    n: usize,
}

impl MeanAccum {
    pub fn add(&mut self, x: f64) {
        self.sum += x;
        self.sum2 += x * x;
        self.n += 1;
    }

    pub fn count(&self) -> usize {
        self.n
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// Standard error of the mean: sqrt(var / (n-1)) with var the population variance,
    /// llama.cpp's formula.
    pub fn stderr(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let m = self.mean();
        let var = self.sum2 / self.n as f64 - m * m;
        if var > 0.0 {
            (var / (self.n - 1) as f64).sqrt()
        } else {
            0.0
        }
    }
}

/// Perplexity from per-token negative log-likelihoods.
#[derive(Clone, Copy, Debug, Default)]
pub struct Perplexity {
    pub nll: MeanAccum,
}

impl Perplexity {
    pub fn add(&mut self, nll: f64) {
        self.nll.add(nll);
    }

    pub fn ppl(&self) -> f64 {
        self.nll.mean().exp()
    }

    /// The error of exp(mean NLL) by the delta method: ppl * stderr(NLL).
    pub fn error(&self) -> f64 {
        self.ppl() * self.nll.stderr()
    }
}

/// KL divergence and agreement statistics against a reference.
#[derive(Clone, Debug, Default)]
pub struct KlStats {
    pub kl: MeanAccum,
    /// Every token's KL divergence, for the median and percentiles.
    pub values: Vec<f32>,
    /// 1 when the model's most likely token is the reference's.
    pub same_top1: MeanAccum,
    /// p_model(actual) - p_reference(actual).
    pub delta_p: MeanAccum,
    /// ln p_reference(actual) - ln p_model(actual) = this token's contribution to
    /// ln(PPL(model) / PPL(reference)).
    pub ln_ratio: MeanAccum,
    /// Reference perplexity over the same tokens.
    pub base: Perplexity,
    /// Largest probability mass the reference put outside its saved top k.
    pub max_tail: f64,
}

impl KlStats {
    /// Adds one position: the model's logits row (`lse` its log-sum-exp), the
    /// reference's record, and the actual next token.
    pub fn add(&mut self, logits: &[f32], lse: f64, rec: &RefRecord, target: u32) {
        let lq = |id: u32| logits[id as usize] as f64 - lse;
        let mut kl = 0f64;
        let (mut p_top, mut q_top) = (0f64, 0f64);
        for &(id, lp) in &rec.top {
            let p = (lp as f64).exp();
            let lqi = lq(id);
            p_top += p;
            q_top += lqi.exp();
            kl += p * (lp as f64 - lqi);
        }
        let p_rest = (1.0 - p_top).max(0.0);
        let q_rest = (1.0 - q_top).max(1e-30);
        if p_rest > 1e-12 {
            kl += p_rest * (p_rest.ln() - q_rest.ln());
        }
        self.max_tail = self.max_tail.max(p_rest);
        // Rounding can make tiny divergences slightly negative.
        let kl = kl.max(0.0);
        self.kl.add(kl);
        self.values.push(kl as f32);
        let ref_top = rec.top.first().map(|&(id, _)| id);
        self.same_top1
            .add((ref_top == Some(argmax(logits) as u32)) as u32 as f64);
        let lq_t = lq(target);
        self.delta_p
            .add(lq_t.exp() - (rec.target_logprob as f64).exp());
        self.ln_ratio.add(rec.target_logprob as f64 - lq_t);
        self.base.add(-(rec.target_logprob as f64));
    }

    /// The `q`-quantile (0..=1) of the per-token divergences.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        let mut v = self.values.clone();
        v.sort_unstable_by(f32::total_cmp);
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        v[i] as f64
    }

    /// Root mean square of Δp.
    pub fn rms_delta_p(&self) -> f64 {
        let n = self.delta_p.count().max(1) as f64;
        (self.delta_p.sum2 / n).sqrt()
    }
}

/// One scored position of the reference file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RefRecord {
    pub target_logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// The header of a reference file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefHeader {
    pub n_vocab: usize,
    pub n_ctx: usize,
    pub top_k: usize,
    pub n_chunks: usize,
    pub tokens: Vec<u32>,
}

impl RefHeader {
    fn records(&self) -> usize {
        self.n_chunks * scored_range(self.n_ctx).len()
    }

    fn record_bytes(&self) -> usize {
        4 + 8 * self.top_k
    }

    fn header_bytes(&self) -> usize {
        8 + 6 * 4 + 4 * self.tokens.len()
    }
}

pub struct RefWriter {
    w: BufWriter<File>,
    path: PathBuf,
    tmp: PathBuf,
    done: bool,
}

fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| ModelError::Unsupported(format!("{what} {n} does not fit the file format")))
}

impl RefWriter {
    /// Creates the file (under a temporary name until [`RefWriter::finish`]) and writes
    /// the header.
    pub fn create(path: &Path, h: &RefHeader) -> Result<RefWriter> {
        let tmp = crate::quantize::writer::temp_path(path);
        let f = File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let mut w = RefWriter {
            w: BufWriter::with_capacity(1 << 20, f),
            path: path.to_path_buf(),
            tmp,
            done: false,
        };
        let mut b = Vec::with_capacity(h.header_bytes());
        b.extend_from_slice(KL_MAGIC);
        for v in [
            KL_VERSION,
            u32_of(h.n_vocab, "vocabulary size")?,
            u32_of(h.n_ctx, "context")?,
            u32_of(h.top_k, "top-k")?,
            u32_of(h.tokens.len(), "token count")?,
            u32_of(h.n_chunks, "chunk count")?,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for t in &h.tokens {
            b.extend_from_slice(&t.to_le_bytes());
        }
        w.put(&b)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w
            .write_all(b)
            .map_err(|e| ModelError::io(&self.tmp, e))
    }

    pub fn record(&mut self, target_logprob: f32, top: &[(u32, f32)]) -> Result<()> {
        let mut b = Vec::with_capacity(4 + 8 * top.len());
        b.extend_from_slice(&target_logprob.to_le_bytes());
        for &(id, lp) in top {
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&lp.to_le_bytes());
        }
        self.put(&b)
    }

    pub fn finish(mut self) -> Result<()> {
        self.w.flush().map_err(|e| ModelError::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| ModelError::io(&self.path, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for RefWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub struct RefReader {
    r: BufReader<File>,
    path: PathBuf,
    pub header: RefHeader,
    buf: Vec<u8>,
}

impl RefReader {
    pub fn open(path: &Path) -> Result<RefReader> {
        let f = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let mut r = BufReader::with_capacity(1 << 20, f);
        let bad = |m: String| ModelError::format(path, m);
        let mut head = [0u8; 32];
        r.read_exact(&mut head).map_err(|_| {
            bad(format!(
                "{len} bytes: too short for a sluice reference-logits file"
            ))
        })?;
        if &head[..8] != KL_MAGIC {
            return Err(bad(
                "not a reference-logits file written by `sluice perplexity --save-logits` (bad magic)".into(),
            ));
        }
        let f = |i: usize| {
            u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]) as usize
        };
        let (version, n_vocab, n_ctx, top_k, n_tokens, n_chunks) =
            (f(8), f(12), f(16), f(20), f(24), f(28));
        if version != KL_VERSION as usize {
            return Err(bad(format!(
                "format version {version}, expected {KL_VERSION}"
            )));
        }
        if n_ctx < 4 || top_k == 0 || top_k > n_vocab || n_chunks * n_ctx > n_tokens {
            return Err(bad(format!(
                "inconsistent header: n_vocab {n_vocab}, n_ctx {n_ctx}, top_k {top_k}, {n_tokens} tokens, {n_chunks} chunks"
            )));
        }
        let mut header = RefHeader {
            n_vocab,
            n_ctx,
            top_k,
            n_chunks,
            tokens: Vec::new(),
        };
        let expect =
            32u64 + 4 * n_tokens as u64 + (header.records() * header.record_bytes()) as u64;
        if expect != len {
            return Err(bad(format!(
                "the file is {len} bytes, its header implies {expect} (truncated or not this format)"
            )));
        }
        let mut tb = vec![0u8; 4 * n_tokens];
        r.read_exact(&mut tb).map_err(|e| ModelError::io(path, e))?;
        header.tokens = tb
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(t) = header.tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(bad(format!(
                "token id {t} is outside the vocabulary of {n_vocab}"
            )));
        }
        let rb = header.record_bytes();
        Ok(RefReader {
            r,
            path: path.to_path_buf(),
            header,
            buf: vec![0u8; rb],
        })
    }

    /// The next record (in file order).
    pub fn next_record(&mut self, rec: &mut RefRecord) -> Result<()> {
        self.r
            .read_exact(&mut self.buf)
            .map_err(|e| ModelError::io(&self.path, e))?;
        let b = &self.buf;
        let w = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        rec.target_logprob = f32::from_le_bytes(w(0));
        rec.top.clear();
        let n_vocab = self.header.n_vocab as u32;
        for k in 0..self.header.top_k {
            let id = u32::from_le_bytes(w(4 + 8 * k));
            if id >= n_vocab {
                return Err(ModelError::format(
                    &self.path,
                    format!("record holds token id {id}, outside the vocabulary of {n_vocab}"),
                ));
            }
            rec.top.push((id, f32::from_le_bytes(w(8 + 8 * k))));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(x: &[f32]) -> Vec<f64> {
        let lse = log_sum_exp(x);
        x.iter().map(|&v| (v as f64 - lse).exp()).collect()
    }

    #[test]
    fn scored_range_is_the_second_half() {
        assert_eq!(scored_range(512), 256..511);
        assert_eq!(scored_range(7), 3..6);
    }

    #[test]
    fn log_sum_exp_matches_naive() {
        let x = [0.5f32, -1.0, 3.0, 2.0];
        let naive: f64 = x.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&x) - naive).abs() < 1e-12);
        // Stable where the naive sum overflows.
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f64.ln())).abs() < 1e-9);
    }

    #[test]
    fn top_k_is_sorted_and_normalised() {
        let x = [0.1f32, 2.0, -1.0, 2.0, 0.7];
        let lse = log_sum_exp(&x);
        let mut out = Vec::new();
        top_k(&x, lse, 3, &mut out);
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3, 4]);
        top_k(&x, lse, 5, &mut out);
        let total: f64 = out.iter().map(|p| (p.1 as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn kl_full_vocab_matches_definition_and_top_k_bounds_it() {
        let p = [1.0f32, 0.2, -0.5, 2.0, 0.0, -2.0];
        let q = [0.8f32, 0.5, -0.4, 1.7, 0.3, -1.0];
        let (pp, qq) = (softmax(&p), softmax(&q));
        let want: f64 = pp.iter().zip(&qq).map(|(a, b)| a * (a / b).ln()).sum();
        let lse_p = log_sum_exp(&p);
        let mut rec = RefRecord::default();
        top_k(&p, lse_p, p.len(), &mut rec.top);
        rec.target_logprob = (p[2] as f64 - lse_p) as f32;
        let mut s = KlStats::default();
        s.add(&q, log_sum_exp(&q), &rec, 2);
        assert!(
            (s.kl.mean() - want).abs() < 1e-6,
            "{} vs {want}",
            s.kl.mean()
        );
        assert_eq!(s.same_top1.mean(), 1.0);
        // Top-2 plus a rest bucket: a lower bound, close to the full value.
        let mut rec2 = rec.clone();
        rec2.top.truncate(2);
        let mut s2 = KlStats::default();
        s2.add(&q, log_sum_exp(&q), &rec2, 2);
        assert!(s2.kl.mean() <= want + 1e-9 && s2.kl.mean() > 0.0);
        // Identical distributions: zero divergence.
        let mut s3 = KlStats::default();
        s3.add(&p, lse_p, &rec, 2);
        assert!(s3.kl.mean().abs() < 1e-7);
        assert!(s3.ln_ratio.mean().abs() < 1e-7);
    }

    #[test]
    fn perplexity_of_uniform_guesses_is_the_vocab_size() {
        let mut p = Perplexity::default();
        for _ in 0..10 {
            p.add((50f64).ln());
        }
        assert!((p.ppl() - 50.0).abs() < 1e-9);
        // Zero spread, up to the cancellation in sum2/n - mean^2.
        assert!(p.error() < 1e-5, "{}", p.error());
    }

    #[test]
    fn reference_file_round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref.bin");
        let h = RefHeader {
            n_vocab: 10,
            n_ctx: 8,
            top_k: 2,
            n_chunks: 1,
            tokens: (0..9).collect(),
        };
        let mut w = RefWriter::create(&path, &h).unwrap();
        for i in scored_range(8) {
            w.record(-(i as f32), &[(i as u32, -0.1), (9, -2.5)])
                .unwrap();
        }
        w.finish().unwrap();
        let mut r = RefReader::open(&path).unwrap();
        assert_eq!(r.header, h);
        let mut rec = RefRecord::default();
        for i in scored_range(8) {
            r.next_record(&mut rec).unwrap();
            assert_eq!(rec.target_logprob, -(i as f32));
            assert_eq!(rec.top, vec![(i as u32, -0.1), (9, -2.5)]);
        }
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = RefReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&path, b"GGUFxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").unwrap();
        let e = RefReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("magic"), "{e}");
    }
}
