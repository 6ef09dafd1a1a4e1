// GGUF K-quant weights (Q4_K, Q6_K) on the GPU (cuda/kquant.rs): dequantizing GEMVs for
// 1-4 activation rows (x f32 [T, K], out f32 [T, M]) and dequantization to bf16 for the
// cuBLASLt path of larger matmuls. K is a multiple of 256 (one super-block).
//
// Both formats are repacked at upload (`kquant.rs`, `to_gpu_layout`) into planes that
// the warp reads with 16-byte coalesced loads; the bits are ggml's, only moved:
//
// Q4_K [M, K], nb = K / 256 blocks per row, 144 bytes per 256 weights as in GGUF:
//   qs  [M, K / 32] x 16 bytes: chunk c of a row is sub-block c (32 weights, one scale
//       and min): element 32c + i in the low nibble of byte i, 32c + 16 + i in the high
//       nibble (i < 16). GGUF interleaves two sub-blocks per 32 bytes instead; one
//       sub-block per 16-byte load halves the scale decoding per load.
//   hdr [M, nb] x 16 bytes at byte M * K / 2: GGUF's block head as it is (f16 d, f16
//       dmin, the 12 bytes of packed 6-bit scales and mins).
//   w = d * sc * q - dmin * m.
// Q6_K [M, K], 210 bytes per 256 weights as in GGUF (whose 210-byte blocks are not
// 16-byte aligned):
//   q   [M][3][K / 64] x 16 bytes: unit u of a row is elements 64u .. 64u + 64, in three
//       16-byte pieces A, B, H, each a plane of the row (A at 16u, B at K / 4 + 16u, H
//       at K / 2 + 16u, so a warp's 32 lanes read 512 contiguous bytes per load). Low
//       4 bits of element 64u + 16g + i (g < 4, i < 16): A byte i low nibble (g = 0),
//       A high (g = 1), B low (g = 2), B high (g = 3); its high 2 bits: H byte i, bits
//       2g .. 2g + 2.
//   sc  [M, K / 16] int8 at byte M * nb * 192: the scale of elements 16s .. 16s + 16
//       (GGUF's scales, in order; a unit's four are one aligned 32-bit word).
//   d   [M, nb] f16 at byte M * nb * 208.
//   w = d * sc * (q - 32).
//
// The GEMVs turn quants into floats without integer-to-float conversions (a quarter-rate
// pipe; see unpack_i8 in gemv.cu) and without a subtraction per weight: a byte holding
// q << 3 (4-bit q) or q << 1 (6-bit q) goes by one byte permute into bits 16..23 of a
// float whose top byte is 0x3F, giving f = 0.5 + q / 32 (Q4_K) or 0.5 + q / 128 (Q6_K)
// exactly. With S = sum x_i f_i and X = sum x_i over a group sharing one scale:
//   Q4_K: sum x_i (d1 q_i - m1) = 32 d1 S - (16 d1 + m1) X   (d1 = d sc, m1 = dmin m)
//   Q6_K: sum x_i d1 (q_i - 32) = 128 d1 (S - 0.75 X)        (d1 = d sc)
// X is computed once per group for all the rows a warp handles. The offset in f makes the
// f32 sums 3-10 times less precise than an exact f32 dot (~1e-6 relative to the largest
// output, replayed on the host in tests/cuda_kquant.rs; the tests hold the GEMVs to 1e-5
// against an f64 product with the dequantized weights), for one operation per weight
// less than subtracting 2^23 from each (the kernels are near the issue limit at 4.5 bits
// per weight).
//
// Each warp computes RPW output rows (4) so each chunk of x is read once for all of them
// (x is read from L1 for every weight element, which bounded the Q8_0 GEMV before it did
// four rows per warp); `wpr` warps share a row group as in gemv.cu. Rows past M are
// clamped to the last row and their results dropped. Helpers are kq_-prefixed.

#define KQ_RPW 4

// 0x3F000000 where the compiler cannot fold it (a __constant__ the host could rewrite): the
// byte permutes below then take their selector as the immediate operand. With the
// constant as the immediate instead, each permute needs its selector in a register, and
// where registers are short that was a MOV per permute (T = 2-4).
__constant__ unsigned int kq_exp_bits = 0x3F000000u;
__device__ __forceinline__ unsigned int kq_exp() { return kq_exp_bits; }

// Byte k of v as the float e | (byte << 16), e = kq_exp() (see above).
__device__ __forceinline__ float kq_float(unsigned int v, int k, unsigned int e) {
    return __uint_as_float(__byte_perm(v, e, 0x7044 | (k << 8)));
}

