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

/* The line "NAME: ..." of cflash_explain for a small fp32 forward: whether NAME can run here, and
 * the reason when not. */
static int backend_available(const char* name, char* why, size_t len) {
    attn_case c;
    attn_case_init(&c);
    c.Sq = c.Sk = 4;
    c.D = c.Dv = 8;
    attn_problem* p = attn_problem_new(&c);
    cflash_context* ctx = NULL;
    cflash_context_create(&ctx);
    cflash_context_set_backend(ctx, name);
    char buf[2048] = "";
    attn_dl t;
    attn_problem_host_dl(p, &t);
    cflash_status s = cflash_explain(ctx, CFLASH_OP_ATTN_FWD, buf, sizeof buf, &p->params, t.q, t.k,
                                     t.v, t.out, t.lse);
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
static void test_unavailable(const char* name, const char* why) {
    attn_case c;
    attn_case_init(&c);
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

/* Problems with at least 4 x threads (sequence, KV head) units, so the backward takes its one-pass
 * path (dQ accumulated per unit) as well as the three-pass one the small grid cases use. */
static void test_one_pass(const char* backend, int level) {
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, backend));
    CHECK_OK(cflash_context_set_threads(ctx, 2));
    const cf_dtype dts[3] = {CF_F32, CF_F16, CF_BF16};
    int n = 0;
    for (int di = 0; di < 3; di++)
        for (int f = 0; f < 5; f++) {
            if (level < 0 && f % 3 != di) continue; /* emulated: each shape in one dtype */
            attn_case c;
            attn_case_init(&c);
            c.B = 3, c.H = 6, c.Hk = 3, c.Sq = 97, c.Sk = 130, c.D = 40, c.Dv = 40;
            c.dtype = dts[di];
            c.seed = 100 + (uint64_t)(di * 10 + f);
            if (f == 1) c.causal = 1, c.Sq = c.Sk = 150;
            if (f == 2)
                c.window_left = 20, c.window_right = 7, c.softcap = 1.5f, c.dropout_p = 0.2f,
                c.alibi = ATTN_ALIBI_H;
            if (f == 3) c.D = 33, c.Dv = 17, c.layout = TT_PADDED, c.Hk = 6, c.B = 2; /* odd dims */
            if (f == 4) {
                c.varlen = 1, c.B = 3;
                const int32_t lq[3] = {70, 1, 33}, lk[3] = {64, 90, 5};
                for (int b = 0; b < 3; b++)
                    c.seqlens_q[b] = lq[b], c.seqlens_k[b] = lk[b];
                c.causal = 1;
            }
            attn_problem* p = attn_problem_new(&c);
            CHECK(p != NULL);
            if (!p) continue;
            char msg[768];
            CHECK_OK(attn_problem_run_bwd(ctx, p));
            CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "%s: %s", backend, msg);
            CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "%s: %s", backend, msg);
            attn_problem_free(p);
            n++;
        }
    printf("%s one-pass backward: %d cases\n", backend, n);
    cflash_context_free(ctx);
}

int main(void) {
    const int level = tt_test_level();
    int any = 0;
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
        char why[512];
        if (!tt_backend_selected(backends[i])) continue; /* CFLASH_TEST_BACKENDS */
        if (!backend_available(backends[i], why, sizeof why)) {
            printf("%s: not available here (%s): checking the forced error\n", backends[i], why);
            test_unavailable(backends[i], why);
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
            int ran = 0, skipped = 0;
            double t0 = tt_now();
            int fails = attn_grid_run(&o, &ran, &skipped);
            printf("%s %s: %d cases, %d skipped, %d failed (%.1f s)\n", backends[i],
                   bwd ? "fwd+bwd" : "fwd", ran, skipped, fails, tt_now() - t0);
            CHECK_MSG(skipped == 0, "%s skipped %d cases as unsupported", backends[i], skipped);
            CHECK_MSG(ran > 0, "%s ran no case", backends[i]);
        }
        test_one_pass(backends[i], level);
    }
    CHECK_MSG(any || !tt_backend_selected("cpu-generic"),
              "no CPU backend available (cpu-generic always is)");
    return tt_summary();
}
