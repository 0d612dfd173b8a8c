/* Argument checks shared by the entry points of the ops around attention (rotary, norm, KV
 * cache, merge): shapes, float dtypes and devices, host int32 index tensors. */
#include <stdio.h>

#include "api/ops_api.h"
#include "core/status.h"

#define INVALID CFLASH_ERR_INVALID_ARGUMENT

cflash_status cf_ops_shape(cf_view* v, const DLTensor* t, const char* name, int ndim,
                           const int64_t* want, const char* layout) {
    CFLASH_FORWARD_IF_ERROR(cf_view_from(v, t, name));
    CFLASH_RETURN_IF(v->ndim != ndim, INVALID, "%s: expected %d dims %s, got %d", name, ndim,
                     layout, v->ndim);
    for (int i = 0; i < ndim; i++) {
        if (!want || want[i] < 0 || v->shape[i] == want[i]) continue;
        char got[96];
        cf_shape_str(v, got, sizeof got);
        return cf_error(INVALID, "%s: shape %s, expected %s with dim %d = %lld", name, got, layout,
                        i, (long long)want[i]);
    }
    return CFLASH_OK;
}

cflash_status cf_ops_float(const cf_view* v, const char* name, const cf_view* ref,
                           const char* ref_name) {
    CFLASH_RETURN_IF(v->dtype != CF_F32 && v->dtype != CF_F16 && v->dtype != CF_BF16, INVALID,
                     "%s: dtype %s, expected float32, float16 or bfloat16", name,
                     cf_dtype_name(v->dtype));
    if (ref && (v->device_type != ref->device_type || v->device_id != ref->device_id))
        return cf_error(INVALID, "%s: on %s:%d, expected %s:%d (the device of %s)", name,
                        cf_device_name(v->device_type), v->device_id,
                        cf_device_name(ref->device_type), ref->device_id, ref_name);
    CFLASH_RETURN_IF(v->ndim && v->shape[v->ndim - 1] > 1 && v->stride[v->ndim - 1] != 1, INVALID,
                     "%s: last dimension has stride %lld, expected 1 (contiguous)", name,
                     (long long)v->stride[v->ndim - 1]);
    return CFLASH_OK;
}

cflash_status cf_ops_dtype_in(const cf_view* v, const char* name, cf_dtype allowed,
                              const char* allowed_what) {
    if (v->dtype == CF_F32 || (allowed != CF_DTYPE_BAD && v->dtype == allowed)) return CFLASH_OK;
    return cf_error(INVALID, "%s: dtype %s, expected %s", name, cf_dtype_name(v->dtype),
                    allowed_what);
}

cflash_status cf_ops_index(cf_view* v, const DLTensor* t, const char* name, int64_t n) {
    CFLASH_FORWARD_IF_ERROR(cf_view_from(v, t, name));
    CFLASH_RETURN_IF(v->dtype != CF_I32 || v->ndim != 1, INVALID,
                     "%s: %s with %d dims, expected int32 with 1 dim", name,
                     cf_dtype_name(v->dtype), v->ndim);
    CFLASH_RETURN_IF(n >= 0 && v->shape[0] != n, INVALID, "%s: length %lld, expected %lld", name,
                     (long long)v->shape[0], (long long)n);
    CFLASH_RETURN_IF(v->shape[0] > 1 && v->stride[0] != 1, INVALID,
                     "%s: stride %lld, expected 1 (contiguous)", name, (long long)v->stride[0]);
    CFLASH_RETURN_IF(v->device_type != kDLCPU && v->device_type != kDLCUDAHost, INVALID,
                     "%s: on %s, expected host memory (cpu or cuda_host)", name,
                     cf_device_name(v->device_type));
    return CFLASH_OK;
}
