/* The vector vocabulary the CPU attention kernels are written in (src/cpu/attn_simd.h), one section
 * per ISA, as ggml's simd-mappings.h: the file that includes this defines CF_SIMD_AVX2,
 * CF_SIMD_AVX512 or CF_SIMD_NEON first. Functions carry the ISA's target attribute (no -march):
 * everything here is inlined into functions built for that ISA only. */
#ifndef CFLASH_CPU_SIMD_VEC_H
#define CFLASH_CPU_SIMD_VEC_H

#include <stdint.h>

/* What each ISA provides:
 *   CF_VTARGET           attribute of every function that uses the vocabulary
 *   cf_vf, CF_VL         an fp32 vector of CF_VL lanes
 *   cf_vt                the live lanes of a partial vector: cf_vtail(n), 0 < n <= CF_VL
 *   cf_vload/store       full vectors, unaligned; cf_vloadt/storet: the live lanes only (the
 *                        others load as 0 and are not written)
 *   cf_vzero, cf_vset1, cf_vbcast(p) = set1(*p), cf_vadd, cf_vsub, cf_vmul
 *   cf_vfma(c, a, b)     c + a * b, one rounding
 *   cf_vmax(a, b)        max; a NaN in b is returned (x86: a NaN in a is not; NEON: both are)
 *   cf_vdiv(a, b)        a / b, rounded;  cf_vabs(x) |x|;  cf_vcopysign(m, s) |m| with s's sign
 *   cf_vsel_lt(a, b, x, y)  x where a < b, else y (y where either is NaN)
 *   cf_vall_lt(a, b)     whether a < b in every lane (0 where either is NaN in some lane)
 *   cf_vround(x)         to the nearest integer, ties to even
 *   cf_vscale2(p, n, x)  p * 2^n for integral n >= CF_EXP2_LO; 0 where x < CF_EXP2_LO
 *   CF_EXP2_LO           where exp2 (v_exp2, at the end) stops: 2^-64 on x86, so that no
 *                        softmax probability is near a subnormal. Intel's FMAs take a microcode
 *                        assist for every subnormal input or result: with P down to 2^-149, ALiBi
 *                        (whose distant keys land there) ran 3.7x (forward) and 6.3x (backward)
 *                        slower than plain attention on a Xeon 6/207, 1.37x / 1.12x with 2^-64
 *                        (docs/PERF.md). What it drops, n 2^-64 of the row's sum at most, is far
 *                        below fp32's rounding.
 *   cf_vtranspose(r)     (x86 only, where CF_VTRANSPOSE is defined) r[0 .. CF_VL) transposed in
 *                        place: lane j of r[i] becomes lane i of r[j]
 *   cf_vload_f16/bf16(p), cf_vstore_f16/bf16(p, v): CF_VL 16-bit floats, rounded to nearest
 *                        even, NaN kept quiet (as cf_f32_to_bf16 / cf_f32_to_f16)
 *   CF_MK_NVMAX          vectors per row of the fp32 GEMM register tile (6 rows) */

#define CF_VINLINE static inline __attribute__((always_inline))

#if defined(CF_SIMD_AVX2) /* ---------------------------------------------------------------- */
#include <immintrin.h>

#define CF_VTARGET __attribute__((target("avx2,fma,f16c")))
#define CF_VL 8
#define CF_MK_NVMAX 2 /* 12 accumulators of 16 ymm */
#define CF_EXP2_LO (-64.0f)
typedef __m256 cf_vf;
typedef __m256i cf_vt;

