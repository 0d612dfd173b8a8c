/* Dispatch: the selection logic with fake implementations (order, availability, supports, forced
 * backends, explain text, fallback logging once per distinct reason), then the real library path
 * (CFLASH_BACKEND, context backend, explain mode) with an attention call that must succeed.
 * Run as test_dispatch (CFLASH_LOG unset: the test sets info) and test_dispatch_debug
 * (CFLASH_LOG=debug: every choice is logged). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/testutil.h"
#include "dispatch/dispatch.h"
#include "probe/dynlib.h"
#include "report_smoke.h"

/* ---- Fake implementations ---- */

typedef struct fake_call {
    int d;
} fake_call;

static int runs_amx, runs_avx512, runs_ref, runs_cuda;

static int no_amx(char* reason, size_t len) {
    snprintf(reason, len, "fake: CPU lacks AMX");
    return 0;
}
static int avx512_supports(const void* call, char* reason, size_t len) {
    int d = ((const fake_call*)call)->d;
    if (d <= 64) return 1;
    snprintf(reason, len, "head dim %d > 64", d);
    return 0;
}
static int ref_supports(const void* call, char* reason, size_t len) {
    (void)reason, (void)len; /* rejects without a reason: dispatch must supply one */
    return ((const fake_call*)call)->d != 999;
}
static cflash_status run_amx(const void* c) {
    return (void)c, runs_amx++, CFLASH_OK;
}
static cflash_status run_avx512(const void* c) {
    return (void)c, runs_avx512++, CFLASH_OK;
}
static cflash_status run_ref(const void* c) {
    return (void)c, runs_ref++, CFLASH_OK;
}
static cflash_status run_cuda(const void* c) {
    return (void)c, runs_cuda++, CFLASH_OK;
}

static const cf_impl f_amx = {.backend = "cpu-amx",
                              .op = CFLASH_OP_ATTN_FWD,
                              .device_type = kDLCPU,
                              .run = run_amx,
                              .available = no_amx};
static const cf_impl f_avx512 = {.backend = "cpu-avx512",
                                 .op = CFLASH_OP_ATTN_FWD,
                                 .device_type = kDLCPU,
                                 .supports = avx512_supports,
                                 .run = run_avx512};
static const cf_impl f_ref = {.backend = "cpu-ref",
                              .op = CFLASH_OP_ATTN_FWD,
                              .device_type = kDLCPU,
                              .supports = ref_supports,
                              .run = run_ref};
static const cf_impl f_cuda = {
    .backend = "cuda-simt", .op = CFLASH_OP_ATTN_FWD, .device_type = kDLCUDA, .run = run_cuda};
static const cf_impl* const fakes[] = {&f_amx, &f_avx512, &f_ref, &f_cuda};
#define NF (sizeof fakes / sizeof fakes[0])

static cflash_status go(int d, int device, const char* forced, char* explain_buf, size_t len) {
    fake_call c = {d};
    cf_explain e = {explain_buf, len};
    return cf_dispatch_impls(CFLASH_OP_ATTN_FWD, fakes, NF, device, forced, &c,
                             explain_buf ? &e : NULL);
}

/* stderr goes to a temporary file so the log lines can be counted. */
static FILE* log_file;
static int count_in_log(const char* needle) {
    fflush(stderr);
    long end = ftell(log_file);
    (void)end;
    rewind(log_file);
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, log_file))
        if (strstr(line, needle)) n++;
    fseek(log_file, 0, SEEK_END);
    return n;
}

static void test_selection(void) {
    CHECK_OK(go(32, kDLCPU, NULL, NULL, 0));
    CHECK(runs_avx512 == 1 && runs_amx == 0 && runs_ref == 0);
    CHECK_OK(go(128, kDLCPU, NULL, NULL, 0));
    CHECK(runs_ref == 1 && runs_avx512 == 1);
    CHECK_OK(go(32, kDLCUDA, NULL, NULL, 0));
    CHECK(runs_cuda == 1);

    /* Nobody serves: every reason, the one dispatch supplies for a silent rejection included. */
    CHECK_ERR(go(999, kDLCPU, NULL, NULL, 0), CFLASH_ERR_UNSUPPORTED,
              "attn_fwd: no backend can serve this call: cpu-amx: fake: CPU lacks AMX; cpu-avx512: "
              "head dim 999 > 64; cpu-ref: cannot serve this call");
    /* A device with no backend at all. */
    CHECK_ERR(go(32, kDLCUDAHost, NULL, NULL, 0), CFLASH_ERR_UNSUPPORTED,
              "no backend in this build serves cuda_host tensors");
    CHECK(runs_ref == 1 && runs_avx512 == 1 && runs_cuda == 1);
}

