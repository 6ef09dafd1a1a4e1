//! llama2.c `tokenizer.bin`: `i32 max_token_length`, then per token `f32 score, i32 len,
//! len bytes`, all little-endian, until the end of the file (the vocabulary size is the
//! model's; the file does not store it).
//!
//! It is a SentencePiece BPE vocabulary exported with '▁' turned into ' ' and BOS/EOS written
//! as "\n<s>\n" / "\n</s>\n": id 0 `<unk>`, 1 BOS, 2 EOS, `<0x00>`..`<0xFF>` byte tokens
//! (ids 3..258 in Karpathy's exports). llama2.c's `encode()` prepends a " " dummy prefix and
//! greedily merges the highest-score pair, which is SentencePiece BPE with
//! `add_space_prefix`; so the pieces are turned back into SentencePiece form and built by
//! `spm.rs`.

use std::collections::HashSet;
use std::path::Path;

use super::spm::{self, SpmVocab, SPACE};
use super::{bos_eos_post_processor, AutoToken, Parts, TokenType, Tokenizer};
use crate::error::{ModelError, Result};

const UNK_ID: u32 = 0;
const BOS_ID: u32 = 1;
const EOS_ID: u32 = 2;

/// `<0xNN>` with two upper-case hex digits.
fn is_byte_piece(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 6
        && s.starts_with("<0x")
        && b[5] == b'>'
        && b[3..5]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
}

/// Parsed `tokenizer.bin`: (piece bytes, score) per token.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<(Vec<u8>, f32)>> {
    let fmt = |msg: String| ModelError::format(path, msg);
    let read4 = |off: usize| -> Option<[u8; 4]> { bytes.get(off..off + 4)?.try_into().ok() };
    let max_len = read4(0)
        .map(i32::from_le_bytes)
        .ok_or_else(|| fmt("too short for a llama2.c tokenizer header".into()))?;
    if max_len <= 0 {
        return Err(fmt(format!("max_token_length {max_len} is not positive")));
    }
    let mut off = 4;
    let mut out = Vec::new();
    while off < bytes.len() {
        let i = out.len();
        let (Some(score), Some(len)) = (read4(off), read4(off + 4)) else {
            return Err(fmt(format!(
                "token {i}: truncated entry header at byte {off}"
            )));
        };
        let score = f32::from_le_bytes(score);
        let len = i32::from_le_bytes(len);
        if len < 0 {
            return Err(fmt(format!(
                "token {i}: negative length {len} at byte {off}"
            )));
        }
        let start = off + 8;
        let piece = bytes.get(start..start + len as usize).ok_or_else(|| {
            fmt(format!(
                "token {i}: {len} bytes announced at byte {off}, file ends first"
            ))
        })?;
        out.push((piece.to_vec(), score));
        off = start + len as usize;
    }
    if out.len() <= EOS_ID as usize {
        return Err(fmt(format!(
            "only {} tokens (need at least <unk>, BOS and EOS)",
            out.len()
        )));
    }
    Ok(out)
}

pub(super) fn from_llama2c(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let entries = parse(path, &bytes)?;
    let n = entries.len();
    let mut pieces = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for (id, (raw, score)) in entries.into_iter().enumerate() {
        let text = String::from_utf8(raw)
            .map_err(|_| ModelError::format(path, format!("token {id} is not valid UTF-8")))?;
        let (piece, ty) = match id as u32 {
            UNK_ID => ("<unk>".to_string(), TokenType::Unknown),
            // llama2.c writes them with newlines around so that printing them shows a break.
            BOS_ID => (text.trim().to_string(), TokenType::Control),
            EOS_ID => (text.trim().to_string(), TokenType::Control),
            _ if is_byte_piece(&text) => (text, TokenType::Byte),
            _ => (text.replace(' ', SPACE), TokenType::Normal),
        };
        if piece.is_empty() {
            return Err(ModelError::format(path, format!("token {id} is empty")));
        }
        pieces.push(piece);
        scores.push(score);
        types.push(ty);
    }
    let vocab = SpmVocab {
        pieces,
        scores,
        types,
        unk_id: Some(UNK_ID),
        add_space_prefix: true,
    };
    let mut inner = spm::build(&vocab)?;
    let bos_text = vocab.pieces[BOS_ID as usize].clone();
    // llama2.c's run.c always encodes with BOS and without EOS.
    let auto_bos = match bos_eos_post_processor(Some((BOS_ID, &bos_text)), None) {
        Some(pp) => {
            inner.with_post_processor(Some(pp));
            AutoToken::AsInner
        }
        None => AutoToken::Add,
    };
    let special: HashSet<u32> = [UNK_ID, BOS_ID, EOS_ID].into_iter().collect();
    Tokenizer::assemble(Parts {
        inner,
        vocab_size: n,
        bos_id: Some(BOS_ID),
        eos_id: Some(EOS_ID),
        extra_eos: Vec::new(),
        special,
        auto_bos,
        auto_eos: AutoToken::AsInner,
        chat_template: None,
        source: "llama2.c",
        spm_decoder: Some(spm::SpmDecoder::new(&vocab)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_piece_pattern() {
        assert!(is_byte_piece("<0x00>"));
        assert!(is_byte_piece("<0xFF>"));
        assert!(is_byte_piece("<0x0A>"));
        assert!(!is_byte_piece("<0x0a>"));
        assert!(!is_byte_piece("<0xG0>"));
        assert!(!is_byte_piece("<0x100>"));
        assert!(!is_byte_piece(" <0x0>"));
    }

    fn entry(out: &mut Vec<u8>, score: f32, s: &[u8]) {
        out.extend_from_slice(&score.to_le_bytes());
        out.extend_from_slice(&(s.len() as i32).to_le_bytes());
        out.extend_from_slice(s);
    }

    #[test]
    fn truncated_and_bad_files_are_errors() {
        let p = Path::new("t.bin");
        assert!(parse(p, &[1, 0]).is_err());
        assert!(parse(p, &0i32.to_le_bytes()).is_err());
        let mut ok = 4i32.to_le_bytes().to_vec();
        for s in [&b"<unk>"[..], b"\n<s>\n", b"\n</s>\n", b"ab"] {
            entry(&mut ok, 0.0, s);
        }
        assert_eq!(parse(p, &ok).map(|v| v.len()).ok(), Some(4));
        // Cut inside the last piece.
        assert!(parse(p, &ok[..ok.len() - 1]).is_err());
        // Cut inside an entry header.
        let mut cut = ok.clone();
        cut.extend_from_slice(&[0, 0, 0]);
        assert!(parse(p, &cut).is_err());
        // Negative length.
        let mut neg = ok.clone();
        neg.extend_from_slice(&0f32.to_le_bytes());
        neg.extend_from_slice(&(-3i32).to_le_bytes());
        assert!(parse(p, &neg).is_err());
    }
}
