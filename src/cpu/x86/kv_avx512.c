/* The KV-cache fast path built for AVX-512 (F, BW, VL, DQ; BF16 and VBMI where present): backend
 * cpu-avx512's kvcache_fwd. Its kernels read K and V rows straight from the cache, converted in
 * registers, four query rows per pass so that each loaded key feeds four of them:
 * - scores and P.V in fp32 FMA over rows of any dtype (bf16 / fp16 / fp32, and fp8 / int8 codes);
 * - bf16: scores by vdpbf16ps, four keys by four rows per pass; P.V by vdpbf16ps, two keys per
 *   instruction (P rounded to bf16, as the naive bf16 computation materializes it); where
 *   vdpbf16ps runs at half the FMA rate (Intel) or is absent, fp32 FMA on rows widened in
 *   registers;
 * - quantized caches with bf16 q: the codes decoded to bf16 in registers by byte tables (vpermi2b)
 *   right where vdpbf16ps uses them; int8 where AVX512-VNNI is present: no decode, the codes
 *   sign-extended into vpdpwssd against q and P as 16-bit integers;
 * - fp8 caches with fp32 / fp16 q, and with bf16 q where vdpbf16ps runs at half the FMA rate
 *   (Intel): the codes through fp16 to fp32 in registers, fp32 FMA, four keys by four rows per
 *   pass; fp16 caches (and bf16 ones, above) on the same kernels;
 * - the softmax of a fully visible 16-key block with no horizontal sums.
 * kv_choose_avx512 (at the end) picks them for a call; src/cpu/kvcache_fast.h runs the rest. */
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
#pragma clang attribute push(                                                                      \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))),                   \
    apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")
#endif
#define CF_OPS_AVX512 1
#define CF_OPS_AVX2 1
#define CF_OPS_F16C 1

#include "cpu/kvcache_fast.h"
#include "cpu/ops_fast_common.h"
#include "probe/cpu_features.h"

/* ---- Rows of any dtype in fp32 registers ------------------------------------------------------
 * Quantized caches read the 1-byte codes of a row in registers (dt CF_I8, CF_F8E4M3, CF_F8E5M2),
 * no decoded copy. fp8 goes through fp16 (vcvtph2ps is exact on fp16 subnormals): an e5m2 code
 * is the high byte of the fp16 of its value; an e4m3fn code shifted into fp16's exponent and
 * mantissa fields is its value times 2^-8 (kv_code_unit puts the 2^8 back in the per-key factor)
 * and its one NaN pattern is set apart. */

static inline __m512 kv_load16_code(const void* row, cf_dtype dt, int64_t d, __mmask16 m) {
    const __m128i b = _mm_maskz_loadu_epi8(m, (const uint8_t*)row + d);
    if (dt == CF_I8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    const __m256i w = _mm256_cvtepu8_epi16(b);
    if (dt == CF_F8E5M2) return _mm512_cvtph_ps(_mm256_slli_epi16(w, 8));
    const __m256i a = _mm256_slli_epi16(w, 7); /* e, m in bits 7..13, the sign at bit 14 */
    const __m256i h = _mm256_add_epi16(a, _mm256_and_si256(a, _mm256_set1_epi16(0x4000)));
    const __mmask16 nan =
        _mm_cmpeq_epi8_mask(_mm_or_si128(b, _mm_set1_epi8((char)0x80)), _mm_set1_epi8((char)0xff));
    return _mm512_mask_mov_ps(_mm512_cvtph_ps(h), nan, _mm512_set1_ps(NAN));
}

/* 16 elements (m: the valid lanes) of a row of dtype dt at element d, as fp32. */
static inline __m512 kv_load16(const void* row, cf_dtype dt, int64_t d, __mmask16 m) {
    if (dt == CF_BF16) {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t*)row + d);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (dt == CF_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t*)row + d));
    if (dt == CF_I8 || dt == CF_F8E4M3 || dt == CF_F8E5M2) return kv_load16_code(row, dt, d, m);
    return _mm512_maskz_loadu_ps(m, (const float*)row + d);
}

static inline __mmask16 kv_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

/* The four horizontal sums of a0..a3 into s[0], s[KV_KB], s[2 KV_KB], s[3 KV_KB] (one tree
 * for all four instead of four reductions). */
static inline void reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3, float* s) {
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512 u = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
    __m256 v = _mm256_add_ps(_mm512_castps512_ps256(u),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
    __m128 w = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    float o[4]; /* w = [sum a0, sum a1, sum a2, sum a3] */
    _mm_storeu_ps(o, w);
    s[0] = o[0];
    s[KV_KB] = o[1];
    s[2 * KV_KB] = o[2];
    s[3 * KV_KB] = o[3];
}

/* qw[0..n) = q[0..n) as bf16 words (n % 32 == 0; q exactly bf16 here, a bf16 input or rotated
 * and rounded to bf16, so converting it loses nothing); qw 64-byte aligned. */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_bf16_words(uint16_t* restrict qw, const float* restrict q, int64_t n) {
    for (int64_t i = 0; i < n; i += 32)
        _mm512_store_si512(qw + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(q + i + 16),
                                                                _mm512_loadu_ps(q + i)));
}

/* bf16 scores with AVX512-BF16 (vdpbf16ps: exact products, fp32 sums): s[r * KV_KB + t] =
 * q_r . k_t for R rows of q as bf16 words (kv_bf16_words) and nb bf16 key rows, D % 32 == 0. */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_dots_bf16(const uint16_t* restrict qw, int64_t R, int64_t D, const void* const* rows, int64_t nb,
             float* restrict s) {
    const __m512i* qb = (const __m512i*)qw;
    const int64_t nd = D / 32;
    int64_t t0 = 0;
    /* two keys per pass when the rows come in fours: eight independent dot chains */
    for (; t0 + 2 <= nb && R % 4 == 0; t0 += 2) {
        const uint16_t *k = rows[t0], *k2 = rows[t0 + 1];
        if (t0 + 5 < nb) /* into L1 a few keys ahead (the block itself is already in L2) */
            for (int64_t o = 0; o < D; o += 32)
                _mm_prefetch((const char*)((const uint16_t*)rows[t0 + 4] + o), _MM_HINT_T0),
                    _mm_prefetch((const char*)((const uint16_t*)rows[t0 + 5] + o), _MM_HINT_T0);
        for (int64_t r = 0; r < R; r += 4) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            const __m512i* qr = qb + r * nd;
            for (int64_t c = 0; c < nd; c++) {
                __m512bh kv = (__m512bh)_mm512_loadu_si512(k + 32 * c);
                __m512bh kw = (__m512bh)_mm512_loadu_si512(k2 + 32 * c);
                __m512bh q0 = (__m512bh)qr[c], q1 = (__m512bh)qr[nd + c],
                         q2 = (__m512bh)qr[2 * nd + c], q3 = (__m512bh)qr[3 * nd + c];
                a0 = _mm512_dpbf16_ps(a0, q0, kv);
                a1 = _mm512_dpbf16_ps(a1, q1, kv);
                a2 = _mm512_dpbf16_ps(a2, q2, kv);
                a3 = _mm512_dpbf16_ps(a3, q3, kv);
                b0 = _mm512_dpbf16_ps(b0, q0, kw);
                b1 = _mm512_dpbf16_ps(b1, q1, kw);
                b2 = _mm512_dpbf16_ps(b2, q2, kw);
                b3 = _mm512_dpbf16_ps(b3, q3, kw);
            }
            reduce4(a0, a1, a2, a3, s + r * KV_KB + t0);
            reduce4(b0, b1, b2, b3, s + r * KV_KB + t0 + 1);
        }
    }
    for (int64_t t = t0; t < nb; t++) {
        const uint16_t* k = rows[t];
        int64_t r = 0;
        for (; r + 4 <= R; r += 4) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            const __m512i* qr = qb + r * nd;
            for (int64_t c = 0; c < nd; c++) {
                __m512bh kv = (__m512bh)_mm512_loadu_si512(k + 32 * c);
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)qr[c], kv);
                a1 = _mm512_dpbf16_ps(a1, (__m512bh)qr[nd + c], kv);
                a2 = _mm512_dpbf16_ps(a2, (__m512bh)qr[2 * nd + c], kv);
                a3 = _mm512_dpbf16_ps(a3, (__m512bh)qr[3 * nd + c], kv);
            }
            reduce4(a0, a1, a2, a3, s + r * KV_KB + t);
        }
        for (; r < R; r++) {
            __m512 a0 = _mm512_setzero_ps();
            for (int64_t c = 0; c < nd; c++)
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)qb[r * nd + c],
                                      (__m512bh)_mm512_loadu_si512(k + 32 * c));
            s[r * KV_KB + t] = _mm512_reduce_add_ps(a0);
        }
    }
}

/* s[r * KV_KB + t] = q_r . k_t for the nb rows of dtype dt (codes: in kv_code_unit's units). */
static void kv_dots(const float* restrict q, int64_t R, int64_t D, const void* const* rows,
                    int64_t nb, cf_dtype dt, float* restrict s) {
    for (int64_t t = 0; t < nb; t++) {
        const void* k = rows[t];
        int64_t r = 0;
        for (; r + 4 <= R; r += 4) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            const float* q0 = q + r * D;
            for (int64_t d = 0; d < D; d += 16) {
                __mmask16 m = kv_mask(D - d);
                __m512 kv = kv_load16(k, dt, d, m);
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + d), kv, a0);
                a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + D + d), kv, a1);
                a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + 2 * D + d), kv, a2);
                a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + 3 * D + d), kv, a3);
            }
            reduce4(a0, a1, a2, a3, s + r * KV_KB + t);
        }
        for (; r < R; r++) {
            __m512 a0 = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; d += 16) {
                __mmask16 m = kv_mask(D - d);
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + r * D + d),
                                     kv_load16(k, dt, d, m), a0);
            }
            s[r * KV_KB + t] = _mm512_reduce_add_ps(a0);
        }
    }
}

/* acc[r] += sum_t p[r * KV_KB + t] v_t for the nb rows of dtype dt (codes: in kv_code_unit's
 * units). */
static void kv_pv(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
                  cf_dtype dt, const float* restrict p) {
    int64_t d = 0;
    /* two chunks of 16 per pass: eight independent FMA chains hide the FMA latency */
    for (; d + 32 <= Dv && R >= 4; d += 32) {
        int64_t r = 0;
        for (; r + 4 <= R; r += 4) {
            float* o = acc + r * Dv + d;
            const float* pr = p + r * KV_KB;
            __m512 a0 = _mm512_loadu_ps(o), a1 = _mm512_loadu_ps(o + Dv),
                   a2 = _mm512_loadu_ps(o + 2 * Dv), a3 = _mm512_loadu_ps(o + 3 * Dv);
            __m512 b0 = _mm512_loadu_ps(o + 16), b1 = _mm512_loadu_ps(o + Dv + 16),
                   b2 = _mm512_loadu_ps(o + 2 * Dv + 16), b3 = _mm512_loadu_ps(o + 3 * Dv + 16);
            for (int64_t t = 0; t < nb; t++) {
                __m512 v = kv_load16(rows[t], dt, d, 0xffff);
                __m512 w = kv_load16(rows[t], dt, d + 16, 0xffff);
                __m512 p0 = _mm512_set1_ps(pr[t]), p1 = _mm512_set1_ps(pr[KV_KB + t]),
                       p2 = _mm512_set1_ps(pr[2 * KV_KB + t]),
                       p3 = _mm512_set1_ps(pr[3 * KV_KB + t]);
                a0 = _mm512_fmadd_ps(p0, v, a0);
                a1 = _mm512_fmadd_ps(p1, v, a1);
                a2 = _mm512_fmadd_ps(p2, v, a2);
                a3 = _mm512_fmadd_ps(p3, v, a3);
                b0 = _mm512_fmadd_ps(p0, w, b0);
                b1 = _mm512_fmadd_ps(p1, w, b1);
                b2 = _mm512_fmadd_ps(p2, w, b2);
                b3 = _mm512_fmadd_ps(p3, w, b3);
            }
            _mm512_storeu_ps(o, a0), _mm512_storeu_ps(o + Dv, a1);
            _mm512_storeu_ps(o + 2 * Dv, a2), _mm512_storeu_ps(o + 3 * Dv, a3);
            _mm512_storeu_ps(o + 16, b0), _mm512_storeu_ps(o + Dv + 16, b1);
            _mm512_storeu_ps(o + 2 * Dv + 16, b2), _mm512_storeu_ps(o + 3 * Dv + 16, b3);
        }
        for (; r < R; r++) {
            float* o = acc + r * Dv + d;
            __m512 a0 = _mm512_loadu_ps(o), b0 = _mm512_loadu_ps(o + 16);
            for (int64_t t = 0; t < nb; t++) {
                __m512 pv = _mm512_set1_ps(p[r * KV_KB + t]);
                a0 = _mm512_fmadd_ps(pv, kv_load16(rows[t], dt, d, 0xffff), a0);
                b0 = _mm512_fmadd_ps(pv, kv_load16(rows[t], dt, d + 16, 0xffff), b0);
            }
            _mm512_storeu_ps(o, a0), _mm512_storeu_ps(o + 16, b0);
        }
    }
    for (; d < Dv; d += 16) {
        __mmask16 m = kv_mask(Dv - d);
        int64_t r = 0;
        for (; r + 4 <= R; r += 4) {
            float* o = acc + r * Dv + d;
            const float* pr = p + r * KV_KB;
            __m512 a0 = _mm512_maskz_loadu_ps(m, o), a1 = _mm512_maskz_loadu_ps(m, o + Dv),
                   a2 = _mm512_maskz_loadu_ps(m, o + 2 * Dv),
                   a3 = _mm512_maskz_loadu_ps(m, o + 3 * Dv);
            for (int64_t t = 0; t < nb; t++) {
                __m512 v = kv_load16(rows[t], dt, d, m);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(pr[t]), v, a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(pr[KV_KB + t]), v, a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(pr[2 * KV_KB + t]), v, a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(pr[3 * KV_KB + t]), v, a3);
            }
            _mm512_mask_storeu_ps(o, m, a0);
            _mm512_mask_storeu_ps(o + Dv, m, a1);
            _mm512_mask_storeu_ps(o + 2 * Dv, m, a2);
            _mm512_mask_storeu_ps(o + 3 * Dv, m, a3);
        }
        for (; r < R; r++) {
            float* o = acc + r * Dv + d;
            __m512 a0 = _mm512_maskz_loadu_ps(m, o);
            for (int64_t t = 0; t < nb; t++)
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[r * KV_KB + t]), kv_load16(rows[t], dt, d, m),
                                     a0);
            _mm512_mask_storeu_ps(o, m, a0);
        }
    }
}

