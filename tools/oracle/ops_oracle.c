/* Helpers shared by the op tests: backends to run, error comparison, the error rule's bound. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oracle/ops_oracle.h"

const char* const ops_backends[] = {"cpu-ref", "cpu-generic", "cpu-avx2", "cpu-avx512", "cpu-amx",
                                    "cpu-sve", "cpu-neon",    "auto",     NULL};

cflash_context* ops_context(const char* backend, int threads) {
    cflash_context* ctx = NULL;
    if (cflash_context_create(&ctx) != CFLASH_OK) return NULL;
    cflash_context_set_threads(ctx, threads);
    if (backend && strcmp(backend, "auto")) cflash_context_set_backend(ctx, backend);
    return ctx;
}

/* cflash_report's text, read once (the [backends] table: "  op  backend  [OKAY]" per line). */
static char* ops_report;
static void ops_report_read(void) {
    const size_t n = cflash_report(NULL, 0, 0) + 1;
    ops_report = malloc(n);
    if (ops_report) cflash_report(ops_report, n, 0);
}

/* Whether the report marks backend [OKAY] for an op whose name contains op (the tests say "norm"
 * for norm_fwd and norm_bwd, "merge" for attn_merge): it can run on this machine. */
static int ops_backend_okay(const char* backend, const char* op) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, ops_report_read);
    for (const char* l = ops_report; l && *l;) {
        char name[64], be[64], mark[16];
        if (sscanf(l, "%63s %63s %15s", name, be, mark) == 3 && strstr(name, op) &&
            !strcmp(be, backend) && !strcmp(mark, "[OKAY]"))
            return 1;
        const char* nl = strchr(l, '\n');
        l = nl ? nl + 1 : NULL;
    }
    return 0;
}

int ops_backend_skips(const char* backend, const char* op, cflash_status s) {
    if (s != CFLASH_ERR_UNSUPPORTED || !backend || !strcmp(backend, "auto") ||
        !strcmp(backend, "cpu-ref"))
        return 0;
    /* The ops' impls serve every call of their op (no supports() test): a backend the report
     * marks [OKAY] for the op that refuses a call is a failure, not a skip. (Attention's impls
     * refuse calls by their shape: "attn" keeps skipping.) */
    const int attention = !strncmp(op, "attn", 4) && !strstr(op, "merge");
    if (!attention && ops_backend_okay(backend, op)) {
        printf("%s on %s: refused (%s) although cflash_report marks it [OKAY] for the op\n", op,
               backend, cflash_last_error());
        return 0;
    }
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

double ops_fit_dev(const tt_tensor* t, const double* ref, const double* dir, int64_t group,
                   double* se, double* unit) {
    double num = 0.0, den = 0.0, mag = 0.0;
    for (int64_t n = 0; n < t->numel; n++) {
        const double v = tt_get_flat(t, n), r = ref[n], x = dir[n];
        if (isfinite(v) && isfinite(r) && isfinite(x))
            num += (v - r) * x, den += x * x, mag += fabs(r * x);
    }
    *unit = den > 0.0 ? mag / den : 0.0;
    const double dev = den > 0.0 ? num / den : 0.0;
    /* the error left after the fit, summed per group (g: the group's sum of residual * dir) */
    double var = 0.0, g = 0.0;
    for (int64_t n = 0; n < t->numel; n++) {
        const double v = tt_get_flat(t, n), r = ref[n], x = dir[n];
        if (isfinite(v) && isfinite(r) && isfinite(x)) g += (v - r - dev * x) * x;
        if ((n + 1) % group == 0 || n + 1 == t->numel) var += g * g, g = 0.0;
    }
    *se = den > 0.0 ? sqrt(var) / den : 0.0;
    return dev;
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

/* The definition (OCP fp8); ops_fp8_value reads it from a table filled once. */
static double fp8_value_def(uint8_t code, int e5m2) {
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

/* Every code's value, from fp8_value_def once (computing it per call, ldexp included, was half
 * of test_kvcache's time under qemu). */
static double fp8_val[2][256];
static pthread_once_t fp8_once = PTHREAD_ONCE_INIT;
static void fp8_fill(void) {
    for (int f = 0; f < 2; f++)
        for (int c = 0; c < 256; c++)
            fp8_val[f][c] = fp8_value_def((uint8_t)c, f);
}

double ops_fp8_value(uint8_t code, int e5m2) {
    pthread_once(&fp8_once, fp8_fill);
    return fp8_val[e5m2 ? 1 : 0][code];
}

uint8_t ops_fp8_code(float x, int e5m2) {
    if (x != x) return 0x7f;
    const double ax = fabs((double)x);
    if (isinf(x)) return (uint8_t)((e5m2 ? 0x7b : 0x7e) | (signbit(x) ? 0x80 : 0)); /* saturate */
    pthread_once(&fp8_once, fp8_fill);
    /* codes 0 .. n - 1 are the finite magnitudes, increasing (e4m3fn: 127 is NaN; e5m2: 124 is
     * infinity, 125 .. 127 NaN): bisect for mag[lo] <= ax < mag[lo + 1], then the nearer of the
     * two, ties to the even code; beyond the largest, the largest (saturation). */
    const double* mag = fp8_val[e5m2 ? 1 : 0];
    const int n = e5m2 ? 124 : 127;
    int best = n - 1;
    if (ax < mag[n - 1]) {
        int lo = 0, hi = n - 1; /* mag[lo] <= ax < mag[hi] */
        while (hi - lo > 1) {
            const int mid = (lo + hi) / 2;
            if (mag[mid] <= ax)
                lo = mid;
            else
                hi = mid;
        }
        const double d0 = ax - mag[lo], d1 = mag[hi] - ax;
        best = d0 < d1 ? lo : d1 < d0 ? hi : (lo & 1 ? hi : lo);
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
