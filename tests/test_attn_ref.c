/* The reference attention kernel (cpu-ref), forward and backward, against the fp64 oracle over the
 * attention grid in fp32, fp16 and bf16 (tests/common/attn_grid.c).
 * Usage: test_attn_ref [LEVEL [BACKEND [DTYPES]]]  (LEVEL 0 = quick CI grid, the default unless
 * CFLASH_TEST_LEVEL says otherwise; 1 = full grid; -1 = the reduced grid for emulated runs;
 * BACKEND defaults to cpu-ref, "auto" lets the dispatcher choose; DTYPES a comma list of fp32,
 * fp16, bf16, default all: cpu-amx serves bf16,fp16). -v prints every case. */
#include <stdlib.h>
#include <string.h>

#include "common/attn_grid.h"

int main(int argc, char** argv) {
    attn_grid_opts o = {0};
    o.level = tt_test_level();
    o.backend = "cpu-ref";
    o.bwd = 1;
    int pos = 0; /* LEVEL, then BACKEND, then DTYPES */
    for (int i = 1; i < argc; i++) {
        char* end;
        const long lv = strtol(argv[i], &end, 10);
        if (!strcmp(argv[i], "-v"))
            o.verbose = 1;
        else if (pos == 0 && *argv[i] && !*end)
            o.level = (int)lv, pos++;
        else if (pos <= 1)
            o.backend = strcmp(argv[i], "auto") ? argv[i] : NULL, pos = 2;
        else
            for (int d = 0; d < 3; d++) { /* CF_F32, CF_F16, CF_BF16 by name */
                const cf_dtype dt = d == 0 ? CF_F32 : d == 1 ? CF_F16 : CF_BF16;
                if (strstr(argv[i], d == 0 ? "fp32" : d == 1 ? "fp16" : "bf16"))
                    o.dtypes |= 1u << dt;
            }
    }
    int want = 0;
    for (int i = 0; i < attn_grid_count(o.level); i++) {
        attn_case c;
        attn_grid_case(o.level, i, &c);
        want += !o.dtypes || (o.dtypes & (1u << c.dtype));
    }
    if (tt_seed_base()) printf("CFLASH_TEST_SEED=%llu\n", (unsigned long long)tt_seed_base());
    printf("grid level %d: %d cases (fp32, fp16, bf16), forward and backward\n", o.level,
           attn_grid_count(o.level));
    int ran = 0, skipped = 0;
    attn_grid_run(&o, &ran, &skipped);
    CHECK_MSG(ran == want && skipped == 0, "ran %d of %d cases, %d skipped", ran, want, skipped);
    return tt_summary();
}
