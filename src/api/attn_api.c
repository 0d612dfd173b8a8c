/* The attention entry points: validate every argument before any work, build the cf_attn_call
 * that backends receive, and hand it to the dispatcher. Nothing here writes caller memory. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/attn_api.h"
#include "api/context.h"
#include "api/ops_api.h"
#include "core/attn_call.h"
#include "core/checked.h"
#include "core/device.h"
#include "core/status.h"
#include "core/tensor.h"
#include "core/threads.h"

#define INVALID CFLASH_ERR_INVALID_ARGUMENT

void cflash_attn_params_init(cflash_attn_params* p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->window_left = -1;
    p->window_right = -1;
    p->block_q = 128; /* A: FlexAttention's default block */
    p->block_k = 128;
}

/* ---- Argument checks ---------------------------------------------------------------------- */

cflash_status cf_attn_check_params(const cflash_attn_params* p) {
    CFLASH_RETURN_IF(!isfinite(p->softmax_scale), INVALID,
                     "softmax_scale: %g, expected a finite value (0 = 1/sqrt(head_dim))",
                     (double)p->softmax_scale);
    CFLASH_RETURN_IF(!(p->dropout_p >= 0.0f && p->dropout_p < 1.0f), INVALID,
                     "dropout_p: %g, expected a value in [0, 1)", (double)p->dropout_p);
    CFLASH_RETURN_IF(p->window_left < -1, INVALID,
                     "window_left: %lld, expected -1 (unbounded) or >= 0",
                     (long long)p->window_left);
    CFLASH_RETURN_IF(p->window_right < -1, INVALID,
                     "window_right: %lld, expected -1 (unbounded) or >= 0",
                     (long long)p->window_right);
    CFLASH_RETURN_IF(!(p->softcap >= 0.0f) || !isfinite(p->softcap), INVALID,
                     "softcap: %g, expected a finite value >= 0 (0 = off)", (double)p->softcap);
    CFLASH_RETURN_IF(p->attention_chunk < 0, INVALID,
                     "attention_chunk: %lld, expected 0 (off) or a chunk length > 0",
                     (long long)p->attention_chunk);
    return CFLASH_OK;
}

/* Loads t into v, checking ndim and, where want[i] >= 0, each dim against want[i]. */
static cflash_status check_shape(cf_view* v, const DLTensor* t, const char* name, int ndim,
                                 const int64_t* want, const char* layout) {
    CFLASH_FORWARD_IF_ERROR(cf_view_from(v, t, name));
    CFLASH_RETURN_IF(v->ndim != ndim, INVALID, "%s: expected %d dims %s, got %d", name, ndim,
                     layout, v->ndim);
    for (int i = 0; i < ndim; i++) {
        if (want[i] < 0 || v->shape[i] == want[i]) continue;
        char got[96];
        cf_shape_str(v, got, sizeof got);
        return cf_error(INVALID, "%s: shape %s, expected %s with dim %d = %lld", name, got, layout,
                        i, (long long)want[i]);
    }
    return CFLASH_OK;
}

static cflash_status check_same(const cf_view* v, const char* name, const cf_view* ref,
                                const char* ref_name) {
    if (v->dtype != ref->dtype)
        return cf_error(INVALID, "%s: dtype %s, expected %s (the dtype of %s)", name,
                        cf_dtype_name(v->dtype), cf_dtype_name(ref->dtype), ref_name);
    if (v->device_type != ref->device_type || v->device_id != ref->device_id)
        return cf_error(INVALID, "%s: on %s:%d, expected %s:%d (the device of %s)", name,
                        cf_device_name(v->device_type), v->device_id,
                        cf_device_name(ref->device_type), ref->device_id, ref_name);
    if (v->ndim && v->shape[v->ndim - 1] > 1 && v->stride[v->ndim - 1] != 1)
        return cf_error(INVALID, "%s: last dimension has stride %lld, expected 1 (contiguous)",
                        name, (long long)v->stride[v->ndim - 1]);
    return CFLASH_OK;
}

static cflash_status check_dtype(const cf_view* q, const DLTensor* t) {
    if (q->dtype == CF_F32 || q->dtype == CF_F16 || q->dtype == CF_BF16) return CFLASH_OK;
    char s[32];
    cf_dl_dtype_str(t->dtype, s, sizeof s);
    return cf_error(INVALID, "q: dtype %s, expected float32, float16 or bfloat16", s);
}

static cflash_status check_lse(cf_view* v, const DLTensor* t, const cf_view* q, int ndim,
                               const int64_t* want, const char* layout) {
    CFLASH_FORWARD_IF_ERROR(check_shape(v, t, "lse", ndim, want, layout));
    CFLASH_RETURN_IF(v->dtype != CF_F32, INVALID, "lse: dtype %s, expected float32",
                     cf_dtype_name(v->dtype));
    CFLASH_RETURN_IF(v->device_type != q->device_type || v->device_id != q->device_id, INVALID,
                     "lse: on %s:%d, expected %s:%d (the device of q)",
                     cf_device_name(v->device_type), v->device_id, cf_device_name(q->device_type),
                     q->device_id);
    return CFLASH_OK;
}

static cflash_status check_alibi(cf_attn_call* c, const DLTensor* t) {
    c->alibi = NULL;
    c->alibi_bstride = 0;
    if (!t) return CFLASH_OK;
    cf_view a;
    CFLASH_FORWARD_IF_ERROR(cf_view_from(&a, t, "alibi_slopes"));
    CFLASH_RETURN_IF(a.dtype != CF_F32, INVALID, "alibi_slopes: dtype %s, expected float32",
                     cf_dtype_name(a.dtype));
    char got[96];
    cf_shape_str(&a, got, sizeof got);
    int ok1 = a.ndim == 1 && a.shape[0] == c->H;
    int ok2 = a.ndim == 2 && a.shape[0] == c->B && a.shape[1] == c->H;
    CFLASH_RETURN_IF(!ok1 && !ok2, INVALID,
                     "alibi_slopes: shape %s, expected [H] = [%lld] or [B, H] = [%lld, %lld]", got,
                     (long long)c->H, (long long)c->B, (long long)c->H);
    CFLASH_RETURN_IF(a.shape[a.ndim - 1] > 1 && a.stride[a.ndim - 1] != 1, INVALID,
                     "alibi_slopes: last dimension has stride %lld, expected 1",
                     (long long)a.stride[a.ndim - 1]);
    CFLASH_RETURN_IF(a.device_type != c->q.device_type || a.device_id != c->q.device_id, INVALID,
                     "alibi_slopes: on %s:%d, expected %s:%d (the device of q)",
                     cf_device_name(a.device_type), a.device_id, cf_device_name(c->q.device_type),
                     c->q.device_id);
    c->alibi = a.data;
    c->alibi_bstride = a.ndim == 2 ? a.stride[0] : 0;
    return CFLASH_OK;
}

