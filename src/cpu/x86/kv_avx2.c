/* The KV-cache fast path built for AVX2 + FMA + F16C: backend cpu-avx2's kvcache_fwd. Its kernels
 * read K and V rows straight from the cache, converted to fp32 in registers (bf16, fp16, fp32, and
 * the 1-byte codes of fp8 / int8 caches: no decoded copy), several query rows per pass so that each
 * converted key feeds all of them: scores two keys by four rows (eight FMA chains), P.V sixteen
 * elements by four rows with the accumulators in registers over a block; the softmax of a fully
 * visible 16-key block in registers (kv2_softmax16), kvcache_fast.h's portable one elsewhere.
 * An e4m3fn code goes to fp32 by integer operations where that is exact (KV2_F32; on AMD); an
 * int8 cache with bf16 / fp16 q goes by integer products instead (vpmaddwd: kv2_dots_i8,
 * kv2_pv_i8). src/cpu/kvcache_fast.h runs the rest. */
#if defined(__x86_64__)
/* System headers first: the clang pragma below gives every function declared after it the
 * target attribute. */
#include <float.h>
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
 * 2^-8 (the per-key factor takes the 2^8: kv_code_unit) with its NaN pattern set apart; or an
 * e4m3fn code straight to fp32 (KV2_F32, where exact). */

/* How a kernel reads fp8 codes: through fp16 (KV2_F16), through fp16 with e4m3fn's NaN code set
 * apart (KV2_F16_NAN: a row holds it), or an e4m3fn code as fp32 by integer operations alone
 * (KV2_F32: below, before avx2_scores); and bf16 rows 16 values at once, the even ones, then the
 * odd ones (KV2_EO: kv2_load16). */
enum { KV2_F16 = 0, KV2_F16_NAN = 1, KV2_F32 = 2, KV2_EO = 3 };

__attribute__((always_inline)) static inline __m256 kv2_code8(const uint8_t* x, cf_dtype dt,
                                                              int route) {
    const __m128i b = _mm_loadl_epi64((const __m128i*)x);
    if (dt == CF_I8) return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    if (route == KV2_F32) /* (e4m3fn) sign, exponent and mantissa shifted into fp32's fields */
        return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(_mm256_cvtepi8_epi32(b), 20),
                                                    _mm256_set1_epi32((int)0x87ffffff)));
    const __m128i w = _mm_cvtepu8_epi16(b);
    if (dt == CF_F8E5M2) return _mm256_cvtph_ps(_mm_slli_epi16(w, 8));
    const __m128i a = _mm_slli_epi16(w, 7); /* e, m in bits 7..13, the sign at bit 14 */
    const __m128i h = _mm_add_epi16(a, _mm_and_si128(a, _mm_set1_epi16(0x4000)));
    if (route != KV2_F16_NAN) return _mm256_cvtph_ps(h);
    const __m128i isnan = /* 0x7f or 0xff: all ones in 16 bits */
        _mm_cmpeq_epi16(_mm_or_si128(w, _mm_set1_epi16(0x80)), _mm_set1_epi16(0xff));
    return _mm256_blendv_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(NAN),
                            _mm256_castsi256_ps(_mm256_cvtepi16_epi32(isnan)));
}

/* Whether some of the nb e4m3fn rows (n codes each) holds the NaN code (|code| 0x7f): 32 codes
 * per vpmaxub, once per block, instead of a blend per 8 codes in the kernels: the largest code
 * with the sign bit set is 0xff where one is NaN (a compare and a branch per 32 codes took a
 * sixth of the e4m3 scores' time). */
static int kv2_e4m3_nan(const void* const* rows, int64_t nb, int64_t n) {
    const __m256i hi = _mm256_set1_epi8((char)0x80);
    __m256i mx = hi;
    int tail = 0;
    for (int64_t t = 0; t < nb; t++) {
        const uint8_t* x = rows[t];
        int64_t d = 0;
#pragma GCC unroll 4
        for (; d + 32 <= n; d += 32)
            mx = _mm256_max_epu8(mx,
                                 _mm256_or_si256(_mm256_loadu_si256((const __m256i*)(x + d)), hi));
        for (; d < n; d++)
            tail |= (x[d] & 0x7f) == 0x7f;
    }
    return tail || _mm256_movemask_epi8(_mm256_cmpeq_epi8(mx, _mm256_set1_epi8((char)0xff)));
}

/* Elements d .. d + 7 of a row of dtype dt (all eight inside the row). */
__attribute__((always_inline)) static inline __m256 kv2_load8(const void* row, cf_dtype dt,
                                                              int64_t d, int route) {
    switch (dt) {
    case CF_BF16: {
        const __m128i h = _mm_loadu_si128((const __m128i*)((const uint16_t*)row + d));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case CF_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)row + d)));
    case CF_I8:
    case CF_F8E4M3:
    case CF_F8E5M2: return kv2_code8((const uint8_t*)row + d, dt, route);
    default: return _mm256_loadu_ps((const float*)row + d);
    }
}

/* Elements d .. d + n - 1 (n < 8) of a row, zeros after: the row's last ones, through a copy (the
 * loads above would read past the row). */
static inline __m256 kv2_load_tail(const void* row, cf_dtype dt, int64_t d, int64_t n, int route) {
    const size_t es = cf_dtype_size(dt);
    _Alignas(32) uint8_t tmp[32] = {0};
    memcpy(tmp, (const char*)row + (size_t)d * es, (size_t)n * es);
    return route == KV2_F32 ? kv2_load8(tmp, dt, 0, KV2_F32) : kv2_load8(tmp, dt, 0, KV2_F16_NAN);
}

/* Elements d .. d + 15 of a row in two vectors: in order (*v elements d .. d + 7, *w the next
 * eight), or for bf16 by KV2_EO the even ones in *v and the odd ones in *w (a 32-byte load, a
 * shift and a mask, where two halves take four operations; the accumulators then hold a row's
 * elements in kv2_eo_index's order). */
