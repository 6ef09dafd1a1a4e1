// GGUF Q4_0 and Q4_1 weights on the GPU (cuda/legacy_quant.rs): dequantizing GEMVs for
// 1-4 activation rows (x f32 [T, K], out f32 [T, M]) and dequantization to bf16 for the
// cuBLASLt path of larger matmuls. K is a multiple of 32 (one block). This file follows
// kquant.cu in the kernel source and uses its kq_ helpers (kq_float, kq_word, kq_ldx,
// kq_exp, kq_store) and KQ_RPW.
//
// Both formats are repacked at upload (`legacy_quant.rs`, `to_gpu_layout`): GGUF's 18- and
// 20-byte blocks are not 16-byte aligned, so the quants and the block heads go to planes
// of their own; the bytes are GGUF's, only moved (the same size as the file's):
//
// Q4_0 [M, K], nb = K / 32 blocks per row, 18 bytes per 32 weights:
//   qs  [M, nb] x 16 bytes at byte 0: block b of row m at byte 16 (m nb + b), GGUF's qs
//       as they are: element 32b + i in the low nibble of byte i, 32b + 16 + i in the
//       high nibble (i < 16). Row m starts at byte m K / 2, a multiple of 16.
//   d   [M, nb] f16 at byte M K / 2 (a multiple of 16): block (m, b) at M K / 2 +
//       2 (m nb + b).
//   w = d * (q - 8).
// Q4_1 [M, K], 20 bytes per 32 weights:
//   qs  [M, nb] x 16 bytes at byte 0, as for Q4_0.
//   dm  [M, nb] x 4 bytes at byte M K / 2: GGUF's block head as it is, f16 d then f16 m
//       (one aligned 32-bit word per block: block (m, b) at M K / 2 + 4 (m nb + b)).
//   w = d * q + m.
// A chunk is one block (32 weights, one 16-byte load of quants and one 2- or 4-byte load
// of its head); chunk c of the whole matrix is block c = m nb + b of both planes.
//
// The GEMVs turn quants into floats as kquant.cu's Q4_K GEMV does: a byte holding q << 3
// goes by one byte permute into bits 16..23 of a float whose top byte is 0x3F, giving f =
// 0.5 + q / 32 exactly (no integer-to-float conversion, no subtraction per weight). With
// S = sum x_i f_i and X = sum x_i over a block (q = 32 f - 16):
//   Q4_0: sum x_i d (q_i - 8) = 32 d (S - 0.75 X)
//   Q4_1: sum x_i (d q_i + m) = 32 d S + (m - 16 d) X
// X is computed once per block for all the rows a warp handles. As for the K-quants the
// offset in f costs some f32 precision (the tests hold the GEMVs to 1e-5 of the largest
// output against an f64 product with the dequantized weights; the host replay in
// tests/cuda_legacy_quant.rs checks the bit tricks).
//
// Each warp computes LQ_RPW1 output rows (8) at batch 1 and KQ_RPW (4) at 2-4 rows, so
// each chunk of x is read once for all of them; `wpr` warps share a row group as in
// gemv.cu. Rows past M are clamped to the last
// row and their results dropped. Helpers are lq_-prefixed.

