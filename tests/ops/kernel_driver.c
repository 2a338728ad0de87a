/* A C driver for mxport's kernel math (ops/csrc/mx_*.c) without ONNX Runtime:
 * gcc -O3 -std=gnu11 -Iops/csrc tests/ops/kernel_driver.c ops/csrc/mx_*.c -lm -o kernel_driver
 *
 *   kernel_driver check   every ISA this CPU runs (c, avx2, avx512) on every shape class (rows 1-4 and prompt
 *                         rows, K tails, N tails, output sub-ranges) against a float64 product on the decoded
 *                         weights; exact-size buffers, so a sanitized build (tests/ops/test_kernel_sanitizers.py)
 *                         sees any read or write outside them. Exit 1 on a mismatch.
 *   kernel_driver bench   one thread, per kernel and ISA: cycles per 32 weights x row of A and weight GB/s,
 *                         best of 7, from the thread's CPU time (time spent descheduled on a loaded machine does
 *                         not count; cycles = CPU time x the TSC rate, measured here) (docs/BENCHMARKS.md, "Kernels").
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x86intrin.h>

#include "mx_math.h"

static uint64_t rng_state = 88172645463325252ull;
static uint32_t next_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static float next_normal(void) { /* sum of 4 uniforms, centred: enough spread for products */
    float s = 0.0f;
    for (int i = 0; i < 4; i++) s += (float)(next_u32() & 0xFFFF) / 65536.0f;
    return (s - 2.0f) * 1.7f;
}

static void *take(size_t bytes) { /* exact size (ASan sees one byte past), never NULL */
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static const double E2M1[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};

static int failures = 0;

/* max |got - want| / max mag over rows [0, m) and columns [n0, n1) (stride ldy), mag = sum of |products| (the
 * scale of float32 summation error, which a sum that cancels to near zero does not shrink) */
static void judge(const char *what, int isa, int64_t m, int64_t k, int64_t n0, int64_t n1, const float *y,
                  const double *want, const double *mag, int64_t ldy, double tol) {
    double err = 0.0, big = 1e-30;
    int bad = 0;
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = n0; c < n1; c++) {
            const double g = y[r * ldy + c], w = want[r * ldy + c];
            bad |= !isfinite(g);
            err = fmax(err, fabs(g - w));
            big = fmax(big, mag[r * ldy + c]);
        }
    if (bad || err / big > tol) {
        failures++;
        printf("FAIL %s isa=%s m=%lld k=%lld n=[%lld,%lld): rel %.3g\n", what, mx_isa_name(isa), (long long)m,
               (long long)k, (long long)n0, (long long)n1, err / big);
    }
}

static void check_mxfp4(int isa, int64_t m, int64_t k, int64_t n, int64_t n0, int64_t n1) {
    const int64_t nb = k / MX_BLOCK, ldy = n + 3;
    float *a = take(sizeof(float) * (size_t)(m * k)), *ap = take(sizeof(float) * (size_t)(m * k));
    uint8_t *blocks = take((size_t)(n * nb * MX_BLOCK_BYTES)), *scales = take((size_t)(n * nb));
    float *y = take(sizeof(float) * (size_t)(m * ldy));
    double *want = take(sizeof(double) * (size_t)(m * ldy)), *mag = take(sizeof(double) * (size_t)(m * ldy));
    for (int64_t i = 0; i < m * k; i++) a[i] = next_normal();
    for (int64_t i = 0; i < n * nb * MX_BLOCK_BYTES; i++) blocks[i] = (uint8_t)next_u32();
    for (int64_t i = 0; i < n * nb; i++) scales[i] = (uint8_t)(121 + next_u32() % 12);
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = n0; c < n1; c++) {
            double s = 0.0, g = 0.0;
            for (int64_t i = 0; i < k; i++) {
                const uint8_t byte = blocks[(c * nb + i / 32) * MX_BLOCK_BYTES + (i % 32) / 2];
                const double v = E2M1[i % 2 ? byte >> 4 : byte & 15] * ldexp(1.0, scales[c * nb + i / 32] - 127);
                s += v * a[r * k + i];
                g += fabs(v * a[r * k + i]);
            }
            want[r * ldy + c] = s;
            mag[r * ldy + c] = g;
        }
    mx_permute_rows(a, m, k, ap);
    mx_mxfp4_rows(ap, m, k, blocks, scales, n0, n1, y, ldy);
    judge("mxfp4", isa, m, k, n0, n1, y, want, mag, ldy, 1e-6);
    free(a); free(ap); free(blocks); free(scales); free(y); free(want); free(mag);
}

