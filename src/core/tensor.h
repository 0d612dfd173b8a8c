/* Internal tensor views: a DLTensor reduced to a data pointer (byte_offset applied), a dtype code,
 * shape and strides in elements, and the device. Kernels see only views, never DLTensors. */
#ifndef CFLASH_CORE_TENSOR_H
#define CFLASH_CORE_TENSOR_H

#include <stdint.h>
#include <string.h>

#include "cflash.h"
#include "cflash_experimental.h"

/* The element types are the experimental API's (one type, so the tool's and the tests' values
 * pass unconverted); the short names keep kernel code readable. */
typedef cflash_dtype cf_dtype;
#define CF_F32 CFLASH_DTYPE_F32
#define CF_F16 CFLASH_DTYPE_F16
#define CF_BF16 CFLASH_DTYPE_BF16
#define CF_I32 CFLASH_DTYPE_I32
#define CF_U8 CFLASH_DTYPE_U8
#define CF_I8 CFLASH_DTYPE_I8
#define CF_F8E4M3 CFLASH_DTYPE_F8E4M3
#define CF_F8E5M2 CFLASH_DTYPE_F8E5M2
/* DLPack's float8 type codes (dlpack.h 1.1 and later; the 0.6 header this builds with has none):
 * read by number. */
#define CF_DL_FLOAT8_E4M3FN 10
#define CF_DL_FLOAT8_E5M2 12
#define CF_DTYPE_BAD CFLASH_DTYPE_INVALID

#define CF_MAX_DIMS 6

typedef struct cf_view {
    void* data; /* NULL when the tensor is absent (optional arguments) */
    cf_dtype dtype;
    int ndim;
    int64_t shape[CF_MAX_DIMS];
    int64_t stride[CF_MAX_DIMS]; /* in elements */
    int device_type;             /* kDLCPU, kDLCUDA, ... */
    int device_id;
} cf_view;

cf_dtype cf_dtype_of(DLDataType t);
const char* cf_dtype_name(cf_dtype d);
size_t cf_dtype_size(cf_dtype d);
/* Writes "float32" / "int8x4" / ... for any DLDataType into buf. */
void cf_dl_dtype_str(DLDataType t, char* buf, size_t n);
const char* cf_device_name(int device_type);

/* Fills v from t. name is used in messages ("q"). Checks: t non-NULL, ndim in [1, CF_MAX_DIMS],
 * shape >= 0, fewer than 2^63 elements, data non-NULL unless empty, and every element inside the
 * address space (no stride, offset or extent wraps; element offsets fit in int64). An empty view
 * (a dim 0) gets data pointing at a static placeholder (never NULL: kernels may form addresses
 * from it but touch nothing) and dense strides. */
cflash_status cf_view_from(cf_view* v, const DLTensor* t, const char* name);
/* An output whose elements may share an address (stride 0 in a dim of size > 1, a broadcast
 * view; or dims that do not nest, each |stride| past the reach of the smaller ones) would have
 * several of its elements written to one address, by several threads: rejected. Call after t is
 * validated (cf_view_from); NULL (an absent optional output) passes. */
cflash_status cf_check_output(const DLTensor* t, const char* name);
/* DLPack's kDLBool (code 6, from DLPack 0.8; the installed dlpack.h may predate it). */
#define CF_DL_BOOL 6
/* A byte mask (attn_mask, the far keys' keep): v, loaded from a tensor of dtype t, must be uint8 or
 * bool of 8 bits (then taken as uint8 in v->dtype); else "NAME: dtype T, expected uint8 or bool
 * (8 bits)". */
cflash_status cf_view_mask8(cf_view* v, DLDataType t, const char* name);
/* An output that shares memory with an input of its call (or with another output) would be
 * written while the call still reads the other: rejected, naming both, unless no byte of the
 * one is a byte of the other (their spans apart, or an exact search over their strides finds no
 * common byte: views of one packed tensor pass). Absent or empty views, and views on other
 * devices, pass. For validated views (cf_view_from). */
cflash_status cf_check_apart(const cf_view* out, const char* oname, const cf_view* in,
                             const char* iname);
/* 1 if a and b are the same elements: same memory, device, dtype, shape, and strides on every
 * dim of more than one element (an output written in place over an input). */
int cf_view_same(const cf_view* a, const cf_view* b);
/* Each of the n_out outputs (absent ones pass) apart from each of the n_in inputs and from the
 * outputs before it (cf_check_apart), except that output i may be exactly input j's view
 * (cf_view_same) where bit i * n_in + j of in_place is set: the call's kernels read each element
 * of that input before they write the same element of the output, and read it nowhere else. */
cflash_status cf_check_outputs_apart(const cf_view* const* out, const char* const* out_name,
                                     int n_out, const cf_view* const* in,
                                     const char* const* in_name, int n_in, uint64_t in_place);
/* Writes "(2, 17, 4, 64)" into buf. */
void cf_shape_str(const cf_view* v, char* buf, size_t n);
/* 1 if the elements of v are exactly the dense row-major block. */
int cf_view_contiguous(const cf_view* v);
int64_t cf_view_numel(const cf_view* v);
/* Prepends a dim of size 1 and stride 0: a varlen view (total, h, d) becomes the (1, total, h, d)
 * that batch-mode kernels index as b = 0. */
void cf_view_lift(cf_view* v);

/* ---- fp16 / bf16 <-> fp32, exact round-to-nearest-even ---- */
static inline float cf_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t cf_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
/* fp16 bits as fp32, exactly: normal halves by their bits rebased (exponent bias 15 -> 127),
 * infinities and NaNs by their bits, subnormals as their integer times 2^-24 (normal fp32
 * operands and result: flush-to-zero modes cannot touch them). */
static inline float cf_f16_to_f32(uint16_t h) {
    const uint32_t a = h & 0x7fffu;
    float f;
    if (a < 0x400u) {
        f = (float)a * 0x1p-24f;
    } else {
        const uint32_t u = a >= 0x7c00u ? (a << 13) | 0x7f800000u : (a << 13) + (112u << 23);
        memcpy(&f, &u, 4);
    }
    return h & 0x8000u ? -f : f;
}
uint16_t cf_f32_to_f16(float f);

/* Element (flat index i, already scaled by strides) of data with dtype d, as float / stored. */
static inline float cf_load(const void* data, cf_dtype d, int64_t i) {
    switch (d) {
    case CF_F32: return ((const float*)data)[i];
    case CF_F16: return cf_f16_to_f32(((const uint16_t*)data)[i]);
    case CF_BF16: return cf_bf16_to_f32(((const uint16_t*)data)[i]);
    default: return 0.0f;
    }
}
static inline void cf_store(void* data, cf_dtype d, int64_t i, float x) {
    switch (d) {
    case CF_F32: ((float*)data)[i] = x; break;
    case CF_F16: ((uint16_t*)data)[i] = cf_f32_to_f16(x); break;
    case CF_BF16: ((uint16_t*)data)[i] = cf_f32_to_bf16(x); break;
    default: break;
    }
}
/* Rounds x to dtype d and back (what storing then loading gives). */
static inline float cf_round_to(cf_dtype d, float x) {
    switch (d) {
    case CF_F16: return cf_f16_to_f32(cf_f32_to_f16(x));
    case CF_BF16: return cf_bf16_to_f32(cf_f32_to_bf16(x));
    default: return x;
    }
}

#endif
