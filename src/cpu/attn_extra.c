/* Issue 13's per-pair masks and bias for the tiled CPU attention drivers (attn_tiled.c,
 * attn_tiled_bwd.c): the state of a block -- every pair hidden by attn_mask, attn_bias (-inf) or
 * the block-sparse lists (skipped), none (no masking pass), or some -- the mask's from a map built
 * once per call; the block-sparse key masks of the visited blocks; and the pass that adds the bias
 * and masks hidden pairs in a block of scores (a bias of -inf masks its pair like a zero in
 * attn_mask, whatever the score: NaN included). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/checked.h"
#include "cpu/attn_cpu.h"

/* The state of n bytes: CF_REGION_CLOSED when none is nonzero, _OPEN when all are, else _PART.
 * Min / max reductions without an early exit, so that the compiler vectorises them: a closed
 * block is found without a branch per element (issue 13: skipped tiles cost no per-element
 * work beyond this scan). */
static int bytes_state(const uint8_t* m, int64_t n) {
    uint8_t lo = 0xff, hi = 0;
    for (int64_t j = 0; j < n; j++) {
        lo = m[j] < lo ? m[j] : lo;
        hi = m[j] > hi ? m[j] : hi;
    }
    return hi == 0 ? CF_REGION_CLOSED : lo != 0 ? CF_REGION_OPEN : CF_REGION_PART;
}

/* The same for n bias values at element `at` (a value of -inf hides its pair): a count, so that
 * the fp32 loop vectorises. */
static int bias_state(const cf_attn_call* c, int64_t at, int64_t n) {
    int64_t hidden = 0;
    if (c->bias.dtype == CF_F32) {
        const float* x = (const float*)c->bias.data + at;
        for (int64_t j = 0; j < n; j++)
            hidden += x[j] == -INFINITY;
    } else { /* q's 16-bit dtype (attn_api.c's check_bias_dtype: fp32 or the dtype of q) */
        /* -inf has one encoding in each: its bits compared, a loop that vectorises */
        const uint16_t* x = (const uint16_t*)c->bias.data + at;
        const uint16_t ninf = c->bias.dtype == CF_BF16 ? 0xff80u : 0xfc00u;
        for (int64_t j = 0; j < n; j++)
            hidden += x[j] == ninf;
    }
    return hidden == n ? CF_REGION_CLOSED : hidden == 0 ? CF_REGION_OPEN : CF_REGION_PART;
}

int cf_attn_cpu_bs_keys(const cf_attn_call* c, int64_t b, int64_t h, int64_t qb0, int64_t nq,
                        int64_t j0, int64_t nb, uint8_t* kv) {
    const int32_t* num = (const int32_t*)c->bs_num.data;
    const int32_t* idx = (const int32_t*)c->bs_idx.data;
    /* Key positions of the block: [p0, p0 + nb). Listed blocks at or past last_kb start past it
     * (checked before any multiply: a listed index may be up to 2^31 - 1, block_k up to 2^32). */
    const int64_t p0 = j0 + c->k_offset, last_kb = (p0 + nb - 1) / c->block_k;
    int st = -1;
    for (int64_t q = 0; q < nq; q++) {
        uint8_t* row = kv + q * nb;
        memset(row, 0, (size_t)nb);
        const int64_t qb = qb0 + q;
        const int64_t n =
            num[b * c->bs_num.stride[0] + h * c->bs_num.stride[1] + qb * c->bs_num.stride[2]];
        const int32_t* list = idx + cf_attn_at4(&c->bs_idx, b, h, qb, 0);
        for (int64_t t = 0; t < n; t++) {
            const int64_t kb = list[t * c->bs_idx.stride[3]];
            if (kb > last_kb) continue;
            int64_t lo = kb * c->block_k - p0, hi = lo + c->block_k;
            if (lo < 0) lo = 0;
            if (hi > nb) hi = nb;
            if (lo < hi) memset(row + lo, 1, (size_t)(hi - lo));
        }
        st = cf_attn_region_join(st, bytes_state(row, nb));
    }
    return st < 0 ? CF_REGION_CLOSED : st;
}

