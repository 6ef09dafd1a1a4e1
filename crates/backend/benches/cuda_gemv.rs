//! Batch-1 GEMV probe on the GPU: the weight bandwidth of each decode matmul of the 8B
//! and 1B Llama shapes, alone and as a step's chain of matmuls, against nothing but the
//! clock. Prints GB/s of weight read; no assertions (a probe for kernel tuning, run on
//! the device machine: scripts/cuda/prepare.sh stages it as `bench-cuda_gemv`).
//!
//! `cargo bench -p sluice-backend --bench cuda_gemv [-- 8b|1b|chain|layers]...`; the backend's
//! tuning variables (`SLUICE_GEMV_BLOCKS_PER_SM`, `SLUICE_GEMV_PREFETCH`, `SLUICE_PDL`)
//! apply, so the same binary compares them. Each matmul rotates over enough copies of
//! its weight (at least 400 MB) that every call streams it from memory, not from L2.
//! `layers` replays the step's layers whole, without the attention, and the attention
//! alone (cuda_layers/mod.rs). Without a GPU it prints a note and exits.

mod cuda_layers;

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::{DType, Device, Tensor};

/// (name, rows M, columns K) of one layer's batch-1 matmuls and the head.
const SHAPES_8B: [(&str, usize, usize); 5] = [
    ("8B qkv", 6144, 4096),
    ("8B o", 4096, 4096),
    ("8B gate/up", 28672, 4096),
    ("8B down", 4096, 14336),
    ("8B head", 49152, 4096),
];
const SHAPES_1B: [(&str, usize, usize); 5] = [
    ("1B qkv", 3072, 2048),
    ("1B o", 2048, 2048),
    ("1B gate/up", 16384, 2048),
    ("1B down", 2048, 8192),
    ("1B head", 49152, 2048),
];

/// A bf16 weight of random values of magnitude 2^-7 (finite, no denormals), tiled from
/// one random pattern at a random offset: the values do not change the time, and
/// generating gigabytes of them would take longer than the probe.
fn weight(g: &Device, rng: &mut ChaCha8Rng, m: usize, k: usize) -> Tensor {
    thread_local! {
        static POOL: Vec<u8> = {
            let mut raw = vec![0u8; 1 << 25];
            ChaCha8Rng::seed_from_u64(11).fill(raw.as_mut_slice());
            for h in raw.chunks_exact_mut(2) {
                let v = (u16::from_le_bytes([h[0], h[1]]) & 0x807f) | 0x3c00;
                h.copy_from_slice(&v.to_le_bytes());
            }
            raw
        };
    }
    let n = m * k * 2;
    let mut bytes = Vec::with_capacity(n);
    POOL.with(|pool| {
        let mut at = 2 * rng.random_range(0..pool.len() / 2);
        while bytes.len() < n {
            let take = (pool.len() - at).min(n - bytes.len());
            bytes.extend_from_slice(&pool[at..at + take]);
            at = 0;
        }
    });
    let host = Tensor::from_bytes_cpu(DType::BF16, &[m, k], &bytes).expect("host weight");
    g.load_weight(host).expect("upload weight")
}

fn x_row(g: &Device, rng: &mut ChaCha8Rng, k: usize) -> Tensor {
    let v: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
    g.upload(&Tensor::from_f32_cpu(&[1, k], &v).expect("x"))
        .expect("upload x")
}

/// Seconds per call of `f` over `reps` calls after a warm-up, best of three rounds.
fn time(g: &Device, reps: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..3 {
        f(i);
    }
    g.synchronize().expect("sync");
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for i in 0..reps {
            f(i);
        }
        g.synchronize().expect("sync");
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

fn single(g: &Device, rng: &mut ChaCha8Rng, shapes: &[(&str, usize, usize)]) {
    for &(name, m, k) in shapes {
        let bytes = m * k * 2;
        let copies = (400_000_000usize).div_ceil(bytes).max(2);
        let ws: Vec<Tensor> = (0..copies).map(|_| weight(g, rng, m, k)).collect();
        let x = x_row(g, rng, k);
        let mut out = g.zeros(DType::F32, &[1, m]).expect("out");
        let s = time(g, 200, |i| {
            g.matmul(&x, &ws[i % copies], &mut out).expect("matmul")
        });
        println!(
            "{name:<12} {m:>6} x {k:<6} {:>8.2} us  {:>7.1} GB/s",
            s * 1e6,
            bytes as f64 / s / 1e9
        );
    }
}

/// The matmuls of a whole decode step of the 8B or 1B shape (every layer's own
/// weights, then the head), back to back on the stream as a step issues them, without
/// the attention and the small kernels between them.
fn chain(g: &Device, rng: &mut ChaCha8Rng, shapes: &[(&str, usize, usize)], layers: usize) {
    let mut ws = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..layers {
        for &(_, m, k) in &shapes[..4] {
            ws.push((weight(g, rng, m, k), m, k));
            bytes += m * k * 2;
        }
    }
    let (_, hm, hk) = shapes[4];
    ws.push((weight(g, rng, hm, hk), hm, hk));
    bytes += hm * hk * 2;
    let xs: Vec<Tensor> = ws.iter().map(|&(_, _, k)| x_row(g, rng, k)).collect();
    let mut outs: Vec<Tensor> = ws
        .iter()
        .map(|&(_, m, _)| g.zeros(DType::F32, &[1, m]).expect("out"))
        .collect();
    let s = time(g, 20, |_| {
        for (i, (w, _, _)) in ws.iter().enumerate() {
            g.matmul(&xs[i], w, &mut outs[i]).expect("matmul");
        }
    });
    println!(
        "{} chain: {} matmuls, {:.3} GB, {:>8.1} us per step, {:>7.1} GB/s, {:.1} steps/s",
        shapes[0].0.split(' ').next().unwrap_or(""),
        ws.len(),
        bytes as f64 / 1e9,
        s * 1e6,
        bytes as f64 / s / 1e9,
        1.0 / s
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |w: &str| args.is_empty() || args.iter().any(|a| a == w);
    let g = match Device::cuda(0, CudaWeightType::Bf16) {
        Ok(g) => g,
        Err(e) => {
            println!("note: no CUDA device ({e}); nothing to probe");
            return;
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    if want("8b") {
        single(&g, &mut rng, &SHAPES_8B);
    }
    if want("1b") {
        single(&g, &mut rng, &SHAPES_1B);
    }
    if want("chain") {
        chain(&g, &mut rng, &SHAPES_8B, 32);
        chain(&g, &mut rng, &SHAPES_1B, 16);
    }
    if want("layers") {
        // The context of `bench model -p 512 -n 128` halfway through its generation.
        for shape in [&cuda_layers::LAYERS_8B, &cuda_layers::LAYERS_1B] {
            cuda_layers::layers(&g, &mut rng, shape, 576, &weight, &|g, reps, f| {
                time(g, reps, f)
            });
        }
    }
}
