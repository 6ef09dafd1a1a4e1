//! Test helpers: a small HTTP server on 127.0.0.1 that speaks just enough of the OpenAI
//! streaming protocol (and misbehaves on request), a tiny byte-level BPE tokenizer.json,
//! and starting a real `sluice serve` when `SLUICE_BIN` is set.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake server does with one POST.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behavior {
    /// Streams exactly `max_tokens` one-word tokens, then usage and `[DONE]`.
    Good,
    /// 500 with an OpenAI error body.
    Http500,
    /// 429 with a plain-text body.
    Http429Text,
    /// Two tokens, then the connection is closed without ending the chunked body.
    DropMidStream,
    /// A chunk that is not JSON.
    BadJson,
    /// `data: {"error": {...}}` after one token.
    ErrorInStream,
    /// A cleanly ended body with tokens but no finish_reason and no `[DONE]`.
    NoDone,
}

pub struct FakeServer {
    pub base_url: String,
    pub posts: Arc<AtomicUsize>,
}

async fn read_request(sock: &mut TcpStream) -> Option<(String, String, Value)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let first = lines.next()?.to_string();
    let mut parts = first.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Some((method, path, body))
}

async fn write_chunk(sock: &mut TcpStream, data: &str) -> std::io::Result<()> {
    let frame = format!("data: {data}\n\n");
    sock.write_all(format!("{:x}\r\n{frame}\r\n", frame.len()).as_bytes())
        .await?;
    sock.flush().await
}

async fn simple(sock: &mut TcpStream, status: &str, ctype: &str, body: &str) {
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

fn token_chunk(chat: bool, i: usize, finish: Option<&str>) -> String {
    if chat {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake",
               "choices": [{"index": 0, "delta": {"content": format!(" w{i}")}, "logprobs": null,
                            "finish_reason": finish}]})
        .to_string()
    } else {
        json!({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "fake",
               "choices": [{"index": 0, "text": format!(" w{i}"), "logprobs": null, "finish_reason": finish}]})
        .to_string()
    }
}

/// Prompt "tokens" as the fake server counts them: words, plus one for a BOS.
pub fn fake_prompt_tokens(prompt: &str) -> usize {
    prompt.split_whitespace().count() + 1
}

