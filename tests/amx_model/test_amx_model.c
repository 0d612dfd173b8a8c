/* cpu-amx on the tile model (tests/amx_model): the AMX sources compiled with -DCF_AMX_MODEL, so
 * their tile operations run in software while everything else (AVX-512 softmax and packing, the
 * shared drivers, dispatch) is the library's own code. Checks, in order: the model against hand
 * computations (loads, stores, the dot products' rounding and denormals, the faults a CPU would
 * raise); the tile GEMM and the transpose against plain loops; then the attention grid forward
 * and backward, bf16 and fp16, every mask feature, through `cpu-amx` forced, with no model fault
 * allowed and the tile multiplies counted; the one-pass backward; odd block shapes; fp16 without
 * AMX-FP16; and the backward bit-identical for 1, 2 and 3 threads.
 * This proves the blocking, layouts and VNNI packing on any AVX-512 machine. It does not prove the
 * instructions' encoding or the hardware's behaviour: that needs an AMX machine
 * (src/cpu/x86/amx.c). CFLASH_TEST_LEVEL=1 runs the fuller grid. Exit 77 (skipped) without AVX-512
 * BF16. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amx_model.h"
#include "common/attn_grid.h"
#include "cpu/attn_cpu.h"
#include "cpu/x86/amx_attn.h"
#include "cpu/x86/amx_tiles.h"
#include "probe/cpu_features.h"

static uint64_t rng = 88172645463325252ull;
static uint32_t next(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float uniform(void) { /* [-1, 1) */
    return (float)(next() % 65536) / 32768.0f - 1.0f;
}

static void expect_no_faults(const char* what) {
    char msg[256];
    const long n = cf_amx_model_faults(msg, sizeof msg);
    CHECK_MSG(n == 0, "%s: %ld tile faults, first: %s", what, n, msg);
}

/* ---- The model itself -------------------------------------------------------------------------
 */

static void test_model_load_store(void) {
    cf_amx_model_reset();
    cf_amx_tilecfg cfg;
    cf_amx_tilecfg_fill(&cfg, 1, 3, 12); /* tmm0: 3 rows x 12 bytes */
    cf_amx_model_ldtilecfg(&cfg);
    unsigned char src[3 * 20], dst[4 * 16];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)(i + 1);
    memset(dst, 0xee, sizeof dst);
    cf_amx_model_tileloadd(0, src, 20);
    cf_amx_model_tilestored(0, dst, 16);
    int ok = 1;
    for (int r = 0; r < 4; r++)
        for (int x = 0; x < 16; x++) {
            const unsigned char want = r < 3 && x < 12 ? src[r * 20 + x] : 0xee;
            ok &= dst[r * 16 + x] == want;
        }
    CHECK_MSG(ok, "tileloadd/tilestored with strides 20/16 of a 3 x 12-byte tile");
    cf_amx_model_tilezero(0);
    cf_amx_model_tilestored(0, dst, 16);
    CHECK(dst[0] == 0 && dst[11] == 0 && dst[12] == 0xee);
    expect_no_faults("load/store");
    cf_amx_model_tileloadd(3, src, 20); /* tmm3 is not configured */
    CHECK(cf_amx_model_faults(NULL, 0) == 1);
    cf_amx_model_tilerelease();
    cf_amx_model_tilezero(0); /* nothing configured after release */
    CHECK(cf_amx_model_faults(NULL, 0) == 2);
    cf_amx_model_reset();
}

static uint16_t bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16); /* the values used here are exact in bf16 */
}

/* One 16 x 16 x 32 tdpbf16ps / tdpfp16ps on random values against double sums, and the
 * denormal rules: bf16 inputs are zero when denormal, fp16 ones are not; results are flushed. */
