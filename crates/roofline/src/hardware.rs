//! Hardware profiles: a memory bandwidth and peak arithmetic rates per compute class.
//!
//! Built-in GPU profiles carry datasheet figures (dense, without structured sparsity);
//! `cpu` describes this machine from its cores, clock and instruction sets, with the
//! bandwidth taken from a short streaming probe. Any profile can be written to and read
//! from TOML (`--save-profile`, `--hardware file.toml`) and edited by hand.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_backend::DType;

use crate::analytic::ComputeClass;
use crate::error::{Result, RooflineError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Gpu,
}

/// A machine as the roofline sees it. Rates are per second; TOML field names carry units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    pub name: String,
    pub kind: DeviceKind,
    /// Main-memory bandwidth (DRAM or HBM), GB/s = 1e9 bytes/s.
    pub memory_bandwidth_gbs: f64,
    /// Peak FP32 rate without matrix units (CPU FMA vectors, GPU CUDA cores), TFLOP/s.
    pub peak_tflops_f32: f64,
    /// Peak BF16/F16 matrix rate, dense, TFLOP/s.
    pub peak_tflops_half: f64,
    /// Peak INT8 dot-product rate, dense, TOP/s.
    pub peak_tops_int8: f64,
    /// Which rate quantized weights run at: `int8` when activations are quantized too
    /// (our CPU kernels, llama.cpp's MMQ), `half` when weights are dequantized into
    /// 16-bit matrix units (Marlin-style GPU kernels).
    pub quant_matmul: ComputeClass,
    /// Element type of activations on this device (`F32`, `BF16`, `F16`).
    pub activation_dtype: String,
    /// Element type of the KV cache on this device.
    pub kv_dtype: String,
    /// Device memory, GiB (to say whether a batch's KV cache fits).
    #[serde(default)]
    pub memory_gib: Option<f64>,
    /// Where the numbers come from.
    #[serde(default)]
    pub source: String,
}

/// Names of the built-in profiles (`cpu` is this machine).
pub const BUILTIN: &[&str] = &[
    "h100-sxm",
    "h100-pcie",
    "h200",
    "a100-40gb",
    "a100-80gb",
    "l4",
    "rtx-4090",
    "cpu",
];

#[allow(clippy::too_many_arguments)]
fn gpu(
    name: &str,
    bw: f64,
    f32_tf: f64,
    half_tf: f64,
    int8_tops: f64,
    mem_gib: f64,
    source: &str,
) -> HardwareProfile {
    HardwareProfile {
        name: name.to_string(),
        kind: DeviceKind::Gpu,
        memory_bandwidth_gbs: bw,
        peak_tflops_f32: f32_tf,
        peak_tflops_half: half_tf,
        peak_tops_int8: int8_tops,
        quant_matmul: ComputeClass::Half,
        activation_dtype: "BF16".into(),
        kv_dtype: "BF16".into(),
        memory_gib: Some(mem_gib),
        source: source.to_string(),
    }
}

/// A datasheet GPU profile by name, or `None`.
fn builtin_gpu(name: &str) -> Option<HardwareProfile> {
    Some(match name {
        "h100-sxm" | "h100" => gpu(
            "NVIDIA H100 SXM5 80GB",
            3350.0,
            66.9,
            989.4,
            1978.9,
            80.0,
            "NVIDIA H100 Tensor Core GPU datasheet (dense, no sparsity)",
        ),
        "h100-pcie" => gpu(
            "NVIDIA H100 PCIe 80GB",
            2000.0,
            51.2,
            756.0,
            1513.0,
            80.0,
            "NVIDIA H100 Tensor Core GPU datasheet (dense, no sparsity)",
        ),
        "h200" | "h200-sxm" => gpu(
            "NVIDIA H200 SXM 141GB",
            4800.0,
            66.9,
            989.4,
            1978.9,
            141.0,
            "NVIDIA H200 Tensor Core GPU datasheet (dense, no sparsity)",
        ),
        "a100-40gb" | "a100" => gpu(
            "NVIDIA A100 SXM4 40GB",
            1555.0,
            19.5,
            312.0,
            624.0,
            40.0,
            "NVIDIA A100 Tensor Core GPU datasheet (dense, no sparsity)",
        ),
        "a100-80gb" => gpu(
            "NVIDIA A100 SXM4 80GB",
            2039.0,
            19.5,
            312.0,
            624.0,
            80.0,
            "NVIDIA A100 Tensor Core GPU datasheet (dense, no sparsity)",
        ),
        "l4" => gpu(
            "NVIDIA L4 24GB",
            300.0,
            30.3,
            121.0,
            242.5,
            24.0,
            "NVIDIA L4 Tensor Core GPU datasheet (dense, no sparsity)",
        ),
        "rtx-4090" | "4090" => gpu(
            "NVIDIA GeForce RTX 4090 24GB",
            1008.0,
            82.6,
            165.2,
            660.6,
            24.0,
            "NVIDIA Ada Lovelace architecture whitepaper (dense; FP16/BF16 with FP32 accumulate)",
        ),
        _ => return None,
    })
}

