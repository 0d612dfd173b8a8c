/* The CUDA backends' choice and reasons without a GPU, against the tests' fake libcuda (one sm_80
 * device, 48 KB shared memory per block, every GPU operation failing with
 * CUDA_ERROR_NOT_SUPPORTED): which of cuda-mma / cuda-simt serves a call and why the other does
 * not, and that a run reports the driver's error instead of crashing.
 *   test_cuda_dispatch            expects CFLASH_LIBCUDA = the fake, CFLASH_FAKE_CUINIT=0
 *   test_cuda_dispatch no-nvrtc   the same with NVRTC hidden: both backends say why
 * Skips (exit 77) when the fake is not configured. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"
#include "cuda/cuda_drv.h"
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
    } else {
        test_choice();
        test_run_fails_cleanly();
        test_one_loader();
    }
    return tt_summary();
}
