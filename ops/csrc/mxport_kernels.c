/* libmxport_kernels: ONNX Runtime CPU kernels for the ai.mxport ops MoEMXFP4, MatMulMXFP4, LinearBF16, LinearQ4 and
 * GroupQueryAttention.
 *
 * A standard ORT custom-op library: RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*) adds the domain
 * ai.mxport (version 1) to a session's options (Python: SessionOptions.register_custom_ops_library(path)).
 * The semantics are those of the NumPy kernels in ops/moe.py, ops/moe_2.py, ops/matmul_mxfp4.py, ops/linear_bf16.py,
 * ops/linear_q4.py, ops/group_query_attention.py; the math is in mx_math.c, mx_q4.c and mx_attention.c, LinearQ4's
 * op in linear_q4_op.c, GroupQueryAttention's in gqa_op.c, the C API helpers in ort_kernel.c. Work is split over
 * ORT's intra-op thread pool (KernelContext_ParallelFor).
 *
 * Environment: MXPORT_KERNELS_ISA=avx512|avx2|c at registration time caps the kernels' instruction set (tests,
 * comparisons); unset, the best one this CPU runs. Another value fails the registration, naming the variable.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_math.h"
#include "ort_abi.h"
#include "ort_kernel.h"

#define EXPORT __attribute__((visibility("default")))

static const char *const DOMAIN = "ai.mxport";

/* ---- MXFP4 and bf16 products split over output rows of W ------------------------------------------------------- */
typedef struct {
    const float *a;  /* [m, k]: permuted (MXFP4) or as given (bf16) */
    const float *at; /* bf16, m > 4: A^T packed in 16-row groups (mx_pack_t), else NULL */
    int64_t m, k, n, chunk;
    const uint8_t *blocks, *scales; /* MXFP4 */
    const uint16_t *w;              /* bf16 [n, k] */
    float *y;
} Product;

static void mxfp4_task(void *p, size_t i) {
    const Product *q = p;
    const int64_t n0 = (int64_t)i * q->chunk, n1 = n0 + q->chunk < q->n ? n0 + q->chunk : q->n;
    mx_mxfp4_rows(q->a, q->m, q->k, q->blocks, q->scales, n0, n1, q->y, q->n);
}

/* Output rows per task: a multiple of 16 (the decoded tile), at most ~64 tasks. */
static int64_t mxfp4_chunk(int64_t n) { return clamp64(round_up((n + 63) / 64, 16), 16, 1 << 20); }

/* ---- MatMulMXFP4(A [..., K], blocks [N, K/32, 16], scales [N, K/32]) -> [..., N] ------------------------------ */
static OrtStatus *matmul_mxfp4_compute(void *kernel, OrtKernelContext *ctx) {
    Call c = {((PlainKernel *)kernel)->api, ctx};
    Tensor a, b, s;
    OrtStatus *st;
    if ((st = input(c, 0, &a)) || (st = input(c, 1, &b)) || (st = input(c, 2, &s))) return st;
    if (a.rank < 1 || b.rank != 3 || b.dims[2] != MX_BLOCK_BYTES || s.rank != 2 || s.dims[0] != b.dims[0] ||
        s.dims[1] != b.dims[1] || a.dims[a.rank - 1] != b.dims[1] * MX_BLOCK)
        return fail(c.api, "ai.mxport.MatMulMXFP4: expected A[..., K], blocks[N, K/32, 16], scales[N, K/32]; "
                           "found A rank %zu (last %lld), blocks rank %zu, scales rank %zu",
                    a.rank, (long long)a.dims[a.rank ? a.rank - 1 : 0], b.rank, s.rank);
    const int64_t k = a.dims[a.rank - 1], n = b.dims[0], m = leading_rows(&a);
    float *y;
    if ((st = product_output(c, &a, m, k, n, &y)) || !y) return st;
    float *ap = malloc(sizeof(float) * (size_t)(m * k));
    if (!ap) return fail(c.api, "ai.mxport.MatMulMXFP4: out of memory");
    mx_permute_rows(a.data, m, k, ap);
    Product q = {ap, NULL, m, k, n, mxfp4_chunk(n), b.data, s.data, NULL, y};
    parallel_for(c, mxfp4_task, (size_t)((n + q.chunk - 1) / q.chunk), &q);
    free(ap);
    return NULL;
}

