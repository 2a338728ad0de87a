/* mxport's native math: MXFP4 and bf16 weight products in float32 (no ONNX Runtime types here).
 *
 *   mx_permute_rows   A [M, K] -> Ap [M, K]: inside each block of 32, the even elements first, then the odd
 *                     ones (the order of an MXFP4 block's low and high nibbles), so weights decode without shuffles
 *   mx_mxfp4_rows     Y[m, n] = sum_k Ap[m, k] W[n, k] for n in [n0, n1); W MXFP4 out-major (blocks [N, K/32, 16],
 *                     scales [N, K/32]); M <= 4: decoded in registers, else a decoded tile and a blocked product
 *                     (AVX-512: up to 15 rows, and a remainder of up to 8 after full 16-row groups, in direct
 *                     chunks of up to 8 rows decoded in registers)
 *   mx_mxfp4_pieces_bytes  bytes of one row of Ap split for the integer MXFP4 product (AVX-512 with K >= 128),
 *                     0 when the ISA in use has none
 *   mx_mxfp4_pieces   one row of Ap -> its pieces (three int8 per value, mx_mxfp4_int.c); 0 when a block of it
 *                     cannot be split (a NaN or inf, |x| outside 2^-90..2^90): then pass NULL below
 *   mx_mxfp4_row      mx_mxfp4_rows with M = 1 from the row's pieces (computed here when NULL)
 *   mx_linear_bf16    Y[m, n] = sum_k A[m, k] W[n, k] for n in [n0, n1); W bfloat16 [N, K] (out-major, a Linear
 *                     layer's layout); M <= 4: weight rows streamed front to back, one row of A at a time (rows 2-4
 *                     re-read from L2), else decoded rows and the blocked product of the MXFP4 kernel on At,
 *                     A packed by mx_pack_t (M > 4 only; may be NULL otherwise)
 *   mx_pack_t         At = A^T in groups of 16 rows ([K, 16] each, zero-padded), groups [g0, g1) of ceil(M/16)
 *   mx_pack_alloc     memory for At (aligned for the kernels' loads; free() it), NULL when out of memory
 *   mx_q4_activations A [M, K] -> int8 qa [M, S, 256] (zero-padded), scales da [M, S], sub-block sums bs [M, S, 8]
 *   mx_q4_packed_bytes bytes of qa packed for the ISA in use (AVX-512: mx_q4_pack's layout), 0 when it needs none
 *   mx_q4_pack        rows [r0, r1) of qa and bs into that layout (packed: 64-byte aligned, mx_q4_packed_bytes)
 *   mx_swiglu         out[j] = g * sigmoid(alpha * g) * (u + beta) for j < n, gate and up of h (+ bias, may be NULL)
 *                     at 2j and 2j + 1 (interleaved) or j and n + j; with limit > 0, g = min(g, limit) and
 *                     u = clamp(u, -limit, limit) first (a NaN gate becomes the limit, as fminf does). AVX-512: a
 *                     polynomial exp (outputs within 1e-6 relative of float64, the expf loop's NaN and inf), else expf
 *   mx_linear_q4      Y[m, n] = sum_k qa[m, k] W[n, k] for n in [n0, n1); W LinearQ4 super-blocks [N, S, 136]
 *                     with D [N, S] (mx_q4.c; int8 activations, exact integer sums per sub-block); `packed` is
 *                     mx_q4_pack's copy of qa where mx_q4_packed_bytes > 0, else NULL (then qa is read)
 *
 * Every product is float32 arithmetic on exactly decoded weights (E2M1 x 2^(s-127) and bf16 are exact in float32):
 * results differ from a float32 reference only by summation order; except one row of A against MXFP4 on AVX-512, summed
 * in integers from A's pieces, whose residual is at most 2^-21 of each 32-value block's largest |x| (mx_mxfp4_int.c).
 * Three builds of each kernel, chosen at run time by the CPU's features (mx_set_isa): AVX-512 (F, BW, VL, VNNI, VBMI:
 * mx_avx512.c, mx_mxfp4_int.c, mx_swiglu.c), AVX2+FMA and plain C. The vector builds are compiled with per-function
 * target attributes, so the library loads on any x86-64.
 */
#ifndef MXPORT_MX_MATH_H
#define MXPORT_MX_MATH_H

#include <stddef.h>
#include <stdint.h>

#define MX_BLOCK 32
#define MX_BLOCK_BYTES 16
#define MX_Q4_SUPER 256 /* LinearQ4: values per super-block */
#define MX_Q4_SUBS 8    /* LinearQ4: sub-blocks (of 32 values, one uint8 scale each) per super-block */
#define MX_Q4_BYTES 136 /* LinearQ4: bytes per super-block (8 sub-scales, 128 nibble bytes) */

#define MX_ISA_C 0
#define MX_ISA_AVX2 1   /* AVX2 + FMA */
#define MX_ISA_AVX512 2 /* AVX-512 F, BW, VL, VNNI, VBMI */

int mx_best_isa(int most);     /* the best ISA <= most that this CPU runs */
int mx_set_isa(int most);      /* use mx_best_isa(most); returns it */
int mx_isa(void);              /* the ISA in use (the best one until mx_set_isa is called) */
const char *mx_isa_name(int isa); /* "avx512", "avx2", "c" */
int mx_isa_parse(const char *name); /* the inverse of mx_isa_name; -1 for another name */

void mx_permute_rows(const float *a, int64_t m, int64_t k, float *ap);
void mx_mxfp4_rows(const float *ap, int64_t m, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                   int64_t n0, int64_t n1, float *y, int64_t ldy);
size_t mx_mxfp4_pieces_bytes(int64_t k);
int mx_mxfp4_pieces(const float *ap, int64_t k, void *pieces);
void mx_mxfp4_row(const float *ap, const void *pieces, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                  int64_t n0, int64_t n1, float *y);
float *mx_pack_alloc(int64_t m, int64_t k);
void mx_pack_t(const float *a, int64_t m, int64_t k, int64_t g0, int64_t g1, float *at);
void mx_linear_bf16(const float *a, const float *at, int64_t m, int64_t k, const uint16_t *w, int64_t n0, int64_t n1,
                    float *y, int64_t ldy);
void mx_swiglu(const float *h, const float *bias, int64_t n, int interleaved, float limit, float alpha, float beta,
               float *out);
void mx_q4_activations(const float *a, int64_t m, int64_t k, int64_t s, int8_t *qa, float *da, int16_t *bs);
int64_t mx_q4_packed_bytes(int64_t m, int64_t s);
void mx_q4_pack(const int8_t *qa, const int16_t *bs, int64_t s, int64_t r0, int64_t r1, void *packed);
void mx_linear_q4(const int8_t *qa, const float *da, const int16_t *bs, const void *packed, int64_t m, int64_t s,
                  const uint8_t *w, const float *d, int64_t n0, int64_t n1, float *y, int64_t ldy);

#endif
