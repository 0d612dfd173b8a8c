/* KV-cache attention (flash_attn_with_kvcache semantics) against an fp64 reference on every CPU
 * backend: in-place append of new k/v, rotary on q and the new k (interleaved or not, partial),
 * paged caches (page sizes 1, 16, 256) through a shuffled block table, cache_batch_idx, left
 * padding, ragged cache_seqlens (tensor, scalar, whole cache), causal, window, softcap, ALiBi,
 * GQA/MQA, split-KV (num_splits 0, 1, 3), LSE; the caches outside the appended rows must stay
 * untouched. One test per error path. Usage: test_kvcache [-v] */
#include <math.h>
#include <stdlib.h>

#include "common/testutil.h"
#include "oracle/ops_oracle.h"

static int verbose;

typedef struct kcase {
    cf_dtype dtype;
    int64_t B, H, Hk, Sq, D, Dv, Sn, Lmax;
    int64_t page; /* 0 = not paged */
    int batch_idx, leftpad;
    int64_t half; /* rotary dims / 2; 0 = none */
    int interleaved, causal;
    int64_t wl, wr;
    float softcap;
    int alibi; /* 0 none, 1 [H], 2 [B, H] */
    int num_splits;
    int seqlen_mode; /* 0 tensor, 1 scalar, 2 whole cache (-1) */
    int lse;
    tt_layout layout;
    uint64_t seed;
} kcase;

typedef struct kprob {
    kcase c;
    int64_t Sc, Bc, pps, npages, S_ro;
    int32_t L[8], P[8], bidx[8];
    int32_t* bt; /* (B, pps) */
    tt_tensor q, kc, vc, kn, vn, cs, sn, out, lse, alibi, t_seq, t_bidx, t_lp, t_bt;
    tt_tensor kc0, vc0; /* snapshots */
} kprob;

static double g4(const tt_tensor* t, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t idx[4] = {a, b, c, d};
    return tt_get(t, idx);
}

static void cache_loc(const kprob* p, int64_t b, int64_t t, int64_t* page, int64_t* row) {
    if (p->c.page) {
        *page = p->bt[b * p->pps + t / p->c.page];
        *row = t % p->c.page;
    } else {
        *page = p->c.batch_idx ? p->bidx[b] : b;
        *row = t;
    }
}

/* rotate v[0..D) at position pos in fp64 */
static void rot(const kprob* p, double* v, int64_t pos) {
    for (int64_t i = 0; i < p->c.half; i++) {
        int64_t ia = p->c.interleaved ? 2 * i : i,
                ib = p->c.interleaved ? 2 * i + 1 : i + p->c.half;
        int64_t ci[2] = {pos, i};
        double co = tt_get(&p->cs, ci), si = tt_get(&p->sn, ci), a = v[ia], b = v[ib];
        v[ia] = a * co - b * si;
        v[ib] = a * si + b * co;
    }
}

/* Expected K or V row t of batch b, head hk after the append (rounded to the dtype). */
static void kv_row(const kprob* p, int is_v, int64_t b, int64_t t, int64_t hk, double* v) {
    const kcase* c = &p->c;
    int64_t n = is_v ? c->Dv : c->D;
    if (t >= p->L[b]) {
        for (int64_t d = 0; d < n; d++)
            v[d] = g4(is_v ? &p->vn : &p->kn, b, t - p->L[b], hk, d);
        if (!is_v && c->half) {
            rot(p, v, t);
            for (int64_t d = 0; d < n; d++)
                v[d] = ops_round(c->dtype, v[d]);
        }
    } else {
        int64_t pg, row;
        cache_loc(p, b, t, &pg, &row);
        for (int64_t d = 0; d < n; d++)
            v[d] = g4(is_v ? &p->vc0 : &p->kc0, pg, row, hk, d);
    }
}

static float slope(const kprob* p, int64_t b, int64_t h) {
    if (!p->c.alibi) return 0;
    int64_t i2[2] = {b, h}, i1[1] = {h};
    return (float)tt_get(&p->alibi, p->c.alibi == 2 ? i2 : i1);
}

