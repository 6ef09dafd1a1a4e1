//! Hugging Face layout: tiny models written by the test (config.json + safetensors,
//! single and sharded), name mapping, dtypes, Gemma's +1 norms, and bad inputs.

mod loader_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use loader_common::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use sluice_backend::{DType, RopeStyle};
use sluice_model::config::{Arch, FfnActivation, Llama3RopeScaling, RopeScaling};
use sluice_model::loader::{
    load_model, load_model_parts, LoadOptions, ModelFormat, TokenizerSource,
};

/// HF tensor names and shapes of a tiny model.
fn hf_tensors(model_type: &str, d: &Dims, tied: bool) -> Vec<(String, Vec<usize>)> {
    let (h, f, v) = (d.hidden, d.ffn, d.vocab);
    let (q, kv) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let gemma = model_type.starts_with("gemma3");
    let mut out = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, h]),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !tied {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    for i in 0..d.layers {
        let mut t = |n: &str, s: Vec<usize>| out.push((format!("model.layers.{i}.{n}"), s));
        t("input_layernorm.weight", vec![h]);
        t("self_attn.q_proj.weight", vec![q, h]);
        t("self_attn.k_proj.weight", vec![kv, h]);
        t("self_attn.v_proj.weight", vec![kv, h]);
        t("self_attn.o_proj.weight", vec![h, q]);
        if model_type == "qwen2" {
            t("self_attn.q_proj.bias", vec![q]);
            t("self_attn.k_proj.bias", vec![kv]);
            t("self_attn.v_proj.bias", vec![kv]);
        }
        t("post_attention_layernorm.weight", vec![h]);
        if gemma {
            t("self_attn.q_norm.weight", vec![d.head_dim]);
            t("self_attn.k_norm.weight", vec![d.head_dim]);
            t("pre_feedforward_layernorm.weight", vec![h]);
            t("post_feedforward_layernorm.weight", vec![h]);
        }
        t("mlp.gate_proj.weight", vec![f, h]);
        t("mlp.up_proj.weight", vec![f, h]);
        t("mlp.down_proj.weight", vec![h, f]);
    }
    out
}

