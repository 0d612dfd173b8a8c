/* Internal entry points of the ops around attention (rotary, norm, KV cache, merge), shared by the
 * public functions and cflash_explain, and the argument checks they share (src/api/ops_check.c). */
#ifndef CFLASH_API_OPS_API_H
#define CFLASH_API_OPS_API_H

#include "cflash.h"
#include "core/ops_call.h"
#include "dispatch/dispatch.h"

/* ---- Entry points (explain != NULL: validate and choose, but do not run) ---- */
cflash_status cf_rotary_entry(cflash_context* ctx, cf_explain* explain,
                              const cflash_rotary_params* p, const DLTensor* x, const DLTensor* cos,
                              const DLTensor* sin, DLTensor* out);
cflash_status cf_norm_fwd_entry(cflash_context* ctx, cf_explain* explain,
                                const cflash_norm_params* p, const DLTensor* x,
                                const DLTensor* residual, const DLTensor* weight,
                                const DLTensor* bias, DLTensor* out, DLTensor* residual_out,
                                DLTensor* mean, DLTensor* rstd);
cflash_status cf_norm_bwd_entry(cflash_context* ctx, cf_explain* explain,
                                const cflash_norm_params* p, const DLTensor* dy, const DLTensor* x,
                                const DLTensor* weight, const DLTensor* bias, const DLTensor* mean,
                                const DLTensor* rstd, const DLTensor* dresidual_out, DLTensor* dx,
                                DLTensor* dweight, DLTensor* dbias, DLTensor* dresidual);
cflash_status cf_kvcache_entry(cflash_context* ctx, cf_explain* explain,
                               const cflash_attn_params* p, const cflash_kvcache_params* kp,
                               const DLTensor* q, DLTensor* k_cache, DLTensor* v_cache,
                               DLTensor* out, DLTensor* lse);
cflash_status cf_merge_entry(cflash_context* ctx, cf_explain* explain, const DLTensor* out_partial,
                             const DLTensor* lse_partial, DLTensor* out, DLTensor* lse);

/* Shared validation helpers (src/api/ops_check.c). */
/* Loads t (name) into v and checks ndim and each dim against want[i] (>= 0). */
cflash_status cf_ops_shape(cf_view* v, const DLTensor* t, const char* name, int ndim,
                           const int64_t* want, const char* layout);
/* Float dtype (f32/f16/bf16), same device as ref, last dim contiguous. */
cflash_status cf_ops_float(const cf_view* v, const char* name, const cf_view* ref,
                           const char* ref_name);
/* dtype must be float32 or allowed (CF_DTYPE_BAD = float32 only). */
cflash_status cf_ops_dtype_in(const cf_view* v, const char* name, cf_dtype allowed,
                              const char* allowed_what);
/* int32 [n] (n >= 0 checked; n < 0: any length) in host memory, contiguous. */
cflash_status cf_ops_index(cf_view* v, const DLTensor* t, const char* name, int64_t n);

#endif
