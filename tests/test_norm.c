/* RMSNorm / LayerNorm forward and backward against an fp64 reference on every CPU backend:
 * residual (in the dtype or fp32), prenorm residual_out (dtype or fp32), dropout with the shared
 * Philox keying, optional weight and bias in fp32 or the dtype, out dtype, mean/rstd, strided
 * rows, dresidual_out; one test per error path. Usage: test_norm [-v] */
#include <math.h>
#include <stdlib.h>

#include "common/testutil.h"
#include "core/philox.h"
#include "oracle/ops_oracle.h"

static int verbose;

typedef struct ncase {
    cf_dtype dtype, res_dtype, resout_dtype, w_dtype, out_dtype; /* CF_DTYPE_BAD = absent */
    int has_bias, layer, stats, dres_out;
    int64_t M, N;
    float dropout;
    tt_layout layout; /* of x-like tensors: DENSE or PADDED (row stride padded) */
    uint64_t seed;
} ncase;

static int keep(const ncase* c, int64_t r, int64_t j) {
    return cf_dropout_keep(c->seed, c->seed * 7, c->dropout, (uint64_t)r >> 32, 0,
                           (uint64_t)r & 0xffffffffu, (uint64_t)j);
}

static double get2(const tt_tensor* t, int64_t r, int64_t j) {
    int64_t idx[2] = {r, j};
    return tt_get(t, idx);
}
static double get1(const tt_tensor* t, int64_t j) {
    int64_t idx[1] = {j};
    return t->base ? tt_get(t, idx) : 1.0;
}

/* Forward: y, h, mean, rstd in fp64 (naive = 0) or fp32 steps with the outputs rounded. */
static void fwd_oracle(const ncase* c, const tt_tensor* x, const tt_tensor* res, const tt_tensor* w,
                       const tt_tensor* b, int naive, double* y, double* h, double* mean,
                       double* rstd) {
    const int64_t M = c->M, N = c->N;
    double ks = naive ? (double)(1.0f / (1.0f - c->dropout)) : 1.0 / (1.0 - (double)c->dropout);
    for (int64_t r = 0; r < M; r++) {
        double mu = 0, var = 0;
        for (int64_t j = 0; j < N; j++) {
            double v = get2(x, r, j);
            if (c->dropout > 0) v = keep(c, r, j) ? v * ks : 0.0;
            if (res->base) v += get2(res, r, j);
            if (naive) v = (float)v;
            h[r * N + j] = v;
            mu = naive ? (float)(mu + v) : mu + v;
        }
        mu = c->layer ? mu / N : 0.0;
        if (naive) mu = (float)mu;
        for (int64_t j = 0; j < N; j++) {
            double t = (h[r * N + j] - mu) * (h[r * N + j] - mu);
            var = naive ? (float)(var + (float)t) : var + t;
        }
        double rs = 1.0 / sqrt(var / N + (double)1e-5f);
        if (naive) rs = (float)rs;
        for (int64_t j = 0; j < N; j++) {
            double o = (h[r * N + j] - mu) * rs * get1(w, j) + (b->base ? get1(b, j) : 0.0);
            y[r * N + j] = naive ? ops_round(c->out_dtype, o) : o;
            if (naive && c->resout_dtype != CF_DTYPE_BAD)
                h[r * N + j] = ops_round(c->resout_dtype, h[r * N + j]);
        }
        mean[r] = mu;
        rstd[r] = rs;
    }
}

/* Backward from h (the tensor hx), dy, weight, dresidual_out. */
static void bwd_oracle(const ncase* c, const tt_tensor* hx, const tt_tensor* dy, const tt_tensor* w,
                       const tt_tensor* dro, int naive, double* dx, double* dres, double* dw,
                       double* db, double* dwa, double* dba, double* dxa) {
    const int64_t M = c->M, N = c->N;
    double ks = 1.0 / (1.0 - (double)c->dropout);
    double* xh = malloc(sizeof(double) * (size_t)N * 2);
    double* g = xh + N;
    for (int64_t j = 0; j < N; j++) {
        dw[j] = db[j] = 0;
        if (dwa) dwa[j] = dba[j] = 0;
    }
    if (dxa) *dxa = 0;
    for (int64_t r = 0; r < M; r++) {
        double mu = 0, var = 0, mg = 0, mgx = 0;
        for (int64_t j = 0; j < N; j++)
            mu = naive ? (float)(mu + get2(hx, r, j)) : mu + get2(hx, r, j);
        mu = c->layer ? mu / N : 0.0;
        if (naive) mu = (float)mu;
        for (int64_t j = 0; j < N; j++) {
            double t = (get2(hx, r, j) - mu) * (get2(hx, r, j) - mu);
            var = naive ? (float)(var + (float)t) : var + t;
        }
        double rs = 1.0 / sqrt(var / N + (double)1e-5f);
        if (naive) rs = (float)rs;
        for (int64_t j = 0; j < N; j++) {
            double d = get2(dy, r, j);
            xh[j] = (get2(hx, r, j) - mu) * rs;
            g[j] = d * get1(w, j);
            if (naive) xh[j] = (float)xh[j], g[j] = (float)g[j];
            dw[j] += d * xh[j];
            db[j] += d;
            if (dwa) dwa[j] += fabs(d * xh[j]), dba[j] += fabs(d);
            if (naive) dw[j] = (float)dw[j], db[j] = (float)db[j];
            mg = naive ? (float)(mg + g[j]) : mg + g[j];
            mgx = naive ? (float)(mgx + (float)(g[j] * xh[j])) : mgx + g[j] * xh[j];
        }
        mg = c->layer ? mg / N : 0.0;
        mgx /= N;
        for (int64_t j = 0; j < N; j++) {
            double d = rs * (g[j] - mg - xh[j] * mgx);
            const double a = rs * (fabs(g[j]) + fabs(mg) + fabs(xh[j] * mgx));
            if (dxa && a > *dxa) *dxa = a;
            if (dro->base) d += get2(dro, r, j);
            if (naive) d = (float)d;
            dres[r * N + j] = d;
            double o = c->dropout > 0 ? (keep(c, r, j) ? d * ks : 0.0) : d;
            dx[r * N + j] = naive ? ops_round(c->dtype, o) : o;
            if (naive) dres[r * N + j] = ops_round(c->dtype, d);
        }
    }
    free(xh);
}

