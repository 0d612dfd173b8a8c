/* Helpers shared by the op tests: backends to run, error comparison, the error rule's bound. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oracle/ops_oracle.h"

const char* const ops_backends[] = {"cpu-ref", "cpu-generic", "cpu-avx2", "cpu-avx512",
                                    "cpu-sve", "cpu-neon",    "auto",     NULL};

cflash_context* ops_context(const char* backend, int threads) {
    cflash_context* ctx = NULL;
    if (cflash_context_create(&ctx) != CFLASH_OK) return NULL;
    cflash_context_set_threads(ctx, threads);
    if (backend && strcmp(backend, "auto")) cflash_context_set_backend(ctx, backend);
    return ctx;
}

int ops_backend_skips(const char* backend, const char* op, cflash_status s) {
    if (s != CFLASH_ERR_UNSUPPORTED || !backend || !strcmp(backend, "auto") ||
        !strcmp(backend, "cpu-ref"))
        return 0;
    static char seen[64][48];
    static int nseen;
    char key[48];
    snprintf(key, sizeof key, "%s/%s", backend, op);
    for (int i = 0; i < nseen; i++)
        if (!strcmp(seen[i], key)) return 1;
    if (nseen < 64) snprintf(seen[nseen++], sizeof seen[0], "%s", key);
    printf("skip %s on %s: %s\n", op, backend, cflash_last_error());
    return 1;
}

double ops_max_err(const tt_tensor* t, const double* ref, int64_t* nan) {
    double e = 0.0;
    int64_t bad = 0;
    for (int64_t n = 0; n < t->numel; n++) {
        double v = tt_get_flat(t, n), r = ref[n];
        double d;
        if (isinf(r) && v == r)
            d = 0.0;
        else if (!isfinite(v))
            d = INFINITY, bad++;
        else
            d = fabs(v - r);
        if (d > e || d != d) e = d;
    }
    if (nan) *nan = bad;
    return e;
}

double ops_max_err_arr(const double* a, const double* ref, int64_t n) {
    double e = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (isinf(ref[i]) && a[i] == ref[i]) ? 0.0 : fabs(a[i] - ref[i]);
        if (!(d <= e)) e = d;
    }
    return e;
}

double ops_max_abs(const double* ref, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(ref[i]) && fabs(ref[i]) > m) m = fabs(ref[i]);
    return m;
}

double ops_bound(cflash_dtype d, double factor, double naive, double maxref) {
    double k = d == CFLASH_DTYPE_F32 ? 8.0 : 2.0;
    return factor * naive + k * tt_unit_roundoff(d) * (maxref > 1.0 ? maxref : 1.0);
}

double ops_round(cflash_dtype d, double x) {
    return (double)cflash_round_to(d, (float)x);
}
