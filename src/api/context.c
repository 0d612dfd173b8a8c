/* The context: threads, forced backend, CUDA stream. */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "api/context.h"
#include "core/status.h"
#include "core/strbuf.h"

cflash_status cflash_context_create(cflash_context** ctx) {
    CFLASH_RETURN_IF(!ctx, CFLASH_ERR_INVALID_ARGUMENT, "ctx: is NULL, expected cflash_context**");
    cflash_context* c = calloc(1, sizeof *c);
    CFLASH_RETURN_IF(!c, CFLASH_ERR_OUT_OF_MEMORY, "context: out of memory");
    *ctx = c;
    return CFLASH_OK;
}

void cflash_context_free(cflash_context* ctx) {
    free(ctx);
}

cflash_status cflash_context_set_threads(cflash_context* ctx, int n) {
    CFLASH_RETURN_IF(!ctx, CFLASH_ERR_INVALID_ARGUMENT, "ctx: is NULL");
    CFLASH_RETURN_IF(n < 0, CFLASH_ERR_INVALID_ARGUMENT,
                     "threads: %d, expected >= 0 (0 = all cores)", n);
    ctx->threads = n;
    return CFLASH_OK;
}

cflash_status cflash_context_set_backend(cflash_context* ctx, const char* name) {
    CFLASH_RETURN_IF(!ctx, CFLASH_ERR_INVALID_ARGUMENT, "ctx: is NULL");
    if (!name || !*name) { /* not set: CFLASH_BACKEND, if any, applies */
        ctx->backend[0] = 0;
        return CFLASH_OK;
    }
    if (!strcmp(name, "auto")) { /* set to choose per call, whatever CFLASH_BACKEND says */
        strcpy(ctx->backend, "auto");
        return CFLASH_OK;
    }
    if (!cf_backend_known(name)) {
        char list[512] = "";
        const char* b;
        for (size_t i = 0; (b = cf_backend_name(i)) != NULL; i++)
            cf_strcatf(list, sizeof list, "%s%s", i ? ", " : "", b);
        return cf_error(CFLASH_ERR_INVALID_ARGUMENT,
                        "backend: unknown name '%s', expected auto or one of: %s", name, list);
    }
    strncpy(ctx->backend, name, sizeof ctx->backend - 1);
    ctx->backend[sizeof ctx->backend - 1] = 0;
    return CFLASH_OK;
}

cflash_status cflash_context_set_cuda_stream(cflash_context* ctx, void* stream) {
    CFLASH_RETURN_IF(!ctx, CFLASH_ERR_INVALID_ARGUMENT, "ctx: is NULL");
    ctx->cuda_stream = stream;
    return CFLASH_OK;
}

int cf_context_threads(const cflash_context* ctx) {
    int n = ctx ? ctx->threads : 0;
#ifdef _OPENMP
    if (n <= 0) n = omp_get_max_threads();
#endif
    return n > 0 ? n : 1;
}

const char* cf_context_backend(const cflash_context* ctx) {
    if (ctx && ctx->backend[0]) return strcmp(ctx->backend, "auto") ? ctx->backend : NULL;
    const char* e = getenv("CFLASH_BACKEND");
    if (e && *e && strcmp(e, "auto")) return e;
    return NULL;
}
