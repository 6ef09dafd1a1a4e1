//! The CUDA attention kernels against the CPU backend (the oracle) on fresh random
//! inputs: the paged lane kernel, the tensor-core prefill kernel, the decode kernels
//! (block, batch-1 `flash_decode_ahead`, warp-per-item `flash_decode_warp`) with and
//! without cluster merges, over f32, bf16 and FP8 (E4M3) caches; block tables of random
//! ids from a large pool, odd block sizes, windows, softcaps, GQA 1-8. Outputs are
//! poisoned with NaN before each run, so an element the kernel never writes fails.
//!
//! Runs only where a CUDA driver and GPU exist (the device script runs it on the lent
//! GPU); elsewhere each test prints a note and passes, unless SLUICE_REQUIRE_CUDA=1.
//!
//! Tolerances (max |cuda - cpu| / max(1, max |cpu|)): over a bf16 KV cache (K/V rounded
//! to bf16) 2e-2; over f32 1e-5; over FP8 (E4M3) on both devices (the same codes; f16
//! products on the GPU) 2e-2.

mod cuda_common;

use cuda_common::{cpu, down, gpu, host, host_i32, poisoned, rel_err, rnd, up, up_i32};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::{AttentionParams, DType, Device, PagedAttentionMeta, Tensor};

struct AttnCase {
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    block_size: usize,
    window: Option<usize>,
    softcap: Option<f32>,
    /// (new rows, context length) per sequence
    seqs: Vec<(usize, usize)>,
}

/// An `AttnCase` from its fields in order (the attention tests' tables).
fn case(
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    block_size: usize,
    window: Option<usize>,
    softcap: Option<f32>,
    seqs: Vec<(usize, usize)>,
) -> AttnCase {
    AttnCase {
        n_heads,
        n_kv,
        hd,
        block_size,
        window,
        softcap,
        seqs,
    }
}

