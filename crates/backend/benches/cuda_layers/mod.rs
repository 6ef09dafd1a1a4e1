//! The decode step's layers on the GPU, as the Llama block runs them at batch 1 (the fused
//! Q/K/V GEMV with RoPE and the cache write, the paged decode attention, the O projection
//! with the residual, the fused norm + gate/up GEMV with the GLU, the down projection
//! with the residual), captured into one CUDA graph per variant and replayed:
//! - `layers`: every layer whole, as a step runs them (without the embedding, the head
//!   and the sampling);
//! - `no-attention`: the same graph without the attention kernels (the O projection reads
//!   the previous replay's attention output), so the difference is what the attention
//!   costs inside the step, with PDL overlap, not alone as Nsight Compute times it;
//! - `attention`: the attention kernels alone, back to back.
//!
//! Run by cuda_gemv.rs's `layers` argument (scripts/cuda/prepare.sh stages it as
//! `bench-cuda_gemv`); prints µs per step and GB/s of weight. No assertions.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::trace::{KernelSpan, MARKS};
use sluice_backend::{
    AttentionParams, DType, Device, KvWrite, PagedAttentionMeta, QkvDims, RopeStyle, Tensor,
};

/// One of the two benchmark shapes (`llama-3.1-8b-bench`, `llama-3.2-1b-bench`).
pub struct LayerShape {
    pub name: &'static str,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub layers: usize,
}

pub const LAYERS_8B: LayerShape = LayerShape {
    name: "8B",
    hidden: 4096,
    n_heads: 32,
    n_kv_heads: 8,
    head_dim: 128,
    ffn: 14336,
    layers: 32,
};
pub const LAYERS_1B: LayerShape = LayerShape {
    name: "1B",
    hidden: 2048,
    n_heads: 32,
    n_kv_heads: 8,
    head_dim: 64,
    ffn: 8192,
    layers: 16,
};

const BLOCK_SIZE: usize = 16;

/// cuda_gemv.rs's bf16 weight maker and timer (seconds per call of the closure).
pub type MakeWeight = dyn Fn(&Device, &mut ChaCha8Rng, usize, usize) -> Tensor;
pub type Timer = dyn Fn(&Device, usize, &mut dyn FnMut(usize)) -> f64;

struct Layer {
    wqkv: Tensor,
    wo: Tensor,
    wgu: Tensor,
    wdown: Tensor,
    attn_norm: Tensor,
    ffn_norm: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
}

fn i32_tensor(g: &Device, shape: &[usize], values: &[i32]) -> Tensor {
    let mut t = Tensor::zeros_cpu(DType::I32, shape).expect("i32 tensor");
    t.as_i32_mut().expect("i32").copy_from_slice(values);
    g.upload(&t).expect("upload i32")
}

/// A bf16 cache of random values in [-2, 2) (no infinities or NaNs).
fn bf16_cache(g: &Device, rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let bytes: Vec<u8> = (0..n)
        .flat_map(|_| ((rng.random::<u16>() & 0xc07f) | 0x3f00).to_le_bytes())
        .collect();
    let host = Tensor::from_bytes_cpu(DType::BF16, shape, &bytes).expect("cache");
    g.upload(&host).expect("upload cache")
}

fn f32_tensor(g: &Device, rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    g.upload(&Tensor::from_f32_cpu(shape, &v).expect("f32 tensor"))
        .expect("upload f32")
}

/// Which kernels of each layer a captured step holds.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Layers,
    NoAttention,
    Attention,
}

