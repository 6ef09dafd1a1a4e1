// Paged attention for a mixed batch of prefill chunks and decodes (the CPU kernel's
// contract, crates/backend/src/cpu/attention.rs): q [T, n_heads * hd] f32, caches
// [num_blocks, n_kv, bs, hd] (f32, bf16 or FP8 E4M3), out [T, n_heads * hd] f32.
//
// One block per (query row, KV head, key split). The g query heads that share a KV head
// are handled together (GQA: a K/V row is read once for all of them), with an online
// softmax (Milakov & Gimelshein 2018; FlashAttention's running max and sum), so memory
// stays O(1) in the context length; there is no T x T score matrix.
//
// - Compile-time G (query heads per KV head, rounded up to 1/2/4/8) and DPL (head_dim /
//   32 rounded up to 2/4/8): each instantiation holds only the registers it needs.
// - Split-K over the keys (flash-decoding, Dao et al. 2023): blockIdx.z takes keys
//   [z * split_len, (z + 1) * split_len), so a decode of one sequence runs on
//   n_kv * splits blocks instead of n_kv, and prefill rows of unequal length balance.
//   With splits > 1 each block writes its unnormalised partial state (m, l, acc) and
//   attention_merge_kernel combines them (the log-sum-exp merge of FlashAttention).
// - Rows of sequences with more than `max_q_rows` rows return at once: the host gives
//   those to the tensor-core prefill kernel (attention_prefill.cu), launched after this
//   kernel and the merge, so it overwrites whatever the merge wrote for them.
// - Over a bf16 cache with head_dim 64 or 128 the host runs neither this kernel nor its
//   split choice: the tensor-core decode kernel (attention_decode.cu) takes the short
//   sequences and writes the same partial layout for attention_merge_kernel below. This
//   kernel remains for f32 caches and other head dims.
// - Lane per key: a warp takes 32 keys at a time with one key per lane for Q.K (the lane
//   reads its key's whole row with 16-byte loads, q comes from shared memory as a
//   broadcast), one softmax update per 32 keys and head (two warp reductions), then P.V
//   with lanes over the head dimension (each key's p broadcast by a shuffle). The block's
//   four warps take interleaved tiles and merge their states through shared memory.
//
// History, measured on an H100 with the Llama-3.1-8B shape (docs/BENCHMARKS.md): an
// earlier "warp per key" kernel (lanes over the head dimension for Q.K too, one shuffle
// reduction per key and head) took 52.2 ms for a batch-64 decode step at 4k context and
// 31.0 ms for a 512-token prefill, against 35.6 and 25.8 ms here; unrolling its key loads
// (4 keys per iteration) was slower still. It was removed.

#define ATT_WARPS 4

