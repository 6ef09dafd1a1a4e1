//! `sluice quantize` through the real binary on small generated GGUF files: Q8_0 error
//! bound, fallback for rows that do not fit a block, no file under OUT on failure,
//! unsupported types, and the output read back by the Python `gguf` package.

#[allow(dead_code)] // this test uses only part of the shared helpers
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::{quant::dequantize_row, DType, Tensor};
use sluice_model::loader::{GgufFile, GgufValue, GgufWriter};

/// A llama-shaped GGUF with random F32 weights: one layer, a tied embedding of
/// `vocab` rows, and `blk.0.attn_q.weight` with rows of 100 (not a multiple of any
/// block size). Metadata includes a string array, as a tokenizer's would.
fn synthetic_gguf(dir: &Path, vocab: usize, seed: u64) -> PathBuf {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = GgufWriter::new();
    let md = [
        ("general.architecture", GgufValue::String("llama".into())),
        ("general.name", GgufValue::String("tiny".into())),
        ("llama.block_count", GgufValue::U32(1)),
        ("llama.embedding_length", GgufValue::U32(256)),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(vec![
                GgufValue::String("a".into()),
                GgufValue::String("b".into()),
            ]),
        ),
        (
            "tokenizer.chat_template",
            GgufValue::String("{{ x }}".into()),
        ),
        ("general.file_type", GgufValue::U32(0)),
    ];
    for (k, v) in md {
        w.add_metadata(k, v).unwrap();
    }
    let mut add = |name: &str, shape: &[usize]| {
        let n: usize = shape.iter().product();
        // Mostly small values with a few outliers, like real weights.
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let x: f32 = rng.random_range(-1.0..1.0);
                if rng.random_range(0..100) == 0 {
                    x * 8.0
                } else {
                    x * 0.1
                }
            })
            .collect();
        w.add_tensor(name, Tensor::from_f32_cpu(shape, &data).unwrap())
            .unwrap();
    };
    add("token_embd.weight", &[vocab, 256]);
    add("output_norm.weight", &[256]);
    add("blk.0.attn_norm.weight", &[256]);
    add("blk.0.attn_q.weight", &[64, 100]);
    add("blk.0.attn_v.weight", &[64, 256]);
    add("blk.0.ffn_down.weight", &[256, 512]);
    let p = dir.join("tiny-f32.gguf");
    w.write(&p).unwrap();
    p
}

fn f32_values(t: &Tensor) -> Vec<f32> {
    let mut out = vec![0f32; t.numel()];
    dequantize_row(t.dtype(), t.cpu_bytes().unwrap(), &mut out).unwrap();
    out
}

fn assert_one_error_line(r: &Run, needle: &str) {
    assert_ne!(r.code, 0, "expected failure; stderr: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line, got:\n{}", r.stderr);
    assert!(lines[0].starts_with("error:"), "{}", lines[0]);
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{:?} does not mention {needle:?}",
        lines[0]
    );
}

/// Files in `dir` other than `keep`.
fn others(dir: &Path, keep: &[&Path]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !keep.contains(&p.as_path()))
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn q8_0_round_trip_within_the_block_error_bound() {
    let dir = tempfile::tempdir().unwrap();
    let input = synthetic_gguf(dir.path(), 96, 1);
    let out = dir.path().join("q8.gguf");
    let r = sluice(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "q8_0",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let src = GgufFile::open(&input).unwrap();
    let q = GgufFile::open(&out).unwrap();
    assert_eq!(q.get_u64("general.file_type"), Some(7));
    assert_eq!(q.get_u64("general.quantization_version"), Some(2));
    assert_eq!(q.get_str("tokenizer.chat_template"), Some("{{ x }}"));
    assert_eq!(
        q.get_array("tokenizer.ggml.tokens").map(|a| a.len()),
        Some(2)
    );
    let t = q.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(t.dtype(), DType::Q8_0);
    assert_eq!(t.shape(), &[256, 512]);
    let (x, y) = (
        f32_values(&src.tensor("blk.0.ffn_down.weight").unwrap()),
        f32_values(&t),
    );
    // Per block of 32: d = amax/127 stored as f16 (relative error <= 2^-11), q = round(x/d)
    // with |q| <= 127, so |q*f16(d) - x| <= d/2 + 127 * d * 2^-11.
    let mut worst = 0f32;
    for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
        let d = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
        let bound = d * (0.5 + 127.0 / 2048.0) + 1e-12;
        for (a, b) in xb.iter().zip(yb) {
            let e = (a - b).abs();
            assert!(e <= bound, "error {e} > bound {bound}");
            worst = worst.max(e / d.max(1e-30));
        }
    }
    // The bound is not vacuous: rounding errors near d/2 occur.
    assert!(worst > 0.4, "worst error {worst} d");
    // Tied embedding: llama.cpp's output policy (Q6_K wanted, 256 fits: Q8_0 target keeps Q8_0).
    assert_eq!(
        q.tensor_info("token_embd.weight").unwrap().dtype,
        DType::Q8_0
    );
    // Norms stay F32, untouched.
    let n = q.tensor("output_norm.weight").unwrap();
    assert_eq!(n.dtype(), DType::F32);
    assert_eq!(
        n.cpu_bytes().unwrap(),
        src.tensor("output_norm.weight")
            .unwrap()
            .cpu_bytes()
            .unwrap()
    );
}