static double bf16_double(uint16_t v) {
    const uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void check_bf16(int isa, int64_t m, int64_t k, int64_t n, int64_t n0, int64_t n1) {
    const int64_t ldy = n + 1;
    float *a = take(sizeof(float) * (size_t)(m * k));
    uint16_t *w = take(sizeof(uint16_t) * (size_t)(n * k));
    float *y = take(sizeof(float) * (size_t)(m * ldy));
    double *want = take(sizeof(double) * (size_t)(m * ldy)), *mag = take(sizeof(double) * (size_t)(m * ldy));
    for (int64_t i = 0; i < m * k; i++) a[i] = next_normal();
    for (int64_t i = 0; i < n * k; i++) {
        const float f = next_normal();
        uint32_t bits;
        memcpy(&bits, &f, 4);
        w[i] = (uint16_t)(bits >> 16);
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = n0; c < n1; c++) {
            double s = 0.0, g = 0.0;
            for (int64_t i = 0; i < k; i++) {
                s += bf16_double(w[c * k + i]) * a[r * k + i];
                g += fabs(bf16_double(w[c * k + i]) * a[r * k + i]);
            }
            want[r * ldy + c] = s;
            mag[r * ldy + c] = g;
        }
    float *at = NULL;
    if (m > 4) {
        at = mx_pack_alloc(m, k);
        mx_pack_t(a, m, k, 0, (m + 15) / 16, at);
    }
    mx_linear_bf16(a, at, m, k, w, n0, n1, y, ldy);
    judge("bf16", isa, m, k, n0, n1, y, want, mag, ldy, 1e-6);
    free(at); free(a); free(w); free(y); free(want); free(mag);
}

static void check_q4(int isa, int64_t m, int64_t k, int64_t n, int64_t n0, int64_t n1) {
    const int64_t s = (k + MX_Q4_SUPER - 1) / MX_Q4_SUPER, ldy = n + 2;
    float *a = take(sizeof(float) * (size_t)(m * k)), *da = take(sizeof(float) * (size_t)(m * s));
    int8_t *qa = take((size_t)(m * s * MX_Q4_SUPER));
    int16_t *bs = take(sizeof(int16_t) * (size_t)(m * s * MX_Q4_SUBS));
    uint8_t *w = take((size_t)(n * s * MX_Q4_BYTES));
    float *d = take(sizeof(float) * (size_t)(n * s)), *y = take(sizeof(float) * (size_t)(m * ldy));
    double *want = take(sizeof(double) * (size_t)(m * ldy)), *mag = take(sizeof(double) * (size_t)(m * ldy));
    for (int64_t i = 0; i < m * k; i++) a[i] = next_normal() * (i % 97 == 0 ? 40.0f : 1.0f);
    for (int64_t i = 0; i < n * s * MX_Q4_BYTES; i++) w[i] = (uint8_t)next_u32(); /* sub-scales up to 255 */
    for (int64_t i = 0; i < n * s; i++) d[i] = 1e-3f * (1.0f + (float)(next_u32() % 100));
    mx_q4_activations(a, m, k, s, qa, da, bs);
    if (isa != MX_ISA_C) { /* every path quantizes to the plain C loop's numbers */
        int8_t *qc = take((size_t)(m * s * MX_Q4_SUPER));
        float *dc = take(sizeof(float) * (size_t)(m * s));
        int16_t *bc = take(sizeof(int16_t) * (size_t)(m * s * MX_Q4_SUBS));
        mx_set_isa(MX_ISA_C);
        mx_q4_activations(a, m, k, s, qc, dc, bc);
        mx_set_isa(isa);
        if (memcmp(qc, qa, (size_t)(m * s * MX_Q4_SUPER)) || memcmp(dc, da, sizeof(float) * (size_t)(m * s)) ||
            memcmp(bc, bs, sizeof(int16_t) * (size_t)(m * s * MX_Q4_SUBS))) {
            failures++;
            printf("FAIL q4 activations isa=%s m=%lld k=%lld: not the C loop's numbers\n", mx_isa_name(isa),
                   (long long)m, (long long)k);
        }
        free(qc); free(dc); free(bc);
    }
    for (int64_t i = 0; i < m * s * MX_Q4_SUBS; i++) { /* the block sums are the sums of the int8 values */
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += qa[i * 32 + j];
        if (sum != bs[i]) {
            failures++;
            printf("FAIL q4 activations: block sum %d != %d\n", bs[i], sum);
            break;
        }
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = n0; c < n1; c++) {
            double total = 0.0, g = 0.0;
            for (int64_t b = 0; b < s; b++) {
                const uint8_t *p = w + (c * s + b) * MX_Q4_BYTES;
                int64_t sum = 0;
                for (int i = 0; i < MX_Q4_SUPER; i++) {
                    const int chunk = i / 64, hi = (i % 64) >= 32, byte = p[MX_Q4_SUBS + 32 * chunk + i % 32];
                    sum += (int64_t)p[i / 32] * (((hi ? byte >> 4 : byte & 15)) - 8) * qa[(r * s + b) * MX_Q4_SUPER + i];
                }
                total += (double)d[c * s + b] * da[r * s + b] * (double)sum;
                g += fabs((double)d[c * s + b] * da[r * s + b] * (double)sum);
            }
            want[r * ldy + c] = total;
            mag[r * ldy + c] = g;
        }
    const int64_t packed_bytes = mx_q4_packed_bytes(m, s);
    void *packed = packed_bytes ? aligned_alloc(64, (size_t)packed_bytes) : NULL;
    if (packed) mx_q4_pack(qa, bs, s, 0, m, packed);
    mx_linear_q4(qa, da, bs, packed, m, s, w, d, n0, n1, y, ldy);
    judge("q4", isa, m, k, n0, n1, y, want, mag, ldy, 1e-6);
    if (packed) { /* and without the packed copy (the AVX2 kernels on qa) */
        mx_linear_q4(qa, da, bs, NULL, m, s, w, d, n0, n1, y, ldy);
        judge("q4 unpacked", isa, m, k, n0, n1, y, want, mag, ldy, 1e-6);
    }
    free(a); free(da); free(qa); free(bs); free(w); free(d); free(y); free(want); free(mag); free(packed);
}

/* non-finite activations: a NaN makes its super-block's scale NaN, an inf makes it inf; both quantize to 0 */
static void check_q4_nonfinite(int isa) {
    const int64_t m = 3, k = 300, s = 2;
    float a[3 * 300];
    for (int64_t i = 0; i < m * k; i++) a[i] = next_normal();
    a[5] = NAN;
    a[k + 260] = INFINITY;
    a[2 * k + 7] = -INFINITY;
    a[2 * k + 290] = NAN;
    int8_t q[2][3 * 2 * 256];
    float d[2][3 * 2];
    int16_t b[2][3 * 2 * 8];
    for (int pass = 0; pass < 2; pass++) {
        mx_set_isa(pass ? isa : MX_ISA_C);
        mx_q4_activations(a, m, k, s, q[pass], d[pass], b[pass]);
    }
    mx_set_isa(isa);
    if (memcmp(q[0], q[1], sizeof q[0]) || memcmp(d[0], d[1], sizeof d[0]) || memcmp(b[0], b[1], sizeof b[0])) {
        failures++;
        printf("FAIL q4 activations isa=%s: non-finite values quantize differently from the C loop\n", mx_isa_name(isa));
    }
}

/* MXFP4 at the edges of the integer decode (mx_mxfp4_int.c), one and two rows of A, K = 1056 (8 groups of 4 blocks and
 * a 1-block tail): scale bytes over 0..160 (0: 2^-127), one 253 or 254 and one 255 (NaN), activation blocks scaled by
 * 2^-60..2^40 with a zero block (weight row 1 all scale 0) and lone large values; then a NaN, an inf and a 2^100 in A,
 * and blocks below 2^-90. Finite results within the integer decode's bound of the float64 product: 1e-6 of sum
 * |products| (float32 rounding) plus, per value, |weight| x 2^-21 of its block's largest |x| (the pieces' residual);
 * NaN and inf where the C loop has them.
 */
static void check_mxfp4_edges(int isa) {
    const int64_t k = 1056, nb = k / MX_BLOCK, n = 9;
    for (int variant = 0; variant < 8; variant++) {
        const int64_t m = 1 + (variant & 1);
        float *a = take(sizeof(float) * (size_t)(m * k)), *ap = take(sizeof(float) * (size_t)(m * k));
        uint8_t *blocks = take((size_t)(n * nb * MX_BLOCK_BYTES)), *scales = take((size_t)(n * nb));
        float *y = take(sizeof(float) * (size_t)(m * n)), *ref = take(sizeof(float) * (size_t)(m * n));
        double *want = take(sizeof(double) * (size_t)(m * n)), *mag = take(sizeof(double) * (size_t)(m * n));
        for (int64_t i = 0; i < n * nb * MX_BLOCK_BYTES; i++) blocks[i] = (uint8_t)next_u32();
        for (int64_t i = 0; i < n * nb; i++) scales[i] = (uint8_t)(next_u32() % 161);
        scales[(n - 1) * nb + 5] = 255;
        scales[(n - 2) * nb + 7] = (uint8_t)(253 + variant % 2); /* codes 12 overflow float32: inf, as the C loop */
        memset(scales + nb, 0, (size_t)nb); /* weight row 1 all 2^-127: tiny products, not zero */
        for (int64_t r = 0; r < m; r++)
            for (int64_t j = 0; j < nb; j++) {
                const float e = ldexpf(1.0f, (int)(next_u32() % 101) - 60);
                for (int64_t i = 0; i < MX_BLOCK; i++)
                    a[r * k + j * MX_BLOCK + i] = j == 3 ? 0.0f : next_normal() * e * (i == 7 ? 1000.0f : 1.0f);
            }
        switch (variant >> 1) {
            case 1: a[40] = NAN; break;
            case 2: a[k - 1] = INFINITY; a[70] = 0x1p100f; break;
            case 3: for (int64_t i = 64; i < 128; i++) a[i] = ldexpf(next_normal(), -100); break;
            default: break;
        }
        for (int64_t r = 0; r < m; r++)
            for (int64_t c = 0; c < n; c++) {
                double sum = 0.0, g = 0.0, piece = 0.0, top = 0.0;
                for (int64_t i = 0; i < k; i++) {
                    const uint8_t byte = blocks[(c * nb + i / 32) * MX_BLOCK_BYTES + (i % 32) / 2];
                    const uint8_t sc = scales[c * nb + i / 32];
                    const double v = E2M1[i % 2 ? byte >> 4 : byte & 15] * (sc == 255 ? NAN : ldexp(1.0, sc - 127));
                    if (i % 32 == 0)
                        for (int64_t t = top = 0.0; t < 32; t++) top = fmax(top, fabs(a[r * k + i + t]));
                    sum += v * a[r * k + i];
                    g += fabs(v * a[r * k + i]);
                    piece += fabs(v) * top * 0x1p-21;
                }
                want[r * n + c] = sum;
                mag[r * n + c] = 1e-6 * g + piece; /* the tolerance */
            }
        mx_permute_rows(a, m, k, ap);
        mx_set_isa(MX_ISA_C);
        mx_mxfp4_rows(ap, m, k, blocks, scales, 0, n, ref, n);
        mx_set_isa(isa);
        mx_mxfp4_rows(ap, m, k, blocks, scales, 0, n, y, n);
        for (int64_t i = 0; i < m * n; i++) {
            const int special = !isfinite(ref[i]) || !isfinite(y[i]) || !isfinite(want[i]);
            /* the C loop decodes 6 x 2^126 to inf before the product (inf - inf: NaN); a path scaling a block's sum
             * may hold the float64 value instead, or its inf past float32's range */
            const int near = isfinite(want[i]) ? (isfinite(y[i]) ? fabs(y[i] - want[i]) <= mag[i]
                                                                 : fabs(want[i]) > FLT_MAX && y[i] * want[i] > 0)
                                               : y[i] == want[i];
            const int ok = special ? (isnan(ref[i]) && isnan(y[i])) || ref[i] == y[i] || near
                                   : fabs(y[i] - want[i]) <= mag[i];
            if (!ok) {
                failures++;
                printf("FAIL mxfp4 edges isa=%s variant=%d row %lld col %lld: %g, C loop %g, float64 %g (bound %g)\n",
                       mx_isa_name(isa), variant, (long long)(i / n), (long long)(i % n), y[i], ref[i], want[i],
                       mag[i]);
                break;
            }
        }
        free(a); free(ap); free(blocks); free(scales); free(y); free(ref); free(want); free(mag);
    }
}

/* SwiGLU (mx_swiglu): n = 1, 15, 16, 17, 100 (vector steps and the scalar tail), both layouts, with and without
 * bias and limit, gates over [-110, 110] plus NaN and +-inf: within 1e-6 relative of a float64 evaluation of the
 * same clamped inputs and float32-rounded exp argument, the same NaN and inf outputs as the C loop (exact-size
 * buffers) */
static void check_swiglu(int isa) {
    static const int64_t ns[] = {1, 15, 16, 17, 100};
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
        for (int variant = 0; variant < 8; variant++) {
            const int64_t n = ns[ni];
            const int il = variant & 1, has_bias = variant & 2;
            const float limit = variant & 4 ? 7.0f : 0.0f, alpha = 1.702f, beta = 1.0f;
            float *h = take(sizeof(float) * (size_t)(2 * n));
            float *bias = has_bias ? take(sizeof(float) * (size_t)(2 * n)) : NULL;
            float *got = take(sizeof(float) * (size_t)n), *ref = take(sizeof(float) * (size_t)n);
            for (int64_t i = 0; i < 2 * n; i++) {
                h[i] = -110.0f + 220.0f * (float)(next_u32() % 100000) / 100000.0f;
                if (bias) bias[i] = 0.1f * next_normal();
            }
            if (n > 8) { h[1] = NAN; h[2] = INFINITY; h[5] = -INFINITY; h[6] = NAN; }
            mx_set_isa(MX_ISA_C);
            mx_swiglu(h, bias, n, il, limit, alpha, beta, ref);
            mx_set_isa(isa);
            mx_swiglu(h, bias, n, il, limit, alpha, beta, got);
            for (int64_t j = 0; j < n; j++) {
                const int64_t gi = il ? 2 * j : j, ui = il ? 2 * j + 1 : n + j;
                double g = (double)h[gi] + (bias ? bias[gi] : 0.0f), u = (double)h[ui] + (bias ? bias[ui] : 0.0f);
                g = (float)g, u = (float)u; /* the kernels add in float32 */
                if (limit > 0.0f) {
                    g = isnan(g) ? limit : fmin(g, limit);
                    u = fmax(fmin(u, limit), -limit);
                }
                const float x = (float)(-(double)alpha * g); /* the argument as the kernels round it */
                const double want = g / (1.0 + exp((double)x)) * (u + beta);
                const int special = isnan(ref[j]) || isinf(ref[j]) || isnan(got[j]) || isinf(got[j]);
                const int ok = special ? (isnan(ref[j]) && isnan(got[j])) || ref[j] == got[j]
                                       : fabs(got[j] - want) <= 1e-6 * fabs(want) + 1e-30;
                if (!ok) {
                    failures++;
                    printf("FAIL swiglu isa=%s n=%lld variant=%d j=%lld: %g, C loop %g, float64 %g\n", mx_isa_name(isa),
                           (long long)n, variant, (long long)j, got[j], ref[j], want);
                    break;
                }
            }
            free(h); free(bias); free(got); free(ref);
        }
}

static int check(void) {
    static const int64_t rows[] = {1, 2, 3, 4, 5, 8, 12, 15, 16, 17, 20, 24, 26, 33, 40};
    static const int64_t mx_k[] = {32, 64, 96, 128, 160, 288, 1056};
    static const int64_t bf_k[] = {1, 7, 16, 31, 32, 33, 64, 65, 100, 300, 1030};
    static const int64_t q4_k[] = {5, 256, 300, 700};
    static const int64_t cols[][3] = {{1, 0, 1}, {5, 0, 5}, {9, 0, 9}, {17, 0, 17}, {70, 3, 61}};
    int ran = 0;
    for (int want = MX_ISA_C; want <= MX_ISA_AVX512; want++) {
        const int isa = mx_set_isa(want);
        if (isa != want) {
            printf("skip isa=%s (this CPU runs %s at most)\n", mx_isa_name(want), mx_isa_name(isa));
            continue;
        }
        for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++)
            for (size_t ci = 0; ci < sizeof cols / sizeof cols[0]; ci++) {
                const int64_t m = rows[ri], n = cols[ci][0], n0 = cols[ci][1], n1 = cols[ci][2];
                for (size_t ki = 0; ki < sizeof mx_k / sizeof mx_k[0]; ki++) check_mxfp4(isa, m, mx_k[ki], n, n0, n1);
                for (size_t ki = 0; ki < sizeof bf_k / sizeof bf_k[0]; ki++) check_bf16(isa, m, bf_k[ki], n, n0, n1);
                for (size_t ki = 0; ki < sizeof q4_k / sizeof q4_k[0]; ki++) check_q4(isa, m, q4_k[ki], n, n0, n1);
            }
        check_q4_nonfinite(isa);
        check_mxfp4_edges(isa);
        check_swiglu(isa);
        printf("isa=%s checked\n", mx_isa_name(isa));
        ran++;
    }
    printf("%d isa(s), %d failure(s)\n", ran, failures);
    return failures ? 1 : 0;
}

