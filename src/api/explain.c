/* Explain mode on a context: the next op call is validated and dispatched as for real, with the
 * dispatcher writing its choice into the context's sink instead of running a kernel. Every op
 * passes through cf_context_dispatch and returns through cf_context_end_call, so an explained call
 * and a real one share all their code. */
#include <stdarg.h>
#include <stdio.h>

#include "api/context.h"
#include "core/status.h"

cflash_status cflash_context_set_explain(cflash_context* ctx, char* buf, size_t len) {
    CFLASH_RETURN_IF(!ctx, CFLASH_ERR_INVALID_ARGUMENT,
                     "ctx: is NULL, expected a context (explain mode belongs to one; a call made "
                     "with ctx = NULL is never explained)");
    if (!buf || len == 0) {
        ctx->explain = (cf_explain){NULL, 0};
        return CFLASH_OK;
    }
    buf[0] = 0;
    ctx->explain = (cf_explain){buf, len};
    return CFLASH_OK;
}

cflash_status cf_context_dispatch(cflash_context* ctx, cflash_op op, int device_type,
                                  const void* call, int empty) {
    cf_explain* e = ctx && ctx->explain.buf ? &ctx->explain : NULL;
    if (!e && empty) return CFLASH_OK;
    return cf_dispatch(op, device_type, cf_context_backend(ctx), call, e);
}

cflash_status cf_context_end_call(cflash_context* ctx, cflash_status s) {
    if (!ctx || !ctx->explain.buf) return s;
    cf_explain* e = &ctx->explain;
    /* The dispatcher always writes a "-> " line: an empty buffer means it was never reached. */
    if (s != CFLASH_OK && !e->buf[0])
        snprintf(e->buf, e->len, "not dispatched: %s: %s\n-> none\n", cflash_status_string(s),
                 cflash_last_error());
    ctx->explain = (cf_explain){NULL, 0};
    return s;
}

/* ---- cflash_explain (variadic), kept over the explain mode until its callers move ---------- */

#define ARG(T) va_arg(ap, T)

