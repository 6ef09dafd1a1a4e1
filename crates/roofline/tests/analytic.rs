//! FLOP and byte counts against hand-computed values, attention key counts against a
//! naive loop, and how quantization and context move the ridge point.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::DType;
use sluice_model::ModelConfig;
use sluice_roofline::analytic::{
    attention_keys, kv_bytes_per_token, matmul_parameters, step_cost, stored_weight_bytes,
    ComputeClass, OpKind, Precision, Step, WeightTypes,
};
use sluice_roofline::hardware::{self, HardwareProfile};
use sluice_roofline::predict::{self, matmul_ridge_batch, predict, ridge_batch, Bound};
use sluice_roofline::presets;

fn llama8b() -> ModelConfig {
    presets::by_name("llama-3.1-8b").expect("preset")
}

/// BF16 everything (weights, norms, KV, activations), quantized matmuls on `quant`.
fn bf16(cfg: &ModelConfig, quant: ComputeClass) -> Precision {
    Precision {
        weights: WeightTypes {
            norms: DType::BF16,
            ..WeightTypes::uniform(cfg, DType::BF16)
        },
        kv: DType::BF16,
        act: DType::BF16,
        quant_matmul: quant,
    }
}

fn h100() -> HardwareProfile {
    hardware::resolve("h100-sxm", None, || {
        unreachable!("a GPU profile needs no probe")
    })
    .expect("h100")
}

// Hand computation for Llama-3.1-8B (hidden 4096, FFN 14336, 32 layers, 32 query / 8 KV
// heads of 128, vocab 128256, untied head):
//   per layer: q 4096·4096 + k,v 2·1024·4096 + o 4096·4096 + gate,up,down 3·14336·4096
//            = 218,103,808 matmul parameters; x32 = 6,979,321,856
//   LM head 128256·4096 = 525,336,576; embedding table the same (gathered, not multiplied)
//   norms (2 per layer + final) 65·4096 = 266,240
//   total 8,030,261,248 parameters = 16,060,522,496 bytes in BF16 (the "16.06 GB")
const LAYER_MATMUL: f64 = 218_103_808.0;
const HEAD: f64 = 525_336_576.0;
const TOTAL_PARAMS: f64 = 8_030_261_248.0;

#[test]
fn llama_8b_bf16_decode_counts_match_hand_computed_values() {
    let cfg = llama8b();
    let prec = bf16(&cfg, ComputeClass::Half);
    assert_eq!(cfg.parameter_count() as f64, TOTAL_PARAMS);
    // Stored: 2 bytes x 8.03 G parameters = 16.06 GB.
    let stored = stored_weight_bytes(&cfg, &prec.weights);
    assert_eq!(stored, 2.0 * TOTAL_PARAMS);
    assert!((stored / 1e9 - 16.06).abs() < 0.005);

    let cost = step_cost(&cfg, &prec, &Step::decode(1, 0)).unwrap();
    // Read per decode step: every matrix and the head once, the norm weights, and one
    // embedding row; i.e. the stored bytes minus the embedding table plus one row.
    let matmul_bytes = 2.0 * (32.0 * LAYER_MATMUL + HEAD);
    let expected_read = matmul_bytes + 2.0 * 65.0 * 4096.0 + 2.0 * 4096.0;
    assert_eq!(cost.weight_bytes(), expected_read);
    assert_eq!(cost.weight_bytes(), stored - 2.0 * HEAD + 2.0 * 4096.0);
    assert!((cost.weight_bytes() / 1e9 - 15.01).abs() < 0.005);

    // FLOPs: 2 per multiplied parameter (2 x 7.50 G), plus a few MFLOPs of norms, RoPE,
    // attention over one key, SwiGLU and residuals.
    let matmul_flops: f64 = cost
        .ops
        .iter()
        .filter(|o| o.kind.is_weight_matmul())
        .map(|o| o.flops)
        .sum();
    assert_eq!(matmul_flops, 2.0 * (32.0 * LAYER_MATMUL + HEAD));
    assert_eq!(matmul_flops, 2.0 * (matmul_parameters(&cfg) - 266_240.0));
    let attention = 32.0 * 32.0 * (4.0 * 128.0 + 5.0);
    let norms = 4.0 * 4096.0 * 65.0;
    let rope = 3.0 * (4096.0 + 1024.0) * 32.0;
    let residual = 2.0 * 4096.0 * 32.0;
    let glu = 5.0 * 14336.0 * 32.0;
    let embedding = 4096.0;
    assert_eq!(
        cost.flops(),
        matmul_flops + attention + norms + rope + residual + glu + embedding
    );
    // The "2 x 8.03 G" rule of thumb counts the embedding table as if it were multiplied.
    assert!((cost.flops() / 2.0 / 1e9 - 7.505).abs() < 0.005);

    // Batch 1 decode is deeply memory-bound on an H100: 15.0 GB / 3.35 TB/s = 4.48 ms.
    let p = predict(&cfg, &prec, Step::decode(1, 0), &h100()).unwrap();
    assert_eq!(p.bound, Bound::Memory);
    assert!((p.floor_s * 1e3 - 4.48).abs() < 0.01, "{}", p.floor_s);
}

