/* `cflash check`: runs attention forward (and with --bwd, backward) on the shape given by the
 * flags, with the chosen backend, against the fp64 oracle the tests use too
 * (tools/oracle/attn_oracle.c), and prints the max errors, the bounds of DESIGN.md's error rule,
 * the backend that served, and PASS or FAIL. Exit status: 0 pass, 1 error rule failed or the
 * library returned an error, 2 bad flags. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "oracle/attn_oracle.h"

int cf_cmd_check(int argc, char** argv);

/* Device copies of the problem's tensors (--device cuda). */
typedef struct dev_set {
    int device;
    void* base[12];
    DLTensor dl[12];
} dev_set;

enum { T_Q, T_K, T_V, T_DOUT, T_OUT, T_LSE, T_DQ, T_DK, T_DV, T_ALIBI, T_N };

static tt_tensor* host_tensor(attn_problem* p, int i) {
    tt_tensor* t[T_N] = {&p->q,   &p->k,  &p->v,  &p->dout, &p->out,
                         &p->lse, &p->dq, &p->dk, &p->dv,   &p->alibi};
    return t[i];
}

static int dev_upload(dev_set* d, attn_problem* p, char* err, size_t n) {
    DLDevice dev = {(DLDeviceType)d->device, 0};
    for (int i = 0; i < T_N; i++) {
        tt_tensor* t = host_tensor(p, i);
        if (!t->base) continue;
        d->base[i] = cf_tool_alloc(d->device, t->bytes, err, n);
        if (!d->base[i]) return -1;
        if (cf_tool_copy(d->device, d->base[i], t->base, t->bytes, 1, err, n)) return -1;
        d->dl[i] = tt_dl_on(t, d->base[i], dev);
    }
    return 0;
}

/* Copies the outputs (out, lse; with bwd dq, dk, dv) back into the host tensors. */
static int dev_download(dev_set* d, attn_problem* p, int bwd, char* err, size_t n) {
    if (cf_tool_sync(d->device, err, n)) return -1;
    int first = bwd ? T_DQ : T_OUT, last = bwd ? T_DV : T_LSE;
    for (int i = first; i <= last; i++) {
        tt_tensor* t = host_tensor(p, i);
        if (cf_tool_copy(d->device, t->base, d->base[i], t->bytes, 0, err, n)) return -1;
    }
    return 0;
}

static void dev_free(dev_set* d) {
    for (int i = 0; i < T_N; i++)
        cf_tool_free(d->device, d->base[i]);
}

static void dev_dl(dev_set* d, attn_dl* t) {
    memset(t, 0, sizeof *t); /* block_table, seqused_q / _k: none (the CUDA backends refuse them) */
    t->q = &d->dl[T_Q], t->k = &d->dl[T_K], t->v = &d->dl[T_V], t->dout = &d->dl[T_DOUT];
    t->out = &d->dl[T_OUT], t->lse = &d->dl[T_LSE];
    t->dq = &d->dl[T_DQ], t->dk = &d->dl[T_DK], t->dv = &d->dl[T_DV];
    t->alibi = d->base[T_ALIBI] ? &d->dl[T_ALIBI] : NULL;
}

static void print_errors(const attn_errors* e, const char* dir, int json, int* first) {
    for (int c = 0; c < ATTN_NCOMP; c++) {
        if (!e->present[c]) continue;
        int ok = e->err[c] <= e->bound[c] && !e->nan[c] && e->padding_ok[c];
        if (json) {
            printf(
                "%s\"%s\":{\"max_err\":%.6g,\"bound\":%.6g,\"naive_err\":%.6g,\"unwritten\":%lld,"
                "\"pass\":%s}",
                *first ? "" : ",", attn_comp_names[c], e->err[c], e->bound[c], e->naive[c],
                (long long)e->nan[c], ok ? "true" : "false");
            *first = 0;
        } else {
            printf("  %-8s %-4s max err %-10.3g bound %-10.3g (naive %.3g)%s  %s\n", dir,
                   attn_comp_names[c], e->err[c], e->bound[c], e->naive[c],
                   e->nan[c] ? "  UNWRITTEN/NaN" : "", ok ? "ok" : "FAIL");
        }
    }
    if (!json && !e->inputs_ok) printf("  %-8s inputs were modified by the call  FAIL\n", dir);
}

