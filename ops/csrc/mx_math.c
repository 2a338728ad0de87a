/* mxport's native math (contract in mx_math.h). Builds of each kernel: AVX2+FMA here and AVX-512 in mx_avx512.c
 * (target attributes, chosen at run time) and plain C. All decode weights exactly and accumulate in float32. */
#include "mx_math.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mx_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MX_X86 1
#else
#define MX_X86 0
#endif

const int8_t MX_LUT2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
float MX_SCALE2[256];
static int g_isa = -1;

static void init_tables(void) {
    for (int s = 0; s < 255; s++) MX_SCALE2[s] = ldexpf(1.0f, s - 128);
    MX_SCALE2[255] = NAN;
}

int mx_best_isa(int most) {
    int have = MX_ISA_C;
#if MX_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) have = MX_ISA_AVX2;
    if (have == MX_ISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("avx512vbmi"))
        have = MX_ISA_AVX512;
#endif
    return most < have ? (most < MX_ISA_C ? MX_ISA_C : most) : have;
}

int mx_set_isa(int most) {
    init_tables();
    g_isa = mx_best_isa(most);
    return g_isa;
}

int mx_isa(void) {
    if (g_isa < 0) mx_set_isa(MX_ISA_AVX512);
    return g_isa;
}

static const char *const ISA_NAMES[] = {"c", "avx2", "avx512"};

const char *mx_isa_name(int isa) { return isa >= MX_ISA_C && isa <= MX_ISA_AVX512 ? ISA_NAMES[isa] : "?"; }

int mx_isa_parse(const char *name) {
    for (int i = MX_ISA_C; i <= MX_ISA_AVX512; i++)
        if (strcmp(name, ISA_NAMES[i]) == 0) return i;
    return -1;
}

void mx_permute_rows(const float *a, int64_t m, int64_t k, float *ap) {
    for (int64_t r = 0; r < m; r++) {
        const float *src = a + r * k;
        float *dst = ap + r * k;
        for (int64_t j = 0; j < k; j += MX_BLOCK)
            for (int i = 0; i < MX_BLOCK / 2; i++) {
                dst[j + i] = src[j + 2 * i];
                dst[j + MX_BLOCK / 2 + i] = src[j + 2 * i + 1];
            }
    }
}

/* 64-byte aligned memory; the size rounded up to a multiple of 64, as aligned_alloc requires. */
void *mx_alloc64(size_t bytes) { return aligned_alloc(64, (bytes + 63) & ~(size_t)63); }

/* ---- plain C --------------------------------------------------------------------------------------------------- */
/* One block of 32 decoded into the permuted order (low nibbles, then high nibbles), value x 2^(s-127). */
static void decode_block_c(const uint8_t *b, uint8_t s, float *out) {
    const float sc = MX_SCALE2[s];
    for (int i = 0; i < MX_BLOCK_BYTES; i++) {
        out[i] = (float)MX_LUT2[b[i] & 15] * sc;
        out[MX_BLOCK_BYTES + i] = (float)MX_LUT2[b[i] >> 4] * sc;
    }
}

void mx_mxfp4_rows_c(const float *ap, int64_t m, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                         int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int64_t nb = k / MX_BLOCK;
    float w[MX_BLOCK];
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t r = 0; r < m; r++) y[r * ldy + n] = 0.0f;
        for (int64_t j = 0; j < nb; j++) {
            decode_block_c(blocks + (n * nb + j) * MX_BLOCK_BYTES, scales[n * nb + j], w);
            for (int64_t r = 0; r < m; r++) {
                const float *a = ap + r * k + j * MX_BLOCK;
                float t = 0.0f;
                for (int i = 0; i < MX_BLOCK; i++) t += w[i] * a[i];
                y[r * ldy + n] += t;
            }
        }
    }
}

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void mx_linear_bf16_c(const float *a, int64_t m, int64_t k, const uint16_t *w, int64_t n0, int64_t n1, float *y,
                          int64_t ldy) {
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = n0; c < n1; c++) {
            const uint16_t *wr = w + c * k;
            float s = 0.0f;
            for (int64_t i = 0; i < k; i++) s += a[r * k + i] * bf16_to_f32(wr[i]);
            y[r * ldy + c] = s;
        }
}

