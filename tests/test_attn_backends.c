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

/* A small forward problem in dtype dt: S queries and keys, head dim D. */
static attn_problem* small_problem(cf_dtype dt, int64_t S, int64_t D) {
    attn_case c;
    attn_case_init(&c);
    c.dtype = dt;
    c.Sq = c.Sk = S;
    c.D = c.Dv = D;
    return attn_problem_new(&c);
}

/* The line "NAME: ..." of explain mode for a small forward in a dtype NAME serves: whether NAME
 * can run here, and the reason when not. */
static int backend_available(const char* name, cf_dtype dt, char* why, size_t len) {
    attn_problem* p = small_problem(dt, 4, 8);
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
    attn_problem* p = small_problem(dt, 5, 16);
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

/* The automatic choice for a small forward in dtype dt: the first backend explain mode calls
 * OKAY, into name. */
static void auto_choice(cf_dtype dt, char* name, size_t len, char* buf, size_t blen) {
    attn_problem* p = small_problem(dt, 40, 64);
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    buf[0] = 0;
    cflash_context_set_explain(ctx, buf, blen);
    CHECK_OK(attn_problem_call_fwd(ctx, p, NULL));
    name[0] = 0;
    const char* ok = strstr(buf, ": OKAY");
    if (ok) {
        const char* start = ok;
        while (start > buf && start[-1] != '\n')
            start--;
        size_t n = (size_t)(ok - start) < len ? (size_t)(ok - start) : len - 1;
        memcpy(name, start, n);
        name[n] = 0;
    }
    cflash_context_free(ctx);
    attn_problem_free(p);
}

/* cpu-amx passed the grid on AMX hardware (docs/PERF.md), so where it runs the automatic choice
 * takes it for bf16; for fp16 too, except on a CPU with AMX-FP16, whose tdpfp16ps path has not
 * run the grid on such a CPU: there the choice passes it over, saying so. */
static void test_amx_chosen(void) {
    char name[64], buf[2048];
    auto_choice(CF_BF16, name, sizeof name, buf, sizeof buf);
    CHECK_MSG(!strcmp(name, "cpu-amx"), "bf16: the automatic choice is '%s', not cpu-amx:\n%.900s",
              name, buf);
    auto_choice(CF_F16, name, sizeof name, buf, sizeof buf);
    if (strstr(buf, "cpu-amx: NO: "))
        CHECK_MSG(strstr(buf, "AMX-FP16") && !strcmp(name, "cpu-avx512"),
                  "fp16: cpu-amx passed over for a reason other than AMX-FP16:\n%.900s", buf);
    else
        CHECK_MSG(!strcmp(name, "cpu-amx"), "fp16: the automatic choice is '%s':\n%.900s", name,
                  buf);
    printf("cpu-amx: the automatic choice for bf16 and fp16 (%s)\n", name);
}

int main(void) {
    const int level = tt_test_level();
    int any = 0, nb = 0;
    const char* avail[sizeof backends / sizeof backends[0]];
    unsigned dts[sizeof backends / sizeof backends[0]];
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
        if (!strcmp(backends[i], "cpu-amx")) test_amx_chosen();
        avail[nb] = backends[i], dts[nb++] = backend_dtypes[i];
    }
    /* The grid on every available backend at once (one fp64 oracle per case for all of them). */
    for (int bwd = level<0; nb> 0 && bwd <= 1; bwd++) { /* emulated: fwd+bwd checks both */
        attn_grid_opts o;
        memset(&o, 0, sizeof o);
        o.level = level;
        o.bwd = bwd;
        o.threads = 2;
        int ran[sizeof backends / sizeof backends[0]],
            skipped[sizeof backends / sizeof backends[0]];
        double t0 = tt_now();
        attn_grid_run_many(&o, nb, avail, dts, ran, skipped);
        for (int k = 0; k < nb; k++) {
            printf("%s %s: %d cases, %d skipped\n", avail[k], bwd ? "fwd+bwd" : "fwd", ran[k],
                   skipped[k]);
            CHECK_MSG(skipped[k] == 0, "%s skipped %d cases as unsupported", avail[k], skipped[k]);
            CHECK_MSG(ran[k] > 0, "%s ran no case", avail[k]);
        }
        printf("%s: %.1f s\n", bwd ? "fwd+bwd" : "fwd", tt_now() - t0);
    }
    for (int k = 0; k < nb; k++) {
        attn_grid_one_pass(avail[k], dts[k], 2);
        attn_grid_decode_rows(avail[k], dts[k], 2);
    }
    CHECK_MSG(any || !tt_backend_selected("cpu-generic"),
              "no CPU backend available (cpu-generic always is)");
    return tt_summary();
}
