//! `sluice perplexity`: perplexity of a text over non-overlapping windows (llama.cpp's
//! scheme: each window from an empty cache, only its second half scored), and the KL
//! divergence against a reference model's saved log-probabilities. The statistics and
//! the reference file format are `sluice_model::quantize::quality`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sluice_model::arch::Model;
use sluice_model::quantize::quality::{
    log_sum_exp, scored_range, top_k, KlStats, Perplexity, RefHeader, RefReader, RefRecord,
    RefWriter,
};
use sluice_model::BatchInput;

use crate::generate::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score (not needed with --kl-base: the tokens come from that file).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Window length in tokens (each window is scored on its second half); default 512,
    /// or the reference's with --kl-base.
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// Tokens per forward step: a window is evaluated in pieces of this size, or
    /// several windows at once when it is a multiple of --ctx.
    #[arg(long, short = 'b', default_value_t = 512)]
    pub batch: usize,
    /// Score at most this many windows (default: all that fit in the text).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Save this (reference) model's log-probabilities for a later --kl-base run.
    #[arg(long, conflicts_with = "kl_base")]
    pub save_logits: Option<PathBuf>,
    /// Log-probs kept per position by --save-logits: the top k (the rest is one bucket;
    /// the KL divergence comes out ~2% low at 1024, ~10% at 128 on SmolLM2), or 0 for
    /// the whole vocabulary (exact; 8 bytes x vocab per position).
    #[arg(long, default_value_t = 1024)]
    pub top_k: usize,
    /// Compare with a reference saved by --save-logits: KL divergence, top-1 agreement.
    #[arg(long)]
    pub kl_base: Option<PathBuf>,
    /// Print the final result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Whether this tokenizer puts BOS in front of a text (then each window starts with
