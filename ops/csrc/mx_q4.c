/* LinearQ4's native product: 4-bit weights in super-blocks of 256 times int8 activations (ops/linear_q4.py has the
 * format and a NumPy kernel computing the same numbers).
 *
 * A row of W is S super-blocks of 136 bytes: 8 uint8 sub-scales, then 4 chunks of 32 bytes whose low nibbles are
 * sub-block 2c and high nibbles sub-block 2c + 1 (q in 0..15, value D·sc·(q − 8)). A row of A is quantized per
 * super-block to int8 (scale max|a|/127, round half to even) with the sum of each sub-block's int8 values.
 *
 * Per super-block the kernel sums in int32: maddubs(q, a) gives int16 pairs (|x| <= 2·15·127), madd by the
 * broadcast sub-scale gives int32, and the zero point is 8 · Σ_j sc[j] · sum_a[j] (one madd over the 8 sub-blocks);
 * one float conversion and FMA per 256 weights. Decode reads each weight row once, front to back; prompt rows go
 * four at a time through a block of weight rows that stays in L2. This file holds the AVX2 and plain C builds; the
 * AVX-512 one (VNNI, the same integer sums) is in mx_avx512.c.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mx_internal.h"
#include "mx_math.h"

#define Q4_SUPER MX_Q4_SUPER
#define Q4_SUBS MX_Q4_SUBS

void mx_q4_activations(const float *a, int64_t m, int64_t k, int64_t s, int8_t *qa, float *da, int16_t *bs) {
    if (mx_isa() == MX_ISA_AVX512) { /* the same numbers, 16 at a time */
        mx_q4_activations_avx512(a, m, k, s, qa, da, bs);
        return;
    }
    for (int64_t r = 0; r < m; r++) {
        const float *x = a + r * k;
        for (int64_t b = 0; b < s; b++) {
            const int64_t c0 = b * Q4_SUPER, c1 = c0 + Q4_SUPER < k ? c0 + Q4_SUPER : k;
            float amax = 0.0f;
            int nan = 0;
            for (int64_t c = c0; c < c1; c++) {
                amax = fmaxf(amax, fabsf(x[c]));
                nan |= isnan(x[c]);
            }
            /* a NaN or inf makes the super-block's scale NaN or inf, so the product is NaN or inf as in float32
             * math (the non-finite values themselves quantize to 0) */
            const float d = nan ? NAN : amax / 127.0f, inv = d > 0.0f && isfinite(d) ? 1.0f / d : 0.0f;
            int8_t *q = qa + (r * s + b) * Q4_SUPER;
            for (int j = 0; j < Q4_SUBS; j++) {
                int sum = 0;
                for (int i = 0; i < Q4_SUPER / Q4_SUBS; i++) {
                    const int64_t c = c0 + j * (Q4_SUPER / Q4_SUBS) + i;
                    const float v = c < c1 && isfinite(x[c]) ? x[c] * inv : 0.0f;
                    const int iv = (int)nearbyintf(v); /* round half to even: the default rounding mode */
                    q[j * (Q4_SUPER / Q4_SUBS) + i] = (int8_t)iv;
                    sum += iv;
                }
                bs[(r * s + b) * Q4_SUBS + j] = (int16_t)sum;
            }
            da[r * s + b] = d;
        }
    }
}

static float dot_c(const uint8_t *w, const float *d, const int8_t *qa, const float *da, int64_t s) {
    float acc = 0.0f;
    for (int64_t b = 0; b < s; b++) {
        const uint8_t *p = w + b * MX_Q4_BYTES;
        const int8_t *x = qa + b * Q4_SUPER;
        int32_t sum = 0;
        for (int c = 0; c < 4; c++) {
            /* sum (q - 8) x as sum q x - 8 sum x: GCC 12.2 with -mavx512vnni (-march=native here) miscompiled the
             * (q - 8) x form (kernel_driver check: wrong sums for every shape) */
            int32_t lo = 0, hi = 0, xlo = 0, xhi = 0;
            for (int i = 0; i < 32; i++) {
                const uint8_t v = p[Q4_SUBS + 32 * c + i];
                lo += (v & 15) * x[64 * c + i];
                hi += (v >> 4) * x[64 * c + 32 + i];
                xlo += x[64 * c + i];
                xhi += x[64 * c + 32 + i];
            }
            sum += p[2 * c] * (lo - 8 * xlo) + p[2 * c + 1] * (hi - 8 * xhi);
        }
        acc += (d[b] * da[b]) * (float)sum;
    }
    return acc;
}

