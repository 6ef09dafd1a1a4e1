// Causal prefill attention on tensor cores over a paged bf16 (or FP8, see FaOps) KV cache, after
// FlashAttention-2 (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism
// and Work Partitioning"). The data contract is attention.cu's (the CPU kernel's, in
// crates/backend/src/cpu/attention.rs): q [T, n_heads * hd] f32, caches
// [num_blocks, n_kv, bs, hd] bf16, out [T, n_heads * hd] f32. Only sequences with at
// least `min_q_rows` query rows are handled here; the host runs attention.cu's kernel for
// the others (decodes, short chunks), where one query row per block is the better shape.
//
// Why: attention.cu does Q.K and P.V on the CUDA cores, one query row per block, so a
// prefill of n rows reads each key n times and runs at CUDA-core rate. Here a block takes
// 64 query rows of one sequence and one query head, reads each key tile once for all of
// them, and does both products with mma.sync m16n8k16 (bf16 in, f32 accumulate).
//
// - Block = 4 warps x 16 query rows. Q is scaled (by scale * log2 e, so the softmax uses
//   exp2) and rounded to bf16 once, into registers as mma A fragments.
// - Keys in tiles of 64, aligned to multiples of 64 from key 0. K and V tiles are copied
//   to shared memory with 16-byte cp.async, each key's row found through the block table
//   (any block size); rows padded by 8 elements so ldmatrix is free of bank conflicts.
//   Keys outside [the lowest key any row needs, the highest] are zero-filled, never read.
//   K(j+1) streams in while P.V(j) runs and V(j+1) while Q.K(j+1) runs (FA2's schedule:
//   one buffer each, two cp.async groups in flight).
// - S = Q K^T per warp: 16 x 64 in 8 accumulator fragments, K's B fragments by ldmatrix.
//   The causal / sliding-window mask is applied only on tiles that need it; tiles above
//   the diagonal (or below the window) are skipped, per block and per warp.
// - Online softmax (running max and sum per row, the sum kept per thread and reduced over
//   the row's 4 lanes at the end); then the FA2 register trick: S's accumulator fragments
//   are P's A fragments once rounded to bf16, so P never touches shared memory. V's B
//   fragments come from ldmatrix .trans. O (16 x hd per warp) stays in registers; the end
//   writes O / l as f32 (0 for a row with no keys).
// - Tile enumeration: gridDim.x is an upper bound on the 64-row tiles (the host passes
//   ceil(T / 64) + num_seqs); each block finds its (sequence, tile) by a warp scan over
//   the sequences with q_rows >= min_q_rows, last tile of each sequence first (the one
//   with the most keys), and surplus blocks exit. gridDim.y = n_heads (GQA: head h reads
//   KV head h / (n_heads / n_kv)).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16; g = lane / 4, c = lane % 4):
// A 16x16 row-major, 4 registers of 2 bf16 (lower column in the low half):
//   a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..);
// B 16x8 (k x n), 2 registers: b0 (k = 2c..2c+1, n = g), b1 (k = 2c+8.., n = g);
// C 16x8 f32: c0, c1 (g, 2c..2c+1), c2, c3 (g+8, 2c..2c+1).
// ldmatrix.x4: lanes 8i..8i+7 give the 8 row addresses of matrix i (into register i);
// lane l receives row l/4, columns 2(l%4)..+1 of each matrix (with .trans: rows 2(l%4)..+1
// of column l/4).

#define FP_ROWS 64       // query rows per block
#define FP_KEYS 64       // keys per tile
#define FP_WARPS 4
#define FP_PAD 8         // bf16 elements of padding per shared-memory row
#define FP_LOG2E 1.4426950408889634f