/* ---- LinearBF16(A [..., K], W bfloat16 [N, K]) -> [..., N] ---------------------------------------------------- */
static void linear_bf16_task(void *p, size_t i) {
    const Product *q = p;
    const int64_t n0 = (int64_t)i * q->chunk, n1 = n0 + q->chunk < q->n ? n0 + q->chunk : q->n;
    mx_linear_bf16(q->a, q->at, q->m, q->k, q->w, n0, n1, q->y, q->n);
}

static void pack_task(void *p, size_t i) {
    const Product *q = p;
    mx_pack_t(q->a, q->m, q->k, (int64_t)i, (int64_t)i + 1, (float *)q->at);
}

static OrtStatus *linear_bf16_compute(void *kernel, OrtKernelContext *ctx) {
    Call c = {((PlainKernel *)kernel)->api, ctx};
    Tensor a, w;
    OrtStatus *st;
    if ((st = input(c, 0, &a)) || (st = input(c, 1, &w))) return st;
    if (a.rank < 1 || w.rank != 2 || a.dims[a.rank - 1] != w.dims[1])
        return fail(c.api, "ai.mxport.LinearBF16: expected A[..., K] and W[N, K]; found A rank %zu (last %lld), W rank "
                           "%zu (last %lld)", a.rank, (long long)a.dims[a.rank ? a.rank - 1 : 0], w.rank,
                    (long long)w.dims[w.rank ? w.rank - 1 : 0]);
    const int64_t n = w.dims[0], k = w.dims[1], m = leading_rows(&a);
    float *y;
    if ((st = product_output(c, &a, m, k, n, &y)) || !y) return st;
    /* output rows split over ~16 tasks (decode: each a sequential read of its weight rows), 16-row multiples;
     * prompt rows (m > 4): A^T packed once, shared by the tasks */
    Product q = {a.data, NULL, m, k, n, clamp64(round_up((n + 15) / 16, 16), 16, 1 << 20), NULL, NULL, w.data, y};
    float *at = NULL;
    if (m > 4) {
        at = mx_pack_alloc(m, k);
        if (!at) return fail(c.api, "ai.mxport.LinearBF16: out of memory");
        q.at = at;
        parallel_for(c, pack_task, (size_t)((m + 15) / 16), &q);
    }
    parallel_for(c, linear_bf16_task, (size_t)((n + q.chunk - 1) / q.chunk), &q);
    free(at);
    return NULL;
}

/* ---- MoEMXFP4 ---------------------------------------------------------------------------------------------------- */
typedef struct {
    const OrtApi *api;
    int64_t k, normalize, interleaved;
    float limit, alpha, beta;
    int has_bias; /* MoEMXFP4 (b1, b2 inputs) or MoEMXFP4_2 (no biases) */
} MoEKernel;

typedef struct { /* one task: output rows [n0, n1) of one used expert's fc1 or fc2 */
    int64_t u, n0, n1;
} Piece;

typedef struct {
    int64_t H, I, nb1, nb2, T;
    const uint8_t *w1b, *w1s, *w2b, *w2s;
    const float *b1, *b2;
    const MoEKernel *kern;
    int64_t *expert, *start, *count; /* per used expert u: expert id, first row in the gathered rows, rows */
    Piece *pieces;
    float *xp;  /* [R, H] gathered tokens, permuted (R = sum of counts) */
    float *h1;  /* [R, 2I] */
    float *act; /* [R, I] permuted */
    float *out; /* [R, H] */
    /* an expert with one row (decode): its row of xp and of act split once for the integer MXFP4 product
     * (mx_mxfp4_pieces; NULL where the ISA has none), at pcs + u * (pb1 + pb2) and + pb1, ok1/ok2[u]: usable */
    uint8_t *pcs;
    size_t pb1, pb2;
    signed char *ok1, *ok2;
} MoEWork;

