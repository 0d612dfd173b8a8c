/* Backend cpu-avx512: AVX-512 F/BW/VL/DQ microkernels for the tiled attention driver, and, where
 * the CPU has AVX512-BF16, a vdpbf16ps GEMM so bf16 attention multiplies pairs of bf16 with fp32
 * accumulation. Built with target attributes (no -march); chosen at run time from the CPU probe.
 * GEMM: 6 x 64 register tile (24 zmm accumulators), A broadcast from memory, last vector masked. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "cpu/attn_cpu.h"
#include "probe/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* ---- GEMM, fp32 ------------------------------------------------------------------------------ */

/* The register tile as 24 named accumulators (an array of vectors ends up on the stack); rows and
 * vectors past MR / NV are dead code once MR and NV are constants. */
#define MK_DECL(r) __m512 c##r##0, c##r##1, c##r##2, c##r##3
#define MK_LOADC(r)                                                                                \
    if (MR > r) {                                                                                  \
        c##r##0 = LDC(r, 0), c##r##1 = LDC(r, 1), c##r##2 = LDC(r, 2), c##r##3 = LDC(r, 3);        \
    }
#define LDC(r, v)                                                                                  \
    (NV > v && acc ? _mm512_maskz_loadu_ps(v == NV - 1 ? lm : 0xffff, C + r * ldc + 16 * v)        \
                   : _mm512_setzero_ps())
#define MK_STC(r)                                                                                  \
    if (MR > r) {                                                                                  \
        STC(r, 0);                                                                                 \
        if (NV > 1) STC(r, 1);                                                                     \
        if (NV > 2) STC(r, 2);                                                                     \
        if (NV > 3) STC(r, 3);                                                                     \
    }
#define STC(r, v) _mm512_mask_storeu_ps(C + r * ldc + 16 * v, v == NV - 1 ? lm : 0xffff, c##r##v)
#define MK_ROW(r, BCAST, OP)                                                                       \
    if (MR > r) {                                                                                  \
        const __typeof__(b0) x = BCAST(a + r * rsa);                                               \
        c##r##0 = OP(c##r##0, x, b0);                                                              \
        if (NV > 1) c##r##1 = OP(c##r##1, x, b1);                                                  \
        if (NV > 2) c##r##2 = OP(c##r##2, x, b2);                                                  \
        if (NV > 3) c##r##3 = OP(c##r##3, x, b3);                                                  \
    }

#define BCAST_F32(p) _mm512_set1_ps(*(p))
#define FMA_F32(c, x, b) _mm512_fmadd_ps(x, b, c)
#define LDB_F32(v) _mm512_maskz_loadu_ps(v == NV - 1 ? lm : 0xffff, B + 16 * v)

T512 INLINE void mk_f32(const int MR, const int NV, int64_t K, const float* A, int64_t rsa,
                        int64_t csa, const float* B, int64_t ldb, float* C, int64_t ldc, int acc,
                        __mmask16 lm) {
    MK_DECL(0);
    MK_DECL(1);
    MK_DECL(2);
    MK_DECL(3);
    MK_DECL(4);
    MK_DECL(5);
    MK_LOADC(0) MK_LOADC(1) MK_LOADC(2) MK_LOADC(3) MK_LOADC(4) MK_LOADC(5);
    const float* a = A;
    for (int64_t k = 0; k < K; k++) {
        const __m512 b0 = LDB_F32(0);
        const __m512 b1 = NV > 1 ? LDB_F32(1) : b0;
        const __m512 b2 = NV > 2 ? LDB_F32(2) : b0;
        const __m512 b3 = NV > 3 ? LDB_F32(3) : b0;
        MK_ROW(0, BCAST_F32, FMA_F32)
        MK_ROW(1, BCAST_F32, FMA_F32)
        MK_ROW(2, BCAST_F32, FMA_F32)
        MK_ROW(3, BCAST_F32, FMA_F32)
        MK_ROW(4, BCAST_F32, FMA_F32)
        MK_ROW(5, BCAST_F32, FMA_F32)
        a += csa;
        B += ldb;
    }
    MK_STC(0) MK_STC(1) MK_STC(2) MK_STC(3) MK_STC(4) MK_STC(5);
}

typedef void (*mk_f32_fn)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*,
                          int64_t, int, __mmask16);
#define MKF(MR, NV)                                                                                \
    T512 static void mkf_##MR##_##NV(int64_t K, const float* A, int64_t rsa, int64_t csa,          \
                                     const float* B, int64_t ldb, float* C, int64_t ldc, int acc,  \
                                     __mmask16 lm) {                                               \
        mk_f32(MR, NV, K, A, rsa, csa, B, ldb, C, ldc, acc, lm);                                   \
    }
