/* AVX-512 builds of mxport's kernels (F, BW, VL, VNNI, VBMI; the contract is mx_math.h, mx_isa() chooses them).
 * Compiled with per-function target attributes: the library still loads on AVX2-only and plain x86-64 CPUs.
 *
 * One row of A against MXFP4 (decode) runs in integers (mx_mxfp4_int.c), SwiGLU in mx_swiglu.c; the target
 * attributes are mx_avx512.h's.
 *
 * MXFP4: a block's 16 bytes widened to 16 int32 lanes (vpmovzxbd); vpermps looks each lane's low nibble (and,
 *   shifted by 4, its high nibble) up in a 16-entry table of the block's decoded values (2 x E2M1 x 2^(s-128): one
 *   multiply per block, exact), so 32 weights cost three shuffles, and two 16-lane FMAs per row of A.
 * bf16: 32 weights are one 64-byte load whose 32-bit lanes each hold a pair: the even weight is the lane shifted
 *   left by 16, the odd one the lane with its low half cleared (no shuffle); A is read in the same even-then-odd
 *   order per 32 values (mx_permute_rows' order), permuted once per call.
 * LinearQ4: two vshufi32x4 and two 32-bit qword rotations place a super-block's 128 code bytes in four registers
 *   whose int32 lane 4j + l always holds codes of sub-block 2j + (l & 1), and one 0x0F/0xF0 mask keeps the lane's
 *   nibble (odd lanes: 16 x the code); A is packed once per call into the same order (mx_q4_pack), so four
 *   vpdpbusd (u8 x s8, four products per lane) sum a row against 256 weights, starting from the zero point's lanes,
 *   and each lane is multiplied by its sub-scale in float32 once per super-block (odd lanes' 1/16 once per row).
 *   Lane sums stay below 2^20, so the conversion to float32 is exact: the integers of mx_q4.c and the NumPy
 *   kernel (times 16 in odd lanes, a power of two), summed in float32.
 * Prompt rows: MXFP4 with M > 15 (full groups; a remainder of up to 8 rows goes to the direct chunks) and bf16 with
 *   M > 4 pack A^T in 16-row groups (mx_pack_t), decode 8 weight rows to float32 once and run 8 x 32 outer-product
 *   tiles (16 accumulators, weights broadcast from L1) over K panels that stay in L1; LinearQ4 unpacks each weight
 *   super-block once for 8 (then 4) rows of A.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mx_internal.h"
#include "mx_math.h"

#if defined(__x86_64__)
#include "mx_avx512.h"

static inline float bf16_value(uint16_t v) {
    const uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---- MXFP4 ------------------------------------------------------------------------------------------------------ */
AVX512_INLINE __m512 code_table(void) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)MX_LUT2)));
}

/* One block: w[0] = the 16 low-nibble weights (elements 0, 2, .., 30), w[1] = the high ones (1, 3, .., 31). */
AVX512_INLINE void decode_block(__m512 table, const uint8_t *b, uint8_t s, __m512 w[2]) {
    const __m512 t = _mm512_mul_ps(table, _mm512_set1_ps(MX_SCALE2[s]));
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b));
    w[0] = _mm512_permutexvar_ps(c, t); /* vpermps reads bits 3:0 of each index lane: the low nibble */
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(c, 4), t);
}

/* Rows of A (m <= 8; block j of row r at ap + r * rs + j * bs) against weight rows [n0, n1), blocks [j0, j1) of each
 * (add: y += the product, else y = it):
 * each weight block decoded once in registers and used by every row. Up to 4 rows two blocks per step (four
 * accumulator chains per row), 5-8 rows one (10-16 chains): enough to hide the FMA latency either way. */
