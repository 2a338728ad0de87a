/* One row of A against MXFP4 weights in integers (AVX-512 VNNI), exact to float32's own rounding: mx_avx512.c's
 * decode path (M = 1) when mx_isa() is MX_ISA_AVX512.
 *
 * Why: the float32 product decodes each 32-weight block with three shuffles (vpmovzxbd and two vpermps to a table)
 * and is bound by them, ~3.3 cycles per block at 2.6 GHz TSC on Zen 4 (docs/BENCHMARKS.md, Kernels). vpdpbusd
 * multiplies 64 bytes at once, and a 16-entry byte table (vpshufb) decodes 64 codes in one shuffle.
 *
 * Pieces: each 32-value block of A is x = 2^e (q1 + q2 / 2^7 + q3 / 2^15), 2^e >= max|x| / 127, q1 = x / 2^e
 * rounded, q2 = 2^7 times the remainder rounded, q3 = 2^8 times the next remainder rounded (and held at 127): all
 * three int8, every step exact in float32. The residual is at most 2^(e-15), below 2^-21 of the block's largest
 * |x| (max|x| >= 63.5 x 2^e): with K = 32 summands already below one float32 rounding of the sum's magnitude per
 * 8 (tests/ops/kernel_driver.c checks 1e-6 of sum |products| against a float64 product). A block whose largest
 * |x| is not finite, or below 2^-90 or above 2^90 (not zero), sends the whole call back to the float32 product.
 *
 * Weights: code c -> u = 2 E2M1(c) + 12 in [0, 24] (vpshufb), an unsigned byte for vpdpbusd; the +12 comes off as
 * 12 x the sum of the activation pieces, per int32 lane, precomputed with the pieces. Each lane sums 8 products
 * (4 low-nibble, 4 high-nibble) of one block; the lane's integer T = d1 2^15 + d2 2^8 + d3 - 12 sum(q) stays
 * below 2^31, converts to float32 once (rounding once, as a float32 product would) and is scaled by the block's
 * 2^(s-127) (the scale byte shifted into an exponent) times the pieces' 2^(e-16) (/ 2: the table is 2 x E2M1).
 * A weight row holding a scale byte 0 (2^-127, not a normal float), 253 or 254 (values past float32's range: the
 * float32 decode's inf) or 255 (NaN) is done by the float32 product.
 *
 * Layout of the pieces: per group of 4 blocks (128 values of A, 512 bytes): q1 for the low nibbles (block i's 16
 * even values at bytes 16i..16i+15, A being in mx_permute_rows' even-then-odd order), q1 for the high nibbles, the
 * same for q2 and q3, then 16 int32 corrections (12 x the lane's sum of q1 2^15 + q2 2^8 + q3) and 16 float32
 * scales 2^(e-16), four lanes per block.
 */
#include <math.h>
#include <string.h>

#include "mx_internal.h"
#include "mx_math.h"

#if defined(__x86_64__)
#include "mx_avx512.h"

#define GROUP_BYTES 512

/* 2 x E2M1 + 12 for each code (bit 3 = sign): MX_LUT2 + 12 */
static const uint8_t CODE_U8[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};

/* one 16-value half of a block: the three pieces (int8, stored at q, q + 128, q + 256) and their weighted sum
 * q1 2^15 + q2 2^8 + q3 per lane */
AVX512_INLINE __m512i split(__m512 x, __m512 inv, int8_t *q) {
    const int rne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512 v = _mm512_mul_ps(x, inv);
    const __m512 q1 = _mm512_roundscale_ps(v, rne);
    const __m512 t2 = _mm512_mul_ps(_mm512_sub_ps(v, q1), _mm512_set1_ps(128.0f));
    const __m512 q2 = _mm512_roundscale_ps(t2, rne);
    const __m512 t3 = _mm512_mul_ps(_mm512_sub_ps(t2, q2), _mm512_set1_ps(256.0f));
    const __m512 q3 = _mm512_min_ps(_mm512_roundscale_ps(t3, rne), _mm512_set1_ps(127.0f));
    const __m512i i1 = _mm512_cvtps_epi32(q1), i2 = _mm512_cvtps_epi32(q2), i3 = _mm512_cvtps_epi32(q3);
    _mm_storeu_si128((__m128i *)q, _mm512_cvtsepi32_epi8(i1));
    _mm_storeu_si128((__m128i *)(q + 128), _mm512_cvtsepi32_epi8(i2));
    _mm_storeu_si128((__m128i *)(q + 256), _mm512_cvtsepi32_epi8(i3));
    return _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(i1, 15), _mm512_slli_epi32(i2, 8)), i3);
}