static void test_explain_fake(void) {
    char buf[1024];
    CHECK_OK(go(128, kDLCPU, NULL, buf, sizeof buf));
    CHECK_MSG(!strcmp(buf, "cpu-amx: NO: fake: CPU lacks AMX\ncpu-avx512: NO: head dim 128 > 64\n"
                           "cpu-ref: OKAY\n-> cpu-ref\n"),
              "explain gave:\n%.900s", buf);
    /* Explain goes on past the chosen one, and never runs anything. */
    CHECK_OK(go(32, kDLCPU, NULL, buf, sizeof buf));
    CHECK_MSG(!strcmp(buf, "cpu-amx: NO: fake: CPU lacks AMX\ncpu-avx512: OKAY\ncpu-ref: OKAY\n"
                           "-> cpu-avx512\n"),
              "explain gave:\n%.900s", buf);
    CHECK(runs_avx512 == 1 && runs_ref == 1);
    CHECK_ERR(go(999, kDLCPU, NULL, buf, sizeof buf), CFLASH_ERR_UNSUPPORTED, "no backend");
    CHECK(strstr(buf, "-> none\n") != NULL);
    /* A tiny buffer truncates, never overflows. */
    char tiny[8];
    memset(tiny, 'x', sizeof tiny);
    CHECK_OK(go(32, kDLCPU, NULL, tiny, 5));
    CHECK(strlen(tiny) < 5 && tiny[5] == 'x');
}

static void test_forced_fake(void) {
    char buf[512];
    CHECK_OK(go(32, kDLCPU, "cpu-avx512", NULL, 0));
    CHECK(runs_avx512 == 2);
    /* Forced but the call is beyond it: its reason and the ones that could, nothing runs. */
    CHECK_ERR(go(128, kDLCPU, "cpu-avx512", NULL, 0), CFLASH_ERR_UNSUPPORTED,
              "backend 'cpu-avx512' is forced");
    CHECK(strstr(cflash_last_error(), "head dim 128 > 64; backends that could: cpu-ref"));
    CHECK_ERR(go(32, kDLCPU, "cpu-amx", NULL, 0), CFLASH_ERR_UNSUPPORTED,
              "cannot serve this call: fake: CPU lacks AMX; backends that could: cpu-avx512, "
              "cpu-ref");
    CHECK_ERR(go(32, kDLCPU, "cpu-generic", NULL, 0), CFLASH_ERR_UNSUPPORTED,
              "not implemented for attn_fwd in this build");
    CHECK_ERR(go(32, kDLCPU, "cuda-simt", NULL, 0), CFLASH_ERR_UNSUPPORTED,
              "serves cuda tensors, these are on cpu");
    CHECK_ERR(go(999, kDLCPU, "cpu-ref", NULL, 0), CFLASH_ERR_UNSUPPORTED,
              "no other backend could either");
    CHECK_ERR(go(32, kDLCPU, "cpu-fast", NULL, 0), CFLASH_ERR_INVALID_ARGUMENT,
              "'cpu-fast' (from the context or CFLASH_BACKEND) is not a backend name");
    CHECK(runs_avx512 == 2 && runs_amx == 0 && runs_ref == 1 && runs_cuda == 1);
    /* Explain of a forced call. */
    CHECK_ERR(go(128, kDLCPU, "cpu-avx512", buf, sizeof buf), CFLASH_ERR_UNSUPPORTED, "forced");
    CHECK_MSG(!strcmp(buf, "cpu-avx512: NO: head dim 128 > 64\n-> none\n"), "explain: %.900s", buf);
    CHECK_OK(go(128, kDLCPU, "cpu-ref", buf, sizeof buf));
    CHECK_MSG(!strcmp(buf, "cpu-ref: OKAY\n-> cpu-ref\n"), "explain: %.900s", buf);
}

