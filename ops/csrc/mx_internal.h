/* What mxport's kernel files share inside the library (not part of the mx_math.h contract): the MXFP4 tables,
 * the plain C kernels the vector builds fall back on when out of memory, and the AVX-512 builds (mx_avx512.c). */
#ifndef MXPORT_MX_INTERNAL_H
#define MXPORT_MX_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* 2 x E2M1 value of each code (bit 3 = sign), and 2^(s-128) for each E8M0 byte (NaN for 0xFF): code x scale byte
 * -> (2 x value) x 2^(s-128) = value x 2^(s-127), exact in float32 (the OCP MX v1.0 meaning; ops/mxfp4.py). */
extern const int8_t MX_LUT2[16];
extern float MX_SCALE2[256];

void *mx_alloc64(size_t bytes); /* 64-byte aligned (free() it), NULL when out of memory */

void mx_mxfp4_rows_c(const float *ap, int64_t m, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                     int64_t n0, int64_t n1, float *y, int64_t ldy);
void mx_linear_bf16_c(const float *a, int64_t m, int64_t k, const uint16_t *w, int64_t n0, int64_t n1, float *y,
                      int64_t ldy);

/* AVX-512 builds (mx_avx512.c, mx_swiglu.c): the mx_math.h contract of the same-named kernel; only called when
 * mx_isa() is MX_ISA_AVX512 */
void mx_mxfp4_rows_avx512(const float *ap, int64_t m, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                          int64_t n0, int64_t n1, float *y, int64_t ldy);
int64_t mx_swiglu_avx512(const float *h, const float *bias, int64_t n, int interleaved, float limit, float alpha,
                         float beta, float *out); /* returns the outputs done, n - n % 16 */
void mx_linear_bf16_avx512(const float *a, const float *at, int64_t m, int64_t k, const uint16_t *w, int64_t n0,
                           int64_t n1, float *y, int64_t ldy);
/* One row of A against MXFP4 weights in integers (mx_mxfp4_int.c): the pieces of mx_mxfp4_pieces (per group of 4
 * blocks), weight rows [n0, returned) done over the first 4 floor(K / 128) blocks (y[n] = the product over them); a
 * returned row below n1 holds a scale byte 0 or >= 253 (the float32 product's). mx_mxfp4_row_avx512: the whole row
 * (tail and those rows in float32; pieces NULL: computed there, or all float32 when A cannot be split). */
#define MX_PIECES_BYTES(k) ((size_t)((k) / 128) * 512)
int mx_mxfp4_pieces_avx512(const float *ap, int64_t k, void *out);
int64_t mx_mxfp4_int_rows_avx512(const void *pieces, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                                 int64_t n0, int64_t n1, float *y);
void mx_mxfp4_row_avx512(const float *ap, const void *pieces, int64_t k, const uint8_t *blocks,
                         const uint8_t *scales, int64_t n0, int64_t n1, float *y);
/* LinearQ4 on AVX-512: a packed super-block of a row of A is its 256 int8 values in the weights' register order
 * (mx_q4_pack) and 16 int32 lanes holding -8 x the 8 sub-block sums (the zero point), then 8 zero lanes */
#define MX_Q4P_BYTES 320
void mx_q4_activations_avx512(const float *a, int64_t m, int64_t k, int64_t s, int8_t *qa, float *da, int16_t *bs);
void mx_linear_q4_avx512(const uint8_t *packed, const float *da, int64_t m, int64_t s, const uint8_t *w,
                         const float *d, int64_t n0, int64_t n1, float *y, int64_t ldy);

#endif
