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
#define CFLASH_VERSION_MINOR 2
#define CFLASH_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH of this header (0.2.0 -> 200). */
#define CFLASH_VERSION_NUMBER                                                                      \
    (CFLASH_VERSION_MAJOR * 10000 + CFLASH_VERSION_MINOR * 100 + CFLASH_VERSION_PATCH)

/* ---- Status and errors ------------------------------------------------------------------- */

typedef enum cflash_status {
    CFLASH_OK = 0,
    CFLASH_ERR_INVALID_ARGUMENT = -1, /* an argument is wrong: the message names it */
    CFLASH_ERR_UNSUPPORTED = -2,      /* valid, but no backend can serve: reasons in the message */
    CFLASH_ERR_OUT_OF_MEMORY = -3,
    CFLASH_ERR_BACKEND = -4, /* a backend failed at run time (driver, compiler, ...) */
    CFLASH_ERR_IO = -5
} cflash_status;

/* Static text of a status code ("CFLASH_ERR_INVALID_ARGUMENT", ...). Never NULL. */
CFLASH_API const char* cflash_status_string(cflash_status s);

/* Message of this thread's last failing call ("" if none). Valid until the next failing call on
 * this thread. Successful calls do not clear it. */
CFLASH_API const char* cflash_last_error(void);

/* "MAJOR.MINOR.PATCH" of the library actually loaded. */
CFLASH_API const char* cflash_version(void);
/* The same as MAJOR * 10000 + MINOR * 100 + PATCH, to compare with CFLASH_VERSION_NUMBER (the
 * header a program was compiled with) or with a minimum it needs. */
CFLASH_API unsigned cflash_version_number(void);

/* ---- Non-finite values (NaN, +-inf): every CPU backend alike ------------------------------
 * Attention (forward, varlen, KV cache): a NaN or infinity in an input a query row can see -- its
 * q row, or the k or v row of a key it sees (inside its causal / window / sequence range; dropout
 * does not hide a key) -- makes that row's results what a naive computation, softmax(q k^T) v in
 * floating point, makes them: a NaN score (NaN in q or a seen k, inf - inf, inf * 0) gives a row
 * of NaN out and a NaN lse; a NaN or infinity in v[j, d] reaches out[., d] of the rows that see
 * key j. A key a row cannot see never affects that row, NaN or not. A row that sees no key, or
 * whose scores are all -inf, gets out 0 and lse -inf.
 * Backward: the same along the (query, key) pairs a row sees, given the forward's out and lse of
 * the same inputs: dq of a row, and dk, dv of a key, are non-finite only through pairs that see
 * each other.
 * Merge: a NaN part lse makes the row NaN (out and lse); a part with lse -inf is ignored whatever
 * its out holds; a NaN in a weighted part's out makes that column NaN (even if its weight is 0).
 * Norm and rotary: as their formulas, row by row (a NaN in a norm row makes that row NaN; in
 * rotary, the outputs of its pair). Results are bit-identical from run to run. */

/* ---- Outputs ------------------------------------------------------------------------------
 * Every tensor an op writes (outputs, gradients, a cache it appends to, x rotated in place) must
 * give distinct elements distinct addresses, checked as: its dims of size > 1, ordered by
 * |stride|, nest -- each |stride| is larger than sum |stride_j| * (shape_j - 1) over the dims with
 * smaller strides (every dense, padded, sliced, permuted or reversed view does). Others, stride 0
 * (a broadcast view) among them, are rejected: their elements would be written racily. An output
 * must also share no byte with the call's inputs or its other outputs (attention's out / lse /
 * gradients, the KV-cache call's out, lse, caches and int8 scales against q, k_new, v_new and the
 * rotary tables, rotary's out against x when not in place): a call where they meet is rejected
 * naming both. Views of one tensor whose elements do not meet pass (packed qkv and dqkv, and
 * (B, S, H + 2 Hk, D) layouts); the K and V caches may share memory (an MLA latent cache). */

/* ---- Context ----------------------------------------------------------------------------- */

/* Opaque: thread count, forced backend, CUDA stream. A context may be used by one thread at a
 * time; use one context per thread for concurrent calls. Every op accepts ctx = NULL, meaning the
 * defaults: all cores, automatic backend choice (or CFLASH_BACKEND), the default CUDA stream. */
typedef struct cflash_context cflash_context;

CFLASH_API cflash_status cflash_context_create(cflash_context** ctx);
CFLASH_API void cflash_context_free(cflash_context* ctx); /* accepts NULL */
/* n = 0: all cores (or OMP_NUM_THREADS when set). n < 0 is an error. */
CFLASH_API cflash_status cflash_context_set_threads(cflash_context* ctx, int n);
/* name "auto": choose per call. Else one backend name ("cpu-ref", "cpu-avx512", ...); an
 * unknown name is an error. The environment variable CFLASH_BACKEND (a name or "auto") applies to
 * contexts that have not set one; NULL returns the context to that "not set" state. */
CFLASH_API cflash_status cflash_context_set_backend(cflash_context* ctx, const char* name);
/* A CUstream as void*; NULL = the default stream. */
CFLASH_API cflash_status cflash_context_set_cuda_stream(cflash_context* ctx, void* stream);