AVX512_INLINE void mxfp4_direct(const float *ap, const int m, int64_t k, int64_t rs, int64_t bs, const uint8_t *blocks,
                                const uint8_t *scales, int64_t j0, int64_t j1, const int add, int64_t n0, int64_t n1,
                                float *y, int64_t ldy) {
    const int64_t nb = k / MX_BLOCK;
    const __m512 table = code_table();
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *b = blocks + n * nb * MX_BLOCK_BYTES, *s = scales + n * nb;
        PREFETCH(s);
        __m512 acc[8][4];
        for (int r = 0; r < m; r++) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
        int64_t j = j0;
        for (; m <= 4 && j + 1 < j1; j += 2) {
            __m512 w[2], v[2];
            PREFETCH(b + j * MX_BLOCK_BYTES);
            decode_block(table, b + j * MX_BLOCK_BYTES, s[j], w);
            decode_block(table, b + (j + 1) * MX_BLOCK_BYTES, s[j + 1], v);
            for (int r = 0; r < m; r++) {
                const float *a = ap + r * rs + j * bs;
                acc[r][0] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(a), acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(a + 16), acc[r][1]);
                acc[r][2] = _mm512_fmadd_ps(v[0], _mm512_loadu_ps(a + bs), acc[r][2]);
                acc[r][3] = _mm512_fmadd_ps(v[1], _mm512_loadu_ps(a + bs + 16), acc[r][3]);
            }
        }
        for (; j < j1; j++) {
            __m512 w[2];
            if (!(j & 3)) /* the same bytes 4 weight rows on: a chunk reads a panel of each row, not whole rows */
                _mm_prefetch((const char *)(b + (4 * nb + j) * MX_BLOCK_BYTES), _MM_HINT_T1);
            decode_block(table, b + j * MX_BLOCK_BYTES, s[j], w);
            for (int r = 0; r < m; r++) {
                const float *a = ap + r * rs + j * bs;
                acc[r][0] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(a), acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(a + 16), acc[r][1]);
            }
        }
        for (int r = 0; r < m; r++) {
            const float t = _mm512_reduce_add_ps(
                _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3])));
            y[r * ldy + n] = add ? y[r * ldy + n] + t : t;
        }
    }
}

#define DIRECT_ROWS 15  /* MXFP4 rows of A up to which the direct chunks run (mxfp4_chunks) */
#define DIRECT_PANEL 32 /* blocks of K per pass of the direct chunks */
#define DIRECT_TILE 64  /* weight rows per pass: their panel (32 KB) is re-read from L2 by the next chunk */

/* Rows of A in near-equal chunks of at most 8 (4-8 rows each once m > 4), each chunk a direct product: a weight
 * block is decoded once per chunk, in registers. Up to DIRECT_ROWS rows (and for a remainder of up to 8 rows after
 * full 16-row groups) this beats the packed product, whose 16-row groups would run partly empty. A chunk's rows are
 * copied block-interleaved (block j of its R rows side by side), so they read as one stream: R rows k floats apart
 * fall in one L1 set when k is a power of two. Weight rows go in tiles of DIRECT_TILE, so a tile's panel is re-read
 * from L2 by the next chunk, and K in panels of DIRECT_PANEL blocks (L1). One thread, Zen 4, cycles per 32 weights
 * x row, weights from memory (docs/BENCHMARKS.md, Kernels): 8 x 1024 3.2 -> 2.0-2.3, 8-20 x 2880 3.8-5.0 -> 1.9-2.8. */
AVX512_INLINE int64_t chunk_rows(int64_t m, int64_t chunks, int64_t c) { return m / chunks + (c < m % chunks); }

AVX512_INLINE void mxfp4_chunks(const float *ap, int64_t m, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                                int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int64_t chunks = (m + 7) / 8, nb = k / MX_BLOCK;
    float *il = mx_alloc64(sizeof(float) * (size_t)(m * k));
    if (il)
        for (int64_t c = 0, r0 = 0; c < chunks; c++) {
            const int64_t rows = chunk_rows(m, chunks, c);
            for (int64_t j = 0; j < nb; j++)
                for (int64_t r = 0; r < rows; r++)
                    memcpy(il + r0 * k + (j * rows + r) * MX_BLOCK, ap + (r0 + r) * k + j * MX_BLOCK,
                           sizeof(float) * MX_BLOCK);
            r0 += rows;
        }
    for (int64_t j0 = 0; j0 < nb; j0 += DIRECT_PANEL) {
        const int64_t j1 = j0 + DIRECT_PANEL < nb ? j0 + DIRECT_PANEL : nb;
        const int add = j0 > 0;
        for (int64_t t0 = n0; t0 < n1; t0 += DIRECT_TILE) {
            const int64_t t1 = t0 + DIRECT_TILE < n1 ? t0 + DIRECT_TILE : n1;
            for (int64_t c = 0, r0 = 0; c < chunks; c++) {
                const int rows = (int)chunk_rows(m, chunks, c);
                const float *a = (il ? il : ap) + r0 * k;
                const int64_t rs = il ? MX_BLOCK : k, bs = il ? MX_BLOCK * rows : MX_BLOCK;
                float *yc = y + r0 * ldy;
#define DIRECT(R) mxfp4_direct(a, R, k, rs, bs, blocks, scales, j0, j1, add, t0, t1, yc, ldy); break;
                switch (rows) {
                    case 1: DIRECT(1)
                    case 2: DIRECT(2)
                    case 3: DIRECT(3)
                    case 4: DIRECT(4)
                    case 5: DIRECT(5)
                    case 6: DIRECT(6)
                    case 7: DIRECT(7)
                    default: DIRECT(8)
                }
#undef DIRECT
                r0 += rows;
            }
        }
    }
    free(il);
}