static void test_model_dot(void) {
    cf_amx_model_reset();
    cf_amx_tilecfg cfg;
    cf_amx_tilecfg_fill(&cfg, 3, 16, 64);
    cf_amx_model_ldtilecfg(&cfg);
    for (int fp16 = 0; fp16 < 2; fp16++) {
        uint16_t A[16][32], B[16][32];
        float C[16][16], A32[16][32], B32[16][32];
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 32; j++) {
                A32[i][j] = uniform(), B32[i][j] = uniform();
                A[i][j] = fp16 ? cf_f32_to_f16(A32[i][j]) : cf_f32_to_bf16(A32[i][j]);
                B[i][j] = fp16 ? cf_f32_to_f16(B32[i][j]) : cf_f32_to_bf16(B32[i][j]);
                A32[i][j] = fp16 ? cf_f16_to_f32(A[i][j]) : cf_bf16_to_f32(A[i][j]);
                B32[i][j] = fp16 ? cf_f16_to_f32(B[i][j]) : cf_bf16_to_f32(B[i][j]);
            }
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++)
                C[i][j] = 0.25f * (float)(i - j);
        cf_amx_model_tileloadd(0, C, 64);
        cf_amx_model_tileloadd(1, A, 64);
        cf_amx_model_tileloadd(2, B, 64);
        if (fp16)
            cf_amx_model_tdpfp16ps(0, 1, 2);
        else
            cf_amx_model_tdpbf16ps(0, 1, 2);
        float out[16][16];
        cf_amx_model_tilestored(0, out, 64);
        double worst = 0;
        for (int m = 0; m < 16; m++)
            for (int n = 0; n < 16; n++) {
                double want = C[m][n];
                for (int k = 0; k < 16; k++) /* B row k holds pairs (2k, 2k + 1) of column n */
                    want += (double)A32[m][2 * k] * B32[k][2 * n] +
                            (double)A32[m][2 * k + 1] * B32[k][2 * n + 1];
                const double e = fabs(out[m][n] - want);
                worst = e > worst ? e : worst;
            }
        CHECK_MSG(worst < 1e-5, "%s vs double: max error %.3g", fp16 ? "tdpfp16ps" : "tdpbf16ps",
                  worst);
    }
    /* Denormals: bf16 0x0001 (denormal) x 2^100 counts as 0; fp16 0x0001 = 2^-24 is kept. */
    uint16_t A[16][32] = {{0}}, B[16][32] = {{0}};
    float C[16][16] = {{0}}, out[16][16];
    A[0][0] = 0x0001, B[0][0] = bf16_of(0x1p100f);
    A[1][0] = bf16_of(0x1p-70f), B[0][1 * 2] = bf16_of(0x1p-70f); /* 2^-140: flushed */
    A[2][0] = bf16_of(0x1p-60f), B[0][2 * 2] = bf16_of(0x1p-60f); /* 2^-120: kept */
    cf_amx_model_tileloadd(0, C, 64);
    cf_amx_model_tileloadd(1, A, 64);
    cf_amx_model_tileloadd(2, B, 64);
    cf_amx_model_tdpbf16ps(0, 1, 2);
    cf_amx_model_tilestored(0, out, 64);
    CHECK_MSG(out[0][0] == 0.0f, "bf16 denormal input: %g, expected 0 (DAZ)", out[0][0]);
    CHECK_MSG(out[1][1] == 0.0f, "fp32 denormal result: %g, expected 0 (FTZ)", out[1][1]);
    CHECK_MSG(out[2][2] == 0x1p-120f, "2^-120 result: %g", out[2][2]);
    memset(A, 0, sizeof A), memset(B, 0, sizeof B);
    A[0][0] = 0x0001, B[0][0] = cf_f32_to_f16(0x1p10f); /* fp16 2^-24 * 2^10 = 2^-14 */
    cf_amx_model_tileloadd(0, C, 64);
    cf_amx_model_tileloadd(1, A, 64);
    cf_amx_model_tileloadd(2, B, 64);
    cf_amx_model_tdpfp16ps(0, 1, 2);
    cf_amx_model_tilestored(0, out, 64);
    CHECK_MSG(out[0][0] == 0x1p-14f, "fp16 denormal input: %g, expected 2^-14", out[0][0]);
    expect_no_faults("dot products");
    /* What a CPU faults on: a repeated register; shapes that do not chain. */
    cf_amx_model_tdpbf16ps(0, 0, 2);
    CHECK(cf_amx_model_faults(NULL, 0) == 1);
    cf_amx_tilecfg_fill(&cfg, 3, 16, 64);
    cfg.colsb[1] = 32; /* A: 8 pairs per row, B: 16 rows */
    cf_amx_model_ldtilecfg(&cfg);
    cf_amx_model_tdpbf16ps(0, 1, 2);
    CHECK(cf_amx_model_faults(NULL, 0) == 2);
    cf_amx_model_tilerelease();
    cf_amx_model_reset();
}

/* ---- The tile GEMM and the transpose ----------------------------------------------------------
 */

/* Whether C's columns [N, ldc) of its M rows still hold W's values. */
static int cols_untouched(const float* C, const float* W, int M, int N, int64_t ldc) {
    for (int m = 0; m < M; m++)
        for (int64_t n = N; n < ldc; n++)
            if (C[m * ldc + n] != W[m * ldc + n]) return 0;
    return 1;
}

