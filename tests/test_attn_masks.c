/* Issue 13's masks at sizes where whole blocks of the tiled kernels are masked: document masking
 * (a block-diagonal boolean mask, the same as block-sparse lists, or as an additive bias of -inf),
 * prefix-LM lists, chunked attention; every CPU backend, forward and backward, against the fp64
 * oracle. The last keys are padding that no row sees, and their K and V rows hold NaN: by
 * DESIGN.md a masked key never affects a row, so those blocks must be skipped (or summed without
 * them), never multiplied by a zero weight. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/attn_grid.h"
#include "common/testutil.h"
#include "cpu/attn_cpu.h"
#include "oracle/attn_oracle.h"

static const char* const backends[] = {"cpu-ref",  "cpu-amx", "cpu-avx512", "cpu-avx2",
                                       "cpu-neon", "cpu-sve", "cpu-generic"};

/* Documents of the sequence (S = 700): [0, 300), [300, 450), [450, 640); keys >= 640 padding. */
#define S 700
#define PAD 640
static int doc_of(int64_t t) {
    return t < 300 ? 0 : t < 450 ? 1 : t < PAD ? 2 : 3;
}

enum { DOC_MASK, DOC_BLOCKS, PREFIX_BLOCKS, PAD_BIAS, CHUNK, NKIND };
static const char* const kind_name[NKIND] = {"document mask", "document block lists",
                                             "prefix-LM block lists", "padding bias",
                                             "causal chunks"};

static int64_t bsz(int kind) {
    return kind == PREFIX_BLOCKS ? 32 : 64;
}

/* Whether the lists of a kind list key block kb for query block qb (blocks of bsz keys). */
static int listed(int kind, int64_t qb, int64_t kb) {
    const int64_t n = bsz(kind), qlast = qb * n + n - 1, k0 = kb * n, k1 = kb * n + n - 1;
    if (k0 >= PAD) return 0;
    if (kind == PREFIX_BLOCKS) /* a prefix of 160 keys seen by all, then causal */
        return k0 < 160 || k0 <= qlast;
    /* document blocks: any key of kb in a document of a row of qb, causal */
    for (int64_t i = qb * n; i <= qlast && i < S; i++)
        for (int64_t j = k0; j <= k1 && j < PAD; j++)
            if (doc_of(i) == doc_of(j) && j <= i) return 1;
    return 0;
}

/* p's block lists: key block kb listed for query block q of (b, h) where is_listed(b, h, q, kb,
 * arg), in descending or ascending order of kb. */
static void set_lists(attn_problem* p, int (*is_listed)(int64_t, int64_t, int64_t, int64_t, int),
                      int arg, int descending) {
    const int64_t K = p->bs_idx.shape[3];
    for (int64_t b = 0; b < p->bs_num.shape[0]; b++)
        for (int64_t h = 0; h < p->bs_num.shape[1]; h++)
            for (int64_t q = 0; q < p->bs_num.shape[2]; q++) {
                int64_t t = 0;
                for (int64_t n = 0; n < K; n++) {
                    const int64_t kb = descending ? K - 1 - n : n;
                    if (is_listed(b, h, q, kb, arg)) {
                        int64_t ix[4] = {b, h, q, t++};
                        tt_set(&p->bs_idx, ix, (double)kb);
                    }
                }
                int64_t in[3] = {b, h, q};
                tt_set(&p->bs_num, in, (double)t);
            }
}
static int kind_listed(int64_t b, int64_t h, int64_t q, int64_t kb, int kind) {
    (void)b, (void)h;
    return listed(kind, q, kb);
}

static void fill(attn_problem* p, int kind) {
    const attn_case* c = &p->c;
    if (p->mask.base) /* document mask: same document and causal; padding never */
        for (int64_t n = 0; n < p->mask.numel; n++) {
            int64_t idx[4];
            tt_unravel(&p->mask, n, idx);
            tt_set(&p->mask, idx, idx[3] < PAD && doc_of(idx[2]) == doc_of(idx[3]));
        }
    if (p->bias.base) /* key padding as -inf bias, random elsewhere */
        for (int64_t n = 0; n < p->bias.numel; n++) {
            int64_t idx[4];
            tt_unravel(&p->bias, n, idx);
            tt_set(&p->bias, idx, idx[3] >= PAD ? -INFINITY : 0.25 * sin((double)n));
        }
    if (p->bs_num.base) set_lists(p, kind_listed, kind, 1); /* (descending: any order is fine) */
    /* NaN in the padding keys' K and V rows. */
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t j = PAD; kind != CHUNK && j < S; j++)
            for (int64_t h = 0; h < c->Hk; h++) {
                for (int64_t d = 0; d < c->D; d++) {
                    int64_t ix[4] = {b, j, h, d};
                    tt_set(&p->k, ix, NAN);
                }
                for (int64_t d = 0; d < c->Dv; d++) {
                    int64_t ix[4] = {b, j, h, d};
                    tt_set(&p->v, ix, NAN);
                }
            }
    attn_problem_refresh_inputs(p);
}

