/* The attention test grid (level 0: quick CI grid; level 1: the fuller cross; level -1: the reduced
 * grid for emulated runs) and attn_grid_run,
 * which runs it for one backend (forced or auto) with optional hooks for device copies.
 * Shapes follow DESIGN.md's grid: seqlens 1, 2, 17, 97, 128, 257, 1025, Sq != Sk both ways,
 * head dims 1, 8, 33, 64, 80, 128, 256, Dv != D, GQA 6/2 and MQA 6/1, strided views, varlen with
 * empty and length-1 sequences, every mask feature alone and combined. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/attn_grid.h"

typedef struct shape {
    int64_t B, H, Hk, Sq, Sk, D, Dv;
} shape;

/* Small and medium shapes: cheap enough for every feature. */
static const shape shapes[] = {
    {1, 1, 1, 1, 1, 1, 1},         /* 0: the smallest */
    {2, 2, 2, 2, 2, 8, 8},         /* 1 */
    {1, 2, 1, 17, 97, 33, 33},     /* 2: Sq < Sk, MQA 2/1, odd D */
    {1, 6, 2, 97, 17, 64, 64},     /* 3: Sq > Sk, GQA 6/2 */
    {2, 6, 1, 128, 128, 80, 80},   /* 4: MQA 6/1 */
    {1, 2, 2, 257, 128, 128, 128}, /* 5 */
    {1, 1, 1, 1, 1025, 256, 256},  /* 6: decode-like */
    {1, 2, 2, 97, 128, 64, 32},    /* 7: Dv < D */
    {1, 1, 1, 17, 33, 8, 80},      /* 8: Dv > D */
    {2, 3, 3, 33, 17, 1, 8},       /* 9: D = 1 */
    {1, 2, 1, 1025, 17, 33, 64},   /* 10: Sq >> Sk */
    {1, 1, 1, 257, 257, 256, 128}, /* 11 */
    {1, 4, 1, 97, 130, 576, 512},  /* 12: MLA (DeepSeek: D 576 / Dv 512, one KV head) */
};
#define NSHAPES (int)(sizeof shapes / sizeof shapes[0])
/* Big: sparingly. */
static const shape big[] = {
    {1, 1, 1, 1025, 1025, 64, 64},
    {1, 1, 1, 1025, 1025, 256, 256},
};

typedef struct feature {
    int causal;
    int64_t wl, wr;
    float softcap;
    attn_alibi alibi;
    float dropout;
    float scale;
} feature;

static const feature features[] = {
    {0, -1, -1, 0, ATTN_ALIBI_NONE, 0, 0},     /* 0: none */
    {1, -1, -1, 0, ATTN_ALIBI_NONE, 0, 0},     /* 1: causal */
    {0, 8, 4, 0, ATTN_ALIBI_NONE, 0, 0},       /* 2: local window */
    {0, 0, 0, 0, ATTN_ALIBI_NONE, 0, 0},       /* 3: diagonal only */
    {0, 5, -1, 0, ATTN_ALIBI_NONE, 0, 0},      /* 4: left window only */
    {0, -1, 2, 0, ATTN_ALIBI_NONE, 0, 0.3f},   /* 5: right window only, explicit scale */
    {0, -1, -1, 1.5f, ATTN_ALIBI_NONE, 0, 0},  /* 6: softcap */
    {0, -1, -1, 0, ATTN_ALIBI_H, 0, 0},        /* 7: alibi [H] */
    {0, -1, -1, 0, ATTN_ALIBI_BH, 0, 0},       /* 8: alibi [B, H] */
    {0, -1, -1, 0, ATTN_ALIBI_NONE, 0.17f, 0}, /* 9: dropout */
    {1, -1, -1, 2.0f, ATTN_ALIBI_NONE, 0, 0},  /* 10: causal + softcap */
    {1, -1, -1, 0, ATTN_ALIBI_H, 0.1f, 0},     /* 11: causal + alibi + dropout */
    {0, 16, 0, 1.5f, ATTN_ALIBI_BH, 0, 0},     /* 12: window + softcap + alibi */
    {1, 24, -1, 2.0f, ATTN_ALIBI_H, 0.1f, 0},  /* 13: everything */
    {0, 3, -1, 0, ATTN_ALIBI_NONE, 0.5f, 0},   /* 14: window + heavy dropout */
};
#define NFEAT (int)(sizeof features / sizeof features[0])

typedef struct varlen_cfg {
    int64_t B, H, Hk, D, Dv;
    int32_t q[ATTN_MAX_SEQS], k[ATTN_MAX_SEQS];
    int pass_max;
} varlen_cfg;

static const varlen_cfg varlens[] = {
    {4, 6, 2, 64, 64, {5, 0, 1, 17}, {7, 3, 0, 1}, 1},
    {3, 2, 1, 33, 17, {1, 97, 2}, {33, 64, 1}, 0},
    {5, 3, 3, 8, 8, {0, 0, 3, 1, 8}, {0, 5, 0, 1, 8}, 1},
};
#define NVARLEN (int)(sizeof varlens / sizeof varlens[0])

/* Blocks of a longer attention (q_offset, k_offset): a shape or varlen config, a feature, the
 * offsets. Past, future (rows that see no key) and straddling blocks, keys at positions that are
 * not multiples of 4 (the Philox word of a key), positions at the 2^32 limit. */
typedef struct offset_cfg {
    int shape; /* index into shapes, or -1 - index into varlens */
    int feature;
    int64_t q_offset, k_offset;
} offset_cfg;

static const offset_cfg offsets[] = {
    {4, 13, 300, 257}, /* everything, straddling, k % 4 = 1 */
    {2, 12, 5, 0},     /* window + softcap + alibi[B,H] */
    {11, 1, 1, 130},   /* causal future block: empty rows */
    {-1, 11, 7, 3},    /* varlen, causal + alibi + dropout */
    {3, 14, ((int64_t)1 << 32) - 97, ((int64_t)1 << 32) - 19}, /* dropout at the position limit */
    /* ALiBi distances across 2^24 (cf_attn_alibi_run: fp32 below, int64 from there) and past it */
    {3, 7, ((int64_t)1 << 24) - 40, 0},
    {4, 8, 3 * ((int64_t)1 << 24) + 5, 2},
};
#define NOFFS (int)(sizeof offsets / sizeof offsets[0])