__device__ __forceinline__ unsigned int kq_word(const uint4& v, int k) {
    return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

__device__ __forceinline__ float4 kq_ldx(const float* p) {
    return __ldg(reinterpret_cast<const float4*>(p));
}

// Scale and min of sub-block j (0..8) of a Q4_K block head h as floats (ggml
// get_scale_min_k4): bytes 0..4 of the 12 hold the first four 6-bit scales, bytes 4..8
// the first four mins; the last four keep their low 4 bits in bytes 8..12 (scale in the
// low nibble, min in the high) and their top 2 bits in the spare top bits of bytes 0..8.
// Without branches: j is fixed per lane in the GEMVs, but the lanes of a warp differ.
__device__ __forceinline__ void kq4_scale_min(const uint4& h, int j, float& sc, float& mn) {
    const bool hi = j >= 4;
    const int s8 = (j & 3) * 8;
    const unsigned int low = hi ? 0x0Fu : 0x3Fu;  // bits taken from the low-bits byte
    const unsigned int a = (hi ? h.w : h.y) >> s8, b = (hi ? h.w >> 4 : h.z) >> s8;
    // top 2 bits (bits 6, 7 of byte j & 3 of y or z) to bits 4, 5; cleared when j < 4
    const unsigned int s = (a & low) | ((h.y >> (s8 + 2)) & ~low);
    const unsigned int m = (b & low) | ((h.z >> (s8 + 2)) & ~low);
    sc = __uint_as_float(0x4B000000u | (s & 63u)) - 8388608.0f;
    mn = __uint_as_float(0x4B000000u | (m & 63u)) - 8388608.0f;
}

// Reduces acc[r][t] over the warp (and over the `wpr` warps sharing the rows) into
// out[t, m0 + r].
template <int T, int RPW>
__device__ __forceinline__ void kq_store(float (&acc)[RPW][T], float* __restrict__ out, int M, int m0, int wpr) {
    __shared__ float part[8][RPW * T];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, slice = warp % wpr;
#pragma unroll
    for (int r = 0; r < RPW; r++) {
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float s = warp_sum(acc[r][t]);
            if (wpr == 1) {
                if (lane == 0 && m0 + r < M) out[(long)t * M + m0 + r] = s;
            } else if (lane == 0) {
                part[warp][r * T + t] = s;
            }
        }
    }
    if (wpr > 1) {
        __syncthreads();
        const int r = lane / T, t = lane % T;
        if (slice == 0 && lane < RPW * T && m0 + r < M) {
            float s = 0.0f;
            for (int i = 0; i < wpr; i++) s += part[warp + i][lane];
            out[(long)t * M + m0 + r] = s;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Q4_K

// One chunk (sub-block c of the row: weights 32c .. 32c + 32) of RPW rows: q[r] the
// quants, h[r] the block heads; j = c % 8 is the lane's sub-block within the block, e
// is kq_exp().
template <int T, int RPW>
__device__ __forceinline__ void kq4_chunk(const float* __restrict__ x, int K, int c, int j, const uint4 (&q)[RPW],
                                          const uint4 (&h)[RPW], float (&acc)[RPW][T], unsigned int e) {
    float S[RPW][T], X[T];
#pragma unroll
    for (int t = 0; t < T; t++) {
        X[t] = 0.0f;
#pragma unroll
        for (int r = 0; r < RPW; r++) S[r][t] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
        // elements 4k .. 4k + 4 (low nibbles) and 16 + 4k .. (high nibbles) of the chunk
        float xl[T][4], xh[T][4];
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float* xt = x + (long)t * K + 32 * c + 4 * k;
            const float4 a = kq_ldx(xt), b = kq_ldx(xt + 16);
            xl[t][0] = a.x; xl[t][1] = a.y; xl[t][2] = a.z; xl[t][3] = a.w;
            xh[t][0] = b.x; xh[t][1] = b.y; xh[t][2] = b.z; xh[t][3] = b.w;
            X[t] += ((a.x + a.y) + (a.z + a.w)) + ((b.x + b.y) + (b.z + b.w));
        }
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            const unsigned int v = kq_word(q[r], k);
            const unsigned int lo = (v << 3) & 0x78787878u, hi = (v >> 1) & 0x78787878u;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                const float fl = kq_float(lo, b, e), fh = kq_float(hi, b, e);
#pragma unroll
                for (int t = 0; t < T; t++) {
                    S[r][t] += fl * xl[t][b];
                    S[r][t] += fh * xh[t][b];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        float sc, mn;
        kq4_scale_min(h[r], j, sc, mn);
        const float d = f16_to_f32((f16_t)(h[r].x & 0xffffu));
        const float dmin = f16_to_f32((f16_t)(h[r].x >> 16));
        const float d1 = d * sc;
        const float a = 32.0f * d1, bias = 16.0f * d1 + dmin * mn;
#pragma unroll
        for (int t = 0; t < T; t++) acc[r][t] += a * S[r][t] - bias * X[t];
    }
}

template <int T, int RPW, int UNROLL>
__device__ __forceinline__ void gemv_q4_k_body(const float* __restrict__ x, const unsigned char* __restrict__ w,
                                               float* __restrict__ out, int M, int K, int wpr) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int m0 = (blockIdx.x * (8 / wpr) + warp / wpr) * RPW;
    const int slice = warp % wpr;
    const uint4* qs[RPW];
    const uint4* hd[RPW];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const long m = min(m0 + r, M - 1);
        qs[r] = reinterpret_cast<const uint4*>(w + m * (K / 2));
        hd[r] = reinterpret_cast<const uint4*>(w + (long)M * (K / 2)) + m * (K / 256);
    }
    const int chunks = m0 < M ? K / 32 : 0;
    // The step between a lane's chunks is a multiple of 8, so its sub-block is fixed.
    const int j = lane & 7;
    const unsigned int e = kq_exp();
    float acc[RPW][T];
#pragma unroll
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    const int step = 32 * wpr;
    int c = lane + 32 * slice;
    for (; c + step * (UNROLL - 1) < chunks; c += step * UNROLL) {
        uint4 q[UNROLL][RPW], h[UNROLL][RPW];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                q[u][r] = ld_weight(qs[r] + c + step * u);
                h[u][r] = ld_weight(hd[r] + ((c + step * u) >> 3));
            }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) kq4_chunk<T, RPW>(x, K, c + step * u, j, q[u], h[u], acc, e);
    }
    for (; c < chunks; c += step) {
        uint4 q[RPW], h[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            q[r] = ld_weight(qs[r] + c);
            h[r] = ld_weight(hd[r] + (c >> 3));
        }
        kq4_chunk<T, RPW>(x, K, c, j, q, h, acc, e);
    }
    kq_store<T, RPW>(acc, out, M, m0, wpr);
}

