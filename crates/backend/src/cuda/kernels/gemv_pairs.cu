// Batch-1 GEMVs whose epilogue combines two output rows: the decode step's GLU and RoPE
// folded into the GEMVs that produce their inputs (cuda/fused.rs `rms_norm_matmul_glu`,
// `rms_norm_matmul_qkv_rope`). Uses gemv.cu's skeleton (gemv1_dot, RowPlain), which
// precedes this file.
//
// Why: at batch 1 a decode step is a chain of small kernels, and every launch boundary
// costs the ramp and tail of a kernel (the GPU drains, then refills). The GLU kernel
// (3.8 us per layer on the 8B shape) and the Q/K/V split with RoPE (4.0 us) did almost
// no work of their own: 4% of an 8B step, more of a 1B one (docs/BENCHMARKS.md).
//
// A block's R output rows are R / 2 pairs (lo, hi) that its epilogue combines:
// - GLU over stacked [gate | up] rows: pair p = rows (p, F + p) -> out[p] = act(g) * u.
// - RoPE over stacked Q/K/V rows (heads of hd rows; q heads, then k, then v): pair p of
//   head h = p / (hd / 2), i = p % (hd / 2) is the rotation pair of the head's style,
//   rows (i, i + hd / 2) (neox) or (2i, 2i + 1) (interleaved). Q and K pairs are
//   rotated by position pos[0]; K and V go into the paged caches at slots[0] as the
//   split kernel writes them (and to k, v when those are non-null).
// Warps load rows by index, so the pair's two rows need not be near each other in W
// (each row is its own coalesced stream along K). The norm is always folded in (these
// are the projections that read the block's normalized input).

#define PAIR_GLU 0
#define PAIR_ROPE_NEOX 1
#define PAIR_ROPE_INTERLEAVED 2

// Row of W for side (0: lo, 1: hi) of pair p.
__device__ __forceinline__ int pair_row(int mode, int p, int side, int F, int hd) {
    if (mode == PAIR_GLU) return p + side * F;
    const int half = hd / 2, head = p / half, i = p % half;
    if (mode == PAIR_ROPE_NEOX) return head * hd + i + side * half;
    return head * hd + 2 * i + side;
}

// Arguments of the RoPE epilogue.
template <typename KV>
struct PairRope {
    const int* pos;
    const float* cos_t;
    const float* sin_t;
    float* q;
    float* k;   // may be null
    float* v;   // may be null
    KV* kc;
    KV* vc;
    const int* slots;
    int bs, nh, nkv;
};

// The RoPE epilogue of pair p (values lo, hi), as split_qkv_rope_body computes it.
template <typename KV>
__device__ __forceinline__ void pair_rope_store(const PairRope<KV>& a, int mode, int hd, int p, float lo, float hi) {
    const int half = hd / 2, head = p / half, i = p % half;
    const bool neox = mode == PAIR_ROPE_NEOX;
    const int ea = neox ? i : 2 * i, eb = neox ? i + half : 2 * i + 1;
    if (head < a.nh + a.nkv) {
        const long ps = a.pos[0];
        const float c = a.cos_t[ps * half + i], s = a.sin_t[ps * half + i];
        const float r0 = lo * c - hi * s, r1 = lo * s + hi * c;
        lo = r0;
        hi = r1;
    }
    if (head < a.nh) {
        a.q[(long)head * hd + ea] = lo;
        a.q[(long)head * hd + eb] = hi;
        return;
    }
    const bool is_k = head < a.nh + a.nkv;
    const int kvh = is_k ? head - a.nh : head - a.nh - a.nkv;
    float* dst = is_k ? a.k : a.v;
    if (dst) {
        dst[(long)kvh * hd + ea] = lo;
        dst[(long)kvh * hd + eb] = hi;
    }
    const int slot = a.slots[0];
    if (slot >= 0) {
        KV* cache = is_k ? a.kc : a.vc;
        const long base = (((long)(slot / a.bs) * a.nkv + kvh) * a.bs + slot % a.bs) * hd;
        store_kv(cache, base + ea, lo);
        store_kv(cache, base + eb, hi);
    }
}

// out (GLU) or the RoPE destinations for `pairs` pairs of W's rows; M = W's rows.
template <class P, int RPW, bool ROPE, typename KV, int UNROLL = 2, int PRE = 0>
__device__ __forceinline__ void gemv1_pairs_body(const float* __restrict__ x, const unsigned char* __restrict__ w,
                                                 int pairs, int M, int K, int wpr, const float* __restrict__ gamma,
                                                 float eps, long prefetch, int mode, int F, int hd, int silu,
                                                 float* __restrict__ out, const PairRope<KV>& rope, int prewait) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int groups = 8 / wpr, wg = warp / wpr, slice = warp % wpr;
    const int R = groups * RPW, PB = R / 2;
    const int p0 = blockIdx.x * PB;
    // Each of the block's rows below the prefetch offset into L2 (see gemv1_rows_body).
    if (threadIdx.x < R) {
        const int lr = threadIdx.x;
        const int row = pair_row(mode, min(p0 + lr % PB, pairs - 1), lr / PB, F, hd);
        const long rb = P::row_bytes(K);
        if ((long)(row + 1) * rb <= prefetch && rb % 16 == 0) prefetch_l2(w + (long)row * rb, (unsigned int)rb);
    }
    if (PRE == 0 || !prewait) pdl_entry();  // (else gemv1_dot waits, after its first loads)
    P rows[RPW];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const int lr = wg * RPW + r;
        rows[r].init(w, pair_row(mode, min(p0 + lr % PB, pairs - 1), lr / PB, F, hd), M, K);
    }
    float acc[RPW];
    float ss = 0.0f;
    gemv1_dot<P, RPW, true, UNROLL, PRE>(rows, x, gamma, K / P::N, lane + 32 * slice, 32 * wpr, acc, ss,
                                       PRE > 0 && prewait);
    trace_mark(0);

    // Rows (and the sum of squares) reduced over the warps of each row group, scaled by
    // the norm, into `res` by local row; then one thread per pair.
    __shared__ float part[8][RPW + 1];
    __shared__ float res[8 * RPW];