/* Issue 13 (A): sinks, bias / mask (with dbias), block-sparse masks, chunked attention, each alone
 * and combined with a feature of the table above, on a shape (or varlen config), some at block
 * offsets. */
typedef struct feat13 {
    int sinks;
    attn_bcast bias;
    int bias_f32, dbias;
    attn_bcast mask, blocks;
    int64_t bq, bk;
    int pct;
    int64_t chunk;
    int feature, shape; /* shape: index into shapes, or -1 - index into varlens */
    int64_t q_offset, k_offset;
} feat13;

#define BC0 ATTN_BC_NONE
static const feat13 f13[] = {
    /* sinks: alone, with a sliding window (gpt-oss), causal varlen, everything, dropout, MLA */
    {1, BC0, 0, 0, BC0, BC0, 0, 0, 0, 0, 0, 3, 0, 0},
    {1, BC0, 0, 0, BC0, BC0, 0, 0, 0, 0, 2, 4, 0, 0},
    {1, BC0, 0, 0, BC0, BC0, 0, 0, 0, 0, 1, -1, 0, 0},
    {1, BC0, 0, 0, BC0, BC0, 0, 0, 0, 0, 13, 2, 0, 0},
    {1, BC0, 0, 0, BC0, BC0, 0, 0, 0, 0, 9, 5, 0, 0},
    {1, BC0, 0, 0, BC0, BC0, 0, 0, 0, 0, 1, 12, 0, 0},
    /* bias (every broadcast, fp32 or the dtype, with dbias) */
    {0, ATTN_BC_BH, 0, 1, BC0, BC0, 0, 0, 0, 0, 0, 3, 0, 0},
    {0, ATTN_BC_1H, 1, 1, BC0, BC0, 0, 0, 0, 0, 10, 4, 0, 0},
    {0, ATTN_BC_B1, 0, 1, BC0, BC0, 0, 0, 0, 0, 7, 1, 0, 0},
    {0, ATTN_BC_11, 1, 1, BC0, BC0, 0, 0, 0, 0, 11, 2, 0, 0},
    {0, ATTN_BC_11, 0, 0, BC0, BC0, 0, 0, 0, 0, 0, 11, 0, 0},
    /* boolean mask */
    {0, BC0, 0, 0, ATTN_BC_BH, BC0, 0, 0, 0, 0, 0, 5, 0, 0},
    {0, BC0, 0, 0, ATTN_BC_1H, BC0, 0, 0, 0, 0, 2, 3, 0, 0},
    {0, ATTN_BC_BH, 0, 1, ATTN_BC_11, BC0, 0, 0, 0, 0, 6, 4, 0, 0},
    {0, BC0, 0, 0, ATTN_BC_B1, BC0, 0, 0, 0, 0, 9, 10, 0, 0},
    /* block-sparse: block sizes below, at and above the kernels' blocks, odd ones, varlen */
    {0, BC0, 0, 0, BC0, ATTN_BC_BH, 16, 16, 50, 0, 0, 5, 0, 0},
    {0, BC0, 0, 0, BC0, ATTN_BC_1H, 32, 8, 40, 0, 1, 11, 0, 0},
    {0, BC0, 0, 0, BC0, ATTN_BC_11, 7, 5, 60, 0, 9, 3, 0, 0},
    {0, BC0, 0, 0, BC0, ATTN_BC_B1, 4, 4, 50, 0, 0, -1, 0, 0},
    {0, BC0, 0, 0, BC0, ATTN_BC_11, 128, 256, 70, 0, 12, 4, 0, 0},
    {1, ATTN_BC_1H, 0, 1, ATTN_BC_B1, ATTN_BC_11, 16, 32, 60, 0, 12, 4, 0, 0},
    /* chunked attention */
    {0, BC0, 0, 0, BC0, BC0, 0, 0, 0, 16, 0, 5, 0, 0},
    {0, BC0, 0, 0, BC0, BC0, 0, 0, 0, 32, 1, 11, 0, 0},
    {0, BC0, 0, 0, BC0, BC0, 0, 0, 0, 7, 12, -2, 0, 0},
    {1, BC0, 0, 0, BC0, BC0, 0, 0, 0, 5, 4, 3, 0, 0},
    {0, BC0, 0, 0, BC0, BC0, 0, 0, 0, 3, 10, 10, 0, 0},
    /* at block offsets (positions) */
    {1, BC0, 0, 0, BC0, ATTN_BC_11, 16, 16, 50, 16, 1, 4, 300, 257},
    {0, ATTN_BC_BH, 1, 1, ATTN_BC_1H, BC0, 0, 0, 0, 0, 13, 2, 5, 0},
    {1, BC0, 0, 0, BC0, ATTN_BC_BH, 8, 8, 50, 24, 11, -1, 7, 3},
};
#define NF13 (int)(sizeof f13 / sizeof f13[0])

/* Serving (issue 13): paged K/V in the varlen call and used lengths (seqused_q / seqused_k).
 * Page sizes 1, 3, 16 (blocks of keys gathered across pages), 128 and 200 (blocks within a
 * page); sequences longer than a key block; no cu_seqlens_k; batch mode with used lengths. */
typedef struct serve_cfg {
    int shape; /* index into shapes (batch mode), or -1 - index into serve_varlens */
    int feature;
    int64_t page;
    int seqused, no_cu_k;
    int with_a; /* 1: + sinks, bias (dbias), mask; 2: + sinks, block-sparse, chunk; 3: + blocks */
} serve_cfg;

static const varlen_cfg serve_varlens[] = {
    {4, 6, 2, 64, 64, {5, 0, 1, 17}, {7, 3, 0, 1}, 1},
    {3, 2, 1, 33, 17, {1, 97, 2}, {33, 64, 1}, 0},
    {2, 4, 2, 64, 64, {130, 3}, {300, 517}, 1},
};

