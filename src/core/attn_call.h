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
    int32_t* cu_host[2]; /* those host copies (q, k), the call's own: its entry point frees them */

    /* -- A (issue 13): sinks, bias / mask, block-sparse mask, chunked attention -- */
    const float* sinks; /* NULL or fp32 [H], contiguous, on the call's device */
    float* dsinks;      /* backward: NULL or fp32 [H] */
    /* 4 dims (b, h, i, j), data NULL = absent; broadcast dims (size 1) have stride 0, so element
     * (b, h, i, j) is at b * stride[0] + h * stride[1] + ... for every b < B, h < H. */
    cf_view bias;  /* fp32 or the call's dtype */
    cf_view mask;  /* uint8 */
    cf_view dbias; /* backward: like bias, its own dtype; dims of size 1 sum over b / h */
    /* Block-sparse mask: num (b, h, qb), idx (b, h, qb, t), int32, broadcast dims stride 0. */
    cf_view bs_num, bs_idx;
    int64_t block_q, block_k;
    int64_t chunk; /* attention_chunk, 0 = off */

    /* Paged K/V and used lengths (cflash_attn_params' block_table, seqused_q, seqused_k), host
     * pointers. Paged: k, v (dk, dv) views are (num_pages, page_size, Hk, d), key t of sequence b
     * at page block_table[b * bt_stride + t / page_size]; cu_k may then be NULL. */
    const int32_t* block_table;
    int64_t bt_stride, page_size;
    const int32_t *seqused_q, *seqused_k; /* [B] or NULL */

    /* Backward, set by the CPU driver (attn_tiled_bwd.c) on its own copy of the call: per query
     * row, laid out as its rowsum(dO * O) buffer, r of the rows whose |lse| is far (see
     * CF_ATTN_LSE_FAR in cpu/ref/attn_ref.h: P = exp((s - lse) - r)), 0 elsewhere; NULL: none. */
    const float* lse_fix;
} cf_attn_call;

/* Rows of sequence b: q rows [*q0, *q0 + *sq), k rows [*k0, *k0 + *sk) along dim 1 of the views
 * (batch mode: q0 = k0 = 0 and the batch stride selects b). */
static inline void cf_attn_seq(const cf_attn_call* c, int64_t b, int64_t* q0, int64_t* sq,
                               int64_t* k0, int64_t* sk) {
    if (c->varlen) {
        *q0 = c->cu_q[b];
        *sq = c->cu_q[b + 1] - c->cu_q[b];
        *k0 = c->cu_k ? c->cu_k[b] : 0;
        *sk = c->cu_k ? c->cu_k[b + 1] - c->cu_k[b] : 0;
    } else {
        *q0 = 0;
        *sq = c->Sq;
        *k0 = 0;
        *sk = c->Sk;
    }
    if (c->block_table) *k0 = 0; /* keys are found through the block table */
    if (c->seqused_q) *sq = c->seqused_q[b];
    if (c->seqused_k) *sk = c->seqused_k[b];
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
    if (c->chunk > 0) {
        /* The query's position P = diag + k_offset lies r = P mod chunk (floor) into its chunk:
         * keys [diag - r, diag - r + chunk). Compared before added: chunk may be near 2^63. */
        int64_t r = (diag + c->k_offset) % c->chunk;
        if (r < 0) r += c->chunk;
        if (r < diag && diag - r > l) l = diag - r;
        if (c->chunk - r < h - diag) h = diag + (c->chunk - r);
    }
    if (l > sk) l = sk; /* a block's rows can lie wholly past its keys */
    *lo = l;
    *hi = h > l ? h : l;
}

/* Element offset of key j of sequence b (first row k0, from cf_attn_seq), head h, in a key-side
 * view v (k, v, dk or dv): through the block table when paged. */
static inline int64_t cf_attn_kv_off(const cf_attn_call* c, const cf_view* v, int64_t b, int64_t k0,
                                     int64_t j, int64_t h) {
    if (c->block_table) {
        const int64_t page = c->block_table[b * c->bt_stride + j / c->page_size];
        return page * v->stride[0] + (j % c->page_size) * v->stride[1] + h * v->stride[2];
    }
    return b * v->stride[0] + (k0 + j) * v->stride[1] + h * v->stride[2];
}

