/* RMSNorm / LayerNorm entry points: validate every argument before any work, flatten the rows to
 * 2-D (M, N) views, build the cf_norm_call, dispatch. Nothing here writes caller memory. */
#include <math.h>
#include <string.h>

#include "api/context.h"
#include "api/ops_api.h"
#include "core/checked.h"
#include "core/status.h"
#include "core/threads.h"

#define INVALID CFLASH_ERR_INVALID_ARGUMENT

void cflash_norm_params_init(cflash_norm_params* p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->type = CFLASH_NORM_RMS;
    p->eps = 1e-6f;
}

static cflash_status check_params(const cflash_norm_params* p) {
    CFLASH_RETURN_IF(p->type != CFLASH_NORM_RMS && p->type != CFLASH_NORM_LAYER, INVALID,
                     "type: %d, expected CFLASH_NORM_RMS (0) or CFLASH_NORM_LAYER (1)",
                     (int)p->type);
    CFLASH_RETURN_IF(!(p->eps > 0.0f) || !isfinite(p->eps), INVALID,
                     "eps: %g, expected a finite value > 0", (double)p->eps);
    CFLASH_RETURN_IF(!(p->dropout_p >= 0.0f && p->dropout_p < 1.0f), INVALID,
                     "dropout_p: %g, expected a value in [0, 1)", (double)p->dropout_p);
    return CFLASH_OK;
}

/* Loads a (..., N) tensor shaped like x (shape of x: xs, nd dims) as a 2-D (M, N) view. */
static cflash_status rows(cf_view* v, const DLTensor* t, const char* name, const DLTensor* x,
                          const cf_view* ref, cf_dtype allowed, const char* allowed_what) {
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(v, t, name, x->ndim, x->shape, "(..., N), that of x"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(v, name, ref, "x"));
    if (allowed != CF_DTYPE_BAD || allowed_what)
        CFLASH_FORWARD_IF_ERROR(cf_ops_dtype_in(v, name, allowed, allowed_what));
    /* The leading dims of size > 1, innermost first, must each step by the whole of the ones
     * inside: dim i's stride = stride * shape of the previous one (signs included). */
    int nd = v->ndim, set = 0;
    int64_t N = v->shape[nd - 1], M, rs = N, want = 0;
    /* rows: fits in int64 (the view's element count does) unless N = 0 */
    CFLASH_RETURN_IF(cf_prod_i64(v->shape, nd - 1, &M), INVALID,
                     "%s: last dim N = 0 with more than INT64_MAX rows, expected N >= 1", name);
    for (int i = nd - 2; i >= 0 && M > 0; i--) {
        if (v->shape[i] == 1) continue;
        if (!set)
            rs = v->stride[i], set = 1;
        else if (v->stride[i] != want)
            return cf_error(INVALID,
                            "%s: dim %d has stride %lld, expected %lld: the leading dims must "
                            "flatten to rows of one stride",
                            name, i, (long long)v->stride[i], (long long)want);
        /* on overflow no valid stride can match (INT64_MIN fails the extent check) */
        if (cf_mul_i64(v->stride[i], v->shape[i], &want)) want = INT64_MIN;
    }
    v->ndim = 2;
    v->shape[0] = M;
    v->stride[0] = rs;
    v->shape[1] = N;
    v->stride[1] = 1;
    for (int i = 2; i < CF_MAX_DIMS; i++)
        v->shape[i] = 1, v->stride[i] = 0;
    return CFLASH_OK;
}

/* [n] vector (weight, bias, mean, rstd, dweight, dbias). */
static cflash_status vec(cf_view* v, const DLTensor* t, const char* name, int64_t n,
                         const cf_view* ref, cf_dtype allowed, const char* allowed_what) {
    const int64_t want[1] = {n};
    CFLASH_FORWARD_IF_ERROR(cf_ops_shape(v, t, name, 1, want, "[n]"));
    CFLASH_FORWARD_IF_ERROR(cf_ops_float(v, name, ref, "x"));
    if (allowed_what) CFLASH_FORWARD_IF_ERROR(cf_ops_dtype_in(v, name, allowed, allowed_what));
    return CFLASH_OK;
}