static void test_mm(void) {
    cf_amx_model_reset();
    cf_amx_thread_begin();
    const int shapes[][5] = {/* mt, nt, kc0, kc1, acc */
                             {1, 1, 0, 1, 0}, {2, 2, 0, 3, 0}, {3, 1, 1, 3, 1},
                             {1, 3, 0, 2, 1}, {3, 5, 2, 4, 0}, {2, 3, 1, 1, 1}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int fp16 = 0; fp16 < 2; fp16++) {
            const int mt = shapes[si][0], nt = shapes[si][1], kc0 = shapes[si][2],
                      kc1 = shapes[si][3], acc = shapes[si][4];
            const int M = 16 * mt, N = 16 * nt, K = 32 * 4, lda = K + 8, ldb = N + 3, ldc = N + 5;
            uint16_t* A = malloc(sizeof *A * (size_t)(M * lda));
            uint32_t* B = malloc(sizeof *B * (size_t)(K / 2 * ldb));
            float *C = malloc(sizeof *C * (size_t)(M * ldc)),
                  *W = malloc(sizeof *W * (size_t)(M * ldc));
            for (int i = 0; i < M * lda; i++)
                A[i] = fp16 ? cf_f32_to_f16(uniform()) : cf_f32_to_bf16(uniform());
            for (int i = 0; i < K / 2 * ldb; i++)
                B[i] = fp16 ? (uint32_t)cf_f32_to_f16(uniform()) |
                                  (uint32_t)cf_f32_to_f16(uniform()) << 16
                            : (uint32_t)cf_f32_to_bf16(uniform()) |
                                  (uint32_t)cf_f32_to_bf16(uniform()) << 16;
            for (int i = 0; i < M * ldc; i++)
                C[i] = W[i] = uniform();
            cf_amx_mm(C, ldc, A, lda, B, ldb, mt, nt, kc0, kc1, acc, fp16);
            double worst = 0;
            const int outside = cols_untouched(C, W, M, N, ldc);
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double want = acc ? W[m * ldc + n] : 0.0;
                    for (int k = 32 * kc0; k < 32 * kc1; k++) {
                        const uint16_t a = A[m * lda + k];
                        const uint16_t b = (uint16_t)(B[(k / 2) * ldb + n] >> (16 * (k % 2)));
                        want += (double)(fp16 ? cf_f16_to_f32(a) : cf_bf16_to_f32(a)) *
                                (fp16 ? cf_f16_to_f32(b) : cf_bf16_to_f32(b));
                    }
                    const double e = fabs(C[m * ldc + n] - want);
                    worst = e > worst ? e : worst;
                }
            CHECK_MSG(worst < 1e-4 && outside,
                      "cf_amx_mm %dx%d tiles, chunks [%d, %d), acc %d, %s: "
                      "max error %.3g, outside %s",
                      mt, nt, kc0, kc1, acc, fp16 ? "fp16" : "bf16", worst,
                      outside ? "untouched" : "written");
            free(A), free(B), free(C), free(W);
        }
    /* fp16 operands as bf16 pairs (cf_amx_split16 then cf_amx_mm2), against the fp16 values */
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int mt = shapes[si][0], nt = shapes[si][1], kc0 = shapes[si][2], kc1 = shapes[si][3],
                  acc = shapes[si][4];
        const int M = 16 * mt, N = 16 * nt, K = 32 * 4, lda = K + 8, ldb = N + 3, ldc = N + 5;
        uint16_t *A = malloc(sizeof *A * (size_t)(M * lda)),
                 *X = malloc(sizeof *X * (size_t)(M * lda)),
                 *Al = malloc(sizeof *Al * (size_t)(M * lda));
        uint32_t *B = malloc(sizeof *B * (size_t)(K / 2 * ldb)),
                 *Y = malloc(sizeof *Y * (size_t)(K / 2 * ldb)),
                 *Bl = malloc(sizeof *Bl * (size_t)(K / 2 * ldb));
        float *C = malloc(sizeof *C * (size_t)(M * ldc)),
              *W = malloc(sizeof *W * (size_t)(M * ldc));
        for (int i = 0; i < M * lda; i++) /* (wide range: the low parts carry 3 bits of 11) */
            A[i] = X[i] = cf_f32_to_f16(uniform() * 300.0f);
        for (int i = 0; i < K / 2 * ldb; i++)
            B[i] = Y[i] = (uint32_t)cf_f32_to_f16(uniform()) | (uint32_t)cf_f32_to_f16(uniform())
                                                                   << 16;
        for (int i = 0; i < M * ldc; i++)
            C[i] = W[i] = uniform();
        cf_amx_split16(X, Al, M, K, lda);
        cf_amx_split16((uint16_t*)Y, (uint16_t*)Bl, K / 2, 2 * N, 2 * ldb);
        cf_amx_mm2(C, ldc, X, Al, lda, Y, Bl, ldb, mt, nt, kc0, kc1, acc, 1);
        double worst = 0;
        const int outside = cols_untouched(C, W, M, N, ldc);
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double want = acc ? W[m * ldc + n] : 0.0, mag = fabs(want);
                for (int k = 32 * kc0; k < 32 * kc1; k++) {
                    const double x = cf_f16_to_f32(A[m * lda + k]),
                                 y = cf_f16_to_f32(
                                     (uint16_t)(B[(k / 2) * ldb + n] >> (16 * (k % 2))));
                    want += x * y, mag += fabs(x * y);
                }
                const double e = fabs(C[m * ldc + n] - want) / (mag > 1 ? mag : 1);
                worst = e > worst ? e : worst;
            }
        /* (the left-out low x low products: 2^-18 of each term at most) */
        CHECK_MSG(worst < 1e-5 && outside,
                  "cf_amx_mm2 (split) %dx%d tiles, chunks [%d, %d), acc %d: max relative error "
                  "%.3g, outside %s",
                  mt, nt, kc0, kc1, acc, worst, outside ? "untouched" : "written");
        free(A), free(X), free(Al), free(B), free(Y), free(Bl), free(C), free(W);
    }
    const int rows = 48, cols = 32, lds = 37, ldd = 53;
    uint32_t *src = malloc(sizeof *src * (size_t)(rows * lds)),
             *dst = calloc((size_t)(cols * ldd), sizeof *dst);
    for (int i = 0; i < rows * lds; i++)
        src[i] = next();
    cf_amx_t32(dst, ldd, src, lds, rows, cols);
    int ok = 1;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            ok &= dst[c * ldd + r] == src[r * lds + c];
    CHECK_MSG(ok, "cf_amx_t32 48 x 32");
    free(src), free(dst);
    cf_amx_thread_end();
    expect_no_faults("tile GEMM");
    CHECK(cf_amx_model_dp_count() > 0);
    cf_amx_model_reset();
}

