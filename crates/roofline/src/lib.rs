//! sluice-roofline: where the time of a forward step goes, against the physical floor.
//!
//! `sluice roofline` counts the FLOPs and bytes of every op of one forward step
//! (`analytic`), times them on a hardware profile (`hardware`, `predict`): the floor of
//! an op is the larger of its compute time at peak and its memory time at full
//! bandwidth, the floor of a step their sum. With `--bench` it runs the model over a
//! grid of batch sizes and contexts (`measure`, op by op in `ops`) and reports the
//! fraction of the floor reached; `--measure` replaces datasheet peaks with probes
//! (`probe`). Output: Markdown tables, a roofline plot (`plot`), and JSON.

pub mod analytic;
pub mod error;
pub mod hardware;
pub mod measure;
pub mod ops;
pub mod plot;
pub mod predict;
pub mod presets;
pub mod probe;
pub mod random_weights;
pub mod report;
pub mod source;

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::json;
use sluice_backend::{CudaWeightType, DType, Device};

use analytic::{
    kv_bytes_per_token, matmul_parameters, stored_weight_bytes, ComputeClass, Precision, Step,
};
use hardware::{parse_dtype, DeviceKind, HardwareProfile};
use measure::{BenchPlan, Measurement, WeightsFrom};
use plot::{PlotPoint, PointSeries, RooflinePlot};
use predict::{predict, StepPrediction};
use report::{si, step_label};
use source::{ModelSource, ModelSpec};

pub use error::{Result, RooflineError};

/// `sluice roofline`: FLOPs and bytes per op, floors against a hardware profile, and
/// (with `--bench`) measured time next to the floor.
#[derive(clap::Args, Debug, Clone)]
pub struct RooflineArgs {
    /// Model: a preset (see --list), a GGUF file or model directory, or a Hugging Face
    /// config.json (shapes only).
    #[arg(long, short = 'm', default_value = "smollm2-135m")]
    pub model: String,
    /// Weight type of every matrix (F32, F16, BF16, Q8_0, Q6_K, Q4_K, Q4_1, Q4_0, ...):
    /// the type of a preset (default BF16), or a what-if for a file.
    #[arg(long)]
    pub weights: Option<String>,
    /// KV cache type (default: the hardware profile's).
    #[arg(long)]
    pub kv_dtype: Option<String>,
    /// Hardware: h100-sxm, h100-pcie, h200, a100-40gb, a100-80gb, l4, rtx-4090, cpu
    /// (this machine), or a TOML profile file.
    #[arg(long, default_value = "cpu")]
    pub hardware: String,
    /// Measure this machine's memory bandwidth and matmul rates with short probes and
    /// use them instead of the profile's peaks.
    #[arg(long)]
    pub measure: bool,
    /// Write the hardware profile used (after --measure) as TOML, to edit and reuse.
    #[arg(long)]
    pub save_profile: Option<PathBuf>,
    /// Decode batch sizes.
    #[arg(long, short = 'b', value_delimiter = ',', default_value = "1,4,16")]
    pub batch: Vec<usize>,
    /// Decode contexts: tokens already in the KV cache.
    #[arg(long, short = 'c', value_delimiter = ',', default_value = "128,1024")]
    pub context: Vec<usize>,
    /// Prefill prompt lengths (one sequence each).
    #[arg(long, short = 'p', value_delimiter = ',', default_value = "512")]
    pub prompt: Vec<usize>,
    /// Run the model over the grid and report measured time next to the floor.
    #[arg(long)]
    pub bench: bool,
    /// Device for --bench and --measure: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// With --bench and a preset: build the model from random weights of --weights type.
    #[arg(long)]
    pub random_weights: bool,
    /// With --bench: skip the op-by-op replay of each step.
    #[arg(long)]
    pub no_ops: bool,
    /// With --bench: also time the engine (scheduler, sampling) at the smallest context
    /// and for each prompt (needs the model's tokenizer; runs real prefills).
    #[arg(long)]
    pub engine: bool,
    /// Timed repetitions per step.
    #[arg(long, short = 'r', default_value_t = 5)]
    pub reps: usize,
    /// Statistic over repetitions: median, or min (closest to the uncontended time on a
    /// shared machine).
    #[arg(long, value_enum, default_value = "median")]
    pub stat: measure::Summary,
    /// CPU threads for --bench and --measure (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Tokens per KV block for --bench.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Write all numbers as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write roofline plots: PATH.png/.svg (one point per step) and PATH-ops.png/.svg
    /// (one point per op).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also print every layer's ops (JSON always has them with this flag).
    #[arg(long)]
    pub per_layer: bool,
    /// List the presets and hardware profiles, then exit.
    #[arg(long)]
    pub list: bool,
}