__attribute__((always_inline)) static inline void
kv2_load16(const void* row, cf_dtype dt, int64_t d, int route, __m256* v, __m256* w) {
    if (dt == CF_BF16 && route == KV2_EO) {
        const __m256i x = _mm256_loadu_si256((const __m256i*)((const uint16_t*)row + d));
        *v = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
        *w = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u)));
        return;
    }
    *v = kv2_load8(row, dt, d, route), *w = kv2_load8(row, dt, d + 8, route);
}

__attribute__((always_inline)) static inline __m256 kv2_load(const void* row, cf_dtype dt,
                                                             int64_t d, int64_t D, int route) {
    return D - d >= 8 ? kv2_load8(row, dt, d, route) : kv2_load_tail(row, dt, d, D - d, route);
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

/* [sum a0, sum b0, sum a1, sum b1, sum a2, sum b2, sum a3, sum b3] by unpacks and adds (vhaddps,
 * like vphaddd, is ~1.8 cycles on Zen 3; an unpack 0.5). */
static inline __m256 kv2_sum8(__m256 a0, __m256 b0, __m256 a1, __m256 b1, __m256 a2, __m256 b2,
                              __m256 a3, __m256 b3) {
#define KV2_PAIR(a, b) _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b))
    const __m256 x0 = KV2_PAIR(a0, b0), x1 = KV2_PAIR(a1, b1), x2 = KV2_PAIR(a2, b2),
                 x3 = KV2_PAIR(a3, b3);
#undef KV2_PAIR
    /* per 128-bit lane: [a0 b0 a1 b1] of the lane's sums, then rows 2 and 3 */
    const __m256 y0 = _mm256_add_ps(_mm256_shuffle_ps(x0, x1, 0x44),
                                    _mm256_shuffle_ps(x0, x1, 0xee)),
                 y1 = _mm256_add_ps(_mm256_shuffle_ps(x2, x3, 0x44),
                                    _mm256_shuffle_ps(x2, x3, 0xee));
    return _mm256_add_ps(_mm256_permute2f128_ps(y0, y1, 0x20),
                         _mm256_permute2f128_ps(y0, y1, 0x31));
}

/* s[0], s[1] = o's lanes 0, 1; s[KV_KB], s[KV_KB + 1] = lanes 2, 3; and so on (four rows of a
 * block's scores, two keys). */
static inline void kv2_store_pairs(float* s, __m256 o) {
    const __m128 lo = _mm256_castps256_ps128(o), hi = _mm256_extractf128_ps(o, 1);
    _mm_storel_pi((__m64*)s, lo);
    _mm_storeh_pi((__m64*)(s + KV_KB), lo);
    _mm_storel_pi((__m64*)(s + 2 * KV_KB), hi);
    _mm_storeh_pi((__m64*)(s + 3 * KV_KB), hi);
}

/* s[r * KV_KB + t] = q_r . k_t for R rows and the nb key rows of dtype dt (codes: in
 * kv_code_unit's units): two keys by four rows per pass. The npf rows pf (a later block's) go
 * into L2 on the way, rows t and t + 1 with the pass over keys t and t + 1. */
__attribute__((always_inline)) static inline void
kv2_dots_body(const float* restrict q, int64_t R, int64_t D, const void* const* rows, int64_t nb,
              cf_dtype dt, int route, float* restrict s, const void* const* pf, int64_t npf) {
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
#define KV2_DOT8(x, y, q0, q1, q2, q3)                                                             \
    a0 = _mm256_fmadd_ps(q0, x, a0), b0 = _mm256_fmadd_ps(q0, y, b0);                              \
    a1 = _mm256_fmadd_ps(q1, x, a1), b1 = _mm256_fmadd_ps(q1, y, b1);                              \
    a2 = _mm256_fmadd_ps(q2, x, a2), b2 = _mm256_fmadd_ps(q2, y, b2);                              \
    a3 = _mm256_fmadd_ps(q3, x, a3), b3 = _mm256_fmadd_ps(q3, y, b3)
            /* whole 8-element chunks, then the row's tail: no tail test and no mask in the loop
             * (with them GCC kept fewer of the accumulators in registers) */
            int64_t d = 0;
            for (; d + 8 <= D; d += 8) {
                const __m256 x = kv2_load8(k0, dt, d, route), y = kv2_load8(k1, dt, d, route);
                KV2_DOT8(x, y, _mm256_loadu_ps(qr + d), _mm256_loadu_ps(qr + D + d),
                         _mm256_loadu_ps(qr + 2 * D + d), _mm256_loadu_ps(qr + 3 * D + d));
            }
            if (d < D) {
                const __m256 x = kv2_load_tail(k0, dt, d, D - d, route),
                             y = kv2_load_tail(k1, dt, d, D - d, route);
                KV2_DOT8(x, y, kv2_q8(qr, d, D), kv2_q8(qr + D, d, D), kv2_q8(qr + 2 * D, d, D),
                         kv2_q8(qr + 3 * D, d, D));
            }
#undef KV2_DOT8
            /* rows r, r + 1 for keys t, t + 1, then rows r + 2, r + 3 */
            kv2_store_pairs(s + r * KV_KB + t, kv2_sum8(a0, b0, a1, b1, a2, b2, a3, b3));
        }
        for (; r < R; r++) {
            __m256 a = _mm256_setzero_ps(), b = a;
            for (int64_t d = 0; d < D; d += 8) {
                const __m256 qv = kv2_q8(q + r * D, d, D);
                a = _mm256_fmadd_ps(qv, kv2_load(k0, dt, d, D, route), a);
                b = _mm256_fmadd_ps(qv, kv2_load(k1, dt, d, D, route), b);
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
                a = _mm256_fmadd_ps(kv2_q8(q + r * D, d, D), kv2_load(rows[t], dt, d, D, route), a);
            float o[4];
            _mm_storeu_ps(o, kv2_sum4(a, a, a, a));
            s[r * KV_KB + t] = o[0];
        }
    kv_pf_rows(pf, npf, t & ~(int64_t)1, npf, 0, bytes); /* (the odd key's, and a longer block's) */
}

/* acc[r] += sum_t p[r * KV_KB + t] v_t for R rows and the nb value rows of dtype dt (p already
 * holds each key's factor): sixteen elements by four rows per pass, the accumulators in registers
 * over the block (bf16 rows by KV2_EO: Dv % 16 == 0, acc in kv2_eo_index's order). The npf rows pf
 * go into L2 on the way, an equal share of them (whole rows) with each pass over 16 elements: a
 * line per row at the start of every 64 bytes, 16 misses at once, left the decode waiting on the
 * miss buffers (int8 and bf16 caches 1.05-1.07x on Zen 3). */
__attribute__((always_inline)) static inline void
kv2_pv_body(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
            cf_dtype dt, int route, const float* restrict p, const void* const* pf, int64_t npf) {
    const int64_t es = (int64_t)cf_dtype_size(dt), nch = Dv / 16;
    int64_t d = 0;
    for (; d + 16 <= Dv; d += 16) {
        kv_pf_rows(pf, npf, d / 16 * npf / nch, (d / 16 + 1) * npf / nch, 0, Dv * es);
        int64_t r = 0;
        for (; r + 4 <= R; r += 4) {
            float* o = acc + r * Dv + d;
            const float* pr = p + r * KV_KB;
            __m256 a0 = _mm256_loadu_ps(o), a1 = _mm256_loadu_ps(o + Dv),
                   a2 = _mm256_loadu_ps(o + 2 * Dv), a3 = _mm256_loadu_ps(o + 3 * Dv);
            __m256 b0 = _mm256_loadu_ps(o + 8), b1 = _mm256_loadu_ps(o + Dv + 8),
                   b2 = _mm256_loadu_ps(o + 2 * Dv + 8), b3 = _mm256_loadu_ps(o + 3 * Dv + 8);
            for (int64_t t = 0; t < nb; t++) {
                __m256 v, w;
                kv2_load16(rows[t], dt, d, route, &v, &w);
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
                __m256 v, w;
                kv2_load16(rows[t], dt, d, route, &v, &w);
                a = _mm256_fmadd_ps(pv, v, a), b = _mm256_fmadd_ps(pv, w, b);
            }
            _mm256_storeu_ps(o, a), _mm256_storeu_ps(o + 8, b);
        }
    }
    if (nch == 0) kv_pf_rows(pf, npf, 0, npf, 0, Dv * es);
    for (; d < Dv; d += 8) { /* the last elements, eight or fewer at a time */
        const int64_t n = Dv - d < 8 ? Dv - d : 8;
        for (int64_t r = 0; r < R; r++) {
            float* o = acc + r * Dv + d;
            float x[8];
            memcpy(x, o, sizeof(float) * (size_t)n);
            __m256 a = _mm256_loadu_ps(x);
            for (int64_t t = 0; t < nb; t++)
                a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + r * KV_KB + t),
                                    kv2_load(rows[t], dt, d, Dv, route), a);
            _mm256_storeu_ps(x, a);
            memcpy(o, x, sizeof(float) * (size_t)n);
        }
    }
}

