//! Shared helpers for the CLI tests: run the real `sluice` binary.

use std::path::PathBuf;
use std::process::Command;

/// `$SLUICE_TEST_MODELS` (laid out like ../shared/models), or None with a note.
pub fn models_dir() -> Option<PathBuf> {
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

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn sluice(args: &[&str]) -> Run {
    sluice_env(args, &[])
}

/// Runs sluice with extra environment variables.
pub fn sluice_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    // $SLUICE_BIN overrides the binary Cargo built (the GPU machine runs prebuilt test
    // binaries from another path).
    let bin = std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")));
    let out = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .env(
            "SLUICE_CACHE_DIR",
            std::env::temp_dir().join("sluice-test-cache-unused"),
        )
        .output()
        .expect("failed to run the sluice binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Greedy token ids printed by `generate --print-token-ids`.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn printed_ids(stderr: &str) -> Vec<u32> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("token ids: "))
        .unwrap_or_else(|| panic!("no token ids in stderr:\n{stderr}"));
    line.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("token id"))
        .collect()
}