#[test]
fn rows_that_fit_no_block_fall_back_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = synthetic_gguf(dir.path(), 64, 2);
    for (ty, want_v, want_down) in [
        ("Q4_0", DType::Q4_0, DType::Q4_0),
        ("Q4_K_M", DType::Q6_K, DType::Q6_K),
        ("Q4_K", DType::Q5_K, DType::Q5_K),
    ] {
        let out = dir.path().join(format!("{ty}.gguf"));
        let r = sluice(&[
            "quantize",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            ty,
            "--quiet",
        ]);
        assert_eq!(r.code, 0, "{ty}: {}", r.stderr);
        assert!(
            r.stderr.contains("fallback") && r.stderr.contains("row length 100"),
            "{ty}: {}",
            r.stderr
        );
        let q = GgufFile::open(&out).unwrap();
        // 100 is not a multiple of 32 (or 256): F16.
        assert_eq!(
            q.tensor_info("blk.0.attn_q.weight").unwrap().dtype,
            DType::F16,
            "{ty}"
        );
        // One layer: use_more_bits(0, 1) holds (Q4_K_M -> Q6_K); Q4_K_S gives attn_v of
        // layers < 4 and ffn_down of the first eighth (none of 1 layer) Q5_K.
        assert_eq!(
            q.tensor_info("blk.0.attn_v.weight").unwrap().dtype,
            want_v,
            "{ty}"
        );
        let down = q.tensor_info("blk.0.ffn_down.weight").unwrap().dtype;
        let want_down = if ty == "Q4_K" { DType::Q4_K } else { want_down };
        assert_eq!(down, want_down, "{ty}");
    }
}

#[test]
fn unsupported_type_is_one_clear_error_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = synthetic_gguf(dir.path(), 32, 3);
    let out = dir.path().join("x.gguf");
    let r = sluice(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "Q3_K",
    ]);
    assert_one_error_line(&r, "unsupported --type");
    assert!(r.stderr.contains("Q4_K_M"), "lists the supported types");
    assert!(others(dir.path(), &[&input]).is_empty());
}

#[test]
fn unwritable_output_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = synthetic_gguf(dir.path(), 32, 4);
    // A path under a regular file: its "directory" cannot exist.
    let out = input.join("out.gguf");
    let r = sluice(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "Q8_0",
    ]);
    assert_one_error_line(&r, "does not exist");
    // A directory as the output.
    let r = sluice(&[
        "quantize",
        input.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        "--type",
        "Q8_0",
    ]);
    assert_one_error_line(&r, "is a directory");
    assert!(others(dir.path(), &[&input]).is_empty());
    // Not a model.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").unwrap();
    let r = sluice(&[
        "quantize",
        junk.to_str().unwrap(),
        dir.path().join("o.gguf").to_str().unwrap(),
        "--type",
        "Q8_0",
    ]);
    assert_one_error_line(&r, "not a GGUF file");
}