/* A block offset (q_offset / k_offset) for rows of length s: 0 (no block), or off > 0 with
 * off + s <= 2^32, the width of the dropout counter's row and column words. */
static cflash_status check_offset(int64_t off, int64_t s, const char* name, const char* len) {
    int64_t end = 0;
    if (off == 0) return CFLASH_OK;
    CFLASH_RETURN_IF(off < 0 || __builtin_add_overflow(off, s, &end) || end > CF_ATTN_MAX_POS,
                     INVALID,
                     "%s: %lld, expected 0 <= %s <= 2^32 - %s = %lld (positions fit 32 bits)", name,
                     (long long)off, name, len, (long long)(CF_ATTN_MAX_POS - s));
    return CFLASH_OK;
}

cflash_status cf_attn_apply_params(cf_attn_call* c, const cflash_attn_params* p) {
    CFLASH_FORWARD_IF_ERROR(check_alibi(c, p->alibi_slopes));
    CFLASH_FORWARD_IF_ERROR(check_offset(p->q_offset, c->Sq, "q_offset", "Sq"));
    CFLASH_FORWARD_IF_ERROR(check_offset(p->k_offset, c->Sk, "k_offset", "Sk"));
    c->q_offset = p->q_offset;
    c->k_offset = p->k_offset;
    c->scale = p->softmax_scale != 0.0f ? p->softmax_scale : (float)(1.0 / sqrt((double)c->D));
    c->causal = p->causal != 0;
    c->window_left = p->window_left;
    c->window_right = c->causal ? 0 : p->window_right;
    c->softcap = p->softcap;
    c->dropout_p = p->dropout_p;
    c->seed = p->seed;
    c->offset = p->offset;
    c->deterministic = p->deterministic != 0;
    return CFLASH_OK;
}

/* ---- Issue 13 (A): sinks, bias / mask, block-sparse, chunk ------------------------------- */

static cflash_status check_on_q(const cf_view* v, const char* name, const cf_view* q) {
    CFLASH_RETURN_IF(v->device_type != q->device_type || v->device_id != q->device_id, INVALID,
                     "%s: on %s:%d, expected %s:%d (the device of q)", name,
                     cf_device_name(v->device_type), v->device_id, cf_device_name(q->device_type),
                     q->device_id);
    return CFLASH_OK;
}

/* sinks / dsinks: fp32 [H], contiguous, on q's device (also the KV-cache call's sinks). */
static cflash_status check_heads_f32(const DLTensor* t, const char* name, const cf_attn_call* c,
                                     float** data) {
    cf_view v;
    CFLASH_FORWARD_IF_ERROR(cf_view_from(&v, t, name));
    CFLASH_RETURN_IF(v.dtype != CF_F32, INVALID, "%s: dtype %s, expected float32", name,
                     cf_dtype_name(v.dtype));
    if (v.ndim != 1 || v.shape[0] != c->H) {
        char got[96];
        cf_shape_str(&v, got, sizeof got);
        return cf_error(INVALID, "%s: shape %s, expected [H] = [%lld]", name, got, (long long)c->H);
    }
    CFLASH_RETURN_IF(v.shape[0] > 1 && v.stride[0] != 1, INVALID,
                     "%s: stride %lld, expected 1 (contiguous)", name, (long long)v.stride[0]);
    CFLASH_FORWARD_IF_ERROR(check_on_q(&v, name, &c->q));
    *data = v.data;
    return CFLASH_OK;
}

/* A (B|1, H|1, Sq, Sk) tensor (attn_bias, attn_mask, dbias); broadcast dims get stride 0. */
static cflash_status check_pairs(cf_view* v, const DLTensor* t, const char* name,
                                 const cf_attn_call* c) {
    CFLASH_RETURN_IF(c->varlen, INVALID,
                     "%s: given to a varlen call, expected NULL (batch calls only: "
                     "cflash_attn_fwd / cflash_attn_bwd)",
                     name);
    CFLASH_FORWARD_IF_ERROR(cf_view_from(v, t, name));
    CFLASH_RETURN_IF(v->ndim != 4, INVALID, "%s: expected 4 dims (B|1, H|1, Sq, Sk), got %d", name,
                     v->ndim);
    if ((v->shape[0] != c->B && v->shape[0] != 1) || (v->shape[1] != c->H && v->shape[1] != 1) ||
        v->shape[2] != c->Sq || v->shape[3] != c->Sk) {
        char got[96];
        cf_shape_str(v, got, sizeof got);
        return cf_error(INVALID,
                        "%s: shape %s, expected (B|1, H|1, Sq, Sk) = (%lld|1, %lld|1, "
                        "%lld, %lld)",
                        name, got, (long long)c->B, (long long)c->H, (long long)c->Sq,
                        (long long)c->Sk);
    }
    CFLASH_RETURN_IF(v->shape[3] > 1 && v->stride[3] != 1, INVALID,
                     "%s: last dimension has stride %lld, expected 1 (contiguous)", name,
                     (long long)v->stride[3]);
    CFLASH_FORWARD_IF_ERROR(check_on_q(v, name, &c->q));
    for (int i = 0; i < 2; i++)
        if (v->shape[i] == 1) v->stride[i] = 0;
    return CFLASH_OK;
}

static cflash_status check_bias_dtype(const cf_view* v, const DLTensor* t, const char* name,
                                      const cf_attn_call* c) {
    if (v->dtype == CF_F32 || v->dtype == c->dtype) return CFLASH_OK;
    char got[32];
    cf_dl_dtype_str(t->dtype, got, sizeof got);
    return cf_error(INVALID, "%s: dtype %s, expected float32 or the dtype of q (%s)", name, got,
                    cf_dtype_name(c->dtype));
}

