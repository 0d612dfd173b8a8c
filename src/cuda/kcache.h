/* The CUDA kernel cache on disk (compiled cubins/PTX keyed by source hash, arch, NVRTC version and
 * options): its description for `cflash report`. */
#ifndef CFLASH_CUDA_KCACHE_H
#define CFLASH_CUDA_KCACHE_H

#include <stddef.h>

/* Writes the cache's directory, whether it is writable, and its entry count and size into buf:
 * text lines (json = 0) or the members of one JSON object without braces (json = 1). Returns the
 * number of characters written (excluding the NUL). Never fails, never creates a CUDA context. */
size_t cf_kcache_describe(char* buf, size_t buf_len, int json);

#endif