/// A write that fails half way (the file-size limit is hit) leaves nothing under OUT
/// and no temporary behind.
#[test]
fn failed_write_leaves_no_file_under_the_output_name() {
    let dir = tempfile::tempdir().unwrap();
    // 8192 x 256 F32 embedding: ~2.2 MB of Q8_0 output, over the 1 MB limit below.
    let input = synthetic_gguf(dir.path(), 8192, 5);
    let out = dir.path().join("big.gguf");
    // SIGXFSZ ignored: the write returns EFBIG instead of killing the process.
    let script = format!(
        "trap '' XFSZ; ulimit -f 2048; exec '{}' quantize '{}' '{}' --type Q8_0 --quiet",
        env!("CARGO_BIN_EXE_sluice"),
        input.display(),
        out.display()
    );
    let o = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(
        !out.exists(),
        "a partial file appeared under the output name"
    );
    assert!(
        others(dir.path(), &[&input]).is_empty(),
        "left behind: {:?}",
        others(dir.path(), &[&input])
    );
    // Without the limit the same command succeeds.
    let r = sluice(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "Q8_0",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(out.exists());
}

/// Whether `python3 -c "import gguf"` works. Without it the test is skipped, unless
/// SLUICE_BIN is set (CI, which installs the package): then it fails.
fn python_gguf() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import gguf"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("SLUICE_BIN").is_none(),
            "SLUICE_BIN is set (CI) but `python3 -c 'import gguf'` fails: pip install gguf"
        );
        eprintln!("note: python3 with the `gguf` package not found; skipping");
    }
    ok
}

const READER: &str = r#"
import json, sys, gguf
r = gguf.GGUFReader(sys.argv[1])
out = {
    "tensors": [[t.name, [int(x) for x in t.shape], t.tensor_type.name, int(t.n_bytes)] for t in r.tensors],
    "file_type": int(r.fields["general.file_type"].contents()),
    "arch": r.fields["general.architecture"].contents(),
    "tokens": r.fields["tokenizer.ggml.tokens"].contents(),
    "alignment": int(r.alignment),
}
print(json.dumps(out))
"#;