/// kv_write + paged_attention on both devices, the relative error of the GPU's output;
/// the CPU cache is f32, the GPU's `kv` (an FP8 cache is FP8 on both, and both must
/// write the same codes: the CPU then attends over exactly the GPU's K/V values).
/// Queries uniform in `[-q_amp, q_amp)`: a larger amplitude makes the softmax peakier,
/// so a key wrongly masked in or out moves the output more.
fn attention_case_q(
    g: &Device,
    kv: DType,
    case: &AttnCase,
    q_amp: f32,
    rng: &mut ChaCha8Rng,
) -> f64 {
    let c = cpu();
    let (nh, nkv, hd, bs) = (case.n_heads, case.n_kv, case.hd, case.block_size);
    // A pool with room to spare (random ids), 4096 blocks at least.
    let used: usize = case.seqs.iter().map(|s| s.1.div_ceil(bs)).sum();
    let num_blocks = (used + used / 4).max(4096);
    let kvd = nkv * hd;
    // Each sequence's blocks: random distinct ids from a large pool.
    let mut free: Vec<i32> = (0..num_blocks as i32).collect();
    let mut tables = Vec::new();
    let mut slots = Vec::new();
    let mut qs = vec![0i32];
    let mut ctx = Vec::new();
    let max_blocks = case.seqs.iter().map(|s| s.1.div_ceil(bs)).max().unwrap();
    // Whole context written this step (cached prefix + new rows) so both caches hold the
    // same values; attention then reads only `context_len` keys per sequence.
    let mut k_all = Vec::new();
    for &(q, l) in &case.seqs {
        let nb = l.div_ceil(bs);
        let mut row = Vec::new();
        for _ in 0..nb {
            let i = rng.random_range(0..free.len());
            row.push(free.swap_remove(i));
        }
        for p in 0..l {
            slots.push(row[p / bs] * bs as i32 + (p % bs) as i32);
        }
        row.resize(max_blocks, 0);
        tables.extend(row);
        qs.push(qs.last().unwrap() + q as i32);
        ctx.push(l as i32);
        k_all.push(l);
    }
    let total: usize = k_all.iter().sum();
    let kv_k = rnd(rng, total * kvd, 1.0);
    let kv_v = rnd(rng, total * kvd, 1.0);
    let shape = [num_blocks, nkv, bs, hd];
    let cpu_kv = if kv == DType::F8E4M3 { kv } else { DType::F32 };
    let mut ck = c.zeros(cpu_kv, &shape).unwrap();
    let mut cv = c.zeros(cpu_kv, &shape).unwrap();
    let mut gk = g.zeros(kv, &shape).unwrap();
    let mut gv = g.zeros(kv, &shape).unwrap();
    c.kv_write(
        &host(&[total, kvd], &kv_k),
        &host(&[total, kvd], &kv_v),
        &mut ck,
        &mut cv,
        &host_i32(&slots),
    )
    .unwrap();
    g.kv_write(
        &up(g, &[total, kvd], &kv_k),
        &up(g, &[total, kvd], &kv_v),
        &mut gk,
        &mut gv,
        &up_i32(g, &slots),
    )
    .unwrap();
    if kv == DType::F8E4M3 {
        for (name, got, want) in [("k", &gk, &ck), ("v", &gv, &cv)] {
            let got = g.download(got).unwrap();
            assert!(
                got.cpu_bytes().unwrap() == want.cpu_bytes().unwrap(),
                "FP8 {name} cache codes differ between the GPU and the CPU"
            );
        }
    }
    let t = *qs.last().unwrap() as usize;
    let qv = rnd(rng, t * nh * hd, q_amp);
    let params = AttentionParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        sliding_window: case.window,
        softcap: case.softcap,
    };
    let mut bt_host = Tensor::zeros_cpu(DType::I32, &[case.seqs.len(), max_blocks]).unwrap();
    bt_host.as_i32_mut().unwrap().copy_from_slice(&tables);
    let (hqs, hctx) = (host_i32(&qs), host_i32(&ctx));
    let meta = PagedAttentionMeta {
        query_start: &hqs,
        context_lens: &hctx,
        block_tables: &bt_host,
        num_seqs: case.seqs.len(),
        block_size: bs,
        custom_mask: None,
    };
    let mut want = c.zeros(DType::F32, &[t, nh * hd]).unwrap();
    c.paged_attention(
        &host(&[t, nh * hd], &qv),
        &ck,
        &cv,
        &meta,
        &params,
        &mut want,
    )
    .unwrap();
    let (gqs, gctx, gbt) = (up_i32(g, &qs), up_i32(g, &ctx), g.upload(&bt_host).unwrap());
    let gmeta = PagedAttentionMeta {
        query_start: &gqs,
        context_lens: &gctx,
        block_tables: &gbt,
        num_seqs: case.seqs.len(),
        block_size: bs,
        custom_mask: None,
    };
    // The output projection of check_staged_attention_output, made before the attention
    // (a weight upload may launch a conversion kernel, which drops a staged copy).
    let w_o = g
        .load_weight(host(&[24, nh * hd], &rnd(rng, 24 * nh * hd, 0.5)))
        .unwrap();
    let mut out = poisoned(g, &[t, nh * hd]);
    g.paged_attention(
        &up(g, &[t, nh * hd], &qv),
        &gk,
        &gv,
        &gmeta,
        &params,
        &mut out,
    )
    .unwrap();
    check_staged_attention_output(g, kv, case, &out, &w_o);
    rel_err(&down(g, &out), want.as_f32().unwrap())
}

/// The tensor-core attention kernels (decode, its merge, and the prefill kernel for the
/// rows it rewrites) write a bf16 copy of their output for the output projection
/// ("staged activations", cuda/ops.rs) with a bf16 cache and head_dim 64/128, when a
/// GEMM (more than 4 rows) follows. The GEMM right after must give bit for bit what
/// converting the f32 output gives, and must take the copy exactly then.
fn check_staged_attention_output(g: &Device, kv: DType, case: &AttnCase, out: &Tensor, w: &Tensor) {
    let Device::Cuda(backend) = g else {
        return;
    };
    let (t, width) = (out.rows(), out.cols());
    let tensor_core_kv = matches!(kv, DType::BF16 | DType::F8E4M3);
    let staged = tensor_core_kv && matches!(case.hd, 64 | 128) && t > 4;
    let uses = backend.staged_gemm_inputs();
    let mut got = poisoned(g, &[t, 24]);
    g.matmul(out, w, &mut got).unwrap();
    let took = backend.staged_gemm_inputs() - uses;
    let fresh = up(g, &[t, width], &down(g, out));
    let mut want = poisoned(g, &[t, 24]);
    g.matmul(&fresh, w, &mut want).unwrap();
    let bits = |x: &Tensor| down(g, x).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want), "staged attention output -> GEMM");
    assert_eq!(
        took,
        u64::from(staged),
        "staged copy taken (t {t}, hd {})",
        case.hd
    );
}

