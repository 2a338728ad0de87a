/* Small helpers around ONNX Runtime's C API for mxport's kernels (ort_kernel.c): inputs, outputs, errors,
 * attributes and the intra-op thread pool. */
#ifndef MXPORT_ORT_KERNEL_H
#define MXPORT_ORT_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#include "ort_abi.h"

#define MAX_DIMS 8

typedef struct {
    const OrtApi *api;
    OrtKernelContext *ctx;
} Call;

typedef struct {
    const void *data;
    int64_t dims[MAX_DIMS];
    size_t rank;
    int64_t size;
} Tensor;

OrtStatus *fail(const OrtApi *api, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
OrtStatus *input(Call c, size_t index, Tensor *t);
OrtStatus *output(Call c, size_t index, const int64_t *dims, size_t rank, float **out);
/* fn(data, i) for i in [0, total) on ORT's intra-op pool (serially if the pool is not reachable). */
void parallel_for(Call c, void (*fn)(void *, size_t), size_t total, void *data);
int64_t attr_int(const OrtApi *api, const OrtKernelInfo *info, const char *name, int64_t dflt, int *found);
float attr_float(const OrtApi *api, const OrtKernelInfo *info, const char *name, float dflt);
int64_t round_up(int64_t v, int64_t m);
int64_t clamp64(int64_t v, int64_t lo, int64_t hi);
/* Rows of A [..., K]: the product of its leading dims (not size / K, which K = 0 would make 0). */
int64_t leading_rows(const Tensor *a);
/* Y [..., N] of a product of A [..., K] (m rows): allocated as output 0. *y is left NULL when nothing is left to
 * compute: no rows or columns, or K == 0 (then Y is zero-filled). */
OrtStatus *product_output(Call c, const Tensor *a, int64_t m, int64_t k, int64_t n, float **y);

/* ai.mxport.LinearQ4 (linear_q4_op.c) */
OrtStatus *linear_q4_compute(void *kernel, OrtKernelContext *ctx);
/* ai.mxport.GroupQueryAttention (gqa_op.c) */
OrtStatus *gqa_create(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out);
OrtStatus *gqa_compute(void *kernel, OrtKernelContext *ctx);

typedef struct {
    const OrtApi *api;
} PlainKernel;

#endif
