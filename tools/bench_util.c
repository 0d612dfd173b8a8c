/* Timing and the machine's peaks for `cflash bench`: a monotonic clock, the median of repeated
 * runs after warm-up, and the peaks the library measures (cflash_peaks_measure: fp32 FMA,
 * AVX512-BF16, AMX-BF16, memory bandwidth, every thread busy at once). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

double cf_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds used by every thread of this process. */
double cf_cpu_s(void);
double cf_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

double cf_bench_median_ms(void (*fn)(void*), void* arg, int warmup, int reps) {
    if (reps < 1) reps = 1;
    for (int i = 0; i < warmup; i++)
        fn(arg);
    double* t = malloc(sizeof(double) * (size_t)reps);
    if (!t) return -1.0;
    for (int i = 0; i < reps; i++) {
        double t0 = cf_now_s();
        fn(arg);
        t[i] = (cf_now_s() - t0) * 1e3;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    double m = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    free(t);
    return m;
}

/* ---- Peaks: measured by the library (cflash_peaks_measure, src/cpu/peak.c) ---------------- */

static cf_peaks peaks_cpu; /* the same peaks per CPU-second (times threads) */

const cf_peaks* cf_measure_peaks_cpu(int threads);
const cf_peaks* cf_measure_peaks_cpu(int threads) {
    cf_measure_peaks(threads);
    return &peaks_cpu;
}

const cf_peaks* cf_measure_peaks(int threads) {
    static cf_peaks p;
    cflash_peaks_measure(threads, &p, &peaks_cpu);
    return &p;
}
