/* Owned CPU tensors for the oracle, the tests and the tool (oracle_tensor.h): a splitmix64 RNG,
 * allocation with padded or permuted strides, NaN poisoning, element access as double. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oracle/oracle_tensor.h"

/* ---- RNG ---------------------------------------------------------------------------------- */

void tt_rng_init(tt_rng* r, uint64_t seed) {
    r->s = seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;
}

uint64_t tt_rng_u64(tt_rng* r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double tt_rng_uniform(tt_rng* r) {
    return (double)(tt_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- Tensors ------------------------------------------------------------------------------ */

DLDataType tt_dl_dtype(cflash_dtype d) {
    return cflash_dtype_to_dl(d);
}

/* The DLTensor of t over its allocation (base, offset, shape, strides set), then poisoned. */
static void dl_init(tt_tensor* t, int ndim) {
    t->dl.data = t->base;
    t->dl.device.device_type = kDLCPU;
    t->dl.device.device_id = 0;
    t->dl.ndim = ndim;
    t->dl.dtype = tt_dl_dtype(t->dtype);
    t->dl.shape = t->shape;
    t->dl.strides = t->strides;
    t->dl.byte_offset = t->offset;
    t->eoff = (int64_t)(t->offset / cflash_dtype_size(t->dtype));
    tt_poison(t);
}

int tt_alloc(tt_tensor* t, cflash_dtype dtype, int ndim, const int64_t* shape, tt_layout layout) {
    memset(t, 0, sizeof *t);
    size_t es = cflash_dtype_size(dtype);
    if (ndim < 1 || ndim > TT_MAX_DIMS || es == 0) {
        fprintf(stderr, "tt_alloc: bad ndim %d or dtype %d\n", ndim, (int)dtype);
        return -1;
    }
    t->dtype = dtype;
    t->layout = layout;
    int order[TT_MAX_DIMS]; /* memory order, outermost first */
    for (int i = 0; i < ndim; i++)
        order[i] = i;
    if (layout == TT_PERMUTED && ndim >= 3) order[ndim - 3] = ndim - 2, order[ndim - 2] = ndim - 3;
    int64_t numel = 1, extent = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            fprintf(stderr, "tt_alloc: negative shape[%d]\n", i);
            return -1;
        }
        t->shape[i] = shape[i];
        numel *= shape[i];
    }
    /* Innermost first: stride = extent of everything inside, padded by a few elements. */
    for (int r = ndim - 1; r >= 0; r--) {
        int d = order[r];
        t->strides[d] = extent;
        int64_t pad = (layout != TT_DENSE && r < ndim - 1) ? 3 + r : 0;
        extent = extent * (shape[d] > 0 ? shape[d] : 1) + pad;
    }
    t->numel = numel;
    t->offset = layout != TT_DENSE ? 64 : 0;
    t->bytes = t->offset + (size_t)extent * es + 64;
    t->base = malloc(t->bytes);
    if (!t->base) {
        fprintf(stderr, "tt_alloc: out of memory (%zu bytes)\n", t->bytes);
        return -1;
    }
    dl_init(t, ndim);
    return 0;
}

int tt_alloc_strided(tt_tensor* t, cflash_dtype dtype, int ndim, const int64_t* shape,
                     const int64_t* strides) {
    memset(t, 0, sizeof *t);
    size_t es = cflash_dtype_size(dtype);
    if (ndim < 1 || ndim > TT_MAX_DIMS || es == 0) {
        fprintf(stderr, "tt_alloc_strided: bad ndim %d or dtype %d\n", ndim, (int)dtype);
        return -1;
    }
    int64_t lo = 0, hi = 0, numel = 1; /* element offsets reached, relative to element 0 */
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->strides[i] = strides[i];
        if (__builtin_mul_overflow(numel, shape[i], &numel)) numel = INT64_MAX; /* broadcast */
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) numel = 0;
    for (int i = 0; i < ndim && numel; i++) {
        int64_t span = strides[i] * (shape[i] - 1);
        if (span < 0)
            lo += span;
        else
            hi += span;
    }
    t->dtype = dtype;
    t->numel = numel;
    t->offset = (size_t)(-lo) * es;
    t->bytes = numel ? (size_t)(hi - lo + 1) * es : es;
    t->base = malloc(t->bytes);
    if (!t->base) {
        fprintf(stderr, "tt_alloc_strided: out of memory (%zu bytes)\n", t->bytes);
        memset(t, 0, sizeof *t);
        return -1;
    }
    dl_init(t, ndim);
    return 0;
}

int tt_alloc_like(tt_tensor* t, const tt_tensor* src) {
    return tt_alloc(t, src->dtype, src->dl.ndim, src->shape, src->layout);
}