/* The block-sparse tensors: shapes, device, and (in host memory) their values. */
static cflash_status check_block_sparse(cf_attn_call* c, const cflash_attn_params* p) {
    CFLASH_RETURN_IF(!p->block_kv_indices, INVALID,
                     "block_kv_indices: is NULL, expected a tensor (block_kv_num is given)");
    CFLASH_RETURN_IF(p->block_q < 1 || p->block_q > CF_ATTN_MAX_POS, INVALID,
                     "block_q: %lld, expected 1 <= block_q <= 2^32", (long long)p->block_q);
    CFLASH_RETURN_IF(p->block_k < 1 || p->block_k > CF_ATTN_MAX_POS, INVALID,
                     "block_k: %lld, expected 1 <= block_k <= 2^32", (long long)p->block_k);
    cf_view* n = &c->bs_num;
    cf_view* x = &c->bs_idx;
    CFLASH_FORWARD_IF_ERROR(cf_view_from(n, p->block_kv_num, "block_kv_num"));
    CFLASH_FORWARD_IF_ERROR(cf_view_from(x, p->block_kv_indices, "block_kv_indices"));
    CFLASH_RETURN_IF(n->dtype != CF_I32 || n->ndim != 3, INVALID,
                     "block_kv_num: %s with %d dims, expected int32 with 3 dims (B|1, H|1, "
                     "query blocks)",
                     cf_dtype_name(n->dtype), n->ndim);
    CFLASH_RETURN_IF(x->dtype != CF_I32 || x->ndim != 4, INVALID,
                     "block_kv_indices: %s with %d dims, expected int32 with 4 dims (B|1, H|1, "
                     "query blocks, K)",
                     cf_dtype_name(x->dtype), x->ndim);
    /* Query blocks cover the call's rows at their positions: (q_offset + Sq) / block_q rounded
     * up (checked, though check_offset bounds q_offset + Sq by 2^33). */
    int64_t end_q, nqb;
    CFLASH_RETURN_IF(cf_add_i64(c->q_offset, c->Sq, &end_q), INVALID,
                     "q_offset: %lld + Sq %lld overflows int64", (long long)c->q_offset,
                     (long long)c->Sq);
    nqb = end_q == 0 ? 0 : (end_q - 1) / p->block_q + 1;
    char got[96];
    if ((n->shape[0] != c->B && n->shape[0] != 1) || (n->shape[1] != c->H && n->shape[1] != 1) ||
        n->shape[2] < nqb) {
        cf_shape_str(n, got, sizeof got);
        return cf_error(INVALID,
                        "block_kv_num: shape %s, expected (B|1, H|1, >= ceil((q_offset + Sq) / "
                        "block_q)) = (%lld|1, %lld|1, >= %lld)",
                        got, (long long)c->B, (long long)c->H, (long long)nqb);
    }
    if (x->shape[0] != n->shape[0] || x->shape[1] != n->shape[1] || x->shape[2] != n->shape[2]) {
        cf_shape_str(x, got, sizeof got);
        char want[96];
        cf_shape_str(n, want, sizeof want);
        return cf_error(INVALID,
                        "block_kv_indices: shape %s, expected the first 3 dims of block_kv_num "
                        "%s and a 4th (K)",
                        got, want);
    }
    CFLASH_RETURN_IF(n->device_type != x->device_type || n->device_id != x->device_id, INVALID,
                     "block_kv_indices: on %s:%d, expected %s:%d (the device of block_kv_num)",
                     cf_device_name(x->device_type), x->device_id, cf_device_name(n->device_type),
                     n->device_id);
    const int host = n->device_type == kDLCPU || n->device_type == kDLCUDAHost;
    CFLASH_RETURN_IF(
        !host && (n->device_type != c->q.device_type || n->device_id != c->q.device_id), INVALID,
        "block_kv_num: on %s:%d, expected host memory or the device of q (%s:%d)",
        cf_device_name(n->device_type), n->device_id, cf_device_name(c->q.device_type),
        c->q.device_id);
    for (int i = 0; i < 2; i++) {
        if (n->shape[i] == 1) n->stride[i] = 0;
        if (x->shape[i] == 1) x->stride[i] = 0;
    }
    c->block_q = p->block_q;
    c->block_k = p->block_k;
    /* Device memory: values are the serving backend's to check (no CUDA backend serves this
     * yet, see cuda_attn.c); host memory: each num in [0, K], each listed index >= 0. */
    if (!host) return CFLASH_OK;
    const int32_t *nd = n->data, *xd = x->data;
    const int64_t K = x->shape[3];
    for (int64_t b = 0; b < n->shape[0]; b++)
        for (int64_t h = 0; h < n->shape[1]; h++)
            for (int64_t q = 0; q < n->shape[2]; q++) {
                const int64_t v = nd[b * n->stride[0] + h * n->stride[1] + q * n->stride[2]];
                CFLASH_RETURN_IF(v < 0 || v > K, INVALID,
                                 "block_kv_num[%lld, %lld, %lld]: %lld, expected 0..K = 0..%lld",
                                 (long long)b, (long long)h, (long long)q, (long long)v,
                                 (long long)K);
                for (int64_t t = 0; t < v; t++) {
                    const int64_t kb = xd[cf_attn_at4(x, b, h, q, t)];
                    CFLASH_RETURN_IF(kb < 0, INVALID,
                                     "block_kv_indices[%lld, %lld, %lld, %lld]: %lld, expected a "
                                     "key block >= 0",
                                     (long long)b, (long long)h, (long long)q, (long long)t,
                                     (long long)kb);
                }
            }
    return CFLASH_OK;
}

/* p->sinks into c->sinks (checked), for the attention and KV-cache calls alike. */
static cflash_status check_sinks(cf_attn_call* c, const cflash_attn_params* p) {
    float* f = NULL;
    if (p->sinks) {
        CFLASH_FORWARD_IF_ERROR(check_heads_f32(p->sinks, "sinks", c, &f));
        c->sinks = f;
    }
    return CFLASH_OK;
}

