/* The KV-cache fast path built for AVX2 + FMA + F16C: backend cpu-avx2's kvcache_fwd. Its kernels
 * read K and V rows straight from the cache, converted to fp32 in registers (bf16, fp16, fp32, and
 * the 1-byte codes of fp8 / int8 caches: no decoded copy), several query rows per pass so that each
 * converted key feeds all of them: scores two keys by four rows (eight FMA chains), P.V sixteen
 * elements by four rows with the accumulators in registers over a block; the softmax of a fully
 * visible 16-key block in registers (kv2_softmax16), kvcache_fast.h's portable one elsewhere.
 * src/cpu/kvcache_fast.h runs the rest. */
#if defined(__x86_64__)
/* System headers first: the clang pragma below gives every function declared after it the
 * target attribute. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#define CF_OPS_AVX2 1
#define CF_OPS_F16C 1

#include "cpu/ops_fast_common.h"

#include "cpu/kvcache_fast.h"
#include "probe/cpu_features.h"

/* ---- Eight elements of a row of any dtype in fp32 registers ----------------------------------
 * As cpu-avx512's kv_load16: fp8 through fp16 (vcvtph2ps is exact on fp16 subnormals), an e5m2
 * code the high byte of its value's fp16, an e4m3fn code shifted into fp16's fields its value times
 * 2^-8 (the per-key factor takes the 2^8: kv_code_unit) with its NaN pattern set apart. */

/* nan: an e4m3fn row may hold its NaN code (kv2_e4m3_nan): set those lanes apart. */
__attribute__((always_inline)) static inline __m256 kv2_code8(const uint8_t* x, cf_dtype dt,
                                                              int nan) {
    const __m128i b = _mm_loadl_epi64((const __m128i*)x);
    if (dt == CF_I8) return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    const __m128i w = _mm_cvtepu8_epi16(b);
    if (dt == CF_F8E5M2) return _mm256_cvtph_ps(_mm_slli_epi16(w, 8));
    const __m128i a = _mm_slli_epi16(w, 7); /* e, m in bits 7..13, the sign at bit 14 */
    const __m128i h = _mm_add_epi16(a, _mm_and_si128(a, _mm_set1_epi16(0x4000)));
    if (!nan) return _mm256_cvtph_ps(h);
    const __m128i isnan = /* 0x7f or 0xff: all ones in 16 bits */
        _mm_cmpeq_epi16(_mm_or_si128(w, _mm_set1_epi16(0x80)), _mm_set1_epi16(0xff));
    return _mm256_blendv_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(NAN),
                            _mm256_castsi256_ps(_mm256_cvtepi16_epi32(isnan)));
}

/* Whether some of the nb e4m3fn rows (n codes each) holds the NaN code (|code| 0x7f): 32 codes
 * per compare, once per block, instead of a blend per 8 codes in the kernels. */
static int kv2_e4m3_nan(const void* const* rows, int64_t nb, int64_t n) {
    const __m256i hi = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi8((char)0xff);
    for (int64_t t = 0; t < nb; t++) {
        const uint8_t* x = rows[t];
        int64_t d = 0;
        for (; d + 32 <= n; d += 32) {
            const __m256i c = _mm256_or_si256(_mm256_loadu_si256((const __m256i*)(x + d)), hi);
            if (_mm256_movemask_epi8(_mm256_cmpeq_epi8(c, ones))) return 1;
        }
        for (; d < n; d++)
            if ((x[d] & 0x7f) == 0x7f) return 1;
    }
    return 0;
}

/* Elements d .. d + 7 of a row of dtype dt (all eight inside the row). */
__attribute__((always_inline)) static inline __m256 kv2_load8(const void* row, cf_dtype dt,
                                                              int64_t d, int nan) {
    switch (dt) {
    case CF_BF16: {
        const __m128i h = _mm_loadu_si128((const __m128i*)((const uint16_t*)row + d));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case CF_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)row + d)));
    case CF_I8:
    case CF_F8E4M3:
    case CF_F8E5M2: return kv2_code8((const uint8_t*)row + d, dt, nan);
    default: return _mm256_loadu_ps((const float*)row + d);
    }
}

