//! Decode attention over each KV cache dtype: one layer of SmolLM2-135M's geometry (9
//! query heads, 3 KV heads of 64), `seqs` sequences decoding one token each at context
//! `ctx`, timed per call (minimum of several runs, so a busy machine disturbs it less),
//! with the KV bytes read per call and the achieved GB/s. Checks each dtype's output
//! against the F32 cache's first.
//!
//! ```text
//! cargo run --release -p sluice-backend --example attention_kv_dtype -- [threads] [seqs]
//! ```

use std::time::Instant;

use sluice_backend::cpu::attention::KV_CACHE_DTYPES;
use sluice_backend::cpu::CpuFeatures;
use sluice_backend::quant::fp8::e4m3_row_from_f32;
use sluice_backend::quant::quantize_row;
use sluice_backend::{AttentionParams, DType, Device, PagedAttentionMeta, Tensor};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let threads = args.first().copied().unwrap_or(1);
    let seqs = args.get(1).copied().unwrap_or(1);
    let (h, kv, hd, bs) = (9usize, 3usize, 64usize, 16usize);
    let dev = Device::Cpu(std::sync::Arc::new(
        sluice_backend::cpu::CpuBackend::with_features(threads, CpuFeatures::detect_capped(None)),
    ));
    println!(
        "{} | {threads} thread(s), {seqs} sequence(s) decoding",
        dev.name()
    );
    println!(
        "{:>6} {:>6} {:>10} {:>12} {:>8} {:>10}",
        "ctx", "dtype", "us/call", "KV MB/call", "GB/s", "max diff"
    );
    for ctx in [1024usize, 4096] {
        let blocks_per_seq = ctx.div_ceil(bs);
        let num_blocks = blocks_per_seq * seqs;
        let n = num_blocks * kv * bs * hd;
        // A cheap deterministic pseudo-random fill in [-1, 1).
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let kf: Vec<f32> = (0..n).map(|_| next()).collect();
        let vf: Vec<f32> = (0..n).map(|_| next()).collect();
        let q: Vec<f32> = (0..seqs * h * hd).map(|_| next()).collect();
        let i32t = |v: &[i32], shape: &[usize]| {
            let mut t = Tensor::zeros_cpu(DType::I32, shape).unwrap();
            t.as_i32_mut().unwrap().copy_from_slice(v);
            t
        };
        let starts: Vec<i32> = (0..=seqs as i32).collect();
        let st = i32t(&starts, &[seqs + 1]);
        let ct = i32t(&vec![ctx as i32; seqs], &[seqs]);
        let tables: Vec<i32> = (0..num_blocks as i32).collect();
        let tt = i32t(&tables, &[seqs, blocks_per_seq]);
        let qt = Tensor::from_f32_cpu(&[seqs, h * hd], &q).unwrap();
        let meta = PagedAttentionMeta {
            query_start: &st,
            context_lens: &ct,
            block_tables: &tt,
            num_seqs: seqs,
            block_size: bs,
            custom_mask: None,
        };
        let params = AttentionParams {
            n_heads: h,
            n_kv_heads: kv,
            head_dim: hd,
            scale: 0.125,
            sliding_window: None,
            softcap: None,
        };
        let mut reference: Vec<f32> = Vec::new();
        for dtype in KV_CACHE_DTYPES {
            let shape = [num_blocks, kv, bs, hd];
            let store = |vals: &[f32]| {
                let rb = dtype.row_bytes(hd);
                let mut bytes = vec![0u8; vals.len() / hd * rb];
                for (src, dst) in vals.chunks_exact(hd).zip(bytes.chunks_exact_mut(rb)) {
                    if dtype == DType::F8E4M3 {
                        // The FP8 cache has no scale (quantize_row refuses F8E4M3).
                        e4m3_row_from_f32(src, dst);
                    } else {
                        quantize_row(dtype, src, dst).unwrap();
                    }
                }
                Tensor::from_bytes_cpu(dtype, &shape, &bytes).unwrap()
            };
            let (kt, vt) = (store(&kf), store(&vf));
            let mut out = Tensor::zeros_cpu(DType::F32, &[seqs, h * hd]).unwrap();
            let mut best = f64::INFINITY;
            for _ in 0..15 {
                let t = Instant::now();
                dev.paged_attention(&qt, &kt, &vt, &meta, &params, &mut out)
                    .unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            let got = out.as_f32().unwrap().to_vec();
            if reference.is_empty() {
                reference = got.clone();
            }
            let diff = got
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let bytes = (kt.size_in_bytes() + vt.size_in_bytes()) as f64;
            println!(
                "{ctx:>6} {:>6} {:>10.1} {:>12.2} {:>8.1} {:>10.1e}",
                dtype.name(),
                best * 1e6,
                bytes / 1e6,
                bytes / best / 1e9,
                diff
            );
        }
    }
}
