//! `sluice chat` driven through a pseudo-terminal, as a person would use it: typed lines,
//! the terminal's echo, Ctrl-C as a real SIGINT from the terminal driver.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};

/// `$SLUICE_TEST_MODELS` (laid out like ../shared/models), or None with a note.
fn models_dir() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_TEST_MODELS") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!(
                "note: SLUICE_TEST_MODELS is not set; skipping a test that needs real models"
            );
            None
        }
    }
}

/// A running `sluice chat` on a pseudo-terminal.
struct Session {
    child: Box<dyn Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    _master: Box<dyn MasterPty + Send>,
    rx: mpsc::Receiver<Vec<u8>>,
    /// Everything read so far (ANSI escapes removed, `\r\n` -> `\n`).
    seen: String,
    raw: Vec<u8>,
    /// `seen[..cursor]` has been matched already.
    cursor: usize,
}

/// Removes `ESC [ ... letter` sequences (the dimmed figures line).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Session {
    fn start(args: &[&str], cwd: &Path) -> Session {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: 50,
                cols: 200,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pseudo-terminal");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(args);
        cmd.cwd(cwd);
        cmd.env("SLUICE_LOG", "warn");
        let child = pty.slave.spawn_command(cmd).expect("spawn sluice chat");
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().expect("pty reader");
        let writer = pty.master.take_writer().expect("pty writer");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Session {
            child,
            writer,
            _master: pty.master,
            rx,
            seen: String::new(),
            raw: Vec::new(),
            cursor: 0,
        }
    }

    fn pump(&mut self, wait: Duration) -> bool {
        match self.rx.recv_timeout(wait) {
            Ok(bytes) => {
                self.raw.extend_from_slice(&bytes);
                self.seen = strip_ansi(&String::from_utf8_lossy(&self.raw)).replace("\r\n", "\n");
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for `needle` after the cursor; returns the text up to its end and moves past it.
    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen[self.cursor..].find(needle) {
                let end = self.cursor + i + needle.len();
                let text = self.seen[self.cursor..end].to_string();
                self.cursor = end;
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {needle:?} within {timeout:?}; the terminal shows after the last match:\n{}",
                    &self.seen[self.cursor..]
                );
            }
            self.pump(left.min(Duration::from_millis(200)));
        }
    }

    fn type_line(&mut self, line: &str) {
        // Enter on a terminal sends CR; the line discipline turns it into "\n".
        self.writer
            .write_all(line.as_bytes())
            .expect("write to the pty");
        self.writer.write_all(b"\r").expect("write to the pty");
        self.writer.flush().expect("flush the pty");
    }

    fn ctrl_c(&mut self) {
        self.writer.write_all(b"\x03").expect("write to the pty");
        self.writer.flush().expect("flush the pty");
    }

    /// Exit code, waiting at most `timeout`.
    fn exit_code(&mut self, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sluice") {
                return status.exit_code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "sluice chat did not exit; the terminal shows:\n{}",
                    self.seen
                );
            }
            self.pump(Duration::from_millis(100));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
    }
}

/// One reply as the terminal shows it: the text between the echoed line and the figures.
struct Turn {
    reply: String,
    prompt_tokens: usize,
    tokens: usize,
    figures: String,
}

fn number_before(figures: &str, suffix: &str) -> usize {
    let head = figures
        .split(suffix)
        .next()
        .unwrap_or_else(|| panic!("no `{suffix}` in {figures:?}"));
    let digits: String = head
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number before `{suffix}` in {figures:?}"))
}

fn turn(s: &mut Session, message: &str, timeout: Duration) -> Turn {
    s.type_line(message);
    // The terminal echoes the typed line.
    s.expect(&format!("{message}\n"), Duration::from_secs(10));
    let text = s.expect("[first token", timeout);
    let reply = text
        .trim_end_matches("[first token")
        .trim_end_matches('\n')
        .to_string();
    let figures = format!("[first token{}", s.expect("]", Duration::from_secs(10)));
    s.expect(">>> ", Duration::from_secs(10));
    Turn {
        reply,
        prompt_tokens: number_before_prompt(&figures),
        tokens: number_before(&figures, " tokens \u{b7}"),
        figures,
    }
}

