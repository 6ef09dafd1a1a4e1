//! Shared helpers of the speculative decoding tests: tiny seeded random Llama models,
//! engines with and without speculation, and runners that collect each request's
//! tokens.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::{quant, DType, Device, RopeStyle, Tensor};
use sluice_engine::spec::{DraftModelProposer, DraftSource, NgramProposer, Proposer};
use sluice_engine::{EngineConfig, EngineRequest, LlmEngine, SamplingParams, SeqId, SpecConfig};
use sluice_model::arch::Model;
use sluice_model::config::{Arch, FfnActivation, RopeScaling};
use sluice_model::tokenizer::Tokenizer;
use sluice_model::{ModelConfig, WeightStore};

pub const VOCAB: usize = 96;

/// A small Llama: 64 hidden, GQA, `n_layers` layers.
pub fn tiny_config(n_layers: usize, vocab: usize) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        name: "tiny-spec".into(),
        hidden_size: 64,
        intermediate_size: 128,
        n_layers,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: vocab,
        max_position: 512,
        rms_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_local_theta: None,
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Neox,
        sliding_window: None,
        sliding_window_pattern: None,
        activation: FfnActivation::Silu,
        tie_embeddings: false,
        qkv_bias: false,
        qk_norm: false,
        sandwich_norms: false,
        embedding_scale: None,
        attn_scale: None,
        attn_logit_softcap: None,
        final_logit_softcap: None,
    }
}

/// `[rows, cols]` of `dtype`, uniform in `±scale / sqrt(cols)`.
fn matrix(rng: &mut ChaCha8Rng, dtype: DType, rows: usize, cols: usize, scale: f32) -> Tensor {
    let mut t = Tensor::zeros_cpu(dtype, &[rows, cols]).expect("tensor");
    let rb = dtype.row_bytes(cols);
    let a = scale / (cols as f32).sqrt();
    let bytes = t.cpu_bytes_mut().expect("bytes");
    let mut row = vec![0f32; cols];
    for r in 0..rows {
        for x in row.iter_mut() {
            *x = rng.random_range(-a..a);
        }
        quant::quantize_row(dtype, &row, &mut bytes[r * rb..(r + 1) * rb]).expect("quantize");
    }
    t
}

fn ones(n: usize) -> Tensor {
    Tensor::from_f32_cpu(&[n], &vec![1.0; n]).expect("ones")
}

/// Random weights for `cfg` (matrices in `dtype`). `head_scale` sharpens the output
/// distribution (larger: more peaked next-token distributions).
pub fn random_weights(cfg: &ModelConfig, dtype: DType, seed: u64, head_scale: f32) -> WeightStore {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (h, f, qd, kvd) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
    );
    let mut w = WeightStore::new();
    // Embeddings of unit-ish scale per element.
    w.insert(
        "token_embd.weight",
        matrix(&mut rng, dtype, cfg.vocab_size, h, (h as f32).sqrt()),
    );
    w.insert(
        "output.weight",
        matrix(&mut rng, dtype, cfg.vocab_size, h, head_scale),
    );
    w.insert("output_norm.weight", ones(h));
    for i in 0..cfg.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        w.insert(p("attn_q.weight"), matrix(&mut rng, dtype, qd, h, 2.0));
        w.insert(p("attn_k.weight"), matrix(&mut rng, dtype, kvd, h, 2.0));
        w.insert(p("attn_v.weight"), matrix(&mut rng, dtype, kvd, h, 1.0));
        w.insert(p("attn_output.weight"), matrix(&mut rng, dtype, h, qd, 1.0));
        w.insert(p("ffn_gate.weight"), matrix(&mut rng, dtype, f, h, 1.0));
        w.insert(p("ffn_up.weight"), matrix(&mut rng, dtype, f, h, 1.0));
        w.insert(p("ffn_down.weight"), matrix(&mut rng, dtype, h, f, 1.0));
        w.insert(p("attn_norm.weight"), ones(h));
        w.insert(p("ffn_norm.weight"), ones(h));
    }
    w
}

/// One CPU device (one worker pool) shared by every model of the test binary: pools
/// per model would compete for the machine's cores.
pub fn device() -> Device {
    static DEV: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEV.get_or_init(|| Device::cpu(Some(2))).clone()
}

/// The target: 4 layers, seed 1.
pub const TARGET_LAYERS: usize = 4;
pub const TARGET_SEED: u64 = 1;