/* Checks and resolves issue 13's fields of p into c (after the shapes and the other params). */
static cflash_status check_features(cf_attn_call* c, const cflash_attn_params* p, int bwd) {
    float* f = NULL;
    CFLASH_FORWARD_IF_ERROR(check_sinks(c, p));
    if (bwd && p->dsinks) {
        CFLASH_RETURN_IF(!p->sinks, INVALID,
                         "dsinks: given without sinks, expected NULL (there is no sink to "
                         "differentiate)");
        CFLASH_FORWARD_IF_ERROR(check_heads_f32(p->dsinks, "dsinks", c, &f));
        c->dsinks = f;
    }
    if (p->attn_bias) {
        CFLASH_FORWARD_IF_ERROR(check_pairs(&c->bias, p->attn_bias, "attn_bias", c));
        CFLASH_FORWARD_IF_ERROR(check_bias_dtype(&c->bias, p->attn_bias, "attn_bias", c));
    }
    if (p->attn_mask) {
        CFLASH_FORWARD_IF_ERROR(check_pairs(&c->mask, p->attn_mask, "attn_mask", c));
        CFLASH_FORWARD_IF_ERROR(cf_view_mask8(&c->mask, p->attn_mask->dtype, "attn_mask"));
    }
    if (bwd && p->dbias) {
        CFLASH_RETURN_IF(!p->attn_bias, INVALID,
                         "dbias: given without attn_bias, expected NULL (there is no bias to "
                         "differentiate)");
        CFLASH_FORWARD_IF_ERROR(check_pairs(&c->dbias, p->dbias, "dbias", c));
        CFLASH_FORWARD_IF_ERROR(check_bias_dtype(&c->dbias, p->dbias, "dbias", c));
        CFLASH_FORWARD_IF_ERROR(cf_check_output(p->dbias, "dbias"));
        for (int i = 0; i < 2; i++)
            if (c->dbias.shape[i] != c->bias.shape[i]) {
                char got[96], want[96];
                cf_shape_str(&c->dbias, got, sizeof got);
                cf_shape_str(&c->bias, want, sizeof want);
                return cf_error(INVALID, "dbias: shape %s, expected %s (the shape of attn_bias)",
                                got, want);
            }
    }
    if (p->block_kv_num) CFLASH_FORWARD_IF_ERROR(check_block_sparse(c, p));
    CFLASH_RETURN_IF(!p->block_kv_num && p->block_kv_indices, INVALID,
                     "block_kv_num: is NULL, expected a tensor (block_kv_indices is given)");
    c->chunk = p->attention_chunk;
    return CFLASH_OK;
}

cflash_status cf_attn_kvcache_features(cf_attn_call* c, const cflash_attn_params* p) {
    CFLASH_FORWARD_IF_ERROR(check_sinks(c, p));
    CFLASH_RETURN_IF(p->dsinks, INVALID,
                     "dsinks: given to the KV-cache call, expected NULL (a backward output)");
    CFLASH_RETURN_IF(p->attn_bias || p->attn_mask, INVALID,
                     "%s: given to the KV-cache call, expected NULL (batch attention calls only)",
                     p->attn_bias ? "attn_bias" : "attn_mask");
    CFLASH_RETURN_IF(p->block_kv_num || p->block_kv_indices, INVALID,
                     "%s: given to the KV-cache call, expected NULL (attention calls only)",
                     p->block_kv_num ? "block_kv_num" : "block_kv_indices");
    CFLASH_RETURN_IF(p->attention_chunk != 0, INVALID,
                     "attention_chunk: %lld, expected 0 (the KV-cache call does not take it yet)",
                     (long long)p->attention_chunk);
    return CFLASH_OK;
}

/* Reads and checks cu_seqlens; stores the host pointer and the longest sequence. cu_seqlens on
 * a CUDA device are copied through the device hooks into a host buffer of the call's (*own,
 * freed by the entry point: a per-thread buffer outlived no thread) to be checked; *dev keeps
 * the device pointer for the kernels (NULL for host cu_seqlens). */
static cflash_status check_cu(const DLTensor* t, const char* name, int64_t total,
                              const char* total_name, int64_t* B, const int32_t** cu,
                              int64_t* maxlen, const int32_t** dev, int32_t** own,
                              const cf_view* q) {
    cf_view c;
    CFLASH_FORWARD_IF_ERROR(cf_view_from(&c, t, name));
    CFLASH_RETURN_IF(c.dtype != CF_I32 || c.ndim != 1, INVALID,
                     "%s: %s with %d dims, expected int32 with 1 dim [B + 1]", name,
                     cf_dtype_name(c.dtype), c.ndim);
    CFLASH_RETURN_IF(c.shape[0] < 1, INVALID, "%s: length 0, expected B + 1 >= 1", name);
    CFLASH_RETURN_IF(c.shape[0] > 1 && c.stride[0] != 1, INVALID,
                     "%s: stride %lld, expected 1 (contiguous)", name, (long long)c.stride[0]);
    CFLASH_RETURN_IF(c.device_type != kDLCPU && c.device_type != kDLCUDAHost &&
                         c.device_type != kDLCUDA,
                     INVALID, "%s: on %s, expected cpu, cuda_host or cuda memory", name,
                     cf_device_name(c.device_type));
    if (*B >= 0 && c.shape[0] != *B + 1)
        return cf_error(INVALID, "%s: length %lld, expected B + 1 = %lld (the length of %s)", name,
                        (long long)c.shape[0], (long long)(*B + 1), "cu_seqlens_q");
    const int32_t* v = c.data;
    *dev = NULL;
    CFLASH_RETURN_IF(c.device_type == kDLCUDA &&
                         (q->device_type != kDLCUDA || q->device_id != c.device_id),
                     INVALID, "%s: on cuda:%d, expected host memory or the device of q (%s:%d)",
                     name, c.device_id, cf_device_name(q->device_type), q->device_id);
    if (c.device_type == kDLCUDA) {
        *own = malloc(sizeof(int32_t) * (size_t)c.shape[0]);
        CFLASH_RETURN_IF(!*own, CFLASH_ERR_OUT_OF_MEMORY, "%s: no host memory to check it", name);
        CFLASH_FORWARD_IF_ERROR(cf_device_copy(kDLCUDA, c.device_id, *own, c.data,
                                               sizeof(int32_t) * (size_t)c.shape[0], 0));
        *dev = c.data;
        v = *own;
    }
    CFLASH_RETURN_IF(v[0] != 0, INVALID, "%s[0]: %d, expected 0", name, v[0]);
    int64_t mx = 0;
    for (int64_t b = 0; b + 1 < c.shape[0]; b++) {
        CFLASH_RETURN_IF(v[b + 1] < v[b], INVALID,
                         "%s[%lld]: %d is less than %s[%lld] = %d, expected non-decreasing", name,
                         (long long)(b + 1), v[b + 1], name, (long long)b, v[b]);
        if (v[b + 1] - v[b] > mx) mx = v[b + 1] - v[b];
    }
    CFLASH_RETURN_IF(v[c.shape[0] - 1] > total, INVALID, "%s[%lld]: %d, expected at most %s = %lld",
                     name, (long long)(c.shape[0] - 1), v[c.shape[0] - 1], total_name,
                     (long long)total);
    *B = c.shape[0] - 1;
    *cu = v;
    *maxlen = mx;
    return CFLASH_OK;
}

/* A given bound past the packed rows (total) is no tighter than total: kept as total, so that no
 * kernel loops up to a bound near INT64_MAX. */