fn list() {
    println!("model presets (--model):");
    for p in presets::PRESETS {
        println!("  {:<20} {}", p.name, p.description);
    }
    println!("\nhardware profiles (--hardware):");
    for p in hardware::builtin_gpus() {
        println!(
            "  {:<42} {:>6.0} GB/s, {:>6.1} TFLOP/s bf16, {:>6.1} f32, {:>6.1} TOP/s int8",
            p.name, p.memory_bandwidth_gbs, p.peak_tflops_half, p.peak_tflops_f32, p.peak_tops_int8
        );
    }
    println!("  names: {}", hardware::BUILTIN.join(", "));
    println!("  cpu: this machine (peaks from cores x clock x SIMD width; bandwidth probed)");
}

fn dtype_arg(what: &'static str, s: &Option<String>) -> Result<Option<DType>> {
    s.as_deref().map(|s| parse_dtype(what, s)).transpose()
}

fn validate_grid(a: &RooflineArgs) -> anyhow::Result<()> {
    if a.batch.is_empty() || a.batch.contains(&0) {
        bail!("--batch needs positive batch sizes");
    }
    if a.prompt.contains(&0) {
        bail!("--prompt lengths must be positive");
    }
    if a.context.is_empty() {
        bail!("--context needs at least one context length");
    }
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    Ok(())
}

/// The hardware profile, measured when asked.
fn hardware_profile(
    a: &RooflineArgs,
    gpu: Option<&Device>,
) -> anyhow::Result<(HardwareProfile, Option<probe::HardwareMeasurement>)> {
    let llc = hardware::CpuInfo::detect().llc_bytes;
    let threads = a.threads;
    let measure = a.measure;
    let mut hw = hardware::resolve(&a.hardware, a.threads, || {
        if measure {
            // Replaced by the full probe below.
            (1.0, "measured".to_string())
        } else {
            let n = threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            let bw = probe::quick_bandwidth(n, llc);
            (
                bw.gbs,
                format!(
                    "streaming-read probe, {} MiB, {} thread(s)",
                    bw.buffer_bytes >> 20,
                    bw.threads
                ),
            )
        }
    })?;
    let mut measured = None;
    if a.measure {
        if hw.kind == DeviceKind::Gpu {
            let Some(dev) = gpu else {
                bail!(
                    "--measure probes the device it runs on; add --device cuda to measure {} (or use --hardware cpu)",
                    hw.name
                );
            };
            eprintln!(
                "measuring {} copy bandwidth and matmul rates...",
                dev.name()
            );
            measured = Some(probe::measure_gpu(&mut hw, dev)?);
            return Ok((hw, measured));
        }
        eprintln!("measuring memory bandwidth and matmul rates...");
        measured = Some(probe::measure_cpu(&mut hw, a.threads, llc)?);
    }
    Ok((hw, measured))
}

fn describe_model(spec: &ModelSpec, prec: &Precision) -> String {
    let c = &spec.config;
    let src = match &spec.source {
        ModelSource::Preset(n) => format!("preset {n}"),
        ModelSource::HfConfig(p) | ModelSource::File(p) => p.display().to_string(),
    };
    let d1 = Step::decode(1, 0);
    let read = analytic::step_cost(c, prec, &d1)
        .map(|s| s.weight_bytes())
        .unwrap_or(f64::NAN);
    format!(
        "model: {} ({src}): {} parameters, {} layers, hidden {}, FFN {}, heads {}/{} x {}, vocab {}{}\n\
         weights {}: {} stored, {} read per decode step ({}); 2 x {} matmul FLOPs per token\n\
         KV cache {}: {} per token; activations {}",
        c.name,
        si(c.parameter_count() as f64, ""),
        c.n_layers,
        c.hidden_size,
        c.intermediate_size,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.vocab_size,
        if c.tie_embeddings { ", tied head" } else { "" },
        prec.weights.label(),
        si(stored_weight_bytes(c, &prec.weights), "B"),
        si(read, "B"),
        if c.tie_embeddings {
            "the tied embedding table is read whole, as the LM head"
        } else {
            "the embedding table is gathered, not read"
        },
        si(matmul_parameters(c), ""),
        prec.kv,
        si(kv_bytes_per_token(c, prec.kv), "B"),
        prec.act
    )
}

