/* cflash_attn_mask_far_keys: an additive mask as the boolean mask of the pairs that can weigh
 * something. Checked element by element against a reference in double on fresh random masks of
 * every float dtype and layout (with finfo.min and -inf entries, rows all hidden, rows with a NaN
 * or +inf, values on either side of the threshold), with poisoned outputs; attention with the
 * result against attention with the bias alone; one test per error path, each leaving keep
 * untouched. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/attn_grid.h"
#include "common/testutil.h"

#define INV CFLASH_ERR_INVALID_ARGUMENT

/* The largest finite value of dtype dt (finfo.max). */
static double dtype_max(cflash_dtype dt) {
    return dt == CFLASH_DTYPE_F16 ? 65504.0 : dt == CFLASH_DTYPE_BF16 ? 0x1.fep127 : FLT_MAX;
}

/* The reference: keep of row r (n values x), in double; updates *hides, *zero. */
static void ref_row(const double* x, int64_t n, double margin, uint8_t* k, int* hides, int* zero) {
    double top = -INFINITY;
    int nan = 0;
    for (int64_t j = 0; j < n; j++) {
        nan |= isnan(x[j]);
        if (x[j] > top) top = x[j];
    }
    for (int64_t j = 0; j < n; j++) {
        /* (x < top - margin, exactly: x + margin < top when both sides are exact in double) */
        const int keep = nan || !isfinite(top) || !(x[j] + margin < top);
        k[j] = (uint8_t)keep;
        *hides |= !keep;
        if (keep && x[j] != 0.0) *zero = 0;
    }
}

/* Row r of bias b gets a pattern by r % 10: random values; a causal run of 0 and dtype min beyond;
 * every value dtype min; -inf beside values; a NaN; +inf; every value -inf; values either side
 * of top - margin (top 2, margin 1.5: 0.5 kept, the value below it hidden); every value negative
 * (the largest found among negatives alone); values below 2^-18 (fp16 subnormals). */
static void fill_row(tt_tensor* t, const int64_t* idx3, int64_t n, int r, double margin,
                     cflash_dtype dt, tt_rng* g) {
    int64_t at[4] = {idx3[0], idx3[1], idx3[2], 0};
    const double mn = -dtype_max(dt);
    for (int64_t j = 0; j < n; j++) {
        at[3] = j;
        double v = 6.0 * tt_rng_uniform(g) - 3.0;
        switch (r % 10) {
        case 1: v = j <= idx3[2] ? 0.0 : mn; break;
        case 2: v = mn; break;
        case 3: v = j % 3 == 0 ? -INFINITY : v; break;
        case 4: v = j == n / 2 ? NAN : v; break;
        case 5: v = j == 0 ? INFINITY : v; break;
        case 6: v = -INFINITY; break;
        case 7:
            v = j == 0   ? 2.0
                : j == 1 ? 2.0 - margin
                : j == 2 ? nextafter(2.0 - margin, -INFINITY) /* (rounded by tt_set) */
                         : v;
            break;
        case 8: v -= 10.0; break;
        case 9: v = ldexp(v, -20); break;
        default: break;
        }
        tt_set(t, at, v);
    }
}