static cflash_status check_max(int64_t given, int64_t actual, int64_t total, const char* name,
                               int64_t* out) {
    CFLASH_RETURN_IF(given < 0, INVALID, "%s: %lld, expected >= 0 (0 = from cu_seqlens)", name,
                     (long long)given);
    CFLASH_RETURN_IF(given > 0 && given < actual, INVALID,
                     "%s: %lld, but a sequence has %lld rows; expected >= %lld or 0", name,
                     (long long)given, (long long)actual, (long long)actual);
    *out = given > total ? total : given > 0 ? given : actual;
    return CFLASH_OK;
}

/* Turns a 3-dim varlen view (total, h, d) into the 4-dim (1, total, h, d) kernels expect. */
static void varlen_lift(cf_view* v) {
    cf_view_lift(v);
}

/* ---- Paged K/V and used lengths (block_table, seqused_q, seqused_k) ------------------------ */

/* The rows sequence b has: of q (varlen: from cu_seqlens_q, else Sq) and of k (cu_seqlens_k,
 * else Sk, or when paged without cu_seqlens_k every position its pages hold). */
static int64_t rows_q(const cf_attn_call* c, int64_t b) {
    return c->varlen ? (int64_t)c->cu_q[b + 1] - c->cu_q[b] : c->Sq;
}

/* Pages holding n keys, n >= 0 (no n + page_size - 1: page_size may be near INT64_MAX). */
static int64_t pages_of(int64_t n, int64_t page_size) {
    return n == 0 ? 0 : (n - 1) / page_size + 1;
}

/* Checks the call's block table and used lengths against its B sequences (k's dim 1 is Sk, or
 * the page size when paged) and stores them in c; *mk gets the longest key count when it is not
 * known from cu_seqlens_k. c->varlen, cu_q, cu_k (and Sq in batch mode) must be set. */
static cflash_status check_serving(cf_attn_call* c, const cflash_attn_params* p, int64_t B,
                                   int64_t Sk, int64_t* mk) {
    int64_t capacity = 0; /* positions a sequence's pages hold (paged) */
    if (p->block_table) {
        cf_view bt;
        CFLASH_FORWARD_IF_ERROR(cf_ops_block_table(&bt, p->block_table, B));
        CFLASH_RETURN_IF(Sk < 1, INVALID, "k: page_size (dim 1) = 0, expected >= 1");
        c->block_table = bt.data;
        c->bt_stride = bt.stride[0];
        c->page_size = Sk;
        /* more positions than int64 holds: no length reaches them */
        if (cf_mul_i64(bt.shape[1], Sk, &capacity)) capacity = INT64_MAX;
    }
    const DLTensor* su[2] = {p->seqused_q, p->seqused_k};
    const char* sun[2] = {"seqused_q", "seqused_k"};
    const int32_t** dst[2] = {&c->seqused_q, &c->seqused_k};
    for (int t = 0; t < 2; t++) {
        if (!su[t]) continue;
        cf_view v;
        CFLASH_FORWARD_IF_ERROR(cf_ops_index(&v, su[t], sun[t], B));
        const int32_t* x = v.data;
        for (int64_t b = 0; b < B; b++) {
            int64_t has = t == 0           ? rows_q(c, b)
                          : c->cu_k        ? (int64_t)c->cu_k[b + 1] - c->cu_k[b]
                          : p->block_table ? capacity
                                           : Sk;
            CFLASH_RETURN_IF(x[b] < 0 || x[b] > has, INVALID,
                             "%s[%lld]: %d, expected 0 <= %s <= %lld (the %s sequence %lld has)",
                             sun[t], (long long)b, x[b], sun[t], (long long)has,
                             t == 0                       ? "query rows"
                             : p->block_table && !c->cu_k ? "key positions"
                                                          : "keys",
                             (long long)b);
        }
        *dst[t] = x;
    }
    if (!p->block_table) return CFLASH_OK;
    /* Every page a used key lies in, before anything is read or written. */
    int64_t longest = 0;
    const int64_t num_pages = c->k.shape[0];
    for (int64_t b = 0; b < B; b++) {
        const int64_t n = c->cu_k ? (int64_t)c->cu_k[b + 1] - c->cu_k[b] : 0;
        CFLASH_RETURN_IF(n > capacity, INVALID,
                         "cu_seqlens_k: sequence %lld has %lld keys, more than its %lld pages x "
                         "page_size %lld hold (block_table's max_pages)",
                         (long long)b, (long long)n, (long long)(capacity / c->page_size),
                         (long long)c->page_size);
        const int64_t sk = c->seqused_k ? c->seqused_k[b] : n;
        if (sk > longest) longest = sk;
        for (int64_t g = 0; g < pages_of(sk, c->page_size); g++) {
            const int32_t pg = c->block_table[b * c->bt_stride + g];
            CFLASH_RETURN_IF(pg < 0 || pg >= num_pages, INVALID,
                             "block_table[%lld, %lld]: %d, expected a page index in [0, %lld)",
                             (long long)b, (long long)g, pg, (long long)num_pages);
        }
    }
    if (!c->cu_k) *mk = longest;
    return CFLASH_OK;
}

/* The backward writes each used page row's dk / dv once: a page in two places of the block
 * table (two sequences sharing a prefix) would need its gradients summed. */
static cflash_status check_pages_distinct(const cf_attn_call* c) {
    const int64_t num_pages = c->k.shape[0];
    int64_t* owner = malloc(sizeof(int64_t) * (size_t)(num_pages > 0 ? num_pages : 1));
    CFLASH_RETURN_IF(!owner, CFLASH_ERR_OUT_OF_MEMORY, "block_table: no memory to check %lld pages",
                     (long long)num_pages);
    for (int64_t i = 0; i < num_pages; i++)
        owner[i] = -1;
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        for (int64_t g = 0; g < pages_of(sk, c->page_size); g++) {
            const int32_t pg = c->block_table[b * c->bt_stride + g];
            if (owner[pg] >= 0) {
                const int64_t ob = owner[pg] / (INT64_C(1) << 31),
                              og = owner[pg] % (INT64_C(1) << 31);
                free(owner);
                return cf_error(INVALID,
                                "block_table[%lld, %lld]: page %d is also block_table[%lld, %lld]; "
                                "expected each page in one place for the backward (its dk / dv "
                                "rows are written, not summed)",
                                (long long)b, (long long)g, pg, (long long)ob, (long long)og);
            }
            owner[pg] = b * (INT64_C(1) << 31) + g;
        }
    }
    free(owner);
    return CFLASH_OK;
}

/* Checks q, k, v (and with them B, H, Hk, D, Dv, Sq, Sk or the varlen totals) and the params.
 * On success c holds everything but out/lse/dout/dq/dk/dv. */
