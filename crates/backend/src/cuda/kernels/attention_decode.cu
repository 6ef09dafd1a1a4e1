// Decode attention on tensor cores over a paged bf16 KV cache (an FP8 one: fd8_pass below): sequences with few query
// rows (plain decode: 1; speculative verification or short chunks: up to 15). The data
// contract is attention.cu's (the CPU kernel's, crates/backend/src/cpu/attention.rs):
// q [T, n_heads * hd] f32, caches [num_blocks, n_kv, bs, hd] bf16, out [T, n_heads * hd]
// f32. Uses the helpers of attention_prefill.cu (fp_*), which precedes this file.
//
// Why: decode attention is bound by the bytes of K/V it reads. attention.cu's lane kernel
// (one query row per block, CUDA cores, each query row reading its keys) reached 0.7-1.6
// TB/s on an H100, and 0.4 TB/s for 5-row verification chunks. Here:
// - GQA sharing (FlashInfer-style packing of the query heads that share a KV head into
//   the rows of one tensor-core tile, Ye et al. 2024 "FlashInfer"): one block per
//   (sequence, KV head, key split) takes all g = n_heads / n_kv query heads of that KV
//   head and all q_rows (<= 15) rows of the sequence as the M dimension of
//   mma.sync m16n8k16: packed row pr = r * g + j (query row r, head j of the group), 16
//   per m-tile. Each K/V tile is read from memory once for all of them.
// - Split-K over the keys (flash-decoding, Dao et al. 2023): blockIdx.z takes the z-th
//   of `splits` equal runs of whole 64-key tiles of its sequence's keys, so a small batch
//   still fills the GPU. With splits > 1 each block writes the unnormalised state (m in
//   natural-log units, l, acc[hd]) per (row, head, split) in attention.cu's partial
//   layout, and attention_merge_kernel combines them; with one split the block writes
//   the output. Either way a bf16 copy of the output can go along, for the output
//   projection's GEMM. (Merging in the last block of each group to finish, with an
//   arrival counter and a device-wide fence in every block, instead of a merge kernel,
//   measured no faster at batch 32 and 1.5% slower at batch 1 on an H100.)
// - K/V tiles of 64 keys copied to shared memory with 16-byte cp.async in FA2's schedule
//   (K(j+1) streams in while P.V(j) runs, V(j+1) while Q.K(j+1) runs). The cache row of
//   each key comes from the block table (any block size) one tile ahead, into shared
//   memory, so a warp's copies cover whole key rows and no thread holds per-key
//   addresses. Q.K^T and P.V as in attention_prefill.cu (ldmatrix; P stays in registers
//   as A fragments); online softmax in exp2 units.
// - Work of the 4 warps, chosen per block from its m-tiles (MT = ceil(g * q_rows / 16)):
//   one m-tile: each warp takes 16 of each tile's 64 keys (so a batch-1 decode keeps all
//   four busy); two: two warps per m-tile, 32 keys each. Warps sharing an m-tile keep
//   their own softmax state, merged through shared memory at the end. More m-tiles
//   (g * q_rows > 32, e.g. GQA 4 with 9+ rows) go in passes of two, each streaming the
//   keys again; gridDim.y = n_kv * row_groups spreads the passes over blocks (the host
//   sizes row_groups from a bound on q_rows it knows without reading the device). Why
//   not a warp per m-tile over all 64 keys: 32 more score registers, and registers bound
//   the blocks per SM (Q sits in shared memory, read by ldmatrix, for the same reason).
// - Two kernels per head dim: the one-m-tile kernel (plain decode; 128 registers, 4
//   blocks per SM) and the general one (168 registers, 3 blocks per SM).
// - Sequences with more than `max_q_rows` rows return at once (the prefill kernel's).
//
// Measured on an H100 80GB HBM3 (device-to-device copy 3.0 TB/s read + write), Llama-3.1-8B
// shape (32 query heads, 8 KV heads, head_dim 128, bf16 cache, block size 16, random block
// ids), one attention call incl. the merge, CUDA-graph replays; GB/s of K/V read:
//   batch x context (rows)  lane kernel (attention.cu)   this kernel
//   1 x 4096                24.1 us   697 GB/s           16.7 us  1002 GB/s
//   64 x 4096               816 us   1315 GB/s           389 us   2761 GB/s
//   64 x 576                164 us    919 GB/s           69.1 us  2186 GB/s
//   256 x 1024              671 us   1602 GB/s           390 us   2753 GB/s
//   64 x 4096 (5 rows)      2707 us   397 GB/s           434 us   2473 GB/s
// (split target 4 blocks per SM; 8 and 16 measured within 2% at long contexts, 16 was
// 5% slower at batch 256.) Batch 1 is bound by latency: 512 blocks of one tile each.

#define FD_KEYS 64       // keys per tile
#define FD_WARPS 4
#define FD_OPAD 4        // f32 padding per row of the warps' O in shared memory

// The K/V tiles during the key loop; the warps' O (16 rows each) at the end.
template <int HD>
union __attribute__((aligned(16))) FdShared {
    struct {
        bf16_t k[FD_KEYS][HD + FP_PAD];
        bf16_t v[FD_KEYS][HD + FP_PAD];
    } kv;
    float o[FD_WARPS][16][HD + FD_OPAD];
};

// Everything a pass needs about its block (read once in flash_decode).
struct FdBlock {
    const float* q;
    const void* kc;       // bf16_t or fp8_t: the kernel's cache type
    const void* vc;
    const int* table;     // this sequence's block-table row
    int bs, n_heads, n_kv, kvh, gh;
    int q0, q_rows, m_rows, pos0;
    int lo, hi;           // this block's keys [lo, hi]
    int z, splits, window;
    bool cluster;         // the splits are one thread-block cluster and merge through DSMEM
    float qscale, cap_in, cap_out;
    bool use_cap;
    float* partial;
    float* out;
    bf16_t* out_bf16;     // a bf16 copy of out for the next GEMM (null: none)
};

// Issues the cp.async copies of one 64-key tile of `cache` into `dst`, each key's cache
// row read from shared memory (`srow`, -1: zero-fill; filled one tile ahead): thread t
// copies chunks t + 128 i, so a warp's instruction covers whole key rows (two at
// head_dim 128: four full 128-byte lines) and no thread keeps a row per key in registers.
// (A layout of two threads per key, one row register each, gave every 128-byte line to
// four instructions and ran at 2.14 TB/s against 2.75 here: b64 c4096, H100.)
//
// `part` splits a tile around the PDL wait (fd_pass): FD_PART_OLD copies the keys before
// `nold` (written by earlier steps) and zero-fills, FD_PART_NEW copies the rest (this
// step's keys, which the kernel before this one writes); FD_PART_ALL both.
#define FD_PART_ALL 0
#define FD_PART_OLD 1
#define FD_PART_NEW 2
template <int HD>
__device__ __forceinline__ void fd_load_tile(bf16_t (*dst)[HD + FP_PAD], const bf16_t* __restrict__ cache,
                                               const int* srow, int part = FD_PART_ALL, int nold = 0) {
    constexpr int CHUNKS = HD / 8;
    constexpr int PER_THREAD = FD_KEYS * CHUNKS / (FD_WARPS * 32);
#pragma unroll
    for (int i = 0; i < PER_THREAD; i++) {
        const int c = threadIdx.x + i * FD_WARPS * 32;
        const int key = c / CHUNKS, ch = c % CHUNKS;
        const int row = srow[key];
        const bool fresh = row >= 0 && key >= nold;
        if ((part == FD_PART_OLD && fresh) || (part == FD_PART_NEW && !fresh)) continue;
        const bf16_t* src = row >= 0 ? cache + (long)row * HD + ch * 8 : cache;
        fp_cp_async16(fp_smem_addr(&dst[key][ch * 8]), src, row >= 0 ? 16 : 0);
    }
}

// Thread-block clusters (sm_90): the `splits` blocks of one (sequence, KV head) form a
// cluster along z, so their partial softmax states merge through distributed shared
// memory instead of global partials and a merge kernel (fd_cluster_merge).
__device__ __forceinline__ void fd_cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ unsigned int fd_cluster_rank() {
    unsigned int r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
#endif
    return r;
}

// A float in block `rank`'s shared memory at the address of `p` in ours.
__device__ __forceinline__ float fd_dsmem_load(const float* p, unsigned int rank) {
    float v = 0.0f;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned int a;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(a) : "r"(fp_smem_addr(p)), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(a) : "memory");
