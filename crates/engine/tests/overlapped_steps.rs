//! Overlapped steps (`EngineConfig::async_scheduling`) give exactly the tokens, text and
//! finish reasons of plain steps, on the CPU with a tiny random model (the CPU then
//! samples "on the device" too, so every part of the mechanism runs: pending tokens,
//! tokens taken from the previous step's ids, provisional scheduling, readbacks).
//!
//! The workload mixes what changes the path: prompts in chunks next to decodes, a KV
//! pool small enough to preempt, stop tokens and stop strings (a sequence that stops
//! has its next token in flight, which must be dropped), seeded sampling, a request with
//! penalties (the device sampler counts the token in flight), one with log-probabilities
//! (computed on the device after the draw, read back with the ids) and requests that
//! arrive while a step is in flight.
//!
//! On a CUDA GPU (when present; SLUICE_REQUIRE_CUDA=1 makes its absence an error) the
//! same comparison runs with f32 weights and KV cache, whose kernels are row-independent
//! (batch invariant), through the real overlap: readbacks behind events, tokens resolved
//! on the device before replayed step graphs.

mod spec_common;

use std::collections::HashMap;
use std::sync::Arc;

use sluice_backend::cuda::CudaWeightType;
use sluice_backend::{DType, Device};
use sluice_engine::{EngineRequest, FinishReason, LlmEngine, SamplingParams, SeqId};
use sluice_model::arch::Model;
use sluice_model::tokenizer::Tokenizer;
use spec_common::*;

type Outcome = (Vec<u32>, String, Option<FinishReason>);

/// The CPU, and a CUDA GPU with f32 weights where there is one.
fn devices() -> Vec<Device> {
    let mut v = vec![device()];
    match Device::cuda(0, CudaWeightType::F32) {
        Ok(d) => v.push(d),
        Err(e) => assert!(
            std::env::var("SLUICE_REQUIRE_CUDA").as_deref() != Ok("1"),
            "SLUICE_REQUIRE_CUDA=1 but: {e}"
        ),
    }
    v
}

fn engine(dev: &Device, async_scheduling: bool, num_blocks: usize) -> LlmEngine {
    engine_sampling_on(dev, async_scheduling, num_blocks, true)
}

fn engine_sampling_on(
    dev: &Device,
    async_scheduling: bool,
    num_blocks: usize,
    sample_on_device: bool,
) -> LlmEngine {
    // Heads of 64 so that the GPU's flash prefill kernel takes the prompt chunks.
    let mut mc = tiny_config(TARGET_LAYERS, VOCAB);
    mc.hidden_size = 256;
    mc.intermediate_size = 384;
    mc.n_heads = 4;
    mc.n_kv_heads = 2;
    mc.head_dim = 64;
    let w = random_weights(&mc, DType::F32, TARGET_SEED, 3.0);
    let model = Model::new(dev, mc, w, 512).expect("model");
    let tok = Arc::new(Tokenizer::synthetic(VOCAB).expect("tokenizer"));
    let mut cfg = engine_config();
    cfg.num_blocks = Some(num_blocks);
    cfg.max_num_batched_tokens = 24;
    cfg.async_scheduling = Some(async_scheduling);
    // Both with the device sampler, whose seeded draws differ from the host sampler's.
    cfg.sample_on_device = Some(sample_on_device);
    LlmEngine::new(model, tok, &cfg).expect("engine")
}

/// Adds the first half of `reqs`, steps a few times, adds the rest, runs to the end.
fn run(e: &mut LlmEngine, reqs: &[SamplingParams], prompts: &[Vec<u32>]) -> Vec<Outcome> {
    let mut ids: Vec<SeqId> = Vec::new();
    let mut out: HashMap<SeqId, Outcome> = HashMap::new();
    let collect = |o: &sluice_engine::RequestOutput, out: &mut HashMap<SeqId, Outcome>| {
        let r = out.entry(o.id).or_default();
        r.0.extend_from_slice(&o.new_token_ids);
        r.1.push_str(&o.new_text);
        if o.finished.is_some() {
            assert!(r.2.is_none(), "{} finished twice", o.id);
            r.2 = o.finished;
        }
    };
    let half = reqs.len() / 2;
    for (i, params) in reqs.iter().enumerate() {
        if i == half {
            for _ in 0..5 {
                for o in e.step().expect("step") {
                    collect(&o, &mut out);
                }
            }
        }
        let req = EngineRequest {
            prompt_token_ids: prompts[i].clone(),
            params: params.clone(),
            cache_salt: None,
        };
        ids.push(e.add_request(req).expect("add_request"));
    }
    e.run_to_completion(|o| collect(o, &mut out)).expect("run");
    ids.iter()
        .map(|id| out.remove(id).unwrap_or_default())
        .collect()
}