/// The instruction sets and clock that set this CPU's peak rates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuInfo {
    pub model: String,
    /// Physical cores (hyper-threads share a core's vector units).
    pub cores: usize,
    pub ghz: f64,
    /// `avx512`, `avx2`, `neon`, `scalar`.
    pub simd: String,
    /// FP32 FLOPs per cycle per core.
    pub f32_per_cycle: f64,
    /// BF16 FLOPs per cycle per core (the FP32 rate when there is no BF16 dot product).
    pub half_per_cycle: f64,
    /// INT8 ops per cycle per core.
    pub int8_per_cycle: f64,
    /// L3 (or last-level) cache bytes, if the OS says.
    pub llc_bytes: Option<usize>,
}

impl CpuInfo {
    /// Reads `/proc/cpuinfo` and the instruction sets of this machine.
    pub fn detect() -> CpuInfo {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        CpuInfo::from_cpuinfo(&text, &SimdFlags::detect(), read_llc_bytes())
    }

    /// Peak rates from a `/proc/cpuinfo` text and detected instruction sets.
    ///
    /// Ops per cycle per core assume two vector FMA pipes (every x86 core since Haswell
    /// and Zen 1 has two; Zen 4 runs AVX-512 at half width, so `--measure` may find half
    /// of this): FP32 `lanes × 2 (FMA) × 2 pipes`; INT8 with VNNI `vpdpbusd` does 4
    /// multiply-adds per 32-bit lane, `lanes × 4 × 2 × 2`; without VNNI the
    /// `vpmaddubsw`+`vpmaddwd` pair halves that; BF16 `vdpbf16ps` does 2 per lane.
    pub fn from_cpuinfo(text: &str, simd: &SimdFlags, llc_bytes: Option<usize>) -> CpuInfo {
        let field = |line: &str, key: &str| -> Option<String> {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        };
        let mut model = String::new();
        let mut mhz = Vec::new();
        let mut cores = std::collections::BTreeSet::new();
        let mut physical = String::new();
        let mut logical = 0usize;
        for line in text.lines() {
            if let Some(v) = field(line, "model name") {
                if model.is_empty() {
                    model = v;
                }
            } else if let Some(v) = field(line, "cpu MHz") {
                if let Ok(x) = v.parse::<f64>() {
                    mhz.push(x);
                }
            } else if let Some(v) = field(line, "physical id") {
                physical = v;
            } else if let Some(v) = field(line, "core id") {
                cores.insert((physical.clone(), v));
            } else if field(line, "processor").is_some() {
                logical += 1;
            }
        }
        let n_cores = if !cores.is_empty() {
            cores.len()
        } else if logical > 0 {
            logical
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        };
        let ghz = if mhz.is_empty() {
            // No clock in /proc/cpuinfo (some ARM kernels): a common base clock; the
            // profile's source says so and `--measure` replaces the estimate.
            2.0
        } else {
            mhz.iter().sum::<f64>() / mhz.len() as f64 / 1000.0
        };
        let (simd_name, lanes) = if simd.avx512f {
            ("avx512", 16.0)
        } else if simd.avx2 && simd.fma {
            ("avx2", 8.0)
        } else if simd.neon {
            ("neon", 4.0)
        } else {
            ("scalar", 1.0)
        };
        let fma = if simd.fma || simd.neon || simd.avx512f {
            2.0
        } else {
            1.0
        };
        let pipes = 2.0;
        let f32_per_cycle = lanes * fma * pipes;
        let int8_per_cycle = if simd.avx512f && simd.avx512vnni {
            16.0 * 4.0 * 2.0 * pipes
        } else if simd.avxvnni {
            8.0 * 4.0 * 2.0 * pipes
        } else if simd.avx512f && simd.avx512bw {
            16.0 * 4.0 * 2.0 * pipes / 2.0
        } else if simd.avx2 {
            8.0 * 4.0 * 2.0 * pipes / 2.0
        } else if simd.neon {
            4.0 * 4.0 * 2.0 * pipes / 2.0
        } else {
            2.0
        };
        let half_per_cycle = if simd.avx512bf16 {
            16.0 * 2.0 * 2.0 * pipes
        } else {
            f32_per_cycle
        };
        CpuInfo {
            model: if model.is_empty() {
                "unknown CPU".into()
            } else {
                model
            },
            cores: n_cores,
            ghz,
            simd: simd_name.to_string(),
            f32_per_cycle,
            half_per_cycle,
            int8_per_cycle,
            llc_bytes,
        }
    }

