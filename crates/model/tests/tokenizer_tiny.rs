//! Tokenizers built from tiny vocabularies made in the test: GGUF byte-level BPE (merge
//! priority against a naive BPE on random text, pre-tokenizer choice), GGUF SentencePiece
//! (space prefix, byte fallback, special tokens), bad metadata, and tokenizer.json +
//! tokenizer_config.json.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_model::error::ModelError;
use sluice_model::loader::{GgufMetadata, GgufValue};
use sluice_model::tokenizer::Tokenizer;

fn s(v: &str) -> GgufValue {
    GgufValue::String(v.to_string())
}

fn strings<S: AsRef<str>>(v: &[S]) -> GgufValue {
    GgufValue::Array(v.iter().map(|x| s(x.as_ref())).collect())
}

fn ints(v: &[i32]) -> GgufValue {
    GgufValue::Array(v.iter().map(|&x| GgufValue::I32(x)).collect())
}

fn floats(v: &[f32]) -> GgufValue {
    GgufValue::Array(v.iter().map(|&x| GgufValue::F32(x)).collect())
}

/// GPT-2's byte -> printable character table (`bytes_to_unicode`).
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut out = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        if let Some(pos) = printable.iter().position(|&p| p == b) {
            printable.remove(pos);
            out[b as usize] = char::from_u32(b).unwrap();
        } else {
            out[b as usize] = char::from_u32(256 + extra).unwrap();
            extra += 1;
        }
    }
    out
}

/// A byte-level BPE vocabulary: the 256 byte characters (ids 0..256), `<|endoftext|>` (256,
/// control), then one token per merge, in merge order.
struct TinyBpe {
    tokens: Vec<String>,
    merges: Vec<(String, String)>,
}

impl TinyBpe {
    fn new(merges: &[(&str, &str)]) -> TinyBpe {
        let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
        tokens.push("<|endoftext|>".into());
        let mut m = Vec::new();
        for (a, b) in merges {
            let t = format!("{a}{b}");
            if !tokens.contains(&t) {
                tokens.push(t);
            }
            m.push((a.to_string(), b.to_string()));
        }
        TinyBpe { tokens, merges: m }
    }

    fn metadata(&self, pre: &str) -> GgufMetadata {
        let mut types = vec![1; self.tokens.len()];
        types[256] = 3;
        let merges: Vec<String> = self
            .merges
            .iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect();
        let mut md = GgufMetadata::new();
        md.insert("tokenizer.ggml.model".into(), s("gpt2"));
        md.insert("tokenizer.ggml.pre".into(), s(pre));
        md.insert("tokenizer.ggml.tokens".into(), strings(&self.tokens));
        md.insert("tokenizer.ggml.token_type".into(), ints(&types));
        md.insert("tokenizer.ggml.merges".into(), strings(&merges));
        md.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(256));
        md.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(256));
        md
    }

    fn id(&self, t: &str) -> u32 {
        self.tokens.iter().position(|x| x == t).unwrap() as u32
    }

    /// Naive BPE of one pre-token (already in byte characters): repeatedly merge the adjacent
    /// pair with the lowest merge rank, leftmost first.
    fn naive_word(&self, word: &str) -> Vec<u32> {
        let rank: HashMap<(&str, &str), usize> = self
            .merges
            .iter()
            .enumerate()
            .map(|(i, (a, b))| ((a.as_str(), b.as_str()), i))
            .collect();
        let mut syms: Vec<String> = word.chars().map(String::from).collect();
        loop {
            let best = (0..syms.len().saturating_sub(1))
                .filter_map(|k| {
                    rank.get(&(syms[k].as_str(), syms[k + 1].as_str()))
                        .map(|&r| (r, k))
                })
                .min();
            let Some((_, k)) = best else { break };
            let right = syms.remove(k + 1);
            syms[k].push_str(&right);
        }
        syms.iter().map(|t| self.id(t)).collect()
    }
}

#[test]
fn shareable_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
    send_sync::<sluice_model::tokenizer::IncrementalDecoder>();
    send_sync::<sluice_model::chat_template::ChatTemplate>();
}