/// The N of `prompt N tokens`.
fn number_before_prompt(figures: &str) -> usize {
    let rest = figures
        .split("prompt ")
        .nth(1)
        .unwrap_or_else(|| panic!("no prompt count in {figures:?}"));
    number_before(rest, " tokens")
}

#[test]
fn two_turns_reset_and_save_in_a_terminal() {
    let Some(models) = models_dir() else { return };
    let model = models.join("stories260K");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = Session::start(
        &[
            "chat",
            "--model",
            model.to_str().expect("utf-8 path"),
            "--temperature",
            "0",
            "--max-tokens",
            "48",
            "--threads",
            "1",
        ],
        dir.path(),
    );
    s.expect("/help lists commands", Duration::from_secs(60));
    s.expect(">>> ", Duration::from_secs(10));

    let t1 = turn(&mut s, "Once upon a time", Duration::from_secs(60));
    assert!(
        !t1.reply.trim().is_empty(),
        "first reply is empty: {}",
        t1.figures
    );
    assert!(t1.tokens > 0 && t1.tokens <= 48, "{}", t1.figures);

    // The second turn's prompt holds the first exchange: it is longer than the first
    // prompt plus the first reply.
    let t2 = turn(&mut s, "Then the sun came out.", Duration::from_secs(60));
    assert!(
        !t2.reply.trim().is_empty(),
        "second reply is empty: {}",
        t2.figures
    );
    assert!(
        t2.prompt_tokens > t1.prompt_tokens + t1.tokens,
        "second prompt ({}) should carry the first turn ({} + {} tokens)",
        t2.prompt_tokens,
        t1.prompt_tokens,
        t1.tokens
    );

    s.type_line("/save conversation.json");
    s.expect(
        "(saved 4 messages to conversation.json)",
        Duration::from_secs(10),
    );
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("conversation.json")).expect("saved file"),
    )
    .expect("saved JSON");
    let msgs = saved["messages"].as_array().expect("messages array");
    let roles: Vec<&str> = msgs
        .iter()
        .map(|m| m["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(msgs[0]["content"], "Once upon a time");
    assert_eq!(msgs[2]["content"], "Then the sun came out.");
    assert_eq!(
        msgs[1]["content"].as_str().unwrap_or("").trim(),
        t1.reply.trim()
    );

    // After /reset the same first message gives the same greedy reply from the same prompt.
    s.type_line("/reset");
    s.expect("(conversation cleared)", Duration::from_secs(10));
    s.expect(">>> ", Duration::from_secs(10));
    let t3 = turn(&mut s, "Once upon a time", Duration::from_secs(60));
    assert_eq!(
        t3.prompt_tokens, t1.prompt_tokens,
        "{} vs {}",
        t3.figures, t1.figures
    );
    assert_eq!(t3.reply, t1.reply);

    // Ctrl-C at the prompt warns; a second one leaves.
    s.ctrl_c();
    s.expect("Ctrl-C again or /quit to leave", Duration::from_secs(10));
    s.ctrl_c();
    assert_eq!(s.exit_code(Duration::from_secs(10)), 130);
}

#[test]
fn ctrl_c_stops_a_reply_and_the_chat_goes_on() {
    let Some(models) = models_dir() else { return };
    let model = models.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.exists() {
        eprintln!("note: {} is missing; skipping", model.display());
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = Session::start(
        &[
            "chat",
            "--model",
            model.to_str().expect("utf-8 path"),
            "--temperature",
            "0",
            "--max-tokens",
            "400",
        ],
        dir.path(),
    );
    s.expect(">>> ", Duration::from_secs(120));
    let message = "Write a long story about a dragon who learns to bake bread.";
    s.type_line(message);
    s.expect(&format!("{message}\n"), Duration::from_secs(10));
    // Wait for the reply to start (a few characters), then press Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.seen.len() < s.cursor + 12 {
        assert!(
            Instant::now() < deadline,
            "no reply text; terminal:\n{}",
            s.seen
        );
        s.pump(Duration::from_millis(50));
    }
    s.ctrl_c();
    let figures = s.expect("]", Duration::from_secs(30));
    assert!(
        figures.contains("stopped"),
        "reply was not stopped: {figures}"
    );
    let tokens = number_before(&figures, " tokens \u{b7}");
    assert!(tokens < 400, "{figures}");
    s.expect(">>> ", Duration::from_secs(10));

    // Still chatting: the partial reply is in the history, and a new turn works.
    s.type_line("/save partial.json");
    s.expect(
        "(saved 2 messages to partial.json)",
        Duration::from_secs(10),
    );
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("partial.json")).expect("saved file"),
    )
    .expect("saved JSON");
    let partial = saved["messages"][1]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!partial.is_empty(), "the stopped reply should be kept");
    s.type_line("/quit");
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);
}