/* ---- the blocked product of prompt rows ------------------------------------------------------------------------- */
typedef void (*RowDecoder)(const void *src, int64_t row, int64_t k, float *out);

typedef struct {
    const uint8_t *blocks, *scales;
} Mxfp4Weights;

AVX512 static void mxfp4_decode_row(const void *src, int64_t row, int64_t k, float *out) {
    const Mxfp4Weights *w = src;
    const int64_t nb = k / MX_BLOCK;
    const __m512 table = code_table();
    for (int64_t j = 0; j < nb; j++) {
        __m512 v[2];
        decode_block(table, w->blocks + (row * nb + j) * MX_BLOCK_BYTES, w->scales[row * nb + j], v);
        _mm512_storeu_ps(out + j * MX_BLOCK, v[0]);
        _mm512_storeu_ps(out + j * MX_BLOCK + 16, v[1]);
    }
}

AVX512 static void bf16_decode_row(const void *src, int64_t row, int64_t k, float *out) {
    const uint16_t *w = (const uint16_t *)src + row * k;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16)
        _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(
                                      _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + i))), 16)));
    for (; i < k; i++) out[i] = bf16_value(w[i]);
}

#define TILE_N 8    /* weight rows per tile */
#define PANEL_K 256 /* k values per pass: 2 x 16 rows of A^T (32 KB) and 8 weight rows (8 KB) stay in L1 */

/* out[h][r][0:16] += sum_i wd[r, i] * at_h[i, 0:16] for the nr weight rows and the 1 or 2 (two) groups of A^T. */
AVX512_INLINE void outer_tile(const float *at0, const float *at1, const float *wd, int64_t ldw, int64_t kc,
                              const int nr, const int two, float *out) {
    __m512 c0[TILE_N], c1[TILE_N];
    for (int r = 0; r < nr; r++) {
        c0[r] = _mm512_load_ps(out + r * 16);
        c1[r] = two ? _mm512_load_ps(out + (TILE_N + r) * 16) : _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < kc; i++) {
        const __m512 a0 = _mm512_load_ps(at0 + 16 * i);
        const __m512 a1 = two ? _mm512_load_ps(at1 + 16 * i) : a0;
        for (int r = 0; r < nr; r++) {
            const __m512 wv = _mm512_set1_ps(wd[r * ldw + i]);
            c0[r] = _mm512_fmadd_ps(wv, a0, c0[r]);
            if (two) c1[r] = _mm512_fmadd_ps(wv, a1, c1[r]);
        }
    }
    for (int r = 0; r < nr; r++) {
        _mm512_store_ps(out + r * 16, c0[r]);
        if (two) _mm512_store_ps(out + (TILE_N + r) * 16, c1[r]);
    }
}

/* Y[m, n] = sum_k A[m, k] Wd[n, k] for n in [n0, n1), Wd the decoded weight rows, A as mx_pack_t's A^T (16-row
 * groups, taken two at a time). Returns 0 when out of memory. */
