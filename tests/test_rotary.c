/* Rotary embedding against an fp64 reference on every CPU backend: interleaved and half-split
 * pairing, partial rotary dim, scalar and per-batch offsets, varlen, in place and out of place,
 * conjugate, a subset of heads (the fused GQA qkv layout), strided views, every dtype; the cos/sin
 * table builder; one test per error path. Usage: test_rotary [-v] */
#include <math.h>
#include <stdlib.h>

#include "common/testutil.h"
#include "oracle/ops_oracle.h"

static int verbose;

typedef struct rcase {
    cf_dtype dtype, cs_dtype;
    int64_t B, S, H, D, half, S_ro, nrot; /* nrot 0 = all */
    int interleaved, conjugate, inplace, varlen, per_batch_offsets;
    int64_t offset;
    tt_layout layout;
    uint64_t seed;
} rcase;

/* fp64 (naive = 0) or same-precision fp32 (naive = 1) rotation of x into ref (row-major of x). */
static void rotary_oracle(const rcase* c, const tt_tensor* x, const tt_tensor* cs,
                          const tt_tensor* sn, const int32_t* cu, const int32_t* offs, int naive,
                          double* ref) {
    int64_t rows = c->varlen ? cu[c->B] : c->B * c->S;
    for (int64_t n = 0; n < x->numel; n++)
        ref[n] = tt_get_flat(x, n); /* pass-through */
    for (int64_t r = 0; r < rows; r++) {
        int64_t b = 0, s = r % c->S;
        if (c->varlen) {
            while (cu[b + 1] <= r)
                b++;
            s = r - cu[b];
        } else {
            b = r / c->S;
        }
        int64_t pos = s + (offs ? offs[b] : c->offset);
        for (int64_t h = 0; h < (c->nrot ? c->nrot : c->H); h++)
            for (int64_t i = 0; i < c->half; i++) {
                int64_t ia = c->interleaved ? 2 * i : i,
                        ib = c->interleaved ? 2 * i + 1 : i + c->half;
                int64_t ci[2] = {pos, i};
                double co = tt_get(cs, ci), si = tt_get(sn, ci) * (c->conjugate ? -1 : 1);
                int64_t base = (r * c->H + h) * c->D;
                double a = ref[base + ia], bb = ref[base + ib];
                if (naive) {
                    ref[base + ia] =
                        ops_round(c->dtype, (float)((float)a * (float)co - (float)bb * (float)si));
                    ref[base + ib] =
                        ops_round(c->dtype, (float)((float)a * (float)si + (float)bb * (float)co));
                } else {
                    ref[base + ia] = a * co - bb * si;
                    ref[base + ib] = a * si + bb * co;
                }
            }
    }
}

