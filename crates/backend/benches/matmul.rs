//! Matmul benchmarks on SmolLM2-135M shapes.
//!
//! `cargo bench -p sluice-backend --bench matmul [-- FILTER]`
//!
//! * Per shape (criterion): `gemv` (T=1) and `gemm` (T=8, 16) report weight bytes per
//!   second (thrpt in GiB/s); `prefill` (T=512) reports FLOP/s (thrpt in elem/s, one
//!   element = one FLOP). Threads 1 and 2. K-quants need K % 256 == 0, so they run
//!   only on the K=1536 shape (and K=768 stand-ins for the K=576 ones).
//! * `model step` (own timing, after criterion): every matmul of one SmolLM2-135M
//!   forward step (30 layers, distinct weights, 98 MB as in the Q4_1 GGUF: Q4_1 layers,
//!   Q8_0 head) for T = 1, 8, 16 and 512 (prefill: no head), printing tokens/s, weight
//!   GB/s and GFLOP/s. `SLUICE_BENCH_QUICK=1` shortens everything.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cpu::CpuBackend;
use sluice_backend::quant;
use sluice_backend::{DType, Tensor};

/// `(K, M)` of SmolLM2-135M's matmuls: FFN up/gate, down, q/o, k/v, head.
const SHAPES: [(usize, usize, &str); 5] = [
    (576, 1536, "ffn_up"),
    (1536, 576, "ffn_down"),
    (576, 576, "attn_q"),
    (576, 192, "attn_kv"),
    (576, 49152, "head"),
];