/* The kernels with the row dtype and the route of fp8 codes constants (the conversion chosen
 * outside the loops). */
#define KV2_BY_DTYPE(dt, route, call)                                                              \
    switch (dt) {                                                                                  \
    case CF_BF16: call(CF_BF16, KV2_F16); break;                                                   \
    case CF_F16: call(CF_F16, KV2_F16); break;                                                     \
    case CF_I8: call(CF_I8, KV2_F16); break;                                                       \
    case CF_F8E4M3:                                                                                \
        if (route == KV2_F32)                                                                      \
            call(CF_F8E4M3, KV2_F32);                                                              \
        else if (route == KV2_F16_NAN)                                                             \
            call(CF_F8E4M3, KV2_F16_NAN);                                                          \
        else                                                                                       \
            call(CF_F8E4M3, KV2_F16);                                                              \
        break;                                                                                     \
    case CF_F8E5M2: call(CF_F8E5M2, KV2_F16); break;                                               \
    default: call(CF_F32, KV2_F16); break;                                                         \
    }

/* ---- e4m3fn codes as fp32 by integer operations (KV2_F32) ------------------------------------
 * On Zen 3 vcvtph2ps takes the pipes the FMAs use, ~1.3 cycles per 8 elements (4 of them beside 4
 * FMAs: 0.9 cycles an instruction, against 0.46 for FMAs alone), and an e4m3fn code needs four
 * more operations to reach fp16's fields. Instead kv2_code8 shifts a code's sign, exponent and
 * mantissa into fp32's (three operations): its value times 2^-120, subnormal codes as fp32
 * subnormals. That is exact where
 *  - MXCSR.DAZ is clear in the thread that runs the kernel (else subnormals read as 0): checked
 *    per kernel call (a host built with -ffast-math sets it);
 *  - the block holds no NaN code (kv2_e4m3_nan: it would read as 480);
 *  - the products stay normal: q row r is read times 2^E_r (kv2_e4m3_prep: |q'| < 2^100, so even
 *    the smallest code, 2^-129 here, makes products near 2^-29), the scores then times
 *    2^(120 - E_r); a row with some |q| >= 2^64 or not finite leaves the scores to fp16. P is
 *    read times 2^120 with the key's factor, where that product is finite (else fp16).
 * A block that misses one goes through fp16 as before, and every block on CPUs other than AMD's
 * (kv2_f32_cpu). e5m2 (one operation to fp16's fields) gained nothing this way on Zen 3
 * (0.97-1.00x, with the scan for its infinities) and stays. */
static inline int kv2_daz_clear(void) {
    return !(_mm_getcsr() & 0x40);
}

/* w->qf: the item's q rows, row r times 2^E_r; w->qs[r] = 2^(120 - E_r); w->qbad when some q
 * row has an element that is not finite or >= 2^64 in magnitude (then no row goes KV2_F32). */