#define GEMV_Q4_K(NAME, T, UNROLL) \
extern "C" __global__ void __launch_bounds__(256) NAME(const float* x, const unsigned char* w, float* out, int M, \
                                                       int K, int wpr) { pdl_entry(); \
    gemv_q4_k_body<T, KQ_RPW, UNROLL>(x, w, out, M, K, wpr); \
}
GEMV_Q4_K(gemv1_rows_q4_k, 1, 2)
GEMV_Q4_K(gemv_q4_k_2, 2, 1) GEMV_Q4_K(gemv_q4_k_3, 3, 1) GEMV_Q4_K(gemv_q4_k_4, 4, 1)

// Q4_K -> bf16 [M, K] with ggml's arithmetic (dequantize_row_q4_K: d1 = d * sc, m1 = dmin
// * m, w = d1 * q - m1, each rounded to f32; no FMA contraction), so the values are the
// host's bit for bit before the rounding to bf16. One thread per sub-block chunk.
extern "C" __global__ void dequant_q4_k_bf16_kernel(const unsigned char* w, bf16_t* out, int M, int K) { pdl_entry();
    const long chunks = (long)M * K / 32;
    const uint4* qs = reinterpret_cast<const uint4*>(w);
    const uint4* hd = reinterpret_cast<const uint4*>(w + (long)M * (K / 2));
    for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (long)gridDim.x * blockDim.x) {
        const uint4 q = ld_weight(qs + c), h = ld_weight(hd + (c >> 3));
        float sc, mn;
        kq4_scale_min(h, (int)(c & 7), sc, mn);
        const float d1 = __fmul_rn(f16_to_f32((f16_t)(h.x & 0xffffu)), sc);
        const float m1 = __fmul_rn(f16_to_f32((f16_t)(h.x >> 16)), mn);
        unsigned int o[16];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const unsigned int v = kq_word(q, k);
            const unsigned int lo = v & 0x0F0F0F0Fu, hi = (v >> 4) & 0x0F0F0F0Fu;
            float fl[4], fh[4];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                const float ql = __uint_as_float(__byte_perm(lo, 0x4B000000u, b | 0x7540)) - 8388608.0f;
                const float qh = __uint_as_float(__byte_perm(hi, 0x4B000000u, b | 0x7540)) - 8388608.0f;
                fl[b] = __fsub_rn(__fmul_rn(d1, ql), m1);
                fh[b] = __fsub_rn(__fmul_rn(d1, qh), m1);
            }
            // element 4k + b in o[2k], o[2k + 1]; element 16 + 4k + b in o[8 + 2k], ...
            o[2 * k] = (unsigned int)f32_to_bf16(fl[0]) | ((unsigned int)f32_to_bf16(fl[1]) << 16);
            o[2 * k + 1] = (unsigned int)f32_to_bf16(fl[2]) | ((unsigned int)f32_to_bf16(fl[3]) << 16);
            o[8 + 2 * k] = (unsigned int)f32_to_bf16(fh[0]) | ((unsigned int)f32_to_bf16(fh[1]) << 16);
            o[8 + 2 * k + 1] = (unsigned int)f32_to_bf16(fh[2]) | ((unsigned int)f32_to_bf16(fh[3]) << 16);
        }
        uint4* dst = reinterpret_cast<uint4*>(out) + 4 * c;