async fn handle(mut sock: TcpStream, behaviors: Arc<Vec<Behavior>>, posts: Arc<AtomicUsize>) {
    let Some((method, path, body)) = read_request(&mut sock).await else {
        return;
    };
    if method == "GET" {
        simple(&mut sock, "200 OK", "application/json", r#"{"object":"list","data":[{"id":"fake","object":"model","created":0,"owned_by":"test"}]}"#).await;
        return;
    }
    let n = posts.fetch_add(1, Ordering::SeqCst);
    let behavior = behaviors[n % behaviors.len()];
    let chat = path.contains("chat");
    let prompt = if chat {
        body["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    } else {
        body["prompt"].as_str().unwrap_or("").to_string()
    };
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    match behavior {
        Behavior::Http500 => {
            simple(&mut sock, "500 Internal Server Error", "application/json",
                   r#"{"error":{"message":"the model fell over","type":"server_error","param":null,"code":null}}"#).await;
            return;
        }
        Behavior::Http429Text => {
            simple(
                &mut sock,
                "429 Too Many Requests",
                "text/plain",
                "slow down",
            )
            .await;
            return;
        }
        _ => {}
    }
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    tokio::time::sleep(Duration::from_millis(3)).await;
    if chat {
        let role = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                          "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
        let _ = write_chunk(&mut sock, &role.to_string()).await;
    }
    let tokens = match behavior {
        Behavior::DropMidStream => 2,
        Behavior::ErrorInStream | Behavior::BadJson => 1,
        _ => max_tokens,
    };
    for i in 0..tokens {
        let finish = (behavior == Behavior::Good && i + 1 == tokens).then_some("length");
        if write_chunk(&mut sock, &token_chunk(chat, i, finish))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    match behavior {
        Behavior::Good => {
            let usage = json!({"id": "x", "object": "text_completion", "created": 0, "model": "fake", "choices": [],
                "usage": {"prompt_tokens": fake_prompt_tokens(&prompt), "completion_tokens": tokens,
                          "total_tokens": fake_prompt_tokens(&prompt) + tokens}});
            let _ = write_chunk(&mut sock, &usage.to_string()).await;
            let _ = write_chunk(&mut sock, "[DONE]").await;
            let _ = sock.write_all(b"0\r\n\r\n").await;
        }
        Behavior::DropMidStream => {
            // Abort: no terminating chunk; the client sees an incomplete body.
            let _ = sock.flush().await;
            drop(sock);
            return;
        }
        Behavior::BadJson => {
            let _ = write_chunk(&mut sock, "{this is not json").await;
            let _ = sock.write_all(b"0\r\n\r\n").await;
        }
        Behavior::ErrorInStream => {
            let _ = write_chunk(&mut sock, r#"{"error":{"message":"out of KV cache","type":"server_error","param":null,"code":null}}"#).await;
            let _ = sock.write_all(b"0\r\n\r\n").await;
        }
        Behavior::NoDone => {
            let _ = sock.write_all(b"0\r\n\r\n").await;
        }
        Behavior::Http500 | Behavior::Http429Text => {}
    }
    let _ = sock.shutdown().await;
}

impl FakeServer {
    /// Serves at most `max_conns` connections on 127.0.0.1; POSTs cycle through `behaviors`.
    pub async fn start(behaviors: Vec<Behavior>, max_conns: usize) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let posts = Arc::new(AtomicUsize::new(0));
        let behaviors = Arc::new(behaviors);
        let p = posts.clone();
        tokio::spawn(async move {
            for _ in 0..max_conns {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(handle(sock, behaviors.clone(), p.clone()));
            }
        });
        FakeServer {
            base_url: format!("http://{addr}"),
            posts,
        }
    }
}

/// GPT-2's byte-to-unicode table (the alphabet of byte-level BPE vocabularies).
fn byte_to_char() -> Vec<char> {
    let mut keep: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut map = vec!['\0'; 256];
    for &b in &keep {
        map[b as usize] = char::from_u32(b).unwrap();
    }
    let mut extra = 0;
    for b in 0..256u32 {
        if !keep.contains(&b) {
            map[b as usize] = char::from_u32(256 + extra).unwrap();
            extra += 1;
            keep.push(b);
        }
    }
    map
}

/// Writes a small byte-level BPE `tokenizer.json` into `dir`: the 256 byte symbols plus
/// merges that make common letter pairs and words single tokens (so decode -> re-encode of
/// random tokens merges pieces, which the exact-length prompt builder must handle), and one
/// special token.
pub fn write_bpe_tokenizer(dir: &Path) -> PathBuf {
    let map = byte_to_char();
    let enc = |s: &str| -> String { s.bytes().map(|b| map[b as usize]).collect() };
    let mut vocab = serde_json::Map::new();
    let mut next = 0u32;
    for c in &map {
        vocab.insert(c.to_string(), json!(next));
        next += 1;
    }
    let merges_plain = [
        ("t", "h"),
        ("th", "e"),
        ("h", "e"),
        (" ", "t"),
        (" t", "he"),
        ("i", "n"),
        ("in", "g"),
        ("e", "r"),
        (" ", "a"),
        ("a", "n"),
        ("an", "d"),
        ("n", "d"),
        (" a", "nd"),
        ("o", "n"),
        ("e", "s"),
        (" ", "s"),
        ("r", "e"),
        ("l", "l"),
        ("o", "u"),
        ("ou", "t"),
    ];
    let mut merges = Vec::new();
    for (a, b) in merges_plain {
        let (ea, eb) = (enc(a), enc(b));
        let joined = format!("{ea}{eb}");
        if !vocab.contains_key(&joined) {
            vocab.insert(joined, json!(next));
            next += 1;
        }
        merges.push(format!("{ea} {eb}"));
    }
    let special_id = next;
    vocab.insert("<|endoftext|>".into(), json!(special_id));
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": special_id, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, serde_json::to_string(&tj).unwrap()).unwrap();
    p
}

/// `$SLUICE_TEST_MODELS`, or `None` with a note (the test then returns early).
pub fn test_models(test: &str) -> Option<PathBuf> {
    match std::env::var_os("SLUICE_TEST_MODELS") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("note: {test} skipped: SLUICE_TEST_MODELS is not set");
            None
        }
    }
}

/// Builds bench args with everything defaulted, for `base_url`, sending model name "fake".
pub fn serve_args(base_url: &str, extra: &[&str]) -> sluice_bench::BenchServeArgs {
    serve_args_for(base_url, "fake", extra)
}

/// Builds bench args with everything defaulted, for `base_url` and the model name `model`.
pub fn serve_args_for(base_url: &str, model: &str, extra: &[&str]) -> sluice_bench::BenchServeArgs {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: sluice_bench::BenchServeArgs,
    }
    let mut argv = vec![
        "bench",
        "--base-url",
        base_url,
        "--model",
        model,
        "--no-progress",
    ];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("valid args").args
}

/// A running `sluice serve`, killed on drop.
pub struct SluiceServer {
    pub base_url: String,
    pub model_path: PathBuf,
    /// The model name the server answers to (its `/v1/models` id).
    pub model_name: String,
    child: std::process::Child,
}

impl Drop for SluiceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `$SLUICE_BIN serve` on a free 127.0.0.1 port with the SmolLM2 test model, and
/// waits until `/v1/models` answers (its first model id becomes `model_name`). `None` (with a note) when `SLUICE_BIN` or
/// `SLUICE_TEST_MODELS` is unset. The arguments can be overridden with
/// `SLUICE_SERVE_ARGS` (whitespace separated, `{model}` and `{port}` substituted).
pub async fn start_sluice(test: &str) -> Option<SluiceServer> {
    let Some(bin) = std::env::var_os("SLUICE_BIN") else {
        eprintln!(
            "note: {test} skipped: SLUICE_BIN (path of the built `sluice` binary) is not set"
        );
        return None;
    };
    let models = test_models(test)?;
    let model = models.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let template = std::env::var("SLUICE_SERVE_ARGS")
        .unwrap_or_else(|_| "serve --model {model} --host 127.0.0.1 --port {port}".to_string());
    let args: Vec<String> = template
        .split_whitespace()
        .map(|a| {
            a.replace("{model}", &model.to_string_lossy())
                .replace("{port}", &port.to_string())
        })
        .collect();
    // Tests run in the crate directory; a relative path is taken from the workspace root.
    let bin = {
        let p = PathBuf::from(&bin);
        if p.is_relative() && !p.exists() {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
        } else {
            p
        }
    };
    let child = std::process::Command::new(&bin)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start SLUICE_BIN {}: {e}", bin.display()));
    let mut server = SluiceServer {
        base_url: format!("http://127.0.0.1:{port}"),
        model_path: model,
        model_name: String::new(),
        child,
    };
    let client = reqwest::Client::new();
    let url = format!("{}/v1/models", server.base_url);
    for _ in 0..600 {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                let list: sluice_protocol::ModelList = r.json().await.expect("/v1/models JSON");
                server.model_name = list.data.first().expect("one model served").id.clone();
                return Some(server);
            }
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("sluice serve exited early with {status} (args: {args:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("sluice serve did not answer on {url} within 120 s");
}