/* The backends checked (CFLASH_TEST_BACKENDS, available here; main fills them) and the dtypes
 * each runs (bit dt set: cpu-amx serves bf16 and fp16 only). Every problem is built and its fp64
 * oracle computed once (the problem keeps it), then each backend's forward and backward is
 * checked against it: the oracle, not the kernels, took most of the time (80 % of a backend's
 * pass), and one oracle per backend made the sanitizer stage run this test for 5 minutes. */
static const char* active[sizeof backends / sizeof backends[0]];
static unsigned active_dtypes[sizeof backends / sizeof backends[0]];
static int nactive;

static int any_runs(cflash_dtype dt) {
    for (int i = 0; i < nactive; i++)
        if (active_dtypes[i] >> dt & 1) return 1;
    return 0;
}

/* p's forward and backward on every active backend running its dtype (2 threads) against the
 * oracle; p freed. */
static void check_problem(attn_problem* p, const char* what) {
    for (int i = 0; i < nactive; i++) {
        if (!(active_dtypes[i] >> p->c.dtype & 1)) continue;
        cflash_context* ctx = NULL;
        CHECK_OK(cflash_context_create(&ctx));
        CHECK_OK(cflash_context_set_backend(ctx, active[i]));
        CHECK_OK(cflash_context_set_threads(ctx, 2));
        char msg[1024];
        CHECK_OK(attn_problem_run_fwd(ctx, p));
        CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "%s %s: %s", active[i], what, msg);
        CHECK_OK(attn_problem_run_bwd(ctx, p));
        CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "%s %s: %s", active[i], what, msg);
        cflash_context_free(ctx);
    }
    attn_problem_free(p);
}

/* Case c with inputs fill sets, checked as check_problem does. */
static void check_filled(const attn_case* c, void (*fill)(attn_problem*), const char* what) {
    attn_problem* p = attn_problem_new(c);
    CHECK(p != NULL);
    if (!p) return;
    fill(p);
    attn_problem_refresh_inputs(p);
    check_problem(p, what);
}

static void run(int kind, cflash_dtype dt) {
    attn_case c;
    attn_case_init(&c);
    /* (B 2: a mask broadcast over the batch differs from one per sequence. B 1 failed dsink on
     * every backend alike at seed 742 until the naive dsink took the given out:
     * naive_dsink_given in tools/oracle/attn_oracle.c) */
    c.B = 2, c.H = 4, c.Hk = 2, c.Sq = S, c.Sk = S, c.D = 40, c.Dv = 24, c.dtype = dt;
    c.seed = 700 + (uint64_t)kind * 10 + (uint64_t)dt + tt_seed_base() * 1000003u;
    c.causal = 1; /* key blocks then start at multiples of the kernels' block size: the padding
                     block is wholly masked (partly masked blocks holding NaN: the NaN semantics
                     work of issue 11) */
    if (kind == DOC_MASK) c.mask = ATTN_BC_B1, c.sinks = 1;
    if (kind == DOC_BLOCKS || kind == PREFIX_BLOCKS) {
        c.blocks = kind == DOC_BLOCKS ? ATTN_BC_11 : ATTN_BC_1H;
        c.block_q = c.block_k = bsz(kind);
        c.causal = kind == PREFIX_BLOCKS ? 0 : 1; /* prefix-LM: the lists carry the causality */
    }
    if (kind == PAD_BIAS) c.bias = ATTN_BC_B1, c.dbias = 1, c.bias_f32 = 1;
    if (kind == CHUNK) c.chunk = 128, c.sinks = 1;
    attn_problem* p = attn_problem_new(&c);
    CHECK(p != NULL);
    if (!p) return;
    fill(p, kind);
    check_problem(p, kind_name[kind]);
}

/* Random 64 x 64 blocks per (batch, head), pct % of them visible: whether block (qb, kb) is. */
static int rand_block(int64_t b, int64_t h, int64_t qb, int64_t kb, int pct) {
    uint64_t x = (uint64_t)(((b * 7 + h) * 64 + qb) * 64 + kb) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29, x *= 0xbf58476d1ce4e5b9ull, x ^= x >> 32;
    return (int)(x % 100) < pct;
}
static int rand_pct;
static void fill_rand_blocks(attn_problem* p) {
    if (p->mask.base)
        for (int64_t n = 0; n < p->mask.numel; n++) {
            int64_t idx[4];
            tt_unravel(&p->mask, n, idx);
            tt_set(&p->mask, idx, rand_block(idx[0], idx[1], idx[2] / 64, idx[3] / 64, rand_pct));
        }
    if (p->bs_num.base) set_lists(p, rand_block, rand_pct, 0);
}

