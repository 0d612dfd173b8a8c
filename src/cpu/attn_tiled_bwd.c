/* The tiled attention backward shared by every fast CPU backend: recomputes P from q, k and the
 * forward's LSE, in three passes that need no atomics and are deterministic:
 *   0. dl = rowsum(dO * O) per query row (the only buffer that grows with Sq, as large as lse);
 *   1. per (sequence, KV head, key block): dV += P^T dO and dK += dS^T Q over the group's heads;
 *   2. per query tile (rows of the group's heads): dQ += dS K over the visible key blocks.
 * Arithmetic is fp32 for every dtype (fp16/bf16 blocks are converted as they are read). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/checked.h"
#include "core/philox.h"
#include "core/status.h"
#include "core/threads.h"
#include "cpu/attn_cpu.h"
#include "cpu/ref/attn_ref.h"

static inline char* row_ptr(const cf_view* v, int64_t b, int64_t s, int64_t h) {
    return (char*)v->data + (b * v->stride[0] + s * v->stride[1] + h * v->stride[2]) *
                                (int64_t)cf_dtype_size(v->dtype);
}

static size_t align64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

/* n rows of d elements (dtype dt, first row p, row stride rs elements) as fp32: in place for
 * fp32 (ld = rs) unless copy is set (a GEMM's B operand with CF_ATTN_PACK_ROWS rows of A or more),
 * else converted or copied into buf (ld = d). */
static const float* rows_f32_at(const cf_attn_kernels* kk, const char* p, int64_t rs, cf_dtype dt,
                                int64_t n, int64_t d, float* buf, int64_t* ld, int copy) {
    if (dt == CF_F32 && !copy) {
        *ld = rs;
        return (const float*)p;
    }
    const int64_t es = (int64_t)cf_dtype_size(dt) * rs;
    for (int64_t i = 0; i < n; i++)
        kk->to_f32(buf + i * d, p + i * es, dt, d);
    *ld = d;
    return buf;
}

/* Rows [s0, s0 + n) of view v (batch b, head h) as fp32 (see rows_f32_at). */
static const float* rows_f32(const cf_attn_kernels* kk, const cf_view* v, int64_t b, int64_t s0,
                             int64_t h, int64_t n, int64_t d, float* buf, int64_t* ld, int copy) {
    return rows_f32_at(kk, row_ptr(v, b, s0, h), v->stride[1], v->dtype, n, d, buf, ld, copy);
}

/* dst[c * n + r] = src[r * lds + c] for r < n, c < d. */
static void transpose(float* dst, const float* src, int64_t lds, int64_t n, int64_t d) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < d; c++)
            dst[c * n + r] = src[r * lds + c];
}

/* n bf16 rows (first row p, row stride rs elements) as 32-bit pairs along d: in place when every
 * row starts 4-byte aligned and d is even, else copied into buf (ld = (d + 1) / 2, zero-padded). */
static const uint32_t* rows_pairs_at(const uint16_t* p, int64_t rs, int64_t n, int64_t d,
                                     uint32_t* buf, int64_t* ld) {
    if (d % 2 == 0 && (uintptr_t)p % 4 == 0 && rs % 2 == 0) {
        *ld = rs / 2;
        return (const uint32_t*)p;
    }
    const int64_t d2 = (d + 1) / 2;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t* r = p + i * rs;
        for (int64_t q = 0; q < d2; q++)
            buf[i * d2 + q] = (uint32_t)r[2 * q] | (uint32_t)(2 * q + 1 < d ? r[2 * q + 1] : 0)
                                                       << 16;
    }
    *ld = d2;
    return buf;
}

/* Rows [s0, s0 + n) of bf16 view v (batch b, head h) as pairs (see rows_pairs_at). */
static const uint32_t* rows_pairs(const cf_view* v, int64_t b, int64_t s0, int64_t h, int64_t n,
                                  int64_t d, uint32_t* buf, int64_t* ld) {
    return rows_pairs_at((const uint16_t*)row_ptr(v, b, s0, h), v->stride[1], n, d, buf, ld);
}

/* dst[q * ldd + col] = pair (element 2q, 2q + 1) of bf16 row src (d elements): the transposed
 * pair layout of one row, written as column col. */
static void pairs_col(uint32_t* dst, int64_t ldd, int64_t col, const uint16_t* src, int64_t d) {
    for (int64_t q = 0; q < (d + 1) / 2; q++)
        dst[q * ldd + col] = (uint32_t)src[2 * q] | (uint32_t)(2 * q + 1 < d ? src[2 * q + 1] : 0)
                                                        << 16;
}

/* VNNI pairs of n bf16 rows (d elements each, row stride rs elements): dst [(n + 1) / 2][d]. */
static void rows_vnni(const cf_attn_kernels* kk, uint32_t* dst, const uint16_t* src, int64_t rs,
                      int64_t n, int64_t d) {
    for (int64_t q = 0; q < (n + 1) / 2; q++)
        kk->interleave_u16(dst + q * d, src + 2 * q * rs,
                           2 * q + 1 < n ? src + (2 * q + 1) * rs : NULL, d);
}

/* Pairs of consecutive rows of an fp32 (n x w, ld) block rounded to bf16: dst [(n + 1) / 2][w]. */
static void f32_rows_pairs(const cf_attn_kernels* kk, uint32_t* dst, const float* src, int64_t ld,
                           int64_t n, int64_t w) {
    for (int64_t q = 0; q < (n + 1) / 2; q++)
        kk->pack_pairs_f32(dst + q * w, src + 2 * q * ld,
                           2 * q + 1 < n ? src + (2 * q + 1) * ld : NULL, w);
}

void cf_attn_rows_seeing(const cf_attn_call* c, int64_t sq, int64_t sk, int64_t j0, int64_t j1,
                         int64_t* a, int64_t* z) {
    int64_t l = 0, h = sq;
    while (l < h) {
        int64_t mid = (l + h) / 2, lo, hi;
        cf_attn_key_range(c, mid, sq, sk, &lo, &hi);
        if (hi > j0)
            h = mid;
        else
            l = mid + 1;
    }
    *a = l;
    l = *a, h = sq;
    while (l < h) {
        int64_t mid = (l + h) / 2, lo, hi;
        cf_attn_key_range(c, mid, sq, sk, &lo, &hi);
        if (lo < j1)
            l = mid + 1;
        else
            h = mid;
    }
    *z = l;
}

/* Columns [from, to) of a row of scores (column stride cs) masked: -inf, and 0 in y. */
static void mask_cols(float* s, float* y, int64_t from, int64_t to, int64_t cs) {
    for (int64_t ci = from; ci < to; ci++) {
        s[ci * cs] = -INFINITY;
        if (y) y[ci * cs] = 0.0f;
    }
}

/* x[0..n) (contiguous) scaled, and soft-capped with the tanh in y where the call has a softcap. */
static void scale_cap(const cf_attn_call* c, const cf_attn_kernels* kk, float* x, int64_t n,
                      float* y) {
    if (c->softcap > 0.0f)
        kk->softcap_cols(x, n, c->scale, c->softcap, y);
    else
        for (int64_t i = 0; i < n; i++)
            x[i] *= c->scale;
}

/* Applies masks and the score transform to S rows in place: natural-log scores (scaled,
 * soft-capped, ALiBi-biased, plus issue 13's bias), -inf where masked. scale * (q.k) is rounded and
 * stored here exactly as the forward's scale_max_cols rounds it, so exp(s - lse) <= 1 for every
 * score however large (see exp_cols in attn_cpu.h). open: the block's state under issue 13's
 * masks (CF_REGION_OPEN: they hide nothing there, no masking pass). */
static void scores(const cf_attn_call* c, const cf_attn_kernels* kk, const cf_attn_score_map* mp,
                   float* s, float* y, int64_t sq, int64_t sk, int open) {
    const int xtra = cf_attn_has_extra(c), alibi = c->alibi != NULL;
    /* scaled and soft-capped along the contiguous direction (as the forward rounds them) */
    if (mp->cs == 1)
        for (int64_t ri = 0; ri < mp->nr; ri++)
            scale_cap(c, kk, s + ri * mp->rs, mp->nc, y ? y + ri * mp->rs : NULL);
    else if (mp->rs == 1)
        for (int64_t ci = 0; ci < mp->nc; ci++)
            scale_cap(c, kk, s + ci * mp->cs, mp->nr, y ? y + ci * mp->cs : NULL);
    else
        for (int64_t ri = 0; ri < mp->nr; ri++)
            for (int64_t ci = 0; ci < mp->nc; ci++) {
                const int64_t at = ri * mp->rs + ci * mp->cs;
                scale_cap(c, kk, s + at, 1, y ? y + at : NULL);
            }
    /* then the masks and ALiBi, unless every row sees every key of the block and no ALiBi */
    int full = !alibi; /* lo and hi are non-decreasing over the rows */
    for (int64_t ri = 0; ri < mp->nr && full; ri++)
        full = mp->lo[ri] <= mp->j0 && mp->hi[ri] >= mp->j0 + mp->nc;
    for (int64_t ri = 0; ri < mp->nr && !full; ri++) {
        /* row ri sees columns [c0, c1) (lo, hi and j0 are in [0, sk]): masked outside,
         * ALiBi inside (cf_attn_alibi, the diagonal's distance d0 - ci) */
        const int64_t nc = mp->nc, cs = mp->cs;
        int64_t c0 = mp->lo[ri] - mp->j0, c1 = mp->hi[ri] - mp->j0;
        c0 = c0 < 0 ? 0 : c0 > nc ? nc : c0;
        c1 = c1 < c0 ? c0 : c1 > nc ? nc : c1;
        const int64_t d0 = cf_attn_diag(c, mp->i[ri], sq, sk) - mp->j0;
        const float slope = mp->slope[ri];
        float *sr = s + ri * mp->rs, *yr = y ? y + ri * mp->rs : NULL;
        mask_cols(sr, yr, 0, c0, cs);
        mask_cols(sr, yr, c1, nc, cs);
        if (slope != 0.0f) cf_attn_alibi_run(sr + c0 * cs, cs, c1 - c0, slope, d0 - c0, -1);
    }
    if (xtra && (open != CF_REGION_OPEN || c->bias.data))
        cf_attn_cpu_extras(c, kk, mp->b, s, mp->nr, mp->nc, mp->rs, mp->cs, mp->i, mp->h, mp->kv,
                           mp->j0, open != CF_REGION_OPEN, mp->pdi, mp->pdj);
    /* rows of far |lse|: s - lse, exact where the two are within a factor 2 of each other (the
     * caller's exp then subtracts r, cf_attn_lse_sub) */
    for (int64_t ri = 0; mp->shift && ri < mp->nr; ri++)
        for (int64_t ci = 0; mp->shift[ri] != 0.0f && ci < mp->nc; ci++)
            s[ri * mp->rs + ci * mp->cs] -= mp->shift[ri];
}

