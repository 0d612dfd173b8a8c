/* A small attention forward on the CPU checked against an fp64 computation, for the tests that
 * break the environment (no driver, no NVRTC, no ldconfig, fake libraries): whatever the report
 * says, attention on the CPU must still work. Header-only, included by tests/test_dispatch.c and
 * tests/test_report*.c. */
#ifndef CFLASH_TESTS_REPORT_SMOKE_H
#define CFLASH_TESTS_REPORT_SMOKE_H

#include <math.h>

#include "common/testutil.h"

/* Runs cflash_attn_fwd(ctx, causal) on fresh fp32 inputs (B=1, Sq=7, Sk=9, H=2, D=16) with the
 * output poisoned. Returns the status; on CFLASH_OK also checks full coverage and the error
 * against fp64 (1e-5, far above fp32 rounding for these sizes) with CHECK. */
static inline cflash_status smoke_attn(cflash_context* ctx, int causal, uint64_t seed) {
    enum { B = 1, SQ = 7, SK = 9, H = 2, D = 16 };
    tt_tensor q, k, v, out;
    int64_t sq[4] = {B, SQ, H, D}, sk[4] = {B, SK, H, D};
    tt_alloc(&q, CF_F32, 4, sq, TT_DENSE);
    tt_alloc(&k, CF_F32, 4, sk, TT_DENSE);
    tt_alloc(&v, CF_F32, 4, sk, TT_DENSE);
    tt_alloc(&out, CF_F32, 4, sq, TT_DENSE);
    tt_random(&q, seed, -1, 1);
    tt_random(&k, seed + 1, -1, 1);
    tt_random(&v, seed + 2, -1, 1);
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    p.causal = causal;
    cflash_status s = cflash_attn_fwd(ctx, &p, &q.dl, &k.dl, &v.dl, &out.dl, NULL);
    if (s == CFLASH_OK) {
        CHECK(tt_count_nan(&out) == 0);
        double worst = 0;
        for (int64_t i = 0; i < SQ; i++)
            for (int64_t h = 0; h < H; h++) {
                double sc[SK], m = -INFINITY, sum = 0;
                int64_t hi = causal ? i + SK - SQ + 1 : SK;
                for (int64_t j = 0; j < hi; j++) {
                    double dot = 0;
                    for (int64_t d = 0; d < D; d++)
                        dot += tt_get(&q, (int64_t[]){0, i, h, d}) *
                               tt_get(&k, (int64_t[]){0, j, h, d});
                    sc[j] = dot / sqrt((double)D);
                    if (sc[j] > m) m = sc[j];
                }
                for (int64_t j = 0; j < hi; j++)
                    sum += (sc[j] = exp(sc[j] - m));
                for (int64_t d = 0; d < D; d++) {
                    double o = 0;
                    for (int64_t j = 0; j < hi; j++)
                        o += sc[j] / sum * tt_get(&v, (int64_t[]){0, j, h, d});
                    double e = fabs(o - tt_get(&out, (int64_t[]){0, i, h, d}));
                    if (!(e <= worst)) worst = e;
                }
            }
        CHECK_MSG(worst < 1e-5, "attention max error %g against fp64", worst);
    } else {
        /* A failing call writes nothing. */
        CHECK(tt_count_nan(&out) == out.numel);
    }
    tt_free(&q);
    tt_free(&k);
    tt_free(&v);
    tt_free(&out);
    return s;
}

#endif
