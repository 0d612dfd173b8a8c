/* The CUDA backends' choice and reasons without a GPU, against the tests' fake libcuda (one
 * device, sm_90 with CFLASH_FAKE_CC=90, else sm_80; 48 KB shared memory per block, every GPU
 * operation failing with CUDA_ERROR_NOT_SUPPORTED): which of cuda-mma / cuda-simt serves a call
 * and why the other does not, and that a run reports the driver's error instead of crashing.
 *   test_cuda_dispatch            expects CFLASH_LIBCUDA = the fake, CFLASH_FAKE_CUINIT=0 and
 *                                 CFLASH_FAKE_CC=90 (an arch that has passed the GPU tests)
 *   test_cuda_dispatch untested   the fake at sm_80, which has not: the automatic choice passes
 *                                 both backends over saying why, a forced one serves
 *   test_cuda_dispatch no-nvrtc   the same with NVRTC hidden: both backends say why
 * Skips (exit 77) when the fake is not configured, and the first form when the machine has no
 * NVRTC (a CPU-only machine: the no-nvrtc form is then what it checks). */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"
#include "cuda/cuda_drv.h"
#include "cuda/cuda_rtc.h"
#include "probe/cuda_loader.h"
#include "probe/dynlib.h"

/* A CUDA tensor at a fake address (never dereferenced on the host by validation). */
typedef struct ft {
    DLTensor t;
    int64_t shape[4], strides[4];
} ft;

static void mk(ft* f, uintptr_t addr, cf_dtype dt, int ndim, const int64_t* shape) {
    memset(f, 0, sizeof *f);
    f->t.data = (void*)addr;
    f->t.device.device_type = kDLCUDA;
    f->t.ndim = ndim;
    f->t.dtype = tt_dl_dtype(dt);
    memcpy(f->shape, shape, sizeof(int64_t) * (size_t)ndim);
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--)
        f->strides[i] = s, s *= shape[i];
    f->t.shape = f->shape;
    f->t.strides = f->strides;
}

typedef struct prob {
    ft q, k, v, out, lse, dout, dq, dk, dv;
} prob;

static void mkprob(prob* p, cf_dtype dt, int64_t D, uintptr_t qaddr) {
    int64_t B = 2, S = 128, H = 4;
    int64_t s4[4] = {B, S, H, D}, l3[3] = {B, H, S};
    mk(&p->q, qaddr, dt, 4, s4);
    mk(&p->k, 0x7f0000200000, dt, 4, s4);
    mk(&p->v, 0x7f0000400000, dt, 4, s4);
    mk(&p->out, 0x7f0000600000, dt, 4, s4);
    mk(&p->lse, 0x7f0000800000, CF_F32, 3, l3);
    mk(&p->dout, 0x7f0000a00000, dt, 4, s4);
    mk(&p->dq, 0x7f0000c00000, dt, 4, s4);
    mk(&p->dk, 0x7f0000e00000, dt, 4, s4);
    mk(&p->dv, 0x7f0001000000, dt, 4, s4);
}

static cflash_status explain_fwd(prob* p, char* buf, size_t n) {
    cflash_attn_params prm;
    cflash_attn_params_init(&prm);
    return cflash_attn_fwd(tt_explain(buf, n), &prm, &p->q.t, &p->k.t, &p->v.t, &p->out.t,
                           &p->lse.t);
}

#define CHECK_HAS(buf, sub)                                                                        \
    CHECK_MSG(strstr((buf), (sub)) != NULL, "no \"%s\" in:\n%.800s", (sub), (buf))