void cf_attn_scores(const cf_attn_call* c, const cf_attn_kernels* kk, const cf_attn_score_map* mp,
                    float* s, float* y, int64_t sq, int64_t sk, int open) {
    scores(c, kk, mp, s, y, sq, sk, open);
}

int cf_attn_bwd_query_rows_bad(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi0, int64_t n,
                               const float* dlr) {
    int bad = 0;
    for (int64_t r = 0; r < n; r++)
        bad |= !(cf_attn_lse_at(c, b, h, qi0 + r) < INFINITY) | (dlr[r] - dlr[r] != 0.0f);
    return bad;
}

/* Whether key rows [a, z) of the block (keys j0 + a ..) of view v hold a NaN or infinity: one
 * row at a time (pages need not be equally spaced). */
static int key_rows_nonfinite(const cf_attn_call* c, const cf_view* v, int64_t b, int64_t k0,
                              int64_t j0, int64_t a, int64_t z, int64_t hk, int64_t d) {
    int bad = 0;
    for (int64_t t = a; t < z && !bad; t++)
        bad = cf_attn_cpu_rows_nonfinite(cf_attn_cpu_key_ptr(c, v, b, k0, j0 + t, hk), 0, 1, d,
                                         c->dtype);
    return bad;
}

int cf_attn_bwd_key_rows_bad(const cf_attn_call* c, int64_t b, int64_t hk, int64_t k0, int64_t j0,
                             int64_t n, int hidden, int64_t lo_last, int64_t hi_first) {
    /* hidden: [0, a) is hidden from the last rows, [z, n) from the first (see
     * cf_attn_cpu_hidden_nonfinite) */
    const int64_t a = !hidden ? n : lo_last < n ? lo_last : n;
    const int64_t z = !hidden ? n : hi_first > 0 ? hi_first : 0;
    const cf_view* kv[2] = {&c->k, &c->v};
    const int64_t dim[2] = {c->D, c->Dv};
    int bad = 0;
    for (int t = 0; t < 2 && !bad; t++)
        bad = key_rows_nonfinite(c, kv[t], b, k0, j0, 0, a, hk, dim[t]) ||
              key_rows_nonfinite(c, kv[t], b, k0, j0, z, n, hk, dim[t]);
    return bad;
}

void cf_attn_bwd_exact_pairs(const cf_attn_call* c, int64_t b, int64_t h, int64_t i0, int64_t nq,
                             const float* dlr, int64_t j0, int64_t nb, float* dk, int64_t ldk,
                             float* dv, int64_t ldv, float* dq, int64_t ldq) {
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    const int64_t hk = h / (c->H / c->Hk), D = c->D;
    for (int64_t i = i0; i < i0 + nq; i++) {
        const float lse = cf_attn_lse_at(c, b, h, q0 + i), fix = cf_attn_lse_fix(c, b, h, q0 + i);
        int64_t lo, hi;
        cf_attn_key_range(c, i, sq, sk, &lo, &hi);
        if (lse == -INFINITY) continue; /* a row that saw no key has no gradient */
        for (int64_t j = lo > j0 ? lo : j0; j < hi && j < j0 + nb; j++) {
            float ds_s, ds; /* ds_s: dbias has its own pass (dbias_tile) */
            if (!ref_pair_grad(c, b, h, q0 + i, k0, i, j, sq, sk, lse, fix, dlr[i - i0],
                               dv ? dv + (j - j0) * ldv : NULL, &ds_s, &ds))
                continue; /* hidden by issue 13's masks */
            const int64_t ko = cf_attn_kv_off(c, &c->k, b, k0, j, hk);
            for (int64_t d = 0; d < D; d++) {
                if (dq) dq[(i - i0) * ldq + d] += ds * cf_load(c->k.data, c->dtype, ko + d);
                if (dk)
                    dk[(j - j0) * ldk + d] +=
                        ds * cf_load(c->q.data, c->dtype, ref_at4(&c->q, b, q0 + i, h, d));
            }
        }
    }
}

/* ---- Workspace ------------------------------------------------------------------------------ */

typedef struct bwd_geom {
    int64_t G, n, M, D, Dv, W, Dp2, Dvp2;
    int64_t bq, bk; /* query rows and keys per block */
    int bf;         /* bf16 pairs mode: the seven products on gemm_bf16 */
    /* fp16 calls: dbias_block's products on fp16 pairs by the GEMM cf_attn_cpu_dbias_tasks was
     * given (its tasks only: far_tile's scores must round as dq_tile's), Q^T and dO^T prepared
     * as its B at dbpq and dbpd, its scratch at dbscr; NULL: fp32 */
    const cf_attn_pairs_gemm* dbf16;
    /* bf16 mode buffers (uint32 pairs) */
    size_t ktv, vtv, dov, qv, pp, dsp, qa, doa, qv2, dov2, kvv, dsp2, ka, va, dsr, dbqv;
    /* pass 1 */
    size_t kc, kt, vc, vt, dk, dv, qc, doc, s, dp, pd, y, vec1, map1;
    /* pass 2 */
    size_t qt, dot, dq, st, dpt, y2, kc2, vc2, vec2, map2;
    size_t tmp, bytes;
    size_t xkv, xkvp, dbacc;     /* issue 13 */
    size_t dbqt, dbdot, dbvec;   /* issue 13: dbias */
    size_t gk, gv;               /* paged only */
    size_t dbscr, dbpq, dbpd;    /* dbf16's scratch, its Q^T and dO^T */
    const cf_attn_mask_map* map; /* issue 13: attn_mask / attn_bias summarised (may be NULL) */
    /* dbias calls: whether key block jb of (b, hk) holds a NaN or an infinity, at
     * kbad[(b * Hk + hk) * kbn + jb]: 0 not known yet, 1 no, 2 yes (NULL: checked every time) */
    signed char* kbad;
    int64_t kbn;
} bwd_geom;

static void bwd_layout(const cf_attn_call* c, const cf_attn_kernels* kk,
                       const cf_attn_pairs_gemm* gemm_f16, bwd_geom* g) {
    memset(g, 0, sizeof *g); /* the bf16 offsets stay 0 when unused */
    const cf_attn_blocks bl = cf_attn_cpu_blocks();
    g->bq = bl.bwd_q;
    g->bk = bl.bwd_k;
    g->G = c->H / c->Hk;
    g->n = g->bq / g->G > 0 ? g->bq / g->G : 1;
    g->M = g->G * g->n;
    g->D = c->D;
    g->Dv = c->Dv;
    g->W = g->D > g->Dv ? g->D : g->Dv;
    const size_t F = sizeof(float), D = (size_t)g->D, Dv = (size_t)g->Dv, M = (size_t)g->M;
    const size_t BQ = (size_t)g->bq, BKB = (size_t)g->bk;
    size_t off = 0;
#define TAKE(field, bytes_)                                                                        \
    g->field = off;                                                                                \
    off += align64(bytes_)
    TAKE(kc, F * BKB * D);
    TAKE(kt, F * BKB * D);
    TAKE(vc, F * BKB * Dv);
    TAKE(vt, F * BKB * Dv);
    TAKE(dk, F * BKB * D);
    TAKE(dv, F * BKB * Dv);
    TAKE(qc, F * BQ * D);
    TAKE(doc, F * BQ * Dv);
    TAKE(s, F * BQ * BKB);
    TAKE(dp, F * BQ * BKB);
    TAKE(pd, F * BQ * BKB);
    TAKE(y, F * BQ * BKB);
    TAKE(vec1, F * 3 * BQ);
    TAKE(map1, sizeof(int64_t) * 4 * BQ + F * BQ);
    TAKE(qt, F * D * M);
    TAKE(dot, F * Dv * M);
    TAKE(dq, F * M * D);
    TAKE(st, F * BKB * M);
    TAKE(dpt, F * BKB * M);
    TAKE(y2, F * BKB * M);
    TAKE(kc2, F * BKB * D);
    TAKE(vc2, F * BKB * Dv);
    TAKE(vec2, F * 3 * M);
    TAKE(map2, sizeof(int64_t) * 4 * M + F * M);
    TAKE(tmp, F * (size_t)g->W + 64);
    if (cf_attn_has_extra(c)) { /* issue 13: key masks and their row pointers (pass 1 and 2) */
        const size_t rows = M > BQ ? M : BQ, kb = (size_t)(g->G * (g->n + 1));
        TAKE(xkv, (kb > BQ ? kb : BQ) * BKB);
        TAKE(xkvp, sizeof(uint8_t*) * rows);
    }
    /* dbias (issue 13) and far_tile: a block's rows' Q^T (and for dbias dO^T) and vectors */
    TAKE(dbqt, F * BQ * D);
    /* + dbias_stats's two sums, then one (b, h)'s statistics */
    TAKE(dbvec, F * 4 * BQ + sizeof(double) * 2 * BQ + F * 3 * BQ);
    if (c->dbias.data) { /* issue 13: one dbias block */
        TAKE(dbacc, F * BQ * BKB);
        TAKE(dbdot, F * BQ * Dv);
    }
    if (c->block_table) { /* paged: a key block's K / V rows gathered across pages */
        TAKE(gk, cf_dtype_size(c->dtype) * BKB * D);
        TAKE(gv, cf_dtype_size(c->dtype) * BKB * Dv);
    }
    g->bf = c->dtype == CF_BF16 && kk->gemm_bf16 != NULL;
    g->dbf16 = c->dtype == CF_F16 && c->dbias.data ? gemm_f16 : NULL;
    g->Dp2 = (g->D + 1) / 2;
    g->Dvp2 = (g->Dv + 1) / 2;
    if (g->bf) {
        const size_t U = sizeof(uint32_t), Dp2 = (size_t)g->Dp2, Dvp2 = (size_t)g->Dvp2;
        const size_t hq = (BQ + 1) / 2, hk = (BKB + 1) / 2;
        TAKE(ktv, U * Dp2 * BKB);
        TAKE(vtv, U * Dvp2 * BKB);
        TAKE(dov, U * hq * Dv);
        TAKE(qv, U * hq * D);
        TAKE(pp, U * hq * BKB);
        TAKE(dsp, U * hq * BKB);
        TAKE(qa, U * BQ * Dp2);
        TAKE(doa, U * BQ * Dvp2);
        TAKE(qv2, U * Dp2 * M);
        TAKE(dov2, U * Dvp2 * M);
        TAKE(kvv, U * hk * D);
        TAKE(dsp2, U * hk * M);
        TAKE(ka, U * BKB * Dp2);
        TAKE(dbqv, U * Dp2 * BQ); /* dbias_block's Q^T pairs */
        TAKE(va, U * BKB * Dvp2);
        TAKE(dsr, U * BQ * hk);
    }
    if (g->dbf16) { /* fp16 pairs for dbias_block alone */
        const size_t U = sizeof(uint32_t), Dp2 = (size_t)g->Dp2, Dvp2 = (size_t)g->Dvp2;
        TAKE(ka, U * BKB * Dp2);
        TAKE(dbqv, U * Dp2 * BQ);
        TAKE(va, U * BKB * Dvp2);
        TAKE(dbscr, g->dbf16->scratch_bytes(g->bk, g->bq, g->Dp2 > g->Dvp2 ? g->Dp2 : g->Dvp2));
        TAKE(dbpq, g->dbf16->b_bytes(g->bq, g->Dp2));
        TAKE(dbpd, g->dbf16->b_bytes(g->bq, g->Dvp2));
    }
#undef TAKE
    g->bytes = off;
}

