/* cpu-amx forward: both products on tiles. A tile is the shared driver's (query rows of every head
 * of a GQA group, src/cpu/attn_tiled.c schedules them); per KV block, K is brought to K^T in VNNI
 * pairs and V to VNNI pairs in the thread's workspace (a few hundred KB: stays in L2) and serve
 * all the tile's rows, so no K/V is copied beyond the blocks a tile visits. Then
 *   S = Q K^T           (A: Q rows packed once per tile; B: the block's K^T pairs)
 *   online softmax      (per row in AVX-512 on the fp32 S, P rounded to the dtype once)
 *   O += P V            (A: P rows; B: the block's V pairs; O fp32 in the workspace)
 * Per 32-row slice only the 16-key column tiles (for S) and 32-key chunks (for P V) that some
 * row of the slice sees are computed: causal and windowed tiles skip what is masked, and so do
 * slices that attn_mask, attn_bias or the block-sparse lists hide from a block (issue 13: tiles
 * are 512 rows tall, most of a block-sparse layout's blocks are closed to some of them only).
 * A narrow tile (a speculative decoding step: 32 rows or fewer) takes S^T = K Q^T instead, K's
 * rows read in place as the A operand, and S from S^T by 32-bit transposes in L1. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/philox.h"
#include "cpu/x86/amx_attn.h"
#include "cpu/x86/amx_tiles.h"

#ifdef CF_AMX_CODE

typedef struct amx_fwd_geom {
    int64_t G, n, bk;             /* heads per group, rows per head per tile, keys per block */
    int64_t D32, Dv16, NB32, M32; /* padded: head dims, keys per block, rows per tile */
    int fp16;                     /* tdpfp16ps (fp16) or tdpbf16ps (bf16) */
    int split;                    /* fp16 without AMX-FP16: bf16 pairs (cf_amx_mm2) */
    const cf_attn_mask_map* map;  /* attn_mask / attn_bias summarised (may be NULL) */
    size_t qa, kr, kt, vv, s, p, o, vec, rng, lohi, tmp, xih, kvis, kvp, shut, gk, gv, bytes;
    size_t qt, st;            /* narrow tiles (fwd_tile): Q^T pairs [D32 / 2][32], S^T [NB32][32] */
    size_t qal, ktl, vvl, pl; /* split: the low parts of qa, kt, vv, p */
} amx_fwd_geom;

static size_t a64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

/* Query rows per tile. Each tile brings every key block it visits to K^T and V pairs, so taller
 * tiles than the AVX-512 driver's pay for that less often: 512 rows at head dims up to 128 ran
 * 1.2-1.4x faster than 128 (docs/PERF.md, Intel model 167), fewer at larger head dims so the
 * workspace (Q, S, P, O of every row) stays near 1 MB of the 2 MB L2. CFLASH_ATTN_BLOCKS's q,
 * when set, is taken as it is (sweeps), and so is the family's where issue 13's masks close most
 * blocks (sparse: mostly_closed). */
static int64_t fwd_rows(const cf_attn_call* c, const cf_attn_blocks* bl, int sparse) {
    if (!strcmp(bl->source, "CFLASH_ATTN_BLOCKS") || sparse) return bl->q;
    const int64_t w = cf_amx_round(c->D > c->Dv ? c->D : c->Dv, 32);
    const int64_t q = 65536 / w > 512 ? 512 : 65536 / w;
    return q > bl->q ? q : bl->q;
}

/* Whether issue 13's masks close most of the blocks that tiles of bl->q rows visit, sampled on the
 * first sequence and KV head (up to 32 row tiles): a tile packs K / V for every block some row of
 * it sees, and 512 rows see four times the blocks of a block-sparse layout that 128 rows do. At
 * 10 % of 128 x 128 blocks visible, tiles of 128 rows ran 1.3x (block-sparse lists) and 1.9x
 * (a boolean mask) faster than 512; a mask that closes little (padding keys) 9 % slower
 * (docs/PERF.md, Intel model 167). */