static void test_choice(void) {
    char buf[4096];
    prob p;
    mkprob(&p, CF_BF16, 64, 0x7f0000000000);
    CHECK_OK(explain_fwd(&p, buf, sizeof buf));
    CHECK_HAS(buf, "cuda-mma: OKAY");
    CHECK_HAS(buf, "-> cuda-mma");

    mkprob(&p, CF_F32, 64, 0x7f0000000000);
    CHECK_OK(explain_fwd(&p, buf, sizeof buf));
    CHECK_HAS(buf, "cuda-mma: NO: dtype float32");
    CHECK_HAS(buf, "-> cuda-simt");

    mkprob(&p, CF_F16, 100, 0x7f0000000000);
    CHECK_OK(explain_fwd(&p, buf, sizeof buf));
    CHECK_HAS(buf, "multiples of 8");
    CHECK_HAS(buf, "-> cuda-simt");

    mkprob(&p, CF_F16, 64, 0x7f0000000002); /* q not 16-byte aligned */
    CHECK_OK(explain_fwd(&p, buf, sizeof buf));
    CHECK_HAS(buf, "q: tensor-core loads need 16-byte aligned rows");
    CHECK_HAS(buf, "-> cuda-simt");

    /* The fake reports no opt-in shared memory: 48 KB is too little for head dim 128 on mma. */
    mkprob(&p, CF_BF16, 128, 0x7f0000000000);
    CHECK_OK(explain_fwd(&p, buf, sizeof buf));
    CHECK_HAS(buf, "cuda-mma: NO: needs 52224 bytes of shared memory per block");
    CHECK_HAS(buf, "-> cuda-simt");

    mkprob(&p, CF_BF16, 320, 0x7f0000000000);
    CHECK(explain_fwd(&p, buf, sizeof buf) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf, "cuda-simt: NO: head dims D = 320, Dv = 320: cuda-simt handles up to 256");
    CHECK_HAS(buf, "-> none");

    /* Backward: mma where its shared memory fits, else simt with the reason. */
    mkprob(&p, CF_BF16, 64, 0x7f0000000000);
    cflash_attn_params prm;
    cflash_attn_params_init(&prm);
    CHECK_OK(cflash_attn_bwd(tt_explain(buf, sizeof buf), &prm, &p.dout.t, &p.q.t, &p.k.t, &p.v.t,
                             &p.out.t, &p.lse.t, &p.dq.t, &p.dk.t, &p.dv.t));
    CHECK_HAS(buf, "-> cuda-mma");
    /* Head dim 128: the backward's 70144 bytes of shared memory exceed the fake's 48 KB. */
    mkprob(&p, CF_BF16, 128, 0x7f0000000000);
    CHECK_OK(cflash_attn_bwd(tt_explain(buf, sizeof buf), &prm, &p.dout.t, &p.q.t, &p.k.t, &p.v.t,
                             &p.out.t, &p.lse.t, &p.dq.t, &p.dk.t, &p.dv.t));
    CHECK_HAS(buf, "cuda-mma: NO: backward needs 70144 bytes of shared memory");
    CHECK_HAS(buf, "-> cuda-simt");

    /* Forcing a backend that cannot serve gives its reason. */
    cflash_context* ctx = NULL;
    CHECK_OK(cflash_context_create(&ctx));
    CHECK_OK(cflash_context_set_backend(ctx, "cuda-mma"));
    mkprob(&p, CF_F32, 64, 0x7f0000000000);
    CHECK_ERR(cflash_attn_fwd(ctx, &prm, &p.q.t, &p.k.t, &p.v.t, &p.out.t, &p.lse.t),
              CFLASH_ERR_UNSUPPORTED,
              "dtype float32: tensor-core kernels take float16 or bfloat16");
    cflash_context_free(ctx);
}

/* Issue 13's features: both CUDA backends refuse them with the reason, so the automatic choice
 * has nothing to hand such a call to (and explain says why). */
