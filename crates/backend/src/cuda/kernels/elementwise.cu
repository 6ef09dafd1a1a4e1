// Element-wise and row-wise ops. One thread per element unless noted; `long` indices
// so that tensors over 2^31 elements (a KV pool, an 8B embedding table) index right.

#define GRID_STRIDE(i, n) for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)

// f32 -> bf16 / f16 staging of activations for cuBLASLt. Eight elements per thread with
// two 16-byte loads and one 16-byte store when both pointers are 16-byte aligned (the
// launcher sizes the grid for n / 8 threads): the one-element-per-thread version moved
// 1.7 TB/s on an H200 and was 11% of a large prefill step. Element i is converted by the
// same rounding either way.
template <typename H>
__device__ __forceinline__ H to_half(float f);
template <> __device__ __forceinline__ bf16_t to_half<bf16_t>(float f) { return f32_to_bf16(f); }
template <> __device__ __forceinline__ f16_t to_half<f16_t>(float f) { return f32_to_f16(f); }

template <typename H>
__device__ __forceinline__ unsigned int pack_half2(float a, float b) {
    return (unsigned int)(unsigned short)to_half<H>(a) | ((unsigned int)(unsigned short)to_half<H>(b) << 16);
}

template <typename H>
__device__ __forceinline__ void to_half_body(const float* x, H* y, long n) {
    const long n8 = n / 8;
    if (((reinterpret_cast<unsigned long>(x) | reinterpret_cast<unsigned long>(y)) & 15) == 0) {
        const float4* xv = reinterpret_cast<const float4*>(x);
        uint4* yv = reinterpret_cast<uint4*>(y);
        GRID_STRIDE(i, n8) {
            const float4 a = xv[2 * i], b = xv[2 * i + 1];
            yv[i] = make_uint4(pack_half2<H>(a.x, a.y), pack_half2<H>(a.z, a.w), pack_half2<H>(b.x, b.y),
                               pack_half2<H>(b.z, b.w));
        }
        GRID_STRIDE(i, n - 8 * n8) y[8 * n8 + i] = to_half<H>(x[8 * n8 + i]);
    } else {
        GRID_STRIDE(i, n) y[i] = to_half<H>(x[i]);
    }
}

extern "C" __global__ void f32_to_bf16_kernel(const float* x, bf16_t* y, long n) { pdl_entry();
    to_half_body<bf16_t>(x, y, n);
}

extern "C" __global__ void f32_to_f16_kernel(const float* x, f16_t* y, long n) { pdl_entry();
    to_half_body<f16_t>(x, y, n);
}

// out = x / sqrt(mean(x^2) + eps) * w over rows of `cols`; one block per row.
// `out` may alias `x` (each element is read before it is written by the same thread).
// `staged` (may be null): a bf16 copy of `out` as well, for the cuBLASLt GEMM that
// consumes it (cuda/ops.rs "staged activations": the GEMM then skips its own f32-to-bf16
// pass over `out`).
// `out` may be null: only the bf16 copy then (a bf16 activation tensor, cuda/ops.rs).
extern "C" __global__ void rms_norm_kernel(const float* x, const float* w, float* out, int cols, float eps,
                                           bf16_t* staged) { pdl_entry();
    __shared__ float scratch[32];
    const float* xr = x + (long)blockIdx.x * cols;
    float* orow = out ? out + (long)blockIdx.x * cols : nullptr;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) { float v = xr[i]; ss += v * v; }
    ss = block_sum(ss, scratch);
    float inv = rsqrtf(ss / (float)cols + eps);
    bf16_t* srow = staged ? staged + (long)blockIdx.x * cols : nullptr;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = xr[i] * inv * w[i];
        if (orow) orow[i] = v;
        if (srow) srow[i] = f32_to_bf16(v);
    }
}

