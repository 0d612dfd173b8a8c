/* Dropout: the keep mask's statistics (kept fraction within 0.01 of 1 - p), its exact agreement
 * between cflash_attn_dropout_mask, the forward and the backward (read back through one-hot v and
 * dout), determinism, and the dropped-out results against the fp64 oracle.
 * Usage: test_dropout [BACKEND] (default cpu-ref). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"
#include "core/philox.h"
#include "oracle/attn_oracle.h"

static const char* backend = "cpu-ref";

/* The mask from the API, (B, H, Sq, Sk) uint8. */
static int api_mask(tt_tensor* m, const cflash_attn_params* p, int64_t B, int64_t H, int64_t Sq,
                    int64_t Sk, tt_layout layout) {
    int64_t s[4] = {B, H, Sq, Sk};
    if (tt_alloc(m, CF_U8, 4, s, layout)) return -1;
    cflash_status st = cflash_attn_dropout_mask(p, &m->dl);
    CHECK_MSG(st == CFLASH_OK, "cflash_attn_dropout_mask: %s", cflash_last_error());
    CHECK_MSG(tt_count_nan(m) == 0 || st != CFLASH_OK, "mask: %lld elements unwritten",
              (long long)tt_count_nan(m));
    CHECK(tt_padding_intact(m));
    return st == CFLASH_OK ? 0 : -1;
}

static void test_statistics(void) {
    static const float ps[] = {0.05f, 0.1f, 0.3f, 0.5f, 0.9f};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        cflash_attn_params p;
        cflash_attn_params_init(&p);
        p.dropout_p = ps[k];
        p.seed = 0x1234567890abcdefull + k;
        p.offset = k * 977;
        tt_tensor m;
        if (api_mask(&m, &p, 2, 4, 256, 257, TT_PADDED)) continue;
        int64_t kept = 0, kept_word[4] = {0}, n_word[4] = {0}, agree = 0;
        int64_t idx[4];
        for (int64_t n = 0; n < m.numel; n++) {
            tt_unravel(&m, n, idx);
            int v = (int)tt_get(&m, idx);
            kept += v;
            kept_word[idx[3] & 3] += v;
            n_word[idx[3] & 3]++;
            agree += v == cf_dropout_keep(p.seed, p.offset, p.dropout_p, (uint64_t)idx[0],
                                          (uint64_t)idx[1], (uint64_t)idx[2], (uint64_t)idx[3]);
        }
        double frac = (double)kept / (double)m.numel;
        CHECK_MSG(fabs(frac - (1.0 - ps[k])) <= 0.01, "p=%g: kept fraction %.4f, expected %.4f",
                  (double)ps[k], frac, 1.0 - ps[k]);
        for (int w = 0; w < 4; w++) {
            double fw = (double)kept_word[w] / (double)n_word[w];
            CHECK_MSG(fabs(fw - (1.0 - ps[k])) <= 0.01, "p=%g: Philox word %d keeps %.4f",
                      (double)ps[k], w, fw);
        }
        CHECK_MSG(agree == m.numel, "p=%g: API mask differs from cf_dropout_keep at %lld elements",
                  (double)ps[k], (long long)(m.numel - agree));
        printf("p=%.2f: kept %.4f of %lld\n", (double)ps[k], frac, (long long)m.numel);
        tt_free(&m);
    }
    /* p = 0 keeps everything; another seed gives another mask; the offset moves the counter. */
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    tt_tensor m0, m1, m2, m3;
    if (!api_mask(&m0, &p, 1, 2, 33, 65, TT_DENSE)) {
        int all = 1;
        for (int64_t n = 0; n < m0.numel; n++)
            all &= tt_get_flat(&m0, n) == 1;
        CHECK_MSG(all, "p = 0 must keep every weight");
        tt_free(&m0);
    }
    p.dropout_p = 0.5f, p.seed = 7;
    if (!api_mask(&m1, &p, 1, 2, 33, 65, TT_DENSE)) {
        p.seed = 8;
        if (!api_mask(&m2, &p, 1, 2, 33, 65, TT_DENSE)) {
            CHECK_MSG(memcmp(m1.base, m2.base, m1.bytes), "seeds 7 and 8 gave the same mask");
            tt_free(&m2);
        }
        p.seed = 7, p.offset = 1;
        if (!api_mask(&m3, &p, 1, 2, 33, 65, TT_DENSE)) {
            CHECK_MSG(memcmp(m1.base, m3.base, m1.bytes), "offsets 0 and 1 gave the same mask");
            tt_free(&m3);
        }
        tt_free(&m1);
    }
}