static void kv2_e4m3_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    const int64_t D = c->a.D;
    int bad = 0;
    for (int64_t r = 0; r < R && !bad; r++) {
        const float* q = w->q + r * D;
        float m = 0.0f;
        for (int64_t d = 0; d < D; d++) {
            const float a = fabsf(q[d]);
            bad |= !(a < 0x1p64f); /* (NaN too) */
            m = a > m ? a : m;
        }
        if (bad) break;
        int e;
        frexpf(m, &e); /* m < 2^e (e 0 for m 0) */
        const int E = 100 - e < 120 ? 100 - e : 120;
        const float by = ldexpf(1.0f, E);
        float* o = w->qf + r * D;
        for (int64_t d = 0; d < D; d++)
            o[d] = q[d] * by;
        w->qs[r] = ldexpf(1.0f, 120 - E);
    }
    w->qbad = bad;
}

/* s[r * KV_KB + t] = s u[r] f[t] for the R rows of a block's scores (f NULL: 1). */
static void kv2_rows_apply(float* s, int64_t R, const float* f, const float* u) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t t = 0; t < KV_KB; t++)
            s[r * KV_KB + t] = s[r * KV_KB + t] * u[r] * (f ? f[t] : 1.0f);
}

/* Whether |f[t]| u is finite for every t < KV_KB (f: 0 past the block's keys). */
static int kv2_f_fits(const float* f, float u) {
    int ok = 1;
    for (int t = 0; t < KV_KB; t++)
        ok &= fabsf(f[t]) * u <= FLT_MAX;
    return ok;
}

/* Where KV2_F32 serves: AMD, where it was measured (Zen 3: the block's kernels 1.34x in L1, the
 * decode 1.17x; subnormal codes, fp32 subnormals there, cost nothing on Zen 3's FMAs). On Intel a
 * subnormal FMA input may take a microcode assist (unmeasured: no AVX2-only Intel machine here),
 * so e4m3 stays on fp16 there until measured. */
static int kv2_f32_cpu(void) {
    return strcmp(cf_cpu()->vendor, "AuthenticAMD") == 0;
}

/* The kernels of a block (f32: KV2_F32 allowed, the path's prep being kv2_e4m3_prep). */
static void avx2_scores_of(const kv_head* h, const void* const* rows, int64_t nb, const float* f,
                           int f32) {
    const cf_dtype dt = kv_row_dtype(h->c);
    const int64_t R = h->R, D = h->c->a.D, r0 = h->q - h->w->q; /* (the head's first row, x D) */
    int route = KV2_F16;
    const float* q = h->q;
    if (dt == CF_F8E4M3) {
        const int nan = kv2_e4m3_nan(rows, nb, D);
        if (f32 && !nan && !h->w->qbad && kv2_daz_clear())
            route = KV2_F32, q = h->w->qf + r0;
        else if (nan)
            route = KV2_F16_NAN;
    }
#define KV2_DOTS(T, N) kv2_dots_body(q, R, D, rows, nb, T, N, h->s, h->pf, h->npf)
    KV2_BY_DTYPE(dt, route, KV2_DOTS)
#undef KV2_DOTS
    if (route == KV2_F32)
        kv2_rows_apply(h->s, R, f, h->w->qs + r0 / D);
    else if (f)
        kv_q_apply(h->s, R, f, kv_code_unit(dt));
}

static void avx2_pv_of(const kv_head* h, const void* const* rows, int64_t nb, const float* f,
                       int f32) {
    const cf_dtype dt = kv_row_dtype(h->c);
    const int64_t R = h->R, Dv = h->c->a.Dv;
    int route = KV2_F16;
    if (dt == CF_F8E4M3) {
        const int nan = kv2_e4m3_nan(rows, nb, Dv);
        if (f32 && !nan && f && kv2_f_fits(f, 0x1p120f) && kv2_daz_clear()) {
            route = KV2_F32;
            kv_q_apply(h->s, R, f, 0x1p120f);
        } else if (nan)
            route = KV2_F16_NAN;
    }
    if (route != KV2_F32 && f) kv_q_apply(h->s, R, f, kv_code_unit(dt));
#define KV2_PV(T, N) kv2_pv_body(h->acc, R, Dv, rows, nb, T, N, h->s, h->pf, h->npf)
    KV2_BY_DTYPE(dt, route, KV2_PV)
#undef KV2_PV
}

/* w->qf: each of the item's R q rows with every 16 elements as the 8 even ones, then the 8 odd
 * ones (D % 16 == 0: kv2_bf16_even_odd), for kv2_dots_bf16. */
static void kv2_bf16_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    const int64_t D = c->a.D;
    for (int64_t r = 0; r < R; r++)
        for (int64_t d = 0; d < D; d += 16)
            for (int i = 0; i < 8; i++) {
                w->qf[r * D + d + i] = w->q[r * D + d + 2 * i];
                w->qf[r * D + d + 8 + i] = w->q[r * D + d + 2 * i + 1];
            }
}

/* Whether kv2_dots_bf16 serves: a bf16 cache, D % 16 == 0, and R (the rows of each KV head, what
 * kv_choose_avx2 is given) a multiple of 4. */
static int kv2_bf16_even_odd(const cf_kvcache_call* c, int64_t R) {
    return kv_row_dtype(c) == CF_BF16 && c->a.D % 16 == 0 &&
           R % 4 == 0; /* (bf16 rows: unquantized) */
}

/* s[r * KV_KB + t] = q_r . k_t for R (% 4) rows (q in kv2_bf16_prep's order) and nb bf16 rows of
 * D (% 16), read by KV2_EO (kv2_load16): 16 values a load, the even ones, then the odd ones. Two
 * keys by four rows per pass. */
