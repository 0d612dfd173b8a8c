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

/* Scaled, soft-capped, ALiBi-biased score of query row (b, s=qi, h) against key row (b, kj, hk);
 * i and j are positions within the sequence (lengths sq, sk). *raw gets the soft-capped value
 * before ALiBi divided by the cap (tanh), for the backward's derivative. */
static inline float ref_score(const cf_attn_call* c, int64_t b, int64_t h, int64_t hk, int64_t qi,
                              int64_t kj, int64_t i, int64_t j, int64_t sq, int64_t sk) {
    float dot = 0.0f;
    for (int64_t d = 0; d < c->D; d++)
        dot += cf_load(c->q.data, c->dtype, ref_at4(&c->q, b, qi, h, d)) *
               cf_load(c->k.data, c->dtype, ref_at4(&c->k, b, kj, hk, d));
    return cf_attn_score(c, c->scale * dot, cf_attn_slope(c, b, h), i, j, sq, sk);
}

/* The gradient terms of one visible (query qi, key kj) pair of head h (sequence positions i, j;
 * lse and delta = rowsum(dO * O) of the query row), as the reference backward computes them:
 * adds p * keep * dO to dv_row (Dv values; NULL = skip) and returns dS scaled back to q.k
 * (dq += dS k, dk += dS q). A dropped weight is 0, and 0 times a NaN is NaN, as in a naive
 * dropout(P) V. The tiled backward uses it for the rare blocks it sums pair by pair. */
static inline float ref_pair_grad(const cf_attn_call* c, int64_t b, int64_t h, int64_t hk,
                                  int64_t qi, int64_t kj, int64_t i, int64_t j, int64_t sq,
                                  int64_t sk, float lse, float delta, float* dv_row) {
    const float keep_scale = 1.0f / (1.0f - c->dropout_p);
    float dot = 0.0f;
    for (int64_t d = 0; d < c->D; d++)
        dot += cf_load(c->q.data, c->dtype, ref_at4(&c->q, b, qi, h, d)) *
               cf_load(c->k.data, c->dtype, ref_at4(&c->k, b, kj, hk, d));
    float x = c->scale * dot, t = 0.0f;
    if (c->softcap > 0.0f) t = tanhf(x / c->softcap);
    float s = cf_attn_score(c, x, cf_attn_slope(c, b, h), i, j, sq, sk);
    float p = expf(s - lse);
    int keep = cf_dropout_keep(c->seed, c->offset, c->dropout_p, (uint64_t)b, (uint64_t)h,
                               (uint64_t)(i + c->q_offset), (uint64_t)(j + c->k_offset));
    float pk = keep ? p * keep_scale : 0.0f; /* the weight the forward applied to v_j */
    float dpk = 0.0f;                        /* dO_i . v_j */
    for (int64_t d = 0; d < c->Dv; d++) {
        float g = cf_load(c->dout.data, c->dtype, ref_at4(&c->dout, b, qi, h, d));
        dpk += g * cf_load(c->v.data, c->dtype, ref_at4(&c->v, b, kj, hk, d));
        if (dv_row) dv_row[d] += pk * g;
    }
    float dp = keep ? dpk * keep_scale : 0.0f;
    float ds = p * (dp - delta);               /* d loss / d s */
    if (c->softcap > 0.0f) ds *= 1.0f - t * t; /* through s = cap * tanh(x / cap) */
    return ds * c->scale;                      /* through x = scale * q.k */
}

#endif
