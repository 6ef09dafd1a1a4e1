//! Quick matmul probe for kernel tuning on a shared machine: each case runs many short
//! repetitions and reports the best and the median time (the best approximates an
//! uncontended run when other processes compete for the cores).
//!
//! `cargo bench -p sluice-backend --bench matmul_probe [-- CASE...]`, cases:
//! `head` (GEMV on the 49152x576 head, DRAM-bound), `cache` (GEMV on cache-resident
//! SmolLM2 layer shapes), `step` (all matmuls of a SmolLM2-135M step, T = 1, 8, 16, 512),
//! `gemm` (T = 512 on one layer's shapes). Default: all.

use std::hint::black_box;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cpu::CpuBackend;
use sluice_backend::quant;
use sluice_backend::{DType, Tensor};

fn weight(r: &mut ChaCha8Rng, dtype: DType, m: usize, k: usize) -> Tensor {
    let rb = dtype.row_bytes(k);
    let mut bytes = vec![0u8; m * rb];
    if dtype.block_size() == 256 {
        r.fill(bytes.as_mut_slice());
        let d_at = match dtype {
            DType::Q6_K => 208,
            DType::Q3_K => 108,
            DType::Q2_K => 80,
            _ => 0,
        };
        for blk in bytes.chunks_exact_mut(dtype.block_bytes()) {
            blk[d_at..d_at + 2].copy_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
        }
    } else {
        let vals: Vec<f32> = (0..k).map(|_| r.random::<f32>() - 0.5).collect();
        for row in bytes.chunks_exact_mut(rb) {
            quant::quantize_row(dtype, &vals, row).expect("quantize");
        }
    }
    Tensor::from_bytes_cpu(dtype, &[m, k], &bytes).expect("tensor")
}

fn acts(r: &mut ChaCha8Rng, t: usize, k: usize) -> Tensor {
    let v: Vec<f32> = (0..t * k).map(|_| r.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_f32_cpu(&[t, k], &v).expect("tensor")
}

/// Best and median seconds of `reps` runs of `f`.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(|a, b| a.total_cmp(b));
    (ts[0], ts[ts.len() / 2])
}

/// Times `out = x w^T`; `copies` distinct weights are used in turn (enough of them
/// to exceed the last-level cache makes the case DRAM-bound).
#[allow(clippy::too_many_arguments)]
fn gemv_case(
    cpu: &CpuBackend,
    r: &mut ChaCha8Rng,
    dtype: DType,
    m: usize,
    k: usize,
    t: usize,
    reps: usize,
    copies: usize,
) {
    let ws: Vec<Tensor> = (0..copies).map(|_| weight(r, dtype, m, k)).collect();
    let x = acts(r, t, k);
    let mut out = Tensor::zeros_cpu(DType::F32, &[t, m]).expect("t");
    let mut i = 0;
    let (best, med) = time(reps, || {
        i = (i + 1) % copies;
        cpu.matmul(black_box(&x), &ws[i], &mut out).expect("mm")
    });
    let bytes = ws[0].size_in_bytes() as f64;
    let flops = 2.0 * (t * m * k) as f64;
    println!(
        "  {dtype:5} m={m:<6} k={k:<5} t={t:<4} {}thr  best {:8.1} us ({:6.1} GB/s, {:7.1} GFLOP/s)  median {:8.1} us ({:6.1} GB/s)",
        cpu.n_threads(),
        best * 1e6,
        bytes / best / 1e9,
        flops / best / 1e9,
        med * 1e6,
        bytes / med / 1e9
    );
}

