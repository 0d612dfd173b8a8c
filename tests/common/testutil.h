/* Test helpers shared by every C test: CHECK macros with a pass/fail count and the summary line the
 * CI reads ("N passed, N failed"). The tensors the tests use (tt_tensor: an owned CPU DLTensor of
 * any dtype with optional padded or permuted strides, poisoning with NaN, seeded random fill and
 * element access) come with the oracle, tools/oracle/oracle_tensor.h. */
#ifndef CFLASH_TESTS_TESTUTIL_H
#define CFLASH_TESTS_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cflash.h"
#include "core/tensor.h"
#include "oracle/oracle_tensor.h"

/* ---- Checks and the summary --------------------------------------------------------------- */

extern int tt_passed, tt_failed;

/* Records one passing / failing check; tt_fail prints "FAIL file:line: message". */
void tt_pass(void);
void tt_fail(const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prints "N passed, N failed" and returns the process exit code (0 iff nothing failed). */
int tt_summary(void);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond)                                                                                  \
            tt_pass();                                                                             \
        else                                                                                       \
            tt_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                                       \
    } while (0)

/* CHECK with a printf message added on failure. */
#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (cond)                                                                                  \
            tt_pass();                                                                             \
        else {                                                                                     \
            char tt_m_[2048];                                                                      \
            snprintf(tt_m_, sizeof tt_m_, __VA_ARGS__);                                            \
            tt_fail(__FILE__, __LINE__, "CHECK(%s): %s", #cond, tt_m_);                            \
        }                                                                                          \
    } while (0)

/* A cflash call must return CFLASH_OK; on failure prints the status and cflash_last_error(). */
#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        cflash_status tt_s_ = (expr);                                                              \
        if (tt_s_ == CFLASH_OK)                                                                    \
            tt_pass();                                                                             \
        else                                                                                       \
            tt_fail(__FILE__, __LINE__, "%s returned %s: %s", #expr, cflash_status_string(tt_s_),  \
                    cflash_last_error());                                                          \
    } while (0)

/* A cflash call must return status want and leave a message containing substring sub. */
#define CHECK_ERR(expr, want, sub)                                                                 \
    do {                                                                                           \
        cflash_status tt_s_ = (expr);                                                              \
        const char* tt_e_ = cflash_last_error();                                                   \
        if (tt_s_ == (want) && tt_e_ && strstr(tt_e_, (sub)))                                      \
            tt_pass();                                                                             \
        else                                                                                       \
            tt_fail(__FILE__, __LINE__, "%s returned %s (\"%s\"), expected %s with \"%s\"", #expr, \
                    cflash_status_string(tt_s_), tt_e_ ? tt_e_ : "(null)", #want, (sub));          \
    } while (0)

/* |a - b| <= tol, printing both values. */
#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double tt_a_ = (double)(a), tt_b_ = (double)(b), tt_t_ = (double)(tol);                    \
        if (tt_a_ - tt_b_ <= tt_t_ && tt_b_ - tt_a_ <= tt_t_)                                      \
            tt_pass();                                                                             \
        else                                                                                       \
            tt_fail(__FILE__, __LINE__, "CHECK_NEAR(%s, %s, %s): %.9g vs %.9g", #a, #b, #tol,      \
                    tt_a_, tt_b_);                                                                 \
    } while (0)

/* Wall-clock seconds (monotonic), for the timing lines tests print. */
double tt_now(void);

/* Added to every case seed: CFLASH_TEST_SEED from the environment (default 0), so a run can draw
 * other inputs; tests print it when it is not 0. */
uint64_t tt_seed_base(void);
/* CFLASH_TEST_LEVEL from the environment (default 0): 1 = the fuller grids; -1 = the reduced grids
 * that `make test-arm` runs under qemu-user, where the kernels and the fp64 oracle run emulated
 * (every code path, fewer and smaller shapes). */
int tt_test_level(void);
/* Whether the tests that loop over backends run `name`: CFLASH_TEST_BACKENDS, a list separated by
 * spaces or commas ("cpu-sve cpu-neon", "cpu-avx512,cpu-amx"), selects them; unset = all. make
 * test-arm uses it to run only the backends a CPU model changes. A name in it that is no backend
 * (cflash_context_set_backend refuses it) ends the test at once (exit 2), so a misspelt list cannot
 * select nothing and pass. */
int tt_backend_selected(const char* name);
/* Whether CFLASH_TEST_BACKENDS is set and lists `name` (a test that leaves a backend out by
 * default runs it when named). */
int tt_backend_named(const char* name);

/* A context (default settings, one per thread, kept until exit) in explain mode for its next
 * call: cflash_norm_fwd(tt_explain(buf, sizeof buf), ...) writes the choice into buf. */
cflash_context* tt_explain(char* buf, size_t len);

#endif