/// Times the layers of `s` at a context of `ctx` keys; `weight` makes a bf16 [m, k]
/// weight (cuda_gemv.rs's).
pub fn layers(
    g: &Device,
    rng: &mut ChaCha8Rng,
    s: &LayerShape,
    ctx: usize,
    weight: &MakeWeight,
    time: &Timer,
) {
    let (h, nh, nkv, hd) = (s.hidden, s.n_heads, s.n_kv_heads, s.head_dim);
    let qkv_rows = (nh + 2 * nkv) * hd;
    let blocks_per_seq = ctx.div_ceil(BLOCK_SIZE);
    let num_blocks = blocks_per_seq + 8;
    let weight_bytes = s.layers * 2 * (qkv_rows * h + h * nh * hd + 3 * s.ffn * h);
    let mut layers: Vec<Layer> = (0..s.layers)
        .map(|_| Layer {
            wqkv: weight(g, rng, qkv_rows, h),
            wo: weight(g, rng, h, nh * hd),
            wgu: weight(g, rng, 2 * s.ffn, h),
            wdown: weight(g, rng, h, s.ffn),
            attn_norm: f32_tensor(g, rng, &[h], 1.0),
            ffn_norm: f32_tensor(g, rng, &[h], 1.0),
            k_cache: bf16_cache(g, rng, &[num_blocks, nkv, BLOCK_SIZE, hd]),
            v_cache: bf16_cache(g, rng, &[num_blocks, nkv, BLOCK_SIZE, hd]),
        })
        .collect();
    // One sequence whose blocks are scattered over the pool; the new token at ctx - 1.
    let mut table: Vec<i32> = (0..num_blocks as i32).collect();
    for i in (1..table.len()).rev() {
        table.swap(i, rng.random_range(0..=i));
    }
    table.truncate(blocks_per_seq);
    let pos = ctx - 1;
    let slot = table[pos / BLOCK_SIZE] * BLOCK_SIZE as i32 + (pos % BLOCK_SIZE) as i32;
    // The engine's table width (model/src/arch/common.rs): the next power of two of the
    // blocks, padded with block 0. The width bounds the context, which sets the decode
    // attention's key splits (8 at 576 keys, not 5).
    let width = blocks_per_seq.next_power_of_two();
    table.resize(width, 0);
    let block_tables = i32_tensor(g, &[1, width], &table);
    let query_start = i32_tensor(g, &[2], &[0, 1]);
    let context_lens = i32_tensor(g, &[1], &[ctx as i32]);
    let positions = i32_tensor(g, &[1], &[pos as i32]);
    let slots = i32_tensor(g, &[1], &[slot]);
    let half = hd / 2;
    let cos = f32_tensor(g, rng, &[ctx, half], 1.0);
    let sin = f32_tensor(g, rng, &[ctx, half], 1.0);
    let mut x = f32_tensor(g, rng, &[1, h], 1.0);
    let mut q = g.zeros(DType::F32, &[1, nh * hd]).expect("q");
    let mut k = g.zeros(DType::F32, &[1, nkv * hd]).expect("k");
    let mut v = g.zeros(DType::F32, &[1, nkv * hd]).expect("v");
    let mut attn = g.zeros(DType::F32, &[1, nh * hd]).expect("attention out");
    let mut act = g.zeros(DType::F32, &[1, s.ffn]).expect("glu out");
    let dims = QkvDims {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        style: RopeStyle::Neox,
    };
    let params = AttentionParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        sliding_window: None,
        softcap: None,
    };
    let meta = PagedAttentionMeta {
        query_start: &query_start,
        context_lens: &context_lens,
        block_tables: &block_tables,
        num_seqs: 1,
        block_size: BLOCK_SIZE,
        custom_mask: None,
    };
    let mut step = |variant: Variant| {
        for l in layers.iter_mut() {
            if variant != Variant::Attention {
                let write = KvWrite {
                    k_cache: &mut l.k_cache,
                    v_cache: &mut l.v_cache,
                    slots: &slots,
                };
                g.rms_norm_matmul_qkv_rope(
                    &x,
                    &l.attn_norm,
                    1e-5,
                    &l.wqkv,
                    &positions,
                    &cos,
                    &sin,
                    dims,
                    &mut q,
                    &mut k,
                    &mut v,
                    write,
                )
                .expect("qkv");
            }
            if variant != Variant::NoAttention {
                g.paged_attention(&q, &l.k_cache, &l.v_cache, &meta, &params, &mut attn)
                    .expect("attention");
            }
            if variant != Variant::Attention {
                g.matmul_accumulate(&attn, &l.wo, &mut x).expect("o");
                g.rms_norm_matmul_glu(&x, &l.ffn_norm, 1e-5, &l.wgu, &mut act, true)
                    .expect("glu");
                g.matmul_accumulate(&act, &l.wdown, &mut x).expect("down");
            }
        }
    };
    let mut results = Vec::new();
    for (variant, label) in [
        (Variant::Layers, "layers"),
        (Variant::NoAttention, "no-attention"),
        (Variant::Attention, "attention"),
    ] {
        step(variant); // kernels compiled, scratch sized before the capture
        g.synchronize().expect("sync");
        g.begin_capture().expect("capture");
        step(variant);
        let graph = g.end_capture().expect("end capture");
        let secs = time(g, 20, &mut |_| g.launch_graph(&graph).expect("replay"));
        results.push((variant, label, secs));
        if variant != Variant::Attention {
            timeline(g, s, label, &|| g.launch_graph(&graph).expect("replay"));
        }
    }
    for &(variant, label, secs) in &results {
        let bytes = if variant == Variant::Attention {
            0
        } else {
            weight_bytes
        };
        println!(
            "{} {label:<13} {} layers, ctx {ctx}: {:>8.1} us per step ({:>5.2} us per layer), {:>7.1} GB/s of weight",
            s.name,
            s.layers,
            secs * 1e6,
            secs * 1e6 / s.layers as f64,
            bytes as f64 / secs / 1e9
        );
    }
    let (full, without) = (results[0].2, results[1].2);
    println!(
        "{} attention inside the step: {:.1} us per step, {:.2} us per layer ({:.1}% of the layers)",
        s.name,
        (full - without) * 1e6,
        (full - without) * 1e6 / s.layers as f64,
        100.0 * (full - without) / full
    );
}