/* Masks that differ per head in a GQA group, random blocks of them visible: the kernels skip a
 * block, or a slice of a tile's rows, by each row's own head's mask (cpu-amx's 512-row tiles where
 * most blocks are open, its smaller ones where most are closed). A boolean mask, then block lists,
 * at 25 % and 75 % of the blocks visible. */
static void run_rand_blocks(cflash_dtype dt) {
    for (int lists = 0; lists < 2; lists++)
        for (int pct = 25; pct <= 75; pct += 50) {
            if (tt_test_level() < 0 && pct != (lists ? 75 : 25)) continue; /* reduced: one each */
            attn_case c;
            attn_case_init(&c);
            c.B = 1, c.H = 4, c.Hk = 2, c.Sq = 600, c.Sk = 520, c.D = c.Dv = 32, c.dtype = dt;
            if (lists)
                c.blocks = ATTN_BC_BH, c.block_q = c.block_k = 64;
            else
                c.mask = ATTN_BC_BH;
            c.seed = 900 + (uint64_t)(lists * 100 + pct) + tt_seed_base() * 1000003u;
            rand_pct = pct;
            char what[96];
            snprintf(what, sizeof what, "random %s per head, %d %% of the blocks",
                     lists ? "block lists" : "block mask", pct);
            check_filled(&c, fill_rand_blocks, what);
        }
}

/* Case c checked in both of dbias_tile's orders: (b, h) by (b, h) with each one's scores and dP
 * kept from pass 1 (the default where they fit CF_ATTN_DBIAS_CACHE_BYTES), and with nothing kept
 * (the bound set to 1 byte): every (b, h)'s pass 1, then all of them computed again key block by
 * key block. fill (NULL: none) sets the problem's inputs first. */
static void check_dbias_orders(const attn_case* c, void (*fill)(attn_problem*), const char* what) {
    for (int kept = 1; kept >= 0; kept--) {
        attn_problem* p = attn_problem_new(c);
        CHECK(p != NULL);
        if (!p) return;
        if (fill) {
            fill(p);
            attn_problem_refresh_inputs(p);
        }
        char name[160];
        snprintf(name, sizeof name, "%s%s", what, kept ? "" : ", nothing kept");
        cf_attn_cpu_set_dbias_cache(kept ? 0 : 1);
        check_problem(p, name);
        cf_attn_cpu_set_dbias_cache(0);
    }
}

/* dbias of a (1, 1, Sq, Sk) bias summed over 24 (b, h) in one call, in both orders (the case
 * fits the cache: the first order runs). */
static void run_dbias_many(cflash_dtype dt) {
    attn_case c;
    attn_case_init(&c);
    c.B = 2, c.H = 12, c.Hk = 4, c.Sq = 128, c.Sk = 700, c.D = c.Dv = 8, c.dtype = dt;
    c.bias = ATTN_BC_11, c.dbias = 1, c.bias_f32 = 1;
    c.seed = 790 + (uint64_t)dt + tt_seed_base() * 1000003u;
    const cf_attn_blocks bl = cf_attn_cpu_blocks();
    const int64_t bq = c.Sq < bl.bwd_q ? c.Sq : bl.bwd_q, nblk = (c.Sk + bl.bwd_k - 1) / bl.bwd_k;
    const int64_t one = (int64_t)sizeof(float) * (2 * nblk * bq * bl.bwd_k + bq * c.Sk) + nblk;
    CHECK_MSG(one <= (int64_t)CF_ATTN_DBIAS_CACHE_BYTES,
              "one (b, h) takes %lld bytes: past the cache, the first order does not run",
              (long long)one);
    check_dbias_orders(&c, NULL, "dbias over 24 (b, h)");
}

/* dbias where a key block holds both keys some row sees and NaN keys no row sees (a -inf bias
 * hides them, from key 150: not a multiple of any block size the kernels use): dbias_tile's
 * pair-by-pair path, which must leave the NaN out. */
static void fill_nan_keys(attn_problem* p) {
    const int64_t pad = 150;
    for (int64_t n = 0; n < p->bias.numel; n++) {
        int64_t idx[4];
        tt_unravel(&p->bias, n, idx);
        tt_set(&p->bias, idx, idx[3] >= pad ? -INFINITY : 0.25 * sin((double)n));
    }
    for (int64_t j = pad; j < p->c.Sk; j++)
        for (int64_t d = 0; d < p->c.D; d++) {
            int64_t ix[4] = {0, j, 0, d};
            tt_set(&p->k, ix, NAN), tt_set(&p->v, ix, NAN);
        }
}

