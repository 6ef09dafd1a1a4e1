//! The streaming detokenizer: for random id streams (text in many scripts, characters spelt
//! out in byte tokens, special tokens, garbage ids) the concatenation of everything emitted
//! equals `decode(all)`, no chunk holds U+FFFD unless the full text does, and text is emitted
//! as soon as it is complete (not hoarded until `flush`).
//!
//! Runs on tiny vocabularies made here, and on the real ones under SLUICE_TEST_MODELS.

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_model::loader::{GgufFile, GgufMetadata, GgufValue};
use sluice_model::tokenizer::{IncrementalDecoder, Tokenizer};

const FFFD: char = '\u{FFFD}';

/// The chunks emitted for `ids` (each push, then the flush).
fn stream(tok: &Tokenizer, dec: &mut IncrementalDecoder, ids: &[u32]) -> Vec<String> {
    let mut out: Vec<String> = ids.iter().map(|&id| dec.push(tok, id).unwrap()).collect();
    out.push(dec.flush(tok).unwrap());
    out
}

fn check(tok: &Tokenizer, ids: &[u32], skip: bool, what: &str) {
    let full = tok.decode(ids, skip).unwrap();
    let chunks = stream(tok, &mut IncrementalDecoder::new(skip), ids);
    assert_eq!(chunks.concat(), full, "{what}: ids {ids:?}");
    if !full.contains(FFFD) {
        for (i, c) in chunks.iter().enumerate() {
            assert!(
                !c.contains(FFFD),
                "{what}: chunk {i} {c:?} has U+FFFD, ids {ids:?}"
            );
        }
    }
}

/// Text exercising multi-byte characters: accents, CJK, emoji (incl. ZWJ sequences), Cyrillic.
fn random_text(rng: &mut ChaCha8Rng) -> String {
    const PARTS: &[&str] = &[
        "hello",
        " world",
        "中文",
        "日本語",
        "😀",
        "👩‍👩‍👧",
        "é",
        "ß",
        " Жук",
        "\n",
        "  ",
        "42",
        ".",
        "🇫🇷",
        "ab",
        "c",
    ];
    (0..rng.random_range(1..12))
        .map(|_| PARTS[rng.random_range(0..PARTS.len())])
        .collect()
}

/// The id of byte `b` as a token: `<0xNN>` (SentencePiece) or GPT-2's byte character.
fn byte_token(tok: &Tokenizer, b: u8) -> u32 {
    if let Some(id) = tok.token_to_id(&format!("<0x{b:02X}>")) {
        return id;
    }
    let printable = |c: u32| {
        (0x21..=0x7e).contains(&c) || (0xa1..=0xac).contains(&c) || (0xae..=0xff).contains(&c)
    };
    let ch = if printable(b as u32) {
        char::from(b)
    } else {
        let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).unwrap()
    };
    tok.token_to_id(&ch.to_string())
        .unwrap_or_else(|| panic!("no byte token for {b:#x}"))
}

/// A stream mixing encoded text, characters spelt out byte by byte, special tokens and
/// (if `garbage`) arbitrary ids.
fn random_ids(tok: &Tokenizer, rng: &mut ChaCha8Rng, garbage: bool) -> Vec<u32> {
    let mut ids = Vec::new();
    for _ in 0..rng.random_range(1..8) {
        match rng.random_range(0..5) {
            0 | 1 => ids.extend(tok.encode(&random_text(rng), false).unwrap()),
            2 => {
                let c = ['中', '😀', 'é', '€', '𝔘', 'ж'][rng.random_range(0..6)];
                ids.extend(c.to_string().bytes().map(|b| byte_token(tok, b)));
            }
            3 => ids.extend(
                tok.bos_id()
                    .into_iter()
                    .chain(tok.eos_ids().first().copied()),
            ),
            _ if garbage => ids.extend(
                (0..rng.random_range(1..4)).map(|_| rng.random_range(0..tok.vocab_size() as u32)),
            ),
            _ => ids.extend(tok.encode(" ok", false).unwrap()),
        }
    }
    ids
}

fn exercise(tok: &Tokenizer, name: &str, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for case in 0..150 {
        let garbage = case % 3 == 2;
        let ids = random_ids(tok, &mut rng, garbage);
        for skip in [false, true] {
            check(tok, &ids, skip, &format!("{name} case {case} skip={skip}"));
        }
    }
    // Clean text streams promptly: once the last character is complete, nothing is left
    // for flush, and a character split over byte tokens is emitted exactly when complete.
    let ids = tok.encode("plain ascii then 中 and 😀 end", false).unwrap();
    let chunks = stream(tok, &mut IncrementalDecoder::new(false), &ids);
    assert_eq!(
        chunks.last().map(String::as_str),
        Some(""),
        "{name}: {chunks:?}"
    );
    let emoji: Vec<u32> = "😀".bytes().map(|b| byte_token(tok, b)).collect();
    let mut dec = IncrementalDecoder::new(false);
    let got: Vec<String> = emoji.iter().map(|&id| dec.push(tok, id).unwrap()).collect();
    assert_eq!(got, ["", "", "", "😀"], "{name}");
    // A stream that ends inside a character hands the remainder over in flush.
    let mut dec = IncrementalDecoder::new(false);
    for &id in &emoji[..2] {
        assert_eq!(dec.push(tok, id).unwrap(), "");
    }
    assert_eq!(
        dec.flush(tok).unwrap(),
        tok.decode(&emoji[..2], false).unwrap()
    );
    // Starting from prompt context, the continuation keeps its leading space.
    let prompt = tok.encode("Once upon a time", true).unwrap();
    let gen = tok.encode(" there was 中文 😀", false).unwrap();
    let mut all = prompt.clone();
    all.extend(&gen);
    let whole = tok.decode(&all, true).unwrap();
    let head = tok.decode(&prompt, true).unwrap();
    let streamed = stream(
        tok,
        &mut IncrementalDecoder::with_prefix(true, &prompt),
        &gen,
    )
    .concat();
    assert_eq!(format!("{head}{streamed}"), whole, "{name}");
}