// x += y, then out = rms_norm(x) * w, per row: the residual add fused into the norm
// that follows it (each thread re-reads only elements it wrote itself). `staged` as above.
extern "C" __global__ void add_rms_norm_kernel(float* x, const float* y, const float* w, float* out,
                                               int cols, float eps, bf16_t* staged) { pdl_entry();
    __shared__ float scratch[32];
    float* xr = x + (long)blockIdx.x * cols;
    const float* yr = y + (long)blockIdx.x * cols;
    float* orow = out ? out + (long)blockIdx.x * cols : nullptr;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = xr[i] + yr[i];
        xr[i] = v;
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    float inv = rsqrtf(ss / (float)cols + eps);
    bf16_t* srow = staged ? staged + (long)blockIdx.x * cols : nullptr;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = xr[i] * inv * w[i];
        if (orow) orow[i] = v;
        if (srow) srow[i] = f32_to_bf16(v);
    }
}

// The two norms above for rows of cols % 4 == 0 with cols <= 4 * NORM_CHUNKS * blockDim.x
// (16-byte aligned rows): each thread loads its float4 chunks of x (and y) all at once,
// keeps them in registers, and writes x, out and the bf16 copy from there. The scalar
// kernels re-read x and w and, since nothing tells the compiler that x, y and out do not
// overlap, issue each load only after the previous store: a chain of memory latencies,
// 6.5 us per launch for 64 rows of 4096 on an H100 (Nsight Compute, batch-64 decode step).
#define NORM_CHUNKS 4
template <bool ADD>
__device__ __forceinline__ void rms_norm4_body(float* x, const float* __restrict__ y,
                                               const float* __restrict__ w, float* out, int cols,
                                               float eps, bf16_t* __restrict__ staged) {
    __shared__ float scratch[32];
    const long row = (long)blockIdx.x * cols;
    const int n4 = cols / 4;
    float4 v[NORM_CHUNKS];
    float ss = 0.0f;
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        const int i = threadIdx.x + c * blockDim.x;
        if (i < n4) {
            float4 a = reinterpret_cast<const float4*>(x + row)[i];
            if (ADD) {
                const float4 b = reinterpret_cast<const float4*>(y + row)[i];
                a.x += b.x;
                a.y += b.y;
                a.z += b.z;
                a.w += b.w;
            }
            v[c] = a;
            ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
        }
    }
    if (ADD) {
#pragma unroll
        for (int c = 0; c < NORM_CHUNKS; c++) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < n4) reinterpret_cast<float4*>(x + row)[i] = v[c];
        }
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)cols + eps);
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; c++) {
        const int i = threadIdx.x + c * blockDim.x;
        if (i < n4) {
            const float4 g = reinterpret_cast<const float4*>(w)[i];
            const float4 o = make_float4(v[c].x * inv * g.x, v[c].y * inv * g.y, v[c].z * inv * g.z,
                                         v[c].w * inv * g.w);
            if (out) reinterpret_cast<float4*>(out + row)[i] = o;
            if (staged)
                reinterpret_cast<uint2*>(staged + row)[i] =
                    make_uint2((unsigned int)f32_to_bf16(o.x) | ((unsigned int)f32_to_bf16(o.y) << 16),
                               (unsigned int)f32_to_bf16(o.z) | ((unsigned int)f32_to_bf16(o.w) << 16));
        }
    }
}

// `out` may alias `x`: every x element is in registers before the first store to out.
extern "C" __global__ void rms_norm4_kernel(const float* x, const float* w, float* out, int cols, float eps,
                                            bf16_t* staged) { pdl_entry();
    rms_norm4_body<false>(const_cast<float*>(x), nullptr, w, out, cols, eps, staged);
}

extern "C" __global__ void add_rms_norm4_kernel(float* x, const float* y, const float* w, float* out,
                                                int cols, float eps, bf16_t* staged) { pdl_entry();
    rms_norm4_body<true>(x, y, w, out, cols, eps, staged);
}

extern "C" __global__ void add_kernel(float* x, const float* y, long n) { pdl_entry();
    GRID_STRIDE(i, n) x[i] += y[i];
}

extern "C" __global__ void add_bias_kernel(float* x, const float* b, long n, int cols) { pdl_entry();
    GRID_STRIDE(i, n) x[i] += b[i % cols];
}

extern "C" __global__ void scale_kernel(float* x, float s, long n) { pdl_entry();
    GRID_STRIDE(i, n) x[i] *= s;
}

extern "C" __global__ void softcap_kernel(float* x, float cap, long n) { pdl_entry();
    GRID_STRIDE(i, n) x[i] = cap * tanhf(x[i] / cap);
}

