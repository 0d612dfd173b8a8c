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

int tt_backend_selected(const char* name) {
    const char* e = getenv("CFLASH_TEST_BACKENDS");
    if (!e || !*e) return 1;
    const size_t n = strlen(name);
    for (const char* p = e; (p = strstr(p, name)); p += n)
        if ((p == e || p[-1] == ' ') && (p[n] == 0 || p[n] == ' ')) return 1;
    return 0;
}

cflash_context* tt_explain(char* buf, size_t len) {
    static _Thread_local cflash_context* ctx;
    if (!ctx && cflash_context_create(&ctx) != CFLASH_OK) return NULL;
    cflash_context_set_explain(ctx, buf, len);
    return ctx;
}
