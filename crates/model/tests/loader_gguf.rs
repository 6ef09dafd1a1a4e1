//! GGUF reader/writer: round trips, configs from metadata, and hostile files.

mod loader_common;

use loader_common::*;
use sluice_backend::{DType, RopeStyle};
use sluice_model::config::{Arch, FfnActivation, Llama3RopeScaling, RopeScaling};
use sluice_model::loader::gguf_config::{config_from_gguf, llama3_rope_factors};
use sluice_model::loader::{
    load_model, load_model_parts, GgufFile, GgufValue, GgufWriter, LoadOptions, ModelFormat,
    TokenizerSource,
};

fn every_value_type() -> Vec<(&'static str, GgufValue)> {
    use GgufValue::*;
    vec![
        ("t.u8", U8(250)),
        ("t.i8", I8(-7)),
        ("t.u16", U16(65_000)),
        ("t.i16", I16(-32_000)),
        ("t.u32", U32(4_000_000_000)),
        ("t.i32", I32(-2_000_000_000)),
        ("t.u64", U64(u64::MAX - 3)),
        ("t.i64", I64(i64::MIN + 5)),
        ("t.f32", F32(-1.5e-7)),
        ("t.f64", F64(std::f64::consts::PI)),
        ("t.bool", Bool(true)),
        ("t.string", String("héllo, wörld ✓".into())),
        ("t.empty_string", String(std::string::String::new())),
        ("t.array_u8", Array(vec![U8(1), U8(2), U8(3)])),
        ("t.array_f32", Array(vec![F32(0.5), F32(-2.0)])),
        (
            "t.array_str",
            Array(vec![
                String("a".into()),
                String("".into()),
                String("ccc".into()),
            ]),
        ),
        ("t.array_bool", Array(vec![Bool(false), Bool(true)])),
        ("t.array_empty", Array(vec![])),
        (
            "t.array_nested",
            Array(vec![
                Array(vec![I64(1), I64(-2)]),
                Array(vec![]),
                Array(vec![I64(3)]),
            ]),
        ),
        (
            "t.array_deep",
            Array(vec![Array(vec![Array(vec![String("deep".into())])])]),
        ),
    ]
}

#[test]
fn round_trip_every_metadata_type_and_several_tensor_types() {
    let dir = tempfile::tempdir().unwrap();
    for alignment in [32usize, 64, 256] {
        let path = dir.path().join(format!("rt{alignment}.gguf"));
        let mut r = rng(alignment as u64);
        let mut w = GgufWriter::new();
        if alignment != 32 {
            w.set_alignment(alignment).unwrap();
        }
        for (k, v) in every_value_type() {
            w.add_metadata(k, v).unwrap();
        }
        let tensors: Vec<(&str, DType, Vec<usize>)> = vec![
            ("f32", DType::F32, vec![3, 5]),
            ("f16", DType::F16, vec![2, 7]),
            ("bf16", DType::BF16, vec![9]),
            ("i32", DType::I32, vec![2, 2, 3]),
            ("q4_0", DType::Q4_0, vec![3, 64]),
            ("q4_1", DType::Q4_1, vec![1, 32]),
            ("q5_0", DType::Q5_0, vec![2, 32]),
            ("q8_0", DType::Q8_0, vec![5, 96]),
            ("q4_k", DType::Q4_K, vec![2, 256]),
            ("q6_k", DType::Q6_K, vec![1, 2, 512]),
            ("four_dims", DType::F32, vec![2, 1, 3, 2]),
        ];
        let mut datas = Vec::new();
        for (name, dtype, shape) in &tensors {
            let bytes = random_tensor_bytes(&mut r, *dtype, shape);
            w.add_tensor_bytes(*name, *dtype, shape, &bytes).unwrap();
            datas.push(bytes);
        }
        w.write(&path).unwrap();

        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, alignment);
        assert_eq!(g.data_offset % alignment, 0);
        assert_eq!(g.file_len() % alignment, 0);
        for (k, v) in every_value_type() {
            assert_eq!(g.get(k), Some(&v), "key {k}");
        }
        let extra = usize::from(alignment != 32);
        assert_eq!(g.metadata.len(), every_value_type().len() + extra);
        assert_eq!(g.get_u64("t.u8"), Some(250));
        assert_eq!(g.get_u64("t.i8"), None);
        assert_eq!(g.get_f64("t.i32"), Some(-2_000_000_000.0));
        assert_eq!(g.get_str("t.string"), Some("héllo, wörld ✓"));
        assert_eq!(g.get_bool("t.bool"), Some(true));
        assert_eq!(g.get_array("t.array_u8").map(|a| a.len()), Some(3));
        assert_eq!(g.tensors.len(), tensors.len());
        for ((name, dtype, shape), data) in tensors.iter().zip(&datas) {
            let info = g.tensor_info(name).unwrap();
            assert_eq!(info.dtype, *dtype, "{name}");
            assert_eq!(&info.shape, shape, "{name}");
            let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            assert_eq!(info.ne, ne, "{name}");
            assert_eq!(info.offset % alignment as u64, 0, "{name}");
            assert_eq!(info.size, data.len());
            let t = g.tensor(name).unwrap();
            assert_eq!(t.shape(), shape.as_slice());
            assert_eq!(t.dtype(), *dtype);
            assert_eq!(t.cpu_bytes().unwrap(), data.as_slice(), "{name} data");
        }
        assert!(g.tensor("nope").is_err());
    }
}