/* dbias where some rows see no key of the first key block (a -inf bias) and every score is near
 * -200 (pass 1's running statistics start late and far from 0 for those rows). */
static void fill_far(attn_problem* p) {
    for (int64_t n = 0; n < p->bias.numel; n++) {
        int64_t idx[4];
        tt_unravel(&p->bias, n, idx);
        tt_set(&p->bias, idx,
               idx[2] < 32 && idx[3] < 130 ? -INFINITY : -200.0 + 0.25 * sin((double)n));
    }
}

static void run_dbias_edges(void) {
    attn_case c;
    attn_case_init(&c);
    c.B = 1, c.H = 2, c.Hk = 1, c.Sq = 64, c.Sk = 200, c.D = c.Dv = 8, c.dtype = CFLASH_DTYPE_F32;
    c.bias = ATTN_BC_11, c.dbias = 1, c.bias_f32 = 1;
    c.seed = 795 + tt_seed_base() * 1000003u;
    check_dbias_orders(&c, fill_nan_keys, "dbias beside NaN keys");
    c.H = 3, c.Sq = 80, c.Sk = 300, c.seed++;
    check_dbias_orders(&c, fill_far, "dbias, scores near -200");
}

/* Rows whose log-sum-exp is far from 0, so that its fp32 rounding is coarser than a softmax weight
 * needs (the backward recomputes P from the forward's lse): rows 1, 6, .. with every key at bf16's
 * finfo.min (transformers' mask of a left-padded row: lse rounds to finfo.min, exp(s - lse) = 1 per
 * key, not 1 / n), rows 2, 7, .. near +1e6 and rows 3, 8, .. near -1e5 (ulp 0.0625 and 0.0078),
 * a -inf key in each; the other rows small. Key Sk - 3 is hidden from every row and its K and V
 * rows are NaN (the blocks holding it are summed pair by pair). */
static void fill_far_rows(attn_problem* p) {
    const double mn = -3.3895313892515355e38; /* bf16's finfo.min, exact in fp32 */
    const int64_t nan_key = p->c.Sk - 3;
    for (int64_t n = 0; n < p->bias.numel; n++) {
        int64_t idx[4];
        tt_unravel(&p->bias, n, idx);
        const int64_t i = idx[2] % 5;
        const double x = 0.5 * sin(0.37 * (double)n);
        double v = i == 1 ? mn : i == 2 ? 1e6 + x : i == 3 ? -1e5 + x : x;
        if ((i > 1 && idx[3] == (idx[2] * 7) % p->c.Sk) || idx[3] == nan_key) v = -INFINITY;
        tt_set(&p->bias, idx, v);
    }
    for (int64_t b = 0; b < p->c.B; b++)
        for (int64_t h = 0; h < p->c.Hk; h++)
            for (int64_t d = 0; d < p->c.D; d++) {
                int64_t ix[4] = {b, nan_key, h, d};
                tt_set(&p->k, ix, NAN), tt_set(&p->v, ix, NAN);
            }
}

/* Far rows whose scores depend on how the GEMM sums: on rows 1, 4, .. of q (0 on the others) and
 * every key, elements 0, 2, .. 14 near 3e4 (the keys' signs alternating by pairs: the products,
 * 9e8, cancel to ~1e8) and 1, 3, .. 15 near 30, each added to a partial sum of ~1e9 (ulp 64) in
 * one order and to its pair first in another (vdpbf16ps pairs, fp32 FMA): scores ~2e7 that two
 * GEMMs round ~10 apart. The backward's r must come from the scores as its passes form them, or
 * P = exp((s - lse) - r) is off by e^10. */
static double far_sums(int is_k, int64_t row, int64_t d, int64_t n, double x) {
    const double e = sin(1.7 * (double)n), big = (is_k && d % 4 == 2 ? -3e4 : 3e4) * (1 + 0.02 * e);
    return d >= 16 ? x : !is_k && row % 3 != 1 ? 0.0 : d % 2 ? 30.0 * (1.0 + 0.3 * e) : big;
}
static void fill_far_sums(attn_problem* p) {
    attn_set_qk(p, far_sums);
}

