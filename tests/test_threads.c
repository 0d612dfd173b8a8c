/* The small-call thread policy (src/core/threads.h): the helper's rule, the attention work
 * estimate, and end to end that a tiny call on a 2-thread context resolves to 1 thread while a
 * medium one keeps 2 (read from the CFLASH_LOG=debug line every call builder logs), with the
 * tiny and medium results still checked against the fp64 oracle. Under CFLASH_SMALL_CALLS=parallel
 * (the ctest variant test_threads_parallel) every call must keep the 2 threads instead.
 * Usage: test_threads */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/attn_grid.h"
#include "common/testutil.h"
#include "core/threads.h"
#include "oracle/attn_oracle.h"
#include "probe/cpu_features.h"

/* ---- The rule ---------------------------------------------------------------------------- */

static void test_policy(void) {
    const double F = CF_MIN_FLOPS_PER_THREAD, Bm = CF_MIN_BYTES_PER_THREAD;
    CHECK(cf_threads_for(1, 1e12, F) == 1);
    CHECK(cf_threads_for(0, 1e12, F) == 1);
    CHECK(cf_threads_for(-3, 1e12, F) == 1);
    CHECK(cf_threads_for(2, 0.0, F) == 1);
    CHECK(cf_threads_for(2, -5.0, F) == 1);
    CHECK(cf_threads_for(2, 0.0 / 0.0, F) == 1); /* NaN work: one thread, never garbage */
    CHECK(cf_threads_for(2, F - 1, F) == 1);
    CHECK(cf_threads_for(2, 2 * F - 1, F) == 1);
    CHECK(cf_threads_for(2, 2 * F, F) == 2);
    CHECK(cf_threads_for(2, 1e15, F) == 2);
    CHECK(cf_threads_for(8, 3.5 * F, F) == 3);
    CHECK(cf_threads_for(64, 1e300, F) == 64);
    CHECK(cf_threads_for(4, 100.0, 0.0) == 4); /* no threshold: as requested */
    CHECK(cf_threads_for_flops(2, 2 * F) == 2 && cf_threads_for_flops(2, 2 * F - 1) == 1);
    CHECK(cf_threads_for_bytes(2, 2 * Bm) == 2 && cf_threads_for_bytes(2, 2 * Bm - 1) == 1);
    /* The measured thresholds stay in a sane range (docs/PERF.md "Small calls"). */
    CHECK(F >= 16e3 && F <= 4e6);
    CHECK(Bm >= 16e3 && Bm <= 4e6);
    /* Parallel regions never open more threads than items. */
    CHECK(cf_threads_items(2, 1) == 1);
    CHECK(cf_threads_items(2, 0) == 1);
    CHECK(cf_threads_items(4, 3) == 3);
    CHECK(cf_threads_items(4, 100) == 4);
    CHECK(cf_threads_items(0, 100) == 1);
}

static void test_attn_flops(void) {
    cf_attn_call c;
    memset(&c, 0, sizeof c);
    c.B = 1, c.H = 2, c.Sq = 8, c.Sk = 8, c.D = 16, c.Dv = 16;
    CHECK_NEAR(cf_attn_flops(&c), 2.0 * 64 * 2 * 32, 0);
    c.Dv = 48, c.Sk = 5, c.B = 3;
    CHECK_NEAR(cf_attn_flops(&c), 2.0 * 3 * 8 * 5 * 2 * 64, 0);
    /* varlen: the sum over sequences, not B x max_q x max_k */
    const int32_t cq[4] = {0, 1, 11, 14}, ck[4] = {0, 7, 9, 29};
    c.varlen = 1, c.cu_q = cq, c.cu_k = ck, c.Sq = 10, c.Sk = 20;
    CHECK_NEAR(cf_attn_flops(&c), 2.0 * (1 * 7 + 10 * 2 + 3 * 20) * 2 * 64, 0);
}

/* A team that sleeps between regions (OMP_WAIT_POLICY=passive, as the Python overhead bench
 * runs; the ctest variant test_threads_passive) needs CF_SLEEPING_TEAM_FACTOR times the work per
 * thread: the fp32 decode step B1 H32 Hk8 D128 Sk16 (256 KiB of KV-cache work, 9 us on one
 * thread) woke a second one for 17 us more. */