/* ALiBi slope of (b, h), 0 when off. */
static inline float cf_attn_slope(const cf_attn_call* c, int64_t b, int64_t h) {
    return c->alibi ? c->alibi[b * c->alibi_bstride + h] : 0.0f;
}

/* The ALiBi term cf_attn_score subtracts: slope * |diag(i) - j|. */
static inline float cf_attn_alibi(const cf_attn_call* c, float slope, int64_t i, int64_t j,
                                  int64_t sq, int64_t sk) {
    const int64_t d = cf_attn_diag(c, i, sq, sk) - j;
    return slope * (float)(d < 0 ? -d : d);
}

/* x[k * cs] -= cf_attn_alibi's term for distance d0 + step * k, k < n (step 1 or -1): a run of
 * keys of one row (step -1) or of rows of one key (step 1). Where every distance is below 2^24 in
 * magnitude, |d| is formed in fp32 (exact there, so the same values), a loop that vectorises on
 * the baseline ISA; else in int64. */
static inline void cf_attn_alibi_run(float* x, int64_t cs, int64_t n, float slope, int64_t d0,
                                     int step) {
    const int64_t lim = (int64_t)1 << 24, d1 = d0 + step * (n - 1);
    if (cs == 1 && n < lim && d0 > -lim && d0 < lim && d1 > -lim && d1 < lim) {
        const float b = (float)d0, st = (float)step;
        for (int32_t k = 0; k < (int32_t)n; k++)
            x[k] -= slope * fabsf(b + st * (float)k);
        return;
    }
    for (int64_t k = 0; k < n; k++) {
        const int64_t d = d0 + step * k;
        x[k * cs] -= slope * (float)(d < 0 ? -d : d);
    }
}

/* The fp32 tanh of the vectorised softcap kernels (attn_simd.h v_tanh, ops_fast_common.h ftanh):
 * tanh(y) = y + y^3 P(y^2) for |y| < CF_TANH_SMALL (P of degree 5 fitted for relative error,
 * < 1 ulp there), else (1 - e) / (1 + e), e = exp(-2 |y|), with y's sign. */
#define CF_TANH_SMALL 0.625f
#define CF_TANH_P5 2.142960904e-03f
#define CF_TANH_P4 -8.177396841e-03f
#define CF_TANH_P3 2.170070261e-02f
#define CF_TANH_P2 -5.394676328e-02f
#define CF_TANH_P1 1.333320588e-01f
#define CF_TANH_P0 -3.333333135e-01f

/* The score transform every backend applies, in fp32: scaled score x (already scale * q.k) ->
 * softcap -> ALiBi bias for query i, key j of a sequence with lengths sq, sk. */
static inline float cf_attn_score(const cf_attn_call* c, float x, float slope, int64_t i, int64_t j,
                                  int64_t sq, int64_t sk) {
    if (c->softcap > 0.0f) x = c->softcap * tanhf(x / c->softcap);
    if (slope != 0.0f) x -= cf_attn_alibi(c, slope, i, j, sq, sk);
    return x;
}

/* ---- Issue 13 (A): sinks, bias / mask, block-sparse ------------------------------------------ */

/* The sink logit of head h (-inf = none). */
static inline float cf_attn_sink(const cf_attn_call* c, int64_t h) {
    return c->sinks ? c->sinks[h] : -INFINITY;
}

/* Whether the call has per-pair masks or a bias beyond the key ranges of cf_attn_key_range. */
static inline int cf_attn_has_extra(const cf_attn_call* c) {
    return c->bias.data != NULL || c->mask.data != NULL || c->bs_num.data != NULL;
}

static inline int64_t cf_attn_at4(const cf_view* v, int64_t b, int64_t h, int64_t i, int64_t j) {
    return b * v->stride[0] + h * v->stride[1] + i * v->stride[2] + j * v->stride[3];
}