fn workload(n: usize) -> Vec<SamplingParams> {
    (0..n)
        .map(|i| {
            let mut p = greedy(6 + (i * 5) % 23);
            match i % 6 {
                1 => p.stop_token_ids = vec![(i as u32 * 7) % VOCAB as u32, 3, 11],
                2 => {
                    p.temperature = 0.9;
                    p.top_p = 0.95;
                    p.seed = Some(40 + i as u64);
                }
                3 => {
                    p.temperature = 0.7;
                    p.top_k = 12;
                    p.min_p = 0.02;
                    p.seed = Some(7 * i as u64);
                    p.stop_token_ids = vec![5];
                }
                4 if i == 4 => p.logprobs = Some(2),
                5 if i == 11 => p.repetition_penalty = 1.3,
                _ => {}
            }
            p
        })
        .collect()
}

#[test]
fn overlapped_steps_give_the_tokens_of_plain_steps() {
    let reqs = workload(18);
    let prompts = prompts(reqs.len(), 21);
    // 400 blocks hold everything; 24 blocks of 4 tokens force preemptions.
    for (dev, num_blocks) in devices().iter().flat_map(|d| [(d, 400), (d, 24)]) {
        let name = dev.name();
        let mut plain = engine(dev, false, num_blocks);
        let want = run(&mut plain, &reqs, &prompts);
        let mut overlapped = engine(dev, true, num_blocks);
        let got = run(&mut overlapped, &reqs, &prompts);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                w, g,
                "{name}: request {i} ({num_blocks} blocks): plain vs overlapped"
            );
            assert!(w.2.is_some(), "request {i} did not finish");
        }
        let (m, pm) = (overlapped.metrics(), plain.metrics());
        eprintln!(
            "{name}, {num_blocks} blocks: {} of {} steps overlapped, {} preemptions (plain: {})",
            m.overlapped_steps, m.steps, m.scheduler.num_preemptions, pm.scheduler.num_preemptions
        );
        assert!(m.overlapped_steps > m.steps / 4, "too few overlapped steps");
        assert_eq!(pm.overlapped_steps, 0);
        if num_blocks == 24 {
            assert!(
                m.scheduler.num_preemptions > 0,
                "the small pool did not preempt"
            );
        }
        assert_eq!(overlapped.scheduler().kv().num_free_blocks(), num_blocks);
    }
}

/// Every step after the first is overlapped, and a request that stops early still
/// returns exactly its tokens.
#[test]
fn greedy_batches_overlap_every_step() {
    let reqs: Vec<SamplingParams> = (0..8)
        .map(|i| {
            let mut p = greedy(20);
            if i % 2 == 0 {
                p.stop_token_ids = vec![(i as u32 * 13) % VOCAB as u32];
            }
            p
        })
        .collect();
    let prompts = prompts(reqs.len(), 5);
    for dev in devices() {
        let want = run(&mut engine(&dev, false, 400), &reqs, &prompts);
        let mut e = engine(&dev, true, 400);
        let got = run(&mut e, &reqs, &prompts);
        assert_eq!(want, got, "{}", dev.name());
        let m = e.metrics();
        assert_eq!(m.overlapped_steps + 1, m.steps, "{}: {m:?}", dev.name());
    }
}

/// Penalties ride overlapped steps: the device sampler counts the token still in flight
/// (`SampleParams::pending_token_row`) as the host would have after reading it. The
/// tokens equal those of plain steps with the device sampler (greedy and seeded
/// sampling: the same kernel and uniforms) and, for the greedy requests, those of the
/// host sampler; the penalties do change tokens; every step after the first overlaps.
#[test]
fn penalties_ride_overlapped_steps() {
    let reqs: Vec<SamplingParams> = (0..10)
        .map(|i| {
            let mut p = greedy(24 + i % 7);
            match i % 5 {
                0 => p.repetition_penalty = 1.6,
                1 => p.frequency_penalty = 1.5,
                2 => {
                    p.presence_penalty = 2.0;
                    p.logit_bias = vec![(5, 3.0)];
                }
                3 => {
                    p.repetition_penalty = 1.3;
                    p.frequency_penalty = 0.7;
                    p.presence_penalty = 0.4;
                    p.temperature = 0.8;
                    p.seed = Some(3 + i as u64);
                }
                _ => {}
            }
            p
        })
        .collect();
    let unpenalized: Vec<SamplingParams> = reqs
        .iter()
        .map(|p| SamplingParams {
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            ..p.clone()
        })
        .collect();
    let prompts = prompts(reqs.len(), 17);
    for dev in devices() {
        let name = dev.name();
        let plain = run(&mut engine(&dev, false, 400), &reqs, &prompts);
        let host = run(
            &mut engine_sampling_on(&dev, false, 400, false),
            &reqs,
            &prompts,
        );
        let free = run(&mut engine(&dev, false, 400), &unpenalized, &prompts);
        let mut e = engine(&dev, true, 400);
        let got = run(&mut e, &reqs, &prompts);
        let mut changed = 0;
        for (i, p) in reqs.iter().enumerate() {
            assert_eq!(plain[i], got[i], "{name}: request {i}: plain vs overlapped");
            if p.temperature == 0.0 {
                assert_eq!(
                    host[i], got[i],
                    "{name}: request {i}: host vs device sampler"
                );
            }
            changed += (p.depends_on_history() && free[i].0 != got[i].0) as usize;
        }
        assert!(
            changed >= 4,
            "{name}: penalties changed only {changed} requests"
        );
        let m = e.metrics();
        assert_eq!(m.overlapped_steps + 1, m.steps, "{name}: {m:?}");
    }
}