// S[r][t] = sum x_i f_i and X[t] = sum x_i over chunk (block) c of a row: q[r] the
// quants of RPW rows, e kq_exp(). The same sums as kq4_chunk's (the nibble order of a
// Q4_0/Q4_1 block is that of a Q4_K sub-block in the GPU layout).
template <int T, int RPW>
__device__ __forceinline__ void lq_sums(const float* __restrict__ x, int K, int c, const uint4 (&q)[RPW],
                                        float (&S)[RPW][T], float (&X)[T], unsigned int e) {
#pragma unroll
    for (int t = 0; t < T; t++) {
        X[t] = 0.0f;
#pragma unroll
        for (int r = 0; r < RPW; r++) S[r][t] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
        // elements 4k .. 4k + 4 (low nibbles) and 16 + 4k .. (high nibbles) of the block
        float xl[T][4], xh[T][4];
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float* xt = x + (long)t * K + 32 * (long)c + 4 * k;
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
}

// One chunk of RPW rows into acc: h[r] the block head (Q4_0: the f16 d in the low half;
// Q4_1: d in the low half, m in the high half).
template <int T, int RPW, bool Q41>
__device__ __forceinline__ void lq_chunk(const float* __restrict__ x, int K, int c, const uint4 (&q)[RPW],
                                         const unsigned int (&h)[RPW], float (&acc)[RPW][T], unsigned int e) {
    float S[RPW][T], X[T];
    lq_sums<T, RPW>(x, K, c, q, S, X, e);
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const float d = f16_to_f32((f16_t)(h[r] & 0xffffu));
        if (Q41) {
            const float a = 32.0f * d, bias = f16_to_f32((f16_t)(h[r] >> 16)) - 16.0f * d;
#pragma unroll
            for (int t = 0; t < T; t++) acc[r][t] += a * S[r][t] + bias * X[t];
        } else {
            const float a = 32.0f * d;
#pragma unroll
            for (int t = 0; t < T; t++) acc[r][t] += a * (S[r][t] - 0.75f * X[t]);
        }
    }
}

// The block head of chunk c of a row whose heads start at `hd` (Q4_0: 2 bytes, zero
// extended; Q4_1: 4 bytes).
template <bool Q41>
__device__ __forceinline__ unsigned int lq_head(const unsigned char* hd, long c) {
    if (Q41) return __ldg(reinterpret_cast<const unsigned int*>(hd) + c);
    return (unsigned int)__ldg(reinterpret_cast<const unsigned short*>(hd) + c);
}

template <int T, int RPW, int UNROLL, bool Q41>
__device__ __forceinline__ void gemv_q4_legacy_body(const float* __restrict__ x, const unsigned char* __restrict__ w,
                                                    float* __restrict__ out, int M, int K, int wpr) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int m0 = (blockIdx.x * (8 / wpr) + warp / wpr) * RPW;
    const int slice = warp % wpr;
    const long nb = K / 32;
    const long head = Q41 ? 4 : 2;
    const uint4* qs[RPW];
    const unsigned char* hd[RPW];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const long m = min(m0 + r, M - 1);
        qs[r] = reinterpret_cast<const uint4*>(w + m * (K / 2));
        hd[r] = w + (long)M * (K / 2) + m * nb * head;
    }
    const int chunks = m0 < M ? (int)nb : 0;
    const unsigned int e = kq_exp();
    float acc[RPW][T];
#pragma unroll
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    const int step = 32 * wpr;
    int c = lane + 32 * slice;
    for (; c + step * (UNROLL - 1) < chunks; c += step * UNROLL) {
        uint4 q[UNROLL][RPW];
        unsigned int h[UNROLL][RPW];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                q[u][r] = ld_weight(qs[r] + c + step * u);
                h[u][r] = lq_head<Q41>(hd[r], c + step * u);
            }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) lq_chunk<T, RPW, Q41>(x, K, c + step * u, q[u], h[u], acc, e);
    }
    for (; c < chunks; c += step) {
        uint4 q[RPW];
        unsigned int h[RPW];
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            q[r] = ld_weight(qs[r] + c);
            h[r] = lq_head<Q41>(hd[r], c);
        }
        lq_chunk<T, RPW, Q41>(x, K, c, q, h, acc, e);
    }
    kq_store<T, RPW>(acc, out, M, m0, wpr);
}

