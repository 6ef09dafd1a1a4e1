//! One HTTP request's sequences in flight: submission, the merged stream of their deltas,
//! per-choice bookkeeping (finish reason, token counts, log-probabilities) and usage.
//!
//! `Generation` owns every sequence's delta receiver (inside `events`) and the admission
//! permit. Dropping it (client gone, response body dropped) drops the receivers, so the
//! engine aborts those sequences and frees their blocks on its next step, and returns the
//! permit.

use std::sync::Arc;

use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use sluice_engine::sampling::SampledToken;
use sluice_engine::{EngineHandle, EngineRequest, FinishReason as EngineFinish, RequestOutput};
use sluice_model::tokenizer::Tokenizer;
use sluice_protocol::{ApiError, FinishReason, PromptTokensDetails, Usage};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::from_engine;
use crate::validate::ValidatedRequest;

/// What one sequence's receiver produced.
enum SeqEvent {
    Output(usize, RequestOutput),
    /// The engine dropped the sender (after the final output, or on failure).
    Closed(usize),
}

/// One generated token's log-probability, with the strings clients see.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// Most likely alternatives, most likely first.
    pub top: Vec<(String, Vec<u8>, f32)>,
    /// Character offset of the token in the choice's text (completions `text_offset`).
    pub text_offset: usize,
}

/// What one engine output means for one choice.
#[derive(Debug)]
pub struct Delta {
    pub index: u32,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
}

struct Choice {
    prompt: usize,
    finish: Option<FinishReason>,
    completion_tokens: usize,
    cached_tokens: usize,
    /// Characters of token strings so far (echo included), for `text_offset`.
    token_chars: usize,
}

/// The sequences of one request.
pub struct Generation {
    events: SelectAll<BoxStream<'static, SeqEvent>>,
    choices: Vec<Choice>,
    /// `[num_prompts]` prompt lengths.
    prompt_tokens: Vec<usize>,
    /// `[num_prompts]` echo text, if any.
    echo: Vec<Option<String>>,
    tokenizer: Arc<Tokenizer>,
    byte_level: bool,
    logprobs: Option<usize>,
    _permit: OwnedSemaphorePermit,
}

fn receiver_stream(
    index: usize,
    rx: tokio::sync::mpsc::UnboundedReceiver<RequestOutput>,
) -> BoxStream<'static, SeqEvent> {
    stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(o) => Some((SeqEvent::Output(index, o), Some(rx))),
            None => Some((SeqEvent::Closed(index), None)),
        }
    })
    .boxed()
}

impl Generation {
    /// Submits every sequence (prompts x n) at once, so the engine takes them in one
    /// drain of its inbox. If any is rejected, the others are dropped (and aborted).
    pub async fn start(
        engine: &EngineHandle,
        tokenizer: Arc<Tokenizer>,
        req: &ValidatedRequest,
        permit: OwnedSemaphorePermit,
    ) -> Result<Generation, ApiError> {
        let n = req.n;
        let mut choices = Vec::with_capacity(req.num_sequences());
        let mut submits = Vec::with_capacity(req.num_sequences());
        for (p, prompt) in req.prompts.iter().enumerate() {
            for i in 0..n {
                let index = p * n + i;
                let echo_chars = prompt.echo_text.as_deref().map_or(0, |t| t.chars().count());
                choices.push(Choice {
                    prompt: p,
                    // echo with max_tokens 0: the prompt is the whole answer.
                    finish: (prompt.max_tokens == 0).then_some(FinishReason::Length),
                    completion_tokens: 0,
                    cached_tokens: 0,
                    token_chars: echo_chars,
                });
                if prompt.max_tokens == 0 {
                    continue;
                }
                let mut params = req.params.clone();
                params.max_tokens = prompt.max_tokens;
                // Same seed for n choices would give n identical answers.
                params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
                let request = EngineRequest {
                    prompt_token_ids: prompt.token_ids.clone(),
                    params,
                    cache_salt: None,
                };
                submits.push(async move { (index, engine.submit(request).await) });
            }
        }
        let mut events = SelectAll::new();
        for (index, r) in futures_util::future::join_all(submits).await {
            let s = r.map_err(|e| from_engine(&e))?;
            events.push(receiver_stream(index, s.outputs));
        }
        let byte_level = is_byte_level(&tokenizer);
        Ok(Generation {
            events,
            choices,
            prompt_tokens: req.prompts.iter().map(|p| p.token_ids.len()).collect(),
            echo: req.prompts.iter().map(|p| p.echo_text.clone()).collect(),
            tokenizer,
            byte_level,
            logprobs: req.logprobs,
            _permit: permit,
        })
    }

