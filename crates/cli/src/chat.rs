//! `sluice chat`: a multi-turn chat in the terminal, either in-process on a model
//! (`--model`) or against any OpenAI-compatible server (`--url`, streaming
//! `/v1/chat/completions`).
//!
//! Replies stream to stdout; a line of figures follows each one on stderr. Commands:
//! `/reset`, `/system TEXT`, `/save FILE`, `/help`, `/quit`. Ctrl-C stops the reply being
//! written and keeps what came so far; at the prompt, a second Ctrl-C (or Ctrl-D) leaves.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sluice_engine::{EngineConfig, EngineRequest, FinishReason, LlmEngine, SamplingParams};
use sluice_model::chat_template::{ChatMessage, ChatTemplate};

use crate::generate::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Chat with an OpenAI-compatible server at this address (e.g. http://127.0.0.1:8080)
    /// instead of loading a model here.
    #[arg(long, conflicts_with = "model")]
    pub url: Option<String>,
    /// API key for --url (sent as a bearer token; falls back to $OPENAI_API_KEY).
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Model name to ask the server for (with --url; default: the first it lists).
    #[arg(long, requires = "url")]
    pub remote_model: Option<String>,
    /// System prompt for the conversation (`/system TEXT` changes it).
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens in one reply.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Sampling settings sent with every turn.
#[derive(Clone, Debug)]
struct Sampling {
    max_tokens: usize,
    temperature: f32,
    top_p: f32,
    seed: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    Stop,
    Length,
    Interrupted,
}

/// Figures shown under a reply.
#[derive(Clone, Debug)]
struct ReplyStats {
    prompt_tokens: Option<usize>,
    tokens: usize,
    /// Request sent -> first text.
    ttft: Option<Duration>,
    /// First text -> last text.
    decode: Option<Duration>,
    finish: Finish,
}

impl std::fmt::Display for ReplyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(t) = self.ttft {
            parts.push(format!("first token {:.0} ms", t.as_secs_f64() * 1e3));
        }
        if let Some(d) = self.decode.filter(|d| !d.is_zero() && self.tokens > 1) {
            parts.push(format!(
                "{:.1} tokens/s",
                (self.tokens - 1) as f64 / d.as_secs_f64()
            ));
        }
        parts.push(format!("{} tokens", self.tokens));
        if let Some(p) = self.prompt_tokens {
            parts.push(format!("prompt {p} tokens"));
        }
        match self.finish {
            Finish::Stop => {}
            Finish::Length => parts.push("cut at --max-tokens".into()),
            Finish::Interrupted => parts.push("stopped".into()),
        }
        write!(f, "[{}]", parts.join(" \u{b7} "))
    }
}

/// Where replies come from.
trait Backend {
    /// Shown in the banner and saved with the conversation.
    fn model_name(&self) -> &str;
    /// Streams the reply to `messages` into `out` until it ends or `stop` is set.
    fn reply(
        &mut self,
        messages: &[ChatMessage],
        sampling: &Sampling,
        stop: &AtomicBool,
        out: &mut dyn FnMut(&str),
    ) -> Result<ReplyStats>;
}

// ---------------------------------------------------------------------------
// In-process: the engine, stepped here.

struct Local {
    engine: LlmEngine,
    /// None: the model has no chat template; a plain `User:`/`Assistant:` transcript is used.
    template: Option<ChatTemplate>,
    name: String,
}

/// The stop string of the plain transcript (the model starting the next user turn).
const PLAIN_STOP: &str = "\nUser:";

impl Local {
    fn load(args: &ModelArgs) -> Result<Local> {
        let cfg = EngineConfig {
            max_num_seqs: 1,
            ..args.engine_config()?
        };
        let (engine, template, name) = args.build_engine(cfg)?;
        let tok = Arc::clone(engine.tokenizer());
        let template = match template {
            Some(src) => Some(
                ChatTemplate::new(&src, tok.bos_token(), tok.eos_token())
                    .context("the model's chat template does not compile")?,
            ),
            None => {
                eprintln!("note: `{name}` has no chat template; using a plain \"User:/Assistant:\" transcript");
                None
            }
        };
        Ok(Local {
            engine,
            template,
            name,
        })
    }