/* Elements d .. d + n - 1 (n < 8) of a row, zeros after: the row's last ones, through a copy (the
 * loads above would read past the row). */
static inline __m256 kv2_load_tail(const void* row, cf_dtype dt, int64_t d, int64_t n) {
    const size_t es = cf_dtype_size(dt);
    _Alignas(32) uint8_t tmp[32] = {0};
    memcpy(tmp, (const char*)row + (size_t)d * es, (size_t)n * es);
    return kv2_load8(tmp, dt, 0, 1);
}

__attribute__((always_inline)) static inline __m256 kv2_load(const void* row, cf_dtype dt,
                                                             int64_t d, int64_t D, int nan) {
    return D - d >= 8 ? kv2_load8(row, dt, d, nan) : kv2_load_tail(row, dt, d, D - d);
}

/* q's elements d .. d + 7 of a row of D (zeros past D). */
static inline __m256 kv2_q8(const float* q, int64_t d, int64_t D) {
    if (D - d >= 8) return _mm256_loadu_ps(q + d);
    const __m256i i = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(q + d, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(D - d)), i));
}

/* [sum a0, sum a1, sum a2, sum a3]. */
static inline __m128 kv2_sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* s[r * KV_KB + t] = q_r . k_t for R rows and the nb key rows of dtype dt (codes: in
 * kv_code_unit's units): two keys by four rows per pass. The npf rows pf (a later block's) go
 * into L2 on the way, rows t and t + 1 with the pass over keys t and t + 1. */
__attribute__((always_inline)) static inline void
kv2_dots_body(const float* restrict q, int64_t R, int64_t D, const void* const* rows, int64_t nb,
              cf_dtype dt, int nan, float* restrict s, const void* const* pf, int64_t npf) {
    const int64_t bytes = D * (int64_t)cf_dtype_size(dt);
    int64_t t = 0;
    for (; t + 2 <= nb; t += 2) {
        const void *k0 = rows[t], *k1 = rows[t + 1];
        kv_pf_rows(pf, npf, t, t + 2, 0, bytes);
        int64_t r = 0;
        for (; r + 4 <= R; r += 4) {
            const float* qr = q + r * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int64_t d = 0; d < D; d += 8) {
                const __m256 x = kv2_load(k0, dt, d, D, nan), y = kv2_load(k1, dt, d, D, nan);
                const __m256 q0 = kv2_q8(qr, d, D), q1 = kv2_q8(qr + D, d, D),
                             q2 = kv2_q8(qr + 2 * D, d, D), q3 = kv2_q8(qr + 3 * D, d, D);
                a0 = _mm256_fmadd_ps(q0, x, a0), b0 = _mm256_fmadd_ps(q0, y, b0);
                a1 = _mm256_fmadd_ps(q1, x, a1), b1 = _mm256_fmadd_ps(q1, y, b1);
                a2 = _mm256_fmadd_ps(q2, x, a2), b2 = _mm256_fmadd_ps(q2, y, b2);
                a3 = _mm256_fmadd_ps(q3, x, a3), b3 = _mm256_fmadd_ps(q3, y, b3);
            }
            float o[8]; /* rows r, r + 1 for keys t, t + 1, then rows r + 2, r + 3 */
            _mm_storeu_ps(o, kv2_sum4(a0, b0, a1, b1));
            _mm_storeu_ps(o + 4, kv2_sum4(a2, b2, a3, b3));
            for (int i = 0; i < 4; i++)
                s[(r + i) * KV_KB + t] = o[2 * i], s[(r + i) * KV_KB + t + 1] = o[2 * i + 1];
        }
        for (; r < R; r++) {
            __m256 a = _mm256_setzero_ps(), b = a;
            for (int64_t d = 0; d < D; d += 8) {
                const __m256 qv = kv2_q8(q + r * D, d, D);
                a = _mm256_fmadd_ps(qv, kv2_load(k0, dt, d, D, nan), a);
                b = _mm256_fmadd_ps(qv, kv2_load(k1, dt, d, D, nan), b);
            }
            float o[4];
            _mm_storeu_ps(o, kv2_sum4(a, b, a, b));
            s[r * KV_KB + t] = o[0], s[r * KV_KB + t + 1] = o[1];
        }
    }
    for (; t < nb; t++) /* an odd last key */
        for (int64_t r = 0; r < R; r++) {
            __m256 a = _mm256_setzero_ps();
            for (int64_t d = 0; d < D; d += 8)
                a = _mm256_fmadd_ps(kv2_q8(q + r * D, d, D), kv2_load(rows[t], dt, d, D, nan), a);
            float o[4];
            _mm_storeu_ps(o, kv2_sum4(a, a, a, a));
            s[r * KV_KB + t] = o[0];
        }
    kv_pf_rows(pf, npf, t & ~(int64_t)1, npf, 0, bytes); /* (the odd key's, and a longer block's) */
}