/* out (B, Sq, H, Dv) and lse (B, H, Sq) row-major; naive = fp32 scores and P rounded to dtype. */
static void oracle(const kprob* p, int naive, double* out, double* lse) {
    const kcase* c = &p->c;
    const double scale = 1.0 / sqrt((double)c->D);
    double *q = malloc(8 * (size_t)c->D), *kr = malloc(8 * (size_t)c->D),
           *vr = malloc(8 * (size_t)c->Dv);
    int64_t maxk = p->Sc + 1;
    double *s = malloc(8 * (size_t)maxk), *acc = malloc(8 * (size_t)c->Dv);
    for (int64_t b = 0; b < c->B; b++) {
        int64_t L = p->L[b], P = p->P[b], sk = L + c->Sn - P;
        for (int64_t h = 0; h < c->H; h++) {
            int64_t hk = h / (c->H / c->Hk);
            for (int64_t i = 0; i < c->Sq; i++) {
                for (int64_t d = 0; d < c->D; d++)
                    q[d] = g4(&p->q, b, i, h, d);
                if (c->half) {
                    int local = c->causal || c->wl >= 0 || c->wr >= 0;
                    rot(p, q, local ? L + i : L);
                    for (int64_t d = 0; d < c->D; d++)
                        q[d] = ops_round(c->dtype, q[d]);
                }
                int64_t diag = i + sk - c->Sq, lo = 0, hi = sk;
                int64_t wr = c->causal ? 0 : c->wr;
                if (c->wl >= 0 && diag - c->wl > lo) lo = diag - c->wl;
                if (wr >= 0 && diag + wr + 1 < hi) hi = diag + wr + 1;
                double m = -INFINITY, l = 0;
                for (int64_t j = lo; j < hi; j++) {
                    kv_row(p, 0, b, P + j, hk, kr);
                    double dot = 0;
                    for (int64_t d = 0; d < c->D; d++)
                        dot += q[d] * kr[d];
                    double x = dot * scale;
                    if (naive) x = (float)x;
                    if (c->softcap > 0) x = c->softcap * tanh(x / c->softcap);
                    x -= slope(p, b, h) * fabs((double)(diag - j));
                    if (naive) x = ops_round(c->dtype, x);
                    s[j] = x;
                    if (x > m) m = x;
                }
                for (int64_t d = 0; d < c->Dv; d++)
                    acc[d] = 0;
                for (int64_t j = lo; j < hi; j++) {
                    double e = exp(s[j] - m);
                    l += e;
                    if (naive) e = ops_round(c->dtype, e);
                    kv_row(p, 1, b, P + j, hk, vr);
                    for (int64_t d = 0; d < c->Dv; d++)
                        acc[d] += e * vr[d];
                }
                for (int64_t d = 0; d < c->Dv; d++) {
                    double o = l > 0 ? acc[d] / l : 0.0;
                    out[((b * c->Sq + i) * c->H + h) * c->Dv + d] =
                        naive ? ops_round(c->dtype, o) : o;
                }
                double ls = l > 0 ? m + log(l) : -INFINITY;
                lse[(b * c->H + h) * c->Sq + i] = naive ? (float)ls : ls;
            }
        }
    }
    free(q), free(kr), free(vr), free(s), free(acc);
}