static int mostly_closed(const cf_attn_call* c, const cf_attn_mask_map* map,
                         const cf_attn_blocks* bl) {
    if (!cf_attn_has_extra(c) || c->B < 1) return 0;
    const int64_t G = c->H / c->Hk, na = cf_attn_cpu_tile_rows(c, bl->q), bk = bl->k;
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, 0, &q0, &sq, &k0, &sk);
    uint8_t* kvis = malloc((size_t)(G * (na + 1) * bk));
    const uint8_t** kvp = malloc(sizeof *kvp * (size_t)(G * na));
    int64_t closed = 0, all = 0;
    const int64_t nt = (sq + na - 1) / na, step = nt > 32 ? nt / 32 : 1;
    for (int64_t t = 0; kvis && kvp && t < nt; t += step) {
        const int64_t i0 = t * na, n = sq - i0 < na ? sq - i0 : na;
        int64_t lo, hi, lo1, hi1;
        cf_attn_key_range(c, i0, sq, sk, &lo, &hi);
        cf_attn_key_range(c, i0 + n - 1, sq, sk, &lo1, &hi1);
        for (int64_t j0 = lo; j0 < hi1; j0 += bk, all++)
            closed +=
                cf_attn_cpu_tile_region(c, map, 0, 0, G, i0, n, j0, hi1 - j0 < bk ? hi1 - j0 : bk,
                                        kvis, kvp) == CF_REGION_CLOSED;
    }
    free(kvis);
    free(kvp);
    return 2 * closed > all;
}

static void fwd_layout(const cf_attn_call* c, const cf_attn_mask_map* map, amx_fwd_geom* g) {
    memset(g, 0, sizeof *g);
    const cf_attn_blocks bl = cf_attn_cpu_blocks();
    g->G = c->H / c->Hk;
    g->n = cf_attn_cpu_tile_rows(c, fwd_rows(c, &bl, mostly_closed(c, map, &bl)));
    g->bk = bl.k;
    g->D32 = cf_amx_round(c->D, 32);
    g->Dv16 = cf_amx_round(c->Dv, 16);
    g->NB32 = cf_amx_round(g->bk, 32);
    g->M32 = cf_amx_round(g->G * g->n, 32); /* slices of 32 rows */
    g->split = c->dtype == CF_F16 && !CF_AMX_HAS_FP16();
    g->fp16 = c->dtype == CF_F16 && !g->split;
    const size_t M = (size_t)g->M32, NB = (size_t)g->NB32, D32 = (size_t)g->D32,
                 Dv = (size_t)g->Dv16;
    size_t off = 0;
#define TAKE(field, bytes_)                                                                        \
    g->field = off;                                                                                \
    off += a64(bytes_)
    TAKE(qa, 2 * M * D32);            /* Q rows [M32][D32] */
    TAKE(kr, 2 * NB * D32);           /* K rows [NB32][D32], staging for kt */
    TAKE(kt, 4 * (D32 / 2) * NB);     /* K^T pairs [D32 / 2][NB32] */
    TAKE(vv, 4 * (NB / 2) * Dv);      /* V pairs [NB32 / 2][Dv16] */
    TAKE(s, 4 * M * NB);              /* S, then P in fp32 [M32][NB32] */
    TAKE(p, 2 * M * NB);              /* P rounded [M32][NB32] */
    TAKE(o, 4 * M * Dv);              /* O [M32][Dv16] */
    TAKE(vec, 4 * 2 * M);             /* m, l per row */
    TAKE(rng, 8 * 2 * (M / 32 + 1));  /* key chunks [k0, k1) of P V per 32-row slice */
    TAKE(lohi, 8 * 2 * (size_t)g->n); /* visible keys per row of a head */
    TAKE(tmp, 4 * Dv);                /* one output row */
    TAKE(xih, 8 * 2 * M);             /* attn_mask / attn_bias: query and head per row */
    TAKE(kvis, (size_t)(g->G * (g->n + 1)) * NB); /* block-sparse key masks */
    TAKE(kvp, sizeof(uint8_t*) * M);              /* each row's */
    TAKE(shut, M / 32 + 1);                       /* slices the masks close to a block */
    const size_t pg = c->block_table ? 1 : 0;     /* paged: a block's K / V rows gathered */
    TAKE(gk, pg * 2 * NB * (size_t)c->D);
    TAKE(gv, pg * 2 * NB * (size_t)c->Dv);
    const size_t sp = g->split ? 1 : 0; /* the low parts, split only */
    TAKE(qal, sp * 2 * M * D32);
    TAKE(ktl, sp * 4 * (D32 / 2) * NB);
    TAKE(vvl, sp * 4 * (NB / 2) * Dv);
    TAKE(pl, sp * 2 * M * NB);
    const size_t nw = g->M32 == 32 && !g->split && !g->fp16 ? 1 : 0; /* (narrow tiles may serve) */
    TAKE(qt, nw * 4 * (D32 / 2) * 32);
    TAKE(st, nw * 4 * NB * 32);
#undef TAKE
    g->bytes = off;
}