    fn prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let tok = self.engine.tokenizer();
        Ok(match &self.template {
            // The template writes the special tokens (BOS included) itself.
            Some(t) => tok.encode(&t.render(messages, true)?, false)?,
            None => tok.encode(&plain_transcript(messages), true)?,
        })
    }
}

/// `system\n\nUser: ...\nAssistant: ...\nUser: ...\nAssistant:` for models without a template.
fn plain_transcript(messages: &[ChatMessage]) -> String {
    let mut s = String::new();
    for m in messages {
        match m.role.as_str() {
            "system" => {
                s.push_str(m.content.trim());
                s.push_str("\n\n");
            }
            "user" => {
                s.push_str("User: ");
                s.push_str(m.content.trim());
                s.push('\n');
            }
            _ => {
                s.push_str("Assistant: ");
                s.push_str(m.content.trim());
                s.push('\n');
            }
        }
    }
    s.push_str("Assistant:");
    s
}

impl Backend for Local {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn reply(
        &mut self,
        messages: &[ChatMessage],
        sampling: &Sampling,
        stop: &AtomicBool,
        out: &mut dyn FnMut(&str),
    ) -> Result<ReplyStats> {
        let ids = self.prompt_ids(messages)?;
        // The longest a sequence may grow: the context, and what the KV cache holds.
        let room = self
            .engine
            .max_model_len()
            .min(self.engine.num_blocks() * self.engine.block_size());
        if ids.len() >= room {
            bail!(
                "the conversation is {} tokens, and the model takes at most {room}: /reset to start over",
                ids.len()
            );
        }
        let max_tokens = sampling.max_tokens.min(room - ids.len());
        let params = SamplingParams {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            seed: sampling.seed,
            max_tokens,
            stop: if self.template.is_none() {
                vec![PLAIN_STOP.to_string()]
            } else {
                Vec::new()
            },
            ..SamplingParams::default()
        };
        let n_prompt = ids.len();
        let t0 = Instant::now();
        let id = self.engine.add_request(EngineRequest {
            prompt_token_ids: ids,
            params,
            cache_salt: None,
        })?;
        let (mut first, mut last) = (None, None);
        let mut tokens = 0usize;
        let finish = 'run: loop {
            if stop.load(Ordering::SeqCst) {
                self.engine.abort(id);
                break Finish::Interrupted;
            }
            let outputs = match self.engine.step() {
                Ok(o) => o,
                Err(e) => {
                    self.engine.abort(id);
                    return Err(e.into());
                }
            };
            if outputs.is_empty() && !self.engine.has_unfinished() {
                bail!("the engine dropped the request");
            }
            for o in outputs.iter().filter(|o| o.id == id) {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                tokens = o.num_output_tokens;
                if !o.new_text.is_empty() {
                    out(&o.new_text);
                }
                if let Some(reason) = o.finished {
                    break 'run match reason {
                        FinishReason::Length => Finish::Length,
                        _ => Finish::Stop,
                    };
                }
            }
        };
        Ok(ReplyStats {
            prompt_tokens: Some(n_prompt),
            tokens,
            ttft: first.map(|f| f - t0),
            decode: first.zip(last).map(|(f, l)| l - f),
            finish,
        })
    }
}

// ---------------------------------------------------------------------------
// Remote: any OpenAI-compatible server, streaming Server-Sent Events.

struct Remote {
    agent: ureq::Agent,
    /// `http://host:port` (no trailing slash, no `/v1`).
    base: String,
    model: String,
    api_key: Option<String>,
}

/// `http://h:p`, `http://h:p/`, `http://h:p/v1/` -> `http://h:p`.
fn normalize_base(url: &str) -> Result<String> {
    let u = url.trim().trim_end_matches('/');
    if !(u.starts_with("http://") || u.starts_with("https://")) {
        bail!("--url must start with http:// or https:// (got `{url}`)");
    }
    Ok(u.strip_suffix("/v1").unwrap_or(u).to_string())
}

/// The message of an OpenAI error body, or the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| match &v["error"] {
            Value::String(s) => Some(s.clone()),
            e => e["message"].as_str().map(str::to_string),
        })
        .unwrap_or_else(|| body.trim().chars().take(500).collect())
}

