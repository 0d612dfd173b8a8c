/* cflash_explain: runs an op's own entry point with an explain sink, so the answer comes from the
 * same validation and selection code as the real call. */
#include <stdarg.h>
#include <stdio.h>

#include "api/attn_api.h"
#include "api/ops_api.h"
#include "core/status.h"
#include "dispatch/dispatch.h"

#define ARG(T) va_arg(ap, T)

cflash_status cflash_explain(cflash_context* ctx, cflash_op op, char* buf, size_t buf_len, ...) {
    CFLASH_RETURN_IF(!buf || buf_len == 0, CFLASH_ERR_INVALID_ARGUMENT,
                     "buf: NULL or empty, expected a buffer for the explanation");
    buf[0] = 0;
    cf_explain e = {buf, buf_len};
    cflash_status s = CFLASH_ERR_INVALID_ARGUMENT;
    va_list ap;
    va_start(ap, buf_len);
    switch (op) {
    case CFLASH_OP_ATTN_FWD: {
        const cflash_attn_params* p = ARG(const cflash_attn_params*);
        const DLTensor *q = ARG(const DLTensor*), *k = ARG(const DLTensor*),
                       *v = ARG(const DLTensor*);
        DLTensor *out = ARG(DLTensor*), *lse = ARG(DLTensor*);
        s = cf_attn_fwd_entry(ctx, &e, 0, p, q, k, v, NULL, NULL, 0, 0, out, lse);
        break;
    }
    case CFLASH_OP_ATTN_BWD: {
        const cflash_attn_params* p = ARG(const cflash_attn_params*);
        const DLTensor *dout = ARG(const DLTensor*), *q = ARG(const DLTensor*),
                       *k = ARG(const DLTensor*), *v = ARG(const DLTensor*),
                       *out = ARG(const DLTensor*), *lse = ARG(const DLTensor*);
        DLTensor *dq = ARG(DLTensor*), *dk = ARG(DLTensor*), *dv = ARG(DLTensor*);
        s = cf_attn_bwd_entry(ctx, &e, 0, p, dout, q, k, v, out, lse, NULL, NULL, 0, 0, dq, dk, dv);
        break;
    }
    case CFLASH_OP_ATTN_VARLEN_FWD: {
        const cflash_attn_params* p = ARG(const cflash_attn_params*);
        const DLTensor *q = ARG(const DLTensor*), *k = ARG(const DLTensor*),
                       *v = ARG(const DLTensor*), *cq = ARG(const DLTensor*),
                       *ck = ARG(const DLTensor*);
        int64_t mq = ARG(int64_t), mk = ARG(int64_t);
        DLTensor *out = ARG(DLTensor*), *lse = ARG(DLTensor*);
        s = cf_attn_fwd_entry(ctx, &e, 1, p, q, k, v, cq, ck, mq, mk, out, lse);
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
        s = cf_attn_bwd_entry(ctx, &e, 1, p, dout, q, k, v, out, lse, cq, ck, mq, mk, dq, dk, dv);
        break;
    }
    /* CFLASH-OPS-EXPLAIN: cases of the ops issue go here. */
    case CFLASH_OP_ROTARY: {
        const cflash_rotary_params* p = ARG(const cflash_rotary_params*);
        const DLTensor *x = ARG(const DLTensor*), *cos = ARG(const DLTensor*),
                       *sin = ARG(const DLTensor*);
        DLTensor* out = ARG(DLTensor*);
        s = cf_rotary_entry(ctx, &e, p, x, cos, sin, out);
        break;
    }
    case CFLASH_OP_NORM_FWD: {
        const cflash_norm_params* p = ARG(const cflash_norm_params*);
        const DLTensor *x = ARG(const DLTensor*), *res = ARG(const DLTensor*),
                       *w = ARG(const DLTensor*), *bias = ARG(const DLTensor*);
        DLTensor *out = ARG(DLTensor*), *res_out = ARG(DLTensor*), *mean = ARG(DLTensor*),
                 *rstd = ARG(DLTensor*);
        s = cf_norm_fwd_entry(ctx, &e, p, x, res, w, bias, out, res_out, mean, rstd);
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
        s = cf_norm_bwd_entry(ctx, &e, p, dy, x, w, bias, mean, rstd, dres_out, dx, dw, db, dres);
        break;
    }
    case CFLASH_OP_KVCACHE_FWD: {
        const cflash_attn_params* p = ARG(const cflash_attn_params*);
        const cflash_kvcache_params* kp = ARG(const cflash_kvcache_params*);
        const DLTensor* q = ARG(const DLTensor*);
        DLTensor *kc = ARG(DLTensor*), *vc = ARG(DLTensor*), *out = ARG(DLTensor*),
                 *lse = ARG(DLTensor*);
        s = cf_kvcache_entry(ctx, &e, p, kp, q, kc, vc, out, lse);
        break;
    }
    case CFLASH_OP_ATTN_MERGE: {
        const DLTensor *op = ARG(const DLTensor*), *lp = ARG(const DLTensor*);
        DLTensor *out = ARG(DLTensor*), *lse = ARG(DLTensor*);
        s = cf_merge_entry(ctx, &e, op, lp, out, lse);
        break;
    }
    default:
        s = cf_error(CFLASH_ERR_INVALID_ARGUMENT, "op: %d, expected a cflash_op below %d", (int)op,
                     (int)CFLASH_OP_COUNT);
    }
    va_end(ap);
    /* A call rejected before selection (bad argument) still gets an answer in buf. */
    if (s != CFLASH_OK && !buf[0])
        snprintf(buf, buf_len, "not dispatched: %s: %s\n-> none\n", cflash_status_string(s),
                 cflash_last_error());
    return s;
}
