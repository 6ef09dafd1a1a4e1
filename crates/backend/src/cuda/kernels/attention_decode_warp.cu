// ---- Decode attention over many items: one warp per (sequence, KV head) -----------------
// (Uses attention_decode.cu's FdBlock, fd_block, fd_rows, fd_row_of, fd_softmax_tile,
// fd_pv_bf16 and its FP8 fragment helpers, and attention_prefill.cu's fragments and FaOps;
// bf16 or FP8 cache, one m-tile: plain decode and chunks of g * q_rows <= 16 packed rows.)
//
// Why: at 128 sequences of ~130-190 keys (8B shape, bf16) flash_decode's one block per
// (sequence, KV head) read K/V at 2.3 TB/s on an H200 (docs/BENCHMARKS.md, session 26):
// 1,024 blocks of ~3 64-key tiles in 1.94 waves, four blocks per SM (registers and shared
// memory), each block's pipeline one tile deep and separated by four barriers per tile,
// filling and draining twice per SM, and a shared-memory merge of its four warps at the
// end. Here a block is one warp that does all of an item alone: 16-key tiles (K and V)
// through a STAGES-deep cp.async ring of its own (STAGES - 1 tiles in flight while one
// is used), Q's A fragments in registers for the whole item, no barrier but __syncwarp,
// no merge: the warp's softmax state is the item's, and it writes the output itself.
// Shared memory is STAGES x 8.7 KB (head_dim 128), so 6-12 warps stream per SM, each with
// its own loads in flight, and a warp that finishes frees its slot for the next block.
// The table lookup of each tile's keys runs one tile ahead of its copies.
#define FW_KEYS 16  // keys per tile
//
// An FP8 (E4M3) cache takes the same warp with fd8_pass's fragments (attention_decode.cu):
// the 16-key tiles stay FP8 in shared memory (4 KB of K and V a stage at head_dim 128,
// rows padded to HD + 16 bytes), ldmatrix and the E4M3 -> f16 widening in registers, Q's
// f16 A fragments in fd8_q_slot's permuted order, O's columns in fd8_o_dim's. Why: at 512
// sequences of ~1,500 keys (the offline run's steps) flash_decode's FP8 blocks read K/V at
// ~2.2 TB/s (docs/BENCHMARKS.md, session 28): a two-stage pipeline of 64-key tiles per
// block, four blocks per SM, the FP8 widening between two barriers. A stage of the warp
// kernel is half the bf16 one, so a deeper ring (STAGES - 1 tiles in flight per warp)
// fits beside as many warps.

// Per cache type: the padding of a key row in shared memory (16 bytes: the 8 rows of an
// ldmatrix matrix fall in distinct banks) and the elements of a 16-byte chunk.
template <typename KV> struct FwKv {
    static constexpr int PAD = FP_PAD;
    static constexpr int ELEMS = 8;
};
template <> struct FwKv<fp8_t> {
    static constexpr int PAD = FD8_PAD;
    static constexpr int ELEMS = 16;
};

template <int HD, int STAGES, typename KV>
struct __attribute__((aligned(16))) FwShared {
    KV k[STAGES][FW_KEYS][HD + FwKv<KV>::PAD];
    KV v[STAGES][FW_KEYS][HD + FwKv<KV>::PAD];
};

template <int N>
__device__ __forceinline__ void fw_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// The cache row of key (tile t's first key + lane % 16) of the block's keys, -1 past the
// last one (zero-filled).
__device__ __forceinline__ int fw_tile_row(const FdBlock& b, int t, int n_tiles, int lane) {
    return t < n_tiles ? fd_row_of(b, b.lo + t * FW_KEYS + (lane & 15)) : -1;
}