/* Sixteen zeroed fp32 accumulators a<i><j> (four rows by four keys, or by four 16-column
 * chunks). */
#define KV_ACC_ZERO4x4()                                                                           \
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;                             \
    __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;                                             \
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;                                             \
    __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00

/* ---- bf16 scores with AVX512-BF16: four keys by four query rows per pass (16 independent
 * vdpbf16ps chains, each loaded key feeding four), each row's four sums reduced by one tree and
 * stored as one 4-float vector (no per-score scalar stores). ---- */

/* Keys t + 4 .. t + 7 of a block (rows of `bytes` bytes) into L1, where the block has them (it
 * is already in L2): the next pass of a four-key kernel. */
static inline void kv_next4_l1(const void* const* rows, int64_t t, int64_t nb, int64_t bytes) {
    if (t + 8 <= nb)
        for (int64_t u = t + 4; u < t + 8; u++)
            for (int64_t o = 0; o < bytes; o += 64)
                _mm_prefetch((const char*)rows[u] + o, _MM_HINT_T0);
}

/* [sum a0, sum a1, sum a2, sum a3] (the tree of reduce4, kept in a register). */
static inline __m128 kv_sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512 u = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
    __m256 v = _mm256_add_ps(_mm512_castps512_ps256(u),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
}

/* The sums of 16 accumulators of four rows by four keys (x[4i + j]: row i, key j) in one tree:
 * 128-bit lane i of the result holds row i's four sums, key j at element j. 45 instructions
 * where four kv_sum4 trees take 52, and the 16 sums scaled (and converted) at once. */
#define KV_SUM16(T, ADD, UNLO, UNHI, UNLO2, UNHI2, SHUF)                                           \
    do {                                                                                           \
        T u[8], v[4];                                                                              \
        for (int i = 0; i < 8; i++) /* lanes of two accumulators pairwise */                       \
            u[i] = ADD(UNLO(x[2 * i], x[2 * i + 1]), UNHI(x[2 * i], x[2 * i + 1]));                \
        for (int i = 0; i < 4; i++) /* 128-bit lane c of v[i]: lane c's sums of row i's keys */    \
            v[i] = ADD(UNLO2(u[2 * i], u[2 * i + 1]), UNHI2(u[2 * i], u[2 * i + 1]));              \
        const T y01 = ADD(SHUF(v[0], v[1], 0x44), SHUF(v[0], v[1], 0xEE));                         \
        const T y23 = ADD(SHUF(v[2], v[3], 0x44), SHUF(v[2], v[3], 0xEE));                         \
        return ADD(SHUF(y01, y23, 0x88), SHUF(y01, y23, 0xDD));                                    \
    } while (0)
#define KV_UNLO64_PS(a, b)                                                                         \
    _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
#define KV_UNHI64_PS(a, b)                                                                         \
    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
static inline __m512 kv_sum16(const __m512* x) {
    KV_SUM16(__m512, _mm512_add_ps, _mm512_unpacklo_ps, _mm512_unpackhi_ps, KV_UNLO64_PS,
             KV_UNHI64_PS, _mm512_shuffle_f32x4);
}
static inline __m512i kv_isum16(const __m512i* x) {
    KV_SUM16(__m512i, _mm512_add_epi32, _mm512_unpacklo_epi32, _mm512_unpackhi_epi32,
             _mm512_unpacklo_epi64, _mm512_unpackhi_epi64, _mm512_shuffle_i32x4);
}
#undef KV_SUM16
#undef KV_UNLO64_PS
#undef KV_UNHI64_PS

/* Row i's four sums (128-bit lane i of v) to o[i * KV_KB .. + 4). */
static inline void kv_store16(float* o, __m512 v) {
    _mm_storeu_ps(o, _mm512_castps512_ps128(v));
    _mm_storeu_ps(o + KV_KB, _mm512_extractf32x4_ps(v, 1));
    _mm_storeu_ps(o + 2 * KV_KB, _mm512_extractf32x4_ps(v, 2));
    _mm_storeu_ps(o + 3 * KV_KB, _mm512_extractf32x4_ps(v, 3));
}

/* Whether kv_dots_bf16 serves a call: bf16, head dim D; and kv_dots_bf16x4 with R rows. */
static inline int kv_bf16_ok(cf_dtype dt, int64_t D) {
    return dt == CF_BF16 && cf_cpu()->avx512bf16 && D % 32 == 0;
}
static inline int kv_dots_x4_ok(cf_dtype dt, int64_t R, int64_t D) {
    return kv_bf16_ok(dt, D) && R % 4 == 0;
}

/* s[r * KV_KB + t] = q_r . k_t (q as for kv_dots_bf16), keys in fours, R % 4 == 0. The npf rows
 * pf go into L2 on the way (a line of four of them beside each line of the four keys read). */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_dots_bf16x4(const uint16_t* restrict qw, int64_t R, int64_t D, const void* const* rows,
               int64_t nb, float* restrict s, const void* const* pf, int64_t npf) {
    const __m512i* qb = (const __m512i*)qw;
    const int64_t nd = D / 32;
    int64_t t = 0;
    for (; t + 4 <= nb; t += 4) {
        const uint16_t *k0 = rows[t], *k1 = rows[t + 1], *k2 = rows[t + 2], *k3 = rows[t + 3];
        kv_next4_l1(rows, t, nb, 2 * D);
        for (int64_t r = 0; r < R; r += 4) {
            KV_ACC_ZERO4x4();
            const __m512i* qr = qb + r * nd;
            for (int64_t c = 0; c < nd; c++) {
                if (r == 0) kv_pf_rows(pf, npf, t, t + 4, 64 * c, 64 * c + 64);
                __m512bh x0 = (__m512bh)_mm512_loadu_si512(k0 + 32 * c),
                         x1 = (__m512bh)_mm512_loadu_si512(k1 + 32 * c),
                         x2 = (__m512bh)_mm512_loadu_si512(k2 + 32 * c),
                         x3 = (__m512bh)_mm512_loadu_si512(k3 + 32 * c);
                __m512bh q0 = (__m512bh)qr[c];
                a00 = _mm512_dpbf16_ps(a00, q0, x0), a01 = _mm512_dpbf16_ps(a01, q0, x1);
                a02 = _mm512_dpbf16_ps(a02, q0, x2), a03 = _mm512_dpbf16_ps(a03, q0, x3);
                __m512bh q1 = (__m512bh)qr[nd + c];
                a10 = _mm512_dpbf16_ps(a10, q1, x0), a11 = _mm512_dpbf16_ps(a11, q1, x1);
                a12 = _mm512_dpbf16_ps(a12, q1, x2), a13 = _mm512_dpbf16_ps(a13, q1, x3);
                __m512bh q2 = (__m512bh)qr[2 * nd + c];
                a20 = _mm512_dpbf16_ps(a20, q2, x0), a21 = _mm512_dpbf16_ps(a21, q2, x1);
                a22 = _mm512_dpbf16_ps(a22, q2, x2), a23 = _mm512_dpbf16_ps(a23, q2, x3);
                __m512bh q3 = (__m512bh)qr[3 * nd + c];
                a30 = _mm512_dpbf16_ps(a30, q3, x0), a31 = _mm512_dpbf16_ps(a31, q3, x1);
                a32 = _mm512_dpbf16_ps(a32, q3, x2), a33 = _mm512_dpbf16_ps(a33, q3, x3);
            }
            const __m512 x[16] = {a00, a01, a02, a03, a10, a11, a12, a13,
                                  a20, a21, a22, a23, a30, a31, a32, a33};
            kv_store16(s + r * KV_KB + t, kv_sum16(x));
        }
    }
    if (t < nb) kv_dots_bf16(qw, R, D, rows + t, nb - t, s + t);
    kv_pf_rows(pf, npf, t, npf, 0, 2 * D); /* (the tail's and a later block longer than this) */
}

/* ---- Softmax of a fully visible 16-key block: the block max is reduced only when some score
 * exceeds the running max (rare after the first blocks), and the sum of P is kept as 16 lanes per
 * row, reduced once per item. ---- */

/* One row of a fully visible 16-key block (no softcap, no ALiBi): s = scale * s; if some score
 * exceeds the running max m, m moves and l, lv and acc (Dv) are rescaled; then s = exp(s - m)
 * (the polynomial of exp_row) and lv += s. */
static inline void kv_softmax16_row(float* s, float scale, float* m, float* l, float* lv,
                                    float* acc, int64_t Dv) {
    __m512 x = _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_loadu_ps(s));
    if (_mm512_cmp_ps_mask(x, _mm512_set1_ps(*m), _CMP_GT_OQ)) {
        const float mx = _mm512_reduce_max_ps(x), alpha = fexp(*m - mx);
        *m = mx;
        *l *= alpha;
        const __m512 va = _mm512_set1_ps(alpha);
        _mm512_storeu_ps(lv, _mm512_mul_ps(va, _mm512_loadu_ps(lv)));
        int64_t d = 0;
        for (; d + 16 <= Dv; d += 16)
            _mm512_storeu_ps(acc + d, _mm512_mul_ps(va, _mm512_loadu_ps(acc + d)));
        for (; d < Dv; d++)
            acc[d] *= alpha;
    }
    const __m512 p = v16_exp_le0(_mm512_sub_ps(x, _mm512_set1_ps(*m)));
    _mm512_storeu_ps(s, p);
    _mm512_storeu_ps(lv, _mm512_add_ps(_mm512_loadu_ps(lv), p));
}

static void kv_softmax16(float* s, int64_t n, float scale, float* m, float* l, float* lv,
                         float* acc, int64_t Dv) {
    for (int64_t r = 0; r < n; r++)
        kv_softmax16_row(s + r * KV_KB, scale, m + r, l + r, lv + 16 * r, acc + r * Dv, Dv);
}

/* ---- P.V with vdpbf16ps: P rounded to bf16 (as the naive bf16 computation materializes it),
 * two keys per instruction. A pair of V rows is interleaved with vpunpck{l,h}wd, so acc is kept
 * permuted within each 32-element chunk (lanes 4i..4i+3 of the low half: elements 8i..8i+3, of
 * the high half: 8i+4..8i+7) and put back in order once per item by kv_pv_unpermute. ---- */

/* The P.V kernels' accumulators: four rows (stride Dv) by 64 columns of acc at o, a<row><k>
 * holding columns 16 k .. 16 k + 15. */