float *mx_pack_alloc(int64_t m, int64_t k) { return mx_alloc64(sizeof(float) * (size_t)((m + 15) / 16 * 16 * k)); }

void mx_pack_t(const float *a, int64_t m, int64_t k, int64_t g0, int64_t g1, float *at) {
    for (int64_t g = g0; g < g1; g++) /* A^T, 16 rows per group, zero-padded */
        for (int64_t i = 0; i < k; i++)
            for (int j = 0; j < 16; j++) at[(g * k + i) * 16 + j] = g * 16 + j < m ? a[(g * 16 + j) * k + i] : 0.0f;
}

/* ---- AVX2 + FMA ------------------------------------------------------------------------------------------------ */
#if MX_X86
#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

AVX2_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 bfloat16 -> 8 float32 (exact: the bf16 bits are the float32 high half). */
AVX2_INLINE __m256 bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* 16 packed bytes -> 2 x E2M1 as float32: w[0..1] = low nibbles (elements 0,2,..,30), w[2..3] = high (1,3,..,31). */
AVX2_INLINE void decode_codes(const uint8_t *p, __m256 w[4]) {
    const __m128i lut = _mm_loadu_si128((const __m128i *)MX_LUT2);
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    const __m128i ql = _mm_shuffle_epi8(lut, _mm_and_si128(v, mask));
    const __m128i qh = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(v, 4), mask));
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(ql));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(ql, 8)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qh));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(qh, 8)));
}

/* Few rows (M <= 4): each weight row is decoded block by block in registers and used by every row of A. */
AVX2_INLINE void mxfp4_direct(const float *ap, const int m, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                              int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int64_t nb = k / MX_BLOCK;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *b = blocks + n * nb * MX_BLOCK_BYTES;
        const uint8_t *s = scales + n * nb;
        __m256 acc0[4], acc1[4];
        for (int r = 0; r < m; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 1 < nb; j += 2) {  /* two blocks: two independent accumulator chains */
            __m256 w[4], v[4];
            decode_codes(b + j * MX_BLOCK_BYTES, w);
            decode_codes(b + (j + 1) * MX_BLOCK_BYTES, v);
            const __m256 s0 = _mm256_broadcast_ss(&MX_SCALE2[s[j]]);
            const __m256 s1 = _mm256_broadcast_ss(&MX_SCALE2[s[j + 1]]);
            for (int r = 0; r < m; r++) {
                const float *a = ap + r * k + j * MX_BLOCK;
                __m256 t = _mm256_mul_ps(w[0], _mm256_loadu_ps(a));
                t = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(a + 8), t);
                t = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(a + 16), t);
                t = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(a + 24), t);
                acc0[r] = _mm256_fmadd_ps(t, s0, acc0[r]);
                __m256 u = _mm256_mul_ps(v[0], _mm256_loadu_ps(a + 32));
                u = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(a + 40), u);
                u = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(a + 48), u);
                u = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(a + 56), u);
                acc1[r] = _mm256_fmadd_ps(u, s1, acc1[r]);
            }
        }
        if (j < nb) {
            __m256 w[4];
            decode_codes(b + j * MX_BLOCK_BYTES, w);
            const __m256 s0 = _mm256_broadcast_ss(&MX_SCALE2[s[j]]);
            for (int r = 0; r < m; r++) {
                const float *a = ap + r * k + j * MX_BLOCK;
                __m256 t = _mm256_mul_ps(w[0], _mm256_loadu_ps(a));
                t = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(a + 8), t);
                t = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(a + 16), t);
                t = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(a + 24), t);
                acc0[r] = _mm256_fmadd_ps(t, s0, acc0[r]);
            }
        }
        for (int r = 0; r < m; r++) y[r * ldy + n] = hsum8(_mm256_add_ps(acc0[r], acc1[r]));
    }
}

#define PANEL_K 256 /* k values per inner pass of the outer-product kernels */

/* Many rows (M > 4): A is packed transposed in groups of 16 rows ([K, 16], zero-padded), 6 weight rows at a time
 * are decoded whole to float32 (K values each, in the order of A's columns: permuted for MXFP4), then 6 x 16
 * outer-product tiles (12 accumulators: per k two loads of A, six broadcast weights, twelve FMAs) run over all of K. */