/* Explain mode: the next op call on ctx (any function below that takes a ctx) is validated and
 * dispatched as for real, on the same code path, but nothing is computed and nothing written.
 * Instead buf receives one line per backend considered, "NAME: OKAY" or "NAME: NO: reason", and
 * a last line "-> NAME" (or "-> none"); a backend that would serve the call through code not its
 * own says so: "cpu-amx: OKAY (through cpu-avx512's driver: a build without AMX code)". A call
 * rejected before any backend is considered (a bad argument) gets "not dispatched: STATUS: message"
 * and "-> none". The call returns CFLASH_OK when some backend would serve, else the status (and
 * message) the real call would return. Then the mode clears itself: it covers exactly one call,
 * whether that call succeeds or fails. Text longer than len - 1 bytes is cut; buf must stay valid
 * until that call returns. buf NULL or len 0: clears the mode (the next call runs for real). ctx
 * NULL is an error: explain mode belongs to a context (a call made with ctx = NULL is never
 * explained). Like the context's other settings, the mode is not per thread: set it and make the
 * call from the one thread that uses the context at that time. */
CFLASH_API cflash_status cflash_context_set_explain(cflash_context* ctx, char* buf, size_t len);

/* ---- Attention --------------------------------------------------------------------------- */

typedef struct cflash_attn_params {
    float softmax_scale;          /* 0 = 1/sqrt(D); else any finite value, used as given */
    int causal;                   /* 1 = causal, aligned bottom-right: query i sees key j iff
                                     j <= i + Sk - Sq. Same as window_right = 0 (and overrides
                                     window_right); window_left still applies */
    int64_t window_left;          /* -1 = unbounded; else >= 0. Query i sees keys in            */
    int64_t window_right;         /* [i + Sk - Sq - window_left, i + Sk - Sq + window_right]   */
    float softcap;                /* 0 = off; c > 0: s = c * tanh(s / c) on the scaled score   */
    const DLTensor* alibi_slopes; /* NULL, or fp32 [H] or [B, H]: bias -slope*|i + Sk - Sq - j| */
    float dropout_p;              /* in [0, 1): probability of dropping an attention weight;
                                     kept weights are scaled by 1/(1-p); lse is before dropout */
    uint64_t seed;                /* dropout: Philox-4x32-10 key                               */
    uint64_t offset;              /* dropout: added to the Philox counter                      */
    int deterministic;            /* 1 = deterministic backward on GPUs (CPU is always)        */
    int64_t q_offset;             /* >= 0: position of q's row 0 in a longer sequence (below)  */
    int64_t k_offset;             /* >= 0: position of k's row 0 in a longer sequence (below)  */
    /* -- A: attention sinks (gpt-oss; FA4 learnable_sink) -- */
    const DLTensor* sinks; /* NULL or fp32 [H] on q's device: per query head, a logit that joins
                              each row's softmax denominator (exp(sink)) and carries no value;
                              in the units of the scaled score (not multiplied by the scale) */
    DLTensor* dsinks;      /* backward only: NULL or fp32 [H], receives dL/dsink (overwritten) */
    /* -- A: additive bias and boolean mask, broadcastable (B|1, H|1, Sq, Sk) (batch mode only) --
     */
    const DLTensor* attn_bias; /* NULL or fp32 / the dtype of q, 4 dims, each of B, H may be 1 (or
                                  stride 0); added to the score after softcap and ALiBi */
    const DLTensor* attn_mask; /* NULL or uint8 / bool (DLPack code 6, 8 bits), 4 dims as attn_bias;
                                  nonzero = the key takes part (PyTorch SDPA's boolean mask) */
    DLTensor* dbias; /* backward only: NULL or like attn_bias (fp32 or the dtype); receives
                        dL/dbias summed over broadcast dims (overwritten, deterministic) */
    /* -- A: block-sparse mask (FlexAttention's BlockMask, kv side) -- */
    const DLTensor* block_kv_num;     /* NULL or int32 (B|1, H|1, ceil(Sq / block_q)) */
    const DLTensor* block_kv_indices; /* int32 (B|1, H|1, ceil(Sq / block_q), K): query block qb
                                         sees key blocks indices[..., qb, 0 : num[..., qb]]; any
                                         other key block is masked; other masks still apply */
    int64_t block_q, block_k;         /* block sizes (>= 1) of the two tensors above */
    /* -- A: chunked local attention (Llama 4; FA3 attention_chunk) -- */
    int64_t attention_chunk; /* 0 = off; else > 0: query i (at key position i + Sk - Sq) sees
                                key j only if both lie in the same chunk of this many keys */
    /* -- B: paged K/V and used lengths in the varlen call (FA3 / vLLM) -- */
    const DLTensor* block_table; /* varlen only: NULL or int32 (B, max_pages): k / v are
                                    (num_pages, page_size, Hk, D/Dv) pages, sequence b's key t at
                                    page block_table[b, t / page_size], row t % page_size */
    const DLTensor* seqused_q;   /* NULL or int32 [B]: only the first seqused_q[b] query rows of
                                    sequence b are computed (the rest of its out/lse untouched) */
    const DLTensor* seqused_k;   /* NULL or int32 [B]: sequence b uses its first seqused_k[b] keys
                                    (with block_table, cu_seqlens_k may be NULL when given) */
} cflash_attn_params;
/* q_offset, k_offset (default 0): the call is one block of a longer attention, as when a sequence
 * is split across processes (context parallelism, ring attention) or prefilled in chunks. Masks,
 * ALiBi and dropout read query row i as position i + q_offset and key j as j + k_offset: query i
 * sees key j iff j + k_offset <= i + q_offset + Sk - Sq (causal), the window bounds and the ALiBi
 * distance |i + q_offset + Sk - Sq - j - k_offset| shift alike, and dropout keys are
 * (b, h, i + q_offset, j + k_offset). Sk - Sq is the call's own, so for a self-attention cut into
 * blocks of equal length the block call equals rows [q_offset, q_offset + Sq) of the whole
 * attention restricted to keys [k_offset, k_offset + Sk), and blocks merge by their LSE
 * (cflash_attn_merge). Varlen calls apply the same offsets to every sequence. Positions must fit
 * the dropout counter's 32-bit row and column words: q_offset + Sq and k_offset + Sk <= 2^32
 * (Sq, Sk the call's, or max_seqlen_* for varlen). The KV-cache call takes 0 only. */