static void test_features_refused(void) {
    char buf[4096], want[128];
    prob p;
    mkprob(&p, CF_BF16, 64, 0x7f0000000000);
    int64_t h4[1] = {4}, pairs[4] = {2, 4, 128, 128}, num[3] = {1, 1, 1}, idx[4] = {1, 1, 1, 1};
    ft sinks, bias, mask, bnum, bidx;
    mk(&sinks, 0x7f0001200000, CF_F32, 1, h4);
    mk(&bias, 0x7f0001400000, CF_BF16, 4, pairs);
    mk(&mask, 0x7f0001600000, CF_U8, 4, pairs);
    mk(&bnum, 0x7f0001800000, CF_I32, 3, num);
    mk(&bidx, 0x7f0001a00000, CF_I32, 4, idx);
    static const char* const names[5] = {"sinks", "attn_bias", "attn_mask", "block-sparse mask",
                                         "attention_chunk"};
    for (int f = 0; f < 5; f++)
        for (int bwd = 0; bwd < 2; bwd++) {
            cflash_attn_params prm;
            cflash_attn_params_init(&prm);
            if (f == 0) prm.sinks = &sinks.t, prm.dsinks = bwd ? &sinks.t : NULL;
            if (f == 1) prm.attn_bias = &bias.t;
            if (f == 2) prm.attn_mask = &mask.t;
            if (f == 3) prm.block_kv_num = &bnum.t, prm.block_kv_indices = &bidx.t;
            if (f == 4) prm.attention_chunk = 64;
            cflash_context* ctx = tt_explain(buf, sizeof buf);
            cflash_status s =
                bwd ? cflash_attn_bwd(ctx, &prm, &p.dout.t, &p.q.t, &p.k.t, &p.v.t, &p.out.t,
                                      &p.lse.t, &p.dq.t, &p.dk.t, &p.dv.t)
                    : cflash_attn_fwd(ctx, &prm, &p.q.t, &p.k.t, &p.v.t, &p.out.t, &p.lse.t);
            CHECK_MSG(s == CFLASH_ERR_UNSUPPORTED, "%s (%s): %s", names[f], bwd ? "bwd" : "fwd",
                      cflash_status_string(s));
            snprintf(want, sizeof want, "cuda-mma: NO: %s: not implemented on CUDA yet", names[f]);
            CHECK_HAS(buf, want);
            snprintf(want, sizeof want, "cuda-simt: NO: %s: not implemented on CUDA yet", names[f]);
            CHECK_HAS(buf, want);
            CHECK_HAS(buf, "-> none");
        }
}

/* Issue 13's serving features: both CUDA backends refuse them in supports(), saying why, so the
 * automatic choice never hands them such a call. */
