#!/usr/bin/env python3
"""Registers, spills and shared memory of every kernel, without a GPU.

Compiles the kernel sources (in the order of crates/backend/src/cuda/module.rs) with the
NVRTC of the `nvidia-cuda-nvrtc` wheel that .ci/run installs, with `--ptxas-options=-v`,
and prints one line per kernel. A kernel's occupancy follows from its registers and
shared memory (65,536 registers and 227 KB per SM on Hopper).

usage: LD_LIBRARY_PATH=$HOME/.cache/sluice/nvrtc/site/nvidia/cu13/lib \
         python3 scripts/cuda/ptxas_info.py [sm_90] [name filter]
"""
import ctypes, os, re, sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
KERNELS = os.path.join(ROOT, "crates", "backend", "src", "cuda", "kernels")
LIB = os.path.expanduser("~/.cache/sluice/nvrtc/site/nvidia/cu13/lib/libnvrtc.so.13")


def sources():
    # The include_str! order of module.rs.
    module = open(os.path.join(ROOT, "crates", "backend", "src", "cuda", "module.rs")).read()
    names = re.findall(r'include_str!\("kernels/([^"]+)"\)', module)
    return "\n".join(open(os.path.join(KERNELS, n)).read() for n in names).encode()


def main():
    arch = sys.argv[1] if len(sys.argv) > 1 else "sm_90"
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    lib = ctypes.CDLL(os.environ.get("SLUICE_NVRTC_LIB", LIB))
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), sources(), b"sluice_kernels.cu", 0, None, None):
        sys.exit("nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"--ptxas-options=-v"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    text = log.value.decode(errors="replace")
    if rc:
        sys.exit(text)
    rows, name, spill = [], None, ""
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            spill = f"{m.group(1)}/{m.group(2)}"
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            smem = re.search(r"(\d+) bytes smem", line)
            rows.append((name, int(m.group(1)), spill, int(smem.group(1)) if smem else 0))
            name = None
    print(f"| kernel ({arch}) | registers | spill st/ld bytes | static smem bytes |")
    print("| --- | ---: | ---: | ---: |")
    for n, regs, sp, smem in sorted(rows):
        if only in n:
            print(f"| {n} | {regs} | {sp} | {smem} |")


if __name__ == "__main__":
    main()