#pragma unroll
        for (int i = 0; i < 4; i++) dst[i] = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
    }
}

// ---------------------------------------------------------------------------------------
// Q6_K

// Word k (elements 4k .. 4k + 4) of group g (elements 16g .. 16g + 16) of a unit, each
// byte q << shift for shift 1 (the GEMV's floats) or q in bits 0..5 (shift 0).
template <int SHIFT>
__device__ __forceinline__ unsigned int kq6_bytes(unsigned int a, unsigned int b, unsigned int h, int g) {
    // 4 low bits from A (g 0, 1) or B (g 2, 3), low or high nibble; 2 high bits from H.
    const unsigned int n = g < 2 ? a : b;
    const unsigned int lo = (g & 1) ? (n >> (4 - SHIFT)) : (n << SHIFT);
    const int hs = 2 * g - 4 - SHIFT;  // H bits 2g .. 2g + 2 to byte bits 4 + SHIFT ..
    const unsigned int hb = hs >= 0 ? (h >> hs) : (h << -hs);
    return (lo & (0x0F0F0F0Fu << SHIFT)) | (hb & (0x30303030u << SHIFT));
}

// One unit (weights 64u .. 64u + 64 of the row) of RPW rows: pieces a, b, hq of the
// quants, s the four int8 scales (one word), d the block's scale times 128, ex kq_exp().
template <int T, int RPW>
__device__ __forceinline__ void kq6_unit(const float* __restrict__ x, int K, int u, const uint4 (&a)[RPW],
                                         const uint4 (&b)[RPW], const uint4 (&hq)[RPW], const unsigned int (&s)[RPW],
                                         const float (&d)[RPW], float (&acc)[RPW][T], unsigned int ex) {
#pragma unroll
    for (int g = 0; g < 4; g++) {
        float S[RPW][T], X[T];
#pragma unroll
        for (int t = 0; t < T; t++) {
            X[t] = 0.0f;
#pragma unroll
            for (int r = 0; r < RPW; r++) S[r][t] = 0.0f;
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float xv[T][4];
#pragma unroll
            for (int t = 0; t < T; t++) {
                const float4 v = kq_ldx(x + (long)t * K + 64 * u + 16 * g + 4 * k);
                xv[t][0] = v.x; xv[t][1] = v.y; xv[t][2] = v.z; xv[t][3] = v.w;
                X[t] += (v.x + v.y) + (v.z + v.w);
            }
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                const unsigned int v = kq6_bytes<1>(kq_word(a[r], k), kq_word(b[r], k), kq_word(hq[r], k), g);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float f = kq_float(v, e, ex);
#pragma unroll
                    for (int t = 0; t < T; t++) S[r][t] += f * xv[t][e];
                }
            }
        }
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            // int8 scale g: offset by 128 to an unsigned byte in a float's mantissa
            const float sc = __uint_as_float(__byte_perm(s[r] ^ 0x80808080u, 0x4B000000u, g | 0x7540)) - 8388736.0f;
            const float d1 = d[r] * sc;
#pragma unroll
            for (int t = 0; t < T; t++) acc[r][t] += d1 * (S[r][t] - 0.75f * X[t]);
        }
    }
}

