//! llama2.c checkpoints written by the test: tensor placement, tied/untied classifier,
//! directory detection with a tokenizer, and bad files.

mod loader_common;

use loader_common::*;
use sluice_backend::RopeStyle;
use sluice_model::loader::llama2c::{is_checkpoint, is_tokenizer, parse_header};
use sluice_model::loader::{
    load_model, load_model_parts, LoadOptions, ModelFormat, TokenizerSource,
};

struct Ckpt {
    dim: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    seq: usize,
    shared: bool,
}

const SMALL: Ckpt = Ckpt {
    dim: 32,
    hidden: 40,
    layers: 3,
    heads: 4,
    kv_heads: 2,
    vocab: 300,
    seq: 16,
    shared: true,
};

/// Header + floats 0, 1, 2, ... scaled (so each tensor's position is recognisable).
fn checkpoint_bytes(c: &Ckpt) -> (Vec<u8>, Vec<f32>) {
    let vocab_field = if c.shared {
        c.vocab as i32
    } else {
        -(c.vocab as i32)
    };
    let mut out = Vec::new();
    for v in [
        c.dim as i32,
        c.hidden as i32,
        c.layers as i32,
        c.heads as i32,
        c.kv_heads as i32,
        vocab_field,
        c.seq as i32,
    ] {
        out.extend(v.to_le_bytes());
    }
    let head = c.dim / c.heads;
    let kv = head * c.kv_heads;
    let (d, h, l) = (c.dim, c.hidden, c.layers);
    let n = c.vocab * d
        + l * (d + d * d + 2 * kv * d + d * d + d + 3 * h * d)
        + d
        + c.seq * head
        + if c.shared { 0 } else { c.vocab * d };
    let floats: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
    out.extend(f32_bytes(&floats));
    (out, floats)
}

/// A llama2.c tokenizer: <unk>, <s>, </s>, 256 byte tokens, then pieces.
fn tokenizer_bytes(vocab: usize) -> Vec<u8> {
    let mut pieces: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    pieces.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    let words = ["▁", "e", "t", "a", "o", "n", "▁t", "he", "▁the", "in"];
    let mut i = 0;
    while pieces.len() < vocab {
        pieces.push(format!("{}{}", words[i % words.len()], i / words.len()));
        i += 1;
    }
    pieces.truncate(vocab);
    let max_len = pieces.iter().map(|p| p.len()).max().unwrap() as i32;
    let mut out = max_len.to_le_bytes().to_vec();
    for (i, p) in pieces.iter().enumerate() {
        let score = if i < 259 { 0.0f32 } else { -(i as f32) };
        out.extend(score.to_le_bytes());
        out.extend((p.len() as i32).to_le_bytes());
        out.extend(p.as_bytes());
    }
    out
}

fn slice(floats: &[f32], start: usize, n: usize) -> &[f32] {
    &floats[start..start + n]
}

#[test]
fn tensors_land_in_place_tied_and_untied() {
    let dir = tempfile::tempdir().unwrap();
    for shared in [true, false] {
        let c = Ckpt { shared, ..SMALL };
        let (bytes, floats) = checkpoint_bytes(&c);
        let path = dir.path().join(format!("m{shared}.bin"));
        std::fs::write(&path, &bytes).unwrap();
        let parts = load_model_parts(&path, &LoadOptions::default()).unwrap();
        assert_eq!(parts.format, ModelFormat::Llama2c);
        let cfg = &parts.config;
        assert_eq!(
            (
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.n_layers,
                cfg.n_heads,
                cfg.n_kv_heads,
                cfg.head_dim
            ),
            (32, 40, 3, 4, 2, 8)
        );
        assert_eq!((cfg.vocab_size, cfg.max_position), (300, 16));
        assert_eq!(cfg.rope_style, RopeStyle::Interleaved);
        assert_eq!((cfg.rms_eps, cfg.rope_theta), (1e-5, 10_000.0));
        assert_eq!(cfg.tie_embeddings, shared);
        assert_eq!(parts.generation.eos_token_ids, vec![1]);

        let (d, h, l, kv) = (32, 40, 3, 16);
        let w = &parts.weights;
        let get = |n: &str| w.get(n).unwrap().as_f32().unwrap().to_vec();
        let mut pos = 300 * d;
        assert_eq!(get("token_embd.weight"), slice(&floats, 0, pos));
        let mut per_layer = |name: &str, n: usize| {
            for i in 0..l {
                assert_eq!(
                    get(&format!("blk.{i}.{name}")),
                    slice(&floats, pos + i * n, n),
                    "{name} {i}"
                );
            }
            pos += l * n;
        };
        per_layer("attn_norm.weight", d);
        per_layer("attn_q.weight", d * d);
        per_layer("attn_k.weight", kv * d);
        per_layer("attn_v.weight", kv * d);
        per_layer("attn_output.weight", d * d);
        per_layer("ffn_norm.weight", d);
        per_layer("ffn_gate.weight", h * d);
        per_layer("ffn_down.weight", d * h);
        per_layer("ffn_up.weight", h * d);
        assert_eq!(get("output_norm.weight"), slice(&floats, pos, d));
        pos += d + 16 * 8;
        if shared {
            assert!(!w.contains("output.weight"));
            assert_eq!(pos, floats.len());
        } else {
            assert_eq!(get("output.weight"), slice(&floats, pos, 300 * d));
            assert_eq!(pos + 300 * d, floats.len());
        }
        assert_eq!(w.get("blk.2.ffn_down.weight").unwrap().shape(), &[32, 40]);
        assert_eq!(w.get("blk.2.attn_k.weight").unwrap().shape(), &[16, 32]);
    }
}