size_t cf_attn_cpu_bwd_workspace(const cf_attn_call* c, const cf_attn_kernels* k) {
    bwd_geom g;
    bwd_layout(c, k, NULL, &g);
    return g.bytes;
}

void cf_attn_dropout_apply(const cf_attn_call* c, float* x, const cf_attn_score_map* mp,
                           const int64_t* hh, int64_t b, float ks) {
    const uint64_t thr = cf_dropout_threshold(c->dropout_p);
    for (int64_t ri = 0; ri < mp->nr; ri++) {
        cf_philox_out w = {{0, 0, 0, 0}};
        for (int64_t ci = 0; ci < mp->nc; ci++) {
            const int64_t j = mp->j0 + ci + c->k_offset, at = ri * mp->rs + ci * mp->cs;
            if (ci == 0 || (j & 3) == 0)
                w = cf_dropout_words(c->seed, c->offset, (uint64_t)b, (uint64_t)hh[ri],
                                     (uint64_t)(mp->i[ri] + c->q_offset), (uint64_t)j);
            x[at] = (uint64_t)w.x[j & 3] < thr ? x[at] * ks : 0.0f;
        }
    }
}

/* ---- Pass 1: dK, dV of one key block ----------------------------------------------------------
 */

/* dqacc (fp32 [G][sq][D], NULL in the three-pass mode): also accumulate dQ += dS K there. */
static void dkdv_tile(const cf_attn_call* c, const cf_attn_kernels* kk, const bwd_geom* g,
                      const attn_tile* t, char* ws, const float* dl, float* dqacc) {
    const int64_t b = t->b, hk = t->hk, j0 = t->i0, nb = t->i1 - t->i0, D = g->D, Dv = g->Dv;
    const int64_t BQ = g->bq;
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    float *kc = (float*)(ws + g->kc), *kt = (float*)(ws + g->kt), *vc = (float*)(ws + g->vc),
          *vt = (float*)(ws + g->vt), *dk = (float*)(ws + g->dk), *dv = (float*)(ws + g->dv),
          *qc = (float*)(ws + g->qc), *doc = (float*)(ws + g->doc), *s = (float*)(ws + g->s),
          *dp = (float*)(ws + g->dp), *pd = (float*)(ws + g->pd), *y = (float*)(ws + g->y),
          *lb = (float*)(ws + g->vec1), *dlr = lb + BQ, *sh = dlr + BQ;
    int64_t *mi = (int64_t*)(ws + g->map1), *mlo = mi + BQ, *mhi = mlo + BQ, *hh = mhi + BQ;
    float* mslope = (float*)(hh + BQ);
    const float ks = 1.0f / (1.0f - c->dropout_p);
    const int bf = g->bf;
    uint32_t *ktv = (uint32_t*)(ws + g->ktv), *vtv = (uint32_t*)(ws + g->vtv),
             *dov = (uint32_t*)(ws + g->dov), *qv = (uint32_t*)(ws + g->qv),
             *pp = (uint32_t*)(ws + g->pp), *dsp = (uint32_t*)(ws + g->dsp),
             *qa = (uint32_t*)(ws + g->qa), *doa = (uint32_t*)(ws + g->doa);
    const float* kr = NULL;
    int64_t ldk = 0;
    uint32_t *kvv = (uint32_t*)(ws + g->kvv), *dsr = (uint32_t*)(ws + g->dsr);
    const int64_t nb2 = (nb + 1) / 2;
    const int xtra = cf_attn_has_extra(c);
    uint8_t* xkv = (uint8_t*)(ws + g->xkv);
    const uint8_t** xkvp = (const uint8_t**)(ws + g->xkvp);
    int64_t krs, vrs; /* row strides: the view's, or D / Dv for rows gathered from pages */
    const char* kb = cf_attn_cpu_key_rows(c, &c->k, b, k0, j0, nb, hk, D, ws + g->gk, &krs);
    const char* vb = cf_attn_cpu_key_rows(c, &c->v, b, k0, j0, nb, hk, Dv, ws + g->gv, &vrs);
    const int64_t es = (int64_t)cf_dtype_size(c->dtype);
    if (bf && dqacc) /* K as row pairs for dQ += dS K */
        rows_vnni(kk, kvv, (const uint16_t*)kb, krs, nb, D);
    if (bf) { /* K^T, V^T as pairs along d, once per key block */
        for (int64_t j = 0; j < nb; j++) {
            pairs_col(ktv, nb, j, (const uint16_t*)(kb + j * krs * es), D);
            pairs_col(vtv, nb, j, (const uint16_t*)(vb + j * vrs * es), Dv);
        }
    } else {
        /* (K: dQ's B, with up to BQ rows of dS; V: transposed only) */
        const int64_t rq = sq < BQ ? sq : BQ;
        kr = rows_f32_at(kk, kb, krs, c->dtype, nb, D, kc, &ldk, dqacc && rq >= CF_ATTN_PACK_ROWS);
        int64_t ldv;
        const float* vr = rows_f32_at(kk, vb, vrs, c->dtype, nb, Dv, vc, &ldv, 0);
        transpose(kt, kr, ldk, nb, D);
        transpose(vt, vr, ldv, nb, Dv);
    }
    memset(dk, 0, sizeof(float) * (size_t)(nb * D));
    memset(dv, 0, sizeof(float) * (size_t)(nb * Dv));
    int64_t ia, iz;
    cf_attn_rows_seeing(c, sq, sk, j0, j0 + nb, &ia, &iz);
    int kbad = -1; /* K/V rows of the block hold a NaN or infinity (checked when first needed) */
    for (int64_t gi = 0; gi < g->G; gi++) {
        const int64_t h = hk * g->G + gi;
        const float slope = cf_attn_slope(c, b, h);
        for (int64_t i0 = ia; i0 < iz; i0 += BQ) {
            const int64_t bq = iz - i0 < BQ ? iz - i0 : BQ;
            const int open =
                xtra ? cf_attn_cpu_tile_region(c, g->map, b, h, 1, i0, bq, j0, nb, xkv, xkvp)
                     : CF_REGION_OPEN;
            if (open == CF_REGION_CLOSED) continue; /* all hidden */
            int64_t ldq = 0, ldo = 0, ldqa = 0, ldoa = 0;
            const float *qr = NULL, *dor = NULL;
            const uint32_t *qpa = NULL, *dopa = NULL;
            if (bf) {
                qpa = rows_pairs(&c->q, b, q0 + i0, h, bq, D, qa, &ldqa);
                dopa = rows_pairs(&c->dout, b, q0 + i0, h, bq, Dv, doa, &ldoa);
            } else {
                /* (Q, dO: the B of dK, dV, with nb rows of dS^T, P^T) */
                const int copy = nb >= CF_ATTN_PACK_ROWS;
                qr = rows_f32(kk, &c->q, b, q0 + i0, h, bq, D, qc, &ldq, copy);
                dor = rows_f32(kk, &c->dout, b, q0 + i0, h, bq, Dv, doc, &ldo, copy);
            }
            for (int64_t r = 0; r < bq; r++) {
                mi[r] = i0 + r;
                mslope[r] = slope;
                hh[r] = h;
                cf_attn_key_range(c, i0 + r, sq, sk, &mlo[r], &mhi[r]);
                lb[r] = cf_attn_lse_sub(c, b, h, q0 + i0 + r);
                sh[r] = cf_attn_lse_shift(c, b, h, q0 + i0 + r);
                dlr[r] = cf_attn_dl(c, dl, b, h, q0 + i0 + r);
            }
            /* A partly masked block holding a NaN or infinity: pair by pair (see
             * cf_attn_bwd_exact_pairs); issue 13's masks may hide any pair. */
            if (open != CF_REGION_OPEN || mlo[bq - 1] > j0 || mhi[0] < j0 + nb) {
                if (kbad < 0) kbad = cf_attn_bwd_key_rows_bad(c, b, hk, k0, j0, nb, 0, 0, 0);
                if (kbad || cf_attn_bwd_query_rows_bad(c, b, h, q0 + i0, bq, dlr)) {
                    cf_attn_bwd_exact_pairs(c, b, h, i0, bq, dlr, j0, nb, dk, D, dv, Dv,
                                            dqacc ? dqacc + (gi * sq + i0) * D : NULL, D);
                    continue;
                }
            }
            cf_attn_score_map mp = {bq, nb,  nb,
                                    1,  mi,  mslope,
                                    j0, mlo, mhi,
                                    b,  hh,  c->bs_num.data ? xkvp : NULL,
                                    BQ, 0,   c->lse_fix ? sh : NULL};
            /* P = exp(S - lse) */
            if (bf)
                kk->gemm_bf16(bq, nb, g->Dp2, qpa, ldqa, 1, ktv, nb, s, nb, 0);
            else
                kk->gemm_f32(bq, nb, D, qr, ldq, 1, kt, nb, s, nb, 0);
            scores(c, kk, &mp, s, c->softcap > 0.0f ? y : NULL, sq, sk, open);
            for (int64_t r = 0; r < bq; r++)
                kk->exp_row(s + r * nb, nb, lb[r]);
            const float* pw = s;
            if (c->dropout_p > 0.0f) {
                memcpy(pd, s, sizeof(float) * (size_t)(bq * nb));
                cf_attn_dropout_apply(c, pd, &mp, hh, b, ks);
                pw = pd;
            }
            const int64_t hq = (bq + 1) / 2;
            if (bf) {
                const uint16_t* d16 = (const uint16_t*)row_ptr(&c->dout, b, q0 + i0, h);
                f32_rows_pairs(kk, pp, pw, nb, bq, nb);
                rows_vnni(kk, dov, d16, c->dout.stride[1], bq, Dv);
                kk->gemm_bf16(nb, Dv, hq, pp, 1, nb, dov, Dv, dv, Dv, 1); /* dV += P^T dO */
                kk->gemm_bf16(bq, nb, g->Dvp2, dopa, ldoa, 1, vtv, nb, dp, nb, 0); /* dP */
            } else {
                kk->gemm_f32(nb, Dv, bq, pw, 1, nb, dor, ldo, dv, Dv, 1); /* dV += P^T dO */
                kk->gemm_f32(bq, nb, Dv, dor, ldo, 1, vt, nb, dp, nb, 0); /* dP = dO V^T */
            }
            if (c->dropout_p > 0.0f) cf_attn_dropout_apply(c, dp, &mp, hh, b, ks);
            for (int64_t r = 0; r < bq; r++)
                kk->ds_row(dp + r * nb, s + r * nb, dp + r * nb, nb, dlr[r], c->scale);
            if (c->softcap > 0.0f)
                for (int64_t e = 0; e < bq * nb; e++)
                    dp[e] *= 1.0f - y[e] * y[e];
            if (bf) {
                const uint16_t* q16 = (const uint16_t*)row_ptr(&c->q, b, q0 + i0, h);
                f32_rows_pairs(kk, dsp, dp, nb, bq, nb);
                rows_vnni(kk, qv, q16, c->q.stride[1], bq, D);
                kk->gemm_bf16(nb, D, hq, dsp, 1, nb, qv, D, dk, D, 1); /* dK += dS^T Q */
            } else {
                kk->gemm_f32(nb, D, bq, dp, 1, nb, qr, ldq, dk, D, 1); /* dK += dS^T Q */
            }
            if (dqacc) { /* dQ += dS K, rows of this unit only: no other thread writes them */
                float* dqr = dqacc + (gi * sq + i0) * D;
                if (bf) {
                    for (int64_t r = 0; r < bq; r++) {
                        uint16_t* d16 = (uint16_t*)(dsr + r * nb2);
                        kk->from_f32(d16, dp + r * nb, CF_BF16, nb);
                        if (nb % 2) d16[nb] = 0;
                    }
                    kk->gemm_bf16(bq, D, nb2, dsr, nb2, 1, kvv, D, dqr, D, 1);
                } else {
                    kk->gemm_f32(bq, D, nb, dp, nb, 1, kr, ldk, dqr, D, 1);
                }
            }
        }
    }
    for (int64_t j = 0; j < nb; j++) {
        kk->from_f32(cf_attn_cpu_key_ptr(c, &c->dk, b, k0, j0 + j, hk), dk + j * D, c->dtype, D);
        kk->from_f32(cf_attn_cpu_key_ptr(c, &c->dv, b, k0, j0 + j, hk), dv + j * Dv, c->dtype, Dv);
    }
}