AVX512 static int packed_outer(const float *at, int64_t m, int64_t k, RowDecoder decode, const void *src, int64_t n0,
                               int64_t n1, float *y, int64_t ldy) {
    const int64_t groups = (m + 15) / 16, pairs = (groups + 1) / 2, tile = 2 * TILE_N * 16;
    float *wd = mx_alloc64(sizeof(float) * (size_t)(TILE_N * k + 16));
    float *outs = mx_alloc64(sizeof(float) * (size_t)(pairs * tile));
    if (!wd || !outs) {
        free(wd);
        free(outs);
        return 0;
    }
    for (int64_t nt = n0; nt < n1; nt += TILE_N) {
        const int nr = (int)(n1 - nt < TILE_N ? n1 - nt : TILE_N);
        for (int r = 0; r < nr; r++) decode(src, nt + r, k, wd + r * k);
        memset(outs, 0, sizeof(float) * (size_t)(pairs * tile));
        for (int64_t k0 = 0; k0 < k; k0 += PANEL_K) {
            const int64_t kc = k - k0 < PANEL_K ? k - k0 : PANEL_K;
            for (int64_t p = 0; p < pairs; p++) {
                const int two = 2 * p + 1 < groups;
                const float *at0 = at + (2 * p * k + k0) * 16, *at1 = two ? at0 + k * 16 : NULL, *wk = wd + k0;
                float *out = outs + p * tile;
#define TILE_CASE(NR)                                                                                              \
    case 2 * NR + 1: outer_tile(at0, at1, wk, k, kc, NR, 1, out); break;                                           \
    case 2 * NR: outer_tile(at0, at1, wk, k, kc, NR, 0, out); break;
                switch (nr * 2 + two) {
                    TILE_CASE(8) TILE_CASE(7) TILE_CASE(6) TILE_CASE(5) TILE_CASE(4) TILE_CASE(3) TILE_CASE(2)
                    default: outer_tile(at0, at1, wk, k, kc, 1, two, out); break;
                }
#undef TILE_CASE
            }
        }
        for (int64_t g = 0; g < groups; g++) {
            const int64_t rows = m - g * 16 < 16 ? m - g * 16 : 16;
            const float *out = outs + (g / 2) * tile + (g % 2) * TILE_N * 16;
            for (int64_t j = 0; j < rows; j++)
                for (int r = 0; r < nr; r++) y[(g * 16 + j) * ldy + nt + r] = out[r * 16 + j];
        }
    }
    free(wd);
    free(outs);
    return 1;
}

/* One row of A (decode): in integers (mx_mxfp4_int.c) over whole groups of 4 blocks, the last K % 128 values and
 * the rows with a scale byte 0 or >= 253 in float32; all in float32 when A has a block the pieces cannot hold. */
AVX512 void mx_mxfp4_row_avx512(const float *ap, const void *pieces, int64_t k, const uint8_t *blocks,
                                const uint8_t *scales, int64_t n0, int64_t n1, float *y) {
    const int64_t nb = k / MX_BLOCK, whole = nb / 4 * 4;
    _Alignas(64) uint8_t local[16384];
    void *own = NULL;
    if (!pieces && whole) {
        own = MX_PIECES_BYTES(k) <= sizeof local ? local : mx_alloc64(MX_PIECES_BYTES(k));
        pieces = own && mx_mxfp4_pieces_avx512(ap, k, own) ? own : NULL;
    }
    if (!pieces) {
        mxfp4_direct(ap, 1, k, k, MX_BLOCK, blocks, scales, 0, nb, 0, n0, n1, y, 0);
    } else {
        for (int64_t n = n0; n < n1;) {
            const int64_t stop = mx_mxfp4_int_rows_avx512(pieces, k, blocks, scales, n, n1, y);
            if (whole < nb && stop > n)
                mxfp4_direct(ap, 1, k, k, MX_BLOCK, blocks, scales, whole, nb, 1, n, stop, y, 0);
            if (stop < n1) mxfp4_direct(ap, 1, k, k, MX_BLOCK, blocks, scales, 0, nb, 0, stop, stop + 1, y, 0);
            n = stop + 1;
        }
    }
    if (own != local) free(own);
}

