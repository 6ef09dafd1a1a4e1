//! Loaders: GGUF, Hugging Face safetensors + config.json, llama2.c checkpoints.