#[test]
fn python_gguf_reads_what_quantize_writes() {
    if !python_gguf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = synthetic_gguf(dir.path(), 64, 6);
    for ty in [
        "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M",
    ] {
        let out = dir.path().join(format!("{ty}.gguf"));
        let r = sluice(&[
            "quantize",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            ty,
            "--quiet",
        ]);
        assert_eq!(r.code, 0, "{ty}: {}", r.stderr);
        let o = Command::new("python3")
            .args(["-c", READER, out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{ty}: python gguf failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        // Compare with what our reader sees (names, shapes innermost-first, types, sizes).
        let ours = GgufFile::open(&out).unwrap();
        let theirs = v["tensors"].as_array().unwrap();
        assert_eq!(theirs.len(), ours.tensors.len(), "{ty}");
        for (t, info) in theirs.iter().zip(&ours.tensors) {
            assert_eq!(t[0], info.name.as_str(), "{ty}");
            let ne: Vec<u64> = t[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert_eq!(ne, info.ne, "{ty} {}", info.name);
            assert_eq!(t[2], info.dtype.name(), "{ty} {}", info.name);
            assert_eq!(
                t[3].as_u64().unwrap() as usize,
                info.size,
                "{ty} {}",
                info.name
            );
        }
        // The 2-D weights got the requested type (where their rows fit it).
        let find = |n: &str| {
            theirs
                .iter()
                .find(|t| t[0] == n)
                .map(|t| t[2].as_str().unwrap().to_string())
                .unwrap()
        };
        let want_down = match ty {
            "Q4_K" => "Q4_K",
            "Q5_K" => "Q5_K",
            "Q4_K_M" => "Q6_K",
            other => other,
        };
        assert_eq!(find("blk.0.ffn_down.weight"), want_down, "{ty}");
        assert_eq!(find("output_norm.weight"), "F32", "{ty}");
        assert_eq!(v["arch"], "llama");
        assert_eq!(v["tokens"], serde_json::json!(["a", "b"]));
        assert_eq!(v["alignment"], 32);
        assert_eq!(
            v["file_type"].as_u64(),
            ours.get_u64("general.file_type"),
            "{ty}"
        );
    }
}

/// Writes a safetensors file of F32 tensors (8-byte header length, JSON header, data).
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// A one-layer Hugging Face llama (4 heads of 16, 2 KV heads) with a byte-level BPE
/// tokenizer, converted to GGUF: q/k rows permuted as llama.cpp's converter does,
/// hyperparameters and tokenizer written as `llama.*` / `tokenizer.ggml.*` keys.
#[test]
fn hugging_face_llama_converts_like_convert_hf_to_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    let (h, heads, kv_heads, ffn, vocab) = (64usize, 4usize, 2usize, 128usize, 6usize);
    let d = h / heads;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-0.5..0.5)).collect() };
    let q = rand(h * h);
    let k = rand(kv_heads * d * h);
    let tensors = vec![
        ("model.embed_tokens.weight", vec![vocab, h], rand(vocab * h)),
        ("model.norm.weight", vec![h], vec![1.0; h]),
        (
            "model.layers.0.input_layernorm.weight",
            vec![h],
            vec![1.0; h],
        ),
        (
            "model.layers.0.post_attention_layernorm.weight",
            vec![h],
            vec![1.0; h],
        ),
        (
            "model.layers.0.self_attn.q_proj.weight",
            vec![h, h],
            q.clone(),
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            vec![kv_heads * d, h],
            k.clone(),
        ),
        (
            "model.layers.0.self_attn.v_proj.weight",
            vec![kv_heads * d, h],
            rand(kv_heads * d * h),
        ),
        (
            "model.layers.0.self_attn.o_proj.weight",
            vec![h, h],
            rand(h * h),
        ),
        (
            "model.layers.0.mlp.gate_proj.weight",
            vec![ffn, h],
            rand(ffn * h),
        ),
        (
            "model.layers.0.mlp.up_proj.weight",
            vec![ffn, h],
            rand(ffn * h),
        ),
        (
            "model.layers.0.mlp.down_proj.weight",
            vec![h, ffn],
            rand(h * ffn),
        ),
    ];
    write_safetensors(&hf.join("model.safetensors"), &tensors);
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": h, "intermediate_size": ffn,
        "num_hidden_layers": 1, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "vocab_size": vocab, "_name_or_path": "tiny-hf"
    });
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "added_tokens": [{"id": 5, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4},
            "merges": ["a b", ["ab", "c"]]}
    });
    std::fs::write(hf.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let tok_config =
        serde_json::json!({"eos_token": "<|endoftext|>", "chat_template": "{{ messages }}"});
    std::fs::write(hf.join("tokenizer_config.json"), tok_config.to_string()).unwrap();

    let out = dir.path().join("f32.gguf");
    let r = sluice(&[
        "quantize",
        hf.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "F32",
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.get_u64("llama.block_count"), Some(1));
    assert_eq!(g.get_u64("llama.attention.head_count_kv"), Some(2));
    assert_eq!(g.get_u64("llama.rope.dimension_count"), Some(16));
    assert_eq!(g.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(g.get_str("tokenizer.chat_template"), Some("{{ messages }}"));
    assert_eq!(g.get_u64("tokenizer.ggml.eos_token_id"), Some(5));
    let strings = |key: &str| -> Vec<String> {
        g.get_array(key)
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        strings("tokenizer.ggml.tokens"),
        ["a", "b", "c", "ab", "abc", "<|endoftext|>"]
    );
    assert_eq!(strings("tokenizer.ggml.merges"), ["a b", "ab c"]);
    let types: Vec<i64> = g
        .get_array("tokenizer.ggml.token_type")
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(types, [1, 1, 1, 1, 1, 3]);
    // llama.cpp's permute: within each head of d rows, GGUF row 2i + j is HF row
    // j * d/2 + i.
    for (name, hf_w, n_heads) in [
        ("blk.0.attn_q.weight", &q, heads),
        ("blk.0.attn_k.weight", &k, kv_heads),
    ] {
        let w = f32_values(&g.tensor(name).unwrap());
        for r in 0..n_heads * d {
            let (hh, rr) = (r / d, r % d);
            let src = hh * d + (rr % 2) * (d / 2) + rr / 2;
            assert_eq!(
                &w[r * h..(r + 1) * h],
                &hf_w[src * h..(src + 1) * h],
                "{name} row {r}"
            );
        }
    }
    // Everything else as it was, and sluice loads the result (tokenizer included).
    let loaded = sluice_model::loader::load_model(&out, &Default::default()).unwrap();
    assert_eq!(loaded.config.n_kv_heads, 2);
    assert_eq!(loaded.tokenizer.encode("abc", false).unwrap(), vec![4]);
}