static const serve_cfg serves[] = {
    {-1, 1, 16, 0, 0, 0},  /* causal */
    {-2, 12, 1, 2, 0, 0},  /* window + softcap + alibi[B,H], seqused_k, one row per page */
    {-3, 13, 3, 3, 1, 0},  /* everything, both seqused, no cu_seqlens_k */
    {-3, 1, 128, 3, 0, 0}, /* blocks within pages */
    {-3, 0, 200, 2, 1, 0}, /* pages not a multiple of the key block */
    {5, 1, 0, 3, 0, 0},    /* batch mode, causal, Sq 257 Sk 128 */
    {3, 2, 0, 1, 0, 0},    /* batch mode, window, seqused_q */
    /* with A's features (issue 13): masks align on the used lengths, pages hold the keys */
    {5, 1, 0, 3, 0, 1},   /* batch, causal, both seqused, sinks + bias[BH] + dbias + mask[1H] */
    {-3, 1, 16, 3, 1, 2}, /* paged, both seqused, no cu_k, sinks + blocks[11] + chunk 32 */
    {-1, 0, 3, 2, 0, 3},  /* paged, seqused_k, blocks[BH] (8, 4) */
};
#define NSERVE (int)(sizeof serves / sizeof serves[0])

static const cf_dtype dtypes[3] = {CF_F32, CF_F16, CF_BF16};

static void set_shape(attn_case* c, const shape* s) {
    c->B = s->B, c->H = s->H, c->Hk = s->Hk, c->Sq = s->Sq, c->Sk = s->Sk, c->D = s->D,
    c->Dv = s->Dv;
}

static void set_feature(attn_case* c, const feature* f) {
    c->causal = f->causal;
    c->window_left = f->wl, c->window_right = f->wr;
    c->softcap = f->softcap;
    c->alibi = f->alibi;
    c->dropout_p = f->dropout;
    c->scale = f->scale;
}

static void set_varlen(attn_case* c, const varlen_cfg* v) {
    c->varlen = 1;
    c->B = v->B, c->H = v->H, c->Hk = v->Hk, c->D = v->D, c->Dv = v->Dv;
    c->Sq = c->Sk = 0;
    memcpy(c->seqlens_q, v->q, sizeof v->q);
    memcpy(c->seqlens_k, v->k, sizeof v->k);
    c->varlen_pass_max = v->pass_max;
}

/* Per dtype, level 0: a feature sweep on small shapes, a shape sweep, varlen, one big case. */
#define L0_FEAT NFEAT
#define L0_SHAPE NSHAPES
#define L0_PER_DTYPE (L0_FEAT + L0_SHAPE + NVARLEN + 1 + NF13 + NOFFS + NSERVE)
/* Per dtype, level 1: every shape x feature, every varlen x feature, both big shapes, the issue
 * 13 cases on their shape and on two more, offsets, serving. */
#define L1_PER_DTYPE ((NSHAPES + NVARLEN) * NFEAT + 2 + 3 * NF13 + NOFFS + NSERVE)

static const int small_for_features[] = {1, 2, 3, 7, 8, 9, 4, 10};
#define NSMALL (int)(sizeof small_for_features / sizeof small_for_features[0])

/* Issue 13 case k; alt > 0 moves it to another shape (level 1). */
static void set_f13(attn_case* c, int k, int alt) {
    const feat13* f = &f13[k];
    int sh = f->shape;
    if (alt) sh = (k * 3 + alt * 5) % NSHAPES;
    if (sh >= 0)
        set_shape(c, &shapes[sh]);
    else
        set_varlen(c, &varlens[-1 - sh]);
    set_feature(c, &features[f->feature]);
    c->sinks = f->sinks;
    c->bias = c->varlen ? BC0 : f->bias, c->bias_f32 = f->bias_f32, c->dbias = f->dbias;
    c->mask = c->varlen ? BC0 : f->mask;
    c->blocks = f->blocks, c->block_q = f->bq, c->block_k = f->bk, c->block_pct = f->pct;
    c->chunk = f->chunk;
    c->q_offset = f->q_offset, c->k_offset = f->k_offset;
}

static void set_offsets(attn_case* c, const offset_cfg* o) {
    if (o->shape >= 0)
        set_shape(c, &shapes[o->shape]);
    else
        set_varlen(c, &varlens[-1 - o->shape]);
    set_feature(c, &features[o->feature]);
    c->q_offset = o->q_offset, c->k_offset = o->k_offset;
}

/* Per dtype, level -1 (make test-arm, under qemu-user): level 0 without the shapes of more than a
 * few million multiply-adds. Still several key blocks (shape 6) and query tiles (shape 10). */
static const int emu_shapes[] = {0, 1, 2, 3, 6, 7, 8, 9, 10};
#define NEMU (int)(sizeof emu_shapes / sizeof emu_shapes[0])
#define NSMALL_EMU 6 /* the first six of small_for_features */
/* The issue 13 cases on those shapes (or varlen). */
static const int f13_emu[] = {0, 2, 3, 6, 8, 9, 12, 14, 17, 18, 23, 24, 25, 27, 28};
#define NF13_EMU (int)(sizeof f13_emu / sizeof f13_emu[0])
/* The serving and block-offset cases, the same at every level, were 85 % of this level's
 * multiply-adds in all three dtypes: here each runs in one dtype in turn (per dtype d the
 * ceil(n / 3) entries (3 m + d) % n: every entry runs, a few in two dtypes). */
#define NSERVE_EMU ((NSERVE + 2) / 3)
#define NOFFS_EMU ((NOFFS + 2) / 3)
#define LE_PER_DTYPE (NFEAT + NEMU + NVARLEN + NF13_EMU + NOFFS_EMU + NSERVE_EMU)

int attn_grid_count(int level) {
    return 3 * (level < 0 ? LE_PER_DTYPE : level == 0 ? L0_PER_DTYPE : L1_PER_DTYPE);
}

