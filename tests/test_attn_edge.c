/* Attention edge cases that are valid input: empty batches and sequences (with and without data
 * pointers), rows or keys that see nothing, the forward without lse, default versus explicit
 * scale, causal versus its window form, thread counts, NULL context, CFLASH_BACKEND, explain. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"
#include "oracle/attn_oracle.h"

static const char* backend = "cpu-ref";

static cflash_context* make_ctx(int threads) {
    cflash_context* ctx = NULL;
    cflash_context_create(&ctx);
    cflash_context_set_backend(ctx, backend);
    cflash_context_set_threads(ctx, threads);
    return ctx;
}

/* Runs fwd + bwd on c and checks both against the oracle (coverage included). */
static void run_checked(const attn_case* c) {
    char name[256], msg[1024];
    attn_case_str(c, name, sizeof name);
    attn_problem* p = attn_problem_new(c);
    CHECK_MSG(p != NULL, "%s: setup", name);
    if (!p) return;
    cflash_context* ctx = make_ctx(0);
    cflash_status s = attn_problem_run_fwd(ctx, p);
    CHECK_MSG(s == CFLASH_OK, "%s: forward: %s", name, cflash_last_error());
    if (s == CFLASH_OK) CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "%s", msg);
    s = attn_problem_run_bwd(ctx, p);
    CHECK_MSG(s == CFLASH_OK, "%s: backward: %s", name, cflash_last_error());
    if (s == CFLASH_OK) CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "%s", msg);
    cflash_context_free(ctx);
    attn_problem_free(p);
}

static void test_empty(void) {
    attn_case c;
    /* No queries, some keys: dk and dv must come back 0. */
    attn_case_init(&c);
    c.B = 2, c.H = 4, c.Hk = 2, c.Sq = 0, c.Sk = 9, c.D = 8, c.Dv = 5, c.layout = TT_PADDED;
    run_checked(&c);
    /* No keys: out 0, lse -inf, dq 0. */
    attn_case_init(&c);
    c.B = 2, c.H = 2, c.Hk = 1, c.Sq = 7, c.Sk = 0, c.D = 8, c.Dv = 8, c.causal = 1;
    run_checked(&c);
    /* Varlen where every query sequence is empty, and where every key sequence is empty. */
    attn_case_init(&c);
    c.varlen = 1, c.B = 3, c.H = 2, c.Hk = 2, c.D = 4, c.Dv = 4, c.layout = TT_PERMUTED;
    int32_t zq[3] = {0, 0, 0}, kq[3] = {3, 0, 5};
    memcpy(c.seqlens_q, zq, sizeof zq), memcpy(c.seqlens_k, kq, sizeof kq);
    run_checked(&c);
    memcpy(c.seqlens_q, kq, sizeof kq), memcpy(c.seqlens_k, zq, sizeof zq);
    c.alibi = ATTN_ALIBI_BH, c.dropout_p = 0.2f;
    run_checked(&c);
    /* B = 0: nothing to do, OK. */
    attn_case_init(&c);
    c.B = 0, c.Sq = 5, c.Sk = 5, c.D = 4, c.Dv = 4;
    run_checked(&c);

    /* Empty tensors without a data pointer (what PyTorch hands over for zero elements). */
    attn_case_init(&c);
    c.B = 1, c.H = 2, c.Hk = 2, c.Sq = 0, c.Sk = 6, c.D = 4, c.Dv = 3;
    attn_problem* p = attn_problem_new(&c);
    if (p) {
        cflash_context* ctx = make_ctx(1);
        attn_dl t;
        attn_problem_host_dl(p, &t);
        DLTensor q = p->q.dl, out = p->out.dl, lse = p->lse.dl, dout = p->dout.dl, dq = p->dq.dl;
        q.data = out.data = lse.data = dout.data = dq.data = NULL;
        t.q = &q, t.out = &out, t.lse = &lse, t.dout = &dout, t.dq = &dq;
        CHECK_OK(attn_problem_call_fwd(ctx, p, &t));
        tt_poison(&p->dk), tt_poison(&p->dv);
        CHECK_OK(attn_problem_call_bwd(ctx, p, &t));
        int zeros = tt_count_nan(&p->dk) == 0 && tt_count_nan(&p->dv) == 0;
        for (int64_t n = 0; n < p->dk.numel; n++)
            zeros &= tt_get_flat(&p->dk, n) == 0;
        for (int64_t n = 0; n < p->dv.numel; n++)
            zeros &= tt_get_flat(&p->dv, n) == 0;
        CHECK_MSG(zeros, "Sq = 0 with NULL data: dk and dv must be written as 0");
        /* A non-empty tensor with NULL data is still an error. */
        DLTensor k = p->k.dl;
        k.data = NULL;
        t.k = &k;
        CHECK_ERR(attn_problem_call_fwd(ctx, p, &t), CFLASH_ERR_INVALID_ARGUMENT,
                  "k: data is NULL");
        cflash_context_free(ctx);
        attn_problem_free(p);
    }
}

