/* The tiled online-softmax attention forward shared by every fast CPU backend. A tile is up to
 * cf_attn_cpu_blocks().q query rows taken from all query heads of one GQA group (so each K/V block
 * is read once for the group); it walks the visible key blocks computing S^T = K Q^T (Q^T packed
 * once per tile, K read in place), the online softmax down the columns, and O += P V. Threads take
 * tiles one head after another, heaviest first within a head. Per-thread workspace depends on the
 * head dims and group size only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/philox.h"
#include "core/status.h"
#include "core/threads.h"
#include "cpu/attn_cpu.h"

/* ---- Shared helpers ------------------------------------------------------------------------- */

static inline char* row_ptr(const cf_view* v, int64_t b, int64_t s, int64_t h) {
    return (char*)v->data + (b * v->stride[0] + s * v->stride[1] + h * v->stride[2]) *
                                (int64_t)cf_dtype_size(v->dtype);
}

static size_t align64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

/* Whether bf16 rows of v can be read in place as 32-bit pairs: every row start even. */
static int pairs_in_place(const cf_view* v, int64_t d) {
    return d % 2 == 0 && (uintptr_t)v->data % 4 == 0 && v->stride[0] % 2 == 0 &&
           v->stride[1] % 2 == 0 && v->stride[2] % 2 == 0;
}

int cf_attn_cpu_rows_nonfinite(const char* p, int64_t rs, int64_t n, int64_t d, cf_dtype dt) {
    int bad = 0;
    for (int64_t r = 0; r < n && !bad; r++, p += rs)
        if (dt == CF_F32) {
            const float* x = (const float*)p;
            for (int64_t i = 0; i < d; i++)
                bad |= x[i] - x[i] != 0.0f; /* NaN for NaN and +-inf */
        } else {
            const uint16_t* h = (const uint16_t*)p;
            const uint16_t e = dt == CF_F16 ? 0x7c00 : 0x7f80; /* exponent all ones */
            for (int64_t i = 0; i < d; i++)
                bad |= (h[i] & e) == e;
        }
    return bad;
}

int cf_attn_cpu_hidden_nonfinite(const char* p, int64_t rs, int64_t j0, int64_t nb, int64_t lo_last,
                                 int64_t hi_first, int64_t d, cf_dtype dt) {
    const int64_t a = lo_last - j0 < nb ? lo_last - j0 : nb; /* [0, a): hidden from the last rows */
    const int64_t z = hi_first - j0 > 0 ? hi_first - j0 : 0; /* [z, nb): from the first rows */
    return (a > 0 && cf_attn_cpu_rows_nonfinite(p, rs, a, d, dt)) ||
           (z < nb && cf_attn_cpu_rows_nonfinite(p + z * rs, rs, nb - z, d, dt));
}

int cf_attn_cpu_supports(const cf_attn_call* c, const cf_attn_kernels* k, char* reason,
                         size_t len) {
    (void)k;
    /* The per-thread workspace grows with G * (D + Dv); refuse sizes where it would not fit in a
     * sane budget rather than thrash (cpu-ref serves them). */
    const int64_t limit = 8192;
    if (c->D > limit || c->Dv > limit) {
        snprintf(reason, len, "head dim D = %lld, Dv = %lld: tiled kernels take at most %lld",
                 (long long)c->D, (long long)c->Dv, (long long)limit);
        return 0;
    }
    return 1;
}

/* ---- Forward geometry and workspace --------------------------------------------------------- */

typedef struct fwd_geom {
    int64_t G, n, M;    /* heads per group, rows per head, rows per tile (G * n) */
    int64_t bk;         /* keys per block */
    int64_t D, Dv, Dp2; /* Dp2: pairs of D (bf16 mode) */
    int bf16;           /* P V in 16-bit pairs: bf16 (gemm_bf16) or fp16 (gemm_f16) */
    /* S = Q K^T in bf16 pairs, as the backward recomputes it (cpu_bwd's bf): the scores must
     * round the same on both sides (see exp_cols in attn_cpu.h), so fp16 takes gemm_f32 there,
     * which the backward uses for fp16 (gemm_f16 is forward-only). */
    int qk_pairs;
    /* The pairs mode's GEMM and P packing for the call's dtype. */
    void (*gemm_pairs)(int64_t, int64_t, int64_t, const uint32_t*, int64_t, int64_t,
                       const uint32_t*, int64_t, float*, int64_t, int);
    void (*pack_pairs)(uint32_t*, const float*, const float*, int64_t);
    int k_direct, v_direct; /* K/V read in place (fp32 dtype, or bf16 pairs aligned) */
    size_t off_qt, off_st, off_o, off_vec, off_lohi, off_kc, off_vc, off_tmp, bytes;
} fwd_geom;