#endif
    return v;
}

// A thread's two packed rows (g and g + 8 of its m-tile) in a pass: the highest key each
// may see (-1 for padding rows: everything masked), the lowest (sliding window), and the
// online softmax's running max (log2 units) and sum.
struct FdSoftmax {
    int u_a, u_b, f_a, f_b;
    float m_a, m_b, l_a, l_b;
};

// This thread's two packed rows (g and g + 8 of m-tile `mtile`: query row r = packed row
// / g heads): the highest key each may see (-1 for padding rows: everything masked) and
// the lowest, with the softmax state empty.
__device__ __forceinline__ FdSoftmax fd_rows(const FdBlock& b, int mtile, int g) {
    const int pr_a = mtile * 16 + g, pr_b = pr_a + 8;
    const bool va = pr_a < b.m_rows, vb = pr_b < b.m_rows;
    const int r_a = va ? pr_a / b.gh : 0, r_b = vb ? pr_b / b.gh : 0;
    FdSoftmax st;
    st.u_a = va ? min(b.pos0 + r_a, b.hi) : -1;
    st.u_b = vb ? min(b.pos0 + r_b, b.hi) : -1;
    st.f_a = b.window > 0 ? b.pos0 + r_a - b.window + 1 : 0;
    st.f_b = b.window > 0 ? b.pos0 + r_b - b.window + 1 : 0;
    st.m_a = st.m_b = NEG_INF;
    st.l_a = st.l_b = 0.0f;
    return st;
}

// One tile's scores sc (n8 tiles of this warp's keys from k0 = tile start + the warp's key
// offset, in log2 units) through the softcap and the causal / window / split-end mask (a
// few compares per score; the tile loads dominate), then the online softmax: sc becomes
// P, O and l are rescaled to the new running max.
//
// `mask` false: the caller knows every key of the tile is visible to every real row of
// the block (flash_decode_warp's inner tiles); padding rows (zero Q) then get scores of 0
// instead of -inf, finite state that is never written out.
// O is rescaled only when some row of the warp has a new running max (alpha != 1; an
// unchanged max gives alpha = 1 exactly, and a row that has seen nothing keeps -inf and
// alpha 1): after the first tiles the max rarely moves, and the rescale is NT x 4
// multiplies per thread per tile, as many instructions as the tile's products. (LAZY
// false: always, for flash_decode_ahead, whose one or two tiles per split gain nothing
// and whose head_dim 64 build spilled with the vote.)
template <int NJ, int NT, bool LAZY = true>
__device__ __forceinline__ void fd_softmax_tile(float (&sc)[NJ][4], float (&o)[NT][4], FdSoftmax& st,
                                                const FdBlock& b, int k0, int c, bool mask = true) {
    const unsigned int full = 0xffffffffu;
    if (b.use_cap) {
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) sc[j][e] = b.cap_out * tanhf(sc[j][e] * b.cap_in);
    }
    if (mask) {
#pragma unroll
        for (int j = 0; j < NJ; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int k = k0 + j * 8 + 2 * c + e;
                if (k > st.u_a || k < st.f_a) sc[j][e] = NEG_INF;
                if (k > st.u_b || k < st.f_b) sc[j][2 + e] = NEG_INF;
            }
        }
    }
    float mx_a = NEG_INF, mx_b = NEG_INF;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        mx_a = fmaxf(mx_a, fmaxf(sc[j][0], sc[j][1]));
        mx_b = fmaxf(mx_b, fmaxf(sc[j][2], sc[j][3]));
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(full, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(full, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(full, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(full, mx_b, 2));
    const float mn_a = fmaxf(st.m_a, mx_a), mn_b = fmaxf(st.m_b, mx_b);
    // A row that has seen no key yet keeps max -inf: subtract 0 instead (p = 0).
    const float base_a = mn_a == NEG_INF ? 0.0f : mn_a;
    const float base_b = mn_b == NEG_INF ? 0.0f : mn_b;
    const float alpha_a = LAZY && mn_a == st.m_a ? 1.0f : fp_exp2(st.m_a - base_a);
    const float alpha_b = LAZY && mn_b == st.m_b ? 1.0f : fp_exp2(st.m_b - base_b);
    st.m_a = mn_a;
    st.m_b = mn_b;
    float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        sc[j][0] = fp_exp2(sc[j][0] - base_a);
        sc[j][1] = fp_exp2(sc[j][1] - base_a);
        sc[j][2] = fp_exp2(sc[j][2] - base_b);
        sc[j][3] = fp_exp2(sc[j][3] - base_b);
        sum_a += sc[j][0] + sc[j][1];
        sum_b += sc[j][2] + sc[j][3];
    }
    st.l_a = st.l_a * alpha_a + sum_a;
    st.l_b = st.l_b * alpha_b + sum_b;
#ifndef SLUICE_EAGER_RESCALE
    if (LAZY && !__any_sync(full, alpha_a != 1.0f || alpha_b != 1.0f)) return;
#endif
#pragma unroll
    for (int j = 0; j < NT; j++) {
        o[j][0] *= alpha_a;
        o[j][1] *= alpha_a;
        o[j][2] *= alpha_b;
        o[j][3] *= alpha_b;
    }
}

// Cache row of key k of the block's sequence (-1: past the block's last key, zero-filled
// by fd_load_tile / fd8_load_tile).
__device__ __forceinline__ int fd_row_of(const FdBlock& b, int k) {
    return k <= b.hi ? (b.table[k / b.bs] * b.n_kv + b.kvh) * b.bs + k % b.bs : -1;
}

// S = Q.K^T of a warp's NJ n8 tiles of keys from bf16 shared memory (Q and K fragments
// through ldmatrix at q_addr / k_addr, rows ROW_BYTES apart), in sc.
template <int NJ, int KC, unsigned int ROW_BYTES>
__device__ __forceinline__ void fd_qk_bf16(float (&sc)[NJ][4], unsigned int q_addr, unsigned int k_addr) {
#pragma unroll
    for (int j = 0; j < NJ; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll 1
    for (int ks = 0; ks < KC; ks++) {
        unsigned int qf[4];
        fp_ldmatrix_x4(q_addr + ks * 32, qf[0], qf[1], qf[2], qf[3]);
#pragma unroll
        for (int np = 0; np < NJ / 2; np++) {
            unsigned int b0, b1, b2, b3;
            fp_ldmatrix_x4(k_addr + np * 16 * ROW_BYTES + ks * 32, b0, b1, b2, b3);
            fp_mma(sc[2 * np], qf, b0, b1);
            fp_mma(sc[2 * np + 1], qf, b2, b3);
        }
    }
}

// O += P.V over the same keys: P (sc after fd_softmax_tile) stays in registers as A
// fragments, V's B fragments through ldmatrix.trans at v_addr.
template <int NJ, int HD, unsigned int ROW_BYTES>
__device__ __forceinline__ void fd_pv_bf16(float (&o)[HD / 8][4], const float (&sc)[NJ][4], unsigned int v_addr) {
#pragma unroll
    for (int kk = 0; kk < NJ / 2; kk++) {
        unsigned int pa[4];
        pa[0] = fp_pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
        pa[1] = fp_pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
        pa[2] = fp_pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        pa[3] = fp_pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < HD / 16; dp++) {
            unsigned int b0, b1, b2, b3;
            fp_ldmatrix_x4_trans(v_addr + kk * 16 * ROW_BYTES + dp * 32, b0, b1, b2, b3);
            fp_mma(o[2 * dp], pa, b0, b1);
            fp_mma(o[2 * dp + 1], pa, b2, b3);
        }
    }
}

// A warp's O accumulators (rows g and g + 8 of its m-tile) into its slot of shared memory.
template <int HD>
__device__ __forceinline__ void fd_store_o(float (*so)[16][HD + FD_OPAD], const float (&o)[HD / 8][4], int warp,
                                           int g, int c) {
#pragma unroll
    for (int j = 0; j < HD / 8; j++) {
        *reinterpret_cast<float2*>(&so[warp][g][j * 8 + 2 * c]) = make_float2(o[j][0], o[j][1]);
        *reinterpret_cast<float2*>(&so[warp][g + 8][j * 8 + 2 * c]) = make_float2(o[j][2], o[j][3]);
    }
}