AVX2_INLINE void outer_tile(const float *at, const float *wd, int64_t ldw, int64_t kc, const int nr, const int wide,
                            float out[6][16]) {
    __m256 acc[6][2];
    for (int r = 0; r < nr; r++) {
        acc[r][0] = _mm256_load_ps(out[r]);
        acc[r][1] = _mm256_load_ps(out[r] + 8);
    }
    for (int64_t i = 0; i < kc; i++) {
        const __m256 a0 = _mm256_load_ps(at + 16 * i);
        const __m256 a1 = wide ? _mm256_load_ps(at + 16 * i + 8) : a0;
        for (int r = 0; r < nr; r++) {
            const __m256 wv = _mm256_broadcast_ss(wd + r * ldw + i);
            acc[r][0] = _mm256_fmadd_ps(wv, a0, acc[r][0]);
            if (wide) acc[r][1] = _mm256_fmadd_ps(wv, a1, acc[r][1]);
        }
    }
    for (int r = 0; r < nr; r++) {
        _mm256_store_ps(out[r], acc[r][0]);
        _mm256_store_ps(out[r] + 8, acc[r][1]);
    }
}

/* Weight rows [n0, n1) decoded to float32, K values each, in the order of A's columns. */
typedef struct {
    const uint8_t *blocks, *scales;
} MxWeights;

typedef void (*RowDecoder)(const void *src, int64_t row, int64_t k, float *out);

AVX2 static void mxfp4_decode_row(const void *src, int64_t row, int64_t k, float *out) {
    const MxWeights *w = src;
    const int64_t nb = k / MX_BLOCK;
    for (int64_t j = 0; j < nb; j++) {
        const int64_t blk = row * nb + j;
        __m256 v[4];
        decode_codes(w->blocks + blk * MX_BLOCK_BYTES, v);
        const __m256 sc = _mm256_broadcast_ss(&MX_SCALE2[w->scales[blk]]);
        for (int q = 0; q < 4; q++) _mm256_storeu_ps(out + j * MX_BLOCK + 8 * q, _mm256_mul_ps(v[q], sc));
    }
}

AVX2 static void bf16_decode_row(const void *src, int64_t row, int64_t k, float *out) {
    const uint16_t *w = (const uint16_t *)src + row * k;
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) _mm256_storeu_ps(out + i, bf16x8(w + i));
    for (; i < k; i++) out[i] = bf16_to_f32(w[i]);
}

/* Y[m, n] = sum_k A[m, k] Wd[n, k] for n in [n0, n1), Wd the decoded weight rows, A given as mx_pack_t's A^T.
 * Returns 0 when out of memory. */
AVX2 static int packed_outer(const float *at, int64_t m, int64_t k, RowDecoder decode, const void *src, int64_t n0,
                             int64_t n1, float *y, int64_t ldy) {
    const int64_t groups = (m + 15) / 16;
    float *wd = mx_alloc64(sizeof(float) * (size_t)(6 * k + 8));
    float *outs = mx_alloc64(sizeof(float) * (size_t)(groups * 6 * 16));
    if (!wd || !outs) {
        free(wd);
        free(outs);
        return 0;
    }
    for (int64_t nt = n0; nt < n1; nt += 6) {
        const int nr = (int)(n1 - nt < 6 ? n1 - nt : 6);
        for (int r = 0; r < nr; r++) decode(src, nt + r, k, wd + r * k);
        memset(outs, 0, sizeof(float) * (size_t)(groups * 6 * 16));
        for (int64_t k0 = 0; k0 < k; k0 += PANEL_K) { /* a 16 KB slice of A^T and 6 KB of weights stay in L1 */
            const int64_t kc = k - k0 < PANEL_K ? k - k0 : PANEL_K;
            for (int64_t g = 0; g < groups; g++) {
                const int wide = m - g * 16 > 8;
                const float *atg = at + (g * k + k0) * 16, *wk = wd + k0;
                float(*out)[16] = (float(*)[16])(outs + g * 6 * 16);
                switch (nr * 2 + wide) {
                    case 13: outer_tile(atg, wk, k, kc, 6, 1, out); break;
                    case 12: outer_tile(atg, wk, k, kc, 6, 0, out); break;
                    case 11: outer_tile(atg, wk, k, kc, 5, 1, out); break;
                    case 10: outer_tile(atg, wk, k, kc, 5, 0, out); break;
                    case 9: outer_tile(atg, wk, k, kc, 4, 1, out); break;
                    case 8: outer_tile(atg, wk, k, kc, 4, 0, out); break;
                    case 7: outer_tile(atg, wk, k, kc, 3, 1, out); break;
                    case 6: outer_tile(atg, wk, k, kc, 3, 0, out); break;
                    case 5: outer_tile(atg, wk, k, kc, 2, 1, out); break;
                    case 4: outer_tile(atg, wk, k, kc, 2, 0, out); break;
                    case 3: outer_tile(atg, wk, k, kc, 1, 1, out); break;
                    default: outer_tile(atg, wk, k, kc, 1, 0, out); break;
                }
            }
        }
        for (int64_t g = 0; g < groups; g++) {
            const int64_t rows = m - g * 16 < 16 ? m - g * 16 : 16;
            const float *out = outs + g * 6 * 16;
            for (int64_t j = 0; j < rows; j++)
                for (int r = 0; r < nr; r++) y[(g * 16 + j) * ldy + nt + r] = out[r * 16 + j];
        }
    }
    free(wd);
    free(outs);
    return 1;
}

