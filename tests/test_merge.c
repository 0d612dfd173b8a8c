/* cflash_attn_merge against an fp64 reference on every CPU backend: NS parts (1, 2, 5), parts
 * with LSE -inf (empty), rows where every part is empty, mixed dtypes of the partial and final
 * outputs, strided views; and an end-to-end check that merging cflash_attn_fwd over key halves
 * gives cflash_attn_fwd over all keys. One test per error path. Usage: test_merge [-v] */
#include <math.h>
#include <stdlib.h>

#include "common/testutil.h"
#include "oracle/ops_oracle.h"

static int verbose;

static void run_case(int64_t NS, int64_t B, int64_t Sq, int64_t H, int64_t Dv, cf_dtype pd,
                     cf_dtype od, tt_layout layout, int with_lse, uint64_t seed) {
    int64_t ps[5] = {NS, B, Sq, H, Dv}, ls[4] = {NS, B, H, Sq}, os[4] = {B, Sq, H, Dv},
            lo[3] = {B, H, Sq};
    tt_tensor op, lp, out, lse;
    tt_alloc(&op, pd, 5, ps, layout);
    tt_random(&op, seed, -1, 1);
    tt_alloc(&lp, CF_F32, 4, ls, layout);
    tt_random(&lp, seed + 1, -3, 6);
    tt_rng r;
    tt_rng_init(&r, seed);
    int64_t rows = B * H * Sq;
    for (int64_t n = 0; n < lp.numel; n++) { /* some empty parts; row 0 empty everywhere */
        int64_t row = n % rows;
        if (row == 0 || tt_rng_u64(&r) % 5 == 0) tt_set_flat(&lp, n, -INFINITY);
    }
    int64_t nout = B * Sq * H * Dv;
    double *ref = malloc(8 * (size_t)nout), *rl = malloc(8 * (size_t)rows);
    double *nv = malloc(8 * (size_t)nout), *nl = malloc(8 * (size_t)rows);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Sq; i++)
            for (int64_t h = 0; h < H; h++) {
                double m = -INFINITY, sum = 0;
                float mf = -INFINITY, sf = 0;
                for (int64_t s = 0; s < NS; s++) {
                    int64_t idx[4] = {s, b, h, i};
                    double l = tt_get(&lp, idx);
                    if (l > m) m = l, mf = (float)l;
                }
                for (int64_t s = 0; s < NS && m > -INFINITY; s++) {
                    int64_t idx[4] = {s, b, h, i};
                    sum += exp(tt_get(&lp, idx) - m);
                    sf += expf((float)tt_get(&lp, idx) - mf);
                }
                double L = m > -INFINITY ? m + log(sum) : -INFINITY;
                float Lf = mf > -INFINITY ? mf + logf(sf) : -INFINITY;
                rl[(b * H + h) * Sq + i] = L;
                nl[(b * H + h) * Sq + i] = Lf;
                for (int64_t d = 0; d < Dv; d++) {
                    double acc = 0;
                    float accf = 0;
                    for (int64_t s = 0; s < NS; s++) {
                        int64_t idx[4] = {s, b, h, i}, io[5] = {s, b, i, h, d};
                        double l = tt_get(&lp, idx);
                        if (l == -INFINITY) continue;
                        acc += exp(l - L) * tt_get(&op, io);
                        accf += expf((float)l - Lf) * (float)tt_get(&op, io);
                    }
                    ref[((b * Sq + i) * H + h) * Dv + d] = acc;
                    nv[((b * Sq + i) * H + h) * Dv + d] = ops_round(od, accf);
                }
            }
    double bo = ops_bound(od, 2.0, ops_max_err_arr(nv, ref, nout), ops_max_abs(ref, nout));
    double bl = ops_bound(CF_F32, 2.0, ops_max_err_arr(nl, rl, rows), ops_max_abs(rl, rows));
    char desc[160];
    snprintf(desc, sizeof desc, "NS%lld B%lld Sq%lld H%lld Dv%lld %s->%s layout%d%s seed%llu",
             (long long)NS, (long long)B, (long long)Sq, (long long)H, (long long)Dv,
             tt_dtype_short(pd), tt_dtype_short(od), (int)layout, with_lse ? " lse" : "",
             (unsigned long long)seed);
    uint64_t hin = tt_hash(&op) ^ tt_hash(&lp);
    for (const char* const* be = ops_backends; *be; be++) {
        if (!tt_backend_selected(*be)) continue;
        tt_alloc(&out, od, 4, os, layout);
        tt_alloc(&lse, CF_F32, 3, lo, TT_DENSE);
        cflash_context* ctx = ops_context(*be, 0);
        cflash_status s =
            cflash_attn_merge(ctx, &op.dl, &lp.dl, &out.dl, with_lse ? &lse.dl : NULL);
        cflash_context_free(ctx);
        if (!ops_backend_skips(*be, "attn_merge", s)) {
            CHECK_MSG(s == CFLASH_OK, "%s on %s: %s", desc, *be, cflash_last_error());
            int64_t n1 = 0, n2 = 0;
            double eo = ops_max_err(&out, ref, &n1), el = with_lse ? ops_max_err(&lse, rl, &n2) : 0;
            CHECK_MSG(eo <= bo && n1 == 0 && tt_padding_intact(&out),
                      "%s on %s: out err %.3g > %.3g or %lld NaN", desc, *be, eo, bo,
                      (long long)n1);
            CHECK_MSG(el <= bl && n2 == 0, "%s on %s: lse err %.3g > %.3g or %lld NaN", desc, *be,
                      el, bl, (long long)n2);
            CHECK_MSG(hin == (tt_hash(&op) ^ tt_hash(&lp)), "%s on %s: inputs modified", desc, *be);
            if (verbose)
                printf("%-10s %s out %.3g <= %.3g lse %.3g <= %.3g\n", *be, desc, eo, bo, el, bl);
        }
        tt_free(&out), tt_free(&lse);
    }
    free(ref), free(rl), free(nv), free(nl);
    tt_free(&op), tt_free(&lp);
}

