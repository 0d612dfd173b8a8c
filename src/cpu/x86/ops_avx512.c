/* The fast op kernels (rotary, norm, KV cache, merge) built for AVX-512 (F, BW, VL, DQ) with
 * 512-bit vectors: backend cpu-avx512, available when the CPU probe reports them (with OS
 * support). Bodies: src/cpu/{rotary,norm,kvcache,merge}_fast.h. */
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
#pragma clang attribute push(                                                                      \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))),                   \
    apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")
#endif
#define CF_OPS_AVX512 1
#define CF_OPS_AVX2 1
#define CF_OPS_F16C 1

#include "cpu/ops_fast_common.h"
#include "probe/cpu_features.h"

/* ---- KV-cache block kernels: K and V rows read straight from the cache (bf16 / fp16 / fp32
 * converted in registers), four query rows per pass so each loaded key feeds four FMAs. ---- */
#define CF_OPS_KV_BLOCK_KERNELS 1

/* Quantized caches: the ISA's kv_dots / kv_pv read the 1-byte codes of a row in registers (dt
 * CF_I8, CF_F8E4M3, CF_F8E5M2), no decoded copy. fp8 goes through fp16 (vcvtph2ps is exact on
 * fp16 subnormals): an e5m2 code is the high byte of the fp16 of its value; an e4m3fn code
 * shifted into fp16's exponent and mantissa fields is its value times 2^-8 (KV_CODE_UNIT puts
 * the 2^8 back in the per-key factor) and its one NaN pattern is set apart. */
#define CF_OPS_KV_CODES 1
static inline float kv_code_unit(cf_dtype dt) {
    return dt == CF_F8E4M3 ? 256.0f : 1.0f;
}
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

/* bf16 scores with AVX512-BF16 (vdpbf16ps: exact products, fp32 sums): q is exactly bf16 here
 * (a bf16 input, or rotated and rounded to bf16), so converting it loses nothing. */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static void
kv_dots_bf16(const float* restrict q, int64_t R, int64_t D, const void* const* rows, int64_t nb,
             float* restrict s) {
    __m512i qb[256]; /* R * D / 32 <= 256 */
    for (int64_t r = 0; r < R; r++)
        for (int64_t d = 0; d < D; d += 32)
            qb[(r * D + d) / 32] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(q + r * D + d + 16),
                                                                _mm512_loadu_ps(q + r * D + d));
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

static void kv_dots(const float* restrict q, int64_t R, int64_t D, const void* const* rows,
                    int64_t nb, cf_dtype dt, float* restrict s, float* restrict kf) {
    (void)kf;
    const int bf16 = cf_cpu()->avx512bf16; /* probed once per process, thread-safe */
    if (dt == CF_BF16 && bf16 && D % 32 == 0 && R * D <= 256 * 32) {
        kv_dots_bf16(q, R, D, rows, nb, s);
        return;
    }
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

static void kv_pv(float* restrict acc, int64_t R, int64_t Dv, const void* const* rows, int64_t nb,
                  cf_dtype dt, const float* restrict p, float* restrict vf) {
    (void)vf;
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

/* ---- Norm: a fused bf16 row (x bf16 -> out bf16, no residual, no dropout): statistics from
 * the bf16 row in registers, then the output computed, rounded (RNE, as cf_f32_to_bf16) and
 * stored without fp32 scratch rows. ---- */
#define CF_OPS_NORM_ROW_BF16 1

static inline __m512 bf16x16(const uint16_t* p, __mmask16 m) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

static inline __m256i to_bf16x16(__m512 y) {
    __m512i u = _mm512_castps_si512(y);
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                         _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))),
        16);
    __mmask16 nan = _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan,
                              _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
}

/* out[0..n) (n % 32 == 0) = (x - mu) * rs * w + bias rounded by vcvtne2ps2bf16 (RNE; it reads
 * fp32 denormals as 0, the only difference from cf_f32_to_bf16). Returns n. */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static int64_t
