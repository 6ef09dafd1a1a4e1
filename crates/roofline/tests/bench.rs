//! The measurement side: the op-by-op replica computes exactly what `Model::forward`
//! computes, the benchmark grid runs on tiny random models, the CLI rejects bad input
//! with clear messages, and (with SLUICE_TEST_MODELS) the SmolLM2 file runs through the
//! engine and matches its preset.

use std::path::PathBuf;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_backend::{DType, Device, RopeStyle};
use sluice_model::arch::Model;
use sluice_model::config::{Arch, FfnActivation, RopeScaling};
use sluice_model::ModelConfig;
use sluice_roofline::analytic::{OpKind, Step};
use sluice_roofline::measure::{build_batch, run_bench, BenchPlan, WeightsFrom};
use sluice_roofline::ops::OpHarness;
use sluice_roofline::random_weights::random_weights;
use sluice_roofline::{presets, run, RooflineArgs};

fn tiny(arch: Arch) -> ModelConfig {
    let gemma = arch == Arch::Gemma3;
    ModelConfig {
        arch,
        name: format!("tiny-{}", arch.name()),
        hidden_size: 64,
        intermediate_size: 96,
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: 320,
        max_position: 256,
        rms_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_local_theta: gemma.then_some(1000.0),
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Neox,
        sliding_window: gemma.then_some(8),
        sliding_window_pattern: gemma.then_some(2),
        activation: if gemma {
            FfnActivation::GeluTanh
        } else {
            FfnActivation::Silu
        },
        tie_embeddings: gemma,
        qkv_bias: !gemma,
        qk_norm: gemma,
        sandwich_norms: gemma,
        embedding_scale: gemma.then_some(8.0),
        attn_scale: None,
        attn_logit_softcap: None,
        final_logit_softcap: gemma.then_some(30.0),
    }
}

#[test]
fn the_op_replica_computes_the_same_logits_as_the_model() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let cfg = tiny(arch);
        let dev = Device::cpu(Some(2));
        let mut model = Model::new(
            &dev,
            cfg.clone(),
            random_weights(&cfg, DType::Q8_0, 9).unwrap(),
            128,
        )
        .unwrap();
        let mut replica = OpHarness::new(
            &dev,
            cfg.clone(),
            random_weights(&cfg, DType::Q8_0, 9).unwrap(),
            128,
        )
        .unwrap();
        let mut kv = model.new_kv_cache(64, 16).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // A prefill (which fills the cache), then a decode over what it wrote, with a
        // window shorter than the context on Gemma's local layers.
        for step in [Step::prefill(2, 20), Step::decode(2, 19)] {
            let batch = build_batch(&step, cfg.vocab_size, 16, &mut rng);
            let mut want = Vec::new();
            dev.copy_f32_to_host(model.forward(&batch, &mut kv).unwrap(), &mut want)
                .unwrap();
            let times = replica.timed_forward(&batch, &mut kv).unwrap();
            let mut got = Vec::new();
            dev.copy_f32_to_host(replica.logits(), &mut got).unwrap();
            assert_eq!(want.len(), 2 * cfg.vocab_size);
            assert!(want.iter().all(|x| x.is_finite()));
            assert_eq!(got, want, "{arch:?} {step:?}");
            let kinds: Vec<OpKind> = times.iter().map(|t| t.0).collect();
            assert_eq!(kinds.contains(&OpKind::QkNorm), arch == Arch::Gemma3);
            assert!(kinds.contains(&OpKind::Attention) && kinds.contains(&OpKind::LmHead));
            assert!(times.iter().all(|t| t.1 >= 0.0));
        }
    }
}

#[test]
fn the_benchmark_grid_runs_on_random_weights() {
    let cfg = tiny(Arch::Llama);
    let plan = BenchPlan {
        steps: vec![
            Step::decode(1, 30),
            Step::decode(3, 100),
            Step::prefill(1, 24),
        ],
        reps: 2,
        stat: sluice_roofline::measure::Summary::Min,
        ops: true,
        engine: true,
        threads: Some(2),
        block_size: 16,
    };
    let mut lines = Vec::new();
    let from = WeightsFrom::Random {
        dtype: DType::Q4_0,
        seed: 1,
    };
    let m = run_bench(&Device::cpu(Some(2)), &cfg, &from, &plan, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(m.len(), 3);
    for (x, step) in m.iter().zip(&plan.steps) {
        assert_eq!(&x.step, step);
        assert!(x.forward_s > 0.0 && x.forward_min_s == x.forward_s);
        assert!(x.forward_median_s >= x.forward_min_s);
        assert!(x.ops_total_s.unwrap() > 0.0);
        assert!(x.engine_step_s.is_none());
    }
    // Random weights have no tokenizer: the engine is skipped, and says so.
    assert!(
        lines.iter().any(|l| l.contains("engine timing skipped")),
        "{lines:?}"
    );
}

fn args(extra: &[&str]) -> RooflineArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: RooflineArgs,
    }
    let mut v = vec!["roofline"];
    v.extend_from_slice(extra);
    Cli::parse_from(v).a
}