/// Attention's tolerance for a KV cache type: f32 1e-5; bf16 2e-2 (the K/V values
/// rounded to bf16); FP8 2e-2 too, because the CPU reads the same FP8 values and only the
/// GPU's f16 tensor-core products (q and p rounded to f16) differ.
fn kv_tolerance(kv: DType) -> f64 {
    if kv == DType::F32 {
        1e-5
    } else {
        2e-2
    }
}

/// Each of `cases` over a `kv` cache with queries of amplitude `q_amp` within
/// `kv_tolerance` of the CPU (`setting` names the configuration in the messages);
/// returns how many ran.
fn cases_match(
    g: &Device,
    kv: DType,
    cases: &[AttnCase],
    q_amp: f32,
    rng: &mut ChaCha8Rng,
    setting: &str,
) -> u64 {
    let tol = kv_tolerance(kv);
    for (i, case) in cases.iter().enumerate() {
        let e = attention_case_q(g, kv, case, q_amp, rng);
        let what = format!("{setting} case {i} kv {kv} q_amp {q_amp}");
        eprintln!("{what}: rel err {e:.2e} (tol {tol:.0e})");
        assert!(e <= tol, "{what}: {e:.3e} > {tol:.0e}");
    }
    cases.len() as u64
}

#[test]
fn paged_attention_matches_the_cpu() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let cases = [
        // SmolLM2-like GQA (3 per KV head), mixed prefill chunk + decodes
        AttnCase {
            n_heads: 9,
            n_kv: 3,
            hd: 64,
            block_size: 16,
            window: None,
            softcap: None,
            seqs: vec![(37, 37), (1, 300), (1, 1), (5, 120)],
        },
        // Llama-8B-like (4 per KV head), head_dim 128, long decode
        AttnCase {
            n_heads: 32,
            n_kv: 8,
            hd: 128,
            block_size: 16,
            window: None,
            softcap: None,
            seqs: vec![(1, 2000), (16, 700)],
        },
        // Gemma-like MQA, head_dim 256, sliding window + softcap
        AttnCase {
            n_heads: 4,
            n_kv: 1,
            hd: 256,
            block_size: 32,
            window: Some(40),
            softcap: Some(50.0),
            seqs: vec![(60, 100), (1, 77)],
        },
        // MHA with a tiny odd head dim (stories260K-like: 8), block size 7
        AttnCase {
            n_heads: 8,
            n_kv: 4,
            hd: 8,
            block_size: 7,
            window: None,
            softcap: None,
            seqs: vec![(13, 13), (2, 50)],
        },
        // Qwen2.5-7B-like: 7 query heads per KV head (runs the G = 8 kernel), one long
        // decode (split-K over many blocks) next to a short prefill
        AttnCase {
            n_heads: 28,
            n_kv: 4,
            hd: 128,
            block_size: 16,
            window: None,
            softcap: None,
            seqs: vec![(1, 3001), (3, 40)],
        },
        // MHA, a single decode over a long context (the most splits)
        AttnCase {
            n_heads: 4,
            n_kv: 4,
            hd: 64,
            block_size: 16,
            window: None,
            softcap: None,
            seqs: vec![(1, 4500)],
        },
        // 8 query heads per KV head (the kernel's limit), odd head dim 96
        AttnCase {
            n_heads: 16,
            n_kv: 2,
            hd: 96,
            block_size: 16,
            window: Some(5),
            softcap: None,
            seqs: vec![(9, 30)],
        },
    ];
    for kv in [DType::F32, DType::BF16, DType::F8E4M3] {
        cases_match(&g, kv, &cases, 1.0, &mut rng, "attention");
    }
}