/* Issue 13's features (fields after k_offset), with q_offset / k_offset where they apply:
 * - sinks: row (b, h, i) gets the softmax over its visible scores and sinks[h] together:
 *   out = sum_j exp(s_j - lse) v_j, lse = log(exp(sinks[h]) + sum_j exp(s_j)) -- the LSE includes
 *   the sink, FA4's convention (flash_attn/cute/softmax.py, apply_learnable_sink). A row that sees
 *   no key gets out 0 and lse = sinks[h]; sinks[h] = -inf is no sink. The backward (p->sinks the
 *   forward's) writes dsinks[h] = -sum over rows (b, i) of exp(sinks[h] - lse) * sum_d dout * out
 *   when dsinks is given (the form holds with dropout too). Also in cflash_attn_varlen_* (rows of
 *   every sequence).
 * - attn_bias, attn_mask: batch calls only (cflash_attn_fwd / _bwd); element (b, h, i, j) is query
 *   row i and key j of the call (the call's block of a longer bias when q_offset / k_offset place
 *   it), dims of size 1 (or stride 0) broadcast; last dim contiguous. A bias of -inf masks, like a
 *   zero in attn_mask. dbias (needs attn_bias, same shape) gets dL/d(score) of each pair summed
 *   over the dims attn_bias broadcasts, 0 for masked pairs.
 * - block_kv_num / block_kv_indices: positions, as the other masks: query row i lies in query
 *   block (i + q_offset) / block_q, key j in key block (j + k_offset) / block_k; dim 2 must cover
 *   the call's rows, >= ceil((q_offset + Sq) / block_q) (varlen: Sq = max_seqlen_q). Entries of
 *   indices past num[..., qb] are not read; listed blocks beyond the keys cover nothing. Batch and
 *   varlen calls (b = the sequence). Defaults block_q = block_k = 128.
 * - attention_chunk: query i at position P = i + q_offset + Sk - Sq sees key j (position
 *   j + k_offset) only if floor(P / chunk) == floor((j + k_offset) / chunk); combines with causal
 *   and windows (Llama 4 uses causal + chunk). Batch and varlen calls.
 * The CUDA backends do not take these features yet (CFLASH_ERR_UNSUPPORTED with the reason);
 * every CPU backend does. */

/* block_table, seqused_q, seqused_k (default NULL), the serving features of FA3's varlen call:
 * - Used lengths: sequence b (a batch index, or a varlen sequence) has sq_b = seqused_q[b] query
 *   rows and sk_b = seqused_k[b] keys instead of all of its rows (0 <= seqused <= the rows it
 *   has). Masks align bottom-right on these lengths (query i sees key j iff
 *   j <= i + sk_b - sq_b when causal). Forward: out and lse rows past sq_b are not written.
 *   Backward: dq rows past sq_b, and dk / dv rows of keys past sk_b, get 0.
 * - Paged K/V (varlen calls only, as vLLM and SGLang call flash_attn_varlen_func): k, v (and dk,
 *   dv) are (num_pages, page_size, Hk, D / Dv), any page_size >= 1; key t of sequence b is row
 *   t % page_size of page block_table[b, t / page_size]. Sequence b has cu_seqlens_k[b + 1] -
 *   cu_seqlens_k[b] keys (cu_seqlens_k counts keys; its last entry is not bounded by k), or
 *   seqused_k[b] keys when cu_seqlens_k is NULL. Every page a used key lies in is checked
 *   against num_pages. The backward writes dk / dv of every page: 0 for rows no sequence uses;
 *   it needs each page in at most one sequence (a shared page's gradient would be a sum).
 * block_table and seqused_* are int32, in host memory (cpu or cuda_host). */

/* Defaults: scale 0 (1/sqrt(D)), not causal, windows -1, no softcap, ALiBi or dropout, seed and
 * offset 0, not deterministic, none of issue 13's features (block_q = block_k = 128), no block
 * table or used lengths. */
