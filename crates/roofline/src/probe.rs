//! `--measure`: short probes of what this machine achieves, to replace datasheet peaks.
//!
//! - Memory bandwidth: every thread streams its share of a buffer several times larger
//!   than the last-level cache, summing 64-bit words (a read-only stream, like weights
//!   in decode); the best of a few passes counts.
//! - Matmul rates: the backend's own matmul at a compute-bound shape (128 rows of
//!   activations against a 2048 x 2048 weight), once per compute class: F32 weights
//!   (FP32 FMA), BF16 weights (the half-precision path) and Q8_0 weights (int8 dot
//!   products). These are rates achievable with this build's kernels, not the silicon's
//!   peak: the gap between the two is itself worth knowing.

use std::time::Instant;

use serde::Serialize;
use sluice_backend::{DType, Device, Tensor};

use crate::analytic::ComputeClass;
use crate::error::Result;
use crate::hardware::HardwareProfile;
use crate::random_weights::random_matrix;

#[derive(Clone, Debug, Serialize)]
pub struct BandwidthProbe {
    pub gbs: f64,
    pub buffer_bytes: usize,
    /// CPU threads that streamed the buffer (0: a GPU's device-to-device copy).
    pub threads: usize,
    pub passes: usize,
}

/// Probe buffer size: 8 x the last-level cache, between 256 MiB and 1 GiB.
pub fn probe_buffer_bytes(llc: Option<usize>) -> usize {
    let llc = llc.unwrap_or(32 << 20);
    (8 * llc).clamp(256 << 20, 1 << 30)
}