/// The tensor-core prefill kernel (kernels/attention_prefill.cu: bf16 cache, head_dim 64
/// or 128, sequences of at least 16 rows) next to the row-per-block kernel in the same
/// call: prompt-only prefills (one 64-row tile, one row more, partial tiles), chunks after
/// a cached prefix (tiles not aligned to the key tiles), decodes and short chunks mixed
/// in, GQA 1 / 3 / 4, block sizes 16, 32 and an odd 7, sliding windows and a softcap.
#[test]
fn prefill_attention_matches_the_cpu() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let many: Vec<(usize, usize)> = (0..24)
        .map(|i| match i % 4 {
            0 => (1, 40 + 37 * i),
            1 => (16 + 5 * i, 16 + 5 * i),
            2 => (3 * i + 20, 11 * i + 200),
            _ => (15, 15 + i),
        })
        .collect();
    let cases = [
        // MHA, hd 64: prompt-only prefills of 200, 64 and 65 rows, one decode
        case(
            4,
            4,
            64,
            16,
            None,
            None,
            vec![(200, 200), (1, 500), (64, 64), (65, 65)],
        ),
        // GQA 4, hd 128: chunks after a cached prefix, a decode, exactly 16 rows
        case(
            8,
            2,
            128,
            16,
            None,
            None,
            vec![(100, 1000), (1, 500), (17, 300), (16, 16)],
        ),
        // GQA 3, hd 64, block size 32, 15 rows (the old kernel) next to longer ones
        case(
            6,
            2,
            64,
            32,
            None,
            None,
            vec![(65, 65), (130, 130), (15, 50), (33, 97)],
        ),
        // GQA 4, hd 128, sliding windows (wide and narrow)
        case(
            8,
            2,
            128,
            16,
            Some(100),
            None,
            vec![(200, 200), (70, 300), (1, 400)],
        ),
        case(
            4,
            1,
            128,
            32,
            Some(7),
            None,
            vec![(64, 129), (100, 100), (2, 9)],
        ),
        // GQA 3, hd 64, softcap small enough to bend the scores
        case(
            6,
            2,
            64,
            16,
            None,
            Some(0.7),
            vec![(80, 80), (40, 150), (1, 33)],
        ),
        // odd block size: every key's address through the table
        case(2, 1, 64, 7, Some(50), None, vec![(50, 60), (129, 129)]),
        // many sequences of every kind, GQA 1, hd 128, block size 32
        case(4, 4, 128, 32, None, None, many),
    ];
    for q_amp in [1.0, 4.0] {
        for kv in [DType::F32, DType::BF16, DType::F8E4M3] {
            cases_match(&g, kv, &cases, q_amp, &mut rng, "prefill");
        }
    }
}

