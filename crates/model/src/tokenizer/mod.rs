//! Tokenizers: tokenizer.json, GGUF-embedded vocabularies, llama2.c tokenizer.bin.
