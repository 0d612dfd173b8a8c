/* Backend registry and selection. A backend provides, per op it serves, an implementation:
 * supports(call) writes a reason when it cannot serve; run(call) computes. The dispatcher tries the
 * forced backend, else the ordered list for the call's device, and runs the first that supports the
 * call. cflash_explain uses the same function, cf_dispatch(), with run disabled. */
#ifndef CFLASH_DISPATCH_H
#define CFLASH_DISPATCH_H

#include <stddef.h>

#include "cflash.h"

typedef struct cf_impl {
    const char* backend; /* "cpu-ref", "cpu-avx512", "cuda-mma", ... */
    cflash_op op;        /* CFLASH_OP_ATTN_VARLEN_* are served by the ATTN_FWD / ATTN_BWD impls */
    int device_type;     /* kDLCPU or kDLCUDA */
    /* 1 if it can serve this call; else 0 with a reason ("needs AMX-BF16: CPU lacks amx_bf16").
     * call points to the op's call struct (cf_attn_call for attention). */
    int (*supports)(const void* call, char* reason, size_t reason_len);
    cflash_status (*run)(const void* call);
    /* Optional (NULL = always): can this backend run at all on this machine (ISA present, driver
     * and NVRTC found)? Checked before supports; used alone by `cflash report`. */
    int (*available)(char* reason, size_t reason_len);
    /* NULL once the kernel has passed the test grid on its own hardware; until then the reason
     * ("not yet verified on AMX hardware; force it with CFLASH_BACKEND=cpu-amx"): the automatic
     * choice passes it over with this reason, and it serves only when forced. */
    const char* unverified;
} cf_impl;
/* Define impls with designated initialisers (.backend = ..., .op = ...) so fields can be added. */

/* Names of all backends in priority order, NULL-terminated (for report and set_backend). */
extern const char* const cf_backend_names[];
int cf_backend_known(const char* name);

/* The impls registered for op in priority order; *n receives the count. */
const cf_impl* const* cf_impls_for(cflash_op op, size_t* n);

/* Explain sink: when non-NULL, cf_dispatch writes its lines there and does not run. */
typedef struct cf_explain {
    char* buf;
    size_t len;
} cf_explain;

/* Chooses and runs (or explains) the impl for call. forced: backend name or NULL.
 * Returns CFLASH_ERR_UNSUPPORTED with every reason when none serves. */
cflash_status cf_dispatch(cflash_op op, int device_type, const char* forced, const void* call,
                          cf_explain* explain);
/* The same over an explicit impl list (cf_dispatch passes the registry's): the selection logic
 * alone, so tests can drive it with their own impls. */
cflash_status cf_dispatch_impls(cflash_op op, const cf_impl* const* impls, size_t n,
                                int device_type, const char* forced, const void* call,
                                cf_explain* explain);

#endif