fn describe_hardware(hw: &HardwareProfile) -> String {
    let mut s = format!(
        "hardware: {}: {:.1} GB/s; peaks {} f32, {} half, {} int8 (quantized matmuls at the {} rate); ridge {:.1} / {:.1} / {:.1} FLOP/B\n  source: {}",
        hw.name,
        hw.memory_bandwidth_gbs,
        si(hw.peak(ComputeClass::F32), "FLOP/s"),
        si(hw.peak(ComputeClass::Half), "FLOP/s"),
        si(hw.peak(ComputeClass::Int8), "OP/s"),
        hw.quant_matmul.name(),
        hw.ridge_intensity(ComputeClass::F32),
        hw.ridge_intensity(ComputeClass::Half),
        hw.ridge_intensity(ComputeClass::Int8),
        hw.source
    );
    if let Some(g) = hw.memory_gib {
        s.push_str(&format!("\n  memory: {g:.1} GiB"));
    }
    s
}

fn step_points(preds: &[StepPrediction], measured: &[Measurement]) -> Vec<PointSeries> {
    let predicted = PointSeries {
        name: "predicted (floor)".into(),
        color: 0,
        filled: false,
        labels: measured.is_empty(),
        points: preds
            .iter()
            .map(|p| PlotPoint {
                label: step_label(&p.step),
                intensity: p.intensity(),
                flops_per_s: p.flops_per_s(),
            })
            .collect(),
    };
    let mut out = vec![predicted];
    if !measured.is_empty() {
        out.push(PointSeries {
            name: "measured".into(),
            color: 1,
            filled: true,
            labels: true,
            points: preds
                .iter()
                .filter_map(|p| {
                    let m = measured.iter().find(|m| m.step == p.step)?;
                    Some(PlotPoint {
                        label: step_label(&p.step),
                        intensity: p.intensity(),
                        flops_per_s: p.flops / m.forward_s,
                    })
                })
                .collect(),
        });
    }
    out
}

fn op_points(
    pred: &StepPrediction,
    m: Option<&Measurement>,
    color: usize,
    tag: &str,
) -> Vec<PointSeries> {
    let mut out = vec![PointSeries {
        name: format!("{tag}: predicted"),
        color,
        filled: false,
        labels: m.is_none_or(|m| m.ops.is_empty()),
        points: pred
            .ops
            .iter()
            .map(|o| PlotPoint {
                label: o.cost.kind.name().to_string(),
                intensity: o.cost.intensity(),
                flops_per_s: o.cost.flops / o.floor_s,
            })
            .collect(),
    }];
    if let Some(m) = m.filter(|m| !m.ops.is_empty()) {
        out.push(PointSeries {
            name: format!("{tag}: measured"),
            color,
            filled: true,
            labels: true,
            points: pred
                .ops
                .iter()
                .filter_map(|o| {
                    let t = m.ops.iter().find(|x| x.kind == o.cost.kind)?.seconds;
                    Some(PlotPoint {
                        label: o.cost.kind.name().to_string(),
                        intensity: o.cost.intensity(),
                        flops_per_s: o.cost.flops / t,
                    })
                })
                .collect(),
        });
    }
    out
}

