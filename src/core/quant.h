/* Quantized KV caches (cflash_kv_quant): the fp8 codes (OCP e4m3fn: bias 7, no infinities, NaN
 * S.1111.111, largest 448; e5m2: bias 15, IEEE-like, largest 57344) and int8 codes, with the
 * rounding rules every backend applies when it appends rows: fp8 = the fp32 quotient x / descale
 * rounded to nearest even, saturated to the largest finite value (infinities too), NaN kept;
 * int8 per (token, head) row: scale = max|x| / 127, code = x / scale rounded to nearest even. */
#ifndef CFLASH_CORE_QUANT_H
#define CFLASH_CORE_QUANT_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cflash.h"
#include "core/ops_call.h"

/* The value of an fp8 code, exactly, as fp32 (e5m2 = 1: e5m2, else e4m3fn). */
static inline float cf_fp8_to_f32(uint8_t x, int e5m2) {
    const uint32_t s = (uint32_t)(x & 0x80) << 24;
    uint32_t u;
    if (e5m2) {
        const uint32_t e = (x >> 2) & 31, m = x & 3;
        if (e == 31)
            u = s | 0x7f800000u | (m << 21); /* inf (m = 0) or NaN */
        else if (e == 0) {
            float f = (float)m * 0x1p-16f; /* subnormal: m / 4 * 2^-14 */
            memcpy(&u, &f, 4);
            u |= s;
        } else
            u = s | ((e + 112) << 23) | (m << 21);
    } else {
        const uint32_t e = (x >> 3) & 15, m = x & 7;
        if (e == 15 && m == 7)
            u = s | 0x7fc00000u; /* the one NaN */
        else if (e == 0) {
            float f = (float)m * 0x1p-9f; /* subnormal: m / 8 * 2^-6 */
            memcpy(&u, &f, 4);
            u |= s;
        } else
            u = s | ((e + 120) << 23) | (m << 20);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* x as an fp8 code: round to nearest even, saturate to the largest finite code (infinities
 * included), NaN to the format's NaN. */
static inline uint8_t cf_f32_to_fp8(float x, int e5m2) {
    const int M = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7;
    const uint32_t maxenc = e5m2 ? 0x7b : 0x7e;
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint8_t s = (uint8_t)((u >> 24) & 0x80);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint8_t)(s | 0x7f);
    uint32_t enc;
    if (a < (uint32_t)(128 - bias) << 23) { /* below the smallest normal: multiples of the step */
        float f;
        memcpy(&f, &a, 4);
        enc = (uint32_t)nearbyintf(f * (e5m2 ? 0x1p16f : 0x1p9f)); /* <= 2^M: may round up */
    } else if (a >= 0x7f800000u) {
        enc = maxenc;
    } else {
        const int sh = 23 - M;
        uint32_t r = (a + (1u << (sh - 1)) - 1u + ((a >> sh) & 1u)) >> sh; /* (e32 << M) | m */
        enc = r - ((uint32_t)(127 - bias) << M);
        if (enc > maxenc) enc = maxenc;
    }
    return (uint8_t)(s | enc);
}

/* int8 codes of one row x[0..n): returns the scale (max|x| / 127; NaN or inf when x has them,
 * then every code is 0 and the row reads back NaN) and writes codes in [-127, 127]. */
static inline float cf_int8_quant_row(int8_t* codes, const float* x, int64_t n) {
    float amax = 0.0f;
    for (int64_t d = 0; d < n; d++) {
        const float a = fabsf(x[d]);
        amax = a > amax || a != a ? a : amax; /* a NaN stays */
    }
    const float scale = amax / 127.0f;
    const int usable = scale > 0.0f && scale < INFINITY;
    for (int64_t d = 0; d < n; d++) {
        float q = usable ? nearbyintf(x[d] / scale) : 0.0f;
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        codes[d] = (int8_t)q;
    }
    return scale;
}

/* x[0..n) (fp32; overwritten) into row t of batch b, KV head hk of the K (is_v 0) or V cache of
 * a quantized call: rounded to q's dtype (the row an unquantized cache would hold), then coded
 * with the rules above (an int8 row's scale goes to k_scales / v_scales). */
static inline void cf_kv_quant_store(const cf_kvcache_call* c, int is_v, int64_t b, int64_t t,
                                     int64_t hk, float* x, int64_t n) {
    const cf_view* v = is_v ? &c->vc : &c->kc;
    const int64_t o = cf_kv_row(c, v, b, t, hk);
    for (int64_t d = 0; d < n; d++)
        x[d] = cf_round_to(c->a.dtype, x[d]);
    if (c->quant == CFLASH_KV_QUANT_INT8) {
        const cf_view* sv = is_v ? &c->vs : &c->ks;
        ((float*)sv->data)[cf_kv_row(c, sv, b, t, hk)] =
            cf_int8_quant_row((int8_t*)v->data + o, x, n);
        return;
    }
    const float ds = cf_kv_descale(c, is_v, b, hk);
    const int e5m2 = c->quant == CFLASH_KV_QUANT_FP8_E5M2;
    for (int64_t d = 0; d < n; d++)
        ((uint8_t*)v->data)[o + d] = cf_f32_to_fp8(x[d] / ds, e5m2);
}

/* After row t of batch b, KV head hk was appended to an int8 MLA latent cache (the V cache a
 * view of the K cache, codes shared): V's scale of the row is K's. */
static inline void cf_kv_latent_scale(const cf_kvcache_call* c, int64_t b, int64_t t, int64_t hk) {
    if (c->quant != CFLASH_KV_QUANT_INT8) return;
    ((float*)c->vs.data)[cf_kv_row(c, &c->vs, b, t, hk)] =
        ((const float*)c->ks.data)[cf_kv_row(c, &c->ks, b, t, hk)];
}

#endif
