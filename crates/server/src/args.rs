//! `sluice serve` options that belong to the server and the scheduler. The model options
//! (`--model`, `--tokenizer`, `--threads`, `--kv-cache-memory`, `--block-size`,
//! `--max-model-len`) live in the CLI's `ModelArgs`, flattened beside these.

use std::time::Duration;

use sluice_engine::EngineConfig;

use crate::ServerConfig;

/// Parses `16MiB`, `512KiB`, `1MB`, `1000000` into bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 16MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "unknown size unit `{u}` in `{s}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    if !(v.is_finite() && v >= 1.0) {
        return Err(format!("size `{s}` must be at least one byte"));
    }
    Ok((v * mult) as usize)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer <key>` on /v1/*.
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Generation requests in flight (streams included) before new ones get 429.
    #[arg(long, default_value_t = 256, value_parser = parse_positive)]
    pub max_pending: usize,
    /// The model name clients must send (default: the model's own name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Most sequences stepped together.
    #[arg(long, default_value_t = 64, value_parser = parse_positive)]
    pub max_num_seqs: usize,
    /// Most tokens in one engine step (prompt chunks + decodes).
    #[arg(long, default_value_t = 512, value_parser = parse_positive)]
    pub max_num_batched_tokens: usize,
    /// Turn off prefix caching (KV reuse across requests sharing a prompt prefix).
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Largest request body, e.g. `16MiB`.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub max_request_body: usize,
    /// Seconds requests in flight may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

impl ServeArgs {
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            host: self.host.clone(),
            port: self.port,
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            max_pending: self.max_pending,
            served_model_name: self.served_model_name.clone(),
            max_body_bytes: self.max_request_body,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }

    /// The scheduler options applied on top of `base` (which carries the model options).
    pub fn engine_config(&self, base: EngineConfig) -> EngineConfig {
        EngineConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            enable_prefix_caching: !self.no_prefix_caching,
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn defaults_and_overrides_parse() {
        let c = Cli::try_parse_from(["x"]).expect("defaults parse");
        assert_eq!(c.serve.host, "127.0.0.1");
        assert_eq!(c.serve.port, 8080);
        assert_eq!(c.serve.max_pending, 256);
        assert_eq!(c.serve.max_request_body, 16 << 20);
        let c = Cli::try_parse_from([
            "x",
            "--port",
            "0",
            "--api-key",
            "k",
            "--max-pending",
            "3",
            "--no-prefix-caching",
            "--max-request-body",
            "1KiB",
        ])
        .expect("flags parse");
        let cfg = c.serve.server_config();
        assert_eq!(cfg.api_key.as_deref(), Some("k"));
        assert_eq!(cfg.max_pending, 3);
        assert_eq!(cfg.max_body_bytes, 1024);
        assert!(
            !c.serve
                .engine_config(EngineConfig::default())
                .enable_prefix_caching
        );
        assert!(Cli::try_parse_from(["x", "--max-pending", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--max-request-body", "12 parsecs"]).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1.5KB"), Ok(1500));
        assert!(parse_size("0").is_err());
        assert!(parse_size("-3MiB").is_err());
    }
}
