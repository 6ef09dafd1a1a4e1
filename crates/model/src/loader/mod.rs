//! Loaders: GGUF, Hugging Face safetensors + config.json, llama2.c checkpoints.
//!
//! [`load_model`] detects the format by content (GGUF magic, a directory or file with
//! `config.json`, a llama2.c header whose implied size matches the file) and returns the
//! config, the weights under GGUF names (see `weights.rs`), the tokenizer, the chat
//! template and generation defaults. [`load_model_parts`] does the same without
//! building the tokenizer (it says where the tokenizer would come from).

pub mod gguf;
pub mod gguf_config;
pub mod gguf_value;
pub mod gguf_writer;
pub mod hf_config;
pub mod info;
pub mod llama2c;
pub mod safetensors;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use gguf::{GgufFile, GgufTensorInfo};
pub use gguf_value::{GgufMetadata, GgufValue};
pub use gguf_writer::GgufWriter;
pub use info::ModelSummary;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightStore;

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// A tokenizer to use instead of the model's own: `tokenizer.json` (or a directory
    /// holding one), a llama2.c `tokenizer.bin`, or a GGUF file's embedded vocabulary.
    pub tokenizer_path: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf { version: u32 },
    SafeTensors,
    Llama2c,
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelFormat::Gguf { version } => write!(f, "GGUF v{version}"),
            ModelFormat::SafeTensors => f.write_str("safetensors"),
            ModelFormat::Llama2c => f.write_str("llama2.c"),
        }
    }
}

/// Sampling defaults the model ships with (Hugging Face `generation_config.json`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    /// Ids that end generation (after loading: also every one the tokenizer knows).
    pub eos_token_ids: Vec<u32>,
}

pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: WeightStore,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub generation: GenerationDefaults,
    pub format: ModelFormat,
    pub path: PathBuf,
    /// dtype name -> number of tensors, for `sluice info`
    pub quant_mix: BTreeMap<String, usize>,
    /// GGUF metadata (empty for other formats), for `sluice info`
    pub metadata: GgufMetadata,
}

/// Where a model's tokenizer comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    /// The `tokenizer.ggml.*` keys of the model's own GGUF metadata.
    GgufMetadata,
    /// Another GGUF file's embedded vocabulary.
    GgufFile(PathBuf),
    HfJson {
        tokenizer_json: PathBuf,
        tokenizer_config: Option<PathBuf>,
    },
    Llama2c(PathBuf),
    /// None found; says what was looked for.
    Missing(String),
}

/// A loaded model short of its tokenizer.
pub struct ModelParts {
    pub config: ModelConfig,
    pub weights: WeightStore,
    pub tokenizer_source: TokenizerSource,
    pub chat_template: Option<String>,
    pub generation: GenerationDefaults,
    pub format: ModelFormat,
    /// The model file, or the directory of a Hugging Face model.
    pub path: PathBuf,
    pub metadata: GgufMetadata,
}

impl ModelParts {
    pub fn quant_mix(&self) -> BTreeMap<String, usize> {
        quant_mix(&self.weights)
    }
}

/// Tensors per dtype name.
pub fn quant_mix(weights: &WeightStore) -> BTreeMap<String, usize> {
    let mut mix = BTreeMap::new();
    for (_, t) in weights.iter() {
        *mix.entry(t.dtype().name().to_string()).or_insert(0) += 1;
    }
    mix
}

/// Loads a model (GGUF file, Hugging Face directory or file in one, llama2.c checkpoint
/// or a directory holding one) with its tokenizer.
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let parts = load_model_parts(path, opts)?;
    let mut tokenizer = match &parts.tokenizer_source {
        TokenizerSource::GgufMetadata => Tokenizer::from_gguf(&parts.metadata)?,
        TokenizerSource::GgufFile(p) => Tokenizer::from_gguf(&GgufFile::open(p)?.metadata)?,
        TokenizerSource::HfJson {
            tokenizer_json,
            tokenizer_config,
        } => Tokenizer::from_hf_files(tokenizer_json, tokenizer_config.as_deref())?,
        TokenizerSource::Llama2c(p) => Tokenizer::from_llama2c(p)?,
        TokenizerSource::Missing(what) => {
            return Err(ModelError::Tokenizer(format!(
                "{}: {what}",
                parts.path.display()
            )))
        }
    };
    if tokenizer.vocab_size() > parts.config.vocab_size {
        return Err(ModelError::Tokenizer(format!(
            "{}: the tokenizer has {} tokens but the model's embedding only {} rows",
            parts.path.display(),
            tokenizer.vocab_size(),
            parts.config.vocab_size
        )));
    }
    tokenizer.add_eos_ids(&parts.generation.eos_token_ids);
    let mut generation = parts.generation;
    for &id in tokenizer.eos_ids() {
        if !generation.eos_token_ids.contains(&id) {
            generation.eos_token_ids.push(id);
        }
    }
    let chat_template = parts
        .chat_template
        .or_else(|| tokenizer.chat_template().map(str::to_string));
    let quant_mix = quant_mix(&parts.weights);
    Ok(LoadedModel {
        config: parts.config,
        weights: parts.weights,
        tokenizer,
        chat_template,
        generation,
        format: parts.format,
        path: parts.path,
        quant_mix,
        metadata: parts.metadata,
    })
}

