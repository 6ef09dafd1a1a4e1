// FP8 (OCP E4M3) weights: `--dtype fp8` (cuda/fp8.rs). A weight [M, K] is M * K code bytes,
// row-major, followed at byte M * K (16-byte aligned: K is a multiple of 16) by its f32
// per-tensor scale s: w[m, k] = e4m3(code[m, k]) * s.
//
// - Decode (1-4 activation rows): GEMVs with the structure of gemv.cu's Q8_0 kernels,
//   16 weights per 16-byte load, f32 accumulation, the scale applied once per output.
// - More rows: cuBLASLt's FP8 GEMM on sm_89+ with the activations quantized here
//   (fp8_amax_kernel, then fp8_quantize_kernel; the scale never leaves the device), or
//   elsewhere fp8_dequant_bf16_kernel and the bf16 GEMM.
//
// Helpers are fp8_-prefixed; the batch-1 GEMV reuses gemv.cu's skeleton with a row
// policy (RowFp8), the multi-row GEMVs keep their own loops.

// Two E4M3 codes, in bits 8..15 and 24..31 of v (the other bits zero), as two f32 equal
// to their values / 2^8. Each code's 7 magnitude bits (eeee mmm) move to bits 7..13 of an
// f16 and its sign to bit 15: the f16 exponent field is then 0eeee (bias 15 against
// E4M3's 7) and its mantissa mmm0000000, so the f16 is exactly the E4M3 value times 2^-8,
// subnormals included (E4M3 subnormal m * 2^-9 becomes the f16 subnormal m * 2^-17).
// The 2^8 is folded into the scale. Code 0x7F (E4M3's NaN) decodes to 480: the host
// quantizer never writes it for finite weights.
__device__ __forceinline__ void fp8_pair(unsigned int v, float& lo, float& hi) {
    const unsigned int h = (v & 0x80008000u) | ((v >> 1) & 0x3F803F80u);
    asm("{.reg .b16 l, u;\n\t"
        "mov.b32 {l, u}, %2;\n\t"
        "cvt.f32.f16 %0, l;\n\t"
        "cvt.f32.f16 %1, u;}"
        : "=f"(lo), "=f"(hi)
        : "r"(h));
}

// Sixteen E4M3 codes (one 16-byte load, element i in byte i) to f32 / 2^8: two byte
// permutes per 4 codes place codes 0, 1 (then 2, 3) in bytes 1 and 3 of a word.
__device__ __forceinline__ void fp8_unpack16(const uint4& r, float* f) {
    const unsigned int u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        fp8_pair(__byte_perm(u[i], 0u, 0x1404), f[4 * i], f[4 * i + 1]);
        fp8_pair(__byte_perm(u[i], 0u, 0x3424), f[4 * i + 2], f[4 * i + 3]);
    }
}

// The tensor scale times 2^8 (see fp8_pair), read from behind the codes.
__device__ __forceinline__ float fp8_out_scale(const unsigned char* w, int M, int K) {
    return __ldg(reinterpret_cast<const float*>(w + (long)M * K)) * 256.0f;
}

// f[0..16) . x[0..16) with x read as float4 as it is used (fewer live registers than
// loading all sixteen first: the T = 2..4 kernels hold T accumulators and four loads).
__device__ __forceinline__ float fp8_dot16_x(const float* f, const float* x) {
    const float4* xv = reinterpret_cast<const float4*>(x);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float4 v = __ldg(xv + i);
        s += f[4 * i] * v.x + f[4 * i + 1] * v.y + f[4 * i + 2] * v.z + f[4 * i + 3] * v.w;
    }
    return s;
}

// Batch-1 GEMV: gemv.cu's skeleton (gemv1_rows_body: RPW rows per warp, the fused norm
// and residual, the L2 prefetch under PDL) with this row policy; the per-tensor scale
// is applied once per output.
struct RowFp8 {
    static const int N = 16;
    const uint4* p;
    __device__ __forceinline__ void init(const unsigned char* w, long m, int, int K) {
        p = reinterpret_cast<const uint4*>(w + m * K);
    }
    __device__ __forceinline__ uint4 load(int c) const { return ld_weight(p + c); }
    __device__ __forceinline__ float scale(int) const { return 1.0f; }
    __device__ __forceinline__ static void unpack_to(const uint4& q, float* f) { fp8_unpack16(q, f); }
    __device__ __forceinline__ static long row_bytes(int K) { return K; }
    __device__ __forceinline__ static float out_scale(const unsigned char* w, int M, int K) {
        return fp8_out_scale(w, M, K);
    }
};
GEMV1_ROWS(gemv1_rows_fp8, RowFp8, 2, 0)

// T = 2..4 rows: one output row per warp (`wpr` warps per row), each weight load used for
// all T rows of x, four loads in flight per lane (gemv.cu's gemv_q8_0_* structure).
template <int T>
__device__ __forceinline__ void gemv_fp8_body(const float* __restrict__ x, const unsigned char* __restrict__ w,
                                              float* __restrict__ out, int M, int K, int wpr) {
    __shared__ float part[8][T];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int m = blockIdx.x * (8 / wpr) + warp / wpr;
    const int slice = warp % wpr;
    const bool live = m < M;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (long)(live ? m : 0) * K);
    const int chunks = live ? K / 16 : 0;
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
            float f[16];
            fp8_unpack16(r[u], f);
            const long k0 = (long)(c + step * u) * 16;