#define KV_ACC_LOAD4x4(o, Dv)                                                                      \
    __m512 a00 = _mm512_loadu_ps(o), a01 = _mm512_loadu_ps((o) + 16),                              \
           a02 = _mm512_loadu_ps((o) + 32), a03 = _mm512_loadu_ps((o) + 48);                       \
    __m512 a10 = _mm512_loadu_ps((o) + (Dv)), a11 = _mm512_loadu_ps((o) + (Dv) + 16),              \
           a12 = _mm512_loadu_ps((o) + (Dv) + 32), a13 = _mm512_loadu_ps((o) + (Dv) + 48);         \
    __m512 a20 = _mm512_loadu_ps((o) + 2 * (Dv)), a21 = _mm512_loadu_ps((o) + 2 * (Dv) + 16),      \
           a22 = _mm512_loadu_ps((o) + 2 * (Dv) + 32), a23 = _mm512_loadu_ps((o) + 2 * (Dv) + 48); \
    __m512 a30 = _mm512_loadu_ps((o) + 3 * (Dv)), a31 = _mm512_loadu_ps((o) + 3 * (Dv) + 16),      \
           a32 = _mm512_loadu_ps((o) + 3 * (Dv) + 32), a33 = _mm512_loadu_ps((o) + 3 * (Dv) + 48)
#define KV_ACC_STORE4x4(o, Dv)                                                                     \
    do {                                                                                           \
        _mm512_storeu_ps(o, a00), _mm512_storeu_ps((o) + 16, a01);                                 \
        _mm512_storeu_ps((o) + 32, a02), _mm512_storeu_ps((o) + 48, a03);                          \
        _mm512_storeu_ps((o) + (Dv), a10), _mm512_storeu_ps((o) + (Dv) + 16, a11);                 \
        _mm512_storeu_ps((o) + (Dv) + 32, a12), _mm512_storeu_ps((o) + (Dv) + 48, a13);            \
        _mm512_storeu_ps((o) + 2 * (Dv), a20), _mm512_storeu_ps((o) + 2 * (Dv) + 16, a21);         \
        _mm512_storeu_ps((o) + 2 * (Dv) + 32, a22), _mm512_storeu_ps((o) + 2 * (Dv) + 48, a23);    \
        _mm512_storeu_ps((o) + 3 * (Dv), a30), _mm512_storeu_ps((o) + 3 * (Dv) + 16, a31);         \
        _mm512_storeu_ps((o) + 3 * (Dv) + 32, a32), _mm512_storeu_ps((o) + 3 * (Dv) + 48, a33);    \
    } while (0)

/* Whether kv_pv_dp (and its permuted acc layout) serves R rows, V of dtype dt and width Dv. */
static inline int kv_pv_dp_ok(cf_dtype dt, int64_t R, int64_t Dv) {
    return dt == CF_BF16 && cf_cpu()->avx512bf16 && Dv % 64 == 0 && R <= 64;
}

/* pp[r * KV_KB / 2 + k] = bf16(f p[r][2k]) | bf16(f p[r][2k + 1]) << 16 for the R rows of a
 * block's P (nb keys; 0 past them) and each key's factor f (NULL: 1): the pairs of weights
 * vdpbf16ps takes against two keys' values. */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static inline void
kv_p_pairs(uint32_t* pp, const float* p, const float* f, int64_t R, int64_t nb) {
    const __mmask16 live = kv_mask(nb);
    const __m512 vf = f ? _mm512_maskz_loadu_ps(live, f) : _mm512_set1_ps(1.0f);
    for (int64_t r = 0; r < R; r++)
        _mm256_storeu_si256((__m256i*)(pp + r * (KV_KB / 2)),
                            (__m256i)_mm512_cvtneps_pbh(
                                _mm512_mul_ps(vf, _mm512_maskz_loadu_ps(live, p + r * KV_KB))));
}

#define KV_DP4(A0, A1, A2, A3, X)                                                                  \
    A0 = _mm512_dpbf16_ps(A0, (__m512bh)(X), (__m512bh)p0);                                        \
    A1 = _mm512_dpbf16_ps(A1, (__m512bh)(X), (__m512bh)p1);                                        \
    A2 = _mm512_dpbf16_ps(A2, (__m512bh)(X), (__m512bh)p2);                                        \
    A3 = _mm512_dpbf16_ps(A3, (__m512bh)(X), (__m512bh)p3)

/* acc[r] += sum_t bf16(f[t] p[r * KV_KB + t]) v_t (acc permuted; f NULL: 1), keys in pairs,
 * rows in fours. The npf rows pf (bf16) go into L2 on the way, as in kv_dots_bf16x4. */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_pv_dp(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
         const float* restrict p, const float* f, const void* const* pf, int64_t npf) {
    uint32_t pp[64 * KV_KB / 2];
    kv_p_pairs(pp, p, f, R, nb);
    const int64_t np = (nb + 1) / 2, Rd = R;
    const uint16_t zero[64] = {0};
    for (int64_t d = 0; d < Dv; d += 64) {
        int64_t r = 0;
        for (; r + 4 <= Rd; r += 4) {
            float* o = acc + r * Dv + d;
            const uint32_t* pr = pp + r * (KV_KB / 2);
            KV_ACC_LOAD4x4(o, Dv);
            for (int64_t k = 0; k < np; k++) {
                if (r == 0) kv_pf_rows(pf, npf, 2 * k, 2 * k + 2, 2 * d, 2 * d + 128);
                const uint16_t* v0 = (const uint16_t*)rows[2 * k] + d;
                const uint16_t* v1 = 2 * k + 1 < nb ? (const uint16_t*)rows[2 * k + 1] + d : zero;
                const __m512i x0 = _mm512_loadu_si512(v0), y0 = _mm512_loadu_si512(v1);
                const __m512i x1 = _mm512_loadu_si512(v0 + 32), y1 = _mm512_loadu_si512(v1 + 32);
                const __m512i l0 = _mm512_unpacklo_epi16(x0, y0),
                              h0 = _mm512_unpackhi_epi16(x0, y0);
                const __m512i l1 = _mm512_unpacklo_epi16(x1, y1),
                              h1 = _mm512_unpackhi_epi16(x1, y1);
                const __m512i p0 = _mm512_set1_epi32((int)pr[k]),
                              p1 = _mm512_set1_epi32((int)pr[KV_KB / 2 + k]),
                              p2 = _mm512_set1_epi32((int)pr[KV_KB + k]),
                              p3 = _mm512_set1_epi32((int)pr[3 * KV_KB / 2 + k]);
                KV_DP4(a00, a10, a20, a30, l0);
                KV_DP4(a01, a11, a21, a31, h0);
                KV_DP4(a02, a12, a22, a32, l1);
                KV_DP4(a03, a13, a23, a33, h1);
            }
            KV_ACC_STORE4x4(o, Dv);
        }
        for (; r < Rd; r++) {
            float* o = acc + r * Dv + d;
            const uint32_t* pr = pp + r * (KV_KB / 2);
            __m512 a0 = _mm512_loadu_ps(o), a1 = _mm512_loadu_ps(o + 16),
                   a2 = _mm512_loadu_ps(o + 32), a3 = _mm512_loadu_ps(o + 48);
            for (int64_t k = 0; k < np; k++) {
                if (r == 0) kv_pf_rows(pf, npf, 2 * k, 2 * k + 2, 2 * d, 2 * d + 128);
                const uint16_t* v0 = (const uint16_t*)rows[2 * k] + d;
                const uint16_t* v1 = 2 * k + 1 < nb ? (const uint16_t*)rows[2 * k + 1] + d : zero;
                const __m512i x0 = _mm512_loadu_si512(v0), y0 = _mm512_loadu_si512(v1);
                const __m512i x1 = _mm512_loadu_si512(v0 + 32), y1 = _mm512_loadu_si512(v1 + 32);
                const __m512bh pv = (__m512bh)_mm512_set1_epi32((int)pr[k]);
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_unpacklo_epi16(x0, y0), pv);
                a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_unpackhi_epi16(x0, y0), pv);
                a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_unpacklo_epi16(x1, y1), pv);
                a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_unpackhi_epi16(x1, y1), pv);
            }
            _mm512_storeu_ps(o, a0), _mm512_storeu_ps(o + 16, a1);
            _mm512_storeu_ps(o + 32, a2), _mm512_storeu_ps(o + 48, a3);
        }
    }
    kv_pf_rows(pf, npf, 2 * np, npf, 0, 2 * Dv); /* (a later block longer than this one) */
}

/* The R rows of acc (width Dv) from kv_pv_dp's permuted layout back to element order. */
static void kv_pv_unpermute(float* acc, int64_t R, int64_t Dv) {
    const __m512i i0 = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
    const __m512i i1 =
        _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
    for (int64_t i = 0; i < R * Dv; i += 32) {
        __m512 lo = _mm512_loadu_ps(acc + i), hi = _mm512_loadu_ps(acc + i + 16);
        _mm512_storeu_ps(acc + i, _mm512_permutex2var_ps(lo, i0, hi));
        _mm512_storeu_ps(acc + i + 16, _mm512_permutex2var_ps(lo, i1, hi));
    }
}

/* ---- Quantized caches with bf16 q: a block's 1-byte codes decoded to bf16 rows in registers by
 * byte tables (vpermi2b looks up the high and the low byte of each code's bf16 value by its low
 * 7 bits), stored to an L1 scratch and read by the bf16 kernels above. Every fp8 (e4m3fn, e5m2)
 * and int8 value is exact in bf16 (at most 4 / 8 significant bits, exponents well inside bf16's
 * normal range: vdpbf16ps flushes no subnormal), NaN and infinities included. ---- */

/* Whether kv_q_decode serves a call: bf16 q, D and Dv in whole 64-code chunks. */
static inline int kv_q_bf16_ok(cf_dtype dt, int64_t D, int64_t Dv) {
    const cf_cpu_info* c = cf_cpu();
    return dt == CF_BF16 && c->avx512bf16 && c->avx512vbmi && D % 64 == 0 && Dv % 64 == 0;
}

/* tab[0..128): the high byte of the bf16 value of each code by its low 7 bits, tab[128..256):
 * the low byte. fp8: the value of the magnitude (kv_q_decode ORs the sign bit in); int8: the
 * value of |code|, with entry 0 for |-128| = 128 (code 0 is zeroed by its mask). */
static void kv_q_tables(int quant, uint8_t* tab) {
    for (int i = 0; i < 128; i++) {
        const float v = quant == CFLASH_KV_QUANT_INT8
                            ? (float)(i ? i : 128)
                            : cf_fp8_to_f32((uint8_t)i, quant == CFLASH_KV_QUANT_FP8_E5M2);
        uint32_t u;
        memcpy(&u, &v, 4);
        tab[i] = (uint8_t)(u >> 24);
        tab[128 + i] = (uint8_t)(u >> 16);
    }
}

/* Byte indexes that interleave the low bytes (first operand) and the high bytes (second) of 32
 * words: word w of the result is lo[w0 + w] | hi[w0 + w] << 8, w0 = 0 (kv_q_il[0]) or 32. */
static const uint8_t kv_q_il[2][64] __attribute__((aligned(64))) = {
    {0,  64, 1,  65, 2,  66, 3,  67, 4,  68, 5,  69, 6,  70, 7,  71, 8,  72, 9,  73, 10, 74,
     11, 75, 12, 76, 13, 77, 14, 78, 15, 79, 16, 80, 17, 81, 18, 82, 19, 83, 20, 84, 21, 85,
     22, 86, 23, 87, 24, 88, 25, 89, 26, 90, 27, 91, 28, 92, 29, 93, 30, 94, 31, 95},
    {32, 96,  33, 97,  34, 98,  35, 99,  36, 100, 37, 101, 38, 102, 39, 103,
     40, 104, 41, 105, 42, 106, 43, 107, 44, 108, 45, 109, 46, 110, 47, 111,
     48, 112, 49, 113, 50, 114, 51, 115, 52, 116, 53, 117, 54, 118, 55, 119,
     56, 120, 57, 121, 58, 122, 59, 123, 60, 124, 61, 125, 62, 126, 63, 127}};

