/* ai.mxport.GroupQueryAttention: com.microsoft.GroupQueryAttention's CPU contract, float32, for the inputs mxport's
 * lowering gives it (ops/group_query_attention.py has the schema and the NumPy kernel): every row's seqlens_k is
 * total_sequence_length - 1 (padding goes through attention_bias), the new tokens sit in slots [T - S, T), the
 * rotary tables are cos/sin rows picked by position_ids. present ([B, Hkv, max(P, T), D]) is past with the new
 * rows written over slots [T - S, T): in place when the caller binds one buffer as both (ORT's shared past/present
 * buffer), else into a copy.
 *
 * Work: each (batch row, KV head) reads its keys and values once for all the query heads that share them
 * (mx_attention.c), so a decode step streams the cache once; rows of a long prompt are split into blocks of
 * ROW_BLOCK over ORT's intra-op pool, after the new keys and values are written. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mx_attention.h"
#include "ort_kernel.h"

#define ROW_BLOCK 16 /* query rows per task of a prompt */
#define NAME "ai.mxport.GroupQueryAttention"

typedef struct {
    int64_t b, s, t, p, present, d, hq, hkv, g, half, window, bias_b, bias_h, blocks;
    float scale;
    int shared;
    const float *q, *k, *v, *past_k, *past_v, *cos, *sin, *bias, *sink;
    const int64_t *pos;
    float *out, *pk, *pv;
} Gqa;

/* x [d] rotated by row `pos` of the tables (the rotate-half form: pairs (i, i + d/2)), or copied */
static void rotate(const Gqa *a, const float *x, int64_t pos, float *y) {
    if (!a->cos) {
        memcpy(y, x, sizeof(float) * (size_t)a->d);
        return;
    }
    const float *c = a->cos + pos * a->half, *s = a->sin + pos * a->half;
    for (int64_t i = 0; i < a->half; i++) {
        const float x1 = x[i], x2 = x[i + a->half];
        y[i] = x1 * c[i] - x2 * s[i];
        y[i + a->half] = x2 * c[i] + x1 * s[i];
    }
}

/* the table row of token s of batch row b (0 without rotary: rotate() then copies) */
static int64_t position(const Gqa *a, int64_t b, int64_t s) { return a->pos ? a->pos[b * a->s + s] : 0; }

/* present rows of (batch row, KV head) u: the past's P rows when not shared (present has max(P, T) rows, and
 * P >= T - S), then the new rows written over slots [T - S, T) */
static void write_new(const Gqa *a, int64_t u) {
    const int64_t b = u / a->hkv, h = u % a->hkv, d = a->d, first = a->t - a->s;
    float *pk = a->pk + u * a->present * d, *pv = a->pv + u * a->present * d;
    if (!a->shared && a->p) {
        memcpy(pk, a->past_k + u * a->p * d, sizeof(float) * (size_t)(a->p * d));
        memcpy(pv, a->past_v + u * a->p * d, sizeof(float) * (size_t)(a->p * d));
    }
    for (int64_t s = 0; s < a->s; s++) {
        const int64_t in = (b * a->s + s) * a->hkv * d + h * d;
        rotate(a, a->k + in, position(a, b, s), pk + (first + s) * d);
        memcpy(pv + (first + s) * d, a->v + in, sizeof(float) * (size_t)d);
    }
}

/* query rows [s0, s1) of (batch row, KV head) u, all g heads of the group */
static void attend(const Gqa *a, int64_t u, int64_t s0, int64_t s1, float *qbuf, float *sc, float *acc) {
    const int64_t b = u / a->hkv, h = u % a->hkv, d = a->d, g = a->g;
    const float *pk = a->pk + u * a->present * d, *pv = a->pv + u * a->present * d;
    for (int64_t s = s0; s < s1; s++) {
        const int64_t i = a->t - a->s + s, j0 = a->window > 0 && i - a->window + 1 > 0 ? i - a->window + 1 : 0,
                      n = i - j0 + 1, pos = position(a, b, s);
        const float *q = a->q + (b * a->s + s) * a->hq * d + h * g * d;
        for (int64_t e = 0; e < g; e++) rotate(a, q + e * d, pos, qbuf + e * d);
        mx_attn_dots(qbuf, g, d, pk + j0 * d, d, n, sc, n);
        for (int64_t e = 0; e < g; e++) {
            const int64_t head = h * g + e;
            const float *bias = a->bias ? a->bias + (((a->bias_b > 1 ? b : 0) * a->bias_h + (a->bias_h > 1 ? head : 0))
                                                     * a->s + s) * a->t + j0 : NULL;
            mx_attn_softmax(sc + e * n, n, a->scale, bias, a->sink ? a->sink + head : NULL);
        }
        memset(acc, 0, sizeof(float) * (size_t)(g * d));
        mx_attn_accumulate(sc, n, g, pv + j0 * d, d, n, d, acc);
        for (int64_t e = 0; e < g; e++)
            memcpy(a->out + (b * a->s + s) * a->hq * d + (h * g + e) * d, acc + e * d, sizeof(float) * (size_t)d);
    }
}