/* ---- Pass 2: dQ of one query tile -------------------------------------------------------------
 */

static void dq_tile(const cf_attn_call* c, const cf_attn_kernels* kk, const bwd_geom* g,
                    const attn_tile* t, char* ws, const float* dl) {
    const int64_t b = t->b, hk = t->hk, i0 = t->i0, na = t->i1 - t->i0, G = g->G;
    const int64_t Mt = G * na, D = g->D, Dv = g->Dv;
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    float *qt = (float*)(ws + g->qt), *dot = (float*)(ws + g->dot), *dq = (float*)(ws + g->dq),
          *st = (float*)(ws + g->st), *dpt = (float*)(ws + g->dpt), *y = (float*)(ws + g->y2),
          *kc = (float*)(ws + g->kc2), *vc = (float*)(ws + g->vc2), *lb = (float*)(ws + g->vec2),
          *dlr = lb + Mt, *sh = dlr + Mt, *tmp = (float*)(ws + g->tmp);
    int64_t *mi = (int64_t*)(ws + g->map2), *mlo = mi + Mt, *mhi = mlo + Mt, *heads = mhi + Mt;
    float* mslope = (float*)(heads + Mt);
    const float ks = 1.0f / (1.0f - c->dropout_p);
    const int bf = g->bf;
    uint32_t *qv2 = (uint32_t*)(ws + g->qv2), *dov2 = (uint32_t*)(ws + g->dov2),
             *kvv = (uint32_t*)(ws + g->kvv), *dsp2 = (uint32_t*)(ws + g->dsp2),
             *kab = (uint32_t*)(ws + g->ka), *vab = (uint32_t*)(ws + g->va);
    for (int64_t gi = 0; gi < G; gi++)
        for (int64_t ii = 0; ii < na; ii++) {
            const int64_t r = gi * na + ii, h = hk * G + gi, qi = q0 + i0 + ii;
            if (bf) {
                pairs_col(qv2, Mt, r, (const uint16_t*)row_ptr(&c->q, b, qi, h), D);
                pairs_col(dov2, Mt, r, (const uint16_t*)row_ptr(&c->dout, b, qi, h), Dv);
            } else {
                kk->to_f32(tmp, row_ptr(&c->q, b, qi, h), c->dtype, D);
                for (int64_t d = 0; d < D; d++)
                    qt[d * Mt + r] = tmp[d];
                kk->to_f32(tmp, row_ptr(&c->dout, b, qi, h), c->dtype, Dv);
                for (int64_t d = 0; d < Dv; d++)
                    dot[d * Mt + r] = tmp[d];
            }
            mi[r] = i0 + ii;
            mslope[r] = cf_attn_slope(c, b, h);
            cf_attn_key_range(c, i0 + ii, sq, sk, &mlo[r], &mhi[r]);
            lb[r] = cf_attn_lse_sub(c, b, h, qi);
            sh[r] = cf_attn_lse_shift(c, b, h, qi);
            dlr[r] = cf_attn_dl(c, dl, b, h, qi);
            heads[r] = h;
        }
    memset(dq, 0, sizeof(float) * (size_t)(Mt * D));
    const int xtra = cf_attn_has_extra(c);
    uint8_t* xkv = (uint8_t*)(ws + g->xkv);
    const uint8_t** xkvp = (const uint8_t**)(ws + g->xkvp);
    const int64_t jlo = mlo[0], jhi = mhi[na - 1];
    int qbad = -1; /* the tile's query rows hold a NaN or infinity (checked when first needed) */
    for (int64_t j0 = jlo; j0 < jhi; j0 += g->bk) {
        const int64_t nb = jhi - j0 < g->bk ? jhi - j0 : g->bk;
        /* skip a block whose every pair the per-pair masks hide, for every head (the rows' key
         * masks set otherwise) */
        const int open =
            xtra ? cf_attn_cpu_tile_region(c, g->map, b, hk, G, i0, na, j0, nb, xkv, xkvp)
                 : CF_REGION_OPEN;
        if (open == CF_REGION_CLOSED) continue;
        /* A partly masked block holding a NaN or infinity: pair by pair (see
         * cf_attn_bwd_exact_pairs); issue 13's masks may hide any pair. */
        if (open != CF_REGION_OPEN || mlo[na - 1] > j0 || mhi[0] < j0 + nb) {
            for (int64_t gi = 0; qbad < 0 && gi < G; gi++)
                if (cf_attn_bwd_query_rows_bad(c, b, hk * G + gi, q0 + i0, na, dlr + gi * na))
                    qbad = 1;
            if (qbad < 0) qbad = 0;
            if (qbad || cf_attn_bwd_key_rows_bad(c, b, hk, k0, j0, nb, open == CF_REGION_OPEN,
                                                 mlo[na - 1] - j0, mhi[0] - j0)) {
                for (int64_t gi = 0; gi < G; gi++)
                    cf_attn_bwd_exact_pairs(c, b, hk * G + gi, i0, na, dlr + gi * na, j0, nb, NULL,
                                            0, NULL, 0, dq + gi * na * D, D);
                continue;
            }
        }
        int64_t ldk = 0, ldv = 0, ldka = 0, ldva = 0;
        const float *kr = NULL, *vr = NULL;
        const uint32_t *kpa = NULL, *vpa = NULL;
        int64_t krs, vrs; /* row strides: the view's, or D / Dv for rows gathered from pages */
        const char* kb = cf_attn_cpu_key_rows(c, &c->k, b, k0, j0, nb, hk, D, ws + g->gk, &krs);
        const char* vb = cf_attn_cpu_key_rows(c, &c->v, b, k0, j0, nb, hk, Dv, ws + g->gv, &vrs);
        if (bf) {
            kpa = rows_pairs_at((const uint16_t*)kb, krs, nb, D, kab, &ldka);
            vpa = rows_pairs_at((const uint16_t*)vb, vrs, nb, Dv, vab, &ldva);
        } else {
            /* (K: dQ's B, with Mt rows of dS; V: an A only) */
            kr = rows_f32_at(kk, kb, krs, c->dtype, nb, D, kc, &ldk, Mt >= CF_ATTN_PACK_ROWS);
            vr = rows_f32_at(kk, vb, vrs, c->dtype, nb, Dv, vc, &ldv, 0);
        }
        cf_attn_score_map mp = {Mt, nb,    1,
                                Mt, mi,    mslope,
                                j0, mlo,   mhi,
                                b,  heads, c->bs_num.data ? xkvp : NULL,
                                0,  nb,    c->lse_fix ? sh : NULL};
        if (bf)
            kk->gemm_bf16(nb, Mt, g->Dp2, kpa, ldka, 1, qv2, Mt, st, Mt, 0);
        else
            kk->gemm_f32(nb, Mt, D, kr, ldk, 1, qt, Mt, st, Mt, 0); /* S^T = K Q^T */
        scores(c, kk, &mp, st, c->softcap > 0.0f ? y : NULL, sq, sk, open);
        for (int64_t j = 0; j < nb; j++)
            kk->exp_cols(st + j * Mt, Mt, lb, NULL);
        if (bf)
            kk->gemm_bf16(nb, Mt, g->Dvp2, vpa, ldva, 1, dov2, Mt, dpt, Mt, 0);
        else
            kk->gemm_f32(nb, Mt, Dv, vr, ldv, 1, dot, Mt, dpt, Mt, 0); /* dP^T = V dO^T */
        if (c->dropout_p > 0.0f) cf_attn_dropout_apply(c, dpt, &mp, heads, b, ks);
        for (int64_t j = 0; j < nb; j++)
            kk->ds_cols(dpt + j * Mt, st + j * Mt, dpt + j * Mt, Mt, dlr, c->scale);
        if (c->softcap > 0.0f)
            for (int64_t e = 0; e < nb * Mt; e++)
                dpt[e] *= 1.0f - y[e] * y[e];
        if (bf) {
            f32_rows_pairs(kk, dsp2, dpt, Mt, nb, Mt);
            rows_vnni(kk, kvv, (const uint16_t*)kb, krs, nb, D);
            kk->gemm_bf16(Mt, D, (nb + 1) / 2, dsp2, 1, Mt, kvv, D, dq, D, 1); /* dQ += dS K */
        } else {
            kk->gemm_f32(Mt, D, nb, dpt, 1, Mt, kr, ldk, dq, D, 1); /* dQ += dS K */
        }
    }
    for (int64_t gi = 0; gi < G; gi++)
        for (int64_t ii = 0; ii < na; ii++)
            kk->from_f32(row_ptr(&c->dq, b, q0 + i0 + ii, hk * G + gi), dq + (gi * na + ii) * D,
                         c->dtype, D);
}