/* out[t] = dst + t * n: the n codes of row t (of nb) as bf16, n % 64 == 0; tab: kv_q_tables. */
__attribute__((target("avx512vbmi,avx512f,avx512bw,avx512vl"))) static void
kv_q_decode(uint16_t* restrict dst, const void* const* rows, int64_t nb, int64_t n,
            const uint8_t* tab, int int8, const void** out) {
    const __m512i h0 = _mm512_loadu_si512(tab), h1 = _mm512_loadu_si512(tab + 64);
    const __m512i l0 = _mm512_loadu_si512(tab + 128), l1 = _mm512_loadu_si512(tab + 192);
    const __m512i i0 = _mm512_load_si512(kv_q_il[0]), i1 = _mm512_load_si512(kv_q_il[1]);
    const __m512i sign = _mm512_set1_epi8((char)0x80);
    for (int64_t t = 0; t < nb; t++) {
        const uint8_t* x = rows[t];
        uint16_t* y = dst + t * n;
        out[t] = y;
        for (int64_t d = 0; d < n; d += 64) {
            const __m512i c = _mm512_loadu_si512(x + d);
            __m512i hi, lo;
            if (int8) { /* |code| (|-128| = 0x80, entry 0), code 0 masked to +0 */
                const __mmask64 nz = _mm512_test_epi8_mask(c, c);
                const __m512i a = _mm512_abs_epi8(c);
                hi = _mm512_maskz_permutex2var_epi8(nz, h0, a, h1);
                lo = _mm512_maskz_permutex2var_epi8(nz, l0, a, l1);
            } else {
                hi = _mm512_permutex2var_epi8(h0, c, h1);
                lo = _mm512_permutex2var_epi8(l0, c, l1);
            }
            hi = _mm512_ternarylogic_epi32(hi, c, sign, 0xf8); /* hi | (c & 0x80): the sign */
            _mm512_storeu_si512(y + d, _mm512_permutex2var_epi8(lo, i0, hi));
            _mm512_storeu_si512(y + d + 32, _mm512_permutex2var_epi8(lo, i1, hi));
        }
    }
}

/* ---- Quantized caches, fused: the codes decoded in registers right where the bf16 dot products
 * use them (no scratch rows), each decoded register feeding four query rows. The decode leaves
 * 64 codes as two registers of bf16 words in vpunpck{l,h}bw order (word 8L + j of the first:
 * code 16L + j, of the second: code 16L + 8 + j, L the 128-bit lane); the scores take q in the
 * same order (kv_q_prep), P.V pairs two keys' codes byte by byte before the lookup, so that its
 * sums come out per key pair and acc is kept in kv_pv_q's order (kv_q_unpermute). ---- */

typedef struct kv_qlut {
    __m512i h0, h1, l0, l1; /* kv_q_tables: high bytes, low bytes */
} kv_qlut;

static inline kv_qlut kv_qlut_load(const uint8_t* tab) {
    kv_qlut T = {_mm512_loadu_si512(tab), _mm512_loadu_si512(tab + 64),
                 _mm512_loadu_si512(tab + 128), _mm512_loadu_si512(tab + 192)};
    return T;
}

/* The high and the low bytes of the bf16 values of the 64 codes in c. */
__attribute__((target("avx512vbmi,avx512f,avx512bw"), always_inline)) static inline void
kv_q_bytes(__m512i c, const kv_qlut* T, int int8, __m512i* hi, __m512i* lo) {
    if (int8) { /* |code| (|-128| = 0x80: entry 0), code 0 masked to +0 */
        const __mmask64 nz = _mm512_test_epi8_mask(c, c);
        const __m512i a = _mm512_abs_epi8(c);
        *hi = _mm512_maskz_permutex2var_epi8(nz, T->h0, a, T->h1);
        *lo = _mm512_maskz_permutex2var_epi8(nz, T->l0, a, T->l1);
    } else {
        *hi = _mm512_permutex2var_epi8(T->h0, c, T->h1);
        *lo = _mm512_permutex2var_epi8(T->l0, c, T->l1);
    }
    *hi = _mm512_ternarylogic_epi32(*hi, c, _mm512_set1_epi8((char)0x80), 0xf8); /* | sign */
}

/* Whether the fused kernels serve R rows of a KV head (rows in fours; kv_pv_q's P pairs hold up
 * to 64 rows). */
static inline int kv_q_fused_ok(int64_t R) {
    return R % 4 == 0 && R <= 64;
}

/* qw = the R rows of q (exactly bf16: a bf16 input, or rotated and rounded to bf16) as bf16
 * words, each 64 elements in kv_q_bytes' unpacked order (A: elements 16L + 0..7, B: 16L + 8..15
 * of the 128-bit lanes L). */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_q_prep(uint16_t* restrict qw, const float* restrict q, int64_t R, int64_t D) {
    static const uint16_t ia[32] __attribute__((aligned(64))) = {
        0,  1,  2,  3,  4,  5,  6,  7,  16, 17, 18, 19, 20, 21, 22, 23,
        32, 33, 34, 35, 36, 37, 38, 39, 48, 49, 50, 51, 52, 53, 54, 55};
    const __m512i A = _mm512_load_si512(ia), B = _mm512_add_epi16(A, _mm512_set1_epi16(8));
    for (int64_t i = 0; i < R * D; i += 64) {
        const __m512i n0 =
            (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(q + i + 16), _mm512_loadu_ps(q + i));
        const __m512i n1 =
            (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(q + i + 48), _mm512_loadu_ps(q + i + 32));
        _mm512_storeu_si512(qw + i, _mm512_permutex2var_epi16(n0, A, n1));
        _mm512_storeu_si512(qw + i + 32, _mm512_permutex2var_epi16(n0, B, n1));
    }
}

/* a_i += q_i . (A, B) for the four rows i at qc (row stride qs words): one key's 64 codes. */
__attribute__((target("avx512bf16,avx512f,avx512bw"), always_inline)) static inline void
kv_q_dp4(__m512* a0, __m512* a1, __m512* a2, __m512* a3, const uint16_t* qc, int64_t qs, __m512i A,
         __m512i B) {
#define KV_QW(i, h) (__m512bh) _mm512_loadu_si512(qc + (i)*qs + (h)*32)
    *a0 =
        _mm512_dpbf16_ps(_mm512_dpbf16_ps(*a0, (__m512bh)A, KV_QW(0, 0)), (__m512bh)B, KV_QW(0, 1));
    *a1 =
        _mm512_dpbf16_ps(_mm512_dpbf16_ps(*a1, (__m512bh)A, KV_QW(1, 0)), (__m512bh)B, KV_QW(1, 1));
    *a2 =
        _mm512_dpbf16_ps(_mm512_dpbf16_ps(*a2, (__m512bh)A, KV_QW(2, 0)), (__m512bh)B, KV_QW(2, 1));
    *a3 =
        _mm512_dpbf16_ps(_mm512_dpbf16_ps(*a3, (__m512bh)A, KV_QW(3, 0)), (__m512bh)B, KV_QW(3, 1));
#undef KV_QW
}

/* The 64 codes of row x at d, decoded: A, B in kv_q_bytes' unpacked order. */
__attribute__((target("avx512vbmi,avx512f,avx512bw"), always_inline)) static inline void
kv_q_words(const uint8_t* x, const kv_qlut* T, int int8, __m512i* A, __m512i* B) {
    __m512i hi, lo;
    kv_q_bytes(_mm512_loadu_si512(x), T, int8, &hi, &lo);
    *A = _mm512_unpacklo_epi8(lo, hi);
    *B = _mm512_unpackhi_epi8(lo, hi);
}

/* s[r * KV_KB + t] = f[t] q_r . k_t for R (% 4 == 0) rows, nb code rows of D (% 64 == 0)
 * codes; qw: kv_q_prep's q; f: each key's factor. Four keys by four rows per pass. */
__attribute__((target("avx512vbmi,avx512bf16,avx512f,avx512bw,avx512vl"),
               always_inline)) static inline void
kv_dots_q_body(const uint16_t* restrict qw, int64_t R, int64_t D, const void* const* rows,
               int64_t nb, const uint8_t* tab, int int8, const float* f, float* restrict s) {
    const kv_qlut T = kv_qlut_load(tab);
    int64_t t = 0;
    for (; t + 4 <= nb; t += 4) {
        const uint8_t *k0 = rows[t], *k1 = rows[t + 1], *k2 = rows[t + 2], *k3 = rows[t + 3];
        kv_next4_l1(rows, t, nb, D);
        for (int64_t r = 0; r < R; r += 4) {
            KV_ACC_ZERO4x4();
            for (int64_t d = 0; d < D; d += 64) {
                const uint16_t* qc = qw + r * D + d;
                __m512i A, B;
                kv_q_words(k0 + d, &T, int8, &A, &B);
                kv_q_dp4(&a00, &a10, &a20, &a30, qc, D, A, B);
                kv_q_words(k1 + d, &T, int8, &A, &B);
                kv_q_dp4(&a01, &a11, &a21, &a31, qc, D, A, B);
                kv_q_words(k2 + d, &T, int8, &A, &B);
                kv_q_dp4(&a02, &a12, &a22, &a32, qc, D, A, B);
                kv_q_words(k3 + d, &T, int8, &A, &B);
                kv_q_dp4(&a03, &a13, &a23, &a33, qc, D, A, B);
            }
            const __m512 x[16] = {a00, a01, a02, a03, a10, a11, a12, a13,
                                  a20, a21, a22, a23, a30, a31, a32, a33};
            kv_store16(s + r * KV_KB + t,
                       _mm512_mul_ps(_mm512_broadcast_f32x4(_mm_loadu_ps(f + t)), kv_sum16(x)));
        }
    }
    for (; t < nb; t++) /* the last keys of a block, one by one */
        for (int64_t r = 0; r < R; r += 4) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t d = 0; d < D; d += 64) {
                __m512i A, B;
                kv_q_words((const uint8_t*)rows[t] + d, &T, int8, &A, &B);
                kv_q_dp4(&a0, &a1, &a2, &a3, qw + r * D + d, D, A, B);
            }
            float o[4]; /* rows r .. r + 3 */
            _mm_storeu_ps(o, _mm_mul_ps(_mm_set1_ps(f[t]), kv_sum4(a0, a1, a2, a3)));
            for (int i = 0; i < 4; i++)
                s[(r + i) * KV_KB + t] = o[i];
        }
}

