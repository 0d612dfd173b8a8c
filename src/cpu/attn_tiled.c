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
    /* Row strides of the tile's Q^T, S^T and P pairs (lt, for M columns) and of the V block
     * re-laid (lv, for Dv), padded off multiples of 256 bytes (cf_attn_ld) */
    int64_t lt, lv;
    size_t off_qt, off_st, off_o, off_vec, off_lohi, off_kc, off_vc, off_tmp, off_x, bytes;
    size_t off_gk, off_gv;       /* paged: a block's K / V rows gathered across pages */
    const cf_attn_mask_map* map; /* issue 13: attn_mask / attn_bias summarised (may be NULL) */
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
    /* pairs: V is always re-laid as row pairs; fp32 V is read in place by tiles of fewer than
     * CF_ATTN_PACK_ROWS rows (V is the P V GEMM's B), and by paged calls (rows gathered
     * contiguous already) */
    g->v_direct = !g->bf16 && c->dtype == CF_F32 && (g->M < CF_ATTN_PACK_ROWS || c->block_table);
    const int64_t BK = g->bk, M = g->M;
    g->lt = cf_attn_ld(M), g->lv = cf_attn_ld(g->Dv);
    size_t off = 0;
    g->off_qt = off; /* fp32: Q^T [D][lt]; bf16: pairs [Dp2][lt] */
    off += align64(sizeof(float) * (size_t)(g->qk_pairs ? g->Dp2 : g->D) * (size_t)g->lt);
    g->off_st = off; /* S^T [BK][lt] */
    off += align64(sizeof(float) * (size_t)(BK * g->lt));
    g->off_o = off; /* O [M][Dv] */
    off += align64(sizeof(float) * (size_t)(M * g->Dv));
    g->off_vec = off; /* m, l, mx, alpha, mu, lsum: [M] each */
    off += align64(sizeof(float) * (size_t)(6 * M));
    g->off_lohi = off; /* key ranges of the tile's rows per head: lo, hi [n] */
    off += align64(sizeof(int64_t) * (size_t)(2 * g->n));
    g->off_kc = off; /* K block: fp32 rows [BK][D] or bf16 pairs [BK][Dp2] */
    off += g->k_direct && !c->block_table
               ? 0
               : align64(sizeof(float) * (size_t)(BK * (g->qk_pairs ? g->Dp2 : g->D)));
    g->off_vc = off; /* V block: fp32 rows [BK][lv], or pairs [BK/2][lv] plus P pairs [BK/2][lt] */
    if (g->bf16)
        off += align64(sizeof(uint32_t) * (size_t)(((BK + 1) / 2) * (g->lv + g->lt)));
    else if (!g->v_direct)
        off += align64(sizeof(float) * (size_t)(BK * g->lv));
    g->off_tmp = off; /* one row, fp32 */
    off += align64(sizeof(float) * (size_t)(g->D > g->Dv ? g->D : g->Dv) + 16);
    g->off_x = off; /* issue 13: per row query, head, block-sparse key mask; the key masks */
    if (cf_attn_has_extra(c))
        off += align64((2 * sizeof(int64_t) + sizeof(uint8_t*)) * (size_t)M) +
               align64((size_t)(g->G * (g->n + 1) * BK));
    if (c->block_table) {
        const size_t es = cf_dtype_size(c->dtype);
        g->off_gk = off;
        off += align64(es * (size_t)(BK * g->D));
        g->off_gv = off;
        off += align64(es * (size_t)(BK * g->Dv));
    }
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

/* ---- Forward tile ----------------------------------------------------------------------------
 * fwd_tile walks a tile's visible key blocks in named steps: fwd_load_q once, then per block
 * fwd_block_open (issue 13's skips), fwd_qk (S^T = K Q^T), fwd_mask_max (scores, masks, column
 * maxima), fwd_softmax (online softmax update, dropout) and fwd_pv (O += P V); fwd_store last. */

/* One tile's state: where it is, and its views of the thread's workspace. Row r = gi * na + ii
 * of the tile is query i0 + ii of head hk * G + gi. */
