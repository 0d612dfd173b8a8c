/* The GEMMs of every CPU kernel table this CPU can run (src/cpu/attn_cpu.h: gemm_f32 and, where
 * the ISA has them, the bf16 / fp16 pair products) against an fp64 sum:
 * - the sum over K is two-level (CF_ATTN_GEMM_KC): K = 4096 terms, a leading 1 then terms of half
 *   an ulp of 1 that one sequential sum loses every one of (ties to even); the chunks keep them;
 * - random fresh inputs: odd M, N (vector tails), K past several chunks, acc 0 and 1, A read
 *   transposed, within the two-level worst-case bound, columns past N (ldc padding) untouched;
 * - K = 0 writes C (zeros, or C unchanged with acc).
 * And the softmax's exp (exp_cols, exp_row) over [-160, 0], -inf and NaN: close to exp,
 * never a subnormal (Intel's FMAs take a microcode assist for each), 0 only below 2^-63, and on
 * x86 0 below 2^-64 (src/cpu/simd_vec.h, CF_EXP2_LO). And bias_t (an fp32 bias added to S^T read
 * along its rows) on every size up to two pieces plus tails: each element as one fp32 add (-inf
 * masking, NaN and +inf scores included), S^T's padding and the rows past nr never written. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"
#include "core/backend.h"
#include "cpu/attn_cpu.h"

extern const cf_impl cf_impl_avx512_attn_fwd, cf_impl_avx2_attn_fwd, cf_impl_neon_attn_fwd,
    cf_impl_sve_attn_fwd, cf_impl_generic_attn_fwd;

#define SENTINEL 12345.0f

typedef void (*pair_gemm)(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa,
                          int64_t csa, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                          int acc);

/* x, exactly representable in the 16-bit type, as its bits (normal numbers only) */
static uint16_t bits16(float x, int bf16) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if (bf16) return (uint16_t)(u >> 16);
    if (x == 0.0f) return 0;
    const uint32_t e = ((u >> 23) & 0xff) - 127 + 15;
    return (uint16_t)(((u >> 16) & 0x8000) | (e << 10) | ((u >> 13) & 0x3ff));
}
static uint32_t pair16(float lo, float hi, int bf16) {
    return (uint32_t)bits16(lo, bf16) | (uint32_t)bits16(hi, bf16) << 16;
}

/* One dot product of K terms through each GEMM: a leading L, then terms e that one sequential
 * fp32 sum adds to L and loses (e is half an ulp of L: a tie, rounded to L's even mantissa). */
static void test_two_level(const cf_attn_kernels* kk) {
    enum { K = 4096, N = 3 };
    float* a = malloc(sizeof(float) * K);
    float* b = malloc(sizeof(float) * K * N);
    uint32_t* ap = malloc(sizeof(uint32_t) * K);
    uint32_t* bp = malloc(sizeof(uint32_t) * K * N);
    float c[N];
    CHECK(a && b && ap && bp);
    if (!a || !b || !ap || !bp) goto out;
    const float e = ldexpf(1.0f, -25); /* half an ulp of 1 */
    for (int64_t k = 0; k < K; k++) {
        a[k] = k == 0 ? 1.0f : e;
        for (int n = 0; n < N; n++)
            b[k * N + n] = 1.0f;
    }
    const double small = (double)(K - 1) * e; /* what the sequential sum loses */
    kk->gemm_f32(1, N, K, a, K, 1, b, N, c, N, 0);
    for (int n = 0; n < N; n++)
        CHECK_MSG(fabs((double)c[n] - (1.0 + small)) < small / 4,
                  "%s gemm_f32: K = %d sums to 1 + %.4g, expected 1 + %.4g (terms lost)", kk->name,
                  K, (double)c[n] - 1.0, small);
    /* pair products: the leading value in both halves of pair 0, so each half-lane that sums
     * its own elements (NEON's FMLAL) starts from it; bf16 1 + 2^-25, fp16 2048 + 2^-13 */
    for (int t = 0; t < 2; t++) {
        const pair_gemm g = t == 0 ? kk->gemm_bf16 : kk->gemm_f16;
        if (!g) continue;
        const float lead = t == 0 ? 1.0f : 2048.0f, tiny = t == 0 ? e : ldexpf(1.0f, -13);
        for (int64_t p = 0; p < K; p++) {
            ap[p] = p == 0 ? pair16(lead, lead, t == 0) : pair16(tiny, tiny, t == 0);
            for (int n = 0; n < N; n++)
                bp[p * N + n] = pair16(1.0f, 1.0f, t == 0);
        }
        g(1, N, K, ap, K, 1, bp, N, c, N, 0);
        const double lost = 2.0 * (K - 1) * tiny;
        for (int n = 0; n < N; n++)
            CHECK_MSG(fabs((double)c[n] - (2.0 * lead + lost)) < lost / 4,
                      "%s %s: %d pairs sum to %.9g + %.4g, expected + %.4g (terms lost)", kk->name,
                      t == 0 ? "gemm_bf16" : "gemm_f16", K, 2.0 * lead, (double)c[n] - 2.0 * lead,
                      lost);
    }
out:
    free(a), free(b), free(ap), free(bp);
}

