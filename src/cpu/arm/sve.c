/* Backend cpu-sve: cpu-neon's table for the tiled attention driver with the fp32 GEMM and the
 * softmax pieces on SVE, for any vector length: it is read at run time (svcntw) and tails are
 * predicated (svwhilelt), so one binary serves 128- to 2048-bit machines. bf16 / fp16 products,
 * conversions and pair packing stay cpu-neon's (every SVE CPU has AdvSIMD). Checked under qemu-user
 * at several vector lengths only; the register tile (SVE_MR rows x 2 vectors) is untuned. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "cpu/attn_cpu.h"
#include "probe/cpu_features.h"

#if defined(__aarch64__)
#include <arm_sve.h>

#define TSVE __attribute__((target("arch=armv8.2-a+sve")))
#define INLINE static inline __attribute__((always_inline))

/* ---- GEMM, fp32: SVE_MR rows x NV (1 or 2) vectors; A broadcast as FMLA's scalar operand ---- */
#define SVE_MR 6

/* Sizeless SVE types cannot sit in arrays: the tile is 12 named accumulators. */
#define S_DECL(r) svfloat32_t c##r##0 = z, c##r##1 = z
/* C plus the accumulators (they start at zero: the sum over K is two-level: CF_ATTN_GEMM_KC
 * chunks) */