    /// The profile with these peaks and the given bandwidth.
    pub fn profile(&self, bandwidth_gbs: f64, bandwidth_source: &str) -> HardwareProfile {
        let tera = |per_cycle: f64| self.cores as f64 * self.ghz * 1e9 * per_cycle / 1e12;
        HardwareProfile {
            name: format!(
                "this CPU ({}, {} core{})",
                self.model,
                self.cores,
                if self.cores == 1 { "" } else { "s" }
            ),
            kind: DeviceKind::Cpu,
            memory_bandwidth_gbs: bandwidth_gbs,
            peak_tflops_f32: tera(self.f32_per_cycle),
            peak_tflops_half: tera(self.half_per_cycle),
            peak_tops_int8: tera(self.int8_per_cycle),
            quant_matmul: ComputeClass::Int8,
            activation_dtype: "F32".into(),
            kv_dtype: "F32".into(),
            memory_gib: total_memory_gib(),
            source: format!(
                "peaks: {} core(s) x {:.2} GHz x {}/{}/{} f32/bf16/int8 ops per cycle ({}); bandwidth: {}",
                self.cores,
                self.ghz,
                self.f32_per_cycle,
                self.half_per_cycle,
                self.int8_per_cycle,
                self.simd,
                bandwidth_source
            ),
        }
    }
}

/// The instruction sets that matter for peak rates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimdFlags {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vnni: bool,
    pub avx512bf16: bool,
    pub avxvnni: bool,
    pub neon: bool,
}

impl SimdFlags {
    pub fn detect() -> SimdFlags {
        #[allow(unused_mut)]
        let mut f = SimdFlags::default();
        #[cfg(target_arch = "x86_64")]
        {
            f.avx2 = std::arch::is_x86_feature_detected!("avx2");
            f.fma = std::arch::is_x86_feature_detected!("fma");
            f.avx512f = std::arch::is_x86_feature_detected!("avx512f");
            f.avx512bw = std::arch::is_x86_feature_detected!("avx512bw");
            f.avx512vnni = std::arch::is_x86_feature_detected!("avx512vnni");
            f.avx512bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
            f.avxvnni = std::arch::is_x86_feature_detected!("avxvnni");
        }
        #[cfg(target_arch = "aarch64")]
        {
            f.neon = std::arch::is_aarch64_feature_detected!("neon");
        }
        f
    }
}

fn read_llc_bytes() -> Option<usize> {
    // index3 is the L3 on x86; fall back to the highest index present.
    for idx in [3, 2] {
        let p = format!("/sys/devices/system/cpu/cpu0/cache/index{idx}/size");
        if let Ok(s) = std::fs::read_to_string(&p) {
            let s = s.trim();
            let (num, mult) = match s.chars().last() {
                Some('K') => (&s[..s.len() - 1], 1024),
                Some('M') => (&s[..s.len() - 1], 1024 * 1024),
                _ => (s, 1),
            };
            if let Ok(n) = num.parse::<usize>() {
                return Some(n * mult);
            }
        }
    }
    None
}

