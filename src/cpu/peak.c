/* The machine's measured peaks for the experimental API (cflash_peaks_measure): throughput of
 * the fp32 FMA unit, AVX512-BF16 vdpbf16ps, AMX-BF16 tdpbf16ps and memory bandwidth, each with
 * every thread busy at once. `cflash bench` reports kernel speed as a fraction of these. Kernels
 * are independent chains of one instruction in registers, compiled with target attributes and
 * run only where the CPU probe says the instruction is usable. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cflash_experimental.h"
#include "cpu/x86/amx_tilecfg.h"
#include "probe/cpu_features.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds used by every thread of this process. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- Compute peaks: independent chains of one instruction, in registers ---------------------- */

#if defined(__x86_64__)
#include <immintrin.h>

/* 16 independent accumulators hide the FMA latency on two pipes; returns flops done.
 * Every step passes each accumulator through an empty asm, so the compiler can neither fold the
 * chains nor merge equal ones: with identical chains (same start, same operands) GCC 12 kept one
 * vdpbf16ps per iteration while 16 were counted, which overstated the AVX512-BF16 peak 2-3x. */
#define X16(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define OPAQUE(i) __asm__ volatile("" : "+v"(a##i));
__attribute__((target("avx512f"))) static double fma512(int64_t iters) {
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
#define DECL(i) __m512 a##i = _mm512_set1_ps((float)i);
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, x, y);
#define SUM(i) s = _mm512_add_ps(s, a##i);
    X16(DECL)
    for (int64_t k = 0; k < iters; k++) {
        X16(STEP)
        X16(OPAQUE)
    }
    __m512 s = _mm512_setzero_ps();
    X16(SUM)
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)iters * 16 * 16 * 2;
}
/* 12 chains, not 16: AVX2 has 16 ymm registers, and 16 accumulators with x and y spilled 4 of
 * them to the stack every iteration (a third of the FMA rate measured on an AVX2-only Zen 3, where
 * `make run` then put attention at 155 % of this "peak"); 12 still cover latency x pipes (4 x 2
 * on Zen 3, 4-5 x 2 on Intel). */
#define X12(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11)
__attribute__((target("avx2,fma"))) static double fma256(int64_t iters) {
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
#undef DECL
#undef STEP
#undef SUM
#define DECL(i) __m256 a##i = _mm256_set1_ps((float)i);
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, x, y);
#define SUM(i) s = _mm256_add_ps(s, a##i);
    X12(DECL)
    for (int64_t k = 0; k < iters; k++) {
        X12(STEP)
        X12(OPAQUE)
    }
    __m256 s = _mm256_setzero_ps();
    X12(SUM)
    float o[8];
    _mm256_storeu_ps(o, s);
    volatile float sink = o[0];
    (void)sink;
    return (double)iters * 12 * 8 * 2;
}
/* vdpbf16ps: 16 lanes x 2 products = 64 flops per instruction. */
__attribute__((target("avx512f,avx512bf16"))) static double dpbf16(int64_t iters) {
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = x;
#undef DECL
#undef STEP
#undef SUM
#define DECL(i) __m512 a##i = _mm512_set1_ps((float)i);
#define STEP(i) a##i = _mm512_dpbf16_ps(a##i, x, y);
#define SUM(i) s = _mm512_add_ps(s, a##i);
    X16(DECL)
    for (int64_t k = 0; k < iters; k++) {
        X16(STEP)
        X16(OPAQUE)
    }
    __m512 s = _mm512_setzero_ps();
    X16(SUM)
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)iters * 16 * 64;
}
#ifdef CF_HAVE_AMX_CODE
/* tdpbf16ps on 16x16 fp32 tiles: 16 * 16 * 32 * 2 flops per instruction. Tile config: tiles 0-3
 * accumulators (16 rows x 64 bytes), 4 = A, 5 = B, loaded as a whole 64-byte object
 * (cpu/x86/amx_tilecfg.h says why _tile_loadconfig is not used). */
__attribute__((target("amx-tile,amx-bf16"))) static double amxbf16(int64_t iters) {
    static _Thread_local uint16_t buf[2][16 * 32];
    cf_amx_tilecfg cfg;
    cf_amx_tilecfg_fill(&cfg, 6, 16, 64);
    cf_amx_tilecfg_load(&cfg);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, buf[0], 64);
    _tile_loadd(5, buf[1], 64);
    for (int64_t k = 0; k < iters; k++) {
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 5);
        _tile_dpbf16ps(2, 4, 5);
        _tile_dpbf16ps(3, 4, 5);
    }
    _tile_release();
    return (double)iters * 4 * 16 * 16 * 32 * 2;
}
#define HAVE_AMX_PEAK 1
#endif
#elif defined(__aarch64__)
#include <arm_neon.h>

