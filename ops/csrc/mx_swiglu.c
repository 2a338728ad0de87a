/* SwiGLU on AVX-512 (mx_swiglu's vector part; the contract is mx_math.h): the MoE's activation between its two
 * products, 16 outputs an instruction with a polynomial e^x. */
#include <math.h>

#include "mx_internal.h"
#include "mx_math.h"

#if defined(__x86_64__)
#include "mx_avx512.h"

/* mx_swiglu on AVX-512: 16 outputs a step (interleaved: two loads split into gates and ups by vpermt2ps), the same
 * operations in the same order as the C loop but e^x above. Returns the outputs done (n - n % 16): mx_swiglu's C loop
 * does the rest. */
AVX512 int64_t mx_swiglu_avx512(const float *h, const float *bias, int64_t n, int interleaved, float limit,
                                float alpha, float beta, float *out) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512 lim = _mm512_set1_ps(limit), nlim = _mm512_set1_ps(-limit), na = _mm512_set1_ps(-alpha);
    const __m512 b = _mm512_set1_ps(beta), one = _mm512_set1_ps(1.0f);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 g, u;
        if (interleaved) {
            __m512 v0 = _mm512_loadu_ps(h + 2 * j), v1 = _mm512_loadu_ps(h + 2 * j + 16);
            if (bias) {
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(bias + 2 * j));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(bias + 2 * j + 16));
            }
            g = _mm512_permutex2var_ps(v0, even, v1);
            u = _mm512_permutex2var_ps(v0, odd, v1);
        } else {
            g = _mm512_loadu_ps(h + j);
            u = _mm512_loadu_ps(h + n + j);
            if (bias) {
                g = _mm512_add_ps(g, _mm512_loadu_ps(bias + j));
                u = _mm512_add_ps(u, _mm512_loadu_ps(bias + n + j));
            }
        }
        if (limit > 0.0f) {
            g = _mm512_min_ps(g, lim); /* fminf(g, limit): a NaN gate gives the limit (vminps' second operand) */
            u = _mm512_max_ps(_mm512_min_ps(u, lim), nlim);
        }
        const __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, exp_ps(_mm512_mul_ps(na, g))));
        _mm512_storeu_ps(out + j, _mm512_mul_ps(_mm512_mul_ps(g, sig), _mm512_add_ps(u, b)));
    }
    return j;
}

#endif /* x86-64: elsewhere mx_isa() is MX_ISA_C and nothing calls this */
