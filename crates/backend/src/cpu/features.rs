//! Run-time CPU feature detection, with an override for benchmarking slower paths.

/// Instruction sets the kernels may use. `SLUICE_CPU_FEATURES=scalar|avx2|avx512`
/// caps them (to benchmark or test the AVX2 path on an AVX-512 machine; on AArch64
/// `neon` caps at plain NEON, without the `dotprod` instructions, and `neon-dotprod`
/// at NEON with them);
/// `SLUICE_CPU_FEATURES=reference` selects f32-activation reference matmuls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vnni: bool,
    pub avx512bf16: bool,
    pub avxvnni: bool,
    pub neon: bool,
    /// AArch64 `sdot`/`udot` (ARMv8.2 dot product).
    pub dotprod: bool,
    /// Reference precision: quantized weights are dequantized row by row and multiplied
    /// with unquantized f32 activations (no int8 activation rounding). Slow; reproduces
    /// f32 reference implementations exactly enough for golden-token tests.
    pub reference: bool,
}

impl CpuFeatures {
    pub fn detect() -> CpuFeatures {
        let cap = std::env::var("SLUICE_CPU_FEATURES").ok();
        Self::detect_capped(cap.as_deref())
    }

    /// Detects, then caps at `cap` ("scalar", "avx2", "avx512", "neon", "neon-dotprod";
    /// `None` = no cap).
    pub fn detect_capped(cap: Option<&str>) -> CpuFeatures {
        let mut f = CpuFeatures::none();
        #[cfg(target_arch = "x86_64")]
        {
            f.avx2 = std::arch::is_x86_feature_detected!("avx2");
            f.fma = std::arch::is_x86_feature_detected!("fma");
            f.f16c = std::arch::is_x86_feature_detected!("f16c");
            f.avx512f = std::arch::is_x86_feature_detected!("avx512f");
            f.avx512bw = std::arch::is_x86_feature_detected!("avx512bw");
            f.avx512vnni = std::arch::is_x86_feature_detected!("avx512vnni");
            f.avx512bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
            f.avxvnni = std::arch::is_x86_feature_detected!("avxvnni");
        }
        #[cfg(target_arch = "aarch64")]
        {
            f.neon = std::arch::is_aarch64_feature_detected!("neon");
            f.dotprod = f.neon && std::arch::is_aarch64_feature_detected!("dotprod");
        }
        match cap.map(|s| s.trim().to_ascii_lowercase()) {
            Some(c) if c == "scalar" => CpuFeatures::none(),
            Some(c) if c == "reference" => CpuFeatures {
                reference: true,
                ..f
            },
            Some(c) if c == "avx2" => CpuFeatures {
                avx512f: false,
                avx512bw: false,
                avx512vnni: false,
                avx512bf16: false,
                ..f
            },
            Some(c) if c == "neon" => CpuFeatures {
                dotprod: false,
                ..f
            },
            _ => f,
        }
    }

    pub fn none() -> CpuFeatures {
        CpuFeatures {
            avx2: false,
            fma: false,
            f16c: false,
            avx512f: false,
            avx512bw: false,
            avx512vnni: false,
            avx512bf16: false,
            avxvnni: false,
            neon: false,
            dotprod: false,
            reference: false,
        }
    }

    /// AVX2 + FMA + F16C: the baseline x86 SIMD path.
    pub fn has_avx2(&self) -> bool {
        self.avx2 && self.fma && self.f16c
    }

    /// AVX-512 F/BW with VNNI: the fast int8 dot-product path.
    pub fn has_avx512_vnni(&self) -> bool {
        self.has_avx2() && self.avx512f && self.avx512bw && self.avx512vnni
    }

    pub fn describe(&self) -> String {
        if self.reference {
            "reference-f32".into()
        } else if self.has_avx512_vnni() {
            "avx512-vnni".into()
        } else if self.has_avx2() {
            "avx2".into()
        } else if self.neon && self.dotprod {
            "neon-dotprod".into()
        } else if self.neon {
            "neon".into()
        } else {
            "scalar".into()
        }
    }
}
