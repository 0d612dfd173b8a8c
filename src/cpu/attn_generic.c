/* Backend cpu-generic: the tiled attention driver with portable C microkernels (no intrinsics; the
 * compiler vectorises what it can for the baseline ISA). Also the fallback pieces the ISA tables
 * reuse (dtype conversion). Runs on any CPU. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "cpu/attn_cpu.h"

/* C = (acc ? C : 0) + A B, the sum over K two-level (see CF_ATTN_GEMM_KC): each chunk summed
 * from zero in t (columns in panels of NP), then added to C. */
static void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa,
                     const float* B, int64_t ldb, float* C, int64_t ldc, int acc) {
    enum { KC = CF_ATTN_GEMM_KC, NP = 256 };
    float t[NP];
    for (int64_t m = 0; m < M; m++) {
        float* c = C + m * ldc;
        if (!acc) memset(c, 0, sizeof(float) * (size_t)N);
        for (int64_t n0 = 0; n0 < N; n0 += NP) {
            const int64_t nn = N - n0 < NP ? N - n0 : NP;
            for (int64_t k0 = 0; k0 < K; k0 += KC) {
                memset(t, 0, sizeof(float) * (size_t)nn);
                for (int64_t k = k0; k < K && k < k0 + KC; k++) {
                    const float a = A[m * rsa + k * csa];
                    const float* b = B + k * ldb + n0;
                    for (int64_t n = 0; n < nn; n++)
                        t[n] += a * b[n];
                }
                for (int64_t n = 0; n < nn; n++)
                    c[n0 + n] += t[n];
            }
        }
    }
}

/* x = cap * tanh(x * s / cap) as cf_attn_score computes it (libm's tanhf); th = the tanh */
static void softcap_cols(float* x, int64_t n, float s, float cap, float* th) {
    for (int64_t i = 0; i < n; i++) {
        const float y = tanhf(x[i] * s / cap);
        x[i] = cap * y;
        if (th) th[i] = y;
    }
}

static void scale_max_cols(float* x, int64_t n, float s, float* mx) {
    for (int64_t i = 0; i < n; i++) {
        x[i] *= s;
        mx[i] = x[i] > mx[i] ? x[i] : mx[i];
    }
}

#define LOG2E 1.4426950408889634f

/* 2^e, 0 below 2^-126 as the SIMD tables (no subnormal P: see CF_EXP2_LO in simd_vec.h). */
static inline float exp2_normal(float e) {
    return e < -126.0f ? 0.0f : exp2f(e);
}

static void exp_cols(float* x, int64_t n, const float* m, float* sum) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = exp2_normal((x[i] - m[i]) * LOG2E);
        if (sum) sum[i] += x[i];
    }
}

static void exp_row(float* x, int64_t n, float b) {
    for (int64_t i = 0; i < n; i++)
        x[i] = exp2_normal((x[i] - b) * LOG2E);
}

static void ds_row(float* ds, const float* p, const float* dp, int64_t n, float dl, float sc) {
    for (int64_t i = 0; i < n; i++)
        ds[i] = p[i] * (dp[i] - dl) * sc;
}

static void ds_cols(float* ds, const float* p, const float* dp, int64_t n, const float* dl,
                    float sc) {
    for (int64_t i = 0; i < n; i++)
        ds[i] = p[i] * (dp[i] - dl[i]) * sc;
}

static void pack_pairs_f32(uint32_t* dst, const float* lo, const float* hi, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = (uint32_t)cf_f32_to_bf16(lo[i]) | (uint32_t)(hi ? cf_f32_to_bf16(hi[i]) : 0) << 16;
}

/* Pieces of 16 keys by 16 rows copied transposed into t (the bias read along its rows), then
 * added along S^T's rows, a loop that vectorises (element by element it would be a strided store
 * per element). */
void cf_attn_generic_bias_t(float* s, int64_t cs, const float* y, int64_t ys, int64_t nr,
                            int64_t nc, int64_t pf) {
    enum { BT = 16 };
    float t[BT][BT];
    for (int64_t ra = 0; ra < nr; ra += BT) {
        const int64_t nrr = nr - ra < BT ? nr - ra : BT;
        const float* ya = y + ra * ys;
        for (int64_t ja = 0; ja < nc; ja += BT) {
            const int64_t ncc = nc - ja < BT ? nc - ja : BT;
            for (int64_t u = 0; u < nrr; u++) {
                if (pf) __builtin_prefetch(ya + u * ys + ja + pf);
                for (int64_t v = 0; v < ncc; v++)
                    t[v][u] = ya[u * ys + ja + v];
            }
            for (int64_t v = 0; v < ncc; v++) {
                float* x = s + (ja + v) * cs + ra;
                for (int64_t u = 0; u < nrr; u++) /* -inf masks, whatever the score */
                    x[u] = t[v][u] == -INFINITY ? -INFINITY : x[u] + t[v][u];
            }
        }
    }
}

void cf_attn_generic_interleave_u16(uint32_t* dst, const uint16_t* lo, const uint16_t* hi,
                                    int64_t n) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = (uint32_t)lo[i] | (uint32_t)(hi ? hi[i] : 0) << 16;
}

void cf_attn_generic_to_f32(float* dst, const void* src, cf_dtype dt, int64_t n) {
    switch (dt) {
    case CF_F32: memcpy(dst, src, sizeof(float) * (size_t)n); break;
    case CF_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = cf_bf16_to_f32(((const uint16_t*)src)[i]);
        break;
    case CF_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = cf_f16_to_f32(((const uint16_t*)src)[i]);
        break;
    default: break;
    }
}

void cf_attn_generic_from_f32(void* dst, const float* src, cf_dtype dt, int64_t n) {
    switch (dt) {
    case CF_F32: memcpy(dst, src, sizeof(float) * (size_t)n); break;
    case CF_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t*)dst)[i] = cf_f32_to_bf16(src[i]);
        break;
    case CF_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t*)dst)[i] = cf_f32_to_f16(src[i]);
        break;
    default: break;
    }
}

const cf_attn_kernels cf_attn_kernels_generic = {
    .name = "cpu-generic",
    .gemm_f32 = gemm_f32,
    .gemm_bf16 = NULL,
    .scale_max_cols = scale_max_cols,
    .softcap_cols = softcap_cols,
    .exp_cols = exp_cols,
    .exp_row = exp_row,
    .ds_row = ds_row,
    .ds_cols = ds_cols,
    .pack_pairs_f32 = pack_pairs_f32,
    .interleave_u16 = cf_attn_generic_interleave_u16,
    .bias_t = cf_attn_generic_bias_t,
    .to_f32 = cf_attn_generic_to_f32,
    .from_f32 = cf_attn_generic_from_f32,
};

/* ---- Backend cpu-generic -----------------------------------------------------------------------
 */

static int generic_supports(const void* call, char* reason, size_t len) {
    return cf_attn_cpu_supports(call, &cf_attn_kernels_generic, reason, len);
}
static cflash_status generic_fwd(const void* call) {
    return cf_attn_cpu_fwd(call, &cf_attn_kernels_generic);
}
static cflash_status generic_bwd(const void* call) {
    return cf_attn_cpu_bwd(call, &cf_attn_kernels_generic);
}

const cf_impl cf_impl_generic_attn_fwd = {
    .backend = "cpu-generic",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCPU,
    .supports = generic_supports,
    .run = generic_fwd,
};
const cf_impl cf_impl_generic_attn_bwd = {
    .backend = "cpu-generic",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = generic_supports,
    .run = generic_bwd,
};