// cp.async copies of one 16-key tile of `cache` into `dst`: lane l copies 16-byte chunks
// l + 32 i (a warp instruction covers 2 key rows of a bf16 cache at head_dim 128, 4 of an
// FP8 one), each key's row from lane (key) of `row` (fw_tile_row). `part` as
// fd_load_tile's, `nold` relative to the tile's first key.
template <int HD, typename KV>
__device__ __forceinline__ void fw_load_tile(KV (*dst)[HD + FwKv<KV>::PAD], const KV* __restrict__ cache,
                                             int row, int lane, int part = FD_PART_ALL, int nold = 0) {
    constexpr int ELEMS = FwKv<KV>::ELEMS;
    constexpr int CHUNKS = HD / ELEMS;
    constexpr int PER_LANE = FW_KEYS * CHUNKS / 32;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        const int c = lane + 32 * i;
        const int key = c / CHUNKS, ch = c % CHUNKS;
        const int r = __shfl_sync(0xffffffffu, row, key);
        const bool fresh = r >= 0 && key >= nold;
        if ((part == FD_PART_OLD && fresh) || (part == FD_PART_NEW && !fresh)) continue;
        const KV* src = r >= 0 ? cache + (long)r * HD + ch * ELEMS : cache;
        fp_cp_async16(fp_smem_addr(&dst[key][ch * ELEMS]), src, r >= 0 ? 16 : 0);
    }
}

// Q's A fragments (rows g and g + 8 of the packed m-tile, padding rows 0), scaled and
// rounded to the products' type: qf[ks] is k-step ks as mma.m16n8k16 takes it, k indices
// 2c, 2c + 1 (e = 0, 1) and 2c + 8, 2c + 9 (e = 2, 3). Those are dimensions 16 ks + 2c
// and + 8 for a bf16 cache; for an FP8 one the dimensions they meet in the K fragments,
// 16 ks + 4c and + 2 (fd8_q_slot).
template <int HD, typename KV>
__device__ __forceinline__ void fw_load_q(unsigned int (&qf)[HD / 16][4], const FdBlock& b, int g, int c) {
    constexpr bool F8 = FaOps<KV>::F8;
    const int ld = b.n_heads * HD;
    const float* rows[2] = {nullptr, nullptr};
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        const int pr = g + 8 * h2;
        if (pr < b.m_rows) {
            const int r = pr / b.gh, h = b.kvh * b.gh + pr % b.gh;
            rows[h2] = b.q + (long)(b.q0 + r) * ld + h * HD;
        }
    }
    float2 x[HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            // e: 0 (row g, k 2c), 1 (row g + 8, k 2c), 2 (row g, k 2c + 8), 3 (row g + 8, k 2c + 8)
            const float* p = rows[e & 1];
            const int d = ks * 16 + (F8 ? 4 * c + 2 * (e >> 1) : 2 * c + 8 * (e >> 1));
            x[ks][e] = p ? *reinterpret_cast<const float2*>(p + d) : make_float2(0.0f, 0.0f);
        }
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++)
#pragma unroll
        for (int e = 0; e < 4; e++) qf[ks][e] = FaOps<KV>::pack(x[ks][e].x * b.qscale, x[ks][e].y * b.qscale);
}

// The part (FD_PART_OLD or FD_PART_NEW) of the first STAGES - 1 tiles into their stages,
// their rows from fw_tile_row; the new part commits one group per tile.
template <int HD, int STAGES, typename KV>
__device__ __forceinline__ void fw_load_first(FwShared<HD, STAGES, KV>& sh, const KV* __restrict__ kc,
                                              const KV* __restrict__ vc, const FdBlock& b,
                                              const int (&rows)[STAGES - 1], int n_tiles, int lane, int part) {
#pragma unroll
    for (int t = 0; t < STAGES - 1; t++) {
        const int nold = b.pos0 - (b.lo + t * FW_KEYS);
        if (t < n_tiles) {
            fw_load_tile<HD, KV>(sh.k[t], kc, rows[t], lane, part, nold);
            fw_load_tile<HD, KV>(sh.v[t], vc, rows[t], lane, part, nold);
        }
        if (part == FD_PART_NEW) fp_cp_async_commit();
    }
}

