/* Element addressing shared by the reference attention kernels: a 4-dim (b, s, h, d) view and a
 * 3-dim (b, h, s) LSE view, strides in elements. */
#ifndef CFLASH_CPU_REF_ATTN_REF_H
#define CFLASH_CPU_REF_ATTN_REF_H

#include "core/attn_call.h"

static inline int64_t ref_at4(const cf_view* v, int64_t b, int64_t s, int64_t h, int64_t d) {
    return b * v->stride[0] + s * v->stride[1] + h * v->stride[2] + d * v->stride[3];
}
static inline int64_t ref_at3(const cf_view* v, int64_t b, int64_t h, int64_t s) {
    return b * v->stride[0] + h * v->stride[1] + s * v->stride[2];
}

/* Scaled, soft-capped, ALiBi-biased score of query row (b, s=qi, h) against key j of the
 * sequence (first key row k0, paged or not); i and j are positions within the sequence (lengths
 * sq, sk). */
static inline float ref_score(const cf_attn_call* c, int64_t b, int64_t h, int64_t hk, int64_t qi,
                              int64_t k0, int64_t i, int64_t j, int64_t sq, int64_t sk) {
    float dot = 0.0f;
    const int64_t ko = cf_attn_kv_off(c, &c->k, b, k0, j, hk);
    for (int64_t d = 0; d < c->D; d++)
        dot += cf_load(c->q.data, c->dtype, ref_at4(&c->q, b, qi, h, d)) *
               cf_load(c->k.data, c->dtype, ko + d);
    return cf_attn_score(c, c->scale * dot, cf_attn_slope(c, b, h), i, j, sq, sk);
}

#endif
