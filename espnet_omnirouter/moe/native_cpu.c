/* CPU inference kernels of the MoE FFN: routing, dispatch, expert GEMMs and combine in C
 * (float32, AVX2 + FMA, OpenMP).
 *
 * Plain C, no Python or PyTorch headers: espnet_omnirouter/moe/native.py compiles this file
 * with the system C compiler at first use and calls it through ctypes with tensors' data
 * pointers.  Built with -fopenmp, it binds to the libgomp.so.1 that PyTorch has already
 * loaded, so its parallel loops run on PyTorch's threads (torch.set_num_threads).
 *
 * Why not PyTorch operators or MKL: at decoding sizes (one utterance: ~100-500 frames per
 * FFN, a few dozen per expert) the operator version pays a few microseconds per operator
 * and Python call, and MKL's GEMMs first copy ("pack") each expert's weights, a second pass
 * over 8x the dense FFN's weights that, with 64 MB of experts per encoder, come from DRAM.
 * Here the weights are packed once (moe_pack; the caller keeps the copy while the weights do
 * not change) into contiguous column tiles that the GEMM streams in order while it computes.
 *
 * Layouts (row-major, contiguous):
 *   x, flat [rows, d]   router weight [E, d]   w1 [E, d, h]  b1 [E, h]  w2 [E, h, d]  b2 [E, d]
 *   expert, gate [n, k] (best first)   assignments a = j * n + t (choice j of routed frame t,
 *   k-major, as MoEFeedForward._dispatch orders them), sorted by expert, stable.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MR 6  /* rows of a GEMM tile */
#define NR 16 /* columns of a GEMM tile: two 8-float vectors */

/* exp of 8 floats: 2^n * e^r, r = x - n ln2 in [-ln2/2, ln2/2], e^r by its Taylor polynomial
 * to degree 7 (truncation error < 5e-9, below float rounding); x is clamped to [-87, 88]
 * (below, the result stays at exp(-87) ~ 1.6e-38 instead of going subnormal). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x); /* ln2 = 0.693359375 - 2.12194440e-4 */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* Activations that the first GEMM applies to each output tile right after writing it (the
 * hidden units' activation when it is one of these; ACT_NONE: the caller applies it). */
enum { ACT_NONE = 0, ACT_RELU = 1, ACT_SILU = 2 };

static inline __m256 act8(const int act, __m256 v) {
    if (act == ACT_RELU) return _mm256_max_ps(_mm256_setzero_ps(), v); /* NaN stays NaN, as torch.relu */
    if (act == ACT_SILU) { /* x * sigmoid(x) = x / (1 + e^-x); 0 below x = -88, where e^-x is clamped */
        __m256 y = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))));
        return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(v, _mm256_set1_ps(-88.0f), _CMP_LT_OQ));
    }
    return v;
}

/* c[0:mr, 0:16] = act(c[0:mr, 0:16]) for a tile just written (still in L1).  A pass of its own,
 * not in the tile's store: its constants would take registers from the accumulators. */
static __attribute__((noinline)) void activate_tile(int act, int mr, float *c, int ldc) {
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < NR; j += 8) {
            float *p = c + (int64_t)i * ldc + j;
            __m256 v = _mm256_loadu_ps(p);
            _mm256_storeu_ps(p, act == ACT_RELU ? act8(ACT_RELU, v) : act == ACT_SILU ? act8(ACT_SILU, v) : v);
        }
}

