//! Greedy generation on a CUDA GPU equals the references: stories260K's README ids, and
//! the CPU's greedy ids for SmolLM2 (the full Q4_1 file under $SLUICE_TEST_MODELS, or a
//! smaller copy named by $SLUICE_CUDA_SMOLLM that fits the GPU machine's upload limit).
//! `--dtype f32` keeps exact weights and f32 matmuls on the GPU, so the two devices
//! compute the same function up to summation order.
//!
//! Skipped (with a note) where no CUDA device exists, unless SLUICE_REQUIRE_CUDA=1.

#[allow(dead_code)]
mod common;
use common::*;

fn have_cuda() -> bool {
    let ok = sluice_backend::Device::cuda(0, sluice_backend::cuda::CudaWeightType::F32).is_ok();
    if !ok {
        assert!(
            std::env::var("SLUICE_REQUIRE_CUDA").as_deref() != Ok("1"),
            "SLUICE_REQUIRE_CUDA=1 but no CUDA device"
        );
        eprintln!("note: no CUDA device; skipping");
    }
    ok
}

fn greedy_ids(model: &str, device: &str, extra: &[&str], n: &str) -> Vec<u32> {
    let mut args = vec![
        "generate",
        "-m",
        model,
        "-p",
        "Once upon a time",
        "--temperature",
        "0",
        "-n",
        n,
        "--ignore-eos",
        "--print-token-ids",
        "--device",
        device,
    ];
    args.extend_from_slice(extra);
    // The CPU side runs its f32-activation reference mode.
    let r = sluice_env(&args, &[("SLUICE_CPU_FEATURES", "reference")]);
    assert_eq!(r.code, 0, "{device}: stderr: {}", r.stderr);
    eprintln!(
        "{device} {extra:?}: {}",
        r.stderr.lines().rev().nth(1).unwrap_or("")
    );
    printed_ids(&r.stderr)
}

#[test]
fn stories260k_greedy_ids_on_cuda_match_the_reference() {
    if !have_cuda() {
        return;
    }
    let Some(dir) = models_dir() else { return };
    let model = dir.join("stories260K");
    let ids = greedy_ids(model.to_str().unwrap(), "cuda", &["--dtype", "f32"], "40");
    assert_eq!(
        &ids[..10],
        &[432, 383, 286, 261, 376, 298, 315, 421, 395, 317]
    );
    let cpu = greedy_ids(model.to_str().unwrap(), "cpu", &[], "40");
    assert_eq!(ids, cpu, "CUDA and CPU greedy ids differ");
}

#[test]
fn smollm2_greedy_ids_on_cuda_match_the_cpu() {
    if !have_cuda() {
        return;
    }
    let model = match std::env::var_os("SLUICE_CUDA_SMOLLM") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let Some(dir) = models_dir() else { return };
            dir.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    let m = model.to_str().unwrap();
    let cpu = greedy_ids(m, "cpu", &[], "48");
    let gpu = greedy_ids(m, "cuda", &["--dtype", "f32"], "48");
    assert_eq!(gpu, cpu, "CUDA (f32) and CPU greedy ids differ");
    // bf16 weights change the function; report how far the greedy ids agree.
    let bf16 = greedy_ids(m, "cuda", &["--dtype", "bf16"], "48");
    let same = bf16.iter().zip(&cpu).take_while(|(a, b)| a == b).count();
    eprintln!(
        "bf16 weights: first {same} of {} greedy ids equal the f32 ones",
        cpu.len()
    );
}
