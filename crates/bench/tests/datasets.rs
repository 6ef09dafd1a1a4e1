//! Datasets and tokenizers: exact prompt token counts, the file formats, their errors.

mod common;

use common::{test_models, write_bpe_tokenizer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_bench::dataset::{sample_requests, DatasetConfig, DatasetName};
use sluice_bench::tokenizer::{load_tokenizer, BenchTokenizer};
use std::path::Path;

fn bpe() -> (tempfile::TempDir, BenchTokenizer) {
    let dir = tempfile::tempdir().unwrap();
    write_bpe_tokenizer(dir.path());
    // A directory with a tokenizer.json loads like a model directory.
    let tok = load_tokenizer(dir.path().to_str().unwrap()).expect("load test tokenizer");
    (dir, tok)
}

/// Checks every random/prefix prompt has exactly its stated token count under `tok`.
fn check_exact(tok: &BenchTokenizer, what: &str) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for target in [1usize, 2, 3, 7, 31, 64, 100, 257] {
        let p = tok.exact_prompt(&mut rng, "", target).unwrap();
        assert_eq!(
            tok.count(&p).unwrap(),
            target,
            "{what}: target {target}: {p:?}"
        );
    }
    let mut cfg = DatasetConfig::new(DatasetName::Random, 25);
    cfg.seed = 3;
    cfg.random_input_len = 120;
    cfg.random_output_len = 20;
    cfg.random_range_ratio = 0.5;
    let reqs = sample_requests(&cfg, Some(tok)).unwrap();
    assert_eq!(reqs.len(), 25);
    let mut distinct = std::collections::HashSet::new();
    for r in &reqs {
        let n = r.prompt_len.unwrap();
        assert!((60..=180).contains(&n), "{what}: length {n} out of range");
        assert!((10..=30).contains(&r.expected_output_len));
        assert_eq!(tok.count(&r.prompt).unwrap(), n, "{what}: {:?}", r.prompt);
        distinct.insert(n);
    }
    assert!(
        distinct.len() > 5,
        "{what}: lengths should vary with a range ratio"
    );

    let mut cfg = DatasetConfig::new(DatasetName::Prefix, 12);
    cfg.prefix_len = 40;
    cfg.prefix_suffix_len = 9;
    cfg.prefix_num_prefixes = 3;
    cfg.prefix_output_len = 5;
    let reqs = sample_requests(&cfg, Some(tok)).unwrap();
    // Group prompts by their first 40 tokens' text: exactly 3 shared prefixes, 4 each.
    let mut groups: std::collections::HashMap<String, usize> = Default::default();
    for r in &reqs {
        assert_eq!(r.prompt_len, Some(49));
        assert_eq!(tok.count(&r.prompt).unwrap(), 49, "{what}: {:?}", r.prompt);
        let ids = tok.encode(&r.prompt).unwrap();
        *groups.entry(format!("{:?}", &ids[..30])).or_default() += 1;
    }
    assert_eq!(groups.len(), 3, "{what}: {groups:?}");
    assert!(groups.values().all(|&n| n == 4));
}

#[test]
fn exact_lengths_with_a_merging_bpe() {
    let (_d, tok) = bpe();
    check_exact(&tok, "test BPE");
    // The special token is never sampled into prompts.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..20 {
        let p = tok.exact_prompt(&mut rng, "", 50).unwrap();
        assert!(!p.contains("<|endoftext|>"));
    }
    // A head longer than the target is refused, clearly.
    let e = tok
        .exact_prompt(&mut rng, "the the the the", 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prefix"), "{e}");
}