fn status_error(url: &str, status: u16, body: &str) -> anyhow::Error {
    let msg = error_message(body);
    let hint = match status {
        401 => " (pass --api-key or set SLUICE_API_KEY)",
        429 => " (the server is busy; try again in a moment)",
        _ => "",
    };
    anyhow::anyhow!("{url} answered {status}: {msg}{hint}")
}

impl Remote {
    fn connect(url: &str, api_key: Option<String>, model: Option<String>) -> Result<Remote> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                    .build(),
            )
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        let base = normalize_base(url)?;
        let api_key = api_key
            .or_else(|| std::env::var("OPENAI_API_KEY").ok())
            .filter(|k| !k.is_empty());
        let mut remote = Remote {
            agent,
            base,
            model: model.unwrap_or_default(),
            api_key,
        };
        if remote.model.is_empty() {
            remote.model = remote.first_model()?;
        }
        Ok(remote)
    }

    fn auth(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        match &self.api_key {
            Some(k) => req.header("Authorization", &format!("Bearer {k}")),
            None => req,
        }
    }

    fn first_model(&self) -> Result<String> {
        let url = format!("{}/v1/models", self.base);
        let mut resp = self
            .auth(self.agent.get(&url))
            .call()
            .with_context(|| format!("cannot reach {url}"))?;
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading {url}"))?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp.status().as_u16(), &body));
        }
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))?;
        v["data"][0]["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{url} lists no model; name one with --remote-model"))
    }
}

impl Backend for Remote {
    fn model_name(&self) -> &str {
        &self.model
    }

    fn reply(
        &mut self,
        messages: &[ChatMessage],
        sampling: &Sampling,
        stop: &AtomicBool,
        out: &mut dyn FnMut(&str),
    ) -> Result<ReplyStats> {
        let url = format!("{}/v1/chat/completions", self.base);
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        });
        if let Some(seed) = sampling.seed {
            body["seed"] = json!(seed);
        }
        let t0 = Instant::now();
        let mut req = self.agent.post(&url).header("Accept", "text/event-stream");
        if let Some(k) = &self.api_key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let resp = req
            .content_type("application/json")
            .send(body.to_string())
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status().as_u16();
        let reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
        if !(200..300).contains(&status) {
            let mut text = String::new();
            let _ =
                std::io::Read::read_to_string(&mut std::io::Read::take(reader, 1 << 20), &mut text);
            return Err(status_error(&url, status, &text));
        }
        // Lines are read on their own thread so that Ctrl-C is seen even while the server
        // is quiet (a long prompt). Dropping the receiver ends that thread at its next
        // line, which closes the connection and lets the server cancel the request.
        let (tx, rx) = mpsc::channel::<std::io::Result<String>>();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let line = match r.read_until(b'\n', &mut buf) {
                    Ok(0) => return,
                    Ok(_) => Ok(String::from_utf8_lossy(&buf).trim_end().to_string()),
                    Err(e) => Err(e),
                };
                let failed = line.is_err();
                if tx.send(line).is_err() || failed {
                    return;
                }
            }
        });
        let (mut first, mut last) = (None, None);
        let (mut chunks, mut usage_tokens, mut prompt_tokens) = (0usize, None, None);
        let mut finish = None;
        loop {
            if stop.load(Ordering::SeqCst) {
                finish = Some(Finish::Interrupted);
                break;
            }
            let line = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(line)) => line,
                Ok(Err(e)) => bail!("the connection to {url} failed mid-reply: {e}"),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{url} closed the stream before the end of the reply")
                }
            };
            let Some(data) = line.strip_prefix("data:") else {
                continue; // blank separators, comments, `event:` lines
            };
            let data = data.trim();
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data)
                .with_context(|| format!("{url} sent an event that is not JSON: {data}"))?;
            if !v["error"].is_null() {
                bail!("{url} reported an error mid-reply: {}", error_message(data));
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                usage_tokens = u["completion_tokens"].as_u64().map(|n| n as usize);
                prompt_tokens = u["prompt_tokens"].as_u64().map(|n| n as usize);
            }
            let choice = &v["choices"][0];
            if let Some(text) = choice["delta"]["content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                chunks += 1;
                out(text);
            }
            match choice["finish_reason"].as_str() {
                Some("length") => finish = Some(Finish::Length),
                Some(_) => finish = Some(Finish::Stop),
                None => {}
            }
        }
        Ok(ReplyStats {
            prompt_tokens,
            tokens: usage_tokens.unwrap_or(chunks),
            ttft: first.map(|f| f - t0),
            decode: first.zip(last).map(|(f, l)| l - f),
            finish: finish.unwrap_or(Finish::Stop),
        })
    }
}

