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
 * cortex_rope_decode: a decode step's attention from the fused projection's output: RoPE on
 * q and k (HF's rotate-half, with the rounding of torch's bf16 ops), k and v stored in their
 * cache slots, then cortex_paged_decode. One call where torch's path is about ten ops.
 *
 * cortex_add_rms_norm_bf16: the residual add and the next RMSNorm in one pass (bf16):
 * sum = bf16(residual + x), out = cortex_rms_norm_bf16(sum).
 *
 * cortex_silu_mul_bf16: bf16(bf16(silu(gate)) * up) over a fused gate/up projection's rows.
 *
 * cortex_int4_matmul: out = x @ W.T for rows of x (fp32 or bf16) against an int4 weight
 * in groups of 32 along k, w = q * scale + min (Int4Linear's CPU layout: per row, each group's
 * 32 values as 16 bytes, byte j holding value j in its low nibble and value j + 16 in its high
 * one; scales then mins, fp16 [2, n, k / 32]). x is quantized to int8 per group of 32 (scale
 * max|x| / 127, as llama.cpp's Q8 activations), so that the products are AVX512-VNNI byte dot
 * products: the weight streams at the memory's speed over `threads` threads. Hosts without VNNI
 * build it as a stub that says UNSUPPORTED (cortex_kernels_ready tells which).
 *
 * cortex_int4_dequantize: rows of the same weight as `type` values [n, k] (a prefill multiplies
 * them with torch's dense matmul), w = q * scale + min in fp32, rounded once; scales and mins
 * [n, k / 32] each (rows of the layer's).
 *
 * cortex_decode_layer: a Llama-family decoder layer (llama.py's DecoderLayer) for one decode
 * step, in bf16: the kernels above and below, called in the order the layer's modules call
 * them, so that one C call per layer gives the modules' result bit for bit. Its linear layers
 * are int4 (cortex's layout) or int8, or both side by side (a Q4_K_M file's q, k and v).
 *
 * cortex_int8_matmul: out = x @ (q * scales).T for a few bf16 rows of x against an int8 weight
 * with one bf16 scale per output row (Int8Linear: the quantized lm_head). Memory-bound: the
 * weight streams once at the memory's speed, its rows split over `threads` OpenMP threads
 * (torch's own OpenMP runtime, already loaded, so the threads are torch's).
 *
 * cpu_kernels.py builds this at run time with the machine's compiler (-march=native) and
 * calls it through ctypes. Without AVX-512 (F, BW, VL) it builds to a stub whose `ready` says
 * 0, and the neuron stays on torch's ops.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { F32 = 0, BF16 = 1 }; /* element type of q, k, v and out */
enum { OK = 0, NO_MEMORY = -1, UNSUPPORTED = -2 };
#define MAX_DIM 256
#define MAX_ROWS 8      /* rows of x a matmul kernel takes (decode batches) */
#define PREFETCH_ROWS 4 /* weight rows read ahead */
#define GROUP 32        /* int4 weights: values per scale and min */
#define MAX_PARTS 3     /* parts of one linear layer of a decode layer */

/* AVX-512 F with BW and VL (16-bit lanes and masked 256-bit loads): every AVX-512 CPU since
 * Skylake-SP. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

/* 1: the kernels; 3: the int4 matmul too (AVX512-VNNI). */
int cortex_kernels_ready(void) {
#if defined(__AVX512VNNI__)
    return 3;
#else
    return 1;
#endif
}

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

static inline float bf16_to_f32(uint16_t x) {
    uint32_t bits = (uint32_t)x << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* One fp32 value to p as bf16 (rounded as round_bf16). */
static inline void store1_bf16(uint16_t *p, float x) {
    __m512 r = round_bf16(_mm512_set1_ps(x));
    *p = (uint16_t)((uint32_t)_mm512_cvtsi512_si32(_mm512_castps_si512(r)) >> 16);
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

/* scores[0..n) -> e^(score - best), in place (after the soft-cap, when there is one), with
 * *best the largest score and *total the sum of the exponentials. */
static void exp_scores(float *scores, long n, float softcap, float *best, float *total) {
    if (softcap > 0)
        for (long j = 0; j < n; j++) scores[j] = softcap * tanhf(scores[j] / softcap);
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (long j = 0; j < n; j += 16)
        top = _mm512_max_ps(top, _mm512_mask_loadu_ps(top, tail_mask(n - j), scores + j));
    *best = _mm512_reduce_max_ps(top);
    top = _mm512_set1_ps(*best);
    __m512 sum = _mm512_setzero_ps();
    for (long j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + j), top));
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
        _mm512_mask_storeu_ps(scores + j, m, e);
    }
    *total = _mm512_reduce_add_ps(sum);
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

/* Scores of positions [first, first + n) for the `group` query heads in qv (fp32, scaled),
 * their softmax numerators against the part's own maximum (stored in best[g]) and sums
 * (total[g]), and acc[g] = sum of numerator * v: one part of one (sequence, KV head). */
static void attend_part(const __m512 *qv, const char *k, const char *v, const int32_t *table,
                        long first, long n, int block_size, long slot, long head, size_t elem,
                        int type, int group, int chunks, float softcap, float *scores,
                        long stride, float *best, float *total, __m512 *acc) {
    __m512 row[MAX_DIM / 16];
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
    for (int g = 0; g < group; g++)
        exp_scores(scores + g * stride, n, softcap, best + g, total + g);
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
}

int cortex_paged_decode(const void *q, long q_stride, const void *k, const void *v,
                        const int32_t *tables, const int32_t *lens, void *out, int type,
                        int batch, int heads, int kv_heads, int dim, int block_size, int width,
                        int window, float scale, float softcap, int threads) {
    if (dim % 16 != 0 || dim > MAX_DIM || kv_heads <= 0 || heads % kv_heads != 0 || threads < 1)
        return UNSUPPORTED;
    size_t elem = type == BF16 ? 2 : 4;
    int group = heads / kv_heads, chunks = dim / 16;
    long slot = (long)kv_heads * dim, units = (long)batch * kv_heads;
    /* Each (sequence, KV head) splits its positions into `parts`, so that every thread has
     * work even at batch 1 (flash-decoding); the parts merge by their softmax maxima. */
    int parts = units < 4L * threads ? threads : 1;
    long longest = 1;
    for (int b = 0; b < batch; b++)
        if (lens[b] > longest) longest = lens[b];
    long stride = ((longest + parts - 1) / parts + 15) & ~15L; /* scores of one head, one part */
    long items = units * parts, state = (long)group * (2 + dim); /* best, total, acc per head */
    float *partials = malloc(sizeof(float) * items * state);
    int failed = !partials;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *scores = malloc(sizeof(float) * group * stride);
        /* __m512 arrays must be 64-byte aligned: the compiler uses aligned moves on them. */
        __m512 *qv = aligned_alloc(64, sizeof(__m512) * group * chunks);
        __m512 *acc = aligned_alloc(64, sizeof(__m512) * group * chunks);
        failed |= !scores || !qv || !acc;
#pragma omp for schedule(static)
        for (long item = 0; item < items; item++) {
            if (failed || !scores || !qv || !acc) continue;
            int b = (int)(item / (kv_heads * parts)), kvh = (int)(item / parts % kv_heads);
            int part = (int)(item % parts);
            long len = lens[b] < (long)width * block_size ? lens[b] : (long)width * block_size;
            long first = window > 0 && len > window ? len - window : 0;
            long per = (len - first + parts - 1) / parts;
            long lo = first + part * per, hi = lo + per < len ? lo + per : len;
            float *mine = partials + item * state; /* best[group], total[group], acc[group][dim] */
            if (lo >= hi) { /* an empty part: weight 0 in the merge */
                for (int g = 0; g < group; g++) mine[g] = -INFINITY, mine[group + g] = 0;
                continue;
            }
            long head = (long)kvh * dim;
            const char *qhead = (const char *)q + (b * q_stride + (long)kvh * group * dim) * elem;
            for (int i = 0; i < group * chunks; i++)
                qv[i] = _mm512_mul_ps(load16(qhead + (long)i * 16 * elem, type),
                                      _mm512_set1_ps(scale));
            attend_part(qv, k, v, tables + (long)b * width, lo, hi - lo, block_size, slot, head,
                        elem, type, group, chunks, softcap, scores, stride, mine, mine + group,
                        acc);
            for (int i = 0; i < group * chunks; i++)
                _mm512_storeu_ps(mine + 2 * group + i * 16, acc[i]);
        }
        free(scores), free(qv), free(acc);
    }
    if (failed) {
        free(partials);
        return NO_MEMORY;
    }
    for (long unit = 0; unit < units; unit++) {
        int b = (int)(unit / kv_heads), kvh = (int)(unit % kv_heads);
        for (int g = 0; g < group; g++) {
            float top = -INFINITY, sum = 0;
            for (int part = 0; part < parts; part++) {
                float best = partials[(unit * parts + part) * state + g];
                if (best > top) top = best;
            }
            __m512 acc[MAX_DIM / 16];
            for (int c = 0; c < chunks; c++) acc[c] = _mm512_setzero_ps();
            for (int part = 0; part < parts; part++) {
                const float *mine = partials + (unit * parts + part) * state;
                if (mine[group + g] == 0) continue;
                float weight = expf(mine[g] - top);
                sum += weight * mine[group + g];
                const float *a = mine + 2 * group + (long)g * dim;
                for (int c = 0; c < chunks; c++)
                    acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(weight), _mm512_loadu_ps(a + c * 16),
                                             acc[c]);
            }
            char *o = (char *)out + (((long)b * heads + (long)kvh * group + g) * dim) * elem;
            __m512 inv = _mm512_set1_ps(1.0f / sum);
            for (int c = 0; c < chunks; c++)
                store16(o + (long)c * 16 * elem, _mm512_mul_ps(acc[c], inv), type);
        }
    }
    free(partials);
    return OK;
}

int cortex_rms_norm_bf16(const uint16_t *x, const uint16_t *weight, uint16_t *out, long rows,
                         int dim, float eps);

static inline float round1_bf16(float x) { return _mm512_cvtss_f32(round_bf16(_mm512_set1_ps(x))); }

static inline float load1(const void *p, long i, int type) {
    return type == BF16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store1(void *p, long i, float x, int type) {
    if (type == BF16)
        store1_bf16((uint16_t *)p + i, x);
    else
        ((float *)p)[i] = x;
}

/* `heads` rows of `dim` from src to dst (both `type`), the first `rotary` dimensions of each
 * rotated: x * cos + roll(x, rotary / 2) * sin, cos and sin (signed: [-sin, sin]) of `rotary`
 * values. Each product and the sum are rounded to the type, as torch's separate bf16 ops
 * round them, so the result equals rope.apply_rope bit for bit. */
static void rope_rows(const void *src, void *dst, const void *cos, const void *sin, int heads,
                      int dim, int rotary, int type) {
    int half = rotary / 2;
    for (int h = 0; h < heads; h++) {
        long row = (long)h * dim;
        for (int d = 0; d < dim; d++) {
            float x = load1(src, row + d, type), y = x;
            if (d < rotary) {
                float turned = load1(src, row + (d + half) % rotary, type);
                float a = x * load1(cos, d, type), b = turned * load1(sin, d, type);
                if (type == BF16) a = round1_bf16(a), b = round1_bf16(b);
                y = a + b;
            }
            store1(dst, row + d, y, type);
        }
    }
}

int cortex_rope_decode(const void *qk, long qk_stride, const void *v, long v_stride,
                       const void *cos, const void *sin, int rotary, const int64_t *slots,
                       void *k, void *vc, const int32_t *tables, const int32_t *lens, void *out,
                       int type, int batch, int heads, int kv_heads, int dim, int block_size,
                       int width, int window, float scale, float softcap, int threads) {
    if (rotary % 2 != 0 || rotary > dim) return UNSUPPORTED;
    size_t elem = type == BF16 ? 2 : 4;
    long q_size = (long)heads * dim, kv_size = (long)kv_heads * dim;
    char *q = malloc(elem * batch * q_size);
    if (!q) return NO_MEMORY;
    for (int b = 0; b < batch; b++) {
        const char *row = (const char *)qk + b * qk_stride * elem;
        const char *c = (const char *)cos + (long)b * rotary * elem;
        const char *s = (const char *)sin + (long)b * rotary * elem;
        rope_rows(row, q + b * q_size * elem, c, s, heads, dim, rotary, type);
        rope_rows(row + q_size * elem, (char *)k + slots[b] * kv_size * elem, c, s, kv_heads, dim,
                  rotary, type);
        memcpy((char *)vc + slots[b] * kv_size * elem, (const char *)v + b * v_stride * elem,
               kv_size * elem);
    }
    int status = cortex_paged_decode(q, q_size, k, vc, tables, lens, out, type, batch, heads,
                                     kv_heads, dim, block_size, width, window, scale, softcap,
                                     threads);
    free(q);
    return status;
}

/* sum = bf16(residual + x) and out = weight * bf16(sum / rms(sum)) for `rows` contiguous rows
 * of `dim` (a multiple of 16): the residual add before a norm, and the norm, in one pass. */
int cortex_add_rms_norm_bf16(const uint16_t *x, const uint16_t *residual, const uint16_t *weight,
                             uint16_t *sum, uint16_t *out, long rows, int dim, float eps) {
    if (dim % 16 != 0) return UNSUPPORTED;
    for (long i = 0; i < rows * dim; i += 16)
        store16(sum + i, _mm512_add_ps(load16(x + i, BF16), load16(residual + i, BF16)), BF16);
    return cortex_rms_norm_bf16(sum, weight, out, rows, dim, eps);
}

/* out[r] = bf16(bf16(silu(gate)) * up) with gate, up the two halves of row r of `gate_up`
 * (rows `stride` elements apart, `inter` values each, a multiple of 16). silu(g) = g * sigmoid(g),
 * the sigmoid from e = e^-|g| (1 / (1 + e) for g >= 0, e / (1 + e) below) so that no
 * exponential overflows. */
int cortex_silu_mul_bf16(const uint16_t *gate_up, long stride, uint16_t *out, long rows,
                         int inter) {
    if (inter % 16 != 0) return UNSUPPORTED;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (long r = 0; r < rows; r++) {
        const uint16_t *g = gate_up + r * stride, *u = g + inter;
        for (int i = 0; i < inter; i += 16) {
            __m512 x = load16(g + i, BF16);
            __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x))); /* e^-|x| */
            /* sigmoid(x): 1 / (1 + e) for x >= 0, e / (1 + e) below */
            __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
            __m512 top = _mm512_mask_mov_ps(one, negative, e);
            __m512 silu = round_bf16(_mm512_mul_ps(x, _mm512_div_ps(top, _mm512_add_ps(one, e))));
            store16(out + r * inter + i, _mm512_mul_ps(silu, load16(u + i, BF16)), BF16);
        }
    }
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

/* out[m, n] = bf16(scales[n] * sum_k x[m, k] * q[n, k]) for `rows` bf16 rows of x (`x_stride`
 * elements apart) against int8 q [n, k] (contiguous), k a multiple of 16; fp32 accumulation. */
int cortex_int8_matmul(const uint16_t *x, long x_stride, const int8_t *q, const uint16_t *scales,
                       uint16_t *out, long out_stride, int rows, long n, int k, int threads) {
    if (k % 16 != 0 || rows < 1 || rows > MAX_ROWS) return UNSUPPORTED;
    float *xs = aligned_alloc(64, sizeof(float) * rows * k);
    if (!xs) return NO_MEMORY;
    for (int m = 0; m < rows; m++)
        for (int d = 0; d < k; d += 16)
            _mm512_store_ps(xs + (long)m * k + d, load16(x + m * x_stride + d, BF16));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < n; r++) {
        const int8_t *qr = q + r * k;
        /* The rows a few ahead: the hardware prefetcher alone leaves the memory idle between
         * short rows. */
        for (int d = 0; d < k; d += 64)
            _mm_prefetch((const char *)(qr + PREFETCH_ROWS * k + d), _MM_HINT_T0);
        __m512 acc[MAX_ROWS];
        for (int m = 0; m < rows; m++) acc[m] = _mm512_setzero_ps();
        for (int d = 0; d < k; d += 16) {
            __m128i bytes = _mm_loadu_si128((const __m128i *)(qr + d));
            __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
            for (int m = 0; m < rows; m++)
                acc[m] = _mm512_fmadd_ps(w, _mm512_load_ps(xs + (long)m * k + d), acc[m]);
        }
        float scale = bf16_to_f32(scales[r]);
        for (int m = 0; m < rows; m++)
            store1_bf16(out + m * out_stride + r, _mm512_reduce_add_ps(acc[m]) * scale);
    }
    free(xs);
    return OK;
}