CFLASH_API void cflash_attn_params_init(cflash_attn_params* p);

/* Forward attention.
 *   out = softmax(scale * q k^T + masks) v, per batch b and query head h, using KV head
 *   h / (H / Hk) (GQA/MQA).
 *   q   (B, Sq, H, D)     k (B, Sk, Hk, D)     v (B, Sk, Hk, Dv)
 *   out (B, Sq, H, Dv)    lse fp32 (B, H, Sq) or NULL: natural-log logsumexp of the scaled,
 *                         masked scores of each row.
 * q, k, v, out share one dtype (float32, float16 or bfloat16), one device, and have a contiguous
 * last dimension; other strides (and byte_offset) are free. ALiBi slopes live on the same device.
 * Scores: s = scale * q.k, then softcap, then the ALiBi bias, then the causal/window mask; the
 * softmax and all sums are fp32. A row that sees no key gets out = 0 and lse = -inf, never NaN
 * (NaN and infinity in the inputs: see "Non-finite values" above).
 * out and lse are overwritten (every element), must not overlap the inputs, and are left
 * untouched when the call fails. B = 0 or Sq = 0 is valid (nothing to do); a tensor with a zero
 * dimension may have data = NULL. */
CFLASH_API cflash_status cflash_attn_fwd(cflash_context* ctx, const cflash_attn_params* p,
                                         const DLTensor* q, const DLTensor* k, const DLTensor* v,
                                         DLTensor* out, DLTensor* lse);

/* Backward attention: recomputes the scores from q, k and lse (that of the forward, required).
 *   dout, out (B, Sq, H, Dv)  dq (B, Sq, H, D)  dk (B, Sk, Hk, D)  dv (B, Sk, Hk, Dv)
 *   lse fp32 (B, H, Sq) as written by the forward; out is the forward's output.
 * All of one dtype and device as in the forward. dq, dk, dv are overwritten, not accumulated
 * into (keys no query sees get 0); dk and dv sum over the query heads of a group. p must be the
 * forward's (same masks, scale, dropout seed and offset). The CPU backward is deterministic. */
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
 * lengths; dropout keys (b, i, j) are the sequence index and the row/column within it. Rows of
 * q/out beyond cu_seqlens_q[B] are not written. Empty sequences are allowed. */
CFLASH_API cflash_status cflash_attn_varlen_fwd(cflash_context* ctx, const cflash_attn_params* p,
                                                const DLTensor* q, const DLTensor* k,
                                                const DLTensor* v, const DLTensor* cu_seqlens_q,
                                                const DLTensor* cu_seqlens_k, int64_t max_seqlen_q,
                                                int64_t max_seqlen_k, DLTensor* out, DLTensor* lse);

CFLASH_API cflash_status cflash_attn_varlen_bwd(
    cflash_context* ctx, const cflash_attn_params* p, const DLTensor* dout, const DLTensor* q,
    const DLTensor* k, const DLTensor* v, const DLTensor* out, const DLTensor* lse,
    const DLTensor* cu_seqlens_q, const DLTensor* cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, DLTensor* dq, DLTensor* dk, DLTensor* dv);

/* The dropout keep mask of a (non-varlen) attention call, for tests and debugging:
 *   mask uint8 (B, H, Sq, Sk) on the CPU: 1 = kept, 0 = dropped.
 * It is a pure function of (seed, offset, b, h, i, j): every backend drops the same weights
 * (for varlen calls, b is the sequence and i, j the row and column within it). With p->q_offset
 * and p->k_offset, element (b, h, i, j) is the keep bit of (b, h, i + q_offset, j + k_offset).
 * Keying: Philox-4x32-10 with key (seed lo, seed hi) and the 128-bit counter
 *   {j / 4, i, b, h} + offset (offset added to the low 64 bits, carry into the high 64);
 * word j % 4 of the output, x, keeps iff x < floor((1 - p) * 2^32). */
CFLASH_API cflash_status cflash_attn_dropout_mask(const cflash_attn_params* p, DLTensor* mask);

/* An additive mask as a boolean one, exactly: the pairs whose value lies more than `margin` below
 * the largest value of their row weigh nothing once margin is twice a bound on the call's scores
 * plus 200 (exp(-200) is 0 in fp32), so attention with attn_mask = keep (and attn_bias = bias,
 * or none where bias is 0 at every kept pair) gives the result of attn_bias = bias alone while
 * skipping the tiles keep hides (only a NaN or an infinity in v at a hidden pair differs: masked,
 * it no longer reaches its row). Masks written with the dtype's finfo.min instead of -inf
 * (transformers') are skipped this way: a bound is |score| <= scale * sqrt(D) * max|q| * sqrt(D)
 * * max|k| (Cauchy-Schwarz), softcap c lowering it to c.
 *   bias   float32, float16 or bfloat16, 4 dims (any; last dim contiguous), on the CPU
 *   margin finite, >= 0
 *   keep   uint8 or bool (8 bits), the shape of bias, last dim contiguous, on the CPU, apart from
 *          bias: written, 1 = the pair takes part; 0 where bias (b, h, i, j) < (the largest value
 *          of row (b, h, i)) - margin, exactly. A row whose largest value is not finite (a NaN,
 *          +inf, or every value -inf) keeps every pair.
 *   flags  receives CFLASH_FAR_KEYS_HIDES when some pair is hidden, and CFLASH_FAR_KEYS_ZERO when
 *          bias is 0 at every pair kept (a NaN is not 0; an empty bias: ZERO alone).
 * Bad arguments leave keep untouched. The rows split over the threads a call with no context
 * uses (all cores; a small mask on the calling thread alone). */
