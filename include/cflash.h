/* cflash: exact attention (FlashAttention: tiled, online softmax, memory linear in sequence length)
 * and the ops around it, as a C11 library with CPU and CUDA backends.
 * This is the one public header. Tensors are DLPack DLTensors; every fallible call returns a
 * cflash_status and, on failure, leaves a message readable with cflash_last_error(). */
#ifndef CFLASH_H
#define CFLASH_H

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#if defined(_WIN32)
#define CFLASH_API __declspec(dllexport)
#elif defined(__GNUC__)
#define CFLASH_API __attribute__((visibility("default")))
#else
#define CFLASH_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define CFLASH_VERSION_MAJOR 0
#define CFLASH_VERSION_MINOR 1
#define CFLASH_VERSION_PATCH 0

/* ---- Status and errors ------------------------------------------------------------------- */

typedef enum cflash_status {
    CFLASH_OK = 0,
    CFLASH_ERR_INVALID_ARGUMENT = -1, /* an argument is wrong: the message names it */
    CFLASH_ERR_UNSUPPORTED = -2,      /* valid, but no backend can serve: reasons in the message */
    CFLASH_ERR_OUT_OF_MEMORY = -3,
    CFLASH_ERR_BACKEND = -4,          /* a backend failed at run time (driver, compiler, ...) */
    CFLASH_ERR_IO = -5
} cflash_status;

/* Static text of a status code ("CFLASH_ERR_INVALID_ARGUMENT", ...). Never NULL. */
CFLASH_API const char* cflash_status_string(cflash_status s);

/* Message of this thread's last failing call ("" if none). Valid until the next failing call on
 * this thread. Successful calls do not clear it. */
CFLASH_API const char* cflash_last_error(void);

/* "MAJOR.MINOR.PATCH". */
CFLASH_API const char* cflash_version(void);

/* ---- Context ----------------------------------------------------------------------------- */

/* Opaque: thread count, forced backend, CUDA stream. A context may be used by one thread at a
 * time; use one context per thread for concurrent calls. */
typedef struct cflash_context cflash_context;

CFLASH_API cflash_status cflash_context_create(cflash_context** ctx);
CFLASH_API void cflash_context_free(cflash_context* ctx); /* accepts NULL */
/* n = 0: all cores (or OMP_NUM_THREADS when set). n < 0 is an error. */
CFLASH_API cflash_status cflash_context_set_threads(cflash_context* ctx, int n);
/* name NULL or "auto": choose per call. Else one backend name ("cpu-ref", "cpu-avx512", ...);
 * an unknown name is an error. The environment variable CFLASH_BACKEND sets the same for
 * contexts that have not set one. */
CFLASH_API cflash_status cflash_context_set_backend(cflash_context* ctx, const char* name);
/* A CUstream as void*; NULL = the default stream. */
CFLASH_API cflash_status cflash_context_set_cuda_stream(cflash_context* ctx, void* stream);

/* ---- Attention --------------------------------------------------------------------------- */

typedef struct cflash_attn_params {
    float softmax_scale;       /* 0 = 1/sqrt(D); else finite and > 0 */
    int causal;                /* 1 = causal, aligned bottom-right: query i sees key j iff
                                  j <= i + Sk - Sq */
    int64_t window_left;       /* -1 = unbounded; else >= 0. Query i sees keys in            */
    int64_t window_right;      /* [i + Sk - Sq - window_left, i + Sk - Sq + window_right]   */
    float softcap;             /* 0 = off; c > 0: s = c * tanh(s / c) on the scaled score   */
    const DLTensor* alibi_slopes; /* NULL, or fp32 [H] or [B, H]: bias -slope*|i + Sk - Sq - j| */
    float dropout_p;           /* in [0, 1): probability of dropping an attention weight    */
    uint64_t seed;             /* dropout: Philox-4x32-10 key                               */
    uint64_t offset;           /* dropout: added to the Philox counter                      */
    int deterministic;         /* 1 = deterministic backward on GPUs (CPU is always)        */
} cflash_attn_params;

/* Defaults: scale 0 (1/sqrt(D)), not causal, windows -1, no softcap, ALiBi or dropout. */
CFLASH_API void cflash_attn_params_init(cflash_attn_params* p);

/* Forward attention.
 *   out = softmax(scale * q k^T + masks) v, per batch b and query head h, using KV head
 *   h / (H / Hk) (GQA/MQA).
 *   q   (B, Sq, H, D)     k (B, Sk, Hk, D)     v (B, Sk, Hk, Dv)
 *   out (B, Sq, H, Dv)    lse fp32 (B, H, Sq) or NULL: natural-log logsumexp of the scaled,
 *                         masked scores of each row.
 * q, k, v, out share one dtype (float32, float16 or bfloat16), one device, and have a contiguous
 * last dimension; other strides are free. A row that sees no key gets out = 0 and lse = -inf. */