/* acc[r] += sum_t p[r * KV_KB + t] v_t for R rows and the nb value rows of dtype dt (p already
 * holds each key's factor): sixteen elements by four rows per pass, the accumulators in registers
 * over the block. The npf rows pf go into L2 on the way, a line of row t where a pass over the
 * elements starts one. */
__attribute__((always_inline)) static inline void
kv2_pv_body(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
            cf_dtype dt, int nan, const float* restrict p, const void* const* pf, int64_t npf) {
    const int64_t es = (int64_t)cf_dtype_size(dt);
    int64_t d = 0;
    for (; d + 16 <= Dv; d += 16) {
        if ((d * es) % 64 == 0) kv_pf_rows(pf, npf, 0, npf, d * es, d * es + 64);
        int64_t r = 0;
        for (; r + 4 <= R; r += 4) {
            float* o = acc + r * Dv + d;
            const float* pr = p + r * KV_KB;
            __m256 a0 = _mm256_loadu_ps(o), a1 = _mm256_loadu_ps(o + Dv),
                   a2 = _mm256_loadu_ps(o + 2 * Dv), a3 = _mm256_loadu_ps(o + 3 * Dv);
            __m256 b0 = _mm256_loadu_ps(o + 8), b1 = _mm256_loadu_ps(o + Dv + 8),
                   b2 = _mm256_loadu_ps(o + 2 * Dv + 8), b3 = _mm256_loadu_ps(o + 3 * Dv + 8);
            for (int64_t t = 0; t < nb; t++) {
                const __m256 v = kv2_load8(rows[t], dt, d, nan),
                             w = kv2_load8(rows[t], dt, d + 8, nan);
                const __m256 p0 = _mm256_broadcast_ss(pr + t),
                             p1 = _mm256_broadcast_ss(pr + KV_KB + t),
                             p2 = _mm256_broadcast_ss(pr + 2 * KV_KB + t),
                             p3 = _mm256_broadcast_ss(pr + 3 * KV_KB + t);
                a0 = _mm256_fmadd_ps(p0, v, a0), b0 = _mm256_fmadd_ps(p0, w, b0);
                a1 = _mm256_fmadd_ps(p1, v, a1), b1 = _mm256_fmadd_ps(p1, w, b1);
                a2 = _mm256_fmadd_ps(p2, v, a2), b2 = _mm256_fmadd_ps(p2, w, b2);
                a3 = _mm256_fmadd_ps(p3, v, a3), b3 = _mm256_fmadd_ps(p3, w, b3);
            }
            _mm256_storeu_ps(o, a0), _mm256_storeu_ps(o + Dv, a1);
            _mm256_storeu_ps(o + 2 * Dv, a2), _mm256_storeu_ps(o + 3 * Dv, a3);
            _mm256_storeu_ps(o + 8, b0), _mm256_storeu_ps(o + Dv + 8, b1);
            _mm256_storeu_ps(o + 2 * Dv + 8, b2), _mm256_storeu_ps(o + 3 * Dv + 8, b3);
        }
        for (; r < R; r++) {
            float* o = acc + r * Dv + d;
            __m256 a = _mm256_loadu_ps(o), b = _mm256_loadu_ps(o + 8);
            for (int64_t t = 0; t < nb; t++) {
                const __m256 pv = _mm256_broadcast_ss(p + r * KV_KB + t);
                a = _mm256_fmadd_ps(pv, kv2_load8(rows[t], dt, d, nan), a);
                b = _mm256_fmadd_ps(pv, kv2_load8(rows[t], dt, d + 8, nan), b);
            }
            _mm256_storeu_ps(o, a), _mm256_storeu_ps(o + 8, b);
        }
    }
    kv_pf_rows(pf, npf, 0, npf, d * es, Dv * es);
    for (; d < Dv; d += 8) { /* the last elements, eight or fewer at a time */
        const int64_t n = Dv - d < 8 ? Dv - d : 8;
        for (int64_t r = 0; r < R; r++) {
            float* o = acc + r * Dv + d;
            float x[8];
            memcpy(x, o, sizeof(float) * (size_t)n);
            __m256 a = _mm256_loadu_ps(x);
            for (int64_t t = 0; t < nb; t++)
                a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + r * KV_KB + t),
                                    kv2_load(rows[t], dt, d, Dv, nan), a);
            _mm256_storeu_ps(x, a);
            memcpy(o, x, sizeof(float) * (size_t)n);
        }
    }
}