/* The int4 weight's group scales and mins: fp16 in memory, fp32 to compute. */
static inline __m512 load16_f16(const uint16_t *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

int cortex_int4_dequantize(const uint8_t *packed, const uint16_t *scales, const uint16_t *mins,
                           void *out, long n, int k, int type, int threads) {
    if (k % GROUP != 0) return UNSUPPORTED;
    int groups = k / GROUP;
    size_t elem = type == BF16 ? 2 : 4;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < n; r++) {
        char *o = (char *)out + r * k * elem;
        for (int g = 0; g < groups; g++) {
            const uint8_t *bytes = packed + (r * groups + g) * (GROUP / 2);
            __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)bytes));
            __m512 scale = _mm512_set1_ps(_mm512_cvtss_f32(load16_f16(scales + r * groups + g, 1)));
            __m512 min = _mm512_set1_ps(_mm512_cvtss_f32(load16_f16(mins + r * groups + g, 1)));
            __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, _mm512_set1_epi32(15)));
            __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
            store16(o + (long)g * GROUP * elem, _mm512_add_ps(_mm512_mul_ps(lo, scale), min), type);
            store16(o + ((long)g * GROUP + 16) * elem, _mm512_add_ps(_mm512_mul_ps(hi, scale), min),
                    type);
        }
    }
    return OK;
}