/// Replays of a traced step (the timeline build, `SLUICE_CUDA_TRACE=1`; nothing
/// otherwise): per kernel of a layer, averaged over the inner layers and 20 replays,
/// in µs:
/// - `launch`: its first block's entry after the previous kernel's first wait return
///   (the PDL launch: a kernel starts once every block of the one before has waited);
/// - `entries`: first to last block's entry;
/// - `to wait`: its first wait return after its first entry (how long it ran ahead);
/// - `waits`: first to last block's wait return;
/// - `critical`: the next kernel's first wait return after its own, i.e. from the end
///   of the kernel before it to its own end: what it costs on the step's critical path;
/// - then the kernel's marks (`trace_mark(i)`, the last block's), after its first wait
///   return.
fn timeline(g: &Device, s: &LayerShape, label: &str, replay: &dyn Fn()) {
    let Device::Cuda(cuda) = g else { return };
    if !cuda.trace_enabled() {
        return;
    }
    const REPLAYS: usize = 20;
    let mut per_layer = 0;
    // [kernel of the layer] -> sums of launch, entries, to wait, waits, critical; count.
    let mut sums: Vec<[f64; 6]> = Vec::new();
    let mut blocks: Vec<u64> = Vec::new();
    // [kernel of the layer][mark] -> sum of µs after the first wait return; count.
    let mut marks: Vec<[(f64, f64); MARKS]> = Vec::new();
    let mut odd_counts = 0;
    for _ in 0..REPLAYS {
        cuda.trace_reset().expect("trace reset");
        replay();
        let spans: Vec<KernelSpan> = cuda.trace_read().expect("trace read");
        if spans.is_empty() || !spans.len().is_multiple_of(s.layers) {
            odd_counts += 1;
            continue;
        }
        per_layer = spans.len() / s.layers;
        sums.resize(per_layer, [0.0; 6]);
        blocks.resize(per_layer, 0);
        marks.resize(per_layer, [(0.0, 0.0); MARKS]);
        // Inner layers only: the first one follows the previous replay, the last one's
        // down projection has no next kernel.
        for layer in 1..s.layers - 1 {
            for k in 0..per_layer {
                let i = layer * per_layer + k;
                let (prev, cur, next) = (&spans[i - 1], &spans[i], &spans[i + 1]);
                let us = |a: u64, b: u64| (a as f64 - b as f64) / 1e3;
                let acc = &mut sums[k];
                acc[0] += us(cur.first_entry, prev.first_wait);
                acc[1] += us(cur.last_entry, cur.first_entry);
                acc[2] += us(cur.first_wait, cur.first_entry);
                acc[3] += us(cur.last_wait, cur.first_wait);
                acc[4] += us(next.first_wait, cur.first_wait);
                acc[5] += 1.0;
                blocks[k] = cur.blocks;
                for (m, &t) in cur.marks.iter().enumerate() {
                    if t != 0 {
                        marks[k][m].0 += us(t, cur.first_wait);
                        marks[k][m].1 += 1.0;
                    }
                }
            }
        }
    }
    if odd_counts > 0 {
        println!("{} {label} timeline: {odd_counts} of {REPLAYS} replays recorded a kernel count that is not a multiple of the layers", s.name);
    }
    if per_layer == 0 {
        return;
    }
    println!(
        "{} {label} timeline (us, mean of {} layer-replays): kernel  blocks  launch  entries  to-wait  waits  critical",
        s.name, sums[0][5]
    );
    let mut total = 0.0;
    for (k, acc) in sums.iter().enumerate() {
        let n = acc[5].max(1.0);
        total += acc[4] / n;
        let mark_text: String = marks[k]
            .iter()
            .enumerate()
            .filter(|(_, m)| m.1 > 0.0)
            .map(|(i, m)| format!("  m{i} {:.2}", m.0 / m.1))
            .collect();
        println!(
            "{} {label} timeline: k{k}  {:>5}  {:>6.2}  {:>7.2}  {:>7.2}  {:>5.2}  {:>8.2}{mark_text}",
            s.name,
            blocks[k],
            acc[0] / n,
            acc[1] / n,
            acc[2] / n,
            acc[3] / n,
            acc[4] / n
        );
    }
    println!(
        "{} {label} timeline: {total:.2} us per layer on the critical path",
        s.name
    );
}
