//! The device pieces of overlapped steps: tokens taken from the previous step's ids on
//! the device (`resolve_token_ids`, against the CPU), and ids read back behind an event
//! while later work is queued (`start_ids_readback` / `finish_ids_readback`, with the
//! log-probability records alongside on some steps), with the pinned upload ring handed
//! back by those readbacks alone (no stream synchronization); and a step's arrays
//! uploaded by one kernel that reads the pinned ring (`upload_i32_segments`).
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

/// `upload_i32_segments` against what it must write, on every device, with the GPU's one
/// kernel and with its copies: 1-8 arrays of 0-5,000 values (a step's seven, padded
/// block tables included), deferred tokens in the first, more than 8 arrays (copies).
#[test]
fn step_uploads_land_in_their_tensors() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for dev in devices() {
        let backend = match &dev {
            Device::Cuda(b) => Some(b),
            Device::Cpu(_) => None,
        };
        for packed in [true, false] {
            let was = backend.map(|b| b.set_packed_uploads(packed));
            let kernels_before = backend.map(|b| b.packed_uploads());
            let mut kernels = 0;
            for case in 0..24 {
                let n = [1, 7, 2, 8, 9][case % 5];
                let p = rng.random_range(0..300);
                let prev: Vec<i32> = (0..p).map(|_| rng.random_range(0..50_000)).collect();
                let pv = i32_tensor(&dev, &prev);
                let srcs: Vec<Vec<i32>> = (0..n)
                    .map(|s| {
                        let len = match rng.random_range(0..6) {
                            0 => 0,
                            1 => 1,
                            2 => rng.random_range(1000..5000),
                            _ => rng.random_range(2..200),
                        };
                        if s == 0 {
                            marked(&mut rng, len, p)
                        } else {
                            (0..len).map(|_| rng.random_range(-9..1 << 30)).collect()
                        }
                    })
                    .collect();
                let resolve = case % 3 != 2;
                // Tensors with room to spare and a poisoned tail that must stay as it is.
                let mut dsts: Vec<Tensor> = srcs
                    .iter()
                    .map(|s| i32_tensor(&dev, &vec![-77; s.len() + 3]))
                    .collect();
                let refs: Vec<&[i32]> = srcs.iter().map(|s| s.as_slice()).collect();
                let mut dst_refs: Vec<&mut Tensor> = dsts.iter_mut().collect();
                dev.upload_i32_segments(&mut dst_refs, &refs, resolve.then_some(&pv))
                    .unwrap();
                if srcs.iter().any(|s| !s.is_empty()) && n <= 8 {
                    kernels += 1;
                }
                for (i, (d, s)) in dsts.iter().zip(&srcs).enumerate() {
                    let mut want: Vec<i32> = s
                        .iter()
                        .map(|&t| match (i, resolve, t < 0) {
                            (0, true, true) => prev[(-t - 1) as usize],
                            _ => t,
                        })
                        .collect();
                    want.extend([-77; 3]);
                    assert_eq!(
                        read(&dev, d),
                        want,
                        "{} packed={packed} case {case} array {i} of {n}",
                        dev.name()
                    );
                }
            }
            if let (Some(b), Some(before), Some(was)) = (backend, kernels_before, was) {
                let want = if packed { kernels } else { 0 };
                assert_eq!(b.packed_uploads() - before, want, "packed={packed}");
                b.set_packed_uploads(was);
            }
        }
    }
}

/// 300 "steps" like the engine's overlapped loop: each uploads its tokens (some taken
/// from the previous step's ids), resolves them on the device, starts a readback, and
/// only then collects the previous step's readback. The uploads (40 KB each, 12 MB in
/// all) wrap the 2 MiB pinned ring several times with no stream synchronization, so a
/// byte handed back too early would corrupt a later step's tokens. Every other step
/// uploads and resolves with `upload_i32_segments` (on a GPU one kernel that reads the
/// ring itself), the others with a copy and `resolve_token_ids`.
/// On a GPU it runs twice: the readbacks written into the mapped slots by a kernel (the
/// default), then copied.
#[test]
fn readbacks_return_each_steps_ids_while_the_next_step_is_queued() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut runs = devices();
    runs.extend(gpu(CudaWeightType::Bf16));
    for (run, dev) in runs.into_iter().enumerate() {
        if let Device::Cuda(b) = &dev {
            b.set_kernel_readback(run == 1);
        }
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
            let mut t = dev.zeros(DType::I32, &[n]).unwrap();
            if step % 2 == 0 {
                dev.upload_i32_segments(&mut [&mut t], &[&toks], prev_dev.as_ref())
                    .unwrap();
            } else {
                dev.copy_i32_from_host(&mut t, &toks).unwrap();
                if let Some(pv) = &prev_dev {
                    dev.resolve_token_ids(&mut t, pv).unwrap();
                }
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
