/* cpu-amx backward: the five products of the FlashAttention backward on tiles, in the shared
 * driver's passes and partitioning (src/cpu/attn_tiled_bwd.c: each thread owns whole key blocks,
 * or whole (sequence, KV head) units in the one-pass mode, so no two threads write one gradient
 * element and results do not depend on the thread count). In the forward this was
 *   S = Q K^T, P = exp(S * scale - lse), O = P V,
 * so now we have, per key block (its K^T, V^T and K pairs packed once) and query block of a head:
 *   S = Q K^T, P            (A: Q rows; B: K^T pairs)
 *   dV += P^T dO            (A: P^T, built from P rounded to the dtype; B: dO pairs)
 *   dP = dO V^T             (A: dO rows; B: V^T pairs)
 *   dS = P (dP - rowsum(dO O)) scale
 *   dK += dS^T Q            (A: dS^T; B: Q pairs)
 *   dQ += dS K              (A: dS rows; B: K pairs), into the unit's fp32 dQ or a dQ tile.
 * Issue 13's attn_mask, attn_bias and block-sparse lists are applied as S is formed, and the
 * (block, rows) pairs they hide entirely are skipped; dbias is summed by the tiled backward's own
 * tasks (cf_attn_cpu_dbias_tasks: each row's own softmax statistics; their products on the tiles
 * too, bf16 through the table's gemm_bf16, fp16 through cf_amx_pairs_f16).
 * fp16 on a CPU without AMX-FP16: every operand as bf16 high and low parts, three tdpbf16ps a
 * product (cf_amx_mm2). */
#include <math.h>
#include <string.h>

#include "cpu/x86/amx_attn.h"
#include "cpu/x86/amx_tiles.h"

#ifdef CF_AMX_CODE

typedef struct amx_bwd_geom {
    int64_t G, n, bq, bk; /* heads per group, dq tile rows per head, block rows and keys */
    int64_t R32, NB32;    /* rows of a query block or dq tile, keys per block, padded */
    int64_t D32, Dv32, D16, Dv16, W32;
    int fp16;                     /* tdpfp16ps (fp16 on AMX-FP16) or tdpbf16ps */
    int split;                    /* fp16 without AMX-FP16: bf16 pairs of parts (cf_amx_mm2) */
    const cf_attn_mask_map* mmap; /* attn_mask / attn_bias summarised (may be NULL) */
    size_t kr, ktv, vtv, kv, dk, dv, qa, doa, s, dp, pd, y, h16, hp, at, dov, qv, dq, map, kvis,
        kvp, gk, gv, bytes;
    /* split: the low parts of ktv, vtv, kv, qa, doa, h16, at, dov, qv */
    size_t ktvl, vtvl, kvl, qal, doal, h16l, atl, dovl, qvl;
} amx_bwd_geom;

static size_t a64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