/* C (M x N, ldc = N + 3) = acc * C0 + A B on random inputs, A (M x K) stored row-major or
 * transposed; elements of A and B rounded to the pair type when pt is 1 (bf16) or 2 (fp16), K
 * then counted in pairs. Checks |C - fp64| <= (steps per chunk + chunks + 2) u (|acc C0| +
 * sum |a b|), the two-level sum's worst case, and that the padding keeps its sentinel. */
static void check_random(const cf_attn_kernels* kk, int pt, int64_t M, int64_t N, int64_t K,
                         int acc, int trans, uint64_t seed) {
    const int64_t ke = pt ? 2 * K : K, ldc = N + 3; /* elements along K */
    float* a = malloc(sizeof(float) * (size_t)(M * ke));
    float* b = malloc(sizeof(float) * (size_t)(ke * N));
    float* c = malloc(sizeof(float) * (size_t)(M * ldc));
    float* c0 = malloc(sizeof(float) * (size_t)(M * ldc));
    uint32_t* ap = malloc(sizeof(uint32_t) * (size_t)(M * K + 1));
    uint32_t* bp = malloc(sizeof(uint32_t) * (size_t)(K * N + 1));
    CHECK(a && b && c && c0 && ap && bp);
    if (!a || !b || !c || !c0 || !ap || !bp) goto out;
    tt_rng r;
    tt_rng_init(&r, seed + tt_seed_base());
    /* values on a coarse grid (multiples of 1/64 in (-2, 2), not 0), exact in bf16 and fp16 */
    for (int64_t i = 0; i < M * ke; i++)
        a[i] = (float)(((int)(tt_rng_uniform(&r) * 255) - 127) | 1) / 64.0f;
    for (int64_t i = 0; i < ke * N; i++)
        b[i] = (float)(((int)(tt_rng_uniform(&r) * 255) - 127) | 1) / 64.0f;
    for (int64_t i = 0; i < M * ldc; i++)
        c0[i] = i % ldc < N ? (float)(tt_rng_uniform(&r) * 8.0 - 4.0) : SENTINEL;
    memcpy(c, c0, sizeof(float) * (size_t)(M * ldc));
    if (!pt) {
        float* at = malloc(sizeof(float) * (size_t)(M * K));
        CHECK(at != NULL);
        if (!at) goto out;
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < K; k++)
                at[k * M + m] = a[m * K + k];
        if (trans)
            kk->gemm_f32(M, N, K, at, 1, M, b, N, c, ldc, acc);
        else
            kk->gemm_f32(M, N, K, a, K, 1, b, N, c, ldc, acc);
        free(at);
    } else {
        for (int64_t m = 0; m < M; m++)
            for (int64_t p = 0; p < K; p++)
                ap[m * K + p] = pair16(a[m * ke + 2 * p], a[m * ke + 2 * p + 1], pt == 1);
        for (int64_t p = 0; p < K; p++)
            for (int64_t n = 0; n < N; n++)
                bp[p * N + n] = pair16(b[2 * p * N + n], b[(2 * p + 1) * N + n], pt == 1);
        (pt == 1 ? kk->gemm_bf16 : kk->gemm_f16)(M, N, K, ap, K, 1, bp, N, c, ldc, acc);
    }
    const int64_t chunk = pt ? 2 * CF_ATTN_GEMM_KC : CF_ATTN_GEMM_KC;
    const double gam = (double)(chunk + ke / chunk + 2) * ldexp(1.0, -24);
    int bad = 0, pad = 1;
    double worst = 0.0;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) {
            double s = acc ? c0[m * ldc + n] : 0.0, mag = fabs(s);
            for (int64_t k = 0; k < ke; k++) {
                s += (double)a[m * ke + k] * b[k * N + n];
                mag += fabs((double)a[m * ke + k] * b[k * N + n]);
            }
            const double err = fabs(c[m * ldc + n] - s);
            if (!(err <= gam * mag)) bad++;
            if (err / (gam * mag) > worst) worst = err / (gam * mag);
        }
        for (int64_t n = N; n < ldc; n++)
            pad &= c[m * ldc + n] == SENTINEL;
    }
    static const char* names[] = {"gemm_f32", "gemm_bf16", "gemm_f16"};
    CHECK_MSG(bad == 0,
              "%s %s M%lld N%lld K%lld acc %d trans %d: %d elements past the bound (worst "
              "%.3g of it)",
              kk->name, names[pt], (long long)M, (long long)N, (long long)K, acc, trans, bad,
              worst);
    CHECK_MSG(pad, "%s %s M%lld N%lld K%lld: wrote past column N", kk->name, names[pt],
              (long long)M, (long long)N, (long long)K);
