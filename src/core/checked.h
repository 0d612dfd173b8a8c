/* Overflow-checked int64 arithmetic for every size, offset and extent computed from caller input
 * (after SQLite's sqlite3AddInt64 / sqlite3MulInt64): each returns 1 when the exact result does not
 * fit in int64 (then *r is unspecified), else 0 with *r set. A check written `a + b > limit` wraps
 * for a large a and passes; write `cf_add_i64(a, b, &s) || s > limit` instead. */
#ifndef CFLASH_CORE_CHECKED_H
#define CFLASH_CORE_CHECKED_H

#include <stdint.h>

static inline int cf_add_i64(int64_t a, int64_t b, int64_t* r) {
    return __builtin_add_overflow(a, b, r);
}
static inline int cf_sub_i64(int64_t a, int64_t b, int64_t* r) {
    return __builtin_sub_overflow(a, b, r);
}
static inline int cf_mul_i64(int64_t a, int64_t b, int64_t* r) {
    return __builtin_mul_overflow(a, b, r);
}

/* Product of n non-negative dims: 0 when any is 0 (however large the others), else the checked
 * product. Returns 1 on overflow. */
static inline int cf_prod_i64(const int64_t* dims, int n, int64_t* r) {
    int64_t p = 1;
    for (int i = 0; i < n; i++)
        if (dims[i] == 0) {
            *r = 0;
            return 0;
        }
    for (int i = 0; i < n; i++)
        if (cf_mul_i64(p, dims[i], &p)) return 1;
    *r = p;
    return 0;
}

#endif