static void build(kprob* p, const kcase* c) {
    memset(p, 0, sizeof *p);
    p->c = *c;
    tt_rng r;
    tt_rng_init(&r, c->seed);
    for (int64_t b = 0; b < c->B; b++) {
        p->L[b] = (int32_t)(b == 0 ? c->Lmax : (int64_t)(tt_rng_u64(&r) % (uint64_t)(c->Lmax + 1)));
        if (c->seqlen_mode) p->L[b] = (int32_t)c->Lmax;
        p->P[b] = c->leftpad ? (int32_t)(tt_rng_u64(&r) % (uint64_t)(p->L[b] + 1)) : 0;
    }
    p->Sc = c->Lmax + c->Sn + (c->seqlen_mode == 2 ? 0 : 3);
    if (c->page) {
        p->pps = (p->Sc + c->page - 1) / c->page;
        p->npages = c->B * p->pps + 3;
        if (c->seqlen_mode == 2) p->Sc = p->pps * c->page; /* whole cache = all pages */
        for (int64_t b = 0; b < c->B && c->seqlen_mode == 2; b++)
            p->L[b] = (int32_t)p->Sc;
        p->bt = malloc(sizeof(int32_t) * (size_t)(c->B * p->pps));
        int32_t* perm = malloc(sizeof(int32_t) * (size_t)p->npages);
        for (int64_t i = 0; i < p->npages; i++)
            perm[i] = (int32_t)i;
        for (int64_t i = p->npages - 1; i > 0; i--) {
            int64_t j = (int64_t)(tt_rng_u64(&r) % (uint64_t)(i + 1));
            int32_t t = perm[i];
            perm[i] = perm[j], perm[j] = t;
        }
        memcpy(p->bt, perm, sizeof(int32_t) * (size_t)(c->B * p->pps));
        free(perm);
        int64_t s[4] = {p->npages, c->page, c->Hk, c->D},
                sv[4] = {p->npages, c->page, c->Hk, c->Dv};
        tt_alloc(&p->kc, c->dtype, 4, s, c->layout);
        tt_alloc(&p->vc, c->dtype, 4, sv, c->layout);
        int64_t bs[2] = {c->B, p->pps};
        tt_alloc(&p->t_bt, CF_I32, 2, bs, TT_DENSE);
        memcpy(p->t_bt.dl.data, p->bt, sizeof(int32_t) * (size_t)(c->B * p->pps));
    } else {
        if (c->seqlen_mode == 2)
            for (int64_t b = 0; b < c->B; b++)
                p->L[b] = (int32_t)p->Sc;
        p->Bc = c->B + (c->batch_idx ? 2 : 0);
        for (int64_t b = 0; b < c->B; b++)
            p->bidx[b] = (int32_t)(p->Bc - 1 - b);
        int64_t s[4] = {p->Bc, p->Sc, c->Hk, c->D}, sv[4] = {p->Bc, p->Sc, c->Hk, c->Dv};
        tt_alloc(&p->kc, c->dtype, 4, s, c->layout);
        tt_alloc(&p->vc, c->dtype, 4, sv, c->layout);
    }
    if (c->seqlen_mode == 2)
        for (int64_t b = 0; b < c->B; b++)
            p->P[b] = c->leftpad ? p->P[b] : 0;
    tt_random(&p->kc, c->seed + 1, -1, 1);
    tt_random(&p->vc, c->seed + 2, -1, 1);
    tt_alloc_like(&p->kc0, &p->kc), memcpy(p->kc0.base, p->kc.base, p->kc.bytes);
    tt_alloc_like(&p->vc0, &p->vc), memcpy(p->vc0.base, p->vc.base, p->vc.bytes);
    int64_t qs[4] = {c->B, c->Sq, c->H, c->D}, os[4] = {c->B, c->Sq, c->H, c->Dv},
            ls[3] = {c->B, c->H, c->Sq};
    tt_alloc(&p->q, c->dtype, 4, qs, c->layout);
    tt_random(&p->q, c->seed + 3, -1, 1);
    tt_alloc(&p->out, c->dtype, 4, os, c->layout);
    tt_alloc(&p->lse, CF_F32, 3, ls, TT_DENSE);
    if (c->Sn) {
        int64_t ns[4] = {c->B, c->Sn, c->Hk, c->D}, nv[4] = {c->B, c->Sn, c->Hk, c->Dv};
        tt_alloc(&p->kn, c->dtype, 4, ns, c->layout);
        tt_alloc(&p->vn, c->dtype, 4, nv, TT_DENSE);
        tt_random(&p->kn, c->seed + 4, -1, 1);
        tt_random(&p->vn, c->seed + 5, -1, 1);
    }
    if (c->half) {
        p->S_ro = p->Sc + c->Sq + 1;
        int64_t cs[2] = {p->S_ro, c->half};
        tt_alloc(&p->cs, c->dtype, 2, cs, TT_DENSE);
        tt_alloc(&p->sn, c->dtype, 2, cs, TT_DENSE);
        for (int64_t t = 0; t < p->S_ro; t++)
            for (int64_t i = 0; i < c->half; i++) {
                double a = tt_rng_uniform(&r) * 6.283185307179586;
                int64_t idx[2] = {t, i};
                tt_set(&p->cs, idx, cos(a));
                tt_set(&p->sn, idx, sin(a));
            }
    }
    if (c->alibi) {
        int64_t a1[1] = {c->H}, a2[2] = {c->B, c->H};
        tt_alloc(&p->alibi, CF_F32, c->alibi, c->alibi == 1 ? a1 : a2, TT_DENSE);
        tt_random(&p->alibi, c->seed + 6, 0.01, 0.3);
    }
    int64_t nb[1] = {c->B};
    tt_alloc(&p->t_seq, CF_I32, 1, nb, TT_DENSE);
    memcpy(p->t_seq.dl.data, p->L, 4 * (size_t)c->B);
    tt_alloc(&p->t_bidx, CF_I32, 1, nb, TT_DENSE);
    memcpy(p->t_bidx.dl.data, p->bidx, 4 * (size_t)c->B);
    tt_alloc(&p->t_lp, CF_I32, 1, nb, TT_DENSE);
    memcpy(p->t_lp.dl.data, p->P, 4 * (size_t)c->B);
}