/// Runs `sluice roofline`.
pub fn run(a: RooflineArgs) -> anyhow::Result<()> {
    if a.list {
        list();
        return Ok(());
    }
    validate_grid(&a)?;
    let mut a = a;
    // The GPU is only opened when something runs on it (--bench or --measure).
    let gpu = if a.device.trim().eq_ignore_ascii_case("cpu") {
        None
    } else if a.bench || a.measure {
        let d = Device::parse(&a.device, a.threads, CudaWeightType::Auto)
            .with_context(|| format!("--device {}", a.device))?;
        if a.hardware == "cpu" {
            // Default profile: the datasheet of the card we run on.
            a.hardware = hardware::builtin_for_gpu_name(&d.name())
                .with_context(|| {
                    format!(
                        "no built-in profile for {}; pass --hardware (one of {}) or a .toml file",
                        d.name(),
                        hardware::BUILTIN.join(", ")
                    )
                })?
                .to_string();
        }
        Some(d)
    } else {
        let d = a.device.trim().to_ascii_lowercase();
        let ordinal_ok = d.strip_prefix("cuda").is_some_and(|r| {
            r.is_empty()
                || r.strip_prefix(':')
                    .is_some_and(|n| n.parse::<usize>().is_ok())
        });
        if !ordinal_ok {
            bail!("unknown device `{}` (cpu, cuda or cuda:N)", a.device);
        }
        None // predictions only: nothing runs on the device
    };
    let weights = dtype_arg("--weights", &a.weights)?;
    let kv_override = dtype_arg("--kv-dtype", &a.kv_dtype)?;
    let spec = source::resolve_model(&a.model, weights)?;
    let (hw, measured_hw) = hardware_profile(&a, gpu.as_ref())?;
    if let Some(p) = &a.save_profile {
        hw.save(p)?;
        eprintln!("wrote hardware profile {}", p.display());
    }
    let cfg = &spec.config;
    let prec = Precision {
        weights: spec.weights.clone(),
        kv: kv_override.map(Ok).unwrap_or_else(|| hw.kv())?,
        act: hw.activation()?,
        quant_matmul: hw.quant_matmul,
    };
    println!("{}", describe_model(&spec, &prec));
    println!("{}\n", describe_hardware(&hw));

    let mut steps: Vec<Step> = Vec::new();
    for &c in &a.context {
        for &b in &a.batch {
            steps.push(Step::decode(b, c));
        }
    }
    for &p in &a.prompt {
        steps.push(Step::prefill(1, p));
    }
    let preds: Vec<StepPrediction> = steps
        .iter()
        .map(|s| predict(cfg, &prec, *s, &hw))
        .collect::<Result<_>>()
        .with_context(|| format!("the grid does not fit {}", cfg.name))?;

    let measured: Vec<Measurement> = if a.bench {
        match (hw.kind, gpu.is_some()) {
            (DeviceKind::Gpu, false) => bail!(
                "--bench runs on this CPU (add --device cuda to run on the GPU); measured CPU times against the {} floor would mean nothing: use --hardware cpu or a CPU profile file",
                hw.name
            ),
            (DeviceKind::Cpu, true) => bail!(
                "--device {} runs on the GPU; measured against a CPU profile it would mean nothing: pass a GPU --hardware profile",
                a.device
            ),
            _ => {}
        }
        let from = match &spec.source {
            ModelSource::File(p) => {
                if weights.is_some() {
                    bail!("--weights changes the types of a file's weights only in the analysis; --bench runs the file as stored (drop --weights)");
                }
                WeightsFrom::File(p.clone())
            }
            ModelSource::Preset(name) if a.random_weights => WeightsFrom::Random {
                dtype: weights.unwrap_or(DType::BF16),
                seed: 1,
            },
            ModelSource::Preset(name) => bail!(
                "--bench needs weights: pass a model file, or add --random-weights to run preset {name} with random {} weights",
                weights.unwrap_or(DType::BF16)
            ),
            ModelSource::HfConfig(p) => bail!(
                "{} holds shapes only; --bench needs the weights (pass the model directory)",
                p.display()
            ),
        };
        if gpu.is_none() && kv_override.is_some_and(|k| k != DType::F32) {
            eprintln!("note: the CPU engine keeps its KV cache in F32; --kv-dtype only changes the prediction");
        }
        let device = match &gpu {
            Some(d) => d.clone(),
            None => Device::cpu(a.threads),
        };
        let plan = BenchPlan {
            steps: steps.clone(),
            reps: a.reps,
            stat: a.stat,
            ops: !a.no_ops,
            engine: a.engine,
            threads: a.threads,
            block_size: a.block_size,
        };
        measure::run_bench(&device, cfg, &from, &plan, &mut |line| {
            eprintln!("  {line}")
        })?
    } else {
        Vec::new()
    };

    // Per-op detail for two representative steps: single-sequence decode at the longest
    // context, and the first prefill.
    let c_max = *a.context.iter().max().unwrap_or(&0);
    let b_first = a.batch[0];
    let focus: Vec<&StepPrediction> = preds
        .iter()
        .filter(|p| {
            p.step == Step::decode(b_first, c_max)
                || Some(p.step) == a.prompt.first().map(|&p| Step::prefill(1, p))
        })
        .collect();
    for p in &focus {
        let m = measured.iter().find(|m| m.step == p.step);
        println!("## {} (sum over layers)\n", step_label(&p.step));
        println!("{}", report::op_table(p, m));
    }
    if a.per_layer {
        for p in &focus {
            let cost = analytic::step_cost(cfg, &prec, &p.step)?;
            println!("## {}, per layer\n", step_label(&p.step));
            println!(
                "| layer | op | FLOPs | bytes | FLOP/B |\n| ----: | -- | ----: | ----: | -----: |"
            );
            for o in &cost.ops {
                println!(
                    "| {} | {} | {} | {} | {:.2} |",
                    o.layer.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                    o.kind.name(),
                    si(o.flops, ""),
                    si(o.bytes(), "B"),
                    o.intensity()
                );
            }
            println!();
        }
    }

    println!(
        "## Steps: floor and ceiling{}\n",
        if measured.is_empty() {
            ""
        } else {
            " against measured"
        }
    );
    println!("{}", report::steps_table(&preds, &measured));

    let b_max = *a.batch.iter().max().unwrap_or(&1);
    let mut contexts = predict::sweep_contexts(cfg.max_position);
    contexts.extend(a.context.iter().copied().filter(|&c| c < cfg.max_position));
    contexts.sort_unstable();
    contexts.dedup();
    let sweep = predict::context_sweep(cfg, &prec, &hw, b_max, &contexts)?;
    println!("## Ridge point: decode turns compute-bound, and how context moves it\n");
    println!("{}", report::context_table(&sweep));
    let w_main = prec
        .weights
        .layers
        .first()
        .map(|l| l.gate)
        .unwrap_or(DType::BF16);
    let class = analytic::matmul_class(w_main, &prec);
    println!(
        "One {} weight matmul alone turns compute-bound at batch {:.0} (ridge {:.1} FLOP/B at the {} rate x {:.3} bytes per weight / 2 FLOPs).\n",
        w_main,
        predict::matmul_ridge_batch(w_main, class, &hw),
        hw.ridge_intensity(class),
        class.name(),
        analytic::bytes_per_elem(w_main)
    );

    let p_first = a.prompt.first().copied().unwrap_or(512);
    let quant = predict::quant_table(cfg, &prec, &hw, b_max, c_max, p_first)?;
    println!("## Quantization: weights and KV cache\n");
    println!("{}", report::quant_table(&quant, b_max, c_max, p_first));

    if let Some(stem) = &a.plot {
        let title = format!("{} on {}", cfg.name, hw.name);
        let steps_plot = RooflinePlot {
            title: format!("{title}: steps"),
            series: step_points(&preds, &measured),
        };
        let mut files = plot::save(stem, &steps_plot, &hw)?;
        let mut series = Vec::new();
        for (i, p) in focus.iter().enumerate() {
            let m = measured.iter().find(|m| m.step == p.step);
            series.extend(op_points(p, m, 2 * i, &step_label(&p.step)));
        }
        let ops_stem = stem.with_file_name(format!(
            "{}-ops",
            stem.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "roofline".into())
        ));
        files.extend(plot::save(
            &ops_stem,
            &RooflinePlot {
                title: format!("{title}: ops"),
                series,
            },
            &hw,
        )?);
        for f in files {
            eprintln!("wrote {}", f.display());
        }
    }

    if let Some(path) = &a.json {
        let steps_json: Vec<serde_json::Value> = preds
            .iter()
            .map(|p| {
                let m = measured.iter().find(|m| m.step == p.step);
                let mut v = json!({
                    "label": step_label(&p.step),
                    "prediction": p,
                    "measured": m,
                    "fraction_of_floor": m.map(|m| p.floor_s / m.forward_s),
                });
                if a.per_layer {
                    if let Ok(cost) = analytic::step_cost(cfg, &prec, &p.step) {
                        v["per_layer"] = json!(cost.ops);
                    }
                }
                v
            })
            .collect();
        let doc = json!({
            "model": {
                "name": cfg.name,
                "source": format!("{:?}", spec.source),
                "parameters": cfg.parameter_count(),
                "weights": prec.weights.label(),
                "stored_weight_bytes": stored_weight_bytes(cfg, &prec.weights),
                "kv_dtype": prec.kv.name(),
                "kv_bytes_per_token": kv_bytes_per_token(cfg, prec.kv),
                "activation_dtype": prec.act.name(),
            },
            "hardware": hw,
            "hardware_measurement": measured_hw,
            "steps": steps_json,
            "context_sweep": sweep,
            "quantization": quant,
        });
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if !measured.is_empty() {
        let worst = preds
            .iter()
            .filter_map(|p| measured.iter().find(|m| m.step == p.step).map(|m| (p, m)))
            .map(|(p, m)| p.floor_s / m.forward_s)
            .fold(f64::INFINITY, f64::min);
        println!(
            "lowest fraction of the floor reached: {:.0}% (times: {} of {} reps)",
            100.0 * worst,
            a.stat.name(),
            a.reps
        );
    }
    Ok(())
}