AVX512 int mx_mxfp4_pieces_avx512(const float *ap, int64_t k, void *out) {
    const int64_t groups = k / MX_BLOCK / 4;
    for (int64_t g = 0; g < groups; g++) {
        uint8_t *grp = (uint8_t *)out + g * GROUP_BYTES;
        int32_t *corr = (int32_t *)(grp + 384);
        float *asc = (float *)(grp + 448);
        for (int i = 0; i < 4; i++) {
            const float *x = ap + (g * 4 + i) * MX_BLOCK;
            const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
            /* the largest |x| as integer bits: a NaN (above inf's bits) is not lost, as maxps would lose it */
            const __m512i magn = _mm512_set1_epi32(0x7fffffff);
            const uint32_t bits = (uint32_t)_mm512_reduce_max_epu32(_mm512_max_epu32(
                _mm512_and_si512(_mm512_castps_si512(lo), magn), _mm512_and_si512(_mm512_castps_si512(hi), magn)));
            float mx;
            memcpy(&mx, &bits, 4);
            int e = 0;
            if (mx != 0.0f) {
                if (!(mx >= 0x1p-90f && mx <= 0x1p90f)) return 0; /* NaN, inf, or out of the scales' range */
                frexpf(mx / 127.0f, &e);                          /* 2^e >= max|x| / 127 */
            }
            const __m512 inv = _mm512_set1_ps(ldexpf(1.0f, -e));
            const __m512i s = _mm512_add_epi32(split(lo, inv, (int8_t *)grp + 16 * i),
                                               split(hi, inv, (int8_t *)grp + 64 + 16 * i));
            /* each 128-bit chunk's 4 lanes summed (the lanes of one vpdpbusd lane), times 12 */
            __m512i t = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_CDAB));
            t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));
            t = _mm512_mullo_epi32(_mm512_maskz_compress_epi32(0x1111, t), _mm512_set1_epi32(12));
            _mm_storeu_si128((__m128i *)(corr + 4 * i), _mm512_castsi512_si128(t));
            const float sc = ldexpf(1.0f, e - 16);
            asc[4 * i] = asc[4 * i + 1] = asc[4 * i + 2] = asc[4 * i + 3] = sc;
        }
    }
    return 1;
}

/* whether any of the first n scale bytes is 0 or at least 253 */
AVX512_INLINE int odd_scales(const uint8_t *s, int64_t n) {
    for (int64_t j = 0; j < n; j += 64) {
        const __mmask64 in = n - j >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - j)) - 1);
        const __m512i v = _mm512_sub_epi8(_mm512_maskz_loadu_epi8(in, s + j), _mm512_set1_epi8(1)); /* 0 -> 255 */
        if (_mm512_mask_cmpge_epu8_mask(in, v, _mm512_set1_epi8((char)252))) return 1;
    }
    return 0;
}

/* One group (4 blocks) of weight row: its 64 code bytes v and 4 scale bytes s4 against the group's pieces q1..q3
 * (low- and high-nibble registers each), corrections and scales; acc += the group's 16 lane sums in float32 */
AVX512_INLINE __m512 group(__m512 acc, __m512i v, int32_t s4, const __m512i p[6], __m512i corr, __m512 asc) {
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)CODE_U8));
    const __m512i nibble = _mm512_set1_epi8(15), z = _mm512_setzero_si512();
    /* byte 0, 1, 2, 3 of the group's scales to the low byte of lanes 0-3, 4-7, 8-11, 12-15, the other bytes zero */
    const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i lo = _mm512_shuffle_epi8(table, _mm512_and_si512(v, nibble));
    const __m512i hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
    const __m512i d1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo, p[0]), hi, p[1]);
    const __m512i d2 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo, p[2]), hi, p[3]);
    const __m512i d3 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo, p[4]), hi, p[5]);
    const __m512i t = _mm512_sub_epi32(
        _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(d1, 15), _mm512_slli_epi32(d2, 8)), d3), corr);
    const __m512i sb = _mm512_maskz_permutexvar_epi8(0x1111111111111111ULL, spread,
                                                     _mm512_castsi128_si512(_mm_cvtsi32_si128(s4)));
    const __m512 sc = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(sb, 23)), asc);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sc, acc);
}

/* one group of a weight row: its 64 code bytes and 4 scale bytes against the group's pieces at q */
AVX512_INLINE __m512 row_group(__m512 acc, const uint8_t *b, const uint8_t *s, int64_t g, const uint8_t *q) {
    __m512i p[6];
    for (int i = 0; i < 6; i++) p[i] = _mm512_loadu_si512(q + 64 * i);
    int32_t s4;
    memcpy(&s4, s + 4 * g, 4);
    _mm_prefetch((const char *)(b + g * 64) + PF_BYTES, _MM_HINT_T1);
    return group(acc, _mm512_loadu_si512(b + g * 64), s4, p, _mm512_loadu_si512(q + 384),
                 _mm512_loadu_ps((const float *)(q + 448)));
}

AVX512 int64_t mx_mxfp4_int_rows_avx512(const void *pieces, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                                        int64_t n0, int64_t n1, float *y) {
    const int64_t nb = k / MX_BLOCK, groups = nb / 4;
    const uint8_t *pc = pieces;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *b = blocks + n * nb * MX_BLOCK_BYTES, *s = scales + n * nb;
        if (odd_scales(s, groups * 4)) return n;
        _mm_prefetch((const char *)s + PF_BYTES, _MM_HINT_T1);
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(); /* two chains: groups two at a time */
        int64_t g = 0;
        for (; g + 1 < groups; g += 2) {
            a0 = row_group(a0, b, s, g, pc + g * GROUP_BYTES);
            a1 = row_group(a1, b, s, g + 1, pc + (g + 1) * GROUP_BYTES);
        }
        if (g < groups) a0 = row_group(a0, b, s, g, pc + g * GROUP_BYTES);
        y[n] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
    return n1;
}

#endif