static void release(kprob* p) {
    tt_tensor* ts[] = {&p->q,    &p->kc,   &p->vc,  &p->kn,    &p->vn,    &p->cs,
                       &p->sn,   &p->out,  &p->lse, &p->alibi, &p->t_seq, &p->t_bidx,
                       &p->t_lp, &p->t_bt, &p->kc0, &p->vc0};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        tt_free(ts[i]);
    free(p->bt);
}

static void params(const kprob* p, cflash_attn_params* ap, cflash_kvcache_params* kp) {
    const kcase* c = &p->c;
    cflash_attn_params_init(ap);
    ap->causal = c->causal;
    ap->window_left = c->wl;
    ap->window_right = c->wr;
    ap->softcap = c->softcap;
    ap->alibi_slopes = c->alibi ? &p->alibi.dl : NULL;
    cflash_kvcache_params_init(kp);
    kp->k_new = c->Sn ? &p->kn.dl : NULL;
    kp->v_new = c->Sn ? &p->vn.dl : NULL;
    kp->rotary_cos = c->half ? &p->cs.dl : NULL;
    kp->rotary_sin = c->half ? &p->sn.dl : NULL;
    kp->rotary_interleaved = c->interleaved;
    kp->cache_seqlens = c->seqlen_mode == 0 ? &p->t_seq.dl : NULL;
    kp->cache_seqlen = c->seqlen_mode == 1 ? c->Lmax : -1;
    kp->cache_batch_idx = c->batch_idx && !c->page ? &p->t_bidx.dl : NULL;
    kp->cache_leftpad = c->leftpad ? &p->t_lp.dl : NULL;
    kp->block_table = c->page ? &p->t_bt.dl : NULL;
    kp->num_splits = c->num_splits;
}

/* Caches after a call: appended rows as expected (rotation may round 1 ulp apart), the rest
 * bit-identical to the snapshot. Returns the number of bad elements. */
static int64_t check_caches(const kprob* p) {
    const kcase* c = &p->c;
    int64_t bad = 0;
    unsigned char* written = calloc((size_t)(p->kc.shape[0] * p->kc.shape[1]), 1);
    double* v = malloc(8 * (size_t)(c->D > c->Dv ? c->D : c->Dv));
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t t = p->L[b]; t < p->L[b] + c->Sn; t++) {
            int64_t pg, row;
            cache_loc(p, b, t, &pg, &row);
            written[pg * p->kc.shape[1] + row] = 1;
            for (int64_t hk = 0; hk < c->Hk; hk++) {
                kv_row(p, 0, b, t, hk, v);
                for (int64_t d = 0; d < c->D; d++)
                    bad += !(fabs(g4(&p->kc, pg, row, hk, d) - v[d]) <=
                             4 * tt_unit_roundoff(c->dtype) * (c->half ? 1.0 : 0.0));
                kv_row(p, 1, b, t, hk, v);
                for (int64_t d = 0; d < c->Dv; d++)
                    bad += g4(&p->vc, pg, row, hk, d) != v[d];
            }
        }
    for (int64_t pg = 0; pg < p->kc.shape[0]; pg++)
        for (int64_t row = 0; row < p->kc.shape[1]; row++) {
            if (written[pg * p->kc.shape[1] + row]) continue;
            for (int64_t hk = 0; hk < c->Hk; hk++) {
                for (int64_t d = 0; d < c->D; d++)
                    bad += g4(&p->kc, pg, row, hk, d) != g4(&p->kc0, pg, row, hk, d);
                for (int64_t d = 0; d < c->Dv; d++)
                    bad += g4(&p->vc, pg, row, hk, d) != g4(&p->vc0, pg, row, hk, d);
            }
        }
    bad += !tt_padding_intact(&p->kc) * 1000;
    free(written), free(v);
    return bad;
}