#[test]
fn writer_rejects_mixed_arrays_and_duplicate_tensors() {
    let mut w = GgufWriter::new();
    let mixed = GgufValue::Array(vec![GgufValue::U8(1), GgufValue::F32(1.0)]);
    assert!(w.add_metadata("x", mixed).is_err());
    assert!(w.set_alignment(48).is_err());
    w.add_tensor_bytes("t", DType::F32, &[2], &[0; 8]).unwrap();
    assert!(w.add_tensor_bytes("t", DType::F32, &[2], &[0; 8]).is_err());
    assert!(w.add_tensor_bytes("u", DType::F32, &[3], &[0; 8]).is_err());
    assert!(w
        .add_tensor_bytes("q", DType::Q8_0, &[2, 31], &[0; 62])
        .is_err());
}

#[test]
fn llama_config_from_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dims::tiny();
    for (tied, dtype) in [(true, DType::Q8_0), (false, DType::F16)] {
        let path = dir.path().join(format!("llama-{tied}.gguf"));
        tiny_gguf("llama", &d, tied, dtype, 7).write(&path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let c = config_from_gguf(&g).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.name, "tiny-llama");
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.n_layers,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim
            ),
            (64, 96, 2, 4, 2, 16)
        );
        assert_eq!(c.vocab_size, 40);
        assert_eq!(c.max_position, 256);
        assert_eq!(c.rms_eps, 1e-5);
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.rope_style, RopeStyle::Interleaved);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.tie_embeddings, tied);
        assert!(!c.qkv_bias && !c.qk_norm && !c.sandwich_norms);
        assert_eq!(c.activation, FfnActivation::Silu);

        let parts = load_model_parts(&path, &LoadOptions::default()).unwrap();
        assert_eq!(parts.format, ModelFormat::Gguf { version: 3 });
        assert_eq!(parts.config, c);
        let n2d = 7 * d.layers + 1 + usize::from(!tied);
        assert_eq!(parts.quant_mix().get(dtype.name()), Some(&n2d));
        assert_eq!(parts.quant_mix().get("F32"), Some(&(2 * d.layers + 1)));
        // The file has no tokenizer.ggml.* keys: load_model must say so.
        assert!(matches!(
            parts.tokenizer_source,
            TokenizerSource::Missing(_)
        ));
        let msg = err_text(load_model(&path, &LoadOptions::default()));
        assert!(msg.contains("no embedded tokenizer"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}

#[test]
fn qwen2_and_gemma3_configs() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dims::tiny();
    let path = dir.path().join("qwen2.gguf");
    tiny_gguf("qwen2", &d, false, DType::Q8_0, 8)
        .write(&path)
        .unwrap();
    let parts = load_model_parts(&path, &LoadOptions::default()).unwrap();
    let c = &parts.config;
    assert!(c.qkv_bias);
    assert_eq!(c.rope_style, RopeStyle::Neox);
    assert!(parts.weights.contains("blk.1.attn_v.bias"));

    let g3 = Dims::tiny_gemma();
    let path = dir.path().join("gemma3.gguf");
    tiny_gguf("gemma3", &g3, true, DType::Q8_0, 9)
        .write(&path)
        .unwrap();
    let c = load_model_parts(&path, &LoadOptions::default())
        .unwrap()
        .config;
    assert_eq!(c.arch, Arch::Gemma3);
    assert_eq!(c.head_dim, 32);
    assert_eq!(c.rope_style, RopeStyle::Neox);
    assert_eq!(c.activation, FfnActivation::GeluTanh);
    assert!(c.qk_norm && c.sandwich_norms && c.tie_embeddings);
    assert_eq!(c.sliding_window, Some(16));
    assert_eq!(c.sliding_window_pattern, Some(6));
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.rope_local_theta, Some(10_000.0));
    assert_eq!(c.embedding_scale, Some(8.0));
    assert_eq!(c.attn_scale, Some(1.0 / (32f32).sqrt()));
    let windows: Vec<Option<usize>> = (0..6).map(|l| c.layer_window(l)).collect();
    assert_eq!(
        windows,
        [Some(16), Some(16), Some(16), Some(16), Some(16), None]
    );
    assert_eq!(c.layer_rope_theta(0), 10_000.0);
    assert_eq!(c.layer_rope_theta(5), 1_000_000.0);
}

