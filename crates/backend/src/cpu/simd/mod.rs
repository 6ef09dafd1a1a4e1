//! Matmul kernels: one scalar reference per weight type, AVX2 and AVX-512 (VNNI)
//! versions on x86-64 and NEON versions (with and without `dotprod`) on AArch64, chosen
//! at run time (docs/cpu-neon.md for the ARM side).
//!
//! Every kernel computes `out[t, r] = sum_k x[t, k] * w[r, k]` for a range of weight
//! rows `r` and all tokens `t`, reading the weights in their ggml layout in place.
//! Quantized weights meet activations quantized once per call (see [`acts`]); float
//! weights meet the f32 activations directly.

pub mod acts;
#[cfg(target_arch = "x86_64")]
mod avx2_k;
#[cfg(target_arch = "x86_64")]
mod avx2_q32;
#[cfg(target_arch = "x86_64")]
mod avx512_k;
#[cfg(target_arch = "x86_64")]
mod avx512_q32;
// Its `arr`/`unroll` imports serve only the x86 kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
mod float;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
mod neon_float;
#[cfg(target_arch = "aarch64")]
mod neon_k;
pub mod scalar;

use std::ops::Range;

use crate::cpu::features::CpuFeatures;
use crate::cpu::ops::SendPtr;
use crate::dtype::DType;

/// The instruction set a kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (plus AVX2/FMA/F16C).
    Avx512,
    /// AArch64 NEON without the dot-product instructions (`smull` + `sadalp`).
    Neon,
    /// AArch64 NEON with `dotprod` (`sdot`).
    NeonDot,
}

impl Isa {
    /// The best path `features` allow, never beyond what this CPU really has (so a
    /// hand-built `CpuFeatures` cannot select instructions the CPU lacks).
    pub fn select(features: &CpuFeatures) -> Isa {
        let real = CpuFeatures::detect_capped(None);
        if cfg!(target_arch = "aarch64") && features.neon && real.neon {
            return if features.dotprod && real.dotprod {
                Isa::NeonDot
            } else {
                Isa::Neon
            };
        }
        if features.has_avx512_vnni() && real.has_avx512_vnni() && has_avx512vl() {
            Isa::Avx512
        } else if features.has_avx2() && real.has_avx2() {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        let best = Isa::select(&CpuFeatures::detect_capped(None));
        let paths = if cfg!(target_arch = "aarch64") {
            [Isa::Scalar, Isa::Neon, Isa::NeonDot]
        } else {
            [Isa::Scalar, Isa::Avx2, Isa::Avx512]
        };
        paths.into_iter().filter(|&i| i <= best).collect()
    }

    /// Features capped to this path (for building a backend that runs it).
    pub fn cap(self, f: CpuFeatures) -> CpuFeatures {
        match self {
            Isa::Scalar => CpuFeatures::none(),
            Isa::Avx2 => CpuFeatures {
                avx512f: false,
                avx512bw: false,
                avx512vnni: false,
                avx512bf16: false,
                ..f
            },
            Isa::Avx512 => f,
            Isa::Neon => CpuFeatures {
                neon: f.neon,
                ..CpuFeatures::none()
            },
            Isa::NeonDot => CpuFeatures {
                neon: f.neon,
                dotprod: f.dotprod,
                ..CpuFeatures::none()
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512-vnni",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dotprod",
        }
    }
}

/// AVX-512VL (256-bit forms of the AVX-512 instructions, used for short tails); every
/// CPU with AVX-512 VNNI has it, `CpuFeatures` does not track it.
fn has_avx512vl() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A matmul with a quantized weight, activations already quantized.
pub(crate) struct QJob<'a> {
    pub dtype: DType,
    /// `[m, row_bytes]` weight rows in ggml layout.
    pub w: &'a [u8],
    pub row_bytes: usize,
    /// Elements per row.
    pub k: usize,
    /// `[t, act_row_bytes]` quantized activations (64-byte aligned rows).
    pub acts: &'a [u8],
    pub act_row_bytes: usize,
    pub t: usize,
    pub m: usize,
    /// `[t, m]` f32 output.
    pub out: SendPtr<f32>,
}

impl QJob<'_> {
    /// Pointer to weight row `r`.
    #[inline]
    pub fn w_row(&self, r: usize) -> *const u8 {
        debug_assert!(r < self.m);
        // SAFETY: r < m and `w` holds m rows (checked by the caller).
        unsafe { self.w.as_ptr().add(r * self.row_bytes) }
    }

    /// Pointer to quantized activation row `t`.
    #[inline]
    pub fn a_row(&self, t: usize) -> *const u8 {
        debug_assert!(t < self.t);
        // SAFETY: t < self.t rows of `act_row_bytes`.
        unsafe { self.acts.as_ptr().add(t * self.act_row_bytes) }
    }