// ---------------------------------------------------------------------------
// The conversation and the prompt loop.

/// Ctrl-C state shared with the signal handler's thread.
#[derive(Default)]
struct Interrupts {
    /// A reply is being written: Ctrl-C stops it.
    generating: AtomicBool,
    stop: AtomicBool,
    /// At the prompt, one Ctrl-C was pressed already: the next one leaves.
    armed: AtomicBool,
}

struct Conversation {
    system: Option<String>,
    turns: Vec<ChatMessage>,
}

impl Conversation {
    fn messages(&self) -> Vec<ChatMessage> {
        let mut m = Vec::with_capacity(self.turns.len() + 1);
        if let Some(s) = self.system.as_ref().filter(|s| !s.trim().is_empty()) {
            m.push(ChatMessage::new("system", s.clone()));
        }
        m.extend(self.turns.iter().cloned());
        m
    }

    fn save(&self, path: &Path, model: &str) -> Result<usize> {
        let messages = self.messages();
        // The shape of a chat completions request: it can be sent back as is.
        let doc = json!({ "model": model, "messages": messages });
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        Ok(messages.len())
    }
}

const HELP: &str = "\
Commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt; `/system` shows it, `/system -` removes it
  /save FILE      write the conversation as JSON (a chat completions request body)
  /help           this list
  /quit           leave (Ctrl-D too)
End a line with \\ to continue the message on the next line.
Ctrl-C stops a reply; at the prompt, press it twice to leave.";

enum Input {
    Line(String),
    Eof,
}

