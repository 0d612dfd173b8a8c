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

/* bf16 rows of a block as 32-bit pairs along d: in place when every row starts even and d is even,
 * else copied into buf (ld = (d + 1) / 2, zero-padded). */
static const uint32_t* rows_pairs(const cf_view* v, int64_t b, int64_t s0, int64_t h, int64_t n,
                                  int64_t d, uint32_t* buf, int64_t* ld) {
    const uint16_t* p = (const uint16_t*)row_ptr(v, b, s0, h);
    if (d % 2 == 0 && (uintptr_t)v->data % 4 == 0 && v->stride[0] % 2 == 0 &&
        v->stride[1] % 2 == 0 && v->stride[2] % 2 == 0) {
        *ld = v->stride[1] / 2;
        return (const uint32_t*)p;
    }
    const int64_t d2 = (d + 1) / 2;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t* r = p + i * v->stride[1];
        for (int64_t q = 0; q < d2; q++)
            buf[i * d2 + q] = (uint32_t)r[2 * q] | (uint32_t)(2 * q + 1 < d ? r[2 * q + 1] : 0)
                                                       << 16;
    }
    *ld = d2;
    return buf;
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

/* Applies masks and the score transform to S rows in place: natural-log scores (scaled,
 * soft-capped, ALiBi-biased), -inf where masked. scale * (q.k) is rounded and stored here exactly
 * as the forward's scale_max_cols rounds it, so exp(s - lse) <= 1 for every score however large
 * (see exp_cols in attn_cpu.h). */
void cf_attn_scores(const cf_attn_call* c, const cf_attn_score_map* mp, float* s, float* y,
                    int64_t sq, int64_t sk) {
    const int general = c->softcap > 0.0f || c->alibi != NULL;
    if (!general) { /* scale all (along the contiguous direction), then mask */
        if (mp->cs == 1)
            for (int64_t ri = 0; ri < mp->nr; ri++)
                for (int64_t ci = 0; ci < mp->nc; ci++)
                    s[ri * mp->rs + ci] *= c->scale;
        else
            for (int64_t ci = 0; ci < mp->nc; ci++)
                for (int64_t ri = 0; ri < mp->nr; ri++)
                    s[ri * mp->rs + ci * mp->cs] *= c->scale;
        int full = 1; /* lo and hi are non-decreasing over the rows */
        for (int64_t ri = 0; ri < mp->nr && full; ri++)
            full = mp->lo[ri] <= mp->j0 && mp->hi[ri] >= mp->j0 + mp->nc;
        if (full) return;
    }
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
            const float x = s[at] * c->scale;
            if (y) y[at] = tanhf(x / c->softcap);
            s[at] = cf_attn_score(c, x, mp->slope[ri], i, j, sq, sk);
        }
    }
}

int cf_attn_bwd_query_rows_bad(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi0, int64_t n,
                               const float* dlr) {
    int bad = 0;
    for (int64_t r = 0; r < n; r++)
        bad |= !(cf_attn_lse_at(c, b, h, qi0 + r) < INFINITY) | (dlr[r] - dlr[r] != 0.0f);
    return bad;
}

int cf_attn_bwd_key_rows_bad(const cf_attn_call* c, int64_t b, int64_t hk, int64_t kj0, int64_t n,
                             int hidden, int64_t lo_last, int64_t hi_first) {
    const int64_t es = (int64_t)cf_dtype_size(c->dtype);
    const char *kp = row_ptr(&c->k, b, kj0, hk), *vp = row_ptr(&c->v, b, kj0, hk);
    const int64_t ks = c->k.stride[1] * es, vs = c->v.stride[1] * es;
    if (!hidden)
        return cf_attn_cpu_rows_nonfinite(kp, ks, n, c->D, c->dtype) ||
               cf_attn_cpu_rows_nonfinite(vp, vs, n, c->Dv, c->dtype);
    return cf_attn_cpu_hidden_nonfinite(kp, ks, 0, n, lo_last, hi_first, c->D, c->dtype) ||
           cf_attn_cpu_hidden_nonfinite(vp, vs, 0, n, lo_last, hi_first, c->Dv, c->dtype);
}