static void kv2_dots_bf16(const float* restrict q, int64_t R, int64_t D, const void* const* rows,
                          int64_t nb, float* restrict s, const void* const* pf, int64_t npf) {
    int64_t t = 0;
    for (; t + 2 <= nb; t += 2) {
        const uint16_t *k0 = rows[t], *k1 = rows[t + 1];
        kv_pf_rows(pf, npf, t, t + 2, 0, 2 * D);
        for (int64_t r = 0; r < R; r += 4) {
            const float* qr = q + r * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int64_t d = 0; d < D; d += 16) {
                __m256 xe, xo, ye, yo;
                kv2_load16(k0, CF_BF16, d, KV2_EO, &xe, &xo);
                kv2_load16(k1, CF_BF16, d, KV2_EO, &ye, &yo);
#define KV2_EO(A, B, Q)                                                                            \
    {                                                                                              \
        const __m256 e = _mm256_loadu_ps(Q + d), o = _mm256_loadu_ps(Q + d + 8);                   \
        A = _mm256_fmadd_ps(e, xe, A), A = _mm256_fmadd_ps(o, xo, A);                              \
        B = _mm256_fmadd_ps(e, ye, B), B = _mm256_fmadd_ps(o, yo, B);                              \
    }
                KV2_EO(a0, b0, qr)
                KV2_EO(a1, b1, qr + D)
                KV2_EO(a2, b2, qr + 2 * D)
                KV2_EO(a3, b3, qr + 3 * D)
#undef KV2_EO
            }
            kv2_store_pairs(s + r * KV_KB + t, kv2_sum8(a0, b0, a1, b1, a2, b2, a3, b3));
        }
    }
    for (; t < nb; t++) { /* an odd last key */
        const uint16_t* k0 = rows[t];
        for (int64_t r = 0; r < R; r++) {
            __m256 a = _mm256_setzero_ps();
            for (int64_t d = 0; d < D; d += 16) {
                __m256 xe, xo;
                kv2_load16(k0, CF_BF16, d, KV2_EO, &xe, &xo);
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * D + d), xe, a);
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * D + d + 8), xo, a);
            }
            float o[4];
            _mm_storeu_ps(o, kv2_sum4(a, a, a, a));
            s[r * KV_KB + t] = o[0];
        }
    }
    kv_pf_rows(pf, npf, t & ~(int64_t)1, npf, 0, 2 * D);
}

static void avx2_scores_bf16(const kv_head* h, const void* const* rows, int64_t nb,
                             const float* f) {
    (void)f; /* (an unquantized cache: no factors) */
    kv2_dots_bf16(h->w->qf + (h->q - h->w->q), h->R, h->c->a.D, rows, nb, h->s, h->pf, h->npf);
}

/* Whether kv2_pv_body serves a bf16 cache by KV2_EO: Dv % 16 == 0 (every pass 16 elements). */
static int kv2_bf16_pv_eo(const cf_kvcache_call* c) {
    return kv_row_dtype(c) == CF_BF16 && c->a.Dv % 16 == 0;
}

static void avx2_pv_bf16(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    (void)f; /* (an unquantized cache: no factors) */
    kv2_pv_body(h->acc, h->R, h->c->a.Dv, rows, nb, CF_BF16, KV2_EO, h->s, h->pf, h->npf);
}

/* Where element d of a row of acc sits after KV2_EO's passes: of each 16, the even ones at 0-7,
 * the odd ones at 8-15. */
static int64_t kv2_eo_index(int64_t d) {
    return (d & ~(int64_t)15) + (d & 1) * 8 + ((d & 15) >> 1);
}

/* The R rows of acc (width Dv, % 16) from kv2_eo_index's order back to element order. */
static void kv2_eo_unpermute(float* acc, int64_t R, int64_t Dv) {
    for (int64_t i = 0; i < R * Dv; i += 16) {
        const __m256 e = _mm256_loadu_ps(acc + i), o = _mm256_loadu_ps(acc + i + 8);
        const __m256 lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o);
        _mm256_storeu_ps(acc + i, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(acc + i + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
}

static void avx2_scores(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    avx2_scores_of(h, rows, nb, f, 0);
}
static void avx2_pv(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    avx2_pv_of(h, rows, nb, f, 0);
}
static void avx2_scores_f32(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    avx2_scores_of(h, rows, nb, f, 1);
}
static void avx2_pv_f32(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    avx2_pv_of(h, rows, nb, f, 1);
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

/* ---- int8 caches by integer dot products (vpmaddwd): the codes sign-extended to 16-bit words
 * against q and P as 16-bit integers (as cpu-avx512's VNNI kernels: q per row, qi = q / qs
 * rounded with qs = max|q| / kv_i8_qmax; P per row and block, relative to the block's largest
 * |f p|), both exact to 2^-16 of their row's largest value. One vpmaddwd makes 16 products where
 * an FMA makes 8 after two conversions per 8 codes. ---- */

/* Whether they serve R rows of a KV head: bf16 or fp16 q (fp32 q's naive computation keeps fp32
 * scores: the fp32 kernels above), D % 16 and D <= 1024 (kv_i8_qmax), Dv % 16, rows in fours, at
 * most 64 (kv2_p_i16's buffer). */
static inline int kv2_i8_ok(const cf_kvcache_call* c, int64_t R) {
    const cf_dtype dt = c->a.dtype;
    return c->quant == CFLASH_KV_QUANT_INT8 && (dt == CF_BF16 || dt == CF_F16) &&
           c->a.D % 16 == 0 && c->a.D <= 1024 && c->a.Dv % 16 == 0 && R % 4 == 0 && R <= 64;
}

/* 16 codes at x sign-extended to 16-bit words. */
static inline __m256i kv2_i8_words(const int8_t* x) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)x));
}

/* [sum a0, sum a1, sum a2, sum a3] of int32 lanes (each total fits: kv_i8_qmax). */
static inline __m128i kv2_isum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    const __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

/* [sum a0, sum b0, sum a1, sum b1, sum a2, sum b2, sum a3, sum b3] of int32 lanes by unpacks and
 * adds (vphaddd is ~1.8 cycles on Zen 3, an unpack 0.5: measured). */
static inline __m256i kv2_isum8(__m256i a0, __m256i b0, __m256i a1, __m256i b1, __m256i a2,
                                __m256i b2, __m256i a3, __m256i b3) {
#define KV2_PAIR(a, b) _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
    const __m256i x0 = KV2_PAIR(a0, b0), x1 = KV2_PAIR(a1, b1), x2 = KV2_PAIR(a2, b2),
                  x3 = KV2_PAIR(a3, b3);
#undef KV2_PAIR
    /* per 128-bit lane: [a0 b0 a1 b1] of the lane's sums, then rows 2 and 3 */
    const __m256i y0 = _mm256_add_epi32(_mm256_unpacklo_epi64(x0, x1),
                                        _mm256_unpackhi_epi64(x0, x1)),
                  y1 = _mm256_add_epi32(_mm256_unpacklo_epi64(x2, x3),
                                        _mm256_unpackhi_epi64(x2, x3));
    return _mm256_add_epi32(_mm256_permute2x128_si256(y0, y1, 0x20),
                            _mm256_permute2x128_si256(y0, y1, 0x31));
}

