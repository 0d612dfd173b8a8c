/* Logging to stderr with a level from CFLASH_LOG, and a once-per-text variant for fallbacks. */
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

static int level = -1;
static pthread_once_t level_once = PTHREAD_ONCE_INIT;

static void read_level(void) {
    const char* s = getenv("CFLASH_LOG");
    level = CF_LOG_WARN;
    if (!s) return;
    if (!strcmp(s, "error"))
        level = CF_LOG_ERROR;
    else if (!strcmp(s, "warn"))
        level = CF_LOG_WARN;
    else if (!strcmp(s, "info"))
        level = CF_LOG_INFO;
    else if (!strcmp(s, "debug"))
        level = CF_LOG_DEBUG;
}

int cf_log_level(void) {
    pthread_once(&level_once, read_level);
    return level;
}

static const char* const level_names[] = {"error", "warn", "info", "debug"};

static void emit(int lvl, const char* msg) {
    fprintf(stderr, "cflash %s: %s\n", level_names[lvl], msg);
}

/* Formats and prints; once = 1 prints only the first time this exact text is seen. */
static void vlog(int lvl, int once, const char* fmt, va_list ap);

void cf_log(int lvl, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(lvl, 0, fmt, ap);
    va_end(ap);
}

/* Hashes of texts already printed: a small open-addressed set; when full, prints again. */
#define SEEN_CAP 256
static uint64_t seen[SEEN_CAP];
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;

static int first_time(const char* msg) {
    uint64_t h = 1469598103934665603ull;
    for (const char* p = msg; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    if (h == 0) h = 1;
    int fresh = 1;
    pthread_mutex_lock(&seen_lock);
    for (unsigned n = 0, i = (unsigned)(h % SEEN_CAP); n < SEEN_CAP; n++, i = (i + 1) % SEEN_CAP) {
        if (seen[i] == h) {
            fresh = 0;
            break;
        }
        if (seen[i] == 0) {
            seen[i] = h;
            break;
        }
    }
    pthread_mutex_unlock(&seen_lock);
    return fresh;
}

static void vlog(int lvl, int once, const char* fmt, va_list ap) {
    if (lvl > cf_log_level()) return;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (!once || first_time(msg)) emit(lvl, msg);
}

void cf_log_once(int lvl, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(lvl, 1, fmt, ap);
    va_end(ap);
}