#define CF_V CF_VTARGET CF_VINLINE
CF_V cf_vt cf_vtail(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
CF_V cf_vf cf_vload(const float* p) {
    return _mm256_loadu_ps(p);
}
CF_V void cf_vstore(float* p, cf_vf v) {
    _mm256_storeu_ps(p, v);
}
CF_V cf_vf cf_vloadt(const float* p, cf_vt t) {
    return _mm256_maskload_ps(p, t);
}
CF_V void cf_vstoret(float* p, cf_vt t, cf_vf v) {
    _mm256_maskstore_ps(p, t, v);
}
CF_V cf_vf cf_vzero(void) {
    return _mm256_setzero_ps();
}
CF_V cf_vf cf_vset1(float x) {
    return _mm256_set1_ps(x);
}
CF_V cf_vf cf_vbcast(const float* p) {
    return _mm256_broadcast_ss(p);
}
CF_V cf_vf cf_vadd(cf_vf a, cf_vf b) {
    return _mm256_add_ps(a, b);
}
CF_V cf_vf cf_vsub(cf_vf a, cf_vf b) {
    return _mm256_sub_ps(a, b);
}
CF_V cf_vf cf_vmul(cf_vf a, cf_vf b) {
    return _mm256_mul_ps(a, b);
}
CF_V cf_vf cf_vfma(cf_vf c, cf_vf a, cf_vf b) {
    return _mm256_fmadd_ps(a, b, c);
}
CF_V cf_vf cf_vmax(cf_vf a, cf_vf b) {
    return _mm256_max_ps(a, b);
}
CF_V cf_vf cf_vdiv(cf_vf a, cf_vf b) {
    return _mm256_div_ps(a, b);
}
CF_V cf_vf cf_vabs(cf_vf x) {
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
}
CF_V cf_vf cf_vcopysign(cf_vf m, cf_vf s) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(sign, m), _mm256_and_ps(sign, s));
}
CF_V cf_vf cf_vsel_lt(cf_vf a, cf_vf b, cf_vf x, cf_vf y) {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
}
CF_V int cf_vall_lt(cf_vf a, cf_vf b) {
    return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LT_OQ)) == 0xff;
}
CF_V cf_vf cf_vround(cf_vf x) {
    return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
/* The exponent field built by hand (2^n for n >= CF_EXP2_LO), the lanes below it cleared. */
CF_V cf_vf cf_vscale2(cf_vf p, cf_vf n, cf_vf x) {
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(CF_EXP2_LO), _CMP_NLT_UQ);
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}
CF_V cf_vf cf_vload_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
}
CF_V cf_vf cf_vload_bf16(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128((const __m128i*)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
CF_V void cf_vstore_f16(uint16_t* p, cf_vf v) {
    _mm_storeu_si128((__m128i*)p,
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
CF_V void cf_vstore_bf16(uint16_t* p, cf_vf v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i qn = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, qn, nan);
    /* 32 -> 16 bits: pack within lanes, then order the two 64-bit halves. */
    const __m256i pk = _mm256_packus_epi32(r, r);
    _mm_storeu_si128((__m128i*)p, _mm256_castsi256_si128(_mm256_permute4x64_epi64(pk, 0x08)));
}
/* 8 x 8: pairs of rows interleaved, then 4 x 4 blocks within lanes, then the 128-bit halves. */
#define CF_VTRANSPOSE
CF_V void cf_vtranspose(cf_vf r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2)
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) /* u[i]: columns i, 4 + i of rows 0-3; u[4 + i]: of rows 4-7 */
        r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20),
        r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
}
#undef CF_V

#elif defined(CF_SIMD_AVX512) /* ---------------------------------------------------------- */
#include <immintrin.h>

#define CF_VTARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define CF_VL 16
#define CF_MK_NVMAX 4 /* 24 accumulators of 32 zmm */
#define CF_EXP2_LO (-64.0f)
typedef __m512 cf_vf;
typedef __mmask16 cf_vt;

#define CF_V CF_VTARGET CF_VINLINE
CF_V cf_vt cf_vtail(int64_t n) {
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}
CF_V cf_vf cf_vload(const float* p) {
    return _mm512_loadu_ps(p);
}
CF_V void cf_vstore(float* p, cf_vf v) {
    _mm512_storeu_ps(p, v);
}
CF_V cf_vf cf_vloadt(const float* p, cf_vt t) {
    return _mm512_maskz_loadu_ps(t, p);
}
CF_V void cf_vstoret(float* p, cf_vt t, cf_vf v) {
    _mm512_mask_storeu_ps(p, t, v);
}
CF_V cf_vf cf_vzero(void) {
    return _mm512_setzero_ps();
}
CF_V cf_vf cf_vset1(float x) {
    return _mm512_set1_ps(x);
}
CF_V cf_vf cf_vbcast(const float* p) {
    return _mm512_set1_ps(*p);
}
CF_V cf_vf cf_vadd(cf_vf a, cf_vf b) {
    return _mm512_add_ps(a, b);
}
CF_V cf_vf cf_vsub(cf_vf a, cf_vf b) {
    return _mm512_sub_ps(a, b);
}
CF_V cf_vf cf_vmul(cf_vf a, cf_vf b) {
    return _mm512_mul_ps(a, b);
}
CF_V cf_vf cf_vfma(cf_vf c, cf_vf a, cf_vf b) {
    return _mm512_fmadd_ps(a, b, c);
}
CF_V cf_vf cf_vmax(cf_vf a, cf_vf b) {
    return _mm512_max_ps(a, b);
}
CF_V cf_vf cf_vdiv(cf_vf a, cf_vf b) {
    return _mm512_div_ps(a, b);
}
CF_V cf_vf cf_vabs(cf_vf x) {
    return _mm512_abs_ps(x);
}
CF_V cf_vf cf_vcopysign(cf_vf m, cf_vf s) {
    return _mm512_or_ps(_mm512_abs_ps(m), _mm512_and_ps(_mm512_set1_ps(-0.0f), s));
}
CF_V cf_vf cf_vsel_lt(cf_vf a, cf_vf b, cf_vf x, cf_vf y) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), y, x);
}
CF_V int cf_vall_lt(cf_vf a, cf_vf b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ) == 0xffff;
}
CF_V cf_vf cf_vround(cf_vf x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
/* vscalefps, the lanes below CF_EXP2_LO cleared (see CF_EXP2_LO's comment above). */
CF_V cf_vf cf_vscale2(cf_vf p, cf_vf n, cf_vf x) {
    return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(CF_EXP2_LO), _CMP_NLT_UQ), p,
                                  n);
}
CF_V cf_vf cf_vload_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
}
CF_V cf_vf cf_vload_bf16(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256((const __m256i*)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
CF_V void cf_vstore_f16(uint16_t* p, cf_vf v) {
    _mm256_storeu_si256((__m256i*)p,
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
CF_V void cf_vstore_bf16(uint16_t* p, cf_vf v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(r));
}
/* 16 x 16: pairs of rows interleaved, 4 x 4 blocks within 128-bit lanes, then two rounds of
 * 128-bit lane shuffles. */
#define CF_VTRANSPOSE
CF_V void cf_vtranspose(cf_vf r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2)
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    for (int i = 0; i < 16; i += 4) { /* u[i + c]: column c of each lane k, rows i .. i + 3 */
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int h = 0; h < 16; h += 8) /* t[h + c]: columns c, 8 + c (c < 4); t[h + 4 + c]: 4 + c,
                                       12 + c; of rows h .. h + 7 */
        for (int c = 0; c < 4; c++)
            t[h + c] = _mm512_shuffle_f32x4(u[h + c], u[h + 4 + c], 0x88),
                  t[h + 4 + c] = _mm512_shuffle_f32x4(u[h + c], u[h + 4 + c], 0xdd);
    for (int c = 0; c < 8; c++)
        r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88),
        r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xdd);
}
#undef CF_V