/* c[0:mr, 0:16] = bias[0:16] + a[0:mr, 0:kk] @ b[0:kk, 0:16]; mr is a constant where it is
 * inlined, so the 2 * mr accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile(const int mr, int kk, const float *a, int lda,
                                                       const float *b, int ldb, const float *bias, float *c,
                                                       int ldc) {
    __m256 c0[MR], c1[MR];
    for (int i = 0; i < mr; i++) c0[i] = _mm256_loadu_ps(bias), c1[i] = _mm256_loadu_ps(bias + 8);
    for (int p = 0; p < kk; p++) {
        const float *bp = b + (int64_t)p * ldb;
        __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
        for (int i = 0; i < mr; i++) {
            __m256 ai = _mm256_broadcast_ss(a + (int64_t)i * lda + p);
            c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
        }
    }
    for (int i = 0; i < mr; i++) {
        _mm256_storeu_ps(c + (int64_t)i * ldc, c0[i]);
        _mm256_storeu_ps(c + (int64_t)i * ldc + 8, c1[i]);
    }
}

/* c[0:m, 0:cols] = act(bias + a[0:m, :] @ b), b a packed kk x 16 column tile (row stride 16), in
 * tiles of MR rows; cols < 16 for the last tile of a width that is not a multiple of 16 (then
 * through a full-width buffer: only the first cols columns of c and bias are touched). */
static void column_tile(int m, int kk, const float *a, const float *b, const float *bias, float *c, int ldc,
                        int cols, int act) {
    float buf[MR * NR], bias16[NR];
    if (cols < NR) {
        memset(bias16, 0, sizeof(bias16));
        memcpy(bias16, bias, sizeof(float) * cols);
        bias = bias16;
    }
    for (int i = 0; i < m; i += MR) {
        int mr = m - i < MR ? m - i : MR, ldt = cols < NR ? NR : ldc;
        const float *ar = a + (int64_t)i * kk;
        float *cr = c + (int64_t)i * ldc, *ct = cols < NR ? buf : cr;
        switch (mr) {
            case 6: tile(6, kk, ar, kk, b, NR, bias, ct, ldt); break;
            case 5: tile(5, kk, ar, kk, b, NR, bias, ct, ldt); break;
            case 4: tile(4, kk, ar, kk, b, NR, bias, ct, ldt); break;
            case 3: tile(3, kk, ar, kk, b, NR, bias, ct, ldt); break;
            case 2: tile(2, kk, ar, kk, b, NR, bias, ct, ldt); break;
            default: tile(1, kk, ar, kk, b, NR, bias, ct, ldt); break;
        }
        if (act != ACT_NONE) activate_tile(act, mr, ct, ldt);
        if (cols < NR)
            for (int r = 0; r < mr; r++) memcpy(cr + (int64_t)r * ldc, buf + r * NR, sizeof(float) * cols);
    }
}

/* Number of 16-column tiles of a width n. */
static int tiles_of(int n) { return (n + NR - 1) / NR; }

/* Pack w [E, kk, n] into column tiles: packed [E, tiles_of(n), kk, 16], zero past column n.
 * Each tile is then one contiguous block that the GEMM streams from memory in order. */
void moe_pack(const float *w, int e, int kk, int n, float *packed) {
    int tiles = tiles_of(n);
    for (int x = 0; x < e; x++)
        for (int t = 0; t < tiles; t++)
            for (int p = 0; p < kk; p++) {
                float *dst = packed + (((int64_t)x * tiles + t) * kk + p) * NR;
                const float *src = w + ((int64_t)x * kk + p) * n + t * NR;
                int cols = n - t * NR < NR ? n - t * NR : NR;
                memcpy(dst, src, sizeof(float) * cols);
                memset(dst + cols, 0, sizeof(float) * (NR - cols));
            }
}

/* One GEMM of a group: c[0:m, 0:n] = act(bias + a[0:m, 0:kk] @ w), w [kk, n] packed (moe_pack). */
typedef struct {
    const float *a, *w, *bias;
    float *c;
    int m, kk, n;
} gemm_part;

/* The GEMMs of parts[0:count] in one parallel loop: the (part, column tile) pairs are spread over
 * the threads; a tile is read from memory once, in order, and stays in L1 while the part's rows go
 * through it.  Parts may have different widths (the paths of a Duo slot). */