static cflash_status check_x(cflash_context* ctx, cf_norm_call* c, const cflash_norm_params* p,
                             const DLTensor* x, const char* xname) {
    memset(c, 0, sizeof *c);
    CFLASH_FORWARD_IF_ERROR(check_params(p));
    CFLASH_FORWARD_IF_ERROR(cf_view_from(&c->x, x, xname));
    CFLASH_FORWARD_IF_ERROR(rows(&c->x, x, xname, x, NULL, CF_DTYPE_BAD, NULL));
    c->M = c->x.shape[0];
    c->N = c->x.shape[1];
    CFLASH_RETURN_IF(c->N < 1, INVALID, "%s: last dim N = 0, expected >= 1", xname);
    c->dtype = c->x.dtype;
    c->device_type = c->x.device_type;
    c->device_id = c->x.device_id;
    c->rms = p->type == CFLASH_NORM_RMS;
    c->eps = p->eps;
    c->dropout_p = p->dropout_p;
    c->seed = p->seed;
    c->offset = p->offset;
    /* x read, out (or dx) written, one more row stream (residual / dy): 3 row passes. */
    c->threads =
        cf_threads_resolve("norm", cf_context_threads(ctx),
                           3.0 * (double)c->M * (double)c->N * (double)cf_dtype_size(c->dtype), 0);
    c->stream = ctx ? ctx->cuda_stream : NULL;
    return CFLASH_OK;
}

static cflash_status check_wb(cf_norm_call* c, const DLTensor* weight, const DLTensor* bias) {
    if (weight)
        CFLASH_FORWARD_IF_ERROR(
            vec(&c->weight, weight, "weight", c->N, &c->x, c->dtype, "float32 or the dtype of x"));
    if (bias)
        CFLASH_FORWARD_IF_ERROR(
            vec(&c->bias, bias, "bias", c->N, &c->x, c->dtype, "float32 or the dtype of x"));
    return CFLASH_OK;
}

static cflash_status check_stats(cf_norm_call* c, const DLTensor* mean, const DLTensor* rstd) {
    if (mean) {
        CFLASH_RETURN_IF(c->rms, INVALID,
                         "mean: given for RMSNorm, expected NULL (only LayerNorm has a mean)");
        CFLASH_FORWARD_IF_ERROR(
            vec(&c->mean, mean, "mean", c->M, &c->x, CF_DTYPE_BAD, "float32 [M]"));
    }
    if (rstd)
        CFLASH_FORWARD_IF_ERROR(
            vec(&c->rstd, rstd, "rstd", c->M, &c->x, CF_DTYPE_BAD, "float32 [M]"));
    return CFLASH_OK;
}

static cflash_status norm_fwd(cflash_context* ctx, const cflash_norm_params* p, const DLTensor* x,
                              const DLTensor* residual, const DLTensor* weight,
                              const DLTensor* bias, DLTensor* out, DLTensor* residual_out,
                              DLTensor* mean, DLTensor* rstd) {
    cflash_norm_params defaults;
    if (!p) {
        cflash_norm_params_init(&defaults);
        p = &defaults;
    }
    cf_norm_call c;
    CFLASH_FORWARD_IF_ERROR(check_x(ctx, &c, p, x, "x"));
    const char* xd = "float32 or the dtype of x";
    if (residual)
        CFLASH_FORWARD_IF_ERROR(rows(&c.residual, residual, "residual", x, &c.x, c.dtype, xd));
    CFLASH_FORWARD_IF_ERROR(check_wb(&c, weight, bias));
    CFLASH_FORWARD_IF_ERROR(rows(&c.out, out, "out", x, &c.x, CF_DTYPE_BAD, NULL));
    if (residual_out)
        CFLASH_FORWARD_IF_ERROR(
            rows(&c.residual_out, residual_out, "residual_out", x, &c.x, c.dtype, xd));
    CFLASH_FORWARD_IF_ERROR(check_stats(&c, mean, rstd));
    const DLTensor* outs[4] = {out, residual_out, mean, rstd};
    const char* names[4] = {"out", "residual_out", "mean", "rstd"};
    for (int i = 0; i < 4; i++)
        CFLASH_FORWARD_IF_ERROR(cf_check_output(outs[i], names[i]));
    /* out and residual_out may each be x or residual itself (in place: a row is read whole
     * before any of it is written, on every backend); nothing else may share memory */
    const cf_view* ov[4] = {&c.out, &c.residual_out, &c.mean, &c.rstd};
    const cf_view* iv[4] = {&c.x, &c.residual, &c.weight, &c.bias};
    const char* in_names[4] = {"x", "residual", "weight", "bias"};
    const uint64_t in_place = 1u << (0 * 4 + 0) | 1u << (0 * 4 + 1) | 1u << (1 * 4 + 0) |
                              1u << (1 * 4 + 1); /* (out, residual_out) over (x, residual) */
    CFLASH_FORWARD_IF_ERROR(cf_check_outputs_apart(ov, names, 4, iv, in_names, 4, in_place));
    return cf_context_dispatch(ctx, CFLASH_OP_NORM_FWD, c.device_type, &c, c.M == 0);
}