static void run_case(const rcase* c) {
    tt_rng rng;
    tt_rng_init(&rng, c->seed);
    int32_t cu[9] = {0}, offs[8];
    int64_t total = c->B * c->S;
    if (c->varlen) { /* ragged lengths, max S */
        for (int64_t b = 0; b < c->B; b++)
            cu[b + 1] =
                cu[b] +
                (int32_t)(b == 0 ? c->S : (int64_t)(tt_rng_u64(&rng) % (uint64_t)(c->S + 1)));
        total = cu[c->B] + 2; /* two trailing rows no sequence owns: left untouched */
    }
    int64_t maxoff = 0;
    for (int64_t b = 0; b < c->B; b++) {
        offs[b] = (int32_t)(tt_rng_u64(&rng) % 7);
        if (offs[b] > maxoff) maxoff = offs[b];
    }
    rcase cc = *c;
    cc.S_ro = c->S + (c->per_batch_offsets ? maxoff : c->offset) + (int64_t)(tt_rng_u64(&rng) % 3);
    int64_t xs4[4] = {c->B, c->S, c->H, c->D}, xs3[3] = {total, c->H, c->D};
    int64_t css[2] = {cc.S_ro, c->half};
    tt_tensor x, out, cs, sn, cut, offt;
    int nd = c->varlen ? 3 : 4;
    tt_alloc(&x, c->dtype, nd, c->varlen ? xs3 : xs4, c->layout);
    tt_alloc(&cs, c->cs_dtype, 2, css, TT_DENSE);
    tt_alloc(&sn, c->cs_dtype, 2, css, c->layout == TT_DENSE ? TT_DENSE : TT_PADDED);
    int64_t one[1] = {c->B + 1}, nb[1] = {c->B};
    tt_alloc(&cut, CF_I32, 1, one, TT_DENSE);
    tt_alloc(&offt, CF_I32, 1, nb, TT_DENSE);
    memcpy(cut.dl.data, cu, sizeof(int32_t) * (size_t)(c->B + 1));
    memcpy(offt.dl.data, offs, sizeof(int32_t) * (size_t)c->B);
    tt_random(&x, c->seed * 3 + 1, -2, 2);
    for (int64_t r = 0; r < cc.S_ro; r++) /* a real table: cos^2 + sin^2 = 1 */
        for (int64_t i = 0; i < c->half; i++) {
            double a = tt_rng_uniform(&rng) * 6.283185307179586;
            int64_t idx[2] = {r, i};
            tt_set(&cs, idx, cos(a));
            tt_set(&sn, idx, sin(a));
        }
    double* ref = malloc(sizeof(double) * (size_t)x.numel);
    double* nv = malloc(sizeof(double) * (size_t)x.numel);
    const int32_t* op = c->per_batch_offsets ? offs : NULL;
    rotary_oracle(&cc, &x, &cs, &sn, cu, op, 0, ref);
    rotary_oracle(&cc, &x, &cs, &sn, cu, op, 1, nv);
    double maxref = ops_max_abs(ref, x.numel), naive = ops_max_err_arr(nv, ref, x.numel);
    double bound = ops_bound(c->dtype, 2.0, naive, maxref);
    tt_tensor x0;
    tt_alloc_like(&x0, &x);
    memcpy(x0.base, x.base, x.bytes);

    cflash_rotary_params p;
    cflash_rotary_params_init(&p);
    p.interleaved = c->interleaved;
    p.conjugate = c->conjugate;
    p.seqlen_offset = c->offset;
    p.seqlen_offsets = c->per_batch_offsets ? &offt.dl : NULL;
    p.cu_seqlens = c->varlen ? &cut.dl : NULL;
    p.num_heads = c->nrot;
    char desc[200];
    snprintf(desc, sizeof desc,
             "%s cos %s B%lld S%lld H%lld D%lld rd%lld nrot%lld %s%s%s%s off%s layout%d seed%llu",
             tt_dtype_short(c->dtype), tt_dtype_short(c->cs_dtype), (long long)c->B,
             (long long)c->S, (long long)c->H, (long long)c->D, (long long)(2 * c->half),
             (long long)c->nrot, c->interleaved ? "interleaved " : "", c->conjugate ? "conj " : "",
             c->inplace ? "inplace " : "", c->varlen ? "varlen " : "",
             c->per_batch_offsets ? "[B]" : "scalar", (int)c->layout, (unsigned long long)c->seed);
    for (const char* const* be = ops_backends; *be; be++) {
        if (!tt_backend_selected(*be)) continue;
        cflash_context* ctx = ops_context(*be, 0);
        memcpy(x.base, x0.base, x.bytes);
        tt_alloc_like(&out, &x);
        cflash_status s =
            cflash_rotary_apply(ctx, &p, &x.dl, &cs.dl, &sn.dl, c->inplace ? NULL : &out.dl);
        cflash_context_free(ctx);
        if (ops_backend_skips(*be, "rotary", s)) {
            tt_free(&out);
            continue;
        }
        CHECK_MSG(s == CFLASH_OK, "%s on %s: %s", desc, *be, cflash_last_error());
        const tt_tensor* res = c->inplace ? &x : &out;
        int64_t nan = 0;
        double err = ops_max_err(res, ref, &nan);
        if (c->varlen && !c->inplace) { /* the 2 rows no sequence owns stay poisoned */
            int64_t owned = cu[c->B] * c->H * c->D, left = 0;
            err = 0, nan = 0;
            for (int64_t n = 0; n < res->numel; n++) {
                double v = tt_get_flat(res, n);
                if (n >= owned)
                    left += isnan(v);
                else if (!isfinite(v))
                    nan++, err = INFINITY;
                else if (fabs(v - ref[n]) > err)
                    err = fabs(v - ref[n]);
            }
            CHECK_MSG(left == res->numel - owned, "%s on %s: unowned rows written", desc, *be);
        }
        CHECK_MSG(err <= bound && nan == 0,
                  "%s on %s: err %.3g > bound %.3g (naive %.3g) or %lld NaN", desc, *be, err, bound,
                  naive, (long long)nan);
        if (!c->inplace)
            CHECK_MSG(!memcmp(x.base, x0.base, x.bytes), "%s on %s: x modified", desc, *be);
        CHECK_MSG(tt_padding_intact(res) || c->inplace, "%s on %s: padding written", desc, *be);
        if (verbose) printf("%-10s %s err %.3g bound %.3g\n", *be, desc, err, bound);
        tt_free(&out);
    }
    free(ref), free(nv);
    tt_free(&x), tt_free(&x0), tt_free(&cs), tt_free(&sn), tt_free(&cut), tt_free(&offt);
}