/* where used expert u's pieces for fc1 (second = 0) or fc2 go */
static uint8_t *expert_pieces(const MoEWork *w, int64_t u, int second) {
    return w->pcs + (size_t)u * (w->pb1 + w->pb2) + (second ? w->pb1 : 0);
}

/* fc1 or fc2 of used expert u: from its pieces when it has one row and they are there */
static void moe_product(const MoEWork *w, int64_t u, int second, const float *a, int64_t k, const uint8_t *blocks,
                        const uint8_t *scales, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    if (w->pcs && w->count[u] == 1) {
        mx_mxfp4_row(a, (second ? w->ok2 : w->ok1)[u] ? expert_pieces(w, u, second) : NULL, k, blocks, scales, n0, n1,
                     y);
    } else {
        mx_mxfp4_rows(a, w->count[u], k, blocks, scales, n0, n1, y, ldy);
    }
}

static void moe_fc1_task(void *p, size_t i) {
    const MoEWork *w = p;
    const Piece pc = w->pieces[i];
    const int64_t e = w->expert[pc.u], r0 = w->start[pc.u];
    const int64_t rows = 2 * w->I;
    moe_product(w, pc.u, 0, w->xp + r0 * w->H, w->H, w->w1b + e * rows * w->nb1 * MX_BLOCK_BYTES,
                w->w1s + e * rows * w->nb1, pc.n0, pc.n1, w->h1 + r0 * rows, rows);
}

static void moe_fc2_task(void *p, size_t i) {
    const MoEWork *w = p;
    const Piece pc = w->pieces[i];
    const int64_t e = w->expert[pc.u], r0 = w->start[pc.u];
    moe_product(w, pc.u, 1, w->act + r0 * w->I, w->I, w->w2b + e * w->H * w->nb2 * MX_BLOCK_BYTES,
                w->w2s + e * w->H * w->nb2, pc.n0, pc.n1, w->out + r0 * w->H, w->H);
}

/* SwiGLU of gathered rows [16 i, 16 i + 16): bias, clamp, gate * sigmoid(alpha * gate) * (up + beta), permuted. */
static void moe_act_task(void *p, size_t i) {
    const MoEWork *w = p;
    const MoEKernel *kn = w->kern;
    int64_t total = 0;
    for (int64_t u = 0; w->count[u] >= 0; u++) total += w->count[u];
    const int64_t r0 = (int64_t)i * 16, r1 = r0 + 16 < total ? r0 + 16 : total;
    float *tmp = malloc(sizeof(float) * (size_t)w->I);
    int64_t u = 0;
    for (int64_t r = r0; r < r1; r++) {
        while (r >= w->start[u] + w->count[u]) u++;
        const float *h = w->h1 + r * 2 * w->I, *bias = w->b1 ? w->b1 + w->expert[u] * 2 * w->I : NULL;
        mx_swiglu(h, bias, w->I, (int)kn->interleaved, kn->limit, kn->alpha, kn->beta, tmp);
        mx_permute_rows(tmp, 1, w->I, w->act + r * w->I);
        if (w->pcs && w->count[u] == 1)
            w->ok2[u] = (signed char)mx_mxfp4_pieces(w->act + r * w->I, w->I, expert_pieces(w, u, 1));
    }
    free(tmp);
}

/* top-k of one row: largest first, ties to the lower index (as TopK and the NumPy kernel); weights per
 * normalize_routing_weights. */
static void route(const float *logits, int64_t E, int64_t k, int normalize, int64_t *idx, float *wt) {
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++) {
            int taken = 0;
            for (int64_t q = 0; q < j; q++) taken |= idx[q] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
        }
        idx[j] = best;
    }
    if (normalize) {
        const float mx = logits[idx[0]];
        float sum = 0.0f;
        for (int64_t j = 0; j < k; j++) sum += (wt[j] = expf(logits[idx[j]] - mx));
        for (int64_t j = 0; j < k; j++) wt[j] /= sum;
    } else {
        float mx = logits[0], sum = 0.0f;
        for (int64_t e = 1; e < E; e++) mx = logits[e] > mx ? logits[e] : mx;
        for (int64_t e = 0; e < E; e++) sum += expf(logits[e] - mx);
        for (int64_t j = 0; j < k; j++) wt[j] = expf(logits[idx[j]] - mx) / sum;
    }
}