/* ---- Issue 13: dbias of one block of rows --------------------------------------------------- */

/* The scratch of dbias_tile and far_tile (pass-1 buffers of the workspace) and the rows it works
 * on: qt, dot hold Q^T, dO^T of rows [qi0, qi0 + qnr) of (qb, qh) (qnr 0: none yet); v: 4 vectors
 * of bq; gk, gv: paged keys gathered. dp NULL (far_tile): no dP. */
typedef struct dbias_ws {
    float *kc, *vc, *qc, *doc, *s, *dp, *lb, *dlr, *sh, *qt, *dot, *v;
    uint32_t *qv, *ka, *va; /* pairs (g->bf, g->dbf16): Q^T, K and V (dO^T's at dot) */
    void *scr, *pq, *pd;    /* g->dbf16's scratch, Q^T and dO^T as its B operands */
    double* sums;           /* dbias_stats: a row's sum of P and of P dP */
    int64_t *mi, *mlo, *mhi, *hr;
    float* mslope;
    uint8_t* xkv;
    const uint8_t** xkvp;
    char *gk, *gv;
    int64_t qb, qh, qi0, qnr;
} dbias_ws;

static dbias_ws dbias_ws_at(const bwd_geom* g, char* ws) {
    const int64_t BQ = g->bq;
    dbias_ws w = {.kc = (float*)(ws + g->kc),
                  .vc = (float*)(ws + g->vc),
                  .qc = (float*)(ws + g->qc),
                  .qt = (float*)(ws + g->dbqt),
                  .dot = (float*)(ws + g->dbdot),
                  .v = (float*)(ws + g->dbvec),
                  .doc = (float*)(ws + g->doc),
                  .s = (float*)(ws + g->s),
                  .dp = (float*)(ws + g->dp),
                  .lb = (float*)(ws + g->vec1),
                  .xkv = (uint8_t*)(ws + g->xkv),
                  .xkvp = (const uint8_t**)(ws + g->xkvp),
                  .gk = ws + g->gk,
                  .gv = ws + g->gv,
                  .qv = (uint32_t*)(ws + g->dbqv),
                  .ka = (uint32_t*)(ws + g->ka),
                  .va = (uint32_t*)(ws + g->va),
                  .scr = ws + g->dbscr,
                  .pq = ws + g->dbpq,
                  .pd = ws + g->dbpd};
    w.dlr = w.lb + BQ, w.sh = w.dlr + BQ;
    w.sums = (double*)(w.v + 4 * BQ);
    w.mi = (int64_t*)(ws + g->map1), w.mlo = w.mi + BQ, w.mhi = w.mlo + BQ, w.hr = w.mhi + BQ;
    w.mslope = (float*)(w.hr + BQ);
    return w;
}

/* Whether K / V rows [j0, j0 + nc) of (b, hk) (keys from row k0) hold a NaN or an infinity: with
 * g->kbad (dbias calls: batch, k0 = 0), read once a call per block (every dbias task of every row
 * block asks; threads that race store the same value). */
static int dbias_keys_bad(const cf_attn_call* c, const bwd_geom* g, int64_t b, int64_t hk,
                          int64_t k0, int64_t j0, int64_t nc) {
    if (!g->kbad) return cf_attn_bwd_key_rows_bad(c, b, hk, k0, j0, nc, 0, 0, 0);
    signed char* f = g->kbad + (b * c->Hk + hk) * g->kbn + j0 / g->bk;
    signed char v = __atomic_load_n(f, __ATOMIC_RELAXED);
    if (!v) {
        v = cf_attn_bwd_key_rows_bad(c, b, hk, 0, j0, nc, 0, 0, 0) ? 2 : 1;
        __atomic_store_n(f, v, __ATOMIC_RELAXED);
    }
    return v == 2;
}

/* Rows [i0, i0 + nr) of (b, h) against keys [j0, j0 + nc): their metadata in w (the forward's
 * lse and dl included; dl NULL: 0), then, unless no pair is open (returns 0) or some row holds a
 * NaN or an infinity (returns -1), the scores as the forward saw them in w->s (shifted where |lse|
 * is far) and, unless w->dp is NULL, dP (dropout applied) in w->dp, both transposed (nc x nr: key
 * j of row r at [j * nr + r]; returns 1). As the forward: S^T = K Q^T with K read as the GEMM's A,
 * Q^T made once per rows (not K^T per block). */
static int dbias_block(const cf_attn_call* c, const cf_attn_kernels* kk, const bwd_geom* g,
                       dbias_ws* w, int64_t b, int64_t h, int64_t i0, int64_t nr, int64_t j0,
                       int64_t nc, int64_t sq, int64_t sk, const float* dl) {
    int64_t q0, k0, n1, n2;
    cf_attn_seq(c, b, &q0, &n1, &k0, &n2);
    int64_t any = 0;
    for (int64_t r = 0; r < nr; r++) {
        w->mi[r] = i0 + r, w->hr[r] = h, w->mslope[r] = cf_attn_slope(c, b, h);
        cf_attn_key_range(c, i0 + r, sq, sk, &w->mlo[r], &w->mhi[r]);
        any |= w->mlo[r] < j0 + nc && w->mhi[r] > j0 && w->mlo[r] < w->mhi[r];
        w->lb[r] = cf_attn_lse_sub(c, b, h, q0 + i0 + r);
        w->sh[r] = cf_attn_lse_shift(c, b, h, q0 + i0 + r);
        w->dlr[r] = dl ? cf_attn_dl(c, dl, b, h, q0 + i0 + r) : 0.0f;
    }
    if (!any || cf_attn_cpu_tile_region(c, g->map, b, h, 1, i0, nr, j0, nc, w->xkv, w->xkvp) ==
                    CF_REGION_CLOSED)
        return 0;
    const int64_t hk = h / g->G, D = g->D, Dv = g->Dv;
    const int pairs = g->bf || g->dbf16;
    if (dbias_keys_bad(c, g, b, hk, k0, j0, nc) ||
        cf_attn_bwd_query_rows_bad(c, b, h, q0 + i0, nr, w->dlr))
        return -1;
    if (w->qnr != nr || w->qb != b || w->qh != h || w->qi0 != i0) {
        int64_t ldq, ldo;
        if (pairs) {
            for (int64_t r = 0; r < nr; r++)
                pairs_col(w->qv, nr, r, (const uint16_t*)row_ptr(&c->q, b, q0 + i0 + r, h), D);
            if (g->dbf16) g->dbf16->prep_b(nr, g->Dp2, w->qv, nr, w->pq);
        } else {
            const float* qr = rows_f32(kk, &c->q, b, q0 + i0, h, nr, D, w->qc, &ldq, 0);
            transpose(w->qt, qr, ldq, nr, D);
        }
        if (w->dp && pairs) { /* (dO^T pairs: half of dot's fp32 room) */
            for (int64_t r = 0; r < nr; r++)
                pairs_col((uint32_t*)w->dot, nr, r,
                          (const uint16_t*)row_ptr(&c->dout, b, q0 + i0 + r, h), Dv);
            if (g->dbf16) g->dbf16->prep_b(nr, g->Dvp2, (const uint32_t*)w->dot, nr, w->pd);
        } else if (w->dp) {
            const float* dor = rows_f32(kk, &c->dout, b, q0 + i0, h, nr, Dv, w->doc, &ldo, 0);
            transpose(w->dot, dor, ldo, nr, Dv);
        }
        w->qb = b, w->qh = h, w->qi0 = i0, w->qnr = nr;
    }
    int64_t ldk, krs;
    const char* kb = cf_attn_cpu_key_rows(c, &c->k, b, k0, j0, nc, hk, D, w->gk, &krs);
    cf_attn_score_map mp = {nr, nc,     1,
                            nr, w->mi,  w->mslope,
                            j0, w->mlo, w->mhi,
                            b,  w->hr,  c->bs_num.data ? w->xkvp : NULL,
                            0,  nc,     c->lse_fix ? w->sh : NULL};
    /* S^T = K Q^T, on the GEMM dq_tile takes (bf16 pairs or fp32), so that every score comes out
     * as the passes (and the forward) round it: far_tile's r needs them equal (an engine's dbias
     * tasks on fp16 pairs, g->dbf16, need no such match: cf_attn_cpu_dbias_tasks) */
    if (pairs) {
        const uint32_t* kpa = rows_pairs_at((const uint16_t*)kb, krs, nc, D, w->ka, &ldk);
        if (g->bf)
            kk->gemm_bf16(nc, nr, g->Dp2, kpa, ldk, 1, w->qv, nr, w->s, nr, 0);
        else
            g->dbf16->run(nc, nr, g->Dp2, kpa, ldk, 1, w->pq, w->s, nr, 0, w->scr);
    } else {
        const float* kr = rows_f32_at(kk, kb, krs, c->dtype, nc, D, w->kc, &ldk, 0);
        kk->gemm_f32(nc, nr, D, kr, ldk, 1, w->qt, nr, w->s, nr, 0);
    }
    cf_attn_scores(c, kk, &mp, w->s, NULL, sq, sk, CF_REGION_PART);
    if (!w->dp) return 1;
    int64_t ldv, vrs;
    const char* vb = cf_attn_cpu_key_rows(c, &c->v, b, k0, j0, nc, hk, Dv, w->gv, &vrs);
    if (pairs) { /* dP^T = V dO^T */
        const uint32_t* vpa = rows_pairs_at((const uint16_t*)vb, vrs, nc, Dv, w->va, &ldv);
        if (g->bf)
            kk->gemm_bf16(nc, nr, g->Dvp2, vpa, ldv, 1, (const uint32_t*)w->dot, nr, w->dp, nr, 0);
        else
            g->dbf16->run(nc, nr, g->Dvp2, vpa, ldv, 1, w->pd, w->dp, nr, 0, w->scr);
    } else {
        const float* vr = rows_f32_at(kk, vb, vrs, c->dtype, nc, Dv, w->vc, &ldv, 0);
        kk->gemm_f32(nc, nr, Dv, vr, ldv, 1, w->dot, nr, w->dp, nr, 0);
    }
    if (c->dropout_p > 0.0f)
        cf_attn_dropout_apply(c, w->dp, &mp, w->hr, b, 1.0f / (1.0f - c->dropout_p));
    return 1;
}

