// Token sampling on the device, so that only ids cross to the host (the semantics of
// crates/engine/src/sampling.rs and of the CPU reference crates/backend/src/sample.rs):
// logit processors (bias, repetition, presence/frequency penalties), then greedy, or
// temperature, top-k, top-p, min-p and one draw by inverse CDF over the kept tokens in
// id order with the host's uniform u (from the sequence's seeded generator).
//
// One block of 1024 threads per row, no sort (sums in f64, see block_sum_f64): top-k and top-p are thresholds found by a
// bitwise search over the order-preserving integer image of the scaled logits (32
// passes over the row, each a block reduction; a row of 49k-256k floats sits in L1/L2),
// in the spirit of radix select. min-p needs no search: e^(l - max) >= min_p.
//
// rows: 12 ints per row: temperature, top_k, top_p, min_p, u, first adjustment,
// adjustment count, repetition, presence, frequency (f32 bits where real), the row of
// `tokens` holding the sequence's pending token (or -1), unused. adjust: 4 ints per
// entry: token, bias (f32 bits), seen (0/1), generated count. A token's logit becomes
// (l + bias), divided (positive) or multiplied (negative) by the repetition penalty if
// seen, minus presence + frequency × count if generated: the host sampler's f32
// operations in its order, rounded the same (the _rn intrinsics keep the compiler from
// fusing them). The pending token (overlapped steps: sampled by the step before, not yet
// counted by the host) counts as seen and generated once more: its entry's count goes
// up, or it gets an entry of its own (thread 0, kept in shared memory).
// The kernel keeps each entry's raw logit in its bias slot (the upload is the sampler's
// own) and puts the raw logits back before it returns: log-probabilities are of the raw
// distribution and are taken after the draw (logprobs_kernel below).

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

// Puts back the raw logits of the row's adjusted tokens (after every read of the row),
// the pending token's own entry (`extra`, -1 if none) included.
__device__ __forceinline__ void restore_raw_logits(float* row, int vocab, const int* adjust, int a0, int an,
                                                   int extra, float extra_raw) {
    __syncthreads();
    for (int i = threadIdx.x; i < an; i += blockDim.x) {
        const int* e = adjust + (long)(a0 + i) * 4;
        if (e[0] >= 0 && e[0] < vocab) row[e[0]] = __int_as_float(e[1]);
    }
    if (threadIdx.x == 0 && extra >= 0) row[extra] = extra_raw;
}

