/* CPU attention: the tiled online-softmax driver (src/cpu/attn_tiled.c, attn_tiled_bwd.c) shared by
 * the cpu-generic, cpu-avx2, cpu-avx512, cpu-amx and cpu-neon backends, and the table of
 * microkernels each backend supplies. The driver does blocking, masks, dropout, threading; the
 * table does the math.
 */
#ifndef CFLASH_CPU_ATTN_CPU_H
#define CFLASH_CPU_ATTN_CPU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/attn_call.h"

/* The GEMMs' sum over K is two-level: chunks of CF_ATTN_GEMM_KC steps, each summed from zero, then
 * added to C in order, so the rounding error grows with K / KC + KC rather than with K (with one
 * sequential sum the fp32 backward's dK at D = 256 had 1.8x, at worst 6x, the error of a
 * NumPy-summed naive backward; tests/test_attn_kernels.c checks every table's GEMMs). The forward
 * and backward recompute scores with the same chunks, so they round them alike. */
#define CF_ATTN_GEMM_KC 64

/* fp32 rows that a GEMM reads as its B operand (one row per step of the sum) are copied
 * contiguous when the GEMM has at least this many rows of A: it reads B once per 6 rows of A, and
 * rows read in place a multiple of 4 KB apart (H * D floats: 8 KB at H16 D128) share their L1
 * sets, so they evict one another between those reads. Copied, B1 H16 D128 fp32 ran 1.17-1.18x
 * forward (V) and 1.22x backward (Q, dO, K) on a Xeon 6/207 (docs/PERF.md); with fewer rows of A
 * the copy did not pay (Sq 16: the backward 0.95x with every block copied). */
#define CF_ATTN_PACK_ROWS 64

/* The row stride of a buffer of n-element rows (fp32 or 32-bit pairs) that a GEMM reads row after
 * row: n rounded up to 16, and 16 more where that is a multiple of 64 (256 bytes). Rows 512 bytes
 * apart (128 columns) fall in 8 of L1's 64 sets, so an operand of 128 such rows evicts itself
 * between the passes that reread it: one thread's gemm_f32 of 128 x 128 x 128 ran S^T = K Q^T
 * 82.3 -> 87.2 GFLOP/s and O += P V 77.5 -> 86.6 with 144 (Zen 3, docs/PERF.md). */
static inline int64_t cf_attn_ld(int64_t n) {
    const int64_t l = (n + 15) / 16 * 16;
    return l % 64 == 0 ? l + 16 : l;
}

/* A GEMM on 16-bit pairs as cf_attn_kernels.gemm_bf16 (below) whose B operand is prepared once
 * for several A: prep_b brings B (P pair rows of N, VNNI, ldb apart) to pb (b_bytes(N, P) bytes),
 * then run computes C (M x N, ldc) (+)= A (M x P pairs, A(m, p) at A[m * rsa + p * csa]) times
 * that B, with scratch (scratch_bytes(M, N, P) bytes). Buffers 64-byte aligned; the sizes grow
 * with each argument. */
typedef struct cf_attn_pairs_gemm {
    size_t (*b_bytes)(int64_t N, int64_t P);
    void (*prep_b)(int64_t N, int64_t P, const uint32_t* B, int64_t ldb, void* pb);
    size_t (*scratch_bytes)(int64_t M, int64_t N, int64_t P);
    void (*run)(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,
                const void* pb, float* C, int64_t ldc, int acc, void* scratch);
} cf_attn_pairs_gemm;