pub fn target_model(dtype: DType, head_scale: f32) -> Model {
    let cfg = tiny_config(TARGET_LAYERS, VOCAB);
    let w = random_weights(&cfg, dtype, TARGET_SEED, head_scale);
    Model::new(&device(), cfg, w, 512).expect("target model")
}

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        block_size: 4,
        num_blocks: Some(512),
        max_num_batched_tokens: 64,
        max_num_seqs: 16,
        max_model_len: Some(512),
        enable_prefix_caching: true,
        ..EngineConfig::default()
    }
}

/// Which proposer a test engine uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    Off,
    Ngram,
    /// The target requantized to Q4_0.
    DraftQuant,
    /// The target's first 2 layers.
    DraftLayers,
}

pub const ALL_METHODS: [Method; 3] = [Method::Ngram, Method::DraftQuant, Method::DraftLayers];

pub fn draft_proposer(
    m: Method,
    dtype: DType,
    head_scale: f32,
    num_blocks: usize,
    bs: usize,
) -> DraftModelProposer {
    let target_bytes = target_model(dtype, head_scale).weight_bytes();
    let mut cfg = tiny_config(TARGET_LAYERS, VOCAB);
    let mut w = random_weights(&cfg, dtype, TARGET_SEED, head_scale);
    let source = match m {
        Method::DraftQuant => {
            sluice_engine::spec::draft::requantize_weights(&mut w, DType::Q4_0)
                .expect("requantize");
            DraftSource::Quantized(DType::Q4_0)
        }
        Method::DraftLayers => {
            cfg.n_layers = 2;
            DraftSource::Layers(2)
        }
        _ => panic!("not a draft method"),
    };
    let model = Model::new(&device(), cfg, w, 512).expect("draft model");
    DraftModelProposer::new(model, num_blocks, bs, target_bytes, source).expect("draft proposer")
}

pub fn proposer(m: Method, dtype: DType, head_scale: f32, cfg: &EngineConfig) -> Box<dyn Proposer> {
    match m {
        Method::Ngram => Box::new(NgramProposer::new(1, 4).expect("ngram")),
        Method::DraftQuant | Method::DraftLayers => Box::new(draft_proposer(
            m,
            dtype,
            head_scale,
            cfg.num_blocks.unwrap_or(512),
            cfg.block_size,
        )),
        Method::Off => panic!("no proposer for Off"),
    }
}

/// An engine on the tiny target with `m` (and `spec` settings).
pub fn engine(
    m: Method,
    spec: SpecConfig,
    cfg: EngineConfig,
    dtype: DType,
    head_scale: f32,
) -> LlmEngine {
    let tok = Arc::new(Tokenizer::synthetic(VOCAB).expect("tokenizer"));
    let mut e = LlmEngine::new(target_model(dtype, head_scale), tok, &cfg).expect("engine");
    if m != Method::Off {
        let p = proposer(m, dtype, head_scale, &cfg);
        e.enable_speculation(spec, p).expect("speculation");
    }
    e
}

/// Prompts with repeated segments (so prompt lookup finds matches) of varied lengths.
pub fn prompts(n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let seg_len = rng.random_range(3..10);
            let seg: Vec<u32> = (0..seg_len)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect();
            let mut p = Vec::new();
            let reps = rng.random_range(1..4);
            for _ in 0..reps {
                let noise = rng.random_range(0..6);
                p.extend((0..noise).map(|_| rng.random_range(0..VOCAB as u32)));
                p.extend_from_slice(&seg);
            }
            p
        })
        .collect()
}

pub fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    }
}

/// Submits all `reqs` at once and runs to completion; returns each one's tokens.
pub fn run_all(e: &mut LlmEngine, reqs: &[(Vec<u32>, SamplingParams)]) -> Vec<Vec<u32>> {
    let mut ids: Vec<SeqId> = Vec::new();
    for (p, params) in reqs {
        ids.push(
            e.add_request(EngineRequest {
                prompt_token_ids: p.clone(),
                params: params.clone(),
                cache_salt: None,
            })
            .expect("add_request"),
        );
    }
    let mut out: HashMap<SeqId, Vec<u32>> = HashMap::new();
    e.run_to_completion(|o| {
        out.entry(o.id)
            .or_default()
            .extend_from_slice(&o.new_token_ids)
    })
    .expect("run");
    ids.iter()
        .map(|id| out.remove(id).unwrap_or_default())
        .collect()
}

/// Runs each request alone, one after the other.
pub fn run_each(e: &mut LlmEngine, reqs: &[(Vec<u32>, SamplingParams)]) -> Vec<Vec<u32>> {
    reqs.iter()
        .map(|r| run_all(e, std::slice::from_ref(r)).remove(0))
        .collect()
}
