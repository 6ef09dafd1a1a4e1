// Shared helpers for sluice's CUDA kernels. Compiled by NVRTC at run time, so this file
// includes no CUDA headers: bf16 and f16 are handled as raw 16-bit patterns with
// explicit conversions (which also keeps the CI compile check free of header paths).

typedef unsigned short bf16_t;

// Programmatic dependent launch (PDL, Hopper): on sm_90+ every kernel is launched with
// the programmatic-stream-serialization attribute (cuda/mod.rs `launch`), so its blocks
// may start while the previous kernel of the stream still runs. Each kernel therefore
// calls pdl_entry() before it touches any buffer that another kernel writes or reads:
// `griddepcontrol.wait` returns once the previous grid has completed and its writes are
// visible; `launch_dependents` then lets the next kernel's blocks start, only after the
// wait, so at most one kernel runs ahead. What a kernel does before pdl_entry() may only
// read memory nothing writes during a step: the batch-1 GEMVs load their first weight
// chunks into registers there (gemv.cu gemv1_dot, `prewait`) or prefetch weights into
// L2, and the decode attention reads the step's metadata and the keys of earlier steps,
// overlapping the previous kernel's tail (why: docs/cuda.md, "PDL").
#ifdef SLUICE_TRACE
// Kernel timeline (a diagnostic build: SLUICE_CUDA_TRACE=1 defines SLUICE_TRACE, see
// cuda/trace.rs). Thread 0 of every block records, per grid, the %globaltimer at
// pdl_entry() (before the wait) and right after the wait returns: first and last block
// of each, the block count, and up to 8 marks inside the kernel (trace_mark: the last
// block's). Only fire-and-forget reductions (no returned value), after
// launch_dependents: a block is not held up by its recording. A grid's record is slot
// %gridid mod SLUICE_TRACE_SLOTS (a collision merges two grids; the host drops a replay
// whose grid count is off). Record (u64): key (gridid + 1), first entry, last entry,
// first wait return, last wait return, blocks, 2 unused, marks 0-7.
#define SLUICE_TRACE_SLOTS 65536
#define SLUICE_TRACE_WORDS 16
__device__ unsigned long long sluice_trace[SLUICE_TRACE_SLOTS * SLUICE_TRACE_WORDS];
__device__ __forceinline__ unsigned long long trace_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned long long trace_gridid() {
    unsigned long long g;
    asm volatile("mov.u64 %0, %%gridid;" : "=l"(g));
    return g;
}
__device__ __forceinline__ unsigned long long* trace_slot() {
    return sluice_trace + (size_t)(trace_gridid() % SLUICE_TRACE_SLOTS) * SLUICE_TRACE_WORDS;
}
__device__ __forceinline__ void trace_record(unsigned long long t0, unsigned long long t1) {
    unsigned long long* s = trace_slot();
    atomicMax(s, trace_gridid() + 1);
    atomicMin(s + 1, t0);
    atomicMax(s + 2, t0);
    atomicMin(s + 3, t1);
    atomicMax(s + 4, t1);
    atomicAdd(s + 5, 1ull);
}
#define trace_mark(i) \
    do { \
        if (threadIdx.x == 0) atomicMax(trace_slot() + 8 + (i), trace_now()); \
    } while (0)
#else
#define trace_mark(i) \
    do { \
    } while (0)
#endif

__device__ __forceinline__ void pdl_entry() {
#ifdef SLUICE_TRACE
    const unsigned long long t0 = trace_now();
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#ifdef SLUICE_TRACE
    const unsigned long long t1 = trace_now();
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
#ifdef SLUICE_TRACE
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) trace_record(t0, t1);
#endif
}

