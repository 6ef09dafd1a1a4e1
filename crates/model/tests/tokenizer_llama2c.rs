//! llama2.c `tokenizer.bin`: hand-built files (mechanics, errors) and the real tok512.bin of
//! stories260K (reference ids from its README.txt, plus a naive port of run.c's `encode()` on
//! random text).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_model::error::ModelError;
use sluice_model::tokenizer::{IncrementalDecoder, Tokenizer};

/// Writes a llama2.c tokenizer: `i32 max_len`, then `f32 score, i32 len, bytes` per token.
fn write_bin(path: &Path, tokens: &[(&str, f32)]) {
    let max_len = tokens.iter().map(|(t, _)| t.len()).max().unwrap_or(1) as i32;
    let mut out = max_len.to_le_bytes().to_vec();
    for (t, score) in tokens {
        out.extend_from_slice(&score.to_le_bytes());
        out.extend_from_slice(&(t.len() as i32).to_le_bytes());
        out.extend_from_slice(t.as_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// `<unk>`, BOS, EOS, 256 byte tokens, then `extra` (ids from 259).
fn tiny_vocab(extra: &[(&'static str, f32)]) -> Vec<(String, f32)> {
    let mut v: Vec<(String, f32)> = vec![
        ("<unk>".into(), 0.0),
        ("\n<s>\n".into(), 0.0),
        ("\n</s>\n".into(), 0.0),
    ];
    v.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0)));
    v.extend(extra.iter().map(|(s, sc)| (s.to_string(), *sc)));
    v
}

fn build_tiny(dir: &Path, extra: &[(&'static str, f32)]) -> Tokenizer {
    let v = tiny_vocab(extra);
    let refs: Vec<(&str, f32)> = v.iter().map(|(s, sc)| (s.as_str(), *sc)).collect();
    let path = dir.join("tok.bin");
    write_bin(&path, &refs);
    Tokenizer::from_llama2c(&path).expect("tiny tokenizer")
}

#[test]
fn tiny_vocab_merges_by_score_with_byte_fallback() {
    let dir = tempfile::tempdir().unwrap();
    // ids: 259 " ", 260 "a", 261 "b", 262 "c", 263 "ab", 264 "bc", 265 "abc", 266 " a"
    let tok = build_tiny(
        dir.path(),
        &[
            (" ", -100.0),
            ("a", -100.0),
            ("b", -100.0),
            ("c", -100.0),
            ("ab", -5.0),
            ("bc", -1.0),
            ("abc", -2.0),
            (" a", -3.0),
        ],
    );
    assert_eq!(tok.vocab_size(), 267);
    assert_eq!((tok.bos_id(), tok.eos_ids()), (Some(1), &[2u32][..]));
    assert_eq!(
        (tok.bos_token(), tok.eos_token()),
        (Some("<s>"), Some("</s>"))
    );
    assert!(tok.is_special(0) && tok.is_special(1) && tok.is_special(2) && !tok.is_special(3));
    // "▁abc": candidates "▁a" (-3), "ab" (-5), "bc" (-1) -> bc first; then "▁a"+"bc"? not a
    // piece; "a"+"bc" = "abc" (-2) beats "▁a" (-3) -> [▁, abc].
    assert_eq!(tok.encode("abc", true).unwrap(), [1, 259, 265]);
    // "▁ab": "▁a" (-3) beats "ab" (-5).
    assert_eq!(tok.encode("ab", false).unwrap(), [266, 261]);
    // 'x' is not a piece: byte fallback.
    let ids = tok.encode("ax", false).unwrap();
    assert_eq!(ids, [266, 3 + b'x' as u32]);
    // Multi-byte characters fall back to their UTF-8 bytes.
    let ids = tok.encode("é中", false).unwrap();
    let want: Vec<u32> = std::iter::once(259)
        .chain("é中".bytes().map(|b| 3 + b as u32))
        .collect();
    assert_eq!(ids, want);
    assert_eq!(tok.decode(&ids, false).unwrap(), "é中");
    // The dummy prefix space is removed again when decoding.
    assert_eq!(
        tok.decode(&tok.encode("abc ab", true).unwrap(), true)
            .unwrap(),
        "abc ab"
    );
    assert_eq!(tok.encode("", true).unwrap(), [1]);
    assert_eq!(tok.encode("", false).unwrap(), Vec::<u32>::new());
    // Special tokens written in the text are recognised.
    assert_eq!(tok.encode("</s>", false).unwrap(), [2]);
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    match Tokenizer::from_llama2c(&dir.path().join("missing.bin")) {
        Err(ModelError::Io { path, .. }) => assert!(path.ends_with("missing.bin")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    let v = tiny_vocab(&[("a", -1.0)]);
    let refs: Vec<(&str, f32)> = v.iter().map(|(s, sc)| (s.as_str(), *sc)).collect();
    let good = dir.path().join("good.bin");
    write_bin(&good, &refs);
    let bytes = std::fs::read(&good).unwrap();
    for cut in [0, 3, 5, bytes.len() - 1] {
        let p = dir.path().join(format!("cut{cut}.bin"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        match Tokenizer::from_llama2c(&p) {
            Err(ModelError::Format { message, .. }) => assert!(!message.is_empty()),
            other => panic!("cut at {cut}: expected a format error, got {other:?}"),
        }
    }
    // Invalid UTF-8 in a piece.
    let mut bad = bytes.clone();
    bad.extend_from_slice(&0f32.to_le_bytes());
    bad.extend_from_slice(&2i32.to_le_bytes());
    bad.extend_from_slice(&[0xff, 0xfe]);
    let p = dir.path().join("utf8.bin");
    std::fs::write(&p, &bad).unwrap();
    assert!(matches!(
        Tokenizer::from_llama2c(&p),
        Err(ModelError::Format { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// stories260K

fn tok512_path() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SLUICE_TEST_MODELS") else {
        eprintln!("note: SLUICE_TEST_MODELS is not set; skipping a real-model test");
        return None;
    };
    let p = PathBuf::from(dir).join("stories260K/tok512.bin");
    assert!(
        p.is_file(),
        "{} missing under SLUICE_TEST_MODELS",
        p.display()
    );
    Some(p)
}

/// README: "Once upon a time" + the first generated ids, and the start of the story text.
const PROMPT_IDS: [u32; 5] = [1, 403, 407, 261, 378];
const GENERATED_IDS: [u32; 10] = [432, 383, 286, 261, 376, 298, 315, 421, 395, 317];
const README_TEXT: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

#[test]
fn stories260k_reference_ids_and_decoding() {
    let Some(path) = tok512_path() else { return };
    let tok = Tokenizer::from_llama2c(&path).unwrap();
    assert_eq!(tok.vocab_size(), 512);
    assert_eq!(tok.encode("Once upon a time", true).unwrap(), PROMPT_IDS);
    let all: Vec<u32> = PROMPT_IDS.iter().chain(&GENERATED_IDS).copied().collect();
    let text = tok.decode(&all, true).unwrap();
    assert!(
        text.len() > "Once upon a time, there was a little".len(),
        "{text:?}"
    );
    assert!(
        README_TEXT.starts_with(&text),
        "{text:?} is not a prefix of the README story"
    );
    // Streaming the generated ids after the prompt gives the same continuation.
    let mut dec = IncrementalDecoder::with_prefix(true, &PROMPT_IDS);
    let mut streamed = String::new();
    for &id in &GENERATED_IDS {
        streamed.push_str(&dec.push(&tok, id).unwrap());
    }
    streamed.push_str(&dec.flush(&tok).unwrap());
    assert_eq!(format!("Once upon a time{streamed}"), text);
}

/// A direct port of llama2.c run.c `encode()` (bos, no eos) on the raw file: dummy " " prefix,
/// codepoint lookup with byte fallback (+3), then merge the best-scoring pair (strictly
/// greater, so leftmost on ties) until none is left.
struct RunC {
    vocab: Vec<String>,
    scores: Vec<f32>,
    lookup: HashMap<String, usize>,
}

impl RunC {
    fn load(path: &Path) -> RunC {
        let b = std::fs::read(path).unwrap();
        let mut off = 4;
        let (mut vocab, mut scores) = (Vec::new(), Vec::new());
        while off < b.len() {
            let score = f32::from_le_bytes(b[off..off + 4].try_into().unwrap());
            let len = i32::from_le_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
            vocab.push(String::from_utf8(b[off + 8..off + 8 + len].to_vec()).unwrap());
            scores.push(score);
            off += 8 + len;
        }
        let mut lookup = HashMap::new();
        for (i, t) in vocab.iter().enumerate() {
            lookup.entry(t.clone()).or_insert(i);
        }
        RunC {
            vocab,
            scores,
            lookup,
        }
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        let mut t: Vec<usize> = vec![1];
        if !text.is_empty() {
            t.push(self.lookup[" "]);
        }
        for c in text.chars() {
            match self.lookup.get(&c.to_string()) {
                Some(&id) => t.push(id),
                None => t.extend(c.to_string().bytes().map(|b| b as usize + 3)),
            }
        }
        loop {
            let (mut best_score, mut best) = (-1e10f32, None);
            for i in 0..t.len() - 1 {
                let s = format!("{}{}", self.vocab[t[i]], self.vocab[t[i + 1]]);
                if let Some(&id) = self.lookup.get(&s) {
                    if self.scores[id] > best_score {
                        best_score = self.scores[id];
                        best = Some((i, id));
                    }
                }
            }
            let Some((i, id)) = best else { break };
            t[i] = id;
            t.remove(i + 1);
        }
        t.into_iter().map(|i| i as u32).collect()
    }
}

#[test]
fn stories260k_matches_run_c_encode_on_random_text() {
    let Some(path) = tok512_path() else { return };
    let tok = Tokenizer::from_llama2c(&path).unwrap();
    let runc = RunC::load(&path);
    let words: Vec<&str> = runc.vocab[259..].iter().map(String::as_str).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(260);
    for case in 0..400 {
        let mut text = String::new();
        for _ in 0..rng.random_range(0..30) {
            match rng.random_range(0..8) {
                0..=4 => text.push_str(words[rng.random_range(0..words.len())]),
                5 => text.push_str([" ", "  ", "\n", ". ", ", ", "\t"][rng.random_range(0..6)]),
                6 => text.push(char::from_u32(rng.random_range(0x20..0x7f)).unwrap()),
                _ => {
                    let c = ['é', '中', '😀', 'ß', 'Ж', '€', '\u{200a}'][rng.random_range(0..7)];
                    text.push(c);
                }
            }
        }
        let want = runc.encode(&text);
        assert_eq!(
            tok.encode(&text, true).unwrap(),
            want,
            "case {case}: {text:?}"
        );
        // Decoding gives the text back (the dummy prefix is stripped again).
        assert_eq!(tok.decode(&want, true).unwrap(), text, "case {case}");
    }
}