// One token's logit after the processors (see the header).
__device__ __forceinline__ float adjusted_logit(float l, float bias, bool seen, int count, float rep, float pres,
                                                float freq) {
    float v = __fadd_rn(l, bias);
    if (rep != 1.0f && seen) v = v > 0.0f ? __fdiv_rn(v, rep) : __fmul_rn(v, rep);
    if (count > 0 && (pres != 0.0f || freq != 0.0f)) v = __fsub_rn(v, __fadd_rn(pres, __fmul_rn(freq, (float)count)));
    return v;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_kernel(float* logits, int vocab,
                                                                         const int* rows, int* adjust,
                                                                         const int* tokens, int* out) { pdl_entry();
    __shared__ float scratch[32];
    __shared__ double dscratch[32];
    __shared__ int iscratch[32];
    __shared__ double incl[SAMPLE_THREADS];
    __shared__ int picked;
    __shared__ int pend_token, pend_entry;
    __shared__ float pend_raw;
    const int r = blockIdx.x, tid = threadIdx.x;
    float* row = logits + (long)r * vocab;
    const int* rp = rows + r * 12;
    const float temp = __int_as_float(rp[0]);
    const int top_k = rp[1];
    const float top_p = __int_as_float(rp[2]);
    const float min_p = __int_as_float(rp[3]);
    const float u = __int_as_float(rp[4]);
    const int a0 = rp[5], an = rp[6];
    const float rep = __int_as_float(rp[7]), pres = __int_as_float(rp[8]), freq = __int_as_float(rp[9]);
    const int pending_row = rp[10];

    // The pending token and its entry, if it has one (at most one: one entry per token).
    if (tid == 0) {
        const int t = pending_row >= 0 ? tokens[pending_row] : -1;
        pend_token = t >= 0 && t < vocab ? t : -1;
        pend_entry = -1;
    }
    __syncthreads();
    if (pend_token >= 0) {
        for (int i = tid; i < an; i += blockDim.x)
            if (adjust[(long)(a0 + i) * 4] == pend_token) pend_entry = i;
        __syncthreads();
    }
    // Processors (one entry per token, so no two threads touch the same logit).
    for (int i = tid; i < an; i += blockDim.x) {
        int* e = adjust + (long)(a0 + i) * 4;
        const int id = e[0];
        if (id < 0 || id >= vocab) continue;
        const bool pend = i == pend_entry;
        const float raw = row[id];
        row[id] = adjusted_logit(raw, __int_as_float(e[1]), e[2] != 0 || pend, e[3] + (pend ? 1 : 0), rep, pres,
                                 freq);
        e[1] = __float_as_int(raw);
    }
    // A pending token with no entry: seen, generated once, no bias.
    const int extra = pend_token >= 0 && pend_entry < 0 ? pend_token : -1;
    if (tid == 0 && extra >= 0) {
        pend_raw = row[extra];
        row[extra] = adjusted_logit(pend_raw, 0.0f, true, 1, rep, pres, freq);
    }
    __syncthreads();
    const int best = block_argmax(row, vocab, scratch, iscratch);
    if (temp <= 0.0f || top_k == 1) {
        if (tid == 0) out[r] = best;
        restore_raw_logits(row, vocab, adjust, a0, an, extra, pend_raw);
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
    restore_raw_logits(row, vocab, adjust, a0, an, extra, pend_raw);
}

// Log-probabilities of the raw logits for the rows that ask (the semantics of
// crates/backend/src/sample.rs `logprob_record`, the reference): the log-sum-exp, the
// sampled token's log-probability and the n most likely tokens, most likely first
// (equal logits: the smaller id first; NaN never listed). Only these records, 168 bytes
// a row, cross to the host, where the logits rows themselves are 4 bytes per token of
// the vocabulary.
//
// One block per asking row. The n-th largest logit is found by a radix select on the
// order-preserving keys (4 passes of 8 bits, a 256-bin histogram in shared memory, lanes
// with the same bin adding once through __match_any_sync), in the manner of PyTorch's
// radix-select top-k; then the tokens above it are gathered, and the tokens equal to
// it are taken in id order (a block-wide scan over contiguous chunks gives their ranks),
// and the at most 20 survivors are sorted.
//
// asks: 2 ints per asking row: its row in the logits and ids, n (clamped to 20).
// out: LOGPROB_RECORD floats per asking row: the sampled token's log-probability, the
// log-sum-exp, then 20 pairs (id as int bits, log-probability), unused ids -1.

#define LOGPROB_THREADS 1024
#define MAX_TOP_LOGPROBS 20
#define LOGPROB_RECORD (2 + 2 * MAX_TOP_LOGPROBS)

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    float t = lane < nw ? scratch[lane] : NEG_INF;
    return warp_max(t);
}

__device__ __forceinline__ unsigned int warp_inclusive_scan(unsigned int x) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    return x;
}

// The sum of v over the threads before this one (blockDim.x a multiple of 32).
__device__ __forceinline__ unsigned int block_exclusive_scan(unsigned int v, unsigned int* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int x = warp_inclusive_scan(v);
    __syncthreads();
    if (lane == 31) scratch[warp] = x;
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        scratch[lane] = warp_inclusive_scan(lane < nw ? scratch[lane] : 0u);
    }
    __syncthreads();
    return (warp > 0 ? scratch[warp - 1] : 0u) + x - v;
}

