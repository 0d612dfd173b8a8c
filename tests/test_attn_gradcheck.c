/* The attention backward against fp64 central finite differences of the oracle's forward, on small
 * shapes with every mask feature, GQA, Dv != D and varlen: first the oracle's own analytic
 * backward (which the grid tests trust), then the kernel's gradients under the error rule with
 * the finite differences as the reference (with dbias, in both of the tiled backends' dbias
 * orders). Usage: test_attn_gradcheck [BACKEND] (default cpu-ref; auto: the automatic choice).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/attn_grid.h"
#include "common/testutil.h"
#include "cpu/attn_cpu.h"
#include "oracle/attn_oracle.h"

/* L = sum(out * dO) with the oracle forward. */
static double loss(const attn_problem* p, double* out, double* lse) {
    attn_oracle_fwd(p, p->Q, p->K, p->V, out, lse);
    double s = 0;
    for (int64_t i = 0; i < p->total_q * p->c.H * p->c.Dv; i++)
        s += out[i] * p->dO[i];
    return s;
}

/* Central differences of L over every element of x (n elements) into g (0 for an infinite x: a
 * sink or bias of -inf, which masks). */
static void fd(attn_problem* p, double* x, int64_t n, double* g, double* out, double* lse) {
    for (int64_t i = 0; i < n; i++) {
        double x0 = x[i], h = 1e-5 * (fabs(x0) > 1 ? fabs(x0) : 1);
        if (!isfinite(x0)) {
            g[i] = 0;
            continue;
        }
        x[i] = x0 + h;
        double lp = loss(p, out, lse);
        x[i] = x0 - h;
        double lm = loss(p, out, lse);
        x[i] = x0;
        g[i] = (lp - lm) / (2 * h);
    }
}

static double max_abs_diff(const double* a, const double* b, int64_t n, double* maxb) {
    double e = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - b[i]));
        m = fmax(m, fabs(b[i]));
    }
    *maxb = m;
    return e;
}

static void run_case(cflash_context* ctx, attn_case* c) {
    char name[256], msg[1024];
    attn_case_str(c, name, sizeof name);
    attn_problem* p = attn_problem_new(c);
    CHECK_MSG(p != NULL, "%s: setup", name);
    if (!p) return;
    int64_t nq = p->total_q * c->H * c->D, nk = p->total_k * c->Hk * c->D;
    int64_t nv = p->total_k * c->Hk * c->Dv, no = p->total_q * c->H * c->Dv;
    double* out = calloc((size_t)no + 1, sizeof(double));
    double* lse = calloc((size_t)(p->total_q * c->H) + 1, sizeof(double));
    double* g[5] = {calloc((size_t)nq + 1, sizeof(double)), calloc((size_t)nk + 1, sizeof(double)),
                    calloc((size_t)nv + 1, sizeof(double)), NULL, NULL};
    /* Issue 13: the sinks [H] and the bias (its fp64 copy) are inputs with gradients too. */
    const int64_t ns = p->sinks.base ? c->H : 0, nb = p->dbias.base ? p->dbias.numel : 0;
    g[3] = calloc((size_t)ns + 1, sizeof(double));
    g[4] = calloc((size_t)nb + 1, sizeof(double));
    fd(p, p->Q, nq, g[0], out, lse);
    fd(p, p->K, nk, g[1], out, lse);
    fd(p, p->V, nv, g[2], out, lse);
    fd(p, p->SINK, ns, g[3], out, lse);
    fd(p, p->BIAS, nb, g[4], out, lse);

    /* The oracle's analytic backward agrees with the finite differences. */
    attn_problem_compute_oracle(p, 1);
    double* ref[5] = {p->ref_dq, p->ref_dk, p->ref_dv, p->ref_dsink, p->ref_dbias};
    int64_t n[5] = {nq, nk, nv, ns, nb};
    for (int t = 0; t < 5; t++) {
        double m, e = max_abs_diff(ref[t], g[t], n[t], &m);
        CHECK_MSG(e <= 1e-7 * (m > 1 ? m : 1),
                  "%s: oracle %s vs finite differences: %.3g (max %.3g)", name,
                  attn_comp_names[t < 3 ? ATTN_DQ + t : ATTN_DSINK + t - 3], e, m);
        memcpy(ref[t], g[t], sizeof(double) * (size_t)n[t]); /* from now on, the FD reference */
    }

    /* The kernel's gradients against the finite differences, under the error rule. */
    cflash_status s = attn_problem_run_bwd(ctx, p);
    CHECK_MSG(s == CFLASH_OK, "%s: backward returned %s: %s", name, cflash_status_string(s),
              cflash_last_error());
    if (s == CFLASH_OK) {
        int ok = attn_problem_check_bwd(p, msg, sizeof msg);
        CHECK_MSG(ok, "vs finite differences: %s", msg);
    }
    free(out), free(lse), free(g[0]), free(g[1]), free(g[2]), free(g[3]), free(g[4]);
    attn_problem_free(p);
}