#[test]
fn kv_and_activation_bytes_scale_with_batch_and_context() {
    let cfg = llama8b();
    let prec = bf16(&cfg, ComputeClass::Half);
    // 2 (K,V) x 32 layers x 1024 x 2 bytes = 128 KiB per token.
    assert_eq!(kv_bytes_per_token(&cfg, DType::BF16), 131_072.0);
    let (b, c) = (4usize, 1000usize);
    let cost = step_cost(&cfg, &prec, &Step::decode(b, c)).unwrap();
    let att_kv: f64 = cost
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::Attention)
        .map(|o| o.kv_bytes)
        .sum();
    assert_eq!(att_kv, (b * (c + 1)) as f64 * 131_072.0);
    let write_kv: f64 = cost
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::KvWrite)
        .map(|o| o.kv_bytes)
        .sum();
    assert_eq!(write_kv, b as f64 * 131_072.0);
    // Weight bytes do not depend on the batch (read once per step).
    let one = step_cost(&cfg, &prec, &Step::decode(1, c)).unwrap();
    assert_eq!(one.weight_bytes() + 3.0 * 2.0 * 4096.0, cost.weight_bytes());
    // A quantized head and matrices: bytes x 18/32 (Q4_0) exactly.
    let q4 = predict::variant(&cfg, &prec, Some(DType::Q4_0), DType::BF16);
    let q4_cost = step_cost(&cfg, &q4, &Step::decode(1, 0)).unwrap();
    let q4_matmul: f64 = q4_cost
        .ops
        .iter()
        .filter(|o| o.kind.is_weight_matmul())
        .map(|o| o.weight_bytes)
        .sum();
    assert_eq!(q4_matmul, (32.0 * LAYER_MATMUL + HEAD) * 18.0 / 32.0);
}

#[test]
fn prefill_computes_logits_once_per_sequence() {
    let cfg = llama8b();
    let prec = bf16(&cfg, ComputeClass::Half);
    let cost = step_cost(&cfg, &prec, &Step::prefill(2, 512)).unwrap();
    let head = cost.ops.iter().find(|o| o.kind == OpKind::LmHead).unwrap();
    assert_eq!(head.flops, 2.0 * 2.0 * HEAD);
    // Causal attention over 512 tokens: 512·513/2 (query, key) pairs per head.
    let att: f64 = cost
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::Attention)
        .map(|o| o.flops)
        .sum();
    assert_eq!(
        att,
        2.0 * 32.0 * 32.0 * (512.0 * 513.0 / 2.0) * (4.0 * 128.0 + 5.0)
    );
    // Prefill of 512 tokens is compute-bound on an H100, decode at batch 1 is not.
    let hw = h100();
    assert_eq!(
        predict(&cfg, &prec, Step::prefill(1, 512), &hw)
            .unwrap()
            .bound,
        Bound::Compute
    );
}

