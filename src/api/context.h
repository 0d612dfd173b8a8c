/* The context's fields, for the op entry points, and the two steps every op call takes through
 * it: dispatch with the context's settings, and the end of the call (explain mode, explain.c). */
#ifndef CFLASH_API_CONTEXT_H
#define CFLASH_API_CONTEXT_H

#include "cflash.h"
#include "dispatch/dispatch.h"

struct cflash_context {
    int threads;      /* 0 = all */
    char backend[32]; /* "" = not set (CFLASH_BACKEND applies), "auto", or a name */
    void* cuda_stream;
    cf_explain explain; /* explain mode: buf != NULL for the next op call only */
};

/* Resolved thread count (>= 1). */
int cf_context_threads(const cflash_context* ctx);
/* Forced backend for this call: the context's, else CFLASH_BACKEND, else NULL. */
const char* cf_context_backend(const cflash_context* ctx);

/* Hands call to the dispatcher with ctx's settings: its forced backend and, in explain mode, its
 * explain sink (choose and write the lines, run nothing). empty: the call has nothing to do, so a
 * real call returns CFLASH_OK without choosing; an explained one still shows the choice. */
cflash_status cf_context_dispatch(cflash_context* ctx, cflash_op op, int device_type,
                                  const void* call, int empty);
/* Ends an op call that returns s: in explain mode a call rejected before selection gets
 * "not dispatched: STATUS: message" and "-> none" in the buffer, and the mode clears (it covers
 * one call). Returns s. Every public op returns through it. */
cflash_status cf_context_end_call(cflash_context* ctx, cflash_status s);

#endif
