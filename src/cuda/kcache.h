/* The CUDA kernel cache: compiled cubins/PTX keyed by source hash, arch, NVRTC version and
 * options, in memory and on disk (CFLASH_CACHE_DIR, else $XDG_CACHE_HOME/cflash, else
 * ~/.cache/cflash). Disk entries carry a hash of their payload, are written to a temporary file and
 * renamed into place; an unwritable directory gives one warning and the cache stays in memory. */
#ifndef CFLASH_CUDA_KCACHE_H
#define CFLASH_CUDA_KCACHE_H

#include <stddef.h>
#include <stdint.h>

/* Writes the cache's directory, whether it is writable, and its entry count and size into buf:
 * text lines (json = 0) or the members of one JSON object without braces (json = 1). Returns the
 * number of characters written (excluding the NUL). Never fails, never creates a CUDA context. */
size_t cf_kcache_describe(char* buf, size_t buf_len, int json);

/* 64-bit FNV-1a over data, continuing from h (start with CF_HASH64_INIT). */
#define CF_HASH64_INIT 1469598103934665603ull
uint64_t cf_hash64(const void* data, size_t len, uint64_t h);

/* The cache directory this process uses (resolved once from the environment). */
const char* cf_kcache_dir(void);

/* Looks key up (memory, then disk). On a hit returns a malloc'ed copy of the payload (free it)
 * and its size in *len; NULL on a miss. A disk entry whose key or payload hash does not match is
 * counted as corrupt, removed, and treated as a miss. */
void* cf_kcache_get(const char* key, size_t* len);

/* Stores payload under key in memory and, when the directory is writable, on disk. */
void cf_kcache_put(const char* key, const void* data, size_t len);

typedef struct cf_kcache_stats {
    long mem_hits, disk_hits, misses, corrupt, disk_writes;
    int disk_disabled; /* 1 after the directory proved unwritable (warned once) */
} cf_kcache_stats;
cf_kcache_stats cf_kcache_get_stats(void);

/* Tests only: forget the memory cache and the stats, and re-read the directory from the
 * environment. Not thread-safe against concurrent lookups. */
void cf_kcache_reset(void);

#endif