/// Detects the format and loads config, weights and metadata; the tokenizer is only
/// located (see [`TokenizerSource`]).
pub fn load_model_parts(path: &Path, opts: &LoadOptions) -> Result<ModelParts> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    let mut parts = if meta.is_dir() {
        load_dir(path)?
    } else {
        load_file(path, meta.len())?
    };
    if let Some(tok) = &opts.tokenizer_path {
        parts.tokenizer_source = tokenizer_override(tok)?;
    }
    Ok(parts)
}

fn load_dir(dir: &Path) -> Result<ModelParts> {
    if let Some(hf) = safetensors::hf_dir(dir) {
        return load_hf_parts(&hf);
    }
    if let Some(found) = llama2c::find_in_dir(dir)? {
        let mut parts = load_llama2c_parts(&found.checkpoint)?;
        if let Some(tok) = found.tokenizer {
            parts.tokenizer_source = TokenizerSource::Llama2c(tok);
        }
        return Ok(parts);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => load_gguf_parts(one),
        [] => Err(ModelError::format(
            dir,
            "no model found: looked for config.json (Hugging Face), a .gguf file and a llama2.c .bin checkpoint",
        )),
        _ => Err(ModelError::format(
            dir,
            format!("{} .gguf files; name the one to load", ggufs.len()),
        )),
    }
}

fn load_file(path: &Path, len: u64) -> Result<ModelParts> {
    let (head, _) = llama2c::read_head(path)
        .ok_or_else(|| ModelError::format(path, "cannot read the file's first bytes"))?;
    if gguf::is_gguf(&head) {
        return load_gguf_parts(path);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == safetensors::CONFIG_FILE
        || name.ends_with(".safetensors")
        || name.ends_with(".safetensors.index.json")
    {
        let dir = safetensors::hf_dir(path).ok_or_else(|| {
            ModelError::format(
                path,
                "no config.json beside this file (a Hugging Face model needs one)",
            )
        })?;
        return load_hf_parts(&dir);
    }
    match llama2c::parse_header(&head) {
        Ok(_) => load_llama2c_parts(path),
        Err(why) => Err(ModelError::format(
            path,
            format!(
                "unrecognized model format ({len} bytes): not GGUF (no \"GGUF\" magic), not a Hugging Face config/safetensors file, not a llama2.c checkpoint ({why})"
            ),
        )),
    }
}

fn load_gguf_parts(path: &Path) -> Result<ModelParts> {
    let g = GgufFile::open(path)?;
    let mut config = gguf_config::config_from_gguf(&g)?;
    let weights = gguf_config::load_gguf_weights(&g, &mut config)?;
    let mut eos = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = g.get_u64(key).and_then(|v| u32::try_from(v).ok()) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    let tokenizer_source = if g.get("tokenizer.ggml.model").is_some() {
        TokenizerSource::GgufMetadata
    } else {
        TokenizerSource::Missing(
            "this GGUF file has no embedded tokenizer (no tokenizer.ggml.model key); pass a tokenizer path".into(),
        )
    };
    let chat_template = g.get_str("tokenizer.chat_template").map(str::to_string);
    let format = ModelFormat::Gguf { version: g.version };
    Ok(ModelParts {
        config,
        weights,
        tokenizer_source,
        chat_template,
        generation: GenerationDefaults {
            eos_token_ids: eos,
            ..GenerationDefaults::default()
        },
        format,
        path: path.to_path_buf(),
        metadata: g.metadata,
    })
}

fn load_hf_parts(dir: &Path) -> Result<ModelParts> {
    let (hf, weights) = safetensors::load_hf(dir)?;
    let mut generation = GenerationDefaults::default();
    let gen_path = dir.join("generation_config.json");
    if gen_path.is_file() {
        generation =
            hf_config::parse_generation_config(&gen_path, &hf_config::read_json(&gen_path)?)?;
    }
    if generation.eos_token_ids.is_empty() {
        generation.eos_token_ids = hf.eos_token_ids.clone();
    }
    let tok_config = dir.join("tokenizer_config.json");
    let tok_config = tok_config.is_file().then_some(tok_config);
    let mut chat_template = match &tok_config {
        Some(p) => hf_config::chat_template_from_tokenizer_config(p, &hf_config::read_json(p)?)?,
        None => None,
    };
    if chat_template.is_none() {
        chat_template = chat_template_file(dir)?;
    }
    let tokenizer_json = dir.join("tokenizer.json");
    let tokenizer_source = if tokenizer_json.is_file() {
        TokenizerSource::HfJson {
            tokenizer_json,
            tokenizer_config: tok_config,
        }
    } else {
        TokenizerSource::Missing(format!(
            "no tokenizer.json in {}; pass a tokenizer path",
            dir.display()
        ))
    };
    Ok(ModelParts {
        config: hf.config,
        weights,
        tokenizer_source,
        chat_template,
        generation,
        format: ModelFormat::SafeTensors,
        path: dir.to_path_buf(),
        metadata: GgufMetadata::new(),
    })
}

/// Newer transformers save the template beside the tokenizer config instead of in it.
fn chat_template_file(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| ModelError::io(&jinja, e));
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        return hf_config::chat_template_from_tokenizer_config(
            &json,
            &hf_config::read_json(&json)?,
        );
    }
    Ok(None)
}