static void test_sleeping_team(int par) {
    const char *w = getenv("OMP_WAIT_POLICY"), *s = getenv("GOMP_SPINCOUNT");
    const int sleeping = (w && !strcasecmp(w, "passive")) || (s && !strcmp(s, "0"));
    const double f = sleeping ? CF_SLEEPING_TEAM_FACTOR : 1.0, Bm = CF_MIN_BYTES_PER_THREAD;
    CHECK(cf_threads_team_factor() == f);
    CHECK(CF_SLEEPING_TEAM_FACTOR >= 1.0 && CF_SLEEPING_TEAM_FACTOR <= 16.0);
    CHECK(cf_threads_resolve("test", 2, 2 * Bm, 0) == (sleeping && !par ? 1 : 2));
    CHECK(cf_threads_resolve("test", 2, 2 * f * Bm - 1, 0) == (par ? 2 : 1));
    CHECK(cf_threads_resolve("test", 2, 2 * f * Bm, 0) == 2);
    CHECK(cf_threads_resolve("test", 2, 2 * f * CF_MIN_FLOPS_PER_THREAD - 1, 1) == (par ? 2 : 1));
    CHECK(cf_threads_resolve("test", 2, 2 * f * CF_MIN_FLOPS_PER_THREAD, 1) == 2);
}

/* ---- End to end: the resolved count of real calls ------------------------------------------ */

/* Runs fn with stderr captured into buf. */
static void capture(void (*fn)(void*), void* arg, char* buf, size_t len) {
    buf[0] = 0;
    fflush(stderr);
    FILE* tmp = tmpfile();
    int saved = dup(2);
    if (!tmp || saved < 0) {
        tt_fail(__FILE__, __LINE__, "cannot capture stderr");
        return;
    }
    dup2(fileno(tmp), 2);
    fn(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t n = fread(buf, 1, len - 1, tmp);
    buf[n] = 0;
    fclose(tmp);
}

typedef struct run_arg {
    cflash_context* ctx;
    attn_problem* p;
    int bwd;
    cflash_status s;
} run_arg;

static void run_attn(void* a) {
    run_arg* r = a;
    r->s = attn_problem_run_fwd(r->ctx, r->p);
    if (r->s == CFLASH_OK && r->bwd) r->s = attn_problem_run_bwd(r->ctx, r->p);
}

static void check_resolved(cflash_context* ctx, int64_t S, int64_t D, int varlen, int bwd,
                           const char* want_fwd, const char* want_bwd) {
    attn_case c;
    attn_case_init(&c);
    c.H = c.Hk = 2;
    c.Sq = c.Sk = S;
    c.D = c.Dv = D;
    c.seed = 11 + (uint64_t)S;
    if (varlen) {
        c.varlen = 1;
        c.B = 2;
        c.seqlens_q[0] = c.seqlens_k[0] = (int32_t)S;
        c.seqlens_q[1] = c.seqlens_k[1] = 3;
    }
    attn_problem* p = attn_problem_new(&c);
    CHECK(p != NULL);
    if (!p) return;
    run_arg r = {ctx, p, bwd, CFLASH_OK};
    static char log[1 << 16];
    capture(run_attn, &r, log, sizeof log);
    CHECK_OK(r.s);
    CHECK_MSG(strstr(log, want_fwd) != NULL, "S%lld D%lld%s: expected \"%s\" in the log:\n%.1500s",
              (long long)S, (long long)D, varlen ? " varlen" : "", want_fwd, log);
    if (bwd)
        CHECK_MSG(strstr(log, want_bwd) != NULL,
                  "S%lld D%lld: expected \"%s\" in the log:\n%.1500s", (long long)S, (long long)D,
                  want_bwd, log);
    char msg[512];
    CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "S%lld D%lld: %s", (long long)S,
              (long long)D, msg);
    if (bwd)
        CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "S%lld D%lld: %s", (long long)S,
                  (long long)D, msg);
    attn_problem_free(p);
}

