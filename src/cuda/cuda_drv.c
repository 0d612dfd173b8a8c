/* The CUDA backend's driver layer over the shared loader (probe/cuda_loader.h): checks that every
 * entry point it needs is there and cuInit succeeded, and retains a device's primary context the
 * first time a CUDA op needs it (never while probing: a context created before fork() breaks the
 * child). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/device.h"
#include "core/status.h"
#include "cuda/cuda_drv.h"
#include "cuda/cuda_rtc.h"
#include "cuda/kcache.h"
#include "probe/cuda_loader.h"
#include "probe/dynlib.h"
#include "probe/gpu_probe.h"

/* snprintf(dst, n, "%s", src) without the truncation warning: messages are cut to fit. */
static void copy_why(char* dst, size_t n, const char* src) {
    size_t L = strlen(src);
    if (L >= n) L = n - 1;
    memcpy(dst, src, L);
    dst[L] = 0;
}

static const cf_cu_api* api; /* set once api_state is 1 */
static int api_state;        /* 0 = not tried, 1 = ready, -1 = failed (reason in api_why) */
static char api_why[3072];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

#define MAX_DEVICES 64
static CUcontext primary[MAX_DEVICES];
static cf_cu_device devices[MAX_DEVICES];
static int device_known[MAX_DEVICES];

/* The backend's view of the shared loader (probe/cuda_loader.h): every entry point it needs, and
 * cuInit succeeded. */
static void load_locked(void) {
    if (api_state) return;
    const cf_cu_load_result* r = cf_cu_load();
    const cf_dynlib* lib = cf_dynlib_get(CF_LIB_CUDA);
    api_state = -1;
    if (!r->api) {
        snprintf(api_why, sizeof api_why, "libcuda.so.1 not found: %s",
                 lib->error[0] ? lib->error : "no NVIDIA driver installed");
    } else if (r->backend_missing[0]) {
        snprintf(api_why, sizeof api_why, "%s: symbol %s missing (driver too old?): %s", lib->path,
                 r->backend_missing, r->backend_missing_error);
    } else if (r->init_result != 0) {
        const char *name = "?", *desc = "";
        r->api->cuGetErrorName(r->init_result, &name);
        r->api->cuGetErrorString(r->init_result, &desc);
        snprintf(api_why, sizeof api_why, "cuInit failed: %s (%d): %s", name ? name : "?",
                 r->init_result, desc ? desc : "");
    } else {
        api = r->api;
        api_state = 1;
    }
}

const cf_cu_api* cf_cu(char* why, size_t why_len) {
    pthread_mutex_lock(&lock);
    load_locked();
    int ok = api_state == 1;
    if (!ok && why && why_len) copy_why(why, why_len, api_why);
    pthread_mutex_unlock(&lock);
    return ok ? api : NULL;
}

int cf_cu_device_count(void) {
    const cf_cu_api* cu = cf_cu(NULL, 0);
    int n = 0;
    if (!cu || cu->cuDeviceGetCount(&n) != 0) return 0;
    return n;
}

int cf_cu_available(char* why, size_t why_len) {
    if (!cf_cu(why, why_len)) return 0;
    if (cf_cu_device_count() == 0) {
        snprintf(why, why_len, "the CUDA driver reports no device");
        return 0;
    }
    return 1;
}

cflash_status cf_cu_error(CUresult r, const char* what) {
    const char *name = NULL, *desc = NULL;
    if (api_state == 1) {
        api->cuGetErrorName(r, &name);
        api->cuGetErrorString(r, &desc);
    }
    return cf_error(CFLASH_ERR_BACKEND, "cuda: %s: %s (%d): %s", what, name ? name : "?", r,
                    desc ? desc : "unknown error");
}

cflash_status cf_cu_device_get(int ordinal, cf_cu_device* out) {
    char why[1024];
    const cf_cu_api* cu = cf_cu(why, sizeof why);
    CFLASH_RETURN_IF(!cu, CFLASH_ERR_BACKEND, "cuda: %s", why);
    int n = cf_cu_device_count();
    CFLASH_RETURN_IF(ordinal < 0 || ordinal >= n || ordinal >= MAX_DEVICES,
                     CFLASH_ERR_INVALID_ARGUMENT, "device_id: %d, expected 0..%d (CUDA devices)",
                     ordinal, n - 1);
    pthread_mutex_lock(&lock);
    int known = device_known[ordinal];
    if (known) *out = devices[ordinal];
    pthread_mutex_unlock(&lock);
    if (known) return CFLASH_OK;
    cf_cu_device d;
    memset(&d, 0, sizeof d);
    d.ordinal = ordinal;
    CUdevice dev;
    CF_CU_TRY(cu->cuDeviceGet(&dev, ordinal), "cuDeviceGet");
    CF_CU_TRY(cu->cuDeviceGetAttribute(&d.cc_major, CF_CU_ATTR_CC_MAJOR, dev),
              "cuDeviceGetAttribute");
    CF_CU_TRY(cu->cuDeviceGetAttribute(&d.cc_minor, CF_CU_ATTR_CC_MINOR, dev),
              "cuDeviceGetAttribute");
    CF_CU_TRY(cu->cuDeviceGetAttribute(&d.sm_count, CF_CU_ATTR_SM_COUNT, dev),
              "cuDeviceGetAttribute");
    if (cu->cuDeviceGetAttribute(&d.smem_default, CF_CU_ATTR_MAX_SMEM_PER_BLOCK, dev) != 0 ||
        d.smem_default <= 0)
        d.smem_default = 48 * 1024; /* every arch since sm_20 */
    if (cu->cuDeviceGetAttribute(&d.smem_optin, CF_CU_ATTR_MAX_SMEM_OPTIN, dev) != 0 ||
        d.smem_optin < d.smem_default)
        d.smem_optin = d.smem_default;
    if (cu->cuDeviceGetAttribute(&d.memory_pools, CF_CU_ATTR_MEMORY_POOLS, dev) != 0)
        d.memory_pools = 0;
    if (!cu->cuMemAllocAsync || !cu->cuMemFreeAsync) d.memory_pools = 0;
    cu->cuDeviceTotalMem(&d.total_mem, dev);
    cu->cuDeviceGetName(d.name, (int)sizeof d.name, dev);
    pthread_mutex_lock(&lock);
    devices[ordinal] = d;
    device_known[ordinal] = 1;
    pthread_mutex_unlock(&lock);
    *out = d;
    return CFLASH_OK;
}

