//! Hugging Face `tokenizer.json` (+ `tokenizer_config.json`).
//!
//! `tokenizer.json` carries the whole pipeline; `tokenizer_config.json` names BOS/EOS
//! (`"bos_token": "<s>"` or `{"content": "<s>", ...}`), says whether BOS/EOS are added
//! (`add_bos_token` / `add_eos_token`, which transformers applies on top of the
//! post-processor) and usually holds the chat template.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use super::{tok_err, AutoToken, Parts, Tokenizer};
use crate::error::{ModelError, Result};

/// Common EOS names, tried when there is no tokenizer_config.json.
const EOS_GUESSES: &[&str] = &["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"];
const BOS_GUESSES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>"];

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `"chat_template"`: a string, or a list of `{"name", "template"}` (the `default` one wins).
fn chat_template_of(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            };
            named("default")
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        _ => None,
    }
}

pub(super) fn from_hf_files(
    tokenizer_json: &Path,
    tokenizer_config: Option<&Path>,
) -> Result<Tokenizer> {
    // Read it ourselves first so that a missing file is an I/O error naming the path.
    let text =
        std::fs::read_to_string(tokenizer_json).map_err(|e| ModelError::io(tokenizer_json, e))?;
    let inner: tokenizers::Tokenizer = text.parse().map_err(|e| {
        ModelError::format(tokenizer_json, format!("not a usable tokenizer.json: {e}"))
    })?;
    let config = tokenizer_config.map(read_json).transpose()?;

    let added = inner.get_added_tokens_decoder();
    let special: HashSet<u32> = added
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| *id)
        .collect();
    let lookup = |name: &str| -> Result<u32> {
        inner.token_to_id(name).ok_or_else(|| {
            tok_err(format!(
                "tokenizer_config.json names `{name}`, which is not in tokenizer.json"
            ))
        })
    };
    let guess = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| inner.token_to_id(n).filter(|id| special.contains(id)))
    };

    let (bos_id, eos_id, want_bos, want_eos, mut chat_template) = match &config {
        Some(c) => {
            let bos_id = c
                .get("bos_token")
                .and_then(token_text)
                .map(|s| lookup(&s))
                .transpose()?;
            let eos_id = c
                .get("eos_token")
                .and_then(token_text)
                .map(|s| lookup(&s))
                .transpose()?;
            (
                bos_id,
                eos_id,
                c.get("add_bos_token").and_then(Value::as_bool),
                c.get("add_eos_token").and_then(Value::as_bool),
                chat_template_of(c),
            )
        }
        None => (guess(BOS_GUESSES), guess(EOS_GUESSES), None, None, None),
    };
    if chat_template.is_none() {
        // Newer exports keep the template in its own file next to the others.
        let dir = tokenizer_config.unwrap_or(tokenizer_json).parent();
        if let Some(p) = dir
            .map(|d| d.join("chat_template.jinja"))
            .filter(|p| p.is_file())
        {
            chat_template = Some(std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?);
        }
    }

    // What does the post-processor do on its own? Probe with a plain word.
    let probe = |add: bool| -> Result<Vec<u32>> {
        Ok(inner
            .encode_fast("a", add)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    };
    let (with, without) = (probe(true)?, probe(false)?);
    let inner_adds_bos =
        bos_id.is_some() && with.first() == bos_id.as_ref() && without.first() != bos_id.as_ref();
    let inner_adds_eos =
        eos_id.is_some() && with.last() == eos_id.as_ref() && without.last() != eos_id.as_ref();
    let policy = |want: Option<bool>, inner_adds: bool| match (want, inner_adds) {
        (Some(true), false) => AutoToken::Add,
        (Some(false), true) => AutoToken::Remove,
        _ => AutoToken::AsInner,
    };
    // Ids need not be contiguous (added tokens may sit past a gap): size by the largest.
    let vocab_size = inner
        .get_vocab(true)
        .values()
        .max()
        .map_or(0, |&m| m as usize + 1);
    Tokenizer::assemble(Parts {
        vocab_size,
        bos_id,
        eos_id,
        extra_eos: Vec::new(),
        special,
        auto_bos: policy(want_bos, inner_adds_bos),
        auto_eos: policy(want_eos, inner_adds_eos),
        chat_template,
        source: "tokenizer.json",
        spm_decoder: None,
        inner,
    })
}