int attn_grid_case(int level, int i, attn_case* c) {
    if (i < 0 || i >= attn_grid_count(level)) return -1;
    attn_case_init(c);
    int per = level < 0 ? LE_PER_DTYPE : level == 0 ? L0_PER_DTYPE : L1_PER_DTYPE;
    int d = i / per, j = i % per;
    c->dtype = dtypes[d];
    c->seed = (uint64_t)(level * 100000 + i + 1) + tt_seed_base() * 1000003u;
    const int nserve = level < 0 ? NSERVE_EMU : NSERVE, noffs = level < 0 ? NOFFS_EMU : NOFFS;
    if (j >= per - nserve) { /* the same serving cases at every level */
        const int k = j - (per - nserve);
        const serve_cfg* sv = &serves[level < 0 ? (3 * k + d) % NSERVE : k];
        if (sv->shape >= 0)
            set_shape(c, &shapes[sv->shape]);
        else
            set_varlen(c, &serve_varlens[-1 - sv->shape]);
        set_feature(c, &features[sv->feature]);
        c->page = sv->page, c->seqused = sv->seqused, c->no_cu_k = sv->no_cu_k;
        if (sv->with_a == 1) c->sinks = 1, c->bias = ATTN_BC_BH, c->dbias = 1, c->mask = ATTN_BC_1H;
        if (sv->with_a == 2)
            c->sinks = 1, c->blocks = ATTN_BC_11, c->block_q = c->block_k = 16, c->chunk = 32;
        if (sv->with_a == 3) c->blocks = ATTN_BC_BH, c->block_q = 8, c->block_k = 4;
        c->layout = (tt_layout)((j + d) % 3);
        return 0;
    }
    if (j >= per - nserve - noffs) { /* the same block cases at every level */
        const int k = j - (per - nserve - noffs);
        set_offsets(c, &offsets[level < 0 ? (3 * k + d) % NOFFS : k]);
        c->layout = (tt_layout)((j + d) % 3);
        return 0;
    }
    const int n13 = level < 0 ? NF13_EMU : level == 0 ? NF13 : 3 * NF13;
    if (j >= per - nserve - noffs - n13) { /* issue 13's features */
        const int k = j - (per - nserve - noffs - n13);
        set_f13(c, level < 0 ? f13_emu[k] : k % NF13, level < 0 ? 0 : k / NF13);
        c->layout = (tt_layout)((k + d) % 3);
        return 0;
    }
    if (level < 0) {
        if (j < NFEAT) {
            set_shape(c, &shapes[small_for_features[(j + 3 * d) % NSMALL_EMU]]);
            set_feature(c, &features[j]);
            c->layout = (tt_layout)((j + d) % 3);
            c->no_lse = j == 0 && d == 1;
        } else if ((j -= NFEAT) < NEMU) {
            set_shape(c, &shapes[emu_shapes[j]]);
            set_feature(c, &features[(j * 5 + d * 3) % NFEAT]);
            c->layout = (tt_layout)((j + 2 * d) % 3);
        } else {
            j -= NEMU;
            set_varlen(c, &varlens[j]);
            set_feature(c, &features[(j * 4 + d * 5 + 1) % NFEAT]);
            c->layout = (tt_layout)((j + d) % 3);
        }
    } else if (level == 0) {
        if (j < L0_FEAT) {
            set_shape(c, &shapes[small_for_features[(j + 3 * d) % NSMALL]]);
            set_feature(c, &features[j]);
            c->layout = (tt_layout)((j + d) % 3);
            c->no_lse = j == 0 && d == 1;
        } else if ((j -= L0_FEAT) < L0_SHAPE) {
            set_shape(c, &shapes[j]);
            set_feature(c, &features[(j * 5 + d * 3) % NFEAT]);
            c->layout = (tt_layout)((j + 2 * d) % 3);
        } else if ((j -= L0_SHAPE) < NVARLEN) {
            set_varlen(c, &varlens[j]);
            set_feature(c, &features[(j * 4 + d * 5 + 1) % NFEAT]);
            c->layout = (tt_layout)((j + d) % 3);
        } else {
            /* fp32: 1025^2 x 64 causal; fp16: the same with window + alibi; bf16: 1025^2 x 256. */
            set_shape(c, &big[d == 2]);
            set_feature(c, &features[d == 0 ? 1 : d == 1 ? 12 : 0]);
            c->layout = d == 2 ? TT_PERMUTED : TT_DENSE;
        }
    } else {
        if (j < NSHAPES * NFEAT) {
            set_shape(c, &shapes[j / NFEAT]);
            set_feature(c, &features[j % NFEAT]);
        } else if ((j -= NSHAPES * NFEAT) < NVARLEN * NFEAT) {
            set_varlen(c, &varlens[j / NFEAT]);
            set_feature(c, &features[j % NFEAT]);
        } else {
            j -= NVARLEN * NFEAT;
            set_shape(c, &big[j]);
            set_feature(c, &features[j ? 13 : 1]);
        }
        c->layout = (tt_layout)(i % 3);
    }
    return 0;
}

/* ---- Running a grid ----------------------------------------------------------------------- */

/* Case c (named name) as problem p on backend be (context ctx): forward, check, and (o->bwd)
 * backward and check. Returns 1 when it ran, 0 when the backend refused it as unsupported and
 * o->skip_unsupported (last_skip: the last message printed). */
static int grid_case_on(const attn_grid_opts* o, cflash_context* ctx, const char* be,
                        attn_problem* p, const attn_case* c, const char* name, char* last_skip,
                        size_t nskip) {
    cflash_status s = o->run_fwd ? o->run_fwd(ctx, p, o->user) : attn_problem_run_fwd(ctx, p);
    if (o->run_fwd) p->fwd_ran = s == CFLASH_OK && !c->no_lse;
    if (s == CFLASH_ERR_UNSUPPORTED && o->skip_unsupported) {
        if (strcmp(last_skip, cflash_last_error())) {
            snprintf(last_skip, nskip, "%s", cflash_last_error());
            printf("skip %s on %s: %s\n", name, be, last_skip);
        }
        return 0;
    }
    if (s != CFLASH_OK) {
        tt_fail(__FILE__, __LINE__, "%s on %s: forward returned %s: %s", name, be,
                cflash_status_string(s), cflash_last_error());
        return 1;
    }
    char msg[1024];
    int ok = attn_problem_check_fwd(p, msg, sizeof msg);
    if (ok)
        tt_pass();
    else
        tt_fail(__FILE__, __LINE__, "fwd on %s: %s", be, msg);
    if (o->verbose) printf("fwd %s %s\n", be, msg);
    if (o->bwd && !c->no_lse) {
        s = o->run_bwd ? o->run_bwd(ctx, p, o->user) : attn_problem_run_bwd(ctx, p);
        if (s == CFLASH_ERR_UNSUPPORTED && o->skip_unsupported) {
            printf("skip bwd %s on %s: %s\n", name, be, cflash_last_error());
        } else if (s != CFLASH_OK) {
            tt_fail(__FILE__, __LINE__, "%s on %s: backward returned %s: %s", name, be,
                    cflash_status_string(s), cflash_last_error());
        } else {
            ok = attn_problem_check_bwd(p, msg, sizeof msg);
            if (ok)
                tt_pass();
            else
                tt_fail(__FILE__, __LINE__, "bwd on %s: %s", be, msg);
            if (o->verbose) printf("bwd %s %s\n", be, msg);
        }
    }
    return 1;
}

