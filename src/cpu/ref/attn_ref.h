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

/* Rows whose |lse| reaches this have P formed as exp((s - lse) - r) in the backward, r = log of
 * the sum over the keys (and the sink) of exp(s - lse) recomputed there, when r is lse's own
 * rounding (cf_attn_lse_residue): that rounding alone is coarser than 2^-14 there, and where every
 * score rounds to the same value (a row all at finfo.min, as transformers masks a left-padded row)
 * lse = that value, log n lost, exp(s - lse) = 1 per key instead of 1 / n. */
#define CF_ATTN_LSE_FAR 1024.0f

static inline int cf_attn_lse_far(float lse) {
    return isfinite(lse) && fabsf(lse) >= CF_ATTN_LSE_FAR;
}

/* r for a row of far lse from its keys' max m and sum l of exp(s - m) in this call, or 0 when
 * m + log l is not lse up to lse's own rounding (|r| > one ulp of lse): the lse then covers more
 * keys than this call's (ring attention's blocks, python/cflash/distributed, pass the lse of every
 * block), and exp(s - lse) is the weight wanted, to the rounding it always had. */
static inline float cf_attn_lse_residue(float lse, float m, double l) {
    const double r = (double)m - lse + log(l);
    const float a = fabsf(lse);
    return l > 0.0 && fabs(r) <= (double)(nextafterf(a, INFINITY) - a) ? (float)r : 0.0f;
}

/* The score of one pair (query i, key j within the sequence) of head h, sequence b (query row qi
 * in the views, keys from row k0, through the block table when paged) as the reference forms it:
 * scaled, soft-capped (*t: the tanh, 0 without), ALiBi-biased, issue 13's bias added, in *s.
 * Returns 0 when issue 13's masks hide the pair (attn_mask, block-sparse, a bias of -inf). */
static inline int ref_pair_score(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi,
                                 int64_t k0, int64_t i, int64_t j, int64_t sq, int64_t sk, float* s,
                                 float* t) {
    const int64_t hk = h / (c->H / c->Hk), ko = cf_attn_kv_off(c, &c->k, b, k0, j, hk);
    float dot = 0.0f;
    for (int64_t d = 0; d < c->D; d++)
        dot += cf_load(c->q.data, c->dtype, ref_at4(&c->q, b, qi, h, d)) *
               cf_load(c->k.data, c->dtype, ko + d);
    const float x = c->scale * dot;
    *t = c->softcap > 0.0f ? tanhf(x / c->softcap) : 0.0f;
    *s = cf_attn_score(c, x, cf_attn_slope(c, b, h), i, j, sq, sk);
    return !cf_attn_has_extra(c) || (*s = cf_attn_extra(c, b, h, i, j, *s)) != -INFINITY;
}

/* Folds score x into a row's running max *m and sum *l of exp(s - *m) (-inf: nothing). */
static inline void ref_fold(float x, float* m, double* l) {
    if (x == -INFINITY) return;
    if (x > *m) {
        *l = *m == -INFINITY ? 0.0 : *l * exp((double)*m - x);
        *m = x;
    }
    *l += exp((double)x - *m);
}

/* The r of row (b, h, qi) (see CF_ATTN_LSE_FAR) from its scores over keys [lo, hi) and the sink,
 * folded by ref_fold (cf_attn_lse_residue); 0 for a row whose lse is not far. */
static inline float ref_row_fix(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi, int64_t k0,
                                int64_t i, int64_t sq, int64_t sk, float lse) {
    if (!cf_attn_lse_far(lse)) return 0.0f;
    int64_t lo, hi;
    cf_attn_key_range(c, i, sq, sk, &lo, &hi);
    float m = -INFINITY, s, t;
    double l = 0.0;
    for (int64_t j = lo; j < hi; j++)
        if (ref_pair_score(c, b, h, qi, k0, i, j, sq, sk, &s, &t)) ref_fold(s, &m, &l);
    ref_fold(cf_attn_sink(c, h), &m, &l);
    return cf_attn_lse_residue(lse, m, l);
}

/* The gradient terms of one visible pair (as ref_pair_score) with the row's lse, its r (see
 * CF_ATTN_LSE_FAR; 0: none) and delta = rowsum(dO * O), as the reference backward computes them.
 * Returns 0 when issue 13's masks hide the pair; else adds p * keep * dO to dv_row (Dv values;
 * NULL = skip) and sets *ds_s = dL/d(score) (what dbias receives) and *ds = the same scaled back to
 * q.k (dq += ds k, dk += ds q). A dropped weight is 0, and 0 times a NaN is NaN, as in a naive
 * dropout(P) V. The tiled backward uses it for the rare blocks it sums pair by pair. */
static inline int ref_pair_grad(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi, int64_t k0,
                                int64_t i, int64_t j, int64_t sq, int64_t sk, float lse, float fix,
                                float delta, float* dv_row, float* ds_s, float* ds) {
    const int64_t hk = h / (c->H / c->Hk);
    const float keep_scale = 1.0f / (1.0f - c->dropout_p);
    const int64_t vo = cf_attn_kv_off(c, &c->v, b, k0, j, hk);
    float s, t;
    if (!ref_pair_score(c, b, h, qi, k0, i, j, sq, sk, &s, &t)) return 0;
    float p = expf((s - lse) - fix);
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
