/* The CPU attention block shapes (src/cpu/attn_blocks.c): CFLASH_ATTN_BLOCKS parsing (every bad
 * value rejected with its reason), the process's choice under the environment it runs in (the
 * ctest variants set good and bad values), and the attention grid forward and backward through
 * the shared drivers with non-default shapes, odd ones included, so the drivers hold for any. */
#include <stdlib.h>
#include <string.h>

#include "common/attn_grid.h"
#include "cpu/attn_cpu.h"

static const cf_attn_blocks base = {128, 128, 128, 128, "test"};

static void expect_good(const char* s, int64_t q, int64_t k, int64_t bq, int64_t bk) {
    cf_attn_blocks b;
    char why[160] = "";
    CHECK_MSG(cf_attn_blocks_parse(s, &base, &b, why, sizeof why), "'%s' rejected: %s", s, why);
    CHECK_MSG(b.q == q && b.k == k && b.bwd_q == bq && b.bwd_k == bk, "'%s' -> %lld,%lld,%lld,%lld",
              s, (long long)b.q, (long long)b.k, (long long)b.bwd_q, (long long)b.bwd_k);
}

static void expect_bad(const char* s, const char* reason) {
    cf_attn_blocks b = base;
    char why[160] = "";
    CHECK_MSG(!cf_attn_blocks_parse(s, &base, &b, why, sizeof why), "'%s' accepted",
              s ? s : "NULL");
    CHECK_MSG(strstr(why, reason) != NULL, "'%s': reason '%s' lacks '%s'", s ? s : "NULL", why,
              reason);
    CHECK_MSG(b.q == base.q && b.k == base.k, "'%s' changed the blocks although rejected", s);
}

static void test_parse(void) {
    expect_good("64,32", 64, 32, 128, 128);
    expect_good("1,1,1,1", 1, 1, 1, 1);
    expect_good("1024,1024,1024,1024", 1024, 1024, 1024, 1024);
    expect_good("7,33,5,97", 7, 33, 5, 97);
    expect_bad(NULL, "empty");
    expect_bad("", "empty");
    expect_bad("64", "1 number, expected");
    expect_bad("64,32,16", "3 numbers, expected");
    expect_bad("1,2,3,4,5", "more than 4");
    expect_bad("0,32", "q (query rows per forward tile) = 0: expected 1..1024");
    expect_bad("64,1025", "k (keys per forward block) = 1025: expected 1..1024");
    expect_bad("64,32,0,8", "bq (query rows per backward block) = 0");
    expect_bad("64,32,8,2000", "bk (keys per backward block) = 2000");
    expect_bad("-3,4", "expected a number at '-3,4'");
    expect_bad("a,b", "expected a number at 'a,b'");
    expect_bad("64,", "trailing ','");
    expect_bad(",64", "expected a number at ',64'");
    expect_bad("64 ,32", "unexpected ' ,32'");
    expect_bad("64,32x", "unexpected 'x'");
    expect_bad("99999999999999999999999,1", "expected 1..1024");
}

/* Under the environment this process got: a good CFLASH_ATTN_BLOCKS is what the drivers use, a
 * bad one is ignored (the warning goes to stderr). */
static void test_env(void) {
    const char* e = getenv("CFLASH_ATTN_BLOCKS");
    const cf_attn_blocks now = cf_attn_cpu_blocks();
    CHECK(now.q >= 1 && now.k >= 1 && now.bwd_q >= 1 && now.bwd_k >= 1 && now.source);
    if (!e) {
        printf("CFLASH_ATTN_BLOCKS unset: %lld,%lld,%lld,%lld (%s)\n", (long long)now.q,
               (long long)now.k, (long long)now.bwd_q, (long long)now.bwd_k, now.source);
        CHECK(strcmp(now.source, "CFLASH_ATTN_BLOCKS") != 0);
        return;
    }
    cf_attn_blocks want;
    char why[160];
    if (cf_attn_blocks_parse(e, &now, &want, why, sizeof why)) {
        printf("CFLASH_ATTN_BLOCKS=%s: in use\n", e);
        CHECK_MSG(!strcmp(now.source, "CFLASH_ATTN_BLOCKS") && now.q == want.q && now.k == want.k &&
                      now.bwd_q == want.bwd_q && now.bwd_k == want.bwd_k,
                  "CFLASH_ATTN_BLOCKS=%s not in use: %lld,%lld,%lld,%lld (%s)", e, (long long)now.q,
                  (long long)now.k, (long long)now.bwd_q, (long long)now.bwd_k, now.source);
    } else {
        printf("CFLASH_ATTN_BLOCKS=%s: ignored (%s), %s in use\n", e, why, now.source);
        CHECK_MSG(strcmp(now.source, "CFLASH_ATTN_BLOCKS") != 0, "bad value %s in use", e);
    }
}

/* The first fast CPU backend this machine runs (cpu-generic always does). */
static const char* fast_backend(void) {
    static const char* const names[] = {"cpu-avx512", "cpu-avx2", "cpu-sve", "cpu-neon",
                                        "cpu-generic"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        attn_case c;
        attn_case_init(&c);
        c.Sq = c.Sk = 4, c.D = c.Dv = 8;
        attn_problem* p = attn_problem_new(&c);
        cflash_context* ctx = NULL;
        cflash_context_create(&ctx);
        cflash_context_set_backend(ctx, names[i]);
        cflash_status s = attn_problem_run_fwd(ctx, p);
        cflash_context_free(ctx);
        attn_problem_free(p);
        if (s == CFLASH_OK) return names[i];
    }
    return "cpu-generic";
}

static void test_grid(const char* backend) {
    /* q, k, bwd q, bwd k: odd and prime sizes, blocks smaller than a GQA group (q < G), larger
     * than the sequences, and unequal forward and backward blocks. `small` runs only the first
     * cases (the 1-row blocks make the big cases slow). */
    static const struct {
        cf_attn_blocks b;
        int small;
    } shapes[] = {
        {{7, 5, 3, 9, "test"}, 0},
        {{33, 17, 20, 48, "test"}, 0},
        {{200, 96, 64, 256, "test"}, 0},
        {{1, 1, 1, 2, "test"}, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        cf_attn_cpu_set_blocks(&shapes[i].b);
        printf("blocks %lld,%lld,%lld,%lld on %s\n", (long long)shapes[i].b.q,
               (long long)shapes[i].b.k, (long long)shapes[i].b.bwd_q, (long long)shapes[i].b.bwd_k,
               backend);
        attn_grid_opts o;
        memset(&o, 0, sizeof o);
        o.backend = backend;
        o.level = tt_test_level() < 0 ? tt_test_level() : 0; /* emulated (qemu): the reduced grid */
        o.bwd = 1;
        o.threads = 2;
        o.max_cases = shapes[i].small ? 14 : 0;
        int ran = 0, skipped = 0;
        attn_grid_run(&o, &ran, &skipped);
        CHECK_MSG(ran > 0 && skipped == 0, "ran %d, skipped %d", ran, skipped);
        if (!shapes[i].small) attn_grid_one_pass(backend, 0, 2);
    }
    cf_attn_cpu_set_blocks(NULL);
}

int main(void) {
    test_parse();
    test_env();
    const char* e = getenv("CFLASH_ATTN_BLOCKS");
    /* The environment variants only check the choice; the grid runs once, in the plain test. */
    if (!e) test_grid(fast_backend());
    return tt_summary();
}