/* A source of block states: attn_mask's bytes (0 hides) or attn_bias's values (-inf hides),
 * read from element `at` of its view for n keys. */
typedef int (*state_fn)(const cf_attn_call* c, int64_t at, int64_t n);
static int mask_bytes_state(const cf_attn_call* c, int64_t at, int64_t n) {
    return bytes_state((const uint8_t*)c->mask.data + at, n);
}

/* Row i of (b, h) of a map of nb x nh x sq rows (0 along a dimension that broadcasts). */
static const uint8_t* map_row(const uint8_t* st, int64_t nb, int64_t nh, int64_t sq, int64_t nc,
                              int64_t b, int64_t h, int64_t i) {
    return st + (((nb > 1 ? b : 0) * nh + (nh > 1 ? h : 0)) * sq + i) * nc;
}

/* The map of view v (dims nb, nh: its shape's first two) from fn, on nt threads: NULL past 256 MB
 * (views may repeat rows: stride 0, so the map is bounded on its own) or out of memory. */
static uint8_t* map_build(const cf_attn_call* c, const cf_view* v, state_fn fn, int64_t nc,
                          int nt) {
    const int64_t nb = v->shape[0], nh = v->shape[1], sq = c->Sq, dims[3] = {nb, nh, sq};
    int64_t rows, bytes;
    if (cf_prod_i64(dims, 3, &rows) || cf_mul_i64(rows, nc, &bytes) || bytes > ((int64_t)1 << 28))
        return NULL;
    uint8_t* st = malloc((size_t)bytes + 1);
    if (!st) return NULL;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i = r % sq, bh = r / sq, at = cf_attn_at4(v, bh / nh, bh % nh, i, 0);
        for (int64_t k = 0; k < nc; k++) {
            const int64_t j0 = k * CF_ATTN_MAP_KEYS;
            const int64_t n = c->Sk - j0 < CF_ATTN_MAP_KEYS ? c->Sk - j0 : CF_ATTN_MAP_KEYS;
            st[r * nc + k] = (uint8_t)fn(c, at + j0, n);
        }
    }
    return st;
}

cf_attn_mask_map* cf_attn_cpu_mask_map(const cf_attn_call* c, int threads) {
    const int bias_bcast = c->bias.data && ((c->bias.shape[1] == 1 && c->H > 1) ||
                                            (c->bias.shape[0] == 1 && c->B > 1));
    if (!c->mask.data && !bias_bcast) return NULL;
    cf_attn_mask_map* mp = calloc(1, sizeof *mp);
    if (!mp) return NULL;
    const int nt = threads > 0 ? threads : 1;
    mp->sq = c->Sq;
    mp->nc = (c->Sk + CF_ATTN_MAP_KEYS - 1) / CF_ATTN_MAP_KEYS;
    if (c->mask.data) {
        mp->nb = c->mask.shape[0], mp->nh = c->mask.shape[1];
        mp->st = map_build(c, &c->mask, mask_bytes_state, mp->nc, nt);
    }
    if (bias_bcast) {
        mp->bnb = c->bias.shape[0], mp->bnh = c->bias.shape[1];
        mp->bst = map_build(c, &c->bias, bias_state, mp->nc, nt);
    }
    if (!mp->st && !mp->bst) {
        free(mp);
        return NULL; /* the drivers read the mask and bias instead */
    }
    return mp;
}

void cf_attn_cpu_mask_map_free(cf_attn_mask_map* mp) {
    if (mp) free(mp->st), free(mp->bst);
    free(mp);
}

/* st joined with the state of keys [j0, j1) of a row whose values start at element `at`: the
 * map row's whole chunks, the ends (the whole run without a map row) from fn; stops once mixed. */
static int row_state(const cf_attn_call* c, state_fn fn, const uint8_t* row, int64_t at, int64_t j0,
                     int64_t j1, int st) {
    const int64_t W = CF_ATTN_MAP_KEYS;
    if (!row) return cf_attn_region_join(st, fn(c, at + j0, j1 - j0));
    for (int64_t j = j0; j < j1 && st != CF_REGION_PART;) {
        const int64_t e = (j / W + 1) * W < j1 ? (j / W + 1) * W : j1; /* end of j's chunk */
        st = cf_attn_region_join(
            st, j % W == 0 && (e % W == 0 || e == c->Sk) ? row[j / W] : fn(c, at + j, e - j));
        j = e;
    }
    return st;
}