/* Copies of a problem's output, to compare calls. */
static tt_tensor snapshot(const tt_tensor* t) {
    tt_tensor s;
    tt_alloc_like(&s, t);
    memcpy(s.base, t->base, t->bytes);
    return s;
}

static int same_values(const tt_tensor* a, const tt_tensor* b) {
    for (int64_t n = 0; n < a->numel; n++) {
        double x = tt_get_flat(a, n), y = tt_get_flat(b, n);
        if (!(x == y || (isnan(x) && isnan(y)))) return 0;
    }
    return 1;
}

static void test_equivalences(void) {
    attn_case c;
    attn_case_init(&c);
    c.B = 2, c.H = 4, c.Hk = 1, c.Sq = 37, c.Sk = 50, c.D = 16, c.Dv = 12, c.causal = 1;
    c.dtype = CF_BF16, c.layout = TT_PADDED, c.seed = 11;
    attn_problem* p = attn_problem_new(&c);
    if (!p) return;
    cflash_context* ctx1 = make_ctx(1);
    cflash_context* ctx2 = make_ctx(2);
    CHECK_OK(attn_problem_run_bwd(ctx1, p));
    tt_tensor out = snapshot(&p->out), lse = snapshot(&p->lse), dq = snapshot(&p->dq),
              dk = snapshot(&p->dk);

    /* Thread count does not change a bit (the CPU backward is deterministic). */
    p->fwd_ran = 0;
    CHECK_OK(attn_problem_run_bwd(ctx2, p));
    CHECK_MSG(same_values(&out, &p->out) && same_values(&lse, &p->lse), "forward: 1 vs 2 threads");
    CHECK_MSG(same_values(&dq, &p->dq) && same_values(&dk, &p->dk), "backward: 1 vs 2 threads");

    /* NULL context = a default one (auto backend); explicit scale 1/sqrt(D) = default; causal =
     * window (-1, 0). */
    cflash_context* ctx_auto = NULL;
    cflash_context_create(&ctx_auto);
    tt_poison(&p->out);
    CHECK_OK(attn_problem_call_fwd(ctx_auto, p, NULL));
    tt_tensor out_auto = snapshot(&p->out);
    tt_poison(&p->out);
    CHECK_OK(attn_problem_call_fwd(NULL, p, NULL));
    CHECK_MSG(same_values(&out_auto, &p->out), "NULL context differs from a default context");
    tt_free(&out_auto);
    cflash_context_free(ctx_auto);
    p->params.softmax_scale = (float)(1.0 / sqrt(16.0));
    tt_poison(&p->out);
    CHECK_OK(attn_problem_call_fwd(ctx1, p, NULL));
    CHECK_MSG(same_values(&out, &p->out), "explicit default scale gives other values");
    p->params.causal = 0, p->params.window_left = -1, p->params.window_right = 0;
    tt_poison(&p->out), tt_poison(&p->lse);
    CHECK_OK(attn_problem_call_fwd(ctx1, p, NULL));
    CHECK_MSG(same_values(&out, &p->out) && same_values(&lse, &p->lse),
              "window (-1, 0) differs from causal");
    /* causal with an explicit right window: causal wins (window_right folded to 0). */
    p->params.causal = 1, p->params.window_right = 5;
    tt_poison(&p->out);
    CHECK_OK(attn_problem_call_fwd(ctx1, p, NULL));
    CHECK_MSG(same_values(&out, &p->out), "causal + window_right 5 differs from causal");

    /* The forward without lse writes the same out. */
    p->params.window_right = -1;
    p->c.no_lse = 1;
    tt_poison(&p->out), tt_poison(&p->lse);
    CHECK_OK(attn_problem_call_fwd(ctx1, p, NULL));
    CHECK_MSG(same_values(&out, &p->out), "out without lse differs");
    CHECK_MSG(tt_count_nan(&p->lse) == p->lse.numel, "lse written although NULL was passed");
    p->c.no_lse = 0;
    tt_free(&out), tt_free(&lse), tt_free(&dq), tt_free(&dk);
    cflash_context_free(ctx1);
    cflash_context_free(ctx2);
    attn_problem_free(p);
}

