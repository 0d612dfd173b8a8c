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

#include "core/philox.h"
#include "core/status.h"
#include "cpu/attn_cpu.h"

#define LOG2E 1.4426950408889634f

static inline char* row_ptr(const cf_view* v, int64_t b, int64_t s, int64_t h) {
    return (char*)v->data + (b * v->stride[0] + s * v->stride[1] + h * v->stride[2]) *
                                (int64_t)cf_dtype_size(v->dtype);
}

static size_t align64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

/* Rows of a block as fp32: in place for fp32 (ld = the view's row stride), else converted into
 * buf (ld = d). */
static const float* rows_f32(const cf_attn_kernels* kk, const cf_view* v, int64_t b, int64_t s0,
                             int64_t h, int64_t n, int64_t d, float* buf, int64_t* ld) {
    const char* p = row_ptr(v, b, s0, h);
    if (v->dtype == CF_F32) {
        *ld = v->stride[1];
        return (const float*)p;
    }
    const int64_t es = (int64_t)cf_dtype_size(v->dtype) * v->stride[1];
    for (int64_t i = 0; i < n; i++)
        kk->to_f32(buf + i * d, p + i * es, v->dtype, d);
    *ld = d;
    return buf;
}

/* dst[c * n + r] = src[r * lds + c] for r < n, c < d. */
static void transpose(float* dst, const float* src, int64_t lds, int64_t n, int64_t d) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < d; c++)
            dst[c * n + r] = src[r * lds + c];
}

/* Global row of (b, q0 + i) in the dl buffer. */
static inline int64_t dl_row(const cf_attn_call* c, int64_t b, int64_t qi) {
    return c->varlen ? qi : b * c->Sq + qi;
}

static inline float lse_at(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi) {
    return ((const float*)
                c->lse.data)[b * c->lse.stride[0] + h * c->lse.stride[1] + qi * c->lse.stride[2]];
}

/* The subtrahend of exp2(x * s - m) for a row: lse in log2 units; +inf for a row that saw no key
 * (its P is 0). */
static inline float lse2(float lse) {
    return lse == -INFINITY ? INFINITY : lse * LOG2E;
}

/* First query row i in [0, sq) with hi(i) > j0 and one past the last with lo(i) < j1: the rows
 * that see some key of [j0, j1) lie in [*a, *z) (lo and hi are non-decreasing in i). */