#[test]
fn exact_lengths_with_real_vocabularies() {
    let Some(models) = test_models("exact_lengths_with_real_vocabularies") else {
        return;
    };
    let mut files = vec![
        models.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"),
        models.join("stories260K/tok512.bin"),
    ];
    let gemma = models.join("gemma-3-270m-q4_k_m/gemma-3-270m-q4_k_m.gguf");
    if gemma.is_file() {
        files.push(gemma);
    }
    for f in files {
        let tok = load_tokenizer(f.to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"));
        check_exact(&tok, &f.display().to_string());
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn sharegpt_format_and_filters() {
    let (dir, tok) = bpe();
    let long_reply = "the answer goes on and on ".repeat(20);
    let data = serde_json::json!([
        {"id": "a", "conversations": [
            {"from": "human", "value": "tell me the story of the ring and the mountain"},
            {"from": "gpt", "value": long_reply}]},
        {"id": "b", "conversations": [{"from": "human", "value": "only one turn"}]},
        {"id": "c", "conversations": [
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "a reply that is long enough"}]},
        {"id": "d", "conversations": [
            {"from": "human", "value": "what is the thing out there in the sea"},
            {"from": "gpt", "value": "it is a whale, and it sings"}]},
    ]);
    let path = write(dir.path(), "sharegpt.json", &data.to_string());
    let mut cfg = DatasetConfig::new(DatasetName::Sharegpt, 2);
    cfg.path = Some(path.clone());
    let reqs = sample_requests(&cfg, Some(&tok)).unwrap();
    // "b" has one turn; "c"'s prompt "hi" is under 4 tokens: both filtered.
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert!(r.prompt.starts_with("tell me") || r.prompt.starts_with("what is"));
        assert_eq!(tok.count(&r.prompt).unwrap(), r.prompt_len.unwrap());
        let reply = if r.prompt.starts_with("tell") {
            long_reply.as_str()
        } else {
            "it is a whale, and it sings"
        };
        assert_eq!(r.expected_output_len, tok.count(reply).unwrap());
    }
    // More prompts than usable conversations: reused, still exactly num_prompts.
    cfg.num_prompts = 5;
    assert_eq!(sample_requests(&cfg, Some(&tok)).unwrap().len(), 5);
    // A fixed output length works without a tokenizer (prompt length then comes from usage).
    cfg.sharegpt_output_len = Some(7);
    let reqs = sample_requests(&cfg, None).unwrap();
    assert!(reqs
        .iter()
        .all(|r| r.expected_output_len == 7 && r.prompt_len.is_none()));
    cfg.sharegpt_output_len = None;
    let e = sample_requests(&cfg, None).unwrap_err().to_string();
    assert!(
        e.contains("--tokenizer") && e.contains("--sharegpt-output-len"),
        "{e}"
    );
    // Not JSON / wrong shape.
    cfg.path = Some(write(dir.path(), "bad.json", "[{\"conversations\": "));
    let e = sample_requests(&cfg, Some(&tok)).unwrap_err().to_string();
    assert!(
        e.starts_with("dataset: ") && e.contains("bad.json") && e.contains("not valid JSON"),
        "{e}"
    );
    cfg.path = Some(write(dir.path(), "obj.json", "{\"a\": 1}"));
    let e = sample_requests(&cfg, Some(&tok)).unwrap_err().to_string();
    assert!(e.contains("expected a JSON array"), "{e}");
}

#[test]
fn jsonl_format_and_errors() {
    let (dir, tok) = bpe();
    let path = write(
        dir.path(),
        "p.jsonl",
        "\"the first prompt\"\n\n{\"prompt\": \"and the second\", \"output_len\": 9}\n{\"text\": \"third\", \"max_tokens\": 3}\n",
    );
    let mut cfg = DatasetConfig::new(DatasetName::Jsonl, 3);
    cfg.path = Some(path);
    cfg.jsonl_output_len = 4;
    let reqs = sample_requests(&cfg, Some(&tok)).unwrap();
    assert_eq!(
        reqs.iter()
            .map(|r| r.expected_output_len)
            .collect::<Vec<_>>(),
        vec![4, 9, 3]
    );
    assert_eq!(reqs[1].prompt, "and the second");
    assert_eq!(
        reqs[1].prompt_len,
        Some(tok.count("and the second").unwrap())
    );
    for (text, want) in [
        ("\"ok\"\n{oops}\n", ":2: invalid JSON"),
        ("{\"prompt\": 5}\n", ":1: expected a \"prompt\" string"),
        (
            "{\"prompt\": \"x\", \"output_len\": 0}\n",
            ":1: output_len must be a positive integer",
        ),
        ("[1, 2]\n", ":1: expected a string or an object"),
        ("\n\n", "no prompts in the file"),
    ] {
        cfg.path = Some(write(dir.path(), "bad.jsonl", text));
        let e = sample_requests(&cfg, Some(&tok)).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    cfg.path = Some(dir.path().join("missing.jsonl"));
    let e = sample_requests(&cfg, Some(&tok)).unwrap_err().to_string();
    assert!(
        e.starts_with("invalid argument: dataset file not found"),
        "{e}"
    );
}

#[test]
fn tokenizer_sources_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let json = write_bpe_tokenizer(dir.path());
    // The file itself.
    let t = load_tokenizer(json.to_str().unwrap()).unwrap();
    assert!(t.count("the thing").unwrap() > 0);
    // A name found in a local Hugging Face cache layout.
    let cache = dir.path().join("hub");
    let snap = cache.join("models--acme--tiny/snapshots/abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::copy(&json, snap.join("tokenizer.json")).unwrap();
    std::fs::create_dir_all(cache.join("models--acme--tiny/refs")).unwrap();
    std::fs::write(cache.join("models--acme--tiny/refs/main"), "abc123\n").unwrap();
    std::env::set_var("HF_HUB_CACHE", &cache);
    let t = load_tokenizer("acme/tiny").expect("found in the cache");
    assert_eq!(t.id, "acme/tiny");
    let e = load_tokenizer("acme/absent").unwrap_err().to_string();
    assert!(
        e.starts_with("tokenizer: `acme/absent` is not a file") && e.contains("hub"),
        "{e}"
    );
    // Files that are not tokenizers.
    let e = load_tokenizer(write(dir.path(), "x.txt", "hello").to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a tokenizer.json, a GGUF file"), "{e}");
    let e = load_tokenizer(
        write(dir.path(), "broken.json", "{\"model\": 1}")
            .to_str()
            .unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("tokenizer: ") && e.contains("broken.json"),
        "{e}"
    );
    let e = load_tokenizer(
        write(dir.path(), "trunc.gguf", "GGUF\x03\x00")
            .to_str()
            .unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("tokenizer: ") && e.contains("trunc.gguf"),
        "{e}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = load_tokenizer(empty.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no tokenizer.json, .gguf or tokenizer.bin"),
        "{e}"
    );
}
