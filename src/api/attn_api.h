/* Internal entry points of the attention ops, shared by the public functions and cflash_explain
 * (explain != NULL: validate and choose, but do not run). */
#ifndef CFLASH_API_ATTN_API_H
#define CFLASH_API_ATTN_API_H

#include "cflash.h"
#include "dispatch/dispatch.h"

/* Checks the ranges of p's scalar fields (scale, dropout, windows, softcap). */
cflash_status cf_attn_check_params(const cflash_attn_params* p);
/* Checks p's ALiBi slopes against c->B, c->H and c->q's device, then fills c's resolved
 * parameters (scale from c->D when 0, causal folded into window_right, softcap, dropout, seed,
 * offset, deterministic). c->B, H, D and q must be set. */
struct cf_attn_call;
cflash_status cf_attn_apply_params(struct cf_attn_call* c, const cflash_attn_params* p);

/* varlen = 0: cu_* are ignored (NULL). */
cflash_status cf_attn_fwd_entry(cflash_context* ctx, cf_explain* explain, int varlen,
                                const cflash_attn_params* p, const DLTensor* q, const DLTensor* k,
                                const DLTensor* v, const DLTensor* cu_q, const DLTensor* cu_k,
                                int64_t max_q, int64_t max_k, DLTensor* out, DLTensor* lse);
cflash_status cf_attn_bwd_entry(cflash_context* ctx, cf_explain* explain, int varlen,
                                const cflash_attn_params* p, const DLTensor* dout,
                                const DLTensor* q, const DLTensor* k, const DLTensor* v,
                                const DLTensor* out, const DLTensor* lse, const DLTensor* cu_q,
                                const DLTensor* cu_k, int64_t max_q, int64_t max_k, DLTensor* dq,
                                DLTensor* dk, DLTensor* dv);

#endif
