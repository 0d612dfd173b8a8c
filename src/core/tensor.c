/* DLTensor -> cf_view, dtype names and sizes, and exact fp16 conversions. */
#include <stdint.h>
#include <stdio.h>

#include "core/checked.h"
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

cflash_status cf_view_mask8(cf_view* v, DLDataType t, const char* name) {
    if (t.code == CF_DL_BOOL && t.bits == 8 && t.lanes == 1) v->dtype = CF_U8;
    if (v->dtype == CF_U8) return CFLASH_OK;
    char got[32];
    cf_dl_dtype_str(t, got, sizeof got);
    return cf_error(CFLASH_ERR_INVALID_ARGUMENT, "%s: dtype %s, expected uint8 or bool (8 bits)",
                    name, got);
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

/* The data of every empty view: no element of it is ever read or written, but kernels still form
 * row addresses from it, and arithmetic on a NULL pointer is undefined. */
static char cf_empty_storage[64] __attribute__((aligned(64)));

/* "(a, b, c)" of n int64s into buf. */
static void dims_str(const int64_t* d, int n, char* buf, size_t len) {
    size_t used = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "", (long long)d[i]);
    if (used < len) snprintf(buf + used, len - used, ")");
}

/* Checks that every element of t lies inside the address space: the element offsets reached,
 * sum of stride_i * (shape_i - 1) split by sign, times the element size, added to data +
 * byte_offset, all without wrapping. Then offsets a kernel computes from in-range indices fit in
 * int64 too. t is non-empty with strides in v. */
static cflash_status check_extent(const cf_view* v, const DLTensor* t, const char* name) {
    const int64_t es = (int64_t)(cf_dtype_size(v->dtype) ? cf_dtype_size(v->dtype) : 1);
    int64_t lo = 0, hi = 0, span, lo_b, hi_b;
    int bad = 0;
    for (int i = 0; i < v->ndim && !bad; i++) {
        bad |= cf_mul_i64(v->stride[i], v->shape[i] - 1, &span);
        if (!bad) bad |= span < 0 ? cf_add_i64(lo, span, &lo) : cf_add_i64(hi, span, &hi);
    }
    bad = bad || cf_mul_i64(lo, es, &lo_b) || cf_add_i64(hi, 1, &hi) || cf_mul_i64(hi, es, &hi_b);
    const uintptr_t base = (uintptr_t)t->data;
    bad = bad || t->byte_offset > (uint64_t)(UINTPTR_MAX - base);
    if (!bad) {
        const uintptr_t first = base + (uintptr_t)t->byte_offset;
        bad = (uint64_t)(-(lo_b + 1)) + 1 > first || (uint64_t)hi_b > UINTPTR_MAX - first;
    }
    if (!bad) return CFLASH_OK;
    char sh[160], st[160];
    dims_str(v->shape, v->ndim, sh, sizeof sh);
    dims_str(v->stride, v->ndim, st, sizeof st);
    return cf_error(CFLASH_ERR_INVALID_ARGUMENT,
                    "%s: the view reaches outside the address space: shape %s, strides %s "
                    "(elements), byte_offset %llu from data %p; expected strides and an offset "
                    "whose elements are addressable",
                    name, sh, st, (unsigned long long)t->byte_offset, t->data);
}

