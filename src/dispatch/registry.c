/* The registry: every backend name in priority order and, per op, the implementations in the order
 * the dispatcher tries them. A new backend adds its name here and its cf_impl rows below. */
#include <string.h>

#include "dispatch/dispatch.h"

const char* const cf_backend_names[] = {
    "cpu-amx",     "cpu-avx512", "cpu-avx2", "cpu-sve",   "cpu-neon",
    "cpu-generic", "cpu-ref",    "cuda-mma", "cuda-simt", NULL,
};

int cf_backend_known(const char* name) {
    for (const char* const* b = cf_backend_names; *b; b++)
        if (!strcmp(*b, name)) return 1;
    return 0;
}

/* Implementations, defined beside their kernels. */
extern const cf_impl cf_impl_ref_attn_fwd, cf_impl_ref_attn_bwd;
extern const cf_impl cf_impl_cuda_mma_attn_fwd, cf_impl_cuda_mma_attn_bwd;
extern const cf_impl cf_impl_cuda_simt_attn_fwd, cf_impl_cuda_simt_attn_bwd;
extern const cf_impl cf_impl_generic_attn_fwd, cf_impl_generic_attn_bwd;
extern const cf_impl cf_impl_amx_attn_fwd, cf_impl_amx_attn_bwd;
extern const cf_impl cf_impl_avx512_attn_fwd, cf_impl_avx512_attn_bwd;
extern const cf_impl cf_impl_avx2_attn_fwd, cf_impl_avx2_attn_bwd;
extern const cf_impl cf_impl_sve_attn_fwd, cf_impl_sve_attn_bwd;
extern const cf_impl cf_impl_neon_attn_fwd, cf_impl_neon_attn_bwd;

static const cf_impl* const attn_fwd[] = {
    &cf_impl_amx_attn_fwd, &cf_impl_avx512_attn_fwd,   &cf_impl_avx2_attn_fwd,
    &cf_impl_sve_attn_fwd, &cf_impl_neon_attn_fwd,     &cf_impl_generic_attn_fwd,
    &cf_impl_ref_attn_fwd, &cf_impl_cuda_mma_attn_fwd, &cf_impl_cuda_simt_attn_fwd,
};
static const cf_impl* const attn_bwd[] = {
    &cf_impl_amx_attn_bwd, &cf_impl_avx512_attn_bwd,   &cf_impl_avx2_attn_bwd,
    &cf_impl_sve_attn_bwd, &cf_impl_neon_attn_bwd,     &cf_impl_generic_attn_bwd,
    &cf_impl_ref_attn_bwd, &cf_impl_cuda_mma_attn_bwd, &cf_impl_cuda_simt_attn_bwd,
};

/* Ops around attention (rotary, norm, KV cache, merge): fast CPU kernels, then the reference. */
#if defined(__x86_64__)
#define CF_OPS_X86(op) &cf_impl_avx512_##op, &cf_impl_avx2_##op,
#else
#define CF_OPS_X86(op)
#endif
#if defined(__aarch64__)
#define CF_OPS_ARM(op) &cf_impl_sve_##op, &cf_impl_neon_##op,
#else
#define CF_OPS_ARM(op)
#endif
#define CF_OPS_DECL(op)                                                                            \
    extern const cf_impl cf_impl_avx512_##op, cf_impl_avx2_##op, cf_impl_sve_##op,                 \
        cf_impl_neon_##op, cf_impl_generic_##op, cf_impl_ref_##op;                                 \
    static const cf_impl* const op[] = {CF_OPS_X86(op) CF_OPS_ARM(op) & cf_impl_generic_##op,      \
                                        &cf_impl_ref_##op};
/* The same with the CUDA SIMT row last (src/cuda/cuda_ops.c). */
#define CF_OPS_DECL_CUDA(op)                                                                       \
    extern const cf_impl cf_impl_avx512_##op, cf_impl_avx2_##op, cf_impl_sve_##op,                 \
        cf_impl_neon_##op, cf_impl_generic_##op, cf_impl_ref_##op, cf_impl_cuda_simt_##op;         \
    static const cf_impl* const op[] = {CF_OPS_X86(op) CF_OPS_ARM(op) & cf_impl_generic_##op,      \
                                        &cf_impl_ref_##op, &cf_impl_cuda_simt_##op};
CF_OPS_DECL_CUDA(rotary)
CF_OPS_DECL_CUDA(norm_fwd)
CF_OPS_DECL_CUDA(norm_bwd)
CF_OPS_DECL_CUDA(kvcache_fwd)
CF_OPS_DECL_CUDA(attn_merge)

#define CF_LIST(a) a, sizeof(a) / sizeof((a)[0])
static const struct {
    const cf_impl* const* impls;
    size_t n;
} table[CFLASH_OP_COUNT] = {
    [CFLASH_OP_ATTN_FWD] = {CF_LIST(attn_fwd)},
    [CFLASH_OP_ATTN_BWD] = {CF_LIST(attn_bwd)},
    [CFLASH_OP_ATTN_VARLEN_FWD] = {CF_LIST(attn_fwd)},
    [CFLASH_OP_ATTN_VARLEN_BWD] = {CF_LIST(attn_bwd)},
    [CFLASH_OP_ROTARY] = {CF_LIST(rotary)},
    [CFLASH_OP_NORM_FWD] = {CF_LIST(norm_fwd)},
    [CFLASH_OP_NORM_BWD] = {CF_LIST(norm_bwd)},
    [CFLASH_OP_KVCACHE_FWD] = {CF_LIST(kvcache_fwd)},
    [CFLASH_OP_ATTN_MERGE] = {CF_LIST(attn_merge)},
};

const cf_impl* const* cf_impls_for(cflash_op op, size_t* n) {
    if ((unsigned)op >= CFLASH_OP_COUNT) {
        *n = 0;
        return NULL;
    }
    *n = table[op].n;
    return table[op].impls;
}