// S = Q.K^T of one 16-key FP8 tile (two n8 tiles), fd8_pass's fragments: lane (g, c) of
// an x4 at k_addr (keys 8 (i & 1).., bytes 16 (i >> 1).. for matrix i) gets dimensions 4c..
// 4c + 3 of key g, widened (fd8_widen) to the f16 B fragments of k indices 2c and 2c + 8.
// Times FD8_SCALE (undoing the bit-move widening's 2^-8 where that is used).
template <int KC>
__device__ __forceinline__ void fw_qk_fp8(float (&sc)[2][4], const unsigned int (&qf)[KC][4], unsigned int k_addr) {
#pragma unroll
    for (int k2 = 0; k2 < KC / 2; k2++) {
        unsigned int r0, r1, r2, r3, lo, hi;
        fp_ldmatrix_x4(k_addr + k2 * 32, r0, r1, r2, r3);
        fd8_widen(r0, lo, hi);
        fp_mma_f16(sc[0], qf[2 * k2], lo, hi);
        fd8_widen(r1, lo, hi);
        fp_mma_f16(sc[1], qf[2 * k2], lo, hi);
        fd8_widen(r2, lo, hi);
        fp_mma_f16(sc[0], qf[2 * k2 + 1], lo, hi);
        fd8_widen(r3, lo, hi);
        fp_mma_f16(sc[1], qf[2 * k2 + 1], lo, hi);
    }
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) sc[j][e] *= FD8_SCALE;
}

// O += P.V over one 16-key FP8 tile, 32 dimensions per fd8_pv_step (fd8_pass's).
template <int HD>
__device__ __forceinline__ void fw_pv_fp8(float (&o)[HD / 8][4], const float (&sc)[2][4], unsigned int v_addr) {
    unsigned int pa[4];
    pa[0] = fp_pack_f16(sc[0][0], sc[0][1]);
    pa[1] = fp_pack_f16(sc[0][2], sc[0][3]);
    pa[2] = fp_pack_f16(sc[1][0], sc[1][1]);
    pa[3] = fp_pack_f16(sc[1][2], sc[1][3]);
#pragma unroll
    for (int db = 0; db < HD / 32; db++) fd8_pv_step<HD / 8>(o, pa, v_addr + db * 32, db);
}