out:
    free(a), free(b), free(c), free(c0), free(ap), free(bp);
}

static void test_random(const cf_attn_kernels* kk) {
    static const int64_t shapes[][3] = {
        {1, 1, 1}, {7, 37, 300}, {6, 64, 64}, {13, 5, 129}, {2, 70, 700}};
    uint64_t seed = 1;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int acc = 0; acc < 2; acc++) {
            const int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            check_random(kk, 0, M, N, K, acc, 0, seed++);
            check_random(kk, 0, M, N, K, acc, 1, seed++);
            if (kk->gemm_bf16) check_random(kk, 1, M, N, (K + 1) / 2, acc, 0, seed++);
            if (kk->gemm_f16) check_random(kk, 2, M, N, (K + 1) / 2, acc, 0, seed++);
        }
}

/* K = 0: C = 0, or C unchanged with acc */
static void test_empty_k(const cf_attn_kernels* kk) {
    float c[2 * 5], a[1] = {0}, b[1] = {0};
    for (int acc = 0; acc < 2; acc++) {
        for (int i = 0; i < 10; i++)
            c[i] = 1.5f;
        kk->gemm_f32(2, 5, 0, a, 1, 1, b, 5, c, 5, acc);
        int ok = 1;
        for (int i = 0; i < 10; i++)
            ok &= c[i] == (acc ? 1.5f : 0.0f);
        CHECK_MSG(ok, "%s gemm_f32 K = 0, acc %d: C not %s", kk->name, acc,
                  acc ? "unchanged" : "zero");
    }
}

/* exp_cols (mu = b per column) and exp_row (b) of x - b for x - b over [-160, 0] in steps that
 * are not multiples of ln 2, plus 0, -inf and NaN. x86: the flush point is 2^-64. */
static void test_exp(const cf_attn_kernels* kk, int x86) {
    enum { N = 1500 };
    static float x[N], y[N], mu[N], sum[N];
    const float b = 3.25f;
    for (int i = 0; i < N - 3; i++)
        x[i] = b - 160.0f * (float)i / (float)(N - 4) - 1e-3f * (float)(i % 7);
    x[N - 3] = b, x[N - 2] = -INFINITY, x[N - 1] = NAN;
    for (int i = 0; i < N; i++)
        y[i] = x[i], mu[i] = b, sum[i] = 0.0f;
    kk->exp_cols(y, N, mu, sum);
    static float z[N];
    memcpy(z, x, sizeof z);
    kk->exp_row(z, N, b);
    int bad = 0, subn = 0, flushed_early = 0, kept_late = 0, sums = 0;
    for (int i = 0; i < N; i++) {
        const double want = exp((double)x[i] - (double)b);
        for (int k = 0; k < 2; k++) {
            const float r = k ? z[i] : y[i];
            if (isnan(x[i])) {
                bad += !isnan(r);
                continue;
            }
            subn += r != 0.0f && fabsf(r) < FLT_MIN;
            if (r == 0.0f) {
                flushed_early += want >= 0x1p-63;
            } else {
                /* (x - b and its product by log2 e round in fp32: |x - b| 2^-24 relative) */
                bad += fabs((double)r - want) > (4.0 + fabs((double)x[i] - b)) * 0x1p-23 * want;
                kept_late += x86 && want < 0x1p-64 * (1.0 - 0x1p-20);
            }
        }
        sums += !(sum[i] == y[i] || (isnan(sum[i]) && isnan(y[i])));
    }
    CHECK_MSG(bad == 0, "%s exp: %d values off exp (or NaN lost)", kk->name, bad);
    CHECK_MSG(subn == 0, "%s exp: %d subnormal results", kk->name, subn);
    CHECK_MSG(flushed_early == 0, "%s exp: %d values of 2^-63 or more flushed to 0", kk->name,
              flushed_early);
    CHECK_MSG(kept_late == 0, "%s exp: %d values below 2^-64 kept", kk->name, kept_late);
    CHECK_MSG(sums == 0, "%s exp_cols: %d sums differ from the values", kk->name, sums);
}