fn step_case(r: &mut ChaCha8Rng, reps: usize) {
    let (h, f, kv, vocab, layers) = (576, 1536, 192, 49152, 30);
    let mats: Vec<Vec<Tensor>> = (0..layers)
        .map(|_| {
            [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)]
                .iter()
                .map(|&(m, k)| weight(r, DType::Q4_1, m, k))
                .collect()
        })
        .collect();
    let head = weight(r, DType::Q8_0, vocab, h);
    let layer_bytes: usize = mats.iter().flatten().map(|w| w.size_in_bytes()).sum();
    let layer_flops: usize = mats.iter().flatten().map(|w| 2 * w.numel()).sum();
    println!(
        "step: SmolLM2-135M Q4_1 layers ({} MB) + Q8_0 head ({} MB)",
        layer_bytes / 1_000_000,
        head.size_in_bytes() / 1_000_000
    );
    for threads in [1usize, 2] {
        let cpu = CpuBackend::new(Some(threads));
        for t in [1usize, 8, 16, 512] {
            let with_head = t != 512;
            let (xh, xf) = (acts(r, t, h), acts(r, t, f));
            let mut oh = Tensor::zeros_cpu(DType::F32, &[t, h]).expect("t");
            let mut okv = Tensor::zeros_cpu(DType::F32, &[t, kv]).expect("t");
            let mut of = Tensor::zeros_cpu(DType::F32, &[t, f]).expect("t");
            let mut ov = Tensor::zeros_cpu(DType::F32, &[t.min(16), vocab]).expect("t");
            let xl = acts(r, t.min(16), h);
            let n = if t == 512 {
                reps.div_ceil(4).max(3)
            } else {
                reps
            };
            let (best, med) = time(n, || {
                for l in &mats {
                    for (i, w) in l.iter().enumerate() {
                        let (x, o) = match i {
                            1 | 2 => (&xh, &mut okv),
                            4 | 5 => (&xh, &mut of),
                            6 => (&xf, &mut oh),
                            _ => (&xh, &mut oh),
                        };
                        cpu.matmul(x, w, o).expect("mm");
                    }
                }
                if with_head {
                    cpu.matmul(&xl, &head, &mut ov).expect("mm");
                }
            });
            let bytes = (layer_bytes + if with_head { head.size_in_bytes() } else { 0 }) as f64;
            let flops = (t * layer_flops
                + if with_head {
                    t.min(16) * 2 * head.numel()
                } else {
                    0
                }) as f64;
            println!(
                "  {threads}thr T={t:<4} best {:8.3} ms = {:7.1} tok/s ({:5.1} GB/s, {:6.1} GFLOP/s)   median {:8.3} ms = {:7.1} tok/s",
                best * 1e3,
                t as f64 / best,
                bytes / best / 1e9,
                flops / best / 1e9,
                med * 1e3,
                t as f64 / med
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |c: &str| args.is_empty() || args.iter().any(|a| a == c);
    let reps: usize = std::env::var("PROBE_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let cpus = [CpuBackend::new(Some(1)), CpuBackend::new(Some(2))];
    if want("head") {
        println!("head (DRAM-bound GEMV):");
        for cpu in &cpus {
            gemv_case(cpu, &mut r, DType::Q4_1, 49152, 576, 1, reps, 6);
            gemv_case(cpu, &mut r, DType::Q8_0, 49152, 576, 1, reps, 4);
            gemv_case(cpu, &mut r, DType::Q4_K, 49152, 768, 1, reps, 4);
            gemv_case(cpu, &mut r, DType::F16, 49152, 576, 1, reps, 3);
        }
    }
    if want("cache") {
        println!("cache-resident GEMV:");
        for cpu in &cpus {
            for dtype in [DType::Q4_1, DType::Q8_0, DType::Q5_0, DType::F16] {
                gemv_case(cpu, &mut r, dtype, 1536, 576, 1, reps * 10, 1);
            }
            for dtype in [DType::Q4_K, DType::Q6_K] {
                gemv_case(cpu, &mut r, dtype, 576, 1536, 1, reps * 10, 1);
            }
        }
    }
    if want("gemm") {
        println!("prefill GEMM (T=512):");
        for cpu in &cpus {
            for dtype in [DType::Q4_1, DType::Q8_0, DType::Q5_0, DType::F16] {
                gemv_case(cpu, &mut r, dtype, 1536, 576, 512, reps.div_ceil(3), 1);
            }
            for dtype in [DType::Q4_K, DType::Q6_K] {
                gemv_case(cpu, &mut r, dtype, 576, 1536, 512, reps.div_ceil(3), 1);
            }
        }
    }
    if want("batch") {
        println!("batch scaling (cache-resident):");
        for dtype in [DType::Q4_1, DType::Q8_0, DType::Q4_K, DType::F16] {
            let k = if dtype.block_size() == 256 { 1536 } else { 576 };
            for t in [1usize, 2, 4, 8, 16, 64] {
                gemv_case(&cpus[0], &mut r, dtype, 576, k, t, reps * 5, 1);
            }
        }
    }
    if want("dram") {
        println!("DRAM-streamed weights, batched:");
        for t in [1usize, 2, 4, 8, 16] {
            gemv_case(&cpus[0], &mut r, DType::Q4_1, 1536, 576, t, reps * 5, 80);
        }
    }
    if want("headbatch") {
        println!("head, batched (Q8_0 49152x576):");
        for t in [1usize, 8, 16] {
            gemv_case(&cpus[0], &mut r, DType::Q8_0, 49152, 576, t, reps, 4);
        }
    }
    if want("kscale") {
        println!("GEMM vs K (T=64, cache-resident):");
        for dtype in [DType::Q4_1, DType::Q8_0, DType::F16] {
            for k in [512usize, 576, 4608] {
                gemv_case(&cpus[0], &mut r, dtype, 256, k, 64, reps * 3, 1);
            }
        }
    }
    if want("gemma") {
        println!("Gemma-3 270M shapes (K=640 has a 4-block tail):");
        for cpu in &cpus {
            gemv_case(
                cpu,
                &mut r,
                DType::Q8_0,
                262144,
                640,
                1,
                reps.div_ceil(3),
                1,
            );
            gemv_case(cpu, &mut r, DType::Q5_0, 2048, 640, 1, reps * 5, 8);
            gemv_case(cpu, &mut r, DType::Q8_0, 2048, 640, 1, reps * 5, 8);
            gemv_case(cpu, &mut r, DType::Q4_K, 640, 2048, 1, reps * 5, 8);
            gemv_case(cpu, &mut r, DType::Q6_K, 640, 2048, 1, reps * 5, 8);
        }
    }
    if want("step") {
        step_case(&mut r, reps);
    }
}
