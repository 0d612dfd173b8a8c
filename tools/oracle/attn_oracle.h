/* The attention oracle: a case description (attn_case), a problem that owns its tensors and
 * cached fp64 results (attn_problem), a naive same-precision computation for the error rule of
 * DESIGN.md, and the run/check functions every attention test and `cflash check` use. Public and
 * experimental headers only; the test grid over it is tests/common/attn_grid.h.
 *
 * Typical use (any backend):
 *     attn_case c; attn_grid_case(0, i, &c);  // or fill one by hand
 *     attn_problem* p = attn_problem_new(&c);
 *     CHECK_OK(attn_problem_run_fwd(ctx, p));   // poisons out/lse, calls cflash_attn_*fwd
 *     char msg[512]; CHECK_MSG(attn_problem_check_fwd(p, msg, sizeof msg), "%s", msg);
 *     attn_problem_free(p);
 * For a device backend, copy the host tensors (p->q, ...; tt_dl_on) to the device, call
 * attn_problem_call_fwd with the device tensors, copy out/lse back into p->out / p->lse, then
 * check as above. attn_grid_run does all of this over a grid, with hooks for such copies. */
#ifndef CFLASH_ORACLE_ATTN_ORACLE_H
#define CFLASH_ORACLE_ATTN_ORACLE_H

#include "oracle/oracle_tensor.h"

#define ATTN_MAX_SEQS 8

typedef enum attn_alibi { ATTN_ALIBI_NONE = 0, ATTN_ALIBI_H = 1, ATTN_ALIBI_BH = 2 } attn_alibi;

/* Issue 13: a (B|1, H|1, ...) tensor's leading dims: absent, full, or broadcast over B and/or H. */
typedef enum attn_bcast {
    ATTN_BC_NONE = 0,
    ATTN_BC_BH = 1, /* (B, H, ...) */
    ATTN_BC_1H = 2, /* (1, H, ...) */
    ATTN_BC_B1 = 3, /* (B, 1, ...) */
    ATTN_BC_11 = 4  /* (1, 1, ...) */
} attn_bcast;

typedef struct attn_case {
    int64_t B, H, Hk; /* varlen: B = number of sequences */
    int64_t Sq, Sk;   /* batch mode only (varlen: from seqlens_*) */
    int64_t D, Dv;
    cflash_dtype dtype; /* CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16 */
    int causal;
    int64_t window_left, window_right; /* -1 = unbounded */
    float softcap;                     /* 0 = off */
    attn_alibi alibi;
    float dropout_p;
    float scale; /* 0 = default 1/sqrt(D) */
    int varlen;  /* 1: packed sequences with the lengths below */
    int32_t seqlens_q[ATTN_MAX_SEQS], seqlens_k[ATTN_MAX_SEQS];
    int varlen_pass_max; /* 1: pass max_seqlen_q/k explicitly; 0: pass 0 (library computes) */
    tt_layout layout;    /* of q, k, v, out, lse, dout, dq, dk, dv */
    int no_lse;          /* forward with lse = NULL (the backward still needs one) */
    uint64_t seed;       /* inputs and the dropout seed/offset derive from it */
    int64_t q_offset, k_offset; /* block positions (cflash_attn_params), 0 = none */
    /* -- A (issue 13) -- */
    int sinks;                /* 1: fp32 sinks [H] (random; one head -inf = no sink); the backward
                                 also writes dsinks */
    attn_bcast bias;          /* attn_bias (random, a few -inf entries and one all -inf row) */
    int bias_f32;             /* attn_bias and dbias in fp32 (else the dtype of q) */
    int dbias;                /* the backward also writes dbias (needs bias) */
    attn_bcast mask;          /* attn_mask, uint8 (random with masked rows and masked regions) */
    attn_bcast blocks;        /* block-sparse mask (block_kv_num / block_kv_indices) */
    int64_t block_q, block_k; /* its block sizes (0 = 128) */
    int block_pct;            /* percent of key blocks each query block lists (0 = 50) */
    int64_t chunk;            /* attention_chunk (0 = off) */
    /* Serving (issue 13): varlen K/V passed as pages, used lengths. */
    int64_t page; /* varlen: > 0 = k, v (and dk, dv) as shuffled pages of this many rows */
    int seqused;  /* bit 0: seqused_q, bit 1: seqused_k, drawn from the seed (<= the rows) */
    int no_cu_k;  /* paged with seqused_k: cu_seqlens_k passed as NULL */
} attn_case;

/* B = H = Hk = Sq = Sk = D = Dv = 1, fp32, no masks, windows -1, dense, seed 1. */
void attn_case_init(attn_case* c);
/* One line, e.g. "fp16 B2 H6/2 Sq97 Sk128 D64/64 causal win(8,4) softcap1.5 alibi[H] drop0.17
 * padded seed7". */
