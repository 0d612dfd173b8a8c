/* The validated form of the calls of the ops around attention (rotary, norm, KV cache, merge)
 * that backends receive. Built by src/api/{rotary,norm,kvcache,merge}_api.c; backends never
 * re-validate. */
#ifndef CFLASH_CORE_OPS_CALL_H
#define CFLASH_CORE_OPS_CALL_H

#include <stdint.h>

#include "core/attn_call.h"
#include "core/tensor.h"

/* ---- Rotary ---- */
typedef struct cf_rotary_call {
    cf_dtype dtype; /* of x and out */
    int device_type, device_id;
    int64_t B, S, H, D; /* varlen: B sequences, S = max_seqlen, views (1, total, H, D) */
    int64_t rd;         /* rotary dims (even, <= D) */
    int64_t nrot;       /* heads [0, nrot) rotate */
    int varlen;
    const int32_t* cu; /* [B + 1] (varlen) */
    cf_view x, out;    /* 4-D (b, s, h, d); out.data == x.data when in place */
    int inplace;
    cf_view cos, sin; /* 2-D (S_ro, rd / 2), dtype cs_dtype */
    int interleaved, conjugate;
    int64_t offset;         /* when offsets is NULL */
    const int32_t* offsets; /* [B] or NULL */
    int threads;
    void* stream;
} cf_rotary_call;

/* Rows of sequence b along dim 1 and the position offset. */
static inline void cf_rotary_seq(const cf_rotary_call* c, int64_t b, int64_t* s0, int64_t* len,
                                 int64_t* off) {
    *s0 = c->varlen ? c->cu[b] : 0;
    *len = c->varlen ? c->cu[b + 1] - c->cu[b] : c->S;
    *off = c->offsets ? c->offsets[b] : c->offset;
}

/* ---- Norm ---- */
typedef struct cf_norm_call {
    cf_dtype dtype; /* of x */
    int device_type, device_id;
    int64_t M, N;
    int rms;
    float eps, dropout_p;
    uint64_t seed, offset;
    /* Row tensors are 2-D views (M, N); vectors 1-D. data NULL = absent. */
    cf_view x, residual, weight, bias, out, residual_out, mean, rstd; /* forward */
    cf_view dy, dresidual_out, dx, dweight, dbias, dresidual;         /* backward (x = h) */
    int threads;
    void* stream;
} cf_norm_call;

/* Dropout keep of element (r, j) of a norm: the attention keying with the row in (b, i). */
#include "core/philox.h"
static inline int cf_norm_keep(const cf_norm_call* c, int64_t r, int64_t j) {
    return cf_dropout_keep(c->seed, c->offset, c->dropout_p, (uint64_t)r >> 32, 0,
                           (uint64_t)r & 0xffffffffu, (uint64_t)j);
}

/* ---- KV cache ---- */
typedef struct cf_kvcache_call {
    /* dtype, device, B, H, Hk, D, Dv, Sq (of q), q, out, lse, scale, masks, alibi, threads.
     * a.Sk is the largest Sk_b; a.k / a.v are unused. Varlen queries (cu_seqlens_q): a.cu_q
     * gives sequence b's q rows, a.Sq is max_seqlen_q, and q / out / lse are lifted views
     * (1, total_q, H, d) / (1, H, total_q) as in the attention call. */
    cf_attn_call a;
    cf_view kc, vc;         /* 4-D caches: (B_cache, S_cache, Hk, D) or (pages, page_size, Hk, D) */
    cf_view knew, vnew;     /* 4-D (B, Sn, Hk, D/Dv), or (1, total_new, Hk, D/Dv) with cu_knew; data
                               NULL when absent */
    int64_t Sn;             /* new rows per sequence; with cu_knew the longest */
    const int32_t* cu_knew; /* [B + 1] or NULL: sequence b's new rows (cu_seqlens_k_new) */
    int64_t total_new;      /* rows of k_new: B * Sn, or cu_knew[B] */
    /* The MLA latent cache: vc is a view of kc's first Dv dims (same data and strides); the
     * append writes kc rows only (vnew absent), and an int8 row's scale goes to vs too. */
    int latent;
    /* Quantized caches (cflash_kv_quant; kc / vc views then have the code dtype). fp8: value =
     * fp8(code) * descale, descale(b, hk) = d[b * bstride + hk * hstride] (NULL: 1); int8:
     * value = code * scale, scales in the 3-D views ks / vs indexed like the caches. */
    int quant;
    const float *kd, *vd;
    int64_t kd_bs, kd_hs, vd_bs, vd_hs;
    cf_view ks, vs;
    const int32_t* seqlens; /* [B] or NULL: then every batch has seqlen */
    int64_t seqlen;
    const int32_t* batch_idx;                /* [B] or NULL */
    const int32_t* leftpad;                  /* [B] or NULL */
    const int32_t* block_table;              /* (B, max_pages) with row stride bt_stride, or NULL */
    int64_t bt_stride, max_pages, page_size; /* page_size = S_cache when not paged */
    cf_view cos, sin;                        /* 2-D (S_ro, rd / 2); data NULL without rotary */
    int64_t rd;
    int interleaved;
    int num_splits; /* as given (0 = heuristic) */
} cf_kvcache_call;