fn weight(r: &mut ChaCha8Rng, dtype: DType, m: usize, k: usize) -> Tensor {
    let rb = dtype.row_bytes(k);
    let mut bytes = vec![0u8; m * rb];
    if dtype.block_size() == 256 {
        // Random bytes make valid K-quant blocks; keep the f16 scales sane.
        r.fill(bytes.as_mut_slice());
        let (d_at, dmin_at): (usize, Option<usize>) = match dtype {
            DType::Q4_K | DType::Q5_K => (0, Some(2)),
            DType::Q6_K => (208, None),
            DType::Q3_K => (108, None),
            _ => (80, Some(82)),
        };
        for blk in bytes.chunks_exact_mut(dtype.block_bytes()) {
            blk[d_at..d_at + 2].copy_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
            if let Some(at) = dmin_at {
                blk[at..at + 2].copy_from_slice(&half::f16::from_f32(0.0005).to_le_bytes());
            }
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

fn shapes(c: &mut Criterion, quick: bool) {
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let cpus = [
        (1usize, CpuBackend::new(Some(1))),
        (2, CpuBackend::new(Some(2))),
    ];
    for dtype in [
        DType::Q4_1,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q6_K,
        DType::F16,
    ] {
        for &(k0, m, name) in &SHAPES {
            let k = if dtype.block_size() == 256 {
                k0.div_ceil(256) * 256
            } else {
                k0
            };
            let w = weight(&mut r, dtype, m, k);
            let wbytes = w.size_in_bytes() as u64;
            for t in [1usize, 8, 16, 512] {
                if t == 512 && name == "head" {
                    continue; // prefill computes logits for the last token only
                }
                let x = acts(&mut r, t, k);
                let mut out = Tensor::zeros_cpu(DType::F32, &[t, m]).expect("tensor");
                let kind = match t {
                    1 => "gemv",
                    512 => "prefill",
                    _ => "gemm",
                };
                let mut g = c.benchmark_group(format!("{kind}/{dtype}/{name}_k{k}_m{m}"));
                if quick {
                    g.warm_up_time(Duration::from_millis(100))
                        .measurement_time(Duration::from_millis(300));
                }
                g.sample_size(10);
                g.throughput(if t == 512 {
                    Throughput::Elements((2 * t * m * k) as u64)
                } else {
                    Throughput::Bytes(wbytes)
                });
                for (threads, cpu) in &cpus {
                    g.bench_with_input(
                        BenchmarkId::new(format!("t{t}"), format!("{threads}thr")),
                        &t,
                        |b, _| {
                            b.iter(|| {
                                cpu.matmul(black_box(&x), black_box(&w), &mut out)
                                    .expect("matmul")
                            })
                        },
                    );
                }
                g.finish();
            }
        }
    }
}

/// One forward step's matmuls of SmolLM2-135M Q4_1 (Q8_0 head).
fn model_step(quick: bool, filter: Option<&str>) {
    if filter.is_some_and(|f| !"model step".contains(f) && !f.contains("model")) {
        return;
    }
    let mut r = ChaCha8Rng::seed_from_u64(2);
    let (h, f, kv, vocab, layers) = (576, 1536, 192, 49152, 30);
    let mats: Vec<Vec<Tensor>> = (0..layers)
        .map(|_| {
            vec![
                weight(&mut r, DType::Q4_1, h, h),
                weight(&mut r, DType::Q4_1, kv, h),
                weight(&mut r, DType::Q4_1, kv, h),
                weight(&mut r, DType::Q4_1, h, h),
                weight(&mut r, DType::Q4_1, f, h),
                weight(&mut r, DType::Q4_1, f, h),
                weight(&mut r, DType::Q4_1, h, f),
            ]
        })
        .collect();
    let head = weight(&mut r, DType::Q8_0, vocab, h);
    let layer_bytes: usize = mats.iter().flatten().map(|w| w.size_in_bytes()).sum();
    let head_bytes = head.size_in_bytes();
    let layer_flops_per_tok: usize = mats.iter().flatten().map(|w| 2 * w.numel()).sum();
    let head_flops = 2 * head.numel();
    println!(
        "\nmodel step: SmolLM2-135M matmuls, {} MB Q4_1 layers + {} MB Q8_0 head",
        layer_bytes / 1_000_000,
        head_bytes / 1_000_000
    );
    for threads in [1usize, 2] {
        let cpu = CpuBackend::new(Some(threads));
        for t in [1usize, 8, 16, 512] {
            let with_head = t != 512;
            let xs_h = acts(&mut r, t, h);
            let xs_f = acts(&mut r, t, f);
            let mut o_h = Tensor::zeros_cpu(DType::F32, &[t, h]).expect("t");
            let mut o_kv = Tensor::zeros_cpu(DType::F32, &[t, kv]).expect("t");
            let mut o_f = Tensor::zeros_cpu(DType::F32, &[t, f]).expect("t");
            let mut o_v = Tensor::zeros_cpu(DType::F32, &[t.min(16), vocab]).expect("t");
            let xs_last = acts(&mut r, t.min(16), h);
            let step = |cpu: &CpuBackend,
                        o_h: &mut Tensor,
                        o_kv: &mut Tensor,
                        o_f: &mut Tensor,
                        o_v: &mut Tensor| {
                for l in &mats {
                    cpu.matmul(&xs_h, &l[0], o_h).expect("mm");
                    cpu.matmul(&xs_h, &l[1], o_kv).expect("mm");
                    cpu.matmul(&xs_h, &l[2], o_kv).expect("mm");
                    cpu.matmul(&xs_h, &l[3], o_h).expect("mm");
                    cpu.matmul(&xs_h, &l[4], o_f).expect("mm");
                    cpu.matmul(&xs_h, &l[5], o_f).expect("mm");
                    cpu.matmul(&xs_f, &l[6], o_h).expect("mm");
                }
                if with_head {
                    cpu.matmul(&xs_last, &head, o_v).expect("mm");
                }
            };
            step(&cpu, &mut o_h, &mut o_kv, &mut o_f, &mut o_v);
            let budget = if quick { 0.5 } else { 2.0 };
            let (mut n, start) = (0usize, Instant::now());
            while start.elapsed().as_secs_f64() < budget || n < 3 {
                step(&cpu, &mut o_h, &mut o_kv, &mut o_f, &mut o_v);
                n += 1;
            }
            let dt = start.elapsed().as_secs_f64() / n as f64;
            let bytes = layer_bytes + if with_head { head_bytes } else { 0 };
            let flops = t * layer_flops_per_tok + if with_head { t * head_flops } else { 0 };
            println!(
                "  {threads} thr  T={t:<4} {:8.3} ms/step  {:8.1} tok/s  {:6.1} GB/s weights  {:7.1} GFLOP/s",
                dt * 1e3,
                t as f64 / dt,
                bytes as f64 / dt / 1e9,
                flops as f64 / dt / 1e9
            );
        }
    }
}

fn main() {
    let quick = std::env::var("SLUICE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut c = Criterion::default().configure_from_args();
    shapes(&mut c, quick);
    c.final_summary();
    model_step(quick, filter.as_deref());
}