// Batch 1 takes LQ_RPW1 rows per warp, one block per row in flight per lane. Measured on
// an H200 (8B shape, Q4_0, batch-1 decode, tokens/s; rows per warp x blocks in flight
// per row): 4 x 2 273.7, 4 x 4 300.0, 8 x 1 331.0, 8 x 2 315.2, 2 x 4 206.9. Eight rows
// read each chunk of x once for twice the rows, and a warp's eight 16-byte loads are
// issued back to back; more loads per lane cost occupancy. 2-4 rows keep KQ_RPW (4) and
// one block per row (untuned).
#define LQ_RPW1 8
#define GEMV_Q4_LEGACY(NAME, T, RPW, UNROLL, Q41) \
extern "C" __global__ void __launch_bounds__(256) NAME(const float* x, const unsigned char* w, float* out, int M, \
                                                       int K, int wpr) { pdl_entry(); \
    gemv_q4_legacy_body<T, RPW, UNROLL, Q41>(x, w, out, M, K, wpr); \
}
GEMV_Q4_LEGACY(gemv1_rows_q4_0, 1, LQ_RPW1, 1, false)
GEMV_Q4_LEGACY(gemv_q4_0_2, 2, KQ_RPW, 1, false) GEMV_Q4_LEGACY(gemv_q4_0_3, 3, KQ_RPW, 1, false)
GEMV_Q4_LEGACY(gemv_q4_0_4, 4, KQ_RPW, 1, false)
GEMV_Q4_LEGACY(gemv1_rows_q4_1, 1, LQ_RPW1, 1, true)
GEMV_Q4_LEGACY(gemv_q4_1_2, 2, KQ_RPW, 1, true) GEMV_Q4_LEGACY(gemv_q4_1_3, 3, KQ_RPW, 1, true)
GEMV_Q4_LEGACY(gemv_q4_1_4, 4, KQ_RPW, 1, true)

// Q4_0 / Q4_1 -> bf16 [M, K] with ggml's arithmetic (dequantize_row_q4_0: (q - 8) * d;
// dequantize_row_q4_1: q * d + m, rounded after the product and after the sum, no FMA
// contraction), so the values are the host's bit for bit before the rounding to bf16.
// One thread per block: 16 bytes of quants in, 64 bytes of bf16 out.
template <bool Q41>
__device__ __forceinline__ void dequant_q4_legacy_bf16(const unsigned char* w, bf16_t* out, int M, int K) {
    const long chunks = (long)M * K / 32;
    const uint4* qs = reinterpret_cast<const uint4*>(w);
    const unsigned char* hd = w + (long)M * (K / 2);
    // q - 8 (Q4_0) or q (Q4_1) exactly: q in a float's mantissa, less 2^23 (+ 8)
    const float off = Q41 ? 8388608.0f : 8388616.0f;
    for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (long)gridDim.x * blockDim.x) {
        const uint4 q = ld_weight(qs + c);
        const unsigned int h = lq_head<Q41>(hd, c);
        const float d = f16_to_f32((f16_t)(h & 0xffffu));
        const float m = Q41 ? f16_to_f32((f16_t)(h >> 16)) : 0.0f;
        unsigned int o[16];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const unsigned int v = kq_word(q, k);
            const unsigned int lo = v & 0x0F0F0F0Fu, hi = (v >> 4) & 0x0F0F0F0Fu;
            float fl[4], fh[4];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                const float ql = __uint_as_float(__byte_perm(lo, 0x4B000000u, b | 0x7540)) - off;
                const float qh = __uint_as_float(__byte_perm(hi, 0x4B000000u, b | 0x7540)) - off;
                fl[b] = Q41 ? __fadd_rn(__fmul_rn(ql, d), m) : __fmul_rn(ql, d);
                fh[b] = Q41 ? __fadd_rn(__fmul_rn(qh, d), m) : __fmul_rn(qh, d);
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

extern "C" __global__ void dequant_q4_0_bf16_kernel(const unsigned char* w, bf16_t* out, int M, int K) { pdl_entry();
    dequant_q4_legacy_bf16<false>(w, out, M, K);
}

extern "C" __global__ void dequant_q4_1_bf16_kernel(const unsigned char* w, bf16_t* out, int M, int K) { pdl_entry();
    dequant_q4_legacy_bf16<true>(w, out, M, K);
}