/* The microkernels of one ISA. Matrices are fp32 unless stated; ld* are in elements. */
typedef struct cf_attn_kernels {
    const char* name; /* the backend name, for messages */
    /* C (M x N, ldc) = (acc ? C : 0) + A (M x K) * B (K x N, row-major, ldb), summed over K in
     * chunks of CF_ATTN_GEMM_KC. A(m, k) = A[m * rsa + k * csa], so A may be read transposed. */
    void (*gemm_f32)(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa,
                     const float* B, int64_t ldb, float* C, int64_t ldc, int acc);
    /* bf16 pairs (NULL when the ISA has no bf16 dot product): as gemm_f32 with K counted in pairs;
     * A(m, p) = A[m * rsa + p * csa] is a pair (lo = element 2p, hi = 2p + 1) of bf16, and
     * B[p * ldb + n] the pair (B(2p, n), B(2p + 1, n)) (VNNI layout). fp32 accumulation. */
    void (*gemm_bf16)(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,
                      const uint32_t* B, int64_t ldb, float* C, int64_t ldc, int acc);
    /* fp16 pairs (NULL when the ISA has no fp16 product with fp32 accumulation): as gemm_bf16
     * with fp16 pairs. Used by the forward only: there P in [0, 1] is the one operand rounded to
     * fp16, where the backward's dS could leave fp16's range. */
    void (*gemm_f16)(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,
                     const uint32_t* B, int64_t ldb, float* C, int64_t ldc, int acc);
    /* x[i] *= s; mx[i] = max(mx[i], x[i]) for i < n (a NaN x may be skipped by the max). */
    void (*scale_max_cols)(float* x, int64_t n, float s, float* mx);
    /* Soft-capping: x[i] = cap * tanh(x[i] * s / cap), and th[i] = that tanh when th != NULL
     * (the backward's derivative); tanh within a few ulp (NaN stays NaN). The vector kernels
     * take x[i] * (s / cap): a rounding apart, the forward and backward of one table alike. */
    void (*softcap_cols)(float* x, int64_t n, float s, float cap, float* th);
    /* x[i] = exp(x[i] - m[i]) (0 for x = -inf, NaN for NaN); sum[i] += x[i] when sum != NULL.
     * Computed as exp2((x - m) * log2 e), the difference first: the forward's running max and
     * LSE are natural-log values of the very scores the backward recomputes, so for any score
     * magnitude exp(s - lse) <= 1 there (a conversion to log2 units in between would round
     * differently on the two sides, by far more than 1 once |s| is large). */
    void (*exp_cols)(float* x, int64_t n, const float* m, float* sum);
    /* x[i] = exp(x[i] - b) (0 for x = -inf, NaN for NaN), as exp_cols. */
    void (*exp_row)(float* x, int64_t n, float b);
    /* ds[i] = p[i] * (dp[i] - dl) * sc. */
    void (*ds_row)(float* ds, const float* p, const float* dp, int64_t n, float dl, float sc);
    /* ds[i] = p[i] * (dp[i] - dl[i]) * sc. */
    void (*ds_cols)(float* ds, const float* p, const float* dp, int64_t n, const float* dl,
                    float sc);
    /* dst[i] = bf16(lo[i]) | bf16(hi[i]) << 16 (round to nearest even); hi NULL = 0. */
    void (*pack_pairs_f32)(uint32_t* dst, const float* lo, const float* hi, int64_t n);
    /* The same into fp16 pairs (with gemm_f16). */
    void (*pack_pairs_f16)(uint32_t* dst, const float* lo, const float* hi, int64_t n);
    /* dst[i] = lo[i] | hi[i] << 16 (bf16 bits; hi NULL = 0): two rows into VNNI pairs. */
    void (*interleave_u16)(uint32_t* dst, const uint16_t* lo, const uint16_t* hi, int64_t n);
    /* An fp32 bias added to S^T (keys by rows) read along its own rows: for r < nr, j < nc,
     * s[j * cs + r] = y[r * ys + j] == -inf ? -inf : s[j * cs + r] + y[r * ys + j] (a -inf bias
     * masks its pair, NaN score included); nothing else of s is written. pf != 0: the same
     * pieces pf elements on (the next block's, in bounds) are prefetched as they are read. */
    void (*bias_t)(float* s, int64_t cs, const float* y, int64_t ys, int64_t nr, int64_t nc,
                   int64_t pf);
    /* dtype conversion of n contiguous elements. */
    void (*to_f32)(float* dst, const void* src, cf_dtype dt, int64_t n);
    void (*from_f32)(void* dst, const float* src, cf_dtype dt, int64_t n);
    /* Per-thread setup/teardown around the tile loop (AMX tile configuration); may be NULL. */
    void (*thread_begin)(void);
    void (*thread_end)(void);
} cf_attn_kernels;

