// Decode-time matmul for a few rows: out[t, m] = sum_k x[t, k] * w[m, k] with x f32
// [T, K], w [M, K] (bf16, f16 or f32), out f32 [T, M], T <= 4.
//
// Why: at batch 1-4 the matmul is a pass over the weights, so the only goal is to stream
// them at full bandwidth: one warp per output row, 16-byte loads coalesced across the warp
// (a warp reads 512 contiguous bytes per step), four loads in flight per lane, f32
// accumulation, a shuffle reduction at the end. x is tiny and read through L1.
// cuBLAS at N <= 4 pads to a tile and runs its GEMM path; this kernel skips the
// conversion of x to 16 bits that cuBLAS would need.


__device__ __forceinline__ void unpack(const uint4& r, const bf16_t*, float* f) {
    unsigned int u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

__device__ __forceinline__ void unpack(const uint4& r, const f16_t*, float* f) {
    unsigned int u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = f16_to_f32((f16_t)(u[i] & 0xffffu));
        f[2 * i + 1] = f16_to_f32((f16_t)(u[i] >> 16));
    }
}

// Elements per 16-byte load.
template <typename W> struct Vec { static const int N = 8; };
template <> struct Vec<float> { static const int N = 4; };

__device__ __forceinline__ void unpack(const uint4& r, const float*, float* f) {
    f[0] = __uint_as_float(r.x); f[1] = __uint_as_float(r.y);
    f[2] = __uint_as_float(r.z); f[3] = __uint_as_float(r.w);
}

// f[0..n) . x[0..n) with x read as float4 (n is 4 or 8; x is 16-byte aligned because K
// is a multiple of the elements per weight load): a quarter of the load instructions of
// scalar reads, which matters because x is re-read from L1 for every weight row.
__device__ __forceinline__ float dot_x(const float* f, const float* x, int n) {
    const float4* xv = reinterpret_cast<const float4*>(x);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (4 * i >= n) break;
        float4 v = __ldg(xv + i);
        s += f[4 * i] * v.x + f[4 * i + 1] * v.y + f[4 * i + 2] * v.z + f[4 * i + 3] * v.w;
    }
    return s;
}

// `wpr` warps share a row (1, 2, 4 or 8; the block's 8 warps cover 8 / wpr rows): with
// few rows (a K or V projection of 1,024 rows is 128 blocks of one warp per row on 132
// SMs) one warp per row leaves too few loads in flight to reach full bandwidth.
template <typename W, int T>
__device__ __forceinline__ void gemv_body(const float* __restrict__ x, const W* __restrict__ w,
                                          float* __restrict__ out, int M, int K, int wpr) {
    __shared__ float part[8][T];
    const int NV = Vec<W>::N;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int m = blockIdx.x * (8 / wpr) + warp / wpr;
    const int slice = warp % wpr;
    const bool live = m < M;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (long)(live ? m : 0) * K);
    const int chunks = live ? K / NV : 0;
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    const int UNROLL = 4;
    const int step = 32 * wpr;
    int c = lane + 32 * slice;
    for (; c + step * (UNROLL - 1) < chunks; c += step * UNROLL) {
        uint4 r[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) r[u] = ld_weight(wr + c + step * u);
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            float f[NV];
            unpack(r[u], w, f);
            int k0 = (c + step * u) * NV;
#pragma unroll
            for (int t = 0; t < T; t++) acc[t] += dot_x(f, x + (long)t * K + k0, NV);
        }
    }
    for (; c < chunks; c += step) {
        uint4 r = ld_weight(wr + c);
        float f[NV];
        unpack(r, w, f);
        int k0 = c * NV;
#pragma unroll
        for (int t = 0; t < T; t++) acc[t] += dot_x(f, x + (long)t * K + k0, NV);
    }
#pragma unroll
    for (int t = 0; t < T; t++) {
        float s = warp_sum(acc[t]);
        if (wpr == 1) {
            if (lane == 0 && live) out[(long)t * M + m] = s;
        } else if (lane == 0) {
            part[warp][t] = s;
        }
    }
    if (wpr > 1) {
        __syncthreads();
        if (slice == 0 && lane < T && live) {
            float s = 0.0f;
            for (int i = 0; i < wpr; i++) s += part[warp + i][lane];
            out[(long)lane * M + m] = s;
        }
    }
}