static void test_random(void) {
    static const cflash_dtype dts[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};
    static const int64_t shapes[][4] = {
        {2, 3, 9, 37}, {1, 1, 16, 64}, {1, 2, 8, 1}, {3, 1, 8, 130}};
    static const double margins[] = {0.0, 1.5, 2.5, 700.0};
    int cases = 0;
    for (int d = 0; d < 3; d++)
        for (int s = 0; s < 4; s++)
            for (int m = 0; m < 4; m++) {
                const tt_layout lay = (tt_layout)((d + s + m) % 3);
                const double margin = margins[m];
                tt_tensor b, k;
                if (tt_alloc(&b, dts[d], 4, shapes[s], lay) ||
                    tt_alloc(&k, CFLASH_DTYPE_U8, 4, shapes[s], (tt_layout)((d + s + m + 1) % 3)))
                    continue;
                tt_rng g;
                tt_rng_init(&g, tt_seed_base() + (uint64_t)(100 * d + 10 * s + m));
                const int64_t n = shapes[s][3];
                int r = 0;
                for (int64_t i0 = 0; i0 < shapes[s][0]; i0++)
                    for (int64_t i1 = 0; i1 < shapes[s][1]; i1++)
                        for (int64_t i2 = 0; i2 < shapes[s][2]; i2++, r++) {
                            const int64_t idx3[3] = {i0, i1, i2};
                            fill_row(&b, idx3, n, r + (int)tt_rng_u64(&g) % 2, margin, dts[d], &g);
                        }
                const uint64_t hb = tt_hash(&b);
                int flags = -1;
                CHECK_OK(cflash_attn_mask_far_keys(&b.dl, margin, &k.dl, &flags));
                int hides = 0, zero = 1, bad = 0;
                double x[130];
                uint8_t want[130];
                for (int64_t i0 = 0; i0 < shapes[s][0]; i0++)
                    for (int64_t i1 = 0; i1 < shapes[s][1]; i1++)
                        for (int64_t i2 = 0; i2 < shapes[s][2]; i2++) {
                            int64_t at[4] = {i0, i1, i2, 0};
                            for (at[3] = 0; at[3] < n; at[3]++)
                                x[at[3]] = tt_get(&b, at);
                            ref_row(x, n, margin, want, &hides, &zero);
                            for (at[3] = 0; at[3] < n; at[3]++)
                                bad += tt_get(&k, at) != (double)want[at[3]];
                        }
                const int wflags =
                    (hides ? CFLASH_FAR_KEYS_HIDES : 0) | (zero ? CFLASH_FAR_KEYS_ZERO : 0);
                CHECK_MSG(bad == 0 && flags == wflags && tt_hash(&b) == hb && tt_padding_intact(&k),
                          "%s shape %lld %lld %lld %lld margin %g: %d wrong, flags %d (want %d)",
                          tt_dtype_short(dts[d]), (long long)shapes[s][0], (long long)shapes[s][1],
                          (long long)shapes[s][2], (long long)shapes[s][3], margin, bad, flags,
                          wflags);
                tt_free(&b), tt_free(&k);
                cases++;
            }
    printf("far keys: %d random cases\n", cases);
}

/* transformers' masks (0 and finfo.min): the flags say hides and zero; every other case of the
 * flags too (nothing hidden, zero or not). */
