/* The backend contract: what a backend provides for each op it serves (a cf_impl row), and all it
 * needs to know of the rest of the library. Backends include this header, never the dispatcher;
 * the registry (src/dispatch/registry.c) lists the rows, and selection (src/dispatch/dispatch.c)
 * judges them. Modelled on ggml's ggml-backend-impl.h, kept apart from its registry. */
#ifndef CFLASH_CORE_BACKEND_H
#define CFLASH_CORE_BACKEND_H

#include <stddef.h>

#include "cflash.h"

/* Version of this contract (cf_impl's fields and what they mean, and the call structs of
 * core/attn_call.h and core/ops_call.h that run() receives). Bump it when either changes in a way
 * that a backend written against the old one would compile but misbehave; every backend is built
 * in this tree today, so a bump comes with the edits to all of them. */
#define CF_BACKEND_INTERFACE_VERSION 2

typedef struct cf_impl {
    const char* backend; /* "cpu-ref", "cpu-avx512", "cuda-mma", ... */
    cflash_op op;        /* CFLASH_OP_ATTN_VARLEN_* are served by the ATTN_FWD / ATTN_BWD impls */
    int device_type;     /* kDLCPU or kDLCUDA */
    /* 1 if it can serve this call; else 0 with a reason ("needs AMX-BF16: CPU lacks amx_bf16").
     * call points to the op's call struct (cf_attn_call for attention). NULL = every call. */
    int (*supports)(const void* call, char* reason, size_t reason_len);
    cflash_status (*run)(const void* call);
    /* Optional (NULL = always): can this backend run at all on this machine (ISA present, driver
     * and NVRTC found)? Checked before supports; used alone by `cflash report`. */
    int (*available)(char* reason, size_t reason_len);
    /* NULL once the kernel has passed the test grid on its own hardware; until then the reason
     * ("not yet verified on AMX hardware; force it with CFLASH_BACKEND=cpu-amx"): the automatic
     * choice passes it over with this reason, and it serves only when forced. */
    const char* unverified;
    /* Optional (NULL: `unverified` alone decides): 1 when the kernels have passed the test grid on
     * the hardware this call runs on (a GPU backend: its device's arch), else 0 with the reason;
     * judged as `unverified` is, after supports: the automatic choice passes over, a forced
     * backend serves. call NULL: the machine's first device (`cflash report`). */
    int (*verified)(const void* call, char* why, size_t len);
    /* Optional (NULL: never): 1 where the backend serves this call through code that is not its
     * own (cpu-amx in a build without AMX code: on cpu-avx512's driver), with a note saying so
     * ("through cpu-avx512's driver: ..."); 0 where its own kernels run. Explain mode shows the
     * note on the backend's OKAY line and CFLASH_LOG=info logs it (once per text): such a call runs
     * at the other code's speed, which the backend's name alone would hide. */
    int (*route)(const void* call, char* note, size_t len);
} cf_impl;
/* Define impls with designated initialisers (.backend = ..., .op = ...) so fields can be added. */

#endif