/* The portable kernels (attn_generic.c); ISA tables take the pieces they do not improve. */
extern const cf_attn_kernels cf_attn_kernels_generic;
/* Each SIMD backend's table for this CPU (the generic table on another architecture); call its
 * kernels only where the backend's cf_impl says it is available. */
const cf_attn_kernels* cf_attn_kernels_avx2(void);
const cf_attn_kernels* cf_attn_kernels_avx512(void);
const cf_attn_kernels* cf_attn_kernels_neon(void);
const cf_attn_kernels* cf_attn_kernels_sve(void);
void cf_attn_generic_to_f32(float* dst, const void* src, cf_dtype dt, int64_t n);
void cf_attn_generic_from_f32(void* dst, const float* src, cf_dtype dt, int64_t n);
void cf_attn_generic_bias_t(float* s, int64_t cs, const float* y, int64_t ys, int64_t nr,
                            int64_t nc, int64_t pf);
void cf_attn_generic_interleave_u16(uint32_t* dst, const uint16_t* lo, const uint16_t* hi,
                                    int64_t n);

/* The drivers. Return CFLASH_ERR_OUT_OF_MEMORY (nothing written) when the per-thread workspace
 * cannot be allocated. */
cflash_status cf_attn_cpu_fwd(const cf_attn_call* c, const cf_attn_kernels* k);
cflash_status cf_attn_cpu_bwd(const cf_attn_call* c, const cf_attn_kernels* k);

/* Bytes of per-thread workspace the forward / backward use for this call (bounded by the head
 * dims and the group size, independent of the sequence lengths). */
size_t cf_attn_cpu_fwd_workspace(const cf_attn_call* c, const cf_attn_kernels* k);
size_t cf_attn_cpu_bwd_workspace(const cf_attn_call* c, const cf_attn_kernels* k);

/* A unit of parallel work: query rows [i0, i1) of sequence b for the heads of KV head hk (forward,
 * dq), or keys [i0, i1) of (b, hk) (dk/dv). cost orders tiles heaviest first. */
typedef struct attn_tile {
    int64_t b, hk, i0, i1;
    int64_t cost, idx;
} attn_tile;
/* The forward's tile loop, shared by backends with a tile function of their own (cpu-amx): tiles
 * of n query rows per head over the heads of a GQA group (grouped per (sequence, KV head),
 * heaviest first), spread over c->threads with `bytes` of workspace each (64-byte aligned);
 * k->thread_begin/end run around each thread's tiles. */
typedef void (*cf_attn_fwd_tile_fn)(const cf_attn_call* c, const cf_attn_kernels* k,
                                    const void* geom, const attn_tile* t, char* ws);
cflash_status cf_attn_cpu_fwd_run(const cf_attn_call* c, const cf_attn_kernels* k, int64_t n,
                                  size_t bytes, cf_attn_fwd_tile_fn tile, const void* geom);
/* Query rows per head of a tile of about `rows` rows over the group (>= 1, <= Sq). */
int64_t cf_attn_cpu_tile_rows(const cf_attn_call* c, int64_t rows);
/* Query tiles of n rows per (sequence, KV head), heaviest first; NULL when out of memory. */
attn_tile* cf_attn_cpu_q_tiles(const cf_attn_call* c, int64_t n, int64_t* count);
/* Sorts tiles heaviest first (ties by idx). */
void cf_attn_cpu_sort_tiles(attn_tile* t, int64_t n);

/* Key-side rows (k, v, dk, dv) of sequence b (first row k0, from cf_attn_seq), paged or not. */
static inline char* cf_attn_cpu_key_ptr(const cf_attn_call* c, const cf_view* v, int64_t b,
                                        int64_t k0, int64_t j, int64_t h) {
    return (char*)v->data + cf_attn_kv_off(c, v, b, k0, j, h) * (int64_t)cf_dtype_size(v->dtype);
}
/* Rows [j0, j0 + n) of key-side view v, head h, d elements each, as a first row and a row stride
 * *rs (elements): in place when they are equally spaced (not paged, or within one page), else
 * copied into buf (n * d elements of v's dtype; *rs = d). */