fn total_memory_gib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / (1024.0 * 1024.0))
}

impl HardwareProfile {
    /// Peak rate of `class`, FLOP/s (ops/s for int8).
    pub fn peak(&self, class: ComputeClass) -> f64 {
        1e12 * match class {
            ComputeClass::F32 => self.peak_tflops_f32,
            ComputeClass::Half => self.peak_tflops_half,
            ComputeClass::Int8 => self.peak_tops_int8,
        }
    }

    /// Bandwidth in bytes/s.
    pub fn bandwidth(&self) -> f64 {
        self.memory_bandwidth_gbs * 1e9
    }

    /// The ridge point of `class`: FLOPs per byte above which an op is compute-bound.
    pub fn ridge_intensity(&self, class: ComputeClass) -> f64 {
        self.peak(class) / self.bandwidth()
    }

    pub fn activation(&self) -> Result<DType> {
        parse_dtype("activation_dtype", &self.activation_dtype)
    }

    pub fn kv(&self) -> Result<DType> {
        parse_dtype("kv_dtype", &self.kv_dtype)
    }

    /// Checks that every rate is positive and finite and the dtypes parse.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("memory_bandwidth_gbs", self.memory_bandwidth_gbs),
            ("peak_tflops_f32", self.peak_tflops_f32),
            ("peak_tflops_half", self.peak_tflops_half),
            ("peak_tops_int8", self.peak_tops_int8),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(RooflineError::invalid(
                    "hardware profile",
                    format!("`{field}` must be a positive number, found {v}"),
                ));
            }
        }
        self.activation()?;
        self.kv()?;
        Ok(())
    }

    /// Reads a TOML profile; errors name the file and the missing or bad field.
    pub fn from_toml_file(path: &Path) -> Result<HardwareProfile> {
        let text = std::fs::read_to_string(path).map_err(|e| RooflineError::io(path, e))?;
        let p: HardwareProfile = toml::from_str(&text).map_err(|e| RooflineError::Profile {
            path: path.to_path_buf(),
            message: e.to_string().trim().to_string(),
        })?;
        p.validate().map_err(|e| RooflineError::Profile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(p)
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| RooflineError::invalid("hardware profile", e.to_string()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = format!(
            "# sluice roofline hardware profile; edit the numbers and pass it with --hardware {}\n{}",
            path.display(),
            self.to_toml()?
        );
        std::fs::write(path, text).map_err(|e| RooflineError::io(path, e))
    }
}

/// Parses a dtype name from a profile or flag; the error lists the accepted names.
pub fn parse_dtype(what: &'static str, s: &str) -> Result<DType> {
    DType::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        RooflineError::invalid(
            what,
            format!("unknown type `{s}` (known: {})", names.join(", ")),
        )
    })
}

/// A built-in profile or a TOML file. For `cpu`, `threads` caps the cores counted (the
/// peaks of the cores a run may use) and `cpu_bandwidth` supplies the bandwidth (a probe
/// result).
pub fn resolve(
    spec: &str,
    threads: Option<usize>,
    cpu_bandwidth: impl FnOnce() -> (f64, String),
) -> Result<HardwareProfile> {
    let path = Path::new(spec);
    if spec.ends_with(".toml") || path.is_file() {
        return HardwareProfile::from_toml_file(path);
    }
    let key = spec.trim().to_ascii_lowercase();
    if key == "cpu" || key == "this-cpu" {
        let mut info = CpuInfo::detect();
        if let Some(t) = threads {
            info.cores = info.cores.min(t.max(1));
        }
        let (bw, why) = cpu_bandwidth();
        return Ok(info.profile(bw, &why));
    }
    builtin_gpu(&key).ok_or_else(|| RooflineError::UnknownHardware {
        name: spec.to_string(),
        known: format!("{} (or a .toml profile file)", BUILTIN.join(", ")),
    })
}