/* q rows as 16-bit integers (w->qi) and their factors (w->qs); w->qbad when some q is not
 * finite (then the fp32 kernels score). */
static void avx2_i8_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    const int64_t D = c->a.D; /* (% 16: kv2_i8_ok) */
    const float qm = kv_i8_qmax(D);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)),
                 big = _mm256_set1_ps(FLT_MAX);
    int bad = 0;
    for (int64_t r = 0; r < R; r++) {
        const float* q = w->q + r * D;
        __m256 mx = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8) {
            const __m256 a = _mm256_and_ps(absm, _mm256_loadu_ps(q + d));
            bad |= _mm256_movemask_ps(_mm256_cmp_ps(a, big, _CMP_NLE_UQ)); /* inf or NaN */
            mx = _mm256_max_ps(mx, a);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        const float m = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        w->qs[r] = m / qm;
        /* q * (qm / m) rounded to nearest; where qm / m would overflow (m tiny), (q / m) * qm */
        const int tiny = m < 0x1p-100f;
        const __m256 by = _mm256_set1_ps(tiny       ? qm
                                         : m > 0.0f ? qm / m
                                                    : 0.0f),
                     div = _mm256_set1_ps(m > 0.0f ? m : 1.0f);
        for (int64_t d = 0; d < D; d += 16) {
            __m256 x0 = _mm256_loadu_ps(q + d), x1 = _mm256_loadu_ps(q + d + 8);
            if (tiny) x0 = _mm256_div_ps(x0, div), x1 = _mm256_div_ps(x1, div);
            const __m256i i = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x0, by)),
                                                 _mm256_cvtps_epi32(_mm256_mul_ps(x1, by)));
            _mm256_storeu_si256((__m256i*)(w->qi + r * D + d), _mm256_permute4x64_epi64(i, 0xd8));
        }
    }
    w->qbad = bad != 0;
}

/* acc + vpmaddwd(x, the 32 bytes at p), written as the two instructions: from the intrinsics
 * GCC 12 put each product in a new register, added the accumulator into it and copied it back (a
 * vmovdqa a step: eight of ~26 instructions in kv2_dots_i8's loop, nine of ~45 in kv2_pv_i8's). */
__attribute__((always_inline)) static inline __m256i kv2_madd_add(__m256i acc, __m256i x,
                                                                  const void* p) {
    __m256i t;
    __asm__("{vpmaddwd\t%2, %3, %1\n\tvpaddd\t%1, %0, %0|vpmaddwd\t%1, %3, %2\n\tvpaddd\t%0, %0, "
            "%1}"
            : "+x"(acc), "=&x"(t)
            : "m"(*(const char(*)[32])p), "x"(x));
    return acc;
}

/* a_i += x . v_i and b_i += y . v_i pairwise (vpmaddwd), four rows i, v_i the 32 bytes at
 * pointer v_i: the kernels below. */
#define KV2_MADD8(v0, v1, v2, v3)                                                                  \
    a0 = kv2_madd_add(a0, x, v0), b0 = kv2_madd_add(b0, y, v0), a1 = kv2_madd_add(a1, x, v1),      \
    b1 = kv2_madd_add(b1, y, v1), a2 = kv2_madd_add(a2, x, v2), b2 = kv2_madd_add(b2, y, v2),      \
    a3 = kv2_madd_add(a3, x, v3), b3 = kv2_madd_add(b3, y, v3)

/* The same, the first products setting the accumulators: an add fewer (the adds share the
 * vector pipes with vpmaddwd: 8 of each took 5.1 cycles on Zen 3, 8 vpmaddwd alone 4.4). */
#define KV2_MADD8_FIRST(v0, v1, v2, v3)                                                            \
    a0 = _mm256_madd_epi16(x, kv2_ld(v0)), b0 = _mm256_madd_epi16(y, kv2_ld(v0)),                  \
    a1 = _mm256_madd_epi16(x, kv2_ld(v1)), b1 = _mm256_madd_epi16(y, kv2_ld(v1)),                  \
    a2 = _mm256_madd_epi16(x, kv2_ld(v2)), b2 = _mm256_madd_epi16(y, kv2_ld(v2)),                  \
    a3 = _mm256_madd_epi16(x, kv2_ld(v3)), b3 = _mm256_madd_epi16(y, kv2_ld(v3))
static inline __m256i kv2_ld(const void* p) {
    return _mm256_loadu_si256((const __m256i*)p);
}

/* s[r * KV_KB + t] = f[t] qs[r] (qi_r . k_t) for R (% 4) rows and nb int8 rows of D (% 16) codes:
 * two keys by four rows per pass. The npf rows pf go into L2 on the way. */