static inline const char* cf_attn_cpu_key_rows(const cf_attn_call* c, const cf_view* v, int64_t b,
                                               int64_t k0, int64_t j0, int64_t n, int64_t h,
                                               int64_t d, char* buf, int64_t* rs) {
    if (!c->block_table || n < 1 || j0 / c->page_size == (j0 + n - 1) / c->page_size) {
        *rs = v->stride[1];
        return cf_attn_cpu_key_ptr(c, v, b, k0, j0, h);
    }
    const size_t bytes = (size_t)d * cf_dtype_size(v->dtype);
    for (int64_t i = 0; i < n; i++)
        memcpy(buf + (size_t)i * bytes, cf_attn_cpu_key_ptr(c, v, b, k0, j0 + i, h), bytes);
    *rs = d;
    return buf;
}
/* Whether any of n rows of d elements of dtype dt (row starts rs bytes apart from p) holds a NaN
 * or an infinity. The drivers check the rows of a partly masked block with it before a product
 * whose zero weights would carry them into rows that cannot see them. */
int cf_attn_cpu_rows_nonfinite(const char* p, int64_t rs, int64_t n, int64_t d, cf_dtype dt);
/* The same over the keys of block [j0, j0 + nb) (row j0 at p) that some rows of a tile cannot see:
 * those before the last row's lo and those from the first row's hi on (lo and hi do not decrease
 * over the rows); the keys every row sees cannot carry anything across a mask. */
int cf_attn_cpu_hidden_nonfinite(const char* p, int64_t rs, int64_t j0, int64_t nb, int64_t lo_last,
                                 int64_t hi_first, int64_t d, cf_dtype dt);

/* ---- The backward's pieces, shared with backends that bring their own tile functions ---- */

/* The backward's driver (passes 0-2 of attn_tiled_bwd.c: dl = rowsum(dO * O), then dK/dV per key
 * block and dQ one pass or three, threads and workspace) over a backend's tile functions. */
typedef struct cf_attn_bwd_engine {
    int64_t q_rows; /* dq tiles: query rows per head (three-pass mode) */
    int64_t bk;     /* keys per dkdv block */
    size_t bytes;   /* per-thread workspace of the tile functions */
    /* dK, dV of keys [t->i0, t->i1) of (t->b, t->hk), written out; with dqacc (fp32 [G][sq][D] of
     * the sequence, one pass) also dQ += dS K there. dl as cf_attn_dl reads it. */
    void (*dkdv)(const cf_attn_call* c, const cf_attn_kernels* k, const void* geom,
                 const attn_tile* t, char* ws, const float* dl, float* dqacc);
    /* dQ of query tile t (three-pass mode), written out. */
    void (*dq)(const cf_attn_call* c, const cf_attn_kernels* k, const void* geom,
               const attn_tile* t, char* ws, const float* dl);
    const void* geom;
    /* Issue 13: rows [i0, i0 + bq) of dbias element (bb, hh), written out (NULL: the engine does
     * not take attn_bias, so its backend routes such calls elsewhere); blocks of dbias_rows. */
    void (*dbias)(const cf_attn_call* c, const cf_attn_kernels* k, const void* geom, int64_t bb,
                  int64_t hh, int64_t i0, int64_t bq, char* ws, const float* dl);
    int64_t dbias_rows; /* (and the rows of far's blocks) */
    /* r (c->lse_fix) of the rows of [i0, i0 + n) of (b, h) whose |lse| is far, written to fix as
     * cf_attn_dl reads it (run before pass 0, blocks of dbias_rows; NULL: none computed, the tile
     * functions see c->lse_fix NULL). */
    void (*far)(const cf_attn_call* c, const cf_attn_kernels* k, const void* geom, int64_t b,
                int64_t h, int64_t i0, int64_t n, char* ws, float* fix);
    const void* dbias_geom; /* the dbias hook's geometry (NULL: geom) */
} cf_attn_bwd_engine;
cflash_status cf_attn_cpu_bwd_run(const cf_attn_call* c, const cf_attn_kernels* k,
                                  const cf_attn_bwd_engine* e);