typedef enum cflash_far_keys_flag {
    CFLASH_FAR_KEYS_HIDES = 1, /* some pair hidden */
    CFLASH_FAR_KEYS_ZERO = 2   /* bias 0 at every pair kept */
} cflash_far_keys_flag;
CFLASH_API cflash_status cflash_attn_mask_far_keys(const DLTensor* bias, double margin,
                                                   DLTensor* keep, int* flags);

/* ---- Ops around attention (rotary, norm, KV cache, merge) -------------------------------- */
/* CFLASH-OPS-API: declarations of the ops issue go here. */

/* Rotary embedding (RoPE). For a row at position pos and pair index i < rd/2, with
 *   c = cos[pos, i], s = sin[pos, i] (s negated when conjugate):
 *   (a, b) -> (a c - b s, a s + b c)
 * where the pair (a, b) is (x[2i], x[2i + 1]) when interleaved (GPT-J) and (x[i], x[i + rd/2])
 * otherwise (GPT-NeoX). rd = 2 * cos.shape[1] <= D; dims [rd, D) pass through unchanged.
 * pos = s + offset, s the row's index within its sequence, offset = seqlen_offsets[b] when
 * given, else seqlen_offset. Same as flash-attn's apply_rotary_emb (and, on views of a packed
 * qkv / kv tensor, apply_rotary_emb_qkv_ / apply_rotary_emb_kv_). */
typedef struct cflash_rotary_params {
    int interleaved;                /* 1: GPT-J pairs (x[2i], x[2i+1]); 0: halves (default) */
    int conjugate;                  /* 1: rotate by -angle (the backward of a rotation) */
    int64_t seqlen_offset;          /* >= 0, added to every position when seqlen_offsets is NULL */
    const DLTensor* seqlen_offsets; /* NULL or int32 [B] on the CPU: per-sequence offset >= 0 */
    const DLTensor* cu_seqlens;     /* NULL: x is (B, S, H, D). Else varlen: x is (total, H, D)
                                       and cu_seqlens int32 [B + 1] on the CPU, as for attention */
    int64_t max_seqlen;             /* varlen: bound on sequence lengths (0 = from cu_seqlens) */
    int64_t num_heads;              /* rotate heads [0, num_heads) only; 0 = all. For the fused
                                       GQA layout qkv (B, S, H + 2*Hk, D) pass H + Hk: q and k
                                       rotate, v does not */
} cflash_rotary_params;

/* Defaults: halves (not interleaved), not conjugate, offset 0, batch layout, all heads. */
CFLASH_API void cflash_rotary_params_init(cflash_rotary_params* p);

/* Applies the rotation.
 *   x   (B, S, H, D), or (total, H, D) with p->cu_seqlens; float32, float16 or bfloat16
 *   cos, sin (S_ro, rd / 2): float32 or the dtype of x, contiguous last dim; S_ro must cover
 *            every position used (max offset + S - 1 < S_ro)
 *   out like x, or NULL (or out->data == x->data with the same strides): in place.
 * Out of place, out also receives the unrotated dims and heads; out must not partly overlap x.
 * Accumulation is fp32: each output is round(a c - b s) in the dtype of out. */
CFLASH_API cflash_status cflash_rotary_apply(cflash_context* ctx, const cflash_rotary_params* p,
                                             const DLTensor* x, const DLTensor* cos,
                                             const DLTensor* sin, DLTensor* out);

/* Builds cos/sin tables: row r, column i (i < rd/2, rd = 2 * cos.shape[1]):
 *   angle = pos(r) / interpolation_factor * base^(-2i / rd)
 *   pos(r) = positions[r] when positions is given (int32 [S_ro] on the CPU), else
 *            position_start + r
 * computed in fp64, stored rounded to the tables' dtype (float32, float16 or bfloat16).
 * cos, sin: (S_ro, rd / 2) on the CPU, same dtype. As flash-attn's RotaryEmbedding. */
typedef struct cflash_rotary_table_params {
    double base;                 /* > 0, default 10000 */
    double interpolation_factor; /* > 0, default 1 (linear position interpolation when > 1) */
    int64_t position_start;      /* default 0 */
    const DLTensor* positions;   /* NULL or int32 [S_ro] */
} cflash_rotary_table_params;

CFLASH_API void cflash_rotary_table_params_init(cflash_rotary_table_params* p);
CFLASH_API cflash_status cflash_rotary_tables(const cflash_rotary_table_params* p, DLTensor* cos,
                                              DLTensor* sin);