int cf_attn_cpu_group_region(const cf_attn_call* c, const cf_attn_mask_map* mp, int64_t b,
                             int64_t hk, int64_t G, int64_t i0, int64_t i1, int64_t j0,
                             int64_t j1) {
    /* heads with masks of their own (broadcast dims have stride 0) */
    const int64_t Gm =
        (c->mask.data && c->mask.stride[1]) || (c->bias.data && c->bias.stride[1]) ? G : 1;
    int st = -1;
    for (int64_t gi = 0; gi < Gm && st != CF_REGION_PART; gi++)
        st =
            cf_attn_region_join(st, cf_attn_cpu_region_open(c, mp, b, hk * G + gi, i0, i1, j0, j1));
    return st;
}

int cf_attn_cpu_tile_region(const cf_attn_call* c, const cf_attn_mask_map* mp, int64_t b,
                            int64_t hk, int64_t G, int64_t i0, int64_t na, int64_t j0, int64_t nb,
                            uint8_t* kvis, const uint8_t** kvp) {
    int st = CF_REGION_OPEN;
    if (c->bs_num.data) {
        const int64_t qb0 = (i0 + c->q_offset) / c->block_q;
        const int64_t nq = (i0 + na - 1 + c->q_offset) / c->block_q - qb0 + 1;
        const int64_t Gs = c->bs_num.stride[1] != 0 ? G : 1; /* heads with their own lists */
        st = -1;
        for (int64_t gs = 0; gs < Gs; gs++)
            st = cf_attn_region_join(
                st, cf_attn_cpu_bs_keys(c, b, hk * G + gs, qb0, nq, j0, nb, kvis + gs * nq * nb));
        if (st == CF_REGION_CLOSED) return st;
        for (int64_t r = 0; r < G * na; r++)
            kvp[r] =
                kvis +
                ((Gs > 1 ? r / na : 0) * nq + (i0 + r % na + c->q_offset) / c->block_q - qb0) * nb;
    }
    if (c->mask.data || c->bias.data) {
        const int ms = cf_attn_cpu_group_region(c, mp, b, hk, G, i0, i0 + na, j0, j0 + nb);
        if (ms == CF_REGION_CLOSED) return ms;
        if (ms != CF_REGION_OPEN) st = CF_REGION_PART;
    }
    return st;
}

int cf_attn_cpu_rows_closed(const cf_attn_call* c, const cf_attn_mask_map* mp, int64_t b,
                            int64_t hk, int64_t G, int64_t i0, int64_t na, int64_t r0, int64_t r1,
                            int64_t j0, int64_t nb, const uint8_t* const* kvp) {
    if (c->bs_num.data) { /* every row's key mask 0 (rows of one query block share theirs) */
        int seen = 0;
        for (int64_t r = r0; r < r1 && !seen; r++)
            if (r == r0 || kvp[r] != kvp[r - 1]) seen = bytes_state(kvp[r], nb) != CF_REGION_CLOSED;
        if (!seen) return 1;
    }
    if (!c->mask.data && !c->bias.data) return 0;
    for (int64_t r = r0; r < r1;) { /* the rows by head */
        const int64_t gi = r / na, ia = r % na, n = na - ia < r1 - r ? na - ia : r1 - r;
        if (gi >= G) break;
        if (cf_attn_cpu_region_open(c, mp, b, hk * G + gi, i0 + ia, i0 + ia + n, j0, j0 + nb) !=
            CF_REGION_CLOSED)
            return 0;
        r += n;
    }
    return 1;
}

/* The state of chunks [k0, k1) of n map rows from m (nc apart): their bytes joined, stopping once
 * mixed (a bit per state seen). */