/* cf_amx_gemm_bf16 (the table's bf16 pairs GEMM) on whole tiles read in place and on edges
 * padded through buffers, and its out-of-memory path cf_amx_gemm_bf16_pieces, A by rows and
 * transposed (csa != 1), acc 0 and 1: against double sums, C's columns past N untouched. */
/* A 16-bit value of the pairs GEMMs' operands: bf16, or fp16 with its full 11 bits. */
static uint16_t half_of(int f16, float x) {
    return f16 ? cf_f32_to_f16(x) : cf_f32_to_bf16(x);
}
static double half_value(int f16, uint16_t h) {
    return f16 ? cf_f16_to_f32(h) : cf_bf16_to_f32(h);
}

/* The pairs GEMMs (the dbias tasks' products) on every shape kind against exact sums of the
 * pairs' products: bf16 through panels and through 16 x 16 pieces (error of fp32 sums only), fp16
 * with B prepared, on tdpfp16ps (model with AMX-FP16) and as split bf16 parts (without; each term
 * may lose its low parts' product, 2^-18 of it), so the bound is 2^-16 of the sum of |terms| --
 * an operand's low part left out costs about 2^-9 of its terms. Columns past N stay untouched. */
typedef void (*gemm_fn)(int64_t, int64_t, int64_t, const uint32_t*, int64_t, int64_t,
                        const uint32_t*, int64_t, float*, int64_t, int);

/* cf_amx_pairs_f16 as one call: B prepared, then the product, both buffers poisoned first. */
static void gemm_f16(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,
                     const uint32_t* B, int64_t ldb, float* C, int64_t ldc, int acc) {
    const cf_attn_pairs_gemm* g = &cf_amx_pairs_f16;
    const size_t nb = (g->b_bytes(N, P) + 63) / 64 * 64,
                 ns = (g->scratch_bytes(M, N, P) + 63) / 64 * 64;
    char *pb = aligned_alloc(64, nb + 64), *w = aligned_alloc(64, ns + 64);
    CHECK(pb != NULL && w != NULL);
    if (pb && w) {
        memset(pb, 0xff, nb + 64), memset(w, 0xff, ns + 64);
        g->prep_b(N, P, B, ldb, pb);
        g->run(M, N, P, A, rsa, csa, pb, C, ldc, acc, w);
    }
    free(pb), free(w);
}