static void run_far_rows(cflash_dtype dt) {
    attn_case c;
    attn_case_init(&c);
    c.B = 2, c.H = 4, c.Hk = 2, c.Sq = 70, c.Sk = 300, c.D = c.Dv = 24, c.dtype = dt;
    c.bias = ATTN_BC_B1, c.dbias = 1, c.bias_f32 = 1;
    c.seed = 799 + (uint64_t)dt + tt_seed_base() * 1000003u;
    check_dbias_orders(&c, fill_far_rows, "rows of large |lse|, dbias");
    c.bias = ATTN_BC_BH, c.dbias = 0, c.bias_f32 = 0, c.sinks = 1, c.seed++;
    check_filled(&c, fill_far_rows, "rows of large |lse|, bias in the dtype, sinks");
    c.causal = 1, c.softcap = 20.0f, c.sinks = 0, c.seed++;
    check_filled(&c, fill_far_rows, "rows of large |lse|, causal, softcap");
}

/* attn_fill_far_qk on a varlen call whose K / V are pages, with seqused_q / seqused_k, sinks and
 * dropout (far_tile's rows and keys found through cu_seqlens and the block table), then on a
 * batch call with ALiBi and a causal window. */
static void run_far_qk(cflash_dtype dt) {
    attn_case c;
    attn_case_init(&c);
    c.B = 3, c.H = 4, c.Hk = 2, c.D = c.Dv = 24, c.dtype = dt, c.varlen = 1;
    const int32_t lq[3] = {37, 1, 70}, lk[3] = {90, 200, 71};
    for (int b = 0; b < 3; b++)
        c.seqlens_q[b] = lq[b], c.seqlens_k[b] = lk[b];
    c.page = 16, c.seqused = 3, c.sinks = 1, c.dropout_p = 0.1f;
    c.seed = 811 + (uint64_t)dt + tt_seed_base() * 1000003u;
    check_filled(&c, attn_fill_far_qk,
                 "far rows (q.k ~ 2e9), varlen, paged, seqused, sinks, dropout");
    attn_case_init(&c);
    c.B = 2, c.H = 4, c.Hk = 1, c.Sq = 70, c.Sk = 150, c.D = c.Dv = 24, c.dtype = dt;
    c.alibi = ATTN_ALIBI_H, c.causal = 1, c.window_left = 50, c.seed = 813 + (uint64_t)dt;
    check_filled(&c, attn_fill_far_qk, "far rows (q.k ~ 2e9), ALiBi, causal window");
    /* (bf16 only: in fp32 one-hot rows of this q put dk past the rule before any of this, dS =
     * dP - rowsum(dO O) with dP an fp32 GEMM and the rowsum in double, times |q| ~ 3e4) */
    c.alibi = ATTN_ALIBI_NONE, c.window_left = -1, c.D = c.Dv = 32, c.seed++;
    if (dt == CFLASH_DTYPE_BF16)
        check_filled(&c, fill_far_sums, "far rows (q.k ~ 7e9, summed two ways)");
}

/* Copies src into dst where dst's index idx maps to src's idx with dimension kd shifted by off
 * (the keys of a block: dim 1 of k and v, dim 3 of a bias). */
static void copy_shifted(tt_tensor* dst, const tt_tensor* src, int kd, int64_t off) {
    for (int64_t n = 0; n < dst->numel; n++) {
        int64_t idx[4], sx[4];
        tt_unravel(dst, n, idx);
        memcpy(sx, idx, sizeof idx);
        if (kd >= 0) sx[kd] += off;
        tt_set(dst, idx, tt_get(src, sx));
    }
}

/* Ring attention's backward (python/cflash/distributed) calls the backward once per key block with
 * the lse and out of all the keys: P = exp(s - lse) of a block is then not its own softmax. Rows of
 * far |lse| must keep that: rows 1, 5, .. near +1e6 on the first half of the keys and small on the
 * second (the second block's r would be -1e6), rows 2, 6, .. near +1e6 on both halves (r = log 1/2
 * in each), the others small. The two blocks' gradients must add up to the whole call's. (Rows all
 * at finfo.min are not: each block would need the other's count of keys.) */
