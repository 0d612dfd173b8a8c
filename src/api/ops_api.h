/* The argument checks shared by the entry points of the ops around attention (rotary, norm, KV
 * cache, merge), in src/api/ops_check.c. */
#ifndef CFLASH_API_OPS_API_H
#define CFLASH_API_OPS_API_H

#include "cflash.h"
#include "core/ops_call.h"
#include "dispatch/dispatch.h"

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
