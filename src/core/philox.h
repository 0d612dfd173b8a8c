/* Philox-4x32-10 (Salmon et al., SC'11) and the dropout keep rule shared by every backend.
 * The CUDA kernels carry the same function in src/cuda/kernels/; tests compare the two. */
#ifndef CFLASH_CORE_PHILOX_H
#define CFLASH_CORE_PHILOX_H

#include <stdint.h>

typedef struct cf_philox_out {
    uint32_t x[4];
} cf_philox_out;

static inline cf_philox_out cf_philox4x32_10(const uint32_t ctr_in[4], uint64_t seed) {
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    cf_philox_out o = {{c0, c1, c2, c3}};
    return o;
}

/* Keep threshold: an attention weight is kept iff its Philox word is < this. p in [0, 1). */
static inline uint64_t cf_dropout_threshold(float p) {
    return (uint64_t)((1.0 - (double)p) * 4294967296.0);
}

/* The four Philox words for keys j0..j0+3 (j0 % 4 == 0) of row i of (b, h). The counter is
 * {j / 4, i, b, h} as a 128-bit little-endian integer plus offset (into the low 64 bits). */
static inline cf_philox_out cf_dropout_words(uint64_t seed, uint64_t offset, uint64_t b, uint64_t h,
                                             uint64_t i, uint64_t j) {
    uint64_t lo = ((uint64_t)(uint32_t)i << 32) | (uint32_t)(j >> 2);
    uint64_t hi = ((uint64_t)(uint32_t)h << 32) | (uint32_t)b;
    uint64_t lo2 = lo + offset;
    hi += (lo2 < lo);
    uint32_t ctr[4] = {(uint32_t)lo2, (uint32_t)(lo2 >> 32), (uint32_t)hi, (uint32_t)(hi >> 32)};
    return cf_philox4x32_10(ctr, seed);
}

/* 1 iff weight (b, h, i, j) is kept. p == 0 keeps everything. */
static inline int cf_dropout_keep(uint64_t seed, uint64_t offset, float p, uint64_t b, uint64_t h,
                                  uint64_t i, uint64_t j) {
    if (p <= 0.0f) return 1;
    cf_philox_out w = cf_dropout_words(seed, offset, b, h, i, j);
    return (uint64_t)w.x[j & 3] < cf_dropout_threshold(p);
}

#endif