static void run_case(const kcase* c) {
    kprob p;
    build(&p, c);
    int64_t no = c->B * c->Sq * c->H * c->Dv, nl = c->B * c->H * c->Sq;
    double *ro = malloc(8 * (size_t)no + 8), *rl = malloc(8 * (size_t)nl + 8),
           *no_ = malloc(8 * (size_t)no + 8), *nl_ = malloc(8 * (size_t)nl + 8);
    oracle(&p, 0, ro, rl);
    oracle(&p, 1, no_, nl_);
    double bo = ops_bound(c->dtype, 2.0, ops_max_err_arr(no_, ro, no), ops_max_abs(ro, no));
    double bl = ops_bound(CF_F32, 2.0, ops_max_err_arr(nl_, rl, nl), ops_max_abs(rl, nl)) +
                2 * tt_unit_roundoff(c->dtype);
    char desc[256];
    snprintf(desc, sizeof desc,
             "%s B%lld H%lld/%lld Sq%lld Sn%lld Lmax%lld D%lld/%lld page%lld%s%s rot%lld%s%s "
             "win(%lld,%lld) cap%.1f alibi%d splits%d seqlens%d layout%d seed%llu",
             tt_dtype_short(c->dtype), (long long)c->B, (long long)c->H, (long long)c->Hk,
             (long long)c->Sq, (long long)c->Sn, (long long)c->Lmax, (long long)c->D,
             (long long)c->Dv, (long long)c->page, c->batch_idx ? " bidx" : "",
             c->leftpad ? " leftpad" : "", (long long)(2 * c->half), c->interleaved ? "i" : "",
             c->causal ? " causal" : "", (long long)c->wl, (long long)c->wr, (double)c->softcap,
             c->alibi, c->num_splits, c->seqlen_mode, (int)c->layout, (unsigned long long)c->seed);
    cflash_attn_params ap;
    cflash_kvcache_params kp;
    params(&p, &ap, &kp);
    uint64_t qh = tt_hash(&p.q);
    for (const char* const* be = ops_backends; *be; be++) {
        if (!tt_backend_selected(*be)) continue;
        memcpy(p.kc.base, p.kc0.base, p.kc.bytes);
        memcpy(p.vc.base, p.vc0.base, p.vc.bytes);
        tt_poison(&p.out), tt_poison(&p.lse);
        cflash_context* ctx = ops_context(*be, 0);
        cflash_status s = cflash_attn_kvcache_fwd(ctx, &ap, &kp, &p.q.dl, &p.kc.dl, &p.vc.dl,
                                                  &p.out.dl, c->lse ? &p.lse.dl : NULL);
        cflash_context_free(ctx);
        if (ops_backend_skips(*be, "kvcache_fwd", s)) continue;
        CHECK_MSG(s == CFLASH_OK, "%s on %s: %s", desc, *be, cflash_last_error());
        int64_t nan = 0, nan2 = 0;
        double eo = ops_max_err(&p.out, ro, &nan), el = c->lse ? ops_max_err(&p.lse, rl, &nan2) : 0;
        CHECK_MSG(eo <= bo && nan == 0 && tt_padding_intact(&p.out),
                  "%s on %s: out err %.3g > %.3g or %lld NaN", desc, *be, eo, bo, (long long)nan);
        CHECK_MSG(el <= bl && nan2 == 0, "%s on %s: lse err %.3g > %.3g or %lld NaN", desc, *be, el,
                  bl, (long long)nan2);
        int64_t bad = check_caches(&p);
        CHECK_MSG(bad == 0, "%s on %s: %lld cache elements wrong", desc, *be, (long long)bad);
        CHECK_MSG(tt_hash(&p.q) == qh, "%s on %s: q modified", desc, *be);
        if (verbose)
            printf("%-10s %s: out %.3g <= %.3g, lse %.3g <= %.3g\n", *be, desc, eo, bo, el, bl);
    }
    free(ro), free(rl), free(no_), free(nl_);
    release(&p);
}