/// `sluice serve` on a free port, stopped (killed) on drop.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Server {
    fn start(model: &Path) -> Server {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--model",
                model.to_str().expect("utf-8 path"),
                "--port",
                "0",
            ])
            .args(["--max-model-len", "2048"])
            .env("SLUICE_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sluice serve");
        let stderr = child.stderr.take().expect("stderr pipe");
        let (tx, rx) = mpsc::channel();
        // Reads the address from the startup line, then keeps draining the pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(i) = line.find("http://") {
                    let url: String = line[i..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    let _ = tx.send(url);
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("sluice serve did not print its address");
            }
        };
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn remote_chat_against_sluice_serve() {
    let Some(models) = models_dir() else { return };
    let model = models.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.exists() {
        eprintln!("note: {} is missing; skipping", model.display());
        return;
    }
    let server = Server::start(&model);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = Session::start(
        &[
            "chat",
            "--url",
            &server.url,
            "--temperature",
            "0",
            "--max-tokens",
            "300",
        ],
        dir.path(),
    );
    s.expect("sluice chat with ", Duration::from_secs(30));
    s.expect(">>> ", Duration::from_secs(10));

    // A whole reply, with the server's usage figures.
    let t1 = turn(
        &mut s,
        "Write a Python function that reverses a string.",
        Duration::from_secs(120),
    );
    assert!(!t1.reply.trim().is_empty(), "empty reply: {}", t1.figures);
    assert!(t1.prompt_tokens > 10 && t1.tokens > 0, "{}", t1.figures);

    // Ctrl-C stops the next one mid-stream; the chat goes on.
    let message = "Now tell me a long story about a dragon who learns to bake bread.";
    s.type_line(message);
    s.expect(&format!("{message}\n"), Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.seen.len() < s.cursor + 12 {
        assert!(
            Instant::now() < deadline,
            "no reply text; terminal:\n{}",
            s.seen
        );
        s.pump(Duration::from_millis(50));
    }
    s.ctrl_c();
    let figures = s.expect("]", Duration::from_secs(30));
    assert!(
        figures.contains("stopped"),
        "reply was not stopped: {figures}"
    );
    s.expect(">>> ", Duration::from_secs(10));

    // The third turn's request carries both earlier turns (the stopped one as far as it got).
    let t3 = turn(&mut s, "Thanks!", Duration::from_secs(120));
    assert!(
        t3.prompt_tokens > t1.prompt_tokens + t1.tokens,
        "third prompt ({}) should hold the earlier turns: {}",
        t3.prompt_tokens,
        t3.figures
    );
    s.type_line("/quit");
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);
}