norm_out_bf16(uint16_t* o, const uint16_t* x, int64_t n, __m512 vmu, __m512 vrs, const float* w,
              const float* bias) {
    for (int64_t j = 0; j < n; j += 32) {
        __m512 y0 = _mm512_mul_ps(_mm512_sub_ps(bf16x16(x + j, 0xffff), vmu), vrs);
        __m512 y1 = _mm512_mul_ps(_mm512_sub_ps(bf16x16(x + j + 16, 0xffff), vmu), vrs);
        y0 = _mm512_fmadd_ps(y0, _mm512_loadu_ps(w + j), _mm512_loadu_ps(bias + j));
        y1 = _mm512_fmadd_ps(y1, _mm512_loadu_ps(w + j + 16), _mm512_loadu_ps(bias + j + 16));
        _mm512_storeu_si512(o + j, (__m512i)_mm512_cvtne2ps_pbh(y1, y0));
    }
    return n;
}

/* The fused bf16 row with a residual and/or the prenorm residual_out (bf16 or fp32 each):
 * h = x + residual is formed in registers, stored to residual_out and to the fp32 scratch h[N]
 * (in L1) for the statistics and the output. */
static void norm_row_res_bf16(const cf_norm_call* c, int64_t r, const float* w, const float* bias,
                              float* h, float* mean, float* rstd) {
    const int64_t N = c->N;
    const uint16_t* x = (const uint16_t*)c->x.data + r * c->x.stride[0];
    uint16_t* o = (uint16_t*)c->out.data + r * c->out.stride[0];
    const void* res = c->residual.data ? at(&c->residual, r * c->residual.stride[0]) : NULL;
    void* ro = c->residual_out.data ? at(&c->residual_out, r * c->residual_out.stride[0]) : NULL;
    const int res32 = c->residual.dtype == CF_F32, ro32 = c->residual_out.dtype == CF_F32;
    __m512 s = _mm512_setzero_ps();
    for (int64_t j = 0; j < N; j += 16) {
        __mmask16 m = kv_mask(N - j);
        __m512 v = bf16x16(x + j, m);
        if (res)
            v = _mm512_add_ps(v, res32 ? _mm512_maskz_loadu_ps(m, (const float*)res + j)
                                       : bf16x16((const uint16_t*)res + j, m));
        if (ro) {
            if (ro32)
                _mm512_mask_storeu_ps((float*)ro + j, m, v);
            else
                _mm256_mask_storeu_epi16((uint16_t*)ro + j, m, to_bf16x16(v));
        }
        _mm512_mask_storeu_ps(h + j, m, v);
        s = _mm512_add_ps(s, v);
    }
    const float mu = c->rms ? 0.0f : _mm512_reduce_add_ps(s) / (float)N;
    const __m512 vmu = _mm512_set1_ps(mu);
    s = _mm512_setzero_ps();
    for (int64_t j = 0; j < N; j += 16) {
        __mmask16 m = kv_mask(N - j);
        __m512 v = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, h + j), vmu);
        s = _mm512_fmadd_ps(v, v, s);
    }
    const float rs = 1.0f / sqrtf(_mm512_reduce_add_ps(s) / (float)N + c->eps);
    const __m512 vrs = _mm512_set1_ps(rs);
    for (int64_t j = 0; j < N; j += 16) {
        __mmask16 m = kv_mask(N - j);
        __m512 y = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, h + j), vmu), vrs);
        y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(m, w + j), _mm512_maskz_loadu_ps(m, bias + j));
        _mm256_mask_storeu_epi16(o + j, m, to_bf16x16(y));
    }
    *mean = mu;
    *rstd = rs;
}