#define GEMV(NAME, W, T) \
extern "C" __global__ void __launch_bounds__(256) NAME(const float* x, const W* w, float* out, int M, int K, \
                                                       int wpr) { pdl_entry(); \
    gemv_body<W, T>(x, w, out, M, K, wpr); \
}
// One row (batch-1 decode) goes to gemv1_rows_* below.
GEMV(gemv_bf16_2, bf16_t, 2) GEMV(gemv_bf16_3, bf16_t, 3) GEMV(gemv_bf16_4, bf16_t, 4)
GEMV(gemv_f16_2, f16_t, 2) GEMV(gemv_f16_3, f16_t, 3) GEMV(gemv_f16_4, f16_t, 4)
GEMV(gemv_f32_2, float, 2) GEMV(gemv_f32_3, float, 3) GEMV(gemv_f32_4, float, 4)

// Q8_0 weights, repacked at load (cuda/mod.rs `upload_weight`): int8 quants qs [M, K]
// then f16 scales sc [M, K / 32]. out[t, m] = sum_k x[t, k] * qs[m, k] * sc[m, k / 32].
// The bf16 kernel's structure with 16 weights per 16-byte load (half a block: one scale),
// so a decode step reads 1.06 bytes per weight instead of 2.
// Sixteen int8 to f32 without integer-to-float conversions (a quarter-rate pipe: 16 per
// clock per SM, which held the first version of this GEMV to 1.46 TB/s on an H100): the
// bytes, offset by 128 to make them unsigned, are placed by one byte permute into the
// low byte of 0x4B000000 (2^23 as a float), whose low mantissa bits then hold the byte
// exactly; subtracting 2^23 + 128 leaves the signed value (the trick of FasterTransformer's
// int8 dequantization). Exact: the same floats as a conversion.
__device__ __forceinline__ void unpack_i8(const uint4& r, float* f) {
    unsigned int u[4] = {r.x ^ 0x80808080u, r.y ^ 0x80808080u, r.z ^ 0x80808080u, r.w ^ 0x80808080u};
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int b = 0; b < 4; b++) {
            // bytes: u[i] byte b, then 0x00, 0x00, 0x4B (selector nibbles b, 4, 5, 7)
            const unsigned int w = __byte_perm(u[i], 0x4B000000u, b | 0x7540);
            f[4 * i + b] = __uint_as_float(w) - 8388736.0f;
        }
    }
}

template <int T>
__device__ __forceinline__ void gemv_q8_0_body(const float* __restrict__ x, const unsigned char* __restrict__ w,
                                               float* __restrict__ out, int M, int K, int wpr) {
    __shared__ float part[8][T];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int m = blockIdx.x * (8 / wpr) + warp / wpr;
    const int slice = warp % wpr;
    const bool live = m < M;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (long)(live ? m : 0) * K);
    const f16_t* sc = reinterpret_cast<const f16_t*>(w + (long)M * K) + (long)(live ? m : 0) * (K / 32);
    const int chunks = live ? K / 16 : 0;
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    const int UNROLL = 4;
    const int step = 32 * wpr;
    int c = lane + 32 * slice;
    for (; c + step * (UNROLL - 1) < chunks; c += step * UNROLL) {
        uint4 r[UNROLL];
        float s[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            r[u] = ld_weight(wr + c + step * u);
            s[u] = f16_to_f32(sc[(c + step * u) >> 1]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            float f[16];
            unpack_i8(r[u], f);
            int k0 = (c + step * u) * 16;
#pragma unroll
            for (int t = 0; t < T; t++) {
                const float* xt = x + (long)t * K + k0;
                acc[t] += s[u] * (dot_x(f, xt, 8) + dot_x(f + 8, xt + 8, 8));
            }
        }
    }
    for (; c < chunks; c += step) {
        uint4 r = ld_weight(wr + c);
        float s = f16_to_f32(sc[c >> 1]);
        float f[16];
        unpack_i8(r, f);
        int k0 = c * 16;
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float* xt = x + (long)t * K + k0;
            acc[t] += s * (dot_x(f, xt, 8) + dot_x(f + 8, xt + 8, 8));
        }
    }