/* The kernels with the row dtype a constant (its conversion chosen outside the loops); nan: an
 * e4m3fn block holding the NaN code. */
#define KV2_BY_DTYPE(dt, nan, call)                                                                \
    switch (dt) {                                                                                  \
    case CF_BF16: call(CF_BF16, 0); break;                                                         \
    case CF_F16: call(CF_F16, 0); break;                                                           \
    case CF_I8: call(CF_I8, 0); break;                                                             \
    case CF_F8E4M3:                                                                                \
        if (nan)                                                                                   \
            call(CF_F8E4M3, 1);                                                                    \
        else                                                                                       \
            call(CF_F8E4M3, 0);                                                                    \
        break;                                                                                     \
    case CF_F8E5M2: call(CF_F8E5M2, 0); break;                                                     \
    default: call(CF_F32, 0); break;                                                               \
    }

static void avx2_scores(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const cf_dtype dt = kv_row_dtype(h->c);
    const int64_t R = h->R, D = h->c->a.D;
    const int nan = dt == CF_F8E4M3 && kv2_e4m3_nan(rows, nb, D);
#define KV2_DOTS(T, N) kv2_dots_body(h->q, R, D, rows, nb, T, N, h->s, h->pf, h->npf)
    KV2_BY_DTYPE(dt, nan, KV2_DOTS)
#undef KV2_DOTS
    if (f) kv_q_apply(h->s, R, f, kv_code_unit(dt));
}

static void avx2_pv(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const cf_dtype dt = kv_row_dtype(h->c);
    const int64_t R = h->R, Dv = h->c->a.Dv;
    if (f) kv_q_apply(h->s, R, f, kv_code_unit(dt));
    const int nan = dt == CF_F8E4M3 && kv2_e4m3_nan(rows, nb, Dv);
#define KV2_PV(T, N) kv2_pv_body(h->acc, R, Dv, rows, nb, T, N, h->s, h->pf, h->npf)
    KV2_BY_DTYPE(dt, nan, KV2_PV)
#undef KV2_PV
}
#undef KV2_BY_DTYPE

/* The softmax of one row of a fully visible 16-key block in two 8-lane halves, as cpu-avx512's
 * kv_softmax16: the running max moves (and l, lv, acc are rescaled) only when some score passes
 * it; exp by fexp's polynomial with 2^k added to the exponent bits; lv keeps 16 partial sums of l
 * (no horizontal sum per block). */