/* What a dbias task keeps of one (b, h)'s first pass for its second: for key block jb, the
 * scores and dP at s / dp + jb * blk (blk = bq * bk floats) and dbias_block's result in st[jb];
 * all of them valid when dbias_stats returned 1. */
typedef struct dbias_cache {
    int64_t nblk, blk;
    float *s, *dp;
    signed char* st;
} dbias_cache;

/* Folds a block of scores (nr rows by nc keys, transposed: key j of row r at s[j * nr + r]) into
 * each row's running max m[r * ms] and sum l[r] of P = exp(s - m), and with dp (laid out as s)
 * pdp[r] of P dP: the sums moved to the block's max first; P by columns (m 0 for a row with no key
 * yet: its P is 0), in place, or with e (nr floats) through e, s kept. mu: nr floats of scratch. */
static void stats_fold(const cf_attn_kernels* kk, float* s, const float* dp, int64_t nr, int64_t nc,
                       float* m, int64_t ms, double* l, double* pdp, float* mu, float* e) {
    for (int64_t r = 0; r < nr; r++)
        mu[r] = m[r * ms];
    for (int64_t j = 0; j < nc; j++)
        kk->scale_max_cols(s + j * nr, nr, 1.0f, mu); /* (x 1: the scores unchanged) */
    for (int64_t r = 0; r < nr; r++) {
        if (mu[r] > m[r * ms]) {
            const float a = m[r * ms] == -INFINITY ? 0.0f : expf(m[r * ms] - mu[r]);
            m[r * ms] = mu[r], l[r] *= a;
            if (pdp) pdp[r] *= a;
        }
        if (mu[r] == -INFINITY) mu[r] = 0.0f;
    }
    for (int64_t j = 0; j < nc; j++) {
        float* p = e ? memcpy(e, s + j * nr, sizeof(float) * (size_t)nr) : s + j * nr;
        kk->exp_cols(p, nr, mu, NULL);
        for (int64_t r = 0; r < nr; r++)
            l[r] += p[r];
        for (int64_t r = 0; dp && r < nr; r++)
            pdp[r] += (double)p[r] * dp[j * nr + r];
    }
}

/* Pass 1 of dbias_tile for (b, h): each row's own softmax statistics over all its keys, from the
 * scores and dP it recomputes, st[3 r ..] = (max m, 1 / sum of exp(s - m), sum of P dP with P =
 * exp(s - m) / sum): dS = P (dP - that sum) as the naive computation forms it. The forward's lse
 * and rowsum(dO O) give the same dS in exact arithmetic, but each rounds on its own: a dbias
 * element is one dS (or a short sum of them) and came out up to 5.5x the naive's error, past the
 * error rule (dq, dk, dv sum many and were within it). Returns 0 when some block holds a NaN or an
 * infinity: the forward's statistics serve then. kc (NULL: nothing kept) keeps the scores and
 * dP for pass 2: dbias_block writes them there. */
static int dbias_stats(const cf_attn_call* c, const cf_attn_kernels* kk, const bwd_geom* g,
                       dbias_ws* w, int64_t b, int64_t h, int64_t i0, int64_t nr, int64_t sq,
                       int64_t sk, const float* dl, float* st, dbias_cache* kc) {
    /* The sums in double: sum P dP cancels (dbias = P (dP - sum P dP)), and its fp32 rounding over
     * the keys was most of dbias's error (5x the naive's on one element of a full bias, whose naive
     * takes rowsum(dO O) instead). */
    double *l = w->sums, *pdp = l + nr;
    for (int64_t r = 0; r < nr; r++)
        st[3 * r] = -INFINITY, l[r] = 0.0, pdp[r] = 0.0;
    float *ws = w->s, *wdp = w->dp, *e = w->v + nr; /* e: a column of P (w->v: bq maxima, then) */
    for (int64_t j0 = 0; j0 < sk; j0 += g->bk) {
        const int64_t nc = sk - j0 < g->bk ? sk - j0 : g->bk, at = j0 / g->bk;
        if (kc) w->s = kc->s + at * kc->blk, w->dp = kc->dp + at * kc->blk;
        const int o = dbias_block(c, kk, g, w, b, h, i0, nr, j0, nc, sq, sk, dl);
        if (kc) kc->st[at] = (signed char)o;
        if (o < 0) {
            w->s = ws, w->dp = wdp;
            return 0;
        }
        if (o) /* (kept scores stay: P through e) */
            stats_fold(kk, w->s, w->dp, nr, nc, st, 3, l, pdp, w->v, kc ? e : NULL);
    }
    w->s = ws, w->dp = wdp;
    const float sink = cf_attn_sink(c, h); /* (a key of no value: in the sum, not in P dP) */
    for (int64_t r = 0; r < nr; r++) {
        if (sink != -INFINITY) {
            const float m = st[3 * r] > sink ? st[3 * r] : sink,
                        a = st[3 * r] == -INFINITY ? 0.0f : expf(st[3 * r] - m);
            st[3 * r] = m, l[r] = l[r] * a + expf(sink - m);
            pdp[r] *= a;
        }
        if (st[3 * r] == -INFINITY) { /* no key: P = 0 */
            st[3 * r] = INFINITY, st[3 * r + 1] = 0.0f, st[3 * r + 2] = 0.0f;
            continue;
        }
        st[3 * r + 2] = (float)(pdp[r] / l[r]);
        st[3 * r + 1] = (float)(1.0 / l[r]);
    }
    return 1;
}

/* Pass 2 for (b, h) on keys [j0, j0 + nc): dS of rows [i0, i0 + nr) added to acc (keys by rows,
 * as S^T: key j0 + j of row r at acc[j * bq + r]). sr: the rows' own statistics (dbias_stats; NULL:
 * the forward's lse and dl); s, dp: the block's scores and dP (kept from pass 1, or NULL: computed
 * again here). */
static void dbias_add(const cf_attn_call* c, const cf_attn_kernels* kk, const bwd_geom* g,
                      dbias_ws* w, int64_t b, int64_t h, int64_t i0, int64_t nr, int64_t j0,
                      int64_t nc, int64_t sq, int64_t sk, const float* dl, const float* sr,
                      float* s, float* dp, int o, float* acc, int64_t bq) {
    if (!s) {
        o = dbias_block(c, kk, g, w, b, h, i0, nr, j0, nc, sq, sk, dl);
        s = w->s, dp = w->dp;
    }
    if (o == 0) return;
    if (o < 0) { /* a NaN or an infinity in the rows: pair by pair (masked pairs get 0, see
                    cf_attn_bwd_exact_pairs) */
        for (int64_t r = 0; r < nr; r++) {
            const float lse = cf_attn_lse_at(c, b, h, i0 + r),
                        fix = cf_attn_lse_fix(c, b, h, i0 + r);
            for (int64_t j = w->mlo[r] > j0 ? w->mlo[r] : j0;
                 lse != -INFINITY && j < w->mhi[r] && j < j0 + nc; j++) {
                float ds_s, ds;
                if (ref_pair_grad(c, b, h, i0 + r, 0, i0 + r, j, sq, sk, lse, fix, w->dlr[r], NULL,
                                  &ds_s, &ds))
                    acc[(j - j0) * bq + r] += ds_s;
            }
        }
        return;
    }
    /* dS^T by columns: P = exp(s - m) (times 1 / l with the row's own statistics),
     * dS = P (dP - sum P dP), added to acc */
    float *mu = w->v, *il = mu + nr, *dlv = il + nr;
    for (int64_t r = 0; r < nr; r++) {
        mu[r] = sr ? sr[3 * r] : cf_attn_lse_sub(c, b, h, i0 + r);
        il[r] = sr ? sr[3 * r + 1] : 1.0f;
        dlv[r] = sr ? sr[3 * r + 2] : cf_attn_dl(c, dl, b, h, i0 + r);
    }
    for (int64_t j = 0; j < nc; j++) {
        float *p = s + j * nr, *d = dp + j * nr, *a = acc + j * bq;
        kk->exp_cols(p, nr, mu, NULL);
        for (int64_t r = 0; sr && r < nr; r++)
            p[r] *= il[r];
        kk->ds_cols(d, p, d, nr, dlv, 1.0f);
        for (int64_t r = 0; r < nr; r++)
            a[r] += d[r];
    }
}

/* Rows [i0, i0 + bq) x keys [j0, j0 + nb) of dbias element (bb, hh) from acc (keys by rows), a
 * row at a time through w->s (free here). */
static void dbias_out(const cf_attn_call* c, const cf_attn_kernels* kk, dbias_ws* w, int64_t bb,
                      int64_t hh, int64_t i0, int64_t bq, int64_t j0, int64_t nb, const float* acc,
                      size_t es) {
    for (int64_t r = 0; r < bq; r++) {
        for (int64_t j = 0; j < nb; j++)
            w->s[j] = acc[j * bq + r];
        kk->from_f32((char*)c->dbias.data + (size_t)cf_attn_at4(&c->dbias, bb, hh, i0 + r, j0) * es,
                     w->s, c->dbias.dtype, nb);
    }
}

/* Tests only: the bytes a dbias task may take to keep its first pass's scores and dP (0: the
 * default, CF_ATTN_DBIAS_CACHE_BYTES). */
static size_t dbias_cache_bytes;
void cf_attn_cpu_set_dbias_cache(size_t bytes) {
    dbias_cache_bytes = bytes;
}

/* Rows [i0, i0 + bq) of dbias element (bb, hh) (batch calls): dL/d(score) summed over the (b, h)
 * that the bias broadcasts to, in a fixed order, P and dP (fp32 products) with each row's own
 * softmax statistics (dbias_stats; the forward's lse and dl where those could not be had); one
 * writer per element, so deterministic. The pass-1 buffers serve as scratch. Two orders:
 * - when one (b, h)'s scores and dP over all keys and an fp32 row block of dbias fit the cache
 *   bytes, (b, h) by (b, h): pass 1 keeps its scores and dP, pass 2 adds its dS to the row block
 *   from them (the scores and dP computed once);
 * - else pass 1 for every (b, h), then key block by key block, every (b, h)'s scores and dP
 *   computed again and its dS added. */