/* New rows of batch b: k_new / v_new rows [*n0, *n0 + *sn) along dim 1. */
static inline void cf_kv_new_rows(const cf_kvcache_call* c, int64_t b, int64_t* n0, int64_t* sn) {
    *n0 = c->cu_knew ? c->cu_knew[b] : 0;
    *sn = c->cu_knew ? c->cu_knew[b + 1] - c->cu_knew[b] : c->Sn;
}

/* Query rows of batch b: q / out rows [*q0, *q0 + *sq) along dim 1. */
static inline void cf_kv_q_rows(const cf_kvcache_call* c, int64_t b, int64_t* q0, int64_t* sq) {
    *q0 = c->a.cu_q ? c->a.cu_q[b] : 0;
    *sq = c->a.cu_q ? c->a.cu_q[b + 1] - c->a.cu_q[b] : c->a.Sq;
}

/* The batch and new-row index of k_new row r (of total_new): a binary search of cu_knew. Returns
 * 0 for a row no sequence owns (cu_knew need not cover all total_new rows: rows before
 * cu_knew[0] or from cu_knew[B] on are not appended), else 1. */
static inline int cf_kv_new_row_of(const cf_kvcache_call* c, int64_t r, int64_t* b, int64_t* n) {
    if (!c->cu_knew) {
        *b = r / c->Sn, *n = r % c->Sn;
        return 1;
    }
    int64_t lo = 0, hi = c->a.B; /* the last b with cu_knew[b] <= r */
    while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (c->cu_knew[mid] <= r)
            lo = mid;
        else
            hi = mid;
    }
    *b = lo, *n = r - c->cu_knew[lo];
    return *n >= 0 && r < c->cu_knew[lo + 1];
}

/* Batch b: old length L, left pad P, keys Sk_b = L + Sn_b - P (the key j is at position P + j). */
static inline void cf_kv_seq(const cf_kvcache_call* c, int64_t b, int64_t* L, int64_t* P,
                             int64_t* sk) {
    int64_t n0, sn;
    cf_kv_new_rows(c, b, &n0, &sn);
    *L = c->seqlens ? c->seqlens[b] : c->seqlen;
    *P = c->leftpad ? c->leftpad[b] : 0;
    *sk = *L + sn - *P;
}

/* Element offset of cache row (position t, KV head h, dim 0) of batch b in view v (kc or vc). */
static inline int64_t cf_kv_row(const cf_kvcache_call* c, const cf_view* v, int64_t b, int64_t t,
                                int64_t h) {
    int64_t page, row;
    if (c->block_table) {
        page = c->block_table[b * c->bt_stride + t / c->page_size];
        row = t % c->page_size;
    } else {
        page = c->batch_idx ? c->batch_idx[b] : b;
        row = t;
    }
    return page * v->stride[0] + row * v->stride[1] + h * v->stride[2];
}

/* fp8 descale of batch b, KV head hk for K (is_v 0) or V; 1 when not given. */
static inline float cf_kv_descale(const cf_kvcache_call* c, int is_v, int64_t b, int64_t hk) {
    const float* d = is_v ? c->vd : c->kd;
    if (!d) return 1.0f;
    return is_v ? d[b * c->vd_bs + hk * c->vd_hs] : d[b * c->kd_bs + hk * c->kd_hs];
}

/* Whether q rows sit at successive positions (causal or windowed) or all at the old length. */
static inline int cf_kv_q_shifted(const cf_kvcache_call* c) {
    return c->a.causal || c->a.window_left >= 0 || c->a.window_right >= 0;
}
/* Rotary position of q row i of batch b (old length L). */
static inline int64_t cf_kv_qpos(const cf_kvcache_call* c, int64_t L, int64_t i) {
    return cf_kv_q_shifted(c) ? L + i : L;
}

/* ---- Merge ---- */
typedef struct cf_merge_call {
    int device_type, device_id;
    int64_t NS, B, Sq, H, Dv;
    cf_view op;  /* 5-D (s, b, i, h, d) */
    cf_view lp;  /* 4-D (s, b, h, i) fp32 */
    cf_view out; /* 4-D (b, i, h, d) */
    cf_view lse; /* 3-D (b, h, i) fp32; data NULL when absent */
    int threads;
    void* stream;
} cf_merge_call;

#endif