fn load_llama2c_parts(path: &Path) -> Result<ModelParts> {
    let (config, weights) = llama2c::load_llama2c(path)?;
    let tokenizer_source = match llama2c::find_tokenizer_beside(path)? {
        Some(t) => TokenizerSource::Llama2c(t),
        None => TokenizerSource::Missing(format!(
            "no llama2.c tokenizer beside the checkpoint (looked for tokenizer.bin and tok*.bin holding {} tokens); pass a tokenizer path",
            config.vocab_size
        )),
    };
    Ok(ModelParts {
        config,
        weights,
        tokenizer_source,
        chat_template: None,
        generation: GenerationDefaults {
            // run.c stops when the model emits BOS (id 1), which delimits the training
            // stories; the tokenizer adds EOS (id 2) to this list.
            eos_token_ids: vec![1],
            ..GenerationDefaults::default()
        },
        format: ModelFormat::Llama2c,
        path: path.to_path_buf(),
        metadata: GgufMetadata::new(),
    })
}

/// The tokenizer named by `--tokenizer`: recognised by content.
fn tokenizer_override(path: &Path) -> Result<TokenizerSource> {
    if path.is_dir() {
        let json = path.join("tokenizer.json");
        if !json.is_file() {
            return Err(ModelError::Tokenizer(format!(
                "{}: no tokenizer.json in this directory",
                path.display()
            )));
        }
        let config = path.join("tokenizer_config.json");
        return Ok(TokenizerSource::HfJson {
            tokenizer_json: json,
            tokenizer_config: config.is_file().then_some(config),
        });
    }
    let (head, len) = llama2c::read_head(path).ok_or_else(|| {
        ModelError::Tokenizer(format!("{}: cannot read the file", path.display()))
    })?;
    if gguf::is_gguf(&head) {
        return Ok(TokenizerSource::GgufFile(path.to_path_buf()));
    }
    // tokenizer.json files reach tens of MB; anything far larger is not a tokenizer.
    if len > 1 << 30 {
        return Err(ModelError::Tokenizer(format!(
            "{}: a {len}-byte file is not a tokenizer",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let config = path.with_file_name("tokenizer_config.json");
        return Ok(TokenizerSource::HfJson {
            tokenizer_json: path.to_path_buf(),
            tokenizer_config: config.is_file().then_some(config),
        });
    }
    if llama2c::is_tokenizer(&bytes, None) {
        return Ok(TokenizerSource::Llama2c(path.to_path_buf()));
    }
    Err(ModelError::Tokenizer(format!(
        "{}: not a tokenizer.json, a llama2.c tokenizer.bin or a GGUF file",
        path.display()
    )))
}