#define MKF_ROW(MR) MKF(MR, 1) MKF(MR, 2) MKF(MR, 3) MKF(MR, 4)
MKF_ROW(1)
MKF_ROW(2)
MKF_ROW(3)
MKF_ROW(4) MKF_ROW(5) MKF_ROW(6)
#define MKF_TAB(MR)                                                                                \
    { mkf_##MR##_1, mkf_##MR##_2, mkf_##MR##_3, mkf_##MR##_4 }
    static const mk_f32_fn mkf_tab[6][4] = {MKF_TAB(1), MKF_TAB(2), MKF_TAB(3),
                                            MKF_TAB(4), MKF_TAB(5), MKF_TAB(6)};

T512 static void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa,
                          const float* B, int64_t ldb, float* C, int64_t ldc, int acc) {
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
        const int64_t nn = N - n0 < 64 ? N - n0 : 64;
        const int nv = (int)((nn + 15) / 16);
        const __mmask16 lm = (__mmask16)((1u << (nn - 16 * (nv - 1))) - 1u);
        for (int64_t m0 = 0; m0 < M; m0 += 6) {
            const int mr = (int)(M - m0 < 6 ? M - m0 : 6);
            mkf_tab[mr - 1][nv - 1](K, A + m0 * rsa, rsa, csa, B + n0, ldb, C + m0 * ldc + n0, ldc,
                                    acc, lm);
        }
    }
}

/* ---- GEMM, bf16 pairs (vdpbf16ps) ---------------------------------------------------------------
 */

#define BCAST_BF16(p) ((__m512bh)_mm512_set1_epi32((int)*(p)))
#define DOT_BF16(c, x, b) _mm512_dpbf16_ps(c, x, b)
#define LDB_BF16(v) ((__m512bh)_mm512_maskz_loadu_epi32(v == NV - 1 ? lm : 0xffff, B + 16 * v))

T512BF INLINE void mk_bf16(const int MR, const int NV, int64_t P, const uint32_t* A, int64_t rsa,
                           int64_t csa, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                           int acc, __mmask16 lm) {
    MK_DECL(0);
    MK_DECL(1);
    MK_DECL(2);
    MK_DECL(3);
    MK_DECL(4);
    MK_DECL(5);
    MK_LOADC(0) MK_LOADC(1) MK_LOADC(2) MK_LOADC(3) MK_LOADC(4) MK_LOADC(5);
    const uint32_t* a = A;
    for (int64_t p = 0; p < P; p++) {
        const __m512bh b0 = LDB_BF16(0);
        const __m512bh b1 = NV > 1 ? LDB_BF16(1) : b0;
        const __m512bh b2 = NV > 2 ? LDB_BF16(2) : b0;
        const __m512bh b3 = NV > 3 ? LDB_BF16(3) : b0;
        MK_ROW(0, BCAST_BF16, DOT_BF16)
        MK_ROW(1, BCAST_BF16, DOT_BF16)
        MK_ROW(2, BCAST_BF16, DOT_BF16)
        MK_ROW(3, BCAST_BF16, DOT_BF16)
        MK_ROW(4, BCAST_BF16, DOT_BF16)
        MK_ROW(5, BCAST_BF16, DOT_BF16)
        a += csa;
        B += ldb;
    }
    MK_STC(0) MK_STC(1) MK_STC(2) MK_STC(3) MK_STC(4) MK_STC(5);
}

typedef void (*mk_bf16_fn)(int64_t, const uint32_t*, int64_t, int64_t, const uint32_t*, int64_t,
                           float*, int64_t, int, __mmask16);
#define MKB(MR, NV)                                                                                \
    T512BF static void mkb_##MR##_##NV(int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,     \
                                       const uint32_t* B, int64_t ldb, float* C, int64_t ldc,      \
                                       int acc, __mmask16 lm) {                                    \
        mk_bf16(MR, NV, P, A, rsa, csa, B, ldb, C, ldc, acc, lm);                                  \
    }
#define MKB_ROW(MR) MKB(MR, 1) MKB(MR, 2) MKB(MR, 3) MKB(MR, 4)
MKB_ROW(1)
MKB_ROW(2)
MKB_ROW(3)
MKB_ROW(4) MKB_ROW(5) MKB_ROW(6)
#define MKB_TAB(MR)                                                                                \
    { mkb_##MR##_1, mkb_##MR##_2, mkb_##MR##_3, mkb_##MR##_4 }
    static const mk_bf16_fn mkb_tab[6][4] = {MKB_TAB(1), MKB_TAB(2), MKB_TAB(3),
                                             MKB_TAB(4), MKB_TAB(5), MKB_TAB(6)};

T512BF void cf_avx512_gemm_bf16(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa,
                                int64_t csa, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                                int acc) {
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
        const int64_t nn = N - n0 < 64 ? N - n0 : 64;
        const int nv = (int)((nn + 15) / 16);
        const __mmask16 lm = (__mmask16)((1u << (nn - 16 * (nv - 1))) - 1u);
        for (int64_t m0 = 0; m0 < M; m0 += 6) {
            const int mr = (int)(M - m0 < 6 ? M - m0 : 6);
            mkb_tab[mr - 1][nv - 1](P, A + m0 * rsa, rsa, csa, B + n0, ldb, C + m0 * ldc + n0, ldc,
                                    acc, lm);
        }
    }
}

