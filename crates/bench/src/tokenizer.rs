//! Loading a tokenizer "from a model path or name" and building prompts with an exact
//! token count under it.
//!
//! The bench counts tokens exactly as the server would: the same vocabulary, loaded by
//! sluice's own tokenizer code from a `tokenizer.json`, a GGUF file, a llama2.c
//! `tokenizer.bin`, a model directory, or a model name found in the local Hugging Face
//! cache (never downloaded).

use crate::error::{BenchError, Result};
use rand::Rng;
use sluice_model::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// A loaded tokenizer plus where it came from (for the report).
#[derive(Clone)]
pub struct BenchTokenizer {
    pub tok: Tokenizer,
    /// What the user passed (path or name).
    pub id: String,
    /// Token ids that are safe to put in synthetic prompts: not special/control tokens and
    /// decoding to valid text on their own.
    sample_ids: Vec<u32>,
}

impl std::fmt::Debug for BenchTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchTokenizer")
            .field("id", &self.id)
            .field("vocab_size", &self.tok.vocab_size())
            .finish()
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> BenchError {
    let msg = e.to_string();
    let shown = path.display().to_string();
    // sluice-model's errors usually name the file already.
    if msg.contains(&shown) {
        BenchError::Tokenizer(msg)
    } else {
        BenchError::Tokenizer(format!("{shown}: {msg}"))
    }
}

fn load_hf_json(json: &Path) -> Result<Tokenizer> {
    let cfg = json.with_file_name("tokenizer_config.json");
    let cfg = cfg.is_file().then_some(cfg);
    Tokenizer::from_hf_files(json, cfg.as_deref()).map_err(|e| tok_err(json, e))
}

fn load_gguf(path: &Path) -> Result<Tokenizer> {
    let g = sluice_model::loader::GgufFile::open(path).map_err(|e| tok_err(path, e))?;
    Tokenizer::from_gguf(&g.metadata).map_err(|e| tok_err(path, e))
}

fn is_gguf_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"GGUF")
        .unwrap_or(false)
}

fn load_file(path: &Path) -> Result<Tokenizer> {
    if is_gguf_file(path) {
        return load_gguf(path);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => load_hf_json(path),
        Some("bin") => Tokenizer::from_llama2c(path).map_err(|e| tok_err(path, e)),
        _ => Err(BenchError::Tokenizer(format!(
            "{}: not a tokenizer.json, a GGUF file or a llama2.c tokenizer .bin",
            path.display()
        ))),
    }
}

fn load_dir(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return load_hf_json(&json);
    }
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| BenchError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("gguf"))
        .collect();
    ggufs.sort();
    if let Some(first) = ggufs.first() {
        return load_gguf(first);
    }
    for name in ["tokenizer.bin", "tok512.bin"] {
        let p = dir.join(name);
        if p.is_file() {
            return Tokenizer::from_llama2c(&p).map_err(|e| tok_err(&p, e));
        }
    }
    Err(BenchError::Tokenizer(format!(
        "{}: no tokenizer.json, .gguf or tokenizer.bin in this directory",
        dir.display()
    )))
}

/// The local Hugging Face hub cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, or
/// `~/.cache/huggingface/hub`).
fn hf_hub_cache() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// `org/name` -> the snapshot directory holding its tokenizer.json in the local cache
/// (the one `refs/main` points at when present).
fn find_in_hf_cache(name: &str, cache: &Path) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", name.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(main) = std::fs::read_to_string(repo.join("refs/main")) {
        let snap = snapshots.join(main.trim());
        if snap.join("tokenizer.json").is_file() {
            return Some(snap);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("tokenizer.json").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Loads a tokenizer from a file, a model directory or a model name in the local HF cache.
pub fn load_tokenizer(spec: &str) -> Result<BenchTokenizer> {
    let path = Path::new(spec);
    let tok = if path.is_dir() {
        load_dir(path)?
    } else if path.is_file() {
        load_file(path)?
    } else {
        let cache = hf_hub_cache();
        match cache.as_deref().and_then(|c| find_in_hf_cache(spec, c)) {
            Some(dir) => load_dir(&dir)?,
            None => {
                return Err(BenchError::Tokenizer(format!(
                    "`{spec}` is not a file, a directory, or a model in the local Hugging Face \
                     cache ({}); pass --tokenizer with a tokenizer.json, a .gguf or a model directory",
                    cache.map(|c| c.display().to_string()).unwrap_or_else(|| "unknown".into())
                )))
            }
        }
    };
    BenchTokenizer::new(tok, spec)
}

impl BenchTokenizer {
    pub fn new(tok: Tokenizer, id: &str) -> Result<Self> {
        let mut sample_ids = Vec::new();
        for id in 0..tok.vocab_size() as u32 {
            if tok.is_special(id) {
                continue;
            }
            // A token that decodes to nothing or to a broken UTF-8 fragment (byte-fallback
            // pieces) alone cannot be counted on to survive a decode/encode round trip.
            match tok.decode(&[id], false) {
                Ok(s) if !s.is_empty() && !s.contains('\u{FFFD}') && !s.trim().is_empty() => {
                    sample_ids.push(id)
                }
                _ => {}
            }
        }
        if sample_ids.is_empty() {
            return Err(BenchError::Tokenizer(format!(
                "{id}: the vocabulary has no ordinary tokens to build prompts from"
            )));
        }
        Ok(BenchTokenizer {
            tok,
            id: id.to_string(),
            sample_ids,
        })
    }

    /// Token count of `text` as a prompt body (no BOS/EOS), as vLLM's datasets count it.
    pub fn count(&self, text: &str) -> Result<usize> {
        Ok(self.encode(text)?.len())
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tok
            .encode(text, false)
            .map_err(|e| BenchError::Tokenizer(e.to_string()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, false)
            .map_err(|e| BenchError::Tokenizer(e.to_string()))
    }

    fn random_ids(&self, rng: &mut impl Rng, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| self.sample_ids[rng.random_range(0..self.sample_ids.len())])
            .collect()
    }

    /// A prompt of random tokens that encodes to exactly `target` tokens, optionally
    /// beginning with the fixed text `head` (a shared prefix, kept byte-for-byte).
    ///
    /// Decoding `n` random ids and encoding the text again need not give `n` tokens (pieces
    /// merge or split at their boundaries), so, like vLLM's `gen_prompt_decode_to_target_len`,
    /// we decode, re-encode, and drop or add tokens at the end until the count is exact.
    pub fn exact_prompt(&self, rng: &mut impl Rng, head: &str, target: usize) -> Result<String> {
        const MAX_ROUNDS: usize = 200;
        let head_len = if head.is_empty() {
            0
        } else {
            self.count(head)?
        };
        if target < head_len {
            return Err(BenchError::Tokenizer(format!(
                "cannot make a {target}-token prompt starting with a {head_len}-token prefix"
            )));
        }
        if target == 0 {
            return Ok(String::new());
        }
        let mut tail = self.random_ids(rng, target - head_len);
        for _ in 0..MAX_ROUNDS {
            let text = format!("{head}{}", self.decode(&tail)?);
            let n = self.count(&text)?;
            if n == target {
                return Ok(text);
            }
            if n > target {
                let drop = (n - target).min(tail.len());
                if drop == 0 {
                    break;
                }
                tail.truncate(tail.len() - drop);
            } else {
                tail.extend(self.random_ids(rng, target - n));
            }
        }
        Err(BenchError::Tokenizer(format!(
            "could not build a prompt of exactly {target} tokens after {MAX_ROUNDS} rounds \
             of decode/re-encode"
        )))
    }
}
