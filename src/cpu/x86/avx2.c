/* Backend cpu-avx2: AVX2 + FMA + F16C microkernels for the tiled attention driver (any x86-64 from
 * Haswell / Zen 1). bf16 and fp16 are converted to fp32 as blocks are read. Built with target
 * attributes, chosen at run time. GEMM: 6 x 16 register tile (12 ymm accumulators). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "cpu/attn_cpu.h"
#include "probe/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

T256 INLINE __m256i lane_mask(int64_t cnt) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(cnt > 8 ? 8 : cnt)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ---- GEMM -------------------------------------------------------------------------------------
 */

#define LDL(p) (FULL ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lm))
#define STL(p, v) (FULL ? _mm256_storeu_ps(p, v) : _mm256_maskstore_ps(p, lm, v))
#define DECL2(r) __m256 c##r##0 = z, c##r##1 = z
#define LOADC2(r)                                                                                  \
    if (MR > r && acc) {                                                                           \
        c##r##0 = NV == 1 ? LDL(C + r * ldc) : _mm256_loadu_ps(C + r * ldc);                       \
        if (NV > 1) c##r##1 = LDL(C + r * ldc + 8);                                                \
    }
#define STC2(r)                                                                                    \
    if (MR > r) {                                                                                  \
        if (NV == 1)                                                                               \
            STL(C + r * ldc, c##r##0);                                                             \
        else {                                                                                     \
            _mm256_storeu_ps(C + r * ldc, c##r##0);                                                \
            STL(C + r * ldc + 8, c##r##1);                                                         \
        }                                                                                          \
    }
#define ROW2(r)                                                                                    \
    if (MR > r) {                                                                                  \
        const __m256 x = _mm256_broadcast_ss(a + r * rsa);                                         \
        c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0);                                                 \
        if (NV > 1) c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1);                                     \
    }

T256 INLINE void mk(const int MR, const int NV, const int FULL, int64_t K, const float* A,
                    int64_t rsa, int64_t csa, const float* B, int64_t ldb, float* C, int64_t ldc,
                    int acc, __m256i lm) {
    const __m256 z = _mm256_setzero_ps();
    DECL2(0);
    DECL2(1);
    DECL2(2);
    DECL2(3);
    DECL2(4);
    DECL2(5);
    LOADC2(0) LOADC2(1) LOADC2(2) LOADC2(3) LOADC2(4) LOADC2(5);
    const float* a = A;
    for (int64_t k = 0; k < K; k++) {
        const __m256 b0 = NV == 1 ? LDL(B) : _mm256_loadu_ps(B);
        const __m256 b1 = NV > 1 ? LDL(B + 8) : b0;
        ROW2(0) ROW2(1) ROW2(2) ROW2(3) ROW2(4) ROW2(5);
        a += csa;
        B += ldb;
    }
    STC2(0) STC2(1) STC2(2) STC2(3) STC2(4) STC2(5);
}

typedef void (*mk_fn)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*,
                      int64_t, int, __m256i);
#define MK(MR, NV, F)                                                                              \
    T256 static void mk_##MR##_##NV##_##F(int64_t K, const float* A, int64_t rsa, int64_t csa,     \
                                          const float* B, int64_t ldb, float* C, int64_t ldc,      \
                                          int acc, __m256i lm) {                                   \
        mk(MR, NV, F, K, A, rsa, csa, B, ldb, C, ldc, acc, lm);                                    \
    }
#define MKR(MR) MK(MR, 1, 0) MK(MR, 1, 1) MK(MR, 2, 0) MK(MR, 2, 1)
MKR(1)
MKR(2)
MKR(3)
MKR(4) MKR(5) MKR(6)
#define MKT(MR)                                                                                    \
    {                                                                                              \
        {mk_##MR##_1_0, mk_##MR##_1_1}, {                                                          \
            mk_##MR##_2_0, mk_##MR##_2_1                                                           \
        }                                                                                          \
    }
    static const mk_fn mk_tab[6][2][2] = {MKT(1), MKT(2), MKT(3), MKT(4), MKT(5), MKT(6)};

T256 static void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa,
                          const float* B, int64_t ldb, float* C, int64_t ldc, int acc) {
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
        const int64_t nn = N - n0 < 16 ? N - n0 : 16;
        const int nv = nn > 8 ? 2 : 1;
        const __m256i lm = lane_mask(nn - 8 * (nv - 1));
        for (int64_t m0 = 0; m0 < M; m0 += 6) {
            const int mr = (int)(M - m0 < 6 ? M - m0 : 6);
            mk_tab[mr - 1][nv - 1][nn % 8 == 0](K, A + m0 * rsa, rsa, csa, B + n0, ldb,
                                                C + m0 * ldc + n0, ldc, acc, lm);
        }
    }
}

/* ---- Softmax pieces ----------------------------------------------------------------------------
 */

/* 2^x for x <= 0; x < -126 (and -inf) gives 0, NaN gives NaN. */
T256 INLINE __m256 exp2_ps(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-126.0f);
    const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_NLT_UQ); /* x >= lo or NaN */
    const __m256 xc = _mm256_max_ps(lo, x);                /* a NaN x (the second operand) passes */
    const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(xc, n);
    __m256 p = _mm256_set1_ps(1.5252733e-5f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530e-4f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504109e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022651e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

/* Full vectors with plain loads/stores (masked stores are slow on AMD), the tail masked. */
#define LDE(p) (full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m))
#define STE(p, v) (full ? _mm256_storeu_ps(p, v) : _mm256_maskstore_ps(p, m, v))

T256 static void scale_max_cols(float* x, int64_t n, float s, float* mx) {
    const __m256 vs = _mm256_set1_ps(s);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = lane_mask(n - i);
        const int full = n - i >= 8;
        const __m256 v = _mm256_mul_ps(LDE(x + i), vs);
        STE(x + i, v);
        STE(mx + i, _mm256_max_ps(LDE(mx + i), v));
    }
}