/// BOS, as in llama.cpp).
fn adds_bos(tok: &sluice_model::tokenizer::Tokenizer) -> Result<bool> {
    let Some(bos) = tok.bos_id() else {
        return Ok(false);
    };
    let with = tok.encode("a", true)?;
    let without = tok.encode("a", false)?;
    Ok(with.first() == Some(&bos) && without.first() != Some(&bos))
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    if let Some(c) = a.ctx.filter(|&c| c < 8) {
        bail!("--ctx must be at least 8 (got {c})");
    }
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    let t_load = Instant::now();
    let mut reference = match &a.kl_base {
        Some(p) => Some(RefReader::open(p)?),
        None => None,
    };
    let loaded = a.model.load()?;
    let vocab = loaded.config.vocab_size;
    let tokenizer = loaded.tokenizer;
    let add_bos = adds_bos(&tokenizer)?;
    let bos = tokenizer.bos_id();

    let (tokens, n_ctx) = match &mut reference {
        Some(r) => {
            let h = &r.header;
            if h.n_vocab != vocab {
                bail!(
                    "{}: saved for a vocabulary of {} tokens, this model has {vocab}",
                    a.kl_base
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    h.n_vocab
                );
            }
            if let Some(c) = a.ctx.filter(|&c| c != h.n_ctx) {
                bail!("--ctx {c} differs from the reference's {}", h.n_ctx);
            }
            if let Some(f) = &a.file {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?;
                if tokenize(&tokenizer, &text, add_bos, bos)? != h.tokens {
                    bail!(
                        "{} tokenizes differently from the text the reference was saved on",
                        f.display()
                    );
                }
            }
            (h.tokens.clone(), h.n_ctx)
        }
        None => {
            let Some(f) = &a.file else {
                bail!("--file is required (the text to score), unless --kl-base gives the tokens");
            };
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            (
                tokenize(&tokenizer, &text, add_bos, bos)?,
                a.ctx.unwrap_or(512),
            )
        }
    };
    let mut n_chunks = tokens.len() / n_ctx;
    if let Some(r) = &reference {
        n_chunks = r.header.n_chunks;
    }
    if let Some(c) = a.chunks {
        n_chunks = n_chunks.min(c);
    }
    if n_chunks == 0 {
        bail!(
            "the text has {} tokens, fewer than one window of --ctx {n_ctx}",
            tokens.len()
        );
    }
    let top_k_n = if a.top_k == 0 {
        vocab
    } else {
        a.top_k.min(vocab)
    };
    let mut saver = match &a.save_logits {
        Some(p) => Some(RefWriter::create(
            p,
            &RefHeader {
                n_vocab: vocab,
                n_ctx,
                top_k: top_k_n,
                n_chunks,
                tokens: tokens[..n_chunks * n_ctx].to_vec(),
            },
        )?),
        None => None,
    };

    // Windows evaluated per step, and the pieces one window is cut into.
    let n_seq = (a.batch / n_ctx).clamp(1, n_chunks);
    let piece = a.batch.min(n_ctx);
    let block_size = 16usize;
    let blocks_per_seq = n_ctx.div_ceil(block_size);
    let device = a.model.device()?;
    let kv_dtype = a
        .model
        .kv_cache_dtype()?
        .unwrap_or_else(|| device.default_kv_dtype());
    let mut model = Model::new(&device, loaded.config, loaded.weights, n_ctx)?;
    let mut kv = model.new_kv_cache_with(n_seq * blocks_per_seq, block_size, kv_dtype)?;
    let load_s = t_load.elapsed().as_secs_f64();
    eprintln!(
        "perplexity: {} tokens, {n_chunks} windows of {n_ctx} (scoring positions {}..{} of each), {n_seq} window(s) per step, KV cache {kv_dtype}, {}",
        tokens.len(),
        scored_range(n_ctx).start,
        n_ctx - 1,
        device.name()
    );

    let mut ppl = Perplexity::default();
    let mut kl = reference.as_ref().map(|_| KlStats::default());
    let mut rec = RefRecord::default();
    let mut top = Vec::new();
    let mut logits = Vec::new();
    let mut batch = BatchInput::default();
    let t0 = Instant::now();
    let scored = scored_range(n_ctx);
    let mut chunk = 0;
    while chunk < n_chunks {
        let seqs = n_seq.min(n_chunks - chunk);
        // Each piece of the windows: positions [p0, p1).
        let mut p0 = 0;
        while p0 < n_ctx {
            let p1 = (p0 + piece).min(n_ctx);
            batch.clear();
            // (window, position) of each logits row, in row order.
            let mut rows = Vec::new();
            for s in 0..seqs {
                let w = chunk + s;
                let start = w * n_ctx;
                let mut win: Vec<u32> = tokens[start + p0..start + p1].to_vec();
                if p0 == 0 && add_bos {
                    if let Some(b) = bos {
                        win[0] = b;
                    }
                }
                let table: Vec<u32> =
                    ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect();
                let base = batch.tokens.len();
                batch.push_seq(&win, p1, &table, block_size, false);
                for p in p0.max(scored.start)..p1.min(scored.end) {
                    batch.logits_indices.push((base + p - p0) as u32);
                    rows.push((w, p));
                }
            }
            let out = model.forward(&batch, &mut kv)?;
            device.copy_f32_to_host(out, &mut logits)?;
            for (r, &(w, p)) in rows.iter().enumerate() {
                let row = &logits[r * vocab..(r + 1) * vocab];
                let target = tokens[w * n_ctx + p + 1];
                let lse = log_sum_exp(row);
                let lp_target = row[target as usize] as f64 - lse;
                ppl.add(-lp_target);
                if let Some(s) = &mut saver {
                    top_k(row, lse, top_k_n, &mut top);
                    s.record(lp_target as f32, &top)?;
                }
                if let (Some(r), Some(k)) = (&mut reference, &mut kl) {
                    r.next_record(&mut rec)?;
                    k.add(row, lse, &rec, target);
                }
            }
            p0 = p1;
        }
        chunk += seqs;
        if !a.json {
            let eta = t0.elapsed().as_secs_f64() / chunk as f64 * (n_chunks - chunk) as f64;
            eprint!("[{chunk}]{:.4},", ppl.ppl());
            if chunk == n_chunks {
                eprintln!();
            } else if chunk == seqs {
                eprint!(" (~{eta:.0} s left) ");
            }
            std::io::stderr().flush().ok();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(s) = saver {
        s.finish()?;
    }
    let n_scored = ppl.nll.count();
    let tok_s = (n_chunks * n_ctx) as f64 / secs;
    if a.json {
        let mut j = serde_json::json!({
            "model": a.model.model,
            "ctx": n_ctx,
            "chunks": n_chunks,
            "scored_tokens": n_scored,
            "ppl": ppl.ppl(),
            "ppl_error": ppl.error(),
            "mean_nll": ppl.nll.mean(),
            "seconds": secs,
            "load_seconds": load_s,
            "tokens_per_second": tok_s,
        });
        if let Some(k) = &kl {
            j["kl"] = serde_json::json!({
                "mean": k.kl.mean(),
                "error": k.kl.stderr(),
                "median": k.quantile(0.5),
                "p99": k.quantile(0.99),
                "max": k.quantile(1.0),
                "same_top1": k.same_top1.mean(),
                "same_top1_error": k.same_top1.stderr(),
                "rms_delta_p": k.rms_delta_p(),
                "ppl_base": k.base.ppl(),
                "mean_ln_ppl_ratio": k.ln_ratio.mean(),
                "mean_ln_ppl_ratio_error": k.ln_ratio.stderr(),
                "top_k": reference.as_ref().map(|r| r.header.top_k),
                "max_tail_mass": k.max_tail,
            });
        }
        println!("{j}");
        return Ok(());
    }
    println!(
        "PPL = {:.4} +/- {:.4}  ({n_scored} tokens scored in {n_chunks} windows of {n_ctx}; {:.1} s, {tok_s:.0} tokens/s)",
        ppl.ppl(),
        ppl.error(),
        secs
    );
    if let (Some(k), Some(r)) = (&kl, &reference) {
        println!(
            "PPL(base) = {:.4}, mean ln(PPL/PPL(base)) = {:.5} +/- {:.5}",
            k.base.ppl(),
            k.ln_ratio.mean(),
            k.ln_ratio.stderr()
        );
        println!(
            "KLD = {:.6} +/- {:.6}  (median {:.6}, 99% {:.6}, max {:.6}; top {} of {} log-probs, tail mass up to {:.2e})",
            k.kl.mean(),
            k.kl.stderr(),
            k.quantile(0.5),
            k.quantile(0.99),
            k.quantile(1.0),
            r.header.top_k,
            r.header.n_vocab,
            k.max_tail
        );
        println!(
            "same top-1 = {:.3} +/- {:.3} %, RMS dp = {:.3} %",
            100.0 * k.same_top1.mean(),
            100.0 * k.same_top1.stderr(),
            100.0 * k.rms_delta_p()
        );
    }
    Ok(())
}

fn tokenize(
    tok: &sluice_model::tokenizer::Tokenizer,
    text: &str,
    add_bos: bool,
    bos: Option<u32>,
) -> Result<Vec<u32>> {
    let mut ids = tok.encode(text, false)?;
    if add_bos {
        if let Some(b) = bos {
            ids.insert(0, b);
        }
    }
    Ok(ids)
}
