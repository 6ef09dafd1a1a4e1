//! Bad model files: one clear error line naming the problem, a non-zero exit, no panic.

mod common;
use common::*;
use std::io::Write;

fn assert_clean_failure(r: &Run, needles: &[&str]) {
    assert_ne!(r.code, 0, "expected failure, stdout: {}", r.stdout);
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line, got:\n{}", r.stderr);
    let lower = lines[0].to_lowercase();
    assert!(lower.starts_with("error:"), "{}", lines[0]);
    assert!(
        needles.iter().any(|n| lower.contains(&n.to_lowercase())),
        "error line {:?} names none of {needles:?}",
        lines[0]
    );
}

/// A GGUF v3 header with one tensor of the given dims and ggml type.
fn gguf_with_tensor(dims: &[u64], ggml_type: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata kv
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    let name = b"token_embd.weight";
    b.extend_from_slice(&(name.len() as u64).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ggml_type.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend_from_slice(&[0u8; 256]);
    b
}

fn write_temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    (dir, p)
}

#[test]
fn wrong_magic() {
    let (_d, p) = write_temp(
        "model.gguf",
        b"NOPE this is not a model file at all, just some text bytes....",
    );
    let r = sluice(&["generate", "-m", p.to_str().unwrap(), "-p", "hi"]);
    assert_clean_failure(
        &r,
        &["magic", "not a", "unrecognised", "unrecognized", "format"],
    );
}

#[test]
fn truncated_gguf() {
    let Some(dir) = models_dir() else { return };
    let src = std::fs::read(dir.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .unwrap();
    for cut in [10usize, 1000, 2_000_000, src.len() - 100] {
        let (_d, p) = write_temp("cut.gguf", &src[..cut]);
        let r = sluice(&["info", p.to_str().unwrap()]);
        assert_clean_failure(
            &r,
            &[
                "truncated",
                "too short",
                "end of file",
                "past the end",
                "unexpected eof",
                "beyond",
            ],
        );
    }
}

#[test]
fn absurd_dimensions() {
    let (_d, p) = write_temp("huge.gguf", &gguf_with_tensor(&[1 << 40, 1 << 40], 0));
    let r = sluice(&["info", p.to_str().unwrap()]);
    assert_clean_failure(
        &r,
        &[
            "dimension",
            "too large",
            "absurd",
            "overflow",
            "past the end",
            "size",
        ],
    );
}

#[test]
fn unsupported_tensor_type() {
    let (_d, p) = write_temp("iq.gguf", &gguf_with_tensor(&[256, 4], 16));
    let r = sluice(&["info", p.to_str().unwrap()]);
    assert_clean_failure(&r, &["IQ2_XXS"]);
}

#[test]
fn llama2c_checkpoint_without_tokenizer() {
    let Some(dir) = models_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("stories260K/stories260K.bin"),
        tmp.path().join("stories260K.bin"),
    )
    .unwrap();
    let r = sluice(&["generate", "-m", tmp.path().to_str().unwrap(), "-p", "Once"]);
    assert_clean_failure(&r, &["tokenizer"]);
}

#[test]
fn missing_model_path() {
    let r = sluice(&["generate", "-m", "/nonexistent/model.gguf", "-p", "hi"]);
    assert_clean_failure(&r, &["neither an existing path nor a known name"]);
}
