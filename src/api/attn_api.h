/* The attention parameter checks that the KV-cache entry point shares with attention's. */
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

/* Issue 13's attention fields in the KV-cache call: sinks checked and resolved into c as in the
 * attention calls (c's heads and q known), the features it does not take refused (status and
 * message). */
cflash_status cf_attn_kvcache_features(struct cf_attn_call* c, const cflash_attn_params* p);

#endif