/* Whether key block kb (of block_k keys) is listed for query block qb of (b, h). */
static inline int cf_attn_bs_listed(const cf_attn_call* c, int64_t b, int64_t h, int64_t qb,
                                    int64_t kb) {
    const int32_t* num = (const int32_t*)c->bs_num.data;
    const int32_t* idx = (const int32_t*)c->bs_idx.data;
    const int64_t n =
        num[b * c->bs_num.stride[0] + h * c->bs_num.stride[1] + qb * c->bs_num.stride[2]];
    const int32_t* row = idx + cf_attn_at4(&c->bs_idx, b, h, qb, 0);
    for (int64_t t = 0; t < n; t++)
        if (row[t * c->bs_idx.stride[3]] == kb) return 1;
    return 0;
}

/* The score x of query i, key j (within the sequence; b the sequence, h the query head) after
 * the extra masks and the bias: x + bias, or -inf where attn_mask, the block-sparse mask or a
 * bias of -inf hide the pair. Positions (q_offset, k_offset) place the block-sparse blocks; bias
 * and mask are indexed by the call's rows. */
static inline float cf_attn_extra(const cf_attn_call* c, int64_t b, int64_t h, int64_t i, int64_t j,
                                  float x) {
    if (c->mask.data && !((const uint8_t*)c->mask.data)[cf_attn_at4(&c->mask, b, h, i, j)])
        return -INFINITY;
    if (c->bs_num.data &&
        !cf_attn_bs_listed(c, b, h, (i + c->q_offset) / c->block_q, (j + c->k_offset) / c->block_k))
        return -INFINITY;
    if (c->bias.data) {
        const float y = cf_load(c->bias.data, c->bias.dtype, cf_attn_at4(&c->bias, b, h, i, j));
        x = y == -INFINITY ? -INFINITY : x + y; /* -inf masks, whatever x is (NaN included) */
    }
    return x;
}

/* The backward's gradients of rows a call does not use (seqused_q / seqused_k, pages no sequence
 * uses): dq rows of queries past sq_b and dk / dv rows of keys past sk_b are set to 0; with a
 * block table every row of dk and dv is (the used ones are then overwritten). Backends call it
 * before their work. */
static inline void cf_attn_zero_unused(const cf_attn_call* c) {
    if (!c->seqused_q && !c->seqused_k && !c->block_table) return;
    const cf_view* kv[2] = {&c->dk, &c->dv};
    if (c->block_table)
        for (int t = 0; t < 2; t++) {
            const cf_view* v = kv[t];
            for (int64_t p = 0; p < v->shape[0]; p++)
                for (int64_t r = 0; r < v->shape[1]; r++)
                    for (int64_t h = 0; h < v->shape[2]; h++)
                        for (int64_t d = 0; d < v->shape[3]; d++)
                            cf_store(v->data, v->dtype,
                                     p * v->stride[0] + r * v->stride[1] + h * v->stride[2] + d,
                                     0.0f);
        }
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        const int64_t nq = c->varlen ? c->cu_q[b + 1] - c->cu_q[b] : c->Sq;
        for (int64_t i = sq; i < nq; i++)
            for (int64_t h = 0; h < c->H; h++)
                for (int64_t d = 0; d < c->D; d++)
                    cf_store(c->dq.data, c->dtype,
                             b * c->dq.stride[0] + (q0 + i) * c->dq.stride[1] +
                                 h * c->dq.stride[2] + d,
                             0.0f);
        if (c->block_table) continue;
        const int64_t nk = c->varlen ? c->cu_k[b + 1] - c->cu_k[b] : c->Sk;
        for (int64_t j = sk; j < nk; j++)
            for (int t = 0; t < 2; t++)
                for (int64_t h = 0; h < c->Hk; h++)
                    for (int64_t d = 0; d < kv[t]->shape[3]; d++)
                        cf_store(kv[t]->data, c->dtype, cf_attn_kv_off(c, kv[t], b, k0, j, h) + d,
                                 0.0f);
    }
}

#endif
