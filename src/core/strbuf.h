/* Appending printf-formatted text to a NUL-terminated buffer of fixed capacity, truncating
 * quietly: the one helper behind the reasons, "tried" lists and report lines. */
#ifndef CFLASH_CORE_STRBUF_H
#define CFLASH_CORE_STRBUF_H

#include <stdarg.h>
#include <stddef.h>

/* Appends to dst (capacity cap bytes, already NUL-terminated); a full buffer is left as is. */
void cf_strcatf(char* dst, size_t cap, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
void cf_vstrcatf(char* dst, size_t cap, const char* fmt, va_list ap);

#endif
