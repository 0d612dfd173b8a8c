/* The int8 KV-cache decode kernels of cpu-avx512 alone, hot in L1: kv_dots_i8 (scores) and
 * kv_pv_i8 (P.V) over one 16-key block of 8 KV heads (4 query rows each, D = Dv = 128) again and
 * again, as kv_item calls them, without the call around them (offsets, factors, prefetches,
 * DRAM). Their time per key and KV head is the floor the decode call's time per key and KV head
 * is compared with (docs/PERF.md). Includes the kernel file itself (its functions are static):
 *
 *   cc -O3 -fopenmp -D_GNU_SOURCE -Iinclude -Isrc -Ibuild/generated bench/kv_floor.c \
 *       build/libcflash.a -lm -o /tmp/kv_floor && /tmp/kv_floor 20000
 * Needs AVX512-VNNI (the kernels' instructions). */
#include "cpu/x86/kv_avx512.c"

#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

enum { R = 4, D = 128, DV = 128, NH = 8 };

/* Best of 7 runs of n passes over the block with the kernels `mode` picks (1 scores, 2 P.V, 4 the
 * softmax between them), in ns per key and KV head. */
static double run(int mode, long n, const void* rk[NH][KV_KB], const void* rv[NH][KV_KB],
                  const int16_t* qi) {
    const float qs[R] = {1e-3f, 1e-3f, 1e-3f, 1e-3f};
    float f[KV_KB], s[R * KV_KB], m[R] = {0}, l[R] = {0}, lv[16 * R] = {0};
    static float acc[NH * R * DV];
    for (int t = 0; t < KV_KB; t++)
        f[t] = 0.01f;
    for (int i = 0; i < R * KV_KB; i++)
        s[i] = 0.01f * (float)(i & 7);
    const volatile int64_t kb = KV_KB; /* (not a constant: no specialized copy of the kernels) */
    double best = 1e30;
    for (int rep = 0; rep < 7; rep++) {
        const double a = now();
        for (long it = 0; it < n; it++)
            for (int g = 0; g < NH; g++) {
                if (mode & 1) kv_dots_i8(qi, qs, R, D, rk[g], kb, f, s);
                if (mode & 4)
                    for (int r = 0; r < R; r++)
                        kv_softmax16(s + r * KV_KB, 0.088f, m + r, l + r, lv + 16 * r,
                                     acc + (g * R + r) * DV, DV);
                if (mode & 2) kv_pv_i8(acc + g * R * DV, R, DV, rv[g], kb, s, f);
            }
        const double t = now() - a;
        best = t < best ? t : best;
    }
    return best / ((double)n * NH * KV_KB) * 1e9;
}

int main(int argc, char** argv) {
    const long n = argc > 1 ? atol(argv[1]) : 20000;
    if (!cf_cpu()->avx512vnni) return fprintf(stderr, "kv_floor: no AVX512-VNNI here\n"), 77;
    int8_t *kc = aligned_alloc(64, KV_KB * NH * D), *vc = aligned_alloc(64, KV_KB * NH * DV);
    int16_t* qi = aligned_alloc(64, sizeof(int16_t) * R * D);
    for (int i = 0; i < KV_KB * NH * D; i++)
        kc[i] = (int8_t)(i * 37 + 11), vc[i] = (int8_t)(i * 53 + 7);
    for (int i = 0; i < R * D; i++)
        qi[i] = (int16_t)((i * 97) % 30000 - 15000);
    const void *rk[NH][KV_KB], *rv[NH][KV_KB]; /* (positions, heads, D): the cache's layout */
    for (int g = 0; g < NH; g++)
        for (int t = 0; t < KV_KB; t++)
            rk[g][t] = kc + (t * NH + g) * D, rv[g][t] = vc + (t * NH + g) * DV;
    const char* what[8] = {"", "scores", "P.V", "scores + P.V",
                           "", "",       "",    "scores + softmax + P.V"};
    for (int mode = 1; mode <= 7; mode++)
        if (*what[mode])
            printf("%-24s %6.2f ns per key and KV head\n", what[mode], run(mode, n, rk, rv, qi));
    return 0;
}
