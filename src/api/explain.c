/* Explain mode on a context: the next op call is validated and dispatched as for real, with the
 * dispatcher writing its choice into the context's sink instead of running a kernel. Every op
 * passes through cf_context_dispatch and returns through cf_context_end_call, so an explained call
 * and a real one share all their code. */
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