/* The error rule for t against ref (fp64) and nv (the naive computation). scale > 0: a floor on
 * the magnitude the absolute term is sized by (the sums over rows, below). */
static void check_out(const char* what, const char* desc, const char* be, const tt_tensor* t,
                      const double* ref, const double* nv, cf_dtype d, double factor,
                      double scale) {
    double maxref = ops_max_abs(ref, t->numel), naive = ops_max_err_arr(nv, ref, t->numel);
    if (scale > maxref) maxref = scale;
    double bound = ops_bound(d, factor, naive, maxref);
    int64_t nan = 0;
    double err = ops_max_err(t, ref, &nan);
    CHECK_MSG(err <= bound && nan == 0 && tt_padding_intact(t),
              "%s on %s: %s err %.3g > bound %.3g (naive %.3g), %lld NaN, padding %s", desc, be,
              what, err, bound, naive, (long long)nan, tt_padding_intact(t) ? "ok" : "written");
    if (verbose) printf("  %-10s %-12s err %.3g bound %.3g\n", be, what, err, bound);
}

static void run_case(const ncase* c) {
    const int64_t M = c->M, N = c->N, shp[2] = {M, N}, vs[1] = {N}, ms[1] = {M};
    tt_tensor x, res = {0}, w = {0}, b = {0}, out, resout = {0}, mean = {0}, rstd = {0};
    tt_alloc(&x, c->dtype, 2, shp, c->layout);
    tt_random(&x, c->seed, -2, 2);
    if (c->res_dtype != CF_DTYPE_BAD) {
        tt_alloc(&res, c->res_dtype, 2, shp, c->layout);
        tt_random(&res, c->seed + 1, -2, 2);
    }
    if (c->w_dtype != CF_DTYPE_BAD) {
        tt_alloc(&w, c->w_dtype, 1, vs, TT_DENSE);
        tt_random(&w, c->seed + 2, 0.5, 1.5);
        if (c->has_bias) {
            tt_alloc(&b, c->w_dtype, 1, vs, TT_DENSE);
            tt_random(&b, c->seed + 3, -1, 1);
        }
    }
    size_t mn = (size_t)(M * N);
    double *y = malloc(8 * mn), *h = malloc(8 * mn), *yn = malloc(8 * mn), *hn = malloc(8 * mn);
    double *mu = malloc(8 * (size_t)M + 8), *rs = malloc(8 * (size_t)M + 8),
           *mun = malloc(8 * (size_t)M + 8), *rsn = malloc(8 * (size_t)M + 8);
    fwd_oracle(c, &x, &res, &w, &b, 0, y, h, mu, rs);
    fwd_oracle(c, &x, &res, &w, &b, 1, yn, hn, mun, rsn);

    cflash_norm_params p;
    cflash_norm_params_init(&p);
    p.type = c->layer ? CFLASH_NORM_LAYER : CFLASH_NORM_RMS;
    p.eps = 1e-5f;
    p.dropout_p = c->dropout;
    p.seed = c->seed;
    p.offset = c->seed * 7;
    char desc[200];
    snprintf(desc, sizeof desc,
             "%s %s M%lld N%lld res %s resout %s w %s%s out %s drop %.2f%s%s layout%d seed%llu",
             c->layer ? "layer" : "rms", tt_dtype_short(c->dtype), (long long)M, (long long)N,
             tt_dtype_short(c->res_dtype), tt_dtype_short(c->resout_dtype),
             tt_dtype_short(c->w_dtype), c->has_bias ? "+bias" : "", tt_dtype_short(c->out_dtype),
             (double)c->dropout, c->stats ? " stats" : "", c->dres_out ? " dres_out" : "",
             (int)c->layout, (unsigned long long)c->seed);

    /* backward inputs: h as stored, dy, dresidual_out */
    tt_tensor hx, dy, dro = {0}, dx, dres, dw = {0}, db = {0};
    tt_alloc(&hx, c->dtype, 2, shp, c->layout);
    for (int64_t n = 0; n < M * N; n++)
        tt_set_flat(&hx, n, h[n]);
    tt_alloc(&dy, c->out_dtype, 2, shp, c->layout);
    tt_random(&dy, c->seed + 5, -1, 1);
    if (c->dres_out) {
        tt_alloc(&dro, c->dtype, 2, shp, TT_DENSE);
        tt_random(&dro, c->seed + 6, -1, 1);
    }
    double *bdx = malloc(8 * mn), *bdr = malloc(8 * mn), *bdw = malloc(8 * (size_t)N),
           *bdb = malloc(8 * (size_t)N);
    double *ndx = malloc(8 * mn), *ndr = malloc(8 * mn), *ndw = malloc(8 * (size_t)N),
           *ndb = malloc(8 * (size_t)N);
    double *adw = malloc(8 * (size_t)N), *adb = malloc(8 * (size_t)N);
    double sx;
    bwd_oracle(c, &hx, &dy, &w, &dro, 0, bdx, bdr, bdw, bdb, adw, adb, &sx);
    bwd_oracle(c, &hx, &dy, &w, &dro, 1, ndx, ndr, ndw, ndb, NULL, NULL, NULL);
    /* dweight and dbias are sums over the M rows: where N is small, the naive's error is a draw
     * or two of the sums' rounding, which can fall far under any other order's (N 1, M 153:
     * 1.0e-7 against the library's 9.3e-7 on every backend, CFLASH_TEST_SEED=600). The absolute
     * term is sized by the sums' own scale, sum |term| / sqrt(M), that of their rounding error in
     * any order (their values can cancel to far less). Likewise dx = rstd (g - mean g - xhat
     * mean(g xhat)) cancels where N is small (N 1: rstd g (1 - xhat^2)): its absolute term is
     * sized by the terms it subtracts (sx; M 8 N 1: 1.0e-5 against a naive 1.4e-6, seed 2600). */
    double sw = 0, sb = 0;
    for (int64_t j = 0; j < N; j++) {
        sw = adw[j] > sw ? adw[j] : sw;
        sb = adb[j] > sb ? adb[j] : sb;
    }
    sw /= sqrt((double)M), sb /= sqrt((double)M);
    free(adw), free(adb);
    /* fp64 stats of hx, for the backward's optional mean/rstd inputs */
    tt_tensor smean = {0}, srstd = {0};
    if (c->stats) {
        tt_alloc(&srstd, CF_F32, 1, ms, TT_DENSE);
        if (c->layer) tt_alloc(&smean, CF_F32, 1, ms, TT_DENSE);
        for (int64_t r = 0; r < M; r++) {
            double m = 0, v = 0;
            for (int64_t j = 0; j < N; j++)
                m += get2(&hx, r, j);
            m = c->layer ? m / N : 0;
            for (int64_t j = 0; j < N; j++)
                v += (get2(&hx, r, j) - m) * (get2(&hx, r, j) - m);
            int64_t idx[1] = {r};
            if (c->layer) tt_set(&smean, idx, m);
            tt_set(&srstd, idx, 1.0 / sqrt(v / N + (double)1e-5f));
        }
    }

    for (const char* const* be = ops_backends; *be; be++) {
        if (!tt_backend_selected(*be)) continue;
        cflash_context* ctx = ops_context(*be, 0);
        tt_alloc(&out, c->out_dtype, 2, shp, c->layout);
        if (c->resout_dtype != CF_DTYPE_BAD) tt_alloc(&resout, c->resout_dtype, 2, shp, c->layout);
        if (c->stats) {
            tt_alloc(&rstd, CF_F32, 1, ms, TT_DENSE);
            if (c->layer) tt_alloc(&mean, CF_F32, 1, ms, TT_DENSE);
        }
        uint64_t hin = tt_hash(&x) ^ (res.base ? tt_hash(&res) : 0);
        cflash_status s =
            cflash_norm_fwd(ctx, &p, &x.dl, res.base ? &res.dl : NULL, w.base ? &w.dl : NULL,
                            b.base ? &b.dl : NULL, &out.dl, resout.base ? &resout.dl : NULL,
                            mean.base ? &mean.dl : NULL, rstd.base ? &rstd.dl : NULL);
        if (!ops_backend_skips(*be, "norm_fwd", s)) {
            CHECK_MSG(s == CFLASH_OK, "%s on %s: %s", desc, *be, cflash_last_error());
            check_out("out", desc, *be, &out, y, yn, c->out_dtype, 2.0, 0.0);
            if (resout.base)
                check_out("residual_out", desc, *be, &resout, h, hn, c->resout_dtype, 2.0, 0.0);
            if (mean.base) check_out("mean", desc, *be, &mean, mu, mun, CF_F32, 2.0, 0.0);
            if (rstd.base) check_out("rstd", desc, *be, &rstd, rs, rsn, CF_F32, 2.0, 0.0);
            CHECK_MSG(hin == (tt_hash(&x) ^ (res.base ? tt_hash(&res) : 0)), "%s: inputs modified",
                      desc);
        }
        tt_free(&out), tt_free(&resout), tt_free(&mean), tt_free(&rstd);

        tt_alloc(&dx, c->dtype, 2, shp, c->layout);
        tt_alloc(&dres, c->dtype, 2, shp, TT_DENSE);
        if (w.base) tt_alloc(&dw, CF_F32, 1, vs, TT_DENSE);
        if (b.base) tt_alloc(&db, c->w_dtype, 1, vs, TT_DENSE);
        s = cflash_norm_bwd(ctx, &p, &dy.dl, &hx.dl, w.base ? &w.dl : NULL, b.base ? &b.dl : NULL,
                            smean.base ? &smean.dl : NULL, srstd.base ? &srstd.dl : NULL,
                            dro.base ? &dro.dl : NULL, &dx.dl, w.base ? &dw.dl : NULL,
                            b.base ? &db.dl : NULL, res.base ? &dres.dl : NULL);
        if (!ops_backend_skips(*be, "norm_bwd", s)) {
            CHECK_MSG(s == CFLASH_OK, "%s bwd on %s: %s", desc, *be, cflash_last_error());
            check_out("dx", desc, *be, &dx, bdx, ndx, c->dtype, 3.0, sx);
            if (res.base) check_out("dresidual", desc, *be, &dres, bdr, ndr, c->dtype, 3.0, sx);
            if (dw.base) check_out("dweight", desc, *be, &dw, bdw, ndw, CF_F32, 3.0, sw);
            if (db.base) check_out("dbias", desc, *be, &db, bdb, ndb, c->w_dtype, 3.0, sb);
        }
        tt_free(&dx), tt_free(&dres), tt_free(&dw), tt_free(&db);
        cflash_context_free(ctx);
    }
    free(y), free(h), free(yn), free(hn), free(mu), free(rs), free(mun), free(rsn);
    free(bdx), free(bdr), free(bdw), free(bdb), free(ndx), free(ndr), free(ndw), free(ndb);
    tt_free(&x), tt_free(&res), tt_free(&w), tt_free(&b), tt_free(&hx), tt_free(&dy), tt_free(&dro),
        tt_free(&smean), tt_free(&srstd);
}