/// Wrapping sum of 64-bit words with 8 independent accumulators (vectorizes).
fn sum_words(xs: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

/// Multi-threaded streaming read bandwidth over `bytes` bytes, best of `passes`.
pub fn memory_bandwidth(threads: usize, bytes: usize, passes: usize) -> BandwidthProbe {
    let threads = threads.max(1);
    let words = (bytes / 8).max(threads * 8);
    let per = words.div_ceil(threads);
    let mut buf = vec![0u64; words];
    // Each thread first-touches (writes) its own share so pages are really backed.
    std::thread::scope(|s| {
        for (t, chunk) in buf.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (i, x) in chunk.iter_mut().enumerate() {
                    *x = (t * per + i) as u64;
                }
            });
        }
    });
    let mut best = f64::INFINITY;
    let mut check = 0u64;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(per)
                .map(|chunk| s.spawn(move || sum_words(std::hint::black_box(chunk))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, |a, b| a.wrapping_add(b))
        });
        best = best.min(t0.elapsed().as_secs_f64());
        check = check.wrapping_add(total);
    }
    std::hint::black_box(check);
    BandwidthProbe {
        gbs: (words * 8) as f64 / best / 1e9,
        buffer_bytes: words * 8,
        threads,
        passes: passes.max(1),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MatmulProbe {
    pub class: ComputeClass,
    pub weight_dtype: String,
    /// `[t, k] x [m, k]^T`
    pub shape: [usize; 3],
    pub tflops: f64,
}

/// Best-of-`reps` rate of the backend's matmul with weights of `dtype`.
pub fn matmul_rate(
    device: &Device,
    dtype: DType,
    t: usize,
    k: usize,
    m: usize,
    reps: usize,
) -> Result<f64> {
    let w = device.load_weight(random_matrix(dtype, m, k, 11)?)?;
    let xs: Vec<f32> = (0..t * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let x = device.upload(&Tensor::from_f32_cpu(&[t, k], &xs)?)?;
    let mut out = device.zeros(DType::F32, &[t, m])?;
    device.matmul(&x, &w, &mut out)?; // warm-up: scratch allocation, page faults
    device.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        device.matmul(&x, &w, &mut out)?;
        device.synchronize()?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (t * k * m) as f64 / best / 1e12)
}

/// Everything `--measure` found.
#[derive(Clone, Debug, Serialize)]
pub struct HardwareMeasurement {
    pub bandwidth: BandwidthProbe,
    pub matmul: Vec<MatmulProbe>,
}

/// The bandwidth probe alone (the `cpu` profile always needs a bandwidth).
pub fn quick_bandwidth(threads: usize, llc: Option<usize>) -> BandwidthProbe {
    memory_bandwidth(threads, probe_buffer_bytes(llc), 5)
}

/// Probes this CPU and writes the results into `profile`.
pub fn measure_cpu(
    profile: &mut HardwareProfile,
    threads: Option<usize>,
    llc: Option<usize>,
) -> Result<HardwareMeasurement> {
    let device = Device::cpu(threads);
    // The same default as `Device::cpu`: every available core.
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let bandwidth = quick_bandwidth(n, llc);
    let (t, k, m) = (128, 2048, 2048);
    let mut matmul = Vec::new();
    for (class, dtype) in [
        (ComputeClass::F32, DType::F32),
        (ComputeClass::Half, DType::BF16),
        (ComputeClass::Int8, DType::Q8_0),
    ] {
        let tflops = matmul_rate(&device, dtype, t, k, m, 5)?;
        matmul.push(MatmulProbe {
            class,
            weight_dtype: dtype.name().to_string(),
            shape: [t, k, m],
            tflops,
        });
        match class {
            ComputeClass::F32 => profile.peak_tflops_f32 = tflops,
            ComputeClass::Half => profile.peak_tflops_half = tflops,
            ComputeClass::Int8 => profile.peak_tops_int8 = tflops,
        }
    }
    profile.memory_bandwidth_gbs = bandwidth.gbs;
    profile.name = format!("{} (measured)", profile.name);
    profile.source = format!(
        "measured by `sluice roofline --measure` with {n} thread(s): streaming read of {} MiB, best of {} passes; \
         backend matmul {t}x{k}x{m} with F32/BF16/Q8_0 weights, best of 5",
        bandwidth.buffer_bytes >> 20,
        bandwidth.passes
    );
    Ok(HardwareMeasurement { bandwidth, matmul })
}

/// Probes the GPU `device` runs on: device-to-device copy bandwidth (bytes read plus
/// bytes written, as the field quotes it; decode streams weights at about this rate)
/// and the backend's matmul at 4096^3 with BF16 weights (f32 activations converted
/// to BF16 first, as every GEMM of the engine does).
pub fn measure_gpu(profile: &mut HardwareProfile, device: &Device) -> Result<HardwareMeasurement> {
    let bytes = 1usize << 31;
    let src = device.zeros(DType::F32, &[bytes / 4])?;
    let mut dst = device.zeros(DType::F32, &[bytes / 4])?;
    let passes = 10;
    device.copy(&src, &mut dst)?;
    device.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..passes {
        device.copy(&src, &mut dst)?;
    }
    device.synchronize()?;
    let gbs = (2 * bytes * passes) as f64 / t0.elapsed().as_secs_f64() / 1e9;
    drop((src, dst));
    let bandwidth = BandwidthProbe {
        gbs,
        buffer_bytes: bytes,
        threads: 0,
        passes,
    };
    let (t, k, m) = (4096, 4096, 4096);
    // Only the 16-bit class: the CUDA backend stores every matrix in its 16-bit weight
    // type by default, so an "F32" probe would time the same BF16 GEMM. The profile's
    // f32 and int8 peaks stay the datasheet's.
    let tflops = matmul_rate(device, DType::BF16, t, k, m, 10)?;
    let matmul = vec![MatmulProbe {
        class: ComputeClass::Half,
        weight_dtype: DType::BF16.name().to_string(),
        shape: [t, k, m],
        tflops,
    }];
    profile.peak_tflops_half = tflops;
    profile.memory_bandwidth_gbs = gbs;
    profile.name = format!("{} (measured)", device.name());
    profile.source = format!(
        "measured by `sluice roofline --measure`: device copy of {} MiB x {passes} (read + write), \
         backend matmul {t}x{k}x{m} with BF16 weights, best of 10 (f32 and int8 peaks: datasheet)",
        bytes >> 20
    );
    Ok(HardwareMeasurement { bandwidth, matmul })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_sums_match_a_plain_fold() {
        let xs: Vec<u64> = (0..1003u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let plain = xs.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        assert_eq!(sum_words(&xs), plain);
        assert_eq!(sum_words(&[]), 0);
    }

    #[test]
    fn probes_report_positive_finite_rates() {
        // Tiny sizes: this checks the mechanics, not the machine.
        let bw = memory_bandwidth(2, 1 << 20, 2);
        assert!(bw.gbs.is_finite() && bw.gbs > 0.0);
        assert_eq!(bw.buffer_bytes, 1 << 20);
        let dev = Device::cpu(Some(1));
        let r = matmul_rate(&dev, DType::Q8_0, 4, 64, 32, 2).unwrap();
        assert!(r.is_finite() && r > 0.0);
        assert_eq!(probe_buffer_bytes(Some(32 << 20)), 256 << 20);
        assert_eq!(probe_buffer_bytes(Some(512 << 20)), 1 << 30);
    }
}
