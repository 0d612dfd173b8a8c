/* Test helpers: the check counters and summary, the clock, and the seed base. */
#include <stdarg.h>
#include <stdlib.h>
#include <time.h>

#include "common/testutil.h"

/* ---- Checks ------------------------------------------------------------------------------- */

int tt_passed, tt_failed;

void tt_pass(void) {
    tt_passed++;
}

void tt_fail(const char* file, int line, const char* fmt, ...) {
    tt_failed++;
    fprintf(stdout, "FAIL %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

int tt_summary(void) {
    printf("%d passed, %d failed\n", tt_passed, tt_failed);
    fflush(stdout);
    return tt_failed ? 1 : (tt_passed ? 0 : 1); /* a test that checked nothing fails */
}

double tt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- Seeds ------------------------------------------------------------------------------- */

uint64_t tt_seed_base(void) {
    const char* e = getenv("CFLASH_TEST_SEED");
    return e && *e ? strtoull(e, NULL, 0) : 0;
}

int tt_test_level(void) {
    const char* e = getenv("CFLASH_TEST_LEVEL");
    return e && *e ? atoi(e) : 0;
}

/* The next name of a CFLASH_TEST_BACKENDS list from *p (its length in *n; NULL at the end). */
static const char* next_backend(const char** p, size_t* n) {
    const char* s = *p + strspn(*p, " ,\t");
    *n = strcspn(s, " ,\t");
    *p = s + *n;
    return *n ? s : NULL;
}

int tt_backend_selected(const char* name) {
    const char* e = getenv("CFLASH_TEST_BACKENDS");
    if (!e || !*e) return 1;
    static int checked; /* (every name of the list is a backend: once per process) */
    size_t n;
    if (!checked) {
        cflash_context* ctx = NULL;
        if (cflash_context_create(&ctx) != CFLASH_OK) return 0;
        for (const char *p = e, *s; (s = next_backend(&p, &n));) {
            char one[64];
            snprintf(one, sizeof one, "%.*s", (int)n, s);
            if (n >= sizeof one || !strcmp(one, "auto") ||
                cflash_context_set_backend(ctx, one) != CFLASH_OK) {
                fprintf(stderr, "CFLASH_TEST_BACKENDS=\"%s\": \"%s\" is no backend (%s)\n", e, one,
                        cflash_last_error());
                exit(2);
            }
        }
        cflash_context_free(ctx);
        checked = 1;
    }
    return tt_backend_named(name);
}

int tt_backend_named(const char* name) {
    const char* e = getenv("CFLASH_TEST_BACKENDS");
    size_t n;
    for (const char *p = e ? e : "", *s; (s = next_backend(&p, &n));)
        if (n == strlen(name) && !strncmp(s, name, n)) return 1;
    return 0;
}

cflash_context* tt_explain(char* buf, size_t len) {
    static _Thread_local cflash_context* ctx;
    if (!ctx && cflash_context_create(&ctx) != CFLASH_OK) return NULL;
    cflash_context_set_explain(ctx, buf, len);
    return ctx;
}