#pragma unroll
            for (int t = 0; t < T; t++) acc[t] += fp8_dot16_x(f, x + (long)t * K + k0);
        }
    }
    for (; c < chunks; c += step) {
        float f[16];
        fp8_unpack16(ld_weight(wr + c), f);
        const long k0 = (long)c * 16;
#pragma unroll
        for (int t = 0; t < T; t++) acc[t] += fp8_dot16_x(f, x + (long)t * K + k0);
    }
    const float s = fp8_out_scale(w, M, K);
#pragma unroll
    for (int t = 0; t < T; t++) {
        const float sum = warp_sum(acc[t]);
        if (wpr == 1) {
            if (lane == 0 && live) out[(long)t * M + m] = sum * s;
        } else if (lane == 0) {
            part[warp][t] = sum;
        }
    }
    if (wpr > 1) {
        __syncthreads();
        if (slice == 0 && lane < T && live) {
            float sum = 0.0f;
            for (int i = 0; i < wpr; i++) sum += part[warp + i][lane];
            out[(long)lane * M + m] = sum * s;
        }
    }
}

#define GEMV_FP8(NAME, T) \
extern "C" __global__ void __launch_bounds__(256) NAME(const float* x, const unsigned char* w, float* out, int M, \
                                                       int K, int wpr) { pdl_entry(); \
    gemv_fp8_body<T>(x, w, out, M, K, wpr); \
}
GEMV_FP8(gemv_fp8_2, 2) GEMV_FP8(gemv_fp8_3, 3) GEMV_FP8(gemv_fp8_4, 4)

// The per-tensor scale for a largest magnitude `amax`: amax / 448, or 1 when that is not
// a normal finite number (all zeros, or a non-finite input). Host twin: `tensor_scale`.
__device__ __forceinline__ float fp8_tensor_scale(float amax) {
    const float s = amax / 448.0f;
    return (s >= 1.17549435e-38f && s <= 3.40282347e+38f) ? s : 1.0f;
}

// amax = max |x| over n floats (n a multiple of 4), as the bits of a non-negative float
// (ordered like unsigned integers) merged with atomicMax: the slot must be zeroed first.
// NaN is ignored (fmaxf).
extern "C" __global__ void fp8_amax_kernel(const float* __restrict__ x, long n, unsigned int* amax) { pdl_entry();
    __shared__ float red[32];
    float m = 0.0f;
    const float4* xv = reinterpret_cast<const float4*>(x);
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n / 4; i += (long)gridDim.x * blockDim.x) {
        const float4 v = __ldg(xv + i);
        m = fmaxf(m, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
    }
    m = warp_max(m);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) red[warp] = m;
    __syncthreads();
    if (warp == 0) {
        const int nw = (blockDim.x + 31) >> 5;
        m = warp_max(lane < nw ? red[lane] : 0.0f);
        if (lane == 0) atomicMax(amax, __float_as_uint(m));
    }
}

// q = e4m3(x * (1 / s)) with s = fp8_tensor_scale(amax), 16 elements per thread (n a
// multiple of 16); the first thread also stores s for cuBLASLt's B scale pointer. The
// product is __fmul_rn so that it is never fused: the host reference rounds it the same.
extern "C" __global__ void fp8_quantize_kernel(const float* __restrict__ x, long n,
                                               const unsigned int* __restrict__ amax, float* scale,
                                               unsigned char* __restrict__ q) { pdl_entry();
    const float s = fp8_tensor_scale(__uint_as_float(*amax));
    const float inv = 1.0f / s;
    if (blockIdx.x == 0 && threadIdx.x == 0) *scale = s;
    const float4* xv = reinterpret_cast<const float4*>(x);
    uint4* qv = reinterpret_cast<uint4*>(q);
    for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < n / 16; c += (long)gridDim.x * blockDim.x) {
        unsigned int o[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float4 v = __ldg(xv + 4 * c + i);
            o[i] = fp8_from_f32(__fmul_rn(v.x, inv)) | (fp8_from_f32(__fmul_rn(v.y, inv)) << 8) |
                   (fp8_from_f32(__fmul_rn(v.z, inv)) << 16) | (fp8_from_f32(__fmul_rn(v.w, inv)) << 24);
        }
        qv[c] = make_uint4(o[0], o[1], o[2], o[3]);
    }
}

// FP8 weight -> bf16 [M, K] (code value times the scale, rounded once to bf16), for the
// bf16 cuBLASLt path where FP8 tensor cores are missing (before sm_89) or the shape does
// not suit them: 16 weights per thread.
extern "C" __global__ void fp8_dequant_bf16_kernel(const unsigned char* w, bf16_t* out, int M, int K) { pdl_entry();
    const long chunks = (long)M * K / 16;
    const uint4* qs = reinterpret_cast<const uint4*>(w);
    const float s = fp8_out_scale(w, M, K);
    for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (long)gridDim.x * blockDim.x) {
        float f[16];
        fp8_unpack16(ld_weight(qs + c), f);
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