#[test]
fn gpt2_merge_priority_decides() {
    // Same tokens, opposite priorities: "abc" -> [a, bc] or [ab, c].
    let bc_first = TinyBpe::new(&[("b", "c"), ("a", "b")]);
    let tok = Tokenizer::from_gguf(&bc_first.metadata("gpt2")).unwrap();
    assert_eq!(
        tok.encode("abc", false).unwrap(),
        [bc_first.id("a"), bc_first.id("bc")]
    );
    let ab_first = TinyBpe::new(&[("a", "b"), ("b", "c")]);
    let tok = Tokenizer::from_gguf(&ab_first.metadata("gpt2")).unwrap();
    assert_eq!(
        tok.encode("abc", false).unwrap(),
        [ab_first.id("ab"), ab_first.id("c")]
    );
    // A later merge can join the results.
    let chain = TinyBpe::new(&[("b", "c"), ("a", "b"), ("a", "bc"), ("Ġ", "abc")]);
    let tok = Tokenizer::from_gguf(&chain.metadata("gpt2")).unwrap();
    assert_eq!(
        tok.encode("abc abc", false).unwrap(),
        [chain.id("abc"), chain.id("Ġabc")]
    );
    assert_eq!(
        tok.decode(&tok.encode("abc abc", false).unwrap(), false)
            .unwrap(),
        "abc abc"
    );
    // No BOS for byte-level BPE unless the file asks.
    assert_eq!(tok.encode("abc", true).unwrap(), [chain.id("abc")]);
    assert_eq!(
        tok.encode("<|endoftext|>abc", false).unwrap(),
        [256, chain.id("abc")]
    );
}

#[test]
fn gpt2_random_merges_match_naive_bpe() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xb9e);
    let letters = ["a", "b", "c", "d", "e", "f"];
    for round in 0..8 {
        // Random merges over a small alphabet (space is 'Ġ' in byte-level form).
        let mut pieces: Vec<String> = letters
            .iter()
            .map(|s| s.to_string())
            .chain(["Ġ".to_string()])
            .collect();
        let mut merges: Vec<(String, String)> = Vec::new();
        while merges.len() < 80 {
            let a = pieces[rng.random_range(0..pieces.len())].clone();
            let b = pieces[rng.random_range(0..pieces.len())].clone();
            if b.starts_with('Ġ') || merges.iter().any(|(x, y)| *x == a && *y == b) {
                continue;
            }
            let t = format!("{a}{b}");
            if t.chars().count() > 6 {
                continue;
            }
            if !pieces.contains(&t) {
                pieces.push(t);
            }
            merges.push((a, b));
        }
        let refs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let bpe = TinyBpe::new(&refs);
        let tok = Tokenizer::from_gguf(&bpe.metadata("gpt2")).unwrap();
        for case in 0..50 {
            let words: Vec<String> = (0..rng.random_range(1..8))
                .map(|_| {
                    (0..rng.random_range(1..9))
                        .map(|_| letters[rng.random_range(0..6)])
                        .collect()
                })
                .collect();
            let text = words.join(" ");
            // GPT-2's regex on letters and single spaces: "w1", " w2", " w3", ...
            let mut want = Vec::new();
            for (i, w) in words.iter().enumerate() {
                let word = if i == 0 { w.clone() } else { format!("Ġ{w}") };
                want.extend(bpe.naive_word(&word));
            }
            assert_eq!(
                tok.encode(&text, false).unwrap(),
                want,
                "round {round} case {case}: {text:?}"
            );
            assert_eq!(tok.decode(&want, false).unwrap(), text);
        }
    }
}

#[test]
fn pre_tokenizer_follows_tokenizer_ggml_pre() {
    let bpe = TinyBpe::new(&[
        ("1", "2"),
        ("12", "3"),
        ("4", "5"),
        ("123", "45"),
        ("Ġ", "1"),
    ]);
    let pieces = |pre: &str, text: &str| -> Vec<String> {
        let tok = Tokenizer::from_gguf(&bpe.metadata(pre)).unwrap();
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre}");
        ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect()
    };
    // GPT-2 keeps a digit run whole (so merges reach "12345").
    assert_eq!(pieces("gpt2", "12345"), ["12345"]);
    // An unknown `pre` falls back to GPT-2's behaviour.
    assert_eq!(pieces("some-future-model", "12345"), ["12345"]);
    // Llama 3: runs of at most three digits.
    assert_eq!(pieces("llama-bpe", "12345"), ["123", "45"]);
    // Qwen2 and SmolLM: one digit at a time.
    assert_eq!(pieces("qwen2", "12345"), ["1", "2", "3", "4", "5"]);
    assert_eq!(pieces("smollm", "12345"), ["1", "2", "3", "4", "5"]);
    assert_eq!(pieces("smollm", " 12"), ["Ġ", "1", "2"]);
    // One pre-token " 12": merge "1 2" (rank 0) beats "Ġ 1" (rank 4).
    assert_eq!(pieces("gpt2", " 12"), ["Ġ", "12"]);
}

