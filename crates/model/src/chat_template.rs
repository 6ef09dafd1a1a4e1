//! Chat templates (minijinja, rendered the way Hugging Face renders them).