int attn_grid_run_many(const attn_grid_opts* o, int nb, const char* const* backends,
                       const unsigned* dtypes, int* ran, int* skipped) {
    int n = attn_grid_count(o->level), nprob = 0, fails0 = tt_failed;
    cflash_context* ctx[ATTN_GRID_MAX_BACKENDS] = {NULL};
    if (nb < 1 || nb > ATTN_GRID_MAX_BACKENDS) {
        tt_fail(__FILE__, __LINE__, "attn_grid_run_many: %d backends", nb);
        return 1;
    }
    for (int k = 0; k < nb; k++) {
        ran[k] = skipped[k] = 0;
        if (cflash_context_create(&ctx[k]) != CFLASH_OK ||
            cflash_context_set_backend(ctx[k], backends[k]) != CFLASH_OK ||
            cflash_context_set_threads(ctx[k], o->threads) != CFLASH_OK) {
            tt_fail(__FILE__, __LINE__, "context for backend %s: %s",
                    backends[k] ? backends[k] : "auto", cflash_last_error());
            for (int j = 0; j <= k; j++)
                cflash_context_free(ctx[j]);
            return 1;
        }
    }
    char last_skip[ATTN_GRID_MAX_BACKENDS][512] = {""};
    double t0 = tt_now();
    for (int i = 0; i < n; i++) {
        if (o->max_cases && nprob >= o->max_cases) break;
        attn_case c;
        attn_grid_case(o->level, i, &c);
        int wanted = 0; /* some backend runs the case's dtype */
        for (int k = 0; k < nb; k++)
            wanted |= !dtypes[k] || (dtypes[k] & (1u << c.dtype));
        if (!wanted) continue;
        if (o->plain_only && (c.sinks || c.bias || c.mask || c.blocks || c.chunk)) continue;
        if (o->max_head_dim > 0 && (c.D > o->max_head_dim || c.Dv > o->max_head_dim)) continue;
        /* device hooks copy the plain tensors only; serving cases run on the host */
        if ((o->run_fwd || o->run_bwd) && (c.page || c.seqused)) continue;
        char name[256];
        attn_case_str(&c, name, sizeof name);
        attn_problem* p = attn_problem_new(&c);
        if (!p) {
            tt_fail(__FILE__, __LINE__, "%s: could not set up the problem", name);
            continue;
        }
        double tc = tt_now();
        int any = 0;
        /* every backend on the one problem: its fp64 oracle is computed once (p keeps it) */
        for (int k = 0; k < nb; k++) {
            if (dtypes[k] && !(dtypes[k] & (1u << c.dtype))) continue;
            const char* be = backends[k] ? backends[k] : "auto";
            if (grid_case_on(o, ctx[k], be, p, &c, name, last_skip[k], sizeof last_skip[k]))
                ran[k]++, any = 1;
            else
                skipped[k]++;
        }
        nprob += any;
        if (o->verbose) printf("  (%.2f s)\n", tt_now() - tc);
        attn_problem_free(p);
    }
    for (int k = 0; k < nb; k++) {
        printf("grid level %d, backend %s%s: %d cases run, %d skipped%s\n", o->level,
               backends[k] ? backends[k] : "auto", o->bwd ? " (fwd+bwd)" : " (fwd)", ran[k],
               skipped[k], nb > 1 ? " (the backends' problems shared)" : "");
        cflash_context_free(ctx[k]);
    }
    printf("grid level %d: %d failed checks, %.1f s\n", o->level, tt_failed - fails0,
           tt_now() - t0);
    fflush(stdout);
    return tt_failed - fails0;
}

int attn_grid_run(const attn_grid_opts* o, int* ran, int* skipped) {
    int r = 0, s = 0;
    const int fails = attn_grid_run_many(o, 1, &o->backend, &o->dtypes, &r, &s);
    if (ran) *ran = r;
    if (skipped) *skipped = s;
    return fails;
}

/* ---- The one-pass backward ----------------------------------------------------------------- */

/* One CHECK of p's forward against the oracle, and (bwd) one of its backward. */
static void check_fwd_bwd(attn_problem* p, const char* backend, int bwd) {
    char msg[768];
    CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "%s: %s", backend, msg);
    if (bwd) CHECK_MSG(attn_problem_check_bwd(p, msg, sizeof msg), "%s: %s", backend, msg);
}

int attn_grid_one_pass(const char* backend, unsigned dtypes, int threads) {
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, backend));
    CHECK_OK(cflash_context_set_threads(ctx, threads));
    const cf_dtype dts[3] = {CF_F32, CF_F16, CF_BF16};
    int n = 0;
    for (int di = 0; di < 3; di++)
        for (int f = 0; f < 5; f++) {
            if (dtypes && !(dtypes & (1u << dts[di]))) continue;
            if (tt_test_level() < 0 && f % 3 != di)
                continue; /* emulated: each shape in one dtype */
            attn_case c;
            attn_case_init(&c);
            c.B = 3, c.H = 6, c.Hk = 3, c.Sq = 97, c.Sk = 130, c.D = 40, c.Dv = 40;
            c.dtype = dts[di];
            c.seed = 100 + (uint64_t)(di * 10 + f);
            if (f == 1) c.causal = 1, c.Sq = c.Sk = 150;
            if (f == 2)
                c.window_left = 20, c.window_right = 7, c.softcap = 1.5f, c.dropout_p = 0.2f,
                c.alibi = ATTN_ALIBI_H;
            if (f == 3) c.D = 33, c.Dv = 17, c.layout = TT_PADDED, c.Hk = 6, c.B = 2; /* odd dims */
            if (f == 4) {
                c.varlen = 1, c.B = 3;
                const int32_t lq[3] = {70, 1, 33}, lk[3] = {64, 90, 5};
                for (int b = 0; b < 3; b++)
                    c.seqlens_q[b] = lq[b], c.seqlens_k[b] = lk[b];
                c.causal = 1;
            }
            attn_problem* p = attn_problem_new(&c);
            CHECK(p != NULL);
            if (!p) continue;
            CHECK_OK(attn_problem_run_bwd(ctx, p));
            check_fwd_bwd(p, backend, 1);
            attn_problem_free(p);
            n++;
        }
    printf("%s one-pass backward: %d cases\n", backend, n);
    cflash_context_free(ctx);
    return n;
}