typedef struct fwd_tile_ws {
    int64_t b, hk, i0, na, Mt; /* sequence, KV head, first query, rows per head, rows */
    int64_t q0, sq, k0, sk;    /* the sequence (cf_attn_seq) */
    float* qt;                 /* Q^T [D][lt] fp32, or [Dp2][lt] pairs (qv); lt: fwd_geom's */
    uint32_t* qv;
    float *st, *o;                         /* S^T [nb][lt], O [Mt][Dv] */
    float *m, *l, *mx, *alpha, *mu, *lsum; /* per row [Mt] */
    int64_t *lo, *hi;                      /* visible keys per query row [na] */
    float *kc, *vc, *tmp;                  /* K / V blocks re-laid, one row */
    int64_t *xi, *xh;                      /* issue 13: query and head per row [Mt] */
    const uint8_t** kvp;                   /* issue 13: each row's block-sparse key mask */
    uint8_t* kvis;                         /* issue 13: the key masks of the current block */
} fwd_tile_ws;

static void fwd_tile_init(const cf_attn_call* c, const fwd_geom* g, const attn_tile* t, char* ws,
                          fwd_tile_ws* w) {
    w->b = t->b, w->hk = t->hk, w->i0 = t->i0, w->na = t->i1 - t->i0, w->Mt = g->G * w->na;
    cf_attn_seq(c, w->b, &w->q0, &w->sq, &w->k0, &w->sk);
    const int64_t Mt = w->Mt;
    w->qt = (float*)(ws + g->off_qt);
    w->qv = (uint32_t*)w->qt;
    w->st = (float*)(ws + g->off_st);
    w->o = (float*)(ws + g->off_o);
    w->m = (float*)(ws + g->off_vec), w->l = w->m + Mt, w->mx = w->l + Mt, w->alpha = w->mx + Mt,
    w->mu = w->alpha + Mt, w->lsum = w->mu + Mt;
    w->lo = (int64_t*)(ws + g->off_lohi), w->hi = w->lo + w->na;
    w->kc = (float*)(ws + g->off_kc);
    w->vc = (float*)(ws + g->off_vc);
    w->tmp = (float*)(ws + g->off_tmp);
    w->xi = (int64_t*)(ws + g->off_x), w->xh = w->xi + Mt;
    w->kvp = (const uint8_t**)(w->xh + Mt);
    w->kvis = (uint8_t*)(ws + g->off_x +
                         align64((2 * sizeof(int64_t) + sizeof(uint8_t*)) * (size_t)g->M));
    for (int64_t r = 0; cf_attn_has_extra(c) && r < Mt; r++)
        w->xi[r] = w->i0 + r % w->na, w->xh[r] = w->hk * g->G + r / w->na;
    for (int64_t ii = 0; ii < w->na; ii++)
        cf_attn_key_range(c, w->i0 + ii, w->sq, w->sk, &w->lo[ii], &w->hi[ii]);
}

/* Q^T of the tile, and the softmax state before the first key. Rows are read 16 at a time into
 * the S^T buffer (free until the first block), then written out a cache line per column; a strided
 * store per element missed L1 (fp32 Q^T is 64 KB at D = 128) and cost ~3% of a causal fp32
 * forward. */