static cflash_status check_qkv(cflash_context* ctx, cf_attn_call* c, int varlen, int bwd,
                               const cflash_attn_params* p, const DLTensor* q, const DLTensor* k,
                               const DLTensor* v, const DLTensor* cu_q, const DLTensor* cu_k,
                               int64_t max_q, int64_t max_k) {
    cflash_attn_params defaults;
    if (!p) {
        cflash_attn_params_init(&defaults);
        p = &defaults;
    }
    memset(c, 0, sizeof *c);
    CFLASH_FORWARD_IF_ERROR(cf_attn_check_params(p));
    const int64_t any4[4] = {-1, -1, -1, -1};
    const char* ql = varlen ? "(total_q, H, D)" : "(B, Sq, H, D)";
    const char *kl = varlen ? "(total_k, Hk, D)" : "(B, Sk, Hk, D)",
               *vl = varlen ? "(total_k, Hk, Dv)" : "(B, Sk, Hk, Dv)";
    int nd = varlen ? 3 : 4, o = varlen ? 1 : 0; /* o: index shift of (s, h, d) */
    CFLASH_FORWARD_IF_ERROR(check_shape(&c->q, q, "q", nd, any4, ql));
    CFLASH_FORWARD_IF_ERROR(check_dtype(&c->q, q));
    CFLASH_FORWARD_IF_ERROR(check_same(&c->q, "q", &c->q, "q"));
    int64_t B = varlen ? -1 : c->q.shape[0];
    int64_t H = c->q.shape[2 - o], D = c->q.shape[3 - o];
    CFLASH_RETURN_IF(D < 1, INVALID, "q: head dim D = 0, expected >= 1");
    CFLASH_RETURN_IF(H < 1, INVALID, "q: heads H = 0, expected >= 1");
    /* Paged K/V (varlen only): k, v are (num_pages, page_size, Hk, D / Dv), 4 dims. */
    CFLASH_RETURN_IF(!varlen && p->block_table, INVALID,
                     "block_table: given to a batch-mode call, expected NULL (paged K/V is for "
                     "the varlen call; a paged KV cache goes to cflash_attn_kvcache_fwd)");
    const int paged = p->block_table != NULL;
    const int knd = paged ? 4 : nd, ko = paged ? 0 : o;
    if (paged) kl = "(num_pages, page_size, Hk, D)", vl = "(num_pages, page_size, Hk, Dv)";
    int64_t wk[4] = {B, -1, -1, D};
    CFLASH_FORWARD_IF_ERROR(check_shape(&c->k, k, "k", knd, varlen && !paged ? wk + 1 : wk, kl));
    CFLASH_FORWARD_IF_ERROR(check_same(&c->k, "k", &c->q, "q"));
    int64_t Sk = c->k.shape[1 - ko], Hk = c->k.shape[2 - ko];
    CFLASH_RETURN_IF(Hk < 1 || H % Hk != 0, INVALID,
                     "k: %lld heads, expected a divisor of the %lld heads of q (GQA/MQA)",
                     (long long)Hk, (long long)H);
    int64_t wv[4] = {paged ? c->k.shape[0] : B, Sk, Hk, -1};
    CFLASH_FORWARD_IF_ERROR(check_shape(&c->v, v, "v", knd, varlen && !paged ? wv + 1 : wv, vl));
    CFLASH_FORWARD_IF_ERROR(check_same(&c->v, "v", &c->q, "q"));
    int64_t Dv = c->v.shape[3 - ko];
    CFLASH_RETURN_IF(Dv < 1, INVALID, "v: head dim Dv = 0, expected >= 1");

    c->varlen = varlen;
    if (varlen) {
        int64_t mq = 0, mk = 0;
        c->total_q = c->q.shape[0];
        c->total_k = paged ? 0 : c->k.shape[0];
        CFLASH_FORWARD_IF_ERROR(check_cu(cu_q, "cu_seqlens_q", c->total_q, "total_q", &B, &c->cu_q,
                                         &mq, &c->cu_q_dev, &c->cu_host[0], &c->q));
        /* paged: cu_seqlens_k counts keys (not rows of k), bounded by each sequence's pages */
        if (cu_k || !paged || !p->seqused_k)
            CFLASH_FORWARD_IF_ERROR(check_cu(cu_k, "cu_seqlens_k", paged ? INT64_MAX : c->total_k,
                                             "total_k", &B, &c->cu_k, &mk, &c->cu_k_dev,
                                             &c->cu_host[1], &c->q));
        CFLASH_FORWARD_IF_ERROR(check_serving(c, p, B, Sk, &mk));
        CFLASH_FORWARD_IF_ERROR(check_max(max_q, mq, c->total_q, "max_seqlen_q", &c->Sq));
        CFLASH_FORWARD_IF_ERROR(
            check_max(max_k, mk, paged ? INT64_MAX : c->total_k, "max_seqlen_k", &c->Sk));
        varlen_lift(&c->q);
        if (!paged) varlen_lift(&c->k), varlen_lift(&c->v);
    } else {
        c->Sq = c->q.shape[1];
        c->Sk = Sk;
        int64_t mk = Sk;
        CFLASH_FORWARD_IF_ERROR(check_serving(c, p, B, Sk, &mk));
    }
    c->B = B;
    c->H = H;
    c->Hk = Hk;
    c->D = D;
    c->Dv = Dv;
    c->dtype = c->q.dtype;
    c->device_type = c->q.device_type;
    c->device_id = c->q.device_id;
    CFLASH_FORWARD_IF_ERROR(cf_attn_apply_params(c, p));
    CFLASH_FORWARD_IF_ERROR(check_features(c, p, bwd));
    /* Small calls run on one thread (core/threads.h); the backward does about 2.5x the flops. */
    c->threads = cf_threads_resolve(bwd ? "attn_bwd" : "attn_fwd", cf_context_threads(ctx),
                                    (bwd ? 2.5 : 1.0) * cf_attn_flops(c), 1);
    c->stream = ctx ? ctx->cuda_stream : NULL;
    return CFLASH_OK;
}

/* Checks a (B, Sq, H, Dv)-like output or gradient against q's layout. */
static cflash_status check_like(cf_view* dst, const DLTensor* t, const char* name,
                                const cf_attn_call* c, int64_t s, int64_t h, int64_t d,
                                const char* layout) {
    int64_t want[4] = {c->varlen ? -1 : c->B, s, h, d};
    int nd = c->varlen ? 3 : 4;
    CFLASH_FORWARD_IF_ERROR(check_shape(dst, t, name, nd, c->varlen ? want + 1 : want, layout));
    CFLASH_FORWARD_IF_ERROR(check_same(dst, name, &c->q, "q"));
    if (c->varlen) varlen_lift(dst);
    return CFLASH_OK;
}

