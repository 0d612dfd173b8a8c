/* cflash_attn_mask_far_keys: an additive mask as the boolean mask that hides the pairs whose
 * value lies so far below their row's largest that their softmax weight underflows to 0 (see
 * include/cflash.h). One pass over each row for its largest value and one to classify, 16-bit
 * rows converted to fp32 in a row buffer first; the rows split over the OpenMP threads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "api/context.h"
#include "cflash.h"
#include "core/checked.h"
#include "core/status.h"
#include "core/tensor.h"
#include "core/threads.h"

#define INVALID CFLASH_ERR_INVALID_ARGUMENT

/* fp16 bits as fp32, exactly as cf_f16_to_f32 gives them, without branches: a loop of them
 * vectorizes (subnormal halves as their integer times 2^-24, whatever MXCSR's DAZ says). */
static inline float f16_to_f32_flat(uint16_t h) {
    const uint32_t a = h & 0x7fffu, sub = 0u - (uint32_t)(a < 0x400u),
                   inf = 0u - (uint32_t)(a >= 0x7c00u); /* (masks: GCC if-converts no branch) */
    const float fs = (float)(int32_t)a * 0x1p-24f;
    uint32_t us;
    memcpy(&us, &fs, 4);
    const uint32_t big = ((a << 13) + (~inf & (112u << 23))) | (inf & 0x7f800000u);
    const uint32_t u = (sub & us) | (~sub & big) | (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Row i of n values of dtype dt at p as fp32: p itself (fp32) or buf. */
static const float* row_f32(const void* p, cf_dtype dt, int64_t n, float* buf) {
    const uint16_t* h = p;
    if (dt == CF_F32) return p;
    if (dt == CF_BF16)
#pragma omp simd
        for (int64_t j = 0; j < n; j++)
            buf[j] = cf_bf16_to_f32(h[j]);
    else
#pragma omp simd
        for (int64_t j = 0; j < n; j++)
            buf[j] = f16_to_f32_flat(h[j]);
    return buf;
}

/* The smallest float >= t (t not NaN): for a float x, x < t exactly iff x < that float. */
static float float_at_least(double t) {
    float f = (float)t;
    if ((double)f < t) f = nextafterf(f, INFINITY);
    return f;
}

/* Row x of n values into keep (k), with *hides and *zero updated (see cflash.h). */
static void classify_row(const float* x, int64_t n, double margin, uint8_t* k, int* hides,
                         int* zero) {
    /* (one vector loop over the bits: a float's bits, the 31 below the sign flipped where it
     * is negative, order as int32s do, and integer lanes vectorize where a float max
     * does not for clang without -ffast-math; NaN found by its bits, top read only without) */
    int32_t most = INT32_MIN;
    uint32_t nanb = 0;
#pragma omp simd reduction(max : most) reduction(| : nanb)
    for (int64_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &x[j], 4);
        nanb |= (uint32_t)((u & 0x7fffffffu) > 0x7f800000u);
        const int32_t key = (int32_t)(u ^ ((0u - (u >> 31)) & 0x7fffffffu));
        most = key > most ? key : most;
    }
    const int nan = nanb != 0;
    const uint32_t mu = (uint32_t)most ^ ((0u - ((uint32_t)most >> 31)) & 0x7fffffffu);
    float top;
    memcpy(&top, &mu, 4);
    if (nan || !isfinite(top)) { /* NaN, +inf or every value -inf: the row keeps every key */
        memset(k, 1, (size_t)n);
        *zero = 0; /* (such a row holds a value that is not 0) */
        return;
    }
    const float t = float_at_least((double)top - margin);
    int hid = 0, nonzero = 0;
    for (int64_t j = 0; j < n; j++) {
        const int keep = !(x[j] < t);
        k[j] = (uint8_t)keep;
        hid |= !keep;
        nonzero |= keep & (x[j] != 0.0f);
    }
    *hides |= hid;
    *zero &= !nonzero;
}

cflash_status cflash_attn_mask_far_keys(const DLTensor* bias, double margin, DLTensor* keep,
                                        int* flags) {
    CFLASH_RETURN_IF(!flags, INVALID, "flags: is NULL, expected an int to receive the flags");
    *flags = 0;
    CFLASH_RETURN_IF(!(margin >= 0.0) || !isfinite(margin), INVALID,
                     "margin: %g, expected a finite value >= 0", margin);
    cf_view b, k;
    CFLASH_FORWARD_IF_ERROR(cf_view_from(&b, bias, "bias"));
    CFLASH_RETURN_IF(b.ndim != 4, INVALID, "bias: expected 4 dims (B, H, Sq, Sk), got %d", b.ndim);
    CFLASH_RETURN_IF(b.dtype != CF_F32 && b.dtype != CF_F16 && b.dtype != CF_BF16, INVALID,
                     "bias: dtype %s, expected float32, float16 or bfloat16",
                     cf_dtype_name(b.dtype));
    CFLASH_RETURN_IF(b.device_type != kDLCPU, INVALID, "bias: on %s, expected cpu",
                     cf_device_name(b.device_type));
    CFLASH_FORWARD_IF_ERROR(cf_view_from(&k, keep, "keep"));
    CFLASH_FORWARD_IF_ERROR(cf_view_mask8(&k, keep->dtype, "keep"));
    CFLASH_RETURN_IF(k.device_type != kDLCPU, INVALID, "keep: on %s, expected cpu",
                     cf_device_name(k.device_type));
    for (int i = 0; i < 4; i++)
        if (k.ndim != 4 || k.shape[i] != b.shape[i]) {
            char got[96], want[96];
            cf_shape_str(&k, got, sizeof got);
            cf_shape_str(&b, want, sizeof want);
            return cf_error(INVALID, "keep: shape %s, expected that of bias, %s", got, want);
        }
    for (int i = 0; i < 2; i++) {
        const cf_view* v = i ? &k : &b;
        CFLASH_RETURN_IF(v->shape[3] > 1 && v->stride[3] != 1, INVALID,
                         "%s: last dimension has stride %lld, expected 1 (contiguous)",
                         i ? "keep" : "bias", (long long)v->stride[3]);
    }
    CFLASH_FORWARD_IF_ERROR(cf_check_output(keep, "keep"));
    CFLASH_FORWARD_IF_ERROR(cf_check_apart(&k, "keep", &b, "bias"));
    int hides = 0, zero = 1;
    if (cf_view_numel(&b) == 0) { /* (the other dims may be huge) */
        *flags = CFLASH_FAR_KEYS_ZERO;
        return CFLASH_OK;
    }
    const int64_t n = b.shape[3], rows = cf_view_numel(&b) / n;
    const int64_t es = (int64_t)cf_dtype_size(b.dtype); /* (signed: strides may be negative) */
    /* (threads as a call with no context: all of OpenMP's; bytes read and written for the cut) */
    const int nt =
        cf_threads_items(cf_threads_resolve("far_keys", cf_context_threads(NULL),
                                            (double)rows * (double)n * (double)(es + 1), 0),
                         rows);
    int64_t bytes; /* (a row buffer per thread for 16-bit rows) */
    CFLASH_RETURN_IF(
        cf_mul_i64(n, (int64_t)sizeof(float) * nt, &bytes) || (uint64_t)bytes > SIZE_MAX,
        CFLASH_ERR_OUT_OF_MEMORY, "bias: rows of %lld values do not fit in memory", (long long)n);
    float* buf = b.dtype == CF_F32 ? NULL : malloc((size_t)bytes);
    CFLASH_RETURN_IF(b.dtype != CF_F32 && !buf, CFLASH_ERR_OUT_OF_MEMORY,
                     "out of memory for %d rows of %lld values", nt, (long long)n);
    const int64_t d1 = b.shape[1], d2 = b.shape[2];
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : hides) reduction(& : zero)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i0 = r / (d1 * d2), i1 = r / d2 % d1, i2 = r % d2;
        const char* row =
            (const char*)b.data + (i0 * b.stride[0] + i1 * b.stride[1] + i2 * b.stride[2]) * es;
        uint8_t* out = (uint8_t*)k.data + i0 * k.stride[0] + i1 * k.stride[1] + i2 * k.stride[2];
#ifdef _OPENMP
        float* mine = buf ? buf + (int64_t)omp_get_thread_num() * n : NULL;
#else
        float* mine = buf;
#endif
        classify_row(row_f32(row, b.dtype, n, mine), n, margin, out, &hides, &zero);
    }
    free(buf);
    *flags = (hides ? CFLASH_FAR_KEYS_HIDES : 0) | (zero ? CFLASH_FAR_KEYS_ZERO : 0);
    return CFLASH_OK;
}
