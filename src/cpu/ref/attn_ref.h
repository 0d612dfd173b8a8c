/* Element addressing shared by the reference attention kernels: a 4-dim (b, s, h, d) view and a
 * 3-dim (b, h, s) LSE view, strides in elements. */
#ifndef CFLASH_CPU_REF_ATTN_REF_H
#define CFLASH_CPU_REF_ATTN_REF_H

#include <math.h>

#include "core/attn_call.h"
#include "core/philox.h"

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

/* The gradient terms of one visible pair (query i, key j within the sequence) of head h, sequence
 * b (query row qi in the views, keys from row k0, through the block table when paged), with the
 * row's lse and delta = rowsum(dO * O), as the reference backward computes them. Returns 0 when
 * issue 13's masks hide the pair (attn_mask, block-sparse, a bias of -inf); else adds
 * p * keep * dO to dv_row (Dv values; NULL = skip) and sets *ds_s = dL/d(score) (what dbias
 * receives) and *ds = the same scaled back to q.k (dq += ds k, dk += ds q). A dropped weight is 0,
 * and 0 times a NaN is NaN, as in a naive dropout(P) V. The tiled backward uses it for the rare
 * blocks it sums pair by pair. */
static inline int ref_pair_grad(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi, int64_t k0,
                                int64_t i, int64_t j, int64_t sq, int64_t sk, float lse,
                                float delta, float* dv_row, float* ds_s, float* ds) {
    const int64_t hk = h / (c->H / c->Hk);
    const float keep_scale = 1.0f / (1.0f - c->dropout_p);
    const int64_t ko = cf_attn_kv_off(c, &c->k, b, k0, j, hk),
                  vo = cf_attn_kv_off(c, &c->v, b, k0, j, hk);
    float dot = 0.0f;
    for (int64_t d = 0; d < c->D; d++)
        dot += cf_load(c->q.data, c->dtype, ref_at4(&c->q, b, qi, h, d)) *
               cf_load(c->k.data, c->dtype, ko + d);
    float x = c->scale * dot, t = 0.0f;
    if (c->softcap > 0.0f) t = tanhf(x / c->softcap);
    float s = cf_attn_score(c, x, cf_attn_slope(c, b, h), i, j, sq, sk);
    if (cf_attn_has_extra(c) && (s = cf_attn_extra(c, b, h, i, j, s)) == -INFINITY) return 0;
    float p = expf(s - lse);
    int keep = cf_dropout_keep(c->seed, c->offset, c->dropout_p, (uint64_t)b, (uint64_t)h,
                               (uint64_t)(i + c->q_offset), (uint64_t)(j + c->k_offset));
    float pk = keep ? p * keep_scale : 0.0f; /* the weight the forward applied to v_j */
    float dpk = 0.0f;                        /* dO_i . v_j */
    for (int64_t d = 0; d < c->Dv; d++) {
        float g = cf_load(c->dout.data, c->dtype, ref_at4(&c->dout, b, qi, h, d));
        dpk += g * cf_load(c->v.data, c->dtype, vo + d);
        if (dv_row) dv_row[d] += pk * g;
    }
    float dp = keep ? dpk * keep_scale : 0.0f;
    float g = p * (dp - delta); /* d loss / d s */
    *ds_s = g;
    if (c->softcap > 0.0f) g *= 1.0f - t * t; /* through s = cap * tanh(x / cap) */
    *ds = g * c->scale;                       /* through x = scale * q.k */
    return 1;
}

#endif
