/* The CUDA attention backends: cuda-mma (tensor cores, sm_80+, fp16/bf16, forward and backward) and
 * cuda-simt (any arch NVRTC targets, every dtype, forward and backward). This file decides whether
 * a call can be served (with the reason when not), fills the kernel argument struct, picks the
 * kernel variant and tile, and launches on the context's stream. The kernels are in
 * src/cuda/kernels/. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/attn_call.h"
#include "core/backend.h"
#include "core/checked.h"
#include "core/ops_call.h"
#include "core/philox.h"
#include "core/status.h"
#include "cuda/cuda_drv.h"
#include "cuda/cuda_launch.h"
#include "cuda/cuda_rtc.h"
#include "cuda/kernels/cf_ops_args.cuh"

#define SIMT_WARPS 4 /* CF_WARPS in attn_simt.cu */
#define MMA_WARPS 4  /* attn_mma.cu: 4 warps x 16 query rows */
#define MMA_BQ 64
#define CF_DMAX_MAX 256

/* ---- Availability ------------------------------------------------------------------------- */

static int cuda_available(char* why, size_t n) {
    if (!cf_cu_available(why, n)) return 0;
    char r[1024];
    if (!cf_nvrtc_available(r, sizeof r) && cf_cuda_aot_count == 0) {
        snprintf(why, n, "NVRTC needed (no precompiled cubins in this build): %s", r);
        return 0;
    }
    return 1;
}

