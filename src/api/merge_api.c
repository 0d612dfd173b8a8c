/* cflash_attn_merge entry point: validate the partial outputs and LSEs and the outputs, build the
 * cf_merge_call, dispatch. */
#include <string.h>

#include "api/context.h"
#include "api/ops_api.h"
#include "core/status.h"
#include "core/threads.h"

#define INVALID CFLASH_ERR_INVALID_ARGUMENT

static cflash_status attn_merge(cflash_context* ctx, const DLTensor* out_partial,
                                const DLTensor* lse_partial, DLTensor* out, DLTensor* lse) {
    cf_merge_call c;
    memset(&c, 0, sizeof c);
    CFLASH_FORWARD_IF_ERROR(
        cf_ops_shape(&c.op, out_partial, "out_partial", 5, NULL, "(NS, B, Sq, H, Dv)"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(&c.op, "out_partial", NULL, NULL));
    c.NS = c.op.shape[0], c.B = c.op.shape[1], c.Sq = c.op.shape[2], c.H = c.op.shape[3],
    c.Dv = c.op.shape[4];
    c.device_type = c.op.device_type;
    c.device_id = c.op.device_id;
    CFLASH_RETURN_IF(c.NS < 1, INVALID, "out_partial: NS = 0 parts, expected >= 1");
    const int64_t wl[4] = {c.NS, c.B, c.H, c.Sq};
    CFLASH_FORWARD_IF_ERROR(
        cf_ops_shape(&c.lp, lse_partial, "lse_partial", 4, wl, "(NS, B, H, Sq)"));
    CFLASH_RETURN_IF(c.lp.dtype != CF_F32, INVALID, "lse_partial: dtype %s, expected float32",
                     cf_dtype_name(c.lp.dtype));
    CFLASH_RETURN_IF(c.lp.device_type != c.device_type || c.lp.device_id != c.device_id, INVALID,
                     "lse_partial: on %s, expected %s (the device of out_partial)",
                     cf_device_name(c.lp.device_type), cf_device_name(c.device_type));
    const int64_t wo[4] = {c.B, c.Sq, c.H, c.Dv};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.out, out, "out", 4, wo, "(B, Sq, H, Dv)"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(&c.out, "out", &c.op, "out_partial"));
    if (lse) {
        const int64_t wlo[3] = {c.B, c.H, c.Sq};
        CFLASH_FORWARD_IF_ERROR(cf_ops_shape(&c.lse, lse, "lse", 3, wlo, "(B, H, Sq)"));
        CFLASH_RETURN_IF(c.lse.dtype != CF_F32, INVALID, "lse: dtype %s, expected float32",
                         cf_dtype_name(c.lse.dtype));
        CFLASH_RETURN_IF(c.lse.device_type != c.device_type || c.lse.device_id != c.device_id,
                         INVALID, "lse: on %s, expected %s (the device of out_partial)",
                         cf_device_name(c.lse.device_type), cf_device_name(c.device_type));
    }
    CFLASH_FORWARD_IF_ERROR(cf_check_output(out, "out"));
    CFLASH_FORWARD_IF_ERROR(cf_check_output(lse, "lse"));
    const cf_view *ov[2] = {&c.out, &c.lse}, *iv[2] = {&c.op, &c.lp};
    const char* onames[2] = {"out", "lse"};
    const char* inames[2] = {"out_partial", "lse_partial"};
    CFLASH_FORWARD_IF_ERROR(cf_check_outputs_apart(ov, onames, 2, iv, inames, 2, 0));
    /* The NS partial outputs read, the output written. */
    c.threads = cf_threads_resolve(
        "attn_merge", cf_context_threads(ctx),
        (double)c.B * (double)c.Sq * (double)c.H * (double)c.Dv *
            ((double)c.NS * (double)cf_dtype_size(c.op.dtype) + (double)cf_dtype_size(c.out.dtype)),
        0);
    c.stream = ctx ? ctx->cuda_stream : NULL;
    /* nothing to write (Dv = 0 writes only the lse); dims of empty tensors may be huge */
    return cf_context_dispatch(ctx, CFLASH_OP_ATTN_MERGE, c.device_type, &c,
                               c.B == 0 || c.Sq == 0 || c.H == 0 || (c.Dv == 0 && !lse));
}

cflash_status cflash_attn_merge(cflash_context* ctx, const DLTensor* out_partial,
                                const DLTensor* lse_partial, DLTensor* out, DLTensor* lse) {
    return cf_context_end_call(ctx, attn_merge(ctx, out_partial, lse_partial, out, lse));
}