static void dbias_tile(const cf_attn_call* c, const cf_attn_kernels* kk, const void* geom,
                       int64_t bb, int64_t hh, int64_t i0, int64_t bq, char* ws, const float* dl) {
    const bwd_geom* g = geom;
    const int64_t Sk = c->Sk, BQ = g->bq, BKB = g->bk;
    dbias_ws w = dbias_ws_at(g, ws);
    const int64_t b0 = c->dbias.shape[0] == 1 ? 0 : bb, b1 = c->dbias.shape[0] == 1 ? c->B : bb + 1;
    const int64_t h0 = c->dbias.shape[1] == 1 ? 0 : hh, h1 = c->dbias.shape[1] == 1 ? c->H : hh + 1;
    const int64_t nh = h1 - h0;
    const size_t es = cf_dtype_size(c->dbias.dtype);
    const size_t limit = dbias_cache_bytes ? dbias_cache_bytes : CF_ATTN_DBIAS_CACHE_BYTES;
    /* (b, h) by (b, h): one pair's scores and dP (2 x bq x nblk x bk floats), its flags, the fp32
     * row block (bq x Sk) */
    dbias_cache kc = {.nblk = (Sk + BKB - 1) / BKB, .blk = bq * BKB};
    int64_t fl = 0, accn = 0, bytes = 0;
    const int one = !cf_mul_i64(kc.nblk, 2 * kc.blk, &fl) && !cf_mul_i64(bq, Sk, &accn) &&
                    !cf_mul_i64(fl + accn, (int64_t)sizeof(float), &bytes) &&
                    !cf_add_i64(bytes, kc.nblk, &bytes) && bytes <= (int64_t)limit;
    char* cbuf = one ? malloc((size_t)bytes) : NULL;
    float* acc = (float*)(ws + g->dbacc);
    int64_t nbh = 0, nst = 0;
    if (cbuf) {
        kc.s = (float*)cbuf, kc.dp = kc.s + fl / 2, acc = kc.s + fl;
        kc.st = (signed char*)(acc + accn);
        memset(acc, 0, sizeof(float) * (size_t)accn);
        float* st = (float*)(w.sums + 2 * BQ);
        for (int64_t b = b0; b < b1; b++)
            for (int64_t h = h0; h < h1; h++) {
                int64_t q0, sq, k0, sk;
                cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
                const int64_t nr = sq - i0 < bq ? sq - i0 : bq;
                if (nr <= 0) continue;
                /* seqused_q / seqused_k: only the used rows and keys of b contribute */
                const int ok = dbias_stats(c, kk, g, &w, b, h, i0, nr, sq, sk, dl, st, &kc);
                for (int64_t j0 = 0; j0 < sk; j0 += BKB) {
                    const int64_t nc = sk - j0 < BKB ? sk - j0 : BKB, at = j0 / BKB;
                    dbias_add(c, kk, g, &w, b, h, i0, nr, j0, nc, sq, sk, dl, ok ? st : NULL,
                              ok ? kc.s + at * kc.blk : NULL, ok ? kc.dp + at * kc.blk : NULL,
                              ok ? kc.st[at] : 0, acc + j0 * bq, bq);
                }
            }
    } else if (!cf_mul_i64(b1 - b0, nh, &nbh) && !cf_mul_i64(nbh, 3 * bq, &nst)) {
        /* pass 1: (m, 1 / l, sum P dP) of every row of every (b, h) (NULL, a row's flag 0: the
         * forward's lse and dl) */
        float* st = malloc(sizeof(float) * (size_t)nst);
        char* ok = calloc((size_t)nbh, 1);
        for (int64_t b = b0; st && ok && b < b1; b++)
            for (int64_t h = h0; h < h1; h++) {
                int64_t q0, sq, k0, sk;
                cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
                const int64_t nr = sq - i0 < bq ? sq - i0 : bq, x = (b - b0) * nh + h - h0;
                if (nr > 0)
                    ok[x] = (char)dbias_stats(c, kk, g, &w, b, h, i0, nr, sq, sk, dl,
                                              st + x * 3 * bq, NULL);
            }
        for (int64_t j0 = 0; j0 < Sk; j0 += BKB) {
            const int64_t nb = Sk - j0 < BKB ? Sk - j0 : BKB;
            memset(acc, 0, sizeof(float) * (size_t)(bq * nb));
            for (int64_t b = b0; b < b1; b++)
                for (int64_t h = h0; h < h1; h++) {
                    int64_t q0, sq, k0, sk;
                    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
                    const int64_t nr = sq - i0 < bq ? sq - i0 : bq,
                                  nc = sk - j0 < nb ? sk - j0 : nb;
                    if (nr <= 0 || nc <= 0) continue;
                    const int64_t x = (b - b0) * nh + h - h0;
                    dbias_add(c, kk, g, &w, b, h, i0, nr, j0, nc, sq, sk, dl,
                              ok && ok[x] ? st + x * 3 * bq : NULL, NULL, NULL, 0, acc, bq);
                }
            dbias_out(c, kk, &w, bb, hh, i0, bq, j0, nb, acc, es);
        }
        free(st);
        free(ok);
        return;
    }
    for (int64_t j0 = 0; cbuf && j0 < Sk; j0 += BKB)
        dbias_out(c, kk, &w, bb, hh, i0, bq, j0, Sk - j0 < BKB ? Sk - j0 : BKB, acc + j0 * bq, es);
    free(cbuf);
}

/* ---- Rows of far |lse| (before pass 0) ------------------------------------------------------ */

/* r (CF_ATTN_LSE_FAR) of the far rows among [i0, i0 + n) of (b, h), into fix as cf_attn_dl reads
 * it: each row's max m and sum l of exp(s - m) over its keys and the sink, the scores formed by
 * key block as the passes form them (a block holding a NaN or an infinity: pair by pair), then
 * r = m - lse + log l where that is lse's rounding (cf_attn_lse_residue). c->lse_fix must be NULL
 * here (the scores unshifted). */
static void far_tile(const cf_attn_call* c, const cf_attn_kernels* kk, const void* geom, int64_t b,
                     int64_t h, int64_t i0, int64_t n, char* ws, float* fix) {
    const bwd_geom* g = geom;
    dbias_ws w = dbias_ws_at(g, ws);
    w.dp = NULL; /* scores only */
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    float *m = w.v, *mu = m + g->bq;
    double* l = w.sums;
    for (int64_t r = 0; r < n; r++)
        m[r] = -INFINITY, l[r] = 0.0;
    for (int64_t j0 = 0; j0 < sk; j0 += g->bk) {
        const int64_t nc = sk - j0 < g->bk ? sk - j0 : g->bk;
        const int o = dbias_block(c, kk, g, &w, b, h, i0, n, j0, nc, sq, sk, NULL);
        if (o < 0) /* a NaN or an infinity in the rows: pair by pair */
            for (int64_t r = 0; r < n; r++)
                for (int64_t j = w.mlo[r] > j0 ? w.mlo[r] : j0; j < w.mhi[r] && j < j0 + nc; j++) {
                    float x, t;
                    if (ref_pair_score(c, b, h, q0 + i0 + r, k0, i0 + r, j, sq, sk, &x, &t))
                        ref_fold(x, &m[r], &l[r]);
                }
        if (o > 0) stats_fold(kk, w.s, NULL, n, nc, m, 1, l, NULL, mu, NULL);
    }
    cf_attn_far_store(c, b, h, q0 + i0, n, m, l, fix);
}

void cf_attn_far_store(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi0, int64_t n,
                       float* m, double* l, float* fix) {
    for (int64_t r = 0; r < n; r++) {
        const float lse = cf_attn_lse_at(c, b, h, qi0 + r);
        ref_fold(cf_attn_sink(c, h), &m[r], &l[r]);
        if (cf_attn_lse_far(lse))
            fix[cf_attn_dl_index(c, b, h, qi0 + r)] = cf_attn_lse_residue(lse, m[r], l[r]);
    }
}

/* The blocks of BQ rows of some (b, h) holding a row of far |lse|: their count, and with out
 * (room for them all) the blocks. */
static int64_t far_blocks(const cf_attn_call* c, int64_t BQ, attn_tile* out) {
    int64_t k = 0;
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        for (int64_t h = 0; h < c->H; h++)
            for (int64_t i0 = 0; i0 < sq; i0 += BQ) {
                const int64_t i1 = sq - i0 < BQ ? sq : i0 + BQ;
                int any = 0;
                for (int64_t i = i0; i < i1 && !any; i++)
                    any = cf_attn_lse_far(cf_attn_lse_at(c, b, h, q0 + i));
                if (!any) continue;
                if (out) {
                    attn_tile x = {b, h, i0, i1, i1 - i0, k};
                    out[k] = x;
                }
                k++;
            }
    }
    return k;
}

/* ---- Driver -----------------------------------------------------------------------------------
 */