/* 16 independent accumulators, each through an empty asm every step (see above). */
#define X16(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define OPAQUE(i) __asm__ volatile("" : "+w"(a##i));
static double fma128(int64_t iters) {
    const float32x4_t x = vdupq_n_f32(0.999999f), y = vdupq_n_f32(1e-7f);
#define DECL(i) float32x4_t a##i = vdupq_n_f32((float)i);
#define STEP(i) a##i = vfmaq_f32(y, a##i, x);
#define SUM(i) s = vaddq_f32(s, a##i);
    X16(DECL)
    for (int64_t k = 0; k < iters; k++) {
        X16(STEP)
        X16(OPAQUE)
    }
    float32x4_t s = vdupq_n_f32(0.0f);
    X16(SUM)
    volatile float sink = vaddvq_f32(s);
    (void)sink;
    return (double)iters * 16 * 4 * 2;
}
/* BFMMLA: a (2 x 4) x (4 x 2) bf16 product into 2 x 2 fp32, 32 flops per instruction. */
__attribute__((target("arch=armv8.2-a+bf16"))) static double bfmmla(int64_t iters) {
    /* Through a volatile: GCC 12 would materialize the constant with an fp16 FMOV, which
     * FEAT_BF16 alone does not provide. */
    volatile uint32_t ones = 0x3f803f80; /* bf16 (1, 1) */
    const bfloat16x8_t x = vreinterpretq_bf16_u32(vdupq_n_u32(ones)), y = x;
#undef DECL
#undef STEP
#undef SUM
#define DECL(i) float32x4_t a##i = vdupq_n_f32((float)i);
#define STEP(i) a##i = vbfmmlaq_f32(a##i, x, y);
#define SUM(i) s = vaddq_f32(s, a##i);
    X16(DECL)
    for (int64_t k = 0; k < iters; k++) {
        X16(STEP)
        X16(OPAQUE)
    }
    float32x4_t s = vdupq_n_f32(0.0f);
    X16(SUM)
    volatile float sink = vaddvq_f32(s);
    (void)sink;
    return (double)iters * 16 * 32;
}
#endif

/* GFLOP/s of kernel run on every thread at once for about `seconds`; *per_cpu gets the same
 * normalised by the CPU time the threads got (GFLOP per CPU-second, times threads): on a shared
 * machine it is what the cores do while they run, not what the scheduler leaves. */
static double run_peak(double (*kernel)(int64_t), int threads, double seconds, double* per_cpu) {
    /* Calibrate on one thread, then time the parallel run. */
    int64_t iters = 1 << 12;
    for (;;) {
        double t0 = now_s();
        kernel(iters);
        double dt = now_s() - t0;
        if (dt > 0.02) {
            iters = (int64_t)((double)iters * seconds / dt) + 1;
            break;
        }
        iters *= 4;
    }
    double flops = 0.0, t0 = now_s(), c0 = cpu_s();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
    flops += kernel(iters);
    *per_cpu = flops / (cpu_s() - c0) * 1e-9 * threads;
    return flops / (now_s() - t0) * 1e-9;
}

/* Read + write bandwidth: copy between two buffers far larger than the caches. */
static double mem_bw(int threads) {
    const size_t n = (size_t)64 << 20; /* 64M floats = 256 MB each */
    float* a = malloc(n * sizeof(float));
    float* b = malloc(n * sizeof(float));
    if (!a || !b) {
        free(a), free(b);
        return 0.0;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        a[i] = (float)(i & 1023), b[i] = 0.0f;
    double best = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
#pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t i = 0; i < n; i++)
            b[i] = a[i] * 1.0001f;
        double dt = now_s() - t0;
        double gbs = 2.0 * (double)(n * sizeof(float)) / dt * 1e-9;
        if (gbs > best) best = gbs;
    }
    volatile float sink = b[n / 2];
    (void)sink;
    free(a), free(b);
    return best;
}

/* Measured once per thread count (the last one is kept). */
static cflash_peaks peak_wall, peak_cpu;
static pthread_mutex_t peak_lock = PTHREAD_MUTEX_INITIALIZER;

static void measure(int threads) {
    cflash_peaks p, pc;
    memset(&p, 0, sizeof p);
    memset(&pc, 0, sizeof pc);
    p.threads = pc.threads = threads;
#if defined(__x86_64__)
    const cf_cpu_info* ci = cf_cpu();
    if (ci->avx512f)
        p.fma_f32_gflops = run_peak(fma512, threads, 0.25, &pc.fma_f32_gflops);
    else if (ci->avx2 && ci->fma)
        p.fma_f32_gflops = run_peak(fma256, threads, 0.25, &pc.fma_f32_gflops);
    if (ci->avx512bf16) p.bf16_dot_gflops = run_peak(dpbf16, threads, 0.25, &pc.bf16_dot_gflops);
#ifdef HAVE_AMX_PEAK
    if (ci->amx_bf16 && ci->amx_permitted)
        p.amx_bf16_gflops = run_peak(amxbf16, threads, 0.25, &pc.amx_bf16_gflops);
#endif
#elif defined(__aarch64__)
    const cf_cpu_info* ci = cf_cpu();
    if (ci->neon) p.fma_f32_gflops = run_peak(fma128, threads, 0.25, &pc.fma_f32_gflops);
    if (ci->bf16) p.bf16_dot_gflops = run_peak(bfmmla, threads, 0.25, &pc.bf16_dot_gflops);
#endif
    p.mem_bw_gbs = mem_bw(threads);
    peak_wall = p;
    peak_cpu = pc;
}

cflash_status cflash_peaks_measure(int threads, cflash_peaks* wall, cflash_peaks* per_cpu) {
    if (threads <= 0) {
#ifdef _OPENMP
        threads = omp_get_max_threads();
#else
        threads = 1;
#endif
    }
    pthread_mutex_lock(&peak_lock);
    if (peak_wall.threads != threads) measure(threads);
    if (wall) *wall = peak_wall;
    if (per_cpu) *per_cpu = peak_cpu;
    pthread_mutex_unlock(&peak_lock);
    return CFLASH_OK;
}