#if defined(__AVX512VNNI__)
/* x's rows quantized per group of 32: the low and high halves of each group as int8 (in the
 * weight's nibble order), each group's scale, its exact sum, and `shift`, 8 x (its exact sum -
 * its quantized sum).
 *
 * With w = q * scale + min, a row's product is scale * q.x' + min * sum(x) + scale * shift, x'
 * the quantized x: the error x' - x meets (q - 8) * scale only, values about 0, and never the
 * min, which is most of a Q4 weight's magnitude (a Q4_0 min is -8 scales) and alike across the
 * rows, where its error would shift every output at once. On SmolLM2 Q4_1, texts of 339-400
 * tokens decoded token by token have log-likelihoods 0.03-0.19% off the fp32 path's this way
 * (mean 0.11% over four), 0.12-0.28% with the quantized sum alone as llama.cpp's Q8_1 (0.19%),
 * 0.16-0.80% with the exact sum alone (0.38%). */
typedef struct {
    int8_t *low, *high;
    float *scale, *sum, *shift;
} quantized_rows;

static void quantize_rows(const void *x, long x_stride, int type, int rows, int k,
                          quantized_rows *qx) {
    int groups = k / GROUP, padded = (groups + 15) & ~15;
    size_t elem = type == BF16 ? 2 : 4;
    for (int m = 0; m < rows; m++) {
        const char *row = (const char *)x + m * x_stride * elem;
        for (int g = 0; g < padded; g++) {
            long at = (long)m * padded + g;
            if (g >= groups) { /* padding up to whole vectors of group scales: weight 0 */
                qx->scale[at] = qx->sum[at] = qx->shift[at] = 0;
                continue;
            }
            __m512 lo = load16(row + (long)g * GROUP * elem, type);
            __m512 hi = load16(row + ((long)g * GROUP + 16) * elem, type);
            float top = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            __m512 inv = _mm512_set1_ps(top > 0 ? 127.0f / top : 0.0f);
            __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv)); /* to nearest even */
            __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
            _mm_storeu_si128((__m128i *)(qx->low + at * 16), _mm512_cvtepi32_epi8(qlo));
            _mm_storeu_si128((__m128i *)(qx->high + at * 16), _mm512_cvtepi32_epi8(qhi));
            qx->scale[at] = top / 127.0f;
            qx->sum[at] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
            int total = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
            float quantized = qx->scale[at] * (float)total;
            qx->shift[at] = 8 * (qx->sum[at] - quantized);
        }
    }
}

