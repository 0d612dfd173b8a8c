/* cuda-simt rows for the ops around attention: rotary, RMSNorm/LayerNorm forward and backward,
 * and the LSE merge. Fills the argument structs of src/cuda/kernels/cf_ops_args.cuh from the
 * validated calls (index arrays, which the API keeps in host memory, are uploaded per call) and
 * launches the kernels of ops_simt.cu on the context's stream. The KV-cache op lives in
 * cuda_attn.c, beside the attention kernels it shares. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "core/ops_call.h"
#include "core/philox.h"
#include "core/status.h"
#include "cuda/cuda_drv.h"
#include "cuda/cuda_launch.h"
#include "cuda/cuda_rtc.h"
#include "cuda/kernels/cf_ops_args.cuh"

#define OPS_SRC "ops_simt.cu"
#define NORM_THREADS 256 /* CF_NORM_THREADS */

static int ops_available(char* why, size_t n) {
    if (!cf_cu_available(why, n)) return 0;
    char r[1024];
    if (!cf_nvrtc_available(r, sizeof r) && cf_cuda_aot_count == 0) {
        snprintf(why, n, "NVRTC needed (no precompiled cubins in this build): %s", r);
        return 0;
    }
    return 1;
}

static int ops_supports(int device_id, char* why, size_t n) {
    cf_cu_device dev;
    if (cf_cu_device_get(device_id, &dev) != CFLASH_OK) {
        snprintf(why, n, "%s", cflash_last_error());
        return 0;
    }
    int arch = dev.cc_major * 10 + dev.cc_minor;
    for (int i = 0; i < cf_cuda_aot_count; i++)
        if (cf_cuda_aot_table[i].arch == arch && !strcmp(cf_cuda_aot_table[i].name, OPS_SRC))
            return 1;
    int target, ptx;
    if (cf_nvrtc_target(arch, &target, &ptx) != CFLASH_OK) {
        snprintf(why, n, "%s", cflash_last_error());
        return 0;
    }
    return 1;
}

/* One op run: device, context, module, uploaded arrays. */
typedef struct ops_run {
    cf_cu_device dev;
    CUstream stream;
    CUmodule mod;
    CUdeviceptr tmp[2];
    int entered;
} ops_run;

static cflash_status begin(ops_run* r, int device_id, void* stream) {
    memset(r, 0, sizeof *r);
    CFLASH_FORWARD_IF_ERROR(cf_cu_device_get(device_id, &r->dev));
    CFLASH_FORWARD_IF_ERROR(cf_cu_enter(device_id));
    r->entered = 1;
    r->stream = (CUstream)stream;
    return cf_cuda_module(&r->dev, OPS_SRC, "", &r->mod);
}

static cflash_status end(ops_run* r, cflash_status s) {
    for (int i = 0; i < 2; i++)
        cf_cuda_tmp_free(&r->dev, r->stream, r->tmp[i]);
    if (r->entered) cf_cu_leave();
    return s;
}

/* ---- Rotary ------------------------------------------------------------------------------- */

static int rotary_supports(const void* call, char* why, size_t n) {
    const cf_rotary_call* c = call;
    if (c->B * c->S > 0x7fffffff) {
        snprintf(why, n, "B * S = %lld rows: more than one grid holds", (long long)(c->B * c->S));
        return 0;
    }
    return ops_supports(c->device_id, why, n);
}

