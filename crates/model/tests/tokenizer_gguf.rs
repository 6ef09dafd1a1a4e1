//! Tokenizers built from real GGUF vocabularies (SmolLM2: byte-level BPE; Gemma 3: SentencePiece
//! BPE), checked against the reference ids in the models' README.txt and, for SentencePiece,
//! against a naive implementation of SentencePiece's merge loop on random text.
//!
//! Needs SLUICE_TEST_MODELS (see DESIGN.md); returns early with a note when it is unset.
//! SmolLM2 must then be present; Gemma is optional.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_model::loader::{GgufFile, GgufMetadata, GgufValue};
use sluice_model::tokenizer::Tokenizer;

const SMOLLM: &str = "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m/gemma-3-270m-q4_k_m.gguf";

fn models_dir() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_TEST_MODELS") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!("note: SLUICE_TEST_MODELS is not set; skipping a real-model test");
            None
        }
    }
}

/// Loaded once per test binary (building Gemma's 262k-piece tokenizer takes a moment).
fn load(rel: &'static str, required: bool) -> Option<&'static (Tokenizer, GgufMetadata)> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, &'static (Tokenizer, GgufMetadata)>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(hit) = cache.get(rel) {
        return Some(*hit);
    }
    let loaded: &'static (Tokenizer, GgufMetadata) =
        Box::leak(Box::new(load_uncached(rel, required)?));
    cache.insert(rel, loaded);
    Some(loaded)
}

fn load_uncached(rel: &str, required: bool) -> Option<(Tokenizer, GgufMetadata)> {
    let path = models_dir()?.join(rel);
    if !path.is_file() {
        assert!(
            !required,
            "{} missing under SLUICE_TEST_MODELS",
            path.display()
        );
        eprintln!("note: {} absent; skipping", path.display());
        return None;
    }
    let md = GgufFile::open(&path).expect("open GGUF").metadata;
    let t0 = Instant::now();
    let tok = Tokenizer::from_gguf(&md).expect("tokenizer from GGUF");
    eprintln!("{rel}: tokenizer built in {:.2?}", t0.elapsed());
    Some((tok, md))
}

fn enc(tok: &Tokenizer, text: &str, add_special: bool) -> Vec<u32> {
    tok.encode(text, add_special)
        .unwrap_or_else(|e| panic!("encode {text:?}: {e}"))
}

/// Text exercising the awkward parts: digits, punctuation, whitespace runs, newlines, tabs,
/// accents, CJK, emoji (4-byte UTF-8), combining marks, a zero-width joiner sequence.
const MIXED: &[&str] = &[
    "Once upon a time",
    "Hello, world! It's 2024-07-26 and π ≈ 3.14159.",
    "  leading spaces, trailing spaces   ",
    "line one\nline two\n\n\tindented\r\nwindows",
    "naïve café — résumé «quoted» ‘single’",
    "日本語のテキストと中文字符，还有한국어.",
    "emoji: 😀🎉👩‍👩‍👧 flags 🇫🇷 and a lone ZWJ \u{200d}",
    "e\u{301} combining, \u{1F600}\u{1F600}, math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "fn main() { let x: Vec<u8> = vec![0xFF; 12]; println!(\"{x:?}\"); }",
    "1234567890 000 12,345.678 -42",
    "",
    " ",
    "\n",
];

#[test]
fn smollm2_reference_ids() {
    let Some((tok, _)) = load(SMOLLM, true) else {
        return;
    };
    assert_eq!(tok.vocab_size(), 49152);
    // README: prompt "Once upon a time" -> [6403, 1980, 253, 655] (add_bos_token = false).
    assert_eq!(enc(tok, "Once upon a time", true), [6403, 1980, 253, 655]);
    assert_eq!(enc(tok, "Once upon a time", false), [6403, 1980, 253, 655]);
    // README: the ChatML prompt.
    let chat =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        enc(tok, chat, true),
        [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
    );
    assert_eq!(tok.decode(&enc(tok, chat, true), false).unwrap(), chat);
    assert_eq!(
        tok.decode(
            &[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2],
            true
        )
        .unwrap(),
        "user\nWhat is the capital of France?"
    );
}

#[test]
fn smollm2_special_tokens_and_ids() {
    let Some((tok, _)) = load(SMOLLM, true) else {
        return;
    };
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.eos_ids().first(), Some(&2));
    // <|endoftext|> (id 0) also ends generation.
    assert!(tok.eos_ids().contains(&0));
    assert!(!tok.eos_ids().contains(&1));
    assert!(tok.is_special(0) && tok.is_special(1) && tok.is_special(2) && tok.is_special(16));
    assert!(!tok.is_special(17) && !tok.is_special(6403));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.id_to_token(6403).as_deref(), Some("Once"));
    assert_eq!(tok.id_to_token(1980).as_deref(), Some("Ġupon"));
    assert_eq!(tok.id_to_token(49152), None);
    // Special tokens are never split, wherever they sit.
    assert_eq!(enc(tok, "<|im_start|>", false), [1]);
    let ids = enc(tok, "x<|im_end|>y<|im_start|><|im_start|>", false);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2);
    assert_eq!(&ids[ids.len() - 2..], [1, 1]);
    // A near miss is ordinary text.
    assert!(!enc(tok, "<|im_start>", false).contains(&1));
    // Skipping special tokens when decoding.
    assert_eq!(tok.decode(&ids, true).unwrap(), "xy");
    assert!(tok.decode(&[49152], false).is_err());
}