static void rows_seeing(const cf_attn_call* c, int64_t sq, int64_t sk, int64_t j0, int64_t j1,
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

/* Applies masks and the score transform to S rows (log2 units afterwards, unscaled when plain):
 * returns the scale exp must still apply (s2 when plain, 1 when transformed here). y, when
 * non-NULL, receives the soft-capped score / cap (tanh) for the softcap derivative. Element
 * (row ri, col ci) of s is query i(ri), key j(ci), at s[ri * rs + ci * cs]. */
typedef struct score_map {
    int64_t nr, nc, rs, cs;
    const int64_t* i;       /* query position per row */
    const float* slope;     /* ALiBi slope per row */
    int64_t j0;             /* key of column 0 */
    const int64_t *lo, *hi; /* per row */
} score_map;

static float scores(const cf_attn_call* c, const score_map* mp, float* s, float* y, int64_t sq,
                    int64_t sk) {
    const int general = c->softcap > 0.0f || c->alibi != NULL;
    for (int64_t ri = 0; ri < mp->nr; ri++) {
        const int64_t lo = mp->lo[ri], hi = mp->hi[ri], i = mp->i[ri];
        for (int64_t ci = 0; ci < mp->nc; ci++) {
            const int64_t j = mp->j0 + ci, at = ri * mp->rs + ci * mp->cs;
            if (j < lo || j >= hi) {
                s[at] = -INFINITY;
                if (y) y[at] = 0.0f;
                continue;
            }
            if (!general) continue;
            float x = s[at] * c->scale;
            if (y) y[at] = tanhf(x / c->softcap);
            s[at] = cf_attn_score(c, x, mp->slope[ri], i, j, sq, sk) * LOG2E;
        }
    }
    return general ? 1.0f : c->scale * LOG2E;
}

/* ---- Workspace ------------------------------------------------------------------------------ */

#define BQ CF_ATTN_BWD_BLOCK_Q
#define BKB CF_ATTN_BWD_BLOCK_K

typedef struct bwd_geom {
    int64_t G, n, M, D, Dv, W;
    /* pass 1 */
    size_t kc, kt, vc, vt, dk, dv, qc, doc, s, dp, pd, y, vec1, map1;
    /* pass 2 */
    size_t qt, dot, dq, st, dpt, y2, kc2, vc2, vec2, map2;
    size_t tmp, bytes;
} bwd_geom;

static void bwd_layout(const cf_attn_call* c, bwd_geom* g) {
    g->G = c->H / c->Hk;
    g->n = BQ / g->G > 0 ? BQ / g->G : 1;
    g->M = g->G * g->n;
    g->D = c->D;
    g->Dv = c->Dv;
    g->W = g->D > g->Dv ? g->D : g->Dv;
    const size_t F = sizeof(float), D = (size_t)g->D, Dv = (size_t)g->Dv, M = (size_t)g->M;
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
    TAKE(vec1, F * 2 * BQ);
    TAKE(map1, sizeof(int64_t) * 3 * BQ + F * BQ);
    TAKE(qt, F * D * M);
    TAKE(dot, F * Dv * M);
    TAKE(dq, F * M * D);
    TAKE(st, F * BKB * M);
    TAKE(dpt, F * BKB * M);
    TAKE(y2, F * BKB * M);
    TAKE(kc2, F * BKB * D);
    TAKE(vc2, F * BKB * Dv);
    TAKE(vec2, F * 2 * M);
    TAKE(map2, sizeof(int64_t) * 4 * M + F * M);
    TAKE(tmp, F * (size_t)g->W + 64);
#undef TAKE
    g->bytes = off;
}

size_t cf_attn_cpu_bwd_workspace(const cf_attn_call* c, const cf_attn_kernels* k) {
    (void)k;
    bwd_geom g;
    bwd_layout(c, &g);
    return g.bytes;
}

/* Zeroes dropped entries of a (rows x cols) block and scales kept ones by ks. Row ri is query
 * i[ri] of head h[ri]; column ci is key j0 + ci; element at x[ri * rs + ci * cs]. */
static void dropout_apply(const cf_attn_call* c, float* x, const score_map* mp, const int64_t* hh,
                          int64_t b, float ks) {
    const uint64_t thr = cf_dropout_threshold(c->dropout_p);
    for (int64_t ri = 0; ri < mp->nr; ri++) {
        cf_philox_out w = {{0, 0, 0, 0}};
        for (int64_t ci = 0; ci < mp->nc; ci++) {
            const int64_t j = mp->j0 + ci, at = ri * mp->rs + ci * mp->cs;
            if (ci == 0 || (j & 3) == 0)
                w = cf_dropout_words(c->seed, c->offset, (uint64_t)b, (uint64_t)hh[ri],
                                     (uint64_t)mp->i[ri], (uint64_t)j);
            x[at] = (uint64_t)w.x[j & 3] < thr ? x[at] * ks : 0.0f;
        }
    }
}

/* ---- Pass 1: dK, dV of one key block ----------------------------------------------------------
 */

static void dkdv_tile(const cf_attn_call* c, const cf_attn_kernels* kk, const bwd_geom* g,
                      const attn_tile* t, char* ws, const float* dl) {
    const int64_t b = t->b, hk = t->hk, j0 = t->i0, nb = t->i1 - t->i0, D = g->D, Dv = g->Dv;
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    float *kc = (float*)(ws + g->kc), *kt = (float*)(ws + g->kt), *vc = (float*)(ws + g->vc),
          *vt = (float*)(ws + g->vt), *dk = (float*)(ws + g->dk), *dv = (float*)(ws + g->dv),
          *qc = (float*)(ws + g->qc), *doc = (float*)(ws + g->doc), *s = (float*)(ws + g->s),
          *dp = (float*)(ws + g->dp), *pd = (float*)(ws + g->pd), *y = (float*)(ws + g->y),
          *lb = (float*)(ws + g->vec1), *dlr = lb + BQ;
    int64_t *mi = (int64_t*)(ws + g->map1), *mlo = mi + BQ, *mhi = mlo + BQ;
    float* mslope = (float*)(mhi + BQ);
    const float ks = 1.0f / (1.0f - c->dropout_p);
    int64_t ldk, ldv;
    const float* kr = rows_f32(kk, &c->k, b, k0 + j0, hk, nb, D, kc, &ldk);
    const float* vr = rows_f32(kk, &c->v, b, k0 + j0, hk, nb, Dv, vc, &ldv);
    transpose(kt, kr, ldk, nb, D);
    transpose(vt, vr, ldv, nb, Dv);
    memset(dk, 0, sizeof(float) * (size_t)(nb * D));
    memset(dv, 0, sizeof(float) * (size_t)(nb * Dv));
    int64_t ia, iz;
    rows_seeing(c, sq, sk, j0, j0 + nb, &ia, &iz);
    for (int64_t gi = 0; gi < g->G; gi++) {
        const int64_t h = hk * g->G + gi;
        const float slope = cf_attn_slope(c, b, h);
        for (int64_t i0 = ia; i0 < iz; i0 += BQ) {
            const int64_t bq = iz - i0 < BQ ? iz - i0 : BQ;
            int64_t ldq, ldo;
            const float* qr = rows_f32(kk, &c->q, b, q0 + i0, h, bq, D, qc, &ldq);
            const float* dor = rows_f32(kk, &c->dout, b, q0 + i0, h, bq, Dv, doc, &ldo);
            int64_t hh[BQ];
            for (int64_t r = 0; r < bq; r++) {
                mi[r] = i0 + r;
                mslope[r] = slope;
                hh[r] = h;
                cf_attn_key_range(c, i0 + r, sq, sk, &mlo[r], &mhi[r]);
                lb[r] = lse2(lse_at(c, b, h, q0 + i0 + r));
                dlr[r] =
                    dl[h * (c->varlen ? c->total_q : c->B * c->Sq) + dl_row(c, b, q0 + i0 + r)];
            }
            score_map mp = {bq, nb, nb, 1, mi, mslope, j0, mlo, mhi};
            /* P = exp2(S * s - lse2) */
            kk->gemm_f32(bq, nb, D, qr, ldq, 1, kt, nb, s, nb, 0);
            const float sx = scores(c, &mp, s, c->softcap > 0.0f ? y : NULL, sq, sk);
            for (int64_t r = 0; r < bq; r++)
                kk->exp_row(s + r * nb, nb, sx, lb[r]);
            const float* pw = s;
            if (c->dropout_p > 0.0f) {
                memcpy(pd, s, sizeof(float) * (size_t)(bq * nb));
                dropout_apply(c, pd, &mp, hh, b, ks);
                pw = pd;
            }
            kk->gemm_f32(nb, Dv, bq, pw, 1, nb, dor, ldo, dv, Dv, 1); /* dV += P^T dO */
            kk->gemm_f32(bq, nb, Dv, dor, ldo, 1, vt, nb, dp, nb, 0); /* dP = dO V^T */
            if (c->dropout_p > 0.0f) dropout_apply(c, dp, &mp, hh, b, ks);
            for (int64_t r = 0; r < bq; r++)
                kk->ds_row(dp + r * nb, s + r * nb, dp + r * nb, nb, dlr[r], c->scale);
            if (c->softcap > 0.0f)
                for (int64_t e = 0; e < bq * nb; e++)
                    dp[e] *= 1.0f - y[e] * y[e];
            kk->gemm_f32(nb, D, bq, dp, 1, nb, qr, ldq, dk, D, 1); /* dK += dS^T Q */
        }
    }
    for (int64_t j = 0; j < nb; j++) {
        kk->from_f32(row_ptr(&c->dk, b, k0 + j0 + j, hk), dk + j * D, c->dtype, D);
        kk->from_f32(row_ptr(&c->dv, b, k0 + j0 + j, hk), dv + j * Dv, c->dtype, Dv);
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
          *dlr = lb + Mt, *tmp = (float*)(ws + g->tmp);
    int64_t *mi = (int64_t*)(ws + g->map2), *mlo = mi + Mt, *mhi = mlo + Mt, *heads = mhi + Mt;
    float* mslope = (float*)(heads + Mt);
    const float ks = 1.0f / (1.0f - c->dropout_p);
    for (int64_t gi = 0; gi < G; gi++)
        for (int64_t ii = 0; ii < na; ii++) {
            const int64_t r = gi * na + ii, h = hk * G + gi, qi = q0 + i0 + ii;
            kk->to_f32(tmp, row_ptr(&c->q, b, qi, h), c->dtype, D);
            for (int64_t d = 0; d < D; d++)
                qt[d * Mt + r] = tmp[d];
            kk->to_f32(tmp, row_ptr(&c->dout, b, qi, h), c->dtype, Dv);
            for (int64_t d = 0; d < Dv; d++)
                dot[d * Mt + r] = tmp[d];
            mi[r] = i0 + ii;
            mslope[r] = cf_attn_slope(c, b, h);
            cf_attn_key_range(c, i0 + ii, sq, sk, &mlo[r], &mhi[r]);
            lb[r] = lse2(lse_at(c, b, h, qi));
            dlr[r] = dl[h * (c->varlen ? c->total_q : c->B * c->Sq) + dl_row(c, b, qi)];
            heads[r] = h;
        }
    memset(dq, 0, sizeof(float) * (size_t)(Mt * D));
    const int64_t jlo = mlo[0], jhi = mhi[na - 1];
    for (int64_t j0 = jlo; j0 < jhi; j0 += BKB) {
        const int64_t nb = jhi - j0 < BKB ? jhi - j0 : BKB;
        int64_t ldk, ldv;
        const float* kr = rows_f32(kk, &c->k, b, k0 + j0, hk, nb, D, kc, &ldk);
        const float* vr = rows_f32(kk, &c->v, b, k0 + j0, hk, nb, Dv, vc, &ldv);
        score_map mp = {Mt, nb, 1, Mt, mi, mslope, j0, mlo, mhi};
        kk->gemm_f32(nb, Mt, D, kr, ldk, 1, qt, Mt, st, Mt, 0); /* S^T = K Q^T */
        const float sx = scores(c, &mp, st, c->softcap > 0.0f ? y : NULL, sq, sk);
        for (int64_t j = 0; j < nb; j++)
            kk->exp_cols(st + j * Mt, Mt, sx, lb, NULL);
        kk->gemm_f32(nb, Mt, Dv, vr, ldv, 1, dot, Mt, dpt, Mt, 0); /* dP^T = V dO^T */
        if (c->dropout_p > 0.0f) dropout_apply(c, dpt, &mp, heads, b, ks);
        for (int64_t j = 0; j < nb; j++)
            kk->ds_cols(dpt + j * Mt, st + j * Mt, dpt + j * Mt, Mt, dlr, c->scale);
        if (c->softcap > 0.0f)
            for (int64_t e = 0; e < nb * Mt; e++)
                dpt[e] *= 1.0f - y[e] * y[e];
        kk->gemm_f32(Mt, D, nb, dpt, 1, Mt, kr, ldk, dq, D, 1); /* dQ += dS K */
    }
    for (int64_t gi = 0; gi < G; gi++)
        for (int64_t ii = 0; ii < na; ii++)
            kk->from_f32(row_ptr(&c->dq, b, q0 + i0 + ii, hk * G + gi), dq + (gi * na + ii) * D,
                         c->dtype, D);
}

/* ---- Driver -----------------------------------------------------------------------------------
 */

cflash_status cf_attn_cpu_bwd(const cf_attn_call* c, const cf_attn_kernels* kk) {
    bwd_geom g;
    bwd_layout(c, &g);
    const int T = c->threads > 0 ? c->threads : 1;
    const int64_t rows = c->varlen ? c->total_q : c->B * c->Sq;
    int64_t nq = 0, nk = 0;
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        nk += (sk + BKB - 1) / BKB * c->Hk;
    }
    attn_tile* qtiles = cf_attn_cpu_q_tiles(c, g.n, &nq);
    attn_tile* ktiles = malloc(sizeof *ktiles * (size_t)(nk > 0 ? nk : 1));
    float* dl = malloc(sizeof(float) * (size_t)(rows * c->H > 0 ? rows * c->H : 1));
    char* ws = aligned_alloc(64, g.bytes * (size_t)T);
    if (!qtiles || !ktiles || !dl || !ws) {
        free(qtiles), free(ktiles), free(dl), free(ws);
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY,
                        "%s attn_bwd: out of memory for %d threads x %zu bytes of workspace and "
                        "%lld floats of rowsum(dO * O)",
                        kk->name, T, g.bytes, (long long)(rows * c->H));
    }
    int64_t n = 0;
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        for (int64_t hk = 0; hk < c->Hk; hk++)
            for (int64_t j0 = 0; j0 < sk; j0 += BKB) {
                int64_t j1 = j0 + BKB < sk ? j0 + BKB : sk, a, z;
                rows_seeing(c, sq, sk, j0, j1, &a, &z);
                attn_tile x = {b, hk, j0, j1, (z - a) * (j1 - j0) + 1, n};
                ktiles[n++] = x;
            }
    }
    cf_attn_cpu_sort_tiles(ktiles, n);