void tt_free(tt_tensor* t) {
    if (!t) return;
    free(t->base);
    memset(t, 0, sizeof *t);
}

static void poison_bytes(cflash_dtype d, void* p, size_t bytes) {
    size_t es = cflash_dtype_size(d);
    unsigned char pat[4];
    switch (d) {
    case CFLASH_DTYPE_F32: {
        uint32_t u = 0x7fc00000u;
        memcpy(pat, &u, 4);
        break;
    }
    case CFLASH_DTYPE_F16: {
        uint16_t u = 0x7e00;
        memcpy(pat, &u, 2);
        break;
    }
    case CFLASH_DTYPE_BF16: {
        uint16_t u = 0x7fc0;
        memcpy(pat, &u, 2);
        break;
    }
    case CFLASH_DTYPE_I32: {
        int32_t u = 0x7fffffff;
        memcpy(pat, &u, 4);
        break;
    }
    default:
        pat[0] = 0xff;
        es = 1;
        break;
    }
    unsigned char* b = p;
    for (size_t i = 0; i + es <= bytes; i += es)
        memcpy(b + i, pat, es);
    for (size_t i = bytes / es * es; i < bytes; i++)
        b[i] = 0xff;
}

void tt_poison(tt_tensor* t) {
    if (t->base) poison_bytes(t->dtype, t->base, t->bytes);
}

void tt_unravel(const tt_tensor* t, int64_t n, int64_t* idx) {
    for (int i = t->dl.ndim - 1; i >= 0; i--) {
        int64_t s = t->shape[i] > 0 ? t->shape[i] : 1;
        idx[i] = n % s;
        n /= s;
    }
}

int64_t tt_offset(const tt_tensor* t, const int64_t* idx) {
    int64_t o = t->eoff;
    for (int i = 0; i < t->dl.ndim; i++)
        o += idx[i] * t->strides[i];
    return o;
}

/* (fp32 and bf16 here, not through cflash_load: the tests' oracles read every element so, and
 * that call was a tenth of test_kvcache's time) */
static double load_at(const tt_tensor* t, int64_t o) {
    switch (t->dtype) {
    case CFLASH_DTYPE_F32: return (double)((const float*)t->base)[o];
    case CFLASH_DTYPE_BF16: {
        const uint32_t u = (uint32_t)((const uint16_t*)t->base)[o] << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        return (double)f;
    }
    case CFLASH_DTYPE_I32: return (double)((const int32_t*)t->base)[o];
    case CFLASH_DTYPE_U8:
    case CFLASH_DTYPE_F8E4M3:
    case CFLASH_DTYPE_F8E5M2: return (double)((const uint8_t*)t->base)[o];
    case CFLASH_DTYPE_I8: return (double)((const int8_t*)t->base)[o];
    default: return (double)cflash_load(t->base, t->dtype, o);
    }
}

static void store_at(tt_tensor* t, int64_t o, double x) {
    switch (t->dtype) {
    case CFLASH_DTYPE_I32: ((int32_t*)t->base)[o] = (int32_t)x; break;
    case CFLASH_DTYPE_U8:
    case CFLASH_DTYPE_F8E4M3:
    case CFLASH_DTYPE_F8E5M2: ((uint8_t*)t->base)[o] = (uint8_t)x; break;
    case CFLASH_DTYPE_I8: ((int8_t*)t->base)[o] = (int8_t)x; break;
    default: cflash_store(t->base, t->dtype, o, (float)x); break;
    }
}

double tt_get(const tt_tensor* t, const int64_t* idx) {
    return load_at(t, tt_offset(t, idx));
}
void tt_set(tt_tensor* t, const int64_t* idx, double x) {
    store_at(t, tt_offset(t, idx), x);
}

double tt_get_flat(const tt_tensor* t, int64_t n) {
    int64_t idx[TT_MAX_DIMS];
    tt_unravel(t, n, idx);
    return tt_get(t, idx);
}

void tt_set_flat(tt_tensor* t, int64_t n, double x) {
    int64_t idx[TT_MAX_DIMS];
    tt_unravel(t, n, idx);
    tt_set(t, idx, x);
}

/* The loops over every logical element in row-major order step idx as an odometer (tt_unravel's
 * divisions, two a dimension, were most of tt_random's and tt_padding_intact's time). */
static void next_index(const tt_tensor* t, int64_t* idx) {
    for (int i = t->dl.ndim - 1; i >= 0; i--) {
        if (++idx[i] < t->shape[i]) return;
        idx[i] = 0;
    }
}

