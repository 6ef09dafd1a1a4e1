// Token sampling on the device, so that only ids cross to the host (the semantics of
// crates/engine/src/sampling.rs and of the CPU reference crates/backend/src/cpu/sample.rs):
// logit processors (bias, repetition, presence/frequency penalties), then greedy, or
// temperature, top-k, top-p, min-p and one draw by inverse CDF over the kept tokens in
// id order with the host's uniform u (from the sequence's seeded generator).
//
// One block of 1024 threads per row, no sort (sums in f64, see block_sum_f64): top-k and top-p are thresholds found by a
// bitwise search over the order-preserving integer image of the scaled logits (32
// passes over the row, each a block reduction; a row of 49k-256k floats sits in L1/L2),
// in the spirit of radix select. min-p needs no search: e^(l - max) >= min_p.
//
// rows: 8 ints per row: temperature, top_k, top_p, min_p, u (f32 bits where real),
// first adjustment, adjustment count, unused. adjust: 4 ints per entry: token, bias,
// repetition penalty, subtracted penalty (f32 bits), applied in that order.

#define SAMPLE_THREADS 1024

// Monotone map of a float to an unsigned key (a < b <=> key(a) < key(b), NaN aside).
__device__ __forceinline__ unsigned int order_key(float f) {
    unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Sum over the block in f64: the masses and the draw's cumulative sums run over up to
// the whole vocabulary, where f32 rounding would move the top-p cut and the drawn token
// away from the reference's in a measurable share of rows.
__device__ __forceinline__ double block_sum_f64(double v, double* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    double t = lane < nw ? scratch[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_kernel(float* logits, int vocab,
                                                                         const int* rows, const int* adjust,
                                                                         int* out) { pdl_entry();
    __shared__ float scratch[32];
    __shared__ double dscratch[32];
    __shared__ int iscratch[32];
    __shared__ double incl[SAMPLE_THREADS];
    __shared__ int picked;
    const int r = blockIdx.x, tid = threadIdx.x;
    float* row = logits + (long)r * vocab;
    const int* rp = rows + r * 8;
    const float temp = __int_as_float(rp[0]);
    const int top_k = rp[1];
    const float top_p = __int_as_float(rp[2]);
    const float min_p = __int_as_float(rp[3]);
    const float u = __int_as_float(rp[4]);
    const int a0 = rp[5], an = rp[6];

    // Processors (one entry per token, so no two threads touch the same logit).
    for (int i = tid; i < an; i += blockDim.x) {
        const int* e = adjust + (long)(a0 + i) * 4;
        const int id = e[0];
        if (id < 0 || id >= vocab) continue;
        float l = row[id] + __int_as_float(e[1]);
        const float rep = __int_as_float(e[2]);
        if (rep != 1.0f) l = l > 0.0f ? l / rep : l * rep;
        row[id] = l - __int_as_float(e[3]);
    }
    __syncthreads();
    const int best = block_argmax(row, vocab, scratch, iscratch);
    if (temp <= 0.0f || top_k == 1) {
        if (tid == 0) out[r] = best;
        return;
    }
    const float inv_t = 1.0f / temp;
    const float mx = row[best] * inv_t;

    // top-k: the largest key K with at least k scaled logits at or above it.
    unsigned int kth = 0;
    if (top_k > 0 && top_k < vocab) {
        unsigned int prefix = 0;
        for (int b = 31; b >= 0; b--) {
            const unsigned int cand = prefix | (1u << b);
            float c = 0.0f;
            for (int i = tid; i < vocab; i += blockDim.x) c += order_key(row[i] * inv_t) >= cand ? 1.0f : 0.0f;
            c = block_sum(c, scratch);
            if (c >= (float)top_k) prefix = cand;
        }
        kth = prefix;
    }
    // Softmax mass of the top-k set (unnormalised: the maximum weighs 1).
    double z = 0.0;
    for (int i = tid; i < vocab; i += blockDim.x) {
        const float l = row[i] * inv_t;
        if (order_key(l) >= kth) z += expf(l - mx);
    }
    z = block_sum_f64(z, dscratch);
    // top-p: the largest key whose tokens at or above it hold at least top_p of the mass
    // (the shortest prefix of the sorted tokens reaching top_p).
    unsigned int keep = kth;
    if (top_p < 1.0f) {
        unsigned int prefix = 0;
        const double want = (double)top_p * z;
        for (int b = 31; b >= 0; b--) {
            const unsigned int cand = prefix | (1u << b);
            const unsigned int lo = cand > kth ? cand : kth;
            double m = 0.0;
            for (int i = tid; i < vocab; i += blockDim.x) {
                const float l = row[i] * inv_t;
                if (order_key(l) >= lo) m += expf(l - mx);
            }
            m = block_sum_f64(m, dscratch);
            if (m >= want) prefix = cand;
        }
        keep = prefix > kth ? prefix : kth;
    }
    // Weights of the kept tokens; min-p keeps p >= min_p * p_max, i.e. e^(l - max) >= min_p.
#define SAMPLE_WEIGHT(i, w) { const float l_ = row[i] * inv_t; w = 0.0f; \
        if (order_key(l_) >= keep) { w = expf(l_ - mx); if (min_p > 0.0f && w < min_p) w = 0.0f; } }
    const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int lo = min(vocab, tid * chunk), hi = min(vocab, lo + chunk);
    double s = 0.0;
    for (int i = lo; i < hi; i++) { float w; SAMPLE_WEIGHT(i, w); s += w; }
    incl[tid] = s;
    if (tid == 0) picked = best;
    __syncthreads();
    for (int off = 1; off < (int)blockDim.x; off <<= 1) {
        const double add = tid >= off ? incl[tid - off] : 0.0;
        __syncthreads();
        incl[tid] += add;
        __syncthreads();
    }
    const double total = incl[blockDim.x - 1];
    // The maximum always stays (weight 1), so total >= 1 and a crossing exists.
    const double target = fmax((double)u * total, 1e-30);
    const double before = tid > 0 ? incl[tid - 1] : 0.0;
    if (s > 0.0 && before < target && incl[tid] >= target) {
        double acc = before;
        int last = -1;
        for (int i = lo; i < hi; i++) {
            float w; SAMPLE_WEIGHT(i, w);
            if (w > 0.0f) {
                last = i;
                acc += w;
                if (acc >= target) break;
            }
        }
        if (last >= 0) picked = last;
    }
#undef SAMPLE_WEIGHT
    __syncthreads();
    if (tid == 0) out[r] = picked;
}
