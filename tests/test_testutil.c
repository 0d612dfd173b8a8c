/* The test helpers' own checks: CFLASH_TEST_BACKENDS's list (tt_backend_selected,
 * tt_backend_named), names separated by spaces, commas or tabs, whole names only. With an argument
 * the list is that argument: ctest runs a misspelt one (test_testutil_typo), which must end the
 * test with its reason (exit 2) rather than select no backend and pass. */
#include <stdlib.h>

#include "common/testutil.h"

int main(int argc, char** argv) {
    setenv("CFLASH_TEST_BACKENDS", argc > 1 ? argv[1] : " cpu-ref,cpu-generic\t", 1);
    CHECK(tt_backend_selected("cpu-ref"));
    CHECK(tt_backend_selected("cpu-generic"));
    CHECK(!tt_backend_selected("cpu-avx512"));
    CHECK(!tt_backend_selected("cpu-gen"));
    CHECK(!tt_backend_selected("cpu"));
    CHECK(!tt_backend_selected(""));
    /* tt_backend_named: only what the list names; nothing when the list is unset (where
     * tt_backend_selected selects everything) */
    CHECK(tt_backend_named("cpu-generic") && !tt_backend_named("cpu-gen"));
    unsetenv("CFLASH_TEST_BACKENDS");
    CHECK(tt_backend_selected("cpu-ref") && !tt_backend_named("cpu-ref"));
    return tt_summary();
}