#define S_ADDC(p, at, x) (acc ? svadd_f32_x(p, svld1_f32(p, at), x) : x)
#define S_STC(r)                                                                                   \
    if (MR > r) {                                                                                  \
        svst1_f32(p0, C + r * ldc, S_ADDC(p0, C + r * ldc, c##r##0));                              \
        if (NV > 1) svst1_f32(p1, C + r * ldc + vl, S_ADDC(p1, C + r * ldc + vl, c##r##1));        \
    }
#define S_ROW(r)                                                                                   \
    if (MR > r) {                                                                                  \
        const float x = a[r * rsa];                                                                \
        c##r##0 = svmla_n_f32_x(p0, c##r##0, b0, x);                                               \
        if (NV > 1) c##r##1 = svmla_n_f32_x(p1, c##r##1, b1, x);                                   \
    }

/* p0, p1: the columns of the two vectors that exist (loads give 0 elsewhere, stores skip them). */
TSVE INLINE void mk_f32(const int MR, const int NV, int64_t K, const float* A, int64_t rsa,
                        int64_t csa, const float* B, int64_t ldb, float* C, int64_t ldc, int acc,
                        svbool_t p0, svbool_t p1, int64_t vl) {
    const svfloat32_t z = svdup_n_f32(0.0f);
    S_DECL(0);
    S_DECL(1);
    S_DECL(2);
    S_DECL(3);
    S_DECL(4);
    S_DECL(5);
    const float* a = A;
    for (int64_t k = 0; k < K; k++) {
        const svfloat32_t b0 = svld1_f32(p0, B);
        const svfloat32_t b1 = NV > 1 ? svld1_f32(p1, B + vl) : b0;
        S_ROW(0) S_ROW(1) S_ROW(2) S_ROW(3) S_ROW(4) S_ROW(5);
        a += csa;
        B += ldb;
    }
    S_STC(0) S_STC(1) S_STC(2) S_STC(3) S_STC(4) S_STC(5);
}

typedef void (*mk_fn)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*,
                      int64_t, int, svbool_t, svbool_t, int64_t);
#define MKS(MR, NV)                                                                                \
    TSVE static void mks_##MR##_##NV(int64_t K, const float* A, int64_t rsa, int64_t csa,          \
                                     const float* B, int64_t ldb, float* C, int64_t ldc, int acc,  \
                                     svbool_t p0, svbool_t p1, int64_t vl) {                       \
        mk_f32(MR, NV, K, A, rsa, csa, B, ldb, C, ldc, acc, p0, p1, vl);                           \
    }
#define MKS_ROW(MR) MKS(MR, 1) MKS(MR, 2)
MKS_ROW(1)
MKS_ROW(2)
MKS_ROW(3)
MKS_ROW(4)
MKS_ROW(5)
MKS_ROW(6)
#define MKS_TAB(MR)                                                                                \
    { mks_##MR##_1, mks_##MR##_2 }
static const mk_fn mks_tab[SVE_MR][2] = {MKS_TAB(1), MKS_TAB(2), MKS_TAB(3),
                                         MKS_TAB(4), MKS_TAB(5), MKS_TAB(6)};

TSVE static void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa,
                          const float* B, int64_t ldb, float* C, int64_t ldc, int acc) {
    const int64_t vl = (int64_t)svcntw();
    for (int64_t n0 = 0; n0 < N; n0 += 2 * vl) {
        const svbool_t p0 = svwhilelt_b32_s64(n0, N), p1 = svwhilelt_b32_s64(n0 + vl, N);
        const int nv = N - n0 > vl ? 2 : 1;
        for (int64_t m0 = 0; m0 < M; m0 += SVE_MR) {
            const int mr = (int)(M - m0 < SVE_MR ? M - m0 : SVE_MR);
            int64_t k0 = 0;
            do { /* K in chunks; K = 0 still writes C */
                const int64_t kn = K - k0 < CF_ATTN_GEMM_KC ? K - k0 : CF_ATTN_GEMM_KC;
                mks_tab[mr - 1][nv - 1](kn, A + m0 * rsa + k0 * csa, rsa, csa, B + k0 * ldb + n0,
                                        ldb, C + m0 * ldc + n0, ldc, acc || k0 > 0, p0, p1, vl);
                k0 += kn;
            } while (k0 < K);
        }
    }
}

/* ---- Softmax pieces ----------------------------------------------------------------------------
 */

/* 2^x for x <= 0 (the polynomial of cpu-avx2 / cpu-neon, 2^n by FSCALE); x < -126 and -inf give
 * 0, NaN stays NaN. */
TSVE INLINE svfloat32_t exp2_sve(svbool_t pg, svfloat32_t x) {
    const svbool_t below = svcmplt_n_f32(pg, x, -126.0f);
    const svfloat32_t xc = svmax_n_f32_x(pg, x, -126.0f);
    const svfloat32_t n = svrintn_f32_x(pg, xc);
    const svfloat32_t f = svsub_f32_x(pg, xc, n);
    svfloat32_t p = svdup_n_f32(1.5252733e-5f);
    p = svmad_n_f32_x(pg, p, f, 1.5403530e-4f);
    p = svmad_n_f32_x(pg, p, f, 1.3333558e-3f);
    p = svmad_n_f32_x(pg, p, f, 9.6181291e-3f);
    p = svmad_n_f32_x(pg, p, f, 5.5504109e-2f);
    p = svmad_n_f32_x(pg, p, f, 2.4022651e-1f);
    p = svmad_n_f32_x(pg, p, f, 6.9314718e-1f);
    p = svmad_n_f32_x(pg, p, f, 1.0f);
    const svfloat32_t r = svscale_f32_x(pg, p, svcvt_s32_f32_x(pg, n));
    return svsel_f32(below, svdup_n_f32(0.0f), r);
}

TSVE static void scale_max_cols(float* x, int64_t n, float s, float* mx) {
    for (int64_t i = 0; i < n; i += (int64_t)svcntw()) {
        const svbool_t pg = svwhilelt_b32_s64(i, n);
        const svfloat32_t v = svmul_n_f32_x(pg, svld1_f32(pg, x + i), s);
        svst1_f32(pg, x + i, v);
        svst1_f32(pg, mx + i, svmax_f32_x(pg, svld1_f32(pg, mx + i), v));
    }
}

#define LOG2E 1.4426950408889634f

/* exp(x - m) as exp2((x - m) * log2 e), the difference first (see exp_cols in attn_cpu.h). */
TSVE static void exp_cols(float* x, int64_t n, const float* mu, float* sum) {
    for (int64_t i = 0; i < n; i += (int64_t)svcntw()) {
        const svbool_t pg = svwhilelt_b32_s64(i, n);
        const svfloat32_t e = exp2_sve(
            pg,
            svmul_n_f32_x(pg, svsub_f32_x(pg, svld1_f32(pg, x + i), svld1_f32(pg, mu + i)), LOG2E));
        svst1_f32(pg, x + i, e);
        if (sum) svst1_f32(pg, sum + i, svadd_f32_x(pg, svld1_f32(pg, sum + i), e));
    }
}

TSVE static void exp_row(float* x, int64_t n, float b) {
    for (int64_t i = 0; i < n; i += (int64_t)svcntw()) {
        const svbool_t pg = svwhilelt_b32_s64(i, n);
        svst1_f32(
            pg, x + i,
            exp2_sve(pg, svmul_n_f32_x(pg, svsub_n_f32_x(pg, svld1_f32(pg, x + i), b), LOG2E)));
    }
}

TSVE static void ds_row(float* ds, const float* p, const float* dp, int64_t n, float dl, float sc) {
    for (int64_t i = 0; i < n; i += (int64_t)svcntw()) {
        const svbool_t pg = svwhilelt_b32_s64(i, n);
        const svfloat32_t d = svsub_n_f32_x(pg, svld1_f32(pg, dp + i), dl);
        svst1_f32(pg, ds + i, svmul_n_f32_x(pg, svmul_f32_x(pg, svld1_f32(pg, p + i), d), sc));
    }
}

TSVE static void ds_cols(float* ds, const float* p, const float* dp, int64_t n, const float* dl,
                         float sc) {
    for (int64_t i = 0; i < n; i += (int64_t)svcntw()) {
        const svbool_t pg = svwhilelt_b32_s64(i, n);
        const svfloat32_t d = svsub_f32_x(pg, svld1_f32(pg, dp + i), svld1_f32(pg, dl + i));
        svst1_f32(pg, ds + i, svmul_n_f32_x(pg, svmul_f32_x(pg, svld1_f32(pg, p + i), d), sc));
    }
}

/* ---- The table: cpu-neon's, with the pieces above -------------------------------------------- */

static cf_attn_kernels k_sve;
static pthread_once_t k_once = PTHREAD_ONCE_INIT;
static void k_init(void) {
    k_sve = *cf_attn_kernels_neon();
    k_sve.name = "cpu-sve";
    k_sve.gemm_f32 = gemm_f32;
    k_sve.scale_max_cols = scale_max_cols;
    k_sve.exp_cols = exp_cols;
    k_sve.exp_row = exp_row;
    k_sve.ds_row = ds_row;
    k_sve.ds_cols = ds_cols;
}
const cf_attn_kernels* cf_attn_kernels_sve(void) {
    pthread_once(&k_once, k_init);
    return &k_sve;
}

static int sve_available(char* reason, size_t len) {
    const cf_cpu_info* ci = cf_cpu();
    if (ci->sve && ci->neon) return 1;
    snprintf(reason, len, "needs SVE: the kernel does not report sve (AT_HWCAP bit 22)");
    return 0;
}

#else /* not AArch64 */

const cf_attn_kernels* cf_attn_kernels_sve(void) {
    return &cf_attn_kernels_generic;
}
static int sve_available(char* reason, size_t len) {
    snprintf(reason, len, "not an AArch64 CPU");
    return 0;
}

#endif

static int sve_supports(const void* call, char* reason, size_t len) {
    return cf_attn_cpu_supports(call, cf_attn_kernels_sve(), reason, len);
}
static cflash_status sve_fwd(const void* call) {
    return cf_attn_cpu_fwd(call, cf_attn_kernels_sve());
}
static cflash_status sve_bwd(const void* call) {
    return cf_attn_cpu_bwd(call, cf_attn_kernels_sve());
}

const cf_impl cf_impl_sve_attn_fwd = {
    .backend = "cpu-sve",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCPU,
    .supports = sve_supports,
    .run = sve_fwd,
    .available = sve_available,
};
const cf_impl cf_impl_sve_attn_bwd = {
    .backend = "cpu-sve",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = sve_supports,
    .run = sve_bwd,
    .available = sve_available,
};
