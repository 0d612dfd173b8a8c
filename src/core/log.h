/* Logging to stderr, controlled by CFLASH_LOG=error|warn|info|debug (default warn).
 * cf_log_once() prints a message only the first time this exact text is seen in the process. */
#ifndef CFLASH_CORE_LOG_H
#define CFLASH_CORE_LOG_H

enum { CF_LOG_ERROR = 0, CF_LOG_WARN = 1, CF_LOG_INFO = 2, CF_LOG_DEBUG = 3 };

int cf_log_level(void);
void cf_log(int level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void cf_log_once(int level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