static void fwd_load_q(const cf_attn_call* c, const cf_attn_kernels* kk, const fwd_geom* g,
                       fwd_tile_ws* w) {
    const int64_t Mt = w->Mt, lt = g->lt, na = w->na, D = g->D, G = g->G;
    const int64_t Dq = g->qk_pairs ? g->Dp2 : D;
    const int64_t R = g->bk * Mt >= 16 * Dq ? 16 : 1;
    for (int64_t r0 = 0; r0 < Mt; r0 += R) {
        const int64_t rn = Mt - r0 < R ? Mt - r0 : R;
        for (int64_t rr = 0; rr < rn; rr++) {
            const int64_t r = r0 + rr, gi = r / na, ii = r % na;
            const char* src = row_ptr(&c->q, w->b, w->q0 + w->i0 + ii, w->hk * G + gi);
            if (g->qk_pairs) {
                /* The pair is the little-endian 32-bit word (as K is read in place). */
                uint32_t* dst = (uint32_t*)(R == 16 ? w->st : w->tmp) + rr * Dq;
                const uint16_t* h16 = (const uint16_t*)src;
                if (D % 2 == 0)
                    memcpy(dst, h16, sizeof(uint16_t) * (size_t)D);
                else
                    for (int64_t p = 0; p < Dq; p++) {
                        uint32_t hi16 = 2 * p + 1 < D ? h16[2 * p + 1] : 0;
                        dst[p] = (uint32_t)h16[2 * p] | hi16 << 16;
                    }
            } else {
                kk->to_f32((R == 16 ? w->st : w->tmp) + rr * Dq, src, c->dtype, D);
            }
        }
        if (g->qk_pairs) {
            const uint32_t* rb = (const uint32_t*)(R == 16 ? w->st : w->tmp);
            for (int64_t p = 0; p < Dq; p++)
                for (int64_t rr = 0; rr < rn; rr++)
                    w->qv[p * lt + r0 + rr] = rb[rr * Dq + p];
        } else {
            const float* rb = R == 16 ? w->st : w->tmp;
            for (int64_t d = 0; d < Dq; d++)
                for (int64_t rr = 0; rr < rn; rr++)
                    w->qt[d * lt + r0 + rr] = rb[rr * Dq + d];
        }
    }
    /* A sink is a key of score sink and value 0: each row's softmax starts from it. */
    for (int64_t r = 0; r < Mt; r++) {
        const float sink = cf_attn_sink(c, w->hk * G + r / na);
        w->m[r] = sink, w->l[r] = sink == -INFINITY ? 0.0f : 1.0f;
    }
    memset(w->o, 0, sizeof(float) * (size_t)(Mt * g->Dv));
}

/* Issue 13: the state (CF_REGION_*) of the tile's rows and keys [j0, j0 + nb) under attn_mask,
 * attn_bias and the block-sparse lists: closed (skipped), open (nothing hidden: no masking pass,
 * NaN guards as without masks) or part. With the lists, also sets each row's key mask (w->kvp). */
static int fwd_block_open(const cf_attn_call* c, const fwd_geom* g, fwd_tile_ws* w, int64_t j0,
                          int64_t nb) {
    return cf_attn_cpu_tile_region(c, g->map, w->b, w->hk, g->G, w->i0, w->na, j0, nb, w->kvis,
                                   w->kvp);
}

/* S^T [nb][Mt] (row stride lt) = K Q^T: K rows (krow, kes bytes apart, krs elements) read in place
 * where their layout allows, else re-laid into kc. */