fn s(v: &str) -> GgufValue {
    GgufValue::String(v.to_string())
}

/// SentencePiece vocabulary with byte fallback and the space prefix (Llama 2 style).
fn tiny_spm() -> Tokenizer {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![2, 3, 3];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([6; 256]);
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hello", "▁hello", "▁w", "▁world",
        "中", "文", "▁t", "here",
    ];
    tokens.extend(pieces.iter().map(|p| p.to_string()));
    types.extend(std::iter::repeat_n(1, pieces.len()));
    let scores: Vec<GgufValue> = (0..tokens.len())
        .map(|i| GgufValue::F32(-(i as f32)))
        .collect();
    let mut md = GgufMetadata::new();
    md.insert("tokenizer.ggml.model".into(), s("llama"));
    md.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(tokens.iter().map(|t| s(t)).collect()),
    );
    md.insert(
        "tokenizer.ggml.token_type".into(),
        GgufValue::Array(types.iter().map(|&t| GgufValue::I32(t)).collect()),
    );
    md.insert("tokenizer.ggml.scores".into(), GgufValue::Array(scores));
    md.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1));
    md.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2));
    md.insert("tokenizer.ggml.unknown_token_id".into(), GgufValue::U32(0));
    md.insert(
        "tokenizer.ggml.add_space_prefix".into(),
        GgufValue::Bool(true),
    );
    Tokenizer::from_gguf(&md).unwrap()
}

/// Byte-level BPE with a few merges, including ones that end in the middle of a character
/// ("Ġ" + the first byte of "中" = 0xE4 -> 'ä').
fn tiny_byte_level() -> Tokenizer {
    let printable = |c: u32| {
        (0x21..=0x7e).contains(&c) || (0xa1..=0xac).contains(&c) || (0xae..=0xff).contains(&c)
    };
    let mut n = 0;
    let mut tokens: Vec<String> = (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap().to_string()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap().to_string()
            }
        })
        .collect();
    tokens.push("<|endoftext|>".into());
    let merges = [
        ("Ġ", "ä"),
        ("h", "e"),
        ("l", "l"),
        ("he", "ll"),
        ("Ġ", "w"),
        ("¸", "Ń"),
        ("ð", "Ł"),
    ];
    for (a, b) in merges {
        tokens.push(format!("{a}{b}"));
    }
    let mut types = vec![1; tokens.len()];
    types[256] = 3;
    let mut md = GgufMetadata::new();
    md.insert("tokenizer.ggml.model".into(), s("gpt2"));
    md.insert("tokenizer.ggml.pre".into(), s("gpt2"));
    md.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(tokens.iter().map(|t| s(t)).collect()),
    );
    md.insert(
        "tokenizer.ggml.token_type".into(),
        GgufValue::Array(types.iter().map(|&t| GgufValue::I32(t)).collect()),
    );
    md.insert(
        "tokenizer.ggml.merges".into(),
        GgufValue::Array(merges.iter().map(|(a, b)| s(&format!("{a} {b}"))).collect()),
    );
    md.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(256));
    md.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(256));
    Tokenizer::from_gguf(&md).unwrap()
}

#[test]
fn tiny_sentencepiece_streams() {
    exercise(&tiny_spm(), "tiny-spm", 1);
}

#[test]
fn tiny_byte_level_streams() {
    let tok = tiny_byte_level();
    // The merge "Ġä" really produces a token holding a space and half a character.
    let ids = tok.encode(" 中", false).unwrap();
    assert_eq!(tok.id_to_token(ids[0]).as_deref(), Some("Ġä"));
    exercise(&tok, "tiny-byte-level", 2);
}

fn model(rel: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SLUICE_TEST_MODELS") else {
        eprintln!("note: SLUICE_TEST_MODELS is not set; skipping a real-model test");
        return None;
    };
    let p = PathBuf::from(dir).join(rel);
    if !p.is_file() {
        eprintln!("note: {} absent; skipping", p.display());
        return None;
    }
    Some(p)
}

#[test]
fn real_vocabularies_stream() {
    if let Some(p) = model("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf") {
        let tok = Tokenizer::from_gguf(&GgufFile::open(&p).unwrap().metadata).unwrap();
        exercise(&tok, "smollm2", 3);
    }
    if let Some(p) = model("stories260K/tok512.bin") {
        exercise(&Tokenizer::from_llama2c(&p).unwrap(), "stories260K", 4);
    }
    if let Some(p) = model("gemma-3-270m-q4_k_m/gemma-3-270m-q4_k_m.gguf") {
        let tok = Tokenizer::from_gguf(&GgufFile::open(&p).unwrap().metadata).unwrap();
        exercise(&tok, "gemma3", 5);
    }
}
