//! A stand-in vocabulary for models with random weights (`--random-weights PRESET`):
//! token `i` is the word `t{i}`, words split on whitespace, no special tokens. It lets
//! the engine, the server and the benchmarks run real shapes where no checkpoint (and
//! so no vocabulary) exists, e.g. on a GPU machine that cannot download anything.

use std::collections::{HashMap, HashSet};

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;

use super::{tok_err, AutoToken, Parts, Tokenizer};
use crate::error::Result;

pub fn synthetic(vocab_size: usize) -> Result<Tokenizer> {
    if vocab_size == 0 {
        return Err(tok_err("a synthetic vocabulary needs at least one token"));
    }
    let vocab: HashMap<String, u32> = (0..vocab_size as u32)
        .map(|i| (format!("t{i}"), i))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("t0".into())
        .build()
        .map_err(tok_err)?;
    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(WhitespaceSplit));
    Tokenizer::assemble(Parts {
        inner,
        vocab_size,
        bos_id: None,
        eos_id: None,
        extra_eos: Vec::new(),
        special: HashSet::new(),
        auto_bos: AutoToken::AsInner,
        auto_eos: AutoToken::AsInner,
        chat_template: None,
        source: "synthetic (random weights)",
        spm_decoder: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_to_ids() {
        let t = synthetic(100).unwrap();
        assert_eq!(t.encode("t5 t99 t0", true).unwrap(), vec![5, 99, 0]);
        assert_eq!(t.decode(&[5, 99], false).unwrap(), "t5 t99");
        assert!(t.eos_ids().is_empty());
        assert!(synthetic(0).is_err());
    }
}
