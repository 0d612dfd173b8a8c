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

cflash_status cf_ops_block_table(cf_view* v, const DLTensor* t, int64_t B) {
    const int64_t want[2] = {B, -1};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(v, t, "block_table", 2, want, "(B, max_pages)"));
    CFLASH_RETURN_IF(v->dtype != CF_I32, INVALID, "block_table: dtype %s, expected int32",
                     cf_dtype_name(v->dtype));
    CFLASH_RETURN_IF(v->device_type != kDLCPU && v->device_type != kDLCUDAHost, INVALID,
                     "block_table: on %s, expected host memory (cpu or cuda_host)",
                     cf_device_name(v->device_type));
    CFLASH_RETURN_IF(v->shape[1] > 1 && v->stride[1] != 1, INVALID,
                     "block_table: last dimension has stride %lld, expected 1",
                     (long long)v->stride[1]);
    return CFLASH_OK;
}

cflash_status cf_ops_cu_seqlens(cf_view* v, const DLTensor* t, const char* name, int64_t n,
                                int64_t total, const char* total_name, int64_t* maxlen) {
    CFLASH_FORWARD_IF_ERROR(cf_ops_index(v, t, name, n));
    CFLASH_RETURN_IF(v->shape[0] < 1, INVALID, "%s: length 0, expected B + 1 >= 1", name);
    const int32_t* cu = v->data;
    CFLASH_RETURN_IF(cu[0] != 0, INVALID, "%s[0]: %d, expected 0", name, cu[0]);
    int64_t mx = 0;
    for (int64_t b = 0; b + 1 < v->shape[0]; b++) {
        CFLASH_RETURN_IF(cu[b + 1] < cu[b], INVALID,
                         "%s[%lld]: %d is less than %s[%lld] = %d, expected non-decreasing", name,
                         (long long)(b + 1), cu[b + 1], name, (long long)b, cu[b]);
        if (cu[b + 1] - cu[b] > mx) mx = cu[b + 1] - cu[b];
    }
    const int64_t last = v->shape[0] - 1;
    CFLASH_RETURN_IF(cu[last] > total, INVALID, "%s[%lld]: %d, expected at most %s = %lld", name,
                     (long long)last, cu[last], total_name, (long long)total);
    *maxlen = mx;
    return CFLASH_OK;
}