// The end of a pass, after each warp has written its O (unnormalised, 16 rows) to `so`:
// each warp's m and l (summed over the row's 4 lanes) to shared memory, then the KW warps
// of each m-tile merged, and the output (one split), the partial state (the merge
// kernel's) or the cluster merge written.
template <int HD, int KW>
__device__ __forceinline__ void fd_merge_warps(float (*so)[16][HD + FD_OPAD], float (*s_m)[16], float (*s_l)[16],
                                               float* c_m, float* c_l, const FdBlock& b, int mt0,
                                               float m_a, float m_b, float l_a, float l_b) {
    constexpr int MW = FD_WARPS / KW;
    const unsigned int full = 0xffffffffu;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int ld = b.n_heads * HD;
    l_a += __shfl_xor_sync(full, l_a, 1);
    l_a += __shfl_xor_sync(full, l_a, 2);
    l_b += __shfl_xor_sync(full, l_b, 1);
    l_b += __shfl_xor_sync(full, l_b, 2);
    if (c == 0) {
        s_m[warp][g] = m_a;
        s_m[warp][g + 8] = m_b;
        s_l[warp][g] = l_a;
        s_l[warp][g + 8] = l_b;
    }
    __syncthreads();
    trace_mark(2);

    // Merge the KW warps of each m-tile; write the output (one split) or the partial state.
    const int rows_here = min(b.m_rows - mt0 * 16, MW * 16);
    for (int idx = threadIdx.x; idx < rows_here * HD; idx += FD_WARPS * 32) {
        const int lr = idx / HD, d = idx % HD;
        const int mt = lr >> 4, rr = lr & 15;
        float mx = NEG_INF;
#pragma unroll
        for (int kg = 0; kg < KW; kg++) mx = fmaxf(mx, s_m[mt + MW * kg][rr]);
        float num = 0.0f, den = 0.0f;
#pragma unroll
        for (int kg = 0; kg < KW; kg++) {
            const int w = mt + MW * kg;
            const float mw = s_m[w][rr];
            if (mw == NEG_INF) continue;
            const float f = fp_exp2(mw - mx);
            num += so[w][rr][d] * f;
            den += s_l[w][rr] * f;
        }
        const int pr = mt0 * 16 + lr;
        const int r = pr / b.gh, h = b.kvh * b.gh + pr % b.gh;
        const long t = b.q0 + r;
        if (b.cluster) {
            // This block's state stays in shared memory for the cluster merge: num in
            // place of the first warp's O of the m-tile (only this thread reads or writes
            // that element), m (log2 units) and l per row beside it.
            so[mt][rr][d] = num;
            if (d == 0) {
                c_m[lr] = den > 0.0f ? mx : NEG_INF;
                c_l[lr] = den;
            }
        } else if (b.splits > 1) {
            float* pp = b.partial + ((t * b.n_heads + h) * b.splits + b.z) * (HD + 2);
            if (d == 0) {
                // m back to natural-log units (the merge kernel's): scores were in log2 units.
                pp[0] = den > 0.0f ? mx * (1.0f / FP_LOG2E) : NEG_INF;
                pp[1] = den;
            }
            pp[2 + d] = num;
        } else {
            const float y = den > 0.0f ? num / den : 0.0f;
            b.out[t * ld + h * HD + d] = y;
            if (b.out_bf16) b.out_bf16[t * ld + h * HD + d] = f32_to_bf16(y);
        }
    }
    if (b.cluster) {
        // Every block's state is in its shared memory: each block merges its share of the
        // (row, d) outputs over the cluster's blocks, then waits until all are done
        // reading before shared memory is reused or the block exits.
        fd_cluster_sync();
        trace_mark(3);
        const unsigned int rank = fd_cluster_rank();
        for (int idx = rank * FD_WARPS * 32 + threadIdx.x; idx < rows_here * HD; idx += b.splits * FD_WARPS * 32) {
            const int lr = idx / HD, d = idx % HD;
            const int mt = lr >> 4, rr = lr & 15;
            float mx = NEG_INF;
            for (int q = 0; q < b.splits; q++) mx = fmaxf(mx, fd_dsmem_load(&c_m[lr], q));
            float num = 0.0f, den = 0.0f;
            if (mx != NEG_INF) {
                for (int q = 0; q < b.splits; q++) {
                    const float mq = fd_dsmem_load(&c_m[lr], q);
                    if (mq == NEG_INF) continue;
                    const float f = fp_exp2(mq - mx);
                    num += fd_dsmem_load(&so[mt][rr][d], q) * f;
                    den += fd_dsmem_load(&c_l[lr], q) * f;
                }
            }
            const int pr = mt0 * 16 + lr;
            const int r = pr / b.gh, h = b.kvh * b.gh + pr % b.gh;
            const long t = b.q0 + r;
            const float y = den > 0.0f ? num / den : 0.0f;
            b.out[t * ld + h * HD + d] = y;
            if (b.out_bf16) b.out_bf16[t * ld + h * HD + d] = f32_to_bf16(y);
        }
        trace_mark(4);
        fd_cluster_sync();
        trace_mark(5);
    }
    __syncthreads();  // shared memory is reused by the next pass
}