#pragma omp parallel num_threads(T)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        char* mine = ws + g.bytes * (size_t)tid;
        float* ta = (float*)(mine + g.kc); /* scratch rows for pass 0 */
        float* tb = (float*)(mine + g.vc);
        if (kk->thread_begin) kk->thread_begin();
#pragma omp for schedule(static)
        for (int64_t e = 0; e < c->B * c->H; e++) {
            const int64_t b = e / c->H, h = e % c->H;
            int64_t q0, sq, k0, sk;
            cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
            for (int64_t i = 0; i < sq; i++) {
                kk->to_f32(ta, row_ptr(&c->dout, b, q0 + i, h), c->dtype, c->Dv);
                kk->to_f32(tb, row_ptr(&c->out, b, q0 + i, h), c->dtype, c->Dv);
                float acc = 0.0f;
                for (int64_t d = 0; d < c->Dv; d++)
                    acc += ta[d] * tb[d];
                dl[h * rows + dl_row(c, b, q0 + i)] = acc;
            }
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n; i++)
            dkdv_tile(c, kk, &g, &ktiles[i], mine, dl);
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < nq; i++)
            dq_tile(c, kk, &g, &qtiles[i], mine, dl);
        if (kk->thread_end) kk->thread_end();
    }
    free(ws), free(dl), free(ktiles), free(qtiles);
    return CFLASH_OK;
}
