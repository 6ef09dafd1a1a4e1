//! Tokenizers from GGUF `tokenizer.ggml.*` metadata (the keys llama.cpp's converter writes).
//!
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE from `tokens` + `merges`; the pre-tokenizer is
//!   chosen by `tokenizer.ggml.pre` as llama.cpp does (its `llm_tokenizer_bpe` regex lists,
//!   written here as the HF pre-tokenizers the original `tokenizer.json` files use).
//!   An unknown `pre` falls back to GPT-2's own ByteLevel regex (llama.cpp's behaviour for
//!   `default` differs slightly, but GPT-2's regex is what the byte-level BPE vocabularies were
//!   trained with unless they say otherwise); no warning is printed.
//! - `tokenizer.ggml.model = llama`: SentencePiece BPE from `tokens` + `scores` (see `spm.rs`).

use std::collections::HashSet;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::spm::{self, SpmVocab};
use super::{bos_eos_post_processor, tok_err, AutoToken, Parts, TokenType, Tokenizer};
use crate::error::Result;
use crate::loader::{GgufMetadata, GgufValue};

/// Llama 3's split regex (from its tokenizer.json; llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: as Llama 3's but digits one at a time.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn key(name: &str) -> String {
    format!("tokenizer.ggml.{name}")
}

fn get<'a>(md: &'a GgufMetadata, name: &str) -> Option<&'a GgufValue> {
    md.get(&key(name))
}

fn string_array(md: &GgufMetadata, name: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = get(md, name) else {
        return Ok(None);
    };
    let arr = v
        .as_array()
        .ok_or_else(|| tok_err(format!("GGUF `{}` is not an array", key(name))))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| tok_err(format!("GGUF `{}`[{i}] is not a string", key(name))))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn bool_key(md: &GgufMetadata, name: &str) -> Option<bool> {
    get(md, name).and_then(GgufValue::as_bool)
}

/// A token id key; with `strict`, an id outside the vocabulary is an error, otherwise it is
/// ignored (some converters write placeholder padding ids).
fn id_key(md: &GgufMetadata, name: &str, n_vocab: usize, strict: bool) -> Result<Option<u32>> {
    let Some(v) = get(md, name) else {
        return Ok(None);
    };
    match v.as_u64() {
        Some(id) if (id as usize) < n_vocab => Ok(Some(id as u32)),
        _ if strict => Err(tok_err(format!(
            "GGUF `{}` = {} is not a token id of the {n_vocab}-token vocabulary",
            key(name),
            v.summary()
        ))),
        _ => Ok(None),
    }
}