/* RMSNorm / LayerNorm over the last dim N, with an optional fused dropout and residual add
 * (flash-attn's layer_norm_fn / rms_norm_fn). Rows are all leading dims flattened (M rows);
 * they must be flattenable to one stride (any contiguous tensor or row-strided 2-D view is).
 *   h   = dropout(x) + residual              (dropout and residual optional)
 *   LayerNorm: y = (h - mean) * rstd * weight + bias, rstd = 1 / sqrt(var(h) + eps)
 *   RMSNorm:   y = h * rstd * weight + bias,          rstd = 1 / sqrt(mean(h^2) + eps)
 * Dropout keeps element (row r, column j) iff
 *   cf_dropout_keep(seed, offset, p, b = r >> 32, h = 0, i = r & 0xffffffff, j)
 * i.e. the attention mask's Philox keying with the row in place of (b, i), head 0; kept values
 * are scaled by 1 / (1 - p). */
typedef enum cflash_norm_type { CFLASH_NORM_RMS = 0, CFLASH_NORM_LAYER = 1 } cflash_norm_type;

typedef struct cflash_norm_params {
    cflash_norm_type type; /* default CFLASH_NORM_RMS */
    float eps;             /* > 0 and finite, default 1e-6 */
    float dropout_p;       /* [0, 1), default 0 */
    uint64_t seed;         /* dropout Philox key */
    uint64_t offset;       /* dropout Philox counter offset */
} cflash_norm_params;

CFLASH_API void cflash_norm_params_init(cflash_norm_params* p);

/* Forward.
 *   x            (..., N)  float32, float16 or bfloat16
 *   residual     NULL or like x; float32 or the dtype of x
 *   weight, bias NULL or [N]; float32 or the dtype of x (NULL weight = 1, NULL bias = 0)
 *   out          like x; any of the three float dtypes (flash-attn's out_dtype)
 *   residual_out NULL or like x: receives h ("prenorm"); float32 keeps the residual stream in
 *                fp32 (residual_in_fp32), else the dtype of x
 *   mean         NULL or float32 [M] (LayerNorm only; must be NULL for RMSNorm)
 *   rstd         NULL or float32 [M]
 * The backward needs h: pass residual_out when a residual or dropout is used.
 * In place: out and residual_out may each be x or residual itself (the same view: memory, dtype
 * and strides), as vLLM's fused_add_rms_norm writes them; any other sharing of memory between
 * the outputs, or with x, residual, weight or bias, is INVALID_ARGUMENT. */
CFLASH_API cflash_status cflash_norm_fwd(cflash_context* ctx, const cflash_norm_params* p,
                                         const DLTensor* x, const DLTensor* residual,
                                         const DLTensor* weight, const DLTensor* bias,
                                         DLTensor* out, DLTensor* residual_out, DLTensor* mean,
                                         DLTensor* rstd);

/* Backward. p must be the forward's (same type, eps, dropout seed and offset).
 *   dy             like out of the forward (any float dtype)
 *   x              the norm's input h: the forward's residual_out when it had a residual or
 *                  dropout, else its x
 *   weight, bias   as in the forward (bias is read only for its dtype/shape; may be NULL)
 *   mean, rstd     NULL (recomputed from x) or the forward's
 *   dresidual_out  NULL or like x: gradient arriving at residual_out (prenorm), added to dh
 *   dx             like x: gradient of the forward's x (dropout mask and scale applied)
 *   dweight, dbias NULL or [N] (any float dtype): sums over rows of dy * xhat and dy
 *   dresidual      NULL or like x: gradient of the forward's residual (= dh)
 * dweight/dbias are summed in fp32 in a fixed order: the result is deterministic.
 * In place: dx and dresidual may each be dresidual_out itself (the same view); any other sharing
 * of memory between the outputs, or with the inputs (dx over dy included), is INVALID_ARGUMENT. */
CFLASH_API cflash_status cflash_norm_bwd(cflash_context* ctx, const cflash_norm_params* p,
                                         const DLTensor* dy, const DLTensor* x,
                                         const DLTensor* weight, const DLTensor* bias,
                                         const DLTensor* mean, const DLTensor* rstd,
                                         const DLTensor* dresidual_out, DLTensor* dx,
                                         DLTensor* dweight, DLTensor* dbias, DLTensor* dresidual);

