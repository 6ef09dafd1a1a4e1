// Quantized weights times a few token rows on the tensor cores (cuda/qmma.rs): out[t, m] =
// sum_k x[t, k] * w[m, k] for 5..~128 token rows (batched decode), x bf16 [T, K], out f32
// [T, M], w in a quantized GPU layout that is dequantized in registers, never in memory.
//
// Why: above 4 rows the quantized matmuls used to dequantize their whole weight to bf16
// and run cuBLASLt: 1.06 bytes read + 2 written + 2 read again per Q8_0 weight, against 2
// for a bf16 weight, so every quantized type lost to bf16 from batch 8 on. Here a weight
// byte is read once, as in the GEMVs, and the tokens ride along as the mma's N dimension.
//
// Shape of the work ("swap AB": the weight is the mma's A operand, rows as M):
// - a block of QM_WARPS warps owns QM_ROWS = 32 * QM_WARPS weight rows; each warp 32 rows
//   (two m16 tiles) and all NT * 8 tokens of its token group (n8 tiles), f32 accumulators;
// - K goes by chunks of F::CH. Each chunk's quants and scales (QM_ROWS rows) and its x
//   (NT * 8 tokens, bf16, rows padded by 16 bytes: no bank conflicts) are copied to shared
//   memory with cp.async, QM_STAGES chunks in flight (dynamic shared memory: the bytes in
//   flight, not registers, set how close the weight stream gets to the copy bandwidth; a
//   first version that loaded the quants into registers one chunk ahead streamed at
//   1.1-1.6 TB/s on an H100);
// - lane (g, c) (g = lane / 4, c = lane % 4) reads its rows' quants from shared memory and
//   turns them into bf16 mma fragments itself: each weight is converted exactly once;
// - K order inside a chunk is permuted, the same way for A and B (a dot product does not
//   care): mma step s (16 logical k) of lane c takes physical k (CH / 4) c + 4s .. + 4, so
//   that a lane's fragments for the chunk are one contiguous run of its rows' quants;
// - the K splits of a row block (blockIdx.z, one thread-block cluster) add their partial
//   tiles through distributed shared memory in a fixed order (deterministic), and the
//   block of cluster rank r stores tokens r, r + splits, ..., coalesced.
// Helpers are qm_-prefixed.

#define QM_WARPS 4
#define QM_ROWS (QM_WARPS * 32)
#define QM_STAGES 4

// Two floats to a bf16 pair (round to nearest even): lo in the low half.
__device__ __forceinline__ unsigned int qm_pack_bf16(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ void qm_mma(float* d, const unsigned int* a, unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void qm_lds128(unsigned int addr, unsigned int (&v)[4]) {
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3]) : "r"(addr));
}

__device__ __forceinline__ void qm_cp_async4(unsigned int dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
}

// Each format: CH weights of K per chunk; WB quant bytes and SB scale bytes per row and
// chunk in shared memory; stage() issues the block's cp.async copies of one chunk (rows
// past M read row M - 1, whose results are dropped); Chunk holds a lane's four rows (g,
// g + 8, g + 16, g + 24 of its warp), read() fills it from shared memory and frags() turns
// steps 2h, 2h + 1 of it into A fragments a[step][m16 tile][4] (a0 / a2: row g of the
// tile, a1 / a3: row g + 8).