// pdl_entry() in two halves, for a kernel that lets the next one start later than its
// wait (the batch-1 decode attention, attention_decode.cu `flash_decode_ahead`): the
// wait (recorded like pdl_entry's), and the trigger.
__device__ __forceinline__ void pdl_wait() {
#ifdef SLUICE_TRACE
    const unsigned long long t0 = trace_now();
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#ifdef SLUICE_TRACE
    const unsigned long long t1 = trace_now();
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) trace_record(t0, t1);
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Shared-memory address of a generic pointer, and 16-byte cp.async copies global ->
// shared (sm_80+; the GEMVs, the attention kernels and the quantized mma use them).
__device__ __forceinline__ unsigned int fp_smem_addr(const void* p) {
    return (unsigned int)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared; `bytes` 0 zero-fills the destination without reading.
__device__ __forceinline__ void fp_cp_async16(unsigned int dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void fp_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most one committed group is still in flight.
__device__ __forceinline__ void fp_cp_async_wait1() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

// A 16-byte load of weights, which stream from memory once per token and which no
// kernel writes. By default (SLUICE_WEIGHT_LOAD 1) with `.L1::no_allocate`: the lines do
// not displace what the GEMVs re-read from L1 (x, gamma), nor the attention's shared
// memory beside them. Measured on an H200 at batch 1 (session 24): 8B 263.2 against
// 253.3 tokens/s with __ldg, 1B 1,396 against 1,334; the attention inside the step 6.4
// against 9.2 us per layer. The experiment SLUICE_WEIGHT_LOAD=<n> (module.rs prefixes the
// define) picks another: 0 __ldg; 2 `.L1::no_allocate.L2::256B` (the L2 fetches 256
// bytes per miss; lost 3%); 3 `.L2::256B` alone (lost 2%); 4 `.L1::no_allocate` with an
// L2 evict-first policy (createpolicy), so that the weights leave L2 before the KV cache
// and the activations. PTX ISA 8.x, "ld" and "createpolicy".
#ifndef SLUICE_WEIGHT_LOAD
#define SLUICE_WEIGHT_LOAD 1
#endif
__device__ __forceinline__ uint4 ld_weight(const uint4* p) {
#if SLUICE_WEIGHT_LOAD == 0
    return __ldg(p);
#else
    uint4 r;
#if SLUICE_WEIGHT_LOAD == 1
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
#elif SLUICE_WEIGHT_LOAD == 2
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
#elif SLUICE_WEIGHT_LOAD == 3
    asm("ld.global.nc.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
#else
    unsigned long long policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p), "l"(policy));
#endif
    return r;
#endif
}

// One bulk (TMA) prefetch of `bytes` (a multiple of 16, 16-byte aligned) into L2.
__device__ __forceinline__ void prefetch_l2(const void* p, unsigned int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// A distinct type from bf16_t (signed), so overloads can tell the two apart.
typedef short f16_t;

__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, NaN kept quiet (the same rule as the `half` crate on the host).
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)0x7fc0u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(f16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ f16_t f32_to_f16(float f) {
    f16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// f32 -> E4M3, round to nearest even, saturating to +-448 (infinities too), NaN to 0x7F
// with the sign: bit for bit the host's `e4m3_from_f32` (quant/fp8.rs), which the CPU test
// checks exhaustively. Normal results (|f| >= 2^-6) round the f32 mantissa to 3 bits and
// rebias the exponent (127 -> 7: minus 120 << 3 on the (exponent, mantissa) bits);
// subnormal ones (multiples of 2^-9) come from adding 2^14, whose ulp is 2^-9, so the
// hardware's round-to-nearest-even does the rounding. No sm_89 cvt: the same code on
// every architecture.
__device__ __forceinline__ unsigned int fp8_from_f32(float f) {
    const unsigned int u = __float_as_uint(f);
    const unsigned int sign = (u >> 24) & 0x80u;
    const unsigned int a = u & 0x7fffffffu;
    unsigned int code;
    if (a > 0x7f800000u) {
        code = 0x7fu;
    } else if (a >= 0x43e00000u) {  // 448
        code = 0x7eu;
    } else if (a >= 0x3c800000u) {  // 2^-6
        code = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - 0x3c0u;
    } else {
        code = __float_as_uint(__fadd_rn(__uint_as_float(a), 16384.0f)) - 0x46800000u;
    }
    return code | sign;
}

// An FP8 (OCP E4M3) KV cache element (`--kv-cache-dtype fp8`): one byte, no scale (the
// per-tensor scale is 1, as vLLM's fp8 cache without calibrated scales); written with
// fp8_from_f32, read exactly.
typedef unsigned char fp8_t;

// Four E4M3 codes (byte i of w is element i) as two f16x2 words holding each value times
// 2^-8: codes 0, 1 in `lo`, 2, 3 in `hi` (lower element in the low half). Each code's 7
// magnitude bits (eeee mmm) move to bits 7..13 of an f16 and its sign to bit 15: the f16
// exponent field is 0eeee (bias 15 against E4M3's 7) and its mantissa mmm0000000, so the
// f16 is exactly the E4M3 value times 2^-8, subnormals included (the same trick as
// fp8.cu's fp8_pair). Code 0x7F (NaN) decodes to 480 * 2^-8: fp8_from_f32 writes it only
// for a NaN input.
__device__ __forceinline__ void fp8x4_to_f16x2(unsigned int w, unsigned int& lo, unsigned int& hi) {
    const unsigned int a = __byte_perm(w, 0u, 0x1404), b = __byte_perm(w, 0u, 0x3424);
    lo = (a & 0x80008000u) | ((a >> 1) & 0x3F803F80u);
    hi = (b & 0x80008000u) | ((b >> 1) & 0x3F803F80u);
}

__device__ __forceinline__ float fp8_to_f32(fp8_t c) {
    const unsigned short h = (unsigned short)(((c & 0x80u) << 8) | ((c & 0x7Fu) << 7));
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f * 256.0f;
}

// Loads of one element of each storage type as f32.
__device__ __forceinline__ float load_f32(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load_f32(const bf16_t* p, long i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ float load_f32(const fp8_t* p, long i) { return fp8_to_f32(p[i]); }

// Eight consecutive elements from an 16-byte aligned position (i a multiple of 8).
__device__ __forceinline__ void load8(const float* p, long i, float* f) {
    const float4* v = reinterpret_cast<const float4*>(p + i);
    float4 a = __ldg(v), b = __ldg(v + 1);
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}
__device__ __forceinline__ void load8(const bf16_t* p, long i, float* f) {
    uint4 r = __ldg(reinterpret_cast<const uint4*>(p + i));
    unsigned int u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int e = 0; e < 4; e++) {
        f[2 * e] = __uint_as_float(u[e] << 16);
        f[2 * e + 1] = __uint_as_float(u[e] & 0xffff0000u);
    }
}
// Eight E4M3 codes from an 8-byte aligned position (i a multiple of 8).
__device__ __forceinline__ void load8(const fp8_t* p, long i, float* f) {
    const uint2 r = __ldg(reinterpret_cast<const uint2*>(p + i));
    const unsigned int u[2] = {r.x, r.y};
#pragma unroll
    for (int e = 0; e < 2; e++) {
        unsigned int lo, hi;
        fp8x4_to_f16x2(u[e], lo, hi);
        const unsigned int h[2] = {lo, hi};
#pragma unroll
        for (int j = 0; j < 2; j++) {
            float x, y;
            asm("{.reg .b16 l, u;\n\tmov.b32 {l, u}, %2;\n\tcvt.f32.f16 %0, l;\n\tcvt.f32.f16 %1, u;}"
                : "=f"(x), "=f"(y) : "r"(h[j]));
            f[4 * e + 2 * j] = x * 256.0f;
            f[4 * e + 2 * j + 1] = y * 256.0f;
        }
    }
}

__device__ __forceinline__ void store_kv(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_kv(bf16_t* p, long i, float v) { p[i] = f32_to_bf16(v); }
__device__ __forceinline__ void store_kv(fp8_t* p, long i, float v) { p[i] = (fp8_t)fp8_from_f32(v); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result. `scratch` holds
// 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    float t = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(t);
}

#define NEG_INF __int_as_float(0xff800000)

// Keeps the larger of two (value, index) pairs, the lower index on ties.
__device__ __forceinline__ void argmax_pair(float& best, int& bi, float ov, int oi) {
    if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
}

__device__ __forceinline__ void warp_argmax(float& best, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        argmax_pair(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
}

// Index of the largest of row[0..n) over the block (the first on ties, like the host's
// `argmax`; NaN never wins; 0 for an all-NaN or empty row); every thread gets it.
// `sv` / `si` hold 32 floats / ints of shared memory.
// Sixteen loads per thread in flight: the one-load-at-a-time loop took 21.9 µs for a
// 49,152-entry row at 1,024 threads on an H200 (48 dependent round trips to L2), more than
// a 1B-shape decode step's Q/K/V projection (ncu, docs/BENCHMARKS.md session 17). Each
// thread still visits its indices in increasing order, so `>` keeps the first on ties.
__device__ __forceinline__ int block_argmax(const float* row, int n, float* sv, int* si) {
    float best = NEG_INF; int bi = 0x7fffffff;
    const int U = 16, stride = blockDim.x;
    int i = threadIdx.x;
    for (; i + (U - 1) * stride < n; i += U * stride) {
        float v[U];
#pragma unroll
        for (int u = 0; u < U; u++) v[u] = row[i + u * stride];
#pragma unroll
        for (int u = 0; u < U; u++)
            if (v[u] > best) { best = v[u]; bi = i + u * stride; }
    }
    for (; i < n; i += stride) {
        float v = row[i];
        if (v > best) { best = v; bi = i; }
    }
    warp_argmax(best, bi);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) { sv[warp] = best; si[warp] = bi; }
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    best = lane < nw ? sv[lane] : NEG_INF;
    bi = lane < nw ? si[lane] : 0x7fffffff;
    warp_argmax(best, bi);
    return bi == 0x7fffffff ? 0 : bi;
}