void cf_attn_bwd_exact_pairs(const cf_attn_call* c, int64_t b, int64_t h, int64_t i0, int64_t nq,
                             const float* dlr, int64_t j0, int64_t nb, float* dk, int64_t ldk,
                             float* dv, int64_t ldv, float* dq, int64_t ldq) {
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    const int64_t hk = h / (c->H / c->Hk), D = c->D;
    for (int64_t i = i0; i < i0 + nq; i++) {
        const float lse = cf_attn_lse_at(c, b, h, q0 + i);
        int64_t lo, hi;
        cf_attn_key_range(c, i, sq, sk, &lo, &hi);
        if (lse == -INFINITY) continue; /* a row that saw no key has no gradient */
        for (int64_t j = lo > j0 ? lo : j0; j < hi && j < j0 + nb; j++) {
            const float ds = ref_pair_grad(c, b, h, hk, q0 + i, k0 + j, i, j, sq, sk, lse,
                                           dlr[i - i0], dv ? dv + (j - j0) * ldv : NULL);
            for (int64_t d = 0; d < D; d++) {
                if (dq)
                    dq[(i - i0) * ldq + d] +=
                        ds * cf_load(c->k.data, c->dtype, ref_at4(&c->k, b, k0 + j, hk, d));
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
    /* bf16 mode buffers (uint32 pairs) */
    size_t ktv, vtv, dov, qv, pp, dsp, qa, doa, qv2, dov2, kvv, dsp2, ka, va, dsr;
    /* pass 1 */
    size_t kc, kt, vc, vt, dk, dv, qc, doc, s, dp, pd, y, vec1, map1;
    /* pass 2 */
    size_t qt, dot, dq, st, dpt, y2, kc2, vc2, vec2, map2;
    size_t tmp, bytes;
} bwd_geom;

static void bwd_layout(const cf_attn_call* c, const cf_attn_kernels* kk, bwd_geom* g) {
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
    TAKE(vec1, F * 2 * BQ);
    TAKE(map1, sizeof(int64_t) * 4 * BQ + F * BQ);
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
    g->bf = c->dtype == CF_BF16 && kk->gemm_bf16 != NULL;
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
        TAKE(va, U * BKB * Dvp2);
        TAKE(dsr, U * BQ * hk);
    }
#undef TAKE
    g->bytes = off;
}

size_t cf_attn_cpu_bwd_workspace(const cf_attn_call* c, const cf_attn_kernels* k) {
    bwd_geom g;
    bwd_layout(c, k, &g);
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
          *lb = (float*)(ws + g->vec1), *dlr = lb + BQ;
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
    if (bf && dqacc) /* K as row pairs for dQ += dS K */
        rows_vnni(kk, kvv, (const uint16_t*)row_ptr(&c->k, b, k0 + j0, hk), c->k.stride[1], nb, D);
    if (bf) { /* K^T, V^T as pairs along d, once per key block */
        for (int64_t j = 0; j < nb; j++) {
            pairs_col(ktv, nb, j, (const uint16_t*)row_ptr(&c->k, b, k0 + j0 + j, hk), D);
            pairs_col(vtv, nb, j, (const uint16_t*)row_ptr(&c->v, b, k0 + j0 + j, hk), Dv);
        }
    } else {
        kr = rows_f32(kk, &c->k, b, k0 + j0, hk, nb, D, kc, &ldk);
        int64_t ldv;
        const float* vr = rows_f32(kk, &c->v, b, k0 + j0, hk, nb, Dv, vc, &ldv);
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
            int64_t ldq = 0, ldo = 0, ldqa = 0, ldoa = 0;
            const float *qr = NULL, *dor = NULL;
            const uint32_t *qpa = NULL, *dopa = NULL;
            if (bf) {
                qpa = rows_pairs(&c->q, b, q0 + i0, h, bq, D, qa, &ldqa);
                dopa = rows_pairs(&c->dout, b, q0 + i0, h, bq, Dv, doa, &ldoa);
            } else {
                qr = rows_f32(kk, &c->q, b, q0 + i0, h, bq, D, qc, &ldq);
                dor = rows_f32(kk, &c->dout, b, q0 + i0, h, bq, Dv, doc, &ldo);
            }
            for (int64_t r = 0; r < bq; r++) {
                mi[r] = i0 + r;
                mslope[r] = slope;
                hh[r] = h;
                cf_attn_key_range(c, i0 + r, sq, sk, &mlo[r], &mhi[r]);
                lb[r] = cf_attn_lse_sub(c, b, h, q0 + i0 + r);
                dlr[r] = cf_attn_dl(c, dl, b, h, q0 + i0 + r);
            }
            /* A partly masked block holding a NaN or infinity: pair by pair (see
             * cf_attn_bwd_exact_pairs). */
            if (mlo[bq - 1] > j0 || mhi[0] < j0 + nb) {
                if (kbad < 0) kbad = cf_attn_bwd_key_rows_bad(c, b, hk, k0 + j0, nb, 0, 0, 0);
                if (kbad || cf_attn_bwd_query_rows_bad(c, b, h, q0 + i0, bq, dlr)) {
                    cf_attn_bwd_exact_pairs(c, b, h, i0, bq, dlr, j0, nb, dk, D, dv, Dv,
                                            dqacc ? dqacc + (gi * sq + i0) * D : NULL, D);
                    continue;
                }
            }
            cf_attn_score_map mp = {bq, nb, nb, 1, mi, mslope, j0, mlo, mhi};
            /* P = exp(S - lse) */
            if (bf)
                kk->gemm_bf16(bq, nb, g->Dp2, qpa, ldqa, 1, ktv, nb, s, nb, 0);
            else
                kk->gemm_f32(bq, nb, D, qr, ldq, 1, kt, nb, s, nb, 0);
            cf_attn_scores(c, &mp, s, c->softcap > 0.0f ? y : NULL, sq, sk);
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
            dlr[r] = cf_attn_dl(c, dl, b, h, qi);
            heads[r] = h;
        }
    memset(dq, 0, sizeof(float) * (size_t)(Mt * D));
    const int64_t jlo = mlo[0], jhi = mhi[na - 1];
    int qbad = -1; /* the tile's query rows hold a NaN or infinity (checked when first needed) */
    for (int64_t j0 = jlo; j0 < jhi; j0 += g->bk) {
        const int64_t nb = jhi - j0 < g->bk ? jhi - j0 : g->bk;
        /* A partly masked block holding a NaN or infinity: pair by pair (see
         * cf_attn_bwd_exact_pairs). */
        if (mlo[na - 1] > j0 || mhi[0] < j0 + nb) {
            for (int64_t gi = 0; qbad < 0 && gi < G; gi++)
                if (cf_attn_bwd_query_rows_bad(c, b, hk * G + gi, q0 + i0, na, dlr + gi * na))
                    qbad = 1;
            if (qbad < 0) qbad = 0;
            if (qbad ||
                cf_attn_bwd_key_rows_bad(c, b, hk, k0 + j0, nb, 1, mlo[na - 1] - j0, mhi[0] - j0)) {
                for (int64_t gi = 0; gi < G; gi++)
                    cf_attn_bwd_exact_pairs(c, b, hk * G + gi, i0, na, dlr + gi * na, j0, nb, NULL,
                                            0, NULL, 0, dq + gi * na * D, D);
                continue;
            }
        }
        int64_t ldk = 0, ldv = 0, ldka = 0, ldva = 0;
        const float *kr = NULL, *vr = NULL;
        const uint32_t *kpa = NULL, *vpa = NULL;
        if (bf) {
            kpa = rows_pairs(&c->k, b, k0 + j0, hk, nb, D, kab, &ldka);
            vpa = rows_pairs(&c->v, b, k0 + j0, hk, nb, Dv, vab, &ldva);
        } else {
            kr = rows_f32(kk, &c->k, b, k0 + j0, hk, nb, D, kc, &ldk);
            vr = rows_f32(kk, &c->v, b, k0 + j0, hk, nb, Dv, vc, &ldv);
        }
        cf_attn_score_map mp = {Mt, nb, 1, Mt, mi, mslope, j0, mlo, mhi};
        if (bf)
            kk->gemm_bf16(nb, Mt, g->Dp2, kpa, ldka, 1, qv2, Mt, st, Mt, 0);
        else
            kk->gemm_f32(nb, Mt, D, kr, ldk, 1, qt, Mt, st, Mt, 0); /* S^T = K Q^T */
        cf_attn_scores(c, &mp, st, c->softcap > 0.0f ? y : NULL, sq, sk);
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
            rows_vnni(kk, kvv, (const uint16_t*)row_ptr(&c->k, b, k0 + j0, hk), c->k.stride[1], nb,
                      D);
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
    if (!qtiles || !ktiles || !dl || !ws) {
        free(qtiles), free(ktiles), free(dl), free(ws);
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY,
                        "%s attn_bwd: out of memory for %d threads x %zu bytes of workspace and "
                        "%lld floats of rowsum(dO * O)",
                        kk->name, T, bytes, (long long)(rows * c->H));
    }
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
        free(units), free(dqbuf), free(ws), free(dl), free(ktiles), free(qtiles);
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
    /* No more threads than the largest of the region's loops has items. */
    int64_t most = c->B * c->H;
    if ((one_pass ? nu : n) > most) most = one_pass ? nu : n;
    if (!one_pass && nq > most) most = nq;
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
#pragma omp for schedule(static)
        for (int64_t e0 = 0; e0 < c->B * c->H; e0++) {
            const int64_t b = e0 / c->H, h = e0 % c->H;
            int64_t q0, sq, k0, sk;
            cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
            for (int64_t i = 0; i < sq; i++) {
                kk->to_f32(ta, row_ptr(&c->dout, b, q0 + i, h), c->dtype, c->Dv);
                kk->to_f32(tb, row_ptr(&c->out, b, q0 + i, h), c->dtype, c->Dv);
                float acc = 0.0f;
                for (int64_t d = 0; d < c->Dv; d++)
                    acc += ta[d] * tb[d];
                dl[h * rows + cf_attn_dl_row(c, b, q0 + i)] = acc;
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
        if (kk->thread_end) kk->thread_end();
    }
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

cflash_status cf_attn_cpu_bwd(const cf_attn_call* c, const cf_attn_kernels* kk) {
    bwd_geom g;
    bwd_layout(c, kk, &g);
    const cf_attn_bwd_engine e = {g.n, g.bk, g.bytes, dkdv_fn, dq_fn, &g};
    return cf_attn_cpu_bwd_run(c, kk, &e);
}