static void run_far_blocks(const char* backend) {
    attn_case c;
    attn_case_init(&c);
    const int64_t n = 80;
    c.B = 1, c.H = 2, c.Hk = 1, c.Sq = 40, c.Sk = 2 * n, c.D = c.Dv = 16;
    c.bias = ATTN_BC_BH, c.bias_f32 = 1, c.seed = 821 + tt_seed_base() * 1000003u;
    attn_problem* full = attn_problem_new(&c);
    CHECK(full != NULL);
    if (!full) return;
    for (int64_t e = 0; e < full->bias.numel; e++) {
        int64_t idx[4];
        tt_unravel(&full->bias, e, idx);
        const double x = 0.5 * sin(0.61 * (double)e);
        const int64_t i = idx[2] % 4;
        tt_set(&full->bias, idx, (i == 1 && idx[3] < n) || i == 2 ? 1e6 + x : x);
    }
    attn_problem_refresh_inputs(full);
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, backend));
    CHECK_OK(attn_problem_run_bwd(ctx, full));
    double dq[2][40 * 2 * 16] = {{0}}, edk = 0, edv = 0, mk = 0, mv = 0;
    c.Sk = n;
    for (int blk = 0; blk < 2; blk++) {
        attn_problem* p = attn_problem_new(&c);
        CHECK(p != NULL);
        if (!p) break;
        copy_shifted(&p->q, &full->q, -1, 0), copy_shifted(&p->dout, &full->dout, -1, 0);
        copy_shifted(&p->k, &full->k, 1, blk * n), copy_shifted(&p->v, &full->v, 1, blk * n);
        copy_shifted(&p->bias, &full->bias, 3, blk * n);
        attn_problem_refresh_inputs(p);
        copy_shifted(&p->out, &full->out, -1, 0), copy_shifted(&p->lse, &full->lse, -1, 0);
        p->fwd_ran = 1;
        CHECK_OK(attn_problem_run_bwd(ctx, p));
        for (int64_t e = 0; e < p->dq.numel; e++)
            dq[blk][e] = tt_get_flat(&p->dq, e);
        for (int64_t e = 0; e < p->dk.numel; e++) {
            int64_t idx[4];
            tt_unravel(&p->dk, e, idx);
            const double gk = tt_get(&p->dk, idx), gv = tt_get(&p->dv, idx);
            idx[1] += blk * n;
            const double rk = tt_get(&full->dk, idx), rv = tt_get(&full->dv, idx);
            edk = fmax(edk, fabs(gk - rk)), edv = fmax(edv, fabs(gv - rv));
            mk = fmax(mk, fabs(rk)), mv = fmax(mv, fabs(rv));
        }
        attn_problem_free(p);
    }
    double edq = 0, mq = 0;
    for (int64_t e = 0; e < full->dq.numel; e++) {
        const double r = tt_get_flat(&full->dq, e);
        edq = fmax(edq, fabs(dq[0][e] + dq[1][e] - r)), mq = fmax(mq, fabs(r));
    }
    /* (rows 2, 6, ..: each block's P = exp(s - lse) carries lse's rounding, ulp(1e6) / 2 = 0.03,
     * which the whole call takes out: a few percent apart; a block that took its own softmax
     * would be 100 % off) */
    CHECK_MSG(
        edq <= 0.05 * mq && edk <= 0.05 * mk && edv <= 0.05 * mv,
        "%s: two key blocks with the whole call's lse: dq err %.3g (max %.3g), dk %.3g (%.3g), "
        "dv %.3g (%.3g)",
        backend, edq, mq, edk, mk, edv, mv);
    cflash_context_free(ctx);
    attn_problem_free(full);
}

/* A bias in the dtype of q (as PyTorch SDPA passes a float attn_mask), with dbias, where the
 * blocks are larger than the pieces such a bias is converted in (16 rows by 256 keys: key blocks
 * of 300, tiles of 40 rows), some of its values -inf. */
static void run_bias_dtype(cflash_dtype dt) {
    attn_case c;
    attn_case_init(&c);
    c.B = 2, c.H = 2, c.Hk = 1, c.Sq = 90, c.Sk = 700, c.D = c.Dv = 16, c.dtype = dt;
    c.bias = ATTN_BC_1H, c.dbias = 1, c.bias_f32 = 0;
    c.seed = 797 + (uint64_t)dt + tt_seed_base() * 1000003u;
    attn_problem* p = attn_problem_new(&c);
    CHECK(p != NULL);
    if (!p) return;
    for (int64_t n = 0; n < p->bias.numel; n += 7) {
        int64_t idx[4];
        tt_unravel(&p->bias, n, idx);
        tt_set(&p->bias, idx, -INFINITY);
    }
    attn_problem_refresh_inputs(p);
    const cf_attn_blocks big = {40, 300, 40, 300, "test"};
    cf_attn_cpu_set_blocks(&big);
    check_problem(p, "bias in the dtype, blocks 40,300");
    cf_attn_cpu_set_blocks(NULL);
}

/* ---- Block states: what the drivers skip (closed), run without a masking pass (open) ------- */

/* The state of a region by its definition: closed when the mask (zeros) or the bias (-inf) hides
 * every pair, open when neither hides any, else part. */
static int region_brute(const cf_attn_call* c, int64_t b, int64_t h, int64_t i0, int64_t i1,
                        int64_t j0, int64_t j1) {
    int64_t n = 0, hm = 0, hb = 0; /* pairs, hidden by the mask, by the bias */
    for (int64_t i = i0; i < i1; i++)
        for (int64_t j = j0; j < j1; j++, n++) {
            hm +=
                c->mask.data && !((const uint8_t*)c->mask.data)[cf_attn_at4(&c->mask, b, h, i, j)];
            hb += c->bias.data &&
                  ((const float*)c->bias.data)[cf_attn_at4(&c->bias, b, h, i, j)] == -INFINITY;
        }
    return hm == n || hb == n   ? CF_REGION_CLOSED
           : hm == 0 && hb == 0 ? CF_REGION_OPEN
                                : CF_REGION_PART;
}