typedef struct norm_arg {
    cflash_context* ctx;
    int64_t M;
    cflash_status s;
} norm_arg;

static void run_norm(void* a) {
    norm_arg* r = a;
    const int64_t xs[2] = {r->M, 256}, ws[1] = {256};
    tt_tensor x, w, out;
    tt_alloc(&x, CF_F32, 2, xs, TT_DENSE);
    tt_random(&x, 5, -1, 1);
    tt_alloc(&w, CF_F32, 1, ws, TT_DENSE);
    tt_random(&w, 6, -1, 1);
    tt_alloc_like(&out, &x);
    cflash_norm_params np;
    cflash_norm_params_init(&np);
    r->s = cflash_norm_fwd(r->ctx, &np, &x.dl, NULL, &w.dl, NULL, &out.dl, NULL, NULL, NULL);
    tt_free(&x), tt_free(&w), tt_free(&out);
}

/* ---- The KV-cache decode's key splits (kv_plan): a long cache among short ones is split ------ */

typedef struct kv_arg {
    cflash_context* ctx;
    const int32_t* lens; /* [B] */
    int64_t B;
    cflash_status s;
} kv_arg;

/* A decode step, fp32, B (4 or 5) H8 Hk2 D128, caches of 4096 rows holding lens[b] keys. */
static void run_kv(void* a) {
    kv_arg* r = a;
    const int64_t B = r->B, qs[4] = {B, 1, 8, 128}, cs[4] = {B, 4096, 2, 128}, ls[1] = {B};
    tt_tensor q, kc, vc, out, sl;
    tt_alloc(&q, CF_F32, 4, qs, TT_DENSE);
    tt_random(&q, 7, -1, 1);
    tt_alloc(&kc, CF_F32, 4, cs, TT_DENSE);
    tt_random(&kc, 8, -1, 1);
    tt_alloc(&vc, CF_F32, 4, cs, TT_DENSE);
    tt_random(&vc, 9, -1, 1);
    tt_alloc_like(&out, &q);
    tt_alloc(&sl, CF_I32, 1, ls, TT_DENSE);
    memcpy(sl.base, r->lens, (size_t)B * sizeof(int32_t));
    cflash_attn_params ap;
    cflash_attn_params_init(&ap);
    cflash_kvcache_params kp;
    cflash_kvcache_params_init(&kp);
    kp.cache_seqlens = &sl.dl;
    r->s = cflash_attn_kvcache_fwd(r->ctx, &ap, &kp, &q.dl, &kc.dl, &vc.dl, &out.dl, NULL);
    tt_free(&q), tt_free(&kc), tt_free(&vc), tt_free(&out), tt_free(&sl);
}

/* Four caches alike: an item each, no splits (old and new rule agree). One of 4096 keys beside
 * three of 64: split in four as if alone (ceil(2 threads x 2 x 4096 / 4288)), where the old rule
 * (enough items for the threads twice over) left one thread all of it: 1.3-1.6x slower on Zen 4
 * for 32768 keys beside three of 512. docs/PERF.md, stop 47. Five alike: two splits each (ten
 * half items on 2 threads, not five whole ones in three rounds; 1.07-1.11x at B5 H32 Hk8 4096
 * keys on Zen 4, stop 49). */