static void norm_row_bf16(const cf_norm_call* c, int64_t r, const float* w, const float* bias,
                          float* mean, float* rstd) {
    const int64_t N = c->N;
    const uint16_t* x = (const uint16_t*)c->x.data + r * c->x.stride[0];
    uint16_t* o = (uint16_t*)c->out.data + r * c->out.stride[0];
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    float mu = 0.0f;
    if (!c->rms) {
        for (int64_t j = 0; j < N; j += 32) {
            s0 = _mm512_add_ps(s0, bf16x16(x + j, kv_mask(N - j)));
            if (j + 16 < N) s1 = _mm512_add_ps(s1, bf16x16(x + j + 16, kv_mask(N - j - 16)));
        }
        mu = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / (float)N;
        s0 = s1 = _mm512_setzero_ps();
    }
    const __m512 vmu = _mm512_set1_ps(mu);
    for (int64_t j = 0; j < N; j += 32) {
        __mmask16 m0 = kv_mask(N - j);
        __m512 v = _mm512_maskz_sub_ps(m0, bf16x16(x + j, m0), vmu);
        s0 = _mm512_fmadd_ps(v, v, s0);
        if (j + 16 < N) {
            __mmask16 m1 = kv_mask(N - j - 16);
            __m512 u = _mm512_maskz_sub_ps(m1, bf16x16(x + j + 16, m1), vmu);
            s1 = _mm512_fmadd_ps(u, u, s1);
        }
    }
    const float rs = 1.0f / sqrtf(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / (float)N + c->eps);
    const __m512 vrs = _mm512_set1_ps(rs);
    int64_t j0 = 0;
    if (cf_cpu()->avx512bf16) j0 = norm_out_bf16(o, x, N & ~(int64_t)31, vmu, vrs, w, bias);
    for (int64_t j = j0; j < N; j += 16) {
        __mmask16 m = kv_mask(N - j);
        __m512 y = _mm512_mul_ps(_mm512_sub_ps(bf16x16(x + j, m), vmu), vrs);
        y = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(m, w + j), _mm512_maskz_loadu_ps(m, bias + j));
        _mm256_mask_storeu_epi16(o + j, m, to_bf16x16(y));
    }
    *mean = mu;
    *rstd = rs;
}

/* ---- Rotary: a fused bf16 row (every head fully rotated, D % 32 == 0): pairs loaded as bf16,
 * rotated in fp32 registers, rounded (RNE, as cf_f32_to_bf16) and stored. ---- */
#define CF_OPS_ROTARY_ROW_BF16 1

/* fp32 lanes rounded to bf16, the result in the upper 16 bits of each lane. */
static inline __m512i bf16_hi(__m512 y) {
    __m512i u = _mm512_castps_si512(y);
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                 _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    __mmask16 nan = _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
    return _mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u));
}

static void rotary_row_bf16(const cf_rotary_call* c, const uint16_t* x, uint16_t* o,
                            const float* co, const float* si) {
    const int64_t D = c->D, half = D / 2, H = c->H;
    for (int64_t h = 0; h < H; h++, x += D, o += D) {
        if (c->interleaved) {
            for (int64_t d = 0; d < D; d += 32) {
                __m512i v = _mm512_loadu_si512(x + d);
                __m512 e = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
                __m512 od =
                    _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
                __m512 cv = _mm512_loadu_ps(co + d / 2), sv = _mm512_loadu_ps(si + d / 2);
                __m512 ye = _mm512_fmsub_ps(e, cv, _mm512_mul_ps(od, sv));
                __m512 yo = _mm512_fmadd_ps(e, sv, _mm512_mul_ps(od, cv));
                __m512i packed = _mm512_or_si512(_mm512_srli_epi32(bf16_hi(ye), 16), bf16_hi(yo));
                _mm512_storeu_si512(o + d, packed);
            }
        } else {
            for (int64_t i = 0; i < half; i += 16) {
                __m512 a = bf16x16(x + i, 0xffff), b = bf16x16(x + half + i, 0xffff);
                __m512 cv = _mm512_loadu_ps(co + i), sv = _mm512_loadu_ps(si + i);
                __m512 ya = _mm512_fmsub_ps(a, cv, _mm512_mul_ps(b, sv));
                __m512 yb = _mm512_fmadd_ps(a, sv, _mm512_mul_ps(b, cv));
                _mm256_storeu_si256((__m256i*)(o + i), to_bf16x16(ya));
                _mm256_storeu_si256((__m256i*)(o + half + i), to_bf16x16(yb));
            }
        }
    }
}

#include "cpu/kvcache_fast.h"
#include "cpu/merge_fast.h"
#include "cpu/norm_fast.h"
#include "cpu/rotary_fast.h"
#include "probe/cpu_features.h"

static int ops_avx512_available(char* why, size_t n) {
    const cf_cpu_info* c = cf_cpu();
    if (c->avx512f && c->avx512bw && c->avx512vl && c->avx512dq && c->fma && c->f16c) return 1;
    snprintf(why, n, "needs AVX-512 F/BW/VL/DQ: CPU (with OS support) has f=%d bw=%d vl=%d dq=%d",
             c->avx512f, c->avx512bw, c->avx512vl, c->avx512dq);
    return 0;
}

#define CF_OPS_ISA avx512
#define CF_OPS_BACKEND "cpu-avx512"
#define CF_OPS_AVAILABLE ops_avx512_available
#include "cpu/ops_fast_impls.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