/* KV-cache attention (decode and chunked prefill), flash-attn's flash_attn_with_kvcache.
 * Per batch b, with L = cache_seqlens[b] (or cache_seqlen), P = cache_leftpad[b] (or 0) and
 * Sn = k_new's length (0 without k_new):
 *   1. k_new / v_new rows n go to cache positions L + n (in place); k_new rotated first.
 *      Where two new rows land on one cache row (cache_batch_idx repeating an index, a page in
 *      two sequences' block-table rows), the CPU backends keep the later in (b, n) order, on
 *      every run. Every append is done before any query reads the cache.
 *   2. q attends over cache positions [P, L + Sn): Sk_b = L + Sn - P keys, key j at position
 *      P + j; masks as cflash_attn_fwd with Sk = Sk_b (causal bottom-right, window, softcap,
 *      ALiBi). Dropout must be 0.
 *   Rotary (when rotary_cos/sin are given): k_new row n at position L + n; q row i at
 *   position L + i when causal or windowed, else every q row at position L.
 *   Positions index the cache; a paged cache maps position t of batch b to
 *   page block_table[b, t / page_size], row t % page_size.
 * Tensors (q, caches, k_new, v_new, out share one dtype and device):
 *   q        (B, Sq, H, D)           out (B, Sq, H, Dv)       lse fp32 (B, H, Sq) or NULL
 *   k_cache  (B_cache, S_cache, Hk, D)   v_cache (B_cache, S_cache, Hk, Dv)   or paged:
 *            (num_pages, page_size, Hk, D) / (num_pages, page_size, Hk, Dv), any page_size >= 1
 *   k_new    NULL or (B, Sn, Hk, D)  v_new NULL or (B, Sn, Hk, Dv) (both or neither)
 * MLA latent cache (DeepSeek: D 576 = 512 latent + 64 rope, Dv 512, Hk 1): v_cache may be a view
 * of k_cache's first Dv dims (same data pointer, dtype and strides). Then v_new must be NULL: the
 * append of k_new writes the rows of both (for int8 the row's scale goes to v_scales too), and
 * the library reads each latent row once for both products. Any other v_cache that shares
 * k_cache's memory can be read but not appended to (INVALID_ARGUMENT).
 *   rotary_cos, rotary_sin  NULL or (S_ro, rd / 2), float32 or the dtype of q, rd <= D
 *   cache_seqlens   NULL or int32 [B]
 *   cache_batch_idx NULL or int32 [B]: batch b uses cache row cache_batch_idx[b] (not paged)
 *   cache_leftpad   NULL or int32 [B]: first valid cache position of each sequence
 *   block_table     NULL or int32 (B, max_pages): pages of each sequence (paged cache)
 * Index tensors are on the CPU. GQA: query heads h of group h / (H / Hk) are computed in one
 * pass over the group's K/V. num_splits > 1 splits the keys into that many parts computed apart
 * and merged by LSE (as cflash_attn_merge); 0 = chosen by a heuristic; 1 = no split.
 * Varlen (FA3's cu_seqlens_q, max_seqlen_q, cu_seqlens_k_new; each independent of the other):
 * with cu_seqlens_q, sequence b has Sq_b = cu_seqlens_q[b + 1] - cu_seqlens_q[b] query rows
 * (q rows cu_seqlens_q[b] ..), and B is its length - 1; with cu_seqlens_k_new, Sn_b =
 * cu_seqlens_k_new[b + 1] - cu_seqlens_k_new[b] new rows. Everything above then reads Sq_b and
 * Sn_b for Sq and Sn: a decode step (Sq_b = Sn_b = 1), a prefill chunk (Sq_b = Sn_b = chunk) and
 * a speculative verification (Sq_b = Sn_b = draft length) go in one call, causal masks aligned
 * per sequence. The last entries must not pass total_q / total_new; max_seqlen_q (0 = computed)
 * must be >= every Sq_b, and 0 without cu_seqlens_q. */
typedef struct cflash_kvcache_params {
    const DLTensor* k_new;
    const DLTensor* v_new;
    const DLTensor* rotary_cos;
    const DLTensor* rotary_sin;
    int rotary_interleaved; /* default 1, as flash-attn */
    const DLTensor* cache_seqlens;
    int64_t cache_seqlen; /* used when cache_seqlens is NULL: -1 = the whole cache
                             (default), else the same length for every batch */
    const DLTensor* cache_batch_idx;
    const DLTensor* cache_leftpad;
    const DLTensor* block_table;
    int num_splits; /* >= 0; default 0 = heuristic */
    /* -- B: varlen queries and new keys (mixed prefill + decode, speculative decoding; FA3) -- */
    const DLTensor* cu_seqlens_q;     /* NULL or int32 [B + 1]: q is (total_q, H, D), out
                                         (total_q, H, Dv), lse (H, total_q) */
    int64_t max_seqlen_q;             /* 0 = from cu_seqlens_q */
    const DLTensor* cu_seqlens_k_new; /* NULL or int32 [B + 1]: k_new / v_new are (total_new, Hk,
                                         D / Dv), sequence b's new rows cu[b] .. cu[b + 1] */
    /* -- B: quantized caches -- */
    int cache_quant;           /* cflash_kv_quant: CFLASH_KV_QUANT_NONE (default),
                                  _FP8_E4M3, _FP8_E5M2 (caches uint8 or the DLPack float8
                                  codes), _INT8 (caches int8) */
    const DLTensor* k_descale; /* fp8: NULL (1) or fp32 [1], [Hk] or [B, Hk] (FA3) */
    const DLTensor* v_descale;
    const DLTensor* k_scales; /* int8: fp32 per (token, head): (B_cache, S_cache, Hk) or
                                 (num_pages, page_size, Hk), written for appended rows */
    const DLTensor* v_scales;
} cflash_kvcache_params;