static void fwd_qk(const cf_attn_call* c, const cf_attn_kernels* kk, const fwd_geom* g,
                   fwd_tile_ws* w, int64_t nb, const char* krow, int64_t krs, int64_t kes) {
    const int64_t Mt = w->Mt, lt = g->lt, D = g->D;
    if (g->qk_pairs) {
        const uint32_t* ka;
        int64_t ldk;
        if (g->k_direct && krs % 2 == 0) {
            ka = (const uint32_t*)krow;
            ldk = krs / 2;
        } else {
            uint32_t* kp = (uint32_t*)w->kc;
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
        g->gemm_pairs(nb, Mt, g->Dp2, ka, ldk, 1, w->qv, lt, w->st, lt, 0);
    } else {
        const float* ka;
        int64_t ldk;
        if (g->k_direct) {
            ka = (const float*)krow;
            ldk = krs;
        } else {
            for (int64_t j = 0; j < nb; j++)
                kk->to_f32(w->kc + j * D, krow + j * kes, c->dtype, D);
            ka = w->kc;
            ldk = D;
        }
        kk->gemm_f32(nb, Mt, D, ka, ldk, 1, w->qt, lt, w->st, lt, 0);
    }
}

/* The scores of keys [j0, j0 + nb) in natural units, as the LSE (see exp_cols in attn_cpu.h), -inf
 * where masked, and their maxima per row in w->mx. full: every row sees every key of the block. */
static void fwd_mask_max(const cf_attn_call* c, const cf_attn_kernels* kk, const fwd_geom* g,
                         fwd_tile_ws* w, int64_t j0, int64_t nb, int full, int open) {
    const int64_t Mt = w->Mt, lt = g->lt, na = w->na, G = g->G;
    /* issue 13: a pass over the scores for the bias, or for masks that may hide pairs here */
    const int xtra = cf_attn_has_extra(c) && (c->bias.data || open != CF_REGION_OPEN);
    float* st = w->st;
    for (int64_t r = 0; r < Mt; r++)
        w->mx[r] = -INFINITY;
    /* Softcap or ALiBi: scaled (and soft-capped: vectors, the whole row) first, as
     * cf_attn_score; otherwise the scale is applied with the maxima. */
    const int transform = c->softcap > 0.0f || c->alibi != NULL;
    int64_t a = 0, z = 0;
    for (int64_t j = 0; j < nb; j++) {
        float* row = st + j * lt;
        const int64_t jj = j0 + j;
        if (c->softcap > 0.0f)
            kk->softcap_cols(row, Mt, c->scale, c->softcap, NULL);
        else if (transform)
            for (int64_t r = 0; r < Mt; r++)
                row[r] *= c->scale;
        if (!full || c->alibi) {
            /* Key jj is hidden from rows ii < a (hi[ii] <= jj) and ii >= z (lo[ii] > jj); lo
             * and hi are non-decreasing in ii, so both are runs: fills, no branches. Rows
             * [a, z2) see it and take the ALiBi term (cf_attn_alibi: distance d0 + ii). */
            while (a < na && w->hi[a] <= jj)
                a++;
            while (z < na && w->lo[z] <= jj)
                z++;
            const int64_t z2 = z > a ? z : a, d0 = cf_attn_diag(c, w->i0, w->sq, w->sk) - jj;
            for (int64_t gi = 0; gi < G; gi++) {
                const float slope = cf_attn_slope(c, w->b, w->hk * G + gi);
                float* rg = row + gi * na;
                for (int64_t ii = 0; ii < a; ii++)
                    rg[ii] = -INFINITY;
                for (int64_t ii = z2; ii < na; ii++)
                    rg[ii] = -INFINITY;
                if (slope != 0.0f) cf_attn_alibi_run(rg + a, 1, z2 - a, slope, d0 + a, 1);
            }
        }
        kk->scale_max_cols(row, Mt, transform ? 1.0f : c->scale,
                           xtra ? w->alpha : w->mx); /* alpha: scratch */
    }
    if (xtra) { /* bias and masks on the scores, then the maxima */
        cf_attn_cpu_extras(c, kk, w->b, st, Mt, nb, 1, lt, w->xi, w->xh,
                           c->bs_num.data ? w->kvp : NULL, j0, open != CF_REGION_OPEN, 0, nb);
        for (int64_t j = 0; j < nb; j++)
            kk->scale_max_cols(st + j * lt, Mt, 1.0f, w->mx);
    }
}

/* Online softmax: the new running max m, P = exp(S - m) in place, l = l * alpha + rowsum(P),
 * O *= alpha (alpha = exp(m_old - m)); then dropout's zeros in P. */
static void fwd_softmax(const cf_attn_call* c, const cf_attn_kernels* kk, const fwd_geom* g,
                        fwd_tile_ws* w, int64_t j0, int64_t nb) {
    const int64_t Mt = w->Mt, lt = g->lt, na = w->na, G = g->G, Dv = g->Dv;
    float *m = w->m, *l = w->l, *alpha = w->alpha, *o = w->o;
    for (int64_t r = 0; r < Mt; r++) {
        const float mn = w->mx[r] > m[r] ? w->mx[r] : m[r];
        /* (a max that did not move: expf(0) = 1 without the call) */
        alpha[r] = m[r] == -INFINITY ? 0.0f : m[r] == mn ? 1.0f : expf(m[r] - mn);
        w->mu[r] = mn == -INFINITY ? 0.0f : mn;
        m[r] = mn;
        w->lsum[r] = 0.0f;
    }
    for (int64_t j = 0; j < nb; j++)
        kk->exp_cols(w->st + j * lt, Mt, w->mu, w->lsum);
    for (int64_t r = 0; r < Mt; r++) {
        l[r] = l[r] * alpha[r] + w->lsum[r];
        /* (alpha 0: a first visible block, O still 0, or a max that rose by more than ~87, whose
         * exp underflows: the blocks before then vanish from O as they do from l) */
        if (alpha[r] != 1.0f)
            for (int64_t d = 0; d < Dv; d++)
                o[r * Dv + d] *= alpha[r];
    }
    if (c->dropout_p <= 0.0f) return;
    const uint64_t thr = cf_dropout_threshold(c->dropout_p);
    for (int64_t gi = 0; gi < G; gi++)
        for (int64_t ii = 0; ii < na; ii++) {
            cf_philox_out x = {{0, 0, 0, 0}};
            for (int64_t j = 0; j < nb; j++) {
                const int64_t jj = j0 + j + c->k_offset; /* the key's position */
                if (j == 0 || (jj & 3) == 0)
                    x = cf_dropout_words(c->seed, c->offset, (uint64_t)w->b,
                                         (uint64_t)(w->hk * G + gi),
                                         (uint64_t)(w->i0 + ii + c->q_offset), (uint64_t)jj);
                if ((uint64_t)x.x[jj & 3] >= thr) w->st[j * lt + gi * na + ii] = 0.0f;
            }
        }
}

/* O += P V over keys [j0, j0 + nb) (V rows at vrow, ves bytes apart, vrs elements). In a partly
 * masked block a row's masked keys have P = 0, and 0 times a NaN or infinite v would still reach
 * the row: such a block (rare) sums visible pairs only. Issue 13's masks (attn_mask, block-sparse,
 * a bias of -inf) can hide any key of a block from any row: with them every row of V is checked. */
static void fwd_pv(const cf_attn_call* c, const cf_attn_kernels* kk, const fwd_geom* g,
                   fwd_tile_ws* w, int64_t j0, int64_t nb, int full, int open, const char* vrow,
                   int64_t vrs, int64_t ves) {
    const int64_t Mt = w->Mt, lt = g->lt, lv = g->lv, na = w->na, G = g->G, Dv = g->Dv;
    const int xtra = open != CF_REGION_OPEN; /* issue 13's masks may hide pairs of this block */
    const float* st = w->st;
    float* o = w->o;
    if (xtra ? cf_attn_cpu_rows_nonfinite(vrow, ves, nb, Dv, c->dtype)
             : !full && cf_attn_cpu_hidden_nonfinite(vrow, ves, j0, nb, w->lo[na - 1], w->hi[0], Dv,
                                                     c->dtype)) {
        for (int64_t j = 0; j < nb; j++) {
            const int64_t jj = j0 + j;
            kk->to_f32(w->tmp, vrow + j * ves, c->dtype, Dv);
            for (int64_t gi = 0; gi < G; gi++)
                for (int64_t ii = 0; ii < na; ii++) {
                    if (jj < w->lo[ii] || jj >= w->hi[ii]) continue;
                    if (xtra &&
                        cf_attn_extra(c, w->b, w->hk * G + gi, w->i0 + ii, jj, 0.0f) == -INFINITY)
                        continue;
                    const int64_t r = gi * na + ii;
                    const float pr = st[j * lt + r];
                    for (int64_t d = 0; d < Dv; d++)
                        o[r * Dv + d] += pr * w->tmp[d];
                }
        }
    } else if (g->bf16) {
        const int64_t np = (nb + 1) / 2;
        uint32_t* vv = (uint32_t*)w->vc;
        uint32_t* pv = vv + np * lv;
        for (int64_t p = 0; p < np; p++) {
            const uint16_t* v0 = (const uint16_t*)(vrow + 2 * p * ves);
            const uint16_t* v1 =
                2 * p + 1 < nb ? (const uint16_t*)(vrow + (2 * p + 1) * ves) : NULL;
            kk->interleave_u16(vv + p * lv, v0, v1, Dv);
            g->pack_pairs(pv + p * lt, st + 2 * p * lt,
                          2 * p + 1 < nb ? st + (2 * p + 1) * lt : NULL, Mt);
        }
        g->gemm_pairs(Mt, Dv, np, pv, 1, lt, vv, lv, o, Dv, 1);
    } else {
        const float* vb;
        int64_t ldv;
        if (g->v_direct) {
            vb = (const float*)vrow;
            ldv = vrs;
        } else {
            for (int64_t j = 0; j < nb; j++)
                kk->to_f32(w->vc + j * lv, vrow + j * ves, c->dtype, Dv);
            vb = w->vc;
            ldv = lv;
        }
        kk->gemm_f32(Mt, Dv, nb, st, 1, lt, vb, ldv, o, Dv, 1);
    }
}

/* out = O / l (times the dropout rescale), lse = m + ln l; l = 0 (no key seen): 0 and -inf; l NaN
 * (a NaN score): NaN both. */
static void fwd_store(const cf_attn_call* c, const cf_attn_kernels* kk, const fwd_geom* g,
                      const fwd_tile_ws* w) {
    const int64_t Dv = g->Dv;
    const float keep_scale = 1.0f / (1.0f - c->dropout_p);
    for (int64_t gi = 0; gi < g->G; gi++)
        for (int64_t ii = 0; ii < w->na; ii++) {
            const int64_t r = gi * w->na + ii, h = w->hk * g->G + gi, qi = w->q0 + w->i0 + ii;
            const float l = w->l[r], inv = l != 0.0f ? keep_scale / l : 0.0f;
            for (int64_t d = 0; d < Dv; d++)
                w->tmp[d] = w->o[r * Dv + d] * inv;
            kk->from_f32(row_ptr(&c->out, w->b, qi, h), w->tmp, c->dtype, Dv);
            if (c->lse.data)
                ((float*)c->lse.data)[w->b * c->lse.stride[0] + h * c->lse.stride[1] +
                                      qi * c->lse.stride[2]] =
                    l != 0.0f ? w->m[r] + logf(l) : -INFINITY;
        }
}

static void fwd_tile(const cf_attn_call* c, const cf_attn_kernels* kk, const fwd_geom* g,
                     const attn_tile* t, char* ws) {
    fwd_tile_ws w;
    fwd_tile_init(c, g, t, ws, &w);
    fwd_load_q(c, kk, g, &w);
    const int64_t jlo = w.lo[0], jhi = w.hi[w.na - 1], BK = g->bk,
                  es = (int64_t)cf_dtype_size(c->dtype);
    for (int64_t j0 = jlo; j0 < jhi; j0 += BK) {
        const int64_t nb = jhi - j0 < BK ? jhi - j0 : BK;
        const int full = w.lo[w.na - 1] <= j0 && w.hi[0] >= j0 + nb;
        const int open = cf_attn_has_extra(c) ? fwd_block_open(c, g, &w, j0, nb) : CF_REGION_OPEN;
        if (open == CF_REGION_CLOSED) continue;
        int64_t krs, vrs; /* row strides: the view's, or D / Dv for rows gathered from pages */
        const char* krow =
            cf_attn_cpu_key_rows(c, &c->k, w.b, w.k0, j0, nb, w.hk, g->D, ws + g->off_gk, &krs);
        const char* vrow =
            cf_attn_cpu_key_rows(c, &c->v, w.b, w.k0, j0, nb, w.hk, g->Dv, ws + g->off_gv, &vrs);
        fwd_qk(c, kk, g, &w, nb, krow, krs, es * krs);
        fwd_mask_max(c, kk, g, &w, j0, nb, full, open);
        fwd_softmax(c, kk, g, &w, j0, nb);
        fwd_pv(c, kk, g, &w, j0, nb, full, open, vrow, vrs, es * vrs);
    }
    fwd_store(c, kk, g, &w);
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
    cf_attn_mask_map* map = cf_attn_cpu_mask_map(c, c->threads);
    g.map = map;
    const cflash_status st = cf_attn_cpu_fwd_run(c, kk, g.n, g.bytes, fwd_tile_fn, &g);
    cf_attn_cpu_mask_map_free(map);
    return st;
}

attn_tile* cf_attn_cpu_q_tiles(const cf_attn_call* c, int64_t n, int64_t* count) {
    return make_q_tiles(c, n, count, 0);
}