static void test_gemm_pairs(void) {
    static const struct {
        const char* name;
        gemm_fn fn;
        int f16, amx_fp16;
    } kinds[] = {{"cf_amx_gemm_bf16", cf_amx_gemm_bf16, 0, 1},
                 {"cf_amx_gemm_bf16_pieces", cf_amx_gemm_bf16_pieces, 0, 1},
                 {"cf_amx_pairs_f16 (split)", gemm_f16, 1, 0},
                 {"cf_amx_pairs_f16 (tdpfp16ps)", gemm_f16, 1, 1}};
    const int shapes[][5] = {/* M, N, P, csa 1 (0: A transposed), acc */
                             {32, 48, 64, 1, 0}, {16, 16, 16, 1, 1}, {37, 21, 24, 1, 0},
                             {5, 70, 9, 1, 1},   {48, 32, 32, 0, 0}, {19, 3, 40, 0, 1},
                             {16, 16, 0, 1, 0}};
    for (size_t ki = 0; ki < sizeof kinds / sizeof kinds[0]; ki++) {
        const int f16 = kinds[ki].f16;
        cf_amx_model_reset();
        cf_amx_model_set_fp16(kinds[ki].amx_fp16);
        cf_amx_thread_begin();
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int* sh = shapes[si];
            const int M = sh[0], N = sh[1], P = sh[2], rows = sh[3], acc = sh[4];
            const int64_t rsa = rows ? P + 3 : 1, csa = rows ? 1 : M + 2, ldb = N + 7, ldc = N + 5;
            const int64_t na = rows ? M * rsa : (P > 0 ? P : 1) * csa;
            uint32_t *A = malloc(sizeof *A * (size_t)na),
                     *B = malloc(sizeof *B * (size_t)((P > 0 ? P : 1) * ldb));
            float *C = malloc(sizeof *C * (size_t)(M * ldc)),
                  *W = malloc(sizeof *W * (size_t)(M * ldc));
            for (int64_t i = 0; i < na; i++)
                A[i] = (uint32_t)half_of(f16, uniform()) | (uint32_t)half_of(f16, uniform()) << 16;
            for (int64_t i = 0; i < (P > 0 ? P : 1) * ldb; i++)
                B[i] = (uint32_t)half_of(f16, uniform()) | (uint32_t)half_of(f16, uniform()) << 16;
            for (int64_t i = 0; i < M * ldc; i++)
                C[i] = W[i] = uniform();
            kinds[ki].fn(M, N, P, A, rsa, csa, B, ldb, C, ldc, acc);
            double worst = 0; /* error over bound */
            const int outside = cols_untouched(C, W, M, N, ldc);
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double want = acc ? W[m * ldc + n] : 0.0, mag = fabs(want);
                    for (int p = 0; p < P; p++) {
                        const uint32_t a = A[m * rsa + p * csa], b = B[p * ldb + n];
                        const double t0 = half_value(f16, (uint16_t)a) *
                                          half_value(f16, (uint16_t)b),
                                     t1 = half_value(f16, (uint16_t)(a >> 16)) *
                                          half_value(f16, (uint16_t)(b >> 16));
                        want += t0 + t1, mag += fabs(t0) + fabs(t1);
                    }
                    const double e = fabs(C[m * ldc + n] - want) / (0x1p-16 * mag + 1e-6);
                    worst = e > worst ? e : worst;
                }
            CHECK_MSG(worst <= 1.0 && outside,
                      "%s M %d N %d P %d %s acc %d: error %.3g of the bound, outside %s",
                      kinds[ki].name, M, N, P, rows ? "rows" : "transposed", acc, worst,
                      outside ? "untouched" : "written");
            free(A), free(B), free(C), free(W);
        }
        cf_amx_thread_end();
        expect_no_faults(kinds[ki].name);
        CHECK(cf_amx_model_dp_count() > 0);
    }
    cf_amx_model_set_fp16(1);
    cf_amx_model_reset();
}

/* cf_amx_split16 on every fp16 value: high + low is the value exactly, the high part its bf16
 * rounding, the low part 0 for infinities and NaN; elements past cols untouched. */
static void test_split16(void) {
    enum { N = 65536 + 37 };
    uint16_t *x = malloc(sizeof *x * N), *lo = malloc(sizeof *lo * N);
    for (int i = 0; i < N; i++)
        x[i] = (uint16_t)i, lo[i] = 0xdead;
    cf_amx_split16(x, lo, 1, 65536 + 5, N); /* (a masked tail of 5) */
    long bad = 0;
    for (int i = 0; i < 65536 + 5; i++) {
        const float v = cf_f16_to_f32((uint16_t)i), h = cf_bf16_to_f32(x[i]),
                    l = cf_bf16_to_f32(lo[i]);
        if (isfinite(v))
            bad += (double)h + (double)l != (double)v || x[i] != cf_f32_to_bf16(v);
        else
            bad += lo[i] != 0 || (isnan(v) ? !isnan(h) : h != v);
    }
    for (int i = 65536 + 5; i < N; i++)
        bad += x[i] != (uint16_t)i || lo[i] != 0xdead;
    CHECK_MSG(bad == 0, "cf_amx_split16: %ld of 65536 fp16 values wrong", bad);
    free(x), free(lo);
}

