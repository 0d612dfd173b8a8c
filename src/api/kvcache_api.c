/* KV-cache attention entry point (flash_attn_with_kvcache): validate every argument, including
 * each sequence's lengths against the cache and every page it touches, before any work (the call
 * writes the caches in place, so nothing may be written on bad input); then dispatch. */
#include <math.h>
#include <string.h>

#include "api/attn_api.h"
#include "api/context.h"
#include "api/ops_api.h"
#include "core/checked.h"
#include "core/status.h"
#include "core/threads.h"

#define INVALID CFLASH_ERR_INVALID_ARGUMENT

void cflash_kvcache_params_init(cflash_kvcache_params* kp) {
    if (!kp) return;
    memset(kp, 0, sizeof *kp);
    kp->rotary_interleaved = 1;
    kp->cache_seqlen = -1;
}

/* The attention parameters, as attention checks and resolves them, less dropout and block
 * offsets. */
static cflash_status check_attn(cf_attn_call* a, const cflash_attn_params* p) {
    CFLASH_RETURN_IF(p->dropout_p != 0.0f, INVALID,
                     "dropout_p: %g, expected 0 (the KV-cache path has no dropout)",
                     (double)p->dropout_p);
    CFLASH_RETURN_IF(p->q_offset != 0 || p->k_offset != 0, INVALID,
                     "q_offset, k_offset: %lld, %lld, expected 0 (KV-cache positions come from "
                     "cache_seqlens)",
                     (long long)p->q_offset, (long long)p->k_offset);
    CFLASH_FORWARD_IF_ERROR(cf_attn_check_params(p));
    return cf_attn_apply_params(a, p);
}

static cflash_status same_as_q(const cf_view* v, const char* name, const cf_view* q) {
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(v, name, q, "q"));
    CFLASH_RETURN_IF(v->dtype != q->dtype, INVALID, "%s: dtype %s, expected %s (the dtype of q)",
                     name, cf_dtype_name(v->dtype), cf_dtype_name(q->dtype));
    return CFLASH_OK;
}

