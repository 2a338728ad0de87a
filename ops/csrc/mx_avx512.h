/* What mxport's AVX-512 kernel files share (mx_avx512.c, mx_mxfp4_int.c, mx_swiglu.c, mx_attention.c): the target
 * attributes, so each function is compiled for AVX-512 while the library still loads on AVX2-only and plain x86-64
 * CPUs, the decode loops' prefetch distance, a loop tail's mask and a polynomial e^x. x86-64 only. */
#ifndef MXPORT_MX_AVX512_H
#define MXPORT_MX_AVX512_H

#include <immintrin.h>

#define TARGET "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma"
#define AVX512 __attribute__((target(TARGET)))
#define AVX512_INLINE __attribute__((target(TARGET), always_inline)) static inline

/* Decode reads each weight once, front to back, row after row. The hardware prefetchers stop at every 4 KB page,
 * and a one-row product stalled on its weight loads (perf: most samples on the instruction after the load), so the
 * decode loops ask for the bytes 8 KB ahead into L2 (past a row's end: the next row follows it in memory; a
 * prefetch never faults). Measured on mini's exact mode, 2 threads: decode 96-99 -> 108-124 tok/s; 1 KB and 2 KB
 * ahead into L1 gave 107-122, 16 KB into L2 118-125 (docs/BENCHMARKS.md, Kernels). */
#define PF_BYTES 8192
#define PREFETCH(p) _mm_prefetch((const char *)(p) + PF_BYTES, _MM_HINT_T1)

/* lanes [0, left) of 16: all for left >= 16, none for left <= 0 (a loop's tail) */
AVX512_INLINE __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
}

/* e^x: x = n ln2 + r (ln2 in two parts, |r| <= ln2 / 2), e^r by Cephes' degree-7 expf polynomial, then scalef
 * (x 2^n: overflow to inf, underflow through the subnormals to 0 as expf). x is clamped to [-104, 89] first (beyond,
 * expf is 0 or inf anyway) with the bound as the first operand of min/max, so a NaN passes through. */
AVX512_INLINE __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

#endif