/* A far hook's last step for rows [qi0, qi0 + n) of (b, h) (query rows in the views): the sink
 * folded into each row's max m[r] and sum l[r] of exp(s - m) over its keys, then r of each row of
 * far |lse| (cf_attn_lse_residue) into fix as cf_attn_dl reads it. */
void cf_attn_far_store(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi0, int64_t n,
                       float* m, double* l, float* fix);

/* Row of (b, query qi) in the dl buffer of one head. */
static inline int64_t cf_attn_dl_row(const cf_attn_call* c, int64_t b, int64_t qi) {
    return c->varlen ? qi : b * c->Sq + qi;
}
/* Index of (b, h, query qi) in a per-row buffer laid out as dl (rows of head 0, then head 1..). */
static inline int64_t cf_attn_dl_index(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi) {
    return h * (c->varlen ? c->total_q : c->B * c->Sq) + cf_attn_dl_row(c, b, qi);
}
/* dl of (b, h, query qi): rowsum(dO * O) as pass 0 left it. */
static inline float cf_attn_dl(const cf_attn_call* c, const float* dl, int64_t b, int64_t h,
                               int64_t qi) {
    return dl[cf_attn_dl_index(c, b, h, qi)];
}
/* The forward's lse of (b, h, qi) (natural-log units, as the scores: see exp_cols). */
static inline float cf_attn_lse_at(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi) {
    return ((const float*)
                c->lse.data)[b * c->lse.stride[0] + h * c->lse.stride[1] + qi * c->lse.stride[2]];
}
/* r of row (b, h, qi) (c->lse_fix: P = exp((s - lse) - r) where |lse| is far); 0: none. */
static inline float cf_attn_lse_fix(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi) {
    return c->lse_fix ? cf_attn_dl(c, c->lse_fix, b, h, qi) : 0.0f;
}
/* The subtrahend of exp(s - m) for row (b, h, qi): its lse; +inf for a row that saw no key (its
 * P is 0); r for a row whose |lse| is far, its scores shifted by cf_attn_lse_shift first. */
static inline float cf_attn_lse_sub(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi) {
    const float lse = cf_attn_lse_at(c, b, h, qi), r = cf_attn_lse_fix(c, b, h, qi);
    return r != 0.0f ? r : lse == -INFINITY ? INFINITY : lse;
}
/* What the scores of row (b, h, qi) are shifted by before exp(s - cf_attn_lse_sub): its lse where
 * |lse| is far (the score map's shift), else 0. */
static inline float cf_attn_lse_shift(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi) {
    return cf_attn_lse_fix(c, b, h, qi) != 0.0f ? cf_attn_lse_at(c, b, h, qi) : 0.0f;
}
/* First query row i in [0, sq) with hi(i) > j0 and one past the last with lo(i) < j1: the rows
 * that see some key of [j0, j1) lie in [*a, *z) (lo and hi are non-decreasing in i). */
void cf_attn_rows_seeing(const cf_attn_call* c, int64_t sq, int64_t sk, int64_t j0, int64_t j1,
                         int64_t* a, int64_t* z);

/* Element (row ri, col ci) of a block of scores is query i[ri], key j0 + ci, at
 * s[ri * rs + ci * cs]. */
