/* CPU kernels for the decode step of x86-64 CPUs with AVX-512, where torch's eager ops cost
 * more in set-up and dispatch than in arithmetic at batch 1.
 *
 * cortex_paged_decode: paged decode attention. One new query token per sequence against the
 * K/V it holds in the block cache, read in place through its block table. torch's path for
 * the same step gathers every position the tables span into new tensors, builds a mask and
 * runs SDPA. Here the query heads that share a KV head walk that head's rows once for the
 * scores and once for the values. Scores, softmax and the weighted sum are fp32 whatever the
 * cache holds (fp32 or bf16).
 *
 * Layouts (elements, row-major):
 *   q        [batch, heads, dim], `q_stride` elements from one sequence's row to the next
 *   k, v     [blocks, block_size, kv_heads, dim]
 *   tables   int32 [batch, width]: the blocks of each sequence, in order
 *   lens     int32 [batch]: positions each sequence holds, the new token's included (>= 1)
 *   out      [batch, heads, dim], contiguous
 * Query head h reads KV head h / (heads / kv_heads), as HF's repeat_kv. With `window` > 0 a
 * query sees the last `window` positions only; with `softcap` > 0 scores become
 * softcap * tanh(score / softcap) (Gemma 2).
 *
 * cortex_rms_norm_bf16: HF's RMSNorm of bf16 rows, weight * bf16(x / rms(x)), the
 * normalisation in fp32 (torch's path for it is five kernels).
 *
 * cpu_kernels.py builds this at run time with the machine's compiler (-march=native) and
 * calls it through ctypes. Without AVX-512 it builds to a stub whose `ready` says 0, and
 * the neuron stays on torch's ops.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { F32 = 0, BF16 = 1 }; /* element type of q, k, v and out */
enum { OK = 0, NO_MEMORY = -1, UNSUPPORTED = -2 };
#define MAX_DIM 256

#if defined(__AVX512F__)
#include <immintrin.h>

int cortex_kernels_ready(void) { return 1; }

/* 16 elements at p, widened to fp32 (bf16 is the top half of an fp32). */
static inline __m512 load16(const void *p, int type) {
    if (type == BF16) {
        __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    }
    return _mm512_loadu_ps(p);
}

/* x rounded to bf16 (to nearest, ties to even; NaN stays NaN), still as fp32. */
static inline __m512 round_bf16(__m512 x) {
    __m512i bits = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc00000));
    return _mm512_castsi512_ps(_mm512_and_si512(rounded, _mm512_set1_epi32((int)0xffff0000)));
}

/* 16 fp32 values to p (bf16: rounded as round_bf16). */
static inline void store16(void *p, __m512 x, int type) {
    if (type != BF16) {
        _mm512_storeu_ps(p, x);
        return;
    }
    __m512i bits = _mm512_castps_si512(round_bf16(x));
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}

/* e^x for x <= 0 (a score minus its row's best), within a few ulp of expf: x = n ln2 + r with
 * |r| <= ln2 / 2, e^r by Cephes' polynomial, 2^n written into the exponent bits. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f)); /* e^-87 is still a normal float */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x); /* ln2 in two parts */
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(e, 23)));
}

static inline __mmask16 tail_mask(long left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* scores[0..n) -> softmax weights, in place (after the soft-cap, when there is one). */
static void softmax(float *scores, long n, float softcap) {
    if (softcap > 0)
        for (long j = 0; j < n; j++) scores[j] = softcap * tanhf(scores[j] / softcap);
    __m512 best = _mm512_set1_ps(-INFINITY);
    for (long j = 0; j < n; j += 16)
        best = _mm512_max_ps(best, _mm512_mask_loadu_ps(best, tail_mask(n - j), scores + j));
    __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(best));
    __m512 total = _mm512_setzero_ps();
    for (long j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + j), top));
        total = _mm512_add_ps(total, _mm512_maskz_mov_ps(m, e));
        _mm512_mask_storeu_ps(scores + j, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
    for (long j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        _mm512_mask_storeu_ps(scores + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, scores + j), inv));
    }
}

/* Where position p of a sequence keeps its row for the KV head at offset `head`. Block sizes
 * are powers of two in practice: a division per row would cost more than the row's dot
 * products. */
static inline const char *kv_row(const char *cache, const int32_t *table, long p, int block_size,
                                 long slot, long head, size_t elem) {
    long block, offset;
    if ((block_size & (block_size - 1)) == 0) {
        int shift = __builtin_ctz((unsigned)block_size);
        block = p >> shift, offset = p & (block_size - 1);
    } else {
        block = p / block_size, offset = p % block_size;
    }
    return cache + (((long)table[block] * block_size + offset) * slot + head) * elem;
}