/* ---- Decode rows --------------------------------------------------------------------------- */

/* Case k of attn_grid_decode_rows (k < NDECODE), in dtype dt. */
#define NDECODE 11
static void decode_case(int k, cf_dtype dt, attn_case* c) {
    attn_case_init(c);
    c->dtype = dt;
    c->seed = 7000 + (uint64_t)k * 10 + (uint64_t)dt + tt_seed_base() * 1000003u;
    c->B = 2, c->H = 8, c->Hk = 2, c->Sq = 1, c->Sk = 300, c->D = c->Dv = 64;
    c->layout = (tt_layout)(k % 3);
    static const int32_t q4[4] = {1, 2, 1, 0}, k4[4] = {40, 1, 0, 300}, q3[3] = {1, 1, 2},
                         k3[3] = {100, 5, 33};
    switch (k) {
    case 0: c->causal = 1; break; /* GQA 4, one row */
    case 1:                       /* no GQA, 3 rows, odd head dims, masks */
        c->B = 3, c->H = c->Hk = 4, c->Sq = 3, c->Sk = 77, c->D = 33, c->Dv = 17;
        c->window_left = 20, c->window_right = 0, c->softcap = 1.5f, c->alibi = ATTN_ALIBI_BH;
        break;
    case 2: /* MQA, 16 rows on one KV head, sinks, a cache split in four */
        c->B = 1, c->H = 16, c->Hk = 1, c->Sk = 1500, c->D = c->Dv = 128, c->sinks = 1;
        break;
    case 3: /* varlen: a row with no key, a sequence with no row, a long one */
    case 4: /* the same paged (16 rows a page), seqused_k */
        c->varlen = 1, c->B = 4, c->causal = 1;
        for (int b = 0; b < 4; b++)
            c->seqlens_q[b] = q4[b], c->seqlens_k[b] = k4[b];
        if (k == 4) c->page = 16, c->seqused = 2, c->alibi = ATTN_ALIBI_H;
        break;
    case 5: /* paged, one row a page, seqused_k without cu_seqlens_k, window */
        c->varlen = 1, c->B = 3, c->H = 6, c->Hk = 3, c->page = 1, c->seqused = 2, c->no_cu_k = 1;
        for (int b = 0; b < 3; b++)
            c->seqlens_q[b] = q3[b], c->seqlens_k[b] = k3[b];
        c->window_left = 9, c->window_right = 2;
        break;
    case 6: c->Sq = 2, c->seqused = 2, c->no_lse = 1; break; /* batch seqused_k, no lse */
    case 7: c->Sq = 7, c->Sk = 5, c->causal = 1; break;      /* 28 rows; early rows see no key */
    case 8: c->dropout_p = 0.1f; break;                      /* kept tiled: dropout */
    case 9: c->bias = ATTN_BC_BH, c->dbias = 1, c->softcap = 1.5f; break; /* bias, softcap */
    case 10: c->Sq = 8, c->causal = 1; break; /* 32 rows a KV head: tiled */
    }
}

/* Decode rows with a boolean mask (attn_decode_mask_problem): per case the shape, the call's
 * masks, the mask's dims, and each sequence's run of keys [pad, len) (len 0 = Sk; -1: the random
 * mask attn_problem_new draws), rows as "flat" (all end at len), "stair" (causal: row i of Sq
 * ends at len - Sq + 1 + i) or "mixed" (sequence 0 flat, 1 stair); pad2 > 0: heads 4.. of
 * sequence 0 start there. routed: ATTN_MASK_RUNS or _KEPT (attn_grid.h). holes 1: the run loses
 * keys j with j / 16 % 3 == 1 (whole blocks) and (j + i + h) % 5 == 2 (row i, head h); holes 2:
 * a speculative decoding step's tree, the run's last Sq keys a draft of which row i sees key a
 * (of Sq) where a is i or one of its ancestors (the parent of a: (a - 1) / 2), and odd heads h
 * lose key 40 + h (blocks every row sees whole, beside one that a head's rows do not); holes 3:
 * that tree in the bias instead (0 where it keeps a key, else -inf: a float mask), the mask
 * keeping the run. */
