/* The fast op kernels (rotary, norm, merge) built for AVX2 + FMA + F16C: backend cpu-avx2,
 * available when the CPU probe reports all three. Bodies: src/cpu/{rotary,norm,merge}_fast.h; the
 * KV cache's: kv_avx2.c. */
#if defined(__x86_64__)
/* System headers first: the clang pragma below gives every function declared after it the
 * target attribute. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#define CF_OPS_AVX2 1
#define CF_OPS_F16C 1

#include "cpu/ops_fast_common.h"

#include "cpu/merge_fast.h"
#include "cpu/norm_fast.h"
#include "cpu/rotary_fast.h"
#include "probe/cpu_features.h"

int cf_ops_avx2_available(char* why, size_t n); /* (kv_avx2.c's kvcache_fwd too) */
int cf_ops_avx2_available(char* why, size_t n) {
    const cf_cpu_info* c = cf_cpu();
    if (c->avx2 && c->fma && c->f16c) return 1;
    snprintf(why, n, "needs AVX2, FMA and F16C: CPU has avx2=%d fma=%d f16c=%d", c->avx2, c->fma,
             c->f16c);
    return 0;
}

#define CF_OPS_ISA avx2
#define CF_OPS_BACKEND "cpu-avx2"
#define CF_OPS_AVAILABLE cf_ops_avx2_available
#include "cpu/ops_fast_impls.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