static void test_logging(int debug) {
    int before = count_in_log("cpu-avx512 cannot serve (head dim 130 > 64)");
    CHECK(before == 0);
    for (int i = 0; i < 3; i++)
        CHECK_OK(go(130, kDLCPU, NULL, NULL, 0));
    CHECK_MSG(count_in_log("cflash info: attn_fwd: cpu-avx512 cannot serve (head dim 130 > 64); "
                           "falling back to cpu-ref") == 1,
              "a fallback must be logged once per distinct reason");
    CHECK_OK(go(131, kDLCPU, NULL, NULL, 0));
    CHECK(count_in_log("cpu-avx512 cannot serve (head dim 131 > 64)") == 1);
    /* The AMX reason is the same every time: logged once in the whole process. */
    CHECK(count_in_log("cpu-amx cannot serve (fake: CPU lacks AMX); falling back to cpu-ref") == 1);
    /* Explain does not log fallbacks. */
    char buf[512];
    CHECK_OK(go(132, kDLCPU, NULL, buf, sizeof buf));
    CHECK(count_in_log("head dim 132") == 0);
    int serves = count_in_log("cflash debug: attn_fwd: cpu-ref serves");
    if (debug)
        CHECK_MSG(serves >= 4, "debug logs every choice, saw %d", serves);
    else
        CHECK_MSG(serves == 0, "debug lines at info level: %d", serves);
}

/* A kernel not yet verified on its hardware: passed over by the automatic choice with its
 * reason (explain, error, log), served when forced. */
static int runs_unverified;
static cflash_status run_unverified(const void* c) {
    return (void)c, runs_unverified++, CFLASH_OK;
}
static const cf_impl f_unverified = {.backend = "cpu-amx",
                                     .op = CFLASH_OP_ATTN_FWD,
                                     .device_type = kDLCPU,
                                     .run = run_unverified,
                                     .unverified = "fake: not yet verified on AMX hardware"};
static void test_unverified(void) {
    const cf_impl* const list[] = {&f_unverified, &f_avx512, &f_ref};
    fake_call c = {32};
    int avx512_before = runs_avx512;
    CHECK_OK(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 3, kDLCPU, NULL, &c, NULL));
    CHECK(runs_unverified == 0 && runs_avx512 == avx512_before + 1);
    CHECK(count_in_log("cpu-amx cannot serve (fake: not yet verified on AMX hardware); falling "
                       "back to cpu-avx512") == 1);
    char buf[512];
    cf_explain e = {buf, sizeof buf};
    CHECK_OK(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 3, kDLCPU, NULL, &c, &e));
    CHECK_MSG(!strcmp(buf, "cpu-amx: NO: fake: not yet verified on AMX hardware\n"
                           "cpu-avx512: OKAY\ncpu-ref: OKAY\n-> cpu-avx512\n"),
              "explain: %.500s", buf);
    /* Nothing else serves: the reason is in the error. */
    fake_call big = {999};
    CHECK_ERR(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 3, kDLCPU, NULL, &big, NULL),
              CFLASH_ERR_UNSUPPORTED, "cpu-amx: fake: not yet verified on AMX hardware");
    /* Forced: it serves, and explain says so. */
    CHECK_OK(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 3, kDLCPU, "cpu-amx", &c, NULL));
    CHECK(runs_unverified == 1);
    CHECK_OK(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 3, kDLCPU, "cpu-amx", &c, &e));
    CHECK_MSG(!strcmp(buf, "cpu-amx: OKAY\n-> cpu-amx\n"), "explain: %.500s", buf);
    CHECK(runs_unverified == 1);
}

/* A backend that serves some calls through code not its own (cpu-amx's paged K/V on cpu-avx512's
 * driver): the note on its OKAY line in explain mode, chosen or forced, and once in the info log
 * when it serves; calls on its own kernels say nothing. */
static int runs_routed;
static cflash_status run_routed(const void* c) {
    return (void)c, runs_routed++, CFLASH_OK;
}
static int fake_route(const void* call, char* note, size_t len) {
    if (((const fake_call*)call)->d != 48) return 0;
    snprintf(note, len, "through fake's driver: head dim 48");
    return 1;
}
static const cf_impl f_routed = {.backend = "cpu-amx",
                                 .op = CFLASH_OP_ATTN_FWD,
                                 .device_type = kDLCPU,
                                 .run = run_routed,
                                 .route = fake_route};