static void test_kv_splits(cflash_context* ctx) {
    static const int32_t alike[4] = {4096, 4096, 4096, 4096}, skewed[4] = {4096, 64, 64, 64},
                         one[4] = {4096, 0, 0, 0}, short1[4] = {512, 0, 0, 0},
                         shorter[4] = {1000, 0, 0, 0}, five[5] = {4096, 4096, 4096, 4096, 4096};
    /* A short cache alone: splits of 256 keys with the team spinning (512 keys 1.8x faster on
     * Zen 4, 2 threads), 512 with it asleep (a wake costs more than half of 512 keys' work); 1000
     * keys in 2 splits, not 3 (kv_even_splits: on 2 threads the third ran alone). */
    const int asleep = cf_threads_team_factor() > 1.0;
    static const struct {
        const int32_t* lens;
        const char *want, *asleep;
        int64_t B;
    } cases[] = {{alike, "kvcache_fwd: items 4 (groups 4, key splits 1)", NULL, 4},
                 {skewed, "kvcache_fwd: items 16 (groups 4, key splits 4)", NULL, 4},
                 {one, "kvcache_fwd: items 16 (groups 4, key splits 4)", NULL, 4},
                 {short1, "kvcache_fwd: items 8 (groups 4, key splits 2)",
                  "kvcache_fwd: items 4 (groups 4, key splits 1)", 4},
                 {shorter, "kvcache_fwd: items 8 (groups 4, key splits 2)",
                  "kvcache_fwd: items 4 (groups 4, key splits 1)", 4},
                 {five, "kvcache_fwd: items 10 (groups 5, key splits 2)", NULL, 5}};
    static char log[1 << 16];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kv_arg r = {ctx, cases[i].lens, cases[i].B, CFLASH_OK};
        capture(run_kv, &r, log, sizeof log);
        CHECK_OK(r.s);
        const char* want = asleep && cases[i].asleep ? cases[i].asleep : cases[i].want;
        CHECK_MSG(strstr(log, want) != NULL, "lens %d %d %d %d: expected \"%s\":\n%.1500s",
                  cases[i].lens[0], cases[i].lens[1], cases[i].lens[2], cases[i].lens[3], want,
                  log);
    }
}

/* ---- Decode rows of the attention forward on the KV-cache kernels (x86) -------------------- */

/* A decode step through the attention forward (B2 H8 Hk2 Sq1 Sk 300: 4 query rows per KV head)
 * runs on cpu-avx512's / cpu-avx2's KV-cache kernels, said in the debug log, and is checked
 * against the fp64 oracle; with dropout (which that call does not take) or 32 rows a KV head it
 * stays on the tiled forward. Before stop 47 every one was tiled: 5-7x slower at 4096-32768 keys
 * on Zen 4 (docs/PERF.md). */
static void test_decode_rows(void) {
    const char* be = attn_backend_runs("cpu-avx512") ? "cpu-avx512"
                     : attn_backend_runs("cpu-avx2") ? "cpu-avx2"
                                                     : NULL;
    if (!be) {
        printf("decode rows: no x86 backend here, not checked\n");
        return;
    }
    char want[128];
    snprintf(want, sizeof want, "on %s's KV-cache kernels (decode rows)", be);
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, be));
    CHECK_OK(cflash_context_set_threads(ctx, 2));
    static char log[1 << 16];
    for (int k = 0; k < 3; k++) {
        attn_case c;
        attn_case_init(&c);
        c.B = 2, c.H = 8, c.Hk = 2, c.Sq = 1, c.Sk = 300, c.D = c.Dv = 64, c.causal = 1;
        c.dtype = CFLASH_DTYPE_BF16, c.seed = 77 + (uint64_t)k;
        if (k == 1) c.dropout_p = 0.1f;
        if (k == 2) c.Sq = 8; /* 32 rows a KV head */
        attn_problem* p = attn_problem_new(&c);
        CHECK(p != NULL);
        if (!p) continue;
        run_arg r = {ctx, p, 0, CFLASH_OK};
        capture(run_attn, &r, log, sizeof log);
        CHECK_OK(r.s);
        CHECK_MSG((strstr(log, want) != NULL) == (k == 0),
                  "case %d: \"%s\" %s in the log:\n%.1500s", k, want, k ? "found" : "not found",
                  log);
        char msg[512];
        CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "case %d: %s", k, msg);
        attn_problem_free(p);
    }
    /* A bias goes too, added by the items; a key it hides (-inf) does not reach the rows even
     * with an infinity in its V row (P = -0, skipped: cflash.h "Non-finite values"). */
    for (int k = 0; k < 2; k++) {
        attn_case c;
        attn_case_init(&c);
        c.B = 2, c.H = 8, c.Hk = 2, c.Sq = 2, c.Sk = 300, c.D = c.Dv = 64, c.bias = ATTN_BC_B1;
        c.dtype = k ? CFLASH_DTYPE_F32 : CFLASH_DTYPE_BF16, c.seed = 90 + (uint64_t)k;
        attn_problem* p = attn_problem_new(&c);
        CHECK(p != NULL);
        if (!p) continue;
        for (int64_t b = 0; b < 2; b++) {
            for (int64_t i = 0; i < 2; i++) {
                const int64_t at[4] = {b, 0, i, 37};
                tt_set(&p->bias, at, -INFINITY);
            }
            for (int64_t h = 0; h < 2; h++) {
                const int64_t at[4] = {b, 37, h, 5};
                tt_set(&p->v, at, INFINITY);
            }
        }
        attn_problem_refresh_inputs(p);
        run_arg r = {ctx, p, 0, CFLASH_OK};
        capture(run_attn, &r, log, sizeof log);
        CHECK_OK(r.s);
        CHECK_MSG(strstr(log, want) != NULL, "bias case %d: \"%s\" not in the log:\n%.1500s", k,
                  want, log);
        char msg[512];
        CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "bias case %d: %s", k, msg);
        attn_problem_free(p);
    }
    /* A boolean mask goes too: as left pads and lengths (transformers' SDPA masks), or kept. */
    int routed;
    attn_problem* p;
    for (int k = 0; (p = attn_decode_mask_problem(k, CFLASH_DTYPE_BF16, &routed)) != NULL; k++) {
        run_arg r = {ctx, p, 0, CFLASH_OK};
        capture(run_attn, &r, log, sizeof log);
        CHECK_OK(r.s);
        const char* how = routed == ATTN_MASK_RUNS ? "a mask of left pads and lengths"
                                                   : "a mask (added to the scores)";
        CHECK_MSG(strstr(log, want) && strstr(log, how),
                  "mask case %d: \"%s\" (%s) not in the log:\n%.1500s", k, want, how, log);
        char msg[512];
        CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "mask case %d: %s", k, msg);
        attn_problem_free(p);
    }
    cflash_context_free(ctx);
}

