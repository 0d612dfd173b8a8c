/* Pieces every fast op kernel shares, compiled once per ISA: it is included by
 * src/cpu/ops_generic.c, src/cpu/x86/ops_avx2.c, src/cpu/x86/ops_avx512.c (after their
 * `#pragma GCC target`) and src/cpu/arm/ops_neon.c, so the plain loops here vectorize to that ISA's
 * width. Rows are converted to fp32 scratch (ld_row / st_row; fp16 through F16C where present), the
 * math runs on fp32 in `omp simd` loops, and fexp is a vectorizable exp. */
#ifndef CFLASH_CPU_OPS_FAST_COMMON_H
#define CFLASH_CPU_OPS_FAST_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The including file says which ISA it is built for (CF_OPS_AVX512 / CF_OPS_AVX2 / CF_OPS_F16C /
 * CF_OPS_NEON), because clang's target pragma does not define __AVX512F__ and friends as GCC's
 * does. */
#if defined(CF_OPS_F16C) || defined(CF_OPS_AVX512)
#include <immintrin.h>
#endif
#if defined(CF_OPS_NEON)
#include <arm_neon.h>
#endif

#include "core/backend.h"
#include "core/ops_call.h"
#include "core/status.h"
#include "core/threads.h"

/* dst[0..n) = src[0..n) (dtype dt) as fp32. */
static inline void ld_row(float* restrict dst, const void* restrict src, cf_dtype dt, int64_t n) {
    if (dt == CF_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
    } else if (dt == CF_BF16) {
        const uint16_t* s = src;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)s[i] << 16;
            float f;
            memcpy(&f, &u, 4);
            dst[i] = f;
        }
    } else {
        const uint16_t* s = src;
        int64_t i = 0;
#if defined(CF_OPS_AVX512)
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(s + i))));
#elif defined(CF_OPS_F16C)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + i))));
#elif defined(CF_OPS_NEON) /* FCVTL: every AArch64 core */
        for (; i + 4 <= n; i += 4)
            vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(s + i))));
#endif
        for (; i < n; i++)
            dst[i] = cf_f16_to_f32(s[i]);
    }
}

/* dst[0..n) (dtype dt) = src rounded to nearest even. */
static inline void st_row(void* restrict dst, cf_dtype dt, const float* restrict src, int64_t n) {
    if (dt == CF_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
    } else if (dt == CF_BF16) {
        uint16_t* d = dst;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &src[i], 4);
            uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
            d[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : r);
        }
    } else {
        uint16_t* d = dst;
        int64_t i = 0;
#if defined(CF_OPS_AVX512)
        for (; i + 16 <= n; i += 16)
            _mm256_storeu_si256((__m256i*)(d + i),
                                _mm512_cvtps_ph(_mm512_loadu_ps(src + i),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(CF_OPS_F16C)
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i*)(d + i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(CF_OPS_NEON) /* FCVTN, rounding to nearest even (the FPCR default) */
        for (; i + 4 <= n; i += 4)
            vst1_u16(d + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
#endif
        for (; i < n; i++)
            d[i] = cf_f32_to_f16(src[i]);
    }
}

/* Byte address of element offset off (in elements) of a view's data. */
static inline void* at(const cf_view* v, int64_t off) {
    return (char*)v->data + off * (int64_t)cf_dtype_size(v->dtype);
}

/* exp(x) for x <= 0 (softmax arguments), relative error ~2 ulp; 0 below -87 and for -inf, NaN
 * for NaN. Branch-free so that loops over it vectorize (GCC 12 vectorizes none with floorf in
 * it: n is rounded by adding and subtracting 1.5 * 2^23). 2^n is built from n's float bits (a
 * magic-number add, no float -> int conversion, which is undefined for NaN). */
static inline float fexp(float x) {
    const float l2e = 1.44269504088896341f, c1 = 0.693359375f, c2 = -2.12194440e-4f;
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = (xc * l2e + 12582912.0f) - 12582912.0f; /* to nearest */
    float r = xc - n * c1 - n * c2;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* n + 127 + 1.5 * 2^23: its low mantissa bits hold n + 127 (n in [-126, 127]) */
    union {
        float f;
        uint32_t u;
    } t = {n + 12583039.0f}, e; /* a union: memcpy here stops vectorization */
    e.u = t.u << 23;            /* 2^n */
    return x < -87.0f ? 0.0f : p * e.f;
}

/* tanh(y) as attn_simd.h's v_tanh (CF_TANH_* in core/attn_call.h), with fexp; branch-free so
 * that loops over it vectorize. NaN gives NaN, +-inf gives +-1. */
static inline float ftanh(float y) {
    const float a = fabsf(y), z = y * y;
    float p = CF_TANH_P5;
    p = p * z + CF_TANH_P4;
    p = p * z + CF_TANH_P3;
    p = p * z + CF_TANH_P2;
    p = p * z + CF_TANH_P1;
    p = p * z + CF_TANH_P0;
    const float small = y + y * z * p, e = fexp(-2.0f * a);
    const float big = copysignf((1.0f - e) / (1.0f + e), y);
    return a < CF_TANH_SMALL ? small : big;
}

#if defined(CF_OPS_AVX512)
/* fexp of 16 arguments x <= 0 (softmax's s - m): 0 below -87 and for -inf, NaN for NaN; 2^k
 * applied by scalef. */
static inline __m512 v16_exp_le0(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.0f);
    const __mmask16 live = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ); /* x >= -87 or NaN */
    x = _mm512_max_ps(lo, x);                                      /* a NaN x passes */
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT);
    const __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f),
                                      _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, k));
}
#endif