// Two f32 as one bf16x2 register: `lo` in the low half (the lower column / k index).
__device__ __forceinline__ unsigned int fp_pack_bf16(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float fp_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ void fp_ldmatrix_x4(unsigned int addr, unsigned int& r0, unsigned int& r1,
                                               unsigned int& r2, unsigned int& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void fp_ldmatrix_x4_trans(unsigned int addr, unsigned int& r0, unsigned int& r1,
                                                     unsigned int& r2, unsigned int& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// d += a * b, m16n8k16, bf16 inputs, f32 accumulators.
__device__ __forceinline__ void fp_mma(float* d, const unsigned int* a, unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same with f16 inputs (the FP8 cache's tiles are f16 in shared memory, see below).
__device__ __forceinline__ void fp_mma_f16(float* d, const unsigned int* a, unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 as one f16x2 register, `lo` in the low half.
__device__ __forceinline__ unsigned int fp_pack_f16(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Operand type of the tensor-core products for a cache of KV: bf16 for a bf16 cache; f16
// for an FP8 (E4M3) one, whose codes convert exactly (and cheaply) to f16 values times
// 2^-8 (fp8x4_to_f16x2), so scores and outputs are scaled back by 2^8 in f32.
template <typename KV> struct FaOps {
    static constexpr bool F8 = false;
    static constexpr int ELEMS = 8;    // cache elements per 16-byte chunk
    __device__ __forceinline__ static unsigned int pack(float lo, float hi) { return fp_pack_bf16(lo, hi); }
    __device__ __forceinline__ static void mma(float* d, const unsigned int* a, unsigned int b0, unsigned int b1) {
        fp_mma(d, a, b0, b1);
    }
};
template <> struct FaOps<fp8_t> {
    static constexpr bool F8 = true;
    static constexpr int ELEMS = 16;
    __device__ __forceinline__ static unsigned int pack(float lo, float hi) { return fp_pack_f16(lo, hi); }
    __device__ __forceinline__ static void mma(float* d, const unsigned int* a, unsigned int b0, unsigned int b1) {
        fp_mma_f16(d, a, b0, b1);
    }
};

// Shared-memory address of cache chunk `ch` of tile row `key` for the cp.async: a bf16
// chunk (8 elements) lands where it is used; an FP8 chunk (16 elements, 16 bytes) lands
// in the second half of the 32 bytes its f16 values will take, so that the thread that
// copied it can widen it in place (fa_widen_chunk) without a barrier: no other thread
// reads or writes those 32 bytes.
template <typename KV, int HD>
__device__ __forceinline__ unsigned int fa_chunk_dst(bf16_t (*dst)[HD + FP_PAD], int key, int ch) {
    return FaOps<KV>::F8 ? fp_smem_addr(&dst[key][ch * 16 + 8]) : fp_smem_addr(&dst[key][ch * 8]);
}

// FP8 chunk (key, ch), landed by this thread's cp.async, to 16 f16 (values times 2^-8)
// in place.
template <int HD>
__device__ __forceinline__ void fa_widen_chunk(bf16_t (*dst)[HD + FP_PAD], int key, int ch) {
    uint4* p = reinterpret_cast<uint4*>(&dst[key][ch * 16]);
    const uint4 r = p[1];
    uint4 a, b;
    fp8x4_to_f16x2(r.x, a.x, a.y);
    fp8x4_to_f16x2(r.y, a.z, a.w);
    fp8x4_to_f16x2(r.z, b.x, b.y);
    fp8x4_to_f16x2(r.w, b.z, b.w);
    p[0] = a;
    p[1] = b;
}

// Issues the cp.async copies of one tile (keys kt..kt+63) of `cache` into `dst`; `rows`
// holds each of this thread's keys' row index in the cache ([num_blocks * n_kv * bs] rows
// of HD elements), or -1 for a key outside the loaded range (zero-filled).
template <int HD, typename KV>
__device__ __forceinline__ void fp_load_tile(bf16_t (*dst)[HD + FP_PAD], const KV* __restrict__ cache,
                                             const int* rows) {
    constexpr int CHUNKS = HD / FaOps<KV>::ELEMS;           // 16-byte chunks per key row
    constexpr int PER_THREAD = FP_KEYS * CHUNKS / (FP_WARPS * 32);
#pragma unroll
    for (int i = 0; i < PER_THREAD; i++) {
        const int c = threadIdx.x + i * FP_WARPS * 32;
        const int key = c / CHUNKS, ch = c % CHUNKS;
        const int row = rows[i];
        const KV* src = row >= 0 ? cache + (long)row * HD + ch * FaOps<KV>::ELEMS : cache;
        fp_cp_async16(fa_chunk_dst<KV, HD>(dst, key, ch), src, row >= 0 ? 16 : 0);
    }
}

// After the wait for a tile: an FP8 tile's chunks copied by this thread widened to f16
// (nothing for bf16). The barrier that follows the wait publishes them.
template <int HD, typename KV>
__device__ __forceinline__ void fp_widen_tile(bf16_t (*dst)[HD + FP_PAD]) {
    if (!FaOps<KV>::F8) return;
    constexpr int CHUNKS = HD / 16;
    constexpr int PER_THREAD = FP_KEYS * CHUNKS / (FP_WARPS * 32);
#pragma unroll
    for (int i = 0; i < PER_THREAD; i++) {
        const int c = threadIdx.x + i * FP_WARPS * 32;
        fa_widen_chunk<HD>(dst, c / CHUNKS, c % CHUNKS);
    }
}

template <int HD, typename KV>
__device__ void flash_prefill(const float* __restrict__ q, const KV* __restrict__ kc,
                              const KV* __restrict__ vc, const int* __restrict__ query_start,
                              int num_seqs, const int* __restrict__ context_lens,
                              const int* __restrict__ block_tables, int bt_cols, int bs, int n_heads,
                              int n_kv, float scale, int window, float softcap, int min_q_rows,
                              float* __restrict__ out, bf16_t* __restrict__ out_bf16) {
    constexpr int KC = HD / 16;     // k-steps of Q.K
    constexpr int NT = HD / 8;      // n-tiles of O
    constexpr int CHUNKS = HD / FaOps<KV>::ELEMS;
    constexpr int PER_THREAD = FP_KEYS * CHUNKS / (FP_WARPS * 32);
    typedef FaOps<KV> Ops;
    __shared__ __attribute__((aligned(16))) bf16_t sk[FP_KEYS][HD + FP_PAD];
    __shared__ __attribute__((aligned(16))) bf16_t sv[FP_KEYS][HD + FP_PAD];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const unsigned int full = 0xffffffffu;

    // Which (sequence, 64-row tile) is this block's: a scan over the qualifying sequences'
    // tile counts, 32 sequences at a time (every warp computes the same answer).
    const int target = blockIdx.x;
    int s = -1, tile = 0, running = 0;
    for (int base = 0; base < num_seqs; base += 32) {
        const int si = base + lane;
        int n = 0;
        if (si < num_seqs) {
            const int r = query_start[si + 1] - query_start[si];
            if (r >= min_q_rows && r > 0) n = (r + FP_ROWS - 1) / FP_ROWS;
        }
        int inc = n;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int v = __shfl_up_sync(full, inc, o);
            if (lane >= o) inc += v;
        }
        const int total = __shfl_sync(full, inc, 31);
        if (target < running + total) {
            const int src = __ffs(__ballot_sync(full, target < running + inc)) - 1;
            s = base + src;
            tile = target - running - __shfl_sync(full, inc - n, src);
            break;
        }
        running += total;
    }
    if (s < 0) return;

    const int q0 = query_start[s];
    const int q_rows = query_start[s + 1] - q0;
    const int n_tiles = (q_rows + FP_ROWS - 1) / FP_ROWS;
    const int row0 = (n_tiles - 1 - tile) * FP_ROWS;  // first local row of this tile
    const int ctx = context_lens[s];
    const int pos0 = ctx - q_rows;                     // position of local row 0
    const int h = blockIdx.y;
    const int kvh = h / (n_heads / n_kv);
    const int* table = block_tables + (long)s * bt_cols;
    const int ld = n_heads * HD;

    // Keys this block needs: [key_lo, key_hi].
    const int last_row = min(row0 + FP_ROWS, q_rows) - 1;
    const int key_hi = pos0 + last_row;
    const int key_lo = window > 0 ? max(0, pos0 + row0 - window + 1) : 0;
    const int tile_lo = key_lo / FP_KEYS;
    const int tile_hi = key_hi >= 0 ? key_hi / FP_KEYS : tile_lo - 1;

    // This warp's rows and keys.
    const int w_row = row0 + warp * 16;
    const bool w_active = w_row <= last_row;
    const int w_pos_lo = pos0 + w_row;
    const int w_pos_hi = pos0 + min(w_row + 15, last_row);
    const int w_key_lo = window > 0 ? max(0, w_pos_lo - window + 1) : 0;
    const int w_full_lo = window > 0 ? max(0, w_pos_hi - window + 1) : 0;  // every row sees keys >= this
    // This thread's two rows (g and g + 8 of the warp's 16).
    const int r_a = w_row + g, r_b = r_a + 8;
    const int p_a = pos0 + r_a, p_b = pos0 + r_b;
    const int f_a = window > 0 ? p_a - window + 1 : 0;
    const int f_b = window > 0 ? p_b - window + 1 : 0;

    // Q as A fragments, scaled and rounded to bf16.
    const bool use_cap = softcap > 0.0f;
    const float qscale = use_cap ? scale : scale * FP_LOG2E;
    const float cap_out = softcap * FP_LOG2E, cap_in = use_cap ? 1.0f / softcap : 0.0f;
    unsigned int qf[KC][4];
    {
        const bool va = r_a <= last_row, vb = r_b <= last_row;
        const float* qa = q + (long)(q0 + r_a) * ld + h * HD;
        const float* qb = q + (long)(q0 + r_b) * ld + h * HD;
#pragma unroll
        for (int ks = 0; ks < KC; ks++) {
            const int d = ks * 16 + 2 * c;
            float2 xa0 = va ? *reinterpret_cast<const float2*>(qa + d) : make_float2(0.0f, 0.0f);
            float2 xb0 = vb ? *reinterpret_cast<const float2*>(qb + d) : make_float2(0.0f, 0.0f);
            float2 xa1 = va ? *reinterpret_cast<const float2*>(qa + d + 8) : make_float2(0.0f, 0.0f);
            float2 xb1 = vb ? *reinterpret_cast<const float2*>(qb + d + 8) : make_float2(0.0f, 0.0f);
            qf[ks][0] = Ops::pack(xa0.x * qscale, xa0.y * qscale);
            qf[ks][1] = Ops::pack(xb0.x * qscale, xb0.y * qscale);
            qf[ks][2] = Ops::pack(xa1.x * qscale, xa1.y * qscale);
            qf[ks][3] = Ops::pack(xb1.x * qscale, xb1.y * qscale);
        }
    }

    float o[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m_a = NEG_INF, m_b = NEG_INF, l_a = 0.0f, l_b = 0.0f;

    // The cache rows of this thread's keys in a tile (the same for K and V).
    int rows[PER_THREAD];
    auto tile_rows = [&](int kt) {
#pragma unroll
        for (int i = 0; i < PER_THREAD; i++) {
            const int k = kt + (threadIdx.x + i * FP_WARPS * 32) / CHUNKS;
            rows[i] = (k >= key_lo && k <= key_hi) ? (table[k / bs] * n_kv + kvh) * bs + k % bs : -1;
        }
    };

    if (tile_lo <= tile_hi) {
        tile_rows(tile_lo * FP_KEYS);
        fp_load_tile<HD, KV>(sk, kc, rows);
        fp_cp_async_commit();
        fp_load_tile<HD, KV>(sv, vc, rows);
        fp_cp_async_commit();
    }
    // Shared-memory addresses of this lane's ldmatrix rows (see the layouts above).
    const unsigned int k_addr = fp_smem_addr(&sk[(lane >> 4) * 8 + (lane & 7)][((lane >> 3) & 1) * 8]);
    const unsigned int v_addr = fp_smem_addr(&sv[((lane >> 3) & 1) * 8 + (lane & 7)][(lane >> 4) * 8]);
    constexpr unsigned int ROW_BYTES = (HD + FP_PAD) * 2;

    for (int jt = tile_lo; jt <= tile_hi; jt++) {
        const int kt = jt * FP_KEYS;
        const bool compute = w_active && kt <= w_pos_hi && kt + FP_KEYS - 1 >= w_key_lo;
        fp_cp_async_wait1();  // K(jt) has landed (V(jt) may still be in flight)
        fp_widen_tile<HD, KV>(sk);
        __syncthreads();

        float sc[8][4];
        if (compute) {
#pragma unroll
            for (int j = 0; j < 8; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KC; ks++) {
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    unsigned int b0, b1, b2, b3;
                    fp_ldmatrix_x4(k_addr + np * 16 * ROW_BYTES + ks * 32, b0, b1, b2, b3);
                    Ops::mma(sc[2 * np], qf[ks], b0, b1);
                    Ops::mma(sc[2 * np + 1], qf[ks], b2, b3);
                }
            }
            if (Ops::F8) {
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) sc[j][e] *= 256.0f;
            }
            if (use_cap) {
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) sc[j][e] = cap_out * tanhf(sc[j][e] * cap_in);
            }
            const bool need_mask = kt + FP_KEYS - 1 > w_pos_lo || kt < w_full_lo;
            if (need_mask) {
#pragma unroll
                for (int j = 0; j < 8; j++) {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int k = kt + j * 8 + 2 * c + e;
                        if (k > p_a || k < f_a) sc[j][e] = NEG_INF;
                        if (k > p_b || k < f_b) sc[j][2 + e] = NEG_INF;
                    }
                }
            }
            // Online softmax over this tile, rows a (g) and b (g + 8).
            float mx_a = NEG_INF, mx_b = NEG_INF;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                mx_a = fmaxf(mx_a, fmaxf(sc[j][0], sc[j][1]));
                mx_b = fmaxf(mx_b, fmaxf(sc[j][2], sc[j][3]));
            }
            mx_a = fmaxf(mx_a, __shfl_xor_sync(full, mx_a, 1));
            mx_a = fmaxf(mx_a, __shfl_xor_sync(full, mx_a, 2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(full, mx_b, 1));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(full, mx_b, 2));
            const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
            // A row that has seen no key yet keeps max -inf: subtract 0 instead (p = 0).
            const float base_a = mn_a == NEG_INF ? 0.0f : mn_a;
            const float base_b = mn_b == NEG_INF ? 0.0f : mn_b;
            const float alpha_a = fp_exp2(m_a - base_a), alpha_b = fp_exp2(m_b - base_b);
            m_a = mn_a;
            m_b = mn_b;
            float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                sc[j][0] = fp_exp2(sc[j][0] - base_a);
                sc[j][1] = fp_exp2(sc[j][1] - base_a);
                sc[j][2] = fp_exp2(sc[j][2] - base_b);
                sc[j][3] = fp_exp2(sc[j][3] - base_b);
                sum_a += sc[j][0] + sc[j][1];
                sum_b += sc[j][2] + sc[j][3];
            }
            l_a = l_a * alpha_a + sum_a;
            l_b = l_b * alpha_b + sum_b;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                o[j][0] *= alpha_a;
                o[j][1] *= alpha_a;
                o[j][2] *= alpha_b;
                o[j][3] *= alpha_b;
            }
        }
        __syncthreads();  // every warp is done with K(jt)
        if (jt < tile_hi) {
            tile_rows(kt + FP_KEYS);
            fp_load_tile<HD, KV>(sk, kc, rows);
        }
        fp_cp_async_commit();
        fp_cp_async_wait1();  // V(jt) has landed (K(jt + 1) may still be in flight)
        fp_widen_tile<HD, KV>(sv);
        __syncthreads();

        if (compute) {
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                unsigned int pa[4];
                pa[0] = Ops::pack(sc[2 * kk][0], sc[2 * kk][1]);
                pa[1] = Ops::pack(sc[2 * kk][2], sc[2 * kk][3]);
                pa[2] = Ops::pack(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
                pa[3] = Ops::pack(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
                for (int dp = 0; dp < HD / 16; dp++) {
                    unsigned int b0, b1, b2, b3;
                    fp_ldmatrix_x4_trans(v_addr + kk * 16 * ROW_BYTES + dp * 32, b0, b1, b2, b3);
                    Ops::mma(o[2 * dp], pa, b0, b1);
                    Ops::mma(o[2 * dp + 1], pa, b2, b3);
                }
            }
        }
        __syncthreads();  // every warp is done with V(jt)
        if (jt < tile_hi) fp_load_tile<HD, KV>(sv, vc, rows);
        fp_cp_async_commit();
    }

    if (!w_active) return;
    l_a += __shfl_xor_sync(full, l_a, 1);
    l_a += __shfl_xor_sync(full, l_a, 2);
    l_b += __shfl_xor_sync(full, l_b, 1);
    l_b += __shfl_xor_sync(full, l_b, 2);
    // (An FP8 cache's V values were f16 times 2^-8.)
    const float vs = Ops::F8 ? 256.0f : 1.0f;
    const float inv_a = l_a > 0.0f ? vs / l_a : 0.0f;
    const float inv_b = l_b > 0.0f ? vs / l_b : 0.0f;
    float* oa = out + (long)(q0 + r_a) * ld + h * HD + 2 * c;
    float* ob = out + (long)(q0 + r_b) * ld + h * HD + 2 * c;
#pragma unroll
    for (int j = 0; j < NT; j++) {
        if (r_a <= last_row) *reinterpret_cast<float2*>(oa + j * 8) = make_float2(o[j][0] * inv_a, o[j][1] * inv_a);
        if (r_b <= last_row) *reinterpret_cast<float2*>(ob + j * 8) = make_float2(o[j][2] * inv_b, o[j][3] * inv_b);
    }
    // The bf16 copy of these rows for the output projection's GEMM (cuda/ops.rs, "staged
    // activations"), rounded as f32_to_bf16_kernel rounds.
    if (out_bf16) {
        bf16_t* ba = out_bf16 + (long)(q0 + r_a) * ld + h * HD + 2 * c;
        bf16_t* bb = out_bf16 + (long)(q0 + r_b) * ld + h * HD + 2 * c;
        auto pack = [](float lo, float hi) {
            return (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
        };
#pragma unroll
        for (int j = 0; j < NT; j++) {
            if (r_a <= last_row) *reinterpret_cast<unsigned int*>(ba + j * 8) = pack(o[j][0] * inv_a, o[j][1] * inv_a);
            if (r_b <= last_row) *reinterpret_cast<unsigned int*>(bb + j * 8) = pack(o[j][2] * inv_b, o[j][3] * inv_b);
        }
    }
}

#define FLASH_PREFILL(HD, KVN, KV) \
extern "C" __global__ void __launch_bounds__(FP_WARPS * 32) flash_prefill_##KVN##_d##HD( \
    const float* q, const KV* kc, const KV* vc, const int* query_start, int num_seqs, \
    const int* context_lens, const int* block_tables, int bt_cols, int bs, int n_heads, int n_kv, \
    float scale, int window, float softcap, int min_q_rows, float* out, bf16_t* out_bf16) { pdl_entry(); \
    flash_prefill<HD, KV>(q, kc, vc, query_start, num_seqs, context_lens, block_tables, bt_cols, bs, \
                          n_heads, n_kv, scale, window, softcap, min_q_rows, out, out_bf16); \
}
FLASH_PREFILL(64, bf16, bf16_t)
FLASH_PREFILL(128, bf16, bf16_t)
FLASH_PREFILL(64, fp8, fp8_t)
FLASH_PREFILL(128, fp8, fp8_t)