static void bwd_layout(const cf_attn_call* c, amx_bwd_geom* g) {
    memset(g, 0, sizeof *g);
    const cf_attn_blocks bl = cf_attn_cpu_blocks();
    g->G = c->H / c->Hk;
    g->bq = bl.bwd_q;
    g->bk = bl.bwd_k;
    g->n = g->bq / g->G > 0 ? g->bq / g->G : 1;
    g->R32 = cf_amx_round(g->bq > g->G * g->n ? g->bq : g->G * g->n, 32);
    g->NB32 = cf_amx_round(g->bk, 32);
    g->D32 = cf_amx_round(c->D, 32);
    g->Dv32 = cf_amx_round(c->Dv, 32);
    g->D16 = cf_amx_round(c->D, 16);
    g->Dv16 = cf_amx_round(c->Dv, 16);
    g->W32 = g->D32 > g->Dv32 ? g->D32 : g->Dv32;
    g->split = c->dtype == CF_F16 && !CF_AMX_HAS_FP16();
    g->fp16 = c->dtype == CF_F16 && !g->split;
    const size_t R = (size_t)g->R32, NB = (size_t)g->NB32, D32 = (size_t)g->D32,
                 Dv32 = (size_t)g->Dv32, D16 = (size_t)g->D16, Dv16 = (size_t)g->Dv16;
    size_t off = 0;
#define TAKE(field, bytes_)                                                                        \
    g->field = off;                                                                                \
    off += a64(bytes_)
    TAKE(kr, 2 * NB * (size_t)g->W32); /* K or V rows [NB32][W32], staging for the pairs */
    TAKE(ktv, 4 * (D32 / 2) * NB);     /* K^T pairs [D32 / 2][NB32] */
    TAKE(vtv, 4 * (Dv32 / 2) * NB);    /* V^T pairs [Dv32 / 2][NB32] */
    TAKE(kv, 4 * (NB / 2) * D16);      /* K pairs [NB32 / 2][D16] */
    TAKE(dk, 4 * NB * D16);            /* dK [NB32][D16] */
    TAKE(dv, 4 * NB * Dv16);           /* dV [NB32][Dv16] */
    TAKE(qa, 2 * R * D32);             /* Q rows [R32][D32] */
    TAKE(doa, 2 * R * Dv32);           /* dO rows [R32][Dv32] */
    TAKE(s, 4 * R * NB);               /* S, then P [R32][NB32] */
    TAKE(dp, 4 * R * NB);              /* dP, then dS */
    TAKE(pd, 4 * R * NB);              /* P with dropout */
    TAKE(y, 4 * R * NB);               /* tanh(x / softcap) */
    TAKE(h16, 2 * R * NB);             /* P or dS rounded [R32][NB32] */
    TAKE(hp, 4 * (R / 2) * NB);        /* its row pairs [R32 / 2][NB32] */
    TAKE(at, 4 * NB * (R / 2));        /* their transpose [NB32][R32 / 2] */
    TAKE(dov, 4 * (R / 2) * Dv16);     /* dO pairs [R32 / 2][Dv16] */
    TAKE(qv, 4 * (R / 2) * D16);       /* Q pairs [R32 / 2][D16] */
    TAKE(dq, 4 * R * D16);             /* dQ of a block or tile [R32][D16] */
    TAKE(map, (8 * 4 + 4 * 4) * R);    /* per row: query, lo, hi, head; slope, lse, dl, shift */
    /* block-sparse key masks of a block's rows (one head's bq, or a dQ tile's G heads of n) */
    const int64_t nkv = g->bq + 1 > g->G * (g->n + 1) ? g->bq + 1 : g->G * (g->n + 1);
    TAKE(kvis, (size_t)nkv * NB);
    TAKE(kvp, sizeof(uint8_t*) * R);          /* each row's */
    const size_t pg = c->block_table ? 1 : 0; /* paged: a block's K / V rows gathered */
    TAKE(gk, pg * 2 * NB * (size_t)c->D);
    TAKE(gv, pg * 2 * NB * (size_t)c->Dv);
    const size_t sp = g->split ? 1 : 0;
    TAKE(ktvl, sp * 4 * (D32 / 2) * NB);
    TAKE(vtvl, sp * 4 * (Dv32 / 2) * NB);
    TAKE(kvl, sp * 4 * (NB / 2) * D16);
    TAKE(qal, sp * 2 * R * D32);
    TAKE(doal, sp * 2 * R * Dv32);
    TAKE(h16l, sp * 2 * R * NB);
    TAKE(atl, sp * 4 * NB * (R / 2));
    TAKE(dovl, sp * 4 * (R / 2) * Dv16);
    TAKE(qvl, sp * 4 * (R / 2) * D16);
#undef TAKE
    g->bytes = off;
}

/* Per-row facts of a block of rows, in the workspace. */
typedef struct rows_map {
    int64_t *i, *lo, *hi, *h;
    float *slope, *lb, *dl, *sh;
} rows_map;

static rows_map map_at(const amx_bwd_geom* g, char* ws) {
    rows_map m;
    const int64_t R = g->R32;
    m.i = (int64_t*)(ws + g->map);
    m.lo = m.i + R, m.hi = m.lo + R, m.h = m.hi + R;
    m.slope = (float*)(m.h + R);
    m.lb = m.slope + R, m.dl = m.lb + R, m.sh = m.dl + R;
    return m;
}

/* Row r of the map: query i (within sequence b, whose rows start at q0) of head h. */
static void map_row(const cf_attn_call* c, const float* dl, const rows_map* mp, int64_t r,
                    int64_t b, int64_t q0, int64_t h, int64_t i, int64_t sq, int64_t sk) {
    mp->i[r] = i;
    mp->h[r] = h;
    mp->slope[r] = cf_attn_slope(c, b, h);
    cf_attn_key_range(c, i, sq, sk, &mp->lo[r], &mp->hi[r]);
    mp->lb[r] = cf_attn_lse_sub(c, b, h, q0 + i);
    mp->sh[r] = cf_attn_lse_shift(c, b, h, q0 + i);
    mp->dl[r] = cf_attn_dl(c, dl, b, h, q0 + i);
}