static void test_serving_refused(void) {
    char buf[4096];
    prob p;
    mkprob(&p, CF_BF16, 64, 0x7f0000000000);
    int32_t used[2] = {100, 128}; /* host memory, as index tensors are */
    int64_t s2[1] = {2}, st[1] = {1};
    DLTensor su = {used, {kDLCPU, 0}, 1, tt_dl_dtype(CF_I32), s2, st, 0};
    cflash_attn_params prm;
    cflash_attn_params_init(&prm);
    prm.seqused_k = &su;
    CHECK(cflash_attn_fwd(tt_explain(buf, sizeof buf), &prm, &p.q.t, &p.k.t, &p.v.t, &p.out.t,
                          &p.lse.t) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf, "cuda-mma: NO: seqused_q / seqused_k: not implemented on CUDA yet");
    CHECK_HAS(buf, "cuda-simt: NO: seqused_q / seqused_k: not implemented on CUDA yet");
    CHECK_HAS(buf, "-> none");
    /* paged K/V in the varlen call: 2 sequences of 128 rows, pages of 64 */
    int64_t tq[3] = {256, 4, 64}, kp[4] = {4, 64, 4, 64}, l2[2] = {4, 256}, cu[1] = {3},
            bs[2] = {2, 2}, bst[2] = {2, 1};
    ft q, k, v, out, lse;
    mk(&q, 0x7f0000000000, CF_BF16, 3, tq);
    mk(&k, 0x7f0000200000, CF_BF16, 4, kp);
    mk(&v, 0x7f0000400000, CF_BF16, 4, kp);
    mk(&out, 0x7f0000600000, CF_BF16, 3, tq);
    mk(&lse, 0x7f0000800000, CF_F32, 2, l2);
    int32_t cq[3] = {0, 128, 256}, table[4] = {0, 1, 2, 3};
    DLTensor tcq = {cq, {kDLCPU, 0}, 1, tt_dl_dtype(CF_I32), cu, st, 0};
    DLTensor tbt = {table, {kDLCPU, 0}, 2, tt_dl_dtype(CF_I32), bs, bst, 0};
    cflash_attn_params_init(&prm);
    prm.block_table = &tbt;
    CHECK(cflash_attn_varlen_fwd(tt_explain(buf, sizeof buf), &prm, &q.t, &k.t, &v.t, &tcq, &tcq,
                                 (int64_t)0, (int64_t)0, &out.t, &lse.t) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf, "cuda-mma: NO: paged K/V (block_table): not implemented on CUDA yet");
    CHECK_HAS(buf, "cuda-simt: NO: paged K/V (block_table): not implemented on CUDA yet");
    /* the KV-cache call with varlen queries: 2 sequences of 128 rows against (2, 256) caches */
    int64_t kc4[4] = {2, 256, 4, 64};
    ft kc, vc;
    mk(&kc, 0x7f0000a00000, CF_BF16, 4, kc4);
    mk(&vc, 0x7f0000c00000, CF_BF16, 4, kc4);
    cflash_attn_params_init(&prm);
    cflash_kvcache_params kvp;
    cflash_kvcache_params_init(&kvp);
    kvp.cu_seqlens_q = &tcq;
    CHECK(cflash_attn_kvcache_fwd(tt_explain(buf, sizeof buf), &prm, &kvp, &q.t, &kc.t, &vc.t,
                                  &out.t, &lse.t) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf, "cuda-simt: NO: varlen queries / new keys (cu_seqlens_q, cu_seqlens_k_new): not "
                   "implemented on CUDA yet");
    /* a quantized (fp8, uint8-typed) cache, batch mode */
    int64_t qb[4] = {2, 1, 4, 64};
    ft qd, od;
    mk(&qd, 0x7f0000000000, CF_BF16, 4, qb);
    mk(&od, 0x7f0000600000, CF_BF16, 4, qb);
    mk(&kc, 0x7f0000a00000, CF_U8, 4, kc4);
    mk(&vc, 0x7f0000c00000, CF_U8, 4, kc4);
    cflash_kvcache_params_init(&kvp);
    kvp.cache_quant = CFLASH_KV_QUANT_FP8_E4M3;
    CHECK(cflash_attn_kvcache_fwd(tt_explain(buf, sizeof buf), &prm, &kvp, &qd.t, &kc.t, &vc.t,
                                  &od.t, NULL) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf,
              "cuda-simt: NO: quantized KV cache (cache_quant 1): not implemented on CUDA yet");
}