cflash_status cflash_explain(cflash_context* ctx, cflash_op op, char* buf, size_t buf_len, ...) {
    CFLASH_RETURN_IF(!buf || buf_len == 0, CFLASH_ERR_INVALID_ARGUMENT,
                     "buf: NULL or empty, expected a buffer for the explanation");
    buf[0] = 0;
    cflash_context* own = NULL;
    if (!ctx) {
        CFLASH_FORWARD_IF_ERROR(cflash_context_create(&own));
        ctx = own;
    }
    CFLASH_FORWARD_IF_ERROR(cflash_context_set_explain(ctx, buf, buf_len));
    cflash_status s = CFLASH_ERR_INVALID_ARGUMENT;
    va_list ap;
    va_start(ap, buf_len);
    switch (op) {
    case CFLASH_OP_ATTN_FWD: {
        const cflash_attn_params* p = ARG(const cflash_attn_params*);
        const DLTensor *q = ARG(const DLTensor*), *k = ARG(const DLTensor*),
                       *v = ARG(const DLTensor*);
        DLTensor *out = ARG(DLTensor*), *lse = ARG(DLTensor*);
        s = cflash_attn_fwd(ctx, p, q, k, v, out, lse);
        break;
    }
    case CFLASH_OP_ATTN_BWD: {
        const cflash_attn_params* p = ARG(const cflash_attn_params*);
        const DLTensor *dout = ARG(const DLTensor*), *q = ARG(const DLTensor*),
                       *k = ARG(const DLTensor*), *v = ARG(const DLTensor*),
                       *out = ARG(const DLTensor*), *lse = ARG(const DLTensor*);
        DLTensor *dq = ARG(DLTensor*), *dk = ARG(DLTensor*), *dv = ARG(DLTensor*);
        s = cflash_attn_bwd(ctx, p, dout, q, k, v, out, lse, dq, dk, dv);
        break;
    }
    case CFLASH_OP_ATTN_VARLEN_FWD: {
        const cflash_attn_params* p = ARG(const cflash_attn_params*);
        const DLTensor *q = ARG(const DLTensor*), *k = ARG(const DLTensor*),
                       *v = ARG(const DLTensor*), *cq = ARG(const DLTensor*),
                       *ck = ARG(const DLTensor*);
        int64_t mq = ARG(int64_t), mk = ARG(int64_t);
        DLTensor *out = ARG(DLTensor*), *lse = ARG(DLTensor*);
        s = cflash_attn_varlen_fwd(ctx, p, q, k, v, cq, ck, mq, mk, out, lse);
        break;
    }
    case CFLASH_OP_ATTN_VARLEN_BWD: {
        const cflash_attn_params* p = ARG(const cflash_attn_params*);
        const DLTensor *dout = ARG(const DLTensor*), *q = ARG(const DLTensor*),
                       *k = ARG(const DLTensor*), *v = ARG(const DLTensor*),
                       *out = ARG(const DLTensor*), *lse = ARG(const DLTensor*),
                       *cq = ARG(const DLTensor*), *ck = ARG(const DLTensor*);
        int64_t mq = ARG(int64_t), mk = ARG(int64_t);
        DLTensor *dq = ARG(DLTensor*), *dk = ARG(DLTensor*), *dv = ARG(DLTensor*);
        s = cflash_attn_varlen_bwd(ctx, p, dout, q, k, v, out, lse, cq, ck, mq, mk, dq, dk, dv);
        break;
    }
    case CFLASH_OP_ROTARY: {
        const cflash_rotary_params* p = ARG(const cflash_rotary_params*);
        const DLTensor *x = ARG(const DLTensor*), *cos = ARG(const DLTensor*),
                       *sin = ARG(const DLTensor*);
        DLTensor* out = ARG(DLTensor*);
        s = cflash_rotary_apply(ctx, p, x, cos, sin, out);
        break;
    }
    case CFLASH_OP_NORM_FWD: {
        const cflash_norm_params* p = ARG(const cflash_norm_params*);
        const DLTensor *x = ARG(const DLTensor*), *res = ARG(const DLTensor*),
                       *w = ARG(const DLTensor*), *bias = ARG(const DLTensor*);
        DLTensor *out = ARG(DLTensor*), *res_out = ARG(DLTensor*), *mean = ARG(DLTensor*),
                 *rstd = ARG(DLTensor*);
        s = cflash_norm_fwd(ctx, p, x, res, w, bias, out, res_out, mean, rstd);
        break;
    }
    case CFLASH_OP_NORM_BWD: {
        const cflash_norm_params* p = ARG(const cflash_norm_params*);
        const DLTensor *dy = ARG(const DLTensor*), *x = ARG(const DLTensor*),
                       *w = ARG(const DLTensor*), *bias = ARG(const DLTensor*),
                       *mean = ARG(const DLTensor*), *rstd = ARG(const DLTensor*),
                       *dres_out = ARG(const DLTensor*);
        DLTensor *dx = ARG(DLTensor*), *dw = ARG(DLTensor*), *db = ARG(DLTensor*),
                 *dres = ARG(DLTensor*);
        s = cflash_norm_bwd(ctx, p, dy, x, w, bias, mean, rstd, dres_out, dx, dw, db, dres);
        break;
    }
    case CFLASH_OP_KVCACHE_FWD: {
        const cflash_attn_params* p = ARG(const cflash_attn_params*);
        const cflash_kvcache_params* kp = ARG(const cflash_kvcache_params*);
        const DLTensor* q = ARG(const DLTensor*);
        DLTensor *kc = ARG(DLTensor*), *vc = ARG(DLTensor*), *out = ARG(DLTensor*),
                 *lse = ARG(DLTensor*);
        s = cflash_attn_kvcache_fwd(ctx, p, kp, q, kc, vc, out, lse);
        break;
    }
    case CFLASH_OP_ATTN_MERGE: {
        const DLTensor *op = ARG(const DLTensor*), *lp = ARG(const DLTensor*);
        DLTensor *out = ARG(DLTensor*), *lse = ARG(DLTensor*);
        s = cflash_attn_merge(ctx, op, lp, out, lse);
        break;
    }
    default:
        s = cf_context_end_call(ctx, cf_error(CFLASH_ERR_INVALID_ARGUMENT,
                                              "op: %d, expected a cflash_op below %d", (int)op,
                                              (int)CFLASH_OP_COUNT));
    }
    va_end(ap);
    cflash_context_free(own);
    return s;
}