    pub fn logprobs_requested(&self) -> bool {
        self.logprobs.is_some()
    }

    pub fn num_choices(&self) -> usize {
        self.choices.len()
    }

    /// Echo text of a choice's prompt.
    pub fn echo_of(&self, index: usize) -> Option<&str> {
        self.choices
            .get(index)
            .and_then(|c| self.echo.get(c.prompt))
            .and_then(|e| e.as_deref())
    }

    /// Finish reason of a choice that finished without generating (echo only).
    pub fn finish_of(&self, index: usize) -> Option<FinishReason> {
        self.choices.get(index).and_then(|c| c.finish)
    }

    fn all_finished(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// The next delta of any choice; `None` when every choice has finished. An engine
    /// failure mid-generation is an error.
    pub async fn next_delta(&mut self) -> Option<Result<Delta, ApiError>> {
        loop {
            if self.all_finished() {
                return None;
            }
            match self.events.next().await {
                Some(SeqEvent::Output(index, out)) => return Some(self.apply(index, out)),
                Some(SeqEvent::Closed(index)) => {
                    if self.choices.get(index).is_some_and(|c| c.finish.is_none()) {
                        return Some(Err(ApiError::server_error(
                            "the engine stopped this request before it finished (see the server log)",
                        )));
                    }
                }
                None => {
                    return Some(Err(ApiError::server_error(
                        "generation ended with unfinished choices",
                    )))
                }
            }
        }
    }

    fn apply(&mut self, index: usize, out: RequestOutput) -> Result<Delta, ApiError> {
        let finish = match out.finished {
            None => None,
            Some(EngineFinish::Stop) => Some(FinishReason::Stop),
            Some(EngineFinish::Length) => Some(FinishReason::Length),
            Some(EngineFinish::Abort) => Some(FinishReason::Abort),
            Some(EngineFinish::Error) => {
                return Err(ApiError::server_error("the engine failed on this request"));
            }
        };
        let mut logprobs = Vec::new();
        if self.logprobs.is_some() {
            let mut chars = self.choices.get(index).map_or(0, |c| c.token_chars);
            for t in &out.logprobs {
                let lp = self.token_logprob(t, chars);
                chars += lp.token.chars().count();
                logprobs.push(lp);
            }
            if let Some(c) = self.choices.get_mut(index) {
                c.token_chars = chars;
            }
        }
        let c = self
            .choices
            .get_mut(index)
            .ok_or_else(|| ApiError::server_error(format!("output for unknown choice {index}")))?;
        c.completion_tokens = out.num_output_tokens;
        c.cached_tokens = out.num_cached_tokens;
        c.finish = finish;
        Ok(Delta {
            index: index as u32,
            text: out.new_text,
            logprobs,
            finish,
        })
    }

    fn token_logprob(&self, t: &SampledToken, text_offset: usize) -> TokenLogprob {
        let (token, bytes) = self.token_text(t.id);
        let top = t
            .top_logprobs
            .iter()
            .map(|&(id, lp)| {
                let (s, b) = self.token_text(id);
                (s, b, finite_logprob(lp))
            })
            .collect();
        TokenLogprob {
            token,
            bytes,
            logprob: finite_logprob(t.logprob.unwrap_or(f32::NEG_INFINITY)),
            top,
            text_offset,
        }
    }

    /// A token's text and exact bytes (a byte-level or byte-fallback token may be part of
    /// a UTF-8 character; its `token` string then holds U+FFFD and `bytes` the truth).
    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = token_bytes(&self.tokenizer, self.byte_level, id);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// Token accounting: each prompt counted once, every choice's completion tokens.
    pub fn usage(&self) -> Usage {
        let prompt: usize = self.prompt_tokens.iter().sum();
        let completion: usize = self.choices.iter().map(|c| c.completion_tokens).sum();
        // Cached prompt tokens, per prompt (its choices share one prompt): the most any
        // of its sequences got from the prefix cache.
        let mut cached = vec![0usize; self.prompt_tokens.len()];
        for c in &self.choices {
            if let Some(x) = cached.get_mut(c.prompt) {
                *x = (*x).max(c.cached_tokens);
            }
        }
        let mut u = Usage::new(prompt as u64, completion as u64);
        u.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: cached.iter().sum::<usize>() as u64,
        });
        u
    }
}