#[test]
fn attention_key_counts_match_a_naive_loop() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..2000 {
        let past = rng.random_range(0..300usize);
        let q = rng.random_range(1..80usize);
        let window = if rng.random_bool(0.5) {
            Some(rng.random_range(1..200usize))
        } else {
            None
        };
        let step = Step {
            batch: 1,
            query_len: q,
            past,
        };
        let mut attended = 0u64;
        let mut keys = std::collections::BTreeSet::new();
        for i in 0..q {
            let pos = past + i;
            let lo = match window {
                Some(w) => (pos + 1).saturating_sub(w),
                None => 0,
            };
            for k in lo..=pos {
                keys.insert(k);
                attended += 1;
            }
        }
        assert_eq!(
            attention_keys(&step, window),
            (attended, keys.len() as u64),
            "past {past} q {q} window {window:?}"
        );
    }
}

/// The ridge batch from the step's affine pieces: memory time `W + B·m` (weights once,
/// activations and KV per sequence), compute time `B·c`; compute-bound from
/// `B* = W / (c - m)`, never if `c <= m`.
fn closed_form_ridge(
    cfg: &ModelConfig,
    prec: &Precision,
    context: usize,
    hw: &HardwareProfile,
) -> Option<f64> {
    let one = predict(cfg, prec, Step::decode(1, context), hw).unwrap();
    let two = predict(cfg, prec, Step::decode(2, context), hw).unwrap();
    let m = two.memory_s - one.memory_s;
    let w = one.memory_s - m;
    let c = two.compute_s - one.compute_s;
    (c > m).then(|| w / (c - m))
}

#[test]
fn quantizing_weights_moves_the_ridge_point_down_by_the_byte_ratio() {
    let cfg = llama8b();
    let hw = h100();
    // Quantized weights dequantized into the BF16 tensor cores: same peak, fewer bytes.
    let base = bf16(&cfg, ComputeClass::Half);
    // Weights alone: 295.3 FLOP/B x 2 bytes / 2 FLOPs = 295 sequences.
    assert!((matmul_ridge_batch(DType::BF16, ComputeClass::Half, &hw) - 295.3).abs() < 0.5);
    // The whole step needs more: each sequence also moves 11.7 MB of activations
    // (3.5 µs at 3.35 TB/s) against 15.2 µs of matmuls, so B* = 4.48 ms / 11.7 µs.
    let r_bf16 = ridge_batch(&cfg, &base, 0, &hw).unwrap().unwrap();
    let closed = closed_form_ridge(&cfg, &base, 0, &hw).unwrap();
    assert!(
        (r_bf16 as f64 - closed.ceil()).abs() <= 1.0,
        "search {r_bf16}, closed form {closed}"
    );
    assert!((370..=400).contains(&r_bf16), "{r_bf16}");
    let mut last = r_bf16;
    for (d, bytes) in [
        (DType::Q8_0, 34.0 / 32.0),
        (DType::Q4_K, 0.5625),
        (DType::Q4_0, 0.5625),
    ] {
        let p = predict::variant(&cfg, &base, Some(d), DType::BF16);
        let r = ridge_batch(&cfg, &p, 0, &hw).unwrap().unwrap();
        // Only W shrinks: the ridge falls by the weight byte ratio.
        let expect = r_bf16 as f64 * bytes / 2.0;
        assert!(
            (r as f64 / expect - 1.0).abs() < 0.02,
            "{d}: ridge {r}, expected about {expect:.0}"
        );
        assert!(r <= last, "{d}: {r} > {last}");
        last = r;
    }
    // On int8 units (twice the BF16 rate) the same Q8_0 weights need more than twice the
    // batch: compute per sequence halves while activation traffic stays.
    let q8_half = predict::variant(&cfg, &base, Some(DType::Q8_0), DType::BF16);
    let q8_int8 = Precision {
        quant_matmul: ComputeClass::Int8,
        ..q8_half.clone()
    };
    let r_half = ridge_batch(&cfg, &q8_half, 0, &hw).unwrap().unwrap() as f64;
    let r_int8 = ridge_batch(&cfg, &q8_int8, 0, &hw).unwrap().unwrap() as f64;
    let closed_int8 = closed_form_ridge(&cfg, &q8_int8, 0, &hw).unwrap();
    assert!(r_int8 > 2.0 * r_half, "{r_int8} vs {r_half}");
    assert!(
        (r_int8 - closed_int8.ceil()).abs() <= 1.0,
        "{r_int8} vs {closed_int8}"
    );
}