int cf_cuda_verified(int device_id, const char* backend, char* why, size_t n) {
    cf_cu_device dev;
    if (cf_cu_device_get(device_id, &dev) != CFLASH_OK) return 1;
    const int sm = dev.cc_major * 10 + dev.cc_minor;
    if (cf_cuda_tested_on(sm)) return 1;
    char on[256];
    cf_cuda_tested_list(on, sizeof on);
    snprintf(why, n,
             "not yet verified on sm_%d (%s): the GPU tests have passed on %s only; force it with "
             "CFLASH_BACKEND=%s, or run them on this GPU (README \"NVIDIA GPUs\")",
             sm, dev.name, on, backend);
    return 0;
}

cflash_status cf_cu_enter(int ordinal) {
    cf_cu_device d;
    CFLASH_FORWARD_IF_ERROR(cf_cu_device_get(ordinal, &d));
    pthread_mutex_lock(&lock);
    CUcontext ctx = primary[ordinal];
    CUresult r = 0;
    if (!ctx) {
        CUdevice dev;
        r = api->cuDeviceGet(&dev, ordinal);
        if (r == 0) r = api->cuDevicePrimaryCtxRetain(&ctx, dev);
        if (r == 0) primary[ordinal] = ctx; /* kept for the life of the process */
    }
    pthread_mutex_unlock(&lock);
    CF_CU_TRY(r, "cuDevicePrimaryCtxRetain");
    CF_CU_TRY(api->cuCtxPushCurrent(ctx), "cuCtxPushCurrent");
    return CFLASH_OK;
}

void cf_cu_leave(void) {
    CUcontext prev;
    api->cuCtxPopCurrent(&prev);
}

/* ---- Memory for the tool and the tests ---------------------------------------------------- */

cflash_status cf_cu_malloc(int ordinal, void** p, size_t bytes) {
    CFLASH_FORWARD_IF_ERROR(cf_cu_enter(ordinal));
    CUdeviceptr d = 0;
    CUresult r = api->cuMemAlloc(&d, bytes ? bytes : 1);
    cf_cu_leave();
    if (r == 2 /* CUDA_ERROR_OUT_OF_MEMORY */)
        return cf_error(CFLASH_ERR_OUT_OF_MEMORY, "cuda: cuMemAlloc of %zu bytes: out of memory",
                        bytes);
    CF_CU_TRY(r, "cuMemAlloc");
    *p = (void*)(uintptr_t)d;
    return CFLASH_OK;
}

void cf_cu_free(int ordinal, void* p) {
    if (!p || cf_cu_enter(ordinal) != CFLASH_OK) return;
    api->cuMemFree((CUdeviceptr)(uintptr_t)p);
    cf_cu_leave();
}

cflash_status cf_cu_memcpy(int ordinal, void* dst, const void* src, size_t bytes, int to_device) {
    if (!bytes) return CFLASH_OK;
    CFLASH_FORWARD_IF_ERROR(cf_cu_enter(ordinal));
    CUresult r = to_device ? api->cuMemcpyHtoD((CUdeviceptr)(uintptr_t)dst, src, bytes)
                           : api->cuMemcpyDtoH(dst, (CUdeviceptr)(uintptr_t)src, bytes);
    cf_cu_leave();
    CF_CU_TRY(r, to_device ? "cuMemcpyHtoD" : "cuMemcpyDtoH");
    return CFLASH_OK;
}

cflash_status cf_cu_sync(int ordinal) {
    CFLASH_FORWARD_IF_ERROR(cf_cu_enter(ordinal));
    CUresult r = api->cuCtxSynchronize();
    cf_cu_leave();
    CF_CU_TRY(r, "cuCtxSynchronize");
    return CFLASH_OK;
}

/* ---- The front door's device hooks (core/device.h), registered when the library loads ------ */

static const cf_device_hooks cuda_hooks = {
    .device_type = kDLCUDA,
    .alloc = cf_cu_malloc,
    .free = cf_cu_free,
    .copy = cf_cu_memcpy,
    .sync = cf_cu_sync,
    .describe_kernels = cf_cuda_describe_kernels,
    .describe_cache = cf_kcache_describe,
};

/* Only stores a pointer: no driver is loaded and no context created here. */
__attribute__((constructor)) static void register_cuda_hooks(void) {
    cf_device_register(&cuda_hooks);
}
