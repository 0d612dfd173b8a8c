/* Backend cpu-avx2: AVX2 + FMA + F16C microkernels for the tiled attention driver (any x86-64 from
 * Haswell / Zen 1): the kernels of src/cpu/attn_simd.h compiled for AVX2 (6 x 16 GEMM register
 * tile, 12 ymm accumulators). bf16 and fp16 are converted to fp32 as blocks are read. Built with
 * target attributes, chosen at run time. */
#include <stdio.h>

#include "core/backend.h"
#include "cpu/attn_cpu.h"
#include "probe/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#define CF_SIMD_AVX2
#include "cpu/attn_simd.h"

static const cf_attn_kernels kernels = {
    .name = "cpu-avx2",
    .gemm_f32 = gemm_f32,
    .gemm_bf16 = NULL,
    .scale_max_cols = scale_max_cols,
    .softcap_cols = softcap_cols,
    .exp_cols = exp_cols,
    .exp_row = exp_row,
    .ds_row = ds_row,
    .ds_cols = ds_cols,
    .pack_pairs_f32 = NULL,
    .interleave_u16 = cf_attn_generic_interleave_u16,
    .bias_t = bias_t,
    .to_f32 = to_f32,
    .from_f32 = from_f32,
};

static int avx2_available(char* reason, size_t len) {
    const cf_cpu_info* ci = cf_cpu();
    if (ci->avx2 && ci->fma && ci->f16c) return 1;
    snprintf(reason, len,
             "needs AVX2, FMA and F16C: CPU (or OS YMM state) has avx2=%d fma=%d f16c=%d", ci->avx2,
             ci->fma, ci->f16c);
    return 0;
}

const cf_attn_kernels* cf_attn_kernels_avx2(void) {
    return &kernels;
}
#else
static int avx2_available(char* reason, size_t len) {
    snprintf(reason, len, "not an x86-64 CPU");
    return 0;
}
const cf_attn_kernels* cf_attn_kernels_avx2(void) {
    return &cf_attn_kernels_generic;
}
#endif

static int avx2_supports(const void* call, char* reason, size_t len) {
    return cf_attn_cpu_supports(call, cf_attn_kernels_avx2(), reason, len);
}
#if defined(__x86_64__)
int cf_attn_avx2_decode(const void* call, cflash_status* st); /* kv_avx2.c */
#endif
/* Decode rows (few query rows per KV head) on the KV-cache kernels, the rest tiled. */
static cflash_status avx2_fwd(const void* call) {
#if defined(__x86_64__)
    cflash_status st;
    if (cf_attn_avx2_decode(call, &st)) return st;
#endif
    return cf_attn_cpu_fwd(call, cf_attn_kernels_avx2());
}
static cflash_status avx2_bwd(const void* call) {
    return cf_attn_cpu_bwd(call, cf_attn_kernels_avx2());
}

const cf_impl cf_impl_avx2_attn_fwd = {
    .backend = "cpu-avx2",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCPU,
    .supports = avx2_supports,
    .run = avx2_fwd,
    .available = avx2_available,
};
const cf_impl cf_impl_avx2_attn_bwd = {
    .backend = "cpu-avx2",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCPU,
    .supports = avx2_supports,
    .run = avx2_bwd,
    .available = avx2_available,
};