typedef struct cf_attn_score_map {
    int64_t nr, nc, rs, cs;
    const int64_t* i;       /* query position per row */
    const float* slope;     /* ALiBi slope per row */
    int64_t j0;             /* key of column 0 */
    const int64_t *lo, *hi; /* visible keys per row */
    /* Issue 13 (with attn_bias, attn_mask or block-sparse lists): the sequence, the head per row
     * and the block-sparse key mask per row (NULL = none). */
    int64_t b;
    const int64_t* h;
    const uint8_t* const* kv;
    /* The block the caller visits next, pdi rows and pdj keys on (0, 0: none known): its bias is
     * prefetched while this one's is added. */
    int64_t pdi, pdj;
    /* Subtracted from each row's scores last (NULL: none): cf_attn_lse_shift per row. */
    const float* shift;
} cf_attn_score_map;
/* Raw q.k scores to the scores exp(s - lse) takes, in place: scaled, soft-capped, ALiBi-biased
 * (natural-log units, rounded as the forward rounds them: see exp_cols), -inf where masked. With
 * issue 13's bias or masks (cf_attn_has_extra) mp's b, h and kv must be set: the bias is added
 * and, where open is not CF_REGION_OPEN (the block's state under them), the masks applied here
 * too. y, when non-NULL, receives tanh(x / softcap) for the softcap derivative (0 where
 * masked). */
void cf_attn_scores(const cf_attn_call* c, const cf_attn_kernels* kk, const cf_attn_score_map* mp,
                    float* s, float* y, int64_t sq, int64_t sk, int open);
/* NaN semantics in the backward (a masked pair never affects a gradient): a partly masked block
 * whose rows hold a NaN or infinity is summed pair by pair, since the products' zero weights would
 * carry it to pairs that cannot see each other. Whether query rows [qi0, qi0 + n) of head h hold
 * one in their lse (+inf or NaN; -inf is a row without keys) or rowsum(dO * O) (dlr, n values):
 * with the forward's lse and out this covers q, dout and out without reading them. */
int cf_attn_bwd_query_rows_bad(const cf_attn_call* c, int64_t b, int64_t h, int64_t qi0, int64_t n,
                               const float* dlr);
/* Whether keys [j0, j0 + n) of sequence b (first row k0, paged or not), KV head hk, hold one in
 * k or v; with hidden, only those some rows cannot see: before lo_last or from hi_first on,
 * relative to j0 (cf_attn_cpu_hidden_nonfinite). Issue 13's masks hide pairs anywhere: callers
 * pass hidden 0 with them. */
int cf_attn_bwd_key_rows_bad(const cf_attn_call* c, int64_t b, int64_t hk, int64_t k0, int64_t j0,
                             int64_t n, int hidden, int64_t lo_last, int64_t hi_first);
/* The gradients of the visible pairs of query rows [i0, i0 + nq) of head h (rowsums dlr[i - i0])
 * against keys [j0, j0 + nb), pair by pair as cpu-ref computes them. Accumulates dk, dv (block row
 * j - j0 at dk + (j - j0) * ldk, dv + (j - j0) * ldv; NULL = skip) and dq (row i - i0 at
 * dq + (i - i0) * ldq; NULL = skip). */
void cf_attn_bwd_exact_pairs(const cf_attn_call* c, int64_t b, int64_t h, int64_t i0, int64_t nq,
                             const float* dlr, int64_t j0, int64_t nb, float* dk, int64_t ldk,
                             float* dv, int64_t ldv, float* dq, int64_t ldq);
/* Zeroes dropped entries of a block and scales kept ones by ks; row ri belongs to head hh[ri]. */
void cf_attn_dropout_apply(const cf_attn_call* c, float* x, const cf_attn_score_map* mp,
                           const int64_t* hh, int64_t b, float ks);

/* Shared limits, checked by every CPU backend's supports(). */
int cf_attn_cpu_supports(const cf_attn_call* c, const cf_attn_kernels* k, char* reason, size_t len);

/* ---- Issue 13 (A): per-pair masks and bias (src/cpu/attn_extra.c) ---- */

/* How much of a region of pairs (query rows x keys) issue 13's masks leave visible: none (the
 * drivers skip it, no per-element work), every pair (as a block without masks: no masking pass,
 * no NaN guard beyond the key ranges'), or some. */
