/* ai.mxport.LinearQ4(A [..., K], W uint8 [N, S, 136], D float [N, S]) -> [..., N]: rows of A quantized to int8 once
 * per call, output rows of W split over ORT's intra-op pool (the product is in mx_q4.c, the meaning in
 * ops/linear_q4.py). */
#include <stdio.h>
#include <stdlib.h>

#include "mx_math.h"
#include "ort_kernel.h"

typedef struct {
    const float *a;
    int64_t k;
    int8_t *qa; /* A quantized: written by quantize_task, read by linear_q4_task */
    float *da;
    int16_t *bs;
    void *packed; /* qa in the product's order (mx_q4_pack) where the ISA in use wants it, else NULL */
    int64_t m, s, n, chunk;
    const uint8_t *w;
    const float *d;
    float *y;
} Q4Product;

static void linear_q4_task(void *p, size_t i) {
    const Q4Product *q = p;
    const int64_t n0 = (int64_t)i * q->chunk, n1 = n0 + q->chunk < q->n ? n0 + q->chunk : q->n;
    mx_linear_q4(q->qa, q->da, q->bs, q->packed, q->m, q->s, q->w, q->d, n0, n1, q->y, q->n);
}

#define QUANTIZE_ROWS 8 /* rows of A per quantize task */

/* rows [8i, 8i + 8) of A to int8 (and packed) */
static void quantize_task(void *p, size_t i) {
    const Q4Product *q = p;
    const int64_t r0 = (int64_t)i * QUANTIZE_ROWS, r1 = r0 + QUANTIZE_ROWS < q->m ? r0 + QUANTIZE_ROWS : q->m;
    mx_q4_activations(q->a + r0 * q->k, r1 - r0, q->k, q->s, q->qa + r0 * q->s * MX_Q4_SUPER, q->da + r0 * q->s,
                      q->bs + r0 * q->s * MX_Q4_SUBS);
    if (q->packed) mx_q4_pack(q->qa, q->bs, q->s, r0, r1, q->packed);
}

/* "[d0, d1, ...]" of a tensor's shape, for error messages */
static const char *dims_text(const Tensor *t, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "[");
    for (size_t i = 0; i < t->rank && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, i ? ", %lld" : "%lld", (long long)t->dims[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

OrtStatus *linear_q4_compute(void *kernel, OrtKernelContext *ctx) {
    Call c = {((PlainKernel *)kernel)->api, ctx};
    Tensor a, w, d;
    OrtStatus *st;
    if ((st = input(c, 0, &a)) || (st = input(c, 1, &w)) || (st = input(c, 2, &d))) return st;
    const int64_t k = a.rank ? a.dims[a.rank - 1] : 0, s = (k + MX_Q4_SUPER - 1) / MX_Q4_SUPER;
    if (a.rank < 1 || w.rank != 3 || w.dims[2] != MX_Q4_BYTES || w.dims[1] != s || d.rank != 2 ||
        d.dims[0] != w.dims[0] || d.dims[1] != s) {
        char wd[96], dd[96];
        return fail(c.api, "ai.mxport.LinearQ4: expected A[..., K], W[N, ceil(K/256), %d] and D[N, ceil(K/256)]; found "
                           "A[..., %lld] (rank %zu), W%s, D%s", MX_Q4_BYTES, (long long)k, a.rank,
                    dims_text(&w, wd, sizeof wd), dims_text(&d, dd, sizeof dd));
    }
    const int64_t n = w.dims[0], m = leading_rows(&a);
    float *y;
    if ((st = product_output(c, &a, m, k, n, &y)) || !y) return st;
    int8_t *qa = malloc((size_t)(m * s * MX_Q4_SUPER));
    float *da = malloc(sizeof(float) * (size_t)(m * s));
    int16_t *bs = malloc(sizeof(int16_t) * (size_t)(m * s * MX_Q4_SUBS));
    const int64_t packed_bytes = mx_q4_packed_bytes(m, s); /* a multiple of 64 */
    void *packed = packed_bytes ? aligned_alloc(64, (size_t)packed_bytes) : NULL;
    if (qa && da && bs && (packed || !packed_bytes)) {
        /* ~16 tasks of 16-row multiples: each a sequential read of its weight rows */
        Q4Product q = {a.data, k, qa, da, bs, packed, m, s, n, clamp64(round_up((n + 15) / 16, 16), 16, 1 << 20),
                       w.data, d.data, y};
        parallel_for(c, quantize_task, (size_t)((m + QUANTIZE_ROWS - 1) / QUANTIZE_ROWS), &q);
        parallel_for(c, linear_q4_task, (size_t)((n + q.chunk - 1) / q.chunk), &q);
    } else {
        st = fail(c.api, "ai.mxport.LinearQ4: out of memory");
    }
    free(qa); free(da); free(bs); free(packed);
    return st;
}