int cortex_int4_matmul(const void *x, long x_stride, int type, const uint8_t *packed,
                       const uint16_t *scales, void *out, long out_stride, int rows, long n, int k,
                       int threads) {
    if (k % GROUP != 0 || rows < 1) return UNSUPPORTED;
    int groups = k / GROUP, padded = (groups + 15) & ~15;
    const uint16_t *mins = scales + n * groups; /* scales [n, groups], then mins alike */
    quantized_rows qx;
    qx.low = aligned_alloc(64, (size_t)rows * padded * 16);
    qx.high = aligned_alloc(64, (size_t)rows * padded * 16);
    qx.scale = aligned_alloc(64, sizeof(float) * rows * padded);
    qx.sum = aligned_alloc(64, sizeof(float) * rows * padded);
    qx.shift = aligned_alloc(64, sizeof(float) * rows * padded);
    if (!qx.low || !qx.high || !qx.scale || !qx.sum || !qx.shift) {
        free(qx.low), free(qx.high), free(qx.scale), free(qx.sum), free(qx.shift);
        return NO_MEMORY;
    }
    quantize_rows(x, x_stride, type, rows, k, &qx);
    /* A 64-byte load holds four groups: lanes 4i..4i+3 of a byte dot product sum group i. */
    __m512i spread[4];
    for (int b = 0; b < 4; b++)
        spread[b] = _mm512_set_epi32(4 * b + 3, 4 * b + 3, 4 * b + 3, 4 * b + 3, 4 * b + 2,
                                     4 * b + 2, 4 * b + 2, 4 * b + 2, 4 * b + 1, 4 * b + 1,
                                     4 * b + 1, 4 * b + 1, 4 * b, 4 * b, 4 * b, 4 * b);
    const __m512i nibble = _mm512_set1_epi8(15);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < n; r++) {
        const uint8_t *row = packed + r * groups * (GROUP / 2);
        for (int d = 0; d < k / 2; d += 64)
            _mm_prefetch((const char *)(row + PREFETCH_ROWS * (k / 2) + d), _MM_HINT_T0);
        const uint16_t *rs = scales + r * groups, *rm = mins + r * groups;
        /* MAX_ROWS rows of x at a time: the weight row comes from memory once, from the cache
         * for the next rows. */
        for (int m0 = 0; m0 < rows; m0 += MAX_ROWS) {
            int count = rows - m0 < MAX_ROWS ? rows - m0 : MAX_ROWS;
            __m512 acc[MAX_ROWS], offset[MAX_ROWS];
            for (int m = 0; m < count; m++) acc[m] = offset[m] = _mm512_setzero_ps();
            for (int g0 = 0; g0 < groups; g0 += 16) { /* 16 groups: one vector of their scales */
                int left = groups - g0 < 16 ? groups - g0 : 16;
                __mmask16 gm = (__mmask16)((1u << left) - 1);
                __m512 ws = load16_f16(rs + g0, gm), wm = load16_f16(rm + g0, gm);
                __m512 both[MAX_ROWS]; /* weight scale x activation scale, per group */
                for (int m = 0; m < count; m++) {
                    long at = (long)(m0 + m) * padded + g0;
                    both[m] = _mm512_mul_ps(ws, _mm512_load_ps(qx.scale + at));
                    offset[m] = _mm512_fmadd_ps(wm, _mm512_load_ps(qx.sum + at), offset[m]);
                    offset[m] = _mm512_fmadd_ps(ws, _mm512_load_ps(qx.shift + at), offset[m]);
                }
                for (int b = 0; 4 * b < left; b++) {
                    int in = left - 4 * b < 4 ? left - 4 * b : 4;
                    __mmask64 bm = in == 4 ? ~0ULL : (1ULL << (16 * in)) - 1;
                    long at = (long)(g0 + 4 * b) * 16;
                    __m512i w = _mm512_maskz_loadu_epi8(bm, row + at);
                    __m512i wlo = _mm512_and_si512(w, nibble);
                    __m512i whi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble);
                    for (int m = 0; m < count; m++) {
                        long xm = (long)(m0 + m) * padded * 16 + at;
                        __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wlo,
                                                          _mm512_maskz_loadu_epi8(bm, qx.low + xm));
                        dot = _mm512_dpbusd_epi32(dot, whi,
                                                  _mm512_maskz_loadu_epi8(bm, qx.high + xm));
                        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                                 _mm512_permutexvar_ps(spread[b], both[m]), acc[m]);
                    }
                }
            }
            for (int m = 0; m < count; m++) {
                float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[m], offset[m]));
                store1(out, (m0 + m) * out_stride + r, sum, type);
            }
        }
    }
    free(qx.low), free(qx.high), free(qx.scale), free(qx.sum), free(qx.shift);
    return OK;
}

