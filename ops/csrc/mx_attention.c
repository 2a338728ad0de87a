/* The steps of one attention row (no ONNX Runtime types here; the op is gqa_op.c).
 *
 *   mx_attn_dots        s[h, j] = q[h] . k[j]                  h < g, j < n   (q [g, d], k rows ldk apart)
 *   mx_attn_softmax     s = softmax(s * scale + bias, with `sink` as one more logit when not NULL), in place (a
 *                       slot masked by float32's lowest bias gets weight 0, exactly, unless the whole row is masked:
 *                       then the weights are even, as transformers' eager attention gives)
 *   mx_attn_accumulate  out[h] += sum_j p[h, j] * v[j]         h < g, j < n   (v rows ldv apart)
 *
 * Each key and value row is read once for all g query heads that share it (grouped-query attention: the heads of
 * one KV head), so a decode step streams its cache once, with the bytes 8 KB ahead asked for (the hardware
 * prefetchers stop at 4 KB pages, mx_avx512.h). AVX-512 (d a multiple of 16) or plain C; float32 FMAs, results
 * differ from a float32 reference by summation order only, and AVX-512's e^x by at most 1e-6 relative (mx_avx512.h).
 */
#include <math.h>

#include "mx_attention.h"
#include "mx_math.h"

#if defined(__x86_64__)
#include "mx_avx512.h"

/* every cache line of one row, PF_BYTES ahead */
AVX512_INLINE void prefetch_row(const float *row, int64_t d) {
    for (int64_t i = 0; i < d; i += 16) PREFETCH(row + i);
}

AVX512 static void dots_avx512(const float *q, int64_t g, int64_t d, const float *k, int64_t ldk, int64_t n, float *s,
                               int64_t lds) {
    for (int64_t j = 0; j < n; j++) {
        const float *kj = k + j * ldk;
        prefetch_row(kj, d);
        for (int64_t h = 0; h < g; h++) {
            const float *qh = q + h * d;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            int64_t i = 0;
            for (; i + 32 <= d; i += 32) {
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qh + i), _mm512_loadu_ps(kj + i), a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qh + i + 16), _mm512_loadu_ps(kj + i + 16), a1);
            }
            if (i < d) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qh + i), _mm512_loadu_ps(kj + i), a0);
            s[h * lds + j] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        }
    }
}

AVX512 static void softmax_avx512(float *s, int64_t n, float scale, const float *bias, const float *sink) {
    const __m512 sc = _mm512_set1_ps(scale);
    __m512 m = _mm512_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j < n; j += 16) {
        const __mmask16 k = tail_mask(n - j);
        __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + j), sc);
        if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(k, bias + j));
        _mm512_mask_storeu_ps(s + j, k, x);
        m = _mm512_mask_max_ps(m, k, m, x);
    }
    float top = _mm512_reduce_max_ps(m);
    if (sink && *sink > top) top = *sink;
    const __m512 t = _mm512_set1_ps(top);
    __m512 sum = _mm512_setzero_ps();
    for (j = 0; j < n; j += 16) {
        const __mmask16 k = tail_mask(n - j);
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), t));
        _mm512_mask_storeu_ps(s + j, k, e);
        sum = _mm512_mask_add_ps(sum, k, sum, e);
    }
    float total = _mm512_reduce_add_ps(sum);
    if (sink) total += expf(*sink - top);
    const __m512 inv = _mm512_set1_ps(1.0f / total);
    for (j = 0; j < n; j += 16) {
        const __mmask16 k = tail_mask(n - j);
        _mm512_mask_storeu_ps(s + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + j), inv));
    }
}

AVX512 static void accumulate_avx512(const float *p, int64_t lds, int64_t g, const float *v, int64_t ldv, int64_t n,
                                     int64_t d, float *out) {
    for (int64_t j = 0; j < n; j++) {
        const float *vj = v + j * ldv;
        prefetch_row(vj, d);
        for (int64_t h = 0; h < g; h++) {
            const __m512 w = _mm512_set1_ps(p[h * lds + j]);
            float *o = out + h * d;
            for (int64_t i = 0; i < d; i += 16)
                _mm512_storeu_ps(o + i, _mm512_fmadd_ps(w, _mm512_loadu_ps(vj + i), _mm512_loadu_ps(o + i)));
        }
    }
}
#endif

static void dots_c(const float *q, int64_t g, int64_t d, const float *k, int64_t ldk, int64_t n, float *s,
                   int64_t lds) {
    for (int64_t j = 0; j < n; j++) {
        const float *kj = k + j * ldk;
        for (int64_t h = 0; h < g; h++) {
            const float *qh = q + h * d;
            float acc = 0.0f;
            for (int64_t i = 0; i < d; i++) acc += qh[i] * kj[i];
            s[h * lds + j] = acc;
        }
    }
}

static void softmax_c(float *s, int64_t n, float scale, const float *bias, const float *sink) {
    float top = sink ? *sink : -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        s[j] = s[j] * scale + (bias ? bias[j] : 0.0f);
        top = s[j] > top ? s[j] : top;
    }
    float total = sink ? expf(*sink - top) : 0.0f;
    for (int64_t j = 0; j < n; j++) total += s[j] = expf(s[j] - top);
    const float inv = 1.0f / total;
    for (int64_t j = 0; j < n; j++) s[j] *= inv;
}

static void accumulate_c(const float *p, int64_t lds, int64_t g, const float *v, int64_t ldv, int64_t n, int64_t d,
                         float *out) {
    for (int64_t j = 0; j < n; j++) {
        const float *vj = v + j * ldv;
        for (int64_t h = 0; h < g; h++) {
            const float w = p[h * lds + j];
            float *o = out + h * d;
            for (int64_t i = 0; i < d; i++) o[i] += w * vj[i];
        }
    }
}

static int vector(int64_t d) {
#if defined(__x86_64__)
    return mx_isa() == MX_ISA_AVX512 && d % 16 == 0;
#else
    (void)d;
    return 0;
#endif
}

void mx_attn_dots(const float *q, int64_t g, int64_t d, const float *k, int64_t ldk, int64_t n, float *s, int64_t lds) {
#if defined(__x86_64__)
    if (vector(d)) return dots_avx512(q, g, d, k, ldk, n, s, lds);
#endif
    dots_c(q, g, d, k, ldk, n, s, lds);
}

void mx_attn_softmax(float *s, int64_t n, float scale, const float *bias, const float *sink) {
#if defined(__x86_64__)
    if (mx_isa() == MX_ISA_AVX512) return softmax_avx512(s, n, scale, bias, sink);
#endif
    softmax_c(s, n, scale, bias, sink);
}

void mx_attn_accumulate(const float *p, int64_t lds, int64_t g, const float *v, int64_t ldv, int64_t n, int64_t d,
                        float *out) {
#if defined(__x86_64__)
    if (vector(d)) return accumulate_avx512(p, lds, g, v, ldv, n, d, out);
#endif
    accumulate_c(p, lds, g, v, ldv, n, d, out);
}