static cflash_status kvcache_fwd(cflash_context* ctx, const cflash_attn_params* p,
                                 const cflash_kvcache_params* kp, const DLTensor* q,
                                 DLTensor* k_cache, DLTensor* v_cache, DLTensor* out,
                                 DLTensor* lse) {
    cflash_attn_params pd;
    cflash_kvcache_params kd;
    if (!p) cflash_attn_params_init(&pd), p = &pd;
    if (!kp) cflash_kvcache_params_init(&kd), kp = &kd;
    cf_kvcache_call c;
    memset(&c, 0, sizeof c);
    cf_attn_call* a = &c.a;

    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&a->q, q, "q", 4, NULL, "(B, Sq, H, D)"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(&a->q, "q", NULL, NULL));
    a->B = a->q.shape[0], a->Sq = a->q.shape[1], a->H = a->q.shape[2], a->D = a->q.shape[3];
    CFLASH_RETURN_IF(a->H < 1 || a->D < 1, INVALID, "q: H = %lld, D = %lld, expected both >= 1",
                     (long long)a->H, (long long)a->D);
    a->dtype = a->q.dtype;
    a->device_type = a->q.device_type;
    a->device_id = a->q.device_id;
    int paged = kp->block_table != NULL;
    const char* kl = paged ? "(num_pages, page_size, Hk, D)" : "(B_cache, S_cache, Hk, D)";
    const char* vl = paged ? "(num_pages, page_size, Hk, Dv)" : "(B_cache, S_cache, Hk, Dv)";
    const int64_t wk[4] = {-1, -1, -1, a->D};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.kc, k_cache, "k_cache", 4, wk, kl));
    CFLASH_FORWARD_IF_ERROR(same_as_q(&c.kc, "k_cache", &a->q));
    a->Hk = c.kc.shape[2];
    CFLASH_RETURN_IF(a->Hk < 1 || a->H % a->Hk != 0, INVALID,
                     "k_cache: %lld heads, expected a divisor of the %lld heads of q (GQA/MQA)",
                     (long long)a->Hk, (long long)a->H);
    const int64_t wv[4] = {c.kc.shape[0], c.kc.shape[1], a->Hk, -1};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.vc, v_cache, "v_cache", 4, wv, vl));
    CFLASH_FORWARD_IF_ERROR(same_as_q(&c.vc, "v_cache", &a->q));
    a->Dv = c.vc.shape[3];
    CFLASH_RETURN_IF(a->Dv < 1, INVALID, "v_cache: head dim Dv = 0, expected >= 1");
    CFLASH_FORWARD_IF_ERROR(check_attn(a, p));

    /* Where each sequence lives. */
    int64_t capacity;
    if (paged) {
        CFLASH_RETURN_IF(kp->cache_batch_idx, INVALID,
                         "cache_batch_idx: given with block_table, expected NULL (a paged cache "
                         "selects pages per sequence through block_table)");
        cf_view bt;
        const int64_t wb[2] = {a->B, -1};
        CFLASH_FORWARD_IF_ERROR(
            cf_ops_shape(&bt, kp->block_table, "block_table", 2, wb, "(B, max_pages)"));
        CFLASH_RETURN_IF(bt.dtype != CF_I32, INVALID, "block_table: dtype %s, expected int32",
                         cf_dtype_name(bt.dtype));
        CFLASH_RETURN_IF(bt.device_type != kDLCPU && bt.device_type != kDLCUDAHost, INVALID,
                         "block_table: on %s, expected host memory (cpu or cuda_host)",
                         cf_device_name(bt.device_type));
        CFLASH_RETURN_IF(bt.shape[1] > 1 && bt.stride[1] != 1, INVALID,
                         "block_table: last dimension has stride %lld, expected 1",
                         (long long)bt.stride[1]);
        c.block_table = bt.data;
        c.bt_stride = bt.stride[0];
        c.max_pages = bt.shape[1];
        c.page_size = c.kc.shape[1];
        CFLASH_RETURN_IF(c.page_size < 1, INVALID, "k_cache: page_size (dim 1) = 0, expected >= 1");
        /* more positions than int64 holds: no length can reach them anyway */
        if (cf_mul_i64(c.max_pages, c.page_size, &capacity)) capacity = INT64_MAX;
    } else {
        c.page_size = c.kc.shape[1];
        capacity = c.kc.shape[1];
        if (kp->cache_batch_idx) {
            cf_view bi;
            CFLASH_FORWARD_IF_ERROR(
                cf_ops_index(&bi, kp->cache_batch_idx, "cache_batch_idx", a->B));
            c.batch_idx = bi.data;
            for (int64_t b = 0; b < a->B; b++)
                CFLASH_RETURN_IF(c.batch_idx[b] < 0 || c.batch_idx[b] >= c.kc.shape[0], INVALID,
                                 "cache_batch_idx[%lld]: %d, expected 0 <= index < B_cache = %lld",
                                 (long long)b, c.batch_idx[b], (long long)c.kc.shape[0]);
        } else {
            CFLASH_RETURN_IF(c.kc.shape[0] < a->B, INVALID,
                             "k_cache: B_cache = %lld rows for B = %lld sequences; expected "
                             "B_cache >= B (or cache_batch_idx)",
                             (long long)c.kc.shape[0], (long long)a->B);
        }
    }

    /* New keys and values. */
    CFLASH_RETURN_IF(!kp->k_new != !kp->v_new, INVALID,
                     "%s: is NULL but %s is given, expected both or neither",
                     kp->k_new ? "v_new" : "k_new", kp->k_new ? "k_new" : "v_new");
    if (kp->k_new) {
        const int64_t wn[4] = {a->B, -1, a->Hk, a->D};
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.knew, kp->k_new, "k_new", 4, wn, "(B, Sn, Hk, D)"));
        CFLASH_FORWARD_IF_ERROR(same_as_q(&c.knew, "k_new", &a->q));
        c.Sn = c.knew.shape[1];
        const int64_t wvn[4] = {a->B, c.Sn, a->Hk, a->Dv};
        CFLASH_FORWARD_IF_ERROR(
            cf_ops_shape(&c.vnew, kp->v_new, "v_new", 4, wvn, "(B, Sn, Hk, Dv)"));
        CFLASH_FORWARD_IF_ERROR(same_as_q(&c.vnew, "v_new", &a->q));
        /* The caches are written in place: a broadcast dim would give rows one address. */
        CFLASH_FORWARD_IF_ERROR(cf_check_output(k_cache, "k_cache"));
        CFLASH_FORWARD_IF_ERROR(cf_check_output(v_cache, "v_cache"));
    }

    /* Lengths. */
    if (kp->cache_seqlens) {
        cf_view sl;
        CFLASH_FORWARD_IF_ERROR(cf_ops_index(&sl, kp->cache_seqlens, "cache_seqlens", a->B));
        c.seqlens = sl.data;
    } else {
        CFLASH_RETURN_IF(kp->cache_seqlen < -1, INVALID,
                         "cache_seqlen: %lld, expected -1 (the whole cache) or >= 0",
                         (long long)kp->cache_seqlen);
        c.seqlen = kp->cache_seqlen < 0 ? capacity : kp->cache_seqlen;
    }
    if (kp->cache_leftpad) {
        cf_view lp;
        CFLASH_FORWARD_IF_ERROR(cf_ops_index(&lp, kp->cache_leftpad, "cache_leftpad", a->B));
        c.leftpad = lp.data;
    }
    int64_t num_pages = c.kc.shape[0], max_sk = 0, max_pos = -1;
    /* Per batch; once when nothing differs between batches (B may be huge when q is empty). */
    const int64_t nchk = c.seqlens || c.leftpad || c.block_table ? a->B : a->B > 0;
    for (int64_t b = 0; b < nchk; b++) {
        /* (cf_kv_seq would add L + Sn before it is checked) */
        const int64_t L = c.seqlens ? c.seqlens[b] : c.seqlen, P = c.leftpad ? c.leftpad[b] : 0;
        const char* ln = c.seqlens ? "cache_seqlens" : "cache_seqlen";
        CFLASH_RETURN_IF(L < 0, INVALID, "%s[%lld]: %lld, expected >= 0", ln, (long long)b,
                         (long long)L);
        int64_t end; /* one past the last position written: L + Sn */
        CFLASH_RETURN_IF(cf_add_i64(L, c.Sn, &end), INVALID,
                         "%s[%lld]: %lld + %lld new rows overflows int64; expected at most the "
                         "cache's %lld positions",
                         ln, (long long)b, (long long)L, (long long)c.Sn, (long long)capacity);
        CFLASH_RETURN_IF(end > capacity, INVALID,
                         "%s[%lld]: %lld + %lld new rows = %lld exceeds the cache's %lld "
                         "positions%s",
                         ln, (long long)b, (long long)L, (long long)c.Sn, (long long)end,
                         (long long)capacity,
                         paged ? " (max_pages * page_size addressable through block_table)"
                               : " (S_cache)");
        CFLASH_RETURN_IF(P < 0 || P > L, INVALID,
                         "cache_leftpad[%lld]: %lld, expected 0 <= leftpad <= cache length %lld",
                         (long long)b, (long long)P, (long long)L);
        if (end - P > max_sk) max_sk = end - P;
        if (paged && end > P)
            for (int64_t g = P / c.page_size; g <= (end - 1) / c.page_size; g++) {
                int32_t pg = c.block_table[b * c.bt_stride + g];
                CFLASH_RETURN_IF(pg < 0 || pg >= num_pages, INVALID,
                                 "block_table[%lld, %lld]: %d, expected a page index in [0, %lld)",
                                 (long long)b, (long long)g, pg, (long long)num_pages);
            }
        /* the last rotary position: new key L + Sn - 1, query L + Sq - 1 (or L) */
        int64_t need = end - 1, qlast = L;
        if (a->Sq > 0 && cf_kv_q_shifted(&c) && cf_add_i64(L, a->Sq - 1, &qlast)) qlast = INT64_MAX;
        if (a->Sq > 0 && qlast > need) need = qlast;
        if (need > max_pos) max_pos = need;
    }
    a->Sk = max_sk;

    /* Rotary. */
    CFLASH_RETURN_IF(!kp->rotary_cos != !kp->rotary_sin, INVALID,
                     "%s: is NULL but %s is given, expected both or neither",
                     kp->rotary_cos ? "rotary_sin" : "rotary_cos",
                     kp->rotary_cos ? "rotary_cos" : "rotary_sin");
    if (kp->rotary_cos) {
        const int64_t any2[2] = {-1, -1};
        CFLASH_FORWARD_IF_ERROR(
            cf_ops_shape(&c.cos, kp->rotary_cos, "rotary_cos", 2, any2, "(S_ro, rotary_dim / 2)"));
        CFLASH_FORWARD_IF_ERROR(cf_ops_float(&c.cos, "rotary_cos", &a->q, "q"));
        CFLASH_FORWARD_IF_ERROR(
            cf_ops_dtype_in(&c.cos, "rotary_cos", a->dtype, "float32 or the dtype of q"));
        const int64_t ws[2] = {c.cos.shape[0], c.cos.shape[1]};
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.sin, kp->rotary_sin, "rotary_sin", 2, ws,
                                             "(S_ro, rotary_dim / 2), the shape of rotary_cos"));
        CFLASH_FORWARD_IF_ERROR(cf_ops_float(&c.sin, "rotary_sin", &a->q, "q"));
        CFLASH_RETURN_IF(c.sin.dtype != c.cos.dtype, INVALID,
                         "rotary_sin: dtype %s, expected %s (that of rotary_cos)",
                         cf_dtype_name(c.sin.dtype), cf_dtype_name(c.cos.dtype));
        if (cf_mul_i64(2, c.cos.shape[1], &c.rd)) c.rd = INT64_MAX; /* (fails the check below) */
        CFLASH_RETURN_IF(c.rd < 2 || c.rd > a->D, INVALID,
                         "rotary_cos: rotary_dim = %lld, expected 2 <= rotary_dim <= head dim %lld",
                         (long long)c.rd, (long long)a->D);
        CFLASH_RETURN_IF(max_pos >= c.cos.shape[0], INVALID,
                         "rotary_cos: %lld rows, but position %lld is used; expected S_ro > %lld",
                         (long long)c.cos.shape[0], (long long)max_pos, (long long)max_pos);
        c.interleaved = kp->rotary_interleaved != 0;
    }
    CFLASH_RETURN_IF(kp->num_splits < 0, INVALID, "num_splits: %d, expected >= 0 (0 = heuristic)",
                     kp->num_splits);
    c.num_splits = kp->num_splits;

    const int64_t wo[4] = {a->B, a->Sq, a->H, a->Dv};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&a->out, out, "out", 4, wo, "(B, Sq, H, Dv)"));
    CFLASH_FORWARD_IF_ERROR(same_as_q(&a->out, "out", &a->q));
    if (lse) {
        const int64_t wl[3] = {a->B, a->H, a->Sq};
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&a->lse, lse, "lse", 3, wl, "(B, H, Sq)"));
        CFLASH_RETURN_IF(a->lse.dtype != CF_F32, INVALID, "lse: dtype %s, expected float32",
                         cf_dtype_name(a->lse.dtype));
        CFLASH_RETURN_IF(a->lse.device_type != a->device_type, INVALID,
                         "lse: on %s, expected %s (the device of q)",
                         cf_device_name(a->lse.device_type), cf_device_name(a->device_type));
    }
    CFLASH_FORWARD_IF_ERROR(cf_check_output(out, "out"));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(lse, "lse"));
    /* Decode is bound by the cache rows read (B x longest Sk x Hk x (D + Dv) elements); a long
     * Sq adds the attention flops, counted in bytes at the ratio of the two thresholds. */
    const double kv_rows = (double)a->B * (double)a->Sk * ((double)a->D + (double)a->Dv);
    a->threads = cf_threads_resolve("kvcache", cf_context_threads(ctx),
                                    kv_rows * (double)a->Hk * (double)cf_dtype_size(c.kc.dtype) +
                                        2.0 * kv_rows * (double)a->Sq * (double)a->H *
                                            (CF_MIN_BYTES_PER_THREAD / CF_MIN_FLOPS_PER_THREAD),
                                    0);
    a->stream = ctx ? ctx->cuda_stream : NULL;
    return cf_context_dispatch(ctx, CFLASH_OP_KVCACHE_FWD, a->device_type, &c, a->B == 0);
}

cflash_status cflash_attn_kvcache_fwd(cflash_context* ctx, const cflash_attn_params* p,
                                      const cflash_kvcache_params* kp, const DLTensor* q,
                                      DLTensor* k_cache, DLTensor* v_cache, DLTensor* out,
                                      DLTensor* lse) {
    return cf_context_end_call(ctx, kvcache_fwd(ctx, p, kp, q, k_cache, v_cache, out, lse));
}
