/* The registry: every implementation row (core/backend.h) in the order the dispatcher tries them.
 * The per-op lists and the backend names are derived from this one list, so a backend exists
 * exactly when it has rows here: adding a backend is declaring its rows and listing them below. */
#include <pthread.h>
#include <string.h>

#include "dispatch/dispatch.h"

/* A backend's rows for the ops around attention (rotary, norm, KV cache, merge), defined beside
 * their kernels (src/cpu/ops_fast_impls.h, src/cpu/ref/, src/cuda/). */
#define CF_OPS_ROWS_DECL(isa)                                                                      \
    extern const cf_impl cf_impl_##isa##_rotary, cf_impl_##isa##_norm_fwd,                         \
        cf_impl_##isa##_norm_bwd, cf_impl_##isa##_kvcache_fwd, cf_impl_##isa##_attn_merge
#define CF_OPS_ROWS(isa)                                                                           \
    &cf_impl_##isa##_rotary, &cf_impl_##isa##_norm_fwd, &cf_impl_##isa##_norm_bwd,                 \
        &cf_impl_##isa##_kvcache_fwd, &cf_impl_##isa##_attn_merge

extern const cf_impl cf_impl_amx_attn_fwd, cf_impl_amx_attn_bwd, cf_impl_amx_kvcache_fwd;
extern const cf_impl cf_impl_avx512_attn_fwd, cf_impl_avx512_attn_bwd;
extern const cf_impl cf_impl_avx2_attn_fwd, cf_impl_avx2_attn_bwd;
extern const cf_impl cf_impl_sve_attn_fwd, cf_impl_sve_attn_bwd;
extern const cf_impl cf_impl_neon_attn_fwd, cf_impl_neon_attn_bwd;
extern const cf_impl cf_impl_generic_attn_fwd, cf_impl_generic_attn_bwd;
extern const cf_impl cf_impl_ref_attn_fwd, cf_impl_ref_attn_bwd;
extern const cf_impl cf_impl_cuda_mma_attn_fwd, cf_impl_cuda_mma_attn_bwd;
extern const cf_impl cf_impl_cuda_simt_attn_fwd, cf_impl_cuda_simt_attn_bwd;
#if defined(__x86_64__)
CF_OPS_ROWS_DECL(avx512);
CF_OPS_ROWS_DECL(avx2);
#define CF_X86_OPS_ROWS(isa) CF_OPS_ROWS(isa),
#else
#define CF_X86_OPS_ROWS(isa)
#endif
#if defined(__aarch64__)
CF_OPS_ROWS_DECL(sve);
CF_OPS_ROWS_DECL(neon);
#define CF_ARM_OPS_ROWS(isa) CF_OPS_ROWS(isa),
#else
#define CF_ARM_OPS_ROWS(isa)
#endif
CF_OPS_ROWS_DECL(generic);
CF_OPS_ROWS_DECL(ref);
CF_OPS_ROWS_DECL(cuda_simt);

/* Backend by backend, fastest first; within a device the first row that can serve a call runs. */
/* clang-format off */
static const cf_impl* const rows[] = {
    /* cpu-amx     */ &cf_impl_amx_attn_fwd, &cf_impl_amx_attn_bwd, &cf_impl_amx_kvcache_fwd,
    /* cpu-avx512  */ &cf_impl_avx512_attn_fwd, &cf_impl_avx512_attn_bwd, CF_X86_OPS_ROWS(avx512)
    /* cpu-avx2    */ &cf_impl_avx2_attn_fwd, &cf_impl_avx2_attn_bwd, CF_X86_OPS_ROWS(avx2)
    /* cpu-sve     */ &cf_impl_sve_attn_fwd, &cf_impl_sve_attn_bwd, CF_ARM_OPS_ROWS(sve)
    /* cpu-neon    */ &cf_impl_neon_attn_fwd, &cf_impl_neon_attn_bwd, CF_ARM_OPS_ROWS(neon)
    /* cpu-generic */ &cf_impl_generic_attn_fwd, &cf_impl_generic_attn_bwd, CF_OPS_ROWS(generic),
    /* cpu-ref     */ &cf_impl_ref_attn_fwd, &cf_impl_ref_attn_bwd, CF_OPS_ROWS(ref),
    /* cuda-mma    */ &cf_impl_cuda_mma_attn_fwd, &cf_impl_cuda_mma_attn_bwd,
    /* cuda-simt   */ &cf_impl_cuda_simt_attn_fwd, &cf_impl_cuda_simt_attn_bwd,
                      CF_OPS_ROWS(cuda_simt),
};
/* clang-format on */
enum { N_ROWS = sizeof rows / sizeof rows[0] };

/* Derived once: the rows of each op (the varlen ops share the batch ops' rows) and the distinct
 * backend names in order of first appearance. */
static const cf_impl* by_op[CFLASH_OP_COUNT][N_ROWS];
static size_t n_by_op[CFLASH_OP_COUNT];
static const char* names[N_ROWS + 1];
static size_t n_names;
static pthread_once_t derived_once = PTHREAD_ONCE_INIT;

static cflash_op row_op(cflash_op op) {
    if (op == CFLASH_OP_ATTN_VARLEN_FWD) return CFLASH_OP_ATTN_FWD;
    if (op == CFLASH_OP_ATTN_VARLEN_BWD) return CFLASH_OP_ATTN_BWD;
    return op;
}

static void derive(void) {
    for (size_t i = 0; i < N_ROWS; i++) {
        const cf_impl* im = rows[i];
        for (int op = 0; op < CFLASH_OP_COUNT; op++)
            if (row_op((cflash_op)op) == im->op) by_op[op][n_by_op[op]++] = im;
        size_t k = 0;
        while (k < n_names && strcmp(names[k], im->backend))
            k++;
        if (k == n_names) names[n_names++] = im->backend;
    }
}

const char* cf_backend_name(size_t i) {
    pthread_once(&derived_once, derive);
    return i < n_names ? names[i] : NULL;
}

int cf_backend_known(const char* name) {
    const char* b;
    for (size_t i = 0; (b = cf_backend_name(i)) != NULL; i++)
        if (!strcmp(b, name)) return 1;
    return 0;
}

const cf_impl* const* cf_impls_for(cflash_op op, size_t* n) {
    if ((unsigned)op >= CFLASH_OP_COUNT) {
        *n = 0;
        return NULL;
    }
    pthread_once(&derived_once, derive);
    *n = n_by_op[op];
    return by_op[op];
}