cflash_status cf_view_from(cf_view* v, const DLTensor* t, const char* name) {
    CFLASH_RETURN_IF(!t, CFLASH_ERR_INVALID_ARGUMENT, "%s: is NULL, expected a tensor", name);
    CFLASH_RETURN_IF(t->ndim < 1 || t->ndim > CF_MAX_DIMS, CFLASH_ERR_INVALID_ARGUMENT,
                     "%s: ndim is %d, expected 1..%d", name, t->ndim, CF_MAX_DIMS);
    CFLASH_RETURN_IF(!t->shape, CFLASH_ERR_INVALID_ARGUMENT, "%s: shape is NULL", name);
    for (int i = 0; i < t->ndim; i++)
        CFLASH_RETURN_IF(t->shape[i] < 0, CFLASH_ERR_INVALID_ARGUMENT,
                         "%s: shape[%d] is %lld, expected >= 0", name, i, (long long)t->shape[i]);
    int64_t numel;
    if (cf_prod_i64(t->shape, t->ndim, &numel)) {
        char sh[160];
        dims_str(t->shape, t->ndim, sh, sizeof sh);
        return cf_error(CFLASH_ERR_INVALID_ARGUMENT,
                        "%s: shape %s has more than INT64_MAX elements, expected fewer", name, sh);
    }
    /* An empty tensor may have no data (PyTorch and NumPy give NULL for zero elements). */
    CFLASH_RETURN_IF(!t->data && numel > 0, CFLASH_ERR_INVALID_ARGUMENT, "%s: data is NULL", name);
    v->dtype = cf_dtype_of(t->dtype);
    v->ndim = t->ndim;
    v->device_type = t->device.device_type;
    v->device_id = t->device.device_id;
    for (int i = t->ndim; i < CF_MAX_DIMS; i++)
        v->shape[i] = 1, v->stride[i] = 0;
    if (numel == 0) {
        /* Nothing to address: dense strides with the zero dims counted as 1 (0 where that
         * overflows), whatever the caller's strides were. */
        int64_t dense = 1;
        for (int i = t->ndim - 1; i >= 0; i--) {
            v->shape[i] = t->shape[i];
            v->stride[i] = dense;
            if (dense && cf_mul_i64(dense, t->shape[i] > 0 ? t->shape[i] : 1, &dense)) dense = 0;
        }
        v->data = cf_empty_storage;
        return CFLASH_OK;
    }
    /* A dim of size 1 is never stepped along, so its stride is free (DLPack producers leave any
     * value there): 0 here, so that no kernel multiplies a wild one by the element size. */
    int64_t dense = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        v->shape[i] = t->shape[i];
        v->stride[i] = t->shape[i] == 1 ? 0 : t->strides ? t->strides[i] : dense;
        dense *= t->shape[i]; /* a partial product of numel: no overflow */
    }
    CFLASH_FORWARD_IF_ERROR(check_extent(v, t, name));
    v->data = (char*)t->data + t->byte_offset;
    return CFLASH_OK;
}

static uint64_t abs_u64(int64_t x) {
    return x < 0 ? 0 - (uint64_t)x : (uint64_t)x;
}

cflash_status cf_check_output(const DLTensor* t, const char* name) {
    if (!t || !t->strides) return CFLASH_OK;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] == 0)
            return CFLASH_OK; /* nothing is written (NumPy gives such strides 0) */
    for (int i = 0; i < t->ndim; i++)
        CFLASH_RETURN_IF(t->shape[i] > 1 && t->strides[i] == 0, CFLASH_ERR_INVALID_ARGUMENT,
                         "%s: stride 0 in dim %d of size %lld, expected an output whose elements "
                         "do not overlap (not a broadcast view)",
                         name, i, (long long)t->shape[i]);
    /* Distinct addresses for distinct elements, by a sufficient test (an exact one is a knapsack
     * problem): the dims of size > 1, ordered by |stride|, nest -- each |stride| exceeds the
     * reach sum |stride_j| * (shape_j - 1) of the smaller ones, as in every dense, padded,
     * sliced, permuted or reversed view. Else two elements may share an address, and the threads
     * writing them race (the result would differ from run to run). */
    int dim[CF_MAX_DIMS], n = 0;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] > 1) {
            int j = n++;
            for (; j > 0 && abs_u64(t->strides[dim[j - 1]]) > abs_u64(t->strides[i]); j--)
                dim[j] = dim[j - 1];
            dim[j] = i;
        }
    uint64_t reach = 0; /* largest offset, in elements, that the smaller dims reach */
    for (int j = 0; j < n; j++) {
        const int i = dim[j];
        const uint64_t st = abs_u64(t->strides[i]);
        if (st <= reach) {
            char sh[160], sd[160];
            dims_str(t->shape, t->ndim, sh, sizeof sh);
            dims_str(t->strides, t->ndim, sd, sizeof sd);
            return cf_error(CFLASH_ERR_INVALID_ARGUMENT,
                            "%s: elements share an address: shape %s, strides %s; dim %d (stride "
                            "%lld) steps within the reach %llu of the dims with smaller strides, "
                            "expected an output whose dims, ordered by |stride|, each step past "
                            "the reach of the smaller ones",
                            name, sh, sd, i, (long long)t->strides[i], (unsigned long long)reach);
        }
        uint64_t span;
        /* cf_view_from bounded every |stride| * (shape - 1), and their sum, by the address space */
        if (__builtin_mul_overflow(st, (uint64_t)(t->shape[i] - 1), &span) ||
            __builtin_add_overflow(reach, span, &reach))
            reach = UINT64_MAX;
    }
    return CFLASH_OK;
}

