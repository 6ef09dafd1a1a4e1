//! The device pieces of overlapped steps: tokens taken from the previous step's ids on
//! the device (`resolve_token_ids`, against the CPU), and ids read back behind an event
//! while later work is queued (`start_ids_readback` / `finish_ids_readback`, with the
//! log-probability records alongside on some steps), with the pinned upload ring handed back by those readbacks alone (no stream synchronization).
//! GPU only (see cuda_ops.rs); the CPU's versions run everywhere.

mod cuda_common;

use cuda_common::gpu;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_backend::cuda::CudaWeightType;
use sluice_backend::{DType, Device, Tensor};

fn i32_tensor(dev: &Device, v: &[i32]) -> Tensor {
    let mut t = dev.zeros(DType::I32, &[v.len().max(1)]).unwrap();
    t.set_len(v.len()).unwrap();
    dev.copy_i32_from_host(&mut t, v).unwrap();
    t
}

fn read(dev: &Device, t: &Tensor) -> Vec<i32> {
    let mut v = Vec::new();
    dev.copy_i32_to_host(t, &mut v).unwrap();
    v
}

/// Tokens with about a third replaced by `-(row + 1)` markers into `prev`.
fn marked(rng: &mut ChaCha8Rng, n: usize, prev: usize) -> Vec<i32> {
    (0..n)
        .map(|_| {
            if prev > 0 && rng.random_bool(0.3) {
                -(rng.random_range(0..prev) as i32) - 1
            } else {
                rng.random_range(0..50_000)
            }
        })
        .collect()
}

fn devices() -> Vec<Device> {
    let mut v = vec![Device::cpu(Some(2))];
    v.extend(gpu(CudaWeightType::Bf16));
    v
}

#[test]
fn resolve_token_ids_matches_the_cpu() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let cpu = Device::cpu(Some(2));
    for dev in devices() {
        for (n, p) in [(1, 1), (7, 3), (129, 64), (1000, 257), (5, 0)] {
            let prev: Vec<i32> = (0..p).map(|_| rng.random_range(0..50_000)).collect();
            let toks = marked(&mut rng, n, p);
            let want: Vec<i32> = toks
                .iter()
                .map(|&t| if t < 0 { prev[(-t - 1) as usize] } else { t })
                .collect();
            let (mut t, pv) = (i32_tensor(&dev, &toks), i32_tensor(&dev, &prev));
            dev.resolve_token_ids(&mut t, &pv).unwrap();
            assert_eq!(read(&dev, &t), want, "{} n={n} p={p}", dev.name());
        }
    }
    // The CPU refuses a row outside the previous ids and leaves the tokens as they were.
    let mut t = i32_tensor(&cpu, &[5, -3]);
    let pv = i32_tensor(&cpu, &[1, 2]);
    assert!(cpu.resolve_token_ids(&mut t, &pv).is_err());
    assert_eq!(read(&cpu, &t), vec![5, -3]);
}

/// 300 "steps" like the engine's overlapped loop: each uploads its tokens (some taken
/// from the previous step's ids), resolves them on the device, starts a readback, and
/// only then collects the previous step's readback. The uploads (40 KB each, 12 MB in
/// all) wrap the 2 MiB pinned ring several times with no stream synchronization, so a
/// byte handed back too early would corrupt a later step's tokens.
#[test]
fn readbacks_return_each_steps_ids_while_the_next_step_is_queued() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for dev in devices() {
        let n = 10_000;
        let mut prev_dev: Option<Tensor> = None;
        let mut prev_host: Vec<i32> = Vec::new();
        let mut pending = None;
        let mut expected = Vec::new();
        let records: Vec<(Vec<f32>, Tensor)> = (0..7)
            .map(|k| {
                let v: Vec<f32> = (0..(k * 13 + 1) * 42)
                    .map(|i| (k * 10_000 + i) as f32 + 0.5)
                    .collect();
                let mut h = Tensor::zeros_cpu(DType::F32, &[v.len()]).unwrap();
                h.as_f32_mut().unwrap().copy_from_slice(&v);
                (v, dev.upload(&h).unwrap())
            })
            .collect();
        for step in 0..300 {
            let p = prev_host.len();
            let toks = marked(&mut rng, n, p);
            let want: Vec<i32> = toks
                .iter()
                .map(|&t| {
                    if t < 0 {
                        prev_host[(-t - 1) as usize]
                    } else {
                        t
                    }
                })
                .collect();
            let mut t = i32_tensor(&dev, &toks);
            if let Some(pv) = &prev_dev {
                dev.resolve_token_ids(&mut t, pv).unwrap();
            }
            // Records on every third step (uploaded before the loop: an upload waits for
            // the stream).
            let (rec, rec_t) = match step % 3 {
                0 => {
                    let (v, t) = &records[step / 3 % records.len()];
                    (v.clone(), Some(t))
                }
                _ => (Vec::new(), None),
            };
            let r = dev.start_ids_readback(&t, rec_t).unwrap();
            if let Some((r_prev, want_prev, rec_prev)) = pending.take() {
                let (mut got, mut got_rec) = (Vec::new(), vec![f32::NAN]);
                dev.finish_ids_readback(r_prev, &mut got, &mut got_rec)
                    .unwrap();
                assert_eq!(got, want_prev, "{}: step {} ids", dev.name(), step - 1);
                assert!(
                    got_rec == rec_prev,
                    "{}: step {} records",
                    dev.name(),
                    step - 1
                );
            }
            pending = Some((r, want.clone(), rec));
            expected = want.clone();
            prev_host = want;
            prev_dev = Some(t);
        }
        let (r, want, rec) = pending.take().unwrap();
        let (mut got, mut got_rec) = (Vec::new(), Vec::new());
        dev.finish_ids_readback(r, &mut got, &mut got_rec).unwrap();
        assert!(got_rec == rec);
        assert_eq!(got, want);
        assert_eq!(got, expected);
    }
}
