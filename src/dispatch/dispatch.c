/* cf_dispatch: the one function that picks the implementation for a call, used both to run and to
 * explain. Reasons for every implementation passed over are kept for the error message, logged
 * once per distinct reason at CFLASH_LOG=info, and written out in explain mode. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "core/status.h"
#include "core/strbuf.h"
#include "core/tensor.h"
#include "dispatch/dispatch.h"

static const char* const op_names[CFLASH_OP_COUNT] = {
    [CFLASH_OP_ATTN_FWD] = "attn_fwd",
    [CFLASH_OP_ATTN_BWD] = "attn_bwd",
    [CFLASH_OP_ATTN_VARLEN_FWD] = "attn_varlen_fwd",
    [CFLASH_OP_ATTN_VARLEN_BWD] = "attn_varlen_bwd",
    [CFLASH_OP_KVCACHE_FWD] = "kvcache_fwd",
    [CFLASH_OP_ATTN_MERGE] = "attn_merge",
    [CFLASH_OP_ROTARY] = "rotary",
    [CFLASH_OP_NORM_FWD] = "norm_fwd",
    [CFLASH_OP_NORM_BWD] = "norm_bwd",
};

const char* cflash_op_name(cflash_op op) {
    return (unsigned)op < CFLASH_OP_COUNT ? op_names[op] : NULL;
}

/* Appends a printf-formatted line to an explain buffer, truncating quietly. */
static void explain_line(cf_explain* e, const char* fmt, ...) {
    if (!e || !e->buf || e->len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    cf_vstrcatf(e->buf, e->len, fmt, ap);
    va_end(ap);
    cf_strcatf(e->buf, e->len, "\n");
}

/* The explain line of a backend that can serve the call: "NAME: OKAY", with its route's note in
 * parentheses where it serves the call through code not its own. */
static void explain_okay(cf_explain* e, const cf_impl* im, const void* call) {
    char note[256];
    if (e && im->route && im->route(call, note, sizeof note))
        explain_line(e, "%s: OKAY (%s)", im->backend, note);
    else
        explain_line(e, "%s: OKAY", im->backend);
}

/* CFLASH_LOG=info: the chosen backend serves the call through code not its own (once per text). */
static void log_route(const char* opname, const cf_impl* im, const void* call) {
    char note[256];
    if (im->route && cf_log_level() >= CF_LOG_INFO && im->route(call, note, sizeof note))
        cf_log_once(CF_LOG_INFO, "%s: %s serves this call %s", opname, im->backend, note);
}

/* Whether im can serve call, with the reason when not: device, then availability on this
 * machine, then (for the automatic choice) whether it was verified on such hardware, then the
 * call itself, then (automatic choice) whether it was verified on the hardware of this call. */
static int judge(const cf_impl* im, int device_type, int forced, const void* call, char* why,
                 size_t len) {
    why[0] = 0;
    if (im->device_type != device_type) {
        snprintf(why, len, "serves %s tensors, these are on %s", cf_device_name(im->device_type),
                 cf_device_name(device_type));
        return 0;
    }
    if (!im->run) {
        snprintf(why, len, "registered without a run function (a bug in this build)");
        return 0;
    }
    if (im->available && !im->available(why, len)) {
        if (!why[0]) snprintf(why, len, "not available on this machine");
        return 0;
    }
    if (!forced && im->unverified) {
        snprintf(why, len, "%s", im->unverified);
        return 0;
    }
    if (im->supports && !im->supports(call, why, len)) {
        if (!why[0]) snprintf(why, len, "cannot serve this call");
        return 0;
    }
    if (!forced && im->verified && !im->verified(call, why, len)) {
        if (!why[0]) snprintf(why, len, "not yet verified on this hardware");
        return 0;
    }
    why[0] = 0;
    return 1;
}

/* The forced backend: it serves, or the call fails naming its reason and the backends that
 * could serve instead. Never falls back silently: the user asked for this one. */
static cflash_status dispatch_forced(cflash_op op, int device_type, const char* forced,
                                     const cf_impl* const* impls, size_t n, const void* call,
                                     cf_explain* explain) {
    const char* opname = cflash_op_name(op);
    const cf_impl* im = NULL;
    for (size_t i = 0; i < n && !im; i++)
        if (!strcmp(impls[i]->backend, forced)) im = impls[i];
    char why[256];
    if (im && judge(im, device_type, 1, call, why, sizeof why)) {
        explain_okay(explain, im, call);
        explain_line(explain, "-> %s", im->backend);
        if (explain) return CFLASH_OK;
        log_route(opname, im, call);
        cf_log(CF_LOG_DEBUG, "%s: %s serves (forced)", opname, im->backend);
        return im->run(call);
    }
    if (!im) snprintf(why, sizeof why, "not implemented for %s in this build", opname);
    char serving[256] = "";
    char other[256];
    for (size_t i = 0; i < n; i++)
        if (impls[i] != im && judge(impls[i], device_type, 0, call, other, sizeof other))
            cf_strcatf(serving, sizeof serving, "%s%s", serving[0] ? ", " : "", impls[i]->backend);
    explain_line(explain, "%s: NO: %s", forced, why);
    explain_line(explain, "-> none");
    return cf_error(CFLASH_ERR_UNSUPPORTED,
                    "%s: backend '%s' is forced (by the context or CFLASH_BACKEND) but cannot "
                    "serve this call: %s; %s%s",
                    opname, forced, why,
                    serving[0] ? "backends that could: " : "no other backend could either",
                    serving[0] ? serving : "");
}

cflash_status cf_dispatch(cflash_op op, int device_type, const char* forced, const void* call,
                          cf_explain* explain) {
    size_t n = 0;
    const cf_impl* const* impls = cf_impls_for(op, &n);
    return cf_dispatch_impls(op, impls, n, device_type, forced, call, explain);
}

cflash_status cf_dispatch_impls(cflash_op op, const cf_impl* const* impls, size_t n,
                                int device_type, const char* forced, const void* call,
                                cf_explain* explain) {
    const char* opname = cflash_op_name(op);
    if (explain && explain->buf && explain->len) explain->buf[0] = 0;
    if (!opname) return cf_error(CFLASH_ERR_INVALID_ARGUMENT, "op: %d is not a cflash_op", (int)op);
    if (forced && !cf_backend_known(forced))
        return cf_error(CFLASH_ERR_INVALID_ARGUMENT,
                        "backend: '%s' (from the context or CFLASH_BACKEND) is not a backend name",
                        forced);
    if (forced) return dispatch_forced(op, device_type, forced, impls, n, call, explain);

    /* The list for the tensors' device, in priority order. The real call stops at the first that
     * serves; explain goes on to say what each of the others would do. */
    enum { MAX_PASSED = 16 };
    const cf_impl* passed[MAX_PASSED];
    char passed_why[MAX_PASSED][256];
    size_t n_passed = 0, n_device = 0;
    char reasons[1536] = "";
    const cf_impl* chosen = NULL;
    for (size_t i = 0; i < n; i++) {
        const cf_impl* im = impls[i];
        if (im->device_type != device_type) continue;
        n_device++;
        char why[256];
        int ok = judge(im, device_type, 0, call, why, sizeof why);
        if (ok)
            explain_okay(explain, im, call);
        else
            explain_line(explain, "%s: NO: %s", im->backend, why);
        if (chosen) continue;
        if (ok) {
            chosen = im;
            if (!explain) break;
        } else {
            cf_strcatf(reasons, sizeof reasons, "%s%s: %s", reasons[0] ? "; " : "", im->backend,
                       why);
            if (n_passed < MAX_PASSED) {
                passed[n_passed] = im;
                memcpy(passed_why[n_passed++], why, sizeof why);
            }
        }
    }
    if (!chosen) {
        explain_line(explain, "-> none");
        if (!n_device)
            return cf_error(CFLASH_ERR_UNSUPPORTED,
                            "%s: no backend in this build serves %s tensors", opname,
                            cf_device_name(device_type));
        return cf_error(CFLASH_ERR_UNSUPPORTED, "%s: no backend can serve this call: %s", opname,
                        reasons);
    }
    explain_line(explain, "-> %s", chosen->backend);
    if (explain) return CFLASH_OK;
    for (size_t i = 0; i < n_passed; i++)
        cf_log_once(CF_LOG_INFO, "%s: %s cannot serve (%s); falling back to %s", opname,
                    passed[i]->backend, passed_why[i], chosen->backend);
    log_route(opname, chosen, call);
    cf_log(CF_LOG_DEBUG, "%s: %s serves%s", opname, chosen->backend,
           n_passed ? " (after a fallback)" : "");
    return chosen->run(call);
}