__attribute__((target("avx512vbmi,avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_dots_q(const uint16_t* restrict qw, int64_t R, int64_t D, const void* const* rows, int64_t nb,
          const uint8_t* tab, int int8, const float* f, float* restrict s) {
    if (int8)
        kv_dots_q_body(qw, R, D, rows, nb, tab, 1, f, s);
    else
        kv_dots_q_body(qw, R, D, rows, nb, tab, 0, f, s);
}

/* acc[r] += sum_t bf16(f[t] p[r * KV_KB + t]) v_t for R (% 4 == 0, <= 64) rows, nb code rows
 * of Dv (% 64 == 0) codes, keys in pairs: acc in kv_pv_q's order (of each 64 elements, register
 * k lane 4L + i holds element 16L + 4k + i). */
__attribute__((target("avx512vbmi,avx512bf16,avx512f,avx512bw,avx512vl"),
               always_inline)) static inline void
kv_pv_q_body(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
             const float* restrict p, const float* f, const uint8_t* tab, int int8) {
    uint32_t pp[64 * KV_KB / 2];
    kv_p_pairs(pp, p, f, R, nb);
    const int64_t np = (nb + 1) / 2;
    const kv_qlut T = kv_qlut_load(tab);
    const uint8_t zero[64] = {0};
    for (int64_t d = 0; d < Dv; d += 64)
        for (int64_t r = 0; r < R; r += 4) {
            float* o = acc + r * Dv + d;
            const uint32_t* pr = pp + r * (KV_KB / 2);
            KV_ACC_LOAD4x4(o, Dv);
            for (int64_t k = 0; k < np; k++) {
                const __m512i ca = _mm512_loadu_si512((const uint8_t*)rows[2 * k] + d);
                const __m512i cb =
                    _mm512_loadu_si512(2 * k + 1 < nb ? (const uint8_t*)rows[2 * k + 1] + d : zero);
                __m512i hi, lo;
                /* byte pairs (key 2k, key 2k + 1) of elements 16L + 0..7, then 16L + 8..15 */
                kv_q_bytes(_mm512_unpacklo_epi8(ca, cb), &T, int8, &hi, &lo);
                const __m512i x0 = _mm512_unpacklo_epi8(lo, hi), x1 = _mm512_unpackhi_epi8(lo, hi);
                kv_q_bytes(_mm512_unpackhi_epi8(ca, cb), &T, int8, &hi, &lo);
                const __m512i x2 = _mm512_unpacklo_epi8(lo, hi), x3 = _mm512_unpackhi_epi8(lo, hi);
                const __m512i p0 = _mm512_set1_epi32((int)pr[k]),
                              p1 = _mm512_set1_epi32((int)pr[KV_KB / 2 + k]),
                              p2 = _mm512_set1_epi32((int)pr[KV_KB + k]),
                              p3 = _mm512_set1_epi32((int)pr[3 * KV_KB / 2 + k]);
                KV_DP4(a00, a10, a20, a30, x0);
                KV_DP4(a01, a11, a21, a31, x1);
                KV_DP4(a02, a12, a22, a32, x2);
                KV_DP4(a03, a13, a23, a33, x3);
            }
            KV_ACC_STORE4x4(o, Dv);
        }
}

__attribute__((target("avx512vbmi,avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_pv_q(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
        const float* restrict p, const float* f, const uint8_t* tab, int int8) {
    if (int8)
        kv_pv_q_body(acc, R, Dv, rows, nb, p, f, tab, 1);
    else
        kv_pv_q_body(acc, R, Dv, rows, nb, p, f, tab, 0);
}

/* The R rows of acc (width Dv) from kv_pv_q's order back to element order: per 64 elements a
 * transpose of 4 x 4 blocks of four. */
static void kv_q_unpermute(float* acc, int64_t R, int64_t Dv) {
    for (int64_t i = 0; i < R * Dv; i += 64) {
        const __m512 a0 = _mm512_loadu_ps(acc + i), a1 = _mm512_loadu_ps(acc + i + 16),
                     a2 = _mm512_loadu_ps(acc + i + 32), a3 = _mm512_loadu_ps(acc + i + 48);
        const __m512 t0 = _mm512_shuffle_f32x4(a0, a1, 0x44),
                     t1 = _mm512_shuffle_f32x4(a2, a3, 0x44);
        const __m512 t2 = _mm512_shuffle_f32x4(a0, a1, 0xee),
                     t3 = _mm512_shuffle_f32x4(a2, a3, 0xee);
        _mm512_storeu_ps(acc + i, _mm512_shuffle_f32x4(t0, t1, 0x88));
        _mm512_storeu_ps(acc + i + 16, _mm512_shuffle_f32x4(t0, t1, 0xdd));
        _mm512_storeu_ps(acc + i + 32, _mm512_shuffle_f32x4(t2, t3, 0x88));
        _mm512_storeu_ps(acc + i + 48, _mm512_shuffle_f32x4(t2, t3, 0xdd));
    }
}
#undef KV_DP4

/* ---- int8 caches by integer dot products (AVX512-VNNI): the codes feed vpdpwssd sign-extended,
 * no decode. q goes in as 16-bit integers per row (qi = q / qs rounded, qs = max|q| / kv_i8_qmax),
 * P as 16-bit integers per row and block (relative to the block's largest |f p| of the row): both
 * exact to 2^-16 of their row's largest value, finer than P's bf16 on the other paths. ---- */

/* Whether the integer kernels serve R rows of a KV head: bf16 or fp16 q, D % 32 and D <= 1024
 * (wider rows leave q fewer bits: kv_i8_qmax >= 16382 here, and 0 past 2^23), Dv % 64, rows in
 * fours (VNNI alone: Cascade Lake and Ice Lake servers have it without AVX512-BF16). 16-bit
 * integers per row hold bf16's 8-bit mantissas to 2^-16 of the row's largest, fp16's 11 bits
 * for elements within 2^-5 of it; what they lose below is 2^-8 of what the cache's own 8-bit
 * codes lose per element (2^-8 of their row's largest), and both dtypes' naive computation
 * rounds the scores to the dtype (the error rule's bound, met with room in test_kvcache). fp32 q
 * takes the fp32-FMA kernels: its naive keeps fp32 scores. */
static inline int kv_i8_ok(const cf_kvcache_call* c, int64_t R) {
    const cf_dtype dt = c->a.dtype;
    return c->quant == CFLASH_KV_QUANT_INT8 && cf_cpu()->avx512vnni &&
           (dt == CF_BF16 || dt == CF_F16) && c->a.D % 32 == 0 && c->a.D <= 1024 &&
           c->a.Dv % 64 == 0 && kv_q_fused_ok(R);
}

/* The four sums of a0 .. a3's lanes (int32: each total fits, kv_i8_qmax). */
static inline __m128i kv_isum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    const __m512i s01 =
        _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    const __m512i s23 =
        _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    const __m512i u =
        _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
    const __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

/* acc + the pairwise products of a and b's 16-bit words (vpdpwssd). By inline assembly: GCC 12
 * copies every accumulator of _mm512_dpwssd_epi32 through a second register each pass (the
 * intrinsic's destination is not tied to its source), a third more instructions in the loops. */
__attribute__((target("avx512vnni,avx512f"), always_inline)) static inline __m512i
kv_dpw(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

/* 32 codes at x sign-extended to 16-bit words. */
static inline __m512i kv_i8_words(const int8_t* x) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)x));
}

/* s[r * KV_KB + t] = f[t] qs[r] (qi_r . k_t) for R (% 4 == 0) rows and nb int8 rows of D
 * (% 32 == 0) codes; four keys by four rows per pass. The npf rows pf go into L2 on the way
 * (as in kv_dots_fma_body). */
__attribute__((target("avx512vnni,avx512f,avx512bw,avx512vl"))) static void
kv_dots_i8(const int16_t* restrict qi, const float* qs, int64_t R, int64_t D,
           const void* const* rows, int64_t nb, const float* f, float* restrict s,
           const void* const* pf, int64_t npf) {
    const __m512i rep4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    int64_t t = 0;
    for (; t + 4 <= nb; t += 4) {
        const int8_t *k0 = rows[t], *k1 = rows[t + 1], *k2 = rows[t + 2], *k3 = rows[t + 3];
        kv_next4_l1(rows, t, nb, D);
        const __m512 ft = _mm512_broadcast_f32x4(_mm_loadu_ps(f + t));
        for (int64_t r = 0; r < R; r += 4) {
            __m512i a00 = _mm512_setzero_si512(), a01 = a00, a02 = a00, a03 = a00;
            __m512i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            __m512i a20 = a00, a21 = a00, a22 = a00, a23 = a00;
            __m512i a30 = a00, a31 = a00, a32 = a00, a33 = a00;
            const int16_t* q = qi + r * D;
            for (int64_t d = 0; d < D; d += 32) {
                if (r == 0 && d % 64 == 0) kv_pf_rows(pf, npf, t, t + 4, d, d + 64);
                const __m512i w0 = kv_i8_words(k0 + d), w1 = kv_i8_words(k1 + d),
                              w2 = kv_i8_words(k2 + d), w3 = kv_i8_words(k3 + d);
                const __m512i q0 = _mm512_loadu_si512(q + d), q1 = _mm512_loadu_si512(q + D + d),
                              q2 = _mm512_loadu_si512(q + 2 * D + d),
                              q3 = _mm512_loadu_si512(q + 3 * D + d);
#define KV_DPW4(A0, A1, A2, A3, W)                                                                 \
    A0 = kv_dpw(A0, W, q0), A1 = kv_dpw(A1, W, q1), A2 = kv_dpw(A2, W, q2), A3 = kv_dpw(A3, W, q3)
                KV_DPW4(a00, a10, a20, a30, w0);
                KV_DPW4(a01, a11, a21, a31, w1);
                KV_DPW4(a02, a12, a22, a32, w2);
                KV_DPW4(a03, a13, a23, a33, w3);
            }
            const __m512i x[16] = {a00, a01, a02, a03, a10, a11, a12, a13,
                                   a20, a21, a22, a23, a30, a31, a32, a33};
            const __m512 g =
                _mm512_permutexvar_ps(/* lane 4i + j: qs[r + i] f[t + j] */
                                      rep4, _mm512_castps128_ps512(_mm_loadu_ps(qs + r)));
            kv_store16(s + r * KV_KB + t,
                       _mm512_mul_ps(_mm512_mul_ps(ft, g), _mm512_cvtepi32_ps(kv_isum16(x))));
        }
    }
    for (; t < nb; t++) /* the last keys of a block, one by one */
        for (int64_t r = 0; r < R; r += 4) {
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
            const int16_t* q = qi + r * D;
            for (int64_t d = 0; d < D; d += 32) {
                if (r == 0 && d % 64 == 0) kv_pf_rows(pf, npf, t, t + 1, d, d + 64);
                const __m512i w = kv_i8_words((const int8_t*)rows[t] + d);
                const __m512i q0 = _mm512_loadu_si512(q + d), q1 = _mm512_loadu_si512(q + D + d),
                              q2 = _mm512_loadu_si512(q + 2 * D + d),
                              q3 = _mm512_loadu_si512(q + 3 * D + d);
                KV_DPW4(a0, a1, a2, a3, w);
            }
            int32_t o[4]; /* rows r .. r + 3 */
            _mm_storeu_si128((__m128i*)o, kv_isum4(a0, a1, a2, a3));
            for (int i = 0; i < 4; i++)
                s[(r + i) * KV_KB + t] = f[t] * qs[r + i] * (float)o[i];
        }
    kv_pf_rows(pf, npf, nb, npf, 0, D); /* (a later block longer than this one) */
}
#undef KV_DPW4

/* pp: the R rows of f[t] p[r * KV_KB + t] (t < nb) as 16-bit integers in key pairs (16-bit
 * words 2k, 2k + 1 of row r at pp[r * KV_KB / 2 + k]), relative to the row's largest |f p|;
 * pf[r]: the factor back. 0 when some f p is not finite. */
static int kv_p_i16(uint32_t* pp, float* pf, const float* p, const float* f, int64_t R,
                    int64_t nb) {
    const __mmask16 live = kv_mask(nb);
    const __m512 vf = _mm512_maskz_loadu_ps(live, f), big = _mm512_set1_ps(FLT_MAX);
    for (int64_t r = 0; r < R; r++) {
        const __m512 x = _mm512_mul_ps(vf, _mm512_maskz_loadu_ps(live, p + r * KV_KB));
        const __m512 ax = _mm512_abs_ps(x);
        if (_mm512_cmp_ps_mask(ax, big, _CMP_NLE_UQ)) return 0; /* inf or NaN */
        const float m = _mm512_reduce_max_ps(ax);
        pf[r] = m / 32767.0f;
        /* (times 32767 / m, one division a row; where that would overflow, x / m) */
        const __m512 y = m >= 0x1p-100f ? _mm512_mul_ps(x, _mm512_set1_ps(32767.0f / m))
                         : m > 0.0f     ? _mm512_mul_ps(_mm512_div_ps(x, _mm512_set1_ps(m)),
                                                        _mm512_set1_ps(32767.0f))
                                        : _mm512_setzero_ps();
        _mm256_storeu_si256((__m256i*)(pp + r * (KV_KB / 2)),
                            _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(y)));
    }
    return 1;
}

/* Element d of a row of acc in kv_pv_i8's order: of each 32 elements, 8L + j (j < 4) at 4L + j,
 * 8L + 4 + j at 16 + 4L + j (vpunpck{l,h}wd of two keys' words). */
static int64_t kv_acc_index_i8(int64_t d) {
    return (d & ~31) + ((d >> 2) & 1) * 16 + ((d >> 3) & 3) * 4 + (d & 3);
}

/* acc[r] += sum_t f[t] p[r * KV_KB + t] v_t for R (% 4 == 0, <= 64) rows and nb int8 rows of Dv
 * (% 64 == 0) codes: P in 16 bits (kv_p_i16), keys in pairs by vpdpwssd, the block's integer
 * sums added to acc (in kv_acc_index_i8's order) times the row's factor. A P that is not finite
 * (an infinite or NaN scale) goes key by key in fp32. The npf rows nx go into L2 on the way. */