// RoPE in place on x [T, n_heads * hd]; cos/sin [max_pos, hd/2]. One thread per rotated
// pair. neox = 1: pairs (i, i + hd/2) ("rotate_half"); 0: adjacent pairs (2i, 2i+1).
extern "C" __global__ void rope_kernel(float* x, const int* pos, const float* cos_t, const float* sin_t,
                                       int T, int n_heads, int hd, int neox) { pdl_entry();
    int half = hd / 2;
    long n = (long)T * n_heads * half;
    GRID_STRIDE(idx, n) {
        int i = (int)(idx % half);
        long th = idx / half;          // t * n_heads + h
        int t = (int)(th / n_heads);
        float* row = x + th * hd;
        long p = pos[t];
        float c = cos_t[p * half + i], s = sin_t[p * half + i];
        int a = neox ? i : 2 * i;
        int b = neox ? i + half : 2 * i + 1;
        float x0 = row[a], x1 = row[b];
        row[a] = x0 * c - x1 * s;
        row[b] = x0 * s + x1 * c;
    }
}

extern "C" __global__ void silu_mul_kernel(const float* g, const float* u, float* out, long n) { pdl_entry();
    GRID_STRIDE(i, n) { float v = g[i]; out[i] = v / (1.0f + __expf(-v)) * u[i]; }
}

// gelu with the tanh approximation (Gemma's gelu_pytorch_tanh).
extern "C" __global__ void gelu_mul_kernel(const float* g, const float* u, float* out, long n) { pdl_entry();
    GRID_STRIDE(i, n) {
        float v = g[i];
        float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        out[i] = 0.5f * v * (1.0f + tanhf(inner)) * u[i];
    }
}

// out[t, :] = table[ids[t], :] * scale for 16-bit or f32 tables.
#define EMBEDDING(NAME, W, CONV)                                                              \
extern "C" __global__ void NAME(const int* ids, const W* table, float scale, float* out,    \
                                int T, int cols) { pdl_entry();                                            \
    long n = (long)T * cols;                                                                  \
    GRID_STRIDE(i, n) {                                                                       \
        long t = i / cols; int c = (int)(i % cols);                                           \
        out[i] = CONV(table[(long)ids[t] * cols + c]) * scale;                                \
    }                                                                                         \
}
__device__ __forceinline__ float id_f32(float v) { return v; }
EMBEDDING(embedding_f32_kernel, float, id_f32)
EMBEDDING(embedding_bf16_kernel, bf16_t, bf16_to_f32)
EMBEDDING(embedding_f16_kernel, f16_t, f16_to_f32)

extern "C" __global__ void gather_rows_kernel(const float* x, const int* rows, float* out, int L, int cols) { pdl_entry();
    long n = (long)L * cols;
    GRID_STRIDE(i, n) {
        long r = i / cols; int c = (int)(i % cols);
        out[i] = x[(long)rows[r] * cols + c];
    }
}

// Overlapped steps: a token the previous step sampled on the device is uploaded as
// -(r + 1), r its row in that step's P ids `prev`, and taken from them before the
// embedding (a row outside them reads token 0; the host checks).
__device__ __forceinline__ int resolved_token(int t, const int* prev, int P) {
    if (t >= 0) return t;
    const int r = -t - 1;
    return r < P ? prev[r] : 0;
}

extern "C" __global__ void resolve_tokens_kernel(int* tokens, const int* prev, int T, int P) { pdl_entry();
    GRID_STRIDE(i, (long)T) {
        tokens[i] = resolved_token(tokens[i], prev, P);
    }
}

// A step's input arrays in one launch (cuda/upload.rs): `src` is pinned host memory
// mapped for the device, the arrays back to back (segment s ends at end[s]); each thread
// loads its values first (all loads in flight at once: each is a trip over the bus),
// then stores them. Segment `resolve` goes through resolved_token.
#define UPLOAD_SEGMENTS 8
struct UploadSegments {
    const int* src;
    int* dst[UPLOAD_SEGMENTS];
    int end[UPLOAD_SEGMENTS];
    const int* prev;
    int nseg, resolve, prev_n, pad;
};
extern "C" __global__ void upload_segments_kernel(UploadSegments a) { pdl_entry();
    const long total = a.end[a.nseg - 1];
    GRID_STRIDE(i, total) {
        const int v = a.src[i];
        int s = 0, start = 0;
        int* dst = a.dst[0];
#pragma unroll
        for (int j = 1; j < UPLOAD_SEGMENTS; j++)
            if (j < a.nseg && i >= a.end[j - 1]) { s = j; start = a.end[j - 1]; dst = a.dst[j]; }
        dst[i - start] = s == a.resolve ? resolved_token(v, a.prev, a.prev_n) : v;
    }
}