int cf_cmd_check(int argc, char** argv) {
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: cflash check [flags]\n"
                   "Runs attention on the shape given by the flags against an fp64 oracle and\n"
                   "checks DESIGN.md's error rule (max error <= 2x that of a naive computation in\n"
                   "the same dtype + a small absolute term; gradients 3x). Exit 0 on PASS.\n\n%s",
                   cf_problem_usage());
            return 0;
        }
    cf_problem pr;
    char err[512];
    cf_problem_defaults(&pr);
    if (cf_problem_parse(&pr, argc, argv, 2, err, sizeof err)) {
        fprintf(stderr, "cflash check: %s\n", err);
        return 2;
    }
    attn_case c;
    attn_case_init(&c);
    c.B = pr.batch, c.H = pr.heads, c.Hk = pr.heads_kv, c.Sq = pr.seqlen_q, c.Sk = pr.seqlen_k;
    c.D = pr.head_dim, c.Dv = pr.head_dim_v, c.dtype = pr.dtype, c.causal = pr.causal;
    c.window_left = pr.window_left, c.window_right = pr.window_right, c.softcap = pr.softcap;
    c.alibi = pr.alibi ? ATTN_ALIBI_H : ATTN_ALIBI_NONE;
    c.dropout_p = pr.dropout;
    c.sinks = pr.sinks;
    c.bias = pr.bias ? ATTN_BC_11 : ATTN_BC_NONE, c.dbias = pr.dbias;
    c.bias_f32 = pr.bias_dtype == CFLASH_DTYPE_F32;
    c.mask = pr.mask > 0 ? ATTN_BC_11 : ATTN_BC_NONE; /* the oracle's own random mask */
    c.blocks = pr.block_sparse > 0 ? ATTN_BC_11 : ATTN_BC_NONE;
    c.block_q = c.block_k = pr.block_size;
    c.block_pct = (int)(pr.block_sparse * 100.0f + 0.5f);
    if (pr.block_sparse > 0 && c.block_pct < 1) c.block_pct = 1;
    c.chunk = pr.chunk;
    c.seed = 1;
    char name[256];
    attn_case_str(&c, name, sizeof name);

    cflash_context* ctx = NULL;
    cflash_status s = cflash_context_create(&ctx);
    if (s == CFLASH_OK) s = cflash_context_set_threads(ctx, pr.threads);
    if (s == CFLASH_OK) s = cflash_context_set_backend(ctx, pr.backend);
    if (s != CFLASH_OK) {
        fprintf(stderr, "cflash check: %s: %s\n", cflash_status_string(s), cflash_last_error());
        cflash_context_free(ctx);
        return 1;
    }
    attn_problem* p = attn_problem_new(&c);
    if (!p) {
        fprintf(stderr, "cflash check: could not allocate the problem %s\n", name);
        cflash_context_free(ctx);
        return 1;
    }
    dev_set dev = {.device = pr.device};
    attn_dl host, ddl, *t = NULL;
    attn_problem_host_dl(p, &host);
    int rc = 0;
    if (pr.device != kDLCPU) {
        if (dev_upload(&dev, p, err, sizeof err)) {
            fprintf(stderr, "cflash check: %s\n", err);
            rc = 1;
            goto done;
        }
        dev_dl(&dev, &ddl);
        t = &ddl;
    }
    const attn_dl* tl = t ? t : &host;
    char fwd_backend[64], bwd_backend[64] = "";
    attn_problem_explain(ctx, p, tl, 0, fwd_backend, sizeof fwd_backend);

    /* Forward. */
    double t0 = cf_now_s();
    s = attn_problem_call_fwd(ctx, p, tl);
    if (s == CFLASH_OK && t && dev_download(&dev, p, 0, err, sizeof err)) {
        fprintf(stderr, "cflash check: %s\n", err);
        rc = 1;
        goto done;
    }
    double ms_fwd = (cf_now_s() - t0) * 1e3;
    if (s != CFLASH_OK) {
        fprintf(stderr, "cflash check: forward failed: %s: %s\n", cflash_status_string(s),
                cflash_last_error());
        rc = 1;
        goto done;
    }
    p->fwd_ran = 1;
    attn_errors ef, eb;
    memset(&eb, 0, sizeof eb);
    eb.pass = 1;
    double t1 = cf_now_s();
    int pass = attn_problem_errors_fwd(p, &ef);
    double s_oracle = cf_now_s() - t1;
    double ms_bwd = 0;
    if (pr.bwd) {
        attn_problem_explain(ctx, p, tl, 1, bwd_backend, sizeof bwd_backend);
        t0 = cf_now_s();
        s = attn_problem_call_bwd(ctx, p, tl);
        if (s == CFLASH_OK && t && dev_download(&dev, p, 1, err, sizeof err)) {
            fprintf(stderr, "cflash check: %s\n", err);
            rc = 1;
            goto done;
        }
        ms_bwd = (cf_now_s() - t0) * 1e3;
        if (s != CFLASH_OK) {
            fprintf(stderr, "cflash check: backward failed: %s: %s\n", cflash_status_string(s),
                    cflash_last_error());
            rc = 1;
            goto done;
        }
        t1 = cf_now_s();
        pass &= attn_problem_errors_bwd(p, &eb);
        s_oracle += cf_now_s() - t1;
    }
    if (pr.json) {
        int first = 1;
        printf("{\"case\":\"%s\",\"device\":\"%s\",\"backend_fwd\":\"%s\"", name,
               pr.device == kDLCPU ? "cpu" : "cuda", fwd_backend);
        if (pr.bwd) printf(",\"backend_bwd\":\"%s\"", bwd_backend);
        printf(",\"ms_fwd\":%.3f", ms_fwd);
        if (pr.bwd) printf(",\"ms_bwd\":%.3f", ms_bwd);
        printf(",\"errors\":{");
        print_errors(&ef, "forward", 1, &first);
        if (pr.bwd) print_errors(&eb, "backward", 1, &first);
        printf("},\"pass\":%s}\n", pass ? "true" : "false");
    } else {
        printf("cflash check: %s\n", name);
        printf("  backend: %s (forward, %.1f ms)", fwd_backend, ms_fwd);
        if (pr.bwd) printf(", %s (backward, %.1f ms)", bwd_backend, ms_bwd);
        printf("; fp64 oracle %.1f s\n", s_oracle);
        print_errors(&ef, "forward", 0, NULL);
        if (pr.bwd) print_errors(&eb, "backward", 0, NULL);
        printf("%s\n", pass ? "PASS" : "FAIL");
    }
    rc = pass ? 0 : 1;
done:
    dev_free(&dev);
    attn_problem_free(p);
    cflash_context_free(ctx);
    return rc;
}