static void kv2_dots_i8(const int16_t* restrict qi, const float* qs, int64_t R, int64_t D,
                        const void* const* rows, int64_t nb, const float* f, float* restrict s,
                        const void* const* pf, int64_t npf) {
    float q2[2 * 64]; /* qs[r] twice (R <= 64: kv2_i8_ok) */
    for (int64_t r = 0; r < R; r++)
        q2[2 * r] = q2[2 * r + 1] = qs[r];
    int64_t t = 0;
    for (; t + 2 <= nb; t += 2) {
        const int8_t *k0 = rows[t], *k1 = rows[t + 1];
        kv_pf_rows(pf, npf, t, t + 2, 0, D);
        double f2; /* f[t], f[t + 1] */
        memcpy(&f2, f + t, sizeof f2);
        const __m256 ft = _mm256_castpd_ps(_mm256_set1_pd(f2));
        for (int64_t r = 0; r < R; r += 4) {
            const int16_t* q = qi + r * D;
            __m256i a0, a1, a2, a3, b0, b1, b2, b3;
            {
                const __m256i x = kv2_i8_words(k0), y = kv2_i8_words(k1);
                KV2_MADD8_FIRST(q, q + D, q + 2 * D, q + 3 * D);
            }
            for (int64_t d = 16; d < D; d += 16) {
                const __m256i x = kv2_i8_words(k0 + d), y = kv2_i8_words(k1 + d);
                KV2_MADD8(q + d, q + D + d, q + 2 * D + d, q + 3 * D + d);
            }
            /* lanes: rows r, r + 1 for keys t, t + 1, then rows r + 2, r + 3 */
            const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(q2 + 2 * r), ft);
            const __m256 o =
                _mm256_mul_ps(g, _mm256_cvtepi32_ps(kv2_isum8(a0, b0, a1, b1, a2, b2, a3, b3)));
            kv2_store_pairs(s + r * KV_KB + t, o);
        }
    }
    for (; t < nb; t++) /* an odd last key */
        for (int64_t r = 0; r < R; r += 4) {
            const int16_t* q = qi + r * D;
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t d = 0; d < D; d += 16) {
                const __m256i x = kv2_i8_words((const int8_t*)rows[t] + d);
                a0 = _mm256_add_epi32(
                    a0, _mm256_madd_epi16(x, _mm256_loadu_si256((const __m256i*)(q + d))));
                a1 = _mm256_add_epi32(
                    a1, _mm256_madd_epi16(x, _mm256_loadu_si256((const __m256i*)(q + D + d))));
                a2 = _mm256_add_epi32(
                    a2, _mm256_madd_epi16(x, _mm256_loadu_si256((const __m256i*)(q + 2 * D + d))));
                a3 = _mm256_add_epi32(
                    a3, _mm256_madd_epi16(x, _mm256_loadu_si256((const __m256i*)(q + 3 * D + d))));
            }
            int32_t o[4]; /* rows r .. r + 3 */
            _mm_storeu_si128((__m128i*)o, kv2_isum4(a0, a1, a2, a3));
            for (int i = 0; i < 4; i++)
                s[(r + i) * KV_KB + t] = f[t] * qs[r + i] * (float)o[i];
        }
    kv_pf_rows(pf, npf, t & ~(int64_t)1, npf, 0, D); /* (the odd key's, and a longer block's) */
}

/* pp: the R rows of f[t] p[r * KV_KB + t] (t < nb) as 16-bit integers in key pairs (words 2k,
 * 2k + 1 of row r at pp[r * KV_KB / 2 + k]; 0 past nb), relative to the row's largest |f p|;
 * pf[r]: the factor back. 0 when some f p is not finite. */
static int kv2_p_i16(uint32_t* pp, float* pf, const float* p, const float* f, int64_t R,
                     int64_t nb) {
    _Alignas(32) float fz[KV_KB] = {0};
    memcpy(fz, f, sizeof(float) * (size_t)nb); /* (f past nb: 0, so those keys' P is 0) */
    const __m256 f0 = _mm256_load_ps(fz), f1 = _mm256_load_ps(fz + 8),
                 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)),
                 big = _mm256_set1_ps(FLT_MAX);
    for (int64_t r = 0; r < R; r++) {
        /* (p past nb may be stale: f's zeros clear it, unless it is inf or NaN: masked below) */
        __m256 x0 = _mm256_mul_ps(f0, _mm256_loadu_ps(p + r * KV_KB)),
               x1 = _mm256_mul_ps(f1, _mm256_loadu_ps(p + r * KV_KB + 8));
        if (nb < KV_KB) {
            const __m256i i0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                          n = _mm256_set1_epi32((int)nb);
            x0 = _mm256_and_ps(x0, _mm256_castsi256_ps(_mm256_cmpgt_epi32(n, i0)));
            x1 = _mm256_and_ps(x1, _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                                       n, _mm256_add_epi32(i0, _mm256_set1_epi32(8)))));
        }
        const __m256 a0 = _mm256_and_ps(absm, x0), a1 = _mm256_and_ps(absm, x1);
        if (_mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(a0, big, _CMP_NLE_UQ),
                                            _mm256_cmp_ps(a1, big, _CMP_NLE_UQ))))
            return 0; /* inf or NaN */
        const __m256 mx = _mm256_max_ps(a0, a1);
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        const float m = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        pf[r] = m * (1.0f / 32767.0f);
        /* (times 32767 / m, one division a row; where that would overflow, x / m) */
        if (m < 0x1p-100f) {
            const __m256 dm = _mm256_set1_ps(m > 0.0f ? m : 1.0f);
            x0 = _mm256_div_ps(x0, dm), x1 = _mm256_div_ps(x1, dm);
        }
        const __m256 by = _mm256_set1_ps(m >= 0x1p-100f ? 32767.0f / m
                                         : m > 0.0f     ? 32767.0f
                                                        : 0.0f);
        const __m256i i = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x0, by)),
                                             _mm256_cvtps_epi32(_mm256_mul_ps(x1, by)));
        _mm256_storeu_si256((__m256i*)(pp + r * (KV_KB / 2)), _mm256_permute4x64_epi64(i, 0xd8));
    }
    return 1;
}

/* Element d of a row of acc in kv2_pv_i8's order: of each 16 elements, 0-3 and 8-11 (vpunpcklwd
 * of two keys' words, lane by lane) at 0-7, 4-7 and 12-15 at 8-15. */
static int64_t kv2_acc_index_i8(int64_t d) {
    return (d & ~(int64_t)15) + ((d >> 2) & 1) * 8 + ((d >> 3) & 1) * 4 + (d & 3);
}

/* acc[r] += sum_t f[t] p[r * KV_KB + t] v_t for R (% 4, <= 64) rows and nb int8 rows of Dv
 * (% 16) codes: P in 16 bits (kv2_p_i16), keys in pairs by vpmaddwd, the block's integer sums
 * added to acc (in kv2_acc_index_i8's order) times the row's factor. A P that is not finite (an
 * infinite or NaN scale) goes key by key in fp32. The npf rows nx go into L2 on the way, as
 * kv2_pv_body's. */