// ---------------------------------------------------------------------------------------
// Q8_0 (split layout, cuda/mod.rs `upload_weight`): int8 quants [M, K], then f16 scales
// [M, K / 32]. A lane's 16 quants of a row per 64-k chunk are half a block: one scale.
// int8 -> bf16 with the value the dequantization kernel writes (bf16(q * d)), in two
// operations: one byte permute puts q + 128 into mantissa bits 8..15 of 1.0f, giving
// f = 1 + (q + 128) / 2^15 exactly, and one FMA, (2^15 d) f - (2^15 d)(1 + 2^-8), gives
// q d rounded once; the product and the constant are exact in f32 (11 + 9 significant
// bits), so the result is q d itself, as the conversion and multiply would give.
// The two scales of a row's chunk need not be 4-byte aligned (K / 32 may be odd), so the
// stage holds the two aligned words around them (with an odd number of scales in all, the
// last word ends 2 bytes past the weight's data: `CudaBackend::alloc` rounds every
// allocation up to 256 bytes for this).
struct QmQ8_0 {
    static const int CH = 64, WB = 64, SB = 8, MIN_BLOCKS = 3;
    struct Chunk {
        uint4 q[4];
        float sc[4];  // 2^15 d of each row
    };
    __device__ __forceinline__ static void stage(unsigned char* wq, unsigned char* ws, const unsigned char* __restrict__ w,
                                                 int M, int K, int m0, int chunk) {
        for (int p = threadIdx.x; p < QM_ROWS * 4; p += QM_WARPS * 32) {
            const int r = p >> 2, k = chunk * CH + 16 * (p & 3);
            const long row = min(m0 + r, M - 1);
            fp_cp_async16(fp_smem_addr(wq + r * WB + 16 * (p & 3)), k < K ? w + row * K + k : w, k < K ? 16 : 0);
        }
        const unsigned int* words = reinterpret_cast<const unsigned int*>(w + (long)M * K);
        for (int p = threadIdx.x; p < QM_ROWS * 2; p += QM_WARPS * 32) {
            const int r = p >> 1;
            const long row = min(m0 + r, M - 1);
            const long first = row * (K / 32) + 2 * chunk;  // f16 index of the chunk's first scale
            const long word = min((first >> 1) + (p & 1), ((long)M * (K / 32) - 1) >> 1);
            qm_cp_async4(fp_smem_addr(ws + r * SB + 4 * (p & 1)), words + word);
        }
    }
    __device__ __forceinline__ static void read(Chunk& r, const unsigned char* wq, const unsigned char* ws, const int (&lr)[4],
                                                const int (&row)[4], int K, int chunk, int c) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            r.q[i] = *reinterpret_cast<const uint4*>(wq + lr[i] * WB + 16 * c);
            const long idx = (long)row[i] * (K / 32) + 2 * chunk + (c >> 1);
            const int half = (int)(idx - (((long)row[i] * (K / 32) + 2 * chunk) & ~1L));  // 0..2, in f16 units
            const f16_t h = reinterpret_cast<const f16_t*>(ws + lr[i] * SB)[half];
            r.sc[i] = chunk * CH + 16 * c < K ? 32768.0f * f16_to_f32(h) : 0.0f;
        }
    }
    __device__ __forceinline__ static void frags(const Chunk& r, int h, unsigned int (&a)[2][2][4]) {
#pragma unroll
        for (int ss = 0; ss < 2; ss++) {
            const int s = 2 * h + ss;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const unsigned int v = kq_word(r.q[i], s) ^ 0x80808080u;
                const float d = r.sc[i], off = -d * 1.00390625f;
                float f[4];
#pragma unroll
                for (int b = 0; b < 4; b++) f[b] = fmaf(d, __uint_as_float(__byte_perm(v, 0x3F800000u, 0x7604 | (b << 4))), off);
                a[ss][i >> 1][(i & 1)] = qm_pack_bf16(f[0], f[1]);
                a[ss][i >> 1][(i & 1) + 2] = qm_pack_bf16(f[2], f[3]);
            }
        }
    }
};