#[test]
fn gemma3_per_layer_pattern_and_softcap_keys() {
    let dir = tempfile::tempdir().unwrap();
    let g3 = Dims::tiny_gemma();
    let mut w = tiny_gguf("gemma3", &g3, true, DType::F32, 10);
    let flags = [true, true, false, true, true, false];
    w.add_metadata(
        "gemma3.attention.sliding_window_pattern",
        GgufValue::Array(flags.iter().map(|&b| GgufValue::Bool(b)).collect()),
    )
    .unwrap();
    w.add_metadata("gemma3.final_logit_softcapping", GgufValue::F32(30.0))
        .unwrap();
    let path = dir.path().join("g.gguf");
    w.write(&path).unwrap();
    let c = load_model_parts(&path, &LoadOptions::default())
        .unwrap()
        .config;
    assert_eq!(c.sliding_window_pattern, Some(3));
    assert_eq!(c.final_logit_softcap, Some(30.0));

    let mut w = tiny_gguf("gemma3", &g3, true, DType::F32, 10);
    let irregular = [true, false, true, true, true, false];
    w.add_metadata(
        "gemma3.attention.sliding_window_pattern",
        GgufValue::Array(irregular.iter().map(|&b| GgufValue::Bool(b)).collect()),
    )
    .unwrap();
    w.write(&path).unwrap();
    let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
    assert_error(&msg, &path, &["not periodic"]);
}

#[test]
fn llama3_rope_table_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dims::tiny();
    let s = Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192,
    };
    let theta = 500_000.0;
    let table = llama3_rope_factors(&s, theta, d.head_dim);
    // The table must exercise all three regimes of the recipe.
    assert!(table.contains(&1.0) && table.contains(&8.0));
    assert!(table.iter().any(|&f| f > 1.0 && f < 8.0));

    let make = |table: &[f32], path: &std::path::Path| {
        let mut w = tiny_gguf("llama", &d, true, DType::F32, 11);
        w.add_metadata("llama.rope.freq_base", GgufValue::F32(theta))
            .unwrap();
        w.add_tensor_bytes(
            "rope_freqs.weight",
            DType::F32,
            &[table.len()],
            &f32_bytes(table),
        )
        .unwrap();
        w.write(path).unwrap();
    };
    let path = dir.path().join("l3.gguf");
    make(&table, &path);
    let parts = load_model_parts(&path, &LoadOptions::default()).unwrap();
    assert_eq!(parts.config.rope_scaling, RopeScaling::Llama3(s));
    assert!(!parts.weights.contains("rope_freqs.weight"));

    let mut bad = table.clone();
    bad[3] *= 1.5;
    make(&bad, &path);
    let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
    assert_error(&msg, &path, &["rope_freqs.weight", "llama3"]);
}