#[test]
fn truncated_oversized_and_absurd_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = checkpoint_bytes(&SMALL);
    let path = dir.path().join("m.bin");
    for cut in [
        28,
        29,
        100,
        bytes.len() / 2,
        bytes.len() - 4,
        bytes.len() - 1,
    ] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
        assert_error(
            &msg,
            &path,
            &[
                "truncated llama2.c checkpoint",
                &format!("the file has {cut}"),
            ],
        );
    }
    // Shorter than a header: not recognised as anything.
    std::fs::write(&path, &bytes[..20]).unwrap();
    let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
    assert_error(&msg, &path, &["unrecognized model format"]);

    let mut longer = bytes.clone();
    longer.extend([0u8; 8]);
    std::fs::write(&path, &longer).unwrap();
    let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
    assert_error(&msg, &path, &["oversized"]);

    for (field, value, needle) in [
        (0, 1 << 30, "dim"),
        (2, 0, "n_layers"),
        (3, -4, "n_heads"),
        (5, i32::MIN + 1, "vocab_size"),
        (6, 1 << 30, "seq_len"),
        (3, 5, "multiple of n_heads"),
    ] {
        let mut b = bytes.clone();
        b[field * 4..field * 4 + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
        assert_error(&msg, &path, &[needle]);
    }
    let mut b = bytes.clone();
    b[..4].copy_from_slice(&0x616b_3432u32.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
    assert_error(&msg, &path, &["version 1/2"]);
}

#[test]
fn directory_with_checkpoint_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = checkpoint_bytes(&SMALL);
    std::fs::write(dir.path().join("model.bin"), &bytes).unwrap();

    // No tokenizer: located as missing, load_model says what it looked for.
    let parts = load_model_parts(dir.path(), &LoadOptions::default()).unwrap();
    assert!(matches!(
        parts.tokenizer_source,
        TokenizerSource::Missing(_)
    ));
    let msg = err_text(load_model(dir.path(), &LoadOptions::default()));
    assert!(
        msg.contains("tokenizer.bin") && msg.contains("tok*.bin") && msg.contains("300 tokens"),
        "{msg}"
    );

    // A tokenizer of the wrong vocabulary size is not taken.
    std::fs::write(dir.path().join("tok512.bin"), tokenizer_bytes(512)).unwrap();
    let parts = load_model_parts(dir.path(), &LoadOptions::default()).unwrap();
    assert!(matches!(
        parts.tokenizer_source,
        TokenizerSource::Missing(_)
    ));

    std::fs::write(dir.path().join("tok300.bin"), tokenizer_bytes(300)).unwrap();
    let parts = load_model_parts(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(
        parts.tokenizer_source,
        TokenizerSource::Llama2c(dir.path().join("tok300.bin"))
    );
    assert!(parts.path.ends_with("model.bin"));
    let m = load_model(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(m.tokenizer.vocab_size(), 300);
    assert_eq!(m.tokenizer.bos_id(), Some(1));
    assert!(m.generation.eos_token_ids.contains(&1) && m.generation.eos_token_ids.contains(&2));

    // tokenizer.bin is preferred.
    std::fs::write(dir.path().join("tokenizer.bin"), tokenizer_bytes(300)).unwrap();
    let parts = load_model_parts(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(
        parts.tokenizer_source,
        TokenizerSource::Llama2c(dir.path().join("tokenizer.bin"))
    );

    // An explicit tokenizer path wins.
    let opts = LoadOptions {
        tokenizer_path: Some(dir.path().join("tok300.bin")),
    };
    let parts = load_model_parts(&dir.path().join("model.bin"), &opts).unwrap();
    assert_eq!(
        parts.tokenizer_source,
        TokenizerSource::Llama2c(dir.path().join("tok300.bin"))
    );

    // Two checkpoints: ambiguous.
    std::fs::write(dir.path().join("other.bin"), &bytes).unwrap();
    let msg = err_text(load_model_parts(dir.path(), &LoadOptions::default()));
    assert!(msg.contains("several llama2.c checkpoints"), "{msg}");
}

#[test]
fn empty_directory_says_what_it_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hi").unwrap();
    let msg = err_text(load_model_parts(dir.path(), &LoadOptions::default()));
    assert_error(&msg, dir.path(), &["config.json", ".gguf", "llama2.c"]);
    let missing = dir.path().join("nope.gguf");
    let msg = err_text(load_model_parts(&missing, &LoadOptions::default()));
    assert!(msg.contains("nope.gguf"), "{msg}");
}

#[test]
fn sniffers() {
    let tok = tokenizer_bytes(300);
    assert!(is_tokenizer(&tok, Some(300)));
    assert!(is_tokenizer(&tok, None));
    assert!(!is_tokenizer(&tok, Some(301)));
    assert!(!is_tokenizer(&tok[..tok.len() - 1], None));
    let (ck, _) = checkpoint_bytes(&SMALL);
    assert!(!is_tokenizer(&ck, None));
    assert!(!is_checkpoint(&tok, tok.len() as u64));
    assert!(is_checkpoint(&ck, ck.len() as u64));
    assert!(!is_checkpoint(&ck, ck.len() as u64 + 1));
    let h = parse_header(&ck).unwrap();
    assert_eq!(h.expected_len(), Some(ck.len() as u64));
}