int main(int argc, char** argv) {
    const char* backend = argc > 1 ? argv[1] : "cpu-ref";
    if (strcmp(backend, "auto") && !attn_backend_runs(backend)) {
        printf("skipped: %s cannot run here\n", backend);
        return 77;
    }
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, strcmp(backend, "auto") ? backend : NULL));
    double t0 = tt_now();
    /* Features: none, causal, window, softcap, alibi [H] / [B,H], dropout, scale, and combined. */
    static const struct {
        int causal;
        int64_t wl, wr;
        float cap;
        attn_alibi alibi;
        float drop, scale;
    } f[] = {
        {0, -1, -1, 0, ATTN_ALIBI_NONE, 0, 0},    {1, -1, -1, 0, ATTN_ALIBI_NONE, 0, 0},
        {0, 2, 1, 0, ATTN_ALIBI_NONE, 0, 0},      {0, 0, 0, 0, ATTN_ALIBI_NONE, 0, 0},
        {0, -1, -1, 1.5f, ATTN_ALIBI_NONE, 0, 0}, {0, -1, -1, 0, ATTN_ALIBI_H, 0, 0},
        {0, -1, -1, 0, ATTN_ALIBI_BH, 0, 0},      {0, -1, -1, 0, ATTN_ALIBI_NONE, 0.3f, 0},
        {0, 1, -1, 0, ATTN_ALIBI_NONE, 0, 0.7f},  {1, 3, -1, 2.0f, ATTN_ALIBI_BH, 0.25f, 0},
    };
    static const int64_t shp[][7] = {
        /* B, H, Hk, Sq, Sk, D, Dv */
        {2, 2, 1, 5, 7, 3, 4},
        {1, 3, 3, 6, 4, 5, 2},
        {1, 4, 2, 1, 9, 8, 8},
    };
    int nf = (int)(sizeof f / sizeof f[0]), ns = (int)(sizeof shp / sizeof shp[0]), seed = 1;
    for (int dt = 0; dt < 3; dt++) {
        cf_dtype dtype = dt == 0 ? CF_F32 : dt == 1 ? CF_F16 : CF_BF16;
        for (int i = 0; i < nf; i++)
            for (int s = 0; s < ns + 1; s++) {
                if (dt > 0 && (i + s) % 3) continue; /* fp16/bf16: a third of the combinations */
                attn_case c;
                attn_case_init(&c);
                c.dtype = dtype;
                if (s < ns) {
                    c.B = shp[s][0], c.H = shp[s][1], c.Hk = shp[s][2], c.Sq = shp[s][3];
                    c.Sk = shp[s][4], c.D = shp[s][5], c.Dv = shp[s][6];
                } else { /* varlen with an empty and a length-1 sequence */
                    static const int32_t lq[3] = {1, 4, 0}, lk[3] = {3, 1, 2};
                    c.varlen = 1, c.B = 3, c.H = 2, c.Hk = 1, c.D = 4, c.Dv = 3;
                    memcpy(c.seqlens_q, lq, sizeof lq);
                    memcpy(c.seqlens_k, lk, sizeof lk);
                }
                c.causal = f[i].causal, c.window_left = f[i].wl, c.window_right = f[i].wr;
                c.softcap = f[i].cap, c.alibi = f[i].alibi, c.dropout_p = f[i].drop;
                c.scale = f[i].scale;
                c.layout = (tt_layout)((i + s) % 3);
                c.seed = (uint64_t)seed++ + tt_seed_base() * 1000003u;
                run_case(ctx, &c);
            }
    }
    /* Issue 13: sinks, bias (+ dbias, each broadcast), mask, block-sparse, chunk, alone and with
     * a window, softcap, ALiBi and dropout, batch and varlen. */
    static const struct {
        int sinks;
        attn_bcast bias, mask, blocks;
        int64_t chunk;
        int f;
    } x[] = {
        {1, ATTN_BC_NONE, ATTN_BC_NONE, ATTN_BC_NONE, 0, 0},
        {1, ATTN_BC_NONE, ATTN_BC_NONE, ATTN_BC_NONE, 0, 2},
        {1, ATTN_BC_NONE, ATTN_BC_NONE, ATTN_BC_NONE, 0, 7},
        {0, ATTN_BC_BH, ATTN_BC_NONE, ATTN_BC_NONE, 0, 0},
        {0, ATTN_BC_1H, ATTN_BC_NONE, ATTN_BC_NONE, 0, 4},
        {0, ATTN_BC_B1, ATTN_BC_NONE, ATTN_BC_NONE, 0, 7},
        {1, ATTN_BC_11, ATTN_BC_11, ATTN_BC_NONE, 0, 9},
        {0, ATTN_BC_NONE, ATTN_BC_BH, ATTN_BC_NONE, 0, 1},
        {0, ATTN_BC_NONE, ATTN_BC_NONE, ATTN_BC_BH, 0, 0},
        {1, ATTN_BC_NONE, ATTN_BC_NONE, ATTN_BC_11, 3, 5},
        {0, ATTN_BC_NONE, ATTN_BC_NONE, ATTN_BC_NONE, 2, 1},
    };
    const int nx = (int)(sizeof x / sizeof x[0]);
    for (int dt = 0; dt < 3; dt++)
        for (int i = 0; i < nx; i++)
            for (int s = 0; s < ns + 1; s++) {
                if (dt > 0 && (i + s) % 3) continue;
                attn_case c;
                attn_case_init(&c);
                c.dtype = dt == 0 ? CF_F32 : dt == 1 ? CF_F16 : CF_BF16;
                if (s < ns) {
                    c.B = shp[s][0], c.H = shp[s][1], c.Hk = shp[s][2], c.Sq = shp[s][3];
                    c.Sk = shp[s][4], c.D = shp[s][5], c.Dv = shp[s][6];
                } else {
                    static const int32_t lq[3] = {1, 4, 0}, lk[3] = {3, 5, 2};
                    c.varlen = 1, c.B = 3, c.H = 2, c.Hk = 1, c.D = 4, c.Dv = 3;
                    memcpy(c.seqlens_q, lq, sizeof lq);
                    memcpy(c.seqlens_k, lk, sizeof lk);
                }
                const int fi = x[i].f;
                c.causal = f[fi].causal, c.window_left = f[fi].wl, c.window_right = f[fi].wr;
                c.softcap = f[fi].cap, c.alibi = f[fi].alibi, c.dropout_p = f[fi].drop;
                c.scale = f[fi].scale;
                c.sinks = x[i].sinks;
                c.bias = c.varlen ? ATTN_BC_NONE : x[i].bias, c.dbias = c.bias != ATTN_BC_NONE;
                c.bias_f32 = i % 2;
                c.mask = c.varlen ? ATTN_BC_NONE : x[i].mask;
                c.blocks = x[i].blocks, c.block_q = 2, c.block_k = 3, c.block_pct = 60;
                c.chunk = x[i].chunk;
                c.layout = (tt_layout)((i + s) % 3);
                c.seed = (uint64_t)seed++ + tt_seed_base() * 1000003u;
                run_case(ctx, &c);
                if (c.dbias) { /* the tiled backends' other dbias order: nothing kept */
                    cf_attn_cpu_set_dbias_cache(1);
                    run_case(ctx, &c);
                    cf_attn_cpu_set_dbias_cache(0);
                }
            }
    printf("gradcheck (%s): %.1f s\n", backend, tt_now() - t0);
    cflash_context_free(ctx);
    return tt_summary();
}