static void test_flags(void) {
    const int64_t sh[4] = {1, 1, 4, 6};
    tt_tensor b, k;
    CHECK(tt_alloc(&b, CFLASH_DTYPE_BF16, 4, sh, TT_DENSE) == 0);
    CHECK(tt_alloc(&k, CFLASH_DTYPE_U8, 4, sh, TT_DENSE) == 0);
    for (int64_t n = 0; n < 24; n++) /* causal: key j of row i kept iff j <= i + 2 */
        tt_set_flat(&b, n, n % 6 <= n / 6 + 2 ? 0.0 : -dtype_max(CFLASH_DTYPE_BF16));
    int flags = 0;
    CHECK_OK(cflash_attn_mask_far_keys(&b.dl, 300.0, &k.dl, &flags));
    CHECK(flags == (CFLASH_FAR_KEYS_HIDES | CFLASH_FAR_KEYS_ZERO));
    for (int64_t n = 0; n < 24; n++)
        CHECK(tt_get_flat(&k, n) == (n % 6 <= n / 6 + 2));
    tt_fill(&b, 0.0);
    CHECK_OK(cflash_attn_mask_far_keys(&b.dl, 300.0, &k.dl, &flags));
    CHECK(flags == CFLASH_FAR_KEYS_ZERO);
    tt_set_flat(&b, 7, -0.5); /* within the margin: kept, not 0 */
    CHECK_OK(cflash_attn_mask_far_keys(&b.dl, 300.0, &k.dl, &flags));
    CHECK(flags == 0);
    /* each flag from one row at either end alone (rows split over threads: test_far_keys_parallel
     * runs this with CFLASH_SMALL_CALLS=parallel) */
    for (int64_t at = 0; at < 24; at += 23) {
        tt_fill(&b, 0.0);
        tt_set_flat(&b, at, -0.5);
        CHECK_OK(cflash_attn_mask_far_keys(&b.dl, 300.0, &k.dl, &flags));
        CHECK_MSG(flags == 0, "-0.5 at %lld: flags %d", (long long)at, flags);
        tt_set_flat(&b, at, -dtype_max(CFLASH_DTYPE_BF16));
        CHECK_OK(cflash_attn_mask_far_keys(&b.dl, 300.0, &k.dl, &flags));
        CHECK_MSG(flags == (CFLASH_FAR_KEYS_HIDES | CFLASH_FAR_KEYS_ZERO) &&
                      tt_get_flat(&k, at) == 0.0,
                  "finfo.min at %lld: flags %d", (long long)at, flags);
    }
    /* empty: nothing to read or write, however large the other dims */
    const int64_t e[4] = {(int64_t)1 << 40, (int64_t)1 << 20, 0, 3};
    DLTensor be = b.dl, ke = k.dl;
    be.shape = ke.shape = (int64_t*)e;
    be.strides = ke.strides = NULL;
    CHECK_OK(cflash_attn_mask_far_keys(&be, 1.0, &ke, &flags));
    CHECK(flags == CFLASH_FAR_KEYS_ZERO);
    tt_free(&b), tt_free(&k);
}

/* Views with negative strides (rows and heads read backwards, found by the fuzzer: the byte
 * offset of such a row was formed unsigned), against the reference. */
static void test_negative_strides(void) {
    const int64_t sh[4] = {1, 2, 5, 9}, st[4] = {90, -45, -9, 1};
    tt_tensor b, k;
    CHECK(tt_alloc_strided(&b, CFLASH_DTYPE_F16, 4, sh, st) == 0);
    CHECK(tt_alloc_strided(&k, CFLASH_DTYPE_U8, 4, sh, st) == 0);
    tt_rng g;
    tt_rng_init(&g, tt_seed_base() + 900);
    for (int64_t n = 0; n < 90; n++)
        tt_set_flat(&b, n, n % 4 == 1 ? -65504.0 : 4.0 * tt_rng_uniform(&g));
    int flags = 0, hides = 0, zero = 1, bad = 0;
    CHECK_OK(cflash_attn_mask_far_keys(&b.dl, 100.0, &k.dl, &flags));
    for (int64_t r = 0; r < 10; r++) {
        double x[9];
        uint8_t want[9];
        for (int j = 0; j < 9; j++)
            x[j] = tt_get_flat(&b, 9 * r + j);
        ref_row(x, 9, 100.0, want, &hides, &zero);
        for (int j = 0; j < 9; j++)
            bad += tt_get_flat(&k, 9 * r + j) != (double)want[j];
    }
    CHECK_MSG(bad == 0 && hides && flags == CFLASH_FAR_KEYS_HIDES, "%d wrong, flags %d", bad,
              flags);
    tt_free(&b), tt_free(&k);
}

/* Attention with the bias alone against attention with keep (and the bias, or none when zero):
 * the same outputs and lse, within fp32 rounding (fp32 B2 H2 Sq 33 Sk 70 D 32, causal and left
 * padding written with finfo.min, and one row all finfo.min). */