// ---------------------------------------------------------------------------------------
// Q4_K (kquant.rs layout: quants [M, K / 32] x 16 bytes, one 32-weight sub-block each,
// element i < 16 in the low nibble of byte i and 16 + i in the high; block heads [M, K /
// 256] x 16 bytes after them). A chunk is 128 weights: lane c takes sub-block 4 chunk +
// c, 32 weights, eight mma steps: step s < 4 the low nibbles of word s, s >= 4 the high
// nibbles of word s - 4. As in the K-quant GEMVs, one byte permute puts q << 3 into a
// float 0.5 + q / 32 (kq_float), and one FMA gives (32 d1) f - (16 d1 + m1) = d1 q - m1
// (d1 = d sc, m1 = dmin m): the dequantized weight up to the f32 rounding of the constant
// (ggml rounds d1 q, then the difference).
struct QmQ4_K {
    static const int CH = 128, WB = 64, SB = 16, MIN_BLOCKS = 3;
    struct Chunk {
        uint4 q[4];
        float a[4], b[4];  // 32 d1, -(16 d1 + m1) of each row's sub-block
    };
    __device__ __forceinline__ static void stage(unsigned char* wq, unsigned char* ws, const unsigned char* __restrict__ w,
                                                 int M, int K, int m0, int chunk) {
        for (int p = threadIdx.x; p < QM_ROWS * 4; p += QM_WARPS * 32) {
            const int r = p >> 2;
            const long row = min(m0 + r, M - 1);
            fp_cp_async16(fp_smem_addr(wq + r * WB + 16 * (p & 3)), w + row * (K / 2) + 64 * chunk + 16 * (p & 3), 16);
        }
        const unsigned char* heads = w + (long)M * (K / 2);
        for (int r = threadIdx.x; r < QM_ROWS; r += QM_WARPS * 32) {
            const long row = min(m0 + r, M - 1);
            fp_cp_async16(fp_smem_addr(ws + r * SB), heads + (row * (K / 256) + (chunk >> 1)) * 16, 16);
        }
    }
    __device__ __forceinline__ static void read(Chunk& r, const unsigned char* wq, const unsigned char* ws, const int (&lr)[4],
                                                const int (&)[4], int, int chunk, int c) {
        const int j = (chunk * 4 + c) & 7;  // sub-block within the super-block
#pragma unroll
        for (int i = 0; i < 4; i++) {
            r.q[i] = *reinterpret_cast<const uint4*>(wq + lr[i] * WB + 16 * c);
            const uint4 h = *reinterpret_cast<const uint4*>(ws + lr[i] * SB);
            float sc, mn;
            kq4_scale_min(h, j, sc, mn);
            const float d1 = f16_to_f32((f16_t)(h.x & 0xffffu)) * sc;
            const float m1 = f16_to_f32((f16_t)(h.x >> 16)) * mn;
            r.a[i] = 32.0f * d1;
            r.b[i] = -(16.0f * d1 + m1);
        }
    }
    __device__ __forceinline__ static void frags(const Chunk& r, int h, unsigned int (&a)[2][2][4]) {
        const unsigned int e = kq_exp();
#pragma unroll
        for (int ss = 0; ss < 2; ss++) {
            const int s = 2 * h + ss;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const unsigned int v = kq_word(r.q[i], s & 3);
                const unsigned int nib = s < 4 ? (v << 3) & 0x78787878u : (v >> 1) & 0x78787878u;
                float f[4];
#pragma unroll
                for (int b = 0; b < 4; b++) f[b] = fmaf(r.a[i], kq_float(nib, b, e), r.b[i]);
                a[ss][i >> 1][(i & 1)] = qm_pack_bf16(f[0], f[1]);
                a[ss][i >> 1][(i & 1) + 2] = qm_pack_bf16(f[2], f[3]);
            }
        }
    }
};

// ---------------------------------------------------------------------------------------
// Q6_K (kquant.rs layout: per row three planes of 16-byte pieces A, B, H per 64 weights,
// then int8 scales [M, K / 16], then f16 d [M, K / 256]). A chunk is one 64-weight unit,
// staged as A | B | H (48 bytes a row) and the scales' word and d's word: lane c takes
// elements 16c .. 16c + 16, whose low 4 bits are the low (c even) or high (c odd) nibbles
// of A (c < 2) or B, and whose top 2 bits are bits 2c, 2c + 1 of H's bytes; four mma
// steps, word s of each. The 6-bit q goes by one byte permute into 0.5 + q / 128 (q << 1
// in the byte), and (128 d1) f - 96 d1 = d1 (q - 32) exactly (d1 = d sc: 19 significant
// bits), which is ggml's value.
struct QmQ6_K {
    static const int CH = 64, WB = 48, SB = 8, MIN_BLOCKS = 2;
    struct Chunk {
        uint4 lo[4], hi[4];
        float a[4];  // 128 d1 of each row's 16 weights (the offset is -0.75 a)
    };
    __device__ __forceinline__ static void stage(unsigned char* wq, unsigned char* ws, const unsigned char* __restrict__ w,
                                                 int M, int K, int m0, int chunk) {
        for (int p = threadIdx.x; p < QM_ROWS * 3; p += QM_WARPS * 32) {
            const int r = p / 3, piece = p % 3;  // A, B, H at 0, K / 4, K / 2 of the row
            const long row = min(m0 + r, M - 1);
            fp_cp_async16(fp_smem_addr(wq + r * WB + 16 * piece), w + row * (3 * (K / 4)) + piece * (K / 4) + 16 * chunk, 16);
        }
        const long nb = K / 256;
        const unsigned char* scales = w + (long)M * nb * 192;
        const unsigned int* ds = reinterpret_cast<const unsigned int*>(w + (long)M * nb * 208);
        for (int r = threadIdx.x; r < QM_ROWS; r += QM_WARPS * 32) {
            const long row = min(m0 + r, M - 1);
            qm_cp_async4(fp_smem_addr(ws + r * SB), scales + row * (K / 16) + 4 * chunk);
            qm_cp_async4(fp_smem_addr(ws + r * SB + 4), ds + ((row * nb + (chunk >> 2)) >> 1));
        }
    }
    __device__ __forceinline__ static void read(Chunk& r, const unsigned char* wq, const unsigned char* ws, const int (&lr)[4],
                                                const int (&row)[4], int K, int chunk, int c) {
        const long nb = K / 256;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            r.lo[i] = *reinterpret_cast<const uint4*>(wq + lr[i] * WB + (c < 2 ? 0 : 16));
            r.hi[i] = *reinterpret_cast<const uint4*>(wq + lr[i] * WB + 32);
            const float sc = (float)reinterpret_cast<const signed char*>(ws + lr[i] * SB)[c];
            const int half = (int)(((long)row[i] * nb + (chunk >> 2)) & 1);
            const f16_t d = reinterpret_cast<const f16_t*>(ws + lr[i] * SB + 4)[half];
            r.a[i] = 128.0f * f16_to_f32(d) * sc;
        }
    }
    __device__ __forceinline__ static void frags(const Chunk& r, int h, unsigned int (&a)[2][2][4]) {
        const unsigned int e = kq_exp();
        const int c = threadIdx.x & 3;
        const int lo_shift = 4 * (c & 1), hi_shift = 2 * c;
#pragma unroll
        for (int ss = 0; ss < 2; ss++) {
            const int s = 2 * h + ss;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const unsigned int q = ((kq_word(r.lo[i], s) >> lo_shift) & 0x0F0F0F0Fu) |
                                       (((kq_word(r.hi[i], s) >> hi_shift) & 0x03030303u) << 4);
                const unsigned int v = q << 1;
                const float off = -0.75f * r.a[i];
                float f[4];
#pragma unroll
                for (int b = 0; b < 4; b++) f[b] = fmaf(r.a[i], kq_float(v, b, e), off);
                a[ss][i >> 1][(i & 1)] = qm_pack_bf16(f[0], f[1]);
                a[ss][i >> 1][(i & 1) + 2] = qm_pack_bf16(f[2], f[3]);
            }
        }
    }
};