/* The bytes [lo, hi) that v's elements cover; lo == hi when it has none (absent or empty). */
static void view_span(const cf_view* v, uintptr_t* lo, uintptr_t* hi) {
    *lo = *hi = 0;
    if (!v->data || v->data == (void*)cf_empty_storage) return;
    uint64_t neg = 0, pos = 0; /* cf_view_from bounded these, in bytes too, by the address space */
    for (int i = 0; i < v->ndim; i++) {
        if (v->shape[i] == 0) return;
        const uint64_t r = abs_u64(v->stride[i]) * (uint64_t)(v->shape[i] - 1);
        *(v->stride[i] < 0 ? &neg : &pos) += r;
    }
    const uint64_t es = cf_dtype_size(v->dtype);
    *lo = (uintptr_t)v->data - (uintptr_t)(neg * es);
    *hi = (uintptr_t)v->data + (uintptr_t)((pos + 1) * es);
}

/* The search of views_apart: terms w[k] * m[k] (w > 0, m in [lo[k], hi[k]], w descending) whose
 * sum, plus p, should land in [L, U]; 1 when some choice does, 0 when none, -1 past *budget
 * nodes. rmin / rmax[k]: what the terms from k on can add. */
typedef struct apart_terms {
    __int128 w[2 * CF_MAX_DIMS], lo[2 * CF_MAX_DIMS], hi[2 * CF_MAX_DIMS];
    __int128 rmin[2 * CF_MAX_DIMS + 1], rmax[2 * CF_MAX_DIMS + 1];
    int n;
} apart_terms;