/* cpu-amx's forward hands decode rows to cpu-avx512's KV-cache kernels up to its own limit
 * (src/cpu/x86/amx.c amx_decode_rows: 4 query rows per KV head for bf16, 8 from 16384 keys, 16
 * for fp16 without AMX-FP16), which the debug log and explain mode's OKAY line say; more stay on
 * the tiles (20 and 32 rows: narrow tiles, S^T = K Q^T, amx_fwd.c). Every case against the fp64
 * oracle. On Intel model 167 the tiles took a bf16 decode step over 32768 keys at 0.4-0.5x the
 * kernels' speed (docs/PERF.md, stop 51). */
static void test_amx_decode_rows(void) {
    if (!attn_backend_runs_dtype("cpu-amx", CF_BF16)) {
        printf("cpu-amx decode rows: cpu-amx does not run here, not checked\n");
        return;
    }
    const int f16_pairs = !cf_cpu()->amx_fp16; /* fp16 as bf16 pairs on the tiles */
    static const struct {
        cflash_dtype dt;
        int64_t Sq, Sk;
        int routed;                                /* -1: fp16, routed only without AMX-FP16 */
    } cases[] = {{CFLASH_DTYPE_BF16, 1, 300, 1},   /* 4 rows a KV head */
                 {CFLASH_DTYPE_BF16, 2, 300, 0},   /* 8 */
                 {CFLASH_DTYPE_BF16, 2, 16384, 1}, /* 8 over AMX_LONG keys */
                 {CFLASH_DTYPE_BF16, 3, 16384, 0}, /* 12 */
                 {CFLASH_DTYPE_BF16, 5, 300, 0},   /* 20: a narrow tile of 32 rows */
                 {CFLASH_DTYPE_BF16, 8, 300, 0},   /* 32 */
                 {CFLASH_DTYPE_F16, 4, 300, -1},   /* 16 */
                 {CFLASH_DTYPE_F16, 5, 300, 0}};   /* 20, but 5 rows a sequence */
    const char* want = "on cpu-avx512's KV-cache kernels (decode rows)";
    const char* note = "cpu-amx: OKAY (through cpu-avx512's KV-cache kernels";
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, "cpu-amx"));
    CHECK_OK(cflash_context_set_threads(ctx, 2));
    static char log[1 << 16], explain[2048];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const int routed = cases[k].routed < 0 ? f16_pairs : cases[k].routed;
        attn_case c;
        attn_case_init(&c);
        c.B = 2, c.H = 8, c.Hk = 2, c.Sq = cases[k].Sq, c.Sk = cases[k].Sk, c.D = c.Dv = 64;
        c.causal = 1, c.dtype = cases[k].dt, c.seed = 120 + (uint64_t)k;
        attn_problem* p = attn_problem_new(&c);
        CHECK(p != NULL);
        if (!p) continue;
        explain[0] = 0; /* (explain mode: the next call computes nothing) */
        CHECK_OK(cflash_context_set_explain(ctx, explain, sizeof explain));
        CHECK_OK(attn_problem_run_fwd(ctx, p));
        run_arg r = {ctx, p, 0, CFLASH_OK};
        capture(run_attn, &r, log, sizeof log);
        CHECK_OK(r.s);
        CHECK_MSG((strstr(log, want) != NULL) == routed, "case %zu: \"%s\" %s in the log:\n%.1500s",
                  k, want, routed ? "not found" : "found", log);
        CHECK_MSG((strstr(explain, note) != NULL) == routed, "case %zu: explain:\n%s", k, explain);
        char msg[512];
        CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "case %zu: %s", k, msg);
        attn_problem_free(p);
    }
    cflash_context_free(ctx);
    printf("cpu-amx decode rows: %zu cases\n", sizeof cases / sizeof cases[0]);
}