static void gemm_parts(const gemm_part *parts, int count, int act) {
    int first[count + 1];
    first[0] = 0;
    for (int i = 0; i < count; i++) first[i + 1] = first[i] + (parts[i].m > 0 ? tiles_of(parts[i].n) : 0);
#pragma omp parallel for schedule(dynamic, 2)
    for (int item = 0; item < first[count]; item++) {
        int i = 0;
        while (item >= first[i + 1]) i++;
        const gemm_part *g = parts + i;
        int t = item - first[i], cols = g->n - t * NR < NR ? g->n - t * NR : NR;
        column_tile(g->m, g->kk, g->a, g->w + (int64_t)t * g->kk * NR, g->bias + t * NR, g->c + t * NR, g->n, cols,
                    act);
    }
}

/* c[s_i] = act(bias[i] + a[s_i] @ w[i]) for the experts' consecutive row slices s_i (ends: their end
 * rows); a [m, kk], c [m, n], bias [E, n], w [E, kk, n] given packed (moe_pack). */
static void expert_gemm(const float *a, const float *packed, const float *bias, float *c, const int32_t *ends,
                        int e, int kk, int n, int act) {
    gemm_part parts[e];
    for (int x = 0; x < e; x++) {
        int start = x ? ends[x - 1] : 0;
        parts[x] = (gemm_part){a + (int64_t)start * kk, packed + (int64_t)x * tiles_of(n) * kk * NR,
                               bias + (int64_t)x * n, c + (int64_t)start * n, ends[x] - start, kk, n};
    }
    gemm_parts(parts, e, act);
}

/* expert_gemm for callers (benchmarks/encoder_ffn_parts.py times the GEMMs alone). */
void moe_expert_gemm(const float *a, const float *packed, const float *bias, float *c, const int32_t *ends, int e,
                     int kk, int n) {
    expert_gemm(a, packed, bias, c, ends, e, kk, n, ACT_NONE);
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* l[0:e] = w @ u for the e rows of w [e, d]: four rows at a time, sharing the loads of u. */
static void logits_row(const float *u, const float *w, int d, int e, float *l) {
    int i = 0;
    for (; i + 4 <= e; i += 4) {
        const float *w0 = w + (int64_t)i * d, *w1 = w0 + d, *w2 = w1 + d, *w3 = w2 + d;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int c = 0;
        for (; c + 8 <= d; c += 8) {
            __m256 x = _mm256_loadu_ps(u + c);
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(w0 + c), a0);
            a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(w1 + c), a1);
            a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(w2 + c), a2);
            a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(w3 + c), a3);
        }
        float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
        for (; c < d; c++) s0 += u[c] * w0[c], s1 += u[c] * w1[c], s2 += u[c] * w2[c], s3 += u[c] * w3[c];
        l[i] = s0, l[i + 1] = s1, l[i + 2] = s2, l[i + 3] = s3;
    }
    for (; i < e; i++) {
        const float *wi = w + (int64_t)i * d;
        __m256 a = _mm256_setzero_ps();
        int c = 0;
        for (; c + 8 <= d; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(u + c), _mm256_loadu_ps(wi + c), a);
        float sum = hsum(a);
        for (; c < d; c++) sum += u[c] * wi[c];
        l[i] = sum;
    }
}

/* p[0:e] = softmax(l[0:e]), in vectors of 8 (scalar expf for the last e % 8). */
static void softmax_row(const float *l, int e, float *p) {
    float top = l[0], sum = 0.0f;
    for (int i = 1; i < e; i++) top = l[i] > top ? l[i] : top;
    int i = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= e; i += 8) {
        __m256 v = exp8(_mm256_sub_ps(_mm256_loadu_ps(l + i), _mm256_set1_ps(top)));
        _mm256_storeu_ps(p + i, v);
        acc = _mm256_add_ps(acc, v);
    }
    sum = hsum(acc);
    for (; i < e; i++) sum += (p[i] = expf(l[i] - top));
    for (i = 0; i < e; i++) p[i] /= sum;
}