/// A SentencePiece vocabulary: `<unk>` (0, unknown), `<s>` (1), `</s>` (2), `<ctl>` (3,
/// control), `<tab>` (4, user-defined), 256 byte tokens, then scored pieces.
fn tiny_spm(add_space_prefix: bool, add_bos: bool) -> (GgufMetadata, Vec<String>) {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "<ctl>", "<tab>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![2, 3, 3, 3, 4];
    let mut scores = vec![0.0f32; 5];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (i, p) in [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "llo", "hello", "▁hello", "▁w", "or",
        "▁wor", "▁world", "ld",
    ]
    .iter()
    .enumerate()
    {
        tokens.push(p.to_string());
        types.push(1);
        // Single characters score lowest; later pieces score lower than earlier ones.
        scores.push(if p.chars().count() == 1 {
            -1000.0 - i as f32
        } else {
            -(i as f32)
        });
    }
    let mut md = GgufMetadata::new();
    md.insert("tokenizer.ggml.model".into(), s("llama"));
    md.insert("tokenizer.ggml.tokens".into(), strings(&tokens));
    md.insert("tokenizer.ggml.token_type".into(), ints(&types));
    md.insert("tokenizer.ggml.scores".into(), floats(&scores));
    md.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1));
    md.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2));
    md.insert("tokenizer.ggml.unknown_token_id".into(), GgufValue::U32(0));
    md.insert(
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(add_bos),
    );
    md.insert(
        "tokenizer.ggml.add_space_prefix".into(),
        GgufValue::Bool(add_space_prefix),
    );
    md.insert("tokenizer.chat_template".into(), s("{{ messages }}"));
    (md, tokens)
}

#[test]
fn sentencepiece_space_prefix_bytes_and_specials() {
    let (md, tokens) = tiny_spm(true, true);
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let tok = Tokenizer::from_gguf(&md).unwrap();
    assert_eq!(tok.chat_template(), Some("{{ messages }}"));
    assert_eq!(tok.source(), "gguf-llama");
    assert_eq!(
        tok.encode("hello world", true).unwrap(),
        [1, id("▁hello"), id("▁world")]
    );
    assert_eq!(
        tok.decode(&[1, id("▁hello"), id("▁world")], true).unwrap(),
        "hello world"
    );
    // After a special token the space prefix is added again (llama.cpp / HF legacy).
    assert_eq!(
        tok.encode("hello<ctl>hello", false).unwrap(),
        [id("▁hello"), 3, id("▁hello")]
    );
    // A user-defined token is matched in text too, but is not "special".
    assert_eq!(tok.encode("<tab>", false).unwrap(), [4]);
    assert!(tok.is_special(3) && !tok.is_special(4) && tok.is_special(0));
    assert_eq!(
        tok.decode(&[id("▁hello"), 3, 4], true).unwrap(),
        "hello<tab>"
    );
    // Characters outside the vocabulary: bytes. 'x' = 0x78 -> id 5 + 0x78.
    assert_eq!(tok.encode("x", false).unwrap(), [id("▁"), 5 + 0x78]);
    let ids = tok.encode("hé", false).unwrap();
    assert_eq!(ids, [id("▁"), id("h"), 5 + 0xC3, 5 + 0xA9]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "hé");

    let (md, _) = tiny_spm(false, false);
    let tok = Tokenizer::from_gguf(&md).unwrap();
    assert_eq!(
        tok.encode("hello world", true).unwrap(),
        [id("hello"), id("▁world")]
    );
    assert_eq!(
        tok.decode(&[id("hello"), id("▁world")], true).unwrap(),
        "hello world"
    );
    assert_eq!(tok.bos_id(), Some(1));
}