__attribute__((target("avx512vnni,avx512f,avx512bw,avx512vl"))) static void
kv_pv_i8(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
         const float* restrict p, const float* f, const void* const* nx, int64_t npf) {
    uint32_t pp[64 * KV_KB / 2];
    float pf[64];
    if (!kv_p_i16(pp, pf, p, f, R, nb)) {
        kv_pf_rows(nx, npf, 0, npf, 0, Dv);
        kv_pv_i8_keys(acc, R, Dv, rows, nb, p, f, kv_acc_index_i8);
        return;
    }
    const int64_t np = (nb + 1) / 2;
    const int8_t zero[64] = {0};
    for (int64_t d = 0; d < Dv; d += 64)
        for (int64_t r = 0; r < R; r += 4) {
            const uint32_t* pr = pp + r * (KV_KB / 2);
            __m512i a00 = _mm512_setzero_si512(), a01 = a00, a02 = a00, a03 = a00;
            __m512i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            __m512i a20 = a00, a21 = a00, a22 = a00, a23 = a00;
            __m512i a30 = a00, a31 = a00, a32 = a00, a33 = a00;
            for (int64_t k = 0; k < np; k++) {
                if (r == 0) kv_pf_rows(nx, npf, 2 * k, 2 * k + 2, d, d + 64);
                const int8_t* va = (const int8_t*)rows[2 * k] + d;
                const int8_t* vb = 2 * k + 1 < nb ? (const int8_t*)rows[2 * k + 1] + d : zero;
                const __m512i wa0 = kv_i8_words(va), wb0 = kv_i8_words(vb);
                const __m512i wa1 = kv_i8_words(va + 32), wb1 = kv_i8_words(vb + 32);
                const __m512i x0 = _mm512_unpacklo_epi16(wa0, wb0),
                              x1 = _mm512_unpackhi_epi16(wa0, wb0),
                              x2 = _mm512_unpacklo_epi16(wa1, wb1),
                              x3 = _mm512_unpackhi_epi16(wa1, wb1);
                const __m512i p0 = _mm512_set1_epi32((int)pr[k]),
                              p1 = _mm512_set1_epi32((int)pr[KV_KB / 2 + k]),
                              p2 = _mm512_set1_epi32((int)pr[KV_KB + k]),
                              p3 = _mm512_set1_epi32((int)pr[3 * KV_KB / 2 + k]);
#define KV_DPP4(A0, A1, A2, A3, X)                                                                 \
    A0 = kv_dpw(A0, X, p0), A1 = kv_dpw(A1, X, p1), A2 = kv_dpw(A2, X, p2), A3 = kv_dpw(A3, X, p3)
                KV_DPP4(a00, a10, a20, a30, x0);
                KV_DPP4(a01, a11, a21, a31, x1);
                KV_DPP4(a02, a12, a22, a32, x2);
                KV_DPP4(a03, a13, a23, a33, x3);
#undef KV_DPP4
            }
#define KV_ADD4(I, A0, A1, A2, A3)                                                                 \
    do {                                                                                           \
        float* o = acc + (r + (I)) * Dv + d;                                                       \
        const __m512 g = _mm512_set1_ps(pf[r + (I)]);                                              \
        _mm512_storeu_ps(o, _mm512_fmadd_ps(g, _mm512_cvtepi32_ps(A0), _mm512_loadu_ps(o)));       \
        _mm512_storeu_ps(o + 16,                                                                   \
                         _mm512_fmadd_ps(g, _mm512_cvtepi32_ps(A1), _mm512_loadu_ps(o + 16)));     \
        _mm512_storeu_ps(o + 32,                                                                   \
                         _mm512_fmadd_ps(g, _mm512_cvtepi32_ps(A2), _mm512_loadu_ps(o + 32)));     \
        _mm512_storeu_ps(o + 48,                                                                   \
                         _mm512_fmadd_ps(g, _mm512_cvtepi32_ps(A3), _mm512_loadu_ps(o + 48)));     \
    } while (0)
            KV_ADD4(0, a00, a01, a02, a03);
            KV_ADD4(1, a10, a11, a12, a13);
            KV_ADD4(2, a20, a21, a22, a23);
            KV_ADD4(3, a30, a31, a32, a33);
#undef KV_ADD4
        }
    kv_pf_rows(nx, npf, nb, npf, 0, Dv);
}

/* The R rows of acc (width Dv) from kv_pv_i8's order back to element order: per 32 elements,
 * the 128-bit quarters of the two halves interleaved. */
static void kv_i8_unpermute(float* acc, int64_t R, int64_t Dv) {
    static const int32_t lo[16] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23};
    static const int32_t hi[16] = {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};
    const __m512i il = _mm512_loadu_si512(lo), ih = _mm512_loadu_si512(hi);
    for (int64_t i = 0; i < R * Dv; i += 32) {
        const __m512 a = _mm512_loadu_ps(acc + i), b = _mm512_loadu_ps(acc + i + 16);
        _mm512_storeu_ps(acc + i, _mm512_permutex2var_ps(a, il, b));
        _mm512_storeu_ps(acc + i + 16, _mm512_permutex2var_ps(a, ih, b));
    }
}

/* ---- fp8 (and fp16) caches on fp32 FMA: fp8 for fp32 / fp16 q, and for bf16 q where vdpbf16ps
 * runs at half the FMA rate (Intel: cf_cpu()->bf16_dot_gemm 0); fp16 rows converted by
 * vcvtph2ps, in element order (kv_fma_elem_ok). 64 codes are decoded in registers through
 * fp16 (the values of kv_load16_code, in kv_code_unit's units) to four fp32 registers in
 * vpunpck{l,h}bw order: the element at position 16 k + i (register k, lane i) is that position
 * with its bits 3 and 4 swapped (an involution). q is kept in that order (kv_f8_swap in the
 * prep) and so is acc (kv_acc_index_f8; put back by kv_f8_swap at the end). An e4m3fn block that
 * holds the NaN code (which the shift reads as 480) goes through the fp32 kernels above (scores)
 * or element by element (P.V): rare, a NaN appended. ---- */

/* Whether the fp32 FMA kernels serve a call with R query rows per KV head (rows in fours, head
 * dims in whole 64-code chunks), and are the faster choice: vdpbf16ps at full rate takes bf16 q
 * (kv_q_fused_ok's kernels). */
static inline int kv_f8_ok(const cf_kvcache_call* c, int64_t R) {
    const cf_attn_call* a = &c->a;
    if (c->quant != CFLASH_KV_QUANT_FP8_E4M3 && c->quant != CFLASH_KV_QUANT_FP8_E5M2) return 0;
    if (R % 4 != 0 || a->D % 64 != 0 || a->Dv % 64 != 0) return 0;
    return !(cf_cpu()->bf16_dot_gemm && kv_q_bf16_ok(a->dtype, a->D, a->Dv) && kv_q_fused_ok(R));
}

/* dst = src (n floats, n % 32 == 0) with the 8-float groups 1 and 2 of every 32 swapped: element
 * order to kv_f8 order and back; dst may be src. */
static void kv_f8_swap(float* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; i += 32) {
        const __m512 a = _mm512_loadu_ps(src + i), b = _mm512_loadu_ps(src + i + 16);
        _mm512_storeu_ps(dst + i, _mm512_shuffle_f32x4(a, b, 0x44));
        _mm512_storeu_ps(dst + i + 16, _mm512_shuffle_f32x4(a, b, 0xEE));
    }
}

static int64_t kv_acc_index_f8(int64_t d) {
    return (d & ~(int64_t)24) | ((d & 8) << 1) | ((d & 16) >> 1);
}

static void kv_f8_unpermute(float* acc, int64_t R, int64_t Dv) {
    kv_f8_swap(acc, acc, R * Dv);
}

/* The row formats of the fp32 FMA kernels (kv_dots_fma / kv_pv_fma): fp8 codes, fp16 and bf16
 * rows, int8 codes. */
enum { KV_FMT_E4M3, KV_FMT_E5M2, KV_FMT_F16, KV_FMT_I8, KV_FMT_BF16 };

static inline int64_t kv_fmt_bytes(int fmt) {
    return fmt == KV_FMT_F16 || fmt == KV_FMT_BF16 ? 2 : 1;
}

/* 64 elements of a row at x as fp32: fp8 codes (e5m2: the high byte of an fp16; e4m3fn:
 * S.EEEE.MMM moved to fp16's S.0EEEE.MMM0000000, its value times 2^-8) in kv_f8 order, fp16 and
 * int8 (sign-extended, converted exactly) in element order, bf16 (each word the high half of an
 * fp32 lane, vpunpck{l,h}wd against zero: one instruction per 16) in kv_pv_dp's order. */
__attribute__((always_inline)) static inline void kv_fma_dec(const uint8_t* x, int fmt, __m512* x0,
                                                             __m512* x1, __m512* x2, __m512* x3) {
    if (fmt == KV_FMT_F16) {
        *x0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)x));
        *x1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)x + 1));
        *x2 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)x + 2));
        *x3 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)x + 3));
        return;
    }
    if (fmt == KV_FMT_BF16) {
        const __m512i z = _mm512_setzero_si512();
        const __m512i y0 = _mm512_loadu_si512(x), y1 = _mm512_loadu_si512(x + 64);
        *x0 = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, y0));
        *x1 = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, y0));
        *x2 = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, y1));
        *x3 = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, y1));
        return;
    }
    if (fmt == KV_FMT_I8) {
        *x0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)x)));
        *x1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)x + 1)));
        *x2 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)x + 2)));
        *x3 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)x + 3)));
        return;
    }
    const int e5 = fmt == KV_FMT_E5M2;
    const __m512i c = _mm512_loadu_si512(x), z = _mm512_setzero_si512();
    __m512i lo = _mm512_unpacklo_epi8(z, c), hi = _mm512_unpackhi_epi8(z, c);
    if (!e5) { /* the sign shifted in twice, its copy at bit 14 cleared */
        const __m512i m = _mm512_set1_epi16((short)0xbfff);
        lo = _mm512_and_si512(_mm512_srai_epi16(lo, 1), m);
        hi = _mm512_and_si512(_mm512_srai_epi16(hi, 1), m);
    }
    *x0 = _mm512_cvtph_ps(_mm512_castsi512_si256(lo));
    *x1 = _mm512_cvtph_ps(_mm512_castsi512_si256(hi));
    *x2 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(lo, 1));
    *x3 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(hi, 1));
}

/* Whether some of the nb e4m3fn rows (n codes each, n % 64 == 0) holds the NaN code (|code| 0x7f).
 */
static int kv_f8_nan(const void* const* rows, int64_t nb, int64_t n) {
    const __m512i hi = _mm512_set1_epi8((char)0x80);
    __m512i m = _mm512_setzero_si512();
    for (int64_t t = 0; t < nb; t++)
        for (int64_t d = 0; d < n; d += 64)
            m = _mm512_max_epu8(
                m, _mm512_or_si512(hi, _mm512_loadu_si512((const uint8_t*)rows[t] + d)));
    return _mm512_cmpeq_epi8_mask(m, _mm512_set1_epi8((char)0xff)) != 0;
}

/* a_i += q_i . (x0, x1, x2, x3) for the four rows i at qc (row stride D floats). */
#define KV_F8_DP4(A0, A1, A2, A3)                                                                  \
    do {                                                                                           \
        A0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(qc), A0);                                         \
        A1 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(qc + D), A1);                                     \
        A2 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(qc + 2 * D), A2);                                 \
        A3 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(qc + 3 * D), A3);                                 \
        A0 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(qc + 16), A0);                                    \
        A1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(qc + D + 16), A1);                                \
        A2 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(qc + 2 * D + 16), A2);                            \
        A3 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(qc + 3 * D + 16), A3);                            \
        A0 = _mm512_fmadd_ps(x2, _mm512_loadu_ps(qc + 32), A0);                                    \
        A1 = _mm512_fmadd_ps(x2, _mm512_loadu_ps(qc + D + 32), A1);                                \
        A2 = _mm512_fmadd_ps(x2, _mm512_loadu_ps(qc + 2 * D + 32), A2);                            \
        A3 = _mm512_fmadd_ps(x2, _mm512_loadu_ps(qc + 3 * D + 32), A3);                            \
        A0 = _mm512_fmadd_ps(x3, _mm512_loadu_ps(qc + 48), A0);                                    \
        A1 = _mm512_fmadd_ps(x3, _mm512_loadu_ps(qc + D + 48), A1);                                \
        A2 = _mm512_fmadd_ps(x3, _mm512_loadu_ps(qc + 2 * D + 48), A2);                            \
        A3 = _mm512_fmadd_ps(x3, _mm512_loadu_ps(qc + 3 * D + 48), A3);                            \
    } while (0)

/* s[r * KV_KB + t] = u f[t] q_r . k_t for R (% 4 == 0) rows of qf (in kv_fma_dec's order) and
 * nb rows of D (% 64 == 0) elements of format fmt; four keys by four rows per pass. The npf rows
 * pf go into L2 on the way, row t's 64 elements at d beside key t's. */