static void test_grid(void) {
    const cf_dtype dts[3] = {CF_BF16, CF_F16, CF_F32};
    const int64_t pages[4] = {0, 1, 16, 256};
    int n = 0;
    /* Emulated runs (CFLASH_TEST_LEVEL=-1): the first 32 cases, which still cover every dtype,
     * page size, head grouping, head dim and layout; shorter long caches. */
    const int emulated = tt_test_level() < 0;
    for (int i = 0; i < (emulated ? 32 : 64); i++) {
        tt_rng r;
        tt_rng_init(&r, 9000 + (uint64_t)i + tt_seed_base());
        kcase c = {0};
        c.dtype = dts[i % 3];
        c.page = pages[(i / 3) % 4];
        static const int64_t hh[4][2] = {{4, 4}, {8, 2}, {6, 1}, {3, 3}};
        c.H = hh[i % 4][0], c.Hk = hh[i % 4][1];
        c.B = 1 + (int64_t)(tt_rng_u64(&r) % 3);
        c.Sq = (int64_t[]){1, 1, 3, 7}[tt_rng_u64(&r) % 4];
        c.Sn = (i / 2) % 3 == 0 ? 0 : (i % 5 == 0 ? c.Sq + 2 : c.Sq);
        c.D = (int64_t[]){64, 128, 40, 8}[(i / 5) % 4];
        c.Dv = i % 9 == 4 ? 24 : c.D;
        c.Lmax = (int64_t[]){1, 37, 200, 300}[(i / 4) % 4];
        c.batch_idx = (i / 7) % 2;
        c.leftpad = i % 6 == 1;
        c.half = i % 4 == 2 ? 0 : ((i / 2) % 2 ? c.D / 2 : c.D / 4);
        c.interleaved = (i / 3) % 2;
        c.causal = (i / 2) % 2;
        c.wl = i % 8 == 3 ? 17 : -1;
        c.wr = i % 8 == 3 && !c.causal ? 2 : -1;
        c.softcap = i % 10 == 7 ? 1.5f : 0.0f;
        c.alibi = i % 11 == 5 ? 1 + (i % 2) : 0;
        c.num_splits = (int[]){0, 1, 3}[i % 3];
        c.seqlen_mode = i % 13 == 6 ? 1 : (i % 17 == 8 && c.Sn == 0 ? 2 : 0);
        c.lse = i % 4 != 3;
        c.layout = (tt_layout)((i / 16) % 2);
        c.seed = 400 + (uint64_t)i + tt_seed_base();
        run_case(&c);
        n++;
    }
    /* long caches: split-KV and the vector paths over many keys */
    kcase big = {CF_BF16, 1, 32, 8,  1,  128, 128, 1, 3000, 0, 0,        0,
                 64,      0, 1,  -1, -1, 0,   0,   0, 0,    1, TT_DENSE, 3};
    if (emulated) big.H = 8, big.Hk = 2, big.Lmax = 1000;
    run_case(&big);
    big.page = 16, big.num_splits = 5, big.dtype = CF_F16, big.B = 2, big.Sq = 4, big.Sn = 4;
    run_case(&big);
    /* chunked prefill: many query rows (the fast kernels tile them), causal, rotary, paged */
    kcase pre = {CF_BF16, 2, 8, 2,  37, 64, 64, 37, 100, 16, 0,        1,
                 16,      0, 1, -1, -1, 0,  0,  3,  0,   1,  TT_DENSE, 11};
    run_case(&pre);
    pre.num_splits = 0, pre.dtype = CF_F32, pre.interleaved = 1, pre.page = 0, pre.batch_idx = 1;
    run_case(&pre);
    printf("kvcache grid: %d cases + 2 long + 2 chunked prefill\n", n);
}