template <int T, int RPW>
__device__ __forceinline__ void gemv_q6_k_body(const float* __restrict__ x, const unsigned char* __restrict__ w,
                                               float* __restrict__ out, int M, int K, int wpr) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int m0 = (blockIdx.x * (8 / wpr) + warp / wpr) * RPW;
    const int slice = warp % wpr;
    const long nb = K / 256;
    const uint4* qr[RPW];
    const unsigned int* sr[RPW];
    const f16_t* dr[RPW];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const long m = min(m0 + r, M - 1);
        qr[r] = reinterpret_cast<const uint4*>(w + m * (K / 4 * 3));
        sr[r] = reinterpret_cast<const unsigned int*>(w + (long)M * nb * 192 + m * (K / 16));
        dr[r] = reinterpret_cast<const f16_t*>(w + (long)M * nb * 208) + m * nb;
    }
    const int units = m0 < M ? K / 64 : 0;
    const int plane = K / 64;  // uint4s per piece plane of a row
    const unsigned int ex = kq_exp();
    float acc[RPW][T];
#pragma unroll
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    const int step = 32 * wpr;
    for (int u = lane + 32 * slice; u < units; u += step) {
        uint4 a[RPW], b[RPW], hq[RPW];
        unsigned int s[RPW];
        float d[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            a[r] = ld_weight(qr[r] + u);
            b[r] = ld_weight(qr[r] + plane + u);
            hq[r] = ld_weight(qr[r] + 2 * plane + u);
            s[r] = __ldg(sr[r] + u);
            d[r] = 128.0f * f16_to_f32(dr[r][u >> 2]);
        }
        kq6_unit<T, RPW>(x, K, u, a, b, hq, s, d, acc, ex);
    }
    kq_store<T, RPW>(acc, out, M, m0, wpr);
}

#define GEMV_Q6_K(NAME, T) \
extern "C" __global__ void __launch_bounds__(256) NAME(const float* x, const unsigned char* w, float* out, int M, \
                                                       int K, int wpr) { pdl_entry(); \
    gemv_q6_k_body<T, KQ_RPW>(x, w, out, M, K, wpr); \
}
GEMV_Q6_K(gemv1_rows_q6_k, 1) GEMV_Q6_K(gemv_q6_k_2, 2) GEMV_Q6_K(gemv_q6_k_3, 3) GEMV_Q6_K(gemv_q6_k_4, 4)

// Q6_K -> bf16 [M, K] with ggml's arithmetic (dequantize_row_q6_K: w = d * sc * (q - 32),
// multiplied left to right, each product rounded to f32), bit for bit the host's values
// before the rounding to bf16. One thread per unit of 64 weights.
extern "C" __global__ void dequant_q6_k_bf16_kernel(const unsigned char* w, bf16_t* out, int M, int K) { pdl_entry();
    const long units = (long)M * K / 64;
    const long plane = K / 64;
    const long nb = K / 256;
    const signed char* scales = reinterpret_cast<const signed char*>(w + (long)M * nb * 192);
    const f16_t* ds = reinterpret_cast<const f16_t*>(w + (long)M * nb * 208);
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < units; i += (long)gridDim.x * blockDim.x) {
        const long m = i / plane, u = i % plane;
        const uint4* row = reinterpret_cast<const uint4*>(w + m * (K / 4 * 3));
        const uint4 a = ld_weight(row + u), b = ld_weight(row + plane + u), h = ld_weight(row + 2 * plane + u);
        const float d = f16_to_f32(ds[i >> 2]);
        uint4* dst = reinterpret_cast<uint4*>(out) + 8 * i;
#pragma unroll
        for (int g = 0; g < 4; g++) {
            const float d1 = __fmul_rn(d, (float)scales[4 * i + g]);
            unsigned int o[8];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const unsigned int v = kq6_bytes<0>(kq_word(a, k), kq_word(b, k), kq_word(h, k), g);
                float f[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    // q - 32 exactly: q in a float's mantissa, less 2^23 + 32
                    const float q = __uint_as_float(__byte_perm(v, 0x4B000000u, e | 0x7540)) - 8388640.0f;
                    f[e] = __fmul_rn(d1, q);
                }
                o[2 * k] = (unsigned int)f32_to_bf16(f[0]) | ((unsigned int)f32_to_bf16(f[1]) << 16);
                o[2 * k + 1] = (unsigned int)f32_to_bf16(f[2]) | ((unsigned int)f32_to_bf16(f[3]) << 16);
            }
            dst[2 * g] = make_uint4(o[0], o[1], o[2], o[3]);
            dst[2 * g + 1] = make_uint4(o[4], o[5], o[6], o[7]);
        }
    }
}