static void test_grid(void) {
    const cf_dtype dts[3] = {CF_F32, CF_F16, CF_BF16};
    const int64_t Ns[] = {1, 7, 64, 1000, 4096, 129};
    int n = 0;
    /* Emulated runs (CFLASH_TEST_LEVEL=-1): the same cases with fewer rows. */
    const int emulated = tt_test_level() < 0;
    for (int i = 0; i < 60; i++) {
        tt_rng r;
        tt_rng_init(&r, 500 + (uint64_t)i + tt_seed_base());
        ncase c = {0};
        c.dtype = dts[i % 3];
        c.layer = (i / 3) % 2;
        c.N = Ns[(i / 2) % 6];
        c.M = 1 + (int64_t)(tt_rng_u64(&r) % (c.N >= 1000 ? 40 : 200) / (emulated ? 5 : 1));
        int rm = (i / 6) % 3; /* residual: none, dtype, fp32 */
        c.res_dtype = rm == 0 ? CF_DTYPE_BAD : rm == 1 ? c.dtype : CF_F32;
        int ro = (i / 4) % 3;
        c.resout_dtype = ro == 0 ? CF_DTYPE_BAD : ro == 1 ? c.dtype : CF_F32;
        int wm = (i / 5) % 3;
        c.w_dtype = wm == 0 ? CF_DTYPE_BAD : wm == 1 ? c.dtype : CF_F32;
        c.has_bias = (i / 2) % 2;
        c.out_dtype = i % 7 == 2 ? CF_F32 : c.dtype;
        c.dropout = i % 5 == 1 ? 0.17f : 0.0f;
        if (c.dropout > 0 && c.resout_dtype == CF_DTYPE_BAD) c.resout_dtype = c.dtype;
        c.stats = (i / 7) % 2;
        c.dres_out = i % 3 == 1;
        c.layout = (i / 9) % 2 ? TT_PADDED : TT_DENSE;
        c.seed = 31 + (uint64_t)i + tt_seed_base();
        run_case(&c);
        n++;
    }
    /* bf16 in and out, no residual or dropout: the fused bf16 rows of cpu-avx512 (N % 32 == 0,
     * and a tail) */
    const int64_t plainN[4] = {4096, 96, 100, 33};
    for (int k = 0; k < 16; k++) {
        ncase c = {0};
        c.dtype = c.out_dtype = CF_BF16;
        c.res_dtype = c.resout_dtype = CF_DTYPE_BAD;
        if (k >= 8) { /* with a residual (bf16 or fp32) and/or the prenorm residual_out */
            c.res_dtype = k % 3 == 0 ? CF_DTYPE_BAD : (k % 3 == 1 ? CF_BF16 : CF_F32);
            c.resout_dtype = k % 4 == 3 ? CF_DTYPE_BAD : (k % 2 ? CF_F32 : CF_BF16);
            if (c.res_dtype == CF_DTYPE_BAD && c.resout_dtype == CF_DTYPE_BAD)
                c.resout_dtype = CF_BF16;
        }
        c.w_dtype = k % 3 == 2 ? CF_DTYPE_BAD : (k % 2 ? CF_BF16 : CF_F32);
        c.has_bias = k % 2;
        c.layer = (k / 2) % 2;
        c.stats = k % 3 == 0;
        c.N = plainN[k % 4];
        c.M = emulated ? 7 : 37;
        c.layout = k % 4 == 3 ? TT_PADDED : TT_DENSE;
        c.seed = 900 + (uint64_t)k + tt_seed_base();
        run_case(&c);
    }
    printf("norm grid: %d cases + 16 bf16 in/out without dropout\n", n);
}