// Shared memory of one instance: QM_STAGES stages of x, quants and scales, reused for the
// partial tile at the end. cuda/qmma.rs `smem_bytes` computes the same sum.
template <class F, int NT>
struct QmSmem {
    static constexpr int XROW = F::CH + 8;  // bf16 per x row in a stage
    static constexpr int XB = NT * 8 * XROW * 2, WQ = QM_ROWS * F::WB, WS = QM_ROWS * F::SB;
    static constexpr int STAGE = XB + WQ + WS;
    static constexpr int RS = QM_ROWS + 4;  // floats per token row of the partial tile
    static constexpr int RED = RS * NT * 8 * 4;
    static constexpr int BYTES = QM_STAGES * STAGE > RED ? QM_STAGES * STAGE : RED;
};

// Issues one chunk's copies (x, quants, scales) into stage `st`.
template <class F, int NT>
__device__ __forceinline__ void qm_stage(unsigned char* smem, int st, const bf16_t* __restrict__ x,
                                         const unsigned char* __restrict__ w, int M, int K, int T, int m0, int t0,
                                         int chunk) {
    typedef QmSmem<F, NT> L;
    unsigned char* base = smem + st * L::STAGE;
    bf16_t* xs = reinterpret_cast<bf16_t*>(base);
    for (int p = threadIdx.x; p < NT * 8 * (F::CH / 8); p += QM_WARPS * 32) {
        const int tok = p / (F::CH / 8), col = (p % (F::CH / 8)) * 8;
        const int k = chunk * F::CH + col;
        const bool live = t0 + tok < T && k < K;
        fp_cp_async16(fp_smem_addr(xs + tok * L::XROW + col), live ? x + (long)(t0 + tok) * K + k : x, live ? 16 : 0);
    }
    F::stage(base + L::XB, base + L::XB + L::WQ, w, M, K, m0, chunk);
}

