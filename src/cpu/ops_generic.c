/* The fast op kernels (rotary, norm, KV cache, merge) built for the baseline ISA: backend
 * cpu-generic, which serves on any CPU. The same bodies are built for AVX2 and AVX-512 in
 * src/cpu/x86/ops_avx2.c and ops_avx512.c (AVX-512's KV cache: src/cpu/x86/kv_avx512.c). */
#include "cpu/ops_fast_common.h"

#include "cpu/kvcache_fast.h"
#include "cpu/merge_fast.h"
#include "cpu/norm_fast.h"
#include "cpu/rotary_fast.h"

static cflash_status generic_kvcache_run(const void* call) {
    return kv_run(call, kv_choose_generic);
}

const cf_impl cf_impl_generic_kvcache_fwd = {
    .backend = "cpu-generic",
    .op = CFLASH_OP_KVCACHE_FWD,
    .device_type = kDLCPU,
    .supports = NULL, /* every call */
    .run = generic_kvcache_run,
};

#define CF_OPS_ISA generic
#define CF_OPS_BACKEND "cpu-generic"
#define CF_OPS_AVAILABLE NULL
#include "cpu/ops_fast_impls.h"