// A step's sampled ids (n) and log-probability records (m, f32 bits) into the mapped
// pinned readback slot `host` (cuda/readback.rs): a kernel, so that it chains with the
// kernels around it under PDL where a copy would stand between them. One block; the
// host reads the slot after an event recorded behind this kernel.
extern "C" __global__ void readback_kernel(const int* ids, int n, const int* records, int m, int* host) { pdl_entry();
    for (int i = threadIdx.x; i < n + m; i += blockDim.x)
        host[i] = i < n ? ids[i] : records[i - n];
}

// Writes k, v [T, n_kv * hd] into caches [num_blocks, n_kv, bs, hd] at slots[t]
// (block * bs + offset; negative = padding, skipped).
#define KV_WRITE(NAME, KV)                                                                    \
extern "C" __global__ void NAME(const float* k, const float* v, KV* kc, KV* vc,              \
                                const int* slots, int T, int n_kv, int bs, int hd) { pdl_entry();          \
    long kvd = (long)n_kv * hd;                                                               \
    long n = (long)T * kvd;                                                                   \
    GRID_STRIDE(i, n) {                                                                       \
        long t = i / kvd; long j = i % kvd;                                                   \
        int slot = slots[t];                                                                  \
        if (slot < 0) continue;                                                               \
        long blk = slot / bs, off = slot % bs, h = j / hd, d = j % hd;                        \
        long dst = ((blk * n_kv + h) * bs + off) * hd + d;                                    \
        store_kv(kc, dst, k[i]);                                                              \
        store_kv(vc, dst, v[i]);                                                              \
    }                                                                                         \
}
KV_WRITE(kv_write_f32_kernel, float)
KV_WRITE(kv_write_bf16_kernel, bf16_t)
KV_WRITE(kv_write_fp8_kernel, fp8_t)

// Greedy sampling on the device: the first index of each row's maximum (the host's
// `argmax` rule), one block of 1024 threads per row. NaN never wins.
extern "C" __global__ void argmax_kernel(const float* logits, int* out, int vocab) { pdl_entry();
    __shared__ float sv[32];
    __shared__ int si[32];
    const int bi = block_argmax(logits + (long)blockIdx.x * vocab, vocab, sv, si);
    if (threadIdx.x == 0) out[blockIdx.x] = bi;
}

// argmax_kernel over `gridDim.y` blocks per row, each taking ARGMAX_SPAN logits: a
// single block per row is bound by one SM's load rate (a 49,152-entry row: ~6 us).
// Each block's best goes into its row's 64-bit slot with atomicMax as a key that
// orders by value, then by the lower index (ties: the first index, as argmax_kernel);
// the row's last block to finish (a ticket per row, after a fence: the threadfence
// reduction of the CUDA samples) writes the id and zeroes the slot and the ticket for
// the next call. `slots` [rows] and `tickets` [rows] start zeroed (cuda/ops.rs).
#define ARGMAX_SPAN 4096
extern "C" __global__ void argmax_split_kernel(const float* logits, int* out, int vocab,
                                               unsigned long long* slots, unsigned int* tickets) { pdl_entry();
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ bool last;
    const int row = blockIdx.x, start = blockIdx.y * ARGMAX_SPAN;
    const int n = min(ARGMAX_SPAN, vocab - start);
    const float* r = logits + (long)row * vocab + start;
    const int bi = block_argmax(r, n, sv, si);
    if (threadIdx.x == 0) {
        const float v = r[bi];
        // Only a value above -inf wins (as in argmax_kernel and the host's `argmax`: a row
        // with none gives 0); a block without one leaves the slot alone.
        if (v > NEG_INF) {
            const unsigned int u = __float_as_uint(v);
            const unsigned int ord = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
            const unsigned long long key = ((unsigned long long)ord << 32) | (0xffffffffu - (unsigned int)(start + bi));
            atomicMax(slots + row, key);
        }
        __threadfence();
        last = atomicAdd(tickets + row, 1u) == gridDim.y - 1;
    }
    __syncthreads();
    if (last && threadIdx.x == 0) {
        const unsigned long long key = atomicExch(slots + row, 0ull);
        tickets[row] = 0;
        out[row] = key == 0 ? 0 : (int)(0xffffffffu - (unsigned int)(key & 0xffffffffu));
    }
}