static void fwd_layout(const cf_attn_call* c, const cf_attn_kernels* k, fwd_geom* g) {
    memset(g, 0, sizeof *g);
    const cf_attn_blocks bl = cf_attn_cpu_blocks();
    g->G = c->H / c->Hk;
    g->n = cf_attn_cpu_tile_rows(c, bl.q);
    g->M = g->G * g->n;
    g->bk = bl.k;
    g->D = c->D;
    g->Dv = c->Dv;
    g->Dp2 = (c->D + 1) / 2;
    if (c->dtype == CF_BF16 && k->gemm_bf16)
        g->gemm_pairs = k->gemm_bf16, g->pack_pairs = k->pack_pairs_f32;
    else if (c->dtype == CF_F16 && k->gemm_f16)
        g->gemm_pairs = k->gemm_f16, g->pack_pairs = k->pack_pairs_f16;
    g->bf16 = g->gemm_pairs != NULL;
    g->qk_pairs = c->dtype == CF_BF16 && k->gemm_bf16;
    if (g->qk_pairs) {
        g->k_direct = pairs_in_place(&c->k, c->D);
    } else {
        g->k_direct = c->dtype == CF_F32;
    }
    g->v_direct = !g->bf16 && c->dtype == CF_F32; /* pairs: V is always re-laid as row pairs */
    const int64_t BK = g->bk, M = g->M;
    size_t off = 0;
    g->off_qt = off; /* fp32: Q^T [D][M]; bf16: pairs [Dp2][M] */
    off += align64(sizeof(float) * (size_t)(g->qk_pairs ? g->Dp2 : g->D) * (size_t)M);
    g->off_st = off; /* S^T [BK][M] */
    off += align64(sizeof(float) * (size_t)(BK * M));
    g->off_o = off; /* O [M][Dv] */
    off += align64(sizeof(float) * (size_t)(M * g->Dv));
    g->off_vec = off; /* m, l, mx, alpha, mu, lsum: [M] each */
    off += align64(sizeof(float) * (size_t)(6 * M));
    g->off_lohi = off; /* key ranges of the tile's rows per head: lo, hi [n] */
    off += align64(sizeof(int64_t) * (size_t)(2 * g->n));
    g->off_kc = off; /* K block: fp32 rows [BK][D] or bf16 pairs [BK][Dp2] */
    off += g->k_direct ? 0 : align64(sizeof(float) * (size_t)(BK * (g->qk_pairs ? g->Dp2 : g->D)));
    g->off_vc = off; /* V block: fp32 rows [BK][Dv], or pairs [BK/2][Dv] plus P pairs [BK/2][M] */
    if (g->bf16)
        off += align64(sizeof(uint32_t) * (size_t)(((BK + 1) / 2) * (g->Dv + M)));
    else if (!g->v_direct)
        off += align64(sizeof(float) * (size_t)(BK * g->Dv));
    g->off_tmp = off; /* one row, fp32 */
    off += align64(sizeof(float) * (size_t)(g->D > g->Dv ? g->D : g->Dv) + 16);
    g->bytes = off;
}

size_t cf_attn_cpu_fwd_workspace(const cf_attn_call* c, const cf_attn_kernels* k) {
    fwd_geom g;
    fwd_layout(c, k, &g);
    return g.bytes;
}

/* ---- Tiles and their order ------------------------------------------------------------------ */