static void test_errors(void) {
    const int64_t shp[2] = {4, 8}, vs[1] = {8}, ms[1] = {4};
    tt_tensor x, o, w, bad, r;
    tt_alloc(&x, CF_BF16, 2, shp, TT_DENSE);
    tt_random(&x, 1, -1, 1);
    tt_alloc(&o, CF_BF16, 2, shp, TT_DENSE);
    tt_alloc(&w, CF_F32, 1, vs, TT_DENSE);
    tt_fill(&w, 1);
    cflash_norm_params p;
    cflash_norm_params_init(&p);
    const cflash_status INV = CFLASH_ERR_INVALID_ARGUMENT;
    p.eps = 0;
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &o.dl, NULL, NULL, NULL), INV,
              "eps: 0");
    p.eps = 1e-6f, p.dropout_p = 1.0f;
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &o.dl, NULL, NULL, NULL), INV,
              "dropout_p: 1");
    p.dropout_p = 0, p.type = (cflash_norm_type)7;
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &o.dl, NULL, NULL, NULL), INV,
              "type: 7");
    p.type = CFLASH_NORM_RMS;
    CHECK_ERR(cflash_norm_fwd(NULL, &p, NULL, NULL, NULL, NULL, &o.dl, NULL, NULL, NULL), INV,
              "x: is NULL");
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, NULL, NULL, NULL, NULL), INV,
              "out: is NULL");
    tt_alloc(&bad, CF_I32, 2, shp, TT_DENSE);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &bad.dl, NULL, NULL, NULL, &o.dl, NULL, NULL, NULL), INV,
              "x: dtype int32");
    tt_free(&bad);
    tt_alloc(&r, CF_F16, 2, shp, TT_DENSE);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, &r.dl, NULL, NULL, &o.dl, NULL, NULL, NULL), INV,
              "residual: dtype float16, expected float32 or the dtype of x");
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &o.dl, &r.dl, NULL, NULL), INV,
              "residual_out: dtype float16");
    tt_free(&r);
    const int64_t s2[2] = {4, 9};
    tt_alloc(&bad, CF_BF16, 2, s2, TT_DENSE);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, &bad.dl, NULL, NULL, &o.dl, NULL, NULL, NULL), INV,
              "residual: shape (4, 9)");
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &bad.dl, NULL, NULL, NULL), INV,
              "out: shape (4, 9)");
    tt_free(&bad);
    const int64_t v9[1] = {9};
    tt_alloc(&bad, CF_F32, 1, v9, TT_DENSE);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, &bad.dl, NULL, &o.dl, NULL, NULL, NULL), INV,
              "weight: shape (9)");
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, &bad.dl, &o.dl, NULL, NULL, NULL), INV,
              "bias: shape (9)");
    tt_free(&bad);
    tt_alloc(&bad, CF_F16, 1, vs, TT_DENSE);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, &bad.dl, NULL, &o.dl, NULL, NULL, NULL), INV,
              "weight: dtype float16, expected float32 or the dtype of x");
    tt_free(&bad);
    tt_alloc(&bad, CF_F32, 1, ms, TT_DENSE);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &o.dl, NULL, &bad.dl, NULL), INV,
              "mean: given for RMSNorm");
    p.type = CFLASH_NORM_LAYER;
    tt_tensor m5;
    const int64_t s5[1] = {5};
    tt_alloc(&m5, CF_F32, 1, s5, TT_DENSE);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &o.dl, NULL, &m5.dl, NULL), INV,
              "mean: shape (5)");
    tt_free(&m5);
    tt_free(&bad);
    tt_alloc(&bad, CF_F16, 1, ms, TT_DENSE);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &o.dl, NULL, NULL, &bad.dl), INV,
              "rstd: dtype float16, expected float32 [M]");
    tt_free(&bad);
    /* rows that do not flatten: (2, 3, 8) stored with dims 0 and 1 swapped */
    const int64_t s3[3] = {2, 3, 8};
    tt_tensor x3, o3;
    tt_alloc(&x3, CF_F32, 3, s3, TT_PERMUTED);
    tt_random(&x3, 3, -1, 1);
    tt_alloc(&o3, CF_F32, 3, s3, TT_DENSE);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x3.dl, NULL, NULL, NULL, &o3.dl, NULL, NULL, NULL), INV,
              "the leading dims must flatten to rows of one stride");
    tt_free(&x3), tt_free(&o3);
    /* backward */
    tt_tensor dy, dx, dw;
    tt_alloc(&dy, CF_BF16, 2, shp, TT_DENSE);
    tt_random(&dy, 4, -1, 1);
    tt_alloc(&dx, CF_BF16, 2, shp, TT_DENSE);
    tt_alloc(&dw, CF_F32, 1, vs, TT_DENSE);
    CHECK_ERR(cflash_norm_bwd(NULL, &p, &dy.dl, &x.dl, NULL, NULL, NULL, NULL, NULL, &dx.dl, &dw.dl,
                              NULL, NULL),
              INV, "dweight: given, but weight is NULL");
    CHECK_ERR(cflash_norm_bwd(NULL, &p, &dy.dl, &x.dl, &w.dl, NULL, NULL, NULL, NULL, &dx.dl, NULL,
                              &dw.dl, NULL),
              INV, "dbias: given, but bias is NULL");
    CHECK_ERR(cflash_norm_bwd(NULL, &p, &dy.dl, &x.dl, &w.dl, NULL, NULL, NULL, NULL, NULL, NULL,
                              NULL, NULL),
              INV, "dx: is NULL");
    CHECK_ERR(cflash_norm_bwd(NULL, &p, NULL, &x.dl, &w.dl, NULL, NULL, NULL, NULL, &dx.dl, NULL,
                              NULL, NULL),
              INV, "dy: is NULL");
    /* nothing written on error */
    tt_poison(&dx), tt_poison(&dw);
    cflash_norm_bwd(NULL, &p, &dy.dl, &x.dl, NULL, NULL, NULL, NULL, NULL, &dx.dl, &dw.dl, NULL,
                    NULL);
    CHECK(tt_count_nan(&dx) == dx.numel && tt_count_nan(&dw) == dw.numel);
    char buf[512];
    tt_poison(&o);
    CHECK_OK(cflash_norm_fwd(tt_explain(buf, sizeof buf), &p, &x.dl, NULL, &w.dl, NULL, &o.dl, NULL,
                             NULL, NULL));
    CHECK_MSG(strstr(buf, "cpu-ref: OKAY"), "explain: %s", buf);
    CHECK_OK(cflash_norm_bwd(tt_explain(buf, sizeof buf), &p, &dy.dl, &x.dl, &w.dl, NULL, NULL,
                             NULL, NULL, &dx.dl, &dw.dl, NULL, NULL));
    CHECK_MSG(strstr(buf, "cpu-ref: OKAY"), "explain: %s", buf);
    CHECK(tt_count_nan(&o) == o.numel && tt_count_nan(&dx) == dx.numel &&
          tt_count_nan(&dw) == dw.numel); /* explain writes nothing */
    tt_free(&dy), tt_free(&dx), tt_free(&dw);
    tt_free(&x), tt_free(&o), tt_free(&w);
}