#[test]
fn smollm2_digits_split_individually() {
    let Some((tok, _)) = load(SMOLLM, true) else {
        return;
    };
    for text in ["1234567890", " 2024", "x42y", "3.14159"] {
        let ids = enc(tok, text, false);
        let digits = text.chars().filter(char::is_ascii_digit).count();
        let digit_tokens = ids
            .iter()
            .filter(|&&id| {
                let t = tok.id_to_token(id).unwrap();
                t.chars().any(|c| c.is_ascii_digit())
            })
            .collect::<Vec<_>>();
        assert_eq!(digit_tokens.len(), digits, "{text:?} -> {ids:?}");
        for &&id in &digit_tokens {
            let t = tok.id_to_token(id).unwrap();
            assert_eq!(
                t.chars().filter(char::is_ascii_digit).count(),
                1,
                "{text:?}: token {t:?}"
            );
            // The GPT-2 regex keeps a digit away from the space before it (Digits splits
            // first), so a digit token is exactly one digit.
            assert_eq!(t.chars().count(), 1, "{text:?}: token {t:?}");
        }
    }
}

#[test]
fn smollm2_round_trips() {
    let Some((tok, _)) = load(SMOLLM, true) else {
        return;
    };
    for text in MIXED {
        let ids = enc(tok, text, true);
        assert_eq!(tok.decode(&ids, false).unwrap(), *text, "ids {ids:?}");
        assert_eq!(tok.decode(&ids, true).unwrap(), *text);
    }
    // inner() is the same tokenizer.
    let inner = tok.inner().encode("Once upon a time", true).unwrap();
    assert_eq!(inner.get_ids(), [6403, 1980, 253, 655]);
}