/* ---- Attention through cpu-amx ----------------------------------------------------------------
 */

static const unsigned lowp = (1u << CF_BF16) | (1u << CF_F16);

static void grid(int level, int bwd, int max_cases, unsigned dtypes, const char* what) {
    cf_amx_model_reset();
    attn_grid_opts o;
    memset(&o, 0, sizeof o);
    o.level = level;
    o.backend = "cpu-amx";
    o.bwd = bwd;
    o.threads = 2;
    o.dtypes = dtypes;
    o.max_cases = max_cases;
    int ran = 0, skipped = 0;
    attn_grid_run(&o, &ran, &skipped);
    CHECK_MSG(ran > 0 && skipped == 0, "%s: ran %d, skipped %d", what, ran, skipped);
    expect_no_faults(what);
    const long dps = cf_amx_model_dp_count();
    CHECK_MSG(dps > 0, "%s: no tile multiply ran", what);
    printf("%s: %d cases, %ld modelled tile multiplies\n", what, ran, dps);
}

/* Block shapes that are no multiple of the tiles (the padding to 16 and 32 on every side), larger
 * than the sequences, and smaller than a GQA group. The 1-digit ones pad so much that only the
 * first cases run. */
static void test_blocks(void) {
    static const struct {
        cf_attn_blocks b;
        int max_cases;
    } shapes[] = {
        {{7, 5, 3, 9, "test"}, 12}, {{33, 17, 20, 48, "test"}, 0}, {{200, 96, 64, 256, "test"}, 0}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const cf_attn_blocks* b = &shapes[i].b;
        cf_attn_cpu_set_blocks(b);
        char what[96];
        snprintf(what, sizeof what, "blocks %lld,%lld,%lld,%lld", (long long)b->q, (long long)b->k,
                 (long long)b->bwd_q, (long long)b->bwd_k);
        grid(0, 1, shapes[i].max_cases, lowp, what);
        if (!shapes[i].max_cases) attn_grid_one_pass("cpu-amx", lowp, 2);
        expect_no_faults(what);
    }
    cf_attn_cpu_set_blocks(NULL);
}

static void test_far_rows(void);

/* fp16 where the CPU lacks AMX-FP16: on the tiles as bf16 pairs, no tdpfp16ps (the model faults
 * one), the grid forward and backward, the one-pass backward and the rows of far |lse|. */
static void test_fp16_without_amx_fp16(void) {
    cf_amx_model_set_fp16(0);
    grid(0, 1, 0, 1u << CF_F16, "fp16 without AMX-FP16");
    cf_amx_model_reset();
    attn_grid_one_pass("cpu-amx", 1u << CF_F16, 2);
    expect_no_faults("fp16 without AMX-FP16, one-pass backward");
    test_far_rows();
    cf_amx_model_set_fp16(1);
}

/* The backward gives the same bits for 1, 2 and 3 threads, in the one-pass mode (many units) and
 * the three-pass one (one unit). */
static void test_deterministic(void) {
    for (int mode = 0; mode < 2; mode++)
        for (int dt = 0; dt < 2; dt++) {
            attn_case c;
            attn_case_init(&c);
            c.dtype = dt ? CF_F16 : CF_BF16;
            c.B = mode ? 3 : 1, c.H = 4, c.Hk = mode ? 4 : 1, c.Sq = 150, c.Sk = 133;
            c.D = c.Dv = 48;
            c.window_left = 60, c.dropout_p = 0.1f, c.softcap = 2.0f;
            c.seed = 7 + (uint64_t)(mode * 2 + dt);
            attn_problem* p = attn_problem_new(&c);
            void* first[3] = {NULL, NULL, NULL};
            int same = 1;
            for (int threads = 1; threads <= 3; threads++) {
                cflash_context* ctx = NULL;
                cflash_context_create(&ctx);
                cflash_context_set_backend(ctx, "cpu-amx");
                cflash_context_set_threads(ctx, threads);
                CHECK_OK(attn_problem_run_bwd(ctx, p));
                tt_tensor* g[3] = {&p->dq, &p->dk, &p->dv};
                for (int i = 0; i < 3; i++) {
                    if (threads == 1) {
                        first[i] = malloc(g[i]->bytes);
                        memcpy(first[i], g[i]->base, g[i]->bytes);
                    } else {
                        same &= !memcmp(first[i], g[i]->base, g[i]->bytes);
                    }
                }
                cflash_context_free(ctx);
            }
            char msg[1024];
            CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "%s", msg);
            CHECK_MSG(same, "%s backward, %s mode: results differ between 1, 2 and 3 threads",
                      dt ? "fp16" : "bf16", mode ? "one-pass" : "three-pass");
            for (int i = 0; i < 3; i++)
                free(first[i]);
            attn_problem_free(p);
        }
    expect_no_faults("determinism");
}