__attribute__((always_inline)) static inline void
kv_dots_fma_body(const float* restrict qf, int64_t R, int64_t D, const void* const* rows,
                 int64_t nb, int fmt, const float* f, float u, float* restrict s,
                 const void* const* pf, int64_t npf) {
    const int64_t es = kv_fmt_bytes(fmt);
    int64_t t = 0;
    for (; t + 4 <= nb; t += 4) {
        const uint8_t *k0 = rows[t], *k1 = rows[t + 1], *k2 = rows[t + 2], *k3 = rows[t + 3];
        kv_next4_l1(rows, t, nb, D * es);
        const __m512 g =
            _mm512_mul_ps(_mm512_set1_ps(u), _mm512_broadcast_f32x4(_mm_loadu_ps(f + t)));
        for (int64_t r = 0; r < R; r += 4) {
            KV_ACC_ZERO4x4();
            for (int64_t d = 0; d < D; d += 64) {
                const float* qc = qf + r * D + d;
                if (r == 0) kv_pf_rows(pf, npf, t, t + 4, d * es, (d + 64) * es);
                __m512 x0, x1, x2, x3;
                kv_fma_dec(k0 + d * es, fmt, &x0, &x1, &x2, &x3);
                KV_F8_DP4(a00, a10, a20, a30);
                kv_fma_dec(k1 + d * es, fmt, &x0, &x1, &x2, &x3);
                KV_F8_DP4(a01, a11, a21, a31);
                kv_fma_dec(k2 + d * es, fmt, &x0, &x1, &x2, &x3);
                KV_F8_DP4(a02, a12, a22, a32);
                kv_fma_dec(k3 + d * es, fmt, &x0, &x1, &x2, &x3);
                KV_F8_DP4(a03, a13, a23, a33);
            }
            const __m512 x[16] = {a00, a01, a02, a03, a10, a11, a12, a13,
                                  a20, a21, a22, a23, a30, a31, a32, a33};
            kv_store16(s + r * KV_KB + t, _mm512_mul_ps(g, kv_sum16(x)));
        }
    }
    for (; t < nb; t++) /* the last keys of a block, one by one */
        for (int64_t r = 0; r < R; r += 4) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t d = 0; d < D; d += 64) {
                const float* qc = qf + r * D + d;
                if (r == 0) kv_pf_rows(pf, npf, t, t + 1, d * es, (d + 64) * es);
                __m512 x0, x1, x2, x3;
                kv_fma_dec((const uint8_t*)rows[t] + d * es, fmt, &x0, &x1, &x2, &x3);
                KV_F8_DP4(a0, a1, a2, a3);
            }
            float o[4]; /* rows r .. r + 3 */
            _mm_storeu_ps(o, _mm_mul_ps(_mm_set1_ps(u * f[t]), kv_sum4(a0, a1, a2, a3)));
            for (int i = 0; i < 4; i++)
                s[(r + i) * KV_KB + t] = o[i];
        }
    kv_pf_rows(pf, npf, nb, npf, 0, D * es); /* (a later block longer than this one) */
}
#undef KV_F8_DP4

/* acc[r] += sum_t p[r * KV_KB + t] v_t for R (% 4 == 0) rows, nb rows of Dv (% 64 == 0)
 * elements of format fmt (p already times each key's factor and unit): acc in kv_fma_dec's
 * order. The npf rows pf go into L2 on the way, as in kv_dots_fma_body. */
__attribute__((always_inline)) static inline void
kv_pv_fma_body(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
               int fmt, const float* restrict p, const void* const* pf, int64_t npf) {
    const int64_t es = kv_fmt_bytes(fmt);
    for (int64_t d = 0; d < Dv; d += 64)
        for (int64_t r = 0; r < R; r += 4) {
            float* o = acc + r * Dv + d;
            const float* pr = p + r * KV_KB;
            KV_ACC_LOAD4x4(o, Dv);
            for (int64_t t = 0; t < nb; t++) {
                if (r == 0) kv_pf_rows(pf, npf, t, t + 1, d * es, (d + 64) * es);
                __m512 x0, x1, x2, x3;
                kv_fma_dec((const uint8_t*)rows[t] + d * es, fmt, &x0, &x1, &x2, &x3);
                const __m512 p0 = _mm512_set1_ps(pr[t]), p1 = _mm512_set1_ps(pr[KV_KB + t]),
                             p2 = _mm512_set1_ps(pr[2 * KV_KB + t]),
                             p3 = _mm512_set1_ps(pr[3 * KV_KB + t]);
                a00 = _mm512_fmadd_ps(p0, x0, a00), a01 = _mm512_fmadd_ps(p0, x1, a01);
                a02 = _mm512_fmadd_ps(p0, x2, a02), a03 = _mm512_fmadd_ps(p0, x3, a03);
                a10 = _mm512_fmadd_ps(p1, x0, a10), a11 = _mm512_fmadd_ps(p1, x1, a11);
                a12 = _mm512_fmadd_ps(p1, x2, a12), a13 = _mm512_fmadd_ps(p1, x3, a13);
                a20 = _mm512_fmadd_ps(p2, x0, a20), a21 = _mm512_fmadd_ps(p2, x1, a21);
                a22 = _mm512_fmadd_ps(p2, x2, a22), a23 = _mm512_fmadd_ps(p2, x3, a23);
                a30 = _mm512_fmadd_ps(p3, x0, a30), a31 = _mm512_fmadd_ps(p3, x1, a31);
                a32 = _mm512_fmadd_ps(p3, x2, a32), a33 = _mm512_fmadd_ps(p3, x3, a33);
            }
            KV_ACC_STORE4x4(o, Dv);
        }
    kv_pf_rows(pf, npf, nb, npf, 0, Dv * es);
}

/* (one instance per format: the decode's branch out of the loops) */
static void kv_dots_fma(const float* restrict qf, int64_t R, int64_t D, const void* const* rows,
                        int64_t nb, int fmt, const float* f, float u, float* restrict s,
                        const void* const* pf, int64_t npf) {
    if (fmt == KV_FMT_F16)
        kv_dots_fma_body(qf, R, D, rows, nb, KV_FMT_F16, f, u, s, pf, npf);
    else if (fmt == KV_FMT_BF16)
        kv_dots_fma_body(qf, R, D, rows, nb, KV_FMT_BF16, f, u, s, pf, npf);
    else if (fmt == KV_FMT_I8)
        kv_dots_fma_body(qf, R, D, rows, nb, KV_FMT_I8, f, u, s, pf, npf);
    else if (fmt == KV_FMT_E5M2)
        kv_dots_fma_body(qf, R, D, rows, nb, KV_FMT_E5M2, f, u, s, pf, npf);
    else
        kv_dots_fma_body(qf, R, D, rows, nb, KV_FMT_E4M3, f, u, s, pf, npf);
}

static void kv_pv_fma(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows,
                      int64_t nb, int fmt, const float* restrict p, const void* const* pf,
                      int64_t npf) {
    if (fmt == KV_FMT_F16)
        kv_pv_fma_body(acc, R, Dv, rows, nb, KV_FMT_F16, p, pf, npf);
    else if (fmt == KV_FMT_BF16)
        kv_pv_fma_body(acc, R, Dv, rows, nb, KV_FMT_BF16, p, pf, npf);
    else if (fmt == KV_FMT_I8)
        kv_pv_fma_body(acc, R, Dv, rows, nb, KV_FMT_I8, p, pf, npf);
    else if (fmt == KV_FMT_E5M2)
        kv_pv_fma_body(acc, R, Dv, rows, nb, KV_FMT_E5M2, p, pf, npf);
    else
        kv_pv_fma_body(acc, R, Dv, rows, nb, KV_FMT_E4M3, p, pf, npf);
}

/* ---- The kernels of a call (kv_path) ----------------------------------------------------------
 */

/* Rows of any dtype (codes included) in fp32 FMA. */
static void avx512_scores(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const cf_dtype dt = kv_row_dtype(h->c);
    kv_dots(h->q, h->R, h->c->a.D, rows, nb, dt, h->s);
    if (f) kv_q_apply(h->s, h->R, f, kv_code_unit(dt));
}

static void avx512_pv(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const cf_dtype dt = kv_row_dtype(h->c);
    if (f) kv_q_apply(h->s, h->R, f, kv_code_unit(dt));
    kv_pv(h->acc, h->R, h->c->a.Dv, rows, nb, dt, h->s);
}

/* bf16 rows: q as bf16 words once per item, scores four keys at a time (rows in fours) or two,
 * P.V two keys per vdpbf16ps (acc permuted). */
static void avx512_bf16_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    kv_bf16_words(w->qw, w->q, R * c->a.D);
}

static void avx512_scores_x4(const kv_head* h, const void* const* rows, int64_t nb,
                             const float* f) {
    (void)f; /* (unquantized) */
    kv_dots_bf16x4(h->qw, h->R, h->c->a.D, rows, nb, h->s, h->pf, h->npf);
}

static void avx512_scores_bf16(const kv_head* h, const void* const* rows, int64_t nb,
                               const float* f) {
    (void)f;
    kv_dots_bf16(h->qw, h->R, h->c->a.D, rows, nb, h->s);
}

static void avx512_pv_dp(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    (void)f;
    kv_pv_dp(h->acc, h->R, h->c->a.Dv, rows, nb, h->s, NULL, h->pf, h->npf);
}

/* Element d of a row of acc in kv_pv_dp's order (kv_pv_unpermute) and in kv_pv_q's. */
static int64_t kv_acc_index_dp(int64_t d) {
    return (d & ~31) + ((d >> 2) & 1) * 16 + ((d >> 3) & 3) * 4 + (d & 3);
}
static int64_t kv_acc_index_q(int64_t d) {
    return (d & ~63) + ((d >> 2) & 3) * 16 + ((d >> 4) & 3) * 4 + (d & 3);
}

/* Quantized caches, bf16 q, the fused kernels: q in kv_q_bytes' order and the byte tables once
 * per item. */
static void avx512_q_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    kv_q_tables(c->quant, (uint8_t*)w->lut);
    kv_q_prep(w->qw, w->q, R, c->a.D);
}

static void avx512_scores_q(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    kv_dots_q(h->qw, h->R, h->c->a.D, rows, nb, (const uint8_t*)h->w->lut,
              h->c->quant == CFLASH_KV_QUANT_INT8, f, h->s);
}

static void avx512_pv_q(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    kv_pv_q(h->acc, h->R, h->c->a.Dv, rows, nb, h->s, f, (const uint8_t*)h->w->lut,
            h->c->quant == CFLASH_KV_QUANT_INT8);
}

/* int8 caches, integer dot products: q as 16-bit integers per row (a q that is not finite: its
 * item takes the fp32 kernels' scores). */
static void avx512_i8_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    const int64_t D = c->a.D; /* (% 32: kv_i8_ok) */
    const float qm = kv_i8_qmax(D);
    const __m512 big = _mm512_set1_ps(FLT_MAX);
    __mmask16 bad = 0;
    for (int64_t r = 0; r < R; r++) {
        const float* q = w->q + r * D;
        __m512 mx = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16) {
            const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(q + d));
            bad |= _mm512_cmp_ps_mask(a, big, _CMP_NLE_UQ); /* inf or NaN */
            mx = _mm512_max_ps(mx, a);
        }
        const float m = _mm512_reduce_max_ps(mx);
        w->qs[r] = m / qm;
        /* q * (qm / m) rounded to nearest, as lrintf; where qm / m would overflow (m subnormal),
         * (q / m) * qm */
        const int tiny = m < 0x1p-100f;
        const __m512 by = _mm512_set1_ps(tiny       ? qm
                                         : m > 0.0f ? qm / m
                                                    : 0.0f),
                     div = _mm512_set1_ps(m > 0.0f ? m : 1.0f);
        for (int64_t d = 0; d < D; d += 16) {
            __m512 x = _mm512_loadu_ps(q + d);
            if (tiny) x = _mm512_div_ps(x, div);
            _mm256_storeu_si256((__m256i*)(w->qi + r * D + d),
                                _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(x, by))));
        }
    }
    w->qbad = bad != 0;
}

static void avx512_scores_i8(const kv_head* h, const void* const* rows, int64_t nb,
                             const float* f) {
    if (h->w->qbad) { /* (rare: an inf or NaN in q) */
        kv_pf_rows(h->pf, h->npf, 0, h->npf, 0, h->c->a.D);
        avx512_scores(h, rows, nb, f);
        return;
    }
    const int64_t r0 = h->q - h->w->q; /* the head's first row, times D */
    kv_dots_i8(h->w->qi + r0, h->w->qs + r0 / h->c->a.D, h->R, h->c->a.D, rows, nb, f, h->s, h->pf,
               h->npf);
}

static void avx512_pv_i8(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    kv_pv_i8(h->acc, h->R, h->c->a.Dv, rows, nb, h->s, f, h->pf, h->npf);
}

/* fp8 caches on fp32 FMA: q in kv_f8 order once per item; an e4m3fn block holding the NaN code
 * through the fp32 kernels above (scores) or element by element into acc's order (P.V). */
static void avx512_f8_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    kv_f8_swap(w->qf, w->q, R * c->a.D);
}

