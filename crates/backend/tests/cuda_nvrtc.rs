//! Every CUDA kernel compiles with NVRTC, for Hopper and for older architectures. Needs
//! only libnvrtc (no GPU): `.ci/run` installs the `nvidia-cuda-nvrtc` wheel from the
//! Python package index, puts it on LD_LIBRARY_PATH and sets SLUICE_REQUIRE_NVRTC=1, so
//! a kernel that does not compile fails CI.

use sluice_backend::cuda::module::{
    compile_kernels_for, cubin_cache_name, kernel_names, nvrtc_present, trace_build,
};

/// Whether libnvrtc is here to compile with; without it a check prints a note and passes,
/// unless SLUICE_REQUIRE_NVRTC=1 (CI), where that is a failure.
fn nvrtc_or_skip(check: &str) -> bool {
    if nvrtc_present() {
        return true;
    }
    let required = std::env::var("SLUICE_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "SLUICE_REQUIRE_NVRTC=1 but libnvrtc.so could not be loaded (LD_LIBRARY_PATH?)"
    );
    eprintln!("note: libnvrtc not found; skipping {check}");
    false
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !nvrtc_or_skip("the CUDA kernel compile check") {
        return;
    }
    // The build this process would load: the timeline's under SLUICE_CUDA_TRACE=1.
    let traced = trace_build();
    for arch in ["sm_90", "sm_80", "sm_89"] {
        let cubin = compiled_cubin(arch, traced);
        assert_eq!(
            String::from_utf8_lossy(&cubin).contains("sluice_trace\0"),
            traced,
            "{arch}: the timeline's table in the build (SLUICE_CUDA_TRACE set: {traced})"
        );
    }
}

/// The timeline build (`SLUICE_CUDA_TRACE=1`, cuda/trace.rs) compiles too, with every
/// kernel and the table the host reads.
#[test]
fn the_timeline_build_compiles() {
    if !nvrtc_or_skip("the timeline build's compile check") {
        return;
    }
    let cubin = compiled_cubin("sm_90", true);
    assert!(
        String::from_utf8_lossy(&cubin).contains("sluice_trace\0"),
        "no sluice_trace table in the timeline build"
    );
}

/// Not a check: scripts/cuda/prepare.sh runs it (`--ignored`) to stage the sm_90 cubin
/// in `SLUICE_STAGE_CUBIN_DIR` under the device's cache name, so a call there skips the
/// NVRTC compile (sm_90 only: a third of `every_kernel_compiles_with_nvrtc`'s time).
#[test]
#[ignore = "stages the sm_90 cubin for scripts/cuda/prepare.sh"]
fn stage_sm90_cubin() {
    let dir = std::env::var("SLUICE_STAGE_CUBIN_DIR")
        .expect("SLUICE_STAGE_CUBIN_DIR names the folder to stage the cubin in");
    assert!(
        nvrtc_present(),
        "libnvrtc.so could not be loaded (LD_LIBRARY_PATH?)"
    );
    let cubin = compiled_cubin("sm_90", trace_build());
    let name = cubin_cache_name("sm_90").expect("cache name");
    std::fs::create_dir_all(&dir).expect("stage dir");
    std::fs::write(std::path::Path::new(&dir).join(name), &cubin).expect("stage cubin");
}

/// `arch`'s cubin (of the timeline build with `trace`): an ELF image with every kernel
/// the backend loads in it.
fn compiled_cubin(arch: &str, trace: bool) -> Vec<u8> {
    let cubin = compile_kernels_for(arch, trace).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&cubin[..4], b"\x7fELF", "{arch}: not an ELF cubin");
    let text = String::from_utf8_lossy(&cubin);
    let names = kernel_names();
    assert!(names.len() > 40, "{} kernel names", names.len());
    for name in names {
        // Symbol names are NUL-terminated: no match on a longer name's prefix.
        let sym = format!("{name}\0");
        assert!(text.contains(&sym), "{arch}: {name} missing from the cubin");
    }
    cubin
}

/// Under programmatic dependent launch (sm_90+) a kernel's blocks may start before the
/// previous kernel ends, so every kernel must call `pdl_entry()` (directly, or through
/// the batch-1 GEMV skeletons, which load, stage or prefetch weights first, or the decode
/// attention kernels, which read the step's metadata and earlier steps' keys first) before it
/// touches shared buffers. A kernel without it would race; this check needs no GPU.
#[test]
fn every_kernel_waits_for_its_predecessor_first() {
    let src = sluice_backend::cuda::kernel_source();
    let mut kernels = 0;
    for (at, _) in src.match_indices("extern \"C\" __global__") {
        let rest = &src[at..];
        let body = &rest[rest.find('{').expect("kernel body")..];
        let head: String = body.chars().take(400).collect();
        let name: String = rest.chars().take(160).collect();
        let waits = head
            .trim_start_matches('{')
            .trim_start()
            .starts_with("pdl_entry();")
            || head.contains("gemv1_rows_body<")
            || head.contains("gemv1_pairs_body<")
            || head.contains("gemv1_staged_body<")
            || head.contains("flash_decode<")
            || head.contains("flash_decode_ahead<")
            || head.contains("flash_decode_warp<");
        assert!(waits, "kernel without pdl_entry() first: {name}");
        kernels += 1;
    }
    assert!(kernels >= 30, "{kernels} kernels found");
    assert!(src.contains("griddepcontrol.wait"));
}
