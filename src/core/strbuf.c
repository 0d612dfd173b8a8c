/* cf_strcatf: bounded appends to a NUL-terminated buffer (see strbuf.h). */
#include <stdio.h>
#include <string.h>

#include "core/strbuf.h"

void cf_vstrcatf(char* dst, size_t cap, const char* fmt, va_list ap) {
    size_t used = strlen(dst);
    if (used + 1 >= cap) return;
    vsnprintf(dst + used, cap - used, fmt, ap);
}

void cf_strcatf(char* dst, size_t cap, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    cf_vstrcatf(dst, cap, fmt, ap);
    va_end(ap);
}