/* Whether this CPU runs the kernels (they use AVX2 and FMA). */
int moe_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Router: logits = x w^T, probs = softmax(logits), the k most probable experts (best first,
 * lower index first on ties) and their probabilities as gates; frame t is row index[t] of x
 * (row t when index is NULL). */
static void route_rows(const float *x, const int64_t *index, const float *w, int64_t n, int d, int e, int k,
                       float *logits, float *probs, int64_t *expert, float *gate) {
    for (int64_t t = 0; t < n; t++) {
        float *l = logits + t * e, *p = probs + t * e;
        logits_row(x + (index ? index[t] : t) * d, w, d, e, l);
        softmax_row(l, e, p);
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int i = 0; i < e; i++) {
                int taken = 0;
                for (int q = 0; q < j; q++) taken |= expert[t * k + q] == i;
                if (!taken && (best < 0 || p[i] > p[best])) best = i;
            }
            expert[t * k + j] = best;
            gate[t * k + j] = p[best];
        }
    }
}

void moe_route(const float *x, const float *w, int64_t n, int d, int e, int k, float *logits, float *probs,
               int64_t *expert, float *gate) {
    route_rows(x, NULL, w, n, d, e, k, logits, probs, expert, gate);
}

/* First half of the experts: sort the n * k assignments by expert (stable), gather each one's
 * frame into xs [n*k, d] (row index[t] of flat, or row t when index is NULL), and compute
 * hidden [n*k, h] = act(b1[expert] + xs @ w1[expert]) (w1 packed by moe_pack; ACT_NONE: no
 * activation).  Writes order [n*k] (the assignment a of each sorted row) and ends [E] (end row
 * of each expert's slice).  Returns -1 if an expert index is out of range, else 0. */
int moe_experts_in(int64_t n, int k, int e, int d, int h, const int64_t *expert, const int64_t *index,
                   const float *flat, const float *w1, const float *b1, int act, float *xs, float *hidden,
                   int64_t *order, int32_t *ends) {
    int64_t m = n * k, next[e];
    for (int i = 0; i < e; i++) next[i] = 0;
    for (int64_t t = 0; t < m; t++) {
        int64_t x = expert[t];
        if (x < 0 || x >= e) return -1;
        next[x]++;
    }
    int64_t start = 0;
    for (int i = 0; i < e; i++) {
        int64_t count = next[i];
        next[i] = start;
        start += count;
        ends[i] = (int32_t)start;
    }
    for (int64_t a = 0; a < m; a++) {
        int64_t t = a % n, j = a / n, x = expert[t * k + j], pos = next[x]++;
        int64_t row = index ? index[t] : t;
        order[pos] = a;
        memcpy(xs + pos * d, flat + row * d, sizeof(float) * d);
    }
    expert_gemm(xs, w1, b1, hidden, ends, e, d, h, act);
    return 0;
}

/* Second half: y [n*k, d] = b2[expert] + hidden @ w2[expert] per slice (w2 packed), then
 * out[row] (+)= gate * y for each assignment.  out [rows, d] is written without being read
 * when every row is routed exactly once (k == 1, no index), else zeroed and accumulated
 * (rows not routed stay 0). */
void moe_experts_out(int64_t n, int k, int e, int d, int h, int64_t rows, const int64_t *order,
                     const int32_t *ends, const int64_t *index, const float *hidden, const float *w2,
                     const float *b2, const float *gate, float *y, float *out) {
    expert_gemm(hidden, w2, b2, y, ends, e, h, d, ACT_NONE);
    int direct = k == 1 && index == NULL;
    if (!direct) memset(out, 0, sizeof(float) * rows * d);
    for (int64_t pos = 0; pos < n * k; pos++) {
        int64_t a = order[pos], t = a % n, j = a / n, row = index ? index[t] : t;
        float g = gate[t * k + j], *o = out + row * d;
        const float *src = y + pos * d;
        if (direct)
            for (int c = 0; c < d; c++) o[c] = g * src[c];
        else
            for (int c = 0; c < d; c++) o[c] += g * src[c];
    }
}

