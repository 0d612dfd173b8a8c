/* The reference attention kernel (cpu-ref), forward and backward, against the fp64 oracle over the
 * attention grid in fp32, fp16 and bf16 (tests/common/attn_grid.c).
 * Usage: test_attn_ref [LEVEL] [BACKEND]  (LEVEL 0 = quick CI grid, the default unless
 * CFLASH_TEST_LEVEL says otherwise; 1 = full grid; -1 = the reduced grid for emulated runs;
 * BACKEND defaults to cpu-ref, "auto" lets the dispatcher choose). -v prints every case. */
#include <stdlib.h>
#include <string.h>

#include "common/attn_grid.h"

int main(int argc, char** argv) {
    attn_grid_opts o = {0};
    o.level = tt_test_level();
    o.backend = "cpu-ref";
    o.bwd = 1;
    for (int i = 1; i < argc; i++) {
        char* end;
        const long lv = strtol(argv[i], &end, 10);
        if (!strcmp(argv[i], "-v"))
            o.verbose = 1;
        else if (*argv[i] && !*end)
            o.level = (int)lv;
        else
            o.backend = strcmp(argv[i], "auto") ? argv[i] : NULL;
    }
    if (tt_seed_base()) printf("CFLASH_TEST_SEED=%llu\n", (unsigned long long)tt_seed_base());
    printf("grid level %d: %d cases (fp32, fp16, bf16), forward and backward\n", o.level,
           attn_grid_count(o.level));
    int ran = 0, skipped = 0;
    attn_grid_run(&o, &ran, &skipped);
    CHECK_MSG(ran == attn_grid_count(o.level) && skipped == 0, "ran %d of %d cases, %d skipped",
              ran, attn_grid_count(o.level), skipped);
    return tt_summary();
}