static cflash_status norm_bwd(cflash_context* ctx, const cflash_norm_params* p, const DLTensor* dy,
                              const DLTensor* x, const DLTensor* weight, const DLTensor* bias,
                              const DLTensor* mean, const DLTensor* rstd,
                              const DLTensor* dresidual_out, DLTensor* dx, DLTensor* dweight,
                              DLTensor* dbias, DLTensor* dresidual) {
    cflash_norm_params defaults;
    if (!p) {
        cflash_norm_params_init(&defaults);
        p = &defaults;
    }
    cf_norm_call c;
    CFLASH_FORWARD_IF_ERROR(check_x(ctx, &c, p, x, "x"));
    CFLASH_FORWARD_IF_ERROR(rows(&c.dy, dy, "dy", x, &c.x, CF_DTYPE_BAD, NULL));
    CFLASH_FORWARD_IF_ERROR(check_wb(&c, weight, bias));
    CFLASH_FORWARD_IF_ERROR(check_stats(&c, mean, rstd));
    if (dresidual_out)
        CFLASH_FORWARD_IF_ERROR(
            rows(&c.dresidual_out, dresidual_out, "dresidual_out", x, &c.x, CF_DTYPE_BAD, NULL));
    CFLASH_FORWARD_IF_ERROR(rows(&c.dx, dx, "dx", x, &c.x, CF_DTYPE_BAD, NULL));
    if (dweight) {
        CFLASH_RETURN_IF(!weight, INVALID, "dweight: given, but weight is NULL; expected NULL");
        CFLASH_FORWARD_IF_ERROR(vec(&c.dweight, dweight, "dweight", c.N, &c.x, CF_DTYPE_BAD, NULL));
    }
    if (dbias) {
        CFLASH_RETURN_IF(!bias, INVALID, "dbias: given, but bias is NULL; expected NULL");
        CFLASH_FORWARD_IF_ERROR(vec(&c.dbias, dbias, "dbias", c.N, &c.x, CF_DTYPE_BAD, NULL));
    }
    if (dresidual)
        CFLASH_FORWARD_IF_ERROR(
            rows(&c.dresidual, dresidual, "dresidual", x, &c.x, CF_DTYPE_BAD, NULL));
    const DLTensor* outs[4] = {dx, dweight, dbias, dresidual};
    const char* names[4] = {"dx", "dweight", "dbias", "dresidual"};
    for (int i = 0; i < 4; i++)
        CFLASH_FORWARD_IF_ERROR(cf_check_output(outs[i], names[i]));
    /* dx and dresidual may each be dresidual_out itself (in place, element by element); dx
     * must not be dy: the CUDA backend reads dy again for dweight after writing dx */
    const cf_view* ov[4] = {&c.dx, &c.dweight, &c.dbias, &c.dresidual};
    const cf_view* iv[7] = {&c.dy, &c.x, &c.weight, &c.bias, &c.mean, &c.rstd, &c.dresidual_out};
    const char* in_names[7] = {"dy", "x", "weight", "bias", "mean", "rstd", "dresidual_out"};
    const uint64_t in_place = (uint64_t)1 << 6 | (uint64_t)1 << (3 * 7 + 6);
    CFLASH_FORWARD_IF_ERROR(cf_check_outputs_apart(ov, names, 4, iv, in_names, 7, in_place));
    return cf_context_dispatch(ctx, CFLASH_OP_NORM_BWD, c.device_type, &c,
                               c.M == 0 && !dweight && !dbias);
}

cflash_status cflash_norm_fwd(cflash_context* ctx, const cflash_norm_params* p, const DLTensor* x,
                              const DLTensor* residual, const DLTensor* weight,
                              const DLTensor* bias, DLTensor* out, DLTensor* residual_out,
                              DLTensor* mean, DLTensor* rstd) {
    return cf_context_end_call(
        ctx, norm_fwd(ctx, p, x, residual, weight, bias, out, residual_out, mean, rstd));
}

cflash_status cflash_norm_bwd(cflash_context* ctx, const cflash_norm_params* p, const DLTensor* dy,
                              const DLTensor* x, const DLTensor* weight, const DLTensor* bias,
                              const DLTensor* mean, const DLTensor* rstd,
                              const DLTensor* dresidual_out, DLTensor* dx, DLTensor* dweight,
                              DLTensor* dbias, DLTensor* dresidual) {
    return cf_context_end_call(ctx, norm_bwd(ctx, p, dy, x, weight, bias, mean, rstd, dresidual_out,
                                             dx, dweight, dbias, dresidual));
}
