//! `sluice quantize IN OUT --type T`: argument parsing, checks and the progress bar;
//! the work is `sluice_model::quantize`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sluice_model::quantize::{self, QuantTarget};

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Input: a GGUF file, or a Hugging Face model directory (config.json + safetensors,
    /// F32/F16/BF16). Quantized GGUF tensors are dequantized first.
    pub input: PathBuf,
    /// Output GGUF file (written to a temporary file beside it, renamed when complete).
    pub output: PathBuf,
    /// Output type: F16, BF16, F32, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K (= Q4_K_S),
    /// Q5_K (= Q5_K_S), Q6_K, or the mixes Q4_K_M, Q5_K_M (llama.cpp's recipes).
    #[arg(long = "type", short = 'T')]
    pub qtype: String,
    /// Threads for quantizing (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Print every tensor's type decision.
    #[arg(long)]
    pub verbose: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Refuses an output path that cannot be written, before any work is done.
fn check_output(output: &Path) -> Result<()> {
    if output.is_dir() {
        bail!(
            "output {} is a directory; name a .gguf file",
            output.display()
        );
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            output.display(),
            parent.display()
        );
    }
    Ok(())
}

/// One stderr line per kind of fallback (wanted type, row length, type used), naming
/// a few of the tensors; every tensor with `verbose`.
fn report_fallbacks(plan: &quantize::QuantizePlan, verbose: bool) {
    let mut groups: Vec<(quantize::Fallback, sluice_backend::DType, Vec<&str>)> = Vec::new();
    for t in &plan.tensors {
        let Some(f) = t.fallback else { continue };
        if verbose {
            eprintln!("fallback: {}: {f}; using {}", t.name, t.dtype);
        }
        match groups.iter_mut().find(|g| g.0 == f && g.1 == t.dtype) {
            Some(g) => g.2.push(&t.name),
            None => groups.push((f, t.dtype, vec![&t.name])),
        }
    }
    if verbose {
        return;
    }
    for (f, used, names) in groups {
        let more = if names.len() > 3 {
            format!(", ... {} more", names.len() - 3)
        } else {
            String::new()
        };
        eprintln!(
            "fallback: {} tensor(s): {f}; using {used} ({}{more})",
            names.len(),
            names[..names.len().min(3)].join(", ")
        );
    }
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let target = QuantTarget::parse(&a.qtype).with_context(|| {
        format!(
            "unsupported --type `{}` (supported: {})",
            a.qtype,
            QuantTarget::names()
        )
    })?;
    check_output(&a.output)?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let t0 = Instant::now();
    let plan = quantize::plan(&a.input, target)?;
    report_fallbacks(&plan, a.verbose);
    for t in &plan.tensors {
        if a.verbose {
            eprintln!(
                "{:<32} {:>18} {:>6} -> {}",
                t.name,
                format!("{:?}", t.shape),
                t.src_dtype.name(),
                t.dtype.name()
            );
        }
    }
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(plan.total_elements() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = quantize::execute(&plan, &a.output, threads, &mut |t| {
        bar.set_message(t.name.clone());
        bar.inc(t.numel() as u64);
    });
    bar.finish_and_clear();
    result
        .with_context(|| format!("quantizing {} to {}", a.input.display(), a.output.display()))?;
    let mix: Vec<String> = plan
        .type_counts()
        .iter()
        .map(|(d, n)| format!("{n} {d}"))
        .collect();
    eprintln!(
        "wrote {} ({}): {:.1} MB -> {:.1} MB, tensors: {}, in {:.1} s on {threads} threads",
        a.output.display(),
        target.name(),
        plan.input_bytes() as f64 / 1e6,
        plan.output_bytes() as f64 / 1e6,
        mix.join(", "),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