// The select key: order_key with -0 read as +0 (they are equal logits, ordered by id, as
// on the host), and 0 for NaN, below every number's key (>= 0x007fffff).
__device__ __forceinline__ unsigned int logprob_key(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0u;
    if ((u << 1) == 0u) u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

extern "C" __global__ void __launch_bounds__(LOGPROB_THREADS) logprobs_kernel(const float* logits, int vocab,
                                                                            const int* ids, const int* asks,
                                                                            float* out) { pdl_entry();
    __shared__ float scratch[32];
    __shared__ double dscratch[32];
    __shared__ unsigned int uscratch[32];
    __shared__ unsigned int hist[256];
    __shared__ int sel_bin;
    __shared__ unsigned int sel_above, sel_want;
    __shared__ int n_top;
    __shared__ int top_id[MAX_TOP_LOGPROBS];
    __shared__ float top_l[MAX_TOP_LOGPROBS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int r = asks[2 * blockIdx.x];
    const int n = min(max(asks[2 * blockIdx.x + 1], 0), MAX_TOP_LOGPROBS);
    const float* row = logits + (long)r * vocab;
    float* rec = out + (long)blockIdx.x * LOGPROB_RECORD;

    // log-sum-exp (the maximum ignores NaN, as f32::max does; a NaN then makes the sum NaN).
    float m = NEG_INF;
    for (int i = tid; i < vocab; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_max(m, scratch);
    float lse = m;
    if (isfinite(m)) {
        double s = 0.0;
        for (int i = tid; i < vocab; i += blockDim.x) s += (double)expf(row[i] - m);
        s = block_sum_f64(s, dscratch);
        lse = m + (float)log(s);
    }
    if (tid == 0) {
        const int id = ids[r];
        rec[0] = id >= 0 && id < vocab ? row[id] - lse : __int_as_float(0x7fc00000);
        rec[1] = lse;
    }
    for (int j = tid; j < MAX_TOP_LOGPROBS; j += blockDim.x) {
        rec[2 + 2 * j] = __int_as_float(-1);
        rec[3 + 2 * j] = 0.0f;
    }
    if (n == 0) return;

    // Radix select of the key K of the n-th largest logit (fewer when the row has fewer
    // non-NaN logits); `above` counts the keys greater than K.
    unsigned int prefix = 0, mask = 0, want = (unsigned int)n, above = 0;
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        for (int b = tid; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        for (int base = 0; base < vocab; base += blockDim.x) {
            const int i = base + tid;
            const unsigned int k = i < vocab ? logprob_key(row[i]) : 0u;
            const bool counted = k != 0u && (k & mask) == prefix;
            const int bin = counted ? (int)((k >> shift) & 255u) : -1 - lane;
            const unsigned int peers = __match_any_sync(0xffffffffu, bin);
            if (counted && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (unsigned int)__popc(peers));
        }
        __syncthreads();
        if (warp == 0) {
            // Lane l owns bins 255 - 8l down to 248 - 8l: counts from the top.
            unsigned int c = 0;
            for (int j = 0; j < 8; j++) c += hist[255 - 8 * lane - j];
            const unsigned int inc = warp_inclusive_scan(c);
            const unsigned int total = __shfl_sync(0xffffffffu, inc, 31);
            if (pass == 0 && total < want) want = total;
            const unsigned int ballot = __ballot_sync(0xffffffffu, inc >= want);
            const int first = want == 0u ? -1 : __ffs(ballot) - 1;
            if (first < 0 && lane == 0) { sel_bin = -1; sel_above = 0; sel_want = 0; }
            if (lane == first) {
                unsigned int acc = inc - c;
                int b = 255 - 8 * lane;
                for (int j = 0; j < 7 && acc + hist[b] < want; j++, b--) acc += hist[b];
                sel_bin = b;
                sel_above = acc;
                sel_want = want - acc;
            }
        }
        __syncthreads();
        if (sel_bin < 0) return;  // only NaN in the row
        prefix |= (unsigned int)sel_bin << shift;
        mask |= 255u << shift;
        above += sel_above;
        want = sel_want;
        __syncthreads();  // sel_* are rewritten by the next pass
    }
    const unsigned int kth = prefix;

    // Gather: every key above K (fewer than n, any order), then the `want` smallest ids
    // with key K, ranked by a scan over contiguous chunks (id order).
    if (tid == 0) n_top = 0;
    __syncthreads();
    for (int i = tid; i < vocab; i += blockDim.x) {
        const float l = row[i];
        if (logprob_key(l) > kth) {
            const int at = atomicAdd(&n_top, 1);
            if (at < MAX_TOP_LOGPROBS) { top_id[at] = i; top_l[at] = l; }
        }
    }
    const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int lo = min(vocab, tid * chunk), hi = min(vocab, lo + chunk);
    unsigned int ties = 0;
    for (int i = lo; i < hi; i++) ties += logprob_key(row[i]) == kth ? 1u : 0u;
    unsigned int rank = block_exclusive_scan(ties, uscratch);
    for (int i = lo; i < hi && rank < want; i++) {
        const float l = row[i];
        if (logprob_key(l) == kth) {
            const unsigned int at = above + rank;
            if (at < MAX_TOP_LOGPROBS) { top_id[at] = i; top_l[at] = l; }
            rank++;
        }
    }
    __syncthreads();
    if (tid == 0) {
        const int count = min((int)(above + want), MAX_TOP_LOGPROBS);
        // Insertion sort: larger logit first, then the smaller id.
        for (int a = 1; a < count; a++) {
            const int id = top_id[a];
            const float l = top_l[a];
            int b = a - 1;
            while (b >= 0 && (top_l[b] < l || (top_l[b] == l && top_id[b] > id))) {
                top_id[b + 1] = top_id[b];
                top_l[b + 1] = top_l[b];
                b--;
            }
            top_id[b + 1] = id;
            top_l[b + 1] = l;
        }
        for (int j = 0; j < count; j++) {
            rec[2 + 2 * j] = __int_as_float(top_id[j]);
            rec[3 + 2 * j] = top_l[j] - lse;
        }
    }
}