/* ---- bench ---------------------------------------------------------------------------------------------------- */
static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double tsc_hz; /* TSC ticks per second of wall time */

typedef struct {
    const char *name;
    int64_t m, k, n;
} Shape;

/* best of 7 runs of one kernel call over all n rows, in thread CPU time */
static void bench_one(const char *kernel, const Shape *sh, int isa, double bytes, void (*run)(void *), void *ctx) {
    double best = 1e30;
    run(ctx); /* warm */
    for (int rep = 0; rep < 7; rep++) {
        const double t0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
        run(ctx);
        const double t = clock_s(CLOCK_THREAD_CPUTIME_ID) - t0;
        best = t < best ? t : best;
    }
    const double blocks = (double)sh->m * (double)sh->n * (double)sh->k / 32.0;
    printf("%-6s %-6s m=%-4lld k=%-5lld n=%-5lld %-6s %9.3f ms %7.2f cycles/32w %7.2f GB/s\n", kernel, sh->name,
           (long long)sh->m, (long long)sh->k, (long long)sh->n, mx_isa_name(isa), best * 1e3,
           best * tsc_hz / blocks, bytes / best / 1e9);
}

typedef struct {
    const Shape *sh;
    float *a, *at, *y, *da;
    uint8_t *b8, *s8;
    uint16_t *w16;
    int8_t *qa;
    int16_t *bs;
    void *q4p; /* qa packed (mx_q4_pack) */
} Ctx;