/* Whether a and b (dense, same dtype and shape) hold the same bits. */
static int same_bits(const tt_tensor* a, const tt_tensor* b) {
    return a->bytes == b->bytes && memcmp(a->base, b->base, a->bytes) == 0;
}

/* d: a dense copy of s. */
static void copy_of(tt_tensor* d, const tt_tensor* s) {
    tt_alloc_like(d, s);
    memcpy(d->base, s->base, s->bytes);
}

/* cflash.h's in-place outputs on every backend: out and residual_out over x or residual, dx and
 * dresidual over dresidual_out, each giving the bits of separate outputs (bf16 rows take the
 * fused AVX-512 kernels, with and without a residual; fp32 the generic rows; N 70 a tail). */
static void test_in_place(void) {
    for (int k = 0; k < 4; k++) {
        const cf_dtype dt = k < 2 ? CF_BF16 : CF_F32;
        const int64_t M = 5, N = k % 2 ? 70 : 96, shp[2] = {M, N}, vs[1] = {N};
        const uint64_t sd = 900 + (uint64_t)k * 10 + tt_seed_base();
        cflash_norm_params p;
        cflash_norm_params_init(&p);
        p.type = k % 2 ? CFLASH_NORM_LAYER : CFLASH_NORM_RMS;
        tt_tensor x, res, w, b, dy, dro;
        tt_alloc(&x, dt, 2, shp, TT_DENSE), tt_random(&x, sd, -2, 2);
        tt_alloc(&res, dt, 2, shp, TT_DENSE), tt_random(&res, sd + 1, -2, 2);
        tt_alloc(&w, CF_F32, 1, vs, TT_DENSE), tt_random(&w, sd + 2, 0.5, 1.5);
        tt_alloc(&b, CF_F32, 1, vs, TT_DENSE), tt_random(&b, sd + 3, -1, 1);
        tt_alloc(&dy, dt, 2, shp, TT_DENSE), tt_random(&dy, sd + 4, -1, 1);
        tt_alloc(&dro, dt, 2, shp, TT_DENSE), tt_random(&dro, sd + 5, -1, 1);
        for (const char* const* be = ops_backends; *be; be++) {
            if (!tt_backend_selected(*be)) continue;
            cflash_context* ctx = ops_context(*be, 0);
            tt_tensor out, ro, o1, dx, dres, dw, a, c, dw2;
            tt_alloc_like(&out, &x), tt_alloc_like(&ro, &x), tt_alloc_like(&o1, &x);
            cflash_status s =
                cflash_norm_fwd(ctx, &p, &x.dl, &res.dl, &w.dl, &b.dl, &out.dl, &ro.dl, NULL, NULL);
            if (ops_backend_skips(*be, "norm_fwd", s)) {
                tt_free(&out), tt_free(&ro), tt_free(&o1), cflash_context_free(ctx);
                continue;
            }
            CHECK_MSG(s == CFLASH_OK, "%s: %s", *be, cflash_last_error());
            CHECK_OK(cflash_norm_fwd(ctx, &p, &x.dl, NULL, &w.dl, &b.dl, &o1.dl, NULL, NULL, NULL));
            /* out over x, residual_out over residual (vLLM's fused_add_rms_norm) */
            copy_of(&a, &x), copy_of(&c, &res);
            CHECK_OK(
                cflash_norm_fwd(ctx, &p, &a.dl, &c.dl, &w.dl, &b.dl, &a.dl, &c.dl, NULL, NULL));
            CHECK_MSG(same_bits(&a, &out) && same_bits(&c, &ro), "%s %s N %lld: in place differs",
                      *be, tt_dtype_short(dt), (long long)N);
            /* crossed: out over residual, residual_out over x */
            memcpy(a.base, x.base, x.bytes), memcpy(c.base, res.base, res.bytes);
            CHECK_OK(
                cflash_norm_fwd(ctx, &p, &a.dl, &c.dl, &w.dl, &b.dl, &c.dl, &a.dl, NULL, NULL));
            CHECK_MSG(same_bits(&c, &out) && same_bits(&a, &ro), "%s %s N %lld: crossed differs",
                      *be, tt_dtype_short(dt), (long long)N);
            /* no residual: out over x */
            memcpy(a.base, x.base, x.bytes);
            CHECK_OK(cflash_norm_fwd(ctx, &p, &a.dl, NULL, &w.dl, &b.dl, &a.dl, NULL, NULL, NULL));
            CHECK_MSG(same_bits(&a, &o1), "%s %s N %lld: in place without a residual differs", *be,
                      tt_dtype_short(dt), (long long)N);
            tt_free(&a), tt_free(&c);
            /* backward (x = h, the forward's residual_out): dx, then dresidual, over dresidual_out
             */
            tt_alloc_like(&dx, &x), tt_alloc_like(&dres, &x), tt_alloc_like(&dw, &w);
            tt_alloc_like(&dw2, &w);
            CHECK_OK(cflash_norm_bwd(ctx, &p, &dy.dl, &ro.dl, &w.dl, &b.dl, NULL, NULL, &dro.dl,
                                     &dx.dl, &dw.dl, NULL, &dres.dl));
            copy_of(&a, &dro), tt_alloc_like(&c, &x);
            CHECK_OK(cflash_norm_bwd(ctx, &p, &dy.dl, &ro.dl, &w.dl, &b.dl, NULL, NULL, &a.dl,
                                     &a.dl, &dw2.dl, NULL, &c.dl));
            CHECK_MSG(same_bits(&a, &dx) && same_bits(&c, &dres) && same_bits(&dw2, &dw),
                      "%s %s N %lld: dx in place differs", *be, tt_dtype_short(dt), (long long)N);
            memcpy(a.base, dro.base, dro.bytes);
            CHECK_OK(cflash_norm_bwd(ctx, &p, &dy.dl, &ro.dl, &w.dl, &b.dl, NULL, NULL, &a.dl,
                                     &c.dl, NULL, NULL, &a.dl));
            CHECK_MSG(same_bits(&c, &dx) && same_bits(&a, &dres),
                      "%s %s N %lld: dresidual in place differs", *be, tt_dtype_short(dt),
                      (long long)N);
            tt_free(&a), tt_free(&c), tt_free(&out), tt_free(&ro), tt_free(&o1), tt_free(&dx);
            tt_free(&dres), tt_free(&dw), tt_free(&dw2);
            cflash_context_free(ctx);
        }
        tt_free(&x), tt_free(&res), tt_free(&w), tt_free(&b), tt_free(&dy), tt_free(&dro);
    }
}