static cflash_status check_lse_for(cf_attn_call* c, const DLTensor* lse) {
    if (c->varlen) {
        int64_t want[2] = {c->H, c->total_q};
        CFLASH_FORWARD_IF_ERROR(check_lse(&c->lse, lse, &c->q, 2, want, "(H, total_q)"));
        c->lse.shape[2] = c->lse.shape[1], c->lse.stride[2] = c->lse.stride[1];
        c->lse.shape[1] = c->lse.shape[0], c->lse.stride[1] = c->lse.stride[0];
        c->lse.shape[0] = 1, c->lse.stride[0] = 0;
        c->lse.ndim = 3;
    } else {
        int64_t want[3] = {c->B, c->H, c->Sq};
        CFLASH_FORWARD_IF_ERROR(check_lse(&c->lse, lse, &c->q, 3, want, "(B, H, Sq)"));
    }
    return CFLASH_OK;
}

/* The call's outputs apart from its inputs and from each other (cf_check_apart): forward out,
 * lse; backward dq, dk, dv, dbias, whose inputs include out, dout and lse. */
static cflash_status check_apart(const cf_attn_call* c, int bwd) {
    const cf_view* in[] = {&c->q,      &c->k,      &c->v,   &c->bias, &c->mask,
                           &c->bs_num, &c->bs_idx, &c->out, &c->dout, &c->lse};
    const char* in_name[] = {
        "q",   "k",    "v",  "bias", "mask", "block-sparse num", "block-sparse idx",
        "out", "dout", "lse"};
    const cf_view* out[] = {&c->out, &c->lse, NULL, NULL};
    const char* out_name[] = {"out", "lse", NULL, NULL};
    if (bwd)
        out[0] = &c->dq, out[1] = &c->dk, out[2] = &c->dv, out[3] = &c->dbias, out_name[0] = "dq",
        out_name[1] = "dk", out_name[2] = "dv", out_name[3] = "dbias";
    /* (the forward's out and lse are its outputs) */
    return cf_check_outputs_apart(out, out_name, bwd ? 4 : 2, in, in_name, bwd ? 10 : 7, 0);
}

/* ---- Entry points ------------------------------------------------------------------------- */
/* The batch and varlen calls share one body each; every public function returns through
 * cf_context_end_call (explain mode). */

/* The call's own memory (check_cu's host copies), after the call or its error. */
static cflash_status call_done(cf_attn_call* c, cflash_status st) {
    free(c->cu_host[0]);
    free(c->cu_host[1]);
    return st;
}

static cflash_status attn_fwd_in(cflash_context* ctx, cf_attn_call* c, int varlen,
                                 const cflash_attn_params* p, const DLTensor* q, const DLTensor* k,
                                 const DLTensor* v, const DLTensor* cu_q, const DLTensor* cu_k,
                                 int64_t max_q, int64_t max_k, DLTensor* out, DLTensor* lse) {
    CFLASH_FORWARD_IF_ERROR(check_qkv(ctx, c, varlen, 0, p, q, k, v, cu_q, cu_k, max_q, max_k));
    const char* ol = varlen ? "(total_q, H, Dv)" : "(B, Sq, H, Dv)";
    CFLASH_FORWARD_IF_ERROR(
        check_like(&c->out, out, "out", c, varlen ? c->total_q : c->Sq, c->H, c->Dv, ol));
    if (lse) CFLASH_FORWARD_IF_ERROR(check_lse_for(c, lse));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(out, "out"));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(lse, "lse"));
    CFLASH_FORWARD_IF_ERROR(check_apart(c, 0));
    cflash_op op = varlen ? CFLASH_OP_ATTN_VARLEN_FWD : CFLASH_OP_ATTN_FWD;
    return cf_context_dispatch(ctx, op, c->device_type, c,
                               c->B == 0 || (varlen ? c->total_q : c->Sq) == 0);
}

static cflash_status attn_bwd_in(cflash_context* ctx, cf_attn_call* c, int varlen,
                                 const cflash_attn_params* p, const DLTensor* dout,
                                 const DLTensor* q, const DLTensor* k, const DLTensor* v,
                                 const DLTensor* out, const DLTensor* lse, const DLTensor* cu_q,
                                 const DLTensor* cu_k, int64_t max_q, int64_t max_k, DLTensor* dq,
                                 DLTensor* dk, DLTensor* dv) {
    CFLASH_FORWARD_IF_ERROR(check_qkv(ctx, c, varlen, 1, p, q, k, v, cu_q, cu_k, max_q, max_k));
    int64_t sq = varlen ? c->total_q : c->Sq, sk = varlen ? c->total_k : c->Sk;
    const char* ol = varlen ? "(total_q, H, Dv)" : "(B, Sq, H, Dv)";
    CFLASH_FORWARD_IF_ERROR(check_like(&c->dout, dout, "dout", c, sq, c->H, c->Dv, ol));
    CFLASH_FORWARD_IF_ERROR(check_like(&c->out, out, "out", c, sq, c->H, c->Dv, ol));
    CFLASH_RETURN_IF(!lse, INVALID,
                     "lse: is NULL, expected the forward's lse (the backward "
                     "recomputes the scores from it)");
    CFLASH_FORWARD_IF_ERROR(check_lse_for(c, lse));
    CFLASH_FORWARD_IF_ERROR(check_like(&c->dq, dq, "dq", c, sq, c->H, c->D,
                                       varlen ? "(total_q, H, D)" : "(B, Sq, H, D)"));
    if (c->block_table) { /* dk, dv: pages like k, v */
        const int64_t wk[4] = {c->k.shape[0], c->page_size, c->Hk, c->D},
                      wv[4] = {c->k.shape[0], c->page_size, c->Hk, c->Dv};
        CFLASH_FORWARD_IF_ERROR(
            check_shape(&c->dk, dk, "dk", 4, wk, "(num_pages, page_size, Hk, D), like k"));
        CFLASH_FORWARD_IF_ERROR(check_same(&c->dk, "dk", &c->q, "q"));
        CFLASH_FORWARD_IF_ERROR(
            check_shape(&c->dv, dv, "dv", 4, wv, "(num_pages, page_size, Hk, Dv), like v"));
        CFLASH_FORWARD_IF_ERROR(check_same(&c->dv, "dv", &c->q, "q"));
        CFLASH_FORWARD_IF_ERROR(check_pages_distinct(c));
    } else {
        CFLASH_FORWARD_IF_ERROR(check_like(&c->dk, dk, "dk", c, sk, c->Hk, c->D,
                                           varlen ? "(total_k, Hk, D)" : "(B, Sk, Hk, D)"));
        CFLASH_FORWARD_IF_ERROR(check_like(&c->dv, dv, "dv", c, sk, c->Hk, c->Dv,
                                           varlen ? "(total_k, Hk, Dv)" : "(B, Sk, Hk, Dv)"));
    }
    CFLASH_FORWARD_IF_ERROR(cf_check_output(dq, "dq"));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(dk, "dk"));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(dv, "dv"));
    CFLASH_FORWARD_IF_ERROR(check_apart(c, 1));
    cflash_op op = varlen ? CFLASH_OP_ATTN_VARLEN_BWD : CFLASH_OP_ATTN_BWD;
    /* nothing to write without queries and keys (the other dims of empty views may be huge) */
    return cf_context_dispatch(ctx, op, c->device_type, c, c->B == 0 || (sq == 0 && sk == 0));
}