#if defined(CF_OPS_AVX2)
/* The same for 8 arguments: 2^k added to the exponent bits (k in [-126, 0]; a NaN x has made p
 * NaN already). */
static inline __m256 v8_exp_le0(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    const __m256 live = _mm256_cmp_ps(x, lo, _CMP_NLT_UQ); /* x >= -87 or NaN */
    x = _mm256_max_ps(lo, x);                              /* a NaN x passes */
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f),
                                      _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(live, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
#endif

/* s[t] = exp(s[t] - m) for t < n (0 where s[t] = -inf, NaN where NaN); returns the sum. Same
 * polynomial as fexp; 2^n applied with scalef (AVX-512) or an exponent add (AVX2, NEON). */
static inline float exp_row(float* s, int64_t n, float m) {
    float sum = 0.0f;
    int64_t t = 0;
#if defined(CF_OPS_AVX512)
    const __m512 vm = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (; t + 16 <= n; t += 16) {
        const __m512 p = v16_exp_le0(_mm512_sub_ps(_mm512_loadu_ps(s + t), vm));
        _mm512_storeu_ps(s + t, p);
        acc = _mm512_add_ps(acc, p);
    }
    sum = _mm512_reduce_add_ps(acc);
#elif defined(CF_OPS_NEON)
    const float32x4_t lo = vdupq_n_f32(-87.0f), hi = vdupq_n_f32(88.0f), vm = vdupq_n_f32(m);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (; t + 4 <= n; t += 4) {
        const float32x4_t x = vsubq_f32(vld1q_f32(s + t), vm);
        const uint32x4_t dead = vcltq_f32(x, lo); /* false for NaN: NaN stays NaN, as fexp */
        const float32x4_t xc = vminq_f32(vmaxq_f32(x, lo), hi);
        const float32x4_t k = vrndnq_f32(vmulq_n_f32(xc, 1.44269504088896341f));
        const float32x4_t r =
            vfmsq_n_f32(vfmsq_n_f32(xc, k, 0.693359375f), k, -2.12194440e-4f); /* xc - k ln 2 */
        float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
        p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
        p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
        p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
        p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
        p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
        p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), vmulq_f32(p, r), r);
        const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(k), vdupq_n_s32(127)), 23);
        p = vmulq_f32(p, vreinterpretq_f32_s32(e));
        p = vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(p), dead));
        vst1q_f32(s + t, p);
        acc = vaddq_f32(acc, p);
    }
    sum = vaddvq_f32(acc);
#endif
    /* (the loop of the other builds, AVX2 among them: fexp vectorizes) */
#pragma omp simd reduction(+ : sum)
    for (int64_t u = t; u < n; u++) {
        s[u] = fexp(s[u] - m);
        sum += s[u];
    }
    return sum;
}

/* Prefetch n elements of dtype dt at p (for reading, or with write intent): the row after the
 * one being computed, so DRAM streams while this row is in flight. */
static inline void prefetch_row(const void* p, cf_dtype dt, int64_t n, int write) {
    const char* c = p;
    const int64_t bytes = n * (int64_t)cf_dtype_size(dt);
    if (write)
        for (int64_t o = 0; o < bytes; o += 64)
            __builtin_prefetch(c + o, 1, 3);
    else
        for (int64_t o = 0; o < bytes; o += 64)
            __builtin_prefetch(c + o, 0, 3);
}

/* Keys per block of the KV-cache kernel (the scores of a block stay in L1; 16 measured faster
 * than 8, 32 and 64 for bf16 decode). */
#define KV_KB 16

/* Rows [*r0, *r1) of n for thread t of nt: contiguous blocks (streaming, deterministic). */
static inline void part(int64_t n, int t, int nt, int64_t* r0, int64_t* r1) {
    *r0 = n * t / nt;
    *r1 = n * (t + 1) / nt;
}

#ifdef _OPENMP
#include <omp.h>
#define CF_TID omp_get_thread_num()
#define CF_NT omp_get_num_threads()
#else
#define CF_TID 0
#define CF_NT 1
#endif

#endif