/* bias_t on s (nc keys by cs >= nr rows) and y (nr rows of ys >= nc), every nr, nc up to 37 (two
 * AVX-512 pieces and a tail) and a few strides: against y + s (or -inf) element by element. */
static void test_bias_t(const cf_attn_kernels* kk) {
    enum { N = 37, PAD = 3 };
    static float s[N * (N + PAD)], want[N * (N + PAD)], y[N * (N + PAD)];
    uint64_t st = 0x9e3779b97f4a7c15ull ^ tt_seed_base();
    int bad = 0, runs = 0;
    for (int64_t nr = 1; nr <= N; nr++)
        for (int64_t nc = 1; nc <= N; nc++) {
            const int64_t cs = nr + (nc + nr) % (PAD + 1), ys = nc + (nr * 7 + nc) % (PAD + 1);
            for (int64_t e = 0; e < N * (N + PAD); e++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                const float u = (float)(int32_t)(st >> 32) * 0x1p-31f; /* [-1, 1) */
                s[e] = u * 8.0f, y[e] = SENTINEL + (float)e;
                const unsigned k = (unsigned)(st >> 24) & 63u;
                if (k == 0) s[e] = NAN;
                if (k == 1) s[e] = INFINITY;
                if (k == 2) s[e] = -INFINITY;
            }
            for (int64_t r = 0; r < nr; r++)
                for (int64_t j = 0; j < nc; j++) {
                    st = st * 6364136223846793005ull + 1442695040888963407ull;
                    const unsigned k = (unsigned)(st >> 40) & 15u;
                    y[r * ys + j] = k == 0 ? -INFINITY : (float)(int32_t)(st >> 32) * 0x1p-29f;
                }
            memcpy(want, s, sizeof s);
            for (int64_t r = 0; r < nr; r++)
                for (int64_t j = 0; j < nc; j++) {
                    const float b = y[r * ys + j];
                    want[j * cs + r] = b == -INFINITY ? -INFINITY : want[j * cs + r] + b;
                }
            kk->bias_t(s, cs, y, ys, nr, nc, (nr + nc) % 2); /* (pf: no effect on values) */
            for (int64_t e = 0; e < N * (N + PAD); e++)
                bad +=
                    memcmp(&s[e], &want[e], sizeof(float)) != 0 && !(isnan(s[e]) && isnan(want[e]));
            runs++;
        }
    CHECK_MSG(bad == 0, "%s bias_t: %d elements differ from y + s over %d shapes", kk->name, bad,
              runs);
}

int main(void) {
    const struct {
        const cf_impl* impl;
        const cf_attn_kernels* (*table)(void);
    } tabs[] = {
        {&cf_impl_generic_attn_fwd, NULL},
        {&cf_impl_avx2_attn_fwd, cf_attn_kernels_avx2},
        {&cf_impl_avx512_attn_fwd, cf_attn_kernels_avx512},
        {&cf_impl_neon_attn_fwd, cf_attn_kernels_neon},
        {&cf_impl_sve_attn_fwd, cf_attn_kernels_sve},
    };
    int ran = 0;
    for (size_t i = 0; i < sizeof tabs / sizeof tabs[0]; i++) {
        char why[256] = "";
        const char* name = tabs[i].impl->backend;
        if (!tt_backend_selected(name)) continue;
        if (tabs[i].impl->available && !tabs[i].impl->available(why, sizeof why)) {
            printf("%s: not on this CPU (%s)\n", name, why);
            continue;
        }
        const cf_attn_kernels* kk = tabs[i].table ? tabs[i].table() : &cf_attn_kernels_generic;
        printf("%s: gemm_f32%s%s\n", kk->name, kk->gemm_bf16 ? ", gemm_bf16" : "",
               kk->gemm_f16 ? ", gemm_f16" : "");
        test_two_level(kk);
        test_random(kk);
        test_empty_k(kk);
        test_exp(kk, tabs[i].impl == &cf_impl_avx2_attn_fwd ||
                         tabs[i].impl == &cf_impl_avx512_attn_fwd);
        test_bias_t(kk);
        ran++;
    }
    const char* sel = getenv("CFLASH_TEST_BACKENDS");
    if (ran == 0 && sel && *sel) { /* (cpu-generic always runs when nothing is selected) */
        printf("skip: none of CFLASH_TEST_BACKENDS=\"%s\" runs on this CPU\n", sel);
        return 77;
    }
    CHECK_MSG(ran > 0, "no kernel table ran");
    return tt_summary();
}