__attribute__((always_inline)) static inline void
kv2_softmax16_row(float* s, float scale, float* m, float* l, float* lv, float* acc, int64_t Dv) {
    const __m256 vs = _mm256_set1_ps(scale);
    __m256 x[2] = {_mm256_mul_ps(vs, _mm256_loadu_ps(s)),
                   _mm256_mul_ps(vs, _mm256_loadu_ps(s + 8))};
    const __m256 vm0 = _mm256_set1_ps(*m);
    if (_mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(x[0], vm0, _CMP_GT_OQ),
                                        _mm256_cmp_ps(x[1], vm0, _CMP_GT_OQ)))) {
        __m256 h = _mm256_max_ps(x[0], x[1]); /* (a NaN score may make mx NaN: the row is NaN) */
        __m128 q = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        q = _mm_max_ps(q, _mm_movehl_ps(q, q));
        q = _mm_max_ss(q, _mm_movehdup_ps(q));
        const float mx = _mm_cvtss_f32(q), alpha = fexp(*m - mx);
        *m = mx;
        *l *= alpha;
        const __m256 va = _mm256_set1_ps(alpha);
        _mm256_storeu_ps(lv, _mm256_mul_ps(va, _mm256_loadu_ps(lv)));
        _mm256_storeu_ps(lv + 8, _mm256_mul_ps(va, _mm256_loadu_ps(lv + 8)));
        int64_t d = 0;
        for (; d + 8 <= Dv; d += 8)
            _mm256_storeu_ps(acc + d, _mm256_mul_ps(va, _mm256_loadu_ps(acc + d)));
        for (; d < Dv; d++)
            acc[d] *= alpha;
    }
    const __m256 vm = _mm256_set1_ps(*m);
    for (int i = 0; i < 2; i++) {
        const __m256 p = v8_exp_le0(_mm256_sub_ps(x[i], vm));
        _mm256_storeu_ps(s + 8 * i, p);
        _mm256_storeu_ps(lv + 8 * i, _mm256_add_ps(_mm256_loadu_ps(lv + 8 * i), p));
    }
}

static void kv2_softmax16(float* s, int64_t n, float scale, float* m, float* l, float* lv,
                          float* acc, int64_t Dv) {
    for (int64_t r = 0; r < n; r++)
        kv2_softmax16_row(s + r * KV_KB, scale, m + r, l + r, lv + 16 * r, acc + r * Dv, Dv);
}

static void kv_choose_avx2(const cf_kvcache_call* c, int64_t R, kv_path* p) {
    *p = (kv_path){
        .scores = avx2_scores, .pv = avx2_pv, .softmax16 = kv2_softmax16, .pf_inside = KV_PF_INTEL};
    kv_choose_gemm(c, R, p, cf_attn_kernels_avx2());
}

/* For cpu-avx2's attention forward (avx2.c): its decode rows on these kernels (1, *st the
 * status), or 0 when the call is not decode-shaped (kv_attn_decodes). */
int cf_attn_avx2_decode(const void* call, cflash_status* st) {
    if (!kv_attn_decodes(call, 0, 0)) return 0; /* (bf16 on fp32 FMA) */
    *st = kv_attn_decode(call, kv_choose_avx2, "cpu-avx2");
    return 1;
}

int cf_ops_avx2_available(char* why, size_t n); /* src/cpu/x86/ops_avx2.c */

extern const cf_impl cf_impl_avx2_attn_fwd; /* src/cpu/x86/avx2.c */

static cflash_status avx2_kvcache_run(const void* call) {
    return kv_run_with(call, kv_choose_avx2, &cf_impl_avx2_attn_fwd, KV_SPREAD_TWO);
}

const cf_impl cf_impl_avx2_kvcache_fwd = {
    .backend = "cpu-avx2",
    .op = CFLASH_OP_KVCACHE_FWD,
    .device_type = kDLCPU,
    .supports = NULL, /* every call */
    .run = avx2_kvcache_run,
    .available = cf_ops_avx2_available,
};

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