void tt_random(tt_tensor* t, uint64_t seed, double lo, double hi) {
    tt_rng r;
    tt_rng_init(&r, seed);
    int nonzero = 0;
    int64_t idx[TT_MAX_DIMS] = {0};
    for (int64_t n = 0; n < t->numel; n++, next_index(t, idx)) {
        const int64_t o = tt_offset(t, idx);
        store_at(t, o, lo + (hi - lo) * tt_rng_uniform(&r));
        nonzero |= load_at(t, o) != 0.0;
    }
    if (t->numel > 0 && !nonzero) tt_set_flat(t, 0, hi / 2 != 0 ? hi / 2 : 1.0);
}

void tt_fill(tt_tensor* t, double x) {
    int64_t idx[TT_MAX_DIMS] = {0};
    for (int64_t n = 0; n < t->numel; n++, next_index(t, idx))
        store_at(t, tt_offset(t, idx), x);
}

static int is_poison_elem(const tt_tensor* t, int64_t o) {
    switch (t->dtype) {
    case CFLASH_DTYPE_I32: return ((const int32_t*)t->base)[o] == 0x7fffffff;
    case CFLASH_DTYPE_U8: return ((const uint8_t*)t->base)[o] == 0xff;
    default: return isnan(cflash_load(t->base, t->dtype, o));
    }
}

int64_t tt_count_nan(const tt_tensor* t) {
    int64_t c = 0, idx[TT_MAX_DIMS] = {0};
    for (int64_t n = 0; n < t->numel; n++, next_index(t, idx))
        c += is_poison_elem(t, tt_offset(t, idx));
    return c;
}

int tt_padding_intact(const tt_tensor* t) {
    size_t es = cflash_dtype_size(t->dtype);
    unsigned char* mark = calloc(t->bytes, 1);
    unsigned char* want = malloc(t->bytes);
    if (!mark || !want) {
        free(mark);
        free(want);
        return 0;
    }
    poison_bytes(t->dtype, want, t->bytes);
    int64_t idx[TT_MAX_DIMS] = {0};
    for (int64_t n = 0; n < t->numel; n++, next_index(t, idx))
        memset(mark + (size_t)tt_offset(t, idx) * es, 1, es);
    const unsigned char* b = t->base;
    int ok = 1;
    for (size_t i = 0; i < t->bytes && ok; i++)
        if (!mark[i] && b[i] != want[i]) ok = 0;
    free(mark);
    free(want);
    return ok;
}

DLTensor tt_dl_on(const tt_tensor* t, void* base, DLDevice dev) {
    DLTensor d = t->dl;
    d.data = base;
    d.device = dev;
    d.shape = (int64_t*)t->shape;
    d.strides = (int64_t*)t->strides;
    return d;
}

DLTensor tt_view(const tt_tensor* t, int nd, const int64_t* shape, const int64_t* strides,
                 int64_t at) {
    DLTensor d = t->dl;
    d.ndim = nd;
    d.shape = (int64_t*)shape;
    d.strides = (int64_t*)strides;
    d.byte_offset += (uint64_t)at * (uint64_t)(t->dl.dtype.bits / 8);
    return d;
}

uint64_t tt_hash(const tt_tensor* t) {
    /* FNV-1a over 8-byte words, then the bytes of the tail: a byte at a time, the dependent
     * multiplies took 5 % of test_attn_backends */
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char* b = t->base;
    size_t i = 0;
    for (; i + 8 <= t->bytes; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    for (; i < t->bytes; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

double tt_unit_roundoff(cflash_dtype d) {
    switch (d) {
    case CFLASH_DTYPE_F16: return ldexp(1.0, -11);
    case CFLASH_DTYPE_BF16: return ldexp(1.0, -8);
    default: return ldexp(1.0, -24);
    }
}

const char* tt_dtype_short(cflash_dtype d) {
    switch (d) {
    case CFLASH_DTYPE_F32: return "fp32";
    case CFLASH_DTYPE_F16: return "fp16";
    case CFLASH_DTYPE_BF16: return "bf16";
    case CFLASH_DTYPE_I32: return "int32";
    case CFLASH_DTYPE_U8: return "uint8";
    default: return "?";
    }
}

cflash_dtype tt_dtype_parse(const char* s) {
    if (!s) return CFLASH_DTYPE_INVALID;
    if (!strcmp(s, "fp32") || !strcmp(s, "float32") || !strcmp(s, "f32")) return CFLASH_DTYPE_F32;
    if (!strcmp(s, "fp16") || !strcmp(s, "float16") || !strcmp(s, "f16") || !strcmp(s, "half"))
        return CFLASH_DTYPE_F16;
    if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) return CFLASH_DTYPE_BF16;
    return CFLASH_DTYPE_INVALID;
}