/* packed_outer on A as given: A^T packed here (a caller that splits N over threads packs once: mx_pack_t). */
AVX2 static int rows_outer(const float *ap, int64_t m, int64_t k, RowDecoder decode, const void *src, int64_t n0,
                           int64_t n1, float *y, int64_t ldy) {
    float *at = mx_pack_alloc(m, k);
    if (!at) return 0;
    mx_pack_t(ap, m, k, 0, (m + 15) / 16, at);
    const int done = packed_outer(at, m, k, decode, src, n0, n1, y, ldy);
    free(at);
    return done;
}

/* One row of A, W [N, K]: each weight row read front to back and dotted with A (which stays in L1), so the rows
 * [n0, n1) are one sequential stream (measured: 25-26 GB/s on one core here, against 12-21 GB/s reading 2-8
 * weight rows side by side, with or without software prefetch). Four accumulators 8 apart. */
AVX2_INLINE void linear_row(const float *a, int64_t k, const uint16_t *w, int64_t n0, int64_t n1, float *y) {
    const int64_t k32 = k - k % 32;
    for (int64_t c = n0; c < n1; c++) {
        const uint16_t *wc = w + c * k;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int64_t i = 0; i < k32; i += 32) {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), bf16x8(wc + i), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), bf16x8(wc + i + 8), s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), bf16x8(wc + i + 16), s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), bf16x8(wc + i + 24), s3);
        }
        float t = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        for (int64_t i = k32; i < k; i++) t += a[i] * bf16_to_f32(wc[i]);
        y[c] = t;
    }
}

#define LINEAR_L2_BYTES (256 << 10) /* weight rows re-read from L2 by rows 2-4 of A */

AVX2 static void linear_bf16_avx2(const float *a, const float *at, int64_t m, int64_t k, const uint16_t *w,
                                  int64_t n0, int64_t n1, float *y, int64_t ldy) {
    if (m > 4) {
        if (!packed_outer(at, m, k, bf16_decode_row, w, n0, n1, y, ldy)) mx_linear_bf16_c(a, m, k, w, n0, n1, y, ldy);
        return;
    }
    /* Few rows (decode): a block of weight rows streamed from memory for row 0 of A, then read from L2 for the
     * others (measured, M = 2 / 4: 14 / 8.6 GB/s, against 10 / 6.7 with all rows of A in one pass) */
    int64_t block = LINEAR_L2_BYTES / (2 * (k > 0 ? k : 1));
    block = block < 8 ? 8 : block;
    for (int64_t c = n0; c < n1; c += block) {
        const int64_t c1 = c + block < n1 ? c + block : n1;
        for (int64_t r = 0; r < m; r++) linear_row(a + r * k, k, w, c, c1, y + r * ldy);
    }
}