static void test_attention(void) {
    attn_case c;
    attn_case_init(&c);
    c.B = 2, c.H = 2, c.Hk = 2, c.Sq = 33, c.Sk = 70, c.D = c.Dv = 32, c.bias = ATTN_BC_BH;
    c.bias_f32 = 1;
    c.dtype = CFLASH_DTYPE_F32, c.seed = tt_seed_base() + 500;
    attn_problem* p = attn_problem_new(&c);
    CHECK(p != NULL);
    if (!p) return;
    int64_t at[4];
    for (at[0] = 0; at[0] < 2; at[0]++)
        for (at[1] = 0; at[1] < 2; at[1]++)
            for (at[2] = 0; at[2] < 33; at[2]++)
                for (at[3] = 0; at[3] < 70; at[3]++) {
                    const int kept = at[3] >= 5 * at[0] && at[3] <= at[2] + 37 && at[2] != 4;
                    tt_set(&p->bias, at, kept ? 0.0 : -FLT_MAX);
                }
    attn_problem_refresh_inputs(p);
    /* the margin: 2 scale sqrt(D) max|q| sqrt(D) max|k| + 200 (inputs in [-1, 1)) */
    const double margin = 2.0 / sqrt(32.0) * 32.0 + 200.0;
    tt_tensor keep;
    CHECK(tt_alloc(&keep, CFLASH_DTYPE_U8, 4, p->bias.shape, TT_DENSE) == 0);
    int flags = 0;
    CHECK_OK(cflash_attn_mask_far_keys(&p->bias.dl, margin, &keep.dl, &flags));
    CHECK(flags == CFLASH_FAR_KEYS_HIDES); /* (row 4 all finfo.min: kept, not zero) */
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    tt_tensor out0, lse0;
    CHECK(tt_alloc_like(&out0, &p->out) == 0 && tt_alloc_like(&lse0, &p->lse) == 0);
    cflash_attn_params ap;
    cflash_attn_params_init(&ap);
    ap.attn_bias = &p->bias.dl;
    CHECK_OK(cflash_attn_fwd(ctx, &ap, &p->q.dl, &p->k.dl, &p->v.dl, &out0.dl, &lse0.dl));
    ap.attn_mask = &keep.dl;
    CHECK_OK(cflash_attn_fwd(ctx, &ap, &p->q.dl, &p->k.dl, &p->v.dl, &p->out.dl, &p->lse.dl));
    double d = 0.0, dl = 0.0;
    for (int64_t n = 0; n < out0.numel; n++)
        d = fmax(d, fabs(tt_get_flat(&out0, n) - tt_get_flat(&p->out, n)));
    for (int64_t n = 0; n < lse0.numel; n++)
        dl = fmax(dl, fabs(tt_get_flat(&lse0, n) - tt_get_flat(&p->lse, n)));
    CHECK_MSG(d <= 1e-5 && dl <= 1e-5 && tt_count_nan(&out0) == 0,
              "attention with keep: out differs by %g, lse by %g", d, dl);
    tt_free(&out0), tt_free(&lse0), tt_free(&keep);
    cflash_context_free(ctx);
    attn_problem_free(p);
}