#[test]
fn linear_rope_scaling_and_unsupported_type() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dims::tiny();
    let path = dir.path().join("lin.gguf");
    let mut w = tiny_gguf("llama", &d, true, DType::F32, 12);
    w.add_metadata(
        "llama.rope.scaling.type",
        GgufValue::String("linear".into()),
    )
    .unwrap();
    w.add_metadata("llama.rope.scaling.factor", GgufValue::F32(4.0))
        .unwrap();
    w.write(&path).unwrap();
    let c = load_model_parts(&path, &LoadOptions::default())
        .unwrap()
        .config;
    assert_eq!(c.rope_scaling, RopeScaling::Linear(4.0));

    w.add_metadata("llama.rope.scaling.type", GgufValue::String("yarn".into()))
        .unwrap();
    w.write(&path).unwrap();
    let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
    assert_error(&msg, &path, &["yarn"]);
}

/// Writes a tiny llama after `edit` changed its tensor list; returns the load error.
fn llama_with(
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>)>),
) -> (String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = Dims::tiny();
    let mut tensors = gguf_tensors("llama", &d, true);
    edit(&mut tensors);
    let mut w = GgufWriter::new();
    for (k, v) in gguf_metadata("llama", &d) {
        w.add_metadata(k, v).unwrap();
    }
    let mut r = rng(3);
    for (name, shape) in tensors {
        let bytes = random_tensor_bytes(&mut r, DType::F32, &shape);
        w.add_tensor_bytes(name, DType::F32, &shape, &bytes)
            .unwrap();
    }
    let path = dir.path().join("m.gguf");
    w.write(&path).unwrap();
    (
        err_text(load_model_parts(&path, &LoadOptions::default())),
        path,
        dir,
    )
}

#[test]
fn missing_misshapen_and_unexpected_tensors() {
    let (msg, path, _d) = llama_with(|t| t.retain(|(n, _)| n != "blk.1.ffn_up.weight"));
    assert_error(&msg, &path, &["missing tensor `blk.1.ffn_up.weight`"]);

    let (msg, path, _d) = llama_with(|t| {
        for (n, s) in t.iter_mut() {
            if n == "blk.0.attn_k.weight" {
                *s = vec![64, 64];
            }
        }
    });
    assert_error(
        &msg,
        &path,
        &["blk.0.attn_k.weight", "[32, 64]", "[64, 64]"],
    );

    let (msg, path, _d) = llama_with(|t| t.push(("blk.0.attn_output.bias".into(), vec![64])));
    assert_error(&msg, &path, &["blk.0.attn_output.bias", "not used"]);

    let (msg, path, _d) = llama_with(|t| t.retain(|(n, _)| n != "token_embd.weight"));
    assert_error(&msg, &path, &["token_embd.weight"]);
}

#[test]
fn missing_and_mistyped_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = Dims::tiny();
    let path = dir.path().join("m.gguf");
    for (key, replacement) in [
        ("llama.embedding_length", None),
        ("llama.block_count", None),
        ("llama.attention.layer_norm_rms_epsilon", None),
        (
            "llama.context_length",
            Some(GgufValue::String("long".into())),
        ),
        (
            "general.architecture",
            Some(GgufValue::String("phi3".into())),
        ),
        ("general.architecture", Some(GgufValue::U32(1))),
    ] {
        let mut w = GgufWriter::new();
        for (k, v) in gguf_metadata("llama", &d) {
            if k != key {
                w.add_metadata(k, v).unwrap();
            }
        }
        if let Some(v) = &replacement {
            w.add_metadata(key, v.clone()).unwrap();
        }
        let mut r = rng(1);
        for (name, shape) in gguf_tensors("llama", &d, true) {
            let bytes = random_tensor_bytes(&mut r, DType::F32, &shape);
            w.add_tensor_bytes(name, DType::F32, &shape, &bytes)
                .unwrap();
        }
        w.write(&path).unwrap();
        let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
        let needle = if replacement == Some(GgufValue::String("phi3".into())) {
            "phi3"
        } else {
            key
        };
        assert_error(&msg, &path, &[needle]);
    }
}