/* One-hot read-back: with Sk = Dv and v = identity, out[b,i,h,j] = P_ij * keep_ij / (1 - p), so
 * out != 0 iff kept (no masks: P > 0). With Sq = Dv and dout = identity, dv[b,j,h,i] is the same
 * product, so the backward's mask reads back the same way. */
static void test_mask_agreement(uint64_t seed, uint64_t offset, float dp, tt_layout layout) {
    int64_t B = 2, H = 3, n = 40;
    attn_case c;
    attn_case_init(&c);
    c.B = B, c.H = c.Hk = H, c.Sq = c.Sk = c.D = c.Dv = n;
    c.layout = layout;
    c.seed = seed;
    c.dropout_p = dp;
    attn_problem* p = attn_problem_new(&c);
    if (!p) {
        CHECK_MSG(0, "setup");
        return;
    }
    p->params.seed = seed;
    p->params.offset = offset;
    int64_t idx[4];
    for (int64_t e = 0; e < p->v.numel; e++) {
        tt_unravel(&p->v, e, idx); /* (b, j, h, d) */
        tt_set(&p->v, idx, idx[1] == idx[3] ? 1.0 : 0.0);
    }
    for (int64_t e = 0; e < p->dout.numel; e++) {
        tt_unravel(&p->dout, e, idx); /* (b, i, h, d) */
        tt_set(&p->dout, idx, idx[1] == idx[3] ? 1.0 : 0.0);
    }
    attn_problem_refresh_inputs(p);
    cflash_context* ctx = NULL;
    cflash_context_create(&ctx);
    cflash_context_set_backend(ctx, backend);
    cflash_status s = attn_problem_run_bwd(ctx, p);
    CHECK_MSG(s == CFLASH_OK, "dropout run: %s", cflash_last_error());
    cflash_attn_params prm = p->params;
    tt_tensor m;
    if (s == CFLASH_OK && !api_mask(&m, &prm, B, H, n, n, TT_DENSE)) {
        int64_t fwd_bad = 0, bwd_bad = 0, dropped = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < n; i++)
                    for (int64_t j = 0; j < n; j++) {
                        int64_t mi[4] = {b, h, i, j}, oi[4] = {b, i, h, j}, vi[4] = {b, j, h, i};
                        int keep = tt_get(&m, mi) != 0;
                        dropped += !keep;
                        fwd_bad += keep != (tt_get(&p->out, oi) != 0);
                        bwd_bad += keep != (tt_get(&p->dv, vi) != 0);
                    }
        CHECK_MSG(fwd_bad == 0,
                  "seed %llu offset %llu p %g: forward mask differs from "
                  "cflash_attn_dropout_mask at %lld of %lld weights",
                  (unsigned long long)seed, (unsigned long long)offset, (double)dp,
                  (long long)fwd_bad, (long long)(B * H * n * n));
        CHECK_MSG(bwd_bad == 0, "seed %llu offset %llu p %g: backward mask differs at %lld weights",
                  (unsigned long long)seed, (unsigned long long)offset, (double)dp,
                  (long long)bwd_bad);
        CHECK_MSG(dropped > 0, "no weight was dropped at p = %g", (double)dp);
        /* And the values themselves against the oracle. */
        char msg[1024];
        CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "%s", msg);
        tt_free(&m);
    }
    cflash_context_free(ctx);
    attn_problem_free(p);
}