static void test_grid(void) {
    const cf_dtype dts[3] = {CF_F32, CF_F16, CF_BF16};
    const int64_t Ds[] = {2, 6, 64, 80, 128, 7};
    int n = 0;
    for (int i = 0; i < 72; i++) {
        tt_rng r;
        tt_rng_init(&r, 1000 + (uint64_t)i + tt_seed_base());
        rcase c = {0};
        c.dtype = dts[i % 3];
        c.cs_dtype = (i / 3) % 2 ? c.dtype : CF_F32;
        c.D = Ds[(i / 6) % 6];
        c.half = (i / 2) % 2 ? c.D / 2 : (c.D / 4 > 0 ? c.D / 4 : 1); /* full or partial */
        c.B = 1 + (int64_t)(tt_rng_u64(&r) % 3);
        c.S = (int64_t[]){1, 5, 97, 33}[tt_rng_u64(&r) % 4];
        c.H = 1 + (int64_t)(tt_rng_u64(&r) % 4);
        c.nrot = (i % 5 == 4 && c.H > 1) ? c.H - 1 : 0;
        c.interleaved = (i / 4) % 2;
        c.conjugate = i % 7 == 3;
        c.inplace = (i / 8) % 2;
        c.varlen = i % 6 == 5;
        c.per_batch_offsets = i % 4 == 1;
        c.offset = (int64_t)(tt_rng_u64(&r) % 5);
        c.layout = (tt_layout)((i / 12) % 3);
        c.seed = 77 + (uint64_t)i + tt_seed_base();
        run_case(&c);
        n++;
    }
    /* one large case so the threaded / vector paths see long rows and many of them */
    rcase big = {CF_BF16, CF_F32, 2, 300, 8, 128, 64, 0, 0, 0, 0, 0, 0, 0, 3, TT_DENSE, 5};
    run_case(&big);
    big.interleaved = 1, big.dtype = CF_F16, big.inplace = 1;
    run_case(&big);
    /* bf16 with dense heads, every dim rotated: the fused bf16 rows of cpu-avx512 */
    big.dtype = CF_BF16, big.conjugate = 1, big.per_batch_offsets = 1;
    run_case(&big);
    big.interleaved = 0, big.inplace = 0, big.conjugate = 0, big.D = 64, big.half = 32;
    run_case(&big);
    printf("rotary grid: %d cases + 4 large\n", n);
}

