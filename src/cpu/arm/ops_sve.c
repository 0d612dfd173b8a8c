/* The fast op kernels (rotary, norm, KV cache, merge) compiled for SVE: backend cpu-sve. The
 * bodies' `omp simd` loops become vector-length-agnostic SVE loops (the length is read at run
 * time); the explicit vector paths are cpu-neon's (CF_OPS_NEON). Checked under qemu-user at
 * several vector lengths only. Bodies: src/cpu/{rotary,norm,kvcache,merge}_fast.h. */
#if defined(__aarch64__)
/* System headers first: the pragma below applies to every function declared after it. */
#include <arm_neon.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#pragma GCC target("arch=armv8.2-a+sve")
#define CF_OPS_NEON 1

#include "cpu/ops_fast_common.h"

#include "cpu/kvcache_fast.h"
#include "cpu/merge_fast.h"
#include "cpu/norm_fast.h"
#include "cpu/rotary_fast.h"
#include "probe/cpu_features.h"

static int ops_sve_available(char* why, size_t n) {
    const cf_cpu_info* c = cf_cpu();
    if (c->sve && c->neon) return 1;
    snprintf(why, n, "needs SVE: the kernel does not report sve (AT_HWCAP bit 22)");
    return 0;
}

static cflash_status sve_kvcache_run(const void* call) {
    return kv_run(call, kv_choose_generic);
}

const cf_impl cf_impl_sve_kvcache_fwd = {
    .backend = "cpu-sve",
    .op = CFLASH_OP_KVCACHE_FWD,
    .device_type = kDLCPU,
    .supports = NULL, /* every call */
    .run = sve_kvcache_run,
    .available = ops_sve_available,
};

#define CF_OPS_ISA sve
#define CF_OPS_BACKEND "cpu-sve"
#define CF_OPS_AVAILABLE ops_sve_available
#include "cpu/ops_fast_impls.h"
#endif
