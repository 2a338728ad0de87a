/* What mxport's AVX-512 kernel files share (mx_avx512.c, mx_mxfp4_int.c, mx_swiglu.c): the target attributes, so
 * each function is compiled for AVX-512 while the library still loads on AVX2-only and plain x86-64 CPUs, and the
 * decode loops' prefetch distance. x86-64 only. */
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

#endif