typedef struct {
    const Gqa *a;
    int fused; /* one task per (batch row, KV head): write its new rows, then attend */
    int failed;
} Tasks;

static void write_task(void *p, size_t i) { write_new(((Tasks *)p)->a, (int64_t)i); }

static void attend_task(void *p, size_t i) {
    Tasks *t = p;
    const Gqa *a = t->a;
    const int64_t u = (int64_t)i / a->blocks, s0 = (int64_t)i % a->blocks * ROW_BLOCK,
                  s1 = s0 + ROW_BLOCK < a->s ? s0 + ROW_BLOCK : a->s;
    float *buf = malloc(sizeof(float) * (size_t)(2 * a->g * a->d + a->g * a->t));
    if (!buf) {
        t->failed = 1;
        return;
    }
    if (t->fused) write_new(a, u);
    attend(a, u, s0, s1, buf, buf + 2 * a->g * a->d, buf + a->g * a->d);
    free(buf);
}

typedef struct {
    const OrtApi *api;
    int64_t hq, hkv, window, rotary;
    float scale;
} GqaKernel;

OrtStatus *gqa_create(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
    (void)op;
    int found = 0;
    GqaKernel kn = {api, attr_int(api, info, "num_heads", 0, &found), attr_int(api, info, "kv_num_heads", 0, NULL),
                    attr_int(api, info, "local_window_size", -1, NULL), attr_int(api, info, "do_rotary", 0, NULL),
                    attr_float(api, info, "scale", 0.0f)};
    if (!found || kn.hq <= 0 || kn.hkv <= 0 || kn.hq % kn.hkv)
        return fail(api, NAME ": num_heads=%lld and kv_num_heads=%lld must be positive, kv_num_heads dividing "
                         "num_heads", (long long)kn.hq, (long long)kn.hkv);
    GqaKernel *k = malloc(sizeof *k);
    if (!k) return fail(api, NAME ": out of memory");
    *k = kn;
    *out = k;
    return NULL;
}

/* input `index` and *given = 1 when the node has it, else *given = 0 and t->data = NULL (an empty tensor that is
 * given may have NULL data too) */
static OrtStatus *optional(Call c, size_t count, size_t index, Tensor *t, int *given) {
    t->data = NULL;
    t->rank = 0;
    t->size = 0;
    *given = 0;
    const OrtValue *v = NULL;
    if (index >= count) return NULL;
    OrtStatus *st = ORT_CALL(c.api, KernelContext_GetInput)(c.ctx, index, &v);
    if (st || !v) return st;
    *given = 1;
    return input(c, index, t);
}