/* Quantized KV caches (cflash_kvcache_params.cache_quant): the caches hold 8-bit codes; q,
 * k_new, v_new and out keep q's float dtype; the attention reads each code as its exact value
 * times its scale and accumulates in fp32. Codes:
 * - FP8_E4M3 / FP8_E5M2: OCP fp8 (e4m3fn: largest 448, one NaN per sign, no infinity; e5m2:
 *   largest 57344). Caches are uint8, or DLPack float8_e4m3fn / float8_e5m2 (type codes 10 / 12
 *   of newer DLPack headers; read by number). Value = fp8(code) * descale, descale from
 *   k_descale / v_descale: [1] for the tensor, [Hk] per KV head, [B, Hk] per sequence and KV
 *   head (FA3's layout); NULL = 1. The append writes fp8(x / descale): the fp32 quotient
 *   rounded to nearest even, saturated to the largest finite code (infinities too), NaN kept.
 * - INT8: caches int8 with fp32 scales per (token, KV head) in k_scales / v_scales (the caches'
 *   first three dims). Value = code * scale. The append writes, per row and KV head,
 *   scale = max|x| / 127 and code = x / scale rounded to nearest even (in [-127, 127]; a row
 *   of zeros gets scale 0; a row with NaN or inf gets that scale, and reads back NaN).
 * The appended x is the row the unquantized call would store (k_new rotated and rounded to q's
 * dtype). Decode reads 1 byte per element instead of 2 (bf16): about half the memory traffic. */
typedef enum cflash_kv_quant {
    CFLASH_KV_QUANT_NONE = 0,
    CFLASH_KV_QUANT_FP8_E4M3 = 1,
    CFLASH_KV_QUANT_FP8_E5M2 = 2,
    CFLASH_KV_QUANT_INT8 = 3
} cflash_kv_quant;

CFLASH_API void cflash_kvcache_params_init(cflash_kvcache_params* kp);

CFLASH_API cflash_status cflash_attn_kvcache_fwd(cflash_context* ctx, const cflash_attn_params* p,
                                                 const cflash_kvcache_params* kp, const DLTensor* q,
                                                 DLTensor* k_cache, DLTensor* v_cache,
                                                 DLTensor* out, DLTensor* lse);

/* Merges NS partial attention results over disjoint key sets into one:
 *   lse = log(sum_s exp(lse_s)),  out = sum_s exp(lse_s - lse) * out_s
 * Parts with lse_s = -inf contribute nothing; a row where all are -inf gets out 0, lse -inf.
 *   out_partial (NS, B, Sq, H, Dv)  float32, float16 or bfloat16
 *   lse_partial (NS, B, H, Sq)      float32
 *   out         (B, Sq, H, Dv)      any of the float dtypes
 *   lse         NULL or float32 (B, H, Sq)
 * Varlen results merge as B = 1 views: out_partial (NS, 1, total, H, Dv), lse (NS, 1, H, total).
 * out and lse must not share memory with the partials or with each other (INVALID_ARGUMENT). */
CFLASH_API cflash_status cflash_attn_merge(cflash_context* ctx, const DLTensor* out_partial,
                                           const DLTensor* lse_partial, DLTensor* out,
                                           DLTensor* lse);

/* ---- Ops and the report ------------------------------------------------------------------ */

/* The library's ops, as the report's op x backend table and the dispatcher's messages name them. */
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

/* Name of an op ("attn_fwd", ...), NULL if out of range. */
CFLASH_API const char* cflash_op_name(cflash_op op);

/* CFLASH-REPORT-API: declarations of the report issue go here. */

/* The environment report behind `cflash report`: library (version, build options), environment
 * variables in effect, CPU (vendor, model, cores, caches, ISA features, AVX-512 and AMX with the
 * reason when not usable), CUDA driver and devices, NVRTC (version, supported archs), cuFile, the
 * kernel cache, and the op x backend table ([OKAY], or [NO] with the reason; "[OKAY]" means the
 * backend can run here, each call is still checked: see cflash_context_set_explain).
 * json = 0: text lines; json = 1: one JSON object. Writes at most len bytes into buf, always
 * NUL-terminated when len > 0 (buf may be NULL when len is 0), and returns the length the whole
 * report needs, excluding the NUL (like snprintf): call again with a larger buffer when the result
 * is >= len. Never fails and never creates a CUDA context; the first call loads libcuda, NVRTC and
 * cuFile if present and runs cuInit. */
CFLASH_API size_t cflash_report(char* buf, size_t len, int json);

/* Adds a directory where libcuda.so.1, libnvrtc.so.* and libcufile.so.* are searched, after the
 * override variables (CFLASH_LIBCUDA, CFLASH_LIBNVRTC, CFLASH_LIBCUFILE), the loader's own search
 * by soname and the known directories ($CUDA_HOME/lib64, /usr/local/cuda/lib64, /usr/lib/wsl/lib).
 * The Python package passes the NVIDIA wheels' folders (site-packages/nvidia/.../lib). It affects
 * libraries not yet loaded, so call it before the first CUDA call or report. Returns
 * CFLASH_ERR_INVALID_ARGUMENT when dir is NULL, empty, 500 characters or longer, or 64 directories
 * were already added. */
CFLASH_API cflash_status cflash_add_library_dir(const char* dir);

#ifdef __cplusplus
}
#endif

#endif /* CFLASH_H */