#pragma unroll
    for (int t = 0; t < T; t++) {
        float sum = warp_sum(acc[t]);
        if (wpr == 1) {
            if (lane == 0 && live) out[(long)t * M + m] = sum;
        } else if (lane == 0) {
            part[warp][t] = sum;
        }
    }
    if (wpr > 1) {
        __syncthreads();
        if (slice == 0 && lane < T && live) {
            float sum = 0.0f;
            for (int i = 0; i < wpr; i++) sum += part[warp + i][lane];
            out[(long)lane * M + m] = sum;
        }
    }
}

#define GEMV_Q8(NAME, T) \
extern "C" __global__ void __launch_bounds__(256) NAME(const float* x, const unsigned char* w, float* out, int M, \
                                                       int K, int wpr) { pdl_entry(); \
    gemv_q8_0_body<T>(x, w, out, M, K, wpr); \
}
GEMV_Q8(gemv_q8_0_2, 2) GEMV_Q8(gemv_q8_0_3, 3) GEMV_Q8(gemv_q8_0_4, 4)

// Q8_0 (split layout) -> bf16 [M, K], for the cuBLASLt path of matmuls with more rows:
// 16 weights per thread.
extern "C" __global__ void dequant_q8_0_bf16_kernel(const unsigned char* w, bf16_t* out, int M, int K) { pdl_entry();
    const long chunks = (long)M * K / 16;
    const uint4* qs = reinterpret_cast<const uint4*>(w);
    const f16_t* sc = reinterpret_cast<const f16_t*>(w + (long)M * K);
    for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (long)gridDim.x * blockDim.x) {
        float f[16];
        unpack_i8(__ldg(qs + c), f);
        const float s = f16_to_f32(sc[c >> 1]);
        unsigned int o[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            o[i] = (unsigned int)f32_to_bf16(f[2 * i] * s) | ((unsigned int)f32_to_bf16(f[2 * i + 1] * s) << 16);
        }
        uint4* dst = reinterpret_cast<uint4*>(out) + 2 * c;
        dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
        dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
    }
}

// Batch-1 GEMVs with RPW rows per warp. Why: x comes from L1 once per weight element, and
// for Q8_0 that is 4 bytes of x per byte of weight (bf16: 2): the load pipe, not HBM,
// bounded the one-row-per-warp kernels (Q8_0 at 1.46 TB/s on H100 and H200 alike). Here a
// warp loads each x chunk once into registers for RPW rows, and keeps RPW x UNROLL
// 16-byte weight loads in flight per lane. Rows past M are clamped to the last row and
// their results dropped.
//
// One skeleton serves every weight format with a simple per-row layout; a row policy
// (RowPlain<W>, RowQ8_0 here, RowFp8 in fp8.cu) says how to load and unpack 16 bytes of
// a row and which scale multiplies them. Two fusions of the decode step live here:
// - `gamma` non-null: x is RMS-normalized on the fly, out = rsqrt(mean(x^2) + eps) *
//   W (gamma * x). The sum of squares accumulates from the x chunks the warp loads
//   anyway (a warp, or the `wpr` warps of a row group, covers all of K), so the norm
//   costs no extra pass and no kernel of its own.
// - `accumulate` non-zero: out += W x (the residual add in the epilogue of the output
//   and down projections).
// Before pdl_entry() each block prefetches its own rows of the weight into L2, so that
// under PDL the weight streams while the previous kernel finishes: the rows below byte
// offset `prefetch`, whole (the host passes the whole weight's size right after a kernel
// that leaves the memory idle, such as the decode attention: cuda/ops.rs gemv1_prefetch).
__device__ __forceinline__ void load_x(const float* x, int n, float* xs) {
    const float4* xv = reinterpret_cast<const float4*>(x);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (4 * i >= n) break;
        float4 v = __ldg(xv + i);
        xs[4 * i] = v.x; xs[4 * i + 1] = v.y; xs[4 * i + 2] = v.z; xs[4 * i + 3] = v.w;
    }
}

// x[0..n) into xs; with NORM, times gamma, and the squares of x added to `ss`.
template <bool NORM>
__device__ __forceinline__ void load_x_norm(const float* x, const float* gamma, int n, float* xs, float& ss) {
    load_x(x, n, xs);
    if (NORM) {
        float g[16];
        load_x(gamma, n, g);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            if (i >= n) break;
            ss += xs[i] * xs[i];
            xs[i] *= g[i];
        }
    }
}

