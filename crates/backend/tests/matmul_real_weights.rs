//! Matmul on real model weights (memory-mapped from the GGUF files, in place) on every
//! path against the f64 reference: the value distributions of trained, quantized
//! weights rather than random ones. Needs `SLUICE_TEST_MODELS` (laid out like
//! ../shared/models); without it the test prints a note and returns.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use sluice_backend::cpu::simd::Isa;
use sluice_backend::cpu::{CpuBackend, CpuFeatures};
use sluice_backend::{DType, Tensor};

/// Just enough of GGUF (v2/v3) to find tensors: name -> (dtype, shape, absolute offset).
struct Gguf {
    map: Arc<memmap2::Mmap>,
    tensors: Vec<(String, DType, Vec<usize>, usize)>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    /// Skips a value of GGUF type `t`, returning it when it is an integer.
    fn value(&mut self, t: u32) -> Option<u64> {
        match t {
            0 | 1 | 7 => Some(self.take(1)[0] as u64),
            2 | 3 => Some(u16::from_le_bytes(self.take(2).try_into().unwrap()) as u64),
            4 | 5 => Some(self.u32() as u64),
            6 => {
                self.take(4);
                None
            }
            8 => {
                self.string();
                None
            }
            9 => {
                let (et, n) = (self.u32(), self.u64());
                for _ in 0..n {
                    self.value(et);
                }
                None
            }
            10 | 11 => Some(self.u64()),
            12 => {
                self.take(8);
                None
            }
            other => panic!("unknown GGUF value type {other}"),
        }
    }
}

impl Gguf {
    fn open(path: &Path) -> Gguf {
        let f = std::fs::File::open(path).expect("open model");
        // SAFETY: read-only mapping of a model file nobody modifies during the test.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.expect("mmap"));
        let mut r = Reader { b: &map[..], at: 0 };
        assert_eq!(r.take(4), b"GGUF");
        let _version = r.u32();
        let (n_tensors, n_kv) = (r.u64(), r.u64());
        let mut alignment = 32usize;
        for _ in 0..n_kv {
            let key = r.string();
            let t = r.u32();
            let v = r.value(t);
            if key == "general.alignment" {
                alignment = v.expect("integer alignment") as usize;
            }
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = r.string();
            let nd = r.u32() as usize;
            // GGUF lists dimensions innermost first.
            let mut shape: Vec<usize> = (0..nd).map(|_| r.u64() as usize).collect();
            shape.reverse();
            let dtype = DType::from_ggml_id(r.u32());
            let off = r.u64() as usize;
            if let Some(dtype) = dtype {
                infos.push((name, dtype, shape, off));
            }
        }
        let data = r.at.div_ceil(alignment) * alignment;
        let tensors = infos
            .into_iter()
            .map(|(n, d, s, o)| (n, d, s, data + o))
            .collect();
        Gguf { map, tensors }
    }

    /// Up to `max_rows` leading rows of the first 2-D tensor of `dtype` whose name
    /// contains `pattern`.
    fn tensor(&self, pattern: &str, dtype: DType, max_rows: usize) -> Option<(String, Tensor)> {
        let (name, d, shape, off) = self
            .tensors
            .iter()
            .find(|(n, d, s, _)| n.contains(pattern) && *d == dtype && s.len() == 2)?;
        let shape = [shape[0].min(max_rows), shape[1]];
        let t = Tensor::mapped_cpu(*d, &shape, Arc::clone(&self.map), *off).expect("mapped tensor");
        Some((name.clone(), t))
    }
}

fn models_dir() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_TEST_MODELS") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!("SLUICE_TEST_MODELS is not set: skipping the real-weight matmul test");
            None
        }
    }
}

fn check_tensor(name: &str, w: &Tensor) {
    let (m, k, dtype) = (w.rows(), w.cols(), w.dtype());
    let wd = dequant_f64(dtype, w.cpu_bytes().unwrap(), m, k);
    let mut r = rng(k as u64 + m as u64);
    for t in [1usize, 5, 9] {
        let x = randn_vec(&mut r, t * k, 1.0);
        let xt = Tensor::from_f32_cpu(&[t, k], &x).unwrap();
        for isa in Isa::available() {
            let cpu = CpuBackend::with_features(2, isa.cap(CpuFeatures::detect_capped(None)));
            let mut out = Tensor::from_f32_cpu(&[t, m], &vec![f32::NAN; t * m]).unwrap();
            cpu.matmul(&xt, w, &mut out).unwrap();
            let got = out.as_f32().unwrap();
            let (mut se, mut sw) = (0f64, 0f64);
            let ab = if dtype.is_quantized() {
                dtype.block_size()
            } else {
                0
            };
            for ti in 0..t {
                let xr = &x[ti * k..(ti + 1) * k];
                for ri in 0..m {
                    let wr = &wd[ri * k..(ri + 1) * k];
                    let want: f64 = wr.iter().zip(xr).map(|(w, x)| w * *x as f64).sum();
                    let abs: f64 = wr.iter().zip(xr).map(|(w, x)| (w * *x as f64).abs()).sum();
                    let mut tol = 3e-5 * abs + 1e-6;
                    if ab > 0 {
                        for (wb, xb) in wr.chunks(ab).zip(xr.chunks(ab)) {
                            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                            // Two int8 terms per activation: error <= d / 256
                            // (see `check` in matmul_kernels.rs).
                            tol += amax / 127.0 / 256.0
                                * (1.0 + 1e-3)
                                * wb.iter().map(|w| w.abs()).sum::<f64>();
                        }
                    }
                    let g = got[ti * m + ri] as f64;
                    se += (g - want).powi(2);
                    sw += want.powi(2);
                    assert!(
                        (g - want).abs() <= tol,
                        "{name} ({dtype}) on {} t={ti} r={ri}: {g} vs {want}",
                        isa.name()
                    );
                }
            }
            if t == 9 {
                let rel = (se / sw).sqrt();
                println!(
                    "  {name} {dtype} on {}: relative RMS error vs f64 {rel:.2e}",
                    isa.name()
                );
            }
        }
    }
    println!("{name} {dtype} [{m}, {k}]: all paths within bounds");
}

#[test]
fn matmul_on_real_model_weights() {
    let Some(dir) = models_dir() else { return };
    let smol = dir.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    let g = Gguf::open(&smol);
    for (pattern, dtype) in [
        ("ffn_up", DType::Q4_1),
        ("ffn_down", DType::Q4_1),
        ("attn_k", DType::Q4_1),
        ("token_embd", DType::Q8_0),
    ] {
        let (name, w) = g
            .tensor(pattern, dtype, 160)
            .unwrap_or_else(|| panic!("{pattern} {dtype} in SmolLM2"));
        check_tensor(&name, &w);
    }
    let gemma = dir.join("gemma-3-270m-q4_k_m/gemma-3-270m-q4_k_m.gguf");
    if !gemma.exists() {
        eprintln!("{} not present: skipping its tensors", gemma.display());
        return;
    }
    let g = Gguf::open(&gemma);
    for dtype in [DType::Q4_K, DType::Q6_K, DType::Q5_0, DType::Q8_0] {
        let (name, w) = g
            .tensor("", dtype, 96)
            .unwrap_or_else(|| panic!("a {dtype} tensor in Gemma"));
        check_tensor(&name, &w);
    }
}