static void test_route(void) {
    const cf_impl* const list[] = {&f_routed, &f_ref};
    fake_call routed = {48}, own = {32};
    char buf[512];
    cf_explain e = {buf, sizeof buf};
    CHECK_OK(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 2, kDLCPU, NULL, &routed, &e));
    CHECK_MSG(!strcmp(buf, "cpu-amx: OKAY (through fake's driver: head dim 48)\ncpu-ref: OKAY\n"
                           "-> cpu-amx\n"),
              "explain: %.500s", buf);
    CHECK_OK(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 2, kDLCPU, "cpu-amx", &routed, &e));
    CHECK_MSG(!strcmp(buf, "cpu-amx: OKAY (through fake's driver: head dim 48)\n-> cpu-amx\n"),
              "explain: %.500s", buf);
    CHECK_OK(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 2, kDLCPU, NULL, &own, &e));
    CHECK_MSG(!strcmp(buf, "cpu-amx: OKAY\ncpu-ref: OKAY\n-> cpu-amx\n"), "explain: %.500s", buf);
    CHECK(runs_routed == 0 && count_in_log("through fake's driver") == 0); /* (explain: no run) */
    for (int i = 0; i < 2; i++)
        CHECK_OK(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 2, kDLCPU, NULL, &routed, NULL));
    CHECK_OK(cf_dispatch_impls(CFLASH_OP_ATTN_FWD, list, 2, kDLCPU, NULL, &own, NULL));
    CHECK(runs_routed == 3);
    CHECK(count_in_log("attn_fwd: cpu-amx serves this call through fake's driver: head dim 48") ==
          1);
}

/* ---- The registry ---- */

/* Backend names come from the registered rows: each name has rows, each row's backend is named
 * once, and the per-op lists keep the names' priority order. */
static void test_registry(void) {
    size_t n_names = 0;
    while (cf_backend_name(n_names))
        n_names++;
    CHECK(n_names > 0 && cf_backend_known("cpu-ref") && !cf_backend_known("no-such-backend"));
    for (size_t i = 0; i < n_names; i++) {
        const char* name = cf_backend_name(i);
        size_t rows = 0;
        for (int op = 0; op < CFLASH_OP_COUNT; op++) {
            size_t n = 0;
            const cf_impl* const* impls = cf_impls_for((cflash_op)op, &n);
            for (size_t j = 0; j < n; j++)
                rows += !strcmp(impls[j]->backend, name);
        }
        CHECK_MSG(rows > 0, "backend %s is named but registers no row", name);
        for (size_t j = 0; j < i; j++)
            CHECK_MSG(strcmp(cf_backend_name(j), name), "%s named twice", name);
    }
    for (int op = 0; op < CFLASH_OP_COUNT; op++) {
        size_t n = 0, last = 0;
        const cf_impl* const* impls = cf_impls_for((cflash_op)op, &n);
        CHECK_MSG(n > 0, "no row for %s", cflash_op_name((cflash_op)op));
        for (size_t j = 0; j < n; j++) {
            size_t k = 0;
            while (k < n_names && strcmp(cf_backend_name(k), impls[j]->backend))
                k++;
            CHECK_MSG(k < n_names && k >= last, "%s: %s out of the names' order",
                      cflash_op_name((cflash_op)op), impls[j]->backend);
            last = k;
        }
    }
}

/* ---- The real library ---- */