static cflash_status rotary_run(const void* call) {
    const cf_rotary_call* c = call;
    ops_run r;
    cflash_status s = begin(&r, c->device_id, c->stream);
    cf_rotary_args a;
    memset(&a, 0, sizeof a);
    a.out = c->out.data;
    a.x = c->x.data;
    a.cos = c->cos.data;
    a.sin = c->sin.data;
    a.x_sb = c->x.stride[0], a.x_ss = c->x.stride[1], a.x_sh = c->x.stride[2];
    a.o_sb = c->out.stride[0], a.o_ss = c->out.stride[1], a.o_sh = c->out.stride[2];
    a.cos_s0 = c->cos.stride[0], a.sin_s0 = c->sin.stride[0];
    a.B = c->B, a.S = c->S, a.H = c->H, a.D = c->D, a.rd = c->rd, a.nrot = c->nrot;
    a.offset = c->offset;
    a.dt = (int)c->dtype, a.cs_dt = (int)c->cos.dtype;
    a.interleaved = c->interleaved, a.conjugate = c->conjugate, a.inplace = c->inplace;
    if (s == CFLASH_OK && c->varlen) {
        s = cf_cuda_upload(&r.dev, r.stream, c->cu, sizeof(int32_t) * (size_t)(c->B + 1),
                           &r.tmp[0]);
        a.cu = (const int*)(uintptr_t)r.tmp[0];
    }
    if (s == CFLASH_OK && c->offsets) {
        s = cf_cuda_upload(&r.dev, r.stream, c->offsets, sizeof(int32_t) * (size_t)c->B, &r.tmp[1]);
        a.offsets = (const int*)(uintptr_t)r.tmp[1];
    }
    if (s == CFLASH_OK)
        s = cf_cuda_launch(r.mod, "cf_rotary_simt", c->B * c->S, 1, 1, 128, 0, r.stream, &a);
    return end(&r, s);
}

/* ---- Merge -------------------------------------------------------------------------------- */

static int merge_supports(const void* call, char* why, size_t n) {
    const cf_merge_call* c = call;
    if (c->B * c->Sq * c->H > 0x7fffffff) {
        snprintf(why, n, "B * Sq * H = %lld rows: more than one grid holds",
                 (long long)(c->B * c->Sq * c->H));
        return 0;
    }
    return ops_supports(c->device_id, why, n);
}

static cflash_status merge_run(const void* call) {
    const cf_merge_call* c = call;
    ops_run r;
    cflash_status s = begin(&r, c->device_id, c->stream);
    cf_merge_args a;
    memset(&a, 0, sizeof a);
    a.op = c->op.data;
    a.lp = c->lp.data;
    a.out = c->out.data;
    a.lse = c->lse.data;
    a.op_s0 = c->op.stride[0], a.op_s1 = c->op.stride[1], a.op_s2 = c->op.stride[2];
    a.op_s3 = c->op.stride[3];
    a.lp_s0 = c->lp.stride[0], a.lp_s1 = c->lp.stride[1], a.lp_s2 = c->lp.stride[2];
    a.lp_s3 = c->lp.stride[3];
    a.o_s0 = c->out.stride[0], a.o_s1 = c->out.stride[1], a.o_s2 = c->out.stride[2];
    a.lse_s0 = c->lse.stride[0], a.lse_s1 = c->lse.stride[1], a.lse_s2 = c->lse.stride[2];
    a.NS = c->NS, a.B = c->B, a.Sq = c->Sq, a.H = c->H, a.Dv = c->Dv;
    a.op_dt = (int)c->op.dtype, a.out_dt = (int)c->out.dtype;
    if (s == CFLASH_OK)
        s = cf_cuda_launch(r.mod, "cf_merge_simt", c->B * c->Sq * c->H, 1, 1, 128, 0, r.stream, &a);
    return end(&r, s);
}

/* ---- Norm --------------------------------------------------------------------------------- */

static void norm_t(cf_norm_t* t, const cf_view* v) {
    t->p = v->data;
    t->s0 = v->stride[0];
    t->s1 = v->ndim > 1 ? v->stride[1] : 0;
    t->dt = (int)v->dtype;
}

static void norm_args(const cf_norm_call* c, cf_norm_args* a) {
    memset(a, 0, sizeof *a);
    norm_t(&a->x, &c->x);
    norm_t(&a->residual, &c->residual);
    norm_t(&a->weight, &c->weight);
    norm_t(&a->bias, &c->bias);
    norm_t(&a->out, &c->out);
    norm_t(&a->residual_out, &c->residual_out);
    norm_t(&a->mean, &c->mean);
    norm_t(&a->rstd, &c->rstd);
    norm_t(&a->dy, &c->dy);
    norm_t(&a->dresidual_out, &c->dresidual_out);
    norm_t(&a->dx, &c->dx);
    norm_t(&a->dweight, &c->dweight);
    norm_t(&a->dbias, &c->dbias);
    norm_t(&a->dresidual, &c->dresidual);
    a->M = c->M, a->N = c->N;
    a->seed = c->seed, a->offset = c->offset;
    a->keep_threshold = cf_dropout_threshold(c->dropout_p);
    a->eps = c->eps, a->dropout_p = c->dropout_p, a->keep_scale = 1.0f / (1.0f - c->dropout_p);
    a->rms = c->rms;
}