static int tile_cmp(const void* a, const void* b) {
    const attn_tile *x = a, *y = b;
    if (x->cost != y->cost) return x->cost > y->cost ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Query tiles of n rows per (sequence, KV head), heaviest (most visible keys) first so dynamic
 * scheduling balances causal and varlen work. *count gets the number; NULL when out of memory. */
void cf_attn_cpu_sort_tiles(attn_tile* t, int64_t n) {
    qsort(t, (size_t)n, sizeof *t, tile_cmp);
}

typedef struct tile_group {
    int64_t cost, start, len; /* cost of the group's heaviest tile; its tiles t[start, start+len) */
} tile_group;

static int group_cmp(const void* a, const void* b) {
    const tile_group *x = a, *y = b;
    if (x->cost != y->cost) return x->cost > y->cost ? -1 : 1;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Reorders t (consecutive runs of tiles per (sequence, KV head), ng runs) so that each run's tiles
 * stay together, heaviest first, and runs with the heaviest tiles come first. Consecutive tiles
 * then share one head's K/V in the cache (a global heaviest-first order interleaves the heads,
 * which for causal made every tile stream its K/V from memory); the dynamic schedule's end stays
 * balanced to within one tile. Returns 0 when out of memory (t is then left as it was). */
static int group_tiles(attn_tile* t, int64_t n, int64_t ng) {
    tile_group* gr = malloc(sizeof *gr * (size_t)(ng > 0 ? ng : 1));
    attn_tile* out = malloc(sizeof *out * (size_t)(n > 0 ? n : 1));
    if (!gr || !out) {
        free(gr);
        free(out);
        return 0;
    }
    int64_t k = 0;
    for (int64_t s = 0; s < n;) {
        int64_t e = s + 1;
        while (e < n && t[e].b == t[s].b && t[e].hk == t[s].hk)
            e++;
        cf_attn_cpu_sort_tiles(t + s, e - s);
        tile_group x = {t[s].cost, s, e - s};
        gr[k++] = x;
        s = e;
    }
    qsort(gr, (size_t)k, sizeof *gr, group_cmp);
    int64_t o = 0;
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < gr[i].len; j++)
            out[o++] = t[gr[i].start + j];
    memcpy(t, out, sizeof *t * (size_t)n);
    free(out);
    free(gr);
    return 1;
}

static attn_tile* make_q_tiles(const cf_attn_call* c, int64_t n, int64_t* count, int grouped) {
    int64_t total = 0;
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        total += (sq + n - 1) / n * c->Hk;
    }
    attn_tile* t = malloc(sizeof *t * (size_t)(total > 0 ? total : 1));
    if (!t) return NULL;
    int64_t k = 0;
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q0, sq, k0, sk;
        cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
        for (int64_t hk = 0; hk < c->Hk; hk++)
            for (int64_t i0 = 0; i0 < sq; i0 += n) {
                int64_t i1 = i0 + n < sq ? i0 + n : sq, lo, hi, lo2, hi2;
                cf_attn_key_range(c, i0, sq, sk, &lo, &hi);
                cf_attn_key_range(c, i1 - 1, sq, sk, &lo2, &hi2);
                attn_tile x = {b, hk, i0, i1, (hi2 > lo ? hi2 - lo : 0) * (i1 - i0) + 1, k};
                t[k++] = x;
            }
    }
    if (!grouped || !group_tiles(t, k, c->B * c->Hk)) cf_attn_cpu_sort_tiles(t, k);
    *count = k;
    return t;
}

/* ---- Forward tile --------------------------------------------------------------------------- */

