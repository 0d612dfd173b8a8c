/* The cf_impl rows of the fast op kernels rotary, norm and merge, stamped once per ISA file (the
 * KV-cache row is defined beside each build's choice of KV kernels). Before including it define
 * CF_OPS_ISA (name fragment), CF_OPS_BACKEND (backend name) and CF_OPS_AVAILABLE (an
 * int (*)(char*, size_t) or NULL), after the kernel bodies. */
#define CF_OPS_CAT2(a, b) a##b
#define CF_OPS_CAT(a, b) CF_OPS_CAT2(a, b)
#define CF_OPS_IMPL(name, OP, fn, sup)                                                             \
    const cf_impl CF_OPS_CAT(CF_OPS_CAT(CF_OPS_CAT(cf_impl_, CF_OPS_ISA), _), name) = {            \
        .backend = CF_OPS_BACKEND,                                                                 \
        .op = OP,                                                                                  \
        .device_type = kDLCPU,                                                                     \
        .supports = sup, /* NULL: every CPU call of the op */                                      \
        .run = fn,                                                                                 \
        .available = CF_OPS_AVAILABLE,                                                             \
    };

CF_OPS_IMPL(rotary, CFLASH_OP_ROTARY, fast_rotary_run, NULL)
CF_OPS_IMPL(norm_fwd, CFLASH_OP_NORM_FWD, fast_norm_fwd_run, NULL)
CF_OPS_IMPL(norm_bwd, CFLASH_OP_NORM_BWD, fast_norm_bwd_run, NULL)
CF_OPS_IMPL(attn_merge, CFLASH_OP_ATTN_MERGE, fast_merge_run, NULL)