AVX512 void mx_mxfp4_rows_avx512(const float *ap, int64_t m, int64_t k, const uint8_t *blocks, const uint8_t *scales,
                                 int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int64_t nb = k / MX_BLOCK;
    switch (m) { /* decode: each weight row one sequential read, the whole of K at once */
        case 1: mx_mxfp4_row_avx512(ap, NULL, k, blocks, scales, n0, n1, y); return;
        case 2: mxfp4_direct(ap, 2, k, k, MX_BLOCK, blocks, scales, 0, nb, 0, n0, n1, y, ldy); return;
        case 3: mxfp4_direct(ap, 3, k, k, MX_BLOCK, blocks, scales, 0, nb, 0, n0, n1, y, ldy); return;
        case 4: mxfp4_direct(ap, 4, k, k, MX_BLOCK, blocks, scales, 0, nb, 0, n0, n1, y, ldy); return;
        default: break;
    }
    if (m <= DIRECT_ROWS) {
        mxfp4_chunks(ap, m, k, blocks, scales, n0, n1, y, ldy);
        return;
    }
    /* full 16-row groups packed; a remainder of up to 8 rows as direct chunks, more as one partial group */
    const int64_t rem = m % 16, mp = rem && rem <= 8 ? m - rem : m;
    const Mxfp4Weights w = {blocks, scales};
    float *at = mx_pack_alloc(mp, k);
    const int done = at && (mx_pack_t(ap, mp, k, 0, (mp + 15) / 16, at),
                            packed_outer(at, mp, k, mxfp4_decode_row, &w, n0, n1, y, ldy));
    free(at);
    if (!done) mx_mxfp4_rows_c(ap, mp, k, blocks, scales, n0, n1, y, ldy);
    if (mp < m) mxfp4_chunks(ap + mp * k, m - mp, k, blocks, scales, n0, n1, y + mp * ldy, ldy);
}

/* ---- LinearBF16 -------------------------------------------------------------------------------------------------- */
/* One row of A (ap: its first k - k % 32 values permuted per 32, evens then odds; a: as given, for the tail) against
 * weight rows [c0, c1), each read front to back; four accumulators over 64 weights a step. */
AVX512_INLINE void bf16_rows(const float *ap, const float *a, int64_t k, const uint16_t *w, int64_t c0, int64_t c1,
                             float *y) {
    const int64_t k32 = k - k % 32;
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    for (int64_t c = c0; c < c1; c++) {
        const uint16_t *wc = w + c * k;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        int64_t i = 0;
        for (; i + 64 <= k32; i += 64) {
            PREFETCH(wc + i);
            PREFETCH(wc + i + 32);
            const __m512i x0 = _mm512_loadu_si512(wc + i), x1 = _mm512_loadu_si512(wc + i + 32);
            s0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(x0, 16)), _mm512_loadu_ps(ap + i), s0);
            s1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(x0, high)), _mm512_loadu_ps(ap + i + 16), s1);
            s2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(x1, 16)), _mm512_loadu_ps(ap + i + 32), s2);
            s3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(x1, high)), _mm512_loadu_ps(ap + i + 48), s3);
        }
        if (i < k32) {
            const __m512i x0 = _mm512_loadu_si512(wc + i);
            s0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(x0, 16)), _mm512_loadu_ps(ap + i), s0);
            s1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(x0, high)), _mm512_loadu_ps(ap + i + 16), s1);
        }
        float t = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
        for (i = k32; i < k; i++) t += a[i] * bf16_value(wc[i]);
        y[c] = t;
    }
}

#define LINEAR_L2_BYTES (256 << 10) /* weight rows re-read from L2 by rows 2-4 of A */

AVX512 void mx_linear_bf16_avx512(const float *a, const float *at, int64_t m, int64_t k, const uint16_t *w, int64_t n0,
                                  int64_t n1, float *y, int64_t ldy) {
    if (m > 4) {
        if (!packed_outer(at, m, k, bf16_decode_row, w, n0, n1, y, ldy)) mx_linear_bf16_c(a, m, k, w, n0, n1, y, ldy);
        return;
    }
    const int64_t k32 = k - k % 32;
    float *ap = mx_alloc64(sizeof(float) * (size_t)(m * k32 + 16));
    if (!ap) {
        mx_linear_bf16_c(a, m, k, w, n0, n1, y, ldy);
        return;
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < k32; j += 32)
            for (int i = 0; i < 16; i++) {
                ap[r * k32 + j + i] = a[r * k + j + 2 * i];
                ap[r * k32 + j + 16 + i] = a[r * k + j + 2 * i + 1];
            }
    /* as the AVX2 build: a block of weight rows streamed for row 0 of A, re-read from L2 for the others */
    int64_t block = LINEAR_L2_BYTES / (2 * k);
    block = block < 8 ? 8 : block;
    for (int64_t c = n0; c < n1; c += block) {
        const int64_t c1 = c + block < n1 ? c + block : n1;
        for (int64_t r = 0; r < m; r++) bf16_rows(ap + r * k32, a + r * k, k, w, c, c1, y + r * ldy);
    }
    free(ap);
}