enum { DM_FLAT, DM_STAIR, DM_MIXED };
typedef struct decode_mask {
    int64_t B, H, Hk, Sq, Sk, D;
    int causal;
    int64_t wl, wr;
    attn_alibi alibi;
    int sinks;
    attn_bcast mask;
    int rows;
    int64_t pad[2], len[2], pad2;
    int routed;
    attn_bcast bias; /* a bias too (its random -inf entries hide keys within the runs) */
    int holes;
} decode_mask;
#define AL0 ATTN_ALIBI_NONE
#define ALH ATTN_ALIBI_H
#define BBH ATTN_BC_BH
#define B11 ATTN_BC_11
#define B1H ATTN_BC_1H
#define MB1 ATTN_BC_B1
#define RUNS ATTN_MASK_RUNS
#define KEPT ATTN_MASK_KEPT
#define FLAT DM_FLAT
#define STAIR DM_STAIR
static const decode_mask decode_masks[] = {
    /* runs: left padding (one sequence keeps only its last key), a non-causal call */
    {2, 8, 2, 1, 300, 64, 0, -1, -1, AL0, 0, MB1, FLAT, {0, 299}, {0, 0}, 0, RUNS, BC0, 0},
    /* causal + ALiBi, the mask (B, H) alike over heads */
    {2, 8, 2, 1, 300, 64, 1, -1, -1, ALH, 0, BBH, FLAT, {5, 120}, {0, 0}, 0, RUNS, BC0, 0},
    /* a static cache's unfilled slots, sinks, MHA, 3 rows, odd head dim */
    {2, 4, 4, 3, 77, 33, 0, -1, -1, AL0, 1, MB1, FLAT, {0, 9}, {50, 61}, 0, RUNS, BC0, 0},
    /* transformers' causal stairs in the mask of a non-causal call, short of Sk */
    {2, 8, 2, 4, 200, 64, 0, -1, -1, AL0, 0, MB1, STAIR, {3, 0}, {150, 0}, 0, RUNS, BC0, 0},
    /* a causal call with a window, the mask broadcast (1, 1); then stairs that repeat causal */
    {2, 8, 2, 4, 200, 64, 1, 30, 0, AL0, 0, B11, FLAT, {10, 10}, {0, 0}, 0, RUNS, BC0, 0},
    {2, 8, 2, 4, 200, 64, 1, -1, 0, AL0, 1, B1H, STAIR, {7, 7}, {0, 0}, 0, RUNS, BC0, 0},
    /* kept: holes (the random mask), a causal call short of Sk, heads of other pads, a row with
     * no key, flat and stair rows in one call, a window short of Sk */
    {2, 8, 2, 1, 300, 64, 0, -1, -1, AL0, 0, MB1, FLAT, {-1, -1}, {0, 0}, 0, KEPT, BC0, 0},
    {2, 8, 2, 4, 200, 64, 1, -1, 0, AL0, 0, MB1, FLAT, {0, 4}, {12, 0}, 0, KEPT, BC0, 0},
    {2, 8, 2, 1, 300, 64, 0, -1, -1, AL0, 0, BBH, FLAT, {5, 0}, {0, 0}, 6, KEPT, BC0, 0},
    {2, 8, 2, 1, 300, 64, 0, -1, -1, AL0, 1, MB1, FLAT, {300, 0}, {0, 0}, 0, KEPT, BC0, 0},
    {2, 8, 2, 4, 200, 64, 0, -1, -1, AL0, 0, MB1, DM_MIXED, {0, 2}, {0, 0}, 0, KEPT, BC0, 0},
    {2, 8, 2, 1, 300, 64, 0, 20, 5, AL0, 0, MB1, FLAT, {0, 1}, {250, 0}, 0, KEPT, BC0, 0},
    /* a bias with the mask: its columns are the call's (keys past the left pad), then stairs,
     * sinks and a (1, 1) bias; holes with a bias */
    {2, 8, 2, 1, 300, 64, 0, -1, -1, AL0, 0, MB1, FLAT, {40, 7}, {0, 0}, 0, RUNS, BBH, 0},
    {2, 8, 2, 4, 200, 64, 0, -1, -1, AL0, 1, MB1, STAIR, {3, 9}, {150, 0}, 0, RUNS, B11, 0},
    {2, 8, 2, 1, 300, 64, 0, -1, -1, AL0, 0, MB1, FLAT, {-1, -1}, {0, 0}, 0, KEPT, B1H, 0},
    /* holes and hidden blocks (a serving engine's shared cache; a speculative tree): padded, one
     * row; in stairs of a causal call with sinks, per head; with a bias and ALiBi */
    {2, 8, 2, 1, 300, 64, 0, -1, -1, AL0, 0, MB1, FLAT, {0, 13}, {0, 250}, 0, KEPT, BC0, 1},
    {2, 8, 2, 4, 200, 64, 1, -1, 0, AL0, 1, BBH, STAIR, {0, 0}, {0, 0}, 0, KEPT, BC0, 1},
    {2, 8, 2, 1, 300, 64, 0, -1, -1, ALH, 0, BBH, FLAT, {5, 0}, {0, 0}, 0, KEPT, BBH, 1},
    /* speculative trees: the mask alike over heads, 4 rows; per head, 2 rows, sinks */
    {2, 8, 4, 4, 200, 64, 0, -1, -1, AL0, 0, MB1, FLAT, {0, 5}, {0, 180}, 0, KEPT, BC0, 2},
    {2, 8, 4, 2, 300, 64, 0, -1, -1, AL0, 1, BBH, FLAT, {3, 0}, {0, 0}, 0, KEPT, BC0, 2},
    /* the per-head tree as a float mask (the bias), beside a mask of left pads and lengths */
    {2, 8, 4, 3, 200, 64, 0, -1, -1, AL0, 0, MB1, FLAT, {2, 0}, {0, 170}, 0, RUNS, BBH, 3},
};
#define NDECODE_MASK ((int)(sizeof decode_masks / sizeof decode_masks[0]))

/* Whether the draft tree of holes 2 and 3 (decode_mask) hides key j of a sequence of len keys
 * from row i of head h. */
static int tree_hides(const decode_mask* m, int64_t len, int64_t h, int64_t i, int64_t j) {
    int64_t x = i, a = j - (len - m->Sq); /* (the draft key, if a >= 0) */
    while (a >= 0 && x > a)
        x = (x - 1) / 2;
    return (a >= 0 && x != a) || (h % 2 == 1 && j == 40 + h);
}

