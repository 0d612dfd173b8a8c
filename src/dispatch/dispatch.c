/* cf_dispatch: the one function that picks the implementation for a call, used both to run and to
 * explain. Reasons for every implementation passed over are kept for the error message, logged
 * once per distinct reason at CFLASH_LOG=info, and written out by cflash_explain. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "core/status.h"
#include "core/tensor.h"
#include "dispatch/dispatch.h"

static const char* const op_names[CFLASH_OP_COUNT] = {
    [CFLASH_OP_ATTN_FWD] = "attn_fwd",         [CFLASH_OP_ATTN_BWD] = "attn_bwd",
    [CFLASH_OP_ATTN_VARLEN_FWD] = "attn_varlen_fwd",
    [CFLASH_OP_ATTN_VARLEN_BWD] = "attn_varlen_bwd",
    [CFLASH_OP_KVCACHE_FWD] = "kvcache_fwd",   [CFLASH_OP_ATTN_MERGE] = "attn_merge",
    [CFLASH_OP_ROTARY] = "rotary",             [CFLASH_OP_NORM_FWD] = "norm_fwd",
    [CFLASH_OP_NORM_BWD] = "norm_bwd",
};

const char* cflash_op_name(cflash_op op) {
    return (unsigned)op < CFLASH_OP_COUNT ? op_names[op] : NULL;
}

/* Appends a printf-formatted line to an explain buffer, truncating quietly. */
static void explain_line(cf_explain* e, const char* fmt, ...) {
    if (!e || !e->buf || e->len == 0) return;
    size_t used = strlen(e->buf);
    if (used + 1 >= e->len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->buf + used, e->len - used, fmt, ap);
    va_end(ap);
    used = strlen(e->buf);
    if (used + 1 < e->len) strcat(e->buf, "\n");
}

static void append(char* dst, size_t cap, const char* fmt, ...) {
    size_t used = strlen(dst);
    if (used + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst + used, cap - used, fmt, ap);
    va_end(ap);
}

cflash_status cf_dispatch(cflash_op op, int device_type, const char* forced, const void* call,
                          cf_explain* explain) {
    size_t n = 0;
    const cf_impl* const* impls = cf_impls_for(op, &n);
    const char* opname = cflash_op_name(op);
    if (explain && explain->buf && explain->len) explain->buf[0] = 0;
    if (forced && !cf_backend_known(forced))
        return cf_error(CFLASH_ERR_INVALID_ARGUMENT,
                        "backend: '%s' (from the context or CFLASH_BACKEND) is not a backend name",
                        forced);

    char reasons[1536] = "";
    char serving[256] = "";
    const cf_impl* chosen = NULL;
    int forced_seen = 0;
    for (size_t i = 0; i < n; i++) {
        const cf_impl* im = impls[i];
        char why[256] = "";
        int ok;
        if (im->device_type != device_type) {
            snprintf(why, sizeof why, "serves %s tensors, these are on %s",
                     cf_device_name(im->device_type), cf_device_name(device_type));
            ok = 0;
        } else if (im->available && !im->available(why, sizeof why)) {
            ok = 0;
        } else {
            ok = im->supports ? im->supports(call, why, sizeof why) : 1;
            if (!ok && !why[0]) snprintf(why, sizeof why, "cannot serve this call");
        }
        int is_forced = forced && !strcmp(forced, im->backend);
        forced_seen |= is_forced;
        if (ok) append(serving, sizeof serving, "%s%s", serving[0] ? ", " : "", im->backend);
        if (forced && !is_forced) continue;
        if (ok && !chosen) {
            chosen = im;
            explain_line(explain, "%s: OKAY", im->backend);
            if (!explain) cf_log(CF_LOG_DEBUG, "%s: %s serves", opname, im->backend);
        } else if (!ok) {
            explain_line(explain, "%s: NO: %s", im->backend, why);
            append(reasons, sizeof reasons, "%s%s: %s", reasons[0] ? "; " : "", im->backend, why);
            if (!explain && device_type == im->device_type)
                cf_log_once(CF_LOG_INFO, "%s: %s passed over: %s", opname, im->backend, why);
        }
    }
    if (!chosen) {
        explain_line(explain, "-> none");
        if (forced && !forced_seen)
            return cf_error(CFLASH_ERR_UNSUPPORTED,
                            "%s: backend '%s' is forced but does not implement %s in this build%s%s",
                            opname, forced, opname, serving[0] ? "; backends that could: " : "",
                            serving);
        if (forced)
            return cf_error(CFLASH_ERR_UNSUPPORTED,
                            "%s: forced backend cannot serve: %s%s%s", opname, reasons,
                            serving[0] ? "; backends that could: " : "; no backend could",
                            serving);
        return cf_error(CFLASH_ERR_UNSUPPORTED, "%s: no backend can serve: %s", opname, reasons);
    }
    explain_line(explain, "-> %s", chosen->backend);
    if (explain) return CFLASH_OK;
    return chosen->run(call);
}