/// The built-in profile for a GPU, from the name the driver reports.
pub fn builtin_for_gpu_name(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_uppercase();
    Some(if n.contains("H200") {
        "h200"
    } else if n.contains("H100") && n.contains("PCIE") {
        "h100-pcie"
    } else if n.contains("H100") {
        "h100-sxm"
    } else if n.contains("A100") && n.contains("40GB") {
        "a100-40gb"
    } else if n.contains("A100") {
        "a100-80gb"
    } else if n.contains(" L4") {
        "l4"
    } else if n.contains("4090") {
        "rtx-4090"
    } else {
        return None;
    })
}

/// Every built-in GPU profile (for `--list` and tests).
pub fn builtin_gpus() -> Vec<HardwareProfile> {
    BUILTIN.iter().filter_map(|n| builtin_gpu(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_hardware_lists_the_known_profiles() {
        let err = resolve("h900", None, || (1.0, String::new()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("h900"), "{err}");
        for name in BUILTIN {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
    }

    #[test]
    fn datasheet_ridges_are_the_published_ones() {
        let h100 = resolve("h100-sxm", None, || (1.0, String::new())).unwrap();
        // 989.4 TFLOP/s / 3.35 TB/s = 295 FLOP/byte.
        assert!((h100.ridge_intensity(ComputeClass::Half) - 295.3).abs() < 0.5);
        assert_eq!(builtin_gpus().len(), BUILTIN.len() - 1);
        for p in builtin_gpus() {
            p.validate().unwrap();
        }
    }

    #[test]
    fn cpu_peaks_follow_the_instruction_sets() {
        let text = "processor\t: 0\nmodel name\t: Test CPU\ncpu MHz\t\t: 2000.000\nphysical id\t: 0\ncore id\t\t: 0\n\n\
                    processor\t: 1\nmodel name\t: Test CPU\ncpu MHz\t\t: 3000.000\nphysical id\t: 0\ncore id\t\t: 1\n\n\
                    processor\t: 2\nmodel name\t: Test CPU\ncpu MHz\t\t: 2500.000\nphysical id\t: 0\ncore id\t\t: 0\n";
        let avx512 = SimdFlags {
            avx2: true,
            fma: true,
            avx512f: true,
            avx512bw: true,
            avx512vnni: true,
            avx512bf16: true,
            ..SimdFlags::default()
        };
        let c = CpuInfo::from_cpuinfo(text, &avx512, None);
        // Two physical cores (processor 2 is core 0's hyper-thread), mean clock 2.5 GHz.
        assert_eq!(c.cores, 2);
        assert!((c.ghz - 2.5).abs() < 1e-9);
        assert_eq!(
            (c.f32_per_cycle, c.int8_per_cycle, c.half_per_cycle),
            (64.0, 256.0, 128.0)
        );
        let p = c.profile(10.0, "test");
        // 2 cores x 2.5 GHz x 64 = 320 GFLOP/s.
        assert!((p.peak_tflops_f32 - 0.32).abs() < 1e-12);
        let avx2 = SimdFlags {
            avx2: true,
            fma: true,
            ..SimdFlags::default()
        };
        let c2 = CpuInfo::from_cpuinfo(text, &avx2, None);
        assert_eq!(
            (c2.f32_per_cycle, c2.int8_per_cycle, c2.half_per_cycle),
            (32.0, 64.0, 32.0)
        );
    }

    #[test]
    fn profiles_round_trip_through_toml_and_missing_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h100.toml");
        let p = resolve("h100-sxm", None, || (1.0, String::new())).unwrap();
        p.save(&path).unwrap();
        assert_eq!(HardwareProfile::from_toml_file(&path).unwrap(), p);

        let text = std::fs::read_to_string(&path).unwrap();
        let broken: String = text
            .lines()
            .filter(|l| !l.starts_with("memory_bandwidth_gbs"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, broken).unwrap();
        let err = HardwareProfile::from_toml_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory_bandwidth_gbs"), "{err}");

        let bad = text.replace("kv_dtype = \"BF16\"", "kv_dtype = \"FP7\"");
        std::fs::write(&path, bad).unwrap();
        let err = HardwareProfile::from_toml_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("FP7") && err.contains("kv_dtype"), "{err}");
    }
}
