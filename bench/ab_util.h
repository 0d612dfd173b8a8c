/* What the paired A/B programs (kv_ab.c, attn_ab.c) share: a clock, a sort order, environment
 * settings, and the loading of one build's libcflash.so.1 with its own copy of everything
 * (RTLD_LOCAL | RTLD_DEEPBIND), so that builds of the same symbols sit side by side. */
#ifndef CFLASH_BENCH_AB_UTIL_H
#define CFLASH_BENCH_AB_UTIL_H

#include <cflash.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double ab_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline int ab_cmp(const void* a, const void* b) {
    const double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

/* The integer in environment variable k, else d. */
static inline long ab_env(const char* k, long d) {
    return getenv(k) ? atol(getenv(k)) : d;
}

/* dir/libcflash.so.1 opened, with a context of `threads` threads in *ctx; NULL (the reason
 * printed) when it cannot be. dir "PATH@BACKEND" forces that backend on the context (the same
 * build twice, two backends: "/tmp/libB@cpu-amx /tmp/libB@cpu-avx512"). */
static inline void* ab_open(const char* dir, int threads, cflash_context** ctx) {
    char p[1024];
    const char* at = strchr(dir, '@');
    snprintf(p, sizeof p, "%.*s/libcflash.so.1", at ? (int)(at - dir) : (int)strlen(dir), dir);
    void* h = dlopen(p, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h) return fprintf(stderr, "%s\n", dlerror()), NULL;
    cflash_status (*create)(cflash_context**) =
        (cflash_status(*)(cflash_context**))dlsym(h, "cflash_context_create");
    cflash_status (*set)(cflash_context*, int) =
        (cflash_status(*)(cflash_context*, int))dlsym(h, "cflash_context_set_threads");
    cflash_status (*backend)(cflash_context*, const char*) =
        (cflash_status(*)(cflash_context*, const char*))dlsym(h, "cflash_context_set_backend");
    if (!create || !set || !backend || create(ctx) || set(*ctx, threads) ||
        (at && backend(*ctx, at + 1)))
        return fprintf(stderr, "%s: not a usable libcflash (or backend %s)\n", p,
                       at ? at + 1 : "-"),
               NULL;
    return h;
}

#endif
