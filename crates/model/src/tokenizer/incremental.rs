//! Streaming detokenization that never emits broken UTF-8.
//!
//! Decoding token by token does not work: a character can be split across byte tokens
//! (`<0xE4><0xB8><0xAD>` = "中"), byte-level BPE tokens can end mid-character, and
//! SentencePiece decoders strip the leading space of the *first* token only. The
//! prefix-offset/read-offset method (TGI, vLLM) handles all three: keep a short window of
//! ids; decode the window with and without the newest ids; the difference is the new text,
//! emitted only once it no longer ends in U+FFFD (an incomplete sequence). The window
//! then moves to start at the ids just emitted, so a decoder's start-of-text rules
//! (the leading-space strip) apply to text that was emitted before and not to new text.
//!
//! Invariant: the window always starts at a token boundary that is also a character boundary
//! (it moves only when the decoded text ends in a complete character), so the concatenation
//! of everything emitted equals `decode(all ids)`.

use super::Tokenizer;
use crate::error::Result;

/// How many prompt ids [`IncrementalDecoder::with_prefix`] keeps as context (vLLM uses 5;
/// one more covers a 4-byte character spelt in byte tokens plus the token before it).
const PREFIX_CONTEXT: usize = 6;

/// Per-sequence streaming detokenizer; feed it each generated id.
#[derive(Clone, Debug)]
pub struct IncrementalDecoder {
    skip_special_tokens: bool,
    /// The decode window: ids already emitted (context) followed by pending ones.
    ids: Vec<u32>,
    /// `ids[..read]` has been emitted; `ids[read..]` has not.
    read: usize,
}

impl IncrementalDecoder {
    pub fn new(skip_special_tokens: bool) -> Self {
        IncrementalDecoder {
            skip_special_tokens,
            ids: Vec::new(),
            read: 0,
        }
    }

    /// Starts with the end of the prompt as context, so that the first generated token
    /// decodes as a continuation (" there" after "Once upon a time", not "there").
    pub fn with_prefix(skip_special_tokens: bool, prompt_ids: &[u32]) -> Self {
        let ids = prompt_ids[prompt_ids.len().saturating_sub(PREFIX_CONTEXT)..].to_vec();
        IncrementalDecoder {
            skip_special_tokens,
            read: ids.len(),
            ids,
        }
    }

    /// Adds one id; returns the newly completed text ("" while a character is incomplete).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[..self.read], self.skip_special_tokens)?;
        let full = tok.decode(&self.ids, self.skip_special_tokens)?;
        if full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = new_suffix(&prefix, &full);
        if new.is_empty() {
            // E.g. a skipped special token: keep it pending, the window start stays put.
            return Ok(String::new());
        }
        let new = new.to_string();
        // Slide: the ids just emitted become the context of the next window.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(new)
    }

    /// Whatever is still pending at the end of the sequence (may hold U+FFFD if the sequence
    /// ended inside a character). The decoder is empty afterwards.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(&self.ids[..self.read], self.skip_special_tokens)?;
        let full = tok.decode(&self.ids, self.skip_special_tokens)?;
        let new = new_suffix(&prefix, &full).to_string();
        self.ids.clear();
        self.read = 0;
        Ok(new)
    }
}

/// `full` minus `prefix`. They normally share `prefix` exactly; if a decoder ever rewrote
/// earlier text, fall back to the longest common prefix (never slicing inside a character).
fn new_suffix<'a>(prefix: &str, full: &'a str) -> &'a str {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest;
    }
    let common = prefix
        .char_indices()
        .zip(full.chars())
        .find(|((_, a), b)| a != b)
        .map_or(prefix.len().min(full.len()), |((i, _), _)| i);
    // `common` is a char boundary of `prefix`, and `full` agrees with it up to there.
    full.get(common..).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::new_suffix;

    #[test]
    fn suffix_cases() {
        assert_eq!(new_suffix("ab", "abc"), "c");
        assert_eq!(new_suffix("", "x"), "x");
        assert_eq!(new_suffix("ab\u{FFFD}", "ab中"), "中");
        assert_eq!(new_suffix("abc", "ab"), "");
    }
}