/* Both halves in one call, for an activation that the first GEMM applies (act != ACT_NONE);
 * xs [n*k, d] holds the gathered frames, then the second GEMM's output. */
int moe_experts(int64_t n, int k, int e, int d, int h, int64_t rows, const int64_t *expert, const int64_t *index,
                const float *flat, const float *w1, const float *b1, int act, const float *w2, const float *b2,
                const float *gate, float *xs, float *hidden, int64_t *order, int32_t *ends, float *out) {
    if (moe_experts_in(n, k, e, d, h, expert, index, flat, w1, b1, act, xs, hidden, order, ends)) return -1;
    moe_experts_out(n, k, e, d, h, rows, order, ends, index, hidden, w2, b2, gate, xs, out);
    return 0;
}

/* An MoE FFN at inference in one call: route_rows on the n routed frames (row index[t] of flat
 * [rows, d], row t when index is NULL; router weight wr [e, d]) writes logits, probs [n, e],
 * expert and gate [n, k]; then moe_experts with its buffers allocated here (act != ACT_NONE).
 * Returns -2 if the buffers cannot be allocated, else 0. */
int moe_slot(int64_t n, int k, int e, int d, int h, int64_t rows, const int64_t *index, const float *flat,
             const float *wr, float *logits, float *probs, int64_t *expert, float *gate, const float *w1,
             const float *b1, int act, const float *w2, const float *b2, float *out) {
    route_rows(flat, index, wr, n, d, e, k, logits, probs, expert, gate);
    int64_t m = n * k;
    float *xs = malloc(sizeof(float) * (m ? m : 1) * d), *hidden = malloc(sizeof(float) * (m ? m : 1) * h);
    int64_t *order = malloc(sizeof(int64_t) * (m ? m : 1));
    int32_t *ends = malloc(sizeof(int32_t) * e);
    int failed = !xs || !hidden || !order || !ends ? -2 : 0;
    if (!failed)
        moe_experts(n, k, e, d, h, rows, expert, index, flat, w1, b1, act, w2, b2, gate, xs, hidden, order, ends, out);
    free(xs), free(hidden), free(order), free(ends);
    return failed;
}

/* A Duo slot at inference (gate 1): each of the n routed frames takes one of p paths, path q an FFN of
 * widths[q] hidden units (w1[q] [d, h_q] and w2[q] [h_q, d] packed by moe_pack, biases b1[q] [h_q],
 * b2[q] [d]) or, with widths[q] == 0, nothing (skip: output 0, the frame is never read).  Frame t is
 * row index[t] of flat [rows, d] (row t when index is NULL).
 *
 * The path of each frame, path [n]: with a router weight wr [p, d], logits [n, p] = x wr^T, probs =
 * softmax(logits) and the most probable path, or with shift [p] (the cost bias times each path's
 * cost) the argmax of logits - shift (first on ties, as torch.argmax); else with fixed >= 0 that
 * path for every frame (path is not used, may be NULL); else path is read.
 *
 * out [rows, d]: each routed frame's path output, 0 on skip frames and rows not routed.  When every
 * frame takes one path and index is NULL (a fixed policy, or a router that chose one path), its FFN
 * runs on flat and writes out directly: the dense FFN's two GEMMs and nothing else.  Otherwise the
 * frames of each FFN path are gathered (sorted by path, stable) into a buffer, all paths' first GEMMs
 * run in one parallel loop, the second GEMMs in another, and the rows are scattered into out.
 * Returns -1 if a path index is out of range, -2 if the buffers cannot be allocated, else 0. */