static OrtStatus *moe_compute(void *kernel, OrtKernelContext *ctx) {
    const MoEKernel *kn = kernel;
    Call c = {kn->api, ctx};
    Tensor x, lg, w1b, w1s, b1 = {0}, w2b, w2s, b2 = {0};
    OrtStatus *st;
    const size_t o = kn->has_bias ? 1 : 0; /* input index shift after w1_scales */
    if ((st = input(c, 0, &x)) || (st = input(c, 1, &lg)) || (st = input(c, 2, &w1b)) || (st = input(c, 3, &w1s)) ||
        (kn->has_bias && (st = input(c, 4, &b1))) || (st = input(c, 4 + o, &w2b)) || (st = input(c, 5 + o, &w2s)) ||
        (kn->has_bias && (st = input(c, 7, &b2))))
        return st;
    const char *op = kn->has_bias ? "ai.mxport.MoEMXFP4" : "ai.mxport.MoEMXFP4_2";
    if (x.rank != 2 || lg.rank != 2 || lg.dims[0] != x.dims[0])
        return fail(c.api, "%s: expected x[T, H] and router_logits[T, E], found ranks %zu and %zu", op, x.rank, lg.rank);
    const int64_t T = x.dims[0], H = x.dims[1], E = lg.dims[1];
    if (w1b.rank != 4 || w2b.rank != 4 || w1b.dims[0] != E || w2b.dims[0] != E || w1b.dims[3] != MX_BLOCK_BYTES ||
        w2b.dims[3] != MX_BLOCK_BYTES || w1b.dims[2] * MX_BLOCK != H || w2b.dims[1] != H || w1b.dims[1] % 2)
        return fail(c.api, "%s: expected w1_blocks[E, 2I, H/32, 16], w2_blocks[E, H, I/32, 16] with E=%lld, H=%lld",
                    op, (long long)E, (long long)H);
    const int64_t I = w1b.dims[1] / 2;
    if (w2b.dims[2] * MX_BLOCK != I || w1s.rank != 3 || w1s.dims[0] != E || w1s.dims[1] != 2 * I ||
        w1s.dims[2] != w1b.dims[2] || w2s.rank != 3 || w2s.dims[0] != E || w2s.dims[1] != H ||
        w2s.dims[2] != w2b.dims[2] || (kn->has_bias && (b1.size != E * 2 * I || b2.size != E * H)))
        return fail(c.api, "%s: expert shapes disagree (I=%lld from w1_blocks; w2_blocks, scales and biases must "
                           "match [E, H, I/32, 16], [E, 2I, H/32], [E, H, I/32], b1[E, 2I], b2[E, H])",
                    op, (long long)I);
    if (kn->k < 1 || kn->k > E) return fail(c.api, "%s: attribute k=%lld must be in [1, E=%lld]", op, (long long)kn->k, (long long)E);
    int64_t dims[2] = {T, H};
    float *y;
    if ((st = output(c, 0, dims, 2, &y))) return st;
    memset(y, 0, sizeof(float) * (size_t)(T * H));
    if (T == 0 || H == 0) return NULL;
    const int64_t K = kn->k, R = T * K;

    /* routing, then the (token, slot) pairs grouped by expert in ascending expert order */
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)R), *cnt = calloc((size_t)E, sizeof(int64_t));
    float *wt = malloc(sizeof(float) * (size_t)R);
    int64_t *order = malloc(sizeof(int64_t) * (size_t)R), *expert = malloc(sizeof(int64_t) * (size_t)(E + 1));
    int64_t *start = malloc(sizeof(int64_t) * (size_t)(E + 1)), *count = malloc(sizeof(int64_t) * (size_t)(E + 1));
    float *xp = malloc(sizeof(float) * (size_t)(R * H)), *h1 = malloc(sizeof(float) * (size_t)(R * 2 * I));
    float *act = malloc(sizeof(float) * (size_t)(R * I)), *out = malloc(sizeof(float) * (size_t)(R * H));
    Piece *pieces = malloc(sizeof(Piece) * (size_t)(E * (2 * I + H) / 16 + 2 * E + 2));
    uint8_t *w_pcs = NULL; /* w.pcs, freed at the end */
    if (!idx || !cnt || !wt || !order || !expert || !start || !count || !xp || !h1 || !act || !out || !pieces) {
        st = fail(c.api, "%s: out of memory", op);
        goto done;
    }
    for (int64_t t = 0; t < T; t++) route((const float *)lg.data + t * E, E, K, (int)kn->normalize, idx + t * K, wt + t * K);
    for (int64_t r = 0; r < R; r++) cnt[idx[r]]++;
    int64_t U = 0;
    for (int64_t e = 0, acc = 0; e < E; e++)
        if (cnt[e]) {
            expert[U] = e;
            start[U] = acc;
            count[U] = 0;
            acc += cnt[e];
            U++;
        }
    count[U] = -1; /* end marker */
    start[U] = R;
    {
        int64_t *slot_of = cnt; /* reuse: expert id -> used index */
        for (int64_t u = 0; u < U; u++) slot_of[expert[u]] = u;
        for (int64_t r = 0; r < R; r++) { /* token-major, so each expert's rows stay in token order */
            const int64_t u = slot_of[idx[r]];
            order[start[u] + count[u]++] = r;
        }
    }
    for (int64_t q = 0; q < R; q++) mx_permute_rows((const float *)x.data + (order[q] / K) * H, 1, H, xp + q * H);

    MoEWork w = {H, I, H / MX_BLOCK, I / MX_BLOCK, T, w1b.data, w1s.data, w2b.data, w2s.data, b1.data, b2.data,
                 kn, expert, start, count, pieces, xp, h1, act, out, NULL, mx_mxfp4_pieces_bytes(H),
                 mx_mxfp4_pieces_bytes(I), NULL, NULL};
    if (w.pb1 && w.pb2) { /* else (no ISA support, K < 128, out of memory) mx_mxfp4_rows splits its own */
        w.pcs = w_pcs = malloc((size_t)U * (w.pb1 + w.pb2) + 2 * (size_t)U);
        if (w.pcs) {
            w.ok1 = (signed char *)(w.pcs + (size_t)U * (w.pb1 + w.pb2));
            w.ok2 = w.ok1 + U;
            for (int64_t u = 0; u < U; u++)
                w.ok1[u] = count[u] == 1 && (signed char)mx_mxfp4_pieces(xp + start[u] * H, H, expert_pieces(&w, u, 0));
        }
    }
    size_t np = 0;
    const int64_t c1 = mxfp4_chunk(2 * I * U), c2 = mxfp4_chunk(H * U);
    for (int64_t u = 0; u < U; u++)
        for (int64_t n0 = 0; n0 < 2 * I; n0 += c1) pieces[np++] = (Piece){u, n0, n0 + c1 < 2 * I ? n0 + c1 : 2 * I};
    parallel_for(c, moe_fc1_task, np, &w);
    parallel_for(c, moe_act_task, (size_t)((R + 15) / 16), &w);
    np = 0;
    for (int64_t u = 0; u < U; u++)
        for (int64_t n0 = 0; n0 < H; n0 += c2) pieces[np++] = (Piece){u, n0, n0 + c2 < H ? n0 + c2 : H};
    parallel_for(c, moe_fc2_task, np, &w);

    /* y[t] += weight * (out + b2), experts in ascending order (the NumPy kernel's order) */
    for (int64_t u = 0; u < U; u++) {
        const float *bias = b2.data ? (const float *)b2.data + expert[u] * H : NULL;
        for (int64_t q = start[u]; q < start[u] + count[u]; q++) {
            const int64_t r = order[q];
            float *yt = y + (r / K) * H;
            const float *ov = out + q * H, g = wt[r];
            if (bias)
                for (int64_t j = 0; j < H; j++) yt[j] += (ov[j] + bias[j]) * g;
            else
                for (int64_t j = 0; j < H; j++) yt[j] += ov[j] * g;
        }
    }