static void fwd_tile(const cf_attn_call* c, const cf_attn_kernels* kk, const fwd_geom* g,
                     const attn_tile* t, char* ws) {
    const int64_t b = t->b, hk = t->hk, i0 = t->i0, na = t->i1 - t->i0, G = g->G;
    const int64_t Mt = G * na, D = g->D, Dv = g->Dv, BK = g->bk;
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    float* qt = (float*)(ws + g->off_qt);
    uint32_t* qv = (uint32_t*)qt;
    float* st = (float*)(ws + g->off_st);
    float* o = (float*)(ws + g->off_o);
    float *m = (float*)(ws + g->off_vec), *l = m + Mt, *mx = l + Mt, *alpha = mx + Mt,
          *mu = alpha + Mt, *lsum = mu + Mt;
    int64_t *lo = (int64_t*)(ws + g->off_lohi), *hi = lo + na;
    float* kc = (float*)(ws + g->off_kc);
    float* vc = (float*)(ws + g->off_vc);
    float* tmp = (float*)(ws + g->off_tmp);
    const int general = c->softcap > 0.0f || c->alibi != NULL;

    for (int64_t ii = 0; ii < na; ii++)
        cf_attn_key_range(c, i0 + ii, sq, sk, &lo[ii], &hi[ii]);
    const int64_t jlo = lo[0], jhi = hi[na - 1];

    /* Q^T of the tile: row r = gi * na + ii is query i0 + ii of head hk * G + gi. Rows are read
     * 16 at a time into the S^T buffer (free until the first block), then written out a cache
     * line per column; a strided store per element missed L1 (fp32 Q^T is 64 KB at D = 128) and
     * cost ~3% of a causal fp32 forward. */
    const int64_t Dq = g->qk_pairs ? g->Dp2 : D;
    const int64_t R = BK * Mt >= 16 * Dq ? 16 : 1;
    for (int64_t r0 = 0; r0 < Mt; r0 += R) {
        const int64_t rn = Mt - r0 < R ? Mt - r0 : R;
        for (int64_t rr = 0; rr < rn; rr++) {
            const int64_t r = r0 + rr, gi = r / na, ii = r % na;
            const char* src = row_ptr(&c->q, b, q0 + i0 + ii, hk * G + gi);
            if (g->qk_pairs) {
                /* The pair is the little-endian 32-bit word (as K is read in place). */
                uint32_t* dst = (uint32_t*)(R == 16 ? st : tmp) + rr * Dq;
                const uint16_t* h16 = (const uint16_t*)src;
                if (D % 2 == 0)
                    memcpy(dst, h16, sizeof(uint16_t) * (size_t)D);
                else
                    for (int64_t p = 0; p < Dq; p++) {
                        uint32_t hi16 = 2 * p + 1 < D ? h16[2 * p + 1] : 0;
                        dst[p] = (uint32_t)h16[2 * p] | hi16 << 16;
                    }
            } else {
                kk->to_f32((R == 16 ? st : tmp) + rr * Dq, src, c->dtype, D);
            }
        }
        if (g->qk_pairs) {
            const uint32_t* rb = (const uint32_t*)(R == 16 ? st : tmp);
            for (int64_t p = 0; p < Dq; p++)
                for (int64_t rr = 0; rr < rn; rr++)
                    qv[p * Mt + r0 + rr] = rb[rr * Dq + p];
        } else {
            const float* rb = R == 16 ? st : tmp;
            for (int64_t d = 0; d < Dq; d++)
                for (int64_t rr = 0; rr < rn; rr++)
                    qt[d * Mt + r0 + rr] = rb[rr * Dq + d];
        }
    }
    for (int64_t r = 0; r < Mt; r++)
        m[r] = -INFINITY, l[r] = 0.0f;
    memset(o, 0, sizeof(float) * (size_t)(Mt * Dv));

    for (int64_t j0 = jlo; j0 < jhi; j0 += BK) {
        const int64_t nb = jhi - j0 < BK ? jhi - j0 : BK;
        const int full = lo[na - 1] <= j0 && hi[0] >= j0 + nb;
        const char* krow = row_ptr(&c->k, b, k0 + j0, hk);
        const char* vrow = row_ptr(&c->v, b, k0 + j0, hk);
        const int64_t kes = (int64_t)cf_dtype_size(c->dtype) * c->k.stride[1];
        const int64_t ves = (int64_t)cf_dtype_size(c->dtype) * c->v.stride[1];

        /* S^T [nb][Mt] = K Q^T */
        if (g->qk_pairs) {
            const uint32_t* ka;
            int64_t ldk;
            if (g->k_direct) {
                ka = (const uint32_t*)krow;
                ldk = c->k.stride[1] / 2;
            } else {
                uint32_t* kp = (uint32_t*)kc;
                for (int64_t j = 0; j < nb; j++) {
                    const uint16_t* h16 = (const uint16_t*)(krow + j * kes);
                    for (int64_t p = 0; p < g->Dp2; p++) {
                        uint32_t hi16 = 2 * p + 1 < D ? h16[2 * p + 1] : 0;
                        kp[j * g->Dp2 + p] = (uint32_t)h16[2 * p] | hi16 << 16;
                    }
                }
                ka = kp;
                ldk = g->Dp2;
            }
            g->gemm_pairs(nb, Mt, g->Dp2, ka, ldk, 1, qv, Mt, st, Mt, 0);
        } else {
            const float* ka;
            int64_t ldk;
            if (g->k_direct) {
                ka = (const float*)krow;
                ldk = c->k.stride[1];
            } else {
                for (int64_t j = 0; j < nb; j++)
                    kk->to_f32(kc + j * D, krow + j * kes, c->dtype, D);
                ka = kc;
                ldk = D;
            }
            kk->gemm_f32(nb, Mt, D, ka, ldk, 1, qt, Mt, st, Mt, 0);
        }

        /* Scores (natural units, as the LSE: see exp_cols in attn_cpu.h), masks, column
         * maxima. */
        for (int64_t r = 0; r < Mt; r++)
            mx[r] = -INFINITY;
        if (general) {
            for (int64_t j = 0; j < nb; j++) {
                float* row = st + j * Mt;
                for (int64_t gi = 0; gi < G; gi++) {
                    const float slope = cf_attn_slope(c, b, hk * G + gi);
                    for (int64_t ii = 0; ii < na; ii++) {
                        const int64_t r = gi * na + ii, jj = j0 + j;
                        row[r] =
                            (jj < lo[ii] || jj >= hi[ii])
                                ? -INFINITY
                                : cf_attn_score(c, row[r] * c->scale, slope, i0 + ii, jj, sq, sk);
                    }
                }
                kk->scale_max_cols(row, Mt, 1.0f, mx);
            }
        } else {
            int64_t a = 0, z = 0;
            for (int64_t j = 0; j < nb; j++) {
                float* row = st + j * Mt;
                if (!full) {
                    /* Key jj is hidden from rows ii < a (hi[ii] <= jj) and ii >= z (lo[ii] > jj);
                     * lo and hi are non-decreasing in ii, so both are runs: fills, no branches. */
                    const int64_t jj = j0 + j;
                    while (a < na && hi[a] <= jj)
                        a++;
                    while (z < na && lo[z] <= jj)
                        z++;
                    const int64_t z2 = z > a ? z : a;
                    for (int64_t gi = 0; gi < G; gi++) {
                        float* rg = row + gi * na;
                        for (int64_t ii = 0; ii < a; ii++)
                            rg[ii] = -INFINITY;
                        for (int64_t ii = z2; ii < na; ii++)
                            rg[ii] = -INFINITY;
                    }
                }
                kk->scale_max_cols(row, Mt, c->scale, mx);
            }
        }

        /* Online softmax update. */
        for (int64_t r = 0; r < Mt; r++) {
            const float mn = mx[r] > m[r] ? mx[r] : m[r];
            alpha[r] = m[r] == -INFINITY ? 0.0f : expf(m[r] - mn);
            mu[r] = mn == -INFINITY ? 0.0f : mn;
            m[r] = mn;
            lsum[r] = 0.0f;
        }
        for (int64_t j = 0; j < nb; j++)
            kk->exp_cols(st + j * Mt, Mt, mu, lsum);
        for (int64_t r = 0; r < Mt; r++) {
            l[r] = l[r] * alpha[r] + lsum[r];
            if (alpha[r] != 1.0f && alpha[r] != 0.0f)
                for (int64_t d = 0; d < Dv; d++)
                    o[r * Dv + d] *= alpha[r];
        }
        if (c->dropout_p > 0.0f) {
            const uint64_t thr = cf_dropout_threshold(c->dropout_p);
            for (int64_t gi = 0; gi < G; gi++)
                for (int64_t ii = 0; ii < na; ii++) {
                    cf_philox_out w = {{0, 0, 0, 0}};
                    for (int64_t j = 0; j < nb; j++) {
                        const int64_t jj = j0 + j + c->k_offset; /* the key's position */
                        if (j == 0 || (jj & 3) == 0)
                            w = cf_dropout_words(c->seed, c->offset, (uint64_t)b,
                                                 (uint64_t)(hk * G + gi),
                                                 (uint64_t)(i0 + ii + c->q_offset), (uint64_t)jj);
                        if ((uint64_t)w.x[jj & 3] >= thr) st[j * Mt + gi * na + ii] = 0.0f;
                    }
                }
        }

        /* O += P V. In a partly masked block a row's masked keys have P = 0, and 0 times a NaN
         * or infinite v would still reach the row: such a block (rare) sums visible pairs only. */
        if (!full &&
            cf_attn_cpu_hidden_nonfinite(vrow, ves, j0, nb, lo[na - 1], hi[0], Dv, c->dtype)) {
            for (int64_t j = 0; j < nb; j++) {
                const int64_t jj = j0 + j;
                kk->to_f32(tmp, vrow + j * ves, c->dtype, Dv);
                for (int64_t gi = 0; gi < G; gi++)
                    for (int64_t ii = 0; ii < na; ii++) {
                        if (jj < lo[ii] || jj >= hi[ii]) continue;
                        const int64_t r = gi * na + ii;
                        const float pr = st[j * Mt + r];
                        for (int64_t d = 0; d < Dv; d++)
                            o[r * Dv + d] += pr * tmp[d];
                    }
            }
        } else if (g->bf16) {
            const int64_t np = (nb + 1) / 2;
            uint32_t* vv = (uint32_t*)vc;
            uint32_t* pv = vv + np * Dv;
            for (int64_t p = 0; p < np; p++) {
                const uint16_t* v0 = (const uint16_t*)(vrow + 2 * p * ves);
                const uint16_t* v1 =
                    2 * p + 1 < nb ? (const uint16_t*)(vrow + (2 * p + 1) * ves) : NULL;
                kk->interleave_u16(vv + p * Dv, v0, v1, Dv);
                g->pack_pairs(pv + p * Mt, st + 2 * p * Mt,
                              2 * p + 1 < nb ? st + (2 * p + 1) * Mt : NULL, Mt);
            }
            g->gemm_pairs(Mt, Dv, np, pv, 1, Mt, vv, Dv, o, Dv, 1);
        } else {
            const float* vb;
            int64_t ldv;
            if (g->v_direct) {
                vb = (const float*)vrow;
                ldv = c->v.stride[1];
            } else {
                for (int64_t j = 0; j < nb; j++)
                    kk->to_f32(vc + j * Dv, vrow + j * ves, c->dtype, Dv);
                vb = vc;
                ldv = Dv;
            }
            kk->gemm_f32(Mt, Dv, nb, st, 1, Mt, vb, ldv, o, Dv, 1);
        }
    }

    /* out = O / l (times the dropout rescale), lse = m + ln l; l = 0 (no key seen): 0 and -inf;
     * l NaN (a NaN score): NaN both. */
    const float keep_scale = 1.0f / (1.0f - c->dropout_p);
    for (int64_t gi = 0; gi < G; gi++)
        for (int64_t ii = 0; ii < na; ii++) {
            const int64_t r = gi * na + ii, h = hk * G + gi;
            const float inv = l[r] != 0.0f ? keep_scale / l[r] : 0.0f;
            for (int64_t d = 0; d < Dv; d++)
                tmp[d] = o[r * Dv + d] * inv;
            kk->from_f32(row_ptr(&c->out, b, q0 + i0 + ii, h), tmp, c->dtype, Dv);
            if (c->lse.data) {
                float* lp = (float*)c->lse.data;
                lp[b * c->lse.stride[0] + h * c->lse.stride[1] +
                   (q0 + i0 + ii) * c->lse.stride[2]] =
                    l[r] != 0.0f ? m[r] + logf(l[r]) : -INFINITY;
            }
        }
}