static void test_run_fails_cleanly(void) {
    /* The fake driver fails every GPU operation: the error names the call and the driver's code. */
    prob p;
    mkprob(&p, CF_F16, 64, 0x7f0000000000);
    cflash_attn_params prm;
    cflash_attn_params_init(&prm);
    CHECK_ERR(cflash_attn_fwd(NULL, &prm, &p.q.t, &p.k.t, &p.v.t, &p.out.t, &p.lse.t),
              CFLASH_ERR_BACKEND, "CUDA_ERROR_NOT_SUPPORTED");
    CHECK_ERR(cflash_attn_bwd(NULL, &prm, &p.dout.t, &p.q.t, &p.k.t, &p.v.t, &p.out.t, &p.lse.t,
                              &p.dq.t, &p.dk.t, &p.dv.t),
              CFLASH_ERR_BACKEND, "cuDevicePrimaryCtxRetain");
    /* Varlen with cu_seqlens in (fake) device memory: reading them back fails with the reason. */
    int64_t tq[3] = {256, 4, 64}, l2[2] = {4, 256}, cu[1] = {3};
    ft q, k, v, out, lse, cq, ck;
    mk(&q, 0x7f0000000000, CF_F16, 3, tq);
    mk(&k, 0x7f0000200000, CF_F16, 3, tq);
    mk(&v, 0x7f0000400000, CF_F16, 3, tq);
    mk(&out, 0x7f0000600000, CF_F16, 3, tq);
    mk(&lse, 0x7f0000800000, CF_F32, 2, l2);
    mk(&cq, 0x7f0000900000, CF_I32, 1, cu);
    mk(&ck, 0x7f0000900100, CF_I32, 1, cu);
    CHECK_ERR(
        cflash_attn_varlen_fwd(NULL, &prm, &q.t, &k.t, &v.t, &cq.t, &ck.t, 0, 0, &out.t, &lse.t),
        CFLASH_ERR_BACKEND, "cuda: ");
    /* cu_seqlens on a GPU while q is on the CPU: an argument error, nothing copied. */
    ft* host[] = {&q, &k, &v, &out, &lse};
    for (int i = 0; i < 5; i++)
        host[i]->t.device.device_type = kDLCPU;
    CHECK_ERR(
        cflash_attn_varlen_fwd(NULL, &prm, &q.t, &k.t, &v.t, &cq.t, &ck.t, 0, 0, &out.t, &lse.t),
        CFLASH_ERR_INVALID_ARGUMENT,
        "cu_seqlens_q: on cuda:0, expected host memory or the device of q (cpu:0)");
}

/* An arch that has not passed the GPU tests (the fake's sm_80): the automatic choice passes both
 * backends over with the reason, after what the call itself needs; forced, each serves (its run
 * reaches the fake driver, which fails it). */
static void test_untested_arch(void) {
    char buf[4096];
    static const char* const want[2] = {
        "cuda-mma: NO: not yet verified on sm_80 (Fake GPU for cflash tests): the GPU tests have "
        "passed on sm_90 (NVIDIA H200, 2026-12-04) only; force it with CFLASH_BACKEND=cuda-mma",
        "cuda-simt: NO: not yet verified on sm_80 (Fake GPU for cflash tests): the GPU tests have "
        "passed on sm_90 (NVIDIA H200, 2026-12-04) only; force it with CFLASH_BACKEND=cuda-simt"};
    prob p;
    mkprob(&p, CF_BF16, 64, 0x7f0000000000);
    CHECK(explain_fwd(&p, buf, sizeof buf) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf, want[0]);
    CHECK_HAS(buf, want[1]);
    CHECK_HAS(buf, "-> none");
    cflash_attn_params prm;
    cflash_attn_params_init(&prm);
    CHECK_ERR(cflash_attn_fwd(NULL, &prm, &p.q.t, &p.k.t, &p.v.t, &p.out.t, &p.lse.t),
              CFLASH_ERR_UNSUPPORTED, "not yet verified on sm_80");
    CHECK(cflash_attn_bwd(tt_explain(buf, sizeof buf), &prm, &p.dout.t, &p.q.t, &p.k.t, &p.v.t,
                          &p.out.t, &p.lse.t, &p.dq.t, &p.dk.t, &p.dv.t) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf, want[0]);
    CHECK_HAS(buf, want[1]);
    /* What the call needs comes first: cuda-mma's dtype reason, not the arch. */
    mkprob(&p, CF_F32, 64, 0x7f0000000000);
    CHECK(explain_fwd(&p, buf, sizeof buf) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf, "cuda-mma: NO: dtype float32");
    CHECK_HAS(buf, want[1]);
    /* The KV-cache call (cuda-simt alone). */
    int64_t qb[4] = {2, 1, 4, 64}, kc4[4] = {2, 256, 4, 64};
    ft qd, od, kc, vc;
    mk(&qd, 0x7f0000000000, CF_BF16, 4, qb);
    mk(&od, 0x7f0000600000, CF_BF16, 4, qb);
    mk(&kc, 0x7f0000a00000, CF_BF16, 4, kc4);
    mk(&vc, 0x7f0000c00000, CF_BF16, 4, kc4);
    cflash_kvcache_params kvp;
    cflash_kvcache_params_init(&kvp);
    CHECK(cflash_attn_kvcache_fwd(tt_explain(buf, sizeof buf), &prm, &kvp, &qd.t, &kc.t, &vc.t,
                                  &od.t, NULL) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf, want[1]);
    /* Forced: each backend serves, and its run fails in the fake driver. */
    mkprob(&p, CF_BF16, 64, 0x7f0000000000);
    static const char* const names[2] = {"cuda-mma", "cuda-simt"};
    for (int b = 0; b < 2; b++) {
        cflash_context* ctx = NULL;
        CHECK_OK(cflash_context_create(&ctx));
        CHECK_OK(cflash_context_set_backend(ctx, names[b]));
        CHECK_ERR(cflash_attn_fwd(ctx, &prm, &p.q.t, &p.k.t, &p.v.t, &p.out.t, &p.lse.t),
                  CFLASH_ERR_BACKEND, "cuda: ");
        CHECK_ERR(cflash_attn_bwd(ctx, &prm, &p.dout.t, &p.q.t, &p.k.t, &p.v.t, &p.out.t, &p.lse.t,
                                  &p.dq.t, &p.dk.t, &p.dv.t),
                  CFLASH_ERR_BACKEND, "cuda: ");
        cflash_context_free(ctx);
    }
}

