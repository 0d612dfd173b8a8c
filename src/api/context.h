/* The context's fields, for the op entry points. */
#ifndef CFLASH_API_CONTEXT_H
#define CFLASH_API_CONTEXT_H

#include "cflash.h"
#include "dispatch/dispatch.h"

struct cflash_context {
    int threads;      /* 0 = all */
    char backend[32]; /* "" = not set (CFLASH_BACKEND applies), "auto", or a name */
    void* cuda_stream;
    cf_explain* explain; /* set by cflash_explain for one call */
};

/* Resolved thread count (>= 1). */
int cf_context_threads(const cflash_context* ctx);
/* Forced backend for this call: the context's, else CFLASH_BACKEND, else NULL. */
const char* cf_context_backend(const cflash_context* ctx);

#endif