static void avx512_scores_f8(const kv_head* h, const void* const* rows, int64_t nb,
                             const float* f) {
    const int64_t D = h->c->a.D;
    const int fmt = h->c->quant == CFLASH_KV_QUANT_FP8_E5M2 ? KV_FMT_E5M2 : KV_FMT_E4M3;
    if (fmt == KV_FMT_E4M3 && kv_f8_nan(rows, nb, D)) {
        kv_pf_rows(h->pf, h->npf, 0, h->npf, 0, D);
        avx512_scores(h, rows, nb, f);
        return;
    }
    kv_dots_fma(h->w->qf + (h->q - h->w->q), h->R, D, rows, nb, fmt, f,
                kv_code_unit(kv_row_dtype(h->c)), h->s, h->pf, h->npf);
}

static void avx512_pv_f8(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const int64_t Dv = h->c->a.Dv;
    const int fmt = h->c->quant == CFLASH_KV_QUANT_FP8_E5M2 ? KV_FMT_E5M2 : KV_FMT_E4M3;
    if (fmt == KV_FMT_E4M3 && kv_f8_nan(rows, nb, Dv)) {
        kv_pf_rows(h->pf, h->npf, 0, h->npf, 0, Dv);
        float* vf = h->w->vf;
        for (int64_t t = 0; t < nb; t++) {
            kv_v_values(h->c, rows[t], f[t], vf);
            for (int64_t r = 0; r < h->R; r++) {
                const float pr = h->s[r * KV_KB + t];
                float* a = h->acc + r * Dv;
                for (int64_t d = 0; d < Dv; d++)
                    a[kv_acc_index_f8(d)] += pr * vf[d];
            }
        }
        return;
    }
    kv_q_apply(h->s, h->R, f, kv_code_unit(kv_row_dtype(h->c)));
    kv_pv_fma(h->acc, h->R, Dv, rows, nb, fmt, h->s, h->pf, h->npf);
}

/* The same kernels in element order (q and acc as they are): fp16 caches, and int8 caches with
 * fp32 q or fp16 q the integer kernels do not take (no VNNI, D not in 32s, ...); rows in fours,
 * head dims in whole 64-element chunks. An int8 key's scale goes on its score and its P, as for
 * the other formats. */
static inline int kv_fma_elem_ok(const cf_kvcache_call* c, int64_t R) {
    const cf_attn_call* a = &c->a;
    const int f16 = c->quant == CFLASH_KV_QUANT_NONE && a->dtype == CF_F16;
    const int i8 = c->quant == CFLASH_KV_QUANT_INT8 && a->dtype != CF_BF16;
    return (f16 || i8) && R % 4 == 0 && a->D % 64 == 0 && a->Dv % 64 == 0;
}

static inline int kv_fma_elem_fmt(const cf_kvcache_call* c) {
    return c->quant == CFLASH_KV_QUANT_INT8 ? KV_FMT_I8 : KV_FMT_F16;
}

_Static_assert(KV_KB == 16, "kv_one: a factor of 1 for each key of a block");
static const float kv_one[KV_KB] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

static void avx512_scores_fe(const kv_head* h, const void* const* rows, int64_t nb,
                             const float* f) {
    kv_dots_fma(h->q, h->R, h->c->a.D, rows, nb, kv_fma_elem_fmt(h->c), f ? f : kv_one, 1.0f, h->s,
                h->pf, h->npf);
}

static void avx512_pv_fe(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    if (f) kv_q_apply(h->s, h->R, f, 1.0f);
    kv_pv_fma(h->acc, h->R, h->c->a.Dv, rows, nb, kv_fma_elem_fmt(h->c), h->s, h->pf, h->npf);
}

/* bf16 caches with bf16 q where vdpbf16ps is not the faster (Intel: half the FMA rate) or is
 * absent: the fp32 FMA kernels, each row widened in registers (one instruction per 16), q and
 * acc in kv_pv_dp's order; exact products as vdpbf16ps's, and P stays fp32. Rows in fours, head
 * dims in whole 64-element chunks. */
static inline int kv_bff_ok(const cf_kvcache_call* c, int64_t R) {
    const cf_attn_call* a = &c->a;
    return c->quant == CFLASH_KV_QUANT_NONE && a->dtype == CF_BF16 && !cf_cpu()->bf16_dot_gemm &&
           R % 4 == 0 && a->D % 64 == 0 && a->Dv % 64 == 0;
}

static void avx512_bff_prep(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    for (int64_t i = 0; i < R * c->a.D; i++) /* (D % 64: the order stays within a row) */
        w->qf[kv_acc_index_dp(i)] = w->q[i];
}

static void avx512_scores_bff(const kv_head* h, const void* const* rows, int64_t nb,
                              const float* f) {
    (void)f; /* (unquantized) */
    kv_dots_fma(h->w->qf + (h->q - h->w->q), h->R, h->c->a.D, rows, nb, KV_FMT_BF16, kv_one, 1.0f,
                h->s, h->pf, h->npf);
}

static void avx512_pv_bff(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    (void)f;
    kv_pv_fma(h->acc, h->R, h->c->a.Dv, rows, nb, KV_FMT_BF16, h->s, h->pf, h->npf);
}

/* Quantized caches, bf16 q, rows not in fours: a block's codes decoded to bf16 rows (in w->kq)
 * for the bf16 kernels. */
static void avx512_q_tables(const cf_kvcache_call* c, kv_scratch* w, int64_t R) {
    kv_q_tables(c->quant, (uint8_t*)w->lut);
    kv_bf16_words(w->qw, w->q, R * c->a.D);
}

static void avx512_scores_qd(const kv_head* h, const void* const* rows, int64_t nb,
                             const float* f) {
    const void* dec[KV_KB];
    kv_q_decode((uint16_t*)h->w->kq, rows, nb, h->c->a.D, (const uint8_t*)h->w->lut,
                h->c->quant == CFLASH_KV_QUANT_INT8, dec);
    kv_dots_bf16(h->qw, h->R, h->c->a.D, dec, nb, h->s);
    kv_q_apply(h->s, h->R, f, 1.0f);
}

static void avx512_pv_qd(const kv_head* h, const void* const* rows, int64_t nb, const float* f) {
    const int64_t Dv = h->c->a.Dv;
    const void* dec[KV_KB];
    kv_q_decode((uint16_t*)h->w->kq, rows, nb, Dv, (const uint8_t*)h->w->lut,
                h->c->quant == CFLASH_KV_QUANT_INT8, dec);
    if (kv_pv_dp_ok(CF_BF16, h->R, Dv)) {
        kv_pv_dp(h->acc, h->R, Dv, dec, nb, h->s, f, NULL, 0);
        return;
    }
    kv_q_apply(h->s, h->R, f, 1.0f);
    kv_pv(h->acc, h->R, Dv, dec, nb, CF_BF16, h->s);
}

/* The kernels for a call whose KV heads have R query rows in an item, fastest first. */
static void kv_choose_avx512(const cf_kvcache_call* c, int64_t R, kv_path* p) {
    const cf_attn_call* a = &c->a;
    *p = (kv_path){.scores = avx512_scores, .pv = avx512_pv, .softmax16 = kv_softmax16};
    if (c->quant == CFLASH_KV_QUANT_NONE) {
        if (kv_bf16_ok(a->dtype, a->D))
            p->prep = avx512_bf16_prep,
            p->scores = kv_dots_x4_ok(a->dtype, R, a->D) ? avx512_scores_x4 : avx512_scores_bf16;
        if (kv_pv_dp_ok(a->dtype, R, a->Dv))
            p->pv = avx512_pv_dp, p->acc_index = kv_acc_index_dp, p->finish = kv_pv_unpermute;
        if (p->scores == avx512_scores_x4 && p->pv == avx512_pv_dp) p->pf_inside = KV_PF_AMD;
        if (kv_fma_elem_ok(c, R)) /* (fp16 caches: Zen 4 1.03-1.07x, as on Intel) */
            p->scores = avx512_scores_fe, p->pv = avx512_pv_fe, p->pf_inside = KV_PF_X86;
        if (kv_bff_ok(c, R))
            p->prep = avx512_bff_prep, p->scores = avx512_scores_bff, p->pv = avx512_pv_bff,
            p->acc_index = kv_acc_index_dp, p->finish = kv_pv_unpermute, p->pf_inside = KV_PF_INTEL;
    } else if (kv_i8_ok(c, R)) {
        p->prep = avx512_i8_prep, p->scores = avx512_scores_i8, p->pv = avx512_pv_i8;
        p->acc_index = kv_acc_index_i8, p->finish = kv_i8_unpermute, p->pf_inside = KV_PF_X86;
    } else if (kv_fma_elem_ok(c, R)) {
        p->scores = avx512_scores_fe, p->pv = avx512_pv_fe, p->pf_inside = KV_PF_INTEL;
    } else if (kv_f8_ok(c, R)) {
        p->prep = avx512_f8_prep, p->scores = avx512_scores_f8, p->pv = avx512_pv_f8;
        p->acc_index = kv_acc_index_f8, p->finish = kv_f8_unpermute, p->pf_inside = KV_PF_INTEL;
    } else if (kv_q_bf16_ok(a->dtype, a->D, a->Dv) && kv_q_fused_ok(R)) {
        p->prep = avx512_q_prep, p->scores = avx512_scores_q, p->pv = avx512_pv_q;
        p->acc_index = kv_acc_index_q, p->finish = kv_q_unpermute;
    } else if (kv_q_bf16_ok(a->dtype, a->D, a->Dv)) {
        p->prep = avx512_q_tables, p->scores = avx512_scores_qd, p->pv = avx512_pv_qd;
        if (kv_pv_dp_ok(CF_BF16, R, a->Dv))
            p->acc_index = kv_acc_index_dp, p->finish = kv_pv_unpermute;
    }
    /* (an int8 cache by VNNI products stays on its kernels, 1.4x the GEMMs at 64 query rows:
     * docs/PERF.md) */
    if (!kv_i8_ok(c, 4)) kv_choose_gemm(c, R, p, cf_attn_kernels_avx512());
}

extern const cf_impl cf_impl_avx512_attn_fwd; /* src/cpu/x86/avx512.c */

/* How many tiles the tiled forward needs per thread before a sequence goes there (kv_attends):
 * measured on Intel (KV_SPREAD_TWO) and on AMD Zen 4 (KV_SPREAD_TILE). */
int cf_kvcache_avx512_spread(void) {
    return strcmp(cf_cpu()->vendor, "AuthenticAMD") == 0 ? KV_SPREAD_TILE : KV_SPREAD_TWO;
}

/* Chunks of prefill on the tiled forward (1.14x the GEMM path's items on Intel, 1.5-2.0x on
 * Zen 4: docs/PERF.md). */
static cflash_status avx512_kvcache_run(const void* call) {
    return kv_run_with(call, kv_choose_avx512, &cf_impl_avx512_attn_fwd,
                       cf_kvcache_avx512_spread());
}

/* For cpu-amx's kvcache_fwd (src/cpu/x86/amx.c): these kernels, the chunks of prefill on attn
 * (spread: KV_SPREAD_*, kv_attends). */
cflash_status cf_kvcache_avx512_run(const void* call, const cf_impl* attn, int spread) {
    return kv_run_with(call, kv_choose_avx512, attn, spread);
}

/* For the attention forwards of cpu-avx512 (avx512.c) and cpu-amx (amx.c): whether call's decode
 * rows go on these kernels (kv_attn_decodes, at most most_rows query rows per KV head where
 * most_rows > 0). */
int cf_attn_avx512_decodes(const void* call, int64_t most_rows) {
    return kv_attn_decodes(call, cf_cpu()->avx512bf16 && cf_cpu()->bf16_dot_gemm, most_rows);
}

/* Their decode rows on these kernels (1, *st the status), or 0 when the call is not decode-shaped
 * (cf_attn_avx512_decodes). */
int cf_attn_avx512_decode(const void* call, int64_t most_rows, cflash_status* st) {
    if (!cf_attn_avx512_decodes(call, most_rows)) return 0;
    *st = kv_attn_decode(call, kv_choose_avx512, "cpu-avx512");
    return 1;
}

int cf_ops_avx512_available(char* why, size_t n); /* src/cpu/x86/ops_avx512.c */

const cf_impl cf_impl_avx512_kvcache_fwd = {
    .backend = "cpu-avx512",
    .op = CFLASH_OP_KVCACHE_FWD,
    .device_type = kDLCPU,
    .supports = NULL, /* every call */
    .run = avx512_kvcache_run,
    .available = cf_ops_avx512_available,
};
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
