/* Block shapes of the CPU attention drivers, chosen once per process: a per-CPU-family default
 * (vendor and family from the CPU probe), or CFLASH_ATTN_BLOCKS=q,k[,bq,bk] for tuning sweeps
 * (bench/attn_blocks_sweep.sh). A bad value is logged and ignored, never fatal. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "cpu/attn_cpu.h"
#include "probe/cpu_features.h"

/* Per family. Zen 5 was measured (docs/PERF.md, "CPU attention"); on Intel family 6 model 207 the
 * sweep found no shape better than these beyond the noise (docs/PERF.md, Intel, 2026-12-04); Zen
 * 3 / 4 hold Zen 5's values until the sweep has been run on such a machine. */
static const struct {
    const char* vendor;
    int family;
    cf_attn_blocks blocks;
} family_blocks[] = {
    {"AuthenticAMD", 26, {128, 128, 128, 128, "Zen 5 (AMD family 26), measured"}},
    {"AuthenticAMD", 25, {128, 128, 128, 128, "AMD family 25 (Zen 3, 4), Zen 5's"}},
    {"GenuineIntel", 6, {128, 128, 128, 128, "Intel family 6, swept on model 207"}},
};
static const cf_attn_blocks fallback = {128, 128, 128, 128, "default"};

/* One positive integer in [1, CF_ATTN_BLOCK_MAX] ending at ',' or the end of the string. */
static int parse_one(const char** s, int64_t* out, const char* what, char* why, size_t len) {
    const char* p = *s;
    if (*p < '0' || *p > '9') {
        snprintf(why, len, "%s: expected a number at '%s'", what, p);
        return 0;
    }
    errno = 0;
    char* end = NULL;
    long long v = strtoll(p, &end, 10);
    if (errno || v < 1 || v > CF_ATTN_BLOCK_MAX) {
        snprintf(why, len, "%s = %.*s: expected 1..%d", what, (int)(end - p < 24 ? end - p : 24), p,
                 CF_ATTN_BLOCK_MAX);
        return 0;
    }
    if (*end != ',' && *end != 0) {
        snprintf(why, len, "%s: unexpected '%s' after the number", what, end);
        return 0;
    }
    *out = v;
    *s = *end == ',' ? end + 1 : end;
    return 1;
}

int cf_attn_blocks_parse(const char* s, const cf_attn_blocks* base, cf_attn_blocks* b, char* why,
                         size_t len) {
    static const char* const names[4] = {
        "q (query rows per forward tile)", "k (keys per forward block)",
        "bq (query rows per backward block)", "bk (keys per backward block)"};
    cf_attn_blocks r = *base;
    int64_t* f[4] = {&r.q, &r.k, &r.bwd_q, &r.bwd_k};
    if (!s || !*s) {
        snprintf(why, len, "empty, expected q,k or q,k,bq,bk");
        return 0;
    }
    int n = 0;
    while (*s) {
        if (n == 4) {
            snprintf(why, len, "more than 4 numbers, expected q,k or q,k,bq,bk");
            return 0;
        }
        if (!parse_one(&s, f[n], names[n], why, len)) return 0;
        n++;
        if (*s == 0 && s[-1] == ',') {
            snprintf(why, len, "trailing ',', expected q,k or q,k,bq,bk");
            return 0;
        }
    }
    if (n != 2 && n != 4) {
        snprintf(why, len, "%d number%s, expected q,k or q,k,bq,bk", n, n == 1 ? "" : "s");
        return 0;
    }
    r.source = "CFLASH_ATTN_BLOCKS";
    *b = r;
    return 1;
}

static cf_attn_blocks chosen, current;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void choose(void) {
    const cf_cpu_info* ci = cf_cpu();
    chosen = fallback;
    for (size_t i = 0; i < sizeof family_blocks / sizeof family_blocks[0]; i++)
        if (!strcmp(ci->vendor, family_blocks[i].vendor) && ci->family == family_blocks[i].family)
            chosen = family_blocks[i].blocks;
    const char* e = getenv("CFLASH_ATTN_BLOCKS");
    if (e) {
        char why[160];
        cf_attn_blocks b;
        if (cf_attn_blocks_parse(e, &chosen, &b, why, sizeof why))
            chosen = b;
        else
            cf_log(CF_LOG_WARN,
                   "CFLASH_ATTN_BLOCKS=%.64s ignored: %s; using %lld,%lld,%lld,%lld (%s)", e, why,
                   (long long)chosen.q, (long long)chosen.k, (long long)chosen.bwd_q,
                   (long long)chosen.bwd_k, chosen.source);
    }
    current = chosen;
    cf_log(CF_LOG_DEBUG, "attention blocks: q %lld, k %lld, backward q %lld, k %lld (%s)",
           (long long)current.q, (long long)current.k, (long long)current.bwd_q,
           (long long)current.bwd_k, current.source);
}

cf_attn_blocks cf_attn_cpu_blocks(void) {
    pthread_once(&once, choose);
    return current;
}

void cf_attn_cpu_set_blocks(const cf_attn_blocks* b) {
    pthread_once(&once, choose);
    current = b ? *b : chosen;
}