/* f32 -> bf16 pairs: (bf16(lo[i]), bf16(hi[i])), round to nearest even (denormals to zero). */
T512BF void cf_avx512_pack_pairs_f32(uint32_t* dst, const float* lo, const float* hi, int64_t n) {
    const __m512i perm =
        _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 l = _mm512_maskz_loadu_ps(m, lo + i);
        const __m512 h = hi ? _mm512_maskz_loadu_ps(m, hi + i) : _mm512_setzero_ps();
        const __m512i x = (__m512i)_mm512_cvtne2ps_pbh(h, l); /* 0..15 = lo, 16..31 = hi */
        _mm512_mask_storeu_epi32(dst + i, m, _mm512_permutexvar_epi16(perm, x));
    }
}

/* Two bf16 rows into pairs (lo[i], hi[i]). */
T512 void cf_avx512_interleave_u16(uint32_t* dst, const uint16_t* lo, const uint16_t* hi,
                                   int64_t n) {
    const __m512i ia = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40,
                                        8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i ib = _mm512_add_epi16(ia, _mm512_set1_epi16(16));
    for (int64_t i = 0; i < n; i += 32) {
        const int64_t r = n - i;
        const __mmask32 m = r >= 32 ? 0xffffffffu : (__mmask32)((1u << r) - 1u);
        const __m512i a = _mm512_maskz_loadu_epi16(m, lo + i);
        const __m512i b = hi ? _mm512_maskz_loadu_epi16(m, hi + i) : _mm512_setzero_si512();
        const __mmask16 m0 = r >= 16 ? 0xffff : (__mmask16)((1u << r) - 1u);
        const __mmask16 m1 = r >= 32 ? 0xffff : r > 16 ? (__mmask16)((1u << (r - 16)) - 1u) : 0;
        _mm512_mask_storeu_epi32(dst + i, m0, _mm512_permutex2var_epi16(a, ia, b));
        if (m1) _mm512_mask_storeu_epi32(dst + i + 16, m1, _mm512_permutex2var_epi16(a, ib, b));
    }
}

/* ---- Softmax pieces ----------------------------------------------------------------------------
 */

/* 2^x for x <= 0 (x = -inf gives 0, NaN gives NaN): 2^round(x) * p(x - round(x)), degree-7
 * polynomial, ~1 ulp. */
T512 INLINE __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-160.0f), x); /* a NaN x (the second operand) passes */
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.5252733e-5f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530e-4f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

INLINE __mmask16 tail(int64_t n, int64_t i) {
    return n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
}

/* Fused scale + running max. */
T512 static void scale_max_cols(float* x, int64_t n, float s, float* mx) {
    const __m512 vs = _mm512_set1_ps(s);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail(n, i);
        const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs);
        _mm512_mask_storeu_ps(x + i, m, v);
        _mm512_mask_storeu_ps(mx + i, m, _mm512_max_ps(_mm512_maskz_loadu_ps(m, mx + i), v));
    }
}

#define LOG2E 1.4426950408889634f

/* Fused exp + running sum. */
T512 static void exp_cols(float* x, int64_t n, const float* mu, float* sum) {
    const __m512 l2e = _mm512_set1_ps(LOG2E);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail(n, i);
        const __m512 e = exp2_ps(_mm512_mul_ps(
            _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, mu + i)), l2e));
        _mm512_mask_storeu_ps(x + i, m, e);
        if (sum)
            _mm512_mask_storeu_ps(sum + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, sum + i), e));
    }
}

T512 static void exp_row(float* x, int64_t n, float b) {
    const __m512 l2e = _mm512_set1_ps(LOG2E), vb = _mm512_set1_ps(b);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail(n, i);
        _mm512_mask_storeu_ps(
            x + i, m,
            exp2_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vb), l2e)));
    }
}

T512 static void ds_row(float* ds, const float* p, const float* dp, int64_t n, float dl, float sc) {
    const __m512 vd = _mm512_set1_ps(dl), vs = _mm512_set1_ps(sc);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail(n, i);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + i), vd);
        _mm512_mask_storeu_ps(ds + i, m,
                              _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + i), d), vs));
    }
}

T512 static void ds_cols(float* ds, const float* p, const float* dp, int64_t n, const float* dl,
                         float sc) {
    const __m512 vs = _mm512_set1_ps(sc);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail(n, i);
        const __m512 d =
            _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + i), _mm512_maskz_loadu_ps(m, dl + i));
        _mm512_mask_storeu_ps(ds + i, m,
                              _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + i), d), vs));
    }
}