// Fused gate/up rows gu [T, 2F] (gate columns first) -> out [T, F] = act(gate) * up.
extern "C" __global__ void glu_packed_kernel(const float* gu, float* out, long n, int F, int silu) { pdl_entry();
    GRID_STRIDE(i, n) {
        long t = i / F; int j = (int)(i % F);
        float v = gu[t * 2 * F + j], u = gu[t * 2 * F + F + j];
        if (silu) {
            out[i] = v / (1.0f + __expf(-v)) * u;
        } else {
            float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
            out[i] = 0.5f * v * (1.0f + tanhf(inner)) * u;
        }
    }
}

__device__ __forceinline__ float glu_act(float v, float u, int silu) {
    if (silu) return v / (1.0f + __expf(-v)) * u;
    const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    return 0.5f * v * (1.0f + tanhf(inner)) * u;
}

// The same for F a multiple of 4: four columns per thread with 16-byte loads and stores,
// rows on the grid's y axis (grid-stride, so any T), no 64-bit division per element (the
// kernel above divides by F for every element and moved 2.5 TB/s on an H200).
// `staged` (may be null): a bf16 copy of `out` as well (see rms_norm_kernel).
extern "C" __global__ void glu_packed4_kernel(const float* gu, float* out, int T, int F, int silu,
                                              bf16_t* staged) { pdl_entry();
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (j >= F) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const float4 g = *reinterpret_cast<const float4*>(gu + (long)t * 2 * F + j);
        const float4 u = *reinterpret_cast<const float4*>(gu + (long)t * 2 * F + F + j);
        const float4 o = make_float4(glu_act(g.x, u.x, silu), glu_act(g.y, u.y, silu), glu_act(g.z, u.z, silu),
                                     glu_act(g.w, u.w, silu));
        *reinterpret_cast<float4*>(out + (long)t * F + j) = o;
        if (staged)
            *reinterpret_cast<uint2*>(staged + (long)t * F + j) =
                make_uint2((unsigned int)f32_to_bf16(o.x) | ((unsigned int)f32_to_bf16(o.y) << 16),
                           (unsigned int)f32_to_bf16(o.z) | ((unsigned int)f32_to_bf16(o.w) << 16));
    }
}

// The gated FFN's GLU on bf16 (cuda/ops.rs `gated_ffn`): gu [T, 2F] bf16 (gate columns
// first, the gate/up GEMM's bf16 output) -> out [T, F] bf16 (the down GEMM's input), f32
// arithmetic. F a multiple of 8: eight columns per thread, 16-byte loads and stores; rows
// on the grid's y axis (grid-stride). Against glu_packed4_kernel on the f32 GEMM output,
// it moves 6 bytes per output element (4 read, 2 written) instead of 14 (8 read, 4 + 2
// written).
__device__ __forceinline__ unsigned int glu_pair_bf16(unsigned int g, unsigned int u, int silu) {
    const float a = glu_act(bf16_to_f32((bf16_t)(g & 0xffffu)), bf16_to_f32((bf16_t)(u & 0xffffu)), silu);
    const float b = glu_act(bf16_to_f32((bf16_t)(g >> 16)), bf16_to_f32((bf16_t)(u >> 16)), silu);
    return (unsigned int)f32_to_bf16(a) | ((unsigned int)f32_to_bf16(b) << 16);
}

