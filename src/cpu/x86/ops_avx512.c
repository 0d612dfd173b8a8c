/* The fast op kernels (rotary, norm, merge) built for AVX-512 (F, BW, VL, DQ) with 512-bit
 * vectors: backend cpu-avx512, available when the CPU probe reports them (with OS support).
 * Bodies: src/cpu/{rotary,norm,merge}_fast.h. Its KV-cache path: src/cpu/x86/kv_avx512.c. */
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

/* Lanes [0, min(left, 16)) of a 16-lane mask. */
static inline __mmask16 mask16(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
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
        __mmask16 m = mask16(N - j);
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
        __mmask16 m = mask16(N - j);
        __m512 v = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, h + j), vmu);
        s = _mm512_fmadd_ps(v, v, s);
    }
    const float rs = 1.0f / sqrtf(_mm512_reduce_add_ps(s) / (float)N + c->eps);
    const __m512 vrs = _mm512_set1_ps(rs);
    for (int64_t j = 0; j < N; j += 16) {
        __mmask16 m = mask16(N - j);
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
            s0 = _mm512_add_ps(s0, bf16x16(x + j, mask16(N - j)));
            if (j + 16 < N) s1 = _mm512_add_ps(s1, bf16x16(x + j + 16, mask16(N - j - 16)));
        }
        mu = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / (float)N;
        s0 = s1 = _mm512_setzero_ps();
    }
    const __m512 vmu = _mm512_set1_ps(mu);
    for (int64_t j = 0; j < N; j += 32) {
        __mmask16 m0 = mask16(N - j);
        __m512 v = _mm512_maskz_sub_ps(m0, bf16x16(x + j, m0), vmu);
        s0 = _mm512_fmadd_ps(v, v, s0);
        if (j + 16 < N) {
            __mmask16 m1 = mask16(N - j - 16);
            __m512 u = _mm512_maskz_sub_ps(m1, bf16x16(x + j + 16, m1), vmu);
            s1 = _mm512_fmadd_ps(u, u, s1);
        }
    }
    const float rs = 1.0f / sqrtf(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / (float)N + c->eps);
    const __m512 vrs = _mm512_set1_ps(rs);
    int64_t j0 = 0;
    if (cf_cpu()->avx512bf16) j0 = norm_out_bf16(o, x, N & ~(int64_t)31, vmu, vrs, w, bias);
    for (int64_t j = j0; j < N; j += 16) {
        __mmask16 m = mask16(N - j);
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

#include "cpu/merge_fast.h"
#include "cpu/norm_fast.h"
#include "cpu/rotary_fast.h"
#include "probe/cpu_features.h"

/* (also the availability of cpu-avx512's KV-cache path, src/cpu/x86/kv_avx512.c) */
int cf_ops_avx512_available(char* why, size_t n);
int cf_ops_avx512_available(char* why, size_t n) {
    const cf_cpu_info* c = cf_cpu();
    if (c->avx512f && c->avx512bw && c->avx512vl && c->avx512dq && c->fma && c->f16c) return 1;
    snprintf(why, n, "needs AVX-512 F/BW/VL/DQ: CPU (with OS support) has f=%d bw=%d vl=%d dq=%d",
             c->avx512f, c->avx512bw, c->avx512vl, c->avx512dq);
    return 0;
}

#define CF_OPS_ISA avx512
#define CF_OPS_BACKEND "cpu-avx512"
#define CF_OPS_AVAILABLE cf_ops_avx512_available
#include "cpu/ops_fast_impls.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