/* Split only (fp16 without AMX-FP16): the fp16 operand x (rows x cols 16-bit elements, ld apart)
 * into bf16 high parts in place and low parts at the workspace's offset `off`; returns the low
 * parts (NULL when not split: cf_amx_mm2 then multiplies x as it is). */
static void* split_at(const amx_bwd_geom* g, char* ws, size_t off, void* x, int64_t rows,
                      int64_t cols, int64_t ld) {
    if (!g->split) return NULL;
    cf_amx_split16(x, (uint16_t*)(ws + off), rows, cols, ld);
    return ws + off;
}

/* The low parts split_at left at `off` (NULL when not split). */
static void* low_at(const amx_bwd_geom* g, char* ws, size_t off) {
    return g->split ? ws + off : NULL;
}

/* The key block [j0, j0 + nb) of (b, hk) in tile layouts: K^T and V^T pairs (B of S and dP) and,
 * when asked, K pairs (B of dQ += dS K). Paged K / V (block_table) are gathered where the block
 * spans pages. */
static void pack_keys(const cf_attn_call* c, const cf_attn_kernels* kk, const amx_bwd_geom* g,
                      char* ws, int64_t b, int64_t k0, int64_t j0, int64_t nb, int64_t hk,
                      int with_k) {
    const int64_t nb32 = cf_amx_round(nb, 32), NB32 = g->NB32;
    uint16_t* kr = (uint16_t*)(ws + g->kr);
    int64_t krs, vrs;
    const char* krow = cf_attn_cpu_key_rows(c, &c->k, b, k0, j0, nb, hk, c->D, ws + g->gk, &krs);
    const char* vrow = cf_attn_cpu_key_rows(c, &c->v, b, k0, j0, nb, hk, c->Dv, ws + g->gv, &vrs);
    cf_amx_rows16_at(kr, g->D32, g->D32, nb32, krow, krs, nb, c->D);
    cf_amx_t32((uint32_t*)(ws + g->ktv), NB32, (const uint32_t*)kr, g->D32 / 2, nb32, g->D32 / 2);
    cf_amx_rows16_at(kr, g->Dv32, g->Dv32, nb32, vrow, vrs, nb, c->Dv);
    cf_amx_t32((uint32_t*)(ws + g->vtv), NB32, (const uint32_t*)kr, g->Dv32 / 2, nb32, g->Dv32 / 2);
    split_at(g, ws, g->ktvl, ws + g->ktv, g->D32 / 2, 2 * nb32, 2 * NB32);
    split_at(g, ws, g->vtvl, ws + g->vtv, g->Dv32 / 2, 2 * nb32, 2 * NB32);
    if (with_k) {
        cf_amx_rows_vnni_at(kk, (uint32_t*)(ws + g->kv), g->D16, g->D16, nb32 / 2, krow, krs, nb,
                            c->D);
        split_at(g, ws, g->kvl, ws + g->kv, nb32 / 2, 2 * g->D16, 2 * g->D16);
    }
}

/* The state (CF_REGION_*) of issue 13's masks over rows [i0, i0 + n) of the G heads from hk * G
 * and keys [j0, j0 + nb) (open without any), the rows' block-sparse key masks in the workspace. */
static int masks_state(const cf_attn_call* c, const amx_bwd_geom* g, char* ws, int64_t b,
                       int64_t hk, int64_t G, int64_t i0, int64_t n, int64_t j0, int64_t nb) {
    return cf_attn_cpu_tile_region(c, g->mmap, b, hk, G, i0, n, j0, nb, (uint8_t*)(ws + g->kvis),
                                   (const uint8_t**)(ws + g->kvp));
}

/* For rows [0, nr) of a block against keys [j0, j0 + nb) (its K^T, V^T packed; qa, doa rows, the
 * map and, with block-sparse lists, the rows' key masks filled; open: the state of issue 13's
 * masks there): P in s, dS in dp (and P with
 * dropout in pd when dropout is on), fp32, zero in columns [nb, nb32). qal, doal: the rows' low
 * parts (split), else NULL. */