/* ---- LinearQ4 ---------------------------------------------------------------------------------------------------- */
/* The 128 code bytes of a super-block are four 32-byte chunks; chunk c holds sub-block 2c in its low nibbles and
 * 2c + 1 in its high ones. Two vshufi32x4 fill 16-byte quarter j of x0 with chunk j's first half and of x1 with its
 * second half; a 32-bit rotation of each qword swaps neighbouring lanes. One mask (0x0F in even lanes, 0xF0 in odd
 * ones) then leaves lane i = 4j + l of all four registers with codes of sub-block 2j + (l & 1): the low nibble, or
 * the high one as 16 x the code (the 1/16 is in the lanes' scale and the zero point). No byte permutes: vpermt2b
 * costs two cycles of the shuffle port here, and this layout took one row from 2.06 to 1.36 TSC cycles per 32
 * weights on the Xeon of docs/BENCHMARKS.md. mx_q4_pack copies a row of A into the same order. */
AVX512_INLINE void q4_codes(const uint8_t *codes, __m512i q[4]) {
    const __m512i mask = _mm512_set1_epi64((long long)0xF0F0F0F00F0F0F0Full);
    const __m512i t0 = _mm512_loadu_si512(codes), t1 = _mm512_loadu_si512(codes + 64);
    const __m512i x0 = _mm512_shuffle_i32x4(t0, t1, 0x88), x1 = _mm512_shuffle_i32x4(t0, t1, 0xDD);
    q[0] = _mm512_and_si512(x0, mask);
    q[1] = _mm512_and_si512(x1, mask);
    q[2] = _mm512_and_si512(_mm512_rol_epi64(x0, 32), mask);
    q[3] = _mm512_and_si512(_mm512_rol_epi64(x1, 32), mask);
}

/* the 8 sub-scales in lane order (lane i: sub-block 2 (i / 4) + i % 2) as floats times f */
AVX512_INLINE __m512 q4_scales(const uint8_t *sub, float f) {
    const __m128i spread = _mm_setr_epi8(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7);
    const __m128i b = _mm_shuffle_epi8(_mm_loadl_epi64((const __m128i *)sub), spread);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)), _mm512_set1_ps(f));
}

/* the sum of an accumulator's lanes, the odd ones (16 x the codes) divided by 16 */
AVX512_INLINE float q4_total(__m512 acc) {
    return _mm512_reduce_add_ps(_mm512_mul_ps(acc, _mm512_castsi512_ps(_mm512_set1_epi64(0x3D8000003F800000ll))));
}

/* a super-block of one packed row of A against codes q: the zero point, then four vpdpbusd */
AVX512_INLINE __m512i q4_sum(const uint8_t *x, const __m512i q[4]) {
    __m512i sum = _mm512_load_si512(x + MX_Q4_SUPER); /* -8 (odd lanes -128) x the sub-block sums */
    sum = _mm512_dpbusd_epi32(sum, q[0], _mm512_load_si512(x));
    sum = _mm512_dpbusd_epi32(sum, q[1], _mm512_load_si512(x + 64));
    sum = _mm512_dpbusd_epi32(sum, q[2], _mm512_load_si512(x + 128));
    return _mm512_dpbusd_epi32(sum, q[3], _mm512_load_si512(x + 192));
}

/* R rows of packed A (row stride s packed super-blocks) against one weight row: out[r] = its product. The weights'
 * unpacking is shared by the R rows; per row and super-block: four vpdpbusd, one conversion, one FMA. One row
 * (decode) prefetches the weights ahead. */