// ---- hostile files -------------------------------------------------------------------

fn open_err(path: &std::path::Path) -> String {
    err_text(GgufFile::open(path))
}

#[test]
fn truncated_anywhere_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.gguf");
    let mut w = tiny_gguf("llama", &Dims::tiny(), true, DType::Q8_0, 5);
    for (k, v) in every_value_type() {
        w.add_metadata(k, v).unwrap();
    }
    w.write(&full).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let g = GgufFile::open(&full).unwrap();
    let header_end = g.data_offset;
    // The end of the last tensor's data (trailing alignment padding may follow).
    let data_end = g
        .tensors
        .iter()
        .map(|t| g.data_offset + t.offset as usize + t.size)
        .max()
        .unwrap();
    let cut = dir.path().join("cut.gguf");
    // Every byte of the header, then points through the data.
    let mut points: Vec<usize> = (0..header_end).collect();
    points.extend((header_end..data_end).step_by(997));
    points.push(data_end - 1);
    for n in points {
        // Parse from an anonymous map (writing thousands of files is slow); every 16th
        // cut also goes through a real file and the top-level loader.
        let through_file = n % 16 == 0 || n == 0;
        let result = if through_file {
            std::fs::write(&cut, &bytes[..n]).unwrap();
            GgufFile::open(&cut)
        } else {
            let mut m = memmap2::MmapMut::map_anon(n).unwrap();
            m.copy_from_slice(&bytes[..n]);
            GgufFile::from_map(&cut, std::sync::Arc::new(m.make_read_only().unwrap()))
        };
        let msg = err_text(result);
        assert!(!msg.contains('\n'), "cut at {n}: {msg}");
        assert!(
            msg.contains(&cut.display().to_string()),
            "cut at {n}: {msg}"
        );
        assert!(
            msg.contains("truncated")
                || msg.contains("too short")
                || msg.contains("past the end")
                || msg.contains("cannot fit")
                || msg.contains("absurd"),
            "cut at {n}: {msg}"
        );
        if through_file {
            assert!(load_model_parts(&cut, &LoadOptions::default()).is_err());
        }
    }
}

#[test]
fn wrong_magic_old_formats_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let mut raw = RawGguf::new(3, 0, 0);
    raw.buf[..4].copy_from_slice(b"GGUG");
    raw.write(&path);
    assert_error(&open_err(&path), &path, &["not a GGUF file", "GGUG"]);

    raw.buf[..4].copy_from_slice(b"tjgg");
    raw.write(&path);
    assert_error(&open_err(&path), &path, &["pre-GGUF"]);

    RawGguf::new(1, 0, 0).write(&path);
    assert_error(&open_err(&path), &path, &["version 1", "not supported"]);
    RawGguf::new(3u32.swap_bytes(), 0, 0).write(&path);
    assert_error(&open_err(&path), &path, &["big-endian"]);
    RawGguf::new(4, 0, 0).write(&path);
    assert_error(&open_err(&path), &path, &["version 4"]);

    // Version 2 reads like 3.
    let mut raw = RawGguf::new(2, 1, 1);
    raw.kv_u32("general.alignment", 32)
        .tensor("t", &[8], 0, 0)
        .data(32);
    raw.write(&path);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!((g.version, g.tensors.len()), (2, 1));
    // A top-level load of an unknown file names the formats it tried.
    std::fs::write(&path, b"hello world, this is not a model at all").unwrap();
    let msg = err_text(load_model_parts(&path, &LoadOptions::default()));
    assert_error(&msg, &path, &["unrecognized model format"]);
}