template <typename KV, int G, int DPL>
__device__ void attention_lanes(const float* __restrict__ q, const KV* __restrict__ kc, const KV* __restrict__ vc,
                                const int* __restrict__ query_start, int num_seqs,
                                const int* __restrict__ context_lens, const int* __restrict__ block_tables,
                                int bt_cols, int bs, int n_heads, int n_kv, int hd, float scale,
                                int window, float softcap, int split_len, int max_q_rows,
                                float* __restrict__ partial, float* __restrict__ out) {
    __shared__ float sq[G][DPL * 32];
    __shared__ float sm_m[ATT_WARPS][G];
    __shared__ float sm_l[ATT_WARPS][G];
    __shared__ float sm_acc[ATT_WARPS][G][DPL * 32];
    const int t = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z, splits = gridDim.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = n_heads / n_kv;

    int lo_s = 0, hi_s = num_seqs - 1;
    while (lo_s < hi_s) {
        int mid = (lo_s + hi_s + 1) >> 1;
        if (query_start[mid] <= t) lo_s = mid; else hi_s = mid - 1;
    }
    const int s = lo_s;
    const int q_rows = query_start[s + 1] - query_start[s];
    // Sequences with more rows are the tensor-core prefill kernel's (attention_prefill.cu).
    if (q_rows > max_q_rows) return;
    const int pos = context_lens[s] - q_rows + (t - query_start[s]);
    const int first = window > 0 ? max(0, pos - window + 1) : 0;
    const int lo = max(first, z * split_len);
    const int hi = min(pos, z * split_len + split_len - 1);
    const int* table = block_tables + (long)s * bt_cols;

    for (int idx = threadIdx.x; idx < G * DPL * 32; idx += blockDim.x) {
        int j = idx / (DPL * 32), d = idx % (DPL * 32);
        sq[j][d] = (j < g && d < hd) ? q[(long)t * n_heads * hd + (long)(kvh * g + j) * hd + d] * scale : 0.0f;
    }
    __syncthreads();

    float acc[G][DPL];
    float m[G], l[G];
#pragma unroll
    for (int j = 0; j < G; j++) {
        m[j] = NEG_INF; l[j] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[j][i] = 0.0f;
    }
    const bool vec = (hd & 7) == 0;
    for (int k0 = lo + 32 * warp; k0 <= hi; k0 += 32 * ATT_WARPS) {
        const int k = k0 + lane;
        const bool kin = k <= hi;
        float sc[G];
#pragma unroll
        for (int j = 0; j < G; j++) sc[j] = 0.0f;
        if (kin) {
            const long base = (((long)table[k / bs] * n_kv + kvh) * bs + (k % bs)) * hd;
            if (vec) {
                for (int d0 = 0; d0 < hd; d0 += 8) {
                    float kv[8];
                    load8(kc, base + d0, kv);
#pragma unroll
                    for (int e = 0; e < 8; e++) {
#pragma unroll
                        for (int j = 0; j < G; j++) sc[j] += sq[j][d0 + e] * kv[e];
                    }
                }
            } else {
                for (int d = 0; d < hd; d++) {
                    float kv = load_f32(kc, base + d);
#pragma unroll
                    for (int j = 0; j < G; j++) sc[j] += sq[j][d] * kv;
                }
            }
        }
        float pj[G];
#pragma unroll
        for (int j = 0; j < G; j++) {
            float sj = sc[j];
            if (softcap > 0.0f) sj = softcap * tanhf(sj / softcap);
            sj = kin ? sj : NEG_INF;
            // Lane 0's key (k0 <= hi) is always in range, so the tile maximum is finite.
            float mn = fmaxf(m[j], warp_max(sj));
            float c = __expf(m[j] - mn);
            float p = kin ? __expf(sj - mn) : 0.0f;
            l[j] = l[j] * c + warp_sum(p);
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[j][i] *= c;
            m[j] = mn;
            pj[j] = p;
        }
        const int nk = min(32, hi - k0 + 1);
#pragma unroll 4
        for (int kk = 0; kk < nk; kk++) {
            const int key = k0 + kk;
            const long base = (((long)table[key / bs] * n_kv + kvh) * bs + (key % bs)) * hd;
            float vr[DPL];
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                int d = lane + 32 * i;
                vr[i] = d < hd ? load_f32(vc, base + d) : 0.0f;
            }
#pragma unroll
            for (int j = 0; j < G; j++) {
                float p = __shfl_sync(0xffffffffu, pj[j], kk);
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[j][i] += p * vr[i];
            }
        }
    }

#pragma unroll
    for (int j = 0; j < G; j++) {
        if (j >= g) break;
        if (lane == 0) { sm_m[warp][j] = m[j]; sm_l[warp][j] = l[j]; }
#pragma unroll
        for (int i = 0; i < DPL; i++) sm_acc[warp][j][lane + 32 * i] = acc[j][i];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < g * hd; idx += blockDim.x) {
        int j = idx / hd, d = idx % hd;
        float mx = NEG_INF;
        for (int w = 0; w < ATT_WARPS; w++) mx = fmaxf(mx, sm_m[w][j]);
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) {
            float mw = sm_m[w][j];
            if (mw == NEG_INF) continue;
            float f = __expf(mw - mx);
            num += sm_acc[w][j][d] * f;
            den += sm_l[w][j] * f;
        }
        const int h = kvh * g + j;
        if (splits > 1) {
            float* pp = partial + (((long)t * n_heads + h) * splits + z) * (hd + 2);
            if (d == 0) { pp[0] = den > 0.0f ? mx : NEG_INF; pp[1] = den; }
            pp[2 + d] = num;
        } else {
            out[(long)t * n_heads * hd + (long)h * hd + d] = den > 0.0f ? num / den : 0.0f;
        }
    }
}

