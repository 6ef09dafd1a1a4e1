//! Run-time compilation of the CUDA kernels with NVRTC, cached on disk.
//!
//! The sources are embedded in the binary; the cache key is a hash of the source, the
//! target architecture and the NVRTC version, so a new binary or driver recompiles once.
//! NVRTC emits a cubin for the exact architecture (`sm_90` on Hopper), which the driver
//! loads without a JIT step.

use std::ffi::{c_char, CString};
use std::path::PathBuf;

use cudarc::driver::{result as drv, sys};
use cudarc::nvrtc::{result as nvrtc_res, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

use super::derr;
use crate::dtype::DType;
use crate::error::{BackendError, Result};

/// Whether this process compiles the kernels of the timeline build
/// (`SLUICE_CUDA_TRACE=1`: kernels/common.cuh `SLUICE_TRACE`, cuda/trace.rs).
pub fn trace_build() -> bool {
    std::env::var("SLUICE_CUDA_TRACE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// All kernel sources, concatenated in dependency order (behind `#define SLUICE_TRACE`
/// in the timeline build, so its cubin has a cache name of its own).
pub fn kernel_source() -> String {
    kernel_source_for(trace_build())
}

/// `kernel_source`, of the timeline build or not.
pub fn kernel_source_for(trace: bool) -> String {
    let trace = if trace {
        "#define SLUICE_TRACE 1\n"
    } else {
        ""
    };
    trace.to_string()
        + &experiment_defines_from_env()
        + &[
            include_str!("kernels/common.cuh"),
            include_str!("kernels/elementwise.cu"),
            include_str!("kernels/gemv.cu"),
            include_str!("kernels/gemv_pairs.cu"),
            include_str!("kernels/attention.cu"),
            include_str!("kernels/attention_prefill.cu"),
            include_str!("kernels/attention_decode.cu"),
            include_str!("kernels/attention_decode_warp.cu"),
            include_str!("kernels/sampling.cu"),
            include_str!("kernels/fp8.cu"),
            include_str!("kernels/kquant.cu"),
            include_str!("kernels/legacy_quant.cu"),
            include_str!("kernels/qmma.cu"),
        ]
        .join("\n")
}

/// The defines of kernel experiments from the environment: the cache hint of the GEMVs'
/// weight loads (`SLUICE_WEIGHT_LOAD=0|2|3|4`, kernels/common.cuh `ld_weight`; none for
/// the default, `.L1::no_allocate`) and `SLUICE_CUDA_DEFINES` (`experiment_defines`).
/// Empty by default; the kernel cache's key covers the source, defines included.
fn experiment_defines_from_env() -> String {
    let mut defines = match std::env::var("SLUICE_WEIGHT_LOAD").ok().as_deref() {
        Some(m @ ("0" | "2" | "3" | "4")) => format!("#define SLUICE_WEIGHT_LOAD {m}\n"),
        _ => String::new(),
    };
    defines.push_str(&experiment_defines(
        std::env::var("SLUICE_CUDA_DEFINES").ok().as_deref(),
    ));
    defines
}

/// `#define NAME 1` for each name in `list` (space- or comma-separated) that starts with
/// `SLUICE_` and is made of capitals, digits and underscores: kernel experiments that
/// are compiled in or out (`SLUICE_CUDA_DEFINES="SLUICE_FD8_SOFT SLUICE_EAGER_RESCALE"`,
/// kernels/attention_decode.cu). Other words are ignored.
fn experiment_defines(list: Option<&str>) -> String {
    list.unwrap_or("")
        .split([' ', ','])
        .filter(|w| {
            w.len() > 7
                && w.starts_with("SLUICE_")
                && w.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(|w| format!("#define {w} 1\n"))
        .collect()
}

/// Whether the NVRTC library can be loaded (no GPU needed to compile).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { nvrtc_sys::is_culib_present() }
}

fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(derr)?;
    Ok((major, minor))
}

/// Compiles every kernel for `arch` (e.g. `sm_90`) and returns the cubin. Needs only the
/// NVRTC library, not a GPU: CI uses this to check that every kernel compiles.
pub fn compile_kernels(arch: &str) -> Result<Vec<u8>> {
    compile_source(arch, kernel_source())
}

/// `compile_kernels` for the timeline build (`trace`) or the normal one, whatever
/// `SLUICE_CUDA_TRACE` says (for the CI check of both).
pub fn compile_kernels_for(arch: &str, trace: bool) -> Result<Vec<u8>> {
    compile_source(arch, kernel_source_for(trace))
}

fn compile_source(arch: &str, source: String) -> Result<Vec<u8>> {
    if !nvrtc_present() {
        return Err(BackendError::Device(
            "NVRTC (libnvrtc.so) not found: install the CUDA toolkit or the \
             `nvidia-cuda-nvrtc` Python wheel and put its lib folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let src = CString::new(source)
        .map_err(|_| BackendError::Device("kernel source contains a NUL byte".into()))?;
    let name = CString::new("sluice_kernels.cu").map_err(derr)?;
    let prog = nvrtc_res::create_program(&src, Some(&name)).map_err(derr)?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
    ];
    // SAFETY: `prog` is a live program; options are valid C strings.
    let compiled = unsafe { nvrtc_res::compile_program(prog, &opts) };
    let log = unsafe { nvrtc_res::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    if compiled.is_err() {
        // SAFETY: destroyed once.
        let _ = unsafe { nvrtc_res::destroy_program(prog) };
        return Err(BackendError::Device(format!(
            "NVRTC failed to compile the kernels for {arch}:\n{log}"
        )));
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; the buffer is sized from the query.
    let cubin = unsafe {
        nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size)
            .result()
            .map_err(derr)?;
        let mut buf = vec![0u8; size];
        nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char)
            .result()
            .map_err(derr)?;
        let _ = nvrtc_res::destroy_program(prog);
        buf
    };
    if cubin.is_empty() {
        return Err(BackendError::Device(format!(
            "NVRTC produced no cubin for {arch} (is it a real architecture like sm_90?)"
        )));
    }
    Ok(cubin)
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_CUDA_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("sluice").join("cuda")
}

/// The file name of `arch`'s cubin in the disk cache: a hash of the kernel source, the
/// architecture and the NVRTC version, so that another source or compiler misses.
pub fn cubin_cache_name(arch: &str) -> Result<String> {
    let (maj, min) = nvrtc_version()?;
    let mut h = Sha256::new();
    h.update(kernel_source().as_bytes());
    h.update(format!("{arch} nvrtc {maj}.{min}").as_bytes());
    let key: String = h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("kernels-{arch}-{key}.cubin"))
}

/// The cubin for `arch`, from the disk cache or freshly compiled (and then cached).
fn cubin_for(arch: &str) -> Result<Vec<u8>> {
    let path = cache_dir().join(cubin_cache_name(arch)?);
    if let Ok(bytes) = std::fs::read(&path) {
        if !bytes.is_empty() {
            return Ok(bytes);
        }
    }
    let cubin = compile_kernels(arch)?;
    // A cache that cannot be written only costs a recompile next time.
    if std::fs::create_dir_all(path.parent().unwrap_or(&path)).is_ok() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(cubin)
}

/// The attention kernel instantiations (see kernels/attention.cu): KV cache type, query
/// heads per KV head rounded up (G), head_dim / 32 rounded up (DPL).
const ATTENTION_KV: [&str; 3] = ["f32", "bf16", "fp8"];
const ATTENTION_G: [usize; 4] = [1, 2, 4, 8];
const ATTENTION_DPL: [usize; 3] = [2, 4, 8];

/// The element type of a KV cache on the GPU (`--kv-cache-dtype`): the kernels that write
/// and read the cache are instantiated for these three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvKind {
    F32,
    Bf16,
    /// OCP FP8 E4M3, per-tensor scale 1 (kernels/common.cuh, `fp8_t`).
    Fp8,
}

impl KvKind {
    /// The kind of a cache tensor's dtype; `op` names the operation in the error.
    pub fn of(op: &'static str, dtype: DType) -> Result<KvKind> {
        match dtype {
            DType::F32 => Ok(KvKind::F32),
            DType::BF16 => Ok(KvKind::Bf16),
            DType::F8E4M3 => Ok(KvKind::Fp8),
            other => Err(BackendError::Unsupported { op, dtype: other }),
        }
    }
}

/// Index into `Kernels::attention` for a KV type, `g` query heads per KV head (1..=8) and
/// head dim `hd` (1..=256).
pub fn attention_index(kv: KvKind, g: usize, hd: usize) -> usize {
    let gi = ATTENTION_G.iter().position(|&x| x >= g).unwrap_or(3);
    let di = ATTENTION_DPL
        .iter()
        .position(|&x| x * 32 >= hd)
        .unwrap_or(2);
    (kv as usize * 4 + gi) * 3 + di
}

macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        /// Handles of every kernel in the loaded module.
        pub struct Kernels {
            _module: sys::CUmodule,
            $(pub $name: sys::CUfunction,)*
            /// `paged_attention_{kv}_g{G}_d{DPL}`, indexed by [`attention_index`].
            pub attention: Vec<sys::CUfunction>,
            /// Largest thread-block cluster the decode attention kernels may be launched
            /// in: 16 where the driver allows them non-portable sizes (sm_90+), else 8
            /// there, 0 before sm_90.
            pub decode_cluster_limit: usize,
            /// Dynamic shared memory of `flash_decode_ahead_bf16_d64` and `_d128` in
            /// bytes (the kernels' `fd_ahead_smem_bytes`).
            pub decode_ahead_smem: [u32; 2],
        }

        /// The name of every kernel `Kernels::load` looks up (the attention instances
        /// included), so that a compile check can find each one in the cubin.
        pub fn kernel_names() -> Vec<String> {
            let mut names: Vec<String> = vec![$(stringify!($name).to_string()),*];
            for kv in ATTENTION_KV {
                for g in ATTENTION_G {
                    for d in ATTENTION_DPL {
                        names.push(format!("paged_attention_{kv}_g{g}_d{d}"));
                    }
                }
            }
            names
        }

        impl Kernels {
            /// The loaded module (for its globals: cuda/trace.rs).
            pub fn module(&self) -> sys::CUmodule {
                self._module
            }

            /// Compiles (or loads from the cache) and loads the module for the current
            /// context's device.
            pub fn load(major: i32, minor: i32) -> Result<Kernels> {
                let arch = format!("sm_{major}{minor}");
                let cubin = cubin_for(&arch)?;
                // SAFETY: `cubin` is a complete image for this device; the driver copies it.
                let module = unsafe { drv::module::load_data(cubin.as_ptr() as *const _) }
                    .map_err(derr)?;
                let mut attention = Vec::with_capacity(ATTENTION_KV.len() * 12);
                for kv in ATTENTION_KV {
                    for g in ATTENTION_G {
                        for d in ATTENTION_DPL {
                            let name = format!("paged_attention_{kv}_g{g}_d{d}");
                            let n = CString::new(name.as_str()).map_err(derr)?;
                            // SAFETY: the module is loaded; the name is a kernel in it.
                            attention.push(unsafe { drv::module::get_function(module, n) }.map_err(
                                |e| BackendError::Device(format!("kernel {name} missing from the module: {e:?}")),
                            )?);
                        }
                    }
                }
                let mut k = Kernels {
                    _module: module,
                    attention,
                    decode_cluster_limit: 0,
                    decode_ahead_smem: [0; 2],
                    $($name: {
                        let n = CString::new(stringify!($name)).map_err(derr)?;
                        // SAFETY: the module is loaded; the name is a kernel in it.
                        unsafe { drv::module::get_function(module, n) }.map_err(|e| {
                            BackendError::Device(format!(
                                "kernel {} missing from the module: {e:?}",
                                stringify!($name)
                            ))
                        })?
                    },)*
                };
                k.decode_cluster_limit = decode_cluster_limit(&k, major);
                k.decode_ahead_smem = decode_ahead_smem(&k)?;
                if let Some(pct) = std::env::var("SLUICE_SMEM_CARVEOUT").ok().and_then(|v| v.parse::<i32>().ok()) {
                    // For experiments: one shared-memory carveout for every kernel, so that
                    // an SM never has to drain to reconfigure between kernels under PDL.
                    for f in [$(k.$name,)*].into_iter().chain(k.attention.iter().copied()) {
                        set_carveout(f, pct)?;
                    }
                }
                if let Some(pct) = std::env::var("SLUICE_DECODE_CARVEOUT").ok().and_then(|v| v.parse::<i32>().ok()) {
                    decode_chain_carveout(&k, pct)?;
                }
                Ok(k)
            }
        }
    };
}

/// For experiments (`SLUICE_DECODE_CARVEOUT=<percent>`): one preferred shared-memory
/// carveout for the batch-1 kernels around the decode attention only (the Q/K/V GEMV
/// before it, the attention, the staged output projection after it), so that the
/// attention's blocks and the projection's may land beside the blocks before them
/// without the SM draining to reconfigure (every kernel at 100% lost 4-8%, session 21:
/// the GEMVs lose their L1). Session 23, at 100%: the attention inside the 8B step 7.6
/// against 9.1 µs per layer, but the two GEMVs slower, 8B 230.6 against 253.0 tokens/s.
fn decode_chain_carveout(k: &Kernels, pct: i32) -> Result<()> {
    let chain = [
        k.gemv1_qkv_rope_bf16_kvbf16,
        k.flash_decode_ahead_bf16_d64,
        k.flash_decode_ahead_bf16_d128,
        k.gemv1_staged_bf16_s1,
        k.gemv1_staged_bf16_s2,
        k.gemv1_staged_bf16_s4,
    ];
    chain.into_iter().try_for_each(|f| set_carveout(f, pct))
}

/// Kernel `f`'s preferred shared-memory carveout: a percentage of the maximum (0-100), or
/// -1 for no preference.
fn set_carveout(f: sys::CUfunction, pct: i32) -> Result<()> {
    set_func_attribute(
        f,
        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
        pct,
    )
}

/// Sets attribute `attr` of kernel `f` to `value`; a value the device refuses is an error.
fn set_func_attribute(
    f: sys::CUfunction,
    attr: sys::CUfunction_attribute,
    value: i32,
) -> Result<()> {
    // SAFETY: `f` is a kernel of a loaded module and `attr` a settable attribute; a value
    // out of its range comes back as an error code.
    unsafe { sys::cuFuncSetAttribute(f, attr, value) }
        .result()
        .map_err(derr)
}

/// See `Kernels::decode_ahead_smem`: the sizes from the module, and each kernel allowed
/// that much dynamic shared memory (above the 48 KB default at head_dim 128).
fn decode_ahead_smem(k: &Kernels) -> Result<[u32; 2]> {
    let name = CString::new("fd_ahead_smem_bytes").map_err(derr)?;
    // SAFETY: the module is loaded for this context; a missing global is an error code.
    let (ptr, bytes) = unsafe { drv::module::get_global(k._module, name) }.map_err(derr)?;
    let mut sizes = [0u32; 2];
    if bytes != std::mem::size_of_val(&sizes) {
        return Err(BackendError::Device(format!(
            "fd_ahead_smem_bytes holds {bytes} bytes, expected 8"
        )));
    }
    // SAFETY: `ptr` is the global's device address and holds exactly `sizes`' bytes.
    unsafe { drv::memcpy_dtoh_sync(&mut sizes, ptr) }.map_err(derr)?;
    // (About 40 KB and 75 KB, under sm_80+'s per-block limits.)
    set_max_dynamic_smem(k.flash_decode_ahead_bf16_d64, sizes[0] as usize)?;
    set_max_dynamic_smem(k.flash_decode_ahead_bf16_d128, sizes[1] as usize)?;
    Ok(sizes)
}

/// Allows the one-m-tile bf16 decode attention kernels `pad` bytes of dynamic shared
/// memory more than they take (`SLUICE_DECODE_SMEM_PAD`); an error where that passes
/// the device's per-block limit.
pub(super) fn allow_decode_smem_pad(k: &Kernels, pad: u32) -> Result<()> {
    let pad = pad as usize;
    set_max_dynamic_smem(
        k.flash_decode_ahead_bf16_d64,
        k.decode_ahead_smem[0] as usize + pad,
    )?;
    set_max_dynamic_smem(
        k.flash_decode_ahead_bf16_d128,
        k.decode_ahead_smem[1] as usize + pad,
    )?;
    set_max_dynamic_smem(k.flash_decode_bf16_d64, pad)?;
    set_max_dynamic_smem(k.flash_decode_bf16_d128, pad)
}

/// Allows kernel `f` `bytes` of dynamic shared memory (the attribute is needed above 48
/// KB; sm_90 allows up to 227 KB per block).
pub(super) fn set_max_dynamic_smem(f: sys::CUfunction, bytes: usize) -> Result<()> {
    let bytes = i32::try_from(bytes).map_err(derr)?;
    set_func_attribute(
        f,
        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes,
    )
}

/// See `Kernels::decode_cluster_limit`.
fn decode_cluster_limit(k: &Kernels, major: i32) -> usize {
    if major < 9 {
        return 0;
    }
    let decode = [
        k.flash_decode_bf16_d64,
        k.flash_decode_bf16_d128,
        k.flash_decode_multi_bf16_d64,
        k.flash_decode_multi_bf16_d128,
        k.flash_decode_fp8_d64,
        k.flash_decode_fp8_d128,
        k.flash_decode_multi_fp8_d64,
        k.flash_decode_multi_fp8_d128,
        k.flash_decode_ahead_bf16_d64,
        k.flash_decode_ahead_bf16_d128,
    ];
    let non_portable = decode.iter().all(|&f| {
        set_func_attribute(
            f,
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
            1,
        )
        .is_ok()
    });
    if non_portable {
        16
    } else {
        8
    }
}

kernels!(
    f32_to_bf16_kernel,
    f32_to_f16_kernel,
    rms_norm_kernel,
    add_rms_norm_kernel,
    rms_norm4_kernel,
    add_rms_norm4_kernel,
    add_kernel,
    add_bias_kernel,
    scale_kernel,
    softcap_kernel,
    rope_kernel,
    silu_mul_kernel,
    gelu_mul_kernel,
    embedding_f32_kernel,
    embedding_bf16_kernel,
    embedding_f16_kernel,
    gather_rows_kernel,
    resolve_tokens_kernel,
    upload_segments_kernel,
    readback_kernel,
    kv_write_f32_kernel,
    kv_write_bf16_kernel,
    kv_write_fp8_kernel,
    argmax_kernel,
    argmax_split_kernel,
    gemv_bf16_2,
    gemv_bf16_3,
    gemv_bf16_4,
    gemv_f16_2,
    gemv_f16_3,
    gemv_f16_4,
    gemv_f32_2,
    gemv_f32_3,
    gemv_f32_4,
    attention_merge_kernel,
    glu_packed_kernel,
    glu_packed4_kernel,
    glu_packed_bf16_kernel,
    gemv_q8_0_2,
    gemv_q8_0_3,
    gemv_q8_0_4,
    dequant_q8_0_bf16_kernel,
    gemv1_rows_bf16,
    gemv1_rows_f16,
    gemv1_rows_f32,
    gemv1_rows_q8_0,
    gemv1_rows_bf16_norm,
    gemv1_rows_f16_norm,
    gemv1_rows_f32_norm,
    gemv1_rows_q8_0_norm,
    gemv1_rows_bf16_u2,
    gemv1_rows_bf16_u2_norm,
    gemv1_staged_bf16_s1,
    gemv1_staged_bf16_s2,
    gemv1_staged_bf16_s4,
    gemv1_rows_fp8_norm,
    gemv1_glu_bf16,
    gemv1_qkv_rope_bf16_kvf32,
    gemv1_qkv_rope_bf16_kvbf16,
    gemv1_qkv_rope_bf16_kvfp8,
    gemv1_glu_bf16_u2,
    gemv1_qkv_rope_bf16_kvf32_u2,
    gemv1_qkv_rope_bf16_kvbf16_u2,
    gemv1_qkv_rope_bf16_kvfp8_u2,
    split_qkv_rope_f32_kernel,
    split_qkv_rope_bf16in_f32_kernel,
    split_qkv_rope_bf16in_bf16_kernel,
    split_qkv_rope_bf16_kernel,
    split_qkv_rope_fp8_kernel,
    split_qkv_rope_bf16in_fp8_kernel,
    sample_kernel,
    logprobs_kernel,
    flash_prefill_bf16_d64,
    flash_prefill_bf16_d128,
    flash_decode_bf16_d64,
    flash_decode_bf16_d128,
    flash_decode_multi_bf16_d64,
    flash_decode_multi_bf16_d128,
    flash_prefill_fp8_d64,
    flash_prefill_fp8_d128,
    flash_decode_fp8_d64,
    flash_decode_fp8_d128,
    flash_decode_multi_fp8_d64,
    flash_decode_multi_fp8_d128,
    flash_decode_ahead_bf16_d64,
    flash_decode_ahead_bf16_d128,
    flash_decode_warp2_bf16_d64,
    flash_decode_warp2_bf16_d128,
    flash_decode_warp3_bf16_d64,
    flash_decode_warp3_bf16_d128,
    flash_decode_warp4_bf16_d64,
    flash_decode_warp4_bf16_d128,
    flash_decode_warp4_fp8_d64,
    flash_decode_warp4_fp8_d128,
    flash_decode_warp6_fp8_d64,
    flash_decode_warp6_fp8_d128,
    flash_decode_warp8_fp8_d64,
    flash_decode_warp8_fp8_d128,
    gemv1_rows_fp8,
    gemv_fp8_2,
    gemv_fp8_3,
    gemv_fp8_4,
    fp8_amax_kernel,
    fp8_quantize_kernel,
    fp8_dequant_bf16_kernel,
    gemv1_rows_q4_k,
    gemv_q4_k_2,
    gemv_q4_k_3,
    gemv_q4_k_4,
    dequant_q4_k_bf16_kernel,
    gemv1_rows_q6_k,
    gemv_q6_k_2,
    gemv_q6_k_3,
    gemv_q6_k_4,
    dequant_q6_k_bf16_kernel,
    gemv1_rows_q4_0,
    gemv_q4_0_2,
    gemv_q4_0_3,
    gemv_q4_0_4,
    dequant_q4_0_bf16_kernel,
    gemv1_rows_q4_1,
    gemv_q4_1_2,
    gemv_q4_1_3,
    gemv_q4_1_4,
    dequant_q4_1_bf16_kernel,
    qmma_q8_0_n1,
    qmma_q8_0_n2,
    qmma_q8_0_n4,
    qmma_q8_0_n8,
    qmma_q4_k_n1,
    qmma_q4_k_n2,
    qmma_q4_k_n4,
    qmma_q4_k_n8,
    qmma_q6_k_n1,
    qmma_q6_k_n2,
    qmma_q6_k_n4,
    qmma_q6_k_n8,
);

#[cfg(test)]
mod tests {
    use super::experiment_defines;

    #[test]
    fn experiment_defines_take_only_sluice_names() {
        assert_eq!(experiment_defines(None), "");
        assert_eq!(
            experiment_defines(Some("SLUICE_FD8_SOFT,SLUICE_EAGER_RESCALE")),
            "#define SLUICE_FD8_SOFT 1\n#define SLUICE_EAGER_RESCALE 1\n"
        );
        assert_eq!(
            experiment_defines(Some("FOO SLUICE_ sluice_x SLUICE_A-B SLUICE_X2")),
            "#define SLUICE_X2 1\n"
        );
    }
}
