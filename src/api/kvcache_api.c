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
    CFLASH_FORWARD_IF_ERROR(cf_attn_kvcache_features(a, p)); /* A: issue 13's attention fields */
    return cf_attn_apply_params(a, p);
}

static cflash_status same_as_q(const cf_view* v, const char* name, const cf_view* q) {
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(v, name, q, "q"));
    CFLASH_RETURN_IF(v->dtype != q->dtype, INVALID, "%s: dtype %s, expected %s (the dtype of q)",
                     name, cf_dtype_name(v->dtype), cf_dtype_name(q->dtype));
    return CFLASH_OK;
}

/* q, (B, Sq, H, D) or with cu_seqlens_q (total_q, H, D): sets B, Sq (the longest sequence),
 * H, D, and the varlen rows (a->cu_q, q lifted to (1, total_q, H, D)). */
static cflash_status check_q(cf_attn_call* a, const cflash_kvcache_params* kp, const DLTensor* q) {
    const int vq = kp->cu_seqlens_q != NULL;
    CFLASH_FORWARD_IF_ERROR(
        cf_ops_shape(&a->q, q, "q", vq ? 3 : 4, NULL, vq ? "(total_q, H, D)" : "(B, Sq, H, D)"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(&a->q, "q", NULL, NULL));
    if (!vq) {
        CFLASH_RETURN_IF(kp->max_seqlen_q != 0, INVALID,
                         "max_seqlen_q: %lld without cu_seqlens_q, expected 0 (Sq is q's dim 1)",
                         (long long)kp->max_seqlen_q);
        a->B = a->q.shape[0], a->Sq = a->q.shape[1], a->H = a->q.shape[2], a->D = a->q.shape[3];
        return CFLASH_OK;
    }
    cf_view cu;
    int64_t longest;
    a->total_q = a->q.shape[0];
    CFLASH_FORWARD_IF_ERROR(cf_ops_cu_seqlens(&cu, kp->cu_seqlens_q, "cu_seqlens_q", -1, a->total_q,
                                              "total_q", &longest));
    CFLASH_RETURN_IF(kp->max_seqlen_q < 0 || (kp->max_seqlen_q > 0 && kp->max_seqlen_q < longest),
                     INVALID,
                     "max_seqlen_q: %lld, but a sequence has %lld query rows; expected >= %lld "
                     "or 0 (computed)",
                     (long long)kp->max_seqlen_q, (long long)longest, (long long)longest);
    a->cu_q = cu.data;
    a->B = cu.shape[0] - 1;
    a->Sq = longest; /* the bound given is only a bound: the kernels plan by the real one */
    a->H = a->q.shape[1], a->D = a->q.shape[2];
    cf_view_lift(&a->q);
    return CFLASH_OK;
}

/* ---- Quantized caches ---------------------------------------------------------------------- */

static const char* quant_name(int q) {
    return q == CFLASH_KV_QUANT_FP8_E4M3   ? "fp8 e4m3"
           : q == CFLASH_KV_QUANT_FP8_E5M2 ? "fp8 e5m2"
           : q == CFLASH_KV_QUANT_INT8     ? "int8"
                                           : "none";
}

/* A cache's dtype: q's when not quantized, else cache_quant's code type; q's device; a
 * contiguous last dim. */
static cflash_status cache_dtype(const cf_view* v, const char* name, const cf_view* q, int quant) {
    if (quant == CFLASH_KV_QUANT_NONE) {
        const int code8 = v->dtype == CF_U8 || v->dtype == CF_I8 || v->dtype == CF_F8E4M3 ||
                          v->dtype == CF_F8E5M2;
        CFLASH_RETURN_IF(code8, INVALID,
                         "%s: dtype %s, expected %s (the dtype of q), or cache_quant set for 8-bit "
                         "codes (1: fp8 e4m3, 2: fp8 e5m2, 3: int8)",
                         name, cf_dtype_name(v->dtype), cf_dtype_name(q->dtype));
        return same_as_q(v, name, q);
    }
    const int int8 = quant == CFLASH_KV_QUANT_INT8, e5m2 = quant == CFLASH_KV_QUANT_FP8_E5M2;
    const cf_dtype want = int8 ? CF_I8 : e5m2 ? CF_F8E5M2 : CF_F8E4M3;
    CFLASH_RETURN_IF(v->dtype != want && (int8 || v->dtype != CF_U8), INVALID,
                     "%s: dtype %s, expected %s for cache_quant %d (%s)", name,
                     cf_dtype_name(v->dtype),
                     int8   ? "int8"
                     : e5m2 ? "uint8 or float8_e5m2"
                            : "uint8 or float8_e4m3fn",
                     quant, quant_name(quant));
    CFLASH_RETURN_IF(v->device_type != q->device_type || v->device_id != q->device_id, INVALID,
                     "%s: on %s:%d, expected %s:%d (the device of q)", name,
                     cf_device_name(v->device_type), v->device_id, cf_device_name(q->device_type),
                     q->device_id);
    CFLASH_RETURN_IF(v->shape[v->ndim - 1] > 1 && v->stride[v->ndim - 1] != 1, INVALID,
                     "%s: last dimension has stride %lld, expected 1 (contiguous)", name,
                     (long long)v->stride[v->ndim - 1]);
    return CFLASH_OK;
}

/* cache_quant and the descale factors / scales it takes (the caches are checked). */
static cflash_status check_quant(cf_kvcache_call* c, const cflash_kvcache_params* kp) {
    const cf_attn_call* a = &c->a;
    const int q = kp->cache_quant; /* (its range is checked first of all) */
    c->quant = q;
    const int fp8 = q == CFLASH_KV_QUANT_FP8_E4M3 || q == CFLASH_KV_QUANT_FP8_E5M2;
    const DLTensor* dt[2] = {kp->k_descale, kp->v_descale};
    const DLTensor* st[2] = {kp->k_scales, kp->v_scales};
    const char* dn[2] = {"k_descale", "v_descale"};
    const char* sn[2] = {"k_scales", "v_scales"};
    for (int t = 0; t < 2; t++) {
        CFLASH_RETURN_IF(dt[t] && !fp8, INVALID,
                         "%s: given with cache_quant %d (%s), expected NULL (descale factors are "
                         "for fp8 caches)",
                         dn[t], q, quant_name(q));
        CFLASH_RETURN_IF(st[t] && q != CFLASH_KV_QUANT_INT8, INVALID,
                         "%s: given with cache_quant %d (%s), expected NULL (per-token scales are "
                         "for int8 caches)",
                         sn[t], q, quant_name(q));
        CFLASH_RETURN_IF(!st[t] && q == CFLASH_KV_QUANT_INT8, INVALID,
                         "%s: is NULL, expected fp32 (B_cache, S_cache, Hk) or (num_pages, "
                         "page_size, Hk) scales for an int8 cache",
                         sn[t]);
        if (dt[t]) {
            cf_view d;
            CFLASH_FORWARD_IF_ERROR(cf_view_from(&d, dt[t], dn[t]));
            char got[96];
            cf_shape_str(&d, got, sizeof got);
            const int ok = (d.ndim == 1 && (d.shape[0] == 1 || d.shape[0] == a->Hk)) ||
                           (d.ndim == 2 && d.shape[0] == a->B && d.shape[1] == a->Hk);
            CFLASH_RETURN_IF(!ok, INVALID,
                             "%s: shape %s, expected [1], [Hk] = [%lld] or [B, Hk] = [%lld, %lld]",
                             dn[t], got, (long long)a->Hk, (long long)a->B, (long long)a->Hk);
            CFLASH_RETURN_IF(d.dtype != CF_F32, INVALID, "%s: dtype %s, expected float32", dn[t],
                             cf_dtype_name(d.dtype));
            CFLASH_RETURN_IF(d.device_type != a->q.device_type || d.device_id != a->q.device_id,
                             INVALID, "%s: on %s:%d, expected %s:%d (the device of q)", dn[t],
                             cf_device_name(d.device_type), d.device_id,
                             cf_device_name(a->q.device_type), a->q.device_id);
            const int64_t hs = d.shape[d.ndim - 1] > 1 ? d.stride[d.ndim - 1] : 0;
            const int64_t bs = d.ndim == 2 ? d.stride[0] : 0;
            if (t == 0)
                c->kd = d.data, c->kd_hs = hs, c->kd_bs = bs;
            else
                c->vd = d.data, c->vd_hs = hs, c->vd_bs = bs;
        }
        if (st[t]) {
            cf_view* v = t ? &c->vs : &c->ks;
            const int64_t want[3] = {c->kc.shape[0], c->kc.shape[1], a->Hk};
            CFLASH_FORWARD_IF_ERROR(cf_ops_shape(v, st[t], sn[t], 3, want,
                                                 "(B_cache, S_cache, Hk) or (num_pages, "
                                                 "page_size, Hk), the caches' first dims"));
            CFLASH_RETURN_IF(v->dtype != CF_F32, INVALID, "%s: dtype %s, expected float32", sn[t],
                             cf_dtype_name(v->dtype));
            CFLASH_RETURN_IF(v->device_type != a->q.device_type || v->device_id != a->q.device_id,
                             INVALID, "%s: on %s:%d, expected %s:%d (the device of q)", sn[t],
                             cf_device_name(v->device_type), v->device_id,
                             cf_device_name(a->q.device_type), a->q.device_id);
            for (int i = 0; i < 3; i++) /* written in place: no two rows at one address */
                CFLASH_RETURN_IF(v->shape[i] > 1 && v->stride[i] == 0, INVALID,
                                 "%s: stride 0 in dim %d of size %lld, expected rows that do not "
                                 "overlap (the append writes them)",
                                 sn[t], i, (long long)v->shape[i]);
        }
    }
    return CFLASH_OK;
}

/* ---- The MLA latent cache ------------------------------------------------------------------ */

/* Whether v_cache is a view of k_cache's first Dv dims (same memory, dtype and strides: the MLA
 * latent cache, ggml's view), and what the call may do with it: the append of k_new writes the
 * rows of both (v_new must be NULL). Another v_cache sharing k_cache's memory can be read, never
 * appended to (the rows of the two would overlap in other places). */
static cflash_status check_latent(cf_kvcache_call* c, const cflash_kvcache_params* kp) {
    const cf_view *k = &c->kc, *v = &c->vc;
    int view = k->data == v->data && k->dtype == v->dtype && v->shape[3] <= k->shape[3];
    for (int i = 0; i < 3; i++)
        view &= k->shape[i] < 2 || k->stride[i] == v->stride[i];
    c->latent = view;
    CFLASH_RETURN_IF(
        view && kp->v_new, INVALID,
        "v_new: given with an MLA latent cache (v_cache a view of k_cache's first %lld "
        "dims), expected NULL: the append of k_new writes both",
        (long long)v->shape[3]);
    CFLASH_RETURN_IF(!view && kp->k_new && k->data == v->data, INVALID,
                     "v_cache: shares k_cache's memory (data %p) with strides (%lld, %lld, %lld) "
                     "and Dv = %lld, expected k_cache's strides (%lld, %lld, %lld) and Dv <= D = "
                     "%lld for an append into an MLA latent cache (a view of k_cache's first Dv "
                     "dims), or a cache of its own",
                     v->data, (long long)v->stride[0], (long long)v->stride[1],
                     (long long)v->stride[2], (long long)v->shape[3], (long long)k->stride[0],
                     (long long)k->stride[1], (long long)k->stride[2], (long long)k->shape[3]);
    return CFLASH_OK;
}

/* The call's outputs (out, lse, and the caches and int8 scales the append writes) apart from its
 * inputs and from each other (cf_check_apart); the K and V caches may share memory (an MLA
 * latent cache, checked by check_latent). */
static cflash_status check_kv_apart(const cf_kvcache_call* c) {
    const cf_view* in[] = {&c->a.q, &c->knew, &c->vnew, &c->cos, &c->sin};
    const char* in_name[] = {"q", "k_new", "v_new", "rotary_cos", "rotary_sin"};
    const cf_view* out[] = {&c->a.out, &c->a.lse, &c->kc, &c->vc, &c->ks, &c->vs};
    const char* out_name[] = {"out", "lse", "k_cache", "v_cache", "k_scales", "v_scales"};
    for (int i = 0; i < 6; i++) {
        for (int j = 0; j < 5; j++)
            CFLASH_FORWARD_IF_ERROR(cf_check_apart(out[i], out_name[i], in[j], in_name[j]));
        for (int j = 0; j < i; j++)
            if (!(i == 3 && j == 2)) /* (v_cache, k_cache) */
                CFLASH_FORWARD_IF_ERROR(cf_check_apart(out[i], out_name[i], out[j], out_name[j]));
    }
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
    CFLASH_RETURN_IF(
        kp->cache_quant < CFLASH_KV_QUANT_NONE || kp->cache_quant > CFLASH_KV_QUANT_INT8, INVALID,
        "cache_quant: %d, expected 0 (none), 1 (fp8 e4m3), 2 (fp8 e5m2) or 3 (int8)",
        kp->cache_quant);

    CFLASH_FORWARD_IF_ERROR(check_q(a, kp, q));
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
    CFLASH_FORWARD_IF_ERROR(cache_dtype(&c.kc, "k_cache", &a->q, kp->cache_quant));
    a->Hk = c.kc.shape[2];
    CFLASH_RETURN_IF(a->Hk < 1 || a->H % a->Hk != 0, INVALID,
                     "k_cache: %lld heads, expected a divisor of the %lld heads of q (GQA/MQA)",
                     (long long)a->Hk, (long long)a->H);
    const int64_t wv[4] = {c.kc.shape[0], c.kc.shape[1], a->Hk, -1};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.vc, v_cache, "v_cache", 4, wv, vl));
    CFLASH_FORWARD_IF_ERROR(cache_dtype(&c.vc, "v_cache", &a->q, kp->cache_quant));
    a->Dv = c.vc.shape[3];
    CFLASH_RETURN_IF(a->Dv < 1, INVALID, "v_cache: head dim Dv = 0, expected >= 1");
    CFLASH_FORWARD_IF_ERROR(check_attn(a, p));
    CFLASH_FORWARD_IF_ERROR(check_quant(&c, kp));

    /* Where each sequence lives. */
    int64_t capacity;
    if (paged) {
        CFLASH_RETURN_IF(kp->cache_batch_idx, INVALID,
                         "cache_batch_idx: given with block_table, expected NULL (a paged cache "
                         "selects pages per sequence through block_table)");
        cf_view bt;
        CFLASH_FORWARD_IF_ERROR(cf_ops_block_table(&bt, kp->block_table, a->B));
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
    CFLASH_FORWARD_IF_ERROR(check_latent(&c, kp));
    CFLASH_RETURN_IF(!c.latent && !kp->k_new != !kp->v_new, INVALID,
                     "%s: is NULL but %s is given, expected both or neither",
                     kp->k_new ? "v_new" : "k_new", kp->k_new ? "k_new" : "v_new");
    CFLASH_RETURN_IF(kp->cu_seqlens_k_new && !kp->k_new, INVALID,
                     "cu_seqlens_k_new: given without k_new, expected NULL (it indexes the rows of "
                     "k_new)");
    if (kp->k_new && kp->cu_seqlens_k_new) { /* varlen: (total_new, Hk, D), lifted */
        const int64_t wn[3] = {-1, a->Hk, a->D};
        CFLASH_FORWARD_IF_ERROR(
            cf_ops_shape(&c.knew, kp->k_new, "k_new", 3, wn, "(total_new, Hk, D)"));
        CFLASH_FORWARD_IF_ERROR(same_as_q(&c.knew, "k_new", &a->q));
        c.total_new = c.knew.shape[0];
        cf_view cu;
        CFLASH_FORWARD_IF_ERROR(cf_ops_cu_seqlens(&cu, kp->cu_seqlens_k_new, "cu_seqlens_k_new",
                                                  a->B + 1, c.total_new, "total_new", &c.Sn));
        c.cu_knew = cu.data;
        cf_view_lift(&c.knew);
        if (!c.latent) {
            const int64_t wvn[3] = {c.total_new, a->Hk, a->Dv};
            CFLASH_FORWARD_IF_ERROR(
                cf_ops_shape(&c.vnew, kp->v_new, "v_new", 3, wvn, "(total_new, Hk, Dv)"));
            CFLASH_FORWARD_IF_ERROR(same_as_q(&c.vnew, "v_new", &a->q));
            cf_view_lift(&c.vnew);
        }
    } else if (kp->k_new) {
        const int64_t wn[4] = {a->B, -1, a->Hk, a->D};
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.knew, kp->k_new, "k_new", 4, wn, "(B, Sn, Hk, D)"));
        CFLASH_FORWARD_IF_ERROR(same_as_q(&c.knew, "k_new", &a->q));
        c.Sn = c.knew.shape[1];
        if (!c.latent) {
            const int64_t wvn[4] = {a->B, c.Sn, a->Hk, a->Dv};
            CFLASH_FORWARD_IF_ERROR(
                cf_ops_shape(&c.vnew, kp->v_new, "v_new", 4, wvn, "(B, Sn, Hk, Dv)"));
            CFLASH_FORWARD_IF_ERROR(same_as_q(&c.vnew, "v_new", &a->q));
        }
        CFLASH_RETURN_IF(cf_mul_i64(a->B, c.Sn, &c.total_new), INVALID,
                         "k_new: %lld x %lld rows overflow int64", (long long)a->B,
                         (long long)c.Sn);
    }
    if (kp->k_new) { /* The caches are written in place: a broadcast dim would give rows one
                        address. */
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
    const int64_t nchk =
        c.seqlens || c.leftpad || c.block_table || c.cu_knew || a->cu_q ? a->B : a->B > 0;
    for (int64_t b = 0; b < nchk; b++) {
        /* (cf_kv_seq would add L + Sn before it is checked) */
        int64_t n0, sn, q0, sq, end;
        cf_kv_new_rows(&c, b, &n0, &sn);
        cf_kv_q_rows(&c, b, &q0, &sq);
        const int64_t L = c.seqlens ? c.seqlens[b] : c.seqlen, P = c.leftpad ? c.leftpad[b] : 0;
        const char* ln = c.seqlens ? "cache_seqlens" : "cache_seqlen";
        CFLASH_RETURN_IF(L < 0, INVALID, "%s[%lld]: %lld, expected >= 0", ln, (long long)b,
                         (long long)L);
        CFLASH_RETURN_IF(cf_add_i64(L, sn, &end), INVALID,
                         "%s[%lld]: %lld + %lld new rows overflows int64; expected at most the "
                         "cache's %lld positions",
                         ln, (long long)b, (long long)L, (long long)sn, (long long)capacity);
        CFLASH_RETURN_IF(
            end > capacity, INVALID,
            "%s[%lld]: %lld + %lld new rows = %lld exceeds the cache's %lld "
            "positions%s",
            ln, (long long)b, (long long)L, (long long)sn, (long long)end, (long long)capacity,
            paged ? " (max_pages * page_size addressable through block_table)" : " (S_cache)");
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
        if (sq > 0 && cf_kv_q_shifted(&c) && cf_add_i64(L, sq - 1, &qlast)) qlast = INT64_MAX;
        if (sq > 0 && qlast > need) need = qlast;
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

    if (a->cu_q) { /* varlen: (total_q, H, Dv) and (H, total_q), lifted */
        const int64_t wo[3] = {a->total_q, a->H, a->Dv};
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&a->out, out, "out", 3, wo, "(total_q, H, Dv)"));
    } else {
        const int64_t wo[4] = {a->B, a->Sq, a->H, a->Dv};
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&a->out, out, "out", 4, wo, "(B, Sq, H, Dv)"));
    }
    CFLASH_FORWARD_IF_ERROR(same_as_q(&a->out, "out", &a->q));
    if (a->cu_q) cf_view_lift(&a->out);
    if (lse && a->cu_q) {
        const int64_t wl[2] = {a->H, a->total_q};
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&a->lse, lse, "lse", 2, wl, "(H, total_q)"));
        cf_view_lift(&a->lse);
    } else if (lse) {
        const int64_t wl[3] = {a->B, a->H, a->Sq};
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&a->lse, lse, "lse", 3, wl, "(B, H, Sq)"));
    }
    if (lse) {
        CFLASH_RETURN_IF(a->lse.dtype != CF_F32, INVALID, "lse: dtype %s, expected float32",
                         cf_dtype_name(a->lse.dtype));
        CFLASH_RETURN_IF(a->lse.device_type != a->device_type, INVALID,
                         "lse: on %s, expected %s (the device of q)",
                         cf_device_name(a->lse.device_type), cf_device_name(a->device_type));
    }
    CFLASH_FORWARD_IF_ERROR(cf_check_output(out, "out"));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(lse, "lse"));
    CFLASH_FORWARD_IF_ERROR(check_kv_apart(&c));
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