/* Rows of far |lse| (attn_fill_far_qk: q.k ~ 2e9, every score of a row rounds to one value) on
 * the tiles: r from the tiles' own scores (amx_bwd.c far_rows), ALiBi and a causal window, both
 * dtypes, one-pass and three-pass. */
static void test_far_rows(void) {
    for (int dt = 0; dt < 2; dt++)
        for (int mode = 0; mode < 2; mode++) {
            attn_case c;
            attn_case_init(&c);
            c.dtype = dt ? CF_F16 : CF_BF16;
            c.B = mode ? 4 : 1, c.H = 4, c.Hk = mode ? 4 : 1, c.Sq = 70, c.Sk = 150;
            c.D = c.Dv = 32, c.alibi = ATTN_ALIBI_H, c.causal = 1, c.window_left = 50;
            c.seed = 31 + (uint64_t)(dt * 2 + mode);
            attn_problem* p = attn_problem_new(&c);
            CHECK(p != NULL);
            if (!p) continue;
            attn_fill_far_qk(p);
            attn_problem_refresh_inputs(p);
            cflash_context* ctx = NULL;
            cflash_context_create(&ctx);
            cflash_context_set_backend(ctx, "cpu-amx");
            cflash_context_set_threads(ctx, 2);
            char msg[1024];
            CHECK_OK(attn_problem_run_bwd(ctx, p));
            CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "far rows: %s", msg);
            CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "far rows: %s", msg);
            cflash_context_free(ctx);
            attn_problem_free(p);
        }
    expect_no_faults("far rows");
}

/* A context that runs everything on cpu-amx. */
static cflash_context* amx_context(void) {
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, "cpu-amx"));
    return ctx;
}

/* Runs p's forward (bwd 0) or backward (its forward already run) on ctx: some of its own tile
 * multiplies counted by the model, and the results against the oracle. */
static void run_on_tiles(cflash_context* ctx, attn_problem* p, int bwd, const char* what) {
    const long before = cf_amx_model_dp_count();
    CHECK_OK(bwd ? attn_problem_run_bwd(ctx, p) : attn_problem_run_fwd(ctx, p));
    CHECK_MSG(cf_amx_model_dp_count() > before, "%s: no tile multiply", what);
    char msg[1024];
    CHECK_MSG(bwd ? attn_problem_check_bwd(p, msg, sizeof msg)
                  : attn_problem_check_fwd(p, msg, sizeof msg),
              "%s: %s", what, msg);
}

/* Explain mode names no call as served through another backend's code: a backward with dbias and
 * paged K/V both ways run on the tiles (their multiplies counted by the model). */