#elif defined(CF_SIMD_NEON) /* ------------------------------------------------------------ */
#include <arm_neon.h>

#define CF_VTARGET /* AdvSIMD is part of the AArch64 baseline */
#define CF_VL 4
#define CF_MK_NVMAX 4 /* 24 accumulators of 32 v registers */
#define CF_EXP2_LO (-126.0f)
typedef float32x4_t cf_vf;
typedef int cf_vt; /* the number of live lanes; NEON has no masked loads */

/* Partial vectors go lane by lane; n <= 0 touches nothing. */
CF_VINLINE cf_vt cf_vtail(int64_t n) {
    return (int)(n > 4 ? 4 : n);
}
CF_VINLINE cf_vf cf_vload(const float* p) {
    return vld1q_f32(p);
}
CF_VINLINE void cf_vstore(float* p, cf_vf v) {
    vst1q_f32(p, v);
}
CF_VINLINE cf_vf cf_vloadt(const float* p, cf_vt n) {
    if (n >= 4) return vld1q_f32(p);
    float32x4_t v = vdupq_n_f32(0.0f);
    if (n > 0) v = vld1q_lane_f32(p, v, 0);
    if (n > 1) v = vld1q_lane_f32(p + 1, v, 1);
    if (n > 2) v = vld1q_lane_f32(p + 2, v, 2);
    return v;
}
CF_VINLINE void cf_vstoret(float* p, cf_vt n, cf_vf v) {
    if (n >= 4) {
        vst1q_f32(p, v);
        return;
    }
    if (n > 0) vst1q_lane_f32(p, v, 0);
    if (n > 1) vst1q_lane_f32(p + 1, v, 1);
    if (n > 2) vst1q_lane_f32(p + 2, v, 2);
}
CF_VINLINE cf_vf cf_vzero(void) {
    return vdupq_n_f32(0.0f);
}
CF_VINLINE cf_vf cf_vset1(float x) {
    return vdupq_n_f32(x);
}
CF_VINLINE cf_vf cf_vbcast(const float* p) {
    return vld1q_dup_f32(p);
}
CF_VINLINE cf_vf cf_vadd(cf_vf a, cf_vf b) {
    return vaddq_f32(a, b);
}
CF_VINLINE cf_vf cf_vsub(cf_vf a, cf_vf b) {
    return vsubq_f32(a, b);
}
CF_VINLINE cf_vf cf_vmul(cf_vf a, cf_vf b) {
    return vmulq_f32(a, b);
}
CF_VINLINE cf_vf cf_vfma(cf_vf c, cf_vf a, cf_vf b) {
    return vfmaq_f32(c, a, b);
}
CF_VINLINE cf_vf cf_vmax(cf_vf a, cf_vf b) {
    return vmaxq_f32(a, b);
}
CF_VINLINE cf_vf cf_vdiv(cf_vf a, cf_vf b) {
    return vdivq_f32(a, b);
}
CF_VINLINE cf_vf cf_vabs(cf_vf x) {
    return vabsq_f32(x);
}
CF_VINLINE cf_vf cf_vcopysign(cf_vf m, cf_vf s) {
    return vbslq_f32(vdupq_n_u32(0x80000000u), s, m);
}
CF_VINLINE cf_vf cf_vsel_lt(cf_vf a, cf_vf b, cf_vf x, cf_vf y) {
    return vbslq_f32(vcltq_f32(a, b), x, y);
}
CF_VINLINE int cf_vall_lt(cf_vf a, cf_vf b) {
    return vminvq_u32(vcltq_f32(a, b)) != 0;
}
CF_VINLINE cf_vf cf_vround(cf_vf x) {
    return vrndnq_f32(x);
}
/* The exponent field built by hand, the lanes below CF_EXP2_LO cleared (false for NaN). */
CF_VINLINE cf_vf cf_vscale2(cf_vf p, cf_vf n, cf_vf x) {
    const uint32x4_t below = vcltq_f32(x, vdupq_n_f32(CF_EXP2_LO));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    const float32x4_t r = vmulq_f32(p, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(r), below));
}
/* bf16 bits of v in the low half of each lane. */
CF_VINLINE uint32x4_t cf_vround_bf16(cf_vf v) {
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t r = vshrq_n_u32(vaddq_u32(vaddq_u32(u, vdupq_n_u32(0x7fff)), lsb), 16);
    const uint32x4_t qn = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x40));
    const uint32x4_t nan = vmvnq_u32(vceqq_f32(v, v));
    return vbslq_u32(nan, qn, r);
}
CF_VINLINE cf_vf cf_vload_f16(const uint16_t* p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}
CF_VINLINE cf_vf cf_vload_bf16(const uint16_t* p) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}
CF_VINLINE void cf_vstore_f16(uint16_t* p, cf_vf v) {
    vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(v)));
}
CF_VINLINE void cf_vstore_bf16(uint16_t* p, cf_vf v) {
    vst1_u16(p, vmovn_u32(cf_vround_bf16(v)));
}