enum { CF_REGION_CLOSED = 0, CF_REGION_PART = 1, CF_REGION_OPEN = 2 };
/* The state of a region made of parts of states a and b (a < 0: b, for the first part). */
static inline int cf_attn_region_join(int a, int b) {
    return a < 0 || a == b ? b : CF_REGION_PART;
}
/* Block-sparse key masks: kv[q * nb + jj] = 1 when key j0 + jj of sequence b lies in a key block
 * listed for query block qb0 + q of head h (q < nq). Returns the state (CF_REGION_*) of the
 * entries: closed when none is 1. */
int cf_attn_cpu_bs_keys(const cf_attn_call* c, int64_t b, int64_t h, int64_t qb0, int64_t nq,
                        int64_t j0, int64_t nb, uint8_t* kv);
/* attn_mask summarised once per call, so that finding the state of a block reads a byte per row
 * and CF_ATTN_MAP_KEYS keys instead of the mask: st[((b * nh + h) * sq + i) * nc + k] is the
 * state of keys [k * CF_ATTN_MAP_KEYS, +CF_ATTN_MAP_KEYS) of row i of (b, h) (nb, nh: the mask's
 * dims, 1 where it broadcasts). The same for attn_bias (a value of -inf hides its pair) in bst
 * (bnb, bnh its dims) when it broadcasts over heads or batches, which would have it read once per
 * head or batch to find the blocks' states (a bias of each (b, h) is read as often without one). */
#define CF_ATTN_MAP_KEYS 64
typedef struct cf_attn_mask_map {
    int64_t nb, nh, sq, nc;
    uint8_t* st; /* NULL: no attn_mask, or too big to map */
    int64_t bnb, bnh;
    uint8_t* bst; /* NULL: no broadcast attn_bias, or too big to map */
} cf_attn_mask_map;
/* The map of a call with attn_mask or a broadcast attn_bias, built on `threads` threads (one pass
 * over each); NULL without either, or when out of memory (the states are then read from them). */
cf_attn_mask_map* cf_attn_cpu_mask_map(const cf_attn_call* c, int threads);
void cf_attn_cpu_mask_map_free(cf_attn_mask_map* mp); /* NULL is fine */

/* For an engine whose tile functions do not sum dS into dbias (cpu-amx): the tiled backward's
 * own dbias tasks (each row's own statistics; k's bf16 pairs GEMM for bf16 where it has one,
 * gemm_f16 for fp16 where given (exact fp16 products summed in fp32; the tasks' scores need not
 * round as the engine's do), else k's fp32 GEMM) as e's dbias hook, their geometry on the heap in
 * e->dbias_geom, e->bytes raised to cover their workspace. Needs e->dbias_rows = the tiled
 * backward's query block (cf_attn_cpu_blocks().bwd_q). map: the call's mask map (may be NULL),
 * kept until cf_attn_cpu_dbias_free. */
cflash_status cf_attn_cpu_dbias_tasks(const cf_attn_call* c, const cf_attn_kernels* k,
                                      const cf_attn_pairs_gemm* gemm_f16,
                                      const cf_attn_mask_map* map, cf_attn_bwd_engine* e);
void cf_attn_cpu_dbias_free(cf_attn_bwd_engine* e);

/* The state (CF_REGION_*) of query rows [i0, i1) of head h and keys [j0, j1) (batch calls: b the
 * batch) under attn_mask (from mp where it covers them; mp may be NULL) and attn_bias (-inf hides
 * a pair): closed when one of them hides every pair, open when neither hides any, else part. */
int cf_attn_cpu_region_open(const cf_attn_call* c, const cf_attn_mask_map* mp, int64_t b, int64_t h,
                            int64_t i0, int64_t i1, int64_t j0, int64_t j1);
/* The same joined over the G query heads of KV head hk (one head where attn_mask and attn_bias
 * both broadcast over heads): the state of a tile of rows [i0, i1) of every head of a group. */
int cf_attn_cpu_group_region(const cf_attn_call* c, const cf_attn_mask_map* mp, int64_t b,
                             int64_t hk, int64_t G, int64_t i0, int64_t i1, int64_t j0, int64_t j1);