static void test_every_call_on_tiles(void) {
    static const struct {
        int dbias, page, bwd;
    } cases[] = {{1, 0, 1}, {0, 0, 1}, {1, 0, 0}, {0, 16, 0}, {0, 16, 1}, {0, 5, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        attn_case c;
        attn_case_init(&c);
        c.dtype = CF_BF16, c.B = 1, c.H = 2, c.Sq = 40, c.Sk = 48, c.D = c.Dv = 32;
        c.bias = cases[i].page ? ATTN_BC_NONE : ATTN_BC_11, c.dbias = cases[i].dbias;
        c.page = cases[i].page;
        c.varlen = cases[i].page > 0;
        if (c.varlen) c.seqlens_q[0] = 40, c.seqlens_k[0] = 48;
        attn_problem* p = attn_problem_new(&c);
        CHECK(p != NULL);
        if (!p) continue;
        cflash_context* ctx = amx_context();
        if (cases[i].bwd) CHECK_OK(attn_problem_run_fwd(ctx, p));
        char buf[1024] = "";
        CHECK_OK(cflash_context_set_explain(ctx, buf, sizeof buf));
        CHECK_OK(cases[i].bwd ? attn_problem_call_bwd(ctx, p, NULL)
                              : attn_problem_call_fwd(ctx, p, NULL));
        CHECK_MSG(strstr(buf, "cpu-amx: OKAY\n") != NULL, "case %zu: explain %s", i, buf);
        char what[32];
        snprintf(what, sizeof what, "case %zu", i);
        run_on_tiles(ctx, p, cases[i].bwd, what); /* and for real: on the tiles */
        cflash_context_free(ctx);
        attn_problem_free(p);
    }
}

/* A backward with dbias runs on the tiles (tile multiplies in the backward itself), its dbias
 * summed by the tiled backward's tasks beside them: every gradient against the oracle, for a
 * bias per (batch, head) and one broadcast over both, bf16 and fp16 (as bf16 pairs too). */
static void test_dbias_on_tiles(void) {
    for (int k = 0; k < 6; k++) {
        attn_case c;
        attn_case_init(&c);
        c.dtype = k % 3 == 0 ? CF_BF16 : CF_F16;
        c.B = 2, c.H = 4, c.Hk = 2, c.Sq = 70, c.Sk = 90, c.D = c.Dv = 48;
        c.bias = k < 3 ? ATTN_BC_BH : ATTN_BC_11, c.dbias = 1, c.bias_f32 = k % 2;
        c.causal = k == 4;
        c.seed = 31 + (uint64_t)k;
        cf_amx_model_set_fp16(k % 3 != 2);
        attn_problem* p = attn_problem_new(&c);
        CHECK(p != NULL);
        if (!p) continue;
        cflash_context* ctx = amx_context();
        CHECK_OK(cflash_context_set_threads(ctx, 2));
        CHECK_OK(attn_problem_run_fwd(ctx, p));
        char what[32];
        snprintf(what, sizeof what, "dbias case %d", k);
        run_on_tiles(ctx, p, 1, what);
        cflash_context_free(ctx);
        attn_problem_free(p);
    }
    cf_amx_model_set_fp16(1);
    expect_no_faults("dbias on the tiles");
}

/* The dbias tasks' own products run on the tiles too: a backward asking for dbias takes at least
 * their two products' worth of tile multiplies (S^T and dP^T over every block of rows and keys)
 * more than the same backward without, for bf16 and for fp16 as tdpfp16ps or as split parts. */
static void test_dbias_products_on_tiles(void) {
    for (int k = 0; k < 3; k++) {
        long n[2] = {0, 0};
        attn_case c;
        for (int db = 0; db < 2; db++) {
            attn_case_init(&c);
            c.dtype = k == 0 ? CF_BF16 : CF_F16;
            c.B = 1, c.H = 2, c.Sq = 70, c.Sk = 90, c.D = c.Dv = 48;
            c.bias = ATTN_BC_BH, c.dbias = db, c.seed = 77;
            cf_amx_model_set_fp16(k != 2);
            attn_problem* p = attn_problem_new(&c);
            CHECK(p != NULL);
            if (!p) continue;
            cflash_context* ctx = amx_context();
            CHECK_OK(attn_problem_run_fwd(ctx, p));
            const long before = cf_amx_model_dp_count();
            CHECK_OK(attn_problem_run_bwd(ctx, p));
            n[db] = cf_amx_model_dp_count() - before;
            char msg[1024];
            CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "dbias %d kind %d: %s", db, k,
                      msg);
            cflash_context_free(ctx);
            attn_problem_free(p);
        }
        const long least = (long)c.B * c.H * ((c.Sq + 15) / 16) * ((c.Sk + 15) / 16) *
                           ((c.D + 31) / 32) * 2 * (k == 2 ? 3 : 1);
        CHECK_MSG(n[1] - n[0] >= least,
                  "%s dbias: %ld tile multiplies, %ld without dbias (want %ld more at least)",
                  k == 0   ? "bf16"
                  : k == 1 ? "fp16"
                           : "fp16 as bf16 parts",
                  n[1], n[0], least);
    }
    cf_amx_model_set_fp16(1);
    expect_no_faults("dbias products on the tiles");
}

int main(void) {
    const cf_cpu_info* ci = cf_cpu();
    if (!ci->avx512f || !ci->avx512bw || !ci->avx512vl || !ci->avx512dq || !ci->avx512bf16 ||
        !ci->fma || !ci->f16c) {
        printf("skipped: the modelled kernels' AVX-512 parts need AVX-512 F/BW/VL/DQ/BF16\n");
        return 77;
    }
    const char* lv = getenv("CFLASH_TEST_LEVEL");
    const int level = lv ? atoi(lv) : 0;
    test_model_load_store();
    test_model_dot();
    test_mm();
    test_gemm_pairs();
    test_split16();
    if (level >= 0) grid(level, 0, 0, lowp, "grid forward"); /* reduced: fwd+bwd checks both */
    grid(level, 1, 0, lowp, "grid forward and backward");
    cf_amx_model_reset();
    attn_grid_one_pass("cpu-amx", lowp, 2);
    expect_no_faults("one-pass backward");
    test_blocks();
    test_fp16_without_amx_fp16();
    test_deterministic();
    test_far_rows();
    test_every_call_on_tiles();
    test_dbias_on_tiles();
    test_dbias_products_on_tiles();
    return tt_summary();
}
