/* Internal error handling: every fallible function returns a cflash_status and, on failure, sets
 * this thread's message. The macros keep the happy path straight (after zstd's RETURN_ERROR_IF). */
#ifndef CFLASH_CORE_STATUS_H
#define CFLASH_CORE_STATUS_H

#include "cflash.h"

/* Sets this thread's last error message (printf format) and returns s. */
cflash_status cf_error(cflash_status s, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

#define CFLASH_RETURN_IF(cond, status, ...)                                                        \
    do {                                                                                           \
        if (cond) return cf_error((status), __VA_ARGS__);                                          \
    } while (0)

#define CFLASH_FORWARD_IF_ERROR(expr)                                                              \
    do {                                                                                           \
        cflash_status cf_fwd_s_ = (expr);                                                          \
        if (cf_fwd_s_ != CFLASH_OK) return cf_fwd_s_;                                              \
    } while (0)

#endif