static int map_span_state(const uint8_t* m, int64_t nc, int64_t n, int64_t k0, int64_t k1) {
    unsigned seen = 0;
    for (int64_t r = 0; r < n; r++) {
        for (int64_t k = k0; k < k1; k++)
            seen |= 1u << m[r * nc + k];
        if (seen != 1u << CF_REGION_CLOSED && seen != 1u << CF_REGION_OPEN) return CF_REGION_PART;
    }
    return seen == 1u << CF_REGION_CLOSED ? CF_REGION_CLOSED : CF_REGION_OPEN;
}

int cf_attn_cpu_region_open(const cf_attn_call* c, const cf_attn_mask_map* mp, int64_t b, int64_t h,
                            int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    if (j1 <= j0 || i1 <= i0) return CF_REGION_CLOSED;
    /* The mask row by row; stops once mixed. Keys in whole map chunks: the map's bytes alone
     * (rows of a (b, h) are nc apart), the common case of a tile's region. */
    const int64_t W = CF_ATTN_MAP_KEYS;
    const int whole = mp && mp->st && j0 % W == 0 && (j1 % W == 0 || j1 == c->Sk);
    int ms = c->mask.data ? -1 : CF_REGION_OPEN;
    if (c->mask.data && whole)
        ms = map_span_state(map_row(mp->st, mp->nb, mp->nh, mp->sq, mp->nc, b, h, i0), mp->nc,
                            i1 - i0, j0 / W, (j1 + W - 1) / W);
    for (int64_t i = i0; c->mask.data && !whole && i < i1 && ms != CF_REGION_PART; i++)
        ms = row_state(c, mask_bytes_state,
                       mp && mp->st ? map_row(mp->st, mp->nb, mp->nh, mp->sq, mp->nc, b, h, i)
                                    : NULL,
                       cf_attn_at4(&c->mask, b, h, i, 0), j0, j1, ms);
    if (ms == CF_REGION_CLOSED || !c->bias.data) return ms;
    /* The bias row by row, from its map where it has one (a bias of each (b, h) is not mapped:
     * the forward reads each of its values once, a map would read it all a second time); once a
     * row is not all -inf the region is open (when the mask is and the bias hides nothing) or
     * part. */
    int bs = -1;
    for (int64_t i = i0; i < i1; i++) {
        bs = row_state(c, bias_state,
                       mp && mp->bst ? map_row(mp->bst, mp->bnb, mp->bnh, mp->sq, mp->nc, b, h, i)
                                     : NULL,
                       cf_attn_at4(&c->bias, b, h, i, 0), j0, j1, bs);
        if (bs == CF_REGION_PART || (bs == CF_REGION_OPEN && ms == CF_REGION_PART)) break;
    }
    return bs == CF_REGION_CLOSED                         ? bs
           : ms == CF_REGION_OPEN && bs == CF_REGION_OPEN ? bs
                                                          : CF_REGION_PART;
}

/* x[j * cs] = 0 bytes of m[j] ? -inf : x[j * cs] for j < n (cs 1: a loop that vectorises). */
static void mask_row(float* x, int64_t cs, const uint8_t* m, int64_t n) {
    if (cs == 1)
        for (int64_t j = 0; j < n; j++)
            x[j] = m[j] ? x[j] : -INFINITY;
    else
        for (int64_t j = 0; j < n; j++)
            x[j * cs] = m[j] ? x[j * cs] : -INFINITY;
}

/* x[j * cs] += y[j] for j < n, -inf where y[j] is -inf (whatever the score). cs 1: the sum
 * formed for every element, then y's bits taken where y is -inf by integer masks, so that the
 * loop vectorises (GCC does not if-convert a float add or compare: either may trap). */
static void bias_row_f32(float* restrict x, int64_t cs, const float* restrict y, int64_t n) {
    if (cs == 1)
        for (int64_t j = 0; j < n; j++) {
            const float a = x[j] + y[j];
            uint32_t u, v;
            memcpy(&u, y + j, sizeof u);
            memcpy(&v, &a, sizeof v);
            const uint32_t ninf = 0u - (uint32_t)(u == 0xff800000u); /* all ones where -inf */
            v = (v & ~ninf) | (u & ninf);
            memcpy(x + j, &v, sizeof v);
        }
    else
        for (int64_t j = 0; j < n; j++)
            x[j * cs] = y[j] == -INFINITY ? -INFINITY : x[j * cs] + y[j];
}

