/* Backend cpu-avx512: the kernels of src/cpu/attn_simd.h compiled for AVX-512 F/BW/VL/DQ (GEMM: 6 x
 * 64 register tile, 24 zmm accumulators, A broadcast from memory, a partial last vector masked),
 * and, where the CPU has AVX512-BF16, a vdpbf16ps GEMM on the same tile so bf16 attention
 * multiplies pairs of bf16 with fp32 accumulation. Built with target attributes (no -march); chosen
 * at run time from the CPU probe. */
#include <stdio.h>

#include "core/backend.h"
#include "cpu/attn_cpu.h"
#include "probe/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#define CF_SIMD_AVX512
#include "cpu/attn_simd.h"

#define T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

/* ---- GEMM, bf16 pairs (vdpbf16ps): attn_simd.h's register tile, one pair per step ----------- */

#define BCAST_BF16(p) ((__m512bh)_mm512_set1_epi32((int)*(p)))
#define DOT_BF16(c, x, b) _mm512_dpbf16_ps(c, x, b)
#define LDB_BF16(v)                                                                                \
    ((__m512bh)(v == NV - 1 && !FULL ? _mm512_maskz_loadu_epi32(t, B + 16 * v)                     \
                                     : _mm512_loadu_si512(B + 16 * v)))

T512BF CF_VINLINE void mk_bf16(const int MR, const int NV, const int FULL, int64_t P,
                               const uint32_t* A, int64_t rsa, int64_t csa, const uint32_t* B,
                               int64_t ldb, float* C, int64_t ldc, int acc, cf_vt t) {
    const uint32_t* a = A;
    CF_MK_BODY(P, __m512bh, LDB_BF16, BCAST_BF16, DOT_BF16);
}
CF_MK_DEFINE(T512BF, mkb, mk_bf16, uint32_t, 4)

T512BF static void gemm_bf16(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa,
                             int64_t csa, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                             int acc) {
    gemm_tiles(mkb_tab, 4, M, N, P, A, rsa, csa, B, ldb, C, ldc, acc);
}

/* f32 -> bf16 pairs: (bf16(lo[i]), bf16(hi[i])), round to nearest even (denormals to zero). */
T512BF static void pack_pairs_f32(uint32_t* dst, const float* lo, const float* hi, int64_t n) {
    const __m512i perm =
        _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = cf_vtail(n - i);
        const __m512 l = _mm512_maskz_loadu_ps(m, lo + i);
        const __m512 h = hi ? _mm512_maskz_loadu_ps(m, hi + i) : _mm512_setzero_ps();
        const __m512i x = (__m512i)_mm512_cvtne2ps_pbh(h, l); /* 0..15 = lo, 16..31 = hi */
        _mm512_mask_storeu_epi32(dst + i, m, _mm512_permutexvar_epi16(perm, x));
    }
}

/* Two bf16 rows into pairs (lo[i], hi[i]). */
CF_VTARGET static void interleave_u16(uint32_t* dst, const uint16_t* lo, const uint16_t* hi,
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

#define AVX512_TABLE(var, GBF, PACK)                                                               \
    static const cf_attn_kernels var = {                                                           \
        .name = "cpu-avx512",                                                                      \
        .gemm_f32 = gemm_f32,                                                                      \
        .gemm_bf16 = GBF,                                                                          \
        .scale_max_cols = scale_max_cols,                                                          \
        .softcap_cols = softcap_cols,                                                              \
        .exp_cols = exp_cols,                                                                      \
        .exp_row = exp_row,                                                                        \
        .ds_row = ds_row,                                                                          \
        .ds_cols = ds_cols,                                                                        \
        .pack_pairs_f32 = PACK,                                                                    \
        .interleave_u16 = interleave_u16,                                                          \
        .bias_t = bias_t,                                                                          \
        .to_f32 = to_f32,                                                                          \
        .from_f32 = from_f32,                                                                      \
    };
AVX512_TABLE(kernels, NULL, NULL) /* pack_pairs_f32 is only used with gemm_bf16 */
AVX512_TABLE(kernels_bf16, gemm_bf16, pack_pairs_f32)

/* The table for this CPU (AMX reuses it for everything but its bf16 GEMM): the bf16 GEMM by
 * vdpbf16ps where cf_cpu()->bf16_dot_gemm says it is the faster (see cpu_features.c). */
const cf_attn_kernels* cf_attn_kernels_avx512(void) {
    return cf_cpu()->bf16_dot_gemm ? &kernels_bf16 : &kernels;
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
#if defined(__x86_64__)
int cf_attn_avx512_decode(const void* call, int64_t most_rows, cflash_status* st); /* kv_avx512.c */
#endif
/* Decode rows (few query rows per KV head) on the KV-cache kernels, the rest tiled. */
static cflash_status avx512_fwd(const void* call) {
#if defined(__x86_64__)
    cflash_status st;
    if (cf_attn_avx512_decode(call, 0, &st)) return st;
#endif
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
