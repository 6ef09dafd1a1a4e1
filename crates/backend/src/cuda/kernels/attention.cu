// Paged attention for a mixed batch of prefill chunks and decodes (the CPU kernel's
// contract, crates/backend/src/cpu/attention.rs): q [T, n_heads * hd] f32, caches
// [num_blocks, n_kv, bs, hd] (f32 or bf16), out [T, n_heads * hd] f32.
//
// Version 1 ("row kernel"): one block per (query row, KV head). The block's four warps
// split the keys (warp w takes keys w, w + 4, ...), every warp keeps an online softmax
// (Milakov & Gimelshein 2018; FlashAttention's running max and sum) for each of the g
// query heads that share the KV head (GQA: a K/V row is read once for all g heads),
// and the warps' states are merged through shared memory at the end. Lanes split the
// head dimension (d = lane + 32 i), so each K/V row is one coalesced read.
// Memory stays O(1) in the context length; there is no T x T score matrix.

#define ATT_WARPS 4
#define ATT_MAX_G 8     // query heads per KV head
#define ATT_MAX_DPL 8   // head_dim / 32, so head_dim <= 256

template <typename KV>
__device__ void attention_row(const float* __restrict__ q, const KV* __restrict__ kc, const KV* __restrict__ vc,
                              const int* __restrict__ query_start, int num_seqs,
                              const int* __restrict__ context_lens, const int* __restrict__ block_tables,
                              int bt_cols, int bs, int n_heads, int n_kv, int hd, float scale,
                              int window, float softcap, float* __restrict__ out) {
    __shared__ float sm_m[ATT_WARPS][ATT_MAX_G];
    __shared__ float sm_l[ATT_WARPS][ATT_MAX_G];
    __shared__ float sm_acc[ATT_WARPS][ATT_MAX_G][ATT_MAX_DPL * 32];
    const int t = blockIdx.x, kvh = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = n_heads / n_kv;
    const int dpl = (hd + 31) / 32;

    // The sequence of row t: the last s with query_start[s] <= t.
    int lo_s = 0, hi_s = num_seqs - 1;
    while (lo_s < hi_s) {
        int mid = (lo_s + hi_s + 1) >> 1;
        if (query_start[mid] <= t) lo_s = mid; else hi_s = mid - 1;
    }
    const int s = lo_s;
    const int q_rows = query_start[s + 1] - query_start[s];
    const int pos = context_lens[s] - q_rows + (t - query_start[s]);
    const int first = window > 0 ? max(0, pos - window + 1) : 0;
    const int* table = block_tables + (long)s * bt_cols;

    float qr[ATT_MAX_G][ATT_MAX_DPL];
    float acc[ATT_MAX_G][ATT_MAX_DPL];
    float m[ATT_MAX_G], l[ATT_MAX_G];
#pragma unroll
    for (int j = 0; j < ATT_MAX_G; j++) {
        m[j] = NEG_INF; l[j] = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_DPL; i++) {
            int d = lane + 32 * i;
            bool ok = j < g && i < dpl && d < hd;
            qr[j][i] = ok ? q[(long)t * n_heads * hd + (long)(kvh * g + j) * hd + d] * scale : 0.0f;
            acc[j][i] = 0.0f;
        }
    }

    for (int k = first + warp; k <= pos; k += ATT_WARPS) {
        long base = (((long)table[k / bs] * n_kv + kvh) * bs + (k % bs)) * hd;
        float kr[ATT_MAX_DPL], vr[ATT_MAX_DPL];
#pragma unroll
        for (int i = 0; i < ATT_MAX_DPL; i++) {
            int d = lane + 32 * i;
            bool ok = i < dpl && d < hd;
            kr[i] = ok ? load_f32(kc, base + d) : 0.0f;
            vr[i] = ok ? load_f32(vc, base + d) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < ATT_MAX_G; j++) {
            if (j >= g) break;
            float sc = 0.0f;
#pragma unroll
            for (int i = 0; i < ATT_MAX_DPL; i++) sc += qr[j][i] * kr[i];
            sc = warp_sum(sc);
            if (softcap > 0.0f) sc = softcap * tanhf(sc / softcap);
            float mn = fmaxf(m[j], sc);
            float c = __expf(m[j] - mn);
            float p = __expf(sc - mn);
            l[j] = l[j] * c + p;
#pragma unroll
            for (int i = 0; i < ATT_MAX_DPL; i++) acc[j][i] = acc[j][i] * c + p * vr[i];
            m[j] = mn;
        }
    }

    // Merge the warps' partial softmax states.
#pragma unroll
    for (int j = 0; j < ATT_MAX_G; j++) {
        if (j >= g) break;
        if (lane == 0) { sm_m[warp][j] = m[j]; sm_l[warp][j] = l[j]; }
#pragma unroll
        for (int i = 0; i < ATT_MAX_DPL; i++) sm_acc[warp][j][lane + 32 * i] = acc[j][i];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < g * hd; idx += blockDim.x) {
        int j = idx / hd, d = idx % hd;
        int i = d / 32, ln = d % 32;
        float mx = NEG_INF;
        for (int w = 0; w < ATT_WARPS; w++) mx = fmaxf(mx, sm_m[w][j]);
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) {
            float mw = sm_m[w][j];
            if (mw == NEG_INF) continue;
            float f = __expf(mw - mx);
            num += sm_acc[w][j][ln + 32 * i] * f;
            den += sm_l[w][j] * f;
        }
        out[(long)t * n_heads * hd + (long)(kvh * g + j) * hd + d] = den > 0.0f ? num / den : 0.0f;
    }
}

#define ATTENTION(NAME, KV) \
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32) NAME( \
    const float* q, const KV* kc, const KV* vc, const int* query_start, int num_seqs, \
    const int* context_lens, const int* block_tables, int bt_cols, int bs, int n_heads, int n_kv, \
    int hd, float scale, int window, float softcap, float* out) { \
    attention_row<KV>(q, kc, vc, query_start, num_seqs, context_lens, block_tables, bt_cols, bs, \
                      n_heads, n_kv, hd, scale, window, softcap, out); \
}
ATTENTION(paged_attention_f32, float)
ATTENTION(paged_attention_bf16, bf16_t)