template <class F, int NT>
__device__ __forceinline__ void qmma_body(const bf16_t* __restrict__ x, const unsigned char* __restrict__ w,
                                          float* __restrict__ out, int M, int K, int T, int chunks_per_split) {
    typedef QmSmem<F, NT> L;
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned int dyn;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
    if (dyn < (unsigned int)L::BYTES) __trap();  // the launcher's size disagrees with QmSmem
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int mb = blockIdx.x * QM_ROWS;
    const int t0 = blockIdx.y * NT * 8;
    const int nchunks = (K + F::CH - 1) / F::CH;
    const int first = blockIdx.z * chunks_per_split;
    const int n = max(0, min(first + chunks_per_split, nchunks) - first);
    int lr[4], row[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        lr[i] = warp * 32 + g + 8 * i;
        row[i] = min(mb + lr[i], M - 1);
    }
    float acc[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mt][nt][e] = 0.0f;

#pragma unroll
    for (int st = 0; st < QM_STAGES - 1; st++) {
        if (st < n) qm_stage<F, NT>(smem, st, x, w, M, K, T, mb, t0, first + st);
        fp_cp_async_commit();
    }
    for (int it = 0; it < n; it++) {
        asm volatile("cp.async.wait_group %0;" ::"n"(QM_STAGES - 2) : "memory");
        __syncthreads();  // chunk it is in; every warp is done with chunk it - 1's stage
        if (it + QM_STAGES - 1 < n)
            qm_stage<F, NT>(smem, (it + QM_STAGES - 1) % QM_STAGES, x, w, M, K, T, mb, t0, first + it + QM_STAGES - 1);
        fp_cp_async_commit();
        const unsigned char* base = smem + (it % QM_STAGES) * L::STAGE;
        const bf16_t* xc = reinterpret_cast<const bf16_t*>(base);
        typename F::Chunk cur;
        F::read(cur, base + L::XB, base + L::XB + L::WQ, lr, row, K, first + it, c);
#pragma unroll
        for (int h = 0; h < F::CH / 32; h++) {
            unsigned int a[2][2][4];
            F::frags(cur, h, a);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                unsigned int b[4];
                qm_lds128(fp_smem_addr(xc + (nt * 8 + g) * L::XROW + (F::CH / 4) * c + 8 * h), b);
#pragma unroll
                for (int ss = 0; ss < 2; ss++)
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) qm_mma(acc[mt][nt], a[ss][mt], b[2 * ss], b[2 * ss + 1]);
            }
        }
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncthreads();  // the stages are free: the partial tile goes where they were

    // The block's partial tile, [token][row] (rows padded by 4: no bank conflicts), then
    // the fixed-order sum over the cluster's splits: rank r stores tokens r, r + splits, ...
    // (thread i: row i of the block; QM_ROWS == QM_WARPS * 32).
    float* red = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = warp * 32 + mt * 16 + g + 8 * (e >> 1), tok = nt * 8 + 2 * c + (e & 1);
                red[tok * L::RS + r] = acc[mt][nt][e];
            }
    const int splits = gridDim.z;
    int rank = 0;
    if (splits > 1) {
        fd_cluster_sync();
        rank = (int)fd_cluster_rank();
    } else {
        __syncthreads();
    }
    const int m = mb + threadIdx.x;
    for (int tok = rank; tok < NT * 8; tok += splits) {
        float s = 0.0f;
        for (int q = 0; q < splits; q++)
            s += splits > 1 ? fd_dsmem_load(red + tok * L::RS + threadIdx.x, q) : red[tok * L::RS + threadIdx.x];
        if (m < M && t0 + tok < T) out[(long)(t0 + tok) * M + m] = s;
    }
    if (splits > 1) fd_cluster_sync();  // no block leaves while another reads its tile
}

// Dynamic shared memory: QmSmem<F, NT>::BYTES (the launcher passes it; 39-110 KB). At
// least 3 blocks per SM by registers (168 a thread), 2 for Q6_K, whose chunks hold twice
// the quant registers (it spills at 168).
#define QMMA(NAME, F, NT) \
extern "C" __global__ void __launch_bounds__(QM_WARPS * 32, F::MIN_BLOCKS) NAME(const bf16_t* x, const unsigned char* w, float* out, \
                                                                    int M, int K, int T, int chunks_per_split) { pdl_entry(); \
    qmma_body<F, NT>(x, w, out, M, K, T, chunks_per_split); \
}
QMMA(qmma_q8_0_n1, QmQ8_0, 1) QMMA(qmma_q8_0_n2, QmQ8_0, 2)
QMMA(qmma_q8_0_n4, QmQ8_0, 4) QMMA(qmma_q8_0_n8, QmQ8_0, 8)
QMMA(qmma_q4_k_n1, QmQ4_K, 1) QMMA(qmma_q4_k_n2, QmQ4_K, 2)
QMMA(qmma_q4_k_n4, QmQ4_K, 4) QMMA(qmma_q4_k_n8, QmQ4_K, 8)
QMMA(qmma_q6_k_n1, QmQ6_K, 1) QMMA(qmma_q6_k_n2, QmQ6_K, 2)
QMMA(qmma_q6_k_n4, QmQ6_K, 4) QMMA(qmma_q6_k_n8, QmQ6_K, 8)
