//! SentencePiece BPE (pieces + scores + `<0xNN>` byte fallback) as an HF `tokenizers` BPE model.
//!
//! SentencePiece's BPE encoder (and llama.cpp's `llm_tokenizer_spm`, llama2.c's `encode`)
//! starts from single characters and repeatedly merges the adjacent pair whose concatenation
//! is a piece with the highest score, leftmost first on ties; characters left without a piece
//! become `<0xNN>` byte tokens. HF BPE instead merges the adjacent pair with the lowest merge
//! rank. The two agree when the merge list holds, for every piece `t` and every split
//! `t = l + r` with `l`, `r` both pieces, the merge `(l, r)` ranked by `t`'s score (highest
//! first) — the same construction as transformers' `SentencePieceExtractor`:
//! - a pair can merge in SPM iff its concatenation is a piece, iff it is in the list;
//! - the best SPM pair (highest target score) is the lowest-rank pair, as long as distinct
//!   targets have distinct scores (true for real vocabularies: the score is minus the merge
//!   order). Two different splits of the *same* target never compete for the same characters,
//!   so their relative order does not change the result.
//!
//! Whitespace: SentencePiece writes ' ' as '▁' (U+2581) and, with `add_space_prefix`
//! (Llama 2, llama2.c; not Gemma), prepends one '▁' to each run of text — after each special
//! token too, as llama.cpp's `is_prev_special` and HF's per-segment normalizer both do.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::AddedToken;

use super::{tok_err, TokenType};
use crate::error::Result;

/// SentencePiece's visible space.
pub(crate) const SPACE: &str = "\u{2581}";

/// A SentencePiece BPE vocabulary, pieces in SentencePiece form ('▁' for space).
pub(crate) struct SpmVocab {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<TokenType>,
    pub unk_id: Option<u32>,
    pub add_space_prefix: bool,
}

/// What one id contributes to decoded text.
#[derive(Clone, Debug)]
enum DecodePiece {
    /// A `<0xNN>` byte-fallback token.
    Byte(u8),
    /// A normal or user-defined piece, '▁' already turned back into ' '.
    Text(String),
    /// A control/unknown token: its text, or nothing when skipping special tokens.
    Special(String),
}

/// SentencePiece decoding done like llama.cpp: concatenate the bytes of all pieces, then
/// turn invalid UTF-8 into U+FFFD per invalid sequence (`from_utf8_lossy`), then drop the
/// dummy-prefix space. HF's `ByteFallback` decoder instead replaces a whole run of byte tokens
/// by U+FFFDs as soon as one byte in it is invalid, which makes the text of a prefix depend on
/// what follows it; this decoder keeps `decode(a ++ b)` = `decode(a) ++ decode(b)` at
/// character boundaries, which the streaming detokenizer relies on. The two agree on
/// every sequence that decodes to valid UTF-8.
#[derive(Clone, Debug)]
pub(crate) struct SpmDecoder {
    pieces: Vec<DecodePiece>,
    strip_space_prefix: bool,
}

impl SpmDecoder {
    pub(crate) fn new(v: &SpmVocab) -> SpmDecoder {
        let pieces = v
            .pieces
            .iter()
            .zip(&v.types)
            .map(|(p, t)| match t {
                TokenType::Byte => match byte_of(p) {
                    Some(b) => DecodePiece::Byte(b),
                    None => DecodePiece::Text(p.replace(SPACE, " ")),
                },
                // HF's Replace decoder rewrites '▁' in every token, special ones included.
                t if t.is_special() => DecodePiece::Special(p.replace(SPACE, " ")),
                _ => DecodePiece::Text(p.replace(SPACE, " ")),
            })
            .collect();
        SpmDecoder {
            pieces,
            strip_space_prefix: v.add_space_prefix,
        }
    }