int duo_slot(int64_t n, int d, int p, int64_t rows, const int64_t *index, const float *flat, const float *wr,
             const float *shift, int fixed, float *logits, float *probs, int64_t *path, const int *widths,
             const float *const *w1, const float *const *b1, const float *const *w2, const float *const *b2,
             int act, float *out) {
    int hmax = 0;
    for (int q = 0; q < p; q++) hmax = widths[q] > hmax ? widths[q] : hmax;
    if (wr)
        for (int64_t t = 0; t < n; t++) {
            float *l = logits + t * p, *pr = probs + t * p;
            logits_row(flat + (index ? index[t] : t) * d, wr, d, p, l);
            softmax_row(l, p, pr);
            int best = 0;
            for (int q = 1; q < p; q++)
                if (shift ? l[q] - shift[q] > l[best] - shift[best] : pr[q] > pr[best]) best = q;
            path[t] = best;
        }
    int64_t next[p];
    for (int q = 0; q < p; q++) next[q] = 0;
    if (fixed >= 0 && !wr) {
        if (fixed >= p) return -1;
        next[fixed] = n;
    } else
        for (int64_t t = 0; t < n; t++) {
            if (path[t] < 0 || path[t] >= p) return -1;
            next[path[t]]++;
        }
    int one = -1; /* the path of every frame, if one path takes them all and index is NULL */
    for (int q = 0; q < p; q++)
        if (next[q] == n && index == NULL) one = q;
    if (n == 0 || (one >= 0 && widths[one] == 0)) {
        memset(out, 0, sizeof(float) * rows * d);
        return 0;
    }
    float *hidden = malloc(sizeof(float) * n * hmax), *xs = one < 0 ? malloc(sizeof(float) * n * d) : NULL;
    int64_t *order = one < 0 ? malloc(sizeof(int64_t) * n) : NULL;
    if (!hidden || (one < 0 && (!xs || !order))) {
        free(hidden), free(xs), free(order);
        return -2;
    }
    if (one >= 0) {
        gemm_part in = {flat, w1[one], b1[one], hidden, (int)n, d, widths[one]};
        gemm_parts(&in, 1, act);
        gemm_part back = {hidden, w2[one], b2[one], out, (int)n, widths[one], d};
        gemm_parts(&back, 1, ACT_NONE);
        free(hidden);
        return 0;
    }
    /* Counting sort of the frames of FFN paths (skip frames take no row). */
    int64_t start[p], routed = 0;
    for (int q = 0; q < p; q++) {
        start[q] = routed;
        routed += widths[q] ? next[q] : 0;
        next[q] = start[q];
    }
    for (int64_t t = 0; t < n; t++) {
        int64_t q = path ? path[t] : fixed;
        if (!widths[q]) continue;
        int64_t pos = next[q]++;
        order[pos] = t;
        memcpy(xs + pos * d, flat + (index ? index[t] : t) * d, sizeof(float) * d);
    }
    gemm_part in[p], back[p];
    int parts = 0;
    int64_t offset = 0;
    for (int q = 0; q < p; q++) {
        int m = (int)(next[q] - start[q]);
        if (!widths[q] || !m) continue;
        in[parts] = (gemm_part){xs + start[q] * d, w1[q], b1[q], hidden + offset, m, d, widths[q]};
        back[parts] = (gemm_part){hidden + offset, w2[q], b2[q], xs + start[q] * d, m, widths[q], d};
        offset += (int64_t)m * widths[q];
        parts++;
    }
    gemm_parts(in, parts, act);
    gemm_parts(back, parts, ACT_NONE);
    if (index || routed < rows) memset(out, 0, sizeof(float) * rows * d);
    for (int64_t pos = 0; pos < routed; pos++) {
        int64_t t = order[pos];
        memcpy(out + (index ? index[t] : t) * d, xs + pos * d, sizeof(float) * d);
    }
    free(hidden), free(xs), free(order);
    return 0;
}