#[test]
fn absurd_counts_lengths_and_dims() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let cases: Vec<(RawGguf, &[&str])> = vec![
        (
            {
                let mut r = RawGguf::new(3, u64::MAX, 0);
                r.data(64);
                r
            },
            &["tensors, more than"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 0, 1 << 40);
                r.data(64);
                r
            },
            &["metadata entries, more than"],
        ),
        // key length far beyond the file
        (
            {
                let mut r = RawGguf::new(3, 0, 1);
                r.u64(u64::MAX / 2).data(64);
                r
            },
            &["key"],
        ),
        // string value longer than the file
        (
            {
                let mut r = RawGguf::new(3, 0, 1);
                r.str("k").u32(8).u64(1 << 50).data(16);
                r
            },
            &["`k`", "past the end"],
        ),
        // array count far beyond the file
        (
            {
                let mut r = RawGguf::new(3, 0, 1);
                r.str("k").u32(9).u32(4).u64(1 << 60).data(16);
                r
            },
            &["`k`", "cannot fit"],
        ),
        // unknown value type / array element type
        (
            {
                let mut r = RawGguf::new(3, 0, 1);
                r.str("k").u32(13).data(16);
                r
            },
            &["unknown value type 13"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 0, 1);
                r.str("k").u32(9).u32(77).u64(1).data(16);
                r
            },
            &["unknown array element type 77"],
        ),
        // bad alignment
        (
            {
                let mut r = RawGguf::new(3, 0, 1);
                r.kv_u32("general.alignment", 48).data(16);
                r
            },
            &["general.alignment"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 0, 1);
                r.kv_u32("general.alignment", 0).data(16);
                r
            },
            &["general.alignment"],
        ),
        // duplicate key
        (
            {
                let mut r = RawGguf::new(3, 0, 2);
                r.kv_u32("a", 1).kv_u32("a", 2).data(16);
                r
            },
            &["duplicate metadata key `a`"],
        ),
        // tensors: too many dims, zero dims, empty dim, overflowing dims
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[1, 1, 1, 1, 1], 0, 0).data(64);
                r
            },
            &["`t`", "5 dimensions"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[], 0, 0).data(64);
                r
            },
            &["`t`", "0 dimensions"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[4, 0], 0, 0).data(64);
                r
            },
            &["`t`", "empty dimension"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[1 << 32, 1 << 32, 1 << 32], 0, 0).data(64);
                r
            },
            &["`t`", "absurd dimensions"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[1 << 40, 1 << 20], 0, 0).data(64);
                r
            },
            &["`t`", "past the end"],
        ),
        // unsupported type, named
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[256], 16, 0).data(256);
                r
            },
            &["`t`", "IQ2_XXS", "16"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[256], 99, 0).data(256);
                r
            },
            &["`t`", "unknown", "99"],
        ),
        // row length not a multiple of the block size
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[48, 2], 8, 0).data(256);
                r
            },
            &["`t`", "row length 48", "Q8_0", "32"],
        ),
        // offset past the end / misaligned
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[8], 0, 4096).data(64);
                r
            },
            &["`t`", "past the end"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[8], 0, 8).data(64);
                r
            },
            &["`t`", "not a multiple of the alignment"],
        ),
        (
            {
                let mut r = RawGguf::new(3, 1, 0);
                r.tensor("t", &[8], 0, u64::MAX - 31).data(64);
                r
            },
            &["`t`", "past the end"],
        ),
        // duplicate tensor name
        (
            {
                let mut r = RawGguf::new(3, 2, 0);
                r.tensor("t", &[8], 0, 0).tensor("t", &[8], 0, 32).data(64);
                r
            },
            &["duplicate tensor `t`"],
        ),
    ];
    for (i, (raw, needles)) in cases.iter().enumerate() {
        raw.write(&path);
        let msg = open_err(&path);
        println!("case {i}: {msg}");
        assert_error(&msg, &path, needles);
    }
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.gguf");
    let mut raw = RawGguf::new(3, 0, 1);
    raw.str("k").u32(9);
    for _ in 0..10_000 {
        raw.u32(9).u64(1);
    }
    raw.u32(0).u64(0);
    raw.write(&path);
    assert_error(&open_err(&path), &path, &["nested deeper"]);
}

#[test]
fn huge_total_array_values_are_refused() {
    // 2^23 + 1 one-byte values: fits the file, but over the total budget.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.gguf");
    let n = (1u64 << 23) + 1;
    let mut raw = RawGguf::new(3, 0, 1);
    raw.str("k").u32(9).u32(0).u64(n);
    raw.buf.extend(std::iter::repeat_n(0u8, n as usize));
    raw.write(&path);
    assert_error(&open_err(&path), &path, &["`k`", "in total"]);
}