    /// The caller checked that every id is in range.
    pub(crate) fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let mut bytes: Vec<u8> = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.pieces.get(id as usize) {
                Some(DecodePiece::Byte(b)) => bytes.push(*b),
                Some(DecodePiece::Text(t)) => bytes.extend_from_slice(t.as_bytes()),
                Some(DecodePiece::Special(t)) if !skip_special_tokens => {
                    bytes.extend_from_slice(t.as_bytes())
                }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        match text.strip_prefix(' ') {
            Some(rest) if self.strip_space_prefix => rest.to_string(),
            _ => text.into_owned(),
        }
    }
}

/// `<0xNN>` -> NN.
fn byte_of(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Pieces that take part in merging: SentencePiece merges into normal and user-defined
/// pieces, never into control, unknown, unused or byte pieces.
fn mergeable(t: TokenType) -> bool {
    matches!(t, TokenType::Normal | TokenType::UserDefined)
}

/// The HF tokenizer equivalent to SentencePiece BPE over `v` (model, normalizer, decoder and
/// added tokens; the caller adds the BOS/EOS post-processor).
pub(crate) fn build(v: &SpmVocab) -> Result<tokenizers::Tokenizer> {
    let n = v.pieces.len();
    if v.scores.len() != n || v.types.len() != n {
        return Err(tok_err(format!(
            "{} pieces but {} scores and {} token types",
            n,
            v.scores.len(),
            v.types.len()
        )));
    }
    // text -> id; on duplicate texts the first id wins (the others can still be decoded by
    // the model's own tables, but can't be produced by encoding).
    let mut vocab: Vocab = Vocab::with_capacity(n);
    for (id, piece) in v.pieces.iter().enumerate() {
        vocab.entry(piece.clone()).or_insert(id as u32);
    }

    // (target score, left id, right id): see the module comment for why this ordering makes
    // HF BPE reproduce SentencePiece.
    let mut ranked: Vec<(f32, u32, u32)> = Vec::new();
    for (id, piece) in v.pieces.iter().enumerate() {
        if !mergeable(v.types[id]) || vocab.get(piece) != Some(&(id as u32)) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                if mergeable(v.types[li as usize]) && mergeable(v.types[ri as usize]) {
                    ranked.push((v.scores[id], li, ri));
                }
            }
        }
    }
    // Highest score first; NaN scores (never seen in practice) last.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = ranked
        .into_iter()
        .map(|(_, l, r)| (v.pieces[l as usize].clone(), v.pieces[r as usize].clone()))
        .collect();

    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = v.unk_id {
        let piece = v
            .pieces
            .get(unk as usize)
            .ok_or_else(|| tok_err(format!("unknown-token id {unk} out of range ({n} pieces)")))?;
        builder = builder.unk_token(piece.clone());
    }
    let model = builder
        .build()
        .map_err(|e| tok_err(format!("building SentencePiece BPE: {e}")))?;

    let mut tok = tokenizers::Tokenizer::new(model);
    let replace_space = Replace::new(" ", SPACE).map_err(tok_err)?;
    let normalizer: NormalizerWrapper = if v.add_space_prefix {
        NormalizerSequence::new(vec![
            Prepend::new(SPACE.to_string()).into(),
            replace_space.into(),
        ])
        .into()
    } else {
        replace_space.into()
    };
    tok.with_normalizer(Some(normalizer));

    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE, " ").map_err(tok_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if v.add_space_prefix {
        // Undo the dummy prefix of the first word.
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));

    add_tokens_by_type(&mut tok, &v.pieces, &v.types);
    Ok(tok)
}

/// Registers control/unknown tokens as special added tokens and user-defined ones as normal
/// added tokens, all matched on the raw (un-normalized) text.
pub(crate) fn add_tokens_by_type(
    tok: &mut tokenizers::Tokenizer,
    pieces: &[String],
    types: &[TokenType],
) {
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (piece, t) in pieces.iter().zip(types) {
        if !t.is_added() || piece.is_empty() {
            continue;
        }
        let added = AddedToken::from(piece.clone(), t.is_special()).normalized(false);
        if t.is_special() {
            special.push(added);
        } else {
            user.push(added);
        }
    }
    tok.add_special_tokens(&special);
    tok.add_tokens(&user);
}