#[test]
fn bad_gguf_metadata_is_an_error() {
    let (good, _) = tiny_spm(true, true);
    let tokenizer_error = |md: &GgufMetadata| match Tokenizer::from_gguf(md) {
        Err(ModelError::Tokenizer(msg)) => msg,
        other => panic!("expected a tokenizer error, got {other:?}"),
    };
    let mut md = good.clone();
    md.remove("tokenizer.ggml.model");
    assert!(tokenizer_error(&md).contains("tokenizer.ggml.model"));
    let mut md = good.clone();
    md.remove("tokenizer.ggml.scores");
    assert!(tokenizer_error(&md).contains("scores"));
    let mut md = good.clone();
    md.insert("tokenizer.ggml.token_type".into(), ints(&[1, 1]));
    assert!(tokenizer_error(&md).contains("token types"));
    let mut md = good.clone();
    md.insert(
        "tokenizer.ggml.bos_token_id".into(),
        GgufValue::U32(1 << 20),
    );
    assert!(tokenizer_error(&md).contains("bos_token_id"));
    let mut md = good.clone();
    md.insert("tokenizer.ggml.tokens".into(), ints(&[1, 2, 3]));
    assert!(tokenizer_error(&md).contains("not a string"));
    let mut md = good.clone();
    md.insert("tokenizer.ggml.model".into(), s("bert"));
    assert!(matches!(
        Tokenizer::from_gguf(&md),
        Err(ModelError::Unsupported(_))
    ));
    let mut md = TinyBpe::new(&[("a", "b")]).metadata("gpt2");
    md.remove("tokenizer.ggml.merges");
    assert!(tokenizer_error(&md).contains("merges"));
    // An out-of-range padding id is ignored rather than fatal.
    let mut md = good;
    md.insert("tokenizer.ggml.padding_token_id".into(), GgufValue::I32(-1));
    assert!(Tokenizer::from_gguf(&md).is_ok());
}

#[test]
fn tokenizer_json_with_config() {
    let dir = tempfile::tempdir().unwrap();
    // A byte-level BPE without post-processor, saved as tokenizer.json.
    let bpe = TinyBpe::new(&[("a", "b"), ("ab", "c")]);
    let base = Tokenizer::from_gguf(&bpe.metadata("gpt2")).unwrap();
    let json = dir.path().join("tokenizer.json");
    std::fs::write(&json, base.inner().to_string(false).unwrap()).unwrap();
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(
        &config,
        r#"{"bos_token": {"content": "<|endoftext|>", "special": true}, "eos_token": "<|endoftext|>",
            "add_bos_token": true, "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_hf_files(&json, Some(&config)).unwrap();
    assert_eq!(tok.source(), "tokenizer.json");
    assert_eq!(tok.bos_id(), Some(256));
    assert_eq!(tok.eos_token(), Some("<|endoftext|>"));
    // add_bos_token = true while the post-processor adds nothing: we add it.
    assert_eq!(tok.encode("abc", true).unwrap(), [256, bpe.id("abc")]);
    assert_eq!(tok.encode("abc", false).unwrap(), [bpe.id("abc")]);
    assert_eq!(tok.chat_template(), Some("D"));
    assert!(tok.is_special(256) && tok.eos_ids().contains(&256));

    // Without a config: no chat template unless chat_template.jinja sits beside it.
    std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
    let tok = Tokenizer::from_hf_files(&json, None).unwrap();
    assert_eq!(tok.encode("abc", true).unwrap(), [bpe.id("abc")]);
    assert_eq!(tok.chat_template(), Some("J"));
    assert_eq!(tok.eos_ids(), [256]);

    // A SentencePiece tokenizer whose post-processor adds BOS, with add_bos_token = false.
    let (md, tokens) = tiny_spm(true, true);
    let spm = Tokenizer::from_gguf(&md).unwrap();
    std::fs::write(&json, spm.inner().to_string(false).unwrap()).unwrap();
    std::fs::write(
        &config,
        r#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": false}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_hf_files(&json, Some(&config)).unwrap();
    let hello = tokens.iter().position(|t| t == "▁hello").unwrap() as u32;
    assert_eq!(spm.encode("hello", true).unwrap(), [1, hello]);
    assert_eq!(tok.encode("hello", true).unwrap(), [hello]);
    assert_eq!(tok.decode(&[1, hello], true).unwrap(), "hello");

    // Errors: missing file, broken JSON, a config naming an unknown token.
    assert!(matches!(
        Tokenizer::from_hf_files(&dir.path().join("nope.json"), None),
        Err(ModelError::Io { .. })
    ));
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"model\": ").unwrap();
    assert!(matches!(
        Tokenizer::from_hf_files(&broken, None),
        Err(ModelError::Format { .. })
    ));
    std::fs::write(&config, r#"{"bos_token": "<nope>"}"#).unwrap();
    assert!(matches!(
        Tokenizer::from_hf_files(&json, Some(&config)),
        Err(ModelError::Tokenizer(_))
    ));
}