static void p_and_ds(const cf_attn_call* c, const cf_attn_kernels* kk, const amx_bwd_geom* g,
                     char* ws, const rows_map* mp, int64_t b, int64_t nr, int64_t j0, int64_t nb,
                     int64_t sq, int64_t sk, int open, const uint16_t* qa, const uint16_t* qal,
                     int64_t lq, const uint16_t* doa, const uint16_t* doal, int64_t ldo) {
    const uint8_t* const* kvp = c->bs_num.data ? (const uint8_t* const*)(ws + g->kvp) : NULL;
    const int64_t NB32 = g->NB32, nb16 = cf_amx_round(nb, 16), nb32 = cf_amx_round(nb, 32);
    const int64_t nr16 = cf_amx_round(nr, 16);
    float *s = (float*)(ws + g->s), *dp = (float*)(ws + g->dp), *pd = (float*)(ws + g->pd),
          *y = (float*)(ws + g->y);
    /* S = Q K^T */
    cf_amx_mm2(s, NB32, qa, qal, lq, (const uint32_t*)(ws + g->ktv), low_at(g, ws, g->ktvl), NB32,
               nr16 / 16, nb16 / 16, 0, g->D32 / 32, 0, g->fp16);
    const cf_attn_score_map sm = {nr,        nb,  NB32,   1,      mp->i,
                                  mp->slope, j0,  mp->lo, mp->hi, b,
                                  mp->h,     kvp, 0,      0,      c->lse_fix ? mp->sh : NULL};
    cf_attn_scores(c, kk, &sm, s, c->softcap > 0.0f ? y : NULL, sq, sk, open);
    for (int64_t r = 0; r < nr; r++) {
        kk->exp_row(s + r * NB32, nb, mp->lb[r]);
        memset(s + r * NB32 + nb, 0, sizeof(float) * (size_t)(nb32 - nb));
    }
    const float ks = 1.0f / (1.0f - c->dropout_p);
    if (c->dropout_p > 0.0f) {
        memcpy(pd, s, sizeof(float) * (size_t)(nr * NB32));
        cf_attn_dropout_apply(c, pd, &sm, mp->h, b, ks);
    }
    /* dP = dO V^T, with the forward's dropout */
    cf_amx_mm2(dp, NB32, doa, doal, ldo, (const uint32_t*)(ws + g->vtv), low_at(g, ws, g->vtvl),
               NB32, nr16 / 16, nb16 / 16, 0, g->Dv32 / 32, 0, g->fp16);
    if (c->dropout_p > 0.0f) cf_attn_dropout_apply(c, dp, &sm, mp->h, b, ks);
    for (int64_t r = 0; r < nr; r++) {
        float* d = dp + r * NB32;
        kk->ds_row(d, s + r * NB32, d, nb, mp->dl[r], c->scale);
        if (c->softcap > 0.0f)
            for (int64_t j = 0; j < nb; j++)
                d[j] *= 1.0f - y[r * NB32 + j] * y[r * NB32 + j];
    }
}

/* ---- Rows of far |lse| (the engine's far hook: before pass 0) ---------------------------------
 */

/* r (CF_ATTN_LSE_FAR) of the far rows among [i0, i0 + n) of (b, h), n <= bq, into fix as
 * cf_attn_dl reads it: each row's max m and sum l of exp(s - m) over its keys and the sink, from
 * the scores as the tiles form them (the tiled backward's far pass rounds them otherwise: its r
 * would not match these scores), r = m - lse + log l where that is lse's rounding. A block holding
 * a NaN makes the row's r NaN: it is then not taken (cf_attn_lse_residue). */