#[test]
fn bad_input_gets_clear_errors() {
    let err = run(args(&["--hardware", "tpu-v9"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tpu-v9") && err.contains("h100-sxm") && err.contains("rtx-4090"),
        "{err}"
    );
    let err = run(args(&["--device", "tpu"])).unwrap_err().to_string();
    assert!(err.contains("unknown device `tpu`"), "{err}");
    if !sluice_backend::cuda::driver_present() {
        let err = run(args(&["--device", "cuda", "--bench", "--random-weights"])).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("no CUDA driver found"), "{err}");
    }
    let err = run(args(&["--model", "gpt-5", "--hardware", "l4"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gpt-5") && err.contains("llama-3.1-8b"),
        "{err}"
    );
    let err = run(args(&["--weights", "Q3_XL", "--hardware", "l4"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Q3_XL") && err.contains("Q4_K"), "{err}");
    // A CPU profile from a file (no probe), for the --bench checks.
    let dir = tempfile::tempdir().unwrap();
    let cpu = dir.path().join("cpu.toml");
    let mut profile =
        sluice_roofline::hardware::resolve("l4", None, || (1.0, String::new())).unwrap();
    profile.kind = sluice_roofline::hardware::DeviceKind::Cpu;
    profile.save(&cpu).unwrap();
    let cpu = cpu.to_str().unwrap();
    let err = run(args(&["--hardware", cpu, "--bench"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--random-weights"), "{err}");
    let err = run(args(&["--hardware", "l4", "--bench", "--random-weights"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--hardware cpu"), "{err}");
    let err = run(args(&["--hardware", "h100-sxm", "--measure"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("add --device cuda"), "{err}");
    let err = run(args(&["--hardware", "l4", "--context", "9000"])).unwrap_err();
    assert!(format!("{err:#}").contains("8192"), "{err:#}");
    let err = run(args(&["--hardware", "l4", "--batch", "0"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--batch"), "{err}");
}

#[test]
fn predictions_write_json_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let plot = dir.path().join("roof");
    let (j, p) = (json.to_str().unwrap(), plot.to_str().unwrap());
    let a = args(&[
        "--model",
        "llama-3.1-8b",
        "--hardware",
        "h100-sxm",
        "--batch",
        "1,64",
        "--context",
        "128,4096",
        "--json",
        j,
        "--plot",
        p,
        "--per-layer",
    ]);
    run(a).unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["model"]["parameters"], 8_030_261_248u64);
    assert_eq!(doc["steps"].as_array().unwrap().len(), 5);
    let first = &doc["steps"][0];
    assert_eq!(first["label"], "decode b1 c128");
    assert_eq!(first["prediction"]["bound"], "memory");
    assert!(first["measured"].is_null());
    assert_eq!(first["per_layer"].as_array().unwrap().len(), 32 * 11 + 3);
    assert!(doc["context_sweep"].as_array().unwrap().len() >= 5);
    for f in ["roof.png", "roof.svg", "roof-ops.png", "roof-ops.svg"] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
}

/// The SmolLM2 file of the shared models, if SLUICE_TEST_MODELS is set.
fn smollm2() -> Option<PathBuf> {
    let Some(root) = std::env::var_os("SLUICE_TEST_MODELS") else {
        eprintln!("SLUICE_TEST_MODELS is unset: skipping the SmolLM2 file test");
        return None;
    };
    Some(PathBuf::from(root).join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

#[test]
fn smollm2_file_matches_its_preset_and_runs_through_the_engine() {
    let Some(path) = smollm2() else { return };
    let spec = sluice_roofline::source::resolve_model(path.to_str().unwrap(), None).unwrap();
    let preset = presets::by_name("smollm2-135m").unwrap();
    let c = &spec.config;
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
        (
            preset.hidden_size,
            preset.intermediate_size,
            preset.n_layers,
            preset.n_heads,
            preset.n_kv_heads,
            preset.head_dim,
            preset.vocab_size
        )
    );
    assert_eq!(c.parameter_count(), preset.parameter_count());
    assert_eq!(spec.weights.token_embd, DType::Q8_0);
    assert_eq!(spec.weights.layers[7].down, DType::Q4_1);
    assert_eq!(spec.weights.label(), "mixed Q4_1/Q8_0");

    let plan = BenchPlan {
        steps: vec![
            Step::decode(1, 16),
            Step::decode(2, 16),
            Step::prefill(1, 16),
        ],
        reps: 1,
        stat: sluice_roofline::measure::Summary::Median,
        ops: false,
        engine: true,
        threads: Some(2),
        block_size: 16,
    };
    let m = run_bench(
        &Device::cpu(Some(2)),
        c,
        &WeightsFrom::File(path),
        &plan,
        &mut |_| {},
    )
    .unwrap();
    assert!(
        m.iter().all(|x| x.engine_step_s.is_some_and(|s| s > 0.0)),
        "{m:?}"
    );
}