static __int128 div_floor(__int128 a, __int128 b) { /* b > 0 */
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

static int apart_hit(const apart_terms* t, int k, __int128 p, __int128 L, __int128 U, int* budget) {
    if (--*budget < 0) return -1;
    if (k == t->n) return p >= L && p <= U;
    if (p + t->rmin[k] > U || p + t->rmax[k] < L) return 0;
    /* m with p + w m + (the rest's range) meeting [L, U] */
    __int128 m0 = -div_floor(-(L - p - t->rmax[k + 1]), t->w[k]); /* ceil */
    __int128 m1 = div_floor(U - p - t->rmin[k + 1], t->w[k]);
    if (m0 < t->lo[k]) m0 = t->lo[k];
    if (m1 > t->hi[k]) m1 = t->hi[k];
    for (__int128 m = m0; m <= m1; m++) {
        const int r = apart_hit(t, k + 1, p + t->w[k] * m, L, U, budget);
        if (r) return r;
    }
    return 0;
}

/* Whether a and b share no byte: element i of a at pa + sum_k i_k sa_k (bytes), j of b at
 * pb + sum_k j_k sb_k; their bytes meet where the difference of the two, pb - pa +
 * sum_k j_k sb_k - sum_k i_k sa_k, lies in (-es_b, es_a). Searched exactly, dim by dim from the
 * largest stride (equal strides of a and b merged into one difference j - i), within a budget of
 * nodes: the packed layouts (q, k, v or dq, dk, dv as views of one (B, S, 3, H, D) or (B, S, H + 2
 * Hk, D) tensor) take a few dozen. 0 when they meet or when the budget runs out. */
static int views_apart(const cf_view* a, const cf_view* b) {
    const int64_t ea = (int64_t)cf_dtype_size(a->dtype), eb = (int64_t)cf_dtype_size(b->dtype);
    apart_terms t;
    t.n = 0;
    for (int side = 0; side < 2; side++) {
        const cf_view* v = side ? b : a;
        const int64_t es = side ? eb : ea;
        for (int i = 0; i < v->ndim; i++) {
            if (v->shape[i] < 2 || v->stride[i] == 0) continue; /* (stride 0: one address) */
            /* the term's sign: + for b's indices, - for a's; a negative stride flips it */
            const int neg = (v->stride[i] < 0) != (side == 0);
            const __int128 w = (__int128)abs_u64(v->stride[i]) * es, top = v->shape[i] - 1;
            const __int128 lo = neg ? -top : 0, hi = neg ? 0 : top;
            int k = 0;
            while (k < t.n && t.w[k] != w)
                k++;
            if (k == t.n) t.w[k] = w, t.lo[k] = 0, t.hi[k] = 0, t.n++;
            t.lo[k] += lo, t.hi[k] += hi;
        }
    }
    for (int j = 1; j < t.n; j++) /* largest stride first */
        for (int i = j; i > 0 && t.w[i - 1] < t.w[i]; i--) {
            __int128 x = t.w[i];
            t.w[i] = t.w[i - 1], t.w[i - 1] = x;
            x = t.lo[i], t.lo[i] = t.lo[i - 1], t.lo[i - 1] = x;
            x = t.hi[i], t.hi[i] = t.hi[i - 1], t.hi[i - 1] = x;
        }
    t.rmin[t.n] = t.rmax[t.n] = 0;
    for (int k = t.n - 1; k >= 0; k--)
        t.rmin[k] = t.rmin[k + 1] + t.w[k] * t.lo[k], t.rmax[k] = t.rmax[k + 1] + t.w[k] * t.hi[k];
    const __int128 d = (__int128)(intptr_t)((uintptr_t)b->data - (uintptr_t)a->data);
    int budget = 4096;
    /* b's element minus a's in (-eb, ea): the sum in [-eb - d + 1, ea - d - 1] */
    return apart_hit(&t, 0, 0, -eb - d + 1, ea - d - 1, &budget) == 0;
}

cflash_status cf_check_apart(const cf_view* out, const char* oname, const cf_view* in,
                             const char* iname) {
    if (out->device_type != in->device_type || out->device_id != in->device_id) return CFLASH_OK;
    uintptr_t lo1, hi1, lo2, hi2;
    view_span(out, &lo1, &hi1);
    view_span(in, &lo2, &hi2);
    if (lo1 == hi1 || lo2 == hi2 || hi1 <= lo2 || hi2 <= lo1 || views_apart(out, in))
        return CFLASH_OK;
    return cf_error(CFLASH_ERR_INVALID_ARGUMENT,
                    "%s: shares memory with %s (bytes %p..%p and %p..%p meet), expected an output "
                    "apart from the call's inputs and other outputs (the call reads %s while it "
                    "writes %s)",
                    oname, iname, (void*)lo1, (void*)hi1, (void*)lo2, (void*)hi2, iname, oname);
}

int cf_view_same(const cf_view* a, const cf_view* b) {
    if (a->data != b->data || a->dtype != b->dtype || a->ndim != b->ndim ||
        a->device_type != b->device_type || a->device_id != b->device_id)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i] || (a->shape[i] > 1 && a->stride[i] != b->stride[i]))
            return 0;
    return 1;
}

cflash_status cf_check_outputs_apart(const cf_view* const* out, const char* const* out_name,
                                     int n_out, const cf_view* const* in,
                                     const char* const* in_name, int n_in, uint64_t in_place) {
    for (int i = 0; i < n_out; i++) {
        for (int j = 0; j < n_in; j++) {
            const int k = i * n_in + j;
            if (k < 64 && (in_place >> k & 1) && in[j]->data && cf_view_same(out[i], in[j]))
                continue;
            CFLASH_FORWARD_IF_ERROR(cf_check_apart(out[i], out_name[i], in[j], in_name[j]));
        }
        for (int j = 0; j < i; j++)
            CFLASH_FORWARD_IF_ERROR(cf_check_apart(out[i], out_name[i], out[j], out_name[j]));
    }
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
        if (cf_mul_i64(dense, v->shape[i], &dense)) return 0;
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
    int64_t n = 0;
    cf_prod_i64(v->shape, v->ndim, &n); /* fits: cf_view_from checked it */
    return n;
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