CF_AMX_TARGET static void far_rows(const cf_attn_call* c, const cf_attn_kernels* kk,
                                   const void* geom, int64_t b, int64_t h, int64_t i0, int64_t n,
                                   char* ws, float* fix) {
    const amx_bwd_geom* g = geom;
    const int64_t NB32 = g->NB32, n16 = cf_amx_round(n, 16), hk = h / g->G;
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    float* s = (float*)(ws + g->s);
    uint16_t* qa = (uint16_t*)(ws + g->qa);
    const rows_map mp = map_at(g, ws);
    float* m = mp.lb;                  /* (the map's lse column: free here) */
    double* l = (double*)(ws + g->dq); /* (dQ's buffer: free here) */
    cf_amx_rows16(qa, g->D32, g->D32, n, &c->q, b, q0 + i0, h, n, c->D);
    memset(qa + n * g->D32, 0, sizeof(uint16_t) * (size_t)((n16 - n) * g->D32));
    const uint16_t* qal = split_at(g, ws, g->qal, qa, n16, g->D32, g->D32);
    for (int64_t r = 0; r < n; r++) {
        mp.i[r] = i0 + r, mp.h[r] = h, mp.slope[r] = cf_attn_slope(c, b, h);
        cf_attn_key_range(c, i0 + r, sq, sk, &mp.lo[r], &mp.hi[r]);
        m[r] = -INFINITY, l[r] = 0.0;
    }
    const int64_t jlo = mp.lo[0], jhi = mp.hi[n - 1];
    const uint8_t** kvp = (const uint8_t**)(ws + g->kvp);
    for (int64_t j0 = jlo; j0 < jhi; j0 += g->bk) {
        const int64_t nb = jhi - j0 < g->bk ? jhi - j0 : g->bk, nb16 = cf_amx_round(nb, 16);
        const int open = masks_state(c, g, ws, b, h, 1, i0, n, j0, nb);
        if (open == CF_REGION_CLOSED) continue; /* (issue 13's masks hide the block from them) */
        pack_keys(c, kk, g, ws, b, k0, j0, nb, hk, 0);
        cf_amx_mm2(s, NB32, qa, qal, g->D32, (const uint32_t*)(ws + g->ktv), low_at(g, ws, g->ktvl),
                   NB32, n16 / 16, nb16 / 16, 0, g->D32 / 32, 0, g->fp16);
        const cf_attn_score_map sm = {n,  nb,    NB32,  1, mp.i, mp.slope,
                                      j0, mp.lo, mp.hi, b, mp.h, c->bs_num.data ? kvp : NULL,
                                      0,  0,     NULL};
        cf_attn_scores(c, kk, &sm, s, NULL, sq, sk, open);
        for (int64_t r = 0; r < n; r++) {
            float *x = s + r * NB32, mx = -INFINITY;
            for (int64_t j = 0; j < nb; j++)
                mx = x[j] > mx ? x[j] : mx;
            if (mx == -INFINITY) continue; /* (a NaN fails both compares: see below) */
            if (mx > m[r]) {
                l[r] = m[r] == -INFINITY ? 0.0 : l[r] * exp((double)m[r] - mx);
                m[r] = mx;
            }
            kk->exp_row(x, nb, m[r]);
            double acc = 0.0;
            for (int64_t j = 0; j < nb; j++)
                acc += x[j];
            l[r] += acc;
        }
    }
    cf_attn_far_store(c, b, h, q0 + i0, n, m, l, fix);
}

/* ---- dK, dV of one key block (and dQ into the unit's buffer in the one-pass mode) --------------
 */

/* Rows [s0, s0 + n) of head h of view v (d elements) as an A operand of nr16 rows: read where
 * they are when they fill whole tiles (n = nr16, d a multiple of 32: tile loads take any row
 * stride) and copy is 0, else copied zero-padded into buf (width elements a row). *ld: the
 * operand's row stride in elements. */
static const uint16_t* a_rows(uint16_t* buf, int64_t width, const cf_view* v, int64_t b, int64_t s0,
                              int64_t h, int64_t n, int64_t nr16, int64_t d, int copy,
                              int64_t* ld) {
    if (n == nr16 && d == width && !copy) {
        *ld = v->stride[1];
        return (const uint16_t*)cf_amx_row_ptr(v, b, s0, h);
    }
    cf_amx_rows16(buf, width, width, nr16, v, b, s0, h, n, d);
    *ld = width;
    return buf;
}