static void kv2_pv_i8(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows,
                      int64_t nb, const float* restrict p, const float* f, const void* const* nx,
                      int64_t npf) {
    uint32_t pp[64 * KV_KB / 2];
    float pf[64];
    if (!kv2_p_i16(pp, pf, p, f, R, nb)) {
        kv_pf_rows(nx, npf, 0, npf, 0, Dv);
        kv_pv_i8_keys(acc, R, Dv, rows, nb, p, f, kv2_acc_index_i8);
        return;
    }
    if (nb <= 0) return;
    const int64_t np = (nb + 1) / 2;
    /* each pair of P words broadcast once for the block's passes (vpbroadcastd takes a shuffle
     * slot; a vpmaddwd reads its copy from memory); an odd last key's partner: the key itself,
     * times P's 0 past nb */
    __m256i pb[64 * KV_KB / 2];
    for (int64_t r = 0; r < R; r++)
        for (int64_t k = 0; k < np; k++)
            pb[r * np + k] = _mm256_set1_epi32((int)pp[r * (KV_KB / 2) + k]);
    const int8_t* vr[KV_KB];
    for (int64_t t = 0; t < 2 * np; t++)
        vr[t] = rows[t < nb ? t : nb - 1];
    const int64_t nch = Dv / 16; /* (>= 1: kv2_i8_ok) */
    for (int64_t d = 0; d < Dv; d += 16) {
        kv_pf_rows(nx, npf, d / 16 * npf / nch, (d / 16 + 1) * npf / nch, 0, Dv);
        for (int64_t r = 0; r < R; r += 4) {
            const __m256i* pr = pb + r * np;
            __m256i a0, a1, a2, a3, b0, b1, b2, b3;
            {
                const __m256i wa = kv2_i8_words(vr[0] + d), wb = kv2_i8_words(vr[1] + d);
                const __m256i x = _mm256_unpacklo_epi16(wa, wb), y = _mm256_unpackhi_epi16(wa, wb);
                KV2_MADD8_FIRST(pr, pr + np, pr + 2 * np, pr + 3 * np);
            }
            for (int64_t k = 1; k < np; k++) {
                const __m256i wa = kv2_i8_words(vr[2 * k] + d),
                              wb = kv2_i8_words(vr[2 * k + 1] + d);
                const __m256i x = _mm256_unpacklo_epi16(wa, wb), y = _mm256_unpackhi_epi16(wa, wb);
                KV2_MADD8(pr + k, pr + np + k, pr + 2 * np + k, pr + 3 * np + k);
            }
#define KV2_ADD(I, A, B)                                                                           \
    do {                                                                                           \
        float* o = acc + (r + (I)) * Dv + d;                                                       \
        const __m256 g = _mm256_set1_ps(pf[r + (I)]);                                              \
        _mm256_storeu_ps(o, _mm256_fmadd_ps(g, _mm256_cvtepi32_ps(A), _mm256_loadu_ps(o)));        \
        _mm256_storeu_ps(o + 8,                                                                    \
                         _mm256_fmadd_ps(g, _mm256_cvtepi32_ps(B), _mm256_loadu_ps(o + 8)));       \
    } while (0)
            KV2_ADD(0, a0, b0);
            KV2_ADD(1, a1, b1);
            KV2_ADD(2, a2, b2);
            KV2_ADD(3, a3, b3);
#undef KV2_ADD
        }
    }
}

#undef KV2_MADD8
#undef KV2_MADD8_FIRST

/* The R rows of acc (width Dv) from kv2_pv_i8's order back to element order: per 16 elements, the
 * middle two quarters swapped. */
static void kv2_i8_unpermute(float* acc, int64_t R, int64_t Dv) {
    for (int64_t i = 0; i < R * Dv; i += 16) {
        const __m256 a = _mm256_loadu_ps(acc + i), b = _mm256_loadu_ps(acc + i + 8);
        _mm256_storeu_ps(acc + i, _mm256_permute2f128_ps(a, b, 0x20));
        _mm256_storeu_ps(acc + i + 8, _mm256_permute2f128_ps(a, b, 0x31));
    }
}

static void avx2_scores_i8(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    if (h->w->qbad) { /* (rare: an inf or NaN in q) */
        kv_pf_rows(h->pf, h->npf, 0, h->npf, 0, h->c->a.D);
        avx2_scores(h, rows, nb, f);
        return;
    }
    const int64_t r0 = h->q - h->w->q; /* the head's first row, times D */
    kv2_dots_i8(h->w->qi + r0, h->w->qs + r0 / h->c->a.D, h->R, h->c->a.D, rows, nb, f, h->s, h->pf,
                h->npf);
}

static void avx2_pv_i8(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    kv2_pv_i8(h->acc, h->R, h->c->a.Dv, rows, nb, h->s, f, h->pf, h->npf);
}

static void kv_choose_avx2(const cf_kvcache_call* c, int64_t R, kv_path* p) {
    *p = (kv_path){.scores = avx2_scores,
                   .pv = avx2_pv,
                   .softmax16 = kv2_softmax16,
                   .pf_inside = KV_PF_X86,
                   .pf_seq = KV_PF_AMD};
    if (kv_row_dtype(c) == CF_F8E4M3 && kv2_f32_cpu())
        p->prep = kv2_e4m3_prep, p->scores = avx2_scores_f32, p->pv = avx2_pv_f32;
    if (kv2_bf16_even_odd(c, R)) p->prep = kv2_bf16_prep, p->scores = avx2_scores_bf16;
    if (kv2_bf16_pv_eo(c))
        p->pv = avx2_pv_bf16, p->acc_index = kv2_eo_index, p->finish = kv2_eo_unpermute;
    if (kv2_i8_ok(c, R))
        p->prep = avx2_i8_prep, p->scores = avx2_scores_i8, p->pv = avx2_pv_i8,
        p->acc_index = kv2_acc_index_i8, p->finish = kv2_i8_unpermute;
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