void attn_case_str(const attn_case* c, char* buf, size_t n);

/* Error components, in this order everywhere. */
enum { ATTN_OUT = 0, ATTN_LSE, ATTN_DQ, ATTN_DK, ATTN_DV, ATTN_DSINK, ATTN_DBIAS, ATTN_NCOMP };
/* "out", "lse", "dq", "dk", "dv", "dsink", "dbias" */
extern const char* const attn_comp_names[ATTN_NCOMP];

typedef struct attn_errors {
    int present[ATTN_NCOMP];    /* component checked */
    double err[ATTN_NCOMP];     /* max |kernel - fp64| (inf when -inf/finite disagree) */
    double naive[ATTN_NCOMP];   /* max |naive same-precision - fp64| */
    double bound[ATTN_NCOMP];   /* factor * naive + atol */
    int64_t nan[ATTN_NCOMP];    /* poisoned (unwritten) or NaN elements */
    int padding_ok[ATTN_NCOMP]; /* bytes outside the view untouched */
    int64_t stray[ATTN_NCOMP];  /* paged dk / dv: non-zero elements of rows no key uses */
    int inputs_ok;              /* q, k, v, dout, alibi, cu_seqlens unchanged by the call */
    int pass;
} attn_errors;

/* Host tensors for one call (device tests substitute their own). */
typedef struct attn_dl {
    const DLTensor *q, *k, *v, *dout, *alibi, *cu_q, *cu_k;
    DLTensor *out, *lse, *dq, *dk, *dv;
    const DLTensor *block_table, *seqused_q, *seqused_k; /* serving cases (host memory) */
} attn_dl;
/* (The issue 13 tensors -- sinks, bias, mask, block-sparse, dsinks, dbias -- are always the host
 * ones of the problem, through p->params: device tests skip such cases, see attn_grid_opts.) */

typedef struct attn_problem {
    attn_case c;
    cflash_attn_params params;   /* alibi_slopes points at the host alibi tensor (or NULL) */
    int64_t B, total_q, total_k; /* total rows of q / k (batch mode: B*Sq, B*Sk) */
    int64_t max_q, max_k;        /* longest sequences */
    int64_t *q0, *qn, *k0, *kn;  /* [B]: first packed row and length (the used one, with
                                    seqused) of each sequence */
    int64_t *qrows, *krows;      /* [B]: rows each sequence has in q / k (>= qn, kn) */
    float scale;                 /* the resolved softmax scale, as the library computes it */

    /* Host tensors. Inputs are random; outputs are poisoned before every run. */
    tt_tensor q, k, v, dout; /* (B,Sq,H,D) (B,Sk,Hk,D) (B,Sk,Hk,Dv) (B,Sq,H,Dv); varlen 3-D */
    tt_tensor out, lse;      /* (B,Sq,H,Dv), fp32 (B,H,Sq) or varlen (H,total_q) */
    tt_tensor dq, dk, dv;
    tt_tensor alibi;      /* fp32 [H] or [B,H]; base NULL when off */
    tt_tensor cu_q, cu_k; /* int32 [B+1]; varlen only */
    /* Issue 13 (base NULL when off): sinks / dsinks fp32 [H]; bias / dbias / mask (nbb, nbh, Sq,
     * Sk); block-sparse num (nsb, nsh, nqb) and idx (nsb, nsh, nqb, nkb + 2). */
    tt_tensor sinks, dsinks, bias, dbias, mask, bs_num, bs_idx;
    int64_t nbb, nbh, nmb, nmh, nsb, nsh; /* leading dims of bias, mask, block-sparse (B|1, H|1) */
    /* Serving: seqused int32 [B] (base NULL when off); paged: k, v, dk, dv as pages
     * (num_pages, page, Hk, d) with the block table; unused page rows hold NaN (never read).
     * kloc[r] = page * page + row of packed key row r (-1: not in a page). */
    tt_tensor su_q, su_k, bt, kp, vp, dkp, dvp;
    int64_t* kloc;
    uint64_t in_hash; /* of all inputs, taken at creation */

    /* Inputs as fp64, dense in packed-row layout: X[(row*heads + h)*dim + d]. */
    double *Q, *K, *V, *dO;
    /* fp64 oracle and naive results (same layout; lse as [row*H + h]), computed on first use. */
    double *ref_out, *ref_lse, *ref_dq, *ref_dk, *ref_dv;
    double *nv_out, *nv_lse, *nv_dq, *nv_dk, *nv_dv;
    /* Issue 13: sinks [H] and bias [(b * nbh + h) * Sq * Sk + i * Sk + j] as fp64 (NULL when
     * off; the oracle reads these, so tests may perturb them), and their gradients. */
    double *SINK, *BIAS;
    double *ref_dsink, *ref_dbias, *nv_dbias; /* (the naive dsink: per backend, from its out) */
    int have_fwd, have_bwd;
    int fwd_ran;   /* p->out/p->lse hold a forward's result */
    int inputs_ok; /* last run left the inputs unchanged */
} attn_problem;