CF_AMX_TARGET static void dkdv_tile(const cf_attn_call* c, const cf_attn_kernels* kk,
                                    const void* geom, const attn_tile* t, char* ws, const float* dl,
                                    float* dqacc) {
    const amx_bwd_geom* g = geom;
    const int64_t b = t->b, hk = t->hk, j0 = t->i0, nb = t->i1 - t->i0, D = c->D, Dv = c->Dv;
    const int64_t NB32 = g->NB32, R32 = g->R32, D16 = g->D16, Dv16 = g->Dv16;
    const int64_t nb16 = cf_amx_round(nb, 16), nb32 = cf_amx_round(nb, 32);
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    float *dk = (float*)(ws + g->dk), *dv = (float*)(ws + g->dv), *s = (float*)(ws + g->s),
          *dp = (float*)(ws + g->dp), *pd = (float*)(ws + g->pd), *dq = (float*)(ws + g->dq);
    uint16_t* h16 = (uint16_t*)(ws + g->h16);
    uint32_t *hp = (uint32_t*)(ws + g->hp), *at = (uint32_t*)(ws + g->at);
    const rows_map mp = map_at(g, ws);

    pack_keys(c, kk, g, ws, b, k0, j0, nb, hk, dqacc != NULL);
    memset(dk, 0, sizeof(float) * (size_t)(nb16 * D16));
    memset(dv, 0, sizeof(float) * (size_t)(nb16 * Dv16));
    int64_t ia, iz;
    cf_attn_rows_seeing(c, sq, sk, j0, j0 + nb, &ia, &iz);
    int kbad = -1; /* K/V rows of the block hold a NaN or infinity (checked when first needed) */
    for (int64_t gi = 0; gi < g->G; gi++) {
        const int64_t h = hk * g->G + gi;
        for (int64_t i0 = ia; i0 < iz; i0 += g->bq) {
            const int64_t nr = iz - i0 < g->bq ? iz - i0 : g->bq;
            const int64_t nr16 = cf_amx_round(nr, 16), nr32 = cf_amx_round(nr, 32);
            /* issue 13's masks: the rows' state (their key masks set with block-sparse lists) */
            const int open = masks_state(c, g, ws, b, h, 1, i0, nr, j0, nb);
            if (open == CF_REGION_CLOSED) continue; /* all hidden */
            int64_t lq, ldo;
            const uint16_t* qa = a_rows((uint16_t*)(ws + g->qa), g->D32, &c->q, b, q0 + i0, h, nr,
                                        nr16, D, g->split, &lq);
            const uint16_t* doa = a_rows((uint16_t*)(ws + g->doa), g->Dv32, &c->dout, b, q0 + i0, h,
                                         nr, nr16, Dv, g->split, &ldo);
            for (int64_t r = 0; r < nr; r++)
                map_row(c, dl, &mp, r, b, q0, h, i0 + r, sq, sk);
            /* A partly masked block holding a NaN or infinity: pair by pair, in fp32 (the tile
             * products' zero weights would carry it across the mask). */
            if (open != CF_REGION_OPEN || mp.lo[nr - 1] > j0 || mp.hi[0] < j0 + nb) {
                if (kbad < 0) kbad = cf_attn_bwd_key_rows_bad(c, b, hk, k0, j0, nb, 0, 0, 0);
                if (kbad || cf_attn_bwd_query_rows_bad(c, b, h, q0 + i0, nr, mp.dl)) {
                    cf_attn_bwd_exact_pairs(c, b, h, i0, nr, mp.dl, j0, nb, dk, D16, dv, Dv16,
                                            dqacc ? dqacc + (gi * sq + i0) * D : NULL, D);
                    continue;
                }
            }
            /* (split: the copies of the rows, a_rows above) */
            const uint16_t* qal = split_at(g, ws, g->qal, (void*)qa, nr16, g->D32, g->D32);
            const uint16_t* doal = split_at(g, ws, g->doal, (void*)doa, nr16, g->Dv32, g->Dv32);
            p_and_ds(c, kk, g, ws, &mp, b, nr, j0, nb, sq, sk, open, qa, qal, lq, doa, doal, ldo);

            /* dV += P^T dO */
            cf_amx_f32_rows16(kk, h16, NB32, nb32, nr32, c->dropout_p > 0.0f ? pd : s, NB32, nr, nb,
                              c->dtype);
            cf_amx_pairs_t(kk, at, R32 / 2, hp, h16, NB32, nr32, nb16);
            cf_amx_rows_vnni(kk, (uint32_t*)(ws + g->dov), Dv16, Dv16, nr32 / 2, &c->dout, b,
                             q0 + i0, h, nr, Dv);
            const uint16_t* atl = split_at(g, ws, g->atl, at, nb16, nr32, R32);
            const uint32_t* dovl =
                split_at(g, ws, g->dovl, ws + g->dov, nr32 / 2, 2 * Dv16, 2 * Dv16);
            cf_amx_mm2(dv, Dv16, (const uint16_t*)at, atl, R32, (const uint32_t*)(ws + g->dov),
                       dovl, Dv16, nb16 / 16, Dv16 / 16, 0, nr32 / 32, 1, g->fp16);
            /* dK += dS^T Q */
            cf_amx_f32_rows16(kk, h16, NB32, nb32, nr32, dp, NB32, nr, nb, c->dtype);
            cf_amx_pairs_t(kk, at, R32 / 2, hp, h16, NB32, nr32, nb16);
            cf_amx_rows_vnni(kk, (uint32_t*)(ws + g->qv), D16, D16, nr32 / 2, &c->q, b, q0 + i0, h,
                             nr, D);
            atl = split_at(g, ws, g->atl, at, nb16, nr32, R32);
            const uint32_t* qvl = split_at(g, ws, g->qvl, ws + g->qv, nr32 / 2, 2 * D16, 2 * D16);
            cf_amx_mm2(dk, D16, (const uint16_t*)at, atl, R32, (const uint32_t*)(ws + g->qv), qvl,
                       D16, nb16 / 16, D16 / 16, 0, nr32 / 32, 1, g->fp16);
            /* dQ += dS K, rows of this unit only: no other thread writes them */
            if (dqacc) {
                const uint16_t* h16l = split_at(g, ws, g->h16l, h16, nr16, nb32, NB32);
                cf_amx_mm2(dq, D16, h16, h16l, NB32, (const uint32_t*)(ws + g->kv),
                           low_at(g, ws, g->kvl), D16, nr16 / 16, D16 / 16, 0, nb32 / 32, 0,
                           g->fp16);
                float* acc = dqacc + (gi * sq + i0) * D;
                for (int64_t r = 0; r < nr; r++)
                    for (int64_t d = 0; d < D; d++)
                        acc[r * D + d] += dq[r * D16 + d];
            }
        }
    }
    for (int64_t j = 0; j < nb; j++) {
        kk->from_f32(cf_attn_cpu_key_ptr(c, &c->dk, b, k0, j0 + j, hk), dk + j * D16, c->dtype, D);
        kk->from_f32(cf_attn_cpu_key_ptr(c, &c->dv, b, k0, j0 + j, hk), dv + j * Dv16, c->dtype,
                     Dv);
    }
}

