/* cpu-avx512's KV-cache decode kernels alone, hot in L1: the scores and P.V kernels of one cache
 * format over one 16-key block of 8 KV heads (4 query rows each, D = Dv = 128) again and again,
 * as kv_item calls them, without the call around them (offsets, factors, prefetches, DRAM). Their
 * time per key and KV head is the floor the decode call's time per key and KV head is compared
 * with (docs/PERF.md). Formats: int8 (kv_dots_i8 / kv_pv_i8, AVX512-VNNI), e4m3 / e5m2 (the fp32
 * FMA kernels kv_dots_fma / kv_pv_fma), e4m3-dp / e5m2-dp (byte tables and vdpbf16ps: kv_dots_q /
 * kv_pv_q), bf16 (kv_dots_bf16x4 / kv_pv_dp), bf16-fma (kv_dots_fma / kv_pv_fma on bf16 rows).
 * Includes the kernel file itself (its functions are static):
 *
 *   cc -O3 -fopenmp -D_GNU_SOURCE -Iinclude -Isrc -Ibuild/generated bench/kv_floor.c \
 *       build/libcflash.a -lm -o /tmp/kv_floor && /tmp/kv_floor 20000 [FORMAT]
 */
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
enum { I8, F8, F8DP, BF16, BFF }; /* the kernels */

static double run(int mode, int kind, int e5, long n, const void* rk[NH][KV_KB],
                  const void* rv[NH][KV_KB], const int16_t* qi, const float* qf, const uint16_t* qw,
                  const uint8_t* tab) {
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
                if (mode & 1) switch (kind) {
                    case I8: kv_dots_i8(qi, qs, R, D, rk[g], kb, f, s, NULL, 0); break;
                    case F8:
                        kv_dots_fma(qf, R, D, rk[g], kb, e5 ? KV_FMT_E5M2 : KV_FMT_E4M3, f, 1.0f, s,
                                    NULL, 0);
                        break;
                    case F8DP: kv_dots_q(qw, R, D, rk[g], kb, tab, 0, f, s); break;
                    case BFF:
                        kv_dots_fma(qf, R, D, rk[g], kb, KV_FMT_BF16, f, 1.0f, s, NULL, 0);
                        break;
                    default: kv_dots_bf16x4(qw, R, D, rk[g], kb, s, NULL, 0);
                    }
                if (mode & 4) kv_softmax16(s, R, 0.088f, m, l, lv, acc + g * R * DV, DV);
                if (mode & 2) switch (kind) {
                    case I8: kv_pv_i8(acc + g * R * DV, R, DV, rv[g], kb, s, f, NULL, 0); break;
                    case F8:
                        kv_pv_fma(acc + g * R * DV, R, DV, rv[g], kb,
                                  e5 ? KV_FMT_E5M2 : KV_FMT_E4M3, s, NULL, 0);
                        break;
                    case F8DP: kv_pv_q(acc + g * R * DV, R, DV, rv[g], kb, s, f, tab, 0); break;
                    case BFF:
                        kv_pv_fma(acc + g * R * DV, R, DV, rv[g], kb, KV_FMT_BF16, s, NULL, 0);
                        break;
                    default: kv_pv_dp(acc + g * R * DV, R, DV, rv[g], kb, s, NULL, NULL, 0);
                    }
            }
        const double t = now() - a;
        best = t < best ? t : best;
    }
    return best / ((double)n * NH * KV_KB) * 1e9;
}

int main(int argc, char** argv) {
    const long n = argc > 1 ? atol(argv[1]) : 20000;
    const char* fmt = argc > 2 ? argv[2] : "int8";
    const int kind = !strcmp(fmt, "int8")                                 ? I8
                     : !strcmp(fmt, "e4m3") || !strcmp(fmt, "e5m2")       ? F8
                     : !strcmp(fmt, "e4m3-dp") || !strcmp(fmt, "e5m2-dp") ? F8DP
                     : !strcmp(fmt, "bf16")                               ? BF16
                     : !strcmp(fmt, "bf16-fma")                           ? BFF
                                                                          : -1;
    const int e5 = fmt[1] == '5';
    const cf_cpu_info* cpu = cf_cpu();
    if (kind < 0) return fprintf(stderr, "kv_floor: format %s?\n", fmt), 2;
    if ((kind == I8 && !cpu->avx512vnni) || ((kind == F8DP || kind == BF16) && !cpu->avx512bf16) ||
        (kind == F8DP && !cpu->avx512vbmi))
        return fprintf(stderr, "kv_floor: %s's kernels need instructions this CPU lacks\n", fmt),
               77;
    const int es = kind == BF16 || kind == BFF ? 2 : 1; /* bytes per element */
    uint8_t *kc = aligned_alloc(64, KV_KB * NH * D * es),
            *vc = aligned_alloc(64, KV_KB * NH * DV * es);
    int16_t* qi = aligned_alloc(64, sizeof(int16_t) * R * D);
    float* qf = aligned_alloc(64, sizeof(float) * R * D);
    uint16_t* qw = aligned_alloc(64, sizeof(uint16_t) * R * D);
    uint8_t tab[256];
    for (int i = 0; i < KV_KB * NH * D; i++) { /* codes: no e4m3fn NaN; bf16: values in (-1, 1) */
        const uint8_t a = (uint8_t)(i * 37 + 11), b = (uint8_t)(i * 53 + 7);
        if (kind != BF16 && kind != BFF) {
            kc[i] = (a & 0x7f) == 0x7f ? a - 1 : a, vc[i] = (b & 0x7f) == 0x7f ? b - 1 : b;
            continue;
        }
        const float x = (float)(a - 128) / 128.0f, y = (float)(b - 128) / 128.0f;
        uint32_t u, w;
        memcpy(&u, &x, 4), memcpy(&w, &y, 4);
        ((uint16_t*)kc)[i] = (uint16_t)(u >> 16), ((uint16_t*)vc)[i] = (uint16_t)(w >> 16);
    }
    for (int i = 0; i < R * D; i++) {
        qi[i] = (int16_t)((i * 97) % 30000 - 15000);
        qf[i] = (float)((i * 97) % 200 - 100) / 128.0f;
        qw[i] = (uint16_t)(0x3c00 + i % 128); /* bf16 in [2^-7, 2^-6) */
    }
    if (kind == F8DP) kv_q_tables(e5 ? CFLASH_KV_QUANT_FP8_E5M2 : CFLASH_KV_QUANT_FP8_E4M3, tab);
    const void *rk[NH][KV_KB], *rv[NH][KV_KB]; /* (positions, heads, D): the cache's layout */
    for (int g = 0; g < NH; g++)
        for (int t = 0; t < KV_KB; t++)
            rk[g][t] = kc + (t * NH + g) * D * es, rv[g][t] = vc + (t * NH + g) * DV * es;
    const char* what[8] = {"", "scores", "P.V", "scores + P.V",
                           "", "",       "",    "scores + softmax + P.V"};
    for (int mode = 1; mode <= 7; mode++)
        if (*what[mode])
            printf("%-8s %-24s %6.2f ns per key and KV head\n", fmt, what[mode],
                   run(mode, kind, e5, n, rk, rv, qi, qf, qw, tab));
    return 0;
}
