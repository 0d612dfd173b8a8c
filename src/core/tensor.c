/* DLTensor -> cf_view, dtype names and sizes, and exact fp16 conversions. */
#include <stdio.h>

#include "core/status.h"
#include "core/tensor.h"

cf_dtype cf_dtype_of(DLDataType t) {
    if (t.lanes != 1) return CF_DTYPE_BAD;
    if (t.code == kDLFloat && t.bits == 32) return CF_F32;
    if (t.code == kDLFloat && t.bits == 16) return CF_F16;
    if (t.code == kDLBfloat && t.bits == 16) return CF_BF16;
    if (t.code == kDLInt && t.bits == 32) return CF_I32;
    if (t.code == kDLUInt && t.bits == 8) return CF_U8;
    if (t.code == kDLInt && t.bits == 8) return CF_I8;
    if (t.code == CF_DL_FLOAT8_E4M3FN && t.bits == 8) return CF_F8E4M3;
    if (t.code == CF_DL_FLOAT8_E5M2 && t.bits == 8) return CF_F8E5M2;
    return CF_DTYPE_BAD;
}

const char* cf_dtype_name(cf_dtype d) {
    switch (d) {
    case CF_F32: return "float32";
    case CF_F16: return "float16";
    case CF_BF16: return "bfloat16";
    case CF_I32: return "int32";
    case CF_U8: return "uint8";
    case CF_I8: return "int8";
    case CF_F8E4M3: return "float8_e4m3fn";
    case CF_F8E5M2: return "float8_e5m2";
    default: return "unsupported";
    }
}

size_t cf_dtype_size(cf_dtype d) {
    switch (d) {
    case CF_F32:
    case CF_I32: return 4;
    case CF_F16:
    case CF_BF16: return 2;
    case CF_U8:
    case CF_I8:
    case CF_F8E4M3:
    case CF_F8E5M2: return 1;
    default: return 0;
    }
}

void cf_dl_dtype_str(DLDataType t, char* buf, size_t n) {
    if ((t.code == CF_DL_FLOAT8_E4M3FN || t.code == CF_DL_FLOAT8_E5M2) && t.bits == 8 &&
        t.lanes == 1) {
        snprintf(buf, n, "%s", t.code == CF_DL_FLOAT8_E5M2 ? "float8_e5m2" : "float8_e4m3fn");
        return;
    }
    const char* code = t.code == kDLFloat    ? "float"
                       : t.code == kDLBfloat ? "bfloat"
                       : t.code == kDLInt    ? "int"
                       : t.code == kDLUInt   ? "uint"
                                             : "code?";
    if (t.lanes == 1)
        snprintf(buf, n, "%s%u", code, (unsigned)t.bits);
    else
        snprintf(buf, n, "%s%ux%u", code, (unsigned)t.bits, (unsigned)t.lanes);
}

const char* cf_device_name(int device_type) {
    switch (device_type) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda";
    case kDLCUDAHost: return "cuda_host";
    case kDLCUDAManaged: return "cuda_managed";
    default: return "other";
    }
}

cflash_status cf_view_from(cf_view* v, const DLTensor* t, const char* name) {
    CFLASH_RETURN_IF(!t, CFLASH_ERR_INVALID_ARGUMENT, "%s: is NULL, expected a tensor", name);
    CFLASH_RETURN_IF(t->ndim < 1 || t->ndim > CF_MAX_DIMS, CFLASH_ERR_INVALID_ARGUMENT,
                     "%s: ndim is %d, expected 1..%d", name, t->ndim, CF_MAX_DIMS);
    CFLASH_RETURN_IF(!t->shape, CFLASH_ERR_INVALID_ARGUMENT, "%s: shape is NULL", name);
    /* An empty tensor may have no data (PyTorch and NumPy give NULL for zero elements). */
    int empty = 0;
    for (int i = 0; i < t->ndim; i++)
        empty |= t->shape[i] == 0;
    CFLASH_RETURN_IF(!t->data && !empty, CFLASH_ERR_INVALID_ARGUMENT, "%s: data is NULL", name);
    v->dtype = cf_dtype_of(t->dtype);
    v->ndim = t->ndim;
    v->device_type = t->device.device_type;
    v->device_id = t->device.device_id;
    int64_t dense = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        CFLASH_RETURN_IF(t->shape[i] < 0, CFLASH_ERR_INVALID_ARGUMENT,
                         "%s: shape[%d] is %lld, expected >= 0", name, i, (long long)t->shape[i]);
        v->shape[i] = t->shape[i];
        v->stride[i] = t->strides ? t->strides[i] : dense;
        dense *= t->shape[i];
    }
    for (int i = t->ndim; i < CF_MAX_DIMS; i++)
        v->shape[i] = 1, v->stride[i] = 0;
    v->data = (char*)t->data + t->byte_offset;
    return CFLASH_OK;
}

void cf_shape_str(const cf_view* v, char* buf, size_t n) {
    size_t used = 0;
    used += (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < v->ndim && used < n; i++)
        used +=
            (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)v->shape[i]);
    if (used < n) snprintf(buf + used, n - used, ")");
}

int cf_view_contiguous(const cf_view* v) {
    int64_t dense = 1;
    for (int i = v->ndim - 1; i >= 0; i--) {
        if (v->shape[i] != 1 && v->stride[i] != dense) return 0;
        dense *= v->shape[i];
    }
    return 1;
}

void cf_view_lift(cf_view* v) {
    if (v->ndim >= CF_MAX_DIMS) return; /* (views lifted here have 2 or 3 dims) */
    for (int i = v->ndim; i > 0; i--)
        v->shape[i] = v->shape[i - 1], v->stride[i] = v->stride[i - 1];
    v->shape[0] = 1;
    v->stride[0] = 0;
    v->ndim++;
}

int64_t cf_view_numel(const cf_view* v) {
    int64_t n = 1;
    for (int i = 0; i < v->ndim; i++)
        n *= v->shape[i];
    return n;
}

float cf_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0) {
        if (m == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            e = 127 - 15 + 1;
            while (!(m & 0x400))
                m <<= 1, e--;
            u = sign | (e << 23) | ((m & 0x3ff) << 13);
        }
    } else if (e == 31) {
        u = sign | 0x7f800000u | (m << 13);
    } else {
        u = sign | ((e + 127 - 15) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t cf_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to inf */
    if (a < 0x38800000u) {                                  /* subnormal or zero in fp16 */
        if (a < 0x33000000u) return (uint16_t)sign;         /* < half the smallest subnormal */
        uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = a - 0x38000000u; /* rebias exponent 127 -> 15 */
    r = (r + 0xfff + ((r >> 13) & 1)) >> 13;
    return (uint16_t)(sign | r);
}