/* attn_mask (1, H, Sq, Sk) and attn_bias (B, 1, Sq, Sk) fp32 made of 16 x 24 tiles wholly hidden,
 * wholly visible or mixed (so regions of every state occur, at and off the map's 64-key chunks,
 * up to Sk's partial last chunk): cf_attn_cpu_region_open with and without the map against the
 * definition; the block-sparse key masks' state against their entries. */
static void check_region_states(void) {
    enum { B = 2, H = 3, SQ = 77, SK = 203 };
    uint8_t* mask = malloc((size_t)H * SQ * SK);
    float* bias = malloc(sizeof(float) * B * SQ * SK);
    CHECK(mask && bias);
    if (!mask || !bias) return;
    uint64_t r = 12345 + tt_seed_base();
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < SQ; i++)
            for (int64_t j = 0; j < SK; j++) {
                const int64_t t = (h * 7 + i / 16) * 13 + j / 24; /* the tile's kind: t % 3 */
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                mask[(h * SQ + i) * SK + j] = t % 3 == 0 ? 0 : t % 3 == 1 ? 1 : (r >> 40) % 5 != 0;
            }
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < SQ; i++)
            for (int64_t j = 0; j < SK; j++) {
                const int64_t t = (b * 5 + i / 16) * 11 + j / 24 + 1;
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                bias[(b * SQ + i) * SK + j] =
                    t % 4 == 0 || (t % 4 == 1 && (r >> 40) % 3 == 0) ? -INFINITY : 0.5f;
            }
    for (int with = 0; with < 3; with++) { /* mask, bias, both */
        cf_attn_call c;
        memset(&c, 0, sizeof c);
        c.B = B, c.H = H, c.Hk = H, c.Sq = SQ, c.Sk = SK, c.threads = 2;
        const cf_view vm = {mask, CF_F32, 4, {1, H, SQ, SK}, {0, SQ * SK, SK, 1}, 0, 0};
        const cf_view vb = {bias, CF_F32, 4, {B, 1, SQ, SK}, {SQ * SK, 0, SK, 1}, 0, 0};
        if (with != 1) c.mask = vm; /* (its dtype is not read) */
        if (with != 0) c.bias = vb;
        cf_attn_mask_map* map = cf_attn_cpu_mask_map(&c, 2);
        /* a map of the mask, and of the bias (it broadcasts over heads) */
        CHECK(map != NULL);
        if (!map) continue;
        CHECK((map->st != NULL) == (with != 1) && (map->bst != NULL) == (with != 0));
        int seen[3] = {0, 0, 0}, bad = 0;
        for (int n = 0; n < 3000; n++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            const int64_t b = (int64_t)(r >> 33) % B, h = (int64_t)(r >> 40) % H;
            const int64_t i0 = (int64_t)(r >> 20) % SQ, j0 = (int64_t)(r >> 10) % SK;
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            const int64_t i1 = i0 + 1 + (int64_t)(r >> 33) % 20;
            /* key runs: at the map's chunks (64 and 128 wide) half the time */
            const int64_t a = n % 2 ? j0 / 64 * 64 : j0;
            const int64_t z =
                n % 2 ? a + 64 * (1 + (int64_t)(r >> 45) % 2) : a + 1 + (int64_t)((r >> 45) % 90);
            const int64_t e = z < SK ? z : SK, f = i1 < SQ ? i1 : SQ;
            const int want = region_brute(&c, b, h, i0, f, a, e);
            const int got = cf_attn_cpu_region_open(&c, map, b, h, i0, f, a, e);
            const int raw = cf_attn_cpu_region_open(&c, NULL, b, h, i0, f, a, e);
            seen[want]++;
            if (got != want || raw != want) {
                if (bad++ < 5)
                    CHECK_MSG(0,
                              "region (b %lld, h %lld, rows [%lld, %lld), keys [%lld, %lld)): "
                              "state %d with the map, %d without, expected %d (with = %d)",
                              (long long)b, (long long)h, (long long)i0, (long long)f, (long long)a,
                              (long long)e, got, raw, want, with);
            }
        }
        CHECK_MSG(!bad, "%d regions of 3000 in the wrong state (with = %d)", bad, with);
        CHECK_MSG(seen[0] && seen[1] && seen[2], "states seen %d %d %d: the test lacks a kind",
                  seen[0], seen[1], seen[2]);
        cf_attn_cpu_mask_map_free(map);
    }
    /* block-sparse lists (1, 1, nqb): query block q lists key blocks q - 1 and q (blocks of 32) */
    int32_t num[4] = {1, 2, 2, 2}, idx[8] = {0, 0, 0, 1, 1, 2, 2, 3};
    cf_attn_call c;
    memset(&c, 0, sizeof c);
    c.B = 1, c.H = 1, c.Hk = 1, c.Sq = c.Sk = 128, c.block_q = c.block_k = 32;
    const cf_view vn = {num, CF_F32, 3, {1, 1, 4}, {0, 0, 1}, 0, 0};
    const cf_view vi = {idx, CF_F32, 4, {1, 1, 4, 2}, {0, 0, 2, 1}, 0, 0};
    c.bs_num = vn, c.bs_idx = vi;
    uint8_t kv[4 * 128];
    /* query block 2 (keys 32..95): rows of block 2 only, keys 32..95 open; 0..63 part; 96.. closed
     */
    CHECK(cf_attn_cpu_bs_keys(&c, 0, 0, 2, 1, 32, 64, kv) == CF_REGION_OPEN);
    CHECK(cf_attn_cpu_bs_keys(&c, 0, 0, 2, 1, 0, 64, kv) == CF_REGION_PART);
    CHECK(cf_attn_cpu_bs_keys(&c, 0, 0, 2, 1, 96, 32, kv) == CF_REGION_CLOSED);
    CHECK(cf_attn_cpu_bs_keys(&c, 0, 0, 1, 2, 32, 32, kv) == CF_REGION_OPEN); /* listed by 1, 2 */
    CHECK(cf_attn_cpu_bs_keys(&c, 0, 0, 0, 2, 32, 32, kv) == CF_REGION_PART); /* not by 0 */
    free(mask);
    free(bias);
}

