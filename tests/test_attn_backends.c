/* Every fast CPU attention backend available on this machine, forced, over the quick grid against
 * the fp64 oracle, forward and backward, every dtype; and forcing a backend this CPU cannot run
 * returns CFLASH_ERR_UNSUPPORTED with the reason. CFLASH_TEST_LEVEL=1 runs the fuller grid, -1 the
 * reduced one (emulated runs). */
#include <stdlib.h>
#include <string.h>

#include "common/attn_grid.h"
#include "common/testutil.h"

static const char* const backends[] = {"cpu-amx", "cpu-avx512", "cpu-avx2",
                                       "cpu-sve", "cpu-neon",   "cpu-generic"};
/* The dtypes each serves (bit 1 << cf_dtype; 0 = all): cpu-amx is bf16 and fp16 only. */
static const unsigned backend_dtypes[] = {(1u << CF_BF16) | (1u << CF_F16), 0, 0, 0, 0, 0};

/* The line "NAME: ..." of explain mode for a small forward in a dtype NAME serves: whether NAME
 * can run here, and the reason when not. */
static int backend_available(const char* name, cf_dtype dt, char* why, size_t len) {
    attn_case c;
    attn_case_init(&c);
    c.dtype = dt;
    c.Sq = c.Sk = 4;
    c.D = c.Dv = 8;
    attn_problem* p = attn_problem_new(&c);
    cflash_context* ctx = NULL;
    cflash_context_create(&ctx);
    cflash_context_set_backend(ctx, name);
    char buf[2048] = "";
    cflash_context_set_explain(ctx, buf, sizeof buf);
    cflash_status s = attn_problem_call_fwd(ctx, p, NULL);
    why[0] = 0;
    const char* line = strstr(buf, name);
    if (line) {
        const char* e = strchr(line, '\n');
        size_t n = e ? (size_t)(e - line) : strlen(line);
        if (n >= len) n = len - 1;
        memcpy(why, line, n);
        why[n] = 0;
    }
    cflash_context_free(ctx);
    attn_problem_free(p);
    return s == CFLASH_OK;
}

/* A backend this CPU cannot run, forced: the call fails with UNSUPPORTED and says why. */
static void test_unavailable(const char* name, cf_dtype dt, const char* why) {
    attn_case c;
    attn_case_init(&c);
    c.dtype = dt;
    c.Sq = c.Sk = 5;
    c.D = c.Dv = 16;
    attn_problem* p = attn_problem_new(&c);
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, name));
    attn_dl t;
    attn_problem_host_dl(p, &t);
    CHECK_ERR(attn_problem_call_fwd(ctx, p, &t), CFLASH_ERR_UNSUPPORTED, name);
    /* The reason names the missing feature, e.g. "CPU lacks AMX-BF16". */
    const char* colon = strstr(why, "NO: ");
    CHECK_MSG(colon != NULL, "explain line '%s' has no reason", why);
    if (colon)
        CHECK_MSG(strstr(cflash_last_error(), colon + 4) != NULL, "error '%s' lacks '%s'",
                  cflash_last_error(), colon + 4);
    cflash_context_free(ctx);
    attn_problem_free(p);
}

int main(void) {
    const int level = tt_test_level();
    int any = 0;
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
        char why[512];
        if (!tt_backend_selected(backends[i])) continue; /* CFLASH_TEST_BACKENDS */
        const cf_dtype probe = backend_dtypes[i] ? CF_BF16 : CF_F32;
        if (!backend_available(backends[i], probe, why, sizeof why)) {
            printf("%s: not available here (%s): checking the forced error\n", backends[i], why);
            test_unavailable(backends[i], probe, why);
            continue;
        }
        any = 1;
        for (int bwd = level < 0; bwd <= 1; bwd++) { /* emulated: fwd+bwd checks both */
            attn_grid_opts o;
            memset(&o, 0, sizeof o);
            o.level = level;
            o.backend = backends[i];
            o.bwd = bwd;
            o.threads = 2;
            o.dtypes = backend_dtypes[i];
            int ran = 0, skipped = 0;
            double t0 = tt_now();
            int fails = attn_grid_run(&o, &ran, &skipped);
            printf("%s %s: %d cases, %d skipped, %d failed (%.1f s)\n", backends[i],
                   bwd ? "fwd+bwd" : "fwd", ran, skipped, fails, tt_now() - t0);
            CHECK_MSG(skipped == 0, "%s skipped %d cases as unsupported", backends[i], skipped);
            CHECK_MSG(ran > 0, "%s ran no case", backends[i]);
        }
        attn_grid_one_pass(backends[i], backend_dtypes[i], 2);
    }
    CHECK_MSG(any || !tt_backend_selected("cpu-generic"),
              "no CPU backend available (cpu-generic always is)");
    return tt_summary();
}