/* ---- One tile ----------------------------------------------------------------------------------
 */

/* Keys from which a narrow tile packs K^T as wider ones do: at 32768 keys K's rows read by the
 * tiles straight from memory ran 0.88-0.94x the packed way (G4, 16 and 28 rows; 1.06-1.25x at
 * 1024-16384 keys; docs/PERF.md, Intel model 167, stop 51). */
#define NARROW_KEYS 32768

/* Rows ahead whose attn_bias the fused pass prefetches (cf_amx_row_bias_max). */
#define BIAS_PF 8

/* Visible keys [a, z) of block row ii (0 <= a <= z <= nb). */
static void row_range(const int64_t* lo, const int64_t* hi, int64_t ii, int64_t j0, int64_t nb,
                      int64_t* a, int64_t* z) {
    int64_t x = lo[ii] - j0, y = hi[ii] - j0;
    x = x < 0 ? 0 : x > nb ? nb : x;
    y = y < x ? x : y > nb ? nb : y;
    *a = x, *z = y;
}

CF_AMX_TARGET static void fwd_tile(const cf_attn_call* c, const cf_attn_kernels* kk,
                                   const void* geom, const attn_tile* t, char* ws) {
    const amx_fwd_geom* g = geom;
    const int64_t b = t->b, hk = t->hk, i0 = t->i0, na = t->i1 - t->i0, G = g->G;
    const int64_t Mt = G * na, M32 = cf_amx_round(Mt, 32), D = c->D, Dv = c->Dv;
    const int64_t D32 = g->D32, Dv16 = g->Dv16, NB32 = g->NB32, BK = g->bk;
    int64_t q0, sq, k0, sk;
    cf_attn_seq(c, b, &q0, &sq, &k0, &sk);
    uint16_t *qa = (uint16_t*)(ws + g->qa), *kr = (uint16_t*)(ws + g->kr),
             *p = (uint16_t*)(ws + g->p);
    uint32_t *kt = (uint32_t*)(ws + g->kt), *vv = (uint32_t*)(ws + g->vv);
    /* fp16 without AMX-FP16: each operand's bf16 low parts beside its high parts */
    uint16_t* qal = g->split ? (uint16_t*)(ws + g->qal) : NULL;
    uint16_t* pl = g->split ? (uint16_t*)(ws + g->pl) : NULL;
    uint32_t* ktl = g->split ? (uint32_t*)(ws + g->ktl) : NULL;
    uint32_t* vvl = g->split ? (uint32_t*)(ws + g->vvl) : NULL;
    float *s = (float*)(ws + g->s), *o = (float*)(ws + g->o), *m = (float*)(ws + g->vec),
          *l = m + M32, *tmp = (float*)(ws + g->tmp);
    int64_t *rng = (int64_t*)(ws + g->rng), *lo = (int64_t*)(ws + g->lohi), *hi = lo + na;
    const int masked = cf_attn_has_extra(c); /* issue 13's bias, mask, block-sparse lists */
    const int scored = c->softcap > 0.0f || c->alibi != NULL || c->bias.data;
    /* attn_bias and attn_mask alone (no softcap, ALiBi or block lists; keys adjacent in both):
     * added and applied in the max pass of each row (cf_amx_row_bias_max), not in passes of
     * their own */
    const int fuse = c->softcap == 0.0f && !c->alibi && !c->bs_num.data &&
                     (!c->bias.data || c->bias.stride[3] == 1) &&
                     (!c->mask.data || c->mask.stride[3] == 1);
    const int64_t bes = c->bias.data ? (int64_t)cf_dtype_size(c->bias.dtype) : 0;
    int64_t *xi = (int64_t*)(ws + g->xih), *xh = xi + M32;
    uint8_t *kvis = (uint8_t*)(ws + g->kvis), *shut = (uint8_t*)(ws + g->shut);
    const uint8_t** kvp = (const uint8_t**)(ws + g->kvp);
    for (int64_t r = 0; r < Mt; r++)
        xi[r] = i0 + r % na, xh[r] = hk * G + r / na;
    const int64_t vsz = (int64_t)cf_dtype_size(c->dtype);

    for (int64_t ii = 0; ii < na; ii++)
        cf_attn_key_range(c, i0 + ii, sq, sk, &lo[ii], &hi[ii]);
    const int64_t jlo = lo[0], jhi = hi[na - 1];
    /* Row r = gi * na + ii is query i0 + ii of head hk * G + gi; rows past Mt stay 0. */
    for (int64_t gi = 0; gi < G; gi++)
        cf_amx_rows16(qa + gi * na * D32, D32, D32, na, &c->q, b, q0 + i0, hk * G + gi, na, D);
    memset(qa + Mt * D32, 0, sizeof(uint16_t) * (size_t)((M32 - Mt) * D32));
    if (g->split) cf_amx_split16(qa, qal, M32, D32, D32);
    memset(p + Mt * NB32, 0, sizeof(uint16_t) * (size_t)((M32 - Mt) * NB32));
    /* A narrow tile (32 query rows or fewer, bf16, whole 32-element pairs of D, fewer than
     * NARROW_KEYS keys): S^T = K Q^T with K's rows read in place (cf_amx_kq), so no block's K^T
     * is packed for a few rows; Q^T once per tile */
    const int64_t kw = Mt <= 16 ? 16 : 32;
    uint32_t* qt = (uint32_t*)(ws + g->qt);
    const int narrow =
        g->M32 == 32 && Mt <= 32 && !g->split && !g->fp16 && D == D32 && c->Sk < NARROW_KEYS;
    if (narrow) cf_amx_t32(qt, kw, (const uint32_t*)qa, D32 / 2, kw, D32 / 2);
    memset(o, 0, sizeof(float) * (size_t)(M32 * Dv16));
    /* A sink (issue 13) is a key of score sink and value 0: each row's softmax starts from it. */
    for (int64_t r = 0; r < Mt; r++) {
        const float sink = cf_attn_sink(c, hk * G + r / na);
        m[r] = sink, l[r] = sink == -INFINITY ? 0.0f : 1.0f;
    }

    for (int64_t j0 = jlo; j0 < jhi; j0 += BK) {
        const int64_t nb = jhi - j0 < BK ? jhi - j0 : BK, nb32 = cf_amx_round(nb, 32);
        /* attn_mask, attn_bias, block-sparse lists (issue 13): a block they hide from every row
         * (mask 0, bias -inf, not listed) is skipped, and so is each 32-row slice they hide it
         * from (shut); where they hide some pairs (part) those are masked as the scores are
         * formed (cf_attn_cpu_extras), and a NaN or infinity in the block's V is taken pair by
         * pair below */
        const int region =
            masked ? cf_attn_cpu_tile_region(c, g->map, b, hk, G, i0, na, j0, nb, kvis, kvp)
                   : CF_REGION_OPEN;
        if (region == CF_REGION_CLOSED) continue;
        const int part = region != CF_REGION_OPEN;
        /* the scores' general steps: softcap, ALiBi, bias, and masks where they hide some pairs
         * (an open block's masks hide none: the plain fused scale and max) */
        const int general = scored || part, fused = general && fuse;
        for (int64_t r0 = 0; r0 < Mt; r0 += 32)
            shut[r0 / 32] =
                part && cf_attn_cpu_rows_closed(c, g->map, b, hk, G, i0, na, r0,
                                                r0 + 32 < Mt ? r0 + 32 : Mt, j0, nb, kvp);
        /* The block in tile layouts: K^T pairs (through K rows) and V pairs. Paged K / V
         * (block_table): rows krs / vrs elements apart within a page, gathered where the block
         * spans pages. */
        int64_t krs, vrs;
        const char* krow = cf_attn_cpu_key_rows(c, &c->k, b, k0, j0, nb, hk, D, ws + g->gk, &krs);
        const char* vrow = cf_attn_cpu_key_rows(c, &c->v, b, k0, j0, nb, hk, Dv, ws + g->gv, &vrs);
        /* (a last block short of 32 keys' multiple: through K^T, as wider tiles) */
        const int kq = narrow && nb == nb32;
        if (kq) { /* S for every row and key of the block (what rows do not see goes unread) */
            float* st = (float*)(ws + g->st);
            cf_amx_kq(st, krow, krs * (int64_t)sizeof(uint16_t), qt, D32, nb32, kw);
            cf_amx_t32((uint32_t*)s, NB32, (const uint32_t*)st, kw, nb32, kw);
        } else if (nb == nb32 && D == D32 && krs % 2 == 0 && (uintptr_t)krow % 4 == 0) {
            /* whole pairs in whole rows: transposed from where they are (no copy first) */
            cf_amx_t32(kt, NB32, (const uint32_t*)krow, krs / 2, nb32, D32 / 2);
        } else {
            cf_amx_rows16_at(kr, D32, D32, nb32, krow, krs, nb, D);
            cf_amx_t32(kt, NB32, (const uint32_t*)kr, D32 / 2, nb32, D32 / 2);
        }
        cf_amx_rows_vnni_at(kk, vv, Dv16, Dv16, nb32 / 2, vrow, vrs, nb, Dv);
        if (g->split) {
            cf_amx_split16((uint16_t*)kt, (uint16_t*)ktl, D32 / 2, 2 * nb32, 2 * NB32);
            cf_amx_split16((uint16_t*)vv, (uint16_t*)vvl, nb32 / 2, 2 * Dv16, 2 * Dv16);
        }

        /* S = Q K^T, per 32-row slice over the columns its rows see. */
        for (int64_t r0 = 0; r0 < Mt; r0 += 32) {
            int64_t c0 = nb, c1 = 0;
            for (int64_t r = r0; r < r0 + 32 && r < Mt; r++) {
                int64_t a, z;
                row_range(lo, hi, r % na, j0, nb, &a, &z);
                if (a < z) c0 = a < c0 ? a : c0, c1 = z > c1 ? z : c1;
            }
            int64_t* kc = rng + 2 * (r0 / 32);
            kc[0] = kc[1] = 0;
            if (c0 >= c1 || shut[r0 / 32]) continue;
            const int64_t n0 = c0 / 16, n1 = (c1 + 15) / 16;
            if (!kq)
                cf_amx_mm2(s + r0 * NB32 + 16 * n0, NB32, qa + r0 * D32,
                           qal ? qal + r0 * D32 : NULL, D32, kt + 16 * n0,
                           ktl ? ktl + 16 * n0 : NULL, NB32, Mt - r0 > 16 ? 2 : 1, n1 - n0, 0,
                           D32 / 32, 0, g->fp16);
            kc[0] = c0 / 32, kc[1] = (c1 + 31) / 32;
        }

        /* A NaN or infinity in V that some row cannot see (P V below sums pairs then) */
        const int64_t ves = vrs * vsz;
        const int v_bad = part ? cf_attn_cpu_rows_nonfinite(vrow, ves, nb, Dv, c->dtype)
                               : (lo[na - 1] > j0 || hi[0] < j0 + nb) &&
                                     cf_attn_cpu_hidden_nonfinite(vrow, ves, j0, nb, lo[na - 1],
                                                                  hi[0], Dv, c->dtype);
        /* P in fp32 too: for dropout (applied before rounding) and for the pairs V's NaN needs */
        const int p32 = c->dropout_p > 0.0f || v_bad;

        /* natural-log scores, as the backward recomputes them (see exp_cols in attn_cpu.h):
         * cf_attn_score's steps on each row's run of keys, in vectors, then issue 13's bias and
         * masks a slice of rows per call (an fp32 bias's next block, BK keys on, prefetched: rows
         * of a bias are a page or more apart, which the CPU's prefetchers do not follow) */
        if (general && !fused) {
            for (int64_t r = 0; r < Mt; r++) {
                float* x = s + r * NB32;
                int64_t a, z;
                row_range(lo, hi, r % na, j0, nb, &a, &z);
                if (a >= z || shut[r / 32]) continue;
                const float slope = cf_attn_slope(c, b, hk * G + r / na);
                if (c->softcap > 0.0f)
                    kk->softcap_cols(x + a, z - a, c->scale, c->softcap, NULL);
                else
                    for (int64_t j = a; j < z; j++)
                        x[j] *= c->scale;
                if (slope != 0.0f)
                    cf_attn_alibi_run(x + a, 1, z - a, slope,
                                      cf_attn_diag(c, i0 + r % na, sq, sk) - (j0 + a), -1);
            }
            for (int64_t r0 = 0; (c->bias.data || part) && r0 < Mt; r0 += 32) {
                const int64_t n = Mt - r0 < 32 ? Mt - r0 : 32;
                int64_t c0 = nb, c1 = 0; /* the columns the slice's rows see (its S) */
                for (int64_t r = r0; r < r0 + n && !shut[r0 / 32]; r++) {
                    int64_t a, z;
                    row_range(lo, hi, r % na, j0, nb, &a, &z);
                    if (a < z) c0 = a < c0 ? a : c0, c1 = z > c1 ? z : c1;
                }
                if (c0 >= c1) continue;
                const uint8_t* kr[32]; /* (a row's columns past its own run are not read) */
                for (int64_t r = 0; c->bs_num.data && r < n; r++)
                    kr[r] = kvp[r0 + r] + c0;
                cf_attn_cpu_extras(c, kk, b, s + r0 * NB32 + c0, n, c1 - c0, NB32, 1, xi + r0,
                                   xh + r0, c->bs_num.data ? kr : NULL, j0 + c0, part, 0, BK);
            }
        }
        /* Online softmax per row on its visible keys; P rounded, 0 elsewhere. */
        for (int64_t r = 0; r < Mt; r++) {
            const int64_t gi = r / na, ii = r % na, h = hk * G + gi;
            float* x = s + r * NB32;
            uint16_t* pr = p + r * NB32;
            int64_t a, z;
            row_range(lo, hi, ii, j0, nb, &a, &z);
            if (a >= z || shut[r / 32]) {
                memset(pr, 0, sizeof(uint16_t) * (size_t)nb32);
                continue;
            }
            float mx;
            if (fused) {
                const char* y = c->bias.data ? (const char*)c->bias.data +
                                                   cf_attn_at4(&c->bias, b, h, xi[r], j0 + a) * bes
                                             : NULL;
                const uint8_t* mk =
                    part && c->mask.data
                        ? (const uint8_t*)c->mask.data + cf_attn_at4(&c->mask, b, h, xi[r], j0 + a)
                        : NULL;
                /* the bias of the row BIAS_PF rows on (past the last row: of the first rows in
                 * the next block), prefetched into L2 as this row's is read: rows of a bias are a
                 * page or more apart, which the hardware prefetchers do not follow, and the next
                 * block's of every row would not stay in L1 or L2 (rows 2^k bytes apart share
                 * their sets) */
                const char* pf = NULL;
                const int64_t rn = r + BIAS_PF < Mt ? r + BIAS_PF : r + BIAS_PF - Mt,
                              jn = r + BIAS_PF < Mt ? j0 : j0 + BK;
                if (y && rn < Mt && jn + z <= c->Sk)
                    pf = (const char*)c->bias.data +
                         cf_attn_at4(&c->bias, b, xh[rn], xi[rn], jn + a) * bes;
                mx = cf_amx_row_bias_max(x + a, z - a, c->scale, y, c->bias.dtype, mk, pf);
            } else
                mx = cf_amx_row_scale_max(x + a, z - a, general ? 1.0f : c->scale);
            /* A NaN the row sees makes its output NaN: m and l stay NaN from here on. */
            const float mn = isnan(mx) || isnan(m[r]) ? NAN : mx > m[r] ? mx : m[r];
            /* (a max that did not move: expf(0) = 1 without the call) */
            const float alpha = m[r] == -INFINITY ? 0.0f : m[r] == mn ? 1.0f : expf(m[r] - mn);
            if (mn == -INFINITY && masked) { /* masks hide all the row has seen so far */
                memset(pr, 0, sizeof(uint16_t) * (size_t)nb32);
                for (int64_t j = a; j < z; j++)
                    x[j] = 0.0f; /* P for the pairs below */
                continue;
            }
            /* P = exp(S - m) with its row sum, rounded straight into pr unless wanted in fp32
             * (l sums P before dropout) */
            memset(pr, 0, sizeof(uint16_t) * (size_t)a);
            memset(pr + z, 0, sizeof(uint16_t) * (size_t)(nb32 - z));
            l[r] = l[r] * alpha + cf_amx_exp_row_sum(x + a, z - a, isnan(mn) ? 0.0f : mn,
                                                     p32 ? NULL : pr + a, c->dtype == CF_F16);
            m[r] = mn;
            /* (alpha 0 where the max rose by more than ~87: the earlier blocks leave O too) */
            if (alpha != 1.0f)
                for (int64_t d = 0; d < Dv; d++)
                    o[r * Dv16 + d] *= alpha;
            if (c->dropout_p > 0.0f) {
                const uint64_t thr = cf_dropout_threshold(c->dropout_p);
                cf_philox_out w = {{0, 0, 0, 0}};
                for (int64_t j = a; j < z; j++) {
                    const int64_t jj = j0 + j + c->k_offset; /* the key's position */
                    if (j == a || (jj & 3) == 0)
                        w = cf_dropout_words(c->seed, c->offset, (uint64_t)b, (uint64_t)h,
                                             (uint64_t)(i0 + ii + c->q_offset), (uint64_t)jj);
                    if ((uint64_t)w.x[jj & 3] >= thr) x[j] = 0.0f;
                }
            }
            if (p32) kk->from_f32(pr + a, x + a, c->dtype, z - a);
        }

        /* O += P V. In a partly masked block a row's masked keys have P = 0, and 0 times a NaN
         * or infinite v would still reach the row: such a block (rare) sums visible pairs only,
         * in fp32. Else over the key chunks each slice's rows see, on tiles. */
        if (v_bad) {
            for (int64_t j = 0; j < nb; j++) {
                kk->to_f32(tmp, vrow + j * ves, c->dtype, Dv);
                for (int64_t r = 0; r < Mt; r++) {
                    const int64_t ii = r % na;
                    if (j0 + j < lo[ii] || j0 + j >= hi[ii] || shut[r / 32]) continue;
                    if (part && cf_attn_extra(c, b, xh[r], i0 + ii, j0 + j, 0.0f) == -INFINITY)
                        continue;
                    const float pr = s[r * NB32 + j];
                    for (int64_t d = 0; d < Dv; d++)
                        o[r * Dv16 + d] += pr * tmp[d];
                }
            }
            continue;
        }
        if (g->split) cf_amx_split16(p, pl, M32, nb32, NB32);
        for (int64_t r0 = 0; r0 < Mt; r0 += 32) {
            const int64_t* kc = rng + 2 * (r0 / 32);
            cf_amx_mm2(o + r0 * Dv16, Dv16, p + r0 * NB32, pl ? pl + r0 * NB32 : NULL, NB32, vv,
                       vvl, Dv16, Mt - r0 > 16 ? 2 : 1, Dv16 / 16, kc[0], kc[1], 1, g->fp16);
        }
    }

    /* out = O / l (times the dropout rescale), lse = m + ln l. */
    const float keep_scale = 1.0f / (1.0f - c->dropout_p);
    for (int64_t r = 0; r < Mt; r++) {
        const int64_t gi = r / na, ii = r % na, h = hk * G + gi;
        const float inv = l[r] > 0.0f ? keep_scale / l[r] : isnan(l[r]) ? NAN : 0.0f;
        for (int64_t d = 0; d < Dv; d++)
            tmp[d] = o[r * Dv16 + d] * inv;
        kk->from_f32(cf_amx_row_ptr(&c->out, b, q0 + i0 + ii, h), tmp, c->dtype, Dv);
        if (c->lse.data) {
            float* lp = (float*)c->lse.data;
            lp[b * c->lse.stride[0] + h * c->lse.stride[1] + (q0 + i0 + ii) * c->lse.stride[2]] =
                l[r] > 0.0f   ? m[r] + logf(l[r])
                : isnan(l[r]) ? NAN
                              : -INFINITY;
        }
    }
}

cflash_status cf_amx_attn_fwd(const cf_attn_call* c, const cf_attn_kernels* kk) {
    amx_fwd_geom g;
    cf_attn_mask_map* map = cf_attn_cpu_mask_map(c, c->threads);
    fwd_layout(c, map, &g);
    g.map = map;
    const cflash_status st = cf_attn_cpu_fwd_run(c, kk, g.n, g.bytes, fwd_tile, &g);
    cf_attn_cpu_mask_map_free(map);
    return st;
}

#else
typedef int cf_amx_fwd_unused; /* not x86-64, or a compiler without AMX */
#endif