CFLASH_API cflash_status cflash_attn_fwd(cflash_context* ctx, const cflash_attn_params* p,
                                         const DLTensor* q, const DLTensor* k, const DLTensor* v,
                                         DLTensor* out, DLTensor* lse);

/* Backward attention: recomputes the scores from q, k and lse (that of the forward, required).
 *   dout, out (B, Sq, H, Dv)  dq (B, Sq, H, D)  dk (B, Sk, Hk, D)  dv (B, Sk, Hk, Dv)
 * dk and dv sum over the query heads of a group. p must be the forward's (same seed/offset). */
CFLASH_API cflash_status cflash_attn_bwd(cflash_context* ctx, const cflash_attn_params* p,
                                         const DLTensor* dout, const DLTensor* q, const DLTensor* k,
                                         const DLTensor* v, const DLTensor* out,
                                         const DLTensor* lse, DLTensor* dq, DLTensor* dk,
                                         DLTensor* dv);

/* Variable-length forward: B sequences packed along the first dim.
 *   q (total_q, H, D)  k (total_k, Hk, D)  v (total_k, Hk, Dv)  out (total_q, H, Dv)
 *   lse fp32 (H, total_q) or NULL
 *   cu_seqlens_q, cu_seqlens_k: int32 [B + 1] on the CPU (or the tensors' device), starting at 0,
 *   non-decreasing, ending at most at total_q / total_k. Sequence b has rows
 *   [cu[b], cu[b+1]). max_seqlen_* bound the lengths (0 = compute from cu_seqlens).
 * ALiBi slopes [B, H] index by sequence. Masks align each sequence bottom-right by its own
 * lengths. */
CFLASH_API cflash_status cflash_attn_varlen_fwd(cflash_context* ctx, const cflash_attn_params* p,
                                                const DLTensor* q, const DLTensor* k,
                                                const DLTensor* v, const DLTensor* cu_seqlens_q,
                                                const DLTensor* cu_seqlens_k, int64_t max_seqlen_q,
                                                int64_t max_seqlen_k, DLTensor* out,
                                                DLTensor* lse);

CFLASH_API cflash_status cflash_attn_varlen_bwd(
    cflash_context* ctx, const cflash_attn_params* p, const DLTensor* dout, const DLTensor* q,
    const DLTensor* k, const DLTensor* v, const DLTensor* out, const DLTensor* lse,
    const DLTensor* cu_seqlens_q, const DLTensor* cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, DLTensor* dq, DLTensor* dk, DLTensor* dv);

/* The dropout keep mask of a (non-varlen) attention call, for tests and debugging:
 *   mask uint8 (B, H, Sq, Sk) on the CPU: 1 = kept, 0 = dropped.
 * It is a pure function of (seed, offset, b, h, i, j): every backend drops the same weights.
 * Keying: Philox-4x32-10 with key (seed lo, seed hi) and the 128-bit counter
 *   {j / 4, i, b, h} + offset (offset added to the low 64 bits, carry into the high 64);
 * word j % 4 of the output, x, keeps iff x < floor((1 - p) * 2^32). */
CFLASH_API cflash_status cflash_attn_dropout_mask(const cflash_attn_params* p, DLTensor* mask);

/* ---- Ops around attention (rotary, norm, KV cache, merge) -------------------------------- */
/* CFLASH-OPS-API: declarations of the ops issue go here. */

/* ---- Explain and report ------------------------------------------------------------------ */

typedef enum cflash_op {
    CFLASH_OP_ATTN_FWD = 0,
    CFLASH_OP_ATTN_BWD,
    CFLASH_OP_ATTN_VARLEN_FWD,
    CFLASH_OP_ATTN_VARLEN_BWD,
    CFLASH_OP_KVCACHE_FWD,
    CFLASH_OP_ATTN_MERGE,
    CFLASH_OP_ROTARY,
    CFLASH_OP_NORM_FWD,
    CFLASH_OP_NORM_BWD,
    CFLASH_OP_COUNT
} cflash_op;

/* Which backend would serve a call and why the others would not, on the same code path as the
 * call itself, without computing or writing any output. The arguments after buf_len are exactly
 * those of the op's function after ctx (for CFLASH_OP_ATTN_FWD: p, q, k, v, out, lse).
 * buf receives one line per backend considered, "NAME: OKAY" or "NAME: NO: reason", and a last
 * line "-> NAME" (or "-> none"). Returns CFLASH_OK when some backend would serve, else the
 * status the call would return. */
CFLASH_API cflash_status cflash_explain(cflash_context* ctx, cflash_op op, char* buf,
                                        size_t buf_len, ...);

/* Name of an op ("attn_fwd", ...), NULL if out of range. */
CFLASH_API const char* cflash_op_name(cflash_op op);

/* CFLASH-REPORT-API: declarations of the report issue go here. */

#ifdef __cplusplus
}
#endif

#endif /* CFLASH_H */