#define ATTENTION_LANES(KVN, KV, G, DPL) \
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32) paged_attention_##KVN##_g##G##_d##DPL( \
    const float* q, const KV* kc, const KV* vc, const int* query_start, int num_seqs, \
    const int* context_lens, const int* block_tables, int bt_cols, int bs, int n_heads, int n_kv, \
    int hd, float scale, int window, float softcap, int split_len, int max_q_rows, float* partial, \
    float* out) { pdl_entry(); \
    attention_lanes<KV, G, DPL>(q, kc, vc, query_start, num_seqs, context_lens, block_tables, bt_cols, \
                                bs, n_heads, n_kv, hd, scale, window, softcap, split_len, max_q_rows, \
                                partial, out); \
}
#define ATTENTION_LANES_G(KVN, KV, G) ATTENTION_LANES(KVN, KV, G, 2) ATTENTION_LANES(KVN, KV, G, 4) ATTENTION_LANES(KVN, KV, G, 8)
#define ATTENTION_LANES_KV(KVN, KV) ATTENTION_LANES_G(KVN, KV, 1) ATTENTION_LANES_G(KVN, KV, 2) ATTENTION_LANES_G(KVN, KV, 4) ATTENTION_LANES_G(KVN, KV, 8)
ATTENTION_LANES_KV(f32, float)
ATTENTION_LANES_KV(bf16, bf16_t)
ATTENTION_LANES_KV(fp8, fp8_t)

// Combines the splits of each (row, head): out = sum_z acc_z e^(m_z - M) / sum_z l_z e^(m_z - M).
// The splits' weights are computed once, in parallel, into shared memory; each thread then
// sums its dimensions over the splits with independent loads (a serial loop over the
// splits' maxima cost ~40 us per layer at 66 splits: one memory latency per split).
#define MERGE_MAX_SPLITS 1024
extern "C" __global__ void attention_merge_kernel(const float* __restrict__ partial, int splits,
                                                  int n_heads, int hd, float* __restrict__ out,
                                                  bf16_t* __restrict__ out_bf16) { pdl_entry();
    __shared__ float wz[MERGE_MAX_SPLITS];
    __shared__ float scratch[32];
    const int t = blockIdx.x, h = blockIdx.y;
    const float* pp = partial + ((long)t * n_heads + h) * splits * (hd + 2);
    float mx = NEG_INF;
    for (int z = threadIdx.x; z < splits; z += blockDim.x) mx = fmaxf(mx, pp[(long)z * (hd + 2)]);
    mx = warp_max(mx);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = NEG_INF;
    for (int w = 0; w < (int)((blockDim.x + 31) >> 5); w++) mx = fmaxf(mx, scratch[w]);
    __syncthreads();
    float den = 0.0f;
    for (int z = threadIdx.x; z < splits; z += blockDim.x) {
        const float* p = pp + (long)z * (hd + 2);
        float f = (p[0] == NEG_INF || mx == NEG_INF) ? 0.0f : __expf(p[0] - mx);
        wz[z] = f;
        den += p[1] * f;
    }
    den = block_sum(den, scratch);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f;
#pragma unroll 8
        for (int z = 0; z < splits; z++) num += pp[(long)z * (hd + 2) + 2 + d] * wz[z];
        const float y = den > 0.0f ? num / den : 0.0f;
        out[((long)t * n_heads + h) * hd + d] = y;
        if (out_bf16) out_bf16[((long)t * n_heads + h) * hd + d] = f32_to_bf16(y);  // for the next GEMM
    }
}