/* Lines of n bytes from p prefetched (the next block's bias). */
static void prefetch_run(const char* p, int64_t n) {
    for (int64_t o = 0; o < n; o += 64)
        __builtin_prefetch(p + o);
}

/* A bias in the dtype of q (PyTorch SDPA's float attn_mask) is added in pieces of XR rows by XK
 * keys converted to fp32 on the stack (the fp32 paths then serve it). */
enum { XR = 16, XK = 256 };

void cf_attn_cpu_extras(const cf_attn_call* c, const cf_attn_kernels* kk, int64_t b, float* s,
                        int64_t nr, int64_t nc, int64_t rs, int64_t cs, const int64_t* i,
                        const int64_t* h, const uint8_t* const* kv, int64_t j0, int masks,
                        int64_t pdi, int64_t pdj) {
    const cf_dtype bt = c->bias.dtype;
    const int64_t es = c->bias.data ? (int64_t)cf_dtype_size(bt) : 0, ys = c->bias.stride[2];
    const char* bias = c->bias.data;
    /* the forward's S^T (rows adjacent, keys cs apart): the bias by the table's transposed add,
     * over runs of rows of one head and consecutive queries (their bias rows evenly spaced) */
    const int bias_t = bias && rs == 1 && cs != 1;
    /* pf: from a row's bias to the same row's in the next block, in bytes (0: none, or not all
     * within the bias): a bias read from memory by rows a page apart is not prefetched by the CPU
     */
    int64_t pf = 0;
    if (bias && (pdi || pdj) && pdi >= 0 && pdj >= 0) {
        int64_t last = 0;
        for (int64_t r = 0; r < nr; r++)
            last = i[r] > last ? i[r] : last;
        if (last < c->Sq - pdi && j0 + nc <= c->Sk - pdj)
            pf = (pdi * ys + pdj * c->bias.stride[3]) * es;
    }
    float tmp[XR * XK];
    if (bias_t)
        for (int64_t r0 = 0, r1; r0 < nr; r0 = r1) {
            for (r1 = r0 + 1; r1 < nr && h[r1] == h[r0] && i[r1] == i[r1 - 1] + 1; r1++)
                ;
            const char* y0 = bias + cf_attn_at4(&c->bias, b, h[r0], i[r0], j0) * es;
            if (bt == CF_F32) {
                kk->bias_t(s + r0, cs, (const float*)y0, ys, r1 - r0, nc, pf / es);
                continue;
            }
            for (int64_t ra = r0; ra < r1; ra += XR)
                for (int64_t ja = 0; ja < nc; ja += XK) {
                    const int64_t nrr = r1 - ra < XR ? r1 - ra : XR;
                    const int64_t ncc = nc - ja < XK ? nc - ja : XK;
                    for (int64_t u = 0; u < nrr; u++) {
                        const char* y = y0 + ((ra - r0 + u) * ys + ja) * es;
                        kk->to_f32(tmp + u * XK, y, bt, ncc);
                        if (pf) prefetch_run(y + pf, ncc * es);
                    }
                    kk->bias_t(s + ja * cs + ra, cs, tmp, XK, nrr, ncc, 0);
                }
        }
    for (int64_t r = 0; r < nr; r++) {
        float* x = s + r * rs;
        if (bias && !bias_t) {
            const char* y = bias + cf_attn_at4(&c->bias, b, h[r], i[r], j0) * es;
            if (bt == CF_F32) {
                bias_row_f32(x, cs, (const float*)y, nc);
            } else {
                for (int64_t ja = 0; ja < nc; ja += XK) {
                    const int64_t ncc = nc - ja < XK ? nc - ja : XK;
                    kk->to_f32(tmp, y + ja * es, bt, ncc);
                    bias_row_f32(x + ja * cs, cs, tmp, ncc);
                }
            }
            if (pf) prefetch_run(y + pf, nc * es);
        }
        if (c->mask.data && masks)
            mask_row(x, cs, (const uint8_t*)c->mask.data + cf_attn_at4(&c->mask, b, h[r], i[r], j0),
                     nc);
        if (kv && masks) mask_row(x, cs, kv[r], nc);
    }
}
