/* Owned CPU tensors for the fp64 oracle, the tests and `cflash check`: tt_tensor, a DLTensor of
 * any dtype with dense, padded or permuted strides, poisoned with NaN, filled from a seeded RNG,
 * read and written element by element as double. Uses only the public and experimental headers. */
#ifndef CFLASH_ORACLE_TENSOR_H
#define CFLASH_ORACLE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "cflash.h"
#include "cflash_experimental.h"

/* ---- Random numbers (splitmix64): deterministic per seed ---------------------------------- */

typedef struct tt_rng {
    uint64_t s;
} tt_rng;
void tt_rng_init(tt_rng* r, uint64_t seed);
uint64_t tt_rng_u64(tt_rng* r);
double tt_rng_uniform(tt_rng* r); /* [0, 1) */

/* ---- Tensors ------------------------------------------------------------------------------ */

#define TT_MAX_DIMS 6

/* Layouts: dense row-major; padded (each non-last dim's stride padded, a non-zero byte_offset);
 * permuted (padded, and for >= 3 dims the two dims before the last swapped in memory, e.g.
 * (B, S, H, D) stored as (B, H, S, D)). The last dim is always contiguous. */
typedef enum tt_layout { TT_DENSE = 0, TT_PADDED = 1, TT_PERMUTED = 2 } tt_layout;

typedef struct tt_tensor {
    DLTensor dl; /* the tensor handed to the library (dl.data = base) */
    int64_t shape[TT_MAX_DIMS];
    int64_t strides[TT_MAX_DIMS]; /* in elements */
    cflash_dtype dtype;
    tt_layout layout;
    void* base;    /* the whole allocation, padding included */
    size_t bytes;  /* size of base */
    size_t offset; /* dl.byte_offset */
    int64_t eoff;  /* offset in elements (tt_offset's start: no division an element) */
    int64_t numel; /* logical elements */
} tt_tensor;

/* Allocates (shape of ndim dims, dtype any cflash_dtype) and poisons it. Returns 0, or -1 on a bad
 * argument or out of memory (with a message on stderr). A zero-size tensor gets a small
 * allocation so data is never NULL. */
int tt_alloc(tt_tensor* t, cflash_dtype dtype, int ndim, const int64_t* shape, tt_layout layout);
/* Allocates exactly the bytes the given element strides reach (any signs, zero allowed), with
 * data / byte_offset placed so that every element is inside and nothing else is: an access
 * outside the view is one outside the allocation (ASan sees it). Poisoned. 0, or -1. numel
 * saturates at INT64_MAX (a huge broadcast view: do not iterate it). */
int tt_alloc_strided(tt_tensor* t, cflash_dtype dtype, int ndim, const int64_t* shape,
                     const int64_t* strides);
/* Same shape, dtype and layout as src (values not copied; poisoned). */
int tt_alloc_like(tt_tensor* t, const tt_tensor* src);
void tt_free(tt_tensor* t); /* accepts a zeroed or freed tensor */
DLDataType tt_dl_dtype(cflash_dtype d);

/* Poison: NaN in every byte of the allocation (padding too); int32 -> 0x7fffffff, uint8 -> 0xff. */
void tt_poison(tt_tensor* t);
/* Fresh uniform values in [lo, hi) from seed (rounded to the dtype); padding is left as it was.
 * Never all zeros: if every stored value came out 0, element 0 is set to hi/2. */
void tt_random(tt_tensor* t, uint64_t seed, double lo, double hi);
void tt_fill(tt_tensor* t, double x); /* every logical element = x */
/* Logical elements that are NaN (floats) / equal to the poison pattern (ints). */
int64_t tt_count_nan(const tt_tensor* t);
/* 1 iff every byte of the allocation outside the logical elements still holds the poison. */
int tt_padding_intact(const tt_tensor* t);

/* Element offset (in elements, from base) of a logical index idx[ndim]. tt_get / tt_set read and
 * write values as double; for the fp8 types (F8E4M3, F8E5M2) the value is the code, 0 to 255. */
int64_t tt_offset(const tt_tensor* t, const int64_t* idx);
double tt_get(const tt_tensor* t, const int64_t* idx);
void tt_set(tt_tensor* t, const int64_t* idx, double x); /* rounds to the dtype */
/* Row-major logical element n (0 <= n < numel). */
double tt_get_flat(const tt_tensor* t, int64_t n);
void tt_set_flat(tt_tensor* t, int64_t n, double x);
/* Logical index of row-major element n. */
void tt_unravel(const tt_tensor* t, int64_t n, int64_t* idx);

/* A DLTensor with t's shape, strides, dtype and byte_offset over another allocation of t->bytes
 * bytes at base on device dev (for copies to a GPU: copy t->bytes from t->base to base). The
 * returned DLTensor points into t's shape/strides arrays: keep t alive. */
DLTensor tt_dl_on(const tt_tensor* t, void* base, DLDevice dev);
/* Another view of t's memory: nd dims of shape (strides in elements; NULL = dense), starting
 * `at` elements of t's dtype past t's first. Points into shape / strides: keep them alive. */
DLTensor tt_view(const tt_tensor* t, int nd, const int64_t* shape, const int64_t* strides,
                 int64_t at);

/* 64-bit FNV-1a hash of the whole allocation (to assert inputs were not modified). */
uint64_t tt_hash(const tt_tensor* t);

/* Unit roundoff of a float dtype: 2^-24, 2^-11, 2^-8. */
double tt_unit_roundoff(cflash_dtype d);
const char* tt_dtype_short(cflash_dtype d); /* "fp32", "fp16", "bf16", ... */
/* Parses "fp32" / "float32" / "fp16" / "float16" / "bf16" / "bfloat16"; CFLASH_DTYPE_INVALID else.
 */
cflash_dtype tt_dtype_parse(const char* s);

#endif