int main(void) {
    check_region_states();
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
        if (!tt_backend_selected(backends[i])) continue; /* CFLASH_TEST_BACKENDS */
        /* Reduced grids (CFLASH_TEST_LEVEL=-1: the sanitizer stage), cpu-ref unless named: it has
         * no blocks to skip, and its mask, bias and block-list code runs under the sanitizers in
         * test_attn_ref's grid and test_edge_numerics' masked NaN keys; under ASan it took 51 s of
         * this test's 128 (Zen 3). test-c runs it here. */
        if (tt_test_level() < 0 && !strcmp(backends[i], "cpu-ref") &&
            !tt_backend_named("cpu-ref")) {
            printf("cpu-ref: left out at CFLASH_TEST_LEVEL=-1 (name it in CFLASH_TEST_BACKENDS)\n");
            continue;
        }
        unsigned dts = 0;
        static const cflash_dtype all[] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_BF16, CFLASH_DTYPE_F16};
        for (size_t d = 0; d < sizeof all / sizeof all[0]; d++)
            if (attn_backend_runs_dtype(backends[i], (cf_dtype)all[d])) dts |= 1u << all[d];
        if (!dts) {
            printf("%s: not available here\n", backends[i]);
            continue;
        }
        active[nactive] = backends[i], active_dtypes[nactive++] = dts;
        printf("%s: checked\n", backends[i]);
    }
    double t0 = tt_now();
    const int f32 = any_runs(CFLASH_DTYPE_F32);
    for (int kind = 0; kind < NKIND; kind++) {
        if (f32) run(kind, CFLASH_DTYPE_F32);
        run(kind, CFLASH_DTYPE_BF16);
    }
    if (f32) {
        cf_attn_cpu_set_dbias_cache(1); /* the padding bias's dbias with nothing kept */
        run(PAD_BIAS, CFLASH_DTYPE_F32);
        cf_attn_cpu_set_dbias_cache(0);
        run_dbias_many(CFLASH_DTYPE_F32);
    }
    run_bias_dtype(CFLASH_DTYPE_BF16);
    run_bias_dtype(CFLASH_DTYPE_F16);
    if (f32) run_rand_blocks(CFLASH_DTYPE_F32);
    run_rand_blocks(CFLASH_DTYPE_BF16);
    if (f32) run_dbias_edges();
    if (f32) run_far_rows(CFLASH_DTYPE_F32);
    run_far_rows(CFLASH_DTYPE_BF16);
    if (f32) run_far_qk(CFLASH_DTYPE_F32);
    for (int i = 0; i < nactive; i++)
        if (active_dtypes[i] >> CFLASH_DTYPE_F32 & 1) run_far_blocks(active[i]);
    run_far_qk(CFLASH_DTYPE_BF16);
    printf("every backend: %.1f s\n", tt_now() - t0);
    return tt_summary();
}
