/* Small helpers around ONNX Runtime's C API (ort_kernel.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ort_kernel.h"

OrtStatus *fail(const OrtApi *api, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ORT_CALL(api, CreateStatus)(ORT_INVALID_ARGUMENT, msg);
}

OrtStatus *input(Call c, size_t index, Tensor *t) {
    const OrtValue *v = NULL;
    OrtStatus *st = ORT_CALL(c.api, KernelContext_GetInput)(c.ctx, index, &v);
    if (st) return st;
    if (!v) return fail(c.api, "input %zu is missing", index);
    OrtTensorTypeAndShapeInfo *info = NULL;
    if ((st = ORT_CALL(c.api, GetTensorTypeAndShape)(v, &info))) return st;
    st = ORT_CALL(c.api, GetDimensionsCount)(info, &t->rank);
    if (!st && t->rank > MAX_DIMS) st = fail(c.api, "input %zu has rank %zu > %d", index, t->rank, MAX_DIMS);
    if (!st) st = ORT_CALL(c.api, GetDimensions)(info, t->dims, t->rank);
    ORT_CALL(c.api, ReleaseTensorTypeAndShapeInfo)(info);
    if (st) return st;
    t->size = 1;
    for (size_t i = 0; i < t->rank; i++) t->size *= t->dims[i];
    void *data = NULL;
    if ((st = ORT_CALL(c.api, GetTensorMutableData)((OrtValue *)v, &data))) return st;
    t->data = data;
    return NULL;
}

OrtStatus *output(Call c, size_t index, const int64_t *dims, size_t rank, float **out) {
    OrtValue *v = NULL;
    OrtStatus *st = ORT_CALL(c.api, KernelContext_GetOutput)(c.ctx, index, dims, rank, &v);
    if (st) return st;
    void *data = NULL;
    if ((st = ORT_CALL(c.api, GetTensorMutableData)(v, &data))) return st;
    *out = data;
    return NULL;
}

/* fn(data, i) for i in [0, total) on ORT's intra-op pool (serially if the pool is not reachable). */
void parallel_for(Call c, void (*fn)(void *, size_t), size_t total, void *data) {
    if (total > 1) {
        OrtStatus *st = ORT_CALL(c.api, KernelContext_ParallelFor)(c.ctx, fn, total, 0, data);
        if (!st) return;
        ORT_CALL(c.api, ReleaseStatus)(st);
    }
    for (size_t i = 0; i < total; i++) fn(data, i);
}

int64_t attr_int(const OrtApi *api, const OrtKernelInfo *info, const char *name, int64_t dflt, int *found) {
    int64_t v = dflt;
    OrtStatus *st = ORT_CALL(api, KernelInfoGetAttribute_int64)(info, name, &v);
    if (found) *found = st == NULL;
    if (st) {
        ORT_CALL(api, ReleaseStatus)(st);
        v = dflt;
    }
    return v;
}

float attr_float(const OrtApi *api, const OrtKernelInfo *info, const char *name, float dflt) {
    float v = dflt;
    OrtStatus *st = ORT_CALL(api, KernelInfoGetAttribute_float)(info, name, &v);
    if (st) {
        ORT_CALL(api, ReleaseStatus)(st);
        v = dflt;
    }
    return v;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Rows of A [..., K]: the product of its leading dims (not size / K, which K = 0 would make 0). */
int64_t leading_rows(const Tensor *a) {
    int64_t m = 1;
    for (size_t i = 0; i + 1 < a->rank; i++) m *= a->dims[i];
    return m;
}

/* Y [..., N] of a product of A [..., K] (m rows): allocated as output 0. *y is left NULL when nothing is left to
 * compute: no rows or columns, or K == 0 (then Y is zero-filled). */
OrtStatus *product_output(Call c, const Tensor *a, int64_t m, int64_t k, int64_t n, float **y) {
    int64_t dims[MAX_DIMS];
    memcpy(dims, a->dims, sizeof(int64_t) * a->rank);
    dims[a->rank - 1] = n;
    float *out;
    OrtStatus *st = output(c, 0, dims, a->rank, &out);
    *y = NULL;
    if (st || m == 0 || n == 0) return st;
    if (k == 0) {
        memset(out, 0, sizeof(float) * (size_t)(m * n));
        return NULL;
    }
    *y = out;
    return NULL;
}