static cflash_status attn_fwd(cflash_context* ctx, int varlen, const cflash_attn_params* p,
                              const DLTensor* q, const DLTensor* k, const DLTensor* v,
                              const DLTensor* cu_q, const DLTensor* cu_k, int64_t max_q,
                              int64_t max_k, DLTensor* out, DLTensor* lse) {
    cf_attn_call c = {0};
    return call_done(&c,
                     attn_fwd_in(ctx, &c, varlen, p, q, k, v, cu_q, cu_k, max_q, max_k, out, lse));
}

static cflash_status attn_bwd(cflash_context* ctx, int varlen, const cflash_attn_params* p,
                              const DLTensor* dout, const DLTensor* q, const DLTensor* k,
                              const DLTensor* v, const DLTensor* out, const DLTensor* lse,
                              const DLTensor* cu_q, const DLTensor* cu_k, int64_t max_q,
                              int64_t max_k, DLTensor* dq, DLTensor* dk, DLTensor* dv) {
    cf_attn_call c = {0};
    return call_done(&c, attn_bwd_in(ctx, &c, varlen, p, dout, q, k, v, out, lse, cu_q, cu_k, max_q,
                                     max_k, dq, dk, dv));
}

cflash_status cflash_attn_fwd(cflash_context* ctx, const cflash_attn_params* p, const DLTensor* q,
                              const DLTensor* k, const DLTensor* v, DLTensor* out, DLTensor* lse) {
    return cf_context_end_call(ctx, attn_fwd(ctx, 0, p, q, k, v, NULL, NULL, 0, 0, out, lse));
}

cflash_status cflash_attn_bwd(cflash_context* ctx, const cflash_attn_params* p,
                              const DLTensor* dout, const DLTensor* q, const DLTensor* k,
                              const DLTensor* v, const DLTensor* out, const DLTensor* lse,
                              DLTensor* dq, DLTensor* dk, DLTensor* dv) {
    return cf_context_end_call(
        ctx, attn_bwd(ctx, 0, p, dout, q, k, v, out, lse, NULL, NULL, 0, 0, dq, dk, dv));
}

cflash_status cflash_attn_varlen_fwd(cflash_context* ctx, const cflash_attn_params* p,
                                     const DLTensor* q, const DLTensor* k, const DLTensor* v,
                                     const DLTensor* cu_seqlens_q, const DLTensor* cu_seqlens_k,
                                     int64_t max_seqlen_q, int64_t max_seqlen_k, DLTensor* out,
                                     DLTensor* lse) {
    return cf_context_end_call(ctx, attn_fwd(ctx, 1, p, q, k, v, cu_seqlens_q, cu_seqlens_k,
                                             max_seqlen_q, max_seqlen_k, out, lse));
}

cflash_status cflash_attn_varlen_bwd(cflash_context* ctx, const cflash_attn_params* p,
                                     const DLTensor* dout, const DLTensor* q, const DLTensor* k,
                                     const DLTensor* v, const DLTensor* out, const DLTensor* lse,
                                     const DLTensor* cu_seqlens_q, const DLTensor* cu_seqlens_k,
                                     int64_t max_seqlen_q, int64_t max_seqlen_k, DLTensor* dq,
                                     DLTensor* dk, DLTensor* dv) {
    return cf_context_end_call(ctx, attn_bwd(ctx, 1, p, dout, q, k, v, out, lse, cu_seqlens_q,
                                             cu_seqlens_k, max_seqlen_q, max_seqlen_k, dq, dk, dv));
}

/* ---- Dropout mask ------------------------------------------------------------------------- */

#include "core/philox.h"

cflash_status cflash_attn_dropout_mask(const cflash_attn_params* p, DLTensor* mask) {
    CFLASH_RETURN_IF(!p, INVALID, "p: is NULL, expected the attention params");
    CFLASH_FORWARD_IF_ERROR(cf_attn_check_params(p));
    cf_view m;
    const int64_t any4[4] = {-1, -1, -1, -1};
    CFLASH_FORWARD_IF_ERROR(check_shape(&m, mask, "mask", 4, any4, "(B, H, Sq, Sk)"));
    CFLASH_RETURN_IF(m.dtype != CF_U8, INVALID, "mask: dtype %s, expected uint8",
                     cf_dtype_name(m.dtype));
    CFLASH_RETURN_IF(m.device_type != kDLCPU, INVALID, "mask: on %s, expected cpu",
                     cf_device_name(m.device_type));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(mask, "mask"));
    CFLASH_FORWARD_IF_ERROR(check_offset(p->q_offset, m.shape[2], "q_offset", "Sq"));
    CFLASH_FORWARD_IF_ERROR(check_offset(p->k_offset, m.shape[3], "k_offset", "Sk"));
    if (cf_view_numel(&m) == 0) return CFLASH_OK; /* (the other dims may be huge) */
    const uint64_t qo = (uint64_t)p->q_offset, ko = (uint64_t)p->k_offset;
    uint8_t* d = m.data;
    for (int64_t b = 0; b < m.shape[0]; b++)
        for (int64_t h = 0; h < m.shape[1]; h++)
            for (int64_t i = 0; i < m.shape[2]; i++)
                for (int64_t j = 0; j < m.shape[3]; j++)
                    d[b * m.stride[0] + h * m.stride[1] + i * m.stride[2] + j * m.stride[3]] =
                        (uint8_t)cf_dropout_keep(p->seed, p->offset, p->dropout_p, (uint64_t)b,
                                                 (uint64_t)h, (uint64_t)i + qo, (uint64_t)j + ko);
    return CFLASH_OK;
}