#[test]
fn kv_cache_growth_pushes_the_ridge_point_out_until_decode_never_turns_compute_bound() {
    let cfg = llama8b();
    let hw = h100();
    let prec = bf16(&cfg, ComputeClass::Half);
    let ridge = |p: &Precision, c: usize| ridge_batch(&cfg, p, c, &hw).unwrap();
    let (r0, r128, r256) = (
        ridge(&prec, 0).unwrap(),
        ridge(&prec, 128).unwrap(),
        ridge(&prec, 256).unwrap(),
    );
    assert!(r0 < r128 && r128 < r256, "{r0} {r128} {r256}");
    for c in [128, 256] {
        let closed = closed_form_ridge(&cfg, &prec, c, &hw).unwrap();
        assert!((ridge(&prec, c).unwrap() as f64 - closed.ceil()).abs() <= 1.0);
    }
    // Each cached token costs every sequence 128 KiB of KV reads per step (39 ns at
    // 3.35 TB/s) and adds almost no arithmetic: past (15.2 - 3.5 µs) / 39 ns ≈ 300 tokens
    // of context, decode stays memory-bound at any batch.
    assert!(closed_form_ridge(&cfg, &prec, 290, &hw).is_some());
    assert_eq!(ridge(&prec, 310), None);
    assert_eq!(ridge(&prec, 8192), None);
    // An 8-bit KV cache (Q8_0, 1.06 bytes) nearly doubles that context; F32 halves it.
    let q8 = Precision {
        kv: DType::Q8_0,
        ..prec.clone()
    };
    assert!(ridge(&q8, 500).is_some());
    assert_eq!(ridge(&q8, 600), None);
    let f32_kv = Precision {
        kv: DType::F32,
        ..prec.clone()
    };
    assert!(ridge(&f32_kv, 140).is_some());
    assert_eq!(ridge(&f32_kv, 160), None);
}

#[test]
fn bad_steps_are_named() {
    let cfg = presets::by_name("smollm2-135m").unwrap();
    let prec = bf16(&cfg, ComputeClass::Half);
    let err = step_cost(&cfg, &prec, &Step::decode(0, 5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch"), "{err}");
    let err = step_cost(&cfg, &prec, &Step::decode(1, 8192))
        .unwrap_err()
        .to_string();
    assert!(err.contains("8192") && err.contains("context"), "{err}");
    let short = Precision {
        weights: WeightTypes {
            layers: vec![],
            ..prec.weights.clone()
        },
        ..prec.clone()
    };
    let err = step_cost(&cfg, &short, &Step::decode(1, 5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 layers"), "{err}");
    let zero = ModelConfig {
        hidden_size: 0,
        ..cfg
    };
    let err = step_cost(&zero, &prec, &Step::decode(1, 5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("hidden_size"), "{err}");
}

#[test]
fn quant_and_context_tables_cover_every_variant() {
    let cfg = presets::by_name("llama-3.2-1b-bench").unwrap();
    let hw = h100();
    let prec = bf16(&cfg, ComputeClass::Half);
    let rows = predict::quant_table(&cfg, &prec, &hw, 16, 1024, 512).unwrap();
    // The BF16 what-if is the model itself: listed once.
    assert_eq!(rows.len(), predict::quant_variants(DType::BF16).len() - 1);
    // Fewer weight bytes, faster batch-1 decode.
    let by = |w: &str| {
        rows.iter()
            .find(|r| r.weights == w && r.kv == "BF16")
            .unwrap()
    };
    assert!(by("Q4_K").decode_tokens_per_s_b1 > by("Q6_K").decode_tokens_per_s_b1);
    assert!(by("Q6_K").decode_tokens_per_s_b1 > by("Q8_0").decode_tokens_per_s_b1);
    assert!(by("Q8_0").decode_tokens_per_s_b1 > by("BF16 (model)").decode_tokens_per_s_b1);
    let ctx = predict::sweep_contexts(cfg.max_position);
    assert_eq!(ctx.first(), Some(&128));
    assert_eq!(ctx.last(), Some(&(cfg.max_position - 1)));
    let sweep = predict::context_sweep(&cfg, &prec, &hw, 16, &ctx).unwrap();
    // The KV share of a step's bytes grows with context.
    assert!(sweep.windows(2).all(|w| w[0].kv_share < w[1].kv_share));
}