int cortex_paged_decode(const void *q, long q_stride, const void *k, const void *v,
                        const int32_t *tables, const int32_t *lens, void *out, int type,
                        int batch, int heads, int kv_heads, int dim, int block_size, int width,
                        int window, float scale, float softcap) {
    if (dim % 16 != 0 || dim > MAX_DIM || kv_heads <= 0 || heads % kv_heads != 0)
        return UNSUPPORTED;
    size_t elem = type == BF16 ? 2 : 4;
    int group = heads / kv_heads, chunks = dim / 16;
    long slot = (long)kv_heads * dim;
    long longest = 1;
    for (int b = 0; b < batch; b++)
        if (lens[b] > longest) longest = lens[b];
    long stride = (longest + 15) & ~15L; /* one row of scores per query head of the group */
    float *scores = malloc(sizeof(float) * group * stride);
    /* __m512 arrays must be 64-byte aligned: the compiler uses aligned moves on them. */
    __m512 *qv = aligned_alloc(64, sizeof(__m512) * group * chunks);
    __m512 *acc = aligned_alloc(64, sizeof(__m512) * group * chunks);
    if (!scores || !qv || !acc) {
        free(scores), free(qv), free(acc);
        return NO_MEMORY;
    }
    __m512 row[MAX_DIM / 16];
    for (int b = 0; b < batch; b++) {
        long len = lens[b] < (long)width * block_size ? lens[b] : (long)width * block_size;
        long first = window > 0 && len > window ? len - window : 0;
        long n = len - first;
        const int32_t *table = tables + (long)b * width;
        for (int kvh = 0; kvh < kv_heads; kvh++) {
            long head = (long)kvh * dim;
            const char *qhead = (const char *)q + (b * q_stride + (long)kvh * group * dim) * elem;
            for (int i = 0; i < group * chunks; i++)
                qv[i] = _mm512_mul_ps(load16(qhead + (long)i * 16 * elem, type),
                                      _mm512_set1_ps(scale));
            for (long j = 0; j < n; j++) {
                const char *krow = kv_row(k, table, first + j, block_size, slot, head, elem);
                for (int c = 0; c < chunks; c++) row[c] = load16(krow + (long)c * 16 * elem, type);
                for (int g = 0; g < group; g++) {
                    const __m512 *qg = qv + g * chunks;
                    __m512 s = _mm512_mul_ps(qg[0], row[0]);
                    for (int c = 1; c < chunks; c++) s = _mm512_fmadd_ps(qg[c], row[c], s);
                    scores[g * stride + j] = _mm512_reduce_add_ps(s);
                }
            }
            for (int g = 0; g < group; g++) softmax(scores + g * stride, n, softcap);
            for (int i = 0; i < group * chunks; i++) acc[i] = _mm512_setzero_ps();
            for (long j = 0; j < n; j++) {
                const char *vrow = kv_row(v, table, first + j, block_size, slot, head, elem);
                for (int c = 0; c < chunks; c++) row[c] = load16(vrow + (long)c * 16 * elem, type);
                for (int g = 0; g < group; g++) {
                    __m512 w = _mm512_set1_ps(scores[g * stride + j]);
                    __m512 *ag = acc + g * chunks;
                    for (int c = 0; c < chunks; c++) ag[c] = _mm512_fmadd_ps(w, row[c], ag[c]);
                }
            }
            char *ohead = (char *)out + (((long)b * heads + (long)kvh * group) * dim) * elem;
            for (int i = 0; i < group * chunks; i++)
                store16(ohead + (long)i * 16 * elem, acc[i], type);
        }
    }
    free(scores), free(qv), free(acc);
    return OK;
}

/* out = weight * bf16(x / sqrt(mean(x^2) + eps)) for `rows` contiguous bf16 rows of `dim`
 * (a multiple of 16), as HF's LlamaRMSNorm: normalised in fp32, rounded, then weighted. */
int cortex_rms_norm_bf16(const uint16_t *x, const uint16_t *weight, uint16_t *out, long rows,
                         int dim, float eps) {
    if (dim % 16 != 0) return UNSUPPORTED;
    for (long r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * dim;
        uint16_t *o = out + r * dim;
        __m512 squares = _mm512_setzero_ps();
        for (int d = 0; d < dim; d += 16) {
            __m512 v = load16(xr + d, BF16);
            squares = _mm512_fmadd_ps(v, v, squares);
        }
        __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / dim + eps));
        for (int d = 0; d < dim; d += 16) {
            __m512 normed = round_bf16(_mm512_mul_ps(load16(xr + d, BF16), inv));
            store16(o + d, _mm512_mul_ps(normed, load16(weight + d, BF16)), BF16);
        }
    }
    return OK;
}

#else

int cortex_kernels_ready(void) { return 0; }

int cortex_rms_norm_bf16(const uint16_t *x, const uint16_t *weight, uint16_t *out, long rows,
                         int dim, float eps) {
    return UNSUPPORTED;
}

int cortex_paged_decode(const void *q, long q_stride, const void *k, const void *v,
                        const int32_t *tables, const int32_t *lens, void *out, int type,
                        int batch, int heads, int kv_heads, int dim, int block_size, int width,
                        int window, float scale, float softcap) {
    return UNSUPPORTED;
}

#endif