static void test_tables(void) {
    int64_t shp[2] = {37, 24}, ps[1] = {37};
    for (int dt = 0; dt < 3; dt++) {
        cf_dtype d = (cf_dtype)dt;
        tt_tensor c, s, pos;
        tt_alloc(&c, d, 2, shp, TT_PADDED);
        tt_alloc(&s, d, 2, shp, TT_DENSE);
        tt_alloc(&pos, CF_I32, 1, ps, TT_DENSE);
        for (int i = 0; i < 37; i++)
            ((int32_t*)pos.dl.data)[i] = 1000 + 13 * i;
        cflash_rotary_table_params p;
        cflash_rotary_table_params_init(&p);
        for (int mode = 0; mode < 2; mode++) {
            p.base = mode ? 500000.0 : 10000.0;
            p.interpolation_factor = mode ? 4.0 : 1.0;
            p.position_start = mode ? 0 : 5;
            p.positions = mode ? &pos.dl : NULL;
            tt_poison(&c), tt_poison(&s);
            CHECK_OK(cflash_rotary_tables(&p, &c.dl, &s.dl));
            double err = 0;
            for (int64_t r = 0; r < 37; r++)
                for (int64_t i = 0; i < 24; i++) {
                    double t = (mode ? 1000.0 + 13 * r : 5.0 + r) / p.interpolation_factor;
                    double a = t * pow(p.base, -(double)(2 * i) / 48.0);
                    int64_t idx[2] = {r, i};
                    double e1 = fabs(tt_get(&c, idx) - cos(a)), e2 = fabs(tt_get(&s, idx) - sin(a));
                    if (!(e1 <= err)) err = e1;
                    if (!(e2 <= err)) err = e2;
                }
            CHECK_MSG(err <= tt_unit_roundoff(d) * 1.01 + 1e-7, "tables %s mode %d: err %.3g",
                      tt_dtype_short(d), mode, err);
        }
        tt_free(&c), tt_free(&s), tt_free(&pos);
    }
}

