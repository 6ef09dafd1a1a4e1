//! Tokenizers: tokenizer.json, GGUF-embedded vocabularies, llama2.c tokenizer.bin.
//!
//! Every source becomes one [`tokenizers::Tokenizer`] (model + normalizer + pre-tokenizer +
//! decoder + added special tokens, built programmatically for GGUF and llama2.c) plus the
//! special-token facts the engine needs (BOS, the ids that end generation, which ids are
//! control tokens). Encoding and decoding always go through that inner tokenizer, so
//! [`Tokenizer::inner`] behaves exactly like [`Tokenizer::encode`] / [`Tokenizer::decode`].
//!
//! - `gguf.rs`: `tokenizer.ggml.*` metadata -> byte-level BPE (`gpt2`) or SentencePiece BPE (`llama`).
//! - `spm.rs`: SentencePiece BPE (pieces + scores + byte fallback) expressed as an HF BPE model.
//! - `llama2c.rs`: the llama2.c `tokenizer.bin` format, fed through `spm.rs`.
//! - `hf.rs`: `tokenizer.json` + `tokenizer_config.json`.
//! - `incremental.rs`: the streaming detokenizer.

mod gguf;
mod hf;
mod incremental;
mod llama2c;
mod spm;
mod synthetic;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

pub use incremental::IncrementalDecoder;

use crate::error::{ModelError, Result};
use crate::loader::GgufMetadata;