attn_problem* attn_decode_mask_problem(int k, cf_dtype dt, int* routed) {
    if (k < 0 || k >= NDECODE_MASK) return NULL;
    const decode_mask* m = &decode_masks[k];
    attn_case c;
    attn_case_init(&c);
    c.dtype = dt;
    c.seed = 7500 + (uint64_t)k * 10 + (uint64_t)dt + tt_seed_base() * 1000003u;
    c.B = m->B, c.H = m->H, c.Hk = m->Hk, c.Sq = m->Sq, c.Sk = m->Sk, c.D = c.Dv = m->D;
    c.causal = m->causal, c.window_left = m->wl, c.window_right = m->wr, c.alibi = m->alibi;
    c.sinks = m->sinks, c.mask = m->mask, c.bias = m->bias, c.layout = (tt_layout)(k % 3);
    attn_problem* p = attn_problem_new(&c);
    if (!p) return NULL;
    *routed = m->routed;
    if (m->pad[0] < 0) return p; /* (the random mask) */
    for (int64_t n = 0; n < p->mask.numel; n++) {
        int64_t idx[4];
        tt_unravel(&p->mask, n, idx);
        const int64_t b = idx[0], h = idx[1], i = idx[2], j = idx[3];
        const int64_t pad = m->pad2 && b == 0 && h >= 4 ? m->pad2 : m->pad[b];
        const int64_t len = m->len[b] ? m->len[b] : m->Sk;
        const int stair = m->rows == DM_STAIR || (m->rows == DM_MIXED && b == 1);
        const int64_t end = stair ? len - m->Sq + 1 + i : len;
        const int hole = m->holes == 1   ? j / 16 % 3 == 1 || (j + i + h) % 5 == 2
                         : m->holes == 2 ? tree_hides(m, len, h, i, j)
                                         : 0;
        tt_set(&p->mask, idx, j >= pad && j < end && !hole ? (double)(1 + (n % 3 == 0)) : 0.0);
    }
    for (int64_t n = 0; m->holes == 3 && n < p->bias.numel; n++) {
        int64_t idx[4];
        tt_unravel(&p->bias, n, idx);
        const int64_t len = m->len[idx[0]] ? m->len[idx[0]] : m->Sk;
        tt_set(&p->bias, idx, tree_hides(m, len, idx[1], idx[2], idx[3]) ? -INFINITY : 0.0);
    }
    if (m->holes == 1 && m->Sq == 1 &&
        p->mask.dl.shape[1] == 1) /* (keys 2, 7, 17: no row sees them) */
        for (int64_t b = 0; b < m->B; b++)
            for (int64_t h = 0; h < m->Hk; h++) {
                const int64_t at[4] = {b, 17, h, 3}, at2[4] = {b, 7, h, 0}, at3[4] = {b, 2, h, 1};
                tt_set(&p->v, at, NAN);
                tt_set(&p->v, at2, INFINITY);
                tt_set(&p->k, at3, NAN);
            }
    attn_problem_refresh_inputs(p);
    return p;
}

int attn_grid_decode_rows(const char* backend, unsigned dtype_bits, int threads) {
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, backend));
    CHECK_OK(cflash_context_set_threads(ctx, threads));
    int n = 0;
    for (int di = 0; di < 3; di++)
        for (int k = 0; k < NDECODE; k++) {
            if (dtype_bits && !(dtype_bits & (1u << dtypes[di]))) continue;
            if (tt_test_level() < 0 && k % 3 != di) continue; /* emulated: each in one dtype */
            attn_case c;
            decode_case(k, dtypes[di], &c);
            char name[256];
            attn_case_str(&c, name, sizeof name);
            attn_problem* p = attn_problem_new(&c);
            CHECK_MSG(p != NULL, "%s: could not set up the problem", name);
            if (!p) continue;
            /* (the backward, where there is an lse, runs after the forward on its lse) */
            cflash_status s = attn_problem_run_fwd(ctx, p);
            CHECK_MSG(s == CFLASH_OK, "%s on %s: %s", name, backend, cflash_last_error());
            if (s == CFLASH_OK && !c.no_lse) s = attn_problem_run_bwd(ctx, p);
            CHECK_MSG(s == CFLASH_OK, "%s on %s (backward): %s", name, backend,
                      cflash_last_error());
            if (s == CFLASH_OK) check_fwd_bwd(p, backend, !c.no_lse);
            attn_problem_free(p);
            n++;
        }
    for (int di = 0; di < 3; di++)
        for (int k = 0; k < NDECODE_MASK; k++) {
            if (dtype_bits && !(dtype_bits & (1u << dtypes[di]))) continue;
            if (tt_test_level() < 0 && k % 3 != di) continue;
            int routed;
            attn_problem* p = attn_decode_mask_problem(k, dtypes[di], &routed);
            CHECK_MSG(p != NULL, "decode rows with a mask, case %d: could not set up", k);
            if (!p) continue;
            char name[256];
            attn_case_str(&p->c, name, sizeof name);
            cflash_status s = attn_problem_run_fwd(ctx, p);
            CHECK_MSG(s == CFLASH_OK, "%s (mask case %d) on %s: %s", name, k, backend,
                      cflash_last_error());
            if (s == CFLASH_OK) s = attn_problem_run_bwd(ctx, p);
            CHECK_MSG(s == CFLASH_OK, "%s (mask case %d) on %s (backward): %s", name, k, backend,
                      cflash_last_error());
            if (s == CFLASH_OK) check_fwd_bwd(p, backend, 1);
            attn_problem_free(p);
            n++;
        }
    printf("%s decode rows: %d cases\n", backend, n);
    cflash_context_free(ctx);
    return n;
}

void attn_set_qk(attn_problem* p, attn_qk_fn f) {
    tt_tensor* ts[2] = {&p->q, &p->k};
    for (int t = 0; t < 2; t++)
        for (int64_t n = 0; n < ts[t]->numel; n++) {
            int64_t idx[4];
            tt_unravel(ts[t], n, idx);
            const int64_t row = idx[ts[t]->dl.ndim - 3], d = idx[ts[t]->dl.ndim - 1];
            tt_set(ts[t], idx, f(t, row, d, n, tt_get(ts[t], idx)));
        }
}

static double far_qk(int is_k, int64_t row, int64_t d, int64_t n, double x) {
    (void)n;
    return d ? x : is_k || row % 3 == 1 ? 1e5 : 0.0;
}

void attn_fill_far_qk(attn_problem* p) {
    attn_set_qk(p, far_qk);
}

int attn_backend_runs_dtype(const char* backend, cf_dtype dt) {
    attn_case c;
    attn_case_init(&c);
    c.dtype = dt;
    attn_problem* p = attn_problem_new(&c);
    cflash_context* ctx = NULL;
    cflash_context_create(&ctx);
    cflash_context_set_backend(ctx, backend);
    const int ok = p && attn_problem_run_fwd(ctx, p) == CFLASH_OK;
    cflash_context_free(ctx);
    attn_problem_free(p);
    return ok;
}

int attn_backend_runs(const char* backend) {
    return attn_backend_runs_dtype(backend, CF_F32);
}