/// The tensor-core decode kernel (kernels/attention_decode.cu: bf16 cache, head_dim 64 or
/// 128, sequences of fewer than 16 rows): many decodes over long contexts (split-K, the
/// merge), speculative-verification-like chunks of 5 rows, every row count 1..15 mixed
/// (one and two 16-row m-tiles per pass, several passes and row groups for GQA 7 and 8),
/// GQA 1 / 3 / 4 / 7 / 8, block sizes 16, 32 and 7, sliding windows and a softcap, with
/// and without a prefill sequence in the same call (which changes the row bound).
#[test]
fn decode_attention_matches_the_cpu() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    // Llama-3.1-8B shape: 64 decodes over 253..4096 keys.
    let decodes: Vec<(usize, usize)> = (0..64).map(|i| (1, 4096 - 61 * i)).collect();
    // Speculative verification: 16 chunks of 5 rows after long prefixes.
    let verify: Vec<(usize, usize)> = (0..16).map(|i| (5, 1500 + 397 * i)).collect();
    // Every row count below 16, plus a prefill chunk (the prefill kernel takes it).
    let mut mixed: Vec<(usize, usize)> = (1..16).map(|r| (r, r + 37 * r * r)).collect();
    mixed.push((40, 300));
    // Every row count below 16 alone (T > 15: no prefill launch, rows bounded by 15 / T).
    let rows_only: Vec<(usize, usize)> = (1..16).map(|r| (r, 16 * r + 3)).collect();
    let cases = [
        case(32, 8, 128, 16, None, None, decodes),
        case(32, 8, 128, 16, None, None, verify),
        case(9, 3, 64, 32, None, None, mixed.clone()),
        case(28, 4, 128, 16, Some(300), None, mixed.clone()),
        case(16, 2, 64, 7, None, Some(0.7), rows_only.clone()),
        case(8, 8, 128, 16, Some(33), None, rows_only),
        case(8, 1, 128, 32, None, Some(30.0), mixed),
        // single decodes: the most splits, a context of one key, T < 16
        case(8, 2, 64, 16, None, None, vec![(1, 20_000)]),
        // one short sequence alone (a prompt under 16 tokens, then a chunk after a
        // prefix), GQA 2, 4-key blocks: the engine's batch-invariance test's shape
        case(4, 2, 64, 4, None, None, vec![(7, 7)]),
        case(4, 2, 64, 4, None, None, vec![(5, 30)]),
        case(8, 4, 128, 4, None, None, vec![(9, 9)]),
        case(4, 1, 128, 16, None, None, vec![(1, 1), (3, 3), (2, 700)]),
        case(
            12,
            3,
            128,
            7,
            Some(5),
            None,
            vec![(4, 90), (1, 64), (1, 65)],
        ),
    ];
    // Key splits merged in a thread-block cluster (sm_90: up to 16 splits) and by the
    // merge kernel (cluster size 0), over the same cases.
    let Device::Cuda(backend) = &g else {
        return;
    };
    // (The block kernel's one-split path too: the warp kernel off here, see
    // warp_decode_attention_matches_the_cpu.)
    let warp_before = backend.set_decode_warp(0, false);
    let fp8_before = backend.set_decode_warp_fp8(0);
    for cluster in [16, 0] {
        let in_force = backend.set_decode_cluster_max(cluster);
        let merges_before = backend.cluster_merges();
        for q_amp in [1.0, 4.0] {
            for kv in [DType::BF16, DType::F8E4M3] {
                let setting = format!("decode, clusters up to {in_force},");
                cases_match(&g, kv, &cases, q_amp, &mut rng, &setting);
            }
        }
        // Each setting took the path it names: clusters where allowed (sm_90), none
        // with size 0.
        let merges = backend.cluster_merges() - merges_before;
        assert_eq!(
            merges > 0,
            in_force > 1,
            "{merges} cluster merges with clusters up to {in_force}"
        );
    }
    backend.set_decode_cluster_max(16);
    backend.set_decode_warp(warp_before.0, warp_before.1);
    backend.set_decode_warp_fp8(fp8_before);
}

/// The batch-1 decode kernel (attention_decode.cu `flash_decode_ahead`: each split's first
/// two tiles requested before the PDL wait) against the CPU: one and two sequences of 1-4
/// rows whose new keys straddle tile ends, GQA 1 / 4 / 7 / 8, head_dim 64 and 128, block
/// sizes 7, 16 and 32, a sliding window and softcaps; splits of 1, 2, 3 and 5 tiles (3
/// and 5 stream their later tiles), merged in a cluster, by the merge kernel (47 splits;
/// clusters off), with the early and the late PDL trigger. Every call must take the kernel.
#[test]
fn batch_one_decode_attention_matches_the_cpu() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let Device::Cuda(backend) = &g else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    // (Contexts small enough that one block per SM holds every split even at one tile.)
    let cases = [
        case(32, 8, 128, 16, None, None, vec![(1, 577)]),
        case(32, 8, 128, 16, None, None, vec![(1, 1024)]),
        case(32, 8, 128, 16, None, None, vec![(1, 1)]),
        case(32, 8, 128, 16, None, None, vec![(4, 130)]),
        case(32, 8, 128, 16, None, None, vec![(1, 300), (1, 512)]),
        case(32, 8, 64, 16, None, None, vec![(2, 641)]),
        case(8, 1, 128, 32, None, Some(30.0), vec![(1, 3000)]),
        case(28, 4, 128, 16, Some(300), None, vec![(1, 900)]),
        case(16, 2, 64, 7, None, Some(0.7), vec![(1, 333)]),
    ];
    let before = backend.set_decode_ahead(2, true);
    let tiles_before = backend.set_decode_split_tiles(2);
    let ahead_before = backend.ahead_decodes();
    let mut calls = 0;
    for (cluster, late, split_tiles) in [
        (16, true, 2),
        (16, false, 1),
        (16, true, 3),
        (0, true, 5),
        (0, false, 2),
    ] {
        backend.set_decode_cluster_max(cluster);
        backend.set_decode_ahead(2, late);
        backend.set_decode_split_tiles(split_tiles);
        let setting = format!("cluster {cluster} late {late} split tiles {split_tiles}");
        calls += cases_match(&g, DType::BF16, &cases, 4.0, &mut rng, &setting);
    }
    assert_eq!(
        backend.ahead_decodes() - ahead_before,
        calls,
        "calls that took flash_decode_ahead"
    );
    backend.set_decode_cluster_max(16);
    backend.set_decode_ahead(before.0, before.1);
    backend.set_decode_split_tiles(tiles_before);
}