done:
    free(idx); free(cnt); free(wt); free(order); free(expert); free(start); free(count);
    free(xp); free(h1); free(act); free(out); free(pieces); free(w_pcs);
    return st;
}

/* ---- the OrtCustomOp tables ---------------------------------------------------------------------------------- */
typedef struct {
    OrtCustomOp base;
    const char *name;
    size_t n_in;
    const int *in_types;
    size_t n_out;
    size_t n_required; /* inputs [0, n_required) are required, the rest optional */
} OpDef;

static const int MOE_IN[] = {ELEM_FLOAT, ELEM_FLOAT, ELEM_UINT8, ELEM_UINT8, ELEM_FLOAT, ELEM_UINT8, ELEM_UINT8, ELEM_FLOAT};
static const int MOE2_IN[] = {ELEM_FLOAT, ELEM_FLOAT, ELEM_UINT8, ELEM_UINT8, ELEM_UINT8, ELEM_UINT8};
static const int MM_MXFP4_IN[] = {ELEM_FLOAT, ELEM_UINT8, ELEM_UINT8};
static const int LINEAR_BF16_IN[] = {ELEM_FLOAT, ELEM_BFLOAT16};
static const int LINEAR_Q4_IN[] = {ELEM_FLOAT, ELEM_UINT8, ELEM_FLOAT};
static const int GQA_IN[] = {ELEM_FLOAT, ELEM_FLOAT, ELEM_FLOAT, ELEM_FLOAT, ELEM_FLOAT, ELEM_INT32, ELEM_INT32,
                             ELEM_FLOAT, ELEM_FLOAT, ELEM_INT64, ELEM_FLOAT, ELEM_FLOAT, ELEM_INT32};