#[test]
fn gemma3_reference_ids_and_round_trips() {
    let Some((tok, _)) = load(GEMMA, false) else {
        return;
    };
    assert_eq!(tok.vocab_size(), 262144);
    // README: "Once upon a time" with BOS -> [2, 14946, 3324, 496, 990].
    assert_eq!(
        enc(tok, "Once upon a time", true),
        [2, 14946, 3324, 496, 990]
    );
    assert_eq!(enc(tok, "Once upon a time", false), [14946, 3324, 496, 990]);
    assert_eq!(enc(tok, "", true), [2]);
    assert_eq!(tok.bos_token(), Some("<bos>"));
    assert_eq!(tok.eos_token(), Some("<eos>"));
    let end_of_turn = tok.token_to_id("<end_of_turn>").unwrap();
    assert!(tok.eos_ids().contains(&1) && tok.eos_ids().contains(&end_of_turn));
    // add_space_prefix = false: exact round trips, and special tokens in text stay whole.
    for text in MIXED {
        let ids = enc(tok, text, true);
        assert_eq!(tok.decode(&ids, true).unwrap(), *text, "ids {ids:?}");
        // Our SentencePiece decoder and HF's agree on valid UTF-8.
        assert_eq!(tok.inner().decode(&ids, true).unwrap(), *text);
        assert_eq!(
            tok.inner().decode(&ids, false).unwrap(),
            tok.decode(&ids, false).unwrap()
        );
    }
    let turn = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n";
    let ids = enc(tok, turn, false);
    assert_eq!(ids[0], tok.token_to_id("<start_of_turn>").unwrap());
    assert!(ids.contains(&end_of_turn));
    assert_eq!(tok.decode(&ids, false).unwrap(), turn);
    // Byte fallback: characters outside the vocabulary come back intact.
    let rare: String = (0x2_0000u32..0x2_A6DF)
        .chain(0xF_0000..0x10_FFFE)
        .filter_map(char::from_u32)
        .filter(|c| tok.token_to_id(&c.to_string()).is_none())
        .take(3)
        .collect();
    assert_eq!(rare.chars().count(), 3);
    let ids = enc(tok, &rare, false);
    assert_eq!(
        ids.len(),
        rare.len(),
        "one byte token per UTF-8 byte: {ids:?}"
    );
    assert!(
        ids.iter()
            .all(|&i| tok.id_to_token(i).unwrap().starts_with("<0x")),
        "{ids:?}"
    );
    assert_eq!(tok.decode(&ids, false).unwrap(), rare);
}

// ---------------------------------------------------------------------------------------
// Naive SentencePiece BPE, written from the algorithm's description (llama2.c `encode`,
// SentencePiece `bpe_model.cc`): split special tokens out (leftmost, longest), then per
// run of text: escape spaces, one symbol per character, repeatedly merge the adjacent pair
// whose concatenation is a normal/user-defined piece of highest score (leftmost on ties),
// finally map leftover symbols to `<0xNN>` byte tokens. O(n^2) per run, no cleverness.

struct NaiveSpm {
    pieces: HashMap<String, u32>,
    scores: Vec<f32>,
    types: Vec<i64>,
    /// Special/user-defined tokens matched in raw text, longest first.
    added: Vec<(String, u32)>,
    add_space_prefix: bool,
}

impl NaiveSpm {
    fn from_gguf(md: &GgufMetadata) -> NaiveSpm {
        let arr = |k: &str| {
            md.get(k)
                .and_then(GgufValue::as_array)
                .unwrap_or_else(|| panic!("{k}"))
        };
        let tokens: Vec<String> = arr("tokenizer.ggml.tokens")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let scores: Vec<f32> = arr("tokenizer.ggml.scores")
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let types: Vec<i64> = arr("tokenizer.ggml.token_type")
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let mut pieces = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            pieces.entry(t.clone()).or_insert(i as u32);
        }
        let mut added: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types[*i], 2..=4))
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        added.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        let add_space_prefix = md
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(GgufValue::as_bool)
            .unwrap_or(true);
        NaiveSpm {
            pieces,
            scores,
            types,
            added,
            add_space_prefix,
        }
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev_special = true;
        let mut run_start = 0;
        let mut i = 0;
        while i < text.len() {
            if let Some((t, id)) = self
                .added
                .iter()
                .find(|(t, _)| text[i..].starts_with(t.as_str()))
            {
                self.encode_run(&text[run_start..i], prev_special, &mut out);
                out.push(*id);
                prev_special = true;
                i += t.len();
                run_start = i;
            } else {
                i += text[i..].chars().next().unwrap().len_utf8();
            }
        }
        self.encode_run(&text[run_start..], prev_special, &mut out);
        out
    }

    fn encode_run(&self, run: &str, prev_special: bool, out: &mut Vec<u32>) {
        if run.is_empty() {
            return;
        }
        let mut s = String::new();
        if self.add_space_prefix && prev_special {
            s.push('▁');
        }
        s.push_str(&run.replace(' ', "▁"));
        let mut syms: Vec<String> = s.chars().map(String::from).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for k in 0..syms.len().saturating_sub(1) {
                let cat = format!("{}{}", syms[k], syms[k + 1]);
                if let Some(&id) = self.pieces.get(&cat) {
                    if !matches!(self.types[id as usize], 1 | 4) {
                        continue;
                    }
                    let score = self.scores[id as usize];
                    if best.is_none_or(|(b, _)| score > b) {
                        best = Some((score, k));
                    }
                }
            }
            let Some((_, k)) = best else { break };
            let right = syms.remove(k + 1);
            syms[k].push_str(&right);
        }
        for s in syms {
            match self.pieces.get(&s) {
                Some(&id) => out.push(id),
                None => {
                    for b in s.bytes() {
                        out.push(self.pieces[&format!("<0x{b:02X}>")]);
                    }
                }
            }
        }
    }
}