    /// Stores `v` as `out[t, r]`.
    ///
    /// # Safety
    /// `t < self.t`, `r < self.m`, and no other thread writes that element.
    #[inline]
    pub unsafe fn store(&self, t: usize, r: usize, v: f32) {
        *self.out.0.add(t * self.m + r) = v;
    }

    /// Computes rows `rows` for every token on path `isa`.
    ///
    /// # Safety
    /// The rows of `rows` must be written by no other thread; `isa` must be runnable.
    pub unsafe fn run(&self, isa: Isa, rows: Range<usize>) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => match self.dtype {
                DType::Q4_0
                | DType::Q4_1
                | DType::Q5_0
                | DType::Q5_1
                | DType::Q8_0
                | DType::Q4_K
                | DType::Q5_K => avx512_q32::run(self, rows),
                _ => avx512_k::run(self, rows),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => match self.dtype {
                DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => {
                    avx2_q32::run(self, rows)
                }
                _ => avx2_k::run(self, rows),
            },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::run(self, rows, false),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => neon::run(self, rows, true),
            _ => scalar::run(self, rows),
        }
    }
}

/// A matmul with an F32/F16/BF16 weight and f32 activations.
pub(crate) struct FJob<'a> {
    pub dtype: DType,
    /// `[m, k]` weight elements.
    pub w: &'a [u8],
    pub k: usize,
    /// `[t, k]` activations.
    pub x: &'a [f32],
    pub t: usize,
    pub m: usize,
    /// `[t, m]` output.
    pub out: SendPtr<f32>,
}

impl FJob<'_> {
    /// # Safety
    /// As [`QJob::run`].
    pub unsafe fn run(&self, isa: Isa, rows: Range<usize>) {
        #[cfg(target_arch = "aarch64")]
        if matches!(isa, Isa::Neon | Isa::NeonDot) {
            return neon_float::run(self, rows);
        }
        float::run(self, isa, rows)
    }
}

/// `[f(0), .., f(N - 1)]`, always inlined. `std::array::from_fn` is not always inlined,
/// and a closure left out of line cannot inline the SIMD intrinsics it calls into the
/// `#[target_feature]` kernel (each becomes a function call).
#[inline(always)]
pub(crate) fn arr<T: Copy, const N: usize>(f: impl Fn(usize) -> T) -> [T; N] {
    let mut a = [f(0); N];
    for (i, v) in a.iter_mut().enumerate().skip(1) {
        *v = f(i);
    }
    a
}

/// A `[i16; 32]` table of `f(w)` for w = 0..32, computed at compile time (indices for
/// the word permutes).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! word_table {
    (|$w:ident| $e:expr) => {{
        let mut t = [0i16; 32];
        let mut $w = 0usize;
        while $w < 32 {
            t[$w] = ($e) as i16;
            $w += 1;
        }
        t
    }};
}
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
pub(crate) use word_table;

/// Bytes ahead of the current weight rows that GEMV prefetches. Decode streams the
/// whole model from DRAM; the hardware prefetcher alone left a single core at ~21 GB/s
/// on this Zen 5 (Q4_1 head GEMV), software prefetch 8-16 KB ahead reaches ~35 GB/s.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const fn prefetch_distance() -> usize {
    8192
}

/// Prefetches the cache lines of `[p, p + len)` that lie before `end`.
/// (x86-64 only: the NEON kernels leave streaming to the hardware prefetcher.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables))]
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, len: usize, end: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut q = p;
        let stop = p.wrapping_add(len);
        while q < stop && q < end {
            // SAFETY: prefetch never faults.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    q as *const i8,
                )
            };
            q = q.wrapping_add(64);
        }
    }
}

/// Calls `f(0), .., f(N - 1)` with literal indices, fully unrolled (N <= 16). LLVM does
/// not always unroll nested constant-trip loops over tile rows and tokens; then the
/// accumulator arrays stay in memory instead of registers. Unrolled calls with
/// constant indices let every accumulator live in its own register.
#[inline(always)]
pub(crate) fn each<const N: usize>(mut f: impl FnMut(usize)) {
    const { assert!(N <= 16) };
    macro_rules! call {
        ($($i:literal)*) => {$(
            if $i < N {
                f($i);
            }
        )*};
    }
    call!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
}

/// `for $i in 0..$n { $body }` fully unrolled with literal indices (see [`each`]).
macro_rules! unroll {
    ($i:ident in $n:expr => $body:block) => {
        $crate::cpu::simd::each::<{ $n }>(
            #[inline(always)]
            |$i: usize| $body,
        )
    };
}
pub(crate) use unroll;