template <int N>
__device__ __forceinline__ float dot_r(const float* f, const float* xs) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < N; i++) s += f[i] * xs[i];
    return s;
}

// Reduces each row's per-lane sums (through shared memory when several warps share a
// row), applies the norm and the format's output scale, and stores or accumulates.
template <int RPW, bool NORM>
__device__ __forceinline__ void gemv_rows_store(float* acc, float ss, float* out, int M, int K, int m0, int wpr,
                                                float eps, float out_scale, int accumulate) {
    __shared__ float part[8][RPW + 1];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, slice = warp % wpr;
#pragma unroll
    for (int r = 0; r < RPW; r++) acc[r] = warp_sum(acc[r]);
    if (NORM) ss = warp_sum(ss);
    if (wpr > 1) {
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < RPW; r++) part[warp][r] = acc[r];
            part[warp][RPW] = ss;
        }
        __syncthreads();
        if (slice != 0) return;
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            float s = 0.0f;
            for (int i = 0; i < wpr; i++) s += part[warp + i][r];
            acc[r] = s;
        }
        if (NORM) {
            float s = 0.0f;
            for (int i = 0; i < wpr; i++) s += part[warp + i][RPW];
            ss = s;
        }
    }
    const float scale = NORM ? out_scale * rsqrtf(ss / (float)K + eps) : out_scale;
    if (lane < RPW) {
        float v = 0.0f;
#pragma unroll
        for (int r = 0; r < RPW; r++)
            if (r == lane) v = acc[r];
        const int m = m0 + lane;
        if (m < M) out[m] = accumulate ? out[m] + v * scale : v * scale;
    }
}

// Row policies: `init` points at row m, `load(c)` is its c-th 16-byte chunk (N
// weights), `scale(c)` the factor of that chunk's dot product, `unpack` the N floats.
template <typename W> struct RowPlain {
    static const int N = Vec<W>::N;
    const uint4* p;
    __device__ __forceinline__ void init(const unsigned char* w, long m, int, int K) {
        p = reinterpret_cast<const uint4*>(reinterpret_cast<const W*>(w) + m * K);
    }
    __device__ __forceinline__ uint4 load(int c) const { return ld_weight(p + c); }
    __device__ __forceinline__ float scale(int) const { return 1.0f; }
    __device__ __forceinline__ static void unpack_to(const uint4& q, float* f) { unpack(q, (const W*)0, f); }
    __device__ __forceinline__ static long row_bytes(int K) { return (long)K * sizeof(W); }
    __device__ __forceinline__ static float out_scale(const unsigned char*, int, int) { return 1.0f; }
};

// Q8_0 split layout (int8 quants [M, K], then f16 scales [M, K / 32]).
struct RowQ8_0 {
    static const int N = 16;
    const uint4* p;
    const f16_t* sc;
    __device__ __forceinline__ void init(const unsigned char* w, long m, int M, int K) {
        p = reinterpret_cast<const uint4*>(w + m * K);
        sc = reinterpret_cast<const f16_t*>(w + (long)M * K) + m * (K / 32);
    }
    __device__ __forceinline__ uint4 load(int c) const { return ld_weight(p + c); }
    __device__ __forceinline__ float scale(int c) const { return f16_to_f32(sc[c >> 1]); }
    __device__ __forceinline__ static void unpack_to(const uint4& q, float* f) { unpack_i8(q, f); }
    __device__ __forceinline__ static long row_bytes(int K) { return K; }
    __device__ __forceinline__ static float out_scale(const unsigned char*, int, int) { return 1.0f; }
};


