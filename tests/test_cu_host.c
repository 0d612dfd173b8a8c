/* cu_seqlens given in CUDA memory are copied to the host to be checked (attn_api.c, check_cu).
 * Those copies belong to the call: every call frees them, on success or error, so that a thread
 * that makes varlen calls and exits leaves nothing behind (a per-thread buffer kept its last
 * copy for good). The CUDA device here is a stand-in: device hooks over host memory, registered
 * in place of the CUDA backend's, and every call is one that fails after its cu_seqlens were
 * copied (a bad out, a bad cu_seqlens_k), so no kernel ever sees the stand-in memory. Live heap
 * bytes are read from ASan's allocator under ASan, else from glibc's mmapped bytes (the copies
 * are made larger than a fixed mmap threshold).
 * Usage: test_cu_host */
#include <dlpack/dlpack.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/testutil.h"
#include "core/device.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CU_ASAN 1
#endif
#ifdef CU_ASAN
size_t __sanitizer_get_current_allocated_bytes(void); /* (GCC ships no allocator_interface.h) */
#elif defined(__GLIBC__)
#include <malloc.h>
#endif

/* ---- The stand-in device: host memory under kDLCUDA ---------------------------------------- */

static int copies; /* device-to-host copies made (each a cu_seqlens check) */

static cflash_status fake_alloc(int id, void** p, size_t bytes) {
    (void)id;
    *p = malloc(bytes);
    return *p ? CFLASH_OK : CFLASH_ERR_OUT_OF_MEMORY;
}
static void fake_free(int id, void* p) {
    (void)id;
    free(p);
}
static cflash_status fake_copy(int id, void* dst, const void* src, size_t bytes, int to_device) {
    (void)id;
    if (!to_device) __atomic_add_fetch(&copies, 1, __ATOMIC_RELAXED);
    memcpy(dst, src, bytes);
    return CFLASH_OK;
}
static cflash_status fake_sync(int id) {
    (void)id;
    return CFLASH_OK;
}
static const cf_device_hooks fake = {
    .device_type = kDLCUDA,
    .alloc = fake_alloc,
    .free = fake_free,
    .copy = fake_copy,
    .sync = fake_sync,
};

/* ---- Live heap bytes ------------------------------------------------------------------------ */

static long long live_bytes(void) {
#ifdef CU_ASAN
    return (long long)__sanitizer_get_current_allocated_bytes();
#elif defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    return (long long)mallinfo2().hblkhd; /* bytes in mmapped chunks, every arena */
#else
    return -1;
#endif
}

/* ---- The calls ------------------------------------------------------------------------------ */

enum { TQ = 4, H = 1, D = 8, NB = 65536 }; /* cu_seqlens of NB + 1 entries: 256 KB each */

typedef struct {
    float q[TQ * H * D], k[TQ * H * D], v[TQ * H * D], out[TQ * H * D];
    int32_t* cq; /* [NB + 1] */
    int32_t* ck;
    int64_t sq[3], sk[3], so[3], scu[1];
    DLTensor tq, tk, tv, tout, tcq, tck;
} call_in;

static DLTensor on_fake(void* data, int ndim, int64_t* shape, DLDataType dt) {
    DLTensor t = {0};
    t.data = data, t.device = (DLDevice){kDLCUDA, 0}, t.ndim = ndim, t.dtype = dt, t.shape = shape;
    return t;
}

static int call_init(call_in* a) {
    memset(a, 0, sizeof *a);
    a->cq = calloc(NB + 1, sizeof(int32_t)), a->ck = calloc(NB + 1, sizeof(int32_t));
    if (!a->cq || !a->ck) return 0;
    a->cq[NB] = a->ck[NB] = TQ; /* NB sequences, the last holding every row */
    const DLDataType f32 = {kDLFloat, 32, 1}, i32 = {kDLInt, 32, 1};
    a->sq[0] = a->sk[0] = a->so[0] = TQ, a->sq[1] = a->sk[1] = a->so[1] = H;
    a->sq[2] = a->sk[2] = a->so[2] = D, a->so[2] = D + 1; /* out: Dv off by one */
    a->scu[0] = NB + 1;
    a->tq = on_fake(a->q, 3, a->sq, f32), a->tk = on_fake(a->k, 3, a->sk, f32);
    a->tv = on_fake(a->v, 3, a->sk, f32), a->tout = on_fake(a->out, 3, a->so, f32);
    a->tcq = on_fake(a->cq, 1, a->scu, i32), a->tck = on_fake(a->ck, 1, a->scu, i32);
    return 1;
}

static void call_free(call_in* a) {
    free(a->cq), free(a->ck);
}

/* The varlen forward and backward with out of the wrong shape (rejected after both copies),
 * then with cu_seqlens_k[0] = 1 (rejected in the check of k's copy, q's made): each returns
 * CFLASH_ERR_INVALID_ARGUMENT naming what it rejects. */
static void calls(call_in* a) {
    CHECK_ERR(cflash_attn_varlen_fwd(NULL, NULL, &a->tq, &a->tk, &a->tv, &a->tcq, &a->tck, 0, 0,
                                     &a->tout, NULL),
              CFLASH_ERR_INVALID_ARGUMENT, "out:");
    CHECK_ERR(cflash_attn_varlen_bwd(NULL, NULL, &a->tout, &a->tq, &a->tk, &a->tv, &a->tout, NULL,
                                     &a->tcq, &a->tck, 0, 0, &a->tq, &a->tk, &a->tv),
              CFLASH_ERR_INVALID_ARGUMENT, "");
    a->ck[0] = 1;
    CHECK_ERR(cflash_attn_varlen_fwd(NULL, NULL, &a->tq, &a->tk, &a->tv, &a->tcq, &a->tck, 0, 0,
                                     &a->tout, NULL),
              CFLASH_ERR_INVALID_ARGUMENT, "cu_seqlens_k[0]: 1, expected 0");
    a->ck[0] = 0;
}

static void* thread_calls(void* arg) {
    calls(arg);
    return NULL;
}

int main(void) {
#if !defined(CU_ASAN) && defined(__GLIBC__)
    mallopt(M_MMAP_THRESHOLD, 64 * 1024); /* fixed: the 256 KB copies always mmapped */
#endif
    cf_device_register(&fake);
    call_in a;
    CHECK(call_init(&a));
    /* the calls reach the copies: each forward copies both, the backward both, the third q's */
    copies = 0;
    calls(&a);
    CHECK_MSG(copies == 6, "%d device-to-host copies, expected 6", copies);
    const long long before = live_bytes();
    if (before < 0) {
        printf("no live-heap measure in this C library: the leak check is skipped\n");
    } else {
        /* threads that each make the calls and exit: 32 threads x 2 copies x 256 KB kept would
         * be 16 MB */
        enum { NT = 32 };
        for (int i = 0; i < NT; i++) {
            pthread_t th;
            CHECK(pthread_create(&th, NULL, thread_calls, &a) == 0);
            pthread_join(th, NULL);
        }
        for (int i = 0; i < 8; i++) /* and on this thread, again and again */
            calls(&a);
        const long long after = live_bytes();
        CHECK_MSG(after - before < 1024 * 1024,
                  "live heap grew by %lld bytes over %d threads' calls (copies kept?)",
                  after - before, NT);
    }
    call_free(&a);
    return tt_summary();
}