/* Builds a problem with fresh random inputs. NULL (message on stderr) on a bad case or no memory.
 */
attn_problem* attn_problem_new(const attn_case* c);
void attn_problem_free(attn_problem* p); /* accepts NULL */
/* After a test edits p->q, p->k, p->v, p->dout or p->alibi by hand: re-reads the fp64 copies,
 * re-hashes the inputs and drops the cached oracle results. */
void attn_problem_refresh_inputs(attn_problem* p);

/* The host tensors of p, for attn_problem_call_*. */
void attn_problem_host_dl(attn_problem* p, attn_dl* t);
/* Call the public API (cflash_attn_fwd or cflash_attn_varlen_fwd per the case) with the tensors of
 * t (NULL = the host tensors) and p's params (alibi from t). No poisoning, no checks. */
cflash_status attn_problem_call_fwd(cflash_context* ctx, attn_problem* p, const attn_dl* t);
/* Backward: t->out and t->lse are the forward's results (inputs here). */
cflash_status attn_problem_call_bwd(cflash_context* ctx, attn_problem* p, const attn_dl* t);

/* Host runs: poison the outputs, call, record whether the inputs stayed unchanged.
 * run_bwd runs the forward first when it has not run (the backward uses its out and lse). */
cflash_status attn_problem_run_fwd(cflash_context* ctx, attn_problem* p);
cflash_status attn_problem_run_bwd(cflash_context* ctx, attn_problem* p);

/* Errors of the results now in p->out/p->lse (and dq/dk/dv) against the fp64 oracle, with the
 * bounds of the error rule. Return 1 on pass. msg (may be NULL) gets one line: the case, then per
 * component "out err 1.2e-3 <= 2.0e-3", and what failed. */
int attn_problem_errors_fwd(attn_problem* p, attn_errors* e);
int attn_problem_errors_bwd(attn_problem* p, attn_errors* e);
int attn_problem_check_fwd(attn_problem* p, char* msg, size_t len);
int attn_problem_check_bwd(attn_problem* p, char* msg, size_t len);
void attn_errors_str(const attn_problem* p, const attn_errors* e, char* msg, size_t len);

/* The backend that would serve p's forward / backward ("-> NAME" of explain mode on ctx; ctx NULL:
 * a default context), into name ("?" if none is named). t as for the calls (NULL: p's host
 * tensors). Returns the status the call would return. */
cflash_status attn_problem_explain(cflash_context* ctx, attn_problem* p, const attn_dl* t, int bwd,
                                   char* name, size_t len);

/* ---- The fp64 oracle and the naive computation (exposed for gradcheck and the tool) ------- */

/* fp64 forward of p's masks and params on inputs Q, K, V (packed-row layout):
 * out [total_q*H*Dv], lse [total_q*H] (-inf for rows that see no key). */
void attn_oracle_fwd(const attn_problem* p, const double* Q, const double* K, const double* V,
                     double* out, double* lse);
/* fp64 backward of sum(out * dO): dQ, dK (summed over a group's query heads), dV; with sinks
 * and bias, also p->ref_dsink [H] and p->ref_dbias (the layout of p->BIAS). */
void attn_oracle_bwd(const attn_problem* p, const double* Q, const double* K, const double* V,
                     const double* dO, double* dQ, double* dK, double* dV);
/* The naive same-precision computation: scores materialised and rounded to the dtype, P rounded
 * to the dtype (the backward forms P from each row's max and sum, as the forward: no lse), fp32
 * accumulation, results rounded to the dtype (lse fp32). */
void attn_naive_fwd(const attn_problem* p, double* out, double* lse);
void attn_naive_bwd(const attn_problem* p, const double* out, double* dQ, double* dK, double* dV);
/* Ensures p->ref_* / p->nv_* hold the forward (and with bwd, the backward) results. */
void attn_problem_compute_oracle(attn_problem* p, int bwd);

/* Error-rule constants: bound = factor * naive + atol, atol = k * unit_roundoff * max(1, max|ref|)
 * with k = 1 for fp16/bf16; for fp32 k = 8 forward (accumulation order) and 32 for gradients.
 * factor 2 forward, 3 gradients. Why 32: where a row sees one key the true dq/dk are exactly 0
 * and so is the naive error, but a FlashAttention backward computes D = rowsum(dO * out) and
 * dP = dO . v in different orders, leaving ~1e-6 of fp32 cancellation (measured up to 8.8e-7 with
 * D = 256, GQA 6/1, window (0, 0)). */
double attn_atol(cflash_dtype d, double maxref, int grad);

#endif