// The dot products of a warp's RPW weight rows with x (normalized on the fly with NORM,
// the squares of x summed into `ss`): this lane's partial sums over chunks c0, c0 + step,
// ... of `chunks` (the warps of a row group interleave their chunks), UNROLL x RPW
// 16-byte weight loads in flight per lane. Shared with gemv_pairs.cu.
//
// PRE > 0 and `prewait` (the caller has not waited for the previous kernel yet): the first
// PRE of the first iteration's UNROLL loads per row (weights, which no kernel writes) are
// issued, then pdl_entry(), then x is read. Under PDL the next kernel's blocks start
// while this one's still run, where they fit beside them, so their first weight bytes
// stream into registers during the previous kernel's tail (or the idle memory of the
// decode attention) and the memory stays busy across the kernel boundary instead of
// draining and refilling. Unlike an L2 prefetch (measured slower, docs/BENCHMARKS.md
// session 18) no byte is read twice. On an H200 (session 20, tg128): 8B 242.8 -> 249.6
// tokens/s, 1B 1,273 -> 1,296.
//
// Registers decide it: the loads held across the wait count for the whole kernel, and
// the next kernel's blocks start early only where they fit beside this one's (the grids
// aim at two blocks per SM; at 64 registers four fit). With PRE = 1 the bf16 kernels
// stay at 64 registers. Half the first iteration (PRE = 2) took them to 72-82 (three
// blocks per SM: 8B 234.7, 1B 1,142), or to 64 with spills under __launch_bounds__(256,
// 4) (244.7, 1,262); PRE = 1 with the GLU kernel at 70 registers (three blocks per SM)
// ran at 235.4 and 1,185, below the kernels without it. The formats whose kernels would
// spill or grow with it (FP8: 305 against 309 tokens/s; Q8_0) keep PRE = 0: the loop of
// before, waiting first.
template <class P, int RPW, int U0, int U1>
__device__ __forceinline__ void gemv1_load(const P* rows, int c, int step, uint4 (*q)[RPW], float (*s)[RPW]) {
#pragma unroll
    for (int u = U0; u < U1; u++)
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            q[u][r] = rows[r].load(c + step * u);
            s[u][r] = rows[r].scale(c + step * u);
        }
}

template <class P, int RPW, bool NORM, int UNROLL>
__device__ __forceinline__ void gemv1_consume(const float* __restrict__ x, const float* __restrict__ gamma, int c,
                                              int step, uint4 (*q)[RPW], float (*s)[RPW], float* acc, float& ss) {
    const int N = P::N;
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
        const int k0 = (c + step * u) * N;
        float xs[N];
        load_x_norm<NORM>(x + k0, gamma + (NORM ? k0 : 0), N, xs, ss);
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            float f[N];
            P::unpack_to(q[u][r], f);
            acc[r] += s[u][r] * dot_r<N>(f, xs);
        }
    }
}

template <class P, int RPW, bool NORM, int UNROLL = 2, int PRE = 0>
__device__ __forceinline__ void gemv1_dot(const P* rows, const float* __restrict__ x, const float* __restrict__ gamma,
                                          int chunks, int c0, int step, float* acc, float& ss, bool prewait) {
    const int N = P::N;
#pragma unroll
    for (int r = 0; r < RPW; r++) acc[r] = 0.0f;
    int c = c0;
    if constexpr (PRE > 0) {
        // The first iteration, peeled: PRE loads per row before the wait.
        uint4 q[UNROLL][RPW];
        float s[UNROLL][RPW];
        const bool full = c + step * (UNROLL - 1) < chunks;
        if (full) gemv1_load<P, RPW, 0, PRE>(rows, c, step, q, s);
        if (prewait) pdl_entry();
        if (full) {
            gemv1_load<P, RPW, PRE, UNROLL>(rows, c, step, q, s);
            gemv1_consume<P, RPW, NORM, UNROLL>(x, gamma, c, step, q, s, acc, ss);
            c += step * UNROLL;
        }
    }
    for (; c + step * (UNROLL - 1) < chunks; c += step * UNROLL) {
        uint4 q[UNROLL][RPW];
        float s[UNROLL][RPW];
        gemv1_load<P, RPW, 0, UNROLL>(rows, c, step, q, s);
        gemv1_consume<P, RPW, NORM, UNROLL>(x, gamma, c, step, q, s, acc, ss);
    }
    for (; c < chunks; c += step) {
        const int k0 = c * N;
        float xs[N];
        load_x_norm<NORM>(x + k0, gamma + (NORM ? k0 : 0), N, xs, ss);
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            float f[N];
            P::unpack_to(rows[r].load(c), f);
            acc[r] += rows[r].scale(c) * dot_r<N>(f, xs);
        }
    }
}