static void test_no_nvrtc(void) {
    char buf[4096];
    prob p;
    mkprob(&p, CF_BF16, 64, 0x7f0000000000);
    CHECK(explain_fwd(&p, buf, sizeof buf) == CFLASH_ERR_UNSUPPORTED);
    CHECK_HAS(buf, "cuda-mma: NO: NVRTC");
    CHECK_HAS(buf, "cuda-simt: NO: NVRTC");
    CHECK_HAS(buf, "no precompiled cubins");
}

/* The probe (cflash_report) and the backend use one driver loader: the same entry points, and
 * cuInit called once. */
static void test_one_loader(void) {
    size_t need = cflash_report(NULL, 0, 0);
    CHECK(need > 0);
    CHECK(cf_cu(NULL, 0) != NULL && cf_cu(NULL, 0) == cf_cu_load()->api);
    const int* calls = dlsym(cf_dynlib_get(CF_LIB_CUDA)->handle, "cf_fake_cuinit_calls");
    CHECK_MSG(calls && *calls == 1, "cuInit ran %d times", calls ? *calls : -1);
}

int main(int argc, char** argv) {
    char why[1024];
    if (!getenv("CFLASH_FAKE_CUINIT") || !cf_cu_available(why, sizeof why)) {
        printf("SKIP: needs the tests' fake libcuda (CFLASH_LIBCUDA=.../fakes/cuda_initfail/"
               "libcuda.so.1 CFLASH_FAKE_CUINIT=0); run through ctest\n");
        return 77;
    }
    if (argc > 1 && !strcmp(argv[1], "no-nvrtc")) {
        test_no_nvrtc();
    } else if (!cf_nvrtc_available(why, sizeof why)) {
        printf("SKIP: the CUDA backends' choice needs NVRTC on this machine (%s); the no-nvrtc "
               "form checks what they say without it\n",
               why);
        return 77;
    } else if (argc > 1 && !strcmp(argv[1], "untested")) {
        test_untested_arch();
    } else if (!getenv("CFLASH_FAKE_CC") || atoi(getenv("CFLASH_FAKE_CC")) != 90) {
        printf("SKIP: the choice tests need the fake at a tested arch (CFLASH_FAKE_CC=90); run "
               "through ctest\n");
        return 77;
    } else {
        test_choice();
        test_features_refused();
        test_serving_refused();
        test_run_fails_cleanly();
        test_one_loader();
    }
    return tt_summary();
}