/* The variant's head-dim bucket: the smallest of 64, 128, 256 holding D and Dv. */
static int dmax_for(const cf_attn_call* c) {
    int64_t d = c->D > c->Dv ? c->D : c->Dv;
    return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

/* Can the device's arch be served: an AOT cubin, else an NVRTC target. */
static int arch_servable(const cf_cu_device* dev, const char* src, const char* defines, char* why,
                         size_t n) {
    int arch = dev->cc_major * 10 + dev->cc_minor;
    for (int i = 0; i < cf_cuda_aot_count; i++)
        if (cf_cuda_aot_table[i].arch == arch && !strcmp(cf_cuda_aot_table[i].name, src) &&
            !strcmp(cf_cuda_aot_table[i].defines, defines))
            return 1;
    int target, ptx;
    if (cf_nvrtc_target(arch, &target, &ptx) != CFLASH_OK) {
        snprintf(why, n, "%s", cflash_last_error());
        return 0;
    }
    return 1;
}

static size_t simt_fwd_smem(const cf_attn_call* c, int T, int dmax) {
    return sizeof(float) * ((size_t)T * (size_t)(c->D + 1) + (size_t)SIMT_WARPS * dmax);
}
static size_t simt_bwd_smem(const cf_attn_call* c, int T, int dmax) {
    return sizeof(float) * ((size_t)T * (size_t)(c->D + 1 + c->Dv + 1) + 2 * (size_t)T +
                            2 * (size_t)SIMT_WARPS * dmax);
}
/* Largest tile in {32, 16, 8} that fits the device's shared memory; 0 if none. */
static int simt_tile(const cf_attn_call* c, const cf_cu_device* dev, int bwd) {
    int dmax = dmax_for(c);
    for (int T = 32; T >= 8; T /= 2) {
        size_t s = bwd ? simt_bwd_smem(c, T, dmax) : simt_fwd_smem(c, T, dmax);
        if (s <= (size_t)dev->smem_optin) return T;
    }
    return 0;
}

/* Issue 13's features the CUDA kernels do not have: the name of the first one used, or NULL.
 * Refused in supports() so the automatic choice never hands such a call to a CUDA backend. */
static const char* missing_feature(const cf_attn_call* c) {
    if (c->sinks) return "sinks";
    if (c->bias.data) return "attn_bias";
    if (c->mask.data) return "attn_mask";
    if (c->bs_num.data) return "block-sparse mask";
    if (c->chunk > 0) return "attention_chunk";
    if (c->block_table) return "paged K/V (block_table)";
    if (c->seqused_q || c->seqused_k) return "seqused_q / seqused_k";
    return NULL;
}

/* Checks shared by both backends: features, device known, grid limits. */
static int common_supports(const cf_attn_call* c, cf_cu_device* dev, char* why, size_t n) {
    const char* f = missing_feature(c);
    if (f) {
        snprintf(why, n, "%s: not implemented on CUDA yet", f);
        return 0;
    }
    if (cf_cu_device_get(c->device_id, dev) != CFLASH_OK) {
        snprintf(why, n, "%s", cflash_last_error());
        return 0;
    }
    if (c->H > 65535 || c->B > 65535) {
        snprintf(why, n, "B = %lld, H = %lld: each must be <= 65535 (grid dims)", (long long)c->B,
                 (long long)c->H);
        return 0;
    }
    return 1;
}

/* ---- cuda-simt: supports ------------------------------------------------------------------ */

static int simt_supports(const cf_attn_call* c, int bwd, char* why, size_t n) {
    cf_cu_device dev;
    if (!common_supports(c, &dev, why, n)) return 0;
    if (c->D > CF_DMAX_MAX || c->Dv > CF_DMAX_MAX) {
        snprintf(why, n, "head dims D = %lld, Dv = %lld: cuda-simt handles up to %d",
                 (long long)c->D, (long long)c->Dv, CF_DMAX_MAX);
        return 0;
    }
    if (!simt_tile(c, &dev, bwd)) {
        snprintf(why, n, "needs %zu bytes of shared memory per block, %s has %d",
                 bwd ? simt_bwd_smem(c, 8, dmax_for(c)) : simt_fwd_smem(c, 8, dmax_for(c)),
                 dev.name, dev.smem_optin);
        return 0;
    }
    char defines[96];
    snprintf(defines, sizeof defines, "-DCF_DTYPE=%d -DCF_DMAX=%d", (int)c->dtype, dmax_for(c));
    return arch_servable(&dev, "attn_simt.cu", defines, why, n);
}
static int simt_supports_fwd(const void* call, char* why, size_t n) {
    return simt_supports(call, 0, why, n);
}
static int simt_supports_bwd(const void* call, char* why, size_t n) {
    return simt_supports(call, 1, why, n);
}

/* ---- Launch helpers ----------------------------------------------------------------------- */

static void fill_args(const cf_attn_call* c, cf_attn_args* a) {
    memset(a, 0, sizeof *a);
    a->q = c->q.data;
    a->k = c->k.data;
    a->v = c->v.data;
    a->out = c->out.data;
    a->lse = c->lse.data;
    a->dout = c->dout.data;
    a->dq = c->dq.data;
    a->dk = c->dk.data;
    a->dv = c->dv.data;
    a->alibi = c->alibi;
    a->alibi_bstride = c->alibi_bstride;
#define STR3(p, v) a->p##_sb = (v).stride[0], a->p##_ss = (v).stride[1], a->p##_sh = (v).stride[2]
    STR3(q, c->q);
    STR3(k, c->k);
    STR3(v, c->v);
    STR3(o, c->out);
    STR3(do, c->dout);
    STR3(dq, c->dq);
    STR3(dk, c->dk);
    STR3(dv, c->dv);
#undef STR3
    a->lse_sb = c->lse.stride[0];
    a->lse_sh = c->lse.stride[1];
    a->lse_ss = c->lse.stride[2];
    a->B = c->B;
    a->H = c->H;
    a->Hk = c->Hk;
    a->D = c->D;
    a->Dv = c->Dv;
    a->Sq = c->Sq;
    a->Sk = c->Sk;
    a->window_left = c->window_left;
    a->window_right = c->window_right;
    a->q_offset = c->q_offset;
    a->k_offset = c->k_offset;
    a->seed = c->seed;
    a->offset = c->offset;
    a->keep_threshold = cf_dropout_threshold(c->dropout_p);
    a->scale = c->scale;
    a->softcap = c->softcap;
    a->dropout_p = c->dropout_p;
    a->keep_scale = 1.0f / (1.0f - c->dropout_p);
}

/* State of one run: device, stream, module, temporary buffers. */
typedef struct run_state {
    cf_cu_device dev;
    CUstream stream;
    CUmodule mod;
    CUdeviceptr tmp[4]; /* cu_seqlens q, k; delta; dq_acc */
    int entered;
} run_state;

static cflash_status run_begin(run_state* st, const cf_attn_call* c, cf_attn_args* a,
                               const char* src, int dtype, int dmax) {
    memset(st, 0, sizeof *st);
    CFLASH_FORWARD_IF_ERROR(cf_cu_device_get(c->device_id, &st->dev));
    CFLASH_FORWARD_IF_ERROR(cf_cu_enter(c->device_id));
    st->entered = 1;
    st->stream = (CUstream)c->stream;
    char defines[96];
    snprintf(defines, sizeof defines, "-DCF_DTYPE=%d -DCF_DMAX=%d", dtype, dmax);
    CFLASH_FORWARD_IF_ERROR(cf_cuda_module(&st->dev, src, defines, &st->mod));
    fill_args(c, a);
    if (c->varlen) { /* the kernels read cu_seqlens from device memory */
        const int32_t* src_host[2] = {c->cu_q, c->cu_k};
        const int32_t* dev_ptr[2] = {c->cu_q_dev, c->cu_k_dev};
        const int** dst[2] = {&a->cu_q, &a->cu_k};
        for (int t = 0; t < 2; t++) {
            if (dev_ptr[t]) {
                *dst[t] = (const int*)dev_ptr[t];
                continue;
            }
            size_t bytes = sizeof(int32_t) * (size_t)(c->B + 1);
            CFLASH_FORWARD_IF_ERROR(cf_cuda_tmp_alloc(&st->dev, st->stream, bytes, &st->tmp[t]));
            CF_CU_TRY(cf_cu(NULL, 0)->cuMemcpyHtoDAsync(st->tmp[t], src_host[t], bytes, st->stream),
                      "copying cu_seqlens to the device");
            *dst[t] = (const int*)(uintptr_t)st->tmp[t];
        }
    }
    return CFLASH_OK;
}

static cflash_status run_end(run_state* st, cflash_status s) {
    for (int t = 0; t < 4; t++)
        cf_cuda_tmp_free(&st->dev, st->stream, st->tmp[t]);
    if (st->entered) cf_cu_leave();
    return s;
}

/* ---- cuda-simt: run ----------------------------------------------------------------------- */

static cflash_status simt_fwd_go(run_state* st, const cf_attn_call* c, cf_attn_args* a) {
    const int dmax = dmax_for(c);
    a->tile = simt_tile(c, &st->dev, 0);
    return cf_cuda_launch(st->mod, "cf_attn_fwd_simt", (c->Sq + SIMT_WARPS - 1) / SIMT_WARPS, c->H,
                          c->B, SIMT_WARPS * 32, simt_fwd_smem(c, a->tile, dmax), st->stream, a);
}

static cflash_status simt_fwd_run(const void* call) {
    const cf_attn_call* c = call;
    run_state st;
    cf_attn_args a;
    cflash_status s = run_begin(&st, c, &a, "attn_simt.cu", (int)c->dtype, dmax_for(c));
    if (s == CFLASH_OK) s = simt_fwd_go(&st, c, &a);
    return run_end(&st, s);
}

static cflash_status simt_bwd_run(const void* call) {
    const cf_attn_call* c = call;
    const int dmax = dmax_for(c);
    run_state st;
    cf_attn_args a;
    cflash_status s = run_begin(&st, c, &a, "attn_simt.cu", (int)c->dtype, dmax);
    if (s == CFLASH_OK)
        s = cf_cuda_tmp_alloc(&st.dev, st.stream, sizeof(float) * (size_t)(c->B * c->H * c->Sq),
                              &st.tmp[2]);
    if (s == CFLASH_OK) {
        a.delta = (float*)(uintptr_t)st.tmp[2];
        a.tile = simt_tile(c, &st.dev, 1);
        const size_t smem = simt_bwd_smem(c, a.tile, dmax);
        const int64_t gq = (c->Sq + SIMT_WARPS - 1) / SIMT_WARPS;
        const int64_t gk = (c->Sk + SIMT_WARPS - 1) / SIMT_WARPS;
        s = cf_cuda_launch(st.mod, "cf_attn_bwd_delta_simt", gq, c->H, c->B, SIMT_WARPS * 32, 0,
                           st.stream, &a);
        if (s == CFLASH_OK)
            s = cf_cuda_launch(st.mod, "cf_attn_bwd_dq_simt", gq, c->H, c->B, SIMT_WARPS * 32, smem,
                               st.stream, &a);
        if (s == CFLASH_OK)
            s = cf_cuda_launch(st.mod, "cf_attn_bwd_dkdv_simt", gk, c->Hk, c->B, SIMT_WARPS * 32,
                               smem, st.stream, &a);
    }
    return run_end(&st, s);
}

/* ---- cuda-mma ----------------------------------------------------------------------------- */

/* attn_mma.cu's forward pipeline depth, its CF_FWD_STAGES (a build of the kernel with another
 * value, through CFLASH_NVRTC_OPTIONS, needs a library built with -DMMA_FWD_STAGES to match). */
#ifndef MMA_FWD_STAGES
#define MMA_FWD_STAGES 1
#endif
/* attn_mma.cu: Qs[64][dmax + 8] + stages x (Ks[bk][dmax + 8] + Vs[bk][dmax + 8]) halves. */
static int mma_bk(int dmax) {
    return dmax >= 256 ? 32 : 64;
}
static size_t mma_smem(int dmax) {
    return 2 * (size_t)(MMA_BQ + 2 * MMA_FWD_STAGES * mma_bk(dmax)) * (size_t)(dmax + 8);
}

static int aligned16(const cf_view* v, const char* name, char* why, size_t n) {
    if ((uintptr_t)v->data % 16 == 0 && v->stride[0] % 8 == 0 && v->stride[1] % 8 == 0 &&
        v->stride[2] % 8 == 0)
        return 1;
    snprintf(why, n,
             "%s: tensor-core loads need 16-byte aligned rows (data %% 16 == 0 and strides "
             "multiples of 8 elements); cuda-simt serves any layout",
             name);
    return 0;
}

static int mma_supports_fwd(const void* call, char* why, size_t n) {
    const cf_attn_call* c = call;
    cf_cu_device dev;
    if (!common_supports(c, &dev, why, n)) return 0;
    int arch = dev.cc_major * 10 + dev.cc_minor;
    if (arch < 80) {
        snprintf(why, n, "needs sm_80 or newer (mma.sync bf16, cp.async); %s is sm_%d", dev.name,
                 arch);
        return 0;
    }
    if (c->dtype != CF_F16 && c->dtype != CF_BF16) {
        snprintf(why, n,
                 "dtype %s: tensor-core kernels take float16 or bfloat16 (cuda-simt "
                 "serves float32)",
                 cf_dtype_name(c->dtype));
        return 0;
    }
    if (c->D > CF_DMAX_MAX || c->Dv > CF_DMAX_MAX || c->D % 8 || c->Dv % 8) {
        snprintf(why, n, "head dims D = %lld, Dv = %lld: cuda-mma needs multiples of 8 up to %d",
                 (long long)c->D, (long long)c->Dv, CF_DMAX_MAX);
        return 0;
    }
    if (!aligned16(&c->q, "q", why, n) || !aligned16(&c->k, "k", why, n) ||
        !aligned16(&c->v, "v", why, n))
        return 0;
    if (mma_smem(dmax_for(c)) > (size_t)dev.smem_optin) {
        snprintf(why, n, "needs %zu bytes of shared memory per block, %s has %d",
                 mma_smem(dmax_for(c)), dev.name, dev.smem_optin);
        return 0;
    }
    char defines[96];
    snprintf(defines, sizeof defines, "-DCF_DTYPE=%d -DCF_DMAX=%d", (int)c->dtype, dmax_for(c));
    return arch_servable(&dev, "attn_mma.cu", defines, why, n);
}

/* attn_mma.cu's CF_BWD_ATOMIC_DQ: 1 = a backward that may be non-deterministic (params
 * deterministic 0) adds dQ with atomics in the dK/dV kernel instead of running the dQ kernel. A
 * variant for timing: the kernels must be built with it too (CFLASH_NVRTC_OPTIONS). */
#ifndef MMA_BWD_ATOMIC_DQ
#define MMA_BWD_ATOMIC_DQ 0
#endif
/* attn_mma.cu backward: four tiles of 64 rows x (dmax + 8) halves, plus lse and delta of 64 rows
 * (and with MMA_BWD_ATOMIC_DQ the dS^T tile, 64 x 72 halves). */
#define MMA_BT 64
static size_t mma_bwd_smem(int dmax) {
    return 2 * 4 * (size_t)MMA_BT * (size_t)(dmax + 8) + 2 * sizeof(float) * MMA_BT +
           (MMA_BWD_ATOMIC_DQ ? 2 * (size_t)MMA_BT * (MMA_BT + 8) : 0);
}

static int mma_supports_bwd(const void* call, char* why, size_t n) {
    const cf_attn_call* c = call;
    cf_cu_device dev;
    if (!common_supports(c, &dev, why, n)) return 0;
    int arch = dev.cc_major * 10 + dev.cc_minor;
    if (arch < 80) {
        snprintf(why, n, "needs sm_80 or newer (mma.sync bf16, cp.async); %s is sm_%d", dev.name,
                 arch);
        return 0;
    }
    if (c->dtype != CF_F16 && c->dtype != CF_BF16) {
        snprintf(why, n,
                 "dtype %s: tensor-core kernels take float16 or bfloat16 (cuda-simt "
                 "serves float32)",
                 cf_dtype_name(c->dtype));
        return 0;
    }
    if (c->D > CF_DMAX_MAX || c->Dv > CF_DMAX_MAX || c->D % 8 || c->Dv % 8) {
        snprintf(why, n, "head dims D = %lld, Dv = %lld: cuda-mma needs multiples of 8 up to %d",
                 (long long)c->D, (long long)c->Dv, CF_DMAX_MAX);
        return 0;
    }
    if (!aligned16(&c->q, "q", why, n) || !aligned16(&c->k, "k", why, n) ||
        !aligned16(&c->v, "v", why, n) || !aligned16(&c->dout, "dout", why, n))
        return 0;
    if (mma_bwd_smem(dmax_for(c)) > (size_t)dev.smem_optin) {
        snprintf(why, n, "backward needs %zu bytes of shared memory per block, %s has %d",
                 mma_bwd_smem(dmax_for(c)), dev.name, dev.smem_optin);
        return 0;
    }
    char defines[96];
    snprintf(defines, sizeof defines, "-DCF_DTYPE=%d -DCF_DMAX=%d", (int)c->dtype, dmax_for(c));
    return arch_servable(&dev, "attn_mma.cu", defines, why, n) &&
           arch_servable(&dev, "attn_simt.cu", defines, why, n);
}

static cflash_status mma_fwd_run(const void* call) {
    const cf_attn_call* c = call;
    const int dmax = dmax_for(c);
    run_state st;
    cf_attn_args a;
    cflash_status s = run_begin(&st, c, &a, "attn_mma.cu", (int)c->dtype, dmax);
    if (s == CFLASH_OK) {
        a.tile = mma_bk(dmax);
        s = cf_cuda_launch(st.mod, "cf_attn_fwd_mma", (c->Sq + MMA_BQ - 1) / MMA_BQ, c->H, c->B,
                           MMA_WARPS * 32, mma_smem(dmax), st.stream, &a);
    }
    return run_end(&st, s);
}

/* The atomic dQ variant's fp32 accumulator, [B][Sq][H][D], zeroed on the call's stream. */
static cflash_status dq_acc_alloc(run_state* st, const cf_attn_call* c, cf_attn_args* a) {
    const int64_t dims[5] = {c->B, c->Sq, c->H, c->D, (int64_t)sizeof(float)};
    int64_t bytes;
    CFLASH_RETURN_IF(cf_prod_i64(dims, 5, &bytes) || (uint64_t)bytes > SIZE_MAX,
                     CFLASH_ERR_OUT_OF_MEMORY,
                     "cuda-mma: dQ accumulator of %lld x %lld x %lld x %lld floats overflows",
                     (long long)c->B, (long long)c->Sq, (long long)c->H, (long long)c->D);
    CFLASH_FORWARD_IF_ERROR(cf_cuda_tmp_alloc(&st->dev, st->stream, (size_t)bytes, &st->tmp[3]));
    CF_CU_TRY(cf_cu(NULL, 0)->cuMemsetD32Async(st->tmp[3], 0, (size_t)bytes / 4, st->stream),
              "zeroing the dQ accumulator");
    a->dq_acc = (float*)(uintptr_t)st->tmp[3];
    return CFLASH_OK;
}

/* delta with the SIMT kernel, then dq and dk/dv on tensor cores (MMA_BWD_ATOMIC_DQ: dk/dv with
 * dQ by atomics, then dq from the accumulator). */
static cflash_status mma_bwd_run(const void* call) {
    const cf_attn_call* c = call;
    const int dmax = dmax_for(c);
    run_state st;
    cf_attn_args a;
    cflash_status s = run_begin(&st, c, &a, "attn_mma.cu", (int)c->dtype, dmax);
    CUmodule simt = NULL;
    if (s == CFLASH_OK) {
        char defines[96];
        snprintf(defines, sizeof defines, "-DCF_DTYPE=%d -DCF_DMAX=%d", (int)c->dtype, dmax);
        s = cf_cuda_module(&st.dev, "attn_simt.cu", defines, &simt);
    }
    if (s == CFLASH_OK)
        s = cf_cuda_tmp_alloc(&st.dev, st.stream, sizeof(float) * (size_t)(c->B * c->H * c->Sq),
                              &st.tmp[2]);
    if (s == CFLASH_OK) {
        a.delta = (float*)(uintptr_t)st.tmp[2];
        const size_t smem = mma_bwd_smem(dmax);
        s = cf_cuda_launch(simt, "cf_attn_bwd_delta_simt", (c->Sq + SIMT_WARPS - 1) / SIMT_WARPS,
                           c->H, c->B, SIMT_WARPS * 32, 0, st.stream, &a);
        const int atomic_dq = MMA_BWD_ATOMIC_DQ && !c->deterministic;
        if (s == CFLASH_OK && atomic_dq) s = dq_acc_alloc(&st, c, &a);
        if (s == CFLASH_OK && !atomic_dq)
            s = cf_cuda_launch(st.mod, "cf_attn_bwd_dq_mma", (c->Sq + MMA_BT - 1) / MMA_BT, c->H,
                               c->B, MMA_WARPS * 32, smem, st.stream, &a);
        if (s == CFLASH_OK)
            s = cf_cuda_launch(st.mod, "cf_attn_bwd_dkdv_mma", (c->Sk + MMA_BT - 1) / MMA_BT, c->Hk,
                               c->B, MMA_WARPS * 32, smem, st.stream, &a);
        if (s == CFLASH_OK && atomic_dq)
            s = cf_cuda_launch(st.mod, "cf_attn_bwd_dq_store", c->Sq, c->H, c->B, MMA_WARPS * 32, 0,
                               st.stream, &a);
    }
    return run_end(&st, s);
}

/* ---- KV cache (cuda-simt): append, split-KV attention, merge ----------------------------- */

static int kv_supports(const void* call, char* why, size_t n) {
    const cf_kvcache_call* k = call;
    if (k->a.cu_q || k->cu_knew) { /* issue 13: serving features, CPU backends only so far */
        snprintf(why, n,
                 "varlen queries / new keys (cu_seqlens_q, cu_seqlens_k_new): not implemented on "
                 "CUDA yet");
        return 0;
    }
    if (k->quant) {
        snprintf(why, n, "quantized KV cache (cache_quant %d): not implemented on CUDA yet",
                 k->quant);
        return 0;
    }
    if (k->a.sinks) {
        snprintf(why, n, "attention sinks (sinks): not implemented on CUDA yet");
        return 0;
    }
    if (k->latent && k->total_new) {
        snprintf(why, n,
                 "an append into an MLA latent cache (v_cache a view of k_cache, v_new NULL): not "
                 "implemented on CUDA yet");
        return 0;
    }
    return simt_supports(&k->a, 0, why, n);
}

/* Splits of the keys: num_splits when given, else enough blocks to fill the GPU twice over when
 * the query side alone does not (decode), with at least 256 keys per split. */
static int64_t kv_splits(const cf_kvcache_call* k, const cf_cu_device* dev) {
    const int64_t Sk = k->a.Sk > 0 ? k->a.Sk : 1;
    const int64_t blocks = (k->a.Sq + SIMT_WARPS - 1) / SIMT_WARPS * k->a.H * k->a.B;
    int64_t s = k->num_splits;
    if (s <= 0) {
        s = 1;
        if (blocks < 2 * (int64_t)dev->sm_count && Sk >= 512) {
            s = (2 * (int64_t)dev->sm_count + blocks - 1) / blocks;
            if (s > Sk / 256) s = Sk / 256;
        }
    }
    if (s > 64) s = 64;
    if (s > 65535 / k->a.B) s = 65535 / k->a.B; /* grid z = B * splits */
    if (s > Sk) s = Sk;
    return s < 1 ? 1 : s;
}

static cflash_status kv_upload(run_state* st, const int32_t* host, int64_t count, int slot,
                               const int** dst, CUdeviceptr* extra) {
    if (!host) return CFLASH_OK;
    CUdeviceptr p = 0;
    CFLASH_FORWARD_IF_ERROR(
        cf_cuda_upload(&st->dev, st->stream, host, sizeof(int32_t) * (size_t)count, &p));
    if (slot < 3)
        st->tmp[slot] = p;
    else
        *extra = p;
    *dst = (const int*)(uintptr_t)p;
    return CFLASH_OK;
}

static cflash_status kv_run(const void* call) {
    const cf_kvcache_call* c = call;
    const cf_attn_call* a = &c->a;
    if (a->B == 0) return CFLASH_OK; /* nothing to append or attend */
    const int dmax = dmax_for(a);
    run_state st;
    cf_kv_args k;
    memset(&k, 0, sizeof k);
    CUdeviceptr bt = 0, parts = 0;
    cflash_status s = run_begin(&st, a, &k.a, "attn_simt.cu", (int)a->dtype, dmax);
    k.kc = c->kc.data, k.vc = c->vc.data, k.knew = c->knew.data, k.vnew = c->vnew.data;
    k.cos = c->cos.data, k.sin = c->sin.data;
    k.kc_s0 = c->kc.stride[0], k.kc_s1 = c->kc.stride[1], k.kc_s2 = c->kc.stride[2];
    k.vc_s0 = c->vc.stride[0], k.vc_s1 = c->vc.stride[1], k.vc_s2 = c->vc.stride[2];
    k.kn_sb = c->knew.stride[0], k.kn_ss = c->knew.stride[1], k.kn_sh = c->knew.stride[2];
    k.vn_sb = c->vnew.stride[0], k.vn_ss = c->vnew.stride[1], k.vn_sh = c->vnew.stride[2];
    k.cos_s0 = c->cos.stride[0], k.sin_s0 = c->sin.stride[0];
    k.cs_dt = (int)c->cos.dtype;
    k.seqlen = c->seqlen, k.Sn = c->knew.data ? c->Sn : 0;
    k.bt_stride = c->bt_stride, k.page_size = c->page_size, k.rd = c->rd;
    k.interleaved = c->interleaved;
    k.qpos_shift = a->causal || a->window_left >= 0 || a->window_right >= 0;
    if (s == CFLASH_OK) s = kv_upload(&st, c->seqlens, a->B, 0, &k.seqlens, NULL);
    if (s == CFLASH_OK) s = kv_upload(&st, c->batch_idx, a->B, 1, &k.batch_idx, NULL);
    if (s == CFLASH_OK) s = kv_upload(&st, c->leftpad, a->B, 2, &k.leftpad, NULL);
    if (s == CFLASH_OK && c->block_table)
        s = kv_upload(&st, c->block_table, (a->B - 1) * c->bt_stride + c->max_pages, 3,
                      &k.block_table, &bt);
    if (s == CFLASH_OK && k.Sn > 0) {
        const int64_t rows = a->B * k.Sn * a->Hk;
        s = cf_cuda_launch(st.mod, "cf_kv_append_simt", (rows + SIMT_WARPS - 1) / SIMT_WARPS, 1, 1,
                           SIMT_WARPS * 32, sizeof(float) * SIMT_WARPS * (size_t)dmax, st.stream,
                           &k);
    }
    const int64_t Sk = a->Sk > 0 ? a->Sk : 1;
    k.splits = kv_splits(c, &st.dev);
    k.chunk = (Sk + k.splits - 1) / k.splits;
    k.splits = (Sk + k.chunk - 1) / k.chunk;
    k.a.tile = simt_tile(a, &st.dev, 0);
    const size_t nout = (size_t)(k.splits * a->B * a->Sq * a->H * a->Dv);
    const size_t nlse = (size_t)(k.splits * a->B * a->H * a->Sq);
    if (s == CFLASH_OK && k.splits > 1) {
        s = cf_cuda_tmp_alloc(&st.dev, st.stream, sizeof(float) * (nout + nlse), &parts);
        k.opart = (float*)(uintptr_t)parts;
        k.lpart = k.opart + nout;
    }
    if (s == CFLASH_OK)
        s = cf_cuda_launch(st.mod, "cf_kv_attn_simt", (a->Sq + SIMT_WARPS - 1) / SIMT_WARPS, a->H,
                           a->B * k.splits, SIMT_WARPS * 32, simt_fwd_smem(a, k.a.tile, dmax),
                           st.stream, &k);
    if (s == CFLASH_OK && k.splits > 1) {
        CUmodule ops;
        s = cf_cuda_module(&st.dev, "ops_simt.cu", "", &ops);
        cf_merge_args m;
        memset(&m, 0, sizeof m);
        m.op = k.opart, m.lp = k.lpart, m.out = a->out.data, m.lse = a->lse.data;
        m.op_s3 = a->Dv, m.op_s2 = a->H * a->Dv, m.op_s1 = a->Sq * a->H * a->Dv;
        m.op_s0 = a->B * m.op_s1;
        m.lp_s3 = 1, m.lp_s2 = a->Sq, m.lp_s1 = a->H * a->Sq, m.lp_s0 = a->B * m.lp_s1;
        m.o_s0 = a->out.stride[0], m.o_s1 = a->out.stride[1], m.o_s2 = a->out.stride[2];
        m.lse_s0 = a->lse.stride[0], m.lse_s1 = a->lse.stride[1], m.lse_s2 = a->lse.stride[2];
        m.NS = k.splits, m.B = a->B, m.Sq = a->Sq, m.H = a->H, m.Dv = a->Dv;
        m.op_dt = 0, m.out_dt = (int)a->dtype;
        if (s == CFLASH_OK)
            s = cf_cuda_launch(ops, "cf_merge_simt", a->B * a->Sq * a->H, 1, 1, 128, 0, st.stream,
                               &m);
    }
    cf_cuda_tmp_free(&st.dev, st.stream, parts);
    cf_cuda_tmp_free(&st.dev, st.stream, bt);
    return run_end(&st, s);
}

/* ---- Registry rows ------------------------------------------------------------------------ */

/* cf_impl.verified: the call's device (the first one for the report) against the tested archs. */
static int device_of(const cf_attn_call* c) {
    return c ? c->device_id : 0;
}
static int mma_verified(const void* call, char* why, size_t n) {
    return cf_cuda_verified(device_of(call), "cuda-mma", why, n);
}
static int simt_verified(const void* call, char* why, size_t n) {
    return cf_cuda_verified(device_of(call), "cuda-simt", why, n);
}
static int kv_verified(const void* call, char* why, size_t n) {
    const cf_kvcache_call* c = call;
    return cf_cuda_verified(c ? c->a.device_id : 0, "cuda-simt", why, n);
}

const cf_impl cf_impl_cuda_simt_kvcache_fwd = {
    .backend = "cuda-simt",
    .op = CFLASH_OP_KVCACHE_FWD,
    .device_type = kDLCUDA,
    .supports = kv_supports,
    .run = kv_run,
    .available = cuda_available,
    .verified = kv_verified,
};

const cf_impl cf_impl_cuda_mma_attn_fwd = {
    .backend = "cuda-mma",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCUDA,
    .supports = mma_supports_fwd,
    .verified = mma_verified,
    .run = mma_fwd_run,
    .available = cuda_available,
};
const cf_impl cf_impl_cuda_mma_attn_bwd = {
    .backend = "cuda-mma",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCUDA,
    .supports = mma_supports_bwd,
    .verified = mma_verified,
    .run = mma_bwd_run,
    .available = cuda_available,
};
const cf_impl cf_impl_cuda_simt_attn_fwd = {
    .backend = "cuda-simt",
    .op = CFLASH_OP_ATTN_FWD,
    .device_type = kDLCUDA,
    .supports = simt_supports_fwd,
    .verified = simt_verified,
    .run = simt_fwd_run,
    .available = cuda_available,
};
const cf_impl cf_impl_cuda_simt_attn_bwd = {
    .backend = "cuda-simt",
    .op = CFLASH_OP_ATTN_BWD,
    .device_type = kDLCUDA,
    .supports = simt_supports_bwd,
    .verified = simt_verified,
    .run = simt_bwd_run,
    .available = cuda_available,
};