static void test_library(void) {
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    unsetenv("CFLASH_BACKEND");
    CHECK_OK(smoke_attn(ctx, 0, 11));
    CHECK_OK(smoke_attn(ctx, 1, 12));

    /* CFLASH_BACKEND forcing a CUDA backend for CPU tensors: the reason and the CPU backends that
     * could, nothing written. */
    setenv("CFLASH_BACKEND", "cuda-simt", 1);
    CHECK_ERR(smoke_attn(ctx, 0, 13), CFLASH_ERR_UNSUPPORTED, "backend 'cuda-simt' is forced");
    const char* e = cflash_last_error();
    CHECK_MSG(strstr(e, "backends that could: ") && strstr(e, "cpu-ref"), "message: %s", e);
    CHECK_MSG(strstr(e, "serves cuda tensors, these are on cpu") ||
                  strstr(e, "not implemented for attn_fwd"),
              "message: %s", e);
    /* The context's choice wins over the environment. */
    CHECK_OK(cflash_context_set_backend(ctx, "cpu-ref"));
    CHECK_OK(smoke_attn(ctx, 0, 14));
    /* An explicit "auto" on the context also wins: a bad CFLASH_BACKEND is not consulted. */
    CHECK_OK(cflash_context_set_backend(ctx, "auto"));
    setenv("CFLASH_BACKEND", "no-such-backend", 1);
    CHECK_OK(smoke_attn(ctx, 0, 18));
    /* NULL returns the context to "not set": the environment applies again. */
    CHECK_OK(cflash_context_set_backend(ctx, NULL));
    setenv("CFLASH_BACKEND", "cpu-ref", 1);
    CHECK_OK(smoke_attn(ctx, 1, 15));
    setenv("CFLASH_BACKEND", "no-such-backend", 1);
    CHECK_ERR(smoke_attn(ctx, 0, 16), CFLASH_ERR_INVALID_ARGUMENT, "'no-such-backend'");
    setenv("CFLASH_BACKEND", "auto", 1);
    CHECK_OK(smoke_attn(ctx, 0, 17));
    unsetenv("CFLASH_BACKEND");
    CHECK_ERR(cflash_context_set_backend(ctx, "cpu-fast"), CFLASH_ERR_INVALID_ARGUMENT,
              "expected auto or one of: cpu-amx");

    cflash_context_free(ctx);
    /* CPU calls, forced CUDA backends included, never load libcuda (no cuInit: fork stays safe). */
    CHECK(!cf_dynlib_probed(CF_LIB_CUDA));
    CHECK(!cf_dynlib_probed(CF_LIB_NVRTC));
}

/* Explain mode (cflash_context_set_explain): it covers exactly one op call on its context, which
 * computes and writes nothing, succeeds or fails as the real call would, and then runs for real
 * again; buf NULL or len 0 clear it; it needs a context. */