/* A linear layer of a decode layer: up to MAX_PARTS parts side by side (a fused layer whose
 * parts need different kernels), each int4 (cortex's layout) or int8 (one bf16 scale a row). */
typedef struct {
    int bits;           /* 4 or 8 */
    const void *weight; /* int4: packed [n, k / 2]; int8: [n, k] */
    const void *scales; /* int4: fp16 [2, n, k / GROUP]; int8: bf16 [n] */
    long n;             /* this part's output features */
} linear_part;

typedef struct {
    int parts;
    linear_part part[MAX_PARTS];
    const uint16_t *bias; /* [all parts' n] bf16, or NULL */
} linear;

/* One Llama-family decoder layer (llama.py's DecoderLayer), bf16. */
typedef struct {
    const uint16_t *input_norm, *post_norm; /* [hidden] */
    const uint16_t *q_norm, *k_norm;        /* [dim] (Qwen3), or NULL */
    float eps;
    linear qkv, o, gate_up, down;
    void *k_cache, *v_cache;
    int heads, kv_heads, dim, hidden, inter, block_size, window;
    float scale, softcap;
} decode_layer;

/* What every layer of one decode step shares. */
typedef struct {
    int rows, threads, rotary, width;
    const void *cos, *sin; /* [rows, rotary] bf16 */
    const int64_t *slots;
    const int32_t *tables, *lens;
} decode_step;

