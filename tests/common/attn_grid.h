/* The attention test grid over the oracle (tools/oracle/attn_oracle.h): the cases of every level
 * and attn_grid_run, which runs and checks them (one CHECK per case and direction). */
#ifndef CFLASH_TESTS_ATTN_GRID_H
#define CFLASH_TESTS_ATTN_GRID_H

#include "common/testutil.h"
#include "oracle/attn_oracle.h"

/* ---- The grid ---------------------------------------------------------------------------------
 */

/* level 0: the quick CI grid (fp32, fp16, bf16; every feature alone and combined; the odd sizes;
 * GQA/MQA; strided; varlen); level 1: the fuller cross of shapes x features x dtypes. */
int attn_grid_count(int level);
int attn_grid_case(int level, int i, attn_case* c); /* 0, or -1 when i is out of range */

typedef struct attn_grid_opts {
    int level;
    const char* backend; /* forced backend for every call; NULL = auto */
    int bwd;             /* also run and check the backward */
    unsigned dtypes;     /* bit (1u << cflash_dtype) per dtype to run; 0 = all */
    int threads;         /* context threads; 0 = default */
    /* 1: a CFLASH_ERR_UNSUPPORTED from the forced backend skips the case (counted, printed once per
     * distinct message) instead of failing. */
    int skip_unsupported;
    int max_cases; /* 0 = all */
    /* Optional: replace the host runs (e.g. copy to a device, call, copy results back into
     * p->out, p->lse, p->dq, p->dk, p->dv). NULL = attn_problem_run_fwd / _bwd. */
    cflash_status (*run_fwd)(cflash_context* ctx, attn_problem* p, void* user);
    cflash_status (*run_bwd)(cflash_context* ctx, attn_problem* p, void* user);
    void* user;
    int verbose; /* print every case with its errors */
    /* 1: skip the cases that use issue 13's features (sinks, bias, masks, block-sparse, chunk),
     * which the device hooks do not copy and the CUDA backends refuse (test_cuda_dispatch checks
     * the refusal). */
    int plain_only;
    /* > 0: skip the cases whose D or Dv is larger (the CUDA backends serve head dims up to 256;
     * test_cuda_dispatch checks the refusal of larger ones). */
    int64_t max_head_dim;
} attn_grid_opts;

/* Problems with at least 4 x threads (sequence, KV head) units, so the CPU backward takes its
 * one-pass path (dQ accumulated per unit) as well as the three-pass one the small grid cases use:
 * forward and backward on backend with `threads` threads, dtypes as in attn_grid_opts (0 = all),
 * every feature. One CHECK per step; returns the cases run. */
int attn_grid_one_pass(const char* backend, unsigned dtypes, int threads);

/* Decode rows (few query rows per KV head: x86 backends serve their forward on the KV-cache
 * kernels, src/cpu/kvcache_fast.h kv_attn_decodes): batch, varlen, paged with seqused_k, GQA and
 * MQA, every mask the KV-cache call takes, rows with no key, lse absent, a split long cache, a
 * bias (with dbias); decode rows with a feature that keeps them tiled (dropout, 32 rows a KV
 * head); and attn_decode_mask_problem's cases. Forward and backward (the
 * backward reads the forward's lse) on backend, dtypes as in attn_grid_opts. One CHECK per step;
 * returns the cases run. */
int attn_grid_decode_rows(const char* backend, unsigned dtypes, int threads);

/* How the x86 backends take a decode mask to the KV-cache kernels (src/cpu/kvcache_fast.h
 * kv_attn_decode): as the KV-cache call's left pads and lengths, or kept in the call (the items
 * add it to the scores and skip the blocks it hides from every row). */
enum { ATTN_MASK_RUNS = 1, ATTN_MASK_KEPT = 2 };

/* Decode rows with a boolean mask (attn_grid_decode_rows runs them too): case k's problem in
 * dtype dt, its mask written as left pads and lengths (*routed ATTN_MASK_RUNS) or as one the
 * KV-cache call cannot take (ATTN_MASK_KEPT: holes, whole 16-key blocks hidden, heads of other
 * pads, a row with no key, ...; with holes and one query row, NaNs and an infinity in K and V
 * rows no row sees). NULL when k is past the last case (or on no memory). */
attn_problem* attn_decode_mask_problem(int k, cf_dtype dt, int* routed);

/* Whether backend can run here: a one-element forward on it succeeds
 * (cflash_context_set_backend accepts any known name; a call tells). */
int attn_backend_runs(const char* backend);
/* The same in dtype dt (cpu-amx serves bf16 and fp16 only). */
int attn_backend_runs_dtype(const char* backend, cf_dtype dt);

/* Every element of q (is_k 0) and k (is_k 1) set to f(is_k, row, d, n, x): row its position along
 * the sequence dim (varlen: the packed row; paged k: the row in its page), d along the head dim,
 * n its flat index, x its value. Call attn_problem_refresh_inputs after. */
typedef double (*attn_qk_fn)(int is_k, int64_t row, int64_t d, int64_t n, double x);
void attn_set_qk(attn_problem* p, attn_qk_fn f);

/* Rows of far |lse| without a bias (the backward's CF_ATTN_LSE_FAR path): q's and k's first
 * element 1e5 (1e5 * 1e5 * scale ~ 2e9, ulp 256: the other terms are lost and every score of the
 * row rounds to one value, so that lse rounds to it and loses log n) on rows 1, 4, .. of each
 * sequence (0 on the others) and on every key. Call attn_problem_refresh_inputs after. */
void attn_fill_far_qk(attn_problem* p);

/* Runs the grid, recording one CHECK per case and direction. Returns the number of failures;
 * *ran / *skipped (may be NULL) get the cases run and skipped. */
int attn_grid_run(const attn_grid_opts* o, int* ran, int* skipped);
/* The grid on nb (<= ATTN_GRID_MAX_BACKENDS) backends at once: each case's problem is built and
 * its fp64 oracle computed once, then checked on every backend whose dtypes (as o->dtypes; 0 =
 * all) hold its dtype; o->backend and o->dtypes are not read. ran[k] and skipped[k] count backend
 * k's cases. Returns the failed checks. (The oracle, not the kernels, takes most of a grid's time:
 * one grid per backend computed it once per backend.) */
#define ATTN_GRID_MAX_BACKENDS 8
int attn_grid_run_many(const attn_grid_opts* o, int nb, const char* const* backends,
                       const unsigned* dtypes, int* ran, int* skipped);

#endif
