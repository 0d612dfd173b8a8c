/* CPU attention: the tiled online-softmax driver (src/cpu/attn_tiled.c, attn_tiled_bwd.c) shared by
 * the cpu-generic, cpu-avx2, cpu-avx512 and cpu-amx backends, and the table of microkernels each
 * backend supplies. The driver does blocking, masks, dropout, threading; the table does the math.
 */
#ifndef CFLASH_CPU_ATTN_CPU_H
#define CFLASH_CPU_ATTN_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "core/attn_call.h"

/* The microkernels of one ISA. Matrices are fp32 unless stated; ld* are in elements. */
typedef struct cf_attn_kernels {
    const char* name; /* the backend name, for messages */
    /* C (M x N, ldc) = (acc ? C : 0) + A (M x K) * B (K x N, row-major, ldb).
     * A(m, k) = A[m * rsa + k * csa], so A may be read transposed. */
    void (*gemm_f32)(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa,
                     const float* B, int64_t ldb, float* C, int64_t ldc, int acc);
    /* bf16 pairs (NULL when the ISA has no bf16 dot product): as gemm_f32 with K counted in pairs;
     * A(m, p) = A[m * rsa + p * csa] is a pair (lo = element 2p, hi = 2p + 1) of bf16, and
     * B[p * ldb + n] the pair (B(2p, n), B(2p + 1, n)) (VNNI layout). fp32 accumulation. */
    void (*gemm_bf16)(int64_t M, int64_t N, int64_t P, const uint32_t* A, int64_t rsa, int64_t csa,
                      const uint32_t* B, int64_t ldb, float* C, int64_t ldc, int acc);
    /* x[i] *= s; mx[i] = max(mx[i], x[i]) for i < n (a NaN x may be skipped by the max). */
    void (*scale_max_cols)(float* x, int64_t n, float s, float* mx);
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
    /* dst[i] = lo[i] | hi[i] << 16 (bf16 bits; hi NULL = 0): two rows into VNNI pairs. */
    void (*interleave_u16)(uint32_t* dst, const uint16_t* lo, const uint16_t* hi, int64_t n);
    /* dtype conversion of n contiguous elements. */
    void (*to_f32)(float* dst, const void* src, cf_dtype dt, int64_t n);
    void (*from_f32)(void* dst, const float* src, cf_dtype dt, int64_t n);
    /* Per-thread setup/teardown around the tile loop (AMX tile configuration); may be NULL. */
    void (*thread_begin)(void);
    void (*thread_end)(void);
} cf_attn_kernels;

/* The portable kernels (attn_generic.c); ISA tables take the pieces they do not improve. */
extern const cf_attn_kernels cf_attn_kernels_generic;
void cf_attn_generic_to_f32(float* dst, const void* src, cf_dtype dt, int64_t n);
void cf_attn_generic_from_f32(void* dst, const float* src, cf_dtype dt, int64_t n);
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
/* Query tiles of n rows per (sequence, KV head), heaviest first; NULL when out of memory. */
attn_tile* cf_attn_cpu_q_tiles(const cf_attn_call* c, int64_t n, int64_t* count);
/* Sorts tiles heaviest first (ties by idx). */
void cf_attn_cpu_sort_tiles(attn_tile* t, int64_t n);

/* Whether any of n rows of d elements of dtype dt (row starts rs bytes apart from p) holds a NaN
 * or an infinity. The drivers check the rows of a partly masked block with it before a product
 * whose zero weights would carry them into rows that cannot see them. */
int cf_attn_cpu_rows_nonfinite(const char* p, int64_t rs, int64_t n, int64_t d, cf_dtype dt);
/* The same over the keys of block [j0, j0 + nb) (row j0 at p) that some rows of a tile cannot see:
 * those before the last row's lo and those from the first row's hi on (lo and hi do not decrease
 * over the rows); the keys every row sees cannot carry anything across a mask. */
int cf_attn_cpu_hidden_nonfinite(const char* p, int64_t rs, int64_t j0, int64_t nb, int64_t lo_last,
                                 int64_t hi_first, int64_t d, cf_dtype dt);

/* Shared limits, checked by every CPU backend's supports(). */
int cf_attn_cpu_supports(const cf_attn_call* c, const cf_attn_kernels* k, char* reason, size_t len);

/* Blocking (tuned on Zen 5: see docs/PERF.md). */
#define CF_ATTN_TILE_ROWS 128 /* query rows per tile, over the heads of a GQA group */
#define CF_ATTN_BLOCK_K 128   /* keys per block */
#define CF_ATTN_BWD_BLOCK_Q 128
#define CF_ATTN_BWD_BLOCK_K 128
/* The one-pass backward's per-thread fp32 dQ buffer (G * Sq * D floats) may take at most this
 * much; longer sequences use the three-pass backward, whose workspace does not grow with Sq. */
#define CF_ATTN_BWD_DQ_BYTES ((size_t)8 << 20)

#endif