/* attn over keys [0, Sk) == merge(attn over [0, k1), attn over [k1, Sk)) */
static void test_end_to_end(void) {
    const int64_t B = 2, Sq = 5, Sk = 33, H = 4, D = 16, k1 = 12;
    int64_t qs[4] = {B, Sq, H, D}, ks[4] = {B, Sk, H, D}, os[4] = {B, Sq, H, D}, ls[3] = {B, H, Sq};
    tt_tensor q, k, v, out, lse, op, lp;
    tt_alloc(&q, CF_F32, 4, qs, TT_DENSE), tt_random(&q, 1, -1, 1);
    tt_alloc(&k, CF_F32, 4, ks, TT_DENSE), tt_random(&k, 2, -1, 1);
    tt_alloc(&v, CF_F32, 4, ks, TT_DENSE), tt_random(&v, 3, -1, 1);
    tt_alloc(&out, CF_F32, 4, os, TT_DENSE);
    tt_alloc(&lse, CF_F32, 3, ls, TT_DENSE);
    int64_t ps[5] = {2, B, Sq, H, D}, pl[4] = {2, B, H, Sq};
    tt_alloc(&op, CF_F32, 5, ps, TT_DENSE);
    tt_alloc(&lp, CF_F32, 4, pl, TT_DENSE);
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    CHECK_OK(cflash_attn_fwd(NULL, &p, &q.dl, &k.dl, &v.dl, &out.dl, &lse.dl));
    for (int part = 0; part < 2; part++) {
        DLTensor kk = k.dl, vv = v.dl, oo = op.dl, ll = lp.dl;
        int64_t kshape[4] = {B, part ? Sk - k1 : k1, H, D};
        kk.shape = vv.shape = kshape;
        kk.byte_offset = vv.byte_offset = (uint64_t)(part ? k1 * H * D * 4 : 0);
        int64_t oshape[4] = {B, Sq, H, D}, lshape[3] = {B, H, Sq};
        oo.ndim = 4, oo.shape = oshape, oo.strides = op.dl.strides + 1;
        oo.byte_offset = (uint64_t)(part * B * Sq * H * D * 4);
        ll.ndim = 3, ll.shape = lshape, ll.strides = lp.dl.strides + 1;
        ll.byte_offset = (uint64_t)(part * B * H * Sq * 4);
        CHECK_OK(cflash_attn_fwd(NULL, &p, &q.dl, &kk, &vv, &oo, &ll));
    }
    tt_tensor m, ml;
    tt_alloc(&m, CF_F32, 4, os, TT_DENSE);
    tt_alloc(&ml, CF_F32, 3, ls, TT_DENSE);
    CHECK_OK(cflash_attn_merge(NULL, &op.dl, &lp.dl, &m.dl, &ml.dl));
    double e = 0, el = 0;
    for (int64_t n = 0; n < m.numel; n++)
        e = fmax(e, fabs(tt_get_flat(&m, n) - tt_get_flat(&out, n)));
    for (int64_t n = 0; n < ml.numel; n++)
        el = fmax(el, fabs(tt_get_flat(&ml, n) - tt_get_flat(&lse, n)));
    CHECK_MSG(e < 1e-5 && el < 1e-5, "end to end: out diff %.3g, lse diff %.3g", e, el);
    tt_free(&q), tt_free(&k), tt_free(&v), tt_free(&out), tt_free(&lse), tt_free(&op), tt_free(&lp),
        tt_free(&m), tt_free(&ml);
}