/// The warp-per-item decode kernel (attention_decode_warp.cu `flash_decode_warp`: one warp
/// per (sequence, KV head), 16-key tiles through a ring of 2, 3 or 4 stages over a bf16
/// cache, 4, 6 or 8 over an FP8 one, and the FP8 default that picks 6 or 4 by the
/// step's items) against the CPU: the 8B and 1B shapes at 64-128 sequences of short contexts, contexts of 1-33 keys
/// around the 16-key tile ends, 1-15 rows per sequence where GQA allows one m-tile (GQA
/// 1 / 4 / 7 / 8), block sizes 7, 16 and 32, sliding windows and softcaps. One key split
/// and the kernel forced (also where the block kernel would fit in one wave); every call
/// must take it.
#[test]
fn warp_decode_attention_matches_the_cpu() {
    let Some(g) = gpu(CudaWeightType::Auto) else {
        return;
    };
    let Device::Cuda(backend) = &g else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(27);
    let short: Vec<(usize, usize)> = (0..128).map(|i| (1, 130 + (i * 37) % 61)).collect();
    let edges: Vec<(usize, usize)> = [1, 2, 15, 16, 17, 31, 32, 33, 48, 49]
        .iter()
        .map(|&l| (1, l))
        .collect();
    let rows: Vec<(usize, usize)> = (1..16).map(|r| (r, r + 5 * r * r)).collect();
    // One sequence of two rows among single rows: the host's row bound (t - sequences + 1)
    // stays 2, so GQA 7 and 8 keep one m-tile.
    let two_rows: Vec<(usize, usize)> = (0..24)
        .map(|i| (1 + usize::from(i == 11), 20 + 23 * i))
        .collect();
    let cases = [
        case(32, 8, 128, 16, None, None, short.clone()),
        case(32, 8, 64, 16, None, None, short[..64].to_vec()),
        case(32, 8, 128, 16, None, None, edges.clone()),
        case(16, 2, 64, 7, None, Some(0.7), edges),
        case(8, 8, 128, 16, Some(33), None, rows.clone()),
        case(8, 8, 64, 32, None, Some(30.0), rows),
        case(28, 4, 128, 16, Some(300), None, two_rows.clone()),
        case(8, 1, 128, 32, None, Some(30.0), two_rows.clone()),
        case(12, 3, 64, 7, Some(5), None, two_rows),
        case(32, 8, 128, 16, None, None, vec![(1, 1000), (1, 3)]),
    ];
    let ahead = backend.set_decode_ahead(0, false);
    let tiles = backend.set_decode_split_tiles(1 << 20);
    let warp_before = backend.set_decode_warp(3, true);
    let fp8_before = backend.set_decode_warp_fp8(0);
    let before = backend.warp_decodes();
    let mut calls = 0;
    // Each cache type at each of its ring depths (the other type's kernel off, so a call
    // that took the block kernel instead would miss the count below).
    // (FP8 depth 1: 6 or 4 chosen per call, the default.)
    for (kv, depths) in [
        (DType::BF16, &[2, 3, 4][..]),
        (DType::F8E4M3, &[4, 6, 8, 1][..]),
    ] {
        for &stages in depths {
            if kv == DType::BF16 {
                backend.set_decode_warp(stages, true);
            } else {
                backend.set_decode_warp(0, true);
                backend.set_decode_warp_fp8(stages);
            }
            calls += cases_match(&g, kv, &cases, 4.0, &mut rng, &format!("stages {stages}"));
        }
    }
    assert_eq!(
        backend.warp_decodes() - before,
        calls,
        "calls that took flash_decode_warp"
    );
    backend.set_decode_ahead(ahead.0, ahead.1);
    backend.set_decode_split_tiles(tiles);
    backend.set_decode_warp(warp_before.0, warp_before.1);
    backend.set_decode_warp_fp8(fp8_before);
}