AVX2 static void mxfp4_rows_avx2(const float *ap, int64_t m, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                                 int64_t n0, int64_t n1, float *y, int64_t ldy) {
    switch (m) {
        case 1: mxfp4_direct(ap, 1, k, blocks, scales, n0, n1, y, ldy); return;
        case 2: mxfp4_direct(ap, 2, k, blocks, scales, n0, n1, y, ldy); return;
        case 3: mxfp4_direct(ap, 3, k, blocks, scales, n0, n1, y, ldy); return;
        case 4: mxfp4_direct(ap, 4, k, blocks, scales, n0, n1, y, ldy); return;
        default: {
            const MxWeights w = {blocks, scales};
            if (!rows_outer(ap, m, k, mxfp4_decode_row, &w, n0, n1, y, ldy))
                mx_mxfp4_rows_c(ap, m, k, blocks, scales, n0, n1, y, ldy);
            return;
        }
    }
}

#endif

/* ---- dispatch -------------------------------------------------------------------------------------------------- */
void mx_mxfp4_rows(const float *ap, int64_t m, int64_t k, const uint8_t *blocks, const uint8_t *scales, int64_t n0,
                   int64_t n1, float *y, int64_t ldy) {
    switch (mx_isa()) {
#if MX_X86
        case MX_ISA_AVX512: mx_mxfp4_rows_avx512(ap, m, k, blocks, scales, n0, n1, y, ldy); return;
        case MX_ISA_AVX2: mxfp4_rows_avx2(ap, m, k, blocks, scales, n0, n1, y, ldy); return;
#endif
        default: mx_mxfp4_rows_c(ap, m, k, blocks, scales, n0, n1, y, ldy);
    }
}

size_t mx_mxfp4_pieces_bytes(int64_t k) {
#if MX_X86
    if (mx_isa() == MX_ISA_AVX512) return MX_PIECES_BYTES(k);
#endif
    (void)k;
    return 0;
}

int mx_mxfp4_pieces(const float *ap, int64_t k, void *pieces) {
#if MX_X86
    if (mx_isa() == MX_ISA_AVX512 && k >= 128) return mx_mxfp4_pieces_avx512(ap, k, pieces);
#endif
    (void)ap, (void)k, (void)pieces;
    return 0;
}

void mx_mxfp4_row(const float *ap, const void *pieces, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                  int64_t n0, int64_t n1, float *y) {
#if MX_X86
    if (mx_isa() == MX_ISA_AVX512) {
        mx_mxfp4_row_avx512(ap, pieces, k, blocks, scales, n0, n1, y);
        return;
    }
#endif
    (void)pieces;
    mx_mxfp4_rows(ap, 1, k, blocks, scales, n0, n1, y, 0);
}

void mx_linear_bf16(const float *a, const float *at, int64_t m, int64_t k, const uint16_t *w, int64_t n0, int64_t n1,
                    float *y, int64_t ldy) {
    switch (mx_isa()) {
#if MX_X86
        case MX_ISA_AVX512: mx_linear_bf16_avx512(a, at, m, k, w, n0, n1, y, ldy); return;
        case MX_ISA_AVX2: linear_bf16_avx2(a, at, m, k, w, n0, n1, y, ldy); return;
#endif
        default: mx_linear_bf16_c(a, m, k, w, n0, n1, y, ldy);
    }
}

void mx_swiglu(const float *h, const float *bias, int64_t n, int interleaved, float limit, float alpha, float beta,
               float *out) {
    int64_t j = 0;
#if defined(__x86_64__)
    if (mx_isa() == MX_ISA_AVX512) j = mx_swiglu_avx512(h, bias, n, interleaved, limit, alpha, beta, out);
#endif
    for (; j < n; j++) {
        const int64_t gi = interleaved ? 2 * j : j, ui = interleaved ? 2 * j + 1 : n + j;
        float gate = bias ? h[gi] + bias[gi] : h[gi], up = bias ? h[ui] + bias[ui] : h[ui];
        if (limit > 0.0f) {
            gate = fminf(gate, limit);
            up = fmaxf(fminf(up, limit), -limit);
        }
        out[j] = gate * (1.0f / (1.0f + expf(-alpha * gate))) * (up + beta);
    }
}