/// Reads one message (lines ending in `\` continue it).
fn read_message(stdin: &mut impl BufRead, interactive: bool, ints: &Interrupts) -> Result<Input> {
    let mut text = String::new();
    let mut prompt = ">>> ";
    loop {
        if interactive {
            print!("{prompt}");
            std::io::stdout().flush()?;
        }
        let mut line = String::new();
        let n = stdin.read_line(&mut line).context("reading the terminal")?;
        ints.armed.store(false, Ordering::SeqCst);
        if n == 0 {
            return Ok(if text.is_empty() {
                Input::Eof
            } else {
                Input::Line(text)
            });
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(head) = line.strip_suffix('\\') {
            text.push_str(head);
            text.push('\n');
            prompt = "... ";
            continue;
        }
        text.push_str(line);
        return Ok(Input::Line(text));
    }
}

pub fn run(args: ChatArgs) -> Result<()> {
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let sampling = Sampling {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    let mut backend: Box<dyn Backend> = match &args.url {
        Some(url) => Box::new(Remote::connect(
            url,
            args.api_key.clone(),
            args.remote_model.clone(),
        )?),
        None => Box::new(Local::load(&args.model)?),
    };

    let ints = Arc::new(Interrupts::default());
    {
        let ints = Arc::clone(&ints);
        ctrlc::set_handler(move || {
            if ints.generating.load(Ordering::SeqCst) {
                ints.stop.store(true, Ordering::SeqCst);
            } else if ints.armed.swap(true, Ordering::SeqCst) {
                eprintln!();
                std::process::exit(130);
            } else {
                eprint!("\n(Ctrl-C again or /quit to leave)\n>>> ");
            }
        })
        .context("installing the Ctrl-C handler")?;
    }

    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let dim = std::io::stderr().is_terminal();
    let mut stdin = stdin.lock();
    let mut conv = Conversation {
        system: args.system.clone(),
        turns: Vec::new(),
    };
    eprintln!(
        "sluice chat with {}. /help lists commands; Ctrl-C stops a reply, Ctrl-D leaves.",
        backend.model_name()
    );
    loop {
        let text = match read_message(&mut stdin, interactive, &ints)? {
            Input::Eof => {
                if interactive {
                    println!();
                }
                return Ok(());
            }
            Input::Line(t) => t,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(cmd) = trimmed.strip_prefix('/') {
            let (name, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
            let rest = rest.trim();
            match name {
                "reset" | "clear" => {
                    conv.turns.clear();
                    println!("(conversation cleared)");
                }
                "system" if rest.is_empty() => match &conv.system {
                    Some(s) => println!("(system prompt: {s})"),
                    None => println!("(no system prompt; /system TEXT sets one)"),
                },
                "system" if rest == "-" => {
                    conv.system = None;
                    println!("(system prompt removed)");
                }
                "system" => {
                    conv.system = Some(rest.to_string());
                    println!("(system prompt set)");
                }
                "save" if rest.is_empty() => println!("(usage: /save FILE)"),
                "save" => match conv.save(Path::new(rest), backend.model_name()) {
                    Ok(n) => println!("(saved {n} messages to {rest})"),
                    Err(e) => eprintln!("error: {e:#}"),
                },
                "help" | "?" => println!("{HELP}"),
                "quit" | "exit" | "q" => return Ok(()),
                _ => println!("(unknown command /{name}; /help lists them)"),
            }
            continue;
        }

        conv.turns.push(ChatMessage::new("user", text.clone()));
        let messages = conv.messages();
        let mut reply = String::new();
        ints.stop.store(false, Ordering::SeqCst);
        ints.generating.store(true, Ordering::SeqCst);
        let result = {
            let mut stdout = std::io::stdout().lock();
            backend.reply(&messages, &sampling, &ints.stop, &mut |piece: &str| {
                reply.push_str(piece);
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            })
        };
        ints.generating.store(false, Ordering::SeqCst);
        if !reply.is_empty() && !reply.ends_with('\n') {
            println!();
        }
        match result {
            Ok(stats) => {
                if dim {
                    eprintln!("\x1b[2m{stats}\x1b[0m");
                } else {
                    eprintln!("{stats}");
                }
                // A stopped reply stays in the history as far as it got.
                conv.turns.push(ChatMessage::new("assistant", reply));
            }
            Err(e) => {
                conv.turns.pop();
                eprintln!("error: {e:#}");
                eprintln!("(that message was not added to the conversation)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_forms() {
        for u in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/",
            " http://h:1 ",
        ] {
            assert_eq!(normalize_base(u).unwrap(), "http://h:1", "{u}");
        }
        assert_eq!(
            normalize_base("https://x.y/api/v1").unwrap(),
            "https://x.y/api"
        );
        assert!(normalize_base("h:1").is_err());
        assert!(normalize_base("ftp://h").is_err());
    }

    #[test]
    fn error_messages_from_openai_bodies() {
        let body = r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert_eq!(error_message(body), "too long");
        assert_eq!(error_message(r#"{"error":"plain"}"#), "plain");
        assert_eq!(error_message("  not json  "), "not json");
        let e = status_error("http://h/v1/x", 429, r#"{"error":{"message":"busy"}}"#).to_string();
        assert!(
            e.contains("429") && e.contains("busy") && e.contains("try again"),
            "{e}"
        );
    }

    #[test]
    fn plain_transcript_layout() {
        let msgs = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello.\n"),
            ChatMessage::new("user", "Again"),
        ];
        assert_eq!(
            plain_transcript(&msgs),
            "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Again\nAssistant:"
        );
    }

    #[test]
    fn stats_line() {
        let s = ReplyStats {
            prompt_tokens: Some(20),
            tokens: 11,
            ttft: Some(Duration::from_millis(15)),
            decode: Some(Duration::from_millis(500)),
            finish: Finish::Interrupted,
        };
        assert_eq!(
            s.to_string(),
            "[first token 15 ms \u{b7} 20.0 tokens/s \u{b7} 11 tokens \u{b7} prompt 20 tokens \u{b7} stopped]"
        );
    }
}