static const char *op_name(const OrtCustomOp *op) { return ((const OpDef *)op)->name; }
static const char *op_ep(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int op_in_type(const OrtCustomOp *op, size_t i) { return ((const OpDef *)op)->in_types[i]; }
static size_t op_in_count(const OrtCustomOp *op) { return ((const OpDef *)op)->n_in; }
static int op_out_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return ELEM_FLOAT; }
static size_t op_out_count(const OrtCustomOp *op) { return ((const OpDef *)op)->n_out; }
static int op_in_required(const OrtCustomOp *op, size_t i) {
    return i < ((const OpDef *)op)->n_required ? IO_REQUIRED : IO_OPTIONAL;
}
static int op_required(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return IO_REQUIRED; }
static int op_mem_default(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int op_zero(const OrtCustomOp *op) { (void)op; return 0; }
static int op_start_version(const OrtCustomOp *op) { (void)op; return 1; }
static int op_end_version(const OrtCustomOp *op) { (void)op; return 1; }
static void kernel_destroy(void *k) { free(k); }

static OrtStatus *plain_create(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    (void)op; (void)info;
    PlainKernel *k = malloc(sizeof *k);
    if (!k) return fail(api, "ai.mxport: out of memory");
    k->api = api;
    *out = k;
    return NULL;
}

static OrtStatus *moe_create(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    int has_k = 0;
    MoEKernel kn = {api, attr_int(api, info, "k", 0, &has_k), attr_int(api, info, "normalize_routing_weights", 1, NULL),
                    attr_int(api, info, "swiglu_interleaved", 0, NULL), attr_float(api, info, "swiglu_limit", 0.0f),
                    attr_float(api, info, "activation_alpha", 1.0f), attr_float(api, info, "activation_beta", 0.0f),
                    ((const OpDef *)op)->n_in == 8};
    if (!has_k) return fail(api, "ai.mxport.MoEMXFP4: attribute k is required");
    if (kn.limit < 0.0f) return fail(api, "ai.mxport.MoEMXFP4: swiglu_limit=%g must be >= 0 (0 = no clamp)", kn.limit);
    MoEKernel *k = malloc(sizeof *k);
    if (!k) return fail(api, "ai.mxport: out of memory");
    *k = kn;
    *out = k;
    return NULL;
}

#define OP_IO(NAME, INS, N_OUT, N_REQUIRED, CREATE, COMPUTE)                                                        \
    {{MXPORT_ORT_API_VERSION, NULL, op_name, op_ep, op_in_type, op_in_count, op_out_type, op_out_count, NULL,       \
      kernel_destroy, op_in_required, op_required, op_mem_default, op_zero, op_zero, op_zero, op_zero, CREATE,      \
      COMPUTE, NULL, op_start_version, op_end_version, NULL, NULL, NULL, NULL},                                     \
     NAME, sizeof(INS) / sizeof(INS[0]), INS, N_OUT, N_REQUIRED}
#define OP(NAME, INS, CREATE, COMPUTE) OP_IO(NAME, INS, 1, sizeof(INS) / sizeof(INS[0]), CREATE, COMPUTE)

static OpDef OPS[] = {
    OP("MoEMXFP4", MOE_IN, moe_create, moe_compute),
    OP("MoEMXFP4_2", MOE2_IN, moe_create, moe_compute),
    OP("MatMulMXFP4", MM_MXFP4_IN, plain_create, matmul_mxfp4_compute),
    OP("LinearBF16", LINEAR_BF16_IN, plain_create, linear_bf16_compute),
    OP("LinearQ4", LINEAR_Q4_IN, plain_create, linear_q4_compute),
    OP_IO("GroupQueryAttention", GQA_IN, 3, 3, gqa_create, gqa_compute),
};

static const char *const ISA_ENV = "MXPORT_KERNELS_ISA";

/* The ISA cap MXPORT_KERNELS_ISA asks for (unset or empty: the best), -1 for a name that is none. */
static int requested_isa(void) {
    const char *name = getenv(ISA_ENV);
    return name && *name ? mx_isa_parse(name) : MX_ISA_AVX512;
}

EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    const OrtApi *api = base->GetApi(MXPORT_ORT_API_VERSION);
    if (!api) {
        fprintf(stderr, "mxport kernels: this onnxruntime (%s) has no C API version %d\n", base->GetVersionString(),
                MXPORT_ORT_API_VERSION);
        return NULL; /* no OrtApi to build a status with: ORT then runs the model's function bodies */
    }
    const int isa = requested_isa();
    if (isa < 0) return fail(api, "MXPORT_KERNELS_ISA=%s: expected avx512, avx2 or c", getenv(ISA_ENV));
    mx_set_isa(isa);
    OrtCustomOpDomain *domain = NULL;
    OrtStatus *st = ORT_CALL(api, CreateCustomOpDomain)(DOMAIN, &domain);
    for (size_t i = 0; !st && i < sizeof OPS / sizeof OPS[0]; i++) st = ORT_CALL(api, CustomOpDomain_Add)(domain, &OPS[i].base);
    if (!st) st = ORT_CALL(api, AddCustomOpDomain)(options, domain);
    return st; /* the domain lives as long as the process: sessions keep pointers into it */
}

/* For `mxport kernels` and tests (ctypes): the ops this library provides and the ISA a registration now would use
 * (the best this CPU runs under MXPORT_KERNELS_ISA's cap; "invalid" for a bad value). Changes nothing. */
EXPORT const char *mxport_kernels_info(void) {
    static char info[256];
    char ops[128] = "";
    for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++) {
        if (i) strncat(ops, ",", sizeof ops - strlen(ops) - 1);
        strncat(ops, OPS[i].name, sizeof ops - strlen(ops) - 1);
    }
    const int isa = requested_isa();
    snprintf(info, sizeof info, "domain=%s;ops=%s;isa=%s;best=%s;ort_api=%d", DOMAIN, ops,
             isa < 0 ? "invalid" : mx_isa_name(mx_best_isa(isa)), mx_isa_name(mx_best_isa(MX_ISA_AVX512)),
             MXPORT_ORT_API_VERSION);
    return info;
}