fn config(model_type: &str, d: &Dims, tied: bool) -> Value {
    let mut c = json!({
        "model_type": model_type,
        "hidden_size": d.hidden,
        "intermediate_size": d.ffn,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 50000.0,
        "vocab_size": d.vocab,
        "tie_word_embeddings": tied,
        "eos_token_id": 2,
    });
    if model_type == "gemma3_text" {
        let m = c.as_object_mut().unwrap();
        m.insert("query_pre_attn_scalar".into(), json!(64));
        m.insert("sliding_window".into(), json!(32));
        m.insert("rope_local_base_freq".into(), json!(10000.0));
        m.insert("rope_theta".into(), json!(1000000.0));
        m.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        let types: Vec<&str> = (0..d.layers)
            .map(|i| {
                if (i + 1) % 3 == 0 {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect();
        m.insert("layer_types".into(), json!(types));
    }
    c
}

/// Values of every tensor, by HF name (fixed seed).
type Values = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn values(tensors: &[(String, Vec<usize>)], seed: u64) -> Values {
    let mut r = rng(seed);
    tensors
        .iter()
        .map(|(n, s)| (n.clone(), (s.clone(), rand_f32(&mut r, s.iter().product()))))
        .collect()
}

fn encode(v: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => f32_bytes(v),
        Dtype::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        Dtype::BF16 => v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// The value a reader sees after the dtype round trip.
fn rounded(x: f32, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::F16 => f16::from_f32(x).to_f32(),
        Dtype::BF16 => bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

fn write_safetensors(path: &Path, vals: &Values, names: &[&String], dtype: Dtype) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let (s, v) = &vals[*n];
            (n.to_string(), s.clone(), encode(v, dtype))
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

struct Fixture {
    dir: tempfile::TempDir,
    vals: Values,
}

impl Fixture {
    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// A model directory: config.json + model.safetensors (or `shards` shards + index).
fn fixture(model_type: &str, d: &Dims, tied: bool, dtype: Dtype, shards: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tensors = hf_tensors(model_type, d, tied);
    let vals = values(&tensors, 42);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(&config(model_type, d, tied)).unwrap(),
    )
    .unwrap();
    let names: Vec<&String> = vals.keys().collect();
    if shards <= 1 {
        write_safetensors(&dir.path().join("model.safetensors"), &vals, &names, dtype);
    } else {
        let mut map = serde_json::Map::new();
        let per = names.len().div_ceil(shards);
        for (i, chunk) in names.chunks(per).enumerate() {
            let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
            write_safetensors(&dir.path().join(&file), &vals, chunk, dtype);
            for n in chunk {
                map.insert(n.to_string(), json!(file));
            }
        }
        let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
    }
    Fixture { dir, vals }
}

fn f32_values(t: &sluice_backend::Tensor) -> Vec<f32> {
    let b = t.cpu_bytes().unwrap();
    match t.dtype() {
        DType::F32 => bytes_f32(b),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => panic!("{other}"),
    }
}

/// Every HF tensor landed under its GGUF name with the same values (norms +1 for Gemma).
fn check_mapping(
    fx: &Fixture,
    model_type: &str,
    dtype: Dtype,
    weights: &sluice_model::WeightStore,
) {
    let gemma = model_type.starts_with("gemma3");
    let pairs = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        (
            "model.layers.1.input_layernorm.weight",
            "blk.1.attn_norm.weight",
        ),
        (
            "model.layers.1.self_attn.q_proj.weight",
            "blk.1.attn_q.weight",
        ),
        (
            "model.layers.1.self_attn.k_proj.weight",
            "blk.1.attn_k.weight",
        ),
        (
            "model.layers.1.self_attn.v_proj.weight",
            "blk.1.attn_v.weight",
        ),
        (
            "model.layers.1.self_attn.o_proj.weight",
            "blk.1.attn_output.weight",
        ),
        ("model.layers.1.self_attn.q_proj.bias", "blk.1.attn_q.bias"),
        ("model.layers.1.self_attn.k_proj.bias", "blk.1.attn_k.bias"),
        ("model.layers.1.self_attn.v_proj.bias", "blk.1.attn_v.bias"),
        (
            "model.layers.1.self_attn.q_norm.weight",
            "blk.1.attn_q_norm.weight",
        ),
        (
            "model.layers.1.self_attn.k_norm.weight",
            "blk.1.attn_k_norm.weight",
        ),
        (
            "model.layers.1.post_attention_layernorm.weight",
            if gemma {
                "blk.1.post_attention_norm.weight"
            } else {
                "blk.1.ffn_norm.weight"
            },
        ),
        (
            "model.layers.1.pre_feedforward_layernorm.weight",
            "blk.1.ffn_norm.weight",
        ),
        (
            "model.layers.1.post_feedforward_layernorm.weight",
            "blk.1.post_ffw_norm.weight",
        ),
        (
            "model.layers.1.mlp.gate_proj.weight",
            "blk.1.ffn_gate.weight",
        ),
        ("model.layers.1.mlp.up_proj.weight", "blk.1.ffn_up.weight"),
        (
            "model.layers.1.mlp.down_proj.weight",
            "blk.1.ffn_down.weight",
        ),
    ];
    let mut checked = 0;
    for (hf, gguf) in pairs {
        let Some((shape, want)) = fx.vals.get(hf) else {
            continue;
        };
        let t = weights
            .get(gguf)
            .unwrap_or_else(|_| panic!("{gguf} missing"));
        assert_eq!(t.shape(), shape.as_slice(), "{gguf}");
        let vector = shape.len() == 1;
        assert_eq!(t.dtype(), if vector { DType::F32 } else { t.dtype() });
        let plus = if gemma && gguf.ends_with("norm.weight") {
            1.0
        } else {
            0.0
        };
        let got = f32_values(t);
        for (g, w) in got.iter().zip(want) {
            assert_eq!(*g, rounded(*w, dtype) + plus, "{gguf}");
        }
        checked += 1;
    }
    assert!(checked >= 10);
    assert_eq!(weights.len(), fx.vals.len());
}

#[test]
fn llama_single_file_f32_by_dir_config_and_weights_path() {
    let d = Dims::tiny();
    let fx = fixture("llama", &d, false, Dtype::F32, 1);
    for p in [
        fx.path(),
        fx.path().join("config.json"),
        fx.path().join("model.safetensors"),
    ] {
        let parts = load_model_parts(&p, &LoadOptions::default()).unwrap();
        assert_eq!(parts.format, ModelFormat::SafeTensors);
        assert_eq!(parts.path, fx.path());
        let c = &parts.config;
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.n_layers,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.vocab_size
            ),
            (64, 96, 2, 4, 2, 16, 40)
        );
        assert_eq!(c.rope_style, RopeStyle::Neox);
        assert_eq!(
            (c.max_position, c.rope_theta, c.rms_eps),
            (512, 50000.0, 1e-6)
        );
        assert!(!c.tie_embeddings && !c.qkv_bias);
        assert_eq!(parts.generation.eos_token_ids, vec![2]);
        check_mapping(&fx, "llama", Dtype::F32, &parts.weights);
        // No tokenizer.json: located as missing, and load_model says what it looked for.
        assert!(matches!(
            parts.tokenizer_source,
            TokenizerSource::Missing(_)
        ));
    }
    let msg = err_text(load_model(&fx.path(), &LoadOptions::default()));
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn half_precision_matrices_stay_half_and_vectors_become_f32() {
    let d = Dims::tiny();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let fx = fixture("qwen2", &d, true, dtype, 1);
        let parts = load_model_parts(&fx.path(), &LoadOptions::default()).unwrap();
        assert!(parts.config.qkv_bias && parts.config.tie_embeddings);
        let want = if dtype == Dtype::F16 {
            DType::F16
        } else {
            DType::BF16
        };
        assert_eq!(
            parts.weights.get("blk.0.attn_q.weight").unwrap().dtype(),
            want
        );
        assert_eq!(
            parts.weights.get("blk.0.attn_q.bias").unwrap().dtype(),
            DType::F32
        );
        check_mapping(&fx, "qwen2", dtype, &parts.weights);
        let mix = parts.quant_mix();
        assert_eq!(mix.get(want.name()), Some(&(1 + 7 * d.layers)));
    }
}

#[test]
fn sharded_index() {
    let d = Dims::tiny();
    let fx = fixture("qwen2", &d, false, Dtype::BF16, 3);
    assert!(!fx.path().join("model.safetensors").exists());
    let parts = load_model_parts(&fx.path(), &LoadOptions::default()).unwrap();
    check_mapping(&fx, "qwen2", Dtype::BF16, &parts.weights);
    // The index path itself also names the model.
    let p = fx.path().join("model.safetensors.index.json");
    assert!(load_model_parts(&p, &LoadOptions::default()).is_ok());

    // An index entry whose tensor is not in its shard.
    let index_path = fx.path().join("model.safetensors.index.json");
    let mut index: Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    map.insert(
        "model.layers.0.mlp.up_proj.weight".into(),
        json!("model-00003-of-00003.safetensors"),
    );
    let first = map["model.embed_tokens.weight"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
    assert!(
        msg.contains("model.layers.0.mlp.up_proj.weight") && msg.contains("not there"),
        "{msg}"
    );

    // A missing shard file.
    std::fs::remove_file(fx.path().join(&first)).unwrap();
    let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
    assert!(msg.contains(&first), "{msg}");

    // A shard outside the directory.
    let map = index["weight_map"].as_object_mut().unwrap();
    map.insert(
        "model.norm.weight".into(),
        json!("../elsewhere.safetensors"),
    );
    std::fs::write(&index_path, index.to_string()).unwrap();
    let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
    assert_error(
        &msg,
        &index_path,
        &["../elsewhere.safetensors", "plain file name"],
    );
}

#[test]
fn gemma3_norms_get_plus_one_and_sandwich_names() {
    let d = Dims::tiny_gemma();
    for dtype in [Dtype::F32, Dtype::BF16] {
        let fx = fixture("gemma3_text", &d, true, dtype, 1);
        let parts = load_model_parts(&fx.path(), &LoadOptions::default()).unwrap();
        let c = &parts.config;
        assert_eq!(c.arch, Arch::Gemma3);
        assert_eq!(c.rope_style, RopeStyle::Neox);
        assert_eq!(c.activation, FfnActivation::GeluTanh);
        assert!(c.qk_norm && c.sandwich_norms && c.tie_embeddings);
        assert_eq!(c.attn_scale, Some(1.0 / 8.0));
        assert_eq!(c.embedding_scale, Some(8.0));
        assert_eq!(c.sliding_window, Some(32));
        assert_eq!(c.sliding_window_pattern, Some(3));
        assert_eq!(c.rope_local_theta, Some(10_000.0));
        assert_eq!(c.rope_theta, 1_000_000.0);
        check_mapping(&fx, "gemma3_text", dtype, &parts.weights);
    }
}

#[test]
fn multimodal_gemma3_checkpoint_uses_the_language_model() {
    let d = Dims::tiny_gemma();
    let fx = fixture("gemma3_text", &d, true, Dtype::F32, 1);
    // Rename to the multimodal layout (transformers >= 4.52) plus a vision tensor.
    let mut vals = Values::new();
    for (n, v) in &fx.vals {
        vals.insert(n.replacen("model.", "model.language_model.", 1), v.clone());
    }
    vals.insert(
        "model.vision_tower.patch.weight".into(),
        (vec![4, 4], vec![0.5; 16]),
    );
    let names: Vec<&String> = vals.keys().collect();
    write_safetensors(
        &fx.path().join("model.safetensors"),
        &vals,
        &names,
        Dtype::F32,
    );
    let text = config("gemma3_text", &d, true);
    let cfg =
        json!({"model_type": "gemma3", "text_config": text, "vision_config": {"hidden_size": 4}});
    std::fs::write(fx.path().join("config.json"), cfg.to_string()).unwrap();
    let parts = load_model_parts(&fx.path(), &LoadOptions::default()).unwrap();
    assert_eq!(parts.config.arch, Arch::Gemma3);
    check_mapping(&fx, "gemma3_text", Dtype::F32, &parts.weights);
}

#[test]
fn misaligned_data_is_copied_into_aligned_memory() {
    // A hand-written safetensors file whose header length (13 + padding) puts the data
    // at an odd offset.
    let d = Dims::tiny();
    let fx = fixture("llama", &d, true, Dtype::F32, 1);
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (n, (shape, v)) in &fx.vals {
        let b = f32_bytes(v);
        header.insert(
            n.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [data.len(), data.len() + b.len()]}),
        );
        data.extend(b);
    }
    let mut h = Value::Object(header).to_string();
    while (8 + h.len()) % 4 != 1 {
        h.push(' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h.as_bytes());
    file.extend(&data);
    std::fs::write(fx.path().join("model.safetensors"), file).unwrap();
    let parts = load_model_parts(&fx.path(), &LoadOptions::default()).unwrap();
    check_mapping(&fx, "llama", Dtype::F32, &parts.weights);
    let t = parts.weights.get("blk.0.attn_q.weight").unwrap();
    assert_eq!(t.as_f32().unwrap().len(), 64 * 64, "aligned f32 view works");
    assert!(!format!("{t:?}").contains("mapped"), "{t:?}");

    // Aligned files stay mapped.
    let fx = fixture("llama", &d, true, Dtype::F32, 1);
    let parts = load_model_parts(&fx.path(), &LoadOptions::default()).unwrap();
    let mapped = parts
        .weights
        .iter()
        .filter(|(_, t)| format!("{t:?}").contains("mapped"))
        .count();
    assert!(mapped > 0);
}

#[test]
fn config_rope_scaling_and_sliding_windows() {
    let d = Dims::tiny();
    let fx = fixture("llama", &d, true, Dtype::F32, 1);
    let cfg_path = fx.path().join("config.json");
    let set = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = config("llama", &d, true);
        edit(c.as_object_mut().unwrap());
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        load_model_parts(&fx.path(), &LoadOptions::default())
    };
    let c = set(&|m| {
        m.insert(
            "rope_scaling".into(),
            json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        );
    })
    .unwrap()
    .config;
    assert_eq!(
        c.rope_scaling,
        RopeScaling::Llama3(Llama3RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192
        })
    );
    let c = set(&|m| {
        m.insert(
            "rope_scaling".into(),
            json!({"type": "linear", "factor": 2.0}),
        );
    })
    .unwrap()
    .config;
    assert_eq!(c.rope_scaling, RopeScaling::Linear(2.0));
    let msg = err_text(set(&|m| {
        m.insert(
            "rope_scaling".into(),
            json!({"rope_type": "dynamic", "factor": 2.0}),
        );
    }));
    assert_error(&msg, &cfg_path, &["dynamic"]);

    let c = set(&|m| {
        m.insert("model_type".into(), json!("mistral"));
        m.insert("sliding_window".into(), json!(128));
    })
    .unwrap()
    .config;
    assert_eq!(
        (c.sliding_window, c.sliding_window_pattern),
        (Some(128), None)
    );
    assert_eq!(c.layer_window(0), Some(128));
    let c = set(&|m| {
        m.insert("model_type".into(), json!("mistral"));
        m.insert("sliding_window".into(), Value::Null);
    })
    .unwrap()
    .config;
    assert_eq!(c.sliding_window, None);
}

#[test]
fn missing_config_fields_are_named() {
    let d = Dims::tiny();
    let fx = fixture("llama", &d, true, Dtype::F32, 1);
    let cfg_path = fx.path().join("config.json");
    for field in [
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
    ] {
        let mut c = config("llama", &d, true);
        c.as_object_mut().unwrap().remove(field);
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
        assert_error(&msg, &cfg_path, &["missing required field", field]);
    }
    let mut c = config("llama", &d, true);
    c["hidden_size"] = json!("sixty-four");
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
    assert_error(&msg, &cfg_path, &["hidden_size", "integer"]);

    c = config("phi3", &d, true);
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
    assert_error(&msg, &cfg_path, &["phi3", "not supported"]);

    std::fs::write(&cfg_path, "{ not json").unwrap();
    let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
    assert_error(&msg, &cfg_path, &["invalid JSON"]);

    let mut c = config("llama", &d, true);
    c["vocab_size"] = json!(41);
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
    assert_error(&msg, &cfg_path, &["vocab_size 41", "40"]);
}

/// Rewrites the fixture's weights after `edit` changes the tensor table.
fn with_tensors_fixture(edit: impl FnOnce(&mut Values)) -> Fixture {
    let d = Dims::tiny();
    let mut fx = fixture("llama", &d, false, Dtype::F32, 1);
    edit(&mut fx.vals);
    let names: Vec<&String> = fx.vals.keys().collect();
    write_safetensors(
        &fx.path().join("model.safetensors"),
        &fx.vals,
        &names,
        Dtype::F32,
    );
    fx
}

/// The load error after `edit`.
fn with_tensors(edit: impl FnOnce(&mut Values)) -> (String, Fixture) {
    let fx = with_tensors_fixture(edit);
    (
        err_text(load_model_parts(&fx.path(), &LoadOptions::default())),
        fx,
    )
}

#[test]
fn bad_tensor_tables() {
    let (msg, _fx) = with_tensors(|v| {
        v.remove("model.layers.1.mlp.up_proj.weight");
    });
    assert!(
        msg.contains("missing tensor `blk.1.ffn_up.weight`"),
        "{msg}"
    );

    let (msg, _fx) = with_tensors(|v| {
        v.remove("lm_head.weight");
    });
    assert!(msg.contains("output.weight"), "{msg}");

    let (msg, _fx) = with_tensors(|v| {
        v.insert(
            "model.layers.0.weird.weight".into(),
            (vec![2], vec![0.0; 2]),
        );
    });
    assert!(
        msg.contains("unexpected tensor `model.layers.0.weird.weight`"),
        "{msg}"
    );

    let (msg, _fx) = with_tensors(|v| {
        v.insert(
            "model.layers.0.self_attn.o_proj.bias".into(),
            (vec![64], vec![0.0; 64]),
        );
    });
    assert!(
        msg.contains("blk.0.attn_output.bias") && msg.contains("not used"),
        "{msg}"
    );

    let (msg, _fx) = with_tensors(|v| {
        v.insert(
            "model.layers.7.mlp.up_proj.weight".into(),
            (vec![96, 64], vec![0.0; 96 * 64]),
        );
    });
    assert!(msg.contains("layer 7"), "{msg}");

    let (msg, _fx) = with_tensors(|v| {
        v.get_mut("model.layers.0.self_attn.k_proj.weight")
            .unwrap()
            .0 = vec![16, 128];
    });
    assert!(
        msg.contains("blk.0.attn_k.weight") && msg.contains("[32, 64]"),
        "{msg}"
    );

    // Old checkpoints carry rotary caches: skipped.
    let fx = with_tensors_fixture(|v| {
        v.insert(
            "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
            (vec![8], vec![1.0; 8]),
        );
    });
    assert!(load_model_parts(&fx.path(), &LoadOptions::default()).is_ok());
}

#[test]
fn unsupported_dtype_and_corrupt_files() {
    let d = Dims::tiny();
    let fx = fixture("llama", &d, true, Dtype::F32, 1);
    let st = fx.path().join("model.safetensors");
    let raw = vec![1u8; 4];
    let views = vec![(
        "model.norm.weight".to_string(),
        TensorView::new(Dtype::I8, vec![4], &raw).unwrap(),
    )];
    safetensors::serialize_to_file(views, None, &st).unwrap();
    let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
    assert_error(&msg, &st, &["model.norm.weight", "I8"]);

    let fx = fixture("llama", &d, true, Dtype::F32, 1);
    let bytes = std::fs::read(fx.path().join("model.safetensors")).unwrap();
    for cut in [0, 5, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(fx.path().join("model.safetensors"), &bytes[..cut]).unwrap();
        let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
        assert!(
            msg.contains("model.safetensors") && !msg.contains('\n'),
            "cut {cut}: {msg}"
        );
    }
    std::fs::remove_file(fx.path().join("model.safetensors")).unwrap();
    let msg = err_text(load_model_parts(&fx.path(), &LoadOptions::default()));
    assert!(msg.contains("no model.safetensors"), "{msg}");
}

#[test]
fn generation_and_tokenizer_configs() {
    let d = Dims::tiny();
    let fx = fixture("llama", &d, true, Dtype::F32, 1);
    let p = fx.path();
    std::fs::write(
        p.join("generation_config.json"),
        json!({"temperature": 0.6, "top_p": 0.9, "top_k": 20, "eos_token_id": [5, 7], "bos_token_id": 1}).to_string(),
    )
    .unwrap();
    std::fs::write(
        p.join("tokenizer_config.json"),
        json!({"chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ messages }}"}
        ], "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true})
        .to_string(),
    )
    .unwrap();
    let parts = load_model_parts(&p, &LoadOptions::default()).unwrap();
    assert_eq!(parts.generation.temperature, Some(0.6));
    assert_eq!(parts.generation.top_p, Some(0.9));
    assert_eq!(parts.generation.top_k, Some(20));
    assert_eq!(parts.generation.eos_token_ids, vec![5, 7]);
    assert_eq!(parts.chat_template.as_deref(), Some("{{ messages }}"));

    // do_sample = false: transformers ignores the sampling fields.
    std::fs::write(
        p.join("generation_config.json"),
        json!({"do_sample": false, "temperature": 0.6, "eos_token_id": 9}).to_string(),
    )
    .unwrap();
    // A plain string template; and chat_template.jinja when the config has none.
    std::fs::write(
        p.join("tokenizer_config.json"),
        json!({"chat_template": "T1"}).to_string(),
    )
    .unwrap();
    let parts = load_model_parts(&p, &LoadOptions::default()).unwrap();
    assert_eq!(parts.generation.temperature, None);
    assert_eq!(parts.generation.eos_token_ids, vec![9]);
    assert_eq!(parts.chat_template.as_deref(), Some("T1"));
    std::fs::write(p.join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(p.join("chat_template.jinja"), "T2").unwrap();
    let parts = load_model_parts(&p, &LoadOptions::default()).unwrap();
    assert_eq!(parts.chat_template.as_deref(), Some("T2"));

    std::fs::write(
        p.join("generation_config.json"),
        json!({"eos_token_id": "x"}).to_string(),
    )
    .unwrap();
    let msg = err_text(load_model_parts(&p, &LoadOptions::default()));
    assert_error(&msg, &p.join("generation_config.json"), &["eos_token_id"]);
}

/// A word-level tokenizer.json covering the tiny vocabulary.
fn write_tokenizer_json(path: &Path, vocab: usize) {
    let mut v = serde_json::Map::new();
    v.insert("<unk>".into(), json!(0));
    v.insert("<s>".into(), json!(1));
    v.insert("</s>".into(), json!(2));
    for i in 3..vocab {
        v.insert(format!("w{i}"), json!(i));
    }
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": v, "unk_token": "<unk>"}
    });
    std::fs::write(path, tok.to_string()).unwrap();
}