/* out [rows, n] = x [rows, k] @ W.T (+ bias), each part into its own columns. */
static int apply_linear(const linear *layer, const uint16_t *x, int k, uint16_t *out, long n,
                        int rows, int threads) {
    long column = 0;
    for (int i = 0; i < layer->parts; i++) {
        const linear_part *p = &layer->part[i];
        int status = p->bits == 4
            ? cortex_int4_matmul(x, k, BF16, p->weight, p->scales, out + column, n, rows, p->n, k,
                                 threads)
            : cortex_int8_matmul(x, k, p->weight, p->scales, out + column, n, rows, p->n, k,
                                 threads);
        if (status != OK) return status;
        column += p->n;
    }
    if (layer->bias)
        for (int m = 0; m < rows; m++)
            for (long c = 0; c < n; c++)
                store1_bf16(out + m * n + c,
                            bf16_to_f32(out[m * n + c]) + bf16_to_f32(layer->bias[c]));
    return OK;
}

/* x [rows, hidden] (the residual stream, bf16) through one decoder layer, in place:
 * x += attention(norm(x)); x += mlp(norm(x)). The same kernels, in the same order, as the
 * layer's modules call one by one, so the result is theirs bit for bit. */
int cortex_decode_layer(const decode_layer *L, const decode_step *S, uint16_t *x) {
    int rows = S->rows, hidden = L->hidden, inter = L->inter, threads = S->threads;
    long q_size = (long)L->heads * L->dim, kv_size = (long)L->kv_heads * L->dim;
    long qkv_size = q_size + 2 * kv_size, qk_size = q_size + kv_size;
    /* Scratch, one allocation: normed, qkv, qk (normed q/k), att, o, total, gate_up, gated, down */
    long sizes[] = {hidden, qkv_size, qk_size, q_size, hidden, hidden, 2L * inter, inter, hidden};
    long total_size = 0;
    for (int i = 0; i < 9; i++) total_size += ((sizes[i] * rows + 31) & ~31L);
    uint16_t *base = aligned_alloc(64, total_size * 2), *buf[9];
    if (!base) return NO_MEMORY;
    for (long i = 0, at = 0; i < 9; at += (sizes[i] * rows + 31) & ~31L, i++) buf[i] = base + at;
    uint16_t *normed = buf[0], *qkv = buf[1], *qk = buf[2], *att = buf[3], *o = buf[4];
    uint16_t *total = buf[5], *gate_up = buf[6], *gated = buf[7], *down = buf[8];
    int status = cortex_rms_norm_bf16(x, L->input_norm, normed, rows, hidden, L->eps);
    if (status == OK) status = apply_linear(&L->qkv, normed, hidden, qkv, qkv_size, rows, threads);
    long qk_stride = qkv_size;
    if (status == OK && L->q_norm) { /* per-head norms of q and k, as Qwen3 */
        for (int m = 0; m < rows && status == OK; m++) {
            status = cortex_rms_norm_bf16(qkv + m * qkv_size, L->q_norm, qk + m * qk_size,
                                          L->heads, L->dim, L->eps);
            if (status == OK)
                status = cortex_rms_norm_bf16(qkv + m * qkv_size + q_size, L->k_norm,
                                              qk + m * qk_size + q_size, L->kv_heads, L->dim,
                                              L->eps);
        }
        qk_stride = qk_size;
    } else {
        qk = qkv;
    }
    if (status == OK)
        status = cortex_rope_decode(qk, qk_stride, qkv + qk_size, qkv_size, S->cos, S->sin,
                                    S->rotary, S->slots, L->k_cache, L->v_cache, S->tables,
                                    S->lens, att, BF16, rows, L->heads, L->kv_heads, L->dim,
                                    L->block_size, S->width, L->window, L->scale, L->softcap,
                                    threads);
    if (status == OK) status = apply_linear(&L->o, att, (int)q_size, o, hidden, rows, threads);
    if (status == OK)
        status = cortex_add_rms_norm_bf16(o, x, L->post_norm, total, normed, rows, hidden, L->eps);
    if (status == OK)
        status = apply_linear(&L->gate_up, normed, hidden, gate_up, 2L * inter, rows, threads);
    if (status == OK) status = cortex_silu_mul_bf16(gate_up, 2L * inter, gated, rows, inter);
    if (status == OK) status = apply_linear(&L->down, gated, inter, down, hidden, rows, threads);
    if (status == OK)
        for (long i = 0; i < (long)rows * hidden; i += 16)
            store16(x + i, _mm512_add_ps(load16(total + i, BF16), load16(down + i, BF16)), BF16);
    free(base);
    return status;
}
#else
int cortex_decode_layer(const void *L, const void *S, uint16_t *x) { return UNSUPPORTED; }