/// JSON has no infinities (serde_json writes null); OpenAI reports -9999 for "impossible".
fn finite_logprob(lp: f32) -> f32 {
    if lp.is_finite() {
        lp.max(-9999.0)
    } else {
        -9999.0
    }
}

/// Whether tokens are spelt in GPT-2's byte-to-unicode alphabet.
fn is_byte_level(tok: &Tokenizer) -> bool {
    use tokenizers::DecoderWrapper;
    tok.source() == "gguf-gpt2"
        || matches!(
            tok.inner().get_decoder(),
            Some(DecoderWrapper::ByteLevel(_))
        )
}

/// GPT-2's `bytes_to_unicode` inverted: printable stand-in char -> byte.
fn unicode_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    // Bytes that map to themselves: '!'..='~', '¡'..='¬', '®'..='ÿ'.
    if (0x21..=0x7E).contains(&cp) || (0xA1..=0xAC).contains(&cp) || (0xAE..=0xFF).contains(&cp) {
        return Some(cp as u8);
    }
    // The other 68 bytes, in increasing order, map to 256, 257, ...
    if (256..256 + 68).contains(&cp) {
        let k = cp - 256;
        let mut seen = 0u32;
        for b in 0u32..=255 {
            let printable = (0x21..=0x7E).contains(&b)
                || (0xA1..=0xAC).contains(&b)
                || (0xAE..=0xFF).contains(&b);
            if !printable {
                if seen == k {
                    return Some(b as u8);
                }
                seen += 1;
            }
        }
    }
    None
}

/// The bytes a token stands for.
pub fn token_bytes(tok: &Tokenizer, byte_level: bool, id: u32) -> Vec<u8> {
    let Some(piece) = tok.id_to_token(id) else {
        return Vec::new();
    };
    // SentencePiece byte fallback: "<0xAB>".
    if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
        if let Ok(b) = u8::from_str_radix(&piece[3..5], 16) {
            return vec![b];
        }
    }
    if tok.is_special(id) {
        return piece.into_bytes();
    }
    if byte_level {
        let mapped: Option<Vec<u8>> = piece.chars().map(unicode_to_byte).collect();
        if let Some(b) = mapped {
            return b;
        }
        return piece.into_bytes();
    }
    // SentencePiece marks spaces with U+2581.
    piece.replace('\u{2581}', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's table, built the way `bytes_to_unicode` in openai/gpt-2 encoder.py does.
    fn bytes_to_unicode() -> Vec<(u8, char)> {
        let mut bs: Vec<u32> = (0x21..=0x7E)
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        bs.iter()
            .zip(&cs)
            .map(|(&b, &c)| (b as u8, char::from_u32(c).expect("valid code point")))
            .collect()
    }

    #[test]
    fn byte_level_alphabet_inverts() {
        let table = bytes_to_unicode();
        assert_eq!(table.len(), 256);
        for (b, c) in table {
            assert_eq!(
                unicode_to_byte(c),
                Some(b),
                "char {c:?} (U+{:04X})",
                c as u32
            );
        }
        // 'Ġ' is the space, 'Ċ' the newline.
        assert_eq!(unicode_to_byte('Ġ'), Some(b' '));
        assert_eq!(unicode_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(unicode_to_byte('中'), None);
    }

    #[test]
    fn logprobs_stay_finite() {
        assert_eq!(finite_logprob(f32::NEG_INFINITY), -9999.0);
        assert_eq!(finite_logprob(f32::NAN), -9999.0);
        assert_eq!(finite_logprob(-1.5), -1.5);
        assert_eq!(finite_logprob(-1e6), -9999.0);
    }
}