#[test]
fn full_load_with_tokenizer_json_and_override() {
    let d = Dims::tiny();
    let fx = fixture("llama", &d, true, Dtype::F32, 1);
    let p = fx.path();
    std::fs::write(
        p.join("tokenizer_config.json"),
        json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": "CT"}).to_string(),
    )
    .unwrap();
    write_tokenizer_json(&p.join("tokenizer.json"), d.vocab);
    let m = load_model(&p, &LoadOptions::default()).unwrap();
    assert_eq!(m.tokenizer.vocab_size(), d.vocab);
    assert_eq!(m.tokenizer.encode("w5 w7", false).unwrap(), vec![5, 7]);
    assert!(m.generation.eos_token_ids.contains(&2));
    assert_eq!(m.chat_template.as_deref(), Some("CT"));
    assert!(m.metadata.is_empty());

    // A tokenizer bigger than the embedding is refused.
    write_tokenizer_json(&p.join("tokenizer.json"), d.vocab + 5);
    let msg = err_text(load_model(&p, &LoadOptions::default()));
    assert!(
        msg.contains("45 tokens") && msg.contains("40 rows"),
        "{msg}"
    );

    // --tokenizer: a tokenizer.json elsewhere.
    let other = tempfile::tempdir().unwrap();
    write_tokenizer_json(&other.path().join("tokenizer.json"), d.vocab);
    std::fs::remove_file(p.join("tokenizer.json")).unwrap();
    for tok in [
        other.path().to_path_buf(),
        other.path().join("tokenizer.json"),
    ] {
        let opts = LoadOptions {
            tokenizer_path: Some(tok),
        };
        let m = load_model(&p, &opts).unwrap();
        assert_eq!(m.tokenizer.vocab_size(), d.vocab);
    }
    let opts = LoadOptions {
        tokenizer_path: Some(p.join("config.json").with_file_name("nope.json")),
    };
    assert!(load_model(&p, &opts).is_err());
}