static int norm_supports(const void* call, char* why, size_t n) {
    const cf_norm_call* c = call;
    if (c->M > 0x7fffffff) {
        snprintf(why, n, "M = %lld rows: more than one grid holds", (long long)c->M);
        return 0;
    }
    return ops_supports(c->device_id, why, n);
}

static cflash_status norm_fwd_run(const void* call) {
    const cf_norm_call* c = call;
    ops_run r;
    cflash_status s = begin(&r, c->device_id, c->stream);
    cf_norm_args a;
    norm_args(c, &a);
    if (s == CFLASH_OK)
        s = cf_cuda_launch(r.mod, "cf_norm_fwd_simt", c->M, 1, 1, NORM_THREADS, 0, r.stream, &a);
    return end(&r, s);
}

static cflash_status norm_bwd_run(const void* call) {
    const cf_norm_call* c = call;
    ops_run r;
    cflash_status s = begin(&r, c->device_id, c->stream);
    cf_norm_args a;
    norm_args(c, &a);
    if (s == CFLASH_OK)
        s = cf_cuda_tmp_alloc(&r.dev, r.stream, sizeof(float) * 2 * (size_t)c->M, &r.tmp[0]);
    a.ws = (float*)(uintptr_t)r.tmp[0];
    if (s == CFLASH_OK)
        s = cf_cuda_launch(r.mod, "cf_norm_bwd_rows", c->M, 1, 1, NORM_THREADS, 0, r.stream, &a);
    if (s == CFLASH_OK && (c->dweight.data || c->dbias.data))
        s = cf_cuda_launch(r.mod, "cf_norm_bwd_cols", (c->N + 127) / 128, 1, 1, 128, 0, r.stream,
                           &a);
    return end(&r, s);
}

/* cf_impl.verified: the call's device (the first one for the report) against the tested archs. */
static int rotary_verified(const void* call, char* why, size_t n) {
    return cf_cuda_verified(call ? ((const cf_rotary_call*)call)->device_id : 0, "cuda-simt", why,
                            n);
}
static int merge_verified(const void* call, char* why, size_t n) {
    return cf_cuda_verified(call ? ((const cf_merge_call*)call)->device_id : 0, "cuda-simt", why,
                            n);
}
static int norm_verified(const void* call, char* why, size_t n) {
    return cf_cuda_verified(call ? ((const cf_norm_call*)call)->device_id : 0, "cuda-simt", why, n);
}

/* ---- Registry rows ------------------------------------------------------------------------ */

const cf_impl cf_impl_cuda_simt_rotary = {
    .backend = "cuda-simt",
    .op = CFLASH_OP_ROTARY,
    .device_type = kDLCUDA,
    .supports = rotary_supports,
    .verified = rotary_verified,
    .run = rotary_run,
    .available = ops_available,
};
const cf_impl cf_impl_cuda_simt_attn_merge = {
    .backend = "cuda-simt",
    .op = CFLASH_OP_ATTN_MERGE,
    .device_type = kDLCUDA,
    .supports = merge_supports,
    .verified = merge_verified,
    .run = merge_run,
    .available = ops_available,
};
const cf_impl cf_impl_cuda_simt_norm_fwd = {
    .backend = "cuda-simt",
    .op = CFLASH_OP_NORM_FWD,
    .device_type = kDLCUDA,
    .supports = norm_supports,
    .verified = norm_verified,
    .run = norm_fwd_run,
    .available = ops_available,
};
const cf_impl cf_impl_cuda_simt_norm_bwd = {
    .backend = "cuda-simt",
    .op = CFLASH_OP_NORM_BWD,
    .device_type = kDLCUDA,
    .supports = norm_supports,
    .verified = norm_verified,
    .run = norm_bwd_run,
    .available = ops_available,
};