int main(void) {
    /* Read once, at the library's first log call: set before any. */
    setenv("CFLASH_LOG", "debug", 1);
    test_policy();
    test_attn_flops();

    const char* sc = getenv("CFLASH_SMALL_CALLS");
    const int par = sc && !strcmp(sc, "parallel");
    CHECK(cf_threads_small_calls_parallel() == par);
    test_sleeping_team(par);
    const char* tiny_fwd = par ? "attn_fwd: threads 2 of 2" : "attn_fwd: threads 1 of 2";
    const char* tiny_bwd = par ? "attn_bwd: threads 2 of 2" : "attn_bwd: threads 1 of 2";

    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_threads(ctx, 2));
    /* Tiny: 8192 flops forward -> 1 thread (the case that cost 3.6-12.9 ms with 2 threads). */
    check_resolved(ctx, 8, 16, 0, 1, tiny_fwd, tiny_bwd);
    /* Medium: 2 x 128^2 x 2 x 128 = 8.4 Mflop -> 2 threads. */
    check_resolved(ctx, 128, 64, 0, 1, "attn_fwd: threads 2 of 2", "attn_bwd: threads 2 of 2");
    /* varlen: the work is summed over the sequences. */
    check_resolved(ctx, 5, 16, 1, 0, tiny_fwd, NULL);
    check_resolved(ctx, 200, 64, 1, 0, "attn_fwd: threads 2 of 2", NULL);

    /* A memory-bound op: RMSNorm of 2 rows (6 KiB) -> 1 thread; 1024 rows (3 MiB) -> 2. */
    static char log[1 << 16];
    norm_arg na = {ctx, 2, CFLASH_OK};
    capture(run_norm, &na, log, sizeof log);
    CHECK_OK(na.s);
    CHECK_MSG(strstr(log, par ? "norm: threads 2 of 2" : "norm: threads 1 of 2") != NULL,
              "log:\n%.1500s", log);
    na.M = 1024;
    capture(run_norm, &na, log, sizeof log);
    CHECK_OK(na.s);
    CHECK_MSG(strstr(log, "norm: threads 2 of 2") != NULL, "log:\n%.1500s", log);

    test_kv_splits(ctx);
    test_decode_rows();
    test_amx_decode_rows();

    /* A 1-thread context is never raised. */
    CHECK_OK(cflash_context_set_threads(ctx, 1));
    check_resolved(ctx, 128, 64, 0, 0, "attn_fwd: threads 1 of 1", NULL);
    cflash_context_free(ctx);
    return tt_summary();
}