#else
#error "define CF_SIMD_AVX2, CF_SIMD_AVX512 or CF_SIMD_NEON before including cpu/simd_vec.h"
#endif

/* ---- Built on the vocabulary, for every ISA -------------------------------------------------- */

/* The range reduction of v_exp2 and v_exp2_p5: *n = round(x) of x clamped below at CF_EXP2_LO
 * (a NaN x passes), returning x - *n in [-1/2, 1/2]. */
CF_VTARGET CF_VINLINE cf_vf v_exp2_frac(cf_vf x, cf_vf* n) {
    const cf_vf xc = cf_vmax(cf_vset1(CF_EXP2_LO), x); /* a NaN x (the second operand) passes */
    *n = cf_vround(xc);
    return cf_vsub(xc, *n);
}

/* 2^x for x <= 0 (x < CF_EXP2_LO and -inf give 0, NaN gives NaN): 2^round(x) * p(x - round(x)),
 * degree-7 polynomial, ~1 ulp. */
CF_VTARGET CF_VINLINE cf_vf v_exp2(cf_vf x) {
    cf_vf n;
    const cf_vf f = v_exp2_frac(x, &n);
    cf_vf p = cf_vset1(1.5252733e-5f);
    p = cf_vfma(cf_vset1(1.5403530e-4f), p, f);
    p = cf_vfma(cf_vset1(1.3333558e-3f), p, f);
    p = cf_vfma(cf_vset1(9.6181291e-3f), p, f);
    p = cf_vfma(cf_vset1(5.5504109e-2f), p, f);
    p = cf_vfma(cf_vset1(2.4022651e-1f), p, f);
    p = cf_vfma(cf_vset1(6.9314718e-1f), p, f);
    p = cf_vfma(cf_vset1(1.0f), p, f);
    return cf_vscale2(p, n, x);
}

/* v_exp2 on a degree-5 polynomial (fitted for relative error: within 2e-7 of 2^x): where the
 * result is rounded to 16 bits next (the AMX forward's P: bf16's 2^-9, fp16's 2^-11), two FMAs
 * fewer a vector. */
CF_VTARGET CF_VINLINE cf_vf v_exp2_p5(cf_vf x) {
    cf_vf n;
    const cf_vf f = v_exp2_frac(x, &n);
    cf_vf p = cf_vset1(1.3264727e-3f);
    p = cf_vfma(cf_vset1(9.6715130e-3f), p, f);
    p = cf_vfma(cf_vset1(5.5507336e-2f), p, f);
    p = cf_vfma(cf_vset1(2.4022242e-1f), p, f);
    p = cf_vfma(cf_vset1(6.9314700e-1f), p, f);
    p = cf_vfma(cf_vset1(1.0f), p, f);
    return cf_vscale2(p, n, x);
}

#define CF_LOG2E 1.4426950408889634f

#endif
