/* What the front door needs of a device backend besides its cf_impl rows: memory on the device
 * (cu_seqlens given on a GPU are copied to the host to be checked; the experimental device memory
 * of the tool) and what the report says of the backend's kernels. A device backend registers its
 * hooks when the library is loaded; core knows no backend, only this table. */
#ifndef CFLASH_CORE_DEVICE_H
#define CFLASH_CORE_DEVICE_H

#include <stddef.h>

#include "cflash.h"

typedef struct cf_device_hooks {
    int device_type; /* kDLCUDA, ... (kDLCPU needs none: plain host memory) */
    cflash_status (*alloc)(int device_id, void** p, size_t bytes);
    void (*free)(int device_id, void* p); /* accepts NULL */
    /* to_device = 1: host src -> device dst; 0: device src -> host dst. Synchronous. */
    cflash_status (*copy)(int device_id, void* dst, const void* src, size_t bytes, int to_device);
    cflash_status (*sync)(int device_id);
    /* For cflash_report (NULL = nothing to say): the kernels this build carries, one line, with
     * the counts of sources and precompiled binaries; the kernel cache as text lines (json = 0)
     * or the members of one JSON object without braces (json = 1). */
    void (*describe_kernels)(char* out, size_t len, int* n_sources, int* n_binaries);
    size_t (*describe_cache)(char* out, size_t len, int json);
} cf_device_hooks;

/* Called once per device type by its backend, before main (a constructor); the last one wins. */
void cf_device_register(const cf_device_hooks* hooks);
/* The hooks for device_type, or NULL when no backend in this build registered any. */
const cf_device_hooks* cf_device_hooks_for(int device_type);

/* Memory through the hooks, with a clear error when device_type has none (CFLASH_ERR_UNSUPPORTED
 * naming the device). */
cflash_status cf_device_alloc(int device_type, int device_id, void** p, size_t bytes);
void cf_device_free(int device_type, int device_id, void* p);
cflash_status cf_device_copy(int device_type, int device_id, void* dst, const void* src,
                             size_t bytes, int to_device);
cflash_status cf_device_sync(int device_type, int device_id);

#endif