pub(super) fn from_gguf(md: &GgufMetadata) -> Result<Tokenizer> {
    let model = get(md, "model")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| tok_err("GGUF has no `tokenizer.ggml.model` (no embedded vocabulary)"))?;
    let tokens = string_array(md, "tokens")?
        .ok_or_else(|| tok_err("GGUF has no `tokenizer.ggml.tokens`"))?;
    let n = tokens.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(tok_err(format!("GGUF vocabulary has {n} tokens")));
    }
    let types: Vec<TokenType> = match get(md, "token_type") {
        None => vec![TokenType::Normal; n],
        Some(v) => {
            let arr = v
                .as_array()
                .ok_or_else(|| tok_err("GGUF `tokenizer.ggml.token_type` is not an array"))?;
            if arr.len() != n {
                return Err(tok_err(format!(
                    "GGUF has {n} tokens but {} token types",
                    arr.len()
                )));
            }
            arr.iter()
                .map(|x| {
                    x.as_i64().map(TokenType::from_gguf).ok_or_else(|| {
                        tok_err("GGUF `tokenizer.ggml.token_type` holds a non-integer")
                    })
                })
                .collect::<Result<_>>()?
        }
    };

    let bos_id = id_key(md, "bos_token_id", n, true)?;
    let eos_id = id_key(md, "eos_token_id", n, true)?;
    let unk_id = id_key(md, "unknown_token_id", n, false)?;
    let mut extra_eos = Vec::new();
    for name in ["eot_token_id", "eom_token_id"] {
        extra_eos.extend(id_key(md, name, n, false)?);
    }
    let chat_template = md
        .get("tokenizer.chat_template")
        .and_then(GgufValue::as_str)
        .map(str::to_string);

    let (mut inner, source, default_add_bos, spm_decoder) = match model {
        "gpt2" => {
            let merges = string_array(md, "merges")?.ok_or_else(|| {
                tok_err("GGUF byte-level BPE vocabulary has no `tokenizer.ggml.merges`")
            })?;
            let pre = get(md, "pre")
                .and_then(GgufValue::as_str)
                .unwrap_or("default");
            (
                byte_level_bpe(&tokens, &types, &merges, pre)?,
                "gguf-gpt2",
                false,
                None,
            )
        }
        "llama" => {
            let scores = match get(md, "scores") {
                Some(v) => v
                    .as_array()
                    .ok_or_else(|| tok_err("GGUF `tokenizer.ggml.scores` is not an array"))?
                    .iter()
                    .map(|x| {
                        x.as_f64().map(|s| s as f32).ok_or_else(|| {
                            tok_err("GGUF `tokenizer.ggml.scores` holds a non-number")
                        })
                    })
                    .collect::<Result<Vec<f32>>>()?,
                None => {
                    return Err(tok_err(
                        "GGUF SentencePiece vocabulary has no `tokenizer.ggml.scores`",
                    ))
                }
            };
            let vocab = SpmVocab {
                pieces: tokens,
                scores,
                types: types.clone(),
                unk_id,
                add_space_prefix: bool_key(md, "add_space_prefix").unwrap_or(true),
            };
            (
                spm::build(&vocab)?,
                "gguf-llama",
                true,
                Some(spm::SpmDecoder::new(&vocab)),
            )
        }
        other => {
            return Err(crate::error::ModelError::Unsupported(format!(
                "GGUF tokenizer model `{other}` (supported: gpt2, llama)"
            )))
        }
    };

    let add_bos = bool_key(md, "add_bos_token").unwrap_or(default_add_bos) && bos_id.is_some();
    let add_eos = bool_key(md, "add_eos_token").unwrap_or(false) && eos_id.is_some();
    let name_of = |id: Option<u32>, wanted: bool| -> Option<(u32, String)> {
        let id = id.filter(|_| wanted)?;
        inner.id_to_token(id).map(|s| (id, s))
    };
    let (bos_pp, eos_pp) = (name_of(bos_id, add_bos), name_of(eos_id, add_eos));
    let (mut auto_bos, mut auto_eos) = (AutoToken::AsInner, AutoToken::AsInner);
    if add_bos || add_eos {
        match bos_eos_post_processor(
            bos_pp.as_ref().map(|(i, s)| (*i, s.as_str())),
            eos_pp.as_ref().map(|(i, s)| (*i, s.as_str())),
        ) {
            Some(pp) => {
                inner.with_post_processor(Some(pp));
            }
            None => {
                if add_bos {
                    auto_bos = AutoToken::Add;
                }
                if add_eos {
                    auto_eos = AutoToken::Add;
                }
            }
        }
    }

    let special: HashSet<u32> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_special())
        .map(|(i, _)| i as u32)
        .collect();
    Tokenizer::assemble(Parts {
        inner,
        vocab_size: n,
        bos_id,
        eos_id,
        extra_eos,
        special,
        auto_bos,
        auto_eos,
        chat_template,
        source,
        spm_decoder,
    })
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre = pre`, and whether BPE skips
/// merging for words that are whole tokens (`ignore_merges`, Llama 3).
fn byte_level_pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(format!("pre-tokenizer regex for `{pre}`: {e}")))?;
        // The regex did the splitting; ByteLevel only maps bytes to its printable alphabet.
        Ok(PreSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    // GPT-2's regex, built into ByteLevel with use_regex = true.
    let gpt2 = || -> PreTokenizerWrapper { ByteLevel::new(false, true, true).into() };
    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => (split(LLAMA3_REGEX)?, true),
        "dbrx" | "smaug-bpe" | "chatglm-bpe" => (split(LLAMA3_REGEX)?, false),
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "megrez" => (split(QWEN2_REGEX)?, false),
        // Digits one at a time, then GPT-2's regex (SmolLM's tokenizer.json: Digits(individual)
        // + ByteLevel(add_prefix_space = false)).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => (
            PreSequence::new(vec![Digits::new(true).into(), gpt2()]).into(),
            false,
        ),
        // "gpt-2", "default", "mpt", "olmo", "jais", and the documented fallback for the rest.
        _ => (gpt2(), false),
    })
}

fn byte_level_bpe(
    tokens: &[String],
    types: &[TokenType],
    merges: &[String],
    pre: &str,
) -> Result<tokenizers::Tokenizer> {
    let mut vocab: Vocab = Vocab::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(id as u32);
    }
    // "a b" -> (a, b); byte-level pieces never contain a real space (it is 'Ġ').
    // Merges naming tokens that are not in the vocabulary can never apply; drop them
    // instead of failing the whole model.
    let pairs: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| {
            let (a, b) = m.split_once(' ')?;
            let ok = vocab.contains_key(a)
                && vocab.contains_key(b)
                && vocab.contains_key(&format!("{a}{b}"));
            ok.then(|| (a.to_string(), b.to_string()))
        })
        .collect();
    let (pre_tokenizer, ignore_merges) = byte_level_pre_tokenizer(pre)?;
    let model = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| tok_err(format!("building byte-level BPE: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    spm::add_tokens_by_type(&mut tok, tokens, types);
    Ok(tok)
}