/* ---- dtype conversion
 * ---------------------------------------------------------------------------- */

T512 void cf_avx512_to_f32(float* dst, const void* src, cf_dtype dt, int64_t n) {
    if (dt == CF_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    const uint16_t* s = src;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail(n, i);
        const __m256i h = _mm256_maskz_loadu_epi16(m, s + i);
        const __m512 v = dt == CF_F16
                             ? _mm512_cvtph_ps(h)
                             : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        _mm512_mask_storeu_ps(dst + i, m, v);
    }
}

/* Same rounding as cf_f32_to_bf16 / cf_f32_to_f16 (nearest even, NaN kept quiet). */
T512 void cf_avx512_from_f32(void* dst, const float* src, cf_dtype dt, int64_t n) {
    if (dt == CF_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    uint16_t* d = dst;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail(n, i);
        const __m512 v = _mm512_maskz_loadu_ps(m, src + i);
        __m256i h;
        if (dt == CF_F16) {
            h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        } else {
            const __m512i u = _mm512_castps_si512(v);
            const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
            __m512i r = _mm512_srli_epi32(
                _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
            const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
            h = _mm512_cvtepi32_epi16(r);
        }
        _mm256_mask_storeu_epi16(d + i, m, h);
    }
}

static const cf_attn_kernels kernels = {
    .name = "cpu-avx512",
    .gemm_f32 = gemm_f32,
    .gemm_bf16 = NULL,
    .scale_max_cols = scale_max_cols,
    .exp_cols = exp_cols,
    .exp_row = exp_row,
    .ds_row = ds_row,
    .ds_cols = ds_cols,
    .pack_pairs_f32 = NULL, /* only used with gemm_bf16 */
    .interleave_u16 = cf_avx512_interleave_u16,
    .to_f32 = cf_avx512_to_f32,
    .from_f32 = cf_avx512_from_f32,
};
static const cf_attn_kernels kernels_bf16 = {
    .name = "cpu-avx512",
    .gemm_f32 = gemm_f32,
    .gemm_bf16 = cf_avx512_gemm_bf16,
    .scale_max_cols = scale_max_cols,
    .exp_cols = exp_cols,
    .exp_row = exp_row,
    .ds_row = ds_row,
    .ds_cols = ds_cols,
    .pack_pairs_f32 = cf_avx512_pack_pairs_f32,
    .interleave_u16 = cf_avx512_interleave_u16,
    .to_f32 = cf_avx512_to_f32,
    .from_f32 = cf_avx512_from_f32,
};

/* The table for this CPU (AMX reuses it for everything but its bf16 GEMM). */
const cf_attn_kernels* cf_attn_kernels_avx512(void);
const cf_attn_kernels* cf_attn_kernels_avx512(void) {
    return cf_cpu()->avx512bf16 ? &kernels_bf16 : &kernels;
}

static int avx512_available(char* reason, size_t len) {
    const cf_cpu_info* ci = cf_cpu();
    if (ci->avx512f && ci->avx512bw && ci->avx512vl && ci->avx512dq && ci->fma && ci->f16c)
        return 1;
    snprintf(reason, len,
             "needs AVX-512 F/BW/VL/DQ with FMA and F16C: CPU (or OS ZMM state) has avx512f=%d "
             "avx512bw=%d avx512vl=%d avx512dq=%d",
             ci->avx512f, ci->avx512bw, ci->avx512vl, ci->avx512dq);
    return 0;
}

#else /* not x86 */

const cf_attn_kernels* cf_attn_kernels_avx512(void);
const cf_attn_kernels* cf_attn_kernels_avx512(void) {
    return &cf_attn_kernels_generic;
}
static int avx512_available(char* reason, size_t len) {
    snprintf(reason, len, "not an x86-64 CPU");
    return 0;
}

#endif

static int avx512_supports(const void* call, char* reason, size_t len) {
    return cf_attn_cpu_supports(call, cf_attn_kernels_avx512(), reason, len);
}
static cflash_status avx512_fwd(const void* call) {
    return cf_attn_cpu_fwd(call, cf_attn_kernels_avx512());
}
static cflash_status avx512_bwd(const void* call) {
    return cf_attn_cpu_bwd(call, cf_attn_kernels_avx512());
}

const cf_impl cf_impl_avx512_attn_fwd = {
    .backend = "cpu-avx512",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCPU,
    .supports = avx512_supports,
    .run = avx512_fwd,
    .available = avx512_available,
};
const cf_impl cf_impl_avx512_attn_bwd = {
    .backend = "cpu-avx512",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = avx512_supports,
    .run = avx512_bwd,
    .available = avx512_available,
};
