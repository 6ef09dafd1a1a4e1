//! Golden generations: `sluice generate` greedy output equals the reference recorded in
//! each model's README.txt (../shared/models, through $SLUICE_TEST_MODELS).
//!
//! The README references were computed in f32 on dequantized weights. The default CPU
//! path quantizes activations to two int8 terms per element (`x ~ d (q1 + q2 / 256)`,
//! see the backend's `simd::acts`), about 1.5e-5 relative error per matmul output, so
//! it reproduces them, near-ties included (SmolLM2 at token ~5 and ~31, top-2 log-prob
//! margins 0.05 and 0.16, which one int8 term, as in llama.cpp, flips). The SmolLM2 text
//! also runs with `SLUICE_CPU_FEATURES=reference` (f32 activations, weights dequantized
//! row by row) to keep that mode checked.

mod common;
use common::*;

#[test]
fn stories260k_greedy_ids_match_the_reference() {
    // stories260K is F32: no activation quantization on any path.
    let Some(dir) = models_dir() else { return };
    let model = dir.join("stories260K");
    let r = sluice(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "Once upon a time",
        "--temperature",
        "0",
        "-n",
        "40",
        "--print-token-ids",
    ]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let ids = printed_ids(&r.stderr);
    assert_eq!(ids.len(), 40);
    // README.txt: first generated ids.
    assert_eq!(
        &ids[..10],
        &[432, 383, 286, 261, 376, 298, 315, 421, 395, 317]
    );
    let reference = ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.";
    assert!(
        r.stdout.trim_end().starts_with(reference) || reference.starts_with(r.stdout.trim_end()),
        "got {:?}",
        r.stdout
    );
}

#[test]
fn smollm2_q4_1_greedy_text_matches_the_reference() {
    let Some(dir) = models_dir() else { return };
    let model = dir.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    // The default path, then the f32-activation reference mode.
    let modes: [&[(&str, &str)]; 2] = [&[], &[("SLUICE_CPU_FEATURES", "reference")]];
    for env in modes {
        let r = sluice_env(
            &[
                "generate",
                "-m",
                model.to_str().unwrap(),
                "-p",
                "Once upon a time",
                "--temperature",
                "0",
                "-n",
                "40",
                "--print-token-ids",
            ],
            env,
        );
        assert_eq!(r.code, 0, "stderr: {}", r.stderr);
        let ids = printed_ids(&r.stderr);
        assert_eq!(ids.len(), 40);
        // Generated token 5 is the near-tie " Nova" / " New" (margin 0.05).
        let reference = ", the city of Nova Haven was a thriving metropolis, with towering skyscrapers and bustling streets. But as the years went by, the city began to lose its original essence. The once-blue skies of";
        let got = r.stdout.trim_end();
        assert!(!got.is_empty());
        assert!(
            reference.starts_with(got) || got.starts_with(reference),
            "{env:?}: got {got:?}"
        );
        assert!(
            got.len() > 150,
            "40 tokens should cover most of the reference, got {got:?}"
        );
    }
}

#[test]
fn smollm2_chat_answers_paris() {
    let Some(dir) = models_dir() else { return };
    let model = dir.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    // The README's exact chat prompt (16 tokens, special tokens parsed from the text).
    let readme_prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let r = sluice(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        readme_prompt,
        "--temperature",
        "0",
        "-n",
        "30",
        "--print-token-ids",
    ]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stdout.trim(), "The capital of France is Paris.");
    // Generation stopped at <|im_end|> (id 2), which is not printed.
    assert_eq!(printed_ids(&r.stderr).last(), Some(&2));
    assert!(r.stderr.contains("prompt 16 tokens"), "{}", r.stderr);
    // The same question through --chat (the model's template) with a system message. The
    // first token is a near-tie here ("The" -1.62 vs "La" -1.72 in f32), which one int8
    // activation term flips; the default path's two terms keep it.
    let r = sluice(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "What is the capital of France?",
        "--chat",
        "--system",
        "You are a helpful assistant.",
        "--temperature",
        "0",
        "-n",
        "30",
    ]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stdout.trim(), "The capital of France is Paris.");
}

#[test]
fn gemma3_q4_k_m_greedy_text_matches_the_reference() {
    let Some(dir) = models_dir() else { return };
    let model = dir.join("gemma-3-270m-q4_k_m/gemma-3-270m-q4_k_m.gguf");
    if !model.exists() {
        // CI pulls it (`sluice pull gemma-3-270m`) and sets SLUICE_REQUIRE_GEMMA=1.
        assert!(
            std::env::var_os("SLUICE_REQUIRE_GEMMA").is_none(),
            "{} is missing",
            model.display()
        );
        eprintln!("note: {} not present; skipping", model.display());
        return;
    }
    let r = sluice(&[
        "generate",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "Once upon a time",
        "--temperature",
        "0",
        "-n",
        "40",
        "--print-token-ids",
    ]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(printed_ids(&r.stderr).len(), 40);
    let reference = ", there was a little girl named Lily. She was a very smart girl, and she loved to play with her friends. One day, Lily was playing with her friends, and she was very excited";
    let got = r.stdout.trim_end();
    assert!(
        reference.starts_with(got) || got.starts_with(reference),
        "got {got:?}"
    );
    assert!(got.len() > 150, "got {got:?}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(dir) = models_dir() else { return };
    let model = dir.join("stories260K");
    let run = |seed: &str| {
        sluice(&[
            "generate",
            "-m",
            model.to_str().unwrap(),
            "-p",
            "Once upon a time",
            "--temperature",
            "0.9",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "-n",
            "30",
        ])
        .stdout
    };
    let (a, b, c) = (run("7"), run("7"), run("8"));
    assert_eq!(a, b);
    assert!(!a.is_empty());
    assert_ne!(a, c, "different seeds should differ");
}