/* The state of a tile -- row r is query i0 + r % na of head hk * G + r / na, r < G na -- against
 * keys [j0, j0 + nb) under the block-sparse lists, attn_mask and attn_bias: closed when they hide
 * every pair, open when they hide none, else part. With the lists, kvp[r] is set to row r's key
 * mask (nb bytes, 1 = listed), kept in kvis: up to G (na + 1) nb bytes. */
int cf_attn_cpu_tile_region(const cf_attn_call* c, const cf_attn_mask_map* mp, int64_t b,
                            int64_t hk, int64_t G, int64_t i0, int64_t na, int64_t j0, int64_t nb,
                            uint8_t* kvis, const uint8_t** kvp);
/* Whether rows [r0, r1) of such a tile see none of those keys (kvp as cf_attn_cpu_tile_region
 * left it), so that their work on the block can be skipped. */
int cf_attn_cpu_rows_closed(const cf_attn_call* c, const cf_attn_mask_map* mp, int64_t b,
                            int64_t hk, int64_t G, int64_t i0, int64_t na, int64_t r0, int64_t r1,
                            int64_t j0, int64_t nb, const uint8_t* const* kvp);
/* On a block of scores (natural-log units) -- element (row r, key column j) at
 * s[r * rs + j * cs] is query i[r] of head h[r], key j0 + j -- adds attn_bias and, with masks,
 * sets -inf where attn_mask is 0 or kv[r][j] is 0 (kv NULL: no block-sparse mask). masks 0: the
 * block's region is CF_REGION_OPEN (they would hide nothing). pdi, pdj: as cf_attn_score_map's
 * (an fp32 bias's next block is prefetched when it lies within the bias). */
void cf_attn_cpu_extras(const cf_attn_call* c, const cf_attn_kernels* kk, int64_t b, float* s,
                        int64_t nr, int64_t nc, int64_t rs, int64_t cs, const int64_t* i,
                        const int64_t* h, const uint8_t* const* kv, int64_t j0, int masks,
                        int64_t pdi, int64_t pdj);

/* Block shapes, chosen once per process (attn_blocks.c): per CPU family (vendor and family from
 * the CPU probe; Zen 5 measured in docs/PERF.md), or from CFLASH_ATTN_BLOCKS=q,k[,bq,bk] (each
 * 1..CF_ATTN_BLOCK_MAX; a bad value is logged and ignored). The drivers take any shape. */
typedef struct cf_attn_blocks {
    int64_t q;          /* forward: query rows per tile, over the heads of a GQA group */
    int64_t k;          /* forward: keys per block */
    int64_t bwd_q;      /* backward: query rows per block (per head) and per dQ tile (group) */
    int64_t bwd_k;      /* backward: keys per block */
    const char* source; /* where they came from, for logs */
} cf_attn_blocks;
#define CF_ATTN_BLOCK_MAX 1024
cf_attn_blocks cf_attn_cpu_blocks(void);
/* Parses "q,k" (backward blocks from base) or "q,k,bq,bk" into *b; 0 with the reason in why. */
int cf_attn_blocks_parse(const char* s, const cf_attn_blocks* base, cf_attn_blocks* b, char* why,
                         size_t len);
/* Tests and tuning tools only: the blocks of later calls (NULL: back to the chosen ones). Not to
 * be called while an attention call runs. */
void cf_attn_cpu_set_blocks(const cf_attn_blocks* b);
/* The one-pass backward's per-thread fp32 dQ buffer (G * Sq * D floats) may take at most this
 * much; longer sequences use the three-pass backward, whose workspace does not grow with Sq. */
#define CF_ATTN_BWD_DQ_BYTES ((size_t)8 << 20)
/* A dbias task keeps the scores and dP its first pass computes, for its second, when one (b, h)'s
 * (over all keys) and an fp32 block of dbias rows fit this much (else computed again). */
#define CF_ATTN_DBIAS_CACHE_BYTES ((size_t)16 << 20)
/* Tests only: that bound for later calls (0: CF_ATTN_DBIAS_CACHE_BYTES). Not to be called while
 * an attention call runs. */
void cf_attn_cpu_set_dbias_cache(size_t bytes);

#endif