static void run_mxfp4(void *p) {
    Ctx *c = p;
    mx_mxfp4_rows(c->a, c->sh->m, c->sh->k, c->b8, c->s8, 0, c->sh->n, c->y, c->sh->n);
}
static void run_bf16(void *p) {
    Ctx *c = p;
    if (c->sh->m > 4) mx_pack_t(c->a, c->sh->m, c->sh->k, 0, (c->sh->m + 15) / 16, c->at);
    mx_linear_bf16(c->a, c->at, c->sh->m, c->sh->k, c->w16, 0, c->sh->n, c->y, c->sh->n);
}
static void run_q4(void *p) {
    Ctx *c = p;
    const int64_t s = (c->sh->k + 255) / 256;
    void *packed = mx_q4_packed_bytes(c->sh->m, s) ? c->q4p : NULL;
    if (packed) mx_q4_pack(c->qa, c->bs, s, 0, c->sh->m, packed);
    mx_linear_q4(c->qa, c->da, c->bs, packed, c->sh->m, s, c->b8, c->a + c->sh->m * c->sh->k, 0, c->sh->n, c->y,
                 c->sh->n);
}

static int bench(void) {
    /* weights in L2 (the arithmetic's cost), qwen3-0.6b's MLP up (1024 -> 3072: 6 MB in bf16, in L3), gpt-oss-20b's
     * expert fc1 (2880 -> 2 x 2880: 33 MB in bf16); one row of A (decode) and prompts */
    static const Shape shapes[] = {{"L2", 1, 1024, 256},      {"decode", 1, 1024, 3072}, {"decode", 1, 2880, 5760},
                                   {"L2", 4, 1024, 256},      {"prompt", 128, 1024, 3072}, {"prompt", 32, 2880, 5760}};
    const double w0 = clock_s(CLOCK_MONOTONIC);
    const uint64_t c0 = __rdtsc();
    while (clock_s(CLOCK_MONOTONIC) - w0 < 0.2) {}
    tsc_hz = (double)(__rdtsc() - c0) / (clock_s(CLOCK_MONOTONIC) - w0);
    printf("TSC %.3f GHz\n", tsc_hz / 1e9);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const Shape *sh = &shapes[si];
        const int64_t m = sh->m, k = sh->k, n = sh->n, s = (k + 255) / 256;
        Ctx c = {sh, take(sizeof(float) * (size_t)(m * k + n * s)), mx_pack_alloc(m, k), take(sizeof(float) * (size_t)(m * n)),
                 take(sizeof(float) * (size_t)(m * s)), take((size_t)(n * (s * MX_Q4_BYTES > k / 2 + k / 32 ? s * MX_Q4_BYTES : k))),
                 take((size_t)(n * k / 32)), take(sizeof(uint16_t) * (size_t)(n * k)), take((size_t)(m * s * 256)),
                 take(sizeof(int16_t) * (size_t)(m * s * 8)), aligned_alloc(64, (size_t)(m * s * 320))};
        for (int64_t i = 0; i < m * k + n * s; i++) c.a[i] = 0.01f * next_normal() + (i >= m * k ? 0.02f : 0.0f);
        for (int64_t i = 0; i < n * s * MX_Q4_BYTES || i < n * k / 2; i++) c.b8[i] = (uint8_t)next_u32();
        for (int64_t i = 0; i < n * k / 32; i++) c.s8[i] = (uint8_t)(120 + next_u32() % 8);
        for (int64_t i = 0; i < n * k; i++) c.w16[i] = (uint16_t)(0x3C00 + next_u32() % 0x800);
        mx_q4_activations(c.a, m, k, s, c.qa, c.da, c.bs);
        for (int isa = MX_ISA_C; isa <= MX_ISA_AVX512; isa++) {
            if (mx_set_isa(isa) != isa) continue;
            if (k % 32 == 0) bench_one("mxfp4", sh, isa, (double)n * k * 17 / 32, run_mxfp4, &c);
            bench_one("bf16", sh, isa, (double)n * k * 2, run_bf16, &c);
            bench_one("q4", sh, isa, (double)n * s * (MX_Q4_BYTES + 4), run_q4, &c);
        }
        free(c.a); free(c.at); free(c.y); free(c.da); free(c.b8); free(c.s8); free(c.w16); free(c.qa); free(c.bs); free(c.q4p);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "check") == 0) return check();
    if (argc == 2 && strcmp(argv[1], "bench") == 0) return bench();
    fprintf(stderr, "usage: %s check|bench\n", argv[0]);
    return 2;
}