/// Random text built from vocabulary pieces (so that long merges happen), random characters
/// from several scripts, whitespace runs and, sometimes, special-token strings.
fn random_text(rng: &mut ChaCha8Rng, pieces: &[String], specials: &[String]) -> String {
    let mut s = String::new();
    let n = rng.random_range(1..40);
    for _ in 0..n {
        match rng.random_range(0..10) {
            0..=4 => s.push_str(&pieces[rng.random_range(0..pieces.len())].replace('▁', " ")),
            5 => s.push_str(
                [" ", "  ", "\n", "\n\n", "\t", "   \n ", "\r\n"][rng.random_range(0..7)],
            ),
            6 => {
                let ranges = [
                    (0x20u32, 0x7f),
                    (0xa0, 0x250),
                    (0x400, 0x4ff),
                    (0x3040, 0x30ff),
                    (0x4e00, 0x9fff),
                    (0x1f300, 0x1f6ff),
                ];
                let (lo, hi) = ranges[rng.random_range(0..ranges.len())];
                for _ in 0..rng.random_range(1..4) {
                    if let Some(c) = char::from_u32(rng.random_range(lo..hi)) {
                        s.push(c);
                    }
                }
            }
            7 if !specials.is_empty() => s.push_str(&specials[rng.random_range(0..specials.len())]),
            _ => s.push_str(&rng.random_range(0..100_000).to_string()),
        }
    }
    s
}

#[test]
fn gemma3_matches_naive_sentencepiece_on_random_text() {
    let Some((tok, md)) = load(GEMMA, false) else {
        return;
    };
    let naive = NaiveSpm::from_gguf(md);
    let tokens: Vec<String> = md["tokenizer.ggml.tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let normal: Vec<String> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| naive.types[*i] == 1)
        .map(|(_, t)| t.clone())
        .collect();
    let specials: Vec<String> = [
        "<start_of_turn>",
        "<end_of_turn>",
        "<bos>",
        "</s>",
        "<div>",
        "    ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_6e33);
    let mut checked = 0;
    for case in 0..300 {
        let text = random_text(&mut rng, &normal, &specials);
        let want = naive.encode(&text);
        let got = enc(tok, &text, false);
        assert_eq!(got, want, "case {case}: {text:?}");
        assert_eq!(tok.decode(&got, false).unwrap(), text, "case {case}");
        checked += got.len();
    }
    for text in MIXED {
        assert_eq!(enc(tok, text, false), naive.encode(text), "{text:?}");
    }
    eprintln!("gemma: {checked} tokens checked against the naive SentencePiece merge loop");
}

/// Long inputs stay fast (a SentencePiece run between newlines is one BPE "word"); prints the
/// encode/decode rate for the record.
#[test]
fn long_inputs_encode_quickly() {
    for (rel, required) in [(SMOLLM, true), (GEMMA, false)] {
        let Some((tok, _)) = load(rel, required) else {
            continue;
        };
        let paragraph = MIXED.join(" ").replace('\n', " ");
        let text = paragraph.repeat(300);
        let t0 = Instant::now();
        let ids = enc(tok, &text, false);
        let t_enc = t0.elapsed();
        let t0 = Instant::now();
        let back = tok.decode(&ids, false).unwrap();
        let t_dec = t0.elapsed();
        assert_eq!(back, text);
        eprintln!(
            "{rel}: {} bytes -> {} tokens: encode {:.1} MB/s, decode {:.1} MB/s",
            text.len(),
            ids.len(),
            text.len() as f64 / t_enc.as_secs_f64() / 1e6,
            text.len() as f64 / t_dec.as_secs_f64() / 1e6
        );
        assert!(
            t_enc.as_secs_f64() < 20.0,
            "encoding {} bytes took {t_enc:?}",
            text.len()
        );
    }
}