AVX512_INLINE void q4_rows(const uint8_t *w, const float *d, const uint8_t *xp, const float *da, int64_t s,
                           const int R, float *out) {
    const int64_t stride = s * MX_Q4P_BYTES;
    __m512 acc[8];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < s; b++) {
        const uint8_t *p = w + b * MX_Q4_BYTES;
        if (R == 1) { PREFETCH(p); PREFETCH(p + 64); PREFETCH(p + 128); }
        __m512i q[4];
        q4_codes(p + MX_Q4_SUBS, q);
        const __m512 sc = q4_scales(p, d[b]);
        for (int r = 0; r < R; r++) {
            const __m512i sum = q4_sum(xp + r * stride + b * MX_Q4P_BYTES, q);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(sc, _mm512_set1_ps(da[r * s + b])), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = q4_total(acc[r]);
}

/* mx_q4_activations on AVX-512: the same numbers as mx_q4.c's loop (x · (1 / d) rounded half to even by the default
 * MXCSR mode, non-finite values to 0, d NaN when the super-block holds a NaN), 16 values per instruction. */
AVX512 void mx_q4_activations_avx512(const float *a, int64_t m, int64_t k, int64_t s, int8_t *qa, float *da,
                                     int16_t *bs) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t r = 0; r < m; r++) {
        const float *x = a + r * k;
        for (int64_t b = 0; b < s; b++) {
            const int64_t c0 = b * MX_Q4_SUPER, n = k - c0 < MX_Q4_SUPER ? k - c0 : MX_Q4_SUPER;
            __m512 v[16];
            __m512 amax = zero;
            __mmask16 nan = 0;
            for (int j = 0; j < 16; j++) {
                const int64_t left = n - 16 * j;
                const __mmask16 in = tail_mask(left);
                v[j] = _mm512_maskz_loadu_ps(in, x + c0 + 16 * j);
                amax = _mm512_max_ps(amax, _mm512_abs_ps(v[j])); /* NaN: d is NaN whatever amax is */
                const __mmask16 fin = _mm512_cmp_ps_mask(_mm512_sub_ps(v[j], v[j]), zero, _CMP_EQ_OQ);
                nan |= _mm512_cmp_ps_mask(v[j], v[j], _CMP_UNORD_Q);
                v[j] = _mm512_maskz_mov_ps(fin, v[j]);
            }
            const float mx = _mm512_reduce_max_ps(amax);
            const float d = nan ? NAN : mx / 127.0f, inv = d > 0.0f && isfinite(d) ? 1.0f / d : 0.0f; /* as mx_q4.c */
            const __m512 vinv = _mm512_set1_ps(inv);
            int8_t *q = qa + (r * s + b) * MX_Q4_SUPER;
            for (int j = 0; j < 16; j += 2) { /* sub-block j / 2: two registers of 16 */
                const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v[j], vinv));
                const __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v[j + 1], vinv));
                _mm_storeu_si128((__m128i *)(q + 16 * j), _mm512_cvtepi32_epi8(i0));
                _mm_storeu_si128((__m128i *)(q + 16 * j + 16), _mm512_cvtepi32_epi8(i1));
                bs[(r * s + b) * MX_Q4_SUBS + j / 2] = (int16_t)_mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
            }
            da[r * s + b] = d;
        }
    }
}

AVX512 void mx_linear_q4_avx512(const uint8_t *packed, const float *da, int64_t m, int64_t s, const uint8_t *w,
                                const float *d, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    const int64_t row_bytes = s * MX_Q4_BYTES;
    /* more than one row of A: a block of weight rows (~256 KB) is read from memory once and from L2 for the rest */
    const int64_t block = m == 1 ? n1 - n0 : (256 << 10) / row_bytes + 1;
    for (int64_t c0 = n0; c0 < n1; c0 += block) {
        const int64_t c1 = c0 + block < n1 ? c0 + block : n1;
        for (int64_t r = 0; r < m;) {
            const int R = m - r >= 8 ? 8 : m - r >= 4 ? 4 : 1;
            const uint8_t *x = packed + r * s * MX_Q4P_BYTES;
            const float *dx = da + r * s;
            for (int64_t n = c0; n < c1; n++) {
                const uint8_t *wn = w + n * row_bytes;
                float out[8];
                if (R == 8) q4_rows(wn, d + n * s, x, dx, s, 8, out);
                else if (R == 4) q4_rows(wn, d + n * s, x, dx, s, 4, out);
                else q4_rows(wn, d + n * s, x, dx, s, 1, out);
                for (int i = 0; i < R; i++) y[(r + i) * ldy + n] = out[i];
            }
            r += R;
        }
    }
}

#endif /* x86-64: elsewhere mx_isa() is MX_ISA_C and nothing calls these */