#pragma unroll
    for (int r = 0; r < RPW; r++) acc[r] = warp_sum(acc[r]);
    ss = warp_sum(ss);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < RPW; r++) part[warp][r] = acc[r];
        part[warp][RPW] = ss;
    }
    __syncthreads();
    if (slice == 0 && lane < RPW) {
        float v = 0.0f, s = 0.0f;
        for (int i = 0; i < wpr; i++) {
            v += part[warp + i][lane];
            s += part[warp + i][RPW];
        }
        res[wg * RPW + lane] = v * rsqrtf(s / (float)K + eps);
    }
    __syncthreads();
    const int p = p0 + threadIdx.x;
    if (threadIdx.x < PB && p < pairs) {
        const float lo = res[threadIdx.x], hi = res[threadIdx.x + PB];
        if (ROPE) pair_rope_store<KV>(rope, mode, hd, p, lo, hi);
        else out[p] = glu_act(lo, hi, silu);
    }
    trace_mark(1);
}

// Both pair kernels issue their first weight loads before the PDL wait (gemv1_dot's
// PRE = 1, `prewait`). __launch_bounds__(256, 4) holds them at 64 registers (a few bytes
// of spill in the epilogue), so four blocks fit per SM and the next kernel's start beside
// them: without it the GLU kernel took 70 registers, three blocks per SM, and the 8B
// shape ran at 235.4 tokens/s against 249.5 with it (H200, session 20). The _u2 kernels
// are session 16's as they were (PRE = 0, no bound), for comparisons.
#define GEMV_PAIRS_LB_1 __launch_bounds__(256, 4)
#define GEMV_PAIRS_LB_0 __launch_bounds__(256)
//
// gemv1_glu_bf16(x, w, out, F, K, wpr, gamma, eps, silu, prefetch, prewait): out[F] =
// act(g) * u of [g | u] = rms_norm(x) W^T, W [2F, K] bf16. Four loads per row in flight,
// as gemv1_rows_bf16; the _u2 kernels keep two (`SLUICE_GEMV_UNROLL=2`).
#define GEMV1_GLU(NAME, U, PRE) \
extern "C" __global__ void GEMV_PAIRS_LB_##PRE NAME(const float* x, const unsigned char* w, float* out, int F, \
                                                       int K, int wpr, const float* gamma, float eps, int silu, \
                                                       long prefetch, int prewait) { \
    PairRope<float> none = {}; \
    gemv1_pairs_body<RowPlain<bf16_t>, GEMV_RPW, false, float, U, PRE>(x, w, F, 2 * F, K, wpr, gamma, eps, prefetch, \
                                                                  PAIR_GLU, F, 0, silu, out, none, prewait); \
}
GEMV1_GLU(gemv1_glu_bf16, 4, 1)
GEMV1_GLU(gemv1_glu_bf16_u2, 2, 0)

// gemv1_qkv_rope_bf16_kv{f32,bf16}: q (and k, v, the caches) of one token from its
// stacked projections rms_norm(x) W^T, W [(nh + 2 nkv) hd, K] bf16, mode
// PAIR_ROPE_NEOX or PAIR_ROPE_INTERLEAVED.
#define GEMV1_QKV_ROPE(NAME, KV, U, PRE) \
extern "C" __global__ void GEMV_PAIRS_LB_##PRE NAME(const float* x, const unsigned char* w, int K, int wpr, \
                                                       const float* gamma, float eps, long prefetch, int mode, \
                                                       const int* pos, const float* cos_t, const float* sin_t, \
                                                       float* q, float* k, float* v, KV* kc, KV* vc, \
                                                       const int* slots, int bs, int nh, int nkv, int hd, \
                                                       int prewait) { \
    PairRope<KV> a = {pos, cos_t, sin_t, q, k, v, kc, vc, slots, bs, nh, nkv}; \
    const int M = (nh + 2 * nkv) * hd; \
    gemv1_pairs_body<RowPlain<bf16_t>, GEMV_RPW, true, KV, U, PRE>(x, w, M / 2, M, K, wpr, gamma, eps, prefetch, mode, \
                                                              0, hd, 0, 0, a, prewait); \
}
GEMV1_QKV_ROPE(gemv1_qkv_rope_bf16_kvf32, float, 4, 1)
GEMV1_QKV_ROPE(gemv1_qkv_rope_bf16_kvbf16, bf16_t, 4, 1)
GEMV1_QKV_ROPE(gemv1_qkv_rope_bf16_kvfp8, fp8_t, 4, 1)
GEMV1_QKV_ROPE(gemv1_qkv_rope_bf16_kvf32_u2, float, 2, 0)
GEMV1_QKV_ROPE(gemv1_qkv_rope_bf16_kvbf16_u2, bf16_t, 2, 0)
GEMV1_QKV_ROPE(gemv1_qkv_rope_bf16_kvfp8_u2, fp8_t, 2, 0)