template <class P, int RPW, bool NORM, int UNROLL = 2, int PRE = 0>
__device__ __forceinline__ void gemv1_rows_body(const float* __restrict__ x, const unsigned char* __restrict__ w,
                                                float* __restrict__ out, int M, int K, int wpr,
                                                const float* __restrict__ gamma, float eps, int accumulate,
                                                long prefetch, int prewait) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rows_per_block = (8 / wpr) * RPW;
    if (threadIdx.x == 0) {
        const long rb = P::row_bytes(K);
        const long first = (long)blockIdx.x * rows_per_block * rb;
        const long end = min((long)min(blockIdx.x * rows_per_block + rows_per_block, M) * rb, prefetch);
        if (first < end && rb % 16 == 0) prefetch_l2(w + first, (unsigned int)(end - first));
    }
    // With PRE > 0 and `prewait` gemv1_dot waits after its first loads; else here, first
    // (SLUICE_GEMV_PREWAIT=0, for comparisons).
    if (PRE == 0 || !prewait) pdl_entry();
    const int m0 = (blockIdx.x * (8 / wpr) + warp / wpr) * RPW;
    const int slice = warp % wpr;
    P rows[RPW];
#pragma unroll
    for (int r = 0; r < RPW; r++) rows[r].init(w, min(m0 + r, M - 1), M, K);
    float acc[RPW];
    float ss = 0.0f;
    gemv1_dot<P, RPW, NORM, UNROLL, PRE>(rows, x, gamma, m0 < M ? K / P::N : 0, lane + 32 * slice, 32 * wpr, acc,
                                         ss, PRE > 0 && prewait);
    trace_mark(0);
    gemv_rows_store<RPW, NORM>(acc, ss, out, M, K, m0, wpr, eps, P::out_scale(w, M, K), accumulate);
    trace_mark(1);
}

// gemv1_rows_*(x, w, out, M, K, wpr, gamma, eps, accumulate, prefetch, prewait) and, with the norm
// folded in, gemv1_rows_*_norm (same arguments, gamma non-null); weight bytes below offset
// `prefetch` are prefetched into L2 before pdl_entry() (0 without PDL, where the prefetch
// would only duplicate the loads that follow it; cuda/ops.rs `launch_gemv1`). Two kernels,
// not one with a branch on gamma: a kernel is allocated the registers of its larger
// branch. One shared kernel measured 4% slower for plain FP8 than session 5's own FP8
// GEMV on an H100 (275.6 -> 264.7 tokens/s, 8B), and neither the prefetch nor the fusion
// explained it; split, FP8 batch 1 is level again (277.4 against 276.7 tokens/s, 8B, and
// 1,205 against 1,144 for 1B: docs/BENCHMARKS.md, session 7).
//
// bf16 keeps four loads per row in flight (U = 4: 16 per lane), the other formats two.
// On an H200 (session 16, `bench model` tg128, bf16, together with four in the GLU and
// RoPE pair GEMVs and no L2 prefetch) that took the 8B shape from 236.4 to 243.1
// tokens/s and the 1B shape from 1,174 to 1,216; with four, the prefetch only competed with the
// loads (cuda/mod.rs GEMV_PREFETCH_BYTES). `gemv1_rows_bf16_u2` is the earlier kernel
// (`SLUICE_GEMV_UNROLL=2`, for comparisons on other cards).
#define GEMV_RPW 4
#define GEMV1_ROWS(NAME, P, U, PRE) \
extern "C" __global__ void __launch_bounds__(256) NAME(const float* x, const unsigned char* w, float* out, int M, \
                                                       int K, int wpr, const float* gamma, float eps, \
                                                       int accumulate, long prefetch, int prewait) { \
    gemv1_rows_body<P, GEMV_RPW, false, U, PRE>(x, w, out, M, K, wpr, gamma, eps, accumulate, prefetch, prewait); \
} \
extern "C" __global__ void __launch_bounds__(256) NAME##_norm(const float* x, const unsigned char* w, float* out, \
                                                              int M, int K, int wpr, const float* gamma, \
                                                              float eps, int accumulate, long prefetch, \
                                                              int prewait) { \
    gemv1_rows_body<P, GEMV_RPW, true, U, PRE>(x, w, out, M, K, wpr, gamma, eps, accumulate, prefetch, prewait); \
}
GEMV1_ROWS(gemv1_rows_bf16, RowPlain<bf16_t>, 4, 1)
GEMV1_ROWS(gemv1_rows_bf16_u2, RowPlain<bf16_t>, 2, 0)
GEMV1_ROWS(gemv1_rows_f16, RowPlain<f16_t>, 2, 1)
GEMV1_ROWS(gemv1_rows_f32, RowPlain<float>, 2, 1)
GEMV1_ROWS(gemv1_rows_q8_0, RowQ8_0, 2, 0)