static void test_explain_mode(void) {
    cflash_context *ctx, *other;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_create(&other));
    int64_t sh[4] = {1, 4, 2, 8}, sh0[4] = {0, 4, 2, 8};
    tt_tensor q, k, v, out, e0;
    tt_alloc(&q, CF_F32, 4, sh, TT_DENSE);
    tt_alloc(&k, CF_F32, 4, sh, TT_DENSE);
    tt_alloc(&v, CF_F32, 4, sh, TT_DENSE);
    tt_alloc(&out, CF_F32, 4, sh, TT_DENSE);
    tt_alloc(&e0, CF_F32, 4, sh0, TT_DENSE);
    tt_random(&q, 1, -1, 1);
    tt_random(&k, 2, -1, 1);
    tt_random(&v, 3, -1, 1);
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    char buf[2048];
#define FWD(c, o) cflash_attn_fwd((c), &p, &q.dl, &k.dl, &v.dl, (o), NULL)

    CHECK_ERR(cflash_context_set_explain(NULL, buf, sizeof buf), CFLASH_ERR_INVALID_ARGUMENT,
              "ctx: is NULL, expected a context");
    /* Explained: the choice in buf, nothing computed. */
    tt_poison(&out);
    strcpy(buf, "stale");
    CHECK_OK(cflash_context_set_explain(ctx, buf, sizeof buf));
    CHECK(buf[0] == 0);
    CHECK_OK(FWD(ctx, &out.dl));
    CHECK_MSG(strstr(buf, "cpu-ref: OKAY\n") && strstr(buf, "\n-> cpu-"), "explain: %.900s", buf);
    CHECK(tt_count_nan(&out) == out.numel);
    CHECK(strstr(buf, "cuda-") == NULL); /* CPU tensors: only the CPU list */
    int lines_ok = 1;                    /* one well-formed line per CPU backend, then the choice */
    for (char *l = buf, *nl; *l; l = nl + 1) {
        if (!(nl = strchr(l, '\n'))) break;
        lines_ok &= !strncmp(l, "-> ", 3) || strstr(l, ": OKAY\n") == nl - 6 ||
                    (strstr(l, ": OKAY (") && strstr(l, ")\n") == nl - 1) ||
                    (strstr(l, ": NO: ") && strstr(l, ": NO: ") < nl);
    }
    CHECK_MSG(lines_ok, "explain: %.900s", buf);
    /* One call only: the next one computes and leaves buf alone. */
    strcpy(buf, "untouched");
    CHECK_OK(FWD(ctx, &out.dl));
    CHECK(tt_count_nan(&out) == 0);
    CHECK(!strcmp(buf, "untouched"));
    /* A rejected call: the call's error, "not dispatched" in buf, and the mode ends with it. */
    tt_poison(&out);
    CHECK_OK(cflash_context_set_explain(ctx, buf, sizeof buf));
    CHECK_ERR(FWD(ctx, NULL), CFLASH_ERR_INVALID_ARGUMENT, "out");
    CHECK_MSG(strstr(buf, "not dispatched: CFLASH_ERR_INVALID_ARGUMENT: out") &&
                  strstr(buf, "\n-> none\n"),
              "explain: %.900s", buf);
    CHECK_OK(FWD(ctx, &out.dl));
    CHECK(tt_count_nan(&out) == 0);
    /* A forced backend that cannot serve: the status and message the call gives. */
    CHECK_OK(cflash_context_set_backend(ctx, "cuda-mma"));
    CHECK_OK(cflash_context_set_explain(ctx, buf, sizeof buf));
    CHECK_ERR(FWD(ctx, &out.dl), CFLASH_ERR_UNSUPPORTED, "backend 'cuda-mma' is forced");
    CHECK_MSG(strstr(buf, "cuda-mma: NO: ") && strstr(buf, "-> none\n"), "explain: %.900s", buf);
    char msg_explain[1024];
    snprintf(msg_explain, sizeof msg_explain, "%s", cflash_last_error());
    CHECK_ERR(FWD(ctx, &out.dl), CFLASH_ERR_UNSUPPORTED, msg_explain);
    CHECK_OK(cflash_context_set_backend(ctx, NULL));
    /* buf NULL or len 0: cleared, the call runs. */
    for (int how = 0; how < 2; how++) {
        tt_poison(&out);
        CHECK_OK(cflash_context_set_explain(ctx, buf, sizeof buf));
        CHECK_OK(cflash_context_set_explain(ctx, how ? buf : NULL, how ? 0 : sizeof buf));
        CHECK_OK(FWD(ctx, &out.dl));
        CHECK(tt_count_nan(&out) == 0);
    }
    /* The mode is ctx's: calls on another context or on NULL run, ctx's next call is explained. */
    tt_poison(&out);
    CHECK_OK(cflash_context_set_explain(ctx, buf, sizeof buf));
    CHECK_OK(FWD(other, &out.dl));
    CHECK(tt_count_nan(&out) == 0);
    tt_poison(&out);
    CHECK_OK(FWD(NULL, &out.dl));
    CHECK(tt_count_nan(&out) == 0);
    tt_poison(&out);
    CHECK_OK(FWD(ctx, &out.dl));
    CHECK(tt_count_nan(&out) == out.numel && strstr(buf, "\n-> cpu-"));
    /* A small buffer gets the text cut, NUL-terminated. */
    char small[8];
    memset(small, 'x', sizeof small);
    CHECK_OK(cflash_context_set_explain(ctx, small, sizeof small));
    CHECK_OK(FWD(ctx, &out.dl));
    CHECK(strlen(small) == sizeof small - 1);
    /* A call with nothing to do (B = 0) returns at once for real; explained, it shows the choice.
     */
    CHECK_OK(cflash_attn_fwd(ctx, &p, &e0.dl, &e0.dl, &e0.dl, &e0.dl, NULL));
    CHECK_OK(cflash_context_set_explain(ctx, buf, sizeof buf));
    CHECK_OK(cflash_attn_fwd(ctx, &p, &e0.dl, &e0.dl, &e0.dl, &e0.dl, NULL));
    CHECK_MSG(strstr(buf, "\n-> cpu-"), "explain: %.900s", buf);
#undef FWD
    tt_free(&q), tt_free(&k), tt_free(&v), tt_free(&out), tt_free(&e0);
    cflash_context_free(other);
    cflash_context_free(ctx);
}

int main(void) {
    const char* lvl = getenv("CFLASH_LOG");
    int debug = lvl && !strcmp(lvl, "debug");
    if (!lvl) setenv("CFLASH_LOG", "info", 1);
    /* Log lines go to a file the test reads back. */
    log_file = tmpfile();
    if (!log_file || dup2(fileno(log_file), 2) < 0) {
        printf("cannot redirect stderr\n");
        return 1;
    }
    setvbuf(stderr, NULL, _IONBF, 0);
    test_selection();
    test_explain_fake();
    test_forced_fake();
    test_logging(debug);
    test_unverified();
    test_route();
    test_registry();
    test_explain_mode();
    test_library();
    FILE* out = stdout;
    fprintf(out, "log level %s\n", debug ? "debug" : "info");
    return tt_summary();
}