cflash_status cf_attn_cpu_bwd_run(const cf_attn_call* c, const cf_attn_kernels* kk,
                                  const cf_attn_bwd_engine* e) {
    const int64_t BKB = e->bk, G = c->H / c->Hk;
    const int T = c->threads > 0 ? c->threads : 1;
    const int64_t rows = c->varlen ? c->total_q : c->B * c->Sq;
    int64_t nq = 0, nk = 0;
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        nk += (sk + BKB - 1) / BKB * c->Hk;
    }
    /* Each thread's workspace: the engine's, then two rows of fp32 for pass 0. */
    const size_t eb = align64(e->bytes), bytes = eb + align64(sizeof(float) * 2 * (size_t)c->Dv);
    attn_tile* qtiles = cf_attn_cpu_q_tiles(c, e->q_rows, &nq);
    attn_tile* ktiles = malloc(sizeof *ktiles * (size_t)(nk > 0 ? nk : 1));
    float* dl = malloc(sizeof(float) * (size_t)(rows * c->H > 0 ? rows * c->H : 1));
    char* ws = aligned_alloc(64, bytes * (size_t)T);
    /* Issue 13: per (b, h) sums for dsinks, summed over b in order after the passes. */
    float* dsk = c->dsinks ? calloc((size_t)(c->B * c->H) + 1, sizeof(float)) : NULL;
    /* Rows of far |lse|: their r (c->lse_fix) by blocks of dbias_rows rows, before pass 0; the
     * passes then run on a copy of the call that carries them. */
    const int64_t nfar = e->far ? far_blocks(c, e->dbias_rows, NULL) : 0;
    attn_tile* far = nfar ? malloc(sizeof *far * (size_t)nfar) : NULL;
    float* fix = nfar ? calloc((size_t)(rows * c->H), sizeof(float)) : NULL;
    if (far) far_blocks(c, e->dbias_rows, far);
    if (!qtiles || !ktiles || !dl || !ws || (c->dsinks && !dsk) || (nfar && (!far || !fix))) {
        free(qtiles), free(ktiles), free(dl), free(ws), free(dsk), free(far), free(fix);
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY,
                        "%s attn_bwd: out of memory for %d threads x %zu bytes of workspace and "
                        "%lld floats of rowsum(dO * O)",
                        kk->name, T, bytes, (long long)(rows * c->H));
    }
    const cf_attn_call* c0 = c; /* (lse_fix NULL: far_tile's scores unshifted) */
    cf_attn_call cfix = *c;
    cfix.lse_fix = fix;
    if (fix) c = &cfix;
    int64_t n = 0;
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        for (int64_t hk = 0; hk < c->Hk; hk++)
            for (int64_t j0 = 0; j0 < sk; j0 += BKB) {
                int64_t j1 = j0 + BKB < sk ? j0 + BKB : sk, a, z;
                cf_attn_rows_seeing(c, sq, sk, j0, j1, &a, &z);
                attn_tile x = {b, hk, j0, j1, (z - a) * (j1 - j0) + 1, n};
                ktiles[n++] = x;
            }
    }
    cf_attn_cpu_sort_tiles(ktiles, n);

    /* One pass (dQ accumulated per (sequence, KV head) unit) when there are enough units to keep
     * every thread busy and the unit's fp32 dQ fits a bounded buffer; else three passes. */
    const int64_t nu = c->B * c->Hk;
    const size_t dq_floats = (size_t)(G * c->Sq * c->D);
    const size_t dq_stride = (dq_floats + 15) & ~(size_t)15;
    const int one_pass = nu >= 4 * (int64_t)T && dq_floats * sizeof(float) <= CF_ATTN_BWD_DQ_BYTES;
    attn_tile* units = one_pass ? malloc(sizeof *units * (size_t)nu) : NULL;
    float* dqbuf = one_pass ? aligned_alloc(64, sizeof(float) * dq_stride * (size_t)T) : NULL;
    if (one_pass && (!units || !dqbuf)) {
        free(units), free(dqbuf), free(ws), free(dl), free(ktiles), free(qtiles), free(dsk);
        free(far), free(fix);
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY, "%s attn_bwd: out of memory for the dq buffers",
                        kk->name);
    }
    for (int64_t u = 0; one_pass && u < nu; u++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, u / c->Hk, &q0, &sq, &k0, &sk);
        attn_tile x = {u / c->Hk, u % c->Hk, 0, sq, sq * sk + 1, u};
        units[u] = x;
    }
    if (one_pass) cf_attn_cpu_sort_tiles(units, nu);
    /* Issue 13: dbias tasks, one per block of dbias_rows rows of each dbias (b', h'). */
    const int64_t BQ = e->dbias_rows > 0 ? e->dbias_rows : 1, nqb = (c->Sq + BQ - 1) / BQ;
    const int64_t ndb = c->dbias.data ? c->dbias.shape[0] * c->dbias.shape[1] * nqb : 0;
    cf_attn_zero_unused(c);
    /* No more threads than the largest of the region's loops has items. */
    int64_t most = c->B * c->H;
    if ((one_pass ? nu : n) > most) most = one_pass ? nu : n;
    if (!one_pass && nq > most) most = nq;
    if (ndb > most) most = ndb;
    if (nfar > most) most = nfar;
#pragma omp parallel num_threads(cf_threads_items(T, most))
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        char* mine = ws + bytes * (size_t)tid;
        float* ta = (float*)(mine + eb); /* scratch rows for pass 0 */
        float* tb = ta + c->Dv;
        if (kk->thread_begin) kk->thread_begin();
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < nfar; t++)
            e->far(c0, kk, e->geom, far[t].b, far[t].hk, far[t].i0, far[t].i1 - far[t].i0, mine,
                   fix);
#pragma omp for schedule(static)
        for (int64_t e0 = 0; e0 < c->B * c->H; e0++) {
            const int64_t b = e0 / c->H, h = e0 % c->H;
            int64_t q0, sq, k0, sk;
            cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
            for (int64_t i = 0; i < sq; i++) {
                kk->to_f32(ta, row_ptr(&c->dout, b, q0 + i, h), c->dtype, c->Dv);
                kk->to_f32(tb, row_ptr(&c->out, b, q0 + i, h), c->dtype, c->Dv);
                double accd = 0.0; /* Dv terms in double: every dS of the row subtracts it */
                for (int64_t d = 0; d < c->Dv; d++)
                    accd += (double)ta[d] * tb[d];
                const float acc = (float)accd;
                dl[cf_attn_dl_index(c, b, h, q0 + i)] = acc;
                /* dsink = -sum over rows of exp(sink - lse) * rowsum(dO * O) (FA4's form) */
                const float sink = cf_attn_sink(c, h);
                if (dsk && sink != -INFINITY)
                    dsk[e0] += expf((sink - cf_attn_lse_at(c, b, h, q0 + i)) -
                                    cf_attn_lse_fix(c, b, h, q0 + i)) *
                               acc;
            }
        }
        if (one_pass) {
            /* One unit (sequence, KV head) per task: dK/dV per key block, dQ accumulated in the
             * thread's fp32 buffer for the unit's rows. Five products instead of seven. */
            float* dqacc = dqbuf + dq_stride * (size_t)tid;
#pragma omp for schedule(dynamic, 1)
            for (int64_t u = 0; u < nu; u++) {
                const int64_t b = units[u].b, hk = units[u].hk;
                int64_t q0, sq, k0, sk;
                cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
                memset(dqacc, 0, sizeof(float) * (size_t)(G * sq * c->D));
                for (int64_t j0 = 0; j0 < sk; j0 += BKB) {
                    attn_tile kt = {b, hk, j0, j0 + BKB < sk ? j0 + BKB : sk, 0, 0};
                    e->dkdv(c, kk, e->geom, &kt, mine, dl, dqacc);
                }
                for (int64_t gi = 0; gi < G; gi++)
                    for (int64_t i = 0; i < sq; i++)
                        kk->from_f32(row_ptr(&c->dq, b, q0 + i, hk * G + gi),
                                     dqacc + (gi * sq + i) * c->D, c->dtype, c->D);
            }
        } else {
#pragma omp for schedule(dynamic, 1)
            for (int64_t i = 0; i < n; i++)
                e->dkdv(c, kk, e->geom, &ktiles[i], mine, dl, NULL);
#pragma omp for schedule(dynamic, 1)
            for (int64_t i = 0; i < nq; i++)
                e->dq(c, kk, e->geom, &qtiles[i], mine, dl);
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ndb; t++) {
            const int64_t x = t / nqb, i0 = t % nqb * BQ;
            e->dbias(c, kk, e->dbias_geom ? e->dbias_geom : e->geom, x / c->dbias.shape[1],
                     x % c->dbias.shape[1], i0, c->Sq - i0 < BQ ? c->Sq - i0 : BQ, mine, dl);
        }
        if (kk->thread_end) kk->thread_end();
    }
    for (int64_t h = 0; c->dsinks && h < c->H; h++) {
        float acc = 0.0f;
        for (int64_t b = 0; b < c->B; b++)
            acc -= dsk[b * c->H + h];
        c->dsinks[h] = acc;
    }
    free(dsk), free(far), free(fix);
    free(units), free(dqbuf);
    free(ws), free(dl), free(ktiles), free(qtiles);
    return CFLASH_OK;
}

static void dkdv_fn(const cf_attn_call* c, const cf_attn_kernels* kk, const void* geom,
                    const attn_tile* t, char* ws, const float* dl, float* dqacc) {
    dkdv_tile(c, kk, geom, t, ws, dl, dqacc);
}
static void dq_fn(const cf_attn_call* c, const cf_attn_kernels* kk, const void* geom,
                  const attn_tile* t, char* ws, const float* dl) {
    dq_tile(c, kk, geom, t, ws, dl);
}

/* g's layout for c with the mask map and, for a dbias call, its key blocks' flags (kbad; NULL
 * when out of memory: checked every time instead). */
static void bwd_geom_init(const cf_attn_call* c, const cf_attn_kernels* kk,
                          const cf_attn_pairs_gemm* gemm_f16, const cf_attn_mask_map* map,
                          bwd_geom* g) {
    bwd_layout(c, kk, gemm_f16, g);
    g->map = map;
    int64_t nkb = 0;
    g->kbn = (c->Sk + g->bk - 1) / g->bk;
    if (c->dbias.data && !cf_mul_i64(c->B, c->Hk, &nkb) && !cf_mul_i64(nkb, g->kbn, &nkb))
        g->kbad = calloc((size_t)nkb + 1, 1);
}

cflash_status cf_attn_cpu_dbias_tasks(const cf_attn_call* c, const cf_attn_kernels* kk,
                                      const cf_attn_pairs_gemm* gemm_f16,
                                      const cf_attn_mask_map* map, cf_attn_bwd_engine* e) {
    bwd_geom* g = malloc(sizeof *g);
    if (!g)
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY, "%s attn_bwd: out of memory for dbias's layout",
                        kk->name);
    bwd_geom_init(c, kk, gemm_f16, map, g);
    if (g->bq != e->dbias_rows) { /* (both take cf_attn_cpu_blocks().bwd_q) */
        const long long bq = (long long)g->bq;
        free(g->kbad), free(g);
        return cf_error(CFLASH_ERR_BACKEND, "%s attn_bwd: dbias blocks of %lld rows, not %lld",
                        kk->name, (long long)e->dbias_rows, bq);
    }
    e->dbias = dbias_tile;
    e->dbias_geom = g;
    if (e->bytes < g->bytes) e->bytes = g->bytes;
    return CFLASH_OK;
}

void cf_attn_cpu_dbias_free(cf_attn_bwd_engine* e) {
    bwd_geom* g = (bwd_geom*)e->dbias_geom;
    if (g) free(g->kbad), free(g);
    e->dbias_geom = NULL;
}

cflash_status cf_attn_cpu_bwd(const cf_attn_call* c, const cf_attn_kernels* kk) {
    bwd_geom g;
    cf_attn_mask_map* map = cf_attn_cpu_mask_map(c, c->threads);
    bwd_geom_init(c, kk, NULL, map, &g);
    const cf_attn_bwd_engine e = {g.n, g.bk,       g.bytes, dkdv_fn,  dq_fn,
                                  &g,  dbias_tile, g.bq,    far_tile, NULL};
    const cflash_status st = cf_attn_cpu_bwd_run(c, kk, &e);
    cf_attn_cpu_mask_map_free(map);
    free(g.kbad);
    return st;
}
