/* The validated form of an attention call that every backend receives: views, sizes, and the
 * parameters with defaults resolved. Built by src/api/attn_api.c; backends never re-validate. */
#ifndef CFLASH_CORE_ATTN_CALL_H
#define CFLASH_CORE_ATTN_CALL_H

#include <math.h>
#include <stdint.h>

#include "core/checked.h"
#include "core/tensor.h"

/* Block offsets keep positions below this (the dropout counter's row and column are 32 bits). */
#define CF_ATTN_MAX_POS ((int64_t)1 << 32)

typedef struct cf_attn_call {
    cf_dtype dtype; /* of q, k, v, out (and dout, dq, dk, dv) */
    int device_type, device_id;
    int64_t B, H, Hk, D, Dv;
    int64_t Sq, Sk;      /* batch mode: the lengths; varlen: max_seqlen_q / max_seqlen_k */
    int varlen;          /* 1: cu_q / cu_k give per-sequence rows; batch strides are 0 */
    const int32_t* cu_q; /* [B + 1] host pointers (varlen only) */
    const int32_t* cu_k;
    int64_t total_q, total_k; /* varlen: rows of q and k */

    /* Views always have 4 dims (b, s, h, d); varlen views have shape[0] = 1 and stride[0] = 0.
     * lse view: 3 dims (b, h, s); varlen lse is (1, H, total_q). data NULL = absent. */
    cf_view q, k, v, out, lse;
    cf_view dout, dq, dk, dv; /* backward only */

    float scale; /* resolved: never 0 */
    int causal;
    int64_t window_left, window_right; /* causal folded in: window_right = 0 when causal */
    int64_t q_offset, k_offset;        /* positions of q's / k's row 0 (cflash_attn_params) */
    float softcap;
    const float* alibi;    /* NULL, or fp32 slopes on the call's device:
                              slope(b, h) = alibi[b * alibi_bstride + h] */
    int64_t alibi_bstride; /* 0 for [H], H for [B, H] */
    float dropout_p;
    uint64_t seed, offset;
    int deterministic;

    int threads;             /* resolved: >= 1 */
    void* stream;            /* CUstream for CUDA backends */
    const int32_t* cu_q_dev; /* varlen with cu_seqlens on the GPU: the device pointers (cu_q and */
    const int32_t* cu_k_dev; /* cu_k then hold host copies); NULL when given in host memory */
} cf_attn_call;

/* Rows of sequence b: q rows [*q0, *q0 + *sq), k rows [*k0, *k0 + *sk) along dim 1 of the views
 * (batch mode: q0 = k0 = 0 and the batch stride selects b). */
static inline void cf_attn_seq(const cf_attn_call* c, int64_t b, int64_t* q0, int64_t* sq,
                               int64_t* k0, int64_t* sk) {
    if (c->varlen) {
        *q0 = c->cu_q[b];
        *sq = c->cu_q[b + 1] - c->cu_q[b];
        *k0 = c->cu_k[b];
        *sk = c->cu_k[b + 1] - c->cu_k[b];
    } else {
        *q0 = 0;
        *sq = c->Sq;
        *k0 = 0;
        *sk = c->Sk;
    }
}

/* The key index on the diagonal of query row i (bottom-right alignment, shifted by the block
 * offsets; |offsets| <= 2^32 is checked, so nothing here overflows). */
static inline int64_t cf_attn_diag(const cf_attn_call* c, int64_t i, int64_t sq, int64_t sk) {
    return i + sk - sq + c->q_offset - c->k_offset;
}

/* Visible key range of query row i (0-based within its sequence) of a sequence with lengths
 * sq, sk: keys [*lo, *hi) (clamped to [0, sk]; empty when *lo >= *hi). Windows are caller
 * int64s of any size: each bound is compared with the distance it would move, never added to
 * the diagonal unchecked (a window near INT64_MAX is the unbounded one). */
static inline void cf_attn_key_range(const cf_attn_call* c, int64_t i, int64_t sq, int64_t sk,
                                     int64_t* lo, int64_t* hi) {
    const int64_t diag = cf_attn_diag(c, i, sq, sk);
    int64_t l = 0, h = sk, far;
    if (c->window_left >= 0 && c->window_left < diag) l = diag - c->window_left;
    /* diag + window_right + 1 < sk, where the sum fits (else the window reaches past every key) */
    if (c->window_right >= 0 && !cf_add_i64(diag, c->window_right, &far) && far < sk - 1)
        h = far + 1;
    if (l > sk) l = sk; /* a block's rows can lie wholly past its keys */
    *lo = l;
    *hi = h > l ? h : l;
}

/* ALiBi slope of (b, h), 0 when off. */
static inline float cf_attn_slope(const cf_attn_call* c, int64_t b, int64_t h) {
    return c->alibi ? c->alibi[b * c->alibi_bstride + h] : 0.0f;
}

/* The score transform every backend applies, in fp32: scaled score x (already scale * q.k) ->
 * softcap -> ALiBi bias for query i, key j of a sequence with lengths sq, sk. */
static inline float cf_attn_score(const cf_attn_call* c, float x, float slope, int64_t i, int64_t j,
                                  int64_t sq, int64_t sk) {
    if (c->softcap > 0.0f) x = c->softcap * tanhf(x / c->softcap);
    if (slope != 0.0f) {
        int64_t d = cf_attn_diag(c, i, sq, sk) - j;
        x -= slope * (float)(d < 0 ? -d : d);
    }
    return x;
}

#endif