static void test_errors(void) {
    int64_t ps[5] = {2, 1, 3, 2, 4}, ls[4] = {2, 1, 2, 3}, os[4] = {1, 3, 2, 4}, lo[3] = {1, 2, 3};
    tt_tensor op, lp, out, lse, bad;
    tt_alloc(&op, CF_BF16, 5, ps, TT_DENSE), tt_random(&op, 1, -1, 1);
    tt_alloc(&lp, CF_F32, 4, ls, TT_DENSE), tt_random(&lp, 2, -1, 1);
    tt_alloc(&out, CF_F32, 4, os, TT_DENSE);
    tt_alloc(&lse, CF_F32, 3, lo, TT_DENSE);
    const cflash_status INV = CFLASH_ERR_INVALID_ARGUMENT;
    CHECK_ERR(cflash_attn_merge(NULL, NULL, &lp.dl, &out.dl, NULL), INV, "out_partial: is NULL");
    CHECK_ERR(cflash_attn_merge(NULL, &lp.dl, &lp.dl, &out.dl, NULL), INV,
              "out_partial: expected 5 dims");
    CHECK_ERR(cflash_attn_merge(NULL, &op.dl, &op.dl, &out.dl, NULL), INV,
              "lse_partial: expected 4 dims");
    tt_alloc(&bad, CF_BF16, 4, ls, TT_DENSE);
    CHECK_ERR(cflash_attn_merge(NULL, &op.dl, &bad.dl, &out.dl, NULL), INV,
              "lse_partial: dtype bfloat16, expected float32");
    tt_free(&bad);
    int64_t l2[4] = {3, 1, 2, 3};
    tt_alloc(&bad, CF_F32, 4, l2, TT_DENSE);
    CHECK_ERR(cflash_attn_merge(NULL, &op.dl, &bad.dl, &out.dl, NULL), INV,
              "lse_partial: shape (3, 1, 2, 3)");
    tt_free(&bad);
    int64_t o2[4] = {1, 3, 2, 5};
    tt_alloc(&bad, CF_F32, 4, o2, TT_DENSE);
    CHECK_ERR(cflash_attn_merge(NULL, &op.dl, &lp.dl, &bad.dl, NULL), INV,
              "out: shape (1, 3, 2, 5)");
    tt_free(&bad);
    tt_alloc(&bad, CF_I32, 4, os, TT_DENSE);
    CHECK_ERR(cflash_attn_merge(NULL, &op.dl, &lp.dl, &bad.dl, NULL), INV, "out: dtype int32");
    tt_free(&bad);
    tt_alloc(&bad, CF_F16, 3, lo, TT_DENSE);
    CHECK_ERR(cflash_attn_merge(NULL, &op.dl, &lp.dl, &out.dl, &bad.dl), INV,
              "lse: dtype float16, expected float32");
    tt_free(&bad);
    int64_t p0[5] = {0, 1, 3, 2, 4};
    tt_alloc(&bad, CF_F32, 5, p0, TT_DENSE);
    CHECK_ERR(cflash_attn_merge(NULL, &bad.dl, &lp.dl, &out.dl, NULL), INV, "NS = 0 parts");
    tt_free(&bad);
    CHECK(tt_count_nan(&out) == out.numel && tt_count_nan(&lse) == lse.numel);
    /* outputs sharing memory with the partials or each other (cflash.h): refused, nothing
     * written. out as part 1 of fp32 partials (their strides); lse as part 0 of lse_partial; lse
     * inside out */
    tt_tensor op32;
    tt_alloc(&op32, CF_F32, 5, ps, TT_DENSE), tt_random(&op32, 3, -1, 1);
    const uint64_t h = tt_hash(&op32) ^ tt_hash(&lp) ^ tt_hash(&out);
    DLTensor o1 = tt_view(&op32, 4, os, op32.strides + 1, op32.strides[0]);
    CHECK_ERR(cflash_attn_merge(NULL, &op32.dl, &lp.dl, &o1, NULL), INV,
              "out: shares memory with out_partial");
    DLTensor l0 = tt_view(&lp, 3, lo, lp.strides + 1, 0);
    CHECK_ERR(cflash_attn_merge(NULL, &op32.dl, &lp.dl, &out.dl, &l0), INV,
              "lse: shares memory with lse_partial");
    DLTensor lo2 = tt_view(&out, 3, lo, NULL, 2);
    CHECK_ERR(cflash_attn_merge(NULL, &op32.dl, &lp.dl, &out.dl, &lo2), INV,
              "lse: shares memory with out");
    CHECK((tt_hash(&op32) ^ tt_hash(&lp) ^ tt_hash(&out)) == h);
    tt_free(&op32);
    char buf[512];
    CHECK_OK(cflash_attn_merge(tt_explain(buf, sizeof buf), &op.dl, &lp.dl, &out.dl, &lse.dl));
    CHECK_MSG(strstr(buf, "cpu-ref: OKAY"), "explain: %s", buf);
    CHECK(tt_count_nan(&out) == out.numel && tt_count_nan(&lse) == lse.numel);
    tt_free(&op), tt_free(&lp), tt_free(&out), tt_free(&lse);
}

int main(int argc, char** argv) {
    verbose = argc > 1 && !strcmp(argv[1], "-v");
    double t0 = tt_now();
    const cf_dtype dts[3] = {CF_F32, CF_F16, CF_BF16};
    int n = 0;
    for (int i = 0; i < 36; i++) {
        int64_t NS = (int64_t[]){1, 2, 5}[i % 3];
        int64_t Dv = (int64_t[]){1, 7, 64, 128, 33, 256}[(i / 3) % 6];
        run_case(NS, 1 + i % 2, (int64_t[]){1, 5, 17}[(i / 2) % 3], 1 + (i / 4) % 4, Dv, dts[i % 3],
                 i % 4 == 1 ? CF_F32 : dts[(i / 3) % 3], (tt_layout)((i / 6) % 3), i % 5 != 2,
                 600 + (uint64_t)i + tt_seed_base());
        n++;
    }
    run_case(4, 2, 64, 16, 128, CF_BF16, CF_BF16, TT_DENSE, 1, 7); /* many rows */
    printf("merge grid: %d cases + 1 large\n", n);
    test_end_to_end();
    test_errors();
    printf("test_merge: %.1f s\n", tt_now() - t0);
    return tt_summary();
}