#define LOG2E 1.4426950408889634f

T256 static void exp_cols(float* x, int64_t n, const float* mu, float* sum) {
    const __m256 l2e = _mm256_set1_ps(LOG2E);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = lane_mask(n - i);
        const int full = n - i >= 8;
        const __m256 e = exp2_ps(_mm256_mul_ps(_mm256_sub_ps(LDE(x + i), LDE(mu + i)), l2e));
        STE(x + i, e);
        if (sum) STE(sum + i, _mm256_add_ps(LDE(sum + i), e));
    }
}

T256 static void exp_row(float* x, int64_t n, float b) {
    const __m256 l2e = _mm256_set1_ps(LOG2E), vb = _mm256_set1_ps(b);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = lane_mask(n - i);
        const int full = n - i >= 8;
        STE(x + i, exp2_ps(_mm256_mul_ps(_mm256_sub_ps(LDE(x + i), vb), l2e)));
    }
}

T256 static void ds_row(float* ds, const float* p, const float* dp, int64_t n, float dl, float sc) {
    const __m256 vd = _mm256_set1_ps(dl), vs = _mm256_set1_ps(sc);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = lane_mask(n - i);
        const int full = n - i >= 8;
        const __m256 d = _mm256_sub_ps(LDE(dp + i), vd);
        STE(ds + i, _mm256_mul_ps(_mm256_mul_ps(LDE(p + i), d), vs));
    }
}

T256 static void ds_cols(float* ds, const float* p, const float* dp, int64_t n, const float* dl,
                         float sc) {
    const __m256 vs = _mm256_set1_ps(sc);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = lane_mask(n - i);
        const int full = n - i >= 8;
        const __m256 d = _mm256_sub_ps(LDE(dp + i), LDE(dl + i));
        STE(ds + i, _mm256_mul_ps(_mm256_mul_ps(LDE(p + i), d), vs));
    }
}

/* ---- dtype conversion (vector body, portable tail)
 * ------------------------------------------------ */

T256 static void to_f32(float* dst, const void* src, cf_dtype dt, int64_t n) {
    if (dt == CF_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    const uint16_t* s = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128((const __m128i*)(s + i));
        const __m256 v = dt == CF_F16
                             ? _mm256_cvtph_ps(h)
                             : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        _mm256_storeu_ps(dst + i, v);
    }
    cf_attn_generic_to_f32(dst + i, s + i, dt, n - i);
}

T256 static void from_f32(void* dst, const float* src, cf_dtype dt, int64_t n) {
    if (dt == CF_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    uint16_t* d = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(src + i);
        __m128i h;
        if (dt == CF_F16) {
            h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        } else {
            const __m256i u = _mm256_castps_si256(v);
            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
            __m256i r = _mm256_srli_epi32(
                _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
            const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            const __m256i qn = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
            r = _mm256_blendv_epi8(r, qn, nan);
            /* 32 -> 16 bits: pack within lanes, then order the two 64-bit halves. */
            const __m256i pk = _mm256_packus_epi32(r, r);
            h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(pk, 0x08));
        }
        _mm_storeu_si128((__m128i*)(d + i), h);
    }
    cf_attn_generic_from_f32(d + i, src + i, dt, n - i);
}

static const cf_attn_kernels kernels = {
    .name = "cpu-avx2",
    .gemm_f32 = gemm_f32,
    .gemm_bf16 = NULL,
    .scale_max_cols = scale_max_cols,
    .exp_cols = exp_cols,
    .exp_row = exp_row,
    .ds_row = ds_row,
    .ds_cols = ds_cols,
    .pack_pairs_f32 = NULL,
    .interleave_u16 = cf_attn_generic_interleave_u16,
    .to_f32 = to_f32,
    .from_f32 = from_f32,
};

static int avx2_available(char* reason, size_t len) {
    const cf_cpu_info* ci = cf_cpu();
    if (ci->avx2 && ci->fma && ci->f16c) return 1;
    snprintf(reason, len,
             "needs AVX2, FMA and F16C: CPU (or OS YMM state) has avx2=%d fma=%d f16c=%d", ci->avx2,
             ci->fma, ci->f16c);
    return 0;
}

#define KERNELS (&kernels)
#else
static int avx2_available(char* reason, size_t len) {
    snprintf(reason, len, "not an x86-64 CPU");
    return 0;
}
#define KERNELS (&cf_attn_kernels_generic)
#endif

static int avx2_supports(const void* call, char* reason, size_t len) {
    return cf_attn_cpu_supports(call, KERNELS, reason, len);
}
static cflash_status avx2_fwd(const void* call) {
    return cf_attn_cpu_fwd(call, KERNELS);
}
static cflash_status avx2_bwd(const void* call) {
    return cf_attn_cpu_bwd(call, KERNELS);
}

const cf_impl cf_impl_avx2_attn_fwd = {
    .backend = "cpu-avx2",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCPU,
    .supports = avx2_supports,
    .run = avx2_fwd,
    .available = avx2_available,
};
const cf_impl cf_impl_avx2_attn_bwd = {
    .backend = "cpu-avx2",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = avx2_supports,
    .run = avx2_bwd,
    .available = avx2_available,
};