/// Token names that end a turn in common chat formats. When one of them is a special
/// (control) token of the vocabulary it is added to [`Tokenizer::eos_ids`]: a chat model ends
/// its answer with it even when the file's `eos` is a different token.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
];

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`); llama2.c vocabularies
/// are classified into the same kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    pub(crate) fn from_gguf(v: i64) -> TokenType {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            // 0 (undefined) and 1 (normal), and anything newer we don't know.
            _ => TokenType::Normal,
        }
    }

    /// Matched as a whole in input text before the model sees it (HF "added tokens").
    pub(crate) fn is_added(self) -> bool {
        matches!(
            self,
            TokenType::Unknown | TokenType::Control | TokenType::UserDefined
        )
    }

    /// Skipped by `decode(.., skip_special_tokens = true)`.
    pub(crate) fn is_special(self) -> bool {
        matches!(self, TokenType::Unknown | TokenType::Control)
    }
}

/// What `encode(.., add_special_tokens = true)` does with BOS/EOS on top of the inner
/// tokenizer's post-processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AutoToken {
    /// The inner post-processor already does the right thing.
    AsInner,
    /// Add it ourselves (the post-processor doesn't, but the model wants it).
    Add,
    /// The post-processor adds it but the model config says not to: remove it.
    Remove,
}

/// A tokenizer plus the special-token facts of its model. Cheap to share (`Send + Sync`);
/// clone it if a mutable copy is needed.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids in `0..vocab_size` are valid.
    vocab_size: usize,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    eos_ids: Vec<u32>,
    special: HashSet<u32>,
    auto_bos: AutoToken,
    auto_eos: AutoToken,
    chat_template: Option<String>,
    source: &'static str,
    /// SentencePiece vocabularies decode with our own decoder (see `spm::SpmDecoder`).
    spm_decoder: Option<Arc<spm::SpmDecoder>>,
}

/// Everything a constructor gathers before [`Tokenizer::assemble`].
struct Parts {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    /// More ids that end generation (GGUF `eot_token_id`, `eom_token_id`).
    extra_eos: Vec<u32>,
    special: HashSet<u32>,
    auto_bos: AutoToken,
    auto_eos: AutoToken,
    chat_template: Option<String>,
    source: &'static str,
    spm_decoder: Option<spm::SpmDecoder>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eos_ids", &self.eos_ids)
            .field("special_tokens", &self.special.len())
            .finish()
    }
}

pub(crate) fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// From the `tokenizer.ggml.*` keys of a GGUF header.
    pub fn from_gguf(md: &GgufMetadata) -> Result<Tokenizer> {
        gguf::from_gguf(md)
    }

    /// From a Hugging Face `tokenizer.json`, with BOS/EOS and `add_bos_token` taken from
    /// `tokenizer_config.json` when given.
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
    ) -> Result<Tokenizer> {
        hf::from_hf_files(tokenizer_json, tokenizer_config)
    }

    /// A stand-in vocabulary of `vocab_size` words `t0`, `t1`, ... for random weights.
    pub fn synthetic(vocab_size: usize) -> Result<Tokenizer> {
        synthetic::synthetic(vocab_size)
    }

    /// From a llama2.c `tokenizer.bin` (e.g. `tok512.bin`).
    pub fn from_llama2c(path: &Path) -> Result<Tokenizer> {
        llama2c::from_llama2c(path)
    }

    fn assemble(p: Parts) -> Result<Tokenizer> {
        let name = |id: u32| -> Result<String> {
            p.inner.id_to_token(id).ok_or_else(|| {
                tok_err(format!(
                    "special token id {id} has no text in the vocabulary"
                ))
            })
        };
        let bos = p.bos_id.map(|id| name(id).map(|s| (id, s))).transpose()?;
        let eos = p.eos_id.map(|id| name(id).map(|s| (id, s))).transpose()?;
        let mut eos_ids: Vec<u32> = Vec::new();
        let mut push = |id: u32| {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        };
        if let Some((id, _)) = &eos {
            push(*id);
        }
        for &id in &p.extra_eos {
            push(id);
        }
        for name in END_OF_TURN_TOKENS {
            if let Some(id) = p.inner.token_to_id(name) {
                if p.special.contains(&id) {
                    push(id);
                }
            }
        }
        if p.auto_bos != AutoToken::AsInner && bos.is_none() {
            return Err(tok_err("the model asks for a BOS token but names none"));
        }
        if p.auto_eos != AutoToken::AsInner && eos.is_none() {
            return Err(tok_err("the model asks for an EOS token but names none"));
        }
        Ok(Tokenizer {
            inner: p.inner,
            vocab_size: p.vocab_size,
            bos,
            eos,
            eos_ids,
            special: p.special,
            auto_bos: p.auto_bos,
            auto_eos: p.auto_eos,
            chat_template: p.chat_template,
            source: p.source,
            spm_decoder: p.spm_decoder.map(Arc::new),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`, `<bos>`, ...)
    /// are always recognised as such. With `add_special_tokens`, BOS (and EOS) are added
    /// when the model wants them.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens {
            match (self.auto_bos, &self.bos) {
                (AutoToken::Add, Some((bos, _))) => ids.insert(0, *bos),
                // The post-processor puts its BOS first.
                (AutoToken::Remove, Some((bos, _))) if ids.first() == Some(bos) => {
                    ids.remove(0);
                }
                _ => {}
            }
            match (self.auto_eos, &self.eos) {
                (AutoToken::Add, Some((eos, _))) => ids.push(*eos),
                (AutoToken::Remove, Some((eos, _))) if ids.last() == Some(eos) => {
                    ids.pop();
                }
                _ => {}
            }
        }
        Ok(ids)
    }

    /// Text of `ids`; invalid UTF-8 (an incomplete byte sequence) becomes U+FFFD.
    ///
    /// For SentencePiece vocabularies (GGUF `llama`, llama2.c) each invalid byte sequence
    /// becomes one U+FFFD, as in llama.cpp, where `inner().decode` (HF's ByteFallback) would
    /// blank the whole run of byte tokens around it; the results agree on valid UTF-8.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(tok_err(format!(
                "token id {bad} out of range (vocabulary has {} tokens)",
                self.vocab_size
            )));
        }
        match &self.spm_decoder {
            Some(d) => Ok(d.decode(ids, skip_special_tokens)),
            None => self.inner.decode(ids, skip_special_tokens).map_err(tok_err),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|(id, _)| *id)
    }

    /// Every id that ends generation: EOS, end-of-turn tokens present in the vocabulary, and
    /// whatever [`Tokenizer::add_eos_ids`] added.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|(_, s)| s.as_str())
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|(_, s)| s.as_str())
    }

    /// A control token (skipped by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// More ids that end generation (from `generation_config.json`); out-of-range ids are ignored.
    pub fn add_eos_ids(&mut self, ids: &[u32]) {
        for &id in ids {
            if (id as usize) < self.vocab_size && !self.eos_ids.contains(&id) {
                self.eos_ids.push(id);
            }
        }
    }

    /// The chat template shipped with the tokenizer (GGUF `tokenizer.chat_template`,
    /// `tokenizer_config.json`'s `chat_template` or a sibling `chat_template.jinja`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Where the vocabulary came from: "gguf-gpt2", "gguf-llama", "tokenizer.json" or "llama2.c".
    pub fn source(&self) -> &'static str {
        self.source
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// `TemplateProcessing` adding BOS/EOS like the model wants, or `None` when nothing is to be
/// added or a token's text can't be a template piece (then the caller adds it by hand).
pub(crate) fn bos_eos_post_processor(
    bos: Option<(u32, &str)>,
    eos: Option<(u32, &str)>,
) -> Option<tokenizers::processors::template::TemplateProcessing> {
    use tokenizers::processors::template::TemplateProcessing;
    if bos.is_none() && eos.is_none() {
        return None;
    }
    let mut single: Vec<String> = Vec::new();
    let mut pair: Vec<String> = Vec::new();
    let mut specials: Vec<(String, u32)> = Vec::new();
    // A template piece is parsed as `name[:type_id]`, and `$...` names a sequence.
    let usable = |s: &str| !s.is_empty() && !s.starts_with('$') && !s.contains(':');
    if let Some((id, s)) = bos {
        if !usable(s) {
            return None;
        }
        single.push(s.to_string());
        pair.push(s.to_string());
        specials.push((s.to_string(), id));
    }
    single.push("$A".into());
    pair.push("$A".into());
    if let Some((id, s)) = eos {
        if !usable(s) {
            return None;
        }
        single.push(s.to_string());
        pair.push(s.to_string());
        if !specials.iter().any(|(t, _)| t == s) {
            specials.push((s.to_string(), id));
        }
    }
    pair.push("$B:1".into());
    let mut builder = TemplateProcessing::builder();
    builder.try_single(single).ok()?;
    builder.try_pair(pair).ok()?;
    builder.special_tokens(specials);
    builder.build().ok()
}