// The batch-1 bf16 GEMV that follows a kernel leaving the memory idle (the decode
// attention): before pdl_entry() each lane copies the first NS of its chunks of each of
// its RPW rows with cp.async straight into dynamic shared memory (NS x 16 KB per block),
// then waits, streams the rest of its rows as gemv1_rows_bf16 does, and adds the staged
// chunks last. Why: the output projection is launched under PDL as soon as the
// attention's blocks have waited for the Q/K/V GEMV, and the attention then runs for
// several microseconds (docs/BENCHMARKS.md, sessions 18 and 21). The register-held first
// loads of gemv1_dot (PRE = 1) fill a sixteenth of that; NS = 2 (the default,
// cuda/ops.rs `launch_gemv1`) stages half of the 8B shape's O weight and all of the 1B
// shape's (512 blocks of 32 KB, beside the attention's blocks) without a register more.
// NS = 4 measured slower: 512 blocks of 64 KB do not all fit, and the next kernel's
// launch waits for those that start late. Each lane reads back only what it copied, so
// no barrier: cp.async.wait_all suffices.
template <int RPW, int NS>
__device__ __forceinline__ void gemv1_staged_body(const float* __restrict__ x, const unsigned char* __restrict__ w,
                                                  float* __restrict__ out, int M, int K, int wpr, int accumulate) {
    extern __shared__ uint4 gemv_stage[];
    typedef RowPlain<bf16_t> P;
    const int N = P::N;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int m0 = (blockIdx.x * (8 / wpr) + warp / wpr) * RPW;
    const int slice = warp % wpr;
    P rows[RPW];
#pragma unroll
    for (int r = 0; r < RPW; r++) rows[r].init(w, min(m0 + r, M - 1), M, K);
    const int chunks = m0 < M ? K / N : 0;
    const int c0 = lane + 32 * slice, step = 32 * wpr;
#pragma unroll
    for (int i = 0; i < NS; i++) {
        const int c = c0 + step * i;
        if (c < chunks)
#pragma unroll
            for (int r = 0; r < RPW; r++)
                fp_cp_async16(fp_smem_addr(&gemv_stage[(i * RPW + r) * 256 + threadIdx.x]), rows[r].p + c, 16);
    }
    fp_cp_async_commit();
    pdl_entry();
    float acc[RPW];
    float ss = 0.0f;
    gemv1_dot<P, RPW, false, 4, 0>(rows, x, nullptr, chunks, c0 + NS * step, step, acc, ss, false);
    trace_mark(0);
    asm volatile("cp.async.wait_all;" ::: "memory");
#pragma unroll
    for (int i = 0; i < NS; i++) {
        const int c = c0 + step * i;
        if (c < chunks) {
            float xs[N];
            load_x(x + c * N, N, xs);
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                float f[N];
                P::unpack_to(gemv_stage[(i * RPW + r) * 256 + threadIdx.x], f);
                acc[r] += dot_r<N>(f, xs);
            }
        }
    }
    trace_mark(2);
    gemv_rows_store<RPW, false>(acc, ss, out, M, K, m0, wpr, 0.0f, 1.0f, accumulate);
    trace_mark(1);
}

// gemv1_staged_bf16_s{NS}(x, w, out, M, K, wpr, accumulate), NS x 16 KB of dynamic shared
// memory (cuda/ops.rs `launch_gemv1`, `SLUICE_GEMV_STAGE`).
#define GEMV1_STAGED(NS) \
extern "C" __global__ void __launch_bounds__(256) gemv1_staged_bf16_s##NS(const float* x, const unsigned char* w, \
                                                                          float* out, int M, int K, int wpr, \
                                                                          int accumulate) { \
    gemv1_staged_body<GEMV_RPW, NS>(x, w, out, M, K, wpr, accumulate); \
}
GEMV1_STAGED(1)
GEMV1_STAGED(2)
GEMV1_STAGED(4)