/* One test per error path; keep is never written by a failing call. */
static void test_errors(void) {
    const int64_t sh[4] = {1, 2, 3, 4}, sh3[3] = {2, 3, 4}, other[4] = {1, 2, 3, 5};
    tt_tensor b, k, b3, bi, kf, ko;
    tt_alloc(&b, CFLASH_DTYPE_F32, 4, sh, TT_DENSE);
    tt_random(&b, 3, -1, 1);
    tt_alloc(&k, CFLASH_DTYPE_U8, 4, sh, TT_DENSE);
    tt_alloc(&b3, CFLASH_DTYPE_F32, 3, sh3, TT_DENSE);
    tt_alloc(&bi, CFLASH_DTYPE_I32, 4, sh, TT_DENSE);
    tt_alloc(&kf, CFLASH_DTYPE_F32, 4, sh, TT_DENSE);
    tt_alloc(&ko, CFLASH_DTYPE_U8, 4, other, TT_DENSE);
    const uint64_t hk = tt_hash(&k);
    int flags = 7;
    CHECK_ERR(cflash_attn_mask_far_keys(&b.dl, 1.0, &k.dl, NULL), INV, "flags: is NULL");
    CHECK_ERR(cflash_attn_mask_far_keys(&b.dl, NAN, &k.dl, &flags), INV,
              "margin: nan, expected a finite value >= 0");
    CHECK(flags == 0);
    CHECK_ERR(cflash_attn_mask_far_keys(&b.dl, -1.0, &k.dl, &flags), INV, "margin: -1");
    CHECK_ERR(cflash_attn_mask_far_keys(&b.dl, INFINITY, &k.dl, &flags), INV, "margin: inf");
    CHECK_ERR(cflash_attn_mask_far_keys(NULL, 1.0, &k.dl, &flags), INV, "bias: is NULL");
    CHECK_ERR(cflash_attn_mask_far_keys(&b.dl, 1.0, NULL, &flags), INV, "keep: is NULL");
    CHECK_ERR(cflash_attn_mask_far_keys(&b3.dl, 1.0, &k.dl, &flags), INV,
              "bias: expected 4 dims (B, H, Sq, Sk), got 3");
    CHECK_ERR(cflash_attn_mask_far_keys(&bi.dl, 1.0, &k.dl, &flags), INV,
              "bias: dtype int32, expected float32, float16 or bfloat16");
    CHECK_ERR(cflash_attn_mask_far_keys(&b.dl, 1.0, &kf.dl, &flags), INV,
              "keep: dtype float32, expected uint8 or bool (8 bits)");
    CHECK_ERR(cflash_attn_mask_far_keys(&b.dl, 1.0, &ko.dl, &flags), INV,
              "keep: shape (1, 2, 3, 5), expected that of bias, (1, 2, 3, 4)");
    /* a last dim with stride 2, in either */
    const int64_t st2[4] = {48, 24, 8, 2};
    DLTensor bs = b.dl, ks = k.dl;
    tt_tensor big, bigk;
    const int64_t bsh[4] = {1, 2, 3, 8};
    tt_alloc(&big, CFLASH_DTYPE_F32, 4, bsh, TT_DENSE);
    tt_alloc(&bigk, CFLASH_DTYPE_U8, 4, bsh, TT_DENSE);
    bs = big.dl, bs.shape = b.dl.shape, bs.strides = (int64_t*)st2;
    ks = bigk.dl, ks.shape = k.dl.shape, ks.strides = (int64_t*)st2;
    CHECK_ERR(cflash_attn_mask_far_keys(&bs, 1.0, &k.dl, &flags), INV,
              "bias: last dimension has stride 2, expected 1 (contiguous)");
    CHECK_ERR(cflash_attn_mask_far_keys(&b.dl, 1.0, &ks, &flags), INV,
              "keep: last dimension has stride 2, expected 1 (contiguous)");
    /* keep over bias's own bytes */
    DLTensor kin = k.dl;
    kin.data = b.dl.data, kin.byte_offset = b.dl.byte_offset;
    CHECK_ERR(cflash_attn_mask_far_keys(&b.dl, 1.0, &kin, &flags), INV, "keep");
    /* on a GPU */
    DLTensor bg = b.dl;
    bg.device.device_type = kDLCUDA;
    CHECK_ERR(cflash_attn_mask_far_keys(&bg, 1.0, &k.dl, &flags), INV,
              "bias: on cuda, expected cpu");
    /* more elements than int64 holds */
    const int64_t huge[4] = {(int64_t)1 << 40, (int64_t)1 << 30, 4, 4};
    DLTensor bh = b.dl;
    bh.shape = (int64_t*)huge, bh.strides = NULL;
    CHECK_ERR(cflash_attn_mask_far_keys(&bh, 1.0, &k.dl, &flags), INV, "more than INT64_MAX");
    CHECK(tt_hash(&k) == hk);
    tt_free(&b), tt_free(&k), tt_free(&b3), tt_free(&bi), tt_free(&kf), tt_free(&ko);
    tt_free(&big), tt_free(&bigk);
}

int main(void) {
    test_random();
    test_flags();
    test_negative_strides();
    test_attention();
    test_errors();
    return tt_summary();
}