int cortex_int4_matmul(const void *x, long x_stride, int type, const uint8_t *packed,
                       const uint16_t *scales, void *out, long out_stride, int rows, long n, int k,
                       int threads) {
    return UNSUPPORTED;
}
#endif

#else

int cortex_kernels_ready(void) { return 0; }

int cortex_decode_layer(const void *L, const void *S, uint16_t *x) { return UNSUPPORTED; }

int cortex_int4_dequantize(const uint8_t *packed, const uint16_t *scales, const uint16_t *mins,
                           void *out, long n, int k, int type, int threads) {
    return UNSUPPORTED;
}

int cortex_int4_matmul(const void *x, long x_stride, int type, const uint8_t *packed,
                       const uint16_t *scales, void *out, long out_stride, int rows, long n, int k,
                       int threads) {
    return UNSUPPORTED;
}

int cortex_int8_matmul(const uint16_t *x, long x_stride, const int8_t *q, const uint16_t *scales,
                       uint16_t *out, long out_stride, int rows, long n, int k, int threads) {
    return UNSUPPORTED;
}

int cortex_rope_decode(const void *qk, long qk_stride, const void *v, long v_stride,
                       const void *cos, const void *sin, int rotary, const int64_t *slots,
                       void *k, void *vc, const int32_t *tables, const int32_t *lens, void *out,
                       int type, int batch, int heads, int kv_heads, int dim, int block_size,
                       int width, int window, float scale, float softcap, int threads) {
    return UNSUPPORTED;
}

int cortex_add_rms_norm_bf16(const uint16_t *x, const uint16_t *residual, const uint16_t *weight,
                             uint16_t *sum, uint16_t *out, long rows, int dim, float eps) {
    return UNSUPPORTED;
}

int cortex_silu_mul_bf16(const uint16_t *gate_up, long stride, uint16_t *out, long rows,
                         int inter) {
    return UNSUPPORTED;
}

int cortex_rms_norm_bf16(const uint16_t *x, const uint16_t *weight, uint16_t *out, long rows,
                         int dim, float eps) {
    return UNSUPPORTED;
}

int cortex_paged_decode(const void *q, long q_stride, const void *k, const void *v,
                        const int32_t *tables, const int32_t *lens, void *out, int type,
                        int batch, int heads, int kv_heads, int dim, int block_size, int width,
                        int window, float scale, float softcap, int threads) {
    return UNSUPPORTED;
}

#endif
