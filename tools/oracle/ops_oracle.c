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

/* ---- Quantized KV caches ------------------------------------------------------------------ */

double ops_fp8_value(uint8_t code, int e5m2) {
    const double sign = code & 0x80 ? -1.0 : 1.0;
    if (e5m2) {
        const int e = (code >> 2) & 31, m = code & 3;
        if (e == 31) return m ? NAN : sign * INFINITY;
        return sign * (e ? ldexp(4 + m, e - 17) : ldexp(m, -16));
    }
    const int e = (code >> 3) & 15, m = code & 7;
    if (e == 15 && m == 7) return NAN;
    return sign * (e ? ldexp(8 + m, e - 10) : ldexp(m, -9));
}

uint8_t ops_fp8_code(float x, int e5m2) {
    if (x != x) return 0x7f;
    const double ax = fabs((double)x);
    if (isinf(x)) return (uint8_t)((e5m2 ? 0x7b : 0x7e) | (signbit(x) ? 0x80 : 0)); /* saturate */
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c < 128; c++) { /* the magnitudes; finite ones only */
        const double v = ops_fp8_value((uint8_t)c, e5m2);
        if (!isfinite(v)) continue;
        const double d = fabs(v - ax);
        if (d < bd || (d == bd && !(c & 1))) bd = d, best = c;
    }
    return (uint8_t)(best | (signbit(x) ? 0x80 : 0));
}

float ops_int8_codes(int8_t* codes, const float* x, int64_t n) {
    float amax = 0.0f;
    int nan = 0;
    for (int64_t d = 0; d < n; d++) {
        nan |= x[d] != x[d];
        if (fabsf(x[d]) > amax) amax = fabsf(x[d]);
    }
    const float scale = nan ? NAN : amax / 127.0f;
    for (int64_t d = 0; d < n; d++) {
        double q = scale > 0.0f && isfinite(scale) ? rint((double)(x[d] / scale)) : 0.0;
        codes[d] = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
    }
    return scale;
}
