//! Tokenizers: tokenizer.json, GGUF-embedded vocabularies, llama2.c tokenizer.bin.
//! (Interface fixed here; implementations being written.)