/* ---- dQ of one query tile (three-pass mode) ----------------------------------------------------
 */

CF_AMX_TARGET static void dq_tile(const cf_attn_call* c, const cf_attn_kernels* kk,
                                  const void* geom, const attn_tile* t, char* ws, const float* dl) {
    const amx_bwd_geom* g = geom;
    const int64_t b = t->b, hk = t->hk, i0 = t->i0, na = t->i1 - t->i0, G = g->G;
    const int64_t Mt = G * na, m16 = cf_amx_round(Mt, 16), D = c->D, Dv = c->Dv;
    const int64_t NB32 = g->NB32, D16 = g->D16;
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    float *dp = (float*)(ws + g->dp), *dq = (float*)(ws + g->dq);
    uint16_t *qa = (uint16_t*)(ws + g->qa), *doa = (uint16_t*)(ws + g->doa),
             *h16 = (uint16_t*)(ws + g->h16);
    const rows_map mp = map_at(g, ws);
    /* Row r = gi * na + ii is query i0 + ii of head hk * G + gi. */
    for (int64_t gi = 0; gi < G; gi++) {
        const int64_t h = hk * G + gi;
        cf_amx_rows16(qa + gi * na * g->D32, g->D32, g->D32, na, &c->q, b, q0 + i0, h, na, D);
        cf_amx_rows16(doa + gi * na * g->Dv32, g->Dv32, g->Dv32, na, &c->dout, b, q0 + i0, h, na,
                      Dv);
        for (int64_t ii = 0; ii < na; ii++)
            map_row(c, dl, &mp, gi * na + ii, b, q0, h, i0 + ii, sq, sk);
    }
    memset(qa + Mt * g->D32, 0, sizeof(uint16_t) * (size_t)((m16 - Mt) * g->D32));
    memset(doa + Mt * g->Dv32, 0, sizeof(uint16_t) * (size_t)((m16 - Mt) * g->Dv32));
    const uint16_t* qal = split_at(g, ws, g->qal, qa, m16, g->D32, g->D32);
    const uint16_t* doal = split_at(g, ws, g->doal, doa, m16, g->Dv32, g->Dv32);
    memset(dq, 0, sizeof(float) * (size_t)(m16 * D16));
    const int64_t jlo = mp.lo[0], jhi = mp.hi[na - 1];
    int qbad = -1; /* the tile's query rows hold a NaN or infinity (checked when first needed) */
    for (int64_t j0 = jlo; j0 < jhi; j0 += g->bk) {
        const int64_t nb = jhi - j0 < g->bk ? jhi - j0 : g->bk, nb32 = cf_amx_round(nb, 32);
        const int open = masks_state(c, g, ws, b, hk, G, i0, na, j0, nb);
        if (open == CF_REGION_CLOSED) continue; /* issue 13's masks hide the block */
        /* A partly masked block holding a NaN or infinity: pair by pair (see dkdv_tile; issue
         * 13's masks may hide any key). */
        if (open != CF_REGION_OPEN || mp.lo[na - 1] > j0 || mp.hi[0] < j0 + nb) {
            for (int64_t gi = 0; qbad < 0 && gi < G; gi++)
                if (cf_attn_bwd_query_rows_bad(c, b, hk * G + gi, q0 + i0, na, mp.dl + gi * na))
                    qbad = 1;
            if (qbad < 0) qbad = 0;
            if (qbad || cf_attn_bwd_key_rows_bad(c, b, hk, k0, j0, nb, open == CF_REGION_OPEN,
                                                 mp.lo[na - 1] - j0, mp.hi[0] - j0)) {
                for (int64_t gi = 0; gi < G; gi++)
                    cf_attn_bwd_exact_pairs(c, b, hk * G + gi, i0, na, mp.dl + gi * na, j0, nb,
                                            NULL, 0, NULL, 0, dq + gi * na * D16, D16);
                continue;
            }
        }
        pack_keys(c, kk, g, ws, b, k0, j0, nb, hk, 1);
        p_and_ds(c, kk, g, ws, &mp, b, Mt, j0, nb, sq, sk, open, qa, qal, g->D32, doa, doal,
                 g->Dv32);
        /* dQ += dS K */
        cf_amx_f32_rows16(kk, h16, NB32, nb32, m16, dp, NB32, Mt, nb, c->dtype);
        const uint16_t* h16l = split_at(g, ws, g->h16l, h16, m16, nb32, NB32);
        cf_amx_mm2(dq, D16, h16, h16l, NB32, (const uint32_t*)(ws + g->kv), low_at(g, ws, g->kvl),
                   D16, m16 / 16, D16 / 16, 0, nb32 / 32, 1, g->fp16);
    }
    for (int64_t gi = 0; gi < G; gi++)
        for (int64_t ii = 0; ii < na; ii++)
            kk->from_f32(cf_amx_row_ptr(&c->dq, b, q0 + i0 + ii, hk * G + gi),
                         dq + (gi * na + ii) * D16, c->dtype, D);
}

cflash_status cf_amx_attn_bwd(const cf_attn_call* c, const cf_attn_kernels* kk) {
    amx_bwd_geom g;
    bwd_layout(c, &g);
    cf_attn_mask_map* map = cf_attn_cpu_mask_map(c, c->threads);
    g.mmap = map;
    /* Rows of far |lse|: far_rows, blocks of bq rows. dbias: the tiled backward's own tasks after
     * the tiles' dK, dV and dQ. */
    cf_attn_bwd_engine e = {g.n, g.bk, g.bytes, dkdv_tile, dq_tile, &g, NULL, g.bq, far_rows, NULL};
    cflash_status st =
        c->dbias.data ? cf_attn_cpu_dbias_tasks(c, kk, &cf_amx_pairs_f16, map, &e) : CFLASH_OK;
    if (st == CFLASH_OK) st = cf_attn_cpu_bwd_run(c, kk, &e);
    cf_attn_cpu_dbias_free(&e);
    cf_attn_cpu_mask_map_free(map);
    return st;
}

#else
typedef int cf_amx_bwd_unused; /* not x86-64, or a compiler without AMX */
#endif
