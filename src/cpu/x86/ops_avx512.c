/* The fast op kernels (rotary, norm, KV cache, merge) built for AVX-512 (F, BW, VL, DQ) with
 * 512-bit vectors: backend cpu-avx512, available when the CPU probe reports them (with OS
 * support). Bodies: src/cpu/{rotary,norm,kvcache,merge}_fast.h. */
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")

#include "cpu/ops_fast_common.h"

#include "cpu/kvcache_fast.h"
#include "cpu/merge_fast.h"
#include "cpu/norm_fast.h"
#include "cpu/rotary_fast.h"
#include "probe/cpu_features.h"

static int ops_avx512_available(char* why, size_t n) {
    const cf_cpu_info* c = cf_cpu();
    if (c->avx512f && c->avx512bw && c->avx512vl && c->avx512dq && c->fma && c->f16c) return 1;
    snprintf(why, n, "needs AVX-512 F/BW/VL/DQ: CPU (with OS support) has f=%d bw=%d vl=%d dq=%d",
             c->avx512f, c->avx512bw, c->avx512vl, c->avx512dq);
    return 0;
}

#define CF_OPS_ISA avx512
#define CF_OPS_BACKEND "cpu-avx512"
#define CF_OPS_AVAILABLE ops_avx512_available
#include "cpu/ops_fast_impls.h"
#endif