extern "C" __global__ void glu_packed_bf16_kernel(const bf16_t* gu, bf16_t* out, int T, int F, int silu) { pdl_entry();
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (j >= F) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const uint4 g = *reinterpret_cast<const uint4*>(gu + (long)t * 2 * F + j);
        const uint4 u = *reinterpret_cast<const uint4*>(gu + (long)t * 2 * F + F + j);
        *reinterpret_cast<uint4*>(out + (long)t * F + j) =
            make_uint4(glu_pair_bf16(g.x, u.x, silu), glu_pair_bf16(g.y, u.y, silu), glu_pair_bf16(g.z, u.z, silu),
                       glu_pair_bf16(g.w, u.w, silu));
    }
}

// Fused projections qkv [T, (nh + 2 nkv) * hd] -> q [T, nh * hd], k and v [T, nkv * hd],
// RoPE applied to q and k on the way (rope_kernel's pairing). One thread per pair of a
// head: the split costs no pass of its own. With kc != NULL the rotated k and the v of
// row t are also written into the paged caches at slots[t] (kv_write's layout; negative
// slots skipped), which saves the decode step a kernel per layer.
template <typename KV, typename IN>
__device__ __forceinline__ void split_qkv_rope_body(const IN* qkv, const int* pos, const float* cos_t,
                                                    const float* sin_t, float* q, float* k, float* v,
                                                    KV* kc, KV* vc, const int* slots, int bs,
                                                    int T, int nh, int nkv, int hd, int neox) {
    int half = hd / 2;
    int heads = nh + 2 * nkv;
    long n = (long)T * heads * half;
    GRID_STRIDE(idx, n) {
        int i = (int)(idx % half);
        long th = idx / half;
        int h = (int)(th % heads);
        long t = th / heads;
        const IN* src = qkv + th * hd;
        int a = neox ? i : 2 * i;
        int b = neox ? i + half : 2 * i + 1;
        float x0 = load_f32(src, a), x1 = load_f32(src, b);
        float* dst;
        KV* cache = 0;
        int kvh = 0;
        if (h < nh) {
            dst = q + (t * nh + h) * hd;
        } else if (h < nh + nkv) {
            kvh = h - nh;
            dst = k + (t * nkv + kvh) * hd;
            cache = kc;
        } else {
            kvh = h - nh - nkv;
            dst = v + (t * nkv + kvh) * hd;
            cache = vc;
        }
        if (h >= nh) {
            if (h < nh + nkv) {
                long p = pos[t];
                float c = cos_t[p * half + i], s = sin_t[p * half + i];
                float r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
                x0 = r0; x1 = r1;
            }
            dst[a] = x0; dst[b] = x1;
            if (cache) {
                int slot = slots[t];
                if (slot >= 0) {
                    long base = (((long)(slot / bs) * nkv + kvh) * bs + slot % bs) * hd;
                    store_kv(cache, base + a, x0);
                    store_kv(cache, base + b, x1);
                }
            }
            continue;
        }
        long p = pos[t];
        float c = cos_t[p * half + i], s = sin_t[p * half + i];
        dst[a] = x0 * c - x1 * s;
        dst[b] = x0 * s + x1 * c;
    }
}

// IN: f32 projections, or bf16 ones (a bf16 GEMM output: half the bytes each way).
#define SPLIT_QKV_ROPE(NAME, KV, IN) \
extern "C" __global__ void NAME(const IN* qkv, const int* pos, const float* cos_t, const float* sin_t, \
                                float* q, float* k, float* v, KV* kc, KV* vc, const int* slots, int bs, \
                                int T, int nh, int nkv, int hd, int neox) { pdl_entry(); \
    split_qkv_rope_body<KV, IN>(qkv, pos, cos_t, sin_t, q, k, v, kc, vc, slots, bs, T, nh, nkv, hd, neox); \
}
SPLIT_QKV_ROPE(split_qkv_rope_f32_kernel, float, float)
SPLIT_QKV_ROPE(split_qkv_rope_bf16_kernel, bf16_t, float)
SPLIT_QKV_ROPE(split_qkv_rope_bf16in_f32_kernel, float, bf16_t)
SPLIT_QKV_ROPE(split_qkv_rope_bf16in_bf16_kernel, bf16_t, bf16_t)
SPLIT_QKV_ROPE(split_qkv_rope_fp8_kernel, fp8_t, float)
SPLIT_QKV_ROPE(split_qkv_rope_bf16in_fp8_kernel, fp8_t, bf16_t)
