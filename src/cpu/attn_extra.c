/* Issue 13's per-pair masks and bias for the tiled CPU attention drivers (attn_tiled.c,
 * attn_tiled_bwd.c): which key blocks a tile can skip because attn_mask, attn_bias (-inf) or the
 * block-sparse lists hide every pair in them, the block-sparse key masks of the visited blocks,
 * and the pass that adds the bias and masks hidden pairs in a block of scores (a bias of -inf
 * masks its pair like a zero in attn_mask, whatever the score: NaN included). */
#include <math.h>
#include <string.h>

#include "cpu/attn_cpu.h"

int cf_attn_cpu_bs_keys(const cf_attn_call* c, int64_t b, int64_t h, int64_t qb0, int64_t nq,
                        int64_t j0, int64_t nb, uint8_t* kv) {
    const int32_t* num = (const int32_t*)c->bs_num.data;
    const int32_t* idx = (const int32_t*)c->bs_idx.data;
    /* Key positions of the block: [p0, p0 + nb). Listed blocks at or past last_kb start past it
     * (checked before any multiply: a listed index may be up to 2^31 - 1, block_k up to 2^32). */
    const int64_t p0 = j0 + c->k_offset, last_kb = (p0 + nb - 1) / c->block_k;
    int any = 0;
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
            if (lo < hi) memset(row + lo, 1, (size_t)(hi - lo)), any = 1;
        }
    }
    return any;
}

int cf_attn_cpu_region_open(const cf_attn_call* c, int64_t b, int64_t h, int64_t i0, int64_t i1,
                            int64_t j0, int64_t j1) {
    if (j1 <= j0 || i1 <= i0) return 0;
    if (c->mask.data) {
        int open = 0;
        for (int64_t i = i0; i < i1 && !open; i++) {
            const uint8_t* m = (const uint8_t*)c->mask.data + cf_attn_at4(&c->mask, b, h, i, j0);
            for (int64_t j = 0; j < j1 - j0 && !open; j++)
                open = m[j] != 0;
        }
        if (!open) return 0;
    }
    if (c->bias.data) {
        int open = 0;
        for (int64_t i = i0; i < i1 && !open; i++) {
            const int64_t at = cf_attn_at4(&c->bias, b, h, i, j0);
            if (c->bias.dtype == CF_F32) {
                const float* x = (const float*)c->bias.data + at;
                for (int64_t j = 0; j < j1 - j0 && !open; j++)
                    open = x[j] != -INFINITY;
            } else {
                for (int64_t j = 0; j < j1 - j0 && !open; j++)
                    open = cf_load(c->bias.data, c->bias.dtype, at + j) != -INFINITY;
            }
        }
        if (!open) return 0;
    }
    return 1;
}

void cf_attn_cpu_extras(const cf_attn_call* c, int64_t b, float* s, int64_t nr, int64_t nc,
                        int64_t rs, int64_t cs, const int64_t* i, const int64_t* h,
                        const uint8_t* const* kv, int64_t j0) {
    for (int64_t r = 0; r < nr; r++) {
        float* x = s + r * rs;
        if (c->bias.data) {
            const int64_t at = cf_attn_at4(&c->bias, b, h[r], i[r], j0);
            if (c->bias.dtype == CF_F32) {
                const float* y = (const float*)c->bias.data + at;
                for (int64_t j = 0; j < nc; j++) /* -inf masks, whatever the score */
                    x[j * cs] = y[j] == -INFINITY ? -INFINITY : x[j * cs] + y[j];
            } else {
                for (int64_t j = 0; j < nc; j++) {
                    const float y = cf_load(c->bias.data, c->bias.dtype, at + j);
                    x[j * cs] = y == -INFINITY ? -INFINITY : x[j * cs] + y;
                }
            }
        }
        if (c->mask.data) {
            const uint8_t* m =
                (const uint8_t*)c->mask.data + cf_attn_at4(&c->mask, b, h[r], i[r], j0);
            for (int64_t j = 0; j < nc; j++)
                x[j * cs] = m[j] ? x[j * cs] : -INFINITY;
        }
        if (kv) {
            const uint8_t* m = kv[r];
            for (int64_t j = 0; j < nc; j++)
                x[j * cs] = m[j] ? x[j * cs] : -INFINITY;
        }
    }
}