static void test_errors(void) {
    kcase c = {CF_F32, 2, 4, 2,  1,  8, 8, 1, 5, 0, 0,        0,
               2,      0, 1, -1, -1, 0, 0, 0, 0, 1, TT_DENSE, 1};
    kprob p;
    build(&p, &c);
    cflash_attn_params ap;
    cflash_kvcache_params kp;
    params(&p, &ap, &kp);
    const cflash_status INV = CFLASH_ERR_INVALID_ARGUMENT;
#define CALL()                                                                                     \
    cflash_attn_kvcache_fwd(NULL, &ap, &kp, &p.q.dl, &p.kc.dl, &p.vc.dl, &p.out.dl, &p.lse.dl)
    CHECK_OK(CALL());
    memcpy(p.kc.base, p.kc0.base, p.kc.bytes), memcpy(p.vc.base, p.vc0.base, p.vc.bytes);
    tt_poison(&p.out);
    ap.dropout_p = 0.1f;
    CHECK_ERR(CALL(), INV, "dropout_p: 0.1, expected 0");
    ap.dropout_p = 0, ap.window_left = -2;
    CHECK_ERR(CALL(), INV, "window_left: -2");
    ap.window_left = -1, ap.softcap = -1;
    CHECK_ERR(CALL(), INV, "softcap: -1");
    ap.softcap = 0, ap.k_offset = 3;
    CHECK_ERR(CALL(), INV, "q_offset, k_offset: 0, 3, expected 0");
    ap.k_offset = 0;
    CHECK_ERR(cflash_attn_kvcache_fwd(NULL, &ap, &kp, NULL, &p.kc.dl, &p.vc.dl, &p.out.dl, NULL),
              INV, "q: is NULL");
    CHECK_ERR(
        cflash_attn_kvcache_fwd(NULL, &ap, &kp, &p.q.dl, &p.kc.dl, &p.kc.dl, &p.out.dl, &p.q.dl),
        INV, "lse: expected 3 dims");
    tt_tensor bad;
    int64_t k3[4] = {2, 10, 3, 8};
    tt_alloc(&bad, CF_F32, 4, k3, TT_DENSE);
    CHECK_ERR(cflash_attn_kvcache_fwd(NULL, &ap, &kp, &p.q.dl, &bad.dl, &p.vc.dl, &p.out.dl, NULL),
              INV, "k_cache: 3 heads, expected a divisor of the 4 heads of q");
    tt_free(&bad);
    int64_t k4[4] = {2, 10, 2, 8};
    tt_alloc(&bad, CF_F16, 4, k4, TT_DENSE);
    CHECK_ERR(cflash_attn_kvcache_fwd(NULL, &ap, &kp, &p.q.dl, &bad.dl, &p.vc.dl, &p.out.dl, NULL),
              INV, "k_cache: dtype float16, expected float32 (the dtype of q)");
    tt_free(&bad);
    int64_t k5[4] = {1, 10, 2, 8};
    tt_alloc(&bad, CF_F32, 4, k5, TT_DENSE);
    kp.k_new = kp.v_new = NULL;
    CHECK_ERR(cflash_attn_kvcache_fwd(NULL, &ap, &kp, &p.q.dl, &bad.dl, &bad.dl, &p.out.dl, NULL),
              INV, "expected B_cache >= B");
    tt_free(&bad);
    kp.k_new = &p.kn.dl;
    CHECK_ERR(CALL(), INV, "v_new: is NULL but k_new is given");
    kp.v_new = &p.vn.dl;
    ((int32_t*)p.t_seq.dl.data)[1] = 9; /* 9 + 1 new > S_cache 9 */
    CHECK_ERR(CALL(), INV, "cache_seqlens[1]: 9 + 1 new rows = 10 exceeds the cache's 9 positions");
    ((int32_t*)p.t_seq.dl.data)[1] = -1;
    CHECK_ERR(CALL(), INV, "cache_seqlens[1]: -1, expected >= 0");
    ((int32_t*)p.t_seq.dl.data)[1] = p.L[1];
    kp.cache_seqlens = NULL, kp.cache_seqlen = -3;
    CHECK_ERR(CALL(), INV, "cache_seqlen: -3");
    kp.cache_seqlen = -1; /* whole cache + 1 new row: too long */
    CHECK_ERR(CALL(), INV, "exceeds the cache's");
    kp.cache_seqlens = &p.t_seq.dl;
    ((int32_t*)p.t_lp.dl.data)[0] = p.L[0] + 1;
    kp.cache_leftpad = &p.t_lp.dl;
    CHECK_ERR(CALL(), INV, "cache_leftpad[0]");
    kp.cache_leftpad = NULL;
    ((int32_t*)p.t_bidx.dl.data)[0] = 9;
    kp.cache_batch_idx = &p.t_bidx.dl;
    CHECK_ERR(CALL(), INV, "cache_batch_idx[0]: 9, expected 0 <= index < B_cache = 2");
    int64_t bts[2] = {2, 2};
    tt_tensor bt;
    tt_alloc(&bt, CF_I32, 2, bts, TT_DENSE);
    kp.block_table = &bt.dl;
    CHECK_ERR(CALL(), INV, "cache_batch_idx: given with block_table");
    kp.cache_batch_idx = NULL;
    /* paged: kc (2 pages of 8 rows); sequence 0 needs page table entry 0 */
    ((int32_t*)bt.dl.data)[0] = 5, ((int32_t*)bt.dl.data)[1] = 0;
    ((int32_t*)bt.dl.data)[2] = 1, ((int32_t*)bt.dl.data)[3] = 0;
    CHECK_ERR(CALL(), INV, "block_table[0, 0]: 5, expected a page index in [0, 2)");
    tt_free(&bt);
    int64_t bt1[2] = {1, 2};
    tt_alloc(&bt, CF_I32, 2, bt1, TT_DENSE);
    kp.block_table = &bt.dl;
    CHECK_ERR(CALL(), INV, "block_table: shape (1, 2), expected (B, max_pages)");
    tt_free(&bt);
    kp.block_table = NULL;
    kp.rotary_sin = NULL;
    CHECK_ERR(CALL(), INV, "rotary_sin: is NULL but rotary_cos is given");
    int64_t cs[2] = {3, 2};
    tt_alloc(&bad, CF_F32, 2, cs, TT_DENSE);
    kp.rotary_cos = kp.rotary_sin = &bad.dl;
    CHECK_ERR(CALL(), INV, "rotary_cos: 3 rows, but position");
    tt_free(&bad);
    int64_t cw[2] = {40, 5};
    tt_alloc(&bad, CF_F32, 2, cw, TT_DENSE);
    kp.rotary_cos = kp.rotary_sin = &bad.dl;
    CHECK_ERR(CALL(), INV, "rotary_dim = 10, expected 2 <= rotary_dim <= head dim 8");
    tt_free(&bad);
    kp.rotary_cos = &p.cs.dl, kp.rotary_sin = &p.sn.dl;
    kp.num_splits = -1;
    CHECK_ERR(CALL(), INV, "num_splits: -1");
    kp.num_splits = 0;
    int64_t a3[1] = {3};
    tt_alloc(&bad, CF_F32, 1, a3, TT_DENSE);
    ap.alibi_slopes = &bad.dl;
    CHECK_ERR(CALL(), INV, "alibi_slopes: shape (3)");
    ap.alibi_slopes = NULL;
    tt_free(&bad);
    int64_t o5[4] = {2, 1, 4, 5};
    tt_alloc(&bad, CF_F32, 4, o5, TT_DENSE);
    CHECK_ERR(cflash_attn_kvcache_fwd(NULL, &ap, &kp, &p.q.dl, &p.kc.dl, &p.vc.dl, &bad.dl, NULL),
              INV, "out: shape (2, 1, 4, 5)");
    tt_free(&bad);
    /* after every rejected call: caches and out untouched */
    CHECK(!memcmp(p.kc.base, p.kc0.base, p.kc.bytes) && !memcmp(p.vc.base, p.vc0.base, p.vc.bytes));
    CHECK(tt_count_nan(&p.out) == p.out.numel);
    char buf[512];
    CHECK_OK(cflash_attn_kvcache_fwd(tt_explain(buf, sizeof buf), &ap, &kp, &p.q.dl, &p.kc.dl,
                                     &p.vc.dl, &p.out.dl, &p.lse.dl));
    CHECK_MSG(strstr(buf, "cpu-ref: OKAY"), "explain: %s", buf);
    CHECK(!memcmp(p.kc.base, p.kc0.base, p.kc.bytes)); /* explain writes nothing */
    CHECK(!memcmp(p.vc.base, p.vc0.base, p.vc.bytes) && tt_count_nan(&p.out) == p.out.numel);
#undef CALL
    release(&p);
}

int main(int argc, char** argv) {
    verbose = argc > 1 && !strcmp(argv[1], "-v");
    double t0 = tt_now();
    test_grid();
    test_errors();
    printf("test_kvcache: %.1f s\n", tt_now() - t0);
    return tt_summary();
}
