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

template <typename W, int T>
__device__ __forceinline__ void gemv_body(const float* __restrict__ x, const W* __restrict__ w,
                                          float* __restrict__ out, int M, int K) {
    const int NV = Vec<W>::N;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int m = blockIdx.x * (blockDim.x >> 5) + warp;
    if (m >= M) return;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (long)m * K);
    int chunks = K / NV;
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    const int UNROLL = 4;
    int c = lane;
    for (; c + 32 * (UNROLL - 1) < chunks; c += 32 * UNROLL) {
        uint4 r[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) r[u] = __ldg(wr + c + 32 * u);
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            float f[NV];
            unpack(r[u], w, f);
            int k0 = (c + 32 * u) * NV;
#pragma unroll
            for (int t = 0; t < T; t++) {
                const float* xr = x + (long)t * K + k0;
#pragma unroll
                for (int e = 0; e < NV; e++) acc[t] += f[e] * __ldg(xr + e);
            }
        }
    }
    for (; c < chunks; c += 32) {
        uint4 r = __ldg(wr + c);
        float f[NV];
        unpack(r, w, f);
        int k0 = c * NV;
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float* xr = x + (long)t * K + k0;
#pragma unroll
            for (int e = 0; e < NV; e++) acc[t] += f[e] * __ldg(xr + e);
        }
    }
#pragma unroll
    for (int t = 0; t < T; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0) out[(long)t * M + m] = s;
    }
}

#define GEMV(NAME, W, T) \
extern "C" __global__ void __launch_bounds__(256) NAME(const float* x, const W* w, float* out, int M, int K) { \
    gemv_body<W, T>(x, w, out, M, K); \
}
GEMV(gemv_bf16_1, bf16_t, 1) GEMV(gemv_bf16_2, bf16_t, 2) GEMV(gemv_bf16_3, bf16_t, 3) GEMV(gemv_bf16_4, bf16_t, 4)
GEMV(gemv_f16_1, f16_t, 1) GEMV(gemv_f16_2, f16_t, 2) GEMV(gemv_f16_3, f16_t, 3) GEMV(gemv_f16_4, f16_t, 4)
GEMV(gemv_f32_1, float, 1) GEMV(gemv_f32_2, float, 2) GEMV(gemv_f32_3, float, 3) GEMV(gemv_f32_4, float, 4)