static void test_backend_selection(void) {
    attn_case c;
    attn_case_init(&c);
    c.B = 1, c.H = 2, c.Sq = 3, c.Sk = 4, c.D = 8, c.Dv = 8;
    attn_problem* p = attn_problem_new(&c);
    if (!p) return;
    char name[64];
    /* CFLASH_BACKEND forces a backend for contexts that set none; the context's choice wins. */
    setenv("CFLASH_BACKEND", "cpu-ref", 1);
    CHECK_OK(attn_problem_explain(NULL, p, NULL, 0, name, sizeof name));
    CHECK_MSG(!strcmp(name, "cpu-ref"), "CFLASH_BACKEND=cpu-ref: explain says '%s'", name);
    CHECK_OK(attn_problem_explain(NULL, p, NULL, 1, name, sizeof name));
    CHECK_MSG(!strcmp(name, "cpu-ref"), "CFLASH_BACKEND=cpu-ref (bwd): explain says '%s'", name);
    cflash_context* ctx = NULL;
    cflash_context_create(&ctx);
    CHECK_OK(cflash_context_set_backend(ctx, "cuda-simt"));
    CHECK_ERR(attn_problem_explain(ctx, p, NULL, 0, name, sizeof name), CFLASH_ERR_UNSUPPORTED,
              "cuda-simt");
    CHECK_MSG(!strcmp(name, "none"), "forced cuda-simt on CPU tensors: explain says '%s'", name);
    unsetenv("CFLASH_BACKEND");
    /* auto: some CPU backend serves; explain's buffer has one line per backend and the arrow. */
    CHECK_OK(cflash_context_set_backend(ctx, "auto"));
    CHECK_OK(attn_problem_explain(ctx, p, NULL, 0, name, sizeof name));
    CHECK_MSG(!strncmp(name, "cpu-", 4), "auto on CPU tensors: explain says '%s'", name);
    char buf[1024];
    CHECK_OK(cflash_context_set_explain(ctx, buf, sizeof buf));
    CHECK_OK(attn_problem_call_fwd(ctx, p, NULL));
    CHECK_MSG(strstr(buf, ": OKAY\n") && strstr(buf, "-> cpu-"), "explain text: %s", buf);
    /* explain never writes outputs */
    CHECK(tt_count_nan(&p->out) == p->out.numel);
    cflash_context_free(ctx);
    attn_problem_free(p);
}

int main(int argc, char** argv) {
    if (argc > 1) backend = argv[1];
    test_empty();
    test_equivalences();
    test_backend_selection();
    return tt_summary();
}