/* ---- Forward driver ------------------------------------------------------------------------- */

int64_t cf_attn_cpu_tile_rows(const cf_attn_call* c, int64_t rows) {
    const int64_t G = c->H / c->Hk;
    int64_t n = rows / G > 0 ? rows / G : 1;
    if (n > c->Sq && c->Sq > 0) n = c->Sq;
    return n;
}

cflash_status cf_attn_cpu_fwd_run(const cf_attn_call* c, const cf_attn_kernels* kk, int64_t n,
                                  size_t bytes, cf_attn_fwd_tile_fn tile, const void* geom) {
    int64_t ntiles = 0;
    attn_tile* tiles = make_q_tiles(c, n, &ntiles, 1);
    const int T = c->threads > 0 ? c->threads : 1;
    bytes = align64(bytes);
    char* ws = aligned_alloc(64, bytes * (size_t)T);
    if (!tiles || !ws) {
        free(tiles);
        free(ws);
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY,
                        "%s attn_fwd: out of memory for %d threads x %zu bytes of workspace",
                        kk->name, T, bytes);
    }
#pragma omp parallel num_threads(cf_threads_items(T, ntiles))
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        char* mine = ws + bytes * (size_t)tid;
        if (kk->thread_begin) kk->thread_begin();
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < ntiles; i++)
            tile(c, kk, geom, &tiles[i], mine);
        if (kk->thread_end) kk->thread_end();
    }
    free(ws);
    free(tiles);
    return CFLASH_OK;
}

static void fwd_tile_fn(const cf_attn_call* c, const cf_attn_kernels* kk, const void* geom,
                        const attn_tile* t, char* ws) {
    fwd_tile(c, kk, geom, t, ws);
}

cflash_status cf_attn_cpu_fwd(const cf_attn_call* c, const cf_attn_kernels* kk) {
    fwd_geom g;
    fwd_layout(c, kk, &g);
    return cf_attn_cpu_fwd_run(c, kk, g.n, g.bytes, fwd_tile_fn, &g);
}

attn_tile* cf_attn_cpu_q_tiles(const cf_attn_call* c, int64_t n, int64_t* count) {
    return make_q_tiles(c, n, count, 0);
}