template <int HD, int STAGES, typename KV>
__device__ void flash_decode_warp(const float* __restrict__ q, const KV* __restrict__ kc,
                                  const KV* __restrict__ vc, const int* __restrict__ query_start,
                                  const int* __restrict__ context_lens, const int* __restrict__ block_tables,
                                  int bt_cols, int bs, int n_heads, int n_kv, float scale, int window, float softcap,
                                  int max_q_rows, float* __restrict__ out, bf16_t* __restrict__ out_bf16) {
    constexpr bool F8 = FaOps<KV>::F8;
    constexpr int NJ = FW_KEYS / 8;  // n8 tiles of S
    constexpr int KC = HD / 16;      // k-steps of Q.K
    constexpr int NT = HD / 8;       // n8 tiles of O
    constexpr unsigned int ROW_BYTES = (HD + FwKv<KV>::PAD) * sizeof(KV);
    constexpr unsigned int STAGE_BYTES = FW_KEYS * ROW_BYTES;
    __shared__ FwShared<HD, STAGES, KV> sh;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    FdBlock b;
    // (No partials: one split; the grid is (sequences, KV heads, 1). More than 16 packed
    // rows never come: the host sends only steps with g * rows <= 16, as to
    // flash_decode's one-m-tile kernel.)
    if (!fd_block(b, q, kc, vc, query_start, context_lens, block_tables, bt_cols, bs, n_heads, n_kv, scale,
                  window, softcap, max_q_rows, nullptr, out, out_bf16, 0) ||
        b.m_rows > 16) {
        pdl_entry();
        return;
    }
    const int n_tiles = b.lo <= b.hi ? (b.hi - b.lo) / FW_KEYS + 1 : 0;

    // Before the PDL wait: the first STAGES - 1 tiles' keys of earlier steps (the step's
    // own keys, at pos0 and after, are the previous kernel's to write); after it the rest
    // of them, group t = tile t (its old keys went into group 0).
    int rows[STAGES - 1];
#pragma unroll
    for (int t = 0; t < STAGES - 1; t++) rows[t] = fw_tile_row(b, t, n_tiles, lane);
    fw_load_first<HD, STAGES, KV>(sh, kc, vc, b, rows, n_tiles, lane, FD_PART_OLD);
    pdl_entry();
    fw_load_first<HD, STAGES, KV>(sh, kc, vc, b, rows, n_tiles, lane, FD_PART_NEW);
    int row_ahead = fw_tile_row(b, STAGES - 1, n_tiles, lane);
    unsigned int qf[KC][4];
    fw_load_q<HD, KV>(qf, b, g, c);

    FdSoftmax st = fd_rows(b, 0, g);
    float o[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    // ldmatrix row addresses: bf16 as fd_qk_bf16 / fd_pv_bf16 take them; FP8 as fd8_pass.
    const int f8_row = ((lane >> 3) & 1) * 8 + (lane & 7), f8_col = (lane >> 4) * 16;
    const unsigned int k_addr0 =
        F8 ? fp_smem_addr(&sh.k[0][f8_row][f8_col])
           : fp_smem_addr(&sh.k[0][(lane >> 4) * 8 + (lane & 7)][((lane >> 3) & 1) * 8]);
    const unsigned int v_addr0 =
        F8 ? fp_smem_addr(&sh.v[0][f8_row][f8_col])
           : fp_smem_addr(&sh.v[0][((lane >> 3) & 1) * 8 + (lane & 7)][(lane >> 4) * 8]);

    for (int t = 0; t < n_tiles; t++) {
        const int stage = t % STAGES;
        fw_cp_async_wait<STAGES - 2>();  // tile t has landed
        __syncwarp();
        // Tile t + STAGES - 1 into the stage tile t - 1 used (every lane is past it).
        const int tn = t + STAGES - 1;
        if (tn < n_tiles) {
            const int sn = tn % STAGES;
            fw_load_tile<HD, KV>(sh.k[sn], kc, row_ahead, lane);
            fw_load_tile<HD, KV>(sh.v[sn], vc, row_ahead, lane);
            row_ahead = fw_tile_row(b, tn + 1, n_tiles, lane);
        }
        fp_cp_async_commit();

        float sc[NJ][4];
#pragma unroll
        for (int j = 0; j < NJ; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
        const unsigned int k_addr = k_addr0 + stage * STAGE_BYTES;
        if constexpr (F8) {
            fw_qk_fp8<KC>(sc, qf, k_addr);
        } else {
#pragma unroll
            for (int ks = 0; ks < KC; ks++) {
                unsigned int b0, b1, b2, b3;
                fp_ldmatrix_x4(k_addr + ks * 32, b0, b1, b2, b3);
                fp_mma(sc[0], qf[ks], b0, b1);
                fp_mma(sc[1], qf[ks], b2, b3);
            }
        }
        // Tiles wholly before the step's first row and inside every row's window need no
        // mask (padding rows then hold finite junk, never written).
        const int k0 = b.lo + t * FW_KEYS;
        const bool edge = k0 + FW_KEYS - 1 > b.pos0 || (b.window > 0 && k0 < b.hi - b.window + 1);
        fd_softmax_tile<NJ, NT>(sc, o, st, b, k0, c, edge);
        if constexpr (F8) fw_pv_fp8<HD>(o, sc, v_addr0 + stage * STAGE_BYTES);
        else fd_pv_bf16<NJ, HD, ROW_BYTES>(o, sc, v_addr0 + stage * STAGE_BYTES);
    }
    asm volatile("cp.async.wait_all;" ::: "memory");

    // The output: rows g and g + 8 of the packed tile, O / l (l summed over the row's
    // four lanes). Lane (g, c) holds dimensions j * 8 + 2c, + 1 of n8 tile j (bf16), or
    // fd8_o_dim(j, c, e) of tiles j and j + 1 (FP8: one even and one odd dimension each,
    // adjacent; times FD8_SCALE).
    const unsigned int full = 0xffffffffu;
    float l[2] = {st.l_a, st.l_b};
    const int ld = b.n_heads * HD;
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        l[h2] += __shfl_xor_sync(full, l[h2], 1);
        l[h2] += __shfl_xor_sync(full, l[h2], 2);
        const int pr = g + 8 * h2;
        if (pr >= b.m_rows) continue;
        const float inv = l[h2] > 0.0f ? (F8 ? FD8_SCALE : 1.0f) / l[h2] : 0.0f;
        const int r = pr / b.gh, h = b.kvh * b.gh + pr % b.gh;
        const long base = (long)(b.q0 + r) * ld + h * HD;
#pragma unroll
        for (int j = 0; j < NT; j += F8 ? 2 : 1) {
#pragma unroll
            for (int e = 0; e < (F8 ? 2 : 1); e++) {
                const int d = F8 ? fd8_o_dim(j, c, e) : j * 8 + 2 * c;
                const float y0 = (F8 ? o[j][2 * h2 + e] : o[j][2 * h2]) * inv;
                const float y1 = (F8 ? o[j + 1][2 * h2 + e] : o[j][2 * h2 + 1]) * inv;
                *reinterpret_cast<float2*>(b.out + base + d) = make_float2(y0, y1);
                if (b.out_bf16) *reinterpret_cast<unsigned int*>(b.out_bf16 + base + d) = fp_pack_bf16(y0, y1);
            }
        }
    }
}

// Instances per cache type, head dim and ring depth. A stage is 8.7 KB at head_dim 128
// (bf16; 4.6 KB FP8), 4.6 KB at 64 (bf16; 2.6 KB FP8). Grid (sequences, KV heads, 1), 32
// threads.
#define FLASH_DECODE_WARP(HD, STAGES, KVN, KV) \
extern "C" __global__ void __launch_bounds__(32) flash_decode_warp##STAGES##_##KVN##_d##HD( \
    const float* q, const KV* kc, const KV* vc, const int* query_start, \
    const int* context_lens, const int* block_tables, int bt_cols, int bs, int n_heads, int n_kv, \
    float scale, int window, float softcap, int max_q_rows, float* out, bf16_t* out_bf16) { \
    flash_decode_warp<HD, STAGES, KV>(q, kc, vc, query_start, context_lens, block_tables, bt_cols, bs, n_heads, \
                                      n_kv, scale, window, softcap, max_q_rows, out, out_bf16); \
}
FLASH_DECODE_WARP(64, 2, bf16, bf16_t)
FLASH_DECODE_WARP(128, 2, bf16, bf16_t)
FLASH_DECODE_WARP(64, 3, bf16, bf16_t)
FLASH_DECODE_WARP(128, 3, bf16, bf16_t)
FLASH_DECODE_WARP(64, 4, bf16, bf16_t)
FLASH_DECODE_WARP(128, 4, bf16, bf16_t)
FLASH_DECODE_WARP(64, 4, fp8, fp8_t)
FLASH_DECODE_WARP(128, 4, fp8, fp8_t)
FLASH_DECODE_WARP(64, 6, fp8, fp8_t)
FLASH_DECODE_WARP(128, 6, fp8, fp8_t)
FLASH_DECODE_WARP(64, 8, fp8, fp8_t)
FLASH_DECODE_WARP(128, 8, fp8, fp8_t)