/* Any other sharing of memory (cflash.h) is refused, naming both tensors, nothing written. */
static void test_apart(void) {
    const int64_t M = 4, N = 8, shp[2] = {M, N}, vs[1] = {N}, ms[1] = {M}, big[1] = {(M + 1) * N};
    const cflash_status INV = CFLASH_ERR_INVALID_ARGUMENT;
    cflash_norm_params p;
    cflash_norm_params_init(&p);
    p.type = CFLASH_NORM_LAYER;
    tt_tensor buf, x, res, w, o, o32, st, dy;
    tt_alloc(&buf, CF_BF16, 1, big, TT_DENSE), tt_random(&buf, 1, -1, 1);
    tt_alloc(&x, CF_BF16, 2, shp, TT_DENSE), tt_random(&x, 2, -1, 1);
    tt_alloc(&res, CF_BF16, 2, shp, TT_DENSE), tt_random(&res, 3, -1, 1);
    tt_alloc(&w, CF_F32, 1, vs, TT_DENSE), tt_random(&w, 4, -1, 1);
    tt_alloc(&o, CF_BF16, 2, shp, TT_DENSE), tt_alloc(&o32, CF_F32, 2, shp, TT_DENSE);
    const int64_t s2[1] = {M + 1};
    tt_alloc(&st, CF_F32, 1, s2, TT_DENSE);
    tt_alloc(&dy, CF_BF16, 2, shp, TT_DENSE), tt_random(&dy, 5, -1, 1);
    const uint64_t h = tt_hash(&buf) ^ tt_hash(&x) ^ tt_hash(&res) ^ tt_hash(&w) ^ tt_hash(&o) ^
                       tt_hash(&o32) ^ tt_hash(&st) ^ tt_hash(&dy);
    /* out one row past x in one buffer */
    DLTensor bx = tt_view(&buf, 2, shp, NULL, 0), bo = tt_view(&buf, 2, shp, NULL, N);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &bx, NULL, NULL, NULL, &bo, NULL, NULL, NULL), INV,
              "out: shares memory with x");
    /* out at x's address in another dtype: not x's view */
    DLTensor ox = o32.dl;
    ox.data = x.dl.data;
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &ox, NULL, NULL, NULL), INV,
              "out: shares memory with x");
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, &res.dl, NULL, NULL, &o.dl, &o.dl, NULL, NULL), INV,
              "residual_out: shares memory with out");
    /* the weight inside out (fp32 out) */
    DLTensor wo = tt_view(&o32, 1, vs, NULL, N);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, &wo, NULL, &o32.dl, NULL, NULL, NULL), INV,
              "out: shares memory with weight");
    /* rstd one element past mean */
    DLTensor m0 = tt_view(&st, 1, ms, NULL, 0), r1 = tt_view(&st, 1, ms, NULL, 1);
    CHECK_ERR(cflash_norm_fwd(NULL, &p, &x.dl, NULL, NULL, NULL, &o.dl, NULL, &m0, &r1), INV,
              "rstd: shares memory with mean");
    /* backward: dx over dy; dweight over weight; dresidual over x */
    CHECK_ERR(cflash_norm_bwd(NULL, &p, &dy.dl, &x.dl, &w.dl, NULL, NULL, NULL, NULL, &dy.dl, NULL,
                              NULL, NULL),
              INV, "dx: shares memory with dy");
    CHECK_ERR(cflash_norm_bwd(NULL, &p, &dy.dl, &x.dl, &w.dl, NULL, NULL, NULL, NULL, &o.dl, &w.dl,
                              NULL, NULL),
              INV, "dweight: shares memory with weight");
    CHECK_ERR(cflash_norm_bwd(NULL, &p, &dy.dl, &x.dl, &w.dl, NULL, NULL, NULL, NULL, &o.dl, NULL,
                              NULL, &x.dl),
              INV, "dresidual: shares memory with x");
    CHECK_MSG((tt_hash(&buf) ^ tt_hash(&x) ^ tt_hash(&res) ^ tt_hash(&w) ^ tt_hash(&o) ^
               tt_hash(&o32) ^ tt_hash(&st) ^ tt_hash(&dy)) == h,
              "a refused call wrote memory");
    tt_free(&buf), tt_free(&x), tt_free(&res), tt_free(&w), tt_free(&o), tt_free(&o32);
    tt_free(&st), tt_free(&dy);
}

int main(int argc, char** argv) {
    verbose = argc > 1 && !strcmp(argv[1], "-v");
    double t0 = tt_now();
    test_grid();
    test_errors();
    test_in_place();
    test_apart();
    printf("test_norm: %.1f s\n", tt_now() - t0);
    return tt_summary();
}