/// Log-probabilities with the device sampler: the tokens are sampled on the device (and
/// every step after the first overlaps), the log-probabilities are computed there
/// (`Device::logprobs`) and read back with the ids, and they are what the host sampler
/// reports from the whole batch's logits: bit for bit on the CPU (one reference), within
/// 1e-5 on a GPU (its log-sum-exp sums in another order), with the same alternatives in
/// the same order (greedy, so both pick the same tokens). Two requests carry a logit
/// bias, which the device sampler applies and then undoes: log-probabilities are of the
/// raw distribution.
#[test]
fn log_probabilities_ride_the_device_sampler() {
    let reqs: Vec<SamplingParams> = (0..12)
        .map(|i| {
            let mut p = greedy(30 + i % 5);
            p.logprobs = match i % 4 {
                0 | 2 => Some(3),
                1 => Some(0),
                _ => None,
            };
            if i % 5 == 2 {
                // Strong enough to change tokens, so a bias left in place would show.
                p.logit_bias = vec![(7, 4.0), ((i as u32 * 13) % VOCAB as u32, 2.5)];
            }
            p
        })
        .collect();
    let prompts = prompts(reqs.len(), 31);
    type Run = Vec<(Vec<u32>, Vec<sluice_engine::sampling::SampledToken>)>;
    let run_lp = |e: &mut LlmEngine| -> Run {
        let ids: Vec<SeqId> = reqs
            .iter()
            .zip(&prompts)
            .map(|(p, prompt)| {
                e.add_request(EngineRequest {
                    prompt_token_ids: prompt.clone(),
                    params: p.clone(),
                    cache_salt: None,
                })
                .expect("add_request")
            })
            .collect();
        let mut out: HashMap<SeqId, (Vec<u32>, Vec<sluice_engine::sampling::SampledToken>)> =
            HashMap::new();
        e.run_to_completion(|o| {
            let r = out.entry(o.id).or_default();
            r.0.extend_from_slice(&o.new_token_ids);
            r.1.extend_from_slice(&o.logprobs);
        })
        .expect("run");
        ids.iter()
            .map(|id| out.remove(id).unwrap_or_default())
            .collect()
    };
    for dev in devices() {
        let name = dev.name();
        let want = run_lp(&mut engine_sampling_on(&dev, false, 400, false));
        let mut e = engine_sampling_on(&dev, true, 400, true);
        let got = run_lp(&mut e);
        for (i, ((wt, wl), (gt, gl))) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                wt, gt,
                "{name}: request {i}: tokens, host vs device sampling"
            );
            let n = reqs[i].logprobs;
            assert_eq!(
                gl.len(),
                if n.is_some() { gt.len() } else { 0 },
                "{name}: {i}"
            );
            for (w, g) in wl.iter().zip(gl) {
                let ids = |t: &sluice_engine::sampling::SampledToken| -> Vec<u32> {
                    t.top_logprobs.iter().map(|&(id, _)| id).collect()
                };
                assert_eq!((w.id, ids(w)), (g.id, ids(g)), "{name}: request {i}");
                let values = |t: &sluice_engine::sampling::SampledToken| -> Vec<f32> {
                    let top = t.top_logprobs.iter().map(|&(_, l)| l);
                    t.logprob.into_iter().chain(top).collect()
                };
                let (wv, gv) = (values(w), values(g));
                assert_eq!(wv.len(), gv.len(), "{name}: request {i}");
                for (a, b) in wv.iter().zip(&gv) {
                    let ok = if dev.is_cpu() {
                        a.to_bits() == b.to_bits()
                    } else {
                        (a - b).abs() <= 1e-5 * a.abs().max(1.0)
                    };
                    assert!(
                        ok,
                        "{name}: request {i}: log-probabilities {wv:?} vs {gv:?}"
                    );
                }
                assert_eq!(g.top_logprobs.len(), n.unwrap_or(0), "{name}: {i}");
                assert!(g.logprob.is_some_and(|l| l <= 0.0), "{name}: {i}: {g:?}");
            }
        }
        let m = e.metrics();
        assert_eq!(m.overlapped_steps + 1, m.steps, "{name}: {m:?}");
    }
}
