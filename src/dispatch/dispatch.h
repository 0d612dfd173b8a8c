/* Backend registry and selection. A backend provides, per op it serves, an implementation row
 * (core/backend.h). The dispatcher tries the forced backend, else the ordered list for the call's
 * device, and runs the first that supports the call. Explain mode uses the same function,
 * cf_dispatch(), with the context's explain sink in place of running. Backends never include this
 * header. */
#ifndef CFLASH_DISPATCH_H
#define CFLASH_DISPATCH_H

#include <stddef.h>

#include "cflash.h"
#include "core/backend.h"

/* Name of backend i (0, 1, ...) in priority order, NULL past the last: the backends that have rows
 * in the registry (src/dispatch/registry.c), for the report and set_backend. */
const char* cf_backend_name(size_t i);
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
