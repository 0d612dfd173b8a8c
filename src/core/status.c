/* Status codes, this thread's last error message, and the version string. */
#include <stdarg.h>
#include <stdio.h>

#include "core/log.h"
#include "core/status.h"

static _Thread_local char last_error[1024];

cflash_status cf_error(cflash_status s, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    cf_log(CF_LOG_DEBUG, "error %s: %s", cflash_status_string(s), last_error);
    return s;
}

const char* cflash_last_error(void) {
    return last_error;
}

const char* cflash_status_string(cflash_status s) {
    switch (s) {
    case CFLASH_OK: return "CFLASH_OK";
    case CFLASH_ERR_INVALID_ARGUMENT: return "CFLASH_ERR_INVALID_ARGUMENT";
    case CFLASH_ERR_UNSUPPORTED: return "CFLASH_ERR_UNSUPPORTED";
    case CFLASH_ERR_OUT_OF_MEMORY: return "CFLASH_ERR_OUT_OF_MEMORY";
    case CFLASH_ERR_BACKEND: return "CFLASH_ERR_BACKEND";
    case CFLASH_ERR_IO: return "CFLASH_ERR_IO";
    }
    return "CFLASH_ERR_UNKNOWN";
}