/* Same call twice gives bit-identical outputs; results under dropout match the oracle. */
static void test_oracle_and_determinism(void) {
    cflash_context* ctx = NULL;
    cflash_context_create(&ctx);
    cflash_context_set_backend(ctx, backend);
    static const float ps[] = {0.1f, 0.5f, 0.9f};
    int seed = 100;
    for (int dt = 0; dt < 3; dt++)
        for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
            attn_case c;
            attn_case_init(&c);
            c.dtype = dt == 0 ? CF_F32 : dt == 1 ? CF_F16 : CF_BF16;
            c.B = 2, c.H = 4, c.Hk = 2, c.Sq = 33, c.Sk = 70, c.D = 24, c.Dv = 16;
            c.dropout_p = ps[k];
            c.causal = k == 1;
            c.layout = (tt_layout)(k % 3);
            c.seed = (uint64_t)seed++;
            attn_problem* p = attn_problem_new(&c);
            if (!p) continue;
            char msg[1024];
            CHECK_OK(attn_problem_run_bwd(ctx, p));
            CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "%s", msg);
            CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "%s", msg);
            tt_tensor o1, d1;
            tt_alloc_like(&o1, &p->out);
            tt_alloc_like(&d1, &p->dq);
            memcpy(o1.base, p->out.base, p->out.bytes);
            memcpy(d1.base, p->dq.base, p->dq.bytes);
            p->fwd_ran = 0;
            CHECK_OK(attn_problem_run_bwd(ctx, p));
            CHECK_MSG(!memcmp(o1.base, p->out.base, p->out.bytes), "forward not deterministic");
            CHECK_MSG(!memcmp(d1.base, p->dq.base, p->dq.bytes), "backward not deterministic");
            tt_free(&o1), tt_free(&d1);
            attn_problem_free(p);
        }
    cflash_context_free(ctx);
}

/* q_offset / k_offset: the mask of a block is the slice of a larger mask at those positions,
 * for offsets that are not multiples of 4 (the Philox word of a key) and at the 2^32 limit. */
static void test_block_offsets(void) {
    const int64_t B = 2, H = 2, Sq = 13, Sk = 11, big = 40;
    static const int64_t at[][2] = {{0, 0}, {5, 3}, {27, 29}, {1, 2}};
    cflash_attn_params p;
    cflash_attn_params_init(&p);
    p.dropout_p = 0.4f;
    p.seed = 99;
    tt_tensor whole, blk;
    if (api_mask(&whole, &p, B, H, big, big, TT_DENSE)) return;
    for (size_t n = 0; n < sizeof at / sizeof at[0]; n++) {
        p.q_offset = at[n][0], p.k_offset = at[n][1];
        if (api_mask(&blk, &p, B, H, Sq, Sk, TT_PADDED)) break;
        int64_t bad = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < Sq; i++)
                    for (int64_t j = 0; j < Sk; j++) {
                        int64_t x[4] = {b, h, i, j}, y[4] = {b, h, i + at[n][0], j + at[n][1]};
                        bad += tt_get(&blk, x) != tt_get(&whole, y);
                    }
        CHECK_MSG(bad == 0, "mask at (%lld, %lld): %lld elements differ from the whole mask's",
                  (long long)at[n][0], (long long)at[n][1], (long long)bad);
        tt_free(&blk);
    }
    tt_free(&whole);
    /* Positions up to 2^32 - 1: the last row and key of the counter's range. */
    p.q_offset = ((int64_t)1 << 32) - Sq, p.k_offset = ((int64_t)1 << 32) - Sk;
    if (api_mask(&blk, &p, B, H, Sq, Sk, TT_DENSE) == 0) {
        int64_t bad = 0;
        for (int64_t i = 0; i < Sq; i++)
            for (int64_t j = 0; j < Sk; j++) {
                int64_t x[4] = {1, 1, i, j};
                bad += tt_get(&blk, x) != cf_dropout_keep(p.seed, p.offset, p.dropout_p, 1, 1,
                                                          (uint64_t)(i + p.q_offset),
                                                          (uint64_t)(j + p.k_offset));
            }
        CHECK_MSG(bad == 0, "mask at the 2^32 limit: %lld elements differ", (long long)bad);
        tt_free(&blk);
    }
}

int main(int argc, char** argv) {
    if (argc > 1) backend = argv[1];
    double t0 = tt_now();
    test_statistics();
    test_mask_agreement(42, 0, 0.3f, TT_DENSE);
    test_mask_agreement(0xdeadbeefcafef00dull, 12345, 0.5f, TT_PADDED);
    /* An offset whose low 64 bits carry into the high word of the counter. */
    test_mask_agreement(7, UINT64_MAX - 50, 0.2f, TT_PERMUTED);
    test_oracle_and_determinism();
    test_block_offsets();
    printf("dropout (%s): %.1f s\n", backend, tt_now() - t0);
    return tt_summary();
}
