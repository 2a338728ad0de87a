/* Attention's two products for ai.mxport.GroupQueryAttention (mx_attention.c). */
#ifndef MXPORT_MX_ATTENTION_H
#define MXPORT_MX_ATTENTION_H

#include <stdint.h>

/* s[h * lds + j] = q[h * d ...] . k[j * ldk ...] for h < g, j < n */
void mx_attn_dots(const float *q, int64_t g, int64_t d, const float *k, int64_t ldk, int64_t n, float *s, int64_t lds);
/* s[0, n) = softmax(s * scale + bias[j] (bias may be NULL), and *sink as one more logit when sink is not NULL) */
void mx_attn_softmax(float *s, int64_t n, float scale, const float *bias, const float *sink);
/* out[h * d + i] += sum_j p[h * lds + j] * v[j * ldv + i] for h < g, i < d */
void mx_attn_accumulate(const float *p, int64_t lds, int64_t g, const float *v, int64_t ldv, int64_t n, int64_t d,
                        float *out);

#endif