static void test_errors(void) {
    int64_t xs[4] = {2, 5, 3, 8}, cs[2] = {6, 4};
    tt_tensor x, c, s, o, bad, i32;
    tt_alloc(&x, CF_F32, 4, xs, TT_DENSE);
    tt_random(&x, 1, -1, 1);
    tt_alloc(&c, CF_F32, 2, cs, TT_DENSE), tt_fill(&c, 1);
    tt_alloc(&s, CF_F32, 2, cs, TT_DENSE), tt_fill(&s, 0);
    tt_alloc(&o, CF_F32, 4, xs, TT_DENSE);
    cflash_rotary_params p;
    cflash_rotary_params_init(&p);
    const cflash_status INV = CFLASH_ERR_INVALID_ARGUMENT;
    CHECK_ERR(cflash_rotary_apply(NULL, &p, NULL, &c.dl, &s.dl, &o.dl), INV, "x: is NULL");
    int64_t x3[3] = {2, 5, 3};
    tt_alloc(&bad, CF_F32, 3, x3, TT_DENSE);
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &bad.dl, &c.dl, &s.dl, NULL), INV,
              "x: expected 4 dims");
    tt_free(&bad);
    tt_alloc(&i32, CF_I32, 4, xs, TT_DENSE);
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &i32.dl, &c.dl, &s.dl, NULL), INV, "x: dtype int32");
    tt_free(&i32);
    int64_t cbig[2] = {6, 5};
    tt_alloc(&bad, CF_F32, 2, cbig, TT_DENSE);
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &bad.dl, &bad.dl, NULL), INV,
              "rotary_dim = 2 * 5 = 10");
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &c.dl, &bad.dl, NULL), INV, "sin: shape (6, 5)");
    tt_free(&bad);
    tt_alloc(&bad, CF_F16, 2, cs, TT_DENSE);
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &bad.dl, &bad.dl, NULL), INV,
              "cos: dtype float16, expected float32 or the dtype of x");
    tt_free(&bad);
    int64_t cshort[2] = {4, 4};
    tt_alloc(&bad, CF_F32, 2, cshort, TT_DENSE);
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &bad.dl, &bad.dl, NULL), INV, "cos: 4 rows");
    tt_free(&bad);
    p.seqlen_offset = -1;
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &c.dl, &s.dl, NULL), INV, "seqlen_offset: -1");
    p.seqlen_offset = 2;
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &c.dl, &s.dl, NULL), INV,
              "needs positions up to 6");
    p.seqlen_offset = 0;
    p.num_heads = 4;
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &c.dl, &s.dl, NULL), INV, "num_heads: 4");
    p.num_heads = 0;
    int64_t one[1] = {3};
    tt_alloc(&bad, CF_I32, 1, one, TT_DENSE);
    ((int32_t*)bad.dl.data)[0] = 0, ((int32_t*)bad.dl.data)[1] = 1, ((int32_t*)bad.dl.data)[2] = -1;
    p.seqlen_offsets = &bad.dl;
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &c.dl, &s.dl, NULL), INV,
              "seqlen_offsets: length 3, expected 2");
    p.seqlen_offsets = NULL;
    int64_t xv[3] = {10, 3, 8};
    tt_tensor xvar;
    tt_alloc(&xvar, CF_F32, 3, xv, TT_DENSE);
    tt_random(&xvar, 2, -1, 1);
    p.cu_seqlens = &bad.dl;
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &xvar.dl, &c.dl, &s.dl, NULL), INV,
              "cu_seqlens[2]: -1 is less than");
    ((int32_t*)bad.dl.data)[2] = 11;
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &xvar.dl, &c.dl, &s.dl, NULL), INV,
              "expected at most total = 10");
    ((int32_t*)bad.dl.data)[0] = 1;
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &xvar.dl, &c.dl, &s.dl, NULL), INV,
              "cu_seqlens[0]: 1, expected 0");
    ((int32_t*)bad.dl.data)[0] = 0, ((int32_t*)bad.dl.data)[2] = 6;
    p.max_seqlen = 3;
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &xvar.dl, &c.dl, &s.dl, NULL), INV, "max_seqlen: 3");
    p.max_seqlen = 0;
    CHECK_OK(cflash_rotary_apply(NULL, &p, &xvar.dl, &c.dl, &s.dl, NULL));
    p.cu_seqlens = NULL;
    tt_free(&xvar), tt_free(&bad);
    tt_alloc(&bad, CF_F16, 4, xs, TT_DENSE);
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &c.dl, &s.dl, &bad.dl), INV,
              "out: dtype float16, expected float32 (the dtype of x)");
    tt_free(&bad);
    int64_t xo[4] = {2, 5, 3, 6};
    tt_alloc(&bad, CF_F32, 4, xo, TT_DENSE);
    CHECK_ERR(cflash_rotary_apply(NULL, &p, &x.dl, &c.dl, &s.dl, &bad.dl), INV,
              "out: shape (2, 5, 3, 6)");
    tt_free(&bad);
    /* nothing written on error */
    tt_poison(&o);
    p.seqlen_offset = 9;
    cflash_rotary_apply(NULL, &p, &x.dl, &c.dl, &s.dl, &o.dl);
    CHECK(tt_count_nan(&o) == o.numel);
    p.seqlen_offset = 0;
    cflash_rotary_table_params tp;
    cflash_rotary_table_params_init(&tp);
    tp.base = 0;
    CHECK_ERR(cflash_rotary_tables(&tp, &c.dl, &s.dl), INV, "base: 0");
    tp.base = 10000, tp.interpolation_factor = -1;
    CHECK_ERR(cflash_rotary_tables(&tp, &c.dl, &s.dl), INV, "interpolation_factor: -1");
    /* explain: the same path */
    char buf[512];
    tt_poison(&o);
    CHECK_OK(cflash_rotary_apply(tt_explain(buf, sizeof buf), &p, &x.dl, &c.dl, &s.dl, &o.dl));
    CHECK_MSG(strstr(buf, "cpu-ref: OKAY") && strstr(buf, "-> "), "explain: %s", buf);
    CHECK(tt_count_nan(&o) == o.numel);
    tt_free(&x), tt_free(&c), tt_free(&s), tt_free(&o);
}

int main(int argc, char** argv) {
    verbose = argc > 1 && !strcmp(argv[1], "-v");
    double t0 = tt_now();
    test_grid();
    test_tables();
    test_errors();
    printf("test_rotary: %.1f s\n", tt_now() - t0);
    return tt_summary();
}