__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static float dot_avx2(const uint8_t *w, const float *d, const int8_t *qa,
                                                         const float *da, const int16_t *bs, int64_t s) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    /* vpshufb masks broadcasting int16 lane j of the sub-scales */
    const __m256i b0 = _mm256_set1_epi16(0x0100), b1 = _mm256_set1_epi16(0x0302), b2 = _mm256_set1_epi16(0x0504),
                  b3 = _mm256_set1_epi16(0x0706), b4 = _mm256_set1_epi16(0x0908), b5 = _mm256_set1_epi16(0x0B0A),
                  b6 = _mm256_set1_epi16(0x0D0C), b7 = _mm256_set1_epi16(0x0F0E);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < s; b++) {
        const uint8_t *p = w + b * MX_Q4_BYTES;
        const int8_t *x = qa + b * Q4_SUPER;
        const __m128i s16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p));
        const __m128i zero_point = _mm_madd_epi16(s16, _mm_loadu_si128((const __m128i *)(bs + b * Q4_SUBS)));
        const __m256i sc = _mm256_broadcastsi128_si256(s16);
#define Q4_CHUNK(C, BL, BH)                                                                                         \
        {                                                                                                          \
            const __m256i v = _mm256_loadu_si256((const __m256i *)(p + Q4_SUBS + 32 * (C)));                       \
            const __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(v, m4),                                      \
                                                    _mm256_loadu_si256((const __m256i *)(x + 64 * (C))));          \
            const __m256i hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),                 \
                                                    _mm256_loadu_si256((const __m256i *)(x + 64 * (C) + 32)));     \
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_madd_epi16(lo, _mm256_shuffle_epi8(sc, BL)),        \
                                                         _mm256_madd_epi16(hi, _mm256_shuffle_epi8(sc, BH))));      \
        }
        __m256i sum = _mm256_setzero_si256();
        Q4_CHUNK(0, b0, b1) Q4_CHUNK(1, b2, b3) Q4_CHUNK(2, b4, b5) Q4_CHUNK(3, b6, b7)
#undef Q4_CHUNK
        sum = _mm256_sub_epi32(sum, _mm256_zextsi128_si256(_mm_slli_epi32(zero_point, 3)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d[b] * da[b]), acc);
    }
    return hsum8(acc);
}

/* Four rows of A (row stride s super-blocks) against one weight row: each weight super-block is unpacked once and
 * its sub-scales broadcast once for the four (prompt rows: ~1.25x the single-row product). */
__attribute__((target("avx2,fma"))) static void dot4_avx2(const uint8_t *w, const float *d, const int8_t *qa,
                                                         const float *da, const int16_t *bs, int64_t s, float *out) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const int64_t sq = s * Q4_SUPER, sb = s * Q4_SUBS;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t b = 0; b < s; b++) {
        const uint8_t *p = w + b * MX_Q4_BYTES;
        const __m128i s16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p));
        const __m256i sc = _mm256_broadcastsi128_si256(s16);
        __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
        for (int c = 0; c < 4; c++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(p + Q4_SUBS + 32 * c));
            const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            const __m256i bl = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(((4 * c + 1) << 8) | (4 * c))));
            const __m256i bh = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(((4 * c + 3) << 8) | (4 * c + 2))));
            const int8_t *x = qa + b * Q4_SUPER + 64 * c;
#define Q4_ROW(R, S)                                                                                               \
            S = _mm256_add_epi32(                                                                                  \
                S, _mm256_add_epi32(                                                                               \
                       _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(x + (R) * sq))), bl), \
                       _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(x + (R) * sq + 32))), \
                                         bh)));
            Q4_ROW(0, s0) Q4_ROW(1, s1) Q4_ROW(2, s2) Q4_ROW(3, s3)
#undef Q4_ROW
        }
#define Q4_FINISH(R, S, A)                                                                                          \
        {                                                                                                          \
            const __m128i zp = _mm_madd_epi16(s16, _mm_loadu_si128((const __m128i *)(bs + (R) * sb + b * Q4_SUBS))); \
            S = _mm256_sub_epi32(S, _mm256_zextsi128_si256(_mm_slli_epi32(zp, 3)));                                \
            A = _mm256_fmadd_ps(_mm256_cvtepi32_ps(S), _mm256_set1_ps(d[b] * da[(R) * s + b]), A);                   \
        }
        Q4_FINISH(0, s0, acc0) Q4_FINISH(1, s1, acc1) Q4_FINISH(2, s2, acc2) Q4_FINISH(3, s3, acc3)