OrtStatus *gqa_compute(void *kernel, OrtKernelContext *ctx) {
    const GqaKernel *kn = kernel;
    Call c = {kn->api, ctx};
    size_t count = 0;
    OrtStatus *st = ORT_CALL(c.api, KernelContext_GetInputCount)(ctx, &count);
    Tensor in[13];
    int given[13];
    for (size_t i = 0; !st && i < 13; i++) st = optional(c, count, i, &in[i], &given[i]);
    if (st) return st;
    const Tensor *q = &in[0], *k = &in[1], *v = &in[2], *pk = &in[3], *pv = &in[4], *seqlens = &in[5], *total = &in[6],
                 *cos = &in[7], *sin = &in[8], *pos = &in[9], *bias = &in[10], *sink = &in[11], *qlens = &in[12];
    for (int i = 0; i < 7; i++)
        if (!given[i]) return fail(c.api, NAME ": input %d (query, key, value, past_key, past_value, seqlens_k, "
                                            "total_sequence_length) is missing", i);
    if (q->rank != 3 || k->rank != 3 || v->rank != 3 || pk->rank != 4 || pv->rank != 4)
        return fail(c.api, NAME ": expected query/key/value [B, S, H*D] and past_key/past_value [B, Hkv, P, D]");
    const int64_t B = q->dims[0], S = q->dims[1], D = pk->dims[3], P = pk->dims[2], hq = kn->hq, hkv = kn->hkv;
    const int64_t T = total->size == 1 ? *(const int32_t *)total->data : -1;
    if (q->dims[2] != hq * D || k->dims[0] != B || k->dims[1] != S || k->dims[2] != hkv * D ||
        v->dims[0] != B || v->dims[1] != S || v->dims[2] != hkv * D || pk->dims[0] != B || pk->dims[1] != hkv ||
        memcmp(pv->dims, pk->dims, sizeof(int64_t) * 4) || D <= 0 || D % 2)
        return fail(c.api, NAME ": shapes disagree: query [%lld, %lld, %lld], key [.., %lld], value [.., %lld], "
                           "past_key [%lld, %lld, %lld, %lld] with num_heads=%lld, kv_num_heads=%lld",
                    (long long)B, (long long)S, (long long)q->dims[2], (long long)k->dims[2], (long long)v->dims[2],
                    (long long)pk->dims[0], (long long)pk->dims[1], (long long)P, (long long)D, (long long)hq,
                    (long long)hkv);
    if (T < S || P < T - S)
        return fail(c.api, NAME ": total_sequence_length=%lld must be at least S=%lld and at most past length "
                           "P=%lld + S", (long long)T, (long long)S, (long long)P);
    for (int64_t b = 0; b < B; b++) {
        if (seqlens->size != B || ((const int32_t *)seqlens->data)[b] != T - 1)
            return fail(c.api, NAME ": seqlens_k must be total_sequence_length - 1 = %lld for each of the %lld rows "
                               "(padding goes through attention_bias)", (long long)(T - 1), (long long)B);
        if (!given[12] || qlens->size != B || ((const int32_t *)qlens->data)[b] != S)
            return fail(c.api, NAME ": query_seqlens must be given, S = %lld for each row (without it ORT's kernel "
                               "reads a first prompt otherwise)", (long long)S);
    }
    const int64_t half = D / 2, rows = given[7] && cos->rank == 2 ? cos->dims[0] : 0;
    if (kn->rotary && (!given[7] || !given[8] || !given[9] || cos->rank != 2 || cos->dims[1] != half ||
                       sin->rank != 2 || sin->dims[0] != rows || sin->dims[1] != half || pos->size != B * S))
        return fail(c.api, NAME ": do_rotary=1 needs cos_cache and sin_cache [rows, D/2 = %lld] and position_ids "
                           "[B, S]", (long long)half);
    if (kn->rotary)
        for (int64_t i = 0; i < B * S; i++) {
            const int64_t *p = pos->data;
            if (p[i] < 0 || p[i] >= rows)
                return fail(c.api, NAME ": position_ids value %lld is outside the %lld rows of cos_cache",
                            (long long)p[i], (long long)rows);
            if (i && p[i] != p[i - 1] + 1) /* mxport's b*S + s; ORT's kernel does not read every one */
                return fail(c.api, NAME ": position_ids must count up by one over [B, S] in row-major order "
                                   "(%lld after %lld)", (long long)p[i], (long long)p[i - 1]);
        }
    if (given[10] && (bias->rank != 4 || (bias->dims[0] != 1 && bias->dims[0] != B) ||
                       (bias->dims[1] != 1 && bias->dims[1] != hq) || bias->dims[2] != S || bias->dims[3] != T))
        return fail(c.api, NAME ": attention_bias must be [B or 1, num_heads or 1, S, total_sequence_length]");
    if (given[11] && sink->size != hq)
        return fail(c.api, NAME ": head_sink must have num_heads = %lld values", (long long)hq);

    const int64_t present = P > T ? P : T, odims[3] = {B, S, hq * D}, pdims[4] = {B, hkv, present, D};
    float *out, *pko, *pvo;
    if ((st = output(c, 0, odims, 3, &out)) || (st = output(c, 1, pdims, 4, &pko)) ||
        (st = output(c, 2, pdims, 4, &pvo)))
        return st;
    const int shared = pko == pk->data && pvo == pv->data;
    if (!shared && (pko == pk->data || pvo == pv->data))
        return fail(c.api, NAME ": past_key and past_value must both share their present buffer, or neither");
    if (B == 0 || S == 0) return NULL;
    Gqa a = {B, S, T, P, present, D, hq, hkv, hq / hkv, half, kn->window,
             bias->data ? bias->dims[0] : 1, bias->data ? bias->dims[1] : 1, (S + ROW_BLOCK - 1) / ROW_BLOCK,
             kn->scale != 0.0f ? kn->scale : 1.0f / sqrtf((float)D), shared,
             q->data, k->data, v->data, pk->data, pv->data, kn->rotary ? cos->data : NULL,
             kn->rotary ? sin->data : NULL, bias->data, sink->data, kn->rotary ? pos->data : NULL, out, pko, pvo};
    Tasks t = {&a, a.blocks == 1, 0};
    if (!t.fused) parallel_for(c, write_task, (size_t)(B * hkv), &t);
    parallel_for(c, attend_task, (size_t)(B * hkv * a.blocks), &t);
    return t.failed ? fail(c.api, NAME ": out of memory") : NULL;
}