// One pass over the block's keys for m-tiles mt0 .. mt0 + 4 / KW - 1 (those that exist):
// KW warps share each m-tile, each taking 64 / KW keys of every tile.
//
// PDL: the block's first pass (`waited` false) reads the block table and starts copying
// its first tile's keys from earlier steps before pdl_entry(): the metadata and those
// keys are not written during a step (only positions pos0 and later are: this step's
// K/V, by the kernel before this one), so the table lookups and the first K/V bytes
// overlap the previous kernel instead of following it. Q and this step's keys are read
// after the wait.
template <int HD, int KW>
__device__ __forceinline__ void fd_pass(FdShared<HD>& sh, bf16_t (*sq)[HD + FP_PAD], int (*srow)[FD_KEYS],
                                        float (*s_m)[16], float (*s_l)[16], float* c_m, float* c_l,
                                        const FdBlock& b, int mt0, bool& waited) {
    constexpr int MW = FD_WARPS / KW;    // m-tiles in flight
    constexpr int NK = FD_KEYS / KW;     // keys per warp per tile
    constexpr int NJ = NK / 8;           // n8 tiles of S per warp
    constexpr int KC = HD / 16;          // k-steps of Q.K
    constexpr int NT = HD / 8;           // n8 tiles of O
    constexpr unsigned int ROW_BYTES = (HD + FP_PAD) * 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int mtl = warp % MW, koff = (warp / MW) * NK;
    const int mtile = mt0 + mtl;
    const bool w_active = mtile * 16 < b.m_rows;
    const int ld = b.n_heads * HD;

    FdSoftmax st = fd_rows(b, mtile, g);
    float o[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

    // The rows of tile j sit in srow[j & 1], written one tile ahead by threads 0..63.
    const int n_tiles = b.lo <= b.hi ? (b.hi - b.lo) / FD_KEYS + 1 : 0;
    if (n_tiles > 0) {
        if (threadIdx.x < FD_KEYS) {
            srow[0][threadIdx.x] = fd_row_of(b, b.lo + threadIdx.x);
            srow[1][threadIdx.x] = fd_row_of(b, b.lo + FD_KEYS + threadIdx.x);
        }
        __syncthreads();
    }
    // Before the wait (first pass only) the keys of earlier steps; after it the rest.
    // Group 1 = K(0) and V(0) but this step's, and this step's K(0); group 2 = this
    // step's V(0): the key loop's first wait (K) then also covers most of V(0).
    const bf16_t* kc = static_cast<const bf16_t*>(b.kc);
    const bf16_t* vc = static_cast<const bf16_t*>(b.vc);
    const int nold = waited ? FD_KEYS : b.pos0 - b.lo;
    if (n_tiles > 0) {
        fd_load_tile<HD>(sh.kv.k, kc, srow[0], FD_PART_OLD, nold);
        fd_load_tile<HD>(sh.kv.v, vc, srow[0], FD_PART_OLD, nold);
    }
    if (!waited) pdl_entry();
    waited = true;
    if (n_tiles > 0) {
        fd_load_tile<HD>(sh.kv.k, kc, srow[0], FD_PART_NEW, nold);
        fp_cp_async_commit();
        fd_load_tile<HD>(sh.kv.v, vc, srow[0], FD_PART_NEW, nold);
        fp_cp_async_commit();
    }
    // Q rows of this pass into shared memory (while the first tile streams in), scaled
    // and rounded to bf16, padding rows 0; the warps read their A fragments from there
    // with ldmatrix (registers are the occupancy limit, shared memory is not).
    // Q rows into shared memory. At head_dim 64: two rows' loads, then their stores. The
    // compiler cannot move a global load of the generic q pointer above a shared-memory
    // store, so one loop of both pays a full load latency per row, after the wait, on
    // the step's critical path: two loads per thread at batch 1 with 4 query heads per KV
    // head. On an H200 (session 21, same call) the 1B shape went from 1,294 to 1,318
    // tokens/s; the same change at head_dim 128, whose kernel sits at 128 registers with
    // spills, lost 0.35% on the 8B shape, so that kernel keeps the one loop.
    constexpr int Q_TOTAL = MW * 16 * (HD / 2);
    if constexpr (HD <= 64) {
        for (int base = threadIdx.x; base < Q_TOTAL; base += 2 * FD_WARPS * 32) {
            float2 xq[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int idx = base + i * FD_WARPS * 32;
                const int lr = idx / (HD / 2), d = 2 * (idx % (HD / 2));
                const int pr = mt0 * 16 + lr;
                xq[i] = make_float2(0.0f, 0.0f);
                if (idx < Q_TOTAL && pr < b.m_rows) {
                    const int r = pr / b.gh, h = b.kvh * b.gh + pr % b.gh;
                    xq[i] = *reinterpret_cast<const float2*>(b.q + (long)(b.q0 + r) * ld + h * HD + d);
                }
            }
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int idx = base + i * FD_WARPS * 32;
                const int lr = idx / (HD / 2), d = 2 * (idx % (HD / 2));
                if (idx < Q_TOTAL)
                    *reinterpret_cast<unsigned int*>(&sq[lr][d]) =
                        fp_pack_bf16(xq[i].x * b.qscale, xq[i].y * b.qscale);
            }
        }
    } else {
        for (int idx = threadIdx.x; idx < Q_TOTAL; idx += FD_WARPS * 32) {
            const int lr = idx / (HD / 2), d = 2 * (idx % (HD / 2));
            const int pr = mt0 * 16 + lr;
            float2 x = make_float2(0.0f, 0.0f);
            if (pr < b.m_rows) {
                const int r = pr / b.gh, h = b.kvh * b.gh + pr % b.gh;
                x = *reinterpret_cast<const float2*>(b.q + (long)(b.q0 + r) * ld + h * HD + d);
            }
            *reinterpret_cast<unsigned int*>(&sq[lr][d]) = fp_pack_bf16(x.x * b.qscale, x.y * b.qscale);
        }
    }
    trace_mark(0);

    const unsigned int q_addr = fp_smem_addr(&sq[mtl * 16 + (lane & 15)][(lane >> 4) * 8]);
    const unsigned int k_addr =
        fp_smem_addr(&sh.kv.k[koff + (lane >> 4) * 8 + (lane & 7)][((lane >> 3) & 1) * 8]);
    const unsigned int v_addr =
        fp_smem_addr(&sh.kv.v[koff + ((lane >> 3) & 1) * 8 + (lane & 7)][(lane >> 4) * 8]);

    for (int jt = 0; jt < n_tiles; jt++) {
        const int kt = b.lo + jt * FD_KEYS;
        fp_cp_async_wait1();  // K(jt) has landed (V(jt) may still be in flight)
        __syncthreads();
        // Rows of tile jt + 2, stored at the end of this iteration (the load's latency hides
        // behind this tile's work).
        const int r_next =
            threadIdx.x < FD_KEYS && jt + 2 < n_tiles ? fd_row_of(b, kt + 2 * FD_KEYS + threadIdx.x) : -1;

        float sc[NJ][4];
        if (w_active) {
            fd_qk_bf16<NJ, KC, ROW_BYTES>(sc, q_addr, k_addr);
            fd_softmax_tile<NJ, NT>(sc, o, st, b, kt + koff, c);
        }
        __syncthreads();  // every warp is done with K(jt)
        if (jt + 1 < n_tiles) fd_load_tile<HD>(sh.kv.k, static_cast<const bf16_t*>(b.kc), srow[(jt + 1) & 1]);
        fp_cp_async_commit();
        fp_cp_async_wait1();  // V(jt) has landed (K(jt + 1) may still be in flight)
        __syncthreads();

        if (w_active) fd_pv_bf16<NJ, HD, ROW_BYTES>(o, sc, v_addr);
        __syncthreads();  // every warp is done with V(jt)
        if (jt + 1 < n_tiles) fd_load_tile<HD>(sh.kv.v, static_cast<const bf16_t*>(b.vc), srow[(jt + 1) & 1]);
        fp_cp_async_commit();
        // Tile jt's rows are no longer read (its loads were issued last iteration).
        if (threadIdx.x < FD_KEYS && jt + 2 < n_tiles) srow[jt & 1][threadIdx.x] = r_next;
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncthreads();  // the tiles' shared memory becomes the warps' O
    trace_mark(1);

    fd_store_o<HD>(sh.o, o, warp, g, c);
    fd_merge_warps<HD, KW>(sh.o, s_m, s_l, c_m, c_l, b, mt0, st.m_a, st.m_b, st.l_a, st.l_b);
}

// ---- FP8 (E4M3) cache: the same pass over raw FP8 tiles -------------------------------
// (`--kv-cache-dtype fp8`, per-tensor scale 1.) Widening each tile to f16 in shared
// memory before the bf16 pass's ldmatrix kept that pass's one-tile-ahead pipeline, and
// so its bytes in flight per block halved with the tile: on an H100 (8B shape) the step
// gained only 3-6% over bf16 at 512-4,000 keys, K/V read at ~1.4 TB/s. Here the tiles
// stay FP8 in shared memory, two stages each for K and V (tile j + 1 streams in while
// tile j is used, as many bytes in flight as the bf16 pass), and the tensor cores read
// them through ldmatrix with the E4M3 -> f16 widening in registers (fp8x4_to_f16x2: the
// f16 is the value times 2^-8; scores and O are scaled back by 2^8 in f32):
// - Q.K^T: ldmatrix (.b16, no .trans) over rows of 16 FP8 keys' dimensions gives lane
//   (g, c) four consecutive dimensions 4c..4c+3 of key g: one f16x2 for k indices 2c,
//   2c+1 and one for 2c+8, 2c+9 of the mma, which then sums the dimensions in a permuted
//   order. Q is stored in shared memory in that same order (fd8_q_slot), so the sum is
//   the dot product.
// - P.V: ldmatrix .trans over the same rows gives lane (g, c) the byte pairs of
//   dimensions 2g, 2g + 1 for keys 2c and 2c + 1; regrouped by byte_perm they are the B
//   fragments of two n8 tiles of O, one of the even dimensions and one of the odd (so
//   one x4 feeds four n8 tiles). O's columns are permuted accordingly (fd8_o_dim).
// - Rows padded to HD + 16 bytes: the 8 rows of each ldmatrix matrix fall in distinct
//   banks.
#define FD8_PAD 16

template <int HD>
union __attribute__((aligned(16))) FdSharedF8 {
    struct {
        fp8_t k[2][FD_KEYS][HD + FD8_PAD];
        fp8_t v[2][FD_KEYS][HD + FD8_PAD];
    } kv;
    float o[FD_WARPS][16][HD + FD_OPAD];
};

// Q's dimension d (even) of a 16-dimension k-step goes to this slot: the mma's k index
// that meets key dimension d in fd8_pass's K fragments (2c, 2c+1 <- 4c, 4c+1; 2c+8, 2c+9
// <- 4c+2, 4c+3).
__device__ __forceinline__ int fd8_q_slot(int d) {
    const int p = d & 15;
    return (d & ~15) + (p >> 1) + ((p & 2) ? 7 : 0);
}

// The head dimension of O accumulator tile t, column 2c + e (e = 0, 1), in fd8_pass:
// tile t = 4 db + 2 s + parity covers dimensions 32 db + 16 s + 2 col + parity.
__device__ __forceinline__ int fd8_o_dim(int t, int c, int e) {
    return 32 * (t >> 2) + 16 * ((t >> 1) & 1) + 4 * c + 2 * e + (t & 1);
}

// Two codes of w (bytes `sel` picks into positions 1 and 3) as an f16x2 of their values
// times 2^-8 (see fp8x4_to_f16x2).
__device__ __forceinline__ unsigned int fd8_pair(unsigned int w, unsigned int sel) {
    const unsigned int a = __byte_perm(w, 0u, sel);
    return (a & 0x80008000u) | ((a >> 1) & 0x3F803F80u);
}

// Issues the cp.async copies of one 64-key FP8 tile: 16-byte chunks, a warp's instruction
// covering four rows of head_dim 128.
// The widening of the decode kernels (fd8_pass, flash_decode_warp). On sm_89+ the
// hardware conversion (cvt.rn.f16x2.e4m3x2: exact f16 values, two instructions per four
// codes); before that, or with SLUICE_FD8_SOFT defined (an experiment:
// SLUICE_CUDA_DEFINES), fp8x4_to_f16x2's bit moves (the value times 2^-8, six
// instructions per four codes, eight for P.V's regrouping). FD8_SCALE takes the widening's
// scale back out of scores and O. The decode attention at many long contexts is bound by
// its instructions per key, not by its bytes (docs/BENCHMARKS.md, session 29).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890 && !defined(SLUICE_FD8_SOFT)
#define FD8_HW 1
#define FD8_SCALE 1.0f
#else
#define FD8_HW 0
#define FD8_SCALE 256.0f
#endif

// Codes 0 and 1 of w as the f16x2 lo, codes 2 and 3 as hi (times 2^-8 without FD8_HW).
__device__ __forceinline__ void fd8_widen(unsigned int w, unsigned int& lo, unsigned int& hi) {
#if FD8_HW
    asm("{.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;}"
        : "=r"(lo), "=r"(hi)
        : "r"(w));
#else
    fp8x4_to_f16x2(w, lo, hi);
#endif
}

// P.V's B fragments from a word of ldmatrix .trans (dimensions 2g, 2g + 1 of keys 2c in
// bytes 0, 1 and of key 2c + 1 in bytes 2, 3): `even` = dimension 2g of both keys as an
// f16x2, `odd` = dimension 2g + 1.
__device__ __forceinline__ void fd8_pairs(unsigned int w, unsigned int& even, unsigned int& odd) {
#if FD8_HW
    unsigned int lo, hi;
    fd8_widen(w, lo, hi);
    even = __byte_perm(lo, hi, 0x5410);
    odd = __byte_perm(lo, hi, 0x7632);
#else
    even = fd8_pair(w, 0x2404);
    odd = fd8_pair(w, 0x3414);
#endif
}

// O's n8 tiles 4 db .. 4 db + 3 (dimensions 32 db .. 32 db + 31, fd8_o_dim) += P.V over 16
// FP8 keys: one ldmatrix .trans x4 at v_addr (keys 0-7 / 8-15 of dimensions 32 db + 0..15
// in matrices 0 / 1, + 16..31 in 2 / 3), its words regrouped by fd8_pairs into the B
// fragments of an even and an odd tile each. pa: P's A fragments (f16).
template <int NT>
__device__ __forceinline__ void fd8_pv_step(float (&o)[NT][4], const unsigned int (&pa)[4], unsigned int v_addr,
                                            int db) {
    unsigned int r0, r1, r2, r3;
    fp_ldmatrix_x4_trans(v_addr, r0, r1, r2, r3);
    unsigned int e0, o0, e1, o1, e2, o2, e3, o3;
    fd8_pairs(r0, e0, o0);
    fd8_pairs(r1, e1, o1);
    fd8_pairs(r2, e2, o2);
    fd8_pairs(r3, e3, o3);
    fp_mma_f16(o[4 * db], pa, e0, e1);
    fp_mma_f16(o[4 * db + 1], pa, o0, o1);
    fp_mma_f16(o[4 * db + 2], pa, e2, e3);
    fp_mma_f16(o[4 * db + 3], pa, o2, o3);
}

template <int HD>
__device__ __forceinline__ void fd8_load_tile(fp8_t (*dst)[HD + FD8_PAD], const fp8_t* __restrict__ cache,
                                              const int* srow) {
    constexpr int CHUNKS = HD / 16;
    constexpr int PER_THREAD = FD_KEYS * CHUNKS / (FD_WARPS * 32);
#pragma unroll
    for (int i = 0; i < PER_THREAD; i++) {
        const int c = threadIdx.x + i * FD_WARPS * 32;
        const int key = c / CHUNKS, ch = c % CHUNKS;
        const int row = srow[key];
        const fp8_t* src = row >= 0 ? cache + (long)row * HD + ch * 16 : cache;
        fp_cp_async16(fp_smem_addr(&dst[key][ch * 16]), src, row >= 0 ? 16 : 0);
    }
}

template <int HD, int KW>
__device__ __forceinline__ void fd8_pass(FdSharedF8<HD>& sh, bf16_t (*sq)[HD + FP_PAD], int (*srow)[FD_KEYS],
                                         float (*s_m)[16], float (*s_l)[16], float* c_m, float* c_l,
                                         const FdBlock& b, int mt0) {
    constexpr int MW = FD_WARPS / KW;    // m-tiles in flight
    constexpr int NK = FD_KEYS / KW;     // keys per warp per tile
    constexpr int NJ = NK / 8;           // n8 tiles of S per warp
    constexpr int KC = HD / 16;          // k-steps of Q.K
    constexpr int NT = HD / 8;           // n8 tiles of O
    constexpr unsigned int ROW = HD + FD8_PAD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int mtl = warp % MW, koff = (warp / MW) * NK;
    const int mtile = mt0 + mtl;
    const bool w_active = mtile * 16 < b.m_rows;
    const int ld = b.n_heads * HD;
    const fp8_t* kc = static_cast<const fp8_t*>(b.kc);
    const fp8_t* vc = static_cast<const fp8_t*>(b.vc);

    FdSoftmax st = fd_rows(b, mtile, g);
    float o[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

    // Tiles 0 and 1 in flight (one cp.async group each, K and V together); tile j lives
    // in stage j & 1, its rows in srow[j & 1].
    const int n_tiles = b.lo <= b.hi ? (b.hi - b.lo) / FD_KEYS + 1 : 0;
    if (n_tiles > 0) {
        if (threadIdx.x < FD_KEYS) {
            srow[0][threadIdx.x] = fd_row_of(b, b.lo + threadIdx.x);
            srow[1][threadIdx.x] = fd_row_of(b, b.lo + FD_KEYS + threadIdx.x);
        }
        __syncthreads();
        fd8_load_tile<HD>(sh.kv.k[0], kc, srow[0]);
        fd8_load_tile<HD>(sh.kv.v[0], vc, srow[0]);
        fp_cp_async_commit();
        if (n_tiles > 1) {
            fd8_load_tile<HD>(sh.kv.k[1], kc, srow[1]);
            fd8_load_tile<HD>(sh.kv.v[1], vc, srow[1]);
        }
        fp_cp_async_commit();
    }
    // Q rows of this pass, scaled, as f16 in fd8_q_slot order.
    for (int idx = threadIdx.x; idx < MW * 16 * (HD / 2); idx += FD_WARPS * 32) {
        const int lr = idx / (HD / 2), d = 2 * (idx % (HD / 2));
        const int pr = mt0 * 16 + lr;
        float2 x = make_float2(0.0f, 0.0f);
        if (pr < b.m_rows) {
            const int r = pr / b.gh, h = b.kvh * b.gh + pr % b.gh;
            x = *reinterpret_cast<const float2*>(b.q + (long)(b.q0 + r) * ld + h * HD + d);
        }
        *reinterpret_cast<unsigned int*>(&sq[lr][fd8_q_slot(d)]) = fp_pack_f16(x.x * b.qscale, x.y * b.qscale);
    }

    const unsigned int q_addr = fp_smem_addr(&sq[mtl * 16 + (lane & 15)][(lane >> 4) * 8]);
    // Matrix i of an x4 (lanes 8i..8i+7 give its rows): keys 8 (i & 1).., bytes 16 (i >> 1)..
    const int tile_row = koff + ((lane >> 3) & 1) * 8 + (lane & 7);
    const int tile_col = (lane >> 4) * 16;

    for (int jt = 0; jt < n_tiles; jt++) {
        const int kt = b.lo + jt * FD_KEYS;
        const int stage = jt & 1;
        fp_cp_async_wait1();  // tile jt has landed (tile jt + 1 may still be in flight)
        __syncthreads();
        const int r_next =
            threadIdx.x < FD_KEYS && jt + 2 < n_tiles ? fd_row_of(b, kt + 2 * FD_KEYS + threadIdx.x) : -1;

        if (w_active) {
            const unsigned int k_addr = fp_smem_addr(&sh.kv.k[stage][tile_row][tile_col]);
            const unsigned int v_addr = fp_smem_addr(&sh.kv.v[stage][tile_row][tile_col]);
            float sc[NJ][4];
#pragma unroll
            for (int j = 0; j < NJ; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll 1
            for (int k2 = 0; k2 < KC / 2; k2++) {
                unsigned int q0[4], q1[4];
                fp_ldmatrix_x4(q_addr + (2 * k2) * 32, q0[0], q0[1], q0[2], q0[3]);
                fp_ldmatrix_x4(q_addr + (2 * k2 + 1) * 32, q1[0], q1[1], q1[2], q1[3]);
#pragma unroll
                for (int np = 0; np < NJ / 2; np++) {
                    unsigned int r0, r1, r2, r3;
                    fp_ldmatrix_x4(k_addr + np * 16 * ROW + k2 * 32, r0, r1, r2, r3);
                    unsigned int lo, hi;
                    fd8_widen(r0, lo, hi);
                    fp_mma_f16(sc[2 * np], q0, lo, hi);
                    fd8_widen(r1, lo, hi);
                    fp_mma_f16(sc[2 * np + 1], q0, lo, hi);
                    fd8_widen(r2, lo, hi);
                    fp_mma_f16(sc[2 * np], q1, lo, hi);
                    fd8_widen(r3, lo, hi);
                    fp_mma_f16(sc[2 * np + 1], q1, lo, hi);
                }
            }
#pragma unroll
            for (int j = 0; j < NJ; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) sc[j][e] *= FD8_SCALE;
            fd_softmax_tile<NJ, NT>(sc, o, st, b, kt + koff, c);
#pragma unroll
            for (int kk = 0; kk < NJ / 2; kk++) {
                unsigned int pa[4];
                pa[0] = fp_pack_f16(sc[2 * kk][0], sc[2 * kk][1]);
                pa[1] = fp_pack_f16(sc[2 * kk][2], sc[2 * kk][3]);
                pa[2] = fp_pack_f16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
                pa[3] = fp_pack_f16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
                for (int db = 0; db < HD / 32; db++) fd8_pv_step<NT>(o, pa, v_addr + kk * 16 * ROW + db * 32, db);
            }
        }
        // Tile jt's rows are no longer read (its loads were issued two tiles ago).
        if (threadIdx.x < FD_KEYS && jt + 2 < n_tiles) srow[stage][threadIdx.x] = r_next;
        __syncthreads();  // every warp is done with this stage; srow[stage] holds tile jt + 2's rows
        if (jt + 2 < n_tiles) {
            fd8_load_tile<HD>(sh.kv.k[stage], kc, srow[stage]);
            fd8_load_tile<HD>(sh.kv.v[stage], vc, srow[stage]);
        }
        fp_cp_async_commit();
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncthreads();  // the tiles' shared memory becomes the warps' O

#pragma unroll
    for (int t = 0; t < NT; t++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int d = fd8_o_dim(t, c, e);
            sh.o[warp][g][d] = o[t][e] * FD8_SCALE;
            sh.o[warp][g + 8][d] = o[t][2 + e] * FD8_SCALE;
        }
    }
    fd_merge_warps<HD, KW>(sh.o, s_m, s_l, c_m, c_l, b, mt0, st.m_a, st.m_b, st.l_a, st.l_b);
}

// The shared memory of a block and the pass that uses it, by cache type.
template <int HD, typename KV> struct FdKind {
    typedef FdShared<HD> Smem;
    static const bool PREWAIT = true;  // fd_pass calls pdl_entry() (see there)
    template <int KW>
    __device__ __forceinline__ static void pass(Smem& sh, bf16_t (*sq)[HD + FP_PAD], int (*srow)[FD_KEYS],
                                                float (*s_m)[16], float (*s_l)[16], float* c_m, float* c_l,
                                                const FdBlock& b, int mt0, bool& waited) {
        fd_pass<HD, KW>(sh, sq, srow, s_m, s_l, c_m, c_l, b, mt0, waited);
    }
};
template <int HD> struct FdKind<HD, fp8_t> {
    typedef FdSharedF8<HD> Smem;
    static const bool PREWAIT = false;
    // (The FP8 pass waits before it reads anything: flash_decode calls pdl_entry() first.)
    template <int KW>
    __device__ __forceinline__ static void pass(Smem& sh, bf16_t (*sq)[HD + FP_PAD], int (*srow)[FD_KEYS],
                                                float (*s_m)[16], float (*s_l)[16], float* c_m, float* c_l,
                                                const FdBlock& b, int mt0, bool&) {
        fd8_pass<HD, KW>(sh, sq, srow, s_m, s_l, c_m, c_l, b, mt0);
    }
};

// This block's FdBlock from the kernel's arguments (false: its sequence is not one this
// kernel takes). Reads only step metadata (written before the step), so it may run
// before the PDL wait.
template <typename KV>
__device__ __forceinline__ bool fd_block(FdBlock& b, const float* __restrict__ q, const KV* __restrict__ kc,
                                         const KV* __restrict__ vc, const int* __restrict__ query_start,
                                         const int* __restrict__ context_lens,
                                         const int* __restrict__ block_tables, int bt_cols, int bs, int n_heads,
                                         int n_kv, float scale, int window, float softcap, int max_q_rows,
                                         float* __restrict__ partial, float* __restrict__ out,
                                         bf16_t* __restrict__ out_bf16, int cluster) {
    const int s = blockIdx.x;
    const int row_groups = gridDim.y / n_kv;
    b.q0 = query_start[s];
    b.q_rows = query_start[s + 1] - b.q0;
    if (b.q_rows <= 0 || b.q_rows > max_q_rows) return false;
    b.q = q;
    b.kc = kc;
    b.vc = vc;
    b.table = block_tables + (long)s * bt_cols;
    b.bs = bs;
    b.n_heads = n_heads;
    b.n_kv = n_kv;
    b.kvh = blockIdx.y / row_groups;
    b.gh = n_heads / n_kv;
    b.m_rows = b.gh * b.q_rows;
    const int ctx = context_lens[s];
    b.pos0 = ctx - b.q_rows;
    b.z = blockIdx.z;
    b.splits = gridDim.z;
    b.cluster = cluster != 0 && b.splits > 1;
    b.window = window;
    // Keys any row of this block sees, within this split: the sequence's own keys cut
    // into `splits` runs of whole tiles. (Cutting the grid's bound on the context, the
    // block table's width, instead left all the keys of a 576-key context to the first
    // of 2-3 splits at batch 32-64: one busy block per (sequence, KV head).)
    const int key_lo = window > 0 ? max(0, b.pos0 - window + 1) : 0;
    const int tiles = (ctx - key_lo + FD_KEYS - 1) / FD_KEYS;
    const int per_split = (tiles + b.splits - 1) / b.splits * FD_KEYS;
    b.lo = key_lo + b.z * per_split;
    b.hi = min(ctx - 1, b.lo + per_split - 1);
    b.use_cap = softcap > 0.0f;
    // Scores in log2 units, so the softmax uses exp2: Q scaled by log2 e, or the cap's
    // output when there is a softcap.
    b.qscale = b.use_cap ? scale : scale * FP_LOG2E;
    b.cap_out = softcap * FP_LOG2E;
    b.cap_in = b.use_cap ? 1.0f / softcap : 0.0f;
    b.partial = partial;
    b.out = out;
    b.out_bf16 = out_bf16;

    return true;
}

template <int HD, bool MULTI, typename KV>
__device__ void flash_decode(const float* __restrict__ q, const KV* __restrict__ kc,
                             const KV* __restrict__ vc, const int* __restrict__ query_start,
                             const int* __restrict__ context_lens, const int* __restrict__ block_tables,
                             int bt_cols, int bs, int n_heads, int n_kv, float scale, int window,
                             float softcap, int max_q_rows, float* __restrict__ partial,
                             float* __restrict__ out, bf16_t* __restrict__ out_bf16, int cluster) {
    typedef FdKind<HD, KV> Kind;
    __shared__ typename Kind::Smem sh;
    __shared__ float c_m[32], c_l[32];
    __shared__ __attribute__((aligned(16))) bf16_t sq[32][HD + FP_PAD];
    __shared__ int srow[2][FD_KEYS];
    __shared__ float s_m[FD_WARPS][16];
    __shared__ float s_l[FD_WARPS][16];
    // Until pdl_entry(), only step metadata and earlier steps' keys may be read (fd_pass).
    bool waited = !Kind::PREWAIT;
    if (waited) pdl_entry();
    FdBlock b;
    if (!fd_block(b, q, kc, vc, query_start, context_lens, block_tables, bt_cols, bs, n_heads, n_kv, scale,
                  window, softcap, max_q_rows, partial, out, out_bf16, cluster))
        return;
    const int row_groups = gridDim.y / n_kv;

    const int mt = (b.m_rows + 15) / 16;
    const int rg = blockIdx.y % row_groups;
    if (MULTI) {
        // Passes of at most two m-tiles; row group rg takes passes rg, rg + row_groups, ...
        for (int mt0 = 2 * rg; mt0 < mt; mt0 += 2 * row_groups) {
            if (mt - mt0 == 1) Kind::template pass<4>(sh, sq, srow, s_m, s_l, c_m, c_l, b, mt0, waited);
            else Kind::template pass<2>(sh, sq, srow, s_m, s_l, c_m, c_l, b, mt0, waited);
        }
    } else {
        // The host expects one m-tile (g * q_rows <= 16); more would take a pass each.
        for (int mt0 = rg; mt0 < mt; mt0 += row_groups)
            Kind::template pass<4>(sh, sq, srow, s_m, s_l, c_m, c_l, b, mt0, waited);
    }
    if (!waited) pdl_entry();
}

// Two kernels per head dim: for steps whose sequences all have g * q_rows <= 16 (plain
// decode) only the one-m-tile path, which fits 4 blocks per SM (128 registers); the
// general one also has the two-m-tile path and fits 3.
// (Held to 5 blocks per SM with __launch_bounds__ — 96 registers, 5 x 43.5 KB of shared
// memory — the one-m-tile kernel made decode steps slower on an H100, also at head_dim 64
// where nothing spilled: 8B shape b32 7.48 -> 7.93 ms, b64 8.48 -> 9.23 ms; 1B shape b64
// 1.94 -> 2.09 ms, 512 + 128 tokens.)
#define FLASH_DECODE(HD, NAME, MULTI, MINB, KVN, KV) \
extern "C" __global__ void __launch_bounds__(FD_WARPS * 32, MINB) flash_decode##NAME##_##KVN##_d##HD( \
    const float* q, const KV* kc, const KV* vc, const int* query_start, \
    const int* context_lens, const int* block_tables, int bt_cols, int bs, int n_heads, int n_kv, \
    float scale, int window, float softcap, int max_q_rows, float* partial, float* out, \
    bf16_t* out_bf16, int cluster) { \
    flash_decode<HD, MULTI, KV>(q, kc, vc, query_start, context_lens, block_tables, bt_cols, bs, \
                            n_heads, n_kv, scale, window, softcap, max_q_rows, partial, out, \
                            out_bf16, cluster); \
}
FLASH_DECODE(64, , false, 4, bf16, bf16_t)
FLASH_DECODE(128, , false, 4, bf16, bf16_t)
FLASH_DECODE(64, _multi, true, 3, bf16, bf16_t)
FLASH_DECODE(128, _multi, true, 3, bf16, bf16_t)
FLASH_DECODE(64, , false, 4, fp8, fp8_t)
FLASH_DECODE(128, , false, 4, fp8, fp8_t)
FLASH_DECODE(64, _multi, true, 3, fp8, fp8_t)
FLASH_DECODE(128, _multi, true, 3, fp8, fp8_t)

// ---- Batch-1 decode: every key of a split requested before the PDL wait -----------------
// At batch 1 the decode attention is latency, not bytes (8B shape, 512-640 keys: 8 KV
// heads x 8 splits of up to two tiles, 2.4 MB of K/V). The kernel timeline (cuda/trace.rs,
// H200, session 21) showed fd_pass's block spending 13.5 us on the step's critical path
// for ~1 us of work: Q arrived 5.1 us after the wait and the split's second tile 10.3
// us after it, both queued behind the output projection's weight loads (that kernel
// launches as the attention's blocks pass their wait and stages its weight meanwhile).
// Here each split's first two tiles have shared memory of their own (two stages, as
// fd8_pass), and everything of them but this step's keys is requested before the wait;
// after it only Q and this step's K/V row are read (both just written, in L2). The key
// loop then runs from shared memory. With `late_trigger`, launch_dependents waits until
// those reads have landed, so the next kernel's loads queue behind them, not ahead.
// Splits of more than two tiles stream the rest as fd8_pass does (tile j + 2 into the
// stage of tile j). One m-tile (KW = 4: each warp 16 keys of every tile), bf16 cache.
//
// Measured on an H200 (session 22, tg128 at 512-640 keys, against fd_pass in the same
// call): head_dim 64 (1B shape, 40 KB, 112 registers) 1,331 against 1,316 tokens/s, the
// attention inside the step 4.7 against 6.2 us per layer; shipped there (cuda/mod.rs
// DECODE_AHEAD). Head_dim 128 (8B shape, 75 KB) lost: 240.0 against 249.4 tokens/s at 168
// registers with a 4-byte spill, 234.3 against 249.5 held to 128 (84 / 140 bytes of
// spills), its time inside the step 14.0 and 17.5 us per layer against 11.4, though alone
// it runs as fast (7.3 against 7.5 us). Every global access after the wait, a spill's
// reload included, queues behind the output projection's weight loads. The late trigger
// measured level to worse on both shapes (1B 1,313, 8B 238.6). Rebuilt spill-free (2
// blocks per SM: 176 registers), the head_dim 128 instance below won (session 23: 256.4
// against 252.4 tokens/s, the attention inside the step 9.1 against 11.6 us per layer)
// and is the default at both head dims. A one-barrier cluster merge (each split storing
// its state into the leader's shared memory, the leader merging alone) lost 2% (8B) and
// 1.5% (1B) with a 16 KB receive buffer and 8-12% with a 34 KB one: the leader's merge
// is serial, and a larger footprint slows the whole step (branch wip/push-merge).
template <int HD>
struct __attribute__((aligned(16))) FdAheadShared {
    union {
        struct {
            bf16_t k[2][FD_KEYS][HD + FP_PAD];
            bf16_t v[2][FD_KEYS][HD + FP_PAD];
        } kv;
        float o[FD_WARPS][16][HD + FD_OPAD];
    } u;
    bf16_t sq[16][HD + FP_PAD];
    int srow[2][FD_KEYS];
    float s_m[FD_WARPS][16], s_l[FD_WARPS][16];
    float c_m[32], c_l[32];
};

// Q's 16 packed rows of m-tile mt0 into shared memory, scaled and rounded to bf16
// (padding rows 0): all of a thread's loads issued before any store, one load latency
// in all.
template <int HD>
__device__ __forceinline__ void fd_load_q(bf16_t (*sq)[HD + FP_PAD], const FdBlock& b, int mt0) {
    constexpr int PER_THREAD = 16 * (HD / 2) / (FD_WARPS * 32);
    const int ld = b.n_heads * HD;
    float2 xq[PER_THREAD];
#pragma unroll
    for (int i = 0; i < PER_THREAD; i++) {
        const int idx = threadIdx.x + i * FD_WARPS * 32;
        const int lr = idx / (HD / 2), d = 2 * (idx % (HD / 2));
        const int pr = mt0 * 16 + lr;
        xq[i] = make_float2(0.0f, 0.0f);
        if (pr < b.m_rows) {
            const int r = pr / b.gh, h = b.kvh * b.gh + pr % b.gh;
            xq[i] = *reinterpret_cast<const float2*>(b.q + (long)(b.q0 + r) * ld + h * HD + d);
        }
    }
#pragma unroll
    for (int i = 0; i < PER_THREAD; i++) {
        const int idx = threadIdx.x + i * FD_WARPS * 32;
        const int lr = idx / (HD / 2), d = 2 * (idx % (HD / 2));
        *reinterpret_cast<unsigned int*>(&sq[lr][d]) = fp_pack_bf16(xq[i].x * b.qscale, xq[i].y * b.qscale);
    }
}

// One pass (m-tile mt0) over the block's keys. The first pass (`waited` false) requests
// tiles 0 and 1 but this step's keys before pdl_wait(); `late_trigger` moves the
// block's launch_dependents from right after the wait to after Q and tiles 0-1 landed.
template <int HD>
__device__ __forceinline__ void fd_pass_ahead(FdAheadShared<HD>& sh, const FdBlock& b, int mt0, bool& waited,
                                              bool late_trigger) {
    constexpr int NK = FD_KEYS / FD_WARPS;  // keys per warp per tile
    constexpr int NJ = NK / 8;              // n8 tiles of S per warp
    constexpr int KC = HD / 16;             // k-steps of Q.K
    constexpr int NT = HD / 8;              // n8 tiles of O
    constexpr unsigned int ROW_BYTES = (HD + FP_PAD) * 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int koff = warp * NK;
    const bool w_active = mt0 * 16 < b.m_rows;
    const bf16_t* kc = static_cast<const bf16_t*>(b.kc);
    const bf16_t* vc = static_cast<const bf16_t*>(b.vc);

    FdSoftmax st = fd_rows(b, mt0, g);
    float o[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

    const int n_tiles = b.lo <= b.hi ? (b.hi - b.lo) / FD_KEYS + 1 : 0;
    if (n_tiles > 0) {
        if (threadIdx.x < FD_KEYS) {
            sh.srow[0][threadIdx.x] = fd_row_of(b, b.lo + threadIdx.x);
            sh.srow[1][threadIdx.x] = fd_row_of(b, b.lo + FD_KEYS + threadIdx.x);
        }
        __syncthreads();
    }
    // Keys before pos0 were written by earlier steps: requested before the wait. (Tile 1
    // of a one-tile split has rows -1 only: zero-fills, never read.)
    const int nold0 = waited ? FD_KEYS : b.pos0 - b.lo;
    const int nold1 = waited ? FD_KEYS : b.pos0 - b.lo - FD_KEYS;
    if (n_tiles > 0) {
        fd_load_tile<HD>(sh.u.kv.k[0], kc, sh.srow[0], FD_PART_OLD, nold0);
        fd_load_tile<HD>(sh.u.kv.v[0], vc, sh.srow[0], FD_PART_OLD, nold0);
    }
    if (n_tiles > 1) {
        fd_load_tile<HD>(sh.u.kv.k[1], kc, sh.srow[1], FD_PART_OLD, nold1);
        fd_load_tile<HD>(sh.u.kv.v[1], vc, sh.srow[1], FD_PART_OLD, nold1);
    }
    const bool first = !waited;
    if (first) {
        pdl_wait();
        if (!late_trigger) pdl_trigger();
    }
    waited = true;
    // Group 0: tiles 0 and 1 (their keys of this step now); group 1 empty, so that the
    // loop's wait1 at tile jt >= 2 finds tile jt in group jt.
    if (n_tiles > 0) {
        fd_load_tile<HD>(sh.u.kv.k[0], kc, sh.srow[0], FD_PART_NEW, nold0);
        fd_load_tile<HD>(sh.u.kv.v[0], vc, sh.srow[0], FD_PART_NEW, nold0);
    }
    if (n_tiles > 1) {
        fd_load_tile<HD>(sh.u.kv.k[1], kc, sh.srow[1], FD_PART_NEW, nold1);
        fd_load_tile<HD>(sh.u.kv.v[1], vc, sh.srow[1], FD_PART_NEW, nold1);
    }
    fp_cp_async_commit();
    fp_cp_async_commit();
    fd_load_q<HD>(sh.sq, b, mt0);
    trace_mark(0);

    const unsigned int q_addr = fp_smem_addr(&sh.sq[lane & 15][(lane >> 4) * 8]);
    for (int jt = 0; jt < n_tiles; jt++) {
        const int kt = b.lo + jt * FD_KEYS;
        const int stage = jt & 1;
        fp_cp_async_wait1();  // tile jt has landed
        __syncthreads();
        if (first && late_trigger && jt == 0) pdl_trigger();
        const int r_next =
            threadIdx.x < FD_KEYS && jt + 2 < n_tiles ? fd_row_of(b, kt + 2 * FD_KEYS + threadIdx.x) : -1;
        if (w_active) {
            const unsigned int k_addr =
                fp_smem_addr(&sh.u.kv.k[stage][koff + (lane >> 4) * 8 + (lane & 7)][((lane >> 3) & 1) * 8]);
            const unsigned int v_addr =
                fp_smem_addr(&sh.u.kv.v[stage][koff + ((lane >> 3) & 1) * 8 + (lane & 7)][(lane >> 4) * 8]);
            float sc[NJ][4];
            fd_qk_bf16<NJ, KC, ROW_BYTES>(sc, q_addr, k_addr);
            fd_softmax_tile<NJ, NT, false>(sc, o, st, b, kt + koff, c);
            fd_pv_bf16<NJ, HD, ROW_BYTES>(o, sc, v_addr);
        }
        // Tile jt's rows are no longer read (its copies were issued two tiles ago).
        if (threadIdx.x < FD_KEYS && jt + 2 < n_tiles) sh.srow[stage][threadIdx.x] = r_next;
        __syncthreads();  // every warp is done with this stage
        if (jt + 2 < n_tiles) {
            fd_load_tile<HD>(sh.u.kv.k[stage], kc, sh.srow[stage]);
            fd_load_tile<HD>(sh.u.kv.v[stage], vc, sh.srow[stage]);
        }
        fp_cp_async_commit();
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncthreads();  // the tiles' shared memory becomes the warps' O
    if (first && late_trigger && n_tiles == 0) pdl_trigger();
    trace_mark(1);

    fd_store_o<HD>(sh.u.o, o, warp, g, c);
    fd_merge_warps<HD, FD_WARPS>(sh.u.o, sh.s_m, sh.s_l, sh.c_m, sh.c_l, b, mt0, st.m_a, st.m_b, st.l_a, st.l_b);
}

// The kernel: flash_decode's arguments and grid (one m-tile per pass; the host takes it
// for plain decode steps whose blocks all fit on the GPU at once), its shared memory
// dynamic (sizeof(FdAheadShared<HD>): 75 KB at head_dim 128).
template <int HD>
__device__ void flash_decode_ahead(const float* __restrict__ q, const bf16_t* __restrict__ kc,
                                   const bf16_t* __restrict__ vc, const int* __restrict__ query_start,
                                   const int* __restrict__ context_lens, const int* __restrict__ block_tables,
                                   int bt_cols, int bs, int n_heads, int n_kv, float scale, int window,
                                   float softcap, int max_q_rows, float* __restrict__ partial,
                                   float* __restrict__ out, bf16_t* __restrict__ out_bf16, int cluster,
                                   int late_trigger) {
    extern __shared__ __align__(16) unsigned char fd_ahead_smem[];
    FdAheadShared<HD>& sh = *reinterpret_cast<FdAheadShared<HD>*>(fd_ahead_smem);
    FdBlock b;
    if (!fd_block(b, q, kc, vc, query_start, context_lens, block_tables, bt_cols, bs, n_heads, n_kv, scale,
                  window, softcap, max_q_rows, partial, out, out_bf16, cluster))
        return;
    const int row_groups = gridDim.y / n_kv;
    const int mt = (b.m_rows + 15) / 16;
    bool waited = false;
    for (int mt0 = blockIdx.y % row_groups; mt0 < mt; mt0 += row_groups)
        fd_pass_ahead<HD>(sh, b, mt0, waited, late_trigger != 0);
    if (!waited) {
        pdl_wait();
        pdl_trigger();
    }
}

#define FLASH_DECODE_AHEAD(HD, BOUNDS) \
extern "C" __global__ void BOUNDS flash_decode_ahead_bf16_d##HD( \
    const float* q, const bf16_t* kc, const bf16_t* vc, const int* query_start, \
    const int* context_lens, const int* block_tables, int bt_cols, int bs, int n_heads, int n_kv, \
    float scale, int window, float softcap, int max_q_rows, float* partial, float* out, \
    bf16_t* out_bf16, int cluster, int late_trigger) { \
    flash_decode_ahead<HD>(q, kc, vc, query_start, context_lens, block_tables, bt_cols, bs, n_heads, \
                           n_kv, scale, window, softcap, max_q_rows, partial, out, out_bf16, cluster, \
                           late_trigger); \
}
FLASH_DECODE_AHEAD(64, __launch_bounds__(FD_WARPS * 32))
FLASH_DECODE_AHEAD(128, __launch_bounds__(FD_WARPS * 32, 2))

// The kernels' dynamic shared memory in bytes (head_dim 64, 128), read by the loader
// (cuda/module.rs) so that the host's launch size is the compiler's sizeof.
extern "C" __device__ const unsigned int fd_ahead_smem_bytes[2] = {sizeof(FdAheadShared<64>),
                                                                    sizeof(FdAheadShared<128>)};