#undef Q4_FINISH
    }
    out[0] = hsum8(acc0);
    out[1] = hsum8(acc1);
    out[2] = hsum8(acc2);
    out[3] = hsum8(acc3);
}

int64_t mx_q4_packed_bytes(int64_t m, int64_t s) { return mx_isa() == MX_ISA_AVX512 ? m * s * MX_Q4P_BYTES : 0; }

/* Register k (0-3) of a super-block's weights holds, in int32 lane i = 4j + l (j, l = 0..3), four codes of sub-block
 * 2j + (l & 1): elements 32 (2j + (l & 1)) + 16 (k & 1) + 4 (l ^ (k >> 1)) + t, t = 0..3 (mx_avx512.c builds it from
 * the stored chunks; odd lanes carry 16 x the code). A row of A is copied into the same order, so one vpdpbusd per
 * register sums a row against 64 weights with every lane in one sub-block; the zero point, -8 x the sub-block's
 * sum (-128 x in odd lanes), sits in the first lane of each sub-block. */
void mx_q4_pack(const int8_t *qa, const int16_t *bs, int64_t s, int64_t r0, int64_t r1, void *packed) {
    for (int64_t r = r0; r < r1; r++)
        for (int64_t b = 0; b < s; b++) {
            const int8_t *x = qa + (r * s + b) * Q4_SUPER;
            uint8_t *out = (uint8_t *)packed + (r * s + b) * MX_Q4P_BYTES;
            for (int k = 0; k < 4; k++)
                for (int i = 0; i < 16; i++) {
                    const int j = i / 4, l = i % 4;
                    memcpy(out + 64 * k + 4 * i, x + 32 * (2 * j + (l & 1)) + 16 * (k & 1) + 4 * (l ^ (k >> 1)), 4);
                }
            int32_t zp[16] = {0};
            for (int j = 0; j < Q4_SUBS; j++)
                zp[4 * (j / 2) + j % 2] = (j % 2 ? -128 : -8) * bs[(r * s + b) * Q4_SUBS + j];
            memcpy(out + Q4_SUPER, zp, sizeof zp);
        }
}

void mx_linear_q4(const int8_t *qa, const float *da, const int16_t *bs, const void *packed, int64_t m, int64_t s,
                  const uint8_t *w, const float *d, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int isa = mx_isa();
    if (isa == MX_ISA_AVX512 && packed) {
        mx_linear_q4_avx512(packed, da, m, s, w, d, n0, n1, y, ldy);
        return;
    }
    const int avx2 = isa >= MX_ISA_AVX2; /* AVX-512 without a packed copy: the AVX2 kernels read qa as it is */
    const int64_t row_bytes = s * MX_Q4_BYTES;
    /* more than one row of A: a block of weight rows (~256 KB) is read from memory once and from L2 for the rest */
    const int64_t block = m == 1 ? n1 - n0 : (256 << 10) / row_bytes + 1;
    for (int64_t c0 = n0; c0 < n1; c0 += block) {
        const int64_t c1 = c0 + block < n1 ? c0 + block : n1;
        int64_t r = 0;
        for (; avx2 && r + 4 <= m; r += 4)
            for (int64_t n = c0; n < c1; n++) {
                float out[4];
                dot4_avx2(w + n * row_bytes, d + n * s, qa + r * s * Q4_SUPER, da + r * s, bs + r * s * Q4_SUBS, s, out);
                for (int i = 0; i < 4; i++) y[(r + i) * ldy + n] = out[i];
            }
        for (; r < m; r++) {
            const int8_t *x = qa + r * s * Q4_SUPER;
            const float *dx = da + r * s;
            const int16_t *sx = bs + r * s * Q4_SUBS;
            for (int64_t n = c0; n < c1; n++)
                y[r * ldy + n] = avx2 ? dot_avx2(w + n * row_bytes, d + n * s, x, dx, sx, s)
                                      : dot_c(w + n * row_bytes, d + n * s, x, dx, s);
        }
    }
}
